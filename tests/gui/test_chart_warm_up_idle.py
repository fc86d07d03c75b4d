"""The chart library's background import waits while a model is opening (issue 14's UI stalls).

Importing pyqtgraph in a thread holds the GIL for tens of ms at a time; started during the next
open (a person opening a second model within a second of the first) it overlapped that open's
scene build and first paint: t20k opened twice in a row stalled the window 110-120 ms, not ~50.
"""
from __future__ import annotations

from tests.gui.gui_fixtures import LOAD_TIMEOUT_MS, open_and_wait, settings, window  # noqa: F401


def test_the_charts_import_waits_until_nothing_is_opening(qtbot, window, sample_model):
    window._chart_warm_timer.setInterval(20)  # the test need not wait a second
    open_and_wait(qtbot, window, sample_model)
    window.ask_before_discarding = False
    window.open_path(str(sample_model))  # a second open, running now
    assert window.loading
    window._warm_charts_when_idle()
    assert window.panels._warm_thread is None  # not while the open runs
    qtbot.waitUntil(lambda: not window.loading, timeout=LOAD_TIMEOUT_MS)
    # Once nothing is opening, the import starts (the open's own timer or the one postponed above).
    qtbot.waitUntil(lambda: window.panels._warm_thread is not None, timeout=5000)
    window.panels._warm_thread.join(30)
    assert not window.panels._warm_thread.is_alive()
