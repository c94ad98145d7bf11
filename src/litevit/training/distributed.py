"""Distributed set-up under torchrun: ranks, device, process group, metric reduction."""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class Dist:
    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def main(self) -> bool:
        return self.rank == 0


def init_distributed(device: str | None) -> tuple[Dist, torch.device, bool]:
    """Join the process group torchrun describes in the environment (NCCL on CUDA, gloo on CPU).

    Returns the ranks, this process's device, and whether this call created the group (and should destroy it).
    """
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if device is None:
        device = f"cuda:{local_rank}" if torch.cuda.is_available() else "cpu"
    dev = torch.device(device)
    if dev.type == "cuda":
        torch.cuda.set_device(dev)
    created = False
    if world > 1 and not dist.is_initialized():
        dist.init_process_group(backend="nccl" if dev.type == "cuda" else "gloo")
        created = True
    if dist.is_initialized():
        rank, world = dist.get_rank(), dist.get_world_size()
    return Dist(rank, world, local_rank), dev, created


def all_sum(values: list[float], device: torch.device, ranks: Dist) -> list[float]:
    """Element-wise sum over ranks (identity on one process)."""
    if ranks.world == 1:
        return values
    tensor = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(tensor)
    return tensor.tolist()


def parameter_digest(model: torch.nn.Module) -> str:
    """sha256 of this rank's parameters (names, values) as they are, before any reduction: equal on every rank while
    DDP keeps them in step, so a log of it shows a diverged rank."""
    digest = hashlib.sha256()
    for name, param in model.named_parameters():
        digest.update(name.encode())
        digest.update(param.detach().to("cpu", torch.float32).contiguous().numpy().tobytes())
    return digest.hexdigest()[:16]
