"""The IDX reader and load_mnist: embedded split, directories of files, corrupt files."""

import gzip
import shutil

import numpy as np
import pytest

from fastbp import data


def write_idx(path, array, magic=None):
    """Write uint8 ``array`` as an IDX file (gzip-compressed when path ends in .gz)."""
    array = np.asarray(array, np.uint8)
    magic = (0x0800 | array.ndim) if magic is None else magic
    raw = magic.to_bytes(4, "big")
    raw += b"".join(n.to_bytes(4, "big") for n in array.shape) + array.tobytes()
    opener = gzip.open if str(path).endswith(".gz") else open
    with opener(path, "wb") as f:
        f.write(raw)
    return raw


def fake_mnist(directory, n_train, n_test, compress, seed=0):
    """The four standard files with random 28x28 images; returns the arrays written."""
    rng = np.random.default_rng(seed)
    suffix = ".gz" if compress else ""
    arrays = {}
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        images = rng.integers(0, 256, (n, 28, 28), dtype=np.uint8)
        labels = rng.integers(0, 10, n, dtype=np.uint8)
        write_idx(directory / f"{prefix}-images-idx3-ubyte{suffix}", images)
        write_idx(directory / f"{prefix}-labels-idx1-ubyte{suffix}", labels)
        arrays[prefix] = (images, labels)
    return arrays


def test_embedded_split_shapes_dtypes_and_ranges():
    (x, t), (xt, tt) = data.load_mnist()
    assert x.shape == (8000, 784) and xt.shape == (2000, 784)
    assert x.dtype == np.float32 and t.dtype == np.uint8
    assert x.min() >= 0.0 and x.max() == 1.0
    assert set(np.unique(t)) == set(range(10)) == set(np.unique(tt))


def test_embedded_split_is_every_fifth_image_of_t10k():
    images, labels = data.read_pair(
        data.EMBEDDED_DIR / "t10k-images-idx3-ubyte.gz",
        data.EMBEDDED_DIR / "t10k-labels-idx1-ubyte.gz",
    )
    assert images.shape == (10000, 28, 28) and labels.shape == (10000,)
    (x, t), (xt, tt) = data.load_mnist(normalize=False, flatten=False)
    assert x.shape == (8000, 1, 28, 28) and x.dtype == np.uint8
    np.testing.assert_array_equal(xt[:, 0], images[4::5])
    np.testing.assert_array_equal(tt, labels[4::5])
    np.testing.assert_array_equal(x[:4, 0], images[:4])
    np.testing.assert_array_equal(t[4], labels[5])


def test_options_like_the_book():
    (x, t), _ = data.load_mnist(normalize=True, flatten=False, one_hot_label=True)
    (raw, labels), _ = data.load_mnist(normalize=False)
    assert x.shape == (8000, 1, 28, 28) and x.dtype == np.float32
    np.testing.assert_array_equal(x.reshape(8000, -1), raw.astype(np.float32) / 255.0)
    assert t.shape == (8000, 10) and t.dtype == np.float64
    np.testing.assert_array_equal(t.argmax(axis=1), labels)
    assert (t.sum(axis=1) == 1).all()


@pytest.mark.parametrize("compress", [True, False])
def test_reads_a_directory_of_the_four_standard_files(tmp_path, compress):
    arrays = fake_mnist(tmp_path, 7, 3, compress)
    (x, t), (xt, tt) = data.load_mnist(normalize=False, data_dir=tmp_path)
    np.testing.assert_array_equal(x, arrays["train"][0].reshape(7, 784))
    np.testing.assert_array_equal(t, arrays["train"][1])
    np.testing.assert_array_equal(xt, arrays["t10k"][0].reshape(3, 784))
    np.testing.assert_array_equal(tt, arrays["t10k"][1])


def test_missing_file_is_named(tmp_path):
    fake_mnist(tmp_path, 2, 2, compress=True)
    (tmp_path / "t10k-labels-idx1-ubyte.gz").unlink()
    with pytest.raises(FileNotFoundError, match="t10k-labels-idx1-ubyte"):
        data.load_mnist(data_dir=tmp_path)


def test_bad_magic_number_is_rejected(tmp_path):
    path = tmp_path / "labels"
    write_idx(path, np.zeros(4), magic=0x00000803)  # an image magic on a label file
    with pytest.raises(ValueError, match=r"labels.*magic number 00000803, expected 00000801"):
        data.read_idx(path, data.LABEL_MAGIC)
    path.write_bytes(b"PK\x03\x04 not idx at all")
    with pytest.raises(ValueError, match="magic number"):
        data.read_idx(path, data.IMAGE_MAGIC)


@pytest.mark.parametrize("cut", [1, 100, 790])
def test_truncated_file_is_rejected(tmp_path, cut):
    path = tmp_path / "images"
    raw = write_idx(path, np.ones((2, 28, 28)))
    path.write_bytes(raw[:-cut])
    with pytest.raises(ValueError, match=r"images: truncated"):
        data.read_idx(path, data.IMAGE_MAGIC)


def test_truncated_gzip_stream_is_rejected(tmp_path):
    raw_path = tmp_path / "t10k-images-idx3-ubyte.gz"
    write_idx(raw_path, np.ones((50, 28, 28)))
    compressed = raw_path.read_bytes()
    raw_path.write_bytes(compressed[: len(compressed) // 2])
    with pytest.raises(ValueError, match="t10k-images-idx3-ubyte.gz"):
        data.read_idx(raw_path, data.IMAGE_MAGIC)


def test_trailing_bytes_are_rejected(tmp_path):
    path = tmp_path / "labels"
    path.write_bytes(write_idx(path, np.arange(5)) + b"\0")
    with pytest.raises(ValueError, match="trailing bytes"):
        data.read_idx(path, data.LABEL_MAGIC)


def test_image_label_count_mismatch_is_rejected(tmp_path):
    fake_mnist(tmp_path, 4, 3, compress=False)
    write_idx(tmp_path / "train-labels-idx1-ubyte", np.zeros(5))
    with pytest.raises(ValueError, match="holds 4 images but .* holds 5 labels"):
        data.load_mnist(data_dir=tmp_path)


def test_gz_is_preferred_and_raw_files_work_alongside(tmp_path):
    arrays = fake_mnist(tmp_path, 3, 2, compress=False)
    for name in ("train-images-idx3-ubyte", "t10k-labels-idx1-ubyte"):
        with open(tmp_path / name, "rb") as src, gzip.open(tmp_path / f"{name}.gz", "wb") as dst:
            shutil.copyfileobj(src, dst)
        (tmp_path / name).write_bytes(b"garbage")  # only the .gz copy is valid now
    (x, t), (xt, tt) = data.load_mnist(normalize=False, data_dir=tmp_path)
    np.testing.assert_array_equal(x, arrays["train"][0].reshape(3, -1))
    np.testing.assert_array_equal(tt, arrays["t10k"][1])


def test_one_hot_rejects_out_of_range_labels():
    with pytest.raises(ValueError, match="out of range"):
        data.one_hot(np.array([1, 10], np.uint8))
