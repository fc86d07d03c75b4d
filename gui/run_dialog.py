"""The Run dialog and what runs a profile: the CLI in a child process, or (sweeps) a worker thread.

The dialog collects a `RunRequest` (target, mode, runs, warm-up, threads,
input sizes).

One input size (or the model's own): `ProfileProcess` runs
`python -m engine profile MODEL ... --json TMP.json`, the same engine function
as `layerscope profile`, as a child process (QProcess).  ONNX Runtime's
session creation and the parsing of its profile are long C++ calls that hold
the GIL; in a thread of the app they froze the window for 100+ ms (DenseNet-121),
in a child process they cannot.  The CLI prints one progress line per run on
stderr when it is not a terminal ("DONE/TOTAL MESSAGE"), which drives the
progress bars.  Cancel sends SIGINT: the CLI stops after the current run and
writes what it measured; the app keeps those runs as the CLI does on Ctrl-C
(the profile says it is incomplete and how many runs it holds).  A failure is the CLI's
one-line "layerscope: ..." message.  The profile is read back with
`engine.session.load_profile_json` (a device profile keeps its transfers);
the CLI attached the hints.

Several sizes (a sweep): `ProfileWorker` (a QThread) runs `execute_run`,
which calls `engine.sweep.sweep_sizes` in this process, because the CLI's
--json keeps only the first setting's profile while the session keeps every
setting's profile and the sweep's rows.  Cancel sets a threading.Event that
the target checks between runs.
"""
from __future__ import annotations

import html
import os
import re
import shutil
import signal
import sys
import tempfile
import threading
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Callable, Optional

from PySide6.QtCore import QObject, QProcess, QProcessEnvironment, Qt, QThread, QTimer, Signal
from PySide6.QtWidgets import (QComboBox, QDialog, QFormLayout, QHBoxLayout, QLabel, QLineEdit, QPushButton,
                               QSpinBox, QVBoxLayout, QWidget)

from engine.hints import find_hints
from engine.free_memory import IGNORE_OPTION
from engine.ir import ModelLoadError
from engine.profile import MODES, Profile, ProfileFormatError
from engine.session import SweepResult, load_profile_json
from engine.targets import TARGET_NAMES, ProfileSettings, TargetError, get_target, is_coreml_target
from gui.job_footer import JobFooter

TARGET_TITLES = {"cpu": "CPU reference (ONNX Runtime)"}
DEFAULT_THREADS = 1  # the CLI's default (engine/cli_profile.py)
MODE_TITLES = {"exact": "exact: optimizations off, one timing per layer",
               "deployed": "deployed: optimizations on, fused kernels mapped back"}
# A .tflite model runs on the LiteRT CPU reference (engine.targets.litert): its own words for the same choices.
LITERT_TARGET_TITLES = {"cpu": "CPU reference (LiteRT)"}
LITERT_MODE_TITLES = {"exact": "exact: builtin kernels, one timing per operator",
                      "deployed": "deployed: XNNPACK (LiteRT's default), fused operators mapped back"}


@dataclass(frozen=True)
class RunRequest:
    """What to profile: `sizes` empty = the model's own input size; two or more sizes = a sweep."""

    model_path: str
    target: str = "cpu"
    settings: ProfileSettings = field(default_factory=ProfileSettings)
    sizes: tuple[tuple[int, int], ...] = ()
    # android targets: Google's benchmark_model for the phone, and the delegates to run ("cpu,xnnpack,gpu")
    benchmark_model: str = ""
    android_delegates: str = ""


def is_android_target(name: str) -> bool:
    return name == "android" or name.startswith("android:")


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
    A cancelled run returns the profiles that finished before the cancel (a sweep's
    earlier sizes) and the one it stopped, if it measured at least one run (marked
    incomplete, as `layerscope profile` keeps its runs on Ctrl-C); a failed run raises
    TargetError with the target's message.  Raises TargetError / ModelLoadError.
    """
    from engine.sweep import model_for_setting, sweep_sizes

    cancel = cancel or threading.Event()
    settings = request.settings
    model_path = Path(request.model_path)
    sweep = None
    pairs: list[tuple[Profile, object]] = []  # (profile, analysis at its input shapes)
    android = {"benchmark_model": request.benchmark_model or None, "delegates": request.android_delegates or None} \
        if is_android_target(request.target) else {}
    target = get_target(request.target, model_path=request.model_path, **android)
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
        if not profile.complete and profile.runs_completed == 0:
            continue  # cancelled before its first measured run: nothing to keep
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


PROJECT_ROOT = Path(__file__).resolve().parents[1]  # where `python -m engine` finds the engine
_PROGRESS_LINE = re.compile(r"^(\d+)/(\d+) (.*)$")  # engine.cli_profile.Progress, not on a terminal
EXIT_OK, EXIT_BAD_INPUT, EXIT_INCOMPLETE, EXIT_INTERRUPTED = 0, 2, 3, 130  # engine.cli_profile's codes


def profile_command(request: RunRequest, json_path: str) -> list[str]:
    """The `layerscope profile` arguments (after the interpreter) that run `request` (one size at most)."""
    if len(request.sizes) > 1:
        raise ValueError("a sweep of several sizes runs in a ProfileWorker, not the CLI")
    settings = request.settings
    arguments = ["-m", "engine", "profile", str(Path(request.model_path).resolve()),
                 "--target", request.target, "--mode", settings.mode, "--runs", str(settings.runs),
                 "--warmup", str(settings.warmup), "--threads", str(settings.threads), "--json", json_path]
    if request.sizes:
        height, width = request.sizes[0]
        arguments += ["--size", f"{height}x{width}"]
    if settings.ignore_memory_check:
        arguments.append(IGNORE_OPTION)
    if is_android_target(request.target):
        if request.benchmark_model:
            arguments += ["--benchmark-model", request.benchmark_model]
        if request.android_delegates:
            arguments += ["--android-delegates", request.android_delegates]
    return arguments


class ProfileProcess(QObject):
    """Runs one profile as `python -m engine profile ... --json` in a child process (see the module docstring).

    The same signals and methods as ProfileWorker: progressed, succeeded(RunResult),
    failed(message), finished; start(), cancel(), wait(), isFinished().
    """

    progressed = Signal(int, int, str)
    succeeded = Signal(object)  # RunResult
    failed = Signal(str)
    finished = Signal()

    def __init__(self, request: RunRequest, opened_analysis=None, parent=None):
        super().__init__(parent)
        self.request = request
        self.cancelled = False
        self._done = False
        self._outcome = None  # (signal, value) to emit on the next event-loop turn
        self._stderr_tail = ""  # an incomplete last line
        self._messages: list[str] = []  # stderr lines that are not progress
        self._workdir = Path(tempfile.mkdtemp(prefix="layerscope-gui-profile-"))
        self.json_path = self._workdir / "profile.json"
        self.process = QProcess(self)
        environment = QProcessEnvironment.systemEnvironment()
        environment.insert("PYTHONPATH", os.pathsep.join(
            [str(PROJECT_ROOT)] + [p for p in [environment.value("PYTHONPATH", "")] if p]))
        environment.insert("PYTHONUNBUFFERED", "1")
        self.process.setProcessEnvironment(environment)
        self.process.setWorkingDirectory(str(PROJECT_ROOT))
        self.process.setStandardOutputFile(QProcess.nullDevice())  # the text summary: not needed here
        self.process.readyReadStandardError.connect(self._read_stderr)
        self.process.finished.connect(self._on_finished)
        self.process.errorOccurred.connect(self._on_error)

    def start(self) -> None:
        self.progressed.emit(0, 0, f"starting the profiler for {self.request.target}…")
        self.process.start(sys.executable, profile_command(self.request, str(self.json_path)))

    def cancel(self) -> None:
        """Ask the CLI to stop after the current run (SIGINT, as Ctrl-C); the runs it measured are kept."""
        if self._done or self.cancelled:
            return
        self.cancelled = True
        pid = self.process.processId()
        if pid and hasattr(signal, "SIGINT") and sys.platform != "win32":
            os.kill(pid, signal.SIGINT)
        else:  # no SIGINT to a child on Windows: stop it (it writes nothing then: no runs are kept)
            self.process.terminate()

    def wait(self, timeout_ms: int = 10_000) -> bool:
        """Block until the child has exited (killed after `timeout_ms`); True when it had stopped by itself.

        What it measured is not reported any more (the window is closing).
        """
        self._outcome = None
        if self._done or self.process.state() == QProcess.ProcessState.NotRunning:
            self._finish_once()
            return True
        stopped = self.process.waitForFinished(timeout_ms)
        if not stopped:
            self.process.kill()
            self.process.waitForFinished(2000)
        self._finish_once()
        return stopped

    def isFinished(self) -> bool:
        return self._done

    # --- the child's output -----------------------------------------------------------------
    def _read_stderr(self) -> None:
        text = self._stderr_tail + bytes(self.process.readAllStandardError()).decode("utf-8", "replace")
        lines = text.replace("\r", "\n").split("\n")
        self._stderr_tail = lines.pop()
        for line in lines:
            self._handle_line(line.strip())

    def _handle_line(self, line: str) -> None:
        if not line:
            return
        match = _PROGRESS_LINE.match(line)
        if match:
            self.progressed.emit(int(match.group(1)), int(match.group(2)), match.group(3))
        else:
            self._messages.append(line)

    def _error_message(self, exit_code: int) -> str:
        said = [m[len("layerscope: "):] for m in self._messages if m.startswith("layerscope: ")]
        if said:
            return said[-1]
        if self._messages:
            return f"the profiler stopped (exit code {exit_code}): {self._messages[-1]}"
        return f"the profiler stopped (exit code {exit_code}) without saying why"

    def _on_error(self, error) -> None:
        if error == QProcess.ProcessError.FailedToStart:
            self.failed.emit(f"could not start the profiler ({sys.executable} -m engine profile): "
                             f"{self.process.errorString()}")
            self._finish_once()

    def _on_finished(self, exit_code: int, exit_status) -> None:
        self._read_stderr()
        if self._stderr_tail:
            self._handle_line(self._stderr_tail.strip())
            self._stderr_tail = ""
        if self._done:
            return
        normal = exit_status == QProcess.ExitStatus.NormalExit and exit_code == EXIT_OK
        try:
            if self.cancelled:
                # Stopped midway: the CLI wrote the runs it measured (exit code 130) and they are
                # kept, marked incomplete; a run that had finished before the cancel arrived is kept whole.
                kept_runs = normal or (exit_status == QProcess.ExitStatus.NormalExit
                                       and exit_code == EXIT_INTERRUPTED and self.json_path.is_file())
                entries = self._entries(keep_partial=True) if kept_runs else []
                self._outcome = (self.succeeded, RunResult(entries, None, True, self.request.target))
            elif not normal:
                self._outcome = (self.failed, self._error_message(exit_code))
            else:
                entries = self._entries()
                if entries:
                    self._outcome = (self.succeeded, RunResult(entries, None, False, self.request.target))
                else:
                    self._outcome = (self.failed, "the profiler finished but its profile is incomplete")
        except (ProfileFormatError, OSError, ValueError) as exc:
            self._outcome = (self.failed, f"could not read the profile the profiler wrote: {exc}")
        # Reading the JSON (~35 ms for DenseNet-121) and showing the profile (~45 ms) get an
        # event-loop turn each, so the window never waits for both at once.
        QTimer.singleShot(0, self._report)

    def _report(self) -> None:
        outcome, self._outcome = self._outcome, None
        if outcome is None or self._done:
            return
        signal_, value = outcome
        try:
            signal_.emit(value)
        finally:
            self._finish_once()

    def _entries(self, keep_partial: bool = False) -> list[ProfiledEntry]:
        """The profile the CLI wrote (none if incomplete, unless `keep_partial` and it holds a
        measured run); its analysis is made when needed."""
        profile = load_profile_json(self.json_path)  # keeps a device profile's transfers
        if not profile.complete and not (keep_partial and profile.runs_completed > 0):
            return []
        # An android target's other delegates: written beside as profile.DELEGATE.json (engine.cli_profile).
        others = [load_profile_json(path) for path in sorted(self._workdir.glob("profile.*.json"))]
        entries = []
        for each in [profile, *others]:
            if Path(each.model_path).resolve() != Path(self.request.model_path).resolve():
                each = replace(each, model_path=str(self.request.model_path))
            entries.append(ProfiledEntry(each, None))
        return entries

    def _finish_once(self) -> None:
        if self._done:
            return
        self._done = True
        shutil.rmtree(self._workdir, ignore_errors=True)
        self.finished.emit()


def make_profile_runner(request: RunRequest, opened_analysis=None, parent=None):
    """A ProfileProcess (the CLI in a child process) for one size; a ProfileWorker (a thread) for a sweep."""
    if len(request.sizes) > 1:
        return ProfileWorker(request, opened_analysis, parent)
    return ProfileProcess(request, opened_analysis, parent)


def connected_phone_targets() -> list[tuple[str, str]]:
    """(title, iphone:UDID) of the iPhones and iPads connected to this Mac; none elsewhere
    (they are reached through a Mac agent's address there)."""
    if sys.platform != "darwin":
        return []
    from engine.bridge.iphone import list_phones
    phones, _ = list_phones()
    return [(f"{phone['name']} ({phone['model'] or phone['type']}, Core ML)"
             + ("" if phone["ready"] else " - not ready"), f"iphone:{phone['udid']}") for phone in phones]


def connected_android_targets(notes: Optional[list] = None) -> list[tuple[str, str]]:
    """(title, android:SERIAL) of the Android phones adb knows; none when adb or adbutils is missing
    (why is appended to `notes`).  Can take up to adbutils' 20 s when adb has to start its server:
    the Run dialog calls it through PhoneFinder, off the UI thread."""
    try:
        from engine.bridge.android import list_android_phones
    except ImportError:
        return []
    phones, said = list_android_phones()
    if notes is not None:
        notes.extend(said)
    titles = []
    for phone in phones:
        facts = ", ".join(f for f in (phone.get("soc"), f"Android {phone['android_version']}"
                                      if phone.get("android_version") else "") if f)
        state = "" if phone["ready"] else f" - {phone['state']}"
        titles.append((f"{phone.get('model') or phone['serial']} ({facts or 'Android'}, LiteRT){state}",
                       f"android:{phone['serial']}"))
    return titles


class PhoneFinder(QObject):
    """Lists the connected phones (adb's Android phones; a Mac's iPhones) in a daemon thread.

    adb may have to start its server first (adbutils waits up to 20 s), so the Run dialog must
    not ask on the UI thread.  A daemon Python thread, not a QThread: closing the dialog or the
    app while adb is still starting must neither wait for it nor destroy a running QThread.
    `found` is emitted from that thread; Qt queues it to the dialog, and drops it when the
    dialog is gone.
    """

    found = Signal(object, object)  # [(title, address)], [notes: why no phone was found]

    def start(self) -> None:
        threading.Thread(target=self._look, name="layerscope-phone-finder", daemon=True).start()

    def _look(self) -> None:
        targets, notes = [], []
        for lister in (connected_phone_targets, lambda: connected_android_targets(notes)):
            try:
                targets += lister()
            except Exception as exc:  # a listing bug must not leave the dialog looking forever
                notes.append(f"could not list phones ({type(exc).__name__}: {exc})")
        try:
            self.found.emit(targets, notes)
        except RuntimeError:  # this object was deleted with the dialog while adb was answering
            pass


class RunDialog(QDialog):
    """Modeless: stays open during the run with live progress and Cancel; closes itself on success."""

    runRequested = Signal(object)  # RunRequest
    cancelRequested = Signal()

    def __init__(self, parent: Optional[QWidget] = None, extra_targets: tuple[str, ...] = ()):
        super().__init__(parent)
        self.setWindowTitle("Profile the model")
        self.model_path = ""
        # (name, dims) of the open model's inputs, and whether its input size may change (a LayerScope
        # sample is regenerated at each size): the size field is checked as it is typed.
        self.model_inputs: tuple = ()
        self.resizable = True
        self.model_format = ""
        layout = QVBoxLayout(self)
        form = QFormLayout()
        self.target_combo = QComboBox()
        self.target_combo.setEditable(True)
        for name in TARGET_NAMES:
            if name.isidentifier():  # "ws://HOST:PORT", "iphone:NAME-or-UDID" document address forms: typed
                self.target_combo.addItem(TARGET_TITLES.get(name, name), name)
        for address in extra_targets:
            if self.target_combo.findData(address) < 0:
                self.target_combo.addItem(address, address)
        self.target_combo.lineEdit().setPlaceholderText("or an agent: ws://host:port (a Mac's iPhone: "
                                                        "ws://mac:7878?device=NAME)")
        self.target_combo.setToolTip("The CPU reference runs here with ONNX Runtime. An agent (`layerscope agent`) "
                                     "is reached by typing its address, ws://host:port; an iPhone connected to "
                                     "a Mac running the agent by adding ?device=NAME-or-UDID. On a Mac, its "
                                     "connected iPhones are listed (iphone:UDID). See docs/iphone.md.")
        form.addRow("Target", self.target_combo)
        # Connected phones are added to the targets when adb answers (PhoneFinder); this line says so.
        self.phones_label = QLabel("")
        self.phones_label.setWordWrap(True)
        self.phones_again_button = QPushButton("Look again")
        self.phones_again_button.setToolTip("Ask adb (and on a Mac, the iPhone service) for connected phones")
        self.phones_again_button.clicked.connect(self.look_for_phones)
        # In a widget, not a bare layout: QFormLayout gives a nested layout one line's height, which
        # cut the wrapped "No phone found (…how to connect one…)" to its first lines.
        phones_row = QWidget()
        phones_layout = QHBoxLayout(phones_row)
        phones_layout.setContentsMargins(0, 0, 0, 0)
        phones_layout.addWidget(self.phones_label, 1)
        phones_layout.addWidget(self.phones_again_button)
        form.addRow("Phones", phones_row)
        self.phone_finder: Optional[PhoneFinder] = None
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
        # Android phones: Google's benchmark_model runs the model there (docs/android.md).
        from engine.bridge.android import BENCHMARK_ENV, BINARY_HINT
        self.benchmark_field = QLineEdit(os.environ.get(BENCHMARK_ENV, ""))
        self.benchmark_field.setPlaceholderText("path of benchmark_model (android_aarch64)")
        self.benchmark_field.setToolTip(BINARY_HINT)
        form.addRow("benchmark_model", self.benchmark_field)
        self.delegates_field = QLineEdit("xnnpack")
        self.delegates_field.setToolTip("Comma-separated: cpu (builtin kernels, one time per operator), xnnpack "
                                        "(LiteRT's default CPU path), gpu. One benchmark_model run each.")
        form.addRow("Delegates", self.delegates_field)
        self.form = form
        layout.addLayout(form)
        self.check_label = QLabel("")  # what is wrong with the fields, as they are typed
        self.check_label.setWordWrap(True)
        self.check_label.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        layout.addWidget(self.check_label)
        self.sizes_field.textChanged.connect(self.check_fields)
        self.target_combo.currentTextChanged.connect(self.check_fields)
        self.threads_spin.valueChanged.connect(self.check_fields)
        self.benchmark_field.textChanged.connect(self.check_fields)
        self.delegates_field.textChanged.connect(self.check_fields)

        self.run_button = QPushButton("Run")
        self.run_button.setDefault(True)
        self.run_button.clicked.connect(self.request_run)
        self.cancel_button = QPushButton("Cancel run")
        self.cancel_button.setEnabled(False)
        self.cancel_button.clicked.connect(self.cancelRequested.emit)
        self.close_button = QPushButton("Close")
        self.close_button.clicked.connect(self.close)
        self.footer = JobFooter((self.run_button, self.cancel_button, self.close_button))
        self.status, self.progress = self.footer.status, self.footer.progress
        layout.addWidget(self.footer)
        self.resize(520, self.sizeHint().height())
        self.look_for_phones()

    # --- connected phones, found off the UI thread ---------------------------------------------
    def look_for_phones(self) -> None:
        """Ask for connected phones in the background; the targets list fills in when they answer."""
        if self.phone_finder is not None:
            return  # already looking
        self.phones_label.setText("Looking for phones…")
        self.phones_again_button.setEnabled(False)
        self.phone_finder = PhoneFinder()  # no parent: the thread may outlive the dialog
        self.phone_finder.found.connect(self._on_phones_found)
        self.phone_finder.start()

    def looking_for_phones(self) -> bool:
        return self.phone_finder is not None

    def showEvent(self, event) -> None:
        # The main window keeps this dialog: each time it opens, phones plugged in since are found.
        super().showEvent(event)
        if not self.cancel_button.isEnabled():
            self.look_for_phones()

    def _on_phones_found(self, targets: list, notes: list) -> None:
        self.phone_finder = None
        listed = {address for _, address in targets}
        current = self.target_name()
        # Phones listed before that are gone now leave the list (unless chosen: a run may use it).
        for index in reversed(range(self.target_combo.count())):
            address = str(self.target_combo.itemData(index) or "")
            if address.startswith(("android:", "iphone:")) and address not in listed and address != current:
                self.target_combo.removeItem(index)
        for title, address in targets:
            index = self.target_combo.findData(address)
            if index >= 0:
                self.target_combo.setItemText(index, title)
            else:
                self.target_combo.addItem(title, address)
        if targets:
            self.phones_label.setText(f"{len(targets)} phone{'s' if len(targets) != 1 else ''} found: "
                                      "choose one under Target")
        else:
            self.phones_label.setText("No phone found" + (f" ({'; '.join(notes)})" if notes else ""))
        self.phones_again_button.setEnabled(True)
        self.check_fields()

    # --- what the person asked for ---------------------------------------------------------
    def set_model(self, path: str, inputs: tuple = (), resizable: bool = True, model_format: str = "") -> None:
        """The model the next run profiles; what the dialog said about the previous one is cleared."""
        if path != self.model_path:
            self.footer.status.setText("")
            self.footer.progress.setRange(0, 1)
            self.footer.progress.setValue(0)
        self.model_path, self.model_inputs, self.resizable = path, tuple(inputs), resizable
        self.model_format = model_format
        litert = model_format == "tflite"
        for combo, titles, litert_titles in ((self.target_combo, TARGET_TITLES, LITERT_TARGET_TITLES),
                                             (self.mode_combo, MODE_TITLES, LITERT_MODE_TITLES)):
            for key, title in titles.items():
                index = combo.findData(key)
                if index >= 0:
                    combo.setItemText(index, litert_titles[key] if litert else title)
        self.check_fields()

    def field_problems(self) -> tuple[str, str]:
        """(error, warning) about the fields: an error stops the run, a warning only says what to expect."""
        try:
            sizes = parse_sizes(self.sizes_field.text())
        except (TargetError, ValueError) as exc:
            return f"Input size: {exc}", ""
        error = ""
        android = is_android_target(self.target_name())
        self.form.setRowVisible(self.benchmark_field, android)
        self.form.setRowVisible(self.delegates_field, android)
        if android:
            return self._android_problems(), ""
        if self.model_format.startswith("coreml") and self.target_name() == "cpu":
            from engine.targets.cpu import COREML_MESSAGE
            error = f"CPU reference: {COREML_MESSAGE}"
        elif is_coreml_target(self.target_name()) and self.mode_combo.currentData() == "exact":
            error = ("Core ML has no exact mode (it compiles and fuses the whole model): choose Deployed; "
                     "per-layer times there are attributed by the compute plan's costs")
        elif sizes and not self.resizable and self.model_inputs and self.model_format != "tflite":
            from engine.targets.cpu import resolve_input_shapes
            try:
                for size in sizes:
                    resolve_input_shapes(self.model_inputs, ProfileSettings(size=size))
            except TargetError as exc:
                error = f"Input size: {exc}"
        threads, cores = self.threads_spin.value(), os.cpu_count() or 1
        warning = ""
        if sizes and self.model_format == "tflite":
            # LiteRT overrides a .tflite's fixed shapes (non-strict resize); whether the model follows
            # is only known when LiteRT plans it: the run stops at a size it cannot take, naming it.
            warning = ("A .tflite model's input shapes are fixed: LiteRT resizes them anyway; a model that "
                       "does not follow a size stops there, keeping the sizes measured before it. ")
        if threads > cores:
            warning += (f"{threads} threads on {cores} cores: the threads take turns, so per-layer times "
                       "overlap and include waiting (coverage above 100 %). One thread per core at most, "
                       "1 for stable per-layer times.")
        return error, warning

    def _android_problems(self) -> str:
        from engine.targets.android import parse_delegates
        if self.model_format and self.model_format != "tflite":
            return "Android phones run LiteRT models (.tflite) with benchmark_model: open a .tflite model"
        if not self.benchmark_field.text().strip():
            from engine.bridge.android import BINARY_HINT
            return f"benchmark_model: {BINARY_HINT}"
        try:
            parse_delegates(self.delegates_field.text())
        except TargetError as exc:
            return f"Delegates: {exc}"
        return ""

    def check_fields(self) -> bool:
        """Show what is wrong at once (not after Run); False when the run cannot start."""
        error, warning = self.field_problems()
        if error:
            self.check_label.setText(f"<span style='color:#b00'>{html.escape(error)}</span>")
        elif warning:
            self.check_label.setText(f"<span style='color:#a60'>{html.escape(warning)}</span>")
        else:
            self.check_label.setText("")
        self.check_label.setVisible(bool(error or warning))
        self.run_button.setEnabled(not error and not self.cancel_button.isEnabled())
        return not error

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
        error, _ = self.field_problems()
        if error:
            raise TargetError(error)
        settings = ProfileSettings(mode=self.mode_combo.currentData(), runs=self.runs_spin.value(),
                                   warmup=self.warmup_spin.value(), threads=self.threads_spin.value())
        if is_android_target(target):
            return RunRequest(self.model_path, target, settings, parse_sizes(self.sizes_field.text()),
                              self.benchmark_field.text().strip(), self.delegates_field.text().strip())
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
        self.cancel_button.setEnabled(running)
        self.run_button.setEnabled(not running and not self.field_problems()[0])
        for widget in (self.target_combo, self.mode_combo, self.runs_spin, self.warmup_spin, self.threads_spin,
                       self.sizes_field, self.benchmark_field, self.delegates_field):
            widget.setEnabled(not running)
        if running:
            self.footer.show_busy()

    def show_progress(self, done: int, total: int, message: str) -> None:
        self.footer.show_progress(done, total, message)

    def show_finished(self, message: str, complete: bool = True) -> None:
        self.set_running(False)
        self.footer.show_finished(message, complete)
