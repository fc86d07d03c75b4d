"""The "numerics" section of the HTML report, and the standalone numerics report and CSV.

`numerics_section(result)` is an HTML fragment the bottleneck report includes
when a numerics result is given; `numerics_html(result)` wraps it in a page of
its own (`layerscope numerics --report`).  Every figure carries its kind
(`emulated`, or `measured` for a device's outputs) and the emulation is named.
"""
from __future__ import annotations

import csv
import io
import math
from html import escape
from pathlib import Path
from typing import TYPE_CHECKING

from engine.files import write_text_atomically

if TYPE_CHECKING:
    from engine.numerics import NumericsResult

_EXTRA_CSS = ".emulated{background:#f1e4f7;color:#5b2a7a}.departs{background:#fdecea}"


def _figure(value: float, digits: int = 3) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    if isinstance(value, float) and math.isinf(value):
        return "inf" if value > 0 else "−inf"
    return f"{value:.{digits}g}"


def _badge(kind: str) -> str:
    from engine.report.html_report import kind_badge
    badge = kind_badge(kind)
    return badge.replace("kind notrun", f"kind {escape(kind)}") if kind == "emulated" else badge


def numerics_section(result: "NumericsResult", top: int = 15) -> str:
    """The section: what was compared how, the first departing and overflowing layers, hints, worst layers."""
    badge = _badge(result.kind)
    what = {"device": "device outputs", "package": "converted package"}.get(result.mode, result.precision)
    parts = [f"<style>{_EXTRA_CSS}</style><h2>Numerics: {escape(what)} against the fp32 reference {badge}</h2>",
             f"<p class='sub'>{escape(result.emulation)}.<br>Reference: {escape(result.reference)}. Inputs: "
             f"{escape(result.inputs)}; {result.samples_compared} compared. A layer departs when its error "
             f"(max |reduced − reference| / max |reference|) exceeds {result.tolerance:g} or it produces inf/NaN."
             "</p>"]
    if not result.complete:
        parts.append(f"<p class='warn'>Incomplete: {escape(result.error or 'stopped')}. The "
                     f"{len(result.layers)} layers compared before that are shown.</p>")
    first = result.layers.get(result.first_departing) if result.first_departing else None
    overflow = result.layers.get(result.first_overflow) if result.first_overflow else None
    parts.append("<div class='cards'>"
                 f"<div class='card'><div class='v'>{escape(first.node_id if first else 'none')}{badge}</div>"
                 f"<div class='l'>first departing layer{' (' + escape(first.op_type) + ')' if first else ''}</div></div>"
                 f"<div class='card'><div class='v'>{escape(overflow.node_id if overflow else 'none')}{badge}</div>"
                 f"<div class='l'>first layer beyond ±65504</div></div>"
                 f"<div class='card'><div class='v'>{len(result.layers)}</div><div class='l'>layers compared</div>"
                 "</div></div>")
    for hint in result.hints:
        parts.append(f"<div class='hint {escape(str(hint.get('severity', 'low')))}'><b>{escape(str(hint['rule']))}</b> "
                     f"{_badge(str(hint.get('kind', result.kind)))} {escape(str(hint['message']))}"
                     f"<div class='mono'>nodes: {escape(', '.join(hint.get('node_ids', [])))}</div></div>")
    for warning in result.warnings:
        parts.append(f"<p class='warn'>{escape(warning)}</p>")
    worst = result.worst(top)
    if worst:
        parts.append(f"<table><tr><th class='t'>layer</th><th class='t'>op</th><th>error</th><th>max abs</th>"
                     "<th>max rel</th><th>cosine</th><th>SNR dB</th><th>overflow</th><th>underflow</th>"
                     "<th>inf/NaN</th><th>largest |x|</th><th class='t'>kind</th></tr>")
        for layer in worst:
            css = " class='departs'" if layer.departs else ""
            parts.append(f"<tr{css}><td class='t mono'>{escape(layer.node_id)}</td><td class='t'>"
                         f"{escape(layer.op_type)}</td><td>{_figure(layer.error)}</td>"
                         f"<td>{_figure(layer.max_abs_error)}</td><td>{_figure(layer.max_rel_error)}</td>"
                         f"<td>{_figure(layer.cosine, 6)}</td><td>{_figure(layer.snr_db)}</td>"
                         f"<td>{100 * layer.overflow_share:.2f} %</td><td>{100 * layer.underflow_share:.2f} %</td>"
                         f"<td>{layer.inf_count + layer.nan_count}</td><td>{_figure(layer.largest_reference)}</td>"
                         f"<td class='t'>{_badge(layer.kind)}</td></tr>")
        parts.append("</table>")
    return "\n".join(parts)


def numerics_html(result: "NumericsResult") -> str:
    from engine.report.html_report import _CSS
    title = Path(result.model_path).name or "model"
    return (f"<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'><title>LayerScope numerics: "
            f"{escape(title)}</title><style>{_CSS}</style></head><body><h1>Numerics report: {escape(title)}</h1>"
            f"<div class='sub'>{escape(result.model_path)} · mode {escape(result.mode)}</div>"
            + numerics_section(result, top=40)
            + "<p class='sub'>Made by LayerScope. <b>emulated</b>: the CPU reference imitating a device's "
              "precision; <b>measured</b>: a device's own outputs.</p></body></html>")


def write_numerics_html(result: "NumericsResult", path) -> Path:
    return write_text_atomically(path, numerics_html(result))


CSV_COLUMNS = ("node_id", "op_type", "tensor", "error", "max_abs_error", "max_rel_error", "cosine", "snr_db",
               "overflow_share", "underflow_share", "inf_count", "nan_count", "largest_reference",
               "largest_reduced", "samples", "departs", "kind")


def numerics_csv(result: "NumericsResult") -> str:
    """One row per compared tensor (a layer with several float outputs has several rows)."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(CSV_COLUMNS)
    for layer in result.layers.values():
        for tensor in layer.tensors:
            writer.writerow([layer.node_id, layer.op_type, tensor.name, repr(tensor.error), repr(tensor.max_abs_error),
                             repr(tensor.max_rel_error), repr(tensor.cosine), repr(tensor.snr_db),
                             tensor.overflow_share, tensor.underflow_share, tensor.inf_count, tensor.nan_count,
                             repr(tensor.largest_reference), repr(tensor.largest_reduced), tensor.samples,
                             int(layer.departs), tensor.kind])
    return buffer.getvalue()


def write_numerics_csv(result: "NumericsResult", path) -> Path:
    return write_text_atomically(path, numerics_csv(result))
