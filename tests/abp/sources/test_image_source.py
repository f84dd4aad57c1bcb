"""Image folders: formats, recursion, crop/resize/colour, and bad files."""

import pytest
import torch
from media import write_images

from abp.sources.common import SourceError
from abp.sources.images import images_from_arrays, load_image_folder, random_patches


def test_reads_every_image_under_the_folder_recursively_in_path_order(tmp_path):
    write_images(tmp_path / "a", 2, suffix=".png")
    write_images(tmp_path / "b" / "deeper", 2, suffix=".jpg", seed=1)
    (tmp_path / "notes.txt").write_text("not an image")
    x, files, skipped = load_image_folder(tmp_path, size=16, channels=3)
    assert x.shape == (4, 3, 16, 16) and x.dtype == torch.float32
    assert x.min() >= -1 and x.max() <= 1
    assert [f.relative_to(tmp_path).as_posix() for f in files] == [
        "a/img000.png",
        "a/img001.png",
        "b/deeper/img000.jpg",
        "b/deeper/img001.jpg",
    ]
    assert skipped == []
    gray, _, _ = load_image_folder(tmp_path, size=8, channels=1, max_images=3)
    assert gray.shape == (3, 1, 8, 8)


def test_center_crop_keeps_the_middle_square():
    array = torch.zeros(20, 40, dtype=torch.uint8).numpy()
    array[:, 10:30] = 255  # the middle 20×20 square is white
    cropped = images_from_arrays([array], size=10, channels=1, crop="center")
    squeezed = images_from_arrays([array], size=10, channels=1, crop="none")
    assert cropped.min() > 0.9  # all white
    assert squeezed.min() < -0.9  # the black sides are squeezed in


def test_a_corrupt_file_is_skipped_and_recorded_or_fails_on_request(tmp_path):
    write_images(tmp_path, 3)
    (tmp_path / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"garbage" * 10)
    x, _files, skipped = load_image_folder(tmp_path, size=8, channels=1)
    assert len(x) == 3 and len(skipped) == 1 and skipped[0].path.endswith("broken.png")
    with pytest.raises(SourceError, match=r"broken\.png: cannot read this image"):
        load_image_folder(tmp_path, size=8, channels=1, on_corrupt="fail")


def test_empty_missing_or_unreadable_folders_are_explained(tmp_path):
    with pytest.raises(SourceError, match="no such file or folder"):
        load_image_folder(tmp_path / "nope", size=8, channels=1)
    (tmp_path / "empty").mkdir()
    with pytest.raises(SourceError, match="the folder has no image files"):
        load_image_folder(tmp_path / "empty", size=8, channels=1)
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "a.jpg").write_bytes(b"not a jpeg")
    with pytest.raises(SourceError, match="none of the 1 image files could be read"):
        load_image_folder(tmp_path / "bad", size=8, channels=1)


def test_patches_are_the_image_regions_at_their_recorded_corners():
    images = torch.arange(2 * 3 * 10 * 12, dtype=torch.float32).reshape(2, 3, 10, 12)
    crops, image, corners = random_patches(images, count=4, size=5, seed=7)
    assert crops.shape == (8, 3, 5, 5) and image.tolist() == [0] * 4 + [1] * 4
    for crop, i, (r, c) in zip(crops, image.tolist(), corners.tolist(), strict=True):
        assert 0 <= r <= 5 and 0 <= c <= 7
        assert torch.equal(crop, images[i, :, r : r + 5, c : c + 5])
    again, _, same_corners = random_patches(images, count=4, size=5, seed=7)
    assert torch.equal(again, crops) and torch.equal(same_corners, corners)
    _, _, other = random_patches(images, count=4, size=5, seed=8)
    assert not torch.equal(other, corners)
    with pytest.raises(SourceError, match="patches of 11×11 do not fit in 10×12 images"):
        random_patches(images, count=1, size=11, seed=0)
