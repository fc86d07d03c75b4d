"""The main window's profiles: the session's list of profiles, the selected one, numerics,
running a profile and comparing two (a mixin of gui.app.MainWindow)."""
from __future__ import annotations

import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Optional

from PySide6.QtCore import Qt, QTimer
from PySide6.QtWidgets import QListWidgetItem, QMessageBox

from engine.compare import profile_label
from engine.free_memory import is_memory_refusal
from engine.profile import Profile
from engine.session import profile_analysis, profiled_at
from gui.graph_view import OVERLAYS, format_ms
from gui.memory_question import read_anyway_question
from gui import numerics_view

if TYPE_CHECKING:  # gui.run_dialog is imported by the first run, not before the first paint
    from gui.run_dialog import ProfileWorker, RunDialog, RunRequest, RunResult


def _main_module():
    """gui.app, imported when first needed: it imports this module (MainWindow mixes this class in)."""
    from gui import app
    return app


@dataclass
class ProfileEntry:
    """One profile in the session, its list label, and (lazily) the analysis at its input shapes."""

    profile: Profile
    label: str
    analysis: object = None  # engine.analysis.ModelAnalysis; None until needed (reports, hints)


class ProfilesMixin:
    """gui.app.MainWindow's profile management."""

    # --- the session: profiles of this model -----------------------------------------------
    def selected_entry(self) -> Optional[ProfileEntry]:
        return self.entries[self.selected_profile] if 0 <= self.selected_profile < len(self.entries) else None

    def _unique_label(self, profile: Profile) -> str:
        base = profile_label(profile)
        if not profile.complete:  # stopped early (cancelled, or the target failed): say how far it got
            planned = profile.settings.get("runs")
            of = f" of {planned}" if planned else ""
            base += f" (incomplete: {profile.runs_completed}{of} runs)"
        taken = {entry.label for entry in self.entries}
        label, count = base, 1
        while label in taken:
            count += 1
            label = f"{base} #{count}"
        return label

    def add_profile(self, profile: Profile, analysis=None, select: bool = True) -> int:
        """Add a finished profile to the session (and the list); returns its index."""
        entry = ProfileEntry(profile, self._unique_label(profile), analysis)
        self._clear_outcome_message()  # (a finished run says what it added after this)
        self.entries.append(entry)
        e2e = profile.end_to_end
        item = QListWidgetItem(f"{entry.label} — {format_ms(e2e.median_ms)}" if e2e else entry.label)
        item.setToolTip(f"{entry.label}\n{profile.target.get('device', '')} {profile.target.get('chip', '')}\n"
                        f"{profile.runs_completed} runs · taken {profile.created_at}\n{profile.model_path}")
        self.profile_list.addItem(item)
        index = len(self.entries) - 1
        if select:
            self.select_profile(index)
        self._update_profile_actions()
        self.profileAdded.emit(index)
        return index

    def select_profile(self, index: int) -> None:
        """Show profile `index` (-1: none) in the overlay, inspector and charts."""
        if not -1 <= index < len(self.entries):
            raise IndexError(f"no profile {index}; the session has {len(self.entries)}")
        self.selected_profile = index
        if self.profile_list.currentRow() != index:
            self.profile_list.blockSignals(True)
            self.profile_list.setCurrentRow(index)
            self.profile_list.blockSignals(False)
        entry = self.selected_entry()
        profile = entry.profile if entry else None
        if self.scene is not None:
            self.scene.set_profile(profile)
            self.view.update_legend()
        label = entry.label if entry else ""
        if profile is not None and len(profile.nodes) >= self.DEFER_CHARTS_NODES:
            # On 20,000 nodes the recolour, the charts' dock appearing (the graph view shrinks,
            # the charts' axes paint) and the charts' filling each take 30-40 ms plus a paint of
            # 30-50 ms.  A zero timer runs in the same pass of the event loop as the paint before
            # it (measured: one 140 ms stall), so the steps are 50 ms apart: the window paints
            # and handles what came meanwhile between them.
            QTimer.singleShot(50, self, self._show_panels)
            QTimer.singleShot(100, self, lambda: self._fill_charts(entry, profile, label))
            # (the charts are made, when not yet, and filled in steps of their own, see _fill_charts)
        else:
            self.panels.set_profile(profile, label)
            if profile is not None:
                self._show_panels()
        self.panels.set_sweeps(self.sweeps)
        node_id = self.inspector.node_id
        if node_id:
            self._on_node_selected(node_id)
        self._update_profile_actions()
        self._show_analysis_of(entry)
        self.profileSelected.emit(index)

    def _show_analysis_of(self, entry: Optional[ProfileEntry]) -> None:
        """Draw the static figures (box labels, MACs/bytes/intensity overlays, inspector, summary) of
        the input size `entry` ran at: a sweep's 224 profile beside the 224 model's shapes and MACs.

        A profile at another size than the one drawn is laid out again by a worker (the analysis
        at its size is made there when not known yet); the profiles and selection stay.
        """
        loaded, opened = self.loaded, self._opened_analysis
        if loaded is None or opened is None:
            return
        known = opened if entry is None else entry.analysis
        if known is None and profiled_at(entry.profile, opened):
            known = entry.analysis = opened
        if known is loaded.analysis:
            return

        def work(progress):
            analysis = known
            if analysis is None:
                progress("Analysing at the profile's input size…")
                analysis = profile_analysis(loaded.path, entry.profile, opened)
            at_size = replace(loaded, analysis=analysis, producers=analysis.graph.producers())
            return analysis, _main_module().relayout(at_size, loaded.include_constants, progress)

        def done(result) -> None:
            analysis, relaid = result
            if entry is not None:
                entry.analysis = analysis
            if self.loaded is not None and self.loaded.model is loaded.model and self.selected_entry() is entry:
                self._on_loaded(relaid, keep_view=True)

        self._start_task(work, "Showing the figures at the profile's input size", done)

    def _show_panels(self) -> None:
        """The charts' dock, shown with the first profile (a person may close it afterwards)."""
        if self.selected_entry() is not None and not self.panels_dock.isVisible():
            self.panels_dock.show()
            self.resizeDocks([self.panels_dock], [int(self.height() * 0.3)], Qt.Orientation.Vertical)

    def _fill_charts(self, entry, profile, label: str, steps=None) -> None:
        """The deferred part of select_profile for large profiles, one step per call 50 ms apart
        (the charts made a tab at a time if this is the first profile, the per-layer chart filled,
        then the other tabs); dropped if another profile was selected since."""
        if self.selected_entry() is not entry:
            return
        steps = steps or self._chart_steps(profile, label)
        if next(steps, StopIteration) is not StopIteration:
            QTimer.singleShot(50, self, lambda: self._fill_charts(entry, profile, label, steps))
        elif self.inspector.node_id:
            self.panels.highlight_node(self.inspector.node_id)

    def _chart_steps(self, profile, label: str):
        yield from self.panels.build_steps()  # (none once the charts exist)
        yield from self.panels.real().profile_steps(profile, label)

    def _profile_row_changed(self, row: int) -> None:
        if row != self.selected_profile and -1 <= row < len(self.entries):
            self.select_profile(row)

    def _clear_outcome_message(self) -> None:
        """The status bar's "Added 2 profile(s)", "Saved x.layerscope", "Cancelled…" describe the
        profiles as they were: once they change, the message is stale.  Progress of a running
        job stays."""
        if self.worker is None and not self._tasks and self._pending_build is None:
            self.progress_label.setText("")

    def remove_profile(self, index: int) -> None:
        if not 0 <= index < len(self.entries):
            return
        self._clear_outcome_message()
        del self.entries[index]
        self.profile_list.blockSignals(True)
        self.profile_list.takeItem(index)
        self.profile_list.blockSignals(False)
        self.select_profile(min(index, len(self.entries) - 1))
        if not self.entries and OVERLAYS[self.overlay_combo.currentData()] is not None \
                and OVERLAYS[self.overlay_combo.currentData()].needs_profile:
            self.set_overlay("none")

    def _clear_profiles(self) -> None:
        self.entries, self.sweeps = [], []
        self._saved_state = self._session_state()
        self.profile_list.clear()
        self.selected_profile = -1
        self.panels.set_profile(None)
        self.panels.set_sweeps([])
        if self.compare_view is not None:
            self.compare_view.close()
            self.compare_view = None
        key = self.overlay_combo.currentData()
        if OVERLAYS.get(key) is not None and OVERLAYS[key].needs_profile:
            self.overlay_combo.blockSignals(True)
            self.overlay_combo.setCurrentIndex(self.overlay_combo.findData("none"))
            self.overlay_combo.blockSignals(False)
            for k, action in self.overlay_actions.items():
                action.setChecked(k == "none")
        self._update_profile_actions()

    def _update_profile_actions(self) -> None:
        has_model = self.loaded is not None
        has_profile = self.selected_entry() is not None
        running = self.worker is not None
        self.run_action.setEnabled(has_model and not running)
        self.run_button.setEnabled(has_model and not running)
        self.cancel_action.setEnabled(running)
        # Two profiles at least: one compared with itself says nothing.
        self.compare_action.setEnabled(len(self.entries) >= 2)
        self.compare_button.setEnabled(len(self.entries) >= 2)
        self.remove_action.setEnabled(has_profile and not running)
        self.remove_button.setEnabled(has_profile and not running)
        for action in self.export_actions.values():
            action.setEnabled(has_profile)
        self.save_session_action.setEnabled(has_model)
        self.import_profile_action.setEnabled(has_model)
        self.convert_action.setEnabled(has_model and getattr(self.loaded.model, "format", "") == "onnx")
        model = self.overlay_combo.model()
        entry = self.selected_entry()
        self.numerics_action.setEnabled(self.convert_action.isEnabled())
        model.item(self.overlay_combo.findData(numerics_view.OVERLAY_KEY)).setEnabled(
            self.numerics_result() is not None)
        for key, spec in OVERLAYS.items():
            if spec is not None and spec.needs_profile:
                # Transfers exist only where the target reports them (bridge targets).
                usable = has_profile and (key != "transfer" or bool(getattr(entry.profile, "transfers", ())))
                model.item(self.overlay_combo.findData(key)).setEnabled(usable)
                self.overlay_actions[key].setEnabled(usable)

    # --- numerics (gui.numerics_view) ------------------------------------------------------
    def numerics_result(self):
        """The last numerics result of the open model (None: none, or it was of another model)."""
        result = getattr(self, "_numerics", None)
        if result is None or self.loaded is None or Path(result.model_path) != Path(self.loaded.path):
            return None
        return result

    def show_numerics_dialog(self) -> Optional[numerics_view.NumericsDialog]:
        if self.loaded is None:
            return None
        dialog = numerics_view.NumericsDialog(self.loaded.path, self.loaded.analysis.totals.macs, self)
        dialog.resultReady.connect(self._on_numerics)
        dialog.setAttribute(Qt.WidgetAttribute.WA_DeleteOnClose)
        dialog.show()
        self.numerics_dialog = dialog
        return dialog

    def _on_numerics(self, result) -> None:
        self._numerics = result
        self._update_profile_actions()
        self.set_overlay(numerics_view.OVERLAY_KEY)
        if self.inspector.node_id:
            self._on_node_selected(self.inspector.node_id)

    def _show_numerics_overlay(self) -> None:
        index = self.overlay_combo.findData(numerics_view.OVERLAY_KEY)
        if self.overlay_combo.currentIndex() != index:
            self.overlay_combo.setCurrentIndex(index)  # comes back here through the signal
            return
        for action in self.overlay_actions.values():
            action.setChecked(False)
        result = self.numerics_result()
        if self.scene is not None and result is not None:
            numerics_view.show_overlay(self.view, result)

    def analysis_for(self, entry: ProfileEntry):
        """The static analysis at the profile's input shapes (reports join it by node id); cached."""
        if entry.analysis is None:
            entry.analysis = profile_analysis(self.loaded.path, entry.profile,
                                              self._opened_analysis or self.loaded.analysis)
        return entry.analysis

    # --- profiling ------------------------------------------------------------------------
    def show_run_dialog(self) -> RunDialog:
        if self.run_dialog is None:
            from gui.run_dialog import RunDialog

            self.panels.real()  # the charts a run will fill: built now, not when its result arrives
            # After the charts, not before: their ~650 signal connections each wait for the GIL
            # the importing thread holds (1.8-2.3 s for the dialog's first opening, 0.2 s alone).
            _main_module()._warm_profiling_imports()
            remembered = self.settings.value("bridgeTargets", []) or []
            if isinstance(remembered, str):
                remembered = [remembered]
            self.run_dialog = RunDialog(self, tuple(str(t) for t in remembered))
            self.run_dialog.runRequested.connect(self.start_profile)
            self.run_dialog.cancelRequested.connect(self.cancel_profile)
        self._show_model_in_run_dialog()
        self.run_dialog.show()
        self.run_dialog.raise_()
        return self.run_dialog

    def _show_model_in_run_dialog(self) -> None:
        """The Run dialog checks its sizes against the open model's inputs (a sample can be resized)."""
        loaded = self.loaded
        if loaded is None:
            self.run_dialog.set_model("")
            return
        graph = loaded.model.main_graph
        inputs = tuple((name, graph.value_type(name).shape if graph.value_type(name) is not None else None)
                       for name in graph.inputs)
        self.run_dialog.set_model(loaded.path, inputs, "layerscope.sample" in (loaded.model.metadata or {}),
                                  loaded.model.format)

    def start_profile(self, request: RunRequest):
        """Profile in a child process (one size) or a worker thread (a sweep); results come back by signals.

        Returns the ProfileProcess / ProfileWorker, or None when a run is already going.
        """
        if self.worker is not None or self.loaded is None:
            return None
        from gui.run_dialog import make_profile_runner

        worker = make_profile_runner(request, self.loaded.analysis, self)
        self.worker = worker
        worker.progressed.connect(self._on_profile_progress)
        worker.succeeded.connect(self._on_profiled)
        worker.failed.connect(self._on_profile_failed)
        worker.finished.connect(lambda w=worker: self._on_worker_finished(w))
        if self.run_dialog is not None:
            self.run_dialog.set_running(True)
        self.run_progress.setRange(0, 0)
        self.run_progress.show()
        self.progress_label.setText("Profiling…")
        self._update_profile_actions()
        worker.start()
        return worker

    def cancel_profile(self) -> None:
        if self.worker is not None:
            self.worker.cancel()
            self.progress_label.setText("Cancelling…")

    def _on_profile_progress(self, done: int, total: int, message: str) -> None:
        if total > 0:
            self.run_progress.setRange(0, total)
            self.run_progress.setValue(min(done, total))
        self.progress_label.setText(f"Profiling: {message}")
        if self.run_dialog is not None:
            self.run_dialog.show_progress(done, total, message)

    def _on_profiled(self, result: RunResult) -> None:
        worker = self.sender()
        request = getattr(worker, "request", None)
        if request is not None and (self.loaded is None or request.model_path != self.loaded.path):
            message = "The profile finished after another model was opened: it was not added."
            self.progress_label.setText(message)
            if self.run_dialog is not None:
                self.run_dialog.show_finished(message)
            return
        if result.sweep is not None:
            self.sweeps.append(result.sweep)
        first_new = len(self.entries)
        for index, entry in enumerate(result.entries):
            self.add_profile(entry.profile, entry.analysis, select=index == len(result.entries) - 1)
        if result.entries and result.target != "cpu":
            self._remember_target(result.target)
        if result.entries:
            key = self.overlay_combo.currentData()
            if OVERLAYS.get(key) is None or not OVERLAYS[key].needs_profile:
                self.set_overlay("time")  # what the person ran the profile for
        elif result.sweep is not None:
            self.panels.set_sweeps(self.sweeps)
        if result.cancelled:
            partial = [e.profile for e in result.entries if not e.profile.complete]
            finished = len(result.entries) - len(partial)
            if partial:
                message = (f"Cancelled after {partial[0].runs_completed} measured run(s): kept as an "
                           "incomplete profile" + (f", with {finished} finished one(s)" if finished else "") + ".")
            elif result.entries:
                message = f"Cancelled; {finished} finished profile(s) kept."
            else:
                message = "Cancelled before any run was measured; nothing was added, earlier profiles are kept."
            if self.run_dialog is not None:
                self.run_dialog.show_finished(message, complete=False)
            self.progress_label.setText(message)
            self.profileCancelled.emit()
            return
        added = len(self.entries) - first_new
        message = f"Added {added} profile(s)" + (" and a sweep" if result.sweep is not None else "")
        self.progress_label.setText(message)
        if self.run_dialog is not None:
            self.run_dialog.show_finished(message)
            self.run_dialog.hide()

    def _on_profile_failed(self, message: str) -> None:
        if self.run_dialog is not None:
            self.run_dialog.show_finished(f"Failed: {message}", complete=False)  # not a full bar
        self.progress_label.setText("Profiling failed")
        request = getattr(self.sender(), "request", None)
        if self.error_dialogs and request is not None and is_memory_refusal(message):
            self._ask_to_run_anyway(message, request)
        elif self.error_dialogs:
            QMessageBox.critical(self.run_dialog if self.run_dialog and self.run_dialog.isVisible() else self,
                                 "Profiling failed", message)
        self.profileFailed.emit(message)

    def _ask_to_run_anyway(self, message: str, request) -> None:
        """The weights exceed the free memory (engine.free_memory): the person may know better (swap,
        memory about to be freed) and run it anyway, as `layerscope profile --ignore-memory-check`."""
        box, anyway = read_anyway_question(
            self.run_dialog if self.run_dialog and self.run_dialog.isVisible() else self, message,
            "Run anyway reads all the weights into memory: the computer may swap, or the profiler be stopped "
            "by the system.", "Run anyway")
        box.exec()
        if box.clickedButton() is anyway:
            again = replace(request, settings=request.settings.replace(ignore_memory_check=True))
            QTimer.singleShot(0, lambda: self.start_profile(again))  # once this run's worker has finished

    def _on_worker_finished(self, worker: ProfileWorker) -> None:
        if self.worker is worker:
            self.worker = None
        worker.deleteLater()
        self.run_progress.hide()
        self._update_profile_actions()

    def _remember_target(self, target: str) -> None:
        remembered = self.settings.value("bridgeTargets", []) or []
        if isinstance(remembered, str):
            remembered = [remembered]
        self.settings.setValue("bridgeTargets", [target] + [t for t in remembered if t != target][:9])

    # --- compare --------------------------------------------------------------------------
    def show_compare(self, a: Optional[int] = None, b: Optional[int] = None):
        """Open the compare view on profiles a and b (default: the previous profile vs the selected one).

        Returns the view; or None when the open model is grouped: the compare view is node
        for node, so the ungrouped layout is made first, by a worker, and the view opens when
        it is ready (`self.compare_view`).
        """
        if self.loaded is None or not self.entries:
            return None
        if b is None:
            b = self.selected_profile if self.selected_profile >= 0 else len(self.entries) - 1
        if a is None:
            a = b - 1 if b > 0 else (1 if len(self.entries) > 1 else 0)
        if self.compare_view is not None:
            self.compare_view.close()
            self.compare_view = None
        loaded = self.loaded
        if loaded.groups and loaded.collapsed:
            def open_when_laid_out(ungrouped: "gui.app.LoadedModel") -> None:
                if self.loaded is not None and ungrouped.model is self.loaded.model:  # still the open model
                    self._open_compare(ungrouped, a, b)

            self._start_task(lambda progress: _main_module().relayout(loaded, loaded.include_constants, progress, grouping="none"),
                             "Laying out every node for the comparison", open_when_laid_out)
            return None
        return self._open_compare(loaded, a, b)

    def _open_compare(self, loaded: "gui.app.LoadedModel", a: int, b: int):
        from gui.compare_view import CompareView

        if self.compare_view is not None:
            self.compare_view.close()
        self.compare_view = CompareView(loaded, [(e.label, e.profile) for e in self.entries], self, a, b)
        # The same path as search and chart bars: a node hidden in collapsed groups opens them.
        self.compare_view.nodeSelected.connect(self.select_node)
        self.compare_view.show()
        return self.compare_view
