"""Drawing the graph: node boxes and edges of an analysed model as scene items, overlays, search.

Geometry comes from `engine.layout` (computed in a worker thread); this module
only turns it into scene items and recolours them.

Speed (see benchmarks/bench_gui_open.py): the scene holds one
`QGraphicsRectItem` per node (in a big scene, children of a parent item per few
hundred boxes, so a paint skips those out of view) and one `QGraphicsPathItem`
per EDGE_BATCH edges of one width, all painted by Qt in C++; the paths, label
text and colours are prepared by the worker that opens the model
(`prepare_scene_data`), so the UI thread only creates items, a slice per
event-loop turn, and an old scene is deleted the same way (`retire_scene`). A
batch of edges reaching far beyond the view (lanes running the length of a big
model) is a `LongEdgeBatch`, painted clipped to what is shown. Text is the
expensive part of a scene (a `QGraphicsSimpleTextItem` costs ~20 us to create,
0.4 s for 20,000 nodes), so all labels are painted by one `LabelLayer` item
that draws only the labels of the boxes in the exposed rectangle, found with
numpy, and none when zoomed out too far to read them. Overlays change brushes
and pens of the existing items; they never add or remove items.
"""
from __future__ import annotations

import math
import struct
import time
from itertools import chain
from operator import attrgetter
from dataclasses import dataclass, field
from typing import Mapping, Optional, Sequence

import numpy as np
import shiboken6
from PySide6.QtCore import QByteArray, QDataStream, QIODevice, QLineF, QPointF, QRectF, Qt, QTimer
from PySide6.QtGui import (QBrush, QColor, QFont, QFontMetrics, QGlyphRun, QPainter, QPaintEngine, QPainterPath,
                           QPen, QPolygonF, QTextLayout)
from PySide6.QtWidgets import (QGraphicsItem, QGraphicsPathItem, QGraphicsRectItem, QGraphicsScene,
                               QStyleOptionGraphicsItem)

from engine.inspect import human_bytes, human_count
from engine.layout import GROUP_PREFIX, INPUT_PREFIX, OUTPUT_PREFIX, op_category
from engine.profile import KINDS
from gui.graph_groups import FrameLayer, GroupSceneMixin, frame_title, group_lines, prime_group_totals
from gui.graph_style import (BOX_PEN, CATEGORY_COLORS, EDGE_COLOR, EDGE_MAX_WIDTH, EDGE_MIN_WIDTH,
                             EDGE_WIDTH_STEPS, GROUP_PEN_COLOR, LABEL_MAX_COUNT, labels_drawn_at,
                             LINK_PEN_COLOR, OVERLAYS, RATIO_LIMIT, TEXT_FONT_PIXELS, TITLE_FONT_PIXELS,
                             TOP_PEN_COLOR, UNKNOWN_COLOR, text_drawn_at,
                             ZERO_COLOR, _type_text, diverging_color, format_ms, gradient_color, is_group,
                             is_io, node_transfers, unit_color)
from gui.responsive import hold_gc, release_gc


class LabelLayer(QGraphicsItem):
    """Paints the text of every visible box in one paint() call (see the module docstring).

    Each line's text is elided once and laid out once, then drawn as glyph runs at any zoom
    (`_glyph_runs`; a few layouts per paint).  Lines too small to read at the zoom are not drawn
    (`gui.graph_style.text_drawn_at`)."""

    # Laid-out titles and texts kept (~2.5 KB for a box's name and shape lines, measured): a pan
    # across a 20,000-box model would keep them all; beyond this (~20 MB) the cache starts again.
    LAID_OUT_LIMIT = 3 * LABEL_MAX_COUNT
    LAYOUTS_PER_PAINT = 64  # titles or texts laid out by one paint (see paint): ~10 us each

    def __init__(self, rects: np.ndarray, lines: Sequence[tuple[str, str, str]], arrow_tips: np.ndarray):
        super().__init__()
        self._rects = rects  # (n, 4): x, y, w, h
        # Arrow heads are drawn here too, only where visible: one path of 24,000 arrows
        # costs ~40 ms per repaint even when ten of them are on screen.
        self._tips = arrow_tips  # (m, 2): end point of each edge
        self._right = rects[:, 0] + rects[:, 2]
        self._bottom = rects[:, 1] + rects[:, 3]
        # A graph input's/output's box is the short one: its two lines in the text font, no title.
        self._io_box = (rects[:, 3] < 40).tolist()
        self._lines = lines
        self._elided: dict[int, tuple[str, ...]] = {}
        self._headings: dict[int, list[QGlyphRun]] = {}  # laid-out titles (see _heading_runs)
        self._texts: dict[int, list[list[QGlyphRun]]] = {}  # laid-out other lines (see _text_runs)
        if len(rects):
            self._bounds = QRectF(float(rects[:, 0].min()), float(rects[:, 1].min()),
                                  float(self._right.max() - rects[:, 0].min()),
                                  float(self._bottom.max() - rects[:, 1].min()))
        else:
            self._bounds = QRectF()
        self.title_font = QFont()
        self.title_font.setPixelSize(TITLE_FONT_PIXELS)
        self.title_font.setBold(True)
        self.text_font = QFont()
        self.text_font.setPixelSize(TEXT_FONT_PIXELS)
        self._title_metrics = QFontMetrics(self.title_font)
        self._text_metrics = QFontMetrics(self.text_font)
        self._line_height = self._text_metrics.height()
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
            title_metrics = self._text_metrics if self._io_box[index] else self._title_metrics
            cached = (title_metrics.elidedText(title, Qt.TextElideMode.ElideRight, width),
                      self._text_metrics.elidedText(name, Qt.TextElideMode.ElideMiddle, width),
                      *(self._text_metrics.elidedText(d, Qt.TextElideMode.ElideRight, width) for d in details))
            self._elided[index] = cached
        return cached

    def _heading_runs(self, index: int) -> list[QGlyphRun]:
        """Box `index`'s title laid out in the title font (not used for a graph input's/output's box)."""
        cached = self._headings.get(index)
        if cached is None:
            self._limit_laid_out()
            cached = self._headings[index] = _glyph_runs(self._elide(index)[0], self.title_font)
        return cached

    def _text_runs(self, index: int) -> list[list[QGlyphRun]]:
        """Box `index`'s lines in the text font laid out: a graph input's/output's two lines, another
        box's lines after its title."""
        cached = self._texts.get(index)
        if cached is None:
            self._limit_laid_out()
            lines = self._elide(index)
            lines = lines[:2] if self._io_box[index] else lines[1:]
            cached = self._texts[index] = [_glyph_runs(line, self.text_font) for line in lines]
        return cached

    def _limit_laid_out(self) -> None:
        if len(self._headings) + len(self._texts) >= self.LAID_OUT_LIMIT:
            self._headings.clear()
            self._texts.clear()

    def _placed_lines(self, visible: np.ndarray, titles: bool, texts: bool):
        """Where a paint draws each line of the boxes `visible`: (box index, line number in
        `_elide`'s tuple, x, y of the line's top left); titles / other lines only when `titles` /
        `texts` (`text_drawn_at`)."""
        line, io_box = self._line_height, self._io_box
        for index, (x, y, w, h) in zip(visible.tolist(), self._rects[visible].tolist()):
            if io_box[index]:  # graph input/output: kind and name, then the tensor type (the text font)
                if titles or texts:  # the name is this box's title: without it the box shows blank
                    yield index, 0, x + 6, y + 3
                if texts:
                    yield index, 1, x + 6, y + 3 + line
                continue
            if titles:
                yield index, 0, x + 6, y + 3
            if texts:
                yield index, 1, x + 6, y + 19
                # A collapsed group's box is taller: totals, then the profile's time.
                for row in range(1, min(len(self._lines[index]) - 2, max(1, int((h - 19) // line) - 1)) + 1):
                    yield index, 1 + row, x + 6, y + 19 + row * line

    def drawn_lines(self, index: int, level_of_detail: float, device_pixel_ratio: float = 1.0) -> list[str]:
        """The text a paint at this zoom draws in box `index`, line by line (elided; empty lines left out)."""
        placed = self._placed_lines(np.array([index]),
                                    text_drawn_at(TITLE_FONT_PIXELS, level_of_detail, device_pixel_ratio),
                                    text_drawn_at(TEXT_FONT_PIXELS, level_of_detail, device_pixel_ratio))
        return [text for text in (self._elide(index)[number] for _, number, _, _ in placed) if text]

    def set_line(self, index: int, lines: tuple[str, ...]) -> None:
        """Replace the text of box `index` (a collapsed group's time line follows the selected profile)."""
        self._lines[index] = lines
        self._elided.pop(index, None)
        self._headings.pop(index, None)
        self._texts.pop(index, None)
        self.update()

    def paint(self, painter: QPainter, option: QStyleOptionGraphicsItem, widget=None) -> None:
        scale = QStyleOptionGraphicsItem.levelOfDetailFromTransform(painter.worldTransform())
        if not labels_drawn_at(scale) or not len(self._rects):
            return
        exposed = option.exposedRect
        tips = self._tips
        if len(tips):
            shown = np.flatnonzero((tips[:, 0] >= exposed.left() - 5) & (tips[:, 0] <= exposed.right() + 5)
                                   & (tips[:, 1] >= exposed.top()) & (tips[:, 1] <= exposed.bottom() + 8))
            if 0 < len(shown) <= LABEL_MAX_COUNT:
                painter.setPen(Qt.PenStyle.NoPen)
                painter.setBrush(EDGE_COLOR)
                painter.drawPath(_arrow_heads(tips[shown]))
        visible = np.flatnonzero((self._right >= exposed.left()) & (self._rects[:, 0] <= exposed.right())
                                 & (self._bottom >= exposed.top()) & (self._rects[:, 1] <= exposed.bottom()))
        if len(visible) > LABEL_MAX_COUNT:
            return
        device = painter.device()
        ratio = device.devicePixelRatioF() if device is not None else 1.0
        placed = self._placed_lines(visible, text_drawn_at(TITLE_FONT_PIXELS, scale, ratio),
                                    text_drawn_at(TEXT_FONT_PIXELS, scale, ratio))
        painter.setPen(QColor("#111111"))
        if painter.paintEngine().type() != QPaintEngine.Type.Raster:
            self._draw_strings(painter, placed)  # SVG, PDF: text stays text (searchable, selectable)
            return
        # A line not laid out yet is drawn as a string (one drawText costs less than a layout):
        # a paint lays out at most LAYOUTS_PER_PAINT, so no paint (a new scene's first, an expanded
        # group's) is slowed by more than ~1 ms, and repaints soon draw only glyph runs.
        headings, texts, io_box, draw = self._headings, self._texts, self._io_box, painter.drawGlyphRun
        budget, strings = self.LAYOUTS_PER_PAINT, []
        for placement in placed:
            index, number, x, y = placement
            heading = number == 0 and not io_box[index]
            laid_out = headings.get(index) if heading else texts.get(index)
            if laid_out is None:
                if budget <= 0:
                    strings.append(placement)
                    continue
                budget -= 1
                laid_out = self._heading_runs(index) if heading else self._text_runs(index)
            for run in laid_out if heading else laid_out[number if io_box[index] else number - 1]:
                draw(QPointF(x, y), run)
        if strings:
            self._draw_strings(painter, strings)

    def _draw_strings(self, painter: QPainter, placed) -> None:
        """The lines as strings (drawText): what a paint engine other than the screen's keeps as text."""
        fonts = ((self.title_font, self._title_metrics.ascent()), (self.text_font, self._text_metrics.ascent()))
        for index, number, x, y in placed:
            font, ascent = fonts[0 if number == 0 and not self._io_box[index] else 1]
            painter.setFont(font)
            painter.drawText(QPointF(x, y + ascent), self._elide(index)[number])


def _arrow_heads(tips: np.ndarray) -> QPainterPath:
    """One path of a triangle pointing down at each tip (x, y): made from numpy in one call, not
    a drawPolygon per arrow (~4 us each from Python, 500 at zoom 0.3)."""
    corners = np.repeat(tips, 4, axis=0).reshape(-1, 4, 2) + _ARROW_CORNERS
    elements = np.empty(len(tips) * 4, dtype=_PATH_ELEMENT)
    elements["type"] = np.tile(_ARROW_TYPES, len(tips))
    elements["x"], elements["y"] = corners[:, :, 0].ravel(), corners[:, :, 1].ravel()
    path = _read_path(len(elements), elements, max(0, len(elements) - 4))
    path.setFillRule(Qt.FillRule.WindingFill)  # two arrows into one point are drawn, not cut out
    return path


_ARROW_CORNERS = np.array([[0.0, 0.0], [-4.0, -7.0], [4.0, -7.0], [0.0, 0.0]])
_ARROW_TYPES = np.array([0, 1, 1, 1])  # QPainterPath element types: move to, then lines to


def _glyph_runs(text: str, font: QFont) -> list[QGlyphRun]:
    """`text` laid out (shaped) in `font` on one line, its top left at (0, 0): a paint draws these
    glyphs at any zoom without shaping the text again (a plain drawText shapes it on every paint,
    half of its cost; a QStaticText shapes it again at every new zoom)."""
    if not text:
        return []
    layout = QTextLayout(text, font)
    layout.beginLayout()
    layout.createLine()
    layout.endLayout()
    return layout.glyphRuns()


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
    # Look-ups a scene needs at once, made here: on the UI thread they took 20-60 ms of the turn
    # that starts drawing big.onnx expanded (91,000 boxes; the GIL shared with a worker).
    node_index: dict  # node id -> its box's index
    group_indexes: set  # indexes of the collapsed groups' boxes
    boxes: dict  # the layout's boxes this was made of (GraphScene checks it is for its layout)
    # Opened groups of a folded layout (engine.folded_layout): their frames, outermost first.
    frame_ids: list[str] = field(default_factory=list)
    frame_rects: np.ndarray = field(default_factory=lambda: np.zeros((0, 4)))
    frame_titles: list[str] = field(default_factory=list)
    # Per edge batch: the reach of its longest edge (scene units), None if not known: a batch with
    # an edge reaching further than LONG_EDGE_BATCH_EXTENT is a LongEdgeBatch.
    edge_batch_reach: Optional[np.ndarray] = None


# Edges per path item.  One QGraphicsPathItem per edge made the first paint of a 20,000-node
# model 54 ms and a fitted view 90 ms (the unindexed scene walks every item on every paint);
# batched, 23 ms and 20 ms, and building the edges takes 40 ms instead of 300 ms.
EDGE_BATCH = 64
# A batch with an edge taller or wider than this (scene units; a window shows ~1,900 x 1,200 at
# a readable zoom) is a LongEdgeBatch, painted clipped to what is shown.  A batch of many short
# edges spread down a tall model is as tall, but Qt paints it whole as fast (~0.1 ms).
LONG_EDGE_BATCH_EXTENT = 6000.0
# A box parent's rectangle reaches this far (scene units) past its boxes: more than half the
# widest outline a box gets (GraphScene.link_pen, 5), so every box paints inside its parent.
BOX_GROUP_MARGIN = 10.0


def prepare_scene_data(loaded) -> SceneData:
    """The SceneData of `loaded` (a gui.app.LoadedModel); any thread may call it.

    It makes no QObject: QPainterPath is a value type that any thread may build.
    """
    layout, analysis = loaded.layout, loaded.analysis
    graph = analysis.graph
    node_ids = list(layout.boxes)
    rects = np.array(list(layout.boxes.values()), dtype=float).reshape(-1, 4)
    groups = getattr(loaded, "groups", None) or {}
    categories = _box_categories(node_ids, analysis)
    # A folded model draws the same nodes again as groups open and close: their text is kept.
    folded = getattr(loaded, "folded_layouts", None)
    known = folded.annotations.setdefault("scene_text", {}) if folded is not None else None
    frames = getattr(layout, "frames", None) or {}
    if groups:  # the totals of every group drawn, at once (each box's and frame's text reads them)
        prime_group_totals([groups[b] for b, c in zip(node_ids, categories) if c == "group"] +
                           [groups[g] for g in frames], analysis)
    lines = BoxLines(node_ids, analysis, groups, known)
    edges = layout.edges
    steps, widths = _edge_width_steps(edges, graph)
    batches, batch_of, segments, segment_edge, tips, reach = _edge_batches(edges, steps)
    frame_ids = list(frames)
    frame_rects = np.array([frames[g] for g in frame_ids], dtype=float).reshape(-1, 4)
    titles = [frame_title(groups[g], analysis) for g in frame_ids]
    node_index = dict(zip(node_ids, range(len(node_ids))))
    group_indexes = {i for i, category in enumerate(categories) if category == "group"}
    return SceneData(node_ids, rects, categories, lines, steps, widths, tips, batches, batch_of,
                     segments, segment_edge, node_index, group_indexes, layout.boxes, frame_ids, frame_rects,
                     titles, reach)


class _OpCategories(dict):
    """op type -> engine.layout.op_category, each looked up when first asked for."""

    def __missing__(self, op_type: str) -> str:
        category = self[op_type] = op_category(op_type)
        return category


def _box_categories(node_ids: Sequence[str], analysis) -> list[str]:
    """The colour category of every box: "io", "group", "constant" (a folded constant shown) or its op's
    category (engine.layout.op_category, looked up once per op type).  Plain data, any thread."""
    # The op type from the node's metrics: no graph.nodes_by_id (a 100,000-node dict) for a folded view.
    metrics, of_op = analysis.nodes, _OpCategories()
    io_prefixes = (INPUT_PREFIX, OUTPUT_PREFIX)
    box_prefixes = (INPUT_PREFIX, OUTPUT_PREFIX, GROUP_PREFIX)  # one test per box finds the rare io and groups
    return [("io" if node_id.startswith(io_prefixes) else "group") if node_id.startswith(box_prefixes)
            else "constant" if (node := metrics[node_id]).is_constant else of_op[node.op_type]
            for node_id in node_ids]


class BoxLines:
    """The label lines of every box (a list of tuples to its readers), each made when first read.

    Only the labels of the boxes on screen are painted, and a 20,000-node model's text took
    0.1 s of every open when made for all boxes up front; made here, a paint makes the few
    it shows.  A collapsed group's text is made at once (see below).  `known` (node id ->
    lines) is shared by the relayouts of one folded model.
    """

    def __init__(self, node_ids: Sequence[str], analysis, groups: Mapping, known: Optional[dict] = None):
        self._node_ids = node_ids
        self._analysis = analysis
        self._known = {} if known is None else known
        self._made: dict[int, tuple[str, ...]] = {}  # by box index: read, or set (a group's time line)
        # A collapsed group's text sums its members (up to 100,000 nodes): made now, by the worker
        # that prepares the scene, and its totals are then cached for the UI thread (gui.graph_groups).
        for index, node_id in enumerate(node_ids):
            if is_group(node_id):
                self._made[index] = group_lines(groups[node_id], analysis)

    def __len__(self) -> int:
        return len(self._node_ids)

    def __getitem__(self, index: int) -> tuple[str, ...]:
        index = range(len(self._node_ids))[index]  # IndexError past either end; a negative index counts back
        found = self._made.get(index)
        if found is None:
            node_id = self._node_ids[index]
            found = self._known.get(node_id)
            if found is None:
                found = self._known[node_id] = GraphScene.box_lines(node_id, self._analysis.graph, self._analysis)
            self._made[index] = found
        return found

    def __setitem__(self, index: int, lines: tuple[str, ...]) -> None:
        self._made[range(len(self._node_ids))[index]] = lines  # a negative index counts back

    def __iter__(self):
        return (self[i] for i in range(len(self._node_ids)))

    def copy(self) -> "BoxLines":
        """Lines of the same boxes that a scene may rewrite (a group's time line) without touching
        these: what is made already is shared, nothing more is made."""
        twin = BoxLines.__new__(BoxLines)
        twin._node_ids, twin._analysis, twin._known = self._node_ids, self._analysis, self._known
        twin._made = dict(self._made)
        return twin


def _edge_batches(edges, steps: list[int]):
    """Group edges of one pen width, in layout order (so a batch covers nearby edges), EDGE_BATCH at a time.

    Returns the batches (pen width step, path), the batch of each edge, every straight segment
    of every edge with the edge it belongs to (hit tests), each edge's end point (arrows), and
    per batch the reach of its longest edge (the larger side of the edge's bounding box; None
    when some edge is not a polyline).

    The batches are what adding each edge's polygon to its width's open path (closed at
    EDGE_BATCH edges; the open ones last, by width) makes, computed for all edges at once with
    numpy and read by Qt from the bytes QDataStream writes for a path: 24,000 polygons added
    one by one from Python took 0.1 s of every 20,000-node open.
    """
    count = len(edges)
    edge_points = list(map(attrgetter("points"), edges))
    counts = np.fromiter(map(len, edge_points), dtype=np.int64, count=count)
    points = np.fromiter(chain.from_iterable(chain.from_iterable(edge_points)),
                         dtype=float, count=2 * int(counts.sum())).reshape(-1, 2)
    ends = np.cumsum(counts)
    starts = ends - counts
    tips = points[ends - 1] if count else np.zeros((0, 2))
    # Each edge's segments (consecutive points), in edge order: a segment joins point k to k+1
    # unless k is the last point of its edge.
    joined = np.ones(len(points), dtype=bool)
    joined[ends - 1] = False  # the last point of every edge starts no segment
    joined = joined[:-1] if len(points) else joined
    segments = np.concatenate([points[:-1][joined], points[1:][joined]], axis=1) if len(points) else \
        np.zeros((0, 4))
    segment_edge = np.repeat(np.arange(count, dtype=np.int64), np.maximum(counts - 1, 0))
    if count and int(counts.min()) < 2:  # not a polyline (no layout makes one): the paths one by one
        return _edge_batches_one_by_one(edges, steps) + (segments, segment_edge, tips, None)
    # The batch of each edge: the k-th edge of a width goes into that width's (k // EDGE_BATCH)-th
    # path.  A full path is closed by its last edge (batches are numbered in that order), the
    # partly filled ones after all of them, thinnest first.
    step_array = np.asarray(steps, dtype=np.int64).reshape(-1)
    by_step = np.lexsort((np.arange(count), step_array))  # edges of each width, in layout order
    sorted_steps = step_array[by_step]
    rank = np.arange(count) - np.searchsorted(sorted_steps, sorted_steps, side="left")
    group = rank // EDGE_BATCH
    width_count = np.bincount(sorted_steps, minlength=EDGE_WIDTH_STEPS)[sorted_steps]
    full = (group + 1) * EDGE_BATCH <= width_count
    is_last = (rank % EDGE_BATCH == EDGE_BATCH - 1) | (rank == width_count - 1)
    # Key of each batch (at its last member): a full one's closing edge, else past every edge by width.
    keys = np.where(full, by_step, count + sorted_steps)[is_last]
    batch_number = np.empty(len(keys), dtype=np.int64)
    batch_number[np.argsort(keys, kind="stable")] = np.arange(len(keys))
    batch_in_sorted = batch_number[np.cumsum(is_last) - is_last]  # each edge's batch (sorted order)
    batch_of = np.empty(count, dtype=np.int64)
    batch_of[by_step] = batch_in_sorted
    batch_steps = sorted_steps[is_last][np.argsort(batch_number)].tolist()
    # The paths' elements, batch after batch, each batch's edges in layout order: a move to an
    # edge's first point, lines to the others.
    order = np.lexsort((np.arange(count), batch_of))
    ordered_counts = counts[order]
    first_element = np.cumsum(ordered_counts) - ordered_counts
    point_index = np.repeat(starts[order] - first_element, ordered_counts) + np.arange(len(points))
    elements = np.empty(len(points), dtype=_PATH_ELEMENT)
    elements["type"] = 1  # QPainterPath.LineToElement
    elements["type"][first_element] = 0  # MoveToElement
    elements["x"] = points[point_index, 0]
    elements["y"] = points[point_index, 1]
    edge_ends = np.cumsum(np.bincount(batch_of, minlength=len(batch_steps)))
    element_ends = np.cumsum(np.bincount(batch_of, weights=counts, minlength=len(batch_steps))).astype(np.int64)
    # Every path's bytes one after the other, read from one stream (a stream per path cost ~20 us each).
    raw = []
    element_start = 0
    fill_rule = int(Qt.FillRule.OddEvenFill.value)
    for edge_end, element_end in zip(edge_ends.tolist(), element_ends.tolist()):
        last_move = element_end - int(ordered_counts[edge_end - 1])  # where the path's last polygon starts
        raw += (_PATH_COUNT.pack(element_end - element_start), elements[element_start:element_end].tobytes(),
                _PATH_END.pack(last_move - element_start, fill_rule))
        element_start = element_end
    stream = QDataStream(QByteArray(b"".join(raw)))
    batches = []
    for step in batch_steps:
        path = QPainterPath()
        stream >> path
        batches.append((step, path))
    reach = np.zeros(len(batches))
    if count:
        sides = [np.maximum.reduceat(points[:, axis], starts) - np.minimum.reduceat(points[:, axis], starts)
                 for axis in (0, 1)]
        np.maximum.at(reach, batch_of, np.maximum(*sides))
    return batches, batch_of, segments, segment_edge, tips, reach


# QDataStream's form of a QPainterPath (Qt's operator<<): the element count, then per element its
# type and x, y (big-endian int32, doubles), then the index of the last subpath's start and the fill rule.
_PATH_ELEMENT = np.dtype([("type", ">i4"), ("x", ">f8"), ("y", ">f8")])
_PATH_COUNT = struct.Struct(">i")
_PATH_END = struct.Struct(">ii")


def _read_path(count: int, elements: np.ndarray, last_move: int) -> QPainterPath:
    """One path of `count` elements (_PATH_ELEMENT), its last subpath starting at `last_move`."""
    path = QPainterPath()
    QDataStream(QByteArray(_PATH_COUNT.pack(count) + elements.tobytes()
                           + _PATH_END.pack(last_move, int(Qt.FillRule.OddEvenFill.value)))) >> path
    return path


def _path_elements(path: QPainterPath) -> np.ndarray:
    """The elements (type, x, y) of a path of polylines, read from the bytes QDataStream writes for it."""
    raw = QByteArray()
    stream = QDataStream(raw, QIODevice.OpenModeFlag.WriteOnly)
    stream << path
    data = raw.data()
    count = int(np.frombuffer(data, dtype=">i4", count=1)[0])
    return np.frombuffer(data, dtype=_PATH_ELEMENT, count=count, offset=4)


def _slab(start: np.ndarray, delta: np.ndarray, low: float, high: float) -> tuple[np.ndarray, np.ndarray]:
    """Where segments start + t * delta enter and leave the band low <= coordinate <= high (t, unbounded)."""
    flat = delta == 0
    safe = np.where(flat, 1.0, delta)
    to_low, to_high = (low - start) / safe, (high - start) / safe
    inside = (start >= low) & (start <= high)
    enter = np.where(flat, np.where(inside, -np.inf, np.inf), np.minimum(to_low, to_high))
    leave = np.where(flat, np.where(inside, np.inf, -np.inf), np.maximum(to_low, to_high))
    return enter, leave


class LongEdgeBatch(QGraphicsPathItem):
    """A batch of edges reaching far beyond what is shown: painted clipped to the exposed rectangle.

    Two batches of 64 edges running the length of a 100,000-node model (the lanes from its
    top inputs to every block, 146,000 units tall) cost 40-70 ms of every paint at a readable
    zoom, against ~10 ms for everything else of an opened block.  Qt strokes a pen wider than
    a device pixel as the outline of the whole path before it clips, and fills the outline of
    one path at once: where its edges run side by side (23 lanes in a band 50 pixels high) the
    anti-aliased fill of their crossing outlines alone took 25 ms.  Here only the pieces of
    segments within a margin of the exposed rectangle are drawn (numpy), each edge as a path of
    its own (pieces of one segment as lines, in one call), each distinct piece once: ~1-3 ms.
    The strokes are the same: every cut lies outside the exposed rectangle by more than the pen
    reaches; anti-aliased rims may differ by a few levels of grey (rounding of a cut line, two
    edges' rims blended where they meet instead of merged), and where many edges of a batch run
    together (a lane) their rims are those of one edge, not darkened by hundreds of copies.
    """

    # Clip when the batch is this many times larger than the exposed rectangle (either way);
    # below it, Qt's own paint of the whole path is as cheap.
    CLIP_RATIO = 3.0

    def __init__(self, path: QPainterPath, pen: QPen):
        super().__init__(path)
        self.setPen(pen)
        self.setFlag(QGraphicsItem.GraphicsItemFlag.ItemUsesExtendedStyleOption, True)  # exposedRect
        self._bounds = path.boundingRect()
        self._segments: Optional[tuple] = None  # start, end, delta, first point, edge of every segment (when first clipped)
        self._clipped: tuple = (None, ([], []))  # (clip rectangle, its lines and paths): a repaint of the same view reuses them

    def paint(self, painter: QPainter, option: QStyleOptionGraphicsItem, widget=None) -> None:
        painter.setPen(self.pen())
        painter.setBrush(self.brush())
        exposed, bounds = option.exposedRect, self._bounds
        if (bounds.width() <= self.CLIP_RATIO * exposed.width()
                and bounds.height() <= self.CLIP_RATIO * exposed.height()):
            painter.drawPath(self.path())
            return
        # Cut outside the exposed rectangle by more than the pen reaches (square caps, bevel joins:
        # half its width) and the anti-aliasing.  The rectangle cut to is the exposed one grown to
        # a grid of half its size, so a pan of less than half a view repaints from the same pieces.
        scale = QStyleOptionGraphicsItem.levelOfDetailFromTransform(painter.worldTransform())
        margin = 2.0 * self.pen().widthF() + 4.0 / max(scale, 1e-6)
        step_x, step_y = max(exposed.width(), 1.0) / 2, max(exposed.height(), 1.0) / 2
        left, top = math.floor(exposed.left() / step_x) * step_x, math.floor(exposed.top() / step_y) * step_y
        clip = (left - margin, top - margin, left + 3 * step_x + margin, top + 3 * step_y + margin)
        if self._clipped[0] != clip:
            lines, paths = self.clipped_pieces(*clip)
            self._clipped = (clip, ([QLineF(*line) for line in lines.tolist()], paths))
        lines, paths = self._clipped[1]
        if lines:
            painter.drawLines(lines)
        for path in paths:
            painter.drawPath(path)

    def clipped_pieces(self, left: float, top: float, right: float, bottom: float
                       ) -> tuple[np.ndarray, list[QPainterPath]]:
        """The pieces of this batch's polylines inside the rectangle: (the pieces of one segment,
        as rows x0, y0, x1, y1; the others, a path per edge: polylines kept whole where no cut
        falls, so the joins are Qt's as before).

        A piece of one segment has no join to keep: all of them are drawn with one drawLines call,
        which Qt strokes line by line on its fast path.  Where hundreds of edges pass a view (the
        lanes of a 20,000-node transformer expanded: a decoder's mask and rotary lanes, its
        blocks' outputs leaving the `model` frame, the fan to the outputs) a call and a stroked
        path per edge took 20-35 ms of each paint; the lines take a few."""
        no_lines = np.zeros((0, 4))
        if self._segments is None:
            elements = _path_elements(self.path())
            points = np.stack([elements["x"], elements["y"]], axis=1).astype(float)
            joined = elements["type"][1:] != 0  # a segment ends at every element but a move
            start, stop = points[:-1][joined], points[1:][joined]
            first_point = np.flatnonzero(joined)
            edge = np.cumsum(elements["type"] == 0)[first_point] - 1
            # Each edge's extent: most edges of a batch are nowhere near the view, and are left out
            # at the cost of four comparisons per edge (not per segment).
            moves = np.flatnonzero(elements["type"] == 0)
            extent = [np.minimum.reduceat(points[:, 0], moves), np.minimum.reduceat(points[:, 1], moves),
                      np.maximum.reduceat(points[:, 0], moves), np.maximum.reduceat(points[:, 1], moves)]
            self._segments = (start, stop, stop - start, first_point, edge, extent)
        start, stop, delta, first_point, edge, (min_x, min_y, max_x, max_y) = self._segments
        near = (min_x <= right) & (max_x >= left) & (min_y <= bottom) & (max_y >= top)
        if not near.any():
            return no_lines, []
        if not near.all():
            chosen = np.flatnonzero(near[edge])
            start, stop, delta, first_point, edge = (start[chosen], stop[chosen], delta[chosen], first_point[chosen],
                                                     edge[chosen])
        enter_x, leave_x = _slab(start[:, 0], delta[:, 0], left, right)
        enter_y, leave_y = _slab(start[:, 1], delta[:, 1], top, bottom)
        enter = np.maximum(np.maximum(enter_x, enter_y), 0.0)
        leave = np.minimum(np.minimum(leave_x, leave_y), 1.0)
        kept = np.flatnonzero(enter <= leave)
        if not len(kept):
            return no_lines, []
        enter, leave, edge = enter[kept], leave[kept], edge[kept]
        # Cut ends on a grid of 1/1024 unit (they lie outside what is shown): the pieces of edges that
        # run together (a lane) then come out identical, and are drawn once (below).
        begin = np.round((start[kept] + enter[:, None] * delta[kept]) * 1024.0) / 1024.0
        end = np.round((start[kept] + leave[:, None] * delta[kept]) * 1024.0) / 1024.0
        begin[enter == 0] = start[kept][enter == 0]  # uncut ends exactly as laid out
        end[leave == 1] = stop[kept][leave == 1]
        # A kept segment continues the previous one when they share an uncut point.
        follows = np.zeros(len(kept), dtype=bool)
        follows[1:] = (first_point[kept][1:] == first_point[kept][:-1] + 1) & (leave[:-1] == 1) & (enter[1:] == 0)
        moves = ~follows
        # A piece of one segment: it starts a piece and the next segment starts another.
        alone = moves & np.r_[moves[1:], True]
        # Each distinct piece once.  Hundreds of edges may run down one lane (a decoder's mask read by
        # each of 250 blocks; every block's outputs leaving its frame): drawn once, a lane looks like
        # one edge (its anti-aliased rims not darkened by hundreds of copies) and costs one stroke.
        lines = np.unique(np.concatenate([begin[alone], end[alone]], axis=1), axis=0)
        if alone.all():
            return lines, []
        joined = ~alone
        begin, end, edge, moves = begin[joined], end[joined], edge[joined], moves[joined]
        count = int(joined.sum()) + int(moves.sum())
        ends = np.arange(len(begin)) + np.cumsum(moves)  # element of each segment's end (a line to it)
        elements = np.empty(count, dtype=_PATH_ELEMENT)
        elements["type"] = 1
        elements["x"][ends], elements["y"][ends] = end[:, 0], end[:, 1]
        starts = ends[moves] - 1
        elements["type"][starts] = 0
        elements["x"][starts], elements["y"][starts] = begin[moves, 0], begin[moves, 1]
        # A path per edge (one path of 23 lanes side by side took 25 ms to fill, 23 paths 2.5 ms).  Its
        # price: a call per edge.  Where ~1,200 lanes pass the view (a 20,000-node transformer laid out
        # whole, at 1:1) a pan repaint costs ~10-15 % more CPU than Qt's paint of the whole batches, and
        # a pan past the grid ~45 ms more (4 edges per path, or edges that keep apart sharing a path,
        # made the opened blocks' paint 2-3x slower again; measured, loaded machine).  Its first
        # element, from the first of its kept segments.
        first_of_edge = np.flatnonzero(np.r_[True, edge[1:] != edge[:-1]])
        bounds = (ends[first_of_edge] - 1).tolist() + [count]
        paths, drawn = [], set()
        for piece_start, piece_end in zip(bounds[:-1], bounds[1:]):
            piece = elements[piece_start:piece_end]
            key = piece.tobytes()
            if key in drawn:  # the same pieces as another edge's (edges from one source down its lane)
                continue
            drawn.add(key)
            last_move = int(np.flatnonzero(piece["type"] == 0)[-1])
            paths.append(_read_path(piece_end - piece_start, piece, last_move))
        return lines, paths


def _edge_batches_one_by_one(edges, steps: list[int]):
    """`_edge_batches`'s paths and batch of each edge, adding one polygon at a time."""
    batches: list[tuple[int, QPainterPath]] = []
    batch_of = np.zeros(len(edges), dtype=np.int64)
    open_batches: dict[int, list] = {}  # step -> [path, count, members]

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
        entry[0].addPolygon(QPolygonF([QPointF(x, y) for x, y in edge.points]))
        entry[1] += 1
        entry[2].append(index)
        if entry[1] >= EDGE_BATCH:
            close(step, open_batches.pop(step))
    for step, entry in sorted(open_batches.items()):
        close(step, entry)
    return batches, batch_of


def _edge_width_steps(edges, graph) -> tuple[list[int], list[float]]:
    """Per edge: its pen width step (log of the tensor's bytes) and that width.

    Unknown sizes get the thinnest pen.  Set once at build time: overlays never touch edges.
    """
    values = [edge.value for edge in edges]
    # Per tensor: a tensor feeding many consumers is looked up once.
    position = {value: i for i, value in enumerate(dict.fromkeys(values))}
    tensor_sizes = np.array([float((found.byte_size or 0) if found is not None else 0)
                             for found in map(graph.value_types.get, position)], dtype=float)
    sizes = tensor_sizes[np.fromiter(map(position.__getitem__, values), dtype=np.int64, count=len(values))]
    positive = sizes[sizes > 0]
    steps = np.zeros(len(edges), dtype=int)
    if len(positive):
        low, high = np.log10(positive.min()), np.log10(positive.max())
        if high > low:
            logs = np.log10(np.where(sizes > 0, sizes, positive.min()))
            steps = np.rint((logs - low) / (high - low) * (EDGE_WIDTH_STEPS - 1)).astype(int)
    widths = EDGE_MIN_WIDTH + steps * (EDGE_MAX_WIDTH - EDGE_MIN_WIDTH) / (EDGE_WIDTH_STEPS - 1)
    return steps.tolist(), widths.tolist()


class GraphScene(GroupSceneMixin, QGraphicsScene):
    """Items for one laid-out model.  Built once; overlays recolour, never rebuild."""

    # Items created per build step (~15 us each: 5-8 ms per step).  The caller runs steps until
    # its time slice is used (MainWindow._on_loaded: 25 ms), so a step must be much shorter than
    # the slice: with 1,500 nodes per step a slice overran to 100+ ms on a 20,000-node model.
    CHUNK_NODES = 400
    CHUNK_EDGE_BATCHES = 50  # of EDGE_BATCH edges each
    # From this many boxes on, the boxes of each build chunk are children of one parent item
    # (`_box_parent`).  Qt's paint visits every top-level item, and the first paint of a view
    # records a rectangle per item it visits (an allocation each): with 91,000 top-level boxes
    # (big.onnx after Expand all) that first paint took 100-240 ms, 65 % of it in malloc and page
    # faults (perf, loaded machine); with a parent per 400 boxes it skips the parents outside the
    # view: 11-34 ms, later paints 3-9 ms instead of 12-40 ms.  Smaller scenes keep one top-level
    # item per box (their paint is quick either way).
    BOX_GROUP_MIN = 2000
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
        if data is None or (data.boxes is not layout.boxes and data.node_ids != list(layout.boxes)):
            data = prepare_scene_data(loaded)
        self._data = data
        self.node_ids: list[str] = data.node_ids
        self.node_index = data.node_index  # read only: shared with other scenes of the same data
        self.node_items = []
        self._item_index: dict = {}  # node item -> its index (`index_of_item`)
        self.box_brushes: list[QBrush] = []  # the brush of each box, as set (the minimap reads colours here)
        self.edge_items = []
        self.box_groups: list[QGraphicsRectItem] = []  # big scenes: the boxes' parent items (BOX_GROUP_MIN)
        self.edges = layout.edges
        self.categories: list[str] = []  # filled as the boxes are made (overlays zip them with the items)
        self.rects = data.rects
        self._lines: list[tuple[str, str, str]] = data.lines
        self.box_pen = QPen(BOX_PEN, 1.0)
        self.group_pen = QPen(GROUP_PEN_COLOR, 2.0)
        self.groups = dict(getattr(loaded, "groups", None) or {})  # engine.layout.NodeGroup by box id
        self.group_indexes = data.group_indexes  # read only, as node_index
        self.top_pen = QPen(TOP_PEN_COLOR, 4.0)
        self.selection_pen = QPen(QColor("#000000"), 3.0)
        self.link_pen = QPen(LINK_PEN_COLOR, 5.0)
        self.linked_node_ids: list[str] = []  # outlined: what the other view's selection maps to
        self._linked: set[int] = set()
        self._category_brushes = {name: QBrush(QColor(color)) for name, color in CATEGORY_COLORS.items()}
        self._io_mask: Optional[np.ndarray] = None  # which boxes are graph inputs/outputs (`io_mask`)
        # apply_values' brushes, kept: a box whose colour step stays keeps its brush, unset again.
        self._value_brushes: dict[int, QBrush] = {-1: self._category_brushes["io"], -2: QBrush(UNKNOWN_COLOR),
                                                  -3: QBrush(ZERO_COLOR)}
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
        self.frame_layer: Optional[FrameLayer] = None  # the opened groups' frames (folded layouts)
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
        if data.frame_ids:
            self.frame_layer = FrameLayer(data.frame_ids, data.frame_rects, list(data.frame_titles),
                                          [self.groups[g].depth for g in data.frame_ids])
            self.addItem(self.frame_layer)
        pens = [QPen(EDGE_COLOR, float(EDGE_MIN_WIDTH + k * (EDGE_MAX_WIDTH - EDGE_MIN_WIDTH)
                                       / (EDGE_WIDTH_STEPS - 1))) for k in range(EDGE_WIDTH_STEPS)]
        self.edge_widths = data.edge_widths
        add_path, add_item = self.addPath, self.addItem
        batches = data.edge_batches
        long_extent = LONG_EDGE_BATCH_EXTENT
        if data.edge_batch_reach is not None:
            is_long = (data.edge_batch_reach > long_extent).tolist()
        else:  # the batches' bounds, a wider choice
            is_long = [max(path.boundingRect().width(), path.boundingRect().height()) > long_extent
                       for _, path in batches]
        for start in range(0, len(batches), self.CHUNK_EDGE_BATCHES):
            for (step, path), long in zip(batches[start:start + self.CHUNK_EDGE_BATCHES],
                                          is_long[start:start + self.CHUNK_EDGE_BATCHES]):
                if long:
                    item = LongEdgeBatch(path, pens[step])
                    add_item(item)
                else:
                    item = add_path(path, pens[step])
                item.setAcceptedMouseButtons(Qt.MouseButton.NoButton)  # clicks go through to the background
                # Qt outlines a path with its pen to find its bounding rectangle (then keeps it).  Asked for
                # here, in this step's time slice: left to Qt, the scene's next update asked for all of a
                # slice's batches in one event-loop turn after it (1,848 batches of big.onnx expanded: 76 ms).
                item.boundingRect()
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
        box_brushes = [brushes[category] for category in data.categories]
        pens = [self.box_pen] * len(self.node_ids)
        for i in self.group_indexes:
            pens[i] = self.group_pen
        node_items = self.node_items
        grouped = len(self.node_ids) >= self.BOX_GROUP_MIN
        for start in range(0, len(self.node_ids), self.CHUNK_NODES):
            end = start + self.CHUNK_NODES
            parent = self._box_parent(data.rects[start:end]) if grouped else None
            for (x, y, w, h), pen, brush in zip(rects[start:end], pens[start:end], box_brushes[start:end]):
                item = add_rect(x, y, w, h, pen, brush)
                item.setFlag(selectable, True)  # with `True`: half the cost of the one-argument call
                if parent is not None:  # just added, so last of the scene's top-level items: taken off at no cost
                    item.setParentItem(parent)
                node_items.append(item)
            self.categories.extend(data.categories[start:end])
            self.box_brushes.extend(box_brushes[start:end])
            yield
        self.labels = LabelLayer(self.rects, self._lines, data.tips)
        self.addItem(self.labels)
        self.complete = True

    def _box_parent(self, rects: np.ndarray) -> QGraphicsRectItem:
        """An item to hold the boxes at `rects` (x, y, w, h each): a rectangle round them, drawn with no
        pen or brush, that says its children paint only inside it, so a paint skips them all when it
        lies outside the exposed area (see BOX_GROUP_MIN).  It takes no clicks: they reach the boxes,
        or the background between them."""
        left, top = rects[:, 0].min() - BOX_GROUP_MARGIN, rects[:, 1].min() - BOX_GROUP_MARGIN
        right = (rects[:, 0] + rects[:, 2]).max() + BOX_GROUP_MARGIN
        bottom = (rects[:, 1] + rects[:, 3]).max() + BOX_GROUP_MARGIN
        parent = self.addRect(float(left), float(top), float(right - left), float(bottom - top),
                              QPen(Qt.PenStyle.NoPen))
        parent.setFlag(QGraphicsItem.GraphicsItemFlag.ItemContainsChildrenInShape, True)
        parent.setAcceptedMouseButtons(Qt.MouseButton.NoButton)
        self.box_groups.append(parent)
        return parent

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
        self._item_index = {}  # it would keep the items alive
        remove = self.removeItem
        # The boxes before their (then empty) parents.  An edge batch (a long path) costs ~40 us to
        # delete, a box ~5 us: 1,000 edge batches made one step of big.onnx expanded take ~40 ms.
        for attribute, size in (("edge_items", self.CHUNK_TEARDOWN // 5), ("node_items", self.CHUNK_TEARDOWN),
                                ("box_groups", self.CHUNK_TEARDOWN)):
            items = getattr(self, attribute)
            setattr(self, attribute, [])
            while items:
                chunk = items[:size]
                del items[:size]
                for item in chunk:
                    remove(item)
                del chunk  # deletes the C++ items
                yield
        for layer in ("labels", "frame_layer"):
            if getattr(self, layer) is not None:
                remove(getattr(self, layer))
                setattr(self, layer, None)
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

    def index_of_item(self, item) -> Optional[int]:
        """The index of box `item` (one of `node_items`), None for any other item.

        A box gets its node id as `data(0)` when it is first selected (here, from
        `_mark_selection`, the first slot of selectionChanged), not when it is made: setting
        it on 20,000 boxes cost 30 ms of every build.  Readers of `data(0)` read selected boxes.
        """
        if len(self._item_index) != len(self.node_items):
            self._item_index = dict(zip(self.node_items, range(len(self.node_items))))
        return self._item_index.get(item)

    def _mark_selection(self) -> None:
        """A thick outline on the selected box (Qt's dashed one is hard to see on a coloured box)."""
        previous = self._selected_index
        for index in ([previous] if previous is not None else []) + self._also_selected:
            self.node_items[index].setPen(self._base_pen(index))
        selected = self.selectedItems()
        indexes = [self.index_of_item(item) for item in selected]
        for item, index in zip(selected, indexes):
            if index is not None and item.data(0) is None:  # see `index_of_item`
                item.setData(0, self.node_ids[index])
        self._selected_index = indexes[0] if indexes else None
        if self._selected_index is not None:
            self.node_items[self._selected_index].setPen(self.selection_pen)
        self._also_selected = [index for index in indexes[1:] if index is not None]
        for index in self._also_selected:
            self.node_items[index].setPen(self.selection_pen)

    @staticmethod
    def box_lines(node_id: str, graph, analysis) -> tuple[str, str, str]:
        """Label lines (title, name, detail) of a node's or graph input's/output's box; plain data, any thread."""
        if node_id.startswith(INPUT_PREFIX):
            name = node_id[len(INPUT_PREFIX):]
            return (f"input  {name}", _type_text(graph.value_type(name)), "")
        if node_id.startswith(OUTPUT_PREFIX):
            name = node_id[len(OUTPUT_PREFIX):]
            return (f"output  {name}", _type_text(graph.value_type(name)), "")
        node = graph.node(node_id)
        metrics = analysis.nodes[node_id]
        first = node.outputs[0] if node.outputs else ""
        value_type = graph.value_type(first) if first else None
        detail = value_type.shape_text() if value_type is not None else ""
        if metrics.params:
            detail += f"   W {human_count(metrics.params)}"
        return (node.op_type, node.name or node.id, detail)

    # --- overlays -------------------------------------------------------------------------
    def set_profile(self, profile) -> None:
        """Show `profile` (engine.profile.Profile or None) in the profile overlays; re-applies the current one."""
        changed, self.profile = profile is not self.profile, profile
        if changed:  # a new scene shown with no profile has its groups' text already: no rewrite, no repaint
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
            # A plain dict's get (the profile's read-only map answers through a Python method).
            get = dict(self.profile.nodes.items()).get if self.profile is not None else {}.get
            metric, groups = spec.metric, self.groups
            return [self.group_totals(node_id).time_ms if node_id in groups
                    else None if (timing := get(node_id)) is None else getattr(timing.time, metric)
                    for node_id in self.node_ids]
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

    @property
    def io_mask(self) -> np.ndarray:
        """Which boxes are graph inputs/outputs, by box index (made once: a scene's boxes stay)."""
        if self._io_mask is None:
            self._io_mask = np.fromiter((category == "io" for category in self._data.categories), dtype=bool,
                                        count=len(self.node_ids))
        return self._io_mask

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
        known = np.array(values, dtype=float)  # None: nan
        io_mask = self.io_mask
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
        brushes = self._value_brushes
        step_list = steps.tolist()
        for step in set(step_list).difference(brushes):
            brushes[step] = QBrush(gradient_color(step / 100))
        items = self.node_items
        new = list(map(brushes.__getitem__, step_list[:len(items)]))
        self._clear_outlines()
        # setBrush on the boxes whose brush changes only (each call queues a repaint of its box).
        for item, brush, old in zip(items, new, self.box_brushes):
            if brush is not old:
                item.setBrush(brush)
        self.box_brushes[:len(new)] = new
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
            return self.group_tooltip(node_id)
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
        """What a search for `text` can reach, in the order of their boxes (then execution order):
        nodes whose name, id or op type contains `text` (case-insensitive), and groups drawn as
        boxes and graph inputs/outputs whose name does.

        A node inside a collapsed group is found as itself, not as its group's box: selecting it
        (gui.folded_groups.open_groups_to) opens the groups that hide it.  A constant folded into
        its consumers (Constants off) is not found: it has no box, and opening its group would not
        draw one (box_id would name the collapsed group holding it).
        """
        needle = text.strip().lower()
        if not needle:
            return []
        matched = text_matches(self.loaded.analysis, needle)
        found = []
        for box in self.node_ids:  # boxes in drawing order, a group's members in execution order
            group = self.groups.get(box)
            if group is not None:
                if needle in group.name.lower():
                    found.append(box)
                found.extend(matched.members_in(group, self.loaded.include_constants))
            elif box in matched.nodes or (is_io(box) and needle in box.lower()):
                found.append(box)
        return found


@dataclass(frozen=True)
class TextMatches:
    """The nodes of an analysis whose name, id or op type contains a search text."""

    nodes: frozenset  # constants included
    compute_nodes: frozenset  # constants left out
    _members: dict = field(default_factory=dict)  # (group id, constants shown) -> members_in

    def members_in(self, group, include_constants: bool) -> list[str]:
        """The matching members of `group` (a collapsed one: hidden in its box) that the search
        reaches, in execution order: constants only when shown (a folded one has no box even
        with its group opened).  Kept: a relayout draws most collapsed groups again."""
        key = (group.id, include_constants)
        found = self._members.get(key)
        if found is None:
            within = self.nodes if include_constants else self.compute_nodes
            found = self._members[key] = [m for m in group.members if m in within]
        return found


# The text match does not depend on the layout: kept for the last analysis and text, a relayout
# (a block opened, constants shown) only walks the boxes again.  Matching every node's name, id
# and op type took ~0.1-0.3 s at 100,000 nodes (big.onnx, "/"); listing a group's matches ~0.015 s.
# The window forgets it when another model replaces the searched one, or it closes: its node-id
# sets are a few MB for "/" at 100,000 nodes, and would otherwise stay until the next search.
_NO_TEXT_MATCHES: tuple = (None, "", None)
_last_text_matches: tuple = _NO_TEXT_MATCHES  # (weakref to the analysis, needle, TextMatches)


def forget_text_matches() -> None:
    """Drop the kept match of the last search (its model replaced or closed)."""
    global _last_text_matches
    _last_text_matches = _NO_TEXT_MATCHES


def text_matches(analysis, needle: str) -> TextMatches:
    """The nodes of `analysis` whose name, id or op type contains `needle` (lower case)."""
    import weakref

    global _last_text_matches
    analysis_ref, last_needle, matches = _last_text_matches
    if analysis_ref is not None and analysis_ref() is analysis and last_needle == needle:
        return matches
    graph, metrics = analysis.graph, analysis.nodes
    nodes = []
    for node_id in analysis.order:
        node = graph.node(node_id)
        if needle in node.name.lower() or needle in node_id.lower() or needle in node.op_type.lower():
            nodes.append(node_id)
    matches = TextMatches(frozenset(nodes), frozenset(n for n in nodes if not metrics[n].is_constant))
    _last_text_matches = (weakref.ref(analysis), needle, matches)
    return matches


_retiring: set = set()  # scenes being torn down; kept alive here until their last slice
_building: set = set()  # scenes being built in slices; kept alive here until done or cancelled
_slice_timers: set = set()  # the timers running their slices


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
    # A zero-interval timer runs a slice per event-loop turn.  Each slice posting the next with
    # QTimer.singleShot(0) ran two slices per turn: a 10 ms timer (or a person's input) waited ~40 ms.
    timer = QTimer()
    timer.setInterval(0)
    _slice_timers.add(timer)  # kept alive here until the build ends

    def work() -> None:
        if cancelled:
            return
        deadline = time.perf_counter() + time_slice
        try:
            while time.perf_counter() < deadline:
                if next(steps, StopIteration) is StopIteration:
                    timer.stop()
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
        timer.stop()
        _slice_timers.discard(timer)
        if scene in _building:
            _building.discard(scene)
            release_gc()

    timer.timeout.connect(work)
    timer.start()
    return cancel


# Seconds of deletion per event-loop turn when an old scene is torn down.
RETIRE_SLICE_S = 0.015


def retire_scene(scene: GraphScene, time_slice: float = 0.0, delay_ms: int = 150) -> None:
    """Delete `scene` (no longer shown) a slice of items per event-loop turn, `time_slice` seconds
    each (RETIRE_SLICE_S unless given).

    Starts after `delay_ms`, so that the first paint of the scene that replaced it (~35 ms
    for 20,000 boxes) has an event-loop turn of its own.  The scene is detached from its
    parent first, so it is ours to delete even if the window that held it closes meanwhile.
    """
    scene.setParent(None)
    steps = scene.teardown_steps()
    _retiring.add(scene)
    time_slice = time_slice or RETIRE_SLICE_S
    timer = QTimer()
    timer.setInterval(0)  # a slice per event-loop turn, as in build_in_slices
    _slice_timers.add(timer)

    def work() -> None:
        deadline = time.perf_counter() + time_slice
        try:
            for _ in steps:
                if time.perf_counter() > deadline:
                    return  # the next slice in the next turn
        except RuntimeError:  # the C++ scene is already gone (application shutdown)
            pass
        timer.stop()
        _slice_timers.discard(timer)
        _retiring.discard(scene)
        scene.deleteLater()

    timer.timeout.connect(work)
    QTimer.singleShot(delay_ms, timer.start)


def retiring_scenes() -> int:
    """How many scenes are still being torn down (tests and benchmarks wait for zero)."""
    return len(_retiring)
