"""The minimap of a big graph: its raster is painted in a worker thread, shown when ready, and a
raster that finishes after the scene or its colours changed is dropped."""
from __future__ import annotations

import threading

from PySide6.QtWidgets import QApplication

from gui.graph_interaction import _raster_worker
from tests.conftest import light_model
from tests.gui.gui_fixtures import open_and_wait, settings, window  # noqa: F401 (fixtures)


def _raster_every_graph(minimap) -> None:
    # Every graph takes the big-graph path (a raster of coloured pixels), as 100k boxes would.
    minimap.RENDER_ITEMS_MAX = 0


def _wait_job(qtbot, minimap) -> None:
    job = minimap.raster_job
    qtbot.waitUntil(job.done, timeout=10_000)
    job.result()  # raises what the worker raised
    QApplication.processEvents()  # the queued result reaches the UI thread


def test_the_raster_painted_in_the_worker_equals_the_one_painted_here(qtbot, window):
    open_and_wait(qtbot, window, light_model("squeezenet"))
    minimap = window.view.minimap
    _raster_every_graph(minimap)
    minimap.render_thumbnail()
    here = minimap.thumbnail
    assert here is not None and minimap.source == window.scene.sceneRect()
    # Boxes drawn: more than the background colour and the frame.
    colours = {here.pixel(x, y) for x in range(here.width()) for y in range(here.height())}
    assert len(colours) >= 3
    minimap.render_thumbnail(in_background=True)
    assert minimap.thumbnail is here  # not painted in this turn
    _wait_job(qtbot, minimap)
    assert minimap.thumbnail is not here and minimap.thumbnail == here
    assert minimap.source == window.scene.sceneRect()


def test_a_raster_for_an_older_scene_is_not_shown(qtbot, window, sample_model):
    open_and_wait(qtbot, window, light_model("squeezenet"))
    minimap = window.view.minimap
    _raster_every_graph(minimap)
    old_source = window.scene.sceneRect()
    release = threading.Event()
    _raster_worker().submit(release.wait, 10)  # the worker is busy: the next raster waits
    try:
        minimap.render_thumbnail(in_background=True)
        old_job = minimap.raster_job
        open_and_wait(qtbot, window, sample_model)  # a newer scene, drawn here at once
        minimap._refresh_timer.stop()
        minimap.render_thumbnail()
        newest = minimap.thumbnail
        assert window.scene.sceneRect() != old_source
    finally:
        release.set()
    qtbot.waitUntil(old_job.done, timeout=10_000)
    old_job.result()
    if minimap.raster_job is not old_job:  # the new scene's refresh also queued one
        _wait_job(qtbot, minimap)
    QApplication.processEvents()
    assert minimap.thumbnail is newest and minimap.source == window.scene.sceneRect()
