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
- graph inputs and outputs as small boxes with ids `input:NAME` and
  `output:NAME` (`include_io=True`).

Method: longest-path layering along the execution order (sources pulled down
next to their first consumer), then igraph's compiled Sugiyama crossing
reduction and edge routing, which takes about 30 ms for 20,000 nodes.  Its
cost grows with the number of dummy vertices (one per layer an edge skips),
so a graph whose long edges would need more than `MAX_DUMMY_VERTICES` of them
(a tensor read by thousands of layers) gets the "layered" fallback instead:
the same layers, barycenter ordering in numpy and straight edges.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Mapping, NamedTuple, Optional, Sequence

import numpy as np

from engine.ir import Graph

if TYPE_CHECKING:
    from engine.analysis import ModelAnalysis

# Scene units (the GUI draws 1 unit = 1 pixel at zoom 1).
NODE_WIDTH = 180.0
NODE_HEIGHT = 50.0
IO_WIDTH = NODE_WIDTH
IO_HEIGHT = 36.0
HORIZONTAL_GAP = 30.0
VERTICAL_GAP = 40.0

# Above this many dummy vertices igraph's Sugiyama becomes slow (seconds): use the fallback.
MAX_DUMMY_VERTICES = 200_000

INPUT_PREFIX = "input:"
OUTPUT_PREFIX = "output:"

Point = tuple[float, float]
Rect = tuple[float, float, float, float]  # x, y (top-left), width, height


class LayoutEdge(NamedTuple):  # a NamedTuple: 30,000 of them are built in ~10 ms
    source: str  # node id (or input:NAME)
    target: str  # node id (or output:NAME)
    value: str  # the tensor flowing along the edge
    points: tuple[Point, ...]  # from the bottom of source to the top of target


@dataclass(frozen=True)
class GraphLayout:
    boxes: Mapping[str, Rect]  # node id -> rectangle, for every visible node
    edges: tuple[LayoutEdge, ...]
    layers: Mapping[str, int]  # node id -> layer index (0 at the top)
    width: float
    height: float
    method: str  # "sugiyama" or "layered" (the fallback for huge fan-out)
    hidden: frozenset[str] = field(default_factory=frozenset)  # constant nodes without a box

    def center(self, node_id: str) -> Point:
        x, y, w, h = self.boxes[node_id]
        return (x + w / 2, y + h / 2)


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
    from engine.analysis.costs import CANONICAL_OP
    category = _CATEGORY_OF.get(op_type)
    if category is None:
        category = _CATEGORY_OF.get(CANONICAL_OP.get(op_type, op_type), "other")
    return category


def layout_graph(analysis: "ModelAnalysis", include_constants: bool = False, include_io: bool = True,
                 max_dummy_vertices: int = MAX_DUMMY_VERTICES) -> GraphLayout:
    """Lay out the analysed graph; see the module docstring for what is visible."""
    graph = analysis.graph
    visible = [node_id for node_id in analysis.order
               if include_constants or not analysis.nodes[node_id].is_constant]
    shown = set(visible)
    hidden = frozenset(node_id for node_id in analysis.order if node_id not in shown)
    return layout_nodes(graph, visible, include_io=include_io, hidden=hidden,
                        max_dummy_vertices=max_dummy_vertices)


def layout_nodes(graph: Graph, visible_order: Sequence[str], include_io: bool = True,
                 hidden: frozenset[str] = frozenset(),
                 max_dummy_vertices: int = MAX_DUMMY_VERTICES) -> GraphLayout:
    """Lay out the nodes `visible_order` (a topological order of node ids) of `graph`."""
    ids: list[str] = []
    sizes: list[tuple[float, float]] = []
    index: dict[str, int] = {}

    def add_vertex(vertex_id: str, size: tuple[float, float]) -> int:
        index[vertex_id] = len(ids)
        ids.append(vertex_id)
        sizes.append(size)
        return index[vertex_id]

    producer: dict[str, int] = {}
    constant_values = {name for name, value in graph.values.items() if value.initializer is not None}
    if include_io:
        for name in graph.inputs:
            if name not in constant_values:
                producer[name] = add_vertex(INPUT_PREFIX + name, (IO_WIDTH, IO_HEIGHT))
    nodes = graph.nodes_by_id
    for node_id in visible_order:
        vertex = add_vertex(node_id, (NODE_WIDTH, NODE_HEIGHT))
        for out in nodes[node_id].outputs:
            if out:
                producer[out] = vertex
    # Edges (source vertex, target vertex, value); one per distinct (source, target, value).
    edge_list: list[tuple[int, int, str]] = []
    seen: set[tuple[int, int, str]] = set()
    for node_id in visible_order:
        target = index[node_id]
        for name in nodes[node_id].inputs:
            source = producer.get(name)
            if source is None or source == target:
                continue
            key = (source, target, name)
            if key not in seen:
                seen.add(key)
                edge_list.append(key)
    if include_io:
        for name in graph.outputs:
            source = producer.get(name)
            target = add_vertex(OUTPUT_PREFIX + name, (IO_WIDTH, IO_HEIGHT))
            if source is not None:
                edge_list.append((source, target, name))

    count = len(ids)
    if count == 0:
        return GraphLayout({}, (), {}, 0.0, 0.0, "sugiyama", hidden)
    layers = _longest_path_layers(count, edge_list)
    dummies = sum(max(0, int(layers[t]) - int(layers[s]) - 1) for s, t, _ in edge_list)
    if dummies <= max_dummy_vertices:
        columns, routes = _sugiyama(count, edge_list, layers)
        method = "sugiyama"
    else:
        columns, routes = _barycenter_columns(count, edge_list, layers), None
        method = "layered"
    return _to_scene(ids, sizes, layers, columns, edge_list, routes, method, hidden)


def _longest_path_layers(count: int, edges: list[tuple[int, int, str]]) -> np.ndarray:
    """Layer of each vertex: 1 + the deepest predecessor; vertices are numbered in topological order.

    An edge that goes backwards in that numbering (only in a cyclic graph) is ignored.
    Sources (graph inputs, nodes without inputs) are then pulled down to just above
    their first consumer, so a second input used at the end has no edge across the graph.
    """
    layers = [0] * count
    predecessors: list[list[int]] = [[] for _ in range(count)]
    successors: list[list[int]] = [[] for _ in range(count)]
    for s, t, _ in edges:
        if s < t:
            predecessors[t].append(s)
            successors[s].append(t)
    for vertex, preds in enumerate(predecessors):
        if preds:
            layers[vertex] = max([layers[p] for p in preds]) + 1
    for vertex in range(count - 1, -1, -1):
        if not predecessors[vertex] and successors[vertex]:
            layers[vertex] = max(0, min([layers[s] for s in successors[vertex]]) - 1)
    return np.asarray(layers, dtype=np.int64)


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


def sugiyama_columns(count: int, edge_pairs: list[tuple[int, int]], layers: list[int]):
    """igraph's Sugiyama: (x of each vertex, control points per edge or None); picklable in and out."""
    import igraph

    g = igraph.Graph(n=count, edges=edge_pairs, directed=True)
    result = g.layout_sugiyama(layers=layers, maxiter=20)
    columns = [xy[0] for xy in result.coords[:count]]
    return columns, getattr(result, "edge_routing", None)  # lists of [x, y] lists: picklable


def _sugiyama(count: int, edges: list[tuple[int, int, str]], layers: np.ndarray):
    pairs = [(s, t) for s, t, _ in edges]
    layer_list = [int(v) for v in layers]
    executor = _layout_executor
    if executor is not None and count >= LAYOUT_OFFLOAD_VERTICES:
        try:
            columns, routes = executor.submit(sugiyama_columns, count, pairs, layer_list).result()
        except Exception:  # a broken worker process: lay out here (slower for a GUI, same result)
            columns, routes = sugiyama_columns(count, pairs, layer_list)
    else:
        columns, routes = sugiyama_columns(count, pairs, layer_list)
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


def _barycenter_columns(count: int, edges: list[tuple[int, int, str]], layers: np.ndarray,
                        sweeps: int = 2) -> np.ndarray:
    """Column of each vertex: barycenter ordering within layers, a few downward/upward sweeps."""
    edge_array = np.array([(s, t) for s, t, _ in edges], dtype=np.int64).reshape(-1, 2)
    sources, targets = edge_array[:, 0], edge_array[:, 1]
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
              edges: list[tuple[int, int, str]], routes: Optional[list], method: str,
              hidden: frozenset[str]) -> GraphLayout:
    column_step = NODE_WIDTH + HORIZONTAL_GAP
    row_step = NODE_HEIGHT + VERTICAL_GAP
    min_column = float(columns.min())
    center_x = (columns - min_column) * column_step + NODE_WIDTH / 2
    center_y = layers.astype(float) * row_step + NODE_HEIGHT / 2
    xs, ys = center_x.tolist(), center_y.tolist()
    boxes: dict[str, Rect] = {}
    for vertex_id, x, y, (w, h) in zip(ids, xs, ys, sizes):
        boxes[vertex_id] = (x - w / 2, y - h / 2, w, h)
    layout_edges = []
    offset_x = NODE_WIDTH / 2 - min_column * column_step
    offset_y = NODE_HEIGHT / 2
    for k, (s, t, value) in enumerate(edges):
        points: list[Point] = [(xs[s], ys[s] + sizes[s][1] / 2)]
        route = routes[k] if routes is not None and k < len(routes) else None
        if route is not None and len(route):
            points.extend((cx * column_step + offset_x, cy * row_step + offset_y) for cx, cy in route)
        points.append((xs[t], ys[t] - sizes[t][1] / 2))
        layout_edges.append(LayoutEdge(ids[s], ids[t], value, tuple(points)))
    width = float(center_x.max() + NODE_WIDTH / 2)
    height = float(center_y.max() + NODE_HEIGHT / 2)
    layer_of = dict(zip(ids, layers.tolist()))
    return GraphLayout(boxes, tuple(layout_edges), layer_of, width, height, method, hidden)
