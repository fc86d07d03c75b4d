"""`layerscope profile` and `layerscope compare` as a person runs them: real subprocesses and files."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from conftest import light_model
from engine.profile import Profile

ENGINE = [sys.executable, "-m", "engine"]


def run_cli(*args, timeout=120):
    env = dict(os.environ)
    return subprocess.run([*ENGINE, *map(str, args)], capture_output=True, text=True, env=env, timeout=timeout)


def test_profile_writes_json_and_summary(tmp_path):
    out = tmp_path / "p.json"
    result = run_cli("profile", "--runs", "3", "--warmup", "1", "--json", out)
    assert result.returncode == 0, result.stderr
    for label in ("End-to-end", "Coverage", "Profiler", "Top 10 layers", "Stages", "decoder"):
        assert label in result.stdout
    # every figure of the summary with its kind (exact mode on the CPU: all measured)
    lines = {line.split()[0]: line for line in result.stdout.splitlines() if line.strip()}
    assert lines["End-to-end"].endswith("measured, plain runs")
    assert lines["Coverage"].endswith(" measured") and lines["Profiler"].endswith(" measured")
    assert "] (measured) 27 BatchNormalization layers" in result.stdout  # the fold_batchnorm hint
    # a pipe gets plain progress lines, not a bar
    assert "run 3/3" in result.stderr and "\r" not in result.stderr
    data = json.loads(out.read_text())
    assert data["schema"] == "layerscope.profile/1" and data["runs"] == 3 and data["complete"]
    assert len(data["nodes"]) == 92 and data["nodes"][0]["time"]["kind"] == "measured"
    assert Profile.load_json(out).runs_completed == 3


def test_profile_exports_and_compare(tmp_path):
    a, b = tmp_path / "a.json", tmp_path / "b.json"
    pytest.importorskip("engine.report")
    result = run_cli("profile", "--runs", "2", "--warmup", "0", "--mode", "deployed", "--json", a,
                     "--report", tmp_path / "r.html", "--csv", tmp_path / "r.csv", "--trace", tmp_path / "t.json",
                     "--model-explorer", tmp_path / "me.json")
    assert result.returncode == 0, result.stderr
    for name in ("r.html", "r.csv", "t.json", "me.json"):
        assert (tmp_path / name).stat().st_size > 0
    result = run_cli("profile", "--runs", "2", "--warmup", "0", "--json", b)
    assert result.returncode == 0, result.stderr
    result = run_cli("compare", a, b, "--report", tmp_path / "diff.html", "--json", tmp_path / "diff.json")
    assert result.returncode == 0, result.stderr
    assert "Stages" in result.stdout and "b/a" in result.stdout
    assert (tmp_path / "diff.html").stat().st_size > 0
    same = run_cli("compare", a, a, "--json", tmp_path / "same.json")
    assert same.returncode == 0
    ratios = [n["ratio"] for n in json.loads((tmp_path / "same.json").read_text())["nodes"]]
    assert ratios and set(ratios) == {1.0}


def test_compare_report_analyses_the_model_at_the_profiles_shapes_or_says_it_did_not(tmp_path):
    from engine.analysis import analyze
    from engine.inspect import human_count
    from engine.samples import default_sample_path
    from importers import open_model
    profile = tmp_path / "p96.json"
    result = run_cli("profile", "--size", "96x96", "--runs", "1", "--warmup", "0", "--json", profile)
    assert result.returncode == 0, result.stderr
    at_96 = analyze(open_model(default_sample_path(), input_shapes={"image": [1, 3, 96, 96]})).totals.macs
    assert at_96 != analyze(open_model(default_sample_path())).totals.macs  # the sample's own size is not 96x96
    result = run_cli("compare", profile, profile, "--report", tmp_path / "r.html")
    assert result.returncode == 0 and "warning" not in result.stderr, result.stderr
    assert f'<div class="v">{human_count(at_96)}<span class="kind estimated"' in (tmp_path / "r.html").read_text()
    # a profile whose shapes do not fit the file (another version of the model): said, not hidden
    data = json.loads(profile.read_text())
    data["settings"]["input_shapes"] = {"pixels": [1, 3, 96, 96]}
    other = tmp_path / "other.json"
    other.write_text(json.dumps(data))
    result = run_cli("compare", profile, other, "--report", tmp_path / "o.html")
    assert result.returncode == 0, result.stderr
    assert "cannot be analysed at the input shapes of" in result.stderr and "'pixels'" in result.stderr
    assert "the report&#x27;s static figures (MACs, bytes) are at the model&#x27;s own shapes" in \
        (tmp_path / "o.html").read_text()


def test_profile_size_sweep_on_sample(tmp_path):
    result = run_cli("profile", "--size", "64x64", "96x96", "--runs", "2", "--warmup", "0", "--json",
                     tmp_path / "s.json")
    assert result.returncode == 0, result.stderr
    assert "Sweep" in result.stdout and "64x64" in result.stdout and "96x96" in result.stdout
    assert json.loads((tmp_path / "s.json").read_text())["settings"]["input_shapes"] == {"image": [1, 3, 64, 64]}


def test_wrong_size_for_fixed_model_names_input():
    result = run_cli("profile", light_model("squeezenet"), "--size", "160x160", "--runs", "1")
    assert result.returncode == 2
    assert "data_0" in result.stderr and "fixed shape" in result.stderr and "Traceback" not in result.stderr


def test_bad_files_give_one_line(tmp_path):
    (tmp_path / "x.json").write_text("{}")
    result = run_cli("compare", tmp_path / "x.json", tmp_path / "x.json")
    assert result.returncode == 2 and "not a LayerScope profile" in result.stderr
    assert "Traceback" not in result.stderr
    result = run_cli("profile", tmp_path / "missing.onnx")
    assert result.returncode == 2 and "no such file" in result.stderr


@pytest.mark.skipif(sys.platform == "win32", reason="SIGINT to a child process")
def test_ctrl_c_stops_cleanly_and_writes_what_was_measured(tmp_path):
    out = tmp_path / "p.json"
    process = subprocess.Popen([*ENGINE, "profile", "--runs", "100000", "--warmup", "0", "--json", str(out)],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    lines = []
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        line = process.stderr.readline()
        lines.append(line)
        if "run 3/" in line:
            break
    process.send_signal(signal.SIGINT)
    stdout, stderr = process.communicate(timeout=60)
    assert process.returncode == 130, "".join(lines) + stderr
    assert "Traceback" not in stderr and "interrupted after" in stderr
    assert "INCOMPLETE" in stdout and "End-to-end" in stdout
    data = json.loads(out.read_text())
    assert not data["complete"] and data["runs"] >= 3 and data["error"] == "cancelled"
    assert all(len(n["time"]["samples_ms"]) == data["runs"] for n in data["nodes"])
