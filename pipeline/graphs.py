"""Oobleck decoder graphs as ONNX: configs, deterministic weights and the named graphs.

The decoder follows stable-audio-tools (`OobleckDecoder`): a k7 input conv, one `DecoderBlock`
per stride (SnakeBeta -> weight-normed ConvTranspose1d -> residual units with dilation 1, 3, 9),
then SnakeBeta and a k7 output conv. Weight norm is folded into each weight, as an exporter would.

Named graphs, for a chunk of T latent frames:
  convt1..convt5  one ConvTranspose1d each (block i's upsampler), input (1, Cin, L_i)
  block1..block5  one whole DecoderBlock each
  decoder         latents (1, latent_dim, T) -> audio (1, out_channels, 2048*T) for SAO 1.0
"""

from __future__ import annotations

import json
import logging
import math
import zlib
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from .data_files import data_folder
from .errors import GraphError
from .onnx_shapes import infer_shapes, value_shapes
from .passes.fold_shape_arithmetic import fold_shape_arithmetic

log = logging.getLogger(__name__)

GRAPHS_DIR = data_folder("graphs")
# GraphSource.origin of a named graph: this prefix and the config's name.
ORIGIN_PREFIX = "oobleck:"
DEFAULT_CONFIG = "sao"
DEFAULT_LATENT_FRAMES = 128
DEFAULT_SEED = 0
OPSET = 17
# onnxruntime 1.31 refuses IR version 14, which onnx 1.23 writes by default.
IR_VERSION = 10
RESIDUAL_DILATIONS = (1, 3, 9)

# Gains chosen so that activations stay O(1) through all 5 blocks of the SAO decoder (the test
# suite checks every block's output): the residual branch adds a fraction of its input's energy
# and the upsampler gives a little back, so the std neither explodes nor vanishes.
CONVT_GAIN = 0.8
RESIDUAL_OUT_GAIN = 0.5


@dataclass(frozen=True)
class OobleckConfig:
    """Architecture hyper-parameters, as in the stable-audio-tools autoencoder config."""

    name: str
    description: str
    out_channels: int
    channels: int
    c_mults: tuple[int, ...]
    strides: tuple[int, ...]
    latent_dim: int
    use_snake: bool
    final_tanh: bool
    sample_rate: int

    @property
    def blocks(self) -> list[BlockShape]:
        """Decoder blocks in execution order: block 1 is the widest, nearest the latents."""
        mults = (1, *self.c_mults)
        shapes = []
        length_factor = 1
        for position, i in enumerate(range(len(self.c_mults), 0, -1), start=1):
            stride = self.strides[i - 1]
            shapes.append(
                BlockShape(
                    index=position,
                    in_channels=mults[i] * self.channels,
                    out_channels=mults[i - 1] * self.channels,
                    stride=stride,
                    length_factor=length_factor,
                )
            )
            length_factor *= stride
        return shapes

    @property
    def hop_length(self) -> int:
        """Audio samples per latent frame."""
        return math.prod(self.strides)


@dataclass(frozen=True)
class BlockShape:
    index: int
    in_channels: int
    out_channels: int
    stride: int
    length_factor: int

    @property
    def kernel(self) -> int:
        return 2 * self.stride

    @property
    def padding(self) -> int:
        return math.ceil(self.stride / 2)

    def input_length(self, latent_frames: int) -> int:
        return self.length_factor * latent_frames

    def output_length(self, latent_frames: int) -> int:
        length = self.input_length(latent_frames)
        return (length - 1) * self.stride - 2 * self.padding + self.kernel


def available_configs() -> list[str]:
    return sorted(p.stem.removeprefix("oobleck_") for p in GRAPHS_DIR.glob("oobleck_*.json"))


def load_config(name_or_path: str = DEFAULT_CONFIG) -> OobleckConfig:
    """Load `graphs/oobleck_<name>.json`, or a JSON file given by path."""
    path = Path(name_or_path)
    if not path.suffix:
        path = GRAPHS_DIR / f"oobleck_{name_or_path}.json"
    if not path.is_file():
        raise GraphError(
            f"no Oobleck config {name_or_path!r}: choose one of {available_configs()} "
            f"or give the path of a JSON file shaped like graphs/oobleck_sao.json"
        )
    data = json.loads(path.read_text())
    try:
        config = OobleckConfig(
            **{
                **data,
                "c_mults": tuple(data["c_mults"]),
                "strides": tuple(data["strides"]),
            }
        )
    except (TypeError, KeyError) as exc:
        raise GraphError(f"config {path} is malformed ({exc}); compare it with graphs/oobleck_sao.json") from exc
    if len(config.c_mults) != len(config.strides):
        raise GraphError(f"config {path}: c_mults and strides must have the same length")
    return config


# ---------------------------------------------------------------------------------------------
# Parameters


@dataclass
class Conv:
    weight: np.ndarray  # (out, in, k)
    bias: np.ndarray | None
    dilation: int = 1
    padding: int = 0


@dataclass
class ConvTranspose:
    weight: np.ndarray  # (in, out, k)
    bias: np.ndarray
    stride: int
    padding: int


@dataclass
class Snake:
    """SnakeBeta with alpha_logscale, stored as the values the forward pass uses."""

    alpha: np.ndarray  # exp(log_alpha), (C,)
    inv_beta: np.ndarray  # 1 / (exp(log_beta) + 1e-9), (C,)


@dataclass
class ResidualUnit:
    snake1: Snake
    conv1: Conv  # k7, dilated
    snake2: Snake
    conv2: Conv  # k1


@dataclass
class DecoderBlock:
    snake: Snake
    upsample: ConvTranspose
    residuals: list[ResidualUnit] = field(default_factory=list)


@dataclass
class Decoder:
    conv_in: Conv
    blocks: list[DecoderBlock]
    snake_out: Snake
    conv_out: Conv


def _rng(seed: int, name: str) -> np.random.Generator:
    # One stream per named layer: convt3 alone gets the same weights as convt3 inside the decoder.
    return np.random.default_rng([seed, zlib.crc32(name.encode())])


def _weight_norm(v: np.ndarray, g: np.ndarray) -> np.ndarray:
    """torch weight_norm with dim=0: w = g * v / ||v||, the norm over every dim but 0."""
    norm = np.sqrt((v.astype(np.float64) ** 2).reshape(v.shape[0], -1).sum(axis=1))
    return (g / norm).reshape(-1, *([1] * (v.ndim - 1))) * v


def _conv(seed, name, cin, cout, kernel, gain, *, bias=True, dilation=1) -> Conv:
    rng = _rng(seed, name)
    v = rng.standard_normal((cout, cin, kernel), dtype=np.float32)
    # Row norm `gain` gives each output the variance gain**2 * E[x**2].
    g = gain * (1.0 + 0.1 * rng.standard_normal(cout))
    b = (0.05 * rng.standard_normal(cout)).astype(np.float32) if bias else None
    weight = _weight_norm(v, g).astype(np.float32)
    return Conv(weight, b, dilation=dilation, padding=dilation * (kernel - 1) // 2)


def _conv_transpose(seed, name, cin, cout, stride, gain) -> ConvTranspose:
    rng = _rng(seed, name)
    kernel = 2 * stride
    v = rng.standard_normal((cin, cout, kernel), dtype=np.float32)
    # Each output sums cin * kernel / stride taps; weight norm's g is per *input* channel here.
    g = gain * math.sqrt(stride * cout / cin) * (1.0 + 0.1 * rng.standard_normal(cin))
    b = (0.05 * rng.standard_normal(cout)).astype(np.float32)
    return ConvTranspose(_weight_norm(v, g).astype(np.float32), b, stride, math.ceil(stride / 2))


def _snake(seed, name, channels) -> Snake:
    rng = _rng(seed, name)
    log_alpha = 0.25 * rng.standard_normal(channels)
    log_beta = 0.25 * rng.standard_normal(channels)
    return Snake(
        alpha=np.exp(log_alpha).astype(np.float32),
        inv_beta=(1.0 / (np.exp(log_beta) + 1e-9)).astype(np.float32),
    )


def block_parameters(config: OobleckConfig, index: int, seed: int = DEFAULT_SEED) -> DecoderBlock:
    shape = config.blocks[index - 1]
    prefix = f"block{index}"
    residuals = []
    for unit, dilation in enumerate(RESIDUAL_DILATIONS, start=1):
        name = f"{prefix}.res{unit}"
        c = shape.out_channels
        residuals.append(
            ResidualUnit(
                snake1=_snake(seed, f"{name}.snake1", c),
                conv1=_conv(seed, f"{name}.conv1", c, c, 7, 1.0, dilation=dilation),
                snake2=_snake(seed, f"{name}.snake2", c),
                conv2=_conv(seed, f"{name}.conv2", c, c, 1, RESIDUAL_OUT_GAIN),
            )
        )
    return DecoderBlock(
        snake=_snake(seed, f"{prefix}.snake", shape.in_channels),
        upsample=_conv_transpose(
            seed, f"{prefix}.upsample", shape.in_channels, shape.out_channels, shape.stride, CONVT_GAIN
        ),
        residuals=residuals,
    )


def decoder_parameters(config: OobleckConfig, seed: int = DEFAULT_SEED) -> Decoder:
    first, last = config.blocks[0], config.blocks[-1]
    return Decoder(
        conv_in=_conv(seed, "conv_in", config.latent_dim, first.in_channels, 7, 1.0),
        blocks=[block_parameters(config, b.index, seed) for b in config.blocks],
        snake_out=_snake(seed, "snake_out", last.out_channels),
        conv_out=_conv(seed, "conv_out", last.out_channels, config.out_channels, 7, 1.0, bias=False),
    )


# ---------------------------------------------------------------------------------------------
# ONNX


class _OnnxWriter:
    """Accumulates nodes and initializers; every tensor name is derived from a layer path."""

    def __init__(self) -> None:
        self.nodes: list[onnx.NodeProto] = []
        self.initializers: list[onnx.TensorProto] = []

    def constant(self, name: str, value: np.ndarray) -> str:
        self.initializers.append(numpy_helper.from_array(np.ascontiguousarray(value), name))
        return name

    def node(self, op: str, inputs: list[str], output: str, **attrs) -> str:
        self.nodes.append(helper.make_node(op, inputs, [output], name=output, **attrs))
        return output

    def conv(self, x: str, p: Conv, name: str) -> str:
        inputs = [x, self.constant(f"{name}.weight", p.weight)]
        if p.bias is not None:
            inputs.append(self.constant(f"{name}.bias", p.bias))
        return self.node(
            "Conv", inputs, f"{name}.out", kernel_shape=[p.weight.shape[2]],
            dilations=[p.dilation], pads=[p.padding, p.padding], strides=[1],
        )

    def conv_transpose(self, x: str, p: ConvTranspose, name: str) -> str:
        inputs = [x, self.constant(f"{name}.weight", p.weight), self.constant(f"{name}.bias", p.bias)]
        return self.node(
            "ConvTranspose", inputs, f"{name}.out", kernel_shape=[p.weight.shape[2]],
            strides=[p.stride], pads=[p.padding, p.padding],
        )

    def snake(self, x: str, p: Snake, name: str) -> str:
        """x + inv_beta * sin(alpha * x)^2, alpha and inv_beta broadcast as (1, C, 1)."""
        alpha = self.constant(f"{name}.alpha", p.alpha.reshape(1, -1, 1))
        inv_beta = self.constant(f"{name}.inv_beta", p.inv_beta.reshape(1, -1, 1))
        s = self.node("Sin", [self.node("Mul", [x, alpha], f"{name}.ax")], f"{name}.sin")
        s2 = self.node("Mul", [s, s], f"{name}.sin2")
        return self.node("Add", [x, self.node("Mul", [s2, inv_beta], f"{name}.scaled")], f"{name}.out")

    def residual(self, x: str, p: ResidualUnit, name: str) -> str:
        h = self.conv(self.snake(x, p.snake1, f"{name}.snake1"), p.conv1, f"{name}.conv1")
        h = self.conv(self.snake(h, p.snake2, f"{name}.snake2"), p.conv2, f"{name}.conv2")
        return self.node("Add", [x, h], f"{name}.out")

    def block(self, x: str, p: DecoderBlock, name: str) -> str:
        h = self.conv_transpose(self.snake(x, p.snake, f"{name}.snake"), p.upsample, f"{name}.upsample")
        for unit, res in enumerate(p.residuals, start=1):
            h = self.residual(h, res, f"{name}.res{unit}")
        return h

    def decoder(self, x: str, p: Decoder, config: OobleckConfig) -> str:
        h = self.conv(x, p.conv_in, "conv_in")
        for index, block in enumerate(p.blocks, start=1):
            h = self.block(h, block, f"block{index}")
        h = self.conv(self.snake(h, p.snake_out, "snake_out"), p.conv_out, "conv_out")
        if config.final_tanh:
            h = self.node("Tanh", [h], "tanh.out")
        return h

    def model(self, graph_name: str, inputs, outputs, produced: str) -> onnx.ModelProto:
        (out_name, out_shape), = outputs
        self.nodes.append(helper.make_node("Identity", [produced], [out_name], name=out_name))
        graph = helper.make_graph(
            self.nodes,
            graph_name,
            [helper.make_tensor_value_info(n, TensorProto.FLOAT, s) for n, s in inputs],
            [helper.make_tensor_value_info(out_name, TensorProto.FLOAT, out_shape)],
            initializer=self.initializers,
        )
        model = helper.make_model(
            graph, opset_imports=[helper.make_opsetid("", OPSET)], ir_version=IR_VERSION,
            producer_name="pipeline.graphs",
        )
        onnx.checker.check_model(model, full_check=True)
        return model


@dataclass(frozen=True)
class GraphInfo:
    """A named graph of one config, before any weights are made."""

    name: str
    kind: str  # "convt", "block" or "decoder"
    description: str
    block: BlockShape | None = None


@dataclass
class GraphSource:
    """An ONNX model ready for the build, with where it came from."""

    name: str
    model: onnx.ModelProto
    origin: str  # "oobleck:<config>" or the path of a user's ONNX file
    latent_frames: int | None = None
    seed: int | None = None
    # The shapes given to a user's ONNX file whose inputs had symbolic dimensions.
    input_shapes: dict[str, list[int]] | None = None


def list_graphs(config: OobleckConfig) -> list[GraphInfo]:
    graphs = []
    for b in config.blocks:
        graphs.append(
            GraphInfo(
                f"convt{b.index}", "convt",
                f"ConvTranspose1d {b.in_channels}->{b.out_channels} k{b.kernel} s{b.stride} p{b.padding}, "
                f"input length {b.length_factor}T",
                b,
            )
        )
    for b in config.blocks:
        graphs.append(
            GraphInfo(
                f"block{b.index}", "block",
                f"DecoderBlock {b.in_channels}->{b.out_channels} stride {b.stride} "
                f"(SnakeBeta, ConvTranspose, 3 residual units), input length {b.length_factor}T",
                b,
            )
        )
    graphs.append(
        GraphInfo(
            "decoder", "decoder",
            f"whole decoder, latents (1, {config.latent_dim}, T) -> audio "
            f"(1, {config.out_channels}, {config.hop_length}T)",
        )
    )
    return graphs


def graph_info(config: OobleckConfig, name: str) -> GraphInfo:
    for info in list_graphs(config):
        if info.name == name:
            return info
    names = ", ".join(g.name for g in list_graphs(config))
    raise GraphError(f"no graph named {name!r} in config {config.name!r}: choose one of {names}, or pass --onnx PATH")


def make_graph(
    name: str,
    config: OobleckConfig | str = DEFAULT_CONFIG,
    latent_frames: int = DEFAULT_LATENT_FRAMES,
    seed: int = DEFAULT_SEED,
) -> GraphSource:
    """Generate the named Oobleck graph as a checked ONNX model for a chunk of `latent_frames`."""
    if isinstance(config, str):
        config = load_config(config)
    if latent_frames < 1:
        raise GraphError(f"latent_frames must be at least 1, got {latent_frames}")
    info = graph_info(config, name)
    writer = _OnnxWriter()
    if info.kind == "decoder":
        params = decoder_parameters(config, seed)
        inputs = [("latents", [1, config.latent_dim, latent_frames])]
        produced = writer.decoder("latents", params, config)
        outputs = [("audio", [1, config.out_channels, config.hop_length * latent_frames])]
    else:
        b = info.block
        params = block_parameters(config, b.index, seed)
        inputs = [("x", [1, b.in_channels, b.input_length(latent_frames)])]
        if info.kind == "convt":
            produced = writer.conv_transpose("x", params.upsample, f"block{b.index}.upsample")
        else:
            produced = writer.block("x", params, f"block{b.index}")
        outputs = [("y", [1, b.out_channels, b.output_length(latent_frames)])]
    model = writer.model(f"oobleck_{config.name}_{name}_T{latent_frames}", inputs, outputs, produced)
    return GraphSource(name, model, f"{ORIGIN_PREFIX}{config.name}", latent_frames, seed)


def _shape_text(dims) -> str:
    return "[" + ", ".join(str(d.dim_value) if d.HasField("dim_value") else repr(d.dim_param or "?") for d in dims) + "]"


def fix_input_shapes(model: onnx.ModelProto, shapes: dict[str, tuple[int, ...]], origin: str) -> None:
    """Give the inputs of a model exported with dynamic axes (symbolic dimensions such as 'T' or
    'batch') the static shapes we compile for, in place. A symbolic name takes its size wherever
    the model uses it; the output shapes are then inferred from the inputs."""
    initializers = {init.name for init in model.graph.initializer}
    inputs = {value.name: value for value in model.graph.input if value.name not in initializers}
    sizes: dict[str, int] = {}
    for name, shape in shapes.items():
        if name not in inputs:
            raise GraphError(f"{origin} has no input {name!r} to give a shape; its inputs are {sorted(inputs)}")
        dims = inputs[name].type.tensor_type.shape.dim
        declared = _shape_text(dims)
        if len(shape) != len(dims) or any(size < 1 for size in shape):
            raise GraphError(
                f"input {name!r} of {origin} has shape {declared}: give it {len(dims)} sizes of at least 1, "
                f"got {list(shape)}"
            )
        for dim, size in zip(dims, shape):
            if dim.HasField("dim_value") and dim.dim_value > 0 and dim.dim_value != size:
                raise GraphError(
                    f"input {name!r} of {origin} has shape {declared}, and {list(shape)} changes a size "
                    f"fixed in the model: only its symbolic sizes can be chosen"
                )
            if dim.dim_param and sizes.setdefault(dim.dim_param, size) != size:
                raise GraphError(
                    f"dimension {dim.dim_param!r} of {origin} is given two sizes, {sizes[dim.dim_param]} and "
                    f"{size}: inputs that share it must agree"
                )
            dim.Clear()
            dim.dim_value = size
    for value in [*model.graph.input, *model.graph.output, *model.graph.value_info]:
        for dim in value.type.tensor_type.shape.dim:
            if dim.dim_param in sizes:
                size = sizes[dim.dim_param]
                dim.Clear()
                dim.dim_value = size
    try:
        inferred = infer_shapes(model, strict_mode=True)
    except onnx.shape_inference.InferenceError as exc:
        raise GraphError(
            f"{origin} with input shapes {shapes} fails ONNX shape inference: "
            f"{str(exc).strip().splitlines()[0]}; check the sizes"
        ) from exc
    for output, shaped in zip(model.graph.output, inferred.graph.output):
        dims = shaped.type.tensor_type.shape.dim
        if dims and all(d.HasField("dim_value") for d in dims):
            output.type.tensor_type.shape.CopyFrom(shaped.type.tensor_type.shape)


def load_onnx_file(path: str | Path, input_shapes: dict[str, tuple[int, ...]] | None = None) -> GraphSource:
    """Read a user's ONNX file, with `input_shapes` for its symbolic input dimensions (see
    fix_input_shapes); the graph is named after the file."""
    path = Path(path)
    if not path.is_file():
        raise GraphError(f"ONNX file {path} does not exist")
    try:
        model = onnx.load(str(path))
    except Exception as exc:  # onnx raises DecodeError, ValueError, ... for damaged files
        raise GraphError(f"{path} is not a readable ONNX model ({exc}); export it again") from exc
    if input_shapes:
        fix_input_shapes(model, input_shapes, str(path))
    try:
        onnx.checker.check_model(model, full_check=True)
    except (onnx.checker.ValidationError, onnx.shape_inference.InferenceError) as exc:
        raise GraphError(
            f"{path} fails onnx.checker (with shape inference): {str(exc).strip().splitlines()[0]}; fix the exporter"
        ) from exc
    fixed = {name: list(shape) for name, shape in input_shapes.items()} if input_shapes else None
    return GraphSource(path.stem, model, str(path.resolve()), input_shapes=fixed)


def export_graph(source: GraphSource, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(source.model, str(path))
    return path


@dataclass
class GraphSelection:
    """What the user asked for: a named Oobleck graph, or an ONNX file by path."""

    graph: str | None = None
    onnx: Path | None = None
    config: str = DEFAULT_CONFIG
    latent_frames: int = DEFAULT_LATENT_FRAMES
    seed: int = DEFAULT_SEED
    # For an ONNX file exported with dynamic axes: input name -> the static shape to compile for.
    input_shapes: dict[str, tuple[int, ...]] = field(default_factory=dict)

    @property
    def name(self) -> str:
        """The graph's name, as resolve() gives it: the named graph, or the ONNX file's stem."""
        return self.graph if self.graph is not None else Path(self.onnx).stem

    def resolve(self) -> GraphSource:
        if (self.graph is None) == (self.onnx is None):
            raise GraphError("name exactly one graph: a named graph (--graph) or an ONNX file (--onnx)")
        if self.onnx is not None:
            return load_onnx_file(self.onnx, self.input_shapes)
        if self.input_shapes:
            raise GraphError(
                f"input shapes are for an ONNX file (--onnx); the named graph {self.graph!r} takes its "
                f"length from --latent-frames"
            )
        return make_graph(self.graph, self.config, self.latent_frames, self.seed)


def useful_flops(model: onnx.ModelProto) -> int:
    """Multiply-adds x 2 of every Conv, ConvTranspose, MatMul and Gemm node: the work an ideal
    kernel must do.

    ConvTranspose counts 2 * N * Cin * Cout/group * prod(kernel) * prod(input spatial), i.e. no
    multiplication by inserted zeros; Conv counts the same per output position; MatMul and Gemm
    2 * K per output element. Shape arithmetic is folded first, as for the import (an exported
    Pad's pads are computed); a node whose shapes stay unknown is left out, and the log says which."""
    shapes = value_shapes(fold_shape_arithmetic(model)[0], data_prop=True)
    total = 0
    for node in model.graph.node:
        if node.op_type not in ("Conv", "ConvTranspose", "MatMul", "Gemm"):
            continue
        x, w, y = shapes.get(node.input[0]), shapes.get(node.input[1]), shapes.get(node.output[0])
        if any(shape is None or None in shape for shape in (x, w, y)):
            log.warning("useful FLOPs leave out %s node %r: its shapes are not static", node.op_type, node.name)
            continue
        if node.op_type == "ConvTranspose":
            total += 2 * x[0] * w[0] * w[1] * math.prod(w[2:]) * math.prod(x[2:])
        elif node.op_type == "Conv":
            total += 2 * y[0] * w[0] * w[1] * math.prod(w[2:]) * math.prod(y[2:])
        else:
            trans_a = any(a.name == "transA" and a.i for a in node.attribute)
            reduction = x[-2] if node.op_type == "Gemm" and trans_a else x[-1]
            total += 2 * math.prod(y) * reduction
    return total
