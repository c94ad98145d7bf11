"""Exact graph rewrites that let XNNPACK take operators ExecuTorch would otherwise run in portable kernels.

XNNPACK's partitioner (ExecuTorch 1.5) rejects ``split``, ``select``/``unbind``, ``expand`` (which ``matmul`` of
batched operands decomposes into), strided ``slice``, ``mean`` other than over the two innermost dims of a 4D
tensor with ``keepdim``, and ``im2col`` (``F.unfold``). Each is replaced by operators it accepts, computing the
same values:

- ``split``, ``select``, ``unbind``: stride-1 slices (and a reshape dropping the selected dim); a channel split
  of an ungrouped conv's output as one conv per piece, on slices of its weights (no copies of the output);
- batched ``matmul`` with equal batch dims: reshape to 3D, ``bmm``, reshape back;
- strided ``slice``: ``avg_pool2d`` with a 1x1 window and that stride (a copy: each window holds one value);
- ``mean`` over H and/or W of a 4D map: ``avg_pool2d`` with that window; over other dims: permute the reduced
  dims last, reshape to ``(1, kept, reduced, 1)``, mean over (2, 3); a reduction over more than 1024 values in
  two levels (XNNPACK adds in one float32 pass, which cost 2e-5 relative per MobileViTv2 GroupNorm);
- ``softmax`` over the last dim of a 4D map: on a 2D view (XNNPACK's channels-last 4D softmax reduced the wrong
  dim: MobileViTv2 came out 1.2 relative off);
- ``F.unfold``: a depthwise convolution with one-hot ``k x k`` kernels (channel-major, as ``nn.Unfold``);
- ``expand``: adding zeros of the target shape; ``contiguous``: dropped.

Not bit-exact, within float32 rounding (about 1e-7 relative): ``scaled_dot_product_attention`` without a mask or
with an additive float mask (EfficientViT's fused attention bias) as ``softmax(q k^T * scale + mask) v`` with
``bmm``; ``layer_norm`` and ``group_norm`` from means, ``pow 2`` and ``rsqrt`` (XNNPACK has neither norm); ``sum`` as
a mean times the count.

The rewrites run on the unlifted ``torch.export`` graph, which is then exported again.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Sequence

import torch
from torch import fx

aten = torch.ops.aten


def _shape(node: fx.Node) -> list[int]:
    return list(node.meta["val"].shape)


def _call(graph: fx.Graph, target: object, *args: object) -> fx.Node:
    return graph.call_function(target, args)


def _replace(node: fx.Node, new: fx.Node) -> None:
    new.meta["val"] = node.meta["val"]  # later rewrites read the shapes of their inputs
    node.replace_all_uses_with(new)


def _replace_getitems(node: fx.Node, pieces: Sequence[fx.Node]) -> None:
    for user in list(node.users):
        if user.op == "call_function" and user.target.__name__ == "getitem":
            _replace(user, pieces[user.args[1]])


def _split(graph: fx.Graph, node: fx.Node) -> bool:
    x = node.args[0]
    dim = node.args[2] if len(node.args) > 2 else node.kwargs.get("dim", 0)
    shape = _shape(x)
    dim %= len(shape)
    if node.target is aten.chunk.default:
        step = math.ceil(shape[dim] / node.args[1])
        sizes = [min(step, shape[dim] - i) for i in range(0, shape[dim], step)]
    elif node.target is aten.split.Tensor:
        step = node.args[1]
        sizes = [min(step, shape[dim] - i) for i in range(0, shape[dim], step)]
    else:
        sizes = list(node.args[1])
    starts = [sum(sizes[:i]) for i in range(len(sizes))]
    pieces = _split_conv(graph, x, starts, sizes) if len(shape) == 4 and dim == 1 else None
    if pieces is None:
        pieces = [_call(graph, aten.slice.Tensor, x, dim, s, s + n) for s, n in zip(starts, sizes, strict=True)]
    _replace_getitems(node, pieces)
    return True


def _split_conv(graph: fx.Graph, conv: fx.Node, starts: list[int], sizes: list[int]) -> list[fx.Node] | None:
    """A channel split of an ungrouped ``conv2d`` output as one conv per piece, on slices of its weights."""
    if conv.op != "call_function" or conv.target is not aten.conv2d.default or len(conv.users) != 1:
        return None
    x, weight, bias, *options = conv.args
    if (options[3] if len(options) > 3 else 1) != 1 or weight.op != "get_attr":
        return None
    module = graph.owning_module
    weight = _attr(module, weight.target)
    bias = None if bias is None else _attr(module, bias.target)
    pieces = []
    for start, size in zip(starts, sizes, strict=True):
        name = f"_split_{conv.name}_{start}"
        module.register_buffer(f"{name}_weight", weight[start : start + size].detach().clone())
        piece_bias = None
        if bias is not None:
            module.register_buffer(f"{name}_bias", bias[start : start + size].detach().clone())
            piece_bias = graph.get_attr(f"{name}_bias")
        args = (x, graph.get_attr(f"{name}_weight"), piece_bias, *options)
        pieces.append(graph.call_function(aten.conv2d.default, args))
    return pieces


def _attr(module: torch.nn.Module, target: str) -> torch.Tensor:
    *path, name = target.split(".")
    return getattr(module.get_submodule(".".join(path)), name)


def _select(graph: fx.Graph, node: fx.Node) -> bool:
    x, dim = node.args[0], node.args[1] if len(node.args) > 1 else 0
    shape = _shape(x)
    dim %= len(shape)
    kept = shape[:dim] + shape[dim + 1 :]
    indices = [node.args[2] % shape[dim]] if node.target is aten.select.int else range(shape[dim])
    pieces = [
        _call(graph, aten.reshape.default, _call(graph, aten.slice.Tensor, x, dim, i, i + 1), kept) for i in indices
    ]
    if node.target is aten.select.int:
        _replace(node, pieces[0])
    else:
        _replace_getitems(node, pieces)
    return True


def _matmul(graph: fx.Graph, node: fx.Node) -> bool:
    a, b = node.args
    shape_a, shape_b = _shape(a), _shape(b)
    if len(shape_a) < 3 or len(shape_a) != len(shape_b) or shape_a[:-2] != shape_b[:-2]:
        return False
    batch = math.prod(shape_a[:-2])
    a3 = _call(graph, aten.reshape.default, a, [batch, *shape_a[-2:]])
    b3 = _call(graph, aten.reshape.default, b, [batch, *shape_b[-2:]])
    out = _call(graph, aten.bmm.default, a3, b3)
    _replace(node, _call(graph, aten.reshape.default, out, _shape(node)))
    return True


def _strided_slice(graph: fx.Graph, node: fx.Node) -> bool:
    x, dim, start, end, step = (list(node.args) + [0, None, None, 1][len(node.args) - 1 :])[:5]
    if step == 1 or not node.meta["val"].is_floating_point():  # avg_pool2d takes floating point only
        return False
    shape = _shape(x)
    dim %= len(shape)
    size = shape[dim]
    # Python's slice bounds: negative from the end, then clamped to the dim (end at most the dim, as INT64_MAX is)
    start = 0 if start is None else min(max(start + size if start < 0 else start, 0), size)
    end = size if end is None else min(max(end + size if end < 0 else end, start), size)
    length = _shape(node)[dim]
    if length == 0:
        return False
    if (start, end) != (0, size):
        x = _call(graph, aten.slice.Tensor, x, dim, start, end)
    outer, inner = math.prod(shape[:dim]), math.prod(shape[dim + 1 :])
    # the kept elements of dim are rows of a (1, outer, end - start, inner) image, pooled 1x1 with stride
    # (step, 1): ceil((end - start) / step) rows, the slice's length
    grid = _call(graph, aten.reshape.default, x, [1, outer, end - start, inner])
    pooled = _call(graph, aten.avg_pool2d.default, grid, [1, 1], [step, 1])
    _replace(node, _call(graph, aten.reshape.default, pooled, _shape(node)))
    return True


# XNNPACK sums a reduction in one pass of float32 adds: over the 65536 values of a MobileViTv2 GroupNorm its
# error reached 2e-5 relative per norm (7e-5 at the logits). Reductions longer than this are taken in two levels.
_LONGEST_REDUCTION = 1024


def _two_levels(count: int) -> tuple[int, int]:
    """``(outer, inner)`` with ``outer * inner == count`` and ``inner`` the largest divisor <= sqrt(count)."""
    inner = next(d for d in range(math.isqrt(count), 0, -1) if count % d == 0)
    return count // inner, inner


def _mean_4d(graph: fx.Graph, x: fx.Node, dims: list[int], out_shape: list[int]) -> fx.Node:
    """``x.mean(dims)`` reshaped to ``out_shape``, as means over (2, 3) of ``(1, rows, reduced, 1)`` tensors."""
    shape = _shape(x)
    count = math.prod(shape[d] for d in dims)
    if len(shape) == 4 and set(dims) <= {2, 3} and count <= _LONGEST_REDUCTION:  # a pooling window: same layout
        window = [shape[2] if 2 in dims else 1, shape[3] if 3 in dims else 1]
        pooled = _call(graph, aten.avg_pool2d.default, x, window, window)
        return _call(graph, aten.reshape.default, pooled, out_shape)
    kept = [d for d in range(len(shape)) if d not in dims]
    rows = math.prod(shape[d] for d in kept)
    moved = _call(graph, aten.permute.default, x, kept + dims)  # kept..., reduced...
    outer, inner = _two_levels(count) if count > _LONGEST_REDUCTION else (1, count)
    pooled = _call(
        graph, aten.mean.dim, _call(graph, aten.reshape.default, moved, [1, rows * outer, inner, 1]), [2, 3], True
    )
    if outer > 1:  # rows*outer partial means of equal size, then their mean
        pooled = _call(
            graph, aten.mean.dim, _call(graph, aten.reshape.default, pooled, [1, rows, outer, 1]), [2, 3], True
        )
    return _call(graph, aten.reshape.default, pooled, out_shape)


def _mean(graph: fx.Graph, node: fx.Node) -> bool:
    x, dims = node.args[0], node.args[1]
    keepdim = node.args[2] if len(node.args) > 2 else node.kwargs.get("keepdim", False)
    if node.kwargs.get("dtype") is not None:  # a mean in another dtype: convert first, then the mean is in it
        x = graph.call_function(aten._to_copy.default, (x,), {"dtype": node.kwargs["dtype"]})
        x.meta["val"] = node.args[0].meta["val"].to(node.kwargs["dtype"])
    shape = _shape(x)
    dims = sorted(d % len(shape) for d in (dims if dims else range(len(shape))))
    if len(shape) == 4 and dims == [2, 3] and keepdim and shape[2] * shape[3] <= _LONGEST_REDUCTION:
        return False
    _replace(node, _mean_4d(graph, x, dims, _shape(node)))
    return True


def _unfold(graph: fx.Graph, node: fx.Node) -> bool:
    """``im2col``: ``B, C, H, W -> B, C*k*k, L`` as a depthwise conv with ``k*k`` one-hot kernels per channel."""
    x, kernel, dilation, padding, stride = node.args
    channels = _shape(x)[1]
    kh, kw = kernel
    eye = torch.eye(kh * kw, dtype=x.meta["val"].dtype)  # in the graph's dtype: conv2d takes one dtype
    eye = eye.reshape(kh * kw, 1, kh, kw).repeat(channels, 1, 1, 1)  # C*k*k, 1, kh, kw
    name = f"_unfold_kernel_{node.name}"
    graph.owning_module.register_buffer(name, eye)
    weight = graph.get_attr(name)
    conv = graph.call_function(aten.conv2d.default, (x, weight, None, stride, padding, dilation, channels))
    _replace(node, _call(graph, aten.flatten.using_ints, conv, 2))
    return True


def _mask_value(graph: fx.Graph, mask: object) -> torch.Tensor | None:
    """The (example) value of an attention mask node: its traced value, or the buffer it reads."""
    if not isinstance(mask, fx.Node):
        return None
    value = mask.meta.get("val")
    if value is None and mask.op == "get_attr":
        value = _attr(graph.owning_module, mask.target)
    return value


def _attention(graph: fx.Graph, node: fx.Node) -> bool:
    """Non-causal ``scaled_dot_product_attention``, unmasked or with an additive float mask, as
    ``softmax(q k^T * scale + mask) v`` with ``bmm``."""
    q, k, v = node.args[:3]
    options = dict(zip(("attn_mask", "dropout_p", "is_causal", "scale"), node.args[3:], strict=False))
    options.update(node.kwargs)
    mask = options.get("attn_mask")
    if options.get("dropout_p", 0.0) or options.get("is_causal", False):
        return False
    shape_q, shape_k, shape_v = _shape(q), _shape(k), _shape(v)
    if shape_q[:-2] != shape_k[:-2] or shape_k[:-2] != shape_v[:-2]:
        return False
    if mask is not None:
        value = _mask_value(graph, mask)
        # a float mask of the scores' last two dims, or of all their dims; a boolean mask would need a select
        if value is None or not value.dtype.is_floating_point:
            return False
        if value.dim() > 2 and list(value.shape[:-2]) != shape_q[:-2]:
            return False
    scale = options.get("scale") or 1.0 / math.sqrt(shape_q[-1])
    batch = math.prod(shape_q[:-2])
    q3 = _call(graph, aten.reshape.default, q, [batch, *shape_q[-2:]])
    kt = _call(graph, aten.transpose.int, _call(graph, aten.reshape.default, k, [batch, *shape_k[-2:]]), 1, 2)
    v3 = _call(graph, aten.reshape.default, v, [batch, *shape_v[-2:]])
    scores = _call(graph, aten.bmm.default, q3 if scale == 1.0 else _call(graph, aten.mul.Tensor, q3, scale), kt)
    if mask is not None:  # batch, N, M + N, M (broadcast) or + batch dims, N, M (reshaped like the scores)
        if value.dim() > 2:
            mask = _call(graph, aten.reshape.default, mask, [batch, *value.shape[-2:]])
        scores = _call(graph, aten.add.Tensor, scores, mask)
    out = _call(graph, aten.bmm.default, _call(graph, aten.softmax.int, scores, -1), v3)
    _replace(node, _call(graph, aten.reshape.default, out, _shape(node)))
    return True


def _mean_node(graph: fx.Graph, x: fx.Node, dims: list[int]) -> fx.Node:
    """``x.mean(dims, keepdim=True)`` in the form XNNPACK takes."""
    shape = _shape(x)
    dims = sorted(d % len(shape) for d in dims)
    out_shape = [1 if d in dims else n for d, n in enumerate(shape)]
    if len(shape) == 4 and dims == [2, 3] and shape[2] * shape[3] <= _LONGEST_REDUCTION:
        return _call(graph, aten.mean.dim, x, dims, True)
    return _mean_4d(graph, x, dims, out_shape)


def _normalized(graph: fx.Graph, x: fx.Node, dims: list[int], eps: float) -> fx.Node:
    """``(x - mean) / sqrt(var + eps)`` over ``dims`` (biased variance, as the norm layers)."""
    centred = _call(graph, aten.sub.Tensor, x, _mean_node(graph, x, dims))
    centred.meta["val"] = x.meta["val"]
    square = _call(graph, aten.pow.Tensor_Scalar, centred, 2)
    square.meta["val"] = x.meta["val"]
    inverse = _call(graph, aten.rsqrt.default, _call(graph, aten.add.Tensor, _mean_node(graph, square, dims), eps))
    return _call(graph, aten.mul.Tensor, centred, inverse)


def _affine(graph: fx.Graph, x: fx.Node, weight: fx.Node | None, bias: fx.Node | None) -> fx.Node:
    if weight is not None:
        x = _call(graph, aten.mul.Tensor, x, weight)
    return x if bias is None else _call(graph, aten.add.Tensor, x, bias)


def _layer_norm(graph: fx.Graph, node: fx.Node) -> bool:
    """``layer_norm`` from mean, square and rsqrt (XNNPACK has no layer norm)."""
    x, normalized = node.args[0], node.args[1]
    weight, bias, eps = (list(node.args[2:5]) + [None, None, 1e-5][len(node.args) - 2 :])[:3]
    out = _normalized(graph, x, list(range(-len(normalized), 0)), eps)
    _replace(node, _affine(graph, out, weight, bias))
    return True


def _group_norm(graph: fx.Graph, node: fx.Node) -> bool:
    """``group_norm`` on ``B, C, *``: normalise ``B, G, C/G * rest``, then the per-channel affine."""
    x, groups = node.args[0], node.args[1]
    weight, bias, eps = (list(node.args[2:5]) + [None, None, 1e-5][len(node.args) - 2 :])[:3]
    shape = _shape(x)
    grouped = _call(graph, aten.reshape.default, x, [shape[0], groups, -1])
    grouped.meta["val"] = x.meta["val"].reshape(shape[0], groups, -1)
    out = _call(graph, aten.reshape.default, _normalized(graph, grouped, [2], eps), shape)
    per_channel = [shape[1]] + [1] * (len(shape) - 2)  # C, 1, ... broadcasts over the spatial dims
    weight = None if weight is None else _call(graph, aten.reshape.default, weight, per_channel)
    bias = None if bias is None else _call(graph, aten.reshape.default, bias, per_channel)
    _replace(node, _affine(graph, out, weight, bias))
    return True


def _sum(graph: fx.Graph, node: fx.Node) -> bool:
    """``sum`` over dims as their mean times their size."""
    x, dims = node.args[0], node.args[1]
    keepdim = node.args[2] if len(node.args) > 2 else node.kwargs.get("keepdim", False)
    if node.kwargs.get("dtype") is not None:
        return False
    shape = _shape(x)
    dims = sorted(d % len(shape) for d in (dims if dims else range(len(shape))))
    mean = _mean_node(graph, x, dims)
    total = _call(graph, aten.mul.Tensor, mean, math.prod(shape[d] for d in dims))
    _replace(node, total if keepdim else _call(graph, aten.reshape.default, total, _shape(node)))
    return True


def _expand(graph: fx.Graph, node: fx.Node) -> bool:
    """Broadcast by adding zeros of the target shape (exact), or nothing when the shape does not change."""
    x, target = node.args[0], _shape(node)
    if _shape(x) == target:
        _replace(node, x)
        return True
    name = f"_expand_zeros_{node.name}"
    graph.owning_module.register_buffer(name, torch.zeros(target, dtype=node.meta["val"].dtype))
    _replace(node, _call(graph, aten.add.Tensor, x, graph.get_attr(name)))
    return True


def _identity(graph: fx.Graph, node: fx.Node) -> bool:
    """``contiguous``: the same values (it would become a dim-order copy that XNNPACK leaves out)."""
    _replace(node, node.args[0])
    return True


def _softmax(graph: fx.Graph, node: fx.Node) -> bool:
    """Softmax of a 4D map over its last dim, on a 2D view: XNNPACK's channels-last 4D softmax took the wrong dim."""
    x, dim = node.args[0], node.args[1]
    dtype = node.args[2] if len(node.args) > 2 else node.kwargs.get("dtype")  # softmax computed in, and giving, dtype
    shape = _shape(x)
    if len(shape) != 4 or dim % 4 != 3:
        return False
    flat = _call(graph, aten.reshape.default, x, [-1, shape[-1]])
    _replace(node, _call(graph, aten.reshape.default, _call(graph, aten.softmax.int, flat, -1, dtype), shape))
    return True


_REWRITES = {
    aten.softmax.int: _softmax,
    aten.contiguous.default: _identity,
    aten.chunk.default: _split,
    aten.scaled_dot_product_attention.default: _attention,
    aten.layer_norm.default: _layer_norm,
    aten.group_norm.default: _group_norm,
    aten.sum.dim_IntList: _sum,
    aten.expand.default: _expand,
    aten.split.Tensor: _split,
    aten.split_with_sizes.default: _split,
    aten.select.int: _select,
    aten.unbind.int: _select,
    aten.matmul.default: _matmul,
    aten.slice.Tensor: _strided_slice,
    aten.mean.dim: _mean,
    aten.im2col.default: _unfold,
}


def rewrite_for_xnnpack(module: fx.GraphModule) -> dict[str, int]:
    """Apply the rewrites to ``module`` in place; returns how many nodes of each kind were rewritten."""
    graph = module.graph
    done: Counter[str] = Counter()
    for node in list(graph.nodes):
        rewrite = _REWRITES.get(node.target) if node.op == "call_function" else None
        if rewrite is None or "val" not in node.meta:
            continue
        with graph.inserting_before(node):
            if rewrite(graph, node):
                done[str(node.target)] += 1
                # dead code elimination keeps ops tagged nondeterministic (sdpa): drop replaced nodes here
                for user in [user for user in node.users if not user.users]:
                    graph.erase_node(user)
                if not node.users:
                    graph.erase_node(node)
    graph.eliminate_dead_code()
    module.recompile()
    return dict(done)
