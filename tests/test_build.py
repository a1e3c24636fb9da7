import dataclasses
import json

import numpy as np
import pytest

from pipeline.artifact import MANIFEST, PARAMS, SOURCE_ONNX, Manifest, read_manifest, sha256_file
from pipeline.build import build
from pipeline.errors import UnverifiedArtifactError, VerificationError
from pipeline.graphs import GRAPHS_DIR, export_graph, list_graphs, load_config, make_graph
from pipeline.runtime import load
from pipeline.verify import Tolerance

from .conftest import TINY_FRAMES, onnx_file_build_options, tiny_build_options

TINY_GRAPHS = [g.name for g in list_graphs(load_config("tiny"))]


@pytest.mark.parametrize("name", TINY_GRAPHS)
def test_tvm_build_agrees_with_onnxruntime(tiny_builds, name):
    result = tiny_builds[name]
    verification = result.manifest.verification
    assert result.passed, verification
    for check in verification.outputs:
        assert check.max_rel_error <= verification.rtol
        assert check.max_abs_error < 1e-3


def test_manifest_records_files_versions_and_target(tiny_builds):
    result = tiny_builds["block2"]
    manifest = json.loads((result.artifact / MANIFEST).read_text())
    assert set(manifest["files"]) == {manifest["library"], PARAMS, SOURCE_ONNX}
    assert manifest["library"] == f"model-{manifest['files'][manifest['library']][:16]}.so"
    for name, digest in manifest["files"].items():
        assert sha256_file(result.artifact / name) == digest
    assert manifest["graph"]["onnx_sha256"] == manifest["files"][SOURCE_ONNX]
    assert manifest["graph"]["latent_frames"] == 2 and manifest["graph"]["origin"] == "oobleck:tiny"
    assert manifest["versions"]["apache-tvm"] == "0.27.0.post1"
    assert {"apache-tvm-ffi", "onnx", "onnxruntime"} <= set(manifest["versions"])
    assert manifest["target"]["kind"] == "llvm" and manifest["target"]["key"] == result.artifact.name
    assert manifest["inputs"] == [{"name": "x", "shape": [1, 32, 16], "dtype": "float32"}]
    assert manifest["verification"]["passed"] is True
    assert manifest["tuning"]["tuned"] == [] and manifest["tuning"]["kernels"]
    assert result.artifact.parent.name == "block2"


def test_mismatch_fails_the_build_and_keeps_the_good_artifact(tmp_path, empty_schedules):
    good = build(tiny_build_options(tmp_path, empty_schedules, "block2"))
    good_library = sha256_file(good.artifact / good.manifest.library)
    # TVM's sin and onnxruntime's differ in the last bits, so a zero tolerance cannot be met (a
    # plain ConvTranspose can match bit for bit): this drives the real failure path.
    with pytest.raises(VerificationError, match="disagrees with onnxruntime"):
        build(tiny_build_options(tmp_path, empty_schedules, "block2", tolerance=Tolerance(rtol=0.0, atol=0.0)))
    failed = good.artifact.with_name(good.artifact.name + ".failed")
    assert read_manifest(failed).verification.passed is False
    with pytest.raises(UnverifiedArtifactError, match="failed verification"):
        load(failed)
    assert sha256_file(good.artifact / good.manifest.library) == good_library
    model = load(good.artifact)
    assert model(np.zeros(model.inputs[0].shape, np.float32)).shape == model.outputs[0].shape


@pytest.mark.parametrize("name", TINY_GRAPHS)
def test_a_named_graph_is_as_close_to_float64_as_onnxruntime(tiny_builds, name):
    """Each build also measures ours and onnxruntime against the float64 numpy reference."""
    (check,) = tiny_builds[name].manifest.verification.float64
    assert check.name == tiny_builds[name].manifest.outputs[0].name
    assert 0 < check.ours_rms_rel_error < 1e-5 and 0 < check.onnxruntime_rms_rel_error < 1e-5
    assert check.ours_rms_rel_error < 2 * check.onnxruntime_rms_rel_error


def test_an_onnx_file_or_an_opt_out_has_no_float64_check(tmp_path, empty_schedules):
    path = export_graph(make_graph("convt3", config="tiny", latent_frames=TINY_FRAMES), tmp_path / "convt3.onnx")
    from_file = build(onnx_file_build_options(path, tmp_path / "file", empty_schedules))
    assert from_file.passed and from_file.manifest.verification.float64 is None
    opted_out = build(tiny_build_options(tmp_path / "named", empty_schedules, "convt3", float64_check=False))
    assert opted_out.passed and opted_out.manifest.verification.float64 is None


def test_a_manifest_from_before_the_float64_check_still_reads(tiny_builds):
    data = json.loads((tiny_builds["convt1"].artifact / MANIFEST).read_text())
    del data["verification"]["float64"]
    assert Manifest.from_json(json.dumps(data)).verification.float64 is None


@pytest.mark.parametrize(("graph", "change"), [("decoder", {"final_tanh": True}), ("convt3", {"channels": 8})])
def test_a_config_given_by_path_under_a_shipped_name_gets_no_float64_check(tmp_path, empty_schedules, graph, change):
    """Its reference would be made from the shipped config of that name, which is another graph."""
    config = {**json.loads((GRAPHS_DIR / "oobleck_tiny.json").read_text()), **change}
    path = tmp_path / "my_tiny.json"
    path.write_text(json.dumps(config))
    options = tiny_build_options(tmp_path, empty_schedules, graph)
    options.selection = dataclasses.replace(options.selection, config=str(path))
    result = build(options)
    assert result.passed and result.manifest.verification.float64 is None


def test_the_build_says_what_it_is_doing(tmp_path, empty_schedules, caplog):
    caplog.set_level("INFO", logger="pipeline.build")
    build(tiny_build_options(tmp_path, empty_schedules, "convt2"))
    messages = [record.getMessage() for record in caplog.records]
    assert any(m.startswith("compiling 2 kernels for llvm-") for m in messages)
    assert any(m.startswith("compiled in ") and m.endswith(" s") for m in messages)
    assert "verifying convt2 against onnxruntime" in messages
