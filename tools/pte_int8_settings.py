"""Which parts of a digits-trained model the int8 ``.pte`` route should leave float: top-1 of the PT2E int8 reference.

The PT2E module that ``litevit.deploy.executorch.quantize_int8`` builds is what the ``.pte`` computes (XNNPACK's
int8 kernels stay within the reference check's bound of it), so evaluating it in PyTorch measures a setting without
lowering. Each variant leaves float what ExecuTorch's ``XNNPACKQuantizer`` filter excludes: nodes under named
sub-modules (``nn_module_stack``) or with a given ATen target; ``cls-cat`` pre-marks a concat of a learned tensor
with activations as annotated-without-quantizers (the quantizer's cat annotator ignores filters). Model from
``RUNS/<model>/best.safetensors`` (``tools/precision_costs.py``'s configuration), calibration on 300 images of
``DATA/train`` (the int8 export's own draw), top-1 on ``DATA/val``; one JSON line per variant.

    OMP_NUM_THREADS=1 .venv/bin/python tools/pte_int8_settings.py t2t_vit_7 --runs RUNS --data DATA \
        > benchmarks/pte_int8_settings_t2t.jsonl
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import torch
from _digits import accuracy, agreement, calibration_split, val_set

import litevit
from litevit._extras import cpu_model, require
from litevit.bench.timing import git_commit
from litevit.deploy.fuse import fuse
from litevit.deploy.xnnpack_rewrite import rewrite_for_xnnpack

ADD, MUL = "aten.add.Tensor", "aten.mul.Tensor"
BLOCKS = [f"blocks.{i}" for i in range(64)]
VARIANTS: dict[str, list[str]] = {  # what stays float: module-name prefixes, "op:<target>", or "cls-cat"
    "XNNPACK quantizer as is": [],
    "adds and multiplies float": [f"op:{ADD}", f"op:{MUL}"],
    "multiplies float": [f"op:{MUL}"],
    "adds float": [f"op:{ADD}"],
    "head float": ["head"],
    "T2T module float": ["tokens_to_token"],
    "first T2T attention float": ["tokens_to_token.attention1"],
    "blocks float": ["blocks"],
    "blocks' attention float": [f"{b}.attn" for b in BLOCKS],
    "blocks' MLP float": [f"{b}.mlp" for b in BLOCKS],
    "class-token concat float": ["cls-cat"],
}


def _module_paths(node: torch.fx.Node) -> list[str]:
    return [v[0] if isinstance(v, tuple) else str(v) for v in node.meta.get("nn_module_stack", {}).values()]


def _from_input(node: torch.fx.Node, seen: set) -> bool:
    if node in seen:
        return False
    seen.add(node)
    return node.op == "placeholder" or any(_from_input(a, seen) for a in node.all_input_nodes)


def reference(fused: torch.nn.Module, example: torch.Tensor, calibration: list, floats: list[str]):
    """The PT2E int8 module of ``fused`` with what ``floats`` names left float."""
    xq = require("executorch.backends.xnnpack.quantizer.xnnpack_quantizer", "the executorch extra")
    pt2e = require("torchao.quantization.pt2e.quantize_pt2e", "the executorch extra")
    module = torch.export.export(fused, (example,)).module()
    rewrite_for_xnnpack(module)
    module = torch.export.export(module, (example,)).module()
    quantizer = xq.XNNPACKQuantizer().set_global(xq.get_symmetric_quantization_config(is_per_channel=True))
    ops = [f.removeprefix("op:") for f in floats if f.startswith("op:")]
    prefixes = [f for f in floats if not f.startswith("op:") and f != "cls-cat"]
    if ops or prefixes:
        quantizer.set_filter_function(
            lambda node: (
                str(node.target) not in ops
                and not any(path.startswith(p) for path in _module_paths(node) for p in prefixes)
            )
        )
    if "cls-cat" in floats:
        annotation = require("torchao.quantization.pt2e.quantizer", "the executorch extra").QuantizationAnnotation
        for node in module.graph.nodes:
            learned = not all(_from_input(a, set()) for a in node.all_input_nodes)
            if node.target == torch.ops.aten.cat.default and learned:
                node.meta["quantization_annotation"] = annotation(_annotated=True)
    prepared = pt2e.prepare_pt2e(module, quantizer)
    with torch.no_grad():
        for batch in calibration:
            prepared(batch)
    return pt2e.convert_pt2e(prepared)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model")
    parser.add_argument("--runs", type=Path, required=True)
    parser.add_argument("--data", type=Path, required=True)
    parser.add_argument("--variants", nargs="*", default=list(VARIANTS))
    args = parser.parse_args()
    torch.set_num_threads(1)
    model = litevit.load(args.runs / args.model / "best.safetensors").eval()
    fused = fuse(model).float()
    images, targets = val_set(model, args.data)
    calibration, _ = calibration_split(model, args.data)
    with torch.no_grad():
        fp32 = fused(images)

    common = dict(model=args.model, images=len(targets), fp32_top1=round(accuracy(fp32, targets), 3), cpu=cpu_model(),
                  torch=torch.__version__, commit=git_commit(), command=" ".join(["python", *sys.argv]))  # fmt: skip
    for name in args.variants:
        start = time.perf_counter()
        module = reference(fused, images[:1].contiguous(), calibration, VARIANTS[name])
        with torch.no_grad():
            logits = torch.cat([module(images[i : i + 1]) for i in range(len(images))])
        row = dict(variant=name, floats=VARIANTS[name][:4], top1=round(accuracy(logits, targets), 3),
                   drop=round(accuracy(fp32, targets) - accuracy(logits, targets), 3),
                   agreement=round(agreement(logits, fp32), 2),
                   seconds=round(time.perf_counter() - start, 1), load=round(os.getloadavg()[0], 2),
                   **common)  # fmt: skip
        print(json.dumps(row), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
