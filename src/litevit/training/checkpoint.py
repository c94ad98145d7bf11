"""Training checkpoints: atomic writes, RNG state, last.pt save/load, best.safetensors export, the metrics log."""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from .._files import atomic_write
from ..registry import DataConfig
from ..weights.checks import load_exact, misfit
from ..weights.reading import read_torch_file
from .config import TrainConfig
from .losses import DistillationLoss
from .optim import ModelEma, WarmupCosine
from .sampler import MultiScaleBatchSampler

log = logging.getLogger("litevit.training.train")


@dataclass
class TrainState:
    """What a training run carries from step to step."""

    model: nn.Module  # the unwrapped model
    net: nn.Module  # the model as trained (DDP-wrapped under torchrun)
    optimizer: torch.optim.Optimizer
    scheduler: WarmupCosine
    scaler: torch.amp.GradScaler
    ema: ModelEma | None
    sampler: MultiScaleBatchSampler
    criterion: DistillationLoss
    mixer: Callable[..., tuple[torch.Tensor, torch.Tensor]] | None


def rng_state() -> dict[str, Any]:
    state: dict[str, Any] = {"torch": torch.get_rng_state(), "python": random.getstate()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    random.setstate(state["python"])
    if "cuda" in state and torch.cuda.is_available() and len(state["cuda"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(state["cuda"])


def seed_epoch(seed: int, epoch: int, rank: int) -> None:
    """Seed the augmentation RNGs from (seed, epoch, rank), so any epoch replays exactly after a resume."""
    value = int(np.random.SeedSequence([seed, epoch, rank]).generate_state(1)[0])
    torch.manual_seed(value)
    random.seed(value)


def jsonable(config: TrainConfig) -> dict[str, Any]:
    return json.loads(json.dumps(dataclasses.asdict(config), default=list))


def export_safetensors(
    path: Path, state: dict[str, torch.Tensor], variant: str, meta: dict[str, Any], data: DataConfig
) -> None:
    """Write weights with litevit metadata (variant, options, data config, classes), atomically."""
    from safetensors.torch import save_file

    tensors = {k: v.detach().to("cpu").contiguous().clone() for k, v in state.items()}
    metadata = {"format": "litevit", "variant": variant, "data_config": json.dumps(dataclasses.asdict(data))}
    metadata.update({k: json.dumps(v) for k, v in meta.items()})
    atomic_write(path, lambda tmp: save_file(tensors, str(tmp), metadata=metadata))


# what a run may change on resume without changing its math: where it reads and writes, how fast, how it reports
_NOT_COMPARED = (
    "data",
    "val",
    "out",
    "resume",
    "resume_override",
    "stop_after",
    "workers",
    "device",
    "progress",
    "recipe",
)


def run_settings(config: TrainConfig, classes: Sequence[str], train_images: int, world: int) -> dict[str, Any]:
    """Every setting that changes the math of a run, as JSON values: the config as given (model options, image size,
    batch, learning rate and schedule, seed, augmentation, distillation; a field left to the short-run rule stays
    None, since the rule's value follows from the others), the class names, the number of training images and the
    number of processes."""
    settings = {k: v for k, v in jsonable(config).items() if k not in _NOT_COMPARED}
    settings.update(classes=list(classes), train_images=train_images, world_size=world)
    return settings


def check_resume(path: Path, saved: dict[str, Any] | None, current: dict[str, Any], overrides: Sequence[str]) -> None:
    """Refuse to resume when a setting differs from the run in ``path``, naming it and both values."""
    unknown = sorted(set(overrides) - set(current))
    if unknown:
        raise ValueError(f"--resume-override {', '.join(unknown)}: not a run setting; settings: {', '.join(current)}")
    if saved is None:
        raise ValueError(f"{path} records no run settings (written by an older litevit); start a new run")
    changed = [k for k in current if k not in overrides and saved.get(k, "<absent>") != current[k]]
    if changed:
        lines = [f"  {k}: {saved.get(k, '<absent>')!r} in that run, {current[k]!r} now" for k in changed]
        raise ValueError(
            f"cannot resume {path}: settings differ from that run\n" + "\n".join(lines) + "\n"
            f"give the same settings, or pass --resume-override {' '.join(changed)} to continue with the new values"
        )


def save_training_checkpoint(
    path: Path,
    state: TrainState,
    config: TrainConfig,
    settings: dict[str, Any],
    epochs_done: int,
    best_top1: float | None,
    meta: dict[str, Any],
    data_config: DataConfig,
) -> None:
    payload = {
        "variant": config.model,
        **meta,
        "data_config": dataclasses.asdict(data_config),
        "epoch": epochs_done,
        "best_top1": best_top1,
        "model": state.model.state_dict(),
        "model_ema": state.ema.state_dict() if state.ema is not None else None,
        "optimizer": state.optimizer.state_dict(),
        "scheduler": state.scheduler.state_dict(),
        "scaler": state.scaler.state_dict(),
        "sampler": state.sampler.state_dict(),
        "rng": rng_state(),
        "settings": settings,  # compared on resume
        "config": jsonable(config),  # the values used, the short-run rule's included (for the record)
    }
    atomic_write(path, lambda tmp: torch.save(payload, tmp))


def load_training_checkpoint(
    path: Path, state: TrainState, settings: dict[str, Any], overrides: Sequence[str]
) -> tuple[int, float | None]:
    """Restore ``state`` from a ``last.pt`` whose settings equal ``settings`` (but for ``overrides``)."""
    if not path.is_file():
        raise FileNotFoundError(f"no checkpoint to resume from at {path}")
    ckpt = read_torch_file(path)
    if not isinstance(ckpt, dict) or "optimizer" not in ckpt:
        raise ValueError(f"{path} is not a litevit training checkpoint (last.pt); --resume needs one")
    check_resume(path, ckpt.get("settings"), settings, overrides)
    parts = [("model", state.model)]
    if state.ema is not None:
        if ckpt.get("model_ema") is None:
            raise ValueError(f"{path} has no EMA weights; resume without --ema or start a new run")
        parts.append(("model_ema", state.ema.module))
    for key, module in parts:
        # exactly as saved: no conversion, resampling or new head, which would make the run differ from one never
        # stopped; a setting overridden on resume that changes the weights' shapes is refused here
        problems = misfit(module.state_dict(), ckpt[key])
        if problems:
            raise ValueError(
                f"the weights in {path} do not fit the model with --resume-override {' '.join(overrides)} "
                f"({problems[0]}); start a new run from them with --checkpoint {path}"
            )
        load_exact(module, ckpt[key], f"{path} ({key})", "the model")
    state.optimizer.load_state_dict(ckpt["optimizer"])
    state.scheduler.load_state_dict(ckpt["scheduler"])
    state.scaler.load_state_dict(ckpt["scaler"])
    state.sampler.load_state_dict(ckpt["sampler"])
    set_rng_state(ckpt["rng"])
    return int(ckpt["epoch"]), ckpt.get("best_top1")


def append_metrics(path: Path, record: dict[str, Any]) -> None:
    """Append one record as one line, flushed to disk, so that a kill leaves at most a torn last line."""
    with open(path, "a") as handle:
        handle.write(json.dumps(record) + "\n")
        handle.flush()
        os.fsync(handle.fileno())


def read_metrics(path: str | os.PathLike) -> list[dict[str, Any]]:
    """The per-epoch records of a ``metrics.jsonl`` log (empty if there is none).

    A line that is not a JSON object (the torn last line of a killed run) is skipped with a warning.
    """
    path = Path(path)
    if not path.exists():
        return []
    records = []
    for number, line in enumerate(path.read_text(errors="replace").splitlines(), 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            record = None
        if not isinstance(record, dict):
            log.warning("%s line %d is not a complete record (a torn write?): skipped", path, number)
            continue
        records.append(record)
    return records
