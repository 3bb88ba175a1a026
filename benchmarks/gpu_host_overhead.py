"""On a GPU: where one relpos.extract_patches call spends its time outside the kernel. For each fast backend and
plan location (CPU, device), 20 calls at B = 1024 under torch.profiler; prints wall time per call, the GPU time of
every kernel it launched, and the ops that took the host's time."""

from __future__ import annotations

import time

import torch
from torch.profiler import ProfilerActivity, profile

import relpos
from relpos import backends
from relpos.bench import batches_of
from relpos.config import PatchConfig

device = torch.device("cuda")
batch = batches_of(1024, PatchConfig(), device, sets=1)[0]
for backend in backends.fast_backends(device):
    for where in ("cpu", "cuda"):
        plan = batch["plan"].to(where)
        out = torch.empty((plan.num_patches, 3, 96, 96), device=device)

        def call():
            relpos.extract_patches(batch["packed"], plan, backend=backend, out=out)

        for _ in range(3):
            call()
        torch.cuda.synchronize()
        begin = time.perf_counter()
        for _ in range(20):
            call()
        host = (time.perf_counter() - begin) / 20
        torch.cuda.synchronize()
        wall = (time.perf_counter() - begin) / 20
        with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
            for _ in range(20):
                call()
            torch.cuda.synchronize()
        print(f"\n### backend={backend} plan on {where}: host {host * 1e6:.0f} us/call to enqueue, "
              f"{wall * 1e6:.0f} us/call until done")
        print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=14, max_name_column_width=60))
        kernels = [e for e in prof.key_averages() if e.device_time_total > 0 and e.device_type.name == "CUDA"]
        for e in sorted(kernels, key=lambda e: -e.device_time_total)[:8]:
            print(f"  GPU {e.key[:70]:<70} {e.device_time_total / 20:9.1f} us/call  x{e.count / 20:.0f}")
