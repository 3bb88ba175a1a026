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


def pretext_summary(confusion) -> dict:
    """Pretext accuracy beside the honest baselines of the same evaluation pairs.

    The relative-position labels are not balanced (edge neighbours occur more often than diagonals), so the
    baseline is always answering the most frequent true label, not 1/classes. Balanced accuracy is the mean
    recall over the classes present; the standard error is the binomial one of the accuracy.
    """
    import torch

    confusion = torch.as_tensor(confusion, dtype=torch.float64)
    total = float(confusion.sum())
    if total == 0:
        return {"pairs": 0, "accuracy": None, "stderr": None, "majority": None, "balanced_accuracy": None}
    per_class = confusion.sum(dim=1)
    present = per_class > 0
    accuracy = float(confusion.diag().sum()) / total
    return {
        "pairs": int(total),
        "accuracy": accuracy,
        "stderr": math.sqrt(accuracy * (1 - accuracy) / total),
        "majority": float(per_class.max()) / total,
        "balanced_accuracy": float((confusion.diag()[present] / per_class[present]).mean()),
    }


def describe_pretext(numbers: dict) -> str:
    if not numbers.get("pairs"):
        return "no evaluation pairs"
    return (f"accuracy {numbers['accuracy']:.3f} ± {numbers['stderr']:.3f} (majority label {numbers['majority']:.3f}), "
            f"balanced accuracy {numbers['balanced_accuracy']:.3f}, {numbers['pairs']} pairs")


def read_metrics(path: str | os.PathLike) -> list[dict]:
    records = []
    for line in Path(path).read_text().splitlines():
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            continue  # a line cut by a kill
    return records


def plot_curves(metrics_path: str | os.PathLike, out_path: str | os.PathLike) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from .show import save_atomically

    records = read_metrics(metrics_path)
    train = [r for r in records if r.get("kind") == "train"]
    held = [r for r in records if r.get("kind") == "eval"]
    figure, (loss_axis, accuracy_axis) = plt.subplots(1, 2, figsize=(11, 4))
    if train:
        steps = [r["step"] for r in train]
        loss_axis.plot(steps, [r["loss"] for r in train], lw=0.8, label="train loss")
        accuracy_axis.plot(steps, [r["accuracy"] for r in train], lw=0.8, alpha=0.6, label="train pretext accuracy")
    if held:
        accuracy_axis.plot([r["step"] for r in held], [r["accuracy"] for r in held], "o-", label="held-out accuracy")
    accuracy_axis.axhline(1 / 8, color="gray", ls="--", lw=0.8, label="chance (12.5%)")
    loss_axis.set_xlabel("step")
    loss_axis.set_ylabel("cross-entropy")
    accuracy_axis.set_xlabel("step")
    accuracy_axis.set_ylabel("accuracy")
    accuracy_axis.set_ylim(0, 1)
    loss_axis.legend()
    accuracy_axis.legend()
    figure.suptitle("relpos pretraining")
    save_atomically(figure, str(out_path))
