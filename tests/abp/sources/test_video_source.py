"""Video decoded with PyAV into clips or single frames that know their file and start, and
files of other frame rates resampled to the data set's."""

import pytest
import torch
from media import write_video

from abp.sources.common import SourceError
from abp.sources.video import load_video_clips


def levels(clips: torch.Tensor) -> torch.Tensor:
    """The gray level of each frame of each clip (media.write_video: frame i is 20·i)."""
    return (clips.mean(dim=(1, 3, 4)) + 1) * 127.5


def test_mp4_becomes_clips_with_stride_and_frame_step(tmp_path):
    path = write_video(tmp_path / "v.mp4", n_frames=20, fps=10)
    clips = load_video_clips(path, size=16, channels=3, clip_frames=4, clip_stride=2)
    assert clips.x.shape == (9, 3, 4, 16, 16) and clips.rate == 10
    assert clips.start.tolist() == list(range(0, 18, 2)) and clips.file.tolist() == [0] * 9
    # Frame i is gray level 20·i: clip k starts at frame 2k and its frames step by one.
    torch.testing.assert_close(
        levels(clips.x)[1], torch.tensor([40.0, 60.0, 80.0, 100.0]), atol=4, rtol=0
    )
    stepped = load_video_clips(
        path, size=16, channels=1, clip_frames=4, clip_stride=4, frame_step=2
    )
    assert stepped.x.shape == (2, 1, 4, 16, 16) and stepped.rate == 5
    assert stepped.start.tolist() == [0, 4]  # in frames at the stepped rate
    torch.testing.assert_close(
        levels(stepped.x)[0], torch.tensor([0.0, 40.0, 80.0, 120.0]), atol=4, rtol=0
    )


def test_single_frames_from_a_folder_of_videos(tmp_path):
    write_video(tmp_path / "a.mp4", n_frames=5)
    write_video(tmp_path / "sub" / "b.mp4", n_frames=3)
    frames = load_video_clips(tmp_path, size=8, channels=3, clip_frames=1, clip_stride=1)
    assert frames.x.shape == (8, 3, 8, 8) and frames.names() == ["a.mp4", "sub/b.mp4"]
    assert frames.file.tolist() == [0] * 5 + [1] * 3
    assert frames.start.tolist() == [0, 1, 2, 3, 4, 0, 1, 2]
    first_only = load_video_clips(
        tmp_path, size=8, channels=3, clip_frames=1, clip_stride=1, max_clips=4
    )
    assert first_only.names() == ["a.mp4"] and first_only.file.tolist() == [0] * 4


def test_a_file_at_another_rate_is_resampled_to_the_first_files_rate(tmp_path):
    write_video(tmp_path / "a.mp4", n_frames=10, fps=10)
    write_video(tmp_path / "b.mp4", n_frames=12, fps=20)  # 0.6 s: frames 0, 2, …, 10 at 10 fps
    clips = load_video_clips(tmp_path, size=8, channels=1, clip_frames=6, clip_stride=6)
    assert clips.rate == 10 and clips.file_rates == [10, 20]
    assert clips.file.tolist() == [0, 1]
    torch.testing.assert_close(
        levels(clips.x)[1], torch.tensor([0.0, 40, 80, 120, 160, 200]), atol=4, rtol=0
    )
    # At 20 fps instead, a's frames are each shown twice and b keeps every frame.
    faster = load_video_clips(tmp_path, size=8, channels=1, clip_frames=6, clip_stride=6, fps=20)
    assert faster.rate == 20 and faster.file.tolist() == [0, 0, 0, 1, 1]
    torch.testing.assert_close(
        levels(faster.x)[0], torch.tensor([0.0, 0, 20, 20, 40, 40]), atol=4, rtol=0
    )
    torch.testing.assert_close(
        levels(faster.x)[3], torch.tensor([0.0, 20, 40, 60, 80, 100]), atol=4, rtol=0
    )


def test_too_short_or_corrupt_videos_are_explained(tmp_path):
    short = write_video(tmp_path / "short.mp4", n_frames=3)
    with pytest.raises(SourceError, match=r"short\.mp4.*3 frames, fewer than the clip length 8"):
        load_video_clips(short, size=8, channels=3, clip_frames=8, clip_stride=1)
    (tmp_path / "corrupt.mp4").write_bytes(b"\x00" * 100)
    with pytest.raises(SourceError, match=r"corrupt\.mp4: cannot read this video"):
        load_video_clips(
            tmp_path, size=8, channels=3, clip_frames=2, clip_stride=1, on_corrupt="fail"
        )
    clips = load_video_clips(tmp_path, size=8, channels=3, clip_frames=2, clip_stride=1)
    assert clips.names() == ["short.mp4"] and len(clips.skipped) == 1
