"""Build the MIL program from a checked SourceModel and run coremltools on it.

The program is built with the ONNX-inferred static shapes directly in the
requested precision: fp16 programs get fp16 weights and ops, with one cast per
float input and output (Core ML I/O stays fp32, as coremltools' own fp16 pass
does it).  Building fp16 ourselves rather than through coremltools' fp16 pass
keeps op names as we gave them and is much faster on large weights (the pass
scans every weight several times: 15 s of VGG-19's 19 s).

By default ("exact") the passes that merge ops of different source nodes
(conv+batchnorm, matmul+add, pad+conv, transpose cancelling, ...) are left out:
each MIL op then belongs to exactly one ONNX node, so per-op results from a
device land on the node that caused them, and parameters stay comparable.
`optimize="default"` runs coremltools' full pipeline (and its fp16 pass, on an
fp32 program, as coremltools expects); fused nodes are recorded in the layer map.
"""
from __future__ import annotations

import contextlib
import io
import logging
import warnings
from dataclasses import dataclass, field
from typing import Callable, Optional, Sequence

import numpy as np

from engine.convert import ops
from engine.convert.naming import NameTable
from engine.convert.source import SourceModel
from engine.ir import Graph, Node, TensorType

# coremltools passes that combine ops coming from different source nodes.
FUSION_PASSES = frozenset({
    "common::fuse_matmul_weight_bias", "common::fuse_linear_bias", "common::fuse_gelu_tanh_approximation",
    "common::fuse_gelu_exact", "common::fuse_leaky_relu", "common::rank0_expand_dims_swap",
    "common::fuse_squeeze_expand_dims", "common::compose_conv1d", "common::use_reflection_padding",
    "common::merge_consecutive_paddings", "common::fuse_pad_conv", "common::replace_stack_reshape",
    "common::reduce_transposes", "common::fuse_dilated_conv", "common::fuse_conv_scale",
    "common::fuse_conv_bias", "common::fuse_onehot_matmul_to_gather",
    "common::fuse_layernorm_or_instancenorm", "common::fuse_elementwise_to_batchnorm",
    "common::fuse_reduce_mean", "common::fuse_conv_batchnorm", "common::detect_concat_interleave",
    "common::concat_to_pixel_shuffle", "common::fuse_prelu", "common::prelu_to_lrelu",
    "common::merge_consecutive_relus", "common::merge_consecutive_reshapes",
    "common::merge_consecutive_transposes", "common::fuse_transpose_matmul",
    "common::expand_high_rank_reshape_and_transpose", "common::fuse_stack_split",
    "common::remove_redundant_ops", "common::select_optimization", "common::fuse_squeeze_expand_dims",
    # Not a fusion, but it merges equal weight tensors of different layers into one.  Real
    # weights are never equal; generated ones (the onnx light zoo fills every weight with 0.02)
    # would be stored once and counted once, which misstates the model's size.
    "common::const_deduplication",
})

# MIL dtype names -> the IR dtypes they carry.  int64 and float64 tensors of ONNX run as
# int32 and fp32 in Core ML; float16 ONNX tensors are built as fp32 and cast by precision.
_MIL_CARRIES = {"fp32": {"float32", "float16", "float64"}, "fp16": {"float16", "float32"},
                "int32": {"int32", "int64", "int16", "int8", "uint8", "uint16", "uint32"},
                "bool": {"bool"}}


@dataclass
class ShapeCheck:
    checked: int = 0
    unknown: int = 0  # ONNX gave no static type to compare with
    mismatches: list[tuple[str, str, str, str]] = field(default_factory=list)  # (node, tensor, onnx, mil)
    probes_checked: int = 0  # other input shapes (flexible inputs) compared the same way


@dataclass
class BuiltProgram:
    program: object  # coremltools Program
    names: NameTable
    op_source: dict[str, str]  # MIL op name (as built) -> source node id
    input_names: dict[str, str]  # ONNX input -> Core ML input
    output_names: dict[str, str]  # ONNX output -> Core ML output
    removed: dict[str, str]  # node id -> why it produced no MIL op
    shape_check: ShapeCheck
    scalarized_parameters: int = 0
    # (node id, ONNX value, MIL var) of every node result; the vars' names after coremltools'
    # passes tie ONNX tensors to the saved program's (engine.convert.values.tensor_map).
    tensor_vars: list = field(default_factory=list)
    # KV cache pairs held as Core ML state (engine/convert/kv_state.py): state name -> pair.
    states: dict = field(default_factory=dict)


class BuildState:
    def __init__(self, source: SourceModel, names: NameTable, float_dtype):
        self.source = source
        self.names = names
        self.float_dtype = float_dtype  # np.float16 or np.float32: the program's float type
        self.vars: dict[str, object] = {}
        self.alias_of: dict[str, str] = {}  # value produced by a removed node -> that node's id
        self.op_source: dict[str, str] = {}  # every MIL op name handed out -> its node id
        self.producer: dict[str, str] = {}  # ONNX value name -> id of the node whose MIL op made it
        self.built_tensors: list[tuple[str, str, object]] = []  # (node id, ONNX value, MIL var)
        # Source parameter elements that became scalar op arguments (PRelu with one slope ->
        # leaky_relu's alpha): analysis does not count scalars, so the totals differ by these.
        self.scalarized_parameters = 0
        self.kv_bindings: list = []  # engine.convert.kv_state.StateBinding per KV pair held as state

    def var(self, value_name: str):
        if value_name not in self.vars:
            raise ops.Unsupported(f"tensor '{value_name}' has no producer in the converted program")
        return self.vars[value_name]

    def op_name(self, node: Node, role: Optional[str]) -> str:
        prefix = self.names.prefix(node.id)
        name = prefix if role is None else f"{prefix}__{role}"
        self.op_source[name] = node.id
        return name

    def bind(self, value_name: str, var, node_id: Optional[str] = None) -> None:
        self.vars[value_name] = var
        if node_id is not None:
            self.producer[value_name] = node_id


def load_coremltools():
    """Import coremltools without its Linux import-time log lines ("Failed to load _MLModelProxy").

    Prediction is macOS-only, which the conversion already knows; the lines would only
    alarm the person running it.
    """
    logger = logging.getLogger("coremltools")
    previous = logger.level
    logger.setLevel(logging.ERROR)
    try:
        import coremltools
    finally:
        logger.setLevel(previous)
    return coremltools


def mil_target(name: str):
    ct = load_coremltools()

    target = getattr(ct.target, name, None) if name else None
    if target is None or target < ct.target.iOS15:
        allowed = "iOS15..iOS18, macOS12..macOS15, tvOS15..tvOS18, watchOS8..watchOS11"
        raise ValueError(f"deployment target {name!r} is not one ML Programs run on ({allowed})")
    return target


def mil_dtype_name(var) -> str:
    from coremltools.converters.mil.mil import types
    return types.builtin_to_string(var.dtype)


def build_program(source: SourceModel, target_name: str, precision: str = "fp16",
                  progress: Optional[Callable[[str], None]] = None,
                  probe: Optional[tuple[dict, Graph]] = None, kv_pairs: Sequence = ()) -> BuiltProgram:
    """The MIL program of `source`, its shapes checked against ONNX's.

    Flexible inputs get symbolic sizes on their varying axes.  `probe` = (input shapes, our
    IR's graph at those shapes) builds a throw-away program with those inputs fixed instead
    (the translations still take the flexible-shape forms), checked against that graph: MIL
    gives the outputs of symbolic sizes fresh symbols rather than expressions, so the check
    of a flexible program at a given size is a build at that size.  `kv_pairs`
    (engine.convert.kv_state.KVPair) become Core ML states instead of inputs and outputs.
    """
    from engine.convert import kv_state
    ops.bind_builder()
    mb = ops.mb
    from coremltools.converters.mil.mil import Function, Program, get_new_symbol, types

    target = mil_target(target_name)
    graph = source.graph
    names = NameTable()
    held = {pair.past for pair in kv_pairs} | {pair.present for pair in kv_pairs}
    input_names = {name: names.reserve(name) for name in graph.inputs if name not in held}
    output_names = {name: names.reserve(name) for name in graph.outputs if name not in held}
    state_names = {names.reserve(pair.present): pair for pair in kv_pairs}
    fp16 = precision == "fp16"
    state = BuildState(source, names, np.float16 if fp16 else np.float32)
    placeholders = {}
    for onnx_name, mil_name in input_names.items():
        value_type = graph.value_type(onnx_name)
        dtype = types.fp32 if value_type.dtype in ("float32", "float16", "float64") else types.int32
        shape = list(value_type.shape) or [1]  # Core ML inputs have rank >= 1: a scalar comes as [1]
        if probe is not None:
            shape = list(probe[0].get(onnx_name, shape))
        else:
            for axis in sorted(source.flexible.get(onnx_name, ())):
                shape[axis] = get_new_symbol()  # a size that varies at run time
        placeholders[mil_name] = mb.placeholder(shape=tuple(shape), dtype=dtype, name=mil_name)
    for state_name, pair in state_names.items():  # Core ML states hold fp16 only
        placeholders[state_name] = mb.state_tensor_placeholder(shape=pair.present_shape, dtype=types.fp16)

    compute = [n for n in source.order if n.id not in source.folded]
    op_source = state.op_source
    removed: dict[str, str] = {}
    shape_check = ShapeCheck()
    step = max(1, len(compute) // 10)
    with Function(placeholders, opset_version=target) as function:
        for onnx_name, mil_name in input_names.items():
            var = function.inputs[mil_name]
            if not graph.value_type(onnx_name).shape:
                var = mb.squeeze(x=var, axes=[0], name=f"{mil_name}__scalar")  # plumbing: no source node
            if fp16 and ops._is_float_var(var):
                # Core ML I/O stays fp32; "<input>__to_fp16" belongs to no source node.
                var = mb.cast(x=var, dtype="fp16", name=f"{mil_name}__to_fp16")
            state.bind(onnx_name, var)
        state.kv_bindings = [kv_state.StateBinding(pair, name, function.inputs[name])
                             for name, pair in state_names.items()]
        kv_state.read_states(state.kv_bindings, state.bind, "fp16" if fp16 else "fp32")
        for position, node in enumerate(compute, start=1):
            ctx = ops.NodeContext(node, source, state)
            if ops.is_removed(node):
                state.bind(node.outputs[0], ctx.x(0) if not ctx.is_const(0) else None)
                state.alias_of[node.outputs[0]] = node.id
                removed[node.id] = f"{node.op_type} does nothing at inference"
            else:
                ops.lookup(node).build(ctx)
                state.built_tensors.extend((node.id, name, state.vars[name]) for name in node.outputs
                                           if name and name in state.vars)
            if progress and (position % step == 0 or position == len(compute)):
                progress(f"built {position}/{len(compute)} ONNX nodes ({len(op_source)} MIL ops)")
        kv_state.write_states(state.kv_bindings, state.var)
        outputs = []
        used_vars: set[int] = set()
        for onnx_name, mil_name in output_names.items():
            if onnx_name not in state.vars and source.is_constant(onnx_name):
                _bind_constant_output(state, source, onnx_name)
            var = state.vars[onnx_name]
            owner = state.alias_of.get(onnx_name)
            if fp16 and ops._is_float_var(var):
                var = mb.cast(x=var, dtype="fp32", name=mil_name)  # back to fp32 I/O: no source node
            elif var.op is None or id(var) in used_vars or owner is not None:
                # A graph input, a tensor that is already another output, or the result of an
                # Identity/Dropout: an identity op carries the output name (its node owns it).
                var = mb.identity(x=var, name=mil_name)
                if owner is not None:
                    op_source[mil_name] = owner
                    removed.pop(owner, None)
            else:
                var.set_name(mil_name)
                if onnx_name in state.producer:
                    # Passes may rename the op but keep this name on its output: look it up too.
                    op_source[mil_name] = state.producer[onnx_name]
            used_vars.add(id(var))
            outputs.append(var)
        function.set_outputs(outputs)
    program = Program()
    program.add_function("main", function)
    if probe is None:
        _compare_shapes(state, graph, shape_check, "", source.flexible)
    else:
        label = ", ".join(f"{name}={'x'.join(map(str, shape))}" for name, shape in probe[0].items())
        _compare_shapes(state, probe[1], shape_check, f" (input {label})", {})
    return BuiltProgram(program, names, op_source, input_names, output_names, removed, shape_check,
                        state.scalarized_parameters, state.built_tensors, state_names)


def _bind_constant_output(state: BuildState, source: SourceModel, onnx_name: str) -> None:
    """A graph output that folding made constant (a Shape of a fixed-size input, a Constant):
    Core ML programs output only op results, so an identity op of the value carries it.  The
    folded node that produced it owns that op (or the output itself, for an initializer)."""
    mb = ops.mb
    value = source.constant(onnx_name)
    producer = source.producer(onnx_name)
    owner = producer.id if producer is not None else onnx_name
    array = ops.mil_array(np.asarray(value))
    if array.dtype.kind == "f":
        array = array.astype(state.float_dtype)
    name = state.op_name(producer, "constant_output") if producer is not None else f"{onnx_name}__constant_output"
    var = mb.identity(x=array, name=name)
    state.bind(onnx_name, var, owner)
    state.built_tensors.append((owner, onnx_name, var))


def _compare_shapes(state: BuildState, graph, check: ShapeCheck, label: str,
                    flexible: dict[str, frozenset]) -> None:
    """Compare every built tensor's MIL type with the ONNX-inferred type in `graph` (verification).

    A symbolic MIL size passes on an axis that varies (`flexible`), and only there."""
    for node_id, name, var in state.built_tensors:
        expected: Optional[TensorType] = graph.value_type(name)
        if expected is None or not expected.is_static:
            check.unknown += 1
            continue
        check.checked += 1
        shape = tuple(int(d) if isinstance(d, int) or hasattr(d, "__index__") else d for d in var.shape)
        dtype = mil_dtype_name(var)
        varying = flexible.get(name, frozenset())
        shape_ok = len(shape) == len(expected.shape) and all(
            (isinstance(d, int) and d == e) or (not isinstance(d, int) and axis in varying)
            for axis, (d, e) in enumerate(zip(shape, expected.shape)))
        dtype_ok = expected.dtype in _MIL_CARRIES.get(dtype, {dtype})
        if not (shape_ok and dtype_ok):
            check.mismatches.append((node_id, name, f"{expected.dtype}[{expected.shape_text()}]{label}",
                                     f"{dtype}[{'x'.join(str(d) for d in shape) or 'scalar'}]"))


def pass_pipeline(optimize: str):
    import coremltools as ct

    pipeline = ct.PassPipeline.DEFAULT
    if optimize == "exact":
        pipeline.remove_passes([p for p in pipeline.passes if p in FUSION_PASSES])
    return pipeline


def run_coremltools(built: BuiltProgram, target_name: str, input_types: list, optimize: str,
                    skip_model_load: bool, fp16_pass: bool = False):
    """ct.convert on the built program.  Returns (mlmodel, captured warnings).

    An "exact" program already has its precision, so coremltools' fp16 pass is not run
    (compute_precision=FLOAT32 means "do not cast", not "compute in fp32").
    """
    import coremltools as ct

    compute_precision = ct.precision.FLOAT16 if fp16_pass else ct.precision.FLOAT32
    captured: list[str] = []
    stderr = io.StringIO()
    ct_logger = logging.getLogger("coremltools")
    previous_level = ct_logger.level
    ct_logger.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings(record=True) as caught, contextlib.redirect_stderr(stderr):
            warnings.simplefilter("always")
            mlmodel = ct.convert(built.program, convert_to="mlprogram",
                                 minimum_deployment_target=mil_target(target_name),
                                 compute_precision=compute_precision, inputs=input_types or None,
                                 pass_pipeline=pass_pipeline(optimize), skip_model_load=skip_model_load)
    finally:
        ct_logger.setLevel(previous_level)
    for warning in caught:
        if issubclass(warning.category, ResourceWarning):
            continue
        text = str(warning.message)
        if "renamed" not in text and text not in captured:
            captured.append(text)
    return mlmodel, captured
