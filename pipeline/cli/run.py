"""`run ARTIFACT --input x.npy --output y.npy [--chunk-overlap N]`: run a saved artifact on numpy files."""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from ..errors import InputError
from ..runtime import load, run_chunked

HELP = "run a saved artifact on .npy inputs and write .npy outputs"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("artifact", type=Path, help="artifact folder (artifacts/<graph>/<target-key>)")
    parser.add_argument("--input", type=Path, action="append", required=True, help=".npy file, once per input in order")
    parser.add_argument("--output", type=Path, action="append", required=True, help=".npy file, once per output in order")
    parser.add_argument(
        "--chunk-overlap", type=int, metavar="FRAMES",
        help="run an input longer than the artifact's chunk in chunks overlapping by FRAMES (32 for the decoder: "
             "exact there, see pipeline.runtime.run_chunked)",
    )


def run(args: argparse.Namespace) -> int:
    model = load(args.artifact)
    if len(args.output) != len(model.outputs):
        raise InputError(f"the model has {len(model.outputs)} output(s); give --output that many times")
    inputs = []
    for path in args.input:
        try:
            inputs.append(np.load(path, allow_pickle=False))
        except (OSError, ValueError) as exc:
            raise InputError(f"cannot read {path} as a .npy array ({exc})") from exc
    if args.chunk_overlap is None:
        outputs = model.run(inputs)
    elif len(inputs) != 1:
        raise InputError(f"--chunk-overlap runs a model with one input; got {len(inputs)} --input files")
    else:
        outputs = [run_chunked(model, inputs[0], args.chunk_overlap)]
    for path, array, spec in zip(args.output, outputs, model.outputs):
        path.parent.mkdir(parents=True, exist_ok=True)
        np.save(path, array)
        print(f"wrote {path}: {spec.name} {array.dtype}{list(array.shape)}")
    return 0
