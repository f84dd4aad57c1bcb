"""One writer per experiment folder.

Two trainings of the same experiment started by hand (not through `dvc repro`, which has its
own lock) would otherwise write the same models/<experiment>/ and the last to finish would
silently win. The lock is an advisory `flock` on models/<experiment>/.lock: the kernel drops
it when its holder dies, however it dies (kill -9 included), so a lock left by a dead
process is simply taken over. The file names the holder (PID, host, start time, command) for
the message a second writer gets.
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import socket
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

LOCK_NAME = ".lock"
log = logging.getLogger(__name__)


class FolderLocked(RuntimeError):
    """Another live process holds the folder."""


def _holder(text: str) -> dict:
    try:
        return json.loads(text)
    except ValueError:
        return {}


def _describe(holder: dict) -> str:
    if not holder:
        return "another process"
    started = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(holder.get("since", 0)))
    return (
        f"PID {holder.get('pid')} on {holder.get('host')} (since {started}: "
        f"{holder.get('command', '?')})"
    )


@contextmanager
def exclusive(folder: Path, what: str) -> Iterator[None]:
    """Hold `folder` for the duration, or fail at once with FolderLocked naming the holder."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    # Opened without truncation: the current holder's details must survive our attempt.
    with open(folder / LOCK_NAME, "a+") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            holder = _describe(_holder(handle.read()))
            raise FolderLocked(
                f"{folder} is in use: {what} is already running in {holder}. "
                "Wait for it to finish, or stop it, then run again."
            ) from None
        handle.seek(0)
        previous = _holder(handle.read())
        if previous and previous.get("pid") != os.getpid():
            log.info(
                "%s: taking over the lock left by %s, which is no longer running",
                folder,
                _describe(previous),
            )
        handle.seek(0)
        handle.truncate()
        json.dump(
            {
                "pid": os.getpid(),
                "host": socket.gethostname(),
                "since": time.time(),
                "command": " ".join([Path(sys.argv[0]).name, *sys.argv[1:]]),
            },
            handle,
        )
        handle.flush()
        try:
            yield
        finally:
            handle.seek(0)
            handle.truncate()  # the file stays: removing it would let a waiter lock a stale inode
            fcntl.flock(handle, fcntl.LOCK_UN)
