"""The `fastconv` command: sobel on real photographs, demo, and one-line errors."""

import os
import subprocess
import sys

import numpy as np
import pytest

import fastconv
from fastconv.cli import edge_image, main

PIL = pytest.importorskip("PIL")
skdata = pytest.importorskip("skimage.data")
ndi = pytest.importorskip("scipy.ndimage")
from PIL import Image  # noqa: E402


def run_cli(*args, cwd=None):
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path))
    return subprocess.run([sys.executable, "-m", "fastconv", *args], capture_output=True,
                          text=True, timeout=300, cwd=cwd, env=env)


def scipy_magnitude(img):
    img = img.astype(np.float64)
    return np.hypot(ndi.sobel(img, 0), ndi.sobel(img, 1))


def test_sobel_of_an_8bit_photograph(tmp_path):
    photo = skdata.camera()  # 512 x 512 uint8
    Image.fromarray(photo).save(tmp_path / "camera.png")
    assert main(["sobel", str(tmp_path / "camera.png"), "-o", str(tmp_path / "edges.npy"),
                 "--device", "cpu"]) == 0
    edges = np.load(tmp_path / "edges.npy")
    want = scipy_magnitude(photo)
    assert edges.dtype == np.float32 and edges.shape == photo.shape
    assert np.linalg.norm(edges - want) / np.linalg.norm(want) < 1e-6
    assert main(["sobel", str(tmp_path / "camera.png"), "-o", str(tmp_path / "edges.png"),
                 "--device", "cpu"]) == 0
    png = np.asarray(Image.open(tmp_path / "edges.png"))
    assert png.dtype == np.uint8 and png.shape == photo.shape
    assert np.abs(png.astype(int) - edge_image(want, None).astype(int)).max() <= 1


def test_sobel_of_a_colour_jpeg_along_one_axis(tmp_path):
    Image.fromarray(skdata.astronaut()).save(tmp_path / "astronaut.jpg", quality=90)
    gray = np.asarray(Image.open(tmp_path / "astronaut.jpg").convert("L"), dtype=np.float64)
    assert main(["sobel", str(tmp_path / "astronaut.jpg"), "-o", str(tmp_path / "gx.npy"),
                 "--axis", "x", "--mode", "nearest", "--device", "cpu"]) == 0
    got = np.load(tmp_path / "gx.npy")
    want = ndi.sobel(gray, 1, mode="nearest")
    assert np.linalg.norm(got - want) / np.linalg.norm(want) < 1e-6


def test_demo_writes_the_edge_map_trains_and_prints_a_table(tmp_path, capsys):
    pytest.importorskip("torch")
    pytest.importorskip("sklearn")
    assert main(["demo", "--epochs", "1", "--out-dir", str(tmp_path), "--device", "cpu"]) == 0
    out = capsys.readouterr().out
    png = np.asarray(Image.open(tmp_path / "camera-sobel.png"))
    want = edge_image(scipy_magnitude(skdata.camera()), None)
    assert np.abs(png.astype(int) - want.astype(int)).max() <= 1
    assert "val_accuracy" in out
    for row in ("conv2d LeNet C1", "avg_pool2d", "sobel magnitude"):
        assert row in out


@pytest.mark.parametrize("args,message", [
    (["sobel", "no-such-photo.png", "-o", "out.png"], "no-such-photo.png: no such file"),
    (["sobel", "notes.txt", "-o", "out.png"], "not an image"),
    (["sobel", "photo.png", "-o", "out.unknownext"], "unknown image format"),
    (["sobel", "photo.png", "-o", "out.png", "--axis", "z"], "invalid choice: 'z'"),
    (["train", "--epochs", "0"], "expected a positive integer"),
    (["train", "--backend", "tensorflow"], "invalid choice: 'tensorflow'"),
    (["train", "--data", "missing-folder", "--no-progress", "--device", "cpu"],
     "missing-folder: no such file or folder"),
    (["bench", "--suite", "nosuch"], "invalid choice: 'nosuch'"),
    (["frobnicate"], "invalid choice: 'frobnicate'"),
])
def test_bad_input_gives_one_line_and_a_non_zero_status(tmp_path, args, message):
    Image.fromarray(skdata.camera()[:64, :64]).save(tmp_path / "photo.png")
    (tmp_path / "notes.txt").write_text("hello")
    proc = run_cli(*args, cwd=tmp_path)
    assert proc.returncode != 0
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert message in lines[0] and "Traceback" not in proc.stderr


@pytest.mark.skipif(fastconv.cuda_available(), reason="a GPU is present")
@pytest.mark.parametrize("command", [["demo"], ["train"], ["check"], ["bench"],
                                     ["sobel", "photo.png", "-o", "out.png"]])
def test_device_cuda_without_a_gpu(tmp_path, command):
    Image.fromarray(skdata.camera()[:64, :64]).save(tmp_path / "photo.png")
    proc = run_cli(*command, "--device", "cuda", cwd=tmp_path)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [
        f"fastconv {command[0]}: --device cuda, but no usable CUDA GPU (see `fastconv info`)"]


def test_info(capsys):
    assert main(["info"]) == 0
    out = capsys.readouterr().out
    assert f"fastconv {fastconv.__version__}" in out and "backend cpu" in out
    reason = fastconv.cuda_unavailable_reason()
    assert out.strip().splitlines()[-1] == (
        "GPU backend usable" if reason is None else f"GPU backend unusable: {reason}")


def test_why_the_gpu_backend_is_unusable_is_said(monkeypatch):
    """An extension that does not load is not the same as a machine without a GPU."""
    monkeypatch.setitem(sys.modules, "fastconv._cuda", None)  # import raises ImportError
    monkeypatch.delattr(fastconv, "_cuda", raising=False)
    reason = fastconv.cuda_unavailable_reason()
    assert reason.startswith("the CUDA backend is not built or does not load")
    assert not fastconv.cuda_available()
