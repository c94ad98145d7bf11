"""Reading checkpoints safely and loading them into litevit models, whatever layout they come in."""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

import torch
from torch import nn

from . import convert
from .registry import build_config, get_variant, list_models

log = logging.getLogger(__name__)

# where training scripts nest the weights, in the order they are preferred
_NESTED_KEYS = ("model", "state_dict", "model_state", "module")
_EMA_KEYS = ("model_ema", "state_dict_ema", "ema")


class CheckpointError(ValueError):
    """A checkpoint that cannot be read, or does not fit the model."""


def read_state_dict(source: str | os.PathLike | dict[str, Any], use_ema: bool = False) -> dict[str, torch.Tensor]:
    """A flat ``{key: tensor}`` dict from a ``.pth``/``.pt``/``.bin`` (``weights_only``) or ``.safetensors`` file."""
    if isinstance(source, dict):
        obj: Any = source
    else:
        path = Path(source)
        if not path.is_file():
            raise CheckpointError(f"checkpoint file not found: {path}")
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            obj = load_file(str(path), device="cpu")
        else:
            try:
                obj = torch.load(path, map_location="cpu", weights_only=True)
            except Exception as exc:  # noqa: BLE001 - re-raised with the file named
                raise CheckpointError(
                    f"cannot read {path} as a PyTorch checkpoint with weights_only=True "
                    f"(expected a .pth/.pt state dict or a .safetensors file): {exc}"
                ) from exc
    if not isinstance(obj, dict):
        raise CheckpointError(f"expected a state dict (a dict of tensors), got {type(obj).__name__}")
    # EMA weights when asked, or when they are the only weights the file holds
    for key in (_EMA_KEYS if use_ema else ()) + _NESTED_KEYS + _EMA_KEYS:
        if isinstance(obj.get(key), dict):
            obj = obj[key]
            break
    state = {k.removeprefix("module."): v for k, v in obj.items() if isinstance(v, torch.Tensor)}
    if not state:
        raise CheckpointError(f"no tensors found in the checkpoint; its top-level keys are {sorted(obj)[:20]}")
    return state


def _shapes(state: dict[str, torch.Tensor], skip: tuple[str, ...]) -> dict[str, tuple[int, ...]]:
    return {k: tuple(v.shape) for k, v in state.items() if not k.startswith(skip)}


def _guess_variant(state: dict[str, torch.Tensor], model: nn.Module) -> str | None:
    """The registered variant of the model's family whose parameters the checkpoint matches, if any."""
    family = type(model).__module__.rsplit(".", 1)[-1]
    skip = tuple(getattr(model, "head_prefixes", ()))
    wanted = _shapes(state, skip)
    img_size = getattr(getattr(model, "config", None), "img_size", None)
    for name in list_models():
        if get_variant(name).family != family:
            continue
        with torch.device("meta"):
            candidate = get_variant(name).builder(build_config(name, img_size=img_size))
        if _shapes(candidate.state_dict(), skip) == wanted:
            return name
    return None


def load_checkpoint(
    model: nn.Module, source: str | os.PathLike | dict[str, Any], *, use_ema: bool = False
) -> nn.Module:
    """Load official, timm or litevit weights into ``model`` (layout detected from the keys).

    A classifier of another size is dropped (logged) and the model keeps its fresh head; resolution-dependent
    tables are resampled by the model's ``adapt_checkpoint`` when it has one. Anything else that does not fit
    raises :class:`CheckpointError` listing the missing and unexpected keys.
    """
    family = type(model).__module__.rsplit(".", 1)[-1]
    state, layout = convert.to_litevit(read_state_dict(source, use_ema=use_ema), family)
    adapt = getattr(model, "adapt_checkpoint", None)
    if callable(adapt):
        state = adapt(state)
    own = model.state_dict()
    head_prefixes = tuple(getattr(model, "head_prefixes", ()))
    head_mismatch = [k for k in state if k.startswith(head_prefixes) and k in own and state[k].shape != own[k].shape]
    if head_mismatch:
        log.info(
            "checkpoint classifier does not match num_classes; keeping a fresh head (%s)", ", ".join(head_mismatch)
        )
        state = {k: v for k, v in state.items() if not k.startswith(head_prefixes)}
        state.update({k: v for k, v in own.items() if k.startswith(head_prefixes)})
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    mismatched = sorted(
        f"{k}: checkpoint {tuple(state[k].shape)} vs model {tuple(own[k].shape)}"
        for k in set(own) & set(state)
        if state[k].shape != own[k].shape
    )
    if missing or unexpected or mismatched:
        name = getattr(model, "variant_name", type(model).__name__)
        lines = [f"checkpoint ({layout} layout) does not fit {name}"]
        guess = _guess_variant(state, model)
        if guess is not None and guess != name:
            lines.append(f"it looks like a {guess} checkpoint: create_model({guess!r}, checkpoint=...)")
        for title, keys in (("missing keys", missing), ("unexpected keys", unexpected), ("shape mismatch", mismatched)):
            if keys:
                shown = ", ".join(keys[:12]) + (f", ... ({len(keys) - 12} more)" if len(keys) > 12 else "")
                lines.append(f"{title} ({len(keys)}): {shown}")
        raise CheckpointError("\n  ".join(lines))
    model.load_state_dict(state, strict=True)
    return model
