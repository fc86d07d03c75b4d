"""`layerscope numerics` as a person runs it: real subprocesses, real files, real Ctrl-C."""
from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

import numerics_models
from engine.numerics import NumericsResult

ENGINE = [sys.executable, "-m", "engine"]


def run_cli(*args, timeout=300):
    return subprocess.run([*ENGINE, *map(str, args)], capture_output=True, text=True, env=dict(os.environ),
                          timeout=timeout)


def test_numerics_names_the_overflow_and_its_fixes_and_writes_every_file(tmp_path):
    model = numerics_models.normalisation_model(tmp_path)
    out_json, out_html, out_csv = tmp_path / "n.json", tmp_path / "n.html", tmp_path / "n.csv"
    result = run_cli("numerics", model, "--mode", "fp16-compute", "--samples", "2", "--json", out_json,
                     "--report", out_html, "--csv", out_csv)
    assert result.returncode == 0, result.stderr
    assert "First departing layer  square (Mul)" in result.stdout
    assert "First overflow         square (Mul)" in result.stdout
    assert "2 generated input(s), uniform [0, 1)" in result.stdout and "emulated: fp16-compute" in result.stdout
    # The hint names the layer, the normalisation after it and the weights before it, with the usual fixes.
    hint = next(line for line in result.stdout.splitlines() if "[high]" in line)
    for text in ("'square'", "'variance'", "'conv'", "op_selector", "rescale", "fold the scale"):
        assert text in hint
    data = NumericsResult.load_json(out_json)
    assert data.first_overflow == "square" and data.samples_compared == 2
    html = out_html.read_text()
    assert "Numerics: fp16 against the fp32 reference" in html and "square" in html and "emulated" in html
    rows = list(csv.DictReader(out_csv.open()))
    assert [r["node_id"] for r in rows] == ["conv", "square", "variance", "std", "normalise"]
    assert rows[1]["error"] == "inf" and rows[1]["departs"] == "1" and {r["kind"] for r in rows} == {"emulated"}


def test_exact_model_with_npz_inputs(tmp_path):
    model = numerics_models.exact_model(tmp_path)
    inputs = numerics_models.integer_inputs(tmp_path, count=3)
    result = run_cli("numerics", model, "--inputs", inputs, "--json", tmp_path / "e.json")
    assert result.returncode == 0, result.stderr
    assert "First departing layer  none" in result.stdout and "3 input(s) from" in result.stdout
    data = json.loads((tmp_path / "e.json").read_text())
    assert all(layer["error"] == 0 for layer in data["layers"]) and data["samples_compared"] == 3


def test_bad_inputs_exit_2_with_one_line(tmp_path):
    model = numerics_models.overflow_model(tmp_path)
    np.savez(tmp_path / "wrong.npz", other=np.zeros((1, 64), np.float32), more=np.zeros(2))
    result = run_cli("numerics", model, "--inputs", tmp_path / "wrong.npz")
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "no array for input(s) x" in result.stderr
    truncated = tmp_path / "truncated.onnx"
    truncated.write_bytes(model.read_bytes()[:40])
    result = run_cli("numerics", truncated)
    assert result.returncode == 2 and "Traceback" not in result.stderr and "truncated.onnx" in result.stderr
    result = run_cli("numerics", model, "--inputs", "random", "--inputs", tmp_path / "wrong.npz")
    assert result.returncode == 2 and "not both" in result.stderr


@pytest.mark.skipif(sys.platform == "win32", reason="SIGINT to a child process")
def test_ctrl_c_stops_after_the_layer_and_writes_what_was_compared(tmp_path):
    out = tmp_path / "n.json"
    process = subprocess.Popen([*ENGINE, "numerics", "--mode", "fp16-compute", "--json", str(out)],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    lines = []
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        line = process.stderr.readline()
        lines.append(line)
        if "input 1/1: /encoder/block2" in line:
            break
    process.send_signal(signal.SIGINT)
    stdout, stderr = process.communicate(timeout=120)
    assert process.returncode == 130, "".join(lines) + stderr
    assert "Traceback" not in stderr and "interrupted after" in stderr and "INCOMPLETE" in stdout
    data = json.loads(out.read_text())
    assert not data["complete"] and data["error"] == "cancelled" and len(data["layers"]) >= 5
