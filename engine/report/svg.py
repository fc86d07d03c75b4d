"""Small inline-SVG charts for the offline HTML report (no scripts, no external files)."""
from __future__ import annotations

from html import escape
from typing import Optional, Sequence

# Cold-to-hot ramp used for time shares: light yellow -> orange -> dark red.
HEAT_STOPS = ((0.0, (255, 247, 188)), (0.35, (254, 196, 79)), (0.7, (236, 112, 20)), (1.0, (153, 52, 4)))
STAGE_COLOURS = {"encoder": "#4e79a7", "bottleneck": "#b07aa1", "decoder": "#e15759", "head": "#59a14f",
                 "other": "#9c9c9c", "model": "#9c9c9c"}


def heat_colour(fraction: float) -> str:
    """Hex colour for a value in 0..1 on the heat ramp."""
    fraction = min(1.0, max(0.0, fraction))
    for (low, c0), (high, c1) in zip(HEAT_STOPS, HEAT_STOPS[1:]):
        if fraction <= high:
            t = (fraction - low) / (high - low) if high > low else 0.0
            r, g, b = (round(a + (b_ - a) * t) for a, b_ in zip(c0, c1))
            return f"#{r:02x}{g:02x}{b:02x}"
    r, g, b = HEAT_STOPS[-1][1]
    return f"#{r:02x}{g:02x}{b:02x}"


def _text(x: float, y: float, text: str, anchor: str = "start", size: int = 11, fill: str = "#222",
          weight: str = "normal") -> str:
    return (f'<text x="{x:.1f}" y="{y:.1f}" font-size="{size}" text-anchor="{anchor}" fill="{fill}" '
            f'font-weight="{weight}">{escape(text)}</text>')


def bar_chart(labels: Sequence[str], values: Sequence[float], annotations: Sequence[str],
              lows: Optional[Sequence[float]] = None, highs: Optional[Sequence[float]] = None,
              colours: Optional[Sequence[str]] = None, unit: str = "ms", width: int = 860,
              label_width: int = 300) -> str:
    """Horizontal bars, one per label, with optional p10..p90 whiskers and a note per bar."""
    row, top = 22, 8
    height = top + row * len(labels) + 24
    # Scale to the bars, not the whiskers: one noisy p90 must not squash every bar; long
    # whiskers are clipped at the plot's edge (their full value is in the tooltip and tables).
    scale_max = (max(values) * 1.25 if values else 1.0) or 1.0
    note_width = 250  # the notes get their own column so whiskers never run through them
    plot_width = width - label_width - note_width - 10
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" role="img">']
    for i, (label, value) in enumerate(zip(labels, values)):
        y = top + i * row
        bar = plot_width * value / scale_max
        colour = colours[i] if colours else "#e15759"
        shown = label if len(label) <= 46 else "…" + label[-45:]
        parts.append(_text(label_width - 6, y + 14, shown, "end"))
        parts.append(f'<rect x="{label_width}" y="{y + 3}" width="{max(bar, 1):.1f}" height="{row - 6}" '
                     f'fill="{colour}"><title>{escape(label)}: {value:.4g} {unit}</title></rect>')
        if lows is not None and highs is not None:
            x0 = label_width + plot_width * lows[i] / scale_max
            x1 = label_width + plot_width * min(highs[i], scale_max) / scale_max
            parts.append(f'<line x1="{x0:.1f}" x2="{x1:.1f}" y1="{y + row / 2:.1f}" y2="{y + row / 2:.1f}" '
                         'stroke="#333" stroke-width="1.2"/>')
        parts.append(_text(label_width + plot_width + 10, y + 14, annotations[i], size=10, fill="#444"))
    parts.append(_text(label_width, height - 6, f"0 {unit}", size=9, fill="#777"))
    parts.append(_text(label_width + plot_width, height - 6, f"{scale_max:.3g} {unit}", "end", 9, "#777"))
    parts.append("</svg>")
    return "".join(parts)


def stacked_bar(segments: Sequence[tuple[str, float, str]], width: int = 860) -> str:
    """One bar split into named segments (name, fraction 0..1, caption), e.g. stage shares."""
    height = 64
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" role="img">']
    x = 0.0
    for name, fraction, caption in segments:
        w = width * fraction
        colour = STAGE_COLOURS.get(name, "#9c9c9c")
        parts.append(f'<rect x="{x:.1f}" y="4" width="{w:.1f}" height="30" fill="{colour}" stroke="#fff">'
                     f'<title>{escape(name)}: {escape(caption)}</title></rect>')
        if w > 60:
            parts.append(_text(x + w / 2, 24, name, "middle", 11, "#fff", "bold"))
            parts.append(_text(x + w / 2, 52, caption, "middle", 10, "#333"))
        x += w
    parts.append("</svg>")
    return "".join(parts)


def line_chart(series: Sequence[tuple[str, Sequence[str], Sequence[float]]], y_label: str = "ms",
               width: int = 860, height: int = 300) -> str:
    """Lines of y values over shared categorical x labels: [(series name, x labels, y values)]."""
    palette = ("#4e79a7", "#e15759", "#59a14f", "#f28e2b", "#b07aa1", "#76b7b2")
    left, right, top, bottom = 60, 150, 24, 40
    all_x: list[str] = []
    for _, xs, _ in series:
        all_x.extend(x for x in xs if x not in all_x)
    y_max = max((v for _, _, ys in series for v in ys), default=1.0) or 1.0
    plot_w, plot_h = width - left - right, height - top - bottom
    step = plot_w / max(1, len(all_x) - 1)

    def px(x: str) -> float:
        return left + step * all_x.index(x) if len(all_x) > 1 else left + plot_w / 2

    def py(v: float) -> float:
        return top + plot_h * (1 - v / (y_max * 1.1))

    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" role="img">',
             f'<line x1="{left}" y1="{top + plot_h}" x2="{left + plot_w}" y2="{top + plot_h}" stroke="#888"/>',
             f'<line x1="{left}" y1="{top}" x2="{left}" y2="{top + plot_h}" stroke="#888"/>',
             _text(left, top - 2, y_label, size=10, fill="#555")]
    for tick in range(5):
        value = y_max * 1.1 * tick / 4
        parts.append(_text(left - 6, py(value) + 4, f"{value:.3g}", "end", 9, "#777"))
    for x in all_x:
        parts.append(_text(px(x), top + plot_h + 16, x, "middle", 10, "#333"))
    for index, (name, xs, ys) in enumerate(series):
        colour = palette[index % len(palette)]
        points = " ".join(f"{px(x):.1f},{py(y):.1f}" for x, y in zip(xs, ys))
        parts.append(f'<polyline points="{points}" fill="none" stroke="{colour}" stroke-width="2"/>')
        for x, y in zip(xs, ys):
            parts.append(f'<circle cx="{px(x):.1f}" cy="{py(y):.1f}" r="3.5" fill="{colour}">'
                         f'<title>{escape(name)} {escape(x)}: {y:.4g} {y_label}</title></circle>')
        parts.append(f'<rect x="{left + plot_w + 14}" y="{top + 4 + 18 * index}" width="12" height="12" '
                     f'fill="{colour}"/>')
        parts.append(_text(left + plot_w + 32, top + 14 + 18 * index, name, size=10))
    parts.append("</svg>")
    return "".join(parts)
