"""Exported files that give the pre-logits features as a second output, ``embedding`` (litevit.deploy.embeddings):
for every family, ONNX and OpenVINO, predict --embeddings on the file writes the eager model's embedding column within
fp32 rounding (parity's RTOL); a file without the output, or a tampered one, is one line."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch

import litevit
from litevit import bulk
from litevit.cli import main
from litevit.deploy.embeddings import EMBEDDING, WithEmbeddings, with_embeddings
from litevit.deploy.metadata import MetadataError
from litevit.deploy.parity import compare
from litevit.deploy.runtime import ExportedModel

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from test_bulk import _read  # noqa: E402
from test_predict import _picture  # noqa: E402

FAMILY_SMALLEST = ["levit_128s", "efficientvit_m0", "mobilevit_xxs", "mobilevitv2_050", "mobilevitv3_xxs", "t2t_vit_7"]
# MobileViT at 192 px: OpenVINO 2026.4 runs MobileViT v1/v3 at 64 and 128 px up to 1.5e-3 relative off PyTorch, in
# the logits as much as in the features (its own kernels, not the embedding output); at 192 and 256 px, 1e-6
SIZES = {"mobilevit_xxs": 192, "mobilevitv2_050": 192, "mobilevitv3_xxs": 192}


@pytest.fixture(scope="module")
def pictures(tmp_path_factory: pytest.TempPathFactory) -> list[str]:
    """Five pictures and a file that is not one (an error row: no embedding)."""
    root = tmp_path_factory.mktemp("pictures")
    paths = []
    for i in range(5):
        _picture(300 + i, (150 + 20 * i, 200)).save(root / f"{i}.jpg", quality=92)
        paths.append(str(root / f"{i}.jpg"))
    (root / "bad.jpg").write_bytes(b"not a jpeg")
    return [*paths, str(root / "bad.jpg")]


def _export(
    model: torch.nn.Module, path: Path, size: int, batch: str | int = "dynamic", embeddings: bool = True
) -> None:
    """``model`` exported as ``path`` (.onnx or .xml) by ``litevit.export(embeddings=...)``, its checks on."""
    result = litevit.export(model, path, batch=batch, embeddings=embeddings, check=True)
    assert result.path == path and result.parity_check.passed  # logits and embedding, both within RTOL


def _embeddings(model: litevit.deploy.ExportedModel | torch.nn.Module, pictures: list[str], out: Path) -> list[list]:
    summary = bulk.predict_files(model, pictures, out, topk=2, embeddings=True, batch_size=4, workers=0, progress=False)
    assert (summary.rows, summary.errors) == (6, 1)
    return [row["embedding"] for row in _read(out)]


@pytest.mark.parametrize("name", FAMILY_SMALLEST)
def test_exported_embeddings_equal_the_eager_models(name: str, pictures: list[str], tmp_path: Path) -> None:
    torch.manual_seed(0)
    size = SIZES.get(name, 64)
    model = litevit.create_model(name, img_size=size).eval()
    expected = _embeddings(model, pictures, tmp_path / "eager.parquet")
    assert (
        expected[-1] is None
        and len(expected[0])
        == model.forward_head(model.forward_features(torch.zeros(1, 3, size, size)), pre_logits=True).shape[1]
    )  # the pre-logits width
    for suffix in (".onnx", ".xml"):
        path = tmp_path / f"{name}{suffix}"
        _export(model, path, size)
        exported = ExportedModel(path)
        assert exported.has_embedding and exported(torch.zeros(3, 3, size, size)).shape == (3, 1000)
        got = _embeddings(exported, pictures, tmp_path / f"{suffix[1:]}.parquet")
        assert got[-1] is None
        check = compare(torch.tensor(got[:-1]), torch.tensor(expected[:-1]), 5)
        assert check.passed, f"{path.name}: {check.failures}"


def test_fixed_batch_file_and_the_command(pictures: list[str], tmp_path: Path, capsys) -> None:
    torch.manual_seed(0)
    model = litevit.create_model("levit_128s", img_size=64).eval()
    expected = np.array(_embeddings(model, pictures, tmp_path / "eager.parquet")[:-1])
    path = tmp_path / "fixed.onnx"
    _export(model, path, 64, batch=2)  # batches of 4 run as 2 + 2, the last 1 filled up
    assert ExportedModel(path).metadata.batch == 2
    out = tmp_path / "rows.csv"
    assert main(["predict", str(path), *pictures, "--out", str(out), "--embeddings", "--batch-size", "4",
                 "--workers", "0", "--quiet"]) == 0  # fmt: skip
    rows = _read(out)
    assert rows[-1]["embedding"] is None
    assert compare(torch.tensor([r["embedding"] for r in rows[:-1]]), torch.from_numpy(expected), 5).passed
    assert bulk.read_meta(out)["embeddings"] is True and capsys.readouterr().out.count("\n") == 1


def test_files_without_the_output_and_models_without_the_api_fail_in_one_line(
    pictures: list[str], tmp_path: Path, capsys
) -> None:
    model = litevit.create_model("levit_128s", img_size=64).eval()
    plain = tmp_path / "plain.onnx"
    _export(model, plain, 64, embeddings=False)
    assert not ExportedModel(plain).has_embedding
    assert main(["predict", str(plain), *pictures, "--out", str(tmp_path / "r.csv"), "--embeddings", "--quiet"]) == 2
    err = capsys.readouterr().err
    assert f"has no {EMBEDDING!r} output, so no --embeddings" in err and err.count("\n") == 1, err
    with pytest.raises(ValueError, match="has no 'embedding' output"):
        ExportedModel(plain).embed(torch.zeros(1, 3, 64, 64))
    for other in (litevit.create_model("levit_128s", img_size=64, features_only=True), torch.nn.Linear(3, 2)):
        with pytest.raises(ValueError, match="is not a classifier with forward_features / forward_head"):
            with_embeddings(other)
    wrapped = with_embeddings(model)
    assert isinstance(wrapped, WithEmbeddings) and with_embeddings(wrapped) is wrapped
    # in the model's mode: a training-mode wrapper put T2T-ViT back in training after torch.onnx.export restored
    # the wrapper's mode, and its ONNX file failed the parity check by 0.14 relative
    assert not wrapped.training and with_embeddings(litevit.create_model("levit_128s", img_size=64)).training


def test_a_tampered_embedding_output_is_refused(tmp_path: Path) -> None:
    model = litevit.create_model("levit_128s", img_size=64).eval()
    path = tmp_path / "m.onnx"
    _export(model, path, 64)
    proto = onnx.load(str(path))
    dims = proto.graph.output[1].type.tensor_type.shape.dim
    assert proto.graph.output[1].name == EMBEDDING and len(dims) == 2
    dims.add().dim_value = 7  # B, C, 7: not the B, C the runner hands on
    onnx.save(proto, str(tmp_path / "tampered.onnx"))
    with pytest.raises(MetadataError, match=r"the graph's 'embedding' output has shape \[None, 384, 7\], not B, C"):
        ExportedModel(tmp_path / "tampered.onnx")


def test_the_export_command_adds_the_output_and_refuses_where_no_runtime_reads_it(tmp_path: Path, capsys) -> None:
    path = tmp_path / "m.xml"
    assert main(["export", "levit_128s", "--img-size", "64", "--out", str(path), "--embeddings", "--check"]) == 0
    out = capsys.readouterr().out
    assert "pre-logits features as output 'embedding'" in out and "parity check" in out
    logits, embedding = ExportedModel(path).embed(torch.zeros(2, 3, 64, 64))
    assert logits.shape == (2, 1000) and embedding.shape == (2, 384)  # LeViT-128S's last stage width
    for args, message in [
        (["--out", str(tmp_path / "m.pte")], "--embeddings adds a second output to .onnx and .xml files, not to"),
        (["--out", str(tmp_path / "m.xml"), "--fastest"], "--embeddings applies to one file"),
    ]:
        assert main(["export", "levit_128s", "--img-size", "64", "--embeddings", *args]) == 2
        err = capsys.readouterr().err
        assert message in err and err.count("\n") == 1, err
