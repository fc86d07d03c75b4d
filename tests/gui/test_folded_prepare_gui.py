"""A folded model shown in the app has its groups' first opens prepared in the background
(gui.folded_groups.prepare_group_opens); an open stops the preparation, and a block opened after
it draws exactly what a block opened without it draws."""
from __future__ import annotations

import pytest

import gui.folded_groups as folded_groups
from engine.folded_layout import FoldedLayouts
from engine.grouping import FOLD_NODES_ENVIRONMENT
from engine.transformer_samples import TransformerConfig, write_transformer
from tests.gui.gui_fixtures import LOAD_TIMEOUT_MS, open_and_wait, settings, window  # noqa: F401 (fixtures)


@pytest.fixture(scope="module")
def transformer(tmp_path_factory):
    config = TransformerConfig(layers=5, hidden=64, heads=4, kv_heads=2, intermediate=96, vocab=50, past=5)
    return write_transformer(tmp_path_factory.mktemp("prepared") / "decoder.onnx", config)


def _blocks(loaded) -> list[str]:
    return [f"group:namespace:model/layers.{i}" for i in range(5)]


def _whole(loaded, block) -> frozenset:
    name = loaded.groups[block].name + "/"
    return frozenset(g for g in loaded.collapsed if g != block and not loaded.groups[g].name.startswith(name))


def test_the_blocks_first_opens_are_prepared_and_draw_what_unprepared_opens_draw(qtbot, window, transformer,
                                                                                  monkeypatch):
    monkeypatch.setenv(FOLD_NODES_ENVIRONMENT, "100")
    monkeypatch.setattr(folded_groups, "PREPARE_DELAY_MS", 0)
    open_and_wait(qtbot, window, transformer)
    loaded = window.loaded
    qtbot.waitUntil(lambda: not folded_groups.preparation_running(), timeout=LOAD_TIMEOUT_MS)
    folded = loaded.folded_layouts
    blocks = _blocks(loaded)
    assert set(blocks) <= loaded.collapsed
    assert all((b, frozenset()) in folded._framed_pieces for b in blocks)  # opened whole: prepared
    laid_out = folded.seconds_laying_out
    block = blocks[3]
    collapsed = _whole(loaded, block)
    with qtbot.waitSignal(window.modelLoaded, timeout=LOAD_TIMEOUT_MS):
        window._relayout_groups(collapsed, "Expanding")
    assert window.loaded.folded_layouts is folded and folded.seconds_laying_out == laid_out  # nothing laid out
    fresh = FoldedLayouts(loaded.analysis, loaded.groups, loaded.include_constants).compose(collapsed)
    drawn = window.loaded.layout
    assert drawn.boxes == fresh.boxes and [tuple(e) for e in drawn.edges] == [tuple(e) for e in fresh.edges]
    assert dict(drawn.frames) == dict(fresh.frames) and block in drawn.frames
    assert all(box in window.scene.node_index for box in fresh.boxes)


def test_an_open_stops_the_preparation_running(qtbot, window, transformer, monkeypatch):
    monkeypatch.setenv(FOLD_NODES_ENVIRONMENT, "100")
    monkeypatch.setattr(folded_groups, "PREPARE_DELAY_MS", 60_000)  # waits: what runs when the open comes
    open_and_wait(qtbot, window, transformer)
    loaded = window.loaded
    assert folded_groups.preparation_running()
    thread, stop, _ = folded_groups._preparation
    stopped_when_shown = []
    window.modelLoaded.connect(lambda _: stopped_when_shown.append(stop.is_set()))
    with qtbot.waitSignal(window.modelLoaded, timeout=LOAD_TIMEOUT_MS):
        window._relayout_groups(_whole(loaded, _blocks(loaded)[1]), "Expanding")
    assert stopped_when_shown == [True]  # by the open's worker, not only by the next preparation
    thread.join(timeout=5)
    assert not thread.is_alive()  # stopped by the open, before doing anything
    assert (_blocks(loaded)[2], frozenset()) not in loaded.folded_layouts._framed_pieces
    folded_groups.cancel_preparation()  # the one started after the open
