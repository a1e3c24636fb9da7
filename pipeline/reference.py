"""Independent numpy references, written from the ONNX operator definitions, not from any compiler.

ConvTranspose uses the scatter form: every input element x[n, ci, i] adds x * w[ci, co, kk] into
the output at i*stride + kk*dilation - pad_begin. Conv uses the gather form. Both accumulate in
float64 so that they can judge fp32 builds.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable

import numpy as np

from .errors import GraphError
from .graphs import (
    ORIGIN_PREFIX,
    Conv,
    ConvTranspose,
    Decoder,
    DecoderBlock,
    ResidualUnit,
    Snake,
    block_parameters,
    decoder_parameters,
    graph_info,
    load_config,
)


def _attributes(rank: int, strides, pads, dilations) -> tuple[list[int], list[int], list[int]]:
    """ONNX defaults: stride 1, no padding, dilation 1."""
    return list(strides or [1] * rank), list(pads or [0] * (2 * rank)), list(dilations or [1] * rank)


def _add_bias(out: np.ndarray, bias: np.ndarray | None) -> np.ndarray:
    if bias is not None:
        out += bias.astype(np.float64).reshape(1, -1, *([1] * (out.ndim - 2)))
    return out


def conv_transpose(
    x: np.ndarray,
    w: np.ndarray,
    bias: np.ndarray | None = None,
    strides=None,
    pads=None,
    dilations=None,
    output_padding=None,
    group: int = 1,
    auto_pad: str = "NOTSET",
    output_shape=None,
    kernel_shape=None,
) -> np.ndarray:
    """ONNX ConvTranspose for any spatial rank. pads = [begin..., end...] as in ONNX; with
    `output_shape` or a SAME `auto_pad`, the result is cut from the unpadded one as the ONNX text
    says (the extra element of an odd total goes to the end for SAME_UPPER, else the beginning)."""
    n, cin, *in_size = x.shape
    rank = len(in_size)
    cin_w, cout_per_group, *kernel = w.shape
    if kernel_shape is not None and list(kernel_shape) != kernel:
        raise ValueError(f"kernel_shape {list(kernel_shape)} differs from the weight's {kernel}")
    if cin_w != cin:
        raise ValueError(f"weight has {cin_w} input channels, input has {cin}")
    strides, pads, dilations = _attributes(rank, strides, pads, dilations)
    output_padding = list(output_padding or [0] * rank)
    cin_per_group = cin // group
    full = [
        (in_size[d] - 1) * strides[d] + (kernel[d] - 1) * dilations[d] + 1 + output_padding[d]
        for d in range(rank)
    ]
    out = np.zeros((n, cout_per_group * group, *full), dtype=np.float64)
    x64 = x.astype(np.float64)
    w64 = w.astype(np.float64)
    for g in range(group):
        xg = x64[:, g * cin_per_group:(g + 1) * cin_per_group]
        wg = w64[g * cin_per_group:(g + 1) * cin_per_group]
        out_channels = slice(g * cout_per_group, (g + 1) * cout_per_group)
        for tap in itertools.product(*(range(k) for k in kernel)):
            # contribution of this tap from every input position at once: (n, cout_g, *in_size)
            contrib = (wg[(slice(None), slice(None), *tap)].T @ xg.reshape(n, cin_per_group, -1)).reshape(
                n, cout_per_group, *in_size
            )
            window = tuple(
                slice(tap[d] * dilations[d], tap[d] * dilations[d] + (in_size[d] - 1) * strides[d] + 1, strides[d])
                for d in range(rank)
            )
            out[(slice(None), out_channels, *window)] += contrib
    wanted = list(output_shape) if output_shape else None
    if wanted is None and auto_pad in ("SAME_UPPER", "SAME_LOWER"):
        wanted = [in_size[d] * strides[d] for d in range(rank)]
    if wanted is None and auto_pad == "VALID":
        wanted = full
    if wanted is not None:
        return _add_bias(_cut(out, full, wanted, upper=auto_pad == "SAME_UPPER"), bias)
    crop = tuple(slice(pads[d], full[d] - pads[rank + d]) for d in range(rank))
    return _add_bias(out[(slice(None), slice(None), *crop)], bias)


def _cut(out: np.ndarray, full: list[int], wanted: list[int], upper: bool) -> np.ndarray:
    """The `wanted`-sized window of the unpadded result; zeros past its end if `wanted` is larger."""
    result = np.zeros((*out.shape[:2], *wanted), dtype=out.dtype)
    source, target = [], []
    for size, want in zip(full, wanted):
        excess = max(size - want, 0)
        start = excess // 2 if upper else excess - excess // 2
        length = min(want, size)
        source.append(slice(start, start + length))
        target.append(slice(0, length))
    result[(slice(None), slice(None), *target)] = out[(slice(None), slice(None), *source)]
    return result


def conv(
    x: np.ndarray,
    w: np.ndarray,
    bias: np.ndarray | None = None,
    strides=None,
    pads=None,
    dilations=None,
    group: int = 1,
) -> np.ndarray:
    """ONNX Conv for any spatial rank, gather form."""
    n, cin, *in_size = x.shape
    rank = len(in_size)
    cout, cin_per_group, *kernel = w.shape
    strides, pads, dilations = _attributes(rank, strides, pads, dilations)
    padded = np.pad(
        x.astype(np.float64), [(0, 0), (0, 0), *[(pads[d], pads[rank + d]) for d in range(rank)]]
    )
    out_size = [
        (in_size[d] + pads[d] + pads[rank + d] - (kernel[d] - 1) * dilations[d] - 1) // strides[d] + 1
        for d in range(rank)
    ]
    cout_per_group = cout // group
    out = np.zeros((n, cout, *out_size), dtype=np.float64)
    w64 = w.astype(np.float64)
    for g in range(group):
        xg = padded[:, g * cin_per_group:(g + 1) * cin_per_group]
        out_channels = slice(g * cout_per_group, (g + 1) * cout_per_group)
        for tap in itertools.product(*(range(k) for k in kernel)):
            window = tuple(
                slice(tap[d] * dilations[d], tap[d] * dilations[d] + (out_size[d] - 1) * strides[d] + 1, strides[d])
                for d in range(rank)
            )
            patch = xg[(slice(None), slice(None), *window)].reshape(n, cin_per_group, -1)
            contrib = w64[(out_channels, slice(None), *tap)] @ patch
            out[:, out_channels] += contrib.reshape(n, cout_per_group, *out_size)
    return _add_bias(out, bias)


def snake(x: np.ndarray, p: Snake) -> np.ndarray:
    alpha = p.alpha.astype(np.float64).reshape(1, -1, 1)
    inv_beta = p.inv_beta.astype(np.float64).reshape(1, -1, 1)
    return x + inv_beta * np.sin(alpha * x) ** 2


def _conv1d(x: np.ndarray, p: Conv) -> np.ndarray:
    return conv(x, p.weight, p.bias, pads=[p.padding, p.padding], dilations=[p.dilation])


def _upsample(x: np.ndarray, p: ConvTranspose) -> np.ndarray:
    return conv_transpose(x, p.weight, p.bias, strides=[p.stride], pads=[p.padding, p.padding])


def residual_unit(x: np.ndarray, p: ResidualUnit) -> np.ndarray:
    h = _conv1d(snake(x, p.snake1), p.conv1)
    return x + _conv1d(snake(h, p.snake2), p.conv2)


def decoder_block(x: np.ndarray, p: DecoderBlock) -> np.ndarray:
    h = _upsample(snake(x, p.snake), p.upsample)
    for unit in p.residuals:
        h = residual_unit(h, unit)
    return h


def decoder(x: np.ndarray, p: Decoder, final_tanh: bool = False, trace: list | None = None) -> np.ndarray:
    """The whole decoder; `trace`, when given, receives each block's output (for scale checks)."""
    h = _conv1d(x, p.conv_in)
    for block in p.blocks:
        h = decoder_block(h, block)
        if trace is not None:
            trace.append(h)
    h = _conv1d(snake(h, p.snake_out), p.conv_out)
    return np.tanh(h) if final_tanh else h


def named_graph(name: str, origin: str, seed: int | None) -> Callable[[np.ndarray], np.ndarray] | None:
    """The named Oobleck graph that `graphs.make_graph` wrote (origin "oobleck:<config>"), in float64,
    as a function of its input; None for any other graph (a user's ONNX file), or where the config
    cannot be found by name (one given as a JSON path)."""
    if not origin.startswith(ORIGIN_PREFIX) or seed is None:
        return None
    try:
        config = load_config(origin.removeprefix(ORIGIN_PREFIX))
        info = graph_info(config, name)
    except GraphError:
        return None
    if info.kind == "decoder":
        params = decoder_parameters(config, seed)
        return lambda x: decoder(x, params, final_tanh=config.final_tanh)
    block = block_parameters(config, info.block.index, seed)
    if info.kind == "convt":
        return lambda x: _upsample(x, block.upsample)
    return lambda x: decoder_block(x, block)
