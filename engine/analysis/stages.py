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
from operator import attrgetter
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


def find_stages(graph: Graph, order: Sequence[Node], ops: Sequence[Optional[str]],
                spatial_sizes: Sequence[Optional[int]]) -> tuple[list[str], dict[str, str]]:
    """(each node's stage name, each stage's kind).  `ops` (canonical op types, None for folded
    nodes) and `spatial_sizes` (NodeMetrics.spatial_size) are by position in the execution
    order `order`."""
    compute = [position for position, op in enumerate(ops) if op is not None]
    is_spatial_model = not _SPATIAL_OPS.isdisjoint(ops) and any((spatial_sizes[p] or 0) > 1 for p in compute)
    if not is_spatial_model:
        return ["model"] * len(order), {"model": "other"}

    stage: list[Optional[str]] = [None] * len(order)  # by position
    consumers: dict[str, list[int]] = {}  # value name -> positions of the computed nodes reading it
    if not costs.UPSAMPLING.isdisjoint(ops) or len(compute) < len(order):
        for p in compute:
            for name in order[p].inputs:
                if name:
                    consumers.setdefault(name, []).append(p)

    # 1. decoder: downstream of any upsampling op
    decoder: set[int] = set()
    frontier = [p for p in compute if ops[p] in costs.UPSAMPLING and costs.is_upsampling(order[p], graph)]
    while frontier:
        p = frontier.pop()
        if p in decoder:
            continue
        decoder.add(p)
        for out in order[p].outputs:
            frontier.extend(consumers.get(out, ()))

    # 2. head: the tail
    for p in _head(compute, order, spatial_sizes, graph):
        stage[p] = "head"
    for p in decoder:
        if stage[p] is None:
            stage[p] = "decoder"

    # 3. bottleneck: lowest resolution on the encoder side (only meaningful with a decoder)
    if decoder:
        encoder_side = [p for p in compute if stage[p] is None]
        sizes = [spatial_sizes[p] for p in encoder_side if spatial_sizes[p]]
        lowest = min(sizes) if sizes else None
        for p in encoder_side:
            if lowest is not None and spatial_sizes[p] == lowest:
                stage[p] = "bottleneck"

    # 4. encoder, and nodes without a spatial output of their own follow a neighbour
    producer_position = None
    for p in compute:
        if stage[p] is not None:
            continue
        if spatial_sizes[p] is not None:
            stage[p] = "encoder"
            continue
        if producer_position is None:  # the value's producer (the last in the file)
            position_of = {node.id: q for q, node in enumerate(order)}
            producer_position = {name: position_of[node.id] for name, node in graph.producers().items()}
        neighbour = next((stage[q] for name in order[p].inputs if name
                          for q in [producer_position.get(name)] if q is not None and stage[q] is not None), None)
        stage[p] = neighbour or "encoder"
    # constants are drawn as weights of their consumer, so they take its stage
    for p in range(len(order) - 1, -1, -1):
        if stage[p] is not None:
            continue
        consumer_stage = next((stage[c] for out in order[p].outputs for c in consumers.get(out, ())
                               if stage[c] is not None), None)
        stage[p] = consumer_stage or "encoder"
    return stage, {kind: kind for kind in STAGE_KINDS}  # type: ignore[return-value]


def _head(compute: list[int], order: Sequence[Node], spatial_sizes: Sequence[Optional[int]],
          graph: Graph) -> list[int]:
    """Positions of the head: a classifier's trailing non-spatial run, or a dense-prediction
    net's trailing pointwise ops and the 1x1 projection before them."""
    tail: list[int] = []
    for p in reversed(compute):
        if (spatial_sizes[p] or 0) > 1:
            break
        tail.append(p)
    if tail and len(tail) < len(compute):
        return tail
    tail, projections = [], 0
    for p in reversed(compute):
        op = costs.canonical_op(order[p])
        if op in _POINTWISE_OPS:
            tail.append(p)
        elif op == "Conv" and costs.kernel_is_pointwise(order[p], graph):
            tail.append(p)  # the projection; what feeds it is the decoder's work
            projections += 1
            break
        else:
            break
    return tail if projections else []


def collect_stages(node_ids: Sequence[str], metrics: Sequence["NodeMetrics"], stage_list: Sequence[str],
                   kinds: Mapping[str, str]) -> tuple[Stage, ...]:
    """The stages of `find_stages`, in STAGE_KINDS order, with their nodes and sums (`node_ids`,
    `metrics` and `stage_list` by position in the execution order)."""
    members: dict[str, list[int]] = {}
    if len(set(stage_list)) == 1:  # one stage (every model without spatial ops): all positions
        members[stage_list[0]] = list(range(len(stage_list)))
    else:
        for position, stage in enumerate(stage_list):
            members.setdefault(stage, []).append(position)
    stages = []
    for name in sorted(members, key=lambda s: STAGE_KINDS.index(kinds.get(s, "other"))
                       if kinds.get(s, "other") in STAGE_KINDS else len(STAGE_KINDS)):
        positions = members[name]
        everything = len(positions) == len(metrics)
        stage_metrics = metrics if everything else list(map(metrics.__getitem__, positions))
        # None (unknown) adds nothing, as 0 does: filter(None, ...) drops both
        macs = sum(filter(None, map(attrgetter("macs"), stage_metrics)))
        flops = sum(filter(None, map(attrgetter("flops"), stage_metrics)))
        params = sum(map(attrgetter("params"), stage_metrics))
        ids = tuple(node_ids) if everything else tuple(map(node_ids.__getitem__, positions))
        stages.append(Stage(name, kinds.get(name, "other"), ids, macs, flops, params))
    return tuple(stages)
