"""ONNX Runtime contrib ops (com.microsoft, as onnxruntime-genai's model builder emits them)
converted to Core ML and verified by value (issue 17).

Each case is a small ONNX model built with onnx.helper around the op; it must convert and
pass the `values` check: the saved ML Program run on the MIL reference evaluator against ONNX
Runtime's CPU kernels for these ops, every tensor, fp32.  Refusals are checked for their reason.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from engine.convert import check_convertible, convert

F32 = TensorProto.FLOAT
MS = "com.microsoft"
RNG = np.random.default_rng(170)


def _const(name: str, array) -> onnx.TensorProto:
    return numpy_helper.from_array(np.asarray(array), name)


def _x(name: str, shape, dtype=F32):
    return helper.make_tensor_value_info(name, dtype, None if shape is None else list(shape))


def _weights(name: str, *shape, scale: float = 0.3):
    return _const(name, (RNG.standard_normal(shape) * scale).astype(np.float32))


def _model(path: Path, nodes, inputs, outputs, inits=(), opset: int = 17) -> Path:
    graph = helper.make_graph(nodes, "case", inputs, outputs, list(inits))
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset), helper.make_opsetid(MS, 1)])
    model.ir_version = 10 if opset >= 21 else 8
    onnx.save(model, str(path))
    return path


def _rotary_tables(rows: int, half: int):
    angles = np.arange(rows)[:, None] * (10000.0 ** (-np.arange(half) / half))[None, :]
    return _const("cos_cache", np.cos(angles).astype(np.float32)), _const("sin_cache", np.sin(angles).astype(np.float32))


def _sequence_lengths(batch: int, total: int):
    return [_const("seqlens_k", np.full(batch, total - 1, np.int32)), _const("total_len", np.array(total, np.int32))]


# ----------------------------------------------------------------------------- norms

def simplified_layer_norm(path):
    # the default domain (where ONNX Runtime registers it); epsilon left at its default
    return _model(path, [helper.make_node("SimplifiedLayerNormalization", ["x", "scale"], ["y"], name="norm")],
                  [_x("x", [1, 4, 16])], [_x("y", [1, 4, 16])], [_weights("scale", 16)])


def skip_simplified_layer_norm(path):
    # bias given, the residual sum (output 3) used downstream, epsilon left at its default (1e-12)
    nodes = [helper.make_node("SkipSimplifiedLayerNormalization", ["x", "skip", "gamma", "bias"],
                              ["y", "", "", "sum"], name="norm", domain=MS),
             helper.make_node("Mul", ["sum", "y"], ["z"], name="use_sum")]
    return _model(path, nodes, [_x("x", [2, 3, 16]), _x("skip", [2, 3, 16])], [_x("z", None)],
                  [_weights("gamma", 16), _weights("bias", 16)])


def skip_layer_norm(path):
    nodes = [helper.make_node("SkipLayerNormalization", ["x", "skip", "gamma", "beta", "bias"], ["y", "", "", "sum"],
                              name="norm", domain=MS, epsilon=1e-5),
             helper.make_node("Add", ["sum", "y"], ["z"], name="use_sum")]
    return _model(path, nodes, [_x("x", [1, 5, 8]), _x("skip", [1, 5, 8])], [_x("z", None)],
                  [_weights("gamma", 8), _weights("beta", 8), _weights("bias", 8)])


# ----------------------------------------------------------------------------- rotary embedding

def rotary_3d_runtime_positions(path):
    # [B, S, hidden] split into 4 heads of 8; positions a run-time input (integers 0/1 in the check)
    cos, sin = _rotary_tables(16, 4)
    node = helper.make_node("RotaryEmbedding", ["x", "positions", "cos_cache", "sin_cache"], ["y"], name="rope",
                            domain=MS, num_heads=4)
    return _model(path, [node], [_x("x", [2, 3, 32]), _x("positions", [2, 3], TensorProto.INT64)],
                  [_x("y", [2, 3, 32])], [cos, sin])


def rotary_4d_interleaved_partial(path):
    # [B, N, S, H] with H=16, only the first 8 dimensions rotated, in interleaved pairs; start position 5
    cos, sin = _rotary_tables(16, 4)
    node = helper.make_node("RotaryEmbedding", ["x", "start", "cos_cache", "sin_cache"], ["y"], name="rope",
                            domain=MS, interleaved=1, rotary_embedding_dim=8, num_heads=2)
    return _model(path, [node], [_x("x", [1, 2, 3, 16])], [_x("y", [1, 2, 3, 16])],
                  [cos, sin, _const("start", np.array([5], np.int64))])


def rotary_opset23(path):
    # the standard op (opset 23): other input order (x, cos, sin, position_ids); same name as the contrib op
    cos, sin = _rotary_tables(16, 4)
    node = helper.make_node("RotaryEmbedding", ["x", "cos_cache", "sin_cache", "positions"], ["y"], name="rope",
                            num_heads=2)
    return _model(path, [node], [_x("x", [1, 3, 16]), _x("positions", [1, 3], TensorProto.INT64)],
                  [_x("y", [1, 3, 16])], [cos, sin], opset=23)


# ----------------------------------------------------------------------------- attention

def _gqa(path, *, sequence: int, past: int, packed: bool = False, inputs_extra=(), inits_extra=(), size: int = 8,
         **attributes):
    batch, heads, kv_heads = 1, 4, 2
    total = past + sequence
    names = ["q", "" if packed else "k", "" if packed else "v", "past_k" if past else "", "past_v" if past else "",
             "seqlens_k", "total_len"]
    extra_names = [name for name, _ in inputs_extra]
    node = helper.make_node("GroupQueryAttention", names + extra_names, ["y", "present_k", "present_v"], name="gqa",
                            domain=MS, num_heads=heads, kv_num_heads=kv_heads, **attributes)
    width = (heads + 2 * kv_heads) * size if packed else heads * size
    inputs = [_x("q", [batch, sequence, width])]
    if not packed:
        inputs += [_x("k", [batch, sequence, kv_heads * size]), _x("v", [batch, sequence, kv_heads * size])]
    if past:
        inputs += [_x("past_k", [batch, kv_heads, past, size]), _x("past_v", [batch, kv_heads, past, size])]
    outputs = [_x("y", None), _x("present_k", None), _x("present_v", None)]
    inits = _sequence_lengths(batch, total) + list(inits_extra)
    return _model(path, [node], inputs + [spec for _, spec in inputs_extra if spec is not None], outputs, inits)


def gqa_prompt(path):
    return _gqa(path, sequence=5, past=0)


def gqa_with_past(path):
    return _gqa(path, sequence=2, past=3)


def gqa_window_softcap_scale_bias(path):
    bias = [("bias", _x("bias", [1, 1, 4, 7]))]
    return _gqa(path, sequence=4, past=3, inputs_extra=[("", None)] * 3 + bias, local_window_size=2, softcap=3.0,
                scale=0.2)


def gqa_packed_rotary(path):
    # ONNX Runtime's kernel rotates heads of a multiple of 16 only
    cos, sin = _rotary_tables(16, 8)
    return _gqa(path, sequence=3, past=2, packed=True, size=16, inputs_extra=[("cos_cache", None), ("sin_cache", None)],
                inits_extra=[cos, sin], do_rotary=1)


def multi_head_attention(path):
    heads, size, past, sequence = 2, 4, 3, 2
    hidden = heads * size
    node = helper.make_node("MultiHeadAttention", ["q", "k", "v", "bias", "", "attn_bias", "past_k", "past_v"],
                            ["y", "present_k", "present_v"], name="mha", domain=MS, num_heads=heads, unidirectional=1)
    inputs = [_x("q", [1, sequence, hidden]), _x("k", [1, sequence, hidden]), _x("v", [1, sequence, hidden]),
              _x("attn_bias", [1, heads, sequence, past + sequence]),
              _x("past_k", [1, heads, past, size]), _x("past_v", [1, heads, past, size])]
    return _model(path, [node], inputs, [_x("y", None), _x("present_k", None), _x("present_v", None)],
                  [_weights("bias", 3 * hidden)])


# ----------------------------------------------------------------------------- MatMulNBits

def _quantized(n: int, k: int, bits: int, block: int):
    """(packed B, scales, packed zero points, unpacked quantized values) as ONNX Runtime stores them."""
    levels = 1 << bits
    values = RNG.integers(0, levels, size=(n, k)).astype(np.uint8)
    per_byte = 8 // bits

    def pack(array):
        array = array.reshape(array.shape[0], -1, per_byte)
        return np.bitwise_or.reduce(array << (np.arange(per_byte) * bits).astype(np.uint8), axis=-1).astype(np.uint8)

    blocks = k // block
    packed = pack(values).reshape(n, blocks, block * bits // 8)
    scales = (RNG.random((n, blocks)) * 0.05 + 0.01).astype(np.float32)
    zero_points = RNG.integers(0, levels, size=(n, blocks)).astype(np.uint8)
    padded = np.zeros((n, -(-blocks // per_byte) * per_byte), np.uint8)
    padded[:, :blocks] = zero_points
    return packed, scales, pack(padded), zero_points


def _matmul_nbits(path, bits: int, zero_points: str, bias: bool):
    n, k, block = 12, 64, 16
    packed, scales, packed_zero_points, zero_point_values = _quantized(n, k, bits, block)
    names, inits = ["a", "b", "scales"], [_const("b", packed), _const("scales", scales)]
    if zero_points == "packed":
        names.append("zp")
        inits.append(_const("zp", packed_zero_points))
    elif zero_points == "float":
        names.append("zp")
        inits.append(_const("zp", zero_point_values.astype(np.float32)))
    if bias:
        names += [""] * (5 - len(names)) + ["bias"]
        inits.append(_weights("bias", n))
    node = helper.make_node("MatMulNBits", names, ["y"], name="qlinear", domain=MS, K=k, N=n, bits=bits,
                            block_size=block)
    return _model(path, [node], [_x("a", [1, 3, k])], [_x("y", [1, 3, n])], inits)


def matmul_4bits_zero_points_bias(path):
    return _matmul_nbits(path, 4, "packed", True)


def matmul_8bits_default_zero_point(path):
    return _matmul_nbits(path, 8, "none", False)


def matmul_4bits_float_zero_points(path):
    return _matmul_nbits(path, 4, "float", False)


def matmul_2bits(path):
    return _matmul_nbits(path, 2, "packed", False)


CASES = [simplified_layer_norm, skip_simplified_layer_norm, skip_layer_norm, rotary_3d_runtime_positions,
         rotary_4d_interleaved_partial, rotary_opset23, gqa_prompt, gqa_with_past, gqa_window_softcap_scale_bias,
         gqa_packed_rotary, multi_head_attention, matmul_4bits_zero_points_bias, matmul_8bits_default_zero_point,
         matmul_4bits_float_zero_points, matmul_2bits]


# Translations that store constants derived from the node's (rotary rows gathered at constant
# positions, the input bias split per q/k/v, 2/4/8-bit weights unpacked into a constexpr op): the
# weights check recomputes each derived form from the source constants and compares by value,
# the parameters and weight_bytes checks expect the derived form's size and say why.
DERIVED_WEIGHTS = {rotary_4d_interleaved_partial: "cos_cache rows at the constant positions",
                   gqa_packed_rotary: "cos_cache rows 2..4",
                   multi_head_attention: "bias q part",
                   matmul_4bits_zero_points_bias: "4-bit weight expanded from its bits, scales and zero points",
                   matmul_8bits_default_zero_point: "8-bit weight expanded from its bits, scales and zero points",
                   matmul_4bits_float_zero_points: "4-bit weight expanded from its bits, scales and zero points",
                   matmul_2bits: "2-bit weight expanded from its bits, scales and zero points"}


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.__name__)
def test_contrib_op_converts_and_matches_onnx_runtime_by_value(case, tmp_path):
    source = case(tmp_path / f"{case.__name__}.onnx")
    assert check_convertible(source, target="iOS18") == []
    result = convert(source, tmp_path / "out.mlpackage", precision="fp32", target="iOS18")
    values = result.verification["values"]
    assert values["status"] == "passed", values["detail"]
    assert "ONNX Runtime" in values["detail"]
    assert result.verification["shapes"]["status"] == "passed"
    assert result.verification["compute_layers"]["status"] == "passed"
    assert result.verified, result.outcomes()
    checks = result.verification
    if case in DERIVED_WEIGHTS:
        # the derived form was compared by value, and the counts name it as the explained difference
        assert DERIVED_WEIGHTS[case] in checks["weights"]["detail"]
        assert DERIVED_WEIGHTS[case] in checks["parameters"]["detail"]
        assert checks["parameters"]["package"] == checks["parameters"]["expected"]
        assert checks["weight_bytes"]["status"] == "passed", checks["weight_bytes"]["detail"]


def test_a_derived_weight_that_departs_from_its_source_fails_the_weights_check(tmp_path):
    # the package's derived form is compared with the one recomputed from the source: change the
    # source's scales after converting, and the stored expansion no longer equals it
    from engine.convert.source import load_source
    from engine.convert.mil_reference import load_program
    from engine.convert.values import weights_check

    path = matmul_4bits_zero_points_bias(tmp_path / "q.onnx")
    result = convert(path, tmp_path / "q.mlpackage", precision="fp32", target="iOS18")
    assert result.verification["weights"]["status"] == "passed"
    model = onnx.load(str(path))
    scales = next(t for t in model.graph.initializer if t.name == "scales")
    scales.CopyFrom(_const("scales", numpy_helper.to_array(scales) * 1.01))
    onnx.save(model, str(path))
    check = weights_check(load_program(result.package_path), result.layer_map, load_source(path, {}), "exact")
    assert check["status"] == "failed"
    assert "qlinear (MatMulNBits)" in check["detail"] and "not in the package: qlinear (MatMulNBits): input 2" \
        in check["detail"]


def test_a_constant_read_by_two_nodes_is_expected_once_per_node(tmp_path):
    # exact mode gives every reading node its own const: the counts expect the copies and say so
    nodes = [helper.make_node("MatMul", ["x", "w"], ["a"], name="first"),
             helper.make_node("MatMul", ["a", "w"], ["y"], name="second")]
    path = _model(tmp_path / "shared.onnx", nodes, [_x("x", [1, 12])], [_x("y", [1, 12])], [_weights("w", 12, 12)])
    for precision in ("fp32", "fp16"):
        result = convert(path, tmp_path / f"{precision}.mlpackage", precision=precision)
        parameters = result.verification["parameters"]
        assert result.verified, result.outcomes()
        assert (parameters["source"], parameters["package"], parameters["expected"]) == (144, 288, 288)
        assert "stored once per node in exact mode (w x2)" in parameters["detail"]


# ----------------------------------------------------------------------------- domains and refusals

def test_a_com_microsoft_op_is_not_taken_for_the_standard_op_of_the_same_name(tmp_path):
    # Relu exists in the default domain only: under com.microsoft it is a custom op, not ONNX's Relu
    path = _model(tmp_path / "custom.onnx", [helper.make_node("Relu", ["x"], ["y"], name="fake", domain=MS)],
                  [_x("x", [1, 4])], [_x("y", [1, 4])])
    [blocker] = check_convertible(path)
    assert (blocker.node_id, blocker.reason) == ("fake", "custom op of domain 'com.microsoft' has no Core ML translation")


def _reasons(path, **options) -> list[str]:
    return [blocker.reason for blocker in check_convertible(path, **options)]


def test_refusals_name_the_unsupported_attribute_or_input(tmp_path):
    # seqlens_k computed at run time (what onnxruntime-genai derives from attention_mask)
    node = helper.make_node("GroupQueryAttention", ["q", "k", "v", "", "", "seqlens", "total_len"], ["y"], name="gqa",
                            domain=MS, num_heads=2, kv_num_heads=2, smooth_softmax=1)
    path = _model(tmp_path / "gqa.onnx", [node], [_x("q", [1, 3, 16]), _x("k", [1, 3, 16]), _x("v", [1, 3, 16]),
                                                   _x("seqlens", [1], TensorProto.INT32)], [_x("y", None)],
                  [_const("total_len", np.array(3, np.int32))])
    reasons = _reasons(path)
    assert "smooth_softmax=1 is not supported" in reasons
    # the other checks need the attributes first; without smooth_softmax the lengths are checked
    node.attribute.pop()
    path = _model(tmp_path / "gqa2.onnx", [node], [_x("q", [1, 3, 16]), _x("k", [1, 3, 16]), _x("v", [1, 3, 16]),
                                                    _x("seqlens", [1], TensorProto.INT32)], [_x("y", None)],
                  [_const("total_len", np.array(3, np.int32))])
    assert _reasons(path) == ["seqlens_k (input 5) is computed at run time; Core ML needs it constant (here [2]: no "
                              "padded rows, past not a shared buffer)"]
    # 4-bit weights before iOS 18: named with the option that resolves it
    source = matmul_4bits_zero_points_bias(tmp_path / "nbits.onnx")
    assert _reasons(source, target="iOS17") == [
        "4-bit/8-bit block-wise weights need constexpr_blockwise_shift_scale (iOS 18): convert with --target "
        "iOS18 (the target is iOS17)"]
    # a padded last block
    node = helper.make_node("MatMulNBits", ["a", "b", "scales"], ["y"], name="q", domain=MS, K=40, N=4, bits=4,
                            block_size=16)
    path = _model(tmp_path / "padded.onnx", [node], [_x("a", [1, 40])], [_x("y", None)],
                  [_const("b", np.zeros((4, 3, 8), np.uint8)), _const("scales", np.ones((4, 3), np.float32))])
    assert any("K=40 is not a multiple of block_size=16" in r for r in _reasons(path, target="iOS18"))


def test_shapes_after_contrib_ops_are_known_for_the_checks_that_follow(tmp_path):
    # ONNX shape inference knows no contrib op: without the stand-ins, the Reshape after the GQA
    # (which needs its input's static shape) would be refused as "not known statically"
    path = _gqa(tmp_path / "g.onnx", sequence=2, past=3)
    model = onnx.load(str(path))
    model.graph.node.append(helper.make_node("Reshape", ["y", "flat"], ["flat_y"], name="flatten"))
    model.graph.initializer.append(_const("flat", np.array([0, -1], np.int64)))
    model.graph.output.append(_x("flat_y", None))
    onnx.save(model, str(path))
    assert check_convertible(path, target="iOS18") == []
    result = convert(path, tmp_path / "g.mlpackage", precision="fp32", target="iOS18")
    assert result.verified, result.failed_checks


# ----------------------------------------------------------------------------- a com.microsoft transformer block

def contrib_decoder_block(path: Path, sequence: int = 3, past: int = 4) -> Path:
    """One decoder block as onnxruntime-genai's model builder writes it: SimplifiedLayerNormalization ->
    q/k/v MatMul -> RotaryEmbedding (q, k; caches shared) -> GroupQueryAttention with the past KV as
    inputs -> o MatMul -> SkipSimplifiedLayerNormalization -> SiLU MLP -> residual Add."""
    hidden, heads, kv_heads, size, inner = 32, 4, 2, 8, 64
    cos, sin = _rotary_tables(32, size // 2)
    nodes = [
        helper.make_node("SimplifiedLayerNormalization", ["x", "ln1"], ["h"], name="/layers.0/input_layernorm",
                         epsilon=1e-6),
        helper.make_node("MatMul", ["h", "wq"], ["q0"], name="/layers.0/attn/q_proj/MatMul"),
        helper.make_node("MatMul", ["h", "wk"], ["k0"], name="/layers.0/attn/k_proj/MatMul"),
        helper.make_node("MatMul", ["h", "wv"], ["v"], name="/layers.0/attn/v_proj/MatMul"),
        helper.make_node("RotaryEmbedding", ["q0", "position_ids", "cos_cache", "sin_cache"], ["q"],
                         name="/layers.0/attn/q_rotary", domain=MS, num_heads=heads),
        helper.make_node("RotaryEmbedding", ["k0", "position_ids", "cos_cache", "sin_cache"], ["k"],
                         name="/layers.0/attn/k_rotary", domain=MS, num_heads=kv_heads),
        helper.make_node("GroupQueryAttention", ["q", "k", "v", "past_key", "past_value", "seqlens_k", "total_len"],
                         ["attn", "present_key", "present_value"], name="/layers.0/attn/GroupQueryAttention",
                         domain=MS, num_heads=heads, kv_num_heads=kv_heads),
        helper.make_node("MatMul", ["attn", "wo"], ["o"], name="/layers.0/attn/o_proj/MatMul"),
        helper.make_node("SkipSimplifiedLayerNormalization", ["o", "x", "ln2"], ["h2", "", "", "residual"],
                         name="/layers.0/post_attention_layernorm", domain=MS, epsilon=1e-6),
        helper.make_node("MatMul", ["h2", "wg"], ["gate"], name="/layers.0/mlp/gate_proj/MatMul"),
        helper.make_node("MatMul", ["h2", "wu"], ["up"], name="/layers.0/mlp/up_proj/MatMul"),
        helper.make_node("Sigmoid", ["gate"], ["gate_sigmoid"], name="/layers.0/mlp/act_fn/Sigmoid"),
        helper.make_node("Mul", ["gate", "gate_sigmoid"], ["silu"], name="/layers.0/mlp/act_fn/Mul"),
        helper.make_node("Mul", ["silu", "up"], ["gated"], name="/layers.0/mlp/Mul"),
        helper.make_node("MatMul", ["gated", "wd"], ["down"], name="/layers.0/mlp/down_proj/MatMul"),
        helper.make_node("Add", ["residual", "down"], ["y"], name="/layers.0/Add"),
    ]
    inputs = [_x("x", [1, sequence, hidden]), _x("position_ids", [1, sequence], TensorProto.INT64),
              _x("past_key", [1, kv_heads, past, size]), _x("past_value", [1, kv_heads, past, size])]
    outputs = [_x("y", [1, sequence, hidden]), _x("present_key", None), _x("present_value", None)]
    inits = [_weights("ln1", hidden, scale=1.0), _weights("ln2", hidden, scale=1.0),
             _weights("wq", hidden, heads * size), _weights("wk", hidden, kv_heads * size),
             _weights("wv", hidden, kv_heads * size), _weights("wo", heads * size, hidden),
             _weights("wg", hidden, inner), _weights("wu", hidden, inner), _weights("wd", inner, hidden),
             cos, sin] + _sequence_lengths(1, past + sequence)
    return _model(path, nodes, inputs, outputs, inits)


def test_contrib_decoder_block_converts_verifies_by_value_and_profiles(tmp_path):
    from engine.targets.cpu import CpuTarget
    from engine.targets.settings import ProfileSettings

    path = contrib_decoder_block(tmp_path / "block.onnx")
    result = convert(path, tmp_path / "block.mlpackage", precision="fp32", target="iOS18")
    values = result.verification["values"]
    assert values["status"] == "passed", values["detail"]
    assert result.verification["shapes"]["status"] == "passed"
    assert result.verification["compute_layers"]["status"] == "passed"  # 7 MatMul + 2 in the attention
    # the rotary caches are read by two nodes: stored once per node in exact mode, which the
    # parameter count expects and names
    assert result.verified, result.outcomes()
    assert "(cos_cache x2, sin_cache x2)" in result.verification["parameters"]["detail"]
    every_node = {node.name for node in onnx.load(str(path)).graph.node}
    # SiLU's Sigmoid becomes part of the Mul's silu op (coremltools' pass; listed as removed)
    assert set(result.layer_map["nodes"]) | set(result.layer_map["removed"]) == every_node
    # ... the difference is the second copy of the shared cos/sin caches (32 x 4 each)
    assert result.verification["parameters"]["package"] - result.verification["parameters"]["source"] == 2 * 32 * 4
    with CpuTarget() as target:  # the CPU reference (ONNX Runtime) runs the contrib kernels itself
        profile = target.profile(ProfileSettings(runs=2, warmup=1, threads=1), model_path=str(path))
    assert every_node <= set(profile.nodes)
    assert all(profile.nodes[node_id].kind == "measured" for node_id in every_node)
