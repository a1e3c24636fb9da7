import os

import pytest

# pipeline before tvm: importing pipeline loads the stand-in libcuda.so.1 where there is no NVIDIA
# driver, and TVM, imported first, would build CUDA modules holding source only (cuda_driver).
from pipeline.build import BuildOptions, build
from pipeline.graphs import GraphSelection, list_graphs, load_config

import tvm  # noqa: I001
import tvm_ffi

TINY_FRAMES = 2


def tir_loops(func: tvm.tirx.PrimFunc) -> list[tvm.tirx.For]:
    """Every loop of a kernel, outermost first."""
    loops = []
    tvm_ffi.structural_walk(func.body, [(tvm.tirx.For, loops.append)], order="pre")
    return loops


def pytest_collection_modifyitems(config, items):
    if os.environ.get("PIPELINE_SLOW_TESTS") == "1":
        return
    skip = pytest.mark.skip(reason="SAO-sized shapes take minutes on 2 cores; set PIPELINE_SLOW_TESTS=1")
    for item in items:
        if "slow" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def tiny_config():
    return load_config("tiny")


@pytest.fixture(scope="session")
def empty_schedules(tmp_path_factory):
    return tmp_path_factory.mktemp("schedules")


def tiny_build_options(out, schedules, graph, **overrides):
    return BuildOptions(
        selection=GraphSelection(graph=graph, config="tiny", latent_frames=TINY_FRAMES),
        out=out, schedules=schedules, timing_repeats=2, **overrides,
    )


def onnx_file_build_options(path, out, schedules):
    """tiny_build_options for a user's ONNX file instead of a named graph."""
    options = tiny_build_options(out, schedules, "convt5")
    options.selection = GraphSelection(onnx=path)
    return options


@pytest.fixture(scope="session")
def tiny_builds(tmp_path_factory, tiny_config, empty_schedules):
    """Every named graph of the tiny config, built once for the session."""
    out = tmp_path_factory.mktemp("artifacts")
    return {
        info.name: build(tiny_build_options(out, empty_schedules, info.name))
        for info in list_graphs(tiny_config)
    }
