"""--size / --shape and size sweeps on the LiteRT CPU reference: real LiteRT runs of mediapipe models."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("ai_edge_litert")

from engine.sweep import sweep_sizes  # noqa: E402
from engine.targets import ProfileSettings, TargetError, get_target  # noqa: E402

DATA = Path(__file__).resolve().parents[1] / "data" / "tflite"
FACE = DATA / "face_detection_short_range.tflite"  # stored input 1x128x128x3
SELFIE = DATA / "selfie_segmentation.tflite"  # stored input 1x256x256x3; fails at other sizes
FAST = dict(runs=2, warmup=1, threads=1)
ROOT = Path(__file__).resolve().parents[2]


def test_sweep_of_two_sizes_measures_both_and_recomputes_costs():
    kept: list = []
    rows = sweep_sizes(FACE, ["128", "192x192"], ProfileSettings(**FAST), keep_profiles=kept)
    assert [r["setting"] for r in rows] == ["128x128", "192x192"]
    assert all(r["complete"] and r["median_ms"] > 0 and r["kind"] == "measured" for r in rows)
    # costs at the resized shapes: 192/128 squared for a fully convolutional detector
    assert rows[1]["macs"] == rows[0]["macs"] * 9 // 4
    assert rows[0]["params"] == rows[1]["params"]
    small, large = kept[0][0], kept[1][0]
    assert small.settings["resized_from"] is None and small.settings["size"] == [128, 128]
    assert large.settings["resized_from"] == {"input": [1, 128, 128, 3]}
    assert large.settings["input_shapes"] == {"input": [1, 192, 192, 3]}
    assert any("non-strict resize" in w and "1x128x128x3 -> 1x192x192x3" in w for w in large.warnings)
    # the analysis is at the resized shapes: outputs grow from 896 to 2016 anchors
    graph = kept[1][1].graph
    assert graph.value_type(graph.outputs[0]).shape == (1, 2016, 16)


def test_shape_option_resizes_and_outputs_follow():
    with get_target("cpu", model_path=FACE) as target:
        settings = ProfileSettings(**FAST, input_shapes={"input": (1, 160, 160, 3)})
        target.prepare(FACE, settings)
        outputs = target.run()
        assert [o.shape for o in outputs.values()] == [(1, 1400, 16), (1, 1400, 1)]  # (160/8)^2*2 + (160/16)^2*6
        profile = target.profile(settings)
    assert profile.complete and profile.settings["resized_from"] == {"input": [1, 128, 128, 3]}


def test_selfie_segmentation_refuses_a_size_in_one_line_and_a_sweep_keeps_earlier_sizes():
    with get_target("cpu", model_path=SELFIE) as target:
        with pytest.raises(TargetError) as caught:
            target.prepare(SELFIE, ProfileSettings(**FAST, mode="deployed", size=(320, 320)))
    message = str(caught.value)
    assert "\n" not in message
    assert message.startswith("selfie_segmentation.tflite cannot run at size 320x320")
    assert "stored shape (input_1 1x256x256x3)" in message
    rows = sweep_sizes(SELFIE, ["256", "320"], ProfileSettings(**FAST, mode="deployed"))
    assert rows[0]["complete"] and rows[0]["median_ms"] > 0
    assert rows[1]["setting"] == "320x320" and rows[1]["runs"] == 0 and not rows[1]["complete"]
    assert "cannot run at size 320x320" in rows[1]["error"]


def test_cli_sweep_prints_the_failed_size_without_traceback(tmp_path):
    report = tmp_path / "sweep.html"
    result = subprocess.run([sys.executable, "-m", "engine", "profile", str(SELFIE), "--mode", "deployed",
                             "--size", "256", "320", "--runs", "2", "--warmup", "1",
                             "--report", str(report)], capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stderr
    line = next(l for l in result.stdout.splitlines() if l.strip().startswith("320x320"))
    assert "not run: selfie_segmentation.tflite cannot run at size 320x320" in line
    assert "cannot run at size 320x320" in report.read_text()


def test_a_cli_profile_of_an_unrunnable_size_is_one_line(tmp_path):
    result = subprocess.run([sys.executable, "-m", "engine", "profile", str(SELFIE), "--mode", "deployed",
                             "--size", "320", "--runs", "2"], capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert result.returncode != 0 and "Traceback" not in result.stderr
    assert "selfie_segmentation.tflite cannot run at size 320x320" in result.stderr


def test_android_target_refuses_a_size_saying_why():
    from engine.targets.android import AndroidTarget
    target = AndroidTarget("android")
    with pytest.raises(TargetError) as caught:
        target.prepare(FACE, ProfileSettings(size=(192, 192)))  # refused before any adb or binary is looked for
    assert "--size 192x192: android targets run the model at the shapes stored in it" in str(caught.value)
    assert "--target cpu" in str(caught.value)


def test_a_sweep_runs_on_the_target_asked_for_not_on_this_machine(tmp_path):
    """`--target android --size 128 192`: the sweep goes to the phone's target, which refuses sizes;
    it must not quietly measure both sizes on this machine's CPU and call that the phone's sweep."""
    out = tmp_path / "sweep.json"
    result = subprocess.run([sys.executable, "-m", "engine", "profile", str(FACE), "--target", "android",
                             "--size", "128", "192", "--runs", "2", "--json", str(out)],
                            capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert result.returncode != 0 and "Traceback" not in result.stderr, result.stderr
    assert "android targets run the model at the shapes stored in it" in result.stderr
    assert not out.exists()
