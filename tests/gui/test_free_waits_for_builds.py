"""The thread freeing a replaced model (gui.responsive.free_in_background) waits while the UI thread
builds a scene or a task opens or lays out a model (collection held for them), and a while after
(the new scene's first paints): its turns with the GIL lengthened an Expand all's build slices
and first paint on t20k.onnx by 7-22 ms."""
from __future__ import annotations

import threading
import weakref

import pytest

import gui.responsive as responsive
from benchmarks.bench_gui_open import residual_model
from gui.app import load_model


@pytest.fixture(scope="module")
def residual(tmp_path_factory):
    return residual_model(tmp_path_factory.mktemp("free-waits") / "residual6k.onnx", 6000)


def test_a_rest_lasts_while_collection_is_held():
    rest = responsive._Rest()  # what the thread calls between its steps
    rest.since -= responsive.FREE_STEP_S  # a step's work done: it rests now
    assert responsive.FREE_YIELD_S >= 2.0
    responsive.hold_gc()  # as a scene build does
    try:
        resting = threading.Thread(target=rest)
        resting.start()
        resting.join(1.0)
        assert resting.is_alive()  # its own rest is 2 x FREE_STEP_S; it waits for the hold to end
    finally:
        responsive.release_gc()
    # And a while after (the new scene's first paints): it cannot end sooner than FREE_AFTER_HOLD_S.
    assert responsive.FREE_AFTER_HOLD_S >= 0.2
    resting.join(0.05)
    assert resting.is_alive()
    resting.join(10)
    assert not resting.is_alive()


def _free_while_held(residual, monkeypatch):
    """A model handed to the freeing thread while collection is held (its last reference dropped once
    the thread has walked it); returns a weak reference to its graph."""
    monkeypatch.setattr(responsive, "FREE_DELAY_S", 0.0)
    holder = [load_model(str(residual))]
    gone = weakref.ref(holder[0].model.main_graph)
    responsive.hold_gc()
    thread = responsive.free_in_background(holder[0])
    assert thread.walked.wait(60)
    holder.clear()
    return gone


def test_a_model_freed_while_collection_is_held_is_freed_once_released(residual, monkeypatch):
    try:
        gone = _free_while_held(residual, monkeypatch)
    finally:
        responsive.release_gc()
    assert responsive.freeing_done(60)
    assert gone() is None


def test_freeing_waits_no_longer_than_its_budget(residual, monkeypatch):
    """A hold that never ends (a stuck task) delays the freeing by FREE_YIELD_S at most."""
    monkeypatch.setattr(responsive, "FREE_YIELD_S", 0.2)
    try:
        gone = _free_while_held(residual, monkeypatch)
        assert responsive.freeing_done(60)  # finished while still held
        assert gone() is None
    finally:
        responsive.release_gc()
