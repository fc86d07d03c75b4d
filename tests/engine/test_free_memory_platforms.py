"""The free-memory check on every platform and its override (engine.free_memory).

macOS and Windows cannot run here: their readings are tested at the system's seam (a `vm_stat` on
PATH printing a captured-format text, a stand-in for kernel32's GlobalMemoryStatusEx); the refusal
and its override run for real on this Linux computer (the CLI in a child process)."""
from __future__ import annotations

import ctypes
import os
import subprocess
import sys

import onnx
import pytest

from engine.free_memory import (IGNORE_OPTION, _windows_available, available_memory_bytes, check_external_data,
                                is_memory_refusal, parse_vm_stat)
from engine.targets.cpu import check_external_data_fits
from tests.engine.test_weights_beyond_memory import _model_with_external_weight

linux_only = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="free memory read from /proc/meminfo")

# The format of `vm_stat` on an Apple Silicon Mac (16 KiB pages): free, inactive and speculative
# pages are free for a new load; the rest (active, wired, compressed) are not.
VM_STAT = """Mach Virtual Memory Statistics: (page size of 16384 bytes)
Pages free:                               10069.
Pages active:                            432859.
Pages inactive:                          426177.
Pages speculative:                         5899.
Pages throttled:                              0.
Pages wired down:                        171481.
Pages purgeable:                          11278.
"Translation faults":                1935466161.
Pages copy-on-write:                   84466299.
Pages zero filled:                   1166655512.
Pages reactivated:                     14752750.
Pages purged:                          21102159.
File-backed pages:                       291024.
Anonymous pages:                         573911.
Pages stored in compressor:             2109283.
Pages occupied by compressor:            896411.
Decompressions:                       262651433.
Compressions:                         299787917.
Pageins:                               34108806.
Pageouts:                                616542.
Swapins:                               10297542.
Swapouts:                              11167823.
"""
VM_STAT_FREE = (10069 + 426177 + 5899) * 16384


def test_vm_stat_counts_free_inactive_and_speculative_pages():
    assert parse_vm_stat(VM_STAT) == VM_STAT_FREE
    # An Intel Mac's 4 KiB pages: the page size is read, not assumed.
    assert parse_vm_stat(VM_STAT.replace("16384 bytes", "4096 bytes")) == VM_STAT_FREE // 4
    assert parse_vm_stat("vm_stat: command failed") is None
    assert parse_vm_stat(VM_STAT.replace("Pages inactive:", "Pages idle:")) is None  # not a guess from two


@pytest.fixture
def as_on_a_mac(monkeypatch, tmp_path):
    """sys.platform "darwin" and a PATH holding only what the test puts in tmp_path/bin."""
    folder = tmp_path / "bin"
    folder.mkdir()
    monkeypatch.setattr(sys, "platform", "darwin")
    monkeypatch.setenv("PATH", str(folder))
    return folder


def test_on_a_mac_the_reading_comes_from_vm_stat(as_on_a_mac):
    tool = as_on_a_mac / "vm_stat"
    tool.write_text(f"#!{sys.executable}\nimport sys\nsys.stdout.write({VM_STAT!r})\n")
    tool.chmod(0o755)
    assert available_memory_bytes() == VM_STAT_FREE


def test_without_a_reading_the_check_says_it_was_skipped(as_on_a_mac, tmp_path):
    path = _model_with_external_weight(tmp_path, 2**40 // 32)  # 1 TiB declared: far beyond any memory
    proto = onnx.load(str(path), load_external_data=False)
    assert available_memory_bytes() is None  # no vm_stat on this PATH
    check = check_external_data(proto, path)
    assert check.refusal is None
    assert check.note == ("its weights outside the model file take 1,024.0 GiB (as stored); the memory free on "
                          "this computer could not be read here, so whether they fit was not checked")
    assert check_external_data_fits(proto, path) == f"model.onnx: {check.note}"  # a warning of the profile


def test_windows_reading_is_the_available_physical_memory():
    seen = []

    def global_memory_status_ex(pointer):  # kernel32's, as Windows fills MEMORYSTATUSEX
        status = pointer._obj
        seen.append(status.dwLength)
        status.ullTotalPhys, status.ullAvailPhys = 32 * 2**30, 9 * 2**30
        return 1

    assert _windows_available(global_memory_status_ex) == 9 * 2**30
    assert seen == [64]  # the structure's size, as the call requires
    assert _windows_available(lambda pointer: 0) is None  # the call failed
    if sys.platform != "win32":
        assert not hasattr(ctypes, "windll") and _windows_available() is None


@linux_only
def test_the_override_turns_the_refusal_into_a_warning(tmp_path):
    path = _model_with_external_weight(tmp_path, int(2 * available_memory_bytes() / 32) + 1)
    proto = onnx.load(str(path), load_external_data=False)
    refused = check_external_data(proto, path)
    assert refused.refusal is not None and refused.note is None
    overridden = check_external_data(proto, path, ignore=True)
    assert overridden.refusal is None
    assert overridden.note == f"{refused.refusal}; read anyway ({IGNORE_OPTION})"
    (tmp_path / "small").mkdir()
    small = _model_with_external_weight(tmp_path / "small", 16)
    fits = check_external_data(onnx.load(str(small), load_external_data=False), small)
    assert fits.refusal is None and fits.note is None


def _cli(*arguments):
    environment = dict(os.environ, PYTHONPATH=os.getcwd())
    return subprocess.run([sys.executable, "-m", "engine", *arguments], capture_output=True, text=True,
                          env=environment, timeout=300)


@linux_only
@pytest.mark.parametrize("command", ["profile", "convert"])
def test_the_cli_refuses_and_names_the_option_and_the_option_goes_past(tmp_path, command):
    path = _model_with_external_weight(tmp_path, int(2 * available_memory_bytes() / 32) + 1)
    output = ["--runs", "1", "--warmup", "0"] if command == "profile" else ["-o", str(tmp_path / "m.mlpackage")]
    refused = _cli(command, str(path), *output)
    assert refused.returncode != 0 and is_memory_refusal(refused.stderr), refused.stderr
    assert "Traceback" not in refused.stderr
    # Past the check: the weights are read, and this file holds 32 bytes of the 45 GB it declares.
    anyway = _cli(command, str(path), *output, IGNORE_OPTION)
    assert anyway.returncode != 0 and "could not read its external data" in anyway.stderr, anyway.stderr
    assert not is_memory_refusal(anyway.stderr) and "Traceback" not in anyway.stderr
