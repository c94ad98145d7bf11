"""Training data: augmentation, MixUp/CutMix, the image subset the sampler indexes, train/validation split."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset
from torchvision.transforms import v2

from ..data import INTERPOLATIONS, FlipChannels, eval_transform, image_folder, load_image
from ..registry import DataConfig
from .config import TrainConfig
from .sampler import MultiScaleBatchSampler, multi_scale_sizes


def train_transform(data: DataConfig, img_size: int, config: TrainConfig) -> v2.Compose:
    """Training augmentation: random-resized crop, flip, RandAugment, then normalisation and random erasing.

    MixUp/CutMix act on whole batches and are applied in the training loop (:func:`batch_mixer`).
    """
    interpolation = config.interpolation or data.interpolation
    if interpolation not in INTERPOLATIONS:
        raise ValueError(f"unknown interpolation {interpolation!r}; expected one of {', '.join(INTERPOLATIONS)}")
    mode = INTERPOLATIONS[interpolation]
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


def make_loaders(
    config: TrainConfig, split: DataSplit, data: DataConfig, rank: int, world: int, workers: int, device: torch.device
) -> tuple[MultiScaleBatchSampler, DataLoader, DataLoader]:
    """The sampler and loaders of this rank: augmented (multi-scale) training batches, its shard of validation."""
    sizes: tuple[int, ...] | None = None
    if config.multi_scale:
        sizes = config.multi_scale_sizes or multi_scale_sizes(
            data.img_size,
            round(data.img_size * config.multi_scale_min),
            round(data.img_size * config.multi_scale_max),
            config.multi_scale_num,
        )
    sampler = MultiScaleBatchSampler(
        len(split.train_indices),
        config.batch_size,
        data.img_size,
        sizes,
        seed=config.seed,
        num_replicas=world,
        rank=rank,
        drop_last=True,
    )
    if len(sampler) == 0:
        raise ValueError(
            f"the training set has {len(split.train_indices)} images, fewer than one batch of {config.batch_size} "
            f"per process on {world} process(es); lower --batch-size"
        )
    train_set = ImageSubset(split.train_samples, split.train_indices, lambda size: train_transform(data, size, config))
    val_set = ImageSubset(split.val_samples, split.val_indices[rank::world], lambda _: eval_transform(data))
    pin = device.type == "cuda"  # page-locked batches for asynchronous copies to the GPU
    train_loader = DataLoader(
        train_set, batch_sampler=sampler, num_workers=workers, pin_memory=pin, persistent_workers=False
    )
    val_loader = DataLoader(val_set, batch_size=config.batch_size, num_workers=workers, pin_memory=pin)
    return sampler, train_loader, val_loader
