"""Compare view: two profiles of one model as one graph coloured by the time ratio B / A.

The comparison itself is `engine.compare.compare_profiles` (the function behind
`layerscope compare`); this window only draws it: node colours on a diverging
scale (blue: B faster, white: equal, red: B slower), per-stage totals with
their ratio and kind, and the end-to-end figures.
"""
from __future__ import annotations

from typing import Optional, Sequence

from PySide6.QtCore import Qt, Signal
from PySide6.QtGui import QColor
from PySide6.QtWidgets import (QComboBox, QHBoxLayout, QHeaderView, QLabel, QSplitter, QTableWidget,
                               QTableWidgetItem, QVBoxLayout, QWidget)

from engine.compare import Comparison, compare_profiles
from gui.graph_view import RATIO_LIMIT, GraphScene, GraphView, diverging_color, format_ms


def ratio_text(ratio: Optional[float]) -> str:
    return "–" if ratio is None else f"{ratio:.2f}×"


class CompareView(QWidget):
    """A window: pick A and B among the session's profiles; the graph shows B / A per node."""

    nodeSelected = Signal(str)

    def __init__(self, loaded, profiles: Sequence[tuple[str, object]], parent=None, a: int = 0, b: int = 1):
        super().__init__(parent, Qt.WindowType.Window)
        self.setWindowTitle("Compare profiles — LayerScope")
        self.loaded = loaded
        self.profiles = list(profiles)  # (label, engine.profile.Profile)
        self.comparison: Optional[Comparison] = None
        self.ratios: dict[str, Optional[float]] = {}

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
        layout.addLayout(pick)
        self.summary = QLabel("")
        self.summary.setWordWrap(True)
        layout.addWidget(self.summary)

        splitter = QSplitter(Qt.Orientation.Horizontal)
        self.view = GraphView()
        self.scene = GraphScene(loaded, self.view)  # its own items: recoloured by ratio, never rebuilt
        self.view.set_graph_scene(self.scene)
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
        self.refresh()
        self.view.show_start()

    def set_pair(self, a: int, b: int) -> None:
        self.a_combo.blockSignals(True)
        self.a_combo.setCurrentIndex(a)
        self.a_combo.blockSignals(False)
        self.b_combo.setCurrentIndex(b)
        self.refresh()

    def refresh(self) -> None:
        a_index, b_index = self.a_combo.currentIndex(), self.b_combo.currentIndex()
        if a_index < 0 or b_index < 0:
            return
        (a_label, a), (b_label, b) = self.profiles[a_index], self.profiles[b_index]
        comparison = compare_profiles(a, b, a_label=f"A: {a_label}", b_label=f"B: {b_label}")
        self.comparison = comparison
        self.ratios = {change.key: change.ratio for change in comparison.nodes}
        self.scene.apply_ratios(self.ratios)
        kinds = sorted({change.kind for change in comparison.nodes}) or ["measured"]
        self.view.legend.show_diverging("Time ratio B / A", "/".join(kinds))
        self.view.minimap.refresh()  # the overview in the ratio colours too
        self.view._place_legend()
        self._fill_stages(comparison)
        parts = []
        if comparison.end_to_end is not None:
            e2e = comparison.end_to_end
            parts.append(f"End-to-end: A {format_ms(e2e.a_ms)} → B {format_ms(e2e.b_ms)} "
                         f"(<b>{ratio_text(e2e.ratio)}</b>, measured).")
        parts.append(f"{len(comparison.slower)} layers slower and {len(comparison.faster)} faster by more "
                     f"than {100 * comparison.threshold:.0f} %.")
        parts.extend(comparison.warnings)
        self.summary.setText(" ".join(parts))
        self._node_selected(self.scene.selectedItems()[0].data(0) if self.scene.selectedItems() else "")

    def _fill_stages(self, comparison: Comparison) -> None:
        rows = [(c.key, c.a_ms, c.b_ms, c.ratio, c.kind) for c in comparison.stages]
        total_a = sum(c.a_ms for c in comparison.nodes)
        total_b = sum(c.b_ms for c in comparison.nodes)
        rows.append(("all layers", total_a, total_b, (total_b / total_a) if total_a > 0 else None,
                     "/".join(sorted({c.kind for c in comparison.nodes})) or "measured"))
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
