"""Results files: the run's description, rows as CSV, JSON lines or Parquet, and the parts folder a run writes them
into, each part complete or absent, joined at the end and read back by ``--resume``."""

from __future__ import annotations

import csv
import hashlib
import json
import os
import shutil
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from .._extras import require
from .._files import atomic_write
from .._version import __version__
from ..deploy.runtime import ExportedModel
from ..predict import Classifier, Row, preprocessing
from ..weights.loading import model_info

OUT_FORMATS = {".csv": "csv", ".jsonl": "jsonl", ".parquet": "parquet"}
PART_ROWS = 1000  # rows per atomically written part: a kill loses at most this many predictions
META_KEY = "litevit"  # the Parquet schema metadata key holding the run's description; CSV/JSONL: <out>.meta.json
RUN_FILE = "run.json"


class ResultsError(ValueError):
    """The results file cannot be written or resumed; the message is one line saying why and what to do."""


@dataclass(frozen=True)
class Summary:
    """What :func:`litevit.bulk.predict_files` wrote."""

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


def check_same_run(found: dict[str, Any], wanted: dict[str, Any], where: Path) -> None:
    """One line when the run described by ``found`` (what wrote ``where``) is not the run ``wanted`` describes."""

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


def csv_cell(value: Any) -> str:
    """A value as a CSV cell: None empty, an embedding as floats separated by spaces, floats in full."""
    if value is None:
        return ""
    if isinstance(value, list):
        return " ".join(repr(v) for v in value)
    return repr(value) if isinstance(value, float) else str(value)


def _rows_writer(
    fmt: str, rows: Sequence[Row] | Any, cols: Sequence[str], meta: dict[str, Any]
) -> Callable[[Path], None]:
    """Writes ``rows`` (dicts, or for Parquet an Arrow table of the results columns) as one file of ``fmt``."""

    def write(tmp: Path) -> None:
        if fmt == "parquet":
            table = (
                arrow_table(rows, cols, meta) if isinstance(rows, Sequence) else rows.cast(_arrow_schema(cols, meta))
            )
            require("pyarrow.parquet", "Parquet results").write_table(table, tmp)
            return
        with open(tmp, "w", newline="", encoding="utf-8") as handle:
            if fmt == "csv":
                writer = csv.writer(handle)
                writer.writerow(cols)
                writer.writerows([csv_cell(row[c]) for c in cols] for row in rows)
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


def results_files(out: Path) -> list[Path]:
    """The files holding the rows of ``out``: itself, or the parts of a Parquet dataset folder (``--engine ray``)."""
    return sorted(out.glob("part-*.parquet")) if out.is_dir() else [out]


# ----------------------------------------------------------------------------------------------------------- parts


def _csv_header(cols: Sequence[str]) -> bytes:
    return (",".join(cols) + "\r\n").encode()  # csv.writer's default line ending


class Parts:
    """The parts folder of a run, ``<out>.parts/``: ``run.json`` (the description of the run writing it, written
    first) and ``part-<n>.<fmt>``, each written whole through :func:`atomic_write`."""

    def __init__(self, out: Path, fmt: str, cols: Sequence[str], meta: dict[str, Any]) -> None:
        self.out, self.fmt, self.cols, self.meta = out, fmt, list(cols), meta
        self.folder = out.with_name(out.name + ".parts")
        self.files: list[Path] = []

    def open(self, resume: bool) -> list[Path]:
        """The parts of an interrupted run of the same model and options (``resume``), or none: a new run."""
        if (self.folder / RUN_FILE).is_file():  # without it, no part was written
            if not resume:
                raise ResultsError(
                    f"{self.folder} holds an interrupted run: --resume continues it (or remove the folder)"
                )
            check_same_run(json.loads((self.folder / RUN_FILE).read_text()), self.meta, self.folder)
            for tmp in self.folder.glob(".*.tmp"):  # a part that a kill left half written (atomic_write's name)
                tmp.unlink()
            self.files = sorted(self.folder.glob(f"part-*.{self.fmt}"))
        else:
            self.write_file(self.folder / RUN_FILE, lambda tmp: tmp.write_text(json.dumps(self.meta)))
        return list(self.files)

    def finished(self, resume: bool, started: float) -> Summary:
        """The summary of ``out``, which exists (a file, or a dataset folder), after checking that this run wrote it;
        without ``resume``, one line. What a kill after the join left (the parts, or ``run.json``) goes."""
        if not resume:
            raise ResultsError(
                f"{self.out} exists; choose another --out, remove it, or --resume to check it is complete"
            )
        files = results_files(self.out)
        check_same_run(read_meta(files[0], self.fmt) if files else {}, self.meta, self.out)
        shutil.rmtree(self.folder, ignore_errors=True)
        if self.out.is_dir():
            (self.out / RUN_FILE).unlink(missing_ok=True)
        rows = errors = 0
        for path in files:
            paths, path_errors = read_paths_and_errors(path, self.fmt)
            rows, errors = rows + len(paths), errors + path_errors
        return Summary(str(self.out), rows, errors, rows, time.perf_counter() - started)

    def write(self, rows: Sequence[Row] | Any) -> None:
        """The next part: ``rows`` (dicts, or an Arrow table for Parquet)."""
        path = self.folder / f"part-{len(self.files):08d}.{self.fmt}"
        self.write_file(path, _rows_writer(self.fmt, rows, self.cols, self.meta))
        self.files.append(path)

    def write_file(self, path: Path, write: Callable[[Path], None]) -> None:
        """:func:`atomic_write`, an OSError (a full disk) turned into one line; the finished parts stay as they
        are."""
        try:
            atomic_write(path, write)
        except OSError as exc:
            raise ResultsError(
                f"cannot write {path}: {exc.strerror or exc}; the {len(self.files)} finished part(s) in {self.folder} "
                "stay readable and --resume goes on from them"
            ) from None

    def failed(self, why: str) -> ResultsError:
        """One line: the run ended for ``why``, and what is left."""
        return ResultsError(
            f"{why}; the {len(self.files)} finished part(s) in {self.folder} stay readable and --resume goes on "
            "from them"
        )

    def join(self, out_meta: dict[str, Any]) -> None:
        """The parts, in order, as the one results file ``out`` (its description ``out_meta``; CSV and JSONL: in the
        sidecar), written whole and streamed (one part in memory at a time); then the folder goes."""
        if self.fmt != "parquet":
            text = json.dumps(out_meta, indent=1) + "\n"
            self.write_file(sidecar(self.out), lambda tmp: tmp.write_text(text))
        self.write_file(self.out, self._joiner(out_meta))
        shutil.rmtree(self.folder, ignore_errors=True)

    def _joiner(self, out_meta: dict[str, Any]) -> Callable[[Path], None]:
        def write(tmp: Path) -> None:
            if self.fmt == "parquet":
                pq = require("pyarrow.parquet", "Parquet results")
                with pq.ParquetWriter(tmp, _arrow_schema(self.cols, out_meta)) as writer:
                    for part in self.files:
                        writer.write_table(pq.read_table(part).replace_schema_metadata(writer.schema.metadata))
                return
            with open(tmp, "wb") as target:
                if self.fmt == "csv":
                    target.write(_csv_header(self.cols))
                for part in self.files:
                    with open(part, "rb") as source:
                        if self.fmt == "csv":
                            source.readline()  # each part's header
                        shutil.copyfileobj(source, target)

        return write

    def rename(self) -> None:
        """The folder of parts renamed as the Parquet dataset folder ``out`` (``--engine ray``), ``run.json``
        removed after (a kill between the two leaves it in ``out``, which :meth:`finished` removes)."""
        os.replace(self.folder, self.out)
        (self.out / RUN_FILE).unlink(missing_ok=True)
