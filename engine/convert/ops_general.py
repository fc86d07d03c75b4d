"""ONNX op -> MIL ops for the general (non-attention) ops the node-test corpus needs.

Same contract as engine/convert/ops.py (a check per op, a build that names its MIL ops
through `ctx.name`); importing this module registers them there.  Every translation uses
MIL ops of coremltools 9 that the MIL reference evaluator can run (a numpy
`value_inference` in coremltools, or a spec function in mil_reference.py), so the value
check covers each of them.

Families: arg reductions (ArgMax, ArgMin, Hardmax), normalisations with statistics
(LayerNormalization's mean / inverse-std outputs, InstanceNormalization,
GroupNormalization, MeanVarianceNormalization, LpNormalization), more unary maths
(inverse trigonometric and hyperbolic functions, Swish, Mish, Celu, Shrink, IsNaN, IsInf),
float Mod and LpPool.
"""
from __future__ import annotations

import numpy as np

from engine.convert import ops
from engine.convert.ops import (NodeContext, _axes_from, _check_pool, _float_input, _interleave, _pool_padding,
                                _rank, _static_input, op)


def _mb():
    return ops.mb  # bound by ops.bind_builder() before any build runs


# ----------------------------------------------------------------------------- arg reductions

def _check_arg_reduce(ctx: NodeContext) -> list[str]:
    problems = _float_input(ctx) + _static_input(ctx)
    if not problems and not ctx.in_shape(0):
        problems.append("the input is a scalar")
    return problems


@op("ArgMax", "ArgMin", check=_check_arg_reduce)
def arg_reduce(ctx: NodeContext) -> None:
    """reduce_argmax / reduce_argmin; select_last_index=1 runs it on the axis reversed and
    maps the position back (n - 1 - i), as both pick the first of equal values."""
    mb = _mb()
    shape = ctx.in_shape(0)
    axis = int(ctx.attr("axis", 0)) % len(shape)
    keep = bool(ctx.attr("keepdims", 1))
    function = mb.reduce_argmax if ctx.node.op_type == "ArgMax" else mb.reduce_argmin
    x = ctx.x(0)
    if not ctx.attr("select_last_index", 0):
        ctx.set_output(0, function(x=x, axis=axis, keep_dims=keep, name=ctx.name()))
        return
    reversed_x = mb.reverse(x=x, axes=[axis], name=ctx.name("reverse"))
    index = function(x=reversed_x, axis=axis, keep_dims=keep, name=ctx.name("reversed_index"))
    ctx.set_output(0, mb.sub(x=np.int32(shape[axis] - 1), y=index, name=ctx.name()))


def _check_hardmax(ctx: NodeContext) -> list[str]:
    return _float_input(ctx) + _static_input(ctx)


@op("Hardmax", check=_check_hardmax)
def hardmax(ctx: NodeContext) -> None:
    """1 at the first largest value along the axis, 0 elsewhere.  Before opset 13 the input is
    coerced to 2-D at `axis` (ONNX's old softmax rule), so it is reshaped around the op."""
    mb = _mb()
    shape = list(ctx.in_shape(0))
    x = ctx.x(0)
    if ctx.opset < 13:
        split = int(ctx.attr("axis", 1)) % max(len(shape), 1)
        flat = [int(np.prod(shape[:split])), int(np.prod(shape[split:]))]
        x = mb.reshape(x=x, shape=flat, name=ctx.name("as_2d"))
        work_shape, axis = flat, 1
    else:
        work_shape, axis = shape, int(ctx.attr("axis", -1)) % len(shape)
    index = mb.reduce_argmax(x=x, axis=axis, keep_dims=True, name=ctx.name("argmax"))
    positions = np.arange(work_shape[axis], dtype=np.int32).reshape(
        [-1 if a == axis else 1 for a in range(len(work_shape))])
    hit = mb.equal(x=index, y=positions, name=ctx.name("is_first_max"))
    name = ctx.name("as_2d_result") if ctx.opset < 13 else ctx.name()
    y = mb.cast(x=hit, dtype=ctx.float_name, name=name)
    if ctx.opset < 13:
        y = mb.reshape(x=y, shape=shape, name=ctx.name())
    ctx.set_output(0, y)


# ----------------------------------------------------------------------------- normalisation with statistics

def normalize(ctx: NodeContext, x, axes: list[int], epsilon: float):
    """(x - mean) * rsqrt(var + epsilon), mean and rsqrt(var + epsilon), over `axes` (kept).

    Written out with reduce_mean and rsqrt (rsqrt's own epsilon is added inside the root, as
    ONNX adds it): Core ML's layer_norm / instance_norm give neither statistic, and
    instance_norm has no numpy evaluation to check it by value.
    """
    mb = _mb()
    mean = mb.reduce_mean(x=x, axes=axes, keep_dims=True, name=ctx.name("mean"))
    centred = mb.sub(x=x, y=mean, name=ctx.name("centred"))
    variance = mb.reduce_mean(x=mb.mul(x=centred, y=centred, name=ctx.name("square")), axes=axes,
                              keep_dims=True, name=ctx.name("variance"))
    inverse_std = mb.rsqrt(x=variance, epsilon=ctx.float(epsilon), name=ctx.name("inverse_std"))
    return mb.mul(x=centred, y=inverse_std, name=ctx.name("normalized")), mean, inverse_std


def layer_norm_with_statistics(ctx: NodeContext) -> None:
    """LayerNormalization whose mean (output 1) or inverse standard deviation (output 2) is used."""
    mb = _mb()
    shape = ctx.in_shape(0)
    axis = int(ctx.attr("axis", -1)) % len(shape)
    y, mean, inverse_std = normalize(ctx, ctx.x(0), list(range(axis, len(shape))), ctx.attr("epsilon", 1e-5))
    y = mb.mul(x=y, y=ctx.x(1), name=ctx.name("scaled" if ctx.has_input(2) else None))
    if ctx.has_input(2):
        y = mb.add(x=y, y=ctx.x(2), name=ctx.name())
    ctx.set_output(0, y)
    if ctx.output_used(1):
        ctx.set_output(1, mean)
    if ctx.output_used(2):
        ctx.set_output(2, inverse_std)


def batch_norm_runtime_statistics(ctx: NodeContext) -> None:
    """BatchNormalization whose scale, bias, mean or variance is computed at run time:
    (x - mean) * rsqrt(variance + epsilon) * scale + bias, each per channel."""
    mb = _mb()
    rank = len(ctx.in_shape(0)) if ctx.in_shape(0) is not None else _rank(ctx)
    scale, bias, mean, variance = (_per_channel(ctx, ctx.x(i), rank, role) for i, role in
                                   ((1, "scale_per_channel"), (2, "bias_per_channel"), (3, "mean_per_channel"),
                                    (4, "variance_per_channel")))
    centred = mb.sub(x=ctx.x(0), y=mean, name=ctx.name("centred"))
    inverse_std = mb.rsqrt(x=variance, epsilon=ctx.float(ctx.attr("epsilon", 1e-5)), name=ctx.name("inverse_std"))
    y = mb.mul(x=mb.mul(x=centred, y=inverse_std, name=ctx.name("normalized")), y=scale, name=ctx.name("scaled"))
    ctx.set_output(0, mb.add(x=y, y=bias, name=ctx.name()))


def _check_instance_norm(ctx: NodeContext) -> list[str]:
    problems = _float_input(ctx) + _static_input(ctx)
    if not problems and len(ctx.in_shape(0)) < 3:
        problems.append(f"input rank {len(ctx.in_shape(0))}: instance normalisation needs N x C x spatial")
    return problems


def _per_channel(ctx: NodeContext, array_or_var, rank: int, role: str):
    """A [C] scale or bias shaped to broadcast over N x C x spatial."""
    shape = [-1] + [1] * (rank - 2)
    if isinstance(array_or_var, np.ndarray):
        return array_or_var.reshape(shape)
    return _mb().reshape(x=array_or_var, shape=shape, name=ctx.name(role))


@op("InstanceNormalization", check=_check_instance_norm)
def instance_normalization(ctx: NodeContext) -> None:
    mb = _mb()
    rank = len(ctx.in_shape(0))
    y, _, _ = normalize(ctx, ctx.x(0), list(range(2, rank)), ctx.attr("epsilon", 1e-5))
    y = mb.mul(x=y, y=_per_channel(ctx, ctx.x(1), rank, "scale_per_channel"), name=ctx.name("scaled"))
    ctx.set_output(0, mb.add(x=y, y=_per_channel(ctx, ctx.x(2), rank, "bias_per_channel"), name=ctx.name()))


def _check_group_norm(ctx: NodeContext) -> list[str]:
    problems = _check_instance_norm(ctx)
    if problems:
        return problems
    channels, groups = ctx.in_shape(0)[1], int(ctx.attr("num_groups", 1))
    if groups <= 0 or channels % groups:
        problems.append(f"{channels} channels do not split into {groups} groups")
    return problems


@op("GroupNormalization", check=_check_group_norm)
def group_normalization(ctx: NodeContext) -> None:
    """Statistics per (sample, group of channels): x as N x G x (C/G * spatial), normalised over
    its last axis.  Scale and bias are per channel (opset 21) or per group (opset 18)."""
    mb = _mb()
    shape = list(ctx.in_shape(0))
    groups = int(ctx.attr("num_groups"))
    grouped = mb.reshape(x=ctx.x(0), shape=[shape[0], groups, -1], name=ctx.name("grouped"))
    y, _, _ = normalize(ctx, grouped, [2], ctx.attr("epsilon", 1e-5))
    scale, bias = ctx.x(1), ctx.x(2)
    per_group = ctx.in_shape(1) is not None and ctx.in_shape(1)[0] == groups and groups != shape[1]
    if per_group:
        y = mb.mul(x=y, y=_grouped_parameter(ctx, scale, "scale_per_group"), name=ctx.name("scaled"))
        y = mb.add(x=y, y=_grouped_parameter(ctx, bias, "bias_per_group"), name=ctx.name("biased"))
        ctx.set_output(0, mb.reshape(x=y, shape=shape, name=ctx.name()))
        return
    y = mb.reshape(x=y, shape=shape, name=ctx.name("ungrouped"))
    y = mb.mul(x=y, y=_per_channel(ctx, scale, len(shape), "scale_per_channel"), name=ctx.name("scaled"))
    ctx.set_output(0, mb.add(x=y, y=_per_channel(ctx, bias, len(shape), "bias_per_channel"), name=ctx.name()))


def _grouped_parameter(ctx: NodeContext, array_or_var, role: str):
    if isinstance(array_or_var, np.ndarray):
        return array_or_var.reshape(-1, 1)
    return _mb().reshape(x=array_or_var, shape=[-1, 1], name=ctx.name(role))


def _check_mvn(ctx: NodeContext) -> list[str]:
    return _float_input(ctx) + _static_input(ctx)


@op("MeanVarianceNormalization", check=_check_mvn)
def mean_variance_normalization(ctx: NodeContext) -> None:
    # ONNX's function body adds epsilon 1e-9 to the standard deviation's square.
    rank = len(ctx.in_shape(0))
    axes = _axes_from(ctx, 99) or [0, 2, 3]
    y, _, _ = normalize(ctx, ctx.x(0), sorted(a % rank for a in axes), 1e-9)
    ctx.set_output(0, _mb().identity(x=y, name=ctx.name()))


def _check_lp_norm(ctx: NodeContext) -> list[str]:
    problems = _float_input(ctx)
    if int(ctx.attr("p", 2)) not in (1, 2):
        problems.append(f"p={ctx.attr('p')} (ONNX allows 1 and 2)")
    if _rank(ctx) is None:
        problems.append("the input rank is unknown")
    return problems


@op("LpNormalization", check=_check_lp_norm)
def lp_normalization(ctx: NodeContext) -> None:
    mb = _mb()
    x = ctx.x(0)
    axis = int(ctx.attr("axis", -1)) % _rank(ctx)
    function = mb.reduce_l2_norm if int(ctx.attr("p", 2)) == 2 else mb.reduce_l1_norm
    norm = function(x=x, axes=[axis], keep_dims=True, name=ctx.name("norm"))
    ctx.set_output(0, mb.real_div(x=x, y=norm, name=ctx.name()))


# ----------------------------------------------------------------------------- Lp pooling

def _check_lp_pool(ctx: NodeContext) -> list[str]:
    problems = _check_pool(ctx)
    if ctx.attr("ceil_mode", 0):
        problems.append("ceil_mode=1 is not supported for LpPool")
    if float(ctx.attr("p", 2)) <= 0:
        problems.append(f"p={ctx.attr('p')} (must be positive)")
    return problems


def lp_pool(ctx: NodeContext) -> None:
    """(sum over the window of |x|^p)^(1/p): the window mean of |x|^p with the zero padding
    counted (`avg_pool`, padding included), times the window size, then the p-th root."""
    mb = _mb()
    p = float(ctx.attr("p", 2))
    kernel = [int(k) for k in ctx.attr("kernel_shape")]
    strides = [int(s) for s in ctx.attr("strides", [1] * len(kernel))]
    begins, ends, _ = _pool_padding(ctx)
    x = ctx.x(0)
    powered = mb.mul(x=x, y=x, name=ctx.name("square")) if p == 2 else \
        mb.pow(x=mb.abs(x=x, name=ctx.name("abs")), y=ctx.float(p), name=ctx.name("power"))
    mean = mb.avg_pool(x=powered, kernel_sizes=kernel, strides=strides, pad_type="custom",
                       pad=_interleave(begins, ends), exclude_padding_from_average=False, name=ctx.name("mean"))
    total = mb.mul(x=mean, y=ctx.float(float(np.prod(kernel))), name=ctx.name("sum"))
    if p == 2:
        ctx.set_output(0, mb.sqrt(x=total, name=ctx.name()))
    else:
        ctx.set_output(0, mb.pow(x=total, y=ctx.float(1.0 / p), name=ctx.name()))


# ----------------------------------------------------------------------------- depth <-> space

def _check_depth_space(ctx: NodeContext) -> list[str]:
    problems = _float_input(ctx) + _static_input(ctx)
    if problems:
        return problems
    shape, block = ctx.in_shape(0), int(ctx.attr("blocksize", 0))
    if len(shape) != 4:
        problems.append(f"input rank {len(shape)}: Core ML rearranges N x C x H x W tensors")
    elif block < 2:
        problems.append(f"blocksize {block}: Core ML needs 2 or more")
    elif ctx.node.op_type == "DepthToSpace" and shape[1] % (block * block):
        problems.append(f"{shape[1]} channels do not divide into {block}x{block} blocks")
    elif ctx.node.op_type == "SpaceToDepth" and (shape[2] % block or shape[3] % block):
        problems.append(f"height and width {shape[2:]} do not divide into {block}x{block} blocks")
    elif ctx.node.op_type == "SpaceToDepth" and str(ctx.attr("mode", "DCR")) == "CRD" \
            and ctx.source.target in ("iOS15", "macOS12", "tvOS15", "watchOS8"):
        problems.append("CRD mode needs pixel_unshuffle: deployment target iOS16 or later")
    return problems


@op("DepthToSpace", "SpaceToDepth", check=_check_depth_space)
def depth_space(ctx: NodeContext) -> None:
    """DCR mode (the default) is `depth_to_space`'s order, CRD mode is `pixel_shuffle`'s (PyTorch's);
    SpaceToDepth is `space_to_depth`, or `pixel_unshuffle` in CRD mode.  ONNX's own function bodies need rank-6 reshapes, which Core
    ML does not have."""
    mb = _mb()
    block = np.int32(ctx.attr("blocksize"))
    crd = str(ctx.attr("mode", "DCR")) == "CRD"
    if ctx.node.op_type == "SpaceToDepth" and crd:
        ctx.set_output(0, mb.pixel_unshuffle(x=ctx.x(0), downscale_factor=np.uint32(block), name=ctx.name()))
    elif ctx.node.op_type == "SpaceToDepth":
        ctx.set_output(0, mb.space_to_depth(x=ctx.x(0), block_size=block, name=ctx.name()))
    elif crd:
        ctx.set_output(0, mb.pixel_shuffle(x=ctx.x(0), upscale_factor=block, name=ctx.name()))
    else:
        ctx.set_output(0, mb.depth_to_space(x=ctx.x(0), block_size=block, name=ctx.name()))


# ----------------------------------------------------------------------------- more unary maths

_MORE_UNARY = {"Acos": "acos", "Asin": "asin", "Atan": "atan", "Tan": "tan", "Cosh": "cosh",
               "Sinh": "sinh", "Atanh": "atanh"}


def _check_float(ctx: NodeContext) -> list[str]:
    return _float_input(ctx)


def _more_unary(ctx: NodeContext) -> None:
    function = getattr(_mb(), _MORE_UNARY[ctx.node.op_type])
    ctx.set_output(0, function(x=ctx.x(0), name=ctx.name()))


for _onnx_name in _MORE_UNARY:
    op(_onnx_name, check=_check_float)(_more_unary)


@op("Asinh", "Acosh", check=_check_float)
def inverse_hyperbolic(ctx: NodeContext) -> None:
    """asinh x = log(x + sqrt(x^2 + 1)), acosh x = log(x + sqrt(x^2 - 1)) (MIL has neither)."""
    mb = _mb()
    x = ctx.x(0)
    offset = 1.0 if ctx.node.op_type == "Asinh" else -1.0
    root = mb.sqrt(x=mb.add(x=mb.mul(x=x, y=x, name=ctx.name("square")), y=ctx.float(offset),
                            name=ctx.name("shifted")), name=ctx.name("root"))
    ctx.set_output(0, mb.log(x=mb.add(x=x, y=root, name=ctx.name("sum")), epsilon=ctx.float(0.0),
                             name=ctx.name()))


@op("Swish", check=_check_float)
def swish(ctx: NodeContext) -> None:
    mb = _mb()
    x = ctx.x(0)
    scaled = mb.mul(x=x, y=ctx.float(ctx.attr("alpha", 1.0)), name=ctx.name("scaled"))
    ctx.set_output(0, mb.mul(x=x, y=mb.sigmoid(x=scaled, name=ctx.name("sigmoid")), name=ctx.name()))


@op("SwiGLU", check=_check_float)
def swiglu(ctx: NodeContext) -> None:
    """Y = Swish_alpha(A) * B (opset 28; A and B have the same shape, no broadcasting)."""
    mb = _mb()
    a = ctx.x(0)
    scaled = mb.mul(x=a, y=ctx.float(ctx.attr("alpha", 1.0)), name=ctx.name("scaled"))
    gate = mb.mul(x=a, y=mb.sigmoid(x=scaled, name=ctx.name("sigmoid")), name=ctx.name("swish"))
    ctx.set_output(0, mb.mul(x=gate, y=ctx.x(1), name=ctx.name()))


@op("Mish", check=_check_float)
def mish(ctx: NodeContext) -> None:
    mb = _mb()
    x = ctx.x(0)
    gate = mb.tanh(x=mb.softplus(x=x, name=ctx.name("softplus")), name=ctx.name("tanh"))
    ctx.set_output(0, mb.mul(x=x, y=gate, name=ctx.name()))


@op("Celu", check=_check_float)
def celu(ctx: NodeContext) -> None:
    """max(0, x) + min(0, alpha * (exp(x / alpha) - 1))."""
    mb = _mb()
    x = ctx.x(0)
    alpha = float(ctx.attr("alpha", 1.0))
    grown = mb.exp(x=mb.mul(x=x, y=ctx.float(1.0 / alpha), name=ctx.name("over_alpha")), name=ctx.name("exp"))
    negative = mb.mul(x=mb.sub(x=grown, y=ctx.float(1.0), name=ctx.name("minus_one")), y=ctx.float(alpha),
                      name=ctx.name("elu"))
    ctx.set_output(0, mb.add(x=mb.relu(x=x, name=ctx.name("positive")),
                             y=mb.minimum(x=negative, y=ctx.float(0.0), name=ctx.name("negative")),
                             name=ctx.name()))


@op("Shrink", check=_check_float)
def shrink(ctx: NodeContext) -> None:
    """x + bias below -lambd, x - bias above lambd, 0 between."""
    mb = _mb()
    x = ctx.x(0)
    lambd, bias = float(ctx.attr("lambd", 0.5)), float(ctx.attr("bias", 0.0))
    low = mb.select(cond=mb.less(x=x, y=ctx.float(-lambd), name=ctx.name("below")),
                    a=mb.add(x=x, y=ctx.float(bias), name=ctx.name("raised")), b=ctx.float(0.0),
                    name=ctx.name("low_part"))
    ctx.set_output(0, mb.select(cond=mb.greater(x=x, y=ctx.float(lambd), name=ctx.name("above")),
                                a=mb.sub(x=x, y=ctx.float(bias), name=ctx.name("lowered")), b=low,
                                name=ctx.name()))


@op("IsNaN", check=_check_float)
def is_nan(ctx: NodeContext) -> None:
    x = ctx.x(0)
    ctx.set_output(0, _mb().not_equal(x=x, y=x, name=ctx.name()))  # NaN is the one value unequal to itself


@op("IsInf", check=_check_float)
def is_inf(ctx: NodeContext) -> None:
    mb = _mb()
    x = ctx.x(0)
    positive, negative = bool(ctx.attr("detect_positive", 1)), bool(ctx.attr("detect_negative", 1))
    if positive and negative:
        ctx.set_output(0, mb.equal(x=mb.abs(x=x, name=ctx.name("abs")), y=ctx.float(np.inf), name=ctx.name()))
    elif positive or negative:
        ctx.set_output(0, mb.equal(x=x, y=ctx.float(np.inf if positive else -np.inf), name=ctx.name()))
    else:  # detects nothing: all false (|x| < -1 never holds)
        ctx.set_output(0, mb.less(x=mb.abs(x=x, name=ctx.name("abs")), y=ctx.float(-1.0), name=ctx.name()))


def _check_mod(ctx: NodeContext) -> list[str]:
    problems = []
    for index in (0, 1):
        t = ctx.in_type(index)
        if t is not None and t.dtype not in ("float32", "float16", "float64"):
            problems.append(f"input {index} is {t.dtype}; integer Mod is not translated")
    if not ctx.attr("fmod", 0):
        problems.append("fmod=0 on floats is not valid ONNX")
    if ctx.is_const(1) and ctx.const(1).size > 1:
        # fmod reads the divisor twice (x - trunc(x / y) * y): the package would hold it twice,
        # once inverted by coremltools' divide_to_multiply, and the parameter check refuses that.
        problems.append("a constant divisor tensor is not supported (a divisor computed at run time or "
                        "a single value is)")
    return problems


@op("Mod", check=_check_mod)
def mod(ctx: NodeContext) -> None:
    """C's fmod: x - trunc(x / y) * y (the sign of x).  MIL's mod is the floor remainder."""
    mb = _mb()
    x, y = ctx.x(0), ctx.x(1)
    quotient = mb.real_div(x=x, y=y, name=ctx.name("quotient"))
    truncated = mb.mul(x=mb.sign(x=quotient, name=ctx.name("sign")),
                       y=mb.floor(x=mb.abs(x=quotient, name=ctx.name("abs")), name=ctx.name("floor")),
                       name=ctx.name("truncated"))
    ctx.set_output(0, mb.sub(x=x, y=mb.mul(x=truncated, y=y, name=ctx.name("multiple")), name=ctx.name()))


# ----------------------------------------------------------------------------- dilated pooling

def _dilations(ctx: NodeContext) -> list[int]:
    return [int(d) for d in (ctx.attr("dilations") or [1] * len(ctx.attr("kernel_shape")))]


def _is_dilated(ctx: NodeContext) -> bool:
    return any(d != 1 for d in _dilations(ctx))


def _check_pool_dilated_too(ctx: NodeContext) -> list[str]:
    """ops._check_pool, whose dilation refusal and ceil_mode arithmetic (undilated) do not apply
    to dilated windows: those are written out below and checked against ONNX's output shape."""
    if not _is_dilated(ctx):
        return _check_pool(ctx)
    problems = _float_input(ctx) + _static_input(ctx) + ops._static_output(ctx)
    rank = _rank(ctx)
    if rank is not None and rank < 3:
        problems.append(f"input rank {rank}: pooling needs N, C and spatial axes")
    if ctx.node.op_type == "MaxPool" and (int(ctx.attr("storage_order", 0)) != 0 or ctx.output_used(1)):
        problems.append("the Indices output is used; the dilated max pooling written out here has none")
    if ctx.node.op_type == "LpPool" and float(ctx.attr("p", 2)) <= 0:
        problems.append(f"p={ctx.attr('p')} (must be positive)")
    return problems


def _window_reduce(ctx: NodeContext, x, combine: str, pad_value: float, role: str, extra_value=None,
                   last_name=None):
    """Reduce every dilated pooling window of x with `combine` ("maximum" or "add"), axis by axis
    (both are separable): pad, then per spatial axis combine the kernel's strided slices
    (offset k * dilation, step stride, one element per output position).  Core ML's pooling ops
    have no dilation; slices and element-wise ops of MIL do this with the same windows.

    pad_value fills the declared pads; extra_value (default pad_value) the overhang ceil_mode
    adds past them.  last_name names the final op (the node's result)."""
    mb = _mb()
    kernel = [int(k) for k in ctx.attr("kernel_shape")]
    strides = [int(s) for s in ctx.attr("strides", [1] * len(kernel))]
    dilations = _dilations(ctx)
    in_shape, out_shape = ctx.in_shape(0), ctx.out_shape(0)
    begins, ends = ops._spatial_pads(ctx, in_shape, kernel, strides, dilations)
    extra = [max(0, (out_shape[2 + i] - 1) * strides[i] + (kernel[i] - 1) * dilations[i] + 1
                 - (in_shape[2 + i] + begins[i] + ends[i])) for i in range(len(kernel))]
    if any(begins) or any(ends):
        x = mb.pad(x=x, pad=np.array([0, 0, 0, 0] + _interleave(begins, ends), np.int32), mode="constant",
                   constant_val=ctx.float(pad_value), name=ctx.name(f"{role}_padded"))
    if any(extra):
        x = mb.pad(x=x, pad=np.array([0, 0, 0, 0] + _interleave([0] * len(extra), extra), np.int32),
                   mode="constant", constant_val=ctx.float(pad_value if extra_value is None else extra_value),
                   name=ctx.name(f"{role}_overhang"))
    combine_op = getattr(mb, combine)
    for i in range(len(kernel)):
        axis = 2 + i
        shape = list(x.shape)
        result = None
        for k in range(kernel[i]):
            begin = [0] * len(shape)
            end = list(shape)
            stride = [1] * len(shape)
            begin[axis] = k * dilations[i]
            end[axis] = begin[axis] + (out_shape[axis] - 1) * strides[i] + 1
            stride[axis] = strides[i]
            last = i == len(kernel) - 1 and k == kernel[i] - 1 and last_name is not None
            part = mb.slice_by_index(x=x, begin=begin, end=end, stride=stride,
                                     name=last_name if last and k == 0 else ctx.name(f"{role}_axis{i}_tap{k}"))
            result = part if result is None else combine_op(
                x=result, y=part, name=last_name if last else ctx.name(f"{role}_axis{i}_upto{k}"))
        x = result
    return x


def dilated_pool(ctx: NodeContext) -> None:
    """MaxPool / AveragePool / LpPool with dilations (see _window_reduce)."""
    mb = _mb()
    op_type = ctx.node.op_type
    if op_type == "MaxPool":
        lowest = float(np.finfo(np.float16 if ctx.float_name == "fp16" else np.float32).min)
        ctx.set_output(0, _window_reduce(ctx, ctx.x(0), "maximum", lowest, "max", last_name=ctx.name()))
        return
    x = ctx.x(0)
    if op_type == "LpPool":
        p = float(ctx.attr("p", 2))
        powered = mb.mul(x=x, y=x, name=ctx.name("square")) if p == 2 else \
            mb.pow(x=mb.abs(x=x, name=ctx.name("abs")), y=ctx.float(p), name=ctx.name("power"))
        total = _window_reduce(ctx, powered, "add", 0.0, "sum")
        ctx.set_output(0, mb.pow(x=total, y=ctx.float(1.0 / p), name=ctx.name()))
        return
    total = _window_reduce(ctx, x, "add", 0.0, "sum")
    # The divisor per window: the number of its taps inside the input, or with count_include_pad
    # inside the declared pads too (never the ceil_mode overhang), counted the same way on ones.
    ones = mb.fill_like(ref_tensor=x, value=ctx.float(1.0), name=ctx.name("ones"))
    count = _window_reduce(ctx, ones, "add", 1.0 if ctx.attr("count_include_pad", 0) else 0.0, "count",
                           extra_value=0.0)
    ctx.set_output(0, mb.real_div(x=total, y=count, name=ctx.name()))


def _pool_any(ctx: NodeContext) -> None:
    # The undilated translations are looked up when called (ops.pool, lp_pool), not captured,
    # so that a test swapping one of them sees it used.
    if _is_dilated(ctx):
        dilated_pool(ctx)
    elif ctx.node.op_type == "LpPool":
        lp_pool(ctx)
    else:
        ops.pool(ctx)


def _check_pool_any(ctx: NodeContext) -> list[str]:
    if _is_dilated(ctx):
        return _check_pool_dilated_too(ctx)
    return _check_lp_pool(ctx) if ctx.node.op_type == "LpPool" else ops._check_pool(ctx)


op("MaxPool", "AveragePool", "LpPool", check=_check_pool_any)(_pool_any)


# ----------------------------------------------------------------------------- ConvTranspose, run-time weight

def _runtime_weight(ctx: NodeContext) -> bool:
    return not ctx.is_const(1) or (ctx.has_input(2) and not ctx.is_const(2))


def _check_conv_transpose_any(ctx: NodeContext) -> list[str]:
    problems = ops._check_conv(ctx)
    if not _runtime_weight(ctx):
        return problems
    # Written out with conv, which takes a run-time weight (see conv_transpose_runtime_weight).
    problems = [p for p in problems if "is computed at run time" not in p]
    if ctx.in_shape(1) is None:
        problems.append("the shape of the weight (input 1) is not known statically")
    elif len(ctx.in_shape(1)) > 4 and int(ctx.attr("group", 1)) != 1:
        problems.append("a grouped 3-D ConvTranspose with a run-time weight needs a rank-6 weight reshape")
    return problems


def _insert_zeros(ctx: NodeContext, x, axis: int, stride: int, role: str = ""):
    """stride - 1 zeros between neighbours along `axis`: [A, L, B] -> [A, L, stride, B] (padded
    with zeros) -> [A, L * stride, B], cut to (L - 1) * stride + 1."""
    mb = _mb()
    shape = [int(d) for d in x.shape]
    before, length, after = int(np.prod(shape[:axis])), shape[axis], int(np.prod(shape[axis + 1:]))
    grid = mb.reshape(x=x, shape=[before, length, 1, after], name=ctx.name(f"{role}axis{axis}_rows"))
    grid = mb.pad(x=grid, pad=np.array([0, 0, 0, 0, 0, stride - 1, 0, 0], np.int32), mode="constant",
                  constant_val=ctx.float(0.0), name=ctx.name(f"{role}axis{axis}_zeros"))
    spread = mb.reshape(x=grid, shape=[before, length * stride, after], name=ctx.name(f"{role}axis{axis}_spread"))
    spread = mb.slice_by_index(x=spread, begin=[0, 0, 0], end=[before, (length - 1) * stride + 1, after],
                               name=ctx.name(f"{role}axis{axis}_cut"))
    shape[axis] = (length - 1) * stride + 1
    return mb.reshape(x=spread, shape=shape, name=ctx.name(f"{role}axis{axis}_inserted"))


def conv_transpose_runtime_weight(ctx: NodeContext) -> None:
    """ConvTranspose whose weight (or bias) is computed at run time: MIL's conv_transpose takes a
    constant weight only, conv takes either.  A transposed convolution is a convolution of the
    input with stride - 1 zeros inserted between neighbours, padded by (kernel - 1) * dilation
    minus ONNX's head on each side, with the weight's in/out channels swapped (per group) and its
    taps reversed.  The pads are chosen so the result is exactly ONNX's window (head, output
    size; output_padding's rows come from the zero padding); the bias is added after."""
    mb = _mb()
    x = ctx.x(0)
    weight_shape = list(ctx.in_shape(1))
    spatial = len(weight_shape) - 2
    strides = [int(s) for s in ctx.attr("strides", [1] * spatial)]
    dilations = [int(d) for d in ctx.attr("dilations", [1] * spatial)]
    groups = int(ctx.attr("group", 1))
    heads, _, outs = ops.conv_transpose_head_and_size(ctx)
    for i in range(spatial):
        if strides[i] > 1:
            x = _insert_zeros(ctx, x, 2 + i, strides[i])
    lefts, rights, crop_begin, crop_end = [], [], [], []
    for i in range(spatial):
        reach = (weight_shape[2 + i] - 1) * dilations[i]
        length = int(x.shape[2 + i])
        left = reach - heads[i]
        right = outs[i] + reach - length - left
        lefts.append(max(left, 0))
        rights.append(max(right, 0))
        crop_begin.append(max(-left, 0))
        crop_end.append(length - max(-right, 0))
    if any(crop_begin) or any(c != int(x.shape[2 + i]) for i, c in enumerate(crop_end)):
        x = mb.slice_by_index(x=x, begin=[0, 0] + crop_begin, end=list(x.shape[:2]) + crop_end,
                              name=ctx.name("cropped"))
    if any(lefts) or any(rights):
        x = mb.pad(x=x, pad=np.array([0, 0, 0, 0] + _interleave(lefts, rights), np.int32), mode="constant",
                   constant_val=ctx.float(0.0), name=ctx.name("padded"))
    c_in, c_out_per_group = weight_shape[0], weight_shape[1]
    kernel = weight_shape[2:]
    weight = ctx.x(1)
    if groups == 1:
        weight = mb.transpose(x=weight, perm=[1, 0] + list(range(2, 2 + spatial)), name=ctx.name("weight_swapped"))
    else:
        grouped = mb.reshape(x=weight, shape=[groups, c_in // groups, c_out_per_group] + kernel,
                             name=ctx.name("weight_groups"))
        grouped = mb.transpose(x=grouped, perm=[0, 2, 1] + list(range(3, 3 + spatial)),
                               name=ctx.name("weight_swapped"))
        weight = mb.reshape(x=grouped, shape=[groups * c_out_per_group, c_in // groups] + kernel,
                            name=ctx.name("weight_per_group"))
    weight = mb.reverse(x=weight, axes=list(range(2, 2 + spatial)), name=ctx.name("weight_reversed"))
    for i in range(spatial):
        if dilations[i] > 1:
            # coremltools refuses dilations on a conv with a run-time weight: dilate the weight itself
            weight = _insert_zeros(ctx, weight, 2 + i, dilations[i], role="weight_")
    conv = dict(x=x, weight=weight, strides=[1] * spatial, groups=groups, pad_type="valid")
    if not ctx.has_input(2):
        ctx.set_output(0, mb.conv(**conv, name=ctx.name()))
        return
    y = mb.conv(**conv, name=ctx.name("conv"))
    bias = mb.reshape(x=ctx.x(2), shape=[-1] + [1] * spatial, name=ctx.name("bias_per_channel"))
    ctx.set_output(0, mb.add(x=y, y=bias, name=ctx.name()))


def _conv_transpose_any(ctx: NodeContext) -> None:
    if _runtime_weight(ctx):
        conv_transpose_runtime_weight(ctx)
    else:
        ops.conv_transpose(ctx)  # looked up when called, as for pooling above


op("ConvTranspose", check=_check_conv_transpose_any)(_conv_transpose_any)


# ----------------------------------------------------------------------------- recurrent ops, unrolled

_RECURRENT_GATES = {"RNN": 1, "GRU": 3, "LSTM": 4}
_RECURRENT_DEFAULTS = {"RNN": ["Tanh"], "GRU": ["Sigmoid", "Tanh"], "LSTM": ["Sigmoid", "Tanh", "Tanh"]}
_ACTIVATIONS = {"Sigmoid": "sigmoid", "Tanh": "tanh", "Relu": "relu"}


def _recurrent_activations(ctx: NodeContext) -> list[str]:
    names = [a.decode() if isinstance(a, bytes) else str(a) for a in (ctx.attr("activations") or [])]
    per_direction = _RECURRENT_DEFAULTS[ctx.node.op_type]
    return names[:len(per_direction)] if names else per_direction


def _check_recurrent(ctx: NodeContext) -> list[str]:
    problems = _float_input(ctx) + _static_input(ctx)
    for index in (1, 2):
        if ctx.in_shape(index) is None:
            problems.append(f"the shape of input {index} is not known statically")
    constant = [index for index in (1, 2, 3, 7) if ctx.has_input(index) and ctx.is_const(index)]
    if constant:
        # The unrolled steps read per-direction, per-gate slices; coremltools folds slices of a
        # constant into new constants, which the weights and parameters checks cannot trace back
        # to the source tensor yet (values would pass, those checks would fail).
        problems.append(f"constant weights (inputs {', '.join(map(str, constant))}) are not translated yet: "
                        "only weights given as graph inputs are (the weight checks cannot trace the "
                        "per-gate slices of a constant)")
    if ctx.has_input(4):
        problems.append("sequence_lens (input 4) is given: per-batch sequence lengths are not translated")
    if ctx.attr("clip") is not None:
        problems.append("clip is not translated")
    if ctx.attr("activation_alpha") is not None or ctx.attr("activation_beta") is not None:
        problems.append("activation_alpha / activation_beta are not translated")
    names = [a.decode() if isinstance(a, bytes) else str(a) for a in (ctx.attr("activations") or [])]
    for name in names:
        if name not in _ACTIVATIONS:
            problems.append(f"activation {name!r} (Sigmoid, Tanh and Relu are translated)")
    if names and ctx.attr("direction", b"forward") in (b"bidirectional", "bidirectional") \
            and names[:len(names) // 2] != names[len(names) // 2:]:
        problems.append("different activations per direction are not translated")
    if ctx.node.op_type == "LSTM" and int(ctx.attr("input_forget", 0)):
        problems.append("input_forget=1 is not translated")
    return problems


def recurrent(ctx: NodeContext) -> None:
    """RNN, GRU and LSTM unrolled over the (fixed) sequence: per direction and time step the
    ONNX equations (onnx.ai operator docs) with matmul, element-wise ops and activations, so
    every step is checked by value.  Core ML's rnn/gru/lstm ops have no numpy evaluation to
    verify them by.  The input projections of all steps are one matmul per direction."""
    mb = _mb()
    op_type = ctx.node.op_type
    gates = _RECURRENT_GATES[op_type]
    hidden = int(ctx.attr("hidden_size"))
    layout = int(ctx.attr("layout", 0))
    direction = ctx.attr("direction", b"forward")
    direction = direction.decode() if isinstance(direction, bytes) else str(direction)
    directions = ["forward", "reverse"] if direction == "bidirectional" else [direction]
    f, g, h = ([getattr(mb, _ACTIVATIONS[a]) for a in _recurrent_activations(ctx)] + [None, None])[:3]
    x = ctx.x(0)
    if layout == 1:
        x = mb.transpose(x=x, perm=[1, 0, 2], name=ctx.name("time_major"))
    steps, batch = int(x.shape[0]), int(x.shape[1])
    w, r = ctx.x(1), ctx.x(2)
    b = ctx.x(3) if ctx.has_input(3) else None
    h0 = ctx.x(5) if ctx.has_input(5) else None
    c0 = ctx.x(6) if op_type == "LSTM" and ctx.has_input(6) else None
    p = ctx.x(7) if op_type == "LSTM" and ctx.has_input(7) else None
    linear_before_reset = op_type == "GRU" and int(ctx.attr("linear_before_reset", 0))

    def pick(tensor, d, begin, end, role):  # tensor[d, begin:end] of a [dirs, n] or [dirs, n, m] tensor
        shape = [int(s) for s in tensor.shape]
        sliced = mb.slice_by_index(x=tensor, begin=[d, begin] + [0] * (len(shape) - 2),
                                   end=[d + 1, end] + shape[2:], name=ctx.name(f"{role}_sliced"))
        return mb.squeeze(x=sliced, axes=[0], name=ctx.name(role))

    def gate_parts(tensor, role):
        return [mb.slice_by_index(x=tensor, begin=[0, k * hidden], end=[batch, (k + 1) * hidden],
                                  name=ctx.name(f"{role}_gate{k}")) for k in range(gates)]

    outputs_per_direction, last_h, last_c = [], [], []
    for d, name in enumerate(directions):
        tag = f"d{d}"
        w_d = pick(w, d, 0, gates * hidden, f"{tag}_w")
        r_d = pick(r, d, 0, gates * hidden, f"{tag}_r")
        projected = mb.matmul(x=x, y=w_d, transpose_y=True, name=ctx.name(f"{tag}_input_projection"))
        if b is not None:
            wb = pick(b, d, 0, gates * hidden, f"{tag}_wb")
            rb = pick(b, d, gates * hidden, 2 * gates * hidden, f"{tag}_rb")
            if linear_before_reset:
                projected = mb.add(x=projected, y=wb, name=ctx.name(f"{tag}_input_projection_biased"))
            else:
                projected = mb.add(x=projected, y=mb.add(x=wb, y=rb, name=ctx.name(f"{tag}_bias")),
                                   name=ctx.name(f"{tag}_input_projection_biased"))
        else:
            rb = None
        # None is a zero state (no initial_h / initial_c): the terms it multiplies are left out
        # rather than computed from a zero tensor, which would be a constant the source lacks.
        state = pick(h0, d, 0, batch, f"{tag}_h0") if h0 is not None else None
        cell = None
        if op_type == "LSTM":
            cell = pick(c0, d, 0, batch, f"{tag}_c0") if c0 is not None else None
            peep = [pick(p, d, k * hidden, (k + 1) * hidden, f"{tag}_p{k}") for k in range(3)] if p is not None else None
        order = range(steps) if name == "forward" else range(steps - 1, -1, -1)
        states = {}
        for t in order:
            s = f"{tag}_t{t}"
            xt = mb.squeeze(x=mb.slice_by_index(x=projected, begin=[t, 0, 0], end=[t + 1, batch, gates * hidden],
                                                name=ctx.name(f"{s}_x_sliced")), axes=[0], name=ctx.name(f"{s}_x"))
            xs = gate_parts(xt, f"{s}_x")
            recur = None if state is None else mb.matmul(x=state, y=r_d, transpose_y=True,
                                                          name=ctx.name(f"{s}_recurrent"))

            def plus(a, b_, role):
                return a if b_ is None else mb.add(x=a, y=b_, name=ctx.name(role))

            if op_type == "RNN":
                state = f(x=plus(xs[0], recur, f"{s}_sum"), name=ctx.name(f"{s}_h"))
            elif op_type == "GRU":
                rs = gate_parts(recur, f"{s}_r") if recur is not None else [None] * 3
                if linear_before_reset and rb is not None:
                    rbs = [mb.slice_by_index(x=rb, begin=[k * hidden], end=[(k + 1) * hidden],
                                             name=ctx.name(f"{s}_rb{k}")) for k in range(3)]
                    rs = [plus(rbs[k], rs[k], f"{s}_r{k}_biased") for k in range(3)]
                z = f(x=plus(xs[0], rs[0], f"{s}_z_sum"), name=ctx.name(f"{s}_z"))
                reset = f(x=plus(xs[1], rs[1], f"{s}_r_sum"), name=ctx.name(f"{s}_reset"))
                if linear_before_reset:
                    candidate_in = None if rs[2] is None else mb.mul(x=reset, y=rs[2],
                                                                     name=ctx.name(f"{s}_reset_recurrent"))
                elif state is None:
                    candidate_in = None
                else:
                    r_h = mb.slice_by_index(x=r_d, begin=[2 * hidden, 0], end=[3 * hidden, hidden],
                                            name=ctx.name(f"{s}_r_h"))
                    candidate_in = mb.matmul(x=mb.mul(x=reset, y=state, name=ctx.name(f"{s}_reset_state")), y=r_h,
                                             transpose_y=True, name=ctx.name(f"{s}_reset_recurrent"))
                candidate = g(x=plus(xs[2], candidate_in, f"{s}_candidate_sum"), name=ctx.name(f"{s}_candidate"))
                # H = (1 - z) * candidate + z * H_prev = candidate - z * (candidate - H_prev)
                delta = candidate if state is None else mb.sub(x=candidate, y=state, name=ctx.name(f"{s}_delta"))
                state = mb.sub(x=candidate, y=mb.mul(x=z, y=delta, name=ctx.name(f"{s}_kept")),
                               name=ctx.name(f"{s}_h"))
            else:
                rs = gate_parts(recur, f"{s}_r") if recur is not None else [None] * 4
                sums = [plus(xs[k], rs[k], f"{s}_sum{k}") for k in range(4)]
                if peep is not None and cell is not None:  # P's order is i, o, f; the gates' is i, o, f, c
                    sums[0] = mb.add(x=sums[0], y=mb.mul(x=peep[0], y=cell, name=ctx.name(f"{s}_peep_i")),
                                     name=ctx.name(f"{s}_sum0_peep"))
                    sums[2] = mb.add(x=sums[2], y=mb.mul(x=peep[2], y=cell, name=ctx.name(f"{s}_peep_f")),
                                     name=ctx.name(f"{s}_sum2_peep"))
                i_gate = f(x=sums[0], name=ctx.name(f"{s}_i"))
                f_gate = f(x=sums[2], name=ctx.name(f"{s}_f"))
                c_new = g(x=sums[3], name=ctx.name(f"{s}_c_candidate"))
                added = mb.mul(x=i_gate, y=c_new, name=ctx.name(f"{s}_c_added" if cell is not None else f"{s}_c"))
                cell = added if cell is None else mb.add(
                    x=mb.mul(x=f_gate, y=cell, name=ctx.name(f"{s}_c_kept")), y=added, name=ctx.name(f"{s}_c"))
                if peep is not None:
                    sums[1] = mb.add(x=sums[1], y=mb.mul(x=peep[1], y=cell, name=ctx.name(f"{s}_peep_o")),
                                     name=ctx.name(f"{s}_sum1_peep"))
                o_gate = f(x=sums[1], name=ctx.name(f"{s}_o"))
                state = mb.mul(x=o_gate, y=h(x=cell, name=ctx.name(f"{s}_c_activated")), name=ctx.name(f"{s}_h"))
            states[t] = state
        outputs_per_direction.append([states[t] for t in range(steps)])
        last_h.append(state)
        last_c.append(cell)
    if ctx.output_used(0):
        per_direction = [mb.stack(values=hs, axis=0, name=ctx.name(f"d{d}_y")) for d, hs in enumerate(outputs_per_direction)]
        y = mb.stack(values=per_direction, axis=1, name=ctx.name("y" if layout == 1 else None))  # [seq, dirs, batch, H]
        if layout == 1:
            y = mb.transpose(x=y, perm=[2, 0, 1, 3], name=ctx.name())
        ctx.set_output(0, y)
    for index, finals, role in ((1, last_h, "y_h"), (2, last_c, "y_c")):
        if not ctx.output_used(index):
            continue
        y = mb.stack(values=finals, axis=0, name=ctx.name(role if layout == 1 else f"{role}_out"))
        if layout == 1:
            y = mb.transpose(x=y, perm=[1, 0, 2], name=ctx.name(f"{role}_out"))
        ctx.set_output(index, y)


op("RNN", "GRU", "LSTM", check=_check_recurrent)(recurrent)
