"""ONNX shape arithmetic on static shapes -> constants, before import.

Exporters compute shapes and paddings with small integer subgraphs: `x.view(*x.shape[:2], -1)` as
Shape -> Slice -> Concat -> Reshape, `F.pad(y, (0, skip.shape[-1] - y.shape[-1]))` (aligning a
skip connection) as Shape -> Gather -> Sub -> ConstantOfShape -> Concat -> Reshape -> Slice ->
Transpose -> Cast -> Pad, which TorchScript writes even for static inputs (with Constants where
the Shapes were). TVM's ONNX importer keeps such values as tensors and then refuses the consumer
("Dynamic pads are not supported yet", "Reshape expects the input tensor to have known shape"),
although every shape is static (ours always are). This rewrite evaluates each such value with
ONNX's reference implementation and writes it as an initializer, so TVM sees `Pad(y, constant)`.

Only shape arithmetic is folded: a node whose op is one of SHAPE_OPS, whose inputs are all Shapes
of static values, small integer constants or values folded before, and whose results are small
integer tensors. Weights and activations are never computed here.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import helper, numpy_helper
from onnx.reference import ReferenceEvaluator

from ..onnx_shapes import value_shapes

# Ops that exporters use on shapes; all deterministic, all with small integer results here.
SHAPE_OPS = frozenset({
    "Cast", "Concat", "Gather", "Slice", "Squeeze", "Unsqueeze", "Reshape", "Identity",
    "Add", "Sub", "Mul", "Div", "Mod", "Neg", "Abs", "Min", "Max", "ReduceProd", "ReduceSum",
    "Equal", "Less", "Greater", "Not", "Where", "Range", "Size", "Transpose", "ConstantOfShape",
})
# Integer constants up to this many elements may join folded shapes (indices, axes, a -1), and
# folded values are at most this large: shapes and paddings, never weights or activations.
SMALL_CONSTANT = 64
INTEGER_TYPES = frozenset({
    onnx.TensorProto.INT64, onnx.TensorProto.INT32, onnx.TensorProto.INT16, onnx.TensorProto.INT8,
    onnx.TensorProto.UINT64, onnx.TensorProto.UINT32, onnx.TensorProto.UINT16, onnx.TensorProto.UINT8,
    onnx.TensorProto.BOOL,
})


def _static_shapes(model: onnx.ModelProto) -> dict[str, list[int]]:
    """Static shapes of the values, also after a Reshape to a computed shape (data propagation)."""
    return {name: dims for name, dims in value_shapes(model, data_prop=True).items() if dims is not None and None not in dims}


def _shape_of(node: onnx.NodeProto, shape: list[int]) -> np.ndarray:
    attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
    start, end = attrs.get("start", 0), attrs.get("end", len(shape))
    return np.array(shape[start:end], dtype=np.int64)


def _evaluate(node: onnx.NodeProto, values: list[np.ndarray | None], opset: int) -> list[np.ndarray]:
    inputs = [helper.make_tensor_value_info(f"in{i}", onnx.TensorProto.UNDEFINED, None) for i in range(len(values))]
    outputs = [helper.make_tensor_value_info(f"out{i}", onnx.TensorProto.UNDEFINED, None) for i in range(len(node.output))]
    renamed = helper.make_node(
        node.op_type, [f"in{i}" if name else "" for i, name in enumerate(node.input)],
        [o.name for o in outputs], domain=node.domain,
    )
    renamed.attribute.extend(node.attribute)
    graph = helper.make_graph([renamed], "shape_arithmetic", [v for v, name in zip(inputs, node.input) if name], outputs)
    evaluator = ReferenceEvaluator(helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)]))
    feeds = {f"in{i}": value for i, (value, name) in enumerate(zip(values, node.input)) if name}
    return [np.asarray(result) for result in evaluator.run(None, feeds)]


def _integers(value: np.ndarray) -> bool:
    return value.size <= SMALL_CONSTANT and (np.issubdtype(value.dtype, np.integer) or value.dtype == np.bool_)


def _small_integer_constants(graph: onnx.GraphProto) -> dict[str, np.ndarray]:
    constants = {
        init.name: numpy_helper.to_array(init)
        for init in graph.initializer
        if init.data_type in INTEGER_TYPES and np.prod(init.dims, dtype=np.int64) <= SMALL_CONSTANT
    }
    for node in graph.node:
        if node.op_type == "Constant" and node.attribute and node.attribute[0].name == "value":
            value = numpy_helper.to_array(node.attribute[0].t)
            if _integers(value):
                constants[node.output[0]] = value
    return constants


def fold_shape_arithmetic(model: onnx.ModelProto) -> tuple[onnx.ModelProto, list[str]]:
    """Returns the model (a copy where anything was folded) and one line per folded value."""
    graph = model.graph
    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 17)
    small = _small_integer_constants(graph)
    shapes = None  # shape inference, on the first Shape node only: it copies the whole model
    folded: dict[str, np.ndarray] = {}
    kept = []
    outputs = {o.name for o in graph.output}
    for node in graph.node:
        value = None
        if node.domain in ("", "ai.onnx") and not outputs.intersection(node.output):
            if node.op_type == "Shape":
                shapes = _static_shapes(model) if shapes is None else shapes
                if node.input[0] in shapes:
                    value = [_shape_of(node, shapes[node.input[0]])]
            elif node.op_type in SHAPE_OPS and all(not name or name in folded or name in small for name in node.input):
                known = [folded.get(name, small.get(name)) if name else None for name in node.input]
                # F.pad writes its pads with ConstantOfShape; a tensor of an activation's shape stays.
                if node.op_type != "ConstantOfShape" or np.prod(known[0]) <= SMALL_CONSTANT:
                    value = _evaluate(node, known, opset)
                if value is not None and not all(_integers(v) for v in value):
                    value = None
        if value is None:
            kept.append(node)
        else:
            folded.update(zip(node.output, value))
    if not folded:
        return model, []
    used = {name for node in kept for name in node.input}
    result = onnx.ModelProto()
    result.CopyFrom(model)
    del result.graph.node[:]
    result.graph.node.extend(kept)
    constants = {init.name for init in graph.initializer}
    for name, value in folded.items():
        if name in used and name not in constants:
            result.graph.initializer.append(numpy_helper.from_array(value, name))
    lines = [f"{name} = {value.tolist()}" for name, value in folded.items() if name in used]
    return result, lines
