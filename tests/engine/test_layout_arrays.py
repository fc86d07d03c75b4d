"""engine.layout's array steps (layers, Sugiyama's transport, scene coordinates) give exactly what
the plain per-vertex, per-edge loops they replaced gave: those loops are kept here as the
reference.  Real graphs (the light zoo, a generated one with skip edges), real igraph. No Qt."""
from __future__ import annotations

import numpy as np
import pytest

from conftest import LIGHT_ZOO
from engine.analysis import analyze
from engine.ir import Graph, Initializer, Model, Node, TensorType, Value, WeightLocation
from engine.layout import (GROUP_HEIGHT, HORIZONTAL_GAP, INPUT_PREFIX, IO_HEIGHT, IO_WIDTH, NODE_HEIGHT, NODE_WIDTH,
                           OUTPUT_PREFIX, VERTICAL_GAP, GraphLayout, LayoutEdge, _longest_path_layers, _node_pairs,
                           _separate, _to_scene, _vertex_pairs, layout_graph, sugiyama_columns)
from importers import open_model


def reference_layers(count: int, edges) -> list[int]:
    """The per-vertex loops engine.layout used before (predecessor lists, then sources pulled down)."""
    layers = [0] * count
    predecessors: list[list[int]] = [[] for _ in range(count)]
    successors: list[list[int]] = [[] for _ in range(count)]
    for s, t, _ in edges:
        if s < t:
            predecessors[t].append(s)
            successors[s].append(t)
    for vertex, preds in enumerate(predecessors):
        if preds:
            layers[vertex] = max(layers[p] for p in preds) + 1
    for vertex in range(count - 1, -1, -1):
        if not predecessors[vertex] and successors[vertex]:
            layers[vertex] = max(0, min(layers[s] for s in successors[vertex]) - 1)
    return layers


def reference_to_scene(ids, sizes, layers, columns, edges, routes, method, edge_values=None) -> GraphLayout:
    """The per-edge loop engine.layout used before; `routes`: per edge a list of [x, y] or None."""
    column_step, row_step = NODE_WIDTH + HORIZONTAL_GAP, NODE_HEIGHT + VERTICAL_GAP
    min_column = float(columns.min())
    center_x = (columns - min_column) * column_step + NODE_WIDTH / 2
    top = max(h for _, h in sizes) / 2
    center_y = layers.astype(float) * row_step + top
    xs, ys = center_x.tolist(), center_y.tolist()
    boxes = {vertex_id: (x - w / 2, y - h / 2, w, h) for vertex_id, x, y, (w, h) in zip(ids, xs, ys, sizes)}
    offset_x = NODE_WIDTH / 2 - min_column * column_step
    layout_edges = []
    for k, (s, t, value) in enumerate(edges):
        points = [(xs[s], ys[s] + sizes[s][1] / 2)]
        route = routes[k] if routes is not None and k < len(routes) else None
        if route is not None and len(route):
            points.extend((cx * column_step + offset_x, cy * row_step + top) for cx, cy in route)
        points.append((xs[t], ys[t] - sizes[t][1] / 2))
        layout_edges.append(LayoutEdge(ids[s], ids[t], value, tuple(points),
                                       edge_values[k] if edge_values is not None else ()))
    width = float(center_x.max() + NODE_WIDTH / 2)
    height = float(max(y + h / 2 for y, (_, h) in zip(ys, sizes)))
    return GraphLayout(boxes, tuple(layout_edges), dict(zip(ids, layers.tolist())), width, height, method,
                       frozenset(), {}, {})


def _random_graph(seed: int, count: int, edge_count: int):
    """Edges mostly forward in the numbering, some backward and some self-loops (a cyclic graph's)."""
    rng = np.random.default_rng(seed)
    sources = rng.integers(0, count, edge_count)
    targets = np.where(rng.random(edge_count) < 0.85, sources + rng.integers(1, 6, edge_count),
                       rng.integers(0, count, edge_count)) % count
    return [(int(s), int(t), f"v{k}") for k, (s, t) in enumerate(zip(sources, targets))]


@pytest.mark.parametrize("seed", range(6))
def test_layers_equal_the_per_vertex_loops_on_random_graphs(seed):
    count = 50 + 150 * seed
    edges = _random_graph(seed, count, count * 2)
    assert _longest_path_layers(count, _vertex_pairs(edges)).tolist() == reference_layers(count, edges)


def test_layers_of_no_edges_and_of_isolated_vertices():
    assert _longest_path_layers(3, _vertex_pairs([])).tolist() == [0, 0, 0]
    edges = [(0, 2, "a"), (2, 4, "b"), (1, 4, "c")]  # 1 is a source pulled down next to 4; 3 stays alone
    assert _longest_path_layers(5, _vertex_pairs(edges)).tolist() == reference_layers(5, edges) == [0, 1, 1, 0, 2]


def _chain_with_skips(blocks: int):
    """Vertices in topological order: Mul -> Relu -> Add per block, each Add also reading the block's
    input (a skip edge Sugiyama routes round the side), and a second source used at the end."""
    edges, previous = [], 0
    for block in range(blocks):
        mul, relu, add = 1 + 3 * block, 2 + 3 * block, 3 + 3 * block
        edges += [(previous, mul, f"x{block}"), (mul, relu, f"m{block}"), (relu, add, f"r{block}"),
                  (previous, add, f"x{block}")]
        previous = add
    late_source, output = 3 * blocks + 1, 3 * blocks + 2
    edges += [(late_source, previous, "late"), (previous, output, "y")]
    return 3 * blocks + 3, edges


@pytest.mark.parametrize("blocks", [1, 7, 120])
def test_scene_coordinates_equal_the_per_edge_loop(blocks):
    count, edges = _chain_with_skips(blocks)
    # Sizes as the layout makes them: graph inputs and outputs, nodes, a collapsed group's taller box.
    sizes = [(IO_WIDTH, IO_HEIGHT)] + [(NODE_WIDTH, GROUP_HEIGHT if v % 5 == 0 else NODE_HEIGHT)
                                       for v in range(1, count - 1)] + [(IO_WIDTH, IO_HEIGHT)]
    ids = [f"vertex{v}" for v in range(count)]
    pairs = _vertex_pairs(edges)
    layers = _longest_path_layers(count, pairs)
    columns, route_counts, route_points = sugiyama_columns(count, pairs, layers)
    assert route_counts.sum() > 0, "the skip edges are routed through control points"
    # The routes as igraph gives them: a list of [x, y] per edge.
    ends = np.cumsum(route_counts)
    routes = [route_points[end - n:end].tolist() for n, end in zip(route_counts.tolist(), ends.tolist())]
    columns = _separate(columns, layers)
    values = [(f"extra{k}",) if k % 3 == 0 else () for k in range(len(edges))]
    for edge_values in (None, values):
        expected = reference_to_scene(ids, sizes, layers, columns, edges, routes, "sugiyama", edge_values)
        got = _to_scene(ids, sizes, layers, columns, edges, pairs, (route_counts, route_points), "sugiyama",
                        frozenset(), {}, {}, edge_values)
        assert got == expected
        assert list(got.boxes) == list(expected.boxes)
    straight = _to_scene(ids, sizes, layers, columns, edges, pairs, None, "layered", frozenset(), {}, {})
    assert straight == reference_to_scene(ids, sizes, layers, columns, edges, None, "layered")
    assert all(len(edge.points) == 2 for edge in straight.edges)


@pytest.mark.parametrize("path", LIGHT_ZOO[:4], ids=lambda p: p.stem)
def test_light_zoo_layers_equal_the_per_vertex_loops(path):
    """The layers of a real model's laid-out graph: one layer per box, as the reference computes them."""
    layout = layout_graph(analyze(open_model(path)))
    ids = list(layout.boxes)
    index = {box: i for i, box in enumerate(ids)}
    edges = [(index[e.source], index[e.target], e.value) for e in layout.edges]
    assert [layout.layers[box] for box in ids] == reference_layers(len(ids), edges)


def test_warm_up_layout_imports_igraph_and_runs_a_sugiyama():
    """warm_up_layout (the layout helper's first call, see gui.responsive) imports igraph in the
    process that runs it; a fresh process, as the helper is."""
    import subprocess
    import sys

    code = ("import sys, engine.layout as layout; assert 'igraph' not in sys.modules; "
            "layout.warm_up_layout(); print('igraph' in sys.modules)")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split()[-1] == "True"


def reference_node_pairs(graph, visible_order, include_io, constant_values):
    """The per-node loops _node_pairs used before: ([(producer, consumer, tensor)], {tensor: producer})."""
    nodes = graph.nodes_by_id
    producer_of = {}
    if include_io:
        for name in graph.inputs:
            if name not in constant_values:
                producer_of[name] = INPUT_PREFIX + name
    for node_id in visible_order:
        for out in nodes[node_id].outputs:
            if out:
                producer_of[out] = node_id
    pairs = []
    for node_id in visible_order:
        for name in nodes[node_id].inputs:
            source = producer_of.get(name)
            if source is not None:
                pairs.append((source, node_id, name))
    return pairs, producer_of


def reference_edges(graph, pairs, producer_of, include_io):
    """The edge loop layout_nodes used before (no collapsed groups): one edge per distinct
    (source, target, tensor) in order of first appearance, none from a box to itself, then one
    per graph output."""
    seen, edges = set(), []
    for source, target, name in pairs:
        if source != target and (source, target, name) not in seen:
            seen.add((source, target, name))
            edges.append((source, target, name))
    if include_io:
        edges += [(producer_of[name], OUTPUT_PREFIX + name, name) for name in graph.outputs if name in producer_of]
    return edges


def _model_with_repeats_and_self_loops():
    """A tensor read twice by one node (one edge), a node reading its own output (no edge), a name
    produced twice (the later producer feeds what follows), an omitted input and a weight input."""
    t = TensorType("float32", (1, 4))
    w = Value("w", t, Initializer(t, WeightLocation("inline")))
    values = {name: Value(name, t) for name in ("x", "a", "b", "s", "c", "y")} | {"w": w}
    nodes = (Node("n0", "Relu", inputs=("x",), outputs=("a",)),
             Node("n1", "Add", inputs=("a", "a"), outputs=("b",)),
             Node("n2", "Add", inputs=("b", "s"), outputs=("s",)),
             Node("n3", "Mul", inputs=("b", "", "w", "a"), outputs=("c",)),
             Node("n4", "Relu", inputs=("c",), outputs=("a",)),
             Node("n5", "Add", inputs=("a", "x"), outputs=("y",)))
    return Model("onnx", "test", (Graph("g", ("x", "w"), ("y", "c"), nodes, values),))


@pytest.mark.parametrize("include_io", [True, False])
@pytest.mark.parametrize("source", ["repeats"] + [p.stem for p in LIGHT_ZOO[:3]])
def test_node_pairs_and_edges_equal_the_per_node_loops(source, include_io):
    model = _model_with_repeats_and_self_loops() if source == "repeats" else \
        open_model(next(p for p in LIGHT_ZOO if p.stem == source))
    analysis = analyze(model)
    graph = analysis.graph
    visible = [n for n in analysis.order if not analysis.nodes[n].is_constant]
    constant_values = {name for name, value in graph.values.items() if value.initializer is not None}
    expected_pairs, expected_producers = reference_node_pairs(graph, visible, include_io, constant_values)
    pairs, producer_of = _node_pairs(graph, visible, include_io, constant_values)
    assert pairs == expected_pairs and producer_of == expected_producers
    assert list(producer_of) == list(expected_producers)
    layout = layout_graph(analysis, include_io=include_io)
    assert [(e.source, e.target, e.value) for e in layout.edges] == \
        reference_edges(graph, expected_pairs, expected_producers, include_io)
    inputs = [INPUT_PREFIX + n for n in graph.inputs if n not in constant_values] if include_io else []
    outputs = [OUTPUT_PREFIX + n for n in graph.outputs] if include_io else []
    assert list(layout.boxes) == inputs + visible + outputs
    assert all(layout.boxes[b][2:] == ((IO_WIDTH, IO_HEIGHT) if b in inputs + outputs else (NODE_WIDTH, NODE_HEIGHT))
               for b in layout.boxes)
