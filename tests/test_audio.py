"""Audio I/O and unit conversions."""

from __future__ import annotations

import numpy as np
import pytest

from sepcore import units
from sepcore.errors import AudioError
from sepcore.io.audio import Audio, decode_bytes, read_audio, write_audio


def _noise(channels=2, n=4410, rate=44100):
    rng = np.random.default_rng(1)
    return Audio(rng.uniform(-0.9, 0.9, (channels, n)).astype(np.float32), rate)


@pytest.mark.parametrize("fmt, tol", [("flac", 2e-7), ("wav", 0.0)])
def test_round_trip_keeps_shape_rate_and_samples(tmp_path, fmt, tol):
    audio = _noise(channels=3, rate=22050)
    uri = str(tmp_path / f"x.{fmt}")
    write_audio(uri, audio)
    back = read_audio(uri)
    assert back.samples.shape == (3, 4410) and back.sample_rate == 22050
    assert np.abs(back.samples - audio.samples).max() <= tol
    assert back.duration == pytest.approx(0.2)


def test_decode_errors_name_the_file(tmp_path):
    with pytest.raises(AudioError, match="empty.wav: empty file"):
        decode_bytes(b"", "empty.wav")
    with pytest.raises(AudioError, match="junk.flac: cannot decode audio"):
        decode_bytes(b"definitely not audio" * 10, "junk.flac")
    with pytest.raises(AudioError, match="missing.flac"):
        read_audio(str(tmp_path / "missing.flac"))


def test_refuses_to_write_non_finite_samples(tmp_path):
    bad = _noise()
    bad.samples[0, 10] = np.nan
    with pytest.raises(AudioError, match="NaN"):
        write_audio(str(tmp_path / "bad.flac"), bad)
    assert not (tmp_path / "bad.flac").exists()


def test_audio_rejects_wrong_shapes():
    with pytest.raises(ValueError, match=r"\(channels, samples\)"):
        Audio(np.zeros(10, np.float32), 44100)


def test_unit_conversions_share_one_rounding_rule():
    assert units.seconds_to_samples(1.0, 22050) == 22050
    assert units.seconds_to_samples(0.5, 44101) == 22050  # nearest, halves to even
    assert units.samples_to_seconds(22050, 22050) == 1.0
    assert units.samples_to_frames(22050, 384) == 58
    assert units.db_to_gain(-6.0) == pytest.approx(0.501187, rel=1e-5)
    with pytest.raises(ValueError):
        units.seconds_to_samples(1.0, 0)


def test_resample_changes_rate_and_length_and_keeps_a_tone():
    from sepcore.io.audio import resample

    rate = 44100
    t = np.arange(rate) / rate
    tone = Audio(np.stack([np.sin(2 * np.pi * 440 * t)] * 2).astype(np.float32), rate)
    out = resample(tone, 22050)
    assert out.sample_rate == 22050 and out.samples.shape == (2, 22050)
    spectrum = np.abs(np.fft.rfft(out.samples[0]))
    assert np.argmax(spectrum) == 440  # 1 Hz bins over one second
    assert resample(tone, rate) is tone
    # A channel alone (the 1-D path) is resampled exactly as the same channel of a pair.
    np.testing.assert_array_equal(resample(Audio(tone.samples[:1], rate), 22050).samples[0], out.samples[0])


def test_to_channels_downmix_and_upmix():
    from sepcore.io.audio import to_channels

    six = Audio(np.arange(6 * 4, dtype=np.float32).reshape(6, 4), 8000)
    mono = to_channels(six, 1)
    np.testing.assert_allclose(mono.samples[0], six.samples.mean(axis=0))
    assert to_channels(six, 2).samples.shape == (2, 4)
    up = to_channels(mono, 2)
    np.testing.assert_array_equal(up.samples[0], up.samples[1])
    with pytest.raises(ValueError):
        to_channels(six, 3)
    pair = np.random.default_rng(0).standard_normal((2, 1000)).astype(np.float32)
    down = to_channels(Audio(pair, 8000), 1).samples  # two channels: the same float32 values as mean()
    assert np.array_equal(down, pair.mean(axis=0, keepdims=True, dtype=np.float32)) and down.dtype == np.float32


def test_canonical_classes():
    from sepcore.data.classes import canonical_class

    assert canonical_class("Strings (continued)") == "strings"
    assert canonical_class("Guitar") == "guitar"
    assert canonical_class("vocals") == "vocals"
    assert canonical_class("Synth Pad") == "other"
    assert canonical_class("Drums") == "drums"
