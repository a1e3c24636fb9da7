"""`graphs`: list the named graphs of a config, or export one as ONNX."""

from __future__ import annotations

import argparse
from pathlib import Path

from ..graphs import export_graph, list_graphs, load_config
from .options import add_graph_arguments, graph_selection

HELP = "list the named Oobleck graphs, or write one as an .onnx file (--export)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_graph_arguments(parser, required=False)
    parser.add_argument("--export", type=Path, metavar="FILE", help="write --graph as ONNX to FILE")


def run(args: argparse.Namespace) -> int:
    if args.export:
        path = export_graph(graph_selection(args).resolve(), args.export)
        print(f"wrote {path}")
        return 0
    config = load_config(args.config)
    print(f"config {config.name}: {config.description}")
    for info in list_graphs(config):
        print(f"  {info.name:8s} {info.description}")
    return 0
