"""Command line: `python -m pipeline <verb>`. Each verb lives in its own module and only parses
arguments, calls one documented library function and prints its result."""

from __future__ import annotations

import argparse
import logging
import sys

from ..errors import PipelineError
from . import bench, build, conformance, graphs, profile, run, tune, verify

VERBS = {
    "graphs": graphs, "build": build, "tune": tune, "verify": verify, "run": run, "bench": bench,
    "profile": profile, "conformance": conformance,
}


def _configure_logging(verbose: bool) -> None:
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stderr)
    if not verbose:
        # MetaSchedule reports every batch at INFO; our own progress lines say what matters.
        logging.getLogger("tvm").setLevel(logging.WARNING)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m pipeline",
        description="Compile ConvTranspose-heavy ONNX graphs (the Oobleck decoder) with TVM, verified against onnxruntime.",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="show TVM's own log lines too")
    verbs = parser.add_subparsers(dest="verb", required=True, metavar="VERB")
    for name, module in VERBS.items():
        sub = verbs.add_parser(name, help=module.HELP, description=module.HELP)
        module.add_arguments(sub)
        sub.set_defaults(handler=module.run)
    args = parser.parse_args(argv)
    _configure_logging(args.verbose)
    try:
        return args.handler(args)
    except PipelineError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
