"""File helpers shared by every writer: atomic text writes and JSON-safe values."""
from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Mapping, Union


def write_text_atomically(path: Union[str, os.PathLike], text: str) -> Path:
    """Write `text` so that `path` is always either the old file or the complete new one.

    The bytes go to a temporary file in the same folder (so the rename stays on
    one file system), are flushed to disk, then renamed over the target; a crash
    or a full disk leaves the old file and no stray temporary.
    """
    path = Path(path)
    try:
        handle, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=str(path.parent))
    except OSError as exc:  # name the file asked for, not the temporary
        raise OSError(exc.errno, exc.strerror, str(path)) from None
    try:
        # mkstemp makes the file private (0600); a report or export is an ordinary file: the
        # mode a plain open() would give (the folder's umask), or the replaced file's own.
        os.chmod(tmp, path.stat().st_mode & 0o7777 if path.exists() else 0o666 & ~_umask())
        with os.fdopen(handle, "w", encoding="utf-8") as stream:
            stream.write(text)
            stream.flush()
            os.fsync(stream.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.remove(tmp)
        except OSError:
            pass
        raise
    return path


def _umask() -> int:
    """The process's umask.  Linux reports it; elsewhere os.umask can only read it by setting it
    (set back at once, but a file another thread makes in between gets 022, not the user's mask)."""
    try:
        with open("/proc/self/status", encoding="ascii") as status:
            for line in status:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def jsonable(value):
    """Settings and rows may hold tuples, Paths and numpy scalars; JSON wants lists, strings and numbers."""
    if isinstance(value, Mapping):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [jsonable(v) for v in value]
    if isinstance(value, Path):
        return str(value)
    if hasattr(value, "item") and callable(value.item):  # numpy scalar
        return value.item()
    return value
