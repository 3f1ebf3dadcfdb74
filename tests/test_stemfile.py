"""Stem files (multi-stream MP4): write, read back, errors; decode_any's PyAV fallback."""

from __future__ import annotations

import os

import av
import numpy as np
import pytest

from sepcore.errors import AudioError
from sepcore.io import stemfile, storage
from sepcore.io.audio import Audio, write_audio

RATE = 44100


def music(seconds: float, rate: int = RATE, channels: int = 2, seed: int = 0) -> Audio:
    """Band-limited test audio: a few partials with random frequencies, per channel."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(round(seconds * rate))) / rate
    rows = []
    for _ in range(channels):
        freqs = rng.uniform(80, 4000, size=6)
        phases = rng.uniform(0, 2 * np.pi, size=6)
        rows.append(sum(np.sin(2 * np.pi * f * t + p) for f, p in zip(freqs, phases, strict=True)))
    x = 0.04 * np.asarray(rows)  # four of these sum to less than full scale
    return Audio(x.astype(np.float32), rate)


def five(seconds: float = 1.3, rate: int = RATE, channels: int = 2) -> list[Audio]:
    stems = [music(seconds, rate, channels, seed=s) for s in range(1, 5)]
    mix = Audio(sum(s.samples for s in stems).astype(np.float32), rate)
    return [mix, *stems]


def corr(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.corrcoef(a.ravel(), b.ravel())[0, 1])


@pytest.mark.parametrize("codec, tol", [("alac", 2e-6), ("flac", 2e-6)])
def test_lossless_round_trip_is_exact(tmp_path, codec, tol):
    streams = five()
    uri = str(tmp_path / "song.stem.mp4")
    stemfile.write_stemfile(uri, streams, codec=codec)
    back = stemfile.read_stemfile(uri)
    assert list(back) == list(stemfile.STEM_NAMES)
    for name, orig in zip(stemfile.STEM_NAMES, streams, strict=True):
        got = back[name]
        assert got.sample_rate == RATE and got.channels == 2
        assert got.samples.dtype == np.float32
        assert got.num_samples == orig.num_samples
        assert np.max(np.abs(got.samples - orig.samples)) < tol


def test_aac_round_trip_is_aligned_and_keeps_the_length(tmp_path):
    streams = five()
    uri = str(tmp_path / "song.stem.mp4")
    stemfile.write_stemfile(uri, streams)  # AAC, 256 kb/s per stream
    back = stemfile.read_stem_streams(uri)
    assert len(back) == 5
    for got, orig in zip(back, streams, strict=True):
        assert (got.sample_rate, got.channels) == (RATE, 2)
        # The encoder's 1024 priming samples and final-frame padding are gone.
        assert got.num_samples == orig.num_samples
        c0 = corr(got.samples, orig.samples)
        assert c0 > 0.95
        for lag in (1, 64, 1024):  # aligned: no priming shift left
            assert corr(got.samples[:, lag:], orig.samples[:, :-lag]) < c0


def test_mono_streams_at_another_rate_and_subsets(tmp_path):
    streams = five(seconds=0.5, rate=22050, channels=1)
    uri = str(tmp_path / "mono.stem.m4a")
    stemfile.write_stemfile(uri, streams, codec="alac")
    picked = stemfile.read_stem_streams(uri, select=[4, 1, 4])
    assert [a.channels for a in picked] == [1, 1, 1]
    assert all(a.sample_rate == 22050 for a in picked)
    np.testing.assert_allclose(picked[0].samples, streams[4].samples, atol=2e-6)
    np.testing.assert_allclose(picked[1].samples, streams[1].samples, atol=2e-6)
    np.testing.assert_array_equal(picked[0].samples, picked[2].samples)


def test_streams_are_trimmed_to_the_shortest(tmp_path):
    a, b = music(1.0, seed=1), music(0.7, seed=2)
    uri = str(tmp_path / "uneven.stem.mp4")
    stemfile.write_stemfile(uri, [a, b], codec="alac")
    back = stemfile.read_stem_streams(uri)
    assert [x.num_samples for x in back] == [b.num_samples, b.num_samples]
    np.testing.assert_allclose(back[0].samples, a.samples[:, : b.num_samples], atol=2e-6)


def test_write_is_atomic_and_leaves_no_temporary_files(tmp_path):
    uri = str(tmp_path / "out" / "x.stem.mp4")
    stemfile.write_stemfile(uri, five(0.2), codec="alac")
    assert os.listdir(tmp_path / "out") == ["x.stem.mp4"]
    bad = five(0.2)
    bad[3].samples[0, 5] = np.nan
    with pytest.raises(AudioError, match="NaN"):
        stemfile.write_stemfile(str(tmp_path / "out" / "nan.stem.mp4"), bad)
    assert os.listdir(tmp_path / "out") == ["x.stem.mp4"]


def test_write_rejects_bad_arguments(tmp_path):
    uri = str(tmp_path / "x.stem.mp4")
    with pytest.raises(ValueError, match="codec 'wma'"):
        stemfile.write_stemfile(uri, five(0.1), codec="wma")
    with pytest.raises(ValueError, match="one sample rate"):
        stemfile.write_stemfile(uri, [music(0.1), music(0.1, rate=48000)])
    with pytest.raises(ValueError, match="at least one stream"):
        stemfile.write_stemfile(uri, [])
    with pytest.raises(ValueError, match="6 channels"):
        stemfile.write_stemfile(uri, [music(0.1, channels=6)])
    assert not os.path.exists(uri)


def _video_only(path: str) -> None:
    with av.open(path, "w", format="mp4") as c:
        v = c.add_stream("mpeg4", rate=10)
        v.width = v.height = 32
        v.pix_fmt = "yuv420p"
        for i in range(3):
            frame = av.VideoFrame.from_ndarray(np.zeros((32, 32, 3), np.uint8), format="rgb24")
            frame.pts = i
            c.mux(v.encode(frame))
        c.mux(v.encode(None))


def test_read_errors_name_the_file_and_the_problem(tmp_path):
    garbage = tmp_path / "garbage.stem.mp4"
    garbage.write_bytes(b"this is not an mp4 file at all" * 20)
    video = tmp_path / "video.mp4"
    _video_only(str(video))
    two = tmp_path / "two.stem.mp4"
    stemfile.write_stemfile(str(two), [music(0.2), music(0.2, seed=3)], codec="alac")
    cases = [
        (lambda: stemfile.read_stem_streams(str(garbage)), garbage, "not a media file"),
        (lambda: stemfile.read_stem_streams(str(video)), video, "no audio streams"),
        (lambda: stemfile.read_stemfile(str(two)), two, "2 audio streams, expected at least 5"),
        (lambda: stemfile.read_stem_streams(str(two), select=[2]), two, "no audio stream 2"),
        (lambda: stemfile.read_stemfile(str(tmp_path / "nope.stem.mp4")), "nope", "no such"),
    ]
    for call, path, problem in cases:
        with pytest.raises(AudioError) as info:
            call()
        assert str(path) in info.value.uri
        assert problem in info.value.problem


def test_truncated_stem_file_raises_audio_error(tmp_path):
    uri = str(tmp_path / "cut.stem.mp4")
    stemfile.write_stemfile(uri, five(0.5), codec="alac")
    data = (tmp_path / "cut.stem.mp4").read_bytes()
    (tmp_path / "cut.stem.mp4").write_bytes(data[: len(data) // 2])
    with pytest.raises(AudioError) as info:
        stemfile.read_stemfile(uri)
    assert info.value.uri == uri


def test_decode_any_uses_soundfile_then_pyav(tmp_path):
    wav = music(0.3, seed=5)
    write_audio(str(tmp_path / "a.wav"), wav)
    np.testing.assert_allclose(stemfile.decode_any(str(tmp_path / "a.wav")).samples, wav.samples)
    # An .m4a (AAC) soundfile cannot read; a stem file gives its first stream (the mixture).
    m4a = str(tmp_path / "b.m4a")
    stemfile.write_stemfile(m4a, [wav])
    got = stemfile.decode_any(m4a)
    assert (got.sample_rate, got.channels, got.num_samples) == (RATE, 2, wav.num_samples)
    assert corr(got.samples, wav.samples) > 0.95
    stems = str(tmp_path / "c.stem.mp4")
    streams = five(0.3)
    stemfile.write_stemfile(stems, streams, codec="alac")
    np.testing.assert_allclose(stemfile.decode_any(stems).samples, streams[0].samples, atol=2e-6)
    (tmp_path / "bad.mp3").write_bytes(b"\x00\x01garbage" * 50)
    with pytest.raises(AudioError) as info:
        stemfile.decode_any(str(tmp_path / "bad.mp3"))
    assert info.value.uri == str(tmp_path / "bad.mp3")
    assert "not a media file" in info.value.problem and "soundfile" in info.value.problem


def test_stem_files_on_s3(s3_bucket):
    uri = storage.join(s3_bucket, "musdb", "train", "song.stem.mp4")
    streams = five(0.4)
    stemfile.write_stemfile(uri, streams, codec="alac")
    assert storage.list_files(s3_bucket) == [uri]
    back = stemfile.read_stemfile(uri)
    np.testing.assert_allclose(back["vocals"].samples, streams[4].samples, atol=2e-6)
    assert stemfile.decode_any(uri).num_samples == streams[0].num_samples
    with pytest.raises(AudioError) as info:
        stemfile.read_stemfile(storage.join(s3_bucket, "missing.stem.mp4"))
    assert info.value.uri.endswith("missing.stem.mp4")
