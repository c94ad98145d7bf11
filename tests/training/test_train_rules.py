"""Training defaults and resume rules: the short-run rule against the old defaults, resume refused per changed setting
(with both values named) or continued with an explicit override, a torn metrics line, the rule in --help; and the
layout: ``python -m litevit``, data-loading workers from the CPUs available."""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from test_train import TINY, make_patterns, tiny_config

from litevit import cli
from litevit.training import train as T
from litevit.training.checkpoint import read_metrics
from litevit.training.recipes import SHORT_RUN_RULE, get_recipe, rule_epochs, short_run_rule

# ------------------------------------------------------------------------------------------------- defaults


def test_short_run_rule_reaches_a_top1_the_old_defaults_did_not(
    patterns: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """15 epochs of a tiny LeViT on 72 drawn images (3 classes), batch 12, nothing else set: the rule reaches 56.7 %
    (>= 50 % asserted), the old defaults (DeiT's schedule, now ``--recipe deit``) stay at chance (36.7 %)."""
    base: dict[str, Any] = {
        "model": "levit_128s", "data": str(patterns), "img_size": 32, "epochs": 15, "batch_size": 12,
        "model_kwargs": dict(TINY), "workers": 0, "progress": False,
    }  # fmt: skip
    with caplog.at_level(logging.INFO, logger="litevit.training.train"):
        new = T.train(T.TrainConfig(**base, out=str(tmp_path / "new")))
    assert "short-run rule" in caplog.text and "warmup_epochs=0.75" in caplog.text  # each run logs its choice
    old = T.train(T.TrainConfig(**base, out=str(tmp_path / "old"), **get_recipe("deit")))
    assert new.best_top1 is not None and old.best_top1 is not None
    assert new.best_top1 >= 50.0 and old.best_top1 < 45.0, (new.best_top1, old.best_top1)


@pytest.mark.slow
def test_short_run_rule_on_levit_128s_at_64px(tmp_path_factory: pytest.TempPathFactory) -> None:
    """The issue's case at test scale: levit_128s as registered, 64 px, 8 epochs, batch 16, 120 drawn training images
    (3 classes), 45 validation images. Measured (1 CPU thread, torch 2.x): rule 80.0 %, old defaults 51.1 %."""
    root = tmp_path_factory.mktemp("patterns64")
    make_patterns(root / "train", 40, seed=0)
    make_patterns(root / "val", 15, seed=1)
    base: dict[str, Any] = {
        "model": "levit_128s", "data": str(root), "img_size": 64, "epochs": 8, "batch_size": 16, "workers": 0,
        "progress": False,
    }  # fmt: skip
    new = T.train(T.TrainConfig(**base, out=str(root / "new")))
    old = T.train(T.TrainConfig(**base, out=str(root / "old"), **get_recipe("deit")))
    assert new.best_top1 is not None and old.best_top1 is not None
    assert new.best_top1 >= 75.0 and old.best_top1 < 60.0, (new.best_top1, old.best_top1)


def test_rule_values_and_help(capsys: pytest.CaptureFixture[str]) -> None:
    rule = short_run_rule(epochs=8, train_images=1400, global_batch=64, img_size=64, fine_tune=False)
    assert rule["epochs"] == 8 and rule["lr"] == pytest.approx(1e-3) and rule["min_lr"] == pytest.approx(1e-5)
    assert rule["warmup_epochs"] == pytest.approx(0.4) and rule["crop_scale"] == (0.5, 1.0)
    assert short_run_rule(8, 1400, 64, 128, False)["crop_scale"] == (pytest.approx(0.08 * (224 / 128) ** 2), 1.0)
    # epochs left open: enough for 400 steps, 10 to 100
    assert rule_epochs(1258, 64) == 22 and short_run_rule(None, 1258, 64, 64, False)["epochs"] == 22
    assert rule_epochs(1_281_167, 1024) == 10 and rule_epochs(72, 12) == 67 and rule_epochs(10, 64) == 100
    assert rule["ema"] and rule["ema_decay"] == pytest.approx(1 - 10 / (8 * 21))
    assert short_run_rule(8, 1400, 64, 64, fine_tune=True)["lr"] == pytest.approx(5e-5)
    assert short_run_rule(300, 1_281_167, 1024, 224, False)["warmup_epochs"] == 5.0
    assert short_run_rule(300, 1_281_167, 1024, 224, False)["crop_scale"] == (0.08, 1.0)
    assert short_run_rule(8, 1400, 64, 64, False, lr=1e-3)["min_lr"] == pytest.approx(1e-5)
    with pytest.raises(SystemExit):
        cli.main(["train", "--help"])
    assert SHORT_RUN_RULE.splitlines()[0] in capsys.readouterr().out


# --------------------------------------------------------------------------------------------------- resume


@pytest.fixture(scope="module")
def stopped(patterns: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A run of 2 epochs stopped after the first."""
    out = tmp_path_factory.mktemp("stopped")
    result = T.train(tiny_config(patterns, out, stop_after=1, batch_size=6))
    assert not result.finished
    return out


def _variant_data(patterns: Path, tmp_path: Path, change: str) -> Path:
    data = tmp_path / "data"
    shutil.copytree(patterns, data)
    if change == "classes":
        for split in ("train", "val"):
            (data / split / "rings").rename(data / split / "circles")
    else:  # one training image fewer
        next((data / "train" / "rings").iterdir()).unlink()
    return data


CHANGES = [
    ("img_size", {"img_size": 48}, "32", "48"),
    ("batch_size", {"batch_size": 4}, "6", "4"),
    ("lr", {"lr": 1e-3}, "0.003", "0.001"),
    ("warmup_epochs", {"warmup_epochs": 0.5}, "1.0", "0.5"),
    ("epochs", {"epochs": 3}, "2", "3"),
    ("seed", {"seed": 1}, "0", "1"),
    ("crop_scale", {"crop_scale": (0.5, 1.0)}, "[0.35, 1.0]", "[0.5, 1.0]"),
    ("hflip", {"hflip": 0.0}, "0.5", "0.0"),
    ("ema", {"ema": True}, "False", "True"),
    ("model_kwargs", {"model_kwargs": {**TINY, "depths": (1, 2, 1)}}, "'depths': [1, 1, 1]", "'depths': [1, 2, 1]"),
    ("classes", {}, "'rings'", "'circles'"),
    ("train_images", {}, "72", "71"),
]


@pytest.mark.parametrize(("setting", "change", "before", "after"), CHANGES, ids=[c[0] for c in CHANGES])
def test_resume_is_refused_per_changed_setting(
    setting: str, change: dict[str, Any], before: str, after: str, stopped: Path, patterns: Path, tmp_path: Path
) -> None:
    data = _variant_data(patterns, tmp_path, setting) if setting in ("classes", "train_images") else patterns
    checkpoint = (stopped / T.LAST_CHECKPOINT).read_bytes()
    config = tiny_config(data, stopped, resume="auto", **{"batch_size": 6, **change})
    with pytest.raises(ValueError, match=rf"cannot resume (.|\n)*\n  {setting}: ") as info:
        T.train(config)
    line = next(x for x in str(info.value).splitlines() if x.startswith(f"  {setting}: "))
    assert before in line.split(" in that run, ")[0] and after in line.split(" in that run, ")[1], line
    assert f"--resume-override {setting}" in str(info.value)
    assert (stopped / T.LAST_CHECKPOINT).read_bytes() == checkpoint  # nothing written


def test_override_continues_and_shape_changes_are_clear(stopped: Path, patterns: Path, tmp_path: Path) -> None:
    out = tmp_path / "run"
    shutil.copytree(stopped, out)
    with pytest.raises(ValueError, match="not a run setting"):
        T.train(tiny_config(patterns, out, batch_size=6, resume="auto", resume_override=("batch",)))
    with pytest.raises(ValueError, match=r"do not fit the model with --resume-override img_size"):
        T.train(tiny_config(patterns, out, batch_size=6, img_size=48, resume="auto", resume_override=("img_size",)))
    result = T.train(tiny_config(patterns, out, batch_size=4, resume="auto", resume_override=("batch_size",)))
    assert result.finished and [r["epoch"] for r in result.history] == [2]


def test_cli_changed_img_size_is_a_clear_error(
    stopped: Path, patterns: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    args = [
        "train", "levit_128s", "--data", str(patterns), "--out", str(stopped), "--epochs", "2", "--img-size", "48",
        "--batch-size", "6", "--lr", "3e-3", "--warmup-epochs", "1", "--workers", "0", "--model-kwargs",
        json.dumps(TINY), "--no-progress", "--resume",
    ]  # fmt: skip
    assert cli.main(args) == 2
    err = capsys.readouterr().err
    assert "img_size: 32 in that run, 48 now" in err and "Traceback" not in err


def test_torn_metrics_line_does_not_block_resume(stopped: Path, patterns: Path, tmp_path: Path) -> None:
    out = tmp_path / "run"
    shutil.copytree(stopped, out)
    with open(out / T.METRICS_LOG, "a") as handle:
        handle.write('{"epoch": 2, "train_lo')  # killed while writing epoch 2's line
    result = T.train(tiny_config(patterns, out, batch_size=6, resume="auto"))  # nothing changed: it continues
    assert result.finished
    assert [r["epoch"] for r in read_metrics(out / T.METRICS_LOG)] == [1, 2]
    assert all(json.loads(line) for line in (out / T.METRICS_LOG).read_text().splitlines())


# --------------------------------------------------------------------------------------------------- layout


def test_python_m_litevit_and_workers_follow_the_cpus(monkeypatch: pytest.MonkeyPatch) -> None:
    import os
    import subprocess
    import sys

    from litevit.data import default_workers

    env = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parents[2] / "src"))
    done = subprocess.run(
        [sys.executable, "-m", "litevit", "list", "levit_128s"], capture_output=True, text=True, env=env, timeout=120
    )
    assert done.returncode == 0 and done.stdout.startswith("levit_128s"), done.stderr
    monkeypatch.setattr(os, "sched_getaffinity", lambda _: {0, 1}, raising=False)
    monkeypatch.delenv("LOCAL_WORLD_SIZE", raising=False)
    assert default_workers() == 1  # 2 CPUs: one for the model, one loader (not 4)
    monkeypatch.setattr(os, "sched_getaffinity", lambda _: set(range(64)), raising=False)
    assert default_workers() == 8
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "8")
    assert default_workers() == 7


def _digits(root: Path, held_out: float = 0.3) -> tuple[float, int]:
    """scikit-learn's digits as ``root/{train,val}/<digit>/<i>.png`` at 64 px (tools/precision_costs.make_digits'
    split: seed 0, 30 % of every digit held out), and a logistic regression's top-1 on the raw 8x8 pixels of the
    same split (the linear baseline), with the number of held-out images."""
    datasets = pytest.importorskip("sklearn.datasets")
    linear = pytest.importorskip("sklearn.linear_model")
    from PIL import Image

    digits = datasets.load_digits()
    rng = np.random.default_rng(0)
    train, val = [], []
    for label in range(10):
        indices = np.flatnonzero(digits.target == label)
        rng.shuffle(indices)
        cut = int(round(len(indices) * held_out))
        for split, chosen, kept in (("val", indices[:cut], val), ("train", indices[cut:], train)):
            folder = root / split / str(label)
            folder.mkdir(parents=True, exist_ok=True)
            kept += list(chosen)
            for i in chosen:
                grey = (digits.images[i] * (255.0 / 16.0)).astype(np.uint8)
                Image.fromarray(grey).resize((64, 64), Image.BILINEAR).convert("RGB").save(folder / f"{i}.png")
    fit = linear.LogisticRegression(max_iter=5000).fit(digits.data[train], digits.target[train])
    return 100 * float(fit.score(digits.data[val], digits.target[val])), len(val)


@pytest.mark.slow  # three runs of 22 epochs over 1258 images at 64 px: 2-5 min each on 2 cores
@pytest.mark.parametrize("name", ["levit_128s", "efficientvit_m0", "mobilevit_xxs"])
def test_short_run_rule_reaches_the_linear_baseline_on_digits(name: str, tmp_path: Path) -> None:
    """The rule as a user gets it (no --epochs, --lr or crop options; 64 px, batch 64) on a small real data set reaches
    97 % top-1 on 539 held-out digits (1 image = 0.19 points), where a logistic regression on the raw 8x8 pixels
    reaches 95.92 %. Before the search (benchmarks/accuracy/short_run_search.jsonl) the rule stopped at 92.8-94.8 %."""
    baseline, images = _digits(tmp_path / "digits")
    assert images == 539 and baseline >= 95.0
    result = T.train(T.TrainConfig(model=name, data=str(tmp_path / "digits"), out=str(tmp_path / "run"), img_size=64,
                                   workers=0, progress=False))  # fmt: skip
    assert result.finished and len(result.history) == 22  # the rule's epochs: 400 steps of 19
    assert result.best_top1 is not None and result.best_top1 >= 97.0, (result.best_top1, baseline)
