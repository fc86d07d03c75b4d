"""The bottleneck report: one self-contained HTML file (inline CSS and SVG, no scripts, no links out).

Every figure carries its kind next to it (measured / attributed / estimated),
as DESIGN.md requires; the kind badge is the same everywhere.
"""
from __future__ import annotations

from html import escape
from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping, Optional, Sequence

from engine.inspect import human_bytes, human_count
from engine.report import svg
from engine.files import write_text_atomically
from engine.profile import KINDS

if TYPE_CHECKING:
    from engine.analysis import ModelAnalysis
    from engine.profile import Profile

# Drawing thousands of boxes makes a heavy file; above this the graph is drawn without labels.
GRAPH_LABEL_LIMIT = 600
GRAPH_DRAW_LIMIT = 6000

_CSS = """
body{font-family:-apple-system,Segoe UI,Helvetica,Arial,sans-serif;margin:24px auto;max-width:1100px;color:#222}
h1{font-size:22px;margin-bottom:4px}h2{font-size:17px;margin-top:28px;border-bottom:1px solid #ddd;padding-bottom:4px}
.sub{color:#666;font-size:13px}.cards{display:flex;flex-wrap:wrap;gap:10px;margin:14px 0}
.card{border:1px solid #ddd;border-radius:6px;padding:8px 12px;min-width:150px}
.card .v{font-size:19px;font-weight:600}.card .l{font-size:12px;color:#666}
.kind{display:inline-block;font-size:10px;padding:1px 5px;border-radius:8px;margin-left:4px;vertical-align:middle}
.measured{background:#d9f0d3;color:#1b5e20}.attributed{background:#fff3c4;color:#7a5a00}
.estimated{background:#e3e8f4;color:#2a3f7a}.notrun{background:#eee;color:#666}
.derived{background:#e6f4ea;color:#24573a}.planned{background:#f1e6f6;color:#5b2a7a}.emulated{background:#fde8dc;color:#7a3a12}
table{border-collapse:collapse;font-size:12px;width:100%}th,td{border-bottom:1px solid #eee;padding:3px 6px;text-align:right}
th{background:#f6f6f6}td.t,th.t{text-align:left}.warn{background:#fff4e5;border:1px solid #f0c36d;padding:8px 12px;border-radius:6px}
.hint{border-left:4px solid #e15759;padding:6px 10px;margin:8px 0;background:#fafafa}
.hint.medium{border-color:#f28e2b}.hint.low{border-color:#bbb}.mono{font-family:Menlo,Consolas,monospace;font-size:11px}
details summary{cursor:pointer;color:#345}
"""


NOT_RUN = "not run"


def kind_badge(kind: str) -> str:
    css = kind if kind in KINDS else "notrun"
    return f'<span class="kind {css}" title="how this figure was obtained">{escape(kind)}</span>'


def _card(label: str, value: str, kind: str) -> str:
    return f'<div class="card"><div class="v">{escape(value)}{kind_badge(kind)}</div><div class="l">{escape(label)}</div></div>'


def _ms(value: Optional[float]) -> str:
    return "–" if value is None else f"{value:.3f} ms"


def html_report(profile: "Profile", analysis: "ModelAnalysis", sweep: Optional[Sequence[Mapping[str, Any]]] = None,
                compare: Optional[Mapping[str, Any]] = None, blockers: Optional[Sequence[Mapping[str, Any]]] = None,
                top: int = 15, numerics=None) -> str:
    target = dict(profile.target)
    totals = analysis.totals
    title = Path(profile.model_path).name or "model"
    parts = [f"<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'><title>LayerScope report: "
             f"{escape(title)}</title><style>{_CSS}</style></head><body>",
             f"<h1>Bottleneck report: {escape(title)}</h1>",
             f"<div class='sub'>{escape(profile.model_path)} · target {escape(str(target.get('name', 'cpu')))} "
             f"({escape(str(target.get('device', target.get('cpu', ''))))}) · mode {escape(profile.mode)} · "
             f"{profile.runs_completed} measured runs · {escape(profile.created_at)}</div>"]
    if not profile.complete or profile.error:
        parts.append(f"<p class='warn'>This profile is incomplete: {escape(profile.error or 'stopped early')}. "
                     f"The {profile.runs_completed} runs measured before that are shown.</p>")
    for warning in profile.warnings:  # what the reader must know to read the figures right
        parts.append(f"<p class='warn'>Note: {escape(warning)}</p>")

    e2e = profile.end_to_end
    ratio_kinds = profile.ratio_kinds()
    cards = [
        _card("end-to-end median (p10–p90: " + (f"{e2e.p10_ms:.2f}–{e2e.p90_ms:.2f} ms)" if e2e else "–)"),
              _ms(e2e.median_ms if e2e else None), e2e.kind if e2e else NOT_RUN),
        _card("coverage: per-layer sum / end-to-end",
              "–" if profile.coverage is None else f"{profile.coverage:.2f}", ratio_kinds["coverage"] or NOT_RUN),
        _card("profiler overhead", "–" if profile.profiler_overhead is None
              else f"{100 * profile.profiler_overhead:+.1f} %", ratio_kinds["profiler_overhead"] or NOT_RUN),
        _card("multiply-accumulates", human_count(totals.macs), "estimated"),
        _card("parameters", human_count(totals.params), "estimated"),
        _card("peak activation memory", human_bytes(totals.peak_activation_bytes), "estimated"),
    ]
    parts.append("<div class='cards'>" + "".join(cards) + "</div>")

    parts.append("<h2>Hints</h2>")
    if profile.hints:
        for hint in profile.hints:
            nodes = ", ".join(hint.get("node_ids", [])[:8])
            more = len(hint.get("node_ids", [])) - 8
            parts.append(f"<div class='hint {escape(str(hint.get('severity', 'low')))}'><b>{escape(str(hint.get('rule')))}</b> "
                         f"{kind_badge(str(hint.get('kind', 'unknown')))} {escape(str(hint.get('message', '')))}"
                         f"<div class='mono'>nodes: {escape(nodes)}{f' and {more} more' if more > 0 else ''}</div></div>")
    else:
        parts.append("<p>No rule fired: no single pattern dominates this profile.</p>")

    if blockers:
        parts.append(f"<h2>Cannot run on Core ML: {len(blockers)} nodes</h2><table><tr><th class='t'>node</th>"
                     "<th class='t'>op</th><th class='t'>why</th></tr>")
        for blocker in blockers:
            parts.append(f"<tr><td class='t mono'>{escape(str(blocker.get('node_id', '')))}</td><td class='t'>"
                         f"{escape(str(blocker.get('op_type', '')))}</td><td class='t'>{escape(str(blocker.get('reason', '')))}</td></tr>")
        parts.append("</table>")

    parts.append(_stages_section(profile, analysis))
    parts.append(_top_layers_section(profile, top))
    parts.append(_op_types_section(profile))
    if sweep:
        parts.append(_sweep_section(sweep))
    if compare:
        parts.append(_compare_section(compare))
    if numerics is not None:  # an engine.numerics.NumericsResult of the same model
        from engine.report.numerics_section import numerics_section
        parts.append(numerics_section(numerics))
    parts.append(_graph_section(profile, analysis))
    parts.append(_layer_table(profile, analysis))
    parts.append("<p class='sub'>Made by LayerScope. <b>measured</b>: timed on the target; <b>derived</b>: computed "
                 "from other measurements; <b>attributed</b>: a measured total split by a cost model (fused kernels "
                 "split by FLOPs); <b>planned</b>: what the runtime says it will do; <b>emulated</b>: the CPU "
                 "reference imitating a device; <b>estimated</b>: from shapes or a model of the device, without a "
                 "run. A combination of figures has the weakest kind among them.</p></body></html>")
    return "\n".join(parts)


def _stages_section(profile: "Profile", analysis: "ModelAnalysis") -> str:
    shares = profile.stage_shares()
    segments = [(name, share, f"{100 * share:.0f} % · {profile.stage_times_ms[name]:.2f} ms")
                for name, share in shares.items() if share > 0]
    rows = []
    macs_by_stage = {s.name: s.macs for s in analysis.stages}
    for name, ms in profile.stage_times_ms.items():
        macs = macs_by_stage.get(name, 0)
        mac_share = macs / analysis.totals.macs if analysis.totals.macs else 0
        rows.append(f"<tr><td class='t'>{escape(name)}</td><td>{ms:.3f} ms {kind_badge(profile.stage_kind(name))}</td>"
                    f"<td>{100 * shares.get(name, 0):.1f} %</td><td>{human_count(macs)} {kind_badge('estimated')}</td>"
                    f"<td>{100 * mac_share:.1f} %</td></tr>")
    return ("<h2>Where the time goes, by stage</h2>" + svg.stacked_bar(segments) +
            "<table><tr><th class='t'>stage</th><th>time</th><th>share of time</th><th>MACs</th>"
            "<th>share of MACs</th></tr>" + "".join(rows) + "</table>")


def _top_layers_section(profile: "Profile", top: int) -> str:
    nodes = profile.top_nodes(top)
    total = profile.total_node_ms
    chart = svg.bar_chart(
        [n.node_id for n in nodes], [n.time.median_ms for n in nodes],
        [f"{n.time.median_ms:.3f} ms · {100 * n.time.median_ms / total:.1f} % · {n.op_type} · {n.kind}"
         if total else n.kind for n in nodes],
        lows=[n.time.p10_ms for n in nodes], highs=[n.time.p90_ms for n in nodes],
        colours=[svg.STAGE_COLOURS.get(n.stage, "#9c9c9c") for n in nodes])
    return (f"<h2>Top {len(nodes)} layers by median time</h2><p class='sub'>Bars: median; whiskers: p10–p90; "
            "colour: stage (blue encoder, purple bottleneck, red decoder, green head).</p>" + chart)


def _op_types_section(profile: "Profile") -> str:
    total = profile.total_node_ms
    counts: dict[str, int] = {}
    for node in profile.nodes.values():
        counts[node.op_type] = counts.get(node.op_type, 0) + 1
    rows = "".join(
        f"<tr><td class='t'>{escape(op)}</td><td>{counts.get(op, 0)}</td><td>{ms:.3f} ms "
        f"{kind_badge(profile.op_type_kind(op))}</td><td>{100 * ms / total if total else 0:.1f} %</td>"
        f"<td>{ms / max(1, counts.get(op, 1)):.4f} ms</td></tr>"
        for op, ms in profile.op_type_times_ms.items())
    return ("<h2>By op type</h2><table><tr><th class='t'>op type</th><th>nodes</th><th>time</th><th>share</th>"
            "<th>per node</th></tr>" + rows + "</table>")


def _sweep_section(sweep: Sequence[Mapping[str, Any]]) -> str:
    series: dict[str, tuple[list[str], list[float]]] = {}
    for row in sweep:
        name = str(row.get("series", row.get("target", "latency")))
        xs, ys = series.setdefault(name, ([], []))
        xs.append(str(row.get("setting")))
        ys.append(float(row.get("median_ms", 0.0)))
    chart = svg.line_chart([(name, xs, ys) for name, (xs, ys) in series.items()], "ms (median, measured)")
    rows = "".join(
        f"<tr><td class='t'>{escape(str(r.get('series', r.get('target', ''))))}</td><td class='t'>{escape(str(r.get('setting')))}</td>"
        f"<td>{float(r.get('median_ms', 0)):.3f} ms {kind_badge(str(r.get('kind') or NOT_RUN))}</td>"
        f"<td>{_opt_ms(r.get('p10_ms', r.get('p10')))}</td><td>{_opt_ms(r.get('p90_ms', r.get('p90')))}</td>"
        f"<td>{human_count(r.get('macs'))} {kind_badge('estimated')}</td></tr>" for r in sweep)
    return ("<h2>Latency by setting (sweep)</h2>" + chart + "<table><tr><th class='t'>series</th><th class='t'>setting</th>"
            "<th>median</th><th>p10</th><th>p90</th><th>MACs</th></tr>" + rows + "</table>")


def _opt_ms(value) -> str:
    return "–" if value is None else f"{float(value):.3f} ms"


def _compare_section(compare: Mapping[str, Any]) -> str:
    stages = compare.get("stages", [])
    nodes = compare.get("nodes", [])
    parts = [f"<h2>Comparison: {escape(str(compare.get('a_label', 'A')))} → {escape(str(compare.get('b_label', 'B')))}</h2>"]
    end_to_end = compare.get("end_to_end")
    if end_to_end:
        parts.append(f"<p>End-to-end: {_opt_ms(end_to_end.get('a_ms'))} → {_opt_ms(end_to_end.get('b_ms'))} "
                     f"(ratio {float(end_to_end.get('ratio') or 0):.2f}) "
                     f"{kind_badge(str(end_to_end.get('kind', 'unknown')))}</p>")
    parts.append("<table><tr><th class='t'>stage</th><th>A</th><th>B</th><th>B / A</th></tr>")
    for row in stages:
        parts.append(f"<tr><td class='t'>{escape(str(row.get('name')))}</td><td>{_opt_ms(row.get('a_ms'))}</td>"
                     f"<td>{_opt_ms(row.get('b_ms'))}</td><td>{_ratio(row.get('ratio'))}</td></tr>")
    parts.append("</table>")
    changed = sorted((n for n in nodes if n.get("ratio") is not None), key=lambda n: abs(float(n["ratio"]) - 1),
                     reverse=True)[:20]
    if changed:
        parts.append("<h3>Most changed layers</h3><table><tr><th class='t'>node</th><th>A</th><th>B</th><th>B / A</th></tr>")
        for row in changed:
            parts.append(f"<tr><td class='t mono'>{escape(str(row.get('id')))}</td><td>{_opt_ms(row.get('a_ms'))}</td>"
                         f"<td>{_opt_ms(row.get('b_ms'))}</td><td>{_ratio(row.get('ratio'))}</td></tr>")
        parts.append("</table>")
    return "".join(parts)


def _ratio(value) -> str:
    return "–" if value is None else f"{float(value):.2f}"


def _graph_section(profile: "Profile", analysis: "ModelAnalysis") -> str:
    """The graph drawn top to bottom, each node coloured by its share of the time."""
    from engine.layout import layout_graph

    visible = [i for i in analysis.order if not analysis.nodes[i].is_constant]
    if len(visible) > GRAPH_DRAW_LIMIT:
        return (f"<h2>Graph</h2><p class='sub'>{len(visible)} nodes: too many to draw in a report; "
                "open the model in the LayerScope app.</p>")
    layout = layout_graph(analysis, include_constants=False, include_io=False)
    times = {i: t.time.median_ms for i, t in profile.nodes.items()}
    peak = max(times.values(), default=0.0) or 1.0
    scale = min(1.0, 1000.0 / max(1.0, layout.width))
    width, height = layout.width * scale + 20, layout.height * scale + 20
    labels = len(layout.boxes) <= GRAPH_LABEL_LIMIT
    parts = [f"<h2>Graph, coloured by time</h2><p class='sub'>Darker = slower (median, share of the hottest "
             f"layer); grey = not timed. Hover a box for its figures.</p><div style='overflow:auto;max-height:900px;"
             f"border:1px solid #eee'><svg xmlns='http://www.w3.org/2000/svg' width='{width:.0f}' "
             f"height='{height:.0f}'><g transform='translate(10,10) scale({scale:.4f})'>"]
    for edge in layout.edges:
        points = " ".join(f"{x:.0f},{y:.0f}" for x, y in edge.points)
        parts.append(f"<polyline points='{points}' fill='none' stroke='#bbb' stroke-width='2'/>")
    for node_id, (x, y, w, h) in layout.boxes.items():
        ms = times.get(node_id)
        fill = svg.heat_colour(ms / peak) if ms is not None else "#e6e6e6"
        node = analysis.graph.nodes_by_id.get(node_id)
        op = node.op_type if node is not None else node_id
        kind = profile.nodes[node_id].kind if node_id in profile.nodes else "not run"
        tip = f"{node_id} ({op}): " + (f"{ms:.3f} ms, {kind}" if ms is not None else "not timed")
        parts.append(f"<g><title>{escape(tip)}</title><rect x='{x:.0f}' y='{y:.0f}' width='{w:.0f}' height='{h:.0f}' "
                     f"rx='6' fill='{fill}' stroke='#666'/>")
        if labels:
            parts.append(f"<text x='{x + w / 2:.0f}' y='{y + h / 2 + 5:.0f}' font-size='14' text-anchor='middle'>"
                         f"{escape(op)}</text>")
        parts.append("</g>")
    parts.append("</g></svg></div>")
    return "".join(parts)


def _layer_table(profile: "Profile", analysis: "ModelAnalysis") -> str:
    total = profile.total_node_ms
    rows = []
    for node_id in analysis.order:
        metrics = analysis.nodes[node_id]
        timing = profile.nodes.get(node_id)
        if timing is None and metrics.is_constant:
            continue
        node = analysis.graph.node(node_id)
        if timing is not None:
            t = timing.time
            time_cells = (f"<td>{t.median_ms:.4f}</td><td>{t.p10_ms:.4f}</td><td>{t.p90_ms:.4f}</td>"
                          f"<td>{100 * t.cv:.1f} %</td><td>{kind_badge(timing.kind)}</td>"
                          f"<td>{100 * t.median_ms / total if total else 0:.2f} %</td>")
        else:
            time_cells = "<td colspan='5'>not timed</td><td></td>"
        rows.append(f"<tr><td>{metrics.order}</td><td class='t mono'>{escape(node_id)}</td><td class='t'>"
                    f"{escape(node.op_type)}</td><td class='t'>{escape(metrics.stage)}</td>{time_cells}"
                    f"<td>{human_count(metrics.macs)}</td><td>{human_bytes(metrics.output_bytes)}</td></tr>")
    return ("<h2>Every layer</h2><details><summary>Show the table (" + str(len(rows)) + " layers; MACs and output "
            "sizes are estimated)</summary><table><tr><th>#</th><th class='t'>node</th><th class='t'>op</th>"
            "<th class='t'>stage</th><th>median ms</th><th>p10</th><th>p90</th><th>CV</th><th>kind</th><th>share</th>"
            "<th>MACs</th><th>output</th></tr>" + "".join(rows) + "</table></details>")


def write_html(profile: "Profile", analysis: "ModelAnalysis", path, sweep=None, compare=None, blockers=None,
               numerics=None) -> Path:
    return write_text_atomically(Path(path), html_report(profile, analysis, sweep=sweep, compare=compare,
                                                         blockers=blockers, numerics=numerics))
