"""On a GPU: median time of relpos.extract_patches per backend, colour and output dtype at B patches of the default
config, the plan already on the device, CUDA events, three input sets rotated (no cache-warm repeats). Prints one
JSON line per case with a digest of the output bytes, so builds that must agree bit for bit can be compared
(benchmarks/cuda_variants.sh), and the fraction of a device-to-device copy's bandwidth the op reaches."""

from __future__ import annotations

import argparse
import hashlib
import json
import statistics

import torch

import relpos
from relpos import backends
from relpos.bench import _bytes_moved, batches_of, copy_bandwidth
from relpos.config import PatchConfig
from relpos.timing import time_median

BYTES = {torch.float32: 4, torch.bfloat16: 2}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--patches", type=int, default=1024)
    parser.add_argument("--rounds", type=int, default=50)
    parser.add_argument("--backends", default=",".join(backends.fast_backends(torch.device("cuda"))))
    parser.add_argument("--label", default="", help="a name for this build, repeated in every line")
    args = parser.parse_args()
    device = torch.device("cuda")
    inputs = batches_of(args.patches, PatchConfig(), device, sets=3)
    for batch in inputs:
        batch["plan"] = batch["plan"].to(device)
    peak = copy_bandwidth(device, args.rounds)
    for backend in args.backends.split(","):
        for color in relpos.COLOR_MODES:
            for dtype in BYTES:
                def run(b):
                    return relpos.extract_patches(b["packed"], b["plan"], color=color, dtype=dtype, backend=backend)

                digest = hashlib.sha256(run(inputs[0]).view(torch.uint8).cpu().numpy().tobytes()).hexdigest()[:16]
                seconds = time_median(run, inputs, device, args.rounds)
                moved = statistics.mean(_bytes_moved(b, BYTES[dtype]) for b in inputs)
                print(json.dumps({"label": args.label, "backend": backend, "color": color,
                                  "dtype": str(dtype).removeprefix("torch."), "patches": args.patches,
                                  "us": round(seconds * 1e6, 1), "fraction_of_copy": round(moved / seconds / peak, 4),
                                  "copy_GBps": round(peak / 1e9), "digest": digest}))


if __name__ == "__main__":
    main()
