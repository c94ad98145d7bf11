"""Published checkpoints as records (torchvision's ``Weights``, timm's ``pretrained_cfg``): one per release file.

The records themselves are in :mod:`litevit.weights.zoo`; this module holds the record type and the lookups.
"""

from __future__ import annotations

import fnmatch
import re
from dataclasses import dataclass
from pathlib import PurePosixPath
from urllib.parse import urlsplit

from ..registry import DataConfig, get_variant

# how the official training scripts wrote the released file (see litevit.weights.reading)
RELEASES = {
    "deit": "DeiT-style main.py checkpoint: model (+ model_ema, optimizer, lr_scheduler, epoch, scaler, args)",
    "timm": "timm CheckpointSaver: state_dict, state_dict_ema, args, metric, ...",
    "cvnets": "ml-cvnets state dict (*_best.pt)",
}
HASH_KINDS = ("sha256", "sha256-prefix")


@dataclass(frozen=True)
class Weights:
    """One published checkpoint: where it is, what it holds, how to feed it, what it scores, who says so."""

    variant: str  # registered model name
    tag: str  # timm's tag where timm hosts the same weights
    url: str  # official download address
    layout: str  # key layout: "official" or "timm" (read by the family's converter)
    release: str  # container form, a key of RELEASES
    data: DataConfig  # preprocessing of the official evaluation at this checkpoint's resolution
    top1: float  # published ImageNet-1k top-1, %
    licence: str
    source: str  # where the URL, top-1, licence and preprocessing were read
    pretrain: str = "in1k"  # in1k, in22k_ft_in1k
    num_classes: int = 1000
    classes: str = "imagenet-1k"
    archive_member: str | None = None  # the checkpoint's path inside a .zip / .tar release archive
    hash: str | None = None  # hex digest, or a prefix of it
    hash_kind: str | None = None  # one of HASH_KINDS
    hash_note: str = ""  # where the hash comes from and how it is checked
    confirmed: bool = True  # False: the URL could not be read in an official README or code
    default: bool = False  # the variant's weights for pretrained=True

    @property
    def name(self) -> str:
        return f"{self.variant}.{self.tag}"

    @property
    def file_name(self) -> str:
        return PurePosixPath(urlsplit(self.url).path).name

    @property
    def img_size(self) -> int:
        return self.data.img_size


_WEIGHTS: dict[str, Weights] = {}


def register_weights(weights: Weights) -> Weights:
    get_variant(weights.variant)  # must be registered
    if weights.name in _WEIGHTS:
        raise ValueError(f"weights {weights.name!r} are registered twice")
    if weights.default and any(w.default for w in _WEIGHTS.values() if w.variant == weights.variant):
        raise ValueError(f"{weights.variant} has two default weights")
    _WEIGHTS[weights.name] = weights
    return weights


def split_name(name: str) -> tuple[str, str | None]:
    """``"levit_256.fb_dist_in1k"`` -> ``("levit_256", "fb_dist_in1k")``; a bare name has no tag."""
    variant, dot, tag = name.partition(".")
    if dot and not re.fullmatch(r"[a-z0-9_]+", tag):
        raise ValueError(f"malformed weights tag in {name!r}: expected MODEL.TAG with a tag of [a-z0-9_]")
    return variant, (tag if dot else None)


def list_weights(pattern: str = "*") -> list[str]:
    """Names (``variant.tag``) of the published weights matching a shell-style pattern, in registration order.

    A pattern without a dot also matches on the variant name alone: ``"levit_*"`` lists every LeViT checkpoint.
    """
    return [
        name
        for name, w in _WEIGHTS.items()
        if fnmatch.fnmatchcase(name, pattern) or ("." not in pattern and fnmatch.fnmatchcase(w.variant, pattern))
    ]


def get_weights(variant: str, tag: str | None = None) -> Weights:
    """The record of ``variant``'s weights named ``tag``, or its default weights when ``tag`` is None."""
    get_variant(variant)
    if tag is None:
        found = [w for w in _WEIGHTS.values() if w.variant == variant and w.default]
        if not found:
            raise ValueError(f"no published weights for {variant}; see `litevit weights`")
        return found[0]
    weights = _WEIGHTS.get(f"{variant}.{tag}")
    if weights is None:
        tags = [w.tag for w in _WEIGHTS.values() if w.variant == variant]
        raise ValueError(f"no weights {tag!r} for {variant}; published: {', '.join(tags) or 'none'}")
    return weights


def weights_markdown(names: list[str] | None = None) -> str:
    """The README's table of published weights, generated from the records."""
    rows = [
        "| weights | input | top-1 (%) | params (M) | fp32 MB (params x 4 B) | pretrain | licence | file "
        "| URL confirmed |",
        "|---|---:|---:|---:|---:|---|---|---|---|",
    ]
    for name in names if names is not None else list_weights():
        w = _WEIGHTS[name]
        params = param_millions(w.variant)
        default = " (default)" if w.default else ""
        rows.append(
            f"| `{name}`{default} | {w.img_size} | {w.top1:.2f} | {params:.1f} | {params * 4:.0f} | {w.pretrain} | "
            f"{w.licence} | [{w.file_name}]({w.url}) | {'yes' if w.confirmed else '**no**'} |"
        )
    return "\n".join(rows)


def param_millions(variant: str) -> float:
    """Parameters of the variant's classifier, in millions (built on the meta device: no memory, no time)."""
    import torch

    from ..flops import count_params

    with torch.device("meta"):
        model = get_variant(variant).build()
    return count_params(model) / 1e6
