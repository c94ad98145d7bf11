"""Training and fine-tuning, top to bottom: data, model, optimiser, teacher, resume, then the epochs.

The pieces live in their own modules: settings (:mod:`.config`), losses and the teacher (:mod:`.losses`),
schedule and EMA (:mod:`.optim`), augmentation and the data split (:mod:`.data`), checkpoints and the
metrics log (:mod:`.checkpoint`), torchrun set-up (:mod:`.distributed`), options (:mod:`.options`). The
hyper-parameters come from the short-run rule or a paper's recipe (:mod:`.recipes`); DeiT distillation follows
Touvron et al., arXiv:2012.12877, Sec. 4; the MobileViT multi-scale sampler is :mod:`.sampler`. ``qat``
(``--qat``) fine-tunes a trained model with int8 quantizers in the loop and writes ``int8.xml`` / ``int8.onnx``
(:mod:`.qat`).

Run on one process with ``litevit train`` or on several with ``torchrun --nproc_per_node N -m litevit train ...``
(NCCL on GPUs, gloo on CPU). Only rank 0 writes; metrics are reduced across ranks. Each epoch ends with an atomic
``last.pt`` (model, EMA, optimizer, schedule, scaler, sampler, RNG states, run settings) and, on a new best
validation top-1, an atomic ``best.safetensors`` that records the variant, model options and data config. A resume
continues exactly, or refuses when a setting differs (``--resume-override`` to accept it).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch import nn
from torch.utils.data import DataLoader

from .._files import recover
from ..data import default_workers
from ..deploy.int8 import int8_settings_for
from ..deploy.runtime import ExportedModel
from ..predict import batch_scores
from ..registry import get_variant
from ..weights.loading import create_model
from .checkpoint import (
    TrainState,
    append_metrics,
    atomic_write,
    export_safetensors,
    load_training_checkpoint,
    read_metrics,
    run_settings,
    save_training_checkpoint,
    seed_epoch,
)
from .config import (
    BEST_EXPORT,
    DISTILL_KINDS,
    LAST_CHECKPOINT,
    METRICS_LOG,
    NonFiniteLossError,
    TrainConfig,
    TrainResult,
)
from .data import batch_mixer, find_data, make_loaders
from .distributed import Dist, all_sum, init_distributed, parameter_digest
from .inherit import in_file_order, inherit, model_from_file, read_settings, read_start
from .losses import DistillationLoss, build_teacher
from .optim import ModelEma, WarmupCosine, param_groups
from .options import add_arguments, config_from_args, summary
from .qat import (
    FREEZE_BN_AFTER,
    INT8_ONNX,
    INT8_XML,
    calibration_images,
    freeze_batchnorm,
    qat_baseline,
    qat_config,
    qat_param_groups,
    quantize_for_training,
    save_int8,
    validate_qat,
)
from .recipes import apply_short_run_rule

log = logging.getLogger("litevit.training.train")  # also when run as ``python -m litevit.training.train``

# ----------------------------------------------------------------------------------------------------------- the story


def train(config: TrainConfig) -> TrainResult:
    """Train ``config.model`` on ``config.data``; see the module docstring. Works as one process or under torchrun."""
    config = model_from_file(config)
    distill = _validate(config)
    ranks, device, created_group = init_distributed(config.device)
    try:
        return _train(config, distill, ranks, device)
    finally:
        if created_group and dist.is_initialized():
            dist.destroy_process_group()


def _train(config: TrainConfig, distill: str, ranks: Dist, device: torch.device) -> TrainResult:
    out = Path(config.out)
    variant = get_variant(config.model)
    start = read_start(config.checkpoint) if config.checkpoint else None  # read once: settings, then weights
    file = read_settings(start) if start is not None else None
    config, data_config = inherit(config, variant, file)
    img_size = data_config.img_size
    split = in_file_order(find_data(config), file)
    num_classes = len(split.classes)
    # the settings as given: the rule's values follow from them (epochs, images, batch, size, lr), so a resume
    # that overrides one of those gets the rule's values for the new one
    settings = run_settings(config, split.classes, len(split.train_indices), ranks.world)
    if config.qat:
        config = qat_config(config, ranks.world)
    config = apply_short_run_rule(config, len(split.train_indices), ranks.world, img_size)
    workers = default_workers() if config.workers is None else config.workers

    # the model: same initial weights on every rank (DDP also broadcasts rank 0's)
    torch.manual_seed(config.seed)
    kwargs = dict(config.model_kwargs)
    if config.drop_path is not None:
        kwargs["drop_path"] = config.drop_path
    model = create_model(config.model, checkpoint=start, num_classes=num_classes, img_size=img_size, **kwargs)
    model.to(device)
    sampler, train_loader, val_loader = make_loaders(
        config, split, data_config, ranks.rank, ranks.world, workers, device
    )
    baseline = None
    if config.qat:  # the float model scored, then calibrated, before the first step (and before a resume loads ranges)
        if ranks.main:
            recover(out)  # a pair of int8 files a killed run left half replaced
        baseline = qat_baseline(
            evaluate(model, val_loader, device, config.amp, ranks), file, config, len(split.val_indices)
        )
        images = calibration_images(split, data_config, img_size)
        model = quantize_for_training(model, images, int8_settings_for(model), config.batch_size)
    net: nn.Module = model
    if ranks.world > 1:
        net = nn.parallel.DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)

    lr, min_lr, warmup_lr = _effective_lrs(config, ranks.world)
    groups = (
        qat_param_groups(model, config.weight_decay)
        if config.qat
        else param_groups(model, config.weight_decay, config.layer_decay)
    )
    optimizer = torch.optim.AdamW(groups, lr=lr)
    scheduler = WarmupCosine(optimizer, lr, config.epochs, config.warmup_epochs, min_lr, warmup_lr)
    scaler = torch.amp.GradScaler(device.type, enabled=config.amp and device.type == "cuda")
    ema = ModelEma(model, config.ema_decay) if config.ema else None

    teacher = None
    if distill != "none":
        teacher = build_teacher(config.teacher, config.teacher_checkpoint, num_classes, img_size, data_config)
        teacher.to(device)
        if hasattr(model, "set_distilled_training"):  # LeViT: (class, distillation) logits in training mode
            model.set_distilled_training(True)
    criterion = DistillationLoss(teacher, distill, config.distill_alpha, config.distill_tau, config.label_smoothing)
    mixer = batch_mixer(config, num_classes)
    state = TrainState(model, net, optimizer, scheduler, scaler, ema, sampler, criterion, mixer)

    start_epoch, best_top1 = 0, None
    if config.resume:
        path = out / LAST_CHECKPOINT if config.resume == "auto" else Path(config.resume)
        start_epoch, best_top1 = load_training_checkpoint(path, state, settings, config.resume_override)
        log.info("resumed from %s at epoch %d", path, start_epoch)
        if ranks.main:  # drop log lines of epochs the checkpoint does not include (the run was killed in between)
            kept = [r for r in read_metrics(out / METRICS_LOG) if r.get("epoch", 0) <= start_epoch]
            atomic_write(out / METRICS_LOG, lambda tmp: tmp.write_text("".join(json.dumps(r) + "\n" for r in kept)))
    elif (out / LAST_CHECKPOINT).exists():
        raise ValueError(f"{out / LAST_CHECKPOINT} exists: pass --resume to continue that run, or choose another --out")

    meta = {
        "num_classes": num_classes,
        "img_size": img_size,
        "model_kwargs": kwargs,
        "classes": split.classes,
    }
    history: list[dict[str, Any]] = []
    if baseline is not None and start_epoch == 0:  # the calibrated graph is the int8 model to beat
        best_top1 = evaluate(model, val_loader, device, config.amp, ranks)["top1"]
        log.info("--qat: calibrated int8 val top-1 %.2f%%, %s (rank %d)", best_top1, baseline.against(best_top1),
                 ranks.rank)  # fmt: skip
        if ranks.main:
            save_int8(model, out, split.classes, img_size)
    epoch = start_epoch
    end = config.epochs if config.stop_after is None else min(config.epochs, start_epoch + config.stop_after)
    for epoch in range(start_epoch, end):
        seed_epoch(config.seed, epoch, ranks.rank)
        tic = time.perf_counter()
        record: dict[str, Any] = {"epoch": epoch + 1}
        record.update(train_one_epoch(state, train_loader, epoch, config, device, ranks))
        val = evaluate(model, val_loader, device, config.amp, ranks)
        record.update({f"val_{k}": v for k, v in val.items()})
        candidates = [("model", val["top1"], model)]
        if ema is not None:
            ema_val = evaluate(ema.module, val_loader, device, config.amp, ranks)
            record.update({f"ema_val_{k}": v for k, v in ema_val.items()})
            candidates.append(("ema", ema_val["top1"], ema.module))
        weights, top1, best_module = max(candidates, key=lambda c: c[1])
        improved = best_top1 is None or top1 > best_top1
        if improved:
            best_top1 = top1
        if baseline is not None:
            record.update(baseline.record(top1))
        record.update({"best_top1": best_top1, "epoch_time_s": time.perf_counter() - tic})
        history.append(record)
        log.info("rank %d epoch %d: %s", ranks.rank, epoch + 1, json.dumps(record, sort_keys=True))
        if ranks.world > 1:  # this rank's own parameters, unreduced: a rank that diverged shows here
            log.info("rank %d epoch %d parameters %s", ranks.rank, epoch + 1, parameter_digest(model))
        if ranks.main:
            if improved and config.qat:
                save_int8(model, out, split.classes, img_size)
            elif improved:
                best_meta = dict(meta, epoch=epoch + 1, top1=top1, weights=weights)
                export_safetensors(out / BEST_EXPORT, best_module.state_dict(), config.model, best_meta, data_config)
            append_metrics(out / METRICS_LOG, record)
            save_training_checkpoint(
                out / LAST_CHECKPOINT, state, config, settings, epoch + 1, best_top1, meta, data_config
            )
    finished = end == config.epochs
    best_files = tuple(n for n in (INT8_XML, INT8_ONNX) if (out / n).exists()) if config.qat else (BEST_EXPORT,)
    outcome = None
    if baseline is not None and finished:  # the files as their runtimes run them, not only the fake-quantized graph
        if ranks.world > 1:
            dist.barrier()  # rank 0 wrote them
        scores = {name: evaluate_file(out / name, val_loader, device, ranks) for name in best_files}
        outcome = baseline.outcome(best_top1, config.max_drop, scores)
    return TrainResult(history, best_top1, out, finished, ranks.rank, best_files, outcome)


# ----------------------------------------------------------------------------------------------- epochs and evaluation


def _autocast(device: torch.device, enabled: bool) -> contextlib.AbstractContextManager:
    if not enabled:
        return contextlib.nullcontext()
    dtype = torch.float16 if device.type == "cuda" else torch.bfloat16
    return torch.autocast(device_type=device.type, dtype=dtype)


@torch.no_grad()
def evaluate(
    model: nn.Module,
    loader: DataLoader,
    device: torch.device,
    amp: bool = False,
    ranks: Dist | None = None,
) -> dict[str, float]:
    """Loss, top-1 and top-5 (%) over this rank's validation shard, summed over all ranks; the validation during
    training (autocast, DDP). ``litevit eval`` (:func:`litevit.predict.evaluate`) scores an ImageFolder on disk with a
    trained model or an exported file; both score batches with :func:`litevit.predict.batch_scores`."""
    ranks = ranks or Dist()
    was_training = model.training
    model.eval()
    loss_sum, top1, top5, count = 0.0, 0.0, 0.0, 0.0
    for images, target in loader:
        images, target = images.to(device, non_blocking=True), target.to(device, non_blocking=True)
        with _autocast(device, amp):
            logits = model(images)
        scores = batch_scores(logits, target)
        loss_sum, top1, top5 = loss_sum + scores[0], top1 + scores[1], top5 + scores[2]
        count += target.numel()
    model.train(was_training)
    loss_sum, top1, top5, count = all_sum([loss_sum, top1, top5, count], device, ranks)
    if count == 0:
        raise ValueError("the validation set is empty")
    return {"loss": loss_sum / count, "top1": 100.0 * top1 / count, "top5": 100.0 * top5 / count}


def evaluate_file(path: Path, loader: DataLoader, device: torch.device, ranks: Dist) -> float:
    """Validation top-1 (%) of an exported file, run on the CPU by its runtime, over all ranks' shards."""
    runner = ExportedModel(path)
    hits, count = 0.0, 0.0
    for images, target in loader:
        hits += batch_scores(runner(images.cpu()), target.cpu())[1]
        count += target.numel()
    hits, count = all_sum([hits, count], device, ranks)
    return 100.0 * hits / max(count, 1.0)


def _progress(iterable: DataLoader, total: int, enabled: bool, desc: str) -> Any:
    from tqdm import tqdm

    return tqdm(iterable, total=total, disable=not enabled, desc=desc, dynamic_ncols=True, leave=False)


def train_one_epoch(
    state: TrainState, loader: DataLoader, epoch: int, config: TrainConfig, device: torch.device, ranks: Dist
) -> dict[str, float]:
    """One pass over this rank's shard; returns the mean training loss over all ranks, lr and images/s."""
    state.sampler.set_epoch(epoch)
    steps = len(state.sampler)
    state.net.train()
    if config.qat and epoch >= FREEZE_BN_AFTER:
        freeze_batchnorm(state.model)
    loss_sum, seen, lr = 0.0, 0, state.scheduler.lr_at(epoch)
    start = time.perf_counter()
    bar = _progress(loader, steps, config.progress and ranks.main, f"epoch {epoch + 1}/{config.epochs}")
    for step, (images, target) in enumerate(bar):
        lr = state.scheduler.step_to(epoch + step / steps)
        images, target = images.to(device, non_blocking=True), target.to(device, non_blocking=True)
        if state.mixer is not None:
            images, target = state.mixer(images, target)
        with _autocast(device, config.amp):
            outputs = state.net(images)
            loss = state.criterion(images, outputs, target)
        finite = torch.isfinite(loss.detach()).to(torch.float32)
        if ranks.world > 1:
            dist.all_reduce(finite, op=dist.ReduceOp.MIN)
        if finite.item() == 0:
            raise NonFiniteLossError(
                f"the training loss is {loss.item()} at epoch {epoch + 1}, step {step + 1}/{steps} (on some rank); "
                f"stopping. The last checkpoint in {config.out} (end of epoch {epoch}) is intact: resume from it with "
                "a lower --lr, gradient clipping (--clip-grad) or without --amp"
            )
        state.optimizer.zero_grad(set_to_none=True)
        state.scaler.scale(loss).backward()
        if config.clip_grad is not None:
            state.scaler.unscale_(state.optimizer)
            nn.utils.clip_grad_norm_(state.model.parameters(), config.clip_grad)
        state.scaler.step(state.optimizer)
        state.scaler.update()
        if state.ema is not None:
            state.ema.update(state.model)
        loss_sum += loss.item() * images.shape[0]
        seen += images.shape[0]
        elapsed = time.perf_counter() - start
        bar.set_postfix(loss=f"{loss.item():.4f}", lr=f"{lr:.2e}", img_s=f"{seen * ranks.world / elapsed:.1f}")
    bar.close()
    elapsed = time.perf_counter() - start
    loss_sum, total = all_sum([loss_sum, float(seen)], device, ranks)
    return {"train_loss": loss_sum / max(total, 1.0), "lr": lr, "images_per_s": total / elapsed}


def _effective_lrs(config: TrainConfig, world: int) -> tuple[float, float, float]:
    scale = 1.0 if config.lr_ref_batch is None else config.batch_size * world / config.lr_ref_batch
    return config.lr * scale, config.min_lr * scale, config.warmup_lr * scale


def _validate(config: TrainConfig) -> str:
    if config.epochs is not None and config.epochs < 1:
        raise ValueError(f"epochs must be at least 1, got {config.epochs}")
    if config.batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {config.batch_size}")
    distill = config.distill or ("hard" if config.teacher else "none")
    if distill not in DISTILL_KINDS:
        raise ValueError(f"unknown distillation {distill!r}; expected one of {', '.join(DISTILL_KINDS)}")
    if distill != "none" and not config.teacher:
        raise ValueError(f"--distill {distill} needs a --teacher")
    get_variant(config.model)
    if config.qat:
        validate_qat(config, distill)
    return distill


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m litevit.training.train MODEL --data DIR ...``, also under ``torchrun``."""
    parser = argparse.ArgumentParser(prog="litevit.training.train", description="Train or fine-tune a litevit model.")
    parser.add_argument("--log-level", default="INFO", help="logging level (DEBUG, INFO, WARNING)")
    add_arguments(parser)
    args = parser.parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(), format="%(levelname)s %(name)s: %(message)s")
    try:
        result = train(config_from_args(args))
    except NonFiniteLossError as exc:
        print(f"litevit.training.train: {exc}", file=sys.stderr)
        return 3
    except (ValueError, FileNotFoundError) as exc:
        print(f"litevit.training.train: error: {exc}", file=sys.stderr)
        return 2
    if result.rank == 0:
        print(summary(result))
    return 4 if result.qat is not None and not result.qat.within else 0  # 4: a --qat run over its --max-drop


if __name__ == "__main__":
    sys.exit(main())
