"""Value checks of a converted package, run on any OS: its weights and its numerics.

- weights: every weight tensor of the saved package (read back from the .mlpackage
  with coremltools' weight-storage reader) equals a constant input of its source node
  after the layout change the converter documents (`WEIGHT_SOURCES`; any reshape, Gemm's
  B transposed unless transB and scaled by alpha, C scaled by beta), within half an fp16
  step when stored as fp16 (1e-6 relative as fp32); and every weight of a converted
  source node is found in the package.  Where a translation stores a constant in another form
  (`derived_forms`: rows of rotary cos/sin caches at constant positions, MultiHeadAttention's
  bias split per q/k/v, MatMulNBits' bits unpacked into constexpr_blockwise_shift_scale), the
  check recomputes that form from the source constants itself and compares the package's
  weight with it (a constexpr op's weight is compared as the tensor it expands to).
- values: the saved program runs on the MIL reference evaluator (mil_reference.py, which
  takes op meanings from coremltools' op definitions and the MIL spec, not from our
  translation) and ONNX Runtime runs the source on the same seeded inputs; every graph
  output and every intermediate the layer map ties to an ONNX tensor is compared: max
  absolute error and max error relative to the tensor's largest magnitude, per tensor,
  and the first source node (in execution order) whose result departs.

Both say "not run" (never "passed") when they could not run, and why.
"""
from __future__ import annotations

from collections import Counter
from typing import Mapping, Optional

import numpy as np

PASSED, FAILED, NOT_RUN = "passed", "failed", "not run"

# Largest error, relative to a tensor's largest magnitude, that still counts as equal.
# fp32: float32 arithmetic in a different order than ONNX Runtime's (measured here: at most
# ~3e-6 on the samples and the light zoo, docs/conversion.md).  fp16: every op's result rounded
# to fp16 (a relative step of 2^-11 ~ 4.9e-4) and that rounding carried through the network
# (measured: up to ~1e-2 on the deepest light-zoo models).
TOLERANCE = {"fp32": 1e-4, "fp16": 5e-2}

# Which ONNX input a MIL op's weight comes from, where the op has more than one candidate
# (ONNX node type, MIL op type, MIL parameter) -> ONNX input index.  Elsewhere a weight
# must equal one of its node's constant inputs.
WEIGHT_SOURCES = {
    ("Conv", "conv", "weight"): 1, ("Conv", "conv", "bias"): 2,
    ("ConvTranspose", "conv_transpose", "weight"): 1, ("ConvTranspose", "conv_transpose", "bias"): 2,
    ("ConvTranspose", "add", "y"): 2,
    ("BatchNormalization", "batch_norm", "gamma"): 1, ("BatchNormalization", "batch_norm", "beta"): 2,
    ("BatchNormalization", "batch_norm", "mean"): 3, ("BatchNormalization", "batch_norm", "variance"): 4,
    ("Gemm", "linear", "weight"): 1, ("Gemm", "linear", "bias"): 2, ("Gemm", "matmul", "y"): 1,
    ("Gemm", "add", "y"): 2,
}

FP16_MAX = 65504.0
_CHUNK = 1 << 22  # elements compared at a time: VGG-19's first classifier weight has 102 M


def _check(status: str, detail: str, **numbers) -> dict:
    return {"status": status, "detail": detail, **numbers}


# ----------------------------------------------------------------------------- weights

def package_weights(program, layer_map: Mapping) -> list[tuple[str, str, str, str, np.ndarray]]:
    """(MIL op, its type, parameter, source node id, value) of every float weight of more than
    one element that an op with a source node reads (scalars are op arguments).  A weight made
    by a constexpr op (decompressed when Core ML loads the model) is the tensor it expands to,
    computed by the MIL reference evaluator from the op's stored inputs."""
    ops = layer_map.get("mil_ops", {})
    weights = []
    for op in program.functions["main"].operations:
        if op.op_type == "const" or op.op_type.startswith("constexpr_"):
            continue
        source = ops.get(op.name, {}).get("source")
        if source is None:
            continue
        for parameter, given in op.inputs.items():
            for var in (given if isinstance(given, (list, tuple)) else (given,)):  # concat's values: a list
                if var is None or var.op is None:
                    continue
                if var.op.op_type.startswith("constexpr_"):
                    value = _expanded_constexpr(var.op)  # None: compared as "cannot expand", a departure
                    if value is None or value.size > 1:
                        weights.append((op.name, op.op_type, f"{parameter} ({var.op.op_type})", source, value))
                    continue
                if var.op.op_type != "const":
                    continue
                value = var.val
                if isinstance(value, np.ndarray) and value.size > 1 and np.issubdtype(value.dtype, np.floating):
                    weights.append((op.name, op.op_type, parameter, source, value))
    return weights


def _expanded_constexpr(op) -> Optional[np.ndarray]:
    """The tensor a constexpr op of constant inputs expands to (None: an op the evaluator lacks)."""
    from engine.convert.mil_reference import SPEC_OPS

    expand = SPEC_OPS.get(op.op_type)
    if expand is None or any(var is not None and var.val is None for var in op.inputs.values()):
        return None
    return expand({name: var.val for name, var in op.inputs.items() if var is not None})


def _close(stored: np.ndarray, expected: np.ndarray) -> bool:
    """stored (fp16 or fp32) equals expected rounded to its dtype: half a step of that dtype."""
    stored, expected = stored.reshape(-1), expected.reshape(-1)
    if stored.size != expected.size:
        return False
    if stored.dtype == np.float16:
        relative, absolute = 2.0 ** -11, 2.0 ** -25  # half an fp16 step; half the smallest subnormal
    else:
        relative, absolute = 1e-6, 1e-38
    for start in range(0, stored.size, _CHUNK):
        a = stored[start:start + _CHUNK].astype(np.float32)
        b = expected[start:start + _CHUNK].astype(np.float32)
        # equal infinities (a causal mask's -inf) are equal; their difference is NaN
        if not np.all((a == b) | (np.abs(a - b) <= relative * np.abs(b) + absolute)):
            return False
    return True


def _candidates(node, input_index: int, array: np.ndarray, op_name: str = "") -> list[tuple[str, np.ndarray]]:
    """The forms a source constant may take in the package (the converter's documented layouts):
    any reshape of it; for Gemm's B also its transpose, each times alpha; Gemm's C times beta;
    its reciprocal where coremltools' divide_to_multiply pass turned a division by it into a
    multiplication (the op is then named "_inversed_<name>")."""
    forms = [("as stored", array)]
    if op_name.startswith("_inversed_"):
        forms.append(("reciprocal (divide_to_multiply)", np.float32(1) / array.astype(np.float32)))
        # in an fp16 program the pass inverts the fp16 constant
        forms.append(("reciprocal of the fp16 value", np.float32(1) / array.astype(np.float16).astype(np.float32)))
    if node.op_type == "Gemm" and array.ndim == 2 and input_index == 1:
        forms.append(("transposed", array.T))
        alpha = float(node.attributes.get("alpha", 1.0))
        if alpha != 1.0:
            forms += [(f"{form} times alpha={alpha:g}", matrix.astype(np.float32) * np.float32(alpha))
                      for form, matrix in list(forms)]
    if node.op_type == "Gemm" and input_index == 2:
        beta = float(node.attributes.get("beta", 1.0))
        if beta != 1.0:
            forms.append((f"times beta={beta:g}", array.astype(np.float32) * np.float32(beta)))
    return forms


def _constant_value(source, name: str, removed) -> Optional[np.ndarray]:
    """A source constant, or the value behind a Cast / CastLike of a constant that coremltools
    folded away (the node is then `removed` and its consumer reads the cast constant)."""
    if source.is_constant(name):
        return np.asarray(source.constant(name))
    producer = source._producers.get(name)
    if producer is None or producer.id not in removed or producer.op_type not in ("Cast", "CastLike") \
            or not producer.inputs or not source.is_constant(producer.inputs[0]):
        return None
    value_type = source.graph.value_type(name)
    if value_type is None or value_type.dtype not in ("float32", "float16", "float64"):
        return None
    return np.asarray(source.constant(producer.inputs[0])).astype(np.float32)


# ----------------------------------------------------------------------------- derived constants
#
# Translations that store a source constant in another form (docs/conversion.md).  Each form is
# recomputed here from the source constants, independently of the translation's code, so the
# weights check compares the package with what the documented derivation gives, and the
# parameters check (verify.py) knows how many elements the package holds for the constant.

def _shape(source, name: str) -> tuple[int, ...]:
    value_type = source.graph.value_type(name)
    return tuple(value_type.shape) if value_type is not None and value_type.is_static else ()


def _const_input(node, source, index: int) -> Optional[np.ndarray]:
    if index < len(node.inputs) and node.inputs[index] and source.is_constant(node.inputs[index]):
        return np.asarray(source.constant(node.inputs[index]))
    return None


def _rotary_rows(node, source) -> list:
    """RotaryEmbedding with constant positions: the cos/sin rows of those positions."""
    microsoft = node.domain == "com.microsoft"
    cos_index, sin_index, positions_index = (2, 3, 1) if microsoft else (1, 2, 3)
    positions = _const_input(node, source, positions_index)
    shape = _shape(source, node.inputs[0])
    if positions is None or len(shape) not in (3, 4):
        return []
    positions = positions.astype(np.int64)
    if positions.ndim == 1:  # com.microsoft: one start position for every row of the batch
        sequence = shape[1] if len(shape) == 3 else shape[2]
        positions = positions[0] + np.arange(sequence)[None, :]
    forms = []
    for index, table in ((cos_index, "cos_cache"), (sin_index, "sin_cache")):
        array = _const_input(node, source, index)
        if array is not None:
            forms.append(((index,), f"{table} rows at the constant positions", np.take(array, positions, axis=0)))
    return forms


def _gqa_rotary_rows(node, source) -> list:
    """GroupQueryAttention with do_rotary: cos/sin rows past .. past + S - 1."""
    if not int(node.attributes.get("do_rotary", 0)):
        return []
    past = _shape(source, node.inputs[3])[2] if len(node.inputs) > 3 and node.inputs[3] else 0
    sequence = _shape(source, node.inputs[0])[1]
    forms = []
    for index, table in ((7, "cos_cache"), (8, "sin_cache")):
        array = _const_input(node, source, index)
        if array is not None:
            forms.append(((index,), f"{table} rows {past}..{past + sequence - 1}", array[past:past + sequence]))
    return forms


def _mha_bias_parts(node, source) -> list:
    """MultiHeadAttention's input bias [q | k | v], added to each projection apart."""
    bias = _const_input(node, source, 3)
    if bias is None:
        return []
    hidden = _shape(source, node.inputs[0])[2]
    return [((3,), f"bias {part} part", piece)
            for part, piece in zip(("q", "k", "v"), (bias[:hidden], bias[hidden:2 * hidden], bias[2 * hidden:]))]


def _matmul_nbits_weight(node, source) -> list:
    """MatMulNBits: the N x K weight its packed bits, scales and zero points stand for."""
    bits, block = int(node.attributes.get("bits", 4)), int(node.attributes.get("block_size", 0))
    k, n = int(node.attributes.get("K", 0)), int(node.attributes.get("N", 0))
    packed, scales = _const_input(node, source, 1), _const_input(node, source, 2)
    if packed is None or scales is None or not block or k % block:
        return []

    def fields(array: np.ndarray, count: int) -> np.ndarray:
        # bit fields of `bits` bits, lowest first, read through numpy's little-endian unpackbits
        bit_rows = np.unpackbits(np.ascontiguousarray(array, dtype=np.uint8).reshape(n, -1), axis=1,
                                 bitorder="little")
        groups = bit_rows.reshape(n, -1, bits).astype(np.int64)
        return (groups << np.arange(bits)).sum(axis=2)[:, :count]

    blocks = k // block
    quantized = fields(packed, k).astype(np.float32)
    zero_points = _const_input(node, source, 3)
    if zero_points is None:
        zero = np.full((n, blocks), float(1 << (bits - 1)), np.float32)
    elif zero_points.dtype == np.uint8:
        zero = fields(zero_points, blocks).astype(np.float32)
    else:
        zero = zero_points.reshape(n, blocks).astype(np.float32)
    scale = scales.reshape(n, blocks).astype(np.float32)
    weight = (quantized.reshape(n, blocks, block) - zero[..., None]) * scale[..., None]
    covered = tuple(i for i in (1, 2, 3) if i < len(node.inputs) and node.inputs[i])
    return [(covered, f"{bits}-bit weight expanded from its bits, scales and zero points", weight.reshape(n, k))]


DERIVED_FORMS = {
    ("com.microsoft", "RotaryEmbedding"): _rotary_rows, ("", "RotaryEmbedding"): _rotary_rows,
    ("com.microsoft", "GroupQueryAttention"): _gqa_rotary_rows,
    ("com.microsoft", "MultiHeadAttention"): _mha_bias_parts,
    ("com.microsoft", "MatMulNBits"): _matmul_nbits_weight,
}


def derived_forms(node, source) -> list[tuple[tuple[int, ...], str, np.ndarray]]:
    """(input indices it is made of, how, the array) of every constant the node's translation stores
    in another form than the source's; [] where it stores its constants as given."""
    make = DERIVED_FORMS.get((node.domain if node.domain not in ("ai.onnx",) else "", node.op_type))
    return make(node, source) if make is not None else []


def weights_check(program, layer_map: Mapping, source, optimize: str) -> dict:
    """Every package weight against its ONNX source constant (module docstring)."""
    from engine.analysis import costs

    if optimize != "exact":
        return _check(NOT_RUN, "optimize='default' folds BatchNorm and biases into convolutions, so weights "
                               "no longer equal single source constants; the values check covers them")
    weights = package_weights(program, layer_map)
    removed = set(layer_map.get("removed", ()))
    departures, departing_nodes, matched_inputs = [], [], set()
    derived_by_node: dict[str, list] = {}
    derived_matches: Counter = Counter()
    for op_name, op_type, parameter, node_id, value in weights:
        node = source.graph.node(node_id)
        if node_id not in derived_by_node:
            derived_by_node[node_id] = derived_forms(node, source)
        found = None
        for indices, form, candidate in derived_by_node[node_id]:
            if value is not None and _close(value, candidate):
                matched_inputs.update((node_id, index) for index in indices)
                derived_matches[f"{node.op_type}: {form}"] += 1
                found = (indices[0], form)
                break
        if found:
            continue
        wanted = WEIGHT_SOURCES.get((node.op_type, op_type, parameter))
        indices = [wanted] if wanted is not None else range(len(node.inputs))
        for index in indices:
            if value is None:
                break
            if index >= len(node.inputs) or not node.inputs[index]:
                continue
            array = _constant_value(source, node.inputs[index], removed)
            if array is None:
                continue
            if not np.issubdtype(array.dtype, np.floating):
                continue
            for form, candidate in _candidates(node, index, array, op_name):
                if _close(value, candidate):
                    found = (index, form)
                    break
            if found:
                break
        if found is None:
            where = f"input {wanted}" if wanted is not None else "any constant input"
            stored = ("an expansion the MIL reference evaluator lacks" if value is None
                      else f"{'x'.join(map(str, value.shape))} {value.dtype}")
            departures.append(f"{node_id} ({node.op_type}): {op_type} {op_name}.{parameter} "
                              f"{stored} does not equal {where} of the source node")
            departing_nodes.append(node_id)
        else:
            matched_inputs.add((node_id, found[0]))
    # the other direction: every weight of a converted source node is in the package
    missing = []
    for node_id in layer_map.get("nodes", {}):
        node = source.graph.node(node_id)
        arguments = costs.argument_inputs(costs.canonical_op(node))
        for index, name in enumerate(node.inputs):
            if not name or index in arguments or not source.is_constant(name) or (node_id, index) in matched_inputs:
                continue
            value_type = source.graph.value_type(name)
            if value_type is None or value_type.dtype not in ("float32", "float16", "float64") or \
                    (value_type.element_count or 0) <= 1:
                continue
            missing.append(f"{node_id} ({node.op_type}): input {index} '{name}'")
            departing_nodes.append(node_id)
    source.release_constants()
    detail = (f"{len(weights)} weight tensors of the package read back with coremltools' weight reader and "
              "compared with their ONNX source constants (layouts as documented; fp16 within half an fp16 step)")
    if derived_matches:
        detail += ("; in a derived form recomputed here from the source constants: "
                   + ", ".join(f"{count} x {form}" for form, count in sorted(derived_matches.items())))
    if departures or missing:
        problems = departures[:3] + [f"not in the package: {m}" for m in missing[:3]]
        first = next(n.id for n in source.order if n.id in set(departing_nodes))
        return _check(FAILED, f"{len(departures)} of {len(weights)} weights differ from the source"
                              f"{f', {len(missing)} source weights missing' if missing else ''}: "
                              + "; ".join(problems), compared=len(weights), differing=len(departures),
                      missing=len(missing), first_departure=first)
    return _check(PASSED, detail, compared=len(weights))


# ----------------------------------------------------------------------------- numerics

def tensor_map(built, program, layer_map: Mapping) -> dict[str, str]:
    """ONNX tensor -> MIL var name in the saved program, for every node result the build bound.

    By the var's name after coremltools' passes; where a pass replaced the op (a
    ConvTranspose becomes `..._has_output_shape`), a single-output node's result is the
    output of its last op in the program, as the layer map lists them.
    """
    operations = list(program.functions["main"].operations)
    names = {var.name for op in operations for var in op.outputs} | set(program.functions["main"].inputs)
    position = {op.name: index for index, op in enumerate(operations)}
    results_per_node = Counter(node_id for node_id, _, _ in built.tensor_vars)
    result = {}
    for node_id, onnx_name, var in built.tensor_vars:
        if var.name in names:
            result[onnx_name] = var.name
            continue
        node_ops = [name for name in layer_map.get("nodes", {}).get(node_id, ()) if name in position]
        if node_ops and results_per_node[node_id] == 1:
            last = operations[max(position[name] for name in node_ops)]
            if len(last.outputs) == 1:
                result[onnx_name] = last.outputs[0].name
    return result


def seeded_inputs(source, image_inputs: Mapping, seed: int = 0) -> tuple[dict, dict]:
    """(ONNX feed, MIL program feed) by input name: standard-normal floats (small non-negative
    integers for integer inputs), rounded to fp16 so that an fp16 program's input cast is exact;
    an image input gets random pixels (the program input) and pixels * scale + bias (ONNX's)."""
    rng = np.random.default_rng(seed)
    onnx_feed, program_feed = {}, {}
    for name in source.graph.inputs:
        value_type = source.graph.value_type(name)
        shape = tuple(value_type.shape)
        if name in image_inputs:
            image = image_inputs[name]
            planes = rng.integers(0, 256, size=shape).astype(np.float32)  # in the model's channel order
            bias = np.asarray(image.bias, dtype=np.float32).reshape(1, -1, 1, 1)
            onnx_feed[name] = planes * np.float32(image.scale) + bias
            program_feed[name] = planes
        elif value_type.dtype.startswith("int"):
            array = rng.integers(0, 2, size=shape).astype(value_type.dtype)
            onnx_feed[name], program_feed[name] = array, array.astype(np.int32)
        else:
            array = rng.standard_normal(shape).astype(np.float16).astype(value_type.dtype)
            onnx_feed[name], program_feed[name] = array, array.astype(np.float32)
        if not shape:  # a scalar ONNX input is a [1] Core ML input (engine/convert/builder.py)
            program_feed[name] = program_feed[name].reshape(1)
    return onnx_feed, program_feed


def reference_tensors(source, feed: Mapping[str, np.ndarray], names: list[str]) -> tuple[dict[str, np.ndarray], str]:
    """(values of `names` (graph outputs and intermediates), which runtime computed them).

    ONNX Runtime with graph optimisations off, so that every tensor is the one its ONNX node
    defines; for models whose op versions ONNX Runtime no longer implements (AveragePool-1,
    BatchNormalization-6, ...) or whose IR version / opset is newer than it supports, the onnx
    package's reference evaluator (the ONNX spec in numpy).
    """
    import onnx
    import onnxruntime

    graph = source.proto.graph
    present = {output.name for output in graph.output}
    added = 0
    for name in names:
        value_type = source.graph.value_type(name)
        if name in present or value_type is None:
            continue
        elem_type = onnx.helper.np_dtype_to_tensor_dtype(np.dtype(value_type.dtype))
        graph.output.append(onnx.helper.make_tensor_value_info(name, elem_type, None))
        added += 1
    # The conversion may run at other input sizes than the file declares (--shape): declare the
    # fed sizes and drop the file's stored intermediate shapes for the run (restored after).
    saved_inputs = [onnx.ValueInfoProto.FromString(value.SerializeToString()) for value in graph.input]
    saved_value_info = list(graph.value_info)
    for value in graph.input:
        if value.name in feed and value.type.HasField("tensor_type"):
            value.type.tensor_type.shape.Clear()
            for size in np.shape(feed[value.name]):
                value.type.tensor_type.shape.dim.add().dim_value = int(size)
    del graph.value_info[:]
    try:
        serialized = source.proto.SerializeToString()
    finally:
        if added:
            del graph.output[len(graph.output) - added:]
        del graph.input[:]
        graph.input.extend(saved_inputs)
        graph.value_info.extend(saved_value_info)
    options = onnxruntime.SessionOptions()
    options.graph_optimization_level = onnxruntime.GraphOptimizationLevel.ORT_DISABLE_ALL
    options.log_severity_level = 4
    try:
        session = onnxruntime.InferenceSession(serialized, options, providers=["CPUExecutionProvider"])
    except (onnxruntime.capi.onnxruntime_pybind11_state.NotImplemented,
            onnxruntime.capi.onnxruntime_pybind11_state.Fail) as exc:
        # An op version ONNX Runtime dropped (NotImplemented), or an IR version / opset newer than
        # it supports: the onnx package's own reference evaluator instead.  Any other load failure
        # is the model's problem and is reported.
        if isinstance(exc, onnxruntime.capi.onnxruntime_pybind11_state.Fail) and not any(
                text in str(exc) for text in ("Unsupported model IR version", "ValidateOpsetForDomain", "(layout == 1)")):
            raise
        from onnx.reference import ReferenceEvaluator

        evaluator = ReferenceEvaluator(onnx.ModelProto.FromString(serialized))
        wanted = [name for name in names if source.graph.value_type(name) is not None]
        return dict(zip(wanted, evaluator.run(wanted, dict(feed)))), "the onnx reference evaluator"
    del serialized
    wanted = [o.name for o in session.get_outputs() if o.name in set(names)]
    return dict(zip(wanted, session.run(wanted, dict(feed)))), "ONNX Runtime"


def compare(expected: np.ndarray, actual: np.ndarray) -> dict:
    """max absolute error and max error relative to the expected tensor's largest magnitude."""
    expected = np.asarray(expected, dtype=np.float64)
    actual = np.asarray(actual, dtype=np.float64)
    if expected.size != actual.size:
        return {"max_abs_error": float("inf"), "max_rel_error": float("inf"),
                "note": f"{actual.size} elements, ONNX has {expected.size}"}
    actual = actual.reshape(expected.shape)
    if not expected.size:
        return {"max_abs_error": 0.0, "max_rel_error": 0.0}
    same_nonfinite = np.array_equal(~np.isfinite(expected), ~np.isfinite(actual)) and np.array_equal(
        expected[~np.isfinite(expected)], actual[~np.isfinite(actual)], equal_nan=True)
    if not same_nonfinite:
        return {"max_abs_error": float("inf"), "max_rel_error": float("inf"), "note": "NaN/inf at other places"}
    finite = np.isfinite(expected)
    difference = np.abs(expected[finite] - actual[finite])
    max_abs = float(difference.max()) if difference.size else 0.0
    scale = float(np.abs(expected[finite]).max()) if difference.size else 0.0
    max_rel = max_abs / scale if scale > 0 else (0.0 if max_abs == 0 else float("inf"))
    return {"max_abs_error": max_abs, "max_rel_error": max_rel}


def _largest(array: np.ndarray) -> float:
    finite = np.abs(np.asarray(array, dtype=np.float64))
    finite = finite[np.isfinite(finite)]
    return float(finite.max()) if finite.size else 0.0


def _initial_state(past: np.ndarray, entry: Mapping) -> np.ndarray:
    """The state's tensor before a call: the past in its first positions on the sequence axis, zeros after."""
    state = np.zeros(entry["shape"], dtype=np.float16)
    where = [slice(None)] * state.ndim
    where[entry["axis"]] = slice(0, past.shape[entry["axis"]])
    state[tuple(where)] = past
    return state


def values_check(program, layer_map: Mapping, source, precision: str, image_inputs: Mapping,
                 tensors: Mapping[str, str]) -> dict:
    """Outputs and mapped intermediates: MIL reference evaluator against ONNX Runtime (or the onnx
    reference evaluator for op versions ONNX Runtime dropped)."""
    from engine.convert.mil_reference import EvaluationError, UnsupportedOp, evaluate

    tolerance = TOLERANCE[precision]
    onnx_feed, program_feed = seeded_inputs(source, image_inputs)
    # A KV cache held as Core ML state (engine/convert/kv_state.py): the state starts with the
    # past in its first positions and its value after the call is compared with ONNX's present,
    # at fp16's tolerance (Core ML states hold fp16).
    held = {entry["past_input"]: entry for entry in layer_map.get("kv_state", ())}
    states = {entry["state"]: _initial_state(onnx_feed[past], entry) for past, entry in held.items()}
    program_feed = {layer_map["inputs"][name]: value for name, value in program_feed.items() if name not in held}
    outputs = dict(layer_map["outputs"])  # ONNX output -> MIL output
    state_outputs = {entry["present_output"]: entry["state"] for entry in held.values()}
    compared = {**{name: mil for name, mil in tensors.items()}, **outputs}
    try:
        actual = evaluate(program, program_feed, keep=set(compared.values()), states=states or None)
    except UnsupportedOp as exc:
        return _check(NOT_RUN, f"the MIL reference evaluator cannot run {exc}", tolerance=tolerance)
    except EvaluationError as exc:
        node = layer_map.get("mil_ops", {}).get(exc.op_name, {}).get("source") or "(no source node)"
        return _check(FAILED, f"the program fails on the MIL reference evaluator at {node}: {exc}",
                      tolerance=tolerance, first_departure={"node": node, "mil": exc.op_name})
    expected, reference = reference_tensors(source, onnx_feed, list(compared) + list(state_outputs))

    per_output = {}
    for onnx_name, mil_name in outputs.items():
        per_output[onnx_name] = compare(expected[onnx_name], actual[mil_name])
    state_errors = {onnx_name: compare(expected[onnx_name], actual[state]) for onnx_name, state in state_outputs.items()}
    layers, first = [], None
    for node in source.order:
        for onnx_name in node.outputs:
            if onnx_name not in compared or onnx_name not in expected or compared[onnx_name] not in actual:
                continue
            onnx_value = expected[onnx_name]
            errors = compare(onnx_value, actual[compared[onnx_name]])
            entry = {"node": node.id, "op_type": node.op_type, "tensor": onnx_name,
                     "mil": compared[onnx_name], **errors}
            if precision == "fp16" and _largest(onnx_value) > FP16_MAX:
                entry["beyond_fp16"] = _largest(onnx_value)
            layers.append(entry)
            if first is None and errors["max_rel_error"] > tolerance:
                first = entry
    worst_output = max((e["max_rel_error"] for e in per_output.values()), default=0.0)
    worst_abs = max((e["max_abs_error"] for e in per_output.values()), default=0.0)
    how = (f"the converted program run on the MIL reference evaluator ({precision}) against {reference} on "
           "seeded random inputs")
    numbers = dict(tolerance=tolerance, reference=reference, outputs=per_output, layers=layers, first_departure=first,
                   compared_tensors=len(layers))
    if state_errors:
        numbers["states"] = state_errors
        worst_state = max(e["max_rel_error"] for e in state_errors.values())
        if worst_state > TOLERANCE["fp16"]:
            return _check(FAILED, f"the KV cache state after the call differs from {reference}'s present outputs: "
                                  f"max rel error {worst_state:.3g} > tolerance {TOLERANCE['fp16']:g} (fp16 state)",
                          **numbers)
        how += (f"; KV cache states after the call within {worst_state:.2g} of the present outputs "
                f"(fp16 states, tolerance {TOLERANCE['fp16']:g})")
    if first is not None or worst_output > tolerance:
        where = first or {"node": "(output)", "op_type": "", "max_abs_error": worst_abs,
                          "max_rel_error": worst_output}
        overflow = ""
        if where.get("beyond_fp16"):
            # Not a translation error: the model's own values do not fit the program's precision.
            overflow = (f" ({reference}'s values there reach {where['beyond_fp16']:.3g}, beyond fp16's largest "
                        f"{FP16_MAX:g}: this fp16 program overflows; --precision fp32 avoids it)")
            numbers["fp16_overflow"] = where["node"]
        return _check(FAILED, f"first departing layer: {where['node']} ({where['op_type']}): max abs error "
                              f"{where['max_abs_error']:.3g}, max rel error {where['max_rel_error']:.3g} > "
                              f"tolerance {tolerance:g}{overflow}; outputs: worst rel error {worst_output:.3g} "
                              f"({how})", **numbers)
    worst_layer = max((e["max_rel_error"] for e in layers), default=0.0)
    return _check(PASSED, f"outputs within {worst_output:.2g} (max abs {worst_abs:.2g}) of {reference} relative "
                          f"to their largest value, {len(layers)} intermediate tensors within {worst_layer:.2g} "
                          f"(tolerance {tolerance:g}; {how})", **numbers)
