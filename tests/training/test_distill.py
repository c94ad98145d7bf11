"""DeiT distillation losses against hand computation, the criterion's head routing, and teacher loading."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from litevit.training.losses import DistillationLoss, build_teacher, classification_loss, distillation_loss


def _hand_log_softmax(logits: list[float]) -> list[float]:
    top = max(logits)
    log_z = top + math.log(sum(math.exp(v - top) for v in logits))
    return [v - log_z for v in logits]


def _hand_ce(logits: torch.Tensor, labels: list[int]) -> float:
    rows = logits.double().tolist()
    return sum(-_hand_log_softmax(row)[y] for row, y in zip(rows, labels, strict=True)) / len(rows)


def _hand_soft_kd(student: torch.Tensor, teacher: torch.Tensor, tau: float) -> float:
    """sum over rows and classes of p_t (log p_t - log p_s) at temperature tau, times tau^2, over B * K."""
    total = 0.0
    for s_row, t_row in zip(student.double().tolist(), teacher.double().tolist(), strict=True):
        log_ps = _hand_log_softmax([v / tau for v in s_row])
        log_pt = _hand_log_softmax([v / tau for v in t_row])
        total += sum(math.exp(lt) * (lt - ls) for lt, ls in zip(log_pt, log_ps, strict=True))
    return total * tau * tau / student.numel()


@pytest.fixture
def logits() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    student = torch.randn(6, 5, generator=g, dtype=torch.float64) * 2
    teacher = torch.randn(6, 5, generator=g, dtype=torch.float64) * 3
    labels = torch.randint(0, 5, (6,), generator=g)
    return student, teacher, labels


def test_hard_distillation_is_ce_against_teacher_argmax(logits: tuple[torch.Tensor, ...]) -> None:
    student, teacher, _ = logits
    argmax = [max(range(5), key=lambda k, row=row: row[k]) for row in teacher.tolist()]
    expected = _hand_ce(student, argmax)
    assert distillation_loss(student, teacher, "hard").item() == pytest.approx(expected, rel=1e-12)
    # the temperature plays no part in hard distillation
    assert distillation_loss(student, teacher, "hard", tau=3.0).item() == pytest.approx(expected, rel=1e-12)


@pytest.mark.parametrize("tau", [1.0, 3.0])
def test_soft_distillation_matches_hand_kl(logits: tuple[torch.Tensor, ...], tau: float) -> None:
    student, teacher, _ = logits
    expected = _hand_soft_kd(student, teacher, tau)
    assert expected > 0
    assert distillation_loss(student, teacher, "soft", tau).item() == pytest.approx(expected, rel=1e-10)


def test_soft_distillation_with_equal_logits_is_zero(logits: tuple[torch.Tensor, ...]) -> None:
    student, _, _ = logits
    assert distillation_loss(student, student.clone(), "soft", 2.0).item() == pytest.approx(0.0, abs=1e-12)
    # a constant shift of the logits leaves the distributions, hence the loss, unchanged
    assert distillation_loss(student, student + 4.0, "soft", 2.0).item() == pytest.approx(0.0, abs=1e-12)


def test_classification_loss_with_soft_targets_and_smoothing(logits: tuple[torch.Tensor, ...]) -> None:
    student, _, labels = logits
    one_hot = F.one_hot(labels, 5).double()
    # one-hot soft targets give plain cross-entropy, with and without smoothing
    assert classification_loss(student, one_hot).item() == pytest.approx(_hand_ce(student, labels.tolist()))
    assert classification_loss(student, one_hot, 0.1).item() == pytest.approx(
        classification_loss(student, labels, 0.1).item(), rel=1e-12
    )
    # a 50/50 mixed target costs the mean of the two cross-entropies
    other = labels.roll(1)
    mixed = 0.5 * one_hot + 0.5 * F.one_hot(other, 5).double()
    expected = 0.5 * _hand_ce(student, labels.tolist()) + 0.5 * _hand_ce(student, other.tolist())
    assert classification_loss(student, mixed).item() == pytest.approx(expected, rel=1e-12)


class _Fixed(nn.Module):
    """A teacher that returns given logits and records the mode it is called in."""

    def __init__(self, logits: torch.Tensor) -> None:
        super().__init__()
        self.logits = logits
        self.weight = nn.Parameter(torch.ones(1, dtype=logits.dtype))
        self.grad_enabled: bool | None = None

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        self.grad_enabled = torch.is_grad_enabled()
        return self.logits * self.weight


@pytest.mark.parametrize("kind", ["hard", "soft"])
def test_criterion_routes_heads(logits: tuple[torch.Tensor, ...], kind: str) -> None:
    student, teacher_logits, labels = logits
    dist_head = student.flip(0)
    images = torch.zeros(6, 3, 4, 4)
    teacher = _Fixed(teacher_logits)
    alpha = 0.3
    criterion = DistillationLoss(teacher, kind, alpha=alpha, tau=2.0)
    base = _hand_ce(student, labels.tolist())
    # two heads: the class head learns the labels, the distillation head the teacher
    two = criterion(images, (student, dist_head), labels).item()
    assert two == pytest.approx(
        (1 - alpha) * base + alpha * distillation_loss(dist_head, teacher_logits, kind, 2.0).item(), rel=1e-10
    )
    # one output: plain knowledge distillation on it
    one = criterion(images, student, labels).item()
    assert one == pytest.approx(
        (1 - alpha) * base + alpha * distillation_loss(student, teacher_logits, kind, 2.0).item(), rel=1e-10
    )
    assert teacher.grad_enabled is False  # the teacher ran under no_grad


def test_alpha_zero_gives_the_base_loss(logits: tuple[torch.Tensor, ...]) -> None:
    student, teacher_logits, labels = logits
    images = torch.zeros(6, 3, 4, 4)
    for kind in ("hard", "soft"):
        criterion = DistillationLoss(_Fixed(teacher_logits), kind, alpha=0.0, smoothing=0.1)
        expected = F.cross_entropy(student, labels, label_smoothing=0.1).item()
        assert criterion(images, student, labels).item() == pytest.approx(expected, rel=1e-12)
        assert criterion(images, (student, student.flip(0)), labels).item() == pytest.approx(expected, rel=1e-12)


def test_without_teacher_both_heads_learn_the_labels(logits: tuple[torch.Tensor, ...]) -> None:
    student, _, labels = logits
    dist_head = student.flip(0)
    criterion = DistillationLoss(None, "none")
    expected = (_hand_ce(student, labels.tolist()) + _hand_ce(dist_head, labels.tolist())) / 2
    assert criterion(torch.zeros(1), (student, dist_head), labels).item() == pytest.approx(expected, rel=1e-12)
    assert criterion(torch.zeros(1), student, labels).item() == pytest.approx(_hand_ce(student, labels.tolist()))


def test_gradients_reach_only_the_student(logits: tuple[torch.Tensor, ...]) -> None:
    student, teacher_logits, labels = logits
    teacher = _Fixed(teacher_logits)
    cls_head = student.clone().requires_grad_(True)
    dist_head = student.flip(0).clone().requires_grad_(True)
    loss = DistillationLoss(teacher, "soft", alpha=1.0)(torch.zeros(1), (cls_head, dist_head), labels)
    loss.backward()
    assert teacher.weight.grad is None
    assert cls_head.grad is None or torch.count_nonzero(cls_head.grad) == 0  # alpha 1: labels play no part
    assert torch.count_nonzero(dist_head.grad) > 0


def test_bad_settings_are_clear() -> None:
    with pytest.raises(ValueError, match="needs a teacher"):
        DistillationLoss(None, "hard")
    with pytest.raises(ValueError, match="alpha"):
        DistillationLoss(_Fixed(torch.zeros(1, 2)), "hard", alpha=1.5)
    with pytest.raises(ValueError, match="same classes"):
        distillation_loss(torch.zeros(2, 3), torch.zeros(2, 4), "hard")
    with pytest.raises(ValueError, match="unknown teacher"):
        build_teacher("no_such_network", None, 3, 32)


def test_torchvision_teacher_loads_its_checkpoint(tmp_path: Path) -> None:
    import torchvision

    reference = torchvision.models.get_model("resnet18", weights=None, num_classes=3).eval()
    path = tmp_path / "teacher.pth"
    torch.save({"model": reference.state_dict()}, path)
    teacher = build_teacher("resnet18", str(path), 3, 32)
    assert not teacher.training
    assert not any(p.requires_grad for p in teacher.parameters())
    x = torch.randn(2, 3, 32, 32)
    torch.testing.assert_close(teacher(x), reference(x))
    with pytest.raises(ValueError, match="does not fit torchvision's resnet18"):
        build_teacher("resnet18", str(path), 5, 32)


def test_teacher_sees_its_own_preprocessing_from_the_same_crop(tmp_path: Path) -> None:
    """A MobileViT student (BGR, [0, 1]) and a torchvision teacher (RGB, ImageNet mean/std): through the wrapper, the
    teacher's logits on the student's batch equal its logits on its own preprocessing of the same image."""
    import dataclasses

    import numpy as np
    import torchvision
    from PIL import Image

    import litevit
    from litevit.data import eval_transform
    from litevit.registry import DataConfig

    student_data = dataclasses.replace(litevit.get_variant("mobilevit_xxs").data, img_size=32)
    assert student_data.channel_order == "BGR" and student_data.mean == (0.0, 0.0, 0.0)
    teacher_data = dataclasses.replace(student_data, mean=DataConfig().mean, std=DataConfig().std, channel_order="RGB")
    rng = np.random.default_rng(0)
    image = Image.fromarray(rng.integers(0, 256, (40, 48, 3), dtype=np.uint8))
    student_x = eval_transform(student_data)(image)[None]  # 1, 3, 32, 32: BGR in [0, 1]
    teacher_x = eval_transform(teacher_data)(image)[None]  # the same crop as the teacher's own preprocessing

    torch.manual_seed(0)
    reference = torchvision.models.get_model("resnet18", weights=None, num_classes=3).eval()
    path = tmp_path / "teacher.pth"
    torch.save(reference.state_dict(), path)
    teacher = build_teacher("resnet18", str(path), 3, 32, student=student_data)
    with torch.no_grad():
        expected = reference(teacher_x)
        torch.testing.assert_close(teacher(student_x), expected, atol=1e-5, rtol=1e-4)
        assert not torch.allclose(reference(student_x), expected, atol=1e-2)  # the student's input would be wrong

    # and inside the criterion: hard distillation targets the teacher's class on its own preprocessing
    criterion = DistillationLoss(teacher, "hard", alpha=1.0)
    student_logits = torch.randn(1, 3, dtype=torch.float32)
    loss = criterion(student_x, student_logits, torch.tensor([0]))
    torch.testing.assert_close(loss, F.cross_entropy(student_logits, expected.argmax(-1)))
