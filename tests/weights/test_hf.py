"""Sharing models the way timm does: Hub folders that timm and litevit both load, in both directions, hf-hub: names
through huggingface_hub's offline cache, and push_to_hub (HfApi's network methods replaced by recorders)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

import litevit
from litevit._extras import MissingExtraError
from litevit.cli import main
from litevit.registry import get_variant, list_models
from litevit.weights.folder import TIMM_FAMILIES
from litevit.weights.reading import CheckpointError
from litevit.weights.timm_layout import timm_architecture, to_timm

timm = pytest.importorskip("timm")

# the four networks timm implements (one variant each), then the two it does not
TIMM_MODELS = ["levit_128s", "efficientvit_m0", "mobilevit_xxs", "mobilevitv2_050"]
LITEVIT_ONLY = ["mobilevitv3_xxs", "t2t_vit_7"]
CLASSES = [f"kind_{i}" for i in range(10)]


def randomised(model: nn.Module, seed: int = 0) -> nn.Module:
    """Random BatchNorm statistics and affines, random bias tables: logits that a wrong key or table would change."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, _BatchNorm):
                m.running_mean.copy_(0.1 * torch.randn(m.running_mean.shape, generator=gen))
                m.running_var.copy_(0.5 + torch.rand(m.running_var.shape, generator=gen))
                m.weight.copy_(1 + 0.1 * torch.randn(m.weight.shape, generator=gen))
                m.bias.copy_(0.1 * torch.randn(m.bias.shape, generator=gen))
        for name, p in model.named_parameters():
            if "attention_biases" in name or not p.any():
                p.copy_(0.5 * torch.randn(p.shape, generator=gen))
    return model.eval()


def tuned(name: str, **kwargs) -> nn.Module:
    """A litevit model fine-tuned for ten named classes (as `litevit train` leaves it)."""
    torch.manual_seed(0)
    model = randomised(litevit.create_model(name, num_classes=10, **kwargs))
    info = model.model_info
    model.model_info = type(info)(**{**info.__dict__, "class_names": tuple(CLASSES)})
    return model


def images(model: nn.Module, channels: int = 3) -> torch.Tensor:
    size = model.config.img_size
    height, width = (size, size) if isinstance(size, int) else size
    return torch.randn(2, channels, height, width, generator=torch.Generator().manual_seed(1))


def assert_same_logits(a: nn.Module, b: nn.Module, x: torch.Tensor) -> None:
    with torch.no_grad():
        expected = a(x)
        assert expected.abs().max() > 1e-2  # logits large enough for a wrong weight to show
        torch.testing.assert_close(b(x), expected, rtol=1e-5, atol=1e-6)


# ------------------------------------------------------------------------------------------- litevit -> timm folder


@pytest.mark.parametrize("name", TIMM_MODELS)
def test_timm_loads_a_litevit_folder_with_equal_logits(name: str, tmp_path: Path) -> None:
    model = tuned(name)
    folder = litevit.save_pretrained(model, tmp_path / name)
    assert sorted(p.name for p in folder.iterdir()) == ["config.json", "model.safetensors"]
    config = json.loads((folder / "config.json").read_text())
    assert config["architecture"] == name and config["litevit"]["layout"] == "timm"
    theirs = timm.create_model(f"local-dir:{folder}", pretrained=True).eval()
    assert theirs.num_classes == 10 and theirs.pretrained_cfg["label_names"] == CLASSES
    data = model.model_info.data
    assert tuple(theirs.pretrained_cfg["mean"]) == data.mean and theirs.pretrained_cfg["crop_pct"] == data.crop_pct
    assert_same_logits(model, theirs, images(model))
    # and back: litevit rebuilds variant, head, class names and data config (MobileViT's BGR order included)
    back = litevit.load(folder)
    assert back.model_info.class_names == tuple(CLASSES) and back.model_info.data == data
    assert_same_logits(model, back.eval(), images(model))


@pytest.mark.parametrize("name", ["levit_128s", "efficientvit_m0"])
def test_timm_loads_other_input_sizes_and_channels(name: str, tmp_path: Path) -> None:
    model = tuned(name, img_size=288, in_chans=1)
    folder = litevit.save_pretrained(model, tmp_path / name)
    config = json.loads((folder / "config.json").read_text())
    assert config["model_args"] == {"in_chans": 1, "img_size": 288}
    theirs = timm.create_model(f"local-dir:{folder}", pretrained=True).eval()
    assert_same_logits(model, theirs, images(model, channels=1))
    back = litevit.load(folder).eval()
    assert back.config.in_chans == 1 and back.config.img_size == 288
    assert_same_logits(model, back, images(model, channels=1))


def test_to_timm_is_the_inverse_of_the_converters() -> None:
    """Every registered variant timm implements: litevit's keys -> timm's -> litevit's is the identity, and timm's
    own model of that name has exactly those keys and shapes."""
    covered = []
    for name in list_models():
        variant = get_variant(name)
        with torch.device("meta"):
            model = variant.build()
        if timm_architecture(model) is None:
            assert variant.family not in TIMM_FAMILIES or variant.name.startswith("mobilevitv3"), name
            continue
        state = model.state_dict()
        theirs = to_timm(model, state)
        with torch.device("meta"):
            reference = timm.create_model(name).state_dict()
        shapes = {k: tuple(v.shape) for k, v in reference.items() if not k.endswith("attention_bias_idxs")}
        assert {k: tuple(v.shape) for k, v in theirs.items()} == shapes, name
        converter = variant.converter
        assert converter.detect(theirs) == "timm"
        again = converter.to_litevit(theirs, "timm")
        assert {k: tuple(v.shape) for k, v in again.items()} == {k: tuple(v.shape) for k, v in state.items()}, name
        covered.append(name)
    assert len(covered) == 5 + 6 + 3 + 7  # LeViT, EfficientViT-MSRA, MobileViT v1, v2


# ------------------------------------------------------------------------------------------- timm folder -> litevit


@pytest.mark.parametrize("safe", [True, False], ids=["safetensors", "torch"])
@pytest.mark.parametrize("name", TIMM_MODELS)
def test_litevit_loads_a_timm_folder_with_equal_logits(name: str, safe: bool, tmp_path: Path) -> None:
    torch.manual_seed(0)
    theirs = randomised(timm.create_model(name, num_classes=10))
    folder = tmp_path / name
    timm.models.save_for_hf(theirs, str(folder), model_config={"label_names": CLASSES}, safe_serialization=safe)
    assert (folder / ("model.safetensors" if safe else "pytorch_model.bin")).is_file()
    x = torch.randn(2, 3, *theirs.pretrained_cfg["input_size"][1:], generator=torch.Generator().manual_seed(1))
    ours = litevit.load(folder).eval()
    assert ours.variant_name == name and ours.model_info.class_names == tuple(CLASSES)
    cfg = theirs.pretrained_cfg
    data = ours.model_info.data
    assert (data.mean, data.std, data.crop_pct, data.channel_order) == (cfg["mean"], cfg["std"], cfg["crop_pct"], "RGB")
    assert_same_logits(theirs, ours, x)
    by_name = litevit.create_model(name, checkpoint=folder).eval()
    assert_same_logits(theirs, by_name, x)
    # and a new head on top of timm's trunk, as when fine-tuning from a shared folder
    assert litevit.create_model(name, checkpoint=folder, num_classes=3).config.num_classes == 3


def test_timm_folder_with_one_input_channel(tmp_path: Path) -> None:
    torch.manual_seed(0)
    theirs = randomised(timm.create_model("mobilevit_xxs", num_classes=10, in_chans=1))
    timm.models.save_for_hf(theirs, str(tmp_path), safe_serialization=True)
    ours = litevit.load(tmp_path).eval()
    assert ours.config.in_chans == 1
    assert_same_logits(theirs, ours, torch.randn(2, 1, 256, 256))


# ------------------------------------------------------------------------------------------ families timm lacks


@pytest.mark.parametrize("name", LITEVIT_ONLY)
def test_litevit_only_families_round_trip(name: str, tmp_path: Path) -> None:
    model = tuned(name)
    with pytest.raises(ValueError, match="timm has no network"):
        litevit.save_pretrained(model, tmp_path / "timm", layout="timm")
    folder = litevit.save_pretrained(model, tmp_path / name)
    config = json.loads((folder / "config.json").read_text())
    assert config["litevit"]["layout"] == "litevit"
    back = litevit.load(folder).eval()
    assert back.model_info.class_names == tuple(CLASSES) and back.model_info.data == model.model_info.data
    assert_same_logits(model, back, images(model))
    with pytest.raises(RuntimeError, match="Unknown model"):  # timm says plainly that it has no such model
        timm.create_model(f"local-dir:{folder}", pretrained=True)


def test_a_changed_config_is_written_in_litevit_layout(tmp_path: Path) -> None:
    model = tuned("levit_128s", distilled=False, img_size=(224, 160))
    folder = litevit.save_pretrained(model, tmp_path)
    config = json.loads((folder / "config.json").read_text())["litevit"]
    assert config["layout"] == "litevit" and config["model_kwargs"] == {"distilled": False}
    back = litevit.load(folder).eval()
    assert back.config.img_size == (224, 160)
    assert_same_logits(model, back, images(model))


# ------------------------------------------------------------------------------------------------------- errors


def test_folder_errors_are_one_line(tmp_path: Path) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(CheckpointError, match="without config.json"):
        litevit.load(empty)
    other = tmp_path / "resnet"
    other.mkdir()
    (other / "config.json").write_text(json.dumps({"architecture": "resnet50", "pretrained_cfg": {}}))
    with pytest.raises(CheckpointError, match="'resnet50' is not a timm model litevit implements"):
        litevit.load(other)
    (other / "config.json").write_text(json.dumps({"architecture": "levit_128s", "num_classes": 10}))
    with pytest.raises(CheckpointError, match="no weights: expected model.safetensors or pytorch_model.bin"):
        litevit.load(other)
    (other / "config.json").write_text("{not json")
    with pytest.raises(CheckpointError, match="not readable JSON"):
        litevit.create_model("levit_128s", checkpoint=other)
    folder = litevit.save_pretrained(tuned("levit_128s"), tmp_path / "levit")
    with pytest.raises(CheckpointError, match="levit_128s file, not levit_256"):
        litevit.create_model("levit_256", checkpoint=folder)
    with pytest.raises(ValueError, match="fused, pruned or a features model"):
        litevit.save_pretrained(litevit.fuse(tuned("levit_128s")), tmp_path / "fused")


# ------------------------------------------------------------------------------------------------ the command line


def test_cli_predict_and_export_take_a_folder(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    from PIL import Image

    folder = litevit.save_pretrained(tuned("levit_128s"), tmp_path / "levit")
    image = tmp_path / "a.png"
    Image.new("RGB", (40, 30), (200, 30, 30)).save(image)
    assert main(["predict", str(folder), str(image), "--topk", "2"]) == 0
    out = capsys.readouterr().out
    assert "kind_" in out  # the folder's own class names
    assert main(["predict", "levit_128s", "--checkpoint", str(folder), str(image)]) == 0
    assert "kind_" in capsys.readouterr().out
    assert main(["export", str(folder), "--out", str(tmp_path / "m.ts")]) == 0
    assert "10 classes" in capsys.readouterr().out
    assert main(["predict", str(folder), str(image), "--checkpoint", str(folder)]) == 2
    assert "carries its own weights" in capsys.readouterr().err


# ------------------------------------------------------------------------------------------- the Hub, without network


def _hub_cache(cache: Path, repo: str, folder: Path) -> None:
    """huggingface_hub's cache layout for one revision of ``repo``: refs/main -> snapshots/<commit>/<files>."""
    commit = "0123456789abcdef0123456789abcdef01234567"
    root = cache / f"models--{repo.replace('/', '--')}"
    (root / "refs").mkdir(parents=True)
    (root / "refs" / "main").write_text(commit)
    shutil.copytree(folder, root / "snapshots" / commit)


def test_hf_hub_names_read_the_offline_cache(tmp_path: Path) -> None:
    """``create_model("hf-hub:ORG/NAME")`` in a process with HF_HUB_OFFLINE=1 and HF_HUB_CACHE pointing at a
    prepared cache; timm reads the same cache entry with the same logits."""
    model = tuned("efficientvit_m0")
    x = images(model)
    with torch.no_grad():
        torch.save({"x": x, "logits": model(x)}, tmp_path / "expected.pt")
    _hub_cache(tmp_path / "cache", "litevit-test/effvit", litevit.save_pretrained(model, tmp_path / "folder"))
    script = textwrap.dedent(
        """
        import json, sys, torch, timm, litevit
        expected = torch.load(sys.argv[1])
        ours = litevit.create_model("hf-hub:litevit-test/effvit").eval()
        loaded = litevit.load("hf-hub:litevit-test/effvit@main").eval()
        theirs = timm.create_model("hf-hub:litevit-test/effvit", pretrained=True).eval()
        with torch.no_grad():
            diffs = [float((m(expected["x"]) - expected["logits"]).abs().max()) for m in (ours, loaded, theirs)]
        try:
            litevit.create_model("hf-hub:litevit-test/absent")
        except litevit.DownloadError as exc:
            error = str(exc)
        print(json.dumps({"diffs": diffs, "names": list(ours.model_info.class_names), "error": error}))
        """
    )
    env = dict(os.environ, HF_HUB_OFFLINE="1", HF_HUB_CACHE=str(tmp_path / "cache"), HF_HOME=str(tmp_path / "home"))
    done = subprocess.run(
        [sys.executable, "-c", script, str(tmp_path / "expected.pt")], env=env, capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr[-2000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert max(result["diffs"]) < 1e-5 and result["names"] == CLASSES
    assert result["error"].startswith("cannot fetch hf-hub:litevit-test/absent from the Hugging Face Hub")
    assert "\n" not in result["error"]


def test_hub_without_the_extra_names_it(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "huggingface_hub", None)
    with pytest.raises(MissingExtraError, match=r"pip install 'litevit\[hub\]'"):
        litevit.create_model("hf-hub:org/name")
    with pytest.raises(MissingExtraError, match=r"pip install 'litevit\[hub\]'"):
        litevit.push_to_hub(tuned("levit_128s"), "org/name")


def test_push_to_hub_uploads_a_folder_timm_loads(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """HfApi's network methods are replaced by recorders (no server): what push_to_hub would upload is copied
    aside and loaded by timm and litevit."""
    import huggingface_hub

    calls: list[tuple[str, dict]] = []
    uploaded = tmp_path / "uploaded"

    def create_repo(self, repo_id: str, **kwargs) -> str:
        calls.append(("create_repo", {"repo_id": repo_id, **kwargs}))
        return f"https://huggingface.co/{repo_id}"

    def file_exists(self, repo_id: str, filename: str, **kwargs) -> bool:
        calls.append(("file_exists", {"repo_id": repo_id, "filename": filename}))
        return False

    def upload_folder(self, *, repo_id: str, folder_path: str, **kwargs) -> str:
        calls.append(("upload_folder", {"repo_id": repo_id, **kwargs}))
        shutil.copytree(folder_path, uploaded)
        return f"https://huggingface.co/{repo_id}/commit/abc"

    for method in (create_repo, file_exists, upload_folder):
        monkeypatch.setattr(huggingface_hub.HfApi, method.__name__, method)
    model = tuned("mobilevitv2_050")
    url = litevit.push_to_hub(model, "someone/mobilevit-kinds", private=True)
    assert url == "https://huggingface.co/someone/mobilevit-kinds/commit/abc"
    assert [c[0] for c in calls] == ["create_repo", "file_exists", "upload_folder"]
    assert calls[0][1] == {"repo_id": "someone/mobilevit-kinds", "private": True, "exist_ok": True}
    assert sorted(p.name for p in uploaded.iterdir()) == ["README.md", "config.json", "model.safetensors"]
    card = (uploaded / "README.md").read_text()
    assert "library_name: timm" in card and 'create_model("hf-hub:someone/mobilevit-kinds"' in card
    theirs = timm.create_model(f"local-dir:{uploaded}", pretrained=True).eval()
    assert_same_logits(model, theirs, images(model))
    assert_same_logits(model, litevit.load(uploaded).eval(), images(model))
