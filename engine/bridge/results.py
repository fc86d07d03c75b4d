"""Results of a bridge agent: merging batches of runs, re-keying transfers, checking kinds.

Transfers (tensors moved between compute units) and the transfer calibration are
fields of every `engine.profile.Profile`; this module joins and checks what agents send.

`merge_profiles` joins the profiles of consecutive batches of runs (the agent
profiles in batches so that completed runs survive a lost connection) into
one profile whose samples are the batches' samples in run order.
"""
from __future__ import annotations

from dataclasses import replace
from typing import Any, Iterable, Mapping, Optional, Sequence

from engine.profile import KINDS, NodeTiming, Profile, TimingGroup, TimingStats, Transfer, UnitCalibration

__all__ = ["Transfer", "UnitCalibration", "merge_profiles", "profile_from_document", "rekey_transfers",
           "check_kinds"]


def rekey_transfers(transfers: Iterable[Transfer], node_ids: Mapping[str, str]) -> list[Transfer]:
    """Transfers with their end nodes renamed through `node_ids` (e.g. Core ML op -> ONNX source
    node, from the layer map).  Ends not in the mapping keep their id; None (the host) stays None."""
    return [replace(t, from_node=node_ids.get(t.from_node, t.from_node) if t.from_node is not None else None,
                    to_node=node_ids.get(t.to_node, t.to_node) if t.to_node is not None else None)
            for t in transfers]


def profile_from_document(data: Mapping) -> Profile:
    """A profile document from an agent, with its transfers and calibration when it has them."""
    return Profile.from_json_dict(data)


def merge_profiles(parts: Sequence[Profile], *, runs_requested: int, warmup: int, complete: bool,
                   error: str = "", extra_warnings: Sequence[str] = ()) -> Profile:
    """One profile from the profiles of consecutive batches of runs of the same prepared model.

    Samples are concatenated in batch order (so samples_ms stays one per run,
    in run order); summary figures are derived again.  Groups and nodes are
    matched by id; the first batch fixes their order and descriptive fields.
    """
    if not parts:
        raise ValueError("merge_profiles needs at least one profile")
    first = parts[0]
    end_to_end: list[float] = []
    profiled: list[float] = []
    group_samples: dict[str, list[float]] = {}
    group_first: dict[str, TimingGroup] = {}
    node_samples: dict[str, list[float]] = {}
    node_first: dict[str, NodeTiming] = {}
    warnings: list[str] = []
    runs = 0
    for part in parts:
        runs += part.runs_completed
        if part.end_to_end is not None:
            end_to_end += part.end_to_end.samples_ms
        if part.profiled_end_to_end is not None:
            profiled += part.profiled_end_to_end.samples_ms
        for group in part.groups:
            group_first.setdefault(group.group_id, group)
            group_samples.setdefault(group.group_id, []).extend(group.time.samples_ms)
        for node in part.nodes.values():
            node_first.setdefault(node.node_id, node)
            node_samples.setdefault(node.node_id, []).extend(node.time.samples_ms)
        for warning in part.warnings:
            if warning not in warnings:
                warnings.append(warning)
    for warning in extra_warnings:
        if warning not in warnings:
            warnings.append(warning)
    groups = [replace(g, time=TimingStats.from_samples(group_samples[g.group_id], g.time.kind))
              for g in group_first.values() if group_samples[g.group_id]]
    nodes = []
    for node in node_first.values():
        samples = node_samples[node.node_id]
        if not samples:
            continue
        nodes.append(replace(node, time=TimingStats.from_samples(samples, node.time.kind)))
    settings = dict(first.settings)
    settings["runs"], settings["warmup"] = runs_requested, warmup
    merged = Profile.build(
        model_path=first.model_path, model_format=first.model_format, target=first.target, mode=first.mode,
        settings=settings, end_to_end_samples=end_to_end, profiled_samples=profiled, groups=groups,
        nodes=nodes, runs_completed=runs, complete=complete, error=error,
        stage_order=list(first.stage_times_ms), untimed_node_ids=first.untimed_node_ids, warnings=warnings)
    return merged


def check_kinds(document: Mapping) -> list[str]:
    """Paths in a profile document whose timing has no valid `kind` (the conformance suite uses it)."""
    problems: list[str] = []

    def visit(value: Any, path: str) -> None:
        if isinstance(value, Mapping):
            if "median_ms" in value and value.get("kind") not in KINDS:
                problems.append(path)
            for key, item in value.items():
                visit(item, f"{path}.{key}")
        elif isinstance(value, list):
            for index, item in enumerate(value):
                visit(item, f"{path}[{index}]")
    visit(document, "$")
    return problems
