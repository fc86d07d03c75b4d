"""What a bridge profile carries beyond engine.profile.Profile: transfers and calibration.

`BridgeProfile` is a `Profile` (every reader of profiles takes it unchanged)
with two more fields, written as two more keys of the ``layerscope.profile/1``
document (keys may be added within version 1):

- ``transfers``: tensors moved between compute units.  For every edge whose
  producer and consumer run on different units, the bytes moved and an
  ``estimated`` time from the unit's calibrated cost curve; the input upload
  and output readback likewise; and copy kernels the runtime inserted itself
  (ONNX Runtime's Memcpy nodes), whose time is ``measured``.
- ``calibration``: per compute unit, the fitted transfer cost (fixed overhead
  + bytes / bandwidth) that the estimates come from, with the measured points.

`merge_profiles` joins the profiles of consecutive batches of runs (the agent
profiles in batches so that completed runs survive a lost connection) into
one profile whose samples are the batches' samples in run order.
"""
from __future__ import annotations

from dataclasses import dataclass, field, fields, replace
from typing import Any, Iterable, Mapping, Optional, Sequence

from engine.profile import (DERIVED, KINDS, NodeTiming, Profile, ProfileFormatError, TimingGroup, TimingStats,
                            read_kind)

__all__ = ["Transfer", "UnitCalibration", "BridgeProfile", "merge_profiles", "profile_from_document",
           "rekey_transfers"]


@dataclass(frozen=True, slots=True)
class Transfer:
    """One tensor moved between compute units (or between the host and a unit).

    kind: "edge" (producer and consumer on different units), "input" (upload
    of a model input to the unit of its first consumer), "output" (readback of
    a model output), "runtime_copy" (a copy kernel the runtime inserted; time
    measured).  from_node/to_node are node ids (None for the host side or a
    runtime kernel); `kernel` names the runtime's copy kernel.
    """

    kind: str
    value: str
    from_unit: str
    to_unit: str
    bytes: Optional[int]
    time: TimingStats
    from_node: Optional[str] = None
    to_node: Optional[str] = None
    kernel: str = ""

    def to_json_dict(self) -> dict:
        return {"kind": self.kind, "value": self.value, "from_node": self.from_node, "to_node": self.to_node,
                "from_unit": self.from_unit, "to_unit": self.to_unit, "bytes": self.bytes,
                "kernel": self.kernel, "time": self.time.to_json_dict()}

    @classmethod
    def from_json_dict(cls, data: Mapping) -> "Transfer":
        return cls(str(data["kind"]), str(data.get("value", "")), str(data.get("from_unit", "")),
                   str(data.get("to_unit", "")), None if data.get("bytes") is None else int(data["bytes"]),
                   TimingStats.from_json_dict(data["time"]), data.get("from_node"), data.get("to_node"),
                   str(data.get("kernel", "")))


@dataclass(frozen=True)
class UnitCalibration:
    """Fitted cost of moving a tensor to a compute unit and back: ms = overhead_ms + bytes / bandwidth.

    `bytes` counts the bytes moved both ways (a round trip of an n-byte tensor
    moves 2n).  points: the measured (bytes moved, median ms) pairs of the sweep.
    r2: coefficient of determination of the fit (1 = the straight line explains
    every point).  bandwidth_bytes_per_s is None when the fit found no measurable
    slope (the times did not grow with the size): no bandwidth, so no estimate.
    The fit is `derived` from the measured points.
    """

    unit: str
    overhead_ms: float
    bandwidth_bytes_per_s: Optional[float]
    points: tuple[tuple[int, float], ...] = ()
    r2: Optional[float] = None
    method: str = ""
    kind: str = DERIVED

    def round_trip_ms(self, tensor_bytes: int) -> float:
        return self.overhead_ms + 2.0 * tensor_bytes / self.bandwidth_bytes_per_s * 1000.0

    def one_way_ms(self, tensor_bytes: int) -> float:
        """One direction: half the fixed overhead plus the bytes at the fitted bandwidth."""
        return self.overhead_ms / 2.0 + tensor_bytes / self.bandwidth_bytes_per_s * 1000.0

    def to_json_dict(self) -> dict:
        return {"unit": self.unit, "overhead_ms": self.overhead_ms,
                "bandwidth_bytes_per_s": self.bandwidth_bytes_per_s, "r2": self.r2, "method": self.method,
                "kind": self.kind, "points": [[int(b), float(ms)] for b, ms in self.points]}

    @classmethod
    def from_json_dict(cls, data: Mapping) -> "UnitCalibration":
        bandwidth = data["bandwidth_bytes_per_s"]
        return cls(str(data["unit"]), float(data["overhead_ms"]), None if bandwidth is None else float(bandwidth),
                   tuple((int(b), float(ms)) for b, ms in data.get("points", ())),
                   None if data.get("r2") is None else float(data["r2"]), str(data.get("method", "")),
                   read_kind(data))


@dataclass(frozen=True)
class BridgeProfile(Profile):
    """A Profile with the transfers and calibration of the device it was measured on."""

    transfers: tuple[Transfer, ...] = ()
    calibration: Mapping[str, UnitCalibration] = field(default_factory=dict)

    def __post_init__(self):
        super().__post_init__()
        object.__setattr__(self, "transfers", tuple(self.transfers))
        object.__setattr__(self, "calibration", dict(self.calibration))

    @property
    def transfer_ms(self) -> float:
        """Sum of the transfers' medians (the weakest kind of them: see `transfer_kind`)."""
        return sum(t.time.median_ms for t in self.transfers)

    def to_json_dict(self) -> dict:
        data = super().to_json_dict()
        data["transfers"] = [t.to_json_dict() for t in self.transfers]
        data["calibration"] = {unit: c.to_json_dict() for unit, c in self.calibration.items()}
        return data

    @classmethod
    def from_json_dict(cls, data: Mapping) -> "BridgeProfile":
        base = Profile.from_json_dict(data)
        calibration = {}
        for unit, fit in (data.get("calibration") or {}).items():
            try:
                calibration[str(unit)] = UnitCalibration.from_json_dict(fit)
            except (KeyError, TypeError, ValueError, AttributeError) as exc:
                raise ProfileFormatError(f"calibration.{unit}: {type(exc).__name__}: {exc}") from None
        try:
            transfers = [Transfer.from_json_dict(t) for t in data.get("transfers", ())]
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise ProfileFormatError(f"malformed transfers: {type(exc).__name__}: {exc}") from None
        return cls.from_profile(base, transfers=transfers, calibration=calibration)

    @classmethod
    def from_profile(cls, profile: Profile, transfers: Iterable[Transfer] = (),
                     calibration: Optional[Mapping[str, UnitCalibration]] = None, **changes) -> "BridgeProfile":
        values = {f.name: getattr(profile, f.name) for f in fields(Profile)}
        values.update(changes)
        return cls(**values, transfers=tuple(transfers), calibration=dict(calibration or {}))


def rekey_transfers(transfers: Iterable[Transfer], node_ids: Mapping[str, str]) -> list[Transfer]:
    """Transfers with their end nodes renamed through `node_ids` (e.g. Core ML op -> ONNX source
    node, from the layer map).  Ends not in the mapping keep their id; None (the host) stays None."""
    return [replace(t, from_node=node_ids.get(t.from_node, t.from_node) if t.from_node is not None else None,
                    to_node=node_ids.get(t.to_node, t.to_node) if t.to_node is not None else None)
            for t in transfers]


def profile_from_document(data: Mapping) -> Profile:
    """A profile document from an agent: BridgeProfile (with transfers) whatever keys it has."""
    return BridgeProfile.from_json_dict(data)


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
    groups = [TimingGroup(g.group_id, g.kernel, g.node_ids,
                          TimingStats.from_samples(group_samples[g.group_id], g.time.kind), g.kernel_op)
              for g in group_first.values() if group_samples[g.group_id]]
    nodes = []
    for node in node_first.values():
        samples = node_samples[node.node_id]
        if not samples:
            continue
        nodes.append(NodeTiming(node.node_id, node.op_type, node.stage,
                                TimingStats.from_samples(samples, node.time.kind), node.group_id, node.kind,
                                node.output_bytes, node.memory_bytes, node.compute_unit))
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
