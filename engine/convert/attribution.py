"""Device results of a converted model, summed back onto the ONNX source nodes.

A Core ML run of a package made by `engine.convert` gives its figures per MIL operation:
the compute plan's cost weights split a measured total over the ops (``attributed``),
truncated sub-models give measured segment times (``measured`` per segment), and at layer
granularity every op is timed on its own (``measured``).  The layer map says which ONNX
node each op came from.  `profile_on_source` turns such a *device profile* -- a `Profile`
keyed by the package's node ids (our Core ML importer's ids, i.e. first output names; MIL
op names are accepted too), whose groups are the measured segments -- into a `Profile`
keyed by the ONNX node ids, so the times are drawn on the graph the person knows.

Rules (DESIGN.md, "Measured versus estimated"):

- A source node's time is the sum of its ops' times.  It is ``measured`` only when every
  group it takes time from is measured and holds nothing but this node's ops (a segment
  that is exactly this node, or one op of it at layer granularity); otherwise it is
  ``attributed`` (a measured total split by the compute plan), or ``estimated`` if a part was.
- A measured group whose ops all belong to source nodes stays one measured group with the
  same samples, now listing the ONNX nodes it covers.
- A group that also holds ops that belong to no source node (fp16 input/output casts,
  image preprocessing) is split in two, both ``attributed``: the source part (same id) and
  a group without nodes, id ``"<group> (no source node)"``, whose kernel names those ops.
- Nothing is lost: each op's time goes to exactly one source node or one no-source
  group, so the sum of group medians equals the device profile's (coverage unchanged).
  Parts of a node that come from different groups are summed rank by rank (sorted samples,
  as segment differences are matched), so node medians add up to group medians exactly.

Source nodes that got no op (Dropout/Identity removed, nodes fused into another's op with
``optimize="default"``) are listed in `untimed_node_ids`, with a warning that names where
fused nodes' time went.

`source_segments` chooses where a Core ML run should cut its measured segments so that
they are the stages of the *source* model (encoder, decoder, ...).

Pure functions: no Core ML, no coremltools; they run (and are tested) on any OS.
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Mapping, Optional, Sequence, Union

import numpy as np

from engine.convert.layermap import LayerMapError, source_index
from engine.profile import ATTRIBUTED, DERIVED, MEASURED, NodeTiming, Profile, TimingGroup, TimingStats, combine_kinds

__all__ = ["SourceNode", "source_nodes_from_analysis", "source_nodes_from_layer_map", "source_node_table",
           "source_segments", "profile_on_source", "NO_SOURCE_SUFFIX"]

NO_SOURCE_SUFFIX = " (no source node)"


@dataclass(frozen=True)
class SourceNode:
    """What the attribution needs to know of one ONNX compute node (from its static analysis)."""

    node_id: str
    op_type: str
    stage: str = ""
    output_bytes: Optional[int] = None
    flops: Optional[int] = None


def source_nodes_from_analysis(analysis) -> list[SourceNode]:
    """The compute nodes of an `engine.analysis.ModelAnalysis` of the source, in execution order."""
    return [SourceNode(m.node_id, m.op_type, m.stage, m.output_bytes, m.flops) for m in analysis.compute_nodes()]


def source_node_table(analysis, node_ids: Sequence[str]) -> dict[str, dict]:
    """The layer map's "source_nodes" entry: op type, stage, output bytes and FLOPs per compute node.

    Stored in the map so that an agent, which receives the package and its map but not
    the ONNX file, can key a device profile by source node with the right op types and stages.
    """
    table = {}
    for node_id in node_ids:
        metrics = analysis.nodes[node_id]
        table[node_id] = {"op_type": metrics.op_type, "stage": metrics.stage,
                          "output_bytes": metrics.output_bytes, "flops": metrics.flops}
    return table


def source_nodes_from_layer_map(layer_map: Mapping) -> list[SourceNode]:
    """The source compute nodes recorded in a layer map ("source_nodes", written by `convert`)."""
    table = layer_map.get("source_nodes")
    if not isinstance(table, Mapping) or not table:
        raise LayerMapError("the layer map has no 'source_nodes' (op types and stages of the ONNX nodes); "
                            "convert the model again with this version of LayerScope")
    nodes = []
    for node_id, info in table.items():
        info = info if isinstance(info, Mapping) else {}
        nodes.append(SourceNode(str(node_id), str(info.get("op_type", "")), str(info.get("stage", "")),
                                _optional_int(info.get("output_bytes")), _optional_int(info.get("flops"))))
    return nodes


def _optional_int(value) -> Optional[int]:
    return None if value is None else int(value)


SourceLike = Union[Sequence[SourceNode], object, None]


def _as_source_nodes(source: SourceLike, layer_map: Mapping) -> list[SourceNode]:
    if source is None:
        return source_nodes_from_layer_map(layer_map)
    if hasattr(source, "compute_nodes"):
        return source_nodes_from_analysis(source)
    return list(source)


# ----------------------------------------------------------------------------- segments

def source_segments(layer_map: Mapping, source: SourceLike, program_order: Sequence[str]
                    ) -> list[tuple[str, tuple[str, ...]]]:
    """Measured segments that follow the source model's stages: [(stage name, op ids)], in program order.

    `program_order`: the package's compute op ids in program order (our Core ML importer's
    node ids; MIL op names work too).  A segment ends where the ops of the next source
    stage begin, so cutting the program after each segment's last op times the source's
    stages.  Ops of no source node (input casts) join the segment they sit in; an op of an
    earlier stage that appears after a later stage began stays in the later segment
    (segments are contiguous runs of the program).  Consecutive segments of the same stage
    are merged.  Empty when the program has no op of a known stage.
    """
    nodes = _as_source_nodes(source, layer_map)
    stage_of = {n.node_id: n.stage or "(no stage)" for n in nodes}
    stage_rank: dict[str, int] = {}
    for node in nodes:
        stage_rank.setdefault(stage_of[node.node_id], len(stage_rank))
    index = source_index(layer_map)
    segments: list[tuple[str, list[str]]] = []
    current_rank = -1
    pending: list[str] = []  # ops before the first op of a known stage
    for op in program_order:
        source_id = index.get(op)
        rank = stage_rank.get(stage_of.get(source_id, ""), -1) if source_id is not None else -1
        if rank > current_rank:
            current_rank = rank
            name = next(stage for stage, r in stage_rank.items() if r == rank)
            segments.append((name, pending + [op]))
            pending = []
        elif segments:
            segments[-1][1].append(op)
        else:
            pending.append(op)
    if pending and segments:
        segments[-1][1].extend(pending)
    return [(name, tuple(ops)) for name, ops in segments]


# ----------------------------------------------------------------------------- the profile

def _sum_parts(parts: Sequence[TimingStats], same_group: bool, kind: str) -> TimingStats:
    """Sum of timings: sample by sample in run order when they share a group (scalings of one
    measured series), else rank by rank (each part sorted; resampled to the shortest at equal
    quantiles when their counts differ), so the median of the sum is the sum of the medians."""
    if len(parts) == 1:
        return parts[0] if parts[0].kind == kind else TimingStats.from_samples(parts[0].samples_ms, kind)
    lengths = {len(p.samples_ms) for p in parts}
    if same_group and len(lengths) == 1:
        total = np.sum([np.asarray(p.samples_ms, dtype=float) for p in parts], axis=0)
        return TimingStats.from_samples(total.tolist(), kind)
    count = min(lengths)
    positions = np.linspace(0.0, 1.0, count)
    total = np.zeros(count)
    for part in parts:
        ordered = np.sort(np.asarray(part.samples_ms, dtype=float))
        total += ordered if len(ordered) == count else np.interp(positions, np.linspace(0.0, 1.0, len(ordered)),
                                                                 ordered)
    return TimingStats.from_samples(total.tolist(), kind)


def profile_on_source(device: Profile, layer_map: Mapping, source: SourceLike = None, *,
                      source_model_path: Optional[str] = None) -> Profile:
    """A device profile of a converted package, keyed by the ONNX source nodes (see the module doc).

    device: per-op timings (NodeTiming per package op, each with its kind and compute unit)
    and the groups they were measured in (segments, or one "model" group split by the
    compute plan).  layer_map: the package's map (`load_layer_map`).  source: the source
    model's `ModelAnalysis`, or `SourceNode`s, or None to use the map's "source_nodes".
    source_model_path: the ONNX file the result names (default: the map's "source_model").

    Raises LayerMapError when the map names nodes the given source model does not have.
    """
    nodes_in_order = _as_source_nodes(source, layer_map)
    info = {n.node_id: n for n in nodes_in_order}
    unknown = [node_id for node_id in layer_map.get("nodes", {}) if node_id not in info]
    if unknown:
        raise LayerMapError(f"the layer map names {len(unknown)} node(s) the source model does not have "
                            f"(e.g. {unknown[0]!r}): it belongs to another model")
    index = source_index(layer_map)
    position = {node_id: i for i, node_id in enumerate(info)}
    warnings = list(device.warnings)

    # Per source node: (timing part, group id) for each of its ops.
    node_parts: dict[str, list[tuple[NodeTiming, str]]] = {}
    groups: list[TimingGroup] = []
    exclusive: dict[str, Optional[str]] = {}  # group id -> its kind when it times one source node's ops only
    grouped_ops: set[str] = set()
    missing_ops: list[str] = []
    no_source_ms = 0.0
    for group in device.groups:
        mapped: list[tuple[NodeTiming, str]] = []
        orphans: list[NodeTiming] = []
        for op in group.node_ids:
            grouped_ops.add(op)
            timing = device.nodes.get(op)
            if timing is None:
                missing_ops.append(op)
                continue
            source_id = index.get(op)
            if source_id is None:
                orphans.append(timing)
            else:
                mapped.append((timing, source_id))
        covered = list(dict.fromkeys(s for _, s in mapped))
        covered.sort(key=position.__getitem__)
        exclusive[group.group_id] = (group.time.kind if group.time.kind in (MEASURED, DERIVED)
                                     and len(covered) == 1 and not orphans else None)
        if not mapped and not orphans:
            groups.append(replace(group, node_ids=()))
            continue
        if orphans and mapped:
            split_kind = combine_kinds([group.time.kind, ATTRIBUTED])
            source_time = _sum_parts([t.time for t, _ in mapped], True, split_kind)
            orphan_time = _sum_parts([t.time for t in orphans], True, split_kind)
            groups.append(replace(group, node_ids=tuple(covered), time=source_time))
            groups.append(TimingGroup(group.group_id + NO_SOURCE_SUFFIX, ", ".join(t.node_id for t in orphans),
                                      (), orphan_time, group.kernel_op))
            no_source_ms += orphan_time.median_ms
        elif orphans:
            groups.append(replace(group, node_ids=()))
            no_source_ms += group.time.median_ms
        else:
            groups.append(replace(group, node_ids=tuple(covered)))
        for timing, source_id in mapped:
            node_parts.setdefault(source_id, []).append((timing, group.group_id))
    ungrouped = [op for op in device.nodes if op not in grouped_ops]
    if missing_ops or ungrouped:
        warnings.append(f"{len(missing_ops) + len(ungrouped)} op(s) of the device profile had a group but no "
                        f"timing, or a timing but no group, and are left out (e.g. "
                        f"{(missing_ops + ungrouped)[0]!r})")

    node_timings: list[NodeTiming] = []
    for node_id, node in info.items():
        parts = node_parts.get(node_id)
        if not parts:
            continue
        group_ids = list(dict.fromkeys(g for _, g in parts))
        if all(exclusive.get(g) for g in group_ids):
            kind = combine_kinds(exclusive[g] for g in group_ids)
        else:
            kind = combine_kinds([t.time.kind for t, _ in parts] + [ATTRIBUTED])
        time = _sum_parts([t.time for t, _ in parts], len(group_ids) == 1, kind)
        dominant = max(parts, key=lambda p: p[0].time.median_ms)[0]
        node_timings.append(NodeTiming(node_id, node.op_type, node.stage, time, group_ids[0], kind,
                                       node.output_bytes, None, dominant.compute_unit, dominant.compute_unit_kind))

    timed = {n.node_id for n in node_timings}
    untimed = [node_id for node_id in info if node_id not in timed]
    fused = {k: v for k, v in (layer_map.get("fused") or {}).items() if k in untimed}
    if fused:
        sample = next(iter(fused.items()))
        warnings.append(f"{len(fused)} node(s) were fused into another node's Core ML op at conversion; their "
                        f"time is in that node's (e.g. {sample[0]} -> {sample[1]})")
    removed = [n for n in layer_map.get("removed", ()) if n in untimed]
    if removed:
        warnings.append(f"{len(removed)} node(s) were removed at conversion (no op runs for them), e.g. "
                        f"{removed[0]}")
    if no_source_ms > 0:
        warnings.append(f"{no_source_ms:.3f} ms (sum of medians) ran in ops of no source node (input/output "
                        "casts, image preprocessing); it is in groups without nodes")
    stage_order = list(dict.fromkeys(n.stage for n in nodes_in_order if n.stage))
    target = dict(device.target)
    target["layer_map"] = {"schema": layer_map.get("schema"), "package": layer_map.get("package"),
                           "source_model": layer_map.get("source_model"),
                           "source_sha256": layer_map.get("source_sha256"),
                           "device_model_path": device.model_path, "no_source_ms": no_source_ms}
    profile = Profile.build(
        model_path=source_model_path or str(layer_map.get("source_model") or device.model_path),
        model_format="onnx", target=target, mode=device.mode, settings=dict(device.settings),
        end_to_end_samples=device.end_to_end.samples_ms if device.end_to_end else (),
        profiled_samples=device.profiled_end_to_end.samples_ms if device.profiled_end_to_end else (),
        groups=groups, nodes=node_timings, runs_completed=device.runs_completed, complete=device.complete,
        error=device.error, stage_order=stage_order, untimed_node_ids=untimed, warnings=warnings)
    return replace(profile, created_at=device.created_at)

