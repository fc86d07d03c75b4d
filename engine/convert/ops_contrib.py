"""ONNX Runtime contrib ops -> MIL: what onnxruntime-genai's model builder emits.

Registered by domain (engine.convert.ops.DOMAIN_OPS): `SimplifiedLayerNormalization` lives in
the default ONNX domain (ONNX Runtime registers it there; it is not a standard op), the rest in
`com.microsoft`; the opset-23 standard `RotaryEmbedding` shares its rotation with the
com.microsoft one.  Semantics follow ONNX Runtime's operator schemas (docs/ContribOperators.md
of onnxruntime) and were checked by value against ONNX Runtime's CPU kernels
(tests/engine/test_convert_contrib_ops.py); what is refused, and why, is listed in each check
and in docs/conversion.md.

ONNX shape inference knows none of these ops, so their results would have no shape and
nothing after them could be checked.  `SHAPE_STANDINS` gives, per op, standard ONNX ops with
the same output shapes; the shape-fixing pass (engine/convert/source.py) puts them in place of
the contrib nodes on its shape-inference copy only.
"""
from __future__ import annotations

import math
from typing import Callable, Optional

import numpy as np
import onnx
from onnx import helper, numpy_helper

from engine.convert import ops
from engine.convert.ops import NodeContext, op

MS = "com.microsoft"
# Deployment targets with the iOS 18 MIL opset (constexpr_blockwise_shift_scale), and the iOS 17 one.
_IOS18_TARGETS = {"iOS18", "iOS26", "macOS15", "tvOS18", "watchOS11"}
_IOS17_TARGETS = _IOS18_TARGETS | {"iOS17", "macOS14", "tvOS17", "watchOS10"}


def _gather_rows(ctx: NodeContext, table, positions, role: str):
    """table[positions] along axis 0.  From iOS 17 on, coremltools guards signed gather indices
    against negative values with unnamed ops (guard_negative_gather_indices) that no source node
    would own; positions are never negative, so they are cast to uint16 (which it leaves alone)."""
    if ctx.source.target in _IOS17_TARGETS:
        positions = ops.mb.cast(x=positions, dtype="uint16", name=ctx.name(f"{role}_index"))
    return ops.mb.gather(x=table, indices=positions, axis=0, name=ctx.name(f"{role}_rows"))


# ----------------------------------------------------------------------------- shared checks

def _unused_outputs(ctx: NodeContext, indices, what: str) -> list[str]:
    return [f"output {index} ({what}) is used; the translation gives only the main results"
            for index in indices if ctx.output_used(index)]


def _static_inputs(ctx: NodeContext, indices) -> list[str]:
    return [f"the shape of input {index} is not known statically; fix the input shapes (--shape)"
            for index in indices if ctx.has_input(index) and ctx.in_shape(index) is None]


def _absent_inputs(ctx: NodeContext, names: dict[int, str]) -> list[str]:
    return [f"input {index} ({name}) is given; not supported" for index, name in names.items()
            if ctx.has_input(index)]


# ----------------------------------------------------------------------------- RMS / layer norms

def _check_simplified_norm(ctx: NodeContext) -> list[str]:
    return (ops._float_input(ctx) + ops._static_input(ctx)
            + _unused_outputs(ctx, [1], "the inverse standard deviation"))


@op("SimplifiedLayerNormalization", check=_check_simplified_norm)
def simplified_layer_normalization(ctx: NodeContext) -> None:
    """RMSNormalization under ONNX Runtime's older name (default domain, epsilon 1e-5)."""
    rank = len(ctx.in_shape(0))
    axes = list(range(int(ctx.attr("axis", -1)) % rank, rank))
    scale = ctx.x(1) if ctx.has_input(1) else None
    ctx.set_output(0, ops.rms_normalize(ctx, ctx.x(0), axes, ctx.attr("epsilon", 1e-5), scale))


def _check_skip_norm(ctx: NodeContext) -> list[str]:
    problems = (ops._float_input(ctx) + _static_inputs(ctx, [0, 1, 2, 3, 4])
                + _unused_outputs(ctx, [1, 2], "the mean or inverse standard deviation"))
    if problems:
        return problems
    shape, hidden = ctx.in_shape(0), ctx.in_shape(0)[-1]
    if not ops._broadcasts_to(ctx.in_shape(1), shape):
        problems.append(f"skip of shape {ctx.in_shape(1)} does not broadcast to the input {shape}")
    # gamma, then (SkipLayerNormalization) beta, then bias: 1-D of the hidden size
    for index in range(2, len(ctx.node.inputs)):
        if ctx.has_input(index) and tuple(ctx.in_shape(index)) != (hidden,):
            problems.append(f"input {index} has shape {ctx.in_shape(index)}; expected ({hidden},)")
    if ctx.node.op_type == "SkipLayerNormalization":
        problems += ops._const_inputs(ctx, [2, 3], "gamma or beta")
    return problems


def _skip_sum(ctx: NodeContext, bias_index: int):
    """input + skip (+ bias): output 3 when asked for, and what is normalised."""
    total = ctx.x(0)
    total = ops.mb.add(x=total, y=ctx.x(1), name=ctx.name("skip" if ctx.has_input(bias_index) else "sum"))
    if ctx.has_input(bias_index):
        total = ops.mb.add(x=total, y=ctx.x(bias_index), name=ctx.name("sum"))
    if ctx.output_used(3):
        ctx.set_output(3, total)
    return total


@op("SkipSimplifiedLayerNormalization", check=_check_skip_norm, domain=MS)
def skip_simplified_layer_normalization(ctx: NodeContext) -> None:
    """RMS norm of input + skip (+ bias); epsilon defaults to 1e-12 as in ONNX Runtime."""
    total = _skip_sum(ctx, 3)
    rank = len(ctx.in_shape(0))
    ctx.set_output(0, ops.rms_normalize(ctx, total, [rank - 1], ctx.attr("epsilon", 1e-12), ctx.x(2)))


@op("SkipLayerNormalization", check=_check_skip_norm, domain=MS)
def skip_layer_normalization(ctx: NodeContext) -> None:
    """layer_norm of input + skip (+ bias) over the last axis; epsilon defaults to 1e-12."""
    total = _skip_sum(ctx, 4)
    rank = len(ctx.in_shape(0))
    kwargs = {"gamma": ctx.x(2)}
    if ctx.has_input(3):
        kwargs["beta"] = ctx.x(3)
    ctx.set_output(0, ops.mb.layer_norm(x=total, axes=[rank - 1], epsilon=ctx.float(ctx.attr("epsilon", 1e-12)),
                                        name=ctx.name(), **kwargs))


# ----------------------------------------------------------------------------- rotary embedding

class _Rotary:
    """What a rotary embedding needs: layout of x, rotated width, and the cos/sin rows per token."""

    def __init__(self, ctx: NodeContext, x_index: int, cos_index: int, sin_index: int, positions: Optional[int]):
        self.ctx = ctx
        self.shape = tuple(ctx.in_shape(x_index))
        self.cos_index, self.sin_index, self.positions = cos_index, sin_index, positions
        self.interleaved = bool(ctx.attr("interleaved", 0))
        cos_shape = ctx.in_shape(cos_index)
        self.dim = int(ctx.attr("rotary_embedding_dim", 0)) or 2 * int(cos_shape[-1])
        heads = int(ctx.attr("num_heads", 0))
        if len(self.shape) == 4:
            self.heads, self.head_size = self.shape[1], self.shape[3]
        else:
            self.head_size = self.shape[2] // heads if heads else self.dim
            self.heads = self.shape[2] // self.head_size if self.head_size else 0

    def problems(self) -> list[str]:
        ctx, problems = self.ctx, []
        if len(self.shape) not in (3, 4):
            return [f"the input has rank {len(self.shape)}; 3 (batch, sequence, hidden) or 4 "
                    "(batch, heads, sequence, head size) expected"]
        if len(self.shape) == 3 and (not self.head_size or self.shape[2] % self.head_size):
            problems.append(f"the hidden size {self.shape[2]} does not split into heads of {self.head_size}")
        if self.dim % 2 or self.dim > self.head_size:
            problems.append(f"the rotated width {self.dim} is odd or larger than the head size {self.head_size}")
        if int(ctx.in_shape(self.cos_index)[-1]) * 2 != self.dim:
            problems.append(f"cos_cache has {ctx.in_shape(self.cos_index)[-1]} columns; "
                            f"the rotated width {self.dim} needs {self.dim // 2}")
        if ctx.in_shape(self.sin_index) != ctx.in_shape(self.cos_index):
            problems.append("cos_cache and sin_cache differ in shape")
        return problems

    def table(self, index: int, role: str):
        """cos or sin per token, [batch or 1, sequence, dim/2] (a constant when the positions are)."""
        ctx, mb = self.ctx, ops.mb
        sequence = self.shape[1] if len(self.shape) == 3 else self.shape[2]
        if self.positions is None:  # the table is given per token already
            return ctx.x(index)
        if ctx.is_const(self.positions) and ctx.is_const(index):
            positions = np.asarray(ctx.const(self.positions)).astype(np.int64)
            if positions.ndim == 1:  # com.microsoft: a start position
                positions = positions.reshape(-1)[0] + np.arange(sequence)[None, :]
            return ctx.array(np.asarray(ctx.const(index))[positions])
        positions = ctx.x(self.positions)
        if len(ctx.in_shape(self.positions)) == 1:
            positions = mb.add(x=positions, y=np.arange(sequence, dtype=np.int32), name=ctx.name(f"{role}_positions"))
            positions = mb.expand_dims(x=positions, axes=[0], name=ctx.name(f"{role}_batch"))
        return _gather_rows(ctx, ctx.x(index), positions, role)

    def apply(self, x, layout: str, role: str = "rotary", tables=None):
        """Rotates x ([B, S, N, H] when layout is "BSNH", [B, N, S, H] for "BNSH"); returns the result.
        `tables`: cos and sin already broadcastable to x (shared by several calls, stored once)."""
        ctx, mb = self.ctx, ops.mb
        if tables is not None:
            cos, sin = tables
        else:
            head_axis = 2 if layout == "BSNH" else 1
            cos = mb.expand_dims(x=self.table(self.cos_index, "cos"), axes=[head_axis], name=ctx.name(f"{role}_cos"))
            sin = mb.expand_dims(x=self.table(self.sin_index, "sin"), axes=[head_axis], name=ctx.name(f"{role}_sin"))
        shape = list(x.shape)
        half, width = self.dim // 2, self.dim

        def part(begin: int, end: int, stride: int, name: str):
            return mb.slice_by_index(x=x, begin=[0, 0, 0, begin], end=shape[:3] + [end], stride=[1, 1, 1, stride],
                                     name=ctx.name(f"{role}_{name}"))

        interleaved = self.interleaved
        x1 = part(0, width, 2, "even") if interleaved else part(0, half, 1, "first")
        x2 = part(1, width, 2, "odd") if interleaved else part(half, width, 1, "second")
        real = mb.sub(x=mb.mul(x=x1, y=cos, name=ctx.name(f"{role}_x1_cos")),
                      y=mb.mul(x=x2, y=sin, name=ctx.name(f"{role}_x2_sin")), name=ctx.name(f"{role}_real"))
        imag = mb.add(x=mb.mul(x=x1, y=sin, name=ctx.name(f"{role}_x1_sin")),
                      y=mb.mul(x=x2, y=cos, name=ctx.name(f"{role}_x2_cos")), name=ctx.name(f"{role}_imag"))
        if interleaved:  # pairs (real, imag) side by side again
            pairs = mb.concat(values=[mb.expand_dims(x=real, axes=[-1], name=ctx.name(f"{role}_real_pair")),
                                      mb.expand_dims(x=imag, axes=[-1], name=ctx.name(f"{role}_imag_pair"))],
                              axis=-1, name=ctx.name(f"{role}_pairs"))
            rotated = mb.reshape(x=pairs, shape=shape[:3] + [width], name=ctx.name(f"{role}_rotated"))
        else:
            rotated = mb.concat(values=[real, imag], axis=-1, name=ctx.name(f"{role}_rotated"))
        if width == shape[3]:
            return rotated
        return mb.concat(values=[rotated, part(width, shape[3], 1, "kept")], axis=-1, name=ctx.name(f"{role}_joined"))


def _rotary_indices(ctx: NodeContext) -> tuple[int, int, Optional[int]]:
    """(cos, sin, positions) input indices: com.microsoft (x, position_ids, cos, sin), opset 23 (x, cos, sin[, ids])."""
    if ctx.node.domain == MS:
        return 2, 3, 1
    return 1, 2, (3 if ctx.has_input(3) else None)


def _check_rotary(ctx: NodeContext) -> list[str]:
    problems = ops._float_input(ctx) + _static_inputs(ctx, range(len(ctx.node.inputs)))
    if ctx.node.domain == MS:
        if int(ctx.attr("is_packed_batching", 0)):
            problems.append("is_packed_batching=1 (ragged batches) is not supported")
        if float(ctx.attr("scale", 1.0)) != 1.0:
            problems.append("a scale other than 1 is not supported")
    if problems:
        return problems
    cos, sin, positions = _rotary_indices(ctx)
    if positions is not None and ctx.in_type(positions) is not None \
            and ctx.in_type(positions).dtype not in ("int32", "int64"):
        problems.append(f"position_ids are {ctx.in_type(positions).dtype}; integers expected")
    if len(ctx.in_shape(0)) == 3 and ctx.node.domain != MS and not int(ctx.attr("num_heads", 0)):
        problems.append("a 3-D input needs the num_heads attribute")
    return problems + _Rotary(ctx, 0, cos, sin, positions).problems()


@op("RotaryEmbedding", check=_check_rotary, domain=MS)
@op("RotaryEmbedding", check=_check_rotary)
def rotary_embedding(ctx: NodeContext) -> None:
    """x rotated pairwise by the cos/sin rows of each token's position (halves, or interleaved pairs);
    a 3-D input is split into heads and joined again, a 4-D one is (batch, heads, sequence, head)."""
    rotary = _Rotary(ctx, 0, *_rotary_indices(ctx))
    x, shape = ctx.x(0), rotary.shape
    if len(shape) == 3:
        x = ops.mb.reshape(x=x, shape=[shape[0], shape[1], rotary.heads, rotary.head_size], name=ctx.name("heads"))
        rotated = rotary.apply(x, "BSNH")
        ctx.set_output(0, ops.mb.reshape(x=rotated, shape=list(shape), name=ctx.name()))
    else:
        rotated = rotary.apply(x, "BNSH")
        ctx.set_output(0, ops.mb.identity(x=rotated, name=ctx.name()))


# ----------------------------------------------------------------------------- attention

def _split_heads(ctx: NodeContext, x, heads: int, role: str):
    """[B, S, heads * D] -> [B, heads, S, D]."""
    batch, sequence, hidden = x.shape
    x = ops.mb.reshape(x=x, shape=[batch, sequence, heads, hidden // heads], name=ctx.name(f"{role}_heads"))
    return ops.mb.transpose(x=x, perm=[0, 2, 1, 3], name=ctx.name(f"{role}_bnsh"))


def _with_past(ctx: NodeContext, new, past_index: int, present_index: int, role: str):
    """past ++ new along the sequence (the present output when it is used)."""
    if ctx.has_input(past_index) and ctx.in_shape(past_index)[2] > 0:
        new = ops.mb.concat(values=[ctx.x(past_index), new], axis=2, name=ctx.name(f"present_{role}"))
    if ctx.output_used(present_index):
        ctx.set_output(present_index, new)
    return new


def _repeat_heads(ctx: NodeContext, x, groups: int, role: str):
    """[B, KV, T, D] -> [B, KV * groups, T, D], query head h reading K/V head h // groups."""
    if groups == 1:
        return x
    batch, heads, length, size = x.shape
    x = ops.mb.expand_dims(x=x, axes=[2], name=ctx.name(f"{role}_group_axis"))
    x = ops.mb.tile(x=x, reps=[1, 1, groups, 1, 1], name=ctx.name(f"{role}_repeated"))
    return ops.mb.reshape(x=x, shape=[batch, heads * groups, length, size], name=ctx.name(f"{role}_all_heads"))


def _causal_mask(queries: int, keys: int, window: int = -1) -> np.ndarray:
    """Which keys each query sees: query i (at position keys - queries + i) sees keys up to its own
    position, and with a window w only the last w of them, its own included (ONNX Runtime's
    local_window_size, as its CPU kernel computes it).
    A boolean constant for `select` (not an additive float mask: it is no weight of the model)."""
    position = (keys - queries) + np.arange(queries)[:, None]
    column = np.arange(keys)[None, :]
    keep = column <= position
    if window > 0:
        keep &= column > position - window
    return keep


def _attend(ctx: NodeContext, q, k, v, *, scale: float, mask: Optional[np.ndarray], bias=None,
            softcap: float = 0.0):
    """softmax(q k^T * scale (softcapped) (+ bias) (causal mask)) v on [B, H, S, D] tensors; -> [B, S, H * Dv]."""
    mb = ops.mb
    scores = mb.matmul(x=q, y=k, transpose_y=True, name=ctx.name("scores"))
    scores = mb.mul(x=scores, y=ctx.float(scale), name=ctx.name("scaled"))
    if softcap > 0:  # before the bias, as ONNX Runtime's CPU kernel does
        scores = mb.mul(x=mb.tanh(x=mb.mul(x=scores, y=ctx.float(1.0 / softcap), name=ctx.name("softcap_in")),
                                  name=ctx.name("softcap_tanh")), y=ctx.float(softcap), name=ctx.name("softcapped"))
    if bias is not None:
        scores = mb.add(x=scores, y=bias, name=ctx.name("biased"))
    if mask is not None:  # the lowest finite value: exp() of it is 0, and it stays finite in fp16
        scores = mb.select(cond=mask, a=scores, b=ctx.float(np.finfo(ctx.float_dtype).min), name=ctx.name("masked"))
    weights = mb.softmax(x=scores, axis=-1, name=ctx.name("weights"))
    context = mb.matmul(x=weights, y=v, name=ctx.name("context"))
    batch, heads, sequence, size = context.shape
    context = mb.transpose(x=context, perm=[0, 2, 1, 3], name=ctx.name("bsnh"))
    return mb.reshape(x=context, shape=[batch, sequence, heads * size], name=ctx.name())


def _gqa_sizes(ctx: NodeContext) -> tuple[int, int, int, int, int, int]:
    """(batch, sequence, heads, kv heads, head size, past length)."""
    heads, kv_heads = int(ctx.attr("num_heads")), int(ctx.attr("kv_num_heads"))
    batch, sequence, hidden = ctx.in_shape(0)
    packed = not ctx.has_input(1)
    size = hidden // (heads + 2 * kv_heads) if packed else hidden // heads
    past = ctx.in_shape(3)[2] if ctx.has_input(3) else 0
    return batch, sequence, heads, kv_heads, size, past


_GQA_UNSUPPORTED_INPUTS = {9: "position_ids", 11: "head_sink", 12: "k_scale", 13: "v_scale",
                           14: "q_norm_weight", 15: "k_norm_weight"}


def _check_group_query_attention(ctx: NodeContext) -> list[str]:
    problems = ops._float_input(ctx) + _static_inputs(ctx, [0, 1, 2, 3, 4, 7, 8, 10])
    problems += _absent_inputs(ctx, _GQA_UNSUPPORTED_INPUTS) + _unused_outputs(ctx, [3], "the QK scores")
    for name, supported in (("smooth_softmax", 0), ("qk_output", 0), ("sliding_window_cache", 0)):
        if int(ctx.attr(name, supported)) != supported:
            problems.append(f"{name}={ctx.attr(name)} is not supported")
    for name in ("k_quant_type", "v_quant_type"):
        value = ctx.attr(name, b"NONE")
        value = value.decode() if isinstance(value, bytes) else str(value)
        if value.upper() != "NONE":
            problems.append(f"a quantized KV cache ({name}={value}) is not supported")
    if ctx.attr("kv_cache_bit_width") is not None:
        problems.append("a quantized KV cache (kv_cache_bit_width) is not supported")
    if int(ctx.attr("do_rotary", 0)) and not (ctx.has_input(7) and ctx.has_input(8)):
        problems.append("do_rotary=1 without cos_cache and sin_cache")
    if int(ctx.attr("causal", 1)) == 0 and int(ctx.attr("local_window_size", -1)) >= 0:
        problems.append("local_window_size with causal=0")
    if ctx.has_input(1) != ctx.has_input(2):
        problems.append("key and value must both be given (or both packed into query)")
    if problems:
        return problems
    heads, kv_heads = int(ctx.attr("num_heads", 0)), int(ctx.attr("kv_num_heads", 0))
    if heads <= 0 or kv_heads <= 0 or heads % kv_heads:
        return [f"num_heads={heads} is not a multiple of kv_num_heads={kv_heads}"]
    if len(ctx.in_shape(0)) != 3:
        return ["query must be 3-D (batch, sequence, hidden)"]
    batch, sequence, heads, kv_heads, size, past = _gqa_sizes(ctx)
    if ctx.has_input(3) != ctx.has_input(4):
        problems.append("past_key and past_value must both be given")
    if ctx.has_input(3) and tuple(ctx.in_shape(3)) != (batch, kv_heads, past, size):
        problems.append(f"past_key has shape {ctx.in_shape(3)}; (batch, kv_num_heads, past, head_size) = "
                        f"{(batch, kv_heads, past, size)} expected")
    # The prompt form with the past as given: every row holds past + sequence tokens.
    total = past + sequence
    for index, name, expected in ((5, "seqlens_k", np.full(batch, total - 1)), (6, "total_sequence_length", total)):
        if not ctx.is_const(index):
            problems.append(f"{name} (input {index}) is computed at run time; Core ML needs it constant "
                            f"(here {np.asarray(expected).tolist()}: no padded rows, past not a shared buffer)")
        elif not np.array_equal(np.asarray(ctx.const(index)).reshape(-1), np.asarray(expected).reshape(-1)):
            problems.append(f"{name} is {np.asarray(ctx.const(index)).reshape(-1).tolist()}, but past ({past}) + "
                            f"sequence ({sequence}) gives {np.asarray(expected).tolist()}: padded rows or a shared "
                            "past/present buffer are not supported")
    if int(ctx.attr("do_rotary", 0)):
        cos_rows = ctx.in_shape(7)[0]
        if cos_rows < total or ctx.in_shape(7)[1] * 2 > size:
            problems.append(f"cos_cache {ctx.in_shape(7)} does not cover {total} positions of head size {size}")
    return problems


@op("GroupQueryAttention", check=_check_group_query_attention, domain=MS)
def group_query_attention(ctx: NodeContext) -> None:
    """Grouped-query attention, prompt form: K/V heads concatenated after the past ones (present),
    repeated to the query heads (tile), causal mask offset by the past length, optional rotary
    embedding of q and k at positions past.., local window, softcap, attention bias."""
    mb = ops.mb
    batch, sequence, heads, kv_heads, size, past = _gqa_sizes(ctx)
    if ctx.has_input(1):
        q, k, v = ctx.x(0), ctx.x(1), ctx.x(2)
    else:  # packed QKV: [q heads | k heads | v heads] along the hidden axis
        q, k, v = mb.split(x=ctx.x(0), split_sizes=[heads * size, kv_heads * size, kv_heads * size], axis=-1,
                           name=ctx.name("unpacked"))
    q, k, v = (_split_heads(ctx, q, heads, "q"), _split_heads(ctx, k, kv_heads, "k"),
               _split_heads(ctx, v, kv_heads, "v"))
    if int(ctx.attr("do_rotary", 0)):
        rotary = _GqaRotary(ctx, size)
        tables = rotary.tables(past, sequence)
        q, k = rotary.apply(q, "BNSH", "q_rotary", tables), rotary.apply(k, "BNSH", "k_rotary", tables)
    k = _with_past(ctx, k, 3, 1, "key")
    v = _with_past(ctx, v, 4, 2, "value")
    k, v = _repeat_heads(ctx, k, heads // kv_heads, "k"), _repeat_heads(ctx, v, heads // kv_heads, "v")
    causal = int(ctx.attr("causal", 1))
    mask = _causal_mask(sequence, past + sequence, int(ctx.attr("local_window_size", -1))) if causal else None
    ctx.set_output(0, _attend(ctx, q, k, v, scale=float(ctx.attr("scale", 0.0)) or 1.0 / math.sqrt(size), mask=mask,
                              bias=ctx.x(10) if ctx.has_input(10) else None,
                              softcap=float(ctx.attr("softcap", 0.0))))


class _GqaRotary(_Rotary):
    """GroupQueryAttention's own rotary (do_rotary=1): cos_cache/sin_cache rows past .. past + S - 1,
    the whole head rotated, rotary_interleaved for the pairing."""

    def __init__(self, ctx: NodeContext, head_size: int):
        self.ctx, self.cos_index, self.sin_index, self.positions = ctx, 7, 8, None
        self.dim, self.head_size = 2 * int(ctx.in_shape(7)[1]), head_size
        self.interleaved = bool(ctx.attr("rotary_interleaved", 0))

    def tables(self, past: int, sequence: int):
        """cos and sin rows as [1, 1, S, dim/2] (BNSH), one tensor each that q and k both read."""
        ctx, mb = self.ctx, ops.mb
        rows = np.arange(past, past + sequence, dtype=np.int32)
        if ctx.is_const(7) and ctx.is_const(8):
            return tuple(mb.const(val=ctx.array(np.asarray(ctx.const(i))[rows][None, None]), name=ctx.name(f"{role}_rows"))
                         for i, role in ((7, "cos"), (8, "sin")))
        return tuple(mb.expand_dims(x=_gather_rows(ctx, ctx.x(i), rows, role),
                                    axes=[0, 1], name=ctx.name(f"{role}_batch"))
                     for i, role in ((7, "cos"), (8, "sin")))


_MHA_UNSUPPORTED_INPUTS = {4: "key_padding_mask", 8: "past_sequence_length", 9: "cache_indirection"}


def _check_multi_head_attention(ctx: NodeContext) -> list[str]:
    problems = ops._float_input(ctx) + _static_inputs(ctx, [0, 1, 2, 3, 5, 6, 7])
    problems += _absent_inputs(ctx, _MHA_UNSUPPORTED_INPUTS) + _unused_outputs(ctx, [3], "the QK scores")
    problems += ops._const_inputs(ctx, [3], "the bias")
    if problems:
        return problems
    if not (ctx.has_input(1) and ctx.has_input(2)) or any(len(ctx.in_shape(i)) != 3 for i in (0, 1, 2)):
        return ["only separate 3-D query, key and value are supported (not packed QKV/KV, not key/value "
                "given as past in BNSH)"]
    heads = int(ctx.attr("num_heads"))
    hidden, value_hidden = ctx.in_shape(0)[2], ctx.in_shape(2)[2]
    if hidden % heads or value_hidden % heads or ctx.in_shape(1)[2] != hidden:
        problems.append(f"hidden sizes q {hidden}, k {ctx.in_shape(1)[2]}, v {value_hidden} do not split into "
                        f"{heads} heads")
    if ctx.has_input(3) and tuple(ctx.in_shape(3)) != (2 * hidden + value_hidden,):
        problems.append(f"bias has shape {ctx.in_shape(3)}; ({2 * hidden + value_hidden},) expected")
    if ctx.has_input(6) != ctx.has_input(7):
        problems.append("past_key and past_value must both be given")
    return problems


@op("MultiHeadAttention", check=_check_multi_head_attention, domain=MS)
def multi_head_attention(ctx: NodeContext) -> None:
    """Multi-head attention of separate q, k, v (+ input bias), past K/V concatenated before the new
    ones (present), unidirectional as a causal mask offset by the past length, attention_bias added."""
    mb = ops.mb
    heads = int(ctx.attr("num_heads"))
    q, k, v = ctx.x(0), ctx.x(1), ctx.x(2)
    hidden = ctx.in_shape(0)[2]
    if ctx.has_input(3):
        bias = np.asarray(ctx.const(3))
        q = mb.add(x=q, y=ctx.array(bias[:hidden]), name=ctx.name("q_bias"))
        k = mb.add(x=k, y=ctx.array(bias[hidden:2 * hidden]), name=ctx.name("k_bias"))
        v = mb.add(x=v, y=ctx.array(bias[2 * hidden:]), name=ctx.name("v_bias"))
    q, k, v = _split_heads(ctx, q, heads, "q"), _split_heads(ctx, k, heads, "k"), _split_heads(ctx, v, heads, "v")
    k = _with_past(ctx, k, 6, 1, "key")
    v = _with_past(ctx, v, 7, 2, "value")
    sequence, total = ctx.in_shape(0)[1], k.shape[2]
    mask = _causal_mask(sequence, total) if int(ctx.attr("unidirectional", 0)) else None
    ctx.set_output(0, _attend(ctx, q, k, v, scale=float(ctx.attr("scale", 0.0)) or 1.0 / math.sqrt(hidden // heads),
                              mask=mask, bias=ctx.x(5) if ctx.has_input(5) else None))


# ----------------------------------------------------------------------------- MatMulNBits

def _unpack_bits(packed: np.ndarray, bits: int, count: int) -> np.ndarray:
    """Little-endian bit fields of `bits` bits from uint8 bytes along the last axis (first value in the
    lowest bits, as ONNX Runtime packs them); the first `count` values of each row."""
    packed = np.asarray(packed, dtype=np.uint8)
    per_byte = 8 // bits
    shifts = (np.arange(per_byte) * bits).astype(np.uint8)
    values = (packed[..., None] >> shifts) & np.uint8((1 << bits) - 1)
    return values.reshape(*packed.shape[:-1], -1)[..., :count]


def _check_matmul_nbits(ctx: NodeContext) -> list[str]:
    problems = ops._float_input(ctx) + ops._static_input(ctx)
    problems += ops._const_inputs(ctx, [1, 2, 3], "the quantized weights, scales and zero points")
    problems += _absent_inputs(ctx, {4: "g_idx"})
    if ctx.source.target not in _IOS18_TARGETS:
        problems.append(f"4-bit/8-bit block-wise weights need constexpr_blockwise_shift_scale (iOS 18): "
                        f"convert with --target iOS18 (the target is {ctx.source.target})")
    bits, block, k, n = (int(ctx.attr("bits", 4)), int(ctx.attr("block_size", 0)), int(ctx.attr("K", 0)),
                         int(ctx.attr("N", 0)))
    if bits not in (2, 4, 8):
        problems.append(f"bits={bits} (2, 4 and 8 are supported)")
    if int(ctx.attr("weight_prepacked", 0)):
        problems.append("weights prepacked for a GPU kernel layout are not supported")
    if problems:
        return problems
    if not block or k % block:
        problems.append(f"K={k} is not a multiple of block_size={block}: the last block is padded, which "
                        "constexpr_blockwise_shift_scale cannot express")
    if ctx.in_shape(0)[-1] != k:
        problems.append(f"input A has {ctx.in_shape(0)[-1]} columns; K={k}")
    if tuple(ctx.in_shape(2)) not in ((n, k // max(block, 1)), (n * (k // max(block, 1)),)):
        problems.append(f"scales have shape {ctx.in_shape(2)}; (N, K / block_size) expected")
    if ctx.has_input(5) and tuple(ctx.in_shape(5)) != (n,):
        problems.append(f"bias has shape {ctx.in_shape(5)}; ({n},) expected")
    return problems


@op("MatMulNBits", check=_check_matmul_nbits, domain=MS)
def matmul_nbits(ctx: NodeContext) -> None:
    """A @ dequantize(B)^T (+ bias): the quantized weights stay quantized in the package as
    constexpr_blockwise_shift_scale (uint4 for 2- and 4-bit, uint8 for 8-bit; one scale and offset per
    block of `block_size` along K), which Core ML expands when it loads the model."""
    from coremltools.converters.mil.mil import types

    mb = ops.mb
    bits, block, k, n = int(ctx.attr("bits", 4)), int(ctx.attr("block_size")), int(ctx.attr("K")), int(ctx.attr("N"))
    blocks = k // block
    storage = types.np_uint4_dtype if bits <= 4 else np.uint8
    data = _unpack_bits(np.asarray(ctx.const(1)).reshape(n, -1), bits, k).astype(storage)
    scale = ctx.array(np.asarray(ctx.const(2)).reshape(n, blocks))
    if not ctx.has_input(3):
        offset = np.full((n, blocks), 1 << (bits - 1), dtype=storage)  # ONNX Runtime's default zero point
    elif np.asarray(ctx.const(3)).dtype == np.uint8:
        offset = _unpack_bits(np.asarray(ctx.const(3)).reshape(n, -1), bits, blocks).astype(storage)
    else:  # zero points given as floats of A's type
        offset = ctx.array(np.asarray(ctx.const(3)).reshape(n, blocks))
    weight = mb.constexpr_blockwise_shift_scale(data=data, scale=scale, offset=offset, name=ctx.name("weight"))
    product = mb.matmul(x=ctx.x(0), y=weight, transpose_y=True, name=ctx.name(None if not ctx.has_input(5) else "matmul"))
    if ctx.has_input(5):
        product = mb.add(x=product, y=ctx.x(5), name=ctx.name())
    ctx.set_output(0, product)


# ----------------------------------------------------------------------------- shapes for ONNX inference

class _Standin:
    """Standard ONNX nodes (and shape initializers) that stand in for one contrib node."""

    def __init__(self, node: onnx.NodeProto, prefix: str):
        self.node, self.prefix = node, prefix
        self.nodes: list[onnx.NodeProto] = []
        self.initializers: list[onnx.TensorProto] = []
        self.count = 0

    def input(self, index: int) -> str:
        return self.node.input[index] if index < len(self.node.input) else ""

    def output(self, index: int) -> str:
        return self.node.output[index] if index < len(self.node.output) else ""

    def add(self, op_type: str, inputs: list[str], output: Optional[str] = None, **attributes) -> str:
        self.count += 1
        output = output or f"{self.prefix}__standin{self.count}"
        self.nodes.append(helper.make_node(op_type, inputs, [output], **attributes))
        return output

    def ints(self, values) -> str:
        self.count += 1
        name = f"{self.prefix}__standin{self.count}"
        self.initializers.append(numpy_helper.from_array(np.asarray(values, dtype=np.int64), name))
        return name

    def heads_bnsh(self, x: str, heads: int, output: Optional[str] = None) -> str:
        """[B, S, heads * D] -> [B, heads, S, D]."""
        split = self.add("Reshape", [x, self.ints([0, 0, heads, -1])])
        return self.add("Transpose", [split], output, perm=[0, 2, 1, 3])

    def present(self, new: str, past_index: int, output_index: int) -> None:
        if not self.output(output_index):
            return
        if self.input(past_index):
            self.add("Concat", [self.input(past_index), new], self.output(output_index), axis=2)
        else:
            self.add("Identity", [new], self.output(output_index))


def _attributes(node: onnx.NodeProto) -> dict:
    return {a.name: helper.get_attribute_value(a) for a in node.attribute}


def _standin_same_shape(s: _Standin) -> None:
    s.add("Identity", [s.input(0)], s.output(0))
    if s.node.op_type.startswith("Skip") and s.output(3):
        s.add("Identity", [s.input(0)], s.output(3))


def _standin_matmul_nbits(s: _Standin, initializer_types: dict) -> None:
    attributes = _attributes(s.node)
    weight = f"{s.prefix}__standin_weight"
    elem_type = initializer_types.get(s.input(2), onnx.TensorProto.FLOAT)
    s.initializers.append(onnx.TensorProto(name=weight, data_type=elem_type,
                                           dims=[int(attributes["K"]), int(attributes["N"])]))
    s.add("MatMul", [s.input(0), weight], s.output(0))


def _standin_group_query_attention(s: _Standin) -> None:
    attributes = _attributes(s.node)
    heads, kv_heads = int(attributes["num_heads"]), int(attributes["kv_num_heads"])
    if s.input(1):
        q, k, v = s.input(0), s.input(1), s.input(2)
        s.add("Identity", [q], s.output(0))
    else:  # packed: heads of q, k and v side by side
        parts = s.add("Reshape", [s.input(0), s.ints([0, 0, heads + 2 * kv_heads, -1])])
        q, k, v = (s.add("Slice", [parts, s.ints([begin]), s.ints([end]), s.ints([2])])
                   for begin, end in ((0, heads), (heads, heads + kv_heads), (heads + kv_heads, heads + 2 * kv_heads)))
        s.add("Reshape", [q, s.ints([0, 0, -1])], s.output(0))
        k, v = (s.add("Reshape", [t, s.ints([0, 0, -1])]) for t in (k, v))
    s.present(s.heads_bnsh(k, kv_heads), 3, 1)
    s.present(s.heads_bnsh(v, kv_heads), 4, 2)


def _standin_multi_head_attention(s: _Standin) -> None:
    heads = int(_attributes(s.node)["num_heads"])
    q, k, v = s.input(0), s.input(1), s.input(2)
    # [B, S, Dq] x [B, Dq, L] x [B, L, Dv]: the output's [B, S, Dv] without computing attention
    scores = s.add("MatMul", [q, s.add("Transpose", [k], perm=[0, 2, 1])])
    s.add("MatMul", [scores, v], s.output(0))
    s.present(s.heads_bnsh(k, heads), 6, 1)
    s.present(s.heads_bnsh(v, heads), 7, 2)


SHAPE_STANDINS: dict[tuple[str, str], Callable] = {
    ("", "SimplifiedLayerNormalization"): _standin_same_shape,
    (MS, "SkipSimplifiedLayerNormalization"): _standin_same_shape,
    (MS, "SkipLayerNormalization"): _standin_same_shape,
    (MS, "RotaryEmbedding"): _standin_same_shape,
    (MS, "MatMulNBits"): _standin_matmul_nbits,
    (MS, "GroupQueryAttention"): _standin_group_query_attention,
    (MS, "MultiHeadAttention"): _standin_multi_head_attention,
}


def replace_with_standins(model: onnx.ModelProto) -> bool:
    """Puts shape stand-ins in place of the contrib nodes of `model` (a shape-inference copy; the
    node order stays topological).  True when anything was replaced."""
    graph = model.graph
    initializer_types = {t.name: t.data_type for t in graph.initializer}
    replaced, nodes = False, []
    for index, node in enumerate(graph.node):
        domain = "" if node.domain in ("", "ai.onnx") else node.domain
        make = SHAPE_STANDINS.get((domain, node.op_type))
        if make is None:
            nodes.append(node)
            continue
        standin = _Standin(node, f"{node.name or 'node'}_{index}")
        try:
            if make is _standin_matmul_nbits:
                make(standin, initializer_types)
            else:
                make(standin)
        except (KeyError, ValueError, IndexError):  # a node missing what the op needs: its check will say
            nodes.append(node)
            continue
        nodes.extend(standin.nodes)
        graph.initializer.extend(standin.initializers)
        replaced = True
    if replaced:
        del graph.node[:]
        graph.node.extend(nodes)
    return replaced


__all__ = ["SHAPE_STANDINS", "replace_with_standins"]
