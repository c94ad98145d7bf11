"""The user's flows end to end through the command line, each step reading the file the step before wrote:

- train, then export the best file and evaluate the export: the same top-1 as training recorded;
- train, then fine-tune the file on other classes: the file's resolution, a new head, the new class names;
- train, then ``--qat`` from the file: the file's resolution, int8 files whose top-1 is the run's own.

LeViT (tiny) in the default run; the smallest variant of every family in the slow run.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from test_train import TINY_JSON, make_patterns

from litevit import cli
from litevit.deploy.runtime import ExportedModel
from litevit.registry import family_line
from litevit.training import qat as Q
from litevit.training import train as T
from litevit.weights.reading import read_checkpoint

FAMILY_SMALLEST = ["levit_128s", "efficientvit_m0", "mobilevit_xxs", "mobilevitv2_050", "mobilevitv3_xxs", "t2t_vit_7"]
SIZE = 64


@pytest.fixture(scope="module")
def shapes(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The patterns (3 classes) and, as the 'other classes', two of them renamed."""
    root = tmp_path_factory.mktemp("flows")
    make_patterns(root / "data" / "train", 24, seed=0)
    make_patterns(root / "data" / "val", 10, seed=1)
    for split in ("train", "val"):
        for old, new in (("hstripes", "lines"), ("rings", "circles")):
            shutil.copytree(root / "data" / split / old, root / "other" / split / new)
    return root


def _train(model: str, data: Path, out: Path, *extra: str) -> int:
    kwargs = ("--model-kwargs", TINY_JSON) if model == "levit_128s" else ()
    return cli.main(["train", model, "--data", str(data), "--out", str(out), "--epochs", "1", "--batch-size", "12",
                     "--workers", "0", "--no-progress", *kwargs, *extra])  # fmt: skip


def _eval(path: Path, data: Path, capsys: pytest.CaptureFixture[str]) -> dict:
    capsys.readouterr()
    assert cli.main(["eval", str(path), "--data", str(data), "--json", "--workers", "0"]) == 0
    return json.loads(capsys.readouterr().out.strip().splitlines()[-1])


def _flows(name: str, root: Path, tmp: Path, capsys: pytest.CaptureFixture[str], qat: bool) -> None:
    first = tmp / "first"
    assert _train(name, root / "data", first, "--img-size", str(SIZE)) == 0
    best = first / T.BEST_EXPORT
    meta = read_checkpoint(best).meta

    # export and eval: the exported file scores what training recorded for the file
    onnx = tmp / "best.onnx"
    assert cli.main(["export", str(best), "--out", str(onnx), "--check"]) == 0
    assert ExportedModel(onnx).metadata.img_size == (SIZE, SIZE)
    assert _eval(onnx, root / "data" / "val", capsys)["top1"] == pytest.approx(meta["top1"], abs=100 / 30 + 1e-6)

    # fine-tune the file on other classes: its resolution, a new 2-class head with the new names
    other = tmp / "other"
    assert _train(str(best), root / "other", other) == 0
    tuned = read_checkpoint(other / T.BEST_EXPORT).meta
    assert tuned["img_size"] == SIZE and tuned["classes"] == ["circles", "lines"] and tuned["num_classes"] == 2
    assert _eval(other / T.BEST_EXPORT, root / "other" / "val", capsys)["top1"] == pytest.approx(tuned["top1"])

    if qat:  # --qat from the first file, at its resolution; the int8 IR scores the run's int8 top-1 (within 1 image)
        out = tmp / "qat"
        code = cli.main(["train", str(best), "--data", str(root / "data"), "--qat", "--epochs", "1", "--out",
                         str(out), "--batch-size", "12", "--workers", "0", "--no-progress", "--max-drop", "100",
                         ])  # fmt: skip
        assert code == 0
        record = json.loads((out / "metrics.jsonl").read_text().splitlines()[-1])
        assert record["float_top1"] == pytest.approx(meta["top1"], abs=100 / 30 + 1e-6)
        assert ExportedModel(out / Q.INT8_XML).metadata.img_size == (SIZE, SIZE)
        scored = _eval(out / Q.INT8_XML, root / "data" / "val", capsys)["top1"]
        assert scored == pytest.approx(record["best_top1"], abs=100 / 30 + 1e-6)


def test_flows_levit(shapes: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    _flows("levit_128s", shapes, tmp_path, capsys, qat=False)


@pytest.mark.slow  # 1-3 min a family on a 2-core machine
@pytest.mark.parametrize("name", FAMILY_SMALLEST)
def test_flows_every_family_with_qat(name: str, shapes: Path, tmp_path: Path, capsys) -> None:
    assert len({family_line(n) for n in FAMILY_SMALLEST}) == 6  # one variant of every family
    pytest.importorskip("nncf")
    _flows(name, shapes, tmp_path, capsys, qat=True)
