"""idx files (the MNIST family's format), written here byte by byte: every element type,
gzipped or not, image folders with labels beside them, and files that are not whole."""

import gzip

import numpy as np
import pytest
from media import write_idx

from abp.sources.common import SourceError
from abp.sources.idx import IdxError, idx_image_files, read_idx
from abp.sources.images import load_idx_images


@pytest.mark.parametrize(
    "array",
    [
        np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4),
        np.array([-128, 0, 127], dtype=np.int8),
        np.array([[1, -2, 300], [-30000, 5, 6]], dtype=np.int16),
        np.array([70000, -1], dtype=np.int32),
        np.array([[1.5, -2.25]], dtype=np.float32),
        np.array([np.pi], dtype=np.float64),
    ],
    ids=lambda a: str(a.dtype),
)
@pytest.mark.parametrize("gz", [False, True], ids=["plain", "gzipped"])
def test_every_element_type_reads_back_as_written(tmp_path, array, gz):
    found = read_idx(write_idx(tmp_path / "a-idx", array, gz=gz))
    assert found.shape == array.shape and found.dtype == array.dtype.newbyteorder("=")
    np.testing.assert_array_equal(found, array)


def test_files_that_are_not_whole_idx_say_what_is_wrong(tmp_path):
    whole = write_idx(tmp_path / "whole", np.zeros((3, 4, 4), np.uint8)).read_bytes()
    (tmp_path / "cut").write_bytes(whole[:-5])
    with pytest.raises(IdxError, match=r"3×4×4 values of 1 byte\(s\), 64 bytes in all, .* 59"):
        read_idx(tmp_path / "cut")
    (tmp_path / "png").write_bytes(b"\x89PNG\r\n\x1a\n")
    with pytest.raises(IdxError, match=r"not an idx file .*89 50 4e 47"):
        read_idx(tmp_path / "png")
    (tmp_path / "gz").write_bytes(gzip.compress(whole)[:-10])
    with pytest.raises(IdxError, match="a damaged gzip file"):
        read_idx(tmp_path / "gz")


def digits(n: int, seed: int) -> np.ndarray:
    """n 6×5 images (rows ≠ columns, so a transpose shows) of random bytes."""
    return np.random.default_rng(seed).integers(0, 256, (n, 6, 5), dtype=np.uint8)


def test_a_folder_of_idx_images_reads_like_image_files_and_ignores_the_labels(tmp_path):
    train, test = digits(5, 0), digits(3, 1)
    write_idx(tmp_path / "mnist" / "train-images-idx3-ubyte.gz", train, gz=True)
    write_idx(tmp_path / "mnist" / "t10k-images-idx3-ubyte", test)
    write_idx(tmp_path / "mnist" / "train-labels-idx1-ubyte.gz", np.arange(5, dtype=np.uint8))
    assert [p.name for p in idx_image_files(tmp_path)] == [
        "t10k-images-idx3-ubyte",
        "train-images-idx3-ubyte.gz",
    ]

    x, files, skipped = load_idx_images(tmp_path, size=5, channels=1, crop="none")
    assert x.shape == (8, 1, 5, 5) and skipped == []
    assert [f.name for f in files] == ["t10k-images-idx3-ubyte", "train-images-idx3-ubyte.gz"]
    # 0 → −1 and 255 → 1, in file order; 6×5 squeezed to 5×5 as an image file would be.
    assert x.min() >= -1 and x.max() <= 1
    first, _, _ = load_idx_images(
        tmp_path / "mnist" / "t10k-images-idx3-ubyte", size=6, channels=1, crop="center"
    )
    assert first.shape == (3, 1, 6, 6)

    # max_examples runs across files, in their order; transpose swaps rows and columns.
    some, used, _ = load_idx_images(tmp_path, size=6, channels=1, crop="none", max_images=4)
    assert len(some) == 4 and [f.name for f in used] == [f.name for f in files]
    exact, _, _ = load_idx_images(
        tmp_path / "mnist" / "train-images-idx3-ubyte.gz",
        size=6,
        channels=3,
        crop="none",
        transpose=True,
        max_images=2,
    )
    assert exact.shape == (2, 3, 6, 6)
    square = np.random.default_rng(2).integers(0, 256, (1, 4, 4), dtype=np.uint8)
    write_idx(tmp_path / "sq" / "emnist-train-images-idx3-ubyte", square)
    plain, _, _ = load_idx_images(tmp_path / "sq", size=4, channels=1)
    swapped, _, _ = load_idx_images(tmp_path / "sq", size=4, channels=1, transpose=True)
    np.testing.assert_allclose(plain[0, 0].numpy(), square[0] / 127.5 - 1, atol=1e-6)
    np.testing.assert_allclose(swapped[0, 0].numpy(), square[0].T / 127.5 - 1, atol=1e-6)


def test_a_damaged_idx_file_is_skipped_and_recorded_or_fails_on_request(tmp_path):
    write_idx(tmp_path / "a-images-idx3-ubyte", digits(2, 0))
    whole = write_idx(tmp_path / "b-images-idx3-ubyte", digits(2, 1)).read_bytes()
    (tmp_path / "b-images-idx3-ubyte").write_bytes(whole[:-1])
    x, files, skipped = load_idx_images(tmp_path, size=5, channels=1)
    assert len(x) == 2 and [f.name for f in files] == ["a-images-idx3-ubyte"]
    assert len(skipped) == 1 and "truncated" in skipped[0].reason
    with pytest.raises(SourceError, match=r"b-images-idx3-ubyte: cannot read this idx image"):
        load_idx_images(tmp_path, size=5, channels=1, on_corrupt="fail")
    write_idx(tmp_path / "labels" / "c-images-idx3-ubyte", np.zeros((4,), np.uint8))
    with pytest.raises(SourceError, match="none of the 1 idx image files could be read"):
        load_idx_images(tmp_path / "labels", size=5, channels=1)
    with pytest.raises(SourceError, match="no idx image files there"):
        load_idx_images(tmp_path / "nowhere", size=5, channels=1)


def test_a_gzipped_copy_beside_its_unzipped_file_is_read_once(tmp_path):
    """torchvision's MNIST/raw keeps train-images-idx3-ubyte and its .gz side by side."""
    images = digits(4, 0)
    write_idx(tmp_path / "raw" / "train-images-idx3-ubyte", images)
    write_idx(tmp_path / "raw" / "train-images-idx3-ubyte.gz", images, gz=True)
    write_idx(tmp_path / "raw" / "t10k-images-idx3-ubyte.gz", digits(2, 1), gz=True)
    assert [p.name for p in idx_image_files(tmp_path)] == [
        "t10k-images-idx3-ubyte.gz",
        "train-images-idx3-ubyte",
    ]
    x, _, _ = load_idx_images(tmp_path, size=5, channels=1)
    assert len(x) == 6
