"""A model's nodes, tensors and groups as integer arrays, built once per model: no Qt.

A folded 100,000-node model draws a few hundred boxes, yet laying out its root level, finding
the tensors that cross a frame and summing a group's totals each walked every node in Python
(about 2 s per open).  Here the walks happen once, into numpy arrays, and each of those
questions is answered from the arrays in proportion to what it concerns:

- `NodeArrays(analysis)` (shared per analysis: `node_arrays`): nodes as positions in the
  execution order; every tensor a node produces numbered in that order (then the graph
  inputs); every (producer, consumer, tensor) read as three int arrays, in the order
  engine.layout._node_pairs lists them (consumer by consumer, input by input); per-node
  figures for group totals;
- `GroupIndex(groups, arrays)`: each group's member positions and the innermost group of each
  node;
- `level_graph(...)`: the box graph of one level of a folded layout (its nodes with its child
  groups collapsed), as the vertex list and (source, target, tensor) triples engine.layout's
  `layout_nodes` lays out: the same boxes and edges, in the same order, as its walk finds.

The arrays stand for the walks only when every tensor name has one producer (a node, or a graph
input); `NodeArrays.exact` says so, and callers walk as before when it is False.
"""
from __future__ import annotations

import threading
import weakref
import itertools
from itertools import chain, repeat
from operator import attrgetter
from typing import TYPE_CHECKING, Mapping, Optional, Sequence

import numpy as np

from engine.gil_slices import array_of, table_of, update

if TYPE_CHECKING:
    from engine.analysis import ModelAnalysis
    from engine.layout import NodeGroup

INPUT_PREFIX = "input:"  # engine.layout.INPUT_PREFIX (not imported: engine.layout imports this module)


class NodeArrays:
    """The execution order, tensors and reads of one analysed graph as arrays (see the module doc)."""

    def __init__(self, analysis: "ModelAnalysis"):
        self.analysis = weakref.proxy(analysis)  # the arrays are kept per analysis: no cycle
        order = list(analysis.order)
        self.count = len(order)
        self.ids = order
        self.id_array = np.array(order, dtype=object)
        self.constant = np.fromiter(map(attrgetter("is_constant"), self.metrics(analysis)), dtype=bool,
                                    count=self.count)
        self._position: Optional[dict[str, int]] = None
        self._nodes: Optional[Sequence] = None
        self._known_positions: dict[int, tuple] = {}  # id of a member tuple -> (it, its positions)
        self._tensors_built = False
        self._pairs: dict[bool, Pairs] = {}
        self._visible: dict[bool, np.ndarray] = {}
        self._op_numbers: dict[str, int] = {}
        self._op_counter = itertools.count()  # numbers new op types (distinct, never reused)
        self._figures = None
        self._profile: tuple = (None, None)
        self._lock = threading.RLock()

    def metrics(self, analysis: "ModelAnalysis") -> Sequence:
        """The NodeMetrics in execution order."""
        metrics = analysis.nodes
        if len(metrics) == self.count and list(metrics) == self.ids:
            return list(metrics.values())  # listed in execution order (the analysis makes them so)
        return list(map(metrics.__getitem__, self.ids))

    @property
    def position(self) -> dict[str, int]:
        """node id -> its position (built on first use)."""
        with self._lock:
            if self._position is None:
                self._position = dict(zip(self.ids, range(self.count)))
            return self._position

    def nodes(self) -> Sequence:
        """The graph's nodes in execution order."""
        with self._lock:
            if self._nodes is None:
                graph = self.analysis.graph
                nodes = graph.nodes
                if len(nodes) == self.count and list(map(attrgetter("id"), nodes)) == self.ids:
                    self._nodes = nodes  # the file's order is the execution order (the usual case)
                else:
                    self._nodes = list(map(graph.nodes_by_id.__getitem__, self.ids))
            return self._nodes

    def _build_tensors(self) -> None:
        """Tensors: every output slot of every node, in execution order, then the graph inputs that
        are not weights (a tensor's number orders "node by node, output by output"); the reads."""
        if self._tensors_built:
            return
        graph = self.analysis.graph
        nodes = self.nodes()
        count = self.count
        outputs_of = list(map(attrgetter("outputs"), nodes))
        out_counts = np.fromiter(map(len, outputs_of), dtype=np.int64, count=count)
        out_names = list(chain.from_iterable(outputs_of))
        self.out_start = np.concatenate([[0], np.cumsum(out_counts)]).astype(np.int64)
        inputs = [name for name in graph.inputs if getattr(graph.values.get(name), "initializer", None) is None]
        self.produced = len(out_names)  # tensors [0, produced) come from nodes, the rest are graph inputs
        self.tensor_names = out_names + inputs
        self.tensor_source = np.concatenate([np.repeat(np.arange(count, dtype=np.int64), out_counts),
                                             -1 - np.arange(len(inputs), dtype=np.int64)])
        number = {}
        update(number, out_names, range(len(out_names)))  # a slice at a time: one dict() held the GIL ~23 ms
        number.pop("", None)  # "" is no tensor (an omitted optional output)
        exact = len(number) == len(out_names) - out_names.count("") and len(set(inputs)) == len(inputs)
        for k, name in enumerate(inputs):
            exact = exact and name not in number
            number[name] = self.produced + k
        self.exact = exact
        inputs_of = list(map(attrgetter("inputs"), nodes))
        in_counts = np.fromiter(map(len, inputs_of), dtype=np.int64, count=count)
        read = array_of(number.get, list(chain.from_iterable(inputs_of)), np.int64, -1)  # engine.gil_slices
        reader = np.repeat(np.arange(count, dtype=np.int64), in_counts)
        known = read >= 0
        self._reads = (self.tensor_source[read[known]], reader[known], read[known])
        self.output_tensors = np.unique(np.array([number[name] for name in graph.outputs if name in number],
                                                 dtype=np.int64))  # the graph outputs' tensors, ascending
        self._tensors_built = True

    def tensors(self) -> "NodeArrays":
        """These arrays with the tensor fields built (out_start, produced, tensor_names,
        tensor_source, output_tensors, exact)."""
        with self._lock:
            self._build_tensors()
        return self

    def op_codes(self, positions: np.ndarray) -> np.ndarray:
        """A number per op type (the same for the same op type in one model) of the nodes at `positions`."""
        nodes = self.nodes()
        with self._lock:
            ops = map(attrgetter("op_type"), map(nodes.__getitem__, positions.tolist()))
            return np.fromiter(map(self._op_numbers.setdefault, ops, self._op_counter), dtype=np.int64, count=len(positions))

    def visible(self, include_constants: bool) -> np.ndarray:
        """Per node: whether it is drawn (constants only with `include_constants`)."""
        found = self._visible.get(include_constants)
        if found is None:
            found = self._visible[include_constants] = np.ones(self.count, dtype=bool) if include_constants \
                else ~self.constant
        return found

    def pairs(self, include_constants: bool) -> "Pairs":
        """The reads between drawn nodes (and from graph inputs): _node_pairs of every drawn node."""
        with self._lock:
            found = self._pairs.get(include_constants)
            if found is None:
                self._build_tensors()
                source, target, tensor = self._reads
                visible = self.visible(include_constants)
                keep = visible[target] & ((source < 0) | visible[np.maximum(source, 0)])
                found = self._pairs[include_constants] = Pairs(source[keep], target[keep], tensor[keep])
            return found

    def positions(self, node_ids: Sequence[str], missing: Optional[int] = None) -> np.ndarray:
        """Positions of `node_ids` in their order (`missing` for an id that is no node; None: a KeyError)."""
        known = self._known_positions.get(id(node_ids))
        if known is not None and known[0] is node_ids:
            return known[1]
        if missing is None:
            found = map(self.position.__getitem__, node_ids)
        else:
            found = map(self.position.get, node_ids, repeat(missing))
        return np.fromiter(found, dtype=np.int64, count=len(node_ids))

    def remember_positions(self, node_ids: tuple, positions: np.ndarray) -> None:
        """`positions(node_ids)` is `positions` (engine.layout.node_groups knows its groups' members')."""
        self._known_positions[id(node_ids)] = (node_ids, positions)

    def remembered(self, node_ids: Sequence[str]) -> bool:
        known = self._known_positions.get(id(node_ids))
        return known is not None and known[0] is node_ids

    def forget_positions(self) -> None:
        """Drop the remembered member positions (a new grouping of the model replaces them)."""
        self._known_positions = {}

    def names(self, positions: np.ndarray) -> list[str]:
        return self.id_array[positions].tolist()

    # --- group totals -----------------------------------------------------------------------
    def figures(self, analysis: "ModelAnalysis") -> Optional[dict]:
        """Per node: macs, flops, output_bytes, bytes_moved (0 where unknown) and params as int64, with
        the masks of the known ones; None when a figure is too big for exact int64 sums."""
        with self._lock:
            if self._figures is None:
                names = ("macs", "flops", "output_bytes", "bytes_moved", "params")
                table = table_of(list(map(attrgetter(*names), self.metrics(analysis))), float,
                                 len(names))  # None -> nan; sliced: engine.gil_slices
                figures: dict = {}
                for column, name in enumerate(names):
                    values = table[:, column]
                    known = ~np.isnan(values)
                    largest = float(np.abs(values[known]).max()) if known.any() else 0.0
                    if largest >= 2.0 ** 53 or largest * max(1, self.count) >= 2.0 ** 62:
                        self._figures = False  # sums could lose digits: the caller sums in Python
                        break
                    figures[name] = np.where(known, values, 0.0).astype(np.int64)
                    figures[name + "_known"] = known
                else:
                    self._figures = figures
            return self._figures or None

    def profile_times(self, profile) -> tuple[np.ndarray, list]:
        """(median ms per node, nan where not timed; kind per node or None), for the last profile asked."""
        with self._lock:
            if self._profile[0] is not profile:
                timed = profile.nodes
                found = [timed.get(n) for n in self.ids]
                times = np.array([t.time.median_ms if t is not None else np.nan for t in found], dtype=float)
                kinds = [t.kind if t is not None else None for t in found]
                self._profile = (profile, (times, kinds))
            return self._profile[1]


class Pairs:
    """(producer, consumer, tensor) reads as arrays, consumers ascending (a producer < 0 is graph
    input -1-k); `by_source` orders them by producer, for the reads out of a span of nodes."""

    def __init__(self, source: np.ndarray, target: np.ndarray, tensor: np.ndarray):
        self.source, self.target, self.tensor = source, target, tensor
        self._by_source: Optional[tuple] = None

    def into(self, first: int, last: int) -> slice:
        """The reads by the nodes at positions first..last."""
        return slice(int(np.searchsorted(self.target, first, "left")), int(np.searchsorted(self.target, last, "right")))

    def out_of(self, first: int, last: int) -> np.ndarray:
        """Indexes of the reads of tensors made by the nodes at positions first..last."""
        if self._by_source is None:
            order = np.argsort(self.source, kind="stable")
            self._by_source = (order, self.source[order])
        order, sorted_sources = self._by_source
        return order[np.searchsorted(sorted_sources, first, "left"):np.searchsorted(sorted_sources, last, "right")]


_arrays: dict[int, NodeArrays] = {}
_arrays_lock = threading.Lock()


def node_arrays(analysis: "ModelAnalysis") -> NodeArrays:
    """The NodeArrays of `analysis`, built on first use and dropped with it."""
    key = id(analysis)
    found = _arrays.get(key)
    if found is None:
        with _arrays_lock:
            found = _arrays.get(key)
            if found is None:
                found = _arrays[key] = NodeArrays(analysis)
                weakref.finalize(analysis, _arrays.pop, key, None)
    return found


def figures_of(analysis: "ModelAnalysis", members: Sequence[str], profile=None) -> Optional[dict]:
    """engine.layout.group_totals' fields for the nodes `members` from the arrays (None: the sums
    must be made in Python).  Integer sums are exact; a time is summed in member order, as before."""
    arrays = node_arrays(analysis)
    figures = arrays.figures(analysis)
    if figures is None:
        return None
    found = arrays.positions(members, missing=-1)
    found = found[found >= 0]  # a member that is no node of this graph counts nowhere (as before)
    compute = found[~arrays.constant[found]]
    macs_known = figures["macs_known"][compute]
    flops_known = figures["flops_known"][compute]
    moved_known = figures["bytes_moved_known"][compute] & flops_known
    result = dict(nodes=len(compute), macs=int(figures["macs"][compute].sum()),
                  params=int(figures["params"][found].sum()), unknown_cost_nodes=int((~macs_known).sum()),
                  flops=int(figures["flops"][compute].sum()), output_bytes=int(figures["output_bytes"][compute].sum()),
                  bytes_moved=int(figures["bytes_moved"][compute][moved_known].sum()))
    if profile is not None:
        times, kinds = arrays.profile_times(profile)
        timed = found[~np.isnan(times[found])]
        if len(timed):
            from engine.profile import combine_kinds

            result.update(time_ms=sum(times[timed].tolist()), time_kind=combine_kinds({kinds[i] for i in timed.tolist()}),
                          timed_nodes=len(timed))
    return result


def figures_of_many(analysis: "ModelAnalysis", member_lists: Sequence[Sequence[str]]) -> Optional[list[dict]]:
    """figures_of(analysis, members) without a profile for each of `member_lists`, summed together
    (one pass of numpy for all: the frames and boxes of an opened block are ~200 groups, ~20 us of
    numpy calls each one by one); None when the sums must be made in Python."""
    arrays = node_arrays(analysis)
    figures = arrays.figures(analysis)
    if figures is None:
        return None
    if not member_lists:
        return []
    found = [arrays.positions(members, missing=-1) for members in member_lists]
    lengths = np.fromiter(map(len, found), dtype=np.int64, count=len(found))
    every = np.concatenate(found)
    known = every >= 0  # a member that is no node of this graph counts nowhere (as figures_of)
    positions = np.where(known, every, 0)
    compute = known & ~arrays.constant[positions]
    moved_known = figures["bytes_moved_known"] & figures["flops_known"]
    starts = np.cumsum(lengths) - lengths
    filled = np.flatnonzero(lengths)  # reduceat sums up to the next start: empty lists are left 0

    def total(values: np.ndarray, where: np.ndarray) -> list[int]:
        sums = np.zeros(len(found), dtype=np.int64)
        if len(filled):  # int64 sums are exact: figures() checked they cannot overflow
            sums[filled] = np.add.reduceat(np.where(where, values, 0).astype(np.int64), starts[filled])
        return sums.tolist()

    one = np.ones(len(every), dtype=np.int64)
    columns = dict(nodes=total(one, compute), macs=total(figures["macs"][positions], compute),
                   params=total(figures["params"][positions], known),
                   unknown_cost_nodes=total(one, compute & ~figures["macs_known"][positions]),
                   flops=total(figures["flops"][positions], compute),
                   output_bytes=total(figures["output_bytes"][positions], compute),
                   bytes_moved=total(figures["bytes_moved"][positions], compute & moved_known[positions]))
    return [dict(zip(columns, values)) for values in zip(*columns.values())]


class GroupIndex:
    """Each group's member positions (execution order) and each node's innermost group, as numbers:
    groups are numbered in the order of `groups` (outermost first)."""

    def __init__(self, groups: Mapping[str, "NodeGroup"], arrays: NodeArrays):
        self.ids = list(groups)
        self.number = {group_id: k for k, group_id in enumerate(self.ids)}
        self.parent = np.array([self.number.get(groups[g].parent, -1) for g in self.ids], dtype=np.int64)
        # Groups that engine.layout.node_groups made for this analysis nest (a child's members are
        # its parent's) and list their members in execution order: what the level and crossing
        # look-ups here rely on.  Any other groups are laid out by walking (FoldedLayouts).
        self.nested = all(arrays.remembered(groups[g].members) for g in self.ids)
        self.members = [arrays.positions(groups[g].members) for g in self.ids]
        innermost = np.full(arrays.count, -1, dtype=np.int64)
        for k, members in enumerate(self.members):
            innermost[members] = k  # a deeper group comes later and wins (engine.grouping.innermost_group)
        self.innermost = innermost
        self.arrays = arrays

    def child_within(self, level: Optional[str], positions: np.ndarray) -> np.ndarray:
        """Per node (all of them inside `level`; None: the root): the number of the child group of
        `level` holding it, or -1 when no child does (it is drawn as itself there)."""
        top = -1 if level is None else self.number[level]
        group = self.innermost[positions].copy()
        parent = self.parent
        while True:
            climbing = (group >= 0) & (group != top)
            climbing[climbing] = parent[group[climbing]] != top
            if not climbing.any():
                break
            group[climbing] = parent[group[climbing]]
        return np.where((group >= 0) & (group != top), group, -1)

    def innermost_of(self, node_id: str) -> Optional[str]:
        position = self.arrays.position.get(node_id)
        if position is None:
            return None
        k = int(self.innermost[position])
        return self.ids[k] if k >= 0 else None

    def grouped_nodes(self) -> list[str]:
        """The nodes inside some group, in execution order."""
        return self.arrays.names(np.flatnonzero(self.innermost >= 0))


class LevelGraph:
    """One level's box graph (see `level_graph`)."""

    def __init__(self, boxes: list[str], pairs: list[tuple[str, str, str]], producer_of: dict[str, str],
                 nodes: np.ndarray, box_code: np.ndarray, level_pairs: tuple):
        self.boxes, self.pairs, self.producer_of = boxes, pairs, producer_of
        self.nodes = nodes  # the level's drawn nodes (positions, execution order)
        self.box_code = box_code  # per node of `nodes`: its child group's number, or -1 (its own box)
        self.level_pairs = level_pairs  # (source, target, tensor) reads inside the level, in pairs order


def contains(sorted_values: np.ndarray, values: np.ndarray) -> np.ndarray:
    """Per value: whether it is in `sorted_values` (ascending) (np.isin without sorting both)."""
    at = np.searchsorted(sorted_values, values)
    found = at < len(sorted_values)
    found[found] = sorted_values[at[found]] == values[found]
    return found


def level_graph(arrays: NodeArrays, pairs: "Pairs", index: GroupIndex, nodes: np.ndarray, level: Optional[str],
                include_io: bool) -> LevelGraph:
    """The boxes of a level in order of first appearance (a node's own box, or its child group's
    when one holds it) and the distinct (source box, target box, tensor) reads between different
    boxes in order of first appearance: what engine.layout.layout_nodes derives from
    `_node_pairs` of `nodes` with the level's children collapsed.  Costs what the level holds."""
    count = len(nodes)
    child = index.child_within(level, nodes)
    box = np.where(child >= 0, count + child, np.arange(count))  # a box code per node of the level
    if count:
        window = pairs.into(int(nodes[0]), int(nodes[-1]))
        source, target, tensor = pairs.source[window], pairs.target[window], pairs.tensor[window]
    else:
        source = target = tensor = np.zeros(0, dtype=np.int64)
    from_input = source < 0
    keep = contains(nodes, target) & np.where(from_input, include_io, contains(nodes, source))
    source, target, tensor = source[keep], target[keep], tensor[keep]
    level_pairs = (source, target, tensor)
    source_box = np.where(source < 0, source, box[np.searchsorted(nodes, source)])
    target_box = box[np.searchsorted(nodes, target)]
    between = source_box != target_box
    source_box, target_box, tensor = source_box[between], target_box[between], tensor[between]
    inputs = len(arrays.tensor_names) - arrays.produced
    span_box, span_tensor = count + len(index.ids), len(arrays.tensor_names)
    if (span_box + inputs + 1) * span_box * span_tensor < 2 ** 62:
        key = ((source_box + inputs) * span_box + target_box) * span_tensor + tensor
        _, first = np.unique(key, return_index=True)
    else:
        _, first = np.unique(np.stack([source_box, target_box, tensor], axis=1), axis=0, return_index=True)
    first.sort()
    _, box_first = np.unique(box, return_index=True)
    box_first.sort()
    tensor_names, node_ids = arrays.tensor_names, arrays.ids

    def name(code: int) -> str:
        if code < 0:
            return INPUT_PREFIX + tensor_names[arrays.produced - 1 - code]
        return node_ids[int(nodes[code])] if code < count else index.ids[code - count]

    boxes = [name(code) for code in box[box_first].tolist()]
    box_pairs = [(name(s), name(t), tensor_names[k]) for s, t, k in
                 zip(source_box[first].tolist(), target_box[first].tolist(), tensor[first].tolist())]
    producer_of: dict[str, str] = {}
    if include_io:
        for k in arrays.output_tensors.tolist():
            producer = int(arrays.tensor_source[k])
            if producer < 0:
                producer_of[tensor_names[k]] = name(producer)
            elif count and contains(nodes, np.array([producer]))[0]:
                producer_of[tensor_names[k]] = name(int(box[np.searchsorted(nodes, producer)]))
    return LevelGraph(boxes, box_pairs, producer_of, nodes, child, level_pairs)


class SubtreeShape:
    """What the drawing of a group opened (with any of its descendants collapsed) depends on, up
    to names (see `subtree_shape`): two groups with equal `key`s are drawn alike, and one's drawing
    becomes the other's by renaming member i, group i and tensor i of the one to those of the other."""

    def __init__(self, key: tuple, members: np.ndarray, groups: list[str], tensors: np.ndarray):
        self.key = key
        self.members = members  # the member positions, ascending
        self.groups = groups  # the group and its descendants, by number
        self.rank = {group_id: i for i, group_id in enumerate(groups)}
        self.tensors = tensors  # every tensor its drawing can name, in the key's order


def subtree_shape(arrays: NodeArrays, pairs: Pairs, index: GroupIndex, group_id: str,
                  descendants: Sequence[str]) -> SubtreeShape:
    """The shape of `group_id` with its `descendants`, from the arrays: every member's op type,
    drawn or not (a constant), output count and innermost group (by rank in the subtree); the
    groups' parents (by rank); each read by a member (by rank) of a tensor made by a member (its
    rank and output slot) or made outside (numbered in order of first appearance: which outside
    tensors are one); and the members' tensors read outside or graph outputs (rank and slot).
    That is everything the group's levels, their wiring and the tensors crossing their frames are
    made of (FoldedLayouts._lay_out, _crossing_from_arrays), so equal keys mean equal drawings."""
    numbers = np.array(sorted(index.number[g] for g in (group_id, *descendants)), dtype=np.int64)
    members = index.members[index.number[group_id]]
    out_start = arrays.tensors().out_start
    parents = index.parent[numbers]
    parent_rank = np.where(contains(numbers, parents), np.searchsorted(numbers, parents), -1)
    parts = [len(members), len(numbers), arrays.op_codes(members).tobytes(), arrays.constant[members].tobytes(),
             (out_start[members + 1] - out_start[members]).tobytes(),
             np.searchsorted(numbers, index.innermost[members]).tobytes(), parent_rank.tobytes()]
    tensors = [np.zeros(0, dtype=np.int64)] * 2
    if len(members):
        first, last = int(members[0]), int(members[-1])
        window = pairs.into(first, last)
        source, target, tensor = pairs.source[window], pairs.target[window], pairs.tensor[window]
        read = contains(members, target)
        source, target, tensor = source[read], target[read], tensor[read]
        inside = contains(members, source)
        source_rank = np.where(inside, np.searchsorted(members, source), -1)
        outside = tensor[~inside]
        _, seen, again = np.unique(outside, return_index=True, return_inverse=True)
        order = np.empty(len(seen), dtype=np.int64)
        order[np.argsort(seen, kind="stable")] = np.arange(len(seen))
        code = np.empty(len(tensor), dtype=np.int64)
        code[inside] = tensor[inside] - out_start[source[inside]]  # output slot
        code[~inside] = order[again.reshape(-1)]  # which outside tensor
        reads = pairs.out_of(first, last)
        reads = reads[contains(members, pairs.source[reads]) & ~contains(members, pairs.target[reads])]
        made = arrays.output_tensors
        made = made[(made >= out_start[first]) & (made < out_start[last + 1])]
        made = made[contains(members, arrays.tensor_source[made])]
        leaving = np.union1d(pairs.tensor[reads], made)
        maker = arrays.tensor_source[leaving]
        parts += [np.stack([np.searchsorted(members, target), source_rank, code]).tobytes(),
                  np.stack([np.searchsorted(members, maker), leaving - out_start[maker]]).tobytes()]
        tensors = [tensor, leaving]
    return SubtreeShape(tuple(parts), members, [index.ids[k] for k in numbers.tolist()], np.concatenate(tensors))
