"""`profile`: each kernel's time in a call of a saved artifact."""

import json

import numpy as np
import pytest

from pipeline.build import build
from pipeline.errors import InputError
from pipeline.profile import VM_BUILTINS_ROW, ProfileOptions, profile_artifact
from pipeline.runtime import load

from .conftest import conv_model, onnx_file_build_options
from .test_cli import cli


def test_every_kernel_of_the_decoder_has_a_row(tiny_builds):
    result = tiny_builds["decoder"]
    profile = profile_artifact(ProfileOptions(result.artifact, repeats=3))
    kernels = [k for k in profile.kernels if k.name != VM_BUILTINS_ROW]
    assert {k.name for k in kernels} == set(result.manifest.tuning.kernels)
    assert all(k.median_ms > 0 and k.launches >= 1 and not k.tuned for k in kernels)
    # The k1 Conv1d of a block's first two residual units are one kernel, launched twice.
    assert any(k.launches == 2 and "conv_gemm" in k.name for k in kernels)
    assert [k.median_ms for k in profile.kernels] == sorted((k.median_ms for k in profile.kernels), reverse=True)
    assert sum(k.share for k in profile.kernels) == pytest.approx(1.0)


def test_a_kernel_that_is_the_whole_call_takes_its_time(tmp_path, empty_schedules):
    """A Conv1d of 0.5 GFLOP is one kernel: its row is the call's latency, give or take the
    instrumentation and this shared machine's noise (not milliseconds taken for seconds, nor 0)."""
    model, _, _ = conv_model((1, 128, 2048), 128, (7,), {"pads": [3, 3]})
    path = tmp_path / "conv.onnx"
    path.write_bytes(model.SerializeToString())
    result = build(onnx_file_build_options(path, tmp_path / "out", empty_schedules))
    profile = profile_artifact(ProfileOptions(result.artifact, repeats=5))
    (gemm,) = [k for k in profile.kernels if "conv_gemm" in k.name]
    assert gemm.share > 0.9
    assert 0.5 < gemm.median_ms / profile.latency.median_ms < 2


def test_profiling_leaves_the_model_as_it_was(tiny_builds):
    model = load(tiny_builds["block2"].artifact)
    x = np.random.default_rng(0).standard_normal(model.inputs[0].shape).astype(np.float32)
    before = model(x)
    calls = model.kernel_times([x], calls=2)
    assert len(calls) == 2 and all(any(name.startswith("vm.builtin.") for name in call) for call in calls)
    np.testing.assert_array_equal(model(x), before)
    with pytest.raises(InputError, match="must have shape"):
        model.kernel_times([x[..., :1]], calls=1)


def test_profile_cli(tiny_builds, tmp_path):
    artifact = tiny_builds["block1"].artifact
    done = cli("profile", artifact, "--repeats", "2", "--top", "3", "--json", tmp_path / "p.json")
    assert "| ms per call | share | cumulative | launches | tuned | kernel |" in done.stdout
    assert "more rows |" in done.stdout and "the call without instrumentation" in done.stdout
    written = json.loads((tmp_path / "p.json").read_text())
    assert written["repeats"] == 2 and len(written["kernels"]) > 3
    x = tmp_path / "x.npy"
    np.save(x, np.zeros((1, 3), np.float32))
    refused = cli("profile", artifact, "--input", x, check=False)
    assert refused.returncode == 2 and "must have shape" in refused.stderr
    refused = cli("profile", artifact, "--repeats", "0", check=False)
    assert refused.returncode == 2 and "at least one call" in refused.stderr
