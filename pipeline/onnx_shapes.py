"""Shapes of an ONNX model's values by ONNX shape inference, on a copy without its weights' data.

onnx.shape_inference.infer_shapes serializes the whole model and parses it back: 4.0 s for the
SAO decoder's 312 MB of weights, where the inference itself needs only their types. Declaring the
large initializers as typed inputs instead gives the same shapes (every value of that decoder,
compared) in 0.02 s. Small ones stay initializers: shape inference reads their values (Reshape's
shape, Pad's pads, Slice's starts).
"""

from __future__ import annotations

import math

import onnx
from onnx import helper

from .errors import UnsupportedModelError

# Initializers up to this many elements keep their values for shape inference.
SHAPE_DATA_ELEMENTS = 1024


def _without_weight_data(model: onnx.ModelProto) -> onnx.ModelProto:
    graph = model.graph
    small = [init for init in graph.initializer if math.prod(init.dims) <= SHAPE_DATA_ELEMENTS]
    declared = {value.name for value in graph.input}
    weights = [
        helper.make_tensor_value_info(init.name, init.data_type, list(init.dims))
        for init in graph.initializer
        if math.prod(init.dims) > SHAPE_DATA_ELEMENTS and init.name not in declared
    ]
    light = helper.make_model(
        helper.make_graph(
            graph.node, graph.name, [*graph.input, *weights], graph.output, small, value_info=graph.value_info
        ),
        opset_imports=model.opset_import,
        ir_version=model.ir_version,
    )
    light.graph.sparse_initializer.extend(graph.sparse_initializer)
    light.functions.extend(model.functions)
    return light


def infer_shapes(model: onnx.ModelProto, strict_mode: bool = False, data_prop: bool = False) -> onnx.ModelProto:
    """onnx.shape_inference.infer_shapes, returning a model whose graph holds no large weights."""
    return onnx.shape_inference.infer_shapes(_without_weight_data(model), strict_mode=strict_mode, data_prop=data_prop)


def value_shapes(model: onnx.ModelProto, data_prop: bool = False) -> dict[str, list[int | None] | None]:
    """Every value's and initializer's shape: None for a dimension that is not static, and for
    the whole shape where not even the rank is known."""
    try:
        inferred = infer_shapes(model, data_prop=data_prop)
    except Exception as exc:  # onnx raises InferenceError and others for inconsistent models
        raise UnsupportedModelError(f"ONNX shape inference fails on this model ({exc}); fix the model") from exc
    shapes = {}
    graph = inferred.graph
    for value in [*graph.input, *graph.value_info, *graph.output]:
        tensor_type = value.type.tensor_type
        known = tensor_type.HasField("shape")
        shapes[value.name] = [d.dim_value if d.HasField("dim_value") else None for d in tensor_type.shape.dim] if known else None
    for init in model.graph.initializer:
        shapes[init.name] = list(init.dims)
    return shapes
