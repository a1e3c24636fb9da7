"""graphs/zoo.py writes the graphs of the README's sections on other ConvTranspose-heavy graphs:
each is a valid model that onnxruntime runs, with the output shape it declares."""

import importlib.util
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest

ZOO = Path(__file__).resolve().parent.parent / "graphs" / "zoo.py"


@pytest.fixture(scope="module")
def zoo():
    spec = importlib.util.spec_from_file_location("zoo", ZOO)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _runs_with_its_declared_output_shape(path: Path) -> None:
    model = onnx.load(path)
    onnx.checker.check_model(model)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    (x,) = session.get_inputs()
    (y,) = session.run(None, {x.name: np.random.default_rng(0).standard_normal(x.shape).astype(np.float32)})
    # TorchScript leaves sizes it computes (a reflection padding's) symbolic: those are not compared.
    declared = [d.dim_value if d.HasField("dim_value") else size
                for d, size in zip(model.graph.output[0].type.tensor_type.shape.dim, y.shape, strict=True)]
    assert list(y.shape) == declared, (path.name, y.shape, declared)
    assert np.isfinite(y).all()


def test_every_single_layer_runs_in_onnxruntime(zoo, tmp_path):
    for path in zoo.write(tmp_path, list(zoo.LAYERS)):
        _runs_with_its_declared_output_shape(path)


def test_every_decoder_exports_and_runs_in_onnxruntime(zoo, tmp_path):
    pytest.importorskip("torch", reason="the decoders are PyTorch modules: pip install -e '.[torch]'")
    assert list(zoo._torch_decoders()) == list(zoo.DECODER_NAMES)
    for path in zoo.write(tmp_path, list(zoo.DECODER_NAMES)):
        _runs_with_its_declared_output_shape(path)


def test_an_unknown_name_is_refused_with_the_choices(zoo, tmp_path):
    with pytest.raises(SystemExit, match=r"unknown graphs \['nope'\]: choose from .*'c3'.*unet"):
        zoo.write(tmp_path, ["nope"])
