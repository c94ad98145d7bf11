"""``predict --engine ray`` on a local Ray instance with 2 CPUs: the rows of the local engine, each image once, with one
model actor killed mid-run (Ray retries its batches), and after the driver is killed and the run resumed; GPUs per
actor (what map_batches is asked for, on a stand-in for Ray; a cluster without GPUs refused). Ray runs in a child
process: it reconfigures the logging of the process that starts it (every root handler's formatter), which would leak
into the tests that follow."""

from __future__ import annotations

import contextlib
import importlib.util
import json
import os
import signal
import subprocess
import sys
import time
import types
from collections import Counter
from pathlib import Path

import pytest
from test_bulk import _all_images, _check_rows, _read, collection  # noqa: F401 (collection: the shared fixture)

import litevit
from litevit import bulk
from litevit.bulk import ray_engine
from litevit.predict import load_classifier

pytestmark = pytest.mark.skipif(
    importlib.util.find_spec("ray") is None, reason="the ray extra (pip install 'litevit[ray]'); CI installs it"
)

RUN = '''
import json, os, signal, sys

import ray
import torch
from torch import nn

from litevit import bulk
from litevit.predict import load_classifier


class DiesOnce(nn.Module):
    """The model, except that the first actor to reach its third batch kills its own process (SIGKILL)."""

    def __init__(self, inner, marker):
        super().__init__()
        self.inner, self.model_info, self.marker, self.calls = inner, inner.model_info, marker, 0

    def forward(self, x):
        self.calls += 1
        if self.calls == 3:
            try:
                fd = os.open(self.marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
            except FileExistsError:
                return self.inner(x)
            os.write(fd, str(os.getpid()).encode())
            os.close(fd)
            os.kill(os.getpid(), signal.SIGKILL)
        return self.inner(x)


checkpoint, images, out, marker, result = sys.argv[1:]
ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
model = DiesOnce(load_classifier("levit_128s", checkpoint), marker)
summary = bulk.predict_files(model, [images], out, topk=3, batch_size=2, workers=2, engine="ray", progress=False)
with open(result, "w") as handle:  # not stdout: Ray's processes print there too
    json.dump({"rows": summary.rows, "errors": summary.errors, "meta": bulk.describe(model, 3, False)}, handle)
'''


def test_ray_rows_with_a_killed_worker(
    collection: dict[str, Path],  # noqa: F811
    tmp_path: Path,
) -> None:
    script, marker, out = tmp_path / "run.py", tmp_path / "killed.pid", tmp_path / "rows.parquet"
    script.write_text(RUN)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(Path(litevit.__file__).parents[1]), *sys.path])}
    args = [str(collection["ckpt"]), str(collection["images"]), str(out), str(marker), str(tmp_path / "result.json")]
    done = subprocess.run([sys.executable, str(script), *args], env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads((tmp_path / "result.json").read_text())
    assert marker.is_file(), "no actor was killed: the test did not test a retry"
    expected = _all_images(collection["images"])
    assert (result["rows"], result["errors"]) == (len(expected), 3)
    files = sorted(out.glob("*.parquet"))
    rows = sorted((row for part in files for row in _read(part)), key=lambda r: expected.index(r["path"]))
    _check_rows(rows, expected, load_classifier("levit_128s", collection["ckpt"]), 3)  # each path once, = predict's
    meta = bulk.read_meta(files[0])
    assert meta == result["meta"] and meta["model"] == "levit_128s" and meta["topk"] == 3


RESUMED = '''
import json, sys, time

import ray
from torch import nn

from litevit import bulk
from litevit.predict import load_classifier


class Slow(nn.Module):
    """The model, after a pause per batch: the run is killed with parts still to come."""

    def __init__(self, inner, seconds):
        super().__init__()
        self.inner, self.model_info, self.seconds = inner, inner.model_info, seconds

    def forward(self, x):
        time.sleep(self.seconds)
        return self.inner(x)


checkpoint, images, out, result, seconds = sys.argv[1:]
ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
model = Slow(load_classifier("levit_128s", checkpoint), float(seconds))
run = dict(topk=3, batch_size=2, part_rows=2, workers=1, engine="ray", progress=False, resume=True)
refused = {}
if float(seconds) == 0:  # the resumed run; first, what must be refused in one line
    other = Slow(load_classifier("levit_128s"), 0)  # other weights
    gpus = out.replace("rows.parquet", "gpus.parquet")
    for name, call in [("other", lambda: bulk.predict_files(other, [images], out, **run)),
                       ("gpus", lambda: bulk.predict_files(model, [images], gpus, gpus_per_worker=1, **run))]:
        try:
            call()
        except ValueError as exc:
            refused[name] = str(exc)
summary = bulk.predict_files(model, [images], out, **run)
if float(seconds) == 0:  # once more on the finished folder, with the run.json that a kill after the rename leaves
    open(out + "/run.json", "w").write("{}")
    again = bulk.predict_files(model, [images], out, **run)
    refused["again"] = [again.rows, again.resumed, again.errors]
with open(result, "w") as handle:
    json.dump({"rows": summary.rows, "resumed": summary.resumed, "errors": summary.errors, **refused}, handle)
'''


def test_ray_run_killed_then_resumed_gives_every_image_once(
    collection: dict[str, Path],  # noqa: F811
    tmp_path: Path,
) -> None:
    script, out, result = tmp_path / "run.py", tmp_path / "rows.parquet", tmp_path / "result.json"
    script.write_text(RESUMED)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(Path(litevit.__file__).parents[1]), *sys.path])}
    args = [sys.executable, str(script), str(collection["ckpt"]), str(collection["images"]), str(out), str(result)]
    parts = tmp_path / "rows.parquet.parts"
    run = subprocess.Popen([*args, "0.5"], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                           start_new_session=True)  # fmt: skip
    try:
        deadline = time.monotonic() + 300
        while len(list(parts.glob("part-*.parquet"))) < 2 and run.poll() is None and time.monotonic() < deadline:
            time.sleep(0.02)
        run.send_signal(signal.SIGKILL)
        run.wait()
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(run.pid, signal.SIGKILL)  # Ray's agents, which outlive the killed driver
    assert run.returncode == -signal.SIGKILL, "the run finished before it could be killed"
    assert not out.exists()
    finished = sorted(parts.glob("part-*.parquet"))
    assert 2 <= len(finished) < 9 and all(len(_read(part)) == 2 for part in finished)  # whole parts, 2 rows each
    (parts / ".part-00000099.parquet.1.tmp").write_bytes(b"PAR1")  # as a kill halfway through a part leaves it
    done = subprocess.run([*args, "0"], env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    summary = json.loads(result.read_text())
    for name, message in [("other", "was written by levit_128s"), ("gpus", "the Ray cluster has no GPU")]:
        assert message in summary[name] and "\n" not in summary[name], summary[name]
    expected = _all_images(collection["images"])
    assert (summary["rows"], summary["resumed"], summary["errors"]) == (len(expected), 2 * len(finished), 3)
    assert summary["again"] == [len(expected), len(expected), 3]  # complete: checked, nothing run
    assert not parts.exists() and [p.name for p in out.iterdir() if not p.name.startswith("part-")] == []
    assert not (tmp_path / "gpus.parquet.parts").exists()  # refused before anything was written
    rows = sorted((row for part in sorted(out.glob("*.parquet")) for row in _read(part)),
                  key=lambda r: expected.index(r["path"]))  # fmt: skip
    _check_rows(rows, expected, load_classifier("levit_128s", collection["ckpt"]), 3)  # each path once, = predict's


class _RayError(Exception):
    """The stand-in's ``ray.exceptions.RayError``."""


class _Dataset:
    """Ray Data's dataset as the Ray engine uses it: ``map_batches`` records its arguments; no rows come back, or
    ``failure`` is raised as Ray raises a task's exception."""

    def __init__(self, calls: list[dict], failure: str | None) -> None:
        self.calls, self.failure = calls, failure

    def map_batches(self, fn: type, **kwargs: object) -> _Dataset:
        self.calls.append({"fn": fn, **kwargs})
        return self

    def iter_batches(self, **kwargs: object) -> list:
        if self.failure is not None:
            raise _RayError(self.failure)
        return []


def _fake_ray(resources: dict[str, float], calls: list[dict], failure: str | None = None) -> types.ModuleType:
    """A stand-in for ``ray``: a cluster of ``resources``, already started."""
    ray = types.ModuleType("ray")
    ray.is_initialized = lambda: True
    ray.cluster_resources = lambda: dict(resources)
    ray.exceptions = types.SimpleNamespace(RayError=_RayError)
    ray.data = types.ModuleType("ray.data")
    ray.data.from_items = lambda items: _Dataset(calls, failure)
    ray.data.ActorPoolStrategy = lambda size: ("actor pool", size)
    return ray


def test_gpus_per_worker_reach_map_batches(
    collection: dict[str, Path],  # noqa: F811
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    calls: list[dict] = []
    ray = _fake_ray({"CPU": 8.0, "GPU": 2.0}, calls)
    monkeypatch.setitem(sys.modules, "ray", ray)
    monkeypatch.setitem(sys.modules, "ray.data", ray.data)
    model = load_classifier("levit_128s", collection["ckpt"])
    with pytest.raises(bulk.ResultsError, match=r"^Ray gave 0 rows for 17 images; the 0 finished part") as caught:
        bulk.predict_files(model, [collection["images"]], tmp_path / "r.parquet", engine="ray", gpus_per_worker=0.5,
                           progress=False)  # fmt: skip
    assert "\n" not in str(caught.value)
    (call,) = calls
    assert call["fn"] is ray_engine._RayPredictor and call["fn_constructor_kwargs"]["gpus"] == 0.5
    assert (call["num_gpus"], call["num_cpus"], call["compute"]) == (0.5, 1, ("actor pool", 4))  # 2 GPUs / 0.5


def test_a_failed_ray_run_and_an_empty_one(
    collection: dict[str, Path],  # noqa: F811
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    model = load_classifier("levit_128s", collection["ckpt"])
    failing = _fake_ray({"CPU": 2.0}, [], failure="ray::MapWorker(...)\n  File ...\nValueError: bad batch\n")
    monkeypatch.setitem(sys.modules, "ray", failing)
    monkeypatch.setitem(sys.modules, "ray.data", failing.data)
    one_line = r"^the Ray run failed: ValueError: bad batch; the 0 finished part\(s\) in .*r.parquet.parts stay"
    with pytest.raises(bulk.ResultsError, match=one_line + r" readable and --resume goes on from them$"):
        bulk.predict_files(model, [collection["images"]], tmp_path / "r.parquet", engine="ray", progress=False)
    empty = _fake_ray({"CPU": 2.0}, [])
    monkeypatch.setitem(sys.modules, "ray", empty)
    monkeypatch.setitem(sys.modules, "ray.data", empty.data)
    (tmp_path / "none").mkdir()  # no image at all: a dataset of no rows, with its schema and description
    summary = bulk.predict_files(model, [tmp_path / "none"], tmp_path / "empty.parquet", engine="ray", progress=False)
    assert (summary.rows, summary.errors) == (0, 0)
    (part,) = (tmp_path / "empty.parquet").iterdir()
    assert _read(part) == [] and bulk.read_meta(part)["model"] == "levit_128s"


def test_actor_count_refuses_gpus_the_cluster_lacks() -> None:
    assert ray_engine.actor_count(None, 0, {"CPU": 4.0}) == 3  # one CPU for the driver
    assert ray_engine.actor_count(None, 1, {"CPU": 4.0, "GPU": 2.0}) == 2
    assert ray_engine.actor_count(3, 0.25, {"CPU": 4.0, "GPU": 1.0}) == 3
    with pytest.raises(ValueError, match=r"^--gpus-per-worker 1: the Ray cluster has no GPU \(4 CPU\(s\)\); Ray would"):
        ray_engine.actor_count(None, 1, {"CPU": 4.0})
    with pytest.raises(ValueError, match=r"for 3 actor\(s\) needs 1.5 GPU\(s\) and the Ray cluster has 1; Ray would"):
        ray_engine.actor_count(3, 0.5, {"CPU": 4.0, "GPU": 1.0})
    with pytest.raises(ValueError, match="needs 0.5 GPU"):  # a share of a GPU that the cluster does not have
        ray_engine.actor_count(None, 0.5, {"CPU": 4.0, "GPU": 0.25})


def test_gpus_for_an_exported_file_or_without_cuda_fail_in_one_line(
    collection: dict[str, Path],  # noqa: F811
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    images, out = [collection["images"]], tmp_path / "r.parquet"
    with pytest.raises(ValueError, match=r"^--gpus-per-worker: levit.onnx runs on CPUs \(its runtime\); GPUs run"):
        bulk.predict_files(tmp_path / "levit.onnx", images, out, engine="ray", gpus_per_worker=1)
    with pytest.raises(ValueError, match="GPUs per model actor, >= 0, with --engine ray"):
        bulk.predict_files("levit_128s", images, out, gpus_per_worker=1)
    model = load_classifier("levit_128s", collection["ckpt"])
    monkeypatch.setattr("torch.cuda.is_available", lambda: False)
    with pytest.raises(RuntimeError, match=r"given 1 GPU\(s\) \(--gpus-per-worker\) but torch finds no CUDA device"):
        ray_engine._RayPredictor(model, bulk.describe(model, 3, False), gpus=1)


def test_a_failure_inside_ray_is_named_in_one_line() -> None:
    raised_in_task = (
        "\x1b[36mray::MapWorker(MapBatches(_RayPredictor)).submit()\x1b[39m (pid=1, ip=10.0.0.1)\n"
        '  File "litevit/bulk/ray_engine.py", line 40, in __call__\n    raise ValueError("bad batch")\n'
        "ValueError: bad batch\n\nThe above exception was the direct cause of the following exception:\n\n"
        "ray.exceptions.UserCodeException: UDF failed to process a data block.\n"
    )
    assert ray_engine._cause(RuntimeError(raised_in_task)) == "ValueError: bad batch"
    raised_in_init = "The actor died because of an error raised in its creation task\n  File ...\nRuntimeError: no CUDA"
    assert ray_engine._cause(RuntimeError(raised_in_init)) == "RuntimeError: no CUDA"
    assert ray_engine._cause(RuntimeError("The node died\nsee the logs")) == "RuntimeError: The node died"


def test_resume_on_ray_runs_each_path_not_written_once(tmp_path: Path) -> None:
    done = Counter({"a": 1, "b": 2})  # a path the sources give twice has two rows
    assert ray_engine._remaining(["a", "b", "c", "b", "b", "a"], done, tmp_path) == ["c", "b", "a"]
    changed = r"^--resume: .* rows of 1 path\(s\) the sources no longer give \(first: gone\); they changed since"
    with pytest.raises(bulk.ResultsError, match=changed):
        ray_engine._remaining(["a"], Counter({"a": 1, "gone": 1}), tmp_path)
