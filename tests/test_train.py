"""fastconv train: LeNet-5 on the digits with both backends, DDP under torchrun, and the
data sources (IDX files, a class-per-folder tree)."""

import gzip
import os
import shutil
import struct
import subprocess
import sys

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("sklearn")

from fastconv import data as datasets  # noqa: E402
from fastconv.train import Config, keras_init_, lenet5, train  # noqa: E402


def test_the_two_lenets_have_the_same_parameters():
    a, b = lenet5("fastconv"), lenet5("torch")
    sa, sb = a.state_dict(), b.state_dict()
    assert [(k, v.shape) for k, v in sa.items()] == [(k, v.shape) for k, v in sb.items()]
    assert sum(v.numel() for v in sa.values()) == 61706  # the course's LeNet-5 count
    keras_init_(a, 3), keras_init_(b, 3)
    assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))
    x = torch.rand(4, 1, 28, 28)
    assert torch.allclose(a(x), b(x), rtol=1e-5, atol=1e-6)


def test_both_backends_learn_the_digits_and_agree():
    """>= 97% validation accuracy, and the two backends within 0.5 points."""
    final = {}
    for backend in ("fastconv", "torch"):
        results = train(Config(backend=backend, device="cpu", epochs=8, progress=False),
                        log=lambda *a: None)
        final[backend] = results[-1].val_accuracy
        assert results[-1].loss < results[0].loss
    assert min(final.values()) >= 0.97, final
    assert abs(final["fastconv"] - final["torch"]) <= 0.005, final


def test_ddp_with_two_processes_on_the_cpu(tmp_path):
    torchrun = shutil.which("torchrun") or os.path.join(os.path.dirname(sys.executable), "torchrun")
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path))
    proc = subprocess.run(
        [torchrun, "--standalone", "--nproc_per_node=2", "-m", "fastconv", "train",
         "--epochs", "2", "--no-progress", "--device", "cpu"],
        capture_output=True, text=True, timeout=300, env=env, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "x 2 processes (DDP)" in proc.stdout
    lines = [line for line in proc.stdout.splitlines() if line.startswith("epoch")]
    assert len(lines) == 2, proc.stdout  # rank 0 alone prints
    accuracy = float(lines[-1].split("val_accuracy")[1].split()[0])
    assert accuracy > 0.85, proc.stdout


# ----------------------------------------------------------------------- data sources


def _write_idx(path, array, gz=False):
    codes = {np.uint8: 0x08, np.int32: 0x0C}
    head = struct.pack(">BBBB", 0, 0, codes[array.dtype.type], array.ndim)
    head += struct.pack(f">{array.ndim}I", *array.shape)
    payload = head + array.astype(array.dtype.newbyteorder(">")).tobytes()
    with (gzip.open if gz else open)(path, "wb") as f:
        f.write(payload)


@pytest.mark.parametrize("gz", [False, True])
def test_mnist_idx_files(tmp_path, gz):
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (50, 28, 28), dtype=np.uint8)
    labels = np.repeat(np.arange(10, dtype=np.uint8), 5)
    suffix = ".gz" if gz else ""
    _write_idx(tmp_path / f"train-images-idx3-ubyte{suffix}", images, gz)
    _write_idx(tmp_path / f"train-labels-idx1-ubyte{suffix}", labels, gz)
    split = datasets.load(str(tmp_path), validation_split=0.2, seed=1)
    assert split.x_train.shape == (40, 1, 28, 28) and split.x_val.shape == (10, 1, 28, 28)
    assert sorted(np.concatenate([split.y_train, split.y_val]).tolist()) == sorted(labels.tolist())
    assert np.bincount(split.y_val).tolist() == [1] * 10  # stratified
    # Every image arrives intact, scaled to [0, 1].
    flat = {img.tobytes() for img in (images.astype(np.float32) / 255)}
    assert all(x[0].tobytes() in flat for x in split.x_train)


def test_idx_errors_name_the_file(tmp_path):
    bad = tmp_path / "train-images-idx3-ubyte"
    bad.write_bytes(b"\x12\x34\x56\x78" + bytes(20))
    with pytest.raises(datasets.DataError, match="not an IDX file"):
        datasets.read_idx(str(bad))
    _write_idx(bad, np.zeros((2, 28, 28), np.uint8))
    bad.write_bytes(bad.read_bytes()[:-5])
    with pytest.raises(datasets.DataError, match="header says"):
        datasets.read_idx(str(bad))
    with pytest.raises(datasets.DataError, match="no such file"):
        datasets.load(str(tmp_path / "missing"))


def _image_folder(root, per_class=6):
    from PIL import Image
    from sklearn.datasets import load_digits

    d = load_digits()
    for name, digit in (("ones", 1), ("sevens", 7), ("zeros", 0)):
        os.makedirs(root / name)
        for i, img in enumerate(d.images[d.target == digit][:per_class]):
            Image.fromarray((img * 15).astype(np.uint8)).resize((20, 20)).save(root / name / f"{i}.png")
    (root / "zeros" / "notes.txt").write_text("not an image")


def test_class_per_folder_tree(tmp_path):
    _image_folder(tmp_path)
    split = datasets.load(str(tmp_path), validation_split=0.5, seed=0)
    assert split.classes == ("ones", "sevens", "zeros")
    assert split.x_train.shape == (9, 1, 28, 28) and split.x_val.shape == (9, 1, 28, 28)
    assert np.bincount(split.y_val).tolist() == [3, 3, 3]
    assert 0.0 <= split.x_train.min() and split.x_train.max() <= 1.0


def test_training_on_a_folder_with_flips(tmp_path):
    _image_folder(tmp_path, per_class=10)
    results = train(Config(device="cpu", epochs=2, batch_size=8, data=str(tmp_path), flip=True,
                           validation_split=0.3, progress=False), log=lambda *a: None)
    assert len(results) == 2 and np.isfinite(results[-1].loss)


def test_unreadable_image_in_a_folder(tmp_path):
    _image_folder(tmp_path)
    (tmp_path / "ones" / "broken.png").write_bytes(b"not a png")
    with pytest.raises(datasets.DataError, match="broken.png"):
        datasets.load(str(tmp_path))
