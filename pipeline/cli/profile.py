"""`profile ARTIFACT [--input x.npy ...] [--repeats N] [--top N] [--json FILE]`: each kernel's time."""

from __future__ import annotations

import argparse
from pathlib import Path

from ..profile import ProfileOptions, format_profile, profile_artifact, write_json
from .options import read_npy_inputs

HELP = "time each kernel of a saved artifact on this machine, slowest first"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("artifact", type=Path, help="artifact folder (artifacts/<graph>/<target-key>)")
    parser.add_argument(
        "--input", type=Path, action="append",
        help=".npy file, once per input in order (default: seeded random inputs, as the build verifies with)",
    )
    parser.add_argument("--repeats", type=int, default=10, help="profiled calls; each kernel's median is taken")
    parser.add_argument("--top", type=int, help="show the N slowest kernels and sum the rest in one row")
    parser.add_argument("--json", type=Path, help="also write the profile as JSON to this file")


def run(args: argparse.Namespace) -> int:
    inputs = read_npy_inputs(args.input) if args.input else None
    profile = profile_artifact(ProfileOptions(args.artifact, repeats=args.repeats, inputs=inputs))
    print(format_profile(profile, args.top))
    if args.json:
        write_json(profile, args.json)
        print(f"wrote {args.json}")
    return 0
