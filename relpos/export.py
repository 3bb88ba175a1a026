"""Export the trained tower alone (safetensors + its architecture), for use in other projects."""

from __future__ import annotations

import io
import json
import os
from pathlib import Path

import torch

from .checkpoint import CheckpointError, atomic_write_bytes, check_weights, load_checkpoint, load_plain_data
from .models import build_tower, check_fits


EXPORT_SUFFIXES = (".safetensors", ".pt")


def export_tower(checkpoint: str | os.PathLike, out: str | os.PathLike, overwrite: bool = False) -> Path:
    """Write the tower's weights from a training checkpoint to `out` (.safetensors, or .pt for a state dict).

    An existing `out` is replaced only with `overwrite`; the file is written atomically (a reader sees the old
    export or the new one, never a partial file)."""
    out = Path(out)
    if out.suffix not in EXPORT_SUFFIXES:
        raise ValueError(f"--out must end in .safetensors or .pt, got {str(out)!r}")
    if out.is_dir():
        raise ValueError(f"--out {out} is a folder; give a file name ending in .safetensors or .pt")
    if out.exists() and not overwrite:
        raise ValueError(f"--out {out} already exists: pass --overwrite to replace it, or choose another --out")
    state = load_checkpoint(checkpoint)
    tower = {k[len("tower."):]: v.contiguous() for k, v in state["model"].items() if k.startswith("tower.")}
    if not tower:
        raise CheckpointError(f"{checkpoint} holds no tower weights")
    try:
        meta = {"arch": str(state["args"]["arch"]), "width": str(float(state["args"]["width"])),
                "step": str(state["step"]), "patch": str(int(state["args"]["patch"]))}
    except (KeyError, TypeError, ValueError) as error:
        raise CheckpointError(f"{checkpoint}: its options lack the tower's architecture ({error})") from error
    try:  # an export that load_tower would refuse is not written
        check_fits(lambda: build_tower(meta["arch"], float(meta["width"]), int(meta["patch"])), tower)
    except (TypeError, ValueError, RuntimeError) as error:
        raise CheckpointError(f"{checkpoint}: its tower weights do not fit its own options: {error}") from error
    if out.suffix == ".safetensors":
        from safetensors.torch import save

        payload = save(tower, metadata=meta)
    else:
        buffer = io.BytesIO()
        torch.save({"tower": tower, "meta": meta}, buffer)
        payload = buffer.getvalue()
    atomic_write_bytes(out, payload)
    return out


def load_tower(path: str | os.PathLike) -> torch.nn.Module:
    """Rebuild an exported tower (eval mode) from a .safetensors or .pt export."""
    path = Path(path)
    if path.suffix == ".safetensors":
        from safetensors import safe_open
        from safetensors.torch import load_file

        with safe_open(str(path), "pt") as handle:
            meta = handle.metadata()
        weights = load_file(str(path))
    else:
        blob = load_plain_data(path, "exported tower")
        if not isinstance(blob, dict) or "meta" not in blob or "tower" not in blob:
            hint = " (a training checkpoint: load it with relpos.evaluation.load_towers, or run relpos export)" \
                if isinstance(blob, dict) and blob.get("format") == "relpos-checkpoint" else ""
            raise CheckpointError(f"{path} is not a tower exported by relpos export{hint}")
        meta, weights = blob["meta"], blob["tower"]
    check_weights(weights, f"exported tower {path}")
    try:
        tower = build_tower(meta["arch"], float(meta["width"]), int(meta.get("patch", 96)))
        tower.load_state_dict(weights)
    except (KeyError, TypeError, ValueError, RuntimeError) as error:
        raise CheckpointError(f"exported tower {path} does not fit its own architecture: {error}") from error
    return tower.eval()


def add_parser(commands) -> None:
    parser = commands.add_parser("export", help="save the trained tower alone (safetensors) for other projects",
                                 description="Extract the tower's weights from a training checkpoint.")
    parser.add_argument("checkpoint", help="training checkpoint (OUT/checkpoint.pt)")
    parser.add_argument("--out", default="tower.safetensors", help="output file, .safetensors or .pt "
                        "(default: %(default)s)")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing --out file")
    parser.set_defaults(run=_run)


def _run(args) -> int:
    path = export_tower(args.checkpoint, args.out, overwrite=args.overwrite)
    print(json.dumps({"exported": str(path)}))
    return 0
