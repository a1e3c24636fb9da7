"""`run ARTIFACT --input x.npy --output y.npy|y.wav [--chunk-overlap N]`: run a saved artifact on numpy files."""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from ..errors import InputError
from ..runtime import load, run_chunked
from ..wav import DEFAULT_SAMPLE_RATE, write_wav
from .options import read_npy_inputs

HELP = "run a saved artifact on .npy inputs and write .npy outputs (or audio as .wav)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("artifact", type=Path, help="artifact folder (artifacts/<graph>/<target-key>)")
    parser.add_argument("--input", type=Path, action="append", required=True, help=".npy file, once per input in order")
    parser.add_argument(
        "--output", type=Path, action="append", required=True,
        help=".npy file, once per output in order; a .wav name writes audio (channels x samples) as 32-bit float WAV",
    )
    parser.add_argument(
        "--sample-rate", type=int, default=DEFAULT_SAMPLE_RATE, metavar="HZ",
        help=f"sample rate of .wav outputs (default {DEFAULT_SAMPLE_RATE}, Stable Audio Open's)",
    )
    parser.add_argument(
        "--chunk-overlap", type=int, metavar="FRAMES",
        help="run an input longer than the artifact's chunk in chunks overlapping by FRAMES (32 for the decoder: "
             "exact there, see pipeline.runtime.run_chunked)",
    )


def run(args: argparse.Namespace) -> int:
    model = load(args.artifact)
    if len(args.output) != len(model.outputs):
        raise InputError(f"the model has {len(model.outputs)} output(s); give --output that many times")
    inputs = read_npy_inputs(args.input)
    if args.chunk_overlap is None:
        outputs = model.run(inputs)
    elif len(inputs) != 1:
        raise InputError(f"--chunk-overlap runs a model with one input; got {len(inputs)} --input files")
    else:
        outputs = [run_chunked(model, inputs[0], args.chunk_overlap)]
    for path, array, spec in zip(args.output, outputs, model.outputs):
        if path.suffix.lower() == ".wav":
            write_wav(path, array, args.sample_rate)
            print(f"wrote {path}: {spec.name} {array.dtype}{list(array.shape)}, {array.shape[-1] / args.sample_rate:.2f} s "
                  f"at {args.sample_rate} Hz")
            continue
        path.parent.mkdir(parents=True, exist_ok=True)
        np.save(path, array)
        print(f"wrote {path}: {spec.name} {array.dtype}{list(array.shape)}")
    return 0
