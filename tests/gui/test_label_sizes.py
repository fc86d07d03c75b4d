"""Box labels by their size on screen (issue 14, seventh round): at the smallest zoom that draws
labels (0.3, where Fit graph stops) only the bold titles are drawn, the 11 px lines (3.3 px there)
come back one zoom step in; a high-density screen draws them sooner; the text drawn is the box's
text (laid out once, drawn as glyph runs); an SVG export keeps it as text.

A real MainWindow (offscreen) on a generated Conv -> Relu model; pixels read from real grabs.
"""
from __future__ import annotations

import onnx
import pytest
from onnx import TensorProto, helper
from PySide6.QtCore import QPointF, QRectF, Qt
from PySide6.QtGui import QColor, QImage, QPainter

from gui.graph_style import MIN_TEXT_PIXELS, TEXT_FONT_PIXELS, TITLE_FONT_PIXELS, text_drawn_at
from tests.gui.gui_fixtures import open_and_wait, settings, window  # noqa: F401 (fixtures)

CONV, RELU = "/stem/conv/Conv", "/stem/act/Relu"
ZOOM_STEP_IN = 0.3 * 1.2  # one Zoom in from Fit graph's smallest zoom


@pytest.fixture
def stem(tmp_path):
    weight = helper.make_tensor("w", TensorProto.FLOAT, [8, 8, 3, 3], [0.0] * (8 * 8 * 9))
    graph = helper.make_graph(
        [helper.make_node("Conv", ["input", "w"], ["c"], name=CONV, pads=[1, 1, 1, 1]),
         helper.make_node("Relu", ["c"], ["out"], name=RELU)], "stem",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, 8, 16, 16])],
        [helper.make_tensor_value_info("out", TensorProto.FLOAT, [1, 8, 16, 16])], initializer=[weight])
    path = tmp_path / "stem.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    return path


@pytest.fixture
def opened(qtbot, window, stem):  # noqa: F811 (the window fixture)
    open_and_wait(qtbot, window, stem)
    window.view.set_minimap_enabled(False)
    return window


def _show(window, scale: float, box_id: str) -> None:
    view, scene = window.view, window.scene
    view.set_scale(scale)
    view.centerOn(scene.item_for(box_id))


def _dark_pixels(image: QImage, screen: QRectF, fill: QColor) -> int:
    """Pixels in `screen` (device pixels of `image`) clearly darker than the box's fill: text."""
    limit = fill.lightness() - 40
    left, top = max(0, int(screen.left())), max(0, int(screen.top()))
    right, bottom = min(image.width() - 1, int(screen.right())), min(image.height() - 1, int(screen.bottom()))
    return sum(image.pixelColor(x, y).lightness() < limit
               for x in range(left, right + 1) for y in range(top, bottom + 1))


def _bands(scene, box_id: str) -> tuple[QRectF, QRectF]:
    """The scene rectangles of a box's title line and of the middle of its name line (the glyphs'
    upper part: clear of the title's descent at any zoom)."""
    x, y, w, _ = scene.rects[scene.node_index[box_id]].tolist()
    return QRectF(x + 6, y + 3, w - 12, TITLE_FONT_PIXELS), QRectF(x + 6, y + 22, w - 12, 6)


def _painted(window, box_id: str) -> tuple[int, int]:
    """Text pixels in the title line and in the name line of `box_id` as the view shows it now."""
    view, scene = window.view, window.scene
    image = view.viewport().grab().toImage()
    fill = scene.item_for(box_id).brush().color()
    return tuple(_dark_pixels(image, QRectF(view.mapFromScene(band).boundingRect()), fill)
                 for band in _bands(scene, box_id))


def _spelled(runs) -> list:
    """The glyphs of laid-out glyph runs, and those of their font for the text they should show."""
    return [index for run in runs for index in run.glyphIndexes()]


def test_the_rule_is_the_size_on_screen():
    assert MIN_TEXT_PIXELS == pytest.approx(TITLE_FONT_PIXELS * 0.3)
    assert text_drawn_at(TITLE_FONT_PIXELS, 0.2999999999996)  # Qt's level of detail at 0.3 far from the origin
    assert not text_drawn_at(TEXT_FONT_PIXELS, 0.3)
    assert text_drawn_at(TEXT_FONT_PIXELS, ZOOM_STEP_IN)
    assert text_drawn_at(TEXT_FONT_PIXELS, 0.3, device_pixel_ratio=2.0)
    assert not text_drawn_at(TITLE_FONT_PIXELS, 0.29, device_pixel_ratio=2.0)  # no labels below 0.3 at all


def test_at_the_smallest_label_zoom_only_titles_are_drawn(qtbot, opened):
    scene, labels = opened.scene, opened.scene.labels
    conv, relu = scene.node_index[CONV], scene.node_index[RELU]
    source = scene.node_index["input:input"]
    shape = "1x8x16x16"
    _show(opened, 0.3, CONV)
    assert labels.drawn_lines(conv, 0.3) == ["Conv"] and labels.drawn_lines(relu, 0.3) == ["Relu"]
    # A graph input's name line stands for its title (a blank box otherwise); its type waits.
    assert labels.drawn_lines(source, 0.3) == ["input  input"]
    title, name = _painted(opened, CONV)
    assert title > 3 and name == 0
    _show(opened, ZOOM_STEP_IN, CONV)
    lines = labels.drawn_lines(conv, ZOOM_STEP_IN)
    assert lines[:2] == ["Conv", CONV] and lines[2].startswith(shape)
    assert labels.drawn_lines(source, ZOOM_STEP_IN) == ["input  input", f"float32 {shape}"]
    title, name = _painted(opened, CONV)
    assert title > 3 and name > 3
    _show(opened, 0.29, CONV)  # below the smallest label zoom: no text at all
    assert _painted(opened, CONV) == (0, 0)


def test_the_drawn_glyphs_spell_the_box_text(qtbot, opened):
    scene, labels = opened.scene, opened.scene.labels
    conv = scene.node_index[CONV]
    _show(opened, 1.0, CONV)
    opened.view.viewport().grab()  # a paint lays the lines out
    heading, (name, detail) = labels._heading_runs(conv), labels._text_runs(conv)
    font = heading[0].rawFont()
    assert _spelled(heading) == font.glyphIndexesForString("Conv")
    assert _spelled(name) == name[0].rawFont().glyphIndexesForString(CONV)
    assert _spelled(detail) == detail[0].rawFont().glyphIndexesForString(labels.drawn_lines(conv, 1.0)[2])
    # New text (a group's time line follows the profile): laid out again, drawn.
    labels.set_line(conv, ("Gemm", "/stem/renamed", ""))
    assert labels.drawn_lines(conv, 1.0) == ["Gemm", "/stem/renamed"]
    assert _spelled(labels._heading_runs(conv)) == font.glyphIndexesForString("Gemm")
    assert _painted(opened, CONV)[1] > 3


def test_a_graph_inputs_box_draws_its_two_lines_in_the_text_font(qtbot, opened):
    scene, labels = opened.scene, opened.scene.labels
    source = scene.node_index["input:input"]
    _show(opened, 1.0, "input:input")
    opened.view.viewport().grab()  # a paint lays the lines out
    lines = labels._text_runs(source)
    assert [line[0].rawFont().pixelSize() for line in lines] == [TEXT_FONT_PIXELS, TEXT_FONT_PIXELS]
    assert _spelled(lines[0]) == lines[0][0].rawFont().glyphIndexesForString("input  input")
    assert source not in labels._headings  # no title in the title font


def test_a_high_density_screen_draws_the_small_lines_sooner(qtbot, opened):
    scene, labels = opened.scene, opened.scene.labels
    conv = scene.node_index[CONV]
    assert labels.drawn_lines(conv, 0.3, device_pixel_ratio=2.0)[:2] == ["Conv", CONV]
    # The scene rendered at zoom 0.3 into a device of pixel ratio 2 (as on a high-density screen).
    x, y, w, h = scene.rects[conv].tolist()
    source = QRectF(x - 20, y - 20, w + 40, h + 40)
    image = QImage(int(source.width() * 0.6) + 1, int(source.height() * 0.6) + 1, QImage.Format.Format_ARGB32)
    image.setDevicePixelRatio(2.0)
    image.fill(Qt.GlobalColor.white)
    painter = QPainter(image)
    scene.render(painter, QRectF(0, 0, source.width() * 0.3, source.height() * 0.3), source)
    painter.end()
    fill = scene.item_for(CONV).brush().color()

    def device(band: QRectF) -> QRectF:  # scene -> device pixels of the image
        return QRectF(QPointF((band.left() - source.left()) * 0.6, (band.top() - source.top()) * 0.6),
                      QPointF((band.right() - source.left()) * 0.6, (band.bottom() - source.top()) * 0.6))

    title, name = (_dark_pixels(image, device(band), fill) for band in _bands(scene, CONV))
    assert title > 3 and name > 3


def test_an_svg_export_keeps_the_labels_as_text(opened, tmp_path):
    path = tmp_path / "stem.svg"
    opened.export_graph(str(path))
    text = path.read_text(encoding="utf-8")
    assert CONV in text and RELU in text and "Relu" in text


def test_the_laid_out_text_kept_is_bounded(qtbot, opened, monkeypatch):
    scene, labels = opened.scene, opened.scene.labels
    monkeypatch.setattr(type(labels), "LAID_OUT_LIMIT", 3)  # the 4 boxes lay out 6 titles and texts
    labels._headings.clear()
    labels._texts.clear()
    _show(opened, 1.0, RELU)
    assert all(visible > 3 for visible in _painted(opened, RELU))  # still drawn
    assert 0 < len(labels._headings) + len(labels._texts) <= 3


def test_a_paint_lays_out_a_few_lines_and_draws_the_rest_as_the_same_strings(qtbot, opened, monkeypatch):
    scene, labels = opened.scene, opened.scene.labels
    monkeypatch.setattr(type(labels), "LAYOUTS_PER_PAINT", 1)
    labels._headings.clear()
    labels._texts.clear()
    _show(opened, 1.0, RELU)
    pictures = []
    for laid_out in (1, 2, 3):  # 4 boxes: 6 titles and texts to lay out, one per paint here
        pictures.append(opened.view.viewport().grab().toImage())
        assert len(labels._headings) + len(labels._texts) == laid_out
    assert pictures[0] == pictures[1] == pictures[2]  # glyph runs or strings: the same picture
    assert _painted(opened, RELU)[1] > 3
