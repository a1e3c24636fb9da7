"""ONNX ConvTranspose `output_shape` and `auto_pad` -> explicit `pads` and `output_padding`.

TVM's ONNX importer ignores `output_shape`, so a model that sets it would compile to an output of
another shape. This rewrite runs on the ONNX model before import and states every ConvTranspose
with NOTSET padding, per the ONNX definition (onnxruntime agrees, checked by our conformance table):

    total = stride*(in-1) + output_padding + (kernel-1)*dilation + 1 - out
    out   = output_shape if given, in*stride for SAME_UPPER/SAME_LOWER, else no change
    SAME_UPPER: pads = (total//2, total - total//2); otherwise (total - total//2, total//2)

An `output_shape` beyond the full result (total < 0) extends the end, which is `output_padding`.
"""

from __future__ import annotations

import onnx
from onnx import helper

from ..errors import UnsupportedModelError
from ..onnx_shapes import value_shapes

AUTO_PADS = ("NOTSET", "SAME_UPPER", "SAME_LOWER", "VALID")


def _attributes(node: onnx.NodeProto) -> dict:
    return {a.name: helper.get_attribute_value(a) for a in node.attribute}


def _decode(value):
    return value.decode() if isinstance(value, bytes) else value


def _explicit(node: onnx.NodeProto, attrs: dict, x_shape: list[int], w_shape: list[int]) -> dict:
    rank = len(x_shape) - 2
    strides = list(attrs.get("strides", [1] * rank))
    dilations = list(attrs.get("dilations", [1] * rank))
    output_padding = list(attrs.get("output_padding", [0] * rank))
    kernel = list(attrs.get("kernel_shape", w_shape[2:]))
    auto_pad = _decode(attrs.get("auto_pad", "NOTSET"))
    output_shape = list(attrs.get("output_shape", []))
    if output_shape and len(output_shape) != rank:
        raise UnsupportedModelError(
            f"ConvTranspose {node.name!r}: output_shape {output_shape} has {len(output_shape)} dims for a "
            f"{rank}-D input; give one size per spatial dim"
        )
    if not output_shape and auto_pad in ("SAME_UPPER", "SAME_LOWER"):
        output_shape = [x_shape[2 + d] * strides[d] for d in range(rank)]
    if not output_shape:  # VALID: no padding
        return {"pads": [0] * (2 * rank), "output_padding": output_padding}
    begin, end = [], []
    for d in range(rank):
        full = strides[d] * (x_shape[2 + d] - 1) + output_padding[d] + (kernel[d] - 1) * dilations[d] + 1
        total = full - output_shape[d]
        if total < 0:
            output_padding[d] -= total
            total = 0
        if auto_pad == "SAME_UPPER":
            begin.append(total // 2)
            end.append(total - total // 2)
        else:
            begin.append(total - total // 2)
            end.append(total // 2)
    return {"pads": begin + end, "output_padding": output_padding}


def _needs_rewrite(node: onnx.NodeProto) -> bool:
    if node.op_type != "ConvTranspose":
        return False
    attrs = _attributes(node)
    return "output_shape" in attrs or _decode(attrs.get("auto_pad", "NOTSET")) != "NOTSET"


def _check_output_padding(node: onnx.NodeProto, origin: str) -> None:
    """ONNX allows output_padding below max(stride, dilation); TVM's ConvTranspose below the stride."""
    attrs = _attributes(node)
    padding = list(attrs.get("output_padding", []))
    strides = list(attrs.get("strides", [1] * len(padding)))
    for d, (pad, stride) in enumerate(zip(padding, strides)):
        if pad >= stride:
            raise UnsupportedModelError(
                f"ConvTranspose {node.name!r}: {origin} needs output_padding {pad} along spatial dim {d}, and we "
                f"compile output_padding below the stride ({stride}) only. Give a smaller output size and pad "
                f"the result with a Pad node"
            )


def make_convtranspose_padding_explicit(model: onnx.ModelProto) -> tuple[onnx.ModelProto, list[str]]:
    """A copy of `model` whose ConvTranspose nodes use explicit pads; also says what it rewrote.
    Raises UnsupportedModelError, naming the attribute, for what we cannot compile."""
    for node in model.graph.node:
        if node.op_type == "ConvTranspose" and not _needs_rewrite(node):
            _check_output_padding(node, "its output_padding attribute")
    if not any(_needs_rewrite(n) for n in model.graph.node):
        return model, []  # no copy of the (possibly large) model
    rewritten = onnx.ModelProto()
    rewritten.CopyFrom(model)
    shapes = value_shapes(rewritten)
    changes = []
    for node in rewritten.graph.node:
        if not _needs_rewrite(node):
            continue
        attrs = _attributes(node)
        auto_pad = _decode(attrs.get("auto_pad", "NOTSET"))
        if auto_pad not in AUTO_PADS:
            raise UnsupportedModelError(
                f"ConvTranspose {node.name!r} has auto_pad {auto_pad!r}; ONNX allows only {', '.join(AUTO_PADS)}"
            )
        x_shape, w_shape = shapes.get(node.input[0]), shapes.get(node.input[1])
        if not x_shape or not w_shape or None in x_shape or None in w_shape:
            raise UnsupportedModelError(
                f"ConvTranspose {node.name!r} uses {'output_shape' if 'output_shape' in attrs else 'auto_pad'}, "
                f"which needs static input and weight shapes, and they are not known ({x_shape}, {w_shape}); "
                f"fix the input shapes of the model"
            )
        explicit = _explicit(node, attrs, x_shape, w_shape)
        kept = [a for a in node.attribute if a.name not in ("auto_pad", "output_shape", "pads", "output_padding")]
        del node.attribute[:]
        node.attribute.extend(kept)
        node.attribute.extend(helper.make_attribute(k, v) for k, v in explicit.items())
        origin = f"output_shape {list(attrs['output_shape'])}" if "output_shape" in attrs else f"auto_pad {auto_pad}"
        _check_output_padding(node, origin)
        changes.append(
            f"{node.name or node.output[0]}: auto_pad {auto_pad}, output_shape {list(attrs.get('output_shape', []))} "
            f"-> pads {explicit['pads']}, output_padding {explicit['output_padding']}"
        )
    return rewritten, changes
