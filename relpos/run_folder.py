"""A run folder that belongs to one run at a time and is never silently overwritten.

`claim_run_folder` takes an exclusive lock (held until the process exits or `release()`), then refuses a
folder that already holds files unless the run resumes it or the user said --overwrite, in which case only
the files (and folders) that command writes are removed, and only where the same command wrote before (the
lock file lists every command that wrote the folder): a user's own curves.png beside their photographs is never
taken for a run's.
Every command that writes a folder uses it.
"""

from __future__ import annotations

import fcntl
import logging
import os
import shutil
from pathlib import Path

from .regular_files import os_reason

log = logging.getLogger(__name__)

LOCK_NAME = ".relpos.lock"
RUN_FILES = ("checkpoint.pt", "metrics.jsonl", "skipped.jsonl", "summary.json", "curves.png", "permutations.json")


# what a training or evaluation folder holds beside its lock; relpos data photos' folders hold only the lock
OUTPUT_MARKERS = ("checkpoint.pt", "metrics.jsonl", "eval.json")


def is_output_folder(folder: Path) -> bool:
    """A folder a relpos run wrote its outputs to (its curves and figures are not photographs to train on)."""
    return (folder / LOCK_NAME).exists() and any((folder / name).exists() for name in OUTPUT_MARKERS)


class RunFolderError(ValueError):
    """The run folder cannot be used as asked (taken by another run, holds an earlier run, not a folder...)."""


class RunFolder:
    def __init__(self, path: Path, lock_fd: int):
        self.path, self._lock_fd = path, lock_fd

    def release(self) -> None:
        if self._lock_fd >= 0:
            os.close(self._lock_fd)  # closing the descriptor drops the flock
            self._lock_fd = -1


def claim_run_folder(path: str | os.PathLike, *, resume: bool = False, overwrite: bool = False,
                     run_files: tuple[str, ...] = RUN_FILES, can_resume: bool = True,
                     option: str = "--out", kind: str = "train") -> RunFolder:
    """Lock `path` for this process and check it may be written; `run_files` are what --overwrite removes, `kind`
    names the command (added to the lock file's list), and `option` is how the messages name the folder."""
    path = Path(path)
    if resume and overwrite:
        raise RunFolderError("--resume and --overwrite contradict each other: choose one")
    if path.exists() and not path.is_dir():
        raise RunFolderError(f"{option} {path} exists and is not a folder")
    try:
        path.mkdir(parents=True, exist_ok=True)
        lock_existed = (path / LOCK_NAME).exists()
        lock_fd = os.open(path / LOCK_NAME, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as error:
        raise RunFolderError(f"{option} {path} cannot be used: {os_reason(error)}") from error
    try:
        fcntl.flock(lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as error:
        os.close(lock_fd)
        raise RunFolderError(f"{option} {path} is in use by another relpos run (it holds {path / LOCK_NAME}); "
                             f"wait for it to finish or choose another {option}") from error
    folder = RunFolder(path, lock_fd)
    writers = {line.strip() for line in os.pread(lock_fd, 4096, 0).decode("utf-8", "replace").splitlines()} - {""}
    if lock_existed and not writers and any(os.path.lexists(path / name) for name in run_files
                                            if not name.endswith(".png")):
        writers.add(kind)  # a lock from before locks named their commands, beside this command's own files
    existing = sorted(p.name for p in path.iterdir() if p.name != LOCK_NAME)
    if existing and not resume:
        if not overwrite:
            folder.release()
            shown = ", ".join(existing[:5]) + (", ..." if len(existing) > 5 else "")
            advice = "pass --resume to continue that run, " if can_resume else "pass "
            raise RunFolderError(f"{option} {path} already holds files ({shown}): {advice}--overwrite to replace "
                                 f"them, or choose another {option}")
        ours = [name for name in run_files if os.path.lexists(path / name)]
        if ours and kind not in writers:
            folder.release()
            if writers:
                who = "the folder was written by " + " and ".join(f"`relpos {name}`" for name in sorted(writers))
            elif lock_existed:
                who = "an older relpos wrote the folder without recording which command"
            else:
                who = "no relpos command wrote the folder"
            raise RunFolderError(f"{option} {path} holds {', '.join(ours)}, not from an earlier `relpos {kind}` ({who}): "
                                 f"--overwrite replaces only that command's own files; move them away or choose "
                                 f"another {option}")
        for name in run_files:
            target = path / name
            if target.is_dir() and not target.is_symlink():
                shutil.rmtree(target)
            else:
                target.unlink(missing_ok=True)
        # Another command's output inside (relpos eval --out RUN/eval) is not this command's to delete, but it
        # describes the run being replaced: say so rather than leave it to pass for the new run's.
        for inner in sorted(p for p in path.iterdir() if p.is_dir() and not p.is_symlink() and is_output_folder(p)):
            log.warning("%s is kept: it holds the output of another relpos command on the run this one replaces "
                        "(delete it, or run that command again)", inner)
    if not os.access(path, os.W_OK):
        folder.release()
        raise RunFolderError(f"{option} {path} is not writable")
    try:  # every command that wrote here, one name per line
        os.ftruncate(lock_fd, 0)
        os.pwrite(lock_fd, "".join(f"{name}\n" for name in sorted(writers | {kind})).encode(), 0)
    except OSError as error:
        folder.release()
        raise RunFolderError(f"{option} {path} cannot be used: {os_reason(error)}") from error
    return folder
