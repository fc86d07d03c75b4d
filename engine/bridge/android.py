"""Android phones over adb, and Google's `benchmark_model` on them.

There is no LayerScope app for Android.  The device-side program is LiteRT's (TensorFlow
Lite's) C++ `benchmark_model`, which the user supplies: Google publishes it as a prebuilt
for android_aarch64 on its own storage (the LiteRT performance-measurement page), not on
any package registry.  adbutils (pure Python; it talks to the adb server, and starts it
with the `adb` it bundles or finds on PATH) lists the phones, pushes the model and the
binary to /data/local/tmp/layerscope/, runs the binary with streamed output, and pulls
the per-operator profile (`BenchmarkProfilingData`) and the runtime info
(`ModelRuntimeDetails`) it writes.

    phones, notes = list_android_phones()
    phone = open_android_phone("R5CT12345")        # or None: the only phone connected
    phone.push(local, remote); phone.pull(remote) -> bytes
    run = phone.run_benchmark(arguments, on_line, cancel)   # BenchmarkRun: exit code, output

Every call to the phone goes through adbutils' `AdbClient` (the adb server protocol over
TCP, ANDROID_ADB_SERVER_HOST/PORT); the tests serve that protocol from a fake adb server
on a loopback socket.  Nothing here has run against a real phone (docs/android.md).
"""
from __future__ import annotations

import os
import re
import shlex
import socket
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional, Sequence

from engine.targets.settings import TargetError

__all__ = ["BENCHMARK_ENV", "DEVICE_DIR", "DELEGATES", "BINARY_HINT", "EXTRA_HINT", "AndroidPhone",
           "BenchmarkRun", "PhoneDisconnected", "BenchmarkCancelled", "list_android_phones",
           "open_android_phone", "benchmark_binary", "elf_abi", "parse_benchmark_output"]

BENCHMARK_ENV = "LAYERSCOPE_BENCHMARK_MODEL"
DEVICE_DIR = "/data/local/tmp/layerscope"
# What each delegate setting adds to benchmark_model's command line.
DELEGATES = {"cpu": ("--use_xnnpack=false",), "xnnpack": (), "gpu": ("--use_gpu=true",)}
EXIT_MARKER = "LAYERSCOPE_EXIT:"
EXTRA_HINT = "pip install 'layerscope[android]'  (adbutils)"
BINARY_HINT = ("benchmark_model is Google's LiteRT benchmark tool: Google publishes it as a prebuilt for "
               "android_aarch64 on its own storage (linked from the LiteRT performance-measurement page; it is "
               "on no package registry), or build it from the LiteRT sources. Download it once and pass "
               f"--benchmark-model PATH, or set {BENCHMARK_ENV}")
NO_ADB = ("adb is not available, so Android phones cannot be reached: install Android's platform-tools (Debian "
          "and Ubuntu: `apt install adb`; otherwise Android Studio's SDK Manager) and make sure `adb devices` "
          "works")
UNAUTHORIZED = ("is connected but not authorised for USB debugging: unlock the phone and accept the 'Allow USB "
                "debugging?' prompt on its screen (tick 'Always allow from this computer'), then try again")
NO_PHONE = ("no Android phone is connected over adb: connect one by USB with USB debugging on (Settings > About "
            "phone > tap Build number 7 times, then Settings > System > Developer options > USB debugging)")
# ELF e_machine -> the Android ABI it runs on.
ELF_MACHINES = {183: "arm64-v8a", 40: "armeabi-v7a", 62: "x86_64", 3: "x86"}
PROPERTIES = {"model": "ro.product.model", "manufacturer": "ro.product.manufacturer",
              "soc": "ro.soc.model", "soc_manufacturer": "ro.soc.manufacturer",
              "android_version": "ro.build.version.release", "sdk": "ro.build.version.sdk",
              "abi": "ro.product.cpu.abi", "abilist": "ro.product.cpu.abilist"}
# How long a read of the streamed output waits before looking at the cancel flag again.
POLL_S = 0.2


class PhoneDisconnected(TargetError):
    """The phone went away (cable pulled, adb restarted, phone rebooted) during a call."""


class BenchmarkCancelled(Exception):
    """The person cancelled while benchmark_model was running (the process on the phone is stopped)."""


def _adbutils():
    try:
        import adbutils
    except ImportError:
        raise TargetError(f"Android phones are reached through adbutils, which is not installed: {EXTRA_HINT}") \
            from None
    return adbutils


def _client():
    """An adbutils client whose adb server answers (adbutils starts the server when none runs)."""
    adbutils = _adbutils()
    client = adbutils.AdbClient()  # ANDROID_ADB_SERVER_HOST / _PORT, like adb itself
    try:
        client.server_version()
    except Exception as exc:  # AdbError "No adb exe could be found", FileNotFoundError, a server that never came up
        raise TargetError(f"{NO_ADB} ({type(exc).__name__}: {exc})") from None
    return client


# ============================================================================ listing

def _read_properties(device) -> dict[str, str]:
    """All system properties in one `getprop` (lines "[name]: [value]")."""
    output = device.shell("getprop", timeout=10)
    found = dict(re.findall(r"^\[([^\]]+)\]: \[(.*)\]\s*$", output, flags=re.MULTILINE))
    return {key: found.get(name, "") for key, name in PROPERTIES.items()}


def _phone_entry(client, info) -> dict:
    tags = dict(getattr(info, "tags", None) or {})
    entry = {"serial": info.serial, "state": info.state, "model": tags.get("model", "").replace("_", " "),
             "manufacturer": "", "soc": "", "soc_manufacturer": "", "android_version": "", "sdk": "", "abi": "",
             "abilist": [], "delegates": list(DELEGATES)}
    if info.state == "device":
        try:
            properties = _read_properties(client.device(info.serial))
        except Exception as exc:  # went away between the listing and the question
            entry["ready"] = False
            entry["detail"] = f"could not read its properties ({type(exc).__name__}: {exc})"
            return entry
        entry.update({k: v for k, v in properties.items() if k != "abilist"})
        entry["model"] = properties["model"] or entry["model"]
        entry["abilist"] = [a for a in properties["abilist"].split(",") if a] or \
            ([properties["abi"]] if properties["abi"] else [])
        entry["ready"] = True
    elif info.state == "unauthorized":
        entry["ready"] = False
        entry["detail"] = f"{info.serial} {UNAUTHORIZED}"
    else:  # offline, bootloader, recovery, sideload, no permissions
        entry["ready"] = False
        entry["detail"] = (f"{info.serial} is {info.state}: reconnect the cable and unlock the phone "
                           "(`adb devices` should show it as 'device')")
    return entry


def list_android_phones() -> tuple[list[dict], list[str]]:
    """(phones adb knows, in any state; notes).  Never raises: a missing adb or adbutils becomes a note."""
    try:
        client = _client()
        infos = client.list(extended=True)
    except TargetError as exc:
        return [], [f"Android: {exc}"]
    except Exception as exc:
        return [], [f"Android: the adb server could not be asked for devices ({type(exc).__name__}: {exc})"]
    entries = [_phone_entry(client, info) for info in infos]
    return entries, ([] if entries else [f"Android: {NO_PHONE}"])


def open_android_phone(serial: Optional[str]) -> "AndroidPhone":
    """The phone `serial` (None: the only one connected), ready for commands; one-line errors otherwise."""
    client = _client()
    try:
        infos = client.list(extended=True)
    except Exception as exc:
        raise TargetError(f"the adb server could not be asked for devices ({type(exc).__name__}: {exc})") from None
    if serial is None:
        if not infos:
            raise TargetError(NO_PHONE)
        if len(infos) > 1:
            raise TargetError(f"{len(infos)} Android phones are connected: name one with android:SERIAL "
                              f"({', '.join(i.serial for i in infos)})")
        info = infos[0]
    else:
        matching = [i for i in infos if i.serial == serial]
        if not matching:
            known = ", ".join(f"{i.serial} ({i.state})" for i in infos) or "none"
            raise TargetError(f"no Android phone {serial!r} is connected over adb; connected: {known}")
        info = matching[0]
    entry = _phone_entry(client, info)
    if not entry["ready"]:
        raise TargetError(entry["detail"])
    return AndroidPhone(client, entry)


# ============================================================================ the binary

def elf_abi(path: Path) -> Optional[str]:
    """The Android ABI an ELF executable is built for, from its header (None: not ELF or unknown machine)."""
    with open(path, "rb") as handle:
        header = handle.read(20)
    if len(header) < 20 or header[:4] != b"\x7fELF":
        return None
    byte_order = "little" if header[5] == 1 else "big"
    return ELF_MACHINES.get(int.from_bytes(header[18:20], byte_order), f"machine {int.from_bytes(header[18:20], byte_order)}")


def benchmark_binary(given: Optional[str]) -> Path:
    """The benchmark_model the person gave (option, else LAYERSCOPE_BENCHMARK_MODEL), checked to be an ELF file."""
    text = given or os.environ.get(BENCHMARK_ENV, "")
    if not text:
        raise TargetError(f"android targets need Google's benchmark_model for the phone. {BINARY_HINT}")
    path = Path(text).expanduser()
    if not path.is_file():
        raise TargetError(f"benchmark_model not found at {path}. {BINARY_HINT}")
    if elf_abi(path) is None:
        raise TargetError(f"{path} is not a program for Android (no ELF header): give the android_aarch64 build of "
                          f"benchmark_model. {BINARY_HINT}")
    return path


# ============================================================================ one phone

@dataclass
class BenchmarkRun:
    """What one benchmark_model process said: its exit code and output lines (stdout and stderr merged)."""

    exit_code: int
    lines: list[str] = field(default_factory=list)

    @property
    def error_line(self) -> str:
        """benchmark_model's own reason for failing: its first ERROR line, else its last words."""
        for position, line in enumerate(self.lines):
            text = line.strip()
            if text.startswith("ERROR:"):
                parts = [text[len("ERROR:"):].strip()]
                # A message of several lines goes on without the prefix ("...not supported by GPU
                # delegate:" then the operators): up to two more lines, on one line.
                for more in self.lines[position + 1:position + 3]:
                    if not more.strip() or re.match(r"(INFO|ERROR|WARN(ING)?):", more.strip()):
                        break
                    parts.append(more.strip())
                return " ".join(parts)
        words = [line.strip() for line in self.lines if line.strip()]
        return words[-1] if words else f"exit code {self.exit_code}"


class AndroidPhone:
    """One connected phone (an adbutils device) with the commands a profile needs."""

    def __init__(self, client, entry: dict):
        self.client = client
        self.entry = dict(entry)
        self.serial = entry["serial"]
        self.name = f"{entry.get('model') or 'Android phone'} ({self.serial})"
        self.device = client.device(self.serial)

    def _problem(self, exc: BaseException, doing: str) -> TargetError:
        """A TargetError for a failed adb call: a phone that is gone says so."""
        text = str(exc)
        try:
            state = self.device.get_state()
        except Exception:
            state = "gone"
        if state != "device" or "not found" in text or isinstance(exc, (EOFError, ConnectionError)):
            return PhoneDisconnected(f"{self.name} disconnected while {doing}: reconnect it and profile again")
        return TargetError(f"{self.name}: {doing} failed ({type(exc).__name__}: {text})")

    def shell(self, command: str, timeout: float = 30) -> str:
        try:
            return self.device.shell(command, timeout=timeout)
        except Exception as exc:
            raise self._problem(exc, f"running `{command}`") from None

    def push(self, local: Path, remote: str, mode: int = 0o644) -> None:
        try:
            self.device.sync.push(str(local), remote, mode=mode)
        except Exception as exc:
            raise self._problem(exc, f"copying {Path(local).name} to the phone") from None

    def pull(self, remote: str) -> Optional[bytes]:
        """The file's bytes; None when the phone has no such file."""
        try:
            if not self.device.sync.exists(remote):
                return None
            return self.device.sync.read_bytes(remote)
        except Exception as exc:
            raise self._problem(exc, f"copying {remote} from the phone") from None

    def run_benchmark(self, binary: str, arguments: Sequence[str], on_line: Callable[[str], None],
                      cancel: Optional[threading.Event] = None) -> BenchmarkRun:
        """Run `binary` in DEVICE_DIR with streamed output.  Raises PhoneDisconnected when the stream ends
        without the exit status, BenchmarkCancelled after stopping the process when `cancel` is set."""
        command = (f"cd {DEVICE_DIR} && ./{binary} {' '.join(shlex.quote(a) for a in arguments)} 2>&1; "
                   f"echo {EXIT_MARKER}$?")
        try:
            connection = self.device.shell(command, stream=True)
        except Exception as exc:
            raise self._problem(exc, "starting benchmark_model") from None
        run = BenchmarkRun(exit_code=-1)
        pending = b""
        try:
            connection.conn.settimeout(POLL_S)
            while True:
                if cancel is not None and cancel.is_set():
                    raise BenchmarkCancelled()
                try:
                    chunk = connection.conn.recv(65536)
                except socket.timeout:
                    continue
                except OSError as exc:
                    raise self._problem(exc, "benchmark_model ran") from None
                if not chunk:
                    break
                pending += chunk
                *complete, pending = pending.split(b"\n")
                for raw in complete:
                    line = raw.decode("utf-8", errors="replace").rstrip("\r")
                    if line.startswith(EXIT_MARKER):
                        run.exit_code = int(line[len(EXIT_MARKER):].strip() or -1)
                        continue
                    run.lines.append(line)
                    on_line(line)
        except BenchmarkCancelled:
            connection.close()
            self._stop_benchmark(binary)
            raise
        finally:
            connection.close()
        if pending.startswith(EXIT_MARKER.encode()):
            run.exit_code = int(pending[len(EXIT_MARKER):].strip() or -1)
        elif run.exit_code == -1:  # the stream ended without the shell's last word: the phone went away
            raise PhoneDisconnected(f"{self.name} disconnected while benchmark_model ran: reconnect it and profile "
                                    "again")
        return run

    def _stop_benchmark(self, binary: str) -> None:
        """Closing the shell stream hangs up on the process; pkill makes sure (toybox has it since Android 6)."""
        try:
            self.device.shell(f"pkill -f {DEVICE_DIR}/{binary} || pkill {binary}", timeout=5)
        except Exception:
            pass  # gone already, or the phone with it


# ============================================================================ benchmark_model's output

_STATS = re.compile(r"count=(\d+)(?: first=(\d+))?(?: curr=(\d+))? min=(\d+) max=(\d+) avg=([\d.e+-]+) "
                    r"std=(\d+)")


@dataclass
class BenchmarkSummary:
    """The figures benchmark_model prints (microseconds as it prints them; ms properties)."""

    init_ms: Optional[float] = None
    warmup: Optional[dict] = None      # {"count", "min_us", "max_us", "avg_us", "std_us"}
    measured: Optional[dict] = None
    unconsumed_flags: list[str] = field(default_factory=list)
    peak_memory_mb: Optional[float] = None
    notes: list[str] = field(default_factory=list)


def parse_benchmark_output(lines: Sequence[str]) -> BenchmarkSummary:
    """The summary lines of benchmark_model's log: the first `count=` line is the warm-up, the second the
    measured runs; "Initialized session in X ms"; flags it did not know ("Unconsumed cmdline flags")."""
    summary = BenchmarkSummary()
    stats = []
    for line in lines:
        match = _STATS.search(line)
        if match:
            count, _first, _curr, low, high, avg, std = match.groups()
            stats.append({"count": int(count), "min_us": float(low), "max_us": float(high), "avg_us": float(avg),
                          "std_us": float(std)})
            continue
        match = re.search(r"Initialized session in ([\d.]+)\s*ms", line)
        if match:
            summary.init_ms = float(match.group(1))
            continue
        match = re.search(r"Unconsumed cmdline flags:\s*(.*)", line)
        if match:
            summary.unconsumed_flags += [f.split("=")[0].lstrip("-") for f in match.group(1).split()]
            continue
        match = re.search(r"peak memory footprint \(MB\)[^:]*:\s*([\d.]+)", line, flags=re.IGNORECASE)
        if match:
            summary.peak_memory_mb = float(match.group(1))
            continue
        if re.search(r"Replacing \d+ out of \d+ node\(s\) with delegate", line) or "delegate created" in line \
                or "Created TensorFlow Lite" in line:
            summary.notes.append(line.replace("INFO:", "").strip())
    if len(stats) >= 2:
        summary.warmup, summary.measured = stats[0], stats[-1]
    elif stats:
        summary.measured = stats[0]
    return summary
