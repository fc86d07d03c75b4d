"""Files LayerScope writes (reports, exports, sessions) get the mode an ordinary write gives them,
not the private 0600 of the temporary file they are written through."""
from __future__ import annotations

import os
import stat
import sys

import pytest

from engine.files import write_text_atomically

pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="POSIX file modes")


@pytest.fixture
def umask_022():
    old = os.umask(0o022)
    yield
    os.umask(old)


def test_a_new_file_follows_the_umask(tmp_path, umask_022):
    path = write_text_atomically(tmp_path / "report.html", "<html></html>")
    assert stat.S_IMODE(path.stat().st_mode) == 0o644
    assert path.read_text() == "<html></html>"
    assert [p.name for p in tmp_path.iterdir()] == ["report.html"]  # no temporary left


def test_a_replaced_file_keeps_its_own_mode(tmp_path, umask_022):
    path = tmp_path / "profile.json"
    path.write_text("{}")
    path.chmod(0o640)
    write_text_atomically(path, '{"a": 1}')
    assert stat.S_IMODE(path.stat().st_mode) == 0o640 and path.read_text() == '{"a": 1}'


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="Linux reports the umask in /proc/self/status")
def test_the_umask_is_read_without_being_changed(tmp_path, monkeypatch):
    """Setting the umask to read it changes it for the whole process for a moment: a file another
    thread (a profile's worker) makes meanwhile would get 022, not the user's private 077."""
    old = os.umask(0o077)
    set_to = []
    real_umask = os.umask
    monkeypatch.setattr(os, "umask", lambda mask: set_to.append(mask) or real_umask(mask))
    try:
        path = write_text_atomically(tmp_path / "report.html", "<html></html>")
    finally:
        monkeypatch.undo()
        os.umask(old)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600 and set_to == []
