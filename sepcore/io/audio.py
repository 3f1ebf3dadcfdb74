"""Audio that carries its sample rate, and reading/writing it at any URI.

Shape: ``Audio.samples`` is ``(channels, samples)``, float32, channels first.
"""

from __future__ import annotations

import io
from dataclasses import dataclass

import numpy as np
import soundfile as sf

from sepcore.errors import AudioError, SepError
from sepcore.io import storage
from sepcore.units import Seconds

#: soundfile formats by file suffix, and the subtype used when writing.
WRITE_FORMATS = {"flac": ("FLAC", "PCM_24"), "wav": ("WAV", "FLOAT")}


@dataclass(frozen=True)
class Audio:
    """A waveform and its sample rate.

    Shape: ``samples`` is ``(channels, samples)``.
    """

    samples: np.ndarray
    sample_rate: int

    def __post_init__(self) -> None:
        if self.samples.ndim != 2:
            raise ValueError(
                f"Audio.samples must be (channels, samples), got shape {self.samples.shape}"
            )
        if self.sample_rate <= 0:
            raise ValueError(f"sample_rate must be positive, got {self.sample_rate}")

    @property
    def channels(self) -> int:
        return int(self.samples.shape[0])

    @property
    def num_samples(self) -> int:
        return int(self.samples.shape[1])

    @property
    def duration(self) -> Seconds:
        return self.num_samples / self.sample_rate


def decode_bytes(data: bytes, name: str) -> Audio:
    """Decode an encoded file held in memory; ``name`` is used in errors only."""
    if not data:
        raise AudioError(name, "empty file (0 bytes)")
    try:
        samples, rate = sf.read(io.BytesIO(data), dtype="float32", always_2d=True)
    except Exception as exc:  # libsndfile raises RuntimeError/LibsndfileError
        raise AudioError(name, f"cannot decode audio ({exc})") from exc
    if samples.shape[0] == 0:
        raise AudioError(name, "no audio samples")
    return Audio(np.ascontiguousarray(samples.T), int(rate))


def read_audio(uri: str) -> Audio:
    """Read a whole audio file (WAV, FLAC, OGG, AIFF, ...) from any URI."""
    try:
        data = storage.read_bytes(uri)
    except SepError as exc:
        raise AudioError(uri, str(exc.args[0] if exc.args else exc)) from exc
    return decode_bytes(data, uri)


def encode_bytes(audio: Audio, fmt: str = "flac") -> bytes:
    """Encode ``audio`` as FLAC (24-bit) or WAV (32-bit float)."""
    if fmt not in WRITE_FORMATS:
        raise ValueError(f"unsupported output format '{fmt}' (choose from {sorted(WRITE_FORMATS)})")
    container, subtype = WRITE_FORMATS[fmt]
    buf = io.BytesIO()
    sf.write(buf, audio.samples.T, audio.sample_rate, format=container, subtype=subtype)
    return buf.getvalue()


def write_audio(uri: str, audio: Audio, fmt: str | None = None) -> None:
    """Write ``audio`` atomically; the format follows the suffix unless given."""
    fmt = fmt or storage.basename(uri).rsplit(".", 1)[-1].lower()
    if not np.all(np.isfinite(audio.samples)):
        raise AudioError(uri, "refusing to write NaN or Inf samples")
    storage.write_bytes(uri, encode_bytes(audio, fmt))


def resample(audio: Audio, sample_rate: int, quality: str = "HQ") -> Audio:
    """``audio`` at ``sample_rate`` (soxr; a no-op when the rate already matches)."""
    if sample_rate == audio.sample_rate:
        return audio
    import soxr

    x = audio.samples
    if x.shape[0] == 1:  # one channel as a 1-D array: no transposed copies
        out = soxr.resample(x[0], audio.sample_rate, sample_rate, quality=quality)[None]
    else:
        out = soxr.resample(x.T, audio.sample_rate, sample_rate, quality=quality).T
    return Audio(np.ascontiguousarray(out, dtype=np.float32), sample_rate)


def to_channels(audio: Audio, channels: int) -> Audio:
    """Downmix (mean of all channels) to mono, or lay mono/multichannel out as stereo.

    Stereo from mono duplicates the channel; stereo from more than two channels keeps
    the first two (front left/right in WAV and FLAC channel order).
    """
    if channels == audio.channels:
        return audio
    if channels == 1:
        x = audio.samples
        if x.shape[0] == 2 and x.dtype == np.float32:  # the same float32 values as mean(), in one pass
            return Audio(((x[0] + x[1]) * np.float32(0.5))[None], audio.sample_rate)
        return Audio(x.mean(axis=0, keepdims=True, dtype=np.float32), audio.sample_rate)
    if channels == 2:
        x = audio.samples
        pair = np.repeat(x, 2, axis=0) if x.shape[0] == 1 else x[:2]
        return Audio(np.ascontiguousarray(pair, dtype=np.float32), audio.sample_rate)
    raise ValueError(f"channels must be 1 or 2, got {channels}")
