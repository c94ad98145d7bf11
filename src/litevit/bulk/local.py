"""The local engine: images decoded in worker processes while the model runs in this one, rows written in parts in
the order of the sources; ``--resume`` goes on after the last complete part."""

from __future__ import annotations

import concurrent.futures as futures
import itertools
import multiprocessing
import os
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..predict import Classifier, Row, batch_rows, class_names, columns, decode, iter_sources, normalized, preprocessing
from ..registry import DataConfig
from .files import Parts, ResultsError, Summary, read_paths_and_errors


def _worker_init(parent: int) -> None:
    """A decoding process: one torch thread (the cores are the model's), and it ends when the process that started
    it is gone (a killed run would otherwise leave it waiting for work, holding its memory)."""
    torch.set_num_threads(1)

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(0.5)
        os._exit(1)

    threading.Thread(target=watch, daemon=True).start()


def in_order(
    pool: futures.Executor, jobs: Iterator[tuple[Any, Callable[..., Any], tuple]], ahead: int
) -> Iterator[tuple[Any, Any]]:
    """Each job ``(tag, function, arguments)`` run on ``pool``, its tag and result yielded in the order of the jobs:
    a result as soon as it and those before it are done, with at most ``ahead`` jobs submitted beyond the one
    waited for (``jobs`` is read only as far as that)."""
    pending: deque[tuple[Any, futures.Future]] = deque()
    for tag, function, arguments in jobs:
        pending.append((tag, pool.submit(function, *arguments)))
        while len(pending) > ahead or (pending and pending[0][1].done()):
            done, future = pending.popleft()
            yield done, future.result()
    while pending:
        done, future = pending.popleft()
        yield done, future.result()


def decoded(
    paths: Iterator[str], data: DataConfig, img_size: tuple[int, int], batch_size: int, workers: int, decoder: str
) -> Iterator[tuple[list[str], np.ndarray | None, list[str | None]]]:
    """Batches of paths with their decoded images (:func:`litevit.predict.decode`: uint8, for
    :func:`litevit.predict.normalized`), in order; with ``workers`` processes, at most ``2 * workers`` batches decoded
    ahead of the model (memory does not grow with the number of paths)."""
    chunks = iter(lambda: list(itertools.islice(paths, batch_size)), [])
    if workers == 0:
        yield from ((chunk, *decode(chunk, data, img_size, decoder)) for chunk in chunks)
        return
    method = "fork" if "fork" in multiprocessing.get_all_start_methods() else "spawn"  # fork: as DataLoader on Linux
    context = multiprocessing.get_context(method)
    pool = futures.ProcessPoolExecutor(workers, mp_context=context, initializer=_worker_init, initargs=(os.getpid(),))
    try:
        jobs = ((chunk, decode, (chunk, data, img_size, decoder)) for chunk in chunks)
        yield from ((chunk, *images_errors) for chunk, images_errors in in_order(pool, jobs, 2 * workers))
    except futures.process.BrokenProcessPool:
        raise ResultsError(
            "a decoding worker process ended unexpectedly (killed, or out of memory); the finished parts stay "
            "readable and --resume goes on from them"
        ) from None
    finally:
        pool.shutdown(cancel_futures=True)


def model_rows(
    classifier: Classifier,
    batches: Iterator[tuple[list[str], np.ndarray | None, list[str | None]]],
    data: DataConfig,
    names: Sequence[str],
    topk: int,
    embeddings: bool,
) -> Iterator[tuple[list[str], list[str | None], list[Row]]]:
    """Each decoded batch with its rows, in order. The model runs in a thread of its own (OpenVINO, onnxruntime and
    torch release the GIL while they compute), one batch ahead: this thread meanwhile takes the next batch from the
    decoding workers, normalises it and writes the finished rows."""
    with futures.ThreadPoolExecutor(1, thread_name_prefix="litevit-model") as model:
        jobs = (  # each batch normalised here, not in the decoding workers: uint8 goes through their pipes
            ((chunk, errors), batch_rows, (classifier, chunk, normalized(x, data), errors, names, topk, embeddings))
            for chunk, x, errors in batches
        )
        yield from ((chunk, errors, rows) for (chunk, errors), rows in in_order(model, jobs, 1))


def run_local(
    classifier: Classifier,
    meta: dict[str, Any],
    sources: Sequence[str],
    out: Path,
    fmt: str,
    *,
    batch_size: int,
    workers: int,
    resume: bool,
    progress: bool,
    part_rows: int,
) -> Summary:
    """:func:`litevit.bulk.predict_files` on this machine (its arguments checked, the model loaded, ``meta`` its
    description): the rows in the order of the sources, parts joined into ``out`` at the end."""
    started = time.perf_counter()
    parts = Parts(out, fmt, columns(meta["topk"], meta["embeddings"]), meta)
    if out.exists():
        return parts.finished(resume, started)
    paths = iter_sources(sources)
    done = errors = 0
    for index, part in enumerate(parts.open(resume)):
        part_paths, part_errors = read_paths_and_errors(part, fmt)
        if list(itertools.islice(paths, len(part_paths))) != part_paths:
            raise ResultsError(f"--resume: the sources no longer give the paths of {part} (part {index}) in "
                               "order; they changed since the interrupted run: write a new --out")  # fmt: skip
        done, errors = done + len(part_paths), errors + part_errors
    resumed = done
    data, img_size, _ = preprocessing(classifier)
    names = class_names(classifier)
    from tqdm import tqdm

    bar = tqdm(desc="predict", unit="img", initial=done, disable=not progress, dynamic_ncols=True)
    buffer: list[Row] = []
    try:
        batches = decoded(paths, data, img_size, batch_size, workers, meta["decoder"])
        for chunk, chunk_errors, rows in model_rows(classifier, batches, data, names, meta["topk"], meta["embeddings"]):
            buffer += rows
            errors += sum(e is not None for e in chunk_errors)
            done += len(chunk)
            bar.update(len(chunk))
            bar.set_postfix(errors=errors, refresh=False)
            while len(buffer) >= part_rows:
                parts.write(buffer[:part_rows])
                buffer = buffer[part_rows:]
        if buffer:
            parts.write(buffer)
    finally:
        bar.close()
    parts.join({**meta, "rows": done, "errors": errors})
    return Summary(str(out), done, errors, resumed, time.perf_counter() - started)
