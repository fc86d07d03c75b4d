"""Numerics in the app: Profile > Numerics… (a dialog that runs engine.numerics in a worker), the
"numeric error" overlay on the graph, and the Inspector's numerics section.

The overlay paints each box by its layer's error (max |fp16 - fp32| / max |fp32|) on a log
scale, outlines the first departing layer, and draws the edges that carry tensors beyond the
fp16 range as thick red dashed lines on top of the normal edges.  The figures are `emulated`
(or `measured` for a device's outputs): the legend and the Inspector say so.
"""
from __future__ import annotations

import math
import threading
from pathlib import Path
from typing import Optional

from PySide6.QtCore import Qt, QThread, Signal
from PySide6.QtGui import QColor, QPainterPath, QPen, QPolygonF
from PySide6.QtCore import QPointF
from PySide6.QtWidgets import (QComboBox, QDialog, QDoubleSpinBox, QFileDialog, QFormLayout, QHBoxLayout, QLabel,
                               QLineEdit, QPushButton, QSpinBox, QVBoxLayout, QWidget)

from engine.ir import ModelLoadError
from engine.numerics import (DEFAULT_TOLERANCE, HISTOGRAM_LABELS, MODES, NumericsError, NumericsResult,
                             NumericsSettings, estimate_seconds, run_numerics)
from engine.targets import TargetError
from gui.job_footer import JobFooter

OVERLAY_KEY = "numerics"
OVERLAY_TITLE = "Numeric error (fp16)"
OVERFLOW_EDGE_PEN = QPen(QColor("#d6004c"), 5.0, Qt.PenStyle.DashLine)
# An inf error (the layer made inf/NaN) is painted as the top of the scale: this many times the
# largest finite error, so it stays the reddest box without flattening the others' colours.
INF_FACTOR = 10.0
MODE_TITLES = {"fp16-storage": "fp16 storage (fast): fp32 arithmetic, outputs rounded to fp16",
               "fp16-compute": "fp16 compute (slow): the whole model in numpy float16"}
_SPARK = " ▁▂▃▄▅▆▇█"


# ============================================================================ worker and dialog

class NumericsWorker(QThread):
    """Runs engine.numerics.run_numerics off the UI thread; reports through queued signals."""

    progressed = Signal(int, int, str)
    succeeded = Signal(object)  # NumericsResult
    failed = Signal(str)

    def __init__(self, model_path: str, settings: NumericsSettings, parent=None):
        super().__init__(parent)
        self.model_path = model_path
        self.settings = settings
        self.cancel_event = threading.Event()

    def cancel(self) -> None:
        self.cancel_event.set()

    def run(self) -> None:
        try:
            result = run_numerics(self.model_path, self.settings, self.progressed.emit, self.cancel_event)
        except (NumericsError, TargetError, ModelLoadError) as exc:
            self.failed.emit(str(exc))
        except Exception as exc:  # an engine bug must not kill the app: say what happened
            self.failed.emit(f"unexpected {type(exc).__name__} while comparing: {exc}")
        else:
            self.succeeded.emit(result)


class NumericsDialog(QDialog):
    """Modeless: mode, inputs, tolerance; Run starts a worker with progress and Cancel; the result is emitted."""

    resultReady = Signal(object)  # NumericsResult

    def __init__(self, model_path: str, total_macs: int = 0, parent: Optional[QWidget] = None):
        super().__init__(parent)
        self.setWindowTitle("Numerics: where does fp16 break the model?")
        self.model_path = model_path
        self.total_macs = total_macs
        self.worker: Optional[NumericsWorker] = None
        self.result: Optional[NumericsResult] = None
        layout = QVBoxLayout(self)
        intro = QLabel("Runs the model in fp32 on ONNX Runtime keeping every intermediate, again in emulated "
                       "fp16, and compares every layer. The figures are emulated on this computer, not "
                       "measured on a device.")
        intro.setWordWrap(True)
        layout.addWidget(intro)
        form = QFormLayout()
        self.mode_combo = QComboBox()
        for mode in MODES:
            self.mode_combo.addItem(MODE_TITLES[mode], mode)
        self.mode_combo.currentIndexChanged.connect(self._update_estimate)
        form.addRow("Mode", self.mode_combo)
        self.inputs_combo = QComboBox()
        self.inputs_combo.addItem("random: uniform [0, 1)", "random")
        self.inputs_combo.addItem("normal: standard normal", "normal")
        self.inputs_combo.addItem("from .npz files…", "npz")
        self.inputs_combo.currentIndexChanged.connect(self._inputs_changed)
        form.addRow("Inputs", self.inputs_combo)
        files_row = QHBoxLayout()
        self.files_field = QLineEdit()
        self.files_field.setPlaceholderText("one or more .npz files, arrays named after the inputs")
        self.files_field.setEnabled(False)
        self.browse_button = QPushButton("Browse…")
        self.browse_button.setEnabled(False)
        self.browse_button.clicked.connect(self._browse)
        files_row.addWidget(self.files_field, 1)
        files_row.addWidget(self.browse_button)
        form.addRow("Files", files_row)
        self.samples_spin = QSpinBox()
        self.samples_spin.setRange(1, 1000)
        self.samples_spin.valueChanged.connect(self._update_estimate)
        form.addRow("Generated inputs", self.samples_spin)
        self.tolerance_spin = QDoubleSpinBox()
        self.tolerance_spin.setDecimals(5)
        self.tolerance_spin.setRange(1e-5, 10.0)
        self.tolerance_spin.setSingleStep(0.005)
        self.tolerance_spin.setValue(DEFAULT_TOLERANCE)
        self.tolerance_spin.setToolTip("A layer departs above this error: max |fp16 − fp32| / max |fp32|")
        form.addRow("Tolerance", self.tolerance_spin)
        layout.addLayout(form)
        self.estimate_label = QLabel("")
        self.estimate_label.setWordWrap(True)
        layout.addWidget(self.estimate_label)
        self.run_button = QPushButton("Run")
        self.run_button.setDefault(True)
        self.run_button.clicked.connect(self.start)
        self.cancel_button = QPushButton("Cancel")
        self.cancel_button.setEnabled(False)
        self.cancel_button.clicked.connect(self.cancel)
        self.close_button = QPushButton("Close")
        self.close_button.clicked.connect(self.close)
        self.footer = JobFooter((self.run_button, self.cancel_button, self.close_button))
        layout.addWidget(self.footer)
        self._update_estimate()
        self.resize(560, self.sizeHint().height())

    def _inputs_changed(self) -> None:
        from_files = self.inputs_combo.currentData() == "npz"
        self.files_field.setEnabled(from_files)
        self.browse_button.setEnabled(from_files)
        self.samples_spin.setEnabled(not from_files)
        self._update_estimate()

    def _browse(self) -> None:
        paths, _ = QFileDialog.getOpenFileNames(self, "Input arrays", str(Path(self.model_path).parent),
                                                "NumPy arrays (*.npz)")
        if paths:
            self.files_field.setText("; ".join(paths))

    def _update_estimate(self) -> None:
        mode = self.mode_combo.currentData()
        samples = self.samples_spin.value() if self.inputs_combo.currentData() != "npz" else 1
        if not self.total_macs:
            self.estimate_label.setText("Duration: unknown (the model's cost is unknown).")
            return
        seconds = estimate_seconds(self.total_macs, mode, samples)
        self.estimate_label.setText(f"About {seconds:.0f} s on this kind of computer (estimated from the model's "
                                    f"multiply-accumulates{'' if samples == 1 else ', per input'}); "
                                    "it runs in the background and can be cancelled.")

    def settings(self) -> NumericsSettings:
        """The settings of the fields.  Raises NumericsError naming the field that is wrong."""
        choice = self.inputs_combo.currentData()
        if choice == "npz":
            files = tuple(p.strip() for p in self.files_field.text().split(";") if p.strip())
            if not files:
                raise NumericsError("choose one or more .npz files (Browse…), or generated inputs")
            inputs = files
        else:
            inputs = (choice,)
        return NumericsSettings(mode=self.mode_combo.currentData(), inputs=inputs,
                                samples=self.samples_spin.value(), tolerance=self.tolerance_spin.value())

    def start(self) -> Optional[NumericsWorker]:
        try:
            settings = self.settings()
        except NumericsError as exc:
            self.footer.status.setText(f"<span style='color:#b00'>{exc}</span>")
            return None
        self.worker = worker = NumericsWorker(self.model_path, settings, self)
        worker.progressed.connect(self.footer.show_progress)
        worker.succeeded.connect(self._succeeded)
        worker.failed.connect(self._failed)
        worker.finished.connect(lambda: self._set_running(False))
        self._set_running(True)
        self.footer.show_busy("Preparing the fp32 reference…")
        worker.start()
        return worker

    def cancel(self) -> None:
        if self.worker is not None:
            self.worker.cancel()
            self.footer.status.setText("Stopping after the current layer…")

    def _set_running(self, running: bool) -> None:
        self.run_button.setEnabled(not running)
        self.cancel_button.setEnabled(running)
        for widget in (self.mode_combo, self.inputs_combo, self.samples_spin, self.tolerance_spin):
            widget.setEnabled(not running)

    def _succeeded(self, result: NumericsResult) -> None:
        self.result = result
        first = result.first_departing or "none"
        state = "" if result.complete else f" — stopped ({result.error}); the layers compared are shown"
        self.footer.show_finished(f"{len(result.layers)} layers compared; first departing layer: {first}; "
                                  f"first overflow: {result.first_overflow or 'none'}{state}", result.complete)
        self.resultReady.emit(result)

    def _failed(self, message: str) -> None:
        self.footer.show_finished("", complete=False)  # failed: the bar stays where it stopped
        self.footer.status.setText(f"<span style='color:#b00'>{message}</span>")

    def closeEvent(self, event) -> None:
        if self.worker is not None and self.worker.isRunning():
            self.worker.cancel()
            self.worker.wait(30_000)
        super().closeEvent(event)


# ============================================================================ overlay

def layer_values(scene, result: NumericsResult) -> list[Optional[float]]:
    """One value per box: the layer's error; inf as INF_FACTOR x the largest finite error; None unknown.

    A collapsed group shows its worst member.
    """
    errors = {node_id: layer.error for node_id, layer in result.layers.items()}
    finite = [e for e in errors.values() if math.isfinite(e) and e > 0]
    ceiling = (max(finite) if finite else 1.0) * INF_FACTOR
    values: list[Optional[float]] = []
    for node_id in scene.node_ids:
        members = scene.groups[node_id].members if node_id in scene.groups else (node_id,)
        found = [errors[m] for m in members if m in errors and not math.isnan(errors[m])]
        if not found:
            values.append(None)
            continue
        worst = max(found)
        values.append(ceiling if math.isinf(worst) else worst)
    return values


def show_overlay(view, result: NumericsResult) -> None:
    """Paint `result` on the view's scene: error per box (log scale), first departing layer outlined,
    edges carrying overflowing tensors marked; the legend says what it shows and its kind."""
    scene = view.graph_scene
    if scene is None:
        return
    clear_marks(scene)
    scene.apply_values(layer_values(scene, result), top_count=0)
    scene.overlay_key = OVERLAY_KEY
    scene.overlay_kind = result.kind
    first = scene.box_id(result.first_departing) if result.first_departing else None
    if first is not None:  # outlined with the top pen; _clear_outlines resets it on the next overlay
        scene.top_node_ids, scene._top_set = [first], {first}
        scene.node_items[scene.node_index[first]].setPen(scene.top_pen)
        scene._mark_selection()
    overflowing = set(result.overflowing_tensors())
    paths = QPainterPath()
    marked = 0
    for edge in scene.edges:
        if edge.value in overflowing or overflowing.intersection(edge.values):
            paths.addPolygon(QPolygonF([QPointF(x, y) for x, y in edge.points]))
            marked += 1
    if marked:
        item = scene.addPath(paths, OVERFLOW_EDGE_PEN)
        item.setAcceptedMouseButtons(Qt.MouseButton.NoButton)
        item.setZValue(0.5)  # above the edges, below the boxes
        item.setToolTip("carries values beyond the fp16 range (|x| > 65504)")
        scene.numerics_marks = [item]
    scene.numerics_edges = marked
    low, high = scene.overlay_range or (0.0, 0.0)
    view.legend.show_gradient(f"{OVERLAY_TITLE}, {result.mode}", f"{low:.2g}", f"{high:.2g}", result.kind,
                              top_count=1 if first else 0)
    view.legend.top_label = "first departing" if first else ""
    view.legend.update()
    view.minimap.refresh()


def clear_marks(scene) -> None:
    """Remove the overflow edge marks (the next overlay repaints boxes and outlines itself)."""
    for item in getattr(scene, "numerics_marks", ()):
        scene.removeItem(item)
    scene.numerics_marks = []
    scene.numerics_edges = 0


# ============================================================================ inspector

def sparkline(counts) -> str:
    """A small histogram in one line of text: one bar per bin, height by share of the largest bin."""
    top = max(counts) if counts and max(counts) > 0 else 0
    if not top:
        return ""
    return "".join(_SPARK[0] if c == 0 else _SPARK[max(1, round(c / top * (len(_SPARK) - 1)))] for c in counts)


def _figure(value: float, digits: int = 3) -> str:
    if value is None or math.isnan(value):
        return "unknown"
    if math.isinf(value):
        return "inf" if value > 0 else "−inf"
    return f"{value:.{digits}g}"


def add_inspector_section(inspector, result: Optional[NumericsResult], node_id: str) -> None:
    """The node's numerics figures under their own section of the Inspector, each with its kind."""
    if result is None or not node_id:
        return
    layer = result.layer(node_id)
    section = inspector._section(f"Numerics ({result.precision}, {result.mode})")
    if layer is None:
        reason = result.not_compared.get(node_id, "not compared" if result.complete else "not reached")
        inspector._row(section, "Compared", f"no: {reason}")
        return
    kind = layer.kind
    rows = [("Error", _figure(layer.error)),
            ("Departs", "yes — first departing layer" if node_id == result.first_departing
             else ("yes" if layer.departs else f"no (tolerance {result.tolerance:g})")),
            ("Max abs error", _figure(layer.max_abs_error)), ("Max rel error", _figure(layer.max_rel_error)),
            ("Cosine similarity", _figure(layer.cosine, 7)), ("SNR", f"{_figure(layer.snr_db)} dB"),
            ("Overflow > 65504", f"{100 * layer.overflow_share:.3g} %"),
            ("Underflow to zero", f"{100 * layer.underflow_share:.3g} %"),
            ("inf / NaN made", f"{layer.inf_count} / {layer.nan_count}"),
            ("Largest |x| (fp32)", _figure(layer.largest_reference, 5))]
    for name, value in rows:
        inspector._row(section, name, value, kind)
    section.child(0).setToolTip(0, "max |reduced − fp32| / max |fp32| over the layer's outputs")
    counts = layer.histogram
    item = inspector._row(section, "Rel. error histogram", sparkline(counts), kind)
    item.setToolTip(1, "relative error per element, bins: " + ", ".join(
        f"{label}: {count}" for label, count in zip(HISTOGRAM_LABELS, counts)))
    if layer.note:
        inspector._row(section, "Note", layer.note)
    inspector._row(section, "Emulation", result.emulation)
