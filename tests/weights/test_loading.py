"""The loading layer: release forms, heads and class names, resolution, and every bad file as a CheckpointError.

Each bad file is tried through the API and through the CLI (exit code 2, one line on stderr, no traceback).
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

import numpy as np
import pytest
import test_levit
import torch
from PIL import Image
from reference import assert_logits_match, load_fixture, recipe_state_dict

import litevit
from litevit import cli
from litevit.weights import records as weights
from litevit.weights.checkpoint import CheckpointError


@pytest.fixture(scope="module")
def levit() -> tuple[dict, dict[str, torch.Tensor]]:
    spec = load_fixture("official/LeViT_128S.json")
    return spec, recipe_state_dict(spec, test_levit._non_generated)


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
        "stray timm key": (
            stray,
            r"\(timm layout\) does not fit levit_128s; .*unexpected keys \(1\): stages\.0\.mystery",
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


def test_pickled_code_is_refused(tmp_path: Path) -> None:
    import pickle

    path = tmp_path / "evil.pth"
    with open(path, "wb") as f:
        pickle.dump({"model": {"w": torch.zeros(1)}, "hook": print}, f)
    with pytest.raises(
        CheckpointError, match=r"evil\.pth cannot be read safely: torch\.load\(weights_only=True\) refused it"
    ):
        litevit.create_model("levit_128s", checkpoint=path)


def test_load_needs_metadata_or_a_name(levit, tmp_path) -> None:
    _, state = levit
    path = tmp_path / "plain.pth"
    torch.save(state, path)
    with pytest.raises(CheckpointError, match=r"has no litevit metadata naming its model"):
        litevit.load(path)
    with pytest.raises(CheckpointError, match=r"neither a file nor a registered model name"):
        litevit.load(tmp_path / "missing.safetensors")
