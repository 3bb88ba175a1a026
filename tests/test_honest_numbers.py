"""pretext_summary: accuracy beside the majority-label rate, balanced accuracy and the standard error; curves.png
draws the majority line of the eval records, not 1/8."""

import json
import math

import matplotlib.axes
import pytest
import torch

from relpos.metrics import pretext_summary, plot_curves


def test_pretext_summary_known_values():
    confusion = torch.tensor([[30, 10, 0], [20, 20, 0], [5, 5, 10]])  # rows true, columns predicted
    summary = pretext_summary(confusion)
    assert summary["items"] == 100
    assert summary["accuracy"] == pytest.approx(0.60)
    assert summary["majority"] == pytest.approx(0.40)  # both 40-item rows; always answering one scores 0.40
    assert summary["balanced_accuracy"] == pytest.approx((30 / 40 + 20 / 40 + 10 / 20) / 3)
    assert summary["stderr"] == pytest.approx(math.sqrt(0.6 * 0.4 / 100))


def test_majority_predictor_is_not_better_than_majority():
    # a model always answering the commonest label: accuracy == majority, balanced accuracy == 1 / classes present
    rows = torch.tensor([25, 15, 15, 15, 9, 9, 0, 12])
    confusion = torch.zeros(8, 8, dtype=torch.int64)
    confusion[:, 0] = rows
    summary = pretext_summary(confusion)
    assert summary["accuracy"] == pytest.approx(summary["majority"]) and summary["majority"] == pytest.approx(0.25)
    assert summary["balanced_accuracy"] == pytest.approx(1 / 7)  # the absent class does not count


@pytest.mark.parametrize("bad", [torch.zeros(8, 8, dtype=torch.int64), torch.zeros(2, 3), [[1, -1], [0, 1]], []])
def test_pretext_summary_rejects_bad_input(bad):
    with pytest.raises(ValueError, match="confusion"):
        pretext_summary(bad)


def test_curves_draw_the_majority_line(tmp_path, monkeypatch):
    confusion = torch.zeros(8, 8, dtype=torch.int64)
    confusion[:, 1] = torch.tensor([10, 20, 10, 20, 20, 10, 20, 10])  # majority 20/120
    records = [{"kind": "train", "step": s, "loss": 2.0, "accuracy": 0.2} for s in (1, 2)]
    records.append({"kind": "eval", "step": 2, "accuracy": 0.25, "confusion": confusion.tolist()})
    (tmp_path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    lines = []
    original = matplotlib.axes.Axes.axhline
    monkeypatch.setattr(matplotlib.axes.Axes, "axhline",
                        lambda self, y=0, *a, **k: lines.append((y, k.get("label"))) or original(self, y, *a, **k))
    plot_curves(tmp_path / "metrics.jsonl", tmp_path / "curves.png")
    assert (tmp_path / "curves.png").stat().st_size > 5_000
    assert len(lines) == 1 and lines[0][0] == pytest.approx(20 / 120) and "majority" in lines[0][1]
