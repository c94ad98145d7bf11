"""Reading checkpoint files safely, in the forms that official training scripts and litevit write them.

Only two readers are used: ``safetensors`` and ``torch.load(weights_only=True)``, with ``argparse.Namespace``
(the ``args`` that DeiT-style ``main.py`` and timm's CheckpointSaver store) as the one allowlisted class. Every
failure is a :class:`CheckpointError` that names the file and says what was expected.

Release forms understood by :func:`read_checkpoint` (``taken`` says which weights were used):

- DeiT / LeViT / EfficientViT ``main.py``: ``model``, ``model_ema``, ``optimizer``, ``lr_scheduler``, ``epoch``,
  ``scaler``, ``args``. Their evaluation loads ``model``, so ``model`` is taken.
- timm's CheckpointSaver (T2T-ViT's releases): ``state_dict``, ``state_dict_ema``, ``args``, ``metric``, ...
  T2T-ViT's ``main.py`` evaluates with ``--model-ema`` on by default, so ``state_dict_ema`` is taken when present.
- ml-cvnets: plain ``*_best.pt`` state dicts, and ``training_checkpoint_*.pt`` with ``model_state_dict``,
  ``ema_state_dict``, ``optim_state_dict``, ``gradient_scaler_state_dict``. The released models are the EMA
  weights (``checkpoint_ema_best.pt``), so ``ema_state_dict`` is taken when present.
- litevit: ``best.safetensors`` (weights + metadata) and ``last.pt`` training checkpoints (``model``).
- prefixes ``module.`` (DDP) and ``_orig_mod.`` (torch.compile) are removed.
"""

from __future__ import annotations

import argparse
import json
import os
import pickle
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

# container keys -> (preferred weights, alternative): which entry the official evaluation reads
_CONTAINERS: tuple[tuple[str, str | None, str], ...] = (
    ("model", "model_ema", "DeiT-style main.py / litevit training checkpoint"),
    ("state_dict_ema", "state_dict", "timm CheckpointSaver"),
    ("ema_state_dict", "model_state_dict", "ml-cvnets training checkpoint"),
)
_EMA_NAMES = ("model_ema", "state_dict_ema", "ema_state_dict")
_PREFIXES = ("module.", "_orig_mod.")
SAFE_GLOBALS = [argparse.Namespace]  # the only class unpickled beyond tensors, containers, numbers and strings


class CheckpointError(ValueError):
    """A checkpoint that cannot be read, or does not fit the model; the message says what was expected."""


@dataclass
class Checkpoint:
    """The weights read from one file, with where they came from inside it."""

    state: dict[str, torch.Tensor]  # flat, prefixes removed, keys in the file's own layout
    source: str  # file path, or "<state dict>"
    taken: str = "state dict"  # which weights of the file were used, e.g. "state_dict_ema (timm CheckpointSaver)"
    meta: dict[str, Any] = field(default_factory=dict)  # litevit metadata: variant, num_classes, classes, ...


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0][:300] if text else type(exc).__name__


def _read_safetensors(path: Path) -> tuple[dict[str, Any], dict[str, Any]]:
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(path), framework="pt") as handle:
            raw = handle.metadata() or {}
            tensors = {key: handle.get_tensor(key) for key in handle.keys()}  # noqa: SIM118 - not a dict
    except (SafetensorError, OSError, ValueError, RuntimeError) as exc:
        raise CheckpointError(
            f"{path} is not a readable .safetensors file (truncated or corrupt?): {_one_line(exc)}"
        ) from None
    meta: dict[str, Any] = {}
    if raw.get("format") == "litevit":
        meta["variant"] = raw.get("variant")
        for key, value in raw.items():
            if key not in ("format", "variant"):
                try:
                    meta[key] = json.loads(value)
                except json.JSONDecodeError:
                    raise CheckpointError(f"{path} has unreadable litevit metadata {key!r}: {value[:80]!r}") from None
    return tensors, meta


def read_torch_file(path: Path) -> Any:
    """``torch.load(weights_only=True)`` with the allowlist; every failure is a :class:`CheckpointError`."""
    try:
        with torch.serialization.safe_globals(SAFE_GLOBALS):
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        text = str(exc)
        detail = text.split("WeightsUnpickler error:", 1)[-1].strip().splitlines()[0] if text else "unknown"
        raise CheckpointError(
            f"{path} cannot be read safely: torch.load(weights_only=True) refused it ({detail}); litevit reads "
            "tensors, containers, numbers, strings and argparse.Namespace only, never arbitrary pickled objects "
            "(expected a .pth/.pt/.bin file written by torch.save, or a .safetensors file)"
        ) from None
    except Exception as exc:  # noqa: BLE001 - whatever torch.load raises on a damaged file, the user gets one line
        raise CheckpointError(
            f"{path} is truncated or corrupt, or not a PyTorch checkpoint (expected a .pth/.pt/.bin file written by "
            f"torch.save, or a .safetensors file): {_one_line(exc)}"
        ) from None


def _strip(key: str) -> str:
    changed = True
    while changed:
        changed = False
        for prefix in _PREFIXES:
            if key.startswith(prefix):
                key, changed = key[len(prefix) :], True
    return key


def _unwrap(obj: dict[str, Any], use_ema: bool | None) -> tuple[dict[str, Any], str]:
    """The weights dict inside a training-script container, and a description of which one was taken."""
    for preferred, other, kind in _CONTAINERS:
        present = [k for k in (preferred, other) if k is not None and isinstance(obj.get(k), dict)]
        if not present:
            continue
        if use_ema is None:
            key = present[0]
        else:
            wanted = [k for k in present if (k in _EMA_NAMES) == use_ema]
            if not wanted:
                kind_wanted = "EMA" if use_ema else "non-EMA"
                raise CheckpointError(f"the checkpoint ({kind}) has no {kind_wanted} weights; it holds {present}")
            key = wanted[0]
        return obj[key], f"{key} ({kind})"
    return obj, "state dict"


def read_checkpoint(source: str | os.PathLike | dict[str, Any], use_ema: bool | None = None) -> Checkpoint:
    """Read weights from a file (or take a dict), unwrapping training-script containers.

    ``use_ema=None`` takes the weights the official evaluation of that release form uses (see the module
    docstring); ``True`` / ``False`` insist on EMA / non-EMA weights.
    """
    meta: dict[str, Any] = {}
    if isinstance(source, dict):
        obj: Any = source
        name = "<state dict>"
    else:
        path = Path(source)
        name = str(path)
        if not path.exists():
            raise CheckpointError(f"checkpoint file not found: {path}")
        if not path.is_file():
            raise CheckpointError(f"{path} is not a file; expected a .pth/.pt/.bin or .safetensors checkpoint")
        if path.suffix == ".safetensors":
            obj, meta = _read_safetensors(path)
        else:
            obj = read_torch_file(path)
    if not isinstance(obj, dict):
        raise CheckpointError(f"{name} is not a checkpoint: expected a dict of tensors, got {type(obj).__name__}")
    if "variant" in obj and isinstance(obj.get("model"), dict):  # litevit's own training checkpoint (last.pt)
        meta = {
            k: obj[k]
            for k in ("variant", "num_classes", "img_size", "model_kwargs", "classes", "data_config")
            if k in obj
        }
    weights, taken = _unwrap(obj, use_ema)
    state = {_strip(k): v for k, v in weights.items() if isinstance(v, torch.Tensor)}
    if not state:
        raise CheckpointError(
            f"{name} is not a checkpoint: no tensors found (top-level keys: {', '.join(map(str, sorted(obj)[:12]))})"
        )
    return Checkpoint(state, name, taken, meta)
