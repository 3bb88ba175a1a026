"""Median wall time of a step, the same way for every benchmark: CUDA events on a GPU, perf_counter on the CPU."""

from __future__ import annotations

import statistics
import time

import torch


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_median(fn, inputs: list, device: torch.device, rounds: int) -> float:
    """Median seconds of fn(input) over `rounds` runs, rotating through `inputs`; one warm-up run first."""
    fn(inputs[0])
    _sync(device)
    times = []
    for r in range(rounds):
        item = inputs[(r + 1) % len(inputs)]
        if device.type == "cuda":
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn(item)
            end.record()
            end.synchronize()
            times.append(start.elapsed_time(end) / 1000.0)
        else:
            begin = time.perf_counter()
            fn(item)
            times.append(time.perf_counter() - begin)
    return statistics.median(times)
