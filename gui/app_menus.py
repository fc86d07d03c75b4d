"""The main window's menus, actions, toolbar, status bar, help and recent files (a mixin of
gui.app.MainWindow), and the texts and file filters they use."""
from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Optional

from PySide6.QtCore import QEvent, QSize, Qt
from PySide6.QtGui import QAction, QKeySequence, QPainter
from PySide6.QtWidgets import (QAbstractItemView, QApplication, QCheckBox, QComboBox, QHBoxLayout, QLabel,
                               QLineEdit, QListWidget, QMessageBox, QProgressBar, QPushButton, QToolBar,
                               QVBoxLayout, QWidget)

from engine.layout import GROUPINGS
from engine.profile import Profile
from engine.session import Session
from gui.graph_view import OVERLAY_TITLES, OVERLAYS
from gui import numerics_view


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


def _main_module():
    """gui.app, imported when first needed: it imports this module (MainWindow mixes this class in)."""
    from gui import app
    return app


class ElidedLabel(QLabel):
    """A one-line label that ends in "…" where the room ends (a plain QLabel cuts mid-word: the
    status line read "· lay 89,356 nodes: opened folded…" beside a note); the whole text in its tooltip."""

    def shown_text(self) -> str:
        return self.fontMetrics().elidedText(self.text(), Qt.TextElideMode.ElideRight, self.contentsRect().width())

    def paintEvent(self, event) -> None:
        painter = QPainter(self)
        painter.drawText(self.contentsRect(), int(self.alignment() | Qt.AlignmentFlag.AlignVCenter), self.shown_text())

    def minimumSizeHint(self) -> QSize:  # may be narrower than its text: it elides
        return QSize(0, super().minimumSizeHint().height())


class MenusMixin:
    """gui.app.MainWindow's menus and actions: built once in its __init__, help dialogs, recent files."""

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
        # A tree control's keys for expanding and collapsing everything (Ctrl+* / Ctrl+/, the keypad's
        # too).  The letters and Ctrl+Shift+= clashed: Ctrl+Shift+E is the HTML report,
        # Ctrl+Shift+= is Zoom in on US keyboards, Ctrl+Alt+letter is AltGr on Windows (AltGr+E: €).
        self.expand_all_action = QAction("&Expand all groups", self, enabled=False,
                                         shortcut=QKeySequence("Ctrl+*"),
                                         triggered=lambda: self.set_all_groups(False))
        self.collapse_all_action = QAction("&Collapse all groups", self, enabled=False,
                                           shortcut=QKeySequence("Ctrl+/"),
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
        # The charts only: the Profiles and Inspector docks cannot be closed, so Qt disables their
        # toggles, which the menu showed checked and greyed, as if broken.
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
        self.search_field.textChanged.connect(self._search_typed)
        bar.addWidget(self.search_field)
        self.search_label = QLabel("")
        self.search_label.setMinimumWidth(90)
        self.search_label.setToolTip("Counted: what Enter can go to: the nodes whose name, id or op type contains "
                                     "the text (inside collapsed groups too, except constants folded into their "
                                     "consumers while Constants is off), and the group boxes drawn and graph "
                                     "inputs/outputs whose name does (a group inside a collapsed one counts once "
                                     "it is drawn)")
        bar.addWidget(self.search_label)

    def _build_status_bar(self) -> None:
        status = self.statusBar()
        self.summary_label = ElidedLabel("No model")
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
        # A share, as the Run dialog's bar: the count includes the warm-up runs, and read "70/2003
        # runs" beside the message's "run 67/2000" (measured runs only).
        self.run_progress.setFormat("%p%")
        status.addPermanentWidget(self.run_progress)
        self.run_progress.hide()
        self.zoom_label = QLabel("")
        status.addPermanentWidget(self.zoom_label)
        self.view.zoomChanged.connect(lambda s: self.zoom_label.setText(f"{s * 100:.0f} %"))

    def showEvent(self, event) -> None:
        super().showEvent(event)
        if not self._docks_sized:
            self._docks_sized = True
            for dock in (self.inspector_dock, self.profiles_dock, self.panels_dock):
                dock.installEventFilter(self)
            self.size_docks()

    def eventFilter(self, watched, event) -> bool:
        # A dock resized while the window keeps its size: the person moved a separator (or a sizing
        # of ours took effect).  Those shares of the window are what a window resize keeps.
        if event.type() == QEvent.Type.Resize and self.size() == self._settled_size:
            self._dock_shares = self._current_dock_shares()
        return super().eventFilter(watched, event)

    def resizeEvent(self, event) -> None:
        super().resizeEvent(event)
        # The window's layout keeps the docks' sizes in pixels and gives or takes the difference
        # from the graph: a smaller window left the graph a strip beside them (800 x 600: a 310 x
        # 200 graph), a larger one grew only the graph.  The docks get back their shares of the
        # window instead: those the person last gave them, else size_docks' usual ones.
        self._settled_size = self.size()
        if self._docks_sized and self.isVisible() and self._dock_shares is not None:
            self._restore_dock_shares(self._dock_shares)

    def _current_dock_shares(self) -> tuple[Optional[float], Optional[float], Optional[float]]:
        """(right column's width, profiles' height, charts' height), each a share of the window's;
        None for a dock that is floating or hidden."""
        def share(dock, size: int, window_size: int) -> Optional[float]:
            return size / window_size if dock.isVisible() and not dock.isFloating() and window_size else None
        return (share(self.inspector_dock, self.inspector_dock.width(), self.width()),
                share(self.profiles_dock, self.profiles_dock.height(), self.height()),
                share(self.panels_dock, self.panels_dock.height(), self.height()))

    def _restore_dock_shares(self, shares) -> None:
        right, profiles, charts = shares
        now = self._current_dock_shares()
        horizontal, vertical = Qt.Orientation.Horizontal, Qt.Orientation.Vertical
        for dock, share, current, orientation, window_size in (
                (self.inspector_dock, right, now[0], horizontal, self.width()),
                (self.profiles_dock, profiles, now[1], vertical, self.height()),
                (self.panels_dock, charts, now[2], vertical, self.height())):
            if share is not None and current is not None and abs(share - current) * window_size >= 2:
                self.resizeDocks([dock], [round(share * window_size)], orientation)

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
                       ("Graph: open the selected group / close the group around the selection",
                        "Enter / Backspace"),
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
                          f"<b>{APP_NAME}</b> {_main_module().app_version()}<br>Per-layer profiles of neural networks: "
                          "graph, measured times, bottleneck reports.")

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
