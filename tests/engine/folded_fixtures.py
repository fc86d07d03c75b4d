"""Shared by the tests of engine.folded_layout (test_folded_prepare, test_twin_pieces,
test_broadcast_lanes, test_outputs_beside): a generated decoder with repeated blocks (both styles),
a drawing compared whole, and the geometry checks of a composed drawing."""
from __future__ import annotations

import pytest

from engine.analysis import analyze
from engine.grouping import folded_start, namespace_groups
from engine.transformer_samples import STYLES, TransformerConfig, write_transformer
from importers import open_model


@pytest.fixture(scope="module", params=STYLES)
def decoder(request, tmp_path_factory):
    config = TransformerConfig(layers=4, hidden=64, heads=4, kv_heads=2, intermediate=96, vocab=50, past=5,
                               style=request.param)
    path = write_transformer(tmp_path_factory.mktemp(request.param) / "decoder.onnx", config)
    analysis = analyze(open_model(str(path)))
    groups = namespace_groups(analysis)
    return analysis, groups, folded_start(groups, analysis)


def inside(groups, block: str) -> set[str]:
    """`block` and every group inside it."""
    name = groups[block].name + "/"
    return {g for g, group in groups.items() if g == block or group.name.startswith(name)}


def drawing(layout) -> tuple:
    """Boxes, edges with every point and tensor name, frames, members, size and method."""
    return (layout.boxes, [tuple(e) for e in layout.edges], dict(layout.frames), dict(layout.members),
            layout.width, layout.height, layout.method)


def composed_with_opened(analysis, groups, opened: str):
    """The drawing with the blocks named in `opened` (space-separated, "all": every group) opened."""
    from engine.folded_layout import FoldedLayouts

    start = folded_start(groups, analysis)
    collapsed = frozenset() if opened == "all" else \
        start - {g for g, group in groups.items() if group.name.removeprefix("model/") in opened.split()}
    return FoldedLayouts(analysis, groups, False).compose(collapsed)


def crossing(rects: dict, box: str) -> list[str]:
    """The boxes and frames `box` overlaps without one holding the other."""
    def holds(a, b):
        return a[0] <= b[0] and b[0] + b[2] <= a[0] + a[2] and a[1] <= b[1] and b[1] + b[3] <= a[1] + a[3]

    def meet(a, b):
        return a[0] < b[0] + b[2] and b[0] < a[0] + a[2] and a[1] < b[1] + b[3] and b[1] < a[1] + a[3]

    return [other for other, rect in rects.items() if other != box and meet(rects[box], rect)
            and not holds(rect, rects[box])]


def assert_edges_attached(layout) -> None:
    """Every edge runs from its source's bottom to its target's top (a frame's top or bottom)."""
    rects = {**layout.boxes, **layout.frames}
    for e in layout.edges:
        for end, (px, py), bottom in ((e.source, e.points[0], True), (e.target, e.points[-1], False)):
            x, y, w, h = rects[end]
            sides = (y, y + h) if end in layout.frames else ((y + h,) if bottom else (y,))
            assert x - 1e-6 <= px <= x + w + 1e-6 and min(abs(py - s) for s in sides) < 1e-6, (e, end)
