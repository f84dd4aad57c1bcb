"""Reading raw data into tensors in [−1, 1], channels first.

- `images`: a folder of image files (PIL), idx image files (the MNIST family: abp.sources.idx),
  or image arrays from a bundled package;
- `video`: video files decoded with PyAV, brought to one frame rate, grouped into clips;
- `audio`: audio files read with soundfile (PyAV for what it cannot read), averaged to mono,
  resampled with torchaudio, cut into clips (short sounds left out, or zero-padded under a
  mask);
- `bundled`: real data that ships inside installed packages (nothing is downloaded).

Video and audio come back as `Clips`: the clips and, for each, its file and first frame or
sample, so that a train/test split can keep a file's (or a stretch's) clips on one side.

A corrupt or unreadable file among good ones is *skipped* with a warning and recorded (name
and reason) so the manifest can count it; files too short for one clip are skipped the same
way but reported in one summary line. `on_corrupt="fail"` makes either an error instead. A
source with no readable file at all is always an error.
"""

from abp.sources.common import Clips, Skipped, SourceError

__all__ = ["Clips", "Skipped", "SourceError"]
