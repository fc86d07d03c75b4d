"""Expand all / Collapse all keep the place looked at (the box or group under the middle of the
view), also after a second open of the same folded decoder, which starts as the first did (it
started with every group collapsed, and the box nearest the middle was an Identity of the root's
row of `present.N.*` outputs: Expand all went to the bottom of the model; those outputs are now
drawn beside their block, tests/engine/test_outputs_beside.py).  Real window offscreen, a generated
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


def test_expand_all_after_a_second_open_stays_at_the_box_looked_at(qtbot, window, decoder, monkeypatch):
    open_folded(qtbot, window, decoder, monkeypatch)
    first_open = window.loaded.collapsed
    assert _group(window, "model") not in first_open
    open_and_wait(qtbot, window, decoder)  # the same file again: it starts as the first open did
    assert window.loaded.grouping == "namespace" and window.loaded.collapsed == first_open
    looked_at = window.view.box_near_centre()
    block = window.loaded.groups[looked_at].name
    assert block.startswith("model/layers.")  # a block of the column of blocks, not an output's Identity
    relaid(qtbot, window, lambda: window.set_all_groups(False))
    assert not window.loaded.collapsed
    assert _visible(window.view).intersects(QRectF(*window.loaded.layout.frames[looked_at])), block


def test_collapse_all_from_inside_a_block_lands_on_the_block(qtbot, window, decoder, monkeypatch):
    open_folded(qtbot, window, decoder, monkeypatch)
    relaid(qtbot, window, lambda: window.set_all_groups(False))
    block = _group(window, "model/layers.17")
    x, y, w, h = window.loaded.layout.frames[block]
    window.view.centerOn(x + w / 2, y + h / 2)  # the middle of block 17, opened
    relaid(qtbot, window, lambda: window.set_all_groups(True))
    assert window.view.box_near_centre() in (_group(window, "model"), block) or \
        _visible(window.view).contains(QRectF(*window.loaded.layout.boxes[_group(window, "model")]))
