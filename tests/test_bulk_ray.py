"""``predict --engine ray`` on a local Ray instance with 2 CPUs: the rows of the local engine, each image once, with one
model actor killed mid-run (Ray retries its batches)."""

from __future__ import annotations

import os
import signal
import sys
from pathlib import Path

import pytest
import torch
from test_bulk import _all_images, _check_rows, _read, collection  # noqa: F401 (collection: the shared fixture)
from torch import nn

from litevit import bulk
from litevit.predict import load_classifier

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")  # Ray Data's own, from its context
ray = pytest.importorskip("ray", reason="the ray extra (pip install 'litevit[ray]'); CI installs it")


class DiesOnce(nn.Module):
    """The model, except that the first actor to reach its third batch kills its own process (SIGKILL)."""

    def __init__(self, inner: nn.Module, marker: Path) -> None:
        super().__init__()
        self.inner, self.model_info, self.marker, self.calls = inner, inner.model_info, str(marker), 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
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


@pytest.fixture(scope="module")
def local_ray() -> object:
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])  # the actors cannot import this test module
    yield ray
    ray.shutdown()


def test_ray_rows_with_a_killed_worker(
    collection: dict[str, Path],  # noqa: F811
    tmp_path: Path,
    local_ray: object,
) -> None:
    model = load_classifier("levit_128s", collection["ckpt"])
    marker = tmp_path / "killed.pid"
    out = tmp_path / "rows.parquet"
    dies_once = DiesOnce(model, marker)
    summary = bulk.predict_files(dies_once, [collection["images"]], out, topk=3, batch_size=2,
                                 workers=2, engine="ray", progress=False)  # fmt: skip
    assert marker.is_file(), "no actor was killed: the test did not test a retry"
    assert int(marker.read_text()) != os.getpid()
    expected = _all_images(collection["images"])
    assert (summary.rows, summary.errors) == (len(expected), 3)
    files = sorted(out.glob("*.parquet"))
    rows = sorted((row for part in files for row in _read(part)), key=lambda r: expected.index(r["path"]))
    _check_rows(rows, expected, model, 3)  # each path once, rows equal predict's top-k
    meta = bulk.read_meta(files[0])
    assert meta == bulk.describe(dies_once, 3, False) and meta["model"] == "levit_128s"
