"""``predict_files``: its arguments checked and the model loaded once, then the local engine or Ray's."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

from torch import nn

from ..data import DECODERS, default_workers
from ..deploy.runtime import ExportedModel
from ..predict import (
    PREDICT_BATCH_SIZE,
    TOPK,
    Classifier,
    check_embeddings,
    check_sources,
    is_exported,
    load_classifier,
)
from .files import PART_ROWS, Summary, describe, out_format
from .local import run_local
from .ray_engine import check_options, run_ray

ENGINES = ("local", "ray")


def _load(model: Classifier | str | os.PathLike, checkpoint: str | os.PathLike | None, pretrained: bool) -> Classifier:
    if isinstance(model, nn.Module | ExportedModel):
        if checkpoint is not None or pretrained:
            raise ValueError("checkpoint and pretrained apply to a model name, not to a loaded model")
        return model.eval() if isinstance(model, nn.Module) else model
    return load_classifier(str(model), checkpoint, pretrained=pretrained)


def predict_files(
    model: Classifier | str | os.PathLike,
    sources: Sequence[str | os.PathLike],
    out: str | os.PathLike,
    *,
    checkpoint: str | os.PathLike | None = None,
    pretrained: bool = False,
    topk: int = TOPK,
    batch_size: int = PREDICT_BATCH_SIZE,
    workers: int | None = None,
    embeddings: bool = False,
    resume: bool = False,
    progress: bool = True,
    part_rows: int = PART_ROWS,
    engine: str = "local",
    ray_address: str | None = None,
    gpus_per_worker: float = 0.0,
    decoder: str = "pil",
) -> Summary:
    """Predict every image that ``sources`` name (files, folders, globs, ``@list.txt``, ``-``:
    :func:`litevit.predict.iter_sources`) into ``out`` (``.csv``, ``.jsonl`` or ``.parquet``), one row per image:
    :func:`litevit.predict.columns`. An unreadable image is a row with its error, counted in the returned
    :class:`Summary`.

    ``model``: a loaded classifier, or a name or file for :func:`litevit.predict.load_classifier` (with ``checkpoint``
    or ``pretrained``). ``embeddings``: add the pre-logits features (the eager model, or an exported file with an
    ``embedding`` output). ``workers``: decoding processes (default :func:`litevit.data.default_workers`; 0 decodes in
    this process); with ``engine="ray"``, the model actors. ``resume``: go on from the parts of an interrupted run
    into the same ``out`` (:class:`.files.Parts`); without it an existing ``out`` or unfinished run is an error.
    ``decoder``: ``"pil"``, predict's own preprocessing (rows equal :func:`litevit.predict.predict`'s), or
    ``"torchvision"``, JPEGs through libjpeg-turbo and torch's resizing (:func:`litevit.data.load_image_decoder`).
    ``engine="ray"`` runs on Ray Data (:mod:`.ray_engine`), ``ray_address`` naming a cluster, ``gpus_per_worker``
    the GPUs each model actor asks for (the eager model then runs on CUDA).
    """
    fmt = out_format(out)
    if engine not in ENGINES:
        raise ValueError(f"unknown engine {engine!r}; expected one of {', '.join(ENGINES)}")
    if batch_size < 1 or part_rows < 1 or topk < 1 or (workers is not None and workers < 0):
        raise ValueError(f"batch_size, part_rows and topk must be >= 1 and workers >= 0, got {batch_size}, "
                         f"{part_rows}, {topk}, {workers}")  # fmt: skip
    if decoder not in DECODERS:
        raise ValueError(f"unknown decoder {decoder!r}; expected one of {', '.join(DECODERS)}")
    if gpus_per_worker < 0 or (gpus_per_worker > 0 and engine != "ray"):
        raise ValueError(f"--gpus-per-worker {gpus_per_worker:g}: GPUs per model actor, >= 0, with --engine ray")
    sources = [str(s) for s in sources]
    check_sources(sources)
    if engine == "ray":
        check_options(Path(out), workers)  # before the model loads
        exported = isinstance(model, ExportedModel) or (not isinstance(model, nn.Module) and is_exported(model))
        if gpus_per_worker > 0 and exported:
            raise ValueError(f"--gpus-per-worker: {Path(str(getattr(model, 'path', model))).name} runs on CPUs (its "
                             "runtime); GPUs run the eager model (a name or a weights file)")  # fmt: skip
    classifier = _load(model, checkpoint, pretrained)
    if embeddings:
        check_embeddings(classifier)
    meta = describe(classifier, topk, embeddings, decoder)
    options = {"resume": resume, "progress": progress, "part_rows": part_rows, "batch_size": batch_size}
    if engine == "ray":
        return run_ray(classifier, meta, sources, Path(out), actors=workers, address=ray_address,
                       gpus_per_worker=gpus_per_worker, **options)  # fmt: skip
    workers = default_workers() if workers is None else workers
    return run_local(classifier, meta, sources, Path(out), fmt, workers=workers, **options)
