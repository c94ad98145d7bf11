"""Training recipes: the short-run rule (the default) and each paper's published hyper-parameters, by name.

Without ``--recipe``, :func:`short_run_rule` picks the schedule from the run itself (:data:`SHORT_RUN_RULE`). The
papers' recipes are :class:`.config.TrainConfig` fields; ``deit`` is the DeiT ImageNet schedule that was
the default before (5 warm-up epochs, lr 5e-4 per 512 images, crops down to 8 %). Values are per process where the
official code is per GPU (``batch_size``); ``lr``, ``min_lr`` and ``warmup_lr`` are the values at the global batch
``lr_ref_batch`` and scale linearly with the actual global batch. Options given on the command line override the
recipe. The source of every number is in the comment above it.
"""

from __future__ import annotations

import dataclasses
import logging
import math
from typing import Any

from .config import TrainConfig

log = logging.getLogger("litevit.training.train")

# the short-run rule's numbers, written once: :func:`short_run_rule` computes with them and SHORT_RUN_RULE (the
# ``litevit train --help`` text) states them. The from-scratch lr, the crop floor and the step floor come from the
# search on scikit-learn's digits (tools/short_run_search.py, benchmarks/accuracy/short_run_search.jsonl): at the
# earlier values (lr 1e-3, crop floor 0.08 * 224 / size, 10 epochs) three families stopped at 92.8-94.8 % with a
# training loss near 1.0; the crop floor was worth the most, then the steps, then the lr.
BASE_LR, BASE_BATCH, FINE_TUNE_LR = 2e-3, 256, 1e-4  # fine-tuning (--checkpoint) and QAT keep their earlier lr
LR_RANGE = 100
WARMUP_SHARE, MAX_WARMUP_EPOCHS = 0.05, 5.0
MIN_CROP, CROP_REF_SIZE, MAX_MIN_CROP = 0.08, 224, 0.5
MIN_EPOCHS, MIN_STEPS, MAX_EPOCHS = 10, 400, 100
EMA_MIN_STEPS, EMA_WINDOW, MAX_EMA_DECAY = 100, 10, 0.9999

SHORT_RUN_RULE = "\n".join(
    (
        "default recipe (no --recipe): the short-run rule, for a few epochs on a small data set. With B the global",
        "batch and S = total steps (epochs x training images // B):",
        f"  epochs (without --epochs): enough for S >= {MIN_STEPS} steps, at least {MIN_EPOCHS}, at most {MAX_EPOCHS};",
        f"  lr = {BASE_LR:g} * sqrt(B / {BASE_BATCH}) from scratch, {FINE_TUNE_LR:g} * sqrt(B / {BASE_BATCH}) from "
        "--checkpoint weights (AdamW,",
        f"  absolute, not rescaled by --lr-ref-batch); warm-up over the first {WARMUP_SHARE:.0%} of S (at most "
        f"{MAX_WARMUP_EPOCHS:g} epochs) from lr / {LR_RANGE};",
        f"  cosine to lr / {LR_RANGE}; random-resized crops keep at least min({MAX_MIN_CROP:g}, max({MIN_CROP:g}, "
        f"{MIN_CROP:g} * ({CROP_REF_SIZE} / img_size)^2))",
        f"  of the image (the crop area floor of {CROP_REF_SIZE} px in pixels, so small images are not cut to a few "
        "pixels);",
        f"  EMA of the weights when S >= {EMA_MIN_STEPS} steps, decay 1 - {EMA_WINDOW} / S (at most "
        f"{MAX_EMA_DECAY:g}, at least 0: with --ema on a run",
        f"  of S <= {EMA_WINDOW} steps the EMA is the weights): it averages the last tenth of the run;",
        "  no RandAugment, MixUp, CutMix or random erasing; label smoothing 0.1, weight decay 0.05.",
        "Options given explicitly replace the rule's values; each run logs what the rule chose.",
    )
)

# the fields the short-run rule decides; None in TrainConfig means "the rule's value"
RULE_FIELDS = ("epochs", "lr", "min_lr", "warmup_lr", "warmup_epochs", "crop_scale", "ema", "ema_decay")


def rule_epochs(train_images: int, global_batch: int) -> int:
    """The rule's number of epochs: enough for :data:`MIN_STEPS` optimizer steps, within [MIN_EPOCHS, MAX_EPOCHS]."""
    per_epoch = max(1, train_images // global_batch)
    return min(MAX_EPOCHS, max(MIN_EPOCHS, math.ceil(MIN_STEPS / per_epoch)))


def short_run_rule(
    epochs: int | None,
    train_images: int,
    global_batch: int,
    img_size: int,
    fine_tune: bool,
    lr: float | None = None,
) -> dict[str, Any]:
    """The values :data:`SHORT_RUN_RULE` states, for a run of ``epochs`` (None: the rule's) over ``train_images``.

    A given ``lr`` is kept, and the warm-up start and the end of the decay follow it.
    """
    epochs = rule_epochs(train_images, global_batch) if epochs is None else epochs
    steps = epochs * max(1, train_images // global_batch)
    if lr is None:
        lr = (FINE_TUNE_LR if fine_tune else BASE_LR) * math.sqrt(global_batch / BASE_BATCH)
    return {
        "epochs": epochs,
        "lr": lr,
        "min_lr": lr / LR_RANGE,
        "warmup_lr": lr / LR_RANGE,
        "warmup_epochs": min(MAX_WARMUP_EPOCHS, WARMUP_SHARE * epochs),
        "crop_scale": (min(MAX_MIN_CROP, max(MIN_CROP, MIN_CROP * (CROP_REF_SIZE / img_size) ** 2)), 1.0),
        "ema": steps >= EMA_MIN_STEPS,
        "ema_decay": min(MAX_EMA_DECAY, max(0.0, 1 - EMA_WINDOW / steps)),
    }


def apply_short_run_rule(config: TrainConfig, train_images: int, world: int, img_size: int) -> TrainConfig:
    """``config`` with the settings left open (None) filled by :func:`short_run_rule`, the values chosen logged."""
    open_fields = [name for name in RULE_FIELDS if getattr(config, name) is None]
    if config.recipe:
        log.info("recipe %s", config.recipe)
    if not open_fields:
        return config
    batch = config.batch_size * world
    rule = short_run_rule(config.epochs, train_images, batch, img_size, config.checkpoint is not None, config.lr)
    chosen = {name: rule[name] for name in open_fields}
    shown = ", ".join(f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}" for k, v in chosen.items())
    log.info("short-run rule (%d images, global batch %d, %d px): %s", train_images, batch, img_size, shown)
    return dataclasses.replace(config, **chosen)


RECIPES: dict[str, dict[str, Any]] = {
    # DeiT (arXiv:2012.12877) ImageNet schedule without its heavy augmentation: litevit's default before the short-run
    # rule. Built for 300 epochs on 1.28M images; kept by name for comparison and for long runs.
    "deit": {
        "lr": 5e-4,
        "lr_ref_batch": 512,
        "min_lr": 1e-5,
        "warmup_lr": 1e-6,
        "warmup_epochs": 5.0,
        "crop_scale": (0.08, 1.0),
        "ema": False,
        "ema_decay": 0.9998,
    },
    # LeViT (arXiv:2104.01136, Sec. 5.1) and facebookresearch/LeViT main.py defaults: 1000 epochs, 8 GPUs x 256,
    # AdamW, lr 5e-4 per 512 images, weight decay 0.025, 5 warm-up epochs from 1e-6, cosine to 1e-5, RandAugment
    # rand-m9-mstd0.5 (torchvision's has no magnitude noise), mixup 0.8 / cutmix 1.0, label smoothing 0.1, random
    # erasing 0.25, EMA 0.99996, hard distillation (alpha 0.5, tau 1) from a RegNetY-16GF teacher (DeiT's timm
    # ``regnety_160``; torchvision's ``regnet_y_16gf`` is the same architecture with other key names).
    # Not reproduced: repeated augmentation, AGC gradient clipping (0.01) and the 10 cool-down epochs.
    "levit": {
        "epochs": 1000,
        "batch_size": 256,
        "lr": 5e-4,
        "lr_ref_batch": 512,
        "min_lr": 1e-5,
        "warmup_lr": 1e-6,
        "warmup_epochs": 5.0,
        "weight_decay": 0.025,
        "interpolation": "bicubic",
        "rand_augment": 9,
        "mixup": 0.8,
        "cutmix": 1.0,
        "label_smoothing": 0.1,
        "random_erasing": 0.25,
        "ema": True,
        "ema_decay": 0.99996,
        "distill": "hard",
        "distill_alpha": 0.5,
        "distill_tau": 1.0,
        "multi_scale": False,
    },
    # EfficientViT (MSRA) (arXiv:2305.07027, Sec. 5.1): 300 epochs, AdamW, batch 2048, lr 1e-3, weight decay 0.025,
    # cosine schedule, DeiT augmentation (RandAugment, mixup, cutmix, random erasing), no distillation.
    # Warm-up length and per-GPU batch (8 GPUs x 256) follow the DeiT-based official main.py defaults.
    "efficientvit_msra": {
        "epochs": 300,
        "batch_size": 256,
        "lr": 1e-3,
        "lr_ref_batch": 2048,
        "min_lr": 1e-5,
        "warmup_lr": 1e-6,
        "warmup_epochs": 5.0,
        "weight_decay": 0.025,
        "interpolation": "bicubic",
        "rand_augment": 9,
        "mixup": 0.8,
        "cutmix": 1.0,
        "label_smoothing": 0.1,
        "random_erasing": 0.25,
        "ema": False,
        "multi_scale": False,
    },
    # MobileViT v1 (arXiv:2110.02178, Sec. 4) and apple/ml-cvnets config/classification/imagenet/mobilevit.yaml:
    # 300 epochs, 8 GPUs x 128 = 1024, AdamW, weight decay 0.01, cosine from 0.002 to 0.0002, warm-up from 0.0002
    # over 20000 iterations (~16 epochs at 1251 iterations per epoch), label smoothing 0.1, EMA momentum 0.0005,
    # basic augmentation only (bilinear random-resized crop and flip), multi-scale variable-batch sampler with
    # 5 sizes from 160 to 320 (divisible by 32) around 256.
    "mobilevit_v1": {
        "epochs": 300,
        "batch_size": 128,
        "lr": 2e-3,
        "lr_ref_batch": 1024,
        "min_lr": 2e-4,
        "warmup_lr": 2e-4,
        "warmup_epochs": 16.0,
        "weight_decay": 0.01,
        "interpolation": "bilinear",
        "rand_augment": None,
        "mixup": 0.0,
        "cutmix": 0.0,
        "label_smoothing": 0.1,
        "random_erasing": 0.0,
        "ema": True,
        "ema_decay": 0.9995,
        "multi_scale": True,
        "multi_scale_min": 0.625,
        "multi_scale_max": 1.25,
        "multi_scale_num": 5,
    },
    # MobileViT v2 (arXiv:2206.02680, Sec. 4.1) and apple/ml-cvnets config/classification/imagenet/mobilevit_v2.yaml:
    # 300 epochs, 8 GPUs x 128 = 1024, AdamW, weight decay 0.05, cosine from 0.002 to 0.0002, warm-up from 1e-6 over
    # 20000 iterations (~16 epochs), bicubic random-resized crop, flip, RandAugment, mixup 0.2, cutmix 1.0, random
    # erasing 0.25, label smoothing 0.1, EMA momentum 0.0005, gradient clipping 10, fixed-size batch sampler.
    "mobilevit_v2": {
        "epochs": 300,
        "batch_size": 128,
        "lr": 2e-3,
        "lr_ref_batch": 1024,
        "min_lr": 2e-4,
        "warmup_lr": 1e-6,
        "warmup_epochs": 16.0,
        "weight_decay": 0.05,
        "interpolation": "bicubic",
        "rand_augment": 9,
        "mixup": 0.2,
        "cutmix": 1.0,
        "label_smoothing": 0.1,
        "random_erasing": 0.25,
        "ema": True,
        "ema_decay": 0.9995,
        "clip_grad": 10.0,
        "multi_scale": False,
    },
    # T2T-ViT (arXiv:2101.11986, Sec. 4.1) and yitu-opensource/T2T-ViT README: 310 epochs, 8 GPUs x 64 = 512,
    # AdamW, lr 5e-4 (at 512), weight decay 0.05, cosine with 5 warm-up epochs, DeiT augmentation.
    "t2t_vit": {
        "epochs": 310,
        "batch_size": 64,
        "lr": 5e-4,
        "lr_ref_batch": 512,
        "min_lr": 1e-5,
        "warmup_lr": 1e-6,
        "warmup_epochs": 5.0,
        "weight_decay": 0.05,
        "interpolation": "bicubic",
        "rand_augment": 9,
        "mixup": 0.8,
        "cutmix": 1.0,
        "label_smoothing": 0.1,
        "random_erasing": 0.25,
        "ema": False,
        "multi_scale": False,
    },
}


def get_recipe(name: str) -> dict[str, Any]:
    """A copy of the named recipe's settings (the rule's fields a paper does not state come from ``deit``)."""
    try:
        return {**RECIPES["deit"], **RECIPES[name]}
    except KeyError:
        raise ValueError(f"unknown recipe {name!r}; valid recipes: {', '.join(RECIPES)}") from None
