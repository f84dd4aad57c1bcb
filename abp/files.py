"""Writing files so that a crash never leaves a truncated one under the final name, and
clearing away what a killed writer left behind.

A temporary file or folder is named `.<final name>.partial-<pid>-<random>`: the writer's
process id in the name tells a later run whether its writer is still alive, so the
leftovers of a killed write (SIGKILL gives no chance to clean up) are removed on the next
run without ever touching a write in progress.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

PARTIAL = re.compile(r"^\..+\.partial-(\d+)-[^/]+$")


def partial_prefix(path: Path) -> str:
    return f".{path.name}.partial-{os.getpid()}-"


@contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside `path` to write to; when the block succeeds it is renamed
    onto `path` (an atomic replace), otherwise it is removed."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, tmp = tempfile.mkstemp(dir=path.parent, prefix=partial_prefix(path))
    os.close(handle)
    try:
        yield Path(tmp)
        os.chmod(tmp, 0o644)  # mkstemp makes it private; the result is not
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, another user's
        return True
    return True


def remove_stale_partials(folder: str | os.PathLike, *, sole_writer: bool = False) -> list[Path]:
    """Remove the temporary files and folders in `folder` (not below it) whose writer is no
    longer running; return what was removed. `sole_writer`: the caller holds the folder
    (a lock), so every temporary there is stale, even one whose PID a new process reuses."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    removed = []
    for entry in folder.iterdir():
        match = PARTIAL.match(entry.name)
        if match is None or (not sole_writer and _alive(int(match.group(1)))):
            continue
        if entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry, ignore_errors=True)
        else:
            entry.unlink(missing_ok=True)
        removed.append(entry)
    return removed


def write_json(path: Path, content: Any) -> Path:
    """Strict JSON (a NaN or infinity is an error, never a bare `NaN` in the file), written
    atomically."""
    text = json.dumps(content, indent=2, allow_nan=False) + "\n"
    with atomic_path(path) as tmp:
        tmp.write_text(text)
    return path


def save_tensors(content: Any, path: Path) -> Path:
    """torch.save, atomically: tensors, or plain containers of them (what weights_only
    loading reads back)."""
    import torch  # here: the rest of this module needs no torch

    with atomic_path(path) as tmp:
        torch.save(content, tmp)
    return path
