import json
import logging
import shutil
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from pipeline.artifact import MANIFEST, PARAMS, read_manifest
from pipeline.build import BuildOptions, build
from pipeline.errors import ArtifactError, ArtifactIntegrityError, ArtifactVersionError, InputError
from pipeline.graphs import GraphSelection, make_graph
from pipeline.runtime import chunk_starts, load, run_chunked
from pipeline.verify import onnxruntime_outputs

SHAPE = (1, 32, 16)  # tiny convt2 at T=2: 32 channels, 8 * T samples


@pytest.fixture
def artifact(tiny_builds, tmp_path):
    """A private copy, so tampering cannot affect other tests."""
    copy = tmp_path / "convt2"
    shutil.copytree(tiny_builds["convt2"].artifact, copy)
    return copy


def test_round_trip_in_a_fresh_process(artifact, tmp_path):
    x = np.random.default_rng(5).standard_normal(SHAPE).astype(np.float32)
    np.save(tmp_path / "x.npy", x)
    script = textwrap.dedent(f"""
        import numpy as np, sys
        import pipeline.runtime
        model = pipeline.runtime.load({str(artifact)!r})
        y = model(np.load({str(tmp_path / "x.npy")!r}))
        np.save({str(tmp_path / "y.npy")!r}, y)
        assert "pipeline.build" not in sys.modules and "pipeline.tuning" not in sys.modules
        print(model.manifest.graph.name, model.manifest.verification.passed)
    """)
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True)
    assert done.stdout.split() == ["convt2", "True"]
    (expected,) = onnxruntime_outputs(artifact / "model.onnx", {"x": x})
    np.testing.assert_allclose(np.load(tmp_path / "y.npy"), expected, rtol=1e-4, atol=1e-5)


def test_named_inputs_work_like_positional(artifact):
    model = load(artifact)
    x = np.ones(SHAPE, np.float32)
    np.testing.assert_array_equal(model(x), model(x=x))


def test_tampered_file_is_refused(artifact):
    with open(artifact / PARAMS, "r+b") as f:
        f.seek(-16, 2)
        f.write(b"\x00" * 16)
    with pytest.raises(ArtifactIntegrityError, match="changed after the build"):
        load(artifact)


def test_missing_file_is_refused(artifact):
    (artifact / read_manifest(artifact).library).unlink()
    with pytest.raises(ArtifactIntegrityError, match="missing"):
        load(artifact)


def test_other_tvm_version_is_refused(artifact):
    manifest = json.loads((artifact / MANIFEST).read_text())
    manifest["versions"]["apache-tvm"] = "0.26.0"
    (artifact / MANIFEST).write_text(json.dumps(manifest))
    with pytest.raises(ArtifactVersionError, match="TVM 0.26.0"):
        load(artifact)


def test_not_an_artifact(tmp_path):
    with pytest.raises(ArtifactError, match="no manifest.json"):
        load(tmp_path)


def test_wrong_shape_and_dtype_are_refused(artifact):
    model = load(artifact)
    with pytest.raises(InputError, match=r"shape \[1, 32, 16\]"):
        model(np.zeros((1, 32, 17), np.float32))
    with pytest.raises(InputError, match="must be float32, got float64"):
        model(np.zeros(SHAPE, np.float64))
    with pytest.raises(InputError, match="takes 1 input"):
        model()
    with pytest.raises(InputError, match="unknown input"):
        model(latents=np.zeros(SHAPE, np.float32))


def test_non_finite_inputs_pass_through(artifact):
    model = load(artifact)
    x = np.zeros(SHAPE, np.float32)
    x[0, 0, 3] = np.nan
    y = model(x)
    assert np.isnan(y).any() and np.isfinite(y).any()


def test_chunks_cover_the_sequence_and_the_last_ends_at_its_end():
    assert chunk_starts(16, 16, 4) == [0]
    assert chunk_starts(40, 16, 6) == [0, 10, 20, 24]
    assert chunk_starts(36, 16, 6) == [0, 10, 20]


def test_run_chunked_equals_one_run_over_the_whole_sequence(artifact):
    """tiny convt2 (k16 s8) compiled for 16 frames, run on 40: each output sees at most 2 input frames."""
    x = np.random.default_rng(3).standard_normal((1, 32, 40)).astype(np.float32)
    y = run_chunked(load(artifact), x, overlap=6)
    (expected,) = onnxruntime_outputs(make_graph("convt2", "tiny", latent_frames=5).model, {"x": x})
    np.testing.assert_allclose(y, expected, rtol=0, atol=1e-4 * np.abs(expected).max())


def test_chunked_decoder_is_exact_once_the_overlap_covers_its_receptive_radius(tmp_path, empty_schedules):
    """The decoder's receptive radius is 9.3 latent frames: overlap 20 keeps every output 10 frames
    inside its chunk, overlap 4 does not, and there the chunk edges show."""
    options = BuildOptions(GraphSelection(graph="decoder", config="tiny", latent_frames=24), out=tmp_path,
                           schedules=empty_schedules, timing_repeats=1)
    decoder = load(build(options).artifact)
    latents = np.random.default_rng(4).standard_normal((1, 8, 50)).astype(np.float32)
    (whole,) = onnxruntime_outputs(make_graph("decoder", "tiny", latent_frames=50).model, {"latents": latents})
    scale = np.abs(whole).max()
    exact = run_chunked(decoder, latents, overlap=20)
    # 1e-4 is the build's verification tolerance; overlap 18 (9 frames inside) is 1e-3 off, overlap 4 0.5.
    assert np.abs(exact - whole).max() <= 1e-4 * scale
    assert np.abs(run_chunked(decoder, latents, overlap=4) - whole).max() > 1e-2 * scale


def test_run_chunked_refuses_what_it_cannot_chunk(artifact):
    model = load(artifact)
    with pytest.raises(InputError, match="fewer than the artifact's chunk of 16.*--latent-frames 12"):
        run_chunked(model, np.zeros((1, 32, 12), np.float32), overlap=4)
    with pytest.raises(InputError, match="below the chunk of 16 frames, got 16"):
        run_chunked(model, np.zeros((1, 32, 40), np.float32), overlap=16)
    with pytest.raises(InputError, match=r"\[1, 32\] \+ \[any length >= 16\]"):
        run_chunked(model, np.zeros((1, 31, 40), np.float32), overlap=4)


def test_one_model_called_from_many_threads(tiny_builds):
    """Concurrent calls into one TVM VM corrupted its state (wrong-type errors) or crashed the
    process (the tiny decoder: every one of four tries); a Model runs them one at a time. In a
    subprocess, so that a crash fails this test instead of the test run."""
    script = textwrap.dedent(f"""
        import threading
        import numpy as np
        import pipeline.runtime
        model = pipeline.runtime.load({str(tiny_builds["decoder"].artifact)!r})
        shape = model.inputs[0].shape
        inputs = [np.random.default_rng(seed).standard_normal(shape).astype(np.float32) for seed in range(4)]
        expected = [model(x) for x in inputs]
        failures = []

        def calls(worker):
            for i in range(200):
                k = (i + worker) % 4
                try:
                    if not np.array_equal(model(inputs[k]), expected[k]):
                        failures.append(f"thread {{worker}}, call {{i}}: another output")
                except Exception as exc:
                    failures.append(f"thread {{worker}}, call {{i}}: {{exc!r}}")

        threads = [threading.Thread(target=calls, args=(worker,)) for worker in range(4)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert not failures, failures[:3]
    """)
    done = subprocess.run([sys.executable, "-c", script], check=False, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]


def test_a_forked_child_runs_models_its_parent_ran(tiny_builds):
    """TVM's thread pool does not survive a fork: a child calling a model its parent had run hung
    forever. Here the child runs that model and one it loads itself; 60 s is hundreds of times what
    the calls take."""
    artifact = str(tiny_builds["decoder"].artifact)
    script = textwrap.dedent(f"""
        import multiprocessing
        import numpy as np
        import pipeline.runtime
        model = pipeline.runtime.load({artifact!r})
        x = np.random.default_rng(0).standard_normal(model.inputs[0].shape).astype(np.float32)
        expected = model(x)

        def child(results):
            loaded_here = pipeline.runtime.load({artifact!r})
            results.put([bool(np.array_equal(m(x), expected)) for m in (model, loaded_here)])

        fork = multiprocessing.get_context("fork")
        results = fork.Queue()
        process = fork.Process(target=child, args=(results,))
        process.start()
        process.join(60)
        if process.is_alive():
            process.kill()
            raise SystemExit("the forked child hung")
        assert process.exitcode == 0 and results.get() == [True, True]
    """)
    done = subprocess.run([sys.executable, "-c", script], check=False, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]


@pytest.mark.parametrize(("threads_per_core", "warned"), [(2, True), (1, False)])
def test_loading_on_more_threads_than_scheduled_for_warns(artifact, monkeypatch, caplog, threads_per_core, warned):
    """The tiny builds are scheduled for this machine's cores; TVM is made to report twice or
    exactly as many threads."""
    scheduled_for = int(read_manifest(artifact).target.config["num-cores"])
    monkeypatch.setattr("pipeline.runtime.check_tvm_threads", lambda: threads_per_core * scheduled_for)
    with caplog.at_level(logging.WARNING, logger="pipeline.runtime"):
        load(artifact)
    assert ("was scheduled for" in caplog.text) == warned
