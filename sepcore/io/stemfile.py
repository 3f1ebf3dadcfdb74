"""Multi-stream MP4 stem files (Native Instruments Stems, MUSDB18) and PyAV decoding.

A stem file (``.stem.mp4``) holds several audio streams of equal length: in MUSDB18
and NI Stems, audio stream 0 is the mixture, then drums, bass, other, vocals
(:data:`STEM_NAMES`), AAC at 44.1 kHz stereo. Stream numbers used here count the
file's *audio* streams only (cover art or data streams are skipped); in stem files
they equal the container's stream indices.

Lengths. An AAC encoder prepends priming samples (1024 for FFmpeg's encoder) and
pads the last frame. MP4 files record the priming and the true length in an edit
list, and FFmpeg drops the priming while decoding; the reader then cuts each
stream to the duration the container states, which removes the final-frame
padding. Files without an edit list keep priming at the start of every stream (the
same shift in all streams, so stems stay aligned with the mixture). After that, all
decoded streams are **trimmed to the shortest one**: streams of one stem file differ
only by encoder padding, and trimming invents no samples.

Shape: every stream is an :class:`~sepcore.io.audio.Audio` with ``(channels, samples)``
float32 samples at the file's rate.
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from typing import IO, Any, cast

import av
import numpy as np

from sepcore.errors import AudioError, SepError
from sepcore.io import storage
from sepcore.io.audio import Audio, decode_bytes

#: Audio streams of a MUSDB18 / NI Stems file, in order.
STEM_NAMES = ("mixture", "drums", "bass", "other", "vocals")

#: Codecs :func:`write_stemfile` can put in an MP4, and the sample format each encodes.
#: AAC is lossy (what MUSDB18 and NI Stems use); ALAC (24-bit) and FLAC (24-bit) are
#: lossless. ALAC is the lossless codec NI Stems allow; FLAC-in-MP4 is less widely read.
CODECS = {"aac": None, "alac": "s32p", "flac": "s32"}

#: Samples per encoding chunk when writing (one second at 44.1 kHz): streams are
#: interleaved in the file at about this granularity.
_CHUNK = 44100

# PyAV raises FFmpegError (also a ValueError/OSError subclass for some codes).
_AV_ERRORS = (av.FFmpegError, OSError, ValueError, EOFError)


def _layout(channels: int) -> str:
    if channels == 1:
        return "mono"
    if channels == 2:
        return "stereo"
    raise ValueError(f"stem files hold mono or stereo streams, got {channels} channels")


# ---------------------------------------------------------------- decoding


def _open(source: str | IO[bytes], name: str) -> Any:
    try:
        return av.open(source, mode="r")
    except _AV_ERRORS as exc:
        raise AudioError(name, f"not a media file PyAV can open ({exc})") from exc


def _stream_samples(stream: Any) -> int | None:
    """The stream's length in samples as the container states it, if it does."""
    if not stream.duration or stream.time_base is None or not stream.rate:
        return None
    return int(round(float(stream.duration * stream.time_base) * stream.rate))


def _decode(container: Any, streams: list[Any], name: str) -> list[np.ndarray]:
    """Decode ``streams`` of ``container`` in one pass; ``(channels, samples)`` each."""
    chunks: dict[int, list[np.ndarray]] = {s.index: [] for s in streams}
    converters = {s.index: av.AudioResampler(format="fltp") for s in streams}
    try:
        for packet in container.demux(*streams):
            idx = packet.stream.index
            for frame in packet.decode():
                for converted in converters[idx].resample(frame):
                    chunks[idx].append(converted.to_ndarray())
        for idx, conv in converters.items():
            chunks[idx].extend(converted.to_ndarray() for converted in conv.resample(None))
    except _AV_ERRORS as exc:
        raise AudioError(name, f"cannot decode audio ({exc})") from exc
    out = []
    for pos, s in enumerate(streams):
        if not chunks[s.index]:
            raise AudioError(name, f"audio stream {pos} holds no samples")
        x = np.concatenate(chunks[s.index], axis=1).astype(np.float32, copy=False)
        stated = _stream_samples(s)
        if stated is not None and 0 < stated < x.shape[1]:
            x = x[:, :stated]  # drop the encoder's final-frame padding
        out.append(np.ascontiguousarray(x))
    return out


def _decode_container(
    source: str | IO[bytes], name: str, select: Sequence[int] | None, expected: int | None
) -> list[Audio]:
    container = _open(source, name)
    try:
        audio = list(container.streams.audio)
        if not audio:
            raise AudioError(name, "no audio streams")
        if expected is not None and len(audio) < expected:
            raise AudioError(name, f"{len(audio)} audio streams, expected at least {expected}")
        wanted = list(range(len(audio))) if select is None else list(select)
        for i in wanted:
            if not 0 <= i < len(audio):
                raise AudioError(name, f"no audio stream {i} (the file has {len(audio)})")
        rates = {int(audio[i].rate) for i in wanted}
        if len(rates) != 1:
            raise AudioError(name, f"audio streams have different sample rates {sorted(rates)}")
        unique = sorted(set(wanted))  # a stream asked for twice is decoded once
        decoded = _decode(container, [audio[i] for i in unique], name)
        arrays = dict(zip(unique, decoded, strict=True))
    finally:
        container.close()  # stream objects are invalid from here on
    length = min(a.shape[1] for a in arrays.values())
    rate = rates.pop()
    return [Audio(np.ascontiguousarray(arrays[i][:, :length]), rate) for i in wanted]


def read_stem_streams(
    uri: str, select: Sequence[int] | None = None, expected: int | None = None
) -> list[Audio]:
    """Decode the audio streams of a stem file (any multi-stream MP4/M4A) at any URI.

    ``select`` picks audio streams by number (default: all, in file order);
    ``expected`` is the least number of audio streams the file must have. All
    returned streams are trimmed to the shortest (see the module docstring).

    Shape: each ``Audio.samples`` is ``(channels, samples)``, float32.

    Raises :class:`AudioError` naming ``uri``: not a media file, no audio streams,
    fewer streams than expected, a missing stream number, mixed sample rates, a
    decoding error, or a missing object.
    """
    try:
        with storage.local_copy(uri) as path:
            return _decode_container(path, uri, select, expected)
    except AudioError:
        raise
    except SepError as exc:  # StorageError: missing object, network
        raise AudioError(uri, str(exc)) from exc


def read_stemfile(uri: str) -> dict[str, Audio]:
    """The five streams of a MUSDB18 / NI Stems file by name (:data:`STEM_NAMES`)."""
    streams = read_stem_streams(uri, select=range(len(STEM_NAMES)), expected=len(STEM_NAMES))
    return dict(zip(STEM_NAMES, streams, strict=True))


def decode_any(uri: str) -> Audio:
    """Decode one audio file of any format: soundfile first, then PyAV.

    soundfile reads WAV, FLAC, AIFF, OGG (and MP3 with libsndfile >= 1.1); PyAV
    covers MP3, M4A/AAC, Opus, ... A file with several audio streams gives its first
    (the mixture of a stem file). The object is read once.

    Shape: ``Audio.samples`` is ``(channels, samples)``, float32.
    """
    try:
        data = storage.read_bytes(uri)
    except SepError as exc:
        raise AudioError(uri, str(exc)) from exc
    try:
        return decode_bytes(data, uri)
    except AudioError as first:
        if not data:
            raise
        try:
            return _decode_container(io.BytesIO(data), uri, [0], None)[0]
        except AudioError as exc:
            raise AudioError(uri, f"{exc.problem}; soundfile: {first.problem}") from exc


# ---------------------------------------------------------------- encoding


def _check_streams(uri: str, streams: Sequence[Audio], codec: str) -> int:
    if codec not in CODECS:
        raise ValueError(f"unsupported stem-file codec '{codec}' (choose from {sorted(CODECS)})")
    if not streams:
        raise ValueError("a stem file needs at least one stream")
    rates = {a.sample_rate for a in streams}
    if len(rates) != 1:
        raise ValueError(f"all streams must share one sample rate, got {sorted(rates)}")
    for i, a in enumerate(streams):
        _layout(a.channels)
        if a.num_samples == 0:
            raise ValueError(f"stream {i} is empty")
        if not np.all(np.isfinite(a.samples)):
            raise AudioError(uri, f"refusing to write NaN or Inf samples (stream {i})")
    return rates.pop()


def _encode(fh: IO[bytes], streams: Sequence[Audio], codec: str, bitrate: int, rate: int) -> None:
    container = av.open(fh, mode="w", format="mp4")
    try:
        outs: list[av.AudioStream] = []
        for a in streams:
            out = cast(
                av.AudioStream, container.add_stream(codec, rate, layout=_layout(a.channels))
            )
            sample_format = CODECS[codec]
            if sample_format:
                out.codec_context.format = sample_format
            if codec == "aac":
                out.codec_context.bit_rate = int(bitrate)
            outs.append(out)
        longest = max(a.num_samples for a in streams)
        for start in range(0, longest, _CHUNK):  # interleave the streams chunk by chunk
            for a, out in zip(streams, outs, strict=True):
                if start >= a.num_samples:
                    continue
                block = np.ascontiguousarray(a.samples[:, start : start + _CHUNK], np.float32)
                frame = av.AudioFrame.from_ndarray(block, format="fltp", layout=_layout(a.channels))
                frame.sample_rate = rate
                frame.pts = start
                container.mux(out.encode(frame))
        for out in outs:
            container.mux(out.encode(None))
    finally:
        container.close()


def write_stemfile(
    uri: str, streams: Sequence[Audio], codec: str = "aac", bitrate: int = 256_000
) -> None:
    """Write ``streams`` as one multi-stream MP4 at ``uri``, atomically.

    For a MUSDB18-style file pass mixture, drums, bass, other, vocals in that order.
    ``codec`` is ``"aac"`` (lossy, ``bitrate`` bits/s per stream; what MUSDB18 and NI
    Stems use), ``"alac"`` or ``"flac"`` (lossless, 24-bit; ``bitrate`` is ignored).
    Streams are mono or stereo at one sample rate; AAC adds priming that the MP4 edit
    list hides from readers (see the module docstring). The lossless codecs store
    integers, so samples outside [-1, 1] are clipped.

    Shape: each ``Audio.samples`` is ``(channels, samples)``.
    """
    rate = _check_streams(uri, streams, codec)
    try:
        with storage.open_write(uri) as fh:
            _encode(fh, streams, codec, bitrate, rate)
    except SepError:
        raise
    except _AV_ERRORS as exc:
        raise AudioError(uri, f"cannot encode stem file ({exc})") from exc
