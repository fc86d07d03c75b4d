"""A reference evaluator for Core ML ML Programs (MIL), in numpy, for machines without Core ML.

    from engine.convert.mil_reference import load_program, evaluate
    program = load_program("model.mlpackage")            # read back from the package, weights included
    values = evaluate(program, {"image": array})          # every tensor of the program, by MIL name
    values["encoder_stem_conv_Conv"], values["mask"]

Why it exists: Core ML runs only on Apple systems, so on Linux nothing executes a
converted program; the converter's value check (engine/convert/values.py) runs it here.

Where each op's meaning comes from -- never from our ONNX -> MIL translation
(engine/convert/ops.py), so the two cannot share a misunderstanding:
- ops whose coremltools definition carries a numpy `value_inference`
  (elementwise, activations, reshaping, matmul/linear, reductions, pad, concat, ...):
  that function, called with the run-time values bound to the op's inputs;
- the ops without one (conv, conv_transpose, max_pool, avg_pool, batch_norm,
  local_response_norm, upsample_nearest_neighbor, upsample_bilinear, resize_bilinear,
  gather_nd, constexpr_blockwise_shift_scale):
  written below from the MIL op specification (the docstrings of
  coremltools/converters/mil/mil/ops/defs/iOS15..iOS17), each citing what it follows.

Precision: each op computes in float32 (float64 where coremltools' value_inference
does) and its result is stored in the op's output dtype, so an fp16 program's tensors
are rounded to fp16 after every op, as an fp16 Core ML program stores them.  How a
device accumulates inside an op (fp16 on the GPU / Neural Engine) is not modelled.

Ops that are neither in coremltools' value inference nor written here raise
`UnsupportedOp` naming the op: an evaluation never silently skips an op.
"""
from __future__ import annotations

import itertools
import math
from pathlib import Path
from typing import Callable, Collection, Mapping, Optional

import numpy as np

__all__ = ["load_program", "evaluate", "UnsupportedOp", "EvaluationError", "SPEC_OPS", "output_names"]


class UnsupportedOp(Exception):
    """The program has an op this evaluator cannot execute (named, with its type)."""

    def __init__(self, op_name: str, op_type: str, reason: str):
        self.op_name = op_name
        self.op_type = op_type
        super().__init__(f"{op_name} ({op_type}): {reason}")


class EvaluationError(Exception):
    """An op failed on the values it was given (inconsistent shapes, ...): the program is wrong."""

    def __init__(self, op_name: str, op_type: str, reason: str):
        self.op_name = op_name
        self.op_type = op_type
        super().__init__(f"{op_name} ({op_type}): {reason}")


def load_program(package_path: str | Path):
    """The MIL program stored in an .mlpackage, its weights read from the package's weight file.

    Uses coremltools' own proto loader and weight-storage reader (both work on Linux).
    """
    from engine.convert.builder import load_coremltools

    ct = load_coremltools()
    from coremltools.converters.mil.frontend.milproto.load import load

    model = ct.models.MLModel(str(package_path), skip_model_load=True)
    spec = model.get_spec()
    if spec.WhichOneof("Type") != "mlProgram":
        raise ValueError(f"{package_path}: is not an ML Program (a neural-network model has no MIL program)")
    return load(spec, spec.specificationVersion, model.weights_dir)


def output_names(program, function: str = "main") -> list[str]:
    return [var.name for var in program.functions[function].outputs]


def evaluate(program, inputs: Mapping[str, np.ndarray], *, keep: Optional[Collection[str]] = None,
             function: str = "main", states: Optional[Mapping[str, np.ndarray]] = None) -> dict[str, np.ndarray]:
    """Run `program` on `inputs` (by input name) and return its tensors by MIL var name.

    keep: names of tensors to return besides the function's outputs (None: every tensor,
    which holds all intermediates in memory at once; give the names you compare to let
    the others go as soon as their last consumer has run).  Constants are not returned
    (read them from the program: `var.val`).

    states: the value of each Core ML state input (iOS18 `read_state` / `write_state`, which the
    package loader gives as `coreml_update_state`) before the call; the result holds each
    state's value after the call under the state's name.
    """
    from coremltools.converters.mil.mil import types

    block = program.functions[function]
    operations = list(block.operations)
    wanted = None if keep is None else set(keep) | {var.name for var in block.outputs}
    last_use: dict[str, int] = {}
    for index, op in enumerate(operations):
        for var in _input_vars(op):
            last_use[var.name] = index

    values: dict[str, np.ndarray] = {}
    state_values: dict[str, np.ndarray] = {}
    for name, var in block.inputs.items():
        if types.is_state(var.sym_type):
            if states is None or name not in states:
                raise KeyError(f"no value given for the program state '{name}' (states: "
                               f"{', '.join(n for n, v in block.inputs.items() if types.is_state(v.sym_type))})")
            wrapped = var.sym_type.wrapped_type()
            state_values[name] = np.array(states[name], dtype=types.nptype_from_builtin(wrapped.get_primitive()))
            continue
        if name not in inputs:
            raise KeyError(f"no value given for the program input '{name}' (inputs: {', '.join(block.inputs)})")
        values[name] = np.asarray(inputs[name]).astype(_numpy_dtype(var), copy=False).reshape(
            _concrete_shape(var, np.shape(inputs[name])))
    # Overflow to inf and NaNs are results to compare (an fp16 program overflowing is a finding
    # of the value check), not warnings for the person converting.
    with np.errstate(all="ignore"):
        result = _evaluate_ops(operations, values, wanted, last_use, state_values)
    result.update(state_values)
    return result


def _evaluate_ops(operations, values: dict, wanted, last_use: Mapping[str, int],
                  state_values: dict) -> dict[str, np.ndarray]:
    for index, op in enumerate(operations):
        if op.op_type == "const":
            if wanted is not None and op.outputs[0].name in wanted:
                # A graph output that coremltools' const_elimination turned into a const op
                # (a Shape of a fixed-size input): its value is the result.
                values[op.outputs[0].name] = np.asarray(op.outputs[0].val).astype(_numpy_dtype(op.outputs[0]),
                                                                                 copy=False)
            continue
        try:
            results = _run_state_op(op, values, state_values) if op.op_type in _STATE_OPS else _run_op(op, values)
        except (UnsupportedOp, KeyError):
            raise
        except Exception as exc:  # numpy refusing the op's values: name the op
            raise EvaluationError(op.name, op.op_type, f"{type(exc).__name__}: {exc}") from exc
        for var, result in zip(op.outputs, results):
            values[var.name] = np.asarray(result).astype(_numpy_dtype(var), copy=False)
        if wanted is not None:
            for var in _input_vars(op):
                if last_use.get(var.name) == index and var.name not in wanted:
                    values.pop(var.name, None)
    if wanted is not None:
        values = {name: value for name, value in values.items() if name in wanted}
    return values


# ----------------------------------------------------------------------------- plumbing

def _input_vars(op):
    for value in op.inputs.values():
        for var in (value if isinstance(value, (list, tuple)) else (value,)):
            if var is not None and var.val is None:
                yield var


def _numpy_dtype(var):
    from coremltools.converters.mil.mil import types

    dtype = var.dtype
    return types.nptype_from_builtin(dtype) if dtype is not None else np.float32


def _concrete_shape(var, given):
    shape = tuple(var.shape) if var.shape is not None else tuple(given)
    if len(shape) != len(given) or any(isinstance(d, (int, np.integer)) and d != g for d, g in zip(shape, given)):
        raise ValueError(f"input '{var.name}' has shape {list(given)}; the program expects {list(shape)}")
    return tuple(given)


class _Bound:
    """Stands in for a Var's symbolic value while value_inference reads `var.val`."""

    __slots__ = ("val",)

    def __init__(self, value):
        self.val = value


def _arguments(op, values: Mapping[str, np.ndarray]) -> dict:
    """op's inputs as numpy values (constants from the program, the rest from `values`)."""
    def value_of(var):
        if var is None:
            return None
        if var.val is not None:
            return var.val
        return values[var.name]

    args = {}
    for name, value in op.inputs.items():
        args[name] = [value_of(v) for v in value] if isinstance(value, (list, tuple)) else value_of(value)
    return args


_STATE_OPS = ("read_state", "coreml_update_state")


def _run_state_op(op, values: Mapping[str, np.ndarray], state_values: dict) -> tuple:
    """read_state (iOS18 states docstring): a copy of the state's content.  write_state, loaded
    from a package as coreml_update_state (coreml dialect docstring): the value is copied into
    the state and returned."""
    if op.op_type == "read_state":
        return (state_values[op.input.name].copy(),)
    value = op.value.val if op.value.val is not None else values[op.value.name]
    state_values[op.state.name] = np.array(value, dtype=state_values[op.state.name].dtype)
    return (np.array(value),)


def _run_op(op, values: Mapping[str, np.ndarray]) -> tuple:
    spec_function = SPEC_OPS.get(op.op_type)
    if spec_function is not None:
        result = spec_function(_arguments(op, values))
        return result if isinstance(result, tuple) else (result,)
    if type(op).value_inference is _base_value_inference():
        raise UnsupportedOp(op.name, op.op_type, "no numpy evaluation: coremltools' op has no value_inference and "
                                                 "the MIL reference evaluator does not implement it")
    return _via_value_inference(op, values)


def _const_flags(op):
    for value in op.inputs.values():
        if not isinstance(value, (list, tuple)) and value is not None and isinstance(value.val, np.bool_):
            yield value


def _base_value_inference():
    from coremltools.converters.mil.mil import Operation
    return Operation.value_inference


def _via_value_inference(op, values: Mapping[str, np.ndarray]) -> tuple:
    bound = []
    try:
        for var in _input_vars(op):
            bound.append((var, var._sym_val))
            var._sym_val = _Bound(values[var.name])
        for var in _const_flags(op):
            # A program read back from a package holds bool arguments as numpy bools, which
            # numpy's keepdims= refuses; value_inference was written for Python bools.
            bound.append((var, var._sym_val))
            var._sym_val = _Bound(bool(var.val))
        result = op.value_inference()
    except NotImplementedError as exc:
        raise UnsupportedOp(op.name, op.op_type, f"coremltools' value_inference does not cover this case "
                                                 f"({exc})") from exc
    finally:
        for var, previous in reversed(bound):
            var._sym_val = previous
    if result is None:
        raise UnsupportedOp(op.name, op.op_type, "coremltools' value_inference gave no value")
    return tuple(result) if isinstance(result, (tuple, list)) and len(op.outputs) > 1 else (result,)


# ----------------------------------------------------------------------------- ops from the MIL spec
#
# Each function takes the op's inputs by parameter name (constants included) and returns
# its output(s).  The docstring citations are to coremltools 9's op definitions.

def _ints(value, default):
    return [int(v) for v in np.asarray(default if value is None else value).reshape(-1)]


def _str(value, default: str) -> str:
    return default if value is None else str(value)


def _padding(pad_type: str, pad, in_sizes, kernel, strides, dilations) -> list[tuple[int, int]]:
    """(before, after) per spatial axis for conv/pool pad_type (conv, avg_pool docstrings).

    valid: none.  custom: pad[2i], pad[2i+1] before/after axis i.  same: the output is
    ceil(d_in / stride); the total padding that needs is split with the odd one after
    (same) or before (same_lower: "extra rows/cols on the top/left").
    """
    spatial = len(in_sizes)
    if pad_type == "valid":
        return [(0, 0)] * spatial
    if pad_type == "custom":
        amounts = _ints(pad, [0] * (2 * spatial))
        return [(amounts[2 * i], amounts[2 * i + 1]) for i in range(spatial)]
    if pad_type in ("same", "same_lower"):
        result = []
        for size, k, s, d in zip(in_sizes, kernel, strides, dilations):
            out = -(-size // s)
            total = max((out - 1) * s + (k - 1) * d + 1 - size, 0)
            small, large = total // 2, total - total // 2
            result.append((small, large) if pad_type == "same" else (large, small))
        return result
    raise ValueError(f"pad_type {pad_type!r} is not one of valid, custom, same, same_lower")


def _windows(x: np.ndarray, kernel, strides, dilations) -> np.ndarray:
    """[n, c, *out, *kernel] view of every window of the (already padded) x."""
    spatial = len(kernel)
    axes = tuple(range(2, 2 + spatial))
    extents = [(k - 1) * d + 1 for k, d in zip(kernel, dilations)]
    view = np.lib.stride_tricks.sliding_window_view(x, extents, axis=axes)
    index = (slice(None), slice(None)) + tuple(slice(None, None, s) for s in strides) + \
        tuple(slice(None, None, d) for d in dilations)
    return view[index]


def conv(args: dict) -> np.ndarray:
    """conv (iOS15 conv docstring): y[n, o] = sum over the o's group's input channels and the
    kernel of x_padded[n, c, s*i + d*k] * weight[o, c, k] + bias[o]; weight is
    [C_out, C_in/groups, *K]; C_in and C_out split into `groups` consecutive groups."""
    x, weight = np.asarray(args["x"], np.float32), np.asarray(args["weight"], np.float32)
    spatial = x.ndim - 2
    kernel = list(weight.shape[2:])
    strides = _ints(args.get("strides"), [1] * spatial)
    dilations = _ints(args.get("dilations"), [1] * spatial)
    groups = int(args.get("groups") if args.get("groups") is not None else 1)
    pads = _padding(_str(args.get("pad_type"), "valid"), args.get("pad"), x.shape[2:], kernel, strides, dilations)
    x = np.pad(x, [(0, 0), (0, 0)] + pads)
    windows = _windows(x, kernel, strides, dilations)  # [n, C_in, *out, *K]
    n, c_in = windows.shape[:2]
    out_sizes = windows.shape[2:2 + spatial]
    c_out = weight.shape[0]
    kernel_axes = list(range(2 + spatial, 2 + 2 * spatial))
    if groups == 1:  # one matrix product (BLAS)
        y = np.moveaxis(np.tensordot(windows, weight, axes=([1] + kernel_axes, list(range(1, 2 + spatial)))), -1, 1)
    else:
        grouped = windows.reshape((n, groups, c_in // groups) + out_sizes + tuple(kernel))
        w = weight.reshape((groups, c_out // groups) + weight.shape[1:])
        out_letters, kernel_letters = "abc"[:spatial], "pqr"[:spatial]
        y = np.einsum(f"ngi{out_letters}{kernel_letters},goi{kernel_letters}->ngo{out_letters}", grouped, w)
        y = y.reshape((n, c_out) + out_sizes)
    if args.get("bias") is not None:
        y = y + np.asarray(args["bias"], np.float32).reshape((-1,) + (1,) * spatial)
    return y


def conv_transpose(args: dict) -> np.ndarray:
    """conv_transpose (iOS15 conv_transpose docstring): every input position i scatters
    x[n, c, i] * weight[c, o, k] to output position s*i + d*k; weight is
    [C_in, C_out/groups, *K]; the full result has (D_in-1)*s + (K-1)*d + 1 positions per
    axis, and "custom" pad removes pad[2i] positions before and pad[2i+1] after
    (D_out = full - pad[2i] - pad[2i+1]); "valid" keeps the full result."""
    x, weight = np.asarray(args["x"], np.float32), np.asarray(args["weight"], np.float32)
    spatial = x.ndim - 2
    kernel = list(weight.shape[2:])
    strides = _ints(args.get("strides"), [1] * spatial)
    dilations = _ints(args.get("dilations"), [1] * spatial)
    groups = int(args.get("groups") if args.get("groups") is not None else 1)
    pad_type = _str(args.get("pad_type"), "valid")
    n, c_in = x.shape[:2]
    in_sizes = x.shape[2:]
    c_out = weight.shape[1] * groups
    full = [(size - 1) * s + (k - 1) * d + 1 for size, s, k, d in zip(in_sizes, strides, kernel, dilations)]
    if pad_type == "custom":
        amounts = _ints(args.get("pad"), [0] * (2 * spatial))
        crops = [(amounts[2 * i], amounts[2 * i + 1]) for i in range(spatial)]
    elif pad_type == "valid":
        crops = [(0, 0)] * spatial
    else:
        raise NotImplementedError(f"conv_transpose pad_type {pad_type!r}: the MIL spec gives the output size "
                                  "but not which positions are kept")
    if args.get("output_shape") is not None:
        expected = _ints(args["output_shape"], [])[-spatial:]
        if expected != [f - b - e for f, (b, e) in zip(full, crops)]:
            raise NotImplementedError("conv_transpose with an output_shape other than the cropped full result: "
                                      "the MIL spec does not say which positions are kept")
    xg = x.reshape((n, groups, c_in // groups) + tuple(in_sizes))
    wg = weight.reshape((groups, c_in // groups, weight.shape[1]) + tuple(kernel))
    y = np.zeros((n, groups, weight.shape[1]) + tuple(full), np.float32)
    for group in range(groups):
        # [C_out/groups, *K, n, *D_in]: every input position times every kernel tap
        products = np.tensordot(wg[group], xg[:, group], axes=([0], [1]))
        for offsets in itertools.product(*(range(k) for k in kernel)):
            target = tuple(slice(k * d, k * d + (size - 1) * s + 1, s)
                           for k, d, size, s in zip(offsets, dilations, in_sizes, strides))
            y[(slice(None), group, slice(None)) + target] += np.moveaxis(products[(slice(None),) + offsets], 0, 1)
    y = y.reshape((n, c_out) + tuple(full))
    y = y[(slice(None), slice(None)) + tuple(slice(b, f - e) for (b, e), f in zip(crops, full))]
    if args.get("bias") is not None:
        y = y + np.asarray(args["bias"], np.float32).reshape((-1,) + (1,) * spatial)
    return y


def _pool_geometry(args: dict, x: np.ndarray):
    """(kernel, strides, per-axis (before, after) declared pads, extra end positions for ceil_mode).

    avg_pool docstring: D_out = floor((D_in + pads - K) / s) + 1; with ceil_mode, ceil instead
    of floor, less one "if (D_out - 1) * s >= D_in + pad_before and pads > 0"."""
    spatial = x.ndim - 2
    kernel = _ints(args["kernel_sizes"], [])
    strides = _ints(args.get("strides"), [1] * spatial)
    pads = _padding(_str(args.get("pad_type"), "valid"), args.get("pad"), x.shape[2:], kernel, strides,
                    [1] * spatial)
    ceil_mode = bool(args.get("ceil_mode")) if args.get("ceil_mode") is not None else False
    extra = []
    for size, k, s, (before, after) in zip(x.shape[2:], kernel, strides, pads):
        span = size + before + after - k
        out = (-(-span // s) if ceil_mode else span // s) + 1
        if ceil_mode and (out - 1) * s >= size + before and before + after > 0:
            out -= 1
        extra.append(max(0, (out - 1) * s + k - (size + before + after)))
    return kernel, strides, pads, extra


def max_pool(args: dict) -> np.ndarray:
    """max_pool (iOS15 pool docstrings): the maximum over each window; padding (and a ceil-mode
    window's part past the padding) is never the maximum."""
    x = np.asarray(args["x"], np.float32)
    kernel, strides, pads, extra = _pool_geometry(args, x)
    padded = np.pad(x, [(0, 0), (0, 0)] + [(b, e + x_) for (b, e), x_ in zip(pads, extra)],
                    constant_values=-np.inf)
    windows = _windows(padded, kernel, strides, [1] * len(kernel))
    return windows.max(axis=tuple(range(-len(kernel), 0)))


def avg_pool(args: dict) -> np.ndarray:
    """avg_pool (iOS15 pool docstring): the mean over each window; the declared padding counts
    as zeros in the denominator unless exclude_padding_from_average.  "ceil_mode: same as
    PyTorch's": a last window reaching past the padding averages only what lies within the
    padded input."""
    x = np.asarray(args["x"], np.float32)
    kernel, strides, pads, extra = _pool_geometry(args, x)
    spatial = len(kernel)
    exclude = bool(args.get("exclude_padding_from_average")) \
        if args.get("exclude_padding_from_average") is not None else False
    widths = [(0, 0), (0, 0)] + [(b, e + x_) for (b, e), x_ in zip(pads, extra)]
    sums = _windows(np.pad(x, widths), kernel, strides, [1] * spatial).sum(axis=tuple(range(-spatial, 0)))
    counted = np.ones((1, 1) + x.shape[2:], np.float32)
    if exclude:
        counted = np.pad(counted, widths)
    else:  # the declared padding counts, the ceil-mode overhang does not
        counted = np.pad(np.pad(counted, [(0, 0), (0, 0)] + pads, constant_values=1.0),
                         [(0, 0), (0, 0)] + [(0, x_) for x_ in extra])
    counts = _windows(counted, kernel, strides, [1] * spatial).sum(axis=tuple(range(-spatial, 0)))
    return sums / np.maximum(counts, 1.0)


def batch_norm(args: dict) -> np.ndarray:
    """batch_norm (iOS15 normalization docstring): gamma * (x - mean) / sqrt(variance + epsilon)
    + beta per channel (axis 1); gamma defaults to ones, beta to zeros, epsilon to 1e-5."""
    x = np.asarray(args["x"], np.float32)
    shape = (-1,) + (1,) * (x.ndim - 2)

    def per_channel(name, default):
        value = args.get(name)
        return np.float32(default) if value is None else np.asarray(value, np.float32).reshape(shape)

    epsilon = np.float32(1e-5 if args.get("epsilon") is None else args["epsilon"])
    return per_channel("gamma", 1.0) * (x - per_channel("mean", 0.0)) / np.sqrt(
        per_channel("variance", 1.0) + epsilon) + per_channel("beta", 0.0)


def local_response_norm(args: dict) -> np.ndarray:
    """local_response_norm (iOS15 normalization docstring): x_i / (k + alpha / size *
    sum_j x_j^2) ^ beta, the sum over `size` neighbouring channels centred on i (defaults
    alpha 1e-4, beta 0.75, k 1).  The spec does not say how an even window is centred."""
    x = np.asarray(args["x"], np.float32)
    size = int(args["size"])
    if size % 2 == 0:
        raise NotImplementedError("local_response_norm with an even size: the MIL spec does not say how the "
                                  "window is centred")
    alpha = np.float32(1e-4 if args.get("alpha") is None else args["alpha"])
    beta = np.float32(0.75 if args.get("beta") is None else args["beta"])
    k = np.float32(1.0 if args.get("k") is None else args["k"])
    half = size // 2
    squares = np.pad(np.square(x), [(0, 0), (half, half)] + [(0, 0)] * (x.ndim - 2))
    sums = sum(squares[:, offset:offset + x.shape[1]] for offset in range(size))
    return x / np.power(k + alpha / size * sums, beta)


def upsample_nearest_neighbor(args: dict) -> np.ndarray:
    """upsample_nearest_neighbor (iOS15 image_resizing docstring): the last two axes grow to
    floor(H1 * scale_h), floor(W1 * scale_w); each output position takes the input at
    floor(position / scale) (for the integer factors the spec names, each input repeated)."""
    x = np.asarray(args["x"])
    for axis, key in ((-2, "scale_factor_height"), (-1, "scale_factor_width")):
        scale = float(1 if args.get(key) is None else args[key])
        size = x.shape[axis]
        out = int(math.floor(size * scale))
        source = np.minimum(np.floor(np.arange(out) / scale).astype(np.int64), size - 1)
        x = np.take(x, source, axis=axis)
    return x


def _grid(mode: str, size_in: int, size_out: int) -> np.ndarray:
    """Sample positions of resize_bilinear's sampling modes (iOS15 resize_bilinear docstring)."""
    i = np.arange(size_out, dtype=np.float64)
    if mode in ("STRICT_ALIGN_CORNERS", "ALIGN_CORNERS"):
        if size_out == 1:
            grid = np.array([(size_in - 1) / 2 if mode == "ALIGN_CORNERS" else 0.0])
        else:
            grid = i * (size_in - 1) / (size_out - 1)
    elif mode == "DEFAULT":
        grid = i * ((size_in - size_in / size_out) / (size_out - 1) if size_out > 1 else 0.0)
    elif mode == "OFFSET_CORNERS":
        delta = max(1, size_in - 1) / size_out
        grid = 0.5 * delta + i * delta
    elif mode == "UNALIGN_CORNERS":
        spacing = size_in / size_out
        grid = i * spacing + 0.5 * spacing - 0.5
    elif mode == "ASYMMETRIC":  # upsample_bilinear without half-pixel centres: tf's default sampling
        grid = i * size_in / size_out
    else:
        raise ValueError(f"sampling mode {mode!r} is not in the MIL spec")
    return np.clip(grid, 0, size_in - 1)


def _bilinear(x: np.ndarray, grids: tuple[np.ndarray, np.ndarray]) -> np.ndarray:
    for axis, grid in zip((-2, -1), grids):
        size = x.shape[axis]
        low = np.floor(grid).astype(np.int64)
        high = np.minimum(low + 1, size - 1)
        shape = [1] * x.ndim
        shape[axis] = -1
        fraction = (grid - low).reshape(shape).astype(np.float32)
        x = np.take(x, low, axis=axis) * (1 - fraction) + np.take(x, high, axis=axis) * fraction
    return x


def resize_bilinear(args: dict) -> np.ndarray:
    """resize_bilinear (iOS15 image_resizing docstring): the last two axes resized to the target
    sizes, sampling at the grid points of `sampling_mode`, linear between neighbours."""
    x = np.asarray(args["x"], np.float32)
    mode = _str(args.get("sampling_mode"), "DEFAULT")
    height = int(1 if args.get("target_size_height") is None else args["target_size_height"])
    width = int(1 if args.get("target_size_width") is None else args["target_size_width"])
    return _bilinear(x, (_grid(mode, x.shape[-2], height), _grid(mode, x.shape[-1], width)))


def upsample_bilinear(args: dict) -> np.ndarray:
    """upsample_bilinear (iOS15 + iOS16 image_resizing docstrings): output sizes floor(H1 * scale),
    the scale recomputed from the sizes; align_corners (default True) samples at
    i * (Xin - 1) / (Xout - 1); otherwise half_pixel_centers (iOS16, default not align_corners)
    samples at i * Xin / Xout + 0.5 * Xin / Xout - 0.5, and without it at i * Xin / Xout
    (the docstring's tf.ResizeBilinear(align_corners=False, half_pixel_centers=False))."""
    x = np.asarray(args["x"], np.float32)
    align = True if args.get("align_corners") is None else bool(args["align_corners"])
    half_pixel = (not align) if args.get("half_pixel_centers") is None else bool(args["half_pixel_centers"])
    mode = "STRICT_ALIGN_CORNERS" if align else ("UNALIGN_CORNERS" if half_pixel else "ASYMMETRIC")
    grids = []
    for axis, key in ((-2, "scale_factor_height"), (-1, "scale_factor_width")):
        scale = float(1 if args.get(key) is None else args[key])
        grids.append(_grid(mode, x.shape[axis], int(math.floor(x.shape[axis] * scale))))
    return _bilinear(x, tuple(grids))


def silu(args: dict) -> np.ndarray:
    """silu (iOS15 activation docstring): x * sigmoid(x).  coremltools' `fuse_sigmoid_mul`
    pass writes it for a Sigmoid and a Mul of the same tensor (SiLU as exported)."""
    x = np.asarray(args["x"], np.float32)
    return x / (np.float32(1) + np.exp(-x))


def gather_nd(args: dict) -> np.ndarray:
    """gather_nd (iOS15/iOS16 scatter_gather docstrings, tf.gather_nd): the last axis of
    `indices` (depth K[-1]) addresses the axes of `x` after its first `batch_dims` axes, which
    indices share with x; V = K[:-1] + D[batch_dims + K[-1]:]."""
    x, indices = np.asarray(args["x"]), np.asarray(args["indices"]).astype(np.int64)
    batch_dims = int(args.get("batch_dims") or 0)
    depth = indices.shape[-1]
    batches = int(np.prod(x.shape[:batch_dims], dtype=np.int64))
    flat_x = x.reshape((batches,) + x.shape[batch_dims:])
    flat_indices = indices.reshape((batches, -1, depth))
    gathered = np.stack([part[tuple(where.T)] for part, where in zip(flat_x, flat_indices)])
    return gathered.reshape(indices.shape[:-1] + x.shape[batch_dims + depth:])


def constexpr_blockwise_shift_scale(args: dict) -> np.ndarray:
    """constexpr_blockwise_shift_scale (iOS18 compression docstring): output = scale * (data - offset),
    each scale/offset entry covering a block of data.shape[i] / scale.shape[i] along every axis."""
    data = np.asarray(args["data"]).astype(np.float32)
    scale = np.asarray(args["scale"], np.float32)
    offset = args.get("offset")
    offset = np.zeros_like(scale) if offset is None else np.asarray(offset).astype(np.float32)
    for axis, (size, blocks) in enumerate(zip(data.shape, scale.shape)):
        scale = np.repeat(scale, size // blocks, axis)
        offset = np.repeat(offset, size // blocks, axis)
    return scale * (data - offset)


# -- depth <-> space (issue 17, corpus coverage).  The iOS15 docstrings give the shapes only;
# the element order is PyTorch's for pixel_shuffle (its docstring's reference) and TensorFlow's
# for depth_to_space / space_to_depth: coremltools' TF frontend maps tf.nn.depth_to_space and
# space_to_depth onto them with nothing but NHWC <-> NCHW transposes.

def depth_to_space(args: dict) -> np.ndarray:
    """channel = (row offset * b + column offset) * C' + c' (TF's order; ONNX's DCR mode)."""
    x, b = np.asarray(args["x"]), int(args["block_size"])
    n, c, h, w = x.shape
    blocks = x.reshape(n, b, b, c // (b * b), h, w).transpose(0, 3, 4, 1, 5, 2)
    return blocks.reshape(n, c // (b * b), h * b, w * b)


def pixel_shuffle(args: dict) -> np.ndarray:
    """channel = c' * f^2 + row offset * f + column offset (torch.nn.PixelShuffle; ONNX's CRD mode)."""
    x, f = np.asarray(args["x"]), int(args["upscale_factor"])
    n, c, h, w = x.shape
    blocks = x.reshape(n, c // (f * f), f, f, h, w).transpose(0, 1, 4, 2, 5, 3)
    return blocks.reshape(n, c // (f * f), h * f, w * f)


def space_to_depth(args: dict) -> np.ndarray:
    """The inverse of depth_to_space: channel = (row offset * b + column offset) * C + c."""
    x, b = np.asarray(args["x"]), int(args["block_size"])
    n, c, h, w = x.shape
    blocks = x.reshape(n, c, h // b, b, w // b, b).transpose(0, 3, 5, 1, 2, 4)
    return blocks.reshape(n, c * b * b, h // b, w // b)


def pixel_unshuffle(args: dict) -> np.ndarray:
    """The inverse of pixel_shuffle (iOS16; torch.nn.PixelUnshuffle): channel = c * f^2 + row offset * f
    + column offset (ONNX SpaceToDepth's CRD mode)."""
    x, f = np.asarray(args["x"]), int(args["downscale_factor"])
    n, c, h, w = x.shape
    blocks = x.reshape(n, c, h // f, f, w // f, f).transpose(0, 1, 3, 5, 2, 4)
    return blocks.reshape(n, c * f * f, h // f, w // f)


def fill_like(args: dict) -> np.ndarray:
    """iOS16 fill_like: a tensor of ref_tensor's shape filled with value (its docstring)."""
    value = np.asarray(args.get("value", 0.0))
    return np.full(np.shape(args["ref_tensor"]), value, dtype=value.dtype)


SPEC_OPS: dict[str, Callable[[dict], np.ndarray]] = {
    "conv": conv, "conv_transpose": conv_transpose, "max_pool": max_pool, "avg_pool": avg_pool,
    "batch_norm": batch_norm, "local_response_norm": local_response_norm,
    "upsample_nearest_neighbor": upsample_nearest_neighbor, "upsample_bilinear": upsample_bilinear,
    "resize_bilinear": resize_bilinear, "silu": silu, "gather_nd": gather_nd,
    "constexpr_blockwise_shift_scale": constexpr_blockwise_shift_scale,
    "depth_to_space": depth_to_space, "pixel_shuffle": pixel_shuffle, "space_to_depth": space_to_depth,
    "pixel_unshuffle": pixel_unshuffle, "fill_like": fill_like,
}
