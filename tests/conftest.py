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
