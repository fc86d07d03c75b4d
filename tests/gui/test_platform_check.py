"""Missing X11 libraries are named with the apt line that installs them, before Qt aborts."""
from __future__ import annotations

import os
import subprocess
import sys

import pytest

from gui.platform_check import (debian_package, display_problem, missing_from_ldd, missing_xcb_libraries,
                                uses_xcb, xcb_plugin)

LDD_SAMPLE = """\
\tlinux-vdso.so.1 (0x00007ffd5b1f6000)
\tlibQt6XcbQpa.so.6 => /opt/PySide6/Qt/lib/libQt6XcbQpa.so.6 (0x00007f0e7e600000)
\tlibxcb-icccm.so.4 => not found
\tlibxcb-keysyms.so.1 => not found
\tlibxcb.so.1 => /lib/x86_64-linux-gnu/libxcb.so.1 (0x00007f0e7e5d0000)
\tlibxcb-icccm.so.4 => not found
"""


def test_not_found_lines_and_their_packages():
    assert missing_from_ldd(LDD_SAMPLE) == ["libxcb-icccm.so.4", "libxcb-keysyms.so.1"]
    assert [debian_package(s) for s in ("libxcb-cursor.so.0", "libxcb-icccm.so.4", "libxcb-shape.so.0",
                                        "libxkbcommon-x11.so.0", "libfoo2.so.1")] == \
        ["libxcb-cursor0", "libxcb-icccm4", "libxcb-shape0", "libxkbcommon-x11-0", "libfoo2-1"]


def test_this_machine_agrees_with_ldd(monkeypatch):
    plugin = xcb_plugin()
    assert plugin is not None and plugin.name == "libqxcb.so"
    ldd = subprocess.run(["ldd", str(plugin)], capture_output=True, text=True).stdout
    missing = missing_xcb_libraries()
    assert set(missing_from_ldd(ldd)) <= set(missing)
    monkeypatch.setenv("DISPLAY", ":99")
    monkeypatch.delenv("WAYLAND_DISPLAY", raising=False)
    monkeypatch.delenv("QT_QPA_PLATFORM", raising=False)
    assert uses_xcb()
    problem = display_problem()
    if missing:
        assert problem.endswith("sudo apt-get install " + " ".join(dict.fromkeys(debian_package(s) for s in missing)))
    else:
        assert problem is None
    monkeypatch.setenv("QT_QPA_PLATFORM", "offscreen")  # no X11 plugin involved
    assert not uses_xcb() and display_problem() is None


def test_the_app_command_says_what_to_install_instead_of_aborting(tmp_path):
    env = dict(os.environ, DISPLAY=":99")
    env.pop("QT_QPA_PLATFORM", None)
    env.pop("WAYLAND_DISPLAY", None)
    result = subprocess.run([sys.executable, "-m", "gui.cli", "view", "--screenshot", str(tmp_path / "x.png")],
                            capture_output=True, text=True, timeout=120, env=env)
    if not missing_xcb_libraries():
        pytest.skip("this system has every library the xcb plugin needs")
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert result.stderr.strip().startswith("layerscope: Qt cannot open a window") and "apt-get install" in result.stderr
