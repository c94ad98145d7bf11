"""The contract every registered variant must meet (one sweep over ``list_models()``)."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

import litevit
from litevit.flops import count_macs, count_params

MODELS = litevit.list_models()
# the issues' tolerances on MACs against the paper records, per family
MAC_TOLERANCE = {"levit": 0.03, "efficientvit_msra": 0.03}
# families whose papers counted MACs with their own profiler: the convention of litevit.flops that reproduces it
PAPER_MAC_CONVENTION = {"mobilevit": "cvnets"}
# records published to a coarser unit than 1 M (MobileViTv2 paper: 0.1 G): the count, rounded alike, must equal them
MAC_RESOLUTION_M = {f"mobilevitv2_{width}": 100 for width in ("050", "075", "100", "125", "150", "175", "200")}


def randomise_for_fuse_test(model: nn.Module, seed: int = 0) -> None:
    """Random BatchNorm statistics and affine terms, and random values where initialisation left zeros."""
    gen = torch.Generator().manual_seed(seed)

    def rand(t: torch.Tensor) -> torch.Tensor:
        return torch.randn(t.shape, generator=gen, dtype=torch.float64).to(t.dtype)

    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, _BatchNorm):
                m.running_mean.copy_(0.1 * rand(m.running_mean))
                m.running_var.copy_(0.5 + torch.rand(m.running_var.shape, generator=gen, dtype=torch.float64))
                if m.weight is not None:
                    m.weight.copy_(1 + 0.1 * rand(m.weight))
                    m.bias.copy_(0.1 * rand(m.bias))
        for p in model.parameters():
            if not p.any():
                p.copy_(0.1 * rand(p))


def _input(name: str, batch: int = 2, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    size = litevit.get_variant(name).config.img_size
    height, width = (size, size) if isinstance(size, int) else size
    return torch.randn(batch, 3, height, width, generator=torch.Generator().manual_seed(1), dtype=dtype)


@pytest.mark.parametrize("name", MODELS)
def test_params_match_paper(name: str) -> None:
    paper = litevit.get_variant(name).paper
    params = count_params(litevit.create_model(name)) / 1e6
    assert abs(params - paper.params_m) < 0.1, f"{name}: {params:.3f}M params, paper {paper.params_m}M"


@pytest.mark.parametrize("name", MODELS)
def test_macs_match_paper(name: str) -> None:
    variant = litevit.get_variant(name)
    model = litevit.create_model(name, img_size=variant.paper.img_size)
    macs = true_macs = count_macs(model, variant.paper.img_size) / 1e6
    assert true_macs > 0, f"{name}: no MACs counted"
    convention = PAPER_MAC_CONVENTION.get(variant.family, "matmul")
    if convention != "matmul":
        macs = count_macs(model, variant.paper.img_size, convention=convention) / 1e6
    msg = f"{name}: {macs:.1f}M MACs ({convention}; true matmul count {true_macs:.1f}M), paper {variant.paper.macs_m}M"
    if name in MAC_RESOLUTION_M:
        unit = MAC_RESOLUTION_M[name]
        assert round(macs / unit) * unit == variant.paper.macs_m, msg
    else:
        assert abs(macs / variant.paper.macs_m - 1) <= MAC_TOLERANCE.get(variant.family, 0.05), msg


@pytest.mark.parametrize("name", MODELS)
def test_forward_backward_reaches_every_parameter(name: str) -> None:
    model = litevit.create_model(name).train()
    out = model(_input(name))
    outputs = out if isinstance(out, tuple) else (out,)
    for o in outputs:
        assert o.shape == (2, model.config.num_classes)
    sum(o.square().mean() for o in outputs).backward()
    unreached = [n for n, p in model.named_parameters() if p.requires_grad and p.grad is None]
    assert not unreached, f"no gradient reaches {unreached}"
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)
    model.eval()
    with torch.no_grad():
        eval_out = model(_input(name))
    assert isinstance(eval_out, torch.Tensor) and eval_out.shape == (2, model.config.num_classes)


@pytest.mark.parametrize("name", MODELS)
def test_fuse_is_exact_in_float64(name: str) -> None:
    model = litevit.create_model(name).double()
    randomise_for_fuse_test(model)
    model.eval()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    x = _input(name, batch=1, dtype=torch.float64)  # eval mode: rows are independent, one is enough
    fused = litevit.fuse(model)
    assert not [n for n, m in fused.named_modules() if isinstance(m, _BatchNorm)]
    with torch.no_grad():
        expected, got = model(x), fused(x)
    torch.testing.assert_close(got, expected, atol=1e-9, rtol=1e-9)
    with torch.no_grad():  # fusing a fused model changes nothing (export and bench may fuse again)
        torch.testing.assert_close(litevit.fuse(fused)(x), got, atol=0, rtol=0)
    after = model.state_dict()
    assert before.keys() == after.keys() and all(torch.equal(before[k], after[k]) for k in before), "fuse mutated input"


@pytest.mark.parametrize("name", MODELS)
def test_fused_float32_within_1e5_relative(name: str) -> None:
    """The fused path is exact in the precision it runs in: within 1e-5 of the largest unfused logit."""
    model = litevit.create_model(name)
    randomise_for_fuse_test(model)
    model.eval()
    x = _input(name)
    with torch.no_grad():
        expected, got = model(x), litevit.fuse(model)(x)
    assert ((got - expected).abs().max() / expected.abs().max()).item() < 1e-5


@pytest.mark.parametrize("name", MODELS)
def test_state_dict_round_trip(name: str, tmp_path) -> None:
    from safetensors.torch import save_file

    model = litevit.create_model(name)
    randomise_for_fuse_test(model)
    model.eval()
    path = tmp_path / f"{name}.safetensors"
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path))
    loaded = litevit.create_model(name, checkpoint=path).eval()
    x = _input(name, batch=1)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), model(x), atol=0, rtol=0)
