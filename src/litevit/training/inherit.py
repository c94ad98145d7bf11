"""What a fine-tuning run takes from the file it starts from: ``train FILE`` and ``train MODEL --checkpoint FILE``.

A litevit file (``best.safetensors``, ``last.pt``, a Hub folder written by litevit) records the resolution it was
trained at, its data config (mean, std, interpolation, channel order, crop), its class names and the model options
its weights build. A run that starts from it takes them, with the rules ``eval`` and ``export`` follow
(:mod:`litevit.weights.loading`), and records them again in the files it writes:

- the resolution and the data config come from the file unless ``--img-size`` / ``--interpolation`` are given; an
  explicit value that differs from the file's is used, with a WARNING that names both; ``--model-kwargs`` add to
  the file's options;
- where the data's classes are the file's (the same names), their labels follow the file's order, so its head is
  kept and class ``i`` stays class ``i``; other classes get a new head (a different count) or start from the file's
  head of the same size (a WARNING names both lists).

Official and timm files carry none of this: the variant's defaults apply, as before.
"""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..registry import DataConfig, Variant, list_models
from ..weights.folder import read_folder
from ..weights.loading import as_tuples
from ..weights.reading import Checkpoint, read_checkpoint
from .config import TrainConfig
from .data import DataSplit

log = logging.getLogger("litevit.training.train")


@dataclass(frozen=True)
class FileSettings:
    """What a starting file records; all None for a file without litevit metadata (official, timm)."""

    source: str
    img_size: int | None = None
    data: DataConfig | None = None
    classes: tuple[str, ...] | None = None
    top1: float | None = None  # the validation top-1 the file was exported with (best.safetensors)
    model_kwargs: dict[str, Any] = dataclasses.field(default_factory=dict)  # the options that build its model


def read_settings(checkpoint: str | Checkpoint) -> FileSettings:
    """The litevit metadata of ``checkpoint`` (a file or a Hub folder) that a fine-tuning run inherits."""
    ckpt = checkpoint if isinstance(checkpoint, Checkpoint) else read_start(checkpoint)
    meta = ckpt.meta or {}
    if "variant" not in meta:
        return FileSettings(ckpt.source)
    size = as_tuples(meta.get("img_size"))
    if isinstance(size, tuple):
        if size[0] != size[1]:
            raise ValueError(
                f"{ckpt.source} was trained at {size[0]}x{size[1]}; litevit train uses square images: pass --img-size"
            )
        size = size[0]
    data = meta.get("data_config")
    data_config = DataConfig(**{k: as_tuples(v) for k, v in data.items()}) if data else None
    classes = meta.get("classes")
    top1 = meta.get("top1")
    return FileSettings(
        ckpt.source,
        int(size) if size is not None else None,
        data_config,
        tuple(classes) if classes else None,
        float(top1) if top1 is not None else None,
        {k: as_tuples(v) for k, v in (meta.get("model_kwargs") or {}).items()},
    )


def read_start(path: str) -> Checkpoint:
    """The starting weights of a run, read once: a file (any layout) or a Hub folder."""
    return read_folder(path) if Path(path).is_dir() else read_checkpoint(path)


def model_from_file(config: TrainConfig) -> TrainConfig:
    """``train FILE``: the variant and the starting weights from a litevit file (or Hub folder) given as the model."""
    if config.model in list_models() or not Path(config.model).exists():
        return config
    if config.checkpoint:
        raise ValueError(
            f"{config.model} is a weights file and --checkpoint {config.checkpoint} was given too: give a model "
            "name with --checkpoint, or the file alone"
        )
    variant = read_start(config.model).meta.get("variant")
    if not variant:
        raise ValueError(
            f"{config.model} has no litevit metadata naming its model: give the model name, "
            f"`litevit train MODEL --checkpoint {config.model}`"
        )
    return dataclasses.replace(config, model=variant, checkpoint=config.model)


def inherit(config: TrainConfig, variant: Variant, file: FileSettings | None) -> tuple[TrainConfig, DataConfig]:
    """``config`` with the image size and the file's model options filled, and the run's data config: the file's
    where it records them, the variant's otherwise; explicit options win, with a WARNING naming both values."""
    data = (file.data if file and file.data else None) or variant.data
    if file is not None and file.model_kwargs:  # the model the file's weights build, recorded again in what it writes
        config = dataclasses.replace(config, model_kwargs={**file.model_kwargs, **config.model_kwargs})
    size = config.img_size
    if file is not None and file.img_size is not None:
        if size is None:
            size = file.img_size
            log.info("%s: training at %d px, the resolution it was trained at", file.source, size)
        elif size != file.img_size:
            log.warning(
                "--img-size %d replaces the %d px that %s was trained at (its resolution-dependent tables are "
                "resampled; the drop this costs shows in the first validation)", size, file.img_size, file.source,
            )  # fmt: skip
    if file is not None and file.data is not None and config.interpolation not in (None, data.interpolation):
        log.warning(
            "--interpolation %s replaces %s, which %s records", config.interpolation, data.interpolation, file.source
        )
    size = size or data.img_size
    return dataclasses.replace(config, img_size=size), dataclasses.replace(data, img_size=size)


def in_file_order(split: DataSplit, file: FileSettings | None) -> DataSplit:
    """``split`` with its labels in the file's class order when the data's classes are the file's (by name)."""
    if file is None or file.classes is None:
        return split
    if set(split.classes) != set(file.classes) or len(file.classes) != len(split.classes):
        log.warning(
            "the data's classes %s are not those of %s %s: %s", _short(split.classes), file.source,
            _short(file.classes), "a new head is trained" if len(split.classes) != len(file.classes)
            else "its head of the same size is the starting point",
        )  # fmt: skip
        return split
    if list(file.classes) == split.classes:
        return split
    index = {name: i for i, name in enumerate(file.classes)}
    relabel = [index[name] for name in split.classes]
    log.info("%s: the data's %d classes take the file's order (its head is kept)", file.source, len(relabel))

    def mapped(samples: list[tuple[str, int]]) -> list[tuple[str, int]]:
        return [(path, relabel[label]) for path, label in samples]

    same = split.val_samples is split.train_samples
    train = mapped(split.train_samples)
    return DataSplit(
        list(file.classes), train, split.train_indices, train if same else mapped(split.val_samples), split.val_indices
    )


def _short(names: Any) -> str:
    names = list(names)
    return str(names) if len(names) <= 6 else f"{names[:5]} ... ({len(names)} classes)"
