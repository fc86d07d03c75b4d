"""The profile charts made a tab per step (the first large profile) are the charts made at once.

A real profile of the bundled sample (ONNX Runtime on this CPU), real pyqtgraph charts offscreen.
The five charts take 70-90 ms to make together: when a large profile is the first one, the main
window makes them one per event-loop pass (gui.deferred_panels.build_steps) instead.
"""
from __future__ import annotations

import numpy as np
import pytest

from engine.targets import ProfileSettings
from gui.deferred_panels import DeferredProfilePanels
from gui.panels import ProfilePanels
from gui.run_dialog import RunRequest, execute_run
from tests.gui.gui_fixtures import open_and_wait, settings, window  # noqa: F401

SIZE = (900, 320)  # the per-layer chart draws one bar per run of layers narrower than 3 px: same width


@pytest.fixture(scope="module")
def sample_profile(sample_model):
    """One real profile of the sample (2 runs), made by the function the app's worker runs."""
    return execute_run(RunRequest(str(sample_model), "cpu", ProfileSettings(runs=2, warmup=1, threads=1))) \
        .entries[0].profile


def _bars(item) -> dict:
    return {key: np.asarray(item.opts[key]).tolist() for key in ("x", "x0", "y", "height", "width")
            if item.opts.get(key) is not None}


def chart_state(panels: ProfilePanels) -> dict:
    """What a person sees in the charts and the hints, as plain values."""
    def axis_labels(chart):
        return [chart.getPlotItem().getAxis(name).labelText for name in ("left", "bottom")]

    hints = []
    for i in range(panels.hints.topLevelItemCount()):
        item = panels.hints.topLevelItem(i)
        hints.append([item.text(0), item.text(1)] + [item.child(j).text(0) for j in range(item.childCount())])
    return dict(
        tabs=[(panels.tabs.tabText(i), panels.tabs.isTabEnabled(i), panels.tabs.tabToolTip(i))
              for i in range(panels.tabs.count())],
        summary=panels.summary.text(), layer_ids=panels.layer_ids, layer_ms=panels.layer_ms.tolist(),
        top_ids=panels.top_ids, series={stage: _bars(s) for stage, s in panels.stage_series.items()},
        top=_bars(panels.top_bars), stages=_bars(panels.stage_bars), ops=_bars(panels.op_bars),
        stage_labels=[label.textItem.toPlainText() for label in panels.stage_labels],
        axes=[axis_labels(c) for c in (panels.layer_chart, panels.top_chart, panels.stage_chart,
                                       panels.op_chart, panels.sweep_chart)],
        ticks=[c.getPlotItem().getAxis(name)._tickLevels for c in (panels.top_chart, panels.stage_chart,
                                                                   panels.op_chart) for name in ("left", "bottom")],
        hints=hints, layers_per_bar=panels.layers_per_bar)


def _shown(widget, qtbot):
    qtbot.addWidget(widget)
    widget.resize(*SIZE)
    widget.show()
    return widget


def test_charts_made_a_tab_per_step_are_the_charts_made_at_once(qtbot, sample_profile):
    at_once = _shown(ProfilePanels(), qtbot)
    stand_in = _shown(DeferredProfilePanels(), qtbot)
    steps = stand_in.build_steps()
    next(steps)
    building = stand_in._building[0]
    # one chart made, the others not yet, nothing shown in place of the placeholder
    assert building.tabs.count() == 1 and not hasattr(building, "top_chart")
    assert not stand_in.created and building.isHidden()
    for _ in range(5):  # a pass per chart (five) and the hints
        assert not stand_in.created
        next(steps)
    next(steps)  # then a pass puts them in place (laid out and painted; a profile fills them next)
    assert stand_in.created and stand_in.real() is building and building.isVisible()
    assert list(steps) == []
    layout = stand_in.layout()
    assert layout.count() == 1 and layout.itemAt(0).widget() is building  # in the placeholder's place
    for panels in (at_once, stand_in):
        panels.set_profile(sample_profile, "sample")
    qtbot.wait(10)  # both laid out at the same width
    assert chart_state(stand_in.real()) == chart_state(at_once)
    assert stand_in.real().layer_ids and stand_in.real().top_ids  # a profile was drawn


def test_a_use_of_the_charts_midway_finishes_the_stepped_build_once(qtbot):
    stand_in = _shown(DeferredProfilePanels(), qtbot)
    steps = stand_in.build_steps()
    next(steps)
    next(steps)
    panels = stand_in.real()  # e.g. the window reads the charts while a build is under way
    assert stand_in.created and panels.tabs.count() == 6
    assert list(steps) == []  # the stepped build stops: the panels were put in place once
    assert stand_in.findChildren(ProfilePanels) == [panels]
    assert list(stand_in.build_steps()) == []  # nothing left to make
    clicked = []
    stand_in.nodeClicked.connect(clicked.append)
    panels.nodeClicked.emit("n1")  # forwarded once, not once per build
    assert clicked == ["n1"]


def test_the_first_large_profile_makes_the_charts_over_several_passes(qtbot, window, sample_model, sample_profile):
    """As a 20,000-node profile: the recolour first, then the charts made a tab per event-loop pass
    and filled; the same charts as the first profile of a run (made at once by the Run dialog)."""
    open_and_wait(qtbot, window, sample_model)
    window.DEFER_CHARTS_NODES = 1  # the sample's profile counts as large here
    assert not window.panels.created
    window.add_profile(sample_profile)
    assert window.scene.profile is sample_profile  # recoloured at once
    assert not window.panels.created and window.panels._building is None  # the charts come later
    qtbot.waitUntil(lambda: window.panels._building is not None, timeout=3000)
    assert not window.panels.created  # begun in one pass, not finished in it
    qtbot.waitUntil(lambda: window.panels.created, timeout=3000)
    qtbot.waitUntil(lambda: window.panels.profile is sample_profile
                    and window.panels.tabs.tabText(window.panels.hints_tab_index) != "Hints", timeout=3000)
    at_once = ProfilePanels()
    qtbot.addWidget(at_once)
    at_once.resize(window.panels.real().size())
    at_once.show()
    at_once.set_profile(sample_profile, window.entries[0].label)
    window.panels.real().layers_per_bar = 0  # (drawn again at this width, as `at_once` was)
    window.panels.real()._draw_layers()
    assert chart_state(window.panels.real()) == chart_state(at_once)
