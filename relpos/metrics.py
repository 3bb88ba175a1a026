"""Metrics log (JSON lines, appended and flushed per record) and the PNG of the training curves."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path


class MetricsLog:
    def __init__(self, path: str | os.PathLike, truncate_after_step: int | None = None):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if truncate_after_step is not None and self.path.exists():
            # on resume, drop records written after the checkpoint we resume from
            kept = [r for r in read_metrics(self.path) if r.get("step", 0) <= truncate_after_step]
            self.path.write_text("".join(json.dumps(r) + "\n" for r in kept))
        elif truncate_after_step is None and self.path.exists():
            self.path.unlink()

    def write(self, record: dict) -> None:
        with open(self.path, "a") as handle:
            handle.write(strict_json(record) + "\n")


def _finite_or_none(value):
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {key: _finite_or_none(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite_or_none(item) for item in value]
    return value


def strict_json(value, **kwargs) -> str:
    """JSON that any parser reads: NaN and infinities (a step with no pairs, a diverged loss) become null."""
    return json.dumps(_finite_or_none(value), allow_nan=False, **kwargs)


def read_json_lines(path: str | os.PathLike) -> list[dict]:
    """The JSON objects of a .jsonl file (metrics.jsonl, skipped.jsonl); a line cut by a kill, or one that is JSON
    but not an object (an edited or foreign file: `[1]`), is skipped rather than failing a resume or a plot."""
    records = []
    for line in Path(path).read_text(errors="replace").splitlines():
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(record, dict):
            records.append(record)
    return records


def read_metrics(path: str | os.PathLike) -> list[dict]:
    """The records of a metrics.jsonl: its objects with an integer step (a step of "x" is skipped too)."""
    return [record for record in read_json_lines(path)
            if isinstance(record.get("step"), int) and not isinstance(record["step"], bool)]


def pretext_summary(confusion) -> dict:
    """Honest numbers of a classification confusion matrix (rows: true label, columns: predicted).

    accuracy beside the majority-label rate of the same items (what always answering the most common true label
    scores; the labels of relative positions are not balanced, so this, not 1/8, is the baseline; jigsaw's
    permutations are drawn uniformly, yet a few hundred held-out puzzles still have a commonest one above 1/K),
    the chance rate of a uniform guess (1 / classes), balanced accuracy (mean recall over the classes present) and
    the binomial standard error of the accuracy.
    """
    rows = [[int(v) for v in row] for row in (confusion.tolist() if hasattr(confusion, "tolist") else confusion)]
    if not rows or any(len(row) != len(rows) for row in rows):
        raise ValueError(f"confusion must be a non-empty square matrix, got {len(rows)} rows")
    if any(v < 0 for row in rows for v in row):
        raise ValueError("confusion must hold counts (no negative entries)")
    totals = [sum(row) for row in rows]
    items = sum(totals)
    if items == 0:
        raise ValueError("confusion is empty (no evaluated items)")
    accuracy = sum(rows[i][i] for i in range(len(rows))) / items
    recalls = [rows[i][i] / totals[i] for i in range(len(rows)) if totals[i]]
    return {"accuracy": accuracy, "majority": max(totals) / items, "chance": 1 / len(rows),
            "balanced_accuracy": sum(recalls) / len(recalls),
            "stderr": math.sqrt(accuracy * (1 - accuracy) / items), "items": items}


def format_pretext(summary: dict, unit: str = "pairs") -> str:
    """One line: accuracy ± standard error beside the majority-label baseline; `unit` names the items."""
    return (f"accuracy {summary['accuracy']:.3f} ± {summary['stderr']:.3f} (majority label {summary['majority']:.3f}, "
            f"balanced accuracy {summary['balanced_accuracy']:.3f}, {summary['items']} {unit})")


def plot_curves(metrics_path: str | os.PathLike, out_path: str | os.PathLike, task: str | None = None) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from .show import save_atomically

    records = read_metrics(metrics_path)
    train = [r for r in records if r.get("kind") == "train"]
    held = [r for r in records if r.get("kind") == "eval"]
    figure, (loss_axis, accuracy_axis) = plt.subplots(1, 2, figsize=(11, 4))
    gap = lambda value: math.nan if value is None else value  # noqa: E731 - a null (a step with no pairs) is a gap
    if train:
        steps = [r["step"] for r in train]
        loss_axis.plot(steps, [gap(r.get("loss")) for r in train], lw=0.8, label="train loss")
        accuracy_axis.plot(steps, [gap(r.get("accuracy")) for r in train], lw=0.8, alpha=0.6,
                           label="train pretext accuracy")
    if held:
        accuracy_axis.plot([r["step"] for r in held], [gap(r.get("accuracy")) for r in held], "o-",
                           label="held-out accuracy")
        # the baseline is always answering the commonest label of the same held-out items (not 1/8: edge
        # neighbours outnumber diagonals); the items are fixed, so any record's confusion gives it
        majority = next((pretext_summary(r["confusion"])["majority"] for r in reversed(held) if r.get("confusion")),
                        None)
        if majority is not None:
            accuracy_axis.axhline(majority, color="gray", ls="--", lw=0.8,
                                  label=f"majority label ({100 * majority:.1f}%)")
    loss_axis.set_xlabel("step")
    loss_axis.set_ylabel("cross-entropy")
    accuracy_axis.set_xlabel("step")
    accuracy_axis.set_ylabel("accuracy")
    accuracy_axis.set_ylim(0, 1)
    loss_axis.legend()
    accuracy_axis.legend()
    figure.suptitle(f"relpos pretraining{f' ({task})' if task else ''}")
    save_atomically(figure, str(out_path))
