"""The feature API (timm's forward_intermediates, prune_intermediate_layers, features_only), DDP, backbones."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import torch
from torchvision.models.detection import FCOS, FasterRCNN, RetinaNet
from torchvision.models.detection.anchor_utils import AnchorGenerator

import litevit
from litevit.models.features import FeatureExtractor, FeatureInfo, SimpleFeaturePyramid, take_indices

REPO = Path(__file__).resolve().parents[2]
MODELS = litevit.list_models()
# the smallest variant of each family and block version (MobileViT v1, v2, v3 on v1, v3 on v2)
SMALLEST = ["levit_128s", "efficientvit_m0", "mobilevit_xxs", "mobilevitv2_050", "mobilevitv3_xxs", "mobilevitv3_050"]
SMALLEST.append("t2t_vit_7")
SIZE = (128, 192)  # H, W: multiples of 64, so every map is exactly input / reduction (MobileViT v2 rounds odd maps up)


def _expected(model: torch.nn.Module, size: tuple[int, int] = SIZE) -> list[tuple[int, int, int]]:
    return [(e["num_chs"], size[0] // e["reduction"], size[1] // e["reduction"]) for e in model.feature_info]


def _trunk_keys(model: torch.nn.Module) -> set[str]:
    return {k for k in model.state_dict() if not k.startswith(model.head_prefixes)}


def _modules_run(model: torch.nn.Module, x: torch.Tensor) -> tuple[list[torch.Tensor], set[str]]:
    """The model's outputs for ``x`` and the names of the modules its forward called (``""``: the model)."""
    ran: set[str] = set()
    hooks = [
        module.register_forward_hook(lambda m, args, out, name=name: ran.add(name))
        for name, module in model.named_modules()
    ]
    outs = model(x)
    for hook in hooks:
        hook.remove()
    return outs, ran


def test_smallest_covers_every_family_and_block_version() -> None:
    def kind(name: str) -> tuple[str, str, str]:
        config = litevit.get_variant(name).config
        return litevit.get_variant(name).family, getattr(config, "attention", ""), getattr(config, "fusion", "")

    assert {kind(n) for n in SMALLEST} == {kind(n) for n in MODELS}


@pytest.mark.parametrize("name", MODELS)
def test_contract_on_meta(name: str) -> None:
    """Shapes against feature_info, index selection, stop_early, gradients to every output and to every trainable
    parameter of the features model, state_dict keys."""
    with torch.device("meta"):
        model = litevit.create_model(name, img_size=SIZE).eval()
        x = torch.randn(2, 3, *SIZE, requires_grad=True)
        final, maps = model.forward_intermediates(x)
        assert [(m.shape[1], m.shape[2], m.shape[3]) for m in maps] == _expected(model)
        assert all(m.shape[0] == 2 for m in maps)
        assert model.forward_head(final).shape == (2, model.config.num_classes)
        nhwc = model.forward_intermediates(x, indices=1, output_fmt="NHWC", intermediates_only=True)
        assert nhwc[0].shape == (2, *maps[-1].shape[2:], maps[-1].shape[1])

        # stop_early: the stages after the last requested one never run
        later = model.get_submodule(model.feature_info[-1]["module"])
        calls: list[int] = []
        hook = later.register_forward_hook(lambda *args: calls.append(1))
        first = model.forward_intermediates(x, indices=[0], stop_early=True, intermediates_only=True)
        assert len(first) == 1 and first[0].shape == maps[0].shape and not calls
        hook.remove()

        keys = _trunk_keys(model)
        expected = _expected(model)
        features = litevit.features_only(model, out_indices=[0, -1])
        assert isinstance(features, FeatureExtractor)
        outs = features(x)
        assert features.feature_info.channels() == [o.shape[1] for o in outs]
        assert [tuple(o.shape[1:]) for o in outs] == [expected[0], expected[-1]]
        for out in outs:
            (grad,) = torch.autograd.grad(out.sum(), x, retain_graph=True)
            assert grad.shape == x.shape
        assert set(features.state_dict()) <= keys
        named = {n: p for n, p in features.named_parameters() if p.requires_grad}
        grads = torch.autograd.grad(sum(o.sum() for o in outs), list(named.values()), allow_unused=True)
        assert [n for n, g in zip(named, grads, strict=True) if g is None] == []  # what DDP requires


@pytest.mark.parametrize(
    "name", [*SMALLEST, *(pytest.param(n, marks=pytest.mark.slow) for n in MODELS if n not in SMALLEST)]
)
@pytest.mark.parametrize("out_indices", [None, [0], [1, -2]], ids=["all", "first", "middle"])
def test_features_model_keeps_only_what_its_maps_use(name: str, out_indices: list[int] | None) -> None:
    """Every tensor of the state_dict belongs to a module the forward calls, every parameter (frozen ones
    included) gets a gradient, and the later stages are gone when ``out_indices`` stops early."""
    with torch.device("meta"):
        model = litevit.create_model(name, img_size=SIZE).train()
        num_points = len(model.feature_info)
        keys = _trunk_keys(model)
        features = litevit.features_only(model, out_indices=out_indices)
        for parameter in features.parameters():
            parameter.requires_grad_(True)
        outs, ran = _modules_run(features, torch.randn(2, 3, *SIZE))
    assert len(outs) == len(features.feature_info) == len(features.out_indices)
    state = set(features.state_dict())
    assert state <= keys
    assert {key.rpartition(".")[0] for key in state} <= ran
    named = dict(features.named_parameters())
    grads = torch.autograd.grad(sum(o.sum() for o in outs), list(named.values()), allow_unused=True)
    assert [n for n, g in zip(named, grads, strict=True) if g is None] == []
    last = features.out_indices[-1]
    if last < num_points - 1:  # the next feature point's module is gone, and with it every later one
        pruned = features.trunk.feature_info[last + 1]["module"]
        assert not any(k.startswith(pruned + ".") for k in state)
        with pytest.raises(ValueError, match="was pruned"):
            features.trunk.forward_intermediates(torch.randn(1, 3, *SIZE, device="meta"), [last + 1])


def _hooked_maps(classifier: torch.nn.Module, x: torch.Tensor) -> list[torch.Tensor]:
    """The classifier's activations at its feature points, captured by forward hooks while ``classifier(x)`` runs
    its own forward (not ``forward_intermediates``), as ``B, C, H, W`` maps.

    A point's module is the one ``feature_info`` names, except T2T-ViT's 1/16 map, which features models take after
    the final norm (``norm=True``): there the hook is on ``norm``. Token outputs ``B, N, C`` are laid out on the grid
    ``ceil(side / reduction)``, a leading class token dropped.
    """
    captured: dict[int, torch.Tensor] = {}
    hooks = []
    for i, entry in enumerate(classifier.feature_info):
        name = "norm" if entry["module"] == "blocks" else entry["module"]
        hook = classifier.get_submodule(name).register_forward_hook(lambda m, a, out, i=i: captured.setdefault(i, out))
        hooks.append(hook)
    classifier(x)
    for hook in hooks:
        hook.remove()
    maps = []
    for i, entry in enumerate(classifier.feature_info):
        out = captured[i]
        if out.ndim == 3:
            height, width = (-(-side // entry["reduction"]) for side in x.shape[-2:])
            out = out[:, out.shape[1] - height * width :]  # without the class token, if any
            out = out.transpose(1, 2).reshape(out.shape[0], -1, height, width)  # B, N, C -> B, C, H, W
        maps.append(out)
    return maps


@pytest.mark.parametrize("name", SMALLEST)
def test_features_model_matches_classifier_and_trains(name: str) -> None:
    """The features model's maps equal the classifier's own activations (forward hooks), for a selection that ends
    at the last point and one that stops early (pruned)."""
    torch.manual_seed(0)
    classifier = litevit.create_model(name, img_size=64).eval()
    for module in classifier.modules():  # non-trivial BatchNorm statistics
        if isinstance(module, torch.nn.BatchNorm2d | torch.nn.BatchNorm1d):
            module.running_mean.uniform_(-0.5, 0.5)
            module.running_var.uniform_(0.5, 2.0)
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        reference = _hooked_maps(classifier, x)
    assert len(reference) == len(classifier.feature_info)
    for out_indices in (None, [0, 1]):
        features = litevit.create_model(
            name, img_size=64, checkpoint=classifier.state_dict(), features_only=True, out_indices=out_indices
        ).eval()
        with torch.no_grad():
            outs = features(x)
        assert len(outs) == len(features.out_indices)
        for out, index in zip(outs, features.out_indices, strict=True):
            torch.testing.assert_close(out, reference[index], rtol=1e-5, atol=1e-5)
    features.train()
    x.requires_grad_(True)
    for out in features(x):
        (grad,) = torch.autograd.grad(out.square().mean(), x, retain_graph=True)
        assert torch.isfinite(grad).all() and grad.abs().sum() > 0


# one case per family and block version that DDP rejected before features models were pruned (each checked with
# the worker's unpruned: prefix): a selection that stops before the last stage (for T2T-ViT, before the backbone),
# MobileViT v1's unused final_conv; and T2T-ViT's 1/16 map alone (the normed backbone: nothing to cut, and the final
# norm must stay)
DDP_CASES = [
    "levit_128s:0",
    "efficientvit_m0:0,1",
    "mobilevit_xxs:all",
    "mobilevitv2_050:1,2",
    "mobilevitv3_xxs:2,3",
    "mobilevitv3_050:2,3",
    "t2t_vit_7:0,1",
    "t2t_vit_7:2",
]
DDP_CONTRAST = "unpruned:mobilevit_xxs:1,2"  # the pre-pruning extractor, which DDP must reject


def test_features_models_train_under_ddp(tmp_path: Path) -> None:
    """Two gloo processes, each features model wrapped in DistributedDataParallel (find_unused_parameters off),
    two SGD steps on a loss over every returned map: each trains, and both ranks end with the same weights."""
    assert {name.split(":")[0] for name in DDP_CASES} == set(SMALLEST)
    command = [
        sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
        str(Path(__file__).with_name("ddp_features_worker.py")), str(tmp_path), *DDP_CASES, DDP_CONTRAST,
    ]  # fmt: skip
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK")}
    env.update(OMP_NUM_THREADS="1", PYTHONPATH=str(REPO / "src"))
    run = subprocess.run(command, capture_output=True, text=True, env=env, timeout=600)
    assert run.returncode == 0, run.stderr[-4000:]
    records = {}
    for rank in (0, 1):
        for line in (tmp_path / f"rank{rank}.jsonl").read_text().splitlines():
            record = json.loads(line)
            records[record["case"], rank] = record
    for case in DDP_CASES:
        first, second = records[case, 0], records[case, 1]
        assert first["ok"] and second["ok"], (case, first.get("error"), second.get("error"))
        assert first["digest"] == second["digest"], case
    for rank in (0, 1):
        assert not records[DDP_CONTRAST, rank]["ok"]
        assert "parameters that were not used in producing loss" in records[DDP_CONTRAST, rank]["error"]


def test_take_indices_and_feature_info() -> None:
    assert take_indices(5, None) == ([0, 1, 2, 3, 4], 4)
    assert take_indices(5, 2) == ([3, 4], 4)
    assert take_indices(5, [-1, 1, 1]) == ([1, 4], 4)
    for bad in (0, 6, [5], [-6], []):
        with pytest.raises(ValueError):
            take_indices(5, bad)
    info = FeatureInfo([dict(num_chs=c, reduction=r, module=f"s{r}") for c, r in ((8, 4), (16, 8), (32, 16))], [0, 2])
    assert info.channels() == [8, 32] and info.reduction() == [4, 16] and info.module_name(1) == "s16"
    assert len(info) == 2 and info[0]["num_chs"] == 8 and info.get_dicts()[1]["module"] == "s16"
    features = litevit.create_model("mobilevit_xxs", features_only=True, out_indices=(1, 2, 3, 4))
    assert features.feature_info.channels() == [24, 48, 64, 80]
    assert features.feature_info.reduction() == [4, 8, 16, 32]
    assert features.feature_info.module_name() == ["stages.1", "stages.2", "stages.3", "stages.4"]


def test_checkpoint_at_224_loads_into_features_model_at_detector_sizes() -> None:
    for name in ("levit_128s", "efficientvit_m0"):
        source = litevit.create_model(name)
        resized = litevit.create_model(name, img_size=(480, 640), checkpoint=source.state_dict())
        features = litevit.create_model(name, img_size=(480, 640), checkpoint=source.state_dict(), features_only=True)
        expected = {k: v for k, v in resized.state_dict().items() if not k.startswith(resized.head_prefixes)}
        assert set(features.state_dict()) == set(expected)
        for key, value in features.state_dict().items():
            torch.testing.assert_close(value, expected[key], atol=0, rtol=0)
    with torch.no_grad():
        outs = features.eval()(torch.randn(1, 3, 480, 640))
    assert [tuple(o.shape[-2:]) for o in outs] == [(30, 40), (15, 20), (8, 10)]


@pytest.mark.parametrize("name", ["efficientvit_m0", "mobilevit_xxs"])
def test_any_size_runs(name: str) -> None:
    """Sides not divisible by 32 give ceil(side / reduction). (MobileViT v2 blocks round odd maps up, as cvnets.)"""
    features = litevit.create_model(name, features_only=True).eval()
    with torch.no_grad():
        for height, width in ((200, 136), (75, 100)):
            outs = features(torch.randn(1, 3, height, width))
            expected = [(-(-height // r), -(-width // r)) for r in features.feature_info.reduction()]
            assert [tuple(o.shape[-2:]) for o in outs] == expected


def test_levit_and_t2t_sizes_need_img_size_and_say_so() -> None:
    levit = litevit.create_model("levit_128s", features_only=True)
    with pytest.raises(ValueError, match=r"built for 224x224 inputs .*got 512x512.*img_size=\(512, 512\)"):
        levit(torch.randn(1, 3, 512, 512))
    t2t = litevit.create_model("t2t_vit_7", features_only=True)
    with pytest.raises(ValueError, match=r"built for 224x224 inputs .*img_size=\(100, 140\)"):
        t2t(torch.randn(1, 3, 100, 140))
    levit = litevit.create_model("levit_128s", img_size=(75, 100), features_only=True).eval()
    with torch.no_grad():
        assert [tuple(o.shape[-2:]) for o in levit(torch.randn(1, 3, 75, 100))] == [(5, 7), (3, 4), (2, 2)]


def test_t2t_simple_pyramid() -> None:
    pyramid = litevit.features_only(litevit.create_model("t2t_vit_7", img_size=96), simple_pyramid=True)
    assert isinstance(pyramid, SimpleFeaturePyramid)
    assert pyramid.feature_info.reduction() == [4, 8, 16, 32]
    assert pyramid.feature_info.channels() == [64, 128, 256, 256]
    outs = pyramid(torch.randn(2, 3, 96, 96))
    assert [tuple(o.shape[1:]) for o in outs] == [(64, 24, 24), (128, 12, 12), (256, 6, 6), (256, 3, 3)]


@pytest.mark.parametrize("name", [SMALLEST[0], *(pytest.param(n, marks=pytest.mark.slow) for n in SMALLEST[1:])])
def test_fuse_and_onnx_export(name: str, tmp_path: Path) -> None:
    features = litevit.create_model(name, img_size=64, features_only=True, out_indices=[0, -1]).eval()
    for module in features.modules():  # non-trivial BatchNorm statistics
        if isinstance(module, torch.nn.BatchNorm2d | torch.nn.BatchNorm1d):
            module.running_mean.uniform_(-0.5, 0.5)
            module.running_var.uniform_(0.5, 2.0)
    x = torch.randn(3, 3, 64, 64)
    with torch.no_grad():
        reference = features(x)
        for out, ref in zip(litevit.fuse(features)(x), reference, strict=True):
            torch.testing.assert_close(out, ref, atol=1e-4, rtol=1e-4)
    result = litevit.export(features, tmp_path / "features.onnx", opset=17)
    assert result.metadata.num_classes == 0
    session = ort.InferenceSession(str(tmp_path / "features.onnx"), providers=["CPUExecutionProvider"])
    assert [o.name for o in session.get_outputs()] == ["features_0", "features_1"]
    outs = session.run(None, {session.get_inputs()[0].name: x.numpy()})  # batch 3: the export traced batch 2
    for out, ref in zip(outs, reference, strict=True):
        np.testing.assert_allclose(out, ref.numpy(), atol=1e-4 * ref.abs().max().item(), rtol=0)


def test_pruned_features_model_exports_at_another_size(tmp_path: Path) -> None:
    """Export rebuilds a features model at the export size from its own (pruned) state: the ONNX maps equal those
    of the features model built at that size from the classifier's checkpoint (attention tables resampled)."""
    classifier = litevit.create_model("levit_128s", img_size=64)
    selection = dict(checkpoint=classifier.state_dict(), features_only=True, out_indices=[0, 1])
    features = litevit.create_model("levit_128s", img_size=64, **selection)
    assert not any(k.startswith("stages.2.") for k in features.state_dict())
    litevit.export(features, tmp_path / "features.onnx", img_size=(96, 128), opset=17)
    direct = litevit.create_model("levit_128s", img_size=(96, 128), **selection).eval()
    x = torch.randn(2, 3, 96, 128)
    with torch.no_grad():
        reference = direct(x)
    session = ort.InferenceSession(str(tmp_path / "features.onnx"), providers=["CPUExecutionProvider"])
    outs = session.run(None, {session.get_inputs()[0].name: x.numpy()})
    assert len(outs) == 2
    for out, ref in zip(outs, reference, strict=True):
        np.testing.assert_allclose(out, ref.numpy(), atol=1e-4 * ref.abs().max().item(), rtol=0)


def test_backbone_plugs_into_torchvision_detectors() -> None:
    body = litevit.backbone("efficientvit_m0", fpn_channels=32)
    assert body.out_channels == 32
    maps = body(torch.randn(1, 3, 128, 160))
    assert list(maps) == ["0", "1", "2", "pool"] and all(m.shape[1] == 32 for m in maps.values())
    anchors = AnchorGenerator(((32,), (64,), (128,), (256,)), ((0.5, 1.0, 2.0),) * 4)
    single_anchor = AnchorGenerator(((32,), (64,), (128,), (256,)), ((1.0,),) * 4)
    images = [torch.rand(3, 120, 150), torch.rand(3, 100, 100)]
    targets = [{"boxes": torch.tensor([[10.0, 20.0, 60.0, 80.0]]), "labels": torch.tensor([1])}] * 2
    faster_rcnn = FasterRCNN(body, num_classes=3, rpn_anchor_generator=anchors, min_size=128, max_size=160)
    retinanet = RetinaNet(body, num_classes=3, anchor_generator=anchors, min_size=128, max_size=160)
    fcos = FCOS(body, num_classes=3, anchor_generator=single_anchor, min_size=128, max_size=160)
    losses = fcos.train()(images, targets)  # training runs through the backbone (the examples train it fully)
    sum(losses.values()).backward()
    assert [n for n, p in body.named_parameters() if p.grad is None] == []
    with torch.no_grad():
        for detector in (faster_rcnn, retinanet, fcos):
            (out,) = detector.eval()(images[:1])
            assert set(out) >= {"boxes", "scores", "labels"}
    # a pruned body (stages 1..3 of 5; no stage 4, no final_conv) trains in a detector, every parameter used
    pruned = litevit.backbone("mobilevit_xxs", out_indices=[1, 2, 3], fpn_channels=32)  # FCOS: GroupNorm(32)
    assert pruned.body.feature_info.reduction() == [4, 8, 16] and len(pruned.body.stages) == 4
    assert not any(k.startswith(("body.stages.4.", "body.final_conv.")) for k in pruned.state_dict())
    detector = FCOS(pruned, num_classes=3, anchor_generator=single_anchor, min_size=128, max_size=160)
    sum(detector.train()(images, targets).values()).backward()
    assert [n for n, p in pruned.named_parameters() if p.grad is None] == []
    single = litevit.backbone("mobilevit_xxs", fpn=False, out_indices=[-1])
    assert single.out_channels == 80 and list(single(torch.randn(1, 3, 64, 64))) == ["0"]
    with pytest.raises(ValueError, match="different widths"):
        litevit.backbone("mobilevit_xxs", fpn=False)


@pytest.mark.slow
@pytest.mark.parametrize("name", MODELS)
def test_every_features_model_matches_classifier(name: str) -> None:
    classifier = litevit.create_model(name, img_size=64).eval()
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        reference = _hooked_maps(classifier, x)
        features = litevit.create_model(name, img_size=64, checkpoint=classifier.state_dict(), features_only=True)
        for out, ref in zip(features.eval()(x), reference, strict=True):
            torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)
