"""What every source shares: finding files, the corrupt-file policy, clips that remember
where they came from, and the error type."""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, TypeVar

import torch

log = logging.getLogger("abp.sources")

T = TypeVar("T")
OnCorrupt = Literal["skip", "fail"]
SHOWN_NAMES = 3  # how many file names a summary line shows


class SourceError(ValueError):
    """Raw data that cannot be used; the message names the file or folder and what to do."""


class TooShort(ValueError):
    """A readable file with less than one clip in it (left out like a corrupt one, but
    reported in one summary line, since a folder may hold many)."""


@dataclass(frozen=True)
class Skipped:
    """A file left out because it could not be read (or was too short for one clip)."""

    path: str
    reason: str


@dataclass
class Clips:
    """Clips cut from source files, and where each one came from.

    Clip i is `x[i]`, cut from `files[file[i]]` starting at frame or sample `start[i]` (at
    the data set's rate), so a train/test split can keep every clip of a file, or of one
    stretch of a file, on one side.
    """

    x: torch.Tensor
    file: torch.Tensor  # N, int64
    start: torch.Tensor  # N, int64
    files: list[Path]
    root: Path  # the source folder (a single file's folder): names are relative to it
    rate: float  # frames or samples per second of the clips
    file_rates: list[float]  # each file's own rate, before resampling
    skipped: list[Skipped]
    mask: torch.Tensor | None = None  # bool, True = observed; only when sounds were padded
    padded: list[Path] = field(default_factory=list)  # files zero-padded to one clip
    multichannel: list[Path] = field(default_factory=list)  # files averaged to mono

    def names(self, files: list[Path] | None = None) -> list[str]:
        """Names relative to the source folder (of `files`, default all), never the
        absolute paths of the machine that prepared them."""
        return [
            f.relative_to(self.root).as_posix() if f.is_relative_to(self.root) else f.name
            for f in (self.files if files is None else files)
        ]


def gather_clips(
    per_file: list[tuple[Path, torch.Tensor]], *, stride: int, max_clips: int | None
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, list[int]]:
    """Concatenate each file's clips (clip k of a file starts at k·stride), keep the first
    `max_clips`, and return (x, file, start, the indices into per_file of the files that
    still have a clip)."""
    x = torch.cat([clips for _, clips in per_file])[:max_clips]
    file = torch.cat(
        [torch.full((len(c),), i, dtype=torch.int64) for i, (_, c) in enumerate(per_file)]
    )[:max_clips]
    start = torch.cat([torch.arange(len(c), dtype=torch.int64) * stride for _, c in per_file])[
        :max_clips
    ]
    used = sorted(set(file.tolist()))
    renumber = torch.full((len(per_file),), -1, dtype=torch.int64)
    renumber[used] = torch.arange(len(used))
    return x, renumber[file], start, used


def source_root(location: Path) -> Path:
    """The folder a source's file names are relative to."""
    location = Path(location)
    return location if location.is_dir() else location.parent


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
        raise SourceError(
            f"{location}: the folder has no {what} (looked for "
            f"{', '.join(sorted(suffixes))}, recursively)"
        )
    return files


def read_all(
    files: list[Path], read: Callable[[Path], T], *, on_corrupt: OnCorrupt, what: str
) -> tuple[list[tuple[Path, T]], list[Skipped]]:
    """Read every file; per the policy, skip (and record) or fail on one that cannot be read.

    A corrupt file is warned about on its own line; files too short for one clip are
    summed up in one line at the end."""
    good: list[tuple[Path, T]] = []
    skipped: list[Skipped] = []
    short: list[Skipped] = []
    for path in files:
        try:
            good.append((path, read(path)))
        except SourceError:
            raise
        except Exception as error:  # any decoder error means "this file is unreadable"
            reason = f"{type(error).__name__}: {error}"
            if on_corrupt == "fail":
                raise SourceError(
                    f"{path}: cannot read this {what} ({reason}); fix or remove "
                    "it, or set on_corrupt: skip to leave such files out"
                ) from error
            if isinstance(error, TooShort):
                short.append(Skipped(str(path), reason))
            else:
                log.warning("skipping %s: %s", path, reason)
            skipped.append(Skipped(str(path), reason))
    if short:
        names = ", ".join(Path(s.path).name for s in short[:SHOWN_NAMES])
        more = f" and {len(short) - SHOWN_NAMES} more" if len(short) > SHOWN_NAMES else ""
        log.warning(
            "skipping %d %s files too short for one clip: %s%s (first: %s)",
            len(short),
            what,
            names,
            more,
            short[0].reason,
        )
    if not good:
        raise SourceError(
            f"none of the {len(files)} {what} files could be read; first: "
            f"{skipped[0].path} ({skipped[0].reason})"
        )
    return good, skipped
