"""ONNX -> Relax, with the weights kept apart from the module so the artifact can ship them as data."""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
import onnx
import tvm
from tvm import relax
from tvm.relax.frontend.onnx import from_onnx

from .errors import UnsupportedModelError
from .passes.convtranspose_explicit_pads import make_convtranspose_padding_explicit
from .passes.fold_shape_arithmetic import fold_shape_arithmetic

log = logging.getLogger(__name__)

ONNX_DTYPES = {
    onnx.TensorProto.FLOAT: "float32",
    onnx.TensorProto.FLOAT16: "float16",
    onnx.TensorProto.DOUBLE: "float64",
    onnx.TensorProto.INT32: "int32",
    onnx.TensorProto.INT64: "int64",
}


@dataclass(frozen=True)
class TensorSpec:
    name: str
    shape: tuple[int, ...]
    dtype: str

    def describe(self) -> str:
        return f"{self.name} {self.dtype}{list(self.shape)}"


@dataclass
class ImportedGraph:
    """A Relax module whose `main` takes the graph inputs, then the weights in `param_names` order."""

    mod: tvm.IRModule
    inputs: list[TensorSpec]
    outputs: list[TensorSpec]
    param_names: list[str]
    params: list[np.ndarray]


def graph_inputs(model: onnx.ModelProto) -> list[TensorSpec]:
    """The inputs a caller feeds (initializers excluded); UnsupportedModelError for symbolic
    dimensions and element types we do not compile."""
    initializers = {init.name for init in model.graph.initializer}
    specs = []
    for value in model.graph.input:
        if value.name in initializers:
            continue
        tensor_type = value.type.tensor_type
        dims = []
        for dim in tensor_type.shape.dim:
            if not dim.HasField("dim_value") or dim.dim_value <= 0:
                label = dim.dim_param or "?"
                shown = [d.dim_value if d.HasField("dim_value") and d.dim_value > 0 else "<size>" for d in tensor_type.shape.dim]
                raise UnsupportedModelError(
                    f"input {value.name!r} has a symbolic dimension {label!r}; we compile static shapes "
                    f"only: give its shape with --input-shape {value.name}={','.join(map(str, shown))} "
                    f"(Python: GraphSelection(input_shapes=...)) and build again"
                )
            dims.append(dim.dim_value)
        if tensor_type.elem_type not in ONNX_DTYPES:
            raise UnsupportedModelError(
                f"input {value.name!r} has ONNX element type {tensor_type.elem_type}, which we do not "
                f"support; use one of {sorted(ONNX_DTYPES.values())}"
            )
        specs.append(TensorSpec(value.name, tuple(dims), ONNX_DTYPES[tensor_type.elem_type]))
    return specs


def _output_specs(ret_ty, names: list[str]) -> list[TensorSpec]:
    fields = ret_ty.fields if isinstance(ret_ty, relax.TupleType) else [ret_ty]
    specs = []
    for name, field in zip(names, fields):
        shape = getattr(field, "shape", None)
        dims = list(shape.values) if shape is not None else None
        if dims is None or not all(isinstance(d, tvm.tirx.IntImm) for d in dims):
            raise UnsupportedModelError(
                f"output {name!r} has a shape that depends on the input values ({dims or 'unknown'}); we compile "
                f"static shapes only: remove the operator that makes it (e.g. Unique, NonZero) from the graph"
            )
        specs.append(TensorSpec(name, tuple(int(d) for d in dims), str(field.dtype)))
    return specs


def import_onnx(model: onnx.ModelProto) -> ImportedGraph:
    """Import with TVM's Relax ONNX frontend; weights become trailing parameters of `main`."""
    inputs = graph_inputs(model)
    model, rewrites = make_convtranspose_padding_explicit(model)
    for line in rewrites:
        log.info("explicit ConvTranspose padding: %s", line)
    model, folded = fold_shape_arithmetic(model)
    for line in folded:
        log.info("shape arithmetic folded: %s", line)
    try:
        mod = from_onnx(model, keep_params_in_input=True)
    except Exception as exc:  # the frontend raises bare Python and TVM errors for unsupported ops
        message = str(exc).strip().splitlines()[-1] if str(exc).strip() else type(exc).__name__
        raise UnsupportedModelError(
            f"TVM's ONNX importer cannot import this model: {message}. Remove or replace that "
            f"operator, or export the model with another opset"
        ) from exc
    mod, params = relax.frontend.detach_params(mod)
    mod, weights = _bind_scalar_weights(mod, [p.numpy() for p in params.get("main", [])])
    main = mod["main"]
    num_inputs = int(main.attrs["num_input"])
    param_names = [p.name for p in main.params[num_inputs:]]
    outputs = _output_specs(main.ret_ty, [o.name for o in model.graph.output])
    return ImportedGraph(mod, inputs, outputs, param_names, weights)


def _bind_scalar_weights(mod: tvm.IRModule, weights: list[np.ndarray]) -> tuple[tvm.IRModule, list[np.ndarray]]:
    """One-element initializers become constants of `main`; returns it and the weights it still
    takes. They are constants in all but name:
    torch.onnx's dynamo exporter writes the 2 of SnakeBeta's `sin(x) ** 2` as one, and as a
    parameter that exponent left one powf call per element (the Snake kernels of such a decoder
    took 157 ms per call at T = 32, against 17 with the exponent a literal LLVM turns into a
    multiply)."""
    main = mod["main"]
    weight_vars = main.params[int(main.attrs["num_input"]):]
    scalars = {var: weight for var, weight in zip(weight_vars, weights) if weight.size == 1}
    if not scalars:
        return mod, weights
    kept = [weight for var, weight in zip(weight_vars, weights) if var not in scalars]
    return relax.transform.BindParams("main", scalars)(mod), kept
