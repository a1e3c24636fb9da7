"""Audio out as 32-bit float WAV, read back by an independent reader (scipy)."""

import numpy as np
import pytest
from scipy.io import wavfile

from pipeline.errors import InputError
from pipeline.wav import write_wav

from .test_cli import cli


@pytest.mark.parametrize("shape", [(2, 1001), (1, 2, 1001), (1, 37)])
def test_written_samples_read_back_exactly(shape, tmp_path):
    audio = np.random.default_rng(0).standard_normal(shape).astype(np.float32) * 3
    path = write_wav(tmp_path / "a.wav", audio, sample_rate=48000)
    rate, samples = wavfile.read(path)
    assert rate == 48000 and samples.dtype == np.float32
    np.testing.assert_array_equal(samples.reshape(shape[-1], -1).T, audio.reshape(-1, shape[-1]))
    assert not list(tmp_path.glob("*.partial"))


@pytest.mark.parametrize("shape, rate, message", [
    ((2, 3, 100), 44100, r"this output is \[2, 3, 100\]: write it as .npy"),
    ((100,), 44100, "holds \\(channels, samples\\)"),
    ((2, 100), 0, "positive number of Hz"),
])
def test_what_a_wav_cannot_hold(shape, rate, message, tmp_path):
    (tmp_path / "a.wav").write_bytes(b"earlier take")
    with pytest.raises(InputError, match=message):
        write_wav(tmp_path / "a.wav", np.zeros(shape, np.float32), rate)
    assert (tmp_path / "a.wav").read_bytes() == b"earlier take"


def test_run_writes_the_decoders_audio_as_wav(tiny_builds, tmp_path):
    artifact = tiny_builds["decoder"].artifact
    latents = np.random.default_rng(0).standard_normal(tiny_builds["decoder"].manifest.inputs[0].shape)
    np.save(tmp_path / "latents.npy", latents.astype(np.float32))
    cli("run", artifact, "--input", tmp_path / "latents.npy", "--output", tmp_path / "audio.npy")
    done = cli("run", artifact, "--input", tmp_path / "latents.npy", "--output", tmp_path / "audio.wav")
    assert "at 44100 Hz" in done.stdout
    rate, samples = wavfile.read(tmp_path / "audio.wav")
    assert rate == 44100
    np.testing.assert_array_equal(samples.T[None], np.load(tmp_path / "audio.npy"))
