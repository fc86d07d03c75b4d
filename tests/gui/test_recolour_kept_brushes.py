"""The overlay recolour sets only the boxes whose colour changes (GraphScene.apply_values keeps its
brushes): every box must still show its own value's colour after any sequence of overlays and
profiles (real window offscreen, two real CPU profiles of the sample)."""
from __future__ import annotations

import math

import pytest

from engine.targets import ProfileSettings
from gui.graph_style import UNKNOWN_COLOR, gradient_color, is_io
from gui.run_dialog import RunRequest, execute_run
from tests.gui.gui_fixtures import open_and_wait, settings, window  # noqa: F401


@pytest.fixture(scope="module")
def two_profiles(sample_model):
    """Two real profiles of the sample: exact (one time per layer) and deployed (fused: other times)."""
    return [execute_run(RunRequest(str(sample_model), "cpu", ProfileSettings(runs=2, warmup=0, mode=mode)))
            .entries[0].profile for mode in ("exact", "deployed")]


def expected_colours(scene, profile) -> list:
    """Each box's colour for the time overlay, worked out here: the log scale between the smallest and
    largest positive median time, in 100 steps; unknown grey; inputs/outputs their own colour."""
    times = {n: t.time.median_ms for n, t in profile.nodes.items()}
    positive = [times[n] for n in scene.node_ids if not is_io(n) and times.get(n) and times[n] > 0]
    low, high = math.log10(min(positive)), math.log10(max(positive))
    colours = []
    for node_id in scene.node_ids:
        value = times.get(node_id)
        if is_io(node_id):
            colours.append(scene._category_brushes["io"].color().name())
        elif value is None:
            colours.append(UNKNOWN_COLOR.name())
        else:
            step = round((math.log10(value) - low) / (high - low) * 100)
            colours.append(gradient_color(step / 100).name())
    return colours


def shown_colours(scene) -> list:
    return [item.brush().color().name() for item in scene.node_items]


def test_every_box_shows_its_own_colour_after_overlays_and_profiles_change(qtbot, window, sample_model,
                                                                          two_profiles):
    exact, deployed = two_profiles
    open_and_wait(qtbot, window, sample_model)
    scene = window.scene
    window.add_profile(exact)
    window.set_overlay("time")
    assert shown_colours(scene) == expected_colours(scene, exact)
    io = [i for i, n in enumerate(scene.node_ids) if is_io(n)]
    assert io and scene.io_mask.nonzero()[0].tolist() == io
    # Another profile (other times: many boxes change, some keep their step), another overlay, none.
    window.add_profile(deployed)
    assert shown_colours(scene) == expected_colours(scene, deployed)
    assert len(set(shown_colours(scene))) > 10  # a spread of colours, not one
    window.set_overlay("macs")
    window.set_overlay("none")
    window.select_profile(0)
    window.set_overlay("time")
    assert shown_colours(scene) == expected_colours(scene, exact)
    window.select_profile(-1)  # no profile: every box unknown but the inputs/outputs
    assert {c for i, c in enumerate(shown_colours(scene)) if i not in io} == {UNKNOWN_COLOR.name()}
    window.select_profile(1)
    assert shown_colours(scene) == expected_colours(scene, deployed)
    # What the minimap reads is what the boxes show.
    assert [b.color().name() for b in scene.box_brushes] == shown_colours(scene)
