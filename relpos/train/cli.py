"""`relpos train`: the argparse front of relpos.train.loop.train, built from TrainConfig's field metadata."""

from __future__ import annotations

import dataclasses

from ..cli_types import HelpFormatter
from ..metrics import format_pretext
from .config import TrainConfig


def add_parser(commands) -> None:
    parser = commands.add_parser(
        "train",
        help="pretrain a tower on a pretext task (relative patch position or jigsaw puzzles)",
        description="Pretrain a siamese network on a pretext task: relative patch positions (--task relpos) or "
        "jigsaw puzzles (--task jigsaw). Without --data it trains on the bundled photographs. Multi-GPU / "
        "multi-node: launch with torchrun (DDP; NCCL on GPU, gloo on CPU).",
        formatter_class=HelpFormatter,
    )
    for field in dataclasses.fields(TrainConfig):
        if field.metadata["hidden"]:
            continue
        flag = "--" + field.name.replace("_", "-")
        if isinstance(field.default, bool):
            parser.add_argument(flag, action="store_true", help=field.metadata["help"])
        else:
            kind = {int: int, float: float}.get(type(field.default), str)
            parser.add_argument(flag, type=kind, default=field.default, choices=field.metadata["choices"],
                                help=field.metadata["help"])
    parser.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bar")
    parser.set_defaults(run=run)


def run(args) -> int:
    from .loop import train

    names = {field.name for field in dataclasses.fields(TrainConfig)}
    config = TrainConfig(**{k: v for k, v in vars(args).items() if k in names})
    summary = train(config)
    if not summary.get("interrupted") and summary.get("held_out"):
        unit = "puzzles" if summary.get("task") == "jigsaw" else "pairs"
        print(f"held-out pretext {format_pretext(summary['held_out'], unit)} after {summary['step']} steps")
    return 0
