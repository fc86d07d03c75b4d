"""Static analysis of an IR graph: constants, parameters, costs, memory, stages.

`analyze(model)` returns a `ModelAnalysis` keyed by node id, kept beside the
graph (never stored on nodes).  Everything here is linear in the number of
nodes and values, and a 100,000-node model is analysed in about half a second:
the whole-graph passes (execution order, constant folding, peak memory) work on
numpy arrays of value ids (graph_index; small graphs walk by name: walks), and
a node's cost figures are computed once per signature (op, attributes, input
and output types), which the repeated blocks of a big model share.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Mapping, NamedTuple, Optional

from engine.analysis import costs, walks
from engine.analysis.stages import Stage, collect_stages, find_stages
from engine.analysis.walks import execution_order  # noqa: F401  (part of this package's interface)
from engine.gc_pause import collector_paused
from engine.gil_slices import update
from engine.ir import FLOAT_DTYPES, Graph, Model, Node

if TYPE_CHECKING:
    import numpy as np

    from engine.analysis.graph_index import GraphIndex

_PARAM_DTYPES = FLOAT_DTYPES | {"int8", "uint8", "int4", "uint4"}
# Graphs with this many nodes are analysed on index arrays (graph_index, numpy): 2.5x faster at
# 100,000 nodes.  Smaller ones walk by name (walks), a few milliseconds, and spare the CLI numpy's
# import (~70 ms, most of `layerscope inspect` on a small model).  The figures are the same.
INDEX_FROM_NODES = 5000


class NodeMetrics(NamedTuple):
    """One node's static figures.  Immutable; a named tuple rather than a frozen dataclass because
    a big model has 100,000 of them and a tuple is built in a third of the time (0.1 s of 0.3 s)."""

    node_id: str
    op_type: str
    order: int  # position in the execution order
    is_constant: bool  # produces a constant (folded): drawn as a weight, costs nothing at run time
    params: int  # parameters first read by this node
    param_bytes: int
    buffers: int  # non-trainable stored statistics (BatchNorm mean/variance)
    macs: Optional[int]  # None: unknown (op not in the cost model or shapes unknown)
    flops: Optional[int]
    output_bytes: Optional[int]
    bytes_moved: Optional[int]  # input activations + weights + outputs
    arithmetic_intensity: Optional[float]
    spatial_size: Optional[int]  # H*W of the main output (NC.. tensors, or N..C in channels_last graphs)
    stage: str = ""

    @property
    def cost_known(self) -> bool:
        return self.flops is not None


@dataclass(frozen=True)
class Totals:
    nodes: int
    compute_nodes: int
    constant_nodes: int
    params: int
    params_by_dtype: Mapping[str, int]
    buffers: int
    weight_bytes: int
    macs: int
    flops: int
    peak_activation_bytes: int
    peak_node_id: Optional[str]
    unknown_cost_nodes: tuple[str, ...]


@dataclass(frozen=True)
class ModelAnalysis:
    model: Model
    graph: Graph
    order: tuple[str, ...]
    nodes: Mapping[str, NodeMetrics]
    stages: tuple[Stage, ...]
    totals: Totals
    conventions: Mapping[str, str] = field(default_factory=lambda: dict(costs.CONVENTIONS))

    def compute_nodes(self) -> list[NodeMetrics]:
        """Non-constant nodes in execution order."""
        return [self.nodes[i] for i in self.order if not self.nodes[i].is_constant]

    def heaviest(self, count: int = 10) -> list[NodeMetrics]:
        ranked = [m for m in self.compute_nodes() if m.flops]
        ranked.sort(key=lambda m: (m.macs or 0, m.flops or 0), reverse=True)
        return ranked[:count]

    def stage_of(self, node_id: str) -> str:
        return self.nodes[node_id].stage


def analyze(model: Model, graph_index: int = 0) -> ModelAnalysis:
    with collector_paused():  # 100,000 NodeMetrics and their sets and dicts: see engine.gc_pause
        return _analyze(model, graph_index)


def _analyze(model: Model, graph_index: int, by_index: Optional[bool] = None) -> ModelAnalysis:
    """`by_index`: the whole-graph passes on index arrays (True) or by name (False); None: by the
    graph's size (INDEX_FROM_NODES)."""
    graph = model.graphs[graph_index]
    if by_index is None:
        by_index = len(graph.nodes) >= INDEX_FROM_NODES
    order, figures, (peak_bytes, peak_node) = (_passes_by_index if by_index else _passes_by_name)(graph)
    ops = [f.op for f in figures]
    stage_list, stage_kinds = find_stages(graph, order, ops, [f.spatial_size for f in figures])
    node_metrics, sums = _node_metrics(order, figures, stage_list)
    node_ids = [node.id for node in order]
    stages = collect_stages(node_ids, node_metrics, stage_list, stage_kinds)
    constant_nodes = ops.count(None)  # a folded node's figures have no op
    totals = Totals(
        nodes=len(graph.nodes), compute_nodes=len(graph.nodes) - constant_nodes,
        constant_nodes=constant_nodes, params=sums.params, params_by_dtype=sums.params_by_dtype,
        buffers=sums.buffers, weight_bytes=sums.weight_bytes, macs=sums.macs, flops=sums.flops,
        peak_activation_bytes=peak_bytes, peak_node_id=peak_node, unknown_cost_nodes=tuple(sums.unknown))
    metrics_by_id: dict[str, NodeMetrics] = {}
    update(metrics_by_id, node_ids, node_metrics)  # a slice at a time: one dict() of 100,000 held the GIL ~28 ms
    return ModelAnalysis(model, graph, tuple(node_ids), metrics_by_id, stages, totals)


def _passes_by_name(graph: Graph) -> tuple[list[Node], list["_Figures"], tuple[int, Optional[str]]]:
    """(execution order, each node's figures, peak activation) walking node by node."""
    order = walks.execution_order(graph)
    constant_values, constant_nodes = walks.fold_constants(graph, order)
    figures = [_folded_figures(graph, node) if node.id in constant_nodes else _figures(graph, node, constant_values)
               for node in order]
    return order, figures, walks.peak_activation(graph, order, constant_values)


def _passes_by_index(graph: Graph) -> tuple[list[Node], list["_Figures"], tuple[int, Optional[str]]]:
    """`_passes_by_name` on index arrays, each node's figures computed once per signature."""
    from engine.analysis.graph_index import GraphIndex, peak_activation  # numpy: see INDEX_FROM_NODES

    index = GraphIndex(graph, graph.nodes)
    if not index.file_order_is_valid():
        index = GraphIndex(graph, walks.kahn_order(graph))
    constant_value, folded = index.fold_constants()
    figures = _node_figures(index, constant_value, folded)
    return list(index.nodes), figures, peak_activation(index, constant_value)


class _Figures(NamedTuple):
    """A node's figures apart from its parameters (`_node_metrics` counts those)."""

    op: Optional[str]  # canonical op type (costs.canonical_op); None: a folded node
    macs: Optional[int]
    flops: Optional[int]
    output_bytes: Optional[int]
    bytes_moved: Optional[int]
    arithmetic_intensity: Optional[float]
    spatial_size: Optional[int]
    # (input slot, dtype, elements, bytes, is a buffer) of each constant input that counts as a
    # parameter or buffer where it is first read
    weights: tuple


def _node_figures(index: "GraphIndex", constant_value: "np.ndarray", folded: "np.ndarray") -> list[_Figures]:
    """Each node's figures, in execution order.

    A node's figures depend only on its op type, attributes and the type and constness of each
    input and output (costs.canonical_op, argument_inputs, buffer_inputs and cost_from_types read
    nothing else), and the repeated blocks of a big model have a few dozen such signatures
    (70 in a 100,000-node transformer): figures are computed once per signature.
    """
    graph, order = index.graph, index.nodes
    # A token per value: its interned type and whether it is constant (-2: an omitted name).
    tokens = index.type_id * 2 + constant_value
    in_tokens, out_tokens = tokens[index.in_ids].tolist(), tokens[index.out_ids].tolist()
    in_start, out_start = index.in_start, index.out_start
    constant_names = {index.names[i] for i in constant_value.nonzero()[0].tolist()}
    figures_of: dict[tuple, _Figures] = {}
    figures_of_folded: dict[tuple, _Figures] = {}
    result = []
    for node, is_constant, in_first, in_end, out_first, out_end in zip(
            order, folded.tolist(), in_start, in_start[1:], out_start, out_start[1:]):
        outputs_key = tuple(out_tokens[out_first:out_end])
        if is_constant:  # costs nothing at run time: only its outputs' sizes count
            figures = figures_of_folded.get(outputs_key)
            if figures is None:
                figures = figures_of_folded[outputs_key] = _folded_figures(graph, node)
            result.append(figures)
            continue
        attributes = node.attributes
        if attributes:  # equal attributes of the same types (1 and True are equal, their texts not)
            values = tuple(attributes.values())
            key = (node.op_type, tuple(in_tokens[in_first:in_end]), outputs_key, tuple(attributes),
                   tuple(map(type, values)), values)
        else:
            key = (node.op_type, tuple(in_tokens[in_first:in_end]), outputs_key)
        try:
            figures = figures_of.get(key)
        except TypeError:  # an unhashable attribute value (a list, an array): no reuse
            figures = _figures(graph, node, constant_names)
        else:
            if figures is None:
                figures = figures_of[key] = _figures(graph, node, constant_names)
        result.append(figures)
    return result


@dataclass
class _Sums:
    """Whole-model sums gathered while the nodes' metrics are made."""
    params: int = 0
    buffers: int = 0
    weight_bytes: int = 0
    macs: int = 0
    flops: int = 0
    params_by_dtype: dict = field(default_factory=dict)
    unknown: list = field(default_factory=list)  # ids of nodes whose cost is unknown


def _node_metrics(order: list[Node], figures: list[_Figures], stage_list: list[str]) -> tuple[list[NodeMetrics], _Sums]:
    """Every node's metrics in execution order, and the sums.  A weight's parameters count where it
    is first read."""
    counted: set[str] = set()
    sums = _Sums()
    params_by_dtype, unknown = sums.params_by_dtype, sums.unknown
    node_metrics: list[NodeMetrics] = []
    weight_bytes = total_params = total_buffers = total_macs = total_flops = 0
    new_tuple = tuple.__new__  # skips the named tuple's Python-level __new__: 15 % of this loop
    for position, (node, node_figures, stage) in enumerate(zip(order, figures, stage_list)):
        op, macs, flops, output_bytes, bytes_moved, intensity, spatial, weights = node_figures
        params = param_bytes = buffers = 0
        for slot, dtype, elements, size, is_buffer in weights:
            name = node.inputs[slot]
            if name in counted:
                continue
            counted.add(name)
            weight_bytes += size
            if is_buffer:
                buffers += elements
            else:
                params += elements
                param_bytes += size
                params_by_dtype[dtype] = params_by_dtype.get(dtype, 0) + elements
        if flops is None:
            unknown.append(node.id)
        else:
            total_flops += flops
        if macs:
            total_macs += macs
        total_params += params
        total_buffers += buffers
        node_metrics.append(new_tuple(NodeMetrics, (node.id, node.op_type, position, op is None, params, param_bytes,
                                                    buffers, macs, flops, output_bytes, bytes_moved, intensity,
                                                    spatial, stage)))
    sums.params, sums.buffers, sums.weight_bytes = total_params, total_buffers, weight_bytes
    sums.macs, sums.flops = total_macs, total_flops
    return node_metrics, sums


def _folded_figures(graph: Graph, node: Node) -> _Figures:
    """A folded node's figures: no op, no cost, no weights; it reads nothing."""
    type_of = graph.value_types.get
    out_types = [type_of(name) if name else None for name in node.outputs]
    output_bytes = _output_bytes(node.outputs, out_types)
    intensity = 0 / output_bytes if output_bytes else None  # 0 FLOPs over its bytes, as a computed node's
    spatial = costs.spatial_size(out_types[0] if out_types else None, graph.channels_last)
    return _Figures(None, 0, 0, output_bytes, output_bytes, intensity, spatial, ())


def _figures(graph: Graph, node: Node, constant_values: set[str]) -> _Figures:
    """A computed node's figures (`constant_values`: names of the constant values)."""
    type_of = graph.value_types.get
    op = costs.canonical_op(node)
    arguments, buffer_slots = costs.argument_inputs(op, node), costs.buffer_inputs(op, node)
    in_types = [type_of(name) if name else None for name in node.inputs]
    out_types = [type_of(name) if name else None for name in node.outputs]
    input_bytes: Optional[int] = 0
    weights = []
    for slot, name in enumerate(node.inputs):
        if not name:
            continue
        value_type = in_types[slot]
        size = value_type.byte_size if value_type is not None else None
        if name in constant_values:
            if slot in arguments or value_type is None or value_type.dtype not in _PARAM_DTYPES \
                    or value_type.shape == ():
                continue  # arguments (shapes, axes, epsilon, clip bounds) are not parameters
            size = size or 0
            input_bytes = None if input_bytes is None else input_bytes + size
            weights.append((slot, value_type.dtype, value_type.element_count or 0, size, slot in buffer_slots))
        else:
            input_bytes = None if size is None or input_bytes is None else input_bytes + size
    cost = costs.cost_from_types(node, op, in_types, out_types)
    output_bytes = _output_bytes(node.outputs, out_types)
    bytes_moved = None if input_bytes is None or output_bytes is None else input_bytes + output_bytes
    intensity = None
    if cost.flops is not None and bytes_moved:
        intensity = cost.flops / bytes_moved
    spatial = costs.spatial_size(out_types[0] if out_types else None, graph.channels_last)
    return _Figures(op, cost.macs, cost.flops, output_bytes, bytes_moved, intensity, spatial, tuple(weights))


def _output_bytes(outputs: tuple[str, ...], out_types: list) -> Optional[int]:
    """Bytes of a node's outputs (`out_types`: their types); None when a size is unknown."""
    total = 0
    for name, value_type in zip(outputs, out_types):
        if not name:
            continue  # an omitted optional output
        size = value_type.byte_size if value_type is not None else None
        if size is None:
            return None
        total += size
    return total
