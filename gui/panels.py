"""Profile panels: charts of the selected profile (pyqtgraph) and its hints.

Tabs: per-layer time in execution order, the slowest layers, stage and op-type
breakdowns, the latency-vs-size sweep (one line per target) and the hints.
Each chart holds one `BarGraphItem` per series, built once with numpy arrays
and updated with `setOpts`; a new profile never adds items per bar.  Clicking
a bar (anywhere in its column, so that thin bars are easy to hit) emits
`nodeClicked`; `highlight_node` marks the bar of the node selected elsewhere.

Only figures from engine.profile.Profile and engine.sweep rows are drawn;
nothing is computed here beyond arranging them.
"""
from __future__ import annotations

import html
import math
from typing import Optional, Sequence

import numpy as np
import pyqtgraph as pg
from PySide6.QtCore import Qt, Signal
from PySide6.QtGui import QColor, QCursor, QFont
from PySide6.QtWidgets import (QHeaderView, QLabel, QSplitter, QTabWidget, QToolTip, QTreeWidget, QTreeWidgetItem,
                               QVBoxLayout, QWidget)

from engine.hints import by_severity
from engine.profile import KINDS
from gui.graph_view import format_ms

STAGE_COLORS = {"encoder": "#4e79a7", "bottleneck": "#76b7b2", "decoder": "#e15759", "head": "#f28e2b"}
OTHER_STAGE_COLOR = "#9c9c9c"
SELECTED_COLOR = "#111111"
SEVERITY_COLORS = {"high": "#e15759", "medium": "#f28e2b", "low": "#9c9c9c"}
TOP_COUNT = 12
OP_TYPE_COUNT = 12
MIN_BAR_PIXELS = 3  # narrower per-layer bars are drawn one per run of neighbours (see _draw_layers)
HINT_LAYERS_ROLE = Qt.ItemDataRole.UserRole + 1  # a hint row: every layer it names


def stage_color(stage: str) -> str:
    return STAGE_COLORS.get(stage, OTHER_STAGE_COLOR)


def kinds_text(kinds: Sequence[str]) -> str:
    return "/".join(kinds) if kinds else "no profile"


def _short(node_id: str, limit: int = 34) -> str:
    return node_id if len(node_id) <= limit else "…" + node_id[-(limit - 1):]


class _LayerNumberAxis(pg.AxisItem):
    """Bar i is layer i + 1: the numbers the inspector and the tooltips use."""

    def tickStrings(self, values, scale, spacing):
        return [str(int(round(v)) + 1) if abs(v - round(v)) < 1e-6 else "" for v in values]


class _Chart(pg.PlotWidget):
    """A plot whose clicks map to a bar index along one axis (x for vertical bars, y for horizontal)."""

    barClicked = Signal(int)
    barHovered = Signal(int, object)  # bar index (-1: none), the pointer's global position (QPoint)

    def __init__(self, axis: str = "x", parent=None, one_based: bool = False):
        axis_items = {"bottom": _LayerNumberAxis("bottom")} if one_based else None
        super().__init__(parent=parent, background="w", axisItems=axis_items)
        self.axis = axis
        self.count = 0
        # View coordinate -> the index of the bar drawn there (None: round to the nearest bar).
        # The per-layer chart sets it while it draws several layers per bar.
        self.index_at = None
        item = self.getPlotItem()
        item.showGrid(x=axis == "y", y=axis == "x", alpha=0.25)
        item.setMenuEnabled(False)
        item.hideButtons()
        self.setMouseEnabled(x=axis == "x", y=axis == "y")
        font = QFont()
        font.setPixelSize(11)
        for name in ("left", "bottom"):
            axis = item.getAxis(name)
            axis.setTextPen("#333333")
            axis.setPen("#999999")
            axis.enableAutoSIPrefix(False)  # milliseconds stay milliseconds (no "x0.001")
            # Every category label is drawn, however close (bar charts label each bar).
            axis.setStyle(tickFont=font, textFillLimits=[(0, 0.95)])
        self.scene().sigMouseClicked.connect(self._clicked)
        self.scene().sigMouseMoved.connect(self._moved)

    def bar_at(self, scene_pos) -> int:
        """The index of the bar drawn at `scene_pos` (-1: none)."""
        box = self.getPlotItem().vb
        if not self.count or not box.sceneBoundingRect().contains(scene_pos):
            return -1
        point = box.mapSceneToView(scene_pos)
        value = point.x() if self.axis == "x" else point.y()
        index = self.index_at(value) if self.index_at is not None else int(round(value))
        return index if 0 <= index < self.count else -1

    def _clicked(self, event) -> None:
        if event.button() != Qt.MouseButton.LeftButton:
            return
        index = self.bar_at(event.scenePos())
        if index >= 0:
            self.barClicked.emit(index)

    def _moved(self, scene_pos) -> None:
        self.barHovered.emit(self.bar_at(scene_pos), QCursor.pos())


class ProfilePanels(QWidget):
    """The charts and hints of one profile (or nothing, before the first run)."""

    nodeClicked = Signal(str)
    nodesClicked = Signal(list)  # a hint's layers, in its order

    def __init__(self, parent=None, build_now: bool = True):
        """`build_now=False`: only the summary and the tabs are made; `build_steps()` makes the
        charts, one per step (gui.deferred_panels runs them in separate event-loop passes)."""
        super().__init__(parent)
        self.profile = None
        self.layer_ids: list[str] = []  # execution order (x of the per-layer chart)
        self.layer_ms = np.zeros(0)
        self._layer_index: dict[str, int] = {}
        self.top_ids: list[str] = []  # slowest first (y of the top chart)
        self._top_index: dict[str, int] = {}
        self.highlighted: Optional[str] = None
        self.sweeps: list = []

        layout = QVBoxLayout(self)
        layout.setContentsMargins(4, 2, 4, 2)
        layout.setSpacing(2)
        self.summary = QLabel("No profile yet: Profile > Run… measures every layer.")
        self.summary.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        self.summary.setWordWrap(True)  # a long line must not widen the window
        layout.addWidget(self.summary)
        self.tabs = QTabWidget()
        self.tabs.setDocumentMode(True)
        layout.addWidget(self.tabs, 1)
        if build_now:
            for _ in self.build_steps():
                pass

    def build_steps(self):
        """The charts and the hints, a tab per step (a generator): each pyqtgraph chart takes
        ~10-20 ms to make, all five 70-90 ms, a frozen window when made at once."""
        for build in (self._build_layer_chart, self._build_top_chart, self._build_stage_chart,
                      self._build_op_chart, self._build_sweep_chart, self._build_hints):
            build()
            yield
        self.set_profile(None)

    def _build_layer_chart(self) -> None:
        # Per-layer time in execution order: one bar series per stage.
        self.layer_chart = _Chart("x", one_based=True)
        # The stage colours are explained in the axis title: a legend box would hide the tallest bars.
        self.layer_chart.setLabel("bottom", "layer (execution order)")
        self.stage_series: dict[str, pg.BarGraphItem] = {}
        self.layer_marker = pg.BarGraphItem(x=np.zeros(0), height=np.zeros(0), width=0.9,
                                            brush=pg.mkBrush(0, 0, 0, 0), pen=pg.mkPen(SELECTED_COLOR, width=2))
        self.layer_marker.setZValue(10)
        self.layer_chart.addItem(self.layer_marker)
        self.layer_chart.barClicked.connect(lambda i: self._emit(self.layer_ids, i))
        self.layer_chart.barHovered.connect(self._layer_hovered)
        self.layer_chart.index_at = self._layer_at
        self.layer_chart.getPlotItem().vb.sigXRangeChanged.connect(lambda *_: self._draw_layers())
        self.layer_chart.getPlotItem().vb.sigResized.connect(lambda *_: self._draw_layers())
        self.layer_stages = np.zeros(0, dtype=object)
        self.layers_per_bar = 1  # > 1 when the layers are too many for the chart's width
        self.drawn_layers = np.zeros(0, dtype=np.int64)  # per drawn bar: the layer it shows (its tallest)
        self.hover_text = ""
        self.tabs.addTab(self.layer_chart, "Per layer")

    def _build_top_chart(self) -> None:
        # The slowest layers, slowest on top.
        self.top_chart = _Chart("y")
        self.top_chart.getPlotItem().invertY(True)
        self.top_chart.getPlotItem().getAxis("left").setWidth(250)  # room for "op  node id" labels
        self.top_bars = pg.BarGraphItem(x0=np.zeros(0), y=np.zeros(0), width=np.zeros(0), height=0.7,
                                        brushes=[], pen=pg.mkPen("#555555", width=0.5))
        self.top_chart.addItem(self.top_bars)
        self.top_marker = pg.BarGraphItem(x0=np.zeros(0), y=np.zeros(0), width=np.zeros(0), height=0.8,
                                          brush=pg.mkBrush(0, 0, 0, 0), pen=pg.mkPen(SELECTED_COLOR, width=2))
        self.top_marker.setZValue(10)
        self.top_chart.addItem(self.top_marker)
        self.top_chart.barClicked.connect(lambda i: self._emit(self.top_ids, i))
        self.tabs.addTab(self.top_chart, f"Top {TOP_COUNT}")

    def _build_stage_chart(self) -> None:
        # Stage and op-type breakdowns.
        self.stage_chart = _Chart("x")
        self.stage_chart.setMouseEnabled(x=False, y=False)
        self.stage_bars = pg.BarGraphItem(x=np.zeros(0), height=np.zeros(0), width=0.6, brushes=[],
                                          pen=pg.mkPen("#555555", width=0.5))
        self.stage_chart.addItem(self.stage_bars)
        self.stage_labels: list[pg.TextItem] = []
        self.tabs.addTab(self.stage_chart, "Stages")

    def _build_op_chart(self) -> None:
        self.op_chart = _Chart("x")
        self.op_chart.setMouseEnabled(x=False, y=False)
        self.op_bars = pg.BarGraphItem(x=np.zeros(0), height=np.zeros(0), width=0.6, brush="#4e79a7",
                                       pen=pg.mkPen("#555555", width=0.5))
        self.op_chart.addItem(self.op_bars)
        self.tabs.addTab(self.op_chart, "Op types")

    def _build_sweep_chart(self) -> None:
        # Latency against input size: one line per target.
        self.sweep_chart = pg.PlotWidget(background="w")
        self.sweep_chart.getPlotItem().showGrid(x=True, y=True, alpha=0.25)
        for name in ("left", "bottom"):
            self.sweep_chart.getPlotItem().getAxis(name).enableAutoSIPrefix(False)
        self.sweep_chart.addLegend(offset=(10, 6), labelTextSize="8pt", labelTextColor="#333333",
                                   brush=pg.mkBrush(255, 255, 255, 200), pen=pg.mkPen("#bbbbbb"))
        self.sweep_chart.setLabel("left", "end-to-end ms (measured)")
        self.sweep_chart.setLabel("bottom", "input size (pixels per image)")
        self.sweep_lines: dict[str, pg.PlotDataItem] = {}
        self.sweep_tab_index = self.tabs.addTab(self.sweep_chart, "Sweep")
        self.tabs.setTabEnabled(self.sweep_tab_index, False)
        self.tabs.setTabToolTip(self.sweep_tab_index, "Run with several input sizes (e.g. 128, 160, 224) "
                                                      "to draw latency against size")

    def _build_hints(self) -> None:
        hints_panel = QSplitter(Qt.Orientation.Horizontal)
        self.hints = QTreeWidget()
        self.hints.setColumnCount(2)
        self.hints.setHeaderLabels(["Hint (click: select its layers)", "Time (share)"])
        self.hints.header().setSectionResizeMode(0, QHeaderView.ResizeMode.Stretch)
        self.hints.header().setSectionResizeMode(1, QHeaderView.ResizeMode.ResizeToContents)
        self.hints.header().setStretchLastSection(False)
        self.hints.itemClicked.connect(self._hint_clicked)
        self.hints.currentItemChanged.connect(lambda item, _previous: self._show_hint(item))
        hints_panel.addWidget(self.hints)
        self.hint_text = QLabel("")
        self.hint_text.setWordWrap(True)
        self.hint_text.setAlignment(Qt.AlignmentFlag.AlignTop | Qt.AlignmentFlag.AlignLeft)
        self.hint_text.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        self.hint_text.setMargin(6)
        hints_panel.addWidget(self.hint_text)
        hints_panel.setSizes([520, 420])
        self.hints_tab_index = self.tabs.addTab(hints_panel, "Hints")

    # --- data -----------------------------------------------------------------------------
    def set_profile(self, profile, label: str = "") -> None:
        """Show `profile` (engine.profile.Profile) or clear the charts (None)."""
        for _ in self.profile_steps(profile, label):
            pass

    def profile_steps(self, profile, label: str = ""):
        """`set_profile` in two steps (a generator): the summary and the per-layer chart (the tab
        shown first), then the other tabs.  Each takes ~20 ms on 20,000 nodes; the main window
        runs them in separate passes of the event loop."""
        self.profile = profile
        nodes = list(profile.nodes.values()) if profile is not None else []
        self.layer_ids = [n.node_id for n in nodes]
        self._layer_index = {node_id: i for i, node_id in enumerate(self.layer_ids)}
        self._top_index = {}
        self.layer_ms = np.array([n.time.median_ms for n in nodes], dtype=float)
        present = {n.kind for n in nodes}
        kinds = [k for k in KINDS if k in present]
        axis_label = f"median ms ({kinds_text(kinds)})"
        self._fill_layers(nodes)
        self.layer_chart.setLabel("left", axis_label)
        self._show_summary(profile, label, nodes, kinds)
        yield
        self._fill_top(nodes)
        self.top_chart.setLabel("bottom", axis_label)
        self._fill_stages(profile)
        self._fill_op_types(profile)
        self._fill_hints(profile)

    def _show_summary(self, profile, label: str, nodes, kinds) -> None:
        self.highlighted = None
        self._hide_markers()
        if profile is None:
            self.summary.setText("No profile yet: Profile > Run… measures every layer.")
            return
        e2e = profile.end_to_end
        parts = [f"<b>{label or 'profile'}</b>"]
        if e2e is not None:
            parts.append(f"end-to-end {format_ms(e2e.median_ms)} (p10–p90 {format_ms(e2e.p10_ms)}–"
                         f"{format_ms(e2e.p90_ms)}, {e2e.kind})")
        parts.append(f"{len(nodes)} layers, sum {format_ms(profile.total_node_ms)} ({kinds_text(kinds)})")
        if profile.coverage is not None:
            parts.append(f"coverage {profile.coverage:.2f} ({profile.ratio_kinds()['coverage']})")
        parts.append(f"{profile.runs_completed} runs")
        if not profile.complete:
            parts.append(f"<span style='color:#b00'>incomplete: {profile.error or 'stopped early'}</span>")
        self.summary.setText(" · ".join(parts))

    def _fill_layers(self, nodes) -> None:
        self.layer_stages = np.array([n.stage for n in nodes], dtype=object)
        seen = list(dict.fromkeys(self.layer_stages.tolist()))
        key = "  ".join(f"<span style='color:{stage_color(stage)}'>■</span> {stage or '(no stage)'}"
                        for stage in seen)
        self.layer_chart.setLabel("bottom", f"layer (execution order)    {key}")
        self.layer_chart.count = len(nodes)
        self.layers_per_bar = 0  # draw anew
        if len(nodes):
            self.layer_chart.setXRange(-1, len(nodes), padding=0.01)  # draws through sigXRangeChanged
            self.layer_chart.setYRange(0, float(self.layer_ms.max()) * 1.05 or 1.0, padding=0)
        else:  # no profile (another model was opened): not the last model's axes
            for chart in (self.layer_chart, self.top_chart):
                chart.setXRange(0, 1, padding=0)
                chart.setYRange(0, 1, padding=0)
        self._draw_layers()

    def _draw_layers(self) -> None:
        """Draw the per-layer bars for the chart's current width and zoom: one bar per layer while
        each gets MIN_BAR_PIXELS, else one bar per run of neighbours showing the tallest of them
        (peaks are never averaged away), in that layer's stage colour.  A click or a hover on a
        bar means the layer it shows (`_layer_at`)."""
        count = len(self.layer_ms)
        box = self.layer_chart.getPlotItem().vb
        low, high = box.viewRange()[0]
        pixels = max(1.0, box.width())
        per_bar = max(1, math.ceil(MIN_BAR_PIXELS * (high - low) / pixels)) if count else 1
        if per_bar == self.layers_per_bar:
            return
        self.layers_per_bar = per_bar
        runs = math.ceil(count / per_bar) if count else 0
        padded = np.full(runs * per_bar, -np.inf)
        padded[:count] = self.layer_ms
        drawn = (np.arange(runs) * per_bar + np.argmax(padded.reshape(runs, per_bar), axis=1)) if runs \
            else np.zeros(0, dtype=np.int64)
        self.drawn_layers = drawn.astype(np.int64)
        x = np.arange(runs) * per_bar + (per_bar - 1) / 2
        heights = self.layer_ms[self.drawn_layers] if runs else np.zeros(0)
        stages = self.layer_stages[self.drawn_layers] if runs else np.zeros(0, dtype=object)
        seen = set(stages.tolist())
        for stage in dict.fromkeys(stages.tolist()):
            mask = stages == stage
            series = self.stage_series.get(stage)
            if series is None:
                series = pg.BarGraphItem(x=x[mask], height=heights[mask], width=0.8 * per_bar,
                                         brush=stage_color(stage), pen=pg.mkPen(None), name=stage or "(no stage)")
                self.stage_series[stage] = series
                self.layer_chart.addItem(series)
            else:
                series.setOpts(x=x[mask], height=heights[mask], width=0.8 * per_bar)
                series.show()
        for stage, series in self.stage_series.items():
            if stage not in seen:
                series.setOpts(x=np.zeros(0), height=np.zeros(0))
                series.hide()
        if self.highlighted is not None:
            self.highlight_node(self.highlighted)

    def _layer_at(self, x: float) -> int:
        """The layer whose bar is drawn at `x` (view coordinate of the per-layer chart)."""
        per_bar = max(1, self.layers_per_bar)
        if per_bar == 1:
            return int(round(x))
        run = int(math.floor((x + 0.5) / per_bar))
        return int(self.drawn_layers[run]) if 0 <= run < len(self.drawn_layers) else -1

    def _layer_hovered(self, index: int, global_pos) -> None:
        """A tooltip naming the layer under the pointer: number, id, op, time and its kind, stage."""
        if index < 0 or self.profile is None:
            self.hover_text = ""
            QToolTip.hideText()
            return
        timing = self.profile.nodes.get(self.layer_ids[index])
        self.hover_text = (f"#{index + 1} {timing.node_id}\n{timing.op_type} · {format_ms(timing.time.median_ms)} "
                           f"{timing.kind} · stage {timing.stage or '(none)'}")
        if self.layers_per_bar > 1:
            self.hover_text += f"\n(tallest of the {self.layers_per_bar} layers this bar stands for)"
        QToolTip.showText(global_pos, self.hover_text, self.layer_chart)

    def _fill_top(self, nodes) -> None:
        ranked = sorted(nodes, key=lambda n: n.time.median_ms, reverse=True)[:TOP_COUNT]
        self.top_ids = [n.node_id for n in ranked]
        self._top_index = {node_id: i for i, node_id in enumerate(self.top_ids)}
        widths = np.array([n.time.median_ms for n in ranked], dtype=float)
        y = np.arange(len(ranked), dtype=float)
        self.top_bars.setOpts(x0=np.zeros(len(ranked)), y=y, width=widths,
                              brushes=[pg.mkBrush(stage_color(n.stage)) for n in ranked])
        self.top_chart.count = len(ranked)
        # Labels wider than the axis are dropped by pyqtgraph: keep them short (ids often end in the op).
        ticks = [(i, _short(n.node_id, 36) if n.op_type in n.node_id else f"{n.op_type} {_short(n.node_id, 28)}")
                 for i, n in enumerate(ranked)]
        self.top_chart.getPlotItem().getAxis("left").setTicks([ticks])
        if len(ranked):
            self.top_chart.setYRange(-0.6, len(ranked) - 0.4, padding=0)
            self.top_chart.setXRange(0, float(widths.max()) * 1.05, padding=0)

    def _fill_stages(self, profile) -> None:
        for label in self.stage_labels:
            self.stage_chart.removeItem(label)
        self.stage_labels = []
        items = list(profile.stage_times_ms.items()) if profile is not None else []
        x = np.arange(len(items), dtype=float)
        heights = np.array([ms for _, ms in items], dtype=float)
        self.stage_bars.setOpts(x=x, height=heights, brushes=[pg.mkBrush(stage_color(s)) for s, _ in items])
        kinds = sorted({profile.stage_kind(s) for s, _ in items}) if profile is not None else []
        self.stage_chart.setLabel("left", f"ms ({kinds_text(kinds)})")
        shares = profile.stage_shares() if profile is not None else {}
        for i, (stage, ms) in enumerate(items):
            text = pg.TextItem(f"{100 * shares.get(stage, 0):.0f} %  {format_ms(ms)}", color="#222222",
                               anchor=(0.5, 1.0))
            text.setPos(i, ms)
            self.stage_chart.addItem(text)
            self.stage_labels.append(text)
        self.stage_chart.getPlotItem().getAxis("bottom").setTicks([[(i, s or "(none)") for i, (s, _) in
                                                                    enumerate(items)]])
        if items:
            self.stage_chart.setXRange(-0.6, len(items) - 0.4, padding=0)
            self.stage_chart.setYRange(0, float(heights.max()) * 1.2 or 1.0, padding=0)

    def _fill_op_types(self, profile) -> None:
        items = profile.top_op_types(OP_TYPE_COUNT) if profile is not None else []
        x = np.arange(len(items), dtype=float)
        heights = np.array([ms for _, ms in items], dtype=float)
        self.op_bars.setOpts(x=x, height=heights)
        kinds = sorted({profile.op_type_kind(op) for op, _ in items}) if profile is not None else []
        self.op_chart.setLabel("left", f"ms ({kinds_text(kinds)})")
        self.op_chart.getPlotItem().getAxis("bottom").setTicks([[(i, op) for i, (op, _) in enumerate(items)]])
        if items:
            self.op_chart.setXRange(-0.6, len(items) - 0.4, padding=0)
            self.op_chart.setYRange(0, float(heights.max()) * 1.1 or 1.0, padding=0)

    def _fill_hints(self, profile) -> None:
        self.hints.clear()
        self.hint_text.setText("")
        hints = by_severity(profile.hints) if profile is not None else []  # profiles saved before it was sorted
        self.tabs.setTabText(self.hints_tab_index, f"Hints ({len(hints)})" if profile is not None else "Hints")
        if profile is None:
            return
        if not hints:
            item = QTreeWidgetItem(self.hints, ["No rule fired: no single pattern dominates this profile.", ""])
            item.setFirstColumnSpanned(True)
            return
        for hint in hints:
            node_ids = [str(n) for n in hint.get("node_ids", [])]
            share = hint.get("share")
            time_text = ""
            if hint.get("time_ms") is not None:
                time_text = format_ms(float(hint["time_ms"]))
                if share is not None:
                    time_text += f" ({100 * float(share):.0f} %)"
            severity = str(hint.get("severity", "low"))
            kind = str(hint.get("kind", "unknown"))
            top = QTreeWidgetItem(self.hints, [f"{severity.upper()}  {hint.get('rule', '')} · {len(node_ids)} "
                                               f"layer{'s' if len(node_ids) != 1 else ''}",
                                               f"{time_text} {kind}".strip()])
            top.setForeground(0, QColor(SEVERITY_COLORS.get(severity, "#444444")))
            top.setToolTip(0, str(hint.get("message", "")))
            top.setData(0, Qt.ItemDataRole.UserRole, node_ids[0] if node_ids else "")
            top.setData(0, HINT_LAYERS_ROLE, node_ids)
            top.setData(1, Qt.ItemDataRole.UserRole, hint)
            for node_id in node_ids:
                timing = profile.nodes.get(node_id)
                child = QTreeWidgetItem(top, [f"→ {node_id}", format_ms(timing.time.median_ms) + f" {timing.kind}"
                                              if timing is not None else ""])
                child.setData(0, Qt.ItemDataRole.UserRole, node_id)
                child.setData(1, Qt.ItemDataRole.UserRole, hint)
                child.setToolTip(0, f"Select {node_id} in the graph")
        self.hints.setCurrentItem(self.hints.topLevelItem(0))

    def _show_hint(self, item: Optional[QTreeWidgetItem]) -> None:
        hint = item.data(1, Qt.ItemDataRole.UserRole) if item is not None else None
        if not hint:
            self.hint_text.setText("")
            return
        severity = str(hint.get("severity", "low"))
        color = SEVERITY_COLORS.get(severity, "#444444")
        self.hint_text.setText(f"<b style='color:{color}'>{severity.upper()} · {hint.get('rule', '')}</b> "
                               f"<i>({hint.get('kind', 'unknown')})</i><br>{hint.get('message', '')}"
                               + (f"<br><small>Evidence: {html.escape(str(hint['evidence']))}</small>"
                                  if hint.get("evidence") else ""))

    def set_sweeps(self, sweeps: Sequence) -> None:
        """Draw engine.session.SweepResult lines (latency vs input pixels or alpha), one per target and mode."""
        self.sweeps = list(sweeps)
        by_target: dict[str, tuple[list[float], list[float], list[str]]] = {}
        axis = "alpha" if any("alpha" in r and "size" not in r for s in sweeps for r in s.rows) else "size"
        names: list[str] = []
        for sweep in sweeps:
            # One line per sweep run, named by target and mode ("cpu exact"); a repeat gets "#2".
            base = " ".join(str(part) for part in (sweep.target, sweep.settings.get("mode", "")) if part)
            name, count = base, 1
            while name in names:
                count += 1
                name = f"{base} #{count}"
            names.append(name)
            xs, ys, labels = by_target.setdefault(name, ([], [], []))
            for row in sweep.rows:
                if row.get("median_ms") is None:
                    continue
                if axis == "size" and row.get("size"):
                    h, w = row["size"]
                    xs.append(float(h) * float(w))
                elif axis == "alpha" and row.get("alpha") is not None:
                    xs.append(float(row["alpha"]))
                else:
                    continue
                ys.append(float(row["median_ms"]))
                labels.append(str(row.get("setting", "")))
        palette = ["#4e79a7", "#e15759", "#59a14f", "#f28e2b", "#b07aa1", "#76b7b2"]
        ticks: dict[float, str] = {}
        for index, (target, (xs, ys, labels)) in enumerate(by_target.items()):
            order = np.argsort(xs)
            x, y = np.array(xs)[order], np.array(ys)[order]
            line = self.sweep_lines.get(target)
            color = palette[index % len(palette)]
            if line is None:
                line = self.sweep_chart.plot(x, y, pen=pg.mkPen(color, width=2), symbol="o", symbolSize=7,
                                             symbolBrush=color, name=target)
                self.sweep_lines[target] = line
            else:
                line.setData(x, y)
            for value, text in zip(xs, labels):
                ticks[value] = text
        for target, line in self.sweep_lines.items():
            if target not in by_target:
                line.setData([], [])
        self.sweep_chart.setLabel("bottom", "width multiplier (alpha)" if axis == "alpha"
                                  else "input size (height x width)")
        self.sweep_chart.getPlotItem().getAxis("bottom").setTicks([sorted(ticks.items())] if ticks else None)
        self.tabs.setTabEnabled(self.sweep_tab_index, bool(by_target))

    # --- selection ------------------------------------------------------------------------
    def _emit(self, ids: list[str], index: int) -> None:
        if 0 <= index < len(ids):
            self.nodeClicked.emit(ids[index])

    def _hint_clicked(self, item: QTreeWidgetItem, column: int) -> None:
        """A hint selects all its layers; one of its layers (a child row) selects that layer."""
        layers = item.data(0, HINT_LAYERS_ROLE)
        node_id = item.data(0, Qt.ItemDataRole.UserRole)
        if layers:
            self.nodesClicked.emit([str(n) for n in layers])
        elif node_id:
            self.nodeClicked.emit(str(node_id))

    def _hide_markers(self) -> None:
        self.layer_marker.setOpts(x=np.zeros(0), height=np.zeros(0))
        self.top_marker.setOpts(x0=np.zeros(0), y=np.zeros(0), width=np.zeros(0))

    def highlight_node(self, node_id: Optional[str]) -> None:
        """Outline the bars of `node_id` (selected in the graph); None or an untimed node clears them."""
        self.highlighted = node_id if node_id in self._layer_index else None
        if self.highlighted is None:
            self._hide_markers()
            return
        index = self._layer_index[node_id]
        height = float(self.layer_ms[index])
        per_bar = max(1, self.layers_per_bar)  # outline the bar this layer is drawn in
        self.layer_marker.setOpts(x=np.array([(index // per_bar) * per_bar + (per_bar - 1) / 2], dtype=float),
                                  height=np.array([height]), width=0.9 * per_bar)
        low, high = self.layer_chart.getPlotItem().vb.viewRange()[0]
        if not low <= index <= high:  # bring the bar into view, keeping the zoom
            half = (high - low) / 2
            self.layer_chart.setXRange(index - half, index + half, padding=0)
        top = self._top_index.get(node_id)
        if top is None:
            self.top_marker.setOpts(x0=np.zeros(0), y=np.zeros(0), width=np.zeros(0))
        else:
            self.top_marker.setOpts(x0=np.zeros(1), y=np.array([float(top)]), width=np.array([height]))

    # --- for tests and scripts ------------------------------------------------------------
    def bar_heights(self) -> dict[str, np.ndarray]:
        """Stage -> bar heights of the per-layer chart as drawn (what the BarGraphItems hold)."""
        result = {}
        for stage, series in self.stage_series.items():
            height = series.opts.get("height")
            if series.isVisible() and height is not None and len(height):
                result[stage] = np.asarray(height, dtype=float)
        return result
