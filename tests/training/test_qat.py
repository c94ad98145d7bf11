"""Quantization-aware fine-tuning (``litevit train --qat``): calibration, frozen BatchNorm, the written int8 files.

A tiny LeViT is trained in float on the drawn patterns, then fine-tuned with ``qat=True`` for two epochs while the
calibration, the optimizer steps, the model after each epoch and the model written are recorded.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from test_train import CLASSES, TINY, TINY_JSON, assert_ranks_in_step, ddp_logs, tiny_config

from litevit import cli
from litevit.data import eval_transform, load_image
from litevit.deploy.int8 import Int8Settings
from litevit.deploy.runtime import ExportedModel
from litevit.training import qat as Q
from litevit.training import train as T
from litevit.training.config import QAT_EPOCHS
from litevit.weights.loading import create_model

pytest.importorskip("nncf")
pytest.importorskip("openvino")

REPO = Path(__file__).resolve().parents[2]
EXACT = "donot_use_mm_for_euclid_dist"  # the matmul form is off by ~0.1 at these norms


def _bn_buffers(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {
        f"{name}.{key}": buffer.detach().clone()
        for name, module in model.named_modules()
        if isinstance(module, torch.nn.modules.batchnorm._BatchNorm)
        for key, buffer in module.named_buffers()
        if key in ("running_mean", "running_var")
    }


@pytest.fixture(scope="module")
def float_run(patterns: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny LeViT trained in float on the patterns: ``best.safetensors``."""
    out = tmp_path_factory.mktemp("float")
    T.train(tiny_config(patterns, out, epochs=6))
    return out / T.BEST_EXPORT


@pytest.fixture(scope="module")
def levit_file(patterns: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny LeViT's ``best.safetensors`` after one float epoch: a checkpoint for the error cases."""
    out = tmp_path_factory.mktemp("one-epoch")
    T.train(tiny_config(patterns, out, epochs=1))
    return out / T.BEST_EXPORT


def qat_config(patterns: Path, out: Path, checkpoint: Path | None, **overrides: Any) -> T.TrainConfig:
    values: dict[str, Any] = dict(epochs=2, qat=True, checkpoint=checkpoint and str(checkpoint), lr=None, min_lr=None,
                                  warmup_lr=None, warmup_epochs=None)  # fmt: skip
    values.update(overrides)
    return tiny_config(patterns, out, **values)


@pytest.fixture(scope="module")
def qat_run(patterns: Path, float_run: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """A two-epoch QAT run with its calibration, optimizer steps, post-epoch models and written model recorded."""
    out = tmp_path_factory.mktemp("qat")
    seen: dict[str, Any] = {"events": [], "epochs": [], "saved": []}
    quantize, evaluate, save_int8 = T.quantize_for_training, T.evaluate, T.save_int8
    step = torch.optim.AdamW.step

    def spy_quantize(model: torch.nn.Module, images: torch.Tensor, settings: Int8Settings, batch: int) -> Any:
        seen["events"].append("calibrate")
        seen["calibration"] = images.clone()
        quantized = quantize(model, images, settings, batch)
        seen["calibrated_bn"] = _bn_buffers(quantized)
        seen["calibrated_state"] = {k: v.detach().clone() for k, v in quantized.state_dict().items()}
        return quantized

    def spy_step(self: torch.optim.Optimizer, *args: Any, **kwargs: Any) -> Any:
        seen["events"].append("step")
        return step(self, *args, **kwargs)

    def spy_evaluate(model: torch.nn.Module, *args: Any, **kwargs: Any) -> dict[str, float]:
        seen["events"].append("evaluate")
        seen["epochs"].append(_bn_buffers(model))
        return evaluate(model, *args, **kwargs)

    def spy_save(model: torch.nn.Module, *args: Any) -> list[Path]:
        seen["saved"].append(copy.deepcopy(model).eval())
        return save_int8(model, *args)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(T, "quantize_for_training", spy_quantize)
        patch.setattr(T, "evaluate", spy_evaluate)
        patch.setattr(T, "save_int8", spy_save)
        patch.setattr(torch.optim.AdamW, "step", spy_step)
        seen["result"] = T.train(qat_config(patterns, out, float_run))
    seen["out"] = out
    return seen


def _val_images(patterns: Path) -> torch.Tensor:
    transform = eval_transform(create_model("levit_128s", img_size=32, **TINY).model_info.data, 32)
    return torch.stack([transform(load_image(p)) for p in sorted((patterns / "val").rglob("*.png"))])


@pytest.mark.slow  # the QAT run fixture: 40 s to 2 min
def test_calibration_runs_on_training_images_before_the_first_step(qat_run: dict[str, Any], patterns: Path) -> None:
    events = qat_run["events"]
    assert events[:3] == ["calibrate", "evaluate", "step"] and events.count("calibrate") == 1  # scored, then trained
    transform = eval_transform(create_model("levit_128s", img_size=32, **TINY).model_info.data, 32)
    train = torch.stack([transform(load_image(p)) for p in sorted((patterns / "train").rglob("*.png"))])
    calibration = qat_run["calibration"]
    assert calibration.shape == train.shape  # all 72 training images (fewer than DEFAULT_CALIBRATION_IMAGES)
    nearest = torch.cdist(calibration.flatten(1), train.flatten(1), compute_mode=EXACT).min(dim=1).values
    assert nearest.max() < 1e-5  # every calibration image is a training image
    assert (
        torch.cdist(calibration.flatten(1), _val_images(patterns).flatten(1), compute_mode=EXACT).min() > 1e-2
    )  # none is held out


@pytest.mark.slow  # the QAT run fixture: 40 s to 2 min
def test_batchnorm_statistics_frozen_after_the_first_epoch(qat_run: dict[str, Any]) -> None:
    calibrated, (before, after_1, after_2) = qat_run["calibrated_bn"], qat_run["epochs"]
    assert all(torch.equal(calibrated[k], before[k]) for k in calibrated)
    assert calibrated.keys() == after_1.keys() == after_2.keys() and calibrated
    assert any(not torch.equal(calibrated[k], after_1[k]) for k in calibrated)  # epoch 1 updates them
    for key in after_1:  # epoch 2 does not
        assert torch.equal(after_1[key], after_2[key]), key


@pytest.mark.slow  # the QAT run fixture: 40 s to 2 min
def test_written_int8_files_compute_the_fake_quantized_model(qat_run: dict[str, Any], patterns: Path) -> None:
    result: T.TrainResult = qat_run["result"]
    assert result.finished and result.best_files == (Q.INT8_XML, Q.INT8_ONNX)
    assert not (qat_run["out"] / T.BEST_EXPORT).exists()
    images = _val_images(patterns)
    with torch.no_grad():
        reference = qat_run["saved"][-1](images)  # the model of the last best epoch, the one written
    scale = reference.std().item()
    for name in (Q.INT8_XML, Q.INT8_ONNX):
        logits = ExportedModel(qat_run["out"] / name)(images)
        agreement = (logits.argmax(-1) == reference.argmax(-1)).float().mean().item()
        assert agreement >= 0.9, name
        assert (logits - reference).abs().mean().item() < 0.1 * scale, name


@pytest.mark.slow  # the QAT run fixture: 40 s to 2 min
def test_int8_files_carry_litevit_metadata(qat_run: dict[str, Any], patterns: Path, capsys) -> None:
    for name, fmt in ((Q.INT8_XML, "openvino"), (Q.INT8_ONNX, "onnx")):
        meta = ExportedModel(qat_run["out"] / name).metadata
        assert (meta.variant, meta.format, meta.precision) == ("levit_128s", fmt, "int8")
        assert meta.img_size == (32, 32) and meta.batch == "dynamic" and meta.class_names == CLASSES
        assert meta.num_classes == len(CLASSES)
        assert meta.opset == (13 if fmt == "onnx" else None) and meta.weight_bits == (8 if fmt == "onnx" else None)
        assert meta.inference_precision == ("f32" if fmt == "openvino" else None)
        command = ["eval", str(qat_run["out"] / name), "--data", str(patterns / "val"), "--json", "--workers", "0"]
        assert cli.main([*command, "--no-progress"]) == 0
        scores = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
        assert scores["images"] == 30


def _int8_weighted(ir: Any, kinds: tuple[str, ...]) -> dict[str, bool]:
    """For every op of ``kinds`` in an IR: whether its weights are int8 (a quantized constant, or a FakeQuantize)."""

    def int8(node: Any) -> bool:
        while node.get_type_name() in ("Reshape", "Convert", "Multiply", "Subtract", "Unsqueeze", "Transpose"):
            node = node.input_value(0).get_node()
        if node.get_type_name() == "FakeQuantize":
            return True
        return node.get_type_name() == "Constant" and node.get_element_type().get_type_name() in ("i8", "u8")

    ops = [op for op in ir.get_ordered_ops() if op.get_type_name() in kinds]
    return {op.get_friendly_name(): int8(op.input_value(1).get_node()) for op in ops}


def test_float_kept_nodes_name_grouped_convolutions_and_the_ends() -> None:
    """The ignored scope of ``float_depthwise`` / ``float_ends`` on NNCF's graph of the torch model, against the
    model's own modules: every convolution with groups > 1, and the stem's first convolution and the classifier."""
    model = create_model("efficientvit_m0", num_classes=3, img_size=32).eval()
    example = torch.randn(1, 3, 32, 32)
    grouped = Q.float_kept_nodes(model, example, Int8Settings(float_depthwise=True))
    expected = [n for n, m in model.named_modules() if isinstance(m, torch.nn.Conv2d) and m.groups > 1]
    assert len(grouped) == len(expected) > 0 and all("/conv2d/" in name for name in grouped)  # each called once
    ends = Q.float_kept_nodes(model, example, Int8Settings(float_ends=True))
    first_conv = next(n for n, m in model.named_modules() if isinstance(m, torch.nn.Conv2d))
    assert len(ends) == 2 and any(name.startswith(first_conv.replace(".", "/") + "/conv2d") for name in ends)
    assert any(name.startswith("head/") for name in ends) and Q.float_kept_nodes(model, example, Int8Settings()) == []


@pytest.mark.slow
@pytest.mark.parametrize("keep", [False, True])
def test_family_float_kept_layers_have_no_quantizers(keep: bool, tmp_path: Path) -> None:
    """``float_depthwise`` and ``float_ends`` as the OpenVINO post-training route applies them: EfficientViT's
    grouped convolutions float, and the first and last weighted layers; everything else int8."""
    import openvino as ov

    torch.manual_seed(0)
    model = create_model("efficientvit_m0", num_classes=3, img_size=32).eval()
    settings = Int8Settings(transformer=False, preset="performance", float_depthwise=keep, float_ends=keep)
    quantized = Q.quantize_for_training(model, torch.randn(8, 3, 32, 32), settings, batch_size=4)
    Q.save_int8(quantized, tmp_path, ["a", "b", "c"], 32)
    ir = ov.Core().read_model(str(tmp_path / Q.INT8_XML))
    grouped = _int8_weighted(ir, ("GroupConvolution",))
    plain = _int8_weighted(ir, ("Convolution", "MatMul"))
    first = next(op for op in ir.get_ordered_ops() if op.get_type_name() == "Convolution").get_friendly_name()
    last = [op for op in ir.get_ordered_ops() if op.get_type_name() in ("MatMul", "Convolution")][-1]
    assert grouped and plain
    if keep:
        assert not any(grouped.values()) and not plain[first] and not plain[last.get_friendly_name()]
    else:
        assert all(grouped.values()) and plain[first] and plain[last.get_friendly_name()]


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"checkpoint": None}, "--qat fine-tunes a trained float model: pass it with --checkpoint"),
        ({"teacher": "levit_128s"}, "does not support --teacher/--distill"),
        ({"multi_scale": True, "multi_scale_sizes": (24, 32)}, "does not support --multi-scale"),
        ({"ema": True}, "does not support --ema"),
        ({"amp": True, "layer_decay": 0.8}, "does not support --amp, --layer-decay"),
    ],
)
def test_options_qat_cannot_honour_are_one_line_errors(
    overrides: dict[str, Any], message: str, patterns: Path, tmp_path: Path
) -> None:
    config = qat_config(patterns, tmp_path, **{"checkpoint": tmp_path / "float.safetensors", **overrides})
    with pytest.raises(ValueError, match=message) as error:
        T.train(config)
    assert "\n" not in str(error.value)


def test_float_checkpoint_of_another_variant_is_refused(levit_file: Path, patterns: Path, tmp_path: Path) -> None:
    config = qat_config(patterns, tmp_path, levit_file, model="efficientvit_m0", model_kwargs={})
    with pytest.raises(ValueError, match="is a litevit levit_128s file, not efficientvit_m0"):
        T.train(config)


def test_too_few_calibration_images_is_refused(levit_file: Path, patterns: Path, tmp_path: Path) -> None:
    data = tmp_path / "data"
    for split in ("train", "val"):
        for kind in CLASSES:
            (data / split / kind).mkdir(parents=True)
            for path in sorted((patterns / split / kind).glob("*.png"))[:2]:
                (data / split / kind / path.name).write_bytes(path.read_bytes())
    config = qat_config(data, tmp_path / "out", levit_file, batch_size=2)
    with pytest.raises(ValueError, match="--qat calibrates on training images: found 6, need at least 8"):
        T.train(config)


def test_cli_qat_option(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    args = cli.build_parser().parse_args(["train", "levit_128s", "--data", "d", "--qat", "--checkpoint", "c"])
    config = T.config_from_args(args)
    assert config.qat and config.epochs == QAT_EPOCHS and config.lr is None
    given = cli.build_parser().parse_args(["train", "levit_128s", "--data", "d", "--qat", "--epochs", "5"])
    assert T.config_from_args(given).epochs == 5
    assert not T.config_from_args(cli.build_parser().parse_args(["train", "x", "--data", "d"])).qat
    assert cli.main(["train", "levit_128s", "--data", str(tmp_path), "--qat", "--out", str(tmp_path / "o")]) == 2
    assert "pass it with --checkpoint" in capsys.readouterr().err
    assert Q.qat_lr(32) == pytest.approx(1e-3 * np.sqrt(32 / 256) * 0.1 * 0.5)


@pytest.mark.slow  # the QAT run fixture: 40 s to 2 min
def test_qat_changes_the_calibrated_graph(qat_run: dict[str, Any]) -> None:
    """Training moved the quantizers' ranges and the weights away from the calibrated graph's (a run whose optimizer
    left the quantizers out, or never stepped, fails here)."""
    calibrated = qat_run["calibrated_state"]
    trained = torch.load(qat_run["out"] / T.LAST_CHECKPOINT, weights_only=False)["model"]
    assert trained.keys() == calibrated.keys()
    ranges = [k for k in calibrated if Q.is_quantizer_parameter(k) and calibrated[k].is_floating_point()]
    weights = [k for k in calibrated if k.endswith(".weight") and not Q.is_quantizer_parameter(k)]
    assert ranges and weights

    def moved(keys: list[str]) -> list[str]:
        return [k for k in keys if not torch.allclose(trained[k], calibrated[k], rtol=1e-6, atol=1e-9)]

    assert len(moved(ranges)) >= len(ranges) // 2, moved(ranges)
    assert len(moved(weights)) >= len(weights) // 2


@pytest.mark.slow
def test_qat_resume_equals_uninterrupted_run(qat_run: dict[str, Any], patterns: Path, float_run: Path, tmp_path):
    first = T.train(qat_config(patterns, tmp_path, float_run, stop_after=1))
    assert not first.finished
    second = T.train(qat_config(patterns, tmp_path, float_run, resume="auto"))
    assert second.finished and [r["epoch"] for r in second.history] == [2]
    a = torch.load(qat_run["out"] / T.LAST_CHECKPOINT, weights_only=False)["model"]
    b = torch.load(tmp_path / T.LAST_CHECKPOINT, weights_only=False)["model"]
    assert a.keys() == b.keys() and any("__nncf_hooks" in k for k in a)  # the quantizers' ranges are saved
    # two QAT runs agree to ~1e-6 in the first epoch's loss, not bit for bit (calibration statistics and NNCF's
    # reference kernels): BatchNorm variances differed by 6e-4 at most, so the comparison has a tolerance
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=1e-2, atol=2e-3, msg=key)
    assert qat_run["result"].history[1]["val_top1"] == pytest.approx(second.history[0]["val_top1"])
    assert qat_run["result"].history[1]["train_loss"] == pytest.approx(second.history[0]["train_loss"], rel=1e-3)


@pytest.mark.slow
def test_qat_ddp_two_processes_gloo(float_run: Path, patterns: Path, tmp_path: Path) -> None:
    command = [
        sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
        "-m", "litevit", "--log-level", "INFO", "train", "levit_128s", "--data", str(patterns), "--out", str(tmp_path),
        "--epochs", "2", "--img-size", "32", "--batch-size", "6", "--workers", "0", "--model-kwargs", TINY_JSON,
        "--no-progress", "--qat", "--checkpoint", str(float_run),
    ]  # fmt: skip
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(REPO / "src"))
    run = subprocess.run(command, capture_output=True, text=True, env=env, timeout=600)
    assert run.returncode == 0, run.stderr[-4000:]
    records, digests = ddp_logs(run.stderr)
    assert sorted(records) == [(0, 1), (0, 2), (1, 1), (1, 2)], run.stderr[-4000:]
    # each rank's own parameters (weights and quantizer ranges), hashed before any reduction: the metrics records
    # are summed across ranks before they are logged, so only these can show a rank that diverged
    assert_ranks_in_step(digests, 2)
    assert ExportedModel(tmp_path / Q.INT8_XML).metadata.precision == "int8"
    assert run.stdout.count("finished") == 1


# ---------------------------------------------------------------------------------- the run checks itself, via the CLI


def _cli_train(*args: str) -> list[str]:
    return ["train", *args, "--workers", "0", "--batch-size", "12", "--no-progress"]


def test_planted_resolution_mismatch_is_refused_before_calibration(
    strong_float: tuple[Path, float, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A file trained at 32 px fine-tuned with --qat at 16 px scores far below its record: one line, exit 2, no
    calibration and no files."""
    path, top1, patterns = strong_float
    assert top1 >= 80  # the guard needs a model that is good at its own resolution
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(T, "quantize_for_training", lambda *a: pytest.fail("calibrated despite the mismatch"))
        code = cli.main(_cli_train(str(path), "--data", str(patterns), "--qat", "--img-size", "16",
                                   "--out", str(tmp_path / "qat")))  # fmt: skip
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert code == 2
    assert "run is at 16 px but the file was trained at 32 px" in err and f"{top1:.2f}%" in err
    assert not (tmp_path / "qat" / Q.INT8_XML).exists()


def test_far_below_is_bounded_by_the_sampling_error() -> None:
    assert Q.far_below(18.38, 94.15, 539)  # the run: 224 px from a 64 px file
    assert not Q.far_below(92.0, 94.15, 539)  # 2 points: within noise and the 5-point floor
    assert not Q.far_below(63.3, 90.0, 10)  # 27 points on 10 images: 3 standard errors are 28 points
    assert Q.far_below(63.3, 90.0, 30)


def test_qat_from_the_file_alone_checks_itself(
    strong_float: tuple[Path, float, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """train FILE --qat: the file's 32 px are taken; the float model is scored first (the same top-1 as computed
    independently), each epoch logs float, int8 and drop, the run ends with one line naming each written file's own
    top-1 (the same as running the file here), and the exit status says whether the worst drop is within
    --max-drop."""
    path, top1, patterns = strong_float
    out = tmp_path / "qat"
    code = cli.main(_cli_train(str(path), "--data", str(patterns), "--qat", "--epochs", "1", "--out", str(out)))
    printed = capsys.readouterr().out
    record = json.loads((out / "metrics.jsonl").read_text().splitlines()[-1])
    assert record["float_top1"] == pytest.approx(top1)
    assert record["drop"] == pytest.approx(record["float_top1"] - record["int8_top1"])
    assert record["int8_top1"] == record["val_top1"]
    best = record["best_top1"]
    line = next(x for x in printed.splitlines() if x.startswith("--qat: float top-1"))
    assert f"float top-1 {top1:.2f}%, best int8 top-1 {best:.2f}%" in line and "30 validation images at 32 px" in line
    paths = sorted((patterns / "val").rglob("*.png"))
    y = torch.tensor([CLASSES.index(p.parent.name) for p in paths])
    files = {}
    for name in (Q.INT8_XML, Q.INT8_ONNX):
        runner = ExportedModel(out / name)
        assert runner.metadata.img_size == (32, 32)
        transform = eval_transform(runner.metadata.data, 32)
        x = torch.stack([transform(load_image(p)) for p in paths])
        files[name] = float((runner(x).argmax(-1) == y).double().mean() * 100)
        assert f"{name} {files[name]:.2f}%" in line
    within = top1 - min(best, *files.values()) <= 1.0
    assert code == (0 if within else cli.QAT_OVER_BUDGET) and ("within" in line) == within
    assert not list(out.glob(".stage-*"))


@pytest.mark.slow  # a QAT run: 30 s to 90 s
def test_over_budget_run_exits_4_and_names_its_files(
    strong_float: tuple[Path, float, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Planted: the calibrated weight quantizers' ranges shrunk 50-fold, so int8 falls far below float."""
    quantize = T.quantize_for_training

    def broken(*args: Any) -> torch.nn.Module:
        model = quantize(*args)
        with torch.no_grad():
            for name, param in model.named_parameters():
                if Q.is_quantizer_parameter(name) and "scale" in name:
                    param.mul_(0.02)
        return model

    out = tmp_path / "qat"
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(T, "quantize_for_training", broken)
        code = cli.main(_cli_train(str(strong_float[0]), "--data", str(strong_float[2]), "--qat", "--epochs", "1",
                                   "--lr", "1e-7", "--max-drop", "0.5", "--out", str(out)))  # fmt: skip
    printed = capsys.readouterr().out
    assert code == cli.QAT_OVER_BUDGET, printed
    assert f"over budget: {out / Q.INT8_XML}" in printed and (out / Q.INT8_XML).is_file()
    assert "OVER the budget of 0.5" in printed


@pytest.mark.parametrize("recipe", ["deit", "levit", "mobilevit_v1", "mobilevit_v2"])
def test_qat_with_a_recipe_keeps_its_own_schedule(recipe: str) -> None:
    args = cli.build_parser().parse_args(["train", "levit_128s", "--data", "d", "--qat", "--recipe", recipe])
    config = T.config_from_args(args)
    assert config.epochs == QAT_EPOCHS and config.lr is None and config.lr_ref_batch is None
    assert config.warmup_epochs is None and config.min_lr is None and config.ema is None
    assert not config.multi_scale and config.distill is None
    Q.validate_qat(dataclasses.replace(config, checkpoint="f"), "none")  # nothing the user did not pass is refused
    given = T.config_from_args(
        cli.build_parser().parse_args(["train", "m", "--data", "d", "--qat", "--recipe", recipe, "--ema", "--lr", "1"])
    )
    assert given.lr == 1.0
    with pytest.raises(ValueError, match=r"does not support --ema: leave"):
        Q.validate_qat(dataclasses.replace(given, checkpoint="f"), "none")


def test_max_drop_needs_qat_and_is_not_negative(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["train", "levit_128s", "--data", str(tmp_path), "--max-drop", "1"]) == 2
    assert "--max-drop bounds the int8 drop of a --qat run" in capsys.readouterr().err
    with pytest.raises(ValueError, match="--max-drop is a top-1 drop in points, >= 0; got -1"):
        Q.validate_qat(T.TrainConfig(model="levit_128s", data="d", qat=True, max_drop=-1.0), "none")
