"""Training settings and results: the config dataclass every piece of training reads, file names, errors."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

DISTILL_KINDS = ("none", "soft", "hard")
LAST_CHECKPOINT = "last.pt"
BEST_EXPORT = "best.safetensors"
METRICS_LOG = "metrics.jsonl"
QAT_EPOCHS = 3  # ``--qat`` without ``--epochs``


class NonFiniteLossError(RuntimeError):
    """The training loss became NaN or infinite; the last checkpoint written is the last good one."""


@dataclass
class TrainConfig:
    """Everything a run depends on. Recipes (:mod:`.recipes`) fill these fields; options override them."""

    model: str  # registered variant name
    data: str  # ImageFolder root, or a folder with train/ (and val/) ImageFolders
    val: str | None = None  # validation ImageFolder; default: ``data/val`` if present, else a split of the training set
    val_split: float = 0.1  # fraction of every class held out when there is no validation folder
    out: str = "runs/train"  # output folder: last.pt, best.safetensors, metrics.jsonl
    epochs: int | None = None  # None: the short-run rule's (recipes.rule_epochs), QAT_EPOCHS with --qat
    batch_size: int = 64  # per process, at ``img_size`` (the multi-scale sampler scales it per batch)
    # None in the fields below (lr ... ema_decay): the short-run rule's value (recipes.SHORT_RUN_RULE)
    lr: float | None = None  # peak learning rate at the global batch ``lr_ref_batch`` (absolute when that is None)
    lr_ref_batch: int | None = None  # lr, min_lr and warmup_lr scale by global_batch / lr_ref_batch
    min_lr: float | None = None  # end of the cosine decay
    warmup_lr: float | None = None  # start of the linear warm-up
    warmup_epochs: float | None = None
    weight_decay: float = 0.05  # AdamW; not applied to biases, norm weights and ``model.no_weight_decay()``
    clip_grad: float | None = None  # max global gradient norm
    layer_decay: float | None = None  # layer-wise lr decay: layer i of L trains at lr * layer_decay ** (L - i)
    img_size: int | None = None  # training and evaluation resolution; default: the variant's data config
    amp: bool = False  # float16 autocast with a gradient scaler on CUDA, bfloat16 autocast on CPU
    ema: bool | None = None  # keep an exponential moving average of the weights (evaluated and exported when better)
    ema_decay: float | None = None
    interpolation: str | None = None  # random-resized-crop interpolation; default: the variant's
    crop_scale: tuple[float, float] | None = None  # random-resized-crop area range
    hflip: float = 0.5  # horizontal flip probability
    rand_augment: int | None = None  # RandAugment magnitude (2 ops); None: off
    mixup: float = 0.0  # MixUp alpha (0: off)
    cutmix: float = 0.0  # CutMix alpha (0: off); with both on, each batch uses one of them at random
    label_smoothing: float = 0.1
    random_erasing: float = 0.0  # probability, erased area filled with normal noise (DeiT's "pixel" mode)
    drop_path: float | None = None  # override the variant's stochastic depth rate
    multi_scale: bool = False  # MobileViT v1 variable-batch sampler
    multi_scale_sizes: tuple[int, ...] | None = None  # explicit sizes; default: from the three fields below
    multi_scale_min: float = 0.625  # smallest size / img_size (160 at 256)
    multi_scale_max: float = 1.25  # largest size / img_size (320 at 256)
    multi_scale_num: int = 5
    checkpoint: str | None = None  # initial weights (any layout); the head is replaced if the class count differs
    model_kwargs: dict[str, Any] = field(default_factory=dict)  # config overrides for create_model
    teacher: str | None = None  # litevit variant, torchvision classifier name, or a litevit checkpoint file
    teacher_checkpoint: str | None = None  # weights for a teacher given by name
    distill: str | None = None  # hard | soft | none; default: hard with a teacher, none without
    distill_alpha: float = 0.5  # weight of the distillation term
    distill_tau: float = 1.0  # soft-distillation temperature
    resume: str | None = None  # a last.pt to continue from ("auto": out/last.pt)
    resume_override: tuple[str, ...] = ()  # settings allowed to differ from the resumed run (see run_settings)
    stop_after: int | None = None  # stop after this many epochs in this invocation (resume later)
    seed: int = 0
    workers: int | None = None  # data-loading processes per rank; default: data.default_workers()
    device: str | None = None  # default: cuda:<local rank> when available, else cpu
    progress: bool = True  # progress bar on rank 0
    recipe: str | None = None  # recorded for the log; its values are already applied (None: the short-run rule)
    qat: bool = False  # quantization-aware int8 fine-tuning of the --checkpoint model; writes int8.xml (:mod:`.qat`)
    max_drop: float = 1.0  # --qat: the int8 top-1 drop (points) against the float model beyond which the run fails


@dataclass
class TrainResult:
    history: list[dict[str, Any]]  # one record per epoch run in this invocation (identical on every rank)
    best_top1: float | None
    out: Path
    finished: bool  # all ``epochs`` done (False when stopped by ``stop_after``)
    rank: int = 0  # this process's rank under torchrun
    best_files: tuple[str, ...] = (BEST_EXPORT,)  # what a new best validation top-1 writes, under ``out``
    qat: QatOutcome | None = None  # a finished --qat run: the float model's top-1, the best int8 top-1, the drop


@dataclass(frozen=True)
class QatOutcome:
    """Where a finished ``--qat`` run ended against the float model it started from, on ``images`` validation
    images at ``img_size`` (1 image = 100 / images points): the fake-quantized graph's best top-1 and each written
    file's own top-1, run by its runtime (OpenVINO's or onnxruntime's int8 kernels). The budget holds for the worst
    file."""

    float_top1: float
    int8_top1: float  # the fake-quantized graph's best validation top-1
    max_drop: float
    images: int
    img_size: int
    files: dict[str, float] = field(default_factory=dict)  # written file name -> its top-1

    @property
    def drop(self) -> float:
        return self.float_top1 - min([self.int8_top1, *self.files.values()])

    @property
    def within(self) -> bool:
        return self.drop <= self.max_drop

    def line(self) -> str:
        verdict = "within" if self.within else "OVER"
        files = "".join(f", {name} {top1:.2f}%" for name, top1 in self.files.items())
        return (
            f"--qat: float top-1 {self.float_top1:.2f}%, best int8 top-1 {self.int8_top1:.2f}%{files}, drop "
            f"{self.drop:+.2f} points (the worst; {self.images} validation images at {self.img_size} px, 1 image = "
            f"{100 / self.images:.2f}); {verdict} the budget of {self.max_drop:g} (--max-drop)"
        )
