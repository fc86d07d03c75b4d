"""Transfer costs: calibrate each compute unit, then estimate every tensor move of a profile.

Calibration.  For each compute unit the agent times a round trip of tensors
of a sweep of sizes (host -> unit -> host through the backend's own runtime:
an ONNX Runtime Identity session on the CPU, a one-op Core ML model pinned to
a compute unit on Apple devices).  The median time per size is fitted by
least squares with a straight line

    ms = overhead_ms + bytes_moved / bandwidth          (bytes_moved = 2 x tensor bytes)

so `overhead_ms` is the fixed cost of a round trip (dispatch, synchronisation)
and `bandwidth` the copy speed.  The points are measured; the fit is `derived`
from them.  A sweep whose times do not grow with the size (noise swamping the
bytes) gives no bandwidth (None): that unit's transfers are then not estimated,
and a warning says why.

Estimation.  A profile knows which unit ran each node (`NodeTiming.compute_unit`).
For every edge whose producer and consumer ran on different units, the bytes of
the tensor (static shapes of the IR) are moved one way: the time is estimated
with `UnitCalibration.one_way_ms` of the non-host side(s) (a move between two
accelerators goes through the host: both sides count).  Model inputs are
uploaded to the unit of their first consumer, outputs read back from the unit
of their producer.  These figures are `estimated`: no run timed them.
"""
from __future__ import annotations

import statistics
import time
from typing import Callable, Iterable, Mapping, Optional, Sequence

import numpy as np

from engine.bridge.results import Transfer, UnitCalibration
from engine.profile import DERIVED, ESTIMATED, TimingStats

__all__ = ["fit_transfer_cost", "calibrate_unit", "DEFAULT_SWEEP_BYTES", "ort_identity_round_trip",
           "estimate_transfers", "HOST_UNIT"]

HOST_UNIT = "CPU"
# Tensor sizes of the sweep: 16 KiB .. 16 MiB, from dispatch-dominated to bandwidth-dominated.
DEFAULT_SWEEP_BYTES = (16 << 10, 64 << 10, 256 << 10, 1 << 20, 4 << 20, 16 << 20)


def fit_transfer_cost(points: Iterable[tuple[float, float]]) -> tuple[float, float, float]:
    """(overhead_ms, bandwidth bytes/s, r2) of ms = overhead + bytes / bandwidth, least squares.

    points: (bytes moved, ms).  Needs two distinct sizes.  A fitted slope that
    is not positive (noise swamping the bytes) gives an infinite bandwidth:
    the bytes then cost nothing measurable at these sizes.
    """
    data = np.asarray([(float(b), float(ms)) for b, ms in points], dtype=np.float64)
    if data.ndim != 2 or len(data) < 2 or len(np.unique(data[:, 0])) < 2:
        raise ValueError("fitting a transfer cost needs points at two different sizes at least")
    design = np.column_stack([np.ones(len(data)), data[:, 0]])
    (overhead, slope), *_ = np.linalg.lstsq(design, data[:, 1], rcond=None)
    predicted = design @ np.array([overhead, slope])
    residual = float(np.sum((data[:, 1] - predicted) ** 2))
    total = float(np.sum((data[:, 1] - data[:, 1].mean()) ** 2))
    r2 = 1.0 - residual / total if total > 0 else 1.0
    bandwidth = float("inf") if slope <= 0 else 1000.0 / slope  # slope is ms per byte
    return float(overhead), bandwidth, r2


def calibrate_unit(unit: str, round_trip_ms: Callable[[int], float],
                   sizes: Sequence[int] = DEFAULT_SWEEP_BYTES, repeats: int = 5, method: str = "",
                   cancel=None) -> UnitCalibration:
    """Time `round_trip_ms(tensor_bytes)` over a sweep of sizes and fit the cost line.

    The first call of each size is a warm-up (allocations); the median of
    `repeats` calls per size is the point.  Points are in bytes moved (both
    ways).  `cancel` (threading.Event) is checked between sizes.
    """
    if len(set(sizes)) < 2:
        raise ValueError("a calibration sweep needs at least two different sizes")
    points = []
    for size in sizes:
        if cancel is not None and cancel.is_set():
            break
        round_trip_ms(int(size))
        samples = [float(round_trip_ms(int(size))) for _ in range(max(1, repeats))]
        points.append((2 * int(size), statistics.median(samples)))
    overhead, bandwidth, r2 = fit_transfer_cost(points)
    return UnitCalibration(unit, max(0.0, overhead), None if bandwidth == float("inf") else bandwidth,
                           tuple(points), r2, method, DERIVED)


def ort_identity_round_trip(provider: str = "CPUExecutionProvider") -> Callable[[int], float]:
    """A round-trip timer through ONNX Runtime: run an Identity model on a float32 tensor of n bytes.

    On the CPU provider this is a copy into the runtime's output and back to
    numpy; on an accelerator provider ORT inserts the host<->device copies.
    """
    import onnxruntime as ort
    from onnx import TensorProto, helper

    graph = helper.make_graph([helper.make_node("Identity", ["x"], ["y"])], "round_trip",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n"])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n"])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    options = ort.SessionOptions()
    options.log_severity_level = 3
    options.intra_op_num_threads = 1
    session = ort.InferenceSession(model.SerializeToString(), options, providers=[provider])
    arrays: dict[int, np.ndarray] = {}

    def round_trip(tensor_bytes: int) -> float:
        array = arrays.get(tensor_bytes)
        if array is None:
            array = arrays[tensor_bytes] = np.random.default_rng(0).random(max(1, tensor_bytes // 4),
                                                                          dtype=np.float32)
        start = time.perf_counter()
        session.run(["y"], {"x": array})
        return (time.perf_counter() - start) * 1000.0

    return round_trip


def _transfer_ms(from_unit: str, to_unit: str, tensor_bytes: int,
                 calibration: Mapping[str, UnitCalibration]) -> Optional[float]:
    """Estimated one-way move; None when a unit involved has no calibration."""
    sides = [u for u in (from_unit, to_unit) if u != HOST_UNIT] or [HOST_UNIT]
    total = 0.0
    for unit in sides:
        fit = calibration.get(unit)
        if fit is None:
            return None
        total += fit.one_way_ms(tensor_bytes)
    return total


def estimate_transfers(graph, node_units: Mapping[str, str], calibration: Mapping[str, UnitCalibration],
                       include_io: bool = True, keep_untimed: bool = False) -> tuple[list[Transfer], list[str]]:
    """Estimated transfers of one profiled graph: cross-unit edges, input upload, output readback.

    graph: engine.ir.Graph of the model as it ran (static shapes give bytes).
    node_units: node id -> compute unit for the nodes that ran.
    keep_untimed: a move between units without a calibration is kept with its bytes and
    time None (a phone: the units are planned, nothing there is calibrated) instead of dropped.
    Returns (transfers, warnings).  An edge is counted once per (tensor, consumer unit):
    a tensor read by two nodes on the same other unit moves once.
    """
    transfers: list[Transfer] = []
    warnings: list[str] = []
    unfitted = sorted(unit for unit, fit in calibration.items() if fit.bandwidth_bytes_per_s is None)
    if unfitted:
        warnings.append(f"the transfer calibration of {', '.join(unfitted)} found no measurable bandwidth (the "
                        "round trips did not take longer for larger tensors): no fit, so their transfers are not "
                        "estimated")
        calibration = {unit: fit for unit, fit in calibration.items() if unit not in unfitted}
    missing_units: set[str] = set()
    unsized: list[str] = []
    producers = graph.producers()
    consumers = graph.consumers()

    def add(kind: str, value: str, from_unit: str, to_unit: str, from_node, to_node) -> None:
        value_type = graph.value_type(value)
        size = value_type.byte_size if value_type is not None else None
        if size is None:
            unsized.append(value)
            return
        ms = _transfer_ms(from_unit, to_unit, size, calibration)
        if ms is None:
            missing_units.update(u for u in (from_unit, to_unit) if u not in calibration)
            if keep_untimed:
                transfers.append(Transfer(kind, value, from_unit, to_unit, size, None, from_node, to_node))
            return
        transfers.append(Transfer(kind, value, from_unit, to_unit, size,
                                  TimingStats.from_samples([ms], ESTIMATED), from_node, to_node))

    for node in graph.nodes:
        unit = node_units.get(node.id)
        if unit is None:
            continue
        moved_to: set[str] = set()
        for value in node.outputs:
            for consumer in consumers.get(value, ()):
                other = node_units.get(consumer.id)
                if other is None or other == unit or (value, other) in moved_to:
                    continue
                moved_to.add((value, other))
                add("edge", value, unit, other, node.id, consumer.id)
    if include_io:
        for value in graph.inputs:
            if graph.values.get(value) is not None and graph.values[value].is_constant:
                continue
            first = next((c for c in consumers.get(value, ()) if c.id in node_units), None)
            if first is not None:
                add("input", value, HOST_UNIT, node_units[first.id], None, first.id)
        for value in graph.outputs:
            producer = producers.get(value)
            if producer is not None and producer.id in node_units:
                add("output", value, node_units[producer.id], HOST_UNIT, producer.id, None)
    missing_units.difference_update(unfitted)
    if missing_units:
        warnings.append(f"no transfer calibration for unit(s) {', '.join(sorted(missing_units))}: "
                        + ("their transfers show bytes, time unknown" if keep_untimed
                           else "their transfers are not estimated"))
    if unsized:
        warnings.append(f"{len(unsized)} moved tensor(s) have no static size, so no transfer estimate: "
                        f"{', '.join(unsized[:3])}{' ...' if len(unsized) > 3 else ''}")
    return transfers, warnings
