"""engine.folded_layout: first opens prepared in advance (FoldedLayouts.prepare_opens) and levels
reused across repeated blocks draw exactly what a block laid out on its own draws.

Generated transformers with repeated blocks (`model/layers.N`, heads inside each), both styles;
each drawing is compared whole: boxes, edges with every point, frames, members, size."""
from __future__ import annotations

from engine.folded_layout import FoldedLayouts
from tests.engine.folded_fixtures import decoder, drawing as _drawing, inside as _inside  # noqa: F401 (a fixture)


def _blocks(groups) -> list[str]:
    return [g for g, group in groups.items() if group.title.startswith("layers.") and group.parent is not None
            and groups[group.parent].title == "model"]


def _opens(groups, start, block) -> list[frozenset]:
    """The block opened whole (it and every group inside), and opened alone (a double-click)."""
    return [frozenset(start - _inside(groups, block)), frozenset(start - {block})]


def test_a_prepared_first_open_draws_what_an_unprepared_one_draws(decoder):
    analysis, groups, start = decoder
    blocks = _blocks(groups)
    assert len(blocks) == 4
    prepared = FoldedLayouts(analysis, groups, include_constants=False)
    prepared.compose(start)
    assert prepared.prepare_opens(blocks) == blocks
    laid_out, pieces = prepared.seconds_laying_out, set(prepared._framed_pieces)
    for block in blocks:
        for collapsed in _opens(groups, start, block):
            plain = FoldedLayouts(analysis, groups, include_constants=False, twin_pieces=False)  # from levels
            plain.compose(start)
            assert _drawing(prepared.compose(collapsed)) == _drawing(plain.compose(collapsed))
    # Nothing was laid out, and no block composed anew, by the opens: the preparation did it
    # (only `model`, the opened group around the blocks, is composed per open).
    inside_blocks = set().union(*(_inside(groups, b) for b in blocks))
    assert prepared.seconds_laying_out == laid_out
    assert not {group for group, _ in set(prepared._framed_pieces) - pieces} & inside_blocks


def test_levels_reused_from_another_block_have_a_fresh_layouts_coordinates(decoder):
    analysis, groups, start = decoder
    blocks = _blocks(groups)
    last = blocks[-1]
    # Levels, not whole blocks (see test_twin_pieces): each level of the last block laid out or reused.
    after_others = FoldedLayouts(analysis, groups, include_constants=False, twin_pieces=False)
    for block in blocks[:-1]:
        after_others.compose(_opens(groups, start, block)[0])
    reused = after_others.reused_levels
    drawn = after_others.compose(_opens(groups, start, last)[0])
    # every level of the last block (itself included) is a twin of one in the blocks before
    assert after_others.reused_levels - reused == len(_inside(groups, last))
    alone = FoldedLayouts(analysis, groups, include_constants=False, twin_pieces=False)  # laid out first
    assert _drawing(drawn) == _drawing(alone.compose(_opens(groups, start, last)[0]))


def test_a_cancelled_preparation_stops_and_leaves_opens_drawing_the_same(decoder):
    analysis, groups, start = decoder
    blocks = _blocks(groups)
    layouts = FoldedLayouts(analysis, groups, include_constants=False)
    below = [g for g in _inside(groups, blocks[0]) if g != blocks[0]]

    def within_the_first_block() -> bool:  # once a group inside it is composed, before it is
        return any((g, frozenset()) in layouts._framed_pieces for g in below)
    assert layouts.prepare_opens(blocks, within_the_first_block) == []
    assert (blocks[0], frozenset()) not in layouts._framed_pieces

    def after_the_first_block() -> bool:
        return (blocks[0], frozenset(below)) in layouts._framed_pieces
    assert layouts.prepare_opens(blocks, after_the_first_block) == blocks[:1]
    assert not any(group in _inside(groups, blocks[1]) for group, _ in layouts._framed_pieces)
    assert layouts.prepare_opens(blocks, lambda: True) == blocks[:1]  # done before: listed, nothing more
    plain = FoldedLayouts(analysis, groups, include_constants=False, twin_pieces=False)
    for block in blocks:
        for collapsed in _opens(groups, start, block):
            assert _drawing(layouts.compose(collapsed)) == _drawing(plain.compose(collapsed))


def test_models_laid_out_by_walking_are_not_prepared(decoder):
    analysis, groups, _ = decoder
    walking = FoldedLayouts(analysis, groups, include_constants=False, from_arrays=False)
    assert walking.prepare_opens(_blocks(groups)) == []
    assert not any(walking.cached(g) for g in groups)
