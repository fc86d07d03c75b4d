"""The generated decoder in its issue-17 flavours (engine.transformer_samples.flavour_model):
opset 23 (Attention, RMSNormalization, RotaryEmbedding) and com.microsoft as onnxruntime-genai
writes it (SimplifiedLayerNormalization, SkipSimplifiedLayerNormalization, RotaryEmbedding,
GroupQueryAttention with the KV cache as inputs, optionally 4-bit MatMulNBits).

Each, at a small size: `layerscope convert` exits 0 with every check passed (values on the MIL
reference evaluator against ONNX Runtime), and `layerscope profile` on the CPU reference times
every node, with the decoder layers found as one family of repeated blocks.  The genai flavour
computes GroupQueryAttention's seqlens_k from attention_mask at run time: refused without
--assume-full-attention-mask, converted with it and the assumption recorded.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest

from engine.cli import main
from engine.convert import check_convertible, convert
from engine.transformer_samples import TransformerConfig, flavour_model

SMALL = TransformerConfig(layers=4, hidden=64, heads=4, kv_heads=2, intermediate=96, vocab=50, sequence=3, past=5)
FLAVOURS = {"opset23": dict(flavour="opset23"), "microsoft": dict(flavour="microsoft"),
            "microsoft_4bit": dict(flavour="microsoft", quantized=True)}
GQA_REFUSAL = "seqlens_k (input 5) is computed at run time; Core ML needs it constant"


def _write(tmp_path: Path, name: str) -> Path:
    path = tmp_path / f"{name}.onnx"
    onnx.save(flavour_model(SMALL, **FLAVOURS[name]), str(path))
    return path


def _inputs_file(path: Path, model: onnx.ModelProto) -> Path:
    """Real inputs for the profile: a full attention mask (ONNX Runtime's GroupQueryAttention refuses
    lengths shorter than the new tokens), positions after the past, a random KV cache."""
    rng = np.random.default_rng(0)
    arrays = {}
    for value in model.graph.input:
        shape = [d.dim_value for d in value.type.tensor_type.shape.dim]
        if value.name == "attention_mask":
            arrays[value.name] = np.ones(shape, np.int64)
        elif value.name == "position_ids":
            arrays[value.name] = (SMALL.past + np.arange(SMALL.sequence, dtype=np.int64))[None]
        elif value.name == "input_ids":
            arrays[value.name] = rng.integers(0, SMALL.vocab, size=shape).astype(np.int64)
        else:
            arrays[value.name] = rng.standard_normal(shape).astype(np.float32)
    np.savez(path, **arrays)
    return path


@pytest.mark.parametrize("name", list(FLAVOURS))
def test_flavour_converts_verifies_by_value_and_profiles_grouped_by_block(name, tmp_path, capsys):
    path = _write(tmp_path, name)
    model = onnx.load(str(path))
    ops = {(node.domain or "ai.onnx", node.op_type) for node in model.graph.node}
    if name == "opset23":
        assert {("ai.onnx", "Attention"), ("ai.onnx", "RMSNormalization"), ("ai.onnx", "RotaryEmbedding")} <= ops
        assert model.opset_import[0].version == 23
    else:
        assert {("ai.onnx", "SimplifiedLayerNormalization"), ("com.microsoft", "SkipSimplifiedLayerNormalization"),
                ("com.microsoft", "RotaryEmbedding"), ("com.microsoft", "GroupQueryAttention")} <= ops
        assert (("com.microsoft", "MatMulNBits") in ops) == (name == "microsoft_4bit")
    options = ["--assume-full-attention-mask"] if name.startswith("microsoft") else []
    package = tmp_path / f"{name}.mlpackage"
    code = main(["convert", str(path), "-o", str(package), "--precision", "fp32", "--target", "iOS18", "-q", *options])
    out = capsys.readouterr().out
    assert code == 0, out
    for check in ("shapes", "compute_layers", "parameters", "weight_bytes", "layer_map", "weights", "values"):
        assert any(line.split()[:2] == [check, "passed"] for line in out.splitlines()), (check, out)
    assert "outputs on the MIL reference evaluator within" in out and "of ONNX Runtime" in out
    layer_map = json.loads((tmp_path / f"{name}.layermap.json").read_text())
    every_node = {node.name for node in model.graph.node}
    covered = set(layer_map["nodes"]) | set(layer_map["removed"]) | set(layer_map["folded"])
    assert every_node == covered
    assert not [op for op, info in layer_map["mil_ops"].items() if info.get("source") is None
                and info.get("type") not in ("cast",)], "MIL ops without a source node"

    inputs = _inputs_file(tmp_path / "inputs.npz", model)
    code = main(["profile", str(path), "--runs", "2", "--warmup", "1", "--inputs", str(inputs),
                 "--json", str(tmp_path / "profile.json")])
    out = capsys.readouterr().out
    assert code == 0, out
    from engine.profile import Profile

    from engine.analysis import analyze
    from importers import open_model

    profile = Profile.load_json(tmp_path / "profile.json")
    analysis = analyze(open_model(path))
    compute = {node_id for node_id, metrics in analysis.nodes.items() if not metrics.is_constant}
    assert len(compute) > len(every_node) - 4  # only the mask's Shape -> Gather -> Cast is constant
    assert compute <= set(profile.nodes)
    assert all(profile.nodes[node].kind == "measured" for node in compute)
    # layers 1..3 repeat the same ops (layer 0 has no residual sum before its first norm)
    [line] = [line for line in out.splitlines() if line.startswith("repeated blocks:")]
    assert line.startswith("repeated blocks: model/layers.* x 3 (") and "the median block" in line and "measured" in line


def test_genai_attention_mask_chain_is_refused_without_the_option(tmp_path, capsys):
    path = _write(tmp_path, "microsoft")
    reasons = [blocker.reason for blocker in check_convertible(path, target="iOS18")]
    assert sum(GQA_REFUSAL in reason for reason in reasons) == SMALL.layers
    code = main(["convert", str(path), "-o", str(tmp_path / "m.mlpackage"), "--target", "iOS18", "-q"])
    assert code != 0
    assert GQA_REFUSAL in capsys.readouterr().err
    assert not (tmp_path / "m.mlpackage").exists()


def test_assumed_full_attention_mask_folds_the_chain_and_is_recorded(tmp_path):
    path = _write(tmp_path, "microsoft")
    assert check_convertible(path, target="iOS18", assume_full_attention_mask=True) == []
    result = convert(path, tmp_path / "m.mlpackage", precision="fp32", target="iOS18",
                     assume_full_attention_mask=True)
    assert result.verified, result.outcomes()
    [assumption] = result.layer_map["assumptions"]
    assert (assumption["input"], assumption["value"], assumption["shape"]) == ("attention_mask", "all ones",
                                                                               [1, SMALL.past + SMALL.sequence])
    assert "no padding" in assumption["meaning"]
    chain = "/model/attn_mask_reformat/attn_mask_subgraph/"
    assert assumption["folded_nodes"] == [chain + op for op in ("ReduceSum", "Sub", "Cast", "Shape", "Gather", "Cast_1")]
    assert set(assumption["folded_nodes"]) <= set(result.layer_map["folded"])
    assert result.layer_map["options"]["assume_full_attention_mask"] == "attention_mask"
    assert "attention_mask" not in result.layer_map["inputs"]  # the program takes no mask
    [line] = result.assumption_lines()
    assert line.startswith("assumed input 'attention_mask' all ones 1x8: every row of the batch attends")


def test_the_option_names_what_it_cannot_assume(tmp_path):
    path = _write(tmp_path, "opset23")  # no attention_mask input
    [blocker] = check_convertible(path, target="iOS18", assume_full_attention_mask=True)
    assert blocker.op_type == "(option)"
    assert blocker.reason.startswith("--assume-full-attention-mask: the model has no input 'attention_mask' "
                                     "(its inputs: input_ids, position_ids, past_key_values.0.key")
    # a free mask length needs its size
    model = flavour_model(SMALL, "microsoft")
    model.graph.input[1].type.tensor_type.shape.dim[1].dim_param = "total_sequence_length"
    onnx.save(model, str(tmp_path / "free.onnx"))
    first, *others = check_convertible(tmp_path / "free.onnx", target="iOS18", assume_full_attention_mask=True)
    assert (first.op_type, first.reason) == ("(option)", "--assume-full-attention-mask: input 'attention_mask' has "
                                                         "free sizes; give them with --shape attention_mask=1xTOTAL "
                                                         "(past + new tokens)")
    assert any(GQA_REFUSAL in blocker.reason for blocker in others)  # not assumed: refused as without the option
    assert check_convertible(tmp_path / "free.onnx", target="iOS18", assume_full_attention_mask=True,
                             input_shapes={"attention_mask": [1, 8]}) == []


@pytest.mark.parametrize("magnitude", [0.01, 300.0])
@pytest.mark.parametrize("precision", ["fp32", "fp16"])
def test_rms_norm_adds_onnx_s_epsilon_at_any_activation_magnitude(magnitude, precision, tmp_path):
    # the max-abs scaling keeps x^2 finite in fp16; epsilon must be scaled with it, else it weighs
    # max|x|^2 times ONNX's (a relative error of ~eps / (2 mean(x^2)): 5e-2 here at magnitude 0.01)
    from onnx import TensorProto, helper, numpy_helper

    gamma = numpy_helper.from_array(np.linspace(0.5, 1.5, 32).astype(np.float32), "gamma")
    scale = numpy_helper.from_array(np.array(magnitude, np.float32), "magnitude")
    nodes = [helper.make_node("Mul", ["x", "magnitude"], ["scaled"], name="scale"),
             helper.make_node("RMSNormalization", ["scaled", "gamma"], ["y"], name="norm", epsilon=1e-5)]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 5, 32])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 5, 32])], [gamma, scale])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 23)])
    model.ir_version = 10
    onnx.save(model, str(tmp_path / "norm.onnx"))
    result = convert(tmp_path / "norm.onnx", tmp_path / "norm.mlpackage", precision=precision, target="iOS18")
    values = result.verification["values"]
    assert values["status"] == "passed", values["detail"]
    worst = max(e["max_rel_error"] for e in values["outputs"].values())
    assert worst < (1e-5 if precision == "fp32" else 5e-3), worst
