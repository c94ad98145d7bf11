"""Training and fine-tuning: losses (with DeiT distillation), schedule, EMA, train/evaluate loops, checkpoints, DDP.

The recipes follow the papers (see :mod:`litevit.recipes`): AdamW, linear warm-up then cosine decay, EMA of the
weights, torchvision v2 augmentation (random-resized crop, flip, RandAugment, MixUp/CutMix, random erasing), label
smoothing, DeiT distillation (Touvron et al., "Training data-efficient image transformers & distillation through
attention", arXiv:2012.12877, Sec. 4) and the MobileViT multi-scale sampler (:mod:`litevit.sampler`).

Run on one process with ``litevit train`` or on several with ``torchrun --nproc_per_node N -m litevit.train ...``
(NCCL on GPUs, gloo on CPU). Only rank 0 writes; metrics are reduced across ranks. Each epoch ends with an atomic
``last.pt`` (model, EMA, optimizer, schedule, scaler, sampler, RNG states) and, on a new best validation top-1, an
atomic ``best.safetensors`` that records the variant, model options and data config.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import dataclasses
import json
import logging
import math
import os
import random
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, Dataset
from torchvision.transforms import InterpolationMode, v2

from .checkpoint import read_checkpoint, read_torch_file
from .data import FlipChannels, eval_transform, image_folder, load_image
from .loading import as_tuples, create_model, load
from .recipes import get_recipe
from .registry import DataConfig, get_variant, list_models
from .sampler import MultiScaleBatchSampler, multi_scale_sizes
from .weights import split_name

log = logging.getLogger("litevit.train")  # also when run as ``python -m litevit.train``

_INTERPOLATIONS = {
    "nearest": InterpolationMode.NEAREST,
    "bilinear": InterpolationMode.BILINEAR,
    "bicubic": InterpolationMode.BICUBIC,
}
_DISTILL_KINDS = ("none", "soft", "hard")
LAST_CHECKPOINT = "last.pt"
BEST_EXPORT = "best.safetensors"
METRICS_LOG = "metrics.jsonl"


class NonFiniteLossError(RuntimeError):
    """The training loss became NaN or infinite; the last checkpoint written is the last good one."""


@dataclass
class TrainConfig:
    """Everything a run depends on. Recipes (:mod:`litevit.recipes`) fill these fields; options override them."""

    model: str  # registered variant name
    data: str  # ImageFolder root, or a folder with train/ (and val/) ImageFolders
    val: str | None = None  # validation ImageFolder; default: ``data/val`` if present, else a split of the training set
    val_split: float = 0.1  # fraction of every class held out when there is no validation folder
    out: str = "runs/train"  # output folder: last.pt, best.safetensors, metrics.jsonl
    epochs: int = 10
    batch_size: int = 64  # per process, at ``img_size`` (the multi-scale sampler scales it per batch)
    lr: float = 5e-4  # peak learning rate at the global batch ``lr_ref_batch`` (absolute when that is None)
    lr_ref_batch: int | None = 512  # lr, min_lr and warmup_lr scale by global_batch / lr_ref_batch
    min_lr: float = 1e-5  # end of the cosine decay
    warmup_lr: float = 1e-6  # start of the linear warm-up
    warmup_epochs: float = 5.0
    weight_decay: float = 0.05  # AdamW; not applied to biases, norm weights and ``model.no_weight_decay()``
    clip_grad: float | None = None  # max global gradient norm
    img_size: int | None = None  # training and evaluation resolution; default: the variant's data config
    amp: bool = False  # float16 autocast with a gradient scaler on CUDA, bfloat16 autocast on CPU
    ema: bool = False  # keep an exponential moving average of the weights (evaluated and exported when better)
    ema_decay: float = 0.9998
    interpolation: str | None = None  # random-resized-crop interpolation; default: the variant's
    crop_scale: tuple[float, float] = (0.08, 1.0)  # random-resized-crop area range
    hflip: float = 0.5  # horizontal flip probability
    rand_augment: int | None = None  # RandAugment magnitude (2 ops); None: off
    mixup: float = 0.0  # MixUp alpha (0: off)
    cutmix: float = 0.0  # CutMix alpha (0: off); with both on, each batch uses one of them at random
    label_smoothing: float = 0.1
    random_erasing: float = 0.0  # probability, erased area filled with normal noise (DeiT's "pixel" mode)
    drop_path: float | None = None  # override the variant's stochastic depth rate
    multi_scale: bool = False  # MobileViT v1 variable-batch sampler
    multi_scale_sizes: tuple[int, ...] | None = None  # explicit sizes; default: from the three fields below
    multi_scale_min: float = 0.625  # smallest size / img_size (160 at 256)
    multi_scale_max: float = 1.25  # largest size / img_size (320 at 256)
    multi_scale_num: int = 5
    checkpoint: str | None = None  # initial weights (any layout); the head is replaced if the class count differs
    model_kwargs: dict[str, Any] = field(default_factory=dict)  # config overrides for create_model
    teacher: str | None = None  # litevit variant, torchvision classifier name, or a litevit checkpoint file
    teacher_checkpoint: str | None = None  # weights for a teacher given by name
    distill: str | None = None  # hard | soft | none; default: hard with a teacher, none without
    distill_alpha: float = 0.5  # weight of the distillation term
    distill_tau: float = 1.0  # soft-distillation temperature
    resume: str | None = None  # a last.pt to continue from ("auto": out/last.pt)
    stop_after: int | None = None  # stop after this many epochs in this invocation (resume later)
    seed: int = 0
    workers: int = 4  # data-loading processes per rank
    device: str | None = None  # default: cuda:<local rank> when available, else cpu
    progress: bool = True  # progress bar on rank 0
    recipe: str | None = None  # recorded for the log; its values are already applied


@dataclass
class TrainResult:
    history: list[dict[str, Any]]  # one record per epoch run in this invocation (identical on every rank)
    best_top1: float | None
    out: Path
    finished: bool  # all ``epochs`` done (False when stopped by ``stop_after``)
    rank: int = 0  # this process's rank under torchrun


# ---------------------------------------------------------------------------------------------------------- losses


def classification_loss(logits: torch.Tensor, target: torch.Tensor, smoothing: float = 0.0) -> torch.Tensor:
    """Cross-entropy against class indices ``(B,)`` or soft targets ``(B, K)`` (MixUp/CutMix), with label smoothing."""
    if target.ndim == 1:
        return F.cross_entropy(logits, target, label_smoothing=smoothing)
    num_classes = logits.shape[-1]
    target = target * (1.0 - smoothing) + smoothing / num_classes
    return torch.sum(-target * F.log_softmax(logits, dim=-1), dim=-1).mean()


def distillation_loss(student: torch.Tensor, teacher: torch.Tensor, kind: str, tau: float = 1.0) -> torch.Tensor:
    """DeiT's distillation term (arXiv:2012.12877, Sec. 4).

    ``hard``: cross-entropy against the teacher's argmax. ``soft``: KL(teacher || student) at temperature ``tau``,
    times ``tau**2``, summed and divided by the number of logits (the official code's normalisation).
    """
    if student.shape != teacher.shape:
        raise ValueError(
            f"the teacher's logits have shape {tuple(teacher.shape)} but the student's have {tuple(student.shape)}; "
            "the teacher must predict the same classes"
        )
    if kind == "hard":
        return F.cross_entropy(student, teacher.argmax(dim=-1))
    if kind == "soft":
        log_p_student = F.log_softmax(student / tau, dim=-1)
        log_p_teacher = F.log_softmax(teacher / tau, dim=-1)
        kl = F.kl_div(log_p_student, log_p_teacher, reduction="sum", log_target=True)
        return kl * (tau * tau) / student.numel()
    raise ValueError(f"unknown distillation kind {kind!r}; expected 'hard' or 'soft'")


class DistillationLoss:
    """The training criterion: classification loss, plus DeiT distillation when a teacher is given.

    A model with a distillation head (outputs ``(class_logits, dist_logits)``) trains the class head on the labels and
    the distillation head on the teacher: ``(1 - alpha) * CE(class, y) + alpha * KD(dist, teacher)``. A model with one
    output uses plain knowledge distillation on it: ``(1 - alpha) * CE(out, y) + alpha * KD(out, teacher)``. Without
    a teacher both heads of a two-head model learn the labels (averaged), since evaluation averages them.

    The teacher sees the same (augmented, mixed) images, runs in eval mode under ``no_grad`` and is never wrapped in
    DistributedDataParallel. It is not an ``nn.Module`` attribute of anything trained.
    """

    def __init__(
        self,
        teacher: nn.Module | None = None,
        kind: str = "hard",
        alpha: float = 0.5,
        tau: float = 1.0,
        smoothing: float = 0.0,
    ) -> None:
        if kind not in _DISTILL_KINDS:
            raise ValueError(f"unknown distillation kind {kind!r}; expected one of {', '.join(_DISTILL_KINDS)}")
        if not 0.0 <= alpha <= 1.0:
            raise ValueError(f"distill_alpha must be in [0, 1], got {alpha}")
        if tau <= 0:
            raise ValueError(f"distill_tau must be positive, got {tau}")
        if kind != "none" and teacher is None:
            raise ValueError(f"{kind} distillation needs a teacher")
        self.teacher = teacher if kind != "none" else None
        self.kind = kind
        self.alpha = alpha
        self.tau = tau
        self.smoothing = smoothing

    def __call__(
        self, images: torch.Tensor, outputs: torch.Tensor | tuple[torch.Tensor, torch.Tensor], target: torch.Tensor
    ) -> torch.Tensor:
        logits, dist_logits = outputs if isinstance(outputs, tuple) else (outputs, None)
        base = classification_loss(logits, target, self.smoothing)
        if self.teacher is None:
            if dist_logits is None:
                return base
            return (base + classification_loss(dist_logits, target, self.smoothing)) / 2
        with torch.no_grad():
            teacher_logits = self.teacher(images)
        student = dist_logits if dist_logits is not None else logits
        dtype = torch.promote_types(student.dtype, torch.float32)  # half-precision logits under AMP
        kd = distillation_loss(student.to(dtype), teacher_logits.to(dtype), self.kind, self.tau)
        return base * (1.0 - self.alpha) + kd * self.alpha


# ------------------------------------------------------------------------------------------------ schedule and EMA


class WarmupCosine:
    """Linear warm-up from ``warmup_lr`` to ``lr`` over ``warmup_epochs``, then cosine decay to ``min_lr``.

    Driven by fractional epochs (``epoch + step / steps_in_epoch``), so it is exact with variable-length epochs.
    """

    def __init__(
        self,
        optimizer: torch.optim.Optimizer,
        lr: float,
        epochs: int,
        warmup_epochs: float = 0.0,
        min_lr: float = 0.0,
        warmup_lr: float = 0.0,
    ) -> None:
        if epochs <= 0:
            raise ValueError(f"epochs must be positive, got {epochs}")
        if not 0 <= warmup_epochs <= epochs:
            raise ValueError(f"warmup_epochs must be in [0, epochs={epochs}], got {warmup_epochs}")
        self.optimizer = optimizer
        self.lr, self.epochs, self.warmup_epochs = lr, epochs, warmup_epochs
        self.min_lr, self.warmup_lr = min_lr, warmup_lr
        self.last_epoch = 0.0

    def lr_at(self, epoch: float) -> float:
        if epoch < self.warmup_epochs:
            return self.warmup_lr + (self.lr - self.warmup_lr) * epoch / self.warmup_epochs
        span = self.epochs - self.warmup_epochs
        progress = min(1.0, (epoch - self.warmup_epochs) / span) if span > 0 else 1.0
        return self.min_lr + (self.lr - self.min_lr) * 0.5 * (1.0 + math.cos(math.pi * progress))

    def step_to(self, epoch: float) -> float:
        lr = self.lr_at(epoch)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        self.last_epoch = epoch
        return lr

    def state_dict(self) -> dict[str, float]:
        return {"last_epoch": self.last_epoch, "lr": self.lr, "min_lr": self.min_lr, "warmup_lr": self.warmup_lr}

    def load_state_dict(self, state: dict[str, float]) -> None:
        self.last_epoch = float(state["last_epoch"])


class ModelEma:
    """An exponential moving average of a model's parameters and buffers: ``ema = decay * ema + (1 - decay) * w``.

    Integer buffers (BatchNorm's step counters) are copied. The copy is kept in eval mode and never trained.
    """

    def __init__(self, model: nn.Module, decay: float) -> None:
        if not 0.0 <= decay < 1.0:
            raise ValueError(f"ema_decay must be in [0, 1), got {decay}")
        self.module = copy.deepcopy(model).eval().requires_grad_(False)
        self.decay = decay

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        current = model.state_dict()
        for name, ema_value in self.module.state_dict().items():
            value = current[name].detach()
            if ema_value.is_floating_point():
                ema_value.lerp_(value.to(ema_value.dtype), 1.0 - self.decay)
            else:
                ema_value.copy_(value)

    def state_dict(self) -> dict[str, torch.Tensor]:
        return self.module.state_dict()

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        self.module.load_state_dict(state)


def param_groups(model: nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """AdamW groups: no weight decay on 1-D parameters (biases, norms) and on ``model.no_weight_decay()``."""
    skip = set(model.no_weight_decay()) if hasattr(model, "no_weight_decay") else set()
    decay, no_decay = [], []
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        (no_decay if param.ndim <= 1 or name in skip else decay).append(param)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


# ------------------------------------------------------------------------------------------------------------ data


def train_transform(data: DataConfig, img_size: int, config: TrainConfig) -> v2.Compose:
    """Training augmentation: random-resized crop, flip, RandAugment, then normalisation and random erasing.

    MixUp/CutMix act on whole batches and are applied in the training loop (:func:`batch_mixer`).
    """
    interpolation = config.interpolation or data.interpolation
    if interpolation not in _INTERPOLATIONS:
        raise ValueError(f"unknown interpolation {interpolation!r}; expected one of {', '.join(_INTERPOLATIONS)}")
    mode = _INTERPOLATIONS[interpolation]
    # geometric steps run on the PIL image, as in DeiT/timm (PIL resamples bicubically; tensor rotations cannot)
    steps: list[nn.Module] = [
        v2.RandomResizedCrop(img_size, scale=config.crop_scale, interpolation=mode, antialias=True),
    ]
    if config.hflip > 0:
        steps.append(v2.RandomHorizontalFlip(config.hflip))
    if config.rand_augment is not None:
        steps.append(v2.RandAugment(num_ops=2, magnitude=config.rand_augment, interpolation=mode))
    steps += [v2.ToImage(), v2.ToDtype(torch.float32, scale=True)]
    if data.channel_order == "BGR":
        steps.append(FlipChannels())
    steps.append(v2.Normalize(mean=list(data.mean), std=list(data.std)))
    if config.random_erasing > 0:
        steps.append(v2.RandomErasing(config.random_erasing, value="random"))
    steps.append(v2.ToPureTensor())
    return v2.Compose(steps)


def batch_mixer(config: TrainConfig, num_classes: int) -> Callable[..., tuple[torch.Tensor, torch.Tensor]] | None:
    """MixUp and/or CutMix on a batch (one of them chosen at random per batch when both are on), or None."""
    ops: list[nn.Module] = []
    if config.mixup > 0:
        ops.append(v2.MixUp(alpha=config.mixup, num_classes=num_classes))
    if config.cutmix > 0:
        ops.append(v2.CutMix(alpha=config.cutmix, num_classes=num_classes))
    if not ops:
        return None
    return ops[0] if len(ops) == 1 else v2.RandomChoice(ops)


class ImageSubset(Dataset):
    """Images ``indices`` of an ImageFolder with a transform; indexed by position or by ``(size, position)``.

    The multi-scale sampler yields ``(size, position)`` pairs: the transform is built for that size (and cached).
    """

    def __init__(
        self,
        samples: Sequence[tuple[str, int]],
        indices: Sequence[int],
        transform_for_size: Callable[[int], v2.Compose],
    ) -> None:
        self.samples = samples
        self.indices = list(indices)
        self.transform_for_size = transform_for_size
        self._transforms: dict[int, v2.Compose] = {}

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, key: int | tuple[int, int]) -> tuple[torch.Tensor, int]:
        size, position = key if isinstance(key, tuple) else (None, key)
        if size not in self._transforms:
            self._transforms[size] = self.transform_for_size(size)
        path, label = self.samples[self.indices[position]]
        return self._transforms[size](load_image(path)), label


@dataclass
class DataSplit:
    classes: list[str]
    train_samples: list[tuple[str, int]]
    train_indices: list[int]
    val_samples: list[tuple[str, int]]
    val_indices: list[int]


def _stratified_split(targets: Sequence[int], fraction: float, seed: int) -> tuple[list[int], list[int]]:
    """Hold out ``fraction`` of every class (at least one image of classes with two or more), seeded."""
    rng = np.random.default_rng(seed)
    train, val = [], []
    for label in sorted(set(targets)):
        members = [i for i, t in enumerate(targets) if t == label]
        members = [members[j] for j in rng.permutation(len(members))]
        held = min(len(members) - 1, max(1, round(fraction * len(members)))) if fraction > 0 else 0
        val += members[:held]
        train += members[held:]
    return sorted(train), sorted(val)


def find_data(config: TrainConfig) -> DataSplit:
    """Training and validation images from ``--data`` (with train/ and val/, or one folder to split) and ``--val``."""
    root = Path(config.data)
    train_root = root / "train" if (root / "train").is_dir() else root
    val_root: Path | None = None
    if config.val:
        val_root = Path(config.val)
    elif train_root != root and (root / "val").is_dir():
        val_root = root / "val"
    train_folder = image_folder(train_root, transform=None)
    if val_root is None:
        if not 0 < config.val_split < 1:
            raise ValueError(f"{train_root} has no validation folder and val_split={config.val_split} is not in (0, 1)")
        train_idx, val_idx = _stratified_split(train_folder.targets, config.val_split, config.seed)
        return DataSplit(train_folder.classes, train_folder.samples, train_idx, train_folder.samples, val_idx)
    val_folder = image_folder(val_root, transform=None)
    if val_folder.classes != train_folder.classes:
        raise ValueError(
            f"the validation classes {val_folder.classes} differ from the training classes {train_folder.classes}"
        )
    return DataSplit(
        train_folder.classes,
        train_folder.samples,
        list(range(len(train_folder))),
        val_folder.samples,
        list(range(len(val_folder))),
    )


# ------------------------------------------------------------------------------------------------------ distributed


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


def _all_sum(values: list[float], device: torch.device, ranks: Dist) -> list[float]:
    """Element-wise sum over ranks (identity on one process)."""
    if ranks.world == 1:
        return values
    tensor = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(tensor)
    return tensor.tolist()


# ------------------------------------------------------------------------------------------------------ checkpoints


def _fsync_dir(path: Path) -> None:
    with contextlib.suppress(OSError):
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def atomic_write(path: Path, write: Callable[[Path], None]) -> None:
    """Write ``path`` through a temporary file in the same folder, fsync it, then rename over ``path``.

    A reader (or a killed run) sees the old complete file or the new complete file, never a partial one.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        write(tmp)
        with open(tmp, "rb+") as handle:
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
    _fsync_dir(path.parent)


def _rng_state() -> dict[str, Any]:
    state: dict[str, Any] = {"torch": torch.get_rng_state(), "python": random.getstate()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    random.setstate(state["python"])
    if "cuda" in state and torch.cuda.is_available() and len(state["cuda"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(state["cuda"])


def _seed_epoch(seed: int, epoch: int, rank: int) -> None:
    """Seed the augmentation RNGs from (seed, epoch, rank), so any epoch replays exactly after a resume."""
    value = int(np.random.SeedSequence([seed, epoch, rank]).generate_state(1)[0])
    torch.manual_seed(value)
    random.seed(value)


def _jsonable(config: TrainConfig) -> dict[str, Any]:
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


# --------------------------------------------------------------------------------------------------------- teacher


def build_teacher(name: str, checkpoint: str | None, num_classes: int, img_size: int) -> nn.Module:
    """A frozen teacher in eval mode: a litevit checkpoint file, a litevit variant, or a torchvision classifier."""
    import torchvision

    if Path(name).is_file():
        teacher = load(name)
    elif split_name(name)[0] in list_models():
        # weights decide the head: a teacher whose classes differ is refused below, never given a fresh head
        given = "." in name or checkpoint is not None
        teacher = create_model(
            name, checkpoint=checkpoint, num_classes=None if given else num_classes, img_size=img_size
        )
        if teacher.config.num_classes != num_classes:
            raise ValueError(
                f"teacher {name} predicts {teacher.config.num_classes} classes, the data has {num_classes}: "
                "distil from a teacher fine-tuned on the same classes"
            )
    elif name in torchvision.models.list_models(module=torchvision.models):
        teacher = torchvision.models.get_model(name, weights=None, num_classes=num_classes)
        if checkpoint is not None:
            state, own = read_checkpoint(checkpoint).state, teacher.state_dict()
            missing = sorted(set(own) - set(state))
            unexpected = sorted(set(state) - set(own))
            mismatched = sorted(k for k in set(own) & set(state) if own[k].shape != state[k].shape)
            if missing or unexpected or mismatched:
                raise ValueError(
                    f"{checkpoint} does not fit torchvision's {name} with {num_classes} classes: missing "
                    f"{missing[:8]}, unexpected {unexpected[:8]}, shape mismatch {mismatched[:8]}"
                )
            teacher.load_state_dict(state)
    else:
        raise ValueError(
            f"unknown teacher {name!r}: expected a file, a litevit model ({', '.join(list_models())}) "
            "or a torchvision classifier name (e.g. regnet_y_16gf)"
        )
    if checkpoint is None and not Path(name).is_file() and "." not in name:
        log.warning("teacher %s has no checkpoint: it is randomly initialised", name)
    return teacher.eval().requires_grad_(False)


# ----------------------------------------------------------------------------------------------------------- loops


def _autocast(device: torch.device, enabled: bool) -> contextlib.AbstractContextManager:
    if not enabled:
        return contextlib.nullcontext()
    dtype = torch.float16 if device.type == "cuda" else torch.bfloat16
    return torch.autocast(device_type=device.type, dtype=dtype)


@torch.no_grad()
def evaluate(
    model: nn.Module,
    loader: DataLoader,
    device: torch.device,
    amp: bool = False,
    ranks: Dist | None = None,
) -> dict[str, float]:
    """Loss, top-1 and top-5 (%) over the loader, summed over all ranks' shards."""
    ranks = ranks or Dist()
    was_training = model.training
    model.eval()
    loss_sum, top1, top5, count = 0.0, 0.0, 0.0, 0.0
    for images, target in loader:
        images, target = images.to(device, non_blocking=True), target.to(device, non_blocking=True)
        with _autocast(device, amp):
            logits = model(images)
        logits = logits.float()
        loss_sum += F.cross_entropy(logits, target, reduction="sum").item()
        ranked = logits.topk(min(5, logits.shape[-1]), dim=-1).indices  # B, k
        hits = ranked == target[:, None]
        top1 += hits[:, 0].sum().item()
        top5 += hits.any(dim=-1).sum().item()
        count += target.numel()
    model.train(was_training)
    loss_sum, top1, top5, count = _all_sum([loss_sum, top1, top5, count], device, ranks)
    if count == 0:
        raise ValueError("the validation set is empty")
    return {"loss": loss_sum / count, "top1": 100.0 * top1 / count, "top5": 100.0 * top5 / count}


def _progress(iterable: DataLoader, total: int, enabled: bool, desc: str) -> Any:
    from tqdm import tqdm

    return tqdm(iterable, total=total, disable=not enabled, desc=desc, dynamic_ncols=True, leave=False)


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


def train_one_epoch(
    state: TrainState, loader: DataLoader, epoch: int, config: TrainConfig, device: torch.device, ranks: Dist
) -> dict[str, float]:
    """One pass over this rank's shard; returns the mean training loss over all ranks, lr and images/s."""
    state.sampler.set_epoch(epoch)
    steps = len(state.sampler)
    state.net.train()
    loss_sum, seen, lr = 0.0, 0, state.scheduler.lr_at(epoch)
    start = time.perf_counter()
    bar = _progress(loader, steps, config.progress and ranks.main, f"epoch {epoch + 1}/{config.epochs}")
    for step, (images, target) in enumerate(bar):
        lr = state.scheduler.step_to(epoch + step / steps)
        images, target = images.to(device, non_blocking=True), target.to(device, non_blocking=True)
        if state.mixer is not None:
            images, target = state.mixer(images, target)
        with _autocast(device, config.amp):
            outputs = state.net(images)
            loss = state.criterion(images, outputs, target)
        finite = torch.isfinite(loss.detach()).to(torch.float32)
        if ranks.world > 1:
            dist.all_reduce(finite, op=dist.ReduceOp.MIN)
        if finite.item() == 0:
            raise NonFiniteLossError(
                f"the training loss is {loss.item()} at epoch {epoch + 1}, step {step + 1}/{steps} (on some rank); "
                f"stopping. The last checkpoint in {config.out} (end of epoch {epoch}) is intact: resume from it with "
                "a lower --lr, gradient clipping (--clip-grad) or without --amp"
            )
        state.optimizer.zero_grad(set_to_none=True)
        state.scaler.scale(loss).backward()
        if config.clip_grad is not None:
            state.scaler.unscale_(state.optimizer)
            nn.utils.clip_grad_norm_(state.model.parameters(), config.clip_grad)
        state.scaler.step(state.optimizer)
        state.scaler.update()
        if state.ema is not None:
            state.ema.update(state.model)
        loss_sum += loss.item() * images.shape[0]
        seen += images.shape[0]
        elapsed = time.perf_counter() - start
        bar.set_postfix(loss=f"{loss.item():.4f}", lr=f"{lr:.2e}", img_s=f"{seen * ranks.world / elapsed:.1f}")
    bar.close()
    elapsed = time.perf_counter() - start
    loss_sum, total = _all_sum([loss_sum, float(seen)], device, ranks)
    return {"train_loss": loss_sum / max(total, 1.0), "lr": lr, "images_per_s": total / elapsed}


# ---------------------------------------------------------------------------------------------------------- driver


def _effective_lrs(config: TrainConfig, world: int) -> tuple[float, float, float]:
    scale = 1.0 if config.lr_ref_batch is None else config.batch_size * world / config.lr_ref_batch
    return config.lr * scale, config.min_lr * scale, config.warmup_lr * scale


def _validate(config: TrainConfig) -> str:
    if config.epochs < 1:
        raise ValueError(f"epochs must be at least 1, got {config.epochs}")
    if config.batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {config.batch_size}")
    distill = config.distill or ("hard" if config.teacher else "none")
    if distill not in _DISTILL_KINDS:
        raise ValueError(f"unknown distillation {distill!r}; expected one of {', '.join(_DISTILL_KINDS)}")
    if distill != "none" and not config.teacher:
        raise ValueError(f"--distill {distill} needs a --teacher")
    get_variant(config.model)
    return distill


def read_metrics(path: str | os.PathLike) -> list[dict[str, Any]]:
    """The per-epoch records of a ``metrics.jsonl`` log (empty if there is none)."""
    path = Path(path)
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def train(config: TrainConfig) -> TrainResult:
    """Train ``config.model`` on ``config.data``; see the module docstring. Works as one process or under torchrun."""
    distill = _validate(config)
    ranks, device, created_group = init_distributed(config.device)
    try:
        return _train(config, distill, ranks, device)
    finally:
        if created_group and dist.is_initialized():
            dist.destroy_process_group()


def _train(config: TrainConfig, distill: str, ranks: Dist, device: torch.device) -> TrainResult:
    out = Path(config.out)
    variant = get_variant(config.model)
    split = find_data(config)
    num_classes = len(split.classes)
    img_size = config.img_size or variant.data.img_size
    data_config = dataclasses.replace(variant.data, img_size=img_size)

    # the model: same initial weights on every rank (DDP also broadcasts rank 0's)
    torch.manual_seed(config.seed)
    kwargs = dict(config.model_kwargs)
    if config.drop_path is not None:
        kwargs["drop_path"] = config.drop_path
    model = create_model(
        config.model, checkpoint=config.checkpoint, num_classes=num_classes, img_size=img_size, **kwargs
    )
    model.to(device)
    net: nn.Module = model
    if ranks.world > 1:
        net = nn.parallel.DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)

    lr, min_lr, warmup_lr = _effective_lrs(config, ranks.world)
    optimizer = torch.optim.AdamW(param_groups(model, config.weight_decay), lr=lr)
    scheduler = WarmupCosine(optimizer, lr, config.epochs, config.warmup_epochs, min_lr, warmup_lr)
    scaler = torch.amp.GradScaler(device.type, enabled=config.amp and device.type == "cuda")
    ema = ModelEma(model, config.ema_decay) if config.ema else None

    teacher = None
    if distill != "none":
        teacher = build_teacher(config.teacher, config.teacher_checkpoint, num_classes, img_size).to(device)
    criterion = DistillationLoss(teacher, distill, config.distill_alpha, config.distill_tau, config.label_smoothing)
    mixer = batch_mixer(config, num_classes)

    sizes: tuple[int, ...] | None = None
    if config.multi_scale:
        sizes = config.multi_scale_sizes or multi_scale_sizes(
            img_size,
            round(img_size * config.multi_scale_min),
            round(img_size * config.multi_scale_max),
            config.multi_scale_num,
        )
    sampler = MultiScaleBatchSampler(
        len(split.train_indices),
        config.batch_size,
        img_size,
        sizes,
        seed=config.seed,
        num_replicas=ranks.world,
        rank=ranks.rank,
        drop_last=True,
    )
    if len(sampler) == 0:
        raise ValueError(
            f"the training set has {len(split.train_indices)} images, fewer than one batch of {config.batch_size} "
            f"per process on {ranks.world} process(es); lower --batch-size"
        )
    train_set = ImageSubset(
        split.train_samples, split.train_indices, lambda size: train_transform(data_config, size, config)
    )
    val_set = ImageSubset(
        split.val_samples, split.val_indices[ranks.rank :: ranks.world], lambda _: eval_transform(data_config)
    )
    pin = device.type == "cuda"
    train_loader = DataLoader(
        train_set, batch_sampler=sampler, num_workers=config.workers, pin_memory=pin, persistent_workers=False
    )
    val_loader = DataLoader(val_set, batch_size=config.batch_size, num_workers=config.workers, pin_memory=pin)
    state = TrainState(model, net, optimizer, scheduler, scaler, ema, sampler, criterion, mixer)

    start_epoch, best_top1 = 0, None
    if config.resume:
        path = out / LAST_CHECKPOINT if config.resume == "auto" else Path(config.resume)
        start_epoch, best_top1 = _load_training_checkpoint(path, state, config, num_classes)
        log.info("resumed from %s at epoch %d", path, start_epoch)
        if ranks.main:  # drop log lines of epochs the checkpoint does not include (the run was killed in between)
            kept = [r for r in read_metrics(out / METRICS_LOG) if r.get("epoch", 0) <= start_epoch]
            atomic_write(out / METRICS_LOG, lambda tmp: tmp.write_text("".join(json.dumps(r) + "\n" for r in kept)))
    elif (out / LAST_CHECKPOINT).exists():
        raise ValueError(f"{out / LAST_CHECKPOINT} exists: pass --resume to continue that run, or choose another --out")

    meta = {
        "num_classes": num_classes,
        "img_size": img_size,
        "model_kwargs": kwargs,
        "classes": split.classes,
    }
    history: list[dict[str, Any]] = []
    epoch = start_epoch
    end = config.epochs if config.stop_after is None else min(config.epochs, start_epoch + config.stop_after)
    for epoch in range(start_epoch, end):
        _seed_epoch(config.seed, epoch, ranks.rank)
        tic = time.perf_counter()
        record: dict[str, Any] = {"epoch": epoch + 1}
        record.update(train_one_epoch(state, train_loader, epoch, config, device, ranks))
        val = evaluate(model, val_loader, device, config.amp, ranks)
        record.update({f"val_{k}": v for k, v in val.items()})
        candidates = [("model", val["top1"], model)]
        if ema is not None:
            ema_val = evaluate(ema.module, val_loader, device, config.amp, ranks)
            record.update({f"ema_val_{k}": v for k, v in ema_val.items()})
            candidates.append(("ema", ema_val["top1"], ema.module))
        weights, top1, best_module = max(candidates, key=lambda c: c[1])
        improved = best_top1 is None or top1 > best_top1
        if improved:
            best_top1 = top1
        record.update({"best_top1": best_top1, "epoch_time_s": time.perf_counter() - tic})
        history.append(record)
        log.info("rank %d epoch %d: %s", ranks.rank, epoch + 1, json.dumps(record, sort_keys=True))
        if ranks.main:
            if improved:
                best_meta = dict(meta, epoch=epoch + 1, top1=top1, weights=weights)
                export_safetensors(out / BEST_EXPORT, best_module.state_dict(), config.model, best_meta, data_config)
            with open(out / METRICS_LOG, "a") as handle:
                handle.write(json.dumps(record) + "\n")
            _save_training_checkpoint(out / LAST_CHECKPOINT, state, config, epoch + 1, best_top1, meta, data_config)
    finished = end == config.epochs
    return TrainResult(history, best_top1, out, finished, ranks.rank)


def _save_training_checkpoint(
    path: Path,
    state: TrainState,
    config: TrainConfig,
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
        "rng": _rng_state(),
        "config": _jsonable(config),
    }
    atomic_write(path, lambda tmp: torch.save(payload, tmp))


def _load_training_checkpoint(
    path: Path, state: TrainState, config: TrainConfig, num_classes: int
) -> tuple[int, float | None]:
    if not path.is_file():
        raise FileNotFoundError(f"no checkpoint to resume from at {path}")
    ckpt = read_torch_file(path)
    if not isinstance(ckpt, dict) or "optimizer" not in ckpt:
        raise ValueError(f"{path} is not a litevit training checkpoint (last.pt); --resume needs one")
    if ckpt.get("variant") != config.model or ckpt.get("num_classes") != num_classes:
        raise ValueError(
            f"{path} is a {ckpt.get('variant')} run with {ckpt.get('num_classes')} classes; this run trains "
            f"{config.model} on {num_classes} classes"
        )
    state.model.load_state_dict(ckpt["model"])
    if state.ema is not None:
        if ckpt.get("model_ema") is None:
            raise ValueError(f"{path} has no EMA weights; resume without --ema or start a new run")
        state.ema.load_state_dict(ckpt["model_ema"])
    state.optimizer.load_state_dict(ckpt["optimizer"])
    state.scheduler.load_state_dict(ckpt["scheduler"])
    state.scaler.load_state_dict(ckpt["scaler"])
    state.sampler.load_state_dict(ckpt["sampler"])
    _set_rng_state(ckpt["rng"])
    return int(ckpt["epoch"]), ckpt.get("best_top1")


# -------------------------------------------------------------------------------------------------------- options


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The ``train`` options, shared by ``litevit train`` and ``python -m litevit.train``.

    Every hyper-parameter defaults to None here so that a ``--recipe`` value is only replaced by an explicit option.
    """
    p = parser
    p.add_argument("model", help="registered model name, e.g. levit_128s")
    p.add_argument("--data", required=True, help="ImageFolder root, or a folder holding train/ and val/ ImageFolders")
    p.add_argument("--val", help="validation ImageFolder (default: DATA/val, else a split of the training images)")
    p.add_argument("--val-split", type=float, help="fraction held out per class when there is no validation folder")
    p.add_argument("--recipe", help="a paper's hyper-parameters (levit, efficientvit_msra, mobilevit_v1, ...)")
    p.add_argument("--out", help="output folder (default runs/train)")
    p.add_argument("--epochs", type=int)
    p.add_argument("--batch-size", type=int, help="images per process per step")
    p.add_argument("--lr", type=float, help="peak learning rate at --lr-ref-batch global images")
    p.add_argument("--lr-ref-batch", type=int, help="global batch the lr refers to (0: use --lr as is)")
    p.add_argument("--min-lr", type=float)
    p.add_argument("--warmup-lr", type=float)
    p.add_argument("--weight-decay", type=float)
    p.add_argument("--warmup-epochs", type=float)
    p.add_argument("--clip-grad", type=float, help="max gradient norm")
    p.add_argument("--img-size", type=int, help="training resolution (default: the model's)")
    p.add_argument("--amp", action=argparse.BooleanOptionalAction, default=None, help="mixed precision")
    p.add_argument("--ema", action=argparse.BooleanOptionalAction, default=None, help="EMA of the weights")
    p.add_argument("--ema-decay", type=float)
    p.add_argument("--interpolation", choices=sorted(_INTERPOLATIONS))
    p.add_argument("--hflip", type=float, help="horizontal flip probability")
    p.add_argument("--rand-augment", type=int, help="RandAugment magnitude (negative: off)")
    p.add_argument("--mixup", type=float, help="MixUp alpha (0: off)")
    p.add_argument("--cutmix", type=float, help="CutMix alpha (0: off)")
    p.add_argument("--label-smoothing", type=float)
    p.add_argument("--random-erasing", type=float, help="random erasing probability")
    p.add_argument("--drop-path", type=float, help="stochastic depth rate")
    p.add_argument("--multi-scale", action=argparse.BooleanOptionalAction, default=None, help="variable-batch sampler")
    p.add_argument("--multi-scale-sizes", type=int, nargs="+", help="explicit sizes for the multi-scale sampler")
    p.add_argument("--checkpoint", help="initial weights (head replaced when the class count differs)")
    p.add_argument(
        "--model-kwargs", type=json.loads, help="model config overrides as JSON, e.g. '{\"drop_path\": 0.1}'"
    )
    p.add_argument("--teacher", help="teacher: litevit model, torchvision classifier (e.g. regnet_y_16gf) or file")
    p.add_argument("--teacher-checkpoint", help="weights of a teacher given by name")
    p.add_argument("--distill", choices=_DISTILL_KINDS, help="distillation type (default: hard with a teacher)")
    p.add_argument("--distill-alpha", type=float)
    p.add_argument("--distill-tau", type=float)
    p.add_argument("--resume", nargs="?", const="auto", help="continue OUT/last.pt (or the given checkpoint)")
    p.add_argument("--stop-after", type=int, help="stop after this many epochs (resume later with --resume)")
    p.add_argument("--seed", type=int)
    p.add_argument("--workers", type=int, help="data-loading processes per rank")
    p.add_argument("--device", help="e.g. cpu, cuda:0 (default: the local GPU if any)")
    p.add_argument("--no-progress", dest="progress", action="store_false", default=None, help="no progress bar")


def config_from_args(args: argparse.Namespace) -> TrainConfig:
    """TrainConfig from the parsed options: defaults, then the recipe, then every option given explicitly."""
    values: dict[str, Any] = get_recipe(args.recipe) if args.recipe else {}
    names = {f.name for f in dataclasses.fields(TrainConfig)}
    for name in names:
        value = getattr(args, name, None)
        if value is not None:
            values[name] = value
    if values.get("rand_augment") is not None and values["rand_augment"] < 0:
        values["rand_augment"] = None
    if values.get("lr_ref_batch") == 0:
        values["lr_ref_batch"] = None
    if values.get("multi_scale_sizes"):
        values["multi_scale_sizes"] = tuple(values["multi_scale_sizes"])
        values.setdefault("multi_scale", True)
    if values.get("model_kwargs") is not None:
        if not isinstance(values["model_kwargs"], dict):
            raise ValueError(f"--model-kwargs must be a JSON object, got {values['model_kwargs']!r}")
        values["model_kwargs"] = {k: as_tuples(v) for k, v in values["model_kwargs"].items()}
    return TrainConfig(**values)


def summary(result: TrainResult) -> str:
    """A one-paragraph report of a finished (or stopped) run, for the command line."""
    lines = []
    if result.history:
        last = result.history[-1]
        lines.append(
            f"epoch {last['epoch']}: train loss {last['train_loss']:.4f}, val top-1 {last['val_top1']:.2f}%, "
            f"val loss {last['val_loss']:.4f}"
        )
    if result.best_top1 is not None:
        lines.append(f"best val top-1 {result.best_top1:.2f}% -> {result.out / BEST_EXPORT}")
    lines.append(("finished" if result.finished else "stopped; continue with --resume") + f": {result.out}")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m litevit.train MODEL --data DIR ...``, also under ``torchrun``."""
    parser = argparse.ArgumentParser(prog="litevit.train", description="Train or fine-tune a litevit model.")
    parser.add_argument("--log-level", default="INFO", help="logging level (DEBUG, INFO, WARNING)")
    add_arguments(parser)
    args = parser.parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(), format="%(levelname)s %(name)s: %(message)s")
    try:
        result = train(config_from_args(args))
    except NonFiniteLossError as exc:
        print(f"litevit.train: {exc}", file=sys.stderr)
        return 3
    except (ValueError, FileNotFoundError) as exc:
        print(f"litevit.train: error: {exc}", file=sys.stderr)
        return 2
    if result.rank == 0:
        print(summary(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
