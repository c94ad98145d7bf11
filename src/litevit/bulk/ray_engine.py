"""The Ray engine (``--engine ray``): the paths as a Ray Data dataset, ``map_batches`` with one model per actor (on a
CPU, and GPUs with ``gpus_per_worker``), each actor decoding its batches. The rows come back to this process, which
writes them in parts as they arrive (``<out>.parts/``, renamed to the Parquet dataset folder ``out`` at the end);
``--resume`` runs only the paths that the finished parts do not hold, so every image is there once."""

from __future__ import annotations

import re
import time
from collections import Counter
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .._extras import require
from ..deploy.runtime import ExportedModel
from ..predict import Classifier, batch_rows, class_names, columns, decode, iter_sources, normalized, preprocessing
from .files import Parts, ResultsError, Summary, arrow_table, read_paths_and_errors


class _RayPredictor:
    """One model per Ray actor: a batch of paths in, its results rows out (an Arrow table)."""

    def __init__(self, model: Classifier | str, meta: dict[str, Any], gpus: float) -> None:
        self.model = ExportedModel(model) if isinstance(model, str) else model  # a file's sessions do not pickle
        if gpus > 0:
            if not torch.cuda.is_available():
                raise RuntimeError(
                    f"this actor was given {gpus:g} GPU(s) (--gpus-per-worker) but torch finds no CUDA device on its "
                    "node (a CPU-only torch build, or no GPU driver)"
                )
            self.model = self.model.to("cuda")
        self.data, self.img_size, _ = preprocessing(self.model)
        self.names, self.meta = class_names(self.model), meta
        self.cols = columns(meta["topk"], meta["embeddings"])

    def __call__(self, batch: dict[str, np.ndarray]) -> Any:
        chunk = [str(p) for p in batch["path"]]
        images, errors = decode(chunk, self.data, self.img_size, self.meta["decoder"])
        x = normalized(images, self.data)
        rows = batch_rows(self.model, chunk, x, errors, self.names, self.meta["topk"], self.meta["embeddings"])
        return arrow_table(rows, self.cols, self.meta)


def _remaining(paths: Iterable[str], done: Counter[str], where: Path) -> list[str]:
    """The paths whose rows the finished parts do not hold (``done``: their rows counted by path, so that a path
    the sources give twice is run twice); one line when the parts hold a row the sources no longer give."""
    todo = []
    for path in paths:
        if done[path] > 0:
            done[path] -= 1
        else:
            todo.append(path)
    left = +done
    if left:
        raise ResultsError(
            f"--resume: {where} holds rows of {left.total()} path(s) the sources no longer give (first: "
            f"{next(iter(left))}); they changed since the interrupted run: write a new --out"
        )
    return todo


def actor_count(actors: int | None, gpus: float, resources: dict[str, float]) -> int:
    """Model actors for a cluster of ``resources`` (``ray.cluster_resources()``): ``actors``, or by default the CPUs
    less one (one for this process), or with ``gpus`` per actor as many as its GPUs hold. One line when the cluster
    lacks the GPUs asked for: Ray would wait for them forever."""
    cpus, have = int(resources.get("CPU", 1)), float(resources.get("GPU", 0))
    if gpus <= 0:
        return actors if actors is not None else max(1, cpus - 1)
    if have == 0:
        raise ValueError(
            f"--gpus-per-worker {gpus:g}: the Ray cluster has no GPU ({cpus} CPU(s)); Ray would wait for one forever"
        )
    fits = int(have / gpus + 1e-9)  # actors whose GPU shares the cluster holds
    actors = actors if actors is not None else max(1, min(fits, cpus))
    if actors * gpus > have + 1e-9:
        raise ValueError(
            f"--gpus-per-worker {gpus:g} for {actors} actor(s) needs {actors * gpus:g} GPU(s) and the Ray cluster "
            f"has {have:g}; Ray would wait for them forever: lower --workers or --gpus-per-worker"
        )
    return actors


def _cause(exc: Exception) -> str:
    """The line naming the exception that a Ray error carries (the last ``SomeError: message`` line of its
    traceback text that is not Ray's own), else its first line."""
    text = re.sub(r"\x1b\[[0-9;]*m", "", str(exc))  # Ray colours the task's name
    found = [line.strip() for line in text.splitlines() if re.match(r"\s*[A-Za-z_][\w.]*(Error|Exception): ", line)]
    own = [line for line in found if not line.startswith("ray.")]
    return (own or found or [f"{type(exc).__name__}: {text.strip().splitlines()[0] if text.strip() else ''}"])[-1]


def check_options(out: Path, actors: int | None) -> Any:
    """Ray (one line without the extra), once ``out`` and ``actors`` are checked: a Parquet dataset, one actor or
    more."""
    ray = require("ray", "--engine ray")
    require("ray.data", "--engine ray")
    if out.suffix.lower() != ".parquet":
        raise ValueError(f"--engine ray writes a Parquet dataset: give an --out ending in .parquet, not {out.name}")
    if actors is not None and actors < 1:
        raise ValueError(f"--engine ray needs at least one model actor (--workers), got {actors}")
    return ray


def run_ray(
    classifier: Classifier,
    meta: dict[str, Any],
    sources: Sequence[str],
    out: Path,
    *,
    batch_size: int,
    actors: int | None,
    address: str | None,
    gpus_per_worker: float,
    resume: bool,
    progress: bool,
    part_rows: int,
) -> Summary:
    """:func:`litevit.bulk.predict_files` on Ray Data (its arguments checked, the model loaded here, ``meta`` its
    description): the rows in no particular order, written in parts of ``part_rows`` as they arrive, renamed to the
    Parquet dataset folder ``out`` (each file holding the run's description in its schema metadata)."""
    ray = check_options(out, actors)
    started = time.perf_counter()
    parts = Parts(out, "parquet", columns(meta["topk"], meta["embeddings"]), meta)
    if out.exists():
        return parts.finished(resume, started)
    if not ray.is_initialized():
        ray.init(address=address, include_dashboard=False, log_to_driver=False)
    actors = actor_count(actors, gpus_per_worker, ray.cluster_resources())  # before anything is written
    done: Counter[str] = Counter()
    errors = 0
    for part in parts.open(resume):
        part_paths, part_errors = read_paths_and_errors(part, "parquet")
        done.update(part_paths)
        errors += part_errors
    resumed = done.total()
    todo = _remaining(iter_sources(sources), done, parts.folder)
    if todo:
        shipped = str(classifier.path) if isinstance(classifier, ExportedModel) else classifier
        dataset = ray.data.from_items([{"path": path} for path in todo])
        rows = dataset.map_batches(
            _RayPredictor, fn_constructor_kwargs={"model": shipped, "meta": meta, "gpus": gpus_per_worker},
            batch_size=batch_size, batch_format="numpy", compute=ray.data.ActorPoolStrategy(size=actors),
            num_cpus=1, num_gpus=gpus_per_worker,
        )  # fmt: skip
        written, new_errors = _write(ray, rows, parts, part_rows, progress, resumed)
        if written != len(todo):
            raise parts.failed(f"Ray gave {written} rows for {len(todo)} images")
        errors += new_errors
    if not parts.files:  # no image: the dataset still holds the schema and the run's description
        parts.write([])
    parts.rename()
    return Summary(str(out), resumed + len(todo), errors, resumed, time.perf_counter() - started)


def _write(ray: Any, rows: Any, parts: Parts, part_rows: int, progress: bool, resumed: int) -> tuple[int, int]:
    """The rows of the Ray dataset ``rows`` written into ``parts`` as they arrive, ``part_rows`` a part; returns how
    many, and how many are errors. A failure in Ray is one line."""
    from tqdm import tqdm

    bar = tqdm(desc="predict", unit="img", initial=resumed, disable=not progress, dynamic_ncols=True)
    written = errors = 0
    try:
        for table in rows.iter_batches(batch_size=part_rows, batch_format="pyarrow"):
            parts.write(table)
            written += table.num_rows
            errors += table.num_rows - table.column("error").null_count
            bar.update(table.num_rows)
            bar.set_postfix(errors=errors, refresh=False)
    except ray.exceptions.RayError as exc:
        raise parts.failed(f"the Ray run failed: {_cause(exc)}") from None
    finally:
        bar.close()
    return written, errors
