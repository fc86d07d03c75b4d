"""Integer ids for a graph's values and index arrays of its edges, for the whole-graph passes.

A 100,000-node graph has about 270,000 (node, input) pairs.  Looking a value name up in a dict of
100,000 names costs about 0.2 us (a cache miss more than the hashing), so every pass that walks
the graph by name (engine.analysis.walks) costs about 50 ms.  The index looks every name up once;
execution order, constant folding and peak memory then work on numpy arrays of ids, with the
same results as the walks.

Positions are places in `nodes` (the file's order, or the execution order once known).  "" (an
omitted optional input or output) has an id of its own, `EMPTY`, that every pass skips.
"""
from __future__ import annotations

from itertools import chain
from typing import Optional, Sequence

import numpy as np

from engine.analysis import walks
from engine.analysis.walks import NONDETERMINISTIC
from engine.gil_slices import array_of, update
from engine.ir import Graph, Node, TensorType

EMPTY = 0  # the id of "" (an omitted input or output)
_INT64_SAFE = 2 ** 62  # sums of sizes below this cannot overflow int64
# Constant folding is done with whole-array steps, one per link of the longest chain of folded
# nodes (a handful in real models); past this many the plain walk finishes the job.
_MAX_FOLD_STEPS = 64


class GraphIndex:
    """Value ids, value types and sizes by id, and every node's inputs and outputs as ids."""

    def __init__(self, graph: Graph, nodes: Sequence[Node]):
        self.graph = graph
        self.nodes = nodes
        values = graph.values  # value i has id i + 1
        self.names: list[str] = [""] + list(values)
        self.value_id: dict[str, int] = {"": EMPTY}
        # A slice at a time: one update over big.onnx's 100,000 names held the GIL 20-33 ms, a freeze
        # of the app's window while its worker opened the model.
        update(self.value_id, self.names[1:], range(1, len(self.names)))
        self.value_id[""] = EMPTY  # even if a value is named "": every pass treats "" as omitted
        value_list = list(values.values())
        self.initializer_ids = [i for i, value in enumerate(value_list, 1) if value.initializer is not None]
        # Types by id, interned: equal types (dtype and shape) share a type id (0: unknown), numbered
        # in order of first appearance.  Importers share one TensorType object among the values of
        # a type, so the key is made once per distinct object (20,000 values, a few dozen objects).
        value_types = list(graph.value_types.values())  # the figures read this dict too: made once
        interned: dict[tuple, int] = {}
        type_id_of_object = {id(None): 0}
        self.types: list[Optional[TensorType]] = [None]
        for value_type in {id(value_type): value_type for value_type in value_types}.values():
            if value_type is None:
                continue
            key = (value_type.dtype, value_type.shape)
            type_id = interned.get(key)
            if type_id is None:
                type_id = interned[key] = len(self.types)
                self.types.append(value_type)
            type_id_of_object[id(value_type)] = type_id
        type_ids = [0]
        type_ids += map(type_id_of_object.__getitem__, map(id, value_types))
        self.in_ids, self.in_position, self.in_start = self._edges([node.inputs for node in nodes])
        self.out_ids, self.out_position, self.out_start = self._edges([node.outputs for node in nodes])
        extra = len(self.names) - len(type_ids)  # names used by nodes but without a value
        self.type_id = np.array(type_ids + [0] * extra, np.int64)
        self.type_id[EMPTY] = -1
        type_sizes = [0] + [t.byte_size or 0 for t in self.types[1:]]
        # Bytes by id (0: unknown).  A size past 64 bits leaves them all 0 (largest_size says so):
        # peak_activation then walks with Python integers.
        self.largest_size = max(type_sizes)
        if self.largest_size >= 2 ** 63:
            type_sizes = [0] * len(type_sizes)
        self.size = np.array(type_sizes, np.int64)[self.type_id.clip(0)]
        self.size[EMPTY] = 0

    @property
    def value_count(self) -> int:
        return len(self.names)

    def _edges(self, names_per_node: list[tuple[str, ...]]) -> tuple[np.ndarray, np.ndarray, list[int]]:
        """(value id of every (node, name) pair in order, the node position of each, the first
        pair of each node and one past the last)."""
        flat = list(chain.from_iterable(names_per_node))
        ids = array_of(self.value_id.get, flat, np.int64, -1)  # sliced: engine.gil_slices
        if len(flat) and ids.min() < 0:  # names without a value: ids of their own
            for edge in np.flatnonzero(ids < 0).tolist():
                name = flat[edge]
                if name not in self.value_id:
                    self.value_id[name] = len(self.names)
                    self.names.append(name)
                ids[edge] = self.value_id[name]
        counts = np.fromiter(map(len, names_per_node), np.int64, len(names_per_node))
        positions = np.repeat(np.arange(len(names_per_node)), counts)
        start = np.zeros(len(counts) + 1, np.int64)
        np.cumsum(counts, out=start[1:])
        return ids, positions, start.tolist()

    def ids(self, names) -> np.ndarray:
        return np.array([self.value_id[name] for name in names if name in self.value_id], np.int64)

    # ------------------------------------------------------------------ execution order

    def file_order_is_valid(self) -> bool:
        """True when every node comes after the producers of its inputs (a node reading its own
        output does not count).  A name with several producers counts its last one in the file."""
        producer = np.full(self.value_count, -1, np.int64)
        produced = self.out_ids != EMPTY
        np.maximum.at(producer, self.out_ids[produced], self.out_position[produced])
        return bool((producer[self.in_ids] <= self.in_position).all())

    # ------------------------------------------------------------------ constant folding

    def fold_constants(self) -> tuple[np.ndarray, np.ndarray]:
        """(by value id: known before any input arrives; by position: the node only produces such
        values).  Initializers that are not graph inputs are constant; so is the output of a
        deterministic node without subgraphs whose inputs are all constant when it runs, and of
        Shape or Size on a tensor whose shape is static.  `nodes` must be the execution order.
        """
        graph, nodes = self.graph, self.nodes
        constant_value = np.zeros(self.value_count, bool)
        constant_value[self.initializer_ids] = True
        constant_value[self.ids(graph.inputs)] = False
        initial = constant_value.copy()
        count = len(nodes)
        never = np.zeros(count, bool)  # nondeterministic or with subgraphs: never folds
        decided = np.zeros(count, bool)  # Shape/Size: folds by the static shape alone
        by_shape = np.zeros(count, bool)
        special = NONDETERMINISTIC | {"Shape", "Size"}
        for position in [p for p, node in enumerate(nodes) if node.subgraphs or node.op_type in special]:
            node = nodes[position]
            if node.op_type in NONDETERMINISTIC or node.subgraphs:
                never[position] = True
            elif node.op_type in ("Shape", "Size") and any(node.inputs):
                decided[position] = True
                source = graph.value_types.get(next(name for name in node.inputs if name))
                by_shape[position] = source is not None and source.is_static
        # An input is constant when its node runs if it is an initializer or a node before folded
        # it; a node folds when all its inputs are.  Each step adds the nodes whose inputs the
        # folds so far make constant: the step after the last addition changes nothing.  Only
        # inputs that are not initializers are looked at in the steps.
        read = (self.in_ids != EMPTY) & ~initial[self.in_ids]
        reads, readers = self.in_ids[read], self.in_position[read]
        made = self.out_ids != EMPTY
        outputs, makers = self.out_ids[made], self.out_position[made]
        folded = np.zeros(count, bool)
        first_fold = np.full(self.value_count, count, np.int64)  # by value: the earliest folded producer
        for _ in range(_MAX_FOLD_STEPS):
            first_fold.fill(count)
            folding = folded[makers]
            np.minimum.at(first_fold, outputs[folding], makers[folding])
            waiting = np.bincount(readers[first_fold[reads] >= readers], minlength=count)
            now = np.where(decided, by_shape, waiting == 0) & ~never
            if (now == folded).all():
                break
            folded = now
        else:  # a long chain of folds: walk it
            constant_names, constant_nodes = walks.fold_constants(graph, list(nodes))
            constant_value[:] = False
            constant_value[self.ids(constant_names)] = True
            folded = np.array([node.id in constant_nodes for node in nodes], bool)
        constant_value[outputs[folded[makers]]] = True
        constant_value[EMPTY] = False
        return constant_value, folded


def peak_activation(index: GraphIndex, constant_value: np.ndarray) -> tuple[int, Optional[str]]:
    """walks.peak_activation on the index: a cumulative sum of what each step allocates and frees
    (a few milliseconds for 100,000 nodes, where the walk takes 0.3 s).  `index.nodes` is the
    execution order; `constant_value` says by value id which values are constant
    (GraphIndex.fold_constants)."""
    graph, order = index.graph, index.nodes
    value_types = graph.value_types
    start = 0
    for name in graph.inputs:
        value_type = value_types.get(name)
        start += (value_type.byte_size or 0) if value_type is not None else 0
    size = index.size
    steps_bound = index.value_count + len(index.out_ids) + len(graph.inputs) + 1
    if index.largest_size * steps_bound >= _INT64_SAFE:  # sums could overflow 64-bit integers
        constants = {index.names[i] for i in np.flatnonzero(constant_value).tolist()}
        return walks.peak_activation(graph, list(order), constants)
    count = len(order)
    if not count:
        return start, None
    inert = constant_value.copy()  # not an activation: constants and omitted names
    inert[EMPTY] = True
    keep = np.zeros(index.value_count, bool)  # graph outputs live to the end
    keep[index.ids(graph.outputs)] = True

    in_ids, in_position, out_ids, out_position = index.in_ids, index.in_position, index.out_ids, index.out_position
    read = ~inert[in_ids]
    last_use = np.full(index.value_count, -1, np.int64)
    np.maximum.at(last_use, in_ids[read], in_position[read])

    computed = ~inert[out_ids]
    # A node that has outputs and only constant (or omitted) ones computes nothing: no step at all.
    has_outputs = np.bincount(out_position, minlength=count) > 0
    computes = ~has_outputs | (np.bincount(out_position[computed], minlength=count) > 0)

    allocated = np.zeros(count, np.int64)
    np.add.at(allocated, out_position[computed], size[out_ids[computed]])
    freed = np.zeros(count, np.int64)
    last_read = (last_use >= 0) & ~keep
    np.add.at(freed, last_use[last_read], size[last_read])
    unread = computed & (last_use[out_ids] < 0) & ~keep[out_ids]  # freed as soon as made
    np.add.at(freed, out_position[unread], size[out_ids[unread]])
    allocated[~computes] = 0
    freed[~computes] = 0

    after_step = start + np.cumsum(allocated - freed)
    at_step = after_step + freed  # live while the step runs: its outputs allocated, nothing freed yet
    at_step[~computes] = np.iinfo(np.int64).min
    step = int(np.argmax(at_step))  # the first step at the largest value
    if at_step[step] > start:
        return int(at_step[step]), order[step].id
    return start, None
