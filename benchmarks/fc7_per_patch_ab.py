"""A/B of one relative-position training step: the head's fc7 on every pair's concatenated features (`head(
head_input(...))`) against fc7 per patch (`head.classify`, what training runs), on the same model and inputs.

    python benchmarks/fc7_per_patch_ab.py [--reps 15] [--width 0.25] [--patches 128] [--pairs 645] [--device cpu]

The two ways alternate rep by rep (a machine whose speed drifts affects both alike); the medians, their ratio and the
largest logit difference are printed and saved with the device, versions and commit under --out. 128 patches and 645
pairs are the CPU recipe's typical step (--batch 128, one grid per photograph).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run from a source checkout

from relpos.bench import environment, unused_stem
from relpos.models import build_model, head_input


def measure(reps: int, width: float, patches: int, pairs: int, device: torch.device) -> dict:
    torch.manual_seed(0)
    model = build_model("caffenet", width).to(device, memory_format=torch.channels_last)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.5)
    inputs = torch.randn(patches, 3, 96, 96, device=device).contiguous(memory_format=torch.channels_last)
    index = torch.randint(0, patches, (pairs, 2), device=device)
    labels = torch.randint(0, 8, (pairs,), device=device)

    def logits(features, per_patch):
        return model.head.classify(features, index) if per_patch else model.head(head_input(features, index))

    def step(per_patch: bool) -> float:
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        start = time.perf_counter()
        loss = F.cross_entropy(logits(model.tower(inputs), per_patch), labels)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        return time.perf_counter() - start

    model.eval()
    with torch.no_grad():
        features = model.tower(inputs)
        concatenated, per_patch = logits(features, False), logits(features, True)
    model.train()
    for _ in range(3):  # warm-up: allocator, kernels, AdamW's state
        step(False), step(True)
    times = {"concatenated": [], "per_patch": []}
    for _ in range(reps):
        times["concatenated"].append(step(False))
        times["per_patch"].append(step(True))
    medians = {way: statistics.median(seconds) for way, seconds in times.items()}
    return {"reps": reps, "width": width, "patches": patches, "pairs": pairs,
            "median_seconds": medians, "min_seconds": {way: min(seconds) for way, seconds in times.items()},
            "per_patch_over_concatenated": medians["per_patch"] / medians["concatenated"],
            "max_abs_logit_difference": float((concatenated - per_patch).abs().max()),
            "max_abs_logit": float(concatenated.abs().max())}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--reps", type=int, default=15)
    parser.add_argument("--width", type=float, default=0.25)
    parser.add_argument("--patches", type=int, default=128)
    parser.add_argument("--pairs", type=int, default=645)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--out", default=str(Path(__file__).resolve().parent / "results"))
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    result = {"environment": environment(device),
              **measure(args.reps, args.width, args.patches, args.pairs, device)}
    medians = result["median_seconds"]
    print(f"fc7 on concatenated pairs: median {1e3 * medians['concatenated']:.1f} ms per step")
    print(f"fc7 per patch:             median {1e3 * medians['per_patch']:.1f} ms per step "
          f"({result['per_patch_over_concatenated']:.2f}x; {args.reps} alternating reps, {result['environment']['device']}, "
          f"{result['environment']['torch_threads']} threads)")
    print(f"largest logit difference {result['max_abs_logit_difference']:.1e} of {result['max_abs_logit']:.1e}")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    commit = (result["environment"]["commit"] or "nocommit")[:10]
    stem = unused_stem(out, f"fc7-per-patch-{device.type}-{result['environment']['date'][:10]}-{commit}", (".json",))
    (out / f"{stem}.json").write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {out / stem}.json")
    return 0


if __name__ == "__main__":
    sys.exit(main())
