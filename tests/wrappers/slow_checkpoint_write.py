"""`relpos` with a checkpoint write that pauses half-way, so a test can SIGKILL it mid-write.

Usage: python slow_checkpoint_write.py SECONDS relpos-arguments...  (a test-only wrapper: the pause is
monkeypatched in here, never configured in relpos itself)
"""

import sys
import time

import relpos.checkpoint
from relpos.cli import main


PAUSE_SECONDS = float(sys.argv[1])


def _write_slowly(handle, payload: bytes) -> None:
    handle.write(payload[: len(payload) // 2])
    handle.flush()
    time.sleep(PAUSE_SECONDS)
    handle.write(payload[len(payload) // 2:])


relpos.checkpoint._write_all = _write_slowly
sys.argv = ["relpos", *sys.argv[2:]]
sys.exit(main())
