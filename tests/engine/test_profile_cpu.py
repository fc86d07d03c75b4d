"""CPU reference profiling on real ONNX Runtime sessions: the light zoo and the MobileUNet sample.

Few runs and small models keep this fast; timing bounds are loose because the
machines are noisy (the benchmark in benchmarks/ holds the tight figures).
"""
from __future__ import annotations

import dataclasses
import json
import threading
from collections import Counter
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from conftest import light_model
from engine.compare import compare_profiles
from engine.profile import ATTRIBUTED, MEASURED, SCHEMA, Profile, ProfileFormatError, TimingStats
from engine.targets import ProfileSettings, TargetError, get_target
from engine.targets.cpu import BUSY_WAIT_SHARE, COREML_MESSAGE, CpuTarget

FAST = dict(runs=3, warmup=1, threads=1)
HEAVY_OPS = {"Conv", "ConvTranspose", "Gemm", "MatMul", "MaxPool", "AveragePool", "GlobalAveragePool"}


def profile_of(path, **settings):
    with CpuTarget() as target:
        profile = target.profile(ProfileSettings(**{**FAST, **settings}), model_path=path)
        return profile, target.analysis


def coverage_in_bounds(profile) -> bool:
    """0.8-1.2 on a quiet machine.  When other work preempts the runs (the profile measures and says
    so), end-to-end times are inflated and coverage falls: only gross errors are caught then."""
    if profile.cpu_wait_share is not None and profile.cpu_wait_share > BUSY_WAIT_SHARE:
        assert any("busy" in w for w in profile.warnings)
        return 0.3 <= profile.coverage <= 1.3
    return 0.8 <= profile.coverage <= 1.2


def assert_coverage(profile, again, attempts=5):
    """Coverage within bounds in one of `attempts` profiles (`again()` takes a new one): noisy machines."""
    for _ in range(attempts - 1):
        if coverage_in_bounds(profile):
            return
        profile = again()
    assert coverage_in_bounds(profile), (profile.coverage, profile.cpu_wait_share)


@pytest.fixture(scope="module")
def sample_exact(sample_model):
    return profile_of(sample_model, runs=5)


@pytest.fixture(scope="module")
def sample_deployed(sample_model):
    return profile_of(sample_model, runs=5, warmup=2, mode="deployed")


# ----------------------------------------------------------------------------- data model

def test_timing_stats_from_samples():
    stats = TimingStats.from_samples([4.0, 1.0, 3.0, 2.0, 5.0])
    assert stats.median_ms == 3.0
    assert stats.p10_ms == pytest.approx(1.4)
    assert stats.p90_ms == pytest.approx(4.6)
    assert stats.cv == pytest.approx(np.std([1, 2, 3, 4, 5]) / 3.0)
    assert stats.kind == MEASURED and stats.samples_ms == (4.0, 1.0, 3.0, 2.0, 5.0)
    assert TimingStats.from_samples([2.0]).cv == 0.0
    with pytest.raises(ValueError):
        TimingStats.from_samples([])
    # One disturbed run moves cv a lot and robust_cv hardly
    disturbed = TimingStats.from_samples([10, 10.1, 9.9, 10.05, 9.95, 30])
    assert disturbed.cv > 0.3 and disturbed.robust_cv < 0.02


def test_profile_is_immutable(sample_exact):
    profile, _ = sample_exact
    with pytest.raises(dataclasses.FrozenInstanceError, match="cannot assign to field 'coverage'"):
        profile.coverage = 1.0  # type: ignore[misc]
    with pytest.raises(TypeError):
        profile.nodes["x"] = None  # type: ignore[index]


def test_json_round_trip(sample_exact, tmp_path):
    profile, _ = sample_exact
    profile = profile.with_hints([{"rule": "r", "message": "m", "node_ids": ["a"], "severity": "low"}])
    path = profile.save_json(tmp_path / "p.json")
    again = Profile.load_json(path)
    assert again.to_json_dict() == profile.to_json_dict()
    assert again == profile
    data = again.to_json_dict()
    for key in ("schema", "target", "mode", "runs", "end_to_end", "coverage", "nodes", "stages", "hints"):
        assert key in data
    assert data["schema"] == SCHEMA
    assert set(data["end_to_end"]) >= {"median_ms", "p10_ms", "p90_ms", "samples_ms"}
    node = data["nodes"][0]
    assert {"id", "time"} <= set(node) and set(node["time"]) >= {"median_ms", "p10_ms", "p90_ms", "cv", "kind"}
    assert not list(tmp_path.glob(".*tmp"))  # the atomic write leaves no temp file


def test_load_json_rejects_other_documents(tmp_path):
    (tmp_path / "x.json").write_text('{"schema": "layerscope.inspect/1"}')
    with pytest.raises(ProfileFormatError, match="layerscope.profile/1"):
        Profile.load_json(tmp_path / "x.json")
    (tmp_path / "y.json").write_text("not json")
    with pytest.raises(ProfileFormatError, match="not a JSON file"):
        Profile.load_json(tmp_path / "y.json")


# ----------------------------------------------------------------------------- exact mode

def _check_exact(profile, analysis, runs):
    compute = [m.node_id for m in analysis.compute_nodes()]
    assert list(profile.nodes) == compute  # every compute node, in execution order
    assert len(profile.groups) == len(compute)
    for group in profile.groups:
        assert group.node_ids == (group.group_id,)
    for timing in profile.nodes.values():
        assert timing.kind == MEASURED and timing.time.kind == MEASURED
        assert len(timing.time.samples_ms) == runs
        assert timing.time.p10_ms <= timing.time.median_ms <= timing.time.p90_ms
    assert profile.runs_completed == runs and profile.complete and not profile.error
    assert len(profile.end_to_end.samples_ms) == runs
    assert profile.profiler_overhead is not None
    assert sum(profile.stage_times_ms.values()) == pytest.approx(profile.total_node_ms)
    assert sum(profile.op_type_times_ms.values()) == pytest.approx(profile.total_node_ms)


def test_exact_sample_every_node_timed(sample_exact):
    profile, analysis = sample_exact
    _check_exact(profile, analysis, runs=5)
    assert_coverage(profile, lambda: profile_of(analysis.model.path, runs=5)[0])
    assert set(profile.stage_times_ms) >= {"encoder", "decoder"}
    assert profile.top_nodes(3)[0].time.median_ms >= profile.top_nodes(3)[2].time.median_ms
    assert profile.top_op_types(1)[0][0] in {"Conv", "ConvTranspose"}
    assert profile.target["name"] == "cpu" and profile.target["compute_units"] == ["CPU"]
    assert profile.settings["input_shapes"] == {"image": [1, 3, 160, 160]}


@pytest.mark.parametrize("name", ["squeezenet", "shufflenet", "inception_v1"])
def test_exact_light_zoo_every_compute_node_timed(name):
    profile, analysis = profile_of(light_model(name), runs=5)
    _check_exact(profile, analysis, runs=5)
    assert_coverage(profile, lambda: profile_of(light_model(name), runs=5)[0])
    # The zoo builds its weights with ConstantOfShape: folded before the run, so untimed.
    constant = {m.node_id for m in analysis.nodes.values() if m.is_constant}
    assert constant and set(profile.untimed_node_ids) == constant


def _slow_layer_model(tmp_path) -> Path:
    """A layer made deliberately slow: Pow with a fractional exponent (a transcendental function per
    value) on n values, then a Mul and a Relu on 2n values.  The Pow has half the FLOPs and bytes of
    each other layer, and takes several times longer than either."""
    n = 1 << 20
    nodes = [helper.make_node("Pow", ["x", "exponent"], ["a"], name="slow_pow"),
             helper.make_node("Mul", ["a", "rows"], ["b"], name="wide_mul"),
             helper.make_node("Relu", ["b"], ["y"], name="wide_relu")]
    weights = [onnx.numpy_helper.from_array(np.array(2.37, np.float32), "exponent"),
               onnx.numpy_helper.from_array(np.array([[1.0], [2.0]], np.float32), "rows")]
    graph = helper.make_graph(nodes, "slow_layer", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, n])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], weights)
    path = tmp_path / "slow_layer.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=10), path)
    return path


def _nodes_with_kernel_events(path: Path, tmp_path: Path) -> set[str]:
    """Node names ONNX Runtime's own profiler times (its `<node>_kernel_time` events), no LayerScope code."""
    import onnxruntime as ort
    options = ort.SessionOptions()
    options.enable_profiling = True
    options.profile_file_prefix = str(tmp_path / "ort_profile")
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    session.run(None, {"x": np.ones((1, 1 << 20), np.float32)})
    events = json.loads(Path(session.end_profiling()).read_text())
    return {e["name"][:-len("_kernel_time")] for e in events
            if e.get("cat") == "Node" and e["name"].endswith("_kernel_time")}


def test_times_come_from_the_runtime_events_not_from_a_cost_model(tmp_path):
    path = _slow_layer_model(tmp_path)
    profile, analysis = profile_of(path, runs=5)
    # a cost model ranks the Pow last; the runtime's events rank it first, by far
    assert analysis.nodes["slow_pow"].flops < min(analysis.nodes[n].flops for n in ("wide_mul", "wide_relu"))
    slowest, second = profile.top_nodes(2)
    assert slowest.node_id == "slow_pow", [(n.node_id, n.time.median_ms) for n in profile.nodes.values()]
    assert slowest.time.median_ms >= 2 * second.time.median_ms
    # measured exactly where ONNX Runtime's own profiler has a kernel event
    measured = {node_id for node_id, timing in profile.nodes.items() if timing.kind == timing.time.kind == MEASURED}
    assert measured == _nodes_with_kernel_events(path, tmp_path) == {"slow_pow", "wide_mul", "wide_relu"}


# ----------------------------------------------------------------------------- deployed mode

def _check_deployed(profile, analysis):
    compute = [m.node_id for m in analysis.compute_nodes()]
    covered = Counter(node_id for group in profile.groups for node_id in group.node_ids)
    assert all(covered[node_id] == 1 for node_id in compute), [n for n in compute if covered[n] != 1][:5]
    assert set(covered) <= set(compute)
    assert set(profile.nodes) == set(compute)
    for group in profile.groups:
        assert group.time.kind == MEASURED
        assert sum(analysis.nodes[n].op_type in HEAVY_OPS for n in group.node_ids) <= 1, group
        if len(group.node_ids) > 1:  # attribution keeps the group's total
            members = [profile.nodes[n] for n in group.node_ids]
            assert all(m.kind == ATTRIBUTED and m.group_id == group.group_id for m in members)
            assert sum(m.time.median_ms for m in members) == pytest.approx(group.time.median_ms)
    # No mapping warnings; the machine-state ones (busy, disturbed runs) depend on this computer.
    from engine.profile import DISTURBED_WARNING
    assert not [w for w in profile.warnings if "busy" not in w and not w.startswith(DISTURBED_WARNING)]
    assert len(profile.groups) < len(compute)  # something was fused


def test_deployed_sample_groups_cover_each_node_once(sample_deployed):
    profile, analysis = sample_deployed
    _check_deployed(profile, analysis)
    # Conv + BatchNorm + Relu6 run as one kernel
    stem = profile.nodes["/encoder/stem/conv/Conv"].group_id
    assert profile.nodes["/encoder/stem/bn/BatchNormalization"].group_id == stem
    assert profile.nodes["/encoder/stem/act/Clip"].group_id == stem
    assert profile.nodes["/head/Sigmoid"].group_id == profile.nodes["/head/conv/Conv"].group_id
    assert_coverage(profile, lambda: profile_of(analysis.model.path, runs=5, warmup=2, mode="deployed")[0])


@pytest.mark.parametrize("name", ["inception_v1", "resnet50"])
def test_deployed_light_zoo_groups_cover_each_node_once(name):
    profile, analysis = profile_of(light_model(name), runs=2, mode="deployed")
    _check_deployed(profile, analysis)
    if name == "resnet50":
        # The residual Sum and its Relu are fused into the NCHWc Conv that reads the shortcut.
        graph = analysis.graph
        sums = [n for n in graph.nodes if n.op_type == "Sum"]
        for node in sums:
            group = profile.nodes[node.id].group_id
            members = [graph.node(i).op_type for i in profile.group(group).node_ids]
            assert "Conv" in members and "Relu" in members, members


# ----------------------------------------------------------------------------- cancel and failure

def test_cancel_stops_early_and_keeps_measured_runs(sample_model):
    cancel = threading.Event()
    seen = []

    def progress(done, total, message):
        seen.append((done, total, message))
        if message.startswith("run 2/"):
            cancel.set()

    with CpuTarget() as target:
        profile = target.profile(ProfileSettings(runs=50, warmup=1), progress, cancel, model_path=sample_model)
    assert not profile.complete and profile.error == "cancelled"
    assert profile.runs_completed == 2
    assert all(len(t.time.samples_ms) == 2 for t in profile.nodes.values())
    assert len(profile.nodes) == 92
    assert seen[0][:2] == (1, 51) and len(seen) == 3


def test_failure_midway_keeps_runs_and_reports(sample_model):
    def progress(done, total, message):
        if message.startswith("run 3/"):
            raise RuntimeError("device went away")

    with CpuTarget() as target:
        profile = target.profile(ProfileSettings(runs=10, warmup=0), progress, model_path=sample_model)
    assert not profile.complete and "device went away" in profile.error
    assert profile.runs_completed == 3 and len(profile.end_to_end.samples_ms) == 3


def test_cancel_before_any_run(sample_model):
    cancel = threading.Event()
    cancel.set()
    with CpuTarget() as target:
        profile = target.profile(ProfileSettings(runs=3), cancel=cancel, model_path=sample_model)
    assert profile.runs_completed == 0 and not profile.complete and profile.end_to_end is None
    assert not profile.nodes and profile.coverage is None
    assert Profile.from_json_dict(profile.to_json_dict()).runs_completed == 0


# ----------------------------------------------------------------------------- compare

def test_compare_with_itself_gives_ratios_of_one(sample_exact):
    profile, _ = sample_exact
    comparison = compare_profiles(profile, profile)
    assert comparison.nodes and all(c.ratio == 1.0 for c in comparison.nodes)
    assert all(c.ratio == 1.0 for c in comparison.stages)
    assert comparison.end_to_end.ratio == 1.0
    assert not comparison.faster and not comparison.slower and not comparison.warnings


def test_compare_exact_with_deployed(sample_exact, sample_deployed):
    comparison = compare_profiles(sample_exact[0], sample_deployed[0])
    assert len(comparison.nodes) == 92
    assert {c.key for c in comparison.stages} >= {"encoder", "decoder"}
    assert any("modes differ" in w for w in comparison.warnings)
    for change in comparison.nodes:
        a = sample_exact[0].nodes[change.key].time.median_ms
        b = sample_deployed[0].nodes[change.key].time.median_ms
        assert change.ratio == pytest.approx(b / a)
    data = comparison.to_json_dict()
    assert data["a_label"].startswith("cpu exact") and data["nodes"][0]["id"]


# ----------------------------------------------------------------------------- inputs and shapes

def _free_size_model(path):
    """A tiny conv net whose batch, height and width are free."""
    rng = np.random.default_rng(0)
    weight = onnx.numpy_helper.from_array(rng.standard_normal((4, 3, 3, 3)).astype(np.float32), "w")
    graph = helper.make_graph(
        [helper.make_node("Conv", ["x", "w"], ["c"], pads=[1, 1, 1, 1]),  # no name: ids come from op+index
         helper.make_node("Relu", ["c"], ["y"])],
        "free", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, "H", "W"])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 4, "H", "W"])], initializer=[weight])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8), path)
    return path


def test_free_dims_take_the_size(tmp_path):
    path = _free_size_model(tmp_path / "free.onnx")
    profile, analysis = profile_of(path, size=(48, 64))
    assert profile.settings["input_shapes"] == {"x": [1, 3, 48, 64]}
    assert set(profile.nodes) == {"Conv_0", "Relu_1"}  # unnamed nodes: ids map exactly
    assert analysis.nodes["Conv_0"].macs == 4 * 3 * 9 * 48 * 64
    with pytest.raises(TargetError, match="input 'x' has free dimensions"):
        profile_of(path)


def test_wrong_size_for_fixed_shape_model_names_the_input():
    with pytest.raises(TargetError, match=r"input 'data_0' has a fixed shape 1x3x224x224"):
        CpuTarget().prepare(light_model("squeezenet"), ProfileSettings(size=(160, 160)))
    target = CpuTarget()
    target.prepare(light_model("squeezenet"), ProfileSettings(size=(224, 224)))  # the fixed size itself is fine
    target.close()


def test_inputs_from_npz_and_zeros(tmp_path):
    path = _free_size_model(tmp_path / "free.onnx")
    data = np.full((1, 3, 8, 8), 0.5, np.float32)
    np.savez(tmp_path / "in.npz", x=data)
    with CpuTarget() as target:
        target.prepare(path, ProfileSettings(inputs=str(tmp_path / "in.npz")))
        assert target.input_shapes == {"x": (1, 3, 8, 8)}  # the file's shape fixes the free dims
        outputs = target.run()
        expected = target.run({"x": data})
        np.testing.assert_array_equal(outputs["y"], expected["y"])
        target.prepare(path, ProfileSettings(inputs="zeros", size=(8, 8)))
        assert not target.run()["y"].any()
    np.savez(tmp_path / "bad.npz", other=data, more=data)
    with pytest.raises(TargetError, match="no array for input"):
        CpuTarget().prepare(path, ProfileSettings(inputs=str(tmp_path / "bad.npz")))


# ----------------------------------------------------------------------------- bad models

def _save(graph, path, opset=17, extra_opsets=()):
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset), *extra_opsets], ir_version=8)
    onnx.save(model, path)
    return path


def test_unsupported_op_names_node_and_op(tmp_path):
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 8, 8])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, None)
    graph = helper.make_graph([helper.make_node("Relu", ["x"], ["a"], name="relu"),
                               helper.make_node("Frobnicate", ["a"], ["y"], name="mystery")], "g", [x], [y])
    with pytest.raises(TargetError) as info:
        CpuTarget().prepare(_save(graph, tmp_path / "bad.onnx"), ProfileSettings())
    message = str(info.value)
    assert "'mystery'" in message and "Frobnicate" in message and "onnxruntime_src" not in message

    graph = helper.make_graph([helper.make_node("FancyOp", ["x"], ["y"], name="fancy", domain="com.example")],
                              "g", [x], [y])
    with pytest.raises(TargetError, match="FancyOp.*'fancy'"):
        CpuTarget().prepare(_save(graph, tmp_path / "custom.onnx",
                                  extra_opsets=[helper.make_opsetid("com.example", 1)]), ProfileSettings())


def test_bad_opset_clear_error(tmp_path):
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 3])
    graph = helper.make_graph([helper.make_node("Relu", ["x"], ["y"], name="r")], "g", [x], [y])
    with pytest.raises(TargetError, match="Opset 99"):
        CpuTarget().prepare(_save(graph, tmp_path / "opset.onnx", opset=99), ProfileSettings())


def test_newer_ir_version_still_runs(tmp_path):
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 3])
    model = helper.make_model(helper.make_graph([helper.make_node("Relu", ["x"], ["y"], name="r")], "g", [x], [y]),
                              opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 99
    onnx.save(model, tmp_path / "ir.onnx")
    profile, _ = profile_of(tmp_path / "ir.onnx", runs=1, warmup=0)
    assert "r" in profile.nodes and any("IR version" in w for w in profile.warnings)


def test_not_a_model_and_coreml(tmp_path):
    from engine.ir import ModelLoadError
    (tmp_path / "junk.onnx").write_bytes(b"\x00\x01junk")
    with pytest.raises(ModelLoadError):
        CpuTarget().prepare(tmp_path / "junk.onnx", ProfileSettings())
    ct = pytest.importorskip("coremltools")
    from coremltools.models import datatypes
    from coremltools.models.neural_network import NeuralNetworkBuilder
    builder = NeuralNetworkBuilder([("x", datatypes.Array(3, 8, 8))], [("y", None)])
    builder.add_activation("relu", "RELU", "x", "y")
    ct.models.utils.save_spec(builder.spec, str(tmp_path / "m.mlmodel"))
    with pytest.raises(TargetError, match="graph-only") as info:
        CpuTarget().prepare(tmp_path / "m.mlmodel", ProfileSettings())
    assert COREML_MESSAGE in str(info.value)
    # It says what can run it, and does not ask to convert what is converted already.
    assert "layerscope agent` on a Mac" in str(info.value) and "layerscope convert" not in str(info.value)


def test_settings_validation_and_describe():
    with pytest.raises(TargetError):
        ProfileSettings(mode="fast")
    with pytest.raises(TargetError):
        ProfileSettings(runs=0)
    with pytest.raises(TargetError, match="unknown target"):
        get_target("tpu")
    described = get_target("cpu").describe()
    for key in ("device", "os", "chip", "compute_units", "memory_bytes", "runtime"):
        assert key in described


def test_cpu_wait_share_is_measured(sample_exact):
    profile, _ = sample_exact
    assert profile.cpu_wait_share is not None and 0.0 <= profile.cpu_wait_share <= 1.0
    data = profile.to_json_dict()
    assert data["cpu_wait_share"] == profile.cpu_wait_share
    with CpuTarget() as target:  # several threads: wall against one thread's CPU time says nothing
        several = target.profile(ProfileSettings(runs=1, warmup=0, threads=2), model_path=profile.model_path)
    assert several.cpu_wait_share is None


def _rebuilt_with_samples(profile, make_samples):
    """The profile's groups and nodes with other per-run samples (make_samples(median, group index))."""
    from dataclasses import replace as replace_field

    groups = [replace_field(g, time=TimingStats.from_samples(make_samples(g.time.median_ms, i), g.time.kind))
              for i, g in enumerate(profile.groups)]
    by_group = {g.group_id: g for g in groups}
    nodes = [replace_field(n, time=by_group[n.group_id].time) for n in profile.nodes.values()]
    return Profile.build(model_path=profile.model_path, model_format=profile.model_format, target=profile.target,
                         mode=profile.mode, settings=profile.settings,
                         end_to_end_samples=profile.end_to_end.samples_ms,
                         profiled_samples=profile.profiled_end_to_end.samples_ms, groups=groups, nodes=nodes,
                         runs_completed=10, stage_order=list(profile.stage_times_ms),
                         warnings=profile.warnings)


def test_runs_a_busy_machine_slowed_as_a_whole_are_named(sample_exact):
    from engine.profile import DISTURBED_WARNING, disturbed_runs

    profile, _ = sample_exact
    rng = np.random.default_rng(0)

    def quiet(median, _):  # independent noise of single layers (+-8 %): no run stands out
        return list(median * rng.uniform(0.92, 1.08, 10))

    def busy(median, index):  # runs 5-7 slowed 1.6x for most layers, as another process would
        samples = quiet(median, index)
        if index % 4 != 0:
            samples[4:7] = [s * 1.6 for s in samples[4:7]]
        return samples

    calm = _rebuilt_with_samples(profile, quiet)
    assert disturbed_runs(calm.groups) == []
    assert not any(w.startswith(DISTURBED_WARNING) for w in calm.warnings)
    disturbed = _rebuilt_with_samples(profile, busy)
    assert disturbed_runs(disturbed.groups) == [4, 5, 6]
    [warning] = [w for w in disturbed.warnings if w.startswith(DISTURBED_WARNING)]
    assert "3 of 10 (runs 5-7)" in warning and "CVs are inflated" in warning
    # Derived again, not repeated, when a profile is rebuilt from one that carries the warning.
    again = _rebuilt_with_samples(disturbed, lambda median, index: disturbed.groups[index].time.samples_ms)
    assert sum(w.startswith(DISTURBED_WARNING) for w in again.warnings) == 1


def test_one_slow_layer_is_not_a_disturbed_run(sample_exact):
    """Few heavy layers: a single slow one is its own noise, not a busy machine."""
    from dataclasses import replace as replace_field

    from engine.profile import disturbed_runs

    profile, _ = sample_exact
    heavy = sorted(profile.groups, key=lambda g: -g.time.median_ms)[:4]

    def with_samples(group, samples):
        return replace_field(group, time=TimingStats.from_samples(samples))

    flat = [with_samples(g, [g.time.median_ms] * 8) for g in heavy]
    one_slow = [with_samples(flat[0], [flat[0].time.median_ms * (2 if i == 3 else 1) for i in range(8)])] + flat[1:]
    assert disturbed_runs(one_slow) == []  # 4 heavy layers: too few to judge
    top_ten = sorted(profile.groups, key=lambda g: -g.time.median_ms)[:10]
    many = [with_samples(g, [g.time.median_ms] * 8) for g in top_ten]
    many[0] = with_samples(many[0], [many[0].time.median_ms * (2 if i == 3 else 1) for i in range(8)])
    assert disturbed_runs(many) == []  # one slow layer among ten
    for k in range(1, 4):
        many[k] = with_samples(many[k], [many[k].time.median_ms * (2 if i == 3 else 1) for i in range(8)])
    assert disturbed_runs(many) == [3]  # four of ten at once
