"""Whether a model's weights kept outside its file fit in the memory free to read them.

Profiling on the CPU reference (engine.targets.cpu) and conversion (engine.convert.source) read
every such weight into memory; a model larger than the free memory would swap or be killed, with
no word of why (t20k.onnx: 42.5 GiB of weights on a 24 GiB computer).  They ask here first.
"""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import onnx


def available_memory_bytes() -> Optional[int]:
    """The memory this computer has free for a new load (Linux's MemAvailable), None where unknown."""
    try:
        with open("/proc/meminfo", encoding="ascii") as meminfo:
            for line in meminfo:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


def external_data_beyond_memory(proto: onnx.ModelProto, path: Path) -> Optional[str]:
    """What is wrong when the weights of `proto` (read from `path`) kept outside the model file take
    more than the free memory, both figures named and said how they were obtained; None when they
    fit or the free memory is unknown (not Linux).  Nothing of the weights is read."""
    available = available_memory_bytes()
    if available is None:
        return None
    external = sum(_external_bytes(t, Path(path).parent) for t in proto.graph.initializer
                   if t.data_location == onnx.TensorProto.EXTERNAL)
    if external <= available:
        return None
    return (f"its weights outside the model file take {external / 2**30:,.1f} GiB (as stored), more than the "
            f"{available / 2**30:,.1f} GiB of memory free on this computer (the system's estimate)")


def _external_bytes(tensor: onnx.TensorProto, folder: Path) -> int:
    """The bytes onnx reads for a tensor kept outside the model file, as stored: its `length`, else
    the rest of its file (not elements x a byte: int4 and smaller types pack several to a byte)."""
    info = {entry.key: entry.value for entry in tensor.external_data}
    try:
        if "length" in info:
            return int(info["length"])
        return max(0, (folder / info["location"]).stat().st_size - int(info.get("offset", 0)))
    except (KeyError, OSError, ValueError):
        return 0  # no such file or a bad entry: reading it fails with its own error
