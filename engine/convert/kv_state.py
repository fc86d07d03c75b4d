"""The KV cache as Core ML state (iOS 18): `convert(..., kv_state=True)`, `layerscope convert --kv-state`.

A decoder exported to ONNX carries its cache as plain tensors: graph inputs `past_key` (or
`past_key_values.0.key`, ...) of [batch, heads, past, head_size] and graph outputs
`present_key` (`present.0.key`, ...) of [batch, heads, past + new, head_size], the past with
the new positions appended.  Converted as they are, they stay plain inputs and outputs.

With kv_state, each such pair becomes one Core ML state of the present's shape (fp16: Core ML
states hold fp16 only).  The program reads it (`read_state`), takes the first `past` positions
on the sequence axis as the past, and writes the present back (`coreml_update_state`, saved as
`write_state`).  An ONNX Attention node whose past comes from a state and whose present goes to
the same state writes its new keys into the state's tensor with `slice_update` at the past
length instead of concatenating (engine/convert/ops_attention.py); any other producer of the
present (a Concat, as the legacy exporter writes it) is written back whole.

What one call computes is exactly one ONNX step with past = state[..., :past, :]; the state then
holds that step's present.  The sizes are those of the conversion (a profiling shape): the
program always reads the first `past` positions and writes the next `new` ones, so decoding a
sequence of any length on a device would also need the write position as an input, which the
ONNX graph does not have.  This serves profiling the stateful form (in-place cache updates
instead of cache tensors copied in and out) at a fixed length, and says so in the layer map.

A pair is an input and an output whose names match once "past_key_values" -> "present" or
"past" -> "present" is applied to the input's name, with the same float type and the same
shape except on one axis, where the output is longer.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import numpy as np

STATE_TARGETS = frozenset({"iOS18", "iOS26", "macOS15", "tvOS18", "watchOS11"})


@dataclass(frozen=True)
class KVPair:
    past: str  # the ONNX graph input
    present: str  # the ONNX graph output
    axis: int  # the sequence axis
    past_shape: tuple[int, ...]
    present_shape: tuple[int, ...]  # the state's shape

    @property
    def past_length(self) -> int:
        return self.past_shape[self.axis]

    def as_dict(self, state_name: str) -> dict:
        return {"state": state_name, "past_input": self.past, "present_output": self.present, "axis": self.axis,
                "past_length": self.past_length, "shape": list(self.present_shape)}


def _present_names(past: str) -> list[str]:
    names = []
    if "past_key_values" in past:
        names.append(past.replace("past_key_values", "present"))
    if "past" in past:
        names.append(past.replace("past", "present"))
    return names


def find_pairs(graph) -> list[KVPair]:
    """The (past input, present output) pairs of a graph with static shapes."""
    pairs = []
    for past in graph.inputs:
        past_type = graph.value_type(past)
        if past_type is None or not past_type.is_static or past_type.dtype not in ("float32", "float16"):
            continue
        for present in _present_names(past):
            present_type = graph.value_type(present) if present in graph.outputs else None
            if present_type is None or not present_type.is_static or present_type.dtype != past_type.dtype:
                continue
            past_shape, present_shape = tuple(past_type.shape), tuple(present_type.shape)
            differing = [axis for axis, (a, b) in enumerate(zip(past_shape, present_shape)) if a != b]
            if len(past_shape) == len(present_shape) and len(differing) == 1 \
                    and present_shape[differing[0]] > past_shape[differing[0]]:
                pairs.append(KVPair(past, present, differing[0], past_shape, present_shape))
                break
    return pairs


def option_problems(graph, target: str) -> list[str]:
    """Why kv_state cannot be used on this graph at this target ([] when it can)."""
    problems = []
    if target not in STATE_TARGETS:
        problems.append(f"Core ML state needs an iOS 18 (or later) target, not {target}; add --target iOS18")
    if not find_pairs(graph):
        problems.append("found no KV cache pair: an input named past... (past_key, past_key_values.0.key) and an "
                        "output named present... (present_key, present.0.key) of the same shape except a "
                        "longer sequence axis")
    return problems


# ----------------------------------------------------------------------------- building

class StateBinding:
    """One pair while building: the state placeholder and what the program read from it."""

    def __init__(self, pair: KVPair, state_name: str, state_var):
        self.pair = pair
        self.state_name = state_name
        self.state_var = state_var
        self.full = None  # the state's tensor as read, in the program's float type


def read_states(bindings: list[StateBinding], bind, float_name: str) -> None:
    """Emit read_state for every pair and bind each past input to the first `past` positions."""
    from engine.convert import ops
    mb = ops.mb
    for binding in bindings:
        pair, name = binding.pair, binding.state_name
        full = mb.read_state(input=binding.state_var, name=f"{name}__read_state")
        if float_name != "fp16":
            full = mb.cast(x=full, dtype=float_name, name=f"{name}__to_{float_name}")
        binding.full = full
        end = list(pair.present_shape)
        end[pair.axis] = pair.past_length
        past = mb.slice_by_index(x=full, begin=[0] * len(end), end=end, name=f"{name}__past")
        bind(pair.past, past)


def write_states(bindings: list[StateBinding], present_var) -> None:
    """Emit coreml_update_state of every pair's present (cast to the state's fp16)."""
    from engine.convert import ops
    mb = ops.mb
    for binding in bindings:
        value = present_var(binding.pair.present)
        if ops._mil_float(value) != "fp16":
            value = mb.cast(x=value, dtype="fp16", name=f"{binding.state_name}__to_fp16")
        mb.coreml_update_state(state=binding.state_var, value=value, name=f"{binding.state_name}__write_state")


def cache_update(ctx, new, past_index: int, output_index: int, role: str):
    """For an Attention node whose past is read from a state that its present is written to:
    the new keys/values written into the state's tensor at the past length (slice_update).
    None when the past is a plain input (the caller concatenates)."""
    bindings = getattr(ctx.state, "kv_bindings", None) or []
    past_name = ctx.node.inputs[past_index]
    present_name = ctx.node.outputs[output_index] if output_index < len(ctx.node.outputs) else ""
    binding = next((b for b in bindings if b.pair.past == past_name and b.pair.present == present_name), None)
    if binding is None or binding.pair.axis != 2 or ctx.float_name != ops_float(binding.full):
        return None
    from engine.convert import ops
    pair = binding.pair
    begin = [0] * len(pair.present_shape)
    begin[pair.axis] = pair.past_length
    return ops.mb.slice_update(x=binding.full, update=new, begin=np.array(begin, np.int32),
                               end=np.array(pair.present_shape, np.int32), name=ctx.name(f"present_{role}"))


def ops_float(var) -> Optional[str]:
    from engine.convert import ops
    return ops._mil_float(var)
