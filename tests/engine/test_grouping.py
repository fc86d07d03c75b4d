"""Namespace grouping, repeated blocks and the fold threshold (engine.grouping), on generated
transformers that ONNX Runtime runs (engine.transformer_samples)."""
from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from engine.analysis import analyze
from engine.grouping import (FOLD_NODES, FOLD_NODES_ENVIRONMENT, block_summary, compare_blocks, enclosing_groups,
                             fold_threshold, group_stats, innermost_group, namespace_groups, opens_folded,
                             repeated_blocks, top_level)
from engine.targets import ProfileSettings
from engine.targets.cpu import CpuTarget
from engine.transformer_samples import STYLES, TransformerConfig, layers_for_nodes, write_transformer
from importers import open_model

TINY = dict(hidden=64, heads=4, kv_heads=2, intermediate=96, vocab=50, past=5)


@pytest.fixture(scope="module", params=STYLES)
def tiny_transformer(request, tmp_path_factory):
    config = TransformerConfig(layers=4, style=request.param, **TINY)
    path = write_transformer(tmp_path_factory.mktemp(request.param) / "tiny.onnx", config)
    return config, path, analyze(open_model(path))


def test_generated_transformer_is_valid_onnx_that_runs(tiny_transformer):
    config, path, analysis = tiny_transformer
    onnx.checker.check_model(str(path), full_check=True)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    feeds = {"input_ids": np.array([[3]], dtype=np.int64), "position_ids": np.array([[5]], dtype=np.int64),
             "attention_mask": np.ones((1, 6), dtype=np.int64)}
    for layer in range(config.layers):
        for kind in ("key", "value"):
            feeds[f"past_key_values.{layer}.{kind}"] = np.zeros((1, 2, 5, 16), dtype=np.float32)
    outputs = dict(zip([o.name for o in session.get_outputs()], session.run(None, feeds)))
    assert outputs["logits"].shape == (1, 1, 50)
    assert outputs["present.3.key"].shape == (1, 2, 6, 16)  # the cache grew by one token
    # every MatMul's cost is known: shapes resolve through the export's shape arithmetic
    assert not [n for n in analysis.totals.unknown_cost_nodes if "MatMul" in n]
    names = [analysis.graph.node(n).name for n in analysis.order]
    assert any(name.startswith("/model/layers.2/self_attn/") for name in names)
    assert {"Softmax", "Neg", "Sigmoid", "Concat"} <= {analysis.graph.node(n).op_type for n in analysis.order}


def test_node_count_scales_with_blocks():
    assert layers_for_nodes(100_000, "per_head_qdq") in range(38, 46)  # ~2,400 nodes per block
    assert layers_for_nodes(5_000, "optimum") in range(55, 70)  # ~80 nodes per block


def test_repeated_blocks_and_their_totals(tiny_transformer):
    config, _, analysis = tiny_transformer
    groups = namespace_groups(analysis)
    families = repeated_blocks(groups, analysis)
    layers = families[0]
    assert layers.name == "model/layers.*" and layers.indices == (0, 1, 2, 3)
    stats = group_stats(groups, analysis)
    block_stats = [stats[g] for g in layers.group_ids]
    assert len({(s.nodes, s.macs, s.params) for s in block_stats}) == 1  # identical blocks
    assert block_stats[0].macs > 0 and block_stats[0].time_ms is None  # no profile: time unknown
    # the blocks' totals are part of the model's
    assert sum(s.nodes for s in block_stats) < analysis.totals.compute_nodes
    if config.style == "per_head_qdq":
        assert any(f.name.endswith("self_attn/head.*") and len(f.group_ids) == config.heads for f in families)


def test_blocks_compared_on_a_real_profile(tiny_transformer):
    _, path, analysis = tiny_transformer
    with CpuTarget() as target:
        profile = target.profile(ProfileSettings(runs=3, warmup=1), model_path=path)
    groups = namespace_groups(analysis)
    family = repeated_blocks(groups, analysis)[0]
    times = compare_blocks(family, groups, analysis, profile)
    assert [t.index for t in times] == [0, 1, 2, 3]
    assert sorted(t.ratio_to_median for t in times)[1] <= 1.0 <= sorted(t.ratio_to_median for t in times)[2]
    slowest = max(times, key=lambda t: t.ratio_to_median)
    text = block_summary(family, times)
    assert text.startswith(f"the slowest, layers.{slowest.index}, is {slowest.ratio_to_median:.2f}x the median block")
    assert slowest.kind in text
    assert compare_blocks(family, groups, analysis, None) == []


def test_enclosing_groups_open_a_hidden_node(tiny_transformer):
    _, _, analysis = tiny_transformer
    groups = namespace_groups(analysis)
    node_id = next(n for n in analysis.order if "/layers.2/mlp/down_proj/" in analysis.graph.node(n).name)
    chain = enclosing_groups(node_id, groups, innermost_group(groups))
    assert chain[0] == top_level(groups)[0].id == "group:namespace:model"
    assert [groups[g].name for g in chain[1:3]] == ["model/layers.2", "model/layers.2/mlp"]
    assert all(node_id in groups[g].members for g in chain)


def test_fold_threshold_is_adjustable(tiny_transformer, monkeypatch):
    _, _, analysis = tiny_transformer
    monkeypatch.delenv(FOLD_NODES_ENVIRONMENT, raising=False)
    assert fold_threshold() == FOLD_NODES and not opens_folded(analysis)
    monkeypatch.setenv(FOLD_NODES_ENVIRONMENT, "10")
    assert opens_folded(analysis)
    monkeypatch.setenv(FOLD_NODES_ENVIRONMENT, "0")  # off
    assert not opens_folded(analysis)
    monkeypatch.setenv(FOLD_NODES_ENVIRONMENT, "many")  # a typo keeps the default
    assert fold_threshold() == FOLD_NODES
