"""The bottleneck report names a decoder's slowest block against the median one, as the app's
inspector and `layerscope profile` do (it said nothing of repeated blocks before)."""
from __future__ import annotations

from html import unescape

import pytest

from engine.analysis import analyze
from engine.grouping import block_summary, compare_blocks, namespace_groups, repeated_block_lines, repeated_blocks
from engine.report.html_report import html_report
from engine.targets import ProfileSettings
from engine.targets.cpu import CpuTarget
from engine.transformer_samples import TransformerConfig, write_transformer
from importers import open_model


@pytest.fixture(scope="module")
def profiled_decoder(tmp_path_factory):
    config = TransformerConfig(layers=4, hidden=64, heads=4, kv_heads=2, intermediate=96, vocab=50, past=5)
    path = write_transformer(tmp_path_factory.mktemp("report_blocks") / "decoder.onnx", config)
    with CpuTarget() as target:
        profile = target.profile(ProfileSettings(runs=3, warmup=1), model_path=path)
    return profile, analyze(open_model(path))


def test_the_report_has_the_repeated_blocks_line_of_the_profile(profiled_decoder):
    profile, analysis = profiled_decoder
    groups = namespace_groups(analysis)
    family = repeated_blocks(groups, analysis)[0]
    summary = block_summary(family, compare_blocks(family, groups, analysis, profile))
    assert summary.startswith("the slowest, layers.") and "x the median block (" in summary and "measured" in summary
    page = unescape(html_report(profile, analysis))
    assert "<h2>Repeated blocks</h2>" in page
    assert f"model/layers.* x 4 ({family.ops_per_block} ops each): {summary}" in page
    assert repeated_block_lines(analysis, profile)[0] == f"model/layers.* x 4 ({family.ops_per_block} ops each): {summary}"


def test_a_model_without_repeated_blocks_has_no_such_section(tmp_path):
    import onnx
    from onnx import TensorProto, helper

    tensor = helper.make_tensor_value_info
    graph = helper.make_graph([helper.make_node("Relu", ["x"], ["r"], name="/head/Relu"),
                               helper.make_node("Sigmoid", ["r"], ["y"], name="/tail/Sigmoid")], "plain",
                              [tensor("x", TensorProto.FLOAT, [1, 8])], [tensor("y", TensorProto.FLOAT, [1, 8])])
    path = tmp_path / "plain.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    with CpuTarget() as target:
        profile = target.profile(ProfileSettings(runs=2, warmup=0), model_path=path)
    analysis = analyze(open_model(path))
    assert repeated_block_lines(analysis, profile) == []
    page = html_report(profile, analysis)
    assert "Repeated blocks" not in page and "<h2>Where the time goes, by stage</h2>" in page


def test_blocks_with_the_same_ops_but_different_work_are_not_compared(sample_model):
    # MobileUNet's encoder blocks run the same six ops at falling resolutions: comparing their
    # times said "block1 is 2.71x the median block" of a block doing a fraction of its work.
    analysis = analyze(open_model(sample_model))
    groups = namespace_groups(analysis)
    blocks = [g for g in groups.values() if g.parent is not None and groups[g.parent].name == "encoder"
              and g.title.startswith("block")]

    def ops(group):
        return [analysis.graph.node(n).op_type for n in group.members if not analysis.nodes[n].is_constant]

    def macs(group):
        return sum(analysis.nodes[n].macs or 0 for n in group.members)

    alike = [g for g in blocks if ops(g) == ops(blocks[0])]
    assert len(alike) >= 3 and len({macs(g) for g in alike}) > 1
    assert not [f for f in repeated_blocks(groups, analysis) if f.name.startswith("encoder/block")]
