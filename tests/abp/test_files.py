"""Atomic writes and the clean-up of what a killed writer left behind."""

import os
import subprocess
import sys

import pytest

from abp.files import atomic_path, remove_stale_partials


def test_a_failed_write_leaves_neither_a_file_nor_a_temporary(tmp_path):
    target = tmp_path / "out" / "file.txt"
    with pytest.raises(RuntimeError):
        with atomic_path(target) as tmp:
            tmp.write_text("half")
            raise RuntimeError("disk full")
    assert list(target.parent.iterdir()) == []
    with atomic_path(target) as tmp:
        assert tmp.name.startswith(f".file.txt.partial-{os.getpid()}-")
        tmp.write_text("whole")
    assert target.read_text() == "whole" and [p.name for p in target.parent.iterdir()] == ["file.txt"]


def test_only_the_temporaries_of_dead_writers_are_removed(tmp_path):
    # A writer that dies with SIGKILL mid-write: its temporary stays behind.
    code = ("import os, sys, time\nfrom abp.files import atomic_path\n"
            "with atomic_path(sys.argv[1]) as tmp:\n"
            "    tmp.write_text('half'); os.kill(os.getpid(), 9)\n")
    subprocess.run([sys.executable, "-c", code, str(tmp_path / "last.pt")], check=False)
    dead = [p for p in tmp_path.iterdir() if p.name.startswith(".last.pt.partial-")]
    assert len(dead) == 1 and not (tmp_path / "last.pt").exists()
    (tmp_path / "keep.txt").write_text("not a temporary")
    (tmp_path / ".folder.partial-1-x").mkdir()  # PID 1 is alive: a write in progress
    with atomic_path(tmp_path / "mine.txt") as mine:  # ours, alive, in progress
        assert remove_stale_partials(tmp_path) == dead
        assert mine.exists() and (tmp_path / ".folder.partial-1-x").is_dir()
    assert sorted(p.name for p in tmp_path.iterdir()) == [".folder.partial-1-x", "keep.txt",
                                                          "mine.txt"]
