"""Side-by-side CPU data-step timings: the C++ op of this checkout and (optionally) of another build, beside the
numpy/PIL and OpenCV per-patch baselines, at 1 and N threads, medians over interleaved rounds.

    python benchmarks/cpu_op_compare.py --old /path/to/old/checkout --out benchmarks/results/x.json

Each implementation runs in its own worker process (two builds of relpos._C cannot share one process); the driver
alternates the workers several times so that load drift on a shared machine hits both alike.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent.parent


def worker(args) -> None:
    import torch

    from relpos.bench import make_inputs
    from relpos.config import PatchConfig

    inputs = make_inputs(args.sets, args.images, PatchConfig(), torch.device("cpu"), seed=0)
    patches = statistics.mean(b["plan"].num_patches for b in inputs)

    def op(dtype, reuse):
        buffers = {}

        def run(b):
            plan, packed = b["plan"], b["packed"]
            if not reuse:
                return torch.ops.relpos.extract_patches(packed.data, packed.meta, plan.patches, plan.seed, "drop",
                                                        plan.patch_size, dtype, False)
            key = id(b)
            if key not in buffers:
                buffers[key] = torch.empty((plan.num_patches, 3, plan.patch_size, plan.patch_size), dtype=dtype)
            torch.ops.relpos.extract_patches_out(packed.data, packed.meta, plan.patches, plan.seed, "drop",
                                                 buffers[key])
            return buffers[key]

        return run

    cases = {"op fp32": op(torch.float32, False), "op fp32 out=": op(torch.float32, True),
             "op bf16": op(torch.bfloat16, False), "op bf16 out=": op(torch.bfloat16, True)}
    if args.baselines:
        sys.path.insert(0, str(HERE))
        from relpos.baselines import has_opencv, numpy_pil_pipeline, opencv_pipeline

        cases["numpy/PIL per patch"] = lambda b: numpy_pil_pipeline(b["numpy"], b["plan"])
        if has_opencv():
            cases["OpenCV per patch"] = lambda b: opencv_pipeline(b["numpy"], b["plan"])
    results = {}
    for threads in args.threads:
        torch.set_num_threads(threads)
        try:
            import cv2

            cv2.setNumThreads(threads)
        except ImportError:
            pass
        for name, fn in cases.items():
            fn(inputs[0])  # warm-up
            times, cpu = [], []
            for r in range(args.rounds):
                begin, begin_cpu = time.perf_counter(), time.process_time()
                fn(inputs[(r + 1) % len(inputs)])
                times.append(time.perf_counter() - begin)
                cpu.append(time.process_time() - begin_cpu)
            results[f"{name} @{threads}"] = times
            results[f"{name} @{threads} cpu"] = cpu
    build = None
    try:
        build = torch.ops.relpos.build_info()
    except (AttributeError, RuntimeError):
        pass
    print(json.dumps({"patches_per_batch": patches, "times": results, "build_info": build}))


def run_worker(checkout: Path, args, baselines: bool) -> dict:
    env = dict(os.environ, PYTHONPATH=str(checkout))
    command = [sys.executable, __file__, "--worker", "--sets", str(args.sets), "--images", str(args.images),
               "--rounds", str(args.rounds), "--threads", *map(str, args.threads)] + (["--baselines"] if baselines else [])
    done = subprocess.run(command, env=env, capture_output=True, text=True, check=True, cwd=checkout)
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--old", type=Path, help="another checkout with its relpos._C built in place")
    parser.add_argument("--out", type=Path)
    parser.add_argument("--alternations", type=int, default=3)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--sets", type=int, default=3)
    parser.add_argument("--images", type=int, default=8)
    parser.add_argument("--threads", type=int, nargs="+", default=[1, os.cpu_count() or 1])
    parser.add_argument("--worker", action="store_true")
    parser.add_argument("--baselines", action="store_true")
    args = parser.parse_args()
    if args.worker:
        return worker(args)
    impls = {"new": HERE} | ({"old": args.old.resolve()} if args.old else {})
    samples: dict[str, list[float]] = {}
    meta = {}
    for _ in range(args.alternations):
        for label, checkout in impls.items():
            result = run_worker(checkout, args, baselines=label == "new")
            meta[label] = {"patches_per_batch": result["patches_per_batch"], "build_info": result["build_info"]}
            for case, times in result["times"].items():
                name = case if case.startswith(("numpy", "OpenCV")) else f"{label}: {case}"
                samples.setdefault(name, []).extend(times)
    patches = meta["new"]["patches_per_batch"]
    # Wall time, and the process's CPU time (all threads): on a loaded machine the second is the steadier
    # measure of work per patch; wall time is what a user sees.
    rows = {name: {"median_s": statistics.median(t), "patches_per_s": patches / statistics.median(t),
                   "cpu_patches_per_s": patches / statistics.median(samples[name + " cpu"]), "samples": len(t)}
            for name, t in samples.items() if not name.endswith(" cpu")}
    import platform

    import torch

    commit = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, cwd=HERE).stdout.strip()
    old_commit = (subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True,
                                 cwd=args.old).stdout.strip() if args.old else None)
    report = {"date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "device": platform.processor() or "cpu",
              "cpu_count": os.cpu_count(), "torch": torch.__version__, "python": platform.python_version(),
              "commit": commit, "old_commit": old_commit, "builds": meta, "rows": rows,
              "note": "medians of interleaved rounds on a shared machine; default plan, colour drop, synthetic "
                      f"{args.images} images of 300-700 px per batch"}
    for name, row in sorted(rows.items()):
        print(f"{name:32s} {row['patches_per_s']:10.0f} patches/s wall {row['cpu_patches_per_s']:10.0f} per CPU-s"
              f"  ({row['samples']} samples)")
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
