"""Fine-tuning from a litevit file takes what the file knows: resolution, data config, class order (issue 29).

The starting files are a tiny LeViT trained on the drawn patterns at 32 px (``strong_float``), re-written with other
metadata where a test plants it; each run goes through the command line, and what it did is read back from the file
it wrote.
"""

from __future__ import annotations

import dataclasses
import json
import logging
from pathlib import Path

import torch
from test_train import CLASSES

from litevit import cli
from litevit.registry import DataConfig, get_variant
from litevit.training import inherit as I
from litevit.training import train as T
from litevit.training.checkpoint import export_safetensors
from litevit.training.data import DataSplit
from litevit.weights.reading import read_checkpoint

PLANTED = DataConfig(img_size=32, crop_pct=0.9, interpolation="bilinear", mean=(0.5, 0.4, 0.3),
                     std=(0.2, 0.25, 0.3), channel_order="BGR")  # fmt: skip


def _rewrite(source: Path, target: Path, data: DataConfig | None = None, classes: list[str] | None = None) -> Path:
    """``source`` re-written with another data config and/or class order (the head's rows permuted to match, so
    the model computes the same function with its classes renamed)."""
    ckpt = read_checkpoint(source)
    meta = {k: v for k, v in ckpt.meta.items() if k not in ("variant", "data_config")}
    state = dict(ckpt.state)
    if classes is not None:
        order = [meta["classes"].index(name) for name in classes]
        for key in [k for k in state if k.startswith(("head.linear.", "head_dist.linear."))]:
            state[key] = state[key][order]
        meta["classes"] = classes
    old = DataConfig(**{k: tuple(v) if isinstance(v, list) else v for k, v in ckpt.meta["data_config"].items()})
    export_safetensors(target, state, ckpt.meta["variant"], meta, data or old)
    return target


def _train(*args: str) -> int:
    return cli.main(["train", *args, "--workers", "0", "--batch-size", "12", "--no-progress", "--seed", "0"])


def _meta(path: Path) -> dict:
    return read_checkpoint(path).meta


def test_train_file_takes_its_resolution_and_data_config(strong_float, tmp_path: Path, monkeypatch) -> None:
    source, _, data = strong_float
    planted = _rewrite(source, tmp_path / "planted.safetensors", data=PLANTED)
    seen = {}
    make_loaders = T.make_loaders

    def spy(config, split, data_config, *args):
        seen["data"], seen["interpolation"] = data_config, config.interpolation
        return make_loaders(config, split, data_config, *args)

    monkeypatch.setattr(T, "make_loaders", spy)
    assert _train(str(planted), "--data", str(data), "--epochs", "1", "--out", str(tmp_path / "run")) == 0
    assert seen["data"] == PLANTED  # the training and validation transforms are built from the file's config
    written = _meta(tmp_path / "run" / T.BEST_EXPORT)
    assert written["img_size"] == 32 and written["data_config"] == json.loads(json.dumps(dataclasses.asdict(PLANTED)))
    # the same with --checkpoint FILE and the name
    out = tmp_path / "named"
    assert _train("levit_128s", "--checkpoint", str(planted), "--data", str(data), "--epochs", "1",
                  "--model-kwargs", json.dumps(_meta(planted)["model_kwargs"]), "--out", str(out)) == 0  # fmt: skip
    assert _meta(out / T.BEST_EXPORT)["img_size"] == 32 and seen["data"] == PLANTED


def test_explicit_options_replace_the_files_with_a_warning(strong_float, tmp_path: Path, caplog) -> None:
    source, _, data = strong_float
    with caplog.at_level(logging.WARNING, logger="litevit.training.train"):
        code = _train(str(source), "--data", str(data), "--epochs", "1", "--img-size", "48", "--interpolation",
                      "nearest", "--out", str(tmp_path / "run"))  # fmt: skip
    assert code == 0
    text = caplog.text
    assert f"--img-size 48 replaces the 32 px that {source} was trained at" in text
    assert f"--interpolation nearest replaces bicubic, which {source} records" in text
    assert _meta(tmp_path / "run" / T.BEST_EXPORT)["img_size"] == 48


def test_the_data_takes_the_files_class_order(strong_float, tmp_path: Path) -> None:
    """A file whose classes are listed in another order than the sorted folders: the labels follow the file, so its
    head is kept and scores as before; the wrong mapping would score about chance."""
    source, top1, data = strong_float
    reordered = list(reversed(CLASSES))
    planted = _rewrite(source, tmp_path / "reordered.safetensors", classes=reordered)
    out = tmp_path / "run"
    assert _train(str(planted), "--data", str(data), "--epochs", "1", "--lr", "1e-9", "--out", str(out)) == 0
    record = json.loads((out / "metrics.jsonl").read_text().splitlines()[-1])
    assert record["val_top1"] >= top1 - 10, (record["val_top1"], top1)
    assert _meta(out / T.BEST_EXPORT)["classes"] == reordered


def test_in_file_order_maps_labels_by_name() -> None:
    samples = [("a0", 0), ("b0", 1), ("c0", 2), ("a1", 0)]
    split = DataSplit(["a", "b", "c"], samples, [0, 1, 2], samples, [3])
    file = I.FileSettings("f", classes=("c", "a", "b"))
    mapped = I.in_file_order(split, file)
    assert mapped.classes == ["c", "a", "b"]
    assert mapped.train_samples == [("a0", 1), ("b0", 2), ("c0", 0), ("a1", 1)]
    assert mapped.val_samples is mapped.train_samples  # one folder split in two stays one list
    other = I.in_file_order(split, I.FileSettings("f", classes=("x", "y", "z")))
    assert other is split  # other classes: the data's own order


def test_official_and_timm_files_keep_the_variants_defaults(tmp_path: Path) -> None:
    path = tmp_path / "official.pth"
    torch.save({"model": {"w": torch.zeros(1)}}, path)
    settings = I.read_settings(str(path))
    assert settings == I.FileSettings(str(path))
    variant = get_variant("levit_128s")
    config, data = I.inherit(T.TrainConfig(model="levit_128s", data="d"), variant, settings)
    assert config.img_size == variant.data.img_size == 224 and data == variant.data
    config, data = I.inherit(T.TrainConfig(model="levit_128s", data="d", img_size=96), variant, settings)
    assert config.img_size == 96 and data == dataclasses.replace(variant.data, img_size=96)


def test_train_file_errors_are_one_line(strong_float, tmp_path: Path, capsys) -> None:
    source, _, data = strong_float
    assert _train(str(source), "--checkpoint", str(source), "--data", str(data), "--out", str(tmp_path / "a")) == 2
    assert "is a weights file and --checkpoint" in capsys.readouterr().err
    bare = tmp_path / "bare.pth"
    torch.save({"w": torch.zeros(1)}, bare)
    assert _train(str(bare), "--data", str(data), "--out", str(tmp_path / "b")) == 2
    err = capsys.readouterr().err.strip()
    assert "has no litevit metadata naming its model" in err and len(err.splitlines()) == 1
