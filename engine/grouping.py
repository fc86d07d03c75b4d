"""Grouping a graph by its namespaces, without Qt: what the app and the HTML report fold.

A transformer exported to ONNX has tens of thousands of nodes in a namespace hierarchy
(`/model/layers.17/self_attn/q_proj/MatMul`).  Opened whole, its layout is slow and not what a
person wants to see first; Model Explorer opens such graphs folded.  This module holds the
decisions shared by every view of a folded graph:

- `fold_threshold()` / `opens_folded(analysis)`: above how many nodes a model opens grouped by
  namespace with every group collapsed (`FOLD_NODES`, adjustable with the environment variable
  `LAYERSCOPE_FOLD_NODES`; 0 turns folding off);
- `namespace_groups(analysis)`: the nested groups (engine.layout.node_groups "namespace");
- `group_stats(groups, analysis, profile)`: node count, MACs, parameters and, with a profile,
  time of every group (engine.layout.GroupTotals);
- `repeated_blocks(groups, analysis)`: sibling groups that are the same block repeated
  (`layers.0` ... `layers.31` with the same ops), and `compare_blocks` to say "layers.17 is
  1.4x slower than the median block";
- `enclosing_groups(node_id, groups)`: the groups to open so that a node is drawn (search,
  chart selection and overlays reach nodes inside collapsed groups this way).

The geometry (boxes for collapsed groups, layout) stays in engine.layout.
"""
from __future__ import annotations

import os
import re
import statistics
from dataclasses import dataclass
from typing import TYPE_CHECKING, Iterable, Mapping, Optional

from engine.layout import GroupTotals, NodeGroup, group_totals, node_groups
from engine.profile import combine_kinds

if TYPE_CHECKING:
    from engine.analysis import ModelAnalysis

# Models with more compute nodes than this open folded.  A full layout of 5,000 nodes takes
# about half a second here and fills the screen with unreadable boxes; the biggest CNNs people
# open (DenseNet-121: 910 compute nodes, ResNet-152: ~500) stay well below it.
FOLD_NODES = 5000
FOLD_NODES_ENVIRONMENT = "LAYERSCOPE_FOLD_NODES"


def fold_threshold() -> int:
    """FOLD_NODES, or the value of $LAYERSCOPE_FOLD_NODES (0: never open folded)."""
    text = os.environ.get(FOLD_NODES_ENVIRONMENT, "").strip()
    if not text:
        return FOLD_NODES
    try:
        return max(0, int(text))
    except ValueError:
        return FOLD_NODES  # a typo must not stop the app from opening models


def opens_folded(analysis: "ModelAnalysis", threshold: Optional[int] = None) -> bool:
    """True when the model is big enough to open grouped with its groups collapsed."""
    limit = fold_threshold() if threshold is None else threshold
    return limit > 0 and analysis.totals.compute_nodes > limit


def namespace_groups(analysis: "ModelAnalysis") -> dict[str, NodeGroup]:
    """The nested namespace groups, outermost first, in execution order (none without scopes)."""
    return node_groups(analysis, "namespace")


def top_level(groups: Mapping[str, NodeGroup]) -> list[NodeGroup]:
    return [group for group in groups.values() if group.parent is None]


def children(groups: Mapping[str, NodeGroup], parent_id: Optional[str]) -> list[NodeGroup]:
    return [group for group in groups.values() if group.parent == parent_id]


def group_stats(groups: Mapping[str, NodeGroup], analysis: "ModelAnalysis", profile=None) -> dict[str, GroupTotals]:
    """Totals of every group: compute nodes, MACs, params (estimated) and time (with a profile)."""
    return {group_id: group_totals(group, analysis, profile) for group_id, group in groups.items()}


def enclosing_groups(node_id: str, groups: Mapping[str, NodeGroup],
                     member_of: Optional[Mapping[str, str]] = None) -> list[str]:
    """The groups that hold `node_id`, outermost first (open them all to draw the node).

    `member_of` (from `innermost_group`) makes this a walk up the parents instead of a scan.
    """
    innermost = (member_of or innermost_group(groups)).get(node_id)
    chain = []
    while innermost is not None:
        chain.append(innermost)
        innermost = groups[innermost].parent
    return chain[::-1]


def innermost_group(groups: Mapping[str, NodeGroup]) -> dict[str, str]:
    """node id -> the deepest group holding it (groups are listed outermost first)."""
    member_of: dict[str, str] = {}
    for group in groups.values():
        for node_id in group.members:
            member_of[node_id] = group.id  # a deeper group comes later and wins
    return member_of


# ----------------------------------------------------------------------------- repeated blocks

# "layers.17" -> ("layers.", 17); "block3" -> ("block", 3); "h_5" -> ("h_", 5)
_INDEXED_NAME = re.compile(r"^(.*?)(\d+)$")


@dataclass(frozen=True)
class BlockFamily:
    """Sibling groups that are one block repeated: the same name with an index, the same ops."""

    parent: Optional[str]  # the group holding them (None: top level)
    name: str  # "model/layers.*"
    group_ids: tuple[str, ...]  # in index order
    indices: tuple[int, ...]
    ops_per_block: int  # compute nodes in each block


@dataclass(frozen=True)
class BlockTime:
    group_id: str
    index: int
    time_ms: float
    ratio_to_median: float  # 1.4: 1.4x the median block's time
    kind: str  # the weakest kind of the times summed (engine.profile kinds)


def repeated_blocks(groups: Mapping[str, NodeGroup], analysis: "ModelAnalysis",
                    minimum: int = 3) -> list[BlockFamily]:
    """Families of `minimum` or more sibling groups named NAME<index> whose compute nodes run the
    same op types in the same order, each with the same MACs.  Siblings whose ops differ (a first
    block with an extra projection) or whose work does (a CNN's blocks at falling resolutions:
    MobileUNet's "block1 is 2.71x the median block" compared 80x80 with 5x5 maps) are left out of
    the family, so every member compares like with like."""
    candidates: dict[tuple[Optional[str], str, tuple[str, ...]], list[tuple[int, str]]] = {}
    nodes = analysis.nodes
    for group in groups.values():
        match = _INDEXED_NAME.match(group.title)
        if match is None:
            continue
        signature = tuple((analysis.graph.node(n).op_type, nodes[n].macs) for n in group.members
                          if not nodes[n].is_constant)
        key = (group.parent, match.group(1), signature)
        candidates.setdefault(key, []).append((int(match.group(2)), group.id))
    families = []
    for (parent, prefix, signature), found in candidates.items():
        if len(found) < minimum:
            continue
        found.sort()
        parent_name = groups[parent].name + "/" if parent is not None else ""
        families.append(BlockFamily(parent, f"{parent_name}{prefix}*", tuple(g for _, g in found),
                                    tuple(i for i, _ in found), len(signature)))
    families.sort(key=lambda f: (-len(f.group_ids) * f.ops_per_block, f.name))
    return families


def block_family_of(group_id: str, families: Iterable[BlockFamily]) -> Optional[BlockFamily]:
    return next((family for family in families if group_id in family.group_ids), None)


def compare_blocks(family: BlockFamily, groups: Mapping[str, NodeGroup], analysis: "ModelAnalysis",
                   profile) -> list[BlockTime]:
    """Each block's time and its ratio to the family's median block; blocks without any timed
    node are left out (unknown is not zero).  Empty without a profile."""
    if profile is None:
        return []
    totals = [(group_id, index, group_totals(groups[group_id], analysis, profile))
              for group_id, index in zip(family.group_ids, family.indices)]
    timed = [(g, i, t) for g, i, t in totals if t.time_ms is not None]
    if not timed:
        return []
    median = statistics.median(t.time_ms for _, _, t in timed)
    return [BlockTime(g, i, t.time_ms, (t.time_ms / median) if median > 0 else 1.0, t.time_kind)
            for g, i, t in timed]


def _title(group_id: str) -> str:
    """"layers.17" of "group:namespace:model/layers.17"."""
    return group_id.rsplit("/", 1)[-1].rsplit(":", 1)[-1]


def _kind_of(times: list[BlockTime]) -> str:
    """The kind of figures made from all of `times` (their median, the ratios to it): the weakest
    of theirs, as one block's is of its nodes' (one block's own kind would claim more for the others)."""
    kinds = {t.kind for t in times}
    return "unknown kind" if None in kinds else combine_kinds(kinds)


def block_summary(family: BlockFamily, times: list[BlockTime]) -> str:
    """"the slowest, layers.17, is 1.40x the median block (1.230 ms vs 0.880 ms, measured)"; or
    "not profiled".  The family is named by the caller, once."""
    if not times:
        return "not profiled"
    slowest = max(times, key=lambda t: t.ratio_to_median)
    median_ms = statistics.median(t.time_ms for t in times)
    return (f"the slowest, {_title(slowest.group_id)}, is {slowest.ratio_to_median:.2f}x the median block "
            f"({slowest.time_ms:.3f} ms vs {median_ms:.3f} ms, {_kind_of(times)})")


def family_line(family: BlockFamily, times: list[BlockTime]) -> str:
    """"model/layers.* x 28 (62 ops each): the slowest, layers.17, is 1.40x the median block (...)"."""
    return f"{family.name} x {len(family.group_ids)} ({family.ops_per_block} ops each): {block_summary(family, times)}"


def member_text(family: BlockFamily, times: list[BlockTime], group_id: str, profiled: bool) -> str:
    """What a group's tooltip and the inspector say of one block of a family, each thing once (its
    own time and node count are on the lines above): "one of the 28 blocks model/layers.*: 0.97x the
    median block (0.880 ms, measured); the slowest, layers.17, is 1.40x (1.230 ms)"."""
    where = f"one of the {len(family.group_ids)} blocks {family.name}"
    mine = next((t for t in times if t.group_id == group_id), None)
    if mine is None:
        return where + (": not timed in this profile" if profiled else "")
    median_ms = statistics.median(t.time_ms for t in times)
    slowest = max(times, key=lambda t: t.ratio_to_median)
    median = f"the median block ({median_ms:.3f} ms, {_kind_of(times)})"
    if slowest.group_id == group_id:
        return f"{where}, the slowest: {mine.ratio_to_median:.2f}x {median}"
    return (f"{where}: {mine.ratio_to_median:.2f}x {median}; the slowest, {_title(slowest.group_id)}, "
            f"is {slowest.ratio_to_median:.2f}x ({slowest.time_ms:.3f} ms)")


def repeated_block_lines(analysis: "ModelAnalysis", profile, limit: int = 3) -> list[str]:
    """A line per family of repeated blocks (a decoder's layers), the largest first: how many, and
    the slowest block against the median one (the CLI's summary and the HTML report)."""
    groups = namespace_groups(analysis)
    return [family_line(family, compare_blocks(family, groups, analysis, profile))
            for family in repeated_blocks(groups, analysis)[:limit]]


def folded_start(groups: Mapping[str, NodeGroup], analysis: "ModelAnalysis") -> frozenset[str]:
    """The groups collapsed when a big model opens: all of them, except a group that holds most
    of the model (`model/` around every block of an export), which would otherwise be the only
    box on screen; its children are opened the same way."""
    total = analysis.totals.compute_nodes or 1
    collapsed = set(groups)
    level = top_level(groups)
    while level:
        biggest = max(level, key=lambda g: len(g.members))
        compute = group_totals(biggest, analysis).nodes
        if compute * 2 <= total:
            break
        collapsed.discard(biggest.id)
        level = children(groups, biggest.id)
    return frozenset(collapsed)
