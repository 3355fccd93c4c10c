"""MNIST in the book's format, read from IDX files (``.gz`` or raw); nothing is downloaded.

``load_mnist()`` with no directory returns the embedded data set: the real MNIST test
set (10,000 images, ``fastbp/datasets/t10k-*.gz``) split deterministically into 8,000
training and 2,000 test images. Test images are those whose index ``i`` in the t10k
files has ``i % 5 == 4`` (every fifth image), the other 8,000 are training images; the
split needs no random generator, so it is the same on every NumPy version, and it draws
from both halves of t10k (written by different groups of people) alike.

``load_mnist(data_dir=DIR)`` reads the four standard files of the full data set from DIR.
"""

import gzip
import math
import zlib
from pathlib import Path

import numpy as np

EMBEDDED_DIR = Path(__file__).parent / "datasets"
TEST_EVERY = 5  # embedded split: index i is a test image when i % TEST_EVERY == TEST_EVERY - 1

IMAGE_MAGIC = 0x00000803  # unsigned bytes, 3 dimensions (count, rows, cols)
LABEL_MAGIC = 0x00000801  # unsigned bytes, 1 dimension (count)
READ_CHUNK = 1 << 20  # bytes per read of an IDX file's data

# (images, labels) file names of the training and the test set, without ".gz".
TRAIN_FILES = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte")
TEST_FILES = ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")


def read_idx(path, magic):
    """The uint8 array stored in IDX file ``path`` (gzip-compressed if it ends in .gz).

    ``magic`` is the expected magic number (``IMAGE_MAGIC`` or ``LABEL_MAGIC``); the array
    has shape (count,) for labels and (count, rows, cols) for images. Raises ValueError
    naming the file for a wrong magic number or a size that does not match the header.
    The header is read first and then exactly the bytes it declares, in chunks, plus one
    byte to detect trailing data: memory stays within twice the declared size however
    large the file or its decompressed stream (a gzip bomb, an endless device) is.
    """
    path = Path(path)
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as f:
            return _read_idx(f, path, magic)
    except (OSError, EOFError, zlib.error) as e:  # gzip reports corrupt or truncated data
        if isinstance(e, FileNotFoundError):
            raise
        raise ValueError(f"{path}: cannot read IDX data ({e})") from e


def _read_at_most(f, size):
    """Up to ``size`` bytes of ``f`` (fewer only at the end of the data), read in chunks."""
    chunks, left = [], size
    while left:
        chunk = f.read(min(left, READ_CHUNK))
        if not chunk:
            break
        chunks.append(chunk)
        left -= len(chunk)
    return b"".join(chunks)


def _read_idx(f, path, magic):
    ndim = magic & 0xFF
    head = _read_at_most(f, 4)
    if int.from_bytes(head, "big") != magic or len(head) < 4:
        raise ValueError(
            f"{path}: not an IDX file of this kind: magic number {head.hex() or 'nothing'}, "
            f"expected {magic:08x}"
        )
    dims = _read_at_most(f, 4 * ndim)
    header = 4 + 4 * ndim
    if len(dims) < 4 * ndim:
        raise ValueError(f"{path}: truncated header ({4 + len(dims)} bytes, expected {header})")
    shape = tuple(int.from_bytes(dims[4 * i : 4 * i + 4], "big") for i in range(ndim))
    expected = header + math.prod(shape)
    data = _read_at_most(f, expected - header)
    if len(data) < expected - header:
        problem, found = "truncated", f"{header + len(data)} bytes"
    elif f.read(1):
        problem, found = "has trailing bytes", "more bytes"
    else:
        return np.frombuffer(data, np.uint8).reshape(shape)
    raise ValueError(f"{path}: {problem}: {found}, expected {expected} for shape {shape}")


def find_file(data_dir, name):
    """``data_dir/name.gz`` if present, else ``data_dir/name``; FileNotFoundError if neither."""
    for candidate in (Path(data_dir) / f"{name}.gz", Path(data_dir) / name):
        if candidate.is_file():
            return candidate
    raise FileNotFoundError(f"MNIST file {name}.gz (or {name}) not found in {data_dir}")


def read_pair(images_path, labels_path):
    """(images[N, rows, cols], labels[N]) as uint8, checked to hold the same count N."""
    images = read_idx(images_path, IMAGE_MAGIC)
    labels = read_idx(labels_path, LABEL_MAGIC)
    if images.shape[0] != labels.shape[0]:
        raise ValueError(
            f"{images_path} holds {images.shape[0]} images but {labels_path} holds "
            f"{labels.shape[0]} labels"
        )
    return images, labels


def load_raw(data_dir=None):
    """((train_images, train_labels), (test_images, test_labels)) as uint8 arrays."""
    if data_dir is None:
        images, labels = read_pair(*(EMBEDDED_DIR / f"{name}.gz" for name in TEST_FILES))
        test = np.arange(images.shape[0]) % TEST_EVERY == TEST_EVERY - 1
        return (images[~test], labels[~test]), (images[test], labels[test])
    return tuple(
        read_pair(*(find_file(data_dir, name) for name in names))
        for names in (TRAIN_FILES, TEST_FILES)
    )


def one_hot(labels, classes=10):
    """float64 one-hot rows [N, classes], as the book's ``_change_one_hot_label``."""
    if labels.size and labels.max() >= classes:
        raise ValueError(f"labels: {labels.max()} is out of range for {classes} classes")
    t = np.zeros((labels.size, classes))
    t[np.arange(labels.size), labels] = 1
    return t


def load_mnist(normalize=True, flatten=True, one_hot_label=False, data_dir=None):
    """MNIST as ((x_train, t_train), (x_test, t_test)), like the book's ``load_mnist``.

    normalize: images as float32 in [0, 1] (pixel / 255), else uint8 in [0, 255].
    flatten: images as x[N, 784], else x[N, 1, 28, 28].
    one_hot_label: labels as float64 one-hot rows t[N, 10], else uint8 class indices t[N].
    data_dir: directory holding the four standard MNIST files (``train-images-idx3-ubyte``,
    ``train-labels-idx1-ubyte``, ``t10k-images-idx3-ubyte``, ``t10k-labels-idx1-ubyte``,
    each ``.gz`` or uncompressed); None (default) uses the embedded 8,000/2,000 split.
    """
    out = []
    for images, labels in load_raw(data_dir):
        x = images.reshape(images.shape[0], -1) if flatten else images[:, None]
        x = x.astype(np.float32) / np.float32(255.0) if normalize else x.copy()
        out.append((x, one_hot(labels) if one_hot_label else labels.copy()))
    return tuple(out)
