"""Export > Graph as PNG of a graph too big for a readable PNG says so and offers SVG."""
from __future__ import annotations

import re

import onnx
import pytest
from onnx import TensorProto, helper
from PySide6.QtGui import QImage
from PySide6.QtWidgets import QMessageBox

from gui.graph_style import LABEL_MIN_SCALE
from tests.gui.gui_fixtures import answer_next_message_box, open_and_wait, settings, window  # noqa: F401
from tests.gui.test_daily_use import _accept_next_file_dialog


@pytest.fixture(scope="module")
def tall_chain(tmp_path_factory):
    """1,000 Relus in a row: ~90,000 units tall, shrunk to ~18 % in a 16,000-pixel PNG."""
    path = tmp_path_factory.mktemp("tall") / "chain.onnx"
    names = ["x"] + [f"t{i}" for i in range(999)] + ["y"]
    nodes = [helper.make_node("Relu", [names[i]], [names[i + 1]], name=f"relu{i}") for i in range(1000)]
    x, y = (helper.make_tensor_value_info(name, TensorProto.FLOAT, [1, 4]) for name in ("x", "y"))
    onnx.save(helper.make_model(helper.make_graph(nodes, "chain", [x], [y])), path)
    return path


def _stated_size(text: str) -> tuple[int, int]:
    width, height = re.search(r"would be ([\d,]+) x ([\d,]+) pixels", text).groups()
    return int(width.replace(",", "")), int(height.replace(",", ""))


def test_unreadable_png_offers_svg(qtbot, window, tall_chain, tmp_path):
    open_and_wait(qtbot, window, tall_chain)
    assert window.png_scale() < LABEL_MIN_SCALE
    asked, seen = answer_next_message_box(qtbot, "Save as SVG…"), []
    _accept_next_file_dialog(seen, tmp_path / "chain.svg")
    window.export_dialog("png")
    assert len(asked) == 1 and "the PNG of this graph would be" in asked[0], asked
    assert f"where no label is drawn (they need {LABEL_MIN_SCALE:.0%})" in asked[0]
    svg = (tmp_path / "chain.svg").read_text()
    assert svg.startswith("<?xml") and "relu999" in svg  # every label, at full size
    assert not list(tmp_path.glob("*.png"))


def test_png_anyway_is_the_size_the_question_said(qtbot, window, tall_chain, tmp_path):
    open_and_wait(qtbot, window, tall_chain)
    asked, seen = answer_next_message_box(qtbot, "Save PNG Anyway…"), []
    _accept_next_file_dialog(seen, tmp_path / "chain.png")
    window.export_dialog("png")
    image = QImage(str(tmp_path / "chain.png"))
    assert not image.isNull() and (image.width(), image.height()) == _stated_size(asked[0])


def test_readable_png_asks_nothing(qtbot, window, sample_model, tmp_path):
    open_and_wait(qtbot, window, sample_model)
    assert window.png_scale() >= LABEL_MIN_SCALE
    seen = []
    _accept_next_file_dialog(seen, tmp_path / "sample.png")
    window.export_dialog("png")  # the file dialog comes first: no question
    assert seen and not QImage(str(tmp_path / "sample.png")).isNull()


def test_a_tall_graph_png_keeps_within_its_side_limit(qtbot, window, tall_chain, tmp_path):
    """The legend's band above the graph is counted in the limit: a tall graph's PNG is not taller than it."""
    open_and_wait(qtbot, window, tall_chain)
    for max_side in (window.PNG_MAX_SIDE, 3000):
        path = tmp_path / f"chain{max_side}.png"
        window.export_graph(str(path), max_side=max_side)
        image = QImage(str(path))
        assert image.height() <= max_side and image.height() >= max_side - 2, (max_side, image.height())
    asked = answer_next_message_box(qtbot, QMessageBox.StandardButton.Cancel)
    window.export_dialog("png")
    assert _stated_size(asked[0])[1] <= window.PNG_MAX_SIDE, asked
