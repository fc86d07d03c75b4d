"""Faster float16 Conv and ConvTranspose for onnx's reference evaluator, with numpy's float16 semantics.

numpy computes a float16 matrix product by accumulating the (exact) products
in float32 and rounding each result to float16 once (checked: a 4096-term dot
product of ones gives 4096, which a float16 accumulator cannot reach).  Its
half-precision matmul has no BLAS, and the reference ConvTranspose scatters its
columns in Python loops, which made them the slowest part of the fp16-compute
emulation by far (15 of 18 s on the MobileUNet sample).  These kernels do the
product in float32 BLAS and round once, which is what numpy's float16 product
does up to the order of the float32 sums; the rest of each op (the bias add,
ConvTranspose's overlapping accumulation) stays in float16 arithmetic as in the
reference implementation.  Other dtypes and shapes use the reference unchanged.

The reference ConvTranspose (onnx 1.23) is also wrong for groups > 1: it adds
the first group's bias to every group and fails when the input channels differ
from the output channels.  This one agrees with ONNX Runtime there
(tests/engine/test_numerics_kernels.py).
"""
from __future__ import annotations

import numpy as np
from onnx.reference.ops.op_conv import Conv as _ReferenceConv, _conv_implementation
from onnx.reference.ops.op_conv_transpose import ConvTranspose as _ReferenceConvTranspose

__all__ = ["FP16_KERNELS"]


def _add_bias(output: np.ndarray, bias) -> np.ndarray:
    if bias is None:
        return output
    return output + bias.astype(output.dtype).reshape((1, -1) + (1,) * (output.ndim - 2))


class Conv(_ReferenceConv):
    op_domain = ""

    def _run(self, X, W, B=None, auto_pad=None, dilations=None, group=None, kernel_shape=None, pads=None,
             strides=None):
        if X.dtype != np.float16 or W.dtype != np.float16:
            return super()._run(X, W, B, auto_pad=auto_pad, dilations=dilations, group=group,
                                kernel_shape=kernel_shape, pads=pads, strides=strides)
        product = _conv_implementation(X.astype(np.float32), W.astype(np.float32), None, auto_pad, dilations,
                                       group, kernel_shape, pads, strides)
        return (_add_bias(product.astype(np.float16), B),)


class ConvTranspose(_ReferenceConvTranspose):
    op_domain = ""

    def _run(self, X, W, B=None, auto_pad=None, dilations=None, group=None, kernel_shape=None,
             output_padding=None, output_shape=None, pads=None, strides=None):
        simple = (X.dtype == np.float16 and W.dtype == np.float16 and X.ndim == 4
                  and (dilations is None or all(d == 1 for d in dilations))
                  and auto_pad in (None, "NOTSET", b"NOTSET") and output_shape is None)
        if not simple:
            return super()._run(X, W, B, auto_pad=auto_pad, dilations=dilations, group=group,
                                kernel_shape=kernel_shape, output_padding=output_padding,
                                output_shape=output_shape, pads=pads, strides=strides)
        group = group or 1
        stride_h, stride_w = strides or (1, 1)
        pad_top, pad_left, pad_bottom, pad_right = pads or (0, 0, 0, 0)
        extra_h, extra_w = output_padding or (0, 0)
        batch, channels, height, width = X.shape
        _, outputs, kernel_h, kernel_w = W.shape  # (input channels, output channels per group, kh, kw)
        per_group = channels // group
        # Every input pixel's contribution to every kernel position: one float32 product, rounded once.
        columns = np.einsum("ngchw,gcmij->ngmijhw",
                            X.astype(np.float32).reshape(batch, group, per_group, height, width),
                            W.astype(np.float32).reshape(group, per_group, outputs, kernel_h, kernel_w),
                            optimize=True).astype(np.float16)
        full_h = stride_h * (height - 1) + kernel_h + extra_h
        full_w = stride_w * (width - 1) + kernel_w + extra_w
        canvas = np.zeros((batch, group, outputs, full_h, full_w), dtype=np.float16)
        for i in range(kernel_h):  # overlapping contributions add up in float16, one kernel position at a time
            for j in range(kernel_w):
                canvas[..., i:i + stride_h * height:stride_h, j:j + stride_w * width:stride_w] += columns[:, :, :, i, j]
        canvas = canvas.reshape(batch, group * outputs, full_h, full_w)
        cropped = canvas[:, :, pad_top:full_h - pad_bottom, pad_left:full_w - pad_right]
        return (_add_bias(np.ascontiguousarray(cropped), B),)


FP16_KERNELS = [Conv, ConvTranspose]
