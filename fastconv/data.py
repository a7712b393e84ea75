"""Handwritten-digit data for `fastconv train`, as (N, 1, 28, 28) float32 in [0, 1] and
int64 labels, split into training and validation subsets with a seed.

Sources, none of which downloads anything:
  - digits (default): scikit-learn's 1797 8x8 digits, which ship inside the package,
    resized to 28x28 (bilinear) so they take LeNet-5's input as in the course notes;
  - MNIST IDX files: a folder holding train-images-idx3-ubyte and
    train-labels-idx1-ubyte (optionally .gz), or the images file itself;
  - a folder with one sub-folder per class, as Keras' flow_from_directory reads it: the
    class names sorted give the labels, every image is read in grayscale and resized to
    28x28; validation_split takes the validation subset.
"""

import gzip
import os
import struct
from dataclasses import dataclass

import numpy as np

SIZE = 28
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".pgm")


class DataError(ValueError):
    """A data source that cannot be read; the message names the path and the problem."""


@dataclass
class Split:
    x_train: np.ndarray
    y_train: np.ndarray
    x_val: np.ndarray
    y_val: np.ndarray
    classes: tuple
    source: str


def _resize(images, size=SIZE):
    """(N, h, w) -> (N, size, size) float32 by bilinear interpolation (half-pixel centres)."""
    import torch
    import torch.nn.functional as F

    t = torch.from_numpy(np.ascontiguousarray(images, dtype=np.float32))[:, None]
    return F.interpolate(t, size=(size, size), mode="bilinear", align_corners=False)[:, 0].numpy()


def _split(x, y, validation_split, seed):
    """Seeded shuffle, then the last `validation_split` of every class for validation
    (stratified, so a small set keeps every class in both subsets)."""
    if not 0.0 < validation_split < 1.0:
        raise DataError(f"validation_split must be in (0, 1), got {validation_split}")
    rng = np.random.default_rng(seed)
    train, val = [], []
    for c in np.unique(y):
        idx = rng.permutation(np.flatnonzero(y == c))
        n_val = max(1, int(round(len(idx) * validation_split))) if len(idx) > 1 else 0
        val.append(idx[len(idx) - n_val:])
        train.append(idx[:len(idx) - n_val])
    train, val = rng.permutation(np.concatenate(train)), rng.permutation(np.concatenate(val))
    return x[train], y[train], x[val], y[val]


def digits(validation_split=0.2, seed=0):
    from sklearn.datasets import load_digits

    d = load_digits()
    x = _resize(d.images / 16.0)
    y = d.target.astype(np.int64)
    return Split(*_split(x[:, None], y, validation_split, seed), tuple(range(10)),
                 "scikit-learn digits (8x8 -> 28x28)")


def _open(path):
    return gzip.open(path, "rb") if path.endswith(".gz") else open(path, "rb")


def read_idx(path):
    """An IDX file (MNIST's format) as a NumPy array of its dtype and shape."""
    dtypes = {0x08: np.uint8, 0x09: np.int8, 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}
    try:
        with _open(path) as f:
            head = f.read(4)
            if len(head) != 4 or head[0] != 0 or head[1] != 0 or head[2] not in dtypes:
                raise DataError(f"{path}: not an IDX file (magic bytes {head!r})")
            ndim = head[3]
            shape = struct.unpack(f">{ndim}I", f.read(4 * ndim))
            data = np.frombuffer(f.read(), dtype=dtypes[head[2]])
    except OSError as e:
        raise DataError(f"{path}: {e.strerror or e}") from None
    if data.size != int(np.prod(shape)):
        raise DataError(f"{path}: header says shape {shape} but the file holds {data.size} values")
    return data.reshape(shape)


def _idx_pair(path):
    if os.path.isdir(path):
        names = os.listdir(path)
        for stem in ("train-images-idx3-ubyte", "train-images.idx3-ubyte"):
            for name in (stem, stem + ".gz"):
                if name in names:
                    images = os.path.join(path, name)
                    return images, images.replace("images", "labels").replace("idx3", "idx1")
        return None
    if "images" in os.path.basename(path):
        return path, os.path.join(os.path.dirname(path),
                                  os.path.basename(path).replace("images", "labels")
                                  .replace("idx3", "idx1"))
    return None


def mnist_idx(path, validation_split=0.2, seed=0):
    pair = _idx_pair(path)
    if pair is None:
        raise DataError(f"{path}: no train-images-idx3-ubyte[.gz] file there")
    images, labels = read_idx(pair[0]), read_idx(pair[1])
    if images.ndim != 3 or labels.ndim != 1 or len(images) != len(labels):
        raise DataError(f"{path}: expected images (N, H, W) and labels (N,), got "
                        f"{images.shape} and {labels.shape}")
    x = images.astype(np.float32) / 255.0
    if x.shape[1:] != (SIZE, SIZE):
        x = _resize(x)
    return Split(*_split(x[:, None], labels.astype(np.int64), validation_split, seed),
                 tuple(range(int(labels.max()) + 1)), f"IDX files {pair[0]}")


def image_folder(path, validation_split=0.2, seed=0):
    from PIL import Image, UnidentifiedImageError

    classes = sorted(d for d in os.listdir(path) if os.path.isdir(os.path.join(path, d)))
    if len(classes) < 2:
        raise DataError(f"{path}: expected one sub-folder per class (at least two), found "
                        f"{len(classes)}")
    xs, ys = [], []
    for label, name in enumerate(classes):
        folder = os.path.join(path, name)
        for file in sorted(os.listdir(folder)):
            if not file.lower().endswith(IMAGE_SUFFIXES):
                continue
            try:
                with Image.open(os.path.join(folder, file)) as im:
                    im = im.convert("L").resize((SIZE, SIZE), Image.BILINEAR)
                    xs.append(np.asarray(im, dtype=np.float32) / 255.0)
            except (OSError, UnidentifiedImageError) as e:
                raise DataError(f"{os.path.join(folder, file)}: cannot read the image ({e})") from None
            ys.append(label)
    if not xs:
        raise DataError(f"{path}: no images ({', '.join(IMAGE_SUFFIXES)}) in the class folders")
    x, y = np.stack(xs)[:, None], np.asarray(ys, dtype=np.int64)
    return Split(*_split(x, y, validation_split, seed), tuple(classes), f"image folder {path}")


def load(path=None, validation_split=0.2, seed=0):
    """The digits when path is None; else IDX files or a class-per-folder tree."""
    if path is None:
        return digits(validation_split, seed)
    if not os.path.exists(path):
        raise DataError(f"{path}: no such file or folder")
    if _idx_pair(path) is not None:
        return mnist_idx(path, validation_split, seed)
    if os.path.isdir(path):
        return image_folder(path, validation_split, seed)
    raise DataError(f"{path}: neither IDX files nor a folder of class sub-folders")
