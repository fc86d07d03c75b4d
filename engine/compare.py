"""Compare two profiles of the same model: two targets, two modes, two sizes, before/after a change.

Ratios are b / a (above 1: b is slower).  Nodes are matched by id, stages by
name; a node present in only one profile is listed, not compared.  Comparing
a profile with itself gives ratios of exactly 1.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

from engine.profile import MEASURED, Profile, combine_kinds

__all__ = ["Change", "Comparison", "compare_profiles", "describe_figures", "profile_label"]


@dataclass(frozen=True, slots=True)
class Change:
    """One node, stage or op type in both profiles."""

    key: str  # node id, stage name or op type
    a_ms: float
    b_ms: float
    ratio: Optional[float]  # b / a; None when a is 0
    kind: str  # weakest kind of the two figures
    op_type: str = ""
    stage: str = ""

    @property
    def delta_ms(self) -> float:
        return self.b_ms - self.a_ms

    def to_json_dict(self) -> dict:
        data = {"key": self.key, "a_ms": self.a_ms, "b_ms": self.b_ms, "ratio": self.ratio,
                "delta_ms": self.delta_ms, "kind": self.kind}
        if self.op_type:
            data["op_type"] = self.op_type
        if self.stage:
            data["stage"] = self.stage
        return data


def _ratio(a: float, b: float) -> Optional[float]:
    if a == b:
        return 1.0  # also 0 vs 0: unchanged
    return b / a if a > 0 else None


@dataclass(frozen=True)
class Comparison:
    a_label: str
    b_label: str
    end_to_end: Optional[Change]
    nodes: tuple[Change, ...]  # in a's execution order
    stages: tuple[Change, ...]
    op_types: tuple[Change, ...]
    faster: tuple[Change, ...]  # ratio below 1 - threshold, biggest saving first
    slower: tuple[Change, ...]  # ratio above 1 + threshold, biggest loss first
    only_in_a: tuple[str, ...]
    only_in_b: tuple[str, ...]
    threshold: float
    warnings: tuple[str, ...] = field(default_factory=tuple)
    # What each side's figures are: runtime and kernels, kinds of its per-layer times, statistic.
    a_figures: str = ""
    b_figures: str = ""

    def node(self, node_id: str) -> Change:
        for change in self.nodes:
            if change.key == node_id:
                return change
        raise KeyError(node_id)

    def top_changes(self, n: int = 10) -> list[Change]:
        """Nodes with the largest absolute time change."""
        return sorted(self.nodes, key=lambda c: abs(c.delta_ms), reverse=True)[:n]

    def to_json_dict(self) -> dict:
        def rows(changes, key_name):
            return [{key_name: c.key, **c.to_json_dict()} for c in changes]
        return {"schema": "layerscope.compare/1", "a_label": self.a_label, "b_label": self.b_label,
                "threshold": self.threshold,
                "end_to_end": self.end_to_end.to_json_dict() if self.end_to_end else None,
                "stages": rows(self.stages, "name"),
                "op_types": rows(self.op_types, "op_type"),
                "nodes": rows(self.nodes, "id"),
                "faster": [c.key for c in self.faster], "slower": [c.key for c in self.slower],
                "only_in_a": list(self.only_in_a), "only_in_b": list(self.only_in_b),
                "a_figures": self.a_figures, "b_figures": self.b_figures,
                "warnings": list(self.warnings)}


def profile_label(profile: Profile) -> str:
    """'cpu exact 160x160' - what distinguishes a profile in a comparison."""
    target = profile.target
    parts = [str(target.get("name", "target"))]
    if str(target.get("runtime", "")).startswith("LiteRT") and target.get("name") == "cpu":
        parts.append("LiteRT")  # the CPU reference of a .tflite model: not ONNX Runtime
    if target.get("device") and target.get("name") == "android":
        parts.append(str(target["device"]))
    if target.get("delegate"):
        parts.append(str(target["delegate"]))
    parts.append(profile.mode)
    shapes = profile.settings.get("input_shapes") or {}
    if len(shapes) == 1:
        dims = list(shapes.values())[0]
        if len(dims) == 4:
            h, w = (dims[2], dims[3]) if dims[1] in (1, 3, 4) or dims[3] not in (1, 3, 4) else (dims[1], dims[2])
            parts.append(f"{h}x{w}")
    threads = profile.settings.get("threads")
    if threads:
        parts.append(f"{threads} thread{'' if threads == 1 else 's'}")
    return " ".join(parts)


def _statistic(profile: Profile) -> tuple[str, int]:
    """("median" or "mean", runs) of the profile's times (Profile.time_names; runs of its end-to-end time)."""
    figure = profile.end_to_end or next((n.time for n in profile.nodes.values()), None)
    return profile.time_names[0], (figure.count if figure is not None else profile.runs_completed)


def describe_figures(profile: Profile) -> str:
    """What a profile's times are, for a comparison: 'LiteRT (ai-edge-litert 2.3.0), XNNPACK (default CPU
    delegate); 164 layer times: 30 measured, 134 attributed; median of 5 runs'."""
    target, settings = profile.target, profile.settings
    kernels = settings.get("kernels")
    where = ", ".join(str(part) for part in (target.get("runtime"), kernels and f"kernels: {kernels}",
                                             target.get("delegate") and f"delegate {target['delegate']}")
                      if part)
    counts: dict[str, int] = {}
    for timing in profile.nodes.values():
        counts[timing.kind] = counts.get(timing.kind, 0) + 1
    kinds = ", ".join(f"{counts[kind]} {kind}" for kind in sorted(counts, key=lambda k: -counts[k]))
    statistic, runs = _statistic(profile)
    how = (f"median of {runs} runs" if statistic == "median"
           else f"mean of {runs} runs (the runtime's summary: no per-run times)")
    return "; ".join(part for part in (where, f"{len(profile.nodes)} layer times: {kinds or 'none'}", how) if part)


def compare_profiles(a: Profile, b: Profile, threshold: float = 0.10, a_label: str = "",
                     b_label: str = "") -> Comparison:
    """Per-node, per-stage and per-op-type ratios b/a.  `threshold`: how far from 1 counts as changed."""
    warnings = []
    if a.model_path and b.model_path and a.model_path != b.model_path:
        warnings.append(f"the profiles are of different files ({a.model_path} and {b.model_path}); "
                        "nodes are matched by id")
    if a.mode != b.mode:
        warnings.append(f"modes differ ({a.mode} vs {b.mode}): in deployed mode fused nodes carry "
                        "attributed times")
    if a.time_names[0] != b.time_names[0]:  # benchmark_model reports means, our own runs medians
        warnings.append(f"a's times are {a.time_names[0]}s, b's are {b.time_names[0]}s (a runtime's own summary): "
                        "the ratios compare different statistics")
    for profile, name in ((a, "a"), (b, "b")):
        if not profile.complete:
            warnings.append(f"profile {name} is incomplete ({profile.runs_completed} runs"
                            f"{': ' + profile.error if profile.error else ''})")
    nodes = []
    for node_id, ta in a.nodes.items():
        tb = b.nodes.get(node_id)
        if tb is None:
            continue
        a_ms, b_ms = ta.time.median_ms, tb.time.median_ms
        kind = ta.kind if ta.kind == tb.kind else combine_kinds((ta.kind, tb.kind))  # (20,000 nodes: fast path)
        nodes.append(Change(node_id, a_ms, b_ms, _ratio(a_ms, b_ms), kind, ta.op_type, ta.stage))
    only_a = tuple(n for n in a.nodes if n not in b.nodes)
    only_b = tuple(n for n in b.nodes if n not in a.nodes)
    if only_a or only_b:
        warnings.append(f"{len(only_a)} node(s) only in a, {len(only_b)} only in b: not compared")

    stages = []
    a_kinds, b_kinds = a.stage_kinds(), b.stage_kinds()  # once: each is a pass over all nodes
    for name, ms_a in a.stage_times_ms.items():
        if name in b.stage_times_ms:
            ms_b = b.stage_times_ms[name]
            stages.append(Change(name, ms_a, ms_b, _ratio(ms_a, ms_b),
                                 combine_kinds((a_kinds.get(name, MEASURED), b_kinds.get(name, MEASURED)))))
    op_types = []
    a_kinds, b_kinds = a.op_type_kinds(), b.op_type_kinds()
    for op, ms_a in a.op_type_times_ms.items():
        if op in b.op_type_times_ms:
            ms_b = b.op_type_times_ms[op]
            op_types.append(Change(op, ms_a, ms_b, _ratio(ms_a, ms_b),
                                   combine_kinds((a_kinds.get(op, MEASURED), b_kinds.get(op, MEASURED)))))
    end_to_end = None
    if a.end_to_end is not None and b.end_to_end is not None:
        end_to_end = Change("end_to_end", a.end_to_end.median_ms, b.end_to_end.median_ms,
                            _ratio(a.end_to_end.median_ms, b.end_to_end.median_ms),
                            combine_kinds((a.end_to_end.kind, b.end_to_end.kind)))
    faster = tuple(sorted((c for c in nodes if c.ratio is not None and c.ratio < 1 - threshold),
                          key=lambda c: c.delta_ms))
    slower = tuple(sorted((c for c in nodes if (c.ratio is None and c.b_ms > 0)
                           or (c.ratio is not None and c.ratio > 1 + threshold)),
                          key=lambda c: -c.delta_ms))
    return Comparison(a_label or profile_label(a), b_label or profile_label(b), end_to_end, tuple(nodes),
                      tuple(stages), tuple(op_types), faster, slower, only_a, only_b, threshold,
                      tuple(warnings), describe_figures(a), describe_figures(b))
