import json

from pipeline.bench import BenchOptions, bench


def test_bench_writes_side_by_side_results(tmp_path, empty_schedules):
    report = bench(BenchOptions(
        graphs=["convt4"], config="tiny", latent_frames=1, schedules=empty_schedules,
        artifacts=tmp_path / "artifacts", out=tmp_path / "bench", repeats=2,
    ))
    (row,) = report.rows
    assert row.graph == "convt4" and row.useful_gflop > 0 and report.peak_gflops > 0
    assert row.tvm.min_ms <= row.tvm.median_ms <= row.tvm.max_ms
    assert row.ratio_to_onnxruntime == row.tvm.median_ms / row.onnxruntime.median_ms
    data = json.loads((tmp_path / "bench" / "bench.json").read_text())
    assert data["rows"][0]["ratio_to_onnxruntime"] == row.ratio_to_onnxruntime
    assert "| convt4 |" in (tmp_path / "bench" / "bench.md").read_text()
