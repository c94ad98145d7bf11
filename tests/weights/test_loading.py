"""The loading layer: release forms, heads and class names, resolution, and every bad file as a CheckpointError.

Each bad file is tried through the API and through the CLI (exit code 2, one line on stderr, no traceback).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from reference import assert_logits_match, load_fixture, recipe_state_dict

import litevit
from litevit import cli
from litevit.weights import records as weights
from litevit.weights.reading import CheckpointError


@pytest.fixture(scope="module")
def levit() -> tuple[dict, dict[str, torch.Tensor]]:
    spec = load_fixture("official/LeViT_128S.json")
    return spec, recipe_state_dict(spec)  # attention_bias_idxs left out: the model rebuilds them


@pytest.fixture(scope="module")
def image(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("images") / "cat.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (80, 96, 3), dtype=np.uint8)).save(path)
    return path


def test_cvnets_training_checkpoint_takes_the_ema_weights(tmp_path: Path) -> None:
    spec = load_fixture("official/mobilevit_v2_0.5.json")
    state = recipe_state_dict(spec)
    noisy = {k: v + 0.5 if v.is_floating_point() else v for k, v in state.items()}
    path = tmp_path / "training_checkpoint_last.pt"
    torch.save(
        {
            "iterations": 1000,
            "epoch": 299,
            "model_state_dict": noisy,
            "ema_state_dict": state,
            "optim_state_dict": {"state": {}, "param_groups": [{"lr": 2e-3}]},
            "gradient_scaler_state_dict": {"scale": 1024.0},
            "best_metric": 70.18,
        },
        path,
    )
    model = litevit.create_model("mobilevitv2_050", checkpoint=path)
    assert model.model_info.taken == "ema_state_dict (ml-cvnets training checkpoint)"
    assert_logits_match(model, spec)


def test_torch_compile_and_ddp_prefixes_are_removed(levit, tmp_path: Path) -> None:
    spec, state = levit
    path = tmp_path / "compiled.pth"
    torch.save({"model": {f"module._orig_mod.{k}": v for k, v in state.items()}, "args": argparse.Namespace(a=1)}, path)
    assert_logits_match(litevit.create_model("levit_128s", checkpoint=path), spec)


def test_head_is_kept_without_num_classes_and_replaced_with_a_warning(levit, tmp_path, caplog) -> None:
    spec, state = levit
    small = dict(state)
    for key in [k for k in small if k.startswith(("head.l.", "head_dist.l."))]:
        small[key] = small[key][:7]  # a 7-class fine-tune of the same trunk
    path = tmp_path / "seven.pth"
    torch.save({"model": small}, path)
    model = litevit.create_model("levit_128s", checkpoint=path)
    assert model.config.num_classes == 7 and model.model_info.class_names is None
    with caplog.at_level(logging.WARNING, logger="litevit"):
        replaced = litevit.create_model("levit_128s", checkpoint=path, num_classes=3)
    assert replaced.config.num_classes == 3
    assert "has a 7-class head; num_classes=3 replaces it" in caplog.text
    assert torch.equal(replaced.stem[0].conv.weight, model.stem[0].conv.weight)  # the trunk is loaded


def test_other_resolution_is_resampled_with_a_warning(levit, tmp_path, caplog) -> None:
    _, state = levit
    path = tmp_path / "levit.pth"
    torch.save({"model": state}, path)
    with caplog.at_level(logging.WARNING, logger="litevit"):
        model = litevit.create_model("levit_128s", checkpoint=path, img_size=288)
    assert model.config.img_size == 288 and model.model_info.data.img_size == 288
    assert "trained at another resolution: resampled" in caplog.text
    assert model.eval()(torch.randn(1, 3, 288, 288)).shape == (1, 1000)


def test_published_weights_set_size_and_preprocessing(monkeypatch) -> None:
    monkeypatch.setattr(litevit.weights.hub, "fetch", lambda record: pytest.fail("no download expected"))
    record = weights.get_weights("mobilevitv2_150", "cvnets_in22k_ft_in1k_384")
    assert record.img_size == 384 and record.data.crop_pct == 1.0 and record.data.channel_order == "BGR"
    with pytest.raises(ValueError, match="either published weights"):
        litevit.create_model("mobilevitv2_150.cvnets_in22k_ft_in1k_384", checkpoint="x.pt")
    with pytest.raises(ValueError, match="no weights 'in9k' for mobilevitv2_150; published: cvnets_in1k, "):
        litevit.create_model("mobilevitv2_150", weights="in9k")
    with pytest.raises(ValueError, match="malformed weights tag"):
        litevit.create_model("levit_256.Bad-Tag")


def _bad_files(tmp_path: Path, state: dict[str, torch.Tensor]) -> dict[str, tuple[Path, str]]:
    """name -> (file, the message it must give)."""
    from safetensors.torch import save_file

    good = tmp_path / "good.pth"
    torch.save({"model": state, "args": argparse.Namespace(lr=1.0)}, good)
    truncated = tmp_path / "truncated.pth"
    truncated.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    save_file({k: v.contiguous() for k, v in state.items() if v.is_floating_point()}, tmp_path / "full.safetensors")
    corrupt = tmp_path / "corrupt.safetensors"
    corrupt.write_bytes((tmp_path / "full.safetensors").read_bytes()[:5000])
    text = tmp_path / "notes.pth"
    text.write_text("these are not weights\n")
    tensors = tmp_path / "list.pth"
    torch.save([torch.zeros(2)], tensors)
    stray = tmp_path / "stray_timm.pth"
    timm_state = {"stem.conv1.linear.weight": torch.zeros(16, 3, 3, 3), "stages.0.mystery.weight": torch.zeros(2)}
    torch.save(timm_state, stray)
    other_variant = tmp_path / "levit_192.pth"
    torch.save(litevit.create_model("levit_192").state_dict(), other_variant)
    other_family = tmp_path / "mobilevit.pt"
    torch.save(recipe_state_dict(load_fixture("official/mobilevit_xx_small.json")), other_family)
    return {
        "missing": (tmp_path / "nope.pth", r"checkpoint file not found: .*nope\.pth"),
        "truncated": (truncated, r"truncated\.pth is truncated or corrupt, or not a PyTorch checkpoint"),
        "corrupt safetensors": (corrupt, r"corrupt\.safetensors is not a readable \.safetensors file"),
        "not a checkpoint": (text, r"notes\.pth is truncated or corrupt, or not a PyTorch checkpoint"),
        "no dict": (tensors, r"list\.pth is not a checkpoint: expected a dict of tensors, got list"),
        "stray timm key": (  # an unknown key is an error that names it (the family's key table has no row for it)
            stray,
            r"stray_timm\.pth: unknown timm-layout checkpoint key 'stages\.0\.mystery\.weight'.*\(a levit checkpoint",
        ),
        "other variant": (other_variant, r"does not fit levit_128s; it looks like levit_192 \(litevit layout\)"),
        "other family": (other_family, r"it looks like mobilevit_xxs \(official layout, a mobilevit model\)"),
    }


def test_every_bad_file_is_a_checkpoint_error_from_api_and_cli(levit, tmp_path, image, capsys) -> None:
    _, state = levit
    for name, (path, message) in _bad_files(tmp_path, state).items():
        with pytest.raises(CheckpointError, match=message):
            litevit.create_model("levit_128s", checkpoint=path)
        for command in (
            ["predict", "levit_128s", "--checkpoint", str(path), str(image)],
            ["export", "levit_128s", "--checkpoint", str(path), "--out", str(tmp_path / "m.onnx")],
        ):
            assert cli.main(command) == 2, name
            err = capsys.readouterr().err.strip()
            assert err.startswith(f"litevit {command[0]}: error: "), (name, err)
            assert "\n" not in err and "Traceback" not in err, (name, err)
            assert __import__("re").search(message, err), (name, err)


def test_load_needs_metadata_or_a_name(levit, tmp_path) -> None:
    _, state = levit
    path = tmp_path / "plain.pth"
    torch.save(state, path)
    with pytest.raises(CheckpointError, match=r"has no litevit metadata naming its model"):
        litevit.load(path)
    with pytest.raises(CheckpointError, match=r"neither a file nor a registered model name"):
        litevit.load(tmp_path / "missing.safetensors")


# ------------------------------------------------------------------------------------- weights that cannot be right

OFFICIAL = {
    "levit_128s": "official/LeViT_128S.json",
    "efficientvit_m0": "official/EfficientViT_M0.json",
    "mobilevit_xxs": "official/mobilevit_xx_small.json",
    "mobilevitv2_050": "official/mobilevit_v2_0.5.json",
    "mobilevitv3_xxs": "official/mobilevit_v3_xx_small_v3.json",
    "t2t_vit_7": "official/t2t_vit_7.json",
}


def _poisoned(value: torch.Tensor, kind: str) -> torch.Tensor:
    if kind == "nan":
        return value.flatten().index_fill(0, torch.tensor([0, 3]), float("nan")).view_as(value)
    if kind == "inf":
        return value.flatten().index_fill(0, torch.tensor([1]), float("-inf")).view_as(value)
    return value.long() if kind == "int" else value > 0


POISON_MESSAGES = {
    "nan": r"holds 2 NaN or infinite value\(s\) of \d+; weights with NaN or inf cannot be right",
    "inf": r"holds 1 NaN or infinite value\(s\) of \d+; weights with NaN or inf cannot be right",
    "int": r"holds torch\.int64 values where the model has torch\.float32 weights",
    "bool": r"holds torch\.bool values where the model has torch\.float32 weights",
}


@pytest.mark.parametrize("name", list(OFFICIAL))
def test_nan_inf_and_integer_weights_are_refused_naming_the_tensor(name: str, tmp_path: Path) -> None:
    state = recipe_state_dict(load_fixture(OFFICIAL[name]))
    # a trunk weight (renamed by most converters: the message names it as the file does) and a bias
    keys = [next(k for k, v in state.items() if v.ndim >= 2), next(k for k in state if k.endswith(".bias"))]
    for key in keys:
        for kind, message in POISON_MESSAGES.items():
            path = tmp_path / f"{kind}.pth"
            torch.save({"model": {**state, key: _poisoned(state[key], kind)}}, path)
            with pytest.raises(CheckpointError, match=rf"{re.escape(str(path))}: {re.escape(key)}( \(.*\))? {message}"):
                litevit.create_model(name, checkpoint=path)
    clean = litevit.create_model(name, checkpoint=state)  # the same file unpoisoned loads
    assert all(torch.isfinite(v).all() for v in clean.state_dict().values() if v.is_floating_point())


def test_nan_weights_are_refused_by_every_entry_point(levit, tmp_path, image, capsys) -> None:
    from litevit.training.checkpoint import export_safetensors

    _, state = levit
    key = "patch_embed.0.c.weight"
    path = tmp_path / "nan.pth"
    torch.save({"model": {**state, key: _poisoned(state[key], "nan")}}, path)
    message = rf"{key} \(stem\.0\.conv\.weight in litevit's names\) holds 2 NaN"
    with pytest.raises(CheckpointError, match=message):
        litevit.load_checkpoint(litevit.create_model("levit_128s"), path)
    with pytest.raises(CheckpointError, match=message):
        litevit.backbone("levit_128s", checkpoint=path)
    model = litevit.create_model("levit_128s", checkpoint=state)
    bad = {**model.state_dict(), "stem.0.conv.weight": _poisoned(model.stem[0].conv.weight.detach(), "nan")}
    best = tmp_path / "best.safetensors"
    meta = {"num_classes": 1000, "img_size": 224, "model_kwargs": {}}
    export_safetensors(best, bad, "levit_128s", meta, model.model_info.data)
    with pytest.raises(CheckpointError, match=r"best\.safetensors: stem\.0\.conv\.weight holds 2 NaN"):
        litevit.load(best)
    for command in (
        ["predict", "levit_128s", "--checkpoint", str(path), str(image)],
        ["predict", str(best), str(image)],
        ["eval", str(best), "--data", str(tmp_path)],
        ["export", str(best), "--out", str(tmp_path / "m.onnx")],
    ):
        assert cli.main(command) == 2, command
        err = capsys.readouterr().err.strip()
        assert "\n" not in err and "NaN or infinite" in err and "stem.0.conv.weight" in err, err


# ---------------------------------------------------------------------------------------- tampered litevit metadata


@pytest.fixture(scope="module")
def litevit_file(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, str]]:
    """A 3-class mobilevit_xxs best.safetensors at 64 px, and its metadata as stored."""
    from safetensors import safe_open

    from litevit.training.checkpoint import export_safetensors

    model = litevit.create_model("mobilevit_xxs", num_classes=3, img_size=64)
    path = tmp_path_factory.mktemp("litevit") / "best.safetensors"
    meta = {"num_classes": 3, "img_size": 64, "model_kwargs": {"drop_path": 0.0}, "classes": ["a", "b", "c"]}
    export_safetensors(path, model.state_dict(), "mobilevit_xxs", meta, model.model_info.data)
    with safe_open(str(path), framework="pt") as handle:
        return path, dict(handle.metadata())


TAMPERED = [
    ("num_classes", "0", r"num_classes=0 is invalid: expected a positive integer"),
    ("num_classes", '"3"', r"num_classes='3' is invalid: expected a positive integer"),
    ("num_classes", "true", r"num_classes=true is invalid: expected a positive integer"),
    ("num_classes", "5", r"num_classes=5 is invalid: expected 3, the rows of its head"),
    ("classes", '["a", "b"]', r"classes=\[\"a\", \"b\"\] is invalid: expected 3 names, one per class of its head"),
    ("classes", '["a", "a", "b"]', r"classes=.* is invalid: expected a list of distinct class names"),
    ("img_size", "1000000", r"img_size=1000000 is invalid: expected an integer or \[height, width\], each from 1 to"),
    ("img_size", '"big"', r"img_size='big' is invalid: expected an integer or \[height, width\]"),
    ("img_size", "[64, 0]", r"img_size=\[64, 0\] is invalid"),
    ("model_kwargs", '{"nope": 1}', r"model_kwargs=\{\"nope\": 1\} is invalid: expected mobilevit_xxs config fields"),
    ("model_kwargs", '"abc"', r"model_kwargs='abc' is invalid: expected a JSON object"),
    ("model_kwargs", '{"dims": [16, 24, 48, 64, 100000]}', r"model_kwargs=.* is invalid: it does not build the model"),
    ("model_kwargs", '{"depths": "x"}', r"model_kwargs=.* is invalid: it does not build the model"),
    ("data_config", '"abc"', r"data_config='abc' is invalid: expected a JSON object of DataConfig fields"),
    ("data_config", '{"mean": "abc"}', r"data_config=.* is invalid: expected mean three finite numbers"),
    ("data_config", '{"std": [0, 1, 1]}', r"data_config=.* is invalid: expected std positive"),
    ("data_config", '{"std": [1, 1]}', r"data_config=.* is invalid: expected std three finite numbers"),
    ("data_config", '{"crop_pct": 5}', r"data_config=.* is invalid: .*crop_pct must be in \(0, 1\], got 5"),
    ("data_config", '{"crop_pct": "x"}', r"data_config=.* is invalid: expected crop_pct a number"),
    ("data_config", '{"interpolation": "cubic"}', r"data_config=.* is invalid: .*unknown interpolation 'cubic'"),
    ("data_config", '{"channel_order": "XYZ"}', r"data_config=.* is invalid: .*unknown channel order 'XYZ'"),
    ("data_config", '{"img_size": 100000}', r"data_config=.* is invalid: expected img_size an integer from 1 to"),
    ("data_config", '{"colour": 1}', r"data_config=.* is invalid: expected DataConfig fields only .*not 'colour'"),
    ("variant", "nope", r"variant='nope' is invalid: expected a registered model name"),
]


@pytest.mark.parametrize(("field", "value", "message"), TAMPERED, ids=[f"{t[0]}={t[1]}" for t in TAMPERED])
def test_tampered_metadata_is_refused_naming_the_field(
    field: str, value: str, message: str, litevit_file, tmp_path: Path, image: Path, capsys
) -> None:
    from safetensors import safe_open
    from safetensors.torch import save_file

    source, metadata = litevit_file
    with safe_open(str(source), framework="pt") as handle:
        tensors = {k: handle.get_tensor(k) for k in handle.keys()}  # noqa: SIM118 - not a dict
    if field == "data_config" and value.startswith("{"):  # one field of the stored config replaced
        value = json.dumps({**json.loads(metadata["data_config"]), **json.loads(value)})
    path = tmp_path / "best.safetensors"
    save_file(tensors, str(path), metadata={**metadata, field: value})
    with pytest.raises(CheckpointError, match=message):
        litevit.load(path)
    if field != "variant":
        with pytest.raises(CheckpointError, match=message):
            litevit.create_model("mobilevit_xxs", checkpoint=path)
    assert cli.main(["predict", str(path), str(image)]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and f"metadata {field}=" in err, err


def test_untampered_metadata_loads(litevit_file) -> None:
    model = litevit.load(litevit_file[0])
    assert model.model_info.class_names == ("a", "b", "c") and model.config.img_size == 64


# ------------------------------------------------------------------------------------------------------- pickles


class _Shell:
    def __reduce__(self) -> tuple:
        return (os.system, ("echo pwned",))


def _pickles(tmp_path: Path) -> dict[str, tuple[Path, str]]:
    """name -> (a file with pickled code or objects, the global its refusal must name)."""
    import pathlib
    import pickle

    weights = {"w": torch.zeros(1)}
    files = {
        "torch.save, a function": ({"model": weights, "hook": os.system}, "torch", "posix.system"),
        "torch.save, __reduce__": ({"model": weights, "x": _Shell()}, "torch", "posix.system"),
        "torch.save, a class": ({"model": weights, "p": pathlib.PurePosixPath("a")}, "torch", "pathlib.PurePosixPath"),
        "pickle protocol 2": ({"model": {"w": 1.0}, "hook": print}, 2, "builtins.print"),
        "pickle protocol 4": ({"model": {"w": 1.0}, "hook": print}, 4, "builtins.print"),
        "pickle protocol 5, __reduce__": ({"x": _Shell()}, 5, "posix.system"),
    }
    out = {}
    for i, (name, (obj, writer, named)) in enumerate(files.items()):
        path = tmp_path / f"evil{i}.pth"
        if writer == "torch":
            torch.save(obj, path)
        else:
            path.write_bytes(pickle.dumps(obj, protocol=writer))
        out[name] = (path, named)
    return out


def test_pickled_code_is_refused_saying_what_and_never_to_turn_safety_off(tmp_path, image, capsys) -> None:
    for name, (path, named) in _pickles(tmp_path).items():
        with pytest.raises(CheckpointError) as info:
            litevit.create_model("levit_128s", checkpoint=path)
        text = str(info.value)
        assert text.startswith(f"{path} cannot be read safely: torch.load(weights_only=True) refused it"), name
        assert f"refers to the Python global {named}" in text, (name, text)
        for advice in ("weights_only=False", "weights_only` set to `False", "safe_globals", "trust", "\n"):
            assert advice not in text, (name, advice, text)
        assert cli.main(["predict", "levit_128s", "--checkpoint", str(path), str(image)]) == 2
        err = capsys.readouterr().err.strip()
        assert named in err and "weights_only=False" not in err and "\n" not in err, err
