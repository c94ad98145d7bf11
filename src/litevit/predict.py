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

from .data import ImageLoadError, eval_transform, image_folder, imagenet_classes, load_image
from .export import SUFFIXES, ExportedModel
from .layers import to_2tuple
from .registry import DataConfig, create_model, get_variant

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
    model: str, checkpoint: str | os.PathLike | None = None, img_size: int | tuple[int, int] | None = None
) -> Classifier:
    """A registered variant (with ``checkpoint`` loaded, if given) or an exported ``.onnx``/``.ts``/``.pt2`` file."""
    if is_exported(model):
        if checkpoint is not None:
            raise ValueError(f"{model} is an exported model with its own weights; --checkpoint does not apply")
        if img_size is not None:
            raise ValueError(f"{model} is exported for a fixed input size; img_size does not apply")
        return ExportedModel(model)
    return create_model(model, checkpoint=checkpoint, img_size=img_size).eval()


def preprocessing(model: Classifier) -> tuple[DataConfig, tuple[int, int], int]:
    """The data config, input size ``(H, W)`` and class count that ``model`` expects."""
    if isinstance(model, ExportedModel):
        meta = model.metadata
        return meta.data, meta.img_size, meta.num_classes
    name = getattr(model, "variant_name", None)
    config = getattr(model, "config", None)
    if name is None or config is None:
        raise ValueError("the model was not built by litevit.create_model; its data config is unknown")
    return get_variant(name).data, to_2tuple(config.img_size), int(config.num_classes)


def class_names(num_classes: int) -> tuple[str, ...]:
    """ImageNet names for a 1000-class head, else ``class_<i>``."""
    if num_classes == 1000:
        return imagenet_classes()
    return tuple(f"class_{i}" for i in range(num_classes))


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
    names = tuple(names) if names is not None else class_names(num_classes)
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
    """Top-1, top-5 and mean cross-entropy on an ImageFolder (``root/<class>/<image>``, classes in sorted order).

    Folder ``i`` in sorted order is class ``i`` of the model, as with ImageNet's synset folders.
    """
    from torch.utils.data import DataLoader
    from tqdm import tqdm

    if batch_size < 1 or workers < 0:
        raise ValueError(f"batch_size must be >= 1 and workers >= 0, got {batch_size} and {workers}")
    if isinstance(model, nn.Module):
        model.eval()
    data, img_size, num_classes = preprocessing(model)
    dataset = image_folder(root, eval_transform(data, img_size))
    if len(dataset.classes) > num_classes:
        raise ValueError(f"{root} has {len(dataset.classes)} class folders but the model has {num_classes} classes")
    if len(dataset.classes) != num_classes:
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
