"""A decoder's audio as a WAV file: 32-bit float samples (WAVE_FORMAT_IEEE_FLOAT), so the file
holds exactly the fp32 values the model computed, unclipped and unquantized; soundfile, scipy,
ffmpeg and audio editors read it. Python's `wave` module writes integer PCM only."""

from __future__ import annotations

import os
import struct
from pathlib import Path

import numpy as np

from .errors import InputError

WAVE_FORMAT_IEEE_FLOAT = 3
SAMPLE_BYTES = 4
# The sample rate of Stable Audio Open 1.0's autoencoder (graphs/oobleck_sao.json).
DEFAULT_SAMPLE_RATE = 44100


def write_wav(path: str | Path, audio: np.ndarray, sample_rate: int = DEFAULT_SAMPLE_RATE) -> Path:
    """Write audio shaped (channels, samples), or (1, channels, samples) as the decoder returns
    it, to `path`; the file appears whole or not at all."""
    path = Path(path)
    audio = np.asarray(audio)
    if audio.ndim == 3 and audio.shape[0] == 1:
        audio = audio[0]
    if audio.ndim != 2 or audio.shape[0] < 1 or audio.shape[1] < 1:
        raise InputError(
            f"a WAV file holds (channels, samples) or (1, channels, samples); this output is {list(audio.shape)}: "
            f"write it as .npy instead"
        )
    if sample_rate < 1:
        raise InputError(f"the sample rate must be a positive number of Hz, got {sample_rate}")
    channels, samples = audio.shape
    interleaved = np.ascontiguousarray(audio.T, dtype="<f4")
    block_align = channels * SAMPLE_BYTES
    fmt = struct.pack(
        "<HHIIHHH", WAVE_FORMAT_IEEE_FLOAT, channels, sample_rate, sample_rate * block_align, block_align,
        8 * SAMPLE_BYTES, 0,
    )
    # Non-PCM WAV files carry a 'fact' chunk with the number of sample frames.
    headers = [(b"fmt ", fmt), (b"fact", struct.pack("<I", samples))]
    riff_size = 4 + sum(8 + len(payload) for _, payload in headers) + 8 + interleaved.nbytes
    if riff_size > 0xFFFFFFFF:
        raise InputError(f"{samples} samples x {channels} channels exceed the 4 GiB a WAV file can hold; write .npy")
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(path.name + ".partial")
    with open(partial, "wb") as f:
        f.write(b"RIFF" + struct.pack("<I", riff_size) + b"WAVE")
        for tag, payload in headers:
            f.write(tag + struct.pack("<I", len(payload)) + payload)
        # The samples go out from the array itself, not from a copy of them as bytes.
        f.write(b"data" + struct.pack("<I", interleaved.nbytes))
        f.write(interleaved)
    os.replace(partial, path)
    return path
