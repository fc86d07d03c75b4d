"""Layered top-to-bottom layout of an IR graph: pure geometry, no Qt.

`layout_graph(analysis)` places every visible node of the analysed graph as a
box and routes every edge between visible nodes as a polyline.  The GUI only
turns these numbers into items; a report or the CLI can use them as well.

What is visible:
- compute nodes (not folded constants) always;
- folded constant nodes (`NodeMetrics.is_constant`: `Constant`, the light
  zoo's `ConstantOfShape` weights, shape arithmetic on static shapes) only
  with `include_constants=True`; otherwise they are drawn as weights of the
  node that consumes them, as initializers are, and get no box and no edge;
- shown constants take no part in the layering (as Netron keeps initializers
  out of its graph layout): the other nodes are laid out exactly as with
  constants hidden, so toggling them moves nothing, and each constant is
  attached to the first node that consumes it (through other constants: a
  `ConstantOfShape -> Unsqueeze -> Mul` chain hangs off the `Mul`).  The
  constants of one consumer form a small tree, one row per step away from
  it, drawn as smaller boxes just above and to the left of the consumer (to
  the right when the left is taken; slid further out past whatever is in
  the way, never overlapping a box), with short edges into its top;
- graph inputs and outputs as small boxes with ids `input:NAME` and
  `output:NAME` (`include_io=True`).

Groups (collapsible, as in Model Explorer): `node_groups(analysis, by)` finds
the groups of nodes by stage (encoder/decoder/...) or by namespace
("encoder/block3/conv", nested); `layout_graph(..., groups=, collapsed=)`
draws every node inside a collapsed group as that group's one box (id
`group:...`, the outermost collapsed group wins).  An edge into or out of a
collapsed group attaches to its box, an edge inside it disappears, so every
edge still joins two boxes.  `group_totals` sums a group's node count, MACs,
parameters and (with a profile) time.

Method: longest-path layering along the execution order (sources pulled down
next to their first consumer), then igraph's compiled Sugiyama crossing
reduction and edge routing, which takes about 30 ms for 20,000 nodes.  Its
cost grows with the number of dummy vertices (one per layer an edge skips),
so a graph whose long edges would need more than `MAX_DUMMY_VERTICES` of them
(a tensor read by thousands of layers) gets the "layered" fallback instead:
the same layers, barycenter ordering in numpy and straight edges.

Deterministic: the same graph gives the same boxes and bends in every run and process (in-process or
in the layout helper).  igraph 1.0 misroutes graphs of several unconnected pieces, so each piece is
laid out on its own (`sugiyama_columns`), and its answer is checked before it is drawn
(`_checked_routes`); see docs/known-issues.md.
"""
from __future__ import annotations

import logging
import math
import threading
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, field, replace
from functools import partial
from itertools import chain, repeat
from operator import itemgetter
from typing import TYPE_CHECKING, Iterable, Mapping, NamedTuple, Optional, Sequence

import numpy as np

from engine.gc_pause import collector_paused
from engine.ir import Graph

if TYPE_CHECKING:
    from engine.analysis import ModelAnalysis

_log = logging.getLogger(__name__)

# Scene units (the GUI draws 1 unit = 1 pixel at zoom 1).
NODE_WIDTH = 180.0
NODE_HEIGHT = 50.0
IO_WIDTH = NODE_WIDTH
IO_HEIGHT = 36.0
HORIZONTAL_GAP = 30.0
VERTICAL_GAP = 40.0
# A shown constant's box: small (two lines of text, as a graph input's), so that a chain of two
# sits in the gap between its consumer's layer and the one above (VERTICAL_GAP + NODE_HEIGHT).
CONSTANT_WIDTH = 124.0
CONSTANT_HEIGHT = 30.0
CONSTANT_GAP = 8.0  # between the constants of one consumer
CONSTANT_SIDE_GAP = 12.0  # between a consumer and its constants, and between constants and other boxes
CONSTANT_LIFT = 14.0  # the lowest constants end this far above their consumer's top: room for the edges

# A tensor read by this many boxes of a folded level is drawn in a lane, not laid out (see
# _broadcast_split); lanes are this far apart.
BROADCAST_READERS = 8
BROADCAST_LANE_STEP = 12.0

# Above this many dummy vertices igraph's Sugiyama becomes slow (seconds): use the fallback.
MAX_DUMMY_VERTICES = 200_000

INPUT_PREFIX = "input:"
OUTPUT_PREFIX = "output:"
GROUP_PREFIX = "group:"
GROUP_HEIGHT = 64.0  # a collapsed group's box: room for its totals (and time) under the title
GROUPINGS = ("none", "stage", "namespace")

Point = tuple[float, float]
Rect = tuple[float, float, float, float]  # x, y (top-left), width, height


class LayoutEdge(NamedTuple):  # a NamedTuple: 30,000 of them are built in ~10 ms
    source: str  # node id (or input:NAME, or a collapsed group's box)
    target: str  # node id (or output:NAME, or a collapsed group's box)
    value: str  # the tensor flowing along the edge (of several: the largest)
    points: tuple[Point, ...]  # from the bottom of source to the top of target
    # An edge into or out of a collapsed group stands for every tensor between the two boxes.
    values: tuple[str, ...] = ()


@dataclass(frozen=True)
class GraphLayout:
    boxes: Mapping[str, Rect]  # node id -> rectangle, for every visible node
    edges: tuple[LayoutEdge, ...]
    layers: Mapping[str, int]  # node id -> layer index (0 at the top)
    width: float
    height: float
    method: str  # "sugiyama" or "layered" (the fallback for huge fan-out)
    hidden: frozenset[str] = field(default_factory=frozenset)  # constant nodes without a box
    # Collapsed groups: box id -> the node ids it stands for (constants included), and the reverse.
    members: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    box_for: Mapping[str, str] = field(default_factory=dict)
    # The drawing spans x in [left, width] and y in [top, height]: shown constants beside the
    # leftmost or topmost boxes reach below 0 (the other boxes keep their places).
    left: float = 0.0
    top: float = 0.0

    def center(self, node_id: str) -> Point:
        x, y, w, h = self.boxes[node_id]
        return (x + w / 2, y + h / 2)

    def box_of(self, node_id: str) -> Optional[str]:
        """The id of the box that draws `node_id`: its own, its collapsed group's, or None (hidden)."""
        if node_id in self.boxes:
            return node_id
        return self.box_for.get(node_id)


@dataclass(frozen=True)
class NodeGroup:
    """Nodes that can be drawn as one box: a stage, or a namespace (nested: `parent` is the enclosing one)."""

    id: str  # GROUP_PREFIX + kind + ":" + name
    kind: str  # "stage" or "namespace"
    name: str  # "decoder", "encoder/block3"
    members: tuple[str, ...]  # node ids in execution order, constants included
    parent: Optional[str] = None
    depth: int = 0

    @property
    def title(self) -> str:
        return self.name.rsplit("/", 1)[-1]


@dataclass(frozen=True)
class GroupTotals:
    """What a collapsed group's box carries.  MACs and parameters are estimated (static analysis)."""

    nodes: int  # compute nodes (folded constants not counted)
    macs: int  # sum of the known MACs
    params: int
    unknown_cost_nodes: int  # compute nodes whose MACs are unknown (not in `macs`)
    flops: int = 0  # sums of the known figures, as `macs`
    output_bytes: int = 0
    bytes_moved: int = 0
    time_ms: Optional[float] = None  # sum of the profile's node medians; None without a profile
    time_kind: str = ""  # measured / attributed / estimated: the weakest of the summed figures
    timed_nodes: int = 0

    @property
    def arithmetic_intensity(self) -> Optional[float]:
        """FLOPs per byte moved over the whole group (None when nothing is known)."""
        return self.flops / self.bytes_moved if self.bytes_moved else None


# Op categories for colouring and legends; matched after costs.canonical_op.
OP_CATEGORIES = ("conv/linear", "normalization", "activation", "pooling", "data movement",
                 "upsampling", "elementwise", "constant", "io", "other")
_CATEGORY_OF = {}
for _op in ("Conv", "Gemm", "MatMul", "ConvInteger", "QLinearConv", "MatMulInteger", "QLinearMatMul",
            "Einsum", "LSTM", "GRU", "RNN", "Attention", "FusedConv", "FusedMatMul"):
    _CATEGORY_OF[_op] = "conv/linear"
for _op in ("BatchNormalization", "InstanceNormalization", "LayerNormalization", "GroupNormalization",
            "LRN", "LpNormalization", "MeanVarianceNormalization", "SimplifiedLayerNormalization",
            "SkipLayerNormalization", "RMSNormalization"):
    _CATEGORY_OF[_op] = "normalization"
for _op in ("Relu", "Clip", "Sigmoid", "Tanh", "LeakyRelu", "HardSigmoid", "HardSwish", "Gelu", "Elu",
            "Selu", "Softplus", "Softsign", "Swish", "PRelu", "Softmax", "LogSoftmax", "Mish", "Celu",
            "ThresholdedRelu", "activation", "QuickGelu", "FastGelu", "BiasGelu"):
    _CATEGORY_OF[_op] = "activation"
for _op in ("MaxPool", "AveragePool", "LpPool", "GlobalAveragePool", "GlobalMaxPool", "GlobalLpPool",
            "MaxRoiPool", "RoiAlign", "pooling", "ReduceMean", "ReduceMax", "ReduceMin", "ReduceSum",
            "ReduceProd", "ReduceL2", "ReduceL1"):
    _CATEGORY_OF[_op] = "pooling"
for _op in ("Reshape", "Flatten", "Squeeze", "Unsqueeze", "Transpose", "Concat", "Split", "Slice",
            "Gather", "GatherElements", "GatherND", "Pad", "Tile", "Expand", "Identity", "Cast",
            "SpaceToDepth", "Shape", "Size", "Dropout", "ScatterND", "ScatterElements", "Where",
            "CastLike", "Compress", "OneHot", "NonZero", "TopK", "ArgMax", "ArgMin", "Range"):
    _CATEGORY_OF[_op] = "data movement"
for _op in ("ConvTranspose", "Resize", "Upsample", "DepthToSpace"):
    _CATEGORY_OF[_op] = "upsampling"
for _op in ("Add", "Sub", "Mul", "Div", "Pow", "Sqrt", "Exp", "Log", "Abs", "Neg", "Max", "Min",
            "Sum", "Mean", "Reciprocal", "Floor", "Ceil", "Round", "Erf", "Sin", "Cos", "Equal",
            "Less", "Greater", "And", "Or", "Not", "Xor", "Mod", "Sign", "LessOrEqual", "GreaterOrEqual"):
    _CATEGORY_OF[_op] = "elementwise"
for _op in ("Constant", "ConstantOfShape"):
    _CATEGORY_OF[_op] = "constant"


def op_category(op_type: str) -> str:
    """The colour category of an op type (ONNX names; Core ML names through the canonical table)."""
    category = _CATEGORY_OF.get(op_type)
    if category is None:
        # Remembered: the scene asks once per box (20,000 times for a big model), and an import
        # statement per call was half the cost of labelling the boxes.
        category = _category_of_other.get(op_type)
        if category is None:
            from engine.analysis.costs import CANONICAL_OP
            category = _category_of_other[op_type] = _CATEGORY_OF.get(CANONICAL_OP.get(op_type, op_type), "other")
    return category


_category_of_other: dict[str, str] = {}  # op types not in _CATEGORY_OF -> their category


def layout_graph(analysis: "ModelAnalysis", include_constants: bool = False, include_io: bool = True,
                 max_dummy_vertices: int = MAX_DUMMY_VERTICES, groups: Optional[Mapping[str, NodeGroup]] = None,
                 collapsed: Iterable[str] = (), broadcast_lanes: bool = False,
                 inputs_beside: Sequence[tuple[str, str, str]] = (),
                 left_out_inputs: frozenset[str] = frozenset()) -> GraphLayout:
    """Lay out the analysed graph; see the module docstring for what is visible.

    `groups` (from `node_groups`) and `collapsed` (ids of groups drawn as one box each);
    `broadcast_lanes` and `left_out_inputs` as `layout_nodes`'; `inputs_beside` drawn by
    `attach_inputs` (engine.folded_layout's root level).
    """
    if include_constants:
        without = layout_graph(analysis, False, include_io, max_dummy_vertices, groups, collapsed,
                               broadcast_lanes, inputs_beside, left_out_inputs)
        return attach_constants(without, analysis, include_io)
    graph = analysis.graph
    global _last_tensors
    key = (include_constants, include_io)
    cached = _last_tensors  # one read: worker threads may lay out another model meanwhile
    if cached[0] is analysis and cached[1] == key:
        visible, hidden, tensors = cached[2]
    else:
        metrics = analysis.nodes  # constants are hidden here (shown ones are attached above)
        visible = [node_id for node_id in analysis.order if not metrics[node_id].is_constant]
        hidden = frozenset(node_id for node_id in analysis.order if metrics[node_id].is_constant)
        constant_values = {name for name, value in graph.values.items() if value.initializer is not None}
        tensors = _node_pairs(graph, visible, include_io, constant_values)
        _last_tensors = (analysis, key, (visible, hidden, tensors))
    box_for, members = collapsed_boxes(groups or {}, collapsed)
    layout = layout_nodes(graph, visible, include_io=include_io, hidden=hidden,
                        max_dummy_vertices=max_dummy_vertices, box_for=box_for, members=members, tensors=tensors,
                        broadcast_lanes=broadcast_lanes, left_out_inputs=left_out_inputs)
    return attach_inputs(layout, list(inputs_beside)) if inputs_beside else layout


# The visible nodes and tensors of the model laid out last: opening or closing a group of the
# same model lays it out again with the same ones (the analysis is immutable).
_last_tensors: tuple = (None, None, None)


def layout_nodes(graph: Graph, visible_order: Sequence[str], include_io: bool = True,
                 hidden: frozenset[str] = frozenset(), max_dummy_vertices: int = MAX_DUMMY_VERTICES,
                 box_for: Optional[Mapping[str, str]] = None,
                 members: Optional[Mapping[str, tuple[str, ...]]] = None, tensors=None,
                 broadcast_lanes: bool = False, left_out_inputs: frozenset[str] = frozenset(),
                 left_out_outputs: frozenset[str] = frozenset()) -> GraphLayout:
    """Lay out the nodes `visible_order` (a topological order of node ids) of `graph`.

    `box_for` maps nodes inside collapsed groups to their group's box id (see `collapsed_boxes`).
    `tensors`: `_node_pairs` of these nodes, when the caller has them already.
    `broadcast_lanes`: a tensor read by BROADCAST_READERS boxes or more takes no part in the
    layering and is drawn in a lane left of the boxes (`_broadcast_edges`).  `left_out_inputs`:
    names of graph inputs neither drawn nor read here (engine.folded_layout draws them beside
    their reader, `attach_inputs`).  `left_out_outputs`: names of graph outputs not drawn here
    (engine.folded_layout draws them beside the box making them, `attach_outputs`).
    """
    box_for = dict(box_for or {})
    members = dict(members or {})
    ids: list[str] = []
    sizes: list[tuple[float, float]] = []
    index: dict[str, int] = {}

    def add_vertex(vertex_id: str, size: tuple[float, float]) -> int:
        index[vertex_id] = len(ids)
        ids.append(vertex_id)
        sizes.append(size)
        return index[vertex_id]

    # Every (producer, consumer, tensor) between visible nodes (and graph inputs) in execution
    # order: one pass over the model, shared by the box order and the edges.  A relayout that
    # opens one group of a folded 100,000-node model used to walk the model four times.
    if tensors is None:
        constant_values = {name for name, value in graph.values.items() if value.initializer is not None}
        tensors = _node_pairs(graph, visible_order, include_io, constant_values)
    pairs, producer_of = tensors
    if left_out_inputs and include_io:
        pairs = [pair for pair in pairs if pair[0][len(INPUT_PREFIX):] not in left_out_inputs
                 or not pair[0].startswith(INPUT_PREFIX)]
    # The boxes: a node's own, or its collapsed group's (first appearance in execution order).
    box_ids = list(dict.fromkeys((box_for.get(node_id, node_id) for node_id in visible_order) if box_for
                                 else visible_order))
    if box_for:
        box_ids = _box_order(box_ids, pairs, box_for)
    if include_io:
        for name in graph.inputs:
            # Not a weight listed as an input.
            if getattr(graph.values.get(name), "initializer", None) is None and name not in left_out_inputs:
                add_vertex(INPUT_PREFIX + name, (IO_WIDTH, IO_HEIGHT))
    # The boxes at once (add_vertex's work, 20,000 calls for a model laid out whole).
    first_box = len(ids)
    ids += box_ids
    if members:
        sizes += [(NODE_WIDTH, GROUP_HEIGHT) if box_id in members else (NODE_WIDTH, NODE_HEIGHT) for box_id in box_ids]
    else:
        sizes += [(NODE_WIDTH, NODE_HEIGHT)] * len(box_ids)
    index.update(zip(box_ids, range(first_box, len(ids))))
    # Edges (source vertex, target vertex, value); one per distinct (source, target, value), in
    # the order of first appearance.  An edge inside a collapsed group (source == target) is not drawn.
    vertex = index.__getitem__
    if box_for:
        box = box_for.get
        keys = [(vertex(box(s, s)), vertex(box(t, t)), name) for s, t, name in pairs]
    else:
        keys = [(vertex(s), vertex(t), name) for s, t, name in pairs]
    edge_list: list[tuple[int, int, str]] = [key for key in dict.fromkeys(keys) if key[0] != key[1]]
    broadcast: list[tuple[int, int, str]] = []
    if broadcast_lanes:
        edge_list, broadcast = _broadcast_split(edge_list)
    if include_io:
        for name in graph.outputs:
            if name in left_out_outputs:
                continue
            source_node = producer_of.get(name)
            source = index[box_for.get(source_node, source_node)] if source_node is not None else None
            target = add_vertex(OUTPUT_PREFIX + name, (IO_WIDTH, IO_HEIGHT))
            if source is not None:
                edge_list.append((source, target, name))

    if members:
        group_vertices = {index[b] for b in members if b in index}
        edge_list, edge_values = _merge_group_edges(edge_list, group_vertices, graph)
        if broadcast:
            broadcast, broadcast_values = _merge_group_edges(broadcast, group_vertices, graph)
    else:
        edge_values = None
        broadcast_values = [()] * len(broadcast)
    visible_members = {box: group_members for box, group_members in members.items() if box in index}
    drawn_box_for = {node_id: box for node_id, box in box_for.items() if box in index}
    count = len(ids)
    if count == 0:
        return GraphLayout({}, (), {}, 0.0, 0.0, "sugiyama", hidden, visible_members, drawn_box_for)
    vertex_pairs = _vertex_pairs(edge_list)
    layers = _longest_path_layers(count, vertex_pairs)
    dummies = int(np.maximum(0, layers[vertex_pairs[:, 1]] - layers[vertex_pairs[:, 0]] - 1).sum())
    laid_out = _sugiyama(count, vertex_pairs, layers) if dummies <= max_dummy_vertices else None
    if laid_out is not None:
        (columns, routes), method = laid_out, "sugiyama"
    else:
        columns, routes = _barycenter_columns(count, vertex_pairs, layers), None
        method = "layered"
    layout = _to_scene(ids, sizes, layers, columns, edge_list, vertex_pairs, routes, method, hidden,
                       visible_members, drawn_box_for, edge_values)
    return _broadcast_edges(layout, ids, broadcast, broadcast_values) if broadcast else layout


def attach_inputs(layout: GraphLayout, beside: list[tuple[str, str, str]]) -> GraphLayout:
    """`layout` with the graph inputs of `beside` ((input box, box reading it, tensor)) drawn as
    shown constants are (`attach_constants`): a box's inputs in a row just left of it and above
    it (or right, or slid outward: `_constant_spots`), each with a short edge into the middle of
    the box's top (where a laid-out edge ends: an opened frame's lanes start there)."""
    by_box: dict[str, list[tuple[str, str]]] = {}
    for input_box, reader, name in beside:
        by_box.setdefault(reader, []).append((input_box, name))
    anchors = list(by_box)
    step = IO_WIDTH + CONSTANT_GAP
    sizes = [(len(by_box[anchor]) * step - CONSTANT_GAP, IO_HEIGHT) for anchor in anchors]
    old = np.array(list(layout.boxes.values()), dtype=float).reshape(-1, 4)
    anchor_box = np.array([layout.boxes[anchor] for anchor in anchors], dtype=float).reshape(-1, 4)
    spots = _constant_spots(layout, old, anchors, anchor_box, sizes)
    boxes, layers, edges = dict(layout.boxes), dict(layout.layers), list(layout.edges)
    for anchor, (x, top, _) in zip(anchors, spots):
        ax, ay, aw, _ = layout.boxes[anchor]
        entry_x, level = ax + min(aw, NODE_WIDTH) / 2, ay - CONSTANT_LIFT / 2
        for k, (input_box, name) in enumerate(by_box[anchor]):
            left = x + k * step
            boxes[input_box] = (left, top, IO_WIDTH, IO_HEIGHT)
            layers[input_box] = layers[anchor]  # its reader's row (engine.folded_layout: not its extent)
            start_x = left + IO_WIDTH / 2
            edges.append(LayoutEdge(input_box, anchor, name, down_across((start_x, top + IO_HEIGHT), (entry_x, ay),
                                                                         level), (name,)))
    return _with_boxes(layout, boxes, edges, layers)


def _with_boxes(layout: GraphLayout, boxes: dict, edges: list, layers: dict) -> GraphLayout:
    """`layout` with boxes and edges added (`boxes`, `edges`, `layers`: all of them), its extent grown."""
    placed = np.array(list(boxes.values()), dtype=float).reshape(-1, 4)
    return GraphLayout(boxes, tuple(edges), layers, max(layout.width, float((placed[:, 0] + placed[:, 2]).max())),
                       max(layout.height, float((placed[:, 1] + placed[:, 3]).max())), layout.method, layout.hidden,
                       layout.members, layout.box_for, min(layout.left, float(placed[:, 0].min())),
                       min(layout.top, float(placed[:, 1].min())))


def down_across(start: Point, end: Point, level: float) -> tuple[Point, Point, Point, Point]:
    """An edge from `start` (a box's bottom) down to `level`, across and down into `end` (a box's top)."""
    return (start, (start[0], level), (end[0], level), end)


def attach_outputs(layout: GraphLayout, beside: list[tuple[str, Optional[str], str, str]]) -> GraphLayout:
    """`layout` with the graph outputs of `beside` ((box making it, the node between them or None,
    tensor out of the box, output name)) drawn beside the box making them, mirroring
    `attach_inputs` (a decoder's `present.N.key/value` below block N, not in a bottom row 100,000
    units wide fed by a fan of long edges): the nodes between (an Identity each) in a row
    CONSTANT_LIFT below the box's bottom, right of it, the outputs in a row below them and
    right of them, so that every edge runs down into a box.  The rows below move down to make room
    (the boxes of the next row are closer than that), and the whole slides right past whatever is
    in the way.  Their row (`layers`) is the box's plus a half: engine.folded_layout moves them
    down, not aside, with the rows below when the box opens."""
    by_box: dict[str, list[tuple[Optional[str], str, str]]] = {}
    for box, feeder, tensor, name in beside:
        by_box.setdefault(box, []).append((feeder, tensor, name))
    if not by_box:
        return layout
    ids = list(layout.boxes)
    rects = np.array([layout.boxes[b] for b in ids], dtype=float).reshape(-1, 4)
    tops, bottoms = rects[:, 1], rects[:, 1] + rects[:, 3]
    # Room below each box's row: the rows below move down by what the outputs need more than the gap.
    needs: dict[float, float] = {}
    for box, outputs in by_box.items():
        x, y, w, h = layout.boxes[box]
        row_bottom = float(bottoms[tops < y + h].max())  # its row's (and those above) lowest box
        below = tops[tops >= y + h]
        height = _outputs_height(outputs)
        if len(below):
            needs[row_bottom] = max(needs.get(row_bottom, 0.0), row_bottom + height + CONSTANT_LIFT - float(below.min()))
    cuts = np.array(sorted(needs), dtype=float)
    extra = np.cumsum([max(0.0, needs[c]) for c in sorted(needs)]) if needs else np.zeros(0)

    def moved(y: np.ndarray) -> np.ndarray:  # y plus the room made above it
        k = np.searchsorted(cuts, y, side="left")  # cuts strictly above y
        return y + np.where(k > 0, extra[np.maximum(k - 1, 0)], 0.0)

    if len(cuts) and extra[-1] > 0:
        rects[:, 1] = moved(rects[:, 1])
        lists = [e.points for e in layout.edges]
        counts = np.fromiter(map(len, lists), dtype=np.int64, count=len(lists))
        points = np.fromiter(chain.from_iterable(chain.from_iterable(lists)), dtype=float,
                             count=2 * int(counts.sum())).reshape(-1, 2)
        points[:, 1] = moved(points[:, 1])
        flat = list(map(tuple, points.tolist()))
        ends = np.cumsum(counts).tolist()
        edges = [LayoutEdge(e.source, e.target, e.value, tuple(flat[end - n:end]), e.values)
                 for e, n, end in zip(layout.edges, counts.tolist(), ends)]
    else:
        edges = list(layout.edges)
    boxes = dict(zip(ids, map(tuple, rects.tolist())))
    layers: dict = dict(layout.layers)
    obstacles = _Obstacles(chain(boxes.values(), _vertical_runs(edges).tolist()))
    step = IO_WIDTH + CONSTANT_GAP
    for box, outputs in by_box.items():
        ax, ay, aw, ah = boxes[box]
        feeders = sum(feeder is not None for feeder, _, _ in outputs)
        node_top = ay + ah + CONSTANT_LIFT
        output_top = node_top + (NODE_HEIGHT + CONSTANT_LIFT if feeders else 0.0)
        width, height = (feeders + len(outputs)) * step - CONSTANT_GAP, _outputs_height(outputs) - CONSTANT_LIFT
        x, _ = obstacles.free_x(ax + aw / 2, ax + aw, node_top, width, height, sides=("right",))
        obstacles.add((x, node_top, width, height))
        exit_point = (ax + min(aw, NODE_WIDTH) / 2, ay + ah)  # where a laid-out edge starts (an opened frame's lanes end)
        row = layers.get(box, 0) + 0.5
        k = 0
        for j, (feeder, tensor, name) in enumerate(outputs):
            output_box, output_x = OUTPUT_PREFIX + name, x + (feeders + j) * step
            boxes[output_box], layers[output_box] = (output_x, output_top, IO_WIDTH, IO_HEIGHT), row
            into_output = (output_x + IO_WIDTH / 2, output_top)
            if feeder is None:
                edges.append(LayoutEdge(box, output_box, name, down_across(exit_point, into_output,
                                                                           ay + ah + CONSTANT_LIFT / 2)))
                continue
            feeder_x = x + k * step
            boxes[feeder], layers[feeder] = (feeder_x, node_top, NODE_WIDTH, NODE_HEIGHT), row
            edges.append(LayoutEdge(box, feeder, tensor, down_across(exit_point, (feeder_x + NODE_WIDTH / 2, node_top),
                                                                     ay + ah + CONSTANT_LIFT / 2)))
            # Each feeder's edge runs across at its own height: they would overlap at one.
            level = node_top + NODE_HEIGHT + CONSTANT_LIFT * (feeders - k) / (feeders + 1)
            edges.append(LayoutEdge(feeder, output_box, name, down_across(
                (feeder_x + NODE_WIDTH / 2, node_top + NODE_HEIGHT), into_output, level)))
            k += 1
    grown = float(extra[-1]) if len(extra) else 0.0
    return _with_boxes(replace(layout, height=layout.height + grown), boxes, edges, layers)


def _outputs_height(outputs: list) -> float:
    """From a box's bottom to the bottom of its outputs drawn beside it (attach_outputs)."""
    feeders = any(feeder is not None for feeder, _, _ in outputs)
    return CONSTANT_LIFT + (NODE_HEIGHT + CONSTANT_LIFT if feeders else 0.0) + IO_HEIGHT


def _broadcast_split(edges: list[tuple[int, int, str]]) -> tuple[list, list]:
    """(edges laid out, edges drawn in lanes): a tensor read by BROADCAST_READERS boxes or more (a
    decoder's attention mask, its rotary cos and sin, read by every block) goes to a lane, with
    every other tensor between the same two boxes (one edge joins them).  In the layering each
    such edge needs a dummy vertex per row it skips: 750 of them beside the blocks of a
    250-block decoder spread the level 100,000 units wide and the blocks in a staircase."""
    readers: dict[str, int] = {}
    for _, _, name in edges:
        readers[name] = readers.get(name, 0) + 1
    wide = {name for name, count in readers.items() if count >= BROADCAST_READERS}
    if not wide:
        return edges, []
    pairs = {(source, target) for source, target, name in edges if name in wide}
    return ([edge for edge in edges if (edge[0], edge[1]) not in pairs],
            [edge for edge in edges if (edge[0], edge[1]) in pairs])


def _broadcast_edges(layout: GraphLayout, ids: list[str], edges: list[tuple[int, int, str]],
                     values: list[tuple[str, ...]]) -> GraphLayout:
    """`layout` with `edges` (vertex pairs, see `_broadcast_split`) drawn: from the source's bottom
    into the gap below its row, left to the source's lane (one per source box, left of every box),
    down it to the gap above the reader's row, right and into the reader's top (the k-th lane edge
    at the middle of its top)."""
    boxes = layout.boxes
    half_row = (NODE_HEIGHT + VERTICAL_GAP) / 2
    leftmost = min(x for x, _, _, _ in boxes.values())
    lane_of: dict[int, float] = {}
    drawn = []
    for (source, target, value), names in zip(edges, values):
        lane = lane_of.get(source)
        if lane is None:
            lane = lane_of[source] = leftmost - BROADCAST_LANE_STEP * (len(lane_of) + 1)
        sx, sy, sw, sh = boxes[ids[source]]
        tx, ty, tw, th = boxes[ids[target]]
        entry = tx + min(tw, NODE_WIDTH) / 2  # where a laid-out edge ends (an opened frame's lanes start)
        below, above = sy + sh / 2 + half_row, ty + th / 2 - half_row
        points = ((sx + sw / 2, sy + sh), (sx + sw / 2, below), (lane, below), (lane, above), (entry, above),
                  (entry, ty))
        drawn.append(LayoutEdge(ids[source], ids[target], value, points, names))
    return GraphLayout(boxes, layout.edges + tuple(drawn), layout.layers, layout.width, layout.height,
                       layout.method, layout.hidden, layout.members, layout.box_for,
                       min(layout.left, min(lane_of.values()) - BROADCAST_LANE_STEP), layout.top)


def _merge_group_edges(edges: list[tuple[int, int, str]], group_vertices: set[int], graph: Graph):
    """One edge per pair of boxes when either is a collapsed group (a stage's skip connections
    would otherwise be a fan of parallel edges); it carries the largest tensor, and all of them."""
    merged: dict[tuple[int, int], list[str]] = {}
    kept: list[tuple[int, int, str]] = []
    for source, target, value in edges:
        if source in group_vertices or target in group_vertices:
            if (source, target) not in merged:
                merged[(source, target)] = []
                kept.append((source, target, value))
            merged[(source, target)].append(value)
        else:
            kept.append((source, target, value))

    size = partial(tensor_bytes, graph)
    result, values = [], []
    for source, target, value in kept:
        names = merged.get((source, target))
        if names is None:
            result.append((source, target, value))
            values.append(())
        else:
            result.append((source, target, max(names, key=size)))
            values.append(tuple(names))
    return result, values


def tensor_bytes(graph: Graph, name: str) -> int:
    """The size of tensor `name` (0: unknown): a merged edge is named after its largest tensor."""
    value_type = graph.value_type(name)
    return (value_type.byte_size or 0) if value_type is not None else 0


def _node_pairs(graph: Graph, visible_order: Sequence[str], include_io: bool, constant_values: set[str]
                ) -> tuple[list[tuple[str, str, str]], dict[str, str]]:
    """([(producer, consumer, tensor)] between the visible nodes, in execution order and input
    order; {tensor: producer}).  A producer is a node id or, for a graph input, `input:NAME`."""
    visible_nodes = list(map(graph.nodes_by_id.__getitem__, visible_order))
    producer_of: dict[str, str] = {}
    if include_io:
        for name in graph.inputs:
            if name not in constant_values:
                producer_of[name] = INPUT_PREFIX + name
    # Comprehensions rather than loops of appends: a third faster on 20,000 nodes.
    producer_of.update([(out, node_id) for node_id, node in zip(visible_order, visible_nodes)
                        for out in node.outputs if out])
    producer = producer_of.get
    pairs = [(source, node_id, name) for node_id, node in zip(visible_order, visible_nodes)
             for name in node.inputs if (source := producer(name)) is not None]
    return pairs, producer_of


def attach_constants(layout: GraphLayout, analysis: "ModelAnalysis", include_io: bool = True) -> GraphLayout:
    """`layout` (made with constants hidden) with every hidden constant drawn beside the node it feeds.

    The boxes and edges of `layout` keep their places; see the module docstring for where the
    constants go.  Constants inside a collapsed group stay drawn by the group's box.
    """
    # Thousands of tuples (boxes, edges and their points) and no cycles: see engine.gc_pause.  In
    # an open of DenseNet-121 with its 1,078 constants shown, ~15 collections (~2 ms) ran here.
    with collector_paused():
        return _attach_constants(layout, analysis, include_io)


def _attach_constants(layout: GraphLayout, analysis: "ModelAnalysis", include_io: bool,
                      search_all: bool = False) -> GraphLayout:
    """`attach_constants`; `search_all`: every tree's spot searched for one by one (what the numpy
    check of `_constant_spots` must agree with)."""
    graph, metrics = analysis.graph, analysis.nodes
    nodes = graph.nodes_by_id
    box_for, box_of, old_boxes = layout.box_for, layout.box_of, layout.boxes
    constants = [n for n in analysis.order if metrics[n].is_constant and n not in box_for]
    if not constants:
        return _replace_layout(layout, hidden=frozenset())
    shown = set(constants)
    # Only the tensors into and out of the shown constants are indexed.
    constant_nodes = list(map(nodes.__getitem__, constants))
    their_outputs = {name for node in constant_nodes for name in node.outputs if name}
    their_inputs = {name for node in constant_nodes for name in node.inputs if name}
    consumers: dict[str, list[str]] = {}  # a constant's tensor -> the nodes reading it, in execution order
    for name, node_id in [(name, node_id) for node_id in analysis.order for name in nodes[node_id].inputs
                          if name in their_outputs]:
        consumers.setdefault(name, []).append(node_id)
    producer: dict[str, str] = {}  # a tensor a constant reads -> the box drawing its producer (a constant's own)
    if include_io:
        for name in graph.inputs:
            if name in their_inputs and INPUT_PREFIX + name in old_boxes:
                producer[name] = INPUT_PREFIX + name
    for name, node_id in [(name, node_id) for node_id in analysis.order for name in nodes[node_id].outputs
                          if name in their_inputs]:
        drawn = node_id if node_id in shown else box_of(node_id)
        if drawn is not None:
            producer[name] = drawn
    graph_outputs = set(graph.outputs) if include_io else set()

    # Each constant hangs off its first consumer: another shown constant (its parent in a tree)
    # or a box (the tree's anchor).  A constant nothing draws reads is a tree of its own.
    feeders: dict[str, list[str]] = {}  # a constant or an anchor box -> the constants hanging off it
    anchors: list[str] = []  # in order of first use
    orphans: list[str] = []
    plain: set[str] = set()  # constants with no edge but the one to what they hang off (most of them)
    for constant, node in zip(constants, constant_nodes):
        outputs = node.outputs
        readers = consumers.get(outputs[0], ()) if len(outputs) == 1 else None
        if readers is not None and len(readers) == 1:  # the usual case: one tensor, one reader
            first, reads = readers[0], 1
            if metrics[first].order <= metrics[constant].order:
                first = None
        else:
            own_order = metrics[constant].order
            first, first_order, reads = None, 0, 0
            for name in outputs:
                for reader in consumers.get(name, ()):
                    reads += 1
                    order = metrics[reader].order
                    if order > own_order and (first is None or order < first_order):
                        first, first_order = reader, order
        parent = None
        if first is not None:
            parent = first if first in shown or first in old_boxes else box_for.get(first)
        if parent is None:
            parent = next((OUTPUT_PREFIX + name for name in outputs
                           if name in graph_outputs and OUTPUT_PREFIX + name in old_boxes), None)
            if parent is None:
                orphans.append(constant)
                continue
        elif reads == 1 and len(outputs) == 1 and outputs[0] not in graph_outputs \
                and producer.keys().isdisjoint(node.inputs):
            plain.add(constant)
        hanging = feeders.get(parent)
        if hanging is None:
            feeders[parent] = [constant]
            if parent not in shown:
                anchors.append(parent)
        else:
            hanging.append(constant)

    step_x, step_y = CONSTANT_WIDTH + CONSTANT_GAP, CONSTANT_HEIGHT + CONSTANT_GAP
    trees = [_constant_tree(feeders[anchor], feeders) for anchor in anchors]
    trees += [_constant_tree([orphan], feeders) for orphan in orphans]
    sizes = [(columns * step_x - CONSTANT_GAP, rows * step_y - CONSTANT_GAP) for _, columns, rows in trees]
    old = np.array(list(old_boxes.values()), dtype=float).reshape(-1, 4)
    anchor_box = np.array([old_boxes[anchor] for anchor in anchors], dtype=float).reshape(-1, 4)
    spots = _constant_spots(layout, old, anchors, anchor_box, sizes, search_all)

    # Every constant's box, all at once: its tree's spot, moved by its column and row in the tree.
    names = [constant for cells, _, _ in trees for constant in cells]
    place = np.array([cell for cells, _, _ in trees for cell in cells.values()], dtype=float).reshape(-1, 2)
    owner = np.repeat(np.arange(len(trees)), [len(cells) for cells, _, _ in trees])
    spot = np.array([(x, top) for x, top, _ in spots], dtype=float).reshape(-1, 2)
    tree_height = np.array([rows for _, _, rows in trees], dtype=np.int64)
    xs = spot[owner, 0] + place[:, 0] * step_x
    ys = spot[owner, 1] + (tree_height[owner] - 1 - place[:, 1]) * step_y
    boxes = dict(old_boxes)
    boxes.update(zip(names, zip(xs.tolist(), ys.tolist(), repeat(CONSTANT_WIDTH), repeat(CONSTANT_HEIGHT))))
    layers = dict(layout.layers)
    tree_layers = [layout.layers.get(anchor, 0) for anchor in anchors] + [0] * len(orphans)
    layers.update(zip(names, np.array(tree_layers, dtype=np.int64)[owner].tolist()))

    # Short edges from the bottom of each constant a box reads to the box's top: down, across
    # above the box, down into it (the k-th of a box's constants enters 10 + 9k units in).
    new_edge = tuple.__new__  # skips LayoutEdge's Python-level __new__ (5,000 edges on DenseNet-121)
    # A box's constants are its tree's row 0, in order (the trees of orphans come last: no box).
    root = np.flatnonzero((place[:, 1] == 0) & (owner < len(anchors)))
    tree = owner[root]
    root_counts = np.bincount(tree, minlength=len(anchors))
    roots = [names[i] for i in root.tolist()]
    root_anchor = [anchors[t] for t in tree.tolist()]
    values = [outputs[0] if len(outputs) == 1 and outputs[0] else _tensor_to(nodes, constant, anchor, nodes.get(anchor))
              for constant, anchor, outputs in zip(roots, root_anchor, (nodes[c].outputs for c in roots))]
    k = np.arange(len(roots)) - np.repeat(np.cumsum(root_counts) - root_counts, root_counts)
    ax, ay, aw = anchor_box[tree, 0], anchor_box[tree, 1], anchor_box[tree, 2]
    entry = np.minimum(10.0 + 9.0 * k, aw / 2)
    on_left = np.array([side == "left" for _, _, side in spots[:len(anchors)]], dtype=bool)[tree]
    entry_x = np.where(on_left, ax + entry, ax + aw - entry).tolist()
    start_x, level, ay = (xs[root] + CONSTANT_WIDTH / 2).tolist(), (ay - CONSTANT_LIFT / 2).tolist(), ay.tolist()
    root_edges = [new_edge(LayoutEdge, (constant, anchor, value, ((x0, y0), (x0, y1), (x1, y1), (x1, y2)), ()))
                  for constant, anchor, value, x0, y0, y1, x1, y2
                  in zip(roots, root_anchor, values, start_x, (ys[root] + CONSTANT_HEIGHT).tolist(), level,
                         entry_x, ay)]
    attached: set[tuple[str, str, str]] = set(zip(roots, root_anchor, values))  # drawn as short edges
    # Then, tree by tree, the edges between constants (a constant to the one it feeds), after the tree's
    # short edges.
    edges = list(layout.edges)
    done = 0  # short edges in `edges` so far
    ends = np.cumsum(root_counts).tolist() + [len(roots)] * len(orphans)
    for (cells, _, tree_rows), end in zip(trees, ends):
        if tree_rows == 1:
            continue  # no constant feeds another here
        edges += root_edges[done:end]
        done = end
        for parent in cells:
            px, py, pw, _ = boxes[parent]
            for constant in feeders.get(parent, ()):
                cx, cy, cw, ch = boxes[constant]
                start, end_point = (cx + cw / 2, cy + ch), (px + pw / 2, py)
                middle = (start[1] + end_point[1]) / 2
                points = (start, end_point) if abs(start[0] - end_point[0]) < 1e-6 else \
                    (start, (start[0], middle), (end_point[0], middle), end_point)
                value = _tensor_to(nodes, constant, parent, nodes[parent])
                edges.append(new_edge(LayoutEdge, (constant, parent, value, points, ())))
                attached.add((constant, parent, value))
    edges += root_edges[done:]
    # Every other tensor into or out of a shown constant: a straight edge (a constant read by a
    # second node, a shape computed from a tensor the graph makes).
    seen: set[tuple[str, str, str]] = set()
    for constant, node in zip(constants, constant_nodes):
        if constant in plain:
            continue
        links = [(producer.get(name), constant, name) for name in node.inputs if name]
        links += [(constant, reader if reader in shown else box_of(reader), name)
                  for name in node.outputs if name for reader in consumers.get(name, ())]
        if graph_outputs:
            links += [(constant, OUTPUT_PREFIX + name, name) for name in node.outputs
                      if name in graph_outputs and OUTPUT_PREFIX + name in boxes]
        for key in links:
            source, target, name = key
            if source is None or target is None or source == target or key in attached or key in seen:
                continue
            seen.add(key)
            sx, sy, sw, sh = boxes[source]
            tx, ty, tw, _ = boxes[target]
            edges.append(new_edge(LayoutEdge, (source, target, name, ((sx + sw / 2, sy + sh), (tx + tw / 2, ty)), ())))
    # The drawing's extent: the boxes' and the constants'.
    rights, bottoms = [float((xs + CONSTANT_WIDTH).max())], [float((ys + CONSTANT_HEIGHT).max())]
    lefts, tops = [float(xs.min())], [float(ys.min())]
    if len(old):
        rights.append(float((old[:, 0] + old[:, 2]).max()))
        bottoms.append(float((old[:, 1] + old[:, 3]).max()))
        lefts.append(float(old[:, 0].min()))
        tops.append(float(old[:, 1].min()))
    return GraphLayout(boxes, tuple(edges), layers, max(layout.width, *rights), max(layout.height, *bottoms),
                       layout.method, frozenset(), layout.members, layout.box_for,
                       min(layout.left, *lefts), min(layout.top, *tops))


def _replace_layout(layout: GraphLayout, **changes) -> GraphLayout:
    from dataclasses import replace

    return replace(layout, **changes)


def _tensor_to(nodes, constant: str, reader_box: str, reader) -> str:
    """The tensor from `constant` to the node `reader` (the first one, when a group box reads it)."""
    outputs = [name for name in nodes[constant].outputs if name]
    if len(outputs) == 1:  # the usual case: whatever reads it reads this one
        return outputs[0]
    if reader is not None:
        for name in outputs:
            if name in reader.inputs:
                return name
    if reader_box.startswith(OUTPUT_PREFIX) and reader_box[len(OUTPUT_PREFIX):] in outputs:
        return reader_box[len(OUTPUT_PREFIX):]
    return outputs[0] if outputs else ""


def _constant_tree(roots: Sequence[str], feeders: Mapping[str, list[str]]
                   ) -> tuple[dict[str, tuple[float, int]], int, int]:
    """(constant -> (column, row), columns, rows) of the constants hanging off one box.

    Row 0 holds `roots` (the constants the box reads), row r the constants r steps away; each
    constant's feeders take the columns above it and it sits centred under them.
    """
    chains = _constant_chains(roots, feeders)
    if chains is not None:
        return chains[0], len(roots), chains[1]
    preorder: list[tuple[str, int]] = []
    stack = [(root, 0) for root in reversed(roots)]
    while stack:  # iterative: a chain of shape arithmetic can be longer than Python's recursion limit
        constant, row = stack.pop()
        preorder.append((constant, row))
        stack.extend((feeder, row + 1) for feeder in reversed(feeders.get(constant, ())))
    span: dict[str, int] = {}
    for constant, _ in reversed(preorder):
        span[constant] = max(1, sum(span[f] for f in feeders.get(constant, ())))
    cells: dict[str, tuple[float, int]] = {}
    start_of: dict[str, float] = {}
    next_root = 0.0
    for constant, row in preorder:
        if row == 0:
            start_of[constant], next_root = next_root, next_root + span[constant]
        start = start_of[constant]
        cells[constant] = (start + (span[constant] - 1) / 2, row)
        for feeder in feeders.get(constant, ()):
            start_of[feeder] = start
            start += span[feeder]
    return cells, sum(span[root] for root in roots), 1 + max(row for _, row in preorder)


def _constant_chains(roots: Sequence[str], feeders: Mapping[str, list[str]]
                     ) -> Optional[tuple[dict[str, tuple[float, int]], int]]:
    """`_constant_tree`'s cells and rows when no constant has two feeders (the usual case, a
    `ConstantOfShape -> Unsqueeze -> Mul` chain): each root's chain in a column of its own."""
    cells: dict[str, tuple[float, int]] = {}
    rows = 1
    for column, root in enumerate(roots):
        constant, row = root, 0
        while True:
            cells[constant] = (float(column), row)
            above = feeders.get(constant)
            if not above:
                break
            if len(above) > 1:
                return None
            constant, row = above[0], row + 1
        if row >= rows:
            rows = row + 1
    return cells, rows


def _constant_spots(layout: GraphLayout, old: np.ndarray, anchors: list[str], anchor_box: np.ndarray,
                    sizes: list[tuple[float, float]], search_all: bool = False) -> list[tuple[float, float, str]]:
    """(x, top, side) of each tree of constants: the trees of `anchors` (boxes of `layout`), then
    those of orphans (no box reads them), `sizes` their (width, height), in that order.  `old`:
    the boxes of `layout` (rows x, y, width, height), `anchor_box` those of `anchors`.

    A tree goes just left of its box, bottom CONSTANT_LIFT above the box's top, or, where that
    spot is taken (by a box, an edge's vertical run or a tree placed before), as near as it can
    by sliding left or right (`_Obstacles.free_x`).  Most spots are free: they are found for all
    trees at once with numpy, and the search runs from the first tree whose spot is not
    (`search_all`: from the first tree).
    """
    runs = _vertical_runs(layout.edges)
    spots: list[tuple[float, float, str]] = []
    count = len(anchors)
    if count and not search_all:
        size = np.array(sizes[:count], dtype=float).reshape(-1, 2)
        ax, ay, aw = anchor_box[:, 0], anchor_box[:, 1], anchor_box[:, 2]
        w, h = size[:, 0], size[:, 1]
        # As free_x computes them (the same float operations): the spot just left of the box, and
        # how far from the box it and the first spot on the right are.
        x, y = ax - CONSTANT_SIDE_GAP - w, ay - CONSTANT_LIFT - h
        right = ax + aw
        left_distance, right_distance = ax - (x + w), (right + CONSTANT_SIDE_GAP) - right
        gap = CONSTANT_SIDE_GAP
        query = np.stack([x - gap, x + w + gap, y - gap, y + h + gap], axis=1)
        taken = right_distance < left_distance  # rounding: the right might be nearer, searched
        # What could be in the way: every box, every vertical run, every spot before (the trees
        # before the first taken spot are placed there).
        rects = np.concatenate([old, runs])
        obstacles = len(rects)
        hit, by = _overlapping(query, np.concatenate([
            np.stack([rects[:, 0], rects[:, 0] + rects[:, 2], rects[:, 1], rects[:, 1] + rects[:, 3]], axis=1),
            np.stack([x, x + w, y, y + h], axis=1)]))
        taken[hit[(by < obstacles) | (by - obstacles < hit)]] = True
        settled = int(np.argmax(taken)) if taken.any() else count
        spots = list(zip(x[:settled].tolist(), y[:settled].tolist(), repeat("left")))
    return _searched_spots(layout, old, runs, anchors, sizes, spots)


def _searched_spots(layout: GraphLayout, old: np.ndarray, runs: np.ndarray, anchors: list[str],
                    sizes: list[tuple[float, float]], spots: list[tuple[float, float, str]]
                    ) -> list[tuple[float, float, str]]:
    """`spots` (those of the first trees, placed) followed by the spots of the other trees, one
    at a time, each searched for with `_Obstacles.free_x`; the arguments as `_constant_spots`'s,
    `runs` the vertical runs of the layout's edges."""
    spots = list(spots)
    if len(spots) == len(sizes):
        return spots
    obstacles = _Obstacles(chain(layout.boxes.values(), runs.tolist()))
    for (x, top, _), (w, h) in zip(spots, sizes):
        obstacles.add((x, top, w, h))
    leftmost = float(old[:, 0].min()) if len(old) else 0.0
    for index in range(len(spots), len(sizes)):
        width, height = sizes[index]
        if index < len(anchors):
            ax, ay, aw, _ = layout.boxes[anchors[index]]
            top = ay - CONSTANT_LIFT - height
            x, side = obstacles.free_x(ax, ax + aw, top, width, height)
        else:  # an orphan: left of everything, at the top
            top = height + CONSTANT_LIFT - CONSTANT_LIFT - height
            x, side = obstacles.free_x(leftmost, leftmost, 0.0, width, height, sides=("left",))
        obstacles.add((x, top, width, height))
        spots.append((x, top, side))
    return spots


def _vertical_runs(edges: Sequence[LayoutEdge]) -> np.ndarray:
    """The vertical segments of `edges` as 2-unit-wide rectangles, rows (x, y, width, height): a
    long edge runs straight down its column past many layers, and constants must not sit on it."""
    point_lists = [edge.points for edge in edges]
    counts = np.fromiter(map(len, point_lists), dtype=np.int64, count=len(point_lists))
    points = np.fromiter(chain.from_iterable(chain.from_iterable(point_lists)), dtype=float,
                         count=2 * int(counts.sum())).reshape(-1, 2)
    start, end = points[:-1], points[1:]
    vertical = (np.abs(end[:, 0] - start[:, 0]) < 1.0) & (np.abs(end[:, 1] - start[:, 1]) > 1.0)
    vertical[np.cumsum(counts)[:-1] - 1] = False  # from an edge's last point to the next edge's first
    start, end = start[vertical], end[vertical]
    x, top, bottom = np.minimum(start[:, 0], end[:, 0]), np.minimum(start[:, 1], end[:, 1]), \
        np.maximum(start[:, 1], end[:, 1])
    if not len(x):
        return np.zeros((0, 4))
    # Runs down one line that overlap are one run: a lane's edges run down it together (250 of
    # them beside a decoder's blocks), each a rectangle in every bucket it passes (_Obstacles).
    order = np.lexsort((top, x))
    x, top, bottom = x[order], top[order], bottom[order]
    line = np.r_[0, np.cumsum(x[1:] != x[:-1])]
    reach = np.maximum.accumulate(bottom + line * 1e12) - line * 1e12  # lowest end so far on the line
    first = np.r_[True, (line[1:] != line[:-1]) | (top[1:] > reach[:-1])]
    starts = np.flatnonzero(first)
    ends = np.r_[starts[1:], len(x)] - 1
    return np.stack([x[starts] - 1.0, top[starts], np.full(len(starts), 2.0), reach[ends] - top[starts]], axis=1)


def _overlapping(queries: np.ndarray, spans: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(query, span) index pairs of the rectangles that overlap (open intervals), both given as
    rows (left, right, top, bottom); a pair may come twice.  Bucketed as `_Obstacles` does."""
    cell = _Obstacles.CELL

    def buckets(rows: np.ndarray):
        first_i, first_j = np.floor(rows[:, 0] / cell), np.floor(rows[:, 2] / cell)
        across = (np.floor(rows[:, 1] / cell) - first_i + 1).astype(np.int64)
        down = (np.floor(rows[:, 3] / cell) - first_j + 1).astype(np.int64)
        reach = across * down
        owner = np.repeat(np.arange(len(rows)), reach)
        k = np.arange(len(owner)) - np.repeat(np.cumsum(reach) - reach, reach)
        return owner, (first_i[owner] + k // down[owner]).astype(np.int64), \
            (first_j[owner] + k % down[owner]).astype(np.int64)

    none = np.zeros(0, dtype=np.int64)
    if not len(queries) or not len(spans):
        return none, none
    query, query_i, query_j = buckets(queries)
    span, span_i, span_j = buckets(spans)
    low_i, low_j = min(query_i.min(), span_i.min()), min(query_j.min(), span_j.min())
    height = max(query_j.max(), span_j.max()) - low_j + 1
    query_key, span_key = (query_i - low_i) * height + query_j - low_j, (span_i - low_i) * height + span_j - low_j
    order = np.argsort(span_key, kind="stable")
    span_key, span = span_key[order], span[order]
    start, stop = np.searchsorted(span_key, query_key, "left"), np.searchsorted(span_key, query_key, "right")
    found = stop - start
    query = np.repeat(query, found)
    span = span[np.repeat(start, found) + np.arange(len(query)) - np.repeat(np.cumsum(found) - found, found)]
    q, r = queries[query], spans[span]
    overlap = (r[:, 0] < q[:, 1]) & (r[:, 1] > q[:, 0]) & (r[:, 2] < q[:, 3]) & (r[:, 3] > q[:, 2])
    return query[overlap], span[overlap]


class _Obstacles:
    """Rectangles constants must keep clear of: boxes, vertical runs of edges, placed constants.

    A grid of buckets (each holding the rectangles that reach into it), so that finding what a
    rectangle hits costs about the same at any size.
    """

    CELL = 256.0

    def __init__(self, rects: Iterable[Rect]):
        self.cells: dict[tuple[int, int], list[Rect]] = {}
        for rect in rects:
            self.add(rect)

    def add(self, rect: Rect) -> None:
        x, y, w, h = rect
        cell, cells, floor = self.CELL, self.cells, math.floor
        rows = range(floor(y / cell), floor((y + h) / cell) + 1)
        for i in range(floor(x / cell), floor((x + w) / cell) + 1):
            for j in rows:
                bucket = cells.get((i, j))
                if bucket is None:
                    cells[(i, j)] = [rect]
                else:
                    bucket.append(rect)

    def hits(self, x: float, y: float, w: float, h: float) -> list[Rect]:
        """The rectangles closer than CONSTANT_SIDE_GAP to (x, y, w, h) (one reaching into two
        buckets is listed twice)."""
        gap, cell, cells, floor = CONSTANT_SIDE_GAP, self.CELL, self.cells, math.floor
        x0, y0, x1, y1 = x - gap, y - gap, x + w + gap, y + h + gap
        rows = range(floor(y0 / cell), floor(y1 / cell) + 1)
        return [r for i in range(floor(x0 / cell), floor(x1 / cell) + 1) for j in rows for r in cells.get((i, j), ())
                if r[0] < x1 and r[0] + r[2] > x0 and r[1] < y1 and r[1] + r[3] > y0]

    def free_x(self, left: float, right: float, y: float, w: float, h: float,
               sides: Sequence[str] = ("left", "right")) -> tuple[float, str]:
        """The x of a free w x h rectangle at height y nearest to the span [left, right]: just left
        of it, or just right of it, slid outward past whatever is in the way (the nearer wins)."""
        best: Optional[tuple[float, float, str]] = None
        for side in sides:
            x = left - CONSTANT_SIDE_GAP - w if side == "left" else right + CONSTANT_SIDE_GAP
            if best is not None and (x - right if side == "right" else left - (x + w)) >= best[0]:
                continue  # sliding only takes it further: this side cannot be nearer
            while True:
                hit = self.hits(x, y, w, h)
                if not hit:
                    break
                if side == "left":
                    x = min(r[0] for r in hit) - CONSTANT_SIDE_GAP - w - 1e-6
                else:
                    x = max(r[0] + r[2] for r in hit) + CONSTANT_SIDE_GAP + 1e-6
            distance = (left - (x + w)) if side == "left" else (x - right)
            if best is None or distance < best[0]:
                best = (distance, x, side)
        return best[1], best[2]


def _box_order(box_ids: list[str], pairs: list[tuple[str, str, str]], box_for: Mapping[str, str]) -> list[str]:
    """The boxes in a topological order of the graph between boxes (first appearance breaks ties).

    Collapsing a group whose nodes are not contiguous in the graph (a path leaves the group and
    comes back) makes a cycle between boxes; then the box that appears first goes first, and
    the layering ignores the edges that go back (they are still drawn).
    """
    import heapq

    rank = {box: position for position, box in enumerate(box_ids)}
    successors: dict[str, set[str]] = {box: set() for box in box_ids}
    indegree = dict.fromkeys(box_ids, 0)
    for source_node, target_node, _ in pairs:
        if source_node not in rank and source_node not in box_for:
            continue  # a graph input: not a box
        source, target = box_for.get(source_node, source_node), box_for.get(target_node, target_node)
        if source != target and target not in successors[source]:
            successors[source].add(target)
            indegree[target] += 1
    ready = [(rank[box], box) for box in box_ids if indegree[box] == 0]
    heapq.heapify(ready)
    placed: set[str] = set()
    order: list[str] = []
    remaining = iter(box_ids)
    while len(order) < len(box_ids):
        if not ready:  # a cycle: take the earliest box not placed yet
            box = next(b for b in remaining if b not in placed)
            heapq.heappush(ready, (rank[box], box))
            indegree[box] = 0
        _, box = heapq.heappop(ready)
        if box in placed:
            continue
        placed.add(box)
        order.append(box)
        for successor in successors[box]:
            indegree[successor] -= 1
            if indegree[successor] == 0 and successor not in placed:
                heapq.heappush(ready, (rank[successor], successor))
    return order


def collapsed_boxes(groups: Mapping[str, NodeGroup], collapsed: Iterable[str]
                    ) -> tuple[dict[str, str], dict[str, tuple[str, ...]]]:
    """(node id -> box id, box id -> member node ids) for the collapsed groups.

    A node inside several collapsed groups (nested namespaces) is drawn by the outermost.
    """
    closed = {group_id for group_id in collapsed if group_id in groups}
    box_for: dict[str, str] = {}
    members: dict[str, tuple[str, ...]] = {}
    # In the groups' order, not the set's: a set of strings iterates in an order that changes
    # with each process's hash seed, and the layout would too.
    for group_id in (g for g in groups if g in closed):
        parent, outermost = groups[group_id].parent, True
        while parent is not None:
            if parent in closed:
                outermost = False
                break
            parent = groups[parent].parent if parent in groups else None
        if outermost:
            members[group_id] = groups[group_id].members
            for node_id in groups[group_id].members:
                box_for[node_id] = group_id
    return box_for, members


def node_groups(analysis: "ModelAnalysis", by: str) -> dict[str, NodeGroup]:
    """The collapsible groups of the analysed graph, by "stage", "namespace" or "none" (no groups).

    Stages come from `engine.analysis.stages` (encoder, bottleneck, decoder, head).
    Namespaces are the nodes' scope paths ("encoder/block3/conv"), nested: every
    prefix that holds at least two compute nodes is a group; a level holding the
    same nodes as the level above it is left out.  A graph without scopes has no
    namespace groups (a caller can offer stages instead).  Groups are listed
    outermost first, in execution order.
    """
    if by not in GROUPINGS:
        raise ValueError(f"unknown grouping {by!r}; known: {', '.join(GROUPINGS)}")
    if by == "none":
        return {}
    if by == "stage":
        groups = {}
        for stage in analysis.stages:
            group_id = f"{GROUP_PREFIX}stage:{stage.name}"
            groups[group_id] = NodeGroup(group_id, "stage", stage.name, tuple(stage.node_ids))
        return groups
    return _namespace_groups(analysis)


def _namespace_groups(analysis: "ModelAnalysis") -> dict[str, NodeGroup]:
    """node_groups(analysis, "namespace") from arrays: one pass over the nodes for their namespaces
    (a model has far fewer: 100,000 nodes, ~6,000 scopes), then each depth's members found by one
    stable sort of the nodes by their scope path at that depth (execution order kept)."""
    import itertools
    from operator import attrgetter

    from engine.group_index import node_arrays

    arrays = node_arrays(analysis)
    arrays.forget_positions()
    namespaces = list(map(attrgetter("namespace"), arrays.nodes()))
    # One look-up per node: each namespace is numbered by its first node's position, then densely.
    first_of: dict[str, int] = {}
    first = np.fromiter(map(first_of.setdefault, namespaces, itertools.count()), dtype=np.int64, count=arrays.count)
    _, node_namespace = np.unique(first, return_inverse=True)
    node_namespace = node_namespace.reshape(-1)
    namespace_number = first_of  # its namespaces in order of first appearance (the numbers' order)
    # Every prefix of every namespace (a path), numbered in order of first appearance.
    path_number: dict[str, int] = {}
    paths: list[str] = []
    above: list[int] = []  # the path one level up (-1 at the top)
    depth_of: list[int] = []
    rows: list[list[int]] = []
    for namespace in namespace_number:
        parts = [p for p in namespace.split("/") if p]
        row: list[int] = []
        for depth in range(1, len(parts) + 1):
            path = "/".join(parts[:depth])
            number = path_number.get(path)
            if number is None:
                number = path_number[path] = len(paths)
                paths.append(path)
                above.append(row[-1] if row else -1)
                depth_of.append(depth)
            row.append(number)
        rows.append(row)
    deepest = max(map(len, rows), default=0)
    if deepest == 0:
        return {}
    table = np.full((len(rows), deepest), -1, dtype=np.int64)
    for k, row in enumerate(rows):
        table[k, :len(row)] = row
    compute = ~arrays.constant
    members_of: list[np.ndarray] = [np.zeros(0, dtype=np.int64)] * len(paths)
    compute_count = np.zeros(len(paths), dtype=np.int64)
    for column in range(deepest):
        node_path = table[node_namespace, column]
        at = np.flatnonzero(node_path >= 0)
        keys = node_path[at]
        order = np.argsort(keys, kind="stable")  # stable: each path's members stay in execution order
        sorted_nodes, sorted_keys = at[order], keys[order]
        starts = np.flatnonzero(np.concatenate([[True], sorted_keys[1:] != sorted_keys[:-1]]))
        ends = np.append(starts[1:], len(sorted_keys))
        for path, start, end in zip(sorted_keys[starts].tolist(), starts.tolist(), ends.tolist()):
            members_of[path] = sorted_nodes[start:end]
        compute_count += np.bincount(keys[compute[at]], minlength=len(paths))
    # A parent is decided before its children: kept when it holds two compute nodes and not
    # exactly the nodes of the kept level above it.
    kept_above = [-1] * len(paths)  # the nearest kept path at or above each path
    kept: list[int] = []
    for path in sorted(range(len(paths)), key=depth_of.__getitem__):
        parent = kept_above[above[path]] if above[path] >= 0 else -1
        if compute_count[path] >= 2 and (parent < 0 or len(members_of[parent]) != len(members_of[path])):
            kept.append(path)
            kept_above[path] = path
        else:
            kept_above[path] = parent
    groups: dict[str, NodeGroup] = {}
    for path in sorted(kept, key=lambda p: (depth_of[p], int(members_of[p][0]))):
        parent = kept_above[above[path]] if above[path] >= 0 else -1
        group_id = f"{GROUP_PREFIX}namespace:{paths[path]}"
        parent_id = f"{GROUP_PREFIX}namespace:{paths[parent]}" if parent >= 0 else None
        depth = 0 if parent_id is None else groups[parent_id].depth + 1
        members = tuple(arrays.names(members_of[path]))
        arrays.remember_positions(members, members_of[path])
        groups[group_id] = NodeGroup(group_id, "namespace", paths[path], members, parent_id, depth)
    return groups


def group_totals(group: NodeGroup, analysis: "ModelAnalysis", profile=None) -> GroupTotals:
    """Node count, MACs and parameters of `group` (static analysis), and its time in `profile`."""
    from engine.group_index import figures_of

    found = figures_of(analysis, group.members, profile)  # from arrays: a group can hold 100,000 nodes
    if found is not None:
        return GroupTotals(**found)
    metrics = analysis.nodes
    compute = [metrics[n] for n in group.members if n in metrics and not metrics[n].is_constant]
    static = GroupTotals(
        nodes=len(compute), macs=sum(m.macs for m in compute if m.macs is not None),
        params=sum(metrics[n].params for n in group.members if n in metrics),
        unknown_cost_nodes=sum(1 for m in compute if m.macs is None),
        flops=sum(m.flops for m in compute if m.flops is not None),
        output_bytes=sum(m.output_bytes for m in compute if m.output_bytes is not None),
        bytes_moved=sum(m.bytes_moved for m in compute if m.bytes_moved is not None and m.flops is not None))
    if profile is None:
        return static
    from dataclasses import replace

    from engine.profile import combine_kinds

    timed = [profile.nodes[n] for n in group.members if n in profile.nodes]
    if not timed:
        return static
    return replace(static, time_ms=sum(t.time.median_ms for t in timed),
                   time_kind=combine_kinds(t.kind for t in timed), timed_nodes=len(timed))


def _vertex_pairs(edges: list[tuple[int, int, str]]) -> np.ndarray:
    """(m, 2) array of the (source, target) vertices of `edges`."""
    return np.fromiter(chain.from_iterable(map(itemgetter(0, 1), edges)), dtype=np.int64,
                       count=2 * len(edges)).reshape(-1, 2)


def _longest_path_layers(count: int, pairs: np.ndarray) -> np.ndarray:
    """Layer of each vertex: 1 + the deepest predecessor; vertices are numbered in topological order.

    `pairs`: (source, target) of each edge.  An edge that goes backwards in that numbering
    (only in a cyclic graph) is ignored.  Sources (graph inputs, nodes without inputs) are
    then pulled down to just above their first consumer, so a second input used at the end
    has no edge across the graph.
    """
    pairs = pairs[pairs[:, 0] < pairs[:, 1]]
    sources, targets = pairs[:, 0], pairs[:, 1]
    # Edges by target: every edge into a vertex comes before any edge out of it (sources are
    # numbered lower), so one pass sees each vertex's layer final before it is used.
    by_target = np.argsort(targets, kind="stable")
    layers = [0] * count
    for s, t in zip(sources[by_target].tolist(), targets[by_target].tolist()):
        if layers[s] >= layers[t]:
            layers[t] = layers[s] + 1
    result = np.asarray(layers, dtype=np.int64)
    # A source's successors all have a predecessor (it), so their layers are final already.
    has_predecessor = np.zeros(count, dtype=bool)
    has_predecessor[targets] = True
    lowest_successor = np.full(count, np.iinfo(np.int64).max, dtype=np.int64)
    np.minimum.at(lowest_successor, sources, result[targets])
    pulled = ~has_predecessor & (lowest_successor < np.iinfo(np.int64).max)
    result[pulled] = np.maximum(0, lowest_successor[pulled] - 1)
    return result


# igraph's Sugiyama is one C call that holds the GIL (~90 ms for 20,000 nodes).  A GUI laying out
# in a worker thread would freeze for that long, so, as importers.onnx does for shape inference,
# it can register an executor (a process of its own) that runs the call for graphs of
# LAYOUT_OFFLOAD_VERTICES or more vertices.  Only integers cross the process boundary.
LAYOUT_OFFLOAD_VERTICES = 5000
_layout_executor = None


def set_layout_executor(executor) -> None:
    """Run Sugiyama of graphs with LAYOUT_OFFLOAD_VERTICES+ vertices in `executor` (None: in-process)."""
    global _layout_executor
    _layout_executor = executor


def warm_up_layout() -> None:
    """Import igraph and run one tiny Sugiyama in this process.  The layout helper process does this
    in its first call (gui.responsive), before it is registered, so its first big layout does not
    import igraph (~0.1 s of a 20,000-node layout's wait).  Done beside a model's analysis, as it
    was (a warm-up call sent after the import), that work took the analysis's core on a busy
    2-core machine: analysis 0.27-0.48 s instead of 0.09-0.12 s for the 20,000-node residual net,
    same CPU time; sent when the helper was registered, it could still be queued before a model's
    shape inference.
    """
    sugiyama_columns(2, np.array([[0, 1]], dtype=np.int64), np.array([0, 1], dtype=np.int64))


def sugiyama_columns(count: int, edge_pairs: np.ndarray, layers: np.ndarray):
    """igraph's Sugiyama: the x of each vertex, and each edge's control points (arrays, quick to pickle).

    `edge_pairs` (m, 2) and `layers` (count,): integers.  Returns (columns (count,), the number of
    control points of each edge (m,), all of them, edge after edge (k, 2)).  Lists of lists took
    60 ms to pickle there and back for a 20,000-node model, arrays take ~1 ms.

    igraph 1.0 routes edges wrongly when the graph has more than one weakly connected component
    and an edge skips a layer: it looks up the edge of each dummy vertex at the wrong index, so
    control points go to the wrong edges and are read from past the end of its own arrays --
    garbage bends (1e296), different ones from run to run, and a segmentation fault when enough
    is read (src/layout/sugiyama.c, `new_vertex_id_to_edge_id` is sized for every vertex of the
    graph but indexed by the component's).  A folded group's level is often such a graph (the
    heads of an attention block are separate chains).  So each component is laid out by a call
    of its own, placed side by side as igraph places them (left to right in order of their
    lowest vertex, one column apart); a connected graph is one call, exactly as before.
    """
    import igraph

    edge_pairs = np.asarray(edge_pairs, dtype=np.int64).reshape(-1, 2)
    layers = np.asarray(layers, dtype=np.int64)
    edge_count = len(edge_pairs)
    g = igraph.Graph(n=count, edges=edge_pairs.tolist(), directed=True)
    membership = np.asarray(g.connected_components(mode="weak").membership, dtype=np.int64)
    component_count = int(membership.max()) + 1 if count else 0
    if component_count <= 1:
        return _igraph_sugiyama(g, count, edge_pairs, layers)
    columns = np.zeros(count, dtype=float)
    route_counts = np.zeros(edge_count, dtype=np.int64)
    points_of_edge: list = [None] * edge_count
    edge_component = membership[edge_pairs[:, 0]]
    edges_by_component = np.argsort(edge_component, kind="stable")
    edge_starts = np.searchsorted(edge_component[edges_by_component], np.arange(component_count + 1))
    vertices_by_component = np.argsort(membership, kind="stable")
    vertex_starts = np.searchsorted(membership[vertices_by_component], np.arange(component_count + 1))
    # Components without a skip edge get no dummy vertices, which igraph lays out right side by side:
    # a run of them is one call (a level of thousands of unconnected boxes is not thousands of
    # calls), of at most COMPONENTS_PER_CALL: igraph walks every vertex once per component.
    skips = np.zeros(component_count, dtype=bool)
    skips[edge_component[np.abs(layers[edge_pairs[:, 1]] - layers[edge_pairs[:, 0]]) > 1]] = True
    local_index = np.empty(count, dtype=np.int64)
    offset = 0.0  # igraph's `dx`: where the next component starts
    first = 0
    while first < component_count:
        last = first + 1
        if not skips[first]:
            while last < component_count and not skips[last] and last - first < COMPONENTS_PER_CALL:
                last += 1
        vertices = np.sort(vertices_by_component[vertex_starts[first]:vertex_starts[last]])
        edges = np.sort(edges_by_component[edge_starts[first]:edge_starts[last]])
        local_index[vertices] = np.arange(len(vertices))
        sub_pairs = local_index[edge_pairs[edges]]
        sub = igraph.Graph(n=len(vertices), edges=sub_pairs.tolist(), directed=True)
        sub_columns, sub_counts, sub_points = _igraph_sugiyama(sub, len(vertices), sub_pairs, layers[vertices])
        columns[vertices] = sub_columns + offset
        route_counts[edges] = sub_counts
        sub_ends = np.cumsum(sub_counts)
        for routed in np.flatnonzero(sub_counts).tolist():
            end = int(sub_ends[routed])
            points_of_edge[int(edges[routed])] = sub_points[end - int(sub_counts[routed]):end] + (offset, 0.0)
        # Where igraph would start the next component: after the rightmost vertex or bend of each
        # one so far (at least its start), one column (hgap) apart.
        in_order = columns[vertices_by_component[vertex_starts[first]:vertex_starts[last]]] - offset
        rightmost = np.maximum.reduceat(in_order, vertex_starts[first:last] - vertex_starts[first])
        if len(sub_points):
            rightmost[0] = max(rightmost[0], float(sub_points[:, 0].max()))  # a skip component is alone
        start = 0.0
        for right in rightmost.tolist():
            start = max(start, right) + 1.0
        offset += start
        first = last
    route_points = np.concatenate([p for p in points_of_edge if p is not None] or [np.empty((0, 2))])
    return columns, route_counts, route_points.reshape(-1, 2)


COMPONENTS_PER_CALL = 64


# A helper process that died running this is not asked to run it in the app's process (gui.responsive).
sugiyama_columns.rerun_after_helper_crash = False


# igraph places the blocks of a layer's vertices recursively (Brandes-Koepf compaction): one C stack
# frame per block, up to one per vertex and dummy vertex.  A layer ~60,000 wide (a star, or a
# tensor read by thousands of layers) overflowed the usual 8 MB stack: a segmentation fault.  A
# graph with more vertices and dummies than this is laid out in a thread whose stack is sized for it.
DEEP_STACK_VERTICES = 20_000
STACK_BYTES_PER_VERTEX = 512  # measured: ~140 bytes per frame (8 MB held 50,000, not 70,000)


def _igraph_sugiyama(g, count: int, edge_pairs: np.ndarray, layers: np.ndarray):
    """One igraph call on a connected graph (or one without skip edges): columns, route counts, points."""
    edge_count = len(edge_pairs)
    dummies = int(np.maximum(np.abs(layers[edge_pairs[:, 1]] - layers[edge_pairs[:, 0]]) - 1, 0).sum())
    if count + dummies <= DEEP_STACK_VERTICES:
        result = g.layout_sugiyama(layers=layers.tolist(), maxiter=20)
    else:
        result = _with_stack(16 * 2**20 + STACK_BYTES_PER_VERTEX * (count + dummies),
                             g.layout_sugiyama, layers=layers.tolist(), maxiter=20)
    columns = np.array([xy[0] for xy in result.coords[:count]], dtype=float)
    routes = getattr(result, "edge_routing", None) or []
    route_counts = np.zeros(edge_count, dtype=np.int64)
    route_counts[:min(len(routes), edge_count)] = [len(route) for route in routes[:edge_count]]
    route_points = np.array([xy for route in routes[:edge_count] for xy in route], dtype=float).reshape(-1, 2)
    return columns, route_counts, route_points


_stack_lock = threading.Lock()


def _with_stack(stack_bytes: int, function, *args, **kwargs):
    """function(*args, **kwargs) run in a thread with a stack of `stack_bytes` (reserved, used as needed)."""
    answer: list = []

    def run() -> None:
        try:
            answer.append((True, function(*args, **kwargs)))
        except BaseException as error:  # handed to the caller
            answer.append((False, error))
    with _stack_lock:  # the stack size is process-wide for threads started meanwhile
        previous = threading.stack_size(stack_bytes)
        try:
            worker = threading.Thread(target=run, name="layerscope-sugiyama")
            worker.start()
        finally:
            threading.stack_size(previous)
    worker.join()
    ok, value = answer[0]
    if not ok:
        raise value
    return value


def _checked_routes(columns: np.ndarray, pairs: np.ndarray, layers: np.ndarray, route_counts: np.ndarray,
                    route_points: np.ndarray):
    """The control points of edges that are sane, or None when the columns themselves are not.

    igraph's answer is checked before it is drawn (a wrong answer of a dependency must not reach
    the scene): every column finite; every control point finite, strictly between its edge's two
    layers, no more points than layers skipped, and within the drawing's width (the columns'
    span widened by one column per vertex and control point -- the most a compaction can spread).
    An edge with a bad point is drawn straight instead.  Logs what it dropped.
    """
    columns = np.asarray(columns, dtype=float)
    edge_count = len(pairs)
    route_counts = np.asarray(route_counts, dtype=np.int64).reshape(-1)
    route_points = np.asarray(route_points, dtype=float).reshape(-1, 2)
    if columns.shape != (len(layers),) or not np.isfinite(columns).all():
        _log.warning("igraph's Sugiyama returned %s vertex columns; laying out with the layered fallback",
                     "non-finite" if columns.shape == (len(layers),) else f"{columns.shape} instead of {len(layers)}")
        return None
    if (route_counts.shape != (edge_count,) or (route_counts < 0).any()
            or int(route_counts.sum()) != len(route_points)):
        _log.warning("igraph's Sugiyama returned %d control points for %d edges that do not add up; "
                     "drawing every edge straight", len(route_points), edge_count)
        return np.zeros(edge_count, dtype=np.int64), np.empty((0, 2))
    if not len(route_points):
        return route_counts, route_points
    source_layers, target_layers = layers[pairs[:, 0]], layers[pairs[:, 1]]
    low, high = np.minimum(source_layers, target_layers), np.maximum(source_layers, target_layers)
    edge_of_point = np.repeat(np.arange(edge_count), route_counts)
    reach = float(len(columns) + len(route_points))
    left, right = float(columns.min()) - reach, float(columns.max()) + reach
    with np.errstate(invalid="ignore"):
        x, y = route_points[:, 0], route_points[:, 1]
        good_point = (np.isfinite(route_points).all(axis=1) & (y > low[edge_of_point]) & (y < high[edge_of_point])
                      & (x >= left) & (x <= right))
    bad_edge = route_counts > np.maximum(high - low - 1, 0)
    bad_edge[edge_of_point[~good_point]] = True
    if not bad_edge.any():
        return route_counts, route_points
    first = int(np.flatnonzero(bad_edge)[0])
    _log.warning("igraph's Sugiyama returned bad control points (non-finite, off the drawing or outside the "
                 "edge's layers) for %d of %d edges (first: vertex %d -> %d); drawing those edges straight",
                 int(bad_edge.sum()), edge_count, int(pairs[first, 0]), int(pairs[first, 1]))
    route_points = route_points[~bad_edge[edge_of_point]]
    route_counts = np.where(bad_edge, 0, route_counts)
    return route_counts, route_points


def _sugiyama(count: int, pairs: np.ndarray, layers: np.ndarray):
    """Columns and routes from igraph, checked; None when the layered fallback must draw instead."""
    executor = _layout_executor
    # Long edges become chains of dummy vertices inside igraph: a folded level of 257 boxes whose
    # KV-cache inputs span the whole level had 62,250 and held the GIL for 0.3 s.  Both count.
    dummies = int(np.maximum(np.abs(layers[pairs[:, 1]] - layers[pairs[:, 0]]) - 1, 0).sum()) if len(pairs) else 0
    if executor is not None and count + dummies >= LAYOUT_OFFLOAD_VERTICES:
        try:
            columns, route_counts, route_points = executor.submit(sugiyama_columns, count, pairs, layers).result()
        except BrokenProcessPool:
            # The helper died running igraph: running it here could take the app down the same way.
            _log.warning("igraph's Sugiyama ended the layout helper process (%d vertices, %d edges); "
                         "laying out with the layered fallback", count, len(pairs))
            return None
        except Exception:  # a broken worker process: lay out here (slower for a GUI, same result)
            columns, route_counts, route_points = sugiyama_columns(count, pairs, layers)
    else:
        columns, route_counts, route_points = sugiyama_columns(count, pairs, layers)
    routes = _checked_routes(columns, pairs, layers, route_counts, route_points)
    if routes is None:
        return None
    return _separate(np.asarray(columns, dtype=float), layers), routes


def _separate(columns: np.ndarray, layers: np.ndarray) -> np.ndarray:
    """Push vertices right so that boxes of one layer are at least one column apart.

    igraph's horizontal compaction can put two vertices of a layer half a column
    apart; boxes are a full column wide, so they would overlap.
    """
    order = np.lexsort((columns, layers)).tolist()
    result = columns.tolist()
    layer_list = layers.tolist()
    previous_layer, previous_x = None, 0.0
    for vertex in order:
        x = result[vertex]
        if layer_list[vertex] == previous_layer and x < previous_x + 1.0:
            x = result[vertex] = previous_x + 1.0
        previous_layer, previous_x = layer_list[vertex], x
    return np.asarray(result)


def _barycenter_columns(count: int, pairs: np.ndarray, layers: np.ndarray, sweeps: int = 2) -> np.ndarray:
    """Column of each vertex: barycenter ordering within layers, a few downward/upward sweeps."""
    sources, targets = pairs[:, 0], pairs[:, 1]
    # Start with the topological order inside each layer.
    position = np.zeros(count, dtype=float)
    order_in_layer = np.lexsort((np.arange(count), layers))
    layer_sorted = layers[order_in_layer]
    starts = np.searchsorted(layer_sorted, layer_sorted, side="left")
    position[order_in_layer] = np.arange(count) - starts
    for sweep in range(sweeps * 2):
        if sweep % 2 == 0:  # downward: place by predecessors
            neighbour_of, vertex_of = sources, targets
        else:
            neighbour_of, vertex_of = targets, sources
        total = np.bincount(vertex_of, weights=position[neighbour_of], minlength=count)
        degree = np.bincount(vertex_of, minlength=count)
        barycenter = np.where(degree > 0, total / np.maximum(degree, 1), position)
        order_in_layer = np.lexsort((barycenter, layers))
        layer_sorted = layers[order_in_layer]
        starts = np.searchsorted(layer_sorted, layer_sorted, side="left")
        position[order_in_layer] = np.arange(count) - starts
    # Centre each layer on the widest one.
    widths = np.bincount(layers)
    return position + (widths.max() - widths[layers]) / 2.0


def _to_scene(ids: list[str], sizes: list[tuple[float, float]], layers: np.ndarray, columns: np.ndarray,
              edges: list[tuple[int, int, str]], pairs: np.ndarray,
              routes: Optional[tuple[np.ndarray, np.ndarray]], method: str,
              hidden: frozenset[str], members: Mapping[str, tuple[str, ...]],
              box_for: Mapping[str, str], edge_values: Optional[list[tuple[str, ...]]] = None) -> GraphLayout:
    """Boxes and edge polylines in scene units.  `routes`: (control points per edge, all of them)
    from `sugiyama_columns`, in columns and layers; None: straight edges."""
    column_step = NODE_WIDTH + HORIZONTAL_GAP
    row_step = NODE_HEIGHT + VERTICAL_GAP
    min_column = float(columns.min())
    center_x = (columns - min_column) * column_step + NODE_WIDTH / 2
    size_array = np.array(sizes, dtype=float).reshape(-1, 2)
    widths, heights = size_array[:, 0], size_array[:, 1]
    top = float(heights.max()) / 2  # NODE_HEIGHT / 2, or more when a collapsed group is taller
    center_y = layers.astype(float) * row_step + top
    boxes: dict[str, Rect] = dict(zip(ids, zip((center_x - widths / 2).tolist(), (center_y - heights / 2).tolist(),
                                              widths.tolist(), heights.tolist())))
    # Each edge from the bottom of its source to the top of its target, through its control points:
    # every edge's points in one array (start, control points, end), read into tuples at once.
    sources, targets = pairs[:, 0], pairs[:, 1]
    edge_count = len(edges)
    if routes is not None and len(routes[1]):
        route_counts, route_points = routes
        route_counts = np.asarray(route_counts, dtype=np.int64)
    else:  # straight edges
        route_counts, route_points = np.zeros(edge_count, dtype=np.int64), np.zeros((0, 2))
    point_counts = route_counts + 2
    ends = np.cumsum(point_counts)
    points = np.empty((int(ends[-1]) if edge_count else 0, 2))
    points[ends - point_counts, 0] = center_x[sources]
    points[ends - point_counts, 1] = center_y[sources] + heights[sources] / 2
    points[ends - 1, 0] = center_x[targets]
    points[ends - 1, 1] = center_y[targets] - heights[targets] / 2
    if len(route_points):
        is_route = np.ones(len(points), dtype=bool)
        is_route[ends - point_counts] = False
        is_route[ends - 1] = False
        points[is_route, 0] = route_points[:, 0] * column_step + (NODE_WIDTH / 2 - min_column * column_step)
        points[is_route, 1] = route_points[:, 1] * row_step + top
    flat = list(zip(*points.T.tolist()))
    edge_points = [tuple(flat[end - n:end]) for n, end in zip(point_counts.tolist(), ends.tolist())]
    # tuple.__new__ skips LayoutEdge's Python-level __new__.  A comprehension, not list(map(...)):
    # a worker thread running it still hands the GIL to the UI thread every few milliseconds.
    new = tuple.__new__
    layout_edges = [new(LayoutEdge, (ids[s], ids[t], edge[2], points, values))
                    for s, t, edge, points, values in zip(sources.tolist(), targets.tolist(), edges, edge_points,
                                                          edge_values or repeat((), edge_count))]
    width = float(center_x.max() + NODE_WIDTH / 2)
    height = float((center_y + heights / 2).max())
    layer_of = dict(zip(ids, layers.tolist()))
    return GraphLayout(boxes, tuple(layout_edges), layer_of, width, height, method, hidden, members, box_for)
