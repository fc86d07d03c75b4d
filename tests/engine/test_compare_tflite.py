"""`layerscope compare` on .tflite profiles: the LiteRT CPU reference in exact and deployed mode, and the host
against an Android run (the fake adb server and phone of test_android.py; SYNTHETIC phone times).

The report says what each side's figures are (runtime and kernels, kinds of the per-layer times, median or
the runtime's mean) and warns when a median is compared with a mean.  Last, `--size`/`--shape` on a .tflite
model: refused, saying why (LiteRT resizes only the dimensions a model leaves free)."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("ai_edge_litert")
pytest.importorskip("adbutils")
sys.path.insert(0, str(Path(__file__).parent))
from test_android import MODEL, REPO, _profile, adb, binary, phone  # noqa: E402,F401  (fixtures reused)
FACE = REPO / "tests" / "data" / "tflite" / "face_detection_short_range.tflite"

from engine.targets import ProfileSettings, get_target  # noqa: E402

SETTINGS = dict(runs=3, warmup=1)


def _host_profile(mode: str, path: Path) -> Path:
    with get_target("cpu", model_path=MODEL) as target:
        profile = target.profile(ProfileSettings(mode=mode, **SETTINGS), model_path=MODEL)
    profile.save_json(path)
    return path


def _compare(a: Path, b: Path, tmp_path: Path) -> tuple[str, dict, str]:
    report = tmp_path / "compare.html"
    done = subprocess.run([sys.executable, "-m", "engine", "compare", str(a), str(b), "--json", "-",
                           "--report", str(report)], capture_output=True, text=True, timeout=300,
                          env=dict(os.environ, PYTHONPATH=str(REPO)))
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stderr, json.loads(done.stdout), report.read_text()


def test_exact_against_deployed_on_the_litert_reference_says_which_kinds(tmp_path):
    exact = _host_profile("exact", tmp_path / "exact.json")
    deployed = _host_profile("deployed", tmp_path / "deployed.json")
    text, comparison, html = _compare(exact, deployed, tmp_path)
    assert comparison["a_label"].startswith("cpu LiteRT exact") and comparison["b_label"].startswith(
        "cpu LiteRT deployed")
    # exact: builtin kernels, one measured time per operator; deployed: XNNPACK kernels mapped back
    assert "kernels: builtin" in comparison["a_figures"] and "63 layer times: 63 measured" in comparison["a_figures"]
    assert "XNNPACK" in comparison["b_figures"] and "attributed" in comparison["b_figures"]
    assert "median of 3 runs" in comparison["a_figures"] and "median of 3 runs" in comparison["b_figures"]
    assert len(comparison["nodes"]) == 63 and not comparison["only_in_a"] and not comparison["only_in_b"]
    assert {row["kind"] for row in comparison["nodes"]} <= {"measured", "attributed"}
    assert any(row["kind"] == "attributed" for row in comparison["nodes"])  # weakest of the two sides
    assert any("modes differ (exact vs deployed)" in w for w in comparison["warnings"])
    assert f"Figures     a: {comparison['a_figures']}" in text
    assert "A: LiteRT" in html and "B: LiteRT" in html


def test_host_against_an_android_phone_compares_a_median_with_the_phones_mean(tmp_path, adb, binary):  # noqa: F811
    host = _host_profile("deployed", tmp_path / "host.json")
    _, phone_profile = _profile(binary, "xnnpack", ProfileSettings(runs=10, warmup=2))
    phone_json = phone_profile.save_json(tmp_path / "phone.json")
    text, comparison, _ = _compare(host, phone_json, tmp_path)
    assert comparison["b_label"].startswith("android Pixel 8 xnnpack deployed")
    assert "LiteRT benchmark_model" in comparison["b_figures"] and "delegate xnnpack" in comparison["b_figures"]
    assert "mean of 10 runs (the runtime's summary" in comparison["b_figures"]
    assert "median of 3 runs" in comparison["a_figures"]
    assert any("a's times are medians, b's are means" in w for w in comparison["warnings"])
    assert comparison["end_to_end"] is not None and comparison["nodes"]
    assert "b: LiteRT benchmark_model" in text


# ----------------------------------------------------------------------------- --size / --shape

def test_size_and_shape_on_a_fixed_shape_tflite_model_are_refused_saying_why(tmp_path):
    """LiteRT resizes only free dimensions; mediapipe's models fix theirs (shape signature without -1)."""
    for extra in (["--size", "256x256"], ["--shape", "input=1x64x64x3"]):
        done = subprocess.run([sys.executable, "-m", "engine", "profile", str(FACE), *extra, "--runs", "1",
                               "--json", str(tmp_path / "p.json")], capture_output=True, text=True, timeout=120,
                              env=dict(os.environ, PYTHONPATH=str(REPO)))
        assert done.returncode == 2, done.stderr
        assert "Traceback" not in done.stderr and not (tmp_path / "p.json").exists()
        message = done.stderr.strip().splitlines()[-1]
        assert message.startswith("layerscope: " + " ".join(extra))
        assert "fixed input shapes (input 1x128x128x3)" in message and "leave out --size/--shape" in message
