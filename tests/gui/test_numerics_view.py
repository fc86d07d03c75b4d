"""Profile > Numerics… in the app (offscreen): the dialog's worker, the overlay, the Inspector, cancel."""
from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "engine"))
import numerics_models  # noqa: E402  (tests/engine/numerics_models.py)
from gui import numerics_view  # noqa: E402
from tests.gui.gui_fixtures import open_and_wait, settings, window  # noqa: E402,F401 (fixtures)

RUN_TIMEOUT_MS = 120_000


def _run_dialog(qtbot, window, mode="fp16-storage"):
    dialog = window.show_numerics_dialog()
    assert dialog is not None and "About" in dialog.estimate_label.text()
    dialog.mode_combo.setCurrentIndex(dialog.mode_combo.findData(mode))
    with qtbot.waitSignal(dialog.resultReady, timeout=RUN_TIMEOUT_MS) as blocker:
        dialog.run_button.click()
        assert not dialog.run_button.isEnabled() and dialog.cancel_button.isEnabled()
    return dialog, blocker.args[0]


def test_numerics_overlay_outlines_the_first_departing_layer_and_marks_overflowing_edges(qtbot, window, tmp_path):
    model = numerics_models.normalisation_model(tmp_path)
    open_and_wait(qtbot, window, model)
    dialog, result = _run_dialog(qtbot, window)
    assert result.first_departing == "square" and result.kind == "emulated"
    assert "first departing layer: square" in dialog.footer.status.text()
    scene = window.scene
    assert window.overlay_combo.currentData() == numerics_view.OVERLAY_KEY
    assert scene.overlay_key == "numerics" and scene.overlay_kind == "emulated"
    # The overflowing layer is outlined, painted at the top of the scale; its edges are marked.
    assert scene.top_node_ids == ["square"]
    square = scene.node_items[scene.node_index["square"]]
    assert square.pen().widthF() == scene.top_pen.widthF()
    values = numerics_view.layer_values(scene, result)
    assert values[scene.node_index["square"]] == max(v for v in values if v is not None)
    assert values[scene.node_index["conv"]] < 1e-3
    assert scene.numerics_edges >= 2 and scene.numerics_marks  # square -> variance, square -> ... (sq, var)
    assert window.view.legend.kind == "emulated" and window.view.legend.top_label == "first departing"
    # The Inspector shows the layer's figures, each emulated, and its histogram.
    window.select_node("square")
    rows, kinds = window.inspector.rows(), window.inspector.kinds()
    section = "Numerics (fp16, fp16-storage)"
    assert rows[f"{section}/Error"] == "inf"
    assert rows[f"{section}/Departs"].startswith("yes — first departing")
    assert rows[f"{section}/Rel. error histogram"].strip()
    assert kinds[f"{section}/Error"] == "emulated"
    window.select_node("conv")
    assert float(window.inspector.rows()[f"{section}/Error"]) < 1e-3
    # Another overlay takes the marks away; choosing the numerics overlay again brings them back.
    window.set_overlay("macs")
    assert scene.numerics_marks == [] and scene.overlay_key == "macs"
    window.set_overlay(numerics_view.OVERLAY_KEY)
    assert scene.numerics_marks and scene.top_node_ids == ["square"]
    dialog.close()
    # A relayout of the same model keeps the overlay; another model has no numerics: back to op categories.
    with qtbot.waitSignal(window.modelLoaded, timeout=30_000):
        window.set_show_constants(True)
    assert window.scene is not scene and window.scene.overlay_key == "numerics"
    assert window.scene.top_node_ids == ["square"] and window.scene.numerics_marks
    open_and_wait(qtbot, window, numerics_models.overflow_model(tmp_path))
    assert window.overlay_combo.currentData() == "none" and window.numerics_result() is None
    assert window.scene.overlay_key == "none"


def test_cancel_keeps_the_layers_compared_and_says_so(qtbot, window, sample_model):
    open_and_wait(qtbot, window, sample_model)
    dialog = window.show_numerics_dialog()
    dialog.mode_combo.setCurrentIndex(dialog.mode_combo.findData("fp16-compute"))
    seen = []

    def cancel_after_some_layers(done, total, message):
        seen.append(message)
        if len(seen) == 3:
            dialog.cancel_button.click()

    with qtbot.waitSignal(dialog.resultReady, timeout=RUN_TIMEOUT_MS) as blocker:
        worker = dialog.start()
        worker.progressed.connect(cancel_after_some_layers)
    result = blocker.args[0]
    assert not result.complete and result.error == "cancelled" and 3 <= len(result.layers) < 92
    assert "stopped (cancelled)" in dialog.footer.status.text()
    assert dialog.footer.progress.value() < dialog.footer.progress.maximum()  # stopped: no full bar
    qtbot.waitUntil(lambda: dialog.run_button.isEnabled(), timeout=10_000)
    # Layers not reached say so in the Inspector.
    window.select_node("/head/Sigmoid")
    assert window.inspector.rows()["Numerics (fp16, fp16-compute)/Compared"] == "no: not reached"


def test_bad_npz_says_what_is_wrong_in_the_dialog(qtbot, window, tmp_path):
    import numpy as np
    model = numerics_models.overflow_model(tmp_path)
    open_and_wait(qtbot, window, model)
    dialog = window.show_numerics_dialog()
    dialog.inputs_combo.setCurrentIndex(dialog.inputs_combo.findData("npz"))
    dialog.run_button.click()
    assert "choose one or more .npz files" in dialog.footer.status.text()
    np.savez(tmp_path / "wrong.npz", other=np.zeros((1, 64), np.float32), more=np.zeros(3))
    dialog.files_field.setText(str(tmp_path / "wrong.npz"))
    dialog.run_button.click()
    qtbot.waitUntil(lambda: "no array for input(s) x" in dialog.footer.status.text(), timeout=60_000)
    assert window.numerics_result() is None and dialog.run_button.isEnabled()
    assert dialog.footer.progress.value() < dialog.footer.progress.maximum()  # it failed: no full bar
