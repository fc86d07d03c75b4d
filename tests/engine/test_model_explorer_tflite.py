"""Model Explorer node data for .tflite profiles, checked against Model Explorer's own format:
`ModelNodeData` (model_explorer/node_data_builder.py) is a JSON object graph id -> `GraphNodeData`
{results: {node key: {value: number}}, gradient: [{stop 0..1 with stops 0 and 1, bgColor}]}; its TFLite
adapter (adapters/litert/direct_flatbuffer_to_json_graph_convert.cc) makes one graph per subgraph, named by
the subgraph's name, else the signature key that runs it, else "main" / "subgraph_K", and gives each
operator node the id of its index within its subgraph.  The expected ids below are read from the file
with ai-edge-litert's schema, not from our importer."""
from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

pytest.importorskip("ai_edge_litert")
from ai_edge_litert import schema_py_generated as fb  # noqa: E402

from engine.analysis import analyze  # noqa: E402
from engine.profile import NodeTiming, Profile, TimingStats  # noqa: E402
from engine.report.exports import model_explorer_node_data  # noqa: E402
from engine.targets import ProfileSettings, get_target  # noqa: E402
from importers import open_model  # noqa: E402
from tests.importers.test_tflite import FACE, build_small_model  # noqa: E402

GRAPH_NODE_DATA_FIELDS = {"results", "thresholds", "gradient", "hideInAggregatedStatsTable",
                          "hideInChildrenStatsTable", "hideAggregatedStats", "showExpandedSummaryOnGroupNode",
                          "showLabelCountColumnsInChildrenStatsTable"}


def model_explorer_graph_ids(path: Path) -> list[tuple[str, int]]:
    """(graph id, operator count) per subgraph, as Model Explorer's TFLite adapter names them."""
    root = fb.Model.GetRootAs(path.read_bytes(), 0)
    keys = {int(root.SignatureDefs(i).SubgraphIndex()): (root.SignatureDefs(i).SignatureKey() or b"").decode()
            for i in range(root.SignatureDefsLength())}
    ids = []
    for index in range(root.SubgraphsLength()):
        subgraph = root.Subgraphs(index)
        name = (subgraph.Name() or b"").decode() or keys.get(index) or (
            "main" if index == 0 else f"subgraph_{index}")
        ids.append((name, subgraph.OperatorsLength()))
    return ids


def check_model_node_data(document: dict) -> None:
    """The document is a ModelNodeData that Model Explorer loads (the fields and types of its dataclasses)."""
    assert isinstance(document, dict) and document
    for graph_id, graph in document.items():
        assert isinstance(graph_id, str) and graph_id
        assert set(graph) <= GRAPH_NODE_DATA_FIELDS and isinstance(graph["results"], dict)
        for key, result in graph["results"].items():
            assert isinstance(key, str) and set(result) <= {"value", "bgColor", "textColor"}
            assert isinstance(result["value"], (int, float)) and math.isfinite(result["value"])
        stops = [item["stop"] for item in graph.get("gradient", [])]
        if stops:  # "Stops for 0 and 1 should always be provided"; colours as hex
            assert 0 in stops and 1 in stops and all(0 <= s <= 1 for s in stops)
            assert all(item["bgColor"].startswith("#") for item in graph["gradient"])


def test_a_litert_profile_exports_node_data_on_model_explorers_graph_and_operator_ids(tmp_path):
    with get_target("cpu", model_path=FACE) as target:
        profile = target.profile(ProfileSettings(runs=2, warmup=1), model_path=FACE)
        analysis = target.analysis
    document = json.loads(json.dumps(model_explorer_node_data(profile, analysis)))
    check_model_node_data(document)
    [(graph_id, operators)] = model_explorer_graph_ids(FACE)
    assert list(document) == [graph_id]
    results = document[graph_id]["results"]
    assert set(results) == {str(i) for i in range(operators)}
    assert results["2"]["value"] == round(profile.nodes["2"].time.median_ms, 6)


def test_every_subgraph_is_its_own_graph_keyed_by_operator_index_within_it(tmp_path):
    path = build_small_model(tmp_path / "built.tflite")  # subgraph 0 named "main", subgraph 1 unnamed
    analysis = analyze(open_model(path))
    expected = model_explorer_graph_ids(path)
    assert expected == [("main", 3), ("subgraph_1", 1)]
    assert [g.name for g in analysis.model.graphs] == ["main", "subgraph_1"]  # the importer names them alike
    timings = [NodeTiming(node_id, "ADD", "", TimingStats.from_samples([ms]), node_id, "measured")
               for node_id, ms in (("0", 0.5), ("2", 0.25), ("1/0", 0.125))]
    profile = Profile.build(model_path=str(path), model_format="tflite", target={"name": "cpu"}, mode="exact",
                            settings={}, end_to_end_samples=[1.0], profiled_samples=(), groups=(), nodes=timings,
                            runs_completed=1)
    document = model_explorer_node_data(profile, analysis)
    check_model_node_data(document)
    assert {graph: set(data["results"]) for graph, data in document.items()} == \
        {"main": {"0", "2"}, "subgraph_1": {"0"}}
    assert document["subgraph_1"]["results"]["0"] == {"value": 0.125}
