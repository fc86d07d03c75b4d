"""benchmarks/bench_group_open.py finishes when the background preparation of group opens is
switched off (gui.folded_groups.PREPARE_DELAY_MS set huge by a script that runs it, or
--no-prepare): it once waited for a preparation that only waited for its delay.

The bench runs as its users run it (a real app offscreen, in its own process, on a small folded
transformer), with a timeout well below the bench's own wait for a preparation.
"""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

import gui.folded_groups as folded_groups
from benchmarks.bench_group_open import PREPARATION_WAIT_S, PreparationNotFinished, wait_for_preparation
from engine.grouping import FOLD_NODES_ENVIRONMENT
from engine.transformer_samples import TransformerConfig, write_transformer
from tests.gui.gui_fixtures import open_and_wait, settings, window  # noqa: F401 (fixtures)

ROOT = Path(__file__).resolve().parents[2]
BENCH_TIMEOUT_S = PREPARATION_WAIT_S * 3 // 4  # the bench's whole run, a small model: ~10 s here
SWITCHED_OFF = """
import runpy, sys
import gui.folded_groups as folded_groups
folded_groups.PREPARE_DELAY_MS = 10**9  # background preparation never starts
sys.argv = ["bench_group_open.py"] + sys.argv[1:]
runpy.run_path("benchmarks/bench_group_open.py", run_name="__main__")
"""


@pytest.fixture(scope="module")
def transformer(tmp_path_factory):
    config = TransformerConfig(layers=4, hidden=64, heads=4, kv_heads=2, intermediate=96, vocab=50, past=5)
    return write_transformer(tmp_path_factory.mktemp("bench-noprep") / "decoder.onnx", config)


def _run_bench(command: list[str]) -> str:
    env = dict(os.environ, PYTHONPATH=str(ROOT), QT_QPA_PLATFORM="offscreen", **{FOLD_NODES_ENVIRONMENT: "100"})
    done = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=BENCH_TIMEOUT_S)
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout


def _row(output: str) -> list[str]:
    lines = output.splitlines()
    header = next(i for i, line in enumerate(lines) if line.lstrip().startswith("model nodes"))
    return lines[header + 1].split()


def test_the_bench_finishes_with_the_preparation_switched_off_by_a_script(transformer):
    output = _run_bench([sys.executable, "-c", SWITCHED_OFF, "--model", str(transformer), "--runs", "1"])
    assert "prepared opens not measured" in output
    row = _row(output)
    first, prepared, cached = row[3], row[4], row[5]
    assert float(first) > 0 and float(cached) > 0 and prepared == "-"


def test_the_bench_measures_unprepared_opens_only_with_no_prepare(transformer):
    output = _run_bench([sys.executable, "benchmarks/bench_group_open.py", "--model", str(transformer),
                         "--runs", "2", "--no-prepare"])
    row = _row(output)
    assert float(row[3]) > 0 and row[4] == "-" and float(row[5]) > 0


def test_the_bench_measures_prepared_opens_by_default(transformer):
    output = _run_bench([sys.executable, "benchmarks/bench_group_open.py", "--model", str(transformer),
                         "--runs", "1"])
    row = _row(output)
    assert float(row[3]) > 0 and float(row[4]) > 0 and float(row[5]) > 0 and float(row[-2]) > 0


def test_waiting_for_a_preparation_that_does_not_start_ends_with_an_error_naming_the_delay(
        qtbot, window, transformer, monkeypatch):
    monkeypatch.setenv(FOLD_NODES_ENVIRONMENT, "100")
    monkeypatch.setattr(folded_groups, "PREPARE_DELAY_MS", 10**9)
    open_and_wait(qtbot, window, transformer)
    assert folded_groups.preparation_running()  # waiting for its delay
    from PySide6.QtWidgets import QApplication
    with pytest.raises(PreparationNotFinished, match="PREPARE_DELAY_MS = 1,000,000,000"):
        wait_for_preparation(QApplication.instance(), timeout_s=0.5)
    folded_groups.cancel_preparation()
