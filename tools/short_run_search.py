"""The short-run rule's search (issue 29): which of its settings holds a short run back on a small real data set.

Trains each model on scikit-learn's digits at 64 px (``tools/precision_costs.make_digits``: 1258 training and 539
held-out images, a fixed stratified split; 1 image = 0.19 points) for the default number of epochs with the rule's
values, and with one or two of them changed, and appends one JSON line per run (best validation top-1, the values the
rule chose, wall time) to ``--out``.

    python tools/short_run_search.py levit_128s efficientvit_m0 mobilevit_xxs --configs rule lr2 crop05 \
        --out benchmarks/accuracy/short_run_search.jsonl
"""

from __future__ import annotations

import argparse
import json
import logging
import platform
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from precision_costs import SIZE, make_digits  # noqa: E402

from litevit._extras import cpu_isa  # noqa: E402
from litevit.training import recipes  # noqa: E402
from litevit.training import train as T  # noqa: E402

# each config: TrainConfig overrides, or a change to the rule's constants (keys starting with "rule.")
CONFIGS: dict[str, dict] = {
    "rule": {},
    "lr2": {"rule.BASE_LR": 2e-3},
    "lr4": {"rule.BASE_LR": 4e-3},
    "crop05": {"rule.MAX_MIN_CROP": 0.5, "rule.MIN_CROP": 0.5},
    "lr2_crop05": {"rule.BASE_LR": 2e-3, "rule.MIN_CROP": 0.5},
    "lr2_noema": {"rule.BASE_LR": 2e-3, "ema": False},
    "lr2_noflip": {"rule.BASE_LR": 2e-3, "hflip": 0.0},
    "lr2_nols": {"rule.BASE_LR": 2e-3, "label_smoothing": 0.0},
    "lr4_crop05": {"rule.BASE_LR": 4e-3, "rule.MIN_CROP": 0.5},
    "warm0": {"rule.WARMUP_SHARE": 0.0},
    "lr2_warm10": {"rule.BASE_LR": 2e-3, "rule.WARMUP_SHARE": 0.1},
    "ema_w3": {"rule.EMA_WINDOW": 3},
    "b32_lr2_crop05": {"batch_size": 32, "rule.BASE_LR": 2e-3, "rule.MIN_CROP": 0.5},
    "b32_lr4_crop05": {"batch_size": 32, "rule.BASE_LR": 4e-3, "rule.MIN_CROP": 0.5},
}


def run(model: str, name: str, root: Path, work: Path, epochs: int | None, seed: int) -> dict:
    config = dict(CONFIGS[name])
    saved = {}
    for key in [k for k in config if k.startswith("rule.")]:
        attr = key.split(".", 1)[1]
        saved[attr] = getattr(recipes, attr)
        setattr(recipes, attr, config.pop(key))
    out = work / f"{model}-{name}-{seed}"
    start = time.perf_counter()
    try:
        kwargs = {"epochs": epochs} if epochs else {}
        result = T.train(T.TrainConfig(model=model, data=str(root), out=str(out), img_size=SIZE, seed=seed,
                                       progress=False, workers=1, **kwargs, **config))  # fmt: skip
    finally:
        for attr, value in saved.items():
            setattr(recipes, attr, value)
    last = result.history[-1]
    return {
        "model": model, "config": name, "changes": CONFIGS[name], "seed": seed, "epochs": last["epoch"],
        "best_top1": result.best_top1, "last_val_top1": last["val_top1"], "last_ema_val_top1": last.get("ema_val_top1"),
        "last_train_loss": last["train_loss"], "val_images": 539, "img_size": SIZE,
        "wall_s": round(time.perf_counter() - start, 1), "torch": torch.__version__,
        "cpu": platform.processor() or platform.machine(), "isa": sorted(cpu_isa()), "threads": torch.get_num_threads(),
    }  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("models", nargs="+")
    parser.add_argument("--configs", nargs="+", default=list(CONFIGS), choices=list(CONFIGS))
    parser.add_argument("--epochs", type=int, help="default: TrainConfig's default")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory(prefix="litevit-search-") as tmp:
        root = make_digits(Path(tmp) / "digits")
        for model in args.models:
            for name in args.configs:
                for seed in args.seeds:
                    record = run(model, name, root, Path(tmp), args.epochs, seed)
                    print(json.dumps(record), flush=True)
                    with open(args.out, "a") as f:
                        f.write(json.dumps(record) + "\n")


if __name__ == "__main__":
    main()
