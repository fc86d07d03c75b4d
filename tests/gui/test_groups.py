"""Collapsible groups by stage and by namespace (Model Explorer style), in the main window (offscreen)."""
from __future__ import annotations

import pytest
from PySide6.QtCore import Qt

from engine.layout import GROUP_PREFIX
from engine.targets import ProfileSettings
from gui.graph_view import is_group, is_io
from gui.run_dialog import RunRequest, execute_run
from tests.conftest import light_model
from tests.gui.gui_fixtures import LOAD_TIMEOUT_MS, open_and_wait, settings, window  # noqa: F401 (fixtures)

ENCODER, DECODER = f"{GROUP_PREFIX}stage:encoder", f"{GROUP_PREFIX}stage:decoder"


@pytest.fixture(scope="module")
def sample_profile(sample_model):
    """A real profile of the sample (2 runs), as the Run dialog's sweep path makes it."""
    return execute_run(RunRequest(str(sample_model), "cpu", ProfileSettings(runs=2, warmup=1))).entries[0].profile


def _relaid(qtbot, window, action) -> None:
    with qtbot.waitSignal(window.modelLoaded, timeout=LOAD_TIMEOUT_MS):
        action()
    assert not window.loading


def _check_connected(scene) -> None:
    """Every edge joins two boxes of the scene, or a box and the frame of an opened group (namespace
    groups open in frames): nothing dangles into a group that is not drawn."""
    assert scene.edges
    drawn = set(scene.node_index) | set(scene.frame_layer.ids if scene.frame_layer is not None else ())
    for edge in scene.edges:
        assert edge.source in drawn and edge.target in drawn
    analysis = scene.loaded.analysis
    for metrics in analysis.compute_nodes():  # every node is drawn, by its own box or its group's
        assert scene.box_id(metrics.node_id) is not None


def _sum(values) -> float:
    return sum(v for v in values if v is not None)


def test_collapsed_stages_carry_totals_and_expand_by_double_click(qtbot, window, sample_model, sample_profile):
    open_and_wait(qtbot, window, sample_model)
    window.add_profile(sample_profile)
    _relaid(qtbot, window, lambda: window.set_grouping("stage"))
    scene, analysis = window.scene, window.loaded.analysis
    assert window.group_combo.currentData() == "stage" and window.group_actions["stage"].isChecked()
    groups = [n for n in scene.node_ids if is_group(n)]
    assert groups == [f"{GROUP_PREFIX}stage:{s.name}" for s in analysis.stages]
    assert all(is_group(n) or is_io(n) for n in scene.node_ids)
    _check_connected(scene)
    assert len(window.entries) == 1  # regrouping the same model keeps its profiles

    # A group's totals are the sums of its members' figures; its time is the profile's sum.
    for group_id in groups:
        members = scene.groups[group_id].members
        totals = scene.group_totals(group_id)
        assert totals.macs == _sum(analysis.nodes[m].macs for m in members)
        assert totals.params == _sum(analysis.nodes[m].params for m in members)
        assert totals.nodes == sum(1 for m in members if not analysis.nodes[m].is_constant)
        assert totals.time_ms == pytest.approx(_sum(sample_profile.nodes[m].time.median_ms
                                                    for m in members if m in sample_profile.nodes))
        assert totals.time_kind == "measured"
        title, what, figures, time_line = scene.labels._lines[scene.node_index[group_id]]
        assert title.endswith(scene.groups[group_id].title) and f"{totals.nodes} nodes" in what
        assert time_line.startswith("time ") and "(measured)" in time_line
    # The time overlay colours a group by its summed time, as one box among the others.
    window.set_overlay("time")
    values = dict(zip(scene.node_ids, scene.overlay_values("time")))
    assert values[DECODER] == pytest.approx(scene.group_totals(DECODER).time_ms)
    assert scene.top_node_ids[0] == max(groups, key=lambda g: scene.group_totals(g).time_ms)
    # The inspector shows a selected group's totals.
    window.view.select_node(DECODER)
    rows, kinds = window.inspector.rows(), window.inspector.kinds()
    assert rows["Group (collapsed)/Name"] == "decoder"
    assert rows["Totals (estimated from shapes)/MACs"].endswith(f"({scene.group_totals(DECODER).macs:,})")
    section = next(k.split("/")[0] for k in rows if k.startswith("Profile: "))
    assert kinds[f"{section}/Time (sum)"] == "measured"

    # Double-click on the decoder box: expanded; its nodes are drawn, edges still connected.
    point = window.view.mapFromScene(scene.item_for(DECODER).sceneBoundingRect().center())
    _relaid(qtbot, window, lambda: qtbot.mouseDClick(window.view.viewport(), Qt.MouseButton.LeftButton, pos=point))
    scene = window.scene
    assert DECODER not in scene.node_index and ENCODER in scene.node_index
    decoder_nodes = [m for m in scene.groups[DECODER].members if not analysis.nodes[m].is_constant]
    assert all(m in scene.node_index for m in decoder_nodes)
    _check_connected(scene)
    # The view went to the expanded group's first node.
    visible = window.view.mapToScene(window.view.viewport().rect()).boundingRect()
    assert visible.contains(scene.item_for(decoder_nodes[0]).sceneBoundingRect())

    # Double-click on one of its nodes collapses it again.
    point = window.view.mapFromScene(scene.item_for(decoder_nodes[3]).sceneBoundingRect().center())
    _relaid(qtbot, window, lambda: qtbot.mouseDClick(window.view.viewport(), Qt.MouseButton.LeftButton, pos=point))
    assert DECODER in window.scene.node_index
    _check_connected(window.scene)


def test_namespaces_nest_and_the_context_menu_expands_and_collapses(qtbot, window, sample_model):
    open_and_wait(qtbot, window, sample_model)
    _relaid(qtbot, window, lambda: window.set_grouping("namespace"))
    scene = window.scene
    top = [n for n in scene.node_ids if is_group(n)]
    assert [scene.groups[g].name for g in top] == ["encoder", "decoder", "head"]
    encoder = f"{GROUP_PREFIX}namespace:encoder"
    menu = window.view.group_menu(encoder)
    texts = [a.text() for a in menu.actions() if a.text()]
    assert texts[0] == "Expand namespace “encoder”" and "Collapse all groups" in texts
    _relaid(qtbot, window, menu.actions()[0].trigger)
    scene = window.scene
    blocks = [n for n in scene.node_ids if is_group(n) and scene.groups[n].parent == encoder]
    assert len(blocks) >= 8 and encoder not in scene.node_index
    _check_connected(scene)
    # A node of an expanded group offers to collapse the groups that hold it, innermost first.
    stem_conv = "/encoder/stem/conv/Conv"
    assert scene.box_id(stem_conv) == f"{GROUP_PREFIX}namespace:encoder/stem"
    block = blocks[0]
    _relaid(qtbot, window, lambda: window.toggle_group(block, False))
    node = next(m for m in window.scene.groups[block].members if m in window.scene.node_index)
    texts = [a.text() for a in window.view.group_menu(node).actions() if a.text()]
    block_name = window.scene.groups[block].name
    assert texts[:2] == [f"Collapse namespace “{block_name}”", "Collapse namespace “encoder”"]
    # Search finds a node inside a collapsed group as itself: going to it opens its group.
    window.search_field.setText("up1/ConvTranspose")
    with qtbot.waitSignal(window.modelLoaded, timeout=LOAD_TIMEOUT_MS):
        assert window.search_next() == "/decoder/up1/ConvTranspose"
    assert f"{GROUP_PREFIX}namespace:decoder" not in window.loaded.collapsed
    assert window.inspector.node_id == "/decoder/up1/ConvTranspose"
    assert window.scene.item_for("/decoder/up1/ConvTranspose").isSelected()
    assert window.search_label.text() == "1 / 1"
    # Expand all, then back to no grouping: the plain graph.
    _relaid(qtbot, window, lambda: window.set_all_groups(False))
    assert not any(is_group(n) for n in window.scene.node_ids)
    _relaid(qtbot, window, lambda: window.set_grouping("none"))
    assert window.loaded.groups == {} and window.scene.node_index.keys() >= {stem_conv}


def test_a_model_without_namespaces_is_grouped_by_stage(qtbot, window):
    open_and_wait(qtbot, window, light_model("squeezenet"))
    _relaid(qtbot, window, lambda: window.set_grouping("namespace"))
    assert window.loaded.grouping == "stage" and window.group_combo.currentData() == "stage"
    assert "no namespaces" in window.progress_label.text()
    assert any(is_group(n) for n in window.scene.node_ids)
    _check_connected(window.scene)
    # The grouping chosen for one model does not carry over to the next (its groups are not this one's).
    open_and_wait(qtbot, window, light_model("densenet121"))
    assert window.loaded.grouping == "none" and window.group_combo.currentData() == "none"
    _check_connected(window.scene)


def test_compare_of_a_grouped_model_is_laid_out_node_for_node_off_the_ui_thread(qtbot, window, sample_model,
                                                                                 sample_profile):
    open_and_wait(qtbot, window, sample_model)
    _relaid(qtbot, window, lambda: window.set_grouping("stage"))
    window.add_profile(sample_profile)
    window.add_profile(sample_profile)
    assert window.show_compare(0, 1) is None  # the ungrouped layout is made by a worker first
    assert window.loading
    qtbot.waitUntil(lambda: window.compare_view is not None and window.compare_view.ready, timeout=LOAD_TIMEOUT_MS)
    view = window.compare_view
    qtbot.addWidget(view)
    assert not any(is_group(n) for n in view.scene.node_ids)
    timed = [n for n in view.scene.node_ids if n in sample_profile.nodes]
    assert len(timed) == len(sample_profile.nodes) and all(view.ratios[n] == 1.0 for n in timed)
    assert window.loaded.collapsed  # the main view stays grouped


def _reference_compare_view(window):
    from gui.compare_view import CompareView
    return CompareView(window.loaded, [(e.label, e.profile) for e in window.entries], None, 0, 0)


def test_closing_a_compare_view_while_it_draws_cancels_the_build(qtbot, window, sample_model, sample_profile):
    open_and_wait(qtbot, window, sample_model)
    window.add_profile(sample_profile)
    view = window.show_compare(0, 0)
    qtbot.addWidget(view)
    assert not view.ready and "Comparing" in view.summary.text()
    def built() -> int:
        return len(view.scene.node_items) if view.scene is not None else 0

    built_before = built()
    view.close()
    # A reference view opened after the close draws the same comparison in full: by the time it is
    # ready, the closed one would have drawn too, however slow this machine, had its build gone on.
    reference = _reference_compare_view(window)
    qtbot.addWidget(reference)
    reference.show()
    qtbot.waitUntil(lambda: reference.ready, timeout=LOAD_TIMEOUT_MS)
    assert not view.ready and built() == built_before  # no slice ran after the close
    assert view.view.graph_scene is None
    # Closed before its first comparison even started: nothing starts later either.  A hidden
    # reference opened after it starts only from the same 250 ms fallback timer, which fires later;
    # once it has drawn, the closed one would have compared and drawn too.
    early = window.show_compare(0, 0)
    qtbot.addWidget(early)
    early.close()
    late = _reference_compare_view(window)
    qtbot.addWidget(late)
    qtbot.waitUntil(lambda: late.ready, timeout=LOAD_TIMEOUT_MS)
    assert early.comparison is None and early.scene is None
    reopened = window.show_compare(0, 0)  # and a new one draws normally
    qtbot.addWidget(reopened)
    qtbot.waitUntil(lambda: reopened.ready, timeout=LOAD_TIMEOUT_MS)
    assert reopened.view.graph_scene is reopened.scene
