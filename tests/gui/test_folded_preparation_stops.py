"""The background preparation of a folded model's group opens (gui.folded_groups) stops when the
person ungroups the model or opens another one that does not open folded, and it does not keep
the model it prepared alive once it is done.  Real offscreen MainWindow, a generated transformer."""
from __future__ import annotations

import gc
import weakref

import pytest

import gui.folded_groups as folded_groups
from engine.grouping import FOLD_NODES_ENVIRONMENT
from engine.transformer_samples import TransformerConfig, write_transformer
from gui import responsive
from gui.graph_view import retiring_scenes
from tests.gui.gui_fixtures import LOAD_TIMEOUT_MS, open_and_wait, settings, window  # noqa: F401 (fixtures)


@pytest.fixture(scope="module")
def transformer(tmp_path_factory):
    config = TransformerConfig(layers=3, hidden=64, heads=4, kv_heads=2, intermediate=96, vocab=50, past=5)
    return write_transformer(tmp_path_factory.mktemp("stops") / "decoder.onnx", config)


@pytest.fixture(autouse=True)
def folded(monkeypatch):
    monkeypatch.setenv(FOLD_NODES_ENVIRONMENT, "100")  # the transformer opens folded


def test_ungrouping_stops_the_preparation(qtbot, window, transformer, monkeypatch):
    monkeypatch.setattr(folded_groups, "PREPARE_DELAY_MS", 60_000)  # waits: what runs when the ungroup comes
    open_and_wait(qtbot, window, transformer)
    thread, stop, _ = folded_groups._preparation
    with qtbot.waitSignal(window.modelLoaded, timeout=LOAD_TIMEOUT_MS):
        window.set_grouping("none")
    assert window.loaded.grouping == "none" and stop.is_set()
    thread.join(timeout=5)
    assert not thread.is_alive() and not folded_groups.preparation_running()


def test_another_model_stops_the_preparation(qtbot, window, transformer, sample_model, monkeypatch):
    monkeypatch.setattr(folded_groups, "PREPARE_DELAY_MS", 60_000)
    open_and_wait(qtbot, window, transformer)
    thread, stop, _ = folded_groups._preparation
    open_and_wait(qtbot, window, sample_model)  # not folded: no preparation of its own
    assert stop.is_set()
    thread.join(timeout=5)
    assert not thread.is_alive()


def test_a_finished_preparation_keeps_no_model_alive(qtbot, window, transformer, sample_model, monkeypatch):
    monkeypatch.setattr(folded_groups, "PREPARE_DELAY_MS", 0)
    open_and_wait(qtbot, window, transformer)
    qtbot.waitUntil(lambda: not folded_groups.preparation_running(), timeout=LOAD_TIMEOUT_MS)
    prepared = weakref.ref(window.loaded.folded_layouts)
    open_and_wait(qtbot, window, sample_model)
    qtbot.waitUntil(lambda: not responsive.gc_held() and not retiring_scenes(), timeout=LOAD_TIMEOUT_MS)
    assert responsive.freeing_done(60)  # the replaced model is let go of by free_in_background's thread
    gc.collect()
    assert prepared() is None
