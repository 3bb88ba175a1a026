"""Checkpoints that are never half-written: write a temp file, fsync it, rename over the target, fsync the dir."""

from __future__ import annotations

import io
import os
import zipfile
from pathlib import Path

import torch

FORMAT = "relpos-checkpoint"
VERSION = 1


class CheckpointError(ValueError):
    """A checkpoint file that is missing, truncated, corrupted or not a relpos checkpoint."""


def atomic_write_bytes(path: str | os.PathLike, payload: bytes) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    with open(temporary, "wb") as handle:
        delay = float(os.environ.get("RELPOS_FAULT_CHECKPOINT_DELAY", "0"))
        if delay > 0:  # fault-injection hook for the kill tests: a long window in the middle of a write
            handle.write(payload[: len(payload) // 2])
            handle.flush()
            import time

            time.sleep(delay)
            payload = payload[len(payload) // 2 :]
        handle.write(payload)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(temporary, path)  # atomic on POSIX: readers see the old file or the new one, never a mix
    directory = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(directory)
    finally:
        os.close(directory)


def save_checkpoint(path: str | os.PathLike, state: dict) -> None:
    buffer = io.BytesIO()
    torch.save({"format": FORMAT, "version": VERSION, **state}, buffer)
    atomic_write_bytes(path, buffer.getvalue())


def load_checkpoint(path: str | os.PathLike, map_location="cpu") -> dict:
    """Load a relpos checkpoint, or raise CheckpointError saying what is wrong with the file."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist")
    try:
        state = torch.load(path, map_location=map_location, weights_only=False)
    except (RuntimeError, EOFError, OSError, zipfile.BadZipFile, ValueError, KeyError, AttributeError,
            ModuleNotFoundError, TypeError) as error:
        raise CheckpointError(f"checkpoint {path} is unreadable (truncated or corrupted?): {error}") from error
    except Exception as error:  # noqa: BLE001 - unpickling foreign data can raise anything
        raise CheckpointError(f"checkpoint {path} is unreadable: {type(error).__name__}: {error}") from error
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise CheckpointError(f"{path} is not a relpos checkpoint (no '{FORMAT}' marker)")
    if state.get("version") != VERSION:
        raise CheckpointError(f"{path} has checkpoint version {state.get('version')}, this relpos reads {VERSION}")
    for key in ("model", "step", "args"):
        if key not in state:
            raise CheckpointError(f"checkpoint {path} lacks '{key}'")
    return state
