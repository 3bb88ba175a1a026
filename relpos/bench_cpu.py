"""`relpos bench` on the CPU: the compiled op at 1 and N threads, against the fill floor of its own output, and
its instructions per output element under callgrind (when valgrind is installed).

The fill floor is the time to write every element of the same output tensor once (`out.fill_`): no data path can
beat it, so `op / fill` says how far the op is from the memory system, as `fraction_of_copy` does on a GPU.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import torch

from .timing import time_median

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}


def _time(fn, inputs, rounds):
    return time_median(fn, inputs, torch.device("cpu"), rounds)


def cpu_op_detail(inputs: list[dict], rounds: int, color: str = "drop") -> dict:
    """Patches/s of the CPU op writing into reused buffers (`out=`, as training does) at 1 and N threads, and the
    fill floor of the same outputs, for fp32 and bf16."""
    threads = torch.get_num_threads()
    patches = sum(b["plan"].num_patches for b in inputs) / len(inputs)
    rows = {}
    for name, dtype in DTYPES.items():
        outs = {id(b): torch.empty((b["plan"].num_patches, 3, b["plan"].patch_size, b["plan"].patch_size),
                                   dtype=dtype) for b in inputs}

        def op(b):
            plan, packed = b["plan"], b["packed"]
            torch.ops.relpos.extract_patches_out(packed.data, packed.meta, plan.patches, plan.seed, color,
                                                 outs[id(b)])

        row = {}
        try:
            for count in sorted({1, threads}):
                torch.set_num_threads(count)
                row[f"{count}_thread_patches_per_s"] = patches / _time(op, inputs, rounds)
                fill = _time(lambda b: outs[id(b)].fill_(0.0), inputs, rounds)
                row[f"{count}_thread_fill_floor_patches_per_s"] = patches / fill
        finally:
            torch.set_num_threads(threads)
        row["speedup_1_to_n_threads"] = row[f"{threads}_thread_patches_per_s"] / row["1_thread_patches_per_s"]
        row["times_fill_floor"] = row[f"{threads}_thread_fill_floor_patches_per_s"] / row[f"{threads}_thread_patches_per_s"]
        rows[name] = row
    return {"threads": threads, "patches_per_batch": patches, "rows": rows}


# One op call after a warm-up, single thread, the default plan over 8 synthetic photos: what callgrind counts.
_CALLGRIND_SCRIPT = """
import sys, torch
torch.set_num_threads(1)
from relpos.bench import make_inputs
from relpos.config import PatchConfig
b = make_inputs(1, 8, PatchConfig(), torch.device("cpu"), seed=0)[0]
plan, packed = b["plan"], b["packed"]
dtype = {"fp32": torch.float32, "bf16": torch.bfloat16}[sys.argv[1]]
out = torch.empty((plan.num_patches, 3, plan.patch_size, plan.patch_size), dtype=dtype)
op = lambda: torch.ops.relpos.extract_patches_out(packed.data, packed.meta, plan.patches, plan.seed, "drop", out)
op()
op()
print("ELEMENTS", out.numel())
"""


def instructions_per_element(dtype_name: str, timeout_s: int = 900) -> float | None:
    """Instructions the CPU op executes per output element (callgrind, both calls of the script above, inside
    relpos's extract functions); None when valgrind is not installed."""
    valgrind = shutil.which("valgrind")
    if valgrind is None:
        return None
    with tempfile.TemporaryDirectory() as work:
        out_file = Path(work) / "callgrind.out"
        result = subprocess.run(
            [valgrind, "--tool=callgrind", f"--callgrind-out-file={out_file}", "--toggle-collect=relpos::*extract*",
             sys.executable, "-c", _CALLGRIND_SCRIPT, dtype_name],
            capture_output=True, text=True, timeout=timeout_s, check=True)
        elements = int(re.search(r"ELEMENTS (\d+)", result.stdout).group(1))
        total = int(re.search(r"^summary: (\d+)", out_file.read_text(), re.M).group(1))
    return total / (2 * elements)  # two collected calls: warm-up and measured, same plan
