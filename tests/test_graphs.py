import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import helper

from pipeline import reference
from pipeline.errors import GraphError
from pipeline.graphs import (
    IR_VERSION, GraphSelection, block_parameters, decoder_parameters, list_graphs, load_config, make_graph,
)


def run_ort(model, *inputs):
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    feeds = {i.name: x for i, x in zip(session.get_inputs(), inputs)}
    return session.run(None, feeds)


def random_input(model, seed=0):
    dims = [d.dim_value for d in model.graph.input[0].type.tensor_type.shape.dim]
    return np.random.default_rng(seed).standard_normal(dims).astype(np.float32)


@pytest.mark.parametrize("name", [g.name for g in list_graphs(load_config("tiny"))])
def test_tiny_graphs_are_valid_onnx(name):
    model = make_graph(name, "tiny", latent_frames=3).model
    onnx.checker.check_model(model, full_check=True)
    assert model.ir_version <= IR_VERSION
    assert model.opset_import[0].version >= 17


def test_sao_layers_match_the_notes_table():
    expected = [  # (in, out, k, s, p, input length factor) from shared/NOTES.md §1
        (2048, 1024, 16, 8, 4, 1), (1024, 512, 16, 8, 4, 8), (512, 256, 8, 4, 2, 64),
        (256, 128, 8, 4, 2, 256), (128, 128, 4, 2, 1, 1024),
    ]
    blocks = load_config("sao").blocks
    assert [(b.in_channels, b.out_channels, b.kernel, b.stride, b.padding, b.length_factor) for b in blocks] == expected
    for b in blocks:
        assert b.output_length(128) == 128 * b.length_factor * b.stride


def test_sao_convt_graph_shapes():
    model = make_graph("convt5", "sao", latent_frames=1).model
    node = next(n for n in model.graph.node if n.op_type == "ConvTranspose")
    attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
    assert attrs == {"kernel_shape": [4], "strides": [2], "pads": [1, 1]}
    (y,) = run_ort(model, random_input(model))
    assert y.shape == (1, 128, 2048)


def test_weights_are_deterministic_and_shared_between_graphs():
    a = make_graph("convt2", "tiny", 2, seed=7).model
    b = make_graph("convt2", "tiny", 2, seed=7).model
    c = make_graph("convt2", "tiny", 2, seed=8).model
    assert a.SerializeToString() == b.SerializeToString()
    assert a.SerializeToString() != c.SerializeToString()
    in_block = {i.name: onnx.numpy_helper.to_array(i) for i in make_graph("block2", "tiny", 2, seed=7).model.graph.initializer}
    for init in a.graph.initializer:
        np.testing.assert_array_equal(onnx.numpy_helper.to_array(init), in_block[init.name])


@pytest.mark.parametrize("index", [1, 2, 3, 4, 5])
def test_onnxruntime_convt_matches_numpy_scatter(tiny_config, index):
    model = make_graph(f"convt{index}", tiny_config, latent_frames=3).model
    x = random_input(model, index)
    (y,) = run_ort(model, x)
    p = block_parameters(tiny_config, index).upsample
    expected = reference.conv_transpose(x, p.weight, p.bias, strides=[p.stride], pads=[p.padding, p.padding])
    np.testing.assert_allclose(y, expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("index", [1, 3, 5])
def test_onnxruntime_block_matches_numpy(tiny_config, index):
    model = make_graph(f"block{index}", tiny_config, latent_frames=2).model
    x = random_input(model, index)
    (y,) = run_ort(model, x)
    expected = reference.decoder_block(x, block_parameters(tiny_config, index))
    np.testing.assert_allclose(y, expected, rtol=1e-4, atol=1e-4)


def test_onnxruntime_decoder_matches_numpy(tiny_config):
    model = make_graph("decoder", tiny_config, latent_frames=2).model
    x = random_input(model)
    (y,) = run_ort(model, x)
    assert y.shape == (1, 2, 2048 * 2)
    expected = reference.decoder(x, decoder_parameters(tiny_config))
    np.testing.assert_allclose(y, expected, rtol=1e-4, atol=1e-4)


def test_sao_decoder_activations_stay_order_one():
    """Every block output of the real-sized decoder has a std between 0.1 and 10: no blow-up, no fade."""
    config = load_config("sao")
    model = make_graph("decoder", config, latent_frames=1).model
    block_outputs = [f"block{b.index}.res3.out" for b in config.blocks]
    model.graph.output.extend(helper.make_tensor_value_info(n, onnx.TensorProto.FLOAT, None) for n in block_outputs)
    outputs = run_ort(model, random_input(model))
    stds = [float(o.std()) for o in outputs]
    assert all(np.isfinite(o).all() for o in outputs)
    assert all(0.1 < s < 10 for s in stds), dict(zip(["audio", *block_outputs], stds))


def test_unknown_graph_and_config_name_the_choices():
    with pytest.raises(GraphError, match="convt1"):
        make_graph("convt9", "tiny")
    with pytest.raises(GraphError, match="sao"):
        load_config("nonexistent")
    with pytest.raises(GraphError, match="exactly one"):
        GraphSelection().resolve()
