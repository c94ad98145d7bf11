"""Training: learning on real drawn images, distillation from a trained teacher, exact resume, a killed run, DDP.

The images are PNG files of drawn patterns (horizontal stripes, vertical stripes, concentric rings) with random
colours, periods and phases, written into ImageFolder class folders; validation images come from another seed.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image

from litevit import cli, create_model, load, read_checkpoint
from litevit.training import checkpoint as train_checkpoint
from litevit.training import data as train_data
from litevit.training import losses as train_losses
from litevit.training import optim as train_optim
from litevit.training import train as T

CLASSES = ("hstripes", "rings", "vstripes")
TINY = {"dims": (32, 48, 64), "num_heads": (2, 3, 4), "depths": (1, 1, 1), "key_dim": 16}
TINY_JSON = json.dumps(TINY)
REPO = Path(__file__).resolve().parents[2]


def draw_pattern(kind: str, rng: np.random.Generator, size: int = 64) -> Image.Image:
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    period = rng.uniform(7, 14)
    phase = rng.uniform(0, period)
    if kind == "hstripes":
        mask = (yy + phase) % period < period / 2
    elif kind == "vstripes":
        mask = (xx + phase) % period < period / 2
    else:
        cy, cx = rng.uniform(size * 0.3, size * 0.7, 2)
        mask = (np.hypot(yy - cy, xx - cx) + phase) % period < period / 2
    background, foreground = rng.integers(0, 256, 3), rng.integers(0, 256, 3)
    while np.abs(background - foreground).sum() < 150:
        foreground = rng.integers(0, 256, 3)
    image = np.where(mask[..., None], foreground, background) + rng.normal(0, 8, (size, size, 3))
    return Image.fromarray(np.clip(image, 0, 255).astype(np.uint8))


def make_patterns(root: Path, per_class: int, seed: int) -> Path:
    rng = np.random.default_rng(seed)
    for kind in CLASSES:
        (root / kind).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            draw_pattern(kind, rng).save(root / kind / f"{kind}_{i}.png")
    return root


def tiny_config(data: Path, out: Path, **overrides: Any) -> T.TrainConfig:
    values: dict[str, Any] = {
        "model": "levit_128s",
        "data": str(data),
        "out": str(out),
        "img_size": 32,
        "epochs": 2,
        "batch_size": 12,
        "lr": 3e-3,
        "lr_ref_batch": None,
        "warmup_epochs": 1.0,
        "min_lr": 0.0,
        "warmup_lr": 1e-6,
        "crop_scale": (0.35, 1.0),
        "ema": False,
        "label_smoothing": 0.0,
        "model_kwargs": dict(TINY),
        "workers": 0,
        "progress": False,
    }
    values.update(overrides)
    return T.TrainConfig(**values)


def _subprocess_env() -> dict[str, str]:
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(REPO / "src"))
    env.pop("RANK", None)
    env.pop("WORLD_SIZE", None)
    return env


def _cli_args(data: Path, out: Path, epochs: int) -> list[str]:
    return [
        "levit_128s", "--data", str(data), "--out", str(out), "--epochs", str(epochs), "--img-size", "32",
        "--batch-size", "6", "--lr", "3e-3", "--lr-ref-batch", "0", "--warmup-epochs", "1", "--workers", "0",
        "--model-kwargs", TINY_JSON, "--no-progress", "--ema", "--ema-decay", "0.9", "--multi-scale-sizes", "24", "32",
    ]  # fmt: skip


# ------------------------------------------------------------------------------------------------- learning


@pytest.fixture(scope="module")
def baseline(patterns: Path, tmp_path_factory: pytest.TempPathFactory) -> T.TrainResult:
    torch.set_num_threads(1)
    out = tmp_path_factory.mktemp("baseline")
    config = tiny_config(patterns, out, epochs=20, model_kwargs={**TINY, "distilled": False})
    return T.train(config)


def test_learns_patterns_better_than_chance(baseline: T.TrainResult, patterns: Path) -> None:
    history = baseline.history
    assert baseline.finished and len(history) == 20
    assert history[-1]["train_loss"] < 0.75 * history[0]["train_loss"]
    # 3 balanced classes: chance is 33 %
    assert baseline.best_top1 is not None and baseline.best_top1 >= 60.0, [r["val_top1"] for r in history]
    assert [r["epoch"] for r in train_checkpoint.read_metrics(baseline.out / T.METRICS_LOG)] == list(range(1, 21))

    # the exported best model rebuilds from its metadata alone and scores what the log says
    best = baseline.out / T.BEST_EXPORT
    meta = read_checkpoint(best).meta
    assert meta["variant"] == "levit_128s" and meta["classes"] == list(CLASSES)
    assert meta["img_size"] == 32 and meta["data_config"]["img_size"] == 32
    model = load(best)
    from litevit.data import eval_transform
    from litevit.registry import DataConfig

    data_config = DataConfig(**{**meta["data_config"], "mean": tuple(meta["data_config"]["mean"])})
    split = train_data.find_data(tiny_config(patterns, baseline.out))
    loader = torch.utils.data.DataLoader(
        train_data.ImageSubset(split.val_samples, split.val_indices, lambda _: eval_transform(data_config)),
        batch_size=16,
    )
    assert T.evaluate(model, loader, torch.device("cpu"))["top1"] == pytest.approx(meta["top1"])
    assert meta["top1"] == pytest.approx(baseline.best_top1)


def test_distilled_student_learns_from_teacher(baseline: T.TrainResult, patterns: Path, tmp_path: Path) -> None:
    teacher_file = baseline.out / T.BEST_EXPORT
    before = teacher_file.read_bytes()
    config = tiny_config(patterns, tmp_path, epochs=12, teacher=str(teacher_file), distill="hard", seed=1)
    result = T.train(config)
    assert teacher_file.read_bytes() == before
    assert all(np.isfinite(r["train_loss"]) for r in result.history)
    assert result.history[-1]["train_loss"] < result.history[0]["train_loss"]
    assert result.best_top1 is not None and result.best_top1 >= 50.0, [r["val_top1"] for r in result.history]
    # the distillation head learned to predict what the teacher predicts on held-out images
    student, teacher = load(tmp_path / T.BEST_EXPORT).eval(), load(teacher_file).eval()
    assert student.head_dist is not None
    images = torch.stack([_eval_image(path, 32) for path, _ in train_data.find_data(config).val_samples])
    with torch.no_grad():
        dist_pred = student.head_dist(student.forward_head(student.forward_features(images), pre_logits=True))
        agreement = (dist_pred.argmax(-1) == teacher(images).argmax(-1)).float().mean().item()
    assert agreement >= 0.5, agreement


def _eval_image(path: str, size: int) -> torch.Tensor:
    from litevit.data import eval_transform, load_image
    from litevit.registry import get_variant

    return eval_transform(get_variant("levit_128s").data, size)(load_image(path))


def test_fine_tune_from_checkpoint_replaces_the_head(baseline: T.TrainResult, patterns: Path, tmp_path: Path) -> None:
    # two of the three classes: the 3-way head of the checkpoint is replaced, the trunk is loaded
    data = tmp_path / "two"
    data.mkdir()
    for kind in ("hstripes", "vstripes"):
        (data / kind).symlink_to(patterns / "train" / kind)
    source = baseline.out / T.BEST_EXPORT
    config = tiny_config(
        data, tmp_path / "run", epochs=1, lr=1e-4, checkpoint=str(source), model_kwargs={**TINY, "distilled": False}
    )
    result = T.train(config)
    assert read_checkpoint(tmp_path / "run" / T.BEST_EXPORT).meta["classes"] == ["hstripes", "vstripes"]
    trained = _checkpoint(tmp_path / "run" / T.LAST_CHECKPOINT)["model"]
    loaded = read_checkpoint(source).state
    assert trained["head.linear.weight"].shape[0] == 2
    stem = "stem.0.conv.weight"
    torch.manual_seed(config.seed)
    fresh = create_model("levit_128s", num_classes=2, img_size=32, **TINY, distilled=False).state_dict()
    # six steps at lr 1e-4 move the loaded trunk a little; the fresh initialisation is far from it
    moved = (trained[stem] - loaded[stem]).abs().max()
    assert moved < 0.1 * (fresh[stem] - loaded[stem]).abs().max()
    assert result.finished


# --------------------------------------------------------------------------------------------------- resume


def _checkpoint(path: Path) -> dict[str, Any]:
    return torch.load(path, map_location="cpu", weights_only=True)


def test_resume_equals_uninterrupted_run(patterns: Path, tmp_path: Path) -> None:
    recipe: dict[str, Any] = {
        "epochs": 2,
        "batch_size": 8,
        "ema": True,
        "ema_decay": 0.9,
        "multi_scale": True,
        "multi_scale_sizes": (24, 32),
        "mixup": 0.8,
        "cutmix": 1.0,
        "rand_augment": 5,
        "random_erasing": 0.25,
        "label_smoothing": 0.1,
        "drop_path": 0.1,
        "clip_grad": 5.0,
    }
    full = T.train(tiny_config(patterns, tmp_path / "full", **recipe))
    first = T.train(tiny_config(patterns, tmp_path / "split", stop_after=1, **recipe))
    assert not first.finished and _checkpoint(tmp_path / "split" / T.LAST_CHECKPOINT)["epoch"] == 1
    second = T.train(tiny_config(patterns, tmp_path / "split", resume="auto", **recipe))
    assert second.finished and [r["epoch"] for r in second.history] == [2]

    a, b = _checkpoint(tmp_path / "full" / T.LAST_CHECKPOINT), _checkpoint(tmp_path / "split" / T.LAST_CHECKPOINT)
    assert a["epoch"] == b["epoch"] == 2
    assert a["sampler"] == b["sampler"]
    for key in ("model", "model_ema"):
        assert a[key].keys() == b[key].keys()
        for name in a[key]:
            torch.testing.assert_close(a[key][name], b[key][name], msg=f"{key}.{name}")
    for x, y in zip(a["optimizer"]["state"].values(), b["optimizer"]["state"].values(), strict=True):
        torch.testing.assert_close(x["exp_avg_sq"], y["exp_avg_sq"])
    assert a["scheduler"] == b["scheduler"]
    assert full.history[1]["train_loss"] == pytest.approx(second.history[0]["train_loss"], rel=1e-5)
    assert [r["epoch"] for r in train_checkpoint.read_metrics(tmp_path / "split" / T.METRICS_LOG)] == [1, 2]
    # a started run is never overwritten by accident
    with pytest.raises(ValueError, match="--resume"):
        T.train(tiny_config(patterns, tmp_path / "split", **recipe))


def test_non_finite_loss_stops_and_keeps_the_last_checkpoint(
    patterns: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = tiny_config(patterns, tmp_path, epochs=3)
    steps_per_epoch = 72 // 12
    calls = {"n": 0}
    real_loss = train_losses.classification_loss

    def poisoned(logits: torch.Tensor, target: torch.Tensor, smoothing: float = 0.0) -> torch.Tensor:
        calls["n"] += 1
        loss = real_loss(logits, target, smoothing)
        # one call per step (both heads averaged without a teacher): poison the third step of the second epoch
        return loss * float("nan") if calls["n"] > steps_per_epoch + 2 else loss

    monkeypatch.setattr(train_losses, "classification_loss", poisoned)
    with pytest.raises(T.NonFiniteLossError, match=r"epoch 2, step 3/6.*end of epoch 1.*intact"):
        T.train(config)
    saved = _checkpoint(tmp_path / T.LAST_CHECKPOINT)
    assert saved["epoch"] == 1
    assert all(torch.isfinite(v).all() for v in saved["model"].values() if v.is_floating_point())
    monkeypatch.setattr(train_losses, "classification_loss", real_loss)
    assert T.train(tiny_config(patterns, tmp_path, epochs=3, resume="auto")).finished


# -------------------------------------------------------------------------------------------- kill, DDP, CLI


def test_killed_run_leaves_a_loadable_checkpoint_and_resumes(patterns: Path, tmp_path: Path) -> None:
    epochs = 3
    command = [sys.executable, "-m", "litevit.cli", "train", *_cli_args(patterns, tmp_path, epochs)]
    last = tmp_path / T.LAST_CHECKPOINT
    with open(tmp_path / "log.txt", "w") as log_file:
        proc = subprocess.Popen(command, stdout=log_file, stderr=subprocess.STDOUT, env=_subprocess_env())
        deadline = time.monotonic() + 240
        while not last.exists() and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.02)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
    assert proc.returncode == -signal.SIGKILL, (tmp_path / "log.txt").read_text()
    saved = _checkpoint(last)  # complete and loadable
    assert 1 <= saved["epoch"] < epochs
    # litevit.load rebuilds the model from last.pt alone: its weights (or its EMA's), classes and size
    for use_ema, key in ((None, "model"), (True, "model_ema")):
        model = load(last, use_ema=use_ema)
        assert model.state_dict().keys() == saved[key].keys()
        assert all(torch.equal(v, saved[key][k]) for k, v in model.state_dict().items()), key
        assert model.model_info.class_names == CLASSES and model.config.img_size == 32
    assert any(not torch.equal(saved["model"][k], v) for k, v in saved["model_ema"].items())  # two different sets

    resumed = subprocess.run(command + ["--resume"], capture_output=True, text=True, env=_subprocess_env(), timeout=300)
    assert resumed.returncode == 0, resumed.stderr
    assert "finished" in resumed.stdout
    assert _checkpoint(last)["epoch"] == epochs
    assert [r["epoch"] for r in train_checkpoint.read_metrics(tmp_path / T.METRICS_LOG)] == list(range(1, epochs + 1))
    assert not list(tmp_path.glob(".*.tmp"))


def ddp_logs(stderr: str) -> tuple[dict[tuple[int, int], dict[str, Any]], dict[tuple[int, int], str]]:
    """Each (rank, epoch)'s metrics record (reduced over the ranks before it is logged) and its parameter digest
    (this rank's own parameters, before any reduction), from a torchrun run's log."""
    records, digests = {}, {}
    for line in stderr.splitlines():
        if "litevit.training.train: rank " not in line:
            continue
        words = line.split(": ", 1)[1].split()
        key = int(words[1]), int(words[3].rstrip(":"))
        if words[4] == "parameters":
            digests[key] = words[5]
        else:
            records[key] = json.loads(line.split(": ", 2)[2])
    return records, digests


def assert_ranks_in_step(digests: dict[tuple[int, int], str], epochs: int) -> None:
    """Both ranks' own parameters equal after every epoch, and changing from epoch to epoch (so that equality is not
    a constant: a rank that stepped differently, or not at all, fails here)."""
    assert sorted(digests) == [(r, e) for r in (0, 1) for e in range(1, epochs + 1)]
    for epoch in range(1, epochs + 1):
        assert digests[0, epoch] == digests[1, epoch], epoch
    assert len({digests[0, e] for e in range(1, epochs + 1)}) == epochs


def test_ddp_two_processes_gloo_agree(patterns: Path, tmp_path: Path) -> None:
    command = [
        sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
        "-m", "litevit", "--log-level", "INFO", "train", *_cli_args(patterns, tmp_path, 2),
    ]  # fmt: skip
    run = subprocess.run(command, capture_output=True, text=True, env=_subprocess_env(), timeout=300)
    assert run.returncode == 0, run.stderr[-4000:]
    records, digests = ddp_logs(run.stderr)
    assert sorted(records) == [(0, 1), (0, 2), (1, 1), (1, 2)], run.stderr[-4000:]
    assert_ranks_in_step(digests, 2)  # the records below are reduced over the ranks: equal by construction
    timing = {"epoch_time_s", "images_per_s"}
    for epoch in (1, 2):
        rank0 = {k: v for k, v in records[0, epoch].items() if k not in timing}
        rank1 = {k: v for k, v in records[1, epoch].items() if k not in timing}
        assert rank0 == rank1
    # rank 0 wrote one log line per epoch and the checkpoints; rank 1 wrote nothing
    logged = train_checkpoint.read_metrics(tmp_path / T.METRICS_LOG)
    assert [r["epoch"] for r in logged] == [1, 2]
    assert logged[1]["val_top1"] == records[0, 2]["val_top1"]
    assert _checkpoint(tmp_path / T.LAST_CHECKPOINT)["epoch"] == 2
    assert run.stdout.count("finished") == 1


def test_recipe_then_explicit_options() -> None:
    args = cli.build_parser().parse_args(
        ["train", "levit_128s", "--data", "d", "--recipe", "levit", "--lr", "1e-3", "--rand-augment", "-1"]
    )
    config = T.config_from_args(args)
    assert config.lr == 1e-3  # explicit
    assert config.weight_decay == 0.025 and config.ema_decay == 0.99996 and config.distill == "hard"  # recipe
    assert config.rand_augment is None and config.mixup == 0.8
    parsed = cli.build_parser().parse_args(["train", "x", "--data", "d", "--recipe", "mobilevit_v1"])
    mobilevit = T.config_from_args(parsed)
    assert mobilevit.multi_scale and mobilevit.ema_decay == 0.9995
    with pytest.raises(ValueError, match="unknown recipe"):
        T.config_from_args(cli.build_parser().parse_args(["train", "x", "--data", "d", "--recipe", "nope"]))


def test_cli_errors_are_clear(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["train", "levit_128s", "--data", str(tmp_path / "missing"), "--out", str(tmp_path)]) == 2
    assert "dataset folder not found" in capsys.readouterr().err
    assert cli.main(["train", "levit_128s", "--data", str(tmp_path), "--recipe", "levit"]) == 2
    assert "needs a --teacher" in capsys.readouterr().err


# ------------------------------------------------------------------------------------------------ components


def test_split_without_validation_folder_is_stratified(patterns: Path, tmp_path: Path) -> None:
    split = train_data.find_data(tiny_config(patterns / "train", tmp_path, val_split=0.25))
    assert not set(split.train_indices) & set(split.val_indices)
    assert sorted(split.train_indices + split.val_indices) == list(range(72))
    labels = [split.val_samples[i][1] for i in split.val_indices]
    assert [labels.count(k) for k in range(3)] == [6, 6, 6]


def test_warmup_cosine_schedule() -> None:
    optimizer = torch.optim.AdamW([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    schedule = train_optim.WarmupCosine(optimizer, lr=1.0, epochs=10, warmup_epochs=2, min_lr=0.1, warmup_lr=0.01)
    assert schedule.lr_at(0) == pytest.approx(0.01)
    assert schedule.lr_at(1) == pytest.approx(0.01 + 0.99 / 2)
    assert schedule.lr_at(2) == pytest.approx(1.0)
    assert schedule.lr_at(6) == pytest.approx(0.55)  # half-way through the cosine: the mean of lr and min_lr
    assert schedule.lr_at(10) == pytest.approx(0.1)
    assert schedule.step_to(6) == optimizer.param_groups[0]["lr"] == pytest.approx(0.55)


def test_ema_update_and_weight_decay_groups() -> None:
    model = torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.BatchNorm1d(2))
    ema = train_optim.ModelEma(model, decay=0.75)
    before = ema.module[0].weight.clone()
    with torch.no_grad():
        model[0].weight.add_(4.0)
    model[1].num_batches_tracked += 3
    ema.update(model)
    torch.testing.assert_close(ema.module[0].weight, 0.75 * before + 0.25 * model[0].weight)
    assert ema.module[1].num_batches_tracked.item() == 3
    decay, no_decay = train_optim.param_groups(model, 0.05)
    assert decay["params"] == [model[0].weight] and decay["weight_decay"] == 0.05
    assert len(no_decay["params"]) == 3 and no_decay["weight_decay"] == 0.0


# ------------------------------------------------------------------------------------- the fine-tuned checkpoint


def test_fine_tuned_checkpoint_keeps_its_head_and_class_names(
    baseline: T.TrainResult, patterns: Path, tmp_path, capsys
):
    best = baseline.out / T.BEST_EXPORT
    for model in (load(best), create_model("levit_128s", checkpoint=best)):
        assert model.config.num_classes == 3 and model.model_info.class_names == CLASSES
        assert model.config.img_size == 32 and model.model_info.data.img_size == 32

    # predict: its own class names, from the file alone and as a name + checkpoint
    images = [str(p) for p in sorted((patterns / "val" / "rings").glob("*.png"))[:2]]
    for source in ([str(best)], ["levit_128s", "--checkpoint", str(best)]):
        assert cli.main(["predict", *source, *images, "--topk", "3"]) == 0
        lines = capsys.readouterr().out.splitlines()
        predicted = [line.split()[1] for line in lines if line.startswith("  ")]
        assert len(predicted) == 6 and set(predicted) == set(CLASSES), lines

    # eval: folders matched to the head by name (two of three classes: sorted order would be wrong)
    subset = tmp_path / "subset"
    subset.mkdir()
    for kind in ("rings", "vstripes"):
        (subset / kind).symlink_to(patterns / "val" / kind)
    assert cli.main(["eval", str(best), "--data", str(subset), "--workers", "0", "--no-progress"]) == 0
    reported = float(capsys.readouterr().out.split("top-1 ")[1].split("%")[0])
    model = load(best).eval()
    hits = total = 0
    for kind in ("rings", "vstripes"):
        for path in sorted((subset / kind).glob("*.png")):
            with torch.no_grad():
                hits += int(model(_eval_image(str(path), 32)[None]).argmax().item() == CLASSES.index(kind))
            total += 1
    assert reported == pytest.approx(100 * hits / total, abs=0.01)

    # export: the ONNX file has the 3-class head and names them
    onnx = tmp_path / "tuned.onnx"
    assert cli.main(["export", str(best), "--out", str(onnx), "--check"]) == 0
    assert "3 classes" in capsys.readouterr().out
    assert cli.main(["predict", str(onnx), images[0]]) == 0
    assert {line.split()[1] for line in capsys.readouterr().out.splitlines()[1:]} == set(CLASSES)
