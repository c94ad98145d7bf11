"""The int8 ``.pte`` reference check against planted faults, on digits-trained models.

For each model (``RUNS/<model>/best.safetensors``, ``tools/precision_costs.py``'s configuration), the PT2E int8
reference is built as ``litevit export --precision int8`` builds it (300 calibration images of ``DATA/train``, 32
held out), lowered as is, and lowered again with one layer's per-channel weight scales multiplied by 1.5 and by 1.1
(the second, middle and last per-channel weight of the graph); each ``.pte`` runs the 32 held-out images and
:func:`litevit.deploy.executorch.reference_check` (the pte-reference check) gives |.pte - reference| /
|reference - fp32|, the ratio that ``PTE_INT8_MAX_RATIO`` bounds. One JSON line per model.

    OMP_NUM_THREADS=1 .venv/bin/python tools/pte_int8_faults.py mobilevitv2_050 mobilevitv3_xxs --runs RUNS \
        --data DATA >> benchmarks/mobile/pte_int8_faults.jsonl
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
import tempfile
from pathlib import Path

import torch
from _digits import calibration_split

import litevit
from litevit._extras import cpu_model, require
from litevit.bench.timing import git_commit
from litevit.deploy.executorch import lower_pte, quantize_int8, reference_check
from litevit.deploy.fuse import fuse
from litevit.deploy.int8 import INT8_CHECK_IMAGES, int8_settings_for


def _run_pte(data: bytes, images: list[torch.Tensor]) -> torch.Tensor:
    runtime = require("executorch.runtime", "the executorch extra").Runtime.get()
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "m.pte"
        path.write_bytes(data)
        forward = runtime.load_program(str(path)).load_method("forward")
        return torch.cat([forward.execute([x])[0] for x in images])


def ratios(name: str, runs: Path, data_root: Path) -> dict[str, float]:
    model = litevit.load(runs / name / "best.safetensors").eval()
    fused = fuse(model).float()
    calibration, images = calibration_split(model, data_root)
    reference, _ = quantize_int8(fused, images[0], calibration, int8_settings_for(model))
    with torch.no_grad():
        expected = torch.cat([reference(x) for x in images])
        fp32 = torch.cat([fused(x) for x in images])
    scales = [n.args[1].target for n in reference.graph.nodes if "dequantize_per_channel" in str(n.target)]

    def ratio(module: torch.fx.GraphModule) -> float:
        data_bytes, _ = lower_pte(module, images[0], None, rewrite=False)
        return reference_check(_run_pte(data_bytes, images), expected, fp32).max_rel_diff

    found = {"as lowered": ratio(reference)}
    for where in (1, len(scales) // 2, len(scales) - 1):
        for factor in (1.5, 1.1):
            planted = copy.deepcopy(reference)
            getattr(planted, scales[where]).mul_(factor)
            found[f"weight scales {where}/{len(scales)} x{factor}"] = ratio(planted)
    return found


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("models", nargs="+")
    parser.add_argument("--runs", type=Path, required=True)
    parser.add_argument("--data", type=Path, required=True)
    args = parser.parse_args()
    torch.set_num_threads(1)
    for name in args.models:
        found = {k: round(v, 3) for k, v in ratios(name, args.runs, args.data).items()}
        row = dict(model=name, images=INT8_CHECK_IMAGES, ratios=found, cpu=cpu_model(), torch=torch.__version__,
                   commit=git_commit(), command=" ".join(["python", *sys.argv]))  # fmt: skip
        print(json.dumps(row), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
