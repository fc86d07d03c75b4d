"""Before Qt opens a window on Linux/X11: are the system libraries its xcb plugin needs there?

Qt 6.5+ wheels (PySide6) load the X11 platform plugin only when `libxcb-cursor0` is installed
(Qt opens it at run time, so it is not among the plugin's linked libraries) and, on minimal
systems, `libxcb-icccm4`, `libxcb-keysyms1` and a few more.  Without them Qt aborts the process
with "Could not load the Qt platform plugin "xcb"", which names no fix.  This module finds what
is missing with `ldd` on the plugin (plus a load of libxcb-cursor) and says which apt line
installs it.  No Qt import: it runs before any.
"""
from __future__ import annotations

import ctypes
import importlib.util
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Optional

# Opened by Qt at run time rather than linked: ldd cannot see it.
RUNTIME_LIBRARIES = ("libxcb-cursor.so.0",)

# Debian/Ubuntu package of each library a PySide6 xcb plugin may miss (checked on Debian 12
# and Ubuntu 22.04/24.04); others follow Debian's naming rule (see `debian_package`).
DEBIAN_PACKAGES = {
    "libxcb-cursor.so.0": "libxcb-cursor0", "libxcb-icccm.so.4": "libxcb-icccm4",
    "libxcb-keysyms.so.1": "libxcb-keysyms1", "libxcb-image.so.0": "libxcb-image0",
    "libxcb-render-util.so.0": "libxcb-render-util0", "libxkbcommon-x11.so.0": "libxkbcommon-x11-0",
    "libxkbcommon.so.0": "libxkbcommon0", "libX11-xcb.so.1": "libx11-xcb1", "libEGL.so.1": "libegl1",
    "libGL.so.1": "libgl1", "libOpenGL.so.0": "libopengl0", "libfontconfig.so.1": "libfontconfig1",
    "libdbus-1.so.3": "libdbus-1-3", "libfreetype.so.6": "libfreetype6", "libglib-2.0.so.0": "libglib2.0-0",
}

_NOT_FOUND = re.compile(r"^\s*(\S+)\s*=>\s*not found", re.MULTILINE)


def debian_package(soname: str) -> str:
    """The Debian package that ships `soname`: the table, else Debian's rule
    (libxcb-shape.so.0 -> libxcb-shape0; a name ending in a digit gets a dash: libfoo2.so.1 -> libfoo2-1)."""
    if soname in DEBIAN_PACKAGES:
        return DEBIAN_PACKAGES[soname]
    match = re.match(r"^(lib[^.]+)\.so\.(\d+)", soname)
    if not match:
        return soname
    name, version = match.group(1).lower(), match.group(2)
    return f"{name}-{version}" if name[-1].isdigit() else f"{name}{version}"


def missing_from_ldd(ldd_output: str) -> list[str]:
    """The libraries `ldd` reports as "not found", once each, in order."""
    return list(dict.fromkeys(_NOT_FOUND.findall(ldd_output)))


def xcb_plugin() -> Optional[Path]:
    spec = importlib.util.find_spec("PySide6")
    if spec is None or not spec.submodule_search_locations:
        return None
    plugin = Path(list(spec.submodule_search_locations)[0]) / "Qt" / "plugins" / "platforms" / "libqxcb.so"
    return plugin if plugin.is_file() else None


def missing_xcb_libraries() -> list[str]:
    """Libraries the xcb platform plugin needs that this system lacks ([] when unknown)."""
    plugin = xcb_plugin()
    if plugin is None:
        return []
    try:
        output = subprocess.run(["ldd", str(plugin)], capture_output=True, text=True, timeout=10).stdout
    except (OSError, subprocess.SubprocessError):
        output = ""  # no ldd: only the run-time libraries can be checked
    missing = missing_from_ldd(output)
    for soname in RUNTIME_LIBRARIES:
        try:
            ctypes.CDLL(soname)
        except OSError:
            missing.append(soname)
    return missing


def uses_xcb() -> bool:
    """True when Qt will pick its X11 plugin: Linux, no other platform asked for, an X display."""
    if not sys.platform.startswith("linux"):
        return False
    platform = os.environ.get("QT_QPA_PLATFORM", "")
    if platform:
        return platform.split(":")[0].split(";")[0] == "xcb"
    # Qt prefers Wayland in a Wayland session when its plugin loads; X11 otherwise.
    return bool(os.environ.get("DISPLAY")) and not os.environ.get("WAYLAND_DISPLAY")


def display_problem() -> Optional[str]:
    """One message naming the missing libraries and the apt line that installs them, or None."""
    if not uses_xcb():
        return None
    missing = missing_xcb_libraries()
    if not missing:
        return None
    packages = " ".join(dict.fromkeys(debian_package(s) for s in missing))
    return (f"Qt cannot open a window on this X11 display: {', '.join(missing)} "
            f"{'is' if len(missing) == 1 else 'are'} not installed. On Debian/Ubuntu: "
            f"sudo apt-get install {packages}")
