"""Video: files decoded with PyAV into frames, grouped into clips N×C×T×H×W (or single
frames N×C×H×W when the clip length is 1).

Frame rates: every clip of a data set has one rate, the data set's `fps`, or, when none is
set, the first readable file's own rate. A file at another rate is resampled to it in time
by taking, for each output time 0, 1/fps, 2/fps, …, the decoded frame nearest to it by
timestamp (frames are dropped when the file is faster, repeated when it is slower); files
already at the rate keep every frame. `frame_step` then keeps every k-th of those frames.

Colour: `channels: 1` converts each frame to PIL's luminance (L = 0.299 R + 0.587 G +
0.114 B), `channels: 3` keeps RGB. Only the first video stream is read; sound is ignored.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator
from pathlib import Path

import av
import torch

from abp.sources.common import (
    Clips,
    OnCorrupt,
    SourceError,
    TooShort,
    find_files,
    gather_clips,
    read_all,
    source_root,
)
from abp.sources.images import Crop, to_tensor

VIDEO_SUFFIXES = {".mp4", ".avi", ".mov", ".mkv", ".webm", ".m4v", ".mpg", ".mpeg", ".ogv"}
_SAME_TIME = 1e-6  # seconds: timestamps closer than this are the same instant


def nearest_in_time(
    frames: Iterable[av.VideoFrame], native_fps: float, fps: float
) -> Iterator[av.VideoFrame]:
    """The frames nearest in time to 0, 1/fps, 2/fps, … (times counted from the first
    frame), up to the end of the last frame's display (1/native_fps after it starts)."""
    j = 0
    previous: tuple[float, av.VideoFrame] | None = None
    first = None
    for index, frame in enumerate(frames):
        # Presentation timestamps where the container has them, so a variable rate is
        # followed; frame counts otherwise.
        time = frame.time if frame.time is not None else index / native_fps
        first = time if first is None else first
        time -= first
        while j / fps <= time + _SAME_TIME:  # every target up to now: this frame or the last
            target = j / fps
            # A tie goes to the earlier frame, the one still on screen at that time.
            if previous is not None and target - previous[0] <= time - target + _SAME_TIME:
                yield previous[1]
            else:
                yield frame
            j += 1
        previous = (time, frame)
    if previous is not None:
        while j / fps < previous[0] + 1 / native_fps - _SAME_TIME:
            yield previous[1]
            j += 1


def read_frames(
    path: Path,
    *,
    size: int,
    channels: int,
    crop: Crop = "center",
    fps: float | None = None,
    frame_step: int = 1,
    max_frames: int | None = None,
) -> tuple[torch.Tensor, float]:
    """The frames of the first video stream as T×C×size×size in [−1, 1]: resampled to `fps`
    (None: the file's own rate), then every `frame_step`-th, at most `max_frames` of them.
    Also returns the file's own frame rate."""
    frames = []
    with av.open(str(path)) as container:
        if not container.streams.video:
            raise SourceError(f"{path}: the file has no video stream")
        stream = container.streams.video[0]
        native = float(stream.average_rate or stream.guessed_rate or 0)
        decoded: Iterable[av.VideoFrame] = container.decode(stream)
        if fps is not None and not math.isclose(native, fps, rel_tol=1e-6):
            if native <= 0:
                raise ValueError(
                    f"its frame rate is unknown, so it cannot be resampled to {fps:g} fps"
                )
            decoded = nearest_in_time(decoded, native, fps)
        for index, frame in enumerate(decoded):
            if index % frame_step:
                continue
            frames.append(to_tensor(frame.to_image(), size=size, channels=channels, crop=crop))
            if max_frames is not None and len(frames) >= max_frames:
                break
    if not frames:
        raise ValueError("no frame could be decoded")
    return torch.stack(frames), native


def to_clips(frames: torch.Tensor, *, length: int, stride: int) -> torch.Tensor:
    """T×C×H×W frames → N×C×length×H×W clips starting every `stride` frames."""
    if frames.shape[0] < length:
        raise TooShort(f"it has {frames.shape[0]} frames, fewer than the clip length {length}")
    clips = frames.unfold(0, length, stride)  # N×C×H×W×length
    return clips.permute(0, 1, 4, 2, 3).contiguous()


def load_video_clips(
    location: Path,
    *,
    size: int,
    channels: int,
    clip_frames: int,
    clip_stride: int,
    fps: float | None = None,
    frame_step: int = 1,
    crop: Crop = "center",
    max_frames: int | None = None,
    max_clips: int | None = None,
    on_corrupt: OnCorrupt = "skip",
) -> Clips:
    """Clips from one video file or every video under a folder; clips never span two files.

    Every file is brought to `fps` (default: the first readable file's rate; see the module
    docstring), then every `frame_step`-th frame is kept; `Clips.rate` is the clips' frame
    rate after that, and `Clips.start` counts frames at that rate. With clip_frames = 1 the
    clips are single frames N×C×H×W.
    """
    if clip_frames < 1 or clip_stride < 1 or frame_step < 1:
        raise SourceError(
            f"clip_frames={clip_frames}, clip_stride={clip_stride} and "
            f"frame_step={frame_step} must all be ≥ 1"
        )
    if fps is not None and fps <= 0:
        raise SourceError(f"fps={fps} must be > 0")
    files = find_files(location, VIDEO_SUFFIXES, "video files")
    rate = fps  # the data set's rate: given, or set by the first file read

    def read(path: Path) -> tuple[torch.Tensor, float]:
        nonlocal rate
        frames, native = read_frames(
            path,
            size=size,
            channels=channels,
            crop=crop,
            fps=rate,
            frame_step=frame_step,
            max_frames=max_frames,
        )
        clips = to_clips(frames, length=clip_frames, stride=clip_stride)
        if rate is None and native > 0:
            rate = native
        return clips, native

    good, skipped = read_all(files, read, on_corrupt=on_corrupt, what="video")
    x, file, start, used = gather_clips(
        [(path, clips) for path, (clips, _) in good], stride=clip_stride, max_clips=max_clips
    )
    if clip_frames == 1:
        x = x.squeeze(2)
    return Clips(
        x=x,
        file=file,
        start=start,
        files=[good[i][0] for i in used],
        root=source_root(location),
        rate=(rate or 0.0) / frame_step,
        file_rates=[good[i][1][1] for i in used],
        skipped=skipped,
    )
