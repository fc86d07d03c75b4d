"""engine.folded_layout: a namespace-grouped model laid out a level at a time, composed in frames."""
from __future__ import annotations

import itertools

import pytest

from engine.analysis import analyze
from engine.folded_layout import FoldedLayouts
from engine.grouping import folded_start, namespace_groups
from engine.layout import layout_graph
from engine.transformer_samples import TransformerConfig, write_transformer
from importers import open_model


@pytest.fixture(scope="module")
def grouped(tmp_path_factory):
    config = TransformerConfig(layers=4, hidden=64, heads=4, kv_heads=2, intermediate=96, vocab=50, past=5)
    path = write_transformer(tmp_path_factory.mktemp("folded_layout") / "decoder.onnx", config)
    analysis = analyze(open_model(str(path)))
    groups = namespace_groups(analysis)
    return analysis, groups, folded_start(groups, analysis)


def _crossing(rects: dict) -> list:
    """Pairs of rectangles that overlap without one holding the other (a frame holds its contents)."""
    def holds(a, b):
        return a[0] <= b[0] and b[0] + b[2] <= a[0] + a[2] and a[1] <= b[1] and b[1] + b[3] <= a[1] + a[3]

    def meet(a, b):
        return a[0] < b[0] + b[2] and b[0] < a[0] + a[2] and a[1] < b[1] + b[3] and b[1] < a[1] + a[3]
    return [(p, q) for (p, a), (q, b) in itertools.combinations(rects.items(), 2)
            if meet(a, b) and not holds(a, b) and not holds(b, a)]


@pytest.mark.parametrize("opened", [("model/layers.1",), ("model/layers.1", "model/layers.1/self_attn"),
                                    ("model/layers.0", "model/layers.2", "model/layers.2/mlp")])
@pytest.mark.parametrize("constants", [False, True])
def test_the_composed_layout_draws_what_the_flat_one_draws_in_frames(grouped, opened, constants):
    analysis, groups, start = grouped
    collapsed = start - {f"group:namespace:{name}" for name in opened}
    composed = FoldedLayouts(analysis, groups, include_constants=constants).compose(collapsed)
    flat = layout_graph(analysis, include_constants=constants, groups=groups, collapsed=collapsed)
    # The same boxes, every node drawn by the same box (its own or its collapsed group's).
    assert set(composed.boxes) == set(flat.boxes)
    assert all(composed.box_of(n) == flat.box_of(n) for n in analysis.order)
    # Every opened group that is drawn has a frame holding the boxes of its nodes.
    assert set(composed.frames) == {g for g in groups if g not in collapsed
                                    and all(p not in collapsed for p in _parents(groups, g))}
    for group_id, (x, y, w, h) in composed.frames.items():
        for node_id in groups[group_id].members:
            box = composed.box_of(node_id)
            if box is not None:
                bx, by, bw, bh = composed.boxes[box]
                assert x <= bx and bx + bw <= x + w and y <= by and by + bh <= y + h
    # Nothing overlaps (boxes and frames), and every edge joins something drawn.
    assert not _crossing({**composed.boxes, **composed.frames})
    drawn = set(composed.boxes) | set(composed.frames)
    assert all(e.source in drawn and e.target in drawn and len(e.points) >= 2 for e in composed.edges)
    assert composed.width >= max(x + w for x, _, w, _ in composed.boxes.values())
    # Edges stay attached: each starts on its source's bottom and ends on its target's top (a
    # frame is entered and left on its top or bottom side).
    for e in composed.edges:
        for end, (px, py), side in ((e.source, e.points[0], 1), (e.target, e.points[-1], 0)):
            x, y, w, h = composed.frames.get(end) or composed.boxes[end]
            sides = (y, y + h) if end in composed.frames else ((y + h,) if side else (y,))
            assert x - 1e-6 <= px <= x + w + 1e-6 and min(abs(py - s) for s in sides) < 1e-6, (e, end)


def _parents(groups, group_id):
    parent = groups[group_id].parent
    while parent is not None:
        yield parent
        parent = groups[parent].parent


def test_levels_are_laid_out_once_and_repeated_blocks_share_one(grouped):
    analysis, groups, start = grouped
    layouts = FoldedLayouts(analysis, groups, include_constants=False)
    layouts.compose(start)
    first = layouts.compose(start - {"group:namespace:model/layers.0"})
    spent = layouts.seconds_laying_out
    assert layouts.compose(start - {"group:namespace:model/layers.0"}).boxes == first.boxes
    assert layouts.seconds_laying_out == spent  # nothing laid out again
    layouts.compose(start - {"group:namespace:model/layers.3"})
    assert layouts.reused_levels == 1  # layers.3 has layers.0's structure: its geometry, its names
    assert set(layouts.level("group:namespace:model/layers.3").boxes) >= {
        "group:namespace:model/layers.3/self_attn", "group:namespace:model/layers.3/mlp"}


@pytest.mark.parametrize("constants", [False, True])
def test_opening_a_group_moves_only_its_own_row_aside_and_the_rows_below_down(grouped, constants):
    analysis, groups, start = grouped
    layouts = FoldedLayouts(analysis, groups, include_constants=constants)
    before = layouts.compose(start)
    block = "group:namespace:model/layers.1"
    after = layouts.compose(start - {block})
    x, y, w, h = before.boxes[block]
    fx, fy, fw, fh = after.frames[block]
    assert (fx, fy) == (x, y) and fw > w and fh > h
    above = [b for b, (_, by, _, bh) in before.boxes.items() if by + bh < y and b in after.boxes]
    below = [b for b, (_, by, _, _) in before.boxes.items() if by > y + h and b in after.boxes]
    assert above and below
    # Nothing above its row moves; nothing below it moves sideways (no blank band across the drawing).
    assert all(after.boxes[b] == before.boxes[b] for b in above)
    assert all(after.boxes[b][0] == before.boxes[b][0] and after.boxes[b][1] >= before.boxes[b][1] for b in below)
