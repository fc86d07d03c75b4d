"""LiteRT CPU reference: real LiteRT runs of mediapipe models (tests/data/tflite)."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("ai_edge_litert")

from engine.hints import find_hints  # noqa: E402
from engine.profile import ATTRIBUTED, MEASURED  # noqa: E402
from engine.targets import ProfileSettings, TargetError, get_target  # noqa: E402
from engine.targets import litert  # noqa: E402
from engine.targets.litert import (DELEGATE_PROFILED_OPERATOR_INVOKE_EVENT, OPERATOR_INVOKE_EVENT, Event,  # noqa: E402
                                   LiteRtCpuTarget, map_delegate_events)
from tests.engine.test_profile_cpu import coverage_in_bounds  # noqa: E402

DATA = Path(__file__).resolve().parents[1] / "data" / "tflite"
FACE = DATA / "face_detection_short_range.tflite"
SELFIE = DATA / "selfie_segmentation.tflite"
FAST = dict(runs=3, warmup=1, threads=1)


def profile_of(path, **settings):
    with get_target("cpu", model_path=path) as target:
        assert isinstance(target, LiteRtCpuTarget)
        return target.profile(ProfileSettings(**{**FAST, **settings}), model_path=path), target.analysis


def test_exact_mode_times_every_operator_once():
    profile, analysis = profile_of(FACE)
    operators = [n.id for n in analysis.graph.nodes]
    assert [g.node_ids for g in profile.groups] == [(i,) for i in operators]
    assert set(profile.nodes) == set(operators)
    assert all(n.kind == MEASURED and len(n.time.samples_ms) == 3 for n in profile.nodes.values())
    assert profile.groups[2].kernel == "CONV_2D" and profile.complete
    for _ in range(4):  # a loaded machine lowers coverage; the profile says so (see test_profile_cpu)
        if coverage_in_bounds(profile):
            break
        profile, analysis = profile_of(FACE)
    assert coverage_in_bounds(profile), (profile.coverage, profile.cpu_wait_share)


def test_deployed_mode_maps_xnnpack_operators_back():
    profile, analysis = profile_of(SELFIE, mode="deployed")
    operators = {n.id for n in analysis.graph.nodes}
    covered = [i for g in profile.groups for i in g.node_ids]
    assert sorted(covered) == sorted(operators)  # every operator in exactly one kernel group
    assert not [w for w in profile.warnings if "one group" in w]  # anchors matched one to one
    kinds = {n.kind for n in profile.nodes.values()}
    assert kinds == {MEASURED, ATTRIBUTED}
    transposed = [n for n in analysis.graph.nodes if n.op_type == "Convolution2DTransposeBias"][0]
    group = profile.group(profile.nodes[transposed.id].group_id)
    assert group.kernel.startswith("Deconvolution")
    for g in profile.groups:  # attribution keeps each kernel's time
        if g.node_ids:
            assert abs(sum(profile.nodes[i].time.median_ms for i in g.node_ids) - g.time.median_ms) < 1e-6
    assert isinstance(find_hints(profile, analysis), list)


def test_custom_op_without_builtin_kernel_is_a_clear_error():
    with pytest.raises(TargetError, match="Convolution2DTransposeBias.*--mode deployed"):
        profile_of(SELFIE)


def test_untested_litert_version_times_the_whole_model(monkeypatch):
    monkeypatch.setattr(litert, "TESTED_VERSIONS", ())
    profile, _ = profile_of(FACE)
    assert not profile.nodes and [g.node_ids for g in profile.groups] == [()]
    assert any("not a version whose profiler records" in w for w in profile.warnings)
    assert profile.end_to_end.kind == MEASURED


def _event(kind, tag, index=0):
    return Event(tag, kind, index, 10, index, 0)


def test_delegate_events_between_kernel_events_are_split_by_anchor():
    # operators: 0 DEQUANTIZE (constant weights), 1 CONV_2D, 2 RELU, 3 custom (LiteRT kernel), 4 FULLY_CONNECTED, 5 ADD
    ops = {"0": "DEQUANTIZE", "1": "CONV_2D", "2": "RELU", "3": "MyOp", "4": "FULLY_CONNECTED", "5": "ADD"}
    events = [_event(DELEGATE_PROFILED_OPERATOR_INVOKE_EVENT, "Convolution (NHWC, F32) IGEMM"),
              _event(DELEGATE_PROFILED_OPERATOR_INVOKE_EVENT, "Clamp (NC)"),
              _event(OPERATOR_INVOKE_EVENT, "MyOp", 3),
              _event(DELEGATE_PROFILED_OPERATOR_INVOKE_EVENT, "Fully Connected (NC, F32) GEMM")]
    mapping = map_delegate_events(events, list(ops), ops, frozenset({"0"}))
    covers = {positions: nodes for _, _, positions, nodes in mapping.groups}
    assert covers == {(0,): ("0", "1"), (1,): ("2",), (2,): ("3",), (3,): ("4", "5")}
    assert not mapping.warnings


def test_profile_command_writes_exports_keyed_by_operator_index(tmp_path):
    out = tmp_path / "p.json"
    explorer = tmp_path / "node_data.json"
    csv = tmp_path / "p.csv"
    report = tmp_path / "r.html"
    result = subprocess.run([sys.executable, "-m", "engine", "profile", str(FACE), "--runs", "2", "--warmup", "1",
                             "--json", str(out), "--model-explorer", str(explorer), "--csv", str(csv),
                             "--report", str(report)], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    document = json.loads(out.read_text())
    assert document["model"]["format"] == "tflite" and document["mode"] == "exact"
    node_data = json.loads(explorer.read_text())
    results = next(iter(node_data.values()))["results"]
    assert set(results) == {str(i) for i in range(164)}
    assert csv.read_text().count("\n") >= 165 and report.stat().st_size > 1000


def test_every_wheel_model_litert_runs_is_timed_per_operator(tflite_wheel_models):
    """The 21 package models: exact mode times each operator once where the builtin kernels can run
    the model; deployed (XNNPACK) mode puts every operator in exactly one kernel group."""
    exact_runs = deployed_runs = 0
    for path in tflite_wheel_models:
        try:
            profile, analysis = profile_of(path, runs=2)
        except TargetError as error:  # a custom op without a builtin kernel: named, not a crash
            assert "no kernel" in str(error) or "custom" in str(error).lower() or "--mode deployed" in str(error), error
        else:
            exact_runs += 1
            main_ids = [n.id for n in analysis.graph.nodes]
            timed = [i for g in profile.groups for i in g.node_ids]
            assert sorted(timed) == sorted(main_ids), path.name
        try:
            profile, analysis = profile_of(path, runs=2, mode="deployed")
        except TargetError as error:
            assert str(error), path.name
            continue
        deployed_runs += 1
        covered = [i for g in profile.groups for i in g.node_ids]
        assert sorted(covered) == sorted(n.id for n in analysis.graph.nodes), path.name
    assert exact_runs >= 18 and deployed_runs >= 20, (exact_runs, deployed_runs)


def test_changed_settings_prepare_the_model_again():
    """A profile with other load settings (here the input seed) than the prepared ones re-prepares:
    the inputs it runs are those of the new settings (engine/targets/prepared.py, shared with ONNX)."""
    with get_target("cpu", model_path=FACE) as target:
        target.prepare(FACE, ProfileSettings(seed=1, **FAST))
        first = target.inputs
        target.profile(ProfileSettings(seed=2, **FAST))
        second = target.inputs
        assert target.run().keys() and set(first) == set(second)
        assert any(not np.array_equal(first[name], second[name]) for name in first)
