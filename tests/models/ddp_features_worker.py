"""One rank of the DDP test of features models (tests/models/test_features.py), run under torch.distributed.run.

    python -m torch.distributed.run --standalone --nproc_per_node 2 ddp_features_worker.py OUT_DIR NAME:INDICES ...

``INDICES`` is ``all`` or comma-separated feature indices (``0,1``). For each case, the features model is wrapped in
``DistributedDataParallel`` (gloo, CPU, default ``find_unused_parameters=False``) and trained for two SGD steps on
a loss over every returned map, each rank on its own batch. A parameter that gets no gradient makes DDP raise at the
second step. A case named ``unpruned:NAME:INDICES`` wraps the classifier the way features models were built before
they were pruned (head removed, nothing else), which DDP must reject: it shows that the check can fail.
Rank ``r`` writes ``OUT_DIR/rank{r}.jsonl``, one line per case: its name, ``ok`` or the error, and a digest of the
trained parameters (equal on every rank when DDP synchronised them).
"""

from __future__ import annotations

import json
import sys
from collections.abc import Sequence
from datetime import timedelta
from pathlib import Path

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel

import litevit

SIZE = 64


class Unpruned(nn.Module):
    """A classifier returning its maps at ``indices`` with every trunk module kept (the pre-pruning extractor)."""

    def __init__(self, model: nn.Module, indices: Sequence[int] | None) -> None:
        super().__init__()
        model.reset_classifier(0)
        self.model = model
        self.indices = indices

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        return self.model.forward_intermediates(x, self.indices, norm=True, stop_early=True, intermediates_only=True)


def build(case: str) -> nn.Module:
    unpruned = case.startswith("unpruned:")
    name, spec = case.removeprefix("unpruned:").split(":")
    indices = None if spec == "all" else [int(i) for i in spec.split(",")]
    torch.manual_seed(0)
    if unpruned:
        return Unpruned(litevit.create_model(name, img_size=SIZE), indices)
    return litevit.create_model(name, img_size=SIZE, features_only=True, out_indices=indices)


def train(model: nn.Module, rank: int, steps: int = 2) -> float:
    net = DistributedDataParallel(model)
    optimizer = torch.optim.SGD(net.parameters(), lr=0.01)
    generator = torch.Generator().manual_seed(rank)  # each rank its own batch: the gradients must be averaged
    for _ in range(steps):
        maps = net(torch.randn(2, 3, SIZE, SIZE, generator=generator))
        loss = sum(m.square().mean() for m in maps)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    with torch.no_grad():
        return float(sum(p.double().square().sum() for p in model.parameters()))


def main(out_dir: Path, cases: list[str]) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", timeout=timedelta(seconds=120))
    rank = dist.get_rank()
    with (out_dir / f"rank{rank}.jsonl").open("w") as log:
        for case in cases:
            record: dict[str, object] = {"case": case, "rank": rank}
            try:
                record["digest"] = train(build(case), rank)
                record["ok"] = True
            except RuntimeError as exc:
                record["ok"] = False
                record["error"] = str(exc).splitlines()[0]
            log.write(json.dumps(record) + "\n")
            log.flush()
            dist.barrier()
    dist.destroy_process_group()


if __name__ == "__main__":
    main(Path(sys.argv[1]), sys.argv[2:])
