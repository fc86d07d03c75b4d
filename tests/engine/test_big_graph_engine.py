"""The analysis and grouping shortcuts for big graphs (issue 14) keep their results.

Value types and byte sizes are looked up once per value, namespace groups are built per
namespace instead of per node; these tests compare with the plain definitions on generated
transformers and the shipped zoo.
"""
from __future__ import annotations

import pytest

from conftest import LIGHT_ZOO
from engine.analysis import analyze
from engine.ir import DTYPE_BYTES, TensorType
from engine.layout import GROUP_PREFIX, node_groups
from engine.transformer_samples import TransformerConfig, write_transformer
from importers import open_model

SMALL_TRANSFORMER = TransformerConfig(layers=3, hidden=64, heads=4, kv_heads=2, intermediate=128, vocab=100)


@pytest.fixture(scope="module")
def analyses(tmp_path_factory):
    directory = tmp_path_factory.mktemp("models")
    paths = [write_transformer(directory / "optimum.onnx", SMALL_TRANSFORMER),
             write_transformer(directory / "qdq.onnx",
                               TransformerConfig(**{**SMALL_TRANSFORMER.__dict__, "style": "per_head_qdq"})),
             LIGHT_ZOO[0]]
    return [analyze(open_model(path)) for path in paths]


def _namespace_groups_by_definition(analysis):
    """node_groups' documented rule, node by node: every scope prefix with 2+ compute nodes is a
    group unless it holds the same nodes as the level above; outermost first, execution order."""
    graph, metrics = analysis.graph, analysis.nodes
    found = {}
    for node_id in analysis.order:
        parts = [p for p in graph.node(node_id).namespace.split("/") if p]
        for depth in range(1, len(parts) + 1):
            found.setdefault("/".join(parts[:depth]), []).append(node_id)

    def kept_parent(path, kept):
        parts = path.split("/")
        return next(("/".join(parts[:d]) for d in range(len(parts) - 1, 0, -1) if "/".join(parts[:d]) in kept), None)

    kept = {}
    for path in sorted(found, key=lambda p: p.count("/")):
        nodes = tuple(found[path])
        if sum(1 for n in nodes if not metrics[n].is_constant) < 2:
            continue
        parent = kept_parent(path, kept)
        if parent is not None and kept[parent] == nodes:
            continue
        kept[path] = nodes
    first = {node_id: i for i, node_id in enumerate(analysis.order)}
    ordered = sorted(kept, key=lambda p: (p.count("/"), first[kept[p][0]]))
    return [(f"{GROUP_PREFIX}namespace:{p}", kept[p],
             None if kept_parent(p, kept) is None else f"{GROUP_PREFIX}namespace:{kept_parent(p, kept)}")
            for p in ordered]


def test_namespace_groups_follow_their_definition(analyses):
    for analysis in analyses[:2]:
        groups = node_groups(analysis, "namespace")
        assert len(groups) > 10
        assert [(g.id, g.members, g.parent) for g in groups.values()] == _namespace_groups_by_definition(analysis)


def test_value_types_are_the_values_types(analyses):
    for analysis in analyses:
        graph = analysis.graph
        assert graph.value_types.keys() == graph.values.keys()
        for name, value in graph.values.items():
            assert graph.value_types[name] is value.type
            assert graph.value_type(name) is value.type
        assert graph.value_type("no such tensor") is None


@pytest.mark.parametrize("dtype,shape,expected", [
    ("float32", (2, 3), 24), ("float16", (5,), 10), ("int4", (3,), 2), ("int4", (4,), 2), ("uint1", (9,), 1),
    ("bool", (), 1), ("unknown-dtype", (2,), 8), ("float32", (2, "batch"), None), ("float32", None, None),
    ("float32", (2, -1), None), ("float32", (0, 7), 0)])
def test_byte_size_is_elements_times_dtype_bytes(dtype, shape, expected):
    tensor_type = TensorType(dtype, shape)
    assert tensor_type.byte_size == expected
    if expected is not None:
        assert expected == int(tensor_type.element_count * DTYPE_BYTES.get(dtype, 4) + 0.5)


def test_analysis_totals_add_up_over_nodes(analyses):
    """Totals, stage sums and per-node figures agree (the loops that compute them were rewritten)."""
    for analysis in analyses:
        compute = analysis.compute_nodes()
        assert analysis.totals.macs == sum(m.macs or 0 for m in compute)
        assert analysis.totals.params == sum(m.params for m in analysis.nodes.values())
        assert sum(s.macs for s in analysis.stages) == analysis.totals.macs
        assert sum(s.params for s in analysis.stages) == analysis.totals.params
        assert analysis.totals.peak_activation_bytes > 0 and analysis.totals.peak_node_id in analysis.nodes
