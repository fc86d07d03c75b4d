"""`layerscope view --screenshot`: the main window rendered offscreen to a PNG that shows something."""
from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
from PySide6.QtGui import QImage

from gui.app import render_screenshot
from tests.conftest import light_model


def _pixels(path) -> np.ndarray:
    image = QImage(str(path)).convertToFormat(QImage.Format.Format_RGB32)
    assert not image.isNull()
    data = np.frombuffer(image.constBits(), dtype=np.uint8, count=image.sizeInBytes())
    # RGB32 is 0xffRRGGBB per pixel, little-endian in memory: B, G, R, A.  Copy: the image's
    # buffer is freed when `image` goes out of scope, and a view of it would read freed memory.
    bgr = data.reshape(image.height(), image.bytesPerLine() // 4, 4)[:, : image.width(), :3]
    return bgr[..., ::-1].copy()  # R, G, B


def test_screenshot_of_sample_is_not_blank(qtbot, tmp_path, sample_model):
    out = tmp_path / "sample.png"
    render_screenshot(str(sample_model), str(out), overlay="macs", size=(1200, 800),
                      select="/decoder/up1/ConvTranspose")
    pixels = _pixels(out)
    assert pixels.shape == (800, 1200, 3)
    assert pixels.std() > 20  # not one flat colour
    assert len(np.unique(pixels.reshape(-1, 3), axis=0)) > 50  # boxes, text, legend, gradient
    # The overlay's red end is on screen (the heaviest layers are coloured).
    red = (pixels[..., 0] > 200) & (pixels[..., 1] < 60) & (pixels[..., 2] < 60)
    assert red.sum() > 500


def test_view_command_writes_png(tmp_path):
    out = tmp_path / "densenet.png"
    # Buffered stdout, as in a person's shell: the program ends with os._exit after a screenshot
    # (gui.cli.script), so this checks that what it printed was flushed first.
    env = {k: v for k, v in os.environ.items()
           if k not in ("DISPLAY", "WAYLAND_DISPLAY", "QT_QPA_PLATFORM", "PYTHONUNBUFFERED")}
    result = subprocess.run([sys.executable, "-m", "gui", "view", str(light_model("densenet121")),
                             "--screenshot", str(out), "--overlay", "params", "--size", "1000x700"],
                            capture_output=True, text=True, env=env, timeout=120)
    assert result.returncode == 0, result.stderr
    assert f"wrote {out}" in result.stdout
    pixels = _pixels(out)
    assert pixels.shape == (700, 1000, 3) and pixels.std() > 20


def test_view_command_bad_file(tmp_path):
    broken = tmp_path / "broken.onnx"
    broken.write_bytes(b"not a model")
    env = {k: v for k, v in os.environ.items() if k not in ("DISPLAY", "WAYLAND_DISPLAY", "QT_QPA_PLATFORM")}
    result = subprocess.run([sys.executable, "-m", "gui", "view", str(broken), "--screenshot",
                             str(tmp_path / "x.png")], capture_output=True, text=True, env=env, timeout=120)
    assert result.returncode == 2
    assert "broken.onnx" in result.stderr and "Traceback" not in result.stderr
    assert not (tmp_path / "x.png").exists()
