"""Integer ids for a graph's values and index arrays of its edges, for the whole-graph passes.

A 100,000-node graph has about 270,000 (node, input) pairs.  Looking a value name up in a dict of
100,000 names costs about 0.2 us (a cache miss more than the hashing), so every pass that walks
the graph by name costs about 50 ms.  The index looks every name up once; execution order,
constant folding and peak memory then work on numpy arrays of ids.

Positions are places in `nodes` (the file's order, or the execution order once known).  "" (an
omitted optional input or output) has an id of its own, `EMPTY`, that every pass skips.
"""
from __future__ import annotations

import heapq
from itertools import chain, repeat
from typing import Optional, Sequence

import numpy as np

from engine.ir import Graph, Node, TensorType

EMPTY = 0  # the id of "" (an omitted input or output)
# Ops whose result differs between runs even when their inputs are constant.
NONDETERMINISTIC = {"RandomNormal", "RandomUniform", "RandomNormalLike", "RandomUniformLike",
                    "Multinomial", "Bernoulli"}
# Constant folding is done with whole-array steps, one per link of the longest chain of folded
# nodes (a handful in real models); past this many the plain walk finishes the job.
_MAX_FOLD_STEPS = 64


class GraphIndex:
    """Value ids, value types and sizes by id, and every node's inputs and outputs as ids."""

    def __init__(self, graph: Graph, nodes: Sequence[Node]):
        self.graph = graph
        self.nodes = nodes
        values = graph.values  # value i has id i + 1
        self.value_id: dict[str, int] = {"": EMPTY}
        self.value_id.update(zip(values, range(1, len(values) + 1)))
        self.value_id[""] = EMPTY  # even if a value is named "": every pass treats "" as omitted
        self.names: list[str] = [""] + list(values)
        self.initializer_ids = [i for i, value in enumerate(values.values(), 1) if value.initializer is not None]
        # Types by id, interned: equal types (dtype and shape) share a type id (0: unknown).
        interned: dict[tuple, int] = {}
        type_ids = [0]
        self.types: list[Optional[TensorType]] = [None]
        for value in values.values():
            value_type = value.type
            if value_type is None:
                type_ids.append(0)
                continue
            key = (value_type.dtype, value_type.shape)
            type_id = interned.get(key)
            if type_id is None:
                type_id = interned[key] = len(self.types)
                self.types.append(value_type)
            type_ids.append(type_id)
        self.in_ids, self.in_position, self.in_start = self._edges([node.inputs for node in nodes])
        self.out_ids, self.out_position, self.out_start = self._edges([node.outputs for node in nodes])
        extra = len(self.names) - len(type_ids)  # names used by nodes but without a value
        self.type_id = np.array(type_ids + [0] * extra, np.int64)
        self.type_id[EMPTY] = -1
        type_sizes = [0] + [t.byte_size or 0 for t in self.types[1:]]
        # Bytes by id (0: unknown).  A size past 64 bits leaves them all 0 (largest_size says so):
        # memory.peak_activation then walks with Python integers.
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
        ids = np.fromiter(map(self.value_id.get, flat, repeat(-1)), np.int64, len(flat))
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
        else:
            return fold_constants_walk(self, constant_value)
        constant_value[outputs[folded[makers]]] = True
        constant_value[EMPTY] = False
        return constant_value, folded


def fold_constants_walk(index: GraphIndex, initial: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """`GraphIndex.fold_constants` node by node, from the initializers' constants `initial`."""
    constant_value = initial.copy()
    folded = np.zeros(len(index.nodes), bool)
    type_of = index.graph.value_types.get
    in_ids, out_ids = index.in_ids.tolist(), index.out_ids.tolist()
    for position, node in enumerate(index.nodes):
        if node.op_type in NONDETERMINISTIC or node.subgraphs:
            continue
        if node.op_type in ("Shape", "Size") and any(node.inputs):
            source = type_of(next(name for name in node.inputs if name))
            folds = source is not None and source.is_static
        else:
            folds = all(value == EMPTY or constant_value[value]
                        for value in in_ids[index.in_start[position]:index.in_start[position + 1]])
        if folds:
            folded[position] = True
            for value in out_ids[index.out_start[position]:index.out_start[position + 1]]:
                if value != EMPTY:
                    constant_value[value] = True
    return constant_value, folded


def kahn_order(graph: Graph) -> list[Node]:
    """A topological order of `graph.nodes`, smallest file index first whenever there is a choice
    (so it stays close to the file's); the nodes of a cycle follow in file order."""
    produced_by = {out: i for i, node in enumerate(graph.nodes) for out in node.outputs if out}
    dependents: dict[int, list[int]] = {}
    pending = [0] * len(graph.nodes)
    for i, node in enumerate(graph.nodes):
        for j in {produced_by[n] for n in node.inputs if n in produced_by and produced_by[n] != i}:
            dependents.setdefault(j, []).append(i)
            pending[i] += 1
    ready = [i for i, count in enumerate(pending) if count == 0]
    heapq.heapify(ready)
    result = []
    while ready:
        i = heapq.heappop(ready)
        result.append(graph.nodes[i])
        for k in dependents.get(i, ()):
            pending[k] -= 1
            if pending[k] == 0:
                heapq.heappush(ready, k)
    if len(result) < len(graph.nodes):  # a cycle: keep the rest in file order rather than drop it
        placed = {id(n) for n in result}
        result.extend(n for n in graph.nodes if id(n) not in placed)
    return result
