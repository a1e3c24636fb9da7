"""Arguments shared by the verbs: a graph, a target, .npy input files."""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from ..errors import GraphError, InputError, TargetError
from ..lowering import DEFAULT_LOWERING, LOWERINGS
from ..graphs import DEFAULT_CONFIG, DEFAULT_LATENT_FRAMES, DEFAULT_SEED, GraphSelection
from ..target import DEFAULT_CUDA_ARCH


def add_graph_arguments(parser: argparse.ArgumentParser, required: bool) -> None:
    group = parser.add_mutually_exclusive_group(required=required)
    group.add_argument("--graph", help="a named graph (see `python -m pipeline graphs`)")
    group.add_argument("--onnx", type=Path, help="any ONNX file instead of a named graph")
    parser.add_argument("--config", default=DEFAULT_CONFIG, help="Oobleck config: sao (default), tiny, or a JSON path")
    parser.add_argument(
        "--latent-frames", "-T", type=int, default=DEFAULT_LATENT_FRAMES,
        help=f"chunk length in latent frames (default {DEFAULT_LATENT_FRAMES})",
    )
    parser.add_argument("--seed", type=int, default=DEFAULT_SEED, help="weight seed of the named graphs")
    add_input_shape_argument(parser)


def input_shape(text: str) -> tuple[str, tuple[int, ...]]:
    """NAME=D0,D1,... (the name may itself hold '=')."""
    name, _, sizes = text.rpartition("=")
    try:
        shape = tuple(int(size) for size in sizes.split(","))
    except ValueError:
        shape = ()
    if not name or not shape:
        raise argparse.ArgumentTypeError(f"{text!r} is not NAME=D0,D1,... (e.g. latents=1,64,128)")
    return name, shape


def add_input_shape_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--input-shape", type=input_shape, action="append", default=[], metavar="NAME=D0,D1,...",
        help="the static shape of an input of --onnx whose dimensions are symbolic (exported with dynamic "
        "axes), e.g. latents=1,64,128; repeat for more inputs",
    )


def input_shapes(args: argparse.Namespace) -> dict[str, tuple[int, ...]]:
    shapes: dict[str, tuple[int, ...]] = {}
    for name, shape in args.input_shape:
        if shapes.setdefault(name, shape) != shape:
            raise GraphError(f"--input-shape gives {name!r} two shapes, {list(shapes[name])} and {list(shape)}")
    return shapes


def add_target_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--target", default="cpu",
        help="'cpu' (this machine, detected), 'cuda', or a TVM target dict as JSON (default cpu)",
    )
    parser.add_argument(
        "--arch", help=f"GPU architecture of --target cuda (default {DEFAULT_CUDA_ARCH}: H100/H200)",
    )
    parser.add_argument(
        "--lowering", choices=LOWERINGS, default=DEFAULT_LOWERING,
        help="ConvTranspose lowering: zero-waste GEMM + col2im (default) or TVM's stock zero-dilated conv",
    )


def target_choice(args: argparse.Namespace) -> str | dict:
    if args.arch is None:
        return args.target
    if args.target != "cuda":
        raise TargetError(f"--arch applies to --target cuda, not to {args.target!r}")
    return {"kind": "cuda", "arch": args.arch}


def graph_selection(args: argparse.Namespace) -> GraphSelection:
    return GraphSelection(
        graph=args.graph, onnx=args.onnx, config=args.config,
        latent_frames=args.latent_frames, seed=args.seed, input_shapes=input_shapes(args),
    )


def read_npy_inputs(paths: list[Path]) -> list[np.ndarray]:
    """The arrays of --input .npy files, in order."""
    inputs = []
    for path in paths:
        try:
            inputs.append(np.load(path, allow_pickle=False))
        except (OSError, ValueError) as exc:
            raise InputError(f"cannot read {path} as a .npy array ({exc})") from exc
    return inputs
