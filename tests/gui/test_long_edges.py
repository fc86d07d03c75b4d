"""Edges reaching far beyond the view (gui.graph_drawing.LongEdgeBatch) are painted clipped to it,
and look the same as painted whole; a group opened again draws what its first open drew."""
from __future__ import annotations

import numpy as np
import pytest
from PySide6.QtCore import QRectF, Qt
from PySide6.QtGui import QColor, QImage, QPainter, QPainterPath, QPen, QTransform
from PySide6.QtWidgets import QGraphicsPathItem, QGraphicsScene, QGraphicsView

import gui.graph_drawing as graph_drawing
from engine.grouping import FOLD_NODES_ENVIRONMENT
from engine.transformer_samples import TransformerConfig, write_transformer
from gui.graph_drawing import GraphScene, LongEdgeBatch, _path_elements
from tests.gui.gui_fixtures import LOAD_TIMEOUT_MS, open_and_wait, settings, window  # noqa: F401 (fixtures)

BLOCK = "group:namespace:model/layers.{}"


def _polylines(seed: int, count: int = 64, width: float = 3000.0, height: float = 20000.0) -> list[np.ndarray]:
    """Random polylines running down a tall area; every third is vertical, some have level runs."""
    rng = np.random.default_rng(seed)
    lines = []
    for index in range(count):
        n = int(rng.integers(2, 9))
        xs = np.full(n, rng.uniform(0, width)) if index % 3 == 0 else np.sort(rng.uniform(0, width, n))
        ys = np.sort(rng.uniform(0, height, n))
        if index % 5 == 0 and n > 2:
            ys[1] = ys[2]  # a level segment
        lines.append(np.stack([xs, ys], axis=1))
    return lines


def _path(lines: list[np.ndarray]) -> QPainterPath:
    path = QPainterPath()
    for line in lines:
        path.moveTo(*line[0])
        for x, y in line[1:]:
            path.lineTo(x, y)
    return path


def _pieces(path: QPainterPath) -> list[np.ndarray]:
    """The polylines of a path (its elements split at every move)."""
    elements = _path_elements(path)
    moves = np.flatnonzero(elements["type"] == 0).tolist() + [len(elements)]
    points = np.stack([elements["x"], elements["y"]], axis=1).astype(float)
    return [points[a:b] for a, b in zip(moves[:-1], moves[1:])]


def _clipped(item: LongEdgeBatch, left: float, top: float, right: float, bottom: float):
    """(pieces, paths) of item.clipped_pieces: every drawn polyline (the lines of one segment and
    each path's pieces), and the paths."""
    lines, paths = item.clipped_pieces(left, top, right, bottom)
    return [line.reshape(2, 2) for line in lines] + [piece for path in paths for piece in _pieces(path)], paths


def _distance_to_segments(points: np.ndarray, segments: np.ndarray) -> np.ndarray:
    """Distance of each point to the nearest of the segments (x0, y0, x1, y1)."""
    start, end = segments[:, :2], segments[:, 2:]
    delta = end - start
    length2 = np.maximum((delta ** 2).sum(axis=1), 1e-12)
    t = np.clip(((points[:, None, :] - start[None]) * delta[None]).sum(axis=2) / length2, 0, 1)
    nearest = start[None] + t[..., None] * delta[None]
    return np.sqrt(((points[:, None, :] - nearest) ** 2).sum(axis=2)).min(axis=1)


@pytest.mark.parametrize("seed, rect", [(1, (800, 5000, 2100, 6200)), (2, (-50, -50, 400, 300)),
                                        (3, (1000, 19000, 5000, 25000)), (4, (5000, 0, 6000, 100))])
def test_the_clipped_path_is_exactly_the_part_of_the_edges_inside_the_rectangle(qapp, seed, rect):
    lines = _polylines(seed)
    item = LongEdgeBatch(_path(lines), QPen(QColor("#7a7a7a"), 2.5))
    left, top, right, bottom = rect
    pieces, paths = _clipped(item, left, top, right, bottom)
    # Points sampled along every laid-out segment: those inside the rectangle lie on a clipped
    # piece, those outside on none; the pieces lie inside the rectangle.
    samples = np.concatenate([line[k] + np.linspace(0, 1, 97)[:, None] * (line[k + 1] - line[k])
                              for line in lines for k in range(len(line) - 1)])
    inside = ((samples[:, 0] > left + 1e-6) & (samples[:, 0] < right - 1e-6)
              & (samples[:, 1] > top + 1e-6) & (samples[:, 1] < bottom - 1e-6))
    outside = ((samples[:, 0] < left - 1e-6) | (samples[:, 0] > right + 1e-6)
               | (samples[:, 1] < top - 1e-6) | (samples[:, 1] > bottom + 1e-6))
    if not pieces:
        assert not inside.any()
        return
    assert inside.any()  # the rectangles above cut the edges
    segments = np.concatenate([np.concatenate([p[:-1], p[1:]], axis=1) for p in pieces])
    # (Cut ends are put on a grid of 1/1024 unit: the pieces of edges running together come out identical.)
    assert _distance_to_segments(samples[inside], segments).max() < 1e-3
    if outside.any():
        assert _distance_to_segments(samples[outside], segments).min() > 0
    corners = np.concatenate(pieces)
    assert ((corners[:, 0] >= left - 1e-3) & (corners[:, 0] <= right + 1e-3)
            & (corners[:, 1] >= top - 1e-3) & (corners[:, 1] <= bottom + 1e-3)).all()
    # Each piece is one run of uncut segments of one edge: its inner corners are laid-out points.
    laid_out = {tuple(point) for line in lines for point in line.tolist()}
    for piece in pieces:
        assert all(tuple(point) in laid_out for point in piece[1:-1].tolist())
    # A path per edge (pieces of one segment are lines): all of a path's points lie on one edge, and
    # no two paths on the same one.
    line_segments = [np.concatenate([line[:-1], line[1:]], axis=1) for line in lines]
    edges_of_paths = []
    for path in paths:
        points = np.concatenate(_pieces(path))
        on = [i for i, segs in enumerate(line_segments) if _distance_to_segments(points, segs).max() < 1e-3]
        assert on
        edges_of_paths.append(on[0])
    assert len(set(edges_of_paths)) == len(paths)


def test_edges_inside_the_rectangle_are_drawn_as_laid_out(qapp):
    lines = _polylines(5)
    path = _path(lines)
    item = LongEdgeBatch(path, QPen(QColor("#7a7a7a"), 2.5))
    pieces, paths = _clipped(item, -10, -10, 3010, 20010)
    assert len(pieces) == len(lines)  # each edge whole, as laid out: a line if it is one segment
    assert len(paths) == sum(len(line) > 2 for line in lines)
    assert sorted(map(np.ndarray.tolist, pieces)) == sorted(map(np.ndarray.tolist, _pieces(path)))
    assert _clipped(item, 4000, 0, 5000, 100) == ([], [])


def _looks_the_same(expected: np.ndarray, shown: np.ndarray) -> bool:
    """The same strokes: only anti-aliased rims may differ (rounding where a line is cut, so a rim's
    grey steps shift along a long, nearly level line; the rims of two edges blended where they
    cross instead of merged), never a stroke's body: an edge piece missing or added differs by
    ~130 levels of grey.  The ink (sum of darkness) stays within 2 %."""
    difference = np.abs(expected.astype(int) - shown.astype(int)).max()
    ink, shown_ink = (255 - expected[..., :3].astype(int)).sum(), (255 - shown[..., :3].astype(int)).sum()
    return difference <= 64 and abs(ink - shown_ink) <= 0.02 * max(ink, 1)


def _grab(scene: QGraphicsScene, scale: float, center: tuple[float, float]) -> np.ndarray:
    """What an 800 x 600 view of `scene` at `scale` centred on `center` shows."""
    view = QGraphicsView(scene)
    view.setRenderHints(QPainter.RenderHint.Antialiasing | QPainter.RenderHint.TextAntialiasing)
    view.setViewportUpdateMode(QGraphicsView.ViewportUpdateMode.FullViewportUpdate)
    view.setHorizontalScrollBarPolicy(Qt.ScrollBarPolicy.ScrollBarAlwaysOff)
    view.setVerticalScrollBarPolicy(Qt.ScrollBarPolicy.ScrollBarAlwaysOff)
    view.resize(800, 600)
    view.setTransform(QTransform.fromScale(scale, scale))
    view.centerOn(*center)
    image = view.viewport().grab().toImage()
    view.setScene(None)
    return np.asarray(image.constBits()).reshape(image.height(), image.width(), 4).copy()


def _alone(item) -> QGraphicsScene:
    scene = QGraphicsScene()
    scene.addItem(item)
    scene.setSceneRect(QRectF(-100, -100, 3200, 20200))
    return scene


@pytest.mark.parametrize("scale, center", [(0.75, (1500, 9000)), (1.0, (300, 150)), (2.0, (2900, 19900))])
def test_a_long_batch_looks_as_painted_whole(qapp, scale, center):
    path, pen = _path(_polylines(6)), QPen(QColor("#7a7a7a"), 2.5)
    whole = QGraphicsPathItem(path)
    whole.setPen(pen)
    clipped = LongEdgeBatch(path, pen)
    expected, shown = _grab(_alone(whole), scale, center), _grab(_alone(clipped), scale, center)
    assert clipped._clipped[0] is not None  # it was painted clipped
    ink = expected[..., 0] < 200
    assert ink.sum() > 1000  # edges are in view
    assert _looks_the_same(expected, shown)


@pytest.fixture(scope="module")
def decoder(tmp_path_factory):
    config = TransformerConfig(layers=6, hidden=64, heads=4, kv_heads=2, intermediate=96, vocab=50, past=5)
    return write_transformer(tmp_path_factory.mktemp("long-edges") / "decoder.onnx", config)


def _regions(scene) -> list[np.ndarray]:
    """Scene `scene` as a view shows it around block 2's frame (1:1 and 2:1), and rendered whole
    (as exports do: then every item is painted whole)."""
    frame = scene.structure_rect(BLOCK.format(2))
    images = [_grab(scene, 1.0, (frame.center().x(), frame.top() + 150)),
              _grab(scene, 2.0, (frame.center().x(), frame.center().y()))]
    image = QImage(900, 900, QImage.Format.Format_ARGB32_Premultiplied)
    image.fill(QColor("#fafafa"))
    painter = QPainter(image)
    painter.setRenderHints(QPainter.RenderHint.Antialiasing | QPainter.RenderHint.TextAntialiasing)
    scene.render(painter)
    painter.end()
    return images + [np.asarray(image.constBits()).reshape(image.height(), image.width(), 4).copy()]


def _open_block(qtbot, window, collapse: bool = False) -> None:
    with qtbot.waitSignal(window.modelLoaded, timeout=LOAD_TIMEOUT_MS):
        window.toggle_group(BLOCK.format(2), collapse)


def test_a_folded_model_looks_the_same_with_every_edge_batch_clipped(qtbot, window, decoder, monkeypatch):
    monkeypatch.setenv(FOLD_NODES_ENVIRONMENT, "100")
    open_and_wait(qtbot, window, decoder)
    _open_block(qtbot, window)
    assert not any(isinstance(item, LongEdgeBatch) for item in window.scene.edge_items)
    plain = _regions(window.scene)
    monkeypatch.setattr(graph_drawing, "LONG_EDGE_BATCH_EXTENT", 0.0)  # every batch painted clipped
    scene = GraphScene(window.loaded)
    edges = [item for item in scene.edge_items if item.brush().style() == Qt.BrushStyle.NoBrush]
    assert edges and all(isinstance(item, LongEdgeBatch) for item in edges)
    for expected, shown in zip(plain, _regions(scene)):
        assert _looks_the_same(expected, shown)
    assert any(item._clipped[0] is not None for item in edges)  # cut where they reach beyond a region


def test_a_reopened_group_draws_what_its_first_open_drew(qtbot, window, decoder, monkeypatch):
    monkeypatch.setenv(FOLD_NODES_ENVIRONMENT, "100")
    open_and_wait(qtbot, window, decoder)
    layouts = window.loaded.folded_layouts
    assert not layouts.cached(BLOCK.format(2))
    _open_block(qtbot, window)
    first = _regions(window.scene)
    _open_block(qtbot, window, collapse=True)
    assert layouts.cached(BLOCK.format(2))
    _open_block(qtbot, window)
    assert window.loaded.folded_layouts is layouts
    for expected, shown in zip(first, _regions(window.scene)):
        assert np.array_equal(expected, shown)


def test_a_first_open_makes_no_label_text_until_a_box_is_painted(qtbot, window, decoder, monkeypatch):
    from gui.app import relayout
    from gui.graph_drawing import GraphScene as Scene
    monkeypatch.setenv(FOLD_NODES_ENVIRONMENT, "100")
    open_and_wait(qtbot, window, decoder)
    loaded = window.loaded
    known = loaded.folded_layouts.annotations.setdefault("scene_text", {})
    made_before = dict(known)
    opened = relayout(loaded, loaded.include_constants, collapsed=loaded.collapsed - {BLOCK.format(4)})
    assert known == made_before  # the worker made the scene data of the new layout without text
    lines, analysis = opened.scene_data.lines, loaded.analysis
    node = next(i for i, n in enumerate(opened.scene_data.node_ids) if n not in opened.groups and n not in known)
    assert lines[node] == Scene.box_lines(opened.scene_data.node_ids[node], analysis.graph, analysis)
    assert opened.scene_data.node_ids[node] in known  # made when read, and kept for the next relayout
