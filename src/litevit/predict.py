"""Classify image files and evaluate on an ImageFolder, with a litevit model or an exported file."""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from .data import ImageLoadError, eval_transform, image_folder, load_image
from .export import SUFFIXES, ExportedModel
from .layers import to_2tuple
from .loading import create_model, load, model_info
from .registry import DataConfig

log = logging.getLogger(__name__)

Classifier = nn.Module | ExportedModel


@dataclass(frozen=True)
class Prediction:
    """Top-k classes of one image file, or the reason it could not be read."""

    path: str
    topk: tuple[tuple[int, str, float], ...] = ()  # (class index, class name, probability), most likely first
    error: str | None = None


@dataclass(frozen=True)
class EvalResult:
    top1: float  # %
    top5: float  # % (top-k with k = number of classes when there are fewer than 5)
    loss: float  # mean cross-entropy
    count: int  # images evaluated
    num_classes: int  # classes found in the dataset folder


def is_exported(model: str | os.PathLike) -> bool:
    """Whether ``model`` names an exported file (by its suffix) rather than a registered variant."""
    return Path(model).suffix.lower() in SUFFIXES


def load_classifier(
    model: str,
    checkpoint: str | os.PathLike | None = None,
    img_size: int | tuple[int, int] | None = None,
    pretrained: bool = False,
) -> Classifier:
    """An exported ``.onnx``/``.ts``/``.pt2`` file, a litevit file (``best.safetensors``, ``last.pt``), or a
    registered name (``levit_256``, ``levit_256.fb_dist_in1k``) with ``checkpoint`` or its published weights."""
    if is_exported(model):
        if checkpoint is not None or pretrained:
            raise ValueError(f"{model} is an exported model with its own weights; --checkpoint does not apply")
        if img_size is not None:
            raise ValueError(f"{model} is exported for a fixed input size; img_size does not apply")
        return ExportedModel(model)
    if Path(model).is_file():
        if checkpoint is not None:
            raise ValueError(f"{model} is a weights file; give a model name with --checkpoint, or the file alone")
        return load(model, img_size=img_size).eval()
    if checkpoint is None and not pretrained and "." not in model:
        log.warning("%s has no weights (no --checkpoint, no --pretrained): it is randomly initialised", model)
    return create_model(model, checkpoint=checkpoint, img_size=img_size, pretrained=pretrained).eval()


def preprocessing(model: Classifier) -> tuple[DataConfig, tuple[int, int], int]:
    """The data config, input size ``(H, W)`` and class count that ``model`` expects."""
    if isinstance(model, ExportedModel):
        meta = model.metadata
        return meta.data, meta.img_size, meta.num_classes
    info = model_info(model)
    return info.data, to_2tuple(info.img_size), info.num_classes


def class_names(model: Classifier) -> tuple[str, ...]:
    """The class names the weights carry (their own, or ImageNet-1k's), else ``class_<i>``."""
    if isinstance(model, ExportedModel):
        names, count = model.metadata.class_names, model.metadata.num_classes
    else:
        info = model_info(model)
        names, count = info.class_names, info.num_classes
    return tuple(names) if names is not None else tuple(f"class_{i}" for i in range(count))


def logits(model: Classifier, x: torch.Tensor) -> torch.Tensor:
    """Class logits of a batch; pads to the batch size of an exported model whose batch axis is fixed."""
    if isinstance(model, ExportedModel):
        fixed = model.metadata.batch
        if fixed != "dynamic" and x.shape[0] != fixed:
            chunks = []
            for part in x.split(int(fixed)):
                padded = torch.cat([part, part.new_zeros(int(fixed) - part.shape[0], *part.shape[1:])])
                chunks.append(model(padded)[: part.shape[0]])
            return torch.cat(chunks)
        return model(x)
    with torch.inference_mode():
        return model(x)


def predict(
    model: Classifier,
    paths: Iterable[str | os.PathLike],
    topk: int = 5,
    batch_size: int = 16,
    names: Sequence[str] | None = None,
) -> list[Prediction]:
    """Top-``topk`` classes with probabilities for each image file, in the order given.

    A missing, unreadable or non-image file gets a :class:`Prediction` whose ``error`` names the file and says
    why; the other files are still classified.
    """
    if isinstance(model, nn.Module):
        model.eval()
    data, img_size, num_classes = preprocessing(model)
    transform = eval_transform(data, img_size)
    names = tuple(names) if names is not None else class_names(model)
    if len(names) != num_classes:
        raise ValueError(f"got {len(names)} class names for a model with {num_classes} classes")
    k = min(topk, num_classes)
    results: dict[int, Prediction] = {}
    loaded: list[tuple[int, str, torch.Tensor]] = []
    paths = [str(p) for p in paths]
    for i, path in enumerate(paths):
        try:
            loaded.append((i, path, transform(load_image(path))))
        except ImageLoadError as exc:
            results[i] = Prediction(path, error=str(exc))
    for start in range(0, len(loaded), batch_size):
        chunk = loaded[start : start + batch_size]
        probs = logits(model, torch.stack([x for _, _, x in chunk])).float().softmax(dim=-1)
        values, indices = probs.topk(k, dim=-1)
        for (i, path, _), vals, idxs in zip(chunk, values.tolist(), indices.tolist(), strict=True):
            results[i] = Prediction(path, tuple((c, names[c], p) for c, p in zip(idxs, vals, strict=True)))
    return [results[i] for i in range(len(paths))]


def evaluate(
    model: Classifier,
    root: str | os.PathLike,
    batch_size: int = 64,
    workers: int = 4,
    progress: bool = True,
) -> EvalResult:
    """Top-1, top-5 and mean cross-entropy on an ImageFolder (``root/<class>/<image>``).

    When every folder is named after one of the model's classes (a checkpoint that carries its class names, such as
    one fine-tuned by ``litevit train``), folders are matched to classes by name; otherwise folder ``i`` in sorted
    order is class ``i`` of the model.
    """
    from torch.utils.data import DataLoader
    from tqdm import tqdm

    if batch_size < 1 or workers < 0:
        raise ValueError(f"batch_size must be >= 1 and workers >= 0, got {batch_size} and {workers}")
    if isinstance(model, nn.Module):
        model.eval()
    data, img_size, num_classes = preprocessing(model)
    dataset = image_folder(root, eval_transform(data, img_size))
    names = class_names(model)
    if set(dataset.classes) <= set(names):
        index = {name: i for i, name in enumerate(names)}
        dataset.target_transform = [index[c] for c in dataset.classes].__getitem__  # folder -> model class
    elif len(dataset.classes) > num_classes:
        raise ValueError(f"{root} has {len(dataset.classes)} class folders but the model has {num_classes} classes")
    elif len(dataset.classes) != num_classes:
        log.warning(
            "%s has %d class folders for a %d-class model: folder i (sorted) is taken as class i",
            root,
            len(dataset.classes),
            num_classes,
        )
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=workers)
    k = min(5, num_classes)
    correct1 = correct5 = 0
    loss_sum = 0.0
    count = 0
    bar = tqdm(loader, desc="eval", unit="batch", disable=not progress)
    for images, targets in bar:
        out = logits(model, images).float()
        loss_sum += F.cross_entropy(out, targets, reduction="sum").item()
        ranked = out.topk(k, dim=-1).indices  # B, k
        hits = ranked == targets[:, None]
        correct1 += hits[:, 0].sum().item()
        correct5 += hits.any(dim=1).sum().item()
        count += targets.shape[0]
        bar.set_postfix(top1=f"{100 * correct1 / count:.2f}")
    if count == 0:
        raise ValueError(f"no images found under {root}")
    return EvalResult(100 * correct1 / count, 100 * correct5 / count, loss_sum / count, count, len(dataset.classes))
