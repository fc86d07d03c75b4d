"""ONNX op -> MIL ops, one function per ONNX op.

Every supported op has a *check* (pure: reads attributes, constant inputs and
static shapes, returns the reasons it cannot be converted; [] when it can) and
a *build* (emits MIL ops through `coremltools.converters.mil.Builder`).  The
converter runs every check over the whole graph before it builds anything, so
all problems are reported at once.

Naming: a build gives each MIL op a name from `ctx.name(role)`: the node's
prefix for the op that produces the node's result, `prefix__role` for helper
ops.  That is what makes the layer map exact.

Shapes: the converter works on static shapes (the ONNX-inferred ones of our
IR, at the default shape of flexible inputs); where a translation needs a size
(Reshape's 0/-1, Slice clamping, Resize targets, ceil-mode pooling) it reads it
from there.  With flexible inputs, `flexible_problems` refuses the cases where
such a size sits on an axis that varies, and the builds take size-free forms
(MIL "same" padding, ceil_mode, scale-factor resizing) where those exist.

Semantics notes that matter for correctness are next to each op; the
coverage table in docs/conversion.md summarises the limits.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable, Optional, Sequence

import numpy as np

from engine.ir import FLOAT_DTYPES, Node, TensorType

# coremltools is imported lazily (it takes a second and logs on Linux); `mb` is
# bound by `bind_builder()` before any build function runs.
mb: Any = None


def bind_builder() -> None:
    global mb
    if mb is None:
        from engine.convert.builder import load_coremltools
        load_coremltools()
        from coremltools.converters.mil import Builder
        mb = Builder


class Unsupported(Exception):
    """Raised by a build when a case slipped through its check (reported like a check failure)."""


# ----------------------------------------------------------------------------- context

class NodeContext:
    """What an op function sees of one ONNX node: attributes, inputs, shapes, names."""

    def __init__(self, node: Node, source, state=None):
        self.node = node
        self.source = source  # engine.convert.source.SourceModel
        self.state = state  # engine.convert.builder.BuildState while building, None while checking
        self.opset = source.opset
        # The float type this node computes in: the program's, except fp32 for a node whose
        # constants do not fit fp16 (coremltools' own fp16 pass makes the same exception).
        self.float_dtype = np.float32
        if state is not None:
            self.float_dtype = state.float_dtype
            if self.float_dtype == np.float16 and self._constants_overflow_fp16():
                self.float_dtype = np.float32

    @property
    def float_name(self) -> str:
        return "fp16" if self.float_dtype == np.float16 else "fp32"

    def _constants_overflow_fp16(self) -> bool:
        for index in range(len(self.node.inputs)):
            if self.is_const(index):
                array = self.const(index)
                if np.issubdtype(array.dtype, np.floating) and array.size and fp16_overflow(array):
                    return True
        return False

    # -- attributes and inputs
    def attr(self, name: str, default=None):
        return self.node.attributes.get(name, default)

    def has_input(self, index: int) -> bool:
        return index < len(self.node.inputs) and bool(self.node.inputs[index])

    def input_count(self) -> int:
        return sum(1 for name in self.node.inputs if name)

    def is_const(self, index: int) -> bool:
        return self.has_input(index) and self.source.is_constant(self.node.inputs[index])

    def const(self, index: int) -> np.ndarray:
        return self.source.constant(self.node.inputs[index])

    def in_type(self, index: int) -> Optional[TensorType]:
        return self.source.value_type(self.node.inputs[index]) if self.has_input(index) else None

    def in_shape(self, index: int) -> Optional[tuple[int, ...]]:
        """Static shape of an input, None when not fully known."""
        if self.is_const(index):
            return tuple(self.const(index).shape)
        t = self.in_type(index)
        return tuple(t.shape) if t is not None and t.is_static else None  # type: ignore[arg-type]

    def out_shape(self, index: int = 0) -> Optional[tuple[int, ...]]:
        if index >= len(self.node.outputs) or not self.node.outputs[index]:
            return None
        t = self.source.value_type(self.node.outputs[index])
        return tuple(t.shape) if t is not None and t.is_static else None  # type: ignore[arg-type]

    def flexible_axes(self, index: int, output: bool = False) -> frozenset:
        """Axes of an input (or output) whose size varies at run time (flexible input shapes)."""
        names = self.node.outputs if output else self.node.inputs
        if index >= len(names) or not names[index]:
            return frozenset()
        return self.source.flexible.get(names[index], frozenset())

    @property
    def touches_flexible(self) -> bool:
        return any(name in self.source.flexible for name in tuple(self.node.inputs) + tuple(self.node.outputs)
                   if name)

    def flexible_spatial(self) -> bool:
        return any(axis >= 2 for axis in self.flexible_axes(0))

    def output_used(self, index: int) -> bool:
        if index >= len(self.node.outputs) or not self.node.outputs[index]:
            return False
        name = self.node.outputs[index]
        return name in self.source.graph.outputs or any(
            name in n.inputs for n in self.source.graph.nodes if n.id not in self.source.folded)

    # -- building
    def x(self, index: int = 0):
        """An input as a MIL Var, or a numpy array when it is constant (floats in the node's type)."""
        if self.is_const(index):
            return self.array(self.const(index))
        var = self.state.var(self.node.inputs[index])
        if _is_float_var(var) and _mil_float(var) != self.float_name:
            var = mb.cast(x=var, dtype=self.float_name, name=self.name(f"input{index}_to_{self.float_name}"))
        return var

    def array(self, array: np.ndarray) -> np.ndarray:
        """A constant for MIL: ints as int32, floats in the node's float type."""
        array = mil_array(array)
        if np.issubdtype(array.dtype, np.floating) and array.dtype != self.float_dtype:
            array = array.astype(self.float_dtype)
        return array

    def float(self, value: float):
        """A scalar argument (alpha, epsilon, a bound) in the node's float type."""
        return self.float_dtype(value)

    def name(self, role: Optional[str] = None) -> str:
        return self.state.op_name(self.node, role)

    def set_output(self, index: int, var) -> None:
        program_float = "fp16" if self.state.float_dtype == np.float16 else "fp32"
        if _is_float_var(var) and _mil_float(var) != program_float:
            var = mb.cast(x=var, dtype=program_float, name=self.name(f"output{index}_to_{program_float}"))
        self.state.bind(self.node.outputs[index], var, self.node.id)


def _mil_float(var) -> str:
    from coremltools.converters.mil.mil import types
    return types.builtin_to_string(var.dtype)


def _is_float_var(var) -> bool:
    return _mil_float(var) in ("fp16", "fp32")


FP16_MAX = 65504.0


def fp16_overflow(array: np.ndarray) -> bool:
    """True when a finite value does not fit fp16 (magnitudes >= 1e38 are infinities in effect)."""
    magnitude = np.abs(array)
    if not magnitude.size or float(magnitude.max()) <= FP16_MAX:
        return False
    return float(np.max(magnitude, where=magnitude < 1e38, initial=0.0)) > FP16_MAX


def mil_array(array: np.ndarray) -> np.ndarray:
    """A constant in a dtype MIL accepts: float64 -> float32, int64 -> int32, float16 -> float32."""
    array = np.asarray(array)
    if array.dtype in (np.float64, np.float16):
        return array.astype(np.float32)
    if array.dtype == np.int64 or array.dtype == np.uint64 or array.dtype == np.uint32:
        if array.size and (array.max() > np.iinfo(np.int32).max or array.min() < np.iinfo(np.int32).min):
            array = np.clip(array, np.iinfo(np.int32).min, np.iinfo(np.int32).max)
        return array.astype(np.int32)
    return array


@dataclass(frozen=True)
class OpDef:
    build: Callable[[NodeContext], None]
    check: Callable[[NodeContext], list[str]]


# Translations by ONNX domain, then op type.  The domain matters: ONNX Runtime's contrib ops
# (com.microsoft) reuse names of standard ops with other inputs and meanings (Attention,
# RotaryEmbedding, Gelu, ...).  OPS is the default domain's table ("" and "ai.onnx").
OPS: dict[str, OpDef] = {}
DOMAIN_OPS: dict[str, dict[str, OpDef]] = {"": OPS}
# Ops that produce no MIL op: their output is their (first) input.
REMOVED_OPS = {"Identity", "Dropout"}


def _no_problems(ctx: NodeContext) -> list[str]:
    return []


def _domain_key(domain: str) -> str:
    return "" if domain in ("", "ai.onnx") else domain


def op(*names: str, check: Callable[[NodeContext], list[str]] = _no_problems, domain: str = ""):
    def register(build):
        table = DOMAIN_OPS.setdefault(_domain_key(domain), {})
        for op_name in names:
            table[op_name] = OpDef(build, check)
        return build
    return register


def lookup(node: Node) -> Optional[OpDef]:
    """The translation of this node's op in its domain (None when there is none)."""
    return DOMAIN_OPS.get(_domain_key(node.domain), {}).get(node.op_type)


def is_removed(node: Node) -> bool:
    """An Identity/Dropout of the default domain: no MIL op, its output is its input."""
    return node.op_type in REMOVED_OPS and _domain_key(node.domain) == ""


# ----------------------------------------------------------------------------- shared checks

def _float_input(ctx: NodeContext, index: int = 0) -> list[str]:
    t = ctx.in_type(index)
    if t is not None and t.dtype not in ("float32", "float16", "float64"):
        return [f"input {index} is {t.dtype}; Core ML runs this op on floating-point tensors only"]
    return []


def _const_inputs(ctx: NodeContext, indices: Sequence[int], what: str) -> list[str]:
    problems = []
    for index in indices:
        if ctx.has_input(index) and not ctx.is_const(index):
            problems.append(f"{what} (input {index}) is computed at run time; Core ML needs it constant")
    return problems


def _static_input(ctx: NodeContext, index: int = 0) -> list[str]:
    if ctx.in_shape(index) is None:
        return [f"the shape of input {index} is not known statically; fix the input shapes (--shape)"]
    return []


def _static_output(ctx: NodeContext, index: int = 0) -> list[str]:
    if ctx.out_shape(index) is None:
        return [f"the shape of output {index} is not known statically; fix the input shapes (--shape)"]
    return []


def _rank(ctx: NodeContext, index: int = 0) -> Optional[int]:
    shape = ctx.in_shape(index)
    if shape is not None:
        return len(shape)
    t = ctx.in_type(index)
    return t.rank if t is not None else None


def _axes_from(ctx: NodeContext, input_index: int, attr_name: str = "axes") -> Optional[list[int]]:
    """Axes given as an attribute (older opsets) or as a constant input (newer ones)."""
    if ctx.has_input(input_index):
        return [int(a) for a in np.asarray(ctx.const(input_index)).reshape(-1)]
    value = ctx.attr(attr_name)
    return None if value is None else [int(a) for a in value]


# ----------------------------------------------------------------------------- convolution

def _spatial_pads(ctx: NodeContext, in_shape, kernel, strides, dilations) -> tuple[list[int], list[int]]:
    """(begins, ends) of a Conv/Pool window from pads or auto_pad, with ONNX's SAME rules."""
    spatial = len(kernel)
    auto_pad = ctx.attr("auto_pad", "NOTSET")
    if auto_pad in ("SAME_UPPER", "SAME_LOWER"):
        begins, ends = [], []
        for i in range(spatial):
            size = in_shape[2 + i]
            out = -(-size // strides[i])
            effective = (kernel[i] - 1) * dilations[i] + 1
            total = max((out - 1) * strides[i] + effective - size, 0)
            begin = total // 2 if auto_pad == "SAME_UPPER" else total - total // 2
            begins.append(begin)
            ends.append(total - begin)
        return begins, ends
    if auto_pad == "VALID":
        return [0] * spatial, [0] * spatial
    pads = list(ctx.attr("pads", [0] * (2 * spatial)))
    return [int(p) for p in pads[:spatial]], [int(p) for p in pads[spatial:]]


def _interleave(begins: Sequence[int], ends: Sequence[int]) -> list[int]:
    """ONNX [b0, b1, e0, e1] -> MIL [b0, e0, b1, e1]."""
    return [int(v) for pair in zip(begins, ends) for v in pair]


def _check_conv(ctx: NodeContext) -> list[str]:
    problems = _float_input(ctx)
    if ctx.node.op_type == "ConvTranspose":
        # MIL's conv_transpose takes a constant weight only; conv takes one computed at run time.
        problems += _const_inputs(ctx, [1], "the weight") + _const_inputs(ctx, [2], "the bias")
    elif ctx.in_shape(1) is None:
        problems.append("the shape of the weight (input 1) is not known statically")
    rank = _rank(ctx)
    if rank is not None and not 3 <= rank <= 5:
        problems.append(f"input rank {rank}: Core ML convolutions are 1-D, 2-D or 3-D")
    problems += _static_input(ctx)
    if ctx.node.op_type == "ConvTranspose":
        problems += _static_output(ctx)
        if ctx.attr("auto_pad", "NOTSET") not in ("NOTSET", "SAME_UPPER", "SAME_LOWER", "VALID"):
            problems.append(f"auto_pad {ctx.attr('auto_pad')!r} is not an ONNX value")
        if rank is not None and rank > 4 and any(ctx.attr("output_padding", ()) or ()):
            problems.append("output_padding on a 3-D ConvTranspose is not supported")
    return problems


@op("Conv", check=_check_conv)
def conv(ctx: NodeContext) -> None:
    x = ctx.x(0)
    weight = ctx.x(1)  # a constant, or a tensor computed at run time (MIL's conv takes both)
    kernel = list(ctx.in_shape(1)[2:])
    spatial = len(kernel)
    strides = [int(s) for s in ctx.attr("strides", [1] * spatial)]
    dilations = [int(d) for d in ctx.attr("dilations", [1] * spatial)]
    kwargs = dict(x=x, weight=weight, strides=strides, dilations=dilations, groups=int(ctx.attr("group", 1)))
    auto_pad = ctx.attr("auto_pad", "NOTSET")
    if ctx.flexible_spatial() and auto_pad in ("SAME_UPPER", "SAME_LOWER"):
        # The pads depend on the input size: MIL's "same" ("same_lower") follows the same rule.
        kwargs["pad_type"] = "same" if auto_pad == "SAME_UPPER" else "same_lower"
    else:
        begins, ends = _spatial_pads(ctx, ctx.in_shape(0), kernel, strides, dilations)
        kwargs.update(pad_type="custom", pad=_interleave(begins, ends))
    if ctx.has_input(2) and not ctx.is_const(2):
        # MIL's bias must be constant: a run-time bias is added after, per channel.
        y = mb.conv(**kwargs, name=ctx.name("conv"))
        bias = mb.reshape(x=ctx.x(2), shape=[-1] + [1] * spatial, name=ctx.name("bias_per_channel"))
        ctx.set_output(0, mb.add(x=y, y=bias, name=ctx.name()))
        return
    if ctx.has_input(2):
        kwargs["bias"] = ctx.array(ctx.const(2))
    ctx.set_output(0, mb.conv(**kwargs, name=ctx.name()))


def conv_transpose_head_and_size(ctx: NodeContext) -> tuple[list[int], list[int], list[int]]:
    """(pad before, full size incl. output_padding, output size) per spatial axis.

    ONNX output = full[head : head + out] where full is the unpadded transposed
    convolution extended by output_padding at the end.  The head follows ONNX
    Runtime (checked against it): explicit pads give head = pads_begin; with
    output_shape or SAME_* auto_pad, total = full - out and head = total // 2
    for SAME_UPPER, total - total // 2 otherwise, 0 when total < 0.
    """
    in_shape = ctx.in_shape(0)
    kernel = list(ctx.in_shape(1)[2:])
    spatial = len(kernel)
    strides = [int(s) for s in ctx.attr("strides", [1] * spatial)]
    dilations = [int(d) for d in ctx.attr("dilations", [1] * spatial)]
    output_padding = [int(p) for p in (ctx.attr("output_padding") or [0] * spatial)]
    out_shape = ctx.out_shape(0)
    auto_pad = ctx.attr("auto_pad", "NOTSET")
    output_shape_attr = ctx.attr("output_shape")
    heads, fulls, outs = [], [], []
    pads = list(ctx.attr("pads", [0] * (2 * spatial)))
    for i in range(spatial):
        full = (in_shape[2 + i] - 1) * strides[i] + (kernel[i] - 1) * dilations[i] + 1 + output_padding[i]
        out = out_shape[2 + i]
        if output_shape_attr is not None or auto_pad in ("SAME_UPPER", "SAME_LOWER"):
            total = full - out
            if total < 0:
                head = 0
            elif auto_pad == "SAME_UPPER":
                head = total // 2
            else:
                head = total - total // 2
        elif auto_pad == "VALID":
            head = 0
        else:
            head = int(pads[i])
        heads.append(head)
        fulls.append(full)
        outs.append(out)
    return heads, fulls, outs


@op("ConvTranspose", check=_check_conv)
def conv_transpose(ctx: NodeContext) -> None:
    x = ctx.x(0)
    weight = ctx.array(ctx.const(1))
    spatial = weight.ndim - 2
    strides = [int(s) for s in ctx.attr("strides", [1] * spatial)]
    dilations = [int(d) for d in ctx.attr("dilations", [1] * spatial)]
    output_padding = [int(p) for p in (ctx.attr("output_padding") or [0] * spatial)]
    heads, fulls, outs = conv_transpose_head_and_size(ctx)
    bias = ctx.array(ctx.const(2)) if ctx.has_input(2) else None
    # MIL's custom pad crops the unpadded result (without output_padding): begin = head,
    # end = what is left after head + out.  Past the end of the unpadded result ONNX has
    # output_padding rows that hold only the bias: pad zeros there, then add the bias.
    unpadded = [f - p for f, p in zip(fulls, output_padding)]
    crop_end = [u - (h + o) for u, h, o in zip(unpadded, heads, outs)]
    extend = [max(0, -c) for c in crop_end]
    if any(h < 0 for h in heads):
        raise Unsupported("the output starts before the transposed convolution's first row")
    kwargs = dict(x=x, weight=weight, strides=strides, dilations=dilations, pad_type="custom",
                  pad=_interleave(heads, [max(c, 0) for c in crop_end]), groups=int(ctx.attr("group", 1)))
    if not any(extend):
        if bias is not None:
            kwargs["bias"] = bias
        ctx.set_output(0, mb.conv_transpose(**kwargs, name=ctx.name()))
        return
    y = mb.conv_transpose(**kwargs, name=ctx.name("conv_transpose"))
    rank = spatial + 2
    y = mb.pad(x=y, pad=[0, 0] * 2 + _interleave([0] * spatial, extend), mode="constant",
               constant_val=0.0, name=ctx.name("output_padding") if bias is not None else ctx.name())
    if bias is not None:
        y = mb.add(x=y, y=bias.reshape([-1] + [1] * spatial), name=ctx.name())
    assert rank == len(ctx.out_shape(0))
    ctx.set_output(0, y)


# ----------------------------------------------------------------------------- normalisation

def _check_batchnorm(ctx: NodeContext) -> list[str]:
    problems = _float_input(ctx)
    if ctx.is_const(4) and not all(ctx.is_const(i) for i in (1, 2, 3)):
        # written out, the constant variance would be stored as rsqrt(variance + epsilon), a weight
        # the weights check cannot trace to the source
        problems.append("a constant variance beside a scale, bias or mean computed at run time is not "
                        "supported (all four constant, or the variance computed at run time, are)")
    if ctx.attr("training_mode", 0):
        problems.append("training_mode=1 (batch statistics) is not an inference op")
    if ctx.opset < 9 and not ctx.attr("spatial", 1):
        problems.append("spatial=0 (per-activation statistics) is not supported")
    for index in (1, 2, 3, 4):
        if ctx.output_used(index):
            problems.append(f"output {index} (running statistics) is used; inference has none")
    rank = _rank(ctx)
    if rank is not None and not 2 <= rank <= 5:
        problems.append(f"input rank {rank}: Core ML batch_norm takes rank 2 to 5")
    return problems


@op("BatchNormalization", check=_check_batchnorm)
def batch_normalization(ctx: NodeContext) -> None:
    if not all(ctx.is_const(i) for i in (1, 2, 3, 4)):
        # MIL's batch_norm takes constant statistics only: written out (ops_general).
        from engine.convert.ops_general import batch_norm_runtime_statistics
        batch_norm_runtime_statistics(ctx)
        return
    x = ctx.x(0)
    scale, bias, mean, variance = (ctx.array(ctx.const(i)).reshape(-1) for i in (1, 2, 3, 4))
    epsilon = ctx.float(ctx.attr("epsilon", 1e-5))
    if x.rank == 2:  # [N, C]: batch_norm wants a spatial axis
        x = mb.expand_dims(x=x, axes=[-1], name=ctx.name("expand"))
        y = mb.batch_norm(x=x, mean=mean, variance=variance, gamma=scale, beta=bias, epsilon=epsilon,
                          name=ctx.name("batch_norm"))
        ctx.set_output(0, mb.squeeze(x=y, axes=[-1], name=ctx.name()))
        return
    ctx.set_output(0, mb.batch_norm(x=x, mean=mean, variance=variance, gamma=scale, beta=bias,
                                    epsilon=epsilon, name=ctx.name()))


def _check_lrn(ctx: NodeContext) -> list[str]:
    problems = _float_input(ctx)
    size = int(ctx.attr("size", 0))
    if size % 2 == 0:
        problems.append(f"size {size} is even: ONNX centres an even window off-centre, Core ML does not")
    rank = _rank(ctx)
    if rank is not None and not 3 <= rank <= 4:
        problems.append(f"input rank {rank}: Core ML local_response_norm takes rank 3 or 4")
    return problems


@op("LRN", check=_check_lrn)
def lrn(ctx: NodeContext) -> None:
    # Both are x / (k + alpha / size * sum(x^2 over size channels)) ^ beta.
    ctx.set_output(0, mb.local_response_norm(
        x=ctx.x(0), size=int(ctx.attr("size")), alpha=ctx.float(ctx.attr("alpha", 1e-4)),
        beta=ctx.float(ctx.attr("beta", 0.75)), k=ctx.float(ctx.attr("bias", 1.0)), name=ctx.name()))


# ----------------------------------------------------------------------------- activations

_UNARY = {
    "Relu": "relu", "Sigmoid": "sigmoid", "Tanh": "tanh", "Softplus": "softplus", "Softsign": "softsign",
    "Exp": "exp", "Log": "log", "Sqrt": "sqrt", "Abs": "abs", "Erf": "erf", "Floor": "floor",
    "Ceil": "ceil", "Reciprocal": "inverse", "Sin": "sin", "Cos": "cos", "Round": "round", "Sign": "sign",
}


def _check_unary(ctx: NodeContext) -> list[str]:
    return _float_input(ctx)


def _unary(ctx: NodeContext) -> None:
    function = getattr(mb, _UNARY[ctx.node.op_type])
    # MIL's inverse computes 1 / (x + epsilon) with epsilon 1e-4 unless told otherwise.
    kwargs = {"epsilon": ctx.float(0.0)} if ctx.node.op_type == "Reciprocal" else {}
    ctx.set_output(0, function(x=ctx.x(0), name=ctx.name(), **kwargs))


for _onnx_name in _UNARY:
    op(_onnx_name, check=_check_unary)(_unary)


@op("Neg", check=_check_unary)
def neg(ctx: NodeContext) -> None:
    ctx.set_output(0, mb.mul(x=ctx.x(0), y=ctx.float(-1.0), name=ctx.name()))


def _clip_bounds(ctx: NodeContext) -> tuple[Optional[float], Optional[float]]:
    if ctx.opset < 11:
        low, high = ctx.attr("min"), ctx.attr("max")
    else:
        low = float(np.asarray(ctx.const(1)).reshape(-1)[0]) if ctx.has_input(1) else None
        high = float(np.asarray(ctx.const(2)).reshape(-1)[0]) if ctx.has_input(2) else None
    low = None if low is None or low <= -3.4e38 else float(low)
    high = None if high is None or high >= 3.4e38 else float(high)
    return low, high


def _check_clip(ctx: NodeContext) -> list[str]:
    return _float_input(ctx)


@op("Clip", check=_check_clip)
def clip(ctx: NodeContext) -> None:
    x = ctx.x(0)
    if any(ctx.has_input(i) and not ctx.is_const(i) for i in (1, 2)):
        # Bounds computed at run time: max then min, which gives `max` where min > max, as ONNX says.
        y = mb.maximum(x=x, y=ctx.x(1), name=ctx.name("at_least_min" if ctx.has_input(2) else None)) \
            if ctx.has_input(1) else x
        if ctx.has_input(2):
            y = mb.minimum(x=y, y=ctx.x(2), name=ctx.name())
        ctx.set_output(0, y)
        return
    low, high = _clip_bounds(ctx)
    name = ctx.name()
    if low == 0.0 and high == 6.0:
        y = mb.relu6(x=x, name=name)  # its own op in Core ML (and on the Neural Engine)
    elif low == 0.0 and high is None:
        y = mb.relu(x=x, name=name)
    elif low is not None and high is not None:
        y = mb.clip(x=x, alpha=ctx.float(low), beta=ctx.float(high), name=name)
    elif low is not None:
        y = mb.maximum(x=x, y=ctx.float(low), name=name)
    elif high is not None:
        y = mb.minimum(x=x, y=ctx.float(high), name=name)
    else:
        y = mb.identity(x=x, name=name)
    ctx.set_output(0, y)


@op("LeakyRelu", check=_check_unary)
def leaky_relu(ctx: NodeContext) -> None:
    ctx.set_output(0, mb.leaky_relu(x=ctx.x(0), alpha=ctx.float(ctx.attr("alpha", 0.01)), name=ctx.name()))


@op("Elu", check=_check_unary)
def elu(ctx: NodeContext) -> None:
    ctx.set_output(0, mb.elu(x=ctx.x(0), alpha=ctx.float(ctx.attr("alpha", 1.0)), name=ctx.name()))


@op("ThresholdedRelu", check=_check_unary)
def thresholded_relu(ctx: NodeContext) -> None:
    ctx.set_output(0, mb.thresholded_relu(x=ctx.x(0), alpha=ctx.float(ctx.attr("alpha", 1.0)),
                                          name=ctx.name()))


@op("Selu", check=_check_unary)
def selu(ctx: NodeContext) -> None:
    # gamma * (x if x > 0 else alpha * (exp(x) - 1)) = gamma * elu(x, alpha)
    y = mb.elu(x=ctx.x(0), alpha=ctx.float(ctx.attr("alpha", 1.6732632423543772)), name=ctx.name("elu"))
    ctx.set_output(0, mb.mul(x=y, y=ctx.float(ctx.attr("gamma", 1.0507009873554805)), name=ctx.name()))


@op("HardSigmoid", check=_check_unary)
def hard_sigmoid(ctx: NodeContext) -> None:
    # Both: max(0, min(1, alpha * x + beta)).
    ctx.set_output(0, mb.sigmoid_hard(x=ctx.x(0), alpha=ctx.float(ctx.attr("alpha", 0.2)),
                                      beta=ctx.float(ctx.attr("beta", 0.5)), name=ctx.name()))


@op("HardSwish", check=_check_unary)
def hard_swish(ctx: NodeContext) -> None:
    x = ctx.x(0)
    gate = mb.sigmoid_hard(x=x, alpha=ctx.float(1.0 / 6.0), beta=ctx.float(0.5), name=ctx.name("gate"))
    ctx.set_output(0, mb.mul(x=x, y=gate, name=ctx.name()))


def _check_gelu(ctx: NodeContext) -> list[str]:
    problems = _float_input(ctx)
    if ctx.attr("approximate", "none") not in ("none", "tanh"):
        problems.append(f"approximate={ctx.attr('approximate')!r} is not an ONNX value")
    return problems


@op("Gelu", check=_check_gelu)
def gelu(ctx: NodeContext) -> None:
    mode = "TANH_APPROXIMATION" if ctx.attr("approximate", "none") == "tanh" else "EXACT"
    ctx.set_output(0, mb.gelu(x=ctx.x(0), mode=mode, name=ctx.name()))


def _prelu_per_channel(ctx: NodeContext, slope_shape: tuple, shape: Optional[tuple]) -> bool:
    """True when the slope holds one value per channel (axis 1) of a rank 3-5 input."""
    if shape is None or not 3 <= len(shape) <= 5:
        return False
    channels = shape[1]
    if ctx.opset < 7 and len(slope_shape) == 1 and slope_shape[0] == channels:
        return True  # PRelu-1/6: a 1-D slope is per channel, whatever the rank
    if len(slope_shape) > len(shape):
        return False
    padded = (1,) * (len(shape) - len(slope_shape)) + tuple(slope_shape)
    return padded[1] == channels and all(d == 1 for i, d in enumerate(padded) if i != 1)


def _check_prelu(ctx: NodeContext) -> list[str]:
    problems = _float_input(ctx)
    shape = ctx.in_shape(0)
    if not ctx.is_const(1):  # a run-time slope takes the general form below (numpy broadcasting)
        return problems
    if not problems and shape is not None:
        slope_shape = tuple(ctx.const(1).shape)
        if not _prelu_per_channel(ctx, slope_shape, shape) and int(np.prod(slope_shape)) != 1:
            try:
                np.broadcast_shapes(slope_shape, shape)
            except ValueError:
                problems.append(f"slope of shape {list(slope_shape)} does not broadcast to the input {list(shape)}")
    return problems


@op("PRelu", check=_check_prelu)
def prelu(ctx: NodeContext) -> None:
    x = ctx.x(0)
    slope = ctx.x(1)  # constant, or computed at run time (then the general form below)
    shape = ctx.in_shape(0)
    constant = isinstance(slope, np.ndarray)
    if constant and slope.size == 1:
        if slope.ndim:  # a one-element parameter tensor becomes leaky_relu's scalar argument
            ctx.state.scalarized_parameters += 1
        ctx.set_output(0, mb.leaky_relu(x=x, alpha=ctx.float(slope.reshape(-1)[0]), name=ctx.name()))
        return
    if constant and _prelu_per_channel(ctx, slope.shape, shape):
        ctx.set_output(0, mb.prelu(x=x, alpha=slope.reshape(-1), name=ctx.name()))
        return
    # General broadcast slope: max(x, 0) + slope * min(x, 0).
    positive = mb.relu(x=x, name=ctx.name("positive"))
    negative = mb.minimum(x=x, y=ctx.float(0.0), name=ctx.name("negative"))
    scaled = mb.mul(x=negative, y=slope, name=ctx.name("scaled"))
    ctx.set_output(0, mb.add(x=positive, y=scaled, name=ctx.name()))


def _softmax_axis(ctx: NodeContext) -> tuple[int, Optional[list[int]]]:
    """(axis, flatten) where flatten is the 2-D shape needed for the opset<13 semantics, or None."""
    rank = _rank(ctx)
    if ctx.opset >= 13:
        axis = int(ctx.attr("axis", -1))
        return axis % rank, None
    axis = int(ctx.attr("axis", 1)) % rank
    shape = ctx.in_shape(0)
    if axis == rank - 1:
        return axis, None
    # Before opset 13 softmax runs over the flattened dims [axis:]: when all of them but
    # one are 1, that is a softmax along the one that is not (squeezenet: [1,1000,1,1]).
    if shape is not None:
        big = [i for i in range(axis, rank) if shape[i] != 1]
        if len(big) <= 1:
            return (big[0] if big else axis), None
        return axis, [math.prod(shape[:axis]), math.prod(shape[axis:])]
    return axis, [-1]


def _check_softmax(ctx: NodeContext) -> list[str]:
    problems = _float_input(ctx)
    if _rank(ctx) is None:
        problems.append("the input rank is unknown")
    elif ctx.opset < 13 and _softmax_axis(ctx)[1] == [-1]:
        problems.append("softmax over several axes (opset < 13) needs a static input shape")
    return problems


@op("Softmax", "LogSoftmax", check=_check_softmax)
def softmax(ctx: NodeContext) -> None:
    x = ctx.x(0)
    axis, flatten = _softmax_axis(ctx)
    log = ctx.node.op_type == "LogSoftmax"
    if flatten is None:
        y = mb.softmax(x=x, axis=axis, name=ctx.name("softmax") if log else ctx.name())
    else:
        flat = mb.reshape(x=x, shape=flatten, name=ctx.name("flatten"))
        y = mb.softmax(x=flat, axis=-1, name=ctx.name("softmax"))
        y = mb.reshape(x=y, shape=list(ctx.in_shape(0)), name=ctx.name("unflatten") if log else ctx.name())
    if log:
        y = mb.log(x=y, name=ctx.name())
    ctx.set_output(0, y)


# ----------------------------------------------------------------------------- pooling

def _check_pool(ctx: NodeContext) -> list[str]:
    problems = _float_input(ctx) + _static_input(ctx) + _static_output(ctx)
    rank = _rank(ctx)
    if rank is not None and not 3 <= rank <= 5:
        problems.append(f"input rank {rank}: Core ML pooling is 1-D, 2-D or 3-D")
    if ctx.node.op_type == "MaxPool":
        if int(ctx.attr("storage_order", 0)) != 0:
            problems.append("storage_order=1 (column-major indices) is not supported")
        if ctx.output_used(1):
            problems.append("the Indices output is used; Core ML max_pool has none")
    if ctx.attr("ceil_mode", 0) and not problems:
        expected = _ceil_mode_sizes(ctx)
        if list(ctx.out_shape(0)[2:]) != expected:
            problems.append(f"ceil_mode: ONNX shape inference gives {list(ctx.out_shape(0)[2:])}, ONNX Runtime "
                            f"computes {expected} (a last window starting in the padding is dropped); "
                            "the model is ambiguous")
            return problems
        begins, ends, extra = _pool_padding(ctx)
        if any(extra) and ctx.node.op_type == "AveragePool" and ctx.attr("count_include_pad", 0) \
                and begins != ends:
            problems.append("ceil_mode with asymmetric pads and count_include_pad=1 cannot be expressed")
        if any(extra) and rank is not None and rank > 4 and begins != ends:
            problems.append("ceil_mode on 3-D pooling with asymmetric pads is not supported")
    return problems


def _ceil_mode_sizes(ctx: NodeContext) -> list[int]:
    """Output sizes with ceil_mode as ONNX Runtime (and PyTorch, and MIL) compute them."""
    kernel = [int(k) for k in ctx.attr("kernel_shape")]
    spatial = len(kernel)
    strides = [int(s) for s in ctx.attr("strides", [1] * spatial)]
    in_shape = ctx.in_shape(0)
    begins, ends = _spatial_pads(ctx, in_shape, kernel, strides, [1] * spatial)
    sizes = []
    for i in range(spatial):
        size = in_shape[2 + i]
        out = -(-(size + begins[i] + ends[i] - kernel[i]) // strides[i]) + 1
        if (out - 1) * strides[i] >= size + begins[i]:
            out -= 1
        sizes.append(out)
    return sizes


def _pool_padding(ctx: NodeContext) -> tuple[list[int], list[int], list[int]]:
    """(begins, ends, extra end padding ceil mode needs beyond the declared pads)."""
    kernel = [int(k) for k in ctx.attr("kernel_shape")]
    spatial = len(kernel)
    strides = [int(s) for s in ctx.attr("strides", [1] * spatial)]
    in_shape, out_shape = ctx.in_shape(0), ctx.out_shape(0)
    begins, ends = _spatial_pads(ctx, in_shape, kernel, strides, [1] * spatial)
    extra = []
    for i in range(spatial):
        covered = in_shape[2 + i] + begins[i] + ends[i]
        needed = (out_shape[2 + i] - 1) * strides[i] + kernel[i]
        extra.append(max(0, needed - covered))
    return begins, ends, extra


@op("MaxPool", "AveragePool", check=_check_pool)
def pool(ctx: NodeContext) -> None:
    x = ctx.x(0)
    kernel = [int(k) for k in ctx.attr("kernel_shape")]
    strides = [int(s) for s in ctx.attr("strides", [1] * len(kernel))]
    begins, ends, extra = _pool_padding(ctx)
    ceil_mode = False
    if ctx.flexible_spatial():
        # Sizes vary: no size-dependent rewriting.  SAME pads -> MIL's same; ceil_mode -> MIL's
        # ceil_mode (symmetric pads, checked), which drops a last window like ONNX Runtime does.
        auto_pad = ctx.attr("auto_pad", "NOTSET")
        kwargs = dict(x=x, kernel_sizes=kernel, strides=strides, name=ctx.name())
        if auto_pad in ("SAME_UPPER", "SAME_LOWER"):
            kwargs["pad_type"] = "same" if auto_pad == "SAME_UPPER" else "same_lower"
        else:
            kwargs.update(pad_type="custom", pad=_interleave(begins, ends),
                          ceil_mode=bool(ctx.attr("ceil_mode", 0)))
        if ctx.node.op_type == "MaxPool":
            ctx.set_output(0, mb.max_pool(**kwargs))
        else:
            ctx.set_output(0, mb.avg_pool(**kwargs, exclude_padding_from_average=not ctx.attr("count_include_pad", 0)))
        return
    if any(extra):
        if begins == ends:
            ceil_mode = True  # MIL's ceil_mode is PyTorch's, which is ONNX's; it wants symmetric pads
        else:
            # Asymmetric pads (Caffe exports): pad more at the end instead.  Max pooling ignores
            # padding and average pooling here excludes it (checked), so that is the same result.
            ends = [e + x_ for e, x_ in zip(ends, extra)]
    kwargs = dict(x=x, kernel_sizes=kernel, strides=strides, pad_type="custom",
                  pad=_interleave(begins, ends), ceil_mode=ceil_mode, name=ctx.name())
    if ctx.node.op_type == "MaxPool":
        y = mb.max_pool(**kwargs)
    else:
        y = mb.avg_pool(**kwargs, exclude_padding_from_average=not ctx.attr("count_include_pad", 0))
    ctx.set_output(0, y)


def _check_global_pool(ctx: NodeContext) -> list[str]:
    problems = _float_input(ctx)
    rank = _rank(ctx)
    if rank is None or rank < 3:
        problems.append("global pooling needs an input of known rank >= 3")
    return problems


@op("GlobalAveragePool", "GlobalMaxPool", check=_check_global_pool)
def global_pool(ctx: NodeContext) -> None:
    x = ctx.x(0)
    axes = list(range(2, x.rank))
    reduce = mb.reduce_mean if ctx.node.op_type == "GlobalAveragePool" else mb.reduce_max
    ctx.set_output(0, reduce(x=x, axes=axes, keep_dims=True, name=ctx.name()))


# ----------------------------------------------------------------------------- dense

def _check_gemm(ctx: NodeContext) -> list[str]:
    problems = _float_input(ctx)
    for index in (0, 1):
        rank = _rank(ctx, index)
        if rank is not None and rank != 2:
            problems.append(f"input {index} has rank {rank}; Gemm takes matrices")
    return problems


@op("Gemm", check=_check_gemm)
def gemm(ctx: NodeContext) -> None:
    alpha = float(ctx.attr("alpha", 1.0))
    beta = float(ctx.attr("beta", 1.0))
    trans_a, trans_b = bool(ctx.attr("transA", 0)), bool(ctx.attr("transB", 0))
    a = ctx.x(0)
    has_c = ctx.has_input(2) and beta != 0.0
    if ctx.is_const(1):
        weight = mil_array(ctx.const(1))  # [K, N], or [N, K] with transB
        if alpha != 1.0:
            weight = weight * np.float32(alpha)
        n = weight.shape[0] if trans_b else weight.shape[1]
        bias = None
        if has_c and ctx.is_const(2):
            c = mil_array(ctx.const(2)) * np.float32(beta)
            if c.size == n and n > 1 or (c.size == 1 and n == 1):
                if c.ndim <= 1 or c.shape[0] == 1:  # [N] or [1, N]: one bias per output
                    bias, has_c = ctx.array(c.reshape(n)), False
        name = ctx.name() if not has_c else ctx.name("linear")
        if bias is not None:
            # linear: x * weight.T + bias, weight [N, K].
            if trans_a:
                a = mb.transpose(x=a, perm=[1, 0], name=ctx.name("transpose_a"))
            y = mb.linear(x=a, weight=ctx.array(weight if trans_b else weight.T), bias=bias, name=name)
        else:
            # No per-output bias: matmul keeps the weight as it is (linear would store a zero bias).
            y = mb.matmul(x=a, y=ctx.array(weight), transpose_x=trans_a, transpose_y=trans_b, name=name)
        if not has_c:
            ctx.set_output(0, y)
            return
    else:
        y = mb.matmul(x=a, y=ctx.x(1), transpose_x=trans_a, transpose_y=trans_b,
                      name=ctx.name("matmul") if (alpha != 1.0 or has_c) else ctx.name())
        if alpha != 1.0:
            y = mb.mul(x=y, y=ctx.float(alpha), name=ctx.name("alpha") if has_c else ctx.name())
        if not has_c:
            ctx.set_output(0, y)
            return
    c = ctx.x(2)
    if beta != 1.0:
        if isinstance(c, np.ndarray):
            c = ctx.array(c.astype(np.float32) * np.float32(beta))
        else:
            c = mb.mul(x=c, y=ctx.float(beta), name=ctx.name("beta"))
    ctx.set_output(0, mb.add(x=y, y=c, name=ctx.name()))


def _check_matmul(ctx: NodeContext) -> list[str]:
    problems = _float_input(ctx)
    for index in (0, 1):
        rank = _rank(ctx, index)
        if rank is None:
            problems.append(f"the rank of input {index} is unknown")
    return problems


@op("MatMul", check=_check_matmul)
def matmul(ctx: NodeContext) -> None:
    x, y = ctx.x(0), ctx.x(1)
    x_vector, y_vector = _rank(ctx, 0) == 1, _rank(ctx, 1) == 1
    if not (x_vector or y_vector):
        ctx.set_output(0, mb.matmul(x=x, y=y, name=ctx.name()))
        return
    # numpy's rule for 1-D operands spelled out (a row / a column, removed again after):
    # coremltools' matmul type inference gets a 1-D operand against a batch wrong.
    if x_vector:
        x = x.reshape(1, -1) if isinstance(x, np.ndarray) else mb.expand_dims(x=x, axes=[0], name=ctx.name("row"))
    if y_vector:
        y = y.reshape(-1, 1) if isinstance(y, np.ndarray) else mb.expand_dims(x=y, axes=[-1], name=ctx.name("column"))
    product = mb.matmul(x=x, y=y, name=ctx.name("matmul"))
    axes = ([-2] if x_vector else []) + ([-1] if y_vector else [])
    ctx.set_output(0, mb.squeeze(x=product, axes=axes, name=ctx.name()))


# ----------------------------------------------------------------------------- elementwise

_BINARY = {"Add": "add", "Sub": "sub", "Mul": "mul", "Div": "real_div", "Pow": "pow",
           "Max": "maximum", "Min": "minimum", "Sum": "add"}


def _check_binary(ctx: NodeContext) -> list[str]:
    problems = []
    if ctx.opset < 7 and ctx.attr("broadcast") and ctx.attr("axis") is not None:
        problems.append("legacy broadcast with an axis attribute (opset < 7) is not supported")
    if ctx.node.op_type in ("Div", "Pow"):
        t = ctx.in_type(0)
        if t is not None and t.dtype not in FLOAT_DTYPES:
            problems.append(f"{ctx.node.op_type} on {t.dtype} tensors (integer semantics) is not supported")
    if ctx.input_count() == 0:
        problems.append("has no inputs")
    return problems


def _binary(ctx: NodeContext) -> None:
    function = getattr(mb, _BINARY[ctx.node.op_type])
    operands = [ctx.x(i) for i in range(len(ctx.node.inputs)) if ctx.has_input(i)]
    if len(operands) == 1:
        ctx.set_output(0, mb.identity(x=operands[0], name=ctx.name()))
        return
    y = operands[0]
    for k, operand in enumerate(operands[1:], start=1):
        last = k == len(operands) - 1
        y = function(x=y, y=operand, name=ctx.name() if last else ctx.name(f"step{k}"))
    ctx.set_output(0, y)


for _onnx_name in _BINARY:
    op(_onnx_name, check=_check_binary)(_binary)


@op("Mean", check=_check_binary)
def mean(ctx: NodeContext) -> None:
    operands = [ctx.x(i) for i in range(len(ctx.node.inputs)) if ctx.has_input(i)]
    y = operands[0]
    for k, operand in enumerate(operands[1:], start=1):
        y = mb.add(x=y, y=operand, name=ctx.name(f"step{k}"))
    ctx.set_output(0, mb.mul(x=y, y=ctx.float(1.0 / len(operands)), name=ctx.name()))


# ----------------------------------------------------------------------------- shape ops

def _check_concat(ctx: NodeContext) -> list[str]:
    return [] if _rank(ctx) is not None or ctx.is_const(0) else ["the input rank is unknown"]


@op("Concat", check=_check_concat)
def concat(ctx: NodeContext) -> None:
    values = [ctx.x(i) for i in range(len(ctx.node.inputs)) if ctx.has_input(i)]
    if len(values) == 1:
        ctx.set_output(0, mb.identity(x=values[0], name=ctx.name()))
        return
    rank = len(ctx.out_shape(0)) if ctx.out_shape(0) is not None else values[0].rank
    axis = int(ctx.attr("axis", 1)) % rank
    ctx.set_output(0, mb.concat(values=values, axis=axis, interleave=False, name=ctx.name()))


def _split_sizes(ctx: NodeContext) -> list[int]:
    shape = ctx.in_shape(0)
    axis = int(ctx.attr("axis", 0)) % len(shape)
    if ctx.opset >= 13 and ctx.has_input(1):
        return [int(s) for s in np.asarray(ctx.const(1)).reshape(-1)]
    if ctx.attr("split") is not None:
        return [int(s) for s in ctx.attr("split")]
    parts = int(ctx.attr("num_outputs", len(ctx.node.outputs)))
    size = shape[axis]
    chunk = -(-size // parts)  # opset 18: the last chunk is smaller when it does not divide
    sizes = [chunk] * (parts - 1) + [size - chunk * (parts - 1)]
    return sizes


def _check_split(ctx: NodeContext) -> list[str]:
    problems = _static_input(ctx) + _const_inputs(ctx, [1], "the split sizes")
    if not problems and any(s <= 0 for s in _split_sizes(ctx)):
        problems.append("a split part would be empty")
    return problems


@op("Split", check=_check_split)
def split(ctx: NodeContext) -> None:
    x = ctx.x(0)
    shape = ctx.in_shape(0)
    axis = int(ctx.attr("axis", 0)) % len(shape)
    sizes = _split_sizes(ctx)
    if len(sizes) == 1:
        ctx.set_output(0, mb.identity(x=x, name=ctx.name()))
        return
    outputs = mb.split(x=x, split_sizes=sizes, axis=axis, name=ctx.name())
    for index, var in enumerate(outputs):
        if index < len(ctx.node.outputs) and ctx.node.outputs[index]:
            ctx.set_output(index, var)


def _slice_params(ctx: NodeContext) -> list[tuple[int, int, int]]:
    """(start, stop, step) per input axis, normalised like Python's slice.indices."""
    shape = ctx.in_shape(0)
    rank = len(shape)
    if ctx.opset < 10:
        starts, ends = list(ctx.attr("starts")), list(ctx.attr("ends"))
        axes = list(ctx.attr("axes", range(len(starts))))
        steps = [1] * len(starts)
    else:
        starts = [int(v) for v in np.asarray(ctx.const(1)).reshape(-1)]
        ends = [int(v) for v in np.asarray(ctx.const(2)).reshape(-1)]
        axes = [int(v) for v in np.asarray(ctx.const(3)).reshape(-1)] if ctx.has_input(3) \
            else list(range(len(starts)))
        steps = [int(v) for v in np.asarray(ctx.const(4)).reshape(-1)] if ctx.has_input(4) \
            else [1] * len(starts)
    params = [(0, d, 1) for d in shape]
    for start, end, axis, step in zip(starts, ends, axes, steps):
        axis = int(axis) % rank
        params[axis] = slice(int(start), int(end), int(step)).indices(shape[axis])
    return params


def _check_slice(ctx: NodeContext) -> list[str]:
    problems = _static_input(ctx) + _const_inputs(ctx, [1, 2, 3, 4], "starts, ends, axes and steps")
    if not problems:
        for start, stop, step in _slice_params(ctx):
            if step == 0:
                problems.append("a step of 0")
            elif len(range(start, stop, step)) == 0:
                problems.append("the slice is empty (Core ML has no empty tensors)")
    return problems


@op("Slice", check=_check_slice)
def slice_(ctx: NodeContext) -> None:
    x = ctx.x(0)
    shape = ctx.in_shape(0)
    params = _slice_params(ctx)
    reverse_axes = [axis for axis, (_, _, step) in enumerate(params) if step < 0]
    if reverse_axes:
        # Negative steps: reverse those axes, then slice forwards (clear semantics on every OS).
        x = mb.reverse(x=x, axes=reverse_axes, name=ctx.name("reverse"))
        params = [(shape[a] - 1 - start, shape[a] - 1 - stop, -step) if step < 0 else (start, stop, step)
                  for a, (start, stop, step) in enumerate(params)]
    begin = [p[0] for p in params]
    end = [p[1] for p in params]
    stride = [p[2] for p in params]
    ctx.set_output(0, mb.slice_by_index(x=x, begin=begin, end=end, stride=stride, name=ctx.name()))


def _reshape_target(ctx: NodeContext) -> list[int]:
    shape = list(ctx.in_shape(0))
    target = [int(d) for d in np.asarray(ctx.const(1)).reshape(-1)]
    allow_zero = bool(ctx.attr("allowzero", 0))
    out = [shape[i] if d == 0 and not allow_zero else d for i, d in enumerate(target)]
    if -1 in out:
        known = math.prod(d for d in out if d != -1)
        out[out.index(-1)] = math.prod(shape) // known if known else 0
    return out


def _check_reshape(ctx: NodeContext) -> list[str]:
    problems = _const_inputs(ctx, [1], "the target shape") + _static_input(ctx)
    if not problems:
        target = _reshape_target(ctx)
        if any(d <= 0 for d in target):
            problems.append("the result would have a zero-size dimension")
        elif math.prod(target) != math.prod(ctx.in_shape(0)):
            problems.append(f"cannot reshape {ctx.in_shape(0)} to {target}")
    return problems


@op("Reshape", check=_check_reshape)
def reshape(ctx: NodeContext) -> None:
    ctx.set_output(0, mb.reshape(x=ctx.x(0), shape=_reshape_target(ctx), name=ctx.name()))


@op("Flatten", check=_static_input)
def flatten(ctx: NodeContext) -> None:
    shape = ctx.in_shape(0)
    axis = int(ctx.attr("axis", 1))
    axis = axis + len(shape) if axis < 0 else axis  # ONNX: a negative axis counts from the rank, not rank + 1
    target = [math.prod(shape[:axis]), math.prod(shape[axis:])]
    ctx.set_output(0, mb.reshape(x=ctx.x(0), shape=target, name=ctx.name()))


def _check_rank(ctx: NodeContext) -> list[str]:
    return [] if _rank(ctx) is not None else ["the input rank is unknown"]


@op("Transpose", check=_check_rank)
def transpose(ctx: NodeContext) -> None:
    x = ctx.x(0)
    perm = ctx.attr("perm")
    perm = list(range(x.rank))[::-1] if perm is None else [int(p) % x.rank for p in perm]
    ctx.set_output(0, mb.transpose(x=x, perm=perm, name=ctx.name()))


def _check_squeeze(ctx: NodeContext) -> list[str]:
    problems = _const_inputs(ctx, [1], "the axes")
    if not problems and _axes_from(ctx, 1) is None:
        problems += _static_input(ctx)
    elif _rank(ctx) is None:
        problems.append("the input rank is unknown")
    return problems


@op("Squeeze", check=_check_squeeze)
def squeeze(ctx: NodeContext) -> None:
    x = ctx.x(0)
    axes = _axes_from(ctx, 1)
    rank = x.rank
    if axes is None:
        axes = [i for i, d in enumerate(ctx.in_shape(0)) if d == 1]
    axes = sorted(a % rank for a in axes)
    if not axes:
        ctx.set_output(0, mb.identity(x=x, name=ctx.name()))
    elif len(axes) == rank:
        # Core ML has no rank-0 activations in every op: keep a [1] tensor via reshape.
        ctx.set_output(0, mb.reshape(x=x, shape=[1] if rank else [1], name=ctx.name()))
    else:
        ctx.set_output(0, mb.squeeze(x=x, axes=axes, name=ctx.name()))


def _check_unsqueeze(ctx: NodeContext) -> list[str]:
    problems = _const_inputs(ctx, [1], "the axes")
    if not problems and _axes_from(ctx, 1) is None:
        problems.append("has no axes")
    if _rank(ctx) is None:
        problems.append("the input rank is unknown")
    return problems


@op("Unsqueeze", check=_check_unsqueeze)
def unsqueeze(ctx: NodeContext) -> None:
    x = ctx.x(0)
    axes = _axes_from(ctx, 1)
    out_rank = x.rank + len(axes)
    axes = sorted(a % out_rank for a in axes)  # ONNX axes index the output, ascending insertion
    ctx.set_output(0, mb.expand_dims(x=x, axes=axes, name=ctx.name()))


def _pad_amounts(ctx: NodeContext) -> tuple[list[int], list[int], str, float]:
    shape = ctx.in_shape(0)
    rank = len(shape)
    if ctx.opset < 11:
        pads = [int(p) for p in ctx.attr("pads", ctx.attr("paddings", ()))]
        value = float(ctx.attr("value", 0.0))
    else:
        pads = [int(p) for p in np.asarray(ctx.const(1)).reshape(-1)]
        value = float(np.asarray(ctx.const(2)).reshape(-1)[0]) if ctx.has_input(2) else 0.0
    mode = str(ctx.attr("mode", "constant"))
    if ctx.has_input(3):
        axes = [int(a) % rank for a in np.asarray(ctx.const(3)).reshape(-1)]
    else:
        axes = list(range(rank))
    begins, ends = [0] * rank, [0] * rank
    count = len(axes)
    for k, axis in enumerate(axes):
        begins[axis] = pads[k]
        ends[axis] = pads[count + k]
    return begins, ends, mode, value


def _check_pad(ctx: NodeContext) -> list[str]:
    problems = _const_inputs(ctx, [1, 2, 3], "pads, constant value and axes") + _static_input(ctx)
    if problems:
        return problems
    begins, ends, mode, _ = _pad_amounts(ctx)
    if any(p < 0 for p in begins + ends):
        problems.append("negative pads (cropping) are not supported")
    if mode not in ("constant", "reflect", "edge"):
        problems.append(f"mode {mode!r} has no Core ML equivalent")
    elif mode != "constant":
        rank = len(begins)
        if any(begins[i] or ends[i] for i in range(rank - 2)):
            problems.append(f"{mode} padding is only supported on the last two axes")
        shape = ctx.in_shape(0)
        limit = 1 if mode == "reflect" else 0
        for i in range(max(0, rank - 2), rank):
            if max(begins[i], ends[i]) > shape[i] - limit:
                problems.append(f"{mode} padding wider than the tensor on axis {i}")
    return problems


@op("Pad", check=_check_pad)
def pad(ctx: NodeContext) -> None:
    x = ctx.x(0)
    begins, ends, mode, value = _pad_amounts(ctx)
    rank = len(begins)
    first = next((i for i in range(rank) if begins[i] or ends[i]), rank - 1)
    if mode != "constant":
        first = max(first, rank - 2)
    amounts = _interleave(begins[first:], ends[first:])
    mil_mode = {"constant": "constant", "reflect": "reflect", "edge": "replicate"}[mode]
    kwargs = {"constant_val": ctx.float(value)} if mode == "constant" else {}
    ctx.set_output(0, mb.pad(x=x, pad=amounts, mode=mil_mode, **kwargs, name=ctx.name()))


# ----------------------------------------------------------------------------- resizing

@dataclass(frozen=True)
class _ResizeMode:
    mode: str  # "nearest" | "linear"
    coordinates: str
    nearest: str


def _resize_mode(ctx: NodeContext) -> _ResizeMode:
    mode = str(ctx.attr("mode", "nearest")).lower()
    if mode == "bilinear":
        mode = "linear"
    if ctx.node.op_type == "Upsample" or ctx.opset < 11:
        # Upsample and Resize-10: asymmetric coordinates, nearest rounds down (ONNX Runtime).
        return _ResizeMode(mode, "asymmetric", "floor")
    return _ResizeMode(mode, str(ctx.attr("coordinate_transformation_mode", "half_pixel")),
                       str(ctx.attr("nearest_mode", "round_prefer_floor")))


def _resize_scales(ctx: NodeContext) -> Optional[list[float]]:
    """The scales ONNX gave (None when sizes were given instead)."""
    if ctx.node.op_type == "Upsample":
        if ctx.opset < 9:
            return [float(s) for s in ctx.attr("scales")]
        return [float(s) for s in np.asarray(ctx.const(1)).reshape(-1)]
    scales_index = 1 if ctx.opset < 11 else 2
    if ctx.has_input(scales_index) and ctx.is_const(scales_index) and ctx.const(scales_index).size:
        return [float(s) for s in np.asarray(ctx.const(scales_index)).reshape(-1)]
    return None


def _check_resize(ctx: NodeContext) -> list[str]:
    problems = _float_input(ctx) + _static_input(ctx) + _static_output(ctx)
    for index in range(1, len(ctx.node.inputs)):
        if ctx.has_input(index) and not ctx.is_const(index):
            problems.append(f"input {index} (roi/scales/sizes) is computed at run time")
    if problems:
        return problems
    in_shape, out_shape = ctx.in_shape(0), ctx.out_shape(0)
    rank = len(in_shape)
    if rank < 3:
        problems.append(f"input rank {rank}: Core ML resizes the last two axes of rank >= 3 tensors")
        return problems
    if any(a != b for a, b in zip(in_shape[:-2], out_shape[:-2])):
        problems.append("resizes a batch or channel axis; Core ML resizes only the last two axes")
    spec = _resize_mode(ctx)
    if ctx.attr("antialias", 0):
        problems.append("antialias=1 is not supported")
    if ctx.attr("keep_aspect_ratio_policy", "stretch") != "stretch":
        problems.append("keep_aspect_ratio_policy other than 'stretch' is not supported")
    if spec.mode not in ("nearest", "linear"):
        problems.append(f"mode {spec.mode!r} (only nearest and linear/bilinear are supported)")
        return problems
    scales = _resize_scales(ctx)
    ratios = [out_shape[i] / in_shape[i] for i in (-2, -1)]
    if scales is not None:
        # Sampling follows the given scale; Core ML follows out/in.  They agree when in*scale is whole.
        for i in (-2, -1):
            if abs(in_shape[i] * scales[i] - out_shape[i]) > 1e-4:
                problems.append(f"scale {scales[i]:g} on a size-{in_shape[i]} axis gives a fractional "
                                "output size; Core ML samples differently then")
    if spec.mode == "nearest":
        if any(r < 1 or abs(r - round(r)) > 1e-6 for r in ratios):
            problems.append("nearest resizing by a non-integer or shrinking factor is not supported")
        ok = ((spec.coordinates in ("half_pixel", "pytorch_half_pixel")
               and spec.nearest in ("round_prefer_floor", "round_prefer_ceil"))
              or (spec.coordinates == "asymmetric" and spec.nearest == "floor")
              or all(abs(r - 1) < 1e-9 for r in ratios))
        if not ok:
            problems.append(f"nearest with coordinate_transformation_mode={spec.coordinates!r} and "
                            f"nearest_mode={spec.nearest!r} picks other pixels than Core ML's "
                            "upsample_nearest_neighbor")
    else:
        if spec.coordinates not in ("half_pixel", "pytorch_half_pixel", "align_corners", "asymmetric"):
            problems.append(f"linear with coordinate_transformation_mode={spec.coordinates!r} "
                            "is not supported")
        if spec.coordinates in ("pytorch_half_pixel", "align_corners") and min(out_shape[-2:]) == 1:
            problems.append(f"{spec.coordinates} with an output size of 1 is not supported")
    return problems


@op("Resize", "Upsample", check=_check_resize)
def resize(ctx: NodeContext) -> None:
    x = ctx.x(0)
    in_shape, out_shape = ctx.in_shape(0), ctx.out_shape(0)
    spec = _resize_mode(ctx)
    if spec.mode == "nearest":
        factor_h = int(round(out_shape[-2] / in_shape[-2]))
        factor_w = int(round(out_shape[-1] / in_shape[-1]))
        y = mb.upsample_nearest_neighbor(x=x, scale_factor_height=factor_h, scale_factor_width=factor_w,
                                         name=ctx.name())
    elif ctx.flexible_spatial():
        # Sizes vary: scale factors instead of target sizes (same sampling, recomputed per size).
        align = spec.coordinates == "align_corners"
        kwargs = dict(x=x, scale_factor_height=float(out_shape[-2] / in_shape[-2]),
                      scale_factor_width=float(out_shape[-1] / in_shape[-1]), align_corners=align)
        if ctx.source.target != "iOS15" or spec.coordinates == "asymmetric":
            kwargs["half_pixel_centers"] = spec.coordinates in ("half_pixel", "pytorch_half_pixel")
        y = mb.upsample_bilinear(**kwargs, name=ctx.name())
    else:
        sampling = {"half_pixel": "UNALIGN_CORNERS", "pytorch_half_pixel": "UNALIGN_CORNERS",
                    "align_corners": "STRICT_ALIGN_CORNERS", "asymmetric": "DEFAULT"}[spec.coordinates]
        y = mb.resize_bilinear(x=x, target_size_height=int(out_shape[-2]), target_size_width=int(out_shape[-1]),
                               sampling_mode=sampling, name=ctx.name())
    ctx.set_output(0, y)


def _check_gather(ctx: NodeContext) -> list[str]:
    problems = []
    t = ctx.in_type(1)
    if t is not None and t.dtype not in ("int32", "int64"):
        problems.append(f"indices of type {t.dtype}")
    if _rank(ctx) is None:
        problems.append("the data rank is unknown")
    if ctx.is_const(1) and not problems:
        indices = np.asarray(ctx.const(1))
        size = ctx.in_shape(0)[int(ctx.attr("axis", 0)) % _rank(ctx)] if ctx.in_shape(0) else None
        if size is not None and indices.size and (indices.max() >= size or indices.min() < -size):
            problems.append("an index is out of range")
    return problems


@op("Gather", check=_check_gather)
def gather(ctx: NodeContext) -> None:
    # Embedding lookups (constant table, runtime ids) and index selection.  Runtime indices
    # must be non-negative (negative ones count from the end in ONNX only).
    rank = _rank(ctx)
    axis = int(ctx.attr("axis", 0)) % rank
    indices = ctx.x(1)
    if isinstance(indices, np.ndarray):
        indices = np.where(indices < 0, indices + ctx.in_shape(0)[axis], indices).astype(np.int32)
    ctx.set_output(0, mb.gather(x=ctx.x(0), indices=indices, axis=axis, name=ctx.name()))


# ----------------------------------------------------------------------------- reductions and casts

_REDUCE = {"ReduceMean": "reduce_mean", "ReduceMax": "reduce_max", "ReduceMin": "reduce_min",
           "ReduceSum": "reduce_sum", "ReduceProd": "reduce_prod", "ReduceL2": "reduce_l2_norm",
           "ReduceL1": "reduce_l1_norm", "ReduceSumSquare": "reduce_sum_square"}


def _reduce_axes(ctx: NodeContext) -> Optional[list[int]]:
    # ReduceSum moved axes to an input at opset 13, the others at 18.
    moved = 13 if ctx.node.op_type == "ReduceSum" else 18
    return _axes_from(ctx, 1) if ctx.opset >= moved else _axes_from(ctx, 99)


def _check_reduce(ctx: NodeContext) -> list[str]:
    problems = _float_input(ctx) + _const_inputs(ctx, [1], "the axes")
    if _rank(ctx) is None:
        problems.append("the input rank is unknown")
    if not problems and not _reduce_axes(ctx) and ctx.attr("noop_with_empty_axes", 0):
        problems.append("noop_with_empty_axes=1 with no axes")
    return problems


def _reduce(ctx: NodeContext) -> None:
    x = ctx.x(0)
    axes = _reduce_axes(ctx) or list(range(x.rank))
    function = getattr(mb, _REDUCE[ctx.node.op_type])
    ctx.set_output(0, function(x=x, axes=sorted(a % x.rank for a in axes),
                               keep_dims=bool(ctx.attr("keepdims", 1)), name=ctx.name()))


for _onnx_name in _REDUCE:
    op(_onnx_name, check=_check_reduce)(_reduce)


_CAST_TARGETS = {1: "fp32", 10: "fp32", 11: "fp32", 6: "int32", 7: "int32", 9: "bool"}


def _check_cast(ctx: NodeContext) -> list[str]:
    to = int(ctx.attr("to", 0))
    if to not in _CAST_TARGETS:
        return [f"cast to ONNX type {to} is not supported (float, int32/int64 and bool are)"]
    return []


@op("Cast", check=_check_cast)
def cast(ctx: NodeContext) -> None:
    x = ctx.x(0)
    # Float targets become the program's float type: compute precision decides, not the ONNX type.
    target = _CAST_TARGETS[int(ctx.attr("to"))]
    if target == "fp32":
        target = ctx.float_name
    ctx.set_output(0, mb.cast(x=x, dtype=target, name=ctx.name()))


# ----------------------------------------------------------------------------- transformer ops

def _check_layer_norm(ctx: NodeContext) -> list[str]:
    problems = _float_input(ctx) + _static_input(ctx)
    if problems:
        return problems
    shape = ctx.in_shape(0)
    axis = int(ctx.attr("axis", -1)) % len(shape)
    for index in (1, 2):
        if ctx.has_input(index):
            given = ctx.in_shape(index)
            if given is None:
                problems.append(f"the shape of input {index} is not known statically")
            elif not _broadcasts_to(given, shape[axis:]):
                problems.append(f"input {index} of shape {tuple(given)} does not broadcast "
                                f"to the normalised axes {tuple(shape[axis:])}")
    return problems


def _broadcasts_to(shape, target) -> bool:
    try:
        return np.broadcast_shapes(tuple(shape), tuple(target)) == tuple(target)
    except ValueError:
        return False


@op("LayerNormalization", check=_check_layer_norm)
def layer_normalization(ctx: NodeContext) -> None:
    if ctx.output_used(1) or ctx.output_used(2):
        # Core ML's layer_norm gives only the normalised result: written out (ops_general).
        from engine.convert.ops_general import layer_norm_with_statistics
        layer_norm_with_statistics(ctx)
        return
    shape = ctx.in_shape(0)
    axis = int(ctx.attr("axis", -1)) % len(shape)
    axes = list(range(axis, len(shape)))
    epsilon = ctx.float(ctx.attr("epsilon", 1e-5))
    given = [index for index in (1, 2) if ctx.has_input(index)]
    if all(ctx.is_const(index) and tuple(ctx.const(index).shape) == tuple(shape[axis:]) for index in given):
        roles = {1: "gamma", 2: "beta"}
        kwargs = {roles[index]: ctx.x(index) for index in given}
        ctx.set_output(0, mb.layer_norm(x=ctx.x(0), axes=axes, epsilon=epsilon, name=ctx.name(), **kwargs))
        return
    # A scale or bias computed at run time, or one that ONNX broadcasts over the normalised axes:
    # MIL's gamma/beta must be constants of exactly their shape, so they are applied after
    # (stored as given, not enlarged).
    y = mb.layer_norm(x=ctx.x(0), axes=axes, epsilon=epsilon, name=ctx.name("normalized"))
    y = mb.mul(x=y, y=ctx.x(1), name=ctx.name("scaled" if 2 in given else None))
    if 2 in given:
        y = mb.add(x=y, y=ctx.x(2), name=ctx.name())
    ctx.set_output(0, y)


def _check_rms_norm(ctx: NodeContext) -> list[str]:
    return _float_input(ctx) + _static_input(ctx)


@op("RMSNormalization", check=_check_rms_norm)
def rms_normalization(ctx: NodeContext) -> None:
    rank = len(ctx.in_shape(0))
    axes = list(range(int(ctx.attr("axis", -1)) % rank, rank))
    scale = ctx.x(1) if ctx.has_input(1) else None
    ctx.set_output(0, rms_normalize(ctx, ctx.x(0), axes, ctx.attr("epsilon", 1e-5), scale))


def rms_normalize(ctx: NodeContext, x, axes: list[int], epsilon: float, scale=None):
    """x / sqrt(mean(x^2) + eps) * scale, computed on x scaled by its largest magnitude m first.

    The scaling is coremltools' own RMSNorm lowering (torch frontend `rms_norm`): x^2 of
    activations above 256 overflows fp16, and the Neural Engine computes in fp16.  Unlike there,
    the divisor is m = max(max|x|, 1) and epsilon is divided by m^2 before it is added to the
    mean of the scaled squares, so the result is ONNX's whatever epsilon: coremltools' unscaled
    epsilon (its divisor is max|x| itself) weighs m^2 times what ONNX gives it, a relative error
    of about eps * |m^2 - 1| / (2 mean(x^2)) -- 5e-5 at activations of magnitude 0.1 with
    eps = 1e-6, up to 20 % on the ONNX node tests' large epsilons.  Rows
    already within [-1, 1] are not scaled (no fp16 risk: their squares are <= 1); the others have
    squares <= 1 and eps / m^2 <= eps.  eps / m^2 is computed as (sqrt(eps) / m)^2 so that no
    intermediate overflows fp16 (m^2 is infinite in fp16 from m = 256).  An all-zero row gives
    0 / sqrt(eps) = 0.
    The last op is named after the node (shared by RMSNormalization and the com.microsoft
    (Skip)SimplifiedLayerNormalization, engine/convert/ops_contrib.py).
    """
    largest = mb.reduce_max(x=mb.abs(x=x, name=ctx.name("abs")), axes=axes, keep_dims=True,
                            name=ctx.name("max_abs"))
    largest = mb.maximum(x=largest, y=ctx.float(1.0), name=ctx.name("max_abs_floor"))
    scaled = mb.real_div(x=x, y=largest, name=ctx.name("scaled"))
    mean_square = mb.reduce_mean(x=mb.square(x=scaled, name=ctx.name("square")), axes=axes, keep_dims=True,
                                 name=ctx.name("mean_square"))
    # eps / m^2 as (sqrt(eps) / m)^2: with m >= 1 it is <= eps, and no intermediate is m^2
    root_eps = mb.real_div(x=ctx.float(float(np.sqrt(epsilon))), y=largest, name=ctx.name("root_eps_scaled"))
    scaled_epsilon = mb.square(x=root_eps, name=ctx.name("scaled_eps"))
    rms = mb.sqrt(x=mb.add(x=mean_square, y=scaled_epsilon, name=ctx.name("add_eps")),
                  name=ctx.name("rms_scaled"))
    rms = mb.mul(x=rms, y=largest, name=ctx.name("rms"))
    if scale is None:
        return mb.real_div(x=x, y=rms, name=ctx.name())
    normalized = mb.real_div(x=x, y=rms, name=ctx.name("normalized"))
    return mb.mul(x=normalized, y=scale, name=ctx.name())


def _check_where(ctx: NodeContext) -> list[str]:
    problems = []
    for index in (1, 2):
        t = ctx.in_type(index)
        if t is not None and t.dtype not in ("float32", "float16", "float64", "int32", "int64", "bool"):
            problems.append(f"input {index} is {t.dtype}; Core ML selects among float, int32 and bool tensors")
    return problems


@op("Where", check=_check_where)
def where(ctx: NodeContext) -> None:
    cond = ctx.x(0)
    if isinstance(cond, np.ndarray):
        cond = cond.astype(bool)
    ctx.set_output(0, mb.select(cond=cond, a=ctx.x(1), b=ctx.x(2), name=ctx.name()))


def _expand_reps(ctx: NodeContext) -> tuple[list[int], list[int]]:
    """(the input shape padded on the left to the result's rank, the tile repetitions)."""
    in_shape, out_shape = list(ctx.in_shape(0)), list(ctx.out_shape(0))
    padded = [1] * (len(out_shape) - len(in_shape)) + in_shape
    return padded, [o // i if i != o else 1 for i, o in zip(padded, out_shape)]


def _check_expand(ctx: NodeContext) -> list[str]:
    problems = (_const_inputs(ctx, [1], "the target shape") + _static_input(ctx) + _static_output(ctx))
    if not problems and len(ctx.out_shape(0)) < len(ctx.in_shape(0)):
        problems.append("the result has a lower rank than the input")
    return problems


@op("Expand", check=_check_expand)
def expand(ctx: NodeContext) -> None:
    # Two-way broadcast as a tile with computed repetitions (coremltools' torch `expand` does the same).
    x = ctx.x(0)
    padded, reps = _expand_reps(ctx)
    if list(ctx.in_shape(0)) != padded:
        x = mb.reshape(x=x, shape=padded, name=ctx.name("rank"))
    if all(r == 1 for r in reps):
        ctx.set_output(0, mb.identity(x=x, name=ctx.name()))
    else:
        ctx.set_output(0, mb.tile(x=x, reps=reps, name=ctx.name()))


def _check_cast_like(ctx: NodeContext) -> list[str]:
    t = ctx.in_type(1)
    if t is None:
        return ["the type of input 1 (the target type) is unknown"]
    if t.dtype not in _CAST_LIKE_TARGETS:
        return [f"cast to {t.dtype} is not supported (float, int32/int64 and bool are)"]
    return []


_CAST_LIKE_TARGETS = {"float32": "fp32", "float16": "fp32", "float64": "fp32", "int32": "int32",
                      "int64": "int32", "bool": "bool"}


@op("CastLike", check=_check_cast_like)
def cast_like(ctx: NodeContext) -> None:
    target = _CAST_LIKE_TARGETS[ctx.in_type(1).dtype]
    if target == "fp32":
        target = ctx.float_name
    ctx.set_output(0, mb.cast(x=ctx.x(0), dtype=target, name=ctx.name()))


_COMPARE = {"Greater": "greater", "Less": "less", "Equal": "equal", "GreaterOrEqual": "greater_equal",
            "LessOrEqual": "less_equal", "And": "logical_and", "Or": "logical_or", "Xor": "logical_xor"}


def _check_compare(ctx: NodeContext) -> list[str]:
    problems = []
    for index in (0, 1):
        t = ctx.in_type(index)
        if t is not None and t.dtype not in ("float32", "float16", "float64", "int32", "int64", "bool"):
            problems.append(f"input {index} is {t.dtype}; Core ML compares float, int32 and bool tensors")
    return problems


def _compare(ctx: NodeContext) -> None:
    function = getattr(mb, _COMPARE[ctx.node.op_type])
    ctx.set_output(0, function(x=ctx.x(0), y=ctx.x(1), name=ctx.name()))


for _onnx_name in _COMPARE:
    op(_onnx_name, check=_check_compare)(_compare)


@op("Not")
def logical_not(ctx: NodeContext) -> None:
    ctx.set_output(0, mb.logical_not(x=ctx.x(0), name=ctx.name()))


def _trilu_k(ctx: NodeContext) -> int:
    return int(np.asarray(ctx.const(1)).reshape(-1)[0]) if ctx.has_input(1) else 0


def _check_trilu(ctx: NodeContext) -> list[str]:
    problems = _const_inputs(ctx, [1], "k") + _static_input(ctx)
    if not problems and len(ctx.in_shape(0)) < 2:
        problems.append("the input has rank < 2")
    return problems


@op("Trilu", check=_check_trilu)
def trilu(ctx: NodeContext) -> None:
    """Keeps column - row >= k (upper) or <= k (lower); band_part where its band expresses that."""
    k, upper = _trilu_k(ctx), bool(ctx.attr("upper", 1))
    x = ctx.x(0)
    if upper and k <= 0:
        ctx.set_output(0, mb.band_part(x=x, lower=np.int32(-k), upper=np.int32(-1), name=ctx.name()))
    elif not upper and k >= 0:
        ctx.set_output(0, mb.band_part(x=x, lower=np.int32(-1), upper=np.int32(k), name=ctx.name()))
    else:
        # A band that excludes the diagonal on the kept side: a constant mask and select.
        rows, columns = ctx.in_shape(0)[-2:]
        offset = np.arange(columns)[None, :] - np.arange(rows)[:, None]
        keep = offset >= k if upper else offset <= k
        zero = np.zeros((), dtype=np.int32) if not _is_float_var(x) else ctx.float(0.0)
        ctx.set_output(0, mb.select(cond=keep, a=x, b=zero, name=ctx.name()))


# ----------------------------------------------------------------------------- removed and folded

def _check_dropout(ctx: NodeContext) -> list[str]:
    problems = []
    if ctx.node.op_type == "Dropout":
        if ctx.output_used(1):
            problems.append("the mask output is used; inference has no dropout mask")
        if ctx.has_input(2) and (not ctx.is_const(2) or bool(np.asarray(ctx.const(2)).reshape(-1)[0])):
            problems.append("training_mode is on (or computed at run time)")
    return problems


OPS["Identity"] = OpDef(lambda ctx: None, _check_dropout)
OPS["Dropout"] = OpDef(lambda ctx: None, _check_dropout)

# Ops that are only supported when their result is a constant (they are then folded).
FOLD_ONLY = {
    "Constant": "a Constant is folded into its consumers",
    "ConstantOfShape": "its shape input is computed at run time (dynamic shapes are not supported)",
    "Shape": "the shape of its input is not static; fix the input shapes (--shape)",
    "Size": "the size of its input is not static",
}


# ----------------------------------------------------------------------------- flexible shapes

# Ops whose translation never reads a size, so any axis may vary at run time.
_SIZE_FREE = (set(_UNARY) | set(_BINARY) | set(_REDUCE) | {
    "Neg", "Clip", "LeakyRelu", "Elu", "Selu", "ThresholdedRelu", "HardSigmoid", "HardSwish", "Gelu", "PRelu",
    "BatchNormalization", "LRN", "Mean", "Concat", "Transpose", "Unsqueeze", "GlobalAveragePool",
    "GlobalMaxPool", "Identity", "Dropout", "Cast", "Pad", "Conv", "Gemm", "MatMul", "CastLike", "Where", "Not"} | set(_COMPARE))


def flexible_problems(ctx: NodeContext) -> list[str]:
    """Why this node cannot run with flexible input shapes ([] if it can, or if nothing varies here)."""
    if not ctx.touches_flexible:
        return []
    op_type = ctx.node.op_type
    if op_type in _SIZE_FREE:
        return []
    axes = sorted(set(ctx.flexible_axes(0)) | set(ctx.flexible_axes(0, output=True)))
    where = f"flexible axes {axes}"
    if op_type == "ConvTranspose":
        if ctx.attr("output_shape") is not None or ctx.attr("auto_pad", "NOTSET") in ("SAME_UPPER", "SAME_LOWER"):
            return [f"{where}: output_shape or SAME auto_pad makes the crop depend on the size"]
        return []
    if op_type in ("MaxPool", "AveragePool"):
        if ctx.attr("ceil_mode", 0):
            begins, ends = _spatial_pads(ctx, ctx.in_shape(0), list(ctx.attr("kernel_shape")),
                                         list(ctx.attr("strides", [1] * len(ctx.attr("kernel_shape")))),
                                         [1] * len(ctx.attr("kernel_shape")))
            if begins != ends or ctx.attr("auto_pad", "NOTSET") != "NOTSET":
                return [f"{where}: ceil_mode with asymmetric or SAME padding depends on the size"]
        return []
    if op_type in ("Resize", "Upsample"):
        if not ctx.flexible_axes(0, output=True):
            return [f"{where}: resizes to a fixed size while the input size varies"]
        if ctx.node.op_type == "Resize" and ctx.opset >= 11 and len(ctx.node.inputs) > 3 and ctx.has_input(3):
            return [f"{where}: resizes to given sizes; only scales follow a varying input"]
        if _resize_mode(ctx).coordinates == "asymmetric" and _resize_mode(ctx).mode == "linear" \
                and ctx.source.target == "iOS15":
            return [f"{where}: asymmetric linear resizing of varying sizes needs iOS16 or later"]
        return []
    if op_type == "Squeeze":
        axes_given = _axes_from(ctx, 1)
        if axes_given is not None and not set(a % (_rank(ctx) or 1) for a in axes_given) & set(ctx.flexible_axes(0)):
            return []
        return [f"{where}: which axes are squeezed depends on the size"]
    if op_type in ("Softmax", "LogSoftmax"):
        if ctx.opset >= 13 or int(ctx.attr("axis", 1)) % (_rank(ctx) or 1) == (_rank(ctx) or 1) - 1:
            return []
        return [f"{where}: softmax over flattened axes (opset < 13) depends on the sizes"]
    if op_type in ("Reshape", "Flatten", "Slice", "Split"):
        return [f"{where}: {op_type} here is translated with fixed sizes; fix the input shape "
                "or keep this axis fixed"]
    return [f"{where}: not supported with flexible input shapes"]


def supported_op_types() -> list[str]:
    """Default-domain op types, then the other domains' as "domain.OpType" (com.microsoft.GroupQueryAttention)."""
    others = [f"{domain}.{name}" for domain, table in DOMAIN_OPS.items() if domain for name in table]
    return sorted(set(OPS) | set(FOLD_ONLY)) + sorted(others)


# Translations kept in their own modules register themselves through `op` (imported last: they use
# this module): Attention, GatherElements and GatherND; the ONNX Runtime contrib ops.
from engine.convert import ops_attention  # noqa: E402,F401
from engine.convert import ops_contrib  # noqa: E402,F401
# General ops for corpus coverage (arg reductions, normalisations with statistics, more unary
# maths, Lp pooling, depth <-> space).
from engine.convert import ops_general  # noqa: E402,F401
