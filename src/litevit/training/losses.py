"""Training losses: label-smoothed cross-entropy, DeiT distillation (arXiv:2012.12877, Sec. 4) and the teacher."""

from __future__ import annotations

import logging
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from ..registry import DataConfig, list_models
from ..weights.checks import load_exact
from ..weights.loading import ModelInfo, create_model, load
from ..weights.reading import read_checkpoint
from ..weights.records import split_name
from .config import DISTILL_KINDS

log = logging.getLogger("litevit.training.train")

# ---------------------------------------------------------------------------------------------------------- losses


def classification_loss(logits: torch.Tensor, target: torch.Tensor, smoothing: float = 0.0) -> torch.Tensor:
    """Cross-entropy against class indices ``(B,)`` or soft targets ``(B, K)`` (MixUp/CutMix), with label smoothing."""
    if target.ndim == 1:
        return F.cross_entropy(logits, target, label_smoothing=smoothing)
    num_classes = logits.shape[-1]
    target = target * (1.0 - smoothing) + smoothing / num_classes
    return torch.sum(-target * F.log_softmax(logits, dim=-1), dim=-1).mean()


def distillation_loss(student: torch.Tensor, teacher: torch.Tensor, kind: str, tau: float = 1.0) -> torch.Tensor:
    """DeiT's distillation term (arXiv:2012.12877, Sec. 4).

    ``hard``: cross-entropy against the teacher's argmax. ``soft``: KL(teacher || student) at temperature ``tau``,
    times ``tau**2``, summed and divided by the number of logits (the official code's normalisation).
    """
    if student.shape != teacher.shape:
        raise ValueError(
            f"the teacher's logits have shape {tuple(teacher.shape)} but the student's have {tuple(student.shape)}; "
            "the teacher must predict the same classes"
        )
    if kind == "hard":
        return F.cross_entropy(student, teacher.argmax(dim=-1))
    if kind == "soft":
        log_p_student = F.log_softmax(student / tau, dim=-1)
        log_p_teacher = F.log_softmax(teacher / tau, dim=-1)
        kl = F.kl_div(log_p_student, log_p_teacher, reduction="sum", log_target=True)
        return kl * (tau * tau) / student.numel()
    raise ValueError(f"unknown distillation kind {kind!r}; expected 'hard' or 'soft'")


class DistillationLoss:
    """The training criterion: classification loss, plus DeiT distillation when a teacher is given.

    A model with a distillation head (outputs ``(class_logits, dist_logits)``) trains the class head on the labels and
    the distillation head on the teacher: ``(1 - alpha) * CE(class, y) + alpha * KD(dist, teacher)``. A model with one
    output uses plain knowledge distillation on it: ``(1 - alpha) * CE(out, y) + alpha * KD(out, teacher)``. Without
    a teacher both heads of a two-head model learn the labels (averaged), since evaluation averages them.

    The teacher sees the same (augmented, mixed) images, runs in eval mode under ``no_grad`` and is never wrapped in
    DistributedDataParallel. It is not an ``nn.Module`` attribute of anything trained.
    """

    def __init__(
        self,
        teacher: nn.Module | None = None,
        kind: str = "hard",
        alpha: float = 0.5,
        tau: float = 1.0,
        smoothing: float = 0.0,
    ) -> None:
        if kind not in DISTILL_KINDS:
            raise ValueError(f"unknown distillation kind {kind!r}; expected one of {', '.join(DISTILL_KINDS)}")
        if not 0.0 <= alpha <= 1.0:
            raise ValueError(f"distill_alpha must be in [0, 1], got {alpha}")
        if tau <= 0:
            raise ValueError(f"distill_tau must be positive, got {tau}")
        if kind != "none" and teacher is None:
            raise ValueError(f"{kind} distillation needs a teacher")
        self.teacher = teacher if kind != "none" else None
        self.kind = kind
        self.alpha = alpha
        self.tau = tau
        self.smoothing = smoothing

    def __call__(
        self, images: torch.Tensor, outputs: torch.Tensor | tuple[torch.Tensor, torch.Tensor], target: torch.Tensor
    ) -> torch.Tensor:
        logits, dist_logits = outputs if isinstance(outputs, tuple) else (outputs, None)
        base = classification_loss(logits, target, self.smoothing)
        if self.teacher is None:
            if dist_logits is None:
                return base
            return (base + classification_loss(dist_logits, target, self.smoothing)) / 2
        with torch.no_grad():
            teacher_logits = self.teacher(images)
        student = dist_logits if dist_logits is not None else logits
        dtype = torch.promote_types(student.dtype, torch.float32)  # half-precision logits under AMP
        kd = distillation_loss(student.to(dtype), teacher_logits.to(dtype), self.kind, self.tau)
        return base * (1.0 - self.alpha) + kd * self.alpha


# --------------------------------------------------------------------------------------------------------- teacher


class TeacherInput(nn.Module):
    """A teacher fed its own preprocessing: the student's normalised batch (augmented, mixed) is mapped back to pixels
    in [0, 1], to the teacher's channel order, then normalised with the teacher's mean and std. The map is per-channel
    affine, so it gives the teacher exactly what its own preprocessing would give for the same crop."""

    def __init__(self, teacher: nn.Module, student: DataConfig, own: DataConfig) -> None:
        super().__init__()
        self.teacher = teacher
        self.flip = student.channel_order != own.channel_order  # BGR <-> RGB

        def channels(values: tuple[float, float, float]) -> torch.Tensor:
            return torch.tensor(values, dtype=torch.float32).view(1, 3, 1, 1)  # broadcast over B, C, H, W

        self.register_buffer("student_mean", channels(student.mean), persistent=False)
        self.register_buffer("student_std", channels(student.std), persistent=False)
        self.register_buffer("own_mean", channels(own.mean), persistent=False)
        self.register_buffer("own_std", channels(own.std), persistent=False)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        pixels = images * self.student_std + self.student_mean  # B, C, H, W in [0, 1], the student's channel order
        if self.flip:
            pixels = pixels.flip(1)
        return self.teacher((pixels - self.own_mean) / self.own_std)


def build_teacher(
    name: str, checkpoint: str | None, num_classes: int, img_size: int, student: DataConfig | None = None
) -> nn.Module:
    """A frozen teacher in eval mode: a litevit checkpoint file, a litevit variant, or a torchvision classifier.

    With ``student`` (the student's data config) the teacher is wrapped in :class:`TeacherInput`, so that it sees
    its own preprocessing: a litevit teacher's data config, or ImageNet's RGB mean and std for torchvision's.
    """
    import torchvision

    if Path(name).is_file():
        teacher = load(name, img_size=img_size)
    elif split_name(name)[0] in list_models():
        # weights decide the head: a teacher whose classes differ is refused below, never given a fresh head
        given = "." in name or checkpoint is not None
        teacher = create_model(
            name, checkpoint=checkpoint, num_classes=None if given else num_classes, img_size=img_size
        )
        if teacher.config.num_classes != num_classes:
            raise ValueError(
                f"teacher {name} predicts {teacher.config.num_classes} classes, the data has {num_classes}: "
                "distil from a teacher fine-tuned on the same classes"
            )
    elif name in torchvision.models.list_models(module=torchvision.models):
        teacher = torchvision.models.get_model(name, weights=None, num_classes=num_classes)
        if checkpoint is not None:
            ckpt = read_checkpoint(checkpoint)
            load_exact(teacher, ckpt.state, ckpt.source, f"torchvision's {name} with {num_classes} classes")
    else:
        raise ValueError(
            f"unknown teacher {name!r}: expected a file, a litevit model ({', '.join(list_models())}) "
            "or a torchvision classifier name (e.g. regnet_y_16gf)"
        )
    if checkpoint is None and not Path(name).is_file() and "." not in name:
        log.warning("teacher %s has no checkpoint: it is randomly initialised", name)
    teacher = teacher.eval().requires_grad_(False)
    if student is None:
        return teacher
    info = getattr(teacher, "model_info", None)  # litevit models carry their data config; torchvision's: ImageNet RGB
    own = info.data if isinstance(info, ModelInfo) else DataConfig()
    log.info("teacher preprocessing: %s; student: %s", own, student)
    return TeacherInput(teacher, student, own).eval()
