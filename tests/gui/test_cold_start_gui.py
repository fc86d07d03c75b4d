"""The app's start path: the first paint imports no chart library, runtime or onnx package (issue 14)."""
from __future__ import annotations

import os
import subprocess
import sys

from tests.conftest import light_model
from tests.gui.gui_fixtures import open_and_wait, settings, window  # noqa: F401 (fixtures)

# The charts, the runtimes, the onnx package (and its slow ml_dtypes), the Run dialog and what
# only it uses: each is imported when first used, after the first paint.
NOT_BEFORE_FIRST_PAINT = ("onnx", "ml_dtypes", "onnxruntime", "coremltools", "pyqtgraph", "gui.run_dialog",
                          "engine.hints")
# Imported before Qt by the start path (gui.cli.import_engine_before_qt): PySide6 reads the source
# of every module imported after it.
BEFORE_QT = ("numpy", "igraph", "engine.layout", "engine.analysis", "importers.onnx")


def _screenshot_in_fresh_process(model, png, env_extra=None) -> dict:
    code = ("import gc, multiprocessing, os, sys\nfrom gui.cli import main\n"
            "full_collections = gc.get_stats()[2]['collections']\n"
            f"assert main(['view', {str(model)!r}, '--screenshot', {str(png)!r}]) == 0\n"
            "print('FULL_GC', gc.get_stats()[2]['collections'] - full_collections, gc.isenabled())\n"
            "print('MODULES', ','.join(sys.modules))\n"  # in the order they were first imported
            "print('CHILDREN', len(multiprocessing.active_children()))\n"
            "print('OPENBLAS', os.environ.get('OPENBLAS_NUM_THREADS', '-'))\n")
    env = {name: value for name, value in os.environ.items() if name != "OPENBLAS_NUM_THREADS"}
    env.update(QT_QPA_PLATFORM="offscreen", **(env_extra or {}))
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, env=env)
    assert result.returncode == 0, result.stderr
    return dict(line.split(" ", 1) for line in result.stdout.splitlines() if line.split(" ")[0].isupper())


def test_view_screenshot_paints_without_charts_runtime_or_onnx_package(tmp_path):
    model, png = light_model("resnet50"), tmp_path / "r.png"
    printed = _screenshot_in_fresh_process(model, png)
    order = printed["MODULES"].split(",")
    loaded = set(order)
    assert {"PySide6.QtWidgets", "gui.graph_view"} <= loaded and png.stat().st_size > 10_000
    assert not {name for name in NOT_BEFORE_FIRST_PAINT if name in loaded}
    # the engine and its libraries came before Qt
    assert max(order.index(name) for name in BEFORE_QT) < order.index("PySide6")
    # opened in this process: no helper process started (nor left running)
    assert printed["CHILDREN"] == "0"
    # numpy's OpenBLAS started with one thread, the variable not left for processes started later
    assert printed["OPENBLAS"] == "-"
    # no full garbage collection while it ran (~30 ms each), collection back on after it
    assert printed["FULL_GC"] == "0 True"


def test_screenshot_keeps_a_blas_thread_count_the_person_set(tmp_path):
    printed = _screenshot_in_fresh_process(light_model("squeezenet"), tmp_path / "s.png",
                                           {"OPENBLAS_NUM_THREADS": "2"})
    assert printed["OPENBLAS"] == "2"


def test_charts_are_built_for_the_first_run_not_at_start(qtbot, window, sample_model):
    open_and_wait(qtbot, window, sample_model)
    assert not window.panels.created
    window.panels.highlight_node("n1")  # a selection before any profile: no bar to mark, nothing built
    window.panels.set_profile(None)
    assert not window.panels.created
    window.show_run_dialog().hide()
    assert window.panels.created
    assert window.panels.layer_ids == []  # the real charts answer through the stand-in


def test_app_started_by_the_command_opens_its_model(tmp_path):
    """`layerscope MODEL`: the window opens the model (engine imported before Qt, as for a screenshot)."""
    model = light_model("squeezenet")
    code = ("import sys, threading, time\n"
            "from gui.cli import main\n"
            "def quit_when_loaded():\n"  # a person closing the window once the graph is drawn
            "    while 'PySide6.QtWidgets' not in sys.modules:\n"  # imported by the command, not here first
            "        time.sleep(0.01)\n"
            "    from PySide6.QtCore import QMetaObject, Qt\n"
            "    from PySide6.QtWidgets import QApplication\n"
            "    while True:\n"
            "        app = QApplication.instance()\n"
            "        shown = [w for w in (app.topLevelWidgets() if app else []) if getattr(w, 'loaded', None)]\n"
            "        if shown:\n"
            "            print('LOADED', shown[0].loaded.path, flush=True)\n"
            "            QMetaObject.invokeMethod(app, 'quit', Qt.ConnectionType.QueuedConnection)\n"
            "            return\n"
            "        time.sleep(0.05)\n"
            "threading.Thread(target=quit_when_loaded, daemon=True).start()\n"
            f"print('EXIT', main([{str(model)!r}]))\n"
            "print('MODULES', ','.join(sys.modules))\n")
    env = dict(os.environ, QT_QPA_PLATFORM="offscreen", XDG_CONFIG_HOME=str(tmp_path))  # own settings
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, env=env)
    assert result.returncode == 0 and "Traceback" not in result.stderr, result.stderr
    printed = dict(line.split(" ", 1) for line in result.stdout.splitlines() if line.split(" ")[0].isupper())
    assert printed["LOADED"] == str(model) and printed["EXIT"] == "0"
    order = printed["MODULES"].split(",")
    assert max(order.index(name) for name in ("numpy", "engine.layout", "importers.onnx")) < order.index("PySide6")
