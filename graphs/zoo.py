"""Layers and decoders other than Oobleck's, as ONNX files: the graphs of the README's sections on
other ConvTranspose-heavy graphs, so that their tables can be reproduced.

    python graphs/zoo.py OUT_DIR [NAME ...]          # every graph without names
    python -m pipeline bench --onnx OUT_DIR/unet.onnx --onnx OUT_DIR/attn.onnx ...

Single layers are written with onnx.helper. The decoders are PyTorch modules exported with
torch.onnx.export (TorchScript, opset 17), which needs torch (`pip install -e '.[torch]'`).
Weights are random, seeded per graph (BatchNorm statistics too, so they are not the identity):
timings and the agreement with onnxruntime do not depend on them.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from itertools import pairwise
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from pipeline.graphs import IR_VERSION, OPSET


def _model(nodes, inputs, outputs, initializers) -> onnx.ModelProto:
    graph = helper.make_graph(nodes, "zoo", inputs, outputs, initializers)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)], ir_version=IR_VERSION)
    onnx.checker.check_model(model)
    return model


def _tensor(name: str, shape) -> onnx.ValueInfoProto:
    return helper.make_tensor_value_info(name, TensorProto.FLOAT, list(shape))


def _conv(x_shape, cout: int, kernel: int, groups: int = 1, stride: int = 1, relu: bool = False):
    """A Conv with bias, "same" padding (kernel // 2 each side), on a square or 1-D input."""
    rng = np.random.default_rng(0)
    dims = len(x_shape) - 2
    fan_in = x_shape[1] // groups * kernel**dims
    weight = (rng.standard_normal([cout, x_shape[1] // groups] + [kernel] * dims) / np.sqrt(fan_in)).astype(np.float32)
    bias = rng.standard_normal(cout).astype(np.float32)
    pad = kernel // 2
    out = [(size + 2 * pad - kernel) // stride + 1 for size in x_shape[2:]]
    attrs = {"kernel_shape": [kernel] * dims, "pads": [pad] * 2 * dims, "strides": [stride] * dims, "group": groups}
    nodes = [helper.make_node("Conv", ["x", "w", "b"], ["conv" if relu else "y"], **attrs)]
    if relu:
        nodes.append(helper.make_node("Relu", ["conv"], ["y"]))
    initializers = [numpy_helper.from_array(weight, "w"), numpy_helper.from_array(bias, "b")]
    return _model(nodes, [_tensor("x", x_shape)], [_tensor("y", [x_shape[0], cout, *out])], initializers)


def _linear(rows: int, k: int, n: int):
    """(1, rows, k) x (k, n) + bias: a Linear layer."""
    rng = np.random.default_rng(0)
    weight = (rng.standard_normal([k, n]) / np.sqrt(k)).astype(np.float32)
    bias = rng.standard_normal(n).astype(np.float32)
    nodes = [helper.make_node("MatMul", ["x", "w"], ["product"]), helper.make_node("Add", ["product", "b"], ["y"])]
    initializers = [numpy_helper.from_array(weight, "w"), numpy_helper.from_array(bias, "b")]
    return _model(nodes, [_tensor("x", [1, rows, k])], [_tensor("y", [1, rows, n])], initializers)


def _attention_scores(heads: int, positions: int, width: int):
    """q @ k.transpose(-1, -2) per head, q and k the two halves of one input's last axis."""

    def indices(values, name):
        return numpy_helper.from_array(np.array(values, np.int64), name)

    nodes = [
        helper.make_node("Slice", ["x", "zero", "half", "last"], ["q"]),
        helper.make_node("Slice", ["x", "half", "whole", "last"], ["k"]),
        helper.make_node("Transpose", ["k"], ["kt"], perm=[0, 1, 3, 2]),
        helper.make_node("MatMul", ["q", "kt"], ["y"]),
    ]
    initializers = [
        indices([0], "zero"), indices([width], "half"), indices([2 * width], "whole"), indices([-1], "last")
    ]
    return _model(
        nodes,
        [_tensor("x", [1, heads, positions, 2 * width])],
        [_tensor("y", [1, heads, positions, positions])],
        initializers,
    )


def _constant_times(m: int, k: int, n: int, transposed: bool):
    """V @ x, or V @ x.transpose(-1, -2), with V a (1, m, k) constant."""
    rng = np.random.default_rng(0)
    v = (rng.standard_normal([1, m, k]) / np.sqrt(k)).astype(np.float32)
    nodes = [helper.make_node("MatMul", ["v", "xt" if transposed else "x"], ["y"])]
    if transposed:
        nodes.insert(0, helper.make_node("Transpose", ["x"], ["xt"], perm=[0, 2, 1]))
    x_shape = [1, n, k] if transposed else [1, k, n]
    return _model(nodes, [_tensor("x", x_shape)], [_tensor("y", [1, m, n])], [numpy_helper.from_array(v, "v")])


LAYERS: dict[str, tuple[str, Callable[[], onnx.ModelProto]]] = {
    "c3": ("Conv2d 64→64, 3 × 3, pad 1, on 128 × 128, + ReLU", lambda: _conv((1, 64, 128, 128), 64, 3, relu=True)),
    "c3s2": ("Conv2d 64→128, 3 × 3, stride 2, pad 1, on 128 × 128, + ReLU",
             lambda: _conv((1, 64, 128, 128), 128, 3, stride=2, relu=True)),
    "c1": ("Conv2d 128→64, 1 × 1, on 64 × 64, + ReLU", lambda: _conv((1, 128, 64, 64), 64, 1, relu=True)),
    "c256": ("Conv2d 256→256, 3 × 3, on 32 × 32, + ReLU", lambda: _conv((1, 256, 32, 32), 256, 3, relu=True)),
    "c32": ("Conv2d 32→32, 3 × 3, on 256 × 256, + ReLU", lambda: _conv((1, 32, 256, 256), 32, 3, relu=True)),
    "c64w": ("Conv2d 64→64, 3 × 3, on 256 × 256, + ReLU", lambda: _conv((1, 64, 256, 256), 64, 3, relu=True)),
    "c64_32w": ("Conv2d 64→32, 3 × 3, on 256 × 256, + ReLU", lambda: _conv((1, 64, 256, 256), 32, 3, relu=True)),
    "g1": ("Conv1d 256→256 k3, 8 groups, 1024 positions", lambda: _conv((1, 256, 1024), 256, 3, groups=8)),
    "g1_4": ("Conv1d 512→512 k7, 4 groups, 1024 positions", lambda: _conv((1, 512, 1024), 512, 7, groups=4)),
    "g2_32": ("Conv2d 256→256 3 × 3, 32 groups, 32 × 32", lambda: _conv((1, 256, 32, 32), 256, 3, groups=32)),
    "g2_4": ("Conv2d 128→128 3 × 3, 4 groups, 64 × 64", lambda: _conv((1, 128, 64, 64), 128, 3, groups=4)),
    "dw2": ("depthwise 3 × 3, 128 channels, 64 × 64", lambda: _conv((1, 128, 64, 64), 128, 3, groups=128)),
    "dw2k7": ("depthwise 7 × 7, 96 channels, 56 × 56", lambda: _conv((1, 96, 56, 56), 96, 7, groups=96)),
    "dw2c32": ("depthwise 3 × 3, 32 channels, 128 × 128", lambda: _conv((1, 32, 128, 128), 32, 3, groups=32)),
    "dw2s2": ("depthwise 3 × 3 stride 2, 64 channels, 112 × 112",
              lambda: _conv((1, 64, 112, 112), 64, 3, groups=64, stride=2)),
    "dw2m2": ("depthwise 3 × 3, 32 → 64 channels (multiplier 2), 64 × 64",
              lambda: _conv((1, 32, 64, 64), 64, 3, groups=32)),
    "dw1": ("depthwise Conv1d k7, 512 channels, 2048 positions", lambda: _conv((1, 512, 2048), 512, 7, groups=512)),
    "dw1k3": ("depthwise Conv1d k3, 256 channels, 4096 positions", lambda: _conv((1, 256, 4096), 256, 3, groups=256)),
    "dw1s2": ("depthwise Conv1d k5 stride 2, 256 channels, 1024 positions",
              lambda: _conv((1, 256, 1024), 256, 5, groups=256, stride=2)),
    "mm1": ("Linear: (1, 256, 384) × (384, 1152) + bias", lambda: _linear(256, 384, 1152)),
    "mmh": ("4 heads of (1024 × 64) × (64 × 1024), the right operand transposed in the graph",
            lambda: _attention_scores(4, 1024, 64)),
    "mmt": ("(256 × 1024) constant × (1024 × 1024)ᵀ", lambda: _constant_times(256, 1024, 1024, transposed=True)),
    "mmn": ("(256 × 1024) constant × (1024 × 1024)", lambda: _constant_times(256, 1024, 1024, transposed=False)),
}


def _torch_decoders() -> dict[str, tuple[str, Callable, tuple[int, ...]]]:
    """name -> (what, module factory, input shape). torch is imported here, not at the top, so the
    single layers need no torch."""
    import torch
    from torch import nn

    def block(cin, cout):
        return nn.Sequential(
            nn.Conv2d(cin, cout, 3, padding=1), nn.BatchNorm2d(cout), nn.ReLU(),
            nn.Conv2d(cout, cout, 3, padding=1), nn.BatchNorm2d(cout), nn.ReLU(),
        )

    class UNet(nn.Module):
        def __init__(self, ch=(32, 64, 128, 256)):
            super().__init__()
            self.enc = nn.ModuleList([block(3 if i == 0 else ch[i - 1], c) for i, c in enumerate(ch)])
            self.up = nn.ModuleList([nn.ConvTranspose2d(ch[i], ch[i - 1], 2, 2) for i in range(len(ch) - 1, 0, -1)])
            self.dec = nn.ModuleList([block(2 * ch[i - 1], ch[i - 1]) for i in range(len(ch) - 1, 0, -1)])
            self.out = nn.Conv2d(ch[0], 2, 1)

        def forward(self, x):
            skips = []
            for i, encode in enumerate(self.enc):
                x = encode(x if i == 0 else nn.functional.max_pool2d(x, 2))
                skips.append(x)
            for up, decode, skip in zip(self.up, self.dec, reversed(skips[:-1]), strict=True):
                x = decode(torch.cat([skip, up(x)], 1))
            return self.out(x)

    def unet_decoder(ch=(256, 128, 64, 32)):
        layers = []
        for a, b in pairwise(ch):
            layers += [nn.ConvTranspose2d(a, b, 2, 2), nn.ReLU(), nn.Conv2d(b, b, 3, padding=1), nn.ReLU(),
                       nn.Conv2d(b, b, 3, padding=1), nn.ReLU()]
        return nn.Sequential(*layers, nn.Conv2d(ch[-1], 1, 1))

    def dcgan(nz=100, ngf=64):
        layers = [nn.ConvTranspose2d(nz, ngf * 8, 4, 1, 0, bias=False), nn.BatchNorm2d(ngf * 8), nn.ReLU()]
        for mult in (8, 4, 2):
            layers += [nn.ConvTranspose2d(ngf * mult, ngf * mult // 2, 4, 2, 1, bias=False),
                       nn.BatchNorm2d(ngf * mult // 2), nn.ReLU()]
        return nn.Sequential(*layers, nn.ConvTranspose2d(ngf, 3, 4, 2, 1, bias=False), nn.Tanh())

    class HiFiGAN(nn.Module):
        def __init__(self):
            super().__init__()
            self.pre = nn.Conv1d(80, 256, 7, padding=3)
            ups, res, ch = [], [], 256
            for rate in (8, 8, 2, 2):
                ups.append(nn.ConvTranspose1d(ch, ch // 2, 2 * rate, rate, padding=rate // 2))
                ch //= 2
                res.append(nn.ModuleList([nn.Conv1d(ch, ch, 3, dilation=d, padding=d) for d in (1, 3, 5)]))
            self.ups, self.res = nn.ModuleList(ups), nn.ModuleList(res)
            self.post = nn.Conv1d(ch, 1, 7, padding=3)

        def forward(self, x):
            x = self.pre(x)
            for up, convs in zip(self.ups, self.res, strict=True):
                x = up(nn.functional.leaky_relu(x, 0.1))
                for conv in convs:
                    x = x + conv(nn.functional.leaky_relu(x, 0.1))
            return torch.tanh(self.post(nn.functional.leaky_relu(x)))

    def mobile_decoder(ch=(320, 160, 96, 64, 32)):
        layers = []
        for a, b in pairwise(ch):
            layers += [nn.ConvTranspose2d(a, b, 4, 2, 1, bias=False), nn.BatchNorm2d(b), nn.ReLU6(),
                       nn.Conv2d(b, b, 3, padding=1, groups=b, bias=False), nn.BatchNorm2d(b), nn.ReLU6(),
                       nn.Conv2d(b, b, 1, bias=False), nn.BatchNorm2d(b), nn.ReLU6()]
        return nn.Sequential(*layers, nn.Conv2d(ch[-1], 2, 1))

    def resnext_decoder(ch=(512, 256, 128)):
        layers = []
        for a, b in pairwise(ch):
            layers += [nn.ConvTranspose2d(a, b, 2, 2), nn.ReLU(), nn.Conv2d(b, b, 3, padding=1, groups=32), nn.ReLU(),
                       nn.Conv2d(b, b, 1), nn.ReLU()]
        return nn.Sequential(*layers)

    class ResidualBlock(nn.Module):
        def __init__(self, c):
            super().__init__()
            self.body = nn.Sequential(
                nn.ReflectionPad2d(1), nn.Conv2d(c, c, 3), nn.InstanceNorm2d(c), nn.ReLU(),
                nn.ReflectionPad2d(1), nn.Conv2d(c, c, 3), nn.InstanceNorm2d(c),
            )

        def forward(self, x):
            return x + self.body(x)

    def cyclegan(ngf=32, blocks=6):
        def norm_relu(c):
            return [nn.InstanceNorm2d(c), nn.ReLU()]

        layers = [nn.ReflectionPad2d(3), nn.Conv2d(3, ngf, 7), *norm_relu(ngf),
                  nn.Conv2d(ngf, 2 * ngf, 3, 2, 1), *norm_relu(2 * ngf),
                  nn.Conv2d(2 * ngf, 4 * ngf, 3, 2, 1), *norm_relu(4 * ngf)]
        layers += [ResidualBlock(4 * ngf) for _ in range(blocks)]
        layers += [nn.ConvTranspose2d(4 * ngf, 2 * ngf, 3, 2, 1, output_padding=1), *norm_relu(2 * ngf),
                   nn.ConvTranspose2d(2 * ngf, ngf, 3, 2, 1, output_padding=1), *norm_relu(ngf),
                   nn.ReflectionPad2d(3), nn.Conv2d(ngf, 3, 7), nn.Tanh()]
        return nn.Sequential(*layers)

    def groupnorm_decoder(ch=(256, 128, 64)):
        layers = []
        for a, b in pairwise(ch):
            layers += [nn.ConvTranspose2d(a, b, 4, 2, 1), nn.GroupNorm(32, b), nn.SiLU(),
                       nn.Conv2d(b, b, 3, padding=1), nn.GroupNorm(32, b), nn.SiLU()]
        return nn.Sequential(*layers, nn.Conv2d(ch[-1], 3, 3, padding=1))

    class UpsamplingDecoder(nn.Module):
        def __init__(self, ch=(256, 128, 64)):
            super().__init__()
            self.stages = nn.ModuleList(
                nn.ModuleList([nn.Conv2d(a, b, 3, padding=1), nn.GroupNorm(32, b), nn.Conv2d(b, b, 3, padding=1)])
                for a, b in pairwise(ch)
            )
            self.out = nn.Conv2d(ch[-1], 3, 3, padding=1)

        def forward(self, x):
            for conv, norm, conv2 in self.stages:
                x = nn.functional.interpolate(x, scale_factor=2.0, mode="nearest")
                x = conv2(nn.functional.silu(norm(conv(x))))
            return self.out(x)

    class Attention(nn.Module):
        def __init__(self, c=256):
            super().__init__()
            self.norm, self.qkv, self.out = nn.GroupNorm(32, c), nn.Conv2d(c, 3 * c, 1), nn.Conv2d(c, c, 1)

        def forward(self, x):
            b, c, h, w = x.shape
            q, k, v = self.qkv(self.norm(x)).reshape(b, 3, c, h * w).unbind(1)
            a = torch.softmax(q.transpose(1, 2) @ k / c**0.5, -1)
            return x + self.out((v @ a.transpose(1, 2)).reshape(b, c, h, w))

    class VocosLike(nn.Module):
        def __init__(self, c=384, blocks=4):
            super().__init__()
            self.embed = nn.Conv1d(100, c, 7, padding=3)
            self.dw = nn.ModuleList([nn.Conv1d(c, c, 7, padding=3, groups=c) for _ in range(blocks)])
            self.norm = nn.ModuleList([nn.LayerNorm(c) for _ in range(blocks)])
            self.up_proj = nn.ModuleList([nn.Linear(c, 3 * c) for _ in range(blocks)])
            self.down_proj = nn.ModuleList([nn.Linear(3 * c, c) for _ in range(blocks)])
            self.up = nn.ConvTranspose1d(c, 64, 16, 8, 4)

        def forward(self, x):
            x = self.embed(x)
            for dw, norm, up_proj, down_proj in zip(self.dw, self.norm, self.up_proj, self.down_proj, strict=True):
                y = norm(dw(x).transpose(1, 2))
                x = x + down_proj(nn.functional.gelu(up_proj(y))).transpose(1, 2)
            return self.up(x)

    return {
        "unet": (("UNet: max-pool encoder (32–256 channels), 3 × (ConvTranspose2d k2 s2, skip concat, two 3 × 3 "
                  "Conv2d + BatchNorm + ReLU), 256 × 256"), UNet, (1, 3, 256, 256)),
        "unetdec": (("UNet decoder: 3 × (ConvTranspose2d k2 s2 + two 3 × 3 Conv2d, ReLU), 256→32 channels, "
                     "32 × 32 → 256 × 256"), unet_decoder, (1, 256, 32, 32)),
        "dcgan": ("DCGAN generator: 5 ConvTranspose2d k4 (s1, then s2 p1) with BatchNorm, ReLU, Tanh",
                  dcgan, (1, 100, 1, 1)),
        "dcgan_b16": ("the same, batch 16", dcgan, (16, 100, 1, 1)),
        "hifigan": (("HiFi-GAN-like vocoder: 4 ConvTranspose1d (×8, ×8, ×2, ×2) and dilated Conv1d resblocks, "
                     "LeakyReLU"), HiFiGAN, (1, 80, 128)),
        "mobiledec": (("4 × (ConvTranspose2d k4 s2 + BN + ReLU6, depthwise 3 × 3 + BN + ReLU6, 1 × 1 + BN + "
                       "ReLU6), 320→32 channels, 8 × 8 → 128 × 128"), mobile_decoder, (1, 320, 8, 8)),
        "resnextdec": (("2 × (ConvTranspose2d k2 s2, grouped 3 × 3 Conv2d with 32 groups, 1 × 1 Conv2d, ReLU), "
                        "512→128 channels, 16 × 16 → 64 × 64"), resnext_decoder, (1, 512, 16, 16)),
        "cyclegan": (("CycleGAN's ResNet generator (InstanceNorm, reflection padding, 6 residual blocks, "
                      "2 ConvTranspose2d k3 s2, Tanh), 256 × 256"), cyclegan, (1, 3, 256, 256)),
        "gndec": (("2 × (ConvTranspose2d k4 s2, GroupNorm(32), SiLU, 3 × 3 Conv2d, GroupNorm, SiLU), "
                   "256→64 channels, 32 × 32 → 128 × 128"), groupnorm_decoder, (1, 256, 32, 32)),
        "updec": (("2 × (nearest ×2 upsampling, 3 × 3 Conv2d, GroupNorm(32), SiLU, 3 × 3 Conv2d), "
                   "256→64 channels, 32 × 32 → 128 × 128"), UpsamplingDecoder, (1, 256, 32, 32)),
        "attn": (("VAE attention block: GroupNorm, 1 × 1 q/k/v Conv2d, softmax(qᵀk/√c) over 32 × 32 "
                  "positions, v·aᵀ, 1 × 1 projection, residual; 256 channels"), Attention, (1, 256, 32, 32)),
        "lndec": (("Vocos-like: Conv1d, 4 × (depthwise Conv1d k7, LayerNorm, Linear 384→1152, GELU, "
                   "Linear 1152→384, residual), ConvTranspose1d ×8; 256 frames"), VocosLike, (1, 100, 256)),
    }


def _export(factory: Callable, shape: tuple[int, ...], path: Path) -> None:
    import torch
    from torch import nn

    torch.manual_seed(0)
    module = factory().eval()
    with torch.no_grad():
        for norm in module.modules():
            if isinstance(norm, nn.BatchNorm2d):
                norm.running_mean.normal_(0, 0.1)
                norm.running_var.uniform_(0.5, 1.5)
    torch.onnx.export(
        module, torch.randn(*shape), str(path), dynamo=False, input_names=["x"], output_names=["y"],
        opset_version=OPSET,
    )


DECODER_NAMES = (
    "unet", "unetdec", "dcgan", "dcgan_b16", "hifigan", "mobiledec", "resnextdec", "cyclegan", "gndec", "updec",
    "attn", "lndec",
)


def write(out: Path, names: list[str]) -> list[Path]:
    """Write each named graph to out/<name>.onnx; return the paths."""
    unknown = sorted(set(names) - set(LAYERS) - set(DECODER_NAMES))
    if unknown:
        raise SystemExit(f"unknown graphs {unknown}: choose from {sorted(LAYERS) + list(DECODER_NAMES)}")
    out.mkdir(parents=True, exist_ok=True)
    decoders = _torch_decoders() if set(names) & set(DECODER_NAMES) else {}
    paths = []
    for name in names:
        path = out / f"{name}.onnx"
        if name in LAYERS:
            onnx.save(LAYERS[name][1](), path)
        else:
            _, factory, shape = decoders[name]
            _export(factory, shape, path)
        paths.append(path)
        print(f"{path}: {LAYERS[name][0] if name in LAYERS else decoders[name][0]}", flush=True)
    return paths


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("out", type=Path, help="folder for the .onnx files")
    parser.add_argument("names", nargs="*", help=f"graphs to write (default: all): {', '.join(LAYERS)}, "
                        f"{', '.join(DECODER_NAMES)}")
    args = parser.parse_args(argv)
    write(args.out, args.names or [*LAYERS, *DECODER_NAMES])


if __name__ == "__main__":
    main(sys.argv[1:])
