"""One writer per experiment folder: a second one fails at once naming the holder; the
lock of a dead process is taken over."""

import json
import subprocess
import sys

import pytest

from flows.locks import LOCK_NAME, FolderLocked, exclusive

HOLD = """
import sys, time
from pathlib import Path
from flows.locks import exclusive
with exclusive(Path(sys.argv[1]), "a training of tiny"):
    print("locked", flush=True)
    time.sleep(60)
"""


def test_a_second_writer_fails_at_once_naming_the_holder(tmp_path):
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLD, str(tmp_path)], stdout=subprocess.PIPE, text=True
    )
    try:
        assert holder.stdout.readline().strip() == "locked"
        with (
            pytest.raises(
                FolderLocked, match=f"a training of tiny is already running in PID {holder.pid} on "
            ),
            exclusive(tmp_path, "a training of tiny"),
        ):
            pass
    finally:
        holder.kill()  # SIGKILL: no clean-up runs, the kernel drops the lock
        holder.wait()
    assert json.loads((tmp_path / LOCK_NAME).read_text())["pid"] == holder.pid  # stale
    with exclusive(tmp_path, "a training of tiny"):  # taken over
        assert json.loads((tmp_path / LOCK_NAME).read_text())["pid"] != holder.pid
    assert (tmp_path / LOCK_NAME).read_text() == ""  # released
