"""The report's folded graph: layers grouped by stage, then namespace, in groups small enough to read.

    fold_graph(analysis, profile) -> FoldedGraph

Groups, outermost first: the stages (when the model has more than one), then
the namespace path of each layer ("encoder/block3/conv"), one level per path
part.  A group holding a single group is merged with it ("block3/conv"); a
group of a single layer is not a group.  A group with more than
`MAX_CHILDREN` entries (a model without scopes has hundreds of layers per
stage) is split into consecutive runs in execution order, named by the layer
numbers they cover ("layers 241-264"), so every opened group shows at most
`MAX_CHILDREN` boxes whatever the model's size.

Edges: a graph edge between two layers is drawn in the innermost group that
holds both, between the two entries of that group that contain them, and
only once per pair.

The namespace levels are those of engine.layout.node_groups / engine.grouping
(the app's folding); this module builds its own tree because the report also
folds by stage first and cuts large groups into runs, and builds it in one
pass over the layers (100,000 layers in a few seconds).  It is the one place
where the report's groups are decided.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Optional

from engine.profile import combine_kinds

if TYPE_CHECKING:
    from engine.analysis import ModelAnalysis
    from engine.profile import Profile

MAX_CHILDREN = 32
HOT_PER_GROUP = 3


@dataclass(slots=True)
class FoldGroup:
    name: str
    parent: Optional[int]
    kind: str  # "root", "stage", "namespace" or "run" (a run of layers cut from a large group)
    first: int  # execution position of the first member layer
    children: list[int] = field(default_factory=list)  # >= 0: layer index; < 0: group -(index + 1)
    layers: int = 0  # compute layers inside, at any depth
    time_ms: Optional[float] = None  # sum of the members' medians; None when none was timed
    time_kind: str = ""
    hot: list[int] = field(default_factory=list)  # the hottest layers inside (layer indexes), hottest first
    edges: list[tuple[int, int]] = field(default_factory=list)  # (child position, child position)


@dataclass
class FoldedGraph:
    node_ids: list[str]  # layer index -> node id, execution order (folded constants left out)
    parent: list[int]  # layer index -> index of its innermost group
    groups: list[FoldGroup]  # 0 is the root (the whole model)
    times_ms: list[Optional[float]]  # layer index -> median, None when not timed
    kinds: list[str]  # layer index -> kind of its time ("not run" when not timed)

    def group_path(self, index: int) -> list[int]:
        path = []
        while index is not None and index != 0:
            path.append(index)
            index = self.groups[index].parent
        return path[::-1]

    @property
    def hottest(self) -> list[int]:
        """Layer indexes by time, hottest first (timed layers only)."""
        timed = [i for i, ms in enumerate(self.times_ms) if ms is not None]
        return sorted(timed, key=lambda i: -self.times_ms[i])


def _group_ref(index: int) -> int:
    return -(index + 1)


def fold_graph(analysis: "ModelAnalysis", profile: Optional["Profile"] = None) -> FoldedGraph:
    by_id, metrics = analysis.graph.nodes_by_id, analysis.nodes
    node_ids = [i for i in analysis.order if not metrics[i].is_constant]
    use_stages = len({metrics[i].stage for i in node_ids}) > 1
    paths = []
    holding: dict[tuple[str, ...], int] = {}  # path -> layers under it
    for node_id in node_ids:
        parts = ([metrics[node_id].stage] if use_stages else []) + \
            [p for p in by_id[node_id].namespace.split("/") if p]
        paths.append(parts)
        for depth in range(1, len(parts) + 1):
            key = tuple(parts[:depth])
            holding[key] = holding.get(key, 0) + 1

    groups = [FoldGroup("model", None, "root", 0)]
    by_path: dict[tuple[str, ...], int] = {(): 0}
    parent: list[int] = []
    for k, parts in enumerate(paths):
        current = 0
        for depth in range(1, len(parts) + 1):
            key = tuple(parts[:depth])
            if holding[key] < 2:
                break  # a path of one layer is no group (deeper paths hold no more layers)
            index = by_path.get(key)
            if index is None:
                index = len(groups)
                kind = "stage" if use_stages and depth == 1 else "namespace"
                groups.append(FoldGroup(parts[depth - 1], current, kind, k))
                by_path[key] = index
                groups[current].children.append(_group_ref(index))
            current = index
        groups[current].children.append(k)
        parent.append(current)

    _simplify(groups, parent, 0)
    _split_large(groups, parent, 0)
    groups = _renumber(groups, parent)

    times: list[Optional[float]] = []
    kinds: list[str] = []
    nodes = profile.nodes if profile is not None else {}
    for node_id in node_ids:
        timing = nodes.get(node_id)
        times.append(timing.time.median_ms if timing is not None else None)
        kinds.append(timing.kind if timing is not None else "not run")
    folded = FoldedGraph(node_ids, parent, groups, times, kinds)
    _totals(folded, 0)
    _edges(folded, analysis)
    return folded


def _simplify(groups: list[FoldGroup], parent: list[int], index: int) -> None:
    """Merge a group that holds only one group into it; dissolve groups of one layer."""
    group = groups[index]
    children = []
    for child in group.children:
        if child >= 0:
            children.append(child)
            continue
        sub = -child - 1
        _simplify(groups, parent, sub)
        inner = groups[sub]
        while len(inner.children) == 1 and inner.children[0] < 0:  # a chain of single groups: one box
            only = -inner.children[0] - 1
            if groups[only].name != inner.name:  # stage "encoder" holding namespace "encoder": one name
                inner.name = f"{inner.name}/{groups[only].name}"
            inner.children = groups[only].children
            for c in inner.children:
                if c >= 0:
                    parent[c] = sub
                else:
                    groups[-c - 1].parent = sub
        if len(inner.children) == 1 and inner.children[0] >= 0:  # one layer: no group around it
            parent[inner.children[0]] = index
            children.append(inner.children[0])
            inner.children = []
            continue
        children.append(child)
    group.children = children


def _renumber(groups: list[FoldGroup], parent: list[int]) -> list[FoldGroup]:
    """Only the groups still reachable from the root, numbered outermost first."""
    order, new_index = [0], {0: 0}
    for index in order:  # grows while it is walked: breadth first
        for child in groups[index].children:
            if child < 0:
                new_index[-child - 1] = len(order)
                order.append(-child - 1)
    kept = [groups[i] for i in order]
    for group in kept:
        group.parent = None if group.parent is None else new_index[group.parent]
        group.children = [c if c >= 0 else _group_ref(new_index[-c - 1]) for c in group.children]
    for k, g in enumerate(parent):
        parent[k] = new_index[g]
    return kept


def _first(groups: list[FoldGroup], child: int) -> int:
    return child if child >= 0 else groups[-child - 1].first


def _split_large(groups: list[FoldGroup], parent: list[int], index: int) -> None:
    group = groups[index]
    while len(group.children) > MAX_CHILDREN:
        size = math.ceil(len(group.children) / math.ceil(len(group.children) / MAX_CHILDREN))
        runs = []
        for start in range(0, len(group.children), size):
            members = group.children[start:start + size]
            run_index = len(groups)
            first = _first(groups, members[0])
            last = _last_layer(groups, members[-1])
            run = FoldGroup(f"layers {first + 1}–{last + 1}", index, "run", first, list(members))
            groups.append(run)
            for c in members:
                if c >= 0:
                    parent[c] = run_index
                else:
                    groups[-c - 1].parent = run_index
            runs.append(_group_ref(run_index))
        group.children = runs
    for child in group.children:
        if child < 0:
            _split_large(groups, parent, -child - 1)


def _last_layer(groups: list[FoldGroup], child: int) -> int:
    while child < 0:
        child = groups[-child - 1].children[-1]
    return child


def _totals(folded: FoldedGraph, index: int) -> None:
    """Layer count, time, kind and hottest layers of a group, from its children up."""
    group = folded.groups[index]
    times, kinds, hot, count = [], [], [], 0
    for child in group.children:
        if child >= 0:
            count += 1
            if folded.times_ms[child] is not None:
                times.append(folded.times_ms[child])
                kinds.append(folded.kinds[child])
                hot.append(child)
        else:
            sub = folded.groups[-child - 1]
            _totals(folded, -child - 1)
            count += sub.layers
            if sub.time_ms is not None:
                times.append(sub.time_ms)
                kinds.append(sub.time_kind)
            hot.extend(sub.hot)
    group.layers = count
    if times:
        group.time_ms = sum(times)
        group.time_kind = combine_kinds(kinds)
    group.hot = sorted(hot, key=lambda i: -folded.times_ms[i])[:HOT_PER_GROUP]


def _edges(folded: FoldedGraph, analysis: "ModelAnalysis") -> None:
    groups = folded.groups
    producer: dict[str, int] = {}
    for k, node_id in enumerate(folded.node_ids):
        for out in analysis.graph.nodes_by_id[node_id].outputs:
            if out:
                producer[out] = k
    chains: dict[int, list[int]] = {}  # group -> [root, ..., group]

    def chain(group_index: int) -> list[int]:
        found = chains.get(group_index)
        if found is None:
            up = groups[group_index].parent
            found = (chain(up) if up is not None else []) + [group_index]
            chains[group_index] = found
        return found

    # Position of every entry in its group's children: a layer's, and a group's in its parent.
    layer_slot = [0] * len(folded.node_ids)
    group_slot = [0] * len(groups)
    for group in groups:
        for position, child in enumerate(group.children):
            if child >= 0:
                layer_slot[child] = position
            else:
                group_slot[-child - 1] = position
    seen: set[tuple[int, int, int]] = set()
    by_id, parent = analysis.graph.nodes_by_id, folded.parent
    for v, node_id in enumerate(folded.node_ids):
        for name in by_id[node_id].inputs:
            u = producer.get(name) if name else None
            if u is None or u == v:
                continue
            if parent[u] == parent[v]:  # most edges: two layers of one group
                key = (parent[v], layer_slot[u], layer_slot[v])
            else:
                chain_u, chain_v = chain(parent[u]), chain(parent[v])
                depth = 0
                while depth < len(chain_u) and depth < len(chain_v) and chain_u[depth] == chain_v[depth]:
                    depth += 1
                key = (chain_u[depth - 1],
                       group_slot[chain_u[depth]] if depth < len(chain_u) else layer_slot[u],
                       group_slot[chain_v[depth]] if depth < len(chain_v) else layer_slot[v])
            if key[1] != key[2] and key not in seen:
                seen.add(key)
                groups[key[0]].edges.append((key[1], key[2]))
