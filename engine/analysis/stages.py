"""Stages from the spatial-resolution profile: encoder, bottleneck, decoder, head.

The rules, in the order they are applied:

1. Decoder: every node downstream of an upsampling op (ConvTranspose with
   stride > 1, Resize/Upsample to a larger size, DepthToSpace).  Topology, not
   file order, decides, so a skip branch scheduled late stays in the encoder.
2. Head: the tail of the execution order.  In a classifier it is the run of
   trailing nodes whose outputs are no longer spatial (global pooling, Gemm,
   Softmax); in a dense-prediction net it is the pointwise ops after the last
   1x1 projection conv, and that conv (the "to classes" layer).
3. Bottleneck (only when there is a decoder): encoder-side nodes at the lowest
   spatial resolution.
4. Encoder: the rest.  Nodes with no spatial output of their own (shape
   arithmetic, reshapes, constants) take the stage of a neighbour.

A graph with no spatial ops at all gets one stage of kind "other".
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Mapping, Optional, Sequence

from engine.analysis import costs
from engine.ir import Graph, Node

if TYPE_CHECKING:
    from engine.analysis import NodeMetrics

STAGE_KINDS = ("encoder", "bottleneck", "decoder", "head", "other")
_SPATIAL_OPS = {"Conv", "ConvTranspose", "MaxPool", "AveragePool", "LpPool", "GlobalAveragePool",
                "GlobalMaxPool", "Resize", "Upsample", "DepthToSpace", "SpaceToDepth"}
_POINTWISE_OPS = set(costs.ELEMENTWISE_FLOPS) | {"BatchNormalization", "Softmax", "LogSoftmax",
                                                  "Identity", "Dropout", "Cast", "Reshape", "Transpose",
                                                  "Flatten", "Squeeze", "Unsqueeze", "InstanceNormalization"}


@dataclass(frozen=True)
class Stage:
    name: str
    kind: str
    node_ids: tuple[str, ...]
    macs: int
    flops: int
    params: int


def find_stages(graph: Graph, order: Sequence[Node], metrics: Sequence["NodeMetrics"],
                ops: Sequence[Optional[str]]) -> tuple[tuple[Stage, ...], list[str]]:
    """(the stages, each node's stage name).  `metrics` and `ops` (canonical op types, None for
    folded nodes) are by position in the execution order `order`."""
    compute = [position for position, op in enumerate(ops) if op is not None]
    is_spatial_model = not _SPATIAL_OPS.isdisjoint(ops) and \
        any((metrics[p].spatial_size or 0) > 1 for p in compute)
    if not is_spatial_model:
        stage_list = ["model"] * len(order)
        return _collect(order, metrics, stage_list, {"model": "other"}), stage_list

    stage_of: dict[str, str] = {}
    consumers: dict[str, list[Node]] = {}
    for p in compute:
        node = order[p]
        for name in node.inputs:
            if name:
                consumers.setdefault(name, []).append(node)
    spatial_size = {m.node_id: m.spatial_size for m in metrics}

    # 1. decoder: downstream of any upsampling op
    decoder: set[str] = set()
    frontier = [order[p] for p in compute if ops[p] in costs.UPSAMPLING and costs.is_upsampling(order[p], graph)]
    while frontier:
        node = frontier.pop()
        if node.id in decoder:
            continue
        decoder.add(node.id)
        for out in node.outputs:
            frontier.extend(consumers.get(out, ()))

    # 2. head: the tail
    compute_nodes = [order[p] for p in compute]
    head = _head(compute_nodes, spatial_size, graph, has_decoder=bool(decoder))
    for node_id in head:
        stage_of[node_id] = "head"
    for node_id in decoder:
        stage_of.setdefault(node_id, "decoder")

    # 3. bottleneck: lowest resolution on the encoder side (only meaningful with a decoder)
    encoder_side = [n for n in compute_nodes if n.id not in stage_of]
    if decoder:
        sizes = [spatial_size[n.id] for n in encoder_side if spatial_size[n.id]]
        lowest = min(sizes) if sizes else None
        for node in encoder_side:
            if lowest is not None and spatial_size[node.id] == lowest:
                stage_of[node.id] = "bottleneck"

    # 4. encoder, and nodes without a spatial output of their own follow a neighbour
    producers = graph.producers()
    for node in compute_nodes:
        if node.id in stage_of:
            continue
        if spatial_size[node.id] is not None:
            stage_of[node.id] = "encoder"
            continue
        neighbour = next((stage_of[p.id] for name in node.inputs if name
                          for p in [producers.get(name)] if p is not None and p.id in stage_of), None)
        stage_of[node.id] = neighbour or "encoder"
    # constants are drawn as weights of their consumer, so they take its stage
    for node in reversed(order):
        if node.id in stage_of:
            continue
        consumer_stage = next((stage_of[c.id] for out in node.outputs for c in consumers.get(out, ())
                               if c.id in stage_of), None)
        stage_of[node.id] = consumer_stage or "encoder"
    kinds = {kind: kind for kind in STAGE_KINDS}
    stage_list = [stage_of[node.id] for node in order]
    return _collect(order, metrics, stage_list, kinds), stage_list


def _head(compute: list[Node], spatial_size: Mapping[str, Optional[int]], graph: Graph,
          has_decoder: bool) -> list[str]:
    tail: list[str] = []
    for node in reversed(compute):  # classifier: trailing non-spatial run
        if (spatial_size[node.id] or 0) > 1:
            break
        tail.append(node.id)
    if tail and len(tail) < len(compute):
        return tail
    # dense prediction: trailing pointwise ops and one 1x1 projection
    tail, projections = [], 0
    for node in reversed(compute):
        op = costs.canonical_op(node)
        if op in _POINTWISE_OPS:
            tail.append(node.id)
        elif op == "Conv" and costs.kernel_is_pointwise(node, graph):
            tail.append(node.id)  # the projection; what feeds it is the decoder's work
            projections += 1
            break
        else:
            break
    return tail if projections else []


def _collect(order: Sequence[Node], metrics: Sequence["NodeMetrics"], stage_list: list[str],
             kinds: Mapping[str, str]) -> tuple[Stage, ...]:
    members: dict[str, list[int]] = {}
    for position, stage in enumerate(stage_list):
        members.setdefault(stage, []).append(position)
    stages = []
    for name in sorted(members, key=lambda s: STAGE_KINDS.index(kinds.get(s, "other"))
                       if kinds.get(s, "other") in STAGE_KINDS else len(STAGE_KINDS)):
        positions = members[name]
        macs = flops = params = 0
        for position in positions:  # one pass over the stage's metrics, not one per sum
            m = metrics[position]
            macs += m.macs or 0
            flops += m.flops or 0
            params += m.params
        stages.append(Stage(name, kinds.get(name, "other"), tuple(order[p].id for p in positions),
                            macs, flops, params))
    return tuple(stages)
