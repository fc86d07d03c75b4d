"""`layerscope inspect`: the static summary of a model, as text and as versioned JSON.

JSON schema "layerscope.inspect/1" is documented in docs/inspect-json.md.
Keys may be added in later versions of schema 1; none is removed or renamed.
"""
from __future__ import annotations

from collections import Counter
from typing import Optional

from engine.analysis import ModelAnalysis
from engine.ir import Graph, TensorType

SCHEMA = "layerscope.inspect/1"


def _type_doc(t: Optional[TensorType]) -> dict:
    if t is None:
        return {"dtype": None, "shape": None}
    return {"dtype": t.dtype, "shape": None if t.shape is None else list(t.shape)}


def _io_doc(graph: Graph, names) -> list[dict]:
    return [{"name": name, **_type_doc(graph.value_type(name))} for name in names]


def inspect_document(analysis: ModelAnalysis) -> dict:
    model, graph, totals = analysis.model, analysis.graph, analysis.totals
    nodes_by_id = graph.nodes_by_id
    nodes = []
    for node_id in analysis.order:
        metrics = analysis.nodes[node_id]
        node = nodes_by_id[node_id]
        nodes.append({
            "id": node_id, "name": node.name, "op_type": node.op_type, "domain": node.domain,
            "namespace": node.namespace, "stage": metrics.stage, "order": metrics.order,
            "is_constant": metrics.is_constant,
            "inputs": _io_doc(graph, [n for n in node.inputs if n]),
            "outputs": _io_doc(graph, [n for n in node.outputs if n]),
            "params": metrics.params, "buffers": metrics.buffers, "param_bytes": metrics.param_bytes,
            "macs": metrics.macs, "flops": metrics.flops, "output_bytes": metrics.output_bytes,
            "bytes_moved": metrics.bytes_moved, "arithmetic_intensity": metrics.arithmetic_intensity,
            "cost_known": metrics.cost_known, "kind": "estimated",
        })
    return {
        "schema": SCHEMA,
        "model": {"path": model.path, "format": model.format, "producer": model.producer,
                  "graph": graph.name, "graphs": [g.name for g in model.graphs],
                  "metadata": dict(model.metadata),
                  "inputs": _io_doc(graph, graph.inputs), "outputs": _io_doc(graph, graph.outputs),
                  "warnings": list(model.warnings)},
        "conventions": dict(analysis.conventions),
        "totals": {"nodes": totals.nodes, "compute_nodes": totals.compute_nodes,
                   "constant_nodes": totals.constant_nodes, "params": totals.params,
                   "params_by_dtype": dict(totals.params_by_dtype), "buffers": totals.buffers,
                   "weight_bytes": totals.weight_bytes, "macs": totals.macs, "flops": totals.flops,
                   "peak_activation_bytes": totals.peak_activation_bytes,
                   "peak_node_id": totals.peak_node_id,
                   "unknown_cost_nodes": list(totals.unknown_cost_nodes), "kind": "estimated"},
        "stages": [{"name": s.name, "kind": s.kind, "node_ids": list(s.node_ids), "macs": s.macs,
                    "flops": s.flops, "params": s.params} for s in analysis.stages],
        "op_types": dict(Counter(analysis.nodes[i].op_type for i in analysis.order
                                 if not analysis.nodes[i].is_constant)),
        "nodes": nodes,
    }


def human_count(value: Optional[float], unit: str = "") -> str:
    if value is None:
        return "unknown"
    for threshold, suffix in ((1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(value) >= threshold:
            return f"{value / threshold:.2f} {suffix}{unit}".rstrip()
    return f"{value:g} {unit}".rstrip()


def human_bytes(value: Optional[float]) -> str:
    if value is None:
        return "unknown"
    for threshold, suffix in ((1 << 30, "GiB"), (1 << 20, "MiB"), (1 << 10, "KiB")):
        if value >= threshold:
            return f"{value / threshold:.2f} {suffix}"
    return f"{int(value)} B"


def summary_text(analysis: ModelAnalysis, top: int = 10) -> str:
    model, graph, totals = analysis.model, analysis.graph, analysis.totals
    lines = [f"Model     {model.path}",
             f"Format    {model.format}   producer: {model.producer}"]
    if len(model.graphs) > 1:
        lines.append(f"Graphs    {len(model.graphs)} ({', '.join(g.name for g in model.graphs)}); showing '{graph.name}'")
    for label, names in (("Inputs", graph.inputs), ("Outputs", graph.outputs)):
        for i, name in enumerate(names):
            t = graph.value_type(name)
            lines.append(f"{label if i == 0 else '':<9} {name}: {t.dtype if t else '?'} "
                         f"{t.shape_text() if t else '?'}")
    ops = Counter(analysis.nodes[i].op_type for i in analysis.order if not analysis.nodes[i].is_constant)
    lines.append(f"Nodes     {totals.nodes} ({totals.compute_nodes} compute, "
                 f"{totals.constant_nodes} folded constants)")
    lines.append("          " + ", ".join(f"{op} {count}" for op, count in ops.most_common()))
    lines.append(f"Params    {human_count(totals.params)} ({totals.params:,})"
                 + (f"  + {totals.buffers:,} buffers (BatchNorm statistics)" if totals.buffers else ""))
    lines.append(f"Weights   {human_bytes(totals.weight_bytes)}  "
                 + ", ".join(f"{dtype}: {count:,}" for dtype, count in totals.params_by_dtype.items()))
    lines.append(f"MACs      {human_count(totals.macs)}   FLOPs {human_count(totals.flops)}   (estimated)")
    lines.append(f"Peak activation memory  {human_bytes(totals.peak_activation_bytes)}"
                 + (f" at {totals.peak_node_id}" if totals.peak_node_id else ""))
    if totals.unknown_cost_nodes:
        lines.append(f"Unknown cost  {len(totals.unknown_cost_nodes)} nodes: "
                     + ", ".join(totals.unknown_cost_nodes[:5]))
    lines.append("")
    lines.append("Stages (share of MACs)")
    for stage in analysis.stages:
        share = 100.0 * stage.macs / totals.macs if totals.macs else 0.0
        compute = sum(1 for i in stage.node_ids if not analysis.nodes[i].is_constant)
        lines.append(f"  {stage.name:<11} {compute:>6} nodes  {human_count(stage.macs):>10} MACs  {share:5.1f} %")
    lines.append("")
    lines.append(f"Heaviest {top} layers (estimated MACs)")
    width = max([len(m.node_id) for m in analysis.heaviest(top)] + [4])
    width = min(width, 48)
    for m in analysis.heaviest(top):
        share = 100.0 * (m.macs or 0) / totals.macs if totals.macs else 0.0
        lines.append(f"  {m.node_id[:width]:<{width}}  {m.op_type:<18} {m.stage:<10} "
                     f"{human_count(m.macs):>10}  {share:5.1f} %  out {human_bytes(m.output_bytes)}")
    if model.warnings:
        lines.append("")
        lines.append("Warnings")
        lines.extend(f"  - {w}" for w in model.warnings)
    return "\n".join(lines)


def quantization_text(quantization) -> str:
    """A tensor's quantization parameters in one line (engine.ir.Value.quantization): 'scale 0.0078, zero
    point 128' or 'per-channel on axis 0 (32 channels): scale 0.5 … 0.125, zero point 0'; '' when none."""
    if not quantization:
        return ""
    scales, zero_points = quantization.get("scale") or (), quantization.get("zero_point") or ()
    channels = int(quantization.get("channels", len(scales)))

    def values(numbers, fmt) -> str:
        shown = sorted(set(numbers))
        if len(shown) == 1:
            return format(shown[0], fmt)
        return f"{format(min(shown), fmt)} … {format(max(shown), fmt)}" + ("" if len(numbers) == channels else
                                                                          f" (first {len(numbers)})")
    parts = []
    if scales:
        where = f"per-channel on axis {quantization.get('axis', 0)} ({channels} channels): " if channels > 1 else ""
        parts.append(f"{where}scale {values(scales, '.4g')}")
        if zero_points:
            parts.append(f"zero point {values(zero_points, 'd')}")
    if quantization.get("min"):
        parts.append(f"range {quantization['min'][0]:.4g} … {quantization['max'][0]:.4g}")
    if quantization.get("details"):
        parts.append(str(quantization["details"]))
    if quantization.get("sparse"):
        parts.append("sparse weights")
    return ", ".join(parts)
