"""Machine-readable exports of a profile: CSV per layer, Chrome trace events, Model Explorer node data."""
from __future__ import annotations

import csv
import io
import json
from pathlib import Path
from typing import TYPE_CHECKING, Optional

from engine.files import write_text_atomically

if TYPE_CHECKING:
    from engine.analysis import ModelAnalysis
    from engine.profile import Profile

CSV_COLUMNS = ("order", "id", "name", "op_type", "stage", "namespace", "group", "median_ms", "p10_ms", "p90_ms",
               "cv", "time_kind", "share", "macs", "flops", "params", "output_bytes", "arithmetic_intensity",
               "static_kind", "compute_unit", "compute_unit_kind", "statistic")
# statistic "mean": the runtime reported only a summary (benchmark_model on a phone), so median_ms holds
# its mean and p10_ms / p90_ms the fastest and slowest run (TimingStats.names); the columns keep their names.


def csv_text(profile: "Profile", analysis: "ModelAnalysis") -> str:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(CSV_COLUMNS)
    total = profile.total_node_ms
    for node_id in analysis.order:
        timing = profile.nodes.get(node_id)
        metrics = analysis.nodes[node_id]
        if timing is None and metrics.is_constant:
            continue  # folded before the run: no row, as no kernel ran
        node = analysis.graph.node(node_id)
        time = timing.time if timing is not None else None
        writer.writerow([
            metrics.order, node_id, node.name, node.op_type, metrics.stage, node.namespace,
            timing.group_id if timing else "",
            _num(time.median_ms if time else None), _num(time.p10_ms if time else None),
            _num(time.p90_ms if time else None), _num(time.cv if time else None),
            timing.kind if timing else "not run",
            _num(time.median_ms / total if time and total > 0 else None),
            _num(metrics.macs), _num(metrics.flops), metrics.params, _num(metrics.output_bytes),
            _num(metrics.arithmetic_intensity), "estimated", timing.compute_unit if timing else "",
            timing.compute_unit_kind if timing else "", time.statistic if time else ""])
    return buffer.getvalue()


def _num(value) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:.6g}"
    return str(value)


def write_csv(profile: "Profile", analysis: "ModelAnalysis", path) -> Path:
    return write_text_atomically(Path(path), csv_text(profile, analysis))


def chrome_trace(profile: "Profile", max_runs: int = 10) -> dict:
    """Trace-event JSON (the format chrome://tracing and Perfetto open).

    Process 1 lays out the median of every timed kernel in execution order
    (a typical run); process 2 has one thread per measured run with that run's
    own samples, so run-to-run noise is visible.  Times are in microseconds.
    """
    events: list[dict] = [
        {"name": "process_name", "ph": "M", "pid": 1, "tid": 0, "args": {"name": "median run (measured)"}},
        {"name": "process_name", "ph": "M", "pid": 2, "tid": 0, "args": {"name": "individual runs (measured)"}},
    ]
    groups = list(profile.groups)
    cursor = 0.0
    for group in groups:
        duration = group.time.median_ms * 1000.0
        events.append({"name": group.kernel or group.group_id, "cat": group.kernel_op or "kernel", "ph": "X",
                       "ts": round(cursor, 3), "dur": round(duration, 3), "pid": 1, "tid": 1,
                       "args": {"nodes": list(group.node_ids), "p10_ms": group.time.p10_ms,
                                "p90_ms": group.time.p90_ms, "kind": group.time.kind}})
        cursor += duration
    runs = min(max_runs, min((len(g.time.samples_ms) for g in groups), default=0))  # per-run samples only
    for run in range(runs):
        events.append({"name": "thread_name", "ph": "M", "pid": 2, "tid": run + 1, "args": {"name": f"run {run + 1}"}})
        cursor = 0.0
        for group in groups:
            duration = group.time.samples_ms[run] * 1000.0
            events.append({"name": group.kernel or group.group_id, "cat": group.kernel_op or "kernel", "ph": "X",
                           "ts": round(cursor, 3), "dur": round(duration, 3), "pid": 2, "tid": run + 1,
                           "args": {"nodes": list(group.node_ids)}})
            cursor += duration
    return {"traceEvents": events, "displayTimeUnit": "ms",
            "otherData": {"model": profile.model_path, "target": dict(profile.target), "mode": profile.mode}}


def write_chrome_trace(profile: "Profile", path) -> Path:
    return write_text_atomically(Path(path), json.dumps(chrome_trace(profile)))


def model_explorer_node_data(profile: "Profile", analysis: "ModelAnalysis", graph_id: Optional[str] = None) -> dict:
    """Model Explorer "node data" (ModelNodeData: graph id -> GraphNodeData {results, gradient}).

    Results are keyed by each node's first output tensor name, which Model
    Explorer matches against the node's outputs whatever adapter built the
    graph; the value is the node's median time in ms.  TFLite results are keyed as Model Explorer's
    TFLite adapter names things: one graph per subgraph, under the subgraph's name (else its
    signature key, else "main" / "subgraph_K": the importer names graphs the same way), and each
    node by its operator index within its subgraph ("12"), as Google's benchmark_model profiles
    are painted there.
    """
    by_operator_index = analysis.model.format == "tflite"
    graphs: dict[str, dict] = {}
    main_name = graph_id or analysis.graph.name or "main"
    for node_id, timing in profile.nodes.items():
        value = {"value": round(timing.time.median_ms, 6)}
        if by_operator_index:
            from importers.tflite import parse_operator_node_id
            try:
                subgraph, operator = parse_operator_node_id(node_id)
            except ValueError:
                continue  # not an operator (a whole-model group's id)
            if subgraph >= len(analysis.model.graphs):
                continue
            name = main_name if subgraph == 0 else analysis.model.graphs[subgraph].name
            graphs.setdefault(name, {})[str(operator)] = value
            continue
        node = analysis.graph.nodes_by_id.get(node_id)
        if node is None:
            continue
        graphs.setdefault(main_name, {})[next((out for out in node.outputs if out), node_id)] = value
    gradient = [{"stop": 0, "bgColor": "#fff7bc"}, {"stop": 0.5, "bgColor": "#fe9929"},
                {"stop": 1, "bgColor": "#993404"}]
    return {name: {"results": results, "gradient": gradient} for name, results in (graphs or {main_name: {}}).items()}


def write_model_explorer(profile: "Profile", analysis: "ModelAnalysis", path) -> Path:
    return write_text_atomically(Path(path), json.dumps(model_explorer_node_data(profile, analysis), indent=1))
