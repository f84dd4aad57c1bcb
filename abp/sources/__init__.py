"""Reading raw data into tensors in [−1, 1], channels first.

- `images`: a folder of image files (PIL), or image arrays from a bundled package;
- `video`: video files decoded with PyAV, grouped into clips;
- `audio`: audio files read with soundfile (PyAV for what it cannot read), resampled with
  torchaudio, cut into clips;
- `bundled`: real data that ships inside installed packages (nothing is downloaded).

A corrupt or unreadable file among good ones is *skipped* with a warning and recorded (name
and reason) so the manifest can count it; `on_corrupt="fail"` makes it an error instead. A
source with no readable file at all is always an error.
"""

from abp.sources.common import SourceError, Skipped

__all__ = ["SourceError", "Skipped"]
