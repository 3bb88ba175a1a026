"""Pretraining: the GPU-fed data path, the compiled siamese step, checkpoints, held-out evaluation, DDP.

Per step: a batch of decoded uint8 images (DataLoader workers, pinned memory; or kept resident on the device)
-> a plan drawn on the host (a few hundred integers) -> one fused kernel renders every patch on the device
-> the tower encodes each patch once -> the pretext task's head input (pair or puzzle features gathered by
index) -> head -> cross-entropy. The task (relpos.pretext) draws the plan and the targets; this loop is the same
for every task.

torch.compile: the forward+loss function is compiled with `dynamic=True` (the number of patches and items
varies from step to step) in the default mode (no CUDA graphs, which need static shapes); autograd compiles
the backward with it. bf16 autocast on GPU, channels-last activations, fused AdamW on CUDA.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import math
import random
import signal
import time
from pathlib import Path

import numpy as np
import torch

from .. import backends
from ..data import (
    ImageBatch,
    ResidentImages,
    StepBatches,
    bundled_photos,
    iter_decodable_images,
    list_images,
    make_loader,
    split_holdout,
)
from ..data.dataset import images_per_step
from ..metrics import MetricsLog, format_pretext, plot_curves, pretext_summary, strict_json
from ..ops import empty_patches, extract_patches
from ..plan_guard import raise_on_plan_errors
from ..pretext import Pretext, build_pretext, compute_loss
from ..pretext import evaluate as evaluate_pretext
from ..run_folder import claim_run_folder
from ..device import resolve_device
from .config import TrainConfig
from .distributed import finish_distributed, init_distributed, ranks_agree
from .state import NonFiniteLoss, restore_run_state, save_run_state

log = logging.getLogger("relpos.train")

CHECKPOINT_NAME = "checkpoint.pt"


class _StopFlag:
    """Set by SIGINT/SIGTERM; the loop finishes its step, saves a checkpoint and exits cleanly."""

    def __init__(self):
        self.signal_name = None
        self._previous = {}

    def __enter__(self):
        for sig in (signal.SIGINT, signal.SIGTERM):
            try:
                self._previous[sig] = signal.signal(sig, self._handle)
            except ValueError:  # not the main thread
                pass
        return self

    def _handle(self, number, frame):
        self.signal_name = signal.Signals(number).name

    def __exit__(self, *exc):
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)


# A run whose first steps draw no item (pair, puzzle) at all (images too small for the patch layout) stops instead of
# training on nothing; later item-less steps (a batch of only small images) are skipped.
_PAIRLESS_STEPS_BEFORE_GIVING_UP = 3


@contextlib.contextmanager
def _logs_above(progress):
    """Route log lines above the progress bar instead of gluing them onto it."""
    if progress is None:
        yield
        return
    from tqdm.contrib.logging import logging_redirect_tqdm

    with logging_redirect_tqdm():
        yield


def _short(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}"


def _ignore_sigint_in_worker(_):
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the main process's to handle


def _lr_factor(config: TrainConfig, step: int) -> float:
    if step < config.warmup:
        return (step + 1) / config.warmup
    if config.schedule == "constant":
        return 1.0
    progress = (step - config.warmup) / max(1, config.steps - config.warmup)
    return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))


def _step_generator(seed: int, step: int, rank: int) -> torch.Generator:
    return torch.Generator().manual_seed((seed * 1_000_003 + step) * 64 + rank)


def pretext_of(config: TrainConfig) -> Pretext:
    return build_pretext(config.task, config.patch_config(), config.permutations)


def evaluate(model, images, config: TrainConfig, device, autocast_dtype, plans: int | None = None,
             pretext: Pretext | None = None):
    """Held-out pretext accuracy and confusion matrix with the run's task and options (fixed plans)."""
    return evaluate_pretext(model, pretext or pretext_of(config), images, device, color=config.color,
                            backend=config.backend, plans=plans or config.eval_plans, autocast_dtype=autocast_dtype)


def train(config: TrainConfig) -> dict:
    """Run (or resume) pretraining; returns the final summary (also written to OUT/summary.json)."""
    deterministic_before = torch.are_deterministic_algorithms_enabled()
    warn_only_before = torch.is_deterministic_algorithms_warn_only_enabled()
    try:
        return _train(config)
    finally:  # the setting is process-wide: leave it as the caller had it
        torch.use_deterministic_algorithms(deterministic_before, warn_only=warn_only_before)


def _train(config: TrainConfig) -> dict:
    config.check()
    if config.data:  # absolute, so the checkpoint's record of it works from any directory (relpos eval)
        config = dataclasses.replace(config, data=str(Path(config.data).expanduser().resolve()))
    rank, world, local_rank = init_distributed()
    device = resolve_device(config.device, local_rank)
    out = Path(config.out)
    is_main = rank == 0
    run_folder = claim_run_folder(out, resume=config.resume, overwrite=config.overwrite) if is_main else None
    try:
        return _train_in(config, rank, world, local_rank, device, out, is_main)
    finally:
        if run_folder is not None:
            run_folder.release()


def _ignored_options(config: TrainConfig) -> list[str]:
    """Options that the chosen mode does not use, so the user is told rather than left guessing."""
    ignored = []
    if config.resident and config.decode != "pil":
        ignored.append("--decode (with --resident every image is decoded once by PIL up front)")
    if config.resident and config.workers != TrainConfig.workers:
        ignored.append("--workers (with --resident no worker decodes per step)")
    if config.holdout == 0 and config.eval_plans != TrainConfig.eval_plans:
        ignored.append("--eval-plans (--holdout 0 holds out no image to evaluate)")
    return ignored


def _train_in(config: TrainConfig, rank: int, world: int, local_rank: int, device: torch.device, out: Path,
              is_main: bool) -> dict:
    for option in _ignored_options(config):
        log.warning("ignored: %s", option)
    backend = backends.resolve(config.backend, device)
    autocast_dtype = torch.bfloat16 if (config.precision == "bf16" or (config.precision == "auto" and
                                                                        device.type == "cuda")) else None
    use_compile = config.compile == "on" or (config.compile == "auto" and device.type == "cuda")
    if config.deterministic == "on" or (config.deterministic == "auto" and device.type == "cpu"):
        # bit-exact reruns and resumes (parallel index/scatter backward otherwise sums in any order)
        torch.use_deterministic_algorithms(True, warn_only=True)

    paths = list_images(config.data) if config.data else bundled_photos()
    train_paths, held_paths = split_holdout(paths, config.holdout)
    if not train_paths:
        raise ValueError(f"--holdout {config.holdout} leaves no training image out of {len(paths)}")

    torch.manual_seed(config.seed)
    random.seed(config.seed)
    np.random.seed(config.seed % 2**32)
    pretext = pretext_of(config)
    model = pretext.build_model(config.arch, config.width).to(device, memory_format=torch.channels_last)
    fused = device.type == "cuda"
    optimizer = torch.optim.AdamW(model.parameters(), lr=config.lr, weight_decay=config.weight_decay, fused=fused)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: _lr_factor(config, step))

    start_step = 0
    checkpoint_path = out / CHECKPOINT_NAME
    if is_main:
        for leftover in out.glob(f".{CHECKPOINT_NAME}.tmp-*"):  # a write cut short by a kill: never renamed, unused
            leftover.unlink(missing_ok=True)
    if config.resume:
        start_step, pretext = restore_run_state(checkpoint_path, config, model, optimizer, scheduler, device)

    training_model = model
    if world > 1:
        training_model = torch.nn.parallel.DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None)
    loss_fn = compute_loss
    if use_compile:
        loss_fn = torch.compile(compute_loss, dynamic=True)

    patch_config = config.patch_config()
    per_step = images_per_step(config.batch, pretext.expected_patches_per_image())
    items = pretext.item_name + "s"  # pairs, puzzles
    if config.resident:
        resident = ResidentImages(train_paths, device)
        batches = (resident.batch(indices) for indices in
                   StepBatches(len(resident), per_step, config.seed, start_step, config.steps, rank, world))
        initial_failures = resident.failures
    else:
        gpu_decode = config.decode == "gpu"
        if gpu_decode:
            from ..data.gpu_decode import decode_on_device, gpu_decode_error

            if gpu_decode_error(device):
                raise RuntimeError(f"--decode gpu: {gpu_decode_error(device)}")
        loader = make_loader(train_paths, per_step, config.seed, start_step, config.steps, config.workers,
                             pin_memory=device.type == "cuda" and not gpu_decode, rank=rank, world_size=world,
                             raw=gpu_decode)
        loader.worker_init_fn = _ignore_sigint_in_worker
        batches = (decode_on_device(items, device) for items in loader) if gpu_decode else iter(loader)
        initial_failures = []

    metrics = MetricsLog(out / "metrics.jsonl", truncate_after_step=start_step if config.resume else None) \
        if is_main else None
    skipped_path = out / "skipped.jsonl"
    skipped_files: dict[str, str] = {}
    if config.resume and skipped_path.exists():
        for line in skipped_path.read_text().splitlines():
            record = json.loads(line)
            skipped_files[record["path"]] = record["reason"]

    def note_skipped(failures):
        for path, reason in failures:
            if path not in skipped_files:
                skipped_files[path] = reason
                log.warning("skipping %s", reason)
                if is_main:
                    with open(skipped_path, "a") as handle:
                        handle.write(json.dumps({"path": path, "reason": reason}) + "\n")

    note_skipped(initial_failures)
    if is_main and "permutations" in pretext.state():  # the jigsaw classes, readable without torch
        (out / "permutations.json").write_text(json.dumps(pretext.state()["permutations"].tolist()))
    if is_main:
        print(f"relpos train: {device}, backend {backend}, {'bf16' if autocast_dtype else 'fp32'}"
              f"{', compiled' if use_compile else ''}; {len(train_paths)} training images, {len(held_paths)} held out"
              f"{f', {len(skipped_files)} skipped so far' if skipped_files else ''}; steps {start_step}->{config.steps}"
              f" of ~{config.batch} patches; writing to {out}", flush=True)
    patch_buffer = None  # reused across steps (out=), so no step pays for freshly faulted-in pages

    def save(step: int) -> None:
        if is_main:
            save_run_state(checkpoint_path, model, optimizer, scheduler, step, config, pretext)

    progress = None
    if is_main and config.progress:
        from tqdm.auto import tqdm

        progress = tqdm(total=config.steps, initial=start_step, desc="pretraining", unit="step", dynamic_ncols=True)
    model.train()
    nonfinite_streak = 0
    window_start, window_patches, window_pairs = time.perf_counter(), 0, 0
    last_eval = None
    step = start_step
    steps_without_pairs, pairs_seen = 0, False
    with _StopFlag() as stop, _logs_above(progress):
        for step in range(start_step, config.steps):
            batch: ImageBatch = next(batches)
            note_skipped(batch.failures)
            loss_value, accuracy = None, None
            if batch.images is not None:
                images = batch.images.to(device, non_blocking=True)
                plan = pretext.draw(images.sizes, generator=_step_generator(config.seed, step, rank))
                note_skipped([(batch.paths[i], f"{batch.paths[i]}: {pretext.too_small()}") for i in plan.skipped])
            if batch.images is None or plan.num_pairs == 0:
                steps_without_pairs += 1
                if not pairs_seen and steps_without_pairs >= _PAIRLESS_STEPS_BEFORE_GIVING_UP:
                    raise ValueError(
                        f"no {pretext.item_name} of {patch_config.patch}-px patches could be drawn in the first "
                        f"{steps_without_pairs} steps: the images (resized to {config.min_pixels}-{config.max_pixels} "
                        f"pixels) are too small for one {pretext.item_name} with {config.gap}-px gaps. Lower "
                        "--patch/--gap/--jitter or raise --min-pixels/--max-pixels.")
            else:
                steps_without_pairs, pairs_seen = 0, True
                patch_dtype = autocast_dtype or torch.float32
                if patch_buffer is None or patch_buffer.shape[0] < plan.num_patches:
                    patch_buffer = empty_patches(max(plan.num_patches, config.batch * 5 // 4), patch_config.patch,
                                                 patch_dtype, True, device)
                patches = extract_patches(images, plan, color=config.color, backend=backend,
                                          out=patch_buffer[: plan.num_patches])
                pairs = plan.pairs.to(device, non_blocking=True)
                labels = plan.labels.to(device, non_blocking=True)
                try:
                    loss, correct, _ = loss_fn(training_model, patches, pairs, labels, autocast_dtype)
                except torch.OutOfMemoryError as error:
                    raise RuntimeError(f"out of device memory at step {step} with {plan.num_patches} patches and "
                                       f"{plan.num_pairs} {items}: lower --batch (now {config.batch}) or --width, "
                                       f"or use --precision bf16. The last checkpoint is {checkpoint_path}.") from error
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                # The norm is taken after DDP's all-reduce, so every rank takes the same decision.
                grad_norm = float(torch.nn.utils.clip_grad_norm_(model.parameters(), 5.0))
                loss_value = float(loss.detach())
                if not (math.isfinite(loss_value) and math.isfinite(grad_norm)):
                    nonfinite_streak += 1
                    optimizer.zero_grad(set_to_none=True)
                    log.warning("step %d: loss %s, gradient norm %s; skipping the update (%d in a row)", step,
                                loss_value, grad_norm, nonfinite_streak)
                    if nonfinite_streak >= config.max_nonfinite:
                        raise NonFiniteLoss(f"loss was not finite for {nonfinite_streak} steps in a row (last at "
                                            f"step {step}); the last good checkpoint is {checkpoint_path}. Try a lower "
                                            "--lr or --precision fp32.")
                else:
                    nonfinite_streak = 0
                    optimizer.step()
                    accuracy = float(correct) / plan.num_pairs
                window_patches += plan.num_patches
                window_pairs += plan.num_pairs
            scheduler.step()
            done = step + 1
            if done % config.log_every == 0 or done == config.steps:
                raise_on_plan_errors(device)  # the loss was just read, so this read of the flag stalls nothing
            if is_main and (done % config.log_every == 0 or done == config.steps):
                elapsed = max(time.perf_counter() - window_start, 1e-9)
                record = {"kind": "train", "step": done, "loss": loss_value, "accuracy": accuracy,
                          "lr": scheduler.get_last_lr()[0], "patches_per_s": window_patches * world / elapsed,
                          f"{items}_per_s": window_pairs * world / elapsed}
                metrics.write(record)
                if progress is not None:
                    progress.set_postfix(loss=_short(loss_value), acc=_short(accuracy),
                                         patches_s=f"{record['patches_per_s']:.0f}",
                                         **{f"{items}_s": f"{record[f'{items}_per_s']:.0f}"})
                window_start, window_patches, window_pairs = time.perf_counter(), 0, 0
            if progress is not None:
                progress.update(1)
            if is_main and held_paths and (done % config.eval_every == 0 or done == config.steps):
                accuracy_held, confusion = evaluate(model, iter_decodable_images(held_paths), config, device,
                                                    autocast_dtype, pretext=pretext)
                if int(confusion.sum()) == 0:
                    log.warning("step %d: no held-out image gave a %s to evaluate", done, pretext.item_name)
                else:
                    last_eval = pretext_summary(confusion)
                    metrics.write({"kind": "eval", "step": done, **last_eval, "confusion": confusion.tolist()})
                    log.info("step %d: held-out pretext %s", done, format_pretext(last_eval, items))
            if done % config.checkpoint_every == 0 or done == config.steps:
                save(done)
            if done == config.stop_after and done < config.steps:
                stop.signal_name = "stop requested (--stop-after)"
            if stop.signal_name is not None:
                save(done)
                message = (f"{stop.signal_name} at step {done}: checkpoint saved to {checkpoint_path}. Resume with: "
                           f"relpos train --out {config.out} --resume (and the same options)")
                if progress is not None:
                    progress.close()
                print(message, flush=True)
                finish_distributed(world)
                return {"interrupted": True, "step": done}
    if progress is not None:
        progress.close()
    agree = ranks_agree(model) if world > 1 else None
    if not pairs_seen and start_step < config.steps:
        raise ValueError(f"no {pretext.item_name} of {patch_config.patch}-px patches could be drawn in any step: the images are "
                         "too small for this --patch/--gap/--jitter and --min-pixels/--max-pixels")
    summary = {"interrupted": False, "step": config.steps, "task": pretext.name,
               "held_out_accuracy": last_eval["accuracy"] if last_eval else None, "held_out": last_eval,
               "held_out_images": len(held_paths), "train_images": len(train_paths),
               "skipped_files": len(skipped_files), "backend": backend, "device": str(device),
               "compiled": use_compile, "precision": "bf16" if autocast_dtype else "fp32", "world_size": world,
               "ranks_agree": agree}
    if is_main:
        (out / "summary.json").write_text(strict_json(summary, indent=2))
        plot_curves(out / "metrics.jsonl", out / "curves.png", pretext.name)
        if skipped_files:
            log.warning("%d files were skipped; see %s", len(skipped_files), skipped_path)
        print(f"wrote {checkpoint_path}, {out / 'metrics.jsonl'}, {out / 'curves.png'} and {out / 'summary.json'}. "
              f"Next: relpos eval {checkpoint_path} --out {out / 'eval'}", flush=True)
    finish_distributed(world)
    return summary
