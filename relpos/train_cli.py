"""`relpos train`: argparse front of relpos.training.train."""

from __future__ import annotations

import argparse
import dataclasses

from .metrics import format_pretext
from .training import TrainConfig

HELP = {
    "data": "folder of images (searched recursively: JPEG, PNG, WebP, ...) or one file; default: the bundled "
            "photographs",
    "out": "output folder: checkpoint, metrics.jsonl, curves.png, skipped.jsonl, summary.json",
    "steps": "optimisation steps",
    "batch": "patches per step (whole images are taken until about this many patches)",
    "lr": "peak learning rate (AdamW)",
    "weight_decay": "AdamW weight decay",
    "warmup": "linear warm-up steps",
    "schedule": "learning-rate schedule after warm-up: cosine or constant",
    "arch": "tower: caffenet (the paper's) or resnet18",
    "width": "channel multiplier of every layer (1.0 = the paper's sizes)",
    "color": "colour handling: drop, project or none",
    "backend": "fused patch op: auto, cpu, cuda, triton or reference",
    "precision": "auto (bf16 autocast on GPU, fp32 on CPU), bf16 or fp32",
    "compile": "torch.compile the step: auto (on for CUDA), on or off",
    "device": "auto, cpu, cuda or cuda:N",
    "deterministic": "deterministic algorithms, for bit-exact reruns and resumes: auto (on for CPU), on or off",
    "seed": "random seed (model init, batches, plans, noise)",
    "workers": "DataLoader worker processes decoding images",
    "resident": "decode every image once and keep them on the device (no host work per step)",
    "decode": "pil: decode in DataLoader workers; gpu: workers read bytes, JPEGs are decoded on the GPU in "
              "batches (torchvision + nvJPEG; other formats fall back to PIL)",
    "holdout": "fraction of images held out for pretext accuracy",
    "eval_every": "evaluate held-out pretext accuracy every N steps",
    "eval_plans": "random grids per held-out image per evaluation",
    "checkpoint_every": "write the checkpoint every N steps (atomically)",
    "log_every": "log metrics every N steps",
    "resume": "continue the run in OUT from OUT/checkpoint.pt (every option that changes what is computed must "
              "match the checkpoint)",
    "overwrite": "replace an earlier run's files in OUT (without it, a non-empty OUT is refused)",
    "max_nonfinite": "stop after this many non-finite losses in a row",
    "patch": "patch side in pixels",
    "gap": "gap between grid cells in pixels",
    "jitter": "maximum corner jitter in pixels",
    "min_pixels": "each image is resized to a random pixel count in [min-pixels, max-pixels]",
    "max_pixels": "upper end of the resize range",
    "stop_after": "stop after this many steps, checkpoint saved, as if interrupted (-1: never)",
}
_HIDDEN = {"progress"}
CHOICES = {
    "schedule": ("cosine", "constant"),
    "arch": ("caffenet", "resnet18"),
    "color": ("drop", "project", "none"),
    "backend": ("auto", "cpu", "cuda", "triton", "reference"),
    "precision": ("auto", "bf16", "fp32"),
    "compile": ("auto", "on", "off"),
    "deterministic": ("auto", "on", "off"),
    "decode": ("pil", "gpu"),
}


def add_parser(commands) -> None:
    parser = commands.add_parser(
        "train",
        help="pretrain a tower on the relative-patch-position task",
        description="Pretrain a siamese network on relative patch positions. Without --data it trains on the "
        "bundled photographs. Multi-GPU / multi-node: launch with torchrun (DDP; NCCL on GPU, gloo on CPU).",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    defaults = TrainConfig()
    for field in dataclasses.fields(TrainConfig):
        flag = "--" + field.name.replace("_", "-")
        value = getattr(defaults, field.name)
        if field.name in _HIDDEN:
            continue
        if isinstance(value, bool):
            parser.add_argument(flag, action="store_true", help=HELP[field.name])
        else:
            kind = {int: int, float: float}.get(type(value), str)
            parser.add_argument(flag, type=kind, default=value, choices=CHOICES.get(field.name), help=HELP[field.name])
    parser.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bar")
    parser.set_defaults(run=run)


def run(args) -> int:
    from .training import train

    names = {field.name for field in dataclasses.fields(TrainConfig)}
    config = TrainConfig(**{k: v for k, v in vars(args).items() if k in names})
    summary = train(config)
    if not summary.get("interrupted") and summary.get("held_out"):
        print(f"held-out pretext {format_pretext(summary['held_out'])} after {summary['step']} steps")
    return 0
