"""igraph's Sugiyama at engine.layout's seam: graphs of several unconnected pieces, and bad answers.

igraph 1.0 misroutes a graph of more than one weakly connected component in which an edge skips
a layer: control points land on the wrong edges and are read from past the end of its arrays
(different garbage each run, 1e296, or a segmentation fault).  A folded level of the per-head QDQ
transformer is such a graph (its two K/V heads are separate chains).  engine.layout lays each
component out by a call of its own and checks what igraph answers before drawing it.
Real igraph, real models, real processes; only the guard tests feed it a made-up igraph answer.
"""
from __future__ import annotations

import json
import logging
import multiprocessing
import os
import subprocess
import sys
from concurrent.futures import Future, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from pathlib import Path

import numpy as np
import pytest

import engine.layout as layout_module
from engine.analysis import analyze
from engine.folded_layout import FoldedLayouts
from engine.grouping import namespace_groups
from engine.layout import _checked_routes, layout_graph, sugiyama_columns
from engine.transformer_samples import TransformerConfig, write_transformer
from importers import open_model

ROOT = Path(__file__).resolve().parents[2]
KV_LEVEL = "group:namespace:model/layers.0/self_attn/kv.0"


@pytest.fixture(scope="module")
def per_head(tmp_path_factory):
    config = TransformerConfig(layers=1, hidden=64, heads=4, kv_heads=2, intermediate=96, vocab=50, past=5,
                               style="per_head_qdq")
    path = write_transformer(tmp_path_factory.mktemp("per_head") / "decoder.onnx", config)
    analysis = analyze(open_model(str(path)))
    return str(path), analysis, namespace_groups(analysis)


def _kv_level(analysis, groups):
    return FoldedLayouts(analysis, groups, True).level(KV_LEVEL)


def _drawn(layout) -> tuple:
    return (tuple(layout.boxes.items()), tuple((e.source, e.target, e.value, e.points) for e in layout.edges),
            layout.method)


def _pieces(layout) -> int:
    """Weakly connected components of the drawn graph."""
    parent = {box: box for box in layout.boxes}

    def root(box):
        while parent[box] != box:
            box = parent[box]
        return box
    for edge in layout.edges:
        parent[root(edge.source)] = root(edge.target)
    return len({root(box) for box in layout.boxes})


def _check_bends(layout) -> int:
    """Every bend lies strictly between its edge's two layers and within the drawing; an edge
    between neighbouring layers has none.  Returns the number of edges with bends."""
    bent = 0
    for edge in layout.edges:
        top, bottom = sorted((layout.layers[edge.source], layout.layers[edge.target]))
        bends = edge.points[1:-1]
        assert len(bends) <= max(bottom - top - 1, 0), (edge.source, edge.target, bends)
        y_top, y_bottom = edge.points[0][1], edge.points[-1][1]
        for x, y in bends:
            assert min(y_top, y_bottom) < y < max(y_top, y_bottom) and 0 <= x <= layout.width
        bent += bool(bends)
    return bent


def test_a_level_of_separate_chains_is_routed_right_and_the_same_every_run(per_head):
    _, analysis, groups = per_head
    first = _kv_level(analysis, groups)
    assert _pieces(first) >= 2 and first.method == "sugiyama"  # the shape igraph misrouted
    assert _check_bends(first) >= 2  # the skip edges of both chains are bent round the others
    for _ in range(15):
        assert _drawn(_kv_level(analysis, groups)) == _drawn(first)


def test_the_level_is_the_same_through_the_helper_process_and_in_another_process(per_head, monkeypatch):
    path, analysis, groups = per_head
    here = _drawn(_kv_level(analysis, groups))
    monkeypatch.setattr(layout_module, "LAYOUT_OFFLOAD_VERTICES", 0)  # every level goes to the helper
    with ProcessPoolExecutor(max_workers=1, mp_context=multiprocessing.get_context("spawn")) as executor:
        layout_module.set_layout_executor(executor)
        try:
            helped = [_drawn(_kv_level(analysis, groups)) for _ in range(3)]
        finally:
            layout_module.set_layout_executor(None)
    assert helped == [here] * 3
    child = ("import json, sys\nfrom importers import open_model\nfrom engine.analysis import analyze\n"
             "from engine.grouping import namespace_groups\nfrom engine.folded_layout import FoldedLayouts\n"
             "a = analyze(open_model(sys.argv[1]))\n"
             f"lay = FoldedLayouts(a, namespace_groups(a), True).level({KV_LEVEL!r})\n"
             "print(json.dumps([list(lay.boxes.items()), [[e.source, e.target, e.value, e.points] "
             "for e in lay.edges]]))")
    done = subprocess.run([sys.executable, "-c", child, path], cwd=ROOT, capture_output=True, text=True,
                          env=dict(os.environ, PYTHONPATH=str(ROOT), PYTHONHASHSEED="7"), timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    boxes, edges = json.loads(done.stdout)
    assert boxes == json.loads(json.dumps(list(dict(here[0]).items())))
    assert edges == json.loads(json.dumps([list(e) for e in here[1]]))


def test_a_skip_edge_beside_many_unconnected_vertices(tmp_path):
    """The input that made igraph read far past its arrays (segmentation fault in the process that
    called it): a chain with a skip edge, then 100,000 lone vertices.  Run in a child process, so
    that a regression fails this test instead of ending the test run."""
    child = ("import json, numpy as np\nfrom engine.layout import sugiyama_columns\n"
             "n = 100_000\n"
             "columns, counts, points = sugiyama_columns(3 + n, np.array([(0, 1), (1, 2), (0, 2)]), "
             "np.array([0, 1, 2] + [0] * n))\n"
             "print(json.dumps([counts.tolist(), points.tolist(), columns[:3].tolist(), "
             "float(columns[3:].min()), float(columns.max())]))")
    done = subprocess.run([sys.executable, "-c", child], cwd=ROOT, capture_output=True, text=True,
                          env=dict(os.environ, PYTHONPATH=str(ROOT)), timeout=300)
    assert done.returncode == 0, f"exit {done.returncode}: {done.stderr[-2000:]}"
    counts, points, chain, lone_min, right = json.loads(done.stdout)
    assert counts == [0, 0, 1]  # only the skip edge bends, once, in the middle layer
    assert len(points) == 1 and points[0][1] == 1.0 and chain[0] <= points[0][0] + 1
    # The lone vertices stand one column apart to the right of the chain, as igraph places pieces.
    assert lone_min > max(chain + [points[0][0]]) and right == lone_min + 100_000 - 1


def test_a_layer_wider_than_the_usual_stack_holds():
    """igraph places a layer's blocks recursively, a C stack frame each: a star of 100,000 leaves
    overflowed an 8 MB stack (segmentation fault), in the main thread as in a worker thread.
    Run in a child process, from a worker thread, as the app's layout runs."""
    child = ("import json, threading, numpy as np\nfrom engine.layout import sugiyama_columns\n"
             "n = 100_000\nfound = []\n"
             "def lay_out():\n"
             "    found.append(sugiyama_columns(n + 1, np.array([(0, k) for k in range(1, n + 1)]), "
             "np.array([0] + [1] * n)))\n"
             "worker = threading.Thread(target=lay_out)\nworker.start()\nworker.join()\n"
             "columns, counts, points = found[0]\n"
             "print(json.dumps([sorted(columns[1:].tolist()) == list(map(float, range(n))), "
             "int(counts.sum()), len(points)]))")
    done = subprocess.run([sys.executable, "-c", child], cwd=ROOT, capture_output=True, text=True,
                          env=dict(os.environ, PYTHONPATH=str(ROOT)), timeout=300)
    assert done.returncode == 0, f"exit {done.returncode}: {done.stderr[-2000:]}"
    assert json.loads(done.stdout) == [True, 0, 0]  # the leaves one column apart, no bends


def test_pieces_without_skip_edges_are_placed_as_one_igraph_call_places_them():
    """Runs of pieces without skip edges go to igraph together (one call each); where igraph is
    right (no skip edge anywhere) the answer is exactly its answer for the whole graph."""
    import igraph

    rng = np.random.default_rng(3)
    count = 700  # more pieces than one call takes (COMPONENTS_PER_CALL)
    sources = rng.integers(0, count - 1, 400)
    pairs = np.stack([sources, sources + 1], axis=1)  # short chains: only neighbouring layers
    layers = layout_module._longest_path_layers(count, pairs)
    assert len(igraph.Graph(n=count, edges=pairs.tolist()).connected_components()) > 2 * 64
    columns, counts, points = sugiyama_columns(count, pairs, layers)
    whole = igraph.Graph(n=count, edges=pairs.tolist(), directed=True).layout_sugiyama(
        layers=layers.tolist(), maxiter=20)
    assert columns.tolist() == [xy[0] for xy in whole.coords]
    assert counts.tolist() == [0] * len(pairs) and len(points) == 0


# ----------------------------------------------------------------------------- the guard at igraph's seam

PAIRS = np.array([[0, 1], [1, 2], [0, 2], [2, 3]])  # (0 -> 2) skips layer 1
LAYERS = np.array([0, 1, 2, 3])
COLUMNS = np.array([0.0, 0.0, 0.0, 0.0])


@pytest.mark.parametrize("bad", [np.nan, np.inf, 1e245, -1e245])
def test_a_non_finite_or_far_off_bend_is_dropped(bad, caplog):
    with caplog.at_level(logging.WARNING, logger="engine.layout"):
        counts, points = _checked_routes(COLUMNS, PAIRS, LAYERS, np.array([0, 0, 1, 0]), np.array([[bad, 1.0]]))
    assert counts.tolist() == [0, 0, 0, 0] and points.shape == (0, 2)
    assert "drawing those edges straight" in caplog.text


def test_a_bend_outside_its_edges_layers_or_one_too_many_is_dropped_and_the_good_ones_kept(caplog):
    # What igraph 1.0 answered for a level of two pieces: points on an edge between neighbouring
    # layers (at its own layer), and none on the edge that skips one.
    with caplog.at_level(logging.WARNING, logger="engine.layout"):
        counts, points = _checked_routes(COLUMNS, PAIRS, LAYERS, np.array([2, 0, 0, 0]),
                                         np.array([[1.0, 0.0], [2.0, 1.0]]))
    assert counts.tolist() == [0, 0, 0, 0] and len(points) == 0
    assert "2 of 4 edges" not in caplog.text and "1 of 4 edges (first: vertex 0 -> 1)" in caplog.text
    counts, points = _checked_routes(COLUMNS, PAIRS, LAYERS, np.array([0, 0, 2, 0]),
                                     np.array([[1.0, 1.0], [1.0, 1.5]]))  # two bends, one layer skipped
    assert counts.tolist() == [0, 0, 0, 0]
    good = _checked_routes(COLUMNS, PAIRS, LAYERS, np.array([0, 0, 1, 0]), np.array([[1.0, 1.0]]))
    assert good[0].tolist() == [0, 0, 1, 0] and good[1].tolist() == [[1.0, 1.0]]


def test_counts_that_do_not_add_up_straighten_every_edge_and_bad_columns_give_up(caplog):
    with caplog.at_level(logging.WARNING, logger="engine.layout"):
        counts, points = _checked_routes(COLUMNS, PAIRS, LAYERS, np.array([0, 0, 3, 0]), np.array([[1.0, 1.0]]))
        assert counts.tolist() == [0, 0, 0, 0] and len(points) == 0
        assert _checked_routes(np.array([0.0, np.nan, 1.0, 0.0]), PAIRS, LAYERS, np.zeros(4, int),
                               np.empty((0, 2))) is None
        assert _checked_routes(COLUMNS[:3], PAIRS, LAYERS, np.zeros(4, int), np.empty((0, 2))) is None
    assert "do not add up" in caplog.text and "layered fallback" in caplog.text


class _Answering:
    """An executor standing for the helper process running igraph: it answers with `answer`
    (a made-up igraph result) or fails with `error`, as a process pool's future does."""

    def __init__(self, answer=None, error=None):
        self.answer, self.error, self.calls = answer, error, 0

    def submit(self, function, *args):
        self.calls += 1
        future = Future()
        if self.error is not None:
            future.set_exception(self.error)
        else:
            count, pairs, _ = args
            future.set_result(self.answer(count, pairs))
        return future


def _offloaded(analysis, executor, monkeypatch):
    monkeypatch.setattr(layout_module, "LAYOUT_OFFLOAD_VERTICES", 0)
    layout_module.set_layout_executor(executor)
    try:
        return layout_graph(analysis)
    finally:
        layout_module.set_layout_executor(None)


def test_the_layout_draws_garbage_bends_straight_and_keeps_the_good_ones(per_head, monkeypatch, caplog):
    _, analysis, _ = per_head
    reference = layout_graph(analysis)
    count = len(reference.boxes)

    def garbage_on_the_first_bent_edge(count, pairs):
        columns, counts, points = sugiyama_columns(count, pairs, layout_module._longest_path_layers(count, pairs))
        points = points.copy()
        points[0] = (1e245, np.nan)
        return columns, counts, points

    with caplog.at_level(logging.WARNING, logger="engine.layout"):
        drawn = _offloaded(analysis, _Answering(garbage_on_the_first_bent_edge), monkeypatch)
    assert drawn.boxes == reference.boxes and drawn.method == "sugiyama" and count > 100
    changed = [(a, b) for a, b in zip(reference.edges, drawn.edges) if a != b]
    assert len(changed) == 1
    before, after = changed[0]
    assert len(before.points) > 2 and after.points == (before.points[0], before.points[-1])
    assert "drawing those edges straight" in caplog.text


def test_non_finite_columns_or_a_helper_that_died_give_the_layered_fallback(per_head, monkeypatch, caplog):
    _, analysis, _ = per_head
    with caplog.at_level(logging.WARNING, logger="engine.layout"):
        nan_columns = _offloaded(analysis, _Answering(lambda count, pairs: (
            np.full(count, np.nan), np.zeros(len(pairs), np.int64), np.empty((0, 2)))), monkeypatch)
        died = _Answering(error=BrokenProcessPool("the helper died"))
        after_crash = _offloaded(analysis, died, monkeypatch)
    for layout in (nan_columns, after_crash):
        assert layout.method == "layered" and len(layout.boxes) > 100
        assert all(len(edge.points) == 2 for edge in layout.edges)
    assert died.calls == 1  # and igraph was not run here instead (that would be "sugiyama")
    assert "ended the layout helper process" in caplog.text and "non-finite" in caplog.text


# ----------------------------------------------------------------------------- gui.responsive's helper

def _exit_in_helper():
    """Ends the process it runs in when that is a helper; in the test's own process says so."""
    if multiprocessing.parent_process() is not None:
        os._exit(3)
    return "ran in the test process"


def _exit_in_helper_marked():
    return _exit_in_helper()


_exit_in_helper_marked.rerun_after_helper_crash = False


def test_a_call_that_kills_the_helper_is_not_rerun_in_the_app_when_marked():
    from gui.responsive import _HelperClient

    for function, reruns in ((_exit_in_helper, True), (_exit_in_helper_marked, False)):
        with ProcessPoolExecutor(max_workers=1, mp_context=multiprocessing.get_context("spawn")) as executor:
            call = _HelperClient(executor).submit(function)
            if reruns:
                assert call.result() == "ran in the test process"
            else:
                with pytest.raises(BrokenProcessPool):
                    call.result()
    assert sugiyama_columns.rerun_after_helper_crash is False
