"""ONNX Attention (opset 23/24), GatherElements and GatherND -> MIL ops.

Registered through `engine.convert.ops.op` like every other translation (ops.py imports this
module at its end), so the pre-check, the build, the naming and the value checks treat these
nodes exactly as the rest.

Attention follows the ONNX spec (onnx/defs, Attention-23) and its reference implementation
(onnx/reference/ops/op_attention.py); what differs is said next to the code and in
docs/conversion.md:

- 3-D Q/K/V ([batch, sequence, heads * head_size], with q_num_heads / kv_num_heads) are split
  into heads with `reshape` + `transpose` and the result merged back the same way;
- past_key / past_value are `concat`enated before K / V on the sequence axis; that result is
  present_key / present_value (with the KV cache as Core ML state, `slice_update` writes the
  new keys into the state's tensor instead, see engine/convert/kv_state.py);
- iOS 18 `scaled_dot_product_attention` computes softmax(Q K^T / sqrt(E) + mask) V, so it is
  used where that is what the node asks: rank >= 3, default scale, no softcap, as many KV heads
  as query heads (no grouped-query attention), no qk_matmul_output used;
- everywhere else the decomposition of coremltools' own torch frontend
  (`_decompose_scaled_dot_product_attention`): the scale folded into Q (`mul`), `matmul` with
  transpose_y, softcap as tanh(x / c) * c, the mask added, `softmax`, `matmul`; grouped KV heads
  repeated by `tile` (each KV head serves q_num_heads / kv_num_heads consecutive query heads,
  as ONNX's np.repeat on the head axis);
- the causal mask is `band_part` (lower=-1, upper=past length) of an all-true [L, S] tensor:
  query i keeps key j iff j <= i + past length, ONNX's bottom-right alignment;
- masked positions (causal, boolean masks) get -3e4 instead of
  -inf in the decomposition, as coremltools' torch frontend does (a finite value fp16 holds;
  exp(-3e4 + s) is 0 in fp16 and fp32 alike, so the results are ONNX's).  The exceptions: a
  query row with *every* key masked gives ONNX's zero row only in ONNX (here: the mean of V),
  and qk_matmul_output mode 2 (scores with the mask) holds the lowest finite float there, as
  ONNX Runtime's does (the ONNX reference writes -inf).
"""
from __future__ import annotations

from typing import Optional

import numpy as np

from engine.convert import ops
from engine.convert.ops import NodeContext, Unsupported, op

# Targets whose MIL opset has iOS 18's scaled_dot_product_attention (coremltools' ct.target).
SDPA_TARGETS = frozenset({"iOS18", "iOS26", "macOS15", "tvOS18", "watchOS11"})
# What a masked position adds to a score in the decomposition (coremltools' torch frontend value).
MASKED_SCORE = -3e4
_FLOATS = ("float32", "float16", "float64")


# ----------------------------------------------------------------------------- Attention

class _Layout:
    """Head counts and sizes of one Attention node, from its static shapes and attributes."""

    def __init__(self, ctx: NodeContext):
        q, k, v = (ctx.in_shape(i) for i in range(3))
        self.rank = len(q)
        if self.rank == 3:
            self.q_heads = int(ctx.attr("q_num_heads", 0))
            self.kv_heads = int(ctx.attr("kv_num_heads", 0))
            self.batch, self.q_length = q[0], q[1]
            self.kv_length = k[1]
            self.head_size = q[2] // self.q_heads if self.q_heads else 0
            self.v_head_size = v[2] // self.kv_heads if self.kv_heads else 0
        else:
            self.batch, self.q_heads, self.q_length, self.head_size = q
            self.kv_heads, self.kv_length = k[1], k[2]
            self.v_head_size = v[3]
        self.past_length = ctx.in_shape(4)[2] if ctx.has_input(4) and ctx.in_shape(4) else 0
        self.total_length = self.past_length + self.kv_length


def _attention_problems(ctx: NodeContext) -> list[str]:
    problems = []
    for index in range(3):
        problems += ops._float_input(ctx, index) + ops._static_input(ctx, index)
    for index in (3, 4, 5):
        if ctx.has_input(index):
            problems += ops._static_input(ctx, index)
    if problems:
        return problems
    ranks = {len(ctx.in_shape(i)) for i in range(3)}
    if len(ranks) != 1 or ranks.pop() not in (3, 4):
        return ["Q, K and V must all be 3-D or all be 4-D"]
    layout = _Layout(ctx)
    if layout.rank == 3:
        if layout.q_heads <= 0 or layout.kv_heads <= 0:
            return ["3-D Q/K/V need the q_num_heads and kv_num_heads attributes"]
        widths = (ctx.in_shape(0)[2], ctx.in_shape(1)[2], ctx.in_shape(2)[2])
        if widths[0] % layout.q_heads or widths[1] % layout.kv_heads or widths[2] % layout.kv_heads:
            problems.append(f"hidden sizes {widths} are not multiples of the head counts "
                            f"({layout.q_heads}, {layout.kv_heads})")
    if layout.kv_heads <= 0 or layout.q_heads % layout.kv_heads:
        problems.append(f"{layout.q_heads} query heads cannot be grouped over {layout.kv_heads} key/value heads")
    if ctx.has_input(4) != ctx.has_input(5):
        problems.append("past_key and past_value must be given together")
    if ctx.has_input(6):
        problems.append("nonpad_kv_seqlen (opset 24's external KV cache with per-batch valid lengths) "
                        "is not translated")
    for name in ("left_window_size", "right_window_size"):
        if int(ctx.attr(name, -1)) >= 0:
            problems.append(f"{name} (opset 25 sliding-window attention) is not translated")
    mode = int(ctx.attr("qk_matmul_output_mode", 0))
    if ctx.output_used(3) and mode not in (0, 1, 2, 3):
        problems.append(f"qk_matmul_output_mode {mode} is not an ONNX value")
    if ctx.has_input(3):
        mask_type = ctx.in_type(3)
        if mask_type is not None and mask_type.dtype not in _FLOATS + ("bool",):
            problems.append(f"attn_mask is {mask_type.dtype}; ONNX allows a float or bool mask")
        mask = ctx.in_shape(3)
        full = (layout.batch, layout.q_heads, layout.q_length, layout.total_length)
        # The spec asks for a mask that broadcasts to `full`; ONNX Runtime refuses a shorter last
        # axis (the onnx reference pads it), so it is refused here too.
        if mask is not None and (len(mask) > 4 or not ops._broadcasts_to(mask, full)):
            problems.append(f"attn_mask of shape {tuple(mask)} does not broadcast to {full} (batch, query heads, "
                            "query length, past + new length)")
    return problems


def _uses_sdpa(ctx: NodeContext, layout: _Layout) -> bool:
    """True where iOS 18's fused op computes exactly what the node asks."""
    return (ctx.source.target in SDPA_TARGETS and ctx.attr("scale") is None
            and not float(ctx.attr("softcap", 0.0)) and layout.q_heads == layout.kv_heads
            and not ctx.output_used(3))


def _split_heads(ctx: NodeContext, x, heads: int, role: str):
    """[B, S, heads * E] -> [B, heads, S, E]."""
    mb = ops.mb
    batch, length, width = x.shape
    x = mb.reshape(x=x, shape=[batch, length, heads, width // heads], name=ctx.name(f"{role}_heads"))
    return mb.transpose(x=x, perm=[0, 2, 1, 3], name=ctx.name(f"{role}_by_head"))


def _cache(ctx: NodeContext, new, past_index: int, output_index: int, role: str):
    """K or V with the past prepended: present_key / present_value."""
    mb = ops.mb
    if not ctx.has_input(past_index):
        if ctx.output_used(output_index):
            ctx.set_output(output_index, mb.identity(x=new, name=ctx.name(f"present_{role}")))
        return new
    from engine.convert import kv_state
    updated = kv_state.cache_update(ctx, new, past_index, output_index, role)
    if updated is None:
        updated = mb.concat(values=[ctx.x(past_index), new], axis=2, name=ctx.name(f"present_{role}"))
    if ctx.output_used(output_index):
        ctx.set_output(output_index, updated)
    return updated


def _repeat_heads(ctx: NodeContext, x, groups: int, role: str):
    """[B, H, S, E] -> [B, H * groups, S, E], each head repeated `groups` times in place (np.repeat)."""
    if groups == 1:
        return x
    mb = ops.mb
    batch, heads, length, size = x.shape
    x = mb.expand_dims(x=x, axes=[2], name=ctx.name(f"{role}_group_axis"))
    x = mb.tile(x=x, reps=[1, 1, groups, 1, 1], name=ctx.name(f"{role}_grouped"))
    return mb.reshape(x=x, shape=[batch, heads * groups, length, size], name=ctx.name(f"{role}_repeated"))


def _causal_keep(ctx: NodeContext, layout: _Layout):
    """bool [L, S]: query i keeps key j iff j <= i + past length (band_part of all-true)."""
    all_keys = np.ones((layout.q_length, layout.total_length), dtype=bool)
    return ops.mb.band_part(x=all_keys, lower=np.int32(-1), upper=np.int32(layout.past_length),
                            name=ctx.name("causal_keep"))


def _mask(ctx: NodeContext):
    """attn_mask as given: bool stays bool (a constant one as numpy bools), floats in the node's type."""
    if not ctx.has_input(3):
        return None
    mask = ctx.x(3)
    if isinstance(mask, np.ndarray) and ctx.in_type(3).dtype == "bool":
        mask = mask.astype(bool)
    return mask


def _is_bool(value) -> bool:
    if isinstance(value, np.ndarray):
        return value.dtype == bool
    return ops._mil_float(value) == "bool"


def _sdpa_mask(ctx: NodeContext, layout: _Layout):
    """One mask for scaled_dot_product_attention: bool (keep) or additive float, or None."""
    mb = ops.mb
    mask = _mask(ctx)
    if not ctx.attr("is_causal", 0):
        return mask
    keep = _causal_keep(ctx, layout)
    if mask is None:
        return keep
    if _is_bool(mask):
        return mb.logical_and(x=mask, y=keep, name=ctx.name("mask_and_causal"))
    return mb.select(cond=keep, a=mask, b=ctx.float(MASKED_SCORE), name=ctx.name("mask_and_causal"))


def _scores(ctx: NodeContext, layout: _Layout, q, k):
    """softcap(Q K^T * scale) with the mask applied; sets qk_matmul_output modes 0-2."""
    mb = ops.mb
    scale = ctx.attr("scale")
    scale = 1.0 / np.sqrt(layout.head_size) if scale is None else float(scale)
    if scale != 1.0:
        q = mb.mul(x=q, y=ctx.float(scale), name=ctx.name("scaled_q"))
    scores = mb.matmul(x=q, y=k, transpose_y=True, name=ctx.name("qk"))
    mode = int(ctx.attr("qk_matmul_output_mode", 0)) if ctx.output_used(3) else None
    if mode == 0:
        ctx.set_output(3, mb.identity(x=scores, name=ctx.name("qk_output")))
    softcap = float(ctx.attr("softcap", 0.0))
    if softcap > 0:
        scores = mb.mul(x=mb.tanh(x=mb.mul(x=scores, y=ctx.float(1.0 / softcap), name=ctx.name("softcap_in")),
                                  name=ctx.name("softcap_tanh")),
                        y=ctx.float(softcap), name=ctx.name("softcapped"))
    if mode == 1:
        ctx.set_output(3, mb.identity(x=scores, name=ctx.name("qk_output")))
    # qk_matmul_output mode 2 shows the masked scores: there the masked value is ONNX Runtime's
    # (the lowest finite float; the ONNX reference writes -inf), so the output equals its tensor.
    fill = float(np.finfo(ctx.float_dtype).min) if mode == 2 else MASKED_SCORE
    mask = _mask(ctx)
    if mask is not None and _is_bool(mask):
        # select rather than adding a 0/fill bias: MIL's select does not broadcast its condition
        # against scalar branches, and the scores have the full shape.
        scores = mb.select(cond=mask, a=scores, b=ctx.float(fill), name=ctx.name("masked"))
    elif mask is not None:
        scores = mb.add(x=scores, y=mask, name=ctx.name("masked"))
    if ctx.attr("is_causal", 0):
        scores = mb.select(cond=_causal_keep(ctx, layout), a=scores, b=ctx.float(fill), name=ctx.name("causal"))
    if mode == 2:
        ctx.set_output(3, mb.identity(x=scores, name=ctx.name("qk_output")))
    return scores


def _check_attention(ctx: NodeContext) -> list[str]:
    return _attention_problems(ctx)


@op("Attention", check=_check_attention)
def attention(ctx: NodeContext) -> None:
    mb = ops.mb
    layout = _Layout(ctx)
    q, k, v = ctx.x(0), ctx.x(1), ctx.x(2)
    if any(isinstance(t, np.ndarray) for t in (q, k, v)):
        raise Unsupported("constant Q, K or V")
    if layout.rank == 3:
        q = _split_heads(ctx, q, layout.q_heads, "q")
        k = _split_heads(ctx, k, layout.kv_heads, "k")
        v = _split_heads(ctx, v, layout.kv_heads, "v")
    k = _cache(ctx, k, 4, 1, "key")
    v = _cache(ctx, v, 5, 2, "value")
    last = None if layout.rank == 4 else "attention"
    if _uses_sdpa(ctx, layout):
        y = mb.scaled_dot_product_attention(query=q, key=k, value=v, attn_mask=_sdpa_mask(ctx, layout),
                                            name=ctx.name(last))
    else:
        groups = layout.q_heads // layout.kv_heads
        k = _repeat_heads(ctx, k, groups, "k")
        v = _repeat_heads(ctx, v, groups, "v")
        weights = mb.softmax(x=_scores(ctx, layout, q, k), axis=-1, name=ctx.name("softmax"))
        if ctx.output_used(3) and int(ctx.attr("qk_matmul_output_mode", 0)) == 3:
            ctx.set_output(3, mb.identity(x=weights, name=ctx.name("qk_output")))
        y = mb.matmul(x=weights, y=v, name=ctx.name(last))
    if layout.rank == 3:
        y = mb.transpose(x=y, perm=[0, 2, 1, 3], name=ctx.name("by_position"))
        y = mb.reshape(x=y, shape=[layout.batch, layout.q_length, layout.q_heads * layout.v_head_size],
                       name=ctx.name())
    ctx.set_output(0, y)


# ----------------------------------------------------------------------------- gathers

def _int_indices(ctx: NodeContext) -> list[str]:
    t = ctx.in_type(1)
    if t is not None and t.dtype not in ("int32", "int64"):
        return [f"indices of type {t.dtype}"]
    return []


def _gathered_type(ctx: NodeContext) -> list[str]:
    t = ctx.in_type(0)
    if t is not None and t.dtype not in _FLOATS + ("int32", "int64"):
        return [f"data of type {t.dtype}; Core ML gathers float and int32 tensors"]
    return []


def _non_negative(ctx: NodeContext, indices, sizes: np.ndarray, role: str):
    """ONNX counts negative indices from the end; MIL does not promise to: add the size there."""
    mb = ops.mb
    if isinstance(indices, np.ndarray):
        return np.where(indices < 0, indices + sizes, indices).astype(np.int32)
    shifted = mb.add(x=indices, y=sizes.astype(np.int32), name=ctx.name(f"{role}_from_end"))
    negative = mb.less(x=indices, y=np.int32(0), name=ctx.name(f"{role}_negative"))
    return mb.select(cond=negative, a=shifted, b=indices, name=ctx.name(f"{role}_non_negative"))


def _check_gather_elements(ctx: NodeContext) -> list[str]:
    problems = _int_indices(ctx) + _gathered_type(ctx) + ops._static_input(ctx, 0) + ops._static_input(ctx, 1)
    if not problems and len(ctx.in_shape(0)) != len(ctx.in_shape(1)):
        problems.append("data and indices have different ranks")
    return problems


@op("GatherElements", check=_check_gather_elements)
def gather_elements(ctx: NodeContext) -> None:
    shape = ctx.in_shape(0)
    axis = int(ctx.attr("axis", 0)) % len(shape)
    indices = _non_negative(ctx, ctx.x(1), np.int32(shape[axis]), "indices")
    ctx.set_output(0, ops.mb.gather_along_axis(x=ctx.x(0), indices=indices, axis=axis, name=ctx.name()))


def _check_gather_nd(ctx: NodeContext) -> list[str]:
    problems = _int_indices(ctx) + _gathered_type(ctx) + ops._static_input(ctx, 0) + ops._static_input(ctx, 1)
    batch_dims = int(ctx.attr("batch_dims", 0))
    if batch_dims and ctx.source.target == "iOS15":
        problems.append("batch_dims > 0 needs gather_nd of iOS16 or later (target iOS15)")
    if not problems and ctx.in_shape(1)[-1] + batch_dims > len(ctx.in_shape(0)):
        problems.append("indices address more axes than the data has")
    return problems


@op("GatherND", check=_check_gather_nd)
def gather_nd(ctx: NodeContext) -> None:
    shape = ctx.in_shape(0)
    batch_dims = int(ctx.attr("batch_dims", 0))
    depth = ctx.in_shape(1)[-1]
    sizes = np.asarray(shape[batch_dims:batch_dims + depth], dtype=np.int32)
    indices = _non_negative(ctx, ctx.x(1), sizes, "indices")
    kwargs = {"batch_dims": np.int32(batch_dims)} if batch_dims else {}
    ctx.set_output(0, ops.mb.gather_nd(x=ctx.x(0), indices=indices, name=ctx.name(), **kwargs))


def attention_layout(ctx: NodeContext) -> Optional[_Layout]:
    """The head layout of an Attention node whose check passes (for kv_state), else None."""
    return _Layout(ctx) if not _attention_problems(ctx) else None
