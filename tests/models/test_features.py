"""The feature API (timm's ``forward_intermediates`` / ``features_only`` contract), backbones and the examples."""

from __future__ import annotations

import copy
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

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "examples"))
import detect_shapes  # noqa: E402
import segment_shapes  # noqa: E402
import shapes  # noqa: E402

MODELS = litevit.list_models()
FIRST_OF_FAMILY = list(
    {(litevit.get_variant(n).family, litevit.get_variant(n).builder): n for n in reversed(MODELS)}.values()
)[::-1]
SIZE = (128, 192)  # H, W: multiples of 64, so every map is exactly input / reduction (MobileViT v2 rounds odd maps up)


def _expected(model: torch.nn.Module, size: tuple[int, int] = SIZE) -> list[tuple[int, int, int]]:
    return [(e["num_chs"], size[0] // e["reduction"], size[1] // e["reduction"]) for e in model.feature_info]


@pytest.mark.parametrize("name", MODELS)
def test_contract_on_meta(name: str) -> None:
    """Shapes against feature_info, index selection, stop_early, gradients to every output, state_dict keys."""
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

        keys = set(model.state_dict())
        features = litevit.features_only(model, out_indices=[0, -1])
        assert isinstance(features, FeatureExtractor)
        assert set(features.state_dict()) == {k for k in keys if not k.startswith(model.head_prefixes)}
        outs = features(x)
        assert features.feature_info.channels() == [o.shape[1] for o in outs]
        assert [tuple(o.shape[1:]) for o in outs] == [_expected(model)[0], _expected(model)[-1]]
        for out in outs:
            (grad,) = torch.autograd.grad(out.sum(), x, retain_graph=True)
            assert grad.shape == x.shape


@pytest.mark.parametrize("name", FIRST_OF_FAMILY)
def test_features_model_matches_classifier_and_trains(name: str) -> None:
    torch.manual_seed(0)
    classifier = litevit.create_model(name, img_size=64).eval()
    features = litevit.create_model(name, img_size=64, features_only=True, out_indices=2)
    state = {k: v for k, v in classifier.state_dict().items() if not k.startswith(classifier.head_prefixes)}
    features.load_state_dict(state)  # strict: the same keys, nothing more and nothing less
    features.eval()
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        reference = classifier.forward_intermediates(x, indices=2, norm=True, intermediates_only=True)
        for out, ref in zip(features(x), reference, strict=True):
            torch.testing.assert_close(out, ref)
    features.train()
    x.requires_grad_(True)
    for out in features(x):
        (grad,) = torch.autograd.grad(out.square().mean(), x, retain_graph=True)
        assert torch.isfinite(grad).all() and grad.abs().sum() > 0


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


@pytest.mark.parametrize(
    "name", [FIRST_OF_FAMILY[0], *(pytest.param(n, marks=pytest.mark.slow) for n in FIRST_OF_FAMILY[1:])]
)
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
    assert all(p.grad is not None for p in body.body.stages[0].parameters())
    with torch.no_grad():
        for detector in (faster_rcnn, retinanet, fcos):
            (out,) = detector.eval()(images[:1])
            assert set(out) >= {"boxes", "scores", "labels"}
    single = litevit.backbone("mobilevit_xxs", fpn=False, out_indices=[-1])
    assert single.out_channels == 80 and list(single(torch.randn(1, 3, 64, 64))) == ["0"]
    with pytest.raises(ValueError, match="different widths"):
        litevit.backbone("mobilevit_xxs", fpn=False)


def _brute_force_ap(tp: list[int], num_gt: int) -> float:
    """Precision envelope evaluated on a fine recall grid: the integral VOC AP approximates from the definition."""
    hits = np.cumsum(tp)
    recall, precision = hits / num_gt, hits / np.arange(1, len(tp) + 1)
    grid = np.linspace(0, 1, 100_001)[1:]
    envelope = [precision[recall >= r].max() if (recall >= r).any() else 0.0 for r in grid[::100]]
    return float(np.mean(envelope))


def test_average_precision_by_hand_and_brute_force() -> None:
    # ranked detections: hit, miss, hit, miss, hit for 4 ground-truth boxes
    # recalls .25 .25 .5 .5 .75, precisions 1 .5 .667 .5 .6 -> envelope 1 on (0, .25], .667 on (.25, .5],
    # .6 on (.5, .75], 0 above: AP = .25 * (1 + 2/3 + .6) = 0.566667
    recall = np.array([0.25, 0.25, 0.5, 0.5, 0.75])
    precision = np.array([1.0, 0.5, 2 / 3, 0.5, 0.6])
    assert shapes.average_precision(recall, precision) == pytest.approx(0.25 * (1 + 2 / 3 + 0.6))
    assert _brute_force_ap([1, 0, 1, 0, 1], 4) == pytest.approx(0.25 * (1 + 2 / 3 + 0.6), abs=1e-3)
    rng = np.random.default_rng(0)
    for _ in range(20):
        tp = rng.integers(0, 2, size=12).tolist()
        num_gt = sum(tp) + int(rng.integers(0, 3))
        if num_gt == 0:
            continue
        hits = np.cumsum(tp)
        ap = shapes.average_precision(hits / num_gt, hits / np.arange(1, 13))
        assert ap == pytest.approx(_brute_force_ap(tp, num_gt), abs=2e-3)


def test_mean_average_precision_matching() -> None:
    box = torch.tensor([[0.0, 0.0, 10.0, 10.0]])
    targets = [{"boxes": torch.cat([box, box + 20]), "labels": torch.tensor([1, 2])}]
    # class 1: a duplicate of one box (second is a false positive) -> AP 1; class 2: wrong place -> AP 0
    predictions = [
        {
            "boxes": torch.cat([box, box + 0.5, box + 50]),
            "scores": torch.tensor([0.9, 0.8, 0.7]),
            "labels": torch.tensor([1, 1, 2]),
        }
    ]
    assert shapes.mean_average_precision(predictions, targets) == pytest.approx(0.5)
    perfect = [{"boxes": targets[0]["boxes"], "scores": torch.tensor([0.9, 0.8]), "labels": torch.tensor([1, 2])}]
    assert shapes.mean_average_precision(perfect, targets) == pytest.approx(1.0)


def test_mean_iou_by_hand() -> None:
    truth = torch.tensor([[0, 0, 1, 1], [0, 0, 1, 1]])
    predicted = torch.tensor([[0, 1, 1, 1], [0, 0, 1, 2]])
    # class 0: inter 3, union 4; class 1: inter 3, union 5; class 2: inter 0, union 1
    assert shapes.mean_iou(predicted, truth, 3) == pytest.approx((3 / 4 + 3 / 5 + 0) / 3)


def test_drawn_shapes_have_consistent_boxes_and_masks() -> None:
    for sample in shapes.dataset(20, seed=3):
        assert sample.image.shape == (3, 128, 128) and 0 <= sample.image.min() and sample.image.max() <= 1
        assert len(sample.boxes) == len(sample.labels) >= 1
        for box, label in zip(sample.boxes, sample.labels, strict=True):
            x1, y1, x2, y2 = box.round().int().clamp(0, 128).tolist()
            assert (sample.mask[y1:y2, x1:x2] == label).any()


def test_examples_run_quickly() -> None:
    common = ["--steps", "2", "--batch-size", "2", "--train-images", "4", "--test-images", "4", "--size", "64"]
    detection = detect_shapes.main(common)
    assert 0.0 <= detection["map50"] <= 1.0
    segmentation = segment_shapes.main(common)
    assert 0.0 <= segmentation["miou"] <= 1.0


@pytest.mark.slow
def test_detection_example_reaches_map50() -> None:
    assert detect_shapes.main([])["map50"] >= 0.5


@pytest.mark.slow
def test_segmentation_example_reaches_miou() -> None:
    assert segment_shapes.main([])["miou"] >= 0.6


@pytest.mark.slow
@pytest.mark.parametrize("name", MODELS)
def test_every_features_model_matches_classifier(name: str) -> None:
    classifier = litevit.create_model(name, img_size=64).eval()
    features = litevit.features_only(copy.deepcopy(classifier)).eval()
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        reference = classifier.forward_intermediates(x, norm=True, intermediates_only=True)
        for out, ref in zip(features(x), reference, strict=True):
            torch.testing.assert_close(out, ref)
