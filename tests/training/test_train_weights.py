"""Training and the loading layer: fine-tuning from an official file with a new class count, short runs with
``--ema``, and weights that cannot be right refused on resume and for a teacher."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from reference import load_fixture, recipe_state_dict
from test_train import CLASSES, TINY, _checkpoint, tiny_config

import litevit
from litevit import cli
from litevit.training import train as T
from litevit.training.losses import build_teacher
from litevit.training.recipes import short_run_rule
from litevit.weights.reading import CheckpointError


def test_fine_tune_an_official_mobilevit_file_on_other_classes(patterns: Path, tmp_path: Path, capsys) -> None:
    """``litevit train mobilevit_xxs --checkpoint <ml-cvnets file> --data D``: the 1000-class head is replaced by a
    3-class one, the trunk starts from the file."""
    official = recipe_state_dict(load_fixture("official/mobilevit_xx_small.json"))
    path = tmp_path / "mobilevit_xxs.pt"
    torch.save(official, path)
    out = tmp_path / "run"
    args = [
        "train", "mobilevit_xxs", "--checkpoint", str(path), "--data", str(patterns), "--out", str(out),
        "--epochs", "1", "--img-size", "64", "--batch-size", "12", "--workers", "0", "--no-progress",
    ]  # fmt: skip
    assert cli.main(args) == 0, capsys.readouterr().err
    trained = _checkpoint(out / T.LAST_CHECKPOINT)["model"]
    assert trained["head.weight"].shape == (3, 320)
    loaded = litevit.create_model("mobilevit_xxs", checkpoint=path).state_dict()
    fresh = litevit.create_model("mobilevit_xxs", num_classes=3).state_dict()
    stem = "stem.0.conv.weight"  # six steps at the fine-tuning lr move the loaded trunk a little
    assert (trained[stem] - loaded[stem]).abs().max() < 0.1 * (fresh[stem] - loaded[stem]).abs().max()
    assert litevit.load(out / T.BEST_EXPORT).model_info.class_names == CLASSES


def test_ema_on_a_run_shorter_than_ten_steps(patterns: Path, tmp_path: Path) -> None:
    """``--ema`` without ``--ema-decay`` on 6 steps: the rule's decay 1 - 10 / 6 would be negative; it is 0, so the
    EMA is the weights (the last tenth of a 6-step run is less than a step)."""
    assert short_run_rule(1, 36, 12, 32, False)["ema_decay"] == 0.0  # 3 steps
    assert short_run_rule(1, 120, 12, 32, False)["ema_decay"] == 0.0  # 10 steps
    assert short_run_rule(1, 240, 12, 32, False)["ema_decay"] == pytest.approx(0.5)  # 20 steps
    config = tiny_config(patterns, tmp_path, epochs=1, ema=True, ema_decay=None, warmup_epochs=None)
    result = T.train(config)
    assert result.finished and "ema_val_top1" in result.history[0]
    saved = _checkpoint(tmp_path / T.LAST_CHECKPOINT)
    assert saved["config"]["ema_decay"] == 0.0
    assert all(torch.equal(v, saved["model"][k]) for k, v in saved["model_ema"].items())


def test_resume_refuses_weights_that_cannot_be_right(patterns: Path, tmp_path: Path, capsys) -> None:
    config = tiny_config(patterns, tmp_path, stop_after=1)
    T.train(config)
    last = tmp_path / T.LAST_CHECKPOINT
    saved = _checkpoint(last)
    saved["model"]["stem.0.conv.weight"][0, 0, 0, 0] = float("nan")
    torch.save(saved, last)
    with pytest.raises(CheckpointError, match=r"last\.pt \(model\): stem\.0\.conv\.weight holds 1 NaN or infinite"):
        T.train(tiny_config(patterns, tmp_path, resume="auto"))
    args = [
        "train", "levit_128s", "--data", str(patterns), "--out", str(tmp_path), "--epochs", "2", "--img-size", "32",
        "--batch-size", "12", "--lr", "3e-3", "--lr-ref-batch", "0", "--min-lr", "0", "--warmup-lr", "1e-6",
        "--warmup-epochs", "1", "--crop-scale", "0.35", "1.0", "--no-ema", "--label-smoothing", "0",
        "--model-kwargs", json.dumps(TINY), "--workers", "0", "--no-progress", "--resume",
    ]  # fmt: skip
    assert cli.main(args) == 2
    err = capsys.readouterr().err.strip()
    assert "stem.0.conv.weight holds 1 NaN" in err and "\n" not in err, err


def test_torchvision_teacher_with_nan_weights_is_refused(tmp_path: Path) -> None:
    import torchvision

    state = torchvision.models.get_model("resnet18", weights=None, num_classes=3).state_dict()
    state["fc.weight"][1, 2] = float("inf")
    path = tmp_path / "teacher.pth"
    torch.save(state, path)
    with pytest.raises(CheckpointError, match=r"teacher\.pth: fc\.weight holds 1 NaN or infinite value"):
        build_teacher("resnet18", str(path), 3, 32)
