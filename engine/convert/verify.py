"""Checks run after every conversion; each says passed, failed or not run, and why.

- shapes: while building, every ONNX node output's MIL type (shape and dtype)
  equals the ONNX-inferred one (our IR's value types).
- reimport: the saved package opens through `importers.open_model`.
- compute_layers: conv / conv_transpose / linear / matmul ops of the package
  equal Conv / ConvTranspose / Gemm / MatMul compute nodes of the source.
- parameters: weight elements of the package equal what the constants the source's
  compute nodes read give by design (`expected_weights`: one copy per reading node,
  derived forms, folded casts; a range where coremltools removed nodes), engine.analysis'
  counting on both sides (constant float tensors outside argument slots, scalars
  excluded), leaving out image preprocessing, which has no source node.
- weight_bytes: the same expectation in bytes; fp16 stores half the bytes of fp32.
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
class ExpectedWeights:
    """What the package should hold for the constants the source's compute nodes read.

    `source_*` counts each such constant once (the source's own parameters + buffers as
    converted); `low_*` / `high_*` are what the package holds by design, without / with the
    constants of nodes coremltools removed.  Bytes are the fp32 package's (the precision's ratio
    is applied by the caller); `bytes_known` is False when a constant that is not float32 is
    stored as given (int8 QDQ weights), which the byte ratio does not cover.  `reasons` name every
    difference between the source's count and the package's.
    """

    source_elements: int = 0
    source_bytes: int = 0
    low_elements: int = 0
    low_bytes: int = 0
    high_elements: int = 0
    high_bytes: int = 0
    bytes_known: bool = True
    reasons: list[str] = field(default_factory=list)

    def note(self) -> str:
        return "; " + "; ".join(self.reasons) if self.reasons else ""


def _listed(items: list[str], most: int = 4) -> str:
    return ", ".join(items[:most]) + (", ..." if len(items) > most else "")


def expected_weights(source, layer_map: Mapping) -> ExpectedWeights:
    """The parameters / weight_bytes expectation (engine.analysis' counting: constant float tensors
    outside argument slots, scalars excluded), on the graph as converted:

    - the constants that compute nodes read after folding: a folded result a compute node reads
      (a causal mask built from Shape, Range and Trilu) counts, a constant that only fed folded
      shape arithmetic does not;
    - a Cast / CastLike of a constant: coremltools folds it, the package holds the cast value;
    - one copy per reading node and input: the builder hands every node its constants as numpy
      arrays, so each becomes its own MIL const, and nothing merges them in exact mode.
      coremltools' `const_deduplication` pass (passes/defs/cleanup/const_deduplication.py) would
      merge equal consts of 100 or more elements (its `const_threshold`; smaller ones never), but
      exact mode removes that pass (builder.FUSION_PASSES).  Measured with coremltools 9.0 on a
      matmul -> relu -> matmul program sharing one weight: 25, 81, 100, 144 and 400 elements are
      two consts in exact mode; in default mode 100 and more are one, 25 and 81 stay two;
    - a translation that stores a derived form (engine.convert.values.derived_forms: rotary rows
      at constant positions, MatMulNBits' expanded weight, MHA's bias parts) holds that form's
      elements, at 4 bytes each, instead of the constant's;
    - the constants of nodes coremltools removed (an Add of zeros, a folded Cast) may be gone or
      may have moved into their consumer, hence low (without them) and high (with them).
    """
    from engine.convert.values import derived_forms

    removed = set(layer_map.get("removed", ()))
    result = ExpectedWeights()
    unique: set[str] = set()
    readers: dict[str, int] = {}
    derived_held: dict[str, list] = {}  # constant -> [source elements, held elements, forms]
    removed_nodes: list[str] = []
    for node in source.order:
        if node.id in source.folded:
            continue
        arguments = costs.argument_inputs(costs.canonical_op(node))
        derived = derived_forms(node, source)
        for index, name in enumerate(node.inputs):
            if not name or index in arguments or not source.is_constant(name):
                continue
            value_type = source.graph.value_type(name)
            if node.op_type in ("Cast", "CastLike"):
                if index:  # CastLike's second input only gives the type
                    continue
                value_type = source.graph.value_type(node.outputs[0])
            if value_type is None or value_type.dtype not in _PARAM_DTYPES or not value_type.shape:
                continue
            elements, nbytes = value_type.element_count or 0, value_type.byte_size or 0
            if name not in unique:
                unique.add(name)
                result.source_elements += elements
                result.source_bytes += nbytes
            forms = [(indices, form, array) for indices, form, array in derived if index in indices]
            if forms:
                # a form made of several inputs (MatMulNBits' bits, scales, zero points) is held once,
                # under its first input
                held = sum(array.size for indices, _, array in forms if indices[0] == index)
                held_bytes = 4 * held
                entry = derived_held.setdefault(name, [elements, 0, set()])
                entry[1] += held
                entry[2].update(form for _, form, _ in forms)
            else:
                held, held_bytes = elements, nbytes
                readers[name] = readers.get(name, 0) + 1
                if value_type.dtype != "float32":
                    result.bytes_known = False
            result.high_elements += held
            result.high_bytes += held_bytes
            if node.id in removed:
                if node.id not in removed_nodes:
                    removed_nodes.append(node.id)
            else:
                result.low_elements += held
                result.low_bytes += held_bytes
    shared = [f"{name} x{count}" for name, count in readers.items() if count > 1]
    if shared:
        result.reasons.append(f"constants read by several nodes are stored once per node in exact mode "
                              f"({_listed(shared)})")
    if derived_held:
        result.reasons.append("translations store derived forms, checked by value in the weights check ("
                              + _listed([f"{name} ({elements:,} -> {held:,}: {', '.join(sorted(forms))})"
                                         for name, (elements, held, forms) in derived_held.items()], 4) + ")")
    if result.high_elements != result.low_elements:
        result.reasons.append(f"the constants of nodes coremltools removed ({_listed(removed_nodes)}) may be gone "
                              "or moved into their consumers, so a range is accepted")
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
    package_totals = analyze(coreml_model).totals
    elements, nbytes = program_weights(coreml_model, owner)
    expected = expected_weights(source, layer_map)
    source.release_constants()
    scalars = built.scalarized_parameters  # one-element parameters that became scalar arguments
    source_params = expected.source_elements - scalars
    low, high = expected.low_elements - scalars, expected.high_elements - scalars
    expected_text = f"{low:,}" if low == high else f"{low:,} to {high:,}"
    scalarized = (f", less {scalars} one-element parameter(s) that became scalar arguments" if scalars else "")
    detail = (f"{elements:,} weight elements in the package, {source_params:,} in the constants the source's "
              f"compute nodes read{scalarized} (analysis of the whole package: "
              f"{package_totals.params + package_totals.buffers:,}); expected {expected_text}{expected.note()}")
    if optimize != "exact":
        checks["parameters"] = _check(NOT_RUN, "optimize='default' folds BatchNorm and biases into "
                                               "convolutions and merges equal constants of 100+ elements, "
                                               "which changes parameter counts; " + detail,
                                      source=source_params, package=elements)
    else:
        # `expected` is one number, or [low, high] when removed nodes' constants make a range
        checks["parameters"] = _check(PASSED if low <= elements <= high else FAILED, detail,
                                      source=source_params, package=elements,
                                      expected=low if low == high else [low, high])
    ratio = 0.5 if precision == "fp16" else 1.0
    source_bytes = expected.source_bytes - 4 * scalars
    if optimize != "exact" or not expected.bytes_known:
        checks["weight_bytes"] = _check(NOT_RUN, f"{nbytes:,} weight bytes in the package, "
                                                 f"{source_bytes:,} in the source",
                                        source=source_bytes, package=nbytes)
    else:
        low_bytes = int((expected.low_bytes - 4 * scalars) * ratio)
        high_bytes = int((expected.high_bytes - 4 * scalars) * ratio)
        bytes_text = f"{low_bytes:,}" if low_bytes == high_bytes else f"{low_bytes:,} to {high_bytes:,}"
        checks["weight_bytes"] = _check(
            PASSED if low_bytes <= nbytes <= high_bytes else FAILED,
            f"{nbytes:,} weight bytes in the package ({precision}), {source_bytes:,} in the fp32 source "
            f"(expected {bytes_text}){expected.note()}", source=source_bytes, package=nbytes,
            expected=low_bytes if low_bytes == high_bytes else [low_bytes, high_bytes])
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
    if info.get("type") == "identity" and name.endswith("_tmp") and name[:-4] in layer_map["inputs"].values():
        return True  # coremltools' handle_unused_inputs: an input no op reads gets "<input>_tmp"
    if any(name.startswith(f"{entry['state']}__") for entry in layer_map.get("kv_state", ())):
        return True  # the past taken from a state's tensor (engine/convert/kv_state.py)
    return name.endswith("__scaled__") or name.endswith("__biased__") or name.endswith("__scalar")


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
