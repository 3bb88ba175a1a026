"""Reading a user's file without trusting it: regular files only, never blocking, never past a size limit.

No image or tensor code here, so the run folder, the CLI and the data package can all use it without an import circle.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator
from typing import BinaryIO

# No photograph needs more bytes than this; a larger file is refused before it is read (both decode paths).
MAX_FILE_BYTES = 256 * 1024 * 1024


class FileRefused(ValueError):
    """A path that is not read: not a regular file (a FIFO would block the reader, a device never end, a folder is no
    picture) or larger than its limit. The message is the reason alone; the caller names the file."""


def os_reason(error: Exception) -> str:
    """An error's reason without the path (the message names the file beside it): an OSError's strerror."""
    return error.strerror if isinstance(error, OSError) and error.strerror else str(error)


def open_regular(path: str | os.PathLike, limit: int | None = None) -> BinaryIO:
    """`path` opened for reading if it is a regular file of at most `limit` bytes (MAX_FILE_BYTES), else FileRefused
    (OSError when it cannot be opened). Opened without blocking and checked on the open descriptor: a FIFO does not
    hang the open, and nothing can be swapped in between the check and the read."""
    limit = MAX_FILE_BYTES if limit is None else limit
    if "\0" in os.fsdecode(path):  # os.open would raise a bare ValueError
        raise FileRefused("a name with a NUL byte is no file name")
    descriptor = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))
    try:
        info = os.fstat(descriptor)
        if not stat.S_ISREG(info.st_mode):
            raise FileRefused("not a regular file")
        if info.st_size > limit:
            raise FileRefused(f"{info.st_size} bytes is too large a file (limit {limit})")
    except BaseException:
        os.close(descriptor)
        raise
    return os.fdopen(descriptor, "rb")


def iter_regular(path: str | os.PathLike, limit: int | None = None, chunk_bytes: int | None = 1 << 20
                 ) -> Iterator[bytes]:
    """The bytes of `path` in chunks of at most `chunk_bytes` (a large file is never held whole by a reader that
    streams), checked as open_regular does and read no further than `limit`: a file may grow while it is read.
    `chunk_bytes` None: the whole file in one read of its size plus one byte (to see it grow), the rest only if it did;
    not one read of `limit` bytes, which would reserve the limit's memory for a small file."""
    limit = MAX_FILE_BYTES if limit is None else limit
    with open_regular(path, limit) as handle:
        total, want = 0, chunk_bytes or os.fstat(handle.fileno()).st_size + 1
        while chunk := handle.read(min(want, limit + 1 - total)):
            total += len(chunk)
            if total > limit:
                raise FileRefused(f"more than {limit} bytes is too large a file (limit {limit}; it grew while read)")
            yield chunk
            want = chunk_bytes or limit + 1 - total


def read_regular(path: str | os.PathLike, limit: int | None = None) -> bytes:
    """The bytes of `path`, checked and bounded as iter_regular does, in one read unless the file grew (joining a
    single chunk copies nothing)."""
    return b"".join(iter_regular(path, limit, chunk_bytes=None))
