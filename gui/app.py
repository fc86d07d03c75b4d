"""The LayerScope main window and the `run_app` entry point used by `layerscope [MODEL]`.

Opening a model (import, analysis, layout) runs in a worker thread of the
global QThreadPool; the UI thread only builds the scene from the finished
layout.  A file that cannot be opened shows the importer's message and leaves
the current model open.

Profiling (Profile > Run…) runs the CLI in a child process (`gui.run_dialog.ProfileProcess`), or a sweep
in a `ProfileWorker` thread.
The window keeps the session: the model and every profile taken of it
(`ProfileEntry`, listed in the Profiles dock by target, mode and size) plus
sweep results; the selected profile drives the time overlay, the inspector's
profile section and the chart panels.  Sessions are saved and reopened with
`engine.session`; exports call `engine.report` and `Profile.save_json`.
"""
from __future__ import annotations

import os
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Optional

from PySide6.QtCore import QObject, QRunnable, QSettings, Qt, QThreadPool, QTimer, Signal
from PySide6.QtWidgets import QApplication, QDialog, QDockWidget, QFileDialog, QMainWindow, QMessageBox

from engine.inspect import human_bytes, human_count
from engine.ir import ModelLoadError
from engine.layout import GROUPINGS
from engine.profile import Profile
from engine.session import Session, SessionFormatError, SweepResult, profile_analysis
from gui.graph_drawing import forget_text_matches
from gui.graph_view import OVERLAYS, GraphScene, GraphView, build_in_slices, prepare_scene_data, retire_scene
from gui import numerics_view
from gui.inspector import Inspector
from gui.responsive import (free_in_background, hold_gc, release_gc, shorten_gil_switch_interval, start_helper_process,
                             stop_helper_process)
from gui.deferred_panels import DeferredProfilePanels
from gui.app_menus import APP_NAME, MODEL_FILTER, MenusMixin
from gui.app_profiles import ProfileEntry, ProfilesMixin  # noqa: F401 (ProfileEntry: imported from here)
from gui.app_exports import ExportsMixin
from gui.subgraphs import SubgraphChooser

if TYPE_CHECKING:  # gui.run_dialog is imported by the first run (Profile > Run…), not before the first paint
    from gui.run_dialog import ProfileWorker, RunDialog




@dataclass
class LoadedModel:
    """One opened model with everything the views need, built off the UI thread."""

    path: str
    model: object  # engine.ir.Model
    analysis: object  # engine.analysis.ModelAnalysis
    layout: object  # engine.layout.GraphLayout
    include_constants: bool = False
    producers: dict = field(default_factory=dict)  # value name -> Node
    timings: dict = field(default_factory=dict)  # step -> seconds
    scene_data: object = None  # gui.graph_view.SceneData: labels, colours, edge widths (made by the worker)
    grouping: str = "none"  # "none", "stage" or "namespace" (engine.layout.GROUPINGS)
    groups: dict = field(default_factory=dict)  # group id -> engine.layout.NodeGroup
    collapsed: frozenset = frozenset()  # ids of the groups drawn as one box
    note: str = ""  # something the person should know about this layout (e.g. a grouping fallback)
    # engine.folded_layout.FoldedLayouts of a namespace grouping: every group laid out once, so
    # opening or closing one lays out at most that group (shared by the relayouts of this model).
    folded_layouts: object = None
    graph_index: int = 0  # which of the model's graphs is shown (a TFLite subgraph; gui.subgraphs)


def load_model(path: str, include_constants: bool = False, progress=None, grouping: str = "none",
               collapsed: Optional[frozenset] = None, graph_index: int = 0) -> LoadedModel:
    """Import, analyse and lay out `path`: the engine calls the worker makes (no Qt objects).

    With a `grouping` other than "none", the groups in `collapsed` are drawn collapsed (None:
    every group, an overview to expand).
    """
    from engine.analysis import analyze
    from importers import open_model

    timings = {}
    start = time.perf_counter()
    if progress:
        progress("Reading model…")
    model = open_model(path)
    timings["import"] = time.perf_counter() - start
    if progress:
        progress("Analysing…")
    start = time.perf_counter()
    analysis = analyze(model, graph_index)
    timings["analysis"] = time.perf_counter() - start
    loaded = LoadedModel(str(path), model, analysis, None, include_constants, analysis.graph.producers(), timings,
                         graph_index=graph_index)
    if grouping == "none" and collapsed is None and graph_index == 0:
        from gui.folded_groups import open_folded
        folded = open_folded(loaded, include_constants, progress)
        if folded is not None:
            return folded
    return relayout(loaded, include_constants, progress, grouping, collapsed)


def relayout(loaded: LoadedModel, include_constants: bool, progress=None, grouping: Optional[str] = None,
             collapsed: Optional[frozenset] = None) -> LoadedModel:
    """Lay `loaded` out again: constants shown or not, another grouping, other groups collapsed.

    `grouping` None keeps the current one; a new grouping starts with every group collapsed (by
    namespace, a model above the fold threshold: as it opens, `engine.grouping.folded_start`).
    `collapsed` None keeps the current collapsed groups.  A model without namespaces grouped
    "by namespace" is grouped by stage (the design's fallback), and `note` says so.
    """
    from engine.grouping import folded_start, opens_folded
    from engine.layout import layout_graph, node_groups

    note = ""
    if grouping is None or grouping == loaded.grouping:
        grouping, groups = loaded.grouping, loaded.groups
        collapsed = loaded.collapsed if collapsed is None else collapsed
    else:
        if progress:
            progress("Grouping…")
        groups = node_groups(loaded.analysis, grouping)
        if grouping == "namespace" and not groups:
            note = "This model has no namespaces: grouped by stage instead."
            grouping, groups = "stage", node_groups(loaded.analysis, "stage")
        if collapsed is None:  # a big model grouped by namespace starts as its first open does
            collapsed = folded_start(groups, loaded.analysis) if grouping == "namespace" and \
                opens_folded(loaded.analysis) else frozenset(groups)
    collapsed = frozenset(g for g in collapsed if g in groups)
    if progress:
        progress("Laying out…")
    start = time.perf_counter()
    folded = None
    if grouping == "namespace":  # nested frames, a group laid out at a time (gui.folded_groups)
        from gui.folded_groups import folded_layouts
        folded = folded_layouts(loaded, groups, include_constants)
        layout = folded.compose(collapsed)
    else:
        layout = layout_graph(loaded.analysis, include_constants=include_constants, groups=groups,
                              collapsed=collapsed)
    timings = dict(loaded.timings, layout=time.perf_counter() - start)
    result = LoadedModel(loaded.path, loaded.model, loaded.analysis, layout, include_constants,
                         loaded.producers, timings, None, grouping, groups, collapsed, note, folded,
                         graph_index=loaded.graph_index)
    start = time.perf_counter()
    if folded is not None:  # kept per composed layout: a group opened again is drawn from them
        from gui.folded_groups import folded_scene_data
        result.scene_data = folded_scene_data(result)
    else:
        result.scene_data = prepare_scene_data(result)
    result.timings["scene_data"] = time.perf_counter() - start
    return result


class _TaskSignals(QObject):
    progress = Signal(str)
    finished = Signal(object)
    failed = Signal(str)


class _LoadTask(QRunnable):
    """Runs `function(progress=...)` in the thread pool; reports through queued signals."""

    def __init__(self, function):
        super().__init__()
        self.function = function
        self.signals = _TaskSignals()
        self.setAutoDelete(True)

    def run(self) -> None:
        try:
            result = self.function(progress=self.signals.progress.emit)
        except (ModelLoadError, SessionFormatError) as exc:
            self.signals.failed.emit(str(exc))
        except Exception as exc:  # an engine bug must not kill the app: say what happened
            self.signals.failed.emit(f"unexpected {type(exc).__name__} while opening: {exc}")
        else:
            self.signals.finished.emit(result)


def _warm_profiling_imports() -> None:
    """Import ONNX Runtime and the CPU target in the background while the Run dialog is filled in.

    Only a sweep runs ONNX Runtime in this process (one size runs the CLI in a child process).
    A first `import onnxruntime` holds the GIL for tens of milliseconds (C extension
    initialisation); done here, it does not stall the window in the middle of the first sweep.
    """
    def work():
        try:
            import engine.targets.cpu  # noqa: F401
            import engine.sweep  # noqa: F401 (imported for its side effect: loaded)
        except Exception:  # the run itself will report what is missing
            pass

    threading.Thread(target=work, name="layerscope-warm-imports", daemon=True).start()


def is_model_package(path) -> bool:
    """A folder that is a model (an .mlpackage: its Manifest.json), opened as one file."""
    from importers import coreml

    return Path(path).is_dir() and coreml.sniff(Path(path))


class ModelFileDialog(QFileDialog):
    """File > Open.  A Core ML package is a folder: macOS's own dialog treats it as one file;
    elsewhere Qt's dialog would walk into it, so a selected folder that is a package is
    accepted as the model instead (`chosen_path`)."""

    def __init__(self, parent, start: str = ""):
        super().__init__(parent, "Open model", start, MODEL_FILTER)
        self.setFileMode(QFileDialog.FileMode.ExistingFile)
        self.setAcceptMode(QFileDialog.AcceptMode.AcceptOpen)
        if sys.platform != "darwin":  # our accept() runs only in Qt's own dialog
            self.setOption(QFileDialog.Option.DontUseNativeDialog)
        self._package: Optional[str] = None

    def accept(self) -> None:
        chosen = self.selectedFiles()
        if len(chosen) == 1 and is_model_package(chosen[0]):
            self._package = chosen[0]
            QDialog.accept(self)  # not QFileDialog.accept, which would open the folder
            return
        self._package = None
        super().accept()

    def chosen_path(self) -> str:
        if self._package:
            return self._package
        files = self.selectedFiles()
        return files[0] if files and self.result() == QDialog.DialogCode.Accepted else ""


class MainWindow(MenusMixin, ProfilesMixin, ExportsMixin, QMainWindow):
    modelLoaded = Signal(str)  # path
    loadFailed = Signal(str)  # message shown to the person
    profileAdded = Signal(int)  # index of the new profile in the session
    profileFailed = Signal(str)  # message shown to the person
    profileCancelled = Signal()
    profileSelected = Signal(int)  # -1: none
    sessionOpened = Signal(str)  # path

    # UI-thread time per scene-building turn (seconds).  The longest event-loop gap while a model
    # is drawn came out at about twice the slice plus the paint of the old scene, so keep it small.
    BUILD_SLICE = 0.02
    # Profiles of this many nodes or more show the charts' dock and fill the charts in later
    # passes of the event loop than the graph's recolour (see select_profile).
    DEFER_CHARTS_NODES = 5000

    def __init__(self, settings: Optional[QSettings] = None, parent=None, error_dialogs: bool = True,
                 helper_process: bool = True):
        super().__init__(parent)
        # False for offscreen rendering: a failure is reported through loadFailed only.
        self.error_dialogs = error_dialogs
        self.helper_process = helper_process
        # Workers run Python beside this thread (opening, grouping, freeing): hand the GIL back to it
        # within 1 ms, not Python's 5 ms per hand-over (gui.responsive).
        shorten_gil_switch_interval()
        if helper_process:
            # Shape inference and layout of large graphs in a warm process of its own: their C++
            # calls hold the GIL and would freeze this thread while a worker opens the model.
            start_helper_process()
        self.settings = settings if settings is not None else QSettings(APP_NAME, APP_NAME)
        # Quitting, or opening another model, asks before a running profile or unsaved profiles are
        # dropped (not offscreen, where nobody could answer).
        self.ask_before_discarding = error_dialogs
        self.loaded: Optional[LoadedModel] = None
        self.scene: Optional[GraphScene] = None
        self._tasks: set[_LoadTask] = set()
        self._pending_build = None  # (scene, cancel function, loaded, keep_view, start time)
        self._pending_session: Optional[Session] = None  # installed once its model is drawn
        self._pending_keep_selection = False
        self._focus_after_build: Optional[str] = None  # box to centre on once a relayout is drawn
        self._search_matches: list[str] = []
        self._search_position = -1
        # The charts' background import, once nothing is opening (see _warm_charts_when_idle).
        self._chart_warm_timer = QTimer(self, singleShot=True, interval=self.CHART_WARM_DELAY_MS)
        self._chart_warm_timer.timeout.connect(self._warm_charts_when_idle)
        # Search as you type, on a large model once typing pauses (see _search_typed).
        self._search_timer = QTimer(self, singleShot=True, interval=self.SEARCH_PAUSE_MS)
        self._search_timer.timeout.connect(lambda: self._search_changed(self.search_field.text()))
        # The session: profiles of the open model, sweeps, which profile the overlay shows.
        self.entries: list[ProfileEntry] = []
        self.sweeps: list[SweepResult] = []
        self._saved_state = self._session_state()  # the profiles and sweeps as last saved or opened
        self.selected_profile = -1
        # The analysis of the open model at its own input size; self.loaded.analysis is the one at the
        # size the selected profile ran at (a sweep's other sizes), so every static figure matches it.
        self._opened_analysis = None
        self.worker: Optional[ProfileWorker] = None
        self.run_dialog: Optional[RunDialog] = None
        self.compare_view = None
        self.convert_dialog = None  # gui.convert_dialog.ConvertDialog (Model > Convert to Core ML…)
        self.convert_view = None  # gui.convert_view.ConvertView: a converted package beside its source
        self._docks_sized = False
        self._settled_size = None  # the window's size once its last resize was handled
        self._dock_shares = None  # shares of the window the docks keep across resizes (gui.app_menus)
        self.setWindowTitle(APP_NAME)
        self.resize(1400, 900)
        self.setAcceptDrops(True)

        self.view = GraphView(self)
        self.setCentralWidget(self.view)
        # Right column (profiles over inspector) runs the full height; the charts sit under the graph only.
        self.setCorner(Qt.Corner.BottomRightCorner, Qt.DockWidgetArea.RightDockWidgetArea)
        self.setCorner(Qt.Corner.TopRightCorner, Qt.DockWidgetArea.RightDockWidgetArea)
        features = QDockWidget.DockWidgetFeature.DockWidgetMovable | QDockWidget.DockWidgetFeature.DockWidgetFloatable
        self.profiles_dock = QDockWidget("Profiles", self)
        self.profiles_dock.setObjectName("profiles")
        self.profiles_dock.setWidget(self._build_profiles_panel())
        self.profiles_dock.setFeatures(features)
        self.addDockWidget(Qt.DockWidgetArea.RightDockWidgetArea, self.profiles_dock)
        self.inspector = Inspector()
        self.inspector_dock = dock = QDockWidget("Inspector", self)
        dock.setObjectName("inspector")
        dock.setWidget(self.inspector)
        dock.setFeatures(features)
        self.addDockWidget(Qt.DockWidgetArea.RightDockWidgetArea, dock)
        self.panels = DeferredProfilePanels()  # the charts (pyqtgraph) are built when first needed
        self.panels_dock = QDockWidget("Profile charts", self)
        self.panels_dock.setObjectName("profile-charts")
        self.panels_dock.setWidget(self.panels)
        self.panels_dock.setFeatures(features | QDockWidget.DockWidgetFeature.DockWidgetClosable)
        self.addDockWidget(Qt.DockWidgetArea.BottomDockWidgetArea, self.panels_dock)
        self.panels_dock.hide()  # shown with the first profile
        self.view.nodeSelected.connect(self._on_node_selected)
        self.view.groupToggled.connect(self.toggle_group)
        self.view.allGroupsToggled.connect(self.set_all_groups)
        self.panels.nodeClicked.connect(self.select_node)
        self.inspector.nodeActivated.connect(self.select_node)
        self.panels.nodesClicked.connect(self.select_nodes)

        self._build_actions()
        self.view.set_empty_hint(self.empty_hint_text())
        self._build_toolbar()
        self.subgraph_chooser = SubgraphChooser(self)  # in the toolbar when a model has several graphs
        self._build_status_bar()
        self._update_recent_menu()
        self._update_profile_actions()

    # The chart library (pyqtgraph, ~0.4 s of imports) is imported in a background thread this
    # long after a model is shown, and only while nothing is opening: an import holds the GIL
    # for tens of ms at a time, and overlapping the next open's scene build and first paint it
    # made that open's longest UI stall 110-120 ms instead of ~50 (t20k opened twice in a row).
    CHART_WARM_DELAY_MS = 1000

    def _warm_charts_when_idle(self) -> None:
        if self.loading:  # an open, relayout or build is running: after it
            self._chart_warm_timer.start()
            return
        self.panels.warm_up()

    # --- opening --------------------------------------------------------------------------
    @property
    def loading(self) -> bool:
        return bool(self._tasks) or self._pending_build is not None

    def dialog_folder(self) -> str:
        """Where file dialogs start: the folder last chosen in one, else the open model's folder."""
        last = str(self.settings.value("lastFolder", "") or "")
        if last and Path(last).is_dir():
            return last
        return str(Path(self.loaded.path).parent) if self.loaded else ""

    def _suggest(self, name: str) -> str:
        return str(Path(self.dialog_folder() or ".") / name)

    def _chosen(self, path: str) -> str:
        """Remember the folder of `path` (chosen in a file dialog) for the next dialog; returns `path`."""
        if path:
            self.settings.setValue("lastFolder", str(Path(path).parent))
        return path

    def open_dialog(self) -> None:
        dialog = ModelFileDialog(self, self.dialog_folder())
        if dialog.exec() and dialog.chosen_path():
            self.open_path(self._chosen(dialog.chosen_path()))

    def open_package_dialog(self) -> None:
        """File > Open Core ML Package…: a folder chooser, for file dialogs that walk into every folder."""
        path = QFileDialog.getExistingDirectory(self, "Open Core ML package (.mlpackage folder)", self.dialog_folder())
        if path:
            self.open_path(self._chosen(path))

    def open_path(self, path: str) -> None:
        """Open `path` in a worker; the current model stays until the new one is ready.

        A session file (`.layerscope`) opens as a session.  Another model replaces the
        profiles of this one: a running profile or unsaved profiles are asked about once it has
        opened (`_once_agreed`), so a file that fails to open asks nothing and stops nothing.
        """
        if is_session_file(path):
            self.open_session(path)
            return
        same = self.loaded is not None and _same_file(self.loaded.path, path)
        if self.helper_process:
            start_helper_process()  # no-op while it runs; replaces one that died
        include_constants = self.show_constants_action.isChecked()
        # The grouping chosen for this model does not carry over to another one (its groups differ).
        grouping = self.grouping() if same else "none"
        if self.loaded is None:  # the empty area said "No model open": it says what is on its way
            self.view.set_empty_hint(f"Opening {Path(path).name}…")
        self._start_task(lambda progress: load_model(path, include_constants, progress, grouping),
                         f"Opening {Path(path).name}",
                         self._once_agreed(f"open {Path(path).name}", self._on_loaded, other_model_only=True))

    def _once_agreed(self, action: str, show, other_model_only: bool = False):
        """`show` for what a task opened, once the person agrees to leave the shown session: asked
        here, when the new model is known to open, not before (the file may fail to open, and a
        running profile would have been stopped for nothing).  Declined: the shown model stays.
        `other_model_only`: the same file opened again keeps its profiles, so nothing is asked."""
        def done(result) -> None:
            opened = result[1] if isinstance(result, tuple) else result  # (session, model) for a session
            shown = self.loaded
            if shown is None or (other_model_only and _same_file(shown.path, opened.path)) \
                    or self.confirm_leaving(action):
                show(result)
            else:
                self._keep_shown_model()
        return done

    def load_blocking(self, path: str) -> None:
        """Open `path` in this thread (for `layerscope view --screenshot` and scripts)."""
        try:
            loaded = load_model(path, self.show_constants_action.isChecked(), grouping=self.grouping())
        except ModelLoadError as exc:
            self._on_failed(str(exc))
            return
        self._on_loaded(loaded, incremental=False)

    def _start_task(self, function, message: str, on_done) -> None:
        # The shown model's background preparation of group opens stops now, whatever the task
        # (an open, a relayout, an ungroup): a third thread wanting the GIL through the import and
        # the analysis lengthens the UI thread's waits for it.  A folded model shown starts it
        # again; a failed task restarts it for the model still shown (_on_failed).
        folded_groups = sys.modules.get("gui.folded_groups")  # imported by a folded open: else none runs
        if folded_groups is not None:
            folded_groups.cancel_preparation()
        task = _LoadTask(function)
        self._tasks.add(task)
        hold_gc()  # until the task is done (see gui.responsive): no full collection while opening
        task.signals.progress.connect(self.progress_label.setText)
        task.signals.finished.connect(lambda result, t=task: self._task_done(t, result, None, on_done))
        task.signals.failed.connect(lambda message, t=task: self._task_done(t, None, message, on_done))
        self.progress_label.setText(message + "…")
        self.progress.show()
        QThreadPool.globalInstance().start(task)

    def _task_done(self, task: _LoadTask, result: Optional[LoadedModel], error: Optional[str], on_done) -> None:
        task.function = None  # its closure holds the model a relayout replaces; the task itself is
        # kept by its signals' connections (which hold it): it would keep that model for good
        if task not in self._tasks:  # the window was closed meanwhile
            return
        self._tasks.discard(task)
        if not self._tasks:
            self.progress.hide()
            self.progress_label.setText("")
        try:
            if error is not None:
                self._on_failed(error)
            elif result is not None:
                on_done(result)  # a model's scene build holds collection off on its own
        finally:
            release_gc()

    def _keep_shown_model(self) -> None:
        """A task's result is not shown (it failed, or the person kept the current session)."""
        if self.loaded is None:
            self.view.set_empty_hint(self.empty_hint_text())
        if self.loaded is not None and self.loaded.folded_layouts is not None:
            from gui.folded_groups import prepare_group_opens
            prepare_group_opens(self.loaded)  # the shown model stays: its preparation goes on

    def _on_failed(self, message: str, title: str = "Cannot open model") -> None:
        self._keep_shown_model()
        if self.error_dialogs:
            QMessageBox.critical(self, title, message)
        self.loadFailed.emit(message)

    def _on_loaded(self, loaded: LoadedModel, keep_view: bool = False, incremental: bool = True,
                   same_model: bool = False) -> None:
        """Build the scene for `loaded` and show it; the current scene stays until the new one is complete.

        Incremental building creates the items in chunks between event-loop turns (~25 ms
        each), so a 20,000-node model does not freeze the window while it is drawn.
        """
        if self._pending_build is not None:  # a newer model wins over one still being drawn
            self._pending_build[1]()  # cancel it
            retire_scene(self._pending_build[0])
            self._pending_build = None
            release_gc()
        hold_gc()  # released by _finish_build
        scene = GraphScene(loaded, self, build=False)
        started = time.perf_counter()
        if incremental:
            self._pending_build = (scene, build_in_slices(scene, self._finish_build, self.BUILD_SLICE,
                                                          failed=self._build_failed),
                                   loaded, keep_view or same_model, started)
            self._pending_keep_selection = keep_view
            self.progress_label.setText("Drawing…")
            self.progress.show()
        else:
            for _ in scene.build_steps():
                pass
            self._pending_build = (scene, lambda: None, loaded, keep_view or same_model, started)
            self._pending_keep_selection = keep_view
            self._finish_build()

    def _build_failed(self, exc: Exception) -> None:
        """Drawing the new scene failed: the current model stays, and the person is told why."""
        if self._pending_build is None:
            return
        scene, _, loaded, _, _ = self._pending_build
        self._pending_build = None
        release_gc()
        retire_scene(scene)
        if not self._tasks:
            self.progress.hide()
            self.progress_label.setText("")
        self._on_failed(f"{Path(loaded.path).name}: could not draw the graph ({type(exc).__name__}: {exc})",
                        "Cannot draw model")

    def _finish_build(self) -> None:
        scene, _, loaded, keep_view, started = self._pending_build
        self._pending_build = None
        try:
            self._show_built(scene, loaded, keep_view, started)
        finally:
            release_gc()

    def _show_built(self, scene: GraphScene, loaded: LoadedModel, keep_view: bool, started: float) -> None:
        """Show the scene just built.  `keep_view`: the same model laid out again (profiles stay)."""
        if not self._tasks:
            self.progress.hide()
            self.progress_label.setText("")
        selected = self.inspector.node_id if keep_view and self._pending_keep_selection else None
        self.inspector.show_nothing()  # before the session changes: the old node may not exist any more
        previous = self.loaded
        self.loaded = loaded
        self.scene = scene
        if not keep_view or self._opened_analysis is None:
            self._opened_analysis = loaded.analysis  # the model at its own input size
        session, self._pending_session = self._pending_session, None
        if session is not None:
            self._install_session(session)
        elif not keep_view and (previous is None or not _same_file(previous.path, loaded.path)):
            self._clear_profiles()  # they were taken of the previous model
        self.view.set_graph_scene(scene)
        entry = self.selected_entry()
        scene.set_profile(entry.profile if entry else None)
        key = self.overlay_combo.currentData()
        if key == numerics_view.OVERLAY_KEY:  # the numerics of this model (a relayout), or none any more
            if self.numerics_result() is not None:
                numerics_view.show_overlay(self.view, self.numerics_result())
            else:
                self.overlay_combo.blockSignals(True)
                self.overlay_combo.setCurrentIndex(self.overlay_combo.findData("none"))
                self.overlay_combo.blockSignals(False)
                self.overlay_actions["none"].setChecked(True)
        elif key != "none":
            scene.set_overlay(key)
        self.view.update_legend()
        loaded.timings["scene"] = time.perf_counter() - started
        focus, self._focus_after_build = self._focus_after_build, None
        selected = scene.box_id(selected) if selected else None
        frame = scene.structure_rect(focus) if focus is not None and focus in loaded.groups else None
        if frame is None and focus in loaded.groups and focus not in loaded.collapsed:
            focus = next((m for m in loaded.groups[focus].members if not loaded.analysis.nodes[m].is_constant), None)
        if frame is not None or (focus is not None and scene.box_id(focus) is not None):
            if selected:  # the selection stays, the view goes to the group just opened or closed
                self.view.select_node(selected, center=False)
            if frame is not None:  # a group just opened: its frame, whole if readable so, else its top
                self.view.show_region(frame)
            else:
                self.view.center_on_node(focus)
        elif selected:
            self.view.select_node(selected)
        else:
            self.view.show_start()
        self._sync_grouping_controls(loaded)
        if previous is not None and previous.analysis is not loaded.analysis:
            forget_text_matches()  # the replaced model's: kept, it would stay until the next search
        matches, position = self._search_matches, self._search_position
        current = matches[position] if 0 <= position < len(matches) else None
        self._search_matches, self._search_position = [], -1
        if self.search_field.text():
            self._search_changed(self.search_field.text())
            if current in self._search_matches:  # its groups were opened for it: the search goes on from it
                self._search_position = self._search_matches.index(current)
                self.search_label.setText(f"{self._search_position + 1} / {len(self._search_matches)}")
        self._show_summary()
        self.setWindowTitle(f"{Path(loaded.path).name} — {APP_NAME}")
        if previous is None or not _same_file(previous.path, loaded.path):
            self._remember_recent(loaded.path)
        self._update_profile_actions()
        if self.run_dialog is not None:
            self._show_model_in_run_dialog()
        self.modelLoaded.emit(loaded.path)
        self._chart_warm_timer.start()  # off the first paint (one timer: every show restarts it)
        if loaded.folded_layouts is not None:  # first opens of its collapsed groups, in the background
            from gui.folded_groups import prepare_group_opens
            prepare_group_opens(loaded)
        if previous is not None and previous is not loaded:  # freed off this thread (gui.responsive)
            free_in_background(previous, still_used=list(vars(loaded).values()))
        if session is not None:
            self.sessionOpened.emit(loaded.path)

    def _show_summary(self) -> None:
        loaded = self.loaded
        totals = loaded.analysis.totals
        hidden = "" if loaded.include_constants else f" ({totals.constant_nodes:,} constant nodes folded)"
        # The three figures are static estimates (the inspector's "estimated from shapes"), said
        # before them: "(estimated)" after the last one read as that one's only, and was the first
        # word cut when a note beside the line leaves it too little room.
        text = (f"{Path(loaded.path).name}: {totals.compute_nodes:,} nodes{hidden} · estimated: params "
                f"{human_count(totals.params)}, MACs {human_count(totals.macs)}, peak activations "
                f"{human_bytes(totals.peak_activation_bytes)} · layout {loaded.layout.method}"
                + (" · tensors NHWC" if loaded.analysis.graph.channels_last else ""))
        self.summary_label.setText(text)
        self.summary_label.setToolTip(text)  # whole, when a note beside it leaves it too little room

    def set_show_constants(self, show: bool) -> None:
        if self.loaded is None or self.loaded.include_constants == show:
            return
        current = self.loaded
        self._start_task(lambda progress: relayout(current, show, progress),
                         "Showing constants" if show else "Hiding constants", self._on_relaid)

    def _on_relaid(self, loaded: LoadedModel) -> None:
        self._on_loaded(loaded, keep_view=True)

    # --- collapsible groups -----------------------------------------------------------------
    def grouping(self) -> str:
        """The grouping asked for in the toolbar: "none", "stage" or "namespace"."""
        return str(self.group_combo.currentData())

    def set_grouping(self, key: str) -> None:
        """Group the open model's nodes by `key` (every group collapsed) or ungroup it ("none")."""
        if key not in GROUPINGS:
            raise ValueError(f"unknown grouping {key!r}; known: {', '.join(GROUPINGS)}")
        index = self.group_combo.findData(key)
        if self.group_combo.currentIndex() != index:
            self.group_combo.setCurrentIndex(index)  # comes back here through the signal
            return
        for k, action in self.group_actions.items():
            action.setChecked(k == key)
        if self.loaded is None or self.loaded.grouping == key:
            return
        current, constants = self.loaded, self.loaded.include_constants
        self._focus_after_build = None
        self._start_task(lambda progress: relayout(current, constants, progress, grouping=key),
                         "Grouping" if key != "none" else "Ungrouping", self._on_regrouped)

    def _on_regrouped(self, loaded: LoadedModel) -> None:
        self._on_loaded(loaded, keep_view=False, same_model=True)

    def toggle_group(self, group_id: str, collapse: bool) -> None:
        """Collapse (one box with the group's totals) or expand the group `group_id`; laid out in a worker."""
        loaded = self.loaded
        if loaded is None or group_id not in loaded.groups or (group_id in loaded.collapsed) == collapse:
            return
        collapsed = loaded.collapsed | {group_id} if collapse else loaded.collapsed - {group_id}
        if collapse:
            self._focus_after_build = group_id
        else:  # its frame (or, grouped by stage, the first of its nodes that will be drawn)
            self._focus_after_build = group_id
        self._relayout_groups(collapsed, f"{'Collapsing' if collapse else 'Expanding'} "
                                         f"{loaded.groups[group_id].name}")

    def set_all_groups(self, collapse: bool) -> None:
        if self.loaded is None or not self.loaded.groups:
            return
        # The place stays: the view goes to the selection, else to the box nearest its middle (a
        # group's first node when collapsing: a group nested in a collapsed one has no box, its
        # nodes have the outer group's).  Else it jumped to the model's first row.
        focus = self.inspector.node_id or self.view.box_near_centre()
        if collapse and focus in self.loaded.groups:
            focus = self.loaded.groups[focus].members[0]
        self._focus_after_build = focus
        self._relayout_groups(frozenset(self.loaded.groups) if collapse else frozenset(),
                              "Collapsing all groups" if collapse else "Expanding all groups")

    def _relayout_groups(self, collapsed: frozenset, message: str) -> None:
        current = self.loaded
        self._start_task(lambda progress: relayout(current, current.include_constants, progress,
                                                   collapsed=frozenset(collapsed)), message, self._on_relaid)

    def _sync_grouping_controls(self, loaded: LoadedModel) -> None:
        """The toolbar shows the layout actually drawn (a fallback, or a session's, may differ
        from what it showed); say why."""
        for widget in (self.group_combo, self.show_constants_action, self.constants_box):
            widget.blockSignals(True)
        self.group_combo.setCurrentIndex(self.group_combo.findData(loaded.grouping))
        self.show_constants_action.setChecked(loaded.include_constants)
        self.constants_box.setChecked(loaded.include_constants)
        for widget in (self.group_combo, self.show_constants_action, self.constants_box):
            widget.blockSignals(False)
        for key, action in self.group_actions.items():
            action.setChecked(key == loaded.grouping)
        self.expand_all_action.setEnabled(bool(loaded.groups))
        self.collapse_all_action.setEnabled(bool(loaded.groups))
        if loaded.note:
            self.progress_label.setText(loaded.note)

    # --- overlays, search, selection ------------------------------------------------------
    def set_overlay(self, key: str) -> None:
        if key == numerics_view.OVERLAY_KEY:
            self._show_numerics_overlay()
            return
        if self.scene is not None:
            numerics_view.clear_marks(self.scene)
        if key not in OVERLAYS:
            raise ValueError(f"unknown overlay {key!r}; known: {', '.join(OVERLAYS)}")
        index = self.overlay_combo.findData(key)
        if self.overlay_combo.currentIndex() != index:
            self.overlay_combo.setCurrentIndex(index)  # comes back here through the signal
            return
        for k, action in self.overlay_actions.items():
            action.setChecked(k == key)
        if self.scene is not None:
            self.scene.set_overlay(key)
            self.view.update_legend()

    # A search walks every node: 0.55-0.87 s a keystroke on big.onnx (100,000 nodes, "/", "/m", "/mo"),
    # which froze typing for seconds; ~0.1 s at 20,000 nodes.  Larger models search when typing pauses.
    SEARCH_PAUSE_MS, SEARCH_AT_ONCE_NODES = 300, 10_000

    def _search_typed(self, text: str) -> None:
        if self.loaded is None or len(self.loaded.analysis.order) < self.SEARCH_AT_ONCE_NODES:
            self._search_changed(text)
        else:
            self._search_matches, self._search_position = [], -1
            self.search_label.setText("…" if text.strip() else "")
            self._search_timer.start()

    def _search_changed(self, text: str) -> None:
        self._search_timer.stop()
        self._search_matches = self.scene.find_nodes(text) if self.scene is not None else []
        self._search_position = -1
        if not text.strip():
            self.search_label.setText("")
        else:
            self.search_label.setText(f"{len(self._search_matches)} found" if self._search_matches
                                      else "not found")

    def search_next(self, step: int = 1) -> Optional[str]:
        """Select and centre the next match of the search field (`step` -1: the previous); returns its node id."""
        if not self._search_matches:  # also Enter before typing paused on a large model: searched now
            self._search_changed(self.search_field.text())
        if not self._search_matches:
            return None
        self._search_position = (max(self._search_position, 0 if step < 0 else -1) + step) % len(self._search_matches)
        node_id = self._search_matches[self._search_position]
        self.select_node(node_id)
        self.search_label.setText(f"{self._search_position + 1} / {len(self._search_matches)}")
        return node_id

    def select_node(self, node_id: str) -> None:
        """Select and centre `node_id` in the graph (from a chart bar, a hint or the search);
        a node inside collapsed groups opens them first."""
        from gui.folded_groups import open_groups_to
        if not open_groups_to(self, node_id):
            self.view.select_node(node_id)

    def select_nodes(self, node_ids: list) -> None:
        """Select all of `node_ids` (a hint's layers): the first is centred and inspected."""
        if node_ids:
            self.select_node(node_ids[0])
            self.view.add_to_selection(node_ids[1:])

    def _on_node_selected(self, node_id: str) -> None:
        if self.loaded is not None:
            entry = self.selected_entry()
            self.inspector.show_node(self.loaded, node_id, entry.profile if entry else None,
                                     entry.label if entry else "")
            numerics_view.add_inspector_section(self.inspector, self.numerics_result(), node_id)
        self.panels.highlight_node(node_id or None)

    # --- conversion to Core ML ------------------------------------------------------------
    def show_convert_dialog(self):
        """Model > Convert to Core ML…: the options of `layerscope convert` for the open ONNX model."""
        if self.loaded is None or getattr(self.loaded.model, "format", "") != "onnx":
            return None
        from gui.convert_dialog import ConvertDialog

        dialog = self.convert_dialog
        if dialog is None or dialog.model_path != self.loaded.path:
            if dialog is not None:
                dialog.close()
            dialog = ConvertDialog(self.loaded.path, list(self.loaded.analysis.graph.inputs), self)
            dialog.openRequested.connect(lambda result: self.show_converted(result.package_path))
            self.convert_dialog = dialog
        dialog.error_dialogs = self.error_dialogs  # a refusal for memory asks whether to convert anyway
        dialog.show()
        dialog.raise_()
        return dialog

    def show_converted(self, package_path) -> None:
        """Open a converted .mlpackage beside its ONNX source (ConvertView) once both are loaded."""
        from engine.convert import LayerMapError, load_layer_map

        include_constants = self.show_constants_action.isChecked()
        current = self.loaded

        def work(progress):
            try:
                layer_map = load_layer_map(package_path)
            except LayerMapError as exc:  # shown like any file that cannot be opened
                raise ModelLoadError(str(package_path), str(exc).split(": ", 1)[-1]) from None
            source_path = Path(str(layer_map.get("source_model", "")))
            if current is not None and Path(current.path).resolve() == source_path.resolve():
                # Side by side node for node: the source without collapsed groups.
                source = current if not current.groups else relayout(current, current.include_constants,
                                                                      progress, grouping="none")
            else:
                source = load_model(str(source_path), include_constants, progress)
            return source, load_model(str(package_path), False, progress), layer_map

        self._start_task(work, f"Opening {Path(package_path).name} beside its source", self._on_converted_loaded)

    def _on_converted_loaded(self, result) -> None:
        from gui.convert_view import ConvertView

        source, converted, layer_map = result
        if self.convert_view is not None:
            self.convert_view.close()
        self.convert_view = ConvertView(source, converted, layer_map, self)
        if self.loaded is not None and source.model is self.loaded.model:  # (possibly ungrouped) open model
            self.convert_view.sourceSelected.connect(
                lambda node_id: node_id and self.view.select_node(node_id, center=False))
        self.convert_view.show()

    # --- drag and drop --------------------------------------------------------------------
    def dragEnterEvent(self, event) -> None:
        if event.mimeData().hasUrls() and any(u.isLocalFile() for u in event.mimeData().urls()):
            event.acceptProposedAction()

    def dropEvent(self, event) -> None:
        for url in event.mimeData().urls():
            if url.isLocalFile():
                self.open_path(url.toLocalFile())
                event.acceptProposedAction()
                return

    def closeEvent(self, event) -> None:
        if not self.confirm_leaving("quit"):
            event.ignore()
            return
        # Workers finish their current step; their results are dropped with the window.
        for task in list(self._tasks):
            try:
                task.signals.finished.disconnect()
                task.signals.failed.disconnect()
            except (RuntimeError, TypeError):
                pass
        for _ in self._tasks:
            release_gc()
        self._tasks.clear()
        if self._pending_build is not None:
            self._pending_build[1]()  # cancel the build
            self._pending_build = None
            release_gc()
        self.stop_profile_worker()
        for window in (self.run_dialog, self.compare_view, self.convert_dialog, self.convert_view):
            if window is not None:
                window.close()
        forget_text_matches()
        super().closeEvent(event)

    def stop_profile_worker(self) -> None:
        """Cancel a running profile and wait for its thread: nothing outlives the window."""
        worker = self.worker
        if worker is None:
            return
        for signal in (worker.progressed, worker.succeeded, worker.failed, worker.finished):
            try:
                signal.disconnect()
            except (RuntimeError, TypeError):
                pass
        worker.cancel()
        worker.wait()  # the target (or the CLI, on SIGINT) stops after the current run
        self.worker = None
        worker.deleteLater()
        self.run_progress.hide()


def app_version() -> str:
    from importlib.metadata import PackageNotFoundError, version
    try:
        return version("layerscope")
    except PackageNotFoundError:
        return "(version unknown: not installed as a package)"


def is_session_file(path) -> bool:
    """A saved session (`.layerscope`), which File > Open, a drop and `layerscope PATH` open as a session."""
    return Path(path).suffix.lower() == ".layerscope" and Path(path).is_file()


def _same_file(a, b) -> bool:
    return Path(a).resolve() == Path(b).resolve()


def _ensure_platform() -> None:
    if sys.platform.startswith("linux") and not (os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY")):
        os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")


def _application() -> QApplication:
    app = QApplication.instance()
    if app is None:
        app = QApplication([APP_NAME])
        app.setApplicationName(APP_NAME)
        app.setOrganizationName(APP_NAME)
    return app


def run_app(model_path: Optional[str] = None, overlay: str = "none", profile: Optional[Profile] = None) -> int:
    """Open the main window on `model_path` (default: the bundled sample) and run the event loop.

    `profile` (engine.profile.Profile of that model) is added to the session once the model is drawn.
    """
    app = _application()
    window = MainWindow()
    window.show()
    if model_path is None:
        from engine.sample_files import default_sample_path
        model_path = str(default_sample_path())

    def first_open(_path: str) -> None:
        window.modelLoaded.disconnect(first_open)
        if profile is not None:
            window.add_profile(profile)
        window.set_overlay(overlay)

    if not is_session_file(model_path):  # a session brings its own overlay and profiles
        window.modelLoaded.connect(first_open)
    if OVERLAYS.get(overlay) is None or not OVERLAYS[overlay].needs_profile:
        window.set_overlay(overlay)
    QTimer.singleShot(0, lambda: window.open_path(model_path))
    try:
        return app.exec()
    finally:
        stop_helper_process()


def _quiet_offscreen_warnings() -> None:
    """The offscreen platform warns about window hints it does not support; nothing to act on."""
    from PySide6.QtCore import qInstallMessageHandler

    def handler(mode, context, message):
        if "propagateSizeHints" not in message:
            sys.stderr.write(message + "\n")

    qInstallMessageHandler(handler)


def render_screenshot(model_path: Optional[str], output: str, overlay: str = "none",
                      size: tuple[int, int] = (1400, 900), select: Optional[str] = None,
                      profile: Optional[Profile] = None) -> str:
    """Render the main window offscreen on `model_path` and save it as a PNG; returns the path.

    With `profile` (engine.profile.Profile of this model) the window shows it as a
    session profile would be: list, charts, inspector figures and the time overlay.
    """
    _ensure_platform()
    if os.environ.get("QT_QPA_PLATFORM") == "offscreen":
        _quiet_offscreen_warnings()
    app = _application()
    settings = QSettings(QSettings.Format.IniFormat, QSettings.Scope.UserScope, APP_NAME, "screenshot")
    # No dialog offscreen: a failure is raised to the caller instead.
    # The model is opened in this thread (nothing to keep responsive): no helper process.
    window = MainWindow(settings=settings, error_dialogs=False, helper_process=False)
    failures: list[str] = []
    window.loadFailed.connect(failures.append)
    try:
        window.resize(*size)
        window.show()
        app.processEvents()
        if model_path is None:
            from engine.sample_files import default_sample_path
            model_path = str(default_sample_path())
        window.load_blocking(model_path)
        if failures:
            raise ModelLoadError(model_path, failures[0].split(": ", 1)[-1])
        if profile is not None:
            analysis = profile_analysis(window.loaded.path, profile, window.loaded.analysis)
            if not profile.hints:
                from engine.hints import find_hints
                profile = profile.with_hints(find_hints(profile, analysis))
            window.add_profile(profile, analysis)
            window.size_docks()
        window.set_overlay(overlay)
        if select:
            window.view.select_node(select)
        app.processEvents()
        if window.view.minimap_enabled:
            window.view.minimap.render_thumbnail()  # now, not after its debounce timer
        app.processEvents()
        image = window.grab()
        # PNG at zlib level 1 (Qt's quality 80): 10-20 ms less than the default level for a
        # 1400x900 window, the file about 10% larger (a graph's white page compresses either way).
        if not image.save(output, None, 80 if output.lower().endswith(".png") else -1):
            raise OSError(f"could not write {output}")
        return output
    finally:
        window.close()
        window.deleteLater()
        app.processEvents()
