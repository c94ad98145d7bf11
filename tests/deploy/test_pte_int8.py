"""int8 ExecuTorch ``.pte`` (PT2E with ExecuTorch's XNNPACK quantizer): every family exports, runs in ExecuTorch's
runtime and agrees with its PT2E int8 reference; the reference check fails on a planted fault; bad input is one line.

One int8 lowering of a family's smallest variant costs 3-15 minutes on 2 shared cores: the default run exports a tiny
LeViT trained on drawn patterns through the CLI at a fixed batch of 2 (the int8 check judged) and plants a fault in a
small convolutional network; every family's smallest variant, with random weights, is ``slow``.
"""

from __future__ import annotations

import contextlib
import copy
import io
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import litevit
from litevit import cli
from litevit.data import eval_transform, load_image
from litevit.deploy import builder
from litevit.deploy.errors import ExportError
from litevit.deploy.executorch import PTE_INT8_MAX_RATIO, lower_pte, quantize_int8
from litevit.deploy.int8 import INT8_SETTINGS, CalibrationError, Int8Settings
from litevit.deploy.parity import RTOL
from litevit.deploy.runtime import ExportedModel
from litevit.training import train as T

pytest.importorskip("executorch", reason="the executorch extra is not installed: pip install 'litevit[executorch]'")

SIZE = 64
DEFAULT_FAMILY = "levit_128s"  # bad input only: refused before anything is lowered
SLOW_FAMILIES = ["levit_128s", "efficientvit_m0", "mobilevit_xxs", "mobilevitv2_050", "mobilevitv3_xxs", "t2t_vit_7"]
CLASSES = 4


@pytest.fixture(scope="module")
def calibration(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """24 images in 4 class folders: stripes at a class angle in a class colour, with noise."""
    root = tmp_path_factory.mktemp("pte-int8-images")
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:SIZE, 0:SIZE] / SIZE
    for label in range(CLASSES):
        (root / f"c{label}").mkdir()
        for i in range(6):
            angle = np.pi * label / CLASSES + rng.normal(0, 0.1)
            wave = np.sin(2 * np.pi * rng.uniform(2, 4) * (np.cos(angle) * xx + np.sin(angle) * yy))
            colour = 255 * np.eye(3)[label % 3] * 0.6 + 40
            image = colour + 60 * wave[..., None] + rng.normal(0, 8, (SIZE, SIZE, 3))
            Image.fromarray(np.clip(image, 0, 255).astype(np.uint8)).save(root / f"c{label}" / f"{i}.png")
    return root


def _keep_reference(monkeypatch: pytest.MonkeyPatch) -> dict[str, torch.nn.Module]:
    """Make export hand over the PT2E module each ``.pte`` is lowered from (``"reference"``), and the fused fp32
    model it was quantized from (``"fp32"``)."""
    kept: dict[str, torch.nn.Module] = {}
    real = builder.save_pte_int8

    def keeping(*args: object) -> object:
        report, reference = real(*args)
        kept["reference"], kept["fp32"] = reference, args[0]
        return report, reference

    monkeypatch.setattr(builder, "save_pte_int8", keeping)
    return kept


def _images(folder: Path, model: ExportedModel, count: int) -> torch.Tensor:
    transform = eval_transform(model.metadata.data, model.metadata.img_size)
    files = sorted(folder.rglob("*.png"))[:count]
    return torch.stack([transform(load_image(path)) for path in files])


def _check_runs_as_its_reference(path: Path, reference: torch.nn.Module, fp32: torch.nn.Module, x: torch.Tensor):
    """The saved file, loaded fresh, against the PT2E reference and fp32 PyTorch (run a fixed-size batch at a time)."""
    loaded = ExportedModel(path)
    assert loaded.metadata.precision == "int8" and loaded.metadata.format == "executorch"
    size = int(loaded.metadata.batch)
    x = x[: len(x) // size * size]
    with torch.no_grad():
        out = torch.cat([loaded(x[start : start + size]) for start in range(0, len(x), size)])
        expected = torch.cat([reference(x[start : start + size]) for start in range(0, len(x), size)])
        float_out = fp32(x)
    # brute force: the .pte nearer its reference than quantization moved the reference from fp32
    assert (out - expected).norm() <= PTE_INT8_MAX_RATIO * (expected - float_out).norm()
    # int8 indeed: further from fp32 than float rounding (fp32 .pte files are within RTOL)
    assert (out - float_out).abs().max() > RTOL * float_out.abs().max()


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A tiny LeViT trained on drawn patterns, as tests/deploy/test_int8.py trains it: (best.safetensors, data root).
    Random weights leave the logits nearly input-independent, where int8 and fp32 disagree on top-1."""
    training_tests = str(Path(__file__).resolve().parents[1] / "training")
    if training_tests not in sys.path:  # pytest puts it there only when it collects tests/training too
        sys.path.append(training_tests)
    from test_train import TINY, make_patterns, tiny_config

    root = tmp_path_factory.mktemp("pte-int8-patterns")
    make_patterns(root / "train", 24, seed=0)
    out = tmp_path_factory.mktemp("pte-int8-run")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        T.train(tiny_config(root, out, epochs=16, model_kwargs={**TINY, "distilled": False}))
    finally:
        torch.set_num_threads(threads)
    return out / T.BEST_EXPORT, root


def test_cli_exports_int8_pte_at_a_fixed_batch(trained: tuple[Path, Path], tmp_path: Path, monkeypatch) -> None:
    kept = _keep_reference(monkeypatch)
    best, root = trained
    path = tmp_path / "m.pte"
    command = ["export", str(best), "--out", str(path), "--precision", "int8", "--calibration", str(root / "train"),
               "--calibration-images", "32", "--batch", "2", "--check"]  # fmt: skip
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        assert cli.main(command) == 0
    text = printed.getvalue()
    assert "executorch int8, batch 2" in text and "int8 check on 32 images" in text, text
    assert "(passed: agreement >= 50%" in text, text  # judged: a trained model's logits vary with the image
    assert "pte-reference check on the same 32 images: distance from its PT2E reference" in text, text
    assert f"(passed: <= {PTE_INT8_MAX_RATIO:g})" in text, text
    share = float(text.split("XNNPACK runs ")[1].split("%")[0]) / 100
    assert share >= 0.95 and "int8 in XNNPACK:" in text, text
    loaded = ExportedModel(path)
    _check_runs_as_its_reference(path, kept["reference"], kept["fp32"], _images(root / "train", loaded, 16))
    one = torch.randn(1, 3, *loaded.metadata.img_size)  # a fixed-batch file pads a smaller batch with repeats
    assert torch.equal(loaded(one), loaded(torch.cat([one, one]))[:1])


@pytest.mark.slow
@pytest.mark.parametrize("name", SLOW_FAMILIES)
def test_every_family_exports_int8_pte(name: str, calibration: Path, tmp_path: Path, monkeypatch) -> None:
    """Random weights at 64 px: the int8-vs-fp32 check is left out (their near-constant logits), the PT2E one kept."""
    kept = _keep_reference(monkeypatch)
    model = litevit.create_model(name, img_size=SIZE).eval()
    result = litevit.export(model, tmp_path / "m.pte", precision="int8", calibration=calibration,
                            calibration_images=16)  # fmt: skip
    assert result.metadata.precision == "int8"
    assert result.delegation is not None and result.delegation.quantized > 0, result.delegation.summary()
    loaded = ExportedModel(result.path)
    x = _images(calibration, loaded, 24)
    _check_runs_as_its_reference(result.path, kept["reference"], kept["fp32"], x)


class _Small(torch.nn.Module):
    """Conv-ReLU, depthwise conv, residual add, pooling and a linear head: the int8 patterns of the families."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = torch.nn.Sequential(torch.nn.Conv2d(3, 16, 3, 2, 1), torch.nn.ReLU())
        self.mixer = torch.nn.Conv2d(16, 16, 3, 1, 1, groups=16)
        self.expand = torch.nn.Sequential(torch.nn.Conv2d(16, 32, 1), torch.nn.ReLU())
        self.head = torch.nn.Linear(32, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        x = self.expand(x + self.mixer(x))
        return self.head(x.mean((2, 3)))  # B, 32 -> B, 10


def _float_elementwise(reference: torch.fx.GraphModule) -> dict[str, bool]:
    """For each elementwise add and multiply of a PT2E module: whether it takes a float input (one not dequantized
    from int8: the residual branch, the learned scale), which an annotated op never does."""
    kinds = {torch.ops.aten.add.Tensor: "add", torch.ops.aten.mul.Tensor: "mul"}
    found = {}
    for node in reference.graph.nodes:
        if node.target in kinds:
            found[f"{kinds[node.target]}:{node.name}"] = not all(
                "dequantize" in str(arg.target) for arg in node.all_input_nodes
            )
    return found


class _Scaled(_Small):
    """_Small with a learned per-channel scale: a multiply between layers, as a norm's affine."""

    def __init__(self) -> None:
        super().__init__()
        self.gamma = torch.nn.Parameter(torch.linspace(0.1, 3.0, 16).view(1, 16, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x) * self.gamma
        x = self.expand(x + self.mixer(x))
        return self.head(x.mean((2, 3)))


def test_pte_float_elementwise_leaves_adds_and_multiplies_float() -> None:
    """``Int8Settings.pte_float_elementwise`` (T2T-ViT's): XNNPACK's quantizer leaves the residual add and the
    scale multiply float; without it both read only dequantized int8."""
    model = _Scaled().eval()
    example = torch.randn(1, 3, SIZE, SIZE)
    batches = [torch.randn(1, 3, SIZE, SIZE) for _ in range(4)]
    quantized, _ = quantize_int8(model, example, batches)
    kept, _ = quantize_int8(model, example, batches, Int8Settings(pte_float_elementwise=True))
    assert sorted(k.split(":")[0] for k in _float_elementwise(kept)) == ["add", "mul"]
    assert all(_float_elementwise(kept).values())
    assert not any(_float_elementwise(quantized).values())
    assert INT8_SETTINGS["t2t_vit"].pte_float_elementwise
    with torch.no_grad():  # the float parts compute the model
        expected = model(example)
        torch.testing.assert_close(kept(example), expected, rtol=0.1, atol=0.1 * expected.abs().max())


def test_export_hands_the_familys_settings_to_the_pte_quantizer(calibration: Path, tmp_path: Path, monkeypatch) -> None:
    """``litevit.export`` of an int8 ``.pte`` quantizes with the model's family settings (T2T-ViT: adds and
    multiplies float), and with ``int8_settings`` when given."""

    class Handed(Exception):
        pass

    seen = []

    def capture(model, example, path, meta_json, batches, settings):
        seen.append(settings)
        raise Handed

    monkeypatch.setattr(builder, "save_pte_int8", capture)
    model = litevit.create_model("t2t_vit_7", img_size=SIZE).eval()
    own = Int8Settings(calibration="percentile")
    for given in (None, own):
        with pytest.raises(Handed):
            litevit.export(model, tmp_path / "m.pte", precision="int8", calibration=calibration,
                           calibration_images=8, int8_settings=given)  # fmt: skip
    assert seen == [INT8_SETTINGS["t2t_vit"], own]


def test_reference_check_fails_on_a_corrupted_scale(calibration: Path, tmp_path: Path, monkeypatch) -> None:
    """A ``.pte`` lowered from a copy of its PT2E module with one layer's weight scales 1.5x too large fails the check
    against the PT2E reference; the same export without the fault passes it."""
    model = _Small().eval()
    export = litevit.export  # unchanged first: the same network passes
    result = export(model, tmp_path / "ok.pte", img_size=SIZE, precision="int8", calibration=calibration,
                    calibration_images=16, check=True)  # fmt: skip
    assert result.pte_reference_check is not None and result.pte_reference_check.passed

    def corrupted(model, example, path, meta_json, batches, settings):
        reference, _ = quantize_int8(model, example, batches, settings)
        planted = copy.deepcopy(reference)
        scales = [n.args[1].target for n in planted.graph.nodes if "dequantize_per_channel" in str(n.target)]
        getattr(planted, scales[1]).mul_(1.5)  # the depthwise conv's weight scales
        data, report = lower_pte(planted, example.contiguous(), meta_json, rewrite=False)
        path.write_bytes(data)
        return report, reference

    monkeypatch.setattr(builder, "save_pte_int8", corrupted)
    with pytest.raises(ExportError, match="the pte-reference check failed: the .pte differs from its PT2E") as info:
        export(model, tmp_path / "bad.pte", img_size=SIZE, precision="int8", calibration=calibration,
               calibration_images=16, check=True)  # fmt: skip
    assert "\n" not in str(info.value)


def test_bad_input_is_one_line(calibration: Path, tmp_path: Path, capsys) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    cases = {
        None: "int8 export needs calibration images",
        tmp_path / "missing": "calibration folder not found",
        empty: r"has 0 image file\(s\); calibration needs at least 8",
    }
    for folder, message in cases.items():
        with pytest.raises(ValueError, match=message) as info:
            litevit.export(DEFAULT_FAMILY, tmp_path / "m.pte", precision="int8", calibration=folder)
        assert "\n" not in str(info.value)
        command = ["export", DEFAULT_FAMILY, "--precision", "int8", "--out", str(tmp_path / "m.pte")]
        assert cli.main(command + (["--calibration", str(folder)] if folder else [])) == 2
    with pytest.raises(CalibrationError, match="the int8 check holds 8"):  # 8 images cannot also check
        few = tmp_path / "few"
        few.mkdir()
        for path in sorted(calibration.rglob("*.png"))[:8]:
            (few / f"{path.parent.name}-{path.name}").write_bytes(path.read_bytes())
        litevit.export(DEFAULT_FAMILY, tmp_path / "m.pte", precision="int8", calibration=few, check=True)
    with pytest.raises(ValueError, match="runs in OpenVINO only"):
        litevit.export(DEFAULT_FAMILY, tmp_path / "m.pte", precision="int8-bf16", calibration=calibration)
    assert not (tmp_path / "m.pte").exists()
