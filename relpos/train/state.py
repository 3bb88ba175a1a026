"""The run state: model, optimiser, schedule, step, options, the pretext task and every RNG, saved atomically as
plain data (loadable with weights_only=True) and restored exactly, so a resumed run continues bit for bit."""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path

import torch

from ..checkpoint import (
    CheckpointError,
    load_checkpoint,
    numpy_rng_state,
    python_rng_state,
    save_checkpoint,
    set_numpy_rng_state,
    set_python_rng_state,
)
from ..pretext import Pretext
from .config import TrainConfig, pretext_from_checkpoint

log = logging.getLogger("relpos.train")


class NonFiniteLoss(RuntimeError):
    pass


def save_run_state(path: Path, model, optimizer, scheduler, step: int, config: TrainConfig,
                   pretext: Pretext) -> None:
    for name, tensor in model.state_dict().items():
        if tensor.is_floating_point() and not torch.isfinite(tensor).all():
            raise NonFiniteLoss(f"refusing to checkpoint: parameter {name} is not finite")
    save_checkpoint(path, {
        "model": model.state_dict(), "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
        "step": step, "args": dataclasses.asdict(config), "pretext": pretext.state(),
        "rng": {"torch": torch.get_rng_state(), "numpy": numpy_rng_state(), "python": python_rng_state(),
                "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else []},
    })


def restore_run_state(path: Path, config: TrainConfig, model, optimizer, scheduler, device) -> tuple[int, Pretext]:
    """Load the checkpoint at `path` into the model, optimiser, schedule and RNGs; (step, task) to continue from.

    Refuses a checkpoint whose options that alter the computation differ from `config`."""
    if not path.exists():
        raise CheckpointError(f"--resume: no checkpoint at {path}")
    state = load_checkpoint(path, map_location=device)
    for key in ("optimizer", "scheduler", "rng"):
        if not isinstance(state.get(key), dict):
            raise CheckpointError(f"--resume: {path} lacks the run state '{key}' (an exported or foreign file?)")
    changed = config.changes_on_resume(state["args"])
    if changed:
        raise CheckpointError("--resume continues a run with its own settings; these differ: " + "; ".join(changed)
                              + ". Use the checkpoint's values, or start a new run with another --out.")
    try:
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
    except (RuntimeError, KeyError, ValueError) as error:
        raise CheckpointError(f"--resume: {path} does not fit this model: {error}") from error
    try:
        torch.set_rng_state(state["rng"]["torch"].cpu())
        set_numpy_rng_state(state["rng"]["numpy"])
        set_python_rng_state(state["rng"]["python"])
    except (KeyError, TypeError, ValueError, RuntimeError, AttributeError) as error:
        raise CheckpointError(f"--resume: the random-number states in {path} are damaged: {error}") from error
    step = int(state["step"])
    if step > config.steps:  # it would print "steps 1000->3" and write a summary that says step 3
        raise CheckpointError(f"--resume: {path} is at step {step}, past --steps {config.steps}: pass --steps "
                              f"{step} or more to continue it")
    try:
        pretext = pretext_from_checkpoint(state)  # the classes the run was trained with (jigsaw's permutations)
    except (KeyError, TypeError, ValueError, AttributeError) as error:
        raise CheckpointError(f"--resume: {path} has a damaged pretext task: {type(error).__name__}: {error}") \
            from error
    log.info("resumed from %s at step %d", path, step)
    return step, pretext
