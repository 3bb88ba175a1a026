"""`relpos bench` on the CPU reports the op at 1 and N threads, against the fill floor of its own output, beside
each baseline of the same run; callgrind counts are skipped cleanly without valgrind."""

import json

import torch

from relpos import bench_cpu
from relpos.cli import main


def test_quick_bench_reports_threads_fill_floor_and_ratios(tmp_path, capsys):
    assert main(["bench", "--quick", "--out", str(tmp_path)]) == 0
    report = json.loads(next(tmp_path.glob("*.json")).read_text())
    detail = report["cpu_op"]
    n = detail["threads"]
    assert n == torch.get_num_threads()
    for name in ("fp32", "bf16"):
        row = detail["rows"][name]
        assert row["1_thread_patches_per_s"] > 0 and row[f"{n}_thread_patches_per_s"] > 0
        assert row["times_fill_floor"] > 0
        assert "baseline: numpy/PIL per patch" in row["speedup_over"]
    assert "instructions_per_element" not in detail  # callgrind is for full runs only
    assert "the time of filling its output" in capsys.readouterr().out
    assert main(["bench", "--quick", "--out", str(tmp_path)]) == 0  # a second run the same day keeps the first
    assert len(list(tmp_path.glob("*.json"))) == 2


def test_instruction_count_is_none_without_valgrind(monkeypatch):
    monkeypatch.setattr(bench_cpu.shutil, "which", lambda name: None)
    assert bench_cpu.instructions_per_element("fp32") is None
