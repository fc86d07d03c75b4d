"""ONNX Attention, GatherElements, GatherND and the KV cache as Core ML state (issue 17).

Every conversion here runs the value check: the saved ML Program on the MIL reference evaluator
against ONNX Runtime, every tensor (engine/convert/values.py).  The Attention cases are the onnx
package's own node tests (`collect_testcases`, float32 inputs) plus models built here for what
those do not cover (boolean and short masks, computed masks, negative gather indices, the cache
as state).
"""
from __future__ import annotations

import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from engine.convert import ConversionError, check_convertible, convert
from engine.convert.mil_reference import evaluate, load_program

ROOT = Path(__file__).resolve().parents[2]
F32 = TensorProto.FLOAT
RNG = np.random.default_rng(23)


def _node_tests(*op_types: str, float32_only: bool = True):
    from onnx.backend.test.case.node import collect_testcases

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        cases = collect_testcases()
    return [case for case in cases if case.model is not None and case.model.graph.node[0].op_type in op_types
            and (not float32_only or all(i.type.tensor_type.elem_type == F32 for i in case.model.graph.input))]


ATTENTION_CASES = _node_tests("Attention")
GATHER_CASES = _node_tests("GatherElements", "GatherND", float32_only=False)
# Opset 25's sliding windows: refused with this reason (ONNX Runtime 1.31 cannot run them either).
WINDOW_REFUSALS = {"test_attention_local_window", "test_attention_bidirectional_window",
                   "test_attention_local_window_with_past", "test_attention_3d_local_window"}


def _save_case(case, folder: Path) -> tuple[Path, dict]:
    path = folder / f"{case.name}.onnx"
    onnx.save(case.model, str(path))
    shapes = {i.name: list(v.shape) for i, v in zip(case.model.graph.input, case.data_sets[0][0])}
    return path, shapes


def _op_types(package: Path) -> list[str]:
    return [o.op_type for o in load_program(package).functions["main"].operations if o.op_type != "const"]


def _model(path: Path, nodes, inputs, outputs, inits=(), opset: int = 23) -> Path:
    graph = helper.make_graph(nodes, "case", inputs, outputs, list(inits))
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 10
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return path


def _x(name: str, shape, dtype=F32):
    return helper.make_tensor_value_info(name, dtype, list(shape))


# ----------------------------------------------------------------------------- the node tests

def test_the_corpus_has_the_attention_cases_this_file_expects():
    assert len(ATTENTION_CASES) == 65
    assert WINDOW_REFUSALS <= {case.name for case in ATTENTION_CASES}


@pytest.mark.parametrize("case", ATTENTION_CASES, ids=lambda case: case.name)
def test_attention_node_test_converts_and_matches_onnx_runtime(case, tmp_path):
    path, shapes = _save_case(case, tmp_path)
    if case.name in WINDOW_REFUSALS:
        with pytest.raises(ConversionError, match="sliding-window attention"):
            convert(path, tmp_path / "out.mlpackage", precision="fp32", target="iOS18", input_shapes=shapes)
        return
    result = convert(path, tmp_path / "out.mlpackage", precision="fp32", target="iOS18", input_shapes=shapes)
    values = result.verification["values"]
    if case.name == "test_attention_local_window_default":
        # window sizes of -1 (no window) are accepted; ONNX Runtime 1.31 refuses the opset-25 attributes
        assert values["status"] == "not run" and "left_window_size" in values["detail"]
        return
    assert values["status"] == "passed", values["detail"]
    assert result.verified, result.failed_checks


FUSED = ["test_attention_4d", "test_attention_4d_attn_mask_4d_causal", "test_attention_3d_causal",
         "test_attention_4d_with_past_and_present"]
DECOMPOSED = ["test_attention_4d_gqa", "test_attention_3d_scaled", "test_attention_4d_softcap",
              "test_attention_4d_with_qk_matmul_softmax"]


@pytest.mark.parametrize("name", FUSED + DECOMPOSED)
def test_ios18_uses_the_fused_op_where_it_fits_and_older_targets_decompose(name, tmp_path):
    case = next(case for case in ATTENTION_CASES if case.name == name)
    path, shapes = _save_case(case, tmp_path)
    ios18 = convert(path, tmp_path / "ios18.mlpackage", precision="fp32", target="iOS18", input_shapes=shapes)
    ios16 = convert(path, tmp_path / "ios16.mlpackage", precision="fp16", target="iOS16", input_shapes=shapes)
    for result in (ios18, ios16):
        assert result.verification["values"]["status"] == "passed", result.verification["values"]["detail"]
    assert ("scaled_dot_product_attention" in _op_types(ios18.package_path)) == (name in FUSED)
    decomposed = _op_types(ios16.package_path)
    assert "scaled_dot_product_attention" not in decomposed and "softmax" in decomposed


# ----------------------------------------------------------------------------- own Attention models

def gqa_causal_computed_bool_mask(path):
    """3-D GQA with past, causal, a boolean mask computed at run time (Greater)."""
    nodes = [helper.make_node("Greater", ["mask_scores", "zero"], ["mask"], name="mask"),
             helper.make_node("Attention", ["q", "k", "v", "mask", "past_key", "past_value"],
                              ["y", "present_key", "present_value"], name="attn", is_causal=1,
                              q_num_heads=4, kv_num_heads=2)]
    return _model(path, nodes, [_x("q", [1, 3, 32]), _x("k", [1, 3, 16]), _x("v", [1, 3, 12]),
                                _x("mask_scores", [3, 7]), _x("past_key", [1, 2, 4, 8]), _x("past_value", [1, 2, 4, 6])],
                  [_x("y", [1, 3, 24]), _x("present_key", [1, 2, 7, 8]), _x("present_value", [1, 2, 7, 6])],
                  [numpy_helper.from_array(np.float32(0.0), "zero")])


def constant_bool_mask_fused(path):
    """A constant boolean mask with rows half masked: the fused op takes it as a bool mask."""
    keep = RNG.random((4, 6)) > 0.4
    keep[:, 0] = True
    return _model(path, [helper.make_node("Attention", ["q", "k", "v", "keep"], ["y"], name="attn")],
                  [_x("q", [2, 3, 4, 8]), _x("k", [2, 3, 6, 8]), _x("v", [2, 3, 6, 8])], [_x("y", [2, 3, 4, 8])],
                  [numpy_helper.from_array(keep, "keep")])


def float_mask_and_scale(path):
    """A constant float mask broadcast over batch and heads, and a non-default scale."""
    mask = RNG.standard_normal((4, 6)).astype(np.float32)
    return _model(path, [helper.make_node("Attention", ["q", "k", "v", "mask"], ["y"], name="attn", scale=0.3)],
                  [_x("q", [1, 2, 4, 8]), _x("k", [1, 2, 6, 8]), _x("v", [1, 2, 6, 8])], [_x("y", [1, 2, 4, 8])],
                  [numpy_helper.from_array(mask, "mask")])


def raw_scores_output_with_softcap(path):
    """qk_matmul_output mode 0 with a softcap: the raw Q K^T, before the softcap."""
    node = helper.make_node("Attention", ["q", "k", "v"], ["y", "", "", "qk"], name="attn", softcap=1.5,
                            qk_matmul_output_mode=0)
    return _model(path, [node], [_x("q", [1, 2, 3, 8]), _x("k", [1, 2, 5, 8]), _x("v", [1, 2, 5, 8])],
                  [_x("y", [1, 2, 3, 8]), _x("qk", [1, 2, 3, 5])])


OWN_ATTENTION = [gqa_causal_computed_bool_mask, constant_bool_mask_fused, float_mask_and_scale,
                 raw_scores_output_with_softcap]


@pytest.mark.parametrize("precision", ["fp32", "fp16"])
@pytest.mark.parametrize("case", OWN_ATTENTION, ids=lambda c: c.__name__)
def test_own_attention_models_match_onnx_runtime(case, precision, tmp_path):
    source = case(tmp_path / f"{case.__name__}.onnx")
    result = convert(source, tmp_path / "out.mlpackage", precision=precision, target="iOS18")
    assert result.verification["values"]["status"] == "passed", result.verification["values"]["detail"]
    assert result.verified, result.failed_checks
    if case is constant_bool_mask_fused:
        assert "scaled_dot_product_attention" in _op_types(result.package_path)


def test_attention_refusals_name_the_reason(tmp_path):
    nodes = [helper.make_node("Attention", ["q", "k", "v"], ["y"], name="attn3d")]
    path = _model(tmp_path / "no_heads.onnx", nodes, [_x("q", [1, 3, 8]), _x("k", [1, 3, 8]), _x("v", [1, 3, 8])],
                  [_x("y", [1, 3, 8])])
    [blocker] = check_convertible(path)
    assert blocker.node_id == "attn3d" and "q_num_heads and kv_num_heads" in blocker.reason
    # a mask shorter than past + new keys: the ONNX reference pads it, ONNX Runtime refuses it
    nodes = [helper.make_node("Attention", ["q", "k", "v", "mask"], ["y"], name="short_mask")]
    path = _model(tmp_path / "short.onnx", nodes, [_x("q", [1, 2, 4, 8]), _x("k", [1, 2, 6, 8]),
                                                    _x("v", [1, 2, 6, 8]), _x("mask", [4, 4])], [_x("y", [1, 2, 4, 8])])
    [blocker] = check_convertible(path)
    assert blocker.node_id == "short_mask" and "does not broadcast to (1, 2, 4, 6)" in blocker.reason


# ----------------------------------------------------------------------------- gathers

@pytest.mark.parametrize("case", GATHER_CASES, ids=lambda case: case.name)
def test_gather_node_tests_convert_and_match(case, tmp_path):
    path, shapes = _save_case(case, tmp_path)
    result = convert(path, tmp_path / "out.mlpackage", precision="fp32", input_shapes=shapes)
    assert result.verification["values"]["status"] == "passed", result.verification["values"]["detail"]


def test_runtime_negative_gather_indices_count_from_the_end(tmp_path):
    # integer inputs get values 0 and 1 in the value check: minus 1 gives -1 and 0 at run time
    one = numpy_helper.from_array(np.array(1, np.int64), "one")
    nodes = [helper.make_node("Sub", ["raw_e", "one"], ["idx_e"], name="shift_e"),
             helper.make_node("GatherElements", ["data", "idx_e"], ["y_e"], name="gather_elements", axis=1),
             helper.make_node("Sub", ["raw_nd", "one"], ["idx_nd"], name="shift_nd"),
             helper.make_node("GatherND", ["data", "idx_nd"], ["y_nd"], name="gather_nd", batch_dims=1)]
    path = _model(tmp_path / "negative.onnx", nodes,
                  [_x("data", [2, 3, 4]), _x("raw_e", [2, 5, 4], TensorProto.INT64),
                   _x("raw_nd", [2, 6, 2], TensorProto.INT64)],
                  [_x("y_e", [2, 5, 4]), _x("y_nd", [2, 6])], [one], opset=17)
    result = convert(path, tmp_path / "out.mlpackage", precision="fp32")
    assert result.verification["values"]["status"] == "passed", result.verification["values"]["detail"]


# ----------------------------------------------------------------------------- KV cache as state

def attention_with_cache(path):
    nodes = [helper.make_node("Attention", ["q", "k", "v", "", "past_key", "past_value"],
                              ["y", "present_key", "present_value"], name="attn", is_causal=1)]
    return _model(path, nodes, [_x("q", [1, 2, 3, 8]), _x("k", [1, 2, 3, 8]), _x("v", [1, 2, 3, 8]),
                                _x("past_key", [1, 2, 5, 8]), _x("past_value", [1, 2, 5, 8])],
                  [_x("y", [1, 2, 3, 8]), _x("present_key", [1, 2, 8, 8]), _x("present_value", [1, 2, 8, 8])])


def legacy_concat_cache(path):
    """The legacy exporter's form: present = Concat(past, new) and a MatMul-softmax attention."""
    nodes = [helper.make_node("Concat", ["past_key_values.0.key", "k"], ["present.0.key"], name="cat_k", axis=2),
             helper.make_node("Concat", ["past_key_values.0.value", "v"], ["present.0.value"], name="cat_v", axis=2),
             helper.make_node("Transpose", ["present.0.key"], ["kt"], name="kt", perm=[0, 1, 3, 2]),
             helper.make_node("MatMul", ["q", "kt"], ["scores"], name="qk"),
             helper.make_node("Softmax", ["scores"], ["weights"], name="softmax", axis=-1),
             helper.make_node("MatMul", ["weights", "present.0.value"], ["y"], name="pv")]
    return _model(path, nodes, [_x("q", [1, 2, 1, 4]), _x("k", [1, 2, 1, 4]), _x("v", [1, 2, 1, 4]),
                                _x("past_key_values.0.key", [1, 2, 6, 4]), _x("past_key_values.0.value", [1, 2, 6, 4])],
                  [_x("y", [1, 2, 1, 4]), _x("present.0.key", [1, 2, 7, 4]), _x("present.0.value", [1, 2, 7, 4])],
                  opset=17)


@pytest.mark.parametrize("precision", ["fp32", "fp16"])
@pytest.mark.parametrize("case", [attention_with_cache, legacy_concat_cache], ids=lambda c: c.__name__)
def test_kv_cache_as_state_builds_saves_and_matches_onnx_runtime(case, precision, tmp_path):
    import coremltools as ct

    source = case(tmp_path / f"{case.__name__}.onnx")
    result = convert(source, tmp_path / "out.mlpackage", precision=precision, target="iOS18", kv_state=True)
    values = result.verification["values"]
    assert values["status"] == "passed", values["detail"]
    assert result.verified, result.failed_checks
    # the state after the call was compared with ONNX Runtime's present outputs
    assert len(values["states"]) == 2 and "KV cache states after the call" in values["detail"]
    spec = ct.models.MLModel(str(result.package_path), skip_model_load=True).get_spec()
    states = {s.name: list(s.type.stateType.arrayType.shape) for s in spec.description.state}
    inputs = {i.name for i in spec.description.input}
    outputs = {o.name for o in spec.description.output}
    assert len(states) == 2 and not any("past" in name for name in inputs) and outputs == {"y"}
    ops = _op_types(result.package_path)
    assert ops.count("read_state") == 2 and ops.count("coreml_update_state") == 2
    # Attention writes its new keys into the state's tensor in place; a Concat's result is written whole
    assert ops.count("slice_update") == (2 if case is attention_with_cache else 0)
    assert [entry["past_length"] for entry in result.layer_map["kv_state"]] == ([5, 5] if case is attention_with_cache
                                                                               else [6, 6])


def test_the_reference_evaluator_reads_and_writes_state(tmp_path):
    source = attention_with_cache(tmp_path / "cache.onnx")
    result = convert(source, tmp_path / "out.mlpackage", precision="fp32", target="iOS18", kv_state=True)
    program = load_program(result.package_path)
    before = {entry["state"]: np.zeros(entry["shape"], np.float16) for entry in result.layer_map["kv_state"]}
    k = RNG.standard_normal((1, 2, 3, 8)).astype(np.float32)
    feed = {"q": k, "k": k, "v": k}
    after = evaluate(program, feed, states=before)
    # the new keys land after the 5 past positions; the past positions keep what the state held
    np.testing.assert_allclose(after["present_key"][:, :, 5:], k.astype(np.float16))
    assert not after["present_key"][:, :, :5].any()
    with pytest.raises(KeyError, match="no value given for the program state"):
        evaluate(program, feed)


def test_kv_state_refusals_are_clear(tmp_path):
    source = attention_with_cache(tmp_path / "cache.onnx")
    with pytest.raises(ConversionError, match=r"1 problem: --kv-state \(option\): Core ML state needs an iOS 18"):
        convert(source, tmp_path / "out.mlpackage", target="iOS17", kv_state=True)
    plain = constant_bool_mask_fused(tmp_path / "plain.onnx")
    with pytest.raises(ConversionError, match="found no KV cache pair"):
        convert(plain, tmp_path / "out.mlpackage", target="iOS18", kv_state=True)
    assert not (tmp_path / "out.mlpackage").exists()


def test_cli_kv_state(tmp_path):
    source = attention_with_cache(tmp_path / "cache.onnx")
    run = subprocess.run([sys.executable, "-m", "engine", "convert", str(source), "-o", str(tmp_path / "c.mlpackage"),
                          "--target", "iOS18", "--precision", "fp32", "--kv-state", "-q"],
                         capture_output=True, text=True, cwd=ROOT, env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"},
                         timeout=300)
    assert run.returncode == 0, run.stderr
    assert "KV cache state 'present_key' 1x2x8x8 fp16: replaces input past_key (first 5 positions)" in run.stdout
    assert "values          passed" in run.stdout
