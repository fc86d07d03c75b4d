"""The MIL reference evaluator, op by op, against computations that share nothing with it.

Ops written from the MIL spec (conv, conv_transpose, pooling, batch_norm, LRN, resizing)
are compared with ONNX Runtime running the ONNX op of the same meaning (the ONNX model is
written here by hand from the ONNX spec, not produced by our converter), and the sampling
grids with the examples printed in the MIL docstrings.  Ops evaluated through coremltools'
value_inference are compared with plain numpy.
"""
from __future__ import annotations

import logging

import numpy as np
import onnx
import onnxruntime
import pytest
from onnx import TensorProto, helper

from engine.convert import mil_reference
from engine.convert.builder import load_coremltools
from engine.convert.mil_reference import UnsupportedOp, evaluate

ct = load_coremltools()
from coremltools.converters.mil import Builder as mb  # noqa: E402

RNG = np.random.default_rng(7)
logging.getLogger("coremltools").setLevel(logging.ERROR)


def run_mil(build, x: np.ndarray, dtype=np.float32, target=None) -> np.ndarray:
    """A one-op MIL program with input x, evaluated; its single output."""
    @mb.program(input_specs=[mb.TensorSpec(shape=x.shape)], opset_version=target or ct.target.iOS16)
    def program(x_in):
        if dtype == np.float16:
            x_in = mb.cast(x=x_in, dtype="fp16")
        return build(x_in)

    values = evaluate(program, {"x_in": x})
    (name,) = mil_reference.output_names(program)
    return values[name]


def run_onnx(op_type: str, x: np.ndarray, inits: dict, out_rank: int, opset: int = 17, **attrs) -> np.ndarray:
    names = ["x"] + [name if value is not None else "" for name, value in inits.items()]  # None: an empty input
    inits = {name: value for name, value in inits.items() if value is not None}
    node = helper.make_node(op_type, names, ["y"], **attrs)
    graph = helper.make_graph([node], "one", [helper.make_tensor_value_info("x", TensorProto.FLOAT, list(x.shape))],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [None] * out_rank)],
                              [onnx.numpy_helper.from_array(v, k) for k, v in inits.items()])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 8
    session = onnxruntime.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return session.run(None, {"x": x})[0]


def close(actual, expected, tolerance=2e-5):
    actual, expected = np.asarray(actual, np.float64), np.asarray(expected, np.float64)
    assert actual.shape == expected.shape
    scale = max(1.0, float(np.abs(expected).max()))
    assert float(np.abs(actual - expected).max()) <= tolerance * scale


def onnx_pads(mil_pad):
    """MIL [b0, e0, b1, e1] -> ONNX [b0, b1, e0, e1] (each spec's own convention)."""
    return list(mil_pad[0::2]) + list(mil_pad[1::2])


@pytest.mark.parametrize("groups, strides, dilations, pad", [
    (1, [1, 1], [1, 1], [1, 1, 1, 1]),
    (2, [2, 2], [1, 1], [0, 1, 1, 0]),       # asymmetric: which side gets the pad matters
    (1, [2, 1], [2, 2], [2, 0, 1, 3]),
    (4, [1, 1], [1, 1], [1, 1, 1, 1]),       # depthwise
])
def test_conv_matches_onnx_runtime(groups, strides, dilations, pad):
    x = RNG.standard_normal((2, 4, 9, 10)).astype(np.float32)
    w = RNG.standard_normal((8, 4 // groups, 3, 3)).astype(np.float32)
    b = RNG.standard_normal(8).astype(np.float32)
    actual = run_mil(lambda v: mb.conv(x=v, weight=w, bias=b, strides=strides, dilations=dilations, groups=groups,
                                       pad_type="custom", pad=pad), x)
    expected = run_onnx("Conv", x, {"w": w, "b": b}, 4, strides=strides, dilations=dilations, group=groups,
                        pads=onnx_pads(pad))
    close(actual, expected)


@pytest.mark.parametrize("mil_type, onnx_auto_pad", [("same", "SAME_UPPER"), ("same_lower", "SAME_LOWER"),
                                                     ("valid", "VALID")])
def test_conv_pad_types(mil_type, onnx_auto_pad):
    x = RNG.standard_normal((1, 2, 8, 7)).astype(np.float32)
    w = RNG.standard_normal((3, 2, 4, 3)).astype(np.float32)
    actual = run_mil(lambda v: mb.conv(x=v, weight=w, strides=[2, 2], pad_type=mil_type), x)
    close(actual, run_onnx("Conv", x, {"w": w}, 4, strides=[2, 2], auto_pad=onnx_auto_pad))


def test_conv_1d_and_fp16():
    x = RNG.standard_normal((1, 3, 20)).astype(np.float32)
    w = RNG.standard_normal((5, 3, 4)).astype(np.float32)
    expected = run_onnx("Conv", x, {"w": w}, 3, pads=[1, 2])
    close(run_mil(lambda v: mb.conv(x=v, weight=w, pad_type="custom", pad=[1, 2]), x), expected)
    half = run_mil(lambda v: mb.conv(x=v, weight=w.astype(np.float16), pad_type="custom", pad=[1, 2]), x,
                   dtype=np.float16)
    assert half.dtype == np.float16  # results are stored in the op's dtype
    close(half, expected, tolerance=5e-3)


@pytest.mark.parametrize("groups, strides, dilations, pad", [
    (1, [2, 2], [1, 1], [1, 1, 1, 1]),
    (2, [2, 3], [1, 1], [0, 1, 2, 0]),
    (1, [1, 1], [2, 2], [0, 0, 0, 0]),
])
def test_conv_transpose_matches_onnx_runtime(groups, strides, dilations, pad):
    x = RNG.standard_normal((1, 4, 5, 6)).astype(np.float32)
    w = RNG.standard_normal((4, 6 // groups, 3, 4)).astype(np.float32)
    b = RNG.standard_normal(6).astype(np.float32)
    actual = run_mil(lambda v: mb.conv_transpose(x=v, weight=w, bias=b, strides=strides, dilations=dilations,
                                                 groups=groups, pad_type="custom", pad=pad), x)
    expected = run_onnx("ConvTranspose", x, {"w": w, "b": b}, 4, strides=strides, dilations=dilations,
                        group=groups, pads=onnx_pads(pad))
    close(actual, expected)


@pytest.mark.parametrize("pad, ceil_mode", [([0, 0, 0, 0], False), ([1, 1, 0, 0], False), ([1, 1, 1, 1], True),
                                            ([0, 0, 0, 0], True), ([0, 1, 1, 0], False)])
def test_max_pool_matches_onnx_runtime(pad, ceil_mode):
    x = RNG.standard_normal((1, 3, 9, 8)).astype(np.float32)
    actual = run_mil(lambda v: mb.max_pool(x=v, kernel_sizes=[3, 2], strides=[2, 2], pad_type="custom", pad=pad,
                                           ceil_mode=ceil_mode), x)
    close(actual, run_onnx("MaxPool", x, {}, 4, kernel_shape=[3, 2], strides=[2, 2], pads=onnx_pads(pad),
                           ceil_mode=int(ceil_mode)))


@pytest.mark.parametrize("pad, ceil_mode, exclude", [([1, 1, 1, 1], False, True), ([1, 1, 1, 1], False, False),
                                                     ([1, 1, 1, 1], True, False), ([1, 1, 0, 0], True, True),
                                                     ([0, 0, 0, 0], True, False)])
def test_avg_pool_matches_onnx_runtime(pad, ceil_mode, exclude):
    x = RNG.standard_normal((1, 2, 8, 9)).astype(np.float32)
    actual = run_mil(lambda v: mb.avg_pool(x=v, kernel_sizes=[3, 3], strides=[2, 2], pad_type="custom", pad=pad,
                                           ceil_mode=ceil_mode, exclude_padding_from_average=exclude), x)
    close(actual, run_onnx("AveragePool", x, {}, 4, kernel_shape=[3, 3], strides=[2, 2], pads=onnx_pads(pad),
                           ceil_mode=int(ceil_mode), count_include_pad=int(not exclude)))


def test_batch_norm_matches_onnx_runtime():
    x = RNG.standard_normal((2, 5, 4, 3)).astype(np.float32)
    gamma, beta, mean = (RNG.standard_normal(5).astype(np.float32) for _ in range(3))
    variance = RNG.random(5).astype(np.float32) * 0.01
    actual = run_mil(lambda v: mb.batch_norm(x=v, mean=mean, variance=variance, gamma=gamma, beta=beta,
                                             epsilon=np.float32(3e-3)), x)
    close(actual, run_onnx("BatchNormalization", x, {"g": gamma, "b": beta, "m": mean, "v": variance}, 4,
                           epsilon=3e-3))


def test_local_response_norm_matches_onnx_runtime():
    x = RNG.standard_normal((1, 7, 4, 4)).astype(np.float32)
    actual = run_mil(lambda v: mb.local_response_norm(x=v, size=5, alpha=np.float32(0.3), beta=np.float32(0.6),
                                                      k=np.float32(1.5)), x)
    close(actual, run_onnx("LRN", x, {}, 4, size=5, alpha=0.3, beta=0.6, bias=1.5))
    with pytest.raises(mil_reference.EvaluationError, match="even size"):
        run_mil(lambda v: mb.local_response_norm(x=v, size=4), x)


def test_upsample_nearest_neighbor_matches_onnx_runtime():
    x = RNG.standard_normal((1, 2, 3, 4)).astype(np.float32)
    actual = run_mil(lambda v: mb.upsample_nearest_neighbor(x=v, scale_factor_height=2, scale_factor_width=3), x)
    scales = np.array([1, 1, 2, 3], np.float32)
    close(actual, run_onnx("Resize", x, {"roi": None, "s": scales}, 4, mode="nearest",
                           coordinate_transformation_mode="asymmetric", nearest_mode="floor"))


def test_sampling_grids_reproduce_the_docstring_examples():
    """The grid points printed in resize_bilinear's and upsample_bilinear's docstrings (Xin = 2)."""
    grid = mil_reference._grid
    np.testing.assert_allclose(grid("UNALIGN_CORNERS", 2, 5), [0., 0.1, 0.5, 0.9, 1.], atol=1e-9)
    np.testing.assert_allclose(grid("STRICT_ALIGN_CORNERS", 2, 5), [0., 0.25, 0.5, 0.75, 1.])
    np.testing.assert_allclose(grid("DEFAULT", 2, 5), [0., 0.4, 0.8, 1., 1.])
    np.testing.assert_allclose(grid("OFFSET_CORNERS", 2, 5), [0.1, 0.3, 0.5, 0.7, 0.9])
    np.testing.assert_allclose(grid("UNALIGN_CORNERS", 2, 6), [0., 0., 1 / 3, 2 / 3, 1., 1.], atol=1e-9)
    np.testing.assert_allclose(grid("DEFAULT", 2, 6), [0., 1 / 3, 2 / 3, 1., 1., 1.], atol=1e-9)
    np.testing.assert_allclose(grid("OFFSET_CORNERS", 2, 6), [1 / 12, 0.25, 5 / 12, 7 / 12, 0.75, 11 / 12])
    assert grid("ALIGN_CORNERS", 3, 1).tolist() == [1.0]


@pytest.mark.parametrize("mode, onnx_mode", [("UNALIGN_CORNERS", "half_pixel"),
                                             ("STRICT_ALIGN_CORNERS", "align_corners"),
                                             ("DEFAULT", "asymmetric")])
def test_resize_bilinear_matches_onnx_runtime(mode, onnx_mode):
    x = RNG.standard_normal((1, 2, 5, 4)).astype(np.float32)
    actual = run_mil(lambda v: mb.resize_bilinear(x=v, target_size_height=11, target_size_width=7,
                                                  sampling_mode=mode), x)
    close(actual, run_onnx("Resize", x, {"roi": None, "s": None,
                                         "z": np.array([1, 2, 11, 7], np.int64)}, 4, mode="linear",
                           coordinate_transformation_mode=onnx_mode))


@pytest.mark.parametrize("align, half_pixel, onnx_mode", [(True, False, "align_corners"),
                                                          (False, True, "half_pixel"),
                                                          (False, False, "asymmetric")])
def test_upsample_bilinear_matches_onnx_runtime(align, half_pixel, onnx_mode):
    x = RNG.standard_normal((1, 2, 4, 5)).astype(np.float32)
    actual = run_mil(lambda v: mb.upsample_bilinear(x=v, scale_factor_height=2.0, scale_factor_width=3.0,
                                                    align_corners=align, half_pixel_centers=half_pixel), x)
    close(actual, run_onnx("Resize", x, {"roi": None, "s": np.array([1, 1, 2, 3], np.float32)}, 4,
                           mode="linear", coordinate_transformation_mode=onnx_mode))


def test_value_inference_ops_against_numpy_in_fp16():
    """Ops without a spec implementation here run through coremltools' value_inference."""
    x = RNG.standard_normal((2, 3, 4)).astype(np.float32)
    bias = RNG.standard_normal((3, 1)).astype(np.float16)

    def build(v):
        y = mb.add(x=v, y=bias)
        y = mb.relu6(x=y)
        y = mb.transpose(x=y, perm=[0, 2, 1])
        y = mb.reduce_mean(x=y, axes=[1], keep_dims=True)
        y = mb.concat(values=[y, y], axis=0)
        return mb.softmax(x=y, axis=-1)

    actual = run_mil(build, x, dtype=np.float16)
    y = np.clip(x.astype(np.float16) + bias, 0, 6).transpose(0, 2, 1).astype(np.float32).mean(axis=1, keepdims=True)
    y = np.concatenate([y, y])
    expected = np.exp(y) / np.exp(y).sum(axis=-1, keepdims=True)
    assert actual.dtype == np.float16
    close(actual, expected, tolerance=3e-3)


def test_evaluate_keeps_what_is_asked_and_refuses_unknown_ops():
    x = RNG.standard_normal((1, 2, 6, 6)).astype(np.float32)

    @mb.program(input_specs=[mb.TensorSpec(shape=x.shape)], opset_version=ct.target.iOS16)
    def program(x_in):
        y = mb.relu(x=x_in, name="first")
        return mb.sigmoid(x=y, name="second")

    everything = evaluate(program, {"x_in": x})
    assert {"x_in", "first", "second"} <= set(everything)
    kept = evaluate(program, {"x_in": x}, keep=set())
    assert set(kept) == {"second"}
    np.testing.assert_allclose(kept["second"], 1 / (1 + np.exp(-np.maximum(x, 0))), rtol=1e-6)
    with pytest.raises(KeyError, match="no value given for the program input 'x_in'"):
        evaluate(program, {})

    @mb.program(input_specs=[mb.TensorSpec(shape=x.shape)], opset_version=ct.target.iOS16)
    def unknown(x_in):
        return mb.l2_pool(x=x_in, kernel_sizes=[2, 2], strides=[2, 2], pad_type="valid", name="pooled")

    with pytest.raises(UnsupportedOp, match=r"pooled \(l2_pool\): no numpy evaluation"):
        evaluate(unknown, {"x_in": x})
