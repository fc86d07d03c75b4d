"""Sample models that LayerScope builds itself, so that the app has something to
open and the tests have a model whose structure is known exactly.

`mobileunet` is the typical phone segmentation net from the field: a
MobileNet-v1 depthwise-separable encoder and a U-Net decoder of
`ConvTranspose` upsamplings with skip concatenations.  Its decoder is the part
whose speed differs most between phone processors, which is what the profiler
is for.  Weights are random (He init, seeded): untrained weights cost the same
time as trained ones, and a file we generate needs no download and no licence.

Node and tensor names follow a PyTorch export (`/encoder/block3/dw/Conv`,
`/encoder/block3/dw/Conv_output_0`, initializer `encoder.block3.dw.weight`),
so the sample exercises the same namespace handling as real exported models.
By default the BatchNormalization nodes are kept, as a trained-but-unfolded
export has them; `fold_batchnorm=True` folds them into the convolutions, which
computes the same function (the "fold BatchNorm" graph trick, measurable).

Pure python + onnx + numpy: never import Qt here.
"""
from __future__ import annotations

from collections import defaultdict
from pathlib import Path
from typing import Callable, Union

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from engine.sample_files import DEFAULT_SAMPLE_FILE, DEFAULT_SAMPLE_PARAMS, default_sample_path

__all__ = ["mobileunet", "write_sample", "SAMPLES", "DEFAULT_SAMPLE_FILE", "default_sample_path"]

OPSET = 17
IR_VERSION = 8
PRODUCER_NAME = "layerscope-samples"
PRODUCER_VERSION = "1"
BN_EPSILON = 1e-5

# The whole network downsamples five times by 2, so each side must divide by 32.
SIZE_DIVISOR = 32

# Encoder after the stem (32 ch, stride 2, 1/2 resolution): MobileNet-v1 blocks
# as (base output channels, stride).  MobileNet-v1 repeats the 512-wide block
# five times and ends with two 1024 blocks; two 512 blocks and one 1024 block
# keep the alpha=0.5, 160x160 sample at about 3 MB while every resolution step
# of the original is still there.
_STEM_CHANNELS = 32
_ENCODER_BLOCKS: tuple[tuple[int, int], ...] = (
    (64, 1),    # block1  1/2   -> skip for decoder block4
    (128, 2),   # block2  1/4
    (128, 1),   # block3  1/4   -> skip for decoder block3
    (256, 2),   # block4  1/8
    (256, 1),   # block5  1/8   -> skip for decoder block2
    (512, 2),   # block6  1/16
    (512, 1),   # block7  1/16  -> skip for decoder block1
    (1024, 2),  # block8  1/32  (bottleneck)
)
# Decoder steps as (base output channels, ConvTranspose kernel).  Every step
# upsamples by 2.  The first step starts from the widest tensor (1024*alpha
# channels), where a 4x4 kernel would hold a quarter of all weights, so it uses
# a 2x2 kernel; the others use 4x4 (padding 1), the common U-Net choice.  Having
# both kernels in one model is also useful: phone GPUs differ on both.
_DECODER_STEPS: tuple[tuple[int, int], ...] = (
    (256, 2),  # up1 1/32 -> 1/16, concat encoder block7
    (128, 4),  # up2 1/16 -> 1/8,  concat encoder block5
    (64, 4),   # up3 1/8  -> 1/4,  concat encoder block3
    (32, 4),   # up4 1/4  -> 1/2,  concat encoder block1
    (16, 4),   # up5 1/2  -> 1/1,  no encoder feature at full resolution: no concat
)
# Encoder block (1-based) whose output is concatenated after decoder step i.
_SKIP_BLOCKS = (7, 5, 3, 1, None)


def make_divisible(value: float, divisor: int = 8, min_value: int | None = None) -> int:
    """Round a channel count to a multiple of `divisor` (at least `min_value`),
    never more than 10% below `value` -- MobileNet's `_make_divisible`."""
    min_value = divisor if min_value is None else min_value
    rounded = max(min_value, int(value + divisor / 2) // divisor * divisor)
    if rounded < 0.9 * value:
        rounded += divisor
    return rounded


def _parse_size(size) -> tuple[int, int]:
    """(H, W) from an int (square) or a pair; each side positive and divisible by 32."""
    if isinstance(size, (int, np.integer)) and not isinstance(size, bool):
        height = width = int(size)
    elif (isinstance(size, (tuple, list)) and len(size) == 2
          and all(isinstance(s, (int, np.integer)) and not isinstance(s, bool) for s in size)):
        height, width = int(size[0]), int(size[1])
    else:
        raise ValueError(f"size must be an int (square input) or a pair (height, width) of ints, "
                         f"got {size!r}")
    for side_name, side in (("height", height), ("width", width)):
        if side <= 0 or side % SIZE_DIVISOR:
            lower = max(SIZE_DIVISOR, side // SIZE_DIVISOR * SIZE_DIVISOR)
            raise ValueError(
                f"MobileUNet input {side_name} must be a positive multiple of {SIZE_DIVISOR} "
                f"(the encoder halves the resolution 5 times), got {side}; "
                f"use e.g. {lower} or {lower + SIZE_DIVISOR}")
    return height, width


class _GraphBuilder:
    """Collects nodes and initializers with PyTorch-export names.

    A module path such as "encoder/block3/dw" gives node "/encoder/block3/dw/Conv",
    output tensor "/encoder/block3/dw/Conv_output_0" and weights
    "encoder.block3.dw.weight".  Ops called directly in a module's forward (Concat
    in the decoder) get a per-scope counter like PyTorch: "/decoder/Concat",
    "/decoder/Concat_1", ...
    """

    def __init__(self, seed: int, fold_batchnorm: bool):
        self.rng = np.random.default_rng(seed)
        self.fold_batchnorm = fold_batchnorm
        self.nodes: list[onnx.NodeProto] = []
        self.initializers: list[onnx.TensorProto] = []
        self._op_counts: dict[tuple[str, str], int] = defaultdict(int)
        # Relu6 bounds, shared by every Clip (opset >= 11 takes them as inputs).
        self.clip_min = self._add_initializer("relu6.min", np.array(0.0, dtype=np.float32))
        self.clip_max = self._add_initializer("relu6.max", np.array(6.0, dtype=np.float32))

    def _add_initializer(self, name: str, array: np.ndarray) -> str:
        # from_array stores the bytes as raw_data.
        self.initializers.append(numpy_helper.from_array(np.ascontiguousarray(array, np.float32), name))
        return name

    def _node(self, scope: str, op_type: str, inputs: list[str], **attributes) -> str:
        """Add one node under `scope` ("" for the graph root) and return its output name."""
        key = (scope, op_type)
        index = self._op_counts[key]
        self._op_counts[key] += 1
        suffix = op_type if index == 0 else f"{op_type}_{index}"
        name = f"/{scope}/{suffix}" if scope else f"/{suffix}"
        output = f"{name}_output_0"
        self.nodes.append(helper.make_node(op_type, inputs, [output], name=name, **attributes))
        return output

    @staticmethod
    def _weight_prefix(module: str) -> str:
        return module.replace("/", ".")

    def _he_normal(self, shape: tuple[int, ...], fan_in: float) -> np.ndarray:
        return self.rng.standard_normal(shape) * np.sqrt(2.0 / fan_in)

    def _bn_parameters(self, channels: int) -> dict[str, np.ndarray]:
        """Plausible trained statistics: gamma near 1, small beta and mean, var > 0."""
        return {
            "weight": 1.0 + 0.1 * self.rng.standard_normal(channels),
            "bias": 0.1 * self.rng.standard_normal(channels),
            "running_mean": 0.1 * self.rng.standard_normal(channels),
            "running_var": self.rng.uniform(0.5, 1.5, channels),
        }

    def relu6(self, module: str, x: str) -> str:
        return self._node(module, "Clip", [x, self.clip_min, self.clip_max])

    def conv_bn_relu6(self, parent: str, conv_name: str, bn_name: str, act_name: str, x: str,
                      in_channels: int, out_channels: int, kernel: int, stride: int,
                      group: int = 1) -> str:
        """Conv (no bias, as before a BatchNorm in PyTorch) -> BatchNormalization -> Clip(0, 6).

        With fold_batchnorm the BatchNorm disappears into the conv:
        w' = w * gamma / sqrt(var + eps),  b' = (0 - mean) * gamma / sqrt(var + eps) + beta.
        The random numbers are drawn in the same order either way, so the same seed
        gives the same function folded or not.
        """
        conv_module = f"{parent}/{conv_name}"
        bn_module = f"{parent}/{bn_name}"
        weight = self._he_normal((out_channels, in_channels // group, kernel, kernel),
                                 fan_in=in_channels // group * kernel * kernel)
        bn = self._bn_parameters(out_channels)
        conv_attributes = dict(kernel_shape=[kernel, kernel], strides=[stride, stride],
                               pads=[kernel // 2] * 4, dilations=[1, 1], group=group)
        conv_prefix = self._weight_prefix(conv_module)
        if self.fold_batchnorm:
            scale = bn["weight"] / np.sqrt(bn["running_var"] + BN_EPSILON)
            folded_weight = weight * scale[:, None, None, None]
            folded_bias = (0.0 - bn["running_mean"]) * scale + bn["bias"]
            inputs = [x, self._add_initializer(f"{conv_prefix}.weight", folded_weight),
                      self._add_initializer(f"{conv_prefix}.bias", folded_bias)]
            y = self._node(conv_module, "Conv", inputs, **conv_attributes)
        else:
            inputs = [x, self._add_initializer(f"{conv_prefix}.weight", weight)]
            y = self._node(conv_module, "Conv", inputs, **conv_attributes)
            bn_prefix = self._weight_prefix(bn_module)
            bn_inputs = [y] + [self._add_initializer(f"{bn_prefix}.{key}", bn[key])
                               for key in ("weight", "bias", "running_mean", "running_var")]
            y = self._node(bn_module, "BatchNormalization", bn_inputs, epsilon=BN_EPSILON)
        return self.relu6(f"{parent}/{act_name}", y)

    def depthwise_separable(self, module: str, x: str, in_channels: int, out_channels: int,
                            stride: int) -> str:
        """MobileNet-v1 block: 3x3 depthwise (group = channels) and 1x1 pointwise, each BN + Relu6."""
        y = self.conv_bn_relu6(module, "dw", "dw_bn", "dw_act", x, in_channels, in_channels,
                               kernel=3, stride=stride, group=in_channels)
        return self.conv_bn_relu6(module, "pw", "pw_bn", "pw_act", y, in_channels, out_channels,
                                  kernel=1, stride=1)

    def conv_transpose(self, module: str, x: str, in_channels: int, out_channels: int,
                       kernel: int) -> str:
        """Stride-2 ConvTranspose with bias that exactly doubles H and W (kernel 2 or 4)."""
        padding = (kernel - 2) // 2
        # Each output pixel sees in_channels * (kernel / stride)^2 inputs.
        weight = self._he_normal((in_channels, out_channels, kernel, kernel),
                                 fan_in=in_channels * kernel * kernel / 4)
        bias = 0.01 * self.rng.standard_normal(out_channels)
        prefix = self._weight_prefix(module)
        inputs = [x, self._add_initializer(f"{prefix}.weight", weight),
                  self._add_initializer(f"{prefix}.bias", bias)]
        return self._node(module, "ConvTranspose", inputs, kernel_shape=[kernel, kernel],
                          strides=[2, 2], pads=[padding] * 4, dilations=[1, 1], group=1)

    def conv_with_bias(self, module: str, x: str, in_channels: int, out_channels: int) -> str:
        """1x1 conv with bias (the head: no BatchNorm follows it)."""
        weight = self._he_normal((out_channels, in_channels, 1, 1), fan_in=in_channels)
        bias = 0.01 * self.rng.standard_normal(out_channels)
        prefix = self._weight_prefix(module)
        inputs = [x, self._add_initializer(f"{prefix}.weight", weight),
                  self._add_initializer(f"{prefix}.bias", bias)]
        return self._node(module, "Conv", inputs, kernel_shape=[1, 1], strides=[1, 1],
                          pads=[0, 0, 0, 0], dilations=[1, 1], group=1)

    def op(self, scope: str, op_type: str, inputs: list[str], **attributes) -> str:
        return self._node(scope, op_type, inputs, **attributes)


def mobileunet(alpha: float = 1.0, size=224, num_classes: int = 1, seed: int = 0,
               fold_batchnorm: bool = False) -> onnx.ModelProto:
    """Build a MobileUNet segmentation model with random He-initialized weights.

    alpha: width multiplier; every layer has make_divisible(base * alpha, 8) channels.
    size: input side (int, square) or (height, width); each a multiple of 32.
    num_classes: channels of the output mask (Sigmoid per channel).
    seed: seed of the weights; the same parameters always give the same file.
    fold_batchnorm: fold every BatchNormalization into the conv before it.

    Input "image" float32 [1, 3, H, W]; output "mask" float32 [1, num_classes, H, W].
    """
    if isinstance(alpha, bool) or not isinstance(alpha, (int, float, np.floating, np.integer)) \
            or not np.isfinite(alpha) or alpha <= 0:
        raise ValueError(f"alpha (width multiplier) must be a positive number, got {alpha!r}")
    if isinstance(num_classes, bool) or not isinstance(num_classes, (int, np.integer)) or num_classes < 1:
        raise ValueError(f"num_classes must be a positive int, got {num_classes!r}")
    height, width = _parse_size(size)
    alpha = float(alpha)

    def channels(base: int) -> int:
        return make_divisible(base * alpha, 8)

    g = _GraphBuilder(seed=int(seed), fold_batchnorm=bool(fold_batchnorm))

    # Encoder: stem 3x3/2 conv, then depthwise-separable blocks down to 1/32.
    x = "image"
    in_channels = channels(_STEM_CHANNELS)
    x = g.conv_bn_relu6("encoder/stem", "conv", "bn", "act", x, 3, in_channels, kernel=3, stride=2)
    block_outputs: dict[int, tuple[str, int]] = {}
    for index, (base, stride) in enumerate(_ENCODER_BLOCKS, start=1):
        out_channels = channels(base)
        x = g.depthwise_separable(f"encoder/block{index}", x, in_channels, out_channels, stride)
        block_outputs[index] = (x, out_channels)
        in_channels = out_channels

    # Decoder: upsample by 2, concatenate the encoder feature of that resolution,
    # mix with a depthwise-separable block.
    for index, ((base, kernel), skip_block) in enumerate(zip(_DECODER_STEPS, _SKIP_BLOCKS), start=1):
        out_channels = channels(base)
        x = g.conv_transpose(f"decoder/up{index}", x, in_channels, out_channels, kernel)
        block_in = out_channels
        if skip_block is not None:
            skip, skip_channels = block_outputs[skip_block]
            x = g.op("decoder", "Concat", [x, skip], axis=1)
            block_in += skip_channels
        x = g.depthwise_separable(f"decoder/block{index}", x, block_in, out_channels, stride=1)
        in_channels = out_channels

    # Head: per-pixel class logits and probabilities.
    x = g.conv_with_bias("head/conv", x, in_channels, num_classes)
    x = g.op("head", "Sigmoid", [x])
    # Name the graph output "mask" by renaming the last node's output.
    g.nodes[-1].output[0] = "mask"

    size_text = f"{height}x{width}"
    graph = helper.make_graph(
        g.nodes, "MobileUNet",
        inputs=[helper.make_tensor_value_info("image", TensorProto.FLOAT, [1, 3, height, width])],
        outputs=[helper.make_tensor_value_info("mask", TensorProto.FLOAT, [1, num_classes, height, width])],
        initializer=g.initializers,
    )
    model = helper.make_model(
        graph,
        opset_imports=[helper.make_opsetid("", OPSET)],
        ir_version=IR_VERSION,
        producer_name=PRODUCER_NAME,
        producer_version=PRODUCER_VERSION,
        doc_string=(
            f"MobileUNet sample built by LayerScope: MobileNet-v1 depthwise-separable encoder "
            f"(width multiplier alpha={alpha:g}) and ConvTranspose U-Net decoder, input "
            f"{size_text} (HxW), {num_classes} output class(es), BatchNorm "
            f"{'folded into the convolutions' if fold_batchnorm else 'kept as separate nodes'}. "
            f"Weights are random (He init, seed {int(seed)}): for performance work, not trained."),
    )
    helper.set_model_props(model, {
        "layerscope.sample": "mobileunet",
        "alpha": f"{alpha:g}",
        "size": size_text,
        "num_classes": str(int(num_classes)),
        "seed": str(int(seed)),
        "fold_batchnorm": str(bool(fold_batchnorm)).lower(),
    })
    # Record intermediate shapes (value_info) as torch.onnx.export does; strict so
    # a construction mistake fails here rather than in a viewer.
    return onnx.shape_inference.infer_shapes(model, check_type=True, strict_mode=True)


SAMPLES: dict[str, Callable[..., onnx.ModelProto]] = {"mobileunet": mobileunet}

def write_sample(name: str, path: Union[str, Path], **params) -> Path:
    """Build sample `name` with `params` and save it to `path` (parents are created)."""
    try:
        build = SAMPLES[name]
    except KeyError:
        raise ValueError(f"unknown sample model {name!r}; known samples: {', '.join(sorted(SAMPLES))}") from None
    model = build(**params)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save_model(model, str(path))
    return path
