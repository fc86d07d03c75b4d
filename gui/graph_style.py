"""Colours, overlay definitions and number formats of the graph view (gui.graph_view).

Shared by the drawing (gui.graph_drawing), the interaction (gui.graph_interaction) and the
groups (gui.graph_groups) modules, and by the compare, numerics and inspector views.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional

from PySide6.QtGui import QColor

from engine.inspect import human_bytes, human_count
from engine.layout import GROUP_PREFIX, INPUT_PREFIX, OUTPUT_PREFIX

CATEGORY_COLORS = {
    "conv/linear": "#9ecae9",
    "normalization": "#b5e0c4",
    "activation": "#ffd8a8",
    "pooling": "#d4b9f0",
    "data movement": "#e3e3e3",
    "upsampling": "#f4a6a6",
    "elementwise": "#fff0a8",
    "constant": "#f4f4f4",
    "io": "#ffffff",
    "other": "#d9c8b4",
    "group": "#e6e0f3",  # a collapsed group (stage or namespace): one box for many nodes
}
GROUP_PEN_COLOR = QColor("#5b4a8b")
# Overlay gradient (light yellow -> orange -> red): black text stays readable on every stop.
GRADIENT_STOPS = ((0.0, QColor("#ffffcc")), (0.5, QColor("#fd8d3c")), (1.0, QColor("#e31a1c")))
UNKNOWN_COLOR = QColor("#d0d0d0")
ZERO_COLOR = QColor("#ffffff")  # known to be zero (a Relu has no MACs): not the same as "small"
BOX_PEN = QColor("#5a5a5a")
EDGE_COLOR = QColor("#7a7a7a")
TOP_PEN_COLOR = QColor("#1f3fbf")
# Boxes linked to the selection of another view (source <-> converted model): a colour no fill uses.
LINK_PEN_COLOR = QColor("#d6007a")
LABEL_MIN_SCALE = 0.3  # below this zoom labels are unreadable: not drawn
LABEL_MAX_COUNT = 4000  # more visible boxes than this: labels not drawn (too small anyway)


def labels_drawn_at(level_of_detail: float) -> bool:
    """Whether labels are drawn at this zoom (a painter's level of detail).  Qt's level of detail
    of a view at exactly LABEL_MIN_SCALE comes out a hair below it when the view is far from the
    scene's origin (0.2999999999996 at x = 100,000: Fit graph on a wide folded model)."""
    return level_of_detail >= LABEL_MIN_SCALE - 1e-9


TITLE_FONT_PIXELS = 13  # a box's first line, bold: its op type (a group: its name)
TEXT_FONT_PIXELS = 11  # its other lines: node name, tensor type, a group's totals and time
# The smallest text drawn, in device pixels: a box's bold title at the zoom where labels start
# (13 px x 0.3 = 3.9 px: "Conv", "layers.7" still tell apart).  The 11 px lines are 3.3 px there,
# a grey smear nobody reads, two of a box's three lines to paint; they come back one zoom step in
# (0.36).
MIN_TEXT_PIXELS = TITLE_FONT_PIXELS * LABEL_MIN_SCALE


def text_drawn_at(font_pixels: float, level_of_detail: float, device_pixel_ratio: float = 1.0) -> bool:
    """Whether a line of text in a font `font_pixels` tall is drawn at this zoom: labels are drawn
    (`labels_drawn_at`) and the line is at least MIN_TEXT_PIXELS tall in device pixels (a
    high-density screen shows smaller text readably)."""
    return (labels_drawn_at(level_of_detail)
            and font_pixels * level_of_detail * device_pixel_ratio >= MIN_TEXT_PIXELS - 1e-6)


@dataclass(frozen=True)
class OverlaySpec:
    key: str
    title: str
    metric: str  # NodeMetrics attribute (source "static") or profile figure (source "profile")
    formatter: str  # "count", "bytes", "ratio", "ms" or "category"
    unit: str = ""
    source: str = "static"  # "static": engine.analysis (estimated); "profile": the selected profile
    low_is_hot: bool = False  # the small values are the problem (memory-bound layers): drawn hot, outlined

    @property
    def needs_profile(self) -> bool:
        return self.source == "profile"


OVERLAYS: dict[str, Optional[OverlaySpec]] = {
    "none": None,
    "time": OverlaySpec("time", "Time (median)", "median_ms", "ms", "ms", source="profile"),
    "compute_unit": OverlaySpec("compute_unit", "Compute unit", "compute_unit", "category", source="profile"),
    # Bridge profiles carry tensor transfers between units (estimated from a measured calibration).
    "transfer": OverlaySpec("transfer", "Transfer cost", "transfer_ms", "ms", "ms", source="profile"),
    "macs": OverlaySpec("macs", "MACs", "macs", "count", "MAC"),
    "params": OverlaySpec("params", "Parameters", "params", "count"),
    "output_bytes": OverlaySpec("output_bytes", "Output memory", "output_bytes", "bytes"),
    # Low intensity = memory-bound, the usual bottleneck on phones: that end is drawn red.
    "arithmetic_intensity": OverlaySpec("arithmetic_intensity", "Intensity (low: memory-bound)",
                                        "arithmetic_intensity", "ratio", "FLOP/B", low_is_hot=True),
}
OVERLAY_TITLES = {"none": "Op category", "time": "Time (profile)", "compute_unit": "Compute unit (profile)",
                  "transfer": "Transfer cost (profile)",
                  "macs": "MACs", "params": "Parameters", "output_bytes": "Output memory",
                  "arithmetic_intensity": "Arithmetic intensity"}
COMPUTE_UNIT_COLORS = {"CPU": "#9ecae9", "GPU": "#f4a6a6", "ANE": "#b5e0c4", "NeuralEngine": "#b5e0c4",
                       "NPU": "#b5e0c4", "DSP": "#d4b9f0"}
OTHER_UNIT_COLOR = "#d9c8b4"
# Diverging colours of a ratio B / A (compare view): blue = B faster, white = equal, red = B slower.
DIVERGING_STOPS = ((0.0, QColor("#2166ac")), (0.5, QColor("#f7f7f7")), (1.0, QColor("#b2182b")))
RATIO_LIMIT = 4.0  # ratios beyond 1/4 .. 4 get the end colours
# Edge pen widths by tensor bytes (log scale), set once when the scene is built.
EDGE_MIN_WIDTH, EDGE_MAX_WIDTH, EDGE_WIDTH_STEPS = 1.0, 4.5, 8


def format_value(value: Optional[float], formatter: str, unit: str = "") -> str:
    if value is None:
        return "unknown"
    if formatter == "bytes":
        return human_bytes(value)
    if formatter == "ratio":
        return f"{value:.3g} {unit}".strip()
    if formatter == "ms":
        return format_ms(value)
    return human_count(value, unit)


def format_ms(value: float) -> str:
    """Milliseconds with three significant digits, trailing zeros kept (0.0120 ms, 1.00 ms, 123 ms)."""
    if value >= 100:
        return f"{value:.0f} ms"
    if value == 0:
        return "0 ms"
    return f"{value:#.3g} ms"


def gradient_color(t: float) -> QColor:
    """Colour at position t in [0, 1] of the overlay gradient."""
    t = min(1.0, max(0.0, t))
    for (t0, c0), (t1, c1) in zip(GRADIENT_STOPS, GRADIENT_STOPS[1:]):
        if t <= t1:
            f = 0.0 if t1 == t0 else (t - t0) / (t1 - t0)
            return QColor.fromRgbF(c0.redF() + (c1.redF() - c0.redF()) * f,
                                   c0.greenF() + (c1.greenF() - c0.greenF()) * f,
                                   c0.blueF() + (c1.blueF() - c0.blueF()) * f)
    return QColor(GRADIENT_STOPS[-1][1])


def diverging_color(ratio: Optional[float], limit: float = RATIO_LIMIT) -> QColor:
    """Colour of a ratio B / A on a log scale: 1 is neutral, 1/limit and below blue, limit and above red."""
    if ratio is None or not math.isfinite(ratio) or ratio <= 0:
        return QColor(UNKNOWN_COLOR)
    t = 0.5 + 0.5 * max(-1.0, min(1.0, math.log(ratio) / math.log(limit)))
    for (t0, c0), (t1, c1) in zip(DIVERGING_STOPS, DIVERGING_STOPS[1:]):
        if t <= t1:
            f = 0.0 if t1 == t0 else (t - t0) / (t1 - t0)
            return QColor.fromRgbF(c0.redF() + (c1.redF() - c0.redF()) * f,
                                   c0.greenF() + (c1.greenF() - c0.greenF()) * f,
                                   c0.blueF() + (c1.blueF() - c0.blueF()) * f)
    return QColor(DIVERGING_STOPS[-1][1])


def unit_color(unit: str) -> QColor:
    return QColor(COMPUTE_UNIT_COLORS.get(unit, OTHER_UNIT_COLOR))


def node_transfers(profile) -> dict[str, list]:
    """Node id -> the profile's transfers charged to it: into the node (its consumer), or out of it
    when nothing consumes the tensor (a graph output).  Empty for profiles without transfers."""
    charged: dict[str, list] = {}
    for transfer in getattr(profile, "transfers", ()) or ():
        node_id = transfer.to_node or transfer.from_node
        if node_id:
            charged.setdefault(node_id, []).append(transfer)
    return charged


def _type_text(value_type) -> str:
    return "type unknown" if value_type is None else f"{value_type.dtype} {value_type.shape_text()}"


def is_io(node_id: str) -> bool:
    return node_id.startswith((INPUT_PREFIX, OUTPUT_PREFIX))


def is_group(node_id: str) -> bool:
    return node_id.startswith(GROUP_PREFIX)
