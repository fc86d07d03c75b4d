"""Profiling in the app: run dialog + worker, overlays, charts, compare, exports, sessions (offscreen).

Every profile here is real: ONNX Runtime on this machine's CPU, a few runs of the bundled sample.
"""
from __future__ import annotations

import csv
import gc
import json
import os
import subprocess
import sys
import time

import numpy as np
import pytest
from PySide6.QtCore import QPointF, QProcess, Qt, QTimer
from PySide6.QtWidgets import QMessageBox

from engine.profile import Profile
from engine.targets import ProfileSettings
from gui.app import MainWindow, render_screenshot
from gui.graph_view import EDGE_MAX_WIDTH, EDGE_MIN_WIDTH, diverging_color, format_ms
from gui.run_dialog import ProfileProcess, RunRequest, execute_run
from tests.gui.gui_fixtures import (LOAD_TIMEOUT_MS, answer_next_message_box, open_and_wait, settings,  # noqa: F401
                                    window)
from tests.gui.test_screenshot import _pixels

RUN_TIMEOUT_MS = 60_000
SELECTED_NODE = "/decoder/up1/ConvTranspose"


@pytest.fixture(scope="module")
def sample_run(sample_model):
    """One real profile of the sample (3 runs), made by the same function the worker runs."""
    return execute_run(RunRequest(str(sample_model), "cpu", ProfileSettings(runs=3, warmup=1, threads=1)))


def _brushes(scene):
    return [item.brush().color().name() for item in scene.node_items]


def _run_from_dialog(qtbot, window, runs=3, warmup=1, sizes="", mode="exact"):
    dialog = window.show_run_dialog()
    dialog.runs_spin.setValue(runs)
    dialog.warmup_spin.setValue(warmup)
    dialog.sizes_field.setText(sizes)
    dialog.mode_combo.setCurrentIndex(dialog.mode_combo.findData(mode))
    qtbot.mouseClick(dialog.run_button, Qt.MouseButton.LeftButton)
    assert window.worker is not None
    return dialog


def _wait_idle(qtbot, window):
    qtbot.waitUntil(lambda: window.worker is None, timeout=RUN_TIMEOUT_MS)


def _click_chart(qtbot, chart, x: float, y: float) -> None:
    """A real mouse click on the chart at data coordinates (x, y)."""
    box = chart.getPlotItem().vb
    point = chart.mapFromScene(box.mapViewToScene(QPointF(x, y)))
    qtbot.mouseClick(chart.viewport(), Qt.MouseButton.LeftButton, pos=point)


def test_run_dialog_profile_colours_nodes_and_fills_charts(qtbot, window, sample_model):
    open_and_wait(qtbot, window, sample_model)
    scene = window.scene
    before, items_before = _brushes(scene), len(scene.items())
    with qtbot.waitSignal(window.profileAdded, timeout=RUN_TIMEOUT_MS):
        dialog = _run_from_dialog(qtbot, window)
    _wait_idle(qtbot, window)
    profile = window.selected_entry().profile
    assert profile.complete and profile.runs_completed == 3 and profile.mode == "exact"
    assert window.profile_list.count() == 1 and window.profile_list.item(0).text().startswith("cpu exact 160x160")
    assert profile.hints and not dialog.isVisible()

    # The graph: the time overlay is on, the same items recoloured, the slowest outlined.
    assert window.overlay_combo.currentData() == "time" and window.scene is scene
    assert not window.overlay_actions["transfer"].isEnabled()  # the CPU reference reports no transfers
    assert len(scene.items()) == items_before
    after = _brushes(scene)
    assert after != before
    slowest = profile.top_nodes(1)[0].node_id
    assert scene.item_for(slowest).brush().color().name() == "#e31a1c"
    assert scene.top_node_ids[0] == slowest and len(scene.top_node_ids) == 10
    assert all(scene.item_for(n).pen().widthF() >= 4 for n in scene.top_node_ids)
    legend = window.view.legend
    assert legend.gradient and legend.kind == "measured" and legend.title.startswith("Time")
    # Switching overlays recolours the same items; compute unit is categorical (CPU here).
    for key in ("macs", "compute_unit", "time"):
        window.set_overlay(key)
        assert len(scene.items()) == items_before and window.scene is scene
    window.set_overlay("compute_unit")
    assert scene.overlay_units == ["CPU"] and legend.kind == "measured"
    window.set_overlay("time")

    # The charts hold the profile's figures.
    panels = window.panels
    assert window.panels_dock.isVisible()
    heights = panels.bar_heights()
    assert sum(len(h) for h in heights.values()) == len(profile.nodes)
    assert sum(float(h.sum()) for h in heights.values()) == pytest.approx(profile.total_node_ms)
    assert set(heights) == set(profile.stage_times_ms)
    assert panels.layer_ids == list(profile.nodes)
    assert panels.top_ids[0] == slowest
    assert list(panels.stage_bars.opts["height"]) == pytest.approx(list(profile.stage_times_ms.values()))
    assert list(panels.op_bars.opts["height"])[0] == pytest.approx(profile.top_op_types(1)[0][1])
    assert panels.hints.topLevelItemCount() == len(profile.hints)
    # Each figure with its own kind: the hints' (weakest of what they use), end-to-end, coverage.
    for row, hint in enumerate(profile.hints):
        assert panels.hints.topLevelItem(row).text(1).endswith(f" {hint['kind']}")
    summary = panels.summary.text()
    assert f"{format_ms(profile.end_to_end.p90_ms)}, {profile.end_to_end.kind})" in summary
    assert f"coverage {profile.coverage:.2f} ({profile.ratio_kinds()['coverage']})" in summary

    # The inspector shows the node's time with its kind.
    window.view.select_node(SELECTED_NODE)
    rows, kinds = window.inspector.rows(), window.inspector.kinds()
    section = next(k.split("/")[0] for k in rows if k.startswith("Profile: cpu exact"))
    timing = profile.nodes[SELECTED_NODE]
    assert rows[f"{section}/Time (median)"] == format_ms(timing.time.median_ms)
    assert kinds[f"{section}/Time (median)"] == kinds[f"{section}/p10 / p90"] == "measured"
    assert rows[f"{section}/Compute unit"] == "CPU"
    assert rows[f"{section}/Group (kernel)"] == "own kernel (ConvTranspose)"
    assert float(rows[f"{section}/Share of total"].split()[0]) == pytest.approx(
        100 * profile.share(SELECTED_NODE), abs=0.01)


def test_clicking_a_bar_selects_the_node_and_back(qtbot, window, sample_model, sample_run):
    open_and_wait(qtbot, window, sample_model)
    entry = sample_run.entries[0]
    window.add_profile(entry.profile, entry.analysis)
    panels = window.panels
    qtbot.waitUntil(lambda: panels.layer_chart.isVisible())
    index = panels.layer_ids.index(SELECTED_NODE)
    _click_chart(qtbot, panels.layer_chart, index, 0.0001)
    assert window.inspector.node_id == SELECTED_NODE
    assert window.scene.selectedItems() == [window.scene.item_for(SELECTED_NODE)]
    assert list(panels.layer_marker.opts["x"]) == [index]
    # Selecting in the graph marks the bar.
    other = panels.layer_ids[3]
    window.view.select_node(other)
    assert panels.highlighted == other and list(panels.layer_marker.opts["x"]) == [3]
    # The top-N chart (horizontal bars, slowest on top) and the hints link to nodes too.
    panels.tabs.setCurrentIndex(1)
    qtbot.waitUntil(lambda: panels.top_chart.isVisible())
    _click_chart(qtbot, panels.top_chart, 0.0001, 0)
    assert window.inspector.node_id == panels.top_ids[0] == entry.profile.top_nodes(1)[0].node_id
    hint = panels.hints.topLevelItem(0)
    child = hint.child(hint.childCount() - 1)
    panels.hints.itemClicked.emit(child, 0)
    assert window.inspector.node_id == child.data(0, Qt.ItemDataRole.UserRole)
    panels._show_hint(hint)  # the hint's text states its evidence (issue 15)
    assert "Evidence: " in panels.hint_text.text() and " runs on " in panels.hint_text.text()


def test_cancel_stops_the_run_and_keeps_earlier_profiles(qtbot, window, sample_model, sample_run):
    open_and_wait(qtbot, window, sample_model)
    window.add_profile(sample_run.entries[0].profile)
    dialog = window.show_run_dialog()
    dialog.runs_spin.setValue(100_000)  # would take many minutes
    with qtbot.waitSignal(window.profileCancelled, timeout=RUN_TIMEOUT_MS):
        with qtbot.waitSignal(dialog.cancel_button.clicked, timeout=RUN_TIMEOUT_MS):
            qtbot.mouseClick(dialog.run_button, Qt.MouseButton.LeftButton)
            # The bar counts the warm-up runs too: wait for two measured runs, else under load the
            # cancel can land right after the warm-ups with nothing measured to keep.
            measured = dialog.warmup_spin.value() + 2
            qtbot.waitUntil(lambda: dialog.progress.value() >= measured, timeout=RUN_TIMEOUT_MS)
            started = time.perf_counter()
            qtbot.mouseClick(dialog.cancel_button, Qt.MouseButton.LeftButton)
    _wait_idle(qtbot, window)
    assert time.perf_counter() - started < 5
    # The runs measured before the cancel are kept, as the CLI keeps them on Ctrl-C: marked incomplete.
    assert len(window.entries) == 2 and window.profile_list.count() == 2 and window.selected_profile == 1
    kept = window.entries[1].profile
    assert not kept.complete and kept.runs_completed >= 1
    assert f"incomplete: {kept.runs_completed} of 100000 runs" in window.entries[1].label
    assert f"after {kept.runs_completed} measured run(s)" in dialog.status.text() and dialog.run_button.isEnabled()
    assert dialog.progress.value() < dialog.progress.maximum()  # the bar stays where the run stopped
    assert window.run_action.isEnabled() and not window.cancel_action.isEnabled()
    assert window.scene.profile is kept and window.has_unsaved_profiles()


def test_closing_the_window_during_a_run_cancels_it(qtbot, settings, sample_model):
    win = MainWindow(settings=settings)
    qtbot.addWidget(win)
    win.show()
    open_and_wait(qtbot, win, sample_model)
    dialog = win.show_run_dialog()
    dialog.runs_spin.setValue(100_000)
    qtbot.mouseClick(dialog.run_button, Qt.MouseButton.LeftButton)
    worker = win.worker
    qtbot.waitUntil(lambda: dialog.progress.value() >= 2, timeout=RUN_TIMEOUT_MS)
    started = time.perf_counter()
    asked = answer_next_message_box(qtbot, "Stop and quit")  # a running profile is not dropped unasked
    win.close()
    assert asked == ["A profile run is in progress. Stop it and quit?"] and not win.isVisible()
    assert isinstance(worker, ProfileProcess)  # one size: the CLI in a child process
    assert worker.isFinished() and worker.cancelled
    assert worker.process.state() == QProcess.ProcessState.NotRunning
    assert win.worker is None and time.perf_counter() - started < 5
    assert not dialog.isVisible()


def test_a_run_finishing_after_another_model_opened_is_not_added(qtbot, window, sample_model):
    from tests.conftest import light_model

    open_and_wait(qtbot, window, sample_model)
    _run_from_dialog(qtbot, window, runs=10)
    window.ask_before_discarding = False  # a script replacing the model (a person is asked: test_daily_use)
    open_and_wait(qtbot, window, light_model("squeezenet"))
    _wait_idle(qtbot, window)
    assert window.entries == [] and "another model" in window.run_dialog.status.text()
    assert window.run_dialog.model_path == window.loaded.path


def test_a_failed_run_says_why_and_keeps_profiles(qtbot, window, sample_model, sample_run, monkeypatch):
    open_and_wait(qtbot, window, sample_model)
    window.add_profile(sample_run.entries[0].profile)
    shown = []
    monkeypatch.setattr(QMessageBox, "critical", staticmethod(lambda parent, title, text, *a: shown.append(text)))
    with qtbot.waitSignal(window.profileFailed, timeout=RUN_TIMEOUT_MS) as failure:
        _run_from_dialog(qtbot, window, sizes="100")  # MobileUNet sizes are multiples of 32
    _wait_idle(qtbot, window)
    assert shown == failure.args and "multiple of 32" in shown[0]
    assert len(window.entries) == 1 and window.selected_profile == 0
    # A bad field is reported in the dialog as it is typed, and Run waits for a good one.
    dialog = window.run_dialog
    dialog.sizes_field.setText("big")
    assert "expected HxW" in dialog.check_label.text() and not dialog.run_button.isEnabled()
    qtbot.mouseClick(dialog.run_button, Qt.MouseButton.LeftButton)
    assert window.worker is None


def test_sweep_draws_latency_against_size(qtbot, window, sample_model):
    open_and_wait(qtbot, window, sample_model)
    _run_from_dialog(qtbot, window, runs=2, warmup=0, sizes="128, 160")
    _wait_idle(qtbot, window)
    assert [e.label for e in window.entries] == ["cpu exact 128x128 1 thread", "cpu exact 160x160 1 thread"]
    assert len(window.sweeps) == 1 and [r["setting"] for r in window.sweeps[0].rows] == ["128x128", "160x160"]
    panels = window.panels
    assert panels.tabs.isTabEnabled(panels.sweep_tab_index)
    x, y = panels.sweep_lines["cpu exact"].getData()
    assert list(x) == [128 * 128, 160 * 160]
    assert list(y) == pytest.approx([r["median_ms"] for r in window.sweeps[0].rows])
    # The 128x128 profile colours the same graph (same node ids); its hints used the 128x128 analysis.
    window.select_profile(0)
    assert window.entries[0].analysis.totals.macs < window.loaded.analysis.totals.macs
    assert window.scene.overlay_range is not None and window.scene.top_node_ids


def test_compare_view_of_a_profile_with_itself_is_all_ones(qtbot, window, sample_model, sample_run):
    open_and_wait(qtbot, window, sample_model)
    profile = sample_run.entries[0].profile
    window.add_profile(profile)
    view = window.show_compare(0, 0)
    qtbot.addWidget(view)
    # Compared in a worker thread, drawn and coloured a slice per event-loop turn.
    qtbot.waitUntil(lambda: view.ready, timeout=LOAD_TIMEOUT_MS)
    timed = [n for n in view.scene.node_ids if n in profile.nodes]
    assert timed and all(view.ratios[n] == 1.0 for n in timed)
    neutral = diverging_color(1.0).name()
    assert {view.scene.item_for(n).brush().color().name() for n in timed} == {neutral}
    rows = view.stage_rows()
    assert set(profile.stage_times_ms) <= set(rows)
    assert {r[2] for r in rows.values()} == {"1.00×"}
    assert view.view.legend.diverging
    # B slower everywhere: every node and stage goes red.
    from dataclasses import replace
    slower = Profile.build(
        model_path=profile.model_path, model_format=profile.model_format, target=profile.target, mode=profile.mode,
        settings=profile.settings, end_to_end_samples=[s * 2 for s in profile.end_to_end.samples_ms],
        profiled_samples=[s * 2 for s in profile.profiled_end_to_end.samples_ms],
        groups=[replace(g, time=g.time.scaled(2.0)) for g in profile.groups],
        nodes=[replace(n, time=n.time.scaled(2.0)) for n in profile.nodes.values()],
        runs_completed=profile.runs_completed, stage_order=list(profile.stage_times_ms))
    window.add_profile(slower)
    view = window.show_compare(0, 1)
    qtbot.addWidget(view)
    qtbot.waitUntil(lambda: view.ready, timeout=LOAD_TIMEOUT_MS)
    assert all(view.ratios[n] == pytest.approx(2.0) for n in timed)
    assert {r[2] for r in view.stage_rows().values()} == {"2.00×"}
    view.view.select_node(SELECTED_NODE)
    assert "2.00×" in view.node_label.text()
    view.set_pair(1, 0)  # another pair: not ready until the graph shows it
    assert not view.ready
    qtbot.waitUntil(lambda: view.ready, timeout=LOAD_TIMEOUT_MS)
    assert all(view.ratios[n] == pytest.approx(0.5) for n in timed)


def test_exports_write_files_that_parse(qtbot, window, sample_model, sample_run, tmp_path):
    open_and_wait(qtbot, window, sample_model)
    entry = sample_run.entries[0]
    window.add_profile(entry.profile, entry.analysis)
    paths = {kind: tmp_path / f"out-{kind}" for kind in ("html", "json", "csv", "trace", "model_explorer")}
    for kind, path in paths.items():
        window.export_profile(kind, str(path))
    html = paths["html"].read_text(encoding="utf-8")
    assert html.startswith("<!DOCTYPE html>") and SELECTED_NODE in html and "measured" in html
    assert Profile.load_json(paths["json"]).to_json_dict() == entry.profile.to_json_dict()
    with paths["csv"].open(encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == len(entry.profile.nodes)
    by_id = {r["id"]: r for r in rows}
    assert float(by_id[SELECTED_NODE]["median_ms"]) == pytest.approx(
        entry.profile.nodes[SELECTED_NODE].time.median_ms, rel=1e-5)
    trace = json.loads(paths["trace"].read_text(encoding="utf-8"))
    assert sum(1 for e in trace["traceEvents"] if e["ph"] == "X" and e["pid"] == 1) == len(entry.profile.groups)
    explorer = json.loads(paths["model_explorer"].read_text(encoding="utf-8"))
    (graph,) = explorer.values()
    assert len(graph["results"]) == len(entry.profile.nodes)
    # With a second profile held, the HTML report puts both side by side.
    window.add_profile(entry.profile, entry.analysis)
    window.select_profile(0)
    window.export_profile("html", str(paths["html"]))
    assert "Targets side by side (2)" in paths["html"].read_text(encoding="utf-8")
    window.export_graph(str(tmp_path / "graph.png"))
    window.export_graph(str(tmp_path / "graph.svg"))
    assert (tmp_path / "graph.png").stat().st_size > 1000 and (tmp_path / "graph.svg").stat().st_size > 1000
    assert all(a.isEnabled() for a in window.export_actions.values())


def test_saved_session_reopens_with_the_same_profiles(qtbot, window, settings, sample_model, sample_run, tmp_path):
    open_and_wait(qtbot, window, sample_model)
    first = sample_run.entries[0].profile
    window.add_profile(first)
    _run_from_dialog(qtbot, window, runs=2, warmup=0, mode="deployed")
    _wait_idle(qtbot, window)
    window.select_profile(0)
    window.set_overlay("compute_unit")
    # The layout is kept too: grouped by stage, the decoder expanded.
    with qtbot.waitSignal(window.modelLoaded, timeout=LOAD_TIMEOUT_MS):
        window.set_grouping("stage")
    decoder = next(g for g, group in window.loaded.groups.items() if group.name == "decoder")
    with qtbot.waitSignal(window.modelLoaded, timeout=LOAD_TIMEOUT_MS):
        window.toggle_group(decoder, collapse=False)
    assert window.loaded.collapsed and decoder not in window.loaded.collapsed
    path = tmp_path / "work.layerscope"
    window.save_session_to(str(path))

    other = MainWindow(settings=settings)
    qtbot.addWidget(other)
    other.show()
    with qtbot.waitSignal(other.sessionOpened, timeout=LOAD_TIMEOUT_MS):
        other.open_session(str(path))
    assert other.loaded.path == str(sample_model.resolve())
    assert [e.label for e in other.entries] == [e.label for e in window.entries] == \
        ["cpu exact 160x160 1 thread", "cpu deployed 160x160 1 thread"]
    assert [e.profile.to_json_dict() for e in other.entries] == [e.profile.to_json_dict() for e in window.entries]
    assert other.selected_profile == 0 and other.overlay_combo.currentData() == "compute_unit"
    assert other.scene.profile is other.entries[0].profile
    assert (other.loaded.grouping, other.loaded.collapsed) == ("stage", window.loaded.collapsed)
    assert other.grouping() == "stage" and other.group_actions["stage"].isChecked()
    other.select_profile(1)
    other.set_overlay("time")
    assert other.view.legend.kind == "measured/attributed"  # deployed: fused kernels split by FLOPs
    other.close()
    # A session of another model replaces this one's profiles (with a node of this model selected).
    from engine.session import Session, save_session
    from tests.conftest import light_model
    other_model = save_session(Session(str(light_model("squeezenet"))), tmp_path / "squeeze.layerscope")
    window.view.select_node(SELECTED_NODE)
    with qtbot.waitSignal(window.sessionOpened, timeout=LOAD_TIMEOUT_MS):
        window.open_session(str(other_model))
    assert window.entries == [] and window.loaded.path.endswith("light_squeezenet.onnx")
    assert window.inspector.node_id is None and window.overlay_combo.currentData() == "none"
    with qtbot.waitSignal(window.sessionOpened, timeout=LOAD_TIMEOUT_MS):
        window.open_session(str(path))
    assert len(window.entries) == 2
    # A broken session file is reported and the open model stays.
    broken = tmp_path / "broken.layerscope"
    broken.write_text("{}", encoding="utf-8")
    window.error_dialogs = False
    with qtbot.waitSignal(window.loadFailed, timeout=LOAD_TIMEOUT_MS) as failure:
        window.open_session(str(broken))
    assert "not a LayerScope session" in failure.args[0] and len(window.entries) == 2


def test_screenshot_with_time_overlay(qtbot, tmp_path, sample_model, sample_run):
    out = tmp_path / "time.png"
    profile = sample_run.entries[0].profile
    slowest = profile.top_nodes(1)[0].node_id  # centred, so the darkest red is on screen
    render_screenshot(str(sample_model), str(out), overlay="time", size=(1400, 900), select=slowest,
                      profile=profile)
    pixels = _pixels(out)
    assert pixels.shape == (900, 1400, 3) and pixels.std() > 20
    red = (pixels[..., 0] > 200) & (pixels[..., 1] < 60) & (pixels[..., 2] < 60)
    assert red.sum() > 300  # the slowest layers, and their bars in the chart


def test_view_command_with_profile(tmp_path, sample_model, sample_run):
    profile_path = sample_run.entries[0].profile.save_json(tmp_path / "p.json")
    out = tmp_path / "view.png"
    env = {k: v for k, v in os.environ.items() if k not in ("DISPLAY", "WAYLAND_DISPLAY", "QT_QPA_PLATFORM")}
    command = [sys.executable, "-m", "gui", "view", str(sample_model), "--screenshot", str(out)]
    result = subprocess.run(command + ["--overlay", "time", "--profile", str(profile_path), "--size", "1000x700"],
                            capture_output=True, text=True, env=env, timeout=120)
    assert result.returncode == 0, result.stderr
    assert _pixels(out).shape == (700, 1000, 3)
    missing = subprocess.run(command + ["--overlay", "time"], capture_output=True, text=True, env=env, timeout=120)
    assert missing.returncode == 2 and "--profile" in missing.stderr


def test_layout_legend_and_inspector_placeholder(qtbot, window, sample_model):
    open_and_wait(qtbot, window, sample_model)
    share = window.view.width() / window.width()
    assert 0.62 <= share <= 0.78, share
    legend, viewport = window.view.legend, window.view.viewport().geometry()
    assert legend.x() < viewport.width() / 3 and legend.geometry().bottom() > viewport.height() * 0.7
    assert legend.height() < 130
    placeholder = window.inspector.topLevelItem(0)
    assert placeholder.text(0) == "Select a node to see its details" and placeholder.isFirstColumnSpanned()
    # Edge width grows with the tensor's bytes (set once, at build time).
    widths = window.scene.edge_widths
    assert min(widths) == EDGE_MIN_WIDTH and max(widths) == EDGE_MAX_WIDTH
    biggest = max(range(len(widths)), key=lambda i: widths[i])
    assert window.scene.edge_item(biggest).pen().widthF() == EDGE_MAX_WIDTH


def test_ui_thread_gap_during_profiling(qtbot, window, sample_model):
    """The longest event-loop gap while a profile runs (issue 6 budget: 100 ms); printed for the note."""
    open_and_wait(qtbot, window, sample_model)
    window.show_run_dialog().hide()
    time.sleep(0.3)  # let the background import of ONNX Runtime finish, as while a person fills the dialog
    # In the full suite this process holds ~370,000 objects left by earlier tests, and one full
    # garbage collection of them takes ~230 ms; whether one lands inside the window below depended
    # on how much the earlier tests allocated.  Collect now: what is measured is the app's gap.
    gc.collect()
    gaps, last = [], [time.perf_counter()]

    def tick():
        now = time.perf_counter()
        gaps.append(now - last[0])
        last[0] = now

    timer = QTimer()
    timer.timeout.connect(tick)
    timer.start(10)
    started = time.perf_counter()
    with qtbot.waitSignal(window.profileAdded, timeout=RUN_TIMEOUT_MS):
        _run_from_dialog(qtbot, window, runs=30, warmup=2)
    _wait_idle(qtbot, window)
    qtbot.wait(200)  # the charts' first paint is part of it
    timer.stop()
    longest, elapsed = max(gaps) * 1000, (time.perf_counter() - started) * 1000
    print(f"\nUI-thread gap during a 30-run profile of the sample ({elapsed / 1000:.2f} s): "
          f"max {longest:.0f} ms, median {np.median(gaps) * 1000:.1f} ms over {len(gaps)} ticks")
    # A ratio to the job itself, which a loaded machine slows alike: profiling on the UI thread would
    # make the gap the whole job; here it is ~0.05 of it (the 100 ms budget: benchmarks/).
    assert longest < 0.3 * elapsed


def test_device_agent_typed_as_address_profiles_with_transfers(qtbot, window, settings, sample_model, tmp_path):
    """A real agent process on loopback, reached by typing its ws:// address in the Run dialog."""
    pytest.importorskip("websockets")
    from tests.bridge_conformance.bridge_wire import start_agent_process, stop_agent_process

    agent = start_agent_process(tmp_path)
    try:
        open_and_wait(qtbot, window, sample_model)
        dialog = window.show_run_dialog()
        dialog.target_combo.setEditText(agent.address)
        assert dialog.target_name() == agent.address
        with qtbot.waitSignal(window.profileAdded, timeout=RUN_TIMEOUT_MS):
            _run_from_dialog(qtbot, window, runs=2, warmup=1)
        _wait_idle(qtbot, window)
    finally:
        stop_agent_process(agent)
    profile = window.selected_entry().profile
    assert profile.target["name"] == "bridge" and profile.target["address"] == agent.address
    assert profile.transfers and profile.hints
    # Transfers (estimated) colour the nodes that receive them; the inspector lists them with their kind.
    assert window.overlay_actions["transfer"].isEnabled()
    window.set_overlay("transfer")
    assert window.view.legend.kind == "estimated" and window.scene.top_node_ids
    receiver = next(t.to_node for t in profile.transfers if t.kind == "input")
    window.view.select_node(receiver)
    kinds = window.inspector.kinds()
    assert any(k.endswith("Transfer (input)") and v == "estimated" for k, v in kinds.items())
    # The address is offered the next time, and the session keeps the transfers.
    other_dialog = MainWindow(settings=settings).show_run_dialog()
    qtbot.addWidget(other_dialog.parent())
    assert other_dialog.target_combo.findData(agent.address) >= 0
    path = window.save_session_to(str(tmp_path / "device.layerscope"))
    from engine.session import load_session
    assert load_session(path).profiles[0].transfers == profile.transfers


def test_charts_of_a_large_profile_fill_after_the_graph_is_recoloured(qtbot, window, sample_model, sample_run):
    """Profiles of DEFER_CHARTS_NODES+ nodes (20,000-node models) fill the charts a moment later, so
    the recolour and the chart fill each get an event-loop pass with their paint."""
    open_and_wait(qtbot, window, sample_model)
    profile = sample_run.entries[0].profile
    window.DEFER_CHARTS_NODES = 1  # the sample's profile counts as large here
    window.set_overlay("time")
    window.view.select_node(SELECTED_NODE)
    started = time.perf_counter()
    window.add_profile(profile)
    assert window.scene.profile is profile and window.scene.top_node_ids  # recoloured at once
    assert window.panels.profile is None  # the charts come next
    qtbot.waitUntil(lambda: window.panels.profile is profile, timeout=2000)
    assert len(window.panels.layer_ids) == len(profile.nodes)  # first the per-layer chart
    # then the other tabs, and the selected node's bars marked again
    qtbot.waitUntil(lambda: window.panels.highlighted == SELECTED_NODE, timeout=2000)
    fill_ms = (time.perf_counter() - started) * 1000  # the whole deferred fill, on this machine now
    assert window.panels.top_ids[0] == max(profile.nodes.values(), key=lambda n: n.time.median_ms).node_id
    # A profile selected again before the charts filled is not overwritten by the stale fill: waited
    # for twice as long as a whole fill just took, however slow the machine.
    window.add_profile(profile)
    window.select_profile(-1)
    qtbot.wait(int(2 * fill_ms) + 20)
    assert window.panels.profile is None
