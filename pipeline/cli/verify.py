"""`verify ARTIFACT`: re-run the onnxruntime check on a saved artifact."""

from __future__ import annotations

import argparse
from pathlib import Path

from ..verify import format_check, format_float64, verify_artifact

HELP = "re-run the onnxruntime comparison on a saved artifact"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("artifact", type=Path, help="artifact folder (artifacts/<graph>/<target-key>)")


def run(args: argparse.Namespace) -> int:
    verification = verify_artifact(args.artifact)
    for check in verification.outputs:
        print(format_check(check, verification))
    for check in verification.float64 or []:
        print(format_float64(check))
    return 0 if verification.passed else 1
