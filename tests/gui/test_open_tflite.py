""".tflite models in the desktop app, with real widgets offscreen: the graph painted with operator names and
NHWC shapes said as such, the inspector's quantization parameters and custom operators, subgraphs reached
from the toolbar, and a profile on the LiteRT CPU reference from the Run dialog (exact and deployed) painted
with its kinds.  Models: mediapipe's (tests/data/tflite) and one built here with quantized weights, a custom
op and a second subgraph (tests/importers/test_tflite.py)."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("ai_edge_litert")
from PySide6.QtCore import Qt  # noqa: E402
from PySide6.QtGui import QImage  # noqa: E402

from PySide6.QtWidgets import QMessageBox  # noqa: E402

from tests.gui.gui_fixtures import answer_next_message_box, open_and_wait, settings, window  # noqa: E402,F401
from tests.importers.test_tflite import FACE, SELFIE, build_small_model  # noqa: E402

RUN_TIMEOUT_MS = 180_000


def _box_lines(scene, node_id):
    return scene.labels._lines[scene.node_ids.index(node_id)]  # what the box paints: op, name, shape


def _run(qtbot, window, mode):
    dialog = window.show_run_dialog()
    dialog.runs_spin.setValue(3)
    dialog.warmup_spin.setValue(1)
    dialog.mode_combo.setCurrentIndex(dialog.mode_combo.findData(mode))
    with qtbot.waitSignal(window.profileAdded, timeout=RUN_TIMEOUT_MS):
        qtbot.mouseClick(dialog.run_button, Qt.MouseButton.LeftButton)
    qtbot.waitUntil(lambda: window.worker is None, timeout=RUN_TIMEOUT_MS)
    return dialog, window.selected_entry().profile


def test_a_tflite_model_opens_and_profiles_on_litert_from_the_run_dialog(qtbot, window, tmp_path):  # noqa: F811
    open_and_wait(qtbot, window, FACE)
    scene = window.scene
    title, name, *details = _box_lines(scene, "2")
    assert (title, name) == ("CONV_2D", "conv2d") and "1x64x64x24" in details[0]
    assert "tensors NHWC" in window.summary_label.text()
    window.view.select_node("2")
    rows = window.inspector.rows()
    assert rows["Node/Op type"] == "CONV_2D"
    output = next(v for k, v in rows.items() if k.startswith("Outputs") and "#0" in k)
    assert "1x64x64x24 NHWC" in output  # said, so it is not read as 64 channels of 64x24
    weights = next(v for k, v in rows.items() if k.startswith("Inputs") and "#1" in k)
    assert "24x5x5x3 " in weights and "NHWC" not in weights  # a kernel is no activation
    assert not window.subgraph_chooser.isVisibleTo(window)  # one graph: no chooser

    dialog = window.show_run_dialog()
    dialog.sizes_field.setText("256")  # the model's input is fixed at 128x128: LiteRT resizes it, said as typed
    assert "LiteRT resizes them anyway" in dialog.check_label.text() and dialog.run_button.isEnabled()
    dialog.sizes_field.setText("")
    dialog, exact = _run(qtbot, window, "exact")
    assert dialog.target_combo.itemText(dialog.target_combo.findData("cpu")) == "CPU reference (LiteRT)"
    assert "builtin kernels" in dialog.mode_combo.itemText(dialog.mode_combo.findData("exact"))
    assert exact.mode == "exact" and exact.target["runtime"].startswith("LiteRT")
    assert set(exact.nodes) == {n.id for n in window.loaded.analysis.graph.nodes}
    assert window.overlay_combo.currentData() == "time" and window.view.legend.kind == "measured"
    window.view.select_node("2")
    rows, kinds = window.inspector.rows(), window.inspector.kinds()
    section = next(k.split("/")[0] for k in rows if k.endswith("/Time (median)"))
    assert kinds[f"{section}/Time (median)"] == "measured"
    painted = scene.item_for("2").brush().color().name()

    _, deployed = _run(qtbot, window, "deployed")
    assert deployed.mode == "deployed" and window.profile_list.count() == 2
    assert window.view.legend.kind == "measured/attributed"  # XNNPACK kernels split over their operators
    assert {n.kind for n in deployed.nodes.values()} == {"measured", "attributed"}
    window.view.select_node("2")
    kinds = window.inspector.kinds()
    section = next(k.split("/")[0] for k in kinds if k.endswith("/Time (median)"))
    assert kinds[f"{section}/Time (median)"] in ("measured", "attributed")
    assert painted.startswith("#")

    # The screenshot (kept in tmp_path; look at it when the layout changes): not blank, the time colours on.
    path = tmp_path / "tflite_time.png"
    assert window.grab().save(str(path))
    image = QImage(str(path)).convertToFormat(QImage.Format.Format_RGB32)
    data = np.frombuffer(image.constBits(), np.uint8, image.sizeInBytes()).reshape(image.height(), -1, 4).copy()
    assert data[..., :3].std() > 20 and len(np.unique(data[..., :3].reshape(-1, 3), axis=0)) > 50


def test_quantization_custom_ops_and_subgraphs_in_the_app(qtbot, window, tmp_path):  # noqa: F811
    path = build_small_model(tmp_path / "built.tflite")
    open_and_wait(qtbot, window, path)
    window.view.select_node("1")  # FULLY_CONNECTED with int8 weights quantized per channel
    rows = window.inspector.rows()
    assert rows["Quantization (1 tensor)/head/fc/weights"] == \
        "per-channel on axis 0 (3 channels): scale 0.125 … 0.5, zero point 0"
    window.view.select_node("2")
    rows = window.inspector.rows()
    assert rows["Node/Op type"] == "MyPostProcess (custom)"
    assert "runs only where the runtime has this kernel registered" in rows["Node/Custom operator"]

    # The second subgraph, from the toolbar's Graph chooser.
    chooser = window.subgraph_chooser
    qtbot.waitUntil(lambda: chooser.isVisibleTo(window))  # the toolbar lays its widgets out on the next turn
    assert chooser.count() == 2
    assert chooser.itemText(0).startswith("0: main (3 ops)")
    with qtbot.waitSignal(window.modelLoaded, timeout=30_000):
        chooser.show_graph(1)
    assert window.loaded.graph_index == 1 and chooser.currentIndex() == 1
    assert [n.id for n in window.loaded.analysis.graph.nodes] == ["1/0"]
    assert _box_lines(window.scene, "1/0")[0] == "ADD"
    window.view.select_node("1/0")
    assert window.inspector.rows()["Node/Id"] == "1/0"
    with qtbot.waitSignal(window.modelLoaded, timeout=30_000):
        chooser.show_graph(0)
    assert window.loaded.graph_index == 0 and len(window.loaded.analysis.graph.nodes) == 3


def test_a_custom_op_the_host_cannot_run_in_exact_mode_says_so_in_the_run_dialog(qtbot, window):  # noqa: F811
    open_and_wait(qtbot, window, SELFIE)
    window.view.select_node("244")
    rows = window.inspector.rows()
    assert rows["Node/Op type"] == "Convolution2DTransposeBias (custom)"
    dialog = window.show_run_dialog()
    dialog.runs_spin.setValue(1)
    dialog.warmup_spin.setValue(0)
    dialog.mode_combo.setCurrentIndex(dialog.mode_combo.findData("exact"))
    asked = answer_next_message_box(qtbot, QMessageBox.StandardButton.Ok, tries=3000)  # "Profiling failed"
    with qtbot.waitSignal(window.profileFailed, timeout=RUN_TIMEOUT_MS) as failure:
        qtbot.mouseClick(dialog.run_button, Qt.MouseButton.LeftButton)
    assert "Convolution2DTransposeBias" in failure.args[0] and "Traceback" not in failure.args[0]
    assert asked == [failure.args[0]] and "Convolution2DTransposeBias" in dialog.status.text()
    qtbot.waitUntil(lambda: window.worker is None, timeout=RUN_TIMEOUT_MS)
    assert Path(window.loaded.path) == SELFIE
