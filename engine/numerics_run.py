"""The numerics run (engine.numerics.run_numerics): model surgery, segment runners, the lock-step loop.

See engine.numerics for what is compared and how; this module holds the parts
that need onnx and ONNX Runtime, imported only when a comparison runs.
"""
from __future__ import annotations

import threading
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Iterable, Mapping, Optional, Sequence

import numpy as np
import onnx
from onnx import helper, numpy_helper

from engine.numerics import (EMULATED, MODE_COMPUTE, MODE_STORAGE, LayerNumerics, NumericsError, NumericsResult,
                             NumericsSettings, ProgressCallback, _TensorAccumulator, _generated_samples,
                             _split_stacked, emulation_text, load_input_samples, numerics_hints)
from engine.targets import ProfileSettings


# ============================================================================ model surgery

def _reads(node: onnx.NodeProto) -> set[str]:
    from engine.targets.cpu import _subgraph_references
    return {n for n in node.input if n} | _subgraph_references(node)


def _plan_segments(nodes: Sequence[onnx.NodeProto], output_bytes: Mapping[str, Optional[int]],
                   budget: int) -> list[tuple[int, int]]:
    """Consecutive node ranges whose outputs together stay under `budget` bytes (at least one node each)."""
    segments, start, used = [], 0, 0
    for index, node in enumerate(nodes):
        size = output_bytes.get(node.name) or 0
        if index > start and used + size > budget:
            segments.append((start, index))
            start, used = index, 0
        used += size
    if start < len(nodes):
        segments.append((start, len(nodes)))
    return segments


_NUMPY_TO_ONNX = {np.dtype(k): v for k, v in {
    np.float32: onnx.TensorProto.FLOAT, np.float16: onnx.TensorProto.FLOAT16, np.float64: onnx.TensorProto.DOUBLE,
    np.int64: onnx.TensorProto.INT64, np.int32: onnx.TensorProto.INT32, np.int16: onnx.TensorProto.INT16,
    np.int8: onnx.TensorProto.INT8, np.uint8: onnx.TensorProto.UINT8, np.uint16: onnx.TensorProto.UINT16,
    np.uint32: onnx.TensorProto.UINT32, np.uint64: onnx.TensorProto.UINT64, np.bool_: onnx.TensorProto.BOOL,
}.items()}


def _value_info(name: str, array: np.ndarray) -> onnx.ValueInfoProto:
    elem = _NUMPY_TO_ONNX.get(array.dtype)
    if elem is None:
        raise NumericsError(f"tensor '{name}' has type {array.dtype}, which the numerics comparison cannot pass "
                            "between segments")
    return helper.make_tensor_value_info(name, elem, list(array.shape))


def _round_fp16(array: np.ndarray) -> np.ndarray:
    """Rounded to fp16 and back (storage rounding); non-float arrays unchanged."""
    if array.dtype in (np.float32, np.float64):
        with np.errstate(over="ignore"):
            return array.astype(np.float16).astype(array.dtype)
    return array


def _with_storage_casts(segment: onnx.ModelProto, float_outputs: Iterable[str]) -> onnx.ModelProto:
    """A segment whose float outputs pass through Cast float->float16->float, weights rounded to fp16.

    The producing node writes `<name>::fp32`; the pair writes `<name>` again, so
    readers and the segment's outputs see the rounded tensor.  Inputs arrive
    already rounded (the previous segment rounded them, or the caller did).
    """
    model = onnx.ModelProto()
    model.CopyFrom(segment)
    graph = model.graph
    float_outputs = set(float_outputs)
    for tensor in graph.initializer:
        if tensor.data_type in (onnx.TensorProto.FLOAT, onnx.TensorProto.DOUBLE):
            tensor.CopyFrom(numpy_helper.from_array(_round_fp16(numpy_helper.to_array(tensor)), tensor.name))
    nodes = []
    for node in graph.node:
        casts = []
        for position, name in enumerate(node.output):
            if name not in float_outputs:
                continue
            original = f"{name}::fp32"
            node.output[position] = original
            elem = onnx.TensorProto.FLOAT
            casts.append(helper.make_node("Cast", [original], [f"{name}::fp16"], name=f"{node.name}::to_fp16",
                                          to=onnx.TensorProto.FLOAT16))
            casts.append(helper.make_node("Cast", [f"{name}::fp16"], [name], name=f"{node.name}::from_fp16",
                                          to=elem))
        nodes.append(node)
        nodes.extend(casts)
    del graph.node[:]
    graph.node.extend(nodes)
    return model


def _fp16_compute_model(proto: onnx.ModelProto) -> onnx.ModelProto:
    """The model with float weights, constants, casts and declared types in float16 (for numpy float16)."""
    model = onnx.ModelProto()
    model.CopyFrom(proto)
    _cast_graph_to_fp16(model.graph)
    return model


# Inputs that ONNX requires in fp32 whatever the data type (sizes and coordinates, not data).
_KEEP_FP32_INPUTS = {("Resize", 1), ("Resize", 2), ("Upsample", 1)}
_FLOAT_ELEMS = (onnx.TensorProto.FLOAT, onnx.TensorProto.DOUBLE)


def _cast_graph_to_fp16(graph: onnx.GraphProto) -> None:
    keep = {node.input[i] for node in graph.node for (op, i) in _KEEP_FP32_INPUTS
            if node.op_type == op and len(node.input) > i and node.input[i]}
    for tensor in graph.initializer:
        if tensor.data_type in _FLOAT_ELEMS and tensor.name not in keep:
            tensor.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(tensor).astype(np.float16), tensor.name))
    for value in list(graph.input) + list(graph.output):
        if value.type.tensor_type.elem_type in _FLOAT_ELEMS and value.name not in keep:
            value.type.tensor_type.elem_type = onnx.TensorProto.FLOAT16
    del graph.value_info[:]
    for node in graph.node:
        for attribute in node.attribute:
            if attribute.type == onnx.AttributeProto.GRAPH:
                _cast_graph_to_fp16(attribute.g)
            elif attribute.type == onnx.AttributeProto.GRAPHS:
                for sub in attribute.graphs:
                    _cast_graph_to_fp16(sub)
        if node.op_type == "Cast":
            for attribute in node.attribute:
                if attribute.name == "to" and attribute.i in _FLOAT_ELEMS:
                    attribute.i = onnx.TensorProto.FLOAT16
        elif node.op_type in ("Constant", "ConstantOfShape") and not any(o in keep for o in node.output):
            found = False
            for attribute in node.attribute:
                if attribute.name == "value" and attribute.t.data_type in _FLOAT_ELEMS:
                    attribute.t.CopyFrom(numpy_helper.from_array(
                        numpy_helper.to_array(attribute.t).astype(np.float16), attribute.t.name))
                    found = True
                elif attribute.name == "value":
                    found = True
                elif attribute.name in ("value_float", "value_floats"):
                    values = np.array(attribute.f if attribute.name == "value_float" else list(attribute.floats),
                                      dtype=np.float16)
                    node.attribute.remove(attribute)
                    node.attribute.append(helper.make_attribute("value", numpy_helper.from_array(values)))
                    found = True
                    break
            if node.op_type == "ConstantOfShape" and not found:  # default: float32 zero
                node.attribute.append(helper.make_attribute("value", numpy_helper.from_array(
                    np.zeros(1, dtype=np.float16))))


# ============================================================================ runners

class _OrtSegments:
    """A model run one segment at a time by ONNX Runtime (fp32, or with fp16 storage casts).

    Large weights are not in the segment models: they are fed with each run from
    `weights` (numpy arrays ORT reads in place), so a weight lives once in memory
    instead of once per protobuf, serialized copy and session.
    """

    def __init__(self, proto: onnx.ModelProto, segments: Sequence[tuple[int, int]], threads: int,
                 storage_fp16: bool, weights: Mapping[str, np.ndarray]):
        self.proto = proto
        self.segments = segments
        self.threads = threads
        self.storage_fp16 = storage_fp16
        self.weights = weights
        self.sessions: dict[int, tuple] = {}
        self.initializers = {t.name: t for t in proto.graph.initializer}

    def _build(self, index: int, live: Mapping[str, np.ndarray], float_outputs: Iterable[str]):
        import onnxruntime as ort
        start, end = self.segments[index]
        nodes = self.proto.graph.node[start:end]
        produced = {o for n in nodes for o in n.output if o}
        reads = set().union(*(_reads(n) for n in nodes))
        inputs = sorted(name for name in reads if name not in produced and name not in self.initializers
                        and name in live)
        weights = sorted(name for name in reads if name in self.weights and name not in produced)
        missing = [name for name in reads if name not in produced and name not in self.initializers
                   and name not in live and name not in self.weights]
        if missing:
            raise NumericsError(f"nodes {nodes[0].name}..{nodes[-1].name} read {', '.join(sorted(missing)[:3])}, "
                                "which nothing produced before them")
        outputs = [o for n in nodes for o in n.output if o]
        graph = helper.make_graph(
            [onnx.NodeProto.FromString(n.SerializeToString()) for n in nodes], f"segment{index}",
            [_value_info(name, live[name]) for name in inputs]
            + [_value_info(name, self.weights[name]) for name in weights],
            [helper.make_empty_tensor_value_info(name) for name in outputs],
            initializer=[self.initializers[name] for name in sorted(reads) if name in self.initializers])
        model = helper.make_model(graph, opset_imports=list(self.proto.opset_import))
        model.ir_version = self.proto.ir_version
        model.functions.extend(self.proto.functions)
        if self.storage_fp16:
            model = _with_storage_casts(model, float_outputs)
        options = ort.SessionOptions()
        options.log_severity_level = 4
        options.intra_op_num_threads = self.threads
        options.inter_op_num_threads = 1
        # Fusions would skip intermediate tensors and remove the Cast pairs.
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
        # Every segment session would otherwise keep an arena the size of its outputs after its run,
        # which is the sum of all intermediates again (ResNet-50: 1.2 GB peak with arenas, see
        # docs/benchmarks.md); without them a run's buffers are freed when the outputs are dropped.
        options.enable_cpu_mem_arena = False
        options.enable_mem_pattern = False
        try:
            session = ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
        except Exception as exc:
            from engine.targets.cpu import _short_ort_message
            raise NumericsError(f"ONNX Runtime cannot run nodes {nodes[0].name}..{nodes[-1].name}: "
                                f"{_short_ort_message(exc)}") from None
        del model
        self.sessions[index] = (session, inputs, weights, outputs)
        return self.sessions[index]

    def run(self, index: int, live: Mapping[str, np.ndarray],
            float_outputs: Iterable[str] = ()) -> dict[str, np.ndarray]:
        session, inputs, weights, outputs = self.sessions.get(index) or self._build(index, live, float_outputs)
        feed = {name: live[name] for name in inputs}
        feed.update((name, self.weights[name]) for name in weights)
        try:
            values = session.run(outputs, feed)
        except Exception as exc:
            from engine.targets.cpu import _short_ort_message
            start, end = self.segments[index]
            raise NumericsError(f"the run of nodes {self.proto.graph.node[start].name}.."
                                f"{self.proto.graph.node[end - 1].name} failed: {_short_ort_message(exc)}") from None
        return dict(zip(outputs, values))


class _Fp16Evaluator:
    """The fp16 model run op by op by onnx's reference evaluator on numpy float16 arrays."""

    def __init__(self, proto: onnx.ModelProto, weights: Mapping[str, np.ndarray]):
        from onnx.reference import ReferenceEvaluator
        from engine.numerics_kernels import FP16_KERNELS
        self.model = _fp16_compute_model(proto)
        try:
            self.evaluator = ReferenceEvaluator(self.model, new_ops=FP16_KERNELS)
        except Exception as exc:
            raise NumericsError(f"the reference evaluator cannot load the fp16 model ({type(exc).__name__}: "
                                f"{exc}); use mode fp16-storage") from None
        self.nodes = self.evaluator.rt_nodes_
        self.initializers = dict(self.evaluator.rt_inits_)
        self.initializers.update((name, value.astype(np.float16) if value.dtype in (np.float32, np.float64)
                                  else value) for name, value in weights.items())
        self.promoted: dict[str, str] = {}

    def run_node(self, index: int, values: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        node = self.nodes[index]
        proto = self.model.graph.node[index]
        inputs = [values[name] if name in values else self.initializers.get(name) for name in node.input]
        try:
            with np.errstate(all="ignore"):
                if node.need_context():
                    context = {**self.initializers, **values}
                    outputs = node.run(*inputs, context=context)
                else:
                    outputs = node.run(*inputs)
        except Exception as exc:
            raise NumericsError(f"fp16-compute: node '{proto.name}' (op {proto.op_type}) failed in the reference "
                                f"evaluator: {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}; "
                                "use mode fp16-storage for this model") from None
        result = {}
        for name, value in zip(proto.output, outputs):
            if not name:
                continue
            value = np.asarray(value)
            if value.dtype in (np.float32, np.float64):
                # numpy promoted (an fp32 operand the cast missed): keep storage fp16, and say so.
                self.promoted[proto.name] = str(value.dtype)
                with np.errstate(over="ignore"):
                    value = value.astype(np.float16)
            result[name] = value
        return result


# ============================================================================ the run

@dataclass
class _Plan:
    proto: onnx.ModelProto
    node_ids: list[str]
    op_types: list[str]
    segments: list[tuple[int, int]]
    last_reader: dict[str, int]
    graph_outputs: set[str]
    costs: list[float]


def _make_plan(proto: onnx.ModelProto, analysis, budget: int) -> _Plan:
    nodes = list(proto.graph.node)
    output_bytes = {}
    costs = []
    for node in nodes:
        metrics = analysis.nodes.get(node.name)
        output_bytes[node.name] = metrics.output_bytes if metrics else None
        costs.append(float((metrics.flops or 0) if metrics else 0) + float((metrics.output_bytes or 0) if metrics else 0))
    last_reader: dict[str, int] = {}
    for index, node in enumerate(nodes):
        for name in _reads(node):
            last_reader[name] = index
    total = sum(costs) or 1.0
    return _Plan(proto, [n.name for n in nodes], [n.op_type for n in nodes],
                 _plan_segments(nodes, output_bytes, budget), last_reader, {o.name for o in proto.graph.output},
                 [c / total for c in costs])


def _prune(values: dict[str, np.ndarray], plan: _Plan, after: int) -> None:
    """Drop tensors no node after position `after` reads (graph outputs included: compared already)."""
    for name in [n for n in values if plan.last_reader.get(n, -1) <= after]:
        del values[name]


@dataclass
class _Prepared:
    """The model as the reference runs it, and the inputs to compare on."""

    path: Path
    proto: onnx.ModelProto  # session copy: nodes named by IR id, shapes fixed, constants folded, big weights out
    weights: dict
    analysis: object
    plan: _Plan
    samples: list
    inputs_text: str
    input_shapes: dict
    not_compared: dict
    warnings: list
    started: float


def _prepare(model_path, settings: NumericsSettings) -> _Prepared:
    from engine.targets.cpu import CpuTarget

    started = time.perf_counter()
    path = Path(model_path)
    npz_samples = None
    shapes = dict(settings.input_shapes)
    if not settings.generated:
        ranks = _input_ranks(path)
        npz_samples = load_input_samples(settings.inputs, list(ranks))
        for name, array in npz_samples[0].items():
            stacked = ranks[name] is not None and array.ndim == ranks[name] + 1
            shapes.setdefault(name, array.shape[1:] if stacked else array.shape)
    target = CpuTarget()
    try:
        target.prepare(path, ProfileSettings(runs=1, warmup=0, threads=settings.threads, seed=settings.seed,
                                             input_shapes=shapes, size=settings.size))
        analysis = target.analysis
        template = target.inputs
        input_shapes = {k: tuple(v.shape) for k, v in template.items()}
        if npz_samples is None:
            samples = _generated_samples(template, settings.inputs[0], settings.samples, settings.seed)
            inputs_text = (f"{settings.samples} generated input(s), "
                           + ("uniform [0, 1)" if settings.inputs[0] == "random" else "standard normal")
                           + f", seeds {settings.seed}..{settings.seed + settings.samples - 1}")
        else:
            samples = _split_stacked(npz_samples, input_shapes, ", ".join(settings.inputs))
            samples = [{k: np.ascontiguousarray(v.astype(template[k].dtype, copy=False)) for k, v in s.items()}
                       for s in samples]
            inputs_text = f"{len(samples)} input(s) from {', '.join(settings.inputs)}"
        proto = onnx.load(str(target.session_model_path))
        folded = target.folded_node_ids
        warnings = list(target.load_warnings)
    finally:
        target.close()
    plan = _make_plan(proto, analysis, settings.segment_bytes)
    weights = _take_weights(proto)
    return _Prepared(path, proto, weights, analysis, plan, samples, inputs_text, input_shapes,
                     {node_id: "constant (folded into a weight)" for node_id in folded}, warnings, started)


def _finish(prepared: _Prepared, settings: NumericsSettings, accumulators: Mapping, kind: str, emulation: str,
            samples_done: int, error: str, seconds: Mapping[str, float], notes: Mapping[str, str] = {},
            device: Mapping = {}) -> NumericsResult:
    """The result from the accumulated figures: layers in execution order, first departing / overflow, hints."""
    import onnxruntime as ort
    plan = prepared.plan
    layers: dict[str, LayerNumerics] = {}
    first_departing = first_overflow = None
    for node_id, op_type in zip(plan.node_ids, plan.op_types):
        tensors = accumulators.get(node_id)
        if not tensors:
            continue
        figures = tuple(acc.result(kind) for acc in tensors.values())
        departs = any(t.broken or t.error > settings.tolerance for t in figures)
        layer = LayerNumerics(node_id, op_type, figures, departs, kind, notes.get(node_id, ""))
        layers[node_id] = layer
        if departs and first_departing is None:
            first_departing = node_id
        if layer.overflows and first_overflow is None:
            first_overflow = node_id
    result = NumericsResult(
        model_path=str(prepared.path), mode=settings.mode, precision=settings.precision, kind=kind,
        emulation=emulation, reference=f"fp32, ONNX Runtime {ort.__version__} CPU, graph optimizations off",
        settings=settings.to_dict() | {"input_shapes": {k: list(v) for k, v in prepared.input_shapes.items()},
                                       "segments": len(plan.segments)},
        inputs=prepared.inputs_text, samples_compared=samples_done, layers=layers, first_departing=first_departing,
        first_overflow=first_overflow, tolerance=settings.tolerance, complete=not error, error=error,
        warnings=tuple(prepared.warnings), not_compared=prepared.not_compared,
        seconds=dict(seconds, total=round(time.perf_counter() - prepared.started, 4)), device=device)
    return replace(result, hints=tuple(numerics_hints(result, prepared.analysis.graph)))


def _progress_reporter(plan: _Plan, samples: int, progress: Optional[ProgressCallback]):
    """progress(done, total, message) in thousandths of each input, weighted by the layers' cost."""
    def report(sample_index: int, node_index: int) -> None:
        if progress is None:
            return
        done_share = sum(plan.costs[:node_index + 1])
        progress(int(1000 * sample_index + 1000 * min(1.0, done_share)), 1000 * samples,
                 f"input {sample_index + 1}/{samples}: {plan.node_ids[node_index]}")
    return report


def run_numerics(model_path, settings: Optional[NumericsSettings] = None,
                 progress: Optional[ProgressCallback] = None, cancel: Optional[threading.Event] = None
                 ) -> NumericsResult:
    """Compare every layer of the model in reduced precision with the fp32 reference.

    Cancel (checked between layers) or a failing layer stop the run; the layers
    compared so far are kept (complete=False, error says why).  Raises
    NumericsError / TargetError / ModelLoadError for a model or inputs that cannot be used.
    """
    settings = settings or NumericsSettings()
    prepared = _prepare(model_path, settings)
    proto, plan, weights, samples = prepared.proto, prepared.plan, prepared.weights, prepared.samples
    reference_runner = _OrtSegments(proto, plan.segments, settings.threads, False, weights)
    storage_runner = _OrtSegments(proto, plan.segments, settings.threads, True,
                                  {name: _round_fp16(value) for name, value in weights.items()}) \
        if settings.mode == MODE_STORAGE else None
    evaluator = _Fp16Evaluator(proto, weights) if settings.mode == MODE_COMPUTE else None
    accumulators: dict[str, dict[str, _TensorAccumulator]] = {}
    not_compared = prepared.not_compared
    error, seconds_reference, seconds_reduced = "", 0.0, 0.0
    samples_done = 0
    clock = time.perf_counter
    report = _progress_reporter(plan, len(samples), progress)
    try:
        for sample_index, sample in enumerate(samples):
            reference_live = dict(sample)
            reduced_live = {k: (v.astype(np.float16) if evaluator is not None and v.dtype in (np.float32, np.float64)
                                else _round_fp16(v)) for k, v in sample.items()}
            for segment_index, (start, end) in enumerate(plan.segments):
                if cancel is not None and cancel.is_set():
                    raise _Stopped("cancelled")
                tick = clock()
                reference = reference_runner.run(segment_index, reference_live)
                seconds_reference += clock() - tick
                float_outputs = [n for n, v in reference.items() if v.dtype in (np.float32, np.float64)]
                tick = clock()
                if storage_runner is not None:
                    reduced = storage_runner.run(segment_index, reduced_live, float_outputs)
                    seconds_reduced += clock() - tick
                    for index in range(start, end):
                        _compare_node(proto.graph.node[index], reference, reduced, accumulators, not_compared)
                    report(sample_index, end - 1)
                else:
                    for index in range(start, end):
                        if cancel is not None and cancel.is_set():
                            raise _Stopped("cancelled")
                        tick = clock()
                        reduced = evaluator.run_node(index, reduced_live)
                        seconds_reduced += clock() - tick
                        reduced_live.update(reduced)
                        _compare_node(proto.graph.node[index], reference, reduced, accumulators, not_compared)
                        _prune(reduced_live, plan, index)
                        report(sample_index, index)
                    reduced = {}
                reference_live.update(reference)
                _prune(reference_live, plan, end - 1)
                if storage_runner is not None:
                    reduced_live.update(reduced)
                    _prune(reduced_live, plan, end - 1)
                del reference, reduced
            samples_done += 1
    except _Stopped as stop:
        error = str(stop)
    except KeyboardInterrupt:
        error = "interrupted"
    except NumericsError as exc:
        if not accumulators:
            raise
        error = str(exc)
    notes = {}
    if evaluator is not None and evaluator.promoted:
        names = sorted(evaluator.promoted)
        prepared.warnings.append(f"{len(names)} node(s) computed in fp32 in the fp16 run (numpy promoted a float32 "
                                 f"operand; outputs were rounded to fp16): {', '.join(names[:5])}"
                                 + (" ..." if len(names) > 5 else ""))
        notes = {node_id: f"computed in {dtype} (numpy promotion), output rounded to fp16"
                 for node_id, dtype in evaluator.promoted.items()}
    return _finish(prepared, settings, accumulators, EMULATED, emulation_text(settings.mode), samples_done, error,
                   {"reference": round(seconds_reference, 4), "reduced": round(seconds_reduced, 4)}, notes)


# Initializers above this size are fed to the segments as arrays; smaller ones (shapes, axes, scales)
# stay in the graph, where some kernels expect constants.
_WEIGHT_BYTES = 4096


def _compare_sample(prepared: "_Prepared", reference_runner: "_OrtSegments", sample_index: int,
                    sample: Mapping[str, np.ndarray], other_side, accumulators: dict, report,
                    cancel: Optional[threading.Event]) -> float:
    """Run the fp32 reference over one sample segment by segment and compare every layer's outputs with
    `other_side(segment_index, reference)` (the converted package's or a device's values for them).

    Shared by the package and device paths, which differ only in where the other values come from.
    Returns the seconds the reference took."""
    plan, nodes = prepared.plan, prepared.proto.graph.node
    seconds = 0.0
    live = dict(sample)
    for segment_index, (start, end) in enumerate(plan.segments):
        if cancel is not None and cancel.is_set():
            raise _Stopped("cancelled")
        tick = time.perf_counter()
        reference = reference_runner.run(segment_index, live)
        seconds += time.perf_counter() - tick
        other = other_side(segment_index, reference)
        for index in range(start, end):
            _compare_node(nodes[index], reference, other, accumulators, prepared.not_compared)
        report(sample_index, end - 1)
        live.update(reference)
        _prune(live, plan, end - 1)
    return seconds


def _take_weights(proto: onnx.ModelProto) -> dict[str, np.ndarray]:
    """The large initializers as numpy arrays, removed from `proto`."""
    weights, kept = {}, []
    for tensor in proto.graph.initializer:
        array = numpy_helper.to_array(tensor)
        if array.nbytes > _WEIGHT_BYTES:
            weights[tensor.name] = array
        else:
            kept.append(tensor)
    del proto.graph.initializer[:]
    proto.graph.initializer.extend(kept)
    return weights


class _Stopped(Exception):
    pass


def _input_ranks(path: Path) -> dict[str, Optional[int]]:
    """The model's inputs (weights excluded) and their ranks (None: no shape), read without the weights."""
    from engine.ir import ModelLoadError
    from engine.targets.cpu import _check_onnx_file, _proto_dims
    if not path.exists():
        raise ModelLoadError(str(path), "no such file or directory")
    _check_onnx_file(path)
    try:
        header = onnx.load(str(path), load_external_data=False)
    except Exception as exc:
        raise ModelLoadError(str(path), f"could not be read as onnx: {type(exc).__name__}: {exc}") from None
    weights = {t.name for t in header.graph.initializer}
    ranks = {}
    for value in header.graph.input:
        if value.name not in weights:
            dims = _proto_dims(value)
            ranks[value.name] = None if dims is None else len(dims)
    return ranks


def _compare_node(node: onnx.NodeProto, reference: Mapping[str, np.ndarray], reduced: Mapping[str, np.ndarray],
                  accumulators: dict, not_compared: dict) -> None:
    compared = False
    for name in node.output:
        if not name or name not in reference or name not in reduced:
            continue
        ref = reference[name]
        if ref.dtype not in (np.float32, np.float64):
            continue
        tensors = accumulators.setdefault(node.name, {})
        accumulator = tensors.get(name) or tensors.setdefault(name, _TensorAccumulator(name))
        accumulator.add(ref, reduced[name])
        compared = True
    if not compared and node.name not in accumulators:
        dtypes = sorted({str(reference[n].dtype) for n in node.output if n in reference})
        not_compared.setdefault(node.name, f"no float output ({', '.join(dtypes) or 'no output'})")
    else:
        not_compared.pop(node.name, None)
