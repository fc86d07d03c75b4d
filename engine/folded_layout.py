"""Folded graphs laid out a group at a time (Model Explorer style): pure geometry, no Qt.

A model grouped by namespace is drawn as nested levels: the root (top-level groups as boxes)
and, inside the frame of every opened group, that group's own contents (its nodes and its
child groups as boxes).  Each level is laid out once by engine.layout (`layout_graph` for the
root, `layout_nodes` for a group's members) and kept in `FoldedLayouts`; opening or closing a
group lays out at most that group, then `compose` puts the cached levels together:

- an opened group's box becomes a frame big enough for its contents.  Everything whose box
  centre lies right of the box's centre moves right by the extra width, everything below by
  the extra height (edges of the level are moved point by point), so nothing overlaps and the
  rest of the scene is shifted, not laid out again;
- a tensor entering an opened group from outside arrives at the frame's top (where the
  level's edge ends) and runs down the frame's left margin to the box that consumes it; a
  tensor leaving it runs from its producer to the right margin and down to the frame's
  bottom, where the level's edge starts.

Composition is numpy over the drawn boxes; opening a group of 3,000 nodes in a 100,000-node
model costs the layout of those 3,000 nodes once, and a few milliseconds when reopened.  A
level's boxes and edges, and the tensors crossing a frame, come from the model's arrays
(engine.group_index, built once per model), so they cost what the level holds, not what the
model holds; the last few composed drawings are kept whole.  A group shaped exactly like one
composed before (a repeated block, a head: engine.group_index.subtree_shape) is not composed
from its levels: it is that group's composed piece under its own names (~10 ms instead of ~0.1 s
for a block of ~140 levels).
"""
from __future__ import annotations

import threading
from dataclasses import dataclass, field, replace
from functools import partial
from itertools import chain
from typing import TYPE_CHECKING, Callable, Iterable, Iterator, Mapping, Optional

import numpy as np

from engine.group_index import GroupIndex, LevelGraph, SubtreeShape, contains, level_graph, node_arrays, subtree_shape
from engine.layout import (CONSTANT_LIFT, GROUP_HEIGHT, NODE_WIDTH, VERTICAL_GAP, GraphLayout, LayoutEdge, NodeGroup, Rect,
                           INPUT_PREFIX, attach_constants, attach_outputs, collapsed_boxes, attach_inputs, layout_graph,
                           layout_nodes, tensor_bytes)

if TYPE_CHECKING:
    from engine.analysis import ModelAnalysis

FRAME_PAD = 18.0  # frame margin left, right and below the contents (the lanes run in it)
FRAME_TITLE = 30.0  # frame band above the contents: the group's name and totals
LANE_INSET = 7.0  # the lanes' distance from the frame's side
COMPOSED_KEPT = 8  # composed drawings kept: closing and reopening a group returns the same one


@dataclass(frozen=True)
class FoldedLayout(GraphLayout):
    """A GraphLayout with the frames of the opened groups (group id -> rectangle), outermost first."""

    frames: Mapping[str, Rect] = field(default_factory=dict)


class _BoxFor(Mapping):
    """node id -> the collapsed group box that draws it (GraphLayout.box_for) of a composed
    layout, looked up through the groups (the outermost collapsed group holding the node)
    instead of a dict of every hidden node: that dict cost ~0.15 s per open of a 100,000-node model."""

    def __init__(self, groups: Mapping[str, NodeGroup], member_of: Mapping[str, str], closed: frozenset):
        self._groups, self._member_of, self._closed = groups, member_of, closed
        self._all: Optional[dict] = None

    def get(self, node_id, default=None):
        group_id, box = self._member_of.get(node_id), None
        while group_id is not None:  # up to the root: the outermost collapsed group wins
            if group_id in self._closed:
                box = group_id
            group_id = self._groups[group_id].parent
        return default if box is None else box

    def __getitem__(self, node_id):
        box = self.get(node_id)
        if box is None:
            raise KeyError(node_id)
        return box

    def _every(self) -> dict:
        if self._all is None:
            found = ((n, self.get(n)) for n in self._member_of)
            self._all = {n: b for n, b in found if b is not None}
        return self._all

    def __iter__(self) -> Iterator[str]:
        return iter(self._every())

    def __len__(self) -> int:
        return len(self._every())


class _Innermost(Mapping):
    """node id -> the deepest group holding it (engine.grouping.innermost_group) from a GroupIndex."""

    def __init__(self, index: GroupIndex):
        self._index = index
        self._nodes: Optional[list] = None

    def get(self, node_id, default=None):
        found = self._index.innermost_of(node_id)
        return default if found is None else found

    def __getitem__(self, node_id):
        found = self._index.innermost_of(node_id)
        if found is None:
            raise KeyError(node_id)
        return found

    def __iter__(self) -> Iterator[str]:
        if self._nodes is None:
            self._nodes = self._index.grouped_nodes()
        return iter(self._nodes)

    def __len__(self) -> int:
        return int((self._index.innermost >= 0).sum())


@dataclass
class _Piece:
    """A composed level in its own coordinates (origin at its top-left)."""

    ids: list
    rects: np.ndarray  # (n, 4)
    frame_ids: list
    frame_rects: np.ndarray  # (f, 4)
    edges: list  # (source, target, value, values) per edge
    starts: np.ndarray  # (m + 1,): edge k's points are points[starts[k]:starts[k + 1]]
    points: np.ndarray  # (p, 2)
    members: dict  # collapsed group box -> its members (the drawn ones: which groups are closed here)
    width: float
    height: float


def _output_home(start: Optional[str], child_of, fed: dict[str, bool], is_fed) -> tuple[Optional[str], Optional[str]]:
    """(level, child group making it) where a graph output is drawn (FoldedLayouts._outputs_homed):
    down from `start` through the child groups making it (`child_of(level)`, None below the last)
    while each is fed by graph inputs only; level None when it stays at `start`.  `fed` keeps
    `is_fed(group)` per group across outputs."""
    level = start
    while True:
        group = child_of(level)
        if group is None:
            return None, None
        found = fed.get(group)
        if found is None:
            found = fed[group] = is_fed(group)
        if found:
            return (level if level != start else None), group
        level = group


class FoldedLayouts:
    """The laid-out levels of one analysed, namespace-grouped model (root and each group), each
    computed on first use; `compose(collapsed)` draws the model with those groups collapsed.
    Thread-safe: the GUI composes in worker threads."""

    def __init__(self, analysis: "ModelAnalysis", groups: Mapping[str, NodeGroup], include_constants: bool,
                 from_arrays: bool = True, twin_pieces: bool = True):
        """`from_arrays` False: find every level by walking its nodes (the way a model whose tensors
        the arrays cannot stand for is laid out; the same layouts, slower).  `twin_pieces` False:
        every opened group is composed from its levels, none renamed from a twin's (see _twin_piece)."""
        self.analysis, self.groups, self.include_constants = analysis, groups, include_constants
        self.from_arrays, self.twin_pieces = from_arrays, twin_pieces
        self._levels: dict[Optional[str], GraphLayout] = {}
        self._children: dict[Optional[str], list[str]] = {}
        for group in groups.values():
            self._children.setdefault(group.parent, []).append(group.id)
        self._tensors: Optional[tuple] = None  # producer_of, consumers_of, graph outputs (first group opened)
        self._crossing: dict[str, tuple[dict, dict]] = {}  # group id -> tensors entering, leaving (per box)
        # Repeated blocks: a level with the same structure as one laid out already reuses its geometry.
        self._by_structure: dict[tuple, tuple[str, list[str], list[str]]] = {}
        # The same from arrays: (nodes, children, wires) -> [[structure or None (not made yet), level,
        # its nodes, its children, its LevelGraph until its structure is made], ...]
        self._by_shape: dict[tuple, list[list]] = {}
        self.reused_levels = 0
        self.annotations: dict[str, dict] = {}  # what a viewer derives per node and keeps (label text)
        self._member_of: Optional[dict[str, str]] = None  # node id -> innermost group (first compose)
        # An opened group as composed, by (group, which of its descendants are collapsed): reopening
        # it, or opening another group elsewhere, reuses it whole.  Pieces are never changed.
        self._framed_pieces: dict[tuple[str, frozenset], _Piece] = {}
        self._arrays_of_level: dict[Optional[str], tuple] = {}  # a level as arrays (see _level_arrays)
        self._composed: dict[frozenset, FoldedLayout] = {}  # the last COMPOSED_KEPT drawings, by collapsed groups
        self._descendants: dict[str, frozenset] = {}
        # Repeated groups whole (layers.0 ... layers.N, the heads in each): the groups composed, by
        # (members, descendants) counts, and the shape of each group compared (made when needed).
        self._composed_by_counts: dict[tuple[int, int], list[str]] = {}
        self._shapes: dict[str, SubtreeShape] = {}
        self.renamed_pieces = 0  # opened groups drawn as a twin's piece renamed
        self._lock = threading.RLock()  # re-entered: a level's layout looks up the groups' index
        self.arrays = node_arrays(analysis)
        self.hidden = frozenset() if include_constants else \
            frozenset(self.arrays.id_array[self.arrays.constant].tolist())
        self._index: Optional[GroupIndex] = None  # the groups as arrays (first level laid out)
        self._fast: Optional[bool] = None  # whether the arrays stand for the walks (see _indexed)
        self.seconds_laying_out = 0.0  # time spent in engine.layout (what the cache saves)
        self._homes: Optional[tuple[dict, dict]] = None  # graph inputs drawn inside a level (see _inputs_homed)
        self._output_homes: Optional[tuple] = None  # graph outputs drawn inside a level (see _outputs_homed)
        self._outputs_at: dict[Optional[str], tuple] = {}  # their feeders and tensors, per level (_outputs_of_level)

    def _indexed(self) -> Optional[GroupIndex]:
        """The GroupIndex, when the levels can be derived from arrays: every tensor has one producer
        and the groups are node_groups' (nested, members in execution order); else None and the
        levels are found by walking their nodes."""
        with self._lock:
            if self._fast is None:
                index = GroupIndex(self.groups, self.arrays)
                self._index, self._fast = index, self.from_arrays and index.nested and self.arrays.tensors().exact
            return self._index if self._fast else None

    def _level_box_for(self, drawn_children: Iterable[str]) -> "_BoxFor":
        """node id -> the child group box drawing it in a level (GraphLayout.box_for), looked up."""
        return _BoxFor(self.groups, self.innermost(), frozenset(drawn_children))

    def innermost(self) -> Mapping[str, str]:
        """node id -> the deepest group holding it (engine.grouping.innermost_group), looked up."""
        with self._lock:
            if self._member_of is None:
                index = self._indexed()
                if index is not None:
                    self._member_of = _Innermost(index)
                else:
                    from engine.grouping import innermost_group
                    self._member_of = innermost_group(self.groups)
            return self._member_of

    def cached(self, level: Optional[str]) -> bool:
        return level in self._levels

    def level(self, level: Optional[str]) -> GraphLayout:
        """The layout of `level` (None: the root) with its child groups collapsed, laid out once."""
        with self._lock:
            found = self._levels.get(level)
            if found is None:
                import time
                start = time.perf_counter()
                found = self._levels[level] = self._lay_out(level)
                self.seconds_laying_out += time.perf_counter() - start
            return found

    def _lay_out(self, level: Optional[str]) -> GraphLayout:
        children = self._children.get(level, [])
        index = self._indexed()
        if index is None:
            return self._lay_out_walking(level, children)
        arrays, graph = self.arrays, self.analysis.graph
        members = {child: self.groups[child].members for child in children}
        homes, homed = self._inputs_homed()
        output_homes, moved_feeders, homed_outputs = self._outputs_homed()
        if level is None:  # as layout_graph: laid out without constants, shown ones attached after
            nodes = np.flatnonzero(~arrays.constant)
            if len(moved_feeders):
                nodes = nodes[~contains(moved_feeders, nodes)]
            boxes = level_graph(arrays, arrays.pairs(False), index, nodes, None, include_io=True)
            hidden = frozenset(arrays.id_array[arrays.constant].tolist())
            layout = layout_nodes(graph, boxes.boxes, include_io=True, hidden=hidden,
                                  box_for={child: child for child in children}, members=members,
                                  tensors=(boxes.pairs, boxes.producer_of), broadcast_lanes=True,
                                  left_out_inputs=frozenset(homed.values()), left_out_outputs=homed_outputs)
            if homes.get(None):
                layout = attach_inputs(layout, homes[None])
            layout = replace(layout, box_for=self._level_box_for(layout.members))
            return attach_constants(layout, self.analysis) if self.include_constants else layout
        positions = index.members[index.number[level]]
        nodes = positions[arrays.visible(self.include_constants)[positions]]
        moved_out = len(moved_feeders) and contains(moved_feeders, nodes).any()
        if moved_out:
            nodes = nodes[~contains(moved_feeders, nodes)]
        boxes = level_graph(arrays, arrays.pairs(self.include_constants), index, nodes, level,
                            include_io=False)
        visible = arrays.names(nodes)
        # Drawn with graph inputs or outputs (or without the nodes feeding outputs drawn elsewhere):
        # a twin's geometry would lack them.
        if homes.get(level) or output_homes.get(level) or moved_out:
            layout = layout_nodes(graph, boxes.boxes, include_io=False, box_for={child: child for child in children},
                                  members=members, tensors=(boxes.pairs, {}), broadcast_lanes=True)
            if output_homes.get(level):  # first: the inputs keep clear of them
                layout = attach_outputs(layout, output_homes[level])
            if homes.get(level):
                layout = attach_inputs(layout, homes[level])
            return replace(layout, box_for=self._level_box_for(layout.members))
        # Only a level with as many nodes, children and wires can have the same structure: the
        # structures are compared (and made) only then, so a one-off level costs nothing here.
        shape = (len(nodes), len(children), len(boxes.level_pairs[0]))
        laid_out = self._by_shape.setdefault(shape, [])
        if laid_out:
            structure = self._structure_of(boxes, index, children)
            for twin in laid_out:
                if twin[0] is None:
                    twin[0], twin[4] = self._structure_of(twin[4], index, twin[3]), None
                if twin[0] == structure:
                    self.reused_levels += 1
                    return self._reuse(self._levels[twin[1]], twin[2], twin[3], visible, children, None, members)
            laid_out.append([structure, level, visible, children, None])
        else:
            laid_out.append([None, level, visible, children, boxes])  # its structure is made when needed
        layout = layout_nodes(graph, boxes.boxes, include_io=False, box_for={child: child for child in children},
                              members=members, tensors=(boxes.pairs, {}), broadcast_lanes=True)
        return replace(layout, box_for=self._level_box_for(layout.members))

    def _inputs_homed(self) -> tuple[dict, dict]:
        """({level: [(input box, child group box, tensor)]}, {input tensor position: its name}) of the
        graph inputs drawn inside a level beside the child group that alone reads them, not in the
        root's top row (a decoder's KV-cache inputs: ~500 of them, each read by one block, made a
        top row 100,000 units wide and a lane each down the `model` frame).  An input goes down from
        the root while one child group reads all of it and that group reads nothing else there but
        graph inputs (`model`); it stays in the first level where that group is fed by another box
        (`model/layers.3`, fed by `layers.2`).  Found from the arrays; none when levels are walked."""
        with self._lock:
            if self._homes is None:
                self._homes = self._find_homes()
            return self._homes

    def _find_homes(self) -> tuple[dict, dict]:
        index = self._indexed()
        homes: dict[Optional[str], list] = {}
        homed: dict[int, str] = {}
        if index is None:
            return self._find_homes_walking()
        arrays, names = self.arrays, self.arrays.tensor_names
        pairs = arrays.pairs(self.include_constants)
        from_input = np.flatnonzero(pairs.source < 0)
        if not len(from_input):
            return homes, homed
        tensors, readers = pairs.tensor[from_input], pairs.target[from_input]
        order = np.argsort(tensors, kind="stable")
        tensors, readers = tensors[order], readers[order]
        distinct, starts = np.unique(tensors, return_index=True)
        outputs = set(self.analysis.graph.outputs)
        fed: dict[str, bool] = {}
        for tensor, read_by in zip(distinct.tolist(), np.split(readers, starts[1:])):
            name = names[tensor]
            if name in outputs:
                continue
            level = None
            while True:
                child = index.child_within(level, read_by)
                first = int(child[0])
                if first < 0 or (child != first).any():
                    break
                group = index.ids[first]
                found = fed.get(group)
                if found is None:
                    found = fed[group] = self._fed(group, index)
                if found:
                    homes.setdefault(level, []).append((INPUT_PREFIX + name, group, name))
                    homed[tensor] = name
                    break
                level = group
        return homes, homed

    def _outputs_homed(self) -> tuple[dict, np.ndarray, frozenset]:
        """({level: [(child group box, feeder node id or None, tensor out of the group, output name)]},
        positions of the feeders drawn there (sorted), names of the outputs drawn there): the graph
        outputs drawn beside the child group that makes them (engine.layout.attach_outputs), not in
        the root's bottom row (a decoder's `present.N.key/value`: ~500 boxes 100,000 units wide,
        fed by a fan of long edges out of the `model` frame).  The mirror of _inputs_homed: an output
        (with the node feeding only it, an Identity, if any) goes down from the level drawing it
        while one child group makes it and that group is fed by graph inputs only (`model`); it
        stays in the first level where that group is fed by another box (`model`, beside
        `layers.3`).  Only outputs that go down at least one level move.  Found from the arrays;
        none when levels are walked."""
        with self._lock:
            if self._output_homes is None:
                self._output_homes = self._find_output_homes()
            return self._output_homes

    def _find_output_homes(self) -> tuple[dict, np.ndarray, frozenset]:
        index = self._indexed()
        if index is None:
            return self._find_output_homes_walking()
        homes: dict[Optional[str], list] = {}
        feeders: list[int] = []
        if not len(self.arrays.output_tensors):
            return homes, np.zeros(0, dtype=np.int64), frozenset()
        arrays, names = self.arrays, self.arrays.tensor_names
        pairs = arrays.pairs(self.include_constants)
        visible = arrays.visible(self.include_constants)
        read = np.unique(pairs.tensor)
        fed: dict[str, bool] = {}
        for tensor in arrays.output_tensors.tolist():
            if tensor >= arrays.produced or contains(read, np.array([tensor])).any():
                continue  # a graph input listed as output, or read inside the model: stays
            maker = int(arrays.tensor_source[tensor])
            if not visible[maker]:
                continue
            window = pairs.into(maker, maker)
            sources, into = pairs.source[window], pairs.tensor[window]
            feeder = None
            start: Optional[str] = None
            if arrays.out_start[maker + 1] - arrays.out_start[maker] == 1 and len(sources) == 1 and sources[0] >= 0:
                feeder, maker = arrays.ids[maker], int(sources[0])  # an Identity: it goes along
                inner = int(index.innermost[arrays.position[feeder]])
                start = None if inner < 0 else index.ids[inner]

            def child_of(level: Optional[str], maker: int = maker) -> Optional[str]:
                child = int(index.child_within(level, np.array([maker], dtype=np.int64))[0])
                return None if child < 0 else index.ids[child]

            home, group = _output_home(start, child_of, fed, lambda group: self._fed(group, index))
            if home is None:
                continue
            homes.setdefault(home, []).append((group, feeder, names[int(into[0])] if feeder else names[tensor],
                                               names[tensor]))
            if feeder is not None:
                feeders.append(arrays.position[feeder])
        drawn = frozenset(name for beside in homes.values() for _, _, _, name in beside)
        return homes, np.array(sorted(feeders), dtype=np.int64), drawn

    def _outputs_under(self, group_id: str) -> tuple[np.ndarray, np.ndarray]:
        """(positions of the feeders, of the output tensors) of the graph outputs drawn in
        `group_id`'s level or deeper (sorted): tensors into them do not leave its frame."""
        levels = [level for level in self._outputs_homed()[0] if self._within(level, group_id)]
        if not levels:
            return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int64)
        drawn = [self._outputs_of_level(level) for level in levels]
        return np.unique(np.concatenate([d[0] for d in drawn])), np.unique(np.concatenate([d[1] for d in drawn]))

    def _outputs_of_level(self, level: Optional[str]) -> tuple[np.ndarray, np.ndarray]:
        """(feeder positions, output tensor positions) of the outputs drawn in `level`, found once."""
        with self._lock:
            found = self._outputs_at.get(level)
            if found is None:
                beside = self._outputs_homed()[0][level]
                names = {name for _, _, _, name in beside}
                arrays, position = self.arrays, self.arrays.position
                tensors = [k for k in arrays.output_tensors.tolist() if arrays.tensor_names[k] in names]
                found = self._outputs_at[level] = (
                    np.array(sorted(position[f] for _, f, _, _ in beside if f is not None), dtype=np.int64),
                    np.array(sorted(tensors), dtype=np.int64))
            return found

    def _fed(self, group_id: str, index: GroupIndex) -> bool:
        """Whether a node of the group reads a tensor a node outside it makes (not only graph inputs)."""
        members = index.members[index.number[group_id]]
        if not len(members):
            return False
        pairs = self.arrays.pairs(self.include_constants)
        window = pairs.into(int(members[0]), int(members[-1]))
        source, target = pairs.source[window], pairs.target[window]
        made = (source >= 0) & contains(members, target)
        return bool((~contains(members, source[made])).any())

    def _find_homes_walking(self) -> tuple[dict, dict]:
        """_find_homes by walking the nodes (levels found by walking); tensors by name."""
        producer_of, consumers_of, outputs = self._tensor_maps()
        groups, innermost = self.groups, self.innermost()
        homes: dict[Optional[str], list] = {}
        homed: dict[str, str] = {}
        fed: dict[str, bool] = {}
        for name in self.analysis.graph.inputs:
            read_by = consumers_of.get(name)
            if not read_by or name in outputs or producer_of.get(name) != INPUT_PREFIX + name:
                continue
            level = None
            while True:
                children = set()
                for node_id in read_by:
                    group = innermost.get(node_id)
                    while group is not None and groups[group].parent != level:
                        group = groups[group].parent
                    children.add(group)
                if len(children) != 1 or None in children:
                    break
                group = children.pop()
                found = fed.get(group)
                if found is None:
                    found = fed[group] = self._fed_walking(group, producer_of)
                if found:
                    homes.setdefault(level, []).append((INPUT_PREFIX + name, group, name))
                    homed[name] = name
                    break
                level = group
        return homes, homed

    def _fed_walking(self, group_id: str, producer_of: Mapping[str, str]) -> bool:
        """_fed by walking the group's nodes."""
        inside = set(self.groups[group_id].members)
        return any(not producer_of.get(k, INPUT_PREFIX).startswith(INPUT_PREFIX) and producer_of[k] not in inside
                   for node_id in self.groups[group_id].members if node_id not in self.hidden
                   for k in self.analysis.graph.node(node_id).inputs)

    def _find_output_homes_walking(self) -> tuple[dict, np.ndarray, frozenset]:
        """_find_output_homes by walking the nodes (levels found by walking); feeders as node ids."""
        producer_of, consumers_of, outputs = self._tensor_maps()
        groups, innermost, graph = self.groups, self.innermost(), self.analysis.graph
        homes: dict[Optional[str], list] = {}
        fed: dict[str, bool] = {}
        for name in graph.outputs:
            maker = producer_of.get(name)
            if maker is None or maker.startswith(INPUT_PREFIX) or consumers_of.get(name):
                continue
            node = graph.node(maker)
            reads = [k for k in node.inputs if k in producer_of]
            feeder, start = None, None
            if len(node.outputs) == 1 and len(reads) == 1 and not producer_of[reads[0]].startswith(INPUT_PREFIX):
                feeder, maker, start = maker, producer_of[reads[0]], innermost.get(maker)

            def child_of(level: Optional[str], maker: str = maker) -> Optional[str]:
                group = innermost.get(maker)  # up to the group right inside `level` (None: not inside it)
                while group is not None and groups[group].parent != level:
                    group = groups[group].parent
                return group

            home, group = _output_home(start, child_of, fed, lambda group: self._fed_walking(group, producer_of))
            if home is not None:
                homes.setdefault(home, []).append((group, feeder, reads[0] if feeder else name, name))
        feeders = [feeder for beside in homes.values() for _, feeder, _, _ in beside if feeder is not None]
        return homes, np.array(sorted(self.arrays.position[f] for f in feeders), dtype=np.int64), \
            frozenset(name for beside in homes.values() for _, _, _, name in beside)

    def _homed_under(self, group_id: str) -> np.ndarray:
        """The positions of the graph inputs drawn in `group_id`'s level or deeper (sorted)."""
        homes, homed = self._inputs_homed()
        mine = {box for level, beside in homes.items() if self._within(level, group_id) for box, _, _ in beside}
        return np.array(sorted(k for k, name in homed.items() if INPUT_PREFIX + name in mine), dtype=np.int64)

    def _within(self, level: Optional[str], group_id: str) -> bool:
        """Whether `level` is `group_id` or a group inside it (a few parents up, not its descendants:
        those of a decoder's `model` are thousands)."""
        while level is not None:
            if level == group_id:
                return True
            level = self.groups[level].parent
        return False

    def _structure_of(self, boxes: LevelGraph, index: GroupIndex, children: list[str]) -> tuple:
        """_structure from the arrays: op types, the child group of each node (its position in
        `children`, -1: none) and the wires (producer position, output slot, consumer position)."""
        arrays, nodes = self.arrays, boxes.nodes
        numbers = np.array([index.number[c] for c in children], dtype=np.int64)  # ascending: groups' order
        inside = np.where(boxes.box_code >= 0, np.searchsorted(numbers, boxes.box_code), -1)
        source, target, tensor = boxes.level_pairs
        forward = source < target  # a wire comes from a node earlier in the level
        source, target, tensor = source[forward], target[forward], tensor[forward]
        wires = np.stack([np.searchsorted(nodes, source), tensor - arrays.out_start[source],
                          np.searchsorted(nodes, target)], axis=1).astype(np.int64)
        return (arrays.op_codes(nodes).tobytes(), inside.astype(np.int64).tobytes(), wires.tobytes(), len(children))

    def _lay_out_walking(self, level: Optional[str], children: list[str]) -> GraphLayout:
        """_lay_out by walking the level's nodes (a model whose tensors the arrays cannot stand for)."""
        homes, homed = self._inputs_homed()
        output_homes, moved_feeders, homed_outputs = self._outputs_homed()
        moved = frozenset(self.arrays.names(moved_feeders)) if len(moved_feeders) else frozenset()
        if level is None and not moved:
            return layout_graph(self.analysis, include_constants=self.include_constants, groups=self.groups,
                                collapsed=children, broadcast_lanes=True,
                                inputs_beside=homes.get(None, ()), left_out_inputs=frozenset(homed.values()))
        box_for, members = collapsed_boxes(self.groups, children)
        if level is None:  # as layout_graph, without the feeders of outputs drawn elsewhere
            hidden = frozenset(n for n in self.analysis.order if self.analysis.nodes[n].is_constant)
            visible = [n for n in self.analysis.order if n not in hidden and n not in moved]
            layout = layout_nodes(self.analysis.graph, visible, include_io=True, hidden=hidden, box_for=box_for,
                                  members=members, broadcast_lanes=True, left_out_inputs=frozenset(homed.values()),
                                  left_out_outputs=homed_outputs)
            if homes.get(None):
                layout = attach_inputs(layout, homes[None])
            return attach_constants(layout, self.analysis) if self.include_constants else layout
        shown = [n for n in self.groups[level].members if n not in self.hidden]
        visible = [n for n in shown if n not in moved]
        moved_out = len(visible) < len(shown)  # feeders of outputs drawn elsewhere left out
        if homes.get(level) or output_homes.get(level) or moved_out:  # a twin's geometry would lack them
            layout = layout_nodes(self.analysis.graph, visible, include_io=False, box_for=box_for, members=members,
                                  broadcast_lanes=True)
            if output_homes.get(level):
                layout = attach_outputs(layout, output_homes[level])
            return attach_inputs(layout, homes[level]) if homes.get(level) else layout
        structure = self._structure(visible, box_for, children)
        twin = self._by_structure.get(structure)
        if twin is not None:
            self.reused_levels += 1
            return self._reuse(self._levels[twin[0]], twin[1], twin[2], visible, children, box_for, members)
        layout = layout_nodes(self.analysis.graph, visible, include_io=False, box_for=box_for, members=members,
                              broadcast_lanes=True)
        self._by_structure[structure] = (level, visible, children)
        return layout

    def _structure(self, visible: list[str], box_for: Mapping[str, str], children: list[str]) -> tuple:
        """What a level's layout depends on: its nodes' op types, which child group draws each, and
        the wiring between them (producer position and output slot -> consumer position).  Blocks
        `layers.0` ... `layers.31` (and the heads inside each) share one."""
        graph = self.analysis.graph
        child_index = {child: j for j, child in enumerate(children)}
        slot: dict[str, tuple[int, int]] = {}
        ops, inside, wires = [], [], []
        for i, node_id in enumerate(visible):
            node = graph.node(node_id)
            ops.append(node.op_type)
            inside.append(child_index.get(box_for.get(node_id), -1))
            for name in node.inputs:
                found = slot.get(name)
                if found is not None:
                    wires.append((found, i))
            for k, name in enumerate(node.outputs):
                slot[name] = (i, k)
        return tuple(ops), tuple(inside), tuple(wires), len(children)

    def _reuse(self, twin: GraphLayout, twin_visible: list[str], twin_children: list[str], visible: list[str],
               children: list[str], box_for: Optional[Mapping[str, str]], members: Mapping[str, tuple]) -> GraphLayout:
        """`twin`'s geometry with this level's node, group and tensor names (same structure); `box_for`
        None: the level's box_for is looked up through the groups."""
        graph = self.analysis.graph
        rename = dict(zip(twin_visible, visible))
        rename.update(zip(twin_children, children))
        tensor = {}
        for mine, theirs in zip(visible, twin_visible):
            tensor.update(zip(graph.node(theirs).outputs, graph.node(mine).outputs))
        boxes = {rename[b]: rect for b, rect in twin.boxes.items()}
        # An edge to or from a collapsed group is named after its largest tensor: the twin's may not
        # be this level's (blocks alike but for their tensors' sizes).
        size = partial(tensor_bytes, graph)
        edges = []
        for e in twin.edges:
            values = tuple(map(tensor.__getitem__, e.values))
            value = max(values, key=size) if values else tensor[e.value]
            edges.append(LayoutEdge(rename[e.source], rename[e.target], value, e.points, values))
        layers = {rename[b]: layer for b, layer in twin.layers.items()}
        drawn = {b: m for b, m in members.items() if b in boxes}
        drawn_box_for = self._level_box_for(drawn) if box_for is None else \
            {n: b for n, b in box_for.items() if b in boxes}
        return GraphLayout(boxes, tuple(edges), layers, twin.width, twin.height, twin.method, twin.hidden, drawn,
                           drawn_box_for)

    # --- opening groups in advance -----------------------------------------------------------
    def prepare_opens(self, group_ids: Iterable[str], cancelled: Callable[[], bool] = lambda: False) -> list[str]:
        """Do now what the first open of each group in `group_ids` needs: the group composed opened
        whole and opened alone (its levels laid out, the tensors crossing their frames found), so a
        first open costs what a reopen does.  A step is one group of the subtree composed, children
        first (a group with a twin composed already: renamed, one step for its whole subtree).  The
        same functions an open calls, so an open draws the same either way.  Stops between steps
        once `cancelled()` is true; returns the groups prepared.  Models whose levels are found by
        walking (no arrays) are not prepared: that would walk the whole model."""
        prepared: list[str] = []
        if self._indexed() is None:
            return prepared
        for group_id in group_ids:
            below = self._descendants_of(group_id)
            # Lazily: whether a group has a twin to rename depends on the steps before it.
            for step, closed in chain(((g, frozenset()) for g in self._bottom_up(group_id)), [(group_id, below)]):
                if (step, closed & self._descendants_of(step)) in self._framed_pieces:
                    continue
                if cancelled():
                    return prepared
                self._framed(step, closed)  # opened whole; last the group opened alone (a double-click)
            prepared.append(group_id)
        return prepared

    def _bottom_up(self, group_id: str) -> Iterator[str]:
        """`group_id`'s subtree, children before their parent, except below a group with a twin
        whose piece opened whole can be renamed (it is composed in one step)."""
        if self._twin_of(group_id, frozenset()) is None:
            for child in self._children.get(group_id, ()):
                yield from self._bottom_up(child)
        yield group_id

    # --- composing the levels ----------------------------------------------------------------
    def compose(self, collapsed: Iterable[str]) -> FoldedLayout:
        """The whole drawing with the groups in `collapsed` as boxes and every other group opened
        (a group inside a collapsed one is not drawn, open or not)."""
        closed = frozenset(collapsed)
        with self._lock:
            found = self._composed.pop(closed, None)
            if found is not None:
                self._composed[closed] = found  # the most recently used goes last
                return found
        piece = self._compose(None, closed)
        boxes = {node_id: tuple(rect) for node_id, rect in zip(piece.ids, piece.rects.tolist())}
        frames = {group_id: tuple(rect) for group_id, rect in zip(piece.frame_ids, piece.frame_rects.tolist())}
        points = list(map(tuple, piece.points.tolist()))
        starts = piece.starts.tolist()
        lines = map(tuple, map(points.__getitem__, map(slice, starts[:-1], starts[1:])))  # each edge's points
        edges = tuple(LayoutEdge(s, t, v, line, vs) for (s, t, v, vs), line in zip(piece.edges, lines))
        method = self.level(None).method + (", per group" if frames else "")
        box_for = _BoxFor(self.groups, self.innermost(), frozenset(piece.members))
        composed = FoldedLayout(boxes, edges, {}, piece.width, piece.height, method, self.hidden, piece.members,
                                box_for, frames=frames)
        with self._lock:
            self._composed[closed] = composed
            while len(self._composed) > COMPOSED_KEPT:
                self._composed.pop(next(iter(self._composed)))
        return composed

    def _level_arrays(self, level: Optional[str]) -> tuple:
        """(box ids, rects, edges as (source, target, value, values), point starts, points, rank) of
        a level, in a piece's coordinates: made once (the root and `model` levels are composed again
        on every open; ~17 ms each time for 250 blocks' edges).  Never changed: callers copy."""
        found = self._arrays_of_level.get(level)
        if found is None:
            base = self.level(level)
            ids = list(base.boxes)
            rects = np.array([base.boxes[n] for n in ids], dtype=float).reshape(-1, 4)
            # Shown constants beside the leftmost or topmost boxes reach below 0: a piece starts at 0.
            shift = np.array([-min(0.0, getattr(base, "left", 0.0)), -min(0.0, getattr(base, "top", 0.0))])
            rects[:, :2] += shift
            edges = [(e.source, e.target, e.value, e.values) for e in base.edges]
            starts = np.cumsum([0] + [len(e.points) for e in base.edges])
            points = np.array([p for e in base.edges for p in e.points], dtype=float).reshape(-1, 2) + shift
            # A box's rank (its row; a shown constant has its reader's): see _compose.
            rank = np.array([base.layers.get(n, -1) for n in ids], dtype=float)
            # Graph inputs drawn beside their reader (_inputs_homed): their boxes move with its row
            # but do not stretch it, and their short edges are drawn again after the moves.
            position = {n: i for i, n in enumerate(ids)} if self._inputs_homed()[0] else {}
            beside = [(k, position[e.source], position[e.target]) for k, e in enumerate(base.edges)
                      if e.source.startswith(INPUT_PREFIX) and len(e.points) == 4 and e.target in base.members] \
                if position else []
            found = self._arrays_of_level[level] = (ids, rects, edges, starts, points, rank, beside)
        return found

    def _compose(self, level: Optional[str], closed: frozenset) -> _Piece:
        base = self.level(level)
        ids, rects, edges, starts, points, rank, beside_edges = self._level_arrays(level)
        rects, points = rects.copy(), points.copy()  # moved below
        reference = rects[:, :2] + rects[:, 2:] / 2  # a box's centre decides which way it moves
        opened = [(i, ids[i]) for i in range(len(ids)) if ids[i] in base.members and ids[i] not in closed]
        inner: dict[int, _Piece] = {}
        # A box's rank (its row): the rows below an opened group move down, and only its own row
        # moves right (above and below it nothing moves sideways: no blank band across the
        # drawing).  Rows stay rows: every edge still runs down.
        unranked = rank < 0
        attached = np.zeros(len(ids), dtype=bool)
        beside_from = np.array([source for _, source, _ in beside_edges], dtype=np.int64)
        beside_to = np.array([target for _, _, target in beside_edges], dtype=np.int64)
        attached[beside_from] = True
        for index, group_id in opened:
            piece = self._framed(group_id, closed)
            inner[index] = piece
            x, y, w, h = rects[index].tolist()
            cx, cy = reference[index].tolist()
            dx, dy = piece.width - w, piece.height - h
            # Inputs drawn above a box of a row below reach up into the gap: clear of the frame.
            up = attached & (rank > rank[index]) & (rects[:, 0] < x + piece.width) & (rects[:, 0] + rects[:, 2] > x)
            if up.any():
                dy = max(dy, y + piece.height + FRAME_PAD - float(rects[up, 1].min()))
            row = rank == rank[index]
            below = np.where(unranked, reference[:, 1] > cy, rank > rank[index])
            beside = (reference[:, 0] > cx) & np.where(unranked, (reference[:, 1] >= y) & (reference[:, 1] <= y + h), row)
            if beside_edges:  # an input beside a box moves aside with it (not with its own centre)
                beside[beside_from] = beside[beside_to]
            row_top = float(rects[row & ~attached, 1].min())
            row_bottom = float((rects[row & ~attached, 1] + rects[row & ~attached, 3]).max())
            points_beside = (points[:, 0] > cx) & (points[:, 1] >= row_top) & (points[:, 1] <= row_bottom)
            # Below its row; and its own bottom anchor (where the tensors leaving it start).
            points_below = points[:, 1] > row_bottom
            own_bottom = ~points_below & (np.abs(points[:, 0] - cx) < 1e-6) & (points[:, 1] > cy)
            rects[below, 1] += dy
            reference[below, 1] += dy
            rects[beside, 0] += dx
            reference[beside, 0] += dx
            points[points_below, 1] += dy
            points[own_bottom, 1] += piece.height - h  # the frame's bottom (dy may be more: inputs below)
            points[points_beside, 0] += dx
            rects[index, 2:] = (piece.width, piece.height)
        for k, source, target in beside_edges:  # down from the input, across, into its reader's top
            x, y, w, h = rects[source].tolist()
            tx, ty, tw, _ = rects[target].tolist()
            entry_x, start_x, level_y = tx + min(tw, NODE_WIDTH) / 2, x + w / 2, ty - CONSTANT_LIFT / 2
            points[starts[k]:starts[k] + 4] = ((start_x, y + h), (start_x, level_y), (entry_x, level_y), (entry_x, ty))
        # Assemble: the level's collapsed boxes and nodes, then each frame and its contents.
        keep = [i for i in range(len(ids)) if i not in inner]
        out_ids = [ids[i] for i in keep]
        out_rects = [rects[keep]]
        frame_ids: list[str] = []  # each opened group's piece lists its own frame first
        frame_rects: list[np.ndarray] = []
        members = {b: m for b, m in base.members.items() if b in closed}
        out_edges, out_starts, out_points = list(edges), [starts], [points]
        offset = len(points)
        for index, piece in inner.items():
            origin = rects[index, :2]
            out_ids += piece.ids
            out_rects.append(piece.rects + np.concatenate([origin, [0.0, 0.0]]))
            frame_ids += piece.frame_ids
            if len(piece.frame_ids):
                frame_rects.append(piece.frame_rects + np.concatenate([origin, [0.0, 0.0]]))
            out_edges += piece.edges
            out_starts.append(piece.starts[1:] + offset)
            out_points.append(piece.points + origin)
            offset += len(piece.points)
            members.update(piece.members)
        all_rects = np.concatenate(out_rects) if out_rects else np.zeros((0, 4))
        all_frames = np.concatenate(frame_rects) if frame_rects else np.zeros((0, 4))
        all_points = np.concatenate(out_points) if out_points else np.zeros((0, 2))
        extent = np.concatenate([all_rects, all_frames])
        width = float((extent[:, 0] + extent[:, 2]).max()) if len(extent) else 0.0
        height = float((extent[:, 1] + extent[:, 3]).max()) if len(extent) else 0.0
        return _Piece(out_ids, all_rects, frame_ids, all_frames, out_edges, np.concatenate(out_starts), all_points,
                      members, width, height)

    def _framed(self, group_id: str, closed: frozenset) -> _Piece:
        """The opened group `group_id` in its frame's coordinates: contents moved under the title
        band, its lanes added, the frame itself first among the frames (kept: see _framed_pieces).
        A group shaped like one composed before is that one's piece renamed (see _twin_piece)."""
        inner = closed & self._descendants_of(group_id)
        key = (group_id, inner)
        found = self._framed_pieces.get(key)
        if found is None:
            found = self._twin_piece(group_id, inner)
            if found is None:
                found = self._frame(group_id, closed)
                self._composed_here(group_id)
            self._framed_pieces[key] = found
        return found

    # --- repeated groups: a twin's piece renamed --------------------------------------------
    # Opening a block of a 100,000-node transformer composed ~140 levels (its sub-groups), each
    # ~1 ms of bookkeeping even when its geometry is a twin level's (see _reuse): ~0.12 s.  A group
    # whose shape (engine.group_index.subtree_shape: ops, nesting, wiring, crossing tensors) equals
    # that of a group composed before is drawn exactly as that one, under its own names: renaming
    # its piece costs ~5 ms for a block, and inside the first block the heads are twins too.
    def _counts(self, group_id: str, index: GroupIndex) -> tuple[int, int]:
        return len(index.members[index.number[group_id]]), len(self._descendants_of(group_id))

    def _composed_here(self, group_id: str) -> None:
        """Note that `group_id` was composed from its levels: a twin may be renamed from it."""
        index = self._indexed()
        if index is None or not self.twin_pieces:
            return
        with self._lock:
            composed = self._composed_by_counts.setdefault(self._counts(group_id, index), [])
            if group_id not in composed:
                composed.append(group_id)

    def _shape(self, group_id: str, index: GroupIndex) -> SubtreeShape:
        with self._lock:
            found = self._shapes.get(group_id)
            if found is None:
                found = self._shapes[group_id] = subtree_shape(
                    self.arrays, self.arrays.pairs(self.include_constants), index, group_id,
                    tuple(self._descendants_of(group_id)))
            return found

    def _twin_piece(self, group_id: str, inner: frozenset) -> Optional[_Piece]:
        """`group_id` opened, with the descendants `inner` collapsed, renamed from the piece of a
        group of the same shape composed that way before; None when there is none."""
        found = self._twin_of(group_id, inner)
        if found is None:
            return None
        piece, theirs, mine = found
        renamed = self._renamed(piece, theirs, mine)
        if renamed is not None:
            with self._lock:
                self.renamed_pieces += 1
                self.reused_levels += len(piece.frame_ids)  # every level the piece is made of
        return renamed

    def _twin_of(self, group_id: str, inner: frozenset) -> Optional[tuple[_Piece, SubtreeShape, SubtreeShape]]:
        """(the piece of a twin of `group_id` opened with the descendants matching `inner` collapsed,
        the twin's shape, the group's shape), or None."""
        index = self._indexed() if self.twin_pieces else None
        if index is None or self._holds_inputs(group_id):
            return None
        with self._lock:
            candidates = [g for g in self._composed_by_counts.get(self._counts(group_id, index), ()) if g != group_id]
            if not candidates:
                return None
            mine = self._shape(group_id, index)
            for twin in candidates:
                theirs = self._shape(twin, index)
                if theirs.key != mine.key or self._holds_inputs(twin):
                    continue
                piece = self._framed_pieces.get((twin, frozenset(theirs.groups[mine.rank[g]] for g in inner)))
                if piece is not None:
                    break
            else:
                return None
        return piece, theirs, mine

    def _renamed(self, piece: _Piece, theirs: SubtreeShape, mine: SubtreeShape) -> Optional[_Piece]:
        """`piece` (of the group `theirs`) under the names of `mine`: the same geometry, shared
        (pieces are never changed); None when an edge would carry another tensor's name."""
        ids = self.arrays.id_array
        rename = dict(zip(ids[theirs.members].tolist(), ids[mine.members].tolist()))
        rename.update(zip(theirs.groups, mine.groups))
        names = self.arrays.tensor_names
        tensor = dict(zip(map(names.__getitem__, theirs.tensors.tolist()), map(names.__getitem__, mine.tensors.tolist())))
        edges = [(rename[s], rename[t], tensor[v], tuple(map(tensor.__getitem__, vs))) for s, t, v, vs in piece.edges]
        # A merged edge is named after its largest tensor (and a lane after its first): the same one
        # only if the tensors it carries have the sizes the twin's have.
        size = partial(tensor_bytes, self.analysis.graph)
        if any(list(map(size, vs)) != list(map(size, mine_vs)) for (_, _, _, vs), (_, _, _, mine_vs)
               in zip(piece.edges, edges) if len(vs) > 1):
            return None
        members = {rename[b]: self.groups[rename[b]].members for b in piece.members}
        return _Piece(list(map(rename.__getitem__, piece.ids)), piece.rects, list(map(rename.__getitem__, piece.frame_ids)),
                      piece.frame_rects, edges, piece.starts, piece.points, members, piece.width, piece.height)

    def _holds_inputs(self, group_id: str) -> bool:
        """Whether graph inputs or outputs are drawn in the group's level or deeper (its piece cannot
        be renamed)."""
        return any(self._within(level, group_id) for level in chain(self._inputs_homed()[0], self._outputs_homed()[0]))

    def _descendants_of(self, group_id: str) -> frozenset:
        found = self._descendants.get(group_id)
        if found is None:
            below = set()
            for child in self._children.get(group_id, ()):
                below.add(child)
                below |= self._descendants_of(child)
            found = self._descendants[group_id] = frozenset(below)
        return found

    def _frame(self, group_id: str, closed: frozenset) -> _Piece:
        piece = self._compose(group_id, closed)
        origin = np.array([FRAME_PAD, FRAME_TITLE])
        piece.rects = piece.rects + np.concatenate([origin, [0.0, 0.0]])
        if len(piece.frame_rects):
            piece.frame_rects = piece.frame_rects + np.concatenate([origin, [0.0, 0.0]])
        piece.points = piece.points + origin
        width = max(piece.width + 2 * FRAME_PAD, NODE_WIDTH)
        height = max(piece.height + FRAME_TITLE + FRAME_PAD, GROUP_HEIGHT)
        lanes = self._lanes(group_id, piece, width, height)
        if lanes:
            edges, polylines = zip(*lanes)
            piece.edges = piece.edges + list(edges)
            lengths = np.cumsum([len(p) for p in polylines]) + piece.starts[-1]
            piece.starts = np.concatenate([piece.starts, lengths])
            piece.points = np.concatenate([piece.points, np.array([p for line in polylines for p in line])])
        piece.frame_ids = [group_id] + piece.frame_ids
        piece.frame_rects = np.concatenate([[[0.0, 0.0, width, height]], piece.frame_rects])
        piece.width, piece.height = width, height
        return piece

    def _lanes(self, group_id: str, piece: _Piece, width: float, height: float) -> list:
        """The edges between the frame's border and the boxes inside that read or write tensors
        crossing it: ((source, target, value, values), polyline) each.  A box here is one of the
        group's level: a node, a collapsed child group, or the frame of an opened one (whose own
        lanes go on inside)."""
        entering, leaving = self._crossing_tensors(group_id)
        where = {node_id: i for i, node_id in enumerate(piece.ids) if node_id in entering or node_id in leaving}
        rect_of = {box: piece.rects[i].tolist() for box, i in where.items()}
        rect_of.update((f, r) for f, r in zip(piece.frame_ids, piece.frame_rects.tolist())
                       if f in entering or f in leaving)
        entry_x, half_gap = NODE_WIDTH / 2, VERTICAL_GAP / 2
        left, right = LANE_INSET, width - LANE_INSET
        lanes = []
        for box, names in entering.items():
            x, y, w, _ = rect_of[box]
            x_in = x + min(w, NODE_WIDTH) / 2  # a frame is entered where its box's edge would end
            line = [(entry_x, 0.0), (left, FRAME_TITLE / 2), (left, y - half_gap), (x_in, y - half_gap), (x_in, y)]
            lanes.append(((group_id, box, names[0], tuple(names) if len(names) > 1 else ()), line))
        for box, names in leaving.items():
            x, y, w, h = rect_of[box]
            x_out = x + min(w, NODE_WIDTH) / 2
            line = [(x_out, y + h), (x_out, y + h + half_gap), (right, y + h + half_gap),
                    (right, height - FRAME_PAD / 2), (entry_x, height)]
            lanes.append(((box, group_id, names[0], tuple(names) if len(names) > 1 else ()), line))
        return lanes

    def _crossing_tensors(self, group_id: str) -> tuple[dict, dict]:
        """(box of the group's level -> tensors entering the group there, box -> tensors leaving),
        computed once per group."""
        found = self._crossing.get(group_id)
        if found is not None:
            return found
        index = self._indexed()
        if index is not None:
            found = self._crossing[group_id] = self._crossing_from_arrays(group_id, index)
            return found
        producer_of, consumers_of, outputs = self._tensor_maps()
        graph, hidden = self.analysis.graph, self.hidden
        level_box = self.level(group_id).box_for
        inside = set(self.groups[group_id].members)
        homes, _ = self._inputs_homed()
        inside |= {box for level, beside in homes.items() if self._within(level, group_id) for box, _, _ in beside}
        output_homes = self._outputs_homed()[0]  # graph outputs drawn inside it (and their feeders)
        inside |= {feeder for level, beside in output_homes.items() if self._within(level, group_id)
                   for _, feeder, _, _ in beside if feeder is not None}
        outputs = outputs - {name for level, beside in output_homes.items() if self._within(level, group_id)
                             for _, _, _, name in beside}
        entering: dict[str, list[str]] = {}
        leaving: dict[str, list[str]] = {}
        for node_id in self.groups[group_id].members:
            if node_id in hidden:
                continue
            node = graph.node(node_id)
            box = level_box.get(node_id, node_id)
            for name in node.inputs:
                source = producer_of.get(name)
                if source is not None and source not in inside:
                    entering.setdefault(box, []).append(name)
            for name in node.outputs:
                if name and (name in outputs or any(c not in inside for c in consumers_of.get(name, ()))):
                    leaving.setdefault(box, []).append(name)
        entering = {box: list(dict.fromkeys(names)) for box, names in entering.items()}
        leaving = {box: list(dict.fromkeys(names)) for box, names in leaving.items()}
        self._crossing[group_id] = (entering, leaving)
        return entering, leaving

    def _crossing_from_arrays(self, group_id: str, index: GroupIndex) -> tuple[dict, dict]:
        """_crossing_tensors from the arrays: the reads into the group's span of nodes from outside
        it, and the reads out of it (and graph outputs made in it), each on its box of the level."""
        arrays = self.arrays
        members = index.members[index.number[group_id]]  # constants included: a group holds them
        nodes = members[arrays.visible(self.include_constants)[members]]
        if not len(nodes):
            return {}, {}
        first, last = int(nodes[0]), int(nodes[-1])
        pairs = arrays.pairs(self.include_constants)
        window = pairs.into(first, last)
        source, target, tensor = pairs.source[window], pairs.target[window], pairs.tensor[window]
        entering = contains(nodes, target) & ((source < 0) | ~contains(members, source))
        inputs_inside = self._homed_under(group_id)  # graph inputs drawn inside it: not entering
        if len(inputs_inside):
            entering &= ~((source < 0) & contains(inputs_inside, tensor))
        reads = pairs.out_of(first, last)
        reads = reads[contains(nodes, pairs.source[reads]) & ~contains(members, pairs.target[reads])]
        made = arrays.output_tensors
        made = made[(made >= arrays.out_start[first]) & (made < arrays.out_start[last + 1])]
        made = made[contains(nodes, arrays.tensor_source[made])]
        feeders_inside, outputs_inside = self._outputs_under(group_id)  # graph outputs drawn inside it
        if len(feeders_inside):
            reads = reads[~contains(feeders_inside, pairs.target[reads])]
        if len(outputs_inside):
            made = made[~contains(outputs_inside, made)]
        leaving = np.union1d(pairs.tensor[reads], made)  # ascending: node by node, output by output
        names = arrays.tensor_names
        into: dict[str, list[str]] = {}
        for box, k in zip(self._boxes_in(group_id, index, target[entering]), tensor[entering].tolist()):
            into.setdefault(box, []).append(names[k])
        out: dict[str, list[str]] = {}
        for box, k in zip(self._boxes_in(group_id, index, arrays.tensor_source[leaving]), leaving.tolist()):
            out.setdefault(box, []).append(names[k])
        return ({b: list(dict.fromkeys(n)) for b, n in into.items()}, {b: list(dict.fromkeys(n)) for b, n in out.items()})

    def _boxes_in(self, group_id: str, index: GroupIndex, positions: np.ndarray) -> list[str]:
        """The box of each node (positions) in the level of `group_id`: its child group, or its own."""
        child = index.child_within(group_id, positions)
        node_ids, group_ids = self.arrays.ids, index.ids
        return [node_ids[p] if c < 0 else group_ids[c] for p, c in zip(positions.tolist(), child.tolist())]

    def _tensor_maps(self) -> tuple:
        """(tensor -> producer: a drawn node or input:NAME, tensor -> drawn consumers, graph outputs);
        one walk of the model, on the first group opened."""
        with self._lock:
            if self._tensors is None:
                graph, hidden = self.analysis.graph, self.hidden
                producer_of: dict[str, str] = {}
                for name in graph.inputs:
                    value = graph.values.get(name)
                    if getattr(value, "initializer", None) is None:
                        producer_of[name] = "input:" + name
                consumers_of: dict[str, list[str]] = {}
                for node_id in self.analysis.order:
                    if node_id in hidden:
                        continue
                    node = graph.node(node_id)
                    for name in node.outputs:
                        if name:
                            producer_of[name] = node_id
                    for name in node.inputs:
                        if name:
                            consumers_of.setdefault(name, []).append(node_id)
                self._tensors = (producer_of, consumers_of, frozenset(graph.outputs))
            return self._tensors
