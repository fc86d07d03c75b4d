"""Edges that run together down one lane (a decoder's mask and rotary tensors read by every block,
engine.layout._broadcast_edges) are drawn once per edge batch where they pass a view, and every
edge is still drawn whole: gui.graph_drawing.LongEdgeBatch.clipped_pieces on a generated decoder
of 12 blocks, opened folded and expanded in the real window."""
from __future__ import annotations

from collections import defaultdict

import numpy as np
import pytest

import gui.graph_drawing as graph_drawing
from engine.layout import BROADCAST_READERS
from gui.graph_drawing import GraphScene, LongEdgeBatch
from tests.gui.gui_fixtures import open_folded, relaid, settings, window, write_small_decoder  # noqa: F401 (fixtures)
from tests.gui.test_long_edges import _distance_to_segments, _grab, _pieces

BLOCKS = 12


@pytest.fixture(scope="module")
def decoder(tmp_path_factory):
    assert BLOCKS >= BROADCAST_READERS  # its mask and rotary tensors get lanes
    return write_small_decoder(tmp_path_factory.mktemp("lanes"), BLOCKS)


@pytest.fixture
def expanded(qtbot, window, decoder, monkeypatch):
    """The window showing the decoder expanded, and a scene of it with every edge batch clipped."""
    open_folded(qtbot, window, decoder, monkeypatch)
    relaid(qtbot, window, lambda: window.set_all_groups(False))
    assert not window.loaded.collapsed
    monkeypatch.setattr(graph_drawing, "LONG_EDGE_BATCH_EXTENT", 0.0)  # every batch painted clipped
    return window, GraphScene(window.loaded)


def _lanes(layout) -> dict[float, list[int]]:
    """Lane x -> the edges drawn down it: a source's edges (BROADCAST_READERS or more) whose third
    and fourth points make the vertical run of _broadcast_edges's polyline."""
    by_lane = defaultdict(list)
    for index, edge in enumerate(layout.edges):
        points = edge.points
        if len(points) == 6 and points[2][0] == points[3][0] and points[1][1] == points[2][1]:
            by_lane[(edge.source, points[2][0])].append(index)
    lanes = {x: edges for (_, x), edges in by_lane.items() if len(edges) >= BROADCAST_READERS}
    assert lanes, "the expanded decoder has no broadcast lanes"
    return lanes


def _middle_clip(layout, lane_edges: list[int], lane_x: float) -> tuple[float, float, float, float]:
    """A rectangle across the lane, around the middle of its run, between two readers' rows (no
    branch leaves the lane inside it)."""
    turns = sorted({layout.edges[k].points[3][1] for k in lane_edges})
    spans = [sorted((layout.edges[k].points[2][1], layout.edges[k].points[3][1])) for k in lane_edges]

    def along(pair):  # the edges running down the lane past this run, then its length
        return sum(a <= pair[0] and pair[1] <= b for a, b in spans), pair[1] - pair[0]

    low, high = max(zip(turns, turns[1:]), key=along)  # the run between readers most edges pass, the longest
    middle = (low + high) / 2
    half = min(200.0, (high - low) / 3)
    return lane_x - 150.0, middle - half, lane_x + 150.0, middle + half


def _drawn(item: LongEdgeBatch, clip) -> list[np.ndarray]:
    lines, paths = item.clipped_pieces(*clip)
    return [line.reshape(2, 2) for line in lines] + [piece for path in paths for piece in _pieces(path)]


def test_a_lane_is_drawn_once_per_batch_where_its_edges_pass(expanded):
    _, scene = expanded
    layout = scene.loaded.layout
    for lane_x, lane_edges in _lanes(layout).items():
        clip = _middle_clip(layout, lane_edges, lane_x)
        left, top, right, bottom = clip
        passing = [k for k in lane_edges if min(layout.edges[k].points[2][1], layout.edges[k].points[3][1]) < top
                   and max(layout.edges[k].points[2][1], layout.edges[k].points[3][1]) > bottom]
        assert len(passing) >= 2  # several edges run down the lane across the rectangle
        by_batch = defaultdict(list)
        for k in passing:
            by_batch[int(scene._data.edge_batch_of[k])].append(k)
        for batch in by_batch:
            item = scene.edge_items[batch]
            assert isinstance(item, LongEdgeBatch)
            on_lane = [piece for piece in _drawn(item, clip)
                       if np.allclose(piece[:, 0], lane_x) and piece[:, 1].min() <= top + 1e-3
                       and piece[:, 1].max() >= bottom - 1e-3]
            assert len(on_lane) == 1, (lane_x, batch, len(by_batch[batch]), len(on_lane))


def test_every_edge_is_still_drawn_where_it_passes(expanded):
    """Each reader is still joined to its lane's source: every point of every edge inside the
    rectangle (across the lanes, where readers' branches leave them, at the sources) lies on a
    piece its batch draws."""
    _, scene = expanded
    layout = scene.loaded.layout
    lanes = _lanes(layout)
    rectangles = []
    for lane_x, lane_edges in lanes.items():
        first = layout.edges[lane_edges[0]]
        for point in (first.points[1], first.points[3], layout.edges[lane_edges[len(lane_edges) // 2]].points[3]):
            rectangles.append((min(point[0], lane_x) - 300.0, point[1] - 250.0, max(point[0], lane_x) + 300.0,
                               point[1] + 250.0))
    checked = set()
    for clip in rectangles:
        left, top, right, bottom = clip
        drawn = {}
        for index, edge in enumerate(layout.edges):
            line = np.array(edge.points, dtype=float)
            samples = np.concatenate([line[k] + np.linspace(0, 1, 41)[:, None] * (line[k + 1] - line[k])
                                      for k in range(len(line) - 1)])
            inside = ((samples[:, 0] > left + 1) & (samples[:, 0] < right - 1)
                      & (samples[:, 1] > top + 1) & (samples[:, 1] < bottom - 1))
            if not inside.any():
                continue
            batch = int(scene._data.edge_batch_of[index])
            if batch not in drawn:
                drawn[batch] = np.concatenate([np.concatenate([p[:-1], p[1:]], axis=1)
                                               for p in _drawn(scene.edge_items[batch], clip)])
            assert _distance_to_segments(samples[inside], drawn[batch]).max() < 1e-2, (edge.source, edge.target)
            checked.add(index)
    lane_edges = {k for edges in lanes.values() for k in edges}
    assert lane_edges <= checked  # every lane edge was looked at in some rectangle


def test_the_lanes_look_as_painted_whole(expanded, monkeypatch):
    """The view across the lanes shows the same strokes as Qt's paint of the whole batches: the ink
    within 2 %, and no stroke missing or added (a pixel of a stroke's body is ~130 grey levels from
    the background).  Rims may be lighter: an edge drawn once is not blended with itself."""
    window, scene = expanded
    layout = scene.loaded.layout
    lane_x, lane_edges = next(iter(_lanes(layout).items()))
    turns = sorted(layout.edges[k].points[3][1] for k in lane_edges)
    center = (lane_x + 300.0, turns[len(turns) // 2])
    shown = _grab(scene, 1.0, center)
    assert any(item._clipped[0] is not None for item in scene.edge_items if isinstance(item, LongEdgeBatch))
    monkeypatch.setattr(graph_drawing, "LONG_EDGE_BATCH_EXTENT", float("inf"))  # every batch painted whole
    whole = GraphScene(window.loaded)
    assert not any(isinstance(item, LongEdgeBatch) for item in whole.edge_items)
    expected = _grab(whole, 1.0, center)
    body, shown_body = expected[..., 0] < 160, shown[..., 0] < 160
    ink, shown_ink = (255 - expected[..., :3].astype(int)).sum(), (255 - shown[..., :3].astype(int)).sum()
    assert body.sum() > 500  # edges and boxes are in view
    assert abs(ink - shown_ink) <= 0.02 * ink
    # A body pixel of either lies on or next to a body pixel of the other.
    assert (body & ~_grown(shown_body)).sum() <= 0.01 * body.sum()
    assert (shown_body & ~_grown(body)).sum() <= 0.01 * shown_body.sum()


def _grown(mask: np.ndarray) -> np.ndarray:
    """`mask` and its pixels' eight neighbours."""
    grown = np.zeros_like(mask)
    for dy in (-1, 0, 1):
        for dx in (-1, 0, 1):
            grown |= np.roll(np.roll(mask, dy, axis=0), dx, axis=1)
    return grown
