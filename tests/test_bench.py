import json

import numpy as np
import pytest
import tvm
from onnx import TensorProto, helper, numpy_helper

from pipeline.bench import BenchOptions, bench
from pipeline.errors import DeviceError, GraphError, TargetError
from pipeline.graphs import IR_VERSION, OPSET, export_graph, make_graph, useful_flops


def test_bench_writes_side_by_side_results(tmp_path, empty_schedules):
    report = bench(BenchOptions(
        graphs=["convt4"], config="tiny", latent_frames=1, schedules=empty_schedules,
        artifacts=tmp_path / "artifacts", out=tmp_path / "bench", repeats=2,
    ))
    (row,) = report.rows
    assert report.baseline.startswith("onnxruntime") and report.machine["threads"] >= 1
    assert row.graph == "convt4" and row.useful_gflop > 0 and report.peak_gflops > 0
    assert row.tvm.min_ms <= row.tvm.median_ms <= row.tvm.max_ms
    assert row.ratio_to_baseline == row.tvm.median_ms / row.baseline.median_ms
    assert row.baseline_max_rel_error < 1e-4
    data = json.loads((tmp_path / "bench" / "bench.json").read_text())
    assert data["rows"][0]["ratio_to_baseline"] == row.ratio_to_baseline
    table = (tmp_path / "bench" / "bench.md").read_text()
    assert "| convt4 |" in table
    # The FMA units bound every GEMM; the matmul peak is what BLAS reaches of them.
    assert report.fma_peak_gflops > 0 and "| % FMA peak |" in table and "FMA peak" in table.splitlines()[0]
    assert data["fma_peak_gflops"] == report.fma_peak_gflops
    assert data["pending"] == [] and "Partial" not in table


def test_a_bench_cut_short_keeps_the_rows_it_finished(tmp_path, empty_schedules):
    """The report is written after every graph: a run that stops (here at a file that is no ONNX
    model; Ctrl-C or a machine's time limit alike) leaves the rows done and names the rest."""
    broken = tmp_path / "broken.onnx"
    broken.write_bytes(b"not a model")
    with pytest.raises(GraphError, match="not a readable ONNX model"):
        bench(BenchOptions(
            graphs=["convt4"], onnx_files=[broken], config="tiny", latent_frames=1, schedules=empty_schedules,
            artifacts=tmp_path / "artifacts", out=tmp_path / "bench", repeats=2,
        ))
    data = json.loads((tmp_path / "bench" / "bench.json").read_text())
    assert [row["graph"] for row in data["rows"]] == ["convt4"] and data["pending"] == ["broken"]
    assert data["rows"][0]["ratio_to_baseline"] > 0
    table = (tmp_path / "bench" / "bench.md").read_text()
    assert "| convt4 |" in table and "not measured yet (the run stopped or is still going): broken." in table


def test_a_misspelt_graph_is_refused_before_anything_runs(tmp_path):
    with pytest.raises(GraphError, match="no graph named 'convt9'.*choose one of convt1"):
        bench(BenchOptions(graphs=["convt4", "convt9"], config="tiny", out=tmp_path, artifacts=tmp_path))
    with pytest.raises(GraphError, match="missing.onnx does not exist"):
        bench(BenchOptions(graphs=["convt4"], onnx_files=[tmp_path / "missing.onnx"], config="tiny", out=tmp_path,
                           artifacts=tmp_path))
    assert not any(tmp_path.iterdir())


def test_bench_takes_a_users_onnx_file(tmp_path, empty_schedules):
    path = export_graph(make_graph("convt3", "tiny", 2), tmp_path / "my_upsampler.onnx")
    report = bench(BenchOptions(
        graphs=[], onnx_files=[path], schedules=empty_schedules,
        artifacts=tmp_path / "artifacts", out=tmp_path / "bench", repeats=2,
    ))
    (row,) = report.rows
    assert row.graph == "my_upsampler" and row.baseline_max_rel_error < 1e-4
    # tiny convt3: 16 -> 8 channels, k8 s4, on 64·T = 128 positions
    assert row.useful_gflop == pytest.approx(2 * 16 * 8 * 8 * 128 / 1e9)
    table = (tmp_path / "bench" / "bench.md").read_text()
    assert "| my_upsampler |" in table and "latent frames" not in table


def test_bench_with_nothing_to_time_says_what_to_name(tmp_path):
    with pytest.raises(GraphError, match="--graph.*--onnx"):
        bench(BenchOptions(graphs=[], out=tmp_path))


def test_onnxruntime_is_no_baseline_for_a_gpu_build(tmp_path):
    with pytest.raises(TargetError, match="--baseline torch"):
        bench(BenchOptions(graphs=["convt4"], config="tiny", target="cuda", baseline="onnxruntime", out=tmp_path))


@pytest.mark.skipif(tvm.cuda(0).exist, reason="checks the refusal on a machine without a CUDA device")
def test_bench_on_a_gpu_target_without_the_gpu_says_so_before_building(tmp_path):
    with pytest.raises(DeviceError, match="no CUDA device.*machine with the GPU"):
        bench(BenchOptions(graphs=["convt4"], config="tiny", target="cuda", out=tmp_path, artifacts=tmp_path))
    assert not any(tmp_path.iterdir())


def test_bench_against_pytorch_eager(tmp_path, empty_schedules):
    pytest.importorskip("torch", reason="the PyTorch baseline is optional: pip install -e '.[torch]'")
    report = bench(BenchOptions(
        graphs=["block5"], config="tiny", latent_frames=1, schedules=empty_schedules, baseline="torch",
        artifacts=tmp_path / "artifacts", out=tmp_path / "bench", repeats=2,
    ))
    (row,) = report.rows
    assert report.baseline.startswith("PyTorch") and np.isfinite(row.ratio_to_baseline)
    assert row.baseline_max_rel_error < 1e-4


def test_useful_flops_count_matmuls_and_convolutions_after_computed_pads():
    """MatMul and Gemm count 2 K per output; a Conv whose input a Pad with computed pads makes
    (what TorchScript writes for ReflectionPad2d) counts once shape arithmetic is folded."""
    weight = np.zeros((8, 4, 3, 3), np.float32)
    nodes = [
        helper.make_node("Concat", ["zeros", "ones"], ["pads"], axis=0),
        helper.make_node("Pad", ["x", "pads"], ["padded"], mode="reflect"),
        helper.make_node("Conv", ["padded", "w"], ["conv"]),
        helper.make_node("Reshape", ["conv", "rows"], ["flat"]),
        helper.make_node("MatMul", ["flat", "m"], ["product"]),
        helper.make_node("Gemm", ["product", "g"], ["y"], transA=1),
    ]
    graph = helper.make_graph(
        nodes, "counted", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4, 6, 6])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [6, 2])],
        [
            numpy_helper.from_array(np.array([0, 0, 1, 1], np.int64), "zeros"),
            numpy_helper.from_array(np.array([0, 0, 1, 1], np.int64), "ones"),
            numpy_helper.from_array(weight, "w"),
            numpy_helper.from_array(np.array([8, 36], np.int64), "rows"),
            numpy_helper.from_array(np.zeros((36, 6), np.float32), "m"),
            numpy_helper.from_array(np.zeros((8, 2), np.float32), "g"),
        ],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)], ir_version=IR_VERSION)
    conv = 2 * 8 * 4 * 9 * 6 * 6
    matmul = 2 * 8 * 6 * 36
    gemm = 2 * 6 * 2 * 8
    assert useful_flops(model) == conv + matmul + gemm
