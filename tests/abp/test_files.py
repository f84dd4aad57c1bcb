"""Atomic writes and the clean-up of what a killed writer left behind."""

import os
import subprocess
import sys

import pytest

from abp.files import atomic_path, remove_stale_partials


def write_then_fail(target, text: str, error: BaseException) -> None:
    """Write `text` through atomic_path, then fail with `error` before the block ends; on
    the way, check that the target is not touched while the write is under way."""
    before = target.read_text() if target.exists() else None
    with atomic_path(target) as tmp:
        assert tmp.parent == target.parent  # beside it: the rename stays on one disk
        tmp.write_text(text)
        assert (target.read_text() if target.exists() else None) == before
        raise error


def test_a_failed_write_leaves_neither_a_file_nor_a_temporary(tmp_path):
    target = tmp_path / "out" / "file.txt"
    with pytest.raises(RuntimeError, match="disk full"):
        write_then_fail(target, "half", RuntimeError("disk full"))
    assert list(target.parent.iterdir()) == []
    with atomic_path(target) as tmp:
        assert tmp.name.startswith(f".file.txt.partial-{os.getpid()}-")
        tmp.write_text("whole")
    assert target.read_text() == "whole"
    assert [p.name for p in target.parent.iterdir()] == ["file.txt"]


def test_only_the_temporaries_of_dead_writers_are_removed(tmp_path):
    # A writer that dies with SIGKILL mid-write: its temporary stays behind.
    code = (
        "import os, sys, time\nfrom abp.files import atomic_path\n"
        "with atomic_path(sys.argv[1]) as tmp:\n"
        "    tmp.write_text('half'); os.kill(os.getpid(), 9)\n"
    )
    subprocess.run([sys.executable, "-c", code, str(tmp_path / "last.pt")], check=False)
    dead = [p for p in tmp_path.iterdir() if p.name.startswith(".last.pt.partial-")]
    assert len(dead) == 1 and not (tmp_path / "last.pt").exists()
    (tmp_path / "keep.txt").write_text("not a temporary")
    (tmp_path / ".folder.partial-1-x").mkdir()  # PID 1 is alive: a write in progress
    with atomic_path(tmp_path / "mine.txt") as mine:  # ours, alive, in progress
        assert remove_stale_partials(tmp_path) == dead
        assert mine.exists() and (tmp_path / ".folder.partial-1-x").is_dir()
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        ".folder.partial-1-x",
        "keep.txt",
        "mine.txt",
    ]


def test_a_failed_rewrite_keeps_the_old_file_whole(tmp_path):
    target = tmp_path / "model.pt"
    target.write_text("old, complete")
    with pytest.raises(OSError, match="disk full"):
        write_then_fail(target, "new, trunc", OSError("disk full"))
    assert target.read_text() == "old, complete"
    assert [p.name for p in tmp_path.iterdir()] == ["model.pt"]


def test_an_interrupted_write_is_cleaned_up_too(tmp_path):
    # Ctrl-C raises KeyboardInterrupt, which is no Exception: it must not leave a temporary.
    target = tmp_path / "metrics.json"
    target.write_text("{}")
    with pytest.raises(KeyboardInterrupt):
        write_then_fail(target, '{"half":', KeyboardInterrupt())
    assert target.read_text() == "{}" and [p.name for p in tmp_path.iterdir()] == ["metrics.json"]


def test_a_successful_rewrite_replaces_the_file_readable_by_all(tmp_path):
    target = tmp_path / "report.txt"
    target.write_text("old")
    target.chmod(0o600)
    with atomic_path(target) as tmp:
        tmp.write_text("new")
    assert target.read_text() == "new"
    assert target.stat().st_mode & 0o777 == 0o644  # not the private mode of a temporary
    assert [p.name for p in tmp_path.iterdir()] == ["report.txt"]


def dead_pid() -> int:
    """The id of a process that has ended (and been reaped)."""
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


def test_a_dead_writers_folder_is_removed_with_its_contents_but_nothing_else(tmp_path):
    pid = dead_pid()
    stale = tmp_path / f".checkpoints.partial-{pid}-abc"
    (stale / "inner").mkdir(parents=True)
    (stale / "inner" / "weights.pt").write_text("half")
    (tmp_path / f"checkpoints.partial-{pid}-abc").write_text("no leading dot: not ours")
    (tmp_path / ".checkpoints.partial-xyz-abc").write_text("no process id: not ours")
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / f".deep.partial-{pid}-abc").write_text("below the folder: not looked at")
    assert remove_stale_partials(tmp_path) == [stale]
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        ".checkpoints.partial-xyz-abc",
        f"checkpoints.partial-{pid}-abc",
        "sub",
    ]
    assert (tmp_path / "sub" / f".deep.partial-{pid}-abc").exists()


def test_a_stale_link_is_removed_without_following_it(tmp_path):
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / "data.npz").write_text("precious")
    folder = tmp_path / "runs"
    folder.mkdir()
    link = folder / f".run.partial-{dead_pid()}-abc"
    link.symlink_to(elsewhere, target_is_directory=True)
    assert remove_stale_partials(folder) == [link]
    assert not os.path.lexists(link)
    assert (elsewhere / "data.npz").read_text() == "precious"


def test_a_sole_writer_removes_every_temporary_even_of_live_processes(tmp_path):
    # Under the folder's lock no one else writes there, so a live PID is a reused one.
    (tmp_path / f".a.partial-{os.getpid()}-x").write_text("ours, abandoned")
    (tmp_path / ".b.partial-1-y").mkdir()  # PID 1 is alive
    (tmp_path / "c.txt").write_text("not a temporary")
    assert remove_stale_partials(tmp_path) == []  # without the lock: both writers look alive
    removed = remove_stale_partials(tmp_path, sole_writer=True)
    assert sorted(p.name for p in removed) == [f".a.partial-{os.getpid()}-x", ".b.partial-1-y"]
    assert [p.name for p in tmp_path.iterdir()] == ["c.txt"]
    assert remove_stale_partials(tmp_path / "missing") == []


def test_json_is_strict_and_a_refused_value_leaves_the_old_file(tmp_path):
    """A NaN is an error, never a bare `NaN` in a metrics file DVC would cache as valid."""
    import json
    import math

    import torch

    from abp.files import save_tensors, write_json

    path = write_json(tmp_path / "metrics.json", {"mae": 0.25})
    with pytest.raises(ValueError, match="Out of range float values"):
        write_json(path, {"mae": math.nan})
    assert json.loads(path.read_text()) == {"mae": 0.25}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["metrics.json"]
    tensors = {"z": torch.arange(6.0).view(2, 3)}
    loaded = torch.load(save_tensors(tensors, tmp_path / "bank.pt"), weights_only=True)
    assert torch.equal(loaded["z"], tensors["z"])
