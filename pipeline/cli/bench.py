"""`bench`: ours vs onnxruntime (and optionally TVM's stock lowering), side by side in one run."""

from __future__ import annotations

import argparse
from pathlib import Path

from ..artifact import ARTIFACTS_DIR
from ..bench import BASELINES, BenchOptions, bench, markdown_table
from ..build import DEFAULT_GRAPHS
from ..graphs import DEFAULT_CONFIG, DEFAULT_LATENT_FRAMES
from ..target import DEFAULT_CUDA_ARCH
from ..tuning import SCHEDULES_DIR
from .options import add_input_shape_argument, input_shapes, target_choice

HELP = (
    "time our build against onnxruntime (CPU) or PyTorch eager (CUDA) on the same inputs; writes "
    "artifacts/bench/bench.{json,md,png}"
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--graph", action="append", help="a named graph; repeat for more (default convt1..convt5)")
    parser.add_argument(
        "--onnx", action="append", type=Path, default=[],
        help="an ONNX file (row named after the file; symbolic input dimensions need --input-shape); repeat for more",
    )
    add_input_shape_argument(parser)
    parser.add_argument("--config", default=DEFAULT_CONFIG)
    parser.add_argument("--latent-frames", "-T", type=int, default=DEFAULT_LATENT_FRAMES)
    parser.add_argument("--target", default="cpu", help="'cpu' (default), 'cuda', or a TVM target dict as JSON")
    parser.add_argument("--arch", help=f"GPU architecture of --target cuda (default {DEFAULT_CUDA_ARCH})")
    parser.add_argument("--repeats", type=int, default=10, help="timed repeats per side (each >= 200 ms)")
    parser.add_argument(
        "--baseline", choices=BASELINES,
        help="what to compare with: onnxruntime (default on cpu) or torch (PyTorch eager; default on cuda)",
    )
    parser.add_argument("--with-stock", action="store_true", help="also build and time TVM's stock lowering (slow)")
    parser.add_argument("--schedules", type=Path, default=SCHEDULES_DIR)
    parser.add_argument("--out", type=Path, default=ARTIFACTS_DIR / "bench", help="where the report goes")
    parser.add_argument("--artifacts", type=Path, default=ARTIFACTS_DIR, help="where the builds it times go")


def run(args: argparse.Namespace) -> int:
    report = bench(BenchOptions(
        graphs=args.graph or ([] if args.onnx else list(DEFAULT_GRAPHS)), onnx_files=args.onnx,
        input_shapes=input_shapes(args),
        config=args.config, latent_frames=args.latent_frames, target=target_choice(args), schedules=args.schedules,
        artifacts=args.artifacts, out=args.out, repeats=args.repeats, with_stock=args.with_stock,
        baseline=args.baseline,
    ))
    print(markdown_table(report))
    print(f"wrote {args.out}/bench.json, bench.md" + (", bench.png" if (args.out / "bench.png").exists() else ""))
    return 0
