"""Sharing models the way timm does: a Hub folder that timm and litevit both load, and pushing it to the Hub.

:func:`save_pretrained` writes ``config.json`` + ``model.safetensors`` (the folder form of :mod:`.folder`). For a
network timm implements (LeViT, EfficientViT-MSRA, MobileViT v1/v2 with their registered config) the weights are in
timm's key layout and ``config.json`` carries timm's fields, so ``timm.create_model("local-dir:FOLDER",
pretrained=True)`` rebuilds it with its head and gives the same logits; litevit's own metadata rides along, so
``litevit.load(FOLDER)`` rebuilds variant, class names, input size and data config. Other models (MobileViTv3,
T2T-ViT, changed configs) are written in litevit's layout in the same form, for litevit only.

:func:`push_to_hub` uploads that folder with ``huggingface_hub`` (the optional ``litevit[hub]`` extra);
``create_model("hf-hub:ORG/NAME")`` and ``load("hf-hub:ORG/NAME")`` read it back, as ``timm.create_model`` does.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import tempfile
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .._extras import require
from .._files import atomic_write
from .._version import __version__
from ..registry import get_variant
from .folder import CONFIG_NAME, WEIGHTS_NAME, split_hub_name
from .loading import model_info
from .timm_layout import timm_architecture, timm_config, to_timm

log = logging.getLogger(__name__)

LAYOUTS = ("auto", "timm", "litevit")


def _jsonable(value: Any) -> Any:
    if isinstance(value, tuple | list):
        return [_jsonable(v) for v in value]
    return value


def _model_kwargs(model: nn.Module) -> dict[str, Any]:
    """Config fields that differ from the registered variant's (``num_classes`` and ``img_size`` are kept apart)."""
    registered = get_variant(model.variant_name).config
    return {
        f.name: _jsonable(getattr(model.config, f.name))
        for f in dataclasses.fields(model.config)
        if f.name not in ("num_classes", "img_size") and getattr(model.config, f.name) != getattr(registered, f.name)
    }


def _check_savable(model: nn.Module) -> dict[str, torch.Tensor]:
    """The model's state dict, refusing what a fresh model of its config could not load (fused, pruned, features)."""
    if not hasattr(model, "variant_name") or not hasattr(model, "config"):
        raise ValueError("save_pretrained needs a classifier built by litevit.create_model")
    state = model.state_dict()
    with torch.device("meta"):
        fresh = get_variant(model.variant_name).builder(model.config)
    if set(state) != set(fresh.state_dict()):
        raise ValueError(
            f"this {model.variant_name} does not have the keys its config builds (fused, pruned or a features "
            "model?): save the classifier as create_model returns it, and fuse or prune after loading"
        )
    return {k: v.detach().to("cpu").contiguous().clone() for k, v in state.items()}


def save_pretrained(model: nn.Module, folder: str | os.PathLike, *, layout: str = "auto") -> Path:
    """Write ``model`` as a Hub folder: ``config.json`` and ``model.safetensors``; returns the folder.

    ``layout="auto"`` writes timm's layout when timm implements the network (see the module docstring), else
    litevit's; ``"timm"`` insists (a ValueError when timm has no such network); ``"litevit"`` always writes
    litevit's. Either way ``litevit.load(folder)`` rebuilds the model, head, class names and data config included.
    """
    from safetensors.torch import save_file

    if layout not in LAYOUTS:
        raise ValueError(f"layout must be one of {LAYOUTS}, got {layout!r}")
    state = _check_savable(model)
    info = model_info(model)
    architecture = timm_architecture(model)
    if layout == "timm" and architecture is None:
        raise ValueError(
            f"timm has no network equal to this {model.variant_name} (timm implements LeViT, EfficientViT-MSRA and "
            "MobileViT v1/v2 with their registered configs); save it with layout='litevit'"
        )
    as_timm = architecture is not None and layout != "litevit"
    if as_timm:
        tensors = to_timm(model, state)
        config = timm_config(model, info.data, info.class_names)
        if info.data.channel_order != "RGB":
            log.warning(
                "%s expects %s input; timm's config has no channel order and its pipelines feed RGB "
                "(litevit.load reads channel_order=%s from the folder)",
                model.variant_name,
                info.data.channel_order,
                info.data.channel_order,
            )
    else:
        tensors = state
        config = {"architecture": model.variant_name, "num_classes": model.config.num_classes}
    config["litevit"] = {
        "version": __version__,
        "layout": "timm" if as_timm else "litevit",
        "variant": model.variant_name,
        "num_classes": int(model.config.num_classes),
        "img_size": _jsonable(model.config.img_size),
        "model_kwargs": _model_kwargs(model),
        **({"classes": list(info.class_names)} if info.class_names is not None else {}),
        "data_config": _jsonable(dataclasses.asdict(info.data)),
    }
    path = Path(folder)
    path.mkdir(parents=True, exist_ok=True)
    atomic_write(path / WEIGHTS_NAME, lambda tmp: save_file(tensors, str(tmp), metadata={"format": "pt"}))
    text = json.dumps(config, indent=2) + "\n"
    atomic_write(path / CONFIG_NAME, lambda tmp: tmp.write_text(text, encoding="utf-8"))
    log.info("saved %s to %s (%s layout)", model.variant_name, path, config["litevit"]["layout"])
    return path


def model_card(model: nn.Module, repo: str, layout: str) -> str:
    """A short README.md for the Hub: what the model is and how timm and litevit load it."""
    info = model_info(model)
    variant = get_variant(model.variant_name)
    library = "timm" if layout == "timm" else "litevit"
    lines = [
        "---",
        "tags:",
        "- image-classification",
        "- litevit",
        *(["- timm"] if layout == "timm" else []),
        f"library_name: {library}",
        "---",
        "",
        f"# {repo.split('/')[-1]}",
        "",
        f"`{variant.name}` ({variant.family}, {variant.paper.params_m} M parameters as published), "
        f"{info.num_classes} classes, input {info.img_size}, written by litevit {__version__}.",
        "",
        "```python",
        "import litevit",
        f'model = litevit.create_model("hf-hub:{repo}")',
    ]
    if layout == "timm":
        lines += ["", "import timm", f'model = timm.create_model("hf-hub:{repo}", pretrained=True)']
    lines += ["```", ""]
    return "\n".join(lines)


def push_to_hub(
    model: nn.Module,
    repo: str,
    *,
    layout: str = "auto",
    private: bool | None = None,
    token: str | None = None,
    revision: str | None = None,
    commit_message: str | None = None,
) -> str:
    """Upload ``model`` as a Hub folder (:func:`save_pretrained`) to the repository ``ORG/NAME``; returns the
    commit's URL. The repository is created when missing; a README.md model card is added when it has none.
    Needs ``pip install 'litevit[hub]'``; ``huggingface_hub`` settings apply (``HF_TOKEN``, ``HF_ENDPOINT``)."""
    repo_id, _ = split_hub_name(repo if ":" in repo else f"hf-hub:{repo}")
    hub = require("huggingface_hub", "push_to_hub")
    api = hub.HfApi(token=token)
    with tempfile.TemporaryDirectory() as tmp:
        folder = save_pretrained(model, Path(tmp) / "model", layout=layout)
        written = json.loads((folder / CONFIG_NAME).read_text())["litevit"]["layout"]
        api.create_repo(repo_id, private=private, exist_ok=True)
        if not api.file_exists(repo_id, "README.md", revision=revision):
            (folder / "README.md").write_text(model_card(model, repo_id, written), encoding="utf-8")
        commit = api.upload_folder(
            repo_id=repo_id,
            folder_path=str(folder),
            revision=revision,
            commit_message=commit_message or f"litevit {model.variant_name} ({written} layout)",
        )
    return str(getattr(commit, "commit_url", commit))
