"""The Hugging Face Hub folder form of a model (``config.json`` + ``model.safetensors``), as timm writes it.

timm's ``save_for_hf`` / ``push_to_hf_hub`` write a folder that ``timm.create_model("local-dir:FOLDER")`` or
``"hf-hub:ORG/NAME"`` rebuild: ``config.json`` names the architecture, the class count and names, the model
arguments (``in_chans``, ``img_size``) and the preprocessing (``pretrained_cfg``), next to the weights in timm's
key layout. litevit reads such folders for the families timm implements (LeViT, EfficientViT-MSRA, MobileViT v1
and v2) and writes them (:mod:`litevit.weights.hf`), adding its own metadata under a ``"litevit"`` key of
``config.json``, which timm ignores: variant, key layout, classes, input size, model options and data config. With
it a folder rebuilds every family, MobileViTv3 and T2T-ViT too, whose weights are then in litevit's own layout.

This module reads folders and fetches them from the Hub; the loading layer turns them into models.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any

import torch

from .._extras import require
from ..registry import find_variant, get_variant
from .hub import DownloadError
from .reading import Checkpoint, CheckpointError, check_meta, read_checkpoint

log = logging.getLogger(__name__)

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"
WEIGHT_FILES = (WEIGHTS_NAME, "pytorch_model.bin")  # timm's preference: safetensors, then torch.save
HUB_PREFIX = "hf-hub:"
TIMM_FAMILIES = ("levit", "efficientvit_msra", "mobilevit")
LITEVIT_KEYS = ("variant", "num_classes", "img_size", "model_kwargs", "classes", "data_config")
# timm factory arguments a folder may record that change nothing in the network litevit builds
_IGNORED_ARGS = {"num_classes", "drop_rate", "drop_path_rate", "global_pool", "pretrained_cfg_overlay"}


def is_model_folder(path: str | os.PathLike) -> bool:
    """Whether ``path`` is a folder holding a ``config.json``, as timm and the Hub lay models out."""
    return (Path(path) / CONFIG_NAME).is_file()


def _read_config(folder: Path) -> dict[str, Any]:
    path = folder / CONFIG_NAME
    if not path.is_file():
        raise CheckpointError(
            f"{folder} is a folder without {CONFIG_NAME}; expected a model folder as timm's save_for_hf or "
            "litevit.save_pretrained write it (config.json + model.safetensors), or a checkpoint file"
        )
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CheckpointError(f"{path} is not readable JSON: {exc}") from None
    if not isinstance(config, dict):
        raise CheckpointError(f"{path} holds {type(config).__name__}, expected a JSON object")
    return config


def _timm_variant(architecture: Any, path: Path) -> str:
    variant = find_variant(architecture) if isinstance(architecture, str) else None
    if variant is None or variant.family not in TIMM_FAMILIES or architecture not in variant.external_names:
        raise CheckpointError(
            f"{path}: architecture {architecture!r} is not a timm model litevit implements (timm folders of LeViT, "
            "EfficientViT-MSRA and MobileViT v1/v2 are read; see `litevit list`)"
        )
    return variant.name


def _size(value: Any) -> int | list[int]:
    height, width = (value, value) if isinstance(value, int) else (int(value[0]), int(value[1]))
    return height if height == width else [height, width]


def _timm_meta(config: dict[str, Any], path: Path) -> dict[str, Any]:
    """litevit metadata from timm's ``config.json`` fields: the variant, head, input size, channels and data config."""
    if "pretrained_cfg" in config:
        pretrained = config["pretrained_cfg"]
    else:  # timm's older single-dict form: the pretrained config at the top level
        pretrained = config
    if not isinstance(pretrained, dict):
        raise CheckpointError(f"{path}: pretrained_cfg must be a JSON object")
    variant = get_variant(_timm_variant(config.get("architecture"), path))
    args = config.get("model_args") or {}
    unknown = sorted(set(args) - _IGNORED_ARGS - {"in_chans", "img_size"})
    if unknown:
        raise CheckpointError(
            f"{path}: model_args {', '.join(map(repr, unknown))} change timm's {variant.name}; litevit builds it "
            "from in_chans and img_size only"
        )
    meta: dict[str, Any] = {"variant": variant.name}
    count = config.get("num_classes", pretrained.get("num_classes"))
    if count is not None:
        meta["num_classes"] = count
    input_size = pretrained.get("input_size")
    channels = args.get("in_chans", input_size[0] if input_size else 3)
    if channels != 3:
        meta["model_kwargs"] = {"in_chans": channels}
    size = args.get("img_size", input_size[1:] if input_size else None)
    if size is not None:
        meta["img_size"] = _size(size)
    names = config.get("label_names", pretrained.get("label_names"))
    if isinstance(names, list) and len(names) == count:
        meta["classes"] = names
    data = dict(
        img_size=meta["img_size"] if isinstance(meta.get("img_size"), int) else variant.data.img_size,
        crop_pct=pretrained.get("crop_pct", variant.data.crop_pct),
        interpolation=pretrained.get("interpolation", variant.data.interpolation),
        mean=pretrained.get("mean", variant.data.mean),
        std=pretrained.get("std", variant.data.std),
        channel_order="RGB",  # timm's pipelines feed RGB
    )
    if len(data["mean"]) == 3 and len(data["std"]) == 3:
        meta["data_config"] = data
    return meta


def weights_file(folder: Path) -> Path:
    """The folder's weights file, in timm's order of preference."""
    for name in WEIGHT_FILES:
        if (folder / name).is_file():
            return folder / name
    raise CheckpointError(f"{folder} holds {CONFIG_NAME} but no weights: expected {' or '.join(WEIGHT_FILES)}")


def read_folder(folder: str | os.PathLike) -> Checkpoint:
    """The weights and litevit metadata of a model folder (timm's ``save_for_hf`` or :func:`save_pretrained`)."""
    path = Path(folder)
    config = _read_config(path)
    own = config.get("litevit")
    if own is not None:
        if not isinstance(own, dict):
            raise CheckpointError(f"{path / CONFIG_NAME}: the 'litevit' entry must be a JSON object")
        meta = {k: own[k] for k in LITEVIT_KEYS if k in own}
        if meta.get("variant") is None:
            raise CheckpointError(f"{path / CONFIG_NAME}: the 'litevit' entry names no variant")
        kind = f"litevit folder, {own.get('layout', 'litevit')} layout"
    else:
        meta = _timm_meta(config, path / CONFIG_NAME)
        kind = "timm folder"
    check_meta(meta, str(path / CONFIG_NAME))
    file = weights_file(path)
    ckpt = read_checkpoint(file)
    state = {k: v for k, v in ckpt.state.items() if isinstance(v, torch.Tensor)}
    return Checkpoint(state, str(path), f"{file.name} ({kind})", meta)


def split_hub_name(name: str) -> tuple[str, str | None]:
    """``"hf-hub:ORG/NAME@REVISION"`` -> ``("ORG/NAME", "REVISION")`` (timm's form; the revision is optional)."""
    repo, _, revision = name.removeprefix(HUB_PREFIX).partition("@")
    parts = repo.split("/")
    if len(parts) != 2 or not all(parts):
        raise ValueError(f"{name!r}: expected {HUB_PREFIX}ORG/NAME (optionally @REVISION)")
    return repo, revision or None


def hub_folder(name: str) -> Path:
    """The local folder of ``hf-hub:ORG/NAME``: config and weights fetched through ``huggingface_hub``'s cache.

    ``huggingface_hub`` settings apply (``HF_HUB_CACHE``, ``HF_HUB_OFFLINE=1`` to use the cache only,
    ``HF_ENDPOINT``, ``HF_TOKEN``).
    """
    repo, revision = split_hub_name(name)
    hub = require("huggingface_hub", f"loading {name}")
    errors = require("huggingface_hub.errors", f"loading {name}")
    try:
        config = Path(hub.hf_hub_download(repo, CONFIG_NAME, revision=revision))
        for filename in WEIGHT_FILES:
            try:
                hub.hf_hub_download(repo, filename, revision=revision)
                break
            except errors.EntryNotFoundError:  # not in the repository (or, offline, not in the cache)
                continue
    except (OSError, ValueError, errors.EntryNotFoundError) as exc:
        detail = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else type(exc).__name__
        raise DownloadError(f"cannot fetch {name} from the Hugging Face Hub: {detail}") from None
    return config.parent
