"""The bottleneck report: one self-contained HTML file (inline CSS, SVG and one small script; no links out).

Every figure carries its kind next to it (measured / attributed / estimated),
as DESIGN.md requires; the kind badge is the same everywhere.  Layers are named
as people recognise them (engine.naming), never by bare internal id.

One report can hold several profiles of the same model (targets, compute
units, input sizes): the first is the primary one (hints, stages, graph and
layer table are of it); a "Targets side by side" section compares them all.

Sections are functions returning an HTML fragment that starts with its <h2>;
`html_report` lists them in order.  The numerics results (`numerics=`, an
engine.numerics.NumericsResult) and any section a caller passes as
`extra_sections` go after the per-target sections and before the graph.
"""
from __future__ import annotations

from html import escape
from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping, Optional, Sequence

from engine.files import write_text_atomically
from engine.gc_pause import collector_paused
from engine.hints import finding
from engine.inspect import human_bytes, human_count
from engine.naming import layer_names, layer_names_for_profile
from engine.report import svg
from engine.report.graph_view import GRAPH_CSS, graph_section
from engine.profile import KINDS

if TYPE_CHECKING:
    from engine.analysis import ModelAnalysis
    from engine.profile import Profile

# The every-layer table lists at most this many rows (the slowest, in execution order): a row is
# about 350 bytes, and the CSV export holds every layer.
LAYER_TABLE_LIMIT = 500
# Colours of the targets in the side-by-side charts.
TARGET_COLOURS = ("#4e79a7", "#e15759", "#59a14f", "#f28e2b", "#b07aa1", "#76b7b2", "#edc948", "#9c755f")

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
details summary{cursor:pointer;color:#345}.guidance{color:#555;font-style:italic}.evidence{color:#333;font-size:12px}
""" + GRAPH_CSS


NOT_RUN = "not run"


def kind_badge(kind: str) -> str:
    css = kind if kind in KINDS else "notrun"
    return f'<span class="kind {css}" title="how this figure was obtained">{escape(kind)}</span>'


def _card(label: str, value: str, kind: str) -> str:
    return f'<div class="card"><div class="v">{escape(value)}{kind_badge(kind)}</div><div class="l">{escape(label)}</div></div>'


def _ms(value: Optional[float]) -> str:
    return "–" if value is None else f"{value:.3f} ms"


def as_profile_list(profiles) -> list["Profile"]:
    from engine.profile import Profile
    return [profiles] if isinstance(profiles, Profile) else list(profiles)


def target_labels(profiles: Sequence["Profile"]) -> list[str]:
    """What tells the profiles apart ('cpu exact 160x160'); a repeated label gets '#2', '#3'."""
    from engine.compare import profile_label
    labels, seen = [], {}
    for profile in profiles:
        label = profile_label(profile)
        seen[label] = seen.get(label, 0) + 1
        labels.append(label if seen[label] == 1 else f"{label} #{seen[label]}")
    return labels


def html_report(profiles, analysis: Optional["ModelAnalysis"], sweep: Optional[Sequence[Mapping[str, Any]]] = None,
                compare: Optional[Mapping[str, Any]] = None, blockers: Optional[Sequence[Mapping[str, Any]]] = None,
                top: int = 15, extra_sections: Sequence[str] = (), numerics=None) -> str:
    """The report of one profile, or of several of the same model side by side (the first is the primary).

    `analysis` is None when the model file is not at hand: the report then has
    no graph and no static figures, and says so.
    """
    with collector_paused():
        if numerics is not None:  # an engine.numerics.NumericsResult of the same model
            from engine.report.numerics_section import numerics_section
            extra_sections = [numerics_section(numerics), *extra_sections]
        return _html_report(as_profile_list(profiles), analysis, sweep, compare, blockers, top, extra_sections)


def _html_report(profiles: list["Profile"], analysis: Optional["ModelAnalysis"], sweep, compare, blockers,
                 top: int, extra_sections: Sequence[str]) -> str:
    if not profiles:
        raise ValueError("a report needs at least one profile")
    profile = profiles[0]
    labels = target_labels(profiles)
    names = layer_names(analysis) if analysis is not None else layer_names_for_profile(profile)
    target = dict(profile.target)
    title = Path(profile.model_path).name or "model"
    parts = [f"<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'><title>LayerScope report: "
             f"{escape(title)}</title><style>{_CSS}</style></head><body>",
             f"<h1>Bottleneck report: {escape(title)}</h1>",
             f"<div class='sub'>{escape(profile.model_path)} · target {escape(str(target.get('name', 'cpu')))} "
             f"({escape(str(target.get('device', target.get('cpu', ''))))}) · mode {escape(profile.mode)} · "
             f"{profile.runs_completed} measured runs · {escape(profile.created_at)}"
             + (f" · {len(profiles)} targets side by side" if len(profiles) > 1 else "") + "</div>"]
    for label, each in zip(labels, profiles):
        if not each.complete or each.error:
            parts.append(f"<p class='warn'>The profile {escape(label)} is incomplete: "
                         f"{escape(each.error or 'stopped early')}. The {each.runs_completed} runs measured before "
                         "that are shown.</p>")
    for warning in profile.warnings:  # what the reader must know to read the figures right
        parts.append(f"<p class='warn'>Note: {escape(warning)}</p>")
    if analysis is None:
        parts.append("<p class='warn'>The model file named in the profile is not at hand: no graph, and no "
                     "static figures (MACs, parameters). Give it with <code>--model</code>.</p>")

    e2e = profile.end_to_end
    ratio_kinds = profile.ratio_kinds()
    cards = [
        _card("end-to-end {} ({}–{}: ".format(*profile.time_names)
              + (f"{e2e.p10_ms:.2f}–{e2e.p90_ms:.2f} ms)" if e2e else "–)"),
              _ms(e2e.median_ms if e2e else None), e2e.kind if e2e else NOT_RUN),
        _card("coverage: per-layer sum / end-to-end",
              "–" if profile.coverage is None else f"{profile.coverage:.2f}", ratio_kinds["coverage"] or NOT_RUN),
        _card("profiler overhead", "–" if profile.profiler_overhead is None
              else f"{100 * profile.profiler_overhead:+.1f} %", ratio_kinds["profiler_overhead"] or NOT_RUN),
    ]
    if analysis is not None:
        totals = analysis.totals
        cards += [_card("multiply-accumulates", human_count(totals.macs), "estimated"),
                  _card("parameters", human_count(totals.params), "estimated"),
                  _card("peak activation memory", human_bytes(totals.peak_activation_bytes), "estimated")]
    parts.append("<div class='cards'>" + "".join(cards) + "</div>")

    if len(profiles) > 1:
        parts.append(targets_section(profiles, labels, names, top))
    for label, each in zip(labels, profiles):
        parts.append(_hints_section(each, names, label if len(profiles) > 1 else ""))

    if blockers:
        parts.append(f"<h2>Cannot run on Core ML: {len(blockers)} nodes</h2><table><tr><th class='t'>node</th>"
                     "<th class='t'>op</th><th class='t'>why</th></tr>")
        for blocker in blockers:
            node_id = str(blocker.get('node_id', ''))
            parts.append(f"<tr><td class='t'>{escape(names.get(node_id, node_id))}</td><td class='t'>"
                         f"{escape(str(blocker.get('op_type', '')))}</td><td class='t'>{escape(str(blocker.get('reason', '')))}</td></tr>")
        parts.append("</table>")

    parts.append(_stages_section(profile, analysis))
    if analysis is not None:
        parts.append(_repeated_blocks_section(profile, analysis))
    parts.append(_top_layers_section(profile, names, top))
    parts.append(_op_types_section(profile))
    if sweep:
        parts.append(_sweep_section(sweep))
    if compare:
        parts.append(_compare_section(compare, names))
    parts.extend(extra_sections)
    if analysis is not None:
        parts.append(graph_section(analysis, profile, names))
    parts.append(_layer_table(profile, analysis, names))
    parts.append("<p class='sub'>Made by LayerScope. <b>measured</b>: timed on the target; <b>derived</b>: computed "
                 "from other measurements; <b>attributed</b>: a measured total split by a cost model (fused kernels "
                 "split by FLOPs); <b>planned</b>: what the runtime says it will do; <b>emulated</b>: the CPU "
                 "reference imitating a device; <b>estimated</b>: from shapes or a model of the device, without a "
                 "run. A combination of figures has the weakest kind among them. <i>General guidance</i> in a hint "
                 "is what is commonly true of other hardware; this profile did not measure it.</p></body></html>")
    return "\n".join(parts)


def _hints_section(profile: "Profile", names: Mapping[str, str], label: str) -> str:
    parts = [f"<h2>Hints{' · ' + escape(label) if label else ''}</h2>"]
    if not profile.hints:
        parts.append("<p>No rule fired: no single pattern dominates this profile.</p>")
    for hint in profile.hints:
        node_ids = [str(n) for n in hint.get("node_ids", [])]
        layers = "; ".join(names.get(n, n) for n in node_ids[:8])
        more = len(node_ids) - 8
        message = finding(hint)  # the guidance is shown on its own line, marked
        guidance = str(hint.get("guidance") or "")
        parts.append(
            f"<div class='hint {escape(str(hint.get('severity', 'low')))}'><b>{escape(str(hint.get('rule')))}</b> "
            f"{kind_badge(str(hint.get('kind', 'unknown')))} {escape(message)}"
            + (f"<div class='evidence'>Evidence ({escape(str(hint.get('kind', 'unknown')))}): "
               f"{escape(str(hint['evidence']))}</div>" if hint.get("evidence") else "")
            + (f"<div class='guidance'>General guidance, not measured by this profile: {escape(guidance)}</div>"
               if guidance else "")
            + f"<div class='mono'>layers: {escape(layers)}{f' and {more} more' if more > 0 else ''}</div></div>")
    return "".join(parts)


def bottleneck_stage(profile: "Profile") -> Optional[tuple[str, float]]:
    """(stage with the most time, its share of the summed layer medians), None without timings."""
    shares = profile.stage_shares()
    if not shares:
        return None
    name = max(shares, key=shares.get)
    return name, shares[name]


def targets_section(profiles: Sequence["Profile"], labels: Sequence[str], names: Mapping[str, str],
                    top: int = 15) -> str:
    """One summary table, per-stage bars per target, and the top layers' time on each target."""
    reference = profiles[0].end_to_end.median_ms if profiles[0].end_to_end else None
    rows = []
    for label, profile in zip(labels, profiles):
        e2e = profile.end_to_end
        ratio = (f"{e2e.median_ms / reference:.2f}x" if e2e is not None and reference else "–")
        bottleneck = bottleneck_stage(profile)
        rows.append(
            f"<tr><td class='t'>{escape(label)}</td><td class='t'>{escape(str(profile.target.get('device', profile.target.get('name', ''))))}</td>"
            f"<td>{_ms(e2e.median_ms if e2e else None)} {kind_badge(e2e.kind if e2e else NOT_RUN)}</td>"
            f"<td>{'–' if e2e is None else f'{e2e.p10_ms:.3f}–{e2e.p90_ms:.3f}'}"
            f"{'' if e2e is None or e2e.statistic == 'median' else ' (mean: min–max)'}</td><td>{ratio}</td>"
            f"<td class='t'>{escape(bottleneck[0]) + f' ({100 * bottleneck[1]:.0f} %)' if bottleneck else '–'}</td>"
            f"<td>{profile.runs_completed}{'' if profile.complete else ' (incomplete)'}</td></tr>")
    parts = [f"<h2>Targets side by side ({len(profiles)})</h2><table><tr><th class='t'>target</th>"
             "<th class='t'>device</th><th>end-to-end median</th><th>p10–p90 ms</th><th>vs first</th>"
             "<th class='t'>bottleneck stage (share)</th><th>runs</th></tr>" + "".join(rows) + "</table>"]

    stages: list[str] = []
    for profile in profiles:
        stages.extend(s for s in profile.stage_times_ms if s not in stages)
    bar_labels, values, notes, colours = [], [], [], []
    for stage in stages:
        for index, (label, profile) in enumerate(zip(labels, profiles)):
            ms = profile.stage_times_ms.get(stage)
            if ms is None:
                continue
            bar_labels.append(f"{stage} · {label}")
            values.append(ms)
            notes.append(f"{ms:.3f} ms · {100 * profile.stage_shares().get(stage, 0):.0f} % · "
                         f"{profile.stage_kind(stage)}")
            colours.append(TARGET_COLOURS[index % len(TARGET_COLOURS)])
    if values:
        parts.append("<h3>Time per stage on each target</h3><p class='sub'>Sum of the layer medians per stage; "
                     "one colour per target.</p>" + svg.bar_chart(bar_labels, values, notes, colours=colours))

    order: list[str] = []
    for profile in profiles:
        order.extend(n.node_id for n in profile.top_nodes(top) if n.node_id not in order)
    order.sort(key=lambda i: -max((p.nodes[i].time.median_ms for p in profiles if i in p.nodes), default=0.0))
    order = order[:top]
    header = "".join(f"<th>{escape(label)}</th>" for label in labels)
    table = [f"<h3>Top layers on each target</h3><table><tr><th class='t'>layer</th><th class='t'>op</th>"
             f"<th class='t'>stage</th>{header}</tr>"]
    for node_id in order:
        first = next(p.nodes[node_id] for p in profiles if node_id in p.nodes)
        cells = []
        for profile in profiles:
            timing = profile.nodes.get(node_id)
            cells.append("<td>–</td>" if timing is None else
                         f"<td>{timing.time.median_ms:.3f} ms {kind_badge(timing.kind)}</td>")
        table.append(f"<tr><td class='t'>{escape(names.get(node_id, node_id))}</td><td class='t'>"
                     f"{escape(first.op_type)}</td><td class='t'>{escape(first.stage)}</td>{''.join(cells)}</tr>")
    table.append("</table>")
    parts.append("".join(table))
    return "".join(parts)


def _stages_section(profile: "Profile", analysis: Optional["ModelAnalysis"]) -> str:
    shares = profile.stage_shares()
    segments = [(name, share, f"{100 * share:.0f} % · {profile.stage_times_ms[name]:.2f} ms")
                for name, share in shares.items() if share > 0]
    rows = []
    macs_by_stage = {s.name: s.macs for s in analysis.stages} if analysis is not None else {}
    all_macs = analysis.totals.macs if analysis is not None else 0
    for name, ms in profile.stage_times_ms.items():
        macs = macs_by_stage.get(name)
        static = (f"<td>{human_count(macs)} {kind_badge('estimated')}</td>"
                  f"<td>{100 * macs / all_macs if all_macs else 0:.1f} %</td>") if macs is not None \
            else "<td>unknown</td><td>–</td>"
        rows.append(f"<tr><td class='t'>{escape(name)}</td><td>{ms:.3f} ms {kind_badge(profile.stage_kind(name))}</td>"
                    f"<td>{100 * shares.get(name, 0):.1f} %</td>{static}</tr>")
    return ("<h2>Where the time goes, by stage</h2>" + svg.stacked_bar(segments) +
            "<table><tr><th class='t'>stage</th><th>time</th><th>share of time</th><th>MACs</th>"
            "<th>share of MACs</th></tr>" + "".join(rows) + "</table>")


def _repeated_blocks_section(profile: "Profile", analysis: "ModelAnalysis") -> str:
    """A decoder's layers and other repeated blocks: the slowest block against the median one (the
    app's inspector and `layerscope profile` say the same); empty when the model repeats none."""
    from engine.grouping import repeated_block_lines
    lines = repeated_block_lines(analysis, profile)
    if not lines:
        return ""
    return ("<h2>Repeated blocks</h2><ul>" + "".join(f"<li>{escape(line)}</li>" for line in lines)
            + "</ul>")


def _top_layers_section(profile: "Profile", names: Mapping[str, str], top: int) -> str:
    nodes = profile.top_nodes(top)
    total = profile.total_node_ms
    chart = svg.bar_chart(
        [names.get(n.node_id, n.node_id) for n in nodes], [n.time.median_ms for n in nodes],
        [f"{n.time.median_ms:.3f} ms · {100 * n.time.median_ms / total:.1f} % · {n.op_type} · {n.kind}"
         if total else n.kind for n in nodes],
        lows=[n.time.p10_ms for n in nodes], highs=[n.time.p90_ms for n in nodes],
        colours=[svg.STAGE_COLOURS.get(n.stage, "#9c9c9c") for n in nodes])
    statistic, low, high = profile.time_names
    return (f"<h2>Top {len(nodes)} layers by {statistic} time</h2><p class='sub'>Bars: {statistic}; "
            f"whiskers: {low}–{high}; "
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
        if row.get("median_ms") is None:
            continue  # a setting that did not run (its error is in the table)
        name = str(row.get("series", row.get("target", "latency")))
        xs, ys = series.setdefault(name, ([], []))
        xs.append(str(row.get("setting")))
        ys.append(float(row.get("median_ms", 0.0)))
    chart = svg.line_chart([(name, xs, ys) for name, (xs, ys) in series.items()], "ms (median, measured)")
    rows = "".join(
        f"<tr><td class='t'>{escape(str(r.get('series', r.get('target', ''))))}</td><td class='t'>{escape(str(r.get('setting')))}</td>"
        f"<td>{_opt_ms(r.get('median_ms'))} {kind_badge(str(r.get('kind') or NOT_RUN))}"
        f"{escape(' ' + str(r['error'])) if r.get('median_ms') is None and r.get('error') else ''}</td>"
        f"<td>{_opt_ms(r.get('p10_ms', r.get('p10')))}</td><td>{_opt_ms(r.get('p90_ms', r.get('p90')))}</td>"
        f"<td>{human_count(r.get('macs'))} {kind_badge('estimated')}</td></tr>" for r in sweep)
    return ("<h2>Latency by setting (sweep)</h2>" + chart + "<table><tr><th class='t'>series</th><th class='t'>setting</th>"
            "<th>median</th><th>p10</th><th>p90</th><th>MACs</th></tr>" + rows + "</table>")


def _opt_ms(value) -> str:
    return "–" if value is None else f"{float(value):.3f} ms"


def _compare_section(compare: Mapping[str, Any], names: Mapping[str, str]) -> str:
    stages = compare.get("stages", [])
    nodes = compare.get("nodes", [])
    parts = [f"<h2>Comparison: {escape(str(compare.get('a_label', 'A')))} → {escape(str(compare.get('b_label', 'B')))}</h2>"]
    figures = [(side, compare.get(f"{side.lower()}_figures")) for side in ("A", "B")]
    if any(text for _, text in figures):
        parts.append("<p>" + "<br>".join(f"{side}: {escape(str(text))}" for side, text in figures if text) + "</p>")
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
        parts.append("<h3>Most changed layers</h3><table><tr><th class='t'>layer</th><th>A</th><th>B</th><th>B / A</th></tr>")
        for row in changed:
            node_id = str(row.get('id'))
            parts.append(f"<tr><td class='t'>{escape(names.get(node_id, node_id))}</td><td>{_opt_ms(row.get('a_ms'))}</td>"
                         f"<td>{_opt_ms(row.get('b_ms'))}</td><td>{_ratio(row.get('ratio'))}</td></tr>")
        parts.append("</table>")
    return "".join(parts)


def _ratio(value) -> str:
    return "–" if value is None else f"{float(value):.2f}"


def _layer_table(profile: "Profile", analysis: Optional["ModelAnalysis"], names: Mapping[str, str]) -> str:
    total = profile.total_node_ms
    if analysis is not None:
        by_id = analysis.graph.nodes_by_id
        rows_of = [(analysis.nodes[i].order, i, by_id[i].op_type, analysis.nodes[i].stage,
                    analysis.nodes[i].macs, analysis.nodes[i].output_bytes)
                   for i in analysis.order if i in profile.nodes or not analysis.nodes[i].is_constant]
    else:
        rows_of = [(k, i, t.op_type, t.stage, None, t.output_bytes) for k, (i, t) in enumerate(profile.nodes.items())]
    shown = rows_of
    if len(rows_of) > LAYER_TABLE_LIMIT:  # the slowest, kept in execution order
        slowest = {i for i in sorted(profile.nodes, key=lambda i: -profile.nodes[i].time.median_ms)[:LAYER_TABLE_LIMIT]}
        shown = [row for row in rows_of if row[1] in slowest]
    rows = []
    for order, node_id, op_type, stage, macs, output_bytes in shown:
        timing = profile.nodes.get(node_id)
        if timing is not None:
            t = timing.time
            time_cells = (f"<td>{t.median_ms:.4f}</td><td>{t.p10_ms:.4f}</td><td>{t.p90_ms:.4f}</td>"
                          f"<td>{100 * t.cv:.1f} %</td><td>{kind_badge(timing.kind)}</td>"
                          f"<td>{100 * t.median_ms / total if total else 0:.2f} %</td>")
        else:
            time_cells = "<td colspan='5'>not timed</td><td></td>"
        rows.append(f"<tr><td>{order}</td><td class='t'>{escape(names.get(node_id, node_id))}</td><td class='t'>"
                    f"{escape(op_type)}</td><td class='t'>{escape(stage)}</td>{time_cells}"
                    f"<td>{human_count(macs) if macs is not None else '–'}</td>"
                    f"<td>{human_bytes(output_bytes) if output_bytes is not None else '–'}</td></tr>")
    what = (f"{len(rows)} layers" if len(shown) == len(rows_of) else
            f"the {len(rows)} slowest of {len(rows_of)} layers; the CSV export has every one")
    return ("<h2>Every layer</h2><details><summary>Show the table (" + what + "; MACs and output "
            "sizes are estimated)</summary><table><tr><th>#</th><th class='t'>layer</th><th class='t'>op</th>"
            "<th class='t'>stage</th><th>{} ms</th><th>{}</th><th>{}</th>".format(*profile.time_names) +
            "<th>CV</th><th>kind</th><th>share</th>"
            "<th>MACs</th><th>output</th></tr>" + "".join(rows) + "</table></details>")


def write_html(profiles, analysis: Optional["ModelAnalysis"], path, sweep=None, compare=None, blockers=None,
               extra_sections: Sequence[str] = (), numerics=None) -> Path:
    """Write `html_report` to `path` (atomically); `profiles`: one Profile or several of the same model."""
    return write_text_atomically(Path(path), html_report(profiles, analysis, sweep=sweep, compare=compare,
                                                         blockers=blockers, extra_sections=extra_sections,
                                                         numerics=numerics))
