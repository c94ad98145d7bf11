"""Export parity: every variant to ONNX (onnxruntime on another batch size), TorchScript and pt2 per family."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from PIL import Image
from reference import recipe_value
from torch import nn

import litevit
from litevit import _extras
from litevit._extras import has_vnni
from litevit.bench.timing import compare_onnx_speed
from litevit.cli import main
from litevit.deploy.errors import ExportError
from litevit.deploy.exporting import export
from litevit.deploy.metadata import ExportMetadata, MetadataError
from litevit.deploy.onnx import ONNX_OPSETS
from litevit.deploy.parity import RTOL
from litevit.deploy.runtime import ExportedModel
from litevit.registry import DataConfig

MODELS = litevit.list_models()
# the first variant of each family and model class, so new families are picked up automatically
FIRST_OF_FAMILY = list(
    {(litevit.get_variant(n).family, litevit.get_variant(n).builder): n for n in reversed(MODELS)}.values()
)[::-1]
# the reference fixtures' weight scales (../shared/refs/README.md): unscaled recipe weights make EfficientViT's
# activations grow into the thousands, where float32 rounding alone exceeds the parity tolerance
RECIPE_SCALE = {"efficientvit_msra": 0.8}


def live_model(name: str, **kwargs: object) -> nn.Module:
    """A model with the fixtures' recipe weights: every branch live, BatchNorm statistics far from identity."""
    model = litevit.create_model(name, **kwargs)
    scale = RECIPE_SCALE.get(litevit.get_variant(name).family, 1.0)
    state = {
        k: torch.from_numpy(recipe_value(k, list(v.shape), [["*", scale]])) if v.is_floating_point() else v
        for k, v in model.state_dict().items()
    }
    model.load_state_dict(state)
    return model.eval()


def _input(model: nn.Module, batch: int, seed: int = 5) -> torch.Tensor:
    size = model.config.img_size
    height, width = (size, size) if isinstance(size, int) else size
    return torch.randn(batch, model.config.in_chans, height, width, generator=torch.Generator().manual_seed(seed))


def _assert_close(out: torch.Tensor, ref: torch.Tensor, what: str) -> None:
    assert out.shape == ref.shape, f"{what}: shape {tuple(out.shape)} != {tuple(ref.shape)}"
    err = (out.double() - ref.double()).abs().max().item()
    scale = ref.abs().max().item()
    assert err <= RTOL * scale, f"{what}: max |diff| {err:.3e} > {RTOL:g} * max |ref| ({scale:.3e})"


def _check_onnx(name: str, path: Path) -> None:
    model = live_model(name)
    result = export(model, path)
    # independent check: our own onnxruntime session against the PyTorch model (unfused, float64) on batch 3
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    (inp,), (out,) = session.get_inputs(), session.get_outputs()
    assert isinstance(inp.shape[0], str) and isinstance(out.shape[0], str), "batch axis is not dynamic"
    x = _input(model, 3)
    with torch.no_grad():
        ref = model.double()(x.double())
    _assert_close(torch.from_numpy(session.run(None, {inp.name: x.numpy()})[0]), ref, f"{name} onnxruntime")

    proto = onnx.load(str(path))
    props = {p.key: p.value for p in proto.metadata_props}
    assert props["litevit.variant"] == name
    assert json.loads(props["litevit.data_config"])["crop_pct"] == litevit.get_variant(name).data.crop_pct
    assert {o.domain or "ai.onnx": o.version for o in proto.opset_import}["ai.onnx"] == result.metadata.opset
    assert not [n.name for n in proto.graph.node if n.op_type == "BatchNormalization"], "BatchNorm left in the graph"
    assert not [t.name for t in proto.graph.initializer if t.data_location == onnx.TensorProto.EXTERNAL]
    assert sorted(p.name for p in path.parent.iterdir()) == [path.name], "ONNX export is not a single file"
    # the opset is the lowest that works: one below fails to export or fails the parity check
    if result.metadata.opset > min(ONNX_OPSETS):
        with pytest.raises(ExportError):
            export(model, path.parent / "lower.onnx", opset=result.metadata.opset - 1, check=True)


@pytest.mark.parametrize("name", FIRST_OF_FAMILY)
def test_onnx_parity_first_of_family(name: str, tmp_path: Path) -> None:
    _check_onnx(name, tmp_path / f"{name}.onnx")


@pytest.mark.slow
@pytest.mark.parametrize("name", [n for n in MODELS if n not in FIRST_OF_FAMILY])
def test_onnx_parity_every_variant(name: str, tmp_path: Path) -> None:
    _check_onnx(name, tmp_path / f"{name}.onnx")


def _check_reloaded(name: str, path: Path) -> None:
    model = live_model(name)
    result = export(model, path, check=True)
    check = result.parity_check  # on a batch other than the exported one
    assert check is not None and check.name == "parity" and check.batch != 2 and result.checks == (check,)
    loaded = ExportedModel(path)
    assert loaded.metadata.variant == name and loaded.metadata.format == result.metadata.format
    x = _input(model, 1)
    with torch.no_grad():
        ref = model.double()(x.double())
    _assert_close(loaded(x), ref, f"{name} {loaded.format}")


def test_torchscript_levit(tmp_path: Path) -> None:
    _check_reloaded("levit_128s", tmp_path / "levit_128s.ts")


@pytest.mark.slow
@pytest.mark.parametrize("name", FIRST_OF_FAMILY)
def test_torchscript_first_of_family(name: str, tmp_path: Path) -> None:
    _check_reloaded(name, tmp_path / f"{name}.ts")


@pytest.mark.slow
@pytest.mark.parametrize("name", FIRST_OF_FAMILY)
def test_pt2_first_of_family(name: str, tmp_path: Path) -> None:
    _check_reloaded(name, tmp_path / f"{name}.pt2")


def test_fixed_batch_and_other_resolution(tmp_path: Path) -> None:
    model = live_model("levit_128s")
    result = export(model, tmp_path / "fixed.onnx", batch=2, img_size=160, opset=13, check=True)
    assert result.metadata.batch == 2 and result.metadata.img_size == (160, 160)
    session = ort.InferenceSession(str(tmp_path / "fixed.onnx"), providers=["CPUExecutionProvider"])
    assert session.get_inputs()[0].shape == [2, 3, 160, 160]
    # the reference: the model rebuilt at 160 through the checkpoint loader (bias tables resampled)
    at_160 = litevit.create_model("levit_128s", img_size=160, checkpoint=model.state_dict()).eval()
    x = _input(at_160, 2)
    with torch.no_grad():
        ref = at_160(x)
    _assert_close(torch.from_numpy(session.run(None, {"input": x.numpy()})[0]), ref, "levit_128s at 160, batch 2")


def test_export_rejects_bad_arguments(tmp_path: Path) -> None:
    model = litevit.create_model("levit_128s")
    with pytest.raises(ValueError, match="format"):
        export(model, tmp_path / "m.bin")
    with pytest.raises(ValueError, match="format"):
        export(model, tmp_path / "m.onnx", format="tflite")
    with pytest.raises(ValueError, match="batch"):
        export(model, tmp_path / "m.onnx", batch=0)
    with pytest.raises(ValueError, match="opset"):
        export(model, tmp_path / "m.pt2", opset=13)
    with pytest.raises(FileNotFoundError):
        ExportedModel(tmp_path / "absent.onnx")


def test_cli_export_check(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    checkpoint = tmp_path / "w.pth"
    torch.save(live_model("levit_128s").state_dict(), checkpoint)
    out = tmp_path / "m.onnx"
    code = main(
        ["export", "levit_128s", "--checkpoint", str(checkpoint), "--out", str(out), "--opset", "13", "--check"]
    )
    printed = capsys.readouterr().out
    assert code == 0 and out.is_file()
    assert "opset 13" in printed and "batch dynamic" in printed and "parity check on 3 images: max |diff|" in printed
    # the exported weights are the checkpoint's, not a fresh initialisation
    model = live_model("levit_128s")
    x = _input(model, 1)
    with torch.no_grad():
        _assert_close(ExportedModel(out)(x), model(x), "CLI export")


def test_onnx_speed_comparison_runs(tmp_path: Path) -> None:
    """Only that the interleaved measurement works; the figure itself is taken on an idle machine."""
    model = live_model("levit_128s")
    export(model, tmp_path / "m.onnx", opset=13)
    result = compare_onnx_speed(model, tmp_path / "m.onnx", batch=1, seconds=0.05, warmup=0.01)
    assert result["eager_ms"] > 0 and result["onnxruntime_ms"] > 0
    assert np.isclose(result["speedup"], result["eager_ms"] / result["onnxruntime_ms"])


TINY = dict(num_classes=10, img_size=64, dims=(32, 48, 64), num_heads=(2, 3, 4), depths=(1, 1, 1), key_dim=16)


def test_has_vnni_reads_the_flags_the_cpu_reports() -> None:
    assert not has_vnni(frozenset({"avx2", "avx512f"}))
    assert has_vnni(frozenset({"avx2", "avx_vnni"})) and has_vnni(frozenset({"avx512f", "avx512_vnni"}))
    assert has_vnni(frozenset({"amx_int8"}))


@pytest.mark.parametrize("flags, bits", [({"avx2", "avx512f"}, 7), ({"avx2", "avx512f", "avx512_vnni"}, 8)])
def test_onnx_int8_weight_bits_follow_what_the_cpu_reports(flags, bits, tmp_path, monkeypatch) -> None:
    """Without VNNI onnxruntime int8 weights take 7 bits (reduce_range), with it 8; the file records which.

    The CPU is faked where litevit reads it (the flags of /proc/cpuinfo), so both branches run on any machine; the
    weights are read back from the file: 7 bits reach 64 at most, 8 bits 127 (per-channel symmetric, each channel's
    largest weight at the end of the range). The check runs a fixed batch of 5 in chunks.
    """
    monkeypatch.setattr(_extras, "cpu_flags", lambda: frozenset(flags))
    folder = tmp_path / "images"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for i in range(20):
        Image.fromarray(rng.integers(0, 256, (48, 48, 3), dtype=np.uint8)).save(folder / f"{i}.png")
    model = litevit.create_model("levit_128s", **TINY).eval()
    path = tmp_path / "m.onnx"
    result = export(model, path, int8=True, calibration=folder, calibration_images=8, check=True, batch=5)
    assert result.metadata.weight_bits == bits and ExportedModel(path).metadata.weight_bits == bits
    assert result.int8_check.passed and result.int8_check.batch == 12  # 20 images: 8 calibrate, 12 held out
    proto = onnx.load(str(path))
    initializers = {t.name: t for t in proto.graph.initializer}
    weights = [onnx.numpy_helper.to_array(initializers[n.input[0]]).astype(np.int64) for n in proto.graph.node
               if n.op_type == "DequantizeLinear" and n.input[0] in initializers
               and initializers[n.input[0]].data_type == onnx.TensorProto.INT8]  # fmt: skip
    assert len(weights) >= 10 and max(int(np.abs(w).max()) for w in weights) == (64 if bits == 7 else 127)


def test_metadata_weight_bits_is_read_back_and_checked() -> None:
    meta = ExportMetadata("levit_128s", (64, 64), 10, DataConfig(), "dynamic", "onnx", precision="int8", weight_bits=7)
    assert ExportMetadata.from_json(meta.to_json()) == meta
    with pytest.raises(MetadataError, match="field 'weight_bits': expected 7, 8 or null, got 6"):
        ExportMetadata.from_json(meta.to_json().replace('"weight_bits": 7', '"weight_bits": 6'))
    old = json.loads(meta.to_json())
    del old["weight_bits"]  # files written before the field: None
    assert ExportMetadata.from_json(json.dumps(old)).weight_bits is None
