"""Each family's key tables (``models/*_convert.py``: ``key_table(layout, config)``, read both ways by
``models/key_table.py``), one per checkpoint layout it reads: the reference fixtures' checkpoint keys (written by the
official code or timm) and every registered variant's keys go there and back unchanged, without timm or the official
code; an unknown key is an error that names it; a table with a row removed or its rows reversed fails the same
checks."""

from __future__ import annotations

import dataclasses
import json

import pytest
import torch
from reference import fixture_files, require_refs

from litevit.models.key_table import KeyTable
from litevit.registry import get_variant, list_models

# (family, layout) -> the reference fixtures written in that layout
LAYOUTS = {
    ("levit", "official"): "official/LeViT_*.json",
    ("levit", "timm"): "timm/levit_*.json",
    ("efficientvit_msra", "official"): "official/EfficientViT_*.json",
    ("efficientvit_msra", "timm"): "timm/efficientvit_m*.json",
    ("mobilevit", "official"): "official/mobilevit*.json",
    ("mobilevit", "timm"): "timm/mobilevit*.json",
    ("t2t_vit", "official"): "official/t2t_vit_*.json",
}
# tables whose rows overlap (a specific row before the general one it shadows): their order matters
ORDERED = {("levit", "timm"), ("efficientvit_msra", "official"), ("efficientvit_msra", "timm"), ("t2t_vit", "official")}
REBUILT = ("attention_bias_idxs",)  # written by the checkpoint layouts, rebuilt by litevit's models
IDS = [f"{family}-{layout}" for family, layout in LAYOUTS]


def _variant_for_fixture(spec: dict) -> str | None:
    """The registered litevit variant a fixture's network is (timm's ``levit_conv_*`` stores ``levit_*``'s keys)."""
    name = spec["variant"].replace("levit_conv_", "levit_")
    return next((n for n in list_models() if name == n or name in get_variant(n).external_names), None)


def _keys(name: str) -> dict[str, None]:
    with torch.device("meta"):
        model = get_variant(name).build()
    return dict.fromkeys(model.state_dict())


def _has_layout(name: str, layout: str) -> bool:
    """Whether the variant exists in ``layout``: timm has no MobileViTv3 (its local-global fusion) nor T2T-ViT."""
    variant = get_variant(name)
    v3 = getattr(variant.config, "fusion", None) == "local_global"
    return layout in variant.converter.LAYOUTS and not (layout == "timm" and v3)


def round_trip_faults(table: KeyTable, theirs: list[str], ours: list[str]) -> list[str]:
    """What differs when a checkpoint's keys (``theirs``) and a model's keys (``ours``) go through ``table``:
    theirs -> litevit must be ours, and ours -> their layout must be theirs and -> litevit ours again."""
    kept = [key for key in theirs if not key.endswith(REBUILT)]
    try:
        read = list(table.read(dict.fromkeys(theirs)))
        written = list(table.write(dict.fromkeys(ours)))
        back = list(table.read(dict.fromkeys(written)))
    except ValueError as error:
        return [str(error)]
    faults = []
    if set(read) != set(ours):
        faults.append(f"read: {sorted(set(read) ^ set(ours))[:4]}")
    if set(written) != set(kept):
        faults.append(f"written: {sorted(set(written) ^ set(kept))[:4]}")
    if back != list(ours):
        faults.append(f"round trip: {[(a, b) for a, b in zip(back, ours, strict=False) if a != b][:4]}")
    return faults


@pytest.mark.parametrize(("family", "layout"), LAYOUTS, ids=IDS)
def test_every_fixture_goes_there_and_back(family: str, layout: str) -> None:
    """The table of the variant's config, and the one the converter derives from the checkpoint's own keys."""
    require_refs()
    checked = []
    for rel in fixture_files(LAYOUTS[family, layout]):
        spec = json.loads((require_refs() / rel).read_text())
        name = _variant_for_fixture(spec)
        if name is None:
            continue  # a network litevit does not register (T2T-ViT-14-resnext, ...)
        assert spec["layout"] == layout
        variant = get_variant(name)
        theirs, ours = [entry["key"] for entry in spec["state_dict"]], list(_keys(name))
        table = variant.converter.key_table(layout, variant.config)
        assert round_trip_faults(table, theirs, ours) == [], rel
        state = {entry["key"]: torch.empty(entry["shape"], device="meta") for entry in spec["state_dict"]}
        assert set(variant.converter.to_litevit(state, layout)) == set(ours), rel
        renames = any(theirs != ours for theirs, ours in table.rows)  # T2T-ViT_t: the official names are litevit's
        assert variant.converter.detect(dict.fromkeys(theirs)) == (layout if renames else None), rel
        checked.append(name)
    assert len(checked) >= 5, checked  # every family has at least five fixtures in each layout


@pytest.mark.parametrize(("family", "layout"), LAYOUTS, ids=IDS)
def test_every_registered_variant_goes_there_and_back(family: str, layout: str) -> None:
    """Also the variants no fixture covers: litevit -> layout -> litevit is the identity, through the converter's
    own functions (value reshapes included; reading derives the table from the written keys)."""
    names = [n for n in list_models() if get_variant(n).family == family and _has_layout(n, layout)]
    assert names
    for name in names:
        variant = get_variant(name)
        with torch.device("meta"):
            state = variant.build().state_dict()
        theirs = variant.converter.from_litevit(state, layout, variant.config)
        assert variant.converter.detect(theirs) in (layout, None), name
        back = variant.converter.to_litevit(theirs, layout)
        assert {k: tuple(v.shape) for k, v in back.items()} == {k: tuple(v.shape) for k, v in state.items()}, name


@pytest.mark.parametrize(("family", "layout"), LAYOUTS, ids=IDS)
def test_an_unknown_key_is_an_error_that_names_it(family: str, layout: str) -> None:
    name = next(n for n in list_models() if get_variant(n).family == family and _has_layout(n, layout))
    variant = get_variant(name)
    table = variant.converter.key_table(layout, variant.config)
    with pytest.raises(ValueError, match="'extra.weight'"):
        table.to_litevit("extra.weight")
    with pytest.raises(ValueError, match="'extra.weight'"):
        table.from_litevit("extra.weight")
    checkpoint = {key: torch.zeros(1) for key in [*table.write(_keys(name)), "extra.weight"]}
    with pytest.raises(ValueError, match="unknown .*'extra.weight'"):
        variant.converter.to_litevit(checkpoint, layout)
    with pytest.raises(ValueError, match="unknown .* layout 'caffe'"):
        variant.converter.key_table("caffe", variant.config)


def _planted(table: KeyTable, fault: str) -> KeyTable:
    """``table`` with its first renaming row removed, or with its rows in reverse order."""
    rows = list(table.rows)
    if fault == "reversed":
        return dataclasses.replace(table, rows=tuple(reversed(rows)))
    rows.pop(next(i for i, (theirs, ours) in enumerate(rows) if ours is not None and theirs != ours))
    return dataclasses.replace(table, rows=tuple(rows))


@pytest.mark.parametrize("fault", ["removed", "reversed"])
@pytest.mark.parametrize(("family", "layout"), LAYOUTS, ids=IDS)
def test_a_planted_table_fault_is_caught(family: str, layout: str, fault: str) -> None:
    """The checks above fail on every table with a row removed, and with its rows reversed on every table whose rows
    overlap (a general row would shadow the specific ones): the others' rows match disjoint keys, in any order."""
    for rel in fixture_files(LAYOUTS[family, layout]):
        spec = json.loads((require_refs() / rel).read_text())
        if name := _variant_for_fixture(spec):
            break
    variant = get_variant(name)
    table = variant.converter.key_table(layout, variant.config)
    theirs, ours = [entry["key"] for entry in spec["state_dict"]], list(_keys(name))
    assert round_trip_faults(table, theirs, ours) == []
    caught = round_trip_faults(_planted(table, fault), theirs, ours) != []
    assert caught == (fault == "removed" or (family, layout) in ORDERED)


def test_a_row_must_name_the_same_placeholders_on_both_sides() -> None:
    with pytest.raises(ValueError, match="same placeholders"):
        KeyTable("timm", (("stages.{s}.{rest}", "stages.{rest}"),))
    table = KeyTable("timm", (("a.{i}.x{n}.{rest}", "b.{n}.{i}.{rest}"), ("{rest}.idx", None)))
    assert table.to_litevit("a.3.x7.conv.weight") == "b.7.3.conv.weight"
    assert table.from_litevit("b.7.3.conv.weight") == "a.3.x7.conv.weight"
    assert table.to_litevit("a.b.idx") is None and table.read({"a.b.idx": 1}) == {}
