"""PyTorch eager as a baseline: runs an ONNX graph op by op with torch's own kernels, on CPU or CUDA.

This is what a user who deploys the decoder with PyTorch gets: `F.conv_transpose1d` (cuDNN on a
GPU), `F.conv1d` and torch's elementwise kernels, one launch per op. It covers the operators of
the Oobleck graphs (Conv, ConvTranspose, Mul, Add, Sin, Identity) plus a few common elementwise
ones; anything else is refused with UnsupportedModelError, never approximated.

On CUDA, TF32 is switched off (fp32 throughout, as our builds), cuDNN may pick its fastest
algorithm (`cudnn.benchmark`), and time is measured with CUDA events around batches of calls.
torch is an optional dependency: `pip install -e '.[torch]'` (on a GPU machine, its CUDA build).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
from onnx import numpy_helper

from .errors import TargetError, UnsupportedModelError
from .importer import graph_inputs
from .runtime import Timing, time_calls, wall_clock_ms


def import_torch():
    """torch, or TargetError saying how to install it."""
    try:
        import torch
    except ImportError:
        raise TargetError(
            "the PyTorch baseline needs torch: pip install -e '.[torch]' (on a GPU machine, a CUDA build of torch)"
        ) from None
    return torch


def torch_on(device: str):
    """torch, checked to run on `device` ("cpu" or "cuda"), or TargetError saying what is missing."""
    torch = import_torch()
    if device == "cuda" and not torch.cuda.is_available():
        raise TargetError(
            f"the PyTorch baseline on cuda needs a CUDA GPU and a CUDA build of torch (here: torch "
            f"{torch.__version__}, CUDA available: no)"
        )
    return torch


def _attributes(node: onnx.NodeProto) -> dict:
    return {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}


def _refusal(node: onnx.NodeProto) -> str | None:
    """Why the baseline cannot run this convolution node as ONNX defines it, or None."""
    attrs = _attributes(node)
    if attrs.get("auto_pad", b"NOTSET") != b"NOTSET":
        return f"{node.op_type} {node.name!r}: the PyTorch baseline takes explicit pads, not auto_pad"
    if "output_shape" in attrs:
        return f"{node.op_type} {node.name!r}: the PyTorch baseline takes pads and output_padding, not output_shape"
    return None


def _spatial_padding(attrs: dict, rank: int) -> tuple[list[int], list[int]]:
    pads = list(attrs.get("pads", [0] * (2 * rank)))
    return pads[:rank], pads[rank:]


def _conv(torch, attrs, x, w, b):
    F = torch.nn.functional
    rank = x.dim() - 2
    begin, end = _spatial_padding(attrs, rank)
    if begin != end:
        # torch pads symmetrically; F.pad takes (last dim begin, end, previous dim begin, end, ...).
        x = F.pad(x, [p for d in reversed(range(rank)) for p in (begin[d], end[d])])
        begin = [0] * rank
    conv = (F.conv1d, F.conv2d, F.conv3d)[rank - 1]
    return conv(
        x, w, b, stride=attrs.get("strides", [1] * rank), padding=begin,
        dilation=attrs.get("dilations", [1] * rank), groups=attrs.get("group", 1),
    )


def _conv_transpose(torch, attrs, x, w, b):
    F = torch.nn.functional
    rank = x.dim() - 2
    begin, end = _spatial_padding(attrs, rank)
    symmetric = begin == end
    conv_transpose = (F.conv_transpose1d, F.conv_transpose2d, F.conv_transpose3d)[rank - 1]
    y = conv_transpose(
        x, w, b, stride=attrs.get("strides", [1] * rank), padding=begin if symmetric else 0,
        output_padding=attrs.get("output_padding", [0] * rank), groups=attrs.get("group", 1),
        dilation=attrs.get("dilations", [1] * rank),
    )
    if symmetric:
        return y
    crop = tuple(slice(begin[d], y.shape[2 + d] - end[d]) for d in range(rank))
    return y[(slice(None), slice(None), *crop)].contiguous()


_ELEMENTWISE = {
    "Add": lambda torch, a, b: a + b,
    "Sub": lambda torch, a, b: a - b,
    "Mul": lambda torch, a, b: a * b,
    "Div": lambda torch, a, b: a / b,
    "Sin": lambda torch, a: torch.sin(a),
    "Exp": lambda torch, a: torch.exp(a),
    "Tanh": lambda torch, a: torch.tanh(a),
    "Relu": lambda torch, a: torch.relu(a),
    "Identity": lambda torch, a: a,
}
_CONVOLUTIONS = {"Conv": _conv, "ConvTranspose": _conv_transpose}


@dataclass
class TorchGraph:
    """An ONNX graph ready to run in PyTorch eager on `device` ("cpu" or "cuda")."""

    model: onnx.ModelProto
    device: str

    def __post_init__(self) -> None:
        self.torch = torch_on(self.device)
        unsupported = sorted({n.op_type for n in self.model.graph.node} - set(_ELEMENTWISE) - set(_CONVOLUTIONS))
        if unsupported:
            raise UnsupportedModelError(
                f"the PyTorch baseline runs {sorted({*_ELEMENTWISE, *_CONVOLUTIONS})} only; this graph also has "
                f"{unsupported}"
            )
        refusals = [r for n in self.model.graph.node if n.op_type in _CONVOLUTIONS and (r := _refusal(n))]
        if refusals:
            raise UnsupportedModelError("; ".join(refusals))
        if self.device == "cuda":
            self.torch.backends.cuda.matmul.allow_tf32 = False
            self.torch.backends.cudnn.allow_tf32 = False
            self.torch.backends.cudnn.benchmark = True
        self.weights = {
            init.name: self.torch.from_numpy(numpy_helper.to_array(init).copy()).to(self.device)
            for init in self.model.graph.initializer
        }
        self.input_names = [spec.name for spec in graph_inputs(self.model)]
        self.output_names = [v.name for v in self.model.graph.output]

    @classmethod
    def load(cls, path: Path | str, device: str) -> TorchGraph:
        return cls(onnx.load(str(path)), device)

    def to_device(self, inputs: list[np.ndarray]) -> list:
        return [self.torch.from_numpy(np.ascontiguousarray(x)).to(self.device) for x in inputs]

    def forward(self, tensors: list) -> list:
        """Run on torch tensors already on the device; returns the outputs as torch tensors."""
        values = dict(self.weights)
        values.update(zip(self.input_names, tensors))
        for node in self.model.graph.node:
            args = [values[name] if name else None for name in node.input]
            if node.op_type in _CONVOLUTIONS:
                x, w, b = (args + [None])[:3]
                result = _CONVOLUTIONS[node.op_type](self.torch, _attributes(node), x, w, b)
            else:
                result = _ELEMENTWISE[node.op_type](self.torch, *args)
            values[node.output[0]] = result
        return [values[name] for name in self.output_names]

    def run(self, inputs: list[np.ndarray]) -> list[np.ndarray]:
        with self.torch.inference_mode():
            return [y.cpu().numpy() for y in self.forward(self.to_device(inputs))]

    def time(self, inputs: list[np.ndarray], repeats: int, min_repeat_ms: float = 200) -> Timing:
        """Per-call latency over `repeats` batches of calls, each at least min_repeat_ms, after
        warm-up calls (which also let cuDNN choose its algorithms)."""
        with self.torch.inference_mode():
            tensors = self.to_device(inputs)
            return time_on(self.device, lambda: self.forward(tensors), repeats, min_repeat_ms)


def _cuda_event_ms(torch):
    def elapsed_ms(call, calls: int) -> float:
        start, stop = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        for _ in range(calls):
            call()
        stop.record()
        stop.synchronize()
        return start.elapsed_time(stop)

    return elapsed_ms


def time_on(device: str, call, repeats: int, min_repeat_ms: float) -> Timing:
    """runtime.time_calls, with CUDA events around each batch on a GPU (kernels run asynchronously)."""
    elapsed_ms = _cuda_event_ms(import_torch()) if device == "cuda" else wall_clock_ms
    return time_calls(call, repeats, min_repeat_ms, elapsed_ms)


def describe(device: str) -> str:
    """What the baseline is, for reports: torch version, device, and the fp32 settings."""
    torch = import_torch()
    if device == "cuda":
        return (
            f"PyTorch {torch.__version__} eager on {torch.cuda.get_device_name()} "
            f"(cuDNN {torch.backends.cudnn.version()}, fp32, TF32 off, cudnn.benchmark)"
        )
    return f"PyTorch {torch.__version__} eager on CPU ({torch.get_num_threads()} threads)"


def matmul_peak_gflops(device: str, size: int = 8192) -> float:
    """Best fp32 GFLOP/s of a large torch matmul on `device` (TF32 off): the GPU's practical peak."""
    torch = torch_on(device)
    torch.backends.cuda.matmul.allow_tf32 = False
    a = torch.randn(size, size, device=device)
    b = torch.randn(size, size, device=device)
    best_ms = time_on(device, lambda: a @ b, repeats=5, min_repeat_ms=50).min_ms
    return 2 * size**3 / (best_ms / 1e3) / 1e9
