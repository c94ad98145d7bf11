"""``predict --engine ray`` on a local Ray instance with 2 CPUs: the rows of the local engine, each image once, with one
model actor killed mid-run (Ray retries its batches). Ray runs in a child process: it reconfigures the logging of the
process that starts it (every root handler's formatter), which would leak into the tests that follow."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from test_bulk import _all_images, _check_rows, _read, collection  # noqa: F401 (collection: the shared fixture)

import litevit
from litevit import bulk
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
