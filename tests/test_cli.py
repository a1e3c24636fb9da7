"""The CLI verbs, run as a user runs them: `python -m pipeline ...` in a subprocess."""

import re
import shutil
import subprocess
import sys

import numpy as np
import pytest


def cli(*args, check=True):
    done = subprocess.run([sys.executable, "-m", "pipeline", *map(str, args)], capture_output=True, text=True)
    if check and done.returncode != 0:
        raise AssertionError(f"exit {done.returncode}\n{done.stdout}\n{done.stderr}")
    return done


def test_graphs_lists_and_exports(tmp_path):
    listing = cli("graphs").stdout
    for name in ["convt1", "convt5", "block1", "block5", "decoder"]:
        assert f"  {name} " in listing
    assert "2048->1024 k16 s8 p4" in listing
    cli("graphs", "--graph", "convt4", "--config", "tiny", "-T", "2", "--export", tmp_path / "c4.onnx")
    import onnx

    onnx.checker.check_model(onnx.load(tmp_path / "c4.onnx"))


def test_build_verify_run(tmp_path, empty_schedules):
    build = cli("build", "--graph", "convt5", "--config", "tiny", "-T", "2", "--out", tmp_path,
                "--schedules", empty_schedules)
    lines = build.stdout.splitlines()
    row = next(line for line in lines if line.startswith("convt5 "))
    assert "✓" in row
    artifact = row.split()[-1]
    assert "vs float64: ours / onnxruntime" in build.stdout and re.search(r"\de-\d\d / \d\.\de-\d\d  +✓", row), row
    verify = cli("verify", artifact)
    assert verify.stdout.startswith("✓ y: max abs error")
    assert "y against the float64 reference: rms rel error" in verify.stdout
    x = np.random.default_rng(0).standard_normal((1, 4, 2048)).astype(np.float32)
    np.save(tmp_path / "x.npy", x)
    cli("run", artifact, "--input", tmp_path / "x.npy", "--output", tmp_path / "y.npy")
    assert np.load(tmp_path / "y.npy").shape == (1, 4, 4096)
    np.save(tmp_path / "long.npy", np.tile(x, 2)[..., :3000])
    chunked = cli("run", artifact, "--input", tmp_path / "long.npy", "--output", tmp_path / "long_y.npy",
                  "--chunk-overlap", "8")
    assert "chunk 2/2" in chunked.stderr and np.load(tmp_path / "long_y.npy").shape == (1, 4, 6000)


@pytest.mark.skipif(shutil.which("nvcc") is None, reason="nvcc (CUDA toolkit) is not installed")
def test_cuda_build_checked_on_the_host(tmp_path, empty_schedules):
    build = cli("build", "--graph", "block1", "--config", "tiny", "-T", "2", "--target", "cuda", "--emulate-on-host",
                "--out", tmp_path, "--schedules", empty_schedules)
    assert "block1: its GPU kernels run on this CPU, against onnxruntime" in build.stdout
    row = next(line for line in build.stdout.splitlines() if line.startswith("block1 "))
    assert "emulated ✓" in row  # and "pending" before it where this machine has no GPU


def test_build_and_bench_from_onnx_path(tmp_path, empty_schedules):
    cli("graphs", "--graph", "convt2", "--config", "tiny", "-T", "1", "--export", tmp_path / "mine.onnx")
    build = cli("build", "--onnx", tmp_path / "mine.onnx", "--out", tmp_path / "art", "--schedules", empty_schedules)
    assert any(line.startswith("mine ") and "✓" in line for line in build.stdout.splitlines())
    bench = cli("bench", "--onnx", tmp_path / "mine.onnx", "--repeats", "2", "--out", tmp_path / "bench",
                "--artifacts", tmp_path / "art",
                "--schedules", empty_schedules)
    assert "| mine |" in bench.stdout and "| convt" not in bench.stdout


def test_build_and_bench_a_dynamic_onnx_with_input_shape(tmp_path, empty_schedules):
    import onnx

    cli("graphs", "--graph", "convt2", "--config", "tiny", "-T", "1", "--export", tmp_path / "dyn.onnx")
    model = onnx.load(tmp_path / "dyn.onnx")
    shape = [d.dim_value for d in model.graph.input[0].type.tensor_type.shape.dim]
    model.graph.input[0].type.tensor_type.shape.dim[2].dim_param = "length"
    model.graph.output[0].type.tensor_type.shape.dim[2].dim_param = "out_length"
    onnx.save(model, tmp_path / "dyn.onnx")
    given = ["--input-shape", f"x={shape[0]},{shape[1]},{2 * shape[2]}"]
    assert "--input-shape x=1," in cli("build", "--onnx", tmp_path / "dyn.onnx", check=False).stderr
    build = cli("build", "--onnx", tmp_path / "dyn.onnx", *given, "--out", tmp_path / "art", "--schedules", empty_schedules)
    assert any(line.startswith("dyn ") and "✓" in line for line in build.stdout.splitlines())
    bench = cli("bench", "--onnx", tmp_path / "dyn.onnx", *given, "--repeats", "2", "--out", tmp_path / "bench",
                "--artifacts", tmp_path / "art", "--schedules", empty_schedules)
    assert f"x [{shape[0]}, {shape[1]}, {2 * shape[2]}]" in bench.stdout and "| dyn |" in bench.stdout


@pytest.mark.parametrize("args, message", [
    (["build", "--graph", "convt7", "--config", "tiny"], "no graph named 'convt7'"),
    (["build", "--onnx", "nowhere.onnx"], "does not exist"),
    (["build", "--graph", "convt1", "--target", "tpu"], "unknown target 'tpu'"),
    (["verify", "."], "is not an artifact"),
    (["build", "--graph", "convt5", "--config", "tiny", "--emulate-on-host"], "drop --emulate-on-host"),
    (["build", "--graph", "convt5", "--input-shape", "x=1,4,8"], "input shapes are for an ONNX file (--onnx)"),
    (["build", "--onnx", "m.onnx", "--input-shape", "x=1,four"], "'x=1,four' is not NAME=D0,D1,..."),
    (["build", "--onnx", "m.onnx", "--input-shape", "x=1,2", "--input-shape", "x=1,3"], "gives 'x' two shapes"),
])
def test_user_errors_are_one_clear_line(args, message):
    done = cli(*args, check=False)
    assert done.returncode == 2
    assert message in done.stderr and "Traceback" not in done.stderr


def test_not_onnx_file_is_a_clear_error(tmp_path):
    (tmp_path / "bad.onnx").write_bytes(b"this is not protobuf at all")
    done = cli("build", "--onnx", tmp_path / "bad.onnx", check=False)
    assert done.returncode == 2 and "not a readable ONNX model" in done.stderr
