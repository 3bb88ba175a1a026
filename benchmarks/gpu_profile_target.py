"""What `ncu` profiles in benchmarks/gpu_session.sh: each fast GPU backend once per colour and output dtype on one
plan of B patches of the default config, between cudaProfilerStart/Stop so the warm-up and Triton's JIT stay out.

Prints one CSV line per profiled case, in launch order, so ncu's rows (one or more kernels per case) can be matched
to cases by benchmarks/gpu_profile_report.py. Output elements per case: B x 3 x P x P."""

from __future__ import annotations

import argparse

import torch

import relpos
from relpos import backends
from relpos.bench import batches_of
from relpos.config import PatchConfig
from relpos.plan import DOWN


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--patches", type=int, default=1024)
    args = parser.parse_args()
    device = torch.device("cuda")
    config = PatchConfig()
    batch = batches_of(args.patches, config, device, sets=1)[0]
    packed, plan = batch["packed"], batch["plan"].to(device)
    cases = [(backend, color, dtype) for backend in backends.fast_backends(device) for color in relpos.COLOR_MODES
             for dtype in (torch.float32, torch.bfloat16)]

    def run(case):
        backend, color, dtype = case
        return relpos.extract_patches(packed, plan, color=color, dtype=dtype, backend=backend)

    for case in cases:  # warm-up: module load and JIT outside the profiled range
        run(case)
    torch.cuda.synchronize()
    torch.cuda.profiler.start()
    for case in cases:
        run(case)
    torch.cuda.synchronize()
    torch.cuda.profiler.stop()
    down = (plan.patches[:, DOWN] > 0).float().mean().item()
    print(f"# patches={args.patches} patch={config.patch} down_fraction={down:.3f}")
    print("case,backend,color,dtype,elements")
    for index, (backend, color, dtype) in enumerate(cases):
        print(f"{index},{backend},{color},{str(dtype).removeprefix('torch.')},{args.patches * 3 * config.patch ** 2}")


if __name__ == "__main__":
    main()
