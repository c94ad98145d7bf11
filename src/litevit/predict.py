"""Classify image files and evaluate on an ImageFolder, with a litevit model or an exported file; the image sources
(files, folders, globs, ``@list.txt``, ``-``) that bulk prediction streams."""

from __future__ import annotations

import fnmatch
import itertools
import logging
import os
import re
import sys
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import Dataset
from torchvision.datasets.folder import IMG_EXTENSIONS

from ._extras import printable
from .data import (
    ImageLoadError,
    default_workers,
    eval_normalize,
    eval_resize,
    eval_transform,
    image_folder,
    load_image,
    load_image_decoder,
)
from .deploy.accuracy import folder_targets
from .deploy.embeddings import EMBEDDING, with_embeddings
from .deploy.metadata import SUFFIXES
from .deploy.runtime import ExportedModel
from .layers import to_2tuple
from .registry import DataConfig
from .weights.loading import create_model, load, model_info

log = logging.getLogger(__name__)

Classifier = nn.Module | ExportedModel
Row = dict[str, Any]  # one results row of bulk prediction: :func:`columns`
TOPK = 5  # classes shown per image
PREDICT_BATCH_SIZE = 16  # images per forward pass of predict
EVAL_BATCH_SIZE = 64  # images per forward pass of evaluate


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
    skipped: int = 0  # unreadable images, not counted


_GLOB = re.compile(r"[*?\[]")


def check_sources(sources: Sequence[str], missing_files: bool = False) -> None:
    """Raise one line for the first source that names nothing: a glob matching no file, an ``@list`` file that is not
    there, or (unless ``missing_files``: then its row says so) a path that does not exist. ``-`` is always valid."""
    if not sources:
        raise ValueError("no image sources given (expected image files, folders, globs, @list.txt or -)")
    for source in sources:
        if source == "-" or os.path.exists(source):
            continue
        if source.startswith("@"):
            if not os.path.isfile(source[1:]):
                raise FileNotFoundError(f"path list not found: {source[1:]} (from {source})")
        elif _GLOB.search(source):
            if next(_glob(source), None) is None:
                raise FileNotFoundError(f"the glob {source} matches no file")
        elif not missing_files:
            raise FileNotFoundError(
                f"image source not found: {source} (expected an image file, a folder, a glob, @list.txt or -)"
            )


def _walk_images(root: str) -> Iterator[str]:
    """Image files under ``root`` (by extension), sorted within each folder, links followed, each folder entered
    once (a link back up is skipped with a warning, as :func:`litevit.data.walk_classes` does)."""
    entered = {(os.stat(root).st_dev, os.stat(root).st_ino)}
    for folder, subfolders, files in os.walk(root, followlinks=True):
        kept = []
        for sub in sorted(subfolders):
            try:
                stat = os.stat(os.path.join(folder, sub))
            except OSError:
                continue
            if (stat.st_dev, stat.st_ino) in entered:
                log.warning("not entering %s: a folder walked already (a link loop)", os.path.join(folder, sub))
                continue
            entered.add((stat.st_dev, stat.st_ino))
            kept.append(sub)
        subfolders[:] = kept
        yield from (os.path.join(folder, f) for f in sorted(files) if f.lower().endswith(IMG_EXTENSIONS))


def _glob(pattern: str) -> Iterator[str]:
    """Files matching the shell pattern (``*``, ``?``, ``[...]``; ``**``: any folders, at the end: every file below),
    in a stable order; a name starting with ``.`` is matched only by a pattern part starting with ``.``, as in
    :mod:`glob`. Unlike :mod:`glob`, ``**`` enters a folder once (a link back up is not followed: glob repeats it until
    the path is too long, 2^depth paths with two such links), and folders are not matches."""
    parts = pattern.split(os.sep) + (["*"] if pattern.endswith("**") else [])
    first = next(i for i, part in enumerate(parts) if _GLOB.search(part))
    root = os.sep.join(parts[:first]) or (os.sep if pattern.startswith(os.sep) else "")
    entered: set[tuple[int, int]] = set()

    def entries(folder: str) -> list[str]:
        try:
            return sorted(os.listdir(folder or "."))
        except OSError:
            return []

    def match(folder: str, rest: list[str]) -> Iterator[str]:
        if rest[0] == "**":
            stat = os.stat(folder or ".")
            entered.add((stat.st_dev, stat.st_ino))
            yield from match(folder, rest[1:])
            for name in entries(folder):
                path = os.path.join(folder, name)
                if not name.startswith(".") and os.path.isdir(path):
                    stat = os.stat(path)
                    if (stat.st_dev, stat.st_ino) not in entered:
                        entered.add((stat.st_dev, stat.st_ino))
                        yield from match(path, rest)
            return
        for name in entries(folder):
            if fnmatch.fnmatchcase(name, rest[0]) and (rest[0].startswith(".") or not name.startswith(".")):
                path = os.path.join(folder, name)
                if len(rest) == 1 and os.path.isfile(path):
                    yield path
                elif len(rest) > 1 and os.path.isdir(path):
                    yield from match(path, rest[1:])

    return match(root, parts[first:])


def _lines(stream: Iterable[str]) -> Iterator[str]:
    return (line.rstrip("\r\n") for line in stream if line.strip())


def iter_sources(sources: Sequence[str]) -> Iterator[str]:
    """The image paths that ``sources`` name, in a stable order, streamed: an image file as given, a folder's image
    files recursively (:func:`_walk_images`), a glob's matching files (:func:`_glob`), the lines of ``@list.txt``,
    ``-``: the lines of standard input; a path that does not exist as given (its prediction reports it). Call
    :func:`check_sources` first for one-line errors on sources that name nothing."""
    for source in sources:
        if source == "-":
            yield from _lines(sys.stdin)
        elif os.path.isdir(source):
            yield from _walk_images(source)
        elif source.startswith("@") and not os.path.exists(source):
            with open(source[1:], encoding="utf-8") as listing:
                yield from _lines(listing)
        elif os.path.exists(source) or not _GLOB.search(source):
            yield source
        else:
            yield from _glob(source)


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


def iter_predictions(
    model: Classifier,
    paths: Iterable[str | os.PathLike],
    topk: int = TOPK,
    batch_size: int = PREDICT_BATCH_SIZE,
    names: Sequence[str] | None = None,
) -> Iterator[Prediction]:
    """Top-``topk`` classes with probabilities for each image file, in the order given, as they are computed.

    Files are read ``batch_size`` at a time, so memory does not grow with the number of files. A missing,
    unreadable or non-image file gets a :class:`Prediction` whose ``error`` names the file and says why; the other
    files are still classified.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}")
    if isinstance(model, nn.Module):
        model.eval()
    data, img_size, num_classes = preprocessing(model)
    transform = eval_transform(data, img_size)
    names = tuple(names) if names is not None else class_names(model)
    if len(names) != num_classes:
        raise ValueError(f"got {len(names)} class names for a model with {num_classes} classes")
    k = min(topk, num_classes)
    files = iter(paths)
    while chunk := [str(p) for p in itertools.islice(files, batch_size)]:
        results: list[Prediction | None] = [None] * len(chunk)
        loaded: list[tuple[int, torch.Tensor]] = []
        for i, path in enumerate(chunk):
            try:
                loaded.append((i, transform(load_image(path))))
            except ImageLoadError as exc:
                results[i] = Prediction(path, error=str(exc))
        if loaded:
            probs = logits(model, torch.stack([x for _, x in loaded])).float().softmax(dim=-1)
            values, indices = probs.topk(k, dim=-1)
            for (i, _), vals, idxs in zip(loaded, values.tolist(), indices.tolist(), strict=True):
                results[i] = Prediction(chunk[i], tuple((c, names[c], p) for c, p in zip(idxs, vals, strict=True)))
        yield from (r for r in results if r is not None)


def columns(topk: int, embeddings: bool) -> list[str]:
    """The results columns: ``path``, ``error``, then ``top<r>_index``, ``top<r>_name``, ``top<r>_prob`` for each rank
    ``r`` (most likely first), then ``embedding`` (the pre-logits features) with ``embeddings``."""
    ranked = [f"top{r}_{field}" for r in range(1, topk + 1) for field in ("index", "name", "prob")]
    return ["path", "error", *ranked, *(["embedding"] if embeddings else [])]


# decode's and normalized's transforms, built once per data config (and size) in each process
_resize = lru_cache(maxsize=1)(eval_resize)
_normalize = lru_cache(maxsize=1)(eval_normalize)


def decode(
    chunk: Sequence[str], data: DataConfig, img_size: tuple[int, int], decoder: str = "pil"
) -> tuple[np.ndarray | None, list[str | None]]:
    """Resized and cropped images of the readable files of ``chunk`` (``B, C, H, W`` uint8, None if none is
    readable: a quarter of float32's bytes through a worker's pipe) and each file's error (None when read): the first
    part of :func:`predict`'s preprocessing (:func:`litevit.data.eval_resize`; ``decoder="pil"``), or with JPEGs
    decoded by torchvision (:func:`litevit.data.load_image_decoder`). :func:`normalized` does the rest."""
    resize = _resize(data, img_size)
    images, errors = [], []
    for path in chunk:
        try:
            images.append(resize(load_image_decoder(path, decoder)).numpy())
            errors.append(None)
        except ImageLoadError as exc:
            errors.append(str(exc))
    return (np.stack(images) if images else None), errors


def normalized(images: np.ndarray | None, data: DataConfig) -> torch.Tensor | None:
    """A batch from :func:`decode` as the model's input (None stays None): :func:`litevit.data.eval_normalize`, so
    that each image equals :func:`litevit.data.eval_transform`'s output exactly."""
    return None if images is None else _normalize(data)(torch.from_numpy(images))


def check_embeddings(model: Classifier) -> None:
    """One line when ``model`` gives no pre-logits features: an exported file without an ``embedding`` output, or a
    module without timm's ``forward_features`` / ``forward_head``."""
    if isinstance(model, ExportedModel):
        if not model.has_embedding:
            raise ValueError(f"{model.path}: the file has no {EMBEDDING!r} output, so no --embeddings: export it with "
                             "its embeddings, or give the eager model")  # fmt: skip
    else:
        with_embeddings(model)


def forward(model: Classifier, x: torch.Tensor, embeddings: bool) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Logits of a batch, and its pre-logits features with ``embeddings`` (:func:`check_embeddings` says whether
    ``model`` gives them); an eager model's batch goes to its device."""
    if isinstance(model, ExportedModel):
        return model.embed(x) if embeddings else (logits(model, x), None)
    x = x.to(next(model.parameters()).device)
    with torch.inference_mode():
        return with_embeddings(model)(x) if embeddings else (model(x), None)


def batch_rows(
    model: Classifier,
    chunk: Sequence[str],
    images: torch.Tensor | None,
    errors: Sequence[str | None],
    names: Sequence[str],
    topk: int,
    embeddings: bool,
) -> list[Row]:
    """One results row per path of ``chunk``: its top-``topk`` classes, or its error; ``images``: the readable
    ones' model input (:func:`normalized`)."""
    rows: list[Row] = []
    found: Iterator[tuple[list[int], list[float], list[float] | None]] = iter(())
    if images is not None:
        out, features = forward(model, images, embeddings)
        values, indices = out.float().softmax(dim=-1).topk(topk, dim=-1)
        vectors = features.float().tolist() if features is not None else [None] * len(values)
        found = iter(zip(indices.tolist(), values.tolist(), vectors, strict=True))
    for path, error in zip(chunk, errors, strict=True):
        row: Row = {"path": path, "error": error}
        ranked = next(found) if error is None else ([None] * topk, [None] * topk, None)
        for r, (index, prob) in enumerate(zip(ranked[0], ranked[1], strict=True), start=1):
            row[f"top{r}_index"], row[f"top{r}_name"], row[f"top{r}_prob"] = (
                index, None if index is None else names[index], prob
            )  # fmt: skip
        if embeddings:
            row["embedding"] = ranked[2]
        rows.append(row)
    return rows


def predict(
    model: Classifier,
    paths: Iterable[str | os.PathLike],
    topk: int = TOPK,
    batch_size: int = PREDICT_BATCH_SIZE,
    names: Sequence[str] | None = None,
) -> list[Prediction]:
    """All of :func:`iter_predictions` as a list."""
    return list(iter_predictions(model, paths, topk, batch_size, names))


class _Readable(Dataset):
    """An ImageFolder's samples through a transform; an unreadable file gives ``None`` (and a warning naming it)."""

    def __init__(self, samples: Sequence[tuple[str, int]], transform: Callable[[Any], torch.Tensor]) -> None:
        self.samples = samples
        self.transform = transform

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> tuple[torch.Tensor | None, int]:
        path, target = self.samples[index]
        try:
            return self.transform(load_image(path)), target
        except ImageLoadError as exc:
            log.warning("skipped: %s", printable(str(exc)))  # the path holds folder and file names from disk
            return None, target


def _collate(batch: list[tuple[torch.Tensor | None, int]]) -> tuple[torch.Tensor | None, torch.Tensor, int]:
    """Stack the readable images of a batch: ``(images B, C, H, W or None, targets B, skipped count)``."""
    kept = [(x, t) for x, t in batch if x is not None]
    images = torch.stack([x for x, _ in kept]) if kept else None
    return images, torch.tensor([t for _, t in kept], dtype=torch.long), len(batch) - len(kept)


def batch_scores(logits: torch.Tensor, target: torch.Tensor) -> tuple[float, int, int]:
    """Summed cross-entropy, top-1 hits and top-5 hits of one batch (top-k, k = the classes when fewer than 5); the
    scoring of :func:`evaluate` and of the validation during training."""
    logits = logits.float()
    ranked = logits.topk(min(5, logits.shape[-1]), dim=-1).indices  # B, k
    hits = ranked == target[:, None]
    loss = F.cross_entropy(logits, target, reduction="sum").item()
    return loss, int(hits[:, 0].sum()), int(hits.any(dim=1).sum())


def evaluate(
    model: Classifier,
    root: str | os.PathLike,
    batch_size: int = EVAL_BATCH_SIZE,
    workers: int | None = None,
    progress: bool = True,
) -> EvalResult:
    """Top-1, top-5 and mean cross-entropy on an ImageFolder (``root/<class>/<image>``).

    Folders are matched to the model's classes by :func:`~litevit.deploy.accuracy.folder_targets`: by name when the
    checkpoint carries class names (one fine-tuned by ``litevit train``), by ImageNet synset for synset folders
    (Imagenette, ImageNet subsets), else folder ``i`` in sorted order is class ``i``. An unreadable image is skipped
    and counted, not fatal. ``workers`` defaults to :func:`litevit.data.default_workers`.
    """
    from torch.utils.data import DataLoader
    from tqdm import tqdm

    workers = default_workers() if workers is None else workers
    if batch_size < 1 or workers < 0:
        raise ValueError(f"batch_size must be >= 1 and workers >= 0, got {batch_size} and {workers}")
    if isinstance(model, nn.Module):
        model.eval()
    data, img_size, num_classes = preprocessing(model)
    folder = image_folder(root)
    targets = folder_targets(folder.classes, class_names(model), num_classes, strict=True)
    if targets is None and len(folder.classes) > num_classes:
        raise ValueError(f"{root} has {len(folder.classes)} class folders but the model has {num_classes} classes")
    if targets is None and len(folder.classes) != num_classes:
        log.warning(
            "%s has %d class folders for a %d-class model: folder i (sorted) is taken as class i",
            root,
            len(folder.classes),
            num_classes,
        )
    samples = [(path, t if targets is None else targets[t]) for path, t in folder.samples]
    dataset = _Readable(samples, eval_transform(data, img_size))
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=workers, collate_fn=_collate)
    correct1 = correct5 = count = skipped = 0
    loss_sum = 0.0
    bar = tqdm(loader, desc="eval", unit="batch", disable=not progress)
    for images, targets_batch, missed in bar:
        skipped += missed
        if images is None:
            continue
        scores = batch_scores(logits(model, images), targets_batch)
        loss_sum, correct1, correct5 = loss_sum + scores[0], correct1 + scores[1], correct5 + scores[2]
        count += targets_batch.shape[0]
        bar.set_postfix(top1=f"{100 * correct1 / count:.2f}", skipped=skipped)
    if count == 0:
        raise ValueError(f"no readable images under {root} ({skipped} skipped)")
    if skipped:
        log.warning("%d unreadable image(s) under %s skipped", skipped, root)
    return EvalResult(
        100 * correct1 / count, 100 * correct5 / count, loss_sum / count, count, len(folder.classes), skipped
    )
