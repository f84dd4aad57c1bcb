"""What every source shares: finding files, the corrupt-file policy, and its error type."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Literal, TypeVar

log = logging.getLogger("abp.sources")

T = TypeVar("T")
OnCorrupt = Literal["skip", "fail"]


class SourceError(ValueError):
    """Raw data that cannot be used; the message names the file or folder and what to do."""


@dataclass(frozen=True)
class Skipped:
    """A file left out because it could not be read."""

    path: str
    reason: str


def find_files(location: Path, suffixes: Iterable[str], what: str) -> list[Path]:
    """A file itself, or every file under a folder (recursively) with one of the suffixes,
    in sorted order so that every run sees the same sequence."""
    location = Path(location)
    suffixes = {s.lower() for s in suffixes}
    if location.is_file():
        return [location]
    if not location.is_dir():
        raise SourceError(f"{location}: no such file or folder (expected {what})")
    files = sorted(p for p in location.rglob("*") if p.is_file() and p.suffix.lower() in suffixes)
    if not files:
        raise SourceError(f"{location}: the folder has no {what} (looked for "
                          f"{', '.join(sorted(suffixes))}, recursively)")
    return files


def read_all(files: list[Path], read: Callable[[Path], T], *, on_corrupt: OnCorrupt,
             what: str) -> tuple[list[tuple[Path, T]], list[Skipped]]:
    """Read every file; per the policy, skip (and record) or fail on one that cannot be read."""
    good: list[tuple[Path, T]] = []
    skipped: list[Skipped] = []
    for path in files:
        try:
            good.append((path, read(path)))
        except SourceError:
            raise
        except Exception as error:  # any decoder error means "this file is unreadable"
            reason = f"{type(error).__name__}: {error}"
            if on_corrupt == "fail":
                raise SourceError(f"{path}: cannot read this {what} ({reason}); fix or remove "
                                  "it, or set on_corrupt: skip to leave such files out") from error
            log.warning("skipping %s: %s", path, reason)
            skipped.append(Skipped(str(path), reason))
    if not good:
        raise SourceError(f"none of the {len(files)} {what} files could be read; first: "
                          f"{skipped[0].path} ({skipped[0].reason})")
    return good, skipped
