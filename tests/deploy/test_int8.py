"""int8 and OpenVINO export: a trained model quantized through the CLI, parity at fp32, bad calibration input.

The trained model is a tiny LeViT fitted on drawn patterns (see test_train); its int8 forms are evaluated on
held-out images and compared with the fp32 model's top-1 and predictions.
"""

from __future__ import annotations

import importlib
import io
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import litevit
from litevit import cli
from litevit._extras import MissingExtraError
from litevit.data import eval_transform, image_folder
from litevit.deploy.int8 import MIN_CALIBRATION_IMAGES, CalibrationError
from litevit.deploy.runtime import ExportedModel
from litevit.predict import evaluate, preprocessing
from litevit.training import train as T

pytest.importorskip("openvino", reason="the openvino extra is not installed: pip install 'litevit[openvino]'")


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A tiny LeViT trained on drawn patterns: (best.safetensors, the data root with train/ and val/)."""
    from test_train import TINY, make_patterns, tiny_config

    root = tmp_path_factory.mktemp("int8-patterns")
    make_patterns(root / "train", 24, seed=0)
    make_patterns(root / "val", 12, seed=1)
    out = tmp_path_factory.mktemp("int8-run")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        T.train(tiny_config(root, out, epochs=16, model_kwargs={**TINY, "distilled": False}))
    finally:
        torch.set_num_threads(threads)
    return out / T.BEST_EXPORT, root


@pytest.mark.parametrize("suffix", [".xml", ".onnx"])
def test_int8_of_a_trained_model_keeps_its_accuracy(trained, tmp_path, suffix, capsys) -> None:
    best, root = trained
    out = tmp_path / f"m{suffix}"
    command = ["export", str(best), "--int8", "--calibration", str(root / "train"), "--out", str(out), "--check"]
    assert cli.main(command) == 0
    printed = capsys.readouterr().out
    assert "int8" in printed and "top-1 agreement with fp32" in printed
    fp32 = litevit.load(best).eval()
    int8 = ExportedModel(out)
    assert int8.metadata.precision == "int8" and int8.metadata.class_names == fp32.model_info.class_names
    top1_fp32 = evaluate(fp32, root / "val", workers=0, progress=False).top1
    top1_int8 = evaluate(int8, root / "val", workers=0, progress=False).top1
    assert top1_fp32 >= 70.0, top1_fp32  # the model learned something worth keeping
    assert top1_int8 >= top1_fp32 - 6.0, (top1_fp32, top1_int8)  # at most 2 of 36 held-out images change
    images = torch.stack([x for x, _ in image_folder(root / "val", _transform(fp32))])
    with torch.no_grad():
        agree = (fp32(images).argmax(-1) == int8(images).argmax(-1)).float().mean().item()
    assert agree >= 0.9, agree


def test_quantize_api_writes_openvino_when_the_suffix_leaves_the_choice_open(trained, tmp_path) -> None:
    best, root = trained
    result = litevit.quantize(litevit.load(best), tmp_path / "m", root / "train", calibration_images=16)
    assert result.path == tmp_path / "m.xml" and result.metadata.precision == "int8"
    assert result.check is not None and result.check.agreement >= 0.9  # on the 16 calibration images


def _transform(model: torch.nn.Module):
    data, size, _ = preprocessing(model)
    return eval_transform(data, size)


@pytest.mark.parametrize("name", ["levit_128s", "efficientvit_m0", "mobilevit_xxs", "t2t_vit_7"])
def test_openvino_fp32_matches_pytorch(name: str, tmp_path) -> None:
    model = litevit.create_model(name, img_size=96 if name != "levit_128s" else None).eval()
    result = litevit.export(model, tmp_path / f"{name}.xml", check=True)
    assert result.check is not None and result.check.passed and result.check.max_rel_diff < 1e-4
    assert result.metadata.format == "openvino" and result.metadata.precision == "fp32"


def _images(folder: Path, count: int) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for i in range(count):
        Image.fromarray(rng.integers(0, 256, (40, 40, 3), dtype=np.uint8)).save(folder / f"{i}.png")
    return folder


def test_bad_calibration_input_is_a_clear_error(tmp_path, capsys) -> None:
    model = litevit.create_model("levit_128s")
    empty = tmp_path / "empty"
    empty.mkdir()
    few = _images(tmp_path / "few", MIN_CALIBRATION_IMAGES - 1)
    broken = _images(tmp_path / "broken", MIN_CALIBRATION_IMAGES + 2)
    (broken / "bad.jpg").write_bytes(b"not a jpeg")
    cases = {
        tmp_path / "missing": r"calibration folder not found: .*missing",
        empty: r"empty has 0 image file\(s\); calibration needs at least 8",
        few: r"few has 7 image file\(s\); calibration needs at least 8",
        broken: r"1 calibration image\(s\) under .*broken cannot be read: bad\.jpg",
    }
    for folder, message in cases.items():
        with pytest.raises(CalibrationError, match=message):
            litevit.export(model, tmp_path / "m.xml", int8=True, calibration=folder)
        assert cli.main(["export", "levit_128s", "--int8", "--calibration", str(folder), "--out", "m.onnx"]) == 2
        err = capsys.readouterr().err.strip()
        assert err.startswith("litevit export: error: ") and "\n" not in err and "Traceback" not in err
    with pytest.raises(ValueError, match="int8 export needs calibration images"):
        litevit.export(model, tmp_path / "m.xml", int8=True)
    with pytest.raises(ValueError, match=r"int8 export writes \.onnx .* or \.xml"):
        litevit.export(model, tmp_path / "m.pt2", int8=True, calibration=few)


def test_missing_extra_names_what_to_install(tmp_path, monkeypatch, capsys) -> None:
    real = importlib.import_module

    def without_openvino(name: str, *args, **kwargs):
        if name.split(".")[0] in ("openvino", "nncf"):
            raise ImportError(f"No module named {name!r}")
        return real(name, *args, **kwargs)

    monkeypatch.setattr(importlib, "import_module", without_openvino)
    with pytest.raises(MissingExtraError, match=r"OpenVINO export needs openvino: pip install 'litevit\[openvino\]'"):
        litevit.export(litevit.create_model("levit_128s"), tmp_path / "m.xml")
    assert cli.main(["export", "levit_128s", "--out", str(tmp_path / "m.xml")]) == 2
    assert capsys.readouterr().err.strip() == (
        "litevit export: error: OpenVINO export needs openvino: pip install 'litevit[openvino]'"
    )


def test_float_ends_are_the_first_and_last_weighted_layers() -> None:
    """The layers a ``float_ends`` settings keeps in float: the stem conv and both classifiers of a distilled LeViT."""
    import onnx
    import openvino as ov

    from litevit.deploy import int8

    model = litevit.fuse(litevit.create_model("levit_128s").eval())
    x = torch.randn(1, 3, 224, 224)
    ir = ov.convert_model(model, example_input=x)
    ops = {op.get_friendly_name(): op.get_type_name() for op in ir.get_ordered_ops()}
    ends = int8.openvino_ends(ir)
    assert sorted(ops[name] for name in ends) == ["Convolution", "MatMul", "MatMul"]
    first_conv = next(name for name, kind in ops.items() if kind == "Convolution")
    matmuls = [name for name, kind in ops.items() if kind == "MatMul"]
    assert first_conv in ends and set(matmuls[-2:]) <= set(ends)

    buffer = io.BytesIO()
    torch.onnx.export(model, (x,), buffer, opset_version=17, dynamo=False)
    graph = onnx.load_from_string(buffer.getvalue()).graph
    kinds = {node.name: node.op_type for node in graph.node}
    ends = int8.onnx_ends(onnx.load_from_string(buffer.getvalue()))
    assert sorted(kinds[name] for name in ends) == ["Conv", "Gemm", "Gemm"]
    assert next(node.name for node in graph.node if node.op_type == "Conv") in ends


def test_every_family_has_a_measured_recipe() -> None:
    from litevit.deploy.int8 import INT8_SETTINGS, Int8Settings, int8_settings_for, int8_settings_key

    lines = {n.split("_")[0] if litevit.get_variant(n).family == "mobilevit" else litevit.get_variant(n).family
             for n in litevit.list_models()}  # fmt: skip
    assert set(INT8_SETTINGS) == lines
    for name in ("levit_128s", "mobilevitv2_050", "mobilevit_xxs"):
        model = litevit.create_model(name)
        assert int8_settings_key(model) in lines and int8_settings_for(model) is INT8_SETTINGS[int8_settings_key(model)]
    assert int8_settings_for(torch.nn.Conv2d(3, 3, 1)) == Int8Settings()


def _int8_weights(ir, kind: str) -> list[bool]:
    """For every op of type ``kind`` in an IR: whether its weights are stored in int8 (NNCF's compressed weights:
    an int8 Constant, converted and scaled back to float in the graph)."""

    def int8_constant(node) -> bool:
        while node.get_type_name() in ("Reshape", "Convert", "Multiply", "Subtract", "Unsqueeze"):
            node = node.input_value(0).get_node()
        return node.get_type_name() == "Constant" and node.get_element_type().get_type_name() in ("i8", "u8")

    return [int8_constant(op.input_value(1).get_node()) for op in ir.get_ordered_ops() if op.get_type_name() == kind]


@pytest.mark.parametrize("float_depthwise", [pytest.param(False, marks=pytest.mark.slow), True])
def test_float_depthwise_keeps_grouped_convolutions_float(tmp_path, float_depthwise: bool) -> None:
    """EfficientViT's and MobileViT v1/v3's settings: depthwise convolutions stay float (NNCF's int8 ones cost
    EfficientViT-M0 4.25 and MobileViT-XXS 12 points, benchmarks/int8_settings.md); the other convolutions and the
    MatMuls stay int8."""
    import openvino as ov

    from litevit.deploy.int8 import INT8_SETTINGS, Int8Settings

    assert INT8_SETTINGS["efficientvit_msra"].float_depthwise and INT8_SETTINGS["mobilevit"].float_depthwise
    folder = tmp_path / "calibration"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for i in range(MIN_CALIBRATION_IMAGES):
        Image.fromarray(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(folder / f"{i}.png")
    settings = Int8Settings(transformer=False, preset="performance", float_depthwise=float_depthwise)
    model = litevit.create_model("efficientvit_m0").eval()
    litevit.export(
        model, tmp_path / "m.xml", img_size=64, int8=True, calibration=folder, check=False, int8_settings=settings
    )
    ir = ov.Core().read_model(str(tmp_path / "m.xml"))
    grouped, plain = _int8_weights(ir, "GroupConvolution"), _int8_weights(ir, "Convolution")
    assert grouped and sum(plain) >= len(plain) - 4  # NNCF keeps the squeeze-excitation convolutions float
    assert not any(grouped) if float_depthwise else all(grouped)
