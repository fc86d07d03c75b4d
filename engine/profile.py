"""The profile data model: what one profiling session measured, immutable once built.

A `Profile` is keyed by the same node ids as the IR and the static analysis
(`engine.ir.Node.id`), and lives beside the graph, never on it.  Targets
(engine.targets.*) build it; reports, the GUI, hints and `compare` only read it.

Every figure says how it was obtained (DESIGN.md, "Measured versus estimated"):

- ``measured``   timed or observed on the target (one sample per run);
- ``derived``    computed from other measurements: a segment's time as the difference
                 of two prefix models' measured times, a transfer-cost fit of measured round trips;
- ``attributed`` a measured (or derived) total split by a cost model: in deployed mode a
                 fused kernel's time is split over its source nodes by FLOPs share, a
                 Core ML prediction over its ops by the compute plan's cost weights;
- ``planned``    what a runtime says it will do (Core ML's compute plan: an op's compute
                 unit); never a time;
- ``emulated``   the CPU reference imitating a device;
- ``estimated``  from shapes or a model of the device, no run.

Compute units: `NodeTiming.compute_unit` is "unknown" unless the runtime observed it
(`compute_unit_kind` measured: the ONNX Runtime provider that ran the kernel) or planned it
(`planned`: Core ML's compute plan).  Transfers (tensors moved between compute units) and
the calibration their estimates come from are part of every profile (empty for the CPU
reference); a transfer whose time is neither measured nor calibrated has `time` None and
still says how many bytes move.

Invariants:

- `TimingStats.samples_ms` holds one sample per completed run, in run order;
  the summary figures are derived from them by `TimingStats.from_samples`.
- `Profile.groups` are the timed units (one kernel each).  In exact mode each
  group covers one source node; in deployed mode a fused kernel covers several,
  and a kernel the runtime inserted itself (a layout reorder) may cover none.
  Every source compute node belongs to at most one group.
- `Profile.nodes` is in execution order.  The per-node medians sum to the
  per-group medians of groups that cover at least one node (attribution
  preserves totals).
- `coverage` = sum of per-group medians / end-to-end median (plain runs
  without the profiler).  Near 1 means the per-node figures explain the run.

The JSON form (`to_json_dict`, schema ``layerscope.profile/1``) is documented
in docs/profile-json.md.  Keys may be added within version 1; none is removed
or renamed.
"""
from __future__ import annotations

import datetime as _dt
import json
import math
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Iterable, Iterator, Mapping, Optional, Sequence, Union

from engine.files import jsonable, write_text_atomically

SCHEMA = "layerscope.profile/1"

MEASURED, ATTRIBUTED, ESTIMATED = "measured", "attributed", "estimated"
DERIVED, PLANNED, EMULATED = "derived", "planned", "emulated"
# Kinds of a time, strongest first: a combination takes the weakest kind it uses.
TIME_KINDS = (MEASURED, DERIVED, ATTRIBUTED, EMULATED, ESTIMATED)
KINDS = TIME_KINDS + (PLANNED,)
UNKNOWN_UNIT = "unknown"

MODE_EXACT, MODE_DEPLOYED = "exact", "deployed"
MODES = (MODE_EXACT, MODE_DEPLOYED)

__all__ = ["SCHEMA", "MEASURED", "ATTRIBUTED", "ESTIMATED", "DERIVED", "PLANNED", "EMULATED", "TIME_KINDS",
           "KINDS", "MODE_EXACT", "MODE_DEPLOYED", "MODES", "UNKNOWN_UNIT", "Transfer", "UnitCalibration",
           "FrozenMap", "TimingStats", "TimingGroup", "NodeTiming", "Profile", "ProfileFormatError",
           "combine_kinds", "kind_problems", "read_kind"]


class ProfileFormatError(ValueError):
    """A JSON file that is not a layerscope.profile/1 document; the message says what is wrong."""


def kind_problem(data: Mapping) -> str:
    """"" when `data["kind"]` is the kind of a time (TIME_KINDS), else what is wrong ("missing", ...)."""
    if "kind" not in data:
        return "missing"
    if data["kind"] not in TIME_KINDS:
        return f"{data['kind']!r} is not one of {', '.join(TIME_KINDS)}"
    return ""


def read_kind(data: Mapping) -> str:
    """The kind of a parsed time; a missing or unknown kind is an error, never `measured`."""
    problem = kind_problem(data)
    if problem:
        raise ValueError(f"kind {problem}")
    return data["kind"]


_JSON_SCALARS = (str, int, float, bool, type(None))


def kind_problems(document: Mapping) -> list[str]:
    """Every figure of a profile document without a valid kind, as "path: problem"
    (e.g. "nodes[3].time.kind: missing").  A figure is any object with a `median_ms` (wherever it
    sits: end_to_end, groups, transfers ...) and every node, which states the kind of its time.
    A document from an agent is checked whole before it is read, so the error names the field."""
    problems: list[str] = []

    def check(mapping: Mapping, path: str) -> None:
        problem = kind_problem(mapping)
        if problem:
            problems.append(f"{path}.kind: {problem}")

    def nested(item: Any) -> bool:
        # A parsed document's types first: an isinstance test against the Mapping ABC for every
        # number and string was 15 of the 28 ms a DenseNet-121 profile took to read (UI thread).
        kind = type(item)
        if kind is dict or kind is list:
            return True
        return kind not in _JSON_SCALARS and isinstance(item, (Mapping, list))

    def visit(value: Any, path: str) -> None:
        if type(value) is dict or isinstance(value, Mapping):
            if "median_ms" in value:
                check(value, path)
            for key, item in value.items():
                # samples and calibration points are numbers: skipped for speed on large profiles
                if key not in ("samples_ms", "points") and nested(item):
                    visit(item, f"{path}.{key}" if path else str(key))
        elif isinstance(value, list):
            for index, item in enumerate(value):
                if nested(item):
                    visit(item, f"{path}[{index}]")

    visit(document, "")
    nodes = document.get("nodes")
    for index, node in enumerate(nodes if isinstance(nodes, list) else ()):
        if isinstance(node, Mapping):
            check(node, f"nodes[{index}]")
    return problems


class FrozenMap(Mapping):
    """A read-only, picklable mapping that keeps insertion order (for `Profile.nodes`)."""

    __slots__ = ("_data",)

    def __init__(self, data: Union[Mapping, Iterable] = ()):
        object.__setattr__(self, "_data", dict(data))

    def __getitem__(self, key):
        return self._data[key]

    def __iter__(self) -> Iterator:
        return iter(self._data)

    def __len__(self) -> int:
        return len(self._data)

    # The Mapping mixins go through __getitem__ key by key; the dict's own views are read-only
    # and several times faster on profiles of 20,000 nodes (compare, overlays).
    def __contains__(self, key) -> bool:
        return key in self._data

    def get(self, key, default=None):
        return self._data.get(key, default)

    def keys(self):
        return self._data.keys()

    def values(self):
        return self._data.values()

    def items(self):
        return self._data.items()

    def __setattr__(self, name, value):
        raise AttributeError("FrozenMap is read-only")

    def __reduce__(self):
        return (FrozenMap, (self._data,))

    def __eq__(self, other):
        return isinstance(other, Mapping) and dict(self.items()) == dict(other.items())

    def __repr__(self) -> str:
        return f"FrozenMap({self._data!r})"


# DESIGN.md: measured > attributed/derived/planned/emulated > estimated.  The middle kinds rank
# alike; this order only decides which of them a mix of them is labelled with.
_WEAKEST_FIRST = (ESTIMATED, EMULATED, PLANNED, ATTRIBUTED, DERIVED, MEASURED)


def combine_kinds(kinds: Iterable[str]) -> str:
    """The kind of a combination of figures: the weakest of its parts; measured for none.
    An unknown kind is an error: it must never come out as a stronger one."""
    present = set(kinds)
    unknown = present.difference(KINDS)
    if unknown:
        raise ValueError(f"unknown figure kind(s) {', '.join(sorted(map(str, unknown)))}; known: {', '.join(KINDS)}")
    return next((kind for kind in _WEAKEST_FIRST if kind in present), MEASURED)


# A run is "disturbed" when at least DISTURBED_SHARE of the layers above 1 % of the time ran
# DISTURBED_SLOWDOWN times their median or slower in it.  Noise of single layers is spread
# over runs; a busy machine slows every layer of a run at once (seen here: 6 consecutive runs
# of the sample with 10-18 of its 28 heavier layers over 1.3x, the other runs with 0-2).
DISTURBED_SLOWDOWN = 1.3
DISTURBED_SHARE = 0.3
DISTURBED_WARNING = "disturbed runs: "
DISTURBED_MIN_LAYERS = 5


def disturbed_runs(groups: Sequence["TimingGroup"], min_share: float = 0.01) -> list[int]:
    """Indexes (0-based, measured runs) of the runs a busy machine slowed as a whole."""
    total = sum(g.time.median_ms for g in groups)
    # Only measured series are in run order (a derived segment's samples are sorted differences).
    heavy = [g.time for g in groups if total > 0 and g.time.median_ms > min_share * total and len(g.time.samples_ms) > 2
             and g.time.kind == MEASURED]
    if len(heavy) < DISTURBED_MIN_LAYERS:  # too few layers to tell a busy machine from one layer's noise
        return []
    runs = min(len(t.samples_ms) for t in heavy)
    slow = [0] * runs
    for stats in heavy:
        limit = DISTURBED_SLOWDOWN * stats.median_ms
        for index in range(runs):
            if stats.samples_ms[index] > limit:
                slow[index] += 1
    needed = max(2, math.ceil(DISTURBED_SHARE * len(heavy)))  # never one slow layer on its own
    return [index for index, count in enumerate(slow) if count >= needed]


def _run_ranges(indexes: Sequence[int]) -> str:
    """[12, 13, 14, 20] -> "runs 13-15, 21" (1-based, as people count runs)."""
    parts, start = [], None
    for position, index in enumerate(indexes):
        if start is None:
            start = index
        if position + 1 == len(indexes) or indexes[position + 1] != index + 1:
            parts.append(f"{start + 1}" if start == index else f"{start + 1}-{index + 1}")
            start = None
    return ("run " if len(indexes) == 1 else "runs ") + ", ".join(parts)


def _percentile(ordered: Sequence[float], q: float) -> float:
    """Linear-interpolation percentile of sorted data (numpy's default method)."""
    if len(ordered) == 1:
        return float(ordered[0])
    position = (len(ordered) - 1) * q / 100.0
    low = math.floor(position)
    high = min(low + 1, len(ordered) - 1)
    return float(ordered[low] + (ordered[high] - ordered[low]) * (position - low))


@dataclass(frozen=True, slots=True)
class TimingStats:
    """Samples of one duration (milliseconds) and their summary.

    cv is the coefficient of variation, population standard deviation / mean
    (0 for a single sample or a zero mean).

    statistic "mean": the runtime reported only a summary of its runs, no run's own time
    (LiteRT's benchmark_model on a phone).  Then median_ms holds the reported mean, p10_ms
    and p90_ms the fastest and the slowest run, samples_ms is empty and `reported_runs`
    says how many runs the summary is of (`TimingStats.from_summary`).
    """

    samples_ms: tuple[float, ...]
    median_ms: float
    p10_ms: float
    p90_ms: float
    cv: float
    kind: str = MEASURED
    statistic: str = "median"
    reported_runs: int = 0

    @classmethod
    def from_samples(cls, samples: Iterable[float], kind: str = MEASURED) -> "TimingStats":
        values = tuple(float(s) for s in samples)
        if not values:
            raise ValueError("TimingStats needs at least one sample")
        if kind not in TIME_KINDS:
            raise ValueError(f"kind of a time must be one of {TIME_KINDS}, got {kind!r}")
        ordered = sorted(values)
        mean = sum(values) / len(values)
        if len(values) > 1 and mean > 0:
            variance = sum((v - mean) ** 2 for v in values) / len(values)
            cv = math.sqrt(variance) / mean
        else:
            cv = 0.0
        return cls(values, _percentile(ordered, 50), _percentile(ordered, 10), _percentile(ordered, 90),
                   cv, kind)

    @classmethod
    def from_summary(cls, mean_ms: float, std_ms: float, min_ms: float, max_ms: float, runs: int,
                     kind: str = MEASURED) -> "TimingStats":
        """A duration the runtime summarised itself (mean, standard deviation, min, max of `runs` runs)."""
        if kind not in TIME_KINDS:
            raise ValueError(f"kind of a time must be one of {TIME_KINDS}, got {kind!r}")
        if runs < 1:
            raise ValueError("TimingStats needs at least one run")
        cv = float(std_ms) / float(mean_ms) if mean_ms > 0 and runs > 1 else 0.0
        return cls((), float(mean_ms), float(min_ms), float(max_ms), cv, kind, "mean", int(runs))

    @property
    def count(self) -> int:
        return len(self.samples_ms) or self.reported_runs

    @property
    def names(self) -> tuple[str, str, str]:
        """What median_ms, p10_ms and p90_ms hold, for labels: a reported summary holds mean, min, max."""
        return ("mean", "min", "max") if self.statistic == "mean" else ("median", "p10", "p90")

    @property
    def mean_ms(self) -> float:
        if not self.samples_ms:  # a reported summary: its mean
            return self.median_ms
        return sum(self.samples_ms) / len(self.samples_ms)

    @property
    def robust_cv(self) -> float:
        """1.4826 * median absolute deviation / median: the CV that a few disturbed runs
        (another process taking the core) do not dominate.  Equals cv for normal noise."""
        if len(self.samples_ms) < 2 or self.median_ms <= 0:
            return 0.0
        deviations = sorted(abs(s - self.median_ms) for s in self.samples_ms)
        return 1.4826 * _percentile(deviations, 50) / self.median_ms

    def scaled(self, factor: float, kind: Optional[str] = None) -> "TimingStats":
        """Every sample times `factor` (how a fused group's time is attributed to one member)."""
        if not self.samples_ms:  # a reported summary scales as a whole
            return replace(self, median_ms=self.median_ms * factor, p10_ms=self.p10_ms * factor,
                           p90_ms=self.p90_ms * factor, kind=kind or self.kind)
        return TimingStats.from_samples((s * factor for s in self.samples_ms), kind or self.kind)

    def to_json_dict(self, with_samples: bool = True) -> dict:
        data = {"median_ms": self.median_ms, "p10_ms": self.p10_ms, "p90_ms": self.p90_ms,
                "cv": self.cv, "robust_cv": self.robust_cv, "kind": self.kind}
        if self.statistic != "median":
            data["statistic"] = self.statistic
            data["reported_runs"] = self.reported_runs
        if with_samples:
            data["samples_ms"] = list(self.samples_ms)
        return data

    @classmethod
    def from_json_dict(cls, data: Mapping) -> "TimingStats":
        samples = tuple(float(s) for s in data.get("samples_ms", ()))
        statistic = str(data.get("statistic", "median"))
        if statistic not in ("median", "mean"):
            raise ValueError(f"statistic {statistic!r} is not one of median, mean")
        return cls(samples, float(data["median_ms"]), float(data["p10_ms"]), float(data["p90_ms"]),
                   float(data.get("cv", 0.0)), read_kind(data), statistic, int(data.get("reported_runs", 0)))


@dataclass(frozen=True, slots=True)
class TimingGroup:
    """One timed kernel and the source nodes it covers.

    Exact mode: one group per source node, group_id == that node's id.
    Deployed mode: a fused kernel; `node_ids` are the source nodes it computes
    (empty for a kernel the runtime inserted, e.g. a layout reorder).
    `kernel` is the runtime's name of the kernel, `kernel_op` its op type.
    Core ML segments: `time` is `derived` (prefix k minus prefix k-1) and `prefix_time`
    is the measured time of the prefix model that ends with the segment, shown beside it.
    """

    group_id: str
    kernel: str
    node_ids: tuple[str, ...]
    time: TimingStats
    kernel_op: str = ""
    prefix_time: Optional[TimingStats] = None

    def to_json_dict(self) -> dict:
        data = {"id": self.group_id, "kernel": self.kernel, "kernel_op": self.kernel_op,
                "node_ids": list(self.node_ids), "time": self.time.to_json_dict()}
        if self.prefix_time is not None:
            data["prefix_time"] = self.prefix_time.to_json_dict()
        return data

    @classmethod
    def from_json_dict(cls, data: Mapping) -> "TimingGroup":
        prefix = data.get("prefix_time")
        return cls(str(data["id"]), str(data.get("kernel", "")), tuple(data.get("node_ids", ())),
                   TimingStats.from_json_dict(data["time"]), str(data.get("kernel_op", "")),
                   TimingStats.from_json_dict(prefix) if prefix else None)


@dataclass(frozen=True, slots=True)
class NodeTiming:
    """Time (and runtime memory figures) of one source node.

    `kind` is the kind of `time`: measured when the node is its own kernel,
    attributed when it shares a fused kernel (the group's time split by FLOPs).
    output_bytes: bytes the node's outputs occupy (from the runtime when it
    reports them, else from static shapes).  memory_bytes: the runtime's own
    figure of memory the kernel touched (activations + parameters + outputs),
    None when the runtime does not report it.
    compute_unit: where the node ran ("CPU", "GPU", "NeuralEngine", ...) or "unknown";
    compute_unit_kind: measured (the runtime reported it) or planned (Core ML's compute
    plan); empty when the unit is unknown.
    """

    node_id: str
    op_type: str
    stage: str
    time: TimingStats
    group_id: str
    kind: str = MEASURED
    output_bytes: Optional[int] = None
    memory_bytes: Optional[int] = None
    compute_unit: str = UNKNOWN_UNIT
    compute_unit_kind: str = ""

    def to_json_dict(self) -> dict:
        return {"id": self.node_id, "op_type": self.op_type, "stage": self.stage, "group": self.group_id,
                "time": self.time.to_json_dict(), "kind": self.kind, "output_bytes": self.output_bytes,
                "memory_bytes": self.memory_bytes, "compute_unit": self.compute_unit,
                "compute_unit_kind": self.compute_unit_kind}

    @classmethod
    def from_json_dict(cls, data: Mapping) -> "NodeTiming":
        time = TimingStats.from_json_dict(data["time"])
        return cls(str(data["id"]), str(data.get("op_type", "")), str(data.get("stage", "")), time,
                   str(data.get("group", data["id"])), read_kind(data),
                   _optional_int(data.get("output_bytes")), _optional_int(data.get("memory_bytes")),
                   str(data.get("compute_unit") or UNKNOWN_UNIT), str(data.get("compute_unit_kind", "")))


@dataclass(frozen=True, slots=True)
class Transfer:
    """One tensor moved between compute units (or between the host and a unit).

    kind: "edge" (producer and consumer on different units), "input" (upload
    of a model input to the unit of its first consumer), "output" (readback of
    a model output), "runtime_copy" (a copy kernel the runtime inserted; time
    measured).  from_node/to_node are node ids (None for the host side or a
    runtime kernel); `kernel` names the runtime's copy kernel.  `time` is None when the
    move was neither measured nor calibrated: the bytes are known, the time is not.
    """

    kind: str
    value: str
    from_unit: str
    to_unit: str
    bytes: Optional[int]
    time: Optional[TimingStats]
    from_node: Optional[str] = None
    to_node: Optional[str] = None
    kernel: str = ""

    def to_json_dict(self) -> dict:
        return {"kind": self.kind, "value": self.value, "from_node": self.from_node, "to_node": self.to_node,
                "from_unit": self.from_unit, "to_unit": self.to_unit, "bytes": self.bytes,
                "kernel": self.kernel, "time": self.time.to_json_dict() if self.time is not None else None}

    @classmethod
    def from_json_dict(cls, data: Mapping) -> "Transfer":
        return cls(str(data["kind"]), str(data.get("value", "")), str(data.get("from_unit", "")),
                   str(data.get("to_unit", "")), None if data.get("bytes") is None else int(data["bytes"]),
                   TimingStats.from_json_dict(data["time"]) if data.get("time") else None,
                   data.get("from_node"), data.get("to_node"),
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


def _read_calibration(data: Mapping) -> dict[str, "UnitCalibration"]:
    calibration = {}
    for unit, fit in (data.get("calibration") or {}).items():
        try:
            calibration[str(unit)] = UnitCalibration.from_json_dict(fit)
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise ProfileFormatError(f"calibration.{unit}: {type(exc).__name__}: {exc}") from None
    return calibration


def _read_transfers(data: Mapping) -> tuple["Transfer", ...]:
    try:
        return tuple(Transfer.from_json_dict(t) for t in data.get("transfers") or ())
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        raise ProfileFormatError(f"malformed transfers: {type(exc).__name__}: {exc}") from None


def _optional_int(value) -> Optional[int]:
    return None if value is None else int(value)


def _optional_float(value) -> Optional[float]:
    return None if value is None else float(value)


def _now_iso() -> str:
    return _dt.datetime.now(_dt.timezone.utc).replace(microsecond=0).isoformat()


@dataclass(frozen=True)
class Profile:
    """Everything one profiling session measured.  Build with `Profile.build` or the constructor.

    end_to_end: plain runs (no profiler), one sample per run; None when no run finished.
    profiled_end_to_end: the same runs' wall time with the profiler on.
    profiler_overhead: profiled median / plain median - 1 (0.05 = the profiler adds 5 %).
    stage_times_ms / op_type_times_ms: sums of node medians (stage in execution
    order of first appearance; op types by descending time).
    hints: plain dicts {rule, message, node_ids, severity}, filled by the caller
    (engine.hints.find_hints) with dataclasses.replace.
    """

    model_path: str
    model_format: str
    target: Mapping[str, Any]
    mode: str
    settings: Mapping[str, Any]
    end_to_end: Optional[TimingStats]
    profiled_end_to_end: Optional[TimingStats]
    profiler_overhead: Optional[float]
    groups: tuple[TimingGroup, ...]
    nodes: Mapping[str, NodeTiming]
    coverage: Optional[float]
    runs_completed: int
    complete: bool = True
    error: str = ""
    stage_times_ms: Mapping[str, float] = field(default_factory=dict)
    op_type_times_ms: Mapping[str, float] = field(default_factory=dict)
    created_at: str = field(default_factory=_now_iso)
    hints: tuple = ()
    # Source nodes the runtime did not run (constants folded before the run): no time, by design.
    untimed_node_ids: tuple[str, ...] = ()
    # Things the reader should know about the figures (e.g. a kernel that could not be mapped).
    warnings: tuple[str, ...] = ()
    # Share of the plain runs' wall time spent waiting for a CPU (other work on the machine);
    # None when not measurable (several threads).  Above ~0.1 the figures are disturbed.
    cpu_wait_share: Optional[float] = None
    # Tensors moved between compute units, and the per-unit transfer fits their estimates use.
    transfers: tuple[Transfer, ...] = ()
    calibration: Mapping[str, UnitCalibration] = field(default_factory=dict)
    schema: str = SCHEMA

    def __post_init__(self):
        # Frozen all the way down where it is cheap: mappings become read-only views.
        for name in ("nodes", "target", "settings", "stage_times_ms", "op_type_times_ms"):
            value = getattr(self, name)
            if not isinstance(value, FrozenMap):
                object.__setattr__(self, name, FrozenMap(value))
        object.__setattr__(self, "groups", tuple(self.groups))
        object.__setattr__(self, "hints", tuple(self.hints))
        object.__setattr__(self, "untimed_node_ids", tuple(self.untimed_node_ids))
        object.__setattr__(self, "warnings", tuple(self.warnings))
        object.__setattr__(self, "transfers", tuple(self.transfers))
        if not isinstance(self.calibration, FrozenMap):
            object.__setattr__(self, "calibration", FrozenMap(self.calibration))

    # -- construction ---------------------------------------------------------------------

    @classmethod
    def build(cls, *, model_path: str, model_format: str, target: Mapping, mode: str, settings: Mapping,
              end_to_end_samples: Sequence[float], profiled_samples: Sequence[float],
              groups: Sequence[TimingGroup], nodes: Sequence[NodeTiming], runs_completed: int,
              complete: bool = True, error: str = "", stage_order: Sequence[str] = (),
              untimed_node_ids: Sequence[str] = (), warnings: Sequence[str] = (),
              cpu_wait_share: Optional[float] = None,
              end_to_end_summary: Optional[TimingStats] = None) -> "Profile":
        """Derive the summary figures (coverage, overhead, stage and op-type sums) from the parts.
        end_to_end_summary: the end-to-end time a runtime summarised itself, when it gives no samples."""
        end_to_end = TimingStats.from_samples(end_to_end_samples) if end_to_end_samples else end_to_end_summary
        profiled = TimingStats.from_samples(profiled_samples) if profiled_samples else None
        overhead = None
        if end_to_end is not None and profiled is not None and end_to_end.median_ms > 0:
            overhead = profiled.median_ms / end_to_end.median_ms - 1.0
        group_total = sum(g.time.median_ms for g in groups)
        coverage = group_total / end_to_end.median_ms if end_to_end is not None and end_to_end.median_ms > 0 \
            else None
        stage_times: dict[str, float] = {name: 0.0 for name in stage_order}
        op_times: dict[str, float] = {}
        for node in nodes:
            stage_times[node.stage] = stage_times.get(node.stage, 0.0) + node.time.median_ms
            op_times[node.op_type] = op_times.get(node.op_type, 0.0) + node.time.median_ms
        stage_times = {k: v for k, v in stage_times.items() if v > 0 or k in stage_order}
        op_times = dict(sorted(op_times.items(), key=lambda item: -item[1]))
        # Derived from the samples like the figures above (a merged or re-attributed profile
        # says it again for its own runs).
        warnings = [w for w in warnings if not w.startswith(DISTURBED_WARNING)]
        disturbed = disturbed_runs(groups)
        if disturbed:
            warnings.append(
                f"{DISTURBED_WARNING}{len(disturbed)} of {runs_completed} ({_run_ranges(disturbed)}): "
                f"{'in each' if len(disturbed) > 1 else 'in it'}, at least {DISTURBED_SHARE * 100:.0f} % of the "
                f"heavier layers ran over {DISTURBED_SLOWDOWN * 100 - 100:.0f} % slower than their median at once, as when other work takes "
                "this computer's CPU or memory. Medians, p10 and p90 hold; per-layer CVs are inflated. Profile "
                "again on a quiet machine for stable CVs")
        return cls(model_path=model_path, model_format=model_format, target=dict(target), mode=mode,
                   settings=dict(settings), end_to_end=end_to_end, profiled_end_to_end=profiled,
                   profiler_overhead=overhead, groups=tuple(groups),
                   nodes={n.node_id: n for n in nodes}, coverage=coverage, runs_completed=runs_completed,
                   complete=complete, error=error, stage_times_ms=stage_times, op_type_times_ms=op_times,
                   untimed_node_ids=tuple(untimed_node_ids), warnings=tuple(warnings),
                   cpu_wait_share=cpu_wait_share)

    # -- queries --------------------------------------------------------------------------

    @property
    def time_names(self) -> tuple[str, str, str]:
        """What this profile's median_ms / p10_ms / p90_ms hold (`TimingStats.names`), for table headers."""
        times = [self.end_to_end] if self.end_to_end else [n.time for n in self.nodes.values()][:1]
        return times[0].names if times else ("median", "p10", "p90")

    @property
    def total_node_ms(self) -> float:
        """Sum of per-node medians (equals the covered groups' sum)."""
        return sum(n.time.median_ms for n in self.nodes.values())

    @property
    def transfer_ms(self) -> float:
        """Sum of the timed transfers' medians (untimed transfers count bytes only)."""
        return sum(t.time.median_ms for t in self.transfers if t.time is not None)

    @property
    def total_group_ms(self) -> float:
        return sum(g.time.median_ms for g in self.groups)

    def group(self, group_id: str) -> TimingGroup:
        for g in self.groups:
            if g.group_id == group_id:
                return g
        raise KeyError(group_id)

    def top_nodes(self, n: int = 10) -> list[NodeTiming]:
        """The n slowest nodes by median time, slowest first."""
        ranked = sorted(self.nodes.values(), key=lambda t: t.time.median_ms, reverse=True)
        return ranked[:n]

    def top_op_types(self, n: int = 10) -> list[tuple[str, float]]:
        """(op_type, summed median ms) of the n most expensive op types."""
        return sorted(self.op_type_times_ms.items(), key=lambda item: -item[1])[:n]

    def share(self, node_id: str) -> float:
        """A node's share of the summed node time (0..1)."""
        total = self.total_node_ms
        return self.nodes[node_id].time.median_ms / total if total > 0 else 0.0

    def stage_shares(self) -> dict[str, float]:
        total = sum(self.stage_times_ms.values())
        return {k: (v / total if total > 0 else 0.0) for k, v in self.stage_times_ms.items()}

    def stage_kind(self, stage: str) -> str:
        return self._kinds_by("stage").get(stage, MEASURED)

    def op_type_kind(self, op_type: str) -> str:
        return self._kinds_by("op_type").get(op_type, MEASURED)

    def stage_kinds(self) -> dict[str, str]:
        """Stage -> the kind of its summed time (the weakest of its nodes' kinds)."""
        return dict(self._kinds_by("stage"))

    def op_type_kinds(self) -> dict[str, str]:
        """Op type -> the kind of its summed time."""
        return dict(self._kinds_by("op_type"))

    def ratio_kinds(self) -> dict[str, Optional[str]]:
        """Kinds of the ratios `coverage` and `profiler_overhead`: the weakest of the figures each
        divides (None when the ratio is not there)."""
        e2e, profiled = self.end_to_end, self.profiled_end_to_end
        return {"coverage": combine_kinds([g.time.kind for g in self.groups] + [e2e.kind])
                if self.coverage is not None and e2e is not None else None,
                "profiler_overhead": combine_kinds([profiled.kind, e2e.kind])
                if self.profiler_overhead is not None and e2e is not None and profiled is not None else None}

    def _kinds_by(self, attribute: str) -> Mapping[str, str]:
        # Cached beside the fields (the profile is immutable): reports ask once per stage and op type.
        cache = self.__dict__.setdefault("_kinds_cache", {})
        if attribute not in cache:
            kinds: dict[str, set] = {}
            for node in self.nodes.values():
                kinds.setdefault(getattr(node, attribute), set()).add(node.kind)
            cache[attribute] = {key: combine_kinds(values) for key, values in kinds.items()}
        return cache[attribute]  # shared: callers outside this class get copies

    def with_hints(self, hints: Iterable[Mapping]) -> "Profile":
        return replace(self, hints=tuple(dict(h) for h in hints))

    # -- JSON -----------------------------------------------------------------------------

    def to_json_dict(self) -> dict:
        node_total = self.total_node_ms
        op_counts: dict[str, int] = {}
        for node in self.nodes.values():
            op_counts[node.op_type] = op_counts.get(node.op_type, 0) + 1
        return {
            "schema": self.schema,
            "created_at": self.created_at,
            "model": {"path": self.model_path, "format": self.model_format},
            "target": dict(self.target),
            "mode": self.mode,
            "settings": jsonable(dict(self.settings)),
            "runs": self.runs_completed,
            "complete": self.complete,
            "error": self.error,
            "warnings": list(self.warnings),
            "end_to_end": self.end_to_end.to_json_dict() if self.end_to_end else None,
            "profiled_end_to_end": self.profiled_end_to_end.to_json_dict() if self.profiled_end_to_end else None,
            "profiler_overhead": self.profiler_overhead,
            "coverage": self.coverage,
            "cpu_wait_share": self.cpu_wait_share,
            "nodes": [n.to_json_dict() for n in self.nodes.values()],
            "untimed_node_ids": list(self.untimed_node_ids),
            "groups": [g.to_json_dict() for g in self.groups],
            "stages": [{"name": name, "median_ms": ms,
                        "share": ms / node_total if node_total > 0 else 0.0,
                        "kind": self.stage_kind(name)} for name, ms in self.stage_times_ms.items()],
            "op_types": [{"op_type": op, "median_ms": ms, "count": op_counts.get(op, 0),
                          "share": ms / node_total if node_total > 0 else 0.0,
                          "kind": self.op_type_kind(op)} for op, ms in self.op_type_times_ms.items()],
            "hints": [jsonable(dict(h)) for h in self.hints],
            "transfers": [t.to_json_dict() for t in self.transfers],
            "calibration": {unit: c.to_json_dict() for unit, c in self.calibration.items()},
        }

    @classmethod
    def from_json_dict(cls, data: Mapping) -> "Profile":
        if not isinstance(data, Mapping):
            raise ProfileFormatError("not a LayerScope profile: the document is not a JSON object")
        schema = data.get("schema")
        if schema != SCHEMA:
            raise ProfileFormatError(f"not a LayerScope profile: schema is {schema!r}, expected {SCHEMA!r}")
        problems = kind_problems(data)
        if problems:
            more = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
            raise ProfileFormatError(f"figure without a valid kind: {problems[0]}{more}")
        try:
            model = data.get("model", {})
            end_to_end = data.get("end_to_end")
            profiled = data.get("profiled_end_to_end")
            return cls(
                model_path=str(model.get("path", "")), model_format=str(model.get("format", "")),
                target=dict(data.get("target", {})), mode=str(data.get("mode", "")),
                settings=dict(data.get("settings", {})),
                end_to_end=TimingStats.from_json_dict(end_to_end) if end_to_end else None,
                profiled_end_to_end=TimingStats.from_json_dict(profiled) if profiled else None,
                profiler_overhead=_optional_float(data.get("profiler_overhead")),
                groups=tuple(TimingGroup.from_json_dict(g) for g in data.get("groups", ())),
                nodes={n["id"]: NodeTiming.from_json_dict(n) for n in data.get("nodes", ())},
                coverage=_optional_float(data.get("coverage")),
                runs_completed=int(data.get("runs", 0)),
                complete=bool(data.get("complete", True)), error=str(data.get("error", "")),
                stage_times_ms={s["name"]: float(s["median_ms"]) for s in data.get("stages", ())},
                op_type_times_ms={o["op_type"]: float(o["median_ms"]) for o in data.get("op_types", ())},
                created_at=str(data.get("created_at", "")),
                hints=tuple(dict(h) for h in data.get("hints", ())),
                untimed_node_ids=tuple(data.get("untimed_node_ids", ())),
                warnings=tuple(str(w) for w in data.get("warnings", ())),
                cpu_wait_share=_optional_float(data.get("cpu_wait_share")),
                transfers=_read_transfers(data), calibration=_read_calibration(data), schema=schema)
        except ProfileFormatError:
            raise
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise ProfileFormatError(f"malformed {SCHEMA} document: {type(exc).__name__}: {exc}") from None

    def to_json(self, indent: Optional[int] = 1) -> str:
        return json.dumps(self.to_json_dict(), indent=indent, allow_nan=False)

    def save_json(self, path: Union[str, Path]) -> Path:
        """Write atomically: a reader never sees a half-written file."""
        return write_text_atomically(path, self.to_json())

    @classmethod
    def load_json(cls, path: Union[str, Path]) -> "Profile":
        path = Path(path)
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise ProfileFormatError(f"{path}: no such file") from None
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise ProfileFormatError(f"{path}: not a JSON file ({exc})") from None
        try:
            return cls.from_json_dict(data)
        except ProfileFormatError as exc:
            raise ProfileFormatError(f"{path}: {exc}") from None
