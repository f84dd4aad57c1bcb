"""Video: files decoded with PyAV into frames, grouped into clips N×C×T×H×W (or single
frames N×C×H×W when the clip length is 1)."""

from __future__ import annotations

from pathlib import Path

import av
import torch

from abp.sources.common import OnCorrupt, Skipped, SourceError, find_files, read_all
from abp.sources.images import Crop, to_tensor

VIDEO_SUFFIXES = {".mp4", ".avi", ".mov", ".mkv", ".webm", ".m4v", ".mpg", ".mpeg", ".ogv"}


def read_frames(path: Path, *, size: int, channels: int, crop: Crop = "center",
                frame_step: int = 1, max_frames: int | None = None) -> tuple[torch.Tensor, float]:
    """Every `frame_step`-th frame of the first video stream (at most `max_frames` of them),
    as T×C×size×size in [−1, 1]; also returns the frame rate of the frames kept."""
    frames = []
    with av.open(str(path)) as container:
        if not container.streams.video:
            raise SourceError(f"{path}: the file has no video stream")
        stream = container.streams.video[0]
        rate = float(stream.average_rate or stream.guessed_rate or 0)
        for index, frame in enumerate(container.decode(stream)):
            if index % frame_step:
                continue
            frames.append(to_tensor(frame.to_image(), size=size, channels=channels, crop=crop))
            if max_frames is not None and len(frames) >= max_frames:
                break
    if not frames:
        raise ValueError("no frame could be decoded")
    return torch.stack(frames), rate / frame_step


def to_clips(frames: torch.Tensor, *, length: int, stride: int) -> torch.Tensor:
    """T×C×H×W frames → N×C×length×H×W clips starting every `stride` frames."""
    if frames.shape[0] < length:
        raise ValueError(f"it has {frames.shape[0]} frames, fewer than the clip length {length}")
    clips = frames.unfold(0, length, stride)  # N×C×H×W×length
    return clips.permute(0, 1, 4, 2, 3).contiguous()


def load_video_clips(location: Path, *, size: int, channels: int, clip_frames: int,
                     clip_stride: int, frame_step: int = 1, crop: Crop = "center",
                     max_frames: int | None = None, max_clips: int | None = None,
                     on_corrupt: OnCorrupt = "skip"
                     ) -> tuple[torch.Tensor, float, list[Path], list[Skipped]]:
    """Clips from one video file or every video under a folder; clips never span two files.

    Returns (clips, frames per second after `frame_step`, files used, files skipped). With
    clip_frames = 1 the result is single frames N×C×H×W.
    """
    if clip_frames < 1 or clip_stride < 1 or frame_step < 1:
        raise SourceError(f"clip_frames={clip_frames}, clip_stride={clip_stride} and "
                          f"frame_step={frame_step} must all be ≥ 1")
    files = find_files(location, VIDEO_SUFFIXES, "video files")

    def read(path: Path) -> tuple[torch.Tensor, float]:
        frames, fps = read_frames(path, size=size, channels=channels, crop=crop,
                                  frame_step=frame_step, max_frames=max_frames)
        return to_clips(frames, length=clip_frames, stride=clip_stride), fps

    good, skipped = read_all(files, read, on_corrupt=on_corrupt, what="video")
    clips = torch.cat([c for _, (c, _) in good])[:max_clips]
    fps = good[0][1][1]
    if clip_frames == 1:
        clips = clips.squeeze(2)
    return clips, fps, [path for path, _ in good], skipped
