"""A folded decoder's graph outputs `present.N.key/value` (and the Identity feeding each) are drawn
beside block N inside the `model` frame, below-right of it, not in a bottom row 100,000 units wide
fed by a fan of long edges out of the frame (t20k.onnx; FoldedLayouts._outputs_homed,
engine.layout.attach_outputs), whether the block is collapsed or opened."""
from __future__ import annotations

import pytest

from engine.analysis import analyze
from engine.folded_layout import FoldedLayouts
from engine.grouping import folded_start, namespace_groups
from engine.layout import NODE_WIDTH, OUTPUT_PREFIX
from engine.transformer_samples import STYLES, TransformerConfig, write_transformer
from importers import open_model
from tests.engine.folded_fixtures import assert_edges_attached, composed_with_opened, crossing

LAYERS = 12


@pytest.fixture(scope="module", params=STYLES)
def decoder(request, tmp_path_factory):
    config = TransformerConfig(layers=LAYERS, hidden=64, heads=4, kv_heads=2, intermediate=96, vocab=50, past=5,
                               style=request.param)
    path = write_transformer(tmp_path_factory.mktemp(request.param) / "decoder.onnx", config)
    analysis = analyze(open_model(str(path)))
    return analysis, namespace_groups(analysis)


def _group(groups, name: str) -> str:
    return next(g for g, group in groups.items() if group.name == name)


def _presents(analysis) -> dict[str, tuple[str, str]]:
    """output box -> (its feeder node, or None, block number) for every present.N.* output."""
    graph = analysis.graph
    producer = {out: node.id for node in graph.nodes for out in node.outputs}
    found = {}
    for name in graph.outputs:
        if name.startswith("present."):
            node = graph.node(producer[name])
            found[OUTPUT_PREFIX + name] = (node.id if node.op_type == "Identity" else None, name.split(".")[1])
    return found


def _carried(edge) -> set[str]:
    return set(edge.values or (edge.value,))


def test_present_outputs_are_beside_their_block_inside_model_not_in_a_bottom_row(decoder):
    analysis, groups = decoder
    layout = FoldedLayouts(analysis, groups, False).compose(folded_start(groups, analysis))
    model = _group(groups, "model")
    fx, fy, fw, fh = layout.frames[model]
    presents = _presents(analysis)
    assert len(presents) == 2 * LAYERS
    for box, (feeder, number) in presents.items():
        block = _group(groups, f"model/layers.{number}")
        bx, by, bw, bh = layout.boxes[block]
        chain = [box] if feeder is None else [feeder, box]
        for drawn in chain:
            x, y, w, h = layout.boxes[drawn]
            assert fx < x and x + w < fx + fw and fy < y and y + h < fy + fh, drawn  # inside `model`
            assert x >= bx + bw and by + bh < y < by + bh + 150, (drawn, block)  # below-right of its block
        # Block -> (Identity ->) output: each edge from its source's bottom into its target's top.
        for source, target in zip([block] + chain, chain):
            (edge,) = [e for e in layout.edges if e.source == source and e.target == target]
            sx, sy, sw, sh = layout.boxes[source]
            tx, ty, tw, _ = layout.boxes[target]
            assert sx < edge.points[0][0] < sx + sw and edge.points[0][1] == sy + sh
            assert tx < edge.points[-1][0] < tx + tw and edge.points[-1][1] == ty
            assert all(b[1] >= a[1] for a, b in zip(edge.points, edge.points[1:]))  # it only runs down
    # No fan out of the frame: nothing leaves `model` for them, and below it only `logits` is drawn.
    leaving = set().union(*(_carried(e) for e in layout.edges if model in (e.source, e.target)))  # lanes, and out
    assert leaving and not leaving & {b[len(OUTPUT_PREFIX):] for b in presents}
    assert not leaving & {analysis.graph.node(f).inputs[0] for f, _ in presents.values() if f}
    below = [b for b, (x, y, w, h) in layout.boxes.items() if y > fy + fh]
    assert OUTPUT_PREFIX + "logits" in below and not set(below) & set(presents)


@pytest.mark.parametrize("opened", ["all", "layers.0 layers.1 layers.7", "layers.6 layers.6/self_attn"])
def test_opened_blocks_keep_their_outputs_beside_them_clear_of_every_box(decoder, opened):
    analysis, groups = decoder
    layout = composed_with_opened(analysis, groups, opened)
    rects = {**layout.boxes, **layout.frames}

    presents = _presents(analysis)
    drawn = [b for b in presents] + [f for f, _ in presents.values() if f]
    for box in drawn:
        assert not crossing(rects, box), (box, crossing(rects, box))
    for box, (feeder, number) in presents.items():
        block = _group(groups, f"model/layers.{number}")
        bx, by, bw, bh = rects[block]  # a frame when opened: they hang under it, right of where its lanes leave
        x, y, _, _ = rects[feeder or box]
        assert x >= bx + min(bw, NODE_WIDTH) and by + bh < y < by + bh + 150, (box, block)
    assert_edges_attached(layout)


def test_the_outputs_found_by_walking_are_those_found_from_the_arrays(decoder):
    # Models whose tensors the arrays cannot stand for are laid out by walking the nodes: the same homes.
    analysis, groups = decoder
    indexed, walking = FoldedLayouts(analysis, groups, False), FoldedLayouts(analysis, groups, False, from_arrays=False)
    assert indexed._indexed() is not None and walking._indexed() is None
    (homes, feeders, names), (walked_homes, walked_feeders, walked_names) = indexed._outputs_homed(), \
        walking._outputs_homed()
    assert len(names) == 2 * LAYERS and names == walked_names
    assert {level: sorted(beside) for level, beside in homes.items()} == \
        {level: sorted(beside) for level, beside in walked_homes.items()}
    assert feeders.tolist() == walked_feeders.tolist()
