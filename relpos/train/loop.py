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
import gc
import json
import logging
import math
import random
import re
import signal
import time
import warnings
from pathlib import Path

import numpy as np
import torch

from .. import backends
from ..data import (
    ImageBatch,
    ResidentImages,
    StepBatches,
    bundled_photos,
    contents_digest,
    iter_decodable_images,
    list_images,
    make_loader,
    split_holdout,
)
from ..data.dataset import images_per_step
from ..sampler import MAX_UPSCALE
from ..checkpoint import atomic_write_bytes
from ..metrics import (MetricsLog, format_pretext, plot_curves, pretext_summary, read_json_lines, read_metrics,
                       strict_json)
from ..ops import empty_patches, extract_patches
from ..plan_guard import raise_on_plan_errors
from ..pretext import Pretext, build_pretext, compute_loss
from ..pretext import evaluate as evaluate_pretext
from ..run_folder import claim_run_folder
from ..devices import resolve_device
from .config import TrainConfig
from .distributed import finish_distributed, init_distributed, ranks_agree, torchrun_ranks
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


def _step_stream(seed: int, step: int, rank: int, salt: int = 0) -> int:
    """The seed of one random stream of (seed, step, rank): salt 0 for the plans, another salt for each side stream
    (the --mirror coin, the dropout masks), so that none of them moves the plans."""
    return (((seed * 1_000_003 + step) * 64 + rank) ^ salt) & (2**63 - 1)


def _step_generator(seed: int, step: int, rank: int) -> torch.Generator:
    return torch.Generator().manual_seed(_step_stream(seed, step, rank))


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
    rank, world, local_rank = torchrun_ranks()
    device = resolve_device(config.device, local_rank)
    init_distributed(device)
    out = Path(config.out)
    is_main = rank == 0
    run_folder = claim_run_folder(out, resume=config.resume, overwrite=config.overwrite) if is_main else None
    try:
        run = _set_up(config, rank, world, device, out, is_main)
        result = _step_loop(run)
    finally:
        if run_folder is not None:
            run_folder.release()
    # The run goes before its process group: DDP's reducer holds the group, and if it held the last reference its
    # destructor would join gloo's threads with the GIL held while one of them waits for the GIL (a hang seen in CI).
    del run
    gc.collect()
    finish_distributed(world)
    return result


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


def _step_schedule_without_update(scheduler) -> None:
    """Advance the schedule on a step that drew no pair: the learning rate follows the step count, so that a resumed run
    and an uninterrupted one agree. PyTorch warns when a run's first scheduler step comes before any optimizer step
    ("skipping the first value of the schedule"), which is not so here: silenced for this call only."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", re.escape("Detected call of `lr_scheduler.step()` before"), UserWarning)
        scheduler.step()


class _SkippedLog:
    """Files that could not be used and why: logged once each, appended to OUT/skipped.jsonl (kept on resume)."""

    def __init__(self, path: Path, write: bool, resume: bool):
        self.path, self.write, self.files = path, write, {}
        if resume and path.exists():
            for record in read_json_lines(path):  # a line cut by a kill is skipped, not fatal
                if isinstance(record.get("path"), str):
                    self.files[record["path"]] = str(record.get("reason", record["path"]))

    def note(self, failures) -> None:
        for path, reason in failures:
            if path not in self.files:
                self.files[path] = reason
                log.warning("skipping %s", reason)
                if self.write:
                    with open(self.path, "a") as handle:
                        handle.write(json.dumps({"path": path, "reason": reason}) + "\n")


def _note_plan_skips(run: "_Run", paths, plan) -> None:
    """An image the plan skipped at this step's random scale: a bad file (skipped.jsonl, left out of the summary's
    images) only when it is too small at every scale the plan draws from; otherwise it is used at the others."""
    for index, why in zip(plan.skipped, plan.skip_reasons):
        path = paths[index]
        if path in run.scale_skipped or path in run.skipped.files:
            continue  # decided (and reported) the first time: not searched again every step it is drawn small
        if run.train_pretext.fits_at_some_scale(*plan.image_sizes[index].tolist()):
            run.scale_skipped.add(path)
            if run.is_main:
                log.info("%s: %s at this step's scale; it is used at the scales where it fits", path, why)
        else:
            run.skipped.note([(path, f"{path}: {why}")])


@dataclasses.dataclass
class _Run:
    """What the step loop works with, built once by _set_up."""

    config: TrainConfig
    pretext: Pretext  # held-out evaluation and checkpoints: the config's 4 grids per image
    train_pretext: Pretext  # training steps: --grids-per-image
    rank: int
    world: int
    is_main: bool
    device: torch.device
    backend: str
    autocast_dtype: torch.dtype | None
    use_compile: bool
    model: torch.nn.Module
    training_model: torch.nn.Module  # the model, DDP-wrapped when several processes train
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    loss_fn: object
    start_step: int
    out: Path
    train_paths: list
    held_paths: list
    batches: object  # iterator of ImageBatch, one per step from start_step
    skipped: _SkippedLog
    metrics: MetricsLog | None
    nonfinite_streak: int = 0
    scale_skipped: set = dataclasses.field(default_factory=set)  # too small at some steps' scales only (logged once)
    patch_buffer: torch.Tensor | None = None  # reused across steps (out=): no step pays for freshly faulted-in pages
    # BatchNorm's buffers as they were before this step's forward, which updates them whether or not the step is then
    # skipped (from activations that may be NaN or blown up): a skipped step puts them back, so it changes nothing
    statistics_before: list[list[torch.Tensor]] = dataclasses.field(default_factory=list)  # _batchnorm_buffers groups

    @property
    def checkpoint_path(self) -> Path:
        return self.out / CHECKPOINT_NAME

    @property
    def items(self) -> str:
        return self.pretext.item_name + "s"  # pairs, puzzles

    def save(self, step: int) -> None:
        if self.is_main:
            save_run_state(self.checkpoint_path, self.model, self.optimizer, self.scheduler, step, self.config,
                           self.pretext)

    def keep_statistics(self) -> None:
        groups = _batchnorm_buffers(self.model)
        if [len(group) for group in groups] != [len(saved) for saved in self.statistics_before]:
            self.statistics_before = [[buffer.detach().clone() for buffer in group] for group in groups]
            return
        for saved, group in zip(self.statistics_before, groups):
            torch._foreach_copy_(saved, group)

    def restore_statistics(self) -> None:
        for group, saved in zip(_batchnorm_buffers(self.model), self.statistics_before, strict=True):
            torch._foreach_copy_(group, saved)


def _batchnorm_buffers(model: torch.nn.Module) -> list[list[torch.Tensor]]:
    """BatchNorm's running statistics, and its batch counts: one dtype per list, so that each _foreach_copy_ is one
    fused copy on CUDA (a list of mixed dtypes is copied tensor by tensor); empty lists left out."""
    norms = [module for module in model.modules() if isinstance(module, torch.nn.modules.batchnorm._BatchNorm)]
    statistics = [buffer for module in norms for buffer in (module.running_mean, module.running_var)
                  if buffer is not None]
    counts = [module.num_batches_tracked for module in norms if module.num_batches_tracked is not None]
    return [group for group in (statistics, counts) if group]


def _set_up(config: TrainConfig, rank: int, world: int, device: torch.device, out: Path, is_main: bool) -> _Run:
    """Options, numerics, data split, model, optimiser, schedule, resume, data source, logs."""
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
    model = pretext.build_model(config.arch, config.width, config.dropout).to(device, memory_format=torch.channels_last)
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
    loss_fn = torch.compile(compute_loss, dynamic=True) if use_compile else compute_loss

    train_pretext = pretext.with_config(grids_per_image=config.grids_per_image)
    per_step = images_per_step(config.batch, train_pretext.expected_patches_per_image())
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
    skipped = _SkippedLog(out / "skipped.jsonl", write=is_main, resume=config.resume)
    skipped.note(initial_failures)
    if is_main and "permutations" in pretext.state():  # the jigsaw classes, readable without torch
        (out / "permutations.json").write_text(json.dumps(pretext.state()["permutations"].tolist()))
    if is_main:
        print(f"relpos train: {device}, backend {backend}, {'bf16' if autocast_dtype else 'fp32'}"
              f"{', compiled' if use_compile else ''}; {len(train_paths)} training images, {len(held_paths)} held out"
              f"{f', {len(skipped.files)} skipped so far' if skipped.files else ''}; steps {start_step}->{config.steps}"
              f" of ~{config.batch} patches; writing to {out}", flush=True)
    return _Run(config=config, pretext=pretext, train_pretext=train_pretext, rank=rank, world=world, is_main=is_main, device=device,
                backend=backend, autocast_dtype=autocast_dtype, use_compile=use_compile, model=model,
                training_model=training_model, optimizer=optimizer, scheduler=scheduler, loss_fn=loss_fn,
                start_step=start_step, out=out, train_paths=train_paths, held_paths=held_paths, batches=batches,
                skipped=skipped, metrics=metrics)


def _step_coin(seed: int, step: int, rank: int) -> bool:
    """A fair coin of (seed, step, rank) from its own stream, so --mirror leaves the plans as they were."""
    stream = _step_stream(seed, step, rank, 0x9E3779B97F4A7C15)
    return bool(torch.randint(2, (), generator=torch.Generator().manual_seed(stream)))


def _update(run: _Run, step: int, images, plan) -> tuple[float, float | None]:
    """Render, forward, backward, clip, step (skipped on a non-finite loss or gradient); the loss and accuracy.
    `step` counts from 0; messages name step + 1, as metrics.jsonl and checkpoints number it."""
    config = run.config
    if run.patch_buffer is None or run.patch_buffer.shape[0] < plan.num_patches:
        run.patch_buffer = empty_patches(max(plan.num_patches, config.batch * 5 // 4), plan.patch_size,
                                         run.autocast_dtype or torch.float32, True, run.device)
    patches = extract_patches(images, plan, color=config.color, backend=run.backend,
                              out=run.patch_buffer[: plan.num_patches])
    index = plan.pairs.to(run.device, non_blocking=True)
    labels = plan.labels.to(run.device, non_blocking=True)
    if config.mirror and _step_coin(config.seed, step, run.rank):
        patches, labels = run.pretext.mirrored(patches, labels)
    if config.dropout:  # masks of (seed, step, rank) alone: a resumed run draws those the uninterrupted run drew
        torch.manual_seed(_step_stream(config.seed, step, run.rank, 0x5DEECE66D))
    run.keep_statistics()
    try:
        loss, correct, _ = run.loss_fn(run.training_model, patches, index, labels, run.autocast_dtype)
    except torch.OutOfMemoryError as error:
        raise RuntimeError(f"out of device memory at step {step + 1} with {plan.num_patches} patches and "
                           f"{plan.num_pairs} {run.items}: lower --batch (now {config.batch}) or --width, "
                           f"or use --precision bf16. The last checkpoint is {run.checkpoint_path}.") from error
    run.optimizer.zero_grad(set_to_none=True)
    loss.backward()
    # The norm is taken after DDP's all-reduce, so every rank takes the same decision.
    grad_norm = float(torch.nn.utils.clip_grad_norm_(run.model.parameters(), 5.0))
    loss_value = float(loss.detach())
    if math.isfinite(loss_value) and math.isfinite(grad_norm):
        run.nonfinite_streak = 0
        run.optimizer.step()
        return loss_value, float(correct) / plan.num_pairs
    run.nonfinite_streak += 1
    run.optimizer.zero_grad(set_to_none=True)
    run.restore_statistics()
    log.warning("step %d: loss %s, gradient norm %s; skipping the update and putting back BatchNorm's running "
                "statistics (%d in a row)", step + 1, loss_value, grad_norm, run.nonfinite_streak)
    if run.nonfinite_streak >= config.max_nonfinite:
        raise NonFiniteLoss(f"loss was not finite for {run.nonfinite_streak} steps in a row (last at step {step + 1}); "
                            f"the last good checkpoint is {run.checkpoint_path}. Try a lower --lr or --precision fp32.")
    return loss_value, None


def _evaluate_held_out(run: _Run, done: int) -> dict | None:
    failures = []
    accuracy, confusion = evaluate(run.model, iter_decodable_images(run.held_paths, failures), run.config,
                                   run.device, run.autocast_dtype, pretext=run.pretext)
    run.skipped.note(failures)  # a bad held-out file is reported like a bad training file
    if int(confusion.sum()) == 0:
        log.warning("step %d: no held-out image gave a %s to evaluate", done, run.pretext.item_name)
        return None
    summary = pretext_summary(confusion)
    run.metrics.write({"kind": "eval", "step": done, **summary, "confusion": confusion.tolist()})
    log.info("step %d: held-out pretext %s", done, format_pretext(summary, run.items))
    return summary


def _step_loop(run: _Run) -> dict:
    config, pretext, items = run.config, run.train_pretext, run.items
    progress = None
    if run.is_main and config.progress:
        from tqdm.auto import tqdm

        progress = tqdm(total=config.steps, initial=run.start_step, desc="pretraining", unit="step",
                        dynamic_ncols=True)
    run.model.train()
    window_start, window_patches, window_items = time.perf_counter(), 0, 0
    last_eval = None
    steps_without_items, items_seen = 0, False
    with _StopFlag() as stop, _logs_above(progress):
        for step in range(run.start_step, config.steps):
            batch: ImageBatch = next(run.batches)
            run.skipped.note(batch.failures)
            loss_value, accuracy, plan = None, None, None
            if batch.images is not None:
                images = batch.images.to(run.device, non_blocking=True)
                plan = pretext.draw(images.sizes, generator=_step_generator(config.seed, step, run.rank))
                _note_plan_skips(run, batch.paths, plan)
            if plan is None or plan.num_pairs == 0:
                steps_without_items += 1
                if not items_seen and steps_without_items >= _PAIRLESS_STEPS_BEFORE_GIVING_UP:
                    raise ValueError(
                        f"no {pretext.item_name} of {config.patch}-px patches could be drawn in the first "
                        f"{steps_without_items} steps: the images (resized to {config.min_pixels}-{config.max_pixels} "
                        f"pixels, enlarged at most {MAX_UPSCALE:g}x per side) are too small for one "
                        f"{pretext.item_name} with {config.gap}-px gaps. Lower --patch/--gap/--jitter or raise "
                        "--min-pixels/--max-pixels (thin images); lower --min-pixels/--max-pixels (small images; "
                        "the reasons are in the log and skipped.jsonl).")
            else:
                steps_without_items, items_seen = 0, True
                loss_value, accuracy = _update(run, step, images, plan)
                window_patches += plan.num_patches
                window_items += plan.num_pairs
            if loss_value is None:
                _step_schedule_without_update(run.scheduler)
            else:
                run.scheduler.step()
            done = step + 1
            if done % config.log_every == 0 or done == config.steps:
                raise_on_plan_errors(run.device)  # the loss was just read, so this read of the flag stalls nothing
            if run.is_main and (done % config.log_every == 0 or done == config.steps):
                elapsed = max(time.perf_counter() - window_start, 1e-9)
                record = {"kind": "train", "step": done, "loss": loss_value, "accuracy": accuracy,
                          "lr": run.scheduler.get_last_lr()[0], "patches_per_s": window_patches * run.world / elapsed,
                          f"{items}_per_s": window_items * run.world / elapsed}
                run.metrics.write(record)
                if progress is not None:
                    progress.set_postfix(loss=_short(loss_value), acc=_short(accuracy),
                                         patches_s=f"{record['patches_per_s']:.0f}",
                                         **{f"{items}_s": f"{record[f'{items}_per_s']:.0f}"})
                window_start, window_patches, window_items = time.perf_counter(), 0, 0
            if progress is not None:
                progress.update(1)
            if run.is_main and run.held_paths and (done % config.eval_every == 0 or done == config.steps):
                last_eval = _evaluate_held_out(run, done) or last_eval
            if done % config.checkpoint_every == 0 or done == config.steps:
                run.save(done)
            if done == config.stop_after and done < config.steps:
                stop.signal_name = "stop requested (--stop-after)"
            if stop.signal_name is not None and done < config.steps:  # at the last step: finish instead
                run.save(done)
                message = (f"{stop.signal_name} at step {done}: checkpoint saved to {run.checkpoint_path}. Resume "
                           f"with: relpos train --out {config.out} --resume (and the same options)")
                if progress is not None:
                    progress.close()
                print(message, flush=True)
                return {"interrupted": True, "step": done}
    if progress is not None:
        progress.close()
    return _finish(run, last_eval, items_seen)


def _finish(run: _Run, last_eval: dict | None, items_seen: bool) -> dict:
    config, out = run.config, run.out
    agree = ranks_agree(run.model) if run.world > 1 else None
    if not items_seen and run.start_step < config.steps:
        raise ValueError(f"no {run.pretext.item_name} of {config.patch}-px patches could be drawn in any step: the "
                         "images are too small for this --patch/--gap/--jitter and --min-pixels/--max-pixels")
    if last_eval is None and run.is_main:
        # resuming a run whose last evaluation happened before the stop (a finished run, or one killed after its
        # final checkpoint): its held-out figures are in metrics.jsonl, and a rerun must not write them as null
        last_eval = _last_held_out(run.out / "metrics.jsonl", config.steps)
    # the images that could be used (a file that failed to decode or was too small is in skipped.jsonl)
    usable = {part: [p for p in paths if str(p) not in run.skipped.files]
              for part, paths in (("train", run.train_paths), ("held_out", run.held_paths))}
    summary = {"interrupted": False, "step": config.steps, "task": run.pretext.name,
               "held_out_accuracy": last_eval["accuracy"] if last_eval else None, "held_out": last_eval,
               "held_out_images": len(usable["held_out"]), "train_images": len(usable["train"]),
               # which photographs (by content, not name): two runs of one recipe can check they saw the same ones
               "images_sha256": {part: contents_digest(paths) for part, paths in usable.items()},
               "skipped_files": len(run.skipped.files), "backend": run.backend, "device": str(run.device),
               "compiled": run.use_compile, "precision": "bf16" if run.autocast_dtype else "fp32",
               "world_size": run.world, "ranks_agree": agree,
               "config": dataclasses.asdict(config)}  # what produced these figures, option by option
    if run.is_main:
        atomic_write_bytes(out / "summary.json", strict_json(summary, indent=2).encode())
        plot_curves(out / "metrics.jsonl", out / "curves.png", run.pretext.name)
        if run.skipped.files:
            log.warning("%d files were skipped; see %s", len(run.skipped.files), run.skipped.path)
        print(f"wrote {run.checkpoint_path}, {out / 'metrics.jsonl'}, {out / 'curves.png'} and "
              f"{out / 'summary.json'}. Next: relpos eval {run.checkpoint_path} --out {out / 'eval'}", flush=True)
    return summary


def _last_held_out(metrics_path: Path, steps: int) -> dict | None:
    """The held-out figures of the last evaluation in metrics.jsonl (at step <= steps), as _evaluate_held_out gave."""
    if not metrics_path.exists():
        return None
    evaluations = [record for record in read_metrics(metrics_path)
                   if record.get("kind") == "eval" and record.get("confusion") and record.get("step", 0) <= steps]
    return pretext_summary(evaluations[-1]["confusion"]) if evaluations else None
