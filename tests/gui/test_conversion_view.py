"""Model > Convert to Core ML… in the app: real conversions (engine.convert) in the dialog's worker,
the converted package opened beside its source with selection linked both ways, blockers listed."""
from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper
from PySide6.QtCore import Qt

from engine.convert import load_layer_map
from engine.targets import ProfileSettings
from gui.run_dialog import RunRequest, execute_run
from tests.gui.gui_fixtures import LOAD_TIMEOUT_MS, open_and_wait, settings, window  # noqa: F401 (fixtures)
from tests.gui.test_screenshot import _pixels

CONVERT_TIMEOUT_MS = 120_000
SCREENSHOT_COPY = Path("/tmp/layerscope-convert-view.png")  # a copy to look at after the run


def _unsupported_model():
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 8, 8])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4, 8, 8])
    nodes = [helper.make_node("Conv", ["x", "w"], ["c"], name="conv", pads=[1, 1, 1, 1]),
             helper.make_node("GridSample", ["c", "grid"], ["g"], name="warp"),
             helper.make_node("Relu", ["g"], ["r"], name="relu"),
             helper.make_node("Det", ["r"], ["y"], name="pick")]
    inits = [numpy_helper.from_array(np.ones((4, 3, 3, 3), np.float32), "w"),
             numpy_helper.from_array(np.zeros((1, 8, 8, 2), np.float32), "grid")]
    return helper.make_model(helper.make_graph(nodes, "bad", [x], [y], inits),
                             opset_imports=[helper.make_opsetid("", 17)])


def _click_node(qtbot, view, node_id: str) -> None:
    """A real mouse click on a node's box (centred first, so that it is on screen)."""
    item = view.graph_scene.item_for(node_id)
    view.centerOn(item)
    point = view.mapFromScene(item.sceneBoundingRect().center())
    qtbot.mouseClick(view.viewport(), Qt.MouseButton.LeftButton, pos=point)


def test_convert_dialog_converts_and_opens_side_by_side_with_synced_selection(qtbot, window, sample_model,
                                                                              tmp_path):
    open_and_wait(qtbot, window, sample_model)
    menu = next(a.menu() for a in window.menuBar().actions() if a.text() == "&Model")
    assert window.convert_action in menu.actions()
    assert window.convert_action.isEnabled() and window.convert_action.shortcut().toString() == "Ctrl+Shift+C"
    window.convert_action.trigger()
    dialog = window.convert_dialog
    assert dialog.isVisible() and dialog.image_combo.findData("image") > 0  # the model's input is offered
    package = tmp_path / "out" / "mobileunet.mlpackage"
    dialog.output_field.setText(str(package))
    dialog.target_combo.setCurrentText("iOS17")
    dialog.shapes_field.setText("image=1x3x160x160")
    with qtbot.waitSignal(dialog.converted, timeout=CONVERT_TIMEOUT_MS) as done:
        qtbot.mouseClick(dialog.convert_button, Qt.MouseButton.LeftButton)
        assert dialog.worker is not None and not dialog.convert_button.isEnabled()
        assert dialog.progress.maximum() == 0  # busy indicator until the builder reports a count
    result = done.args[0]
    assert result.package_path == package and package.is_dir() and result.layer_map_path.is_file()
    assert result.verified
    layer_map = load_layer_map(package)
    assert layer_map["options"]["target"] == "iOS17" and layer_map["options"]["precision"] == "fp16"
    assert (dialog.progress.maximum(), dialog.progress.value()) == (1, 1)
    assert "Wrote" in dialog.status.text() and "mobileunet.mlpackage" in dialog.status.text()
    qtbot.waitUntil(lambda: dialog.worker is None, timeout=LOAD_TIMEOUT_MS)

    assert dialog.open_button.isEnabled()
    qtbot.mouseClick(dialog.open_button, Qt.MouseButton.LeftButton)
    qtbot.waitUntil(lambda: window.convert_view is not None, timeout=LOAD_TIMEOUT_MS)
    view = window.convert_view
    qtbot.waitUntil(lambda: view.ready, timeout=LOAD_TIMEOUT_MS)
    assert view.isVisible()
    assert view.source is window.loaded  # the open model is reused, not loaded again
    assert view.converted.model.format.startswith("coreml") and Path(view.converted.path) == package
    converted_graph = view.converted.analysis.graph

    # Source -> converted: a real click on the decoder's first ConvTranspose outlines its MIL op.
    _click_node(qtbot, view.source_view, "/decoder/up1/ConvTranspose")
    [linked] = view.converted_scene.linked_node_ids
    assert converted_graph.node(linked).op_type == "conv_transpose"
    assert converted_graph.node(linked).name in layer_map["nodes"]["/decoder/up1/ConvTranspose"]
    assert view.converted_scene.selectedItems() == []
    assert "decoder_up1_ConvTranspose" in view.status.text()
    assert view.converted_scene.item_for(linked).pen().color() == view.converted_scene.link_pen.color()
    assert window.view.graph_scene.selectedItems()[0].data(0) == "/decoder/up1/ConvTranspose"  # main follows

    # Converted -> source: a real click on a MIL op outlines the ONNX node it came from.
    op_name = layer_map["nodes"]["/encoder/block3/dw/Conv"][0]
    op_id = layer_map["mil_ops"][op_name]["outputs"][0]
    _click_node(qtbot, view.converted_view, op_id)
    assert view.source_scene.linked_node_ids == ["/encoder/block3/dw/Conv"]
    assert view.source_scene.selectedItems() == []  # the left selection was cleared
    assert view.converted_scene.linked_node_ids == []
    assert "/encoder/block3/dw/Conv" in view.status.text()
    # Every source compute node has a counterpart, and back.
    for metrics in view.source.analysis.compute_nodes():
        view.select_source(metrics.node_id)
        linked = view.converted_scene.linked_node_ids
        assert linked, metrics.node_id
        view.select_converted(linked[0])
        assert view.source_scene.linked_node_ids == [metrics.node_id]
    # A cast the fp16 conversion added belongs to no ONNX node.
    cast = next(n.id for n in converted_graph.nodes if n.op_type == "cast")
    view.select_converted(cast)
    assert view.source_scene.linked_node_ids == [] and "no source node" in view.status.text()

    # Screenshot of the side-by-side view, checked not blank (and kept for a person to look at).
    view.select_source("/decoder/up1/ConvTranspose")
    view.resize(1400, 860)
    qtbot.wait(50)
    shot = tmp_path / "convert_view.png"
    assert view.grab().save(str(shot))
    shutil.copyfile(shot, SCREENSHOT_COPY)
    pixels = _pixels(shot)
    assert pixels.std() > 20 and len(np.unique(pixels.reshape(-1, 3), axis=0)) > 50
    link = view.converted_scene.link_pen.color()
    assert ((pixels == [link.red(), link.green(), link.blue()]).all(axis=-1)).sum() > 30  # the outline is drawn


def test_a_model_with_unsupported_ops_lists_every_blocker_and_writes_nothing(qtbot, window, tmp_path):
    source = tmp_path / "bad.onnx"
    onnx.save(_unsupported_model(), source)
    open_and_wait(qtbot, window, source)
    dialog = window.show_convert_dialog()
    out = tmp_path / "out"
    out.mkdir()
    dialog.output_field.setText(str(out / "bad.mlpackage"))
    with qtbot.waitSignal(dialog.conversionFailed, timeout=CONVERT_TIMEOUT_MS):
        dialog.start()
    blockers = dialog.blockers_dialog
    assert blockers is not None and blockers.isVisible()
    assert [(node, op) for node, op, _ in blockers.rows()] == [("warp", "GridSample"), ("pick", "Det")]
    assert all(reason for _, _, reason in blockers.rows())
    assert "Nothing was written" in dialog.status.text() and not dialog.open_button.isEnabled()
    assert dialog.progress.value() < dialog.progress.maximum()  # it did not finish: no full bar
    assert list(out.iterdir()) == []
    qtbot.mouseClick(blockers.close_button, Qt.MouseButton.LeftButton)
    assert not blockers.isVisible()

    # The bottleneck report exported from the app says what cannot run on Core ML.
    run = execute_run(RunRequest(str(source), "cpu", ProfileSettings(runs=2, warmup=1, threads=1)))
    window.add_profile(run.entries[0].profile, run.entries[0].analysis)
    report = window.export_profile("html", str(tmp_path / "bad.html"))
    page = Path(report).read_text(encoding="utf-8")
    assert "Cannot run on Core ML: 2 nodes" in page and "GridSample" in page and "Det" in page


def test_convert_needs_an_onnx_model(qtbot, window, tmp_path, sample_model):
    assert not window.convert_action.isEnabled()  # nothing open
    from engine.convert import convert
    package = convert(sample_model, tmp_path / "m.mlpackage", precision="fp32").package_path
    open_and_wait(qtbot, window, package)
    assert not window.convert_action.isEnabled() and window.show_convert_dialog() is None
