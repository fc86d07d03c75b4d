"""benchmarks/bench_gui_open.py never waits silently for a step whose done signal cannot come.

The bench's "group residual 20,000 by namespace" row used to wait out its 120 s timeout: above
the fold threshold the residual net opens grouped by namespace already, so grouping it by
namespace again starts no work and emits nothing.  A real offscreen app and a real (small)
residual net opened folded: the bench's `longest_gap` says at once that nothing was started,
and measures the step from the ungrouped model.
"""
from __future__ import annotations

import pytest

from benchmarks.bench_gui_open import StepNotFinished, longest_gap, residual_model
from engine.grouping import FOLD_NODES_ENVIRONMENT
from tests.gui.gui_fixtures import LOAD_TIMEOUT_MS, open_and_wait, settings, window  # noqa: F401 (fixtures)

TIMEOUT_MS = 20_000  # far above what the step takes; the no-op must not wait for it


@pytest.fixture
def folded_residual(tmp_path, monkeypatch):
    monkeypatch.setenv(FOLD_NODES_ENVIRONMENT, "100")  # 500 nodes open folded, as 20,000 do at 5,000
    return residual_model(tmp_path / "residual500.onnx", 500)


def test_grouping_a_model_opened_grouped_is_reported_as_nothing_to_do(qtbot, window, folded_residual):
    from PySide6.QtWidgets import QApplication

    open_and_wait(qtbot, window, folded_residual)
    assert window.loaded.grouping == "namespace" and window.grouping() == "namespace"  # the toolbar says so
    with pytest.raises(StepNotFinished, match="started no work"):
        longest_gap(QApplication.instance(), lambda: window.set_grouping("namespace"), window.modelLoaded,
                    settle_ms=0, timeout_ms=TIMEOUT_MS, started=lambda: window.loading)
    assert window.loaded.grouping == "namespace" and not window.loading


def test_grouping_from_ungrouped_is_measured(qtbot, window, folded_residual):
    from PySide6.QtWidgets import QApplication

    open_and_wait(qtbot, window, folded_residual)
    with qtbot.waitSignal(window.modelLoaded, timeout=LOAD_TIMEOUT_MS):
        window.set_grouping("none")
    qtbot.waitUntil(lambda: not window.loading, timeout=LOAD_TIMEOUT_MS)
    gap, seconds = longest_gap(QApplication.instance(), lambda: window.set_grouping("namespace"),
                               window.modelLoaded, settle_ms=0, timeout_ms=TIMEOUT_MS,
                               started=lambda: window.loading)
    assert window.loaded.grouping == "namespace" and window.loaded.collapsed
    assert 0 < seconds < TIMEOUT_MS / 1000 and gap > 0


def test_a_signal_that_never_comes_is_reported_not_measured(qtbot, window, folded_residual):
    from PySide6.QtWidgets import QApplication

    open_and_wait(qtbot, window, folded_residual)
    # Started, but its signal is not the one that comes: the step ends at the timeout, saying so.
    with pytest.raises(StepNotFinished, match="no done signal within 1 s"):
        longest_gap(QApplication.instance(), lambda: window.set_grouping("none"), window.loadFailed,
                    settle_ms=0, timeout_ms=1000, started=lambda: window.loading)
    qtbot.waitUntil(lambda: not window.loading, timeout=LOAD_TIMEOUT_MS)
