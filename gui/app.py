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
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Optional

from PySide6.QtCore import QObject, QRectF, QRunnable, QSettings, QSize, Qt, QThreadPool, QTimer, Signal
from PySide6.QtGui import QAction, QImage, QKeySequence, QPainter
from PySide6.QtWidgets import (QAbstractItemView, QApplication, QCheckBox, QComboBox, QDialog, QDockWidget, QFileDialog,
                               QHBoxLayout, QLabel, QLineEdit, QListWidget, QListWidgetItem, QMainWindow,
                               QMessageBox, QProgressBar, QPushButton, QToolBar, QVBoxLayout, QWidget)

from engine.compare import profile_label
from engine.inspect import human_bytes, human_count
from engine.ir import ModelLoadError
from engine.layout import GROUPINGS
from engine.profile import Profile, ProfileFormatError
from engine.session import (Session, SessionFormatError, SweepResult, load_profile_json, load_session,
                            profile_analysis, profiled_at, save_session)
from gui.graph_view import (OVERLAY_TITLES, OVERLAYS, GraphScene, GraphView, build_in_slices, format_ms,
                            prepare_scene_data, retire_scene)
from gui import numerics_view
from gui.inspector import Inspector
from gui.responsive import hold_gc, release_gc, start_helper_process, stop_helper_process
from gui.deferred_panels import DeferredProfilePanels
from gui.run_dialog import ProfileWorker, RunDialog, RunRequest, RunResult, make_profile_runner
from gui.subgraphs import SubgraphChooser

APP_NAME = "LayerScope"
MAX_RECENT = 10
GROUPING_TITLES = {"none": "None", "stage": "Stage", "namespace": "Namespace"}
GROUPING_MENU_TEXTS = {"none": "&None", "stage": "&Stage", "namespace": "N&amespace"}
MODEL_FILTER = "Models (*.onnx *.mlmodel *.mlpackage *.pt2 *.tflite);;All files (*)"
SESSION_FILTER = "LayerScope session (*.layerscope);;All files (*)"
# Profile exports: kind -> (menu text, file suffix, file dialog filter)
PROFILE_EXPORTS = {
    "html": ("Bottleneck report (&HTML)…", ".html", "HTML report (*.html)"),
    "json": ("Profile (&JSON)…", ".profile.json", "LayerScope profile (*.json)"),
    "csv": ("Per-layer table (&CSV)…", ".csv", "CSV (*.csv)"),
    "trace": ("Chrome &trace…", ".trace.json", "Chrome trace (*.json)"),
    "model_explorer": ("&Model Explorer node data…", ".node_data.json", "Model Explorer node data (*.json)"),
}


@dataclass
class ProfileEntry:
    """One profile in the session, its list label, and (lazily) the analysis at its input shapes."""

    profile: Profile
    label: str
    analysis: object = None  # engine.analysis.ModelAnalysis; None until needed (reports, hints)


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

    `grouping` None keeps the current one; a new grouping starts with every group collapsed.
    `collapsed` None keeps the current collapsed groups.  A model without namespaces grouped
    "by namespace" is grouped by stage (the design's fallback), and `note` says so.
    """
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
        collapsed = frozenset(groups) if collapsed is None else collapsed
    collapsed = frozenset(g for g in collapsed if g in groups)
    if progress:
        progress("Laying out…")
    start = time.perf_counter()
    layout = layout_graph(loaded.analysis, include_constants=include_constants, groups=groups, collapsed=collapsed)
    timings = dict(loaded.timings, layout=time.perf_counter() - start)
    result = LoadedModel(loaded.path, loaded.model, loaded.analysis, layout, include_constants,
                         loaded.producers, timings, None, grouping, groups, collapsed, note, loaded.graph_index)
    start = time.perf_counter()
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


class MainWindow(QMainWindow):
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
        self.panels.nodesClicked.connect(self.select_nodes)

        self._build_actions()
        self.view.set_empty_hint(self.empty_hint_text())
        self._build_toolbar()
        self.subgraph_chooser = SubgraphChooser(self)  # in the toolbar when a model has several graphs
        self._build_status_bar()
        self._update_recent_menu()
        self._update_profile_actions()

    # --- UI construction ------------------------------------------------------------------
    def _build_profiles_panel(self) -> QWidget:
        panel = QWidget()
        layout = QVBoxLayout(panel)
        layout.setContentsMargins(4, 4, 4, 4)
        layout.setSpacing(4)
        self.profile_list = QListWidget()
        self.profile_list.setSelectionMode(QAbstractItemView.SelectionMode.SingleSelection)
        self.profile_list.currentRowChanged.connect(self._profile_row_changed)
        self.profile_list.setToolTip("Profiles of this model (target, mode, input size); the selected one "
                                     "colours the graph")
        layout.addWidget(self.profile_list, 1)
        buttons = QHBoxLayout()
        self.run_button = QPushButton("Run…")
        self.run_button.clicked.connect(self.show_run_dialog)
        self.compare_button = QPushButton("Compare…")
        self.compare_button.clicked.connect(lambda: self.show_compare())
        self.remove_button = QPushButton("Remove")
        self.remove_button.clicked.connect(lambda: self.remove_profile(self.selected_profile))
        for button in (self.run_button, self.compare_button, self.remove_button):
            buttons.addWidget(button)
        layout.addLayout(buttons)
        return panel

    def _build_actions(self) -> None:
        menu = self.menuBar().addMenu("&File")
        self.open_action = QAction("&Open…", self, shortcut=QKeySequence.StandardKey.Open,
                                   triggered=self.open_dialog)
        menu.addAction(self.open_action)
        self.open_package_action = QAction("Open Core ML &Package…", self, triggered=self.open_package_dialog)
        menu.addAction(self.open_package_action)
        self.recent_menu = menu.addMenu("Open &Recent")
        menu.addSeparator()
        self.open_session_action = QAction("Open &Session…", self, shortcut=QKeySequence("Ctrl+Shift+O"),
                                           triggered=self.open_session_dialog)
        self.save_session_action = QAction("&Save Session…", self, shortcut=QKeySequence.StandardKey.Save,
                                           triggered=self.save_session_dialog)
        self.import_profile_action = QAction("&Import Profile (JSON)…", self, triggered=self.import_profile_dialog)
        for action in (self.open_session_action, self.save_session_action, self.import_profile_action):
            menu.addAction(action)
        menu.addSeparator()
        menu.addAction(QAction("&Quit", self, shortcut=QKeySequence.StandardKey.Quit, triggered=self.close))

        view_menu = self.menuBar().addMenu("&View")
        self.fit_action = QAction("&Fit graph", self, shortcut=QKeySequence("Ctrl+0"), triggered=self.view.fit)
        self.zoom_in_action = QAction("Zoom &in", self, shortcut=QKeySequence.StandardKey.ZoomIn,
                                      triggered=self.view.zoom_in)
        self.zoom_out_action = QAction("Zoom &out", self, shortcut=QKeySequence.StandardKey.ZoomOut,
                                       triggered=self.view.zoom_out)
        self.show_constants_action = QAction("Show &constant nodes", self, checkable=True,
                                             toggled=self.set_show_constants)
        self.find_action = QAction("&Find node…", self, shortcut=QKeySequence.StandardKey.Find,
                                   triggered=lambda: (self.search_field.setFocus(),
                                                      self.search_field.selectAll()))
        for action in (self.fit_action, self.zoom_in_action, self.zoom_out_action):
            view_menu.addAction(action)
        view_menu.addSeparator()
        view_menu.addAction(self.show_constants_action)
        self.minimap_action = QAction("&Minimap", self, checkable=True, checked=True,
                                      shortcut=QKeySequence("Ctrl+M"), toggled=self.view.set_minimap_enabled)
        view_menu.addAction(self.minimap_action)
        group_menu = view_menu.addMenu("&Group by")
        self.group_actions = {}
        for index, key in enumerate(GROUPINGS):
            action = QAction(GROUPING_MENU_TEXTS[key], self, checkable=True, shortcut=QKeySequence(f"Alt+{index + 1}"),
                             triggered=lambda checked=False, k=key: self.set_grouping(k))
            group_menu.addAction(action)
            self.group_actions[key] = action
        self.group_actions["none"].setChecked(True)
        group_menu.addSeparator()
        self.expand_all_action = QAction("&Expand all groups", self, enabled=False,
                                         triggered=lambda: self.set_all_groups(False))
        self.collapse_all_action = QAction("&Collapse all groups", self, enabled=False,
                                           triggered=lambda: self.set_all_groups(True))
        group_menu.addAction(self.expand_all_action)
        group_menu.addAction(self.collapse_all_action)
        view_menu.addAction(self.find_action)
        overlay_menu = view_menu.addMenu("O&verlay")
        self.overlay_actions = {}
        for index, key in enumerate(OVERLAYS):
            action = QAction(OVERLAY_TITLES[key], self, checkable=True,
                             shortcut=QKeySequence(f"Ctrl+{index + 1}"),
                             triggered=lambda checked=False, k=key: self.set_overlay(k))
            overlay_menu.addAction(action)
            self.overlay_actions[key] = action
        self.overlay_actions["none"].setChecked(True)
        view_menu.addSeparator()
        view_menu.addAction(self.profiles_dock.toggleViewAction())
        view_menu.addAction(self.inspector_dock.toggleViewAction())
        view_menu.addAction(self.panels_dock.toggleViewAction())

        model_menu = self.menuBar().addMenu("&Model")
        self.convert_action = QAction("&Convert to Core ML…", self, shortcut=QKeySequence("Ctrl+Shift+C"),
                                      triggered=self.show_convert_dialog)
        model_menu.addAction(self.convert_action)

        profile_menu = self.menuBar().addMenu("&Profile")
        self.run_action = QAction("&Run…", self, shortcut=QKeySequence("Ctrl+R"), triggered=self.show_run_dialog)
        self.cancel_action = QAction("&Cancel Run", self, triggered=self.cancel_profile)
        self.compare_action = QAction("C&ompare Profiles…", self, shortcut=QKeySequence("Ctrl+Shift+K"),
                                      triggered=lambda: self.show_compare())
        self.remove_action = QAction("Re&move Selected Profile", self,
                                     triggered=lambda: self.remove_profile(self.selected_profile))
        for action in (self.run_action, self.cancel_action, self.compare_action, self.remove_action):
            profile_menu.addAction(action)
        profile_menu.addSeparator()
        self.numerics_action = QAction("&Numerics…", self, shortcut=QKeySequence("Ctrl+Shift+N"),
                                       triggered=self.show_numerics_dialog)
        profile_menu.addAction(self.numerics_action)

        export_menu = self.menuBar().addMenu("&Export")
        self.export_actions: dict[str, QAction] = {}
        for kind, (text, _, _) in PROFILE_EXPORTS.items():
            action = QAction(text, self, triggered=lambda checked=False, k=kind: self.export_profile_dialog(k))
            if kind == "html":
                action.setShortcut(QKeySequence("Ctrl+Shift+E"))
            export_menu.addAction(action)
            self.export_actions[kind] = action
        export_menu.addSeparator()
        self.export_png_action = QAction("Graph as &PNG…", self, triggered=lambda: self.export_dialog("png"))
        self.export_svg_action = QAction("Graph as &SVG…", self, triggered=lambda: self.export_dialog("svg"))
        export_menu.addAction(self.export_png_action)
        export_menu.addAction(self.export_svg_action)

        help_menu = self.menuBar().addMenu("&Help")
        help_menu.addAction(QAction("&Keyboard Shortcuts", self, shortcut=QKeySequence("F1"),
                                    triggered=self.show_shortcuts))
        help_menu.addAction(QAction("&Documentation", self, triggered=self.show_documentation))
        help_menu.addAction(QAction(f"&About {APP_NAME}", self, triggered=self.show_about))

    def _build_toolbar(self) -> None:
        bar = QToolBar("Main", self)
        bar.setObjectName("main-toolbar")
        bar.setMovable(False)
        self.addToolBar(bar)
        bar.addAction(self.open_action)
        bar.addAction(self.fit_action)
        bar.addAction(self.zoom_in_action)
        bar.addAction(self.zoom_out_action)
        bar.addSeparator()
        bar.addAction(self.run_action)
        bar.addSeparator()
        bar.addWidget(QLabel(" Overlay: "))
        self.overlay_combo = QComboBox()
        for key in OVERLAYS:
            self.overlay_combo.addItem(OVERLAY_TITLES[key] if key != "none" else "None (op category)", key)
        self.overlay_combo.addItem(numerics_view.OVERLAY_TITLE, numerics_view.OVERLAY_KEY)  # after Profile > Numerics…
        self.overlay_combo.currentIndexChanged.connect(
            lambda i: self.set_overlay(self.overlay_combo.itemData(i)))
        bar.addWidget(self.overlay_combo)
        self.constants_box = QCheckBox("Constants")
        self.constants_box.setToolTip("Show folded constant nodes as boxes (normally drawn as weights)")
        self.constants_box.toggled.connect(self.show_constants_action.setChecked)
        self.show_constants_action.toggled.connect(self.constants_box.setChecked)
        bar.addSeparator()
        bar.addWidget(self.constants_box)
        bar.addWidget(QLabel(" Group: "))
        self.group_combo = QComboBox()
        for key in GROUPINGS:
            self.group_combo.addItem(GROUPING_TITLES[key], key)
        self.group_combo.setToolTip("Collapse the graph into groups (double-click a group to expand it, "
                                    "a node to collapse its group; right-click for more)")
        self.group_combo.currentIndexChanged.connect(lambda i: self.set_grouping(self.group_combo.itemData(i)))
        bar.addWidget(self.group_combo)
        bar.addSeparator()
        self.search_field = QLineEdit()
        self.search_field.setPlaceholderText("Find name or op type (Enter: next)")
        self.search_field.setClearButtonEnabled(True)
        self.search_field.setFixedWidth(260)
        # Enter: next match; Shift+Enter: the previous one (QLineEdit reports both as returnPressed).
        self.search_field.returnPressed.connect(lambda: self.search_next(
            -1 if QApplication.keyboardModifiers() & Qt.KeyboardModifier.ShiftModifier else 1))
        self.search_field.textChanged.connect(self._search_changed)
        bar.addWidget(self.search_field)
        self.search_label = QLabel("")
        self.search_label.setMinimumWidth(90)
        bar.addWidget(self.search_label)

    def _build_status_bar(self) -> None:
        status = self.statusBar()
        self.summary_label = QLabel("No model")
        status.addWidget(self.summary_label, 1)
        self.progress_label = QLabel("")
        self.progress = QProgressBar()
        self.progress.setRange(0, 0)  # busy indicator: the steps have no known length
        self.progress.setFixedWidth(140)
        self.progress.setMaximumHeight(14)
        status.addPermanentWidget(self.progress_label)
        status.addPermanentWidget(self.progress)
        self.progress.hide()
        self.run_progress = QProgressBar()  # profiling: runs done of runs planned
        self.run_progress.setFixedWidth(140)
        self.run_progress.setMaximumHeight(14)
        self.run_progress.setFormat("%v/%m runs")
        status.addPermanentWidget(self.run_progress)
        self.run_progress.hide()
        self.zoom_label = QLabel("")
        status.addPermanentWidget(self.zoom_label)
        self.view.zoomChanged.connect(lambda s: self.zoom_label.setText(f"{s * 100:.0f} %"))

    def showEvent(self, event) -> None:
        super().showEvent(event)
        if not self._docks_sized:
            self._docks_sized = True
            self.size_docks()

    def size_docks(self) -> None:
        """The graph gets about 70 % of the width; the charts (when shown) about 30 % of the height."""
        self.resizeDocks([self.inspector_dock, self.profiles_dock], [int(self.width() * 0.3)] * 2,
                         Qt.Orientation.Horizontal)
        self.resizeDocks([self.profiles_dock, self.inspector_dock],
                         [int(self.height() * 0.15), int(self.height() * 0.65)], Qt.Orientation.Vertical)
        if self.panels_dock.isVisible():
            self.resizeDocks([self.panels_dock], [int(self.height() * 0.3)], Qt.Orientation.Vertical)

    # --- help -----------------------------------------------------------------------------
    def empty_hint_text(self) -> str:
        """What the graph area says while no model is open: the ways to open one."""
        keys = self.open_action.shortcut().toString(QKeySequence.SequenceFormat.NativeText)
        return (f"No model open.\n\nOpen one with File > Open… ({keys}) or File > Open Recent,\n"
                "or drop a model (.onnx, .mlmodel, .mlpackage) or a session (.layerscope) here.")

    def shortcuts(self) -> list[tuple[str, str]]:
        """(menu item, key) of every menu item that has a shortcut, in menu order."""
        rows = []
        for menu_action in self.menuBar().actions():
            stack = [(menu_action.text().replace("&", ""), menu_action.menu())]
            while stack:
                path, menu = stack.pop(0)
                for action in menu.actions():
                    text = action.text().replace("&", "").rstrip("…")
                    if action.menu() is not None:
                        stack.append((f"{path} > {text}", action.menu()))
                    elif not action.shortcut().isEmpty():
                        rows.append((f"{path} > {text}",
                                     action.shortcut().toString(QKeySequence.SequenceFormat.NativeText)))
        return rows + [("Graph: select a producer / a consumer of the selected layer", "Up / Down"),
                       ("Graph: select the next layer of the same row", "Left / Right"),
                       ("Find: next / previous match", "Enter / Shift+Enter"),
                       ("Compare window: close", "Esc")]

    def show_shortcuts(self) -> None:
        text = "".join(f"<tr><td>{name}</td><td>&nbsp;&nbsp;<b>{key}</b></td></tr>" for name, key in self.shortcuts())
        QMessageBox.information(self, "Keyboard shortcuts", f"<table>{text}</table>")

    def show_documentation(self) -> None:
        from PySide6.QtCore import QUrl
        from PySide6.QtGui import QDesktopServices

        readme = Path(__file__).resolve().parents[1] / "README.md"
        if not readme.is_file() or not QDesktopServices.openUrl(QUrl.fromLocalFile(str(readme))):
            QMessageBox.information(self, "Documentation",
                                    f"The documentation is README.md and docs/ of the LayerScope sources "
                                    f"({readme.parent}); `layerscope --help` lists the commands.")

    def show_about(self) -> None:
        QMessageBox.about(self, f"About {APP_NAME}",
                          f"<b>{APP_NAME}</b> {app_version()}<br>Per-layer profiles of neural networks: "
                          "graph, measured times, bottleneck reports.")

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
        profiles of this one: a running profile or unsaved profiles are asked about first.
        """
        if is_session_file(path):
            self.open_session(path)
            return
        same = self.loaded is not None and _same_file(self.loaded.path, path)
        if self.loaded is not None and not same and not self.confirm_leaving(f"open {Path(path).name}"):
            return
        if self.helper_process:
            start_helper_process()  # no-op while it runs; replaces one that died
        include_constants = self.show_constants_action.isChecked()
        # The grouping chosen for this model does not carry over to another one (its groups differ).
        grouping = self.grouping() if same else "none"
        self._start_task(lambda progress: load_model(path, include_constants, progress, grouping),
                         f"Opening {Path(path).name}", self._on_loaded)

    def load_blocking(self, path: str) -> None:
        """Open `path` in this thread (for `layerscope view --screenshot` and scripts)."""
        try:
            loaded = load_model(path, self.show_constants_action.isChecked(), grouping=self.grouping())
        except ModelLoadError as exc:
            self._on_failed(str(exc))
            return
        self._on_loaded(loaded, incremental=False)

    def _start_task(self, function, message: str, on_done) -> None:
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

    def _on_failed(self, message: str, title: str = "Cannot open model") -> None:
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
        if focus is not None and scene.box_id(focus) is not None:
            if selected:  # the selection stays, the view goes to the group just opened or closed
                self.view.select_node(selected, center=False)
            self.view.center_on_node(focus)
        elif selected:
            self.view.select_node(selected)
        else:
            self.view.show_start()
        self._sync_grouping_controls(loaded)
        self._search_matches, self._search_position = [], -1
        if self.search_field.text():
            self._search_changed(self.search_field.text())
        self._show_summary()
        self.setWindowTitle(f"{Path(loaded.path).name} — {APP_NAME}")
        if previous is None or not _same_file(previous.path, loaded.path):
            self._remember_recent(loaded.path)
        self._update_profile_actions()
        if self.run_dialog is not None:
            self._show_model_in_run_dialog()
        self.modelLoaded.emit(loaded.path)
        QTimer.singleShot(1000, self.panels, self.panels.warm_up)  # charts' import, off the first paint
        if session is not None:
            self.sessionOpened.emit(loaded.path)

    def _show_summary(self) -> None:
        loaded = self.loaded
        totals = loaded.analysis.totals
        hidden = "" if loaded.include_constants else f" ({totals.constant_nodes} constant nodes folded)"
        self.summary_label.setText(
            f"{Path(loaded.path).name}: {totals.compute_nodes} nodes{hidden} · params "
            f"{human_count(totals.params)} · MACs {human_count(totals.macs)} · peak activations "
            f"{human_bytes(totals.peak_activation_bytes)} (estimated) · layout {loaded.layout.method}"
            + (" · tensors NHWC" if loaded.analysis.graph.channels_last else ""))

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
        else:  # the first of its nodes (or of its collapsed sub-groups) that will be drawn
            self._focus_after_build = next((m for m in loaded.groups[group_id].members
                                            if not loaded.analysis.nodes[m].is_constant), None)
        self._relayout_groups(collapsed, f"{'Collapsing' if collapse else 'Expanding'} "
                                         f"{loaded.groups[group_id].name}")

    def set_all_groups(self, collapse: bool) -> None:
        if self.loaded is None or not self.loaded.groups:
            return
        self._focus_after_build = None
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

    # --- recent files ---------------------------------------------------------------------
    def recent_files(self) -> list[str]:
        value = self.settings.value("recentFiles", [])
        if isinstance(value, str):
            value = [value]
        return [str(v) for v in (value or [])]

    def _remember_recent(self, path: str) -> None:
        path = str(Path(path).resolve())
        files = [path] + [p for p in self.recent_files() if p != path]
        self.settings.setValue("recentFiles", files[:MAX_RECENT])
        self._update_recent_menu()

    def _update_recent_menu(self) -> None:
        self.recent_menu.clear()
        files = self.recent_files()
        for path in files:
            self.recent_menu.addAction(QAction(path, self, triggered=lambda checked=False, p=path: self.open_path(p)))
        self.recent_menu.setEnabled(bool(files))

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

    def _search_changed(self, text: str) -> None:
        self._search_matches = self.scene.find_nodes(text) if self.scene is not None else []
        self._search_position = -1
        if not text.strip():
            self.search_label.setText("")
        else:
            self.search_label.setText(f"{len(self._search_matches)} found" if self._search_matches
                                      else "not found")

    def search_next(self, step: int = 1) -> Optional[str]:
        """Select and centre the next match of the search field (`step` -1: the previous); returns its node id."""
        if not self._search_matches:
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
            # (the charts fill in two steps of their own, see _fill_charts)
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
            return analysis, relayout(at_size, loaded.include_constants, progress)

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
        (the per-layer chart, then the other tabs); dropped if another profile was selected since."""
        if self.selected_entry() is not entry:
            return
        steps = steps or self.panels.profile_steps(profile, label)
        if next(steps, StopIteration) is not StopIteration:
            QTimer.singleShot(50, self, lambda: self._fill_charts(entry, profile, label, steps))
        elif self.inspector.node_id:
            self.panels.highlight_node(self.inspector.node_id)

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
            _warm_profiling_imports()
            self.panels.real()  # the charts a run will fill: built now, not when its result arrives
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
            self.run_dialog.show_finished(f"Failed: {message}")
        self.progress_label.setText("Profiling failed")
        if self.error_dialogs:
            QMessageBox.critical(self.run_dialog if self.run_dialog and self.run_dialog.isVisible() else self,
                                 "Profiling failed", message)
        self.profileFailed.emit(message)

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
            def open_when_laid_out(ungrouped: LoadedModel) -> None:
                if self.loaded is not None and ungrouped.model is self.loaded.model:  # still the open model
                    self._open_compare(ungrouped, a, b)

            self._start_task(lambda progress: relayout(loaded, loaded.include_constants, progress, grouping="none"),
                             "Laying out every node for the comparison", open_when_laid_out)
            return None
        return self._open_compare(loaded, a, b)

    def _open_compare(self, loaded: LoadedModel, a: int, b: int):
        from gui.compare_view import CompareView

        if self.compare_view is not None:
            self.compare_view.close()
        self.compare_view = CompareView(loaded, [(e.label, e.profile) for e in self.entries], self, a, b)
        self.compare_view.nodeSelected.connect(lambda node_id: self.view.select_node(node_id))
        self.compare_view.show()
        return self.compare_view

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

    # --- sessions and imported profiles ---------------------------------------------------
    def current_session(self) -> Session:
        if self.loaded is None:
            raise OSError("no model is open")
        loaded = self.loaded
        return Session(loaded.path, tuple(e.profile for e in self.entries), tuple(self.sweeps),
                       self.selected_profile if self.selected_profile >= 0 else None,
                       self.overlay_combo.currentData(), loaded.grouping, tuple(sorted(loaded.collapsed)),
                       loaded.include_constants)

    def save_session_to(self, path: str) -> Path:
        written = save_session(self.current_session(), path)
        self._saved_state = self._session_state()
        return written

    def save_session_dialog(self) -> bool:
        """Ask where, and save the session; True once it is written."""
        if self.loaded is None:
            return False
        suggested = self._suggest(Path(self.loaded.path).with_suffix(".layerscope").name)
        path = self._chosen(QFileDialog.getSaveFileName(self, "Save session", suggested, SESSION_FILTER)[0])
        if not path:
            return False
        try:
            self.save_session_to(path)
        except (OSError, ValueError) as exc:
            QMessageBox.critical(self, "Cannot save session", f"{path}: {exc}")
            return False
        self.progress_label.setText(f"Saved {Path(path).name}")
        return True

    def _session_state(self) -> tuple:
        return tuple(id(e.profile) for e in self.entries), tuple(id(s) for s in self.sweeps)

    def has_unsaved_profiles(self) -> bool:
        """Profiles or sweeps in the session that were taken (or changed) since it was last saved or opened."""
        state = self._session_state()
        return any(state) and state != self._saved_state

    def confirm_leaving(self, action: str) -> bool:
        """Before `action` ("quit", "open other.onnx") drops the session: stop a running profile
        only if the person agrees, and offer to save unsaved profiles.  True: go ahead."""
        if not self.ask_before_discarding:
            return True
        if self.worker is not None:
            box = QMessageBox(QMessageBox.Icon.Question, "A profile is running",
                              f"A profile run is in progress. Stop it and {action}?", parent=self)
            box.setInformativeText("The runs it has measured so far are not kept.")
            stop = box.addButton(f"Stop and {action.split()[0]}", QMessageBox.ButtonRole.DestructiveRole)
            box.setDefaultButton(box.addButton(QMessageBox.StandardButton.Cancel))
            box.exec()
            if box.clickedButton() is not stop:
                return False
            self.stop_profile_worker()
            self._update_profile_actions()
        if not self.has_unsaved_profiles():
            return True
        box = QMessageBox(QMessageBox.Icon.Warning, "Save session?",
                          f"The session of {Path(self.loaded.path).name} has {len(self.entries)} profile(s) "
                          "that are not saved.", parent=self)
        box.setInformativeText(f"Save them before you {action}? Discarded profiles cannot be recovered.")
        box.setStandardButtons(QMessageBox.StandardButton.Save | QMessageBox.StandardButton.Discard
                               | QMessageBox.StandardButton.Cancel)
        box.setDefaultButton(QMessageBox.StandardButton.Save)
        answer = box.exec()
        if answer == QMessageBox.StandardButton.Save:
            return self.save_session_dialog()
        return answer == QMessageBox.StandardButton.Discard

    def open_session_dialog(self) -> None:
        path = self._chosen(QFileDialog.getOpenFileName(self, "Open session", self.dialog_folder(), SESSION_FILTER)[0])
        if path:
            self.open_session(path)

    def open_session(self, path: str) -> None:
        """Read the session and open its model in a worker; the profiles come back once it is drawn."""
        if not self.confirm_leaving(f"open {Path(path).name}"):
            return
        include_constants, grouping = self.show_constants_action.isChecked(), self.grouping()

        def work(progress):
            progress("Reading session…")
            session = load_session(path)
            if session.grouping is None:  # saved before the layout was kept: the toolbar's choice
                return session, load_model(session.model_path, include_constants, progress, grouping)
            return session, load_model(session.model_path, session.show_constants, progress, session.grouping,
                                       frozenset(session.collapsed))

        self._start_task(work, f"Opening session {Path(path).name}", self._on_session_loaded)

    def _on_session_loaded(self, result) -> None:
        session, loaded = result
        self._pending_session = session
        self._on_loaded(loaded)

    def _install_session(self, session: Session) -> None:
        self._clear_profiles()
        self.sweeps = list(session.sweeps)
        for profile in session.profiles:
            self.add_profile(profile, select=False)
        self.select_profile(session.selected if session.selected is not None else len(self.entries) - 1)
        key = session.overlay if session.overlay in OVERLAYS else "none"
        if OVERLAYS[key] is not None and OVERLAYS[key].needs_profile and not self.entries:
            key = "none"
        self.overlay_combo.blockSignals(True)
        self.overlay_combo.setCurrentIndex(self.overlay_combo.findData(key))
        self.overlay_combo.blockSignals(False)
        for k, action in self.overlay_actions.items():
            action.setChecked(k == key)
        self._saved_state = self._session_state()

    def import_profile(self, path: str) -> int:
        """Add a layerscope.profile/1 file (e.g. from `layerscope profile --json`) to the session.

        Raises ProfileFormatError when the file is not a profile or was taken of another model.
        """
        if self.loaded is None:
            raise ProfileFormatError("open the profiled model first")
        profile = load_profile_json(path)
        nodes = self.loaded.analysis.nodes
        matched = sum(1 for node_id in profile.nodes if node_id in nodes)
        if profile.nodes and matched < len(profile.nodes) / 2:
            raise ProfileFormatError(
                f"{path}: only {matched} of its {len(profile.nodes)} nodes are in {Path(self.loaded.path).name}; "
                f"it was taken of {profile.model_path or 'another model'}: open that model first")
        entry_analysis = None
        if not profile.hints:
            from engine.hints import find_hints
            entry_analysis = profile_analysis(self.loaded.path, profile, self.loaded.analysis)
            profile = profile.with_hints(find_hints(profile, entry_analysis))
        index = self.add_profile(profile, entry_analysis)
        if OVERLAYS[self.overlay_combo.currentData()] is None:
            self.set_overlay("time")
        return index

    def import_profile_dialog(self) -> None:
        path = self._chosen(QFileDialog.getOpenFileName(self, "Import profile", self.dialog_folder(),
                                                        "LayerScope profile (*.json)")[0])
        if path:
            try:
                self.import_profile(path)
            except (ProfileFormatError, ModelLoadError) as exc:
                QMessageBox.critical(self, "Cannot import profile", str(exc))

    # --- export ---------------------------------------------------------------------------
    def export_profile(self, kind: str, path: str) -> Path:
        """Write the selected profile as `kind` (a key of PROFILE_EXPORTS) with the engine's writers."""
        from engine.report import write_chrome_trace, write_csv, write_html, write_model_explorer

        entry = self.selected_entry()
        if entry is None:
            raise OSError("no profile: run one first (Profile > Run…)")
        profile = entry.profile
        if kind == "json":
            return profile.save_json(path)
        if kind == "trace":
            return write_chrome_trace(profile, path)
        analysis = self.analysis_for(entry)
        if kind == "html":
            from engine.convert import report_blockers
            rows = [row for sweep in self.sweeps for row in sweep.rows]
            # "Cannot run on Core ML: N nodes", checked at the sizes the profile ran at.
            blockers = report_blockers(self.loaded.path, profile.settings.get("input_shapes"))
            # The other profiles the session holds (targets, modes, sizes) go side by side; the selected is first.
            others = [other.profile for other in self.entries if other is not entry]
            return write_html([profile, *others], analysis, path, sweep=rows or None, blockers=blockers,
                              numerics=self.numerics_result())
        if kind == "csv":
            return write_csv(profile, analysis, path)
        if kind == "model_explorer":
            return write_model_explorer(profile, analysis, path)
        raise ValueError(f"unknown export {kind!r}; known: {', '.join(PROFILE_EXPORTS)}")

    def export_profile_dialog(self, kind: str) -> None:
        entry = self.selected_entry()
        if entry is None or self.loaded is None:
            return
        _, suffix, file_filter = PROFILE_EXPORTS[kind]
        slug = "-".join(entry.label.replace("#", "").split())
        suggested = self._suggest(f"{Path(self.loaded.path).stem}-{slug}{suffix}")
        path = self._chosen(QFileDialog.getSaveFileName(self, "Export profile", suggested, file_filter)[0])
        if path:
            try:
                self.export_profile(kind, path)
                self.progress_label.setText(f"Wrote {Path(path).name}")
            except (OSError, ValueError, ModelLoadError) as exc:
                QMessageBox.critical(self, "Export failed", f"{path}: {exc}")

    def export_dialog(self, kind: str) -> None:
        if self.scene is None:
            return
        suggested = self._suggest(Path(self.loaded.path).with_suffix("." + kind).name)
        path = self._chosen(QFileDialog.getSaveFileName(self, f"Export graph as {kind.upper()}", suggested,
                                                        f"{kind.upper()} (*.{kind})")[0])
        if path:
            try:
                self.export_graph(path)
            except OSError as exc:
                QMessageBox.critical(self, "Export failed", f"{path}: {exc}")

    def export_graph(self, path: str, max_side: int = 16000) -> None:
        """Write the whole graph as PNG (at most `max_side` pixels per side) or SVG (by suffix).

        The picture is the scene's rectangle (every box and every edge's polyline) under a band
        holding the legend the window shows (op categories, or the overlay's scale and kind).
        """
        if self.scene is None:
            raise OSError("no model is open")
        source = self.scene.sceneRect()
        legend = self.view.legend.grab() if not self.view.legend.isHidden() else None
        band = legend.height() + 16 if legend is not None else 0
        svg = path.lower().endswith(".svg")
        scale = 1.0 if svg else min(1.0, max_side / max(source.width(), source.height() + band))
        width, height = max(1, int(source.width() * scale)), max(1, int(source.height() * scale))
        if svg:
            from PySide6.QtSvg import QSvgGenerator
            device = QSvgGenerator()
            device.setFileName(path)
            device.setSize(QSize(width, height + band))
            device.setViewBox(QRectF(0, 0, width, height + band))
            device.setTitle(Path(self.loaded.path).name)
            device.setDescription("LayerScope graph export")
        else:
            device = QImage(width, height + band, QImage.Format.Format_ARGB32_Premultiplied)
            device.fill(Qt.GlobalColor.white)
        painter = QPainter(device)
        painter.setRenderHints(QPainter.RenderHint.Antialiasing | QPainter.RenderHint.TextAntialiasing)
        if legend is not None:
            painter.drawPixmap(8, 8, legend)
        self.scene.render(painter, QRectF(0, band, width, height), source)
        painter.end()
        if not svg and not device.save(path):
            raise OSError(f"could not write {path}")

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
        if not image.save(output):
            raise OSError(f"could not write {output}")
        return output
    finally:
        window.close()
        window.deleteLater()
        app.processEvents()
