"""The `relpos` command-line tool: show, train, eval, bench, export."""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from .backends import BACKENDS
from .cli_types import bounded_int
from .config import COLOR_MODES
from .pretext import DEFAULT_PERMUTATIONS, TASKS
from .pretext.jigsaw import MAX_PERMUTATIONS
from .regular_files import os_reason

EPILOG = "Run `relpos COMMAND --help` for the options of a command."


def _show(args: argparse.Namespace) -> int:
    import torch

    from . import PatchConfig, extract_patches
    from .data import bundled_photos, load_rgb
    from .pretext import build_pretext
    from .show import draw_grids

    pretext = build_pretext(args.task, PatchConfig.scaled(patch=args.patch, gap=args.gap, jitter=args.jitter),
                            args.permutations)
    items = f"{pretext.item_name}s"
    out = Path(args.out or f"{items}.png")
    grids = out.with_name(f"{out.stem}_grids{out.suffix}")
    existing = [str(p) for p in (out, grids) if p.exists()]
    if existing and not args.overwrite:  # no run overwrites another's pictures
        raise ValueError(f"{' and '.join(existing)} already exist{'s' if len(existing) == 1 else ''}: pass "
                         "--overwrite to replace them, or choose another --out")
    path = Path(args.image) if args.image else bundled_photos()[0]
    image = load_rgb(path)
    try:
        plan = pretext.draw([image.shape[:2]], seed=args.seed, on_small="raise")
    except ValueError as error:  # the sampler knows the batch, not the file: "image 0 (10x10) ..."
        raise ValueError(f"{path}: {error}") from error
    patches = extract_patches([image], plan, color=args.color, backend=args.backend)
    draw_grids(image, plan, 0, str(grids))
    pretext.draw_examples(patches, plan, str(out), count=args.pairs, seed=args.seed)
    print(f"{path.name}: {plan.num_patches} patches, {plan.num_pairs} {items}")
    print(f"wrote {grids} (sampled grids) and {out} (augmented {items})")
    del torch
    return 0


def _add_show(commands) -> None:
    parser = commands.add_parser(
        "show",
        help="draw the sampled grids and a sheet of augmented pairs (or jigsaw puzzles) for one image",
        description="Draw a pretext task's plan on one image (a bundled photo by default), render the patches "
        "with the fused op and draw them, so the pipeline can be checked by eye: pairs with their relative "
        "position (--task relpos) or puzzles with their permutation (--task jigsaw).",
    )
    parser.add_argument("image", nargs="?", help="image file (default: a bundled photograph)")
    parser.add_argument("--task", default="relpos", choices=tuple(TASKS), help="pretext task (default: %(default)s)")
    parser.add_argument("--permutations", type=bounded_int(2, MAX_PERMUTATIONS), default=DEFAULT_PERMUTATIONS,
                        help="jigsaw: number of permutations (default: %(default)s)")
    parser.add_argument("--out", default=None, help="PNG of augmented pairs or puzzles; grids go to "
                        "<out>_grids.png (default: pairs.png or puzzles.png)")
    parser.add_argument("--overwrite", action="store_true", help="replace pictures an earlier run wrote at --out")
    parser.add_argument("--color", default="drop", choices=COLOR_MODES, help="colour handling (default: %(default)s)")
    parser.add_argument("--backend", default="auto", choices=BACKENDS, help="fused op backend (default: %(default)s)")
    parser.add_argument("--pairs", "--puzzles", type=bounded_int(1, 256), default=16,
                        help="pairs or puzzles on the sheet (default: %(default)s)")
    parser.add_argument("--patch", type=bounded_int(8, 1024), default=96, help="patch side in pixels (default: %(default)s)")
    parser.add_argument("--gap", type=bounded_int(0, 4096), default=48, help="gap between grid cells (default: %(default)s)")
    parser.add_argument("--jitter", type=bounded_int(0, 4096), default=7, help="max corner jitter (default: %(default)s)")
    parser.add_argument("--seed", type=bounded_int(0, 2**62), default=0, help="random seed (default: %(default)s)")
    parser.set_defaults(run=_show)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="relpos",
        description="Relative-patch-position self-supervised pretraining (Doersch et al., ICCV 2015) with fused "
        "Triton / CUDA / C++ patch kernels.",
        epilog=EPILOG,
    )
    from . import __version__

    parser.add_argument("--version", action="version", version=f"relpos {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    commands = parser.add_subparsers(title="commands", metavar="COMMAND", dest="command")
    _add_show(commands)
    for module in ("train.cli", "evaluation", "bench", "export", "data_cli"):
        try:
            add = __import__(f"relpos.{module}", fromlist=["add_parser"]).add_parser
        except ModuleNotFoundError:
            continue
        add(commands)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO, format="%(asctime)s %(levelname)s %(message)s",
                        datefmt="%H:%M:%S")
    if not hasattr(args, "run"):
        parser.print_help()
        return 2
    command = f"relpos {args.command}" if getattr(args, "command", None) else "relpos"
    try:
        return int(args.run(args) or 0)
    except (ValueError, TypeError, RuntimeError) as error:
        print(f"{command}: error: {error}", file=sys.stderr)
        return 1
    except OSError as error:  # disk full, read-only or missing folder, permissions: one line, no traceback
        where = f" ({error.filename})" if error.filename else ""
        print(f"{command}: error: {os_reason(error)}{where}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"{command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
