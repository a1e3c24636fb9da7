"""Depthwise Conv1d and Conv2d (one input channel per group, any channel multiplier) as a kernel of
our own, `conv_depthwise`, which the CPU and GPU schedules know by name:

    y[n, c, p] = sum_k x_padded[n, c // multiplier, p * stride + k * dilation] * w[c, 0, k]

A depthwise convolution does a few multiply-adds per output and is bound by memory. Our GEMM
(conv_gemm) suits it badly: its register tiles are one output channel high, and a Conv2d adds a
padding kernel and a crop, two more passes over memory; it took twice the time of TVM's lowering
on a 3 x 3 depthwise Conv2d (128 channels of 64 x 64). TVM's lowering runs the stencil untuned,
with the padding's bounds test in its innermost loop: 1.5x onnxruntime's time on that layer, 4.4x
on a 7 x 7 one (96 channels of 56 x 56); this kernel 0.55-0.70x and 1.12x (`bench --onnx`,
side by side). The zero padding is a stage of the same kernel, which the CPU schedule
computes one channel at a time, so the stencil's loads need no bounds test (the GPU schedule
inlines it into the reads).

Non-NCW/NCHW or symbolic depthwise convolutions keep TVM's lowering, and the log says why.
"""

from __future__ import annotations

import logging
import math

import tvm
from tvm import relax, te, tirx

from .relax_rewrite import (
    CONV_LAYOUTS,
    conv_output_size,
    conv_reach,
    rewrite_calls,
    static_shape,
    unsupported_conv,
)

log = logging.getLogger(__name__)

def is_depthwise(call: relax.Call) -> bool:
    """Whether a conv1d/conv2d call has one input channel per group (and more than one group)."""
    weight = static_shape(call.args[1])
    return int(call.attrs.groups) > 1 and weight is not None and weight[1] == 1


def _selects(call: relax.Call) -> bool:
    return call.op.name in CONV_LAYOUTS and is_depthwise(call)


# The block annotation that tells the CPU schedule the stride along the row (see conv_pad).
ROW_STRIDE_ANNOTATION = "depthwise_row_stride"


def _depthwise(
    x: te.Tensor, w: te.Tensor, strides: list[int], dilations: list[int], pads: list[int]
) -> te.Tensor:
    batch, channels, *size = (int(d) for d in x.shape)
    cout, _, *kernel = (int(d) for d in w.shape)
    rank = len(size)
    multiplier = cout // channels
    out_size = [
        conv_output_size(size[d], kernel[d], strides[d], dilations[d], pads[d] + pads[rank + d]) for d in range(rank)
    ]
    # As far as the last output's last tap reads (a stride can leave input unread); the row in
    # whole strides, as the CPU schedule stores it as the stride's phases.
    reach = [conv_reach(out_size[d], kernel[d], strides[d], dilations[d]) for d in range(rank)]
    reach[-1] = -(-reach[-1] // strides[-1]) * strides[-1]

    def pad(n, c, *p):
        inside = tirx.all(*(cond for d in range(rank) for cond in (p[d] >= pads[d], p[d] < pads[d] + size[d])))
        return tirx.if_then_else(inside, x[(n, c, *(p[d] - pads[d] for d in range(rank)))], tirx.const(0, x.dtype))

    padded = te.compute(
        (batch, channels, *reach), pad, name="conv_pad", attrs={ROW_STRIDE_ANNOTATION: strides[-1]}
    )
    taps = [te.reduce_axis((0, kernel[d]), name=f"k{d}") for d in range(rank)]
    source = tirx.floordiv if multiplier > 1 else (lambda c, _: c)

    def stencil(n, c, *o):
        position = (o[d] * strides[d] + taps[d] * dilations[d] for d in range(rank))
        return te.sum(padded[(n, source(c, multiplier), *position)] * w[(c, 0, *taps)], axis=taps)

    return te.compute((batch, cout, *out_size), stencil, name="conv_depthwise")


def _rewrite(builder: relax.BlockBuilder, call: relax.Call) -> tuple[relax.Expr, str]:
    attrs = call.attrs
    strides, dilations = [int(s) for s in attrs.strides], [int(d) for d in attrs.dilation]
    padding = [int(p) for p in attrs.padding]
    x_shape, w_shape = static_shape(call.args[0]), static_shape(call.args[1])
    stencil = builder.call_te(
        _depthwise, call.args[0], call.args[1], strides, dilations, padding, primfunc_name_hint="conv_depthwise"
    )
    line = (
        f"{x_shape}x{w_shape} s{strides} d{dilations} p{padding} "
        f"multiplier {w_shape[0] // x_shape[1]}, {math.prod(w_shape[2:])} taps"
    )
    return stencil, line


@tvm.transform.module_pass(opt_level=0, name="DepthwiseConv")
class DepthwiseConv:
    """Rewrite every supported depthwise conv1d and conv2d into our stencil kernel; log each
    rewrite and each refusal. Runs before ConvToGemm, which would take them otherwise."""

    def transform_module(self, mod: tvm.IRModule, _ctx) -> tvm.IRModule:
        return rewrite_calls(mod, _selects, unsupported_conv, _rewrite, log, "depthwise conv")
