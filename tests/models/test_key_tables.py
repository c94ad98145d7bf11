"""Each family's one key table (``models/*_convert.py``, read both ways by ``models/key_table.py``): the reference
fixtures' checkpoint keys and every registered variant's keys go there and back unchanged, without timm; an unknown
key is an error that names it; a table with a row removed or two rows swapped fails the same checks."""

from __future__ import annotations

import dataclasses
import json

import pytest
import torch
from reference import fixture_files, require_refs

from litevit.models import efficientvit_msra_convert, levit_convert, mobilevit_convert, t2t_vit_convert
from litevit.models.key_table import KeyTable
from litevit.registry import get_variant, list_models

# family -> (the table's layout, the fixtures written in it, the table for a variant's config)
TABLES = {
    "levit": ("timm", "timm/levit_*.json", lambda config: levit_convert.TIMM),
    "efficientvit_msra": ("timm", "timm/efficientvit_m*.json", lambda config: efficientvit_msra_convert.TIMM),
    "mobilevit": (
        "timm",
        "timm/mobilevit*.json",
        lambda config: mobilevit_convert.timm_table(config.attention == "separable"),
    ),
    "t2t_vit": (
        "official",
        "official/t2t_vit_*.json",
        lambda config: (
            t2t_vit_convert.OFFICIAL_PERFORMER
            if config.tokens_type == "performer"
            else t2t_vit_convert.OFFICIAL_TRANSFORMER
        ),
    ),
}
REBUILT = ("attention_bias_idxs",)  # written by the checkpoint layouts, rebuilt by litevit's models


def _variant_for_fixture(spec: dict) -> str | None:
    """The registered litevit variant a fixture's network is (timm's ``levit_conv_*`` stores ``levit_*``'s keys)."""
    name = spec["variant"].replace("levit_conv_", "levit_")
    return name if name in list_models() else None


def _keys(name: str) -> dict[str, None]:
    with torch.device("meta"):
        model = get_variant(name).build()
    return dict.fromkeys(model.state_dict())


def round_trip_faults(table: KeyTable, theirs: list[str], ours: list[str]) -> list[str]:
    """What differs when a checkpoint's keys (``theirs``) and a model's keys (``ours``) go through ``table``:
    theirs -> litevit must be ours, and ours -> their layout -> litevit must be ours again."""
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


@pytest.mark.parametrize("family", sorted(TABLES))
def test_every_fixture_goes_there_and_back(family: str) -> None:
    require_refs()
    layout, pattern, table_for = TABLES[family]
    checked = []
    for rel in fixture_files(pattern):
        spec = json.loads((require_refs() / rel).read_text())
        name = _variant_for_fixture(spec)
        if name is None:
            continue  # a network litevit does not register (T2T-ViT-14-resnext, ...)
        assert spec["layout"] == layout
        variant = get_variant(name)
        theirs = [entry["key"] for entry in spec["state_dict"]]
        assert round_trip_faults(table_for(variant.config), theirs, list(_keys(name))) == [], rel
        table = table_for(variant.config)
        renames = any(theirs != ours for theirs, ours in table.rows)  # T2T-ViT_t: the official names are litevit's
        assert variant.converter.detect(dict.fromkeys(theirs)) == (layout if renames else None), rel
        checked.append(name)
    assert len(checked) >= 5, checked  # every family has at least five fixtures in its table's layout


@pytest.mark.parametrize("family", sorted(TABLES))
def test_every_registered_variant_goes_there_and_back(family: str) -> None:
    """Also the variants no fixture covers: litevit -> table layout -> litevit is the identity, through the
    converter's own functions (value reshapes included)."""
    layout, _, _ = TABLES[family]
    names = [name for name in list_models() if get_variant(name).family == family]
    converter = get_variant(names[0]).converter
    for name in names:
        variant = get_variant(name)
        if family == "mobilevit" and variant.config.attention not in ("linear", "separable"):
            continue  # MobileViTv3's attention exists only in litevit's and the official layout
        with torch.device("meta"):
            state = variant.build().state_dict()
        theirs = converter.from_litevit(state, layout, variant.config)
        back = converter.to_litevit(theirs, layout)
        assert {k: tuple(v.shape) for k, v in back.items()} == {k: tuple(v.shape) for k, v in state.items()}, name


@pytest.mark.parametrize("family", sorted(TABLES))
def test_an_unknown_key_is_an_error_that_names_it(family: str) -> None:
    _, _, table_for = TABLES[family]
    name = next(name for name in list_models() if get_variant(name).family == family)
    table = table_for(get_variant(name).config)
    with pytest.raises(ValueError, match="'extra.weight'"):
        table.to_litevit("extra.weight")
    with pytest.raises(ValueError, match="'extra.weight'"):
        table.from_litevit("extra.weight")
    checkpoint = {key: torch.zeros(1) for key in [*table.write(_keys(name)), "extra.weight"]}
    with pytest.raises(ValueError, match="unknown .*'extra.weight'"):
        get_variant(name).converter.to_litevit(checkpoint, table.layout)


def _planted(table: KeyTable, fault: str) -> KeyTable:
    """``table`` with its first renaming row removed, or with its rows in reverse order."""
    rows = list(table.rows)
    if fault == "reversed":
        return dataclasses.replace(table, rows=tuple(reversed(rows)))
    rows.pop(next(i for i, (theirs, ours) in enumerate(rows) if ours is not None and theirs != ours))
    return dataclasses.replace(table, rows=tuple(rows))


def _first_fixture(pattern: str) -> tuple[dict, str]:
    for rel in fixture_files(pattern):
        spec = json.loads((require_refs() / rel).read_text())
        if name := _variant_for_fixture(spec):
            return spec, name
    raise AssertionError(f"no fixture {pattern} of a registered variant")


@pytest.mark.parametrize("fault", ["removed", "reversed"])
@pytest.mark.parametrize("family", sorted(TABLES))
def test_a_planted_table_fault_is_caught(family: str, fault: str) -> None:
    """The checks above fail on every family's table with a row removed; with the rows reversed (general rows
    before the specific ones they shadow) on every family whose rows overlap: MobileViT's rows match disjoint keys,
    so their order is free."""
    _, pattern, table_for = TABLES[family]
    spec, name = _first_fixture(pattern)
    table = table_for(get_variant(name).config)
    theirs, ours = [entry["key"] for entry in spec["state_dict"]], list(_keys(name))
    assert round_trip_faults(table, theirs, ours) == []
    caught = round_trip_faults(_planted(table, fault), theirs, ours) != []
    assert caught == (fault == "removed" or family != "mobilevit")


def test_a_row_must_name_the_same_placeholders_on_both_sides() -> None:
    with pytest.raises(ValueError, match="same placeholders"):
        KeyTable("timm", (("stages.{s}.{rest}", "stages.{rest}"),))
    table = KeyTable("timm", (("a.{i}.x{n}.{rest}", "b.{n}.{i}.{rest}"), ("{rest}.idx", None)))
    assert table.to_litevit("a.3.x7.conv.weight") == "b.7.3.conv.weight"
    assert table.from_litevit("b.7.3.conv.weight") == "a.3.x7.conv.weight"
    assert table.to_litevit("a.b.idx") is None and table.read({"a.b.idx": 1}) == {}
    with pytest.raises(ValueError, match="written in the timm layout only, not 'official'"):
        table.write({"b.7.3.conv.weight": 1}, "official")
