"""Video decoded with PyAV into clips or single frames."""

import pytest
import torch
from media import write_video

from abp.sources.common import SourceError
from abp.sources.video import load_video_clips


def test_mp4_becomes_clips_with_stride_and_frame_step(tmp_path):
    path = write_video(tmp_path / "v.mp4", n_frames=20, fps=10)
    clips, fps, files, _ = load_video_clips(path, size=16, channels=3, clip_frames=4,
                                            clip_stride=2)
    assert clips.shape == (9, 3, 4, 16, 16) and fps == 10
    # Frame i is gray level 20·i: clip k starts at frame 2k and its frames step by one.
    levels = (clips.mean(dim=(1, 3, 4)) + 1) * 127.5
    torch.testing.assert_close(levels[1], torch.tensor([40.0, 60.0, 80.0, 100.0]), atol=4, rtol=0)
    stepped, fps2, _, _ = load_video_clips(path, size=16, channels=1, clip_frames=4,
                                           clip_stride=4, frame_step=2)
    assert stepped.shape == (2, 1, 4, 16, 16) and fps2 == 5
    levels = (stepped.mean(dim=(1, 3, 4)) + 1) * 127.5
    torch.testing.assert_close(levels[0], torch.tensor([0.0, 40.0, 80.0, 120.0]), atol=4, rtol=0)


def test_single_frames_from_a_folder_of_videos(tmp_path):
    write_video(tmp_path / "a.mp4", n_frames=5)
    write_video(tmp_path / "sub" / "b.mp4", n_frames=3)
    frames, _, files, _ = load_video_clips(tmp_path, size=8, channels=3, clip_frames=1,
                                           clip_stride=1)
    assert frames.shape == (8, 3, 8, 8) and len(files) == 2


def test_too_short_or_corrupt_videos_are_explained(tmp_path):
    short = write_video(tmp_path / "short.mp4", n_frames=3)
    with pytest.raises(SourceError, match="short.mp4.*3 frames, fewer than the clip length 8"):
        load_video_clips(short, size=8, channels=3, clip_frames=8, clip_stride=1)
    (tmp_path / "corrupt.mp4").write_bytes(b"\x00" * 100)
    with pytest.raises(SourceError, match="corrupt.mp4: cannot read this video"):
        load_video_clips(tmp_path, size=8, channels=3, clip_frames=2, clip_stride=1,
                         on_corrupt="fail")
    clips, _, files, skipped = load_video_clips(tmp_path, size=8, channels=3, clip_frames=2,
                                                clip_stride=1)
    assert [f.name for f in files] == ["short.mp4"] and len(skipped) == 1
