"""A folded decoder's blocks form a column: the tensors every block reads (attention mask, rotary
cos and sin) are drawn in lanes left of the boxes, not laid out (engine.layout._broadcast_split).
Laid out, their long edges spread the blocks into a staircase 100,000 units wide (t20k.onnx).  Its
KV-cache inputs, each read by one block, are drawn beside that block inside the `model` frame, not
in the top row (FoldedLayouts._inputs_homed)."""
from __future__ import annotations

import pytest

from engine.analysis import analyze
from engine.folded_layout import FoldedLayouts
from engine.group_index import level_graph
from engine.grouping import folded_start, namespace_groups
from engine.layout import BROADCAST_READERS, GROUP_PREFIX, INPUT_PREFIX, NODE_WIDTH, layout_nodes
from engine.transformer_samples import STYLES, TransformerConfig, write_transformer
from importers import open_model
from tests.engine.folded_fixtures import assert_edges_attached, composed_with_opened, crossing


def _decoder(tmp_path_factory, layers: int, style: str):
    config = TransformerConfig(layers=layers, hidden=64, heads=4, kv_heads=2, intermediate=96, vocab=50, past=5,
                               style=style)
    path = write_transformer(tmp_path_factory.mktemp(f"{style}{layers}") / "decoder.onnx", config)
    analysis = analyze(open_model(str(path)))
    groups = namespace_groups(analysis)
    return analysis, groups


@pytest.fixture(scope="module", params=STYLES)
def decoder(request, tmp_path_factory):
    return _decoder(tmp_path_factory, 24, request.param)


def _blocks(layout, groups) -> list[str]:
    return [g for g in layout.boxes if g in groups and groups[g].name.rsplit("/", 1)[-1].startswith("layers.")]


def _level_laid_out(folded: FoldedLayouts, level: str, lanes: bool):
    """The level as FoldedLayouts lays it out, with or without lanes (engine.layout directly)."""
    index, arrays = folded._indexed(), folded.arrays
    positions = index.members[index.number[level]]
    nodes = positions[arrays.visible(False)[positions]]
    boxes = level_graph(arrays, arrays.pairs(False), index, nodes, level, include_io=False)
    children = [c for c in folded.groups if folded.groups[c].parent == level]
    return layout_nodes(folded.analysis.graph, boxes.boxes, include_io=False, box_for={c: c for c in children},
                        members={c: folded.groups[c].members for c in children}, tensors=(boxes.pairs, {}),
                        broadcast_lanes=lanes)


def _crosses(points, rect) -> bool:
    """Whether the polyline's axis-aligned segments pass through the rectangle's inside."""
    x, y, w, h = rect
    for (x0, y0), (x1, y1) in zip(points, points[1:]):
        if max(x0, x1) > x + 1e-6 and min(x0, x1) < x + w - 1e-6 and \
                max(y0, y1) > y + 1e-6 and min(y0, y1) < y + h - 1e-6:
            return True
    return False


def test_folded_decoder_blocks_form_a_column(decoder):
    analysis, groups = decoder
    layout = FoldedLayouts(analysis, groups, False).compose(folded_start(groups, analysis))
    blocks = _blocks(layout, groups)
    assert len(blocks) == 24
    centres = [layout.boxes[b][0] + layout.boxes[b][2] / 2 for b in blocks]
    assert max(centres) - min(centres) < NODE_WIDTH / 2, centres
    tops = [layout.boxes[b][1] for b in blocks]
    assert tops == sorted(tops)  # layers.0 at the top, each block below the one before


def test_every_tensor_is_still_drawn_and_lanes_cross_no_box(decoder):
    analysis, groups = decoder
    folded = FoldedLayouts(analysis, groups, False)
    level = next(g for g, group in groups.items() if group.name == "model")
    with_lanes, without = _level_laid_out(folded, level, True), _level_laid_out(folded, level, False)
    assert with_lanes.boxes.keys() == without.boxes.keys()

    def reads(layout):
        return {(e.source, e.target, name) for e in layout.edges for name in (e.values or (e.value,))}

    assert reads(with_lanes) == reads(without)
    # The level as FoldedLayouts keeps it is the one with lanes (and the KV-cache inputs and the
    # present outputs beside their block: its rows moved down to make room for those, not aside).
    kept = [(e.source, e.target, e.value, [x for x, _ in e.points], e.values) for e in folded.level(level).edges
            if not e.source.startswith(INPUT_PREFIX) and e.target in with_lanes.boxes]
    assert kept == [(e.source, e.target, e.value, [x for x, _ in e.points], e.values) for e in with_lanes.edges]
    laid_out = {(e.source, e.target) for e in without.edges}
    lanes = [e for e in with_lanes.edges if len(e.points) == 6 and e.points[2][0] < min(
        x for x, _, _, _ in with_lanes.boxes.values())]
    # 3 tensors (mask, cos, sin) from 2 boxes to each of 24 blocks: one edge per pair of boxes.
    assert len(lanes) == 2 * 24
    assert all((e.source, e.target) in laid_out for e in lanes)
    for edge in lanes:
        sx, sy, sw, sh = with_lanes.boxes[edge.source]
        tx, ty, tw, _ = with_lanes.boxes[edge.target]
        assert edge.points[0] == (sx + sw / 2, sy + sh) and edge.points[-1][1] == ty
        assert tx < edge.points[-1][0] < tx + tw
        assert not [b for b, rect in with_lanes.boxes.items() if _crosses(edge.points, rect)], edge
    assert with_lanes.left <= min(e.points[2][0] for e in lanes)


def test_a_block_opened_from_the_column_gets_its_lanes_at_its_frame(decoder):
    analysis, groups = decoder
    folded = FoldedLayouts(analysis, groups, False)
    start = folded_start(groups, analysis)
    block = next(g for g, group in groups.items() if group.name.endswith("layers.5"))
    opened = folded.compose(start - {block})
    frame = opened.frames[block]
    into = [e for e in opened.edges if e.target == block or opened.box_for.get(e.target) == block]
    assert into
    blocks = _blocks(opened, groups)
    assert len(blocks) == 23
    # The column stays a column around the frame, and no box overlaps the frame.
    centres = [opened.boxes[b][0] + opened.boxes[b][2] / 2 for b in blocks]
    assert max(centres) - min(centres) < NODE_WIDTH / 2
    fx, fy, fw, fh = frame
    for b in blocks:
        x, y, w, h = opened.boxes[b]
        assert y + h <= fy or y >= fy + fh or x + w <= fx or x >= fx + fw, b


def test_a_few_readers_are_laid_out_as_before(tmp_path_factory):
    """Below BROADCAST_READERS readers nothing changes: a 4-block decoder's level is the same."""
    assert BROADCAST_READERS > 4
    analysis, groups = _decoder(tmp_path_factory, 4, STYLES[0])
    folded = FoldedLayouts(analysis, groups, False)
    level = next(g for g, group in groups.items() if group.name == "model")
    with_lanes, without = _level_laid_out(folded, level, True), _level_laid_out(folded, level, False)
    assert with_lanes == without


def _kv_inputs(analysis) -> list[str]:
    return [INPUT_PREFIX + name for name in analysis.graph.inputs if name.startswith("past_key_values.")]


def _reader_block(analysis, groups, box: str) -> str:
    name = box[len(INPUT_PREFIX):]
    block = name.split(".")[1]
    return next(g for g, group in groups.items() if group.name.endswith(f"model/layers.{block}"))


def test_kv_inputs_are_beside_their_block_not_in_the_top_row(decoder):
    analysis, groups = decoder
    layout = FoldedLayouts(analysis, groups, False).compose(folded_start(groups, analysis))
    kv = _kv_inputs(analysis)
    assert len(kv) == 2 * 24
    model = next(g for g, group in groups.items() if group.name == "model")
    fx, fy, fw, fh = layout.frames[model]
    top_row = [b for b in layout.boxes if b.startswith(INPUT_PREFIX) and layout.boxes[b][1] < fy]
    assert top_row and not set(top_row) & set(kv)  # input_ids, attention_mask ... stay on top
    for box in kv:
        x, y, w, h = layout.boxes[box]
        assert fx < x and x + w < fx + fw and fy < y < fy + fh, box  # inside the `model` frame
        block = _reader_block(analysis, groups, box)
        bx, by, bw, _ = layout.boxes[block]
        assert y + h < by and by - (y + h) < 30, box  # just above the block's top
        assert abs((x + w / 2) - (bx + bw / 2)) < 3 * NODE_WIDTH, box  # and beside it
        edges = [e for e in layout.edges if e.source == box]
        assert len(edges) == 1 and edges[0].target == block and edges[0].points[-1][1] == by
    # Nothing enters the `model` frame for them: its lanes carry the other inputs only.
    lanes = [e for e in layout.edges if e.source == model or e.target == model]
    assert lanes and not {n for e in lanes for n in (e.values or (e.value,))} & {b[len(INPUT_PREFIX):] for b in kv}


def test_a_kv_input_runs_into_its_block_opened_and_is_hidden_with_model(decoder):
    analysis, groups = decoder
    folded = FoldedLayouts(analysis, groups, False)
    start = folded_start(groups, analysis)
    block = next(g for g, group in groups.items() if group.name.endswith("model/layers.5"))
    opened = folded.compose(start - {block})
    fx, fy, fw, fh = opened.frames[block]
    kv = [b for b in _kv_inputs(analysis) if b.split(".")[1] == "5"]
    for box in kv:
        (edge,) = [e for e in opened.edges if e.source == box]
        assert edge.target == block and edge.points[-1] == (fx + NODE_WIDTH / 2, fy)  # where its lane starts
        lane = [e for e in opened.edges if e.source == block and box[len(INPUT_PREFIX):] in (e.values or (e.value,))]
        assert lane and lane[0].points[0] == (fx + NODE_WIDTH / 2, fy)
    # Every group collapsed (Collapse all): the inputs are inside `model`, not drawn.
    closed = folded.compose(frozenset(g for g in groups if g.startswith(GROUP_PREFIX)))
    assert not set(_kv_inputs(analysis)) & set(closed.boxes)
    assert all(e.source in closed.boxes and e.target in closed.boxes for e in closed.edges)


@pytest.mark.parametrize("opened", ["all", "layers.0 layers.1 layers.7", "layers.6 layers.6/self_attn"])
def test_opened_blocks_and_expand_all_overlap_nothing_and_edges_stay_attached(decoder, opened):
    analysis, groups = decoder
    layout = composed_with_opened(analysis, groups, opened)
    rects = {**layout.boxes, **layout.frames}

    kv = [b for b in _kv_inputs(analysis) if b in layout.boxes]
    assert len(kv) == 2 * 24
    for box in kv:  # an input against every box and frame
        assert not crossing(rects, box), (box, crossing(rects, box))
    assert_edges_attached(layout)
