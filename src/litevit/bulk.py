"""Bulk prediction: a whole image collection into a results file (CSV, JSON lines or Parquet), one row per image,
written in atomically completed parts and resumable after a kill; images decoded in worker processes while the model
runs, or the same rows on Ray Data (``engine="ray"``).

While a run goes, its rows are written ``part_rows`` at a time into ``<out>.parts/`` (each part through
:func:`litevit._files.atomic_write`: complete or absent), next to ``run.json``, what wrote them. A killed run leaves
whole parts; ``resume=True`` checks that the same model and options wrote them, that the sources still give the same
paths first, and goes on after the last part. At the end the parts are joined into ``out`` (atomically) and removed.
"""

from __future__ import annotations

import concurrent.futures as futures
import csv
import hashlib
import itertools
import json
import multiprocessing
import os
import shutil
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from ._extras import require
from ._files import atomic_write
from ._version import __version__
from .data import DECODERS, default_workers
from .deploy.runtime import ExportedModel
from .predict import (
    PREDICT_BATCH_SIZE,
    TOPK,
    Classifier,
    Row,
    batch_rows,
    check_sources,
    class_names,
    columns,
    decode,
    iter_sources,
    load_classifier,
    preprocessing,
)
from .registry import DataConfig
from .weights.loading import model_info

OUT_FORMATS = {".csv": "csv", ".jsonl": "jsonl", ".parquet": "parquet"}
PART_ROWS = 1000  # rows per atomically written part: a kill loses at most this many predictions
META_KEY = "litevit"  # the Parquet schema metadata key holding the run's description; CSV/JSONL: <out>.meta.json
RUN_FILE = "run.json"
ENGINES = ("local", "ray")


class ResultsError(ValueError):
    """The results file cannot be written or resumed; the message is one line saying why and what to do."""


@dataclass(frozen=True)
class Summary:
    """What :func:`predict_files` wrote."""

    out: str
    rows: int  # rows in the results file, one per image
    errors: int  # rows of unreadable images (their ``error`` column says why)
    resumed: int  # rows carried over from an interrupted run
    seconds: float  # wall time of this call

    @property
    def images_per_s(self) -> float:
        return (self.rows - self.resumed) / self.seconds if self.seconds > 0 else 0.0


def out_format(out: str | os.PathLike) -> str:
    """``csv``, ``jsonl`` or ``parquet`` from the suffix of ``out``; one line for any other."""
    suffix = Path(out).suffix.lower()
    if suffix not in OUT_FORMATS:
        raise ValueError(f"unsupported results file {out}: expected a .csv, .jsonl or .parquet suffix")
    return OUT_FORMATS[suffix]


def _fingerprint(model: Classifier) -> str:
    """sha256 of the weights: the exported file(s), or the state dict's names and bytes."""
    digest = hashlib.sha256()
    if isinstance(model, ExportedModel):
        for path in [model.path, *([model.path.with_suffix(".bin")] if model.format == "openvino" else [])]:
            with open(path, "rb") as handle:
                for block in iter(lambda h=handle: h.read(1 << 20), b""):
                    digest.update(block)
        return digest.hexdigest()
    for name, value in sorted(model.state_dict().items()):
        digest.update(name.encode())
        digest.update(value.detach().cpu().contiguous().view(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def describe(model: Classifier, topk: int, embeddings: bool, decoder: str = "pil") -> dict[str, Any]:
    """The run's metadata: model, weights (and their sha256), route, preprocessing (size, decoder), options, litevit
    version."""
    _, img_size, num_classes = preprocessing(model)
    if isinstance(model, ExportedModel):
        name, weights, route = model.metadata.variant, str(model.path), f"{model.format} {model.metadata.precision}"
    else:
        info = model_info(model)
        name, weights, route = info.variant, info.weights, "eager (PyTorch)"
    return {
        "model": name, "weights": weights, "weights_sha256": _fingerprint(model), "route": route,
        "img_size": list(img_size), "num_classes": num_classes, "topk": min(topk, num_classes),
        "embeddings": embeddings, "decoder": decoder, "litevit_version": __version__,
    }  # fmt: skip


_SAME_RUN = ("weights_sha256", "route", "img_size", "topk", "embeddings", "decoder")  # what a resumed run must share


def _check_same_run(found: dict[str, Any], wanted: dict[str, Any], where: Path) -> None:
    def what(meta: dict[str, Any]) -> str:
        options = ", ".join(f"{key} {meta.get(key)}" for key in _SAME_RUN[2:])
        weights = str(meta.get("weights_sha256"))[:12]
        return f"{meta.get('model')} ({meta.get('route')}, weights sha256 {weights}, {options})"

    if any(found.get(key) != wanted[key] for key in _SAME_RUN):
        raise ResultsError(f"--resume: {where} was written by {what(found)}, not by {what(wanted)}; write a new --out")


# ------------------------------------------------------------------------------------------------------------ rows


def _arrow_schema(cols: Sequence[str], meta: dict[str, Any] | None = None) -> Any:
    pa = require("pyarrow", "Parquet results")
    types = {"index": pa.int64(), "name": pa.string(), "prob": pa.float64()}
    fields = [
        pa.field(c, pa.list_(pa.float32()) if c == "embedding" else types.get(c.rsplit("_", 1)[-1], pa.string()))
        for c in cols
    ]
    return pa.schema(fields, metadata={META_KEY: json.dumps(meta)} if meta is not None else None)


def arrow_table(rows: Sequence[Row], cols: Sequence[str], meta: dict[str, Any] | None = None) -> Any:
    """``rows`` as a pyarrow Table with the results schema (``meta`` in its schema metadata)."""
    pa = require("pyarrow", "Parquet results")
    return pa.Table.from_pylist(list(rows), schema=_arrow_schema(cols, meta))


def _csv_cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, list):  # an embedding: floats separated by spaces
        return " ".join(repr(v) for v in value)
    return repr(value) if isinstance(value, float) else str(value)


def _rows_writer(fmt: str, rows: Sequence[Row], cols: Sequence[str], meta: dict[str, Any]) -> Callable[[Path], None]:
    def write(tmp: Path) -> None:
        if fmt == "parquet":
            require("pyarrow.parquet", "Parquet results").write_table(arrow_table(rows, cols, meta), tmp)
            return
        with open(tmp, "w", newline="", encoding="utf-8") as handle:
            if fmt == "csv":
                writer = csv.writer(handle)
                writer.writerow(cols)
                writer.writerows([_csv_cell(row[c]) for c in cols] for row in rows)
            else:
                handle.writelines(json.dumps(row, ensure_ascii=False) + "\n" for row in rows)

    return write


def read_paths_and_errors(path: Path, fmt: str) -> tuple[list[str], int]:
    """The ``path`` column of a results file or part, and how many of its rows hold an error."""
    if fmt == "parquet":
        table = require("pyarrow.parquet", "Parquet results").read_table(path, columns=["path", "error"])
        return table.column("path").to_pylist(), table.num_rows - table.column("error").null_count
    with open(path, newline="", encoding="utf-8") as handle:
        rows = csv.DictReader(handle) if fmt == "csv" else (json.loads(line) for line in handle)
        pairs = [(row["path"], row["error"]) for row in rows]
    return [p for p, _ in pairs], sum(1 for _, e in pairs if e)


def _parts_joiner(parts: Sequence[Path], fmt: str, cols: Sequence[str], meta: dict[str, Any]) -> Callable[[Path], None]:
    """Writes the parts, in order, as one results file (streamed: one part in memory at a time)."""

    def write(tmp: Path) -> None:
        if fmt == "parquet":
            pq = require("pyarrow.parquet", "Parquet results")
            with pq.ParquetWriter(tmp, _arrow_schema(cols, meta)) as writer:
                for part in parts:
                    writer.write_table(pq.read_table(part).replace_schema_metadata(writer.schema.metadata))
            return
        with open(tmp, "wb") as target:
            if fmt == "csv":
                target.write(_csv_header(cols))
            for part in parts:
                with open(part, "rb") as source:
                    if fmt == "csv":
                        source.readline()  # each part's header
                    shutil.copyfileobj(source, target)

    return write


def _write_file(path: Path, write: Callable[[Path], None], parts_dir: Path, finished: int) -> None:
    """:func:`atomic_write`, an OSError (a full disk) turned into one line; the finished parts stay as they are."""
    try:
        atomic_write(path, write)
    except OSError as exc:
        raise ResultsError(
            f"cannot write {path}: {exc.strerror or exc}; the {finished} finished part(s) in {parts_dir} stay "
            "readable and --resume goes on from them"
        ) from None


def sidecar(out: str | os.PathLike) -> Path:
    """The metadata file of a CSV or JSONL results file: ``<out>.meta.json``."""
    return Path(f"{out}.meta.json")


def read_meta(out: str | os.PathLike, fmt: str | None = None) -> dict[str, Any]:
    """The run description stored with a results file: Parquet schema metadata, else the sidecar."""
    if (fmt or out_format(out)) == "parquet":
        schema = require("pyarrow.parquet", "Parquet results").read_schema(out)
        return json.loads((schema.metadata or {}).get(META_KEY.encode(), b"{}"))
    path = sidecar(out)
    return json.loads(path.read_text()) if path.is_file() else {}


def _csv_header(cols: Sequence[str]) -> bytes:
    return (",".join(cols) + "\r\n").encode()  # csv.writer's default line ending


# ------------------------------------------------------------------------------------------------ decode and predict


def _worker_init(parent: int) -> None:
    """A decoding process: one torch thread (the cores are the model's), and it ends when the process that started
    it is gone (a killed run would otherwise leave it waiting for work, holding its memory)."""
    torch.set_num_threads(1)

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(0.5)
        os._exit(1)

    threading.Thread(target=watch, daemon=True).start()


def decoded(
    paths: Iterator[str], data: DataConfig, img_size: tuple[int, int], batch_size: int, workers: int, decoder: str
) -> Iterator[tuple[list[str], np.ndarray | None, list[str | None]]]:
    """Batches of paths with their decoded images, in order; with ``workers`` processes, at most ``2 * workers``
    batches decoded ahead of the model (memory does not grow with the number of paths)."""
    chunks = iter(lambda: list(itertools.islice(paths, batch_size)), [])
    if workers == 0:
        yield from ((chunk, *decode(chunk, data, img_size, decoder)) for chunk in chunks)
        return
    method = "fork" if "fork" in multiprocessing.get_all_start_methods() else "spawn"  # fork: as DataLoader on Linux
    context = multiprocessing.get_context(method)
    pool = futures.ProcessPoolExecutor(workers, mp_context=context, initializer=_worker_init, initargs=(os.getpid(),))
    try:
        pending: deque[tuple[list[str], futures.Future]] = deque()
        for chunk in chunks:
            pending.append((chunk, pool.submit(decode, chunk, data, img_size, decoder)))
            while len(pending) > 2 * workers or (pending and pending[0][1].done()):
                chunk_done, future = pending.popleft()
                yield (chunk_done, *future.result())
        while pending:
            chunk_done, future = pending.popleft()
            yield (chunk_done, *future.result())
    except futures.process.BrokenProcessPool:
        raise ResultsError(
            "a decoding worker process ended unexpectedly (killed, or out of memory); the finished parts stay "
            "readable and --resume goes on from them"
        ) from None
    finally:
        pool.shutdown(cancel_futures=True)


# ------------------------------------------------------------------------------------------------------ the run


def _load(model: Classifier | str | os.PathLike, checkpoint: str | os.PathLike | None, pretrained: bool) -> Classifier:
    if isinstance(model, nn.Module | ExportedModel):
        if checkpoint is not None or pretrained:
            raise ValueError("checkpoint and pretrained apply to a model name, not to a loaded model")
        return model
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
    decoder: str = "pil",
) -> Summary:
    """Predict every image that ``sources`` name (files, folders, globs, ``@list.txt``, ``-``:
    :func:`litevit.predict.iter_sources`) into ``out`` (``.csv``, ``.jsonl`` or ``.parquet``), one row per image:
    :func:`columns`. An unreadable image is a row with its error, counted in the returned :class:`Summary`.

    ``model``: a loaded classifier, or a name or file for :func:`litevit.predict.load_classifier` (with ``checkpoint``
    or ``pretrained``). ``workers``: decoding processes (default :func:`litevit.data.default_workers`; 0 decodes in
    this process); with ``engine="ray"``, the model actors. ``resume``: go on from the parts of an interrupted run
    into the same ``out`` (see the module's description); without it an existing ``out`` or unfinished run is an
    error. ``decoder``: ``"pil"``, predict's own preprocessing (rows equal :func:`litevit.predict.predict`'s), or
    ``"torchvision"``, JPEGs through libjpeg-turbo and torch's resizing (:func:`litevit.data.load_image_decoder`).
    ``engine="ray"`` runs on Ray Data (:func:`predict_ray`), ``ray_address`` naming a cluster.
    """
    fmt = out_format(out)
    if engine not in ENGINES:
        raise ValueError(f"unknown engine {engine!r}; expected one of {', '.join(ENGINES)}")
    if batch_size < 1 or part_rows < 1 or topk < 1 or (workers is not None and workers < 0):
        raise ValueError(f"batch_size, part_rows and topk must be >= 1 and workers >= 0, got {batch_size}, "
                         f"{part_rows}, {topk}, {workers}")  # fmt: skip
    if decoder not in DECODERS:
        raise ValueError(f"unknown decoder {decoder!r}; expected one of {', '.join(DECODERS)}")
    sources = [str(s) for s in sources]
    check_sources(sources)
    if engine == "ray":
        if resume:
            raise ValueError("--resume applies to the local engine; Ray retries failed work within its run")
        return predict_ray(
            model, sources, out, checkpoint=checkpoint, pretrained=pretrained, topk=topk, batch_size=batch_size,
            actors=workers, embeddings=embeddings, address=ray_address, decoder=decoder,
        )  # fmt: skip
    started = time.perf_counter()
    classifier = _load(model, checkpoint, pretrained)
    if embeddings and not isinstance(classifier, nn.Module):
        raise ValueError(
            f"{classifier.path}: an exported file gives class logits only; --embeddings needs the eager model"
        )
    meta = describe(classifier, topk, embeddings, decoder)
    out, cols = Path(out), columns(meta["topk"], embeddings)
    parts_dir = out.with_name(out.name + ".parts")
    if out.exists():
        if not resume:
            raise ResultsError(f"{out} exists; choose another --out, remove it, or --resume to check it is complete")
        _check_same_run(read_meta(out, fmt), meta, out)
        shutil.rmtree(parts_dir, ignore_errors=True)  # left by a kill after the join
        rows, errors = _count(out, fmt)
        return Summary(str(out), rows, errors, rows, time.perf_counter() - started)
    paths = iter_sources(sources)
    done = errors = 0
    parts: list[Path] = []
    if (parts_dir / RUN_FILE).is_file():  # written first: without it, no part was written
        if not resume:
            raise ResultsError(f"{parts_dir} holds an interrupted run: --resume continues it (or remove the folder)")
        _check_same_run(json.loads((parts_dir / RUN_FILE).read_text()), meta, parts_dir)
        parts = sorted(parts_dir.glob(f"part-*.{fmt}"))
        for index, part in enumerate(parts):
            part_paths, part_errors = read_paths_and_errors(part, fmt)
            if list(itertools.islice(paths, len(part_paths))) != part_paths:
                raise ResultsError(f"--resume: the sources no longer give the paths of {part} (part {index}) in "
                                   "order; they changed since the interrupted run: write a new --out")  # fmt: skip
            done, errors = done + len(part_paths), errors + part_errors
    else:
        _write_file(parts_dir / RUN_FILE, lambda tmp: tmp.write_text(json.dumps(meta)), parts_dir, 0)
    resumed = done
    data, img_size, _ = preprocessing(classifier)
    names = class_names(classifier)
    workers = default_workers() if workers is None else workers
    from tqdm import tqdm

    bar = tqdm(desc="predict", unit="img", initial=done, disable=not progress, dynamic_ncols=True)
    buffer: list[Row] = []

    def flush(rows: list[Row]) -> None:
        path = parts_dir / f"part-{len(parts):08d}.{fmt}"
        _write_file(path, _rows_writer(fmt, rows, cols, meta), parts_dir, len(parts))
        parts.append(path)

    try:
        for chunk, images, chunk_errors in decoded(paths, data, img_size, batch_size, workers, decoder):
            buffer += batch_rows(classifier, chunk, images, chunk_errors, names, meta["topk"], embeddings)
            errors += sum(e is not None for e in chunk_errors)
            done += len(chunk)
            bar.update(len(chunk))
            bar.set_postfix(errors=errors, refresh=False)
            while len(buffer) >= part_rows:
                flush(buffer[:part_rows])
                buffer = buffer[part_rows:]
        if buffer:
            flush(buffer)
    finally:
        bar.close()
    out_meta = {**meta, "rows": done, "errors": errors}
    if fmt != "parquet":
        text = json.dumps(out_meta, indent=1) + "\n"
        _write_file(sidecar(out), lambda tmp: tmp.write_text(text), parts_dir, len(parts))
    _write_file(out, _parts_joiner(parts, fmt, cols, out_meta), parts_dir, len(parts))
    shutil.rmtree(parts_dir, ignore_errors=True)
    return Summary(str(out), done, errors, resumed, time.perf_counter() - started)


def _count(out: Path, fmt: str) -> tuple[int, int]:
    paths, errors = read_paths_and_errors(out, fmt)
    return len(paths), errors


# ------------------------------------------------------------------------------------------------------------ Ray


class _RayPredictor:
    """One model per Ray actor: a batch of paths in, its results rows out (an Arrow table)."""

    def __init__(
        self, model: Classifier | str, topk: int, embeddings: bool, meta: dict[str, Any], decoder: str
    ) -> None:
        self.model, self.decoder = _load(model, None, False), decoder
        self.data, self.img_size, _ = preprocessing(self.model)
        self.names, self.topk, self.embeddings, self.meta = class_names(self.model), topk, embeddings, meta
        self.cols = columns(topk, embeddings)

    def __call__(self, batch: dict[str, np.ndarray]) -> Any:
        chunk = [str(p) for p in batch["path"]]
        images, errors = decode(chunk, self.data, self.img_size, self.decoder)
        rows = batch_rows(self.model, chunk, images, errors, self.names, self.topk, self.embeddings)
        return arrow_table(rows, self.cols, self.meta)


def predict_ray(
    model: Classifier | str | os.PathLike,
    sources: Sequence[str],
    out: str | os.PathLike,
    *,
    checkpoint: str | os.PathLike | None = None,
    pretrained: bool = False,
    topk: int = TOPK,
    batch_size: int = PREDICT_BATCH_SIZE,
    actors: int | None = None,
    embeddings: bool = False,
    address: str | None = None,
    decoder: str = "pil",
) -> Summary:
    """The rows of :func:`predict_files` on Ray Data, written as a Parquet dataset (a folder ``out`` of ``.parquet``
    files, rows in no particular order, the run's description in each file's schema metadata).

    The paths (expanded here, strings only) become a dataset; ``map_batches`` runs one model per actor on one CPU
    (``actors``, default: the cluster's CPUs less one, at least 1), each actor decoding its batches; Ray retries the
    batches of an actor that dies. ``address``: a Ray cluster (``ray://...`` or ``auto``); None starts or joins a
    local instance.
    """
    ray = require("ray", "--engine ray")
    require("ray.data", "--engine ray")
    out = Path(out)
    if out_format(out) != "parquet":
        raise ValueError(f"--engine ray writes a Parquet dataset: give an --out ending in .parquet, not {out.name}")
    if out.exists():
        raise ResultsError(f"{out} exists; choose another --out or remove it")
    if actors is not None and actors < 1:
        raise ValueError(f"--engine ray needs at least one model actor (--workers), got {actors}")
    started = time.perf_counter()
    local = _load(model, checkpoint, pretrained)  # the description, and one line for a bad model before Ray starts
    if embeddings and not isinstance(local, nn.Module):
        raise ValueError(f"{local.path}: an exported file gives class logits only; --embeddings needs a model")
    meta = describe(local, topk, embeddings, decoder)
    shipped: Classifier | str = str(local.path) if isinstance(local, ExportedModel) else local  # sessions don't pickle
    if not ray.is_initialized():
        ray.init(address=address, include_dashboard=False, log_to_driver=False)
    if actors is None:
        actors = max(1, int(ray.cluster_resources().get("CPU", 1)) - 1)
    dataset = ray.data.from_items([{"path": path} for path in iter_sources(sources)])
    rows = dataset.map_batches(
        _RayPredictor,
        fn_constructor_kwargs={"model": shipped, "topk": meta["topk"], "embeddings": embeddings, "meta": meta,
                               "decoder": decoder},
        batch_size=batch_size, batch_format="numpy", compute=ray.data.ActorPoolStrategy(size=actors),
        num_cpus=1,
    )  # fmt: skip
    rows.write_parquet(str(out))
    count, errors = _count_dataset(out)
    return Summary(str(out), count, errors, 0, time.perf_counter() - started)


def _count_dataset(folder: Path) -> tuple[int, int]:
    """Rows and error rows of a Parquet dataset folder."""
    count = errors = 0
    for part in sorted(folder.glob("*.parquet")):
        paths, part_errors = read_paths_and_errors(part, "parquet")
        count, errors = count + len(paths), errors + part_errors
    return count, errors
