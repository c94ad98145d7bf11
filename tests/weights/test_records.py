"""The published-weights records: each checked against its URL, its family's converter and the paper records."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

import litevit
from litevit import cli
from litevit.registry import get_variant
from litevit.weights import records as weights
from litevit.weights.reading import _CONTAINERS

ALL = litevit.list_weights()
# official hosts and file-name patterns, per family
URLS = {
    "levit": r"https://dl\.fbaipublicfiles\.com/LeViT/LeViT-(128S|128|192|256|384)-[0-9a-f]{8}\.pth",
    "efficientvit_msra": (
        r"https://github\.com/xinyuliu-jeffrey/EfficientViT_Model_Zoo/releases/download/v1\.0/efficientvit_m[0-5]\.pth"
    ),
    "mobilevit": (
        r"https://docs-assets\.developer\.apple\.com/ml-research/models/(cvnets/classification/mobilevit_(xxs|xs|s)\.pt"
        r"|cvnets-v2/classification/mobilevitv2/imagenet(1k|21k_to_1k)/(256x256|384x384)/mobilevitv2-[0-9.]+\.pt)"
        r"|https://github\.com/micronDLA/MobileViTv3/releases/download/v1\.0\.0/mobilevitv3_\w+\.zip"
    ),
    "t2t_vit": r"https://github\.com/yitu-opensource/T2T-ViT/releases/download/main/\d\d\.\d_T2T_ViTt?_\d\d?\.pth\.tar",
}


def test_every_variant_has_default_weights() -> None:
    assert len(ALL) == 53
    for name in litevit.list_models():
        record = weights.get_weights(name)
        assert record.default and record.variant == name


@pytest.mark.parametrize("name", ALL)
def test_record_is_consistent(name: str) -> None:
    w = weights.get_weights(*name.split("."))
    variant = get_variant(w.variant)
    assert re.fullmatch(URLS[variant.family], w.url), w.url
    assert w.file_name == w.url.rsplit("/", 1)[1] and w.file_name
    assert re.fullmatch(r"[a-z0-9_]+", w.tag)
    assert w.layout in variant.converter.LAYOUTS, f"{variant.family}'s converter does not read {w.layout!r}"
    assert w.release in weights.RELEASES
    assert w.num_classes == 1000 and w.classes == "imagenet-1k"
    assert w.licence and w.source and w.pretrain in {"in1k", "in22k_ft_in1k"}
    assert w.img_size in {224, 256, 384} and 0.8 <= w.data.crop_pct <= 1.0
    # the preprocessing differs from the variant's only in resolution and crop (same pixels, channels, mean/std)
    assert (w.data.mean, w.data.std, w.data.channel_order) == (
        variant.data.mean,
        variant.data.std,
        variant.data.channel_order,
    )
    if w.img_size == variant.paper.img_size:
        assert w.data == variant.data
    # a hash prefix is the file name's own suffix; only LeViT publishes one
    if w.hash is not None:
        assert w.hash_kind == "sha256-prefix" and re.fullmatch(r"[0-9a-f]{8}", w.hash)
        assert w.file_name.removesuffix(".pth").endswith("-" + w.hash) and "check_hash" in w.hash_note
    else:
        assert w.hash_kind is None
    assert (w.archive_member is not None) == w.url.endswith(".zip")
    if w.archive_member is not None:
        folder = w.file_name.removesuffix(".zip")
        assert w.archive_member == f"{folder}/checkpoint_ema_best.pt"
    assert w.confirmed == (not w.url.startswith("https://github.com/micronDLA/")), "only MobileViTv3 is inferred"


@pytest.mark.parametrize("name", [n for n in ALL if weights.get_weights(*n.split(".")).default])
def test_default_weights_match_the_paper_record(name: str) -> None:
    w = weights.get_weights(*name.split("."))
    paper = get_variant(w.variant).paper
    assert w.img_size == paper.img_size and w.pretrain == "in1k"
    assert abs(w.top1 - paper.top1) <= 0.2, (w.top1, paper.top1)


def test_release_forms_are_the_ones_the_reader_unwraps() -> None:
    read = {key for pair in _CONTAINERS for key in pair[:2] if key}
    assert {"model", "model_ema", "state_dict", "state_dict_ema", "model_state_dict", "ema_state_dict"} <= read


def test_list_weights_patterns() -> None:
    assert litevit.list_weights("levit_256") == ["levit_256.fb_dist_in1k"]
    assert litevit.list_weights("mobilevitv2_150.*_384") == [
        "mobilevitv2_150.cvnets_in1k_384",
        "mobilevitv2_150.cvnets_in22k_ft_in1k_384",
    ]
    assert len(litevit.list_weights("t2t_vit_*")) == 10


def test_cli_weights_lists_size_top1_and_licence(capsys) -> None:
    assert cli.main(["weights", "levit_128s", "mobilevitv3_xxs"]) == 0
    out = capsys.readouterr().out
    assert re.search(r"levit_128s\.fb_dist_in1k\s+224\s+76\.60\s+7\.8M\s+31MB\s+Apache-2\.0 \(default\)", out)
    assert "mobilevitv3_xxs.official_in1k" in out and "(URL not confirmed)" in out
    assert cli.main(["weights", "nothing_*"]) == 2


def test_readme_weights_table_is_generated_from_the_records() -> None:
    readme = (Path(__file__).resolve().parents[2] / "docs" / "weights.md").read_text()
    assert weights.weights_markdown() in readme, "docs/weights.md is stale: run `make readme`"
