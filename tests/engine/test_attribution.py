"""Device results of a converted model summed onto the ONNX source nodes; Core ML blockers for the report.

The package is REAL: the bundled MobileUNet sample converted by engine.convert, re-opened by
our Core ML importer, with the layer map `convert` wrote.  The per-op device figures are
SYNTHETIC (every name below that holds them starts with SYNTHETIC_): Core ML prediction
and MLComputePlan need macOS, so no real compute-plan cost or Core ML timing exists here.
They go through the same functions the agent's Core ML backend calls
(`split_measured_groups`, `source_segments`, `profile_on_source`); only the Core ML calls
that would produce them are not run.
"""
from __future__ import annotations

import json
import shutil
from dataclasses import replace
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from engine.analysis import analyze
from engine.bridge.backends import split_measured_groups
from engine.bridge.client import BridgeClient
from engine.bridge.results import Transfer, check_kinds, rekey_transfers
from engine.convert import (LayerMapError, convert, load_layer_map, node_links, profile_on_source,
                            report_blockers, source_segments, sum_to_source)
from engine.convert.attribution import NO_SOURCE_SUFFIX, source_nodes_from_analysis, source_nodes_from_layer_map
from engine.profile import ATTRIBUTED, ESTIMATED, MEASURED, Profile, TimingStats
from engine.report.html_report import html_report
from engine.samples import mobileunet
from importers import open_model
from tests.bridge_conformance.bridge_wire import start_agent_process, stop_agent_process

# Synthetic device figures (not measurements): made-up end-to-end and segment times in ms.
SYNTHETIC_END_TO_END_MS = [6.0, 6.4, 5.9, 6.1, 6.3]
SYNTHETIC_SEGMENT_MS = {"encoder": [2.0, 2.2, 2.1], "bottleneck": [0.5, 0.6, 0.55],
                        "decoder": [3.0, 3.3, 3.1], "head": [0.2, 0.25, 0.22]}


def synthetic_compute_plan(package_analysis) -> dict[str, tuple[str, float]]:
    """SYNTHETIC MLComputePlan figures: op id -> (preferred unit, cost weight), made up but varied."""
    plan = {}
    for index, metrics in enumerate(package_analysis.compute_nodes()):
        unit = "NeuralEngine" if metrics.op_type in ("conv", "conv_transpose") else "CPU"
        plan[metrics.node_id] = (unit, 1.0 + (index * 7) % 11)
    return plan


@pytest.fixture(scope="module")
def converted(tmp_path_factory, sample_model):
    """The sample converted for real (fp16: the program starts and ends with casts of no source node)."""
    folder = tmp_path_factory.mktemp("converted")
    result = convert(sample_model, folder / "mobileunet.mlpackage")
    package = open_model(result.package_path)
    source_analysis = analyze(open_model(sample_model))
    return result, package, analyze(package), source_analysis


def device_profile(package, package_analysis, plan, members, samples) -> Profile:
    """A device profile keyed by package op, built as the Core ML backend's _build does."""
    stage_of = {node_id: stage.name for stage in package_analysis.stages for node_id in stage.node_ids}
    groups, nodes = split_measured_groups(package.main_graph, package_analysis, plan, members, samples, stage_of)
    return Profile.build(model_path="/agent/cache/model.mlpackage", model_format="coreml",
                         target={"name": "coreml", "backend": "coreml", "compute_unit": "ALL"}, mode="deployed",
                         settings={"runs": len(SYNTHETIC_END_TO_END_MS)}, end_to_end_samples=SYNTHETIC_END_TO_END_MS,
                         profiled_samples=(), groups=groups, nodes=nodes, runs_completed=len(SYNTHETIC_END_TO_END_MS))


def program_order(package_analysis) -> list[str]:
    return [m.node_id for m in package_analysis.compute_nodes()]


def group_total(profile: Profile) -> float:
    return sum(g.time.median_ms for g in profile.groups)


# ----------------------------------------------------------------------------- the layer map carries the source

def test_layer_map_records_the_source_nodes_an_agent_needs(converted):
    result, _, _, source_analysis = converted
    recorded = source_nodes_from_layer_map(result.layer_map)
    assert recorded == source_nodes_from_analysis(source_analysis)
    assert {n.stage for n in recorded} == {"encoder", "bottleneck", "decoder", "head"}
    assert load_layer_map(result.package_path)["source_nodes"] == result.layer_map["source_nodes"]


# ----------------------------------------------------------------------------- compute-plan split

def test_compute_plan_split_of_the_whole_run_lands_on_every_source_node(converted):
    result, package, package_analysis, source_analysis = converted
    plan = synthetic_compute_plan(package_analysis)
    ops = program_order(package_analysis)
    device = device_profile(package, package_analysis, plan, {"model": tuple(ops)}, {"model": SYNTHETIC_END_TO_END_MS})
    on_source = profile_on_source(device, result.layer_map, source_analysis)

    compute = [m.node_id for m in source_analysis.compute_nodes()]
    assert list(on_source.nodes) == compute  # every source compute node, in execution order
    assert on_source.untimed_node_ids == ()
    assert on_source.model_path == str(Path(result.layer_map["source_model"]))
    assert on_source.model_format == "onnx"
    # Kinds: the run is measured; its split by compute-plan cost is attributed, everywhere.
    assert on_source.end_to_end.kind == MEASURED
    assert on_source.end_to_end.samples_ms == tuple(SYNTHETIC_END_TO_END_MS)
    assert {n.kind for n in on_source.nodes.values()} == {ATTRIBUTED}
    assert {n.time.kind for n in on_source.nodes.values()} == {ATTRIBUTED}
    # The input/output casts of the fp16 program belong to no node: their share is a group of its own.
    by_id = {g.group_id: g for g in on_source.groups}
    assert set(by_id) == {"model", "model" + NO_SOURCE_SUFFIX}
    assert by_id["model"].node_ids == tuple(compute)
    assert by_id["model" + NO_SOURCE_SUFFIX].node_ids == ()
    assert {g.time.kind for g in on_source.groups} == {ATTRIBUTED}
    # Totals preserved: nodes + no-source ops = the measured run.
    median = float(np.median(SYNTHETIC_END_TO_END_MS))
    assert group_total(on_source) == pytest.approx(median, rel=1e-9)
    assert on_source.total_node_ms + by_id["model" + NO_SOURCE_SUFFIX].time.median_ms == pytest.approx(median)
    assert on_source.coverage == pytest.approx(device.coverage)
    # Each node's share is its ops' plan weight share, computed independently with sum_to_source.
    weights = {op: weight for op, (_, weight) in plan.items()}
    per_node = sum_to_source(result.layer_map, weights)
    total_weight = sum(weights.values())
    for node_id, timing in on_source.nodes.items():
        assert timing.time.median_ms == pytest.approx(median * per_node[node_id] / total_weight), node_id
        metrics = source_analysis.nodes[node_id]
        assert (timing.op_type, timing.stage, timing.output_bytes) == (metrics.op_type, metrics.stage,
                                                                      metrics.output_bytes)
    assert on_source.nodes["/encoder/stem/conv/Conv"].compute_unit == "NeuralEngine"
    assert on_source.nodes["/encoder/stem/bn/BatchNormalization"].compute_unit == "CPU"
    assert on_source.target["layer_map"]["device_model_path"] == "/agent/cache/model.mlpackage"
    assert any("no source node" in w for w in on_source.warnings)
    # The JSON document an agent sends says the kind of every figure.
    document = json.loads(json.dumps(on_source.to_json_dict()))
    assert check_kinds(document) == []
    assert Profile.from_json_dict(document).nodes == on_source.nodes


# ----------------------------------------------------------------------------- measured segments

def test_measured_segments_follow_the_source_stages(converted):
    result, package, package_analysis, source_analysis = converted
    ops = program_order(package_analysis)
    cuts = source_segments(result.layer_map, None, ops)  # from the map alone, as on the agent
    assert [name for name, _ in cuts] == ["encoder", "bottleneck", "decoder", "head"]
    assert [op for _, members in cuts for op in members] == ops  # contiguous, every op once, in order
    first, last = cuts[0][1][0], cuts[-1][1][-1]
    assert result.layer_map["mil_ops"][package.main_graph.node(first).name]["source"] is None  # input cast
    assert result.layer_map["mil_ops"][package.main_graph.node(last).name]["source"] is None  # output cast

    plan = synthetic_compute_plan(package_analysis)
    device = device_profile(package, package_analysis, plan, dict(cuts), SYNTHETIC_SEGMENT_MS)
    on_source = profile_on_source(device, result.layer_map)  # source nodes from the map
    assert on_source.nodes == profile_on_source(device, result.layer_map, source_analysis).nodes

    compute = [m.node_id for m in source_analysis.compute_nodes()]
    assert list(on_source.nodes) == compute
    by_id = {g.group_id: g for g in on_source.groups}
    # Segments holding only source ops stay measured, with the device's samples.
    for name in ("bottleneck", "decoder"):
        assert by_id[name].time.kind == MEASURED
        assert by_id[name].time.samples_ms == tuple(SYNTHETIC_SEGMENT_MS[name])
        stage_nodes = [n for n in compute if source_analysis.nodes[n].stage == name]
        assert by_id[name].node_ids == tuple(stage_nodes)
        assert on_source.stage_times_ms[name] == pytest.approx(np.median(SYNTHETIC_SEGMENT_MS[name]))
    # The first and last segments also ran the casts: split into source and no-source parts, attributed.
    for name in ("encoder", "head"):
        assert by_id[name].time.kind == ATTRIBUTED
        assert by_id[name + NO_SOURCE_SUFFIX].time.kind == ATTRIBUTED
        assert by_id[name].time.median_ms + by_id[name + NO_SOURCE_SUFFIX].time.median_ms == pytest.approx(
            np.median(SYNTHETIC_SEGMENT_MS[name]))
    # Nodes inside a segment of many nodes: attributed.
    assert {n.kind for n in on_source.nodes.values()} == {ATTRIBUTED}
    segment_total = sum(float(np.median(v)) for v in SYNTHETIC_SEGMENT_MS.values())
    assert group_total(on_source) == pytest.approx(segment_total)
    no_source = sum(g.time.median_ms for g in on_source.groups if not g.node_ids)
    assert on_source.total_node_ms + no_source == pytest.approx(segment_total)
    assert list(on_source.stage_times_ms) == ["encoder", "bottleneck", "decoder", "head"]


def test_ops_timed_one_by_one_give_measured_source_nodes(converted):
    """Layer granularity: one truncated model per op; a node that is exactly its own segment is measured."""
    result, package, package_analysis, source_analysis = converted
    ops = program_order(package_analysis)
    rng = np.random.default_rng(7)
    SYNTHETIC_PER_OP_MS = {op: sorted(rng.uniform(0.01, 0.3, size=3).tolist()) for op in ops}
    plan = synthetic_compute_plan(package_analysis)
    device = device_profile(package, package_analysis, plan, {op: (op,) for op in ops}, SYNTHETIC_PER_OP_MS)
    assert {n.kind for n in device.nodes.values()} == {MEASURED}
    on_source = profile_on_source(device, result.layer_map, source_analysis)
    assert {n.kind for n in on_source.nodes.values()} == {MEASURED}
    assert {g.time.kind for g in on_source.groups} == {MEASURED}
    # MobileUNet: each ONNX node became one MIL op, so each node has that op's samples.
    for node_id, timing in on_source.nodes.items():
        [op_name] = result.layer_map["nodes"][node_id]
        op_id = result.layer_map["mil_ops"][op_name]["outputs"][0]
        assert timing.time.samples_ms == tuple(SYNTHETIC_PER_OP_MS[op_id])
    assert group_total(on_source) == pytest.approx(sum(float(np.median(v)) for v in SYNTHETIC_PER_OP_MS.values()))


def test_a_node_of_several_ops_sums_them_rank_by_rank_and_kinds_stay_honest(tmp_path):
    """Gemm with a full-matrix C becomes matmul + add: two ops, two measured segments, one node."""
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 8])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 4])
    nodes = [helper.make_node("Gemm", ["x", "w", "c"], ["g"], name="the_gemm"),
             helper.make_node("Relu", ["g"], ["y"], name="act")]
    inits = [numpy_helper.from_array(np.ones((8, 4), np.float32), "w"),
             numpy_helper.from_array(np.ones((2, 4), np.float32), "c")]
    model = helper.make_model(helper.make_graph(nodes, "g", [x], [y], inits),
                              opset_imports=[helper.make_opsetid("", 17)])
    onnx.save(model, tmp_path / "gemm.onnx")
    result = convert(tmp_path / "gemm.onnx", tmp_path / "gemm.mlpackage", precision="fp32")
    assert len(result.layer_map["nodes"]["the_gemm"]) == 2
    package = open_model(result.package_path)
    package_analysis = analyze(package)
    ops = program_order(package_analysis)
    SYNTHETIC_PER_OP_MS = {op: [0.3 + i, 0.1 + i, 0.2 + i] for i, op in enumerate(ops)}  # unsorted: run order
    device = device_profile(package, package_analysis, synthetic_compute_plan(package_analysis),
                            {op: (op,) for op in ops}, SYNTHETIC_PER_OP_MS)
    on_source = profile_on_source(device, result.layer_map, analyze(open_model(tmp_path / "gemm.onnx")))
    gemm = on_source.nodes["the_gemm"]
    assert gemm.kind == MEASURED  # both of its segments hold nothing else
    first, second = (SYNTHETIC_PER_OP_MS[op] for op in ops[:2])
    assert gemm.time.samples_ms == pytest.approx([a + b for a, b in zip(sorted(first), sorted(second))])
    assert gemm.time.median_ms == pytest.approx(np.median(first) + np.median(second))
    # One segment for the gemm's two ops and the relu: the gemm's share is attributed.
    device = device_profile(package, package_analysis, synthetic_compute_plan(package_analysis),
                            {"all": tuple(ops)}, {"all": [1.0, 1.2, 1.1]})
    on_source = profile_on_source(device, result.layer_map, analyze(open_model(tmp_path / "gemm.onnx")))
    assert {n.kind for n in on_source.nodes.values()} == {ATTRIBUTED}
    assert [g.time.kind for g in on_source.groups] == [MEASURED]  # fp32: no casts, the segment stays whole
    assert on_source.total_node_ms == pytest.approx(1.1)
    # An estimated part makes the node estimated, never measured.
    estimated = device.nodes[ops[0]]
    device = Profile.build(model_path="", model_format="coreml", target={}, mode="deployed", settings={},
                           end_to_end_samples=[1.1], profiled_samples=(), groups=device.groups,
                           nodes=[replace(estimated, time=TimingStats.from_samples([0.5], ESTIMATED), kind=ESTIMATED)]
                           + [n for n in device.nodes.values() if n.node_id != ops[0]], runs_completed=1)
    assert profile_on_source(device, result.layer_map,
                             analyze(open_model(tmp_path / "gemm.onnx"))).nodes["the_gemm"].kind == ESTIMATED


def test_a_layer_map_of_another_model_is_refused(converted):
    result, package, package_analysis, source_analysis = converted
    ops = program_order(package_analysis)
    device = device_profile(package, package_analysis, synthetic_compute_plan(package_analysis),
                            {"model": tuple(ops)}, {"model": SYNTHETIC_END_TO_END_MS})
    with pytest.raises(LayerMapError, match="another model"):
        profile_on_source(device, result.layer_map, source_nodes_from_analysis(source_analysis)[1:])
    without = {k: v for k, v in result.layer_map.items() if k != "source_nodes"}
    with pytest.raises(LayerMapError, match="convert the model again"):
        profile_on_source(device, without)


def test_transfers_are_renamed_onto_source_nodes(converted):
    result, package, _, _ = converted
    index = {info["outputs"][0]: info["source"] for info in result.layer_map["mil_ops"].values() if info["source"]}
    conv_op = result.layer_map["mil_ops"]["encoder_stem_conv_Conv"]["outputs"][0]
    bn_op = result.layer_map["mil_ops"]["encoder_stem_bn_BatchNormalization"]["outputs"][0]
    stats = TimingStats.from_samples([0.01], ESTIMATED)
    moved = rekey_transfers([Transfer("edge", "t", "NeuralEngine", "CPU", 64, stats, conv_op, bn_op),
                             Transfer("input", "image", "host", "CPU", 64, stats, None, "image__to_fp16")], index)
    assert (moved[0].from_node, moved[0].to_node) == ("/encoder/stem/conv/Conv", "/encoder/stem/bn/BatchNormalization")
    assert (moved[1].from_node, moved[1].to_node) == (None, "image__to_fp16")  # host stays None; a cast keeps its op


def test_node_links_join_the_two_graphs_both_ways(converted):
    result, package, _, source_analysis = converted
    links = node_links(result.layer_map, package.main_graph)
    package_ids = {n.id for n in package.main_graph.nodes}
    for metrics in source_analysis.compute_nodes():
        converted_ids = links.converted_of(metrics.node_id)
        assert converted_ids and set(converted_ids) <= package_ids, metrics.node_id
        assert all(links.source_of(c) == metrics.node_id for c in converted_ids)
    casts = [n.id for n in package.main_graph.nodes if n.op_type == "cast"]
    assert casts and all(links.source_of(c) is None for c in casts)


# ----------------------------------------------------------------------------- the map travels with the package

def test_the_layer_map_is_uploaded_with_the_package_and_stored_beside_it(converted, tmp_path):
    result, _, _, _ = converted
    bare = tmp_path / "bare" / "mobileunet.mlpackage"  # the same package without its map
    shutil.copytree(result.package_path, bare)
    agent = start_agent_process(tmp_path / "agent")
    client = BridgeClient(agent.address)
    try:
        client.connect()
        with_map = client.upload(result.package_path)
        assert with_map.format == "mlpackage" and with_map.layer_map and not with_map.cached
        stored = agent.cache_dir / "models" / with_map.sha256
        assert json.loads((stored / "model.layermap.json").read_text()) == result.layer_map
        assert load_layer_map(stored / "model.mlpackage")["nodes"] == result.layer_map["nodes"]
        again = client.upload(result.package_path)
        assert again.cached and again.layer_map  # deterministic archive: a cache hit that still has it
        without = client.upload(bare)
        assert without.sha256 != with_map.sha256 and not without.layer_map
        assert not (agent.cache_dir / "models" / without.sha256 / "model.layermap.json").exists()
    finally:
        client.close()
        stop_agent_process(agent)


# ----------------------------------------------------------------------------- blockers in the report

def _unsupported_model():
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 8, 8])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, None)
    nodes = [helper.make_node("Conv", ["x", "w"], ["c"], name="conv", pads=[1, 1, 1, 1]),
             helper.make_node("GridSample", ["c", "grid"], ["g"], name="warp"),
             helper.make_node("Relu", ["g"], ["r"], name="relu"),
             helper.make_node("Det", ["r"], ["y"], name="pick")]
    inits = [numpy_helper.from_array(np.ones((4, 3, 3, 3), np.float32), "w"),
             numpy_helper.from_array(np.zeros((1, 8, 8, 2), np.float32), "grid")]
    return helper.make_model(helper.make_graph(nodes, "bad", [x], [y], inits),
                             opset_imports=[helper.make_opsetid("", 17)])


def test_report_blockers_lists_what_cannot_run_on_core_ml(converted, sample_model, tmp_path):
    result, _, _, source_analysis = converted
    assert report_blockers(sample_model) == []
    assert report_blockers(result.package_path) == []  # already Core ML
    bad = tmp_path / "bad.onnx"
    onnx.save(_unsupported_model(), bad)
    blockers = report_blockers(bad)
    assert [(b["node_id"], b["op_type"]) for b in blockers] == [("warp", "GridSample"), ("pick", "Det")]
    assert all(set(b) == {"node_id", "op_type", "reason"} and b["reason"] for b in blockers)
    # A free input size is a conversion option, not something Core ML cannot run.
    free = mobileunet(alpha=0.25, size=64)
    for dim, name in zip(free.graph.input[0].type.tensor_type.shape.dim[2:], ("height", "width")):
        dim.Clear()
        dim.dim_param = name
    for value_info in list(free.graph.value_info) + list(free.graph.output):
        value_info.type.tensor_type.ClearField("shape")
    onnx.save(free, tmp_path / "free.onnx")
    assert report_blockers(tmp_path / "free.onnx") == []
    assert report_blockers(tmp_path / "free.onnx", {"image": [1, 3, 64, 64]}) == []
    bad_free = _unsupported_model()
    bad_free.graph.input[0].type.tensor_type.shape.dim[3].dim_param = "width"
    onnx.save(bad_free, tmp_path / "bad_free.onnx")
    assert [b["node_id"] for b in report_blockers(tmp_path / "bad_free.onnx")] == ["warp", "pick"]
    # The bottleneck report renders them.
    profile = Profile.build(model_path=str(bad), model_format="onnx", target={"name": "cpu"}, mode="exact",
                            settings={}, end_to_end_samples=[1.0], profiled_samples=(), groups=[], nodes=[],
                            runs_completed=1)
    page = html_report(profile, analyze(open_model(bad)), blockers=blockers)
    assert "Cannot run on Core ML: 2 nodes" in page and "GridSample" in page and "Det" in page
