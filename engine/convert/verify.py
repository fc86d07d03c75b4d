"""Checks run after every conversion; each says passed, failed or not run, and why.

- shapes: while building, every ONNX node output's MIL type (shape and dtype)
  equals the ONNX-inferred one (our IR's value types).
- reimport: the saved package opens through `importers.open_model`.
- compute_layers: conv / conv_transpose / linear / matmul ops of the package
  equal Conv / ConvTranspose / Gemm / MatMul compute nodes of the source.
- parameters: weight elements of the package equal the source's parameters +
  buffers (engine.analysis' counting on both sides: constant float tensors outside
  argument slots, scalars excluded), leaving out image preprocessing, which has
  no source node.
- weight_bytes: fp16 stores half the bytes of the fp32 source, fp32 the same.
- layer_map: every source compute node has MIL ops (or is listed as removed or
  fused) and every MIL op has a source node, except input/output casts, KV cache
  state reads/writes and image preprocessing.
- weights: every weight of the saved package equals its ONNX source constant
  (engine/convert/values.py).
- values: the saved program run on the MIL reference evaluator against ONNX Runtime,
  outputs and mapped intermediates, with the first departing layer (values.py).
- coreml: outputs of Core ML itself against ONNX Runtime.  Core ML prediction exists
  only on macOS; elsewhere this is "not run" and says so.

A check that did not run is "not run", never "passed".
"""
from __future__ import annotations

import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping, Optional

import numpy as np

from engine.analysis import analyze, costs
from engine.ir import FLOAT_DTYPES, Model

from engine.convert.values import FAILED, NOT_RUN, PASSED
_LAYER_OPS = {"Conv", "ConvTranspose", "Gemm", "MatMul"}
_PARAM_DTYPES = FLOAT_DTYPES | {"int8", "uint8", "int4", "uint4"}


def _check(status: str, detail: str, **numbers) -> dict:
    return {"status": status, "detail": detail, **numbers}


# ONNX Runtime's MatMulNBits is a linear layer (its translation is one matmul on dequantized
# weights); the contrib attentions, like Attention, are not: their matmuls are inner ops.
_CONTRIB_LAYERS = {("com.microsoft", "MatMulNBits")}


def _is_layer(node) -> bool:
    return costs.canonical_op(node) in _LAYER_OPS or (node.domain, node.op_type) in _CONTRIB_LAYERS


def compute_layer_count(model: Model, skip=lambda node: False) -> int:
    """Conv, ConvTranspose, Gemm/linear, MatMul (and MatMulNBits) nodes that run (constant ones
    excluded), less those `skip(node)` leaves out."""
    analysis = analyze(model)
    return sum(1 for m in analysis.compute_nodes()
               if _is_layer(analysis.graph.node(m.node_id)) and not skip(analysis.graph.node(m.node_id)))


def program_weights(model: Model, attributed: Optional[Mapping[str, Optional[str]]] = None) -> tuple[int, int]:
    """(elements, bytes) of the weight tensors a Core ML program's ops read, each counted once.

    Follows engine.analysis' counting (constant float tensors outside argument slots,
    scalars excluded) and leaves out the ops that belong to no source node
    (`attributed[name] is None`: image preprocessing).
    """
    graph = model.main_graph
    counted: set[str] = set()
    elements = nbytes = 0
    for node in graph.nodes:
        if attributed is not None and attributed.get(node.name or node.id, "") is None:
            continue
        arguments = costs.argument_inputs(costs.canonical_op(node))
        for index, name in enumerate(node.inputs):
            value = graph.values.get(name)
            if value is None or not value.is_constant or value.type is None or name in counted:
                continue
            if index in arguments or value.type.dtype not in _PARAM_DTYPES or value.type.shape == ():
                continue
            counted.add(name)
            elements += value.type.element_count or 0
            nbytes += value.type.byte_size or 0
    return elements, nbytes


@dataclass
class StoredWeights:
    """How the package's weights differ from the source's parameters by design, constant by constant:
    elements the package holds beyond (or short of) the source's count, and why."""

    extra_elements: int = 0
    extra_float_bytes: float = 0.0  # at 4 bytes per element, before the precision's ratio
    bytes_known: bool = True  # False: a non-float source constant stored as given (int8 QDQ weights)
    reasons: list[str] = field(default_factory=list)

    def note(self) -> str:
        if not self.reasons:
            return ""
        sign = "+" if self.extra_elements >= 0 else "-"
        return (f"; expected {sign}{abs(self.extra_elements):,} elements against the source: "
                + "; ".join(self.reasons))


def stored_weights(source, layer_map: Mapping) -> StoredWeights:
    """What the package holds for each source constant that a converted node reads as a weight.

    Exact mode gives every reading node its own MIL const (coremltools' const_deduplication is off,
    engine/convert/builder.py), so a constant read by k nodes is stored k times; a translation that
    stores a derived form (engine.convert.values.derived_forms: rotary rows at constant positions,
    MatMulNBits' expanded weight) holds that form's elements instead of the constant's.  The
    counting (weight slots, dtypes, scalars) is engine.analysis' and `program_weights`'.
    """
    from engine.convert.values import derived_forms

    stored: dict[str, int] = {}  # constant -> elements the package holds for it
    readers: dict[str, list[str]] = {}
    forms_used: dict[str, set[str]] = {}
    for node_id in layer_map.get("nodes", {}):
        node = source.graph.node(node_id)
        arguments = costs.argument_inputs(costs.canonical_op(node))
        derived = derived_forms(node, source)
        derived_slots = {index for indices, _, _ in derived for index in indices}
        for index, name in enumerate(node.inputs):
            if not name or index in arguments or not source.is_constant(name):
                continue
            value_type = source.graph.value_type(name)
            if value_type is None or value_type.dtype not in _PARAM_DTYPES or value_type.shape == ():
                continue
            readers.setdefault(name, []).append(node_id)
            if index in derived_slots:
                held = sum(array.size for indices, _, array in derived if indices[0] == index)
                forms_used.setdefault(name, set()).update(form for indices, form, _ in derived if index in indices)
            else:
                held = value_type.element_count or 0
            stored[name] = stored.get(name, 0) + held
    result = StoredWeights()
    shared, derived_names = [], []
    for name, held in stored.items():
        value_type = source.graph.value_type(name)
        elements = value_type.element_count or 0
        if name in forms_used:
            derived_names.append(f"{name} ({elements:,} -> {held:,}: {', '.join(sorted(forms_used[name]))})")
            # a derived form is a float tensor (4 bytes an element before the precision's ratio)
            result.extra_float_bytes += 4 * held - (value_type.byte_size or 0)
        else:
            if len(readers[name]) > 1:
                shared.append(f"{name} x{len(readers[name])}")
            if value_type.dtype != "float32":
                result.bytes_known = False  # stored as given in a type the byte ratio does not cover
            result.extra_float_bytes += 4 * (held - elements)
        result.extra_elements += held - elements
    if shared:
        result.reasons.append(f"constants read by several nodes are stored once per node in exact mode "
                              f"({', '.join(shared[:4])}{', ...' if len(shared) > 4 else ''})")
    if derived_names:
        result.reasons.append("translations store derived forms, checked by value in the weights check ("
                              + "; ".join(derived_names[:4]) + (", ..." if len(derived_names) > 4 else "") + ")")
    return result


def run_checks(*, source, built, coreml_model: Model, layer_map: Mapping, owner: Mapping[str, Optional[str]],
               precision: str, optimize: str, package_path: Path, image_inputs: Mapping,
               program=None, value_checks: bool = True) -> dict[str, dict]:
    """Every check; `program` is the MIL program read back from the saved package (the value
    checks run on it), `value_checks=False` leaves the weights and values checks "not run"."""
    checks: dict[str, dict] = {}
    shape_check = built.shape_check
    if shape_check.mismatches:
        checks["shapes"] = _check(FAILED, f"{len(shape_check.mismatches)} of {shape_check.checked} tensors differ",
                                  checked=shape_check.checked)
    else:
        note = (f"; {shape_check.unknown} without a static ONNX type not compared"
                if shape_check.unknown else "")
        if shape_check.probes_checked:
            note += (f"; flexible inputs: programs built at {shape_check.probes_checked} input shapes "
                     "(default, enumerated or range bounds) match ONNX as well")
        checks["shapes"] = _check(PASSED, f"{shape_check.checked} tensors: MIL shapes and dtypes equal the "
                                          f"ONNX-inferred ones{note}", checked=shape_check.checked,
                                  not_compared=shape_check.unknown)
    graph = coreml_model.main_graph
    checks["reimport"] = _check(PASSED, f"opens as {coreml_model.format} with {len(graph.nodes)} ops "
                                        "(importers.coreml)", ops=len(graph.nodes))
    source_layers = compute_layer_count(source.model)

    def decomposed(node) -> bool:  # a matmul of another op's translation (Attention's Q K^T and P V)
        node_id = owner.get(node.name or node.id)
        return node_id is not None and not _is_layer(source.graph.node(node_id))

    package_layers = compute_layer_count(coreml_model, skip=decomposed)
    inner = compute_layer_count(coreml_model) - package_layers
    detail = f"{package_layers} conv/linear/matmul ops for {source_layers} Conv/ConvTranspose/Gemm/MatMul nodes"
    if inner:
        detail += f" ({inner} more inside the translations of other ops, e.g. Attention)"
    if source_layers == package_layers:
        checks["compute_layers"] = _check(PASSED, detail, source=source_layers, package=package_layers)
    elif optimize != "exact":
        # coremltools' remove_redundant_ops merges layers that compute the same thing (identical
        # weights on the same input: generated weights such as the light zoo's do that).
        checks["compute_layers"] = _check(NOT_RUN, detail + "; optimize='default' merged identical layers",
                                          source=source_layers, package=package_layers)
    else:
        checks["compute_layers"] = _check(FAILED, detail, source=source_layers, package=package_layers)
    source_totals = analyze(source.model).totals
    package_totals = analyze(coreml_model).totals
    source_params = source_totals.params + source_totals.buffers - built.scalarized_parameters
    elements, nbytes = program_weights(coreml_model, owner)
    by_design = stored_weights(source, layer_map)
    source.release_constants()
    expected_elements = source_params + by_design.extra_elements
    scalarized = (f", less {built.scalarized_parameters} one-element parameter(s) that became scalar "
                  "arguments" if built.scalarized_parameters else "")
    detail = (f"{elements:,} weight elements in the package, {source_params:,} parameters + buffers in "
              f"the source{scalarized} (analysis of the whole package: "
              f"{package_totals.params + package_totals.buffers:,}){by_design.note()}")
    if optimize != "exact":
        checks["parameters"] = _check(NOT_RUN, "optimize='default' folds BatchNorm and biases into "
                                               "convolutions, which changes parameter counts; " + detail,
                                      source=source_params, package=elements)
    else:
        checks["parameters"] = _check(PASSED if elements == expected_elements else FAILED, detail,
                                      source=source_params, package=elements, expected=expected_elements)
    ratio = 0.5 if precision == "fp16" else 1.0
    source_float = by_design.bytes_known if by_design.reasons else \
        all(d == "float32" for d in source_totals.params_by_dtype)
    expected = int((source_totals.weight_bytes - 4 * built.scalarized_parameters + by_design.extra_float_bytes)
                   * ratio) if source_float else None
    if optimize != "exact" or expected is None:
        checks["weight_bytes"] = _check(NOT_RUN, f"{nbytes:,} weight bytes in the package, "
                                                 f"{source_totals.weight_bytes:,} in the source",
                                        source=source_totals.weight_bytes, package=nbytes)
    else:
        checks["weight_bytes"] = _check(
            PASSED if nbytes == expected else FAILED,
            f"{nbytes:,} weight bytes in the package ({precision}), {source_totals.weight_bytes:,} in the "
            f"source (expected {expected:,}){by_design.note()}", source=source_totals.weight_bytes, package=nbytes)
    compute = [n.id for n in source.order if n.id not in source.folded]
    covered = set(layer_map["nodes"]) | set(layer_map["removed"]) | set(layer_map.get("fused", {}))
    missing = [node_id for node_id in compute if node_id not in covered]
    stray = [name for name in layer_map.get("unattributed", ()) if not _is_plumbing(name, layer_map)]
    if missing or stray:
        checks["layer_map"] = _check(FAILED, f"{len(missing)} source compute nodes without MIL ops "
                                             f"({', '.join(missing[:5])}); {len(stray)} MIL ops without a "
                                             f"source node ({', '.join(stray[:5])})")
    else:
        checks["layer_map"] = _check(PASSED, f"{len(layer_map['nodes'])} source nodes -> "
                                             f"{sum(len(v) for v in layer_map['nodes'].values())} MIL ops; "
                                             f"{len(layer_map['removed'])} removed, {len(layer_map['folded'])} "
                                             f"folded, {len(layer_map.get('fused', {}))} fused, "
                                             f"{len(layer_map.get('unattributed', ()))} input/output ops")
    checks.update(value_check_results(source, built, program, layer_map, precision, optimize, image_inputs,
                                      value_checks))
    checks["coreml"] = numeric_check(source, package_path, layer_map, precision, image_inputs)
    return checks


def value_check_results(source, built, program, layer_map: Mapping, precision: str, optimize: str,
                        image_inputs: Mapping, value_checks: bool) -> dict[str, dict]:
    from engine.convert.values import values_check, weights_check

    if not value_checks:
        reason = "value checks turned off (--no-value-checks)"
        return {"weights": _check(NOT_RUN, reason), "values": _check(NOT_RUN, reason)}
    checks = {}
    try:
        checks["weights"] = weights_check(program, layer_map, source, optimize)
    except Exception as exc:  # a check tripping over an odd program is a finding, reported, not a crash
        checks["weights"] = _check(NOT_RUN, f"could not compare the weights: {type(exc).__name__}: {exc}")
    try:
        checks["values"] = values_check(program, layer_map, source, precision, image_inputs, layer_map["tensors"])
    except MemoryError:
        checks["values"] = _check(NOT_RUN, "not enough memory to hold the program's tensors and ONNX Runtime's")
    except Exception as exc:
        checks["values"] = _check(NOT_RUN, f"could not run: {type(exc).__name__}: {exc}")
    return checks


def _is_plumbing(name: str, layer_map: Mapping) -> bool:
    """Input/output casts, KV cache state reads and writes (the program's I/O when the cache is
    held as state) and image preprocessing: ops that belong to no source node by design."""
    info = layer_map["mil_ops"].get(name, {})
    if info.get("type") in ("cast", "read_state", "write_state", "coreml_update_state"):
        return True
    if any(name.startswith(f"{entry['state']}__") for entry in layer_map.get("kv_state", ())):
        return True  # the past taken from a state's tensor (engine/convert/kv_state.py)
    return name.endswith("__scaled__") or name.endswith("__biased__")


def numeric_check(source, package_path: Path, layer_map: Mapping, precision: str,
                  image_inputs: Mapping) -> dict:
    if sys.platform != "darwin":
        return _check(NOT_RUN, f"needs macOS: Core ML prediction does not run on {sys.platform}; convert "
                               "on a Mac to compare the outputs with ONNX Runtime")
    try:
        return _numeric_compare(source, package_path, layer_map, precision, image_inputs)
    except Exception as exc:  # prediction failing is a finding, not a crash
        return _check(FAILED, f"prediction failed: {type(exc).__name__}: {exc}")


def _numeric_compare(source, package_path: Path, layer_map: Mapping, precision: str,
                     image_inputs: Mapping) -> dict:
    import coremltools as ct
    import onnxruntime

    rng = np.random.default_rng(0)
    onnx_feed, coreml_feed = {}, {}
    for name in source.graph.inputs:
        shape = tuple(source.graph.value_type(name).shape)
        coreml_name = layer_map["inputs"][name]
        if name in image_inputs:
            from PIL import Image

            image = image_inputs[name]
            pixels = rng.integers(0, 256, size=(shape[2], shape[3], 3), dtype=np.uint8)
            planes = pixels.transpose(2, 0, 1).astype(np.float32)
            if image.color_layout == "BGR":
                planes = planes[::-1]
            bias = np.asarray(image.bias, dtype=np.float32).reshape(-1, 1, 1)
            onnx_feed[name] = (planes * np.float32(image.scale) + bias)[None]
            coreml_feed[coreml_name] = Image.fromarray(pixels, "RGB")
        else:
            array = rng.standard_normal(shape).astype(np.float32)
            onnx_feed[name] = array
            coreml_feed[coreml_name] = array
    for name, assumption in source.assumed_inputs.items():  # --assume-full-attention-mask: ONNX still has it
        onnx_feed[name] = np.ones(assumption["shape"], dtype=assumption["dtype"])
    session = onnxruntime.InferenceSession(str(source.path), providers=["CPUExecutionProvider"])
    reference = dict(zip([o.name for o in session.get_outputs()], session.run(None, onnx_feed)))
    model = ct.models.MLModel(str(package_path), compute_units=ct.ComputeUnit.CPU_ONLY)
    predicted = model.predict(coreml_feed)
    tolerance = 5e-2 if precision == "fp16" else 1e-3
    per_output, worst = {}, 0.0
    for onnx_name, coreml_name in layer_map["outputs"].items():
        expected = np.asarray(reference[onnx_name], dtype=np.float64)
        actual = np.asarray(predicted[coreml_name], dtype=np.float64).reshape(expected.shape)
        max_abs = float(np.max(np.abs(actual - expected))) if expected.size else 0.0
        scale = float(np.max(np.abs(expected))) if expected.size else 0.0
        max_rel = max_abs / max(scale, 1e-12)
        per_output[onnx_name] = {"max_abs_error": max_abs, "max_rel_error": max_rel}
        worst = max(worst, max_rel)
    return _check(PASSED if worst <= tolerance else FAILED,
                  f"Core ML's outputs against ONNX Runtime on random inputs (CPU only): worst relative error "
                  f"{worst:.2e} (tolerance {tolerance:g} for {precision})", outputs=per_output)
