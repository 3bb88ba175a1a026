"""Checkpoints that are never half-written and never run code when read.

Writes go to a temp file that is fsynced, renamed over the target, then the folder is fsynced. Reads use
`torch.load(weights_only=True)`: a checkpoint is data (tensors, numbers, strings, lists, dicts), so a crafted
pickle cannot execute anything; RNG states are stored as tensors and plain types for that reason.
"""

from __future__ import annotations

import io
import os
import pickle
import sys
import zipfile
from pathlib import Path

import torch

from .regular_files import FileRefused, open_regular, os_reason

FORMAT = "relpos-checkpoint"
VERSION = 3  # 2: loadable with weights_only=True (no pickled numpy objects); 3: the pretext task ("pretext")
READABLE_VERSIONS = (2, 3)  # a version-2 checkpoint is a relative-position run


class CheckpointError(ValueError):
    """A checkpoint file that is missing, truncated, corrupted or not a relpos checkpoint."""


def atomic_write_bytes(path: str | os.PathLike, payload: bytes) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        with open(temporary, "wb") as handle:
            _write_all(handle, payload)
            handle.flush()
            os.fsync(handle.fileno())
    except BaseException:  # disk full, kill signal turned into an exception, ...: leave no partial temp file
        temporary.unlink(missing_ok=True)
        raise
    os.replace(temporary, path)  # atomic on POSIX: readers see the old file or the new one, never a mix
    directory = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(directory)
    finally:
        os.close(directory)


def _write_all(handle, payload: bytes) -> None:
    handle.write(payload)


def save_checkpoint(path: str | os.PathLike, state: dict) -> None:
    buffer = io.BytesIO()
    torch.save({"format": FORMAT, "version": VERSION, **state}, buffer)
    atomic_write_bytes(path, buffer.getvalue())


def load_checkpoint(path: str | os.PathLike, map_location="cpu") -> dict:
    """Load a relpos checkpoint, or raise CheckpointError saying what is wrong with the file."""
    path = Path(path)
    state = load_plain_data(path, "checkpoint", map_location)
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise CheckpointError(f"{path} is not a relpos checkpoint (no '{FORMAT}' marker)")
    if state.get("version") not in READABLE_VERSIONS:
        raise CheckpointError(f"{path} has checkpoint version {state.get('version')}, this relpos reads "
                              f"{' and '.join(map(str, READABLE_VERSIONS))}")
    for key in ("model", "step", "args"):
        if key not in state:
            raise CheckpointError(f"checkpoint {path} lacks '{key}'")
    check_weights(state["model"], f"checkpoint {path}")
    if not isinstance(state["args"], dict):
        raise CheckpointError(f"checkpoint {path}: 'args' must be the run's options (a dict), "
                              f"got {type(state['args']).__name__}")
    step = state["step"]
    if isinstance(step, bool) or not isinstance(step, int) or step < 0:
        raise CheckpointError(f"checkpoint {path}: 'step' must be a non-negative integer, got {step!r}")
    return state


def load_plain_data(path: Path, what: str, map_location="cpu"):
    """torch.load(weights_only=True) of a user's torch.save archive, every failure a CheckpointError naming `what`.

    torch.save stores every member of its zip archive uncompressed, side by side, so a member that is compressed,
    says it is larger than the bytes it occupies, or members declaring more bytes in all than the file holds (entries
    sharing one stored payload) are refused before torch.load: torch allocates each member's declared size and
    inflates a compressed one, so a few kilobytes could otherwise ask for gigabytes of memory.
    """
    try:  # one descriptor for the checks and the load: nothing can be swapped in between
        handle = open_regular(path, limit=sys.maxsize)  # a checkpoint may be any size; a FIFO never blocks here
    except FileNotFoundError as error:
        raise CheckpointError(f"{what} {path} does not exist") from error
    except (OSError, FileRefused) as error:
        raise CheckpointError(f"{what} {path} is unreadable: {os_reason(error)}") from error
    with handle:
        _check_members_stored(handle, path, what)
        handle.seek(0)
        try:
            return torch.load(handle, map_location=map_location, weights_only=True)
        except pickle.UnpicklingError as error:  # what weights_only raises for anything that is not plain data
            raise CheckpointError(
                f"{what} {path} holds objects other than tensors and plain data, so relpos will not load it "
                "(loading it could run code). relpos did not write it, or relpos 0.1 did, before checkpoint version "
                f"{VERSION}: retrain, or load it yourself only if you trust its origin."
            ) from error
        except (RuntimeError, EOFError, OSError, zipfile.BadZipFile, ValueError, KeyError, AttributeError,
                ModuleNotFoundError, TypeError) as error:
            raise CheckpointError(f"{what} {path} is unreadable (truncated or corrupted?): {error}") from error
        except Exception as error:  # noqa: BLE001 - unpickling foreign data can raise anything
            raise CheckpointError(f"{what} {path} is unreadable: {type(error).__name__}: {error}") from error


def _check_members_stored(handle, path: Path, what: str) -> None:
    try:
        size = os.fstat(handle.fileno()).st_size
        with zipfile.ZipFile(handle) as archive:  # closing the archive leaves a handle it was given open
            members = archive.infolist()
    except zipfile.BadZipFile as error:  # every torch.save since torch 1.6 is a zip archive
        raise CheckpointError(f"{what} {path} is unreadable: not a torch.save archive (truncated or corrupted?): "
                              f"{error}") from error
    except (OSError, ValueError) as error:
        raise CheckpointError(f"{what} {path} is unreadable (truncated or corrupted?): {error}") from error
    for member in members:
        if member.compress_type != zipfile.ZIP_STORED:
            raise CheckpointError(f"{what} {path}: member {member.filename!r} is compressed; torch.save never "
                                  "compresses, so this file was not written by it (refused: it could inflate to "
                                  "any size in memory)")
        if member.file_size != member.compress_size or member.header_offset + member.compress_size > size:
            raise CheckpointError(f"{what} {path}: member {member.filename!r} declares {member.file_size} bytes "
                                  f"but the file holds {size} (truncated or crafted)")
    declared = sum(member.file_size for member in members)
    if declared > size:  # members sharing the same stored bytes would each be allocated in full
        raise CheckpointError(f"{what} {path}: its members declare {declared} bytes in all but the file holds {size} "
                              "(truncated or crafted)")


def check_weights(weights, what: str) -> None:
    """A mapping of parameter names to tensors, every floating value finite: NaN weights would give NaN features
    that a probe silently turns into chance-level figures."""
    if not isinstance(weights, dict) or not weights or not all(
            isinstance(name, str) and isinstance(value, torch.Tensor) for name, value in weights.items()):
        raise CheckpointError(f"{what}: the weights must be a non-empty mapping of parameter names to tensors")
    broken = [name for name, value in weights.items() if value.is_floating_point() and not torch.isfinite(value).all()]
    if broken:
        raise CheckpointError(f"{what} has weights that are not finite (NaN or infinity) in {len(broken)} "
                              f"tensor(s), first {broken[0]}: the run diverged or the file was altered")


def numpy_rng_state() -> dict:
    """numpy's global RNG state as a tensor and plain numbers (a pickled ndarray would need weights_only=False)."""
    import numpy as np

    name, key, position, has_gauss, cached = np.random.get_state()
    return {"name": name, "key": torch.from_numpy(key.astype("int64")), "position": int(position),
            "has_gauss": int(has_gauss), "cached_gaussian": float(cached)}


def set_numpy_rng_state(state: dict) -> None:
    import numpy as np

    np.random.set_state((state["name"], state["key"].numpy().astype("uint32"), state["position"],
                         state["has_gauss"], state["cached_gaussian"]))


def python_rng_state() -> list:
    import random

    version, internal, gauss = random.getstate()
    return [version, list(internal), gauss]


def set_python_rng_state(state: list) -> None:
    import random

    version, internal, gauss = state
    random.setstate((version, tuple(internal), gauss))
