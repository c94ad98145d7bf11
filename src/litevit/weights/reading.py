"""Reading checkpoint files safely, in the forms that official training scripts and litevit write them.

Only two readers are used: ``safetensors`` and ``torch.load(weights_only=True)``, with ``argparse.Namespace``
(the ``args`` that DeiT-style ``main.py`` and timm's CheckpointSaver store) as the one allowlisted class. Every
failure is a :class:`CheckpointError` that names the file and says what was expected; a file that pickles code or
other objects is refused with the global it names, and turning the safety off is never suggested.

Release forms understood by :func:`read_checkpoint` (``taken`` says which weights were used):

- DeiT / LeViT / EfficientViT ``main.py``: ``model``, ``model_ema``, ``optimizer``, ``lr_scheduler``, ``epoch``,
  ``scaler``, ``args``. Their evaluation loads ``model``, so ``model`` is taken.
- timm's CheckpointSaver (T2T-ViT's releases): ``state_dict``, ``state_dict_ema``, ``args``, ``metric``, ...
  T2T-ViT's ``main.py`` evaluates with ``--model-ema`` on by default, so ``state_dict_ema`` is taken when present.
- ml-cvnets: plain ``*_best.pt`` state dicts, and ``training_checkpoint_*.pt`` with ``model_state_dict``,
  ``ema_state_dict``, ``optim_state_dict``, ``gradient_scaler_state_dict``. The released models are the EMA
  weights (``checkpoint_ema_best.pt``), so ``ema_state_dict`` is taken when present.
- litevit: ``best.safetensors`` (weights + metadata, ``weights`` saying whether they are the EMA's) and ``last.pt``
  training checkpoints (``model``, ``model_ema``).
- prefixes ``module.`` (DDP) and ``_orig_mod.`` (torch.compile) are removed.

``use_ema=True`` / ``False`` insist on the EMA / non-EMA weights of a file that carries both (or says which it holds).

litevit metadata is checked as it is read (:func:`check_meta`): a field of the wrong type or out of range is a
:class:`CheckpointError` naming it.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import pickle
import pickletools
import re
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import torch

from ..data import eval_transform
from ..registry import DataConfig

# container keys -> (preferred weights, alternative): which entry the official evaluation reads
_CONTAINERS: tuple[tuple[str, str | None, str], ...] = (
    ("model", "model_ema", "DeiT-style main.py / litevit training checkpoint"),
    ("state_dict_ema", "state_dict", "timm CheckpointSaver"),
    ("ema_state_dict", "model_state_dict", "ml-cvnets training checkpoint"),
)
_EMA_NAMES = ("model_ema", "state_dict_ema", "ema_state_dict")
_PREFIXES = ("module.", "_orig_mod.")
SAFE_GLOBALS = [argparse.Namespace]  # the only class unpickled beyond tensors, containers, numbers and strings
# modules whose globals torch's weights-only unpickler rebuilds tensors and containers from: not worth naming
_WEIGHT_MODULES = ("torch", "collections", "_codecs", "argparse")
MAX_IMG_SIZE = 1024  # largest side a litevit file may record: LeViT builds its bias index in O(side^4)
META_FIELDS = ("variant", "num_classes", "img_size", "model_kwargs", "classes", "data_config")


class CheckpointError(ValueError):
    """A checkpoint that cannot be read, or does not fit the model; the message says what was expected."""


@dataclass
class Checkpoint:
    """The weights read from one file, with where they came from inside it."""

    state: dict[str, torch.Tensor]  # flat, prefixes removed, keys in the file's own layout
    source: str  # file path, or "<state dict>"
    taken: str = "state dict"  # which weights of the file were used, e.g. "state_dict_ema (timm CheckpointSaver)"
    meta: dict[str, Any] = field(default_factory=dict)  # litevit metadata: variant, num_classes, classes, ...
    ema: bool | None = None  # whether ``state`` is an EMA; None: the file does not say


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0][:300] if text else type(exc).__name__


def _short(value: Any) -> str:
    text = json.dumps(value) if not isinstance(value, str) else repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


# ------------------------------------------------------------------------------------------------ litevit metadata


def _size_ok(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and 1 <= value <= MAX_IMG_SIZE


def _number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def _data_config_problem(value: Any) -> str | None:
    """What is wrong with a ``data_config`` dict, or None."""
    if not isinstance(value, dict):
        return "a JSON object of DataConfig fields"
    known = {f.name for f in dataclasses.fields(DataConfig)}
    unknown = sorted(set(value) - known)
    if unknown:
        return f"DataConfig fields only ({', '.join(sorted(known))}), not {', '.join(map(repr, unknown))}"
    if "img_size" in value and not _size_ok(value["img_size"]):
        return f"img_size an integer from 1 to {MAX_IMG_SIZE}, not {_short(value['img_size'])}"
    for name in ("mean", "std"):
        if name in value:
            triple = value[name]
            if not (isinstance(triple, list | tuple) and len(triple) == 3 and all(_number(v) for v in triple)):
                return f"{name} three finite numbers, not {_short(triple)}"
    if "std" in value and min(value["std"]) <= 0:
        return f"std positive, not {_short(value['std'])}"
    if "crop_pct" in value and not _number(value["crop_pct"]):
        return f"crop_pct a number in (0, 1], not {_short(value['crop_pct'])}"
    for name in ("interpolation", "channel_order"):
        if name in value and not isinstance(value[name], str):
            return f"{name} a string, not {_short(value[name])}"
    try:  # the preprocessing's own checks: interpolation, channel order, crop_pct range
        eval_transform(DataConfig(**{k: tuple(v) if isinstance(v, list) else v for k, v in value.items()}), 32)
    except ValueError as exc:
        return f"a preprocessing litevit can run ({_one_line(exc)})"
    return None


def check_meta(meta: dict[str, Any], source: str) -> None:
    """Refuse litevit metadata that cannot be right, naming the field (one line)."""

    def bad(name: str, expected: str) -> CheckpointError:
        value = _short(meta[name])
        return CheckpointError(f"{source}: litevit metadata {name}={value} is invalid: expected {expected}")

    if "variant" in meta and not (isinstance(meta["variant"], str) and meta["variant"]):
        raise bad("variant", "a registered model name")
    count = meta.get("num_classes")
    if "num_classes" in meta and not (isinstance(count, int) and not isinstance(count, bool) and count >= 1):
        raise bad("num_classes", "a positive integer")
    if "classes" in meta:
        names = meta["classes"]
        if not (isinstance(names, list) and all(isinstance(n, str) for n in names) and len(set(names)) == len(names)):
            raise bad("classes", "a list of distinct class names")  # their count is checked against the head
    if "img_size" in meta:
        size = meta["img_size"]
        if not (_size_ok(size) or (isinstance(size, list) and len(size) == 2 and all(map(_size_ok, size)))):
            raise bad("img_size", f"an integer or [height, width], each from 1 to {MAX_IMG_SIZE}")
    if "model_kwargs" in meta and not isinstance(meta["model_kwargs"], dict):
        raise bad("model_kwargs", "a JSON object of model config fields")
    if "data_config" in meta and (problem := _data_config_problem(meta["data_config"])) is not None:
        raise bad("data_config", problem)


# ---------------------------------------------------------------------------------------------------------- readers


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


_STRING_OPS = {"SHORT_BINUNICODE", "BINUNICODE", "BINUNICODE8", "UNICODE", "STRING", "BINSTRING", "SHORT_BINSTRING"}


def _globals_in(stream: IO[bytes]) -> list[str]:
    """``module.name`` of every global the pickles in ``stream`` refer to (GLOBAL and STACK_GLOBAL opcodes)."""
    found: list[str] = []
    for _ in range(8):  # legacy torch.save files hold a few pickles back to back
        pushed: list[Any] = []  # recent values, enough to resolve STACK_GLOBAL's two strings
        memo: dict[int, Any] = {}
        try:
            for op, arg, _pos in pickletools.genops(stream):
                if op.name == "GLOBAL":  # protocols 0-2 name Python 3's builtins by their Python 2 name
                    found.append(".".join(str(arg).split(" ", 1)).replace("__builtin__.", "builtins.", 1))
                elif op.name == "STACK_GLOBAL" and len(pushed) >= 2:
                    found.append(f"{pushed[-2]}.{pushed[-1]}")
                elif op.name == "MEMOIZE":
                    memo[len(memo)] = pushed[-1] if pushed else None
                elif op.name in ("PUT", "BINPUT", "LONG_BINPUT"):
                    memo[int(arg)] = pushed[-1] if pushed else None
                elif op.name in ("GET", "BINGET", "LONG_BINGET"):
                    pushed.append(memo.get(int(arg)))
                else:
                    pushed.append(arg if op.name in _STRING_OPS else None)
                del pushed[:-2]
        except (ValueError, EOFError, pickle.UnpicklingError):
            break
    return found


def _refused_globals(path: Path) -> list[str]:
    """The globals a pickled file refers to beyond torch's tensor and container rebuilders, in order, once each."""
    try:
        if zipfile.is_zipfile(path):
            with zipfile.ZipFile(path) as archive:
                name = next((n for n in archive.namelist() if n.endswith("data.pkl")), None)
                if name is None:
                    return []
                with archive.open(name) as stream:
                    found = _globals_in(stream)
        else:
            with open(path, "rb") as stream:
                found = _globals_in(stream)
    except (OSError, zipfile.BadZipFile):
        return []
    allowed = {f"{c.__module__}.{c.__qualname__}" for c in SAFE_GLOBALS}
    return list(dict.fromkeys(g for g in found if g not in allowed and g.split(".", 1)[0] not in _WEIGHT_MODULES))


def _refusal_reason(path: Path, exc: pickle.UnpicklingError) -> str:
    """What torch's weights-only unpickler refused, without its advice to turn the safety off."""
    text = str(exc)
    named = re.findall(r"GLOBAL ([\w.]+) (?:was not an allowed global|whose module)", text)
    names = _refused_globals(path) or list(dict.fromkeys(named))
    if names:
        return f"it refers to the Python global{'s' if len(names) > 1 else ''} {', '.join(names[:4])}"
    if m := re.search(r"Unsupported operand (\d+)", text):
        code = chr(int(m[1]))
        op = next((o.name for o in pickletools.opcodes if o.code == code), m[1])
        return f"it uses the pickle opcode {op}, which torch.save never writes"
    return "it holds objects other than tensors, containers, numbers and strings"


def read_torch_file(path: Path) -> Any:
    """``torch.load(weights_only=True)`` with the allowlist; every failure is a :class:`CheckpointError`."""
    try:
        with torch.serialization.safe_globals(SAFE_GLOBALS):
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        raise CheckpointError(
            f"{path} cannot be read safely: torch.load(weights_only=True) refused it, as {_refusal_reason(path, exc)}; "
            "litevit unpickles tensors, containers, numbers, strings and argparse.Namespace only, never code "
            "(expected a .pth/.pt/.bin file of weights written by torch.save, or a .safetensors file)"
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


def _unwrap(obj: dict[str, Any], use_ema: bool | None) -> tuple[dict[str, Any], str, bool | None]:
    """The weights dict inside a training-script container, which one was taken, and whether it is an EMA."""
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
        return obj[key], f"{key} ({kind})", key in _EMA_NAMES
    return obj, "state dict", None


def read_checkpoint(source: str | os.PathLike | dict[str, Any], use_ema: bool | None = None) -> Checkpoint:
    """Read weights from a file (or take a dict), unwrapping training-script containers.

    ``use_ema=None`` takes the weights the official evaluation of that release form uses (see the module
    docstring); ``True`` / ``False`` insist on EMA / non-EMA weights where the file carries both or says which.
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
        meta = {k: obj[k] for k in META_FIELDS if k in obj}
    check_meta(meta, name)
    try:
        weights, taken, ema = _unwrap(obj, use_ema)
    except CheckpointError as exc:
        raise CheckpointError(f"{name}: {exc}") from None
    if ema is None and meta.get("weights") in ("ema", "model"):  # best.safetensors records which weights won
        ema, taken = meta["weights"] == "ema", f"{meta['weights']} weights (litevit best.safetensors)"
        if use_ema is not None and use_ema != ema:
            raise CheckpointError(
                f"{name} holds only the {'EMA' if ema else 'non-EMA'} weights (its metadata says weights="
                f"{meta['weights']!r}); use_ema={use_ema} asks for the others"
            )
    state = {_strip(k): v for k, v in weights.items() if isinstance(v, torch.Tensor)}
    if not state:
        raise CheckpointError(
            f"{name} is not a checkpoint: no tensors found (top-level keys: {', '.join(map(str, sorted(obj)[:12]))})"
        )
    return Checkpoint(state, name, taken, meta, ema)
