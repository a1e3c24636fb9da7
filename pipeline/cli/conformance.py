"""`conformance`: build every ConvTranspose case of the table and check it against onnxruntime and numpy."""

from __future__ import annotations

import argparse
from pathlib import Path

from ..artifact import ARTIFACTS_DIR
from ..conformance import CASES_FILE, ConformanceOptions, markdown_table, run_conformance
from ..tuning import SCHEDULES_DIR

HELP = "run the ConvTranspose conformance table (graphs/convtranspose_conformance.jsonl)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--cases", type=Path, default=CASES_FILE, help="JSON-lines case table")
    parser.add_argument("--target", default="cpu", help="'cpu' (default) or a TVM target dict as JSON")
    parser.add_argument("--out", type=Path, default=ARTIFACTS_DIR / "conformance", help="where the matrix and builds go")
    parser.add_argument("--schedules", type=Path, default=SCHEDULES_DIR)


def run(args: argparse.Namespace) -> int:
    report = run_conformance(ConformanceOptions(args.cases, args.target, args.out, args.schedules))
    print(markdown_table(report))
    print(f"wrote {args.out / 'conformance.json'} and conformance.md")
    return 0 if report.passed else 1
