"""Expand all / Collapse all keep the place looked at (the box or group under the middle of the
view), also after a second open of the same folded decoder, which starts with every group
collapsed: on main the box nearest the middle there was an Identity of the root's row of
`present.N.*` outputs, and Expand all went to the bottom of the model; those are now drawn beside
their block (tests/engine/test_outputs_beside.py), and the box there is `model`.  Real window offscreen, a generated
decoder (engine.transformer_samples)."""
from __future__ import annotations

import pytest
from PySide6.QtCore import QRectF

from tests.gui.gui_fixtures import open_and_wait, open_folded, relaid, settings, window, write_small_decoder  # noqa: F401

BLOCKS = 24


@pytest.fixture(scope="module")
def decoder(tmp_path_factory):
    return write_small_decoder(tmp_path_factory.mktemp("keeps_place"), BLOCKS)


def _visible(view) -> QRectF:
    return view.mapToScene(view.viewport().rect()).boundingRect()


def _group(window, name: str) -> str:
    return next(g for g, group in window.loaded.groups.items() if group.name == name)


def test_expand_all_after_a_second_open_stays_at_the_top_of_the_model(qtbot, window, decoder, monkeypatch):
    open_folded(qtbot, window, decoder, monkeypatch)
    open_and_wait(qtbot, window, decoder)  # the same file again: every group collapsed
    model = _group(window, "model")
    assert model in window.loaded.collapsed
    assert window.view.box_near_centre() == model
    relaid(qtbot, window, lambda: window.set_all_groups(False))
    assert not window.loaded.collapsed
    visible, frame = _visible(window.view), QRectF(*window.loaded.layout.frames[model])
    assert visible.intersects(frame) and visible.top() < frame.top() + visible.height()  # the model's top, not its bottom
    first = _group(window, "model/layers.0")
    assert visible.intersects(QRectF(*window.loaded.layout.frames[first]))


def test_collapse_all_from_inside_a_block_lands_on_the_block(qtbot, window, decoder, monkeypatch):
    open_folded(qtbot, window, decoder, monkeypatch)
    relaid(qtbot, window, lambda: window.set_all_groups(False))
    block = _group(window, "model/layers.17")
    x, y, w, h = window.loaded.layout.frames[block]
    window.view.centerOn(x + w / 2, y + h / 2)  # the middle of block 17, opened
    relaid(qtbot, window, lambda: window.set_all_groups(True))
    assert window.view.box_near_centre() in (_group(window, "model"), block) or \
        _visible(window.view).contains(QRectF(*window.loaded.layout.boxes[_group(window, "model")]))
