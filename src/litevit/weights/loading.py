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
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..models.features import FeatureExtractor
from ..models.features import features_only as feature_extractor
from ..registry import DataConfig, Variant, families, get_variant, list_models
from . import folder, hub
from .checks import check_values, misfit
from .reading import Checkpoint, CheckpointError, _one_line, _short, read_checkpoint
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
    # published weights: how the file was verified: "sha256" (the published hash), "sha256-prefix" (a published
    # prefix of it: LeViT's 8 hex digits), "first-use" (the sha256 recorded at the first download: nothing published
    # to verify it against); None for other sources
    verification: str | None = None

    @property
    def weights_verified(self) -> bool | None:
        """Deprecated: whether the weights were checked against a published hash (read :attr:`verification`)."""
        warnings.warn("ModelInfo.weights_verified is deprecated; read ModelInfo.verification", DeprecationWarning, 2)
        return None if self.verification is None else self.verification != "first-use"


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


# ------------------------------------------------------------------------------------------ layouts and identification


def _convert(
    variant: Variant, state: dict[str, torch.Tensor], source: str = "the checkpoint"
) -> tuple[dict[str, torch.Tensor], str]:
    """Rename a checkpoint into litevit's layout with the family's converter; returns it and the layout found. A key
    the layout's key table does not know is a :class:`CheckpointError` naming ``source`` and the key."""
    converter = variant.converter
    layout = converter.detect(state) if converter is not None else None
    if layout is None:
        return dict(state), "litevit"
    try:
        return converter.to_litevit(state, layout), layout
    except ValueError as exc:
        raise CheckpointError(f"{source}: {exc} (a {variant.family} checkpoint in the {layout} layout)") from None


def _head_classes(variant: Variant, state: dict[str, torch.Tensor]) -> int | None:
    """Classes of a converted checkpoint's classifier: rows of the last 2-D weight under the first head prefix."""
    prefix = getattr(variant.builder, "head_prefixes", ("head.",))[0]
    rows = [v.shape[0] for k, v in state.items() if k.startswith(prefix) and k.endswith("weight") and v.ndim == 2]
    return int(rows[-1]) if rows else None


def _shapes(state: dict[str, torch.Tensor], skip: tuple[str, ...]) -> dict[str, tuple[int, ...]]:
    return {k: tuple(v.shape) for k, v in state.items() if not k.startswith(skip)}


def identify(state: dict[str, torch.Tensor]) -> tuple[str, str] | None:
    """The registered variant whose trunk the checkpoint fits exactly, and the layout it is in, if any."""
    for family in families():
        for name in list_models():
            variant = get_variant(name)
            if variant.family != family:
                continue
            try:
                converted, layout = _convert(variant, state)
            except CheckpointError:  # a key this family's layout does not have
                continue
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


# ------------------------------------------------------------------------------------- fitting weights into a module


def _whole(model: nn.Module) -> nn.Module:
    """The whole classifier ``model`` comes from: itself, or for a features model (head and unused layers pruned) one
    of the same config on the meta device, whose keys and ``adapt_checkpoint`` a classifier checkpoint is read by."""
    if not isinstance(model, FeatureExtractor):
        return model
    with torch.device("meta"):  # a 1-class head, so that the head's keys exist
        return get_variant(model.variant_name).builder(dataclasses.replace(model.config, num_classes=1))


def _adapt_input_channels(
    model: nn.Module, state: dict[str, torch.Tensor], source: str, warn: bool
) -> dict[str, torch.Tensor]:
    """RGB first-layer weights fitted to the model's ``in_chans`` by the model's ``adapt_input_channels`` (timm's
    ``adapt_input_conv`` rule), with a WARNING naming them."""
    adapt = getattr(model, "adapt_input_channels", None)
    if not callable(adapt):
        return state
    try:
        adapted = adapt(state)
    except ValueError as exc:
        raise CheckpointError(f"{source}: {exc}") from None
    changed = sorted(k for k, v in adapted.items() if k in state and v.shape != state[k].shape)
    if changed and warn:
        log.warning("%s: RGB weights adapted to in_chans=%d (%s)", source, model.config.in_chans, ", ".join(changed))
    return adapted


def _fit(
    model: nn.Module,
    ckpt: Checkpoint,
    keep_head: bool,
    converted: tuple[dict[str, torch.Tensor], str] | None = None,
    load: bool = True,
) -> None:
    """Load converted, adapted weights into ``model``; every misfit is a one-line :class:`CheckpointError`.

    ``keep_head=False`` leaves the model's own head as built. ``load=False`` checks only (``model`` may be on meta).
    """
    variant = get_variant(model.variant_name)
    state, layout = converted if converted is not None else _convert(variant, ckpt.state, ckpt.source)
    state = _adapt_input_channels(model, state, ckpt.source, load)
    whole = _whole(model)
    adapt = getattr(whole, "adapt_checkpoint", None)
    built: set[str] = set()  # keys the model fills with its own values (T2T-ViT's fixed table when a file has none)
    if callable(adapt):
        before = {k: tuple(v.shape) for k, v in state.items()}
        try:
            adapted = adapt(state)
        except ValueError as exc:
            raise CheckpointError(f"{ckpt.source}: {exc}") from None
        built = set(adapted) - set(state)
        state = {k: adapted[k] for k in state}
        resampled = sorted(k for k, v in state.items() if tuple(v.shape) != before[k])
        if resampled and load:
            log.warning(
                "%s was trained at another resolution: resampled %d table(s) to img_size=%s (%s)",
                ckpt.source,
                len(resampled),
                model.config.img_size,
                ", ".join(resampled[:3]) + (", ..." if len(resampled) > 3 else ""),
            )
    own = model.state_dict()
    prefixes = tuple(getattr(model, "head_prefixes", ()))
    fresh = built if keep_head else built | {k for k in own if k.startswith(prefixes)}  # left as the model built them
    dropped = set(whole.state_dict()) - set(own)  # a features model's head and pruned layers
    if not keep_head:
        dropped |= {k for k in state if k.startswith(prefixes)}
    state = {k: v for k, v in state.items() if k not in dropped}
    problems = misfit(own, state, fresh)
    if problems:
        parts = [f"{ckpt.source} ({layout} layout) does not fit {variant.name}"]
        guess = identify(ckpt.state)
        if guess is not None and guess[0] != variant.name:
            other = get_variant(guess[0])
            family = "" if other.family == variant.family else f", a {other.family} model"
            parts.append(f"it looks like {guess[0]} ({guess[1]} layout{family}): create_model({guess[0]!r}, ...)")
        raise CheckpointError("; ".join(parts + problems))
    if load:
        check_values(state, own, ckpt.source, ckpt.state)
        model.load_state_dict(state, strict=not fresh)


def _imagenet_names() -> tuple[str, ...]:
    from ..data import imagenet_classes

    return imagenet_classes()


def as_tuples(value: Any) -> Any:
    """JSON lists back to the tuples that frozen model configs use."""
    if isinstance(value, list):
        return tuple(as_tuples(v) for v in value)
    return value


# ----------------------------------------------------------------------------------------------- the head and names


def _trained_classes(variant: Variant, ckpt: Checkpoint, state: dict[str, torch.Tensor]) -> int | None:
    """The class count the checkpoint was trained for: its head's rows (its metadata must agree)."""
    rows = _head_classes(variant, state)
    listed = ckpt.meta.get("num_classes")
    if listed is not None and rows is not None and listed != rows:
        raise CheckpointError(
            f"{ckpt.source}: litevit metadata num_classes={listed} is invalid: expected {rows}, the rows of its head"
        )
    count = rows if rows is not None else listed
    names = ckpt.meta.get("classes")
    if names is not None and count is not None and len(names) != count:
        raise CheckpointError(
            f"{ckpt.source}: litevit metadata classes={_short(names)} is invalid: expected {count} names, one per "
            f"class of its head, not {len(names)}"
        )
    return count


def _keep_head(ckpt: Checkpoint, trained: int | None, wanted: int | None) -> bool:
    """Whether the checkpoint's head is loaded; a head of another size is replaced, with a WARNING."""
    if wanted is None or trained is None or wanted == trained:
        return True
    log.warning(
        "%s has a %d-class head; num_classes=%d replaces it with a fresh, untrained head",
        ckpt.source,
        trained,
        wanted,
    )
    return False


def _class_names(ckpt: Checkpoint, count: int, record: Weights | None) -> tuple[str, ...] | None:
    """The names of a loaded head: the file's own, or ImageNet-1k's for published weights whose record says they
    are ImageNet-1k's (a file without names, of any class count, has none)."""
    listed = ckpt.meta.get("classes")
    if listed is not None and len(listed) == count:
        return tuple(listed)
    if record is not None and record.classes == "imagenet-1k" and count == record.num_classes:
        return _imagenet_names()
    return None


def _file_data(ckpt: Checkpoint | None, default: DataConfig) -> DataConfig:
    if ckpt is not None and "data_config" in ckpt.meta:
        return DataConfig(**{k: as_tuples(v) for k, v in ckpt.meta["data_config"].items()})
    return default


def _sized(data: DataConfig, size: Any) -> DataConfig:
    return dataclasses.replace(data, img_size=size) if isinstance(size, int) else data


def _file_kwargs(variant: Variant, ckpt: Checkpoint | None) -> dict[str, Any]:
    """The model options a litevit file records, checked: config fields that build the model its weights fit."""
    kwargs = {k: as_tuples(v) for k, v in (ckpt.meta.get("model_kwargs") or {}).items()} if ckpt else {}
    if not kwargs:
        return kwargs
    fields = {f.name for f in dataclasses.fields(variant.config)} - {"num_classes", "img_size"}
    unknown = sorted(set(kwargs) - fields)
    shown = _short(ckpt.meta["model_kwargs"])
    if unknown:
        raise CheckpointError(
            f"{ckpt.source}: litevit metadata model_kwargs={shown} is invalid: expected {variant.name} config "
            f"fields, not {', '.join(map(repr, unknown))}"
        )
    size = as_tuples(ckpt.meta.get("img_size"))
    try:  # the model the file describes, on the meta device: checked before anything is allocated
        with torch.device("meta"):
            described = variant.build(num_classes=ckpt.meta.get("num_classes"), img_size=size, **kwargs)
        _fit(described, ckpt, keep_head=True, load=False)
    except (CheckpointError, TypeError, ValueError, RuntimeError) as exc:
        raise CheckpointError(
            f"{ckpt.source}: litevit metadata model_kwargs={shown} is invalid: it does not build the model "
            f"its weights fit ({_one_line(exc)[:200]})"
        ) from None
    return kwargs


# ------------------------------------------------------------------------------------------------------ entry points


def load_checkpoint(model: nn.Module, source: Source, *, use_ema: bool | None = None) -> nn.Module:
    """Load official, timm or litevit weights into a model built by :func:`create_model` (or its features model).

    The same rules as ``create_model(..., checkpoint=source)``: keys converted, tables resampled, a head of another
    size replaced by the model's own (with a WARNING), classifier weights into a features model without the head and
    pruned layers; ``model.model_info`` then describes the weights loaded.
    """
    if not hasattr(model, "variant_name"):
        raise ValueError("load_checkpoint needs a model built by litevit.create_model")
    variant = get_variant(model.variant_name)
    ckpt = _checked(_read(source, use_ema), variant)
    converted = _convert(variant, ckpt.state, ckpt.source)
    features = isinstance(model, FeatureExtractor)
    trained = _trained_classes(variant, ckpt, converted[0])
    keep_head = features or _keep_head(ckpt, trained, int(model.config.num_classes))
    _fit(model, ckpt, keep_head, converted)
    before = model_info(model)
    data = _sized(_file_data(ckpt, before.data), model.config.img_size)
    names = _class_names(ckpt, int(model.config.num_classes), None) if keep_head else before.class_names
    model.model_info = dataclasses.replace(before, class_names=names, data=data, weights=ckpt.source, taken=ckpt.taken)
    log.info("loaded %s into %s (%s)", ckpt.source, variant.name, ckpt.taken)
    return model


def _read(source: Source, use_ema: bool | None) -> Checkpoint:
    if isinstance(source, str | os.PathLike) and Path(source).is_dir():
        return folder.read_folder(source)  # a Hub folder (timm's save_for_hf, litevit's save_pretrained)
    if not isinstance(source, Checkpoint):
        return read_checkpoint(source, use_ema=use_ema)
    if use_ema is not None and source.ema is not None and source.ema != use_ema:
        raise CheckpointError(
            f"{source.source} was read with its {source.taken}; use_ema={use_ema} asks for the other weights: "
            f"read it with read_checkpoint(path, use_ema={use_ema})"
        )
    return source


def _checked(ckpt: Checkpoint, variant: Variant) -> Checkpoint:
    named = ckpt.meta.get("variant")
    if named not in (None, variant.name):
        raise CheckpointError(
            f"{ckpt.source} is a litevit {named} file, not {variant.name}: use create_model("
            f"{named!r}, ...) or litevit.load({ckpt.source!r})"
        )
    return ckpt


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
    if checkpoint is None:
        return variant, record, None
    return variant, record, _checked(_read(checkpoint, use_ema), variant)


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
    variant's default weights; ``weights="tag"`` picks others; ``checkpoint`` is a file, a Hub folder (timm's
    ``save_for_hf`` or :func:`~litevit.weights.hf.save_pretrained`) or a state dict; ``"hf-hub:ORG/NAME"`` fetches
    such a folder from the Hugging Face Hub (``litevit[hub]``), as timm names them. Without
    ``num_classes`` the checkpoint's head (and class names) are kept; a different ``num_classes`` replaces the head
    with a WARNING. Without ``img_size`` the model is built at the resolution the weights were trained at.
    ``use_ema`` picks the EMA (True) or non-EMA (False) weights of a file that carries both.
    ``features_only`` returns the loaded classifier's feature extractor (:func:`litevit.models.features.features_only`,
    maps at ``out_indices``); its checkpoint may be a classifier's (the head and the layers the maps do not need are
    dropped) or a features model's own ``state_dict``.
    """
    if name.startswith(folder.HUB_PREFIX):  # a Hub repository, as timm names them: hf-hub:ORG/NAME[@REVISION]
        if checkpoint is not None or pretrained or weights is not None:
            raise ValueError(f"{name} carries its own weights; pretrained, weights= and checkpoint= do not apply")
        checkpoint = folder.read_folder(folder.hub_folder(name))
        name = checkpoint.meta["variant"]
    variant, record, ckpt = _resolve(name, pretrained, weights, checkpoint, use_ema)
    converted = _convert(variant, ckpt.state, ckpt.source) if ckpt is not None else None
    trained = _trained_classes(variant, ckpt, converted[0]) if ckpt is not None else None
    for key, value in _file_kwargs(variant, ckpt).items():
        overrides.setdefault(key, value)
    keep_head = features_only or ckpt is None or _keep_head(ckpt, trained, num_classes)
    classes = num_classes if num_classes is not None and not features_only else trained

    data = record.data if record is not None else _file_data(ckpt, variant.data)
    trained_size = as_tuples(ckpt.meta.get("img_size", data.img_size)) if (record or (ckpt and ckpt.meta)) else None
    size = img_size if img_size is not None else trained_size
    data = _sized(data, size)

    model = variant.build(num_classes=classes, img_size=size, **overrides)
    names = None
    if ckpt is not None and keep_head:
        names = _class_names(ckpt, int(model.config.num_classes), record)
    source = record.name if record is not None else (ckpt.source if ckpt is not None else None)
    model.model_info = ModelInfo(
        variant.name,
        int(model.config.num_classes),
        names,
        model.config.img_size,
        data,
        source,
        ckpt.taken if ckpt is not None else None,
        hub.verification(record) if record is not None else None,
    )
    if features_only:
        model = feature_extractor(model, out_indices)
    if ckpt is not None:
        _fit(model, ckpt, keep_head, converted)
        log.info("loaded %s into %s (%s)", source, variant.name, ckpt.taken)
    return model


def load(source: str | os.PathLike, *, use_ema: bool | None = None, **kwargs: Any) -> nn.Module:
    """A model from a litevit file alone (``best.safetensors``, ``last.pt``), a Hub folder (``config.json`` +
    weights, timm's or litevit's), ``"hf-hub:ORG/NAME"``, or a name with published weights.

    A file rebuilds its variant, classes, class names, input size and data config from its own metadata; a name
    (``"levit_256"`` or ``"levit_256.fb_dist_in1k"``) loads the published weights. ``use_ema`` picks the EMA or
    non-EMA weights of a file that carries both (``last.pt`` with ``--ema``). Keyword arguments go to
    :func:`create_model`.
    """
    if str(source).startswith(folder.HUB_PREFIX):
        return create_model(str(source), use_ema=use_ema, **kwargs)
    path = Path(source)
    if path.is_dir():  # a Hub folder names its model in config.json
        ckpt = folder.read_folder(path)
        return create_model(ckpt.meta["variant"], checkpoint=ckpt, use_ema=use_ema, **kwargs)
    if path.is_file():
        ckpt = read_checkpoint(path, use_ema=use_ema)
        variant = ckpt.meta.get("variant")
        if not variant:
            raise CheckpointError(
                f"{path} has no litevit metadata naming its model; give the model name: "
                f"create_model(NAME, checkpoint={str(path)!r})"
            )
        if variant not in list_models():
            raise CheckpointError(
                f"{path}: litevit metadata variant={variant!r} is invalid: expected a registered model name "
                "(see `litevit list`)"
            )
        return create_model(variant, checkpoint=ckpt, **kwargs)
    name = str(source)
    if split_name(name)[0] in list_models():
        return create_model(name, pretrained=True, use_ema=use_ema, **kwargs)
    raise CheckpointError(
        f"{source} is neither a file nor a registered model name (with an optional .tag); see `litevit list` "
        "and `litevit weights`"
    )
