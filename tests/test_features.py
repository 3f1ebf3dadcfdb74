"""Features against librosa references, chunking, context, masks, activations, storage."""

from __future__ import annotations

import json

import librosa
import numpy as np
import pytest

from sepcore.prepare.features import (
    FEATURES,
    Cqt,
    LogMel,
    Stft,
    chunk_count,
    chunk_frames,
    frame_power,
    ideal_binary_mask,
    ideal_ratio_mask,
    make_feature,
    rms_activation,
    stack_context,
    to_storage,
)
from sepcore.units import samples_to_frames, seconds_to_samples

BACKENDS = ["torch", "librosa"]


def chord(seconds: float, sample_rate: int, channels: int = 2, seed: int = 0) -> np.ndarray:
    """A chord of sines plus noise, different per channel: ``(channels, samples)`` float32."""
    rng = np.random.default_rng(seed)
    t = np.arange(seconds_to_samples(seconds, sample_rate)) / sample_rate
    rows = []
    for c in range(channels):
        freqs = np.array([110.0, 220.0, 277.2, 329.6, 1760.0]) * (1 + 0.01 * c)
        tone = sum(0.15 * np.sin(2 * np.pi * f * t + c) for f in freqs)
        rows.append(tone + 0.02 * rng.standard_normal(t.size))
    return np.stack(rows).astype(np.float32)


def log_power(power: np.ndarray) -> np.ndarray:
    """The documented log: dB re 1.0, floor 1e-10 (-100 dB), no top_db."""
    return librosa.power_to_db(power, ref=1.0, amin=1e-10, top_db=None)


# ------------------------------------------------------------------ features vs librosa


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("n_fft,bins", [(512, 257), (1024, 513), (1536, 769), (2048, 1025)])
@pytest.mark.parametrize("channels", [1, 2])
def test_stft_matches_librosa(backend: str, n_fft: int, bins: int, channels: int) -> None:
    x = chord(2.0, 22050, channels)[:, :-7]  # a length that is not a multiple of the hop
    feature = make_feature("stft", n_fft=n_fft, backend=backend)
    out = feature(x)
    ref = np.abs(librosa.stft(x, n_fft=n_fft, hop_length=n_fft // 4))
    assert feature.hop == n_fft // 4
    assert out.dtype == np.float32
    assert out.shape == (channels, bins, samples_to_frames(x.shape[1], n_fft // 4)) == ref.shape
    np.testing.assert_allclose(out, ref, rtol=0, atol=1e-5 * ref.max())


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("channels", [1, 2])
def test_logmel_matches_librosa(backend: str, channels: int) -> None:
    x = chord(3.0, 44100, channels)
    out = make_feature("logmel", backend=backend)(x)
    mel = librosa.feature.melspectrogram(
        y=x, sr=44100, n_fft=2048, hop_length=1024, n_mels=128, fmin=27.5, fmax=20000.0
    )
    ref = log_power(mel)
    assert out.shape == (channels, 128, samples_to_frames(x.shape[1], 1024)) == ref.shape
    np.testing.assert_allclose(out, ref, rtol=0, atol=1e-3)


@pytest.mark.parametrize("backend", BACKENDS)
def test_logmel_clips_fmax_to_nyquist(backend: str) -> None:
    feature = LogMel(sample_rate=22050, n_fft=1536, hop=384, backend=backend)
    assert feature.effective_fmax == 11025.0
    x = chord(2.0, 22050, 1)
    mel = librosa.feature.melspectrogram(
        y=x, sr=22050, n_fft=1536, hop_length=384, n_mels=128, fmin=27.5, fmax=11025.0
    )
    np.testing.assert_allclose(feature(x), log_power(mel), rtol=0, atol=1e-3)


@pytest.mark.parametrize("channels", [1, 2])
def test_cqt_matches_librosa(channels: int) -> None:
    x = chord(3.0, 44100, channels)
    out = make_feature("cqt")(x)
    spec = librosa.cqt(x, sr=44100, hop_length=1024, fmin=27.5, n_bins=192, bins_per_octave=24)
    ref = log_power(np.abs(spec) ** 2)
    assert out.shape == (channels, 192, samples_to_frames(x.shape[1], 1024)) == ref.shape
    np.testing.assert_allclose(out, ref, rtol=0, atol=1e-3)


@pytest.mark.filterwarnings("ignore:n_fft=.* is too large")  # CQT's top octaves, short input
@pytest.mark.parametrize("name", sorted(FEATURES))
@pytest.mark.parametrize("n_samples", [4095, 4096, 30001])
def test_frame_count_is_centred(name: str, n_samples: int) -> None:
    feature = make_feature(name)
    x = chord(2.0, feature.sample_rate, 2)[:, :n_samples]
    assert x.shape[1] == n_samples
    out = feature(x)
    assert out.shape == (2, feature.n_bins, samples_to_frames(n_samples, feature.hop))


def test_seed_001_and_002_shapes() -> None:
    assert make_feature("stft").n_bins == 769 and make_feature("stft").hop == 384
    assert Stft(n_fft=2048, hop=1024, sample_rate=44100).n_bins == 1025
    assert LogMel().n_bins == 128 and Cqt().n_bins == 192


@pytest.mark.parametrize("name", sorted(FEATURES))
def test_silent_input_gives_finite_floor(name: str) -> None:
    feature = make_feature(name)
    out = feature(np.zeros((2, 2 * feature.sample_rate), dtype=np.float32))
    assert np.isfinite(out).all()
    # The dB floor is 10 log10 of 1e-10 in float32 (-100.00001 under numpy 2.4): not exact.
    np.testing.assert_allclose(out, 0.0 if name == "stft" else -100.0, rtol=0, atol=1e-3)


def test_rejects_wrong_waveform_shape() -> None:
    with pytest.raises(ValueError, match=r"\(channels, samples\).*\(22050,\)"):
        make_feature("stft")(np.zeros(22050, dtype=np.float32))


def test_invalid_parameters_raise() -> None:
    with pytest.raises(ValueError, match="even"):
        Stft(n_fft=1535)
    with pytest.raises(ValueError, match="backend"):
        make_feature("cqt", backend="torch")
    with pytest.raises(ValueError, match="divisible"):
        Cqt(hop=1000)


# ------------------------------------------------------------------- STFT round trip


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("n_fft", [512, 1536, 2048])
def test_stft_round_trip(backend: str, n_fft: int) -> None:
    x = chord(1.5, 22050, 2)[:, :-11]
    stft = Stft(n_fft=n_fft, backend=backend)
    spec = stft.stft_complex(x)
    assert spec.dtype == np.complex64 and spec.shape == stft(x).shape
    np.testing.assert_allclose(np.abs(spec), stft(x), rtol=0, atol=1e-5 * np.abs(spec).max())
    y = stft.istft(spec, length=x.shape[1])
    assert y.shape == x.shape and y.dtype == np.float32
    interior = slice(n_fft, -n_fft)
    np.testing.assert_allclose(y[:, interior], x[:, interior], rtol=0, atol=1e-5)
    np.testing.assert_allclose(y, x, rtol=0, atol=1e-5)


def test_istft_rejects_wrong_bins() -> None:
    with pytest.raises(ValueError, match="769"):
        Stft().istft(np.zeros((2, 513, 10), dtype=np.complex64), length=1000)


# ------------------------------------------------------------------------- chunking


def test_chunks_of_ten_seconds_at_22k() -> None:
    x = chord(10.0, 22050, 2)  # 220500 samples
    spec = make_feature("stft", n_fft=1536, hop=384)(x)
    assert spec.shape == (2, 769, 575)  # 1 + 220500 // 384
    assert chunk_count(575, 64) == 9  # 8 whole chunks + 63 frames, padded
    assert chunk_count(575, 64, pad=False) == 8
    assert chunk_count(575, 64, hop=32) == 17  # starts 0, 32, ..., 512 (covers 575)
    assert chunk_count(575, 64, hop=32, pad=False) == 16  # last start 480
    for hop, pad, count in [(None, True, 9), (None, False, 8), (32, True, 17), (32, False, 16)]:
        chunks = chunk_frames(spec, 64, hop=hop, pad=pad)
        assert chunks.shape == (count, 2, 769, 64)
        assert chunks.dtype == spec.dtype
        step = 64 if hop is None else hop
        for k in (0, count // 2, count - 1):
            part = spec[:, :, k * step : k * step + 64]
            np.testing.assert_array_equal(chunks[k, :, :, : part.shape[2]], part)
            assert np.all(chunks[k, :, :, part.shape[2] :] == 0)
    assert np.all(chunk_frames(spec)[-1, :, :, 63:] == 0)  # 575 - 512 = 63 real frames


def test_chunks_of_short_and_empty_inputs() -> None:
    spec = np.ones((1, 5, 10), dtype=np.float32)
    assert chunk_frames(spec, 64).shape == (1, 1, 5, 64)
    assert chunk_frames(spec, 64, pad=False).shape == (0, 1, 5, 64)
    assert chunk_count(0, 64) == 0 and chunk_count(64, 64) == 1 and chunk_count(65, 64) == 2
    assert chunk_count(64, 64, pad=False) == 1 and chunk_count(63, 64, pad=False) == 0


def test_stack_context() -> None:
    spec = np.arange(2 * 3 * 5, dtype=np.float32).reshape(2, 3, 5)
    out = stack_context(spec, context=3)
    assert out.shape == (2, 3 * 7, 5)
    for t in range(5):
        for k in range(7):
            source = min(max(t + k - 3, 0), 4)  # edge frames repeated
            np.testing.assert_array_equal(out[:, 3 * k : 3 * k + 3, t], spec[:, :, source])
    assert stack_context(np.zeros((1, 129, 20)), 3).shape == (1, 903, 20)  # seed 000
    np.testing.assert_array_equal(stack_context(spec, 0), spec)


# ---------------------------------------------------------------------------- masks


def test_ideal_ratio_mask() -> None:
    rng = np.random.default_rng(1)
    mix = rng.uniform(0.01, 2.0, (2, 50, 40)).astype(np.float32)
    target = (mix * rng.uniform(0, 1, mix.shape)).astype(np.float32)
    mask = ideal_ratio_mask(target, mix)
    assert mask.dtype == np.float32 and mask.min() >= 0 and mask.max() <= 1
    np.testing.assert_allclose(mask * mix, target, rtol=1e-6, atol=1e-7)
    louder = ideal_ratio_mask(mix * 3, mix)  # magnitudes can exceed the mix's: clipped
    assert np.all(louder == 1.0)


def test_ideal_binary_mask() -> None:
    target = np.array([[[3.0, 1.0, 2.0, 0.0]]], dtype=np.float32)
    rest = np.array([[[1.0, 3.0, 2.0, 0.0]]], dtype=np.float32)
    np.testing.assert_array_equal(ideal_binary_mask(target, rest), [[[1.0, 0.0, 0.0, 0.0]]])
    with pytest.raises(ValueError, match="shapes differ"):
        ideal_binary_mask(target, rest[..., :3])


def test_masks_of_silence_are_finite_zeros() -> None:
    zeros = np.zeros((2, 769, 64), dtype=np.float32)
    for mask in (ideal_ratio_mask(zeros, zeros), ideal_binary_mask(zeros, zeros)):
        assert np.isfinite(mask).all() and np.all(mask == 0)


# ---------------------------------------------------------------------- activations


def test_rms_activation_of_a_tone_starting_halfway() -> None:
    sr, hop, n = 44100, 1024, 44100 * 4
    t = np.arange(n) / sr
    tone = np.where(t >= 2.0, 0.5 * np.sin(2 * np.pi * 440 * t), 0.0)
    stems = np.stack([np.stack([tone, tone]), np.zeros((2, n))]).astype(np.float32)
    act = rms_activation(stems, frame_length=2048, hop=hop)
    assert act.shape == (2, samples_to_frames(n, hop)) and act.dtype == np.float32
    onset = int(2.0 * sr) // hop  # frames before it see only the zeros ...
    before, after = act[0, : onset - 1], act[0, onset + 2 :]  # ... and after, only the tone
    assert np.all(before == 0.0)
    level_db = 20 * np.log10(0.5 / np.sqrt(2))  # -9.03 dB re full scale (RMS 1.0)
    np.testing.assert_allclose(after[:-2], 1 + level_db / 60, atol=2e-3)
    assert np.all(act[1] == 0.0)  # a silent stem
    rel = rms_activation(stems, frame_length=2048, hop=hop, reference="track_max")
    np.testing.assert_allclose(rel[0, onset + 2 : -2], 1.0, atol=2e-3)
    assert np.all(rel[0, : onset - 1] == 0.0)


def test_rms_activation_matches_librosa_rms_and_60_db_range() -> None:
    x = chord(2.0, 22050, 1) * np.linspace(0, 1, 44100, dtype=np.float32) ** 4
    act = rms_activation(x[None], frame_length=1536, hop=384)
    rms = librosa.feature.rms(y=x[0], frame_length=1536, hop_length=384)[0]
    db = 20 * np.log10(np.maximum(rms, 1e-30))
    np.testing.assert_allclose(act[0], np.clip((db + 60) / 60, 0, 1), atol=1e-4)
    assert act[0, 0] == 0.0 and 0 < act[0, -1] < 1


@pytest.mark.filterwarnings("ignore:n_fft=.* is too large")
@pytest.mark.parametrize("name", sorted(FEATURES))
def test_activation_frames_match_feature_frames(name: str) -> None:
    feature = make_feature(name)
    stems = np.stack([chord(1.3, feature.sample_rate, 2, seed=s) for s in range(3)])
    act = rms_activation(stems, frame_length=2048, hop=feature.hop)
    assert act.shape == (3, feature(stems[0]).shape[2])


@pytest.mark.parametrize("samples", [1, 383, 384, 385, 5000])
def test_frame_power_by_hops_is_the_direct_mean_power(samples: int) -> None:
    x = np.random.default_rng(samples).standard_normal((3, 2, samples)).astype(np.float32)
    for frame_length, hop in ((1536, 384), (1000, 300)):  # whole hops per frame, and not
        half = frame_length // 2
        padded = np.pad(np.square(x.astype(np.float64)).mean(axis=-2), ((0, 0), (half, half)))
        frames = 1 + samples // hop
        want = np.stack([padded[:, t * hop : t * hop + frame_length].sum(-1) for t in range(frames)], -1)
        np.testing.assert_allclose(frame_power(x, frame_length, hop), want / frame_length, rtol=1e-9, atol=1e-15)


def test_chunks_do_not_depend_on_the_memory_layout() -> None:
    spec = np.random.default_rng(0).random((2, 5, 150), dtype=np.float32)
    for frames, hop in ((64, None), (16, 5), (8, 20)):
        c, f = chunk_frames(spec, frames, hop), chunk_frames(np.asfortranarray(spec), frames, hop)
        assert np.array_equal(c, f) and c.flags.c_contiguous
        step = hop or frames
        np.testing.assert_array_equal(c[1], spec[:, :, step : step + frames])


def test_rms_activation_of_silence() -> None:
    for reference in ("full_scale", "track_max"):
        act = rms_activation(np.zeros((4, 2, 10000), dtype=np.float32), reference=reference)
        assert np.isfinite(act).all() and np.all(act == 0.0)


# -------------------------------------------------------------------------- storage


def test_to_storage_float16() -> None:
    x = np.array([[-100.0, 65504.0]], dtype=np.float32)
    stored = to_storage(x, "float16")
    assert stored.dtype == np.float16 and np.isfinite(stored).all()
    assert to_storage(np.array([65519.0], dtype=np.float32), "float16")[0] == 65504  # rounds to the largest
    with pytest.raises(ValueError, match="float16 overflow"):
        to_storage(np.array([70000.0], dtype=np.float32), "float16")
    with pytest.raises(ValueError, match="NaN or Inf"):
        to_storage(np.array([1.0, np.inf], dtype=np.float32), "float16")
    with pytest.raises(ValueError, match="float16 overflow"):
        to_storage(np.array([-1e6]), "float16")
    assert to_storage(np.array([1e6]), "float32").dtype == np.float32
    with pytest.raises(ValueError, match="NaN or Inf"):
        to_storage(np.array([np.nan], dtype=np.float32), "float32")
    with pytest.raises(ValueError, match="storage dtype"):
        to_storage(x, "int8")  # type: ignore[arg-type]


# ------------------------------------------------------------------------- registry


@pytest.mark.parametrize("name", sorted(FEATURES))
def test_registry_round_trip(name: str) -> None:
    feature = make_feature(name)
    assert feature.name == name and type(feature) is FEATURES[name]
    params = json.loads(json.dumps(feature.params()))  # as a checkpoint would store it
    rebuilt = make_feature(name, **params)
    assert rebuilt == feature and rebuilt.params() == feature.params()
    assert {"sample_rate", "hop"} <= set(params)


def test_registry_holds_the_three_features() -> None:
    assert set(FEATURES) == {"stft", "logmel", "cqt"}


def test_unknown_feature_or_parameter_raises() -> None:
    with pytest.raises(ValueError, match="unknown feature 'mfcc'.*cqt, logmel, stft"):
        make_feature("mfcc")
    with pytest.raises(ValueError, match="n_mels"):
        make_feature("stft", n_mels=64)
