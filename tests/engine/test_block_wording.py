"""The repeated-block texts (report and CLI line, group tooltip and inspector row) say each thing
once: the family's name, the median block, the slowest block."""
from __future__ import annotations

import pytest

from engine.grouping import compare_blocks, family_line, member_text, namespace_groups, repeated_block_lines, repeated_blocks
from tests.engine.test_report_repeated_blocks import profiled_decoder  # noqa: F401 (the profiled 4-layer decoder)


@pytest.fixture(scope="module")
def decoder(profiled_decoder):
    profile, analysis = profiled_decoder
    groups = namespace_groups(analysis)
    family = repeated_blocks(groups, analysis)[0]
    return profile, analysis, family, compare_blocks(family, groups, analysis, profile)


def _once(text: str, *parts: str) -> None:
    for part in parts:
        assert text.count(part) == 1, (part, text)


def test_report_line(decoder):
    profile, analysis, family, times = decoder
    ops = family.ops_per_block
    assert repeated_block_lines(analysis, None)[0] == f"model/layers.* x 4 ({ops} ops each): not profiled"
    line = repeated_block_lines(analysis, profile)[0]
    slowest = max(times, key=lambda t: t.ratio_to_median)
    assert line.startswith(f"model/layers.* x 4 ({ops} ops each): the slowest, layers.{slowest.index}, is "
                           f"{slowest.ratio_to_median:.2f}x the median block (")
    assert line.endswith(f", {slowest.kind})")
    _once(line, "model/layers.*", "median block", "slowest", " 4 ", f"layers.{slowest.index}")


def test_member_texts(decoder):
    profile, analysis, family, times = decoder
    slowest = max(times, key=lambda t: t.ratio_to_median)
    for time in times:
        text = member_text(family, times, time.group_id, True)
        assert text.startswith("one of the 4 blocks model/layers.*")
        # its ratio where it is said: the slowest's may read the same (1.01x and 1.01x in a CPU profile)
        _once(text, "model/layers.*", "median block", "slowest", f"{time.ratio_to_median:.2f}x the median block",
              time.kind)
        if time is slowest:
            assert text.startswith("one of the 4 blocks model/layers.*, the slowest: ")
            assert f"layers.{time.index}" not in text  # the tooltip's first line names it
        else:
            assert f"the slowest, layers.{slowest.index}, is {slowest.ratio_to_median:.2f}x (" in text
    block = family.group_ids[1]
    assert member_text(family, [], block, False) == "one of the 4 blocks model/layers.*"
    untimed = [t for t in times if t.group_id != block]
    assert member_text(family, untimed, block, True) == "one of the 4 blocks model/layers.*: not timed in this profile"


def test_a_family_of_mixed_kinds_is_labelled_with_the_weakest(decoder):
    """The median and the ratios are made from every block's time: one block measured among
    attributed ones does not make them measured (the slowest's or the block's own kind did)."""
    from dataclasses import replace

    profile, analysis, family, times = decoder
    slowest = max(times, key=lambda t: t.ratio_to_median)
    mixed = [t if t is slowest else replace(t, kind="attributed") for t in times]
    assert slowest.kind == "measured"
    line = family_line(family, mixed)
    assert line.endswith(", attributed)") and "measured" not in line, line
    for time in mixed:
        text = member_text(family, mixed, time.group_id, True)
        _once(text, "attributed")
        assert "measured" not in text, text


def test_a_block_as_slow_as_the_slowest_to_two_decimals(decoder):
    """Two ratios that read the same (1.01x, 1.01x: a real CPU profile gave them) are two things said."""
    from dataclasses import replace

    profile, analysis, family, times = decoder
    slowest = max(times, key=lambda t: t.ratio_to_median)
    other = next(t for t in times if t is not slowest)
    # The same ratio exactly: the first of the two is the slowest (max keeps the first).
    close = [slowest, replace(other, ratio_to_median=slowest.ratio_to_median)] + [
        t for t in times if t is not slowest and t is not other]
    text = member_text(family, close, other.group_id, True)
    ratio = f"{slowest.ratio_to_median:.2f}x"
    assert text.count(ratio) == 2 and f": {ratio} the median block" in text and f"is {ratio} (" in text, text
