import json

import numpy as np
import pytest
import tvm

from pipeline.bench import BenchOptions, bench
from pipeline.errors import DeviceError, GraphError, TargetError
from pipeline.graphs import export_graph, make_graph


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
    assert "| convt4 |" in (tmp_path / "bench" / "bench.md").read_text()


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
