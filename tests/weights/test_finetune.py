"""Fine-tuning and loading, on every family and every release form: a new class count keeps the backbone bit for bit
and replaces only the head; ``use_ema`` picks the weights it names; ``load_checkpoint`` follows ``create_model``'s
rules and updates ``model_info``; features models load classifier checkpoints and their own ``state_dict``.

The weights are the reference fixtures' recipe weights (../shared/refs), written the way each release form ships
them. The reference for "the backbone" is the model loaded from the bare official state dict, whose logits are
checked against the official implementation's (``test_reference_models_give_the_official_logits``).
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path
from typing import Any

import pytest
import torch
from reference import assert_logits_match, load_fixture, recipe_state_dict

import litevit
from litevit.registry import get_variant
from litevit.training.checkpoint import export_safetensors
from litevit.weights.reading import CheckpointError

# one variant per family: (official fixture, timm fixture or None where timm has no port)
FAMILIES = {
    "levit_128s": ("official/LeViT_128S.json", "timm/levit_128s.json"),
    "efficientvit_m0": ("official/EfficientViT_M0.json", "timm/efficientvit_m0.json"),
    "mobilevit_xxs": ("official/mobilevit_xx_small.json", "timm/mobilevit_xxs.json"),
    "mobilevitv2_050": ("official/mobilevit_v2_0.5.json", "timm/mobilevitv2_050.json"),
    "mobilevitv3_xxs": ("official/mobilevit_v3_xx_small_v3.json", None),
    "t2t_vit_7": ("official/t2t_vit_7.json", None),
}
NOISE = 0.5  # the other weights of a two-weights file: every float + NOISE
# release form -> (which weights the loader takes by default, which the file's EMA is); "ema"/"other" per form
FORMS = {
    "deit_main": "DeiT / LeViT / EfficientViT main.py: {'model', 'model_ema', 'optimizer', ..., 'args'}",
    "timm_saver": "timm CheckpointSaver (T2T-ViT): {'state_dict', 'state_dict_ema', 'args', 'metric', ...}",
    "cvnets_best": "ml-cvnets *_best.pt: a bare state dict",
    "cvnets_training": "ml-cvnets training_checkpoint_*.pt: {'model_state_dict', 'ema_state_dict', ...}",
    "timm_layout": "timm's port, model.safetensors",
    "litevit_best": "litevit best.safetensors with metadata",
    "litevit_last": "litevit last.pt: {'variant', 'model', 'model_ema', ...}",
}
TWO_WEIGHTS = ("deit_main", "timm_saver", "cvnets_training", "litevit_last")  # the forms that carry an EMA too


def _noisy(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k: v + NOISE if v.is_floating_point() else v for k, v in state.items()}


class Family:
    """One family's fixture weights: official and timm layouts, and litevit's (the reference model's state)."""

    def __init__(self, name: str) -> None:
        official, timm = FAMILIES[name]
        self.name = name
        self.spec = load_fixture(official)
        self.official = recipe_state_dict(self.spec)
        self.timm_spec = load_fixture(timm) if timm else None
        self.timm = recipe_state_dict(self.timm_spec) if timm else None  # other weights: keys seed the recipe
        model = litevit.create_model(name, checkpoint=self.official)
        self.model = model
        self.reference = {k: v.clone() for k, v in model.state_dict().items()}
        timm_model = litevit.create_model(name, checkpoint=self.timm) if timm else None
        self.timm_reference = {k: v.clone() for k, v in timm_model.state_dict().items()} if timm_model else None
        self.head = {k for k in self.reference if k.startswith(model.head_prefixes)}
        # what the model builds itself when an official file lacks it (T2T-ViT's fixed position table)
        self.built = set(self.reference) - set(self.official) - {k for k in self.reference if "." in k}

    def write(self, form: str, folder: Path) -> tuple[Path, bool | None]:
        """The file of ``form`` whose default weights are the fixture's; and whether its other weights are an EMA
        (True), the non-EMA ones (False), or absent (None)."""
        from safetensors.torch import save_file

        state, other = self.official, _noisy(self.official)
        args = argparse.Namespace(model=self.name, lr=5e-4)
        if form == "deit_main":
            path, other_is_ema = folder / "checkpoint.pth", True
            torch.save(
                {"model": state, "model_ema": other, "optimizer": {"state": {}, "param_groups": []}, "epoch": 299,
                 "lr_scheduler": {"last_epoch": 299}, "scaler": {"scale": 1024.0}, "args": args},
                path,
            )  # fmt: skip
        elif form == "timm_saver":
            path, other_is_ema = folder / "model_best.pth.tar", False
            torch.save(
                {"epoch": 309, "arch": self.name, "state_dict": other, "state_dict_ema": state, "args": args,
                 "metric": 71.7, "optimizer": {"state": {}, "param_groups": []}},
                path,
            )  # fmt: skip
        elif form == "cvnets_best":
            path, other_is_ema = folder / "checkpoint_ema_best.pt", None
            torch.save(state, path)
        elif form == "cvnets_training":
            path, other_is_ema = folder / "training_checkpoint_last.pt", False
            torch.save(
                {"iterations": 1000, "epoch": 299, "model_state_dict": other, "ema_state_dict": state,
                 "optim_state_dict": {"state": {}, "param_groups": []}, "gradient_scaler_state_dict": {},
                 "best_metric": 70.2},
                path,
            )  # fmt: skip
        elif form == "timm_layout":
            path, other_is_ema = folder / "model.safetensors", None
            save_file({k: v.contiguous() for k, v in self.timm.items()}, str(path))
        elif form == "litevit_best":
            path, other_is_ema = folder / "best.safetensors", None
            export_safetensors(path, self.reference, self.name, self.meta(weights="ema"), self.model.model_info.data)
        elif form == "litevit_last":
            path, other_is_ema = folder / "last.pt", True
            data = vars(self.model.model_info.data)
            torch.save(
                {"variant": self.name, **self.meta(), "data_config": data, "epoch": 3, "model": self.reference,
                 "model_ema": _noisy(self.reference), "optimizer": {"state": {}, "param_groups": []}},
                path,
            )  # fmt: skip
        else:
            raise AssertionError(form)
        return path, other_is_ema

    def meta(self, **extra: Any) -> dict[str, Any]:
        classes = [f"c{i}" for i in range(1000)]
        return {
            "num_classes": 1000,
            "img_size": self.model.config.img_size,
            "model_kwargs": {},
            "classes": classes,
            **extra,
        }


_FAMILIES: dict[str, Family] = {}


@pytest.fixture
def family(request: pytest.FixtureRequest) -> Family:
    name = request.param
    if name not in _FAMILIES:
        _FAMILIES[name] = Family(name)
    return _FAMILIES[name]


def _cases(forms: tuple[str, ...] | dict[str, str]) -> list:
    return [
        pytest.param(name, form, id=f"{name}-{form}")
        for name, (_, timm) in FAMILIES.items()
        for form in forms
        if form != "timm_layout" or timm is not None
    ]


def _assert_backbone_kept(
    model: torch.nn.Module, family: Family, plus: float = 0.0, every_key: bool = False, form: str = ""
) -> None:
    """Every non-head tensor equals the reference's bit for bit, + ``plus`` for the floats the file held (all of a
    litevit file's, ``every_key``). The timm layout's reference is the model loaded from timm's fixture weights."""
    reference = family.timm_reference if form == "timm_layout" else family.reference
    for key, value in model.state_dict().items():
        if key in family.head:
            continue
        shifted = value.is_floating_point() and (every_key or key not in family.built)
        expected = reference[key] + plus if shifted else reference[key]
        assert torch.equal(value, expected), key


@pytest.mark.parametrize("family", list(FAMILIES), indirect=True)
def test_reference_models_give_the_official_logits(family: Family) -> None:
    assert_logits_match(litevit.create_model(family.name, checkpoint=family.reference), family.spec)
    if family.timm_spec is not None:
        assert_logits_match(litevit.create_model(family.name, checkpoint=family.timm_reference), family.timm_spec)


@pytest.mark.parametrize(("family", "form"), _cases(FORMS), indirect=["family"])
def test_new_class_count_keeps_the_backbone_bit_for_bit(family: Family, form: str, tmp_path: Path, caplog) -> None:
    path, _ = family.write(form, tmp_path)
    with caplog.at_level(logging.WARNING, logger="litevit"):
        tuned = litevit.create_model(family.name, checkpoint=path, num_classes=10)
    assert f"{path} has a 1000-class head; num_classes=10 replaces it with a fresh, untrained head" in caplog.text
    state = tuned.state_dict()
    assert set(state) == set(family.reference)
    _assert_backbone_kept(tuned, family, form=form)
    assert family.head
    for key in family.head:  # new: another shape, or fresh values (LeViT's and EfficientViT's head BatchNorm)
        if state[key].is_floating_point():
            assert state[key].shape != family.reference[key].shape or not torch.equal(state[key], family.reference[key])
    assert tuned.model_info.num_classes == 10 and tuned.model_info.class_names is None
    size = tuned.config.img_size
    assert tuned.eval()(torch.randn(1, 3, size, size)).shape == (1, 10)


@pytest.mark.parametrize("family", list(FAMILIES), indirect=True)
def test_backbone_with_a_class_count_from_an_official_file(family: Family, tmp_path: Path) -> None:
    path, _ = family.write("cvnets_best", tmp_path)
    body = litevit.backbone(family.name, checkpoint=path, num_classes=10).body.state_dict()
    # T2T-ViT's simple pyramid holds the features model as ``body.`` and its own new layers beside it
    trunk = {k.removeprefix("body."): v for k, v in body.items() if k.startswith("body.")} or body
    assert trunk and all(torch.equal(v, family.reference[k]) for k, v in trunk.items())


# ----------------------------------------------------------------------------------------------------------------- EMA


@pytest.mark.parametrize(("family", "form"), _cases(TWO_WEIGHTS), indirect=["family"])
def test_use_ema_picks_the_weights_it_names(family: Family, form: str, tmp_path: Path) -> None:
    path, other_is_ema = family.write(form, tmp_path)
    for use_ema in (True, False):
        plus = NOISE if use_ema == other_is_ema else 0.0  # the fixture weights, or the other (+ NOISE) ones
        every = form.startswith("litevit")
        model = litevit.create_model(family.name, checkpoint=path, use_ema=use_ema)
        _assert_backbone_kept(model, family, plus, every)
        assert ("ema" in model.model_info.taken.split(" ")[0]) == use_ema, model.model_info.taken
        if use_ema:  # the other entry points pass use_ema on to the same reader
            _assert_backbone_kept(litevit.load_checkpoint(model, path, use_ema=False), family, NOISE - plus, every)
            if every:
                _assert_backbone_kept(litevit.load(path, use_ema=True), family, plus, every)


@pytest.mark.parametrize("family", list(FAMILIES), indirect=True)
def test_use_ema_on_files_that_hold_one_kind_is_refused(family: Family, tmp_path: Path) -> None:
    best, _ = family.write("litevit_best", tmp_path)  # its metadata says weights="ema"
    _assert_backbone_kept(litevit.load(best, use_ema=True), family)
    with pytest.raises(CheckpointError, match=r"holds only the EMA weights .*use_ema=False asks for the others"):
        litevit.load(best, use_ema=False)
    last = tmp_path / "no_ema_last.pt"
    torch.save({"variant": family.name, **family.meta(), "model": family.reference, "model_ema": None}, last)
    with pytest.raises(CheckpointError, match=r"no_ema_last\.pt: the checkpoint .* has no EMA weights"):
        litevit.load(last, use_ema=True)
    ckpt = litevit.read_checkpoint(best)
    with pytest.raises(CheckpointError, match="use_ema=False asks for the other weights"):
        litevit.create_model(family.name, checkpoint=ckpt, use_ema=False)


# ------------------------------------------------------------------------------------------------- load_checkpoint


@pytest.mark.parametrize("family", list(FAMILIES), indirect=True)
def test_load_checkpoint_replaces_the_head_and_describes_the_weights(family: Family, tmp_path: Path, caplog) -> None:
    path, _ = family.write("deit_main", tmp_path)
    model = litevit.create_model(family.name, num_classes=10)
    head = {k: v.clone() for k, v in model.state_dict().items() if k in family.head}
    with caplog.at_level(logging.WARNING, logger="litevit"):
        assert litevit.load_checkpoint(model, path) is model
    assert "has a 1000-class head; num_classes=10 replaces it" in caplog.text
    _assert_backbone_kept(model, family)
    assert all(torch.equal(model.state_dict()[k], v) for k, v in head.items())  # the model's own head, untouched
    info = model.model_info
    assert (info.weights, info.num_classes, info.class_names) == (str(path), 10, None)
    assert info.taken.startswith("model (DeiT-style main.py")

    # the same class count: the file's head and preprocessing; an official file names no classes, and 1000 rows alone
    # do not make them ImageNet's (only published ImageNet weights or the file's own metadata name them)
    same = litevit.load_checkpoint(litevit.create_model(family.name), path)
    assert all(torch.equal(same.state_dict()[k], family.reference[k]) for k in family.head)
    assert same.model_info.num_classes == 1000 and same.model_info.class_names is None
    assert litevit.create_model(family.name, checkpoint=path).model_info.class_names is None
    tinted = tmp_path / "tinted.safetensors"
    data = dict(vars(family.model.model_info.data), mean=(0.5, 0.5, 0.5), channel_order="BGR")
    export_safetensors(tinted, family.reference, family.name, family.meta(), litevit.DataConfig(**data))
    loaded = litevit.load_checkpoint(litevit.create_model(family.name), tinted)
    assert loaded.model_info.data.mean == (0.5, 0.5, 0.5) and loaded.model_info.data.channel_order == "BGR"
    assert loaded.model_info.class_names == tuple(f"c{i}" for i in range(1000))
    assert loaded.model_info.weights == str(tinted)


# ------------------------------------------------------------------------------------------------- features models


@pytest.mark.parametrize("family", list(FAMILIES), indirect=True)
@pytest.mark.parametrize("out_indices", [None, [0]], ids=["all", "first"])
def test_features_models_load_classifier_checkpoints_and_their_own_state(
    family: Family, out_indices: list[int] | None, tmp_path: Path
) -> None:
    path, _ = family.write("deit_main", tmp_path)
    # a classifier checkpoint into a features model: through create_model and through load_checkpoint
    features = litevit.create_model(family.name, checkpoint=path, features_only=True, out_indices=out_indices)
    own = features.state_dict()
    assert own and not set(own) & family.head
    assert all(torch.equal(v, family.reference[k]) for k, v in own.items())
    later = litevit.load_checkpoint(
        litevit.create_model(family.name, features_only=True, out_indices=out_indices), path
    )
    assert later.state_dict().keys() == own.keys()
    assert all(torch.equal(v, own[k]) for k, v in later.state_dict().items())
    assert later.model_info.weights == str(path)
    # its own state_dict back (pruned of the layers its maps do not need, when the features model prunes them)
    again = litevit.create_model(family.name, checkpoint=own, features_only=True, out_indices=out_indices)
    assert again.state_dict().keys() == own.keys()
    assert all(torch.equal(v, own[k]) for k, v in again.state_dict().items())
    # but a classifier needs its whole trunk: a features state_dict is not a classifier checkpoint
    missing = sorted(set(family.reference) - set(own) - family.head)
    if missing:
        with pytest.raises(CheckpointError, match="missing keys"):
            litevit.create_model(family.name, checkpoint=own)


def test_family_table_covers_every_family() -> None:
    assert {get_variant(n).family for n in FAMILIES} == {get_variant(n).family for n in litevit.list_models()}
    assert {"mobilevit_xxs", "mobilevitv2_050", "mobilevitv3_xxs"} <= set(FAMILIES)  # MobileViT v1, v2 and v3
