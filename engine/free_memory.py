"""Whether a model's weights kept outside its file fit in the memory free to read them.

Profiling on the CPU reference (engine.targets.cpu) and conversion (engine.convert.source) read
every such weight into memory; a model larger than the free memory would swap or be killed, with
no word of why (t20k.onnx: 42.5 GiB of weights on a 24 GiB computer).  They ask here first.

The free memory is the system's own estimate: Linux's MemAvailable, macOS's free, inactive and
speculative pages (`vm_stat`, as psutil counts them), Windows' available physical memory
(GlobalMemoryStatusEx).  Where it cannot be read the check is skipped and says so; a person who
knows better (swap, memory about to be freed) can read the weights anyway (IGNORE_OPTION).
"""
from __future__ import annotations

import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Optional

if TYPE_CHECKING:
    import onnx

# The CLI option (profile, convert) that reads the weights although they exceed the free memory.
IGNORE_OPTION = "--ignore-memory-check"


def available_memory_bytes() -> Optional[int]:
    """The memory this computer has free for a new load (the system's estimate), None where unknown."""
    if sys.platform == "darwin":
        return _macos_available()
    if sys.platform == "win32":
        return _windows_available()
    return _linux_available()


def _linux_available() -> Optional[int]:
    try:
        with open("/proc/meminfo", encoding="ascii") as meminfo:
            for line in meminfo:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


def _macos_available() -> Optional[int]:
    try:
        output = subprocess.run(["vm_stat"], capture_output=True, text=True, timeout=5, check=True).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    return parse_vm_stat(output)


_PAGE_SIZE = re.compile(r"page size of (\d+) bytes")
_PAGES = re.compile(r"^Pages (free|inactive|speculative):\s+(\d+)\.?\s*$", re.MULTILINE)


def parse_vm_stat(text: str) -> Optional[int]:
    """Bytes free for a new load from macOS `vm_stat` output: free, inactive and speculative pages
    (inactive and speculative pages are given up at once when asked for); None when any is missing."""
    page_size = _PAGE_SIZE.search(text)
    pages = {name: int(count) for name, count in _PAGES.findall(text)}
    if page_size is None or len(pages) != 3:
        return None
    return sum(pages.values()) * int(page_size.group(1))


def _windows_available(global_memory_status_ex=None) -> Optional[int]:
    """ullAvailPhys of kernel32's GlobalMemoryStatusEx (`global_memory_status_ex` stands in for it)."""
    import ctypes

    class MemoryStatusEx(ctypes.Structure):  # MEMORYSTATUSEX
        _fields_ = [("dwLength", ctypes.c_uint32), ("dwMemoryLoad", ctypes.c_uint32),  # DWORD: 32 bits
                    ("ullTotalPhys", ctypes.c_ulonglong), ("ullAvailPhys", ctypes.c_ulonglong),
                    ("ullTotalPageFile", ctypes.c_ulonglong), ("ullAvailPageFile", ctypes.c_ulonglong),
                    ("ullTotalVirtual", ctypes.c_ulonglong), ("ullAvailVirtual", ctypes.c_ulonglong),
                    ("ullAvailExtendedVirtual", ctypes.c_ulonglong)]

    status = MemoryStatusEx()
    status.dwLength = ctypes.sizeof(MemoryStatusEx)
    try:
        if global_memory_status_ex is None:
            global_memory_status_ex = ctypes.windll.kernel32.GlobalMemoryStatusEx
        if not global_memory_status_ex(ctypes.byref(status)):
            return None
    except (AttributeError, OSError):
        return None
    return int(status.ullAvailPhys)


@dataclass(frozen=True)
class MemoryCheck:
    """The outcome for one model: `refusal` (the weights do not fit; None when they do, or when
    ignored or unknown) and `note` (the check was skipped or overridden: a warning to show)."""

    refusal: Optional[str] = None
    note: Optional[str] = None


def check_external_data(proto: "onnx.ModelProto", path: Path, ignore: bool = False) -> MemoryCheck:
    """Whether the weights of `proto` (read from `path`) kept outside the model file fit the free
    memory, both figures named and said how they were obtained.  Nothing of the weights is read.
    `ignore`: too large is a note, not a refusal."""
    import onnx

    external = sum(_external_bytes(t, Path(path).parent) for t in proto.graph.initializer
                   if t.data_location == onnx.TensorProto.EXTERNAL)
    if external == 0:
        return MemoryCheck()
    available = available_memory_bytes()
    stored = f"its weights outside the model file take {external / 2**30:,.1f} GiB (as stored)"
    if available is None:
        return MemoryCheck(note=f"{stored}; the memory free on this computer could not be read here, so "
                                "whether they fit was not checked")
    if external <= available:
        return MemoryCheck()
    beyond = f"{stored}, more than the {available / 2**30:,.1f} GiB of memory free on this computer " \
             "(the system's estimate)"
    if ignore:
        return MemoryCheck(note=f"{beyond}; read anyway ({IGNORE_OPTION})")
    return MemoryCheck(refusal=beyond)


def is_memory_refusal(message: str) -> bool:
    """Whether an error message is this refusal (it names IGNORE_OPTION as the way past it)."""
    return "of memory free on this computer" in message and IGNORE_OPTION in message


def _external_bytes(tensor: "onnx.TensorProto", folder: Path) -> int:
    """The bytes onnx reads for a tensor kept outside the model file, as stored: its `length`, else
    the rest of its file (not elements x a byte: int4 and smaller types pack several to a byte)."""
    info = {entry.key: entry.value for entry in tensor.external_data}
    try:
        if "length" in info:
            return int(info["length"])
        return max(0, (folder / info["location"]).stat().st_size - int(info.get("offset", 0)))
    except (KeyError, OSError, ValueError):
        return 0  # no such file or a bad entry: reading it fails with its own error
