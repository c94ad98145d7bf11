"""The one loading layer: from a name, a published weights tag, a checkpoint file or a litevit file to a model.

Every entry point (``create_model``, :func:`load`, predict, eval, export, training and the distillation teacher)
comes through here, so the head, the class names, the input size and the preprocessing are decided in one place:

- the checkpoint's head is kept unless ``num_classes`` asks for another size (then it is replaced, with a WARNING);
- class names come from the file's litevit metadata, or are ImageNet-1k's for a 1000-class ImageNet head;
- the input size and data config come from the weights record or the file's metadata, unless ``img_size`` is
  given; resolution-dependent tables trained at another size are resampled, with a WARNING.

Layering: registry (records) <- weights (published checkpoints) <- hub (download) <- checkpoint (reading) <- here.
"""

from __future__ import annotations

import dataclasses
import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..models.features import features_only as feature_extractor
from ..registry import DataConfig, Variant, families, get_variant, list_models
from . import hub
from .checkpoint import Checkpoint, CheckpointError, read_checkpoint
from .records import Weights, get_weights, split_name

log = logging.getLogger(__name__)

Source = str | os.PathLike | dict[str, Any] | Checkpoint


@dataclass(frozen=True)
class ModelInfo:
    """What a built model is and expects; attached to every model as ``model.model_info``."""

    variant: str
    num_classes: int
    class_names: tuple[str, ...] | None  # None: unnamed classes (``class_<i>``)
    img_size: int | tuple[int, int]
    data: DataConfig  # preprocessing the weights expect
    weights: str | None = None  # "variant.tag", a file path, "<state dict>", or None for random weights
    taken: str | None = None  # which weights of the file were loaded
    # published weights: True when checked against a published hash, False when only against the sha256 recorded at
    # their first download (trust on first use: nothing published to verify them against); None for other sources
    weights_verified: bool | None = None


def model_info(model: nn.Module) -> ModelInfo:
    """``model.model_info``, or what the registry says of a model built without the loading layer."""
    info = getattr(model, "model_info", None)
    if isinstance(info, ModelInfo):
        return info
    name, config = getattr(model, "variant_name", None), getattr(model, "config", None)
    if name is None or config is None:
        raise ValueError("the model was not built by litevit.create_model; its classes and data config are unknown")
    data = get_variant(name).data
    if isinstance(config.img_size, int):
        data = dataclasses.replace(data, img_size=config.img_size)
    return ModelInfo(name, int(config.num_classes), None, config.img_size, data)


def _head_classes(variant: Variant, state: dict[str, torch.Tensor]) -> int | None:
    """Classes of the checkpoint's classifier: rows of the last 2-D weight under the model's first head prefix."""
    prefix = getattr(variant.builder, "head_prefixes", ("head.",))[0]
    rows = [v.shape[0] for k, v in state.items() if k.startswith(prefix) and k.endswith("weight") and v.ndim == 2]
    return int(rows[-1]) if rows else None


def _convert(variant: Variant, state: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], str]:
    """Rename a checkpoint into litevit's layout with the family's converter; returns it and the layout found."""
    converter = variant.converter
    layout = converter.detect(state) if converter is not None else None
    if layout is None:
        return dict(state), "litevit"
    return converter.to_litevit(state, layout), layout


def _shapes(state: dict[str, torch.Tensor], skip: tuple[str, ...]) -> dict[str, tuple[int, ...]]:
    return {k: tuple(v.shape) for k, v in state.items() if not k.startswith(skip)}


def identify(state: dict[str, torch.Tensor]) -> tuple[str, str] | None:
    """The registered variant whose trunk the checkpoint fits exactly, and the layout it is in, if any."""
    for family in families():
        for name in list_models():
            variant = get_variant(name)
            if variant.family != family:
                continue
            converted, layout = _convert(variant, state)
            with torch.device("meta"):
                candidate = variant.build()
            skip = tuple(getattr(candidate, "head_prefixes", ()))
            adapt = getattr(candidate, "adapt_checkpoint", None)
            try:
                adapted = adapt(converted) if callable(adapt) else converted
            except (ValueError, RuntimeError):  # a table that cannot be resampled into this candidate
                continue
            if _shapes(adapted, skip) == _shapes(candidate.state_dict(), skip):
                return name, layout
    return None


def _listing(title: str, keys: list[str]) -> str:
    shown = ", ".join(keys[:8]) + (f", ... ({len(keys) - 8} more)" if len(keys) > 8 else "")
    return f"{title} ({len(keys)}): {shown}"


def _fit(model: nn.Module, ckpt: Checkpoint, keep_head: bool) -> None:
    """Load converted, adapted weights into ``model``; every misfit is a one-line :class:`CheckpointError`."""
    variant = get_variant(model.variant_name)
    state, layout = _convert(variant, ckpt.state)
    adapt = getattr(model, "adapt_checkpoint", None)
    if callable(adapt):
        before = {k: tuple(v.shape) for k, v in state.items()}
        try:
            state = adapt(state)
        except ValueError as exc:
            raise CheckpointError(f"{ckpt.source}: {exc}") from None
        resampled = sorted(k for k, v in state.items() if k in before and tuple(v.shape) != before[k])
        if resampled:
            log.warning(
                "%s was trained at another resolution: resampled %d table(s) to img_size=%s (%s)",
                ckpt.source,
                len(resampled),
                model.config.img_size,
                ", ".join(resampled[:3]) + (", ..." if len(resampled) > 3 else ""),
            )
    own = model.state_dict()
    head_prefixes = tuple(getattr(model, "head_prefixes", ()))
    if not keep_head:
        state = {k: v for k, v in state.items() if not k.startswith(head_prefixes)}
        state.update({k: v for k, v in own.items() if k.startswith(head_prefixes)})
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    mismatched = sorted(
        f"{k} {tuple(state[k].shape)} vs {tuple(own[k].shape)}"
        for k in set(own) & set(state)
        if state[k].shape != own[k].shape
    )
    if missing or unexpected or mismatched:
        parts = [f"{ckpt.source} ({layout} layout) does not fit {variant.name}"]
        guess = identify(ckpt.state)
        if guess is not None and guess[0] != variant.name:
            other = get_variant(guess[0])
            family = "" if other.family == variant.family else f", a {other.family} model"
            parts.append(f"it looks like {guess[0]} ({guess[1]} layout{family}): create_model({guess[0]!r}, ...)")
        for title, keys in (("missing keys", missing), ("unexpected keys", unexpected), ("shape mismatch", mismatched)):
            if keys:
                parts.append(_listing(title, keys))
        raise CheckpointError("; ".join(parts))
    model.load_state_dict(state, strict=True)


def load_checkpoint(model: nn.Module, source: Source, *, use_ema: bool | None = None) -> nn.Module:
    """Load official, timm or litevit weights into a model built by :func:`create_model` (head sizes must agree)."""
    if not hasattr(model, "variant_name"):
        raise ValueError("load_checkpoint needs a model built by litevit.create_model")
    ckpt = source if isinstance(source, Checkpoint) else read_checkpoint(source, use_ema=use_ema)
    _fit(model, ckpt, keep_head=True)
    return model


def _imagenet_names() -> tuple[str, ...]:
    from ..data import imagenet_classes

    return imagenet_classes()


def as_tuples(value: Any) -> Any:
    """JSON lists back to the tuples that frozen model configs use."""
    if isinstance(value, list):
        return tuple(as_tuples(v) for v in value)
    return value


def _resolve(
    name: str, pretrained: bool, weights: str | None, checkpoint: Source | None, use_ema: bool | None
) -> tuple[Variant, Weights | None, Checkpoint | None]:
    variant_name, tag = split_name(name)
    variant = get_variant(variant_name)
    if tag is not None and weights is not None and tag != weights:
        raise ValueError(f"{name!r} names weights {tag!r} but weights={weights!r} was also given")
    record = None
    if tag is not None or weights is not None or pretrained:
        if checkpoint is not None:
            raise ValueError("give either published weights (pretrained / a tag / weights=) or checkpoint=, not both")
        record = get_weights(variant_name, tag or weights)
        checkpoint = hub.fetch(record)
    if checkpoint is None or isinstance(checkpoint, Checkpoint):
        return variant, record, checkpoint
    return variant, record, read_checkpoint(checkpoint, use_ema=use_ema)


def create_model(
    name: str,
    *,
    pretrained: bool = False,
    weights: str | None = None,
    checkpoint: Source | None = None,
    num_classes: int | None = None,
    img_size: int | tuple[int, int] | None = None,
    use_ema: bool | None = None,
    features_only: bool = False,
    out_indices: int | Sequence[int] | None = None,
    **overrides: Any,
) -> nn.Module:
    """Build a registered model, with published weights or a checkpoint (official, timm or litevit layout).

    ``name`` may carry a weights tag (``"mobilevitv2_150.cvnets_in22k_ft_in1k_384"``); ``pretrained=True`` loads the
    variant's default weights; ``weights="tag"`` picks others; ``checkpoint`` is a file or a state dict. Without
    ``num_classes`` the checkpoint's head (and class names) are kept; a different ``num_classes`` replaces the head
    with a WARNING. Without ``img_size`` the model is built at the resolution the weights were trained at.
    ``features_only`` returns the loaded classifier's feature extractor (:func:`litevit.models.features.features_only`,
    maps at ``out_indices``): the head's weights are dropped, nothing else.
    """
    variant, record, ckpt = _resolve(name, pretrained, weights, checkpoint, use_ema)
    meta = ckpt.meta if ckpt is not None else {}
    if meta.get("variant") not in (None, variant.name):
        raise CheckpointError(
            f"{ckpt.source} is a litevit {meta['variant']} file, not {variant.name}: use create_model("
            f"{meta['variant']!r}, ...) or litevit.load({ckpt.source!r})"
        )
    for key, value in meta.get("model_kwargs", {}).items():
        overrides.setdefault(key, as_tuples(value))

    trained_classes = meta.get("num_classes") or (_head_classes(variant, ckpt.state) if ckpt is not None else None)
    keep_head = num_classes is None or trained_classes is None or num_classes == trained_classes
    if not keep_head:
        log.warning(
            "%s has a %d-class head; num_classes=%d replaces it with a fresh, untrained head",
            ckpt.source,
            trained_classes,
            num_classes,
        )
    classes = num_classes if num_classes is not None else trained_classes

    data = variant.data
    if record is not None:
        data = record.data
    elif "data_config" in meta:
        data = DataConfig(**{k: as_tuples(v) for k, v in meta["data_config"].items()})
    trained_size = as_tuples(meta.get("img_size", data.img_size if (record or meta) else None))
    size = img_size if img_size is not None else trained_size
    if size is not None and isinstance(size, int):
        data = dataclasses.replace(data, img_size=size)

    model = variant.build(num_classes=classes, img_size=size, **overrides)
    if ckpt is not None:
        _fit(model, ckpt, keep_head)

    names = None
    if keep_head and ckpt is not None:
        listed = meta.get("classes")
        if listed is not None and len(listed) == model.config.num_classes:
            names = tuple(listed)
        elif model.config.num_classes == 1000 and (record is not None or not meta):
            names = _imagenet_names()
    source = record.name if record is not None else (ckpt.source if ckpt is not None else None)
    model.model_info = ModelInfo(
        variant.name,
        int(model.config.num_classes),
        names,
        model.config.img_size,
        data,
        source,
        ckpt.taken if ckpt is not None else None,
        hub.verified(record) if record is not None else None,
    )
    if ckpt is not None:
        log.info("loaded %s into %s (%s)", source, variant.name, ckpt.taken)
    if features_only:
        return feature_extractor(model, out_indices)
    return model


def load(source: str | os.PathLike, **kwargs: Any) -> nn.Module:
    """A model from a litevit file alone (``best.safetensors``, ``last.pt``) or from a name with published weights.

    A file rebuilds its variant, classes, class names, input size and data config from its own metadata; a name
    (``"levit_256"`` or ``"levit_256.fb_dist_in1k"``) loads the published weights. Keyword arguments go to
    :func:`create_model`.
    """
    path = Path(source)
    if path.is_file():
        ckpt = read_checkpoint(path)
        variant = ckpt.meta.get("variant")
        if not variant:
            raise CheckpointError(
                f"{path} has no litevit metadata naming its model; give the model name: "
                f"create_model(NAME, checkpoint={str(path)!r})"
            )
        return create_model(variant, checkpoint=ckpt, **kwargs)
    name = str(source)
    if split_name(name)[0] in list_models():
        return create_model(name, pretrained=True, **kwargs)
    raise CheckpointError(
        f"{source} is neither a file nor a registered model name (with an optional .tag); see `litevit list` "
        "and `litevit weights`"
    )
