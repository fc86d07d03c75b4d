"""Generated decoder-only transformers as exported to ONNX, for tests and benchmarks.

The graphs look like what `torch.onnx.export` / Optimum write for a small on-device language
model: node names with module scopes (`/model/layers.17/self_attn/q_proj/MatMul`), inputs
`input_ids`, `attention_mask`, `position_ids` and a KV cache (`past_key_values.N.key/value`,
outputs `present.N.key/value`), each decoder block made of RMSNorm (or LayerNorm), attention
with rotary position embedding, grouped-query K/V repeated to the query heads, and a gated MLP
(SiLU); the shape arithmetic of a dynamic export (Shape -> Gather -> Unsqueeze -> Concat ->
Reshape) is there too, because it is a large share of the nodes of real exports.

Two styles span 5,000 to 150,000 nodes:
- "optimum": one attention for all heads, ~80 nodes per block (62 blocks: ~5,000 nodes);
- "per_head_qdq": what phone NPU toolchains export: single-head attention (every query and
  K/V head its own projection, rotary embedding and attention) and a fully quantized QDQ
  graph (int8 weights dequantized, every float activation through a Q/DQ pair): ~2,400
  nodes per block with 32 heads (42 blocks: ~100,000 nodes, 63 blocks: ~150,000).

`legacy_export=True` writes the flavour of the legacy (TorchScript) `torch.onnx.export` at opset 17
with `dynamic_axes`, what Optimum uses: the inputs' batch and sequence sizes are named
(`batch_size`, `sequence_length`, `past_sequence_length`, `total_sequence_length`), every size
is read with Shape -> Gather (a scalar index) -> Unsqueeze -> Concat, and the repeat_kv Expand
and Reshape targets are computed that way too (with the total length unknown, no constant can
hold them).  Converting it needs the input shapes (--shape) and the shape-fixing pass.

Weights are not written into the .onnx: `write_transformer` stores them as external data in a
sparse file of the right size (NAME.weights.bin; no disk space used), so a 100,000-node model with realistic
dimensions is a few tens of megabytes and opens like a real one (sizes, MACs, parameters).
"""
from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Union

import onnx
from onnx import TensorProto, helper

OPSET = 17
STYLES = ("optimum", "per_head_qdq")


@dataclass(frozen=True)
class TransformerConfig:
    layers: int = 32
    hidden: int = 2048
    heads: int = 32
    kv_heads: int = 8
    intermediate: int = 5632
    vocab: int = 32000
    sequence: int = 1  # tokens per step (1: decoding with the KV cache)
    past: int = 127  # tokens already in the cache
    norm: str = "rms"  # "rms" or "layer"
    style: str = "optimum"
    legacy_export: bool = False  # named input sizes and Shape/Gather/Unsqueeze chains (module docstring)

    @property
    def head_dim(self) -> int:
        return self.hidden // self.heads

    def check(self) -> None:
        if self.style not in STYLES:
            raise ValueError(f"unknown style {self.style!r}; known: {', '.join(STYLES)}")
        if self.norm not in ("rms", "layer"):
            raise ValueError(f"norm must be 'rms' or 'layer', got {self.norm!r}")
        if self.layers < 1 or self.hidden % self.heads or self.heads % self.kv_heads:
            raise ValueError("need layers >= 1, hidden divisible by heads, heads divisible by kv_heads")


# Ops whose float outputs a QDQ export quantizes (not shape arithmetic, not the Q/DQ ops themselves).
_QUANTIZED_OUTPUTS = {"MatMul", "Add", "Mul", "Softmax", "Sigmoid", "Concat", "Neg", "Sqrt", "Reciprocal", "Pow",
                      "ReduceMean", "Transpose", "Reshape", "Slice", "LayerNormalization"}


class _Builder:
    """Nodes named as a PyTorch export names them: per scope and op type a counter
    ("/model/layers.0/self_attn/Reshape", ".../Reshape_1"); output "<name>_output_0"."""

    def __init__(self, config: TransformerConfig, weights_file: str):
        self.config = config
        self.weights_file = weights_file
        self.nodes: list[onnx.NodeProto] = []
        self.initializers: list[onnx.TensorProto] = []
        self.weight_bytes = 0
        self._counts: dict[tuple[str, str], int] = defaultdict(int)
        self._constants: dict[tuple, str] = {}

    def op(self, scope: str, op_type: str, inputs: list[str], outputs: int = 1, quantize: bool = True, **attributes):
        index = self._counts[(scope, op_type)]
        self._counts[(scope, op_type)] += 1
        name = f"/{scope}/{op_type}" + (f"_{index}" if index else "")
        names = [f"{name}_output_{i}" for i in range(outputs)]
        self.nodes.append(helper.make_node(op_type, inputs, names, name=name, **attributes))
        if quantize and outputs == 1 and self.config.style == "per_head_qdq" and op_type in _QUANTIZED_OUTPUTS:
            # A fully quantized (QDQ) export: every float activation passes a Q/DQ pair.
            scale, zero = self.scalar(0.02), self._zero_point()
            quantized = self.op(scope, "QuantizeLinear", [names[0], scale, zero])
            return self.op(scope, "DequantizeLinear", [quantized, scale, zero])
        return names[0] if outputs == 1 else names

    def weight(self, name: str, dims: list[int], dtype: int = TensorProto.FLOAT) -> str:
        """An initializer whose data is external (offset into the sparse weights file)."""
        tensor = TensorProto(name=name, data_type=dtype, dims=dims)
        size = 4 if dtype == TensorProto.FLOAT else 1
        length = size
        for d in dims:
            length *= d
        tensor.data_location = TensorProto.EXTERNAL
        for key, value in (("location", self.weights_file), ("offset", str(self.weight_bytes)), ("length", str(length))):
            entry = tensor.external_data.add()
            entry.key, entry.value = key, value
        self.weight_bytes += (length + 63) // 64 * 64
        self.initializers.append(tensor)
        return name

    def constant(self, values: list[int], dtype: int = TensorProto.INT64) -> str:
        """A small shared constant (axes, shapes), stored inline as exporters do."""
        key = (tuple(values), dtype)
        if key not in self._constants:
            name = f"const_{len(self._constants)}"
            self.initializers.append(helper.make_tensor(name, dtype, [len(values)], values))
            self._constants[key] = name
        return self._constants[key]

    def scalar(self, value: float) -> str:
        key = (value, "scalar")
        if key not in self._constants:
            name = f"scalar_{len(self._constants)}"
            self.initializers.append(helper.make_tensor(name, TensorProto.FLOAT, [], [value]))
            self._constants[key] = name
        return self._constants[key]

    # -- pieces ---------------------------------------------------------------------------
    def linear(self, scope: str, x: str, weight_name: str, rows: int, columns: int) -> str:
        if self.config.style == "per_head_qdq":
            return self.qdq_matmul(scope, x, weight_name, rows, columns)
        return self.op(scope, "MatMul", [x, self.weight(weight_name, [rows, columns])])

    def qdq_matmul(self, scope: str, x: str, weight_name: str, rows: int, columns: int) -> str:
        """int8 weights dequantized, then the MatMul (its input arrives dequantized already)."""
        int8_weight = self.weight(weight_name + ".int8", [rows, columns], TensorProto.INT8)
        weight = self.op(scope, "DequantizeLinear", [int8_weight, self.scalar(0.02), self._zero_point()])
        return self.op(scope, "MatMul", [x, weight])

    def _zero_point(self) -> str:
        key = ("zero_point",)
        if key not in self._constants:
            self.initializers.append(helper.make_tensor("zero_point_int8", TensorProto.INT8, [], [0]))
            self._constants[key] = "zero_point_int8"
        return self._constants[key]

    def norm(self, scope: str, x: str, weight_name: str) -> str:
        hidden = self.config.hidden
        gamma = self.weight(weight_name, [hidden])
        if self.config.norm == "layer":
            beta = self.weight(weight_name.replace(".weight", ".bias"), [hidden])
            return self.op(scope, "LayerNormalization", [x, gamma, beta], axis=-1, epsilon=1e-5)
        # RMSNorm as exported: x * rsqrt(mean(x^2) + eps) * gamma
        square = self.op(scope, "Pow", [x, self.scalar(2.0)])
        mean = self.op(scope, "ReduceMean", [square], axes=[-1], keepdims=1)
        shifted = self.op(scope, "Add", [mean, self.scalar(1e-6)])
        root = self.op(scope, "Sqrt", [shifted])
        inverse = self.op(scope, "Reciprocal", [root])
        normed = self.op(scope, "Mul", [x, inverse])
        return self.op(scope, "Mul", [normed, gamma])

    def dynamic_shape(self, scope: str, x: str, tail: list[int]) -> str:
        """The shape arithmetic of a dynamic export: [batch, seq] of `x` followed by `tail`."""
        return self.sizes_of(scope, x, [0, 1], tail)

    def sizes_of(self, scope: str, x: str, axes: list[int], tail: list[int], head: tuple = ()) -> str:
        """A shape tensor [*head, size of x on each of `axes`, *tail], as the export computes it."""
        shape = self.op(scope, "Shape", [x])
        parts = [self.constant(list(head))] if head else []
        for axis in axes:
            if self.config.legacy_export:  # x.size(axis): a scalar Gather, unsqueezed for the Concat
                size = self.op(scope, "Gather", [shape, self.scalar_int(axis)], axis=0)
                parts.append(self.op(scope, "Unsqueeze", [size, self.constant([0])]))
            else:
                parts.append(self.op(scope, "Gather", [shape, self.constant([axis])], axis=0))
        if tail:
            parts.append(self.constant(tail))
        return self.op(scope, "Concat", parts, quantize=False, axis=0)

    def scalar_int(self, value: int) -> str:
        key = (value, "scalar_int")
        if key not in self._constants:
            name = f"scalar_int_{len(self._constants)}"
            self.initializers.append(helper.make_tensor(name, TensorProto.INT64, [], [value]))
            self._constants[key] = name
        return self._constants[key]

    def split_heads(self, scope: str, x: str, heads: int) -> str:
        head_dim = self.config.head_dim
        reshaped = self.op(scope, "Reshape", [x, self.dynamic_shape(scope, x, [heads, head_dim])])
        return self.op(scope, "Transpose", [reshaped], perm=[0, 2, 1, 3])

    def rotary(self, scope: str, x: str, cos: str, sin: str) -> str:
        """x * cos + rotate_half(x) * sin, rotate_half as exported (two Slices, Neg, Concat)."""
        half = self.config.head_dim // 2
        first = self.op(scope, "Slice", [x, self.constant([0]), self.constant([half]), self.constant([-1])])
        second = self.op(scope, "Slice", [x, self.constant([half]), self.constant([2 ** 62]), self.constant([-1])])
        negated = self.op(scope, "Neg", [second])
        rotated = self.op(scope, "Concat", [negated, first], axis=-1)
        return self.op(scope, "Add", [self.op(scope, "Mul", [x, cos]), self.op(scope, "Mul", [rotated, sin])])

    def attention_core(self, scope: str, q: str, k: str, v: str, mask: str) -> str:
        scores = self.op(scope, "MatMul", [q, self.op(scope, "Transpose", [k], perm=[0, 1, 3, 2])])
        scaled = self.op(scope, "Mul", [scores, self.scalar(self.config.head_dim ** -0.5)])
        masked = self.op(scope, "Add", [scaled, mask])
        weights = self.op(scope, "Softmax", [masked], axis=-1)
        return self.op(scope, "MatMul", [weights, v])


def transformer_model(config: TransformerConfig = TransformerConfig(),
                      weights_file: str = "weights.bin") -> tuple[onnx.ModelProto, int]:
    """The model and the size of its external weights file `weights_file` in bytes."""
    config.check()
    b = _Builder(config, weights_file)
    c = config
    groups = c.heads // c.kv_heads
    total = c.past + c.sequence

    embedding = b.weight("model.embed_tokens.weight", [c.vocab, c.hidden])
    x = b.op("model/embed_tokens", "Gather", [embedding, "input_ids"], axis=0)
    # Rotary tables gathered by position, shared by every block (as exported from the rotary module)
    cos_table = b.weight("model.rotary_emb.cos_cached", [4096, c.head_dim])
    sin_table = b.weight("model.rotary_emb.sin_cached", [4096, c.head_dim])
    cos = b.op("model/rotary_emb", "Unsqueeze", [b.op("model/rotary_emb", "Gather", [cos_table, "position_ids"],
                                                       axis=0), b.constant([1])])
    sin = b.op("model/rotary_emb", "Unsqueeze", [b.op("model/rotary_emb", "Gather", [sin_table, "position_ids"],
                                                       axis=0), b.constant([1])])
    # Additive causal mask from attention_mask: (1 - mask) * -inf-ish, broadcast over heads
    mask_float = b.op("model", "Cast", ["attention_mask"], to=TensorProto.FLOAT)
    inverted = b.op("model", "Sub", [b.scalar(1.0), mask_float])
    mask = b.op("model", "Mul", [b.op("model", "Unsqueeze", [inverted, b.constant([1, 2])]), b.scalar(-1e9)])

    presents = []
    for layer in range(c.layers):
        prefix = f"model/layers.{layer}"
        weights = f"model.layers.{layer}"
        residual = x
        h = b.norm(f"{prefix}/input_layernorm", x, f"{weights}.input_layernorm.weight")
        attn = f"{prefix}/self_attn"
        if c.style == "optimum":
            q = b.linear(f"{attn}/q_proj", h, f"{weights}.self_attn.q_proj.weight", c.hidden, c.hidden)
            k = b.linear(f"{attn}/k_proj", h, f"{weights}.self_attn.k_proj.weight", c.hidden, c.kv_heads * c.head_dim)
            v = b.linear(f"{attn}/v_proj", h, f"{weights}.self_attn.v_proj.weight", c.hidden, c.kv_heads * c.head_dim)
            q = b.split_heads(attn, q, c.heads)
            k, v = b.split_heads(attn, k, c.kv_heads), b.split_heads(attn, v, c.kv_heads)
            q = b.rotary(f"{attn}/rotary_q", q, cos, sin)
            k = b.rotary(f"{attn}/rotary_k", k, cos, sin)
            k = b.op(attn, "Concat", [f"past_key_values.{layer}.key", k], axis=2)
            v = b.op(attn, "Concat", [f"past_key_values.{layer}.value", v], axis=2)
            presents += [(f"present.{layer}.key", k), (f"present.{layer}.value", v)]
            # repeat_kv: [b, kv, t, d] -> [b, kv, groups, t, d] -> [b, heads, t, d]
            if c.legacy_export:  # the total length is not known when exporting: computed from k
                repeat_shape = b.op(attn, "Concat", [b.sizes_of(attn, k, [0], [c.kv_heads, groups]),
                                                     b.sizes_of(attn, k, [2], [c.head_dim])], axis=0)
                merged_shape = b.op(attn, "Concat", [b.sizes_of(attn, k, [0], [c.heads]),
                                                     b.sizes_of(attn, k, [2], [c.head_dim])], axis=0)
            else:
                repeat_shape = b.constant([1, c.kv_heads, groups, total, c.head_dim])
                merged_shape = b.constant([1, c.heads, total, c.head_dim])
            k_all = b.op(attn, "Reshape", [b.op(attn, "Expand", [b.op(attn, "Unsqueeze", [k, b.constant([2])]),
                                                                  repeat_shape]), merged_shape])
            v_all = b.op(attn, "Reshape", [b.op(attn, "Expand", [b.op(attn, "Unsqueeze", [v, b.constant([2])]),
                                                                  repeat_shape]), merged_shape])
            context = b.attention_core(attn, q, k_all, v_all, mask)
        else:
            # Single-head attention (the split phone NPU toolchains apply): every K/V head and every
            # query head has its own projection, rotary embedding and attention.
            keys, values = [], []
            for group in range(c.kv_heads):
                scope = f"{attn}/kv.{group}"
                past = [b.op(scope, "Slice", [f"past_key_values.{layer}.{kind}", b.constant([group]),
                                              b.constant([group + 1]), b.constant([1])]) for kind in ("key", "value")]
                k_g = b.linear(f"{scope}/k_proj", h, f"{weights}.self_attn.k_proj.{group}.weight", c.hidden, c.head_dim)
                v_g = b.linear(f"{scope}/v_proj", h, f"{weights}.self_attn.v_proj.{group}.weight", c.hidden, c.head_dim)
                k_g = b.rotary(f"{scope}/rotary", b.split_heads(scope, k_g, 1), cos, sin)
                keys.append(b.op(scope, "Concat", [past[0], k_g], axis=2))
                values.append(b.op(scope, "Concat", [past[1], b.split_heads(scope, v_g, 1)], axis=2))
            presents += [(f"present.{layer}.key", b.op(attn, "Concat", keys, axis=1)),
                         (f"present.{layer}.value", b.op(attn, "Concat", values, axis=1))]
            outputs = []
            for head in range(c.heads):
                scope = f"{attn}/head.{head}"
                q_h = b.linear(f"{scope}/q_proj", h, f"{weights}.self_attn.q_proj.{head}.weight", c.hidden, c.head_dim)
                q_h = b.rotary(f"{scope}/rotary", b.split_heads(scope, q_h, 1), cos, sin)
                outputs.append(b.attention_core(scope, q_h, keys[head // groups], values[head // groups], mask))
            context = b.op(attn, "Concat", outputs, axis=1)
        context = b.op(attn, "Transpose", [context], perm=[0, 2, 1, 3])
        context = b.op(attn, "Reshape", [context, b.dynamic_shape(attn, h, [c.hidden])])
        attended = b.linear(f"{attn}/o_proj", context, f"{weights}.self_attn.o_proj.weight", c.hidden, c.hidden)
        x = b.op(prefix, "Add", [residual, attended])
        residual = x
        h = b.norm(f"{prefix}/post_attention_layernorm", x, f"{weights}.post_attention_layernorm.weight")
        mlp = f"{prefix}/mlp"
        gate = b.linear(f"{mlp}/gate_proj", h, f"{weights}.mlp.gate_proj.weight", c.hidden, c.intermediate)
        up = b.linear(f"{mlp}/up_proj", h, f"{weights}.mlp.up_proj.weight", c.hidden, c.intermediate)
        activated = b.op(f"{mlp}/act_fn", "Mul", [gate, b.op(f"{mlp}/act_fn", "Sigmoid", [gate])])  # SiLU
        down = b.linear(f"{mlp}/down_proj", b.op(mlp, "Mul", [activated, up]),
                        f"{weights}.mlp.down_proj.weight", c.intermediate, c.hidden)
        x = b.op(prefix, "Add", [residual, down])

    x = b.norm("model/norm", x, "model.norm.weight")
    logits = b.linear("lm_head", x, "lm_head.weight", c.hidden, c.vocab)
    b.nodes.append(helper.make_node("Identity", [logits], ["logits"], name="/lm_head/Identity"))
    for name, value in presents:
        b.nodes.append(helper.make_node("Identity", [value], [name], name=f"/{name}/Identity"))

    f32 = TensorProto.FLOAT
    inputs = [helper.make_tensor_value_info("input_ids", TensorProto.INT64, [1, c.sequence]),
              helper.make_tensor_value_info("attention_mask", TensorProto.INT64, [1, total]),
              helper.make_tensor_value_info("position_ids", TensorProto.INT64, [1, c.sequence])]
    for layer in range(c.layers):
        for kind in ("key", "value"):
            inputs.append(helper.make_tensor_value_info(f"past_key_values.{layer}.{kind}", f32,
                                                        [1, c.kv_heads, c.past, c.head_dim]))
    outputs = [helper.make_tensor_value_info("logits", f32, [1, c.sequence, c.vocab])]
    for name, _ in presents:
        outputs.append(helper.make_tensor_value_info(name, f32, [1, c.kv_heads, total, c.head_dim]))
    if c.legacy_export:
        _name_dynamic_axes(inputs + outputs)
    graph = helper.make_graph(b.nodes, "decoder", inputs, outputs, b.initializers)
    model = helper.make_model(graph, producer_name="layerscope-samples", producer_version="1",
                              opset_imports=[helper.make_opsetid("", OPSET)])
    model.ir_version = 8
    return model, b.weight_bytes


def _name_dynamic_axes(values: list[onnx.ValueInfoProto]) -> None:
    """The sizes `dynamic_axes` leaves free, named as the legacy exporter names them."""
    for value in values:
        dims = value.type.tensor_type.shape.dim
        dims[0].dim_param = "batch_size"
        if value.name in ("input_ids", "position_ids", "logits"):
            dims[1].dim_param = "sequence_length"
        elif value.name == "attention_mask":
            dims[1].dim_param = "total_sequence_length"
        elif value.name.startswith("past_key_values."):
            dims[2].dim_param = "past_sequence_length"
        elif value.name.startswith("present."):
            dims[2].dim_param = "total_sequence_length"


def fixed_input_shapes(config: TransformerConfig) -> dict[str, list[int]]:
    """The input shapes of `config` (what --shape gives a legacy export's named sizes)."""
    total = config.past + config.sequence
    shapes = {"input_ids": [1, config.sequence], "attention_mask": [1, total], "position_ids": [1, config.sequence]}
    for layer in range(config.layers):
        for kind in ("key", "value"):
            shapes[f"past_key_values.{layer}.{kind}"] = [1, config.kv_heads, config.past, config.head_dim]
    return shapes


def with_random_weights(model: onnx.ModelProto, seed: int = 0, scale: float = 0.1) -> onnx.ModelProto:
    """The model with its external (sparse, all-zero) float weights replaced by random values stored
    in the file: for value checks, where zero weights would make every product zero.  Small
    dimensions only (the weights are held in memory)."""
    import numpy as np
    from onnx import numpy_helper

    rng = np.random.default_rng(seed)
    for tensor in model.graph.initializer:
        if tensor.data_location == TensorProto.EXTERNAL and tensor.data_type == TensorProto.FLOAT:
            values = (rng.standard_normal(list(tensor.dims)) * scale).astype(np.float32)
            tensor.CopyFrom(numpy_helper.from_array(values, tensor.name))
    return model


def layers_for_nodes(nodes: int, style: str = "optimum", **dimensions) -> int:
    """How many blocks make a model of about `nodes` nodes in this style (at least one)."""
    one = transformer_model(TransformerConfig(layers=1, style=style, **dimensions))[0]
    two = transformer_model(TransformerConfig(layers=2, style=style, **dimensions))[0]
    per_block = len(two.graph.node) - len(one.graph.node)
    return max(1, round((nodes - (len(one.graph.node) - per_block)) / per_block))


def write_transformer(path: Union[str, Path], config: TransformerConfig = TransformerConfig()) -> Path:
    """Write the model and its weights beside it as NAME.weights.bin, a sparse file of zeros."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    weights_file = path.stem + ".weights.bin"
    model, weight_bytes = transformer_model(config, weights_file)
    with open(path.parent / weights_file, "wb") as handle:
        handle.truncate(weight_bytes)
    path.write_bytes(model.SerializeToString())
    return path


# ----------------------------------------------------------------------------- issue 17 flavours
#
# The same decoder written the way two newer exporters write it (kept apart from the legacy
# "optimum" graphs above; the block layout and node names follow the same module scopes):
# - "opset23": standard ONNX opset 23, what torch.onnx's dynamo exporter emits for it:
#   RMSNormalization, RotaryEmbedding (3-D, num_heads, run-time position_ids) and Attention
#   (3-D q/k/v, q_num_heads/kv_num_heads, is_causal, past/present K/V); no attention_mask input.
# - "microsoft": what onnxruntime-genai's model builder emits: SimplifiedLayerNormalization for
#   the first norm, SkipSimplifiedLayerNormalization (residual add + RMS norm) for the others,
#   com.microsoft RotaryEmbedding on q and k, GroupQueryAttention with the past K/V as inputs and
#   seqlens_k / total_sequence_length computed from attention_mask (ReduceSum, Sub, Cast; Shape,
#   Gather, Cast), and, with `quantized=True`, every projection as a 4-bit MatMulNBits.
# Weights are random (seeded) and stored in the file, for value checks: small dimensions only.

FLAVOURS = ("opset23", "microsoft")
MICROSOFT = "com.microsoft"
_FLAVOUR_OPSETS = {"opset23": [("", 23)], "microsoft": [("", 17), (MICROSOFT, 1)]}
_NBITS_BLOCK = 16  # MatMulNBits' block_size in the quantized microsoft flavour


class _FlavourBuilder(_Builder):
    """Named as exported, with random weights in the file (a value check needs non-zero weights)."""

    def __init__(self, config: TransformerConfig, seed: int):
        super().__init__(config, weights_file="")
        import numpy as np

        self.rng = np.random.default_rng(seed)

    def weight(self, name: str, dims: list[int], dtype: int = TensorProto.FLOAT, scale: float = 0.1) -> str:
        import numpy as np
        from onnx import numpy_helper

        values = (self.rng.standard_normal(dims) * scale).astype(np.float32)
        if name.endswith("norm.weight"):
            values += 1.0  # a norm's gain, around one as trained
        self.initializers.append(numpy_helper.from_array(values, name))
        return name

    def initializer(self, name: str, array) -> str:
        from onnx import numpy_helper

        self.initializers.append(numpy_helper.from_array(array, name))
        return name

    def linear(self, scope: str, x: str, weight_name: str, rows: int, columns: int, quantized: bool = False) -> str:
        if not quantized:
            return self.op(scope, "MatMul", [x, self.weight(weight_name, [rows, columns])])
        return self.matmul_nbits(scope, x, weight_name, rows, columns)

    def matmul_nbits(self, scope: str, x: str, weight_name: str, k: int, n: int) -> str:
        """x @ W with W [k, n] stored as ONNX Runtime's 4-bit blocks: B [n, k/32, 16] uint8 (two values a
        byte, the first in the low bits), a scale and a packed zero point per block of 32 along k."""
        import numpy as np

        blocks = k // _NBITS_BLOCK
        values = self.rng.integers(0, 16, size=(n, k)).astype(np.uint8)
        packed = (values[:, 0::2] | (values[:, 1::2] << 4)).reshape(n, blocks, _NBITS_BLOCK // 2)
        zero_points = self.rng.integers(0, 16, size=(n, blocks + blocks % 2)).astype(np.uint8)
        packed_zero_points = zero_points[:, 0::2] | (zero_points[:, 1::2] << 4)
        scales = (self.rng.random((n, blocks)) * 0.004 + 0.004).astype(np.float32)  # weights within +-0.12
        inputs = [x, self.initializer(weight_name + ".qweight", packed), self.initializer(weight_name + ".scales", scales),
                  self.initializer(weight_name + ".qzeros", packed_zero_points)]
        return self.op(scope, "MatMulNBits", inputs, domain=MICROSOFT, K=k, N=n, bits=4, block_size=_NBITS_BLOCK)

    def rotary_tables(self, rows: int) -> tuple[str, str]:
        """cos/sin caches [rows, head_dim / 2] of the usual base-10000 frequencies."""
        import numpy as np

        half = self.config.head_dim // 2
        angles = np.arange(rows)[:, None] * (10000.0 ** (-np.arange(half) / half))[None, :]
        return (self.initializer("cos_cache", np.cos(angles).astype(np.float32)),
                self.initializer("sin_cache", np.sin(angles).astype(np.float32)))


def flavour_model(config: TransformerConfig, flavour: str, *, quantized: bool = False, seed: int = 0,
                  rotary_rows: int = 256) -> onnx.ModelProto:
    """The decoder of `config` (its layers, sizes, sequence and past) in an issue-17 flavour (see above).
    Every block is `model/layers.N/...`; outputs `logits` and `present.N.key/value`."""
    import numpy as np

    config.check()
    if flavour not in FLAVOURS:
        raise ValueError(f"unknown flavour {flavour!r}; known: {', '.join(FLAVOURS)}")
    if quantized and flavour != "microsoft":
        raise ValueError("quantized=True (MatMulNBits) is a com.microsoft op: only the 'microsoft' flavour")
    if quantized and (config.hidden % _NBITS_BLOCK or config.intermediate % _NBITS_BLOCK):
        raise ValueError(f"quantized=True needs hidden and intermediate sizes that are multiples of {_NBITS_BLOCK}")
    c, b = config, _FlavourBuilder(config, seed)
    total, kv_width = c.past + c.sequence, c.kv_heads * c.head_dim
    microsoft = flavour == "microsoft"
    x = b.op("model/embed_tokens", "Gather", [b.weight("model.embed_tokens.weight", [c.vocab, c.hidden]),
                                              "input_ids"], axis=0)
    cos, sin = b.rotary_tables(rotary_rows)
    if microsoft:
        # seqlens_k (per row: attended length - 1) and the total length, from attention_mask
        scope = "model/attn_mask_reformat/attn_mask_subgraph"
        summed = b.op(scope, "ReduceSum", ["attention_mask", b.constant([1])], keepdims=0)
        seqlens = b.op(scope, "Cast", [b.op(scope, "Sub", [summed, b.constant([1])])], to=TensorProto.INT32)
        gathered = b.op(scope, "Gather", [b.op(scope, "Shape", ["attention_mask"]),
                                          b.initializer("one_index", np.array(1, np.int64))], axis=0)
        total_length = b.op(scope, "Cast", [gathered], to=TensorProto.INT32)

    def norm(scope: str, value: str, weight: str, skip: str = "") -> tuple[str, str]:
        """(normalised, residual sum): RMS norm, of value + skip where there is one."""
        gamma = b.weight(weight, [c.hidden])
        if not microsoft:
            summed = b.op(scope.rsplit("/", 1)[0], "Add", [skip, value]) if skip else value
            return b.op(scope, "RMSNormalization", [summed, gamma], axis=-1, epsilon=1e-6), summed
        if not skip:
            return b.op(scope, "SimplifiedLayerNormalization", [value, gamma], axis=-1, epsilon=1e-6), value
        normed, _, _, summed = b.op(scope, "SkipSimplifiedLayerNormalization", [value, skip, gamma], outputs=4,
                                    domain=MICROSOFT, epsilon=1e-6)
        return normed, summed

    presents, pending, residual = [], x, ""
    for layer in range(c.layers):
        prefix, weights = f"model/layers.{layer}", f"model.layers.{layer}"
        h, residual = norm(f"{prefix}/input_layernorm", pending, f"{weights}.input_layernorm.weight", residual)
        attn = f"{prefix}/attn"
        q = b.linear(f"{attn}/q_proj", h, f"{weights}.attn.q_proj.weight", c.hidden, c.hidden, quantized)
        k = b.linear(f"{attn}/k_proj", h, f"{weights}.attn.k_proj.weight", c.hidden, kv_width, quantized)
        v = b.linear(f"{attn}/v_proj", h, f"{weights}.attn.v_proj.weight", c.hidden, kv_width, quantized)
        past = [f"past_key_values.{layer}.key", f"past_key_values.{layer}.value"]
        if microsoft:
            q = b.op(f"{attn}/q_rotary", "RotaryEmbedding", [q, "position_ids", cos, sin], domain=MICROSOFT,
                     num_heads=c.heads)
            k = b.op(f"{attn}/k_rotary", "RotaryEmbedding", [k, "position_ids", cos, sin], domain=MICROSOFT,
                     num_heads=c.kv_heads)
            context, present_key, present_value = b.op(
                attn, "GroupQueryAttention", [q, k, v, *past, seqlens, total_length], outputs=3, domain=MICROSOFT,
                num_heads=c.heads, kv_num_heads=c.kv_heads)
        else:
            q = b.op(f"{attn}/q_rotary", "RotaryEmbedding", [q, cos, sin, "position_ids"], num_heads=c.heads)
            k = b.op(f"{attn}/k_rotary", "RotaryEmbedding", [k, cos, sin, "position_ids"], num_heads=c.kv_heads)
            context, present_key, present_value = b.op(attn, "Attention", [q, k, v, "", *past], outputs=3,
                                                       q_num_heads=c.heads, kv_num_heads=c.kv_heads, is_causal=1)
        presents += [(f"present.{layer}.key", present_key), (f"present.{layer}.value", present_value)]
        attended = b.linear(f"{attn}/o_proj", context, f"{weights}.attn.o_proj.weight", c.hidden, c.hidden, quantized)
        h, residual = norm(f"{prefix}/post_attention_layernorm", attended, f"{weights}.post_attention_layernorm.weight",
                           residual)
        mlp = f"{prefix}/mlp"
        gate = b.linear(f"{mlp}/gate_proj", h, f"{weights}.mlp.gate_proj.weight", c.hidden, c.intermediate, quantized)
        up = b.linear(f"{mlp}/up_proj", h, f"{weights}.mlp.up_proj.weight", c.hidden, c.intermediate, quantized)
        activated = b.op(f"{mlp}/act_fn", "Mul", [gate, b.op(f"{mlp}/act_fn", "Sigmoid", [gate])])  # SiLU
        pending = b.linear(f"{mlp}/down_proj", b.op(mlp, "Mul", [activated, up]), f"{weights}.mlp.down_proj.weight",
                           c.intermediate, c.hidden, quantized)
    h, _ = norm("model/norm", pending, "model.norm.weight", residual)
    logits = b.linear("lm_head", h, "lm_head.weight", c.hidden, c.vocab)
    b.nodes.append(helper.make_node("Identity", [logits], ["logits"], name="/lm_head/Identity"))
    for name, value in presents:
        b.nodes.append(helper.make_node("Identity", [value], [name], name=f"/{name}/Identity"))

    f32, i64 = TensorProto.FLOAT, TensorProto.INT64
    inputs = [helper.make_tensor_value_info("input_ids", i64, [1, c.sequence])]
    if microsoft:
        inputs.append(helper.make_tensor_value_info("attention_mask", i64, [1, total]))
    inputs.append(helper.make_tensor_value_info("position_ids", i64, [1, c.sequence]))
    for layer in range(c.layers):
        for kind in ("key", "value"):
            inputs.append(helper.make_tensor_value_info(f"past_key_values.{layer}.{kind}", f32,
                                                        [1, c.kv_heads, c.past, c.head_dim]))
    outputs = [helper.make_tensor_value_info("logits", f32, [1, c.sequence, c.vocab])]
    # genai leaves the present length symbolic (ONNX Runtime's GroupQueryAttention shape inference
    # assumes a shared past/present buffer and would disagree with a fixed size)
    present_length = "total_sequence_length" if microsoft else total
    outputs += [helper.make_tensor_value_info(name, f32, [1, c.kv_heads, present_length, c.head_dim])
                for name, _ in presents]
    graph = helper.make_graph(b.nodes, "decoder", inputs, outputs, b.initializers)
    model = helper.make_model(graph, producer_name="layerscope-samples", producer_version="1",
                              opset_imports=[helper.make_opsetid(domain, version)
                                             for domain, version in _FLAVOUR_OPSETS[flavour]])
    model.ir_version = 10 if flavour == "opset23" else 8
    return model


def flavour_layers_for_nodes(nodes: int, flavour: str, **options) -> int:
    """How many blocks make a flavour model of about `nodes` nodes (at least one)."""
    small = dict(hidden=64, heads=4, kv_heads=2, intermediate=96, vocab=50)
    one = len(flavour_model(TransformerConfig(layers=1, **small), flavour, **options).graph.node)
    two = len(flavour_model(TransformerConfig(layers=2, **small), flavour, **options).graph.node)
    return max(1, round((nodes - (one - (two - one))) / (two - one)))
