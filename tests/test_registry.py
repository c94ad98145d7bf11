"""Registry, create_model options, checkpoint reading and the CLI list command."""

from __future__ import annotations

import pickle
import re

import pytest
import torch

import litevit
from litevit import cli
from litevit.weights.reading import CheckpointError, read_checkpoint


def test_list_models_and_patterns() -> None:
    names = litevit.list_models()
    assert len(names) == len(set(names))
    assert litevit.list_models("levit_*") == ["levit_128s", "levit_128", "levit_192", "levit_256", "levit_384"]
    assert litevit.list_models("no_such_*") == []


def test_unknown_name_lists_valid_choices() -> None:
    with pytest.raises(ValueError, match=r"unknown model 'levit_999'; valid names: .*levit_128s.*levit_384"):
        litevit.create_model("levit_999")


def test_unknown_override_lists_valid_options() -> None:
    with pytest.raises(ValueError, match=r"unknown option\(s\) 'depth' for levit_128s; valid options: .*depths"):
        litevit.create_model("levit_128s", depth=3)


def test_overrides_reach_the_model() -> None:
    model = litevit.create_model("levit_128s", num_classes=5, drop_path=0.1, in_chans=1)
    assert model.config.num_classes == 5 and model.config.drop_path == 0.1
    assert model.stem[0].conv.in_channels == 1
    assert model.variant_name == "levit_128s"


@pytest.mark.parametrize("name", litevit.list_models())
def test_paper_and_data_records_are_complete(name: str) -> None:
    variant = litevit.get_variant(name)
    paper, data = variant.paper, variant.data
    assert paper.params_m > 0 and paper.macs_m > 0 and paper.source
    assert paper.top1 is None or 50 < paper.top1 < 100
    assert 0.5 < data.crop_pct <= 1.0 and data.interpolation in {"bilinear", "bicubic", "nearest"}
    assert len(data.mean) == len(data.std) == 3 and data.channel_order in {"RGB", "BGR"}


def test_reader_rejects_pickled_code(tmp_path) -> None:
    path = tmp_path / "evil.pth"
    with open(path, "wb") as f:
        pickle.dump({"model": {"w": torch.zeros(1)}, "hook": print}, f)
    with pytest.raises(CheckpointError, match=r"weights_only=True"):
        read_checkpoint(path)


def test_reader_errors(tmp_path) -> None:
    with pytest.raises(CheckpointError, match=r"checkpoint file not found"):
        read_checkpoint(tmp_path / "nope.pth")
    torch.save([torch.zeros(1)], tmp_path / "list.pth")
    with pytest.raises(CheckpointError, match=r"expected a dict of tensors"):
        read_checkpoint(tmp_path / "list.pth")
    torch.save({"epoch": 3}, tmp_path / "empty.pth")
    with pytest.raises(CheckpointError, match=r"no tensors found"):
        read_checkpoint(tmp_path / "empty.pth")


def test_reader_unwraps_nesting_and_ddp_prefix() -> None:
    state = {"module.a": torch.ones(1)}
    assert list(read_checkpoint({"model": state, "epoch": 1}).state) == ["a"]
    both = {"state_dict": {"a": torch.zeros(1)}, "state_dict_ema": {"a": torch.ones(1)}}
    # timm CheckpointSaver: T2T-ViT's official evaluation takes the EMA weights
    assert read_checkpoint(both).state["a"].item() == 1.0
    assert read_checkpoint(both, use_ema=False).state["a"].item() == 0.0
    deit = {"model": {"a": torch.zeros(1)}, "model_ema": {"a": torch.ones(1)}, "epoch": 3}
    assert read_checkpoint(deit).state["a"].item() == 0.0  # DeiT-style main.py evaluates ``model``
    assert read_checkpoint(deit, use_ema=True).state["a"].item() == 1.0
    assert read_checkpoint({"state_dict_ema": {"a": torch.ones(1)}}).state["a"].item() == 1.0  # the only weights


def test_cli_list(capsys) -> None:
    assert cli.main(["list", "levit_1*"]) == 0
    out = capsys.readouterr().out
    assert re.search(r"levit_128s\s+7\.8M params\s+305M MACs\s+top-1 76\.6%", out)
    assert "levit_256" not in out


def test_readme_table_is_generated_from_registry() -> None:
    from pathlib import Path

    readme = (Path(__file__).resolve().parents[1] / "docs" / "variants.md").read_text()
    table = litevit.registry.variants_markdown()
    assert table in readme, "docs/variants.md is stale: regenerate it with `make readme`"


def test_families_and_converters_are_declared_not_derived_from_file_names() -> None:
    from litevit.models import efficientvit_msra_convert, levit_convert, mobilevit_convert, t2t_vit_convert

    expected = {
        "levit": levit_convert,
        "efficientvit_msra": efficientvit_msra_convert,
        "mobilevit": mobilevit_convert,
        "t2t_vit": t2t_vit_convert,
    }
    assert litevit.registry.families() == expected
    for name in litevit.list_models():
        variant = litevit.get_variant(name)
        assert variant.family == variant.builder.family and variant.converter is expected[variant.family]
