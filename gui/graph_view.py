"""The graph view: node boxes and edges of an analysed model, overlays, search.

Geometry comes from `engine.layout` (computed in a worker thread); this module
only turns it into scene items and recolours them.

Speed (see benchmarks/bench_gui_open.py): the scene holds one
`QGraphicsRectItem` per node and one `QGraphicsPathItem` per EDGE_BATCH edges
of one width, all painted by Qt in C++; the paths, label text and colours are
prepared by the worker that opens the model (`prepare_scene_data`), so the UI
thread only creates items, a slice per event-loop turn, and an old scene is
deleted the same way (`retire_scene`).  Text is the expensive part of a scene (a
`QGraphicsSimpleTextItem` costs ~20 us to create, 0.4 s for 20,000 nodes), so
all labels are painted by one `LabelLayer` item that draws only the labels of
the boxes in the exposed rectangle, found with numpy, and none when zoomed
out too far to read them.  Overlays change brushes and pens of the existing
items; they never add or remove items.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Mapping, Optional, Sequence

import numpy as np
import shiboken6
from PySide6.QtCore import QEvent, QPoint, QPointF, QRect, QRectF, QSize, Qt, QTimer, Signal
from PySide6.QtGui import (QBrush, QColor, QFont, QFontMetrics, QImage, QLinearGradient, QPainter,
                           QPainterPath, QPen, QPolygonF, QTransform)
from PySide6.QtWidgets import (QGraphicsItem, QGraphicsScene, QGraphicsView, QLabel, QMenu,
                               QStyleOptionGraphicsItem, QToolTip, QWidget)

from engine.inspect import human_bytes, human_count
from engine.layout import GROUP_PREFIX, INPUT_PREFIX, OUTPUT_PREFIX, group_totals, op_category
from engine.profile import KINDS
from gui.responsive import hold_gc, release_gc

CATEGORY_COLORS = {
    "conv/linear": "#9ecae9",
    "normalization": "#b5e0c4",
    "activation": "#ffd8a8",
    "pooling": "#d4b9f0",
    "data movement": "#e3e3e3",
    "upsampling": "#f4a6a6",
    "elementwise": "#fff0a8",
    "constant": "#f4f4f4",
    "io": "#ffffff",
    "other": "#d9c8b4",
    "group": "#e6e0f3",  # a collapsed group (stage or namespace): one box for many nodes
}
GROUP_PEN_COLOR = QColor("#5b4a8b")
# Overlay gradient (light yellow -> orange -> red): black text stays readable on every stop.
GRADIENT_STOPS = ((0.0, QColor("#ffffcc")), (0.5, QColor("#fd8d3c")), (1.0, QColor("#e31a1c")))
UNKNOWN_COLOR = QColor("#d0d0d0")
ZERO_COLOR = QColor("#ffffff")  # known to be zero (a Relu has no MACs): not the same as "small"
BOX_PEN = QColor("#5a5a5a")
EDGE_COLOR = QColor("#7a7a7a")
TOP_PEN_COLOR = QColor("#1f3fbf")
# Boxes linked to the selection of another view (source <-> converted model): a colour no fill uses.
LINK_PEN_COLOR = QColor("#d6007a")
LABEL_MIN_SCALE = 0.3  # below this zoom labels are unreadable: not drawn
LABEL_MAX_COUNT = 4000  # more visible boxes than this: labels not drawn (too small anyway)


@dataclass(frozen=True)
class OverlaySpec:
    key: str
    title: str
    metric: str  # NodeMetrics attribute (source "static") or profile figure (source "profile")
    formatter: str  # "count", "bytes", "ratio", "ms" or "category"
    unit: str = ""
    source: str = "static"  # "static": engine.analysis (estimated); "profile": the selected profile
    low_is_hot: bool = False  # the small values are the problem (memory-bound layers): drawn hot, outlined

    @property
    def needs_profile(self) -> bool:
        return self.source == "profile"


OVERLAYS: dict[str, Optional[OverlaySpec]] = {
    "none": None,
    "time": OverlaySpec("time", "Time (median)", "median_ms", "ms", "ms", source="profile"),
    "compute_unit": OverlaySpec("compute_unit", "Compute unit", "compute_unit", "category", source="profile"),
    # Bridge profiles carry tensor transfers between units (estimated from a measured calibration).
    "transfer": OverlaySpec("transfer", "Transfer cost", "transfer_ms", "ms", "ms", source="profile"),
    "macs": OverlaySpec("macs", "MACs", "macs", "count", "MAC"),
    "params": OverlaySpec("params", "Parameters", "params", "count"),
    "output_bytes": OverlaySpec("output_bytes", "Output memory", "output_bytes", "bytes"),
    # Low intensity = memory-bound, the usual bottleneck on phones: that end is drawn red.
    "arithmetic_intensity": OverlaySpec("arithmetic_intensity", "Intensity (low: memory-bound)",
                                        "arithmetic_intensity", "ratio", "FLOP/B", low_is_hot=True),
}
OVERLAY_TITLES = {"none": "Op category", "time": "Time (profile)", "compute_unit": "Compute unit (profile)",
                  "transfer": "Transfer cost (profile)",
                  "macs": "MACs", "params": "Parameters", "output_bytes": "Output memory",
                  "arithmetic_intensity": "Arithmetic intensity"}
COMPUTE_UNIT_COLORS = {"CPU": "#9ecae9", "GPU": "#f4a6a6", "ANE": "#b5e0c4", "NeuralEngine": "#b5e0c4",
                       "NPU": "#b5e0c4", "DSP": "#d4b9f0"}
OTHER_UNIT_COLOR = "#d9c8b4"
# Diverging colours of a ratio B / A (compare view): blue = B faster, white = equal, red = B slower.
DIVERGING_STOPS = ((0.0, QColor("#2166ac")), (0.5, QColor("#f7f7f7")), (1.0, QColor("#b2182b")))
RATIO_LIMIT = 4.0  # ratios beyond 1/4 .. 4 get the end colours
# Edge pen widths by tensor bytes (log scale), set once when the scene is built.
EDGE_MIN_WIDTH, EDGE_MAX_WIDTH, EDGE_WIDTH_STEPS = 1.0, 4.5, 8


def format_value(value: Optional[float], formatter: str, unit: str = "") -> str:
    if value is None:
        return "unknown"
    if formatter == "bytes":
        return human_bytes(value)
    if formatter == "ratio":
        return f"{value:.3g} {unit}".strip()
    if formatter == "ms":
        return format_ms(value)
    return human_count(value, unit)


def format_ms(value: float) -> str:
    """Milliseconds with three significant digits, trailing zeros kept (0.0120 ms, 1.00 ms, 123 ms)."""
    if value >= 100:
        return f"{value:.0f} ms"
    if value == 0:
        return "0 ms"
    return f"{value:#.3g} ms"


def gradient_color(t: float) -> QColor:
    """Colour at position t in [0, 1] of the overlay gradient."""
    t = min(1.0, max(0.0, t))
    for (t0, c0), (t1, c1) in zip(GRADIENT_STOPS, GRADIENT_STOPS[1:]):
        if t <= t1:
            f = 0.0 if t1 == t0 else (t - t0) / (t1 - t0)
            return QColor.fromRgbF(c0.redF() + (c1.redF() - c0.redF()) * f,
                                   c0.greenF() + (c1.greenF() - c0.greenF()) * f,
                                   c0.blueF() + (c1.blueF() - c0.blueF()) * f)
    return QColor(GRADIENT_STOPS[-1][1])


def diverging_color(ratio: Optional[float], limit: float = RATIO_LIMIT) -> QColor:
    """Colour of a ratio B / A on a log scale: 1 is neutral, 1/limit and below blue, limit and above red."""
    if ratio is None or not math.isfinite(ratio) or ratio <= 0:
        return QColor(UNKNOWN_COLOR)
    t = 0.5 + 0.5 * max(-1.0, min(1.0, math.log(ratio) / math.log(limit)))
    for (t0, c0), (t1, c1) in zip(DIVERGING_STOPS, DIVERGING_STOPS[1:]):
        if t <= t1:
            f = 0.0 if t1 == t0 else (t - t0) / (t1 - t0)
            return QColor.fromRgbF(c0.redF() + (c1.redF() - c0.redF()) * f,
                                   c0.greenF() + (c1.greenF() - c0.greenF()) * f,
                                   c0.blueF() + (c1.blueF() - c0.blueF()) * f)
    return QColor(DIVERGING_STOPS[-1][1])


def unit_color(unit: str) -> QColor:
    return QColor(COMPUTE_UNIT_COLORS.get(unit, OTHER_UNIT_COLOR))


def node_transfers(profile) -> dict[str, list]:
    """Node id -> the profile's transfers charged to it: into the node (its consumer), or out of it
    when nothing consumes the tensor (a graph output).  Empty for profiles without transfers."""
    charged: dict[str, list] = {}
    for transfer in getattr(profile, "transfers", ()) or ():
        node_id = transfer.to_node or transfer.from_node
        if node_id:
            charged.setdefault(node_id, []).append(transfer)
    return charged


def _type_text(value_type) -> str:
    return "type unknown" if value_type is None else f"{value_type.dtype} {value_type.shape_text()}"


def is_io(node_id: str) -> bool:
    return node_id.startswith((INPUT_PREFIX, OUTPUT_PREFIX))


def is_group(node_id: str) -> bool:
    return node_id.startswith(GROUP_PREFIX)


class LabelLayer(QGraphicsItem):
    """Paints the text of every visible box in one paint() call (see the module docstring)."""

    def __init__(self, rects: np.ndarray, lines: Sequence[tuple[str, str, str]], arrow_tips: np.ndarray):
        super().__init__()
        self._rects = rects  # (n, 4): x, y, w, h
        # Arrow heads are drawn here too, only where visible: one path of 24,000 arrows
        # costs ~40 ms per repaint even when ten of them are on screen.
        self._tips = arrow_tips  # (m, 2): end point of each edge
        self._right = rects[:, 0] + rects[:, 2]
        self._bottom = rects[:, 1] + rects[:, 3]
        self._lines = lines
        self._elided: dict[int, tuple[str, str, str]] = {}
        if len(rects):
            self._bounds = QRectF(float(rects[:, 0].min()), float(rects[:, 1].min()),
                                  float(self._right.max() - rects[:, 0].min()),
                                  float(self._bottom.max() - rects[:, 1].min()))
        else:
            self._bounds = QRectF()
        self.title_font = QFont()
        self.title_font.setPixelSize(13)
        self.title_font.setBold(True)
        self.text_font = QFont()
        self.text_font.setPixelSize(11)
        self._title_metrics = QFontMetrics(self.title_font)
        self._text_metrics = QFontMetrics(self.text_font)
        self.setFlag(QGraphicsItem.GraphicsItemFlag.ItemUsesExtendedStyleOption)
        self.setAcceptedMouseButtons(Qt.MouseButton.NoButton)
        self.setAcceptHoverEvents(False)
        self.setZValue(10)

    def boundingRect(self) -> QRectF:
        return self._bounds

    def shape(self) -> QPainterPath:
        return QPainterPath()  # never hit: clicks and tooltips go to the boxes and edges below

    def _elide(self, index: int) -> tuple[str, ...]:
        cached = self._elided.get(index)
        if cached is None:
            width = int(self._rects[index, 2]) - 10
            title, name, *details = self._lines[index]
            cached = (self._title_metrics.elidedText(title, Qt.TextElideMode.ElideRight, width),
                      self._text_metrics.elidedText(name, Qt.TextElideMode.ElideMiddle, width),
                      *(self._text_metrics.elidedText(d, Qt.TextElideMode.ElideRight, width) for d in details))
            self._elided[index] = cached
        return cached

    def set_line(self, index: int, lines: tuple[str, ...]) -> None:
        """Replace the text of box `index` (a collapsed group's time line follows the selected profile)."""
        self._lines[index] = lines
        self._elided.pop(index, None)
        self.update()

    def paint(self, painter: QPainter, option: QStyleOptionGraphicsItem, widget=None) -> None:
        scale = QStyleOptionGraphicsItem.levelOfDetailFromTransform(painter.worldTransform())
        if scale < LABEL_MIN_SCALE or not len(self._rects):
            return
        exposed = option.exposedRect
        tips = self._tips
        if len(tips):
            shown = np.flatnonzero((tips[:, 0] >= exposed.left() - 5) & (tips[:, 0] <= exposed.right() + 5)
                                   & (tips[:, 1] >= exposed.top()) & (tips[:, 1] <= exposed.bottom() + 8))
            if len(shown) <= LABEL_MAX_COUNT:
                painter.setPen(Qt.PenStyle.NoPen)
                painter.setBrush(EDGE_COLOR)
                for x, y in tips[shown].tolist():
                    painter.drawPolygon([QPointF(x, y), QPointF(x - 4, y - 7), QPointF(x + 4, y - 7)])
        visible = np.flatnonzero((self._right >= exposed.left()) & (self._rects[:, 0] <= exposed.right())
                                 & (self._bottom >= exposed.top()) & (self._rects[:, 1] <= exposed.bottom()))
        if len(visible) > LABEL_MAX_COUNT:
            return
        painter.setPen(QColor("#111111"))
        title_ascent = self._title_metrics.ascent()
        text_ascent = self._text_metrics.ascent()
        line = self._text_metrics.height()
        for index in visible.tolist():
            x, y, w, h = self._rects[index].tolist()
            title, name, *details = self._elide(index)
            if h < 40:  # graph input/output: kind and name, then the tensor type
                painter.setFont(self.text_font)
                painter.drawText(QPointF(x + 6, y + 3 + text_ascent), title)
                painter.drawText(QPointF(x + 6, y + 3 + line + text_ascent), name)
                continue
            painter.setFont(self.title_font)
            painter.drawText(QPointF(x + 6, y + 3 + title_ascent), title)
            painter.setFont(self.text_font)
            painter.drawText(QPointF(x + 6, y + 19 + text_ascent), name)
            for row, detail in enumerate(details[: max(1, int((h - 19) // line) - 1)], 1):
                if detail:  # a collapsed group's box is taller: totals, then the profile's time
                    painter.drawText(QPointF(x + 6, y + 19 + row * line + text_ascent), detail)


@dataclass
class SceneData:
    """What a GraphScene draws, as plain data: prepared in the worker thread that opens the model.

    Label text, colour categories and edge widths cost ~60 % of building a scene when made
    on the UI thread; made here, the UI thread only creates the Qt items.
    """

    node_ids: list[str]
    rects: np.ndarray  # (n, 4): x, y, w, h per node id
    categories: list[str]
    lines: list[tuple[str, str, str]]  # label lines per box
    edge_steps: list[int]  # pen width step per edge, 0 .. EDGE_WIDTH_STEPS - 1
    edge_widths: list[float]
    tips: np.ndarray  # (m, 2): end point of each edge (arrow heads)
    edge_batches: list[tuple[int, QPainterPath]]  # (pen width step, the polylines of up to EDGE_BATCH edges)
    edge_batch_of: np.ndarray  # (m,): the batch drawing each edge
    segments: np.ndarray  # (k, 4): x0, y0, x1, y1 of every straight piece of every edge (hit tests)
    segment_edge: np.ndarray  # (k,): the edge of each segment


# Edges per path item.  One QGraphicsPathItem per edge made the first paint of a 20,000-node
# model 54 ms and a fitted view 90 ms (the unindexed scene walks every item on every paint);
# batched, 23 ms and 20 ms, and building the edges takes 40 ms instead of 300 ms.
EDGE_BATCH = 64


def prepare_scene_data(loaded) -> SceneData:
    """The SceneData of `loaded` (a gui.app.LoadedModel); any thread may call it.

    It makes no QObject: QPainterPath is a value type that any thread may build.
    """
    layout, analysis = loaded.layout, loaded.analysis
    graph = analysis.graph
    node_ids = list(layout.boxes)
    rects = np.array([layout.boxes[n] for n in node_ids], dtype=float).reshape(-1, 4)
    categories, lines = [], []
    describe = GraphScene.describe
    groups = getattr(loaded, "groups", None) or {}
    for node_id in node_ids:
        if is_group(node_id):
            category, text = "group", group_lines(groups[node_id], analysis)
        else:
            category, text = describe(node_id, graph, analysis)
        categories.append(category)
        lines.append(text)
    steps, widths = _edge_width_steps(layout.edges, graph)
    tips = np.array([e.points[-1] for e in layout.edges], dtype=float).reshape(-1, 2)
    batches, batch_of, segments, segment_edge = _edge_batches(layout.edges, steps)
    return SceneData(node_ids, rects, categories, lines, steps, widths, tips, batches, batch_of,
                     segments, segment_edge)


def _edge_batches(edges, steps: list[int]):
    """Group edges of one pen width, in layout order (so a batch covers nearby edges), EDGE_BATCH at a time."""
    batches: list[tuple[int, QPainterPath]] = []
    batch_of = np.zeros(len(edges), dtype=np.int64)
    open_batches: dict[int, list] = {}  # step -> [path, count, members]
    segment_points: list[tuple[float, float, float, float]] = []
    segment_edge: list[int] = []

    def close(step: int, entry: list) -> None:
        index = len(batches)
        batches.append((step, entry[0]))
        for member in entry[2]:
            batch_of[member] = index

    for index, edge in enumerate(edges):
        step = steps[index]
        entry = open_batches.get(step)
        if entry is None:
            entry = open_batches[step] = [QPainterPath(), 0, []]
        points = edge.points
        entry[0].addPolygon(QPolygonF([QPointF(x, y) for x, y in points]))
        entry[1] += 1
        entry[2].append(index)
        for (x0, y0), (x1, y1) in zip(points, points[1:]):
            segment_points.append((x0, y0, x1, y1))
            segment_edge.append(index)
        if entry[1] >= EDGE_BATCH:
            close(step, open_batches.pop(step))
    for step, entry in sorted(open_batches.items()):
        close(step, entry)
    segments = np.array(segment_points, dtype=float).reshape(-1, 4)
    return batches, batch_of, segments, np.array(segment_edge, dtype=np.int64)


def group_lines(group, analysis, profile=None) -> tuple[str, str, str, str]:
    """The text of a collapsed group's box: name, what it is, its totals, and its time in `profile`."""
    totals = group_totals(group, analysis, profile)
    macs = human_count(totals.macs) + ("+?" if totals.unknown_cost_nodes else "")
    time_line = ""
    if totals.time_ms is not None:
        time_line = f"time {format_ms(totals.time_ms)} ({totals.time_kind})"
    elif profile is not None:
        time_line = "time: not in this profile"
    return (f"▸ {group.title}", f"{group.kind} · {totals.nodes} nodes",
            f"MACs {macs} · W {human_count(totals.params)}", time_line)


def _edge_width_steps(edges, graph) -> tuple[list[int], list[float]]:
    """Per edge: its pen width step (log of the tensor's bytes) and that width.

    Unknown sizes get the thinnest pen.  Set once at build time: overlays never touch edges.
    """
    byte_sizes: dict[str, float] = {}  # per tensor: a tensor feeding many consumers is looked up once
    value_type = graph.value_type
    for edge in edges:
        if edge.value not in byte_sizes:
            found = value_type(edge.value)
            byte_sizes[edge.value] = float((found.byte_size or 0) if found is not None else 0)
    sizes = np.fromiter((byte_sizes[e.value] for e in edges), dtype=float, count=len(edges))
    positive = sizes[sizes > 0]
    steps = np.zeros(len(edges), dtype=int)
    if len(positive):
        low, high = np.log10(positive.min()), np.log10(positive.max())
        if high > low:
            logs = np.log10(np.where(sizes > 0, sizes, positive.min()))
            steps = np.rint((logs - low) / (high - low) * (EDGE_WIDTH_STEPS - 1)).astype(int)
    widths = EDGE_MIN_WIDTH + steps * (EDGE_MAX_WIDTH - EDGE_MIN_WIDTH) / (EDGE_WIDTH_STEPS - 1)
    return steps.tolist(), widths.tolist()


class GraphScene(QGraphicsScene):
    """Items for one laid-out model.  Built once; overlays recolour, never rebuild."""

    # Items created per build step (~15 us each: 5-8 ms per step).  The caller runs steps until
    # its time slice is used (MainWindow._on_loaded: 25 ms), so a step must be much shorter than
    # the slice: with 1,500 nodes per step a slice overran to 100+ ms on a 20,000-node model.
    CHUNK_NODES = 400
    CHUNK_EDGE_BATCHES = 50  # of EDGE_BATCH edges each
    CHUNK_TEARDOWN = 1000  # items removed and deleted per teardown step (~10 ms)

    def __init__(self, loaded, parent=None, build: bool = True):
        super().__init__(parent)
        self.loaded = loaded
        layout = loaded.layout
        # No BSP index: measured on a 20,000-node graph, the index costs ~150 ms at the first
        # paint and makes every later paint slower (31 -> 100 ms); look-ups (tooltips) stay
        # a few ms without it, and no item accepts hover events.
        self.setItemIndexMethod(QGraphicsScene.ItemIndexMethod.NoIndex)
        data = getattr(loaded, "scene_data", None)
        if data is None or data.node_ids != list(layout.boxes):
            data = prepare_scene_data(loaded)
        self._data = data
        self.node_ids: list[str] = data.node_ids
        self.node_index = {node_id: i for i, node_id in enumerate(self.node_ids)}
        self.node_items = []
        self.box_brushes: list[QBrush] = []  # the brush of each box, as set (the minimap reads colours here)
        self.edge_items = []
        self.edges = layout.edges
        self.categories: list[str] = []  # filled as the boxes are made (overlays zip them with the items)
        self.rects = data.rects
        self._lines: list[tuple[str, str, str]] = data.lines
        self.box_pen = QPen(BOX_PEN, 1.0)
        self.group_pen = QPen(GROUP_PEN_COLOR, 2.0)
        self.groups = dict(getattr(loaded, "groups", None) or {})  # engine.layout.NodeGroup by box id
        self.group_indexes = {i for i, node_id in enumerate(self.node_ids) if is_group(node_id)}
        self.top_pen = QPen(TOP_PEN_COLOR, 4.0)
        self.selection_pen = QPen(QColor("#000000"), 3.0)
        self.link_pen = QPen(LINK_PEN_COLOR, 5.0)
        self.linked_node_ids: list[str] = []  # outlined: what the other view's selection maps to
        self._linked: set[int] = set()
        self._category_brushes = {name: QBrush(QColor(color)) for name, color in CATEGORY_COLORS.items()}
        self.overlay_key = "none"
        self.overlay_range: Optional[tuple[float, float]] = None
        self.overlay_kind = ""  # how the shown values were obtained: estimated / measured / attributed
        self.overlay_units: list[str] = []  # compute units shown by the "compute_unit" overlay
        self.profile = None  # engine.profile.Profile that the profile overlays show
        self.edge_widths: list[float] = []
        self.top_node_ids: list[str] = []
        self._top_set: set[str] = set()
        self._selected_index: Optional[int] = None
        self._also_selected: list[int] = []  # further selected boxes (a hint's layers), outlined too
        self.labels: Optional[LabelLayer] = None
        self.complete = False
        margin = 60.0
        # The boxes' extent and every edge's polyline (a skip edge routed round the side reaches
        # beyond the outermost box): exports and Fit use this rectangle.
        bounds = QRectF(layout.left, layout.top, layout.width - layout.left, layout.height - layout.top)
        for _, path in data.edge_batches:
            bounds = bounds.united(path.boundingRect())
        self.setSceneRect(bounds.adjusted(-margin, -margin, margin, margin))
        self.selectionChanged.connect(self._mark_selection)
        if build:
            for _ in self.build_steps():
                pass

    def build_steps(self):
        """Create the items a chunk at a time; yields between chunks. Edges first: they lie below."""
        data = self._data
        pens = [QPen(EDGE_COLOR, float(EDGE_MIN_WIDTH + k * (EDGE_MAX_WIDTH - EDGE_MIN_WIDTH)
                                       / (EDGE_WIDTH_STEPS - 1))) for k in range(EDGE_WIDTH_STEPS)]
        self.edge_widths = data.edge_widths
        add_path = self.addPath
        batches = data.edge_batches
        for start in range(0, len(batches), self.CHUNK_EDGE_BATCHES):
            for step, path in batches[start:start + self.CHUNK_EDGE_BATCHES]:
                item = add_path(path, pens[step])
                item.setAcceptedMouseButtons(Qt.MouseButton.NoButton)  # clicks go through to the background
                self.edge_items.append(item)
            yield
        selectable = QGraphicsItem.GraphicsItemFlag.ItemIsSelectable
        add_rect = self.addRect
        brushes = self._category_brushes
        rects = data.rects.tolist()
        if self.group_indexes:
            # A collapsed group looks like a stack of cards: one path of offset frames under its box.
            stack = QPainterPath()
            for i in sorted(self.group_indexes):
                x, y, w, h = rects[i]
                stack.addRect(x + 5, y + 5, w, h)
            backdrop = self.addPath(stack, QPen(GROUP_PEN_COLOR, 1.0), QBrush(QColor("#d3cbe8")))
            backdrop.setAcceptedMouseButtons(Qt.MouseButton.NoButton)
            self.edge_items.append(backdrop)  # torn down with the edges
        for start in range(0, len(self.node_ids), self.CHUNK_NODES):
            for i in range(start, min(start + self.CHUNK_NODES, len(self.node_ids))):
                category = data.categories[i]
                self.categories.append(category)
                x, y, w, h = rects[i]
                item = add_rect(x, y, w, h, self.group_pen if i in self.group_indexes else self.box_pen,
                                brushes[category])
                self.box_brushes.append(brushes[category])
                item.setFlag(selectable)
                item.setData(0, self.node_ids[i])
                self.node_items.append(item)
            yield
        self.labels = LabelLayer(self.rects, self._lines, data.tips)
        self.addItem(self.labels)
        self.complete = True

    def teardown_steps(self):
        """Remove and delete the items a slice at a time; yields between slices (see `retire_scene`).

        Deleting the scene at once costs ~0.2 s for a 20,000-node model (C++ items plus their
        Python wrappers), all in one event-loop turn.  `removeItem` hands an item to its Python
        wrapper, so dropping the wrapper deletes it.  Items go in the order they were added:
        the scene's unindexed item list then shrinks from its front, which costs nothing,
        while removing from the back would scan the whole list for every item.
        """
        self.complete = False
        self.blockSignals(True)  # no selectionChanged for removed items: no slot may touch them
        remove = self.removeItem
        for attribute in ("edge_items", "node_items"):
            items = getattr(self, attribute)
            setattr(self, attribute, [])
            while items:
                chunk = items[:self.CHUNK_TEARDOWN]
                del items[:self.CHUNK_TEARDOWN]
                for item in chunk:
                    remove(item)
                del chunk  # deletes the C++ items
                yield
        if self.labels is not None:
            remove(self.labels)
            self.labels = None
        yield
        # Drop the model: the scene is in reference cycles (its signal connections), which only a
        # full garbage collection would free, and gui.responsive freezes what is alive after an
        # open.  Without this the previous model would stay in memory for good.
        self.loaded = self.profile = self._data = None
        self.box_brushes = []
        self.node_ids, self.node_index, self.categories, self._lines = [], {}, [], []
        self.edges, self.edge_widths, self.rects = (), [], np.zeros((0, 4))

    def _base_pen(self, index: int) -> QPen:
        if index in self._linked:
            return self.link_pen
        if self.node_ids[index] in self._top_set:
            return self.top_pen
        return self.group_pen if index in self.group_indexes else self.box_pen

    def _clear_outlines(self) -> None:
        """Back to their own outline the boxes an overlay outlined (its top boxes), and forget them.

        Only pens that differ from a box's own are set (the top boxes, the selected and the
        linked ones): setting all 20,000 took ~20 ms of every recolour.  Overlays call this
        first, then outline their top boxes, `_restore_linked_pens` and `_mark_selection`.
        """
        changed = {self.node_index[n] for n in self._top_set if n in self.node_index} | self._linked
        if self._selected_index is not None:
            changed.add(self._selected_index)
        changed.update(self._also_selected)
        self.top_node_ids, self._top_set = [], set()
        for index in changed:
            self.node_items[index].setPen(self._base_pen(index))

    # --- collapsed groups -------------------------------------------------------------------
    def box_id(self, node_id: str) -> Optional[str]:
        """The id of the box drawing `node_id` here: its own, or its collapsed group's (None: not drawn)."""
        if node_id in self.node_index:
            return node_id
        layout = self.loaded.layout if self.loaded is not None else None
        box = layout.box_of(node_id) if layout is not None else None
        return box if box in self.node_index else None

    def enclosing_groups(self, node_id: str) -> list[str]:
        """Ids of the expanded groups that hold `node_id`, innermost first (what a collapse can close)."""
        if not hasattr(self, "_groups_of"):
            self._groups_of: dict[str, list[str]] = {}
            for group in sorted(self.groups.values(), key=lambda g: -g.depth):
                for member in group.members:
                    self._groups_of.setdefault(member, []).append(group.id)
        return [g for g in self._groups_of.get(node_id, ()) if g not in self.node_index]

    def group_totals(self, group_id: str):
        """engine.layout.GroupTotals of a collapsed group, with the selected profile's time."""
        return group_totals(self.groups[group_id], self.loaded.analysis, self.profile)

    def _update_group_lines(self) -> None:
        if not self.group_indexes or self.labels is None:
            return
        analysis = self.loaded.analysis
        for index in self.group_indexes:
            self.labels.set_line(index, group_lines(self.groups[self.node_ids[index]], analysis, self.profile))

    def set_linked(self, node_ids: Sequence[str]) -> None:
        """Outline `node_ids` (those of this scene; others are ignored) as linked to another view's selection."""
        previous = self._linked
        self.linked_node_ids = [n for n in dict.fromkeys(node_ids) if n in self.node_index]
        self._linked = {self.node_index[n] for n in self.linked_node_ids}
        for index in previous | self._linked:
            self.node_items[index].setPen(self._base_pen(index))
        self._mark_selection()

    def _restore_linked_pens(self) -> None:
        for index in self._linked:
            self.node_items[index].setPen(self.link_pen)

    def _mark_selection(self) -> None:
        """A thick outline on the selected box (Qt's dashed one is hard to see on a coloured box)."""
        previous = self._selected_index
        for index in ([previous] if previous is not None else []) + self._also_selected:
            self.node_items[index].setPen(self._base_pen(index))
        selected = self.selectedItems()
        node_id = selected[0].data(0) if selected else None
        self._selected_index = self.node_index.get(node_id) if isinstance(node_id, str) else None
        if self._selected_index is not None:
            self.node_items[self._selected_index].setPen(self.selection_pen)
        others = (self.node_index.get(item.data(0)) for item in selected[1:])
        self._also_selected = [index for index in others if index is not None]
        for index in self._also_selected:
            self.node_items[index].setPen(self.selection_pen)

    @staticmethod
    def describe(node_id: str, graph, analysis) -> tuple[str, tuple[str, str, str]]:
        """Colour category and label lines (title, name, detail) of a box; plain data, any thread."""
        if node_id.startswith(INPUT_PREFIX):
            name = node_id[len(INPUT_PREFIX):]
            value_type = graph.value_type(name)
            return "io", (f"input  {name}", _type_text(value_type), "")
        if node_id.startswith(OUTPUT_PREFIX):
            name = node_id[len(OUTPUT_PREFIX):]
            value_type = graph.value_type(name)
            return "io", (f"output  {name}", _type_text(value_type), "")
        node = graph.node(node_id)
        metrics = analysis.nodes[node_id]
        category = "constant" if metrics.is_constant else op_category(node.op_type)
        first = node.outputs[0] if node.outputs else ""
        value_type = graph.value_type(first) if first else None
        detail = value_type.shape_text() if value_type is not None else ""
        if metrics.params:
            detail += f"   W {human_count(metrics.params)}"
        return category, (node.op_type, node.name or node.id, detail)

    # --- overlays -------------------------------------------------------------------------
    def set_profile(self, profile) -> None:
        """Show `profile` (engine.profile.Profile or None) in the profile overlays; re-applies the current one."""
        self.profile = profile
        self._update_group_lines()
        spec = OVERLAYS.get(self.overlay_key)
        if spec is not None and spec.needs_profile:
            self.set_overlay(self.overlay_key)

    def overlay_values(self, key: str) -> list[Optional[float]]:
        """One value per box for overlay `key`; a collapsed group shows the sum over its nodes
        (arithmetic intensity: its FLOPs over its bytes moved)."""
        spec = OVERLAYS[key]
        values: list[Optional[float]] = []
        if key == "transfer":
            per_node = node_transfers(self.profile)
            for node_id in self.node_ids:
                members = self.groups[node_id].members if node_id in self.groups else (node_id,)
                charged = [t.time.median_ms for m in members for t in per_node.get(m, ()) if t.time is not None]
                values.append(sum(charged) if charged else None)
            return values
        if spec is not None and spec.needs_profile:
            timings = self.profile.nodes if self.profile is not None else {}
            for node_id in self.node_ids:
                if node_id in self.groups:
                    values.append(self.group_totals(node_id).time_ms)
                    continue
                timing = timings.get(node_id)
                values.append(None if timing is None else getattr(timing.time, spec.metric))
            return values
        nodes = self.loaded.analysis.nodes
        for node_id in self.node_ids:
            if node_id in self.groups and spec is not None:
                values.append(getattr(self.group_totals(node_id), spec.metric, None))
                continue
            metrics = nodes.get(node_id)
            values.append(None if metrics is None or spec is None else getattr(metrics, spec.metric))
        return values

    def profile_kinds(self, key: str = "time") -> list[str]:
        """Kinds of the selected profile's figures for overlay `key`, strongest first (measured, attributed)."""
        if self.profile is None:
            return []
        if key == "transfer":
            present = {t.time.kind for t in getattr(self.profile, "transfers", ()) if t.time is not None}
        elif key == "compute_unit":  # the unit's own kind: measured (ONNX Runtime) or planned (Core ML's plan)
            present = {timing.compute_unit_kind for timing in self.profile.nodes.values()} - {""}
            if not present:
                return ["unknown"]
        else:
            present = {timing.kind for timing in self.profile.nodes.values()}
        return [kind for kind in KINDS if kind in present]

    def set_overlay(self, key: str, top_count: int = 10) -> None:
        """Recolour the boxes for overlay `key` (a key of OVERLAYS); outline the top `top_count`."""
        if key not in OVERLAYS:
            raise ValueError(f"unknown overlay {key!r}; known: {', '.join(OVERLAYS)}")
        self.overlay_key = key
        spec = OVERLAYS[key]
        self.overlay_units = []
        if spec is None:
            self._clear_outlines()
            box_brushes = self.box_brushes
            for index, (item, category) in enumerate(zip(self.node_items, self.categories)):
                brush = box_brushes[index] = self._category_brushes[category]
                item.setBrush(brush)
            self.overlay_range = None
            self.overlay_kind = ""
            self._restore_linked_pens()
            self._mark_selection()
            return
        self.overlay_kind = "/".join(self.profile_kinds(key)) if spec.needs_profile else "estimated"
        if spec.formatter == "category":
            self._apply_units()
            return
        self.apply_values(self.overlay_values(key), top_count, spec.low_is_hot)

    def _apply_units(self) -> None:
        """Colour each box by the compute unit the profile reports for it (categorical, no gradient)."""
        timings = self.profile.nodes if self.profile is not None else {}
        brushes: dict[str, QBrush] = {}
        unknown, io_brush = QBrush(UNKNOWN_COLOR), self._category_brushes["io"]
        units: list[str] = []
        self._clear_outlines()
        for index, (node_id, item) in enumerate(zip(self.node_ids, self.node_items)):
            if node_id in self.groups:  # one unit for all its timed nodes, else "not reported"
                found = {timings[m].compute_unit for m in self.groups[node_id].members if m in timings}
                unit = found.pop() if len(found) == 1 else ""
            else:
                timing = timings.get(node_id)
                unit = timing.compute_unit if timing is not None else ""
            if is_io(node_id):
                brush = io_brush
            elif not unit:
                brush = unknown
            else:
                brush = brushes.get(unit)
                if brush is None:
                    brush = brushes[unit] = QBrush(unit_color(unit))
                    units.append(unit)
            item.setBrush(brush)
            self.box_brushes[index] = brush
        self.overlay_units = units
        self.overlay_range = None
        self._restore_linked_pens()
        self._mark_selection()

    def apply_ratios(self, ratios: Mapping[str, Optional[float]], limit: float = RATIO_LIMIT) -> None:
        """Colour boxes by a ratio per node id (compare view: B / A) with the diverging scale."""
        for _ in self.ratio_steps(ratios, limit):
            pass

    def ratio_steps(self, ratios: Mapping[str, Optional[float]], limit: float = RATIO_LIMIT):
        """`apply_ratios` a chunk of boxes at a time; yields between chunks (~70 ms for 20,000 boxes)."""
        self.overlay_key = "ratio"
        brushes: dict[int, QBrush] = {}
        unknown, io_brush = QBrush(UNKNOWN_COLOR), self._category_brushes["io"]
        self._clear_outlines()
        for index, (node_id, item) in enumerate(zip(self.node_ids, self.node_items)):
            if index % self.CHUNK_NODES == 0:
                yield
            ratio = ratios.get(node_id)
            if is_io(node_id):
                brush = io_brush
            elif ratio is None or not math.isfinite(ratio) or ratio <= 0:
                brush = unknown
            else:
                t = max(-1.0, min(1.0, math.log(ratio) / math.log(limit)))
                step = int(round(t * 50))  # 101 shared brushes
                brush = brushes.get(step)
                if brush is None:
                    brush = brushes[step] = QBrush(diverging_color(limit ** (step / 50), limit))
            item.setBrush(brush)
            self.box_brushes[index] = brush
        self._restore_linked_pens()
        self._mark_selection()

    def apply_values(self, values: Sequence[Optional[float]], top_count: int = 10, low_is_hot: bool = False) -> None:
        """Colour boxes by `values` (one per node, None = unknown) on a log scale; outline the largest
        (`low_is_hot`: the scale runs the other way, and the smallest are outlined)."""
        known = np.array([v if v is not None else np.nan for v in values], dtype=float)
        io_mask = np.array([is_io(n) for n in self.node_ids], dtype=bool)
        known[io_mask] = np.nan
        finite = known[np.isfinite(known)]
        positive = finite[finite > 0]
        if len(positive):
            low, high = float(positive.min()), float(positive.max())
        else:
            low = high = 0.0
        self.overlay_range = (low, high)
        log_low, log_high = (math.log10(low), math.log10(high)) if low > 0 else (0.0, 0.0)
        span = log_high - log_low
        # The colour step of every box at once (numpy), then one brush per step: 101 shared
        # gradient brushes, and codes for boxes with no value, zero, and graph inputs/outputs.
        steps = np.full(len(known), -2, dtype=np.int64)  # -2: no value
        with np.errstate(divide="ignore", invalid="ignore"):
            positive_mask = np.isfinite(known) & (known > 0)
            if span > 0:
                steps[positive_mask] = np.rint((np.log10(known[positive_mask]) - log_low) / span * 100)
            else:
                steps[positive_mask] = 100
        if low_is_hot:
            steps[positive_mask] = 100 - steps[positive_mask]
        steps[np.isfinite(known) & (known <= 0)] = -3  # zero
        steps[io_mask] = -1
        brushes: dict[int, QBrush] = {-1: self._category_brushes["io"], -2: QBrush(UNKNOWN_COLOR),
                                      -3: QBrush(ZERO_COLOR)}
        box_brushes = self.box_brushes
        self._clear_outlines()
        for i, (item, step) in enumerate(zip(self.node_items, steps.tolist())):
            brush = brushes.get(step)
            if brush is None:
                brush = brushes[step] = QBrush(gradient_color(step / 100))
            item.setBrush(brush)
            box_brushes[i] = brush
        if low_is_hot:  # the smallest positive values first (zero and unknown last)
            ranked = np.argsort(np.where(positive_mask, known, np.inf), kind="stable")
        else:
            ranked = np.argsort(-np.nan_to_num(known, nan=-1.0), kind="stable")
        self.top_node_ids = [self.node_ids[i] for i in ranked[:top_count].tolist()
                             if np.isfinite(known[i]) and known[i] > 0]
        self._top_set = set(self.top_node_ids)
        for node_id in self.top_node_ids:
            self.node_items[self.node_index[node_id]].setPen(self.top_pen)
        self._restore_linked_pens()
        self._mark_selection()

    # --- look-ups -------------------------------------------------------------------------
    def item_for(self, node_id: str):
        return self.node_items[self.node_index[node_id]]

    def node_at(self, scene_pos: QPointF) -> Optional[str]:
        """The node id of the box under `scene_pos`, or None (numpy on the box array: no item shapes)."""
        rects = self.rects
        if not len(rects) or len(self.node_items) < len(self.node_ids):
            return None
        x, y = scene_pos.x(), scene_pos.y()
        inside = np.flatnonzero((rects[:, 0] <= x) & (x <= rects[:, 0] + rects[:, 2])
                                & (rects[:, 1] <= y) & (y <= rects[:, 1] + rects[:, 3]))
        return self.node_ids[int(inside[-1])] if len(inside) else None

    def edge_near(self, scene_pos: QPointF, tolerance: float) -> Optional[int]:
        """The index (into `edges`) of the edge nearest to `scene_pos`, if within `tolerance`."""
        segments = self._data.segments if self._data is not None else np.zeros((0, 4))
        if not len(segments):
            return None
        px, py = scene_pos.x(), scene_pos.y()
        x0, y0, x1, y1 = segments[:, 0], segments[:, 1], segments[:, 2], segments[:, 3]
        dx, dy = x1 - x0, y1 - y0
        length2 = dx * dx + dy * dy
        t = np.clip(((px - x0) * dx + (py - y0) * dy) / np.where(length2 > 0, length2, 1.0), 0.0, 1.0)
        distance2 = (x0 + t * dx - px) ** 2 + (y0 + t * dy - py) ** 2
        nearest = int(np.argmin(distance2))
        if distance2[nearest] > tolerance * tolerance:
            return None
        return int(self._data.segment_edge[nearest])

    def edge_item(self, index: int):
        """The path item that draws edge `index` (with up to EDGE_BATCH - 1 other edges of its width)."""
        return self.edge_items[int(self._data.edge_batch_of[index])]

    def edge_tooltip(self, index: int, listed: int = 6) -> str:
        edge = self.edges[index]
        graph = self.loaded.analysis.graph

        def describe(name: str) -> str:
            value_type = graph.value_type(name)
            if value_type is None:
                return f"{name}\nshape unknown"
            return (f"{name}\n{value_type.dtype} {value_type.shape_text()}"
                    f"  ({human_bytes(value_type.byte_size)})")

        values = getattr(edge, "values", ()) or ()
        if len(values) <= 1:
            return describe(edge.value)
        lines = [f"{len(values)} tensors between these boxes (the widest line is the largest):"]
        lines += [describe(name).replace("\n", ": ") for name in values[:listed]]
        if len(values) > listed:
            lines.append(f"… and {len(values) - listed} more")
        return "\n".join(lines)

    def node_tooltip(self, node_id: str) -> str:
        if node_id in self.groups:
            group, totals = self.groups[node_id], self.group_totals(node_id)
            text = (f"{group.kind} {group.name}: {totals.nodes} nodes (collapsed; double-click to expand)\n"
                    f"MACs {human_count(totals.macs)} · params {human_count(totals.params)} · "
                    f"output {human_bytes(totals.output_bytes)}  (estimated)")
            if totals.time_ms is not None:
                text += f"\ntime {format_ms(totals.time_ms)} over {totals.timed_nodes} nodes  ({totals.time_kind})"
            return text
        if is_io(node_id):
            title, type_text, _ = self._lines[self.node_index[node_id]]
            return f"{title}\n{type_text}"
        node = self.loaded.analysis.graph.node(node_id)
        metrics = self.loaded.analysis.nodes[node_id]
        text = (f"{node.op_type}  {node.name or node.id}\n"
                f"MACs {human_count(metrics.macs)} · params {human_count(metrics.params)} · "
                f"output {human_bytes(metrics.output_bytes)}  (estimated)")
        timing = self.profile.nodes.get(node_id) if self.profile is not None else None
        if timing is not None:
            low, high = ("min", "max") if timing.time.statistic == "mean" else ("p10", "p90")
            text += (f"\ntime {format_ms(timing.time.median_ms)}{' mean' if low == 'min' else ''} "
                     f"({low} {format_ms(timing.time.p10_ms)}, {high} {format_ms(timing.time.p90_ms)})  ({timing.kind})")
        return text

    def find_nodes(self, text: str) -> list[str]:
        """Boxes whose node's name, id or op type contains `text` (case-insensitive), in execution order.

        A node inside a collapsed group is found as its group's box (once); a group is also
        found by its name.
        """
        needle = text.strip().lower()
        if not needle:
            return []
        graph = self.loaded.analysis.graph
        found: dict[str, None] = {}
        for node_id in self.node_ids:
            if is_io(node_id) and needle in node_id.lower():
                found[node_id] = None
            elif node_id in self.groups and needle in self.groups[node_id].name.lower():
                found[node_id] = None
        for node_id in self.loaded.analysis.order:
            node = graph.node(node_id)
            if needle in node.name.lower() or needle in node_id.lower() or needle in node.op_type.lower():
                box = self.box_id(node_id)
                if box is not None:
                    found[box] = None
        order = {node_id: i for i, node_id in enumerate(self.node_ids)}
        return sorted(found, key=order.__getitem__)


_retiring: set = set()  # scenes being torn down; kept alive here until their last slice
_building: set = set()  # scenes being built in slices; kept alive here until done or cancelled


def build_in_slices(scene: GraphScene, done, time_slice: float = 0.02, steps=None, failed=None):
    """Create `scene`'s items a `time_slice` (seconds) per event-loop turn, then call `done()`.

    `steps`: the steps to run instead of `scene.build_steps()` (a generator that colours the
    scene, say).  Returns a function that cancels the build (`done` is then never called).
    A step that raises calls `failed(exception)` (re-raised without one); a scene deleted
    with its window meanwhile just ends the build.  A 20,000-node scene takes ~0.2 s to
    build: in one go that freezes every window of the app, the main one and the compare and
    convert windows alike.  `done` gets an event-loop turn of its own, as the scene's first
    paint usually follows it.
    """
    steps = scene.build_steps() if steps is None else steps
    cancelled = False
    _building.add(scene)
    hold_gc()  # a full collection among the new items' wrappers would stall a turn by 50-150 ms

    def work() -> None:
        if cancelled:
            return
        deadline = time.perf_counter() + time_slice
        try:
            while time.perf_counter() < deadline:
                if next(steps, StopIteration) is StopIteration:
                    QTimer.singleShot(0, finish)
                    return
        except Exception as exc:
            cancel()  # no more slices; the gc hold is released
            if isinstance(exc, RuntimeError) and not shiboken6.isValid(scene):
                return  # the C++ scene was deleted with its window: nothing left to build
            if failed is None:
                raise
            failed(exc)
            return
        QTimer.singleShot(0, work)

    def finish() -> None:
        if cancelled:
            return
        end()
        done()

    def cancel() -> None:
        nonlocal cancelled
        if not cancelled:
            cancelled = True
            end()

    def end() -> None:
        if scene in _building:
            _building.discard(scene)
            release_gc()

    QTimer.singleShot(0, work)
    return cancel


def retire_scene(scene: GraphScene, time_slice: float = 0.015, delay_ms: int = 150) -> None:
    """Delete `scene` (no longer shown) a slice of items per event-loop turn, `time_slice` seconds each.

    Starts after `delay_ms`, so that the first paint of the scene that replaced it (~35 ms
    for 20,000 boxes) has an event-loop turn of its own.  The scene is detached from its
    parent first, so it is ours to delete even if the window that held it closes meanwhile.
    """
    scene.setParent(None)
    steps = scene.teardown_steps()
    _retiring.add(scene)

    def work() -> None:
        deadline = time.perf_counter() + time_slice
        try:
            for _ in steps:
                if time.perf_counter() > deadline:
                    QTimer.singleShot(0, work)
                    return
        except RuntimeError:  # the C++ scene is already gone (application shutdown)
            pass
        _retiring.discard(scene)
        scene.deleteLater()

    QTimer.singleShot(delay_ms, work)


def retiring_scenes() -> int:
    """How many scenes are still being torn down (tests and benchmarks wait for zero)."""
    return len(_retiring)


class LegendWidget(QWidget):
    """A compact, semi-transparent legend in the view's bottom-left corner.

    Shows the op categories (two columns), an overlay gradient with its range and
    kind, the compute units of a profile, or the diverging ratio scale of a
    comparison.  It never takes mouse events, so nodes under it stay clickable.
    """

    ROW = 15
    WIDTH = 290  # the longest title with its kind ("Intensity (low: memory-bound)  (estimated)") unelided

    def __init__(self, parent: QWidget):
        super().__init__(parent)
        self.setAttribute(Qt.WidgetAttribute.WA_TransparentForMouseEvents)
        self.title = "Op category"
        self.range_text: tuple[str, str] = ("", "")
        self.categories: list[str] = []
        self.swatches: list[tuple[QColor, str]] = []  # categorical rows (op categories or compute units)
        self.gradient = False
        self.diverging = False
        self.low_is_hot = False  # the gradient runs the other way (low values drawn hot)
        self.kind = ""
        self.top_count = 10
        self.top_label = ""  # what the outlined boxes are, when not "top N" (gui.numerics_view)
        self.font_ = QFont()
        self.font_.setPixelSize(11)

    def show_categories(self, categories: Sequence[str]) -> None:
        self.gradient = self.diverging = False
        self.title, self.categories, self.kind = "Op category", list(categories), ""
        self.swatches = [(QColor(CATEGORY_COLORS[c]), "collapsed group" if c == "group" else c)
                         for c in categories]
        self._resize()

    def show_units(self, units: Sequence[str], kind: str) -> None:
        self.gradient = self.diverging = False
        self.title, self.kind = "Compute unit", kind
        self.categories = list(units)
        self.swatches = [(unit_color(u), u) for u in units] + [(QColor(UNKNOWN_COLOR), "not reported")]
        self._resize()

    def show_gradient(self, title: str, low: str, high: str, kind: str = "estimated", top_count: int = 10,
                      low_is_hot: bool = False) -> None:
        self.gradient, self.diverging, self.top_label, self.low_is_hot = True, False, "", low_is_hot
        self.title, self.range_text, self.kind, self.top_count = title, (low, high), kind, top_count
        self._resize()

    def show_diverging(self, title: str, kind: str, limit: float = RATIO_LIMIT) -> None:
        self.gradient, self.diverging = True, True
        self.title, self.kind = title, kind
        self.range_text = (f"≤1/{limit:g}× faster", f"≥{limit:g}× slower")
        self._resize()

    def _resize(self) -> None:
        if self.gradient:
            rows = 4
        else:
            rows = 1 + (len(self.swatches) + 1) // 2
        self.resize(QSize(self.WIDTH, 8 + rows * self.ROW + (6 if self.gradient else 0)))
        self.update()

    def paintEvent(self, event) -> None:
        painter = QPainter(self)
        painter.setRenderHint(QPainter.RenderHint.Antialiasing)
        painter.setPen(QColor(150, 150, 150, 160))
        painter.setBrush(QColor(255, 255, 255, 190))  # semi-transparent: the graph shows through
        painter.drawRoundedRect(QRectF(self.rect()).adjusted(0.5, 0.5, -0.5, -0.5), 4, 4)
        font = QFont(self.font_)
        font.setBold(True)
        painter.setFont(font)
        painter.setPen(QColor("#111111"))
        row, left, inner = self.ROW, 6, self.width() - 12
        title = self.title + (f"  ({self.kind})" if self.kind else "")
        title = QFontMetrics(font).elidedText(title, Qt.TextElideMode.ElideRight, inner)
        painter.drawText(QRectF(left, 3, inner, row), Qt.AlignmentFlag.AlignVCenter, title)
        painter.setFont(self.font_)
        if self.gradient:
            bar = QRectF(left, 4 + row, inner, 10)
            gradient = QLinearGradient(bar.topLeft(), bar.topRight())
            for t, color in (DIVERGING_STOPS if self.diverging else GRADIENT_STOPS):
                gradient.setColorAt(1 - t if self.low_is_hot and not self.diverging else t, color)
            painter.setBrush(QBrush(gradient))
            painter.setPen(QColor("#777777"))
            painter.drawRect(bar)
            painter.setPen(QColor("#111111"))
            low, high = self.range_text
            y = 16 + row
            painter.drawText(QRectF(left, y, inner, row), Qt.AlignmentFlag.AlignLeft, low)
            if self.diverging:
                painter.drawText(QRectF(left, y, inner, row), Qt.AlignmentFlag.AlignHCenter, "1×")
            painter.drawText(QRectF(left, y, inner, row), Qt.AlignmentFlag.AlignRight, high)
            y += row + 2
            if self.diverging:
                items = ((QPen(QColor("#777777")), UNKNOWN_COLOR, "in one profile only"),)
            else:
                items = ((QPen(QColor("#777777")), ZERO_COLOR, "zero"),
                         (QPen(QColor("#777777")), UNKNOWN_COLOR, "unknown"),
                         (QPen(TOP_PEN_COLOR, 2.5), QColor("#ffffff"),
                          self.top_label or f"{'lowest' if self.low_is_hot else 'top'} {self.top_count}"))
            x = left
            metrics = QFontMetrics(self.font_)
            for pen, color, text in items:
                painter.setPen(pen)
                painter.setBrush(color)
                painter.drawRect(QRectF(x + 1, y + 2, 10, 10))
                painter.setPen(QColor("#111111"))
                painter.drawText(QRectF(x + 15, y, inner, row), Qt.AlignmentFlag.AlignVCenter, text)
                x += 15 + metrics.horizontalAdvance(text) + 10
            return
        column = inner / 2
        metrics = QFontMetrics(self.font_)
        for index, (color, text) in enumerate(self.swatches):
            x = left + (index % 2) * column
            y = 4 + row * (1 + index // 2)
            painter.setBrush(color)
            painter.setPen(QColor("#777777"))
            painter.drawRect(QRectF(x + 1, y + 2, 10, 10))
            painter.setPen(QColor("#111111"))
            text = metrics.elidedText(text, Qt.TextElideMode.ElideRight, int(column - 18))
            painter.drawText(QRectF(x + 15, y, column - 15, row), Qt.AlignmentFlag.AlignVCenter, text)


class Minimap(QWidget):
    """An overview of the whole graph in the view's top-right corner, with the visible part outlined.

    The graph is drawn once into a thumbnail (QGraphicsScene.render; ~30 ms for 20,000 boxes),
    again only when the scene or its colours change (`refresh`, debounced), never while the
    person pans: each pan only repaints the thumbnail and the outline.  A click or a drag
    centres the main view on that point.
    """

    MAX_WIDTH, MAX_HEIGHT, MIN_WIDTH = 180, 220, 64
    RENDER_ITEMS_MAX = 3000  # more boxes: drawn as pixels with numpy, edges left out

    def __init__(self, view: "GraphView"):
        super().__init__(view)
        self.view = view
        self.thumbnail: Optional[QImage] = None
        self.source = QRectF()  # the scene rectangle the thumbnail shows
        # 60 ms: after the new scene's first paint, before the old scene's teardown (150 ms)
        self._refresh_timer = QTimer(self, singleShot=True, interval=60)
        self._refresh_timer.timeout.connect(self.render_thumbnail)
        self.setCursor(Qt.CursorShape.PointingHandCursor)
        self.setToolTip("Overview: click or drag to move the view")

    # --- the thumbnail --------------------------------------------------------------------
    def refresh(self) -> None:
        """Render the thumbnail again soon (scene replaced or recoloured); repeated calls coalesce."""
        self._refresh_timer.start()

    def render_thumbnail(self) -> None:
        scene = self.view.graph_scene
        if scene is None or not scene.complete:
            self.thumbnail = None
            self.hide()
            return
        self.source = scene.sceneRect()
        scale = min(self.MAX_WIDTH / max(self.source.width(), 1.0), self.MAX_HEIGHT / max(self.source.height(), 1.0))
        width = max(self.MIN_WIDTH, int(round(self.source.width() * scale)))
        height = max(24, int(round(self.source.height() * scale)))
        image = QImage(width, height, QImage.Format.Format_ARGB32_Premultiplied)
        image.fill(QColor(250, 250, 250, 235))
        painter = QPainter(image)
        painter.setRenderHint(QPainter.RenderHint.Antialiasing)
        # A tall, narrow graph is stretched sideways to the minimum width: an overview to steer by,
        # not a drawing to scale (the outline of the visible part is stretched the same way).
        if len(scene.node_items) <= self.RENDER_ITEMS_MAX:
            scene.render(painter, QRectF(0, 0, width, height), self.source, Qt.AspectRatioMode.IgnoreAspectRatio)
        painter.end()
        if len(scene.node_items) > self.RENDER_ITEMS_MAX:
            image = self._raster(scene, image)
        self.thumbnail = image
        self.resize(width + 2, height + 2)
        self.view.place_overlays()
        self.follow_view()

    def follow_view(self) -> None:
        """Move the outline with the view; shown only when enabled and part of the graph is out of view."""
        scene = self.view.graph_scene
        wanted = self.view.minimap_enabled and self.thumbnail is not None and scene is not None
        if wanted:
            visible = self.view.mapToScene(self.view.viewport().rect()).boundingRect()
            items = scene.itemsBoundingRect() if len(scene.node_items) < 200 else scene.sceneRect()
            wanted = not visible.contains(items)  # a graph seen whole needs no overview
        if wanted != self.isVisible():
            self.setVisible(wanted)
        if wanted:
            self.view.place_minimap()  # the view moved: keep the selected box in sight
            self.update()

    def _raster(self, scene: "GraphScene", background: QImage) -> QImage:
        """Boxes as coloured pixels, with numpy: QGraphicsScene.render of 20,000 items took 130 ms."""
        width, height = background.width(), background.height()
        pixels = np.frombuffer(background.constBits(), dtype=np.uint32).reshape(height, background.bytesPerLine() // 4)
        pixels = pixels[:, :width].copy()
        rgba: dict[int, int] = {}  # a few hundred distinct brushes are shared by all the boxes

        def colour(brush: QBrush) -> int:
            value = rgba.get(id(brush))
            if value is None:
                value = rgba[id(brush)] = brush.color().rgba()
            return value

        colours = np.fromiter((colour(b) for b in scene.box_brushes), dtype=np.uint32,
                              count=len(scene.box_brushes))
        rects = scene.rects[: len(colours)]
        sx, sy = width / self.source.width(), height / self.source.height()
        x0 = np.clip(((rects[:, 0] - self.source.left()) * sx).astype(int), 0, width - 1)
        x1 = np.clip(((rects[:, 0] + rects[:, 2] - self.source.left()) * sx).astype(int), 0, width - 1)
        y0 = np.clip(((rects[:, 1] - self.source.top()) * sy).astype(int), 0, height - 1)
        y1 = np.clip(((rects[:, 1] + rects[:, 3] - self.source.top()) * sy).astype(int), 0, height - 1)
        for dy in range(min(4, int((y1 - y0).max()) + 1)):  # each box: its few pixels (at most 4 x 12)
            rows = np.minimum(y0 + dy, y1)
            for dx in range(min(12, int((x1 - x0).max()) + 1)):
                pixels[rows, np.minimum(x0 + dx, x1)] = colours
        image = QImage(pixels.tobytes(), width, height, width * 4, QImage.Format.Format_ARGB32_Premultiplied)
        return image.copy()  # owns its pixels

    # --- geometry: scene <-> minimap -----------------------------------------------------------
    def _target(self) -> QRectF:
        """Where the scene rectangle lands in this widget: the whole thumbnail, inside a 1-pixel frame."""
        if self.thumbnail is None or self.source.isEmpty():
            return QRectF(0, 0, 1, 1)
        return QRectF(1, 1, self.thumbnail.width(), self.thumbnail.height())

    def scene_to_map(self, point: QPointF) -> QPointF:
        target = self._target()
        return QPointF(target.left() + (point.x() - self.source.left()) / self.source.width() * target.width(),
                       target.top() + (point.y() - self.source.top()) / self.source.height() * target.height())

    def map_to_scene(self, point: QPointF) -> QPointF:
        target = self._target()
        return QPointF(self.source.left() + (point.x() - target.left()) / target.width() * self.source.width(),
                       self.source.top() + (point.y() - target.top()) / target.height() * self.source.height())

    def visible_rect(self) -> QRectF:
        """The main view's visible scene rectangle, in this widget's coordinates."""
        visible = self.view.mapToScene(self.view.viewport().rect()).boundingRect()
        return QRectF(self.scene_to_map(visible.topLeft()), self.scene_to_map(visible.bottomRight()))

    # --- painting and input ------------------------------------------------------------
    def paintEvent(self, event) -> None:
        painter = QPainter(self)
        painter.setPen(QColor(150, 150, 150, 200))
        painter.setBrush(QColor(255, 255, 255, 200))
        painter.drawRect(QRectF(self.rect()).adjusted(0.5, 0.5, -0.5, -0.5))
        if self.thumbnail is None:
            return
        painter.drawImage(1, 1, self.thumbnail)
        marker = self.visible_rect().intersected(QRectF(self.rect()))
        if marker.height() < 3:  # a very tall graph: keep the marker visible
            marker.adjust(0, -(3 - marker.height()) / 2, 0, (3 - marker.height()) / 2)
        if marker.width() < 3:
            marker.adjust(-(3 - marker.width()) / 2, 0, (3 - marker.width()) / 2, 0)
        painter.setPen(QPen(QColor("#1f3fbf"), 1.5))
        painter.setBrush(QColor(31, 63, 191, 40))
        painter.drawRect(marker)

    def _move_view(self, event) -> None:
        if self.thumbnail is not None:
            self.view.centerOn(self.map_to_scene(event.position()))
        event.accept()

    def mousePressEvent(self, event) -> None:
        if event.button() == Qt.MouseButton.LeftButton:
            self._move_view(event)

    def mouseMoveEvent(self, event) -> None:
        if event.buttons() & Qt.MouseButton.LeftButton:
            self._move_view(event)

    def wheelEvent(self, event) -> None:
        event.ignore()  # the wheel zooms the main view, not the overview


class GraphView(QGraphicsView):
    """Zoom (wheel, keys), pan (drag the background), fit, selection signal, tooltips, legend."""

    nodeSelected = Signal(str)  # node id, "" when nothing is selected
    zoomChanged = Signal(float)
    groupToggled = Signal(str, bool)  # group id, True: collapse it / False: expand it
    allGroupsToggled = Signal(bool)  # True: collapse every group / False: expand every group

    ZOOM_STEP = 1.2
    FIT_MIN_SCALE = LABEL_MIN_SCALE  # below it labels are not drawn: Fit stops there
    MIN_SCALE, MAX_SCALE = 0.002, 8.0

    def __init__(self, parent=None):
        super().__init__(parent)
        self.setRenderHints(QPainter.RenderHint.Antialiasing | QPainter.RenderHint.TextAntialiasing)
        self.setDragMode(QGraphicsView.DragMode.ScrollHandDrag)
        self.setTransformationAnchor(QGraphicsView.ViewportAnchor.AnchorUnderMouse)
        self.setResizeAnchor(QGraphicsView.ViewportAnchor.AnchorViewCenter)
        # Full: an overlay changes the brush of every box; with minimal updates Qt merges one dirty
        # rectangle per box first (20,000 boxes: recolour 45 -> 30 ms and the repaint 20 -> 10 ms
        # with full updates, measured), and a full-viewport repaint is cheap (benchmark: redraw).
        self.setViewportUpdateMode(QGraphicsView.ViewportUpdateMode.FullViewportUpdate)
        self.setOptimizationFlag(QGraphicsView.OptimizationFlag.DontSavePainterState, True)
        self.setBackgroundBrush(QColor("#fafafa"))
        self.setMouseTracking(True)
        self.legend = LegendWidget(self)
        self.legend.hide()
        self.graph_scene: Optional[GraphScene] = None
        self.minimap_enabled = True
        self.minimap = Minimap(self)
        self.minimap.hide()
        # What the empty area says (set_empty_hint): shown while there is no graph.
        self.empty_hint = QLabel(self.viewport())
        self.empty_hint.setAlignment(Qt.AlignmentFlag.AlignCenter)
        self.empty_hint.setWordWrap(True)
        self.empty_hint.setStyleSheet("color: #666666; font-size: 15px;")
        self.empty_hint.hide()
        self.horizontalScrollBar().valueChanged.connect(self.minimap.follow_view)
        self.verticalScrollBar().valueChanged.connect(self.minimap.follow_view)
        self.zoomChanged.connect(lambda _scale: self.minimap.follow_view())

    def set_minimap_enabled(self, enabled: bool) -> None:
        """Show or hide the overview in the top-right corner (View > Minimap)."""
        self.minimap_enabled = enabled
        self.minimap.follow_view()
        if enabled:
            self.minimap.refresh()

    def set_graph_scene(self, scene: Optional[GraphScene]) -> None:
        old = self.graph_scene
        self.graph_scene = scene
        self.setScene(scene)
        self.empty_hint.setVisible(scene is None and bool(self.empty_hint.text()))
        if scene is not None:
            scene.selectionChanged.connect(self._on_selection_changed)
            present = set(scene.categories)
            self.legend.show_categories([c for c in CATEGORY_COLORS if c in present and c != "io"])
            self.legend.show()
            self._place_legend()
        else:
            self.legend.hide()
        self.minimap.refresh()
        if old is not None:
            retire_scene(old)

    # --- selection ------------------------------------------------------------------------
    def _on_selection_changed(self) -> None:
        scene = self.graph_scene
        if scene is None:
            return
        try:
            selected = scene.selectedItems()
        except RuntimeError:  # the scene is being deleted
            return
        node_id = selected[0].data(0) if selected else ""
        self.nodeSelected.emit(node_id if isinstance(node_id, str) else "")
        self.place_minimap()

    def select_node(self, node_id: str, center: bool = True) -> None:
        """Select (and centre on) the box of `node_id`: its own, or its collapsed group's."""
        scene = self.graph_scene
        if scene is None:
            return
        node_id = scene.box_id(node_id) if node_id else None
        if node_id is None:
            return
        item = scene.item_for(node_id)
        scene.blockSignals(True)
        scene.clearSelection()
        scene.blockSignals(False)
        item.setSelected(True)
        if center:
            if self.current_scale() < 0.6:
                self.set_scale(0.8)
            self.centerOn(item)
            self.place_minimap()

    def add_to_selection(self, node_ids) -> None:
        """Select the boxes of `node_ids` too (a hint's other layers); the inspector keeps the first."""
        scene = self.graph_scene
        if scene is None:
            return
        scene.blockSignals(True)  # the inspector stays on the node selected first
        for node_id in node_ids:
            box = scene.box_id(node_id)
            if box is not None:
                scene.item_for(box).setSelected(True)
        scene.blockSignals(False)
        scene._mark_selection()

    def center_on_node(self, node_id: str) -> None:
        """Centre the view on the box of `node_id` (its own or its collapsed group's), zoom unchanged."""
        scene = self.graph_scene
        box = scene.box_id(node_id) if scene is not None else None
        if box is not None:
            x, y, w, h = scene.rects[scene.node_index[box]].tolist()
            self.centerOn(QPointF(x + w / 2, y + h / 2))
            self.place_minimap()  # even when the view could not scroll it to the centre

    # --- zoom -----------------------------------------------------------------------------
    def current_scale(self) -> float:
        return self.transform().m11()

    def set_scale(self, scale: float) -> None:
        scale = min(self.MAX_SCALE, max(self.MIN_SCALE, scale))
        center = self.mapToScene(self.viewport().rect().center())
        self.setTransform(QTransform.fromScale(scale, scale))
        self.centerOn(center)
        self.zoomChanged.emit(scale)

    def zoom_by(self, factor: float) -> None:
        scale = self.current_scale()
        target = min(self.MAX_SCALE, max(self.MIN_SCALE, scale * factor))
        self.scale(target / scale, target / scale)
        self.zoomChanged.emit(target)

    def zoom_step(self, zoom_in: bool) -> float:
        """The factor of one Zoom in / Zoom out step: 1.2, but below the readable scale (FIT_MIN_SCALE)
        zooming in lands on it when it is within 8x, else goes half-way there (log scale): from the 1 %
        of a whole tall graph, two steps; zooming out halves."""
        scale = self.current_scale()
        if not zoom_in:
            return 0.5 if scale <= self.FIT_MIN_SCALE else 1 / self.ZOOM_STEP
        missing = self.FIT_MIN_SCALE / scale
        if missing <= 1:
            return self.ZOOM_STEP
        return max(self.ZOOM_STEP, missing if missing <= 8 else missing ** 0.5)

    def zoom_in(self) -> None:
        anchor = self.transformationAnchor()
        self.setTransformationAnchor(QGraphicsView.ViewportAnchor.AnchorViewCenter)
        self.zoom_by(self.zoom_step(True))
        self.setTransformationAnchor(anchor)

    def zoom_out(self) -> None:
        anchor = self.transformationAnchor()
        self.setTransformationAnchor(QGraphicsView.ViewportAnchor.AnchorViewCenter)
        self.zoom_by(self.zoom_step(False))
        self.setTransformationAnchor(anchor)

    def fit(self) -> None:
        """The whole graph when it is readable so; a tall (or wide) one at its full width, never
        below FIT_MIN_SCALE, from its top (the minimap shows the whole)."""
        scene = self.graph_scene
        if scene is None:
            return
        rect, view = scene.sceneRect(), self.viewport().rect()
        width, height = max(1.0, rect.width()), max(1.0, rect.height())
        if min(view.width() / width, view.height() / height) >= self.FIT_MIN_SCALE:
            self.fitInView(rect, Qt.AspectRatioMode.KeepAspectRatio)
        else:
            scale = min(1.0, max(self.FIT_MIN_SCALE, (view.width() - 8) / width))
            self.setTransform(QTransform.fromScale(scale, scale))
            shown_width, shown_height = view.width() / scale, view.height() / scale
            x = rect.center().x() if shown_width >= width else rect.left() + shown_width / 2
            self.centerOn(QPointF(x, rect.top() + shown_height / 2))
        self.zoomChanged.emit(self.current_scale())

    def show_start(self) -> None:
        """The first view of a model: all of it when it is readable so, else the top at a readable zoom."""
        scene = self.graph_scene
        if scene is None:
            return
        self.fit()
        if self.current_scale() > 1.0:  # a small graph (or a grouped overview): no larger than life
            self.set_scale(1.0)
            self.centerOn(scene.sceneRect().center())
        if self.current_scale() < 0.55:
            self.setTransform(QTransform.fromScale(0.75, 0.75))
            rect = scene.sceneRect()
            visible_height = self.viewport().height() / 0.75
            # Centre horizontally on the first nodes (the inputs), vertically on the top of the graph.
            first = scene.rects[: min(5, len(scene.rects))]
            x = float((first[:, 0] + first[:, 2] / 2).mean()) if len(first) else rect.center().x()
            self.centerOn(QPointF(x, rect.top() + visible_height / 2))
            self.zoomChanged.emit(0.75)

    # --- collapsible groups: double-click and context menu -------------------------------------
    def mouseDoubleClickEvent(self, event) -> None:
        """On a collapsed group: expand it.  On a node inside a group: collapse the innermost one."""
        scene = self.graph_scene
        node_id = scene.node_at(self.mapToScene(event.position().toPoint())) if scene is not None else None
        if node_id is not None and is_group(node_id):
            self.groupToggled.emit(node_id, False)
            event.accept()
            return
        enclosing = scene.enclosing_groups(node_id) if node_id is not None else []
        if enclosing:
            self.groupToggled.emit(enclosing[0], True)
            event.accept()
            return
        super().mouseDoubleClickEvent(event)

    def group_menu(self, node_id: Optional[str]) -> QMenu:
        """The context menu for the box `node_id` (None: the background): expand / collapse groups."""
        menu = QMenu(self)
        scene = self.graph_scene
        if scene is not None and scene.groups:
            if node_id is not None and is_group(node_id):
                group = scene.groups[node_id]
                menu.addAction(f"Expand {group.kind} “{group.name}”",
                               lambda g=node_id: self.groupToggled.emit(g, False))
            for group_id in (scene.enclosing_groups(node_id) if node_id is not None else [])[:4]:
                group = scene.groups[group_id]
                menu.addAction(f"Collapse {group.kind} “{group.name}”",
                               lambda g=group_id: self.groupToggled.emit(g, True))
            if not menu.isEmpty():
                menu.addSeparator()
            menu.addAction("Expand all groups", lambda: self.allGroupsToggled.emit(False))
            menu.addAction("Collapse all groups", lambda: self.allGroupsToggled.emit(True))
        return menu

    def contextMenuEvent(self, event) -> None:
        scene = self.graph_scene
        if scene is None or not scene.groups:
            return super().contextMenuEvent(event)
        menu = self.group_menu(scene.node_at(self.mapToScene(event.pos())))
        menu.exec(event.globalPos())
        event.accept()

    def wheelEvent(self, event) -> None:
        delta = event.angleDelta().y()
        if delta == 0:
            return super().wheelEvent(event)
        self.zoom_by(self.ZOOM_STEP ** (delta / 120.0))
        event.accept()

    ARROW_STEPS = {Qt.Key.Key_Up: "up", Qt.Key.Key_Down: "down", Qt.Key.Key_Left: "left", Qt.Key.Key_Right: "right"}

    def keyPressEvent(self, event) -> None:
        if event.key() in (Qt.Key.Key_Plus, Qt.Key.Key_Equal):
            self.zoom_in()
        elif event.key() == Qt.Key.Key_Minus:
            self.zoom_out()
        elif event.key() in self.ARROW_STEPS and self.graph_scene is not None \
                and event.modifiers() == Qt.KeyboardModifier.NoModifier:
            self.step_selection(self.ARROW_STEPS[event.key()])
        else:
            super().keyPressEvent(event)

    def step_selection(self, direction: str) -> Optional[str]:
        """Move the selection along the graph (arrow keys): "up" to a producer of the selected box,
        "down" to a consumer (of several: the one nearest sideways), "left"/"right" to the next box
        of the same row.  Nothing selected: the first box.  Returns the box now selected."""
        scene = self.graph_scene
        selected = [item.data(0) for item in scene.selectedItems()]
        current = selected[0] if selected and selected[0] in scene.node_index else None
        if current is None:
            target = scene.node_ids[0] if scene.node_ids else None
        else:
            x, y, w, h = scene.rects[scene.node_index[current]].tolist()
            if direction in ("up", "down"):
                ends = [e.source for e in scene.edges if e.target == current] if direction == "up" \
                    else [e.target for e in scene.edges if e.source == current]
                candidates = [n for n in dict.fromkeys(ends) if n in scene.node_index]
            else:
                rects = scene.rects
                same_row = (rects[:, 1] < y + h) & (rects[:, 1] + rects[:, 3] > y)
                beyond = rects[:, 0] > x if direction == "right" else rects[:, 0] < x
                candidates = [scene.node_ids[i] for i in np.flatnonzero(same_row & beyond)]
            centre = x + w / 2

            def sideways(node_id: str) -> float:
                bx, _, bw, _ = scene.rects[scene.node_index[node_id]].tolist()
                return abs(bx + bw / 2 - centre)

            target = min(candidates, key=sideways, default=None)
        if target is None:
            return current
        self.select_node(target, center=False)
        self.ensureVisible(scene.item_for(target), 40, 40)
        return target

    # --- tooltips and legend --------------------------------------------------------------
    def viewportEvent(self, event) -> bool:
        if event.type() == QEvent.Type.ToolTip and self.graph_scene is not None:
            scene_pos = self.mapToScene(event.pos())
            node_id = self.graph_scene.node_at(scene_pos)
            if node_id is not None:
                text = self.graph_scene.node_tooltip(node_id)
            else:
                index = self.graph_scene.edge_near(scene_pos, 5.0 / max(self.current_scale(), 1e-6))
                text = self.graph_scene.edge_tooltip(index) if index is not None else ""
            if text:
                QToolTip.showText(event.globalPos(), text, self.viewport())
            else:
                QToolTip.hideText()
            return True
        return super().viewportEvent(event)

    def resizeEvent(self, event) -> None:
        super().resizeEvent(event)
        self.place_overlays()

    def set_empty_hint(self, text: str) -> None:
        """What the area says while it shows no graph (the main window: how to open a model)."""
        self.empty_hint.setText(text)
        self.empty_hint.setVisible(self.graph_scene is None and bool(text))
        self.place_overlays()

    def place_overlays(self) -> None:
        """The legend in the bottom-left corner, the minimap in the top-right one (or another, see
        `place_minimap`); the empty hint fills the middle."""
        self._place_legend()
        self.place_minimap()
        self.empty_hint.setGeometry(self.viewport().rect().adjusted(24, 24, -24, -24))

    def place_minimap(self) -> None:
        """Top-right, unless it would cover a selected or linked box: then the first other corner
        (top-left, bottom-right) that leaves them in sight.  The legend keeps the bottom-left."""
        viewport = self.viewport().geometry()
        size = self.minimap.size()
        right = max(0, viewport.right() - size.width() - 8)
        bottom = max(0, viewport.bottom() - size.height() - 8)
        corners = [QPoint(right, viewport.top() + 8), QPoint(viewport.left() + 8, viewport.top() + 8),
                   QPoint(right, bottom)]
        boxes = self._highlighted_boxes()
        for corner in corners:
            if not any(QRect(corner, size).intersects(box) for box in boxes):
                break
        else:
            corner = corners[0]  # covered wherever it goes: the usual place
        if corner != self.minimap.pos():
            self.minimap.move(corner)

    def _highlighted_boxes(self) -> list[QRect]:
        """The selected and linked boxes (a few), in this widget's coordinates."""
        scene = self.graph_scene
        if scene is None:
            return []
        try:
            node_ids = [item.data(0) for item in scene.selectedItems()[:8]] + scene.linked_node_ids[:8]
        except RuntimeError:  # the scene is being deleted
            return []
        offset = self.viewport().geometry().topLeft()
        return [self.mapFromScene(scene.item_for(n).sceneBoundingRect()).boundingRect().translated(offset)
                for n in node_ids if isinstance(n, str) and n in scene.node_index]

    def _place_legend(self) -> None:
        # Bottom-left: the layout starts at the top (inputs) and is centred, so the lower-left
        # corner is where boxes are least likely to be.
        viewport = self.viewport().geometry()
        self.legend.move(viewport.left() + 8, max(0, viewport.bottom() - self.legend.height() - 8))

    def update_legend(self) -> None:
        scene = self.graph_scene
        if scene is None:
            return
        key = scene.overlay_key
        spec = OVERLAYS.get(key)
        if key in ("ratio", "numerics"):
            return  # the compare view and gui.numerics_view set their own legend
        if spec is None:
            present = set(scene.categories)
            self.legend.show_categories([c for c in CATEGORY_COLORS if c in present and c != "io"])
        elif spec.formatter == "category":
            self.legend.show_units(scene.overlay_units, scene.overlay_kind or "no profile")
        else:
            low, high = scene.overlay_range or (0.0, 0.0)
            title = spec.title
            if spec.needs_profile and scene.profile is None:
                title += ": no profile"
            self.legend.show_gradient(title, format_value(low, spec.formatter, spec.unit),
                                      format_value(high, spec.formatter, spec.unit),
                                      scene.overlay_kind or "no profile", low_is_hot=spec.low_is_hot)
        self._place_legend()
        self.minimap.refresh()  # the colours changed
