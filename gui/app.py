"""The LayerScope main window and the `run_app` entry point used by `layerscope [MODEL]`.

Opening a model (import, analysis, layout) runs in a worker thread of the
global QThreadPool; the UI thread only builds the scene from the finished
layout.  A file that cannot be opened shows the importer's message and leaves
the current model open.
"""
from __future__ import annotations

import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

from PySide6.QtCore import QObject, QRectF, QRunnable, QSettings, QSize, Qt, QThreadPool, QTimer, Signal, Slot
from PySide6.QtGui import QAction, QImage, QKeySequence, QPainter
from PySide6.QtWidgets import (QApplication, QCheckBox, QComboBox, QDockWidget, QFileDialog, QLabel,
                               QLineEdit, QMainWindow, QMessageBox, QProgressBar, QToolBar, QWidget)

from engine.inspect import human_bytes, human_count
from engine.ir import ModelLoadError
from gui.graph_view import OVERLAY_TITLES, OVERLAYS, GraphScene, GraphView
from gui.inspector import Inspector

APP_NAME = "LayerScope"
MAX_RECENT = 10
MODEL_FILTER = "Models (*.onnx *.mlmodel *.mlpackage);;All files (*)"


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


def load_model(path: str, include_constants: bool = False, progress=None) -> LoadedModel:
    """Import, analyse and lay out `path`: the engine calls the worker makes (no Qt objects)."""
    from engine.analysis import analyze
    from engine.layout import layout_graph
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
    analysis = analyze(model)
    timings["analysis"] = time.perf_counter() - start
    return relayout(LoadedModel(str(path), model, analysis, None, include_constants,
                                analysis.graph.producers(), timings), include_constants, progress)


def relayout(loaded: LoadedModel, include_constants: bool, progress=None) -> LoadedModel:
    from engine.layout import layout_graph

    if progress:
        progress("Laying out…")
    start = time.perf_counter()
    layout = layout_graph(loaded.analysis, include_constants=include_constants)
    timings = dict(loaded.timings, layout=time.perf_counter() - start)
    return LoadedModel(loaded.path, loaded.model, loaded.analysis, layout, include_constants,
                       loaded.producers, timings)


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
        except ModelLoadError as exc:
            self.signals.failed.emit(str(exc))
        except Exception as exc:  # an engine bug must not kill the app: say what happened
            self.signals.failed.emit(f"unexpected {type(exc).__name__} while opening: {exc}")
        else:
            self.signals.finished.emit(result)


class MainWindow(QMainWindow):
    modelLoaded = Signal(str)  # path
    loadFailed = Signal(str)  # message shown to the person

    def __init__(self, settings: Optional[QSettings] = None, parent=None, error_dialogs: bool = True):
        super().__init__(parent)
        # False for offscreen rendering: a failure is reported through loadFailed only.
        self.error_dialogs = error_dialogs
        self.settings = settings if settings is not None else QSettings(APP_NAME, APP_NAME)
        self.loaded: Optional[LoadedModel] = None
        self.scene: Optional[GraphScene] = None
        self._tasks: set[_LoadTask] = set()
        self._pending_build = None  # (scene, build steps, loaded, keep_view, start time)
        self._search_matches: list[str] = []
        self._search_position = -1
        self.setWindowTitle(APP_NAME)
        self.resize(1400, 900)
        self.setAcceptDrops(True)

        self.view = GraphView(self)
        self.setCentralWidget(self.view)
        self.inspector = Inspector()
        dock = QDockWidget("Inspector", self)
        dock.setObjectName("inspector")
        dock.setWidget(self.inspector)
        dock.setFeatures(QDockWidget.DockWidgetFeature.DockWidgetMovable
                         | QDockWidget.DockWidgetFeature.DockWidgetFloatable)
        self.addDockWidget(Qt.DockWidgetArea.RightDockWidgetArea, dock)
        self.resizeDocks([dock], [500], Qt.Orientation.Horizontal)
        self.view.nodeSelected.connect(self._on_node_selected)

        self._build_actions()
        self._build_toolbar()
        self._build_status_bar()
        self._update_recent_menu()

    # --- UI construction ------------------------------------------------------------------
    def _build_actions(self) -> None:
        menu = self.menuBar().addMenu("&File")
        self.open_action = QAction("&Open…", self, shortcut=QKeySequence.StandardKey.Open,
                                   triggered=self.open_dialog)
        menu.addAction(self.open_action)
        self.recent_menu = menu.addMenu("Open &Recent")
        menu.addSeparator()
        self.export_png_action = QAction("Export graph as &PNG…", self,
                                         triggered=lambda: self.export_dialog("png"))
        self.export_svg_action = QAction("Export graph as &SVG…", self,
                                         triggered=lambda: self.export_dialog("svg"))
        menu.addAction(self.export_png_action)
        menu.addAction(self.export_svg_action)
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
        bar.addWidget(QLabel(" Overlay: "))
        self.overlay_combo = QComboBox()
        for key in OVERLAYS:
            self.overlay_combo.addItem(OVERLAY_TITLES[key] if key != "none" else "None (op category)", key)
        self.overlay_combo.currentIndexChanged.connect(
            lambda i: self.set_overlay(self.overlay_combo.itemData(i)))
        bar.addWidget(self.overlay_combo)
        self.constants_box = QCheckBox("Constants")
        self.constants_box.setToolTip("Show folded constant nodes as boxes (normally drawn as weights)")
        self.constants_box.toggled.connect(self.show_constants_action.setChecked)
        self.show_constants_action.toggled.connect(self.constants_box.setChecked)
        bar.addSeparator()
        bar.addWidget(self.constants_box)
        bar.addSeparator()
        self.search_field = QLineEdit()
        self.search_field.setPlaceholderText("Find name or op type (Enter: next)")
        self.search_field.setClearButtonEnabled(True)
        self.search_field.setFixedWidth(260)
        self.search_field.returnPressed.connect(self.search_next)
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
        self.zoom_label = QLabel("")
        status.addPermanentWidget(self.zoom_label)
        self.view.zoomChanged.connect(lambda s: self.zoom_label.setText(f"{s * 100:.0f} %"))

    # --- opening --------------------------------------------------------------------------
    @property
    def loading(self) -> bool:
        return bool(self._tasks) or self._pending_build is not None

    def open_dialog(self) -> None:
        start = str(Path(self.loaded.path).parent) if self.loaded else ""
        path, _ = QFileDialog.getOpenFileName(self, "Open model", start, MODEL_FILTER)
        if path:
            self.open_path(path)

    def open_path(self, path: str) -> None:
        """Open `path` in a worker; the current model stays until the new one is ready."""
        include_constants = self.show_constants_action.isChecked()
        self._start_task(lambda progress: load_model(path, include_constants, progress),
                         f"Opening {Path(path).name}", self._on_loaded)

    def load_blocking(self, path: str) -> None:
        """Open `path` in this thread (for `layerscope view --screenshot` and scripts)."""
        try:
            loaded = load_model(path, self.show_constants_action.isChecked())
        except ModelLoadError as exc:
            self._on_failed(str(exc))
            return
        self._on_loaded(loaded, incremental=False)

    def _start_task(self, function, message: str, on_done) -> None:
        task = _LoadTask(function)
        self._tasks.add(task)
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
        if error is not None:
            self._on_failed(error)
        elif result is not None:
            on_done(result)

    def _on_failed(self, message: str) -> None:
        if self.error_dialogs:
            QMessageBox.critical(self, "Cannot open model", message)
        self.loadFailed.emit(message)

    def _on_loaded(self, loaded: LoadedModel, keep_view: bool = False, incremental: bool = True) -> None:
        """Build the scene for `loaded` and show it; the current scene stays until the new one is complete.

        Incremental building creates the items in chunks between event-loop turns (~40 ms
        each), so a 20,000-node model does not freeze the window while it is drawn.
        """
        if self._pending_build is not None:  # a newer model wins over one still being drawn
            self._pending_build[0].deleteLater()
            self._pending_build = None
        scene = GraphScene(loaded, self, build=False)
        self._pending_build = (scene, scene.build_steps(), loaded, keep_view, time.perf_counter())
        if incremental:
            self.progress_label.setText("Drawing…")
            self.progress.show()
            self._continue_build()
        else:
            for _ in self._pending_build[1]:
                pass
            self._finish_build()

    def _continue_build(self) -> None:
        if self._pending_build is None:
            return
        steps = self._pending_build[1]
        deadline = time.perf_counter() + 0.04
        while time.perf_counter() < deadline:
            if next(steps, StopIteration) is StopIteration:
                self._finish_build()
                return
        QTimer.singleShot(0, self._continue_build)

    def _finish_build(self) -> None:
        scene, _, loaded, keep_view, started = self._pending_build
        self._pending_build = None
        if not self._tasks:
            self.progress.hide()
            self.progress_label.setText("")
        selected = self.inspector.node_id if keep_view else None
        self.loaded = loaded
        self.scene = scene
        self.view.set_graph_scene(scene)
        key = self.overlay_combo.currentData()
        if key != "none":
            scene.set_overlay(key)
        self.view.update_legend()
        loaded.timings["scene"] = time.perf_counter() - started
        self.inspector.show_nothing()
        if selected and selected in scene.node_index:
            self.view.select_node(selected)
        else:
            self.view.show_start()
        self._search_matches, self._search_position = [], -1
        if self.search_field.text():
            self._search_changed(self.search_field.text())
        self._show_summary()
        self.setWindowTitle(f"{Path(loaded.path).name} — {APP_NAME}")
        if not keep_view:
            self._remember_recent(loaded.path)
        self.modelLoaded.emit(loaded.path)

    def _show_summary(self) -> None:
        loaded = self.loaded
        totals = loaded.analysis.totals
        hidden = "" if loaded.include_constants else f" ({totals.constant_nodes} constant nodes folded)"
        self.summary_label.setText(
            f"{Path(loaded.path).name}: {totals.compute_nodes} nodes{hidden} · params "
            f"{human_count(totals.params)} · MACs {human_count(totals.macs)} · peak activations "
            f"{human_bytes(totals.peak_activation_bytes)} (estimated) · layout {loaded.layout.method}")

    def set_show_constants(self, show: bool) -> None:
        if self.loaded is None or self.loaded.include_constants == show:
            return
        current = self.loaded
        self._start_task(lambda progress: relayout(current, show, progress),
                         "Showing constants" if show else "Hiding constants", self._on_relaid)

    def _on_relaid(self, loaded: LoadedModel) -> None:
        self._on_loaded(loaded, keep_view=True)

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

    def search_next(self) -> Optional[str]:
        """Select and centre the next match of the search field; returns its node id."""
        if not self._search_matches:
            self._search_changed(self.search_field.text())
        if not self._search_matches:
            return None
        self._search_position = (self._search_position + 1) % len(self._search_matches)
        node_id = self._search_matches[self._search_position]
        self.view.select_node(node_id)
        self.search_label.setText(f"{self._search_position + 1} / {len(self._search_matches)}")
        return node_id

    def _on_node_selected(self, node_id: str) -> None:
        if self.loaded is not None:
            self.inspector.show_node(self.loaded, node_id)

    # --- export ---------------------------------------------------------------------------
    def export_dialog(self, kind: str) -> None:
        if self.scene is None:
            return
        suggested = str(Path(self.loaded.path).with_suffix("." + kind).name)
        path, _ = QFileDialog.getSaveFileName(self, f"Export graph as {kind.upper()}", suggested,
                                              f"{kind.upper()} (*.{kind})")
        if path:
            try:
                self.export_graph(path)
            except OSError as exc:
                QMessageBox.critical(self, "Export failed", f"{path}: {exc}")

    def export_graph(self, path: str, max_side: int = 16000) -> None:
        """Write the whole graph as PNG (at most `max_side` pixels per side) or SVG (by suffix)."""
        if self.scene is None:
            raise OSError("no model is open")
        source = self.scene.sceneRect()
        if path.lower().endswith(".svg"):
            from PySide6.QtSvg import QSvgGenerator
            generator = QSvgGenerator()
            generator.setFileName(path)
            generator.setSize(QSize(int(source.width()), int(source.height())))
            generator.setViewBox(QRectF(0, 0, source.width(), source.height()))
            generator.setTitle(Path(self.loaded.path).name)
            generator.setDescription("LayerScope graph export")
            painter = QPainter(generator)
            self.scene.render(painter, QRectF(0, 0, source.width(), source.height()), source)
            painter.end()
            return
        scale = min(1.0, max_side / max(source.width(), source.height()))
        image = QImage(max(1, int(source.width() * scale)), max(1, int(source.height() * scale)),
                       QImage.Format.Format_ARGB32_Premultiplied)
        image.fill(Qt.GlobalColor.white)
        painter = QPainter(image)
        painter.setRenderHints(QPainter.RenderHint.Antialiasing | QPainter.RenderHint.TextAntialiasing)
        self.scene.render(painter, QRectF(image.rect()), source)
        painter.end()
        if not image.save(path):
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
        # Workers finish their current step; their results are dropped with the window.
        for task in list(self._tasks):
            try:
                task.signals.finished.disconnect()
                task.signals.failed.disconnect()
            except (RuntimeError, TypeError):
                pass
        self._tasks.clear()
        self._pending_build = None
        super().closeEvent(event)


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


def run_app(model_path: Optional[str] = None, overlay: str = "none") -> int:
    """Open the main window on `model_path` (default: the bundled sample) and run the event loop."""
    app = _application()
    window = MainWindow()
    window.set_overlay(overlay)
    window.show()
    if model_path is None:
        from engine.samples import default_sample_path
        model_path = str(default_sample_path())
    QTimer.singleShot(0, lambda: window.open_path(model_path))
    return app.exec()


def _quiet_offscreen_warnings() -> None:
    """The offscreen platform warns about window hints it does not support; nothing to act on."""
    from PySide6.QtCore import qInstallMessageHandler

    def handler(mode, context, message):
        if "propagateSizeHints" not in message:
            sys.stderr.write(message + "\n")

    qInstallMessageHandler(handler)


def render_screenshot(model_path: Optional[str], output: str, overlay: str = "none",
                      size: tuple[int, int] = (1400, 900), select: Optional[str] = None) -> str:
    """Render the main window offscreen on `model_path` and save it as a PNG; returns the path."""
    _ensure_platform()
    if os.environ.get("QT_QPA_PLATFORM") == "offscreen":
        _quiet_offscreen_warnings()
    app = _application()
    settings = QSettings(QSettings.Format.IniFormat, QSettings.Scope.UserScope, APP_NAME, "screenshot")
    # No dialog offscreen: a failure is raised to the caller instead.
    window = MainWindow(settings=settings, error_dialogs=False)
    failures: list[str] = []
    window.loadFailed.connect(failures.append)
    try:
        window.resize(*size)
        window.show()
        app.processEvents()
        if model_path is None:
            from engine.samples import default_sample_path
            model_path = str(default_sample_path())
        window.load_blocking(model_path)
        if failures:
            raise ModelLoadError(model_path, failures[0].split(": ", 1)[-1])
        window.set_overlay(overlay)
        if select:
            window.view.select_node(select)
        app.processEvents()
        image = window.grab()
        if not image.save(output):
            raise OSError(f"could not write {output}")
        return output
    finally:
        window.close()
        window.deleteLater()
        app.processEvents()
