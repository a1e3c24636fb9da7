import os

import numpy as np
import pytest
from onnx import TensorProto, helper, numpy_helper

# pipeline before tvm: importing pipeline loads the stand-in libcuda.so.1 where there is no NVIDIA
# driver, and TVM, imported first, would build CUDA modules holding source only (cuda_driver).
from pipeline import reference
from pipeline.build import BuildOptions, build
from pipeline.conformance import ConformanceCase
from pipeline.graphs import IR_VERSION, OPSET, GraphSelection, list_graphs, load_config
from pipeline.importer import import_onnx
from pipeline.lowering import lower
from pipeline.passes.default_cpu_schedule import DefaultCPUSchedule
from pipeline.target import resolve_target

import tvm  # noqa: I001
import tvm_ffi

TINY_FRAMES = 2


def tir_loops(func: tvm.tirx.PrimFunc) -> list[tvm.tirx.For]:
    """Every loop of a kernel, outermost first."""
    loops = []
    tvm_ffi.structural_walk(func.body, [(tvm.tirx.For, loops.append)], order="pre")
    return loops


def cpu_scheduled(model, target="cpu") -> tvm.IRModule:
    """An ONNX model's kernels, lowered and given our CPU schedules for `target`, as the build does."""
    spec = resolve_target(target)
    lowered = lower(import_onnx(model).mod, spec)
    with spec.tvm_target():
        return DefaultCPUSchedule(spec.tvm_target())(lowered.main)


def unrolled_extents(module: tvm.IRModule, kernel: str) -> list[int]:
    """The extents of the unrolled loops of every kernel whose name holds `kernel`."""
    return [
        int(loop.extent)
        for gv, func in module.functions.items()
        if kernel in gv.name_hint
        for loop in tir_loops(func)
        if loop.kind == tvm.tirx.ForKind.UNROLLED
    ]


# A ConvTranspose2d whose kernel equals its stride (the upsampling of a UNet): one tap per output.
KERNEL_EQUALS_STRIDE = ConformanceCase("k2s2", (1, 8, 32, 32), (8, 4, 2, 2), {"strides": [2, 2]}, True)


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


# (input shape, output channels, kernel, attributes): stride and dilation along either axis,
# asymmetric pads, odd sizes (the GEMM then computes extra rows and positions, cropped after).
CONV2D_CASES = {
    "3x3_same": ((1, 8, 12, 16), 16, (3, 3), {"pads": [1, 1, 1, 1]}),
    "1x1": ((1, 16, 6, 8), 8, (1, 1), {}),
    "stride2_asym_pads": ((2, 4, 9, 11), 8, (3, 3), {"strides": [2, 2], "pads": [1, 0, 2, 1]}),
    "stride_rows_only": ((1, 4, 10, 7), 8, (3, 2), {"strides": [3, 1], "pads": [1, 1, 1, 1]}),
    "stride_columns_only": ((1, 4, 7, 10), 8, (2, 3), {"strides": [1, 3]}),
    "dilated_strided": ((1, 3, 13, 12), 8, (3, 3), {"strides": [2, 2], "dilations": [2, 3], "pads": [2, 2, 2, 2]}),
    "kernel_wider_than_stride": ((1, 5, 8, 8), 8, (4, 4), {"strides": [2, 2], "pads": [1, 1, 1, 1]}),
    "one_output": ((1, 6, 3, 3), 8, (3, 3), {}),
}
# Grouped convolutions, 1-D and 2-D: a group's output channels fewer than a register tile, more
# output than input channels per group, strides and dilations as above.
GROUPED_CONV_CASES = {
    "1d_groups2": ((1, 8, 20), 8, (3,), {"group": 2, "pads": [1, 1]}),
    "1d_groups4_strided_dilated": ((2, 8, 23), 12, (3,), {"group": 4, "strides": [2], "dilations": [2], "pads": [2, 1]}),
    "2d_groups2": ((1, 8, 9, 10), 16, (3, 3), {"group": 2, "pads": [1, 1, 1, 1]}),
    "2d_groups4_stride2": ((1, 8, 11, 9), 8, (3, 3), {"group": 4, "strides": [2, 2], "pads": [1, 0, 1, 1]}),
    "2d_groups2_multiplier": ((1, 6, 7, 7), 24, (2, 3), {"group": 2, "dilations": [2, 1]}),
}
# Depthwise convolutions (one input channel per group), 1-D and 2-D: strides along either axis,
# dilations, asymmetric pads, more output than input channels, batch 2, one output position; tall
# kernels over an even number of output rows (a run then covers two).
DEPTHWISE_CONV_CASES = {
    "1d_k7": ((1, 8, 30), 8, (7,), {"group": 8, "pads": [3, 3]}),
    "1d_strided_multiplier": ((2, 4, 25), 8, (5,), {"group": 4, "strides": [2], "pads": [2, 1]}),
    "2d_3x3": ((1, 8, 10, 12), 8, (3, 3), {"group": 8, "pads": [1, 1, 1, 1]}),
    "2d_7x7": ((1, 4, 12, 11), 4, (7, 7), {"group": 4, "pads": [3, 3, 3, 3]}),
    "2d_5x3_row_stride": ((1, 3, 16, 9), 3, (5, 3), {"group": 3, "strides": [2, 1], "pads": [2, 2, 1, 1]}),
    "2d_stride2_asym_pads": ((1, 6, 15, 17), 6, (3, 3), {"group": 6, "strides": [2, 2], "pads": [1, 0, 1, 1]}),
    "2d_stride3_dilated_multiplier": (
        (2, 3, 14, 16), 6, (3, 2), {"group": 3, "strides": [1, 3], "dilations": [2, 2], "pads": [2, 2, 1, 1]}
    ),
    # One output position (its loops vanish in the schedule), with and without a stride.
    "1d_one_position_strided": ((1, 2, 1), 2, (1,), {"group": 2, "strides": [2]}),
    "2d_one_column": ((1, 2, 5, 1), 2, (3, 1), {"group": 2, "strides": [1, 2], "pads": [1, 0, 1, 0]}),
}


def conv_model(x_shape, cout, kernel, attrs, seed=0):
    """An ONNX Conv with bias (1-D or 2-D, as many dimensions as `kernel`), its weight seeded; and
    that weight and bias. `attrs` are the Conv's attributes, "group" among them."""
    rng = np.random.default_rng(seed)
    cin_per_group = x_shape[1] // attrs.get("group", 1)
    weight = (rng.standard_normal((cout, cin_per_group, *kernel)) / np.sqrt(cin_per_group * np.prod(kernel))).astype(
        np.float32
    )
    bias = rng.standard_normal(cout).astype(np.float32)
    y_shape = reference.conv(np.zeros(x_shape, np.float32), weight, bias, **attrs).shape
    graph = helper.make_graph(
        [helper.make_node("Conv", ["x", "w", "b"], ["y"], **attrs)], "conv",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, list(x_shape))],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, list(y_shape))],
        initializer=[numpy_helper.from_array(weight, "w"), numpy_helper.from_array(bias, "b")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)], ir_version=IR_VERSION)
    return model, weight, bias


# (a shape, b shape, how b comes): "weight" a Linear layer's (an initializer, then a bias add),
# "input" a second graph input, "transposed" a second input transposed by the graph.
MATMUL_CASES = {
    "linear_3d": ((1, 20, 24), (24, 40), "weight"),
    "linear_2d": ((6, 16), (16, 48), "weight"),
    "linear_batch_rows": ((3, 5, 16), (16, 32), "weight"),
    "odd_sizes": ((1, 7, 5), (5, 3), "weight"),
    "batched": ((2, 3, 16, 8), (2, 3, 8, 24), "input"),
    "broadcast_a": ((16, 8), (3, 8, 24), "input"),
    "broadcast_b_ones": ((3, 16, 8), (1, 8, 24), "input"),
    "broadcast_both": ((2, 1, 16, 8), (1, 3, 8, 24), "input"),
    "attention_scores": ((2, 32, 16), (2, 16, 32), "transposed"),
    "attention_values": ((1, 24, 136), (1, 136, 40), "transposed"),
    # Column counts no vector divides: the CPU GEMM computes whole vectors and keeps these.
    "linear_odd_columns": ((1, 16, 24), (24, 53), "weight"),
    "attention_odd_scores": ((2, 33, 16), (2, 16, 33), "transposed"),
    # A product over one channel: the transposed operand's copy has no channel loop to reorder
    # (the build had failed with a ScheduleError).
    "attention_one_channel": ((2, 36, 1), (2, 1, 64), "transposed"),
    # Rows 4 KiB apart, which the GEMM would read in one L1 set: still packed on each call.
    "linear_rows_4kib_apart": ((16, 1024), (1024, 24), "weight"),
}


def matmul_model(a_shape, b_shape, b_kind, seed=0):
    """The ONNX model of one case, its inputs' shapes and a float64 numpy function of its inputs."""
    rng = np.random.default_rng(seed)
    inputs = [helper.make_tensor_value_info("a", TensorProto.FLOAT, list(a_shape))]
    initializers, nodes = [], []
    if b_kind == "weight":
        weight = rng.standard_normal(b_shape).astype(np.float32)
        bias = rng.standard_normal(b_shape[-1]).astype(np.float32)
        initializers = [numpy_helper.from_array(weight, "w"), numpy_helper.from_array(bias, "bias")]
        nodes = [
            helper.make_node("MatMul", ["a", "w"], ["product"]),
            helper.make_node("Add", ["product", "bias"], ["y"]),
        ]
        shapes = [a_shape]

        def expected(a):
            return np.matmul(a.astype(np.float64), weight.astype(np.float64)) + bias
    else:
        stored = b_shape[:-2] + b_shape[:-3:-1] if b_kind == "transposed" else b_shape
        inputs.append(helper.make_tensor_value_info("b", TensorProto.FLOAT, list(stored)))
        if b_kind == "transposed":
            perm = [*range(len(b_shape) - 2), len(b_shape) - 1, len(b_shape) - 2]
            nodes = [
                helper.make_node("Transpose", ["b"], ["bt"], perm=perm),
                helper.make_node("MatMul", ["a", "bt"], ["y"]),
            ]
        else:
            nodes = [helper.make_node("MatMul", ["a", "b"], ["y"])]
        shapes = [a_shape, stored]

        def expected(a, b):
            b = np.swapaxes(b, -1, -2) if b_kind == "transposed" else b
            return np.matmul(a.astype(np.float64), b.astype(np.float64))

    y_shape = np.matmul(np.zeros(a_shape), np.zeros(b_shape)).shape
    graph = helper.make_graph(
        nodes, "matmul", inputs, [helper.make_tensor_value_info("y", TensorProto.FLOAT, list(y_shape))], initializers
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)], ir_version=IR_VERSION)
    return model, shapes, expected


# Row-wise reductions followed by elementwise stages, each with its float64 numpy reference:
# (ONNX node, the sizes of its extra initializers for an input shape, reference of x and those).
def softmax_reference(x):
    e = np.exp(x - x.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


def _normalized(x, axes, scale, bias, eps=1e-5):
    mean = x.mean(axes, keepdims=True)
    return (x - mean) / np.sqrt(((x - mean) ** 2).mean(axes, keepdims=True) + eps) * scale + bias


NORMALIZATION_CASES = {
    "softmax": ({"op_type": "Softmax", "axis": -1}, lambda shape: [], softmax_reference),
    "layer_norm": (
        {"op_type": "LayerNormalization", "axis": -1, "epsilon": 1e-5},
        lambda shape: [shape[-1]] * 2,
        lambda x, s, b: _normalized(x, -1, s, b),
    ),
    "instance_norm": (
        {"op_type": "InstanceNormalization", "epsilon": 1e-5},
        lambda shape: [shape[1]] * 2,
        lambda x, s, b: _normalized(x, -1, s[:, None], b[:, None]),
    ),
}


def normalization_model(name, x_shape=(2, 6, 40), seed=0):
    """The ONNX model of one NORMALIZATION_CASES case and a float64 numpy function of its input."""
    node, sizes, reference_of = NORMALIZATION_CASES[name]
    rng = np.random.default_rng(seed)
    extras = [rng.standard_normal(size).astype(np.float32) for size in sizes(x_shape)]
    names = [f"p{i}" for i in range(len(extras))]
    graph = helper.make_graph(
        [helper.make_node(inputs=["x", *names], outputs=["y"], **node)], name,
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, list(x_shape))],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, list(x_shape))],
        [numpy_helper.from_array(extra, n) for extra, n in zip(extras, names)],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)], ir_version=IR_VERSION)
    return model, lambda x: reference_of(x.astype(np.float64), *extras)


def batchnorm_relu_model(node, weight, x_shape, y_shape):
    """`node` (from input x and initializer w to c), BatchNormalization, Relu: FuseOps puts the
    BatchNorm's four elementwise ops and the Relu into the kernel of `node`'s last stage. Returns
    the model and the BatchNorm's (scale, bias, mean, var)."""
    rng = np.random.default_rng(0)
    channels = [rng.uniform(0.5, 1.5, y_shape[1]).astype(np.float32) for _ in range(4)]
    graph = helper.make_graph(
        [
            node,
            helper.make_node("BatchNormalization", ["c", "scale", "bias", "mean", "var"], ["n"]),
            helper.make_node("Relu", ["n"], ["y"]),
        ],
        f"{node.op_type}_bn_relu",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, list(x_shape))],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, list(y_shape))],
        initializer=[numpy_helper.from_array(weight, "w")]
        + [numpy_helper.from_array(a, n) for a, n in zip(channels, ["scale", "bias", "mean", "var"])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)], ir_version=IR_VERSION)
    return model, channels


def convt_bn_relu_model():
    """ConvTranspose2d, BatchNormalization, Relu (a DCGAN layer)."""
    weight = (np.random.default_rng(1).standard_normal((8, 4, 4, 4)) / 6).astype(np.float32)
    node = helper.make_node("ConvTranspose", ["x", "w"], ["c"], strides=[2, 2], pads=[1, 1, 1, 1])
    return batchnorm_relu_model(node, weight, (2, 8, 6, 6), (2, 4, 12, 12))[0]


@pytest.fixture(scope="session")
def tiny_builds(tmp_path_factory, tiny_config, empty_schedules):
    """Every named graph of the tiny config, built once for the session."""
    out = tmp_path_factory.mktemp("artifacts")
    return {
        info.name: build(tiny_build_options(out, empty_schedules, info.name))
        for info in list_graphs(tiny_config)
    }
