"""The whole-graph passes of the analysis, walked node by node and name by name.

Execution order, constant folding and peak activation memory.  Graphs of fewer than
`engine.analysis.INDEX_FROM_NODES` nodes are analysed with these: they take a few milliseconds
there and need no numpy, whose import (~70 ms) would be most of `layerscope inspect`'s time on
a small model.  Bigger graphs use the same passes on index arrays (graph_index), which fall back
to these where the arrays cannot be used; the tests hold the two to the same figures.
"""
from __future__ import annotations

import heapq
from typing import Optional

from engine.ir import Graph, Node

# Ops whose result differs between runs even when their inputs are constant.
NONDETERMINISTIC = {"RandomNormal", "RandomUniform", "RandomNormalLike", "RandomUniformLike",
                    "Multinomial", "Bernoulli"}


def execution_order(graph: Graph) -> list[Node]:
    """A topological order that keeps the file's order wherever the file is already valid."""
    produced_by = {out: i for i, node in enumerate(graph.nodes) for out in node.outputs if out}
    seen: set[int] = set()
    for i, node in enumerate(graph.nodes):
        for name in node.inputs:
            j = produced_by.get(name)
            if j is not None and j not in seen and j != i:
                return kahn_order(graph)
        seen.add(i)
    return list(graph.nodes)


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


def fold_constants(graph: Graph, order: list[Node]) -> tuple[set[str], set[str]]:
    """Values known before any input arrives, and the nodes that only produce such values.

    Initializers are constant; so is the output of a deterministic node whose
    inputs are all constant (ConstantOfShape on a shape initializer: the light
    zoo's weights) and of Shape or Size on a tensor whose shape is static.
    """
    constant_values = {name for name, value in graph.values.items() if value.initializer is not None}
    constant_values.difference_update(graph.inputs)
    constant_nodes: set[str] = set()
    type_of = graph.value_types.get
    for node in order:
        if node.op_type in NONDETERMINISTIC or node.subgraphs:
            continue
        if node.op_type in ("Shape", "Size") and any(node.inputs):
            source = type_of(next(name for name in node.inputs if name))
            folds = source is not None and source.is_static
        else:
            folds = True
            for name in node.inputs:  # most nodes read an activation: stop at the first
                if name and name not in constant_values:
                    folds = False
                    break
        if folds:
            constant_nodes.add(node.id)
            constant_values.update(out for out in node.outputs if out)
    return constant_values, constant_nodes


def peak_activation(graph: Graph, order: list[Node], constants: set[str]) -> tuple[int, Optional[str]]:
    """Peak of live activation bytes along `order`, and the node where it is reached (None: the
    graph inputs alone).  A graph input is live from the start, a node's output from the node
    on; a tensor is freed after its last consumer runs (graph outputs never are), an output
    nobody reads at once.  A node whose outputs are all constant computes nothing: it neither
    allocates nor frees."""
    last_use: dict[str, int] = {}
    for position, node in enumerate(order):
        for name in node.inputs:
            if name and name not in constants:
                last_use[name] = position
    keep_to_end = set(graph.outputs)
    # a name without a value, or without a known size, counts 0
    sizes = {name: (value_type.byte_size or 0) if value_type is not None else 0
             for name, value_type in graph.value_types.items()}
    size_of = sizes.get

    live = 0
    for name in graph.inputs:
        live += size_of(name, 0)
    peak, peak_node = live, None
    frees_at: dict[int, list[str]] = {}
    for name, position in last_use.items():
        if name not in keep_to_end:
            frees_at.setdefault(position, []).append(name)
    for position, node in enumerate(order):
        outputs = [out for out in node.outputs if out and out not in constants]
        if node.outputs and not outputs:
            continue  # every output is constant (folded): nothing is computed here
        for out in outputs:
            live += size_of(out, 0)
        if live > peak:
            peak, peak_node = live, node.id
        for name in frees_at.get(position, ()):
            live -= size_of(name, 0)
        # An output nobody reads is freed at once (e.g. Dropout's mask).
        for out in outputs:
            if out not in last_use and out not in keep_to_end:
                live -= size_of(out, 0)
    return peak, peak_node
