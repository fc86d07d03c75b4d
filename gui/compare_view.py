"""Compare view: two profiles of one model as one graph coloured by the time ratio B / A.

The comparison itself is `engine.compare.compare_profiles` (the function behind
`layerscope compare`); this window only draws it: node colours on a diverging
scale (blue: B faster, white: equal, red: B slower), per-stage totals with
their ratio and kind, and the end-to-end figures.
"""
from __future__ import annotations

import threading
from typing import Optional, Sequence

from PySide6.QtCore import Qt, QTimer, Signal
from PySide6.QtGui import QColor, QKeySequence, QShortcut
from PySide6.QtWidgets import (QComboBox, QHBoxLayout, QHeaderView, QLabel, QPushButton, QSplitter, QTableWidget,
                               QTableWidgetItem, QVBoxLayout, QWidget)

from engine.compare import Comparison, compare_profiles
from engine.profile import combine_kinds
from gui.graph_view import (RATIO_LIMIT, GraphScene, GraphView, build_in_slices, diverging_color,
                            format_ms)


def ratio_text(ratio: Optional[float]) -> str:
    return "–" if ratio is None else f"{ratio:.2f}×"


class CompareView(QWidget):
    """A window: pick A and B among the session's profiles; the graph shows B / A per node."""

    nodeSelected = Signal(str)
    sceneReady = Signal()  # the graph is drawn and coloured by the chosen pair
    _compared = Signal(int, object)  # (request number, Comparison or the exception), from the worker thread

    def __init__(self, loaded, profiles: Sequence[tuple[str, object]], parent=None, a: int = 0, b: int = 1):
        super().__init__(parent, Qt.WindowType.Window)
        self.setWindowTitle("Compare profiles — LayerScope")
        self.loaded = loaded
        self.profiles = list(profiles)  # (label, engine.profile.Profile)
        self.comparison: Optional[Comparison] = None
        self.ratios: dict[str, Optional[float]] = {}
        # Work that takes ~0.1-0.3 s on a 20,000-node model stays off the UI thread or is cut into
        # slices: the comparison runs in a worker thread (a newer request wins), the scene is
        # built and coloured a slice per event-loop turn, and the graph appears once coloured.
        self.ready = False  # the graph is shown, coloured by the current comparison
        self._built = False
        self._request = 0
        self._closed = False
        self._cancel_build = lambda: None
        self._cancel_colour = lambda: None
        self._compared.connect(self._on_compared)

        layout = QVBoxLayout(self)
        pick = QHBoxLayout()
        self.a_combo, self.b_combo = QComboBox(), QComboBox()
        for combo in (self.a_combo, self.b_combo):
            for label, _ in self.profiles:
                combo.addItem(label)
        pick.addWidget(QLabel("A (baseline):"))
        pick.addWidget(self.a_combo, 1)
        pick.addWidget(QLabel("B:"))
        pick.addWidget(self.b_combo, 1)
        self.close_button = QPushButton("Close")  # a window of its own: Close and Esc, as a dialog
        self.close_button.clicked.connect(self.close)
        pick.addWidget(self.close_button)
        QShortcut(QKeySequence(Qt.Key.Key_Escape), self, self.close)
        layout.addLayout(pick)
        self.summary = QLabel("Comparing the profiles…")
        self.summary.setWordWrap(True)
        layout.addWidget(self.summary)

        splitter = QSplitter(Qt.Orientation.Horizontal)
        self.view = GraphView()
        # Its own items, recoloured, never rebuilt; made when the first comparison arrives (the
        # scene's set-up takes ~15 ms on 20,000 nodes: not in the turn that shows the window).
        self.scene: Optional[GraphScene] = None
        splitter.addWidget(self.view)
        side = QWidget()
        side_layout = QVBoxLayout(side)
        side_layout.setContentsMargins(0, 0, 0, 0)
        side_layout.addWidget(QLabel("Per-stage totals (sum of layer medians)"))
        self.stage_table = QTableWidget(0, 5)
        self.stage_table.setHorizontalHeaderLabels(["Stage", "A", "B", "B / A", "Kind"])
        self.stage_table.verticalHeader().hide()
        self.stage_table.setEditTriggers(QTableWidget.EditTrigger.NoEditTriggers)
        self.stage_table.horizontalHeader().setSectionResizeMode(QHeaderView.ResizeMode.ResizeToContents)
        self.stage_table.horizontalHeader().setSectionResizeMode(0, QHeaderView.ResizeMode.Stretch)
        side_layout.addWidget(self.stage_table, 1)
        self.node_label = QLabel("Select a node to see its two times.")
        self.node_label.setWordWrap(True)
        side_layout.addWidget(self.node_label)
        splitter.addWidget(side)
        splitter.setSizes([700, 380])
        layout.addWidget(splitter, 1)
        self.resize(1150, 750)

        self.view.nodeSelected.connect(self._node_selected)
        self.a_combo.setCurrentIndex(min(a, len(self.profiles) - 1))
        self.b_combo.setCurrentIndex(min(b, len(self.profiles) - 1))
        self.a_combo.currentIndexChanged.connect(lambda _: self.refresh())
        self.b_combo.currentIndexChanged.connect(lambda _: self.refresh())
        # The first comparison starts once the window has painted (or after 250 ms if it is not
        # shown): a worker thread beside the window's first paint takes the GIL from it and
        # stalled that paint from ~40 to ~90-150 ms on a 20,000-node model.
        self._started = False
        QTimer.singleShot(250, self._start)

    def paintEvent(self, event) -> None:
        super().paintEvent(event)
        if not self._started:
            QTimer.singleShot(0, self._start)

    def _start(self) -> None:
        if not self._started and not self._closed:
            self._started = True
            self.refresh()

    def _on_built(self) -> None:
        self._built = True
        self._colour()

    def closeEvent(self, event) -> None:
        self._closed = True  # nothing starts after this: a pending first comparison included
        self._cancel_build()
        self._cancel_colour()
        self._request += 1  # a comparison still running is dropped
        super().closeEvent(event)

    def set_pair(self, a: int, b: int) -> None:
        self._started = True
        self.a_combo.blockSignals(True)
        self.a_combo.setCurrentIndex(a)
        self.a_combo.blockSignals(False)
        self.b_combo.setCurrentIndex(b)
        self.refresh()

    def refresh(self) -> None:
        """Compare the chosen pair (`engine.compare.compare_profiles`) in a worker thread."""
        a_index, b_index = self.a_combo.currentIndex(), self.b_combo.currentIndex()
        if a_index < 0 or b_index < 0 or self._closed:
            return
        (a_label, a), (b_label, b) = self.profiles[a_index], self.profiles[b_index]
        self._request += 1
        request = self._request
        self._cancel_colour()  # colours of an older pair stop here
        self.ready = False  # until the graph shows this pair
        self.summary.setText(f"Comparing {a_label} and {b_label}…")

        def work() -> None:
            try:
                result = compare_profiles(a, b, a_label=f"A: {a_label}", b_label=f"B: {b_label}")
            except Exception as exc:  # shown in the window, not a traceback
                result = exc
            try:
                self._compared.emit(request, result)
            except RuntimeError:  # the window was deleted meanwhile
                pass

        threading.Thread(target=work, name="layerscope-compare", daemon=True).start()

    def _on_compared(self, request: int, result) -> None:
        if request != self._request:  # a newer pair was chosen, or the window closed
            return
        if isinstance(result, Exception):
            # Nothing of the previous pair stays on show as if it were this one.
            self.comparison, self.ratios = None, {}
            self.stage_table.setRowCount(0)
            self._node_selected("")
            if self._built:
                self.scene.set_overlay("none")
                self.view.update_legend()
            self.summary.setText(f"Could not compare these profiles: {type(result).__name__}: {result}")
            return
        self.comparison = result
        self.ratios = {change.key: change.ratio for change in result.nodes}
        self._fill_stages(result)
        self._show_summary()
        if self.scene is None:
            # Built after the first comparison, not beside it: the two would share the GIL and
            # each slice of the build would stall the window for longer.
            self.scene = GraphScene(self.loaded, self.view, build=False)
            self._cancel_build = build_in_slices(self.scene, self._on_built, failed=self._drawing_failed)
        else:
            self._colour()

    def _colour(self) -> None:
        """Colour the built scene by the current ratios, a slice per turn; show it when done."""
        if not self._built or self.comparison is None:
            return
        self._cancel_colour()
        self.ready = False
        self._cancel_colour = build_in_slices(self.scene, self._on_coloured,
                                              steps=self.scene.ratio_steps(self.ratios), failed=self._drawing_failed)

    def _drawing_failed(self, exc: Exception) -> None:
        self.summary.setText(f"Could not draw the comparison: {type(exc).__name__}: {exc}")

    def _on_coloured(self) -> None:
        if self.view.graph_scene is not self.scene:  # the first colouring: show the graph now
            self.view.set_graph_scene(self.scene)
            self.view.show_start()
        else:
            self.view.minimap.refresh()  # the overview in the new colours too
        kinds = sorted({change.kind for change in self.comparison.nodes}) or ["measured"]
        self.view.legend.show_diverging("Time ratio B / A", "/".join(kinds))
        self.view._place_legend()
        self.ready = True
        self._show_summary()
        self.sceneReady.emit()

    def _show_summary(self) -> None:
        comparison = self.comparison
        if comparison is None:
            return
        parts = []
        if comparison.end_to_end is not None:
            e2e = comparison.end_to_end
            parts.append(f"End-to-end: A {format_ms(e2e.a_ms)} → B {format_ms(e2e.b_ms)} "
                         f"(<b>{ratio_text(e2e.ratio)}</b>, {e2e.kind}).")
        parts.append(f"{len(comparison.slower)} layers slower and {len(comparison.faster)} faster by more "
                     f"than {100 * comparison.threshold:.0f} %.")
        parts.extend(comparison.warnings)
        if not self.ready:
            parts.append("<i>Drawing the graph…</i>")
        self.summary.setText(" ".join(parts))
        selected = self.scene.selectedItems() if self.ready else []
        self._node_selected(selected[0].data(0) if selected else "")

    def _fill_stages(self, comparison: Comparison) -> None:
        rows = [(c.key, c.a_ms, c.b_ms, c.ratio, c.kind) for c in comparison.stages]
        total_a = sum(c.a_ms for c in comparison.nodes)
        total_b = sum(c.b_ms for c in comparison.nodes)
        rows.append(("all layers", total_a, total_b, (total_b / total_a) if total_a > 0 else None,
                     combine_kinds(c.kind for c in comparison.nodes)))  # a sum: the weakest kind
        if comparison.end_to_end is not None:
            e2e = comparison.end_to_end
            rows.append(("end-to-end", e2e.a_ms, e2e.b_ms, e2e.ratio, e2e.kind))
        self.stage_table.setRowCount(len(rows))
        for row, (name, a_ms, b_ms, ratio, kind) in enumerate(rows):
            cells = [name, format_ms(a_ms), format_ms(b_ms), ratio_text(ratio), kind]
            for column, text in enumerate(cells):
                item = QTableWidgetItem(text)
                if column in (1, 2, 3):
                    item.setTextAlignment(Qt.AlignmentFlag.AlignRight | Qt.AlignmentFlag.AlignVCenter)
                if column == 3:
                    color = diverging_color(ratio, RATIO_LIMIT)
                    item.setBackground(color)
                    if color.lightnessF() < 0.45:
                        item.setForeground(QColor("#ffffff"))
                self.stage_table.setItem(row, column, item)

    def stage_rows(self) -> dict[str, tuple[str, str, str, str]]:
        """Stage -> (A, B, ratio, kind) texts as shown (for tests and copying)."""
        result = {}
        for row in range(self.stage_table.rowCount()):
            result[self.stage_table.item(row, 0).text()] = tuple(self.stage_table.item(row, c).text()
                                                                 for c in range(1, 5))
        return result

    def _node_selected(self, node_id: str) -> None:
        if not node_id or self.comparison is None:
            self.node_label.setText("Select a node to see its two times.")
            return
        try:
            change = self.comparison.node(node_id)
        except KeyError:
            self.node_label.setText(f"{node_id}: not timed in both profiles.")
            return
        self.node_label.setText(f"<b>{change.op_type} {node_id}</b><br>A {format_ms(change.a_ms)} → "
                                f"B {format_ms(change.b_ms)}: <b>{ratio_text(change.ratio)}</b> ({change.kind})")
        self.nodeSelected.emit(node_id)
