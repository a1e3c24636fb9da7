"""The user's path: an Oobleck decoder written the way stable-audio-tools writes it (weight_norm
hooks, SnakeBeta with log-scale alpha and beta), exported with torch.onnx.export, built with
`build --onnx`. Its output must match onnxruntime (the build's own check) and PyTorch itself."""

import inspect
import math

import numpy as np
import pytest

from pipeline.build import BuildOptions, build
from pipeline.graphs import GraphSelection
from pipeline.runtime import load, run_chunked

pytest.importorskip("torch", reason="exporting from PyTorch needs torch: pip install -e '.[torch]'")
import torch
from torch import nn
from torch.nn.utils import weight_norm

LATENT_CHANNELS = 64
STRIDES = (2, 4, 4, 8, 8)
CHANNEL_MULTIPLIERS = (1, 1, 2, 4, 8, 16)


class SnakeBeta(nn.Module):
    def __init__(self, channels: int) -> None:
        super().__init__()
        self.alpha = nn.Parameter(0.1 * torch.randn(channels))
        self.beta = nn.Parameter(0.1 * torch.randn(channels))

    def forward(self, x):
        alpha = torch.exp(self.alpha)[None, :, None]
        beta = torch.exp(self.beta)[None, :, None]
        return x + 1.0 / (beta + 1e-9) * torch.sin(x * alpha) ** 2


class ResidualUnit(nn.Module):
    def __init__(self, channels: int, dilation: int) -> None:
        super().__init__()
        self.layers = nn.Sequential(
            SnakeBeta(channels),
            weight_norm(nn.Conv1d(channels, channels, 7, dilation=dilation, padding=3 * dilation)),
            SnakeBeta(channels),
            weight_norm(nn.Conv1d(channels, channels, 1)),
        )

    def forward(self, x):
        return x + self.layers(x)


def decoder_block(in_channels: int, out_channels: int, stride: int) -> nn.Module:
    return nn.Sequential(
        SnakeBeta(in_channels),
        weight_norm(nn.ConvTranspose1d(in_channels, out_channels, 2 * stride, stride, math.ceil(stride / 2))),
        *(ResidualUnit(out_channels, dilation) for dilation in (1, 3, 9)),
    )


def oobleck_decoder(channels: int) -> nn.Module:
    widths = [m * channels for m in CHANNEL_MULTIPLIERS]
    blocks = [decoder_block(widths[i], widths[i - 1], STRIDES[i - 1]) for i in range(len(STRIDES), 0, -1)]
    return nn.Sequential(
        weight_norm(nn.Conv1d(LATENT_CHANNELS, widths[-1], 7, padding=3)),
        *blocks,
        SnakeBeta(widths[0]),
        weight_norm(nn.Conv1d(widths[0], 2, 7, padding=3, bias=False)),
    )


def _export(model: nn.Module, x, path, exporter: str, dynamic_length: bool = False) -> None:
    """The TorchScript exporter, or torch.export's (the default from torch 2.9, needs onnxscript;
    it writes the weights to a file beside the model and the 2 of SnakeBeta as an initializer).
    `dynamic_length`: the latents' length (and the TorchScript one's batch) as symbolic dimensions."""
    if "dynamo" not in inspect.signature(torch.onnx.export).parameters:
        if exporter == "dynamo":
            pytest.skip(f"torch {torch.__version__} has no torch.export-based ONNX exporter")
        choice = {}
    else:
        choice = {"dynamo": exporter == "dynamo"}
    if exporter == "dynamo":
        pytest.importorskip("onnxscript", reason="torch.onnx's dynamo exporter needs onnxscript")
        if dynamic_length:
            choice["dynamic_shapes"] = ({2: torch.export.Dim("frames", min=2, max=4096)},)
    elif dynamic_length:
        choice["dynamic_axes"] = {"latents": {0: "batch", 2: "frames"}, "audio": {0: "batch", 2: "samples"}}
    torch.onnx.export(model, (x,), str(path), input_names=["latents"], output_names=["audio"], opset_version=18, **choice)


@pytest.mark.parametrize("exporter", ["torchscript", "dynamo"])
def test_a_decoder_exported_from_pytorch_builds_and_matches_pytorch(tmp_path, empty_schedules, exporter):
    torch.manual_seed(0)
    model = oobleck_decoder(channels=4).eval()
    latents = torch.randn(1, LATENT_CHANNELS, 3)
    with torch.no_grad():
        _export(model, latents, tmp_path / "oobleck.onnx", exporter)
        expected = model(latents).numpy()

    result = build(BuildOptions(GraphSelection(onnx=tmp_path / "oobleck.onnx"), out=tmp_path, schedules=empty_schedules,
                                timing_repeats=2))

    assert result.passed, result.manifest.verification
    actual = load(result.artifact)(latents.numpy())
    assert actual.shape == (1, 2, 3 * math.prod(STRIDES))
    np.testing.assert_allclose(actual, expected, rtol=0, atol=1e-4 * np.abs(expected).max())


@pytest.mark.parametrize("exporter", ["torchscript", "dynamo"])
def test_a_decoder_exported_with_dynamic_length_builds_for_a_chunk_and_decodes_any_length(
    tmp_path, empty_schedules, exporter
):
    """Export once with a symbolic length, build for chunks of 24 frames, decode 40 frames in
    chunks (overlap 20 covers the decoder's receptive radius): the result is PyTorch's on all 40."""
    torch.manual_seed(0)
    model = oobleck_decoder(channels=4).eval()
    latents = torch.randn(1, LATENT_CHANNELS, 40)
    with torch.no_grad():
        _export(model, latents[:, :, :3], tmp_path / "oobleck.onnx", exporter, dynamic_length=True)
        expected = model(latents).numpy()
    selection = GraphSelection(onnx=tmp_path / "oobleck.onnx", input_shapes={"latents": (1, LATENT_CHANNELS, 24)})

    result = build(BuildOptions(selection, out=tmp_path, schedules=empty_schedules, timing_repeats=2))

    assert result.passed, result.manifest.verification
    actual = run_chunked(load(result.artifact), latents.numpy(), overlap=20)
    np.testing.assert_allclose(actual, expected, rtol=0, atol=1e-4 * np.abs(expected).max())
