"""Static cost model: multiply-accumulates and FLOPs per op, from shapes alone.

Conventions (also written into the inspect JSON, see `CONVENTIONS`):
- MACs count multiply-accumulates of Conv, ConvTranspose, Gemm, MatMul and
  recurrent layers; their FLOPs are 2 x MACs (bias adds are not counted).
- Other ops have FLOPs only: elementwise ops count their per-element
  operations (table below), pooling counts the window size per output,
  normalisations count a few operations per element.  These are
  approximations meant for ranking layers, like every published FLOP count.
- Data-movement ops (Reshape, Concat, Transpose, ...) cost 0 FLOPs; they are
  known to be free of arithmetic, which is different from "unknown".

Op types are matched after normalisation through `CANONICAL_OP`, so Core ML
names ("conv", "innerProduct", "batchnorm") and TFLite builtin operators
("CONV_2D", "FULLY_CONNECTED") share the ONNX formulas.  TFLite ops whose
weights are laid out differently (depthwise [1,KH,KW,C], transposed conv with
the output shape as first input, fully connected [units, K], batch matmul with
adjoint flags) have formulas of their own (`_tflite_macs`).  Graphs marked
`channels_last` (TFLite NHWC) have their spatial axes at 1..rank-2.
"""
from __future__ import annotations

from dataclasses import dataclass
from math import prod
from typing import Callable, Optional, Sequence

from engine.ir import Graph, Node, TensorType

CONVENTIONS = {
    "macs": "multiply-accumulates of Conv, ConvTranspose, Gemm/MatMul/linear and RNN layers",
    "flops": "2 x MACs for those ops (bias adds not counted) plus approximate per-element "
             "operation counts for elementwise, normalisation, pooling and softmax ops",
    "params": "elements of constant floating-point (or int8) tensors of rank 1 or more read by "
              "compute ops, each counted once; BatchNorm scale and bias count as parameters, its running mean and "
              "variance do not (they are reported as buffers); shape/axes/index constants do not count",
    "weight_bytes": "bytes of all parameter and buffer tensors at their stored dtype",
    "output_bytes": "bytes of a node's output tensors at their dtype",
    "peak_activation_bytes": "largest sum of live activation tensors (graph inputs and node outputs, "
                             "not weights) along the execution order, freeing a tensor after its last use",
    "arithmetic_intensity": "FLOPs per byte moved (input activations + weights + outputs)",
}

# Core ML (NeuralNetwork layer and MIL op) names -> the ONNX op type whose formula applies.
CANONICAL_OP = {
    "conv": "Conv", "convolution": "Conv", "conv_transpose": "ConvTranspose",
    "deconvolution": "ConvTranspose", "linear": "Gemm", "innerProduct": "Gemm",
    "matmul": "MatMul", "batchedMatmul": "MatMul", "einsum": "Einsum",
    "batch_norm": "BatchNormalization", "batchnorm": "BatchNormalization",
    "instance_norm": "InstanceNormalization", "layer_norm": "LayerNormalization",
    "relu": "Relu", "relu6": "Clip", "sigmoid": "Sigmoid", "tanh": "Tanh", "leaky_relu": "LeakyRelu",
    "sigmoid_hard": "HardSigmoid", "gelu": "Gelu", "elu": "Elu", "softplus": "Softplus",
    "silu": "Swish", "prelu": "PRelu", "clip": "Clip", "exp": "Exp", "sqrt": "Sqrt", "rsqrt": "Sqrt",
    "softmax": "Softmax", "max_pool": "MaxPool", "avg_pool": "AveragePool", "l2_pool": "LpPool",
    "add": "Add", "sub": "Sub", "mul": "Mul", "real_div": "Div", "multiply": "Mul",
    "maximum": "Max", "minimum": "Min", "pow": "Pow",
    "reduce_mean": "ReduceMean", "reduce_sum": "ReduceSum", "reduce_max": "ReduceMax",
    "concat": "Concat", "reshape": "Reshape", "transpose": "Transpose", "squeeze": "Squeeze",
    "expand_dims": "Unsqueeze", "slice_by_index": "Slice", "split": "Split", "pad": "Pad",
    "flatten": "Flatten", "identity": "Identity", "cast": "Cast", "gather": "Gather",
    "upsample_nearest_neighbor": "Upsample", "upsample_bilinear": "Resize", "resize_bilinear": "Resize",
    "resize_nearest_neighbor": "Upsample", "upsample": "Upsample", "depth_to_space": "DepthToSpace",
    "pixel_shuffle": "DepthToSpace", "lrn": "LRN", "local_response_norm": "LRN",
    "flattenTo2D": "Flatten", "permute": "Transpose", "reorganizeData": "DepthToSpace",
    "loadConstant": "Constant", "loadConstantND": "Constant", "const": "Constant",
}

# TFLite builtin operators (and mediapipe's custom ones) -> the ONNX op type whose formula applies.
TFLITE_OPS = {
    "CONV_2D": "Conv", "DEPTHWISE_CONV_2D": "Conv", "CONV_3D": "Conv", "TRANSPOSE_CONV": "ConvTranspose",
    "Convolution2DTransposeBias": "ConvTranspose", "FULLY_CONNECTED": "Gemm", "BATCH_MATMUL": "MatMul",
    "ADD": "Add", "ADD_N": "Sum", "SUB": "Sub", "MUL": "Mul", "DIV": "Div", "FLOOR_DIV": "Div",
    "MAXIMUM": "Max", "MINIMUM": "Min", "POW": "Pow", "SQUARE": "Mul", "SQUARED_DIFFERENCE": "Sub",
    "RELU": "Relu", "RELU6": "Clip", "RELU_N1_TO_1": "Clip", "RELU_0_TO_1": "Clip", "LOGISTIC": "Sigmoid",
    "TANH": "Tanh", "HARD_SWISH": "HardSwish", "PRELU": "PRelu", "LEAKY_RELU": "LeakyRelu", "ELU": "Elu",
    "GELU": "Gelu", "EXP": "Exp", "LOG": "Log", "SQRT": "Sqrt", "RSQRT": "Sqrt", "ABS": "Abs", "NEG": "Neg",
    "SIN": "Sin", "COS": "Cos", "FLOOR": "Floor", "CEIL": "Ceil", "ROUND": "Round", "SIGN": "Sign",
    "EQUAL": "Equal", "NOT_EQUAL": "Equal", "GREATER": "Greater", "LESS": "Less",
    "GREATER_EQUAL": "GreaterOrEqual", "LESS_EQUAL": "LessOrEqual", "LOGICAL_AND": "And",
    "LOGICAL_OR": "Or", "LOGICAL_NOT": "Not", "SELECT": "Where", "SELECT_V2": "Where",
    "DEQUANTIZE": "DequantizeLinear", "QUANTIZE": "QuantizeLinear",
    "SOFTMAX": "Softmax", "LOG_SOFTMAX": "LogSoftmax", "L2_NORMALIZATION": "LpNormalization",
    "MEAN": "ReduceMean", "SUM": "ReduceSum", "REDUCE_MAX": "ReduceMax", "REDUCE_MIN": "ReduceMin",
    "REDUCE_PROD": "ReduceProd", "ARG_MAX": "ArgMax", "ARG_MIN": "ArgMin",
    "MAX_POOL_2D": "MaxPool", "AVERAGE_POOL_2D": "AveragePool", "L2_POOL_2D": "LpPool",
    "MaxPoolingWithArgmax2D": "MaxPool", "MaxUnpooling2D": "Upsample",
    "RESIZE_BILINEAR": "Resize", "RESIZE_NEAREST_NEIGHBOR": "Upsample", "DEPTH_TO_SPACE": "DepthToSpace",
    "SPACE_TO_DEPTH": "SpaceToDepth", "RESHAPE": "Reshape", "SQUEEZE": "Squeeze", "EXPAND_DIMS": "Unsqueeze",
    "TRANSPOSE": "Transpose", "CONCATENATION": "Concat", "PACK": "Concat", "UNPACK": "Split",
    "SPLIT": "Split", "SPLIT_V": "Split", "SLICE": "Slice", "STRIDED_SLICE": "Slice", "GATHER": "Gather",
    "GATHER_ND": "GatherND", "SCATTER_ND": "ScatterND", "PAD": "Pad", "PADV2": "Pad", "MIRROR_PAD": "Pad",
    "CAST": "Cast", "TILE": "Tile", "BROADCAST_TO": "Expand", "SHAPE": "Shape", "FILL": "Expand",
    "ZEROS_LIKE": "Identity", "ONES_LIKE": "Identity", "RANGE": "Range", "ONE_HOT": "OneHot",
    "REVERSE_V2": "Identity", "TOPK_V2": "TopK", "WHILE": "Loop", "IF": "If", "CALL_ONCE": "If",
}
# The ONNX input positions in ARGUMENT_INPUTS hold for TFLite too, except the transposed conv's
# first input (the output shape): listed here by TFLite name.
TFLITE_ARGUMENT_INPUTS = {"TRANSPOSE_CONV": {0}, "FULLY_CONNECTED": set(), "CONCATENATION": set()}
CANONICAL_OP.update(TFLITE_OPS)

# Per-element operation counts of elementwise ops (approximate, for ranking).
ELEMENTWISE_FLOPS = {
    "Add": 1, "Sub": 1, "Mul": 1, "Div": 1, "Max": 1, "Min": 1, "Mean": 1, "Pow": 1, "Mod": 1,
    "Relu": 1, "LeakyRelu": 2, "PRelu": 2, "Clip": 2, "Abs": 1, "Neg": 1, "Sign": 1, "Ceil": 1,
    "Floor": 1, "Round": 1, "Reciprocal": 1, "Exp": 1, "Log": 1, "Sqrt": 1, "Erf": 1,
    "Sin": 1, "Cos": 1, "Tan": 1, "Sigmoid": 4, "Tanh": 5, "HardSigmoid": 3, "HardSwish": 4,
    "Elu": 3, "Selu": 4, "Celu": 4, "Softplus": 3, "Softsign": 3, "ThresholdedRelu": 1,
    "Gelu": 8, "Swish": 5, "Mish": 8, "BitShift": 1, "Where": 1, "Equal": 1, "Greater": 1,
    "Less": 1, "GreaterOrEqual": 1, "LessOrEqual": 1, "And": 1, "Or": 1, "Xor": 1, "Not": 1,
    "IsNaN": 1, "IsInf": 1, "activation": 1, "DequantizeLinear": 2, "QuantizeLinear": 3,
}
NORMALIZATION_FLOPS = {"BatchNormalization": 2, "InstanceNormalization": 5, "LayerNormalization": 5,
                       "GroupNormalization": 5, "LpNormalization": 3, "MeanVarianceNormalization": 5,
                       "Softmax": 5, "LogSoftmax": 5, "Hardmax": 1}
REDUCTIONS = {"GlobalAveragePool", "GlobalMaxPool", "GlobalLpPool", "ReduceMean", "ReduceSum",
              "ReduceMax", "ReduceMin", "ReduceProd", "ReduceL1", "ReduceL2", "ReduceLogSum",
              "ReduceLogSumExp", "ReduceSumSquare", "ArgMax", "ArgMin"}
DATA_MOVEMENT = {"Reshape", "Flatten", "Squeeze", "Unsqueeze", "Transpose", "Concat", "Split",
                 "Slice", "Gather", "GatherElements", "GatherND", "ScatterND", "ScatterElements",
                 "Pad", "Identity", "Dropout", "Cast", "CastLike", "Expand", "Tile",
                 "DepthToSpace", "SpaceToDepth", "Shape", "Size", "Constant", "ConstantOfShape",
                 "NonZero", "TopK", "Range", "OneHot", "EyeLike", "Compress", "ReverseSequence",
                 "Trilu", "Upsample_nearest", "SequenceConstruct", "Optional", "If", "Loop", "Scan"}
POOLING = {"MaxPool", "AveragePool", "LpPool", "MaxRoiPool", "pooling"}
UPSAMPLING = {"ConvTranspose", "Resize", "Upsample", "DepthToSpace"}
MAC_OPS = {"Conv", "ConvTranspose", "Gemm", "MatMul", "LSTM", "GRU", "RNN", "ConvInteger",
           "MatMulInteger", "QLinearConv", "QLinearMatMul"}
# Inputs that are arguments rather than weights: (op, input index).  Their constants are not parameters.
ARGUMENT_INPUTS = {"Reshape": {1}, "Resize": {1, 2, 3}, "Upsample": {1}, "Pad": {1, 2, 3},
                   "Slice": {1, 2, 3, 4}, "Clip": {1, 2}, "Expand": {1}, "Tile": {1},
                   "Squeeze": {1}, "Unsqueeze": {1}, "Split": {1}, "ReduceMean": {1},
                   "ReduceSum": {1}, "ReduceMax": {1}, "ReduceMin": {1}, "TopK": {1},
                   "Gather": {1}, "ConstantOfShape": {0}, "Range": {0, 1, 2}, "OneHot": {1, 2},
                   "ConvTranspose": set(), "CumSum": {1}, "Where": {0}}
# BatchNormalization inputs 3 and 4 are running statistics: buffers, not parameters.
BUFFER_INPUTS = {"BatchNormalization": {3, 4}}


def canonical_op(node: Node) -> str:
    op = CANONICAL_OP.get(node.op_type, node.op_type)
    if op == "activation":  # Core ML NN: the kind sits in an attribute
        kind = str(node.attributes.get("activation", ""))
        op = {"ReLU": "Relu", "sigmoid": "Sigmoid", "tanh": "Tanh", "leakyReLU": "LeakyRelu",
              "sigmoidHard": "HardSigmoid", "ELU": "Elu", "softplus": "Softplus", "PReLU": "PRelu",
              "linear": "Identity"}.get(kind, "activation")
    if op == "pooling":
        kind = str(node.attributes.get("type", "MAX")).upper()
        global_pool = bool(node.attributes.get("global", False))
        op = ("Global" if global_pool else "") + ("MaxPool" if kind == "MAX" else "AveragePool")
    return op


@dataclass(frozen=True, slots=True)
class Cost:
    macs: Optional[int]
    flops: Optional[int]

    @property
    def known(self) -> bool:
        return self.flops is not None


UNKNOWN = Cost(None, None)


def _elements(t: Optional[TensorType]) -> Optional[int]:
    return None if t is None else t.element_count


def _static_shape(t: Optional[TensorType]) -> Optional[tuple[int, ...]]:
    return t.shape if t is not None and t.is_static else None  # type: ignore[return-value]


def node_cost(node: Node, graph: Graph) -> Cost:
    type_of = graph.value_types.get
    return cost_from_types(node, canonical_op(node), [type_of(name) if name else None for name in node.inputs],
                           [type_of(name) if name else None for name in node.outputs])


def cost_from_types(node: Node, op: str, in_types: list, out_types: list) -> Cost:
    """node_cost, given the node's canonical op and the types of its inputs and outputs (None
    for an omitted one): the analysis has them already.  Reads nothing of the node but its op
    type, attributes and number of inputs: the analysis reuses the result for every node with
    the same op type, attributes and input/output types."""
    out0 = out_types[0] if out_types else None
    out_elements = _elements(out0)
    if op in MAC_OPS:
        if node.op_type in _TFLITE_MAC_OPS:
            macs = _tflite_macs(node.op_type, node, in_types, out_types)
        else:
            macs = _mac_count(op, node, in_types, out_types)
        return Cost(macs, None if macs is None else 2 * macs)
    if op in DATA_MOVEMENT:
        return Cost(0, 0)
    if op in ELEMENTWISE_FLOPS or op in NORMALIZATION_FLOPS:
        if out_elements is None:
            return UNKNOWN
        per_element = ELEMENTWISE_FLOPS.get(op) or NORMALIZATION_FLOPS[op]
        if op in ("Sum", "Mean", "Max", "Min") and len(node.inputs) > 2:
            per_element *= len(node.inputs) - 1
        return Cost(0, per_element * out_elements)
    if op == "Sum":
        if out_elements is None:
            return UNKNOWN
        return Cost(0, max(1, len(node.inputs) - 1) * out_elements)
    if op in REDUCTIONS:
        in_elements = _elements(in_types[0]) if in_types else None
        return UNKNOWN if in_elements is None else Cost(0, in_elements)
    if op in POOLING:
        kernel = node.attributes.get("kernel_shape") or node.attributes.get("kernel_sizes")
        if not kernel and "filterHeight" in node.attributes:  # TFLite Pool2DOptions
            kernel = (node.attributes["filterHeight"], node.attributes["filterWidth"])
        elif not kernel and "filter_height" in node.attributes:  # mediapipe's pooling custom ops
            kernel = (node.attributes["filter_height"], node.attributes["filter_width"])
        if out_elements is None or not kernel:
            return UNKNOWN
        return Cost(0, out_elements * prod(int(k) for k in kernel))  # type: ignore[union-attr]
    if op in ("Resize", "Upsample"):
        if out_elements is None:
            return UNKNOWN
        mode = str(node.attributes.get("mode", "linear" if node.op_type == "RESIZE_BILINEAR" else "nearest"))
        per_element = {"nearest": 0, "linear": 7, "bilinear": 7, "cubic": 31}.get(mode, 7)
        return Cost(0, per_element * out_elements)
    if op == "LRN":
        size = int(node.attributes.get("size", 5))  # type: ignore[arg-type]
        return UNKNOWN if out_elements is None else Cost(0, (size + 4) * out_elements)
    return UNKNOWN


def _mac_count(op: str, node: Node, in_types, out_types) -> Optional[int]:
    out = _static_shape(out_types[0]) if out_types else None
    weight_index = 3 if op == "QLinearConv" else 1
    weight = _static_shape(in_types[weight_index]) if len(in_types) > weight_index else None
    if op in ("Conv", "ConvInteger", "QLinearConv"):
        if out is None or weight is None or not weight or weight[0] == 0:
            return None
        return prod(out) * prod(weight) // weight[0]
    if op == "ConvTranspose":
        data = _static_shape(in_types[0]) if in_types else None
        if data is None or weight is None or not weight or weight[0] == 0:
            return None
        return prod(data) * prod(weight) // weight[0]
    if op in ("Gemm", "MatMul", "MatMulInteger", "QLinearMatMul"):
        a = _static_shape(in_types[0]) if in_types else None
        if out is None:
            return None
        if a is not None and len(a) >= 1:
            if op == "Gemm" and node.attributes.get("transA") and len(a) == 2:
                k = a[0]
            else:
                k = a[-1]
            return prod(out) * k
        if weight is not None and len(weight) == 2 and out:  # Core ML linear: weight [Cout, Cin]
            return prod(out) * weight[1]
        return None
    if op in ("LSTM", "GRU", "RNN"):
        x = _static_shape(in_types[0]) if in_types else None
        hidden = node.attributes.get("hidden_size")
        if x is None or len(x) != 3 or not hidden:
            return None
        seq, batch, features = x
        directions = 2 if node.attributes.get("direction") == "bidirectional" else 1
        gates = {"LSTM": 4, "GRU": 3, "RNN": 1}[op]
        hidden = int(hidden)  # type: ignore[arg-type]
        return seq * batch * directions * gates * hidden * (features + hidden)
    return None


_TFLITE_MAC_OPS = {"DEPTHWISE_CONV_2D", "TRANSPOSE_CONV", "Convolution2DTransposeBias", "FULLY_CONNECTED",
                   "BATCH_MATMUL", "CONV_3D"}


def _tflite_macs(op_type: str, node: Node, in_types, out_types) -> Optional[int]:
    """MACs of TFLite ops whose weight layout differs from ONNX's (CONV_2D's [Cout,KH,KW,Cin]
    fits the ONNX formula: outputs x KH*KW*Cin)."""
    def shape(i: int) -> Optional[tuple[int, ...]]:
        return _static_shape(in_types[i]) if len(in_types) > i else None

    out = _static_shape(out_types[0]) if out_types else None
    if out is None:
        return None
    if op_type == "DEPTHWISE_CONV_2D":  # weights [1, KH, KW, C*multiplier]: KH*KW per output
        weight = shape(1)
        return None if weight is None or len(weight) != 4 else prod(out) * weight[1] * weight[2]
    if op_type in ("TRANSPOSE_CONV", "Convolution2DTransposeBias"):
        # inputs: (output_shape, weights [Cout,KH,KW,Cin], input) or mediapipe's (input, weights, bias);
        # every input element meets KH*KW*Cout weights
        data, weight = (shape(2), shape(1)) if op_type == "TRANSPOSE_CONV" else (shape(0), shape(1))
        if data is None or weight is None or len(weight) != 4:
            return None
        return prod(data) * weight[0] * weight[1] * weight[2]
    if op_type == "FULLY_CONNECTED":  # weights [units, K]; the input is flattened to [-1, K]
        weight = shape(1)
        return None if weight is None or len(weight) != 2 else prod(out) * weight[1]
    if op_type == "BATCH_MATMUL":
        a = shape(0)
        if a is None or len(a) < 2:
            return None
        return prod(out) * (a[-2] if node.attributes.get("adjX") else a[-1])
    if op_type == "CONV_3D":  # weights [KD, KH, KW, Cin, Cout]
        weight = shape(1)
        return None if weight is None or len(weight) != 5 else prod(out) * prod(weight[:4])
    return None


def is_upsampling(node: Node, graph: Graph) -> bool:
    """True for ops that raise spatial resolution (ConvTranspose with stride > 1, Resize up, ...)."""
    op = canonical_op(node)
    if op not in UPSAMPLING:
        return False
    inputs = [n for n in node.inputs if n]
    if not inputs or not node.outputs:
        return True
    data = inputs[0]
    if node.op_type == "TRANSPOSE_CONV" and len(node.inputs) > 2:
        data = node.inputs[2]  # its first input is the output shape
    before = spatial_size(graph.value_type(data), graph.channels_last)
    after = spatial_size(graph.value_type(node.outputs[0]), graph.channels_last)
    if before is None or after is None:
        return True  # the op type alone says so
    return after > before


def spatial_size(t: Optional[TensorType], channels_last: bool = False) -> Optional[int]:
    """H x W (x D) of an N,C,spatial... tensor (N,spatial...,C when channels_last); None when not a
    static rank-4/5 tensor."""
    shape = _static_shape(t)
    if shape is None or len(shape) not in (4, 5):
        return None
    return prod(shape[1:-1]) if channels_last else prod(shape[2:])


def kernel_is_pointwise(node: Node, graph: Graph) -> bool:
    kernel = node.attributes.get("kernel_shape")
    if kernel:
        return all(int(k) == 1 for k in kernel)  # type: ignore[union-attr]
    if len(node.inputs) > 1:
        weight = _static_shape(graph.value_type(node.inputs[1]))
        if weight is not None and len(weight) >= 3:
            # ONNX [Cout, Cin, KH, KW]; TFLite [Cout, KH, KW, Cin]
            return all(k == 1 for k in (weight[1:-1] if graph.channels_last else weight[2:]))
    return False


def argument_inputs(op: str, node: Optional[Node] = None) -> set[int]:
    if node is not None and node.op_type in TFLITE_ARGUMENT_INPUTS:
        return TFLITE_ARGUMENT_INPUTS[node.op_type]
    return ARGUMENT_INPUTS.get(op, set())


def buffer_inputs(op: str, node: Optional[Node] = None) -> set[int]:
    """Input positions holding non-trainable statistics.  Core ML ops name their inputs
    (MIL batch_norm is x, mean, variance, gamma, beta), so names win over ONNX positions."""
    names = node.attributes.get("input_names") if node is not None else None
    if op == "BatchNormalization" and isinstance(names, (list, tuple)):
        return {i for i, name in enumerate(names) if name in ("mean", "variance")}
    return BUFFER_INPUTS.get(op, set())


def data_movement(op: str) -> bool:
    return op in DATA_MOVEMENT


CostFunction = Callable[[Node, Graph], Cost]
__all__: Sequence[str] = ("CONVENTIONS", "Cost", "node_cost", "canonical_op", "is_upsampling",
                          "spatial_size", "kernel_is_pointwise")
