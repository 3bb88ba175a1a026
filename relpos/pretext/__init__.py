"""Pretext tasks: what a plan holds, what the head reads, what the classes are.

    images -> task.draw (plan + targets) -> fused op -> tower (each patch once) -> head.classify -> loss

`relpos` (relative patch position) and `jigsaw` (jigsaw puzzles); a new task subclasses `Pretext` and is added
to TASKS.
"""

from __future__ import annotations

from ..config import PatchConfig
from .base import Pretext, compute_loss, evaluate, head_input
from .jigsaw import DEFAULT_PERMUTATIONS, Jigsaw, hamming_distances, permutation_set
from .relative_position import LABEL_NAMES, RelativePosition

TASKS = {"relpos": RelativePosition, "jigsaw": Jigsaw}

__all__ = ["DEFAULT_PERMUTATIONS", "LABEL_NAMES", "TASKS", "Jigsaw", "Pretext", "RelativePosition", "build_pretext",
           "compute_loss", "evaluate", "hamming_distances", "head_input", "permutation_set"]


def build_pretext(task: str, config: PatchConfig, permutations=DEFAULT_PERMUTATIONS) -> Pretext:
    """The task named `task` (relpos | jigsaw); `permutations` (a count or a [K, 9] table) is jigsaw's."""
    if task not in TASKS:
        raise ValueError(f"task must be one of {tuple(TASKS)}, got {task!r}")
    if task == "jigsaw":
        return Jigsaw(config, permutations)
    return TASKS[task](config)

