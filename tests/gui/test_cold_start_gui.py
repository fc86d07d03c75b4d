"""The app's start path: the first paint imports no chart library, runtime or onnx package (issue 14)."""
from __future__ import annotations

import os
import subprocess
import sys

from tests.conftest import light_model
from tests.gui.gui_fixtures import open_and_wait, settings, window  # noqa: F401 (fixtures)

NOT_BEFORE_FIRST_PAINT = ("onnx", "ml_dtypes", "onnxruntime", "coremltools", "pyqtgraph")


def test_view_screenshot_paints_without_charts_runtime_or_onnx_package(tmp_path):
    model, png = light_model("resnet50"), tmp_path / "r.png"
    code = ("import sys\nfrom gui.cli import main\n"
            f"assert main(['view', {str(model)!r}, '--screenshot', {str(png)!r}]) == 0\n"
            "print('MODULES', ','.join(sorted(sys.modules)))\n")
    env = dict(os.environ, QT_QPA_PLATFORM="offscreen")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, env=env)
    assert result.returncode == 0, result.stderr
    loaded = set(result.stdout.splitlines()[-1][len("MODULES "):].split(","))
    assert {"PySide6.QtWidgets", "gui.graph_view"} <= loaded and png.stat().st_size > 10_000
    assert not {name for name in NOT_BEFORE_FIRST_PAINT if name in loaded}


def test_charts_are_built_for_the_first_run_not_at_start(qtbot, window, sample_model):
    open_and_wait(qtbot, window, sample_model)
    assert not window.panels.created
    window.panels.highlight_node("n1")  # a selection before any profile: no bar to mark, nothing built
    window.panels.set_profile(None)
    assert not window.panels.created
    window.show_run_dialog().hide()
    assert window.panels.created
    assert window.panels.layer_ids == []  # the real charts answer through the stand-in
