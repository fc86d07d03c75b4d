"""engine.group_index.figures_of_many: the totals of many groups summed in one numpy pass equal
each group's own (figures_of, and the plain walk over its members), on generated transformers, a
model whose CumSum has no known FLOPs, and lists no grouping makes (empty, a name that is no node)."""
from __future__ import annotations

import pytest

from engine.analysis import analyze
from engine.group_index import figures_of, figures_of_many
from engine.grouping import namespace_groups
from engine.layout import node_groups
from engine.transformer_samples import TransformerConfig, write_transformer
from importers import open_model
from test_group_index import _walked_totals, cumsum_block  # the sums written out node by node; a CumSum model


@pytest.fixture(scope="module", params=["per_head_qdq", "optimum"])
def decoder(request, tmp_path_factory):
    config = TransformerConfig(layers=3, hidden=64, heads=4, kv_heads=2, intermediate=96, vocab=50, past=5,
                               style=request.param)
    path = write_transformer(tmp_path_factory.mktemp(request.param) / "decoder.onnx", config)
    return analyze(open_model(str(path)))


def test_many_groups_summed_together_equal_each_summed_alone(decoder):
    groups = list(namespace_groups(decoder).values()) + list(node_groups(decoder, "stage").values())
    assert len(groups) > 20
    lists = [g.members for g in groups] + [(), (decoder.order[0], "no such node"), tuple(decoder.order)]
    together = figures_of_many(decoder, lists)
    assert [figures_of(decoder, members) for members in lists] == together
    for group, figures in zip(groups, together):
        assert figures == _walked_totals(group, decoder), group.id
    assert together[len(groups)] == dict(nodes=0, macs=0, params=0, unknown_cost_nodes=0, flops=0, output_bytes=0,
                                         bytes_moved=0)
    assert all(isinstance(v, int) for figures in together for v in figures.values())
    assert together[-1]["macs"] > 0 and together[-1]["nodes"] == decoder.totals.compute_nodes
    assert figures_of_many(decoder, []) == []


def test_unknown_figures_count_as_in_a_group_alone(tmp_path):
    analysis = cumsum_block(tmp_path)
    assert analysis.nodes["/blk/CumSum"].flops is None and analysis.nodes["/blk/CumSum"].macs is None
    lists = [("/blk/Relu", "/blk/CumSum"), ("/blk/CumSum",), ("/blk/Add", "/blk/Relu", "/blk/CumSum")]
    together = figures_of_many(analysis, lists)
    assert together == [figures_of(analysis, members) for members in lists]
    assert together[1]["unknown_cost_nodes"] == 1 and together[1]["bytes_moved"] == 0
