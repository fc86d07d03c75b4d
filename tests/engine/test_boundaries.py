"""engine/ and importers/ never import Qt: the headless CLI must run without a display stack."""
from __future__ import annotations

import subprocess
import sys


def test_engine_and_importers_do_not_load_qt(sample_model):
    code = (
        "import sys, importlib, pkgutil, engine, importers\n"
        "for package in (engine, importers):\n"
        "    for info in pkgutil.walk_packages(package.__path__, package.__name__ + '.'):\n"
        "        if info.name != 'engine.__main__':\n"
        "            importlib.import_module(info.name)\n"
        "from importers import open_model\n"
        "from engine.analysis import analyze\n"
        f"analyze(open_model({str(sample_model)!r}))\n"
        "loaded = sorted(m for m in sys.modules if m.split('.')[0] in ('PySide6', 'pyqtgraph', 'shiboken6', 'gui'))\n"
        "print(','.join(loaded))\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == ""
