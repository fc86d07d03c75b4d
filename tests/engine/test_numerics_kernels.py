"""The fp16-compute Conv / ConvTranspose kernels against onnx's reference evaluator and ONNX Runtime."""
from __future__ import annotations

import numpy as np
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper
from onnx.reference import ReferenceEvaluator

from engine.numerics_kernels import FP16_KERNELS


def _model(node, feeds, elem):
    graph = helper.make_graph([node], "one", [helper.make_tensor_value_info(n, elem, v.shape) for n, v in feeds.items()],
                              [helper.make_tensor_value_info("Y", elem, None)])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model


def _outputs(node, feeds):
    half = _model(node, feeds, TensorProto.FLOAT16)
    ours = ReferenceEvaluator(half, new_ops=FP16_KERNELS).run(None, feeds)[0]
    single = {k: v.astype(np.float32) for k, v in feeds.items()}
    runtime = ort.InferenceSession(_model(node, single, TensorProto.FLOAT).SerializeToString(),
                                   providers=["CPUExecutionProvider"]).run(None, single)[0]
    return ours, runtime, half


CASES = [  # (op, input channels, output channels per group, group, kernel, stride, pad, output padding)
    ("ConvTranspose", 8, 4, 1, 4, 2, 1, 0), ("ConvTranspose", 8, 1, 8, 3, 2, 1, 1),
    ("ConvTranspose", 6, 4, 2, 2, 2, 0, 0), ("ConvTranspose", 4, 4, 1, 3, 1, 1, 0),
    ("Conv", 16, 8, 1, 3, 1, 1, 0), ("Conv", 16, 4, 4, 3, 2, 1, 0), ("Conv", 8, 8, 8, 3, 1, 1, 0),
]


@pytest.mark.parametrize("op, channels, outputs, group, kernel, stride, pad, extra", CASES)
def test_fp16_kernels_agree_with_onnx_runtime_within_fp16_rounding(op, channels, outputs, group, kernel, stride,
                                                                   pad, extra):
    rng = np.random.default_rng(len(op) + channels + group)
    x = rng.standard_normal((1, channels, 7, 9)).astype(np.float16)
    if op == "Conv":
        w = rng.standard_normal((outputs * group if group > 1 else outputs, channels // group, kernel, kernel))
        bias = rng.standard_normal(w.shape[0])
        node = helper.make_node(op, ["X", "W", "B"], ["Y"], group=group, strides=[stride] * 2, pads=[pad] * 4)
    else:
        w = rng.standard_normal((channels, outputs, kernel, kernel))
        bias = rng.standard_normal(outputs * group)
        node = helper.make_node(op, ["X", "W", "B"], ["Y"], group=group, strides=[stride] * 2, pads=[pad] * 4,
                                output_padding=[extra] * 2)
    feeds = {"X": x, "W": w.astype(np.float16), "B": bias.astype(np.float16)}
    ours, runtime, half = _outputs(node, feeds)
    assert ours.dtype == np.float16 and ours.shape == runtime.shape
    scale = np.abs(runtime).max()
    # A few fp16 units of the output's range: products rounded once, sums of overlaps in fp16.
    assert np.abs(ours.astype(np.float32) - runtime).max() <= 4 * 2 ** -11 * scale
    if group == 1:  # where onnx's reference is right, it matches ours up to the order of the sums
        reference = ReferenceEvaluator(half).run(None, feeds)[0]
        assert np.abs(ours.astype(np.float32) - reference.astype(np.float32)).max() <= 2 * 2 ** -11 * scale
