"""int8 and OpenVINO export: a trained model quantized through the CLI, parity at fp32, bad calibration input,
calibration drawn from every class folder, and the int8 check: working graphs pass, dead ones fail, on every family.

The trained model is a tiny LeViT fitted on drawn patterns (see test_train); its int8 forms are evaluated on
held-out images and compared with the fp32 model's top-1 and predictions.
"""

from __future__ import annotations

import colorsys
import importlib
import io
import logging
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import litevit
from litevit import cli
from litevit._extras import MissingExtraError
from litevit.data import eval_transform, image_folder
from litevit.deploy import builder, parity
from litevit.deploy.errors import ExportError
from litevit.deploy.int8 import (
    INT8_CHECK_IMAGES,
    MIN_CALIBRATION_IMAGES,
    MIN_CHECK_IMAGES,
    CalibrationError,
    calibration_files,
    calibration_set,
)
from litevit.deploy.runtime import ExportedModel
from litevit.predict import evaluate, preprocessing
from litevit.registry import DataConfig, family_line
from litevit.training import train as T

pytest.importorskip("openvino", reason="the openvino extra is not installed: pip install 'litevit[openvino]'")


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A tiny LeViT trained on drawn patterns: (best.safetensors, the data root with train/ and val/)."""
    training_tests = str(Path(__file__).resolve().parents[1] / "training")
    if training_tests not in sys.path:  # pytest puts it there only when it collects tests/training too
        sys.path.append(training_tests)
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
    assert "int8 check on 8 images: top-1 agreement with fp32" in printed
    assert "(passed: agreement >= 50%, correlation >= 0.5)" in printed
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
    # on images of the folder that calibration did not use
    check = result.int8_check
    assert check is not None and check.judged and check.agreement >= 0.9 and result.checks == (check,)


def _transform(model: torch.nn.Module):
    data, size, _ = preprocessing(model)
    return eval_transform(data, size)


@pytest.mark.parametrize("name", ["levit_128s", "efficientvit_m0", "mobilevit_xxs", "t2t_vit_7"])
def test_openvino_fp32_matches_pytorch(name: str, tmp_path) -> None:
    model = litevit.create_model(name, img_size=96 if name != "levit_128s" else None).eval()
    result = litevit.export(model, tmp_path / f"{name}.xml", check=True)
    check = result.parity_check
    assert check is not None and check.passed and check.max_rel_diff < 1e-4 and result.checks == (check,)
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

    lines = {"levit", "efficientvit_msra", "mobilevit", "mobilevitv2", "mobilevitv3", "t2t_vit"}
    assert {family_line(n) for n in litevit.list_models()} == lines == set(INT8_SETTINGS)
    expected = {
        "levit_128s": "levit", "efficientvit_m0": "efficientvit_msra", "mobilevit_xxs": "mobilevit",
        "mobilevitv2_050": "mobilevitv2", "mobilevitv3_xxs_l2": "mobilevitv3", "t2t_vit_7": "t2t_vit",
    }  # fmt: skip
    for name, line in expected.items():
        model = litevit.create_model(name)
        assert family_line(name) == int8_settings_key(model) == line
        assert int8_settings_for(model) is INT8_SETTINGS[line]
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
    EfficientViT-M0 4.25 and MobileViT-XXS 12 points, benchmarks/accuracy/int8_settings.md); the other convolutions
    and the MatMuls stay int8."""
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


CLASSES = 4


def _draw(rng: np.random.Generator, label: int, side: int = 48) -> Image.Image:
    """Class ``label`` of :func:`_class_tree`: stripes at ``45 * label`` degrees in the class's own hue."""
    yy, xx = np.mgrid[0:side, 0:side] / side
    angle = np.pi * label / CLASSES + rng.normal(0, 0.1)
    phase = rng.uniform(0, 2 * np.pi)
    wave = np.sin(2 * np.pi * rng.uniform(2, 4) * (np.cos(angle) * xx + np.sin(angle) * yy) + phase)
    hue = (label / CLASSES + rng.normal(0, 0.03)) % 1
    colour = 255 * np.array(colorsys.hsv_to_rgb(hue, 0.7, rng.uniform(0.5, 0.9)))
    image = colour + 50 * wave[..., None] + rng.normal(0, 8, (side, side, 3))
    return Image.fromarray(np.clip(image, 0, 255).astype(np.uint8))


def _class_tree(root: Path, per_class: int, classes: int = CLASSES) -> Path:
    rng = np.random.default_rng(0)
    for label in range(classes):
        (root / f"class{label}").mkdir(parents=True)
        for i in range(per_class):
            _draw(rng, label % CLASSES).save(root / f"class{label}" / f"{i:03d}.png")
    return root


def test_calibration_is_drawn_from_every_class_folder(tmp_path) -> None:
    """A class-folder tree is calibrated on all its classes (sorted order took the first class only), the held-out
    images are drawn alike and never calibrate, and the draw is the same every time."""
    root = _class_tree(tmp_path / "tree", per_class=12, classes=5)
    calibration, held_out = calibration_files(root, 10, held_out=5)
    assert len(calibration) == 10 and len(held_out) == 5 and not set(calibration) & set(held_out)
    for files in (calibration, held_out):
        counts = {f"class{c}": sum(p.parent.name == f"class{c}" for p in files) for c in range(5)}
        assert set(counts.values()) == {len(files) // 5}, counts
    assert sorted(calibration) != sorted(root.rglob("*.png"))[:10]  # not the first files in sorted order
    assert calibration_files(root, 10, held_out=5) == (calibration, held_out)
    assert calibration_files(root, 10, held_out=5, seed=1) != (calibration, held_out)
    # what calibration sees: images of every class (class c has its own hue, told apart by the mean colour)
    arrays = calibration_set(root, DataConfig(), (32, 32), 10)
    hues = {round(colorsys.rgb_to_hsv(*a[0].mean((1, 2)) * 0.25 + 0.5)[0], 1) for a in arrays}
    assert len(arrays) == 10 and len(hues) >= 4, hues
    # a nested tree is stratified by its innermost folders
    nested = _class_tree(tmp_path / "nested" / "a", per_class=9, classes=2).parent
    _class_tree(nested / "b", per_class=9, classes=2)
    parents = [p.parent.relative_to(nested) for p in calibration_files(nested, 8)[0]]
    assert sorted(map(str, set(parents))) == ["a/class0", "a/class1", "b/class0", "b/class1"]


def test_the_int8_check_holds_images_out_of_calibration(tmp_path) -> None:
    """Up to INT8_CHECK_IMAGES images beyond the calibration count, and at least MIN_CHECK_IMAGES taken from it."""
    root = _class_tree(tmp_path / "tree", per_class=20)  # 80 images
    calibration, held_out = calibration_files(root, 16, held_out=INT8_CHECK_IMAGES)
    assert (len(calibration), len(held_out)) == (16, INT8_CHECK_IMAGES)
    calibration, held_out = calibration_files(root, 300, held_out=INT8_CHECK_IMAGES)
    assert (len(calibration), len(held_out)) == (80 - MIN_CHECK_IMAGES, MIN_CHECK_IMAGES)
    small = _class_tree(tmp_path / "small", per_class=(MIN_CALIBRATION_IMAGES + MIN_CHECK_IMAGES) // CLASSES - 1)
    assert len(calibration_files(small, 300)[0]) == 12  # without a check every image calibrates
    message = r"has 12 image file\(s\); the int8 check holds 8 of them out of calibration, which needs 8: at least 16"
    with pytest.raises(CalibrationError, match=message):
        calibration_files(small, 300, held_out=INT8_CHECK_IMAGES)
    assert cli.main(["export", "levit_128s", "--int8", "--calibration", str(small), "--out", "m.onnx", "--check"]) == 2


def _logits(spread: float, batch: int = 16, classes: int = 4) -> torch.Tensor:
    """Logits of ``batch`` images: a per-class offset (RMS about 10) plus a part that varies from image to image,
    of standard deviation ``spread``."""
    generator = torch.Generator().manual_seed(0)
    offset = 10 * torch.randn(classes, generator=generator)
    varying = torch.randn(batch, classes, generator=generator)
    return offset + spread * varying / varying.std()


def _one_class_wins(out: torch.Tensor) -> torch.Tensor:
    """``out`` with the class it picks least often raised far above the others: that class for every image."""
    rarest = out.argmax(-1).bincount(minlength=out.shape[1]).argmin()
    return out + 100 * (torch.arange(out.shape[1]) == rarest)


def test_int8_check_bounds_on_constructed_logits() -> None:
    """The decisions of parity.int8_check, on logits built to sit on either side of each bound."""
    fp32 = _logits(5.0)
    noise = 0.05 * torch.randn(fp32.shape, generator=torch.Generator().manual_seed(1))
    good = parity.int8_check(fp32 + noise, fp32)
    assert good.passed and good.judged and good.agreement >= 0.9 and good.correlation > 0.9
    assert parity.int8_check(torch.zeros_like(fp32), fp32).failures[0].startswith("the same output for all 16")
    assert not parity.int8_check(fp32.roll(1, -1), fp32).passed
    nan = fp32.clone()
    nan[3, 1] = float("nan")
    assert parity.int8_check(nan, fp32).failures == ("1 non-finite output value(s)",)
    # one class always winning: the centred correlation cannot see a per-class offset, agreement does
    check = parity.int8_check(_one_class_wins(fp32), fp32)
    assert check.correlation > 0.99 and [f.split(" ")[0] for f in check.failures] == ["top-1"]
    # logits that hardly change with the image: agreement and correlation are reported, not judged
    flat = _logits(0.1)
    assert flat.sub(flat.mean(0)).norm() / flat.norm() < parity.INT8_MIN_SIGNAL
    unjudged = parity.int8_check(flat.roll(1, -1), flat)
    assert unjudged.passed and not unjudged.judged and unjudged.agreement == 0.0
    assert not parity.int8_check(torch.zeros_like(flat), flat).passed  # a constant output still fails
    # a features model (several maps): judged by correlation, no agreement
    maps = [fp32[:, :, None, None].expand(-1, -1, 2, 2), fp32[:, :2, None, None]]
    check = parity.int8_check([m + 0.01 for m in maps], maps)
    assert check.passed and check.agreement is None
    assert not parity.int8_check([torch.zeros_like(m) for m in maps], maps).passed


def _working_model(name: str, folder: Path, size: int = 64) -> torch.nn.Module:
    """A random-weight model whose logits follow its input as a trained model's do, without training.

    Random init leaves MobileViT's logits almost input-independent (0.01-0.6 % of their size across images at
    64 px), which int8 cannot resolve: BatchNorm statistics are measured on the folder's images instead, and the head
    is a ridge regression fitted to the 4 classes on the pooled features. T2T-ViT has no BatchNorm, and
    onnxruntime's int8 of its random init returns one output for every image: it takes the reference fixtures'
    weight recipe.
    """
    from reference import recipe_value

    torch.manual_seed(0)
    model = litevit.create_model(name, img_size=size, num_classes=CLASSES)
    norms = [m for m in model.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    if not norms:
        state = model.state_dict()
        model.load_state_dict({k: torch.from_numpy(recipe_value(k, list(v.shape))) for k, v in state.items()})
    per_class = 8
    x = torch.from_numpy(np.concatenate(calibration_set(folder, model.model_info.data, (size, size), 32)))
    labels = torch.arange(CLASSES).repeat(per_class)  # calibration_set deals the class folders in turn
    for norm in norms:
        norm.reset_running_stats()
        norm.momentum = None  # a cumulative average over the one batch
    with torch.no_grad():
        model.train()(x)
        model.eval()
        features = model.forward_head(model.forward_features(x), pre_logits=True).double()  # (N, num_features)
        mean, std = features.mean(0), features.std(0) + 1e-6
        z = torch.cat([(features - mean) / std, torch.ones(len(x), 1, dtype=torch.float64)], 1)
        targets = 2 * torch.nn.functional.one_hot(labels, CLASSES).double() - 1
        w = torch.linalg.solve(z.T @ z + torch.eye(z.shape[1], dtype=torch.float64), z.T @ targets)
        head = torch.nn.Linear(features.shape[1], CLASSES)
        head.weight.copy_((w[:-1] / std[:, None]).T)
        head.bias.copy_(w[-1] - (mean / std) @ w[:-1])
    model.head = head
    if getattr(model, "head_dist", None) is not None:
        model.head_dist = head  # LeViT averages both heads in eval
    assert (model(x).argmax(-1) == labels).float().mean() == 1.0
    return model


def _first_result(function):
    """``function`` computed once: every later call returns the first call's result."""
    results = []

    def once(*args):
        if not results:
            results.append(function(*args))
        return results[0]

    return once


FAMILY_SMALLEST = ["levit_128s", "efficientvit_m0", "mobilevit_xxs", "mobilevitv2_050", "mobilevitv3_xxs", "t2t_vit_7"]
# what a dead graph returns in place of the int8 output, and how the check says so
DEAD = {
    "zeros": (lambda out: torch.zeros_like(out), "the same output for all"),
    "constant": (lambda out: out.mean(0, keepdim=True).expand_as(out), "the same output for all"),
    "nan": (lambda out: out.masked_fill(torch.rand(out.shape) < 0.1, float("nan")), r"\d+ non-finite"),
    "shuffled classes": (lambda out: out.roll(1, -1), "top-1 agreement with fp32"),
    "one class wins": (_one_class_wins, "top-1 agreement with fp32"),
}


@pytest.mark.parametrize(
    "name, suffix",
    [("levit_128s", ".onnx")]
    + [pytest.param(n, s, marks=pytest.mark.slow) for s in (".onnx", ".xml") for n in FAMILY_SMALLEST
       if (n, s) != ("levit_128s", ".onnx")],
)  # fmt: skip
def test_int8_check_passes_a_working_graph_and_fails_dead_ones(name, suffix, tmp_path, monkeypatch) -> None:
    """Every family, both routes (LeViT on onnxruntime by default, 15-60 s each on a shared 2-core machine)."""
    assert len({family_line(n) for n in FAMILY_SMALLEST}) == 6  # one variant of every family
    folder = _class_tree(tmp_path / "images", per_class=12)
    model = _working_model(name, folder)
    # the graphs of the first export serve the dead-graph exports below (quantizing once)
    for function in ("onnx_model", "onnx_int8", "openvino_ir"):
        monkeypatch.setattr(builder, function, _first_result(getattr(builder, function)))
    path = tmp_path / f"m{suffix}"
    result = litevit.export(model, path, int8=True, calibration=folder, calibration_images=16, check=True)
    check = result.int8_check
    assert check.passed and check.judged and check.batch == INT8_CHECK_IMAGES
    assert check.agreement >= parity.INT8_MIN_AGREEMENT and check.correlation >= parity.INT8_MIN_CORRELATION
    real_call = ExportedModel.__call__
    for kind, (corrupt, message) in DEAD.items():
        monkeypatch.setattr(ExportedModel, "__call__", lambda self, x, corrupt=corrupt: corrupt(real_call(self, x)))
        with pytest.raises(ExportError, match=f"held out of calibration: {message}") as raised:
            litevit.export(model, path, int8=True, calibration=folder, calibration_images=16, check=True)
        assert "\n" not in str(raised.value), kind


TINY = dict(num_classes=10, img_size=64, dims=(32, 48, 64), num_heads=(2, 3, 4), depths=(1, 1, 1), key_dim=16)


def test_int8_check_reports_what_it_could_not_judge(tmp_path, caplog) -> None:
    """Logits that hardly change with the image (as random MobileViTs give: 0.01-0.6 % of their size) pass with a
    warning that agreement and correlation were not judged."""
    folder = _class_tree(tmp_path / "images", per_class=4)
    torch.manual_seed(0)
    model = litevit.create_model("levit_128s", **TINY, distilled=False).eval()
    with torch.no_grad():
        model.head.linear.bias.copy_(100 * torch.randn(10))  # a per-class offset far above what varies
    with caplog.at_level(logging.WARNING, logger="litevit.deploy.exporting"):
        result = litevit.export(model, tmp_path / "m.onnx", int8=True, calibration=folder, calibration_images=8,
                                check=True)  # fmt: skip
    check = result.int8_check
    assert check.passed and not check.judged and check.signal < parity.INT8_MIN_SIGNAL
    assert "int8 check: accuracy not judged" in caplog.text


def test_int8_check_bounds_are_stated_where_users_read_them() -> None:
    """The CLI help, export()'s docstring and the docs (docs/speed.md) state the bounds the check applies."""
    root = Path(__file__).resolve().parents[2]
    stated = [f"{parity.INT8_MIN_AGREEMENT:.0%}", f"{parity.INT8_MIN_CORRELATION:g}", f"{parity.INT8_MIN_SIGNAL:.0%}",
              f"{INT8_CHECK_IMAGES}"]  # fmt: skip
    export_help = next(a for a in cli.build_parser()._subparsers._group_actions[0].choices["export"]._actions
                       if "--check" in a.option_strings).help.replace("%%", "%")  # fmt: skip
    docs = (root / "docs" / "speed.md").read_text()
    paragraph = docs[docs.index("**The int8 check**") :].split("\n\n")[0]
    docs_text = " ".join(paragraph.split()).replace(" %", "%")
    for text in (export_help, " ".join(litevit.export.__doc__.split()).replace(" %", "%"), docs_text):
        for value in stated:
            assert value in text, (value, text[:200])


def test_nearest_weighted_stops_every_path_at_its_first_weighted_node() -> None:
    """A diamond: input -> a (relu) -> {b (conv), c (add) -> d (conv) -> e (conv)}: b and d, never e."""
    from litevit.deploy.int8 import nearest_weighted

    edges = {"in": ["a"], "a": ["b", "c"], "b": [], "c": ["d"], "d": ["e"], "e": []}
    weighted = {"b", "d", "e"}
    found = nearest_weighted(["a"], lambda n: edges[n], lambda n: n, lambda n: n in weighted)
    assert found == {"b", "d"}
    back = {"e": ["d"], "d": ["c"], "c": ["a"], "b": ["a"], "a": [], "in": []}
    assert nearest_weighted(["e"], lambda n: back[n], lambda n: n, lambda n: n in {"c"}) == {"c"}
