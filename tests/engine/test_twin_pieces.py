"""engine.folded_layout: an opened group shaped like one composed before (a repeated block, a head)
is that group's piece renamed (FoldedLayouts._twin_piece), and draws exactly what composing it
from its levels draws (FoldedLayouts(..., twin_pieces=False), the way every group was composed
before).  Groups alike in size but wired differently, or crossed by other tensors, are not twins.

Generated transformers (both styles, constants hidden and shown) and a small model written here
with onnx.helper; each drawing is compared whole: boxes, edges with every point and tensor name,
frames, members, size."""
from __future__ import annotations

import threading

import pytest
from onnx import TensorProto, helper

from engine.analysis import analyze
from engine.folded_layout import FoldedLayouts
from engine.grouping import namespace_groups
from importers import open_model
from tests.engine.folded_fixtures import decoder, drawing as _drawing, inside as _inside  # noqa: F401 (a fixture)


def _blocks(groups, title="layers.") -> list[str]:
    return [g for g, group in groups.items() if group.title.startswith(title) and group.parent is not None
            and group.depth == groups[group.parent].depth + 1 and groups[group.parent].parent is None]


def _opens(groups, start, block) -> list[frozenset]:
    """The block opened whole, opened alone (a double-click), and opened whole but for its first
    child group (kept collapsed)."""
    children = [g for g, group in groups.items() if group.parent == block]
    whole = frozenset(start - _inside(groups, block))
    return [whole, frozenset(start - {block}), whole | set(children[:1])]


@pytest.mark.parametrize("constants", [False, True])
def test_renamed_twins_draw_what_composing_them_from_their_levels_draws(decoder, constants):
    analysis, groups, start = decoder
    blocks = _blocks(groups)
    assert len(blocks) == 4
    twins = FoldedLayouts(analysis, groups, include_constants=constants)
    levels = FoldedLayouts(analysis, groups, include_constants=constants, twin_pieces=False)
    for block in blocks:
        for collapsed in _opens(groups, start, block):
            assert _drawing(twins.compose(collapsed)) == _drawing(levels.compose(collapsed)), (block, len(collapsed))
    everything = frozenset()  # Expand all
    assert _drawing(twins.compose(everything)) == _drawing(levels.compose(everything))
    # The blocks after the first two were renamed whole: their own level was never laid out.
    assert not any(twins.cached(b) for b in blocks[2:]) and all(levels.cached(b) for b in blocks)
    assert twins.renamed_pieces >= 3 * 2 and levels.renamed_pieces == 0


def test_inside_a_first_open_the_repeated_heads_are_renamed(decoder):
    analysis, groups, start = decoder
    block = _blocks(groups)[0]
    twins = FoldedLayouts(analysis, groups, include_constants=False)
    levels = FoldedLayouts(analysis, groups, include_constants=False, twin_pieces=False)
    whole = _opens(groups, start, block)[0]
    assert _drawing(twins.compose(whole)) == _drawing(levels.compose(whole))
    renamed = [g for g in _inside(groups, block) if not twins.cached(g)]
    assert twins.renamed_pieces > 0 and renamed  # e.g. the kv / head groups after the first
    assert all(levels.cached(g) for g in _inside(groups, block))


def test_a_twin_opened_first_alone_then_whole_draws_the_same(decoder):
    """A twin's piece is found per set of collapsed descendants: a block opened alone before does
    not stand for it opened whole."""
    analysis, groups, start = decoder
    first, second = _blocks(groups)[1:3]
    twins = FoldedLayouts(analysis, groups, include_constants=False)
    levels = FoldedLayouts(analysis, groups, include_constants=False, twin_pieces=False)
    alone, whole = _opens(groups, start, first)[1], _opens(groups, start, second)[0]
    for collapsed in (alone, whole, _opens(groups, start, second)[1]):
        assert _drawing(twins.compose(collapsed)) == _drawing(levels.compose(collapsed))


def test_preparing_and_opening_at_once_draws_the_same(decoder):
    """The background preparation and an open's worker compose on one FoldedLayouts at once."""
    analysis, groups, start = decoder
    blocks = _blocks(groups)
    shared = FoldedLayouts(analysis, groups, include_constants=False)
    shared.compose(start)
    failed = []

    def prepare():
        try:
            shared.prepare_opens(list(reversed(blocks)))
        except Exception as error:  # reported below: a failure in the thread must fail the test
            failed.append(error)

    thread = threading.Thread(target=prepare)
    thread.start()
    drawn = {(b, c): _drawing(shared.compose(c)) for b in blocks for c in _opens(groups, start, b)[:2]}
    thread.join()
    assert not failed
    levels = FoldedLayouts(analysis, groups, include_constants=False, twin_pieces=False)
    for (block, collapsed), drawing in drawn.items():
        assert drawing == _drawing(levels.compose(collapsed)), block


@pytest.fixture(scope="module")
def look_alikes(tmp_path_factory):
    """Six blocks /net/blk.K of the same four ops (two in a sub-scope `inner`), each reading the
    block before: blk.1 and blk.5 are wired as blk.0; blk.2 reads two outside tensors where blk.0
    reads one twice; blk.3's inner Relu output is also read outside the block; blk.4 adds its
    inputs the other way round."""
    nodes, previous = [], "x"
    for k in range(6):
        scope = f"/net/blk.{k}"
        first, second = (previous, "x") if k == 2 else (previous, previous)
        a, b = ("b", "a") if k == 4 else ("a", "b")
        nodes += [helper.make_node("Relu", [first], [f"a{k}"], name=f"{scope}/inner/Relu"),
                  helper.make_node("Sigmoid", [second], [f"b{k}"], name=f"{scope}/inner/Sigmoid"),
                  helper.make_node("Add", [f"{a}{k}", f"{b}{k}"], [f"c{k}"], name=f"{scope}/Add"),
                  helper.make_node("Mul", [f"c{k}", f"c{k}"], [f"d{k}"], name=f"{scope}/Mul")]
        previous = f"d{k}"
    nodes.append(helper.make_node("Add", [previous, "a3"], ["out"], name="/head/Add"))
    nodes.append(helper.make_node("Relu", ["out"], ["y"], name="/head/Relu"))
    value = [helper.make_tensor_value_info(n, TensorProto.FLOAT, [1, 8]) for n in ("x", "y")]
    model = helper.make_model(helper.make_graph(nodes, "look_alikes", value[:1], value[1:]),
                              opset_imports=[helper.make_opsetid("", 17)])
    path = tmp_path_factory.mktemp("look_alikes") / "look_alikes.onnx"
    path.write_bytes(model.SerializeToString())
    analysis = analyze(open_model(str(path)))
    groups = namespace_groups(analysis)
    return analysis, groups, frozenset(groups)


def test_only_groups_wired_and_crossed_alike_are_renamed(look_alikes):
    analysis, groups, start = look_alikes
    blocks = _blocks(groups, "blk.")
    assert [groups[b].title for b in blocks] == [f"blk.{k}" for k in range(6)]
    assert all(len(groups[b].members) == 4 and len(_inside(groups, b)) == 2 for b in blocks)  # all the same size
    twins = FoldedLayouts(analysis, groups, include_constants=False)
    levels = FoldedLayouts(analysis, groups, include_constants=False, twin_pieces=False)
    for block in blocks:
        whole = frozenset(start - _inside(groups, block) - {"group:namespace:net"})
        for collapsed in (whole, whole | {block + "/inner"}):
            assert _drawing(twins.compose(collapsed)) == _drawing(levels.compose(collapsed)), block
    renamed = [groups[b].title for b in blocks if not twins.cached(b)]
    assert renamed == ["blk.1", "blk.5"]
    # blk.3's inner scope reads one outside tensor twice, as blk.0's does: renamed although blk.3 is not.
    assert not twins.cached(blocks[3] + "/inner") and twins.cached(blocks[2] + "/inner")
    # The renamed block names its own tensors: d4 enters its frame, then its inner frame, then
    # reaches both of inner's nodes.
    drawn = twins.compose(frozenset(start - _inside(groups, blocks[5]) - {"group:namespace:net"}))
    inner = blocks[5] + "/inner"
    relu, sigmoid = groups[inner].members
    lanes = sorted((e.source, e.target, e.value) for e in drawn.edges
                   if e.source in (blocks[5], inner) and e.target in (inner, relu, sigmoid))
    assert lanes == sorted([(blocks[5], inner, "d4"), (inner, relu, "d4"), (inner, sigmoid, "d4")])


@pytest.fixture(scope="module")
def unequal_splits(tmp_path_factory):
    """Two blocks /blk.K of the same ops and wiring: an `inner` scope (Relu, then a Split in two)
    whose two outputs both reach the block's Concat.  Collapsed, `inner` has one edge to the Concat
    carrying both tensors, named after the larger (engine.layout._merge_group_edges): blk.0 splits
    8 as 6 + 2, blk.1 as 2 + 6, so the larger is blk.0's first output and blk.1's second."""
    nodes, values, inits, previous = [], [], [], "x"
    for k, sizes in enumerate(((6, 2), (2, 6))):
        scope = f"/blk.{k}"
        inits.append(helper.make_tensor(f"split{k}", TensorProto.INT64, [2], list(sizes)))
        nodes += [helper.make_node("Relu", [previous], [f"r{k}"], name=f"{scope}/inner/Relu"),
                  helper.make_node("Split", [f"r{k}", f"split{k}"], [f"p{k}", f"q{k}"], axis=1,
                                   name=f"{scope}/inner/Split"),
                  helper.make_node("Concat", [f"p{k}", f"q{k}"], [f"c{k}"], axis=1, name=f"{scope}/Concat"),
                  helper.make_node("Relu", [f"c{k}"], [f"d{k}"], name=f"{scope}/Relu")]
        values += [helper.make_tensor_value_info(f"p{k}", TensorProto.FLOAT, [1, sizes[0]]),
                   helper.make_tensor_value_info(f"q{k}", TensorProto.FLOAT, [1, sizes[1]])]
        previous = f"d{k}"
    io = [helper.make_tensor_value_info(n, TensorProto.FLOAT, [1, 8]) for n in ("x", previous)]
    graph = helper.make_graph(nodes, "unequal_splits", io[:1], io[1:], initializer=inits, value_info=values)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    path = tmp_path_factory.mktemp("unequal_splits") / "unequal_splits.onnx"
    path.write_bytes(model.SerializeToString())
    analysis = analyze(open_model(str(path)))
    return analysis, namespace_groups(analysis)


@pytest.mark.parametrize("twin_pieces", [True, False])
def test_a_twin_with_other_tensor_sizes_names_its_edges_after_its_own_larger_tensor(unequal_splits, twin_pieces):
    analysis, groups = unequal_splits
    blocks = sorted(g for g, group in groups.items() if group.title.startswith("blk."))
    inners = [b + "/inner" for b in blocks]
    assert len(blocks) == 2 and all(i in groups for i in inners)
    closed = frozenset(inners)  # both blocks opened, their inner scopes collapsed
    folded = FoldedLayouts(analysis, groups, include_constants=False, twin_pieces=twin_pieces)
    folded.compose(frozenset(blocks[1:]) | closed)  # blk.0 first: blk.1 may then be its twin
    drawn = {e.source: e for e in folded.compose(closed).edges if e.source in inners}
    assert (drawn[inners[0]].value, drawn[inners[0]].values) == ("p0", ("p0", "q0"))
    assert (drawn[inners[1]].value, drawn[inners[1]].values) == ("q1", ("p1", "q1"))
