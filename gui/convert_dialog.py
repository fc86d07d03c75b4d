"""Model > Convert to Core ML…: the options of `layerscope convert`, run in a worker thread.

The conversion is `engine.convert.convert`; this module only collects its options, shows its
progress lines, and reports the outcome:

- success: the verification summary, and "Open side by side" (gui.convert_view);
- a model that cannot be converted: `BlockersDialog` lists every problem at once (node,
  op, why).  `convert` writes nothing then;
- a model whose weights kept outside its file exceed the free memory (engine.free_memory):
  refused before any is read; with error dialogs on, a question offers "Convert anyway", the
  same conversion past the check (the app's way to `convert --ignore-memory-check`).
"""
from __future__ import annotations

import html

import re
from pathlib import Path
from typing import Optional, Sequence

from PySide6.QtCore import QThread, Signal
from PySide6.QtWidgets import (QComboBox, QDialog, QDoubleSpinBox, QFileDialog, QFormLayout, QHBoxLayout,
                               QHeaderView, QLabel, QLineEdit, QMessageBox, QPushButton, QTableWidget,
                               QTableWidgetItem, QVBoxLayout, QWidget)

from engine.convert import (DEFAULT_TARGET, DEPLOYMENT_TARGETS, OPTIMIZE_MODES, PRECISIONS, ConversionError,
                            ImageInput, parse_shape_options)
from engine.ir import ModelLoadError
from gui.job_footer import JobFooter
from gui.memory_question import read_anyway_question

PRECISION_TITLES = {"fp16": "fp16 (Core ML default, half the weight bytes)", "fp32": "fp32"}
OPTIMIZE_TITLES = {"exact": "exact (one source node per Core ML op)",
                   "default": "default (coremltools' fusions: conv+BatchNorm, …)"}
COLOR_LAYOUTS = (("RGB", "RGB"), ("BGR", "BGR"), ("G", "Grayscale"))
_BUILT = re.compile(r"built (\d+)/(\d+) ONNX nodes")


class ConvertOptionsError(ValueError):
    """An option field the person filled in wrongly; the message names the field."""


def default_output_path(model_path: str) -> str:
    return str(Path(model_path).with_suffix(".mlpackage"))


class ConvertWorker(QThread):
    """Runs `engine.convert.convert` off the UI thread; reports through queued signals."""

    progressed = Signal(str)
    succeeded = Signal(object)  # engine.convert.ConversionResult
    blocked = Signal(object)  # engine.convert.ConversionError (its .blockers: every problem)
    refused = Signal(object)  # engine.convert.source.MemoryRefusalError (its .refusal: both sizes)
    failed = Signal(str)

    def __init__(self, model_path: str, output_path: str, options: dict, parent=None):
        super().__init__(parent)
        self.model_path = model_path
        self.output_path = output_path
        self.options = options
        self.refusal: Optional[str] = None  # a MemoryRefusalError's sizes, once refused

    def run(self) -> None:
        from engine.convert import convert
        from engine.convert.source import MemoryRefusalError
        try:
            result = convert(self.model_path, self.output_path, progress=self.progressed.emit, **self.options)
        except ConversionError as exc:
            self.blocked.emit(exc)
        except MemoryRefusalError as exc:
            # Read once the thread has ended (the question is asked then): the sizes only, not the
            # exception, whose traceback holds the model being read until a garbage collection.
            self.refusal = exc.refusal
            self.refused.emit(exc)
        except ModelLoadError as exc:
            self.failed.emit(str(exc))
        except Exception as exc:  # a converter bug must not kill the app: say what happened
            self.failed.emit(f"unexpected {type(exc).__name__} while converting: {exc}")
        else:
            self.succeeded.emit(result)


class BlockersDialog(QDialog):
    """Every reason the model cannot be converted, one row each (node, op, why); modeless."""

    def __init__(self, model_path: str, error: ConversionError, parent: Optional[QWidget] = None):
        super().__init__(parent)
        self.setWindowTitle("Cannot convert to Core ML")
        self.blockers = list(error.blockers)
        layout = QVBoxLayout(self)
        count = len(self.blockers)
        headline = QLabel(f"<b>{Path(model_path).name} cannot be converted to Core ML:</b> {count} "
                          f"problem{'s' if count != 1 else ''}, all listed below. Nothing was written.<br>"
                          "A partial conversion is not offered: it would time a different model.")
        headline.setWordWrap(True)
        layout.addWidget(headline)
        self.table = QTableWidget(count, 3)
        self.table.setHorizontalHeaderLabels(["Node", "Op", "Why"])
        self.table.verticalHeader().hide()
        self.table.setEditTriggers(QTableWidget.EditTrigger.NoEditTriggers)
        self.table.setWordWrap(True)
        header = self.table.horizontalHeader()
        header.setSectionResizeMode(0, QHeaderView.ResizeMode.ResizeToContents)
        header.setSectionResizeMode(1, QHeaderView.ResizeMode.ResizeToContents)
        header.setSectionResizeMode(2, QHeaderView.ResizeMode.Stretch)
        for row, blocker in enumerate(self.blockers):
            for column, text in enumerate((blocker.node_id, blocker.op_type, blocker.reason)):
                item = QTableWidgetItem(text)
                item.setToolTip(text)
                self.table.setItem(row, column, item)
        self.table.resizeRowsToContents()
        layout.addWidget(self.table, 1)
        buttons = QHBoxLayout()
        buttons.addStretch(1)
        self.close_button = QPushButton("Close")
        self.close_button.clicked.connect(self.close)
        buttons.addWidget(self.close_button)
        layout.addLayout(buttons)
        self.resize(760, min(600, 160 + 34 * count))

    def rows(self) -> list[tuple[str, str, str]]:
        """The rows as shown: (node, op, why)."""
        return [tuple(self.table.item(r, c).text() for c in range(3)) for r in range(self.table.rowCount())]


class ConvertDialog(QDialog):
    """Modeless: the options, a Convert button, live progress, then the outcome."""

    conversionStarted = Signal(object)  # the ConvertWorker, its thread started
    converted = Signal(object)  # engine.convert.ConversionResult
    openRequested = Signal(object)  # the result to open side by side with its source
    conversionFailed = Signal(str)

    def __init__(self, model_path: str, input_names: Sequence[str] = (), parent: Optional[QWidget] = None,
                 error_dialogs: bool = True):
        super().__init__(parent)
        self.setWindowTitle("Convert to Core ML")
        self.model_path = model_path
        # Questions in message boxes (a person is there); off, a refusal is only reported (offscreen, scripts).
        self.error_dialogs = error_dialogs
        self.worker: Optional[ConvertWorker] = None
        self.result = None  # the last ConversionResult
        self.blockers_dialog: Optional[BlockersDialog] = None
        self.question: Optional[QMessageBox] = None  # "Convert anyway?", while it is asked
        layout = QVBoxLayout(self)
        intro = QLabel(f"Convert <b>{Path(model_path).name}</b> to a Core ML ML Program (.mlpackage), with a "
                       "layer map that keeps every ONNX node's link to what it became "
                       "(as <code>layerscope convert</code>).")
        intro.setWordWrap(True)
        layout.addWidget(intro)

        form = QFormLayout()
        output_row = QHBoxLayout()
        self.output_field = QLineEdit(default_output_path(model_path))
        self.output_field.setToolTip("The package to write; its layer map goes beside it (NAME.layermap.json)")
        browse = QPushButton("Browse…")
        browse.clicked.connect(self._browse)
        output_row.addWidget(self.output_field, 1)
        output_row.addWidget(browse)
        form.addRow("Output", output_row)
        self.precision_combo = QComboBox()
        for precision in PRECISIONS:
            self.precision_combo.addItem(PRECISION_TITLES.get(precision, precision), precision)
        form.addRow("Precision", self.precision_combo)
        self.target_combo = QComboBox()
        self.target_combo.setEditable(True)
        self.target_combo.addItems(list(DEPLOYMENT_TARGETS))
        self.target_combo.setCurrentText(DEFAULT_TARGET)
        self.target_combo.setToolTip("Minimum deployment target (ML Programs need iOS 15 / macOS 12)")
        form.addRow("Deployment target", self.target_combo)
        self.optimize_combo = QComboBox()
        for mode in OPTIMIZE_MODES:
            self.optimize_combo.addItem(OPTIMIZE_TITLES.get(mode, mode), mode)
        form.addRow("Optimisation", self.optimize_combo)
        self.shapes_field = QLineEdit()
        self.shapes_field.setPlaceholderText("as in the model; e.g. image=1x3x224x224 (LOW:HIGH for a range)")
        self.shapes_field.setToolTip("Input shapes, as --shape: NAME=DIMS separated by commas or spaces. "
                                     "Repeat a NAME to enumerate shapes; LOW:HIGH on an axis makes it a range.")
        form.addRow("Input shapes", self.shapes_field)
        self.image_combo = QComboBox()
        self.image_combo.addItem("none (tensor inputs)", "")
        for name in input_names:
            self.image_combo.addItem(name, name)
        self.image_combo.setToolTip("Make this input an image (camera frames): Core ML computes "
                                    "pixel × scale + bias per channel")
        form.addRow("Image input", self.image_combo)
        image_row = QHBoxLayout()
        self.scale_spin = QDoubleSpinBox()
        self.scale_spin.setDecimals(9)
        self.scale_spin.setRange(-1e6, 1e6)
        self.scale_spin.setValue(1.0)
        self.bias_field = QLineEdit()
        self.bias_field.setPlaceholderText("R,G,B (e.g. -1,-1,-1)")
        self.layout_combo = QComboBox()
        for key, title in COLOR_LAYOUTS:
            self.layout_combo.addItem(title, key)
        image_row.addWidget(QLabel("scale"))
        image_row.addWidget(self.scale_spin, 1)
        image_row.addWidget(QLabel("bias"))
        image_row.addWidget(self.bias_field, 1)
        image_row.addWidget(self.layout_combo)
        self.image_options = QWidget()
        self.image_options.setLayout(image_row)
        image_row.setContentsMargins(0, 0, 0, 0)
        form.addRow("", self.image_options)
        self.image_combo.currentIndexChanged.connect(
            lambda _: self.image_options.setEnabled(bool(self.image_combo.currentData())))
        self.image_options.setEnabled(False)
        layout.addLayout(form)

        self.convert_button = QPushButton("Convert")
        self.convert_button.setDefault(True)
        self.convert_button.clicked.connect(self.start)
        self.open_button = QPushButton("Open side by side")
        self.open_button.setToolTip("Show the source and the converted package next to each other, "
                                    "selection linked through the layer map")
        self.open_button.setEnabled(False)
        self.open_button.clicked.connect(lambda: self.result is not None and self.openRequested.emit(self.result))
        self.close_button = QPushButton("Close")
        self.close_button.clicked.connect(self.close)
        self.footer = JobFooter((self.convert_button, self.open_button, self.close_button))
        self.status, self.progress = self.footer.status, self.footer.progress
        layout.addWidget(self.footer)
        self.resize(620, self.sizeHint().height())

    # --- options ---------------------------------------------------------------------------
    def _browse(self) -> None:
        path, _ = QFileDialog.getSaveFileName(self, "Write Core ML package", self.output_field.text(),
                                              "Core ML package (*.mlpackage)")
        if path:
            self.output_field.setText(path if path.endswith(".mlpackage") else path + ".mlpackage")

    def options(self) -> tuple[str, dict]:
        """(output path, keyword arguments of engine.convert.convert).  Raises ConvertOptionsError."""
        output = self.output_field.text().strip()
        if not output:
            raise ConvertOptionsError("Output: give the .mlpackage to write")
        items = [item for item in re.split(r"[,\s]+", self.shapes_field.text().strip()) if item]
        try:
            fixed, flexible = parse_shape_options(items)
        except ValueError as exc:
            raise ConvertOptionsError(f"Input shapes: {exc}") from None
        image_inputs = {}
        name = self.image_combo.currentData()
        if name:
            layout = self.layout_combo.currentData()
            channels = 1 if layout == "G" else 3
            text = self.bias_field.text().strip()
            try:
                bias = tuple(float(b) for b in text.split(",")) if text else (0.0,) * channels
            except ValueError:
                raise ConvertOptionsError(f"Image bias {text!r}: numbers separated by commas, e.g. -1,-1,-1") \
                    from None
            if len(bias) == 1 and channels == 3:
                bias = bias * 3
            image_inputs[name] = ImageInput(scale=self.scale_spin.value(), bias=bias, color_layout=layout)
        return output, {"precision": self.precision_combo.currentData(),
                        "target": self.target_combo.currentText().strip(),
                        "optimize": self.optimize_combo.currentData(), "input_shapes": fixed or None,
                        "flexible_shapes": flexible or None, "image_inputs": image_inputs or None}

    # --- running ---------------------------------------------------------------------------
    def start(self) -> Optional[ConvertWorker]:
        if self.worker is not None:
            return None
        try:
            output, options = self.options()
        except ConvertOptionsError as exc:
            self.status.setText(f"<span style='color:#b00'>{exc}</span>")
            return None
        return self._run(output, options)

    def _run(self, output: str, options: dict) -> ConvertWorker:
        self.result = None
        self.open_button.setEnabled(False)
        worker = ConvertWorker(self.model_path, output, options, self)
        self.worker = worker
        worker.progressed.connect(self._on_progress)
        worker.succeeded.connect(self._on_succeeded)
        worker.blocked.connect(self._on_blocked)
        worker.refused.connect(self._on_refused)
        worker.failed.connect(self._on_failed)
        worker.finished.connect(lambda w=worker: self._on_finished(w))
        self._set_running(True)
        worker.start()
        self.conversionStarted.emit(worker)
        return worker

    def _set_running(self, running: bool) -> None:
        self.convert_button.setEnabled(not running)
        for widget in (self.output_field, self.precision_combo, self.target_combo, self.optimize_combo,
                       self.shapes_field, self.image_combo):
            widget.setEnabled(not running)
        self.image_options.setEnabled(not running and bool(self.image_combo.currentData()))
        if running:
            self.footer.show_busy()  # until the builder reports its node count

    def _on_progress(self, message: str) -> None:
        built = _BUILT.search(message)
        if built:
            self.footer.show_progress(int(built.group(1)), int(built.group(2)), message)
        else:
            self.footer.show_busy(message)

    def _done(self, message: str, complete: bool = True) -> None:
        self._set_running(False)
        self.footer.show_finished(message, complete)  # a refused or failed one: not a full bar

    def _on_succeeded(self, result) -> None:
        self.result = result
        nodes = len(result.layer_map["nodes"])
        ops = sum(len(v) for v in result.layer_map["nodes"].values())
        checks = "<br>".join(f"{name}: {html.escape(outcome)}" for name, outcome in result.outcomes().items())
        if result.failed_checks:
            # Which check, and for value checks the first source layer whose result departs.
            failures = []
            for name in result.failed_checks:
                first = result.verification[name].get("first_departure")
                layer = first.get("node") if isinstance(first, dict) else first
                failures.append(f"{name}" + (f" (first departing layer: {html.escape(str(layer))})" if layer else ""))
            verdict = f"<span style='color:#b00'>check failed: {', '.join(failures)}</span>"
        else:
            not_run = result.not_run_checks
            verdict = "all checks passed" if not not_run else \
                f"no check failed; not run: {', '.join(not_run)}"
        self._done(f"Wrote <b>{result.package_path.name}</b> and {result.layer_map_path.name} in "
                   f"{result.timings.get('total', 0.0):.1f} s: {nodes} source nodes → {ops} Core ML ops, "
                   f"{verdict}.<br>{html.escape(result.verdict())}<br>{checks}")
        self.open_button.setEnabled(True)
        self.converted.emit(result)

    def _on_blocked(self, error: ConversionError) -> None:
        count = len(error.blockers)
        self._done(f"<span style='color:#b00'>Cannot convert: {count} problem{'s' if count != 1 else ''} "
                   "(listed in the dialog). Nothing was written.</span>", complete=False)
        if self.blockers_dialog is not None:
            self.blockers_dialog.close()
        self.blockers_dialog = BlockersDialog(self.model_path, error, self)
        self.blockers_dialog.show()
        self.conversionFailed.emit(str(error))

    def _on_failed(self, message: str) -> None:
        self._done(f"<span style='color:#b00'>Failed: {html.escape(message)}</span>", complete=False)
        self.conversionFailed.emit(message)

    def _on_refused(self, error) -> None:
        """Refused for memory: the CLI's message names its option; the app says it in its own words."""
        from engine.convert.source import MEMORY_ADVICE  # loaded by the worker already
        way_past = ", or press Convert again and choose Convert anyway" if self.error_dialogs else ""
        self._on_failed(f"{Path(error.path).name}: {error.refusal}; {MEMORY_ADVICE}{way_past}.")

    def _on_finished(self, worker: ConvertWorker) -> None:
        if self.worker is worker:
            self.worker = None
        worker.deleteLater()
        if worker.refusal is not None and self.error_dialogs and self.isVisible():
            self._ask_to_convert_anyway(worker)

    def _ask_to_convert_anyway(self, refused: ConvertWorker) -> None:
        """The person may know better (swap, memory about to be freed): the same conversion, past the
        check.  Asked once the refused worker has ended, so that the new one can start at once."""
        output, options = refused.output_path, {**refused.options, "ignore_memory_check": True}
        box, anyway = read_anyway_question(
            self, f"{Path(refused.model_path).name}: {refused.refusal}.\n\nConvert it anyway?",
            "Converting reads all the weights into memory, inside LayerScope: the computer may swap, or the "
            "system stop LayerScope, unsaved profiles with it.", "Convert anyway")
        self.question = box
        try:
            box.exec()
        finally:
            self.question = None
        # Not once the dialog is closed (the window closing it while asked): nobody would see it.
        if box.clickedButton() is anyway and self.worker is None and self.isVisible():
            self._run(output, options)

    def closeEvent(self, event) -> None:
        # A conversion cannot be interrupted midway (coremltools has no cancel): wait for it, so
        # that no thread outlives the window and nothing half-written is left.
        if self.worker is not None:
            worker = self.worker
            for signal in (worker.progressed, worker.succeeded, worker.blocked, worker.refused, worker.failed):
                try:
                    signal.disconnect()
                except (RuntimeError, TypeError):
                    pass
            worker.wait()
            self.worker = None
        if self.blockers_dialog is not None:
            self.blockers_dialog.close()
        if self.question is not None:  # a window of its own: it would stay open, asking about nothing
            self.question.reject()
        super().closeEvent(event)
