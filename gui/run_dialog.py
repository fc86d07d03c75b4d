"""The Run dialog and the worker thread that profiles a model.

The dialog collects a `RunRequest` (target, mode, runs, warm-up, threads,
input sizes).  `ProfileWorker` (a QThread) runs it with `execute_run`, which
only calls engine functions, the same ones the CLI uses:
`engine.targets.get_target`, `Target.prepare` / `Target.profile` (progress
callback, cancel event), `engine.sweep.sweep_sizes` for several sizes,
`engine.hints.find_hints` and `engine.session.profile_analysis`.

Cancel sets a threading.Event that the target checks between runs; the worker
then returns promptly and nothing half-measured is added to the session.
"""
from __future__ import annotations

import shutil
import tempfile
import threading
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Callable, Optional

from PySide6.QtCore import QThread, Signal
from PySide6.QtWidgets import (QComboBox, QDialog, QFormLayout, QHBoxLayout, QLabel,
                               QLineEdit, QProgressBar, QPushButton, QSpinBox, QVBoxLayout, QWidget)

from engine.hints import find_hints
from engine.ir import ModelLoadError
from engine.profile import MODES, Profile, ProfileFormatError
from engine.session import SweepResult
from engine.targets import TARGET_NAMES, ProfileSettings, TargetError, get_target

TARGET_TITLES = {"cpu": "CPU reference (ONNX Runtime)"}
DEFAULT_THREADS = 1  # the CLI's default (engine/cli_profile.py)
MODE_TITLES = {"exact": "exact: optimizations off, one timing per layer",
               "deployed": "deployed: optimizations on, fused kernels mapped back"}


@dataclass(frozen=True)
class RunRequest:
    """What to profile: `sizes` empty = the model's own input size; two or more sizes = a sweep."""

    model_path: str
    target: str = "cpu"
    settings: ProfileSettings = field(default_factory=ProfileSettings)
    sizes: tuple[tuple[int, int], ...] = ()


@dataclass
class ProfiledEntry:
    """A finished profile (hints attached) and the static analysis at its input shapes."""

    profile: Profile
    analysis: object


@dataclass
class RunResult:
    entries: list[ProfiledEntry]
    sweep: Optional[SweepResult]
    cancelled: bool
    target: str


def parse_sizes(text: str) -> tuple[tuple[int, int], ...]:
    """'160' -> ((160, 160),); '128, 160x120' -> ((128, 128), (160, 120)); '' -> () (the model's size)."""
    from engine.sweep import parse_size

    parts = [p for p in text.replace(";", ",").replace(" ", ",").split(",") if p.strip()]
    return tuple(parse_size(p.strip()) for p in parts)


def execute_run(request: RunRequest, opened_analysis=None,
                progress: Optional[Callable[[int, int, str], None]] = None,
                cancel: Optional[threading.Event] = None) -> RunResult:
    """Profile as `request` says, in the calling thread, as `layerscope profile` does.

    One size (or none): `engine.sweep.model_for_setting` (a sample is regenerated at
    that size), `Target.prepare`, `Target.profile`.  Several sizes:
    `engine.sweep.sweep_sizes`.  Hints come from `engine.hints.find_hints`.
    Only complete profiles are returned: a cancelled run returns those that
    finished before the cancel (a sweep's earlier sizes); a failed run raises
    TargetError with the target's message.  Raises TargetError / ModelLoadError.
    """
    from engine.sweep import model_for_setting, sweep_sizes

    cancel = cancel or threading.Event()
    settings = request.settings
    model_path = Path(request.model_path)
    sweep = None
    pairs: list[tuple[Profile, object]] = []  # (profile, analysis at its input shapes)
    target = get_target(request.target)
    workdir = Path(tempfile.mkdtemp(prefix="layerscope-gui-run-"))
    try:
        if progress:
            progress(0, 0, f"preparing the model on {request.target}…")
        if len(request.sizes) > 1:
            rows = sweep_sizes(model_path, list(request.sizes), settings, target=target, progress=progress,
                               cancel=cancel, keep_profiles=pairs)
            if len(rows) == len(request.sizes) and all(r.get("complete") for r in rows):
                series = f"{request.target} {settings.mode}"  # the HTML report draws one line per series
                sweep = SweepResult(request.target, tuple(dict(r, target=request.target, series=series)
                                                          for r in rows), settings.to_dict())
        else:
            model_file, size = model_for_setting(model_path, workdir,
                                                 size=request.sizes[0] if request.sizes else None)
            point_settings = settings.replace(size=size) if size is not None else settings
            target.prepare(model_file, point_settings)
            pairs.append((target.profile(point_settings, progress, cancel), target.analysis))
    finally:
        target.close()
        shutil.rmtree(workdir, ignore_errors=True)
    failed = [p for p, _ in pairs if not p.complete and not cancel.is_set()]
    if failed:
        raise TargetError(f"profiling stopped after {failed[0].runs_completed} measured runs: "
                          f"{failed[0].error or 'unknown error'}")
    entries = []
    for profile, analysis in pairs:
        if not profile.complete:
            continue  # cancelled midway: nothing half-measured goes into the session
        if Path(profile.model_path) != model_path:
            # A regenerated sample (its temporary file is gone): name the file the person opened,
            # as `layerscope profile` does; the input shapes in the settings say which size it ran.
            profile = replace(profile, model_path=str(model_path))
        entries.append(ProfiledEntry(profile.with_hints(find_hints(profile, analysis)), analysis))
    return RunResult(entries, sweep, cancel.is_set(), request.target)


class ProfileWorker(QThread):
    """Runs `execute_run` off the UI thread; reports through queued signals."""

    progressed = Signal(int, int, str)
    succeeded = Signal(object)  # RunResult
    failed = Signal(str)

    def __init__(self, request: RunRequest, opened_analysis=None, parent=None):
        super().__init__(parent)
        self.request = request
        self.opened_analysis = opened_analysis
        self.cancel_event = threading.Event()

    def cancel(self) -> None:
        self.cancel_event.set()

    def run(self) -> None:
        try:
            result = execute_run(self.request, self.opened_analysis, self.progressed.emit, self.cancel_event)
        except (TargetError, ModelLoadError, ProfileFormatError) as exc:
            self.failed.emit(str(exc))
        except Exception as exc:  # an engine bug must not kill the app: say what happened
            self.failed.emit(f"unexpected {type(exc).__name__} while profiling: {exc}")
        else:
            self.succeeded.emit(result)


class RunDialog(QDialog):
    """Modeless: stays open during the run with live progress and Cancel; closes itself on success."""

    runRequested = Signal(object)  # RunRequest
    cancelRequested = Signal()

    def __init__(self, parent: Optional[QWidget] = None, extra_targets: tuple[str, ...] = ()):
        super().__init__(parent)
        self.setWindowTitle("Profile the model")
        self.model_path = ""
        layout = QVBoxLayout(self)
        form = QFormLayout()
        self.target_combo = QComboBox()
        self.target_combo.setEditable(True)
        for name in TARGET_NAMES:
            if "HOST" not in name:  # "ws://HOST:PORT" documents the address form: it is typed, not picked
                self.target_combo.addItem(TARGET_TITLES.get(name, name), name)
        for address in extra_targets:
            if self.target_combo.findData(address) < 0:
                self.target_combo.addItem(address, address)
        self.target_combo.lineEdit().setPlaceholderText("or a device agent: ws://host:port")
        self.target_combo.setToolTip("The CPU reference runs here with ONNX Runtime. A device running the "
                                     "LayerScope agent is reached by typing its address, ws://host:port.")
        form.addRow("Target", self.target_combo)
        self.mode_combo = QComboBox()
        for mode in MODES:
            self.mode_combo.addItem(MODE_TITLES.get(mode, mode), mode)
        form.addRow("Mode", self.mode_combo)
        self.runs_spin = QSpinBox()
        self.runs_spin.setRange(1, 100_000)
        self.runs_spin.setValue(ProfileSettings().runs)
        form.addRow("Measured runs", self.runs_spin)
        self.warmup_spin = QSpinBox()
        self.warmup_spin.setRange(0, 10_000)
        self.warmup_spin.setValue(ProfileSettings().warmup)
        form.addRow("Warm-up runs", self.warmup_spin)
        self.threads_spin = QSpinBox()
        self.threads_spin.setRange(0, 1024)
        self.threads_spin.setSpecialValueText("auto (one per core)")
        # As `layerscope profile`: one thread gives stable, attributable per-layer times.
        self.threads_spin.setValue(DEFAULT_THREADS)
        form.addRow("Threads", self.threads_spin)
        self.sizes_field = QLineEdit()
        self.sizes_field.setPlaceholderText("as in the model; e.g. 224, 256x192, or 128, 160, 224 for a sweep")
        self.sizes_field.setToolTip("Input height x width. Several sizes run a sweep (latency against size).")
        form.addRow("Input size(s)", self.sizes_field)
        layout.addLayout(form)

        self.status = QLabel("")
        self.status.setWordWrap(True)
        layout.addWidget(self.status)
        self.progress = QProgressBar()
        self.progress.setRange(0, 1)
        self.progress.setValue(0)
        layout.addWidget(self.progress)

        buttons = QHBoxLayout()
        buttons.addStretch(1)
        self.run_button = QPushButton("Run")
        self.run_button.setDefault(True)
        self.run_button.clicked.connect(self.request_run)
        self.cancel_button = QPushButton("Cancel run")
        self.cancel_button.setEnabled(False)
        self.cancel_button.clicked.connect(self.cancelRequested.emit)
        self.close_button = QPushButton("Close")
        self.close_button.clicked.connect(self.close)
        for button in (self.run_button, self.cancel_button, self.close_button):
            buttons.addWidget(button)
        layout.addLayout(buttons)
        self.resize(520, self.sizeHint().height())

    # --- what the person asked for ---------------------------------------------------------
    def target_name(self) -> str:
        text = self.target_combo.currentText().strip()
        index = self.target_combo.findText(text)
        if index >= 0 and self.target_combo.itemData(index):
            return str(self.target_combo.itemData(index))
        return text

    def request(self) -> RunRequest:
        """The RunRequest for the current fields.  Raises TargetError naming the field that is wrong."""
        if not self.model_path:
            raise TargetError("no model is open: open one first (File > Open)")
        target = self.target_name()
        if not target:
            raise TargetError("choose a target: the CPU reference, or type a device agent's ws://host:port")
        settings = ProfileSettings(mode=self.mode_combo.currentData(), runs=self.runs_spin.value(),
                                   warmup=self.warmup_spin.value(), threads=self.threads_spin.value())
        return RunRequest(self.model_path, target, settings, parse_sizes(self.sizes_field.text()))

    def request_run(self) -> None:
        try:
            request = self.request()
        except TargetError as exc:
            self.status.setText(f"<span style='color:#b00'>{exc}</span>")
            return
        self.runRequested.emit(request)

    # --- state shown while the main window runs it -----------------------------------------
    def set_running(self, running: bool) -> None:
        self.run_button.setEnabled(not running)
        self.cancel_button.setEnabled(running)
        for widget in (self.target_combo, self.mode_combo, self.runs_spin, self.warmup_spin, self.threads_spin,
                       self.sizes_field):
            widget.setEnabled(not running)
        if running:
            self.progress.setRange(0, 0)
            self.status.setText("Starting…")

    def show_progress(self, done: int, total: int, message: str) -> None:
        if total > 0:
            self.progress.setRange(0, total)
            self.progress.setValue(min(done, total))
        else:
            self.progress.setRange(0, 0)
        self.status.setText(message)

    def show_finished(self, message: str) -> None:
        self.set_running(False)
        self.progress.setRange(0, 1)
        self.progress.setValue(1)
        self.status.setText(message)
