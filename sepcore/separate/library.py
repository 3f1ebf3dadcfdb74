"""Batch separation of a music library, one file at a time, in bounded memory.

What the ``separate`` job does per file, without Ray:

1. :func:`list_library` lists the audio files below a prefix with their size and
   version tag (mtime locally, ETag on S3) from one listing; :func:`change_key`
   hashes URI, size and version, so a rewritten file gets a new key.
2. :func:`output_dir` maps the file's path relative to the library to a safe output
   folder (:func:`safe_relative`): no ``..``, no absolute paths, unicode normalised,
   plus a short hash of the original relative path so two sources never share one.
3. :func:`separate_file`: fetch (S3 objects are downloaded to scratch), decode in an
   isolated child process (:mod:`sepcore.io.decode`) into a raw float32 file, then
   stream it: lay it out as ``settings.channels`` (1: the mean of the channels) or
   else the source's channels, resample to the model's rate (soxr, streaming),
   separate block by block with the separator (:mod:`sepcore.separate.separator`: a mask
   model through :func:`sepcore.separate.apply.iter_separate_blocks`, a Demucs model through
   :mod:`sepcore.separate.demucs`; for a mask model, with the channel rule of
   :mod:`sepcore.separate.apply`: a model taking that many channels sees
   them all, so a stereo model gives stereo stems of a stereo file; otherwise the
   model sees the mean of the channels, repeated to its channel count, and one mask
   is applied to every channel: a mono model on a stereo file, a stereo model on a
   mono file), resample the instrument to the output rate and write both stems,
   with that layout, to local FLAC/WAV as the blocks come, and upload them
   atomically. No step holds the whole file's spectrogram; the working set is a few
   blocks of ``block_seconds`` whatever the file's length.

Stems. ``instrument`` is the masked mixture (seed 002 §5.1). ``rest`` is the input
minus the instrument at the output rate, which at the model's rate is exactly the
inverted-mask stem ``ISTFT((1 - mask) X)`` (up to the STFT round trip, about 1e-6)
and above the model's Nyquist frequency keeps the input's high band, so
``instrument + rest`` reproduces the input to within float rounding (FLAC: 24-bit
quantisation, about 1e-7 of full scale). A multi-stem checkpoint (``stems`` in its
meta, the last ``other``) is the same with more stems: every stem is computed (with
the Wiener filter when ``settings.wiener_iterations > 0``), the requested ones are
written to ``<stem>.<fmt>``, and ``other`` is written as the input minus the sum of the
other stems resampled to the output rate, so the stems, all requested, add up to
the input the same way. A Demucs model's stems are written as the model makes them
(none is the input minus the others: :mod:`sepcore.separate.demucs`).

Shapes: decoded samples ``(frames, channels)`` (interleaved, as on disk); everything
handed to the separation is ``(channels, samples)``.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
import time
import unicodedata
from collections.abc import Iterator
from contextlib import ExitStack
from dataclasses import dataclass
from typing import Any

import numpy as np
import soundfile as sf
import soxr
from torch import nn

from sepcore.errors import AudioError
from sepcore.io import storage
from sepcore.io.decode import decode_isolated
from sepcore.separate.config import (
    SINGLE_STEMS,
    SeparationSettings,  # re-exported: how a file is separated
)
from sepcore.separate.separator import Separator, as_separator
from sepcore.units import Hertz, Seconds

#: File name endings the library listing picks up (case-insensitive).
AUDIO_SUFFIXES = (
    ".wav", ".wave", ".flac", ".mp3", ".ogg", ".oga", ".opus",
    ".m4a", ".aac", ".mp4", ".aif", ".aiff", ".aifc",
)  # fmt: skip
#: Output formats: soundfile container and subtype.
OUTPUT_FORMATS = {"flac": ("FLAC", "PCM_24"), "wav": ("WAV", "FLOAT")}
FLAC_MAX_CHANNELS = 8
STEMS = SINGLE_STEMS  # the stems of a single-target checkpoint
#: Samples per channel read from the decoded file per resampling step.
READ_BLOCK = 1 << 18


# ------------------------------------------------------------------------ listing


@dataclass(frozen=True)
class LibraryFile:
    """One source file: its URI, path relative to the library, size and version."""

    uri: str
    relative: str
    size: int
    version: str

    @property
    def change_key(self) -> str:
        return change_key(self.uri, self.size, self.version)


def change_key(uri: str, size: int, version: str) -> str:
    """A key that changes when the file at ``uri`` is rewritten (16 hex digits)."""
    return hashlib.sha256(f"{uri}\n{size}\n{version}".encode()).hexdigest()[:16]


def list_library(
    prefix: str, suffixes: tuple[str, ...] = AUDIO_SUFFIXES, exclude: str | None = None
) -> list[LibraryFile]:
    """Audio files below ``prefix`` (recursive, sorted), skipping anything below ``exclude``.

    Hidden files and folders (a name starting with ``.``) are left out.
    """
    root = storage.normalize_uri(prefix).rstrip("/")
    skip = storage.normalize_uri(exclude).rstrip("/") + "/" if exclude else None
    files = []
    for row in storage.list_info(root, suffixes):
        uri = row["uri"]
        if skip and uri.startswith(skip):
            continue
        relative = uri[len(root) :].lstrip("/")
        if any(part.startswith(".") for part in relative.split("/")):
            continue
        files.append(LibraryFile(uri, relative, row["size"], row["version"]))
    return files


# --------------------------------------------------------------------------- names


def _safe_part(part: str) -> str:
    part = unicodedata.normalize("NFC", part)
    part = "".join("_" if (unicodedata.category(ch)[0] == "C" or ch in '\\:*?"<>|') else ch
                   for ch in part).strip()
    if part in ("", ".", ".."):
        return "_"
    return part[:150]


def safe_relative(relative: str) -> str:
    """A relative path made safe for every store: no empty, ``.`` or ``..`` parts.

    Each part is NFC-normalised, control characters and ``\\ : * ? " < > |`` become
    ``_``, leading slashes are dropped and parts are cut to 150 characters. Spaces
    and non-ASCII letters are kept.
    """
    parts = relative.replace("\\", "/").split("/")
    return "/".join(_safe_part(p) for p in parts if p != "") or "_"


def output_dir(output: str, relative: str) -> str:
    """Folder of one source's stems: ``<output>/stems/<safe relative>-<hash8>``.

    The hash is of the original relative path, so sources whose safe names coincide
    (``a b.wav`` and ``a?b.wav``, or ``song.mp3`` and ``song.flac`` once extensions
    are dropped by someone) still get different folders, and the name is stable
    across runs.
    """
    digest = hashlib.sha256(relative.encode("utf-8", "surrogateescape")).hexdigest()[:8]
    return storage.join(output, "stems", f"{safe_relative(relative)}-{digest}")


# ------------------------------------------------------------------------ streaming


class RawSamples:
    """Interleaved float32 samples in a local file, read by explicit reads.

    Reads go through the page cache instead of a memory map, so the pages of a long
    file never count as the process's own memory. ``samples[a:b]`` gives rows ``a`` to
    ``b - 1``; ``.T`` is a channels-first view. Shape: ``(frames, channels)``.
    """

    ndim = 2

    def __init__(self, path: str, frames: int, channels: int):
        self.path, self.frames, self.channels = path, frames, channels
        self.shape = (frames, channels)

    def read(self, start: int, stop: int) -> np.ndarray:
        start, stop = max(0, start), min(stop, self.frames)
        if stop <= start:
            return np.zeros((0, self.channels), np.float32)
        count = (stop - start) * self.channels
        data = np.fromfile(self.path, np.float32, count, offset=start * self.channels * 4)
        return data.reshape(-1, self.channels)

    def __getitem__(self, index: slice) -> np.ndarray:
        start, stop, step = index.indices(self.frames)
        if step != 1:
            raise ValueError("RawSamples reads contiguous rows only")
        return self.read(start, stop)

    @property
    def T(self) -> _ChannelsFirst:  # noqa: N802 (numpy's name)
        return _ChannelsFirst(self)


class _ChannelsFirst:
    """``(channels, frames)`` view of :class:`RawSamples` for ``view[:, a:b]``."""

    ndim = 2

    def __init__(self, raw: RawSamples):
        self.raw = raw
        self.shape = (raw.channels, raw.frames)

    def __getitem__(self, index: tuple[slice, slice]) -> np.ndarray:
        rows, cols = index
        return self.raw[cols].T[rows]


class _Stream:
    """A resampler fed on demand: ``take(n)`` gives exactly ``n`` samples (fewer at the end)."""

    def __init__(self, source: Iterator[np.ndarray], rate_in: int, rate_out: int, channels: int):
        self.source = source
        self.resampler = (
            soxr.ResampleStream(rate_in, rate_out, channels, dtype="float32")
            if rate_in != rate_out
            else None
        )
        self.buffer = np.zeros((0, channels), dtype=np.float32)
        self.done = False

    def _pull(self) -> None:
        chunk = next(self.source, None)
        if chunk is None:
            self.done = True
            if self.resampler is not None:
                tail = self.resampler.resample_chunk(
                    np.zeros((0, self.buffer.shape[1]), np.float32), last=True
                )
                self.buffer = np.concatenate([self.buffer, tail.reshape(-1, self.buffer.shape[1])])
            return
        if self.resampler is not None:
            chunk = self.resampler.resample_chunk(chunk).reshape(-1, self.buffer.shape[1])
        self.buffer = np.concatenate([self.buffer, chunk])

    def take(self, n: int) -> np.ndarray:
        while self.buffer.shape[0] < n and not self.done:
            self._pull()
        out, self.buffer = self.buffer[:n], self.buffer[n:]
        return out

    def rest(self) -> np.ndarray:
        while not self.done:
            self._pull()
        out, self.buffer = self.buffer, self.buffer[:0]
        return out


def _layout(block: np.ndarray, channels: int) -> np.ndarray:
    """``(n, c)`` samples laid out as ``channels`` channels (1: the mean)."""
    if channels == block.shape[1]:
        return block
    if channels == 1:
        return block.mean(axis=1, keepdims=True, dtype=np.float32)
    raise ValueError(f"cannot lay {block.shape[1]} channels out as {channels}")


def _blocks(samples: np.ndarray | RawSamples, channels: int) -> Iterator[np.ndarray]:
    for start in range(0, samples.shape[0], READ_BLOCK):
        yield _layout(np.asarray(samples[start : start + READ_BLOCK]), channels)


def _resampled_to_disk(
    samples: np.ndarray | RawSamples, rate_in: int, rate_out: int, channels: int, path: str
) -> RawSamples:
    """Stream ``samples`` (frames, c) resampled to ``rate_out`` into a raw file."""
    stream = _Stream(_blocks(samples, channels), rate_in, rate_out, channels)
    frames = 0
    with open(path, "wb") as out:
        while True:
            chunk = stream.take(READ_BLOCK)
            if chunk.shape[0] == 0:
                break
            out.write(np.ascontiguousarray(chunk, dtype=np.float32).tobytes())
            frames += chunk.shape[0]
    return RawSamples(path, frames, channels)


def _resampled_stems(
    blocks: Iterator[tuple[int, dict[str, np.ndarray]]], names: list[str], rate_in: int,
    rate_out: int, channels: int,
) -> _Stream:  # fmt: skip
    """One resampler for the stems ``names`` of separated ``blocks``, side by side:
    ``take(n)`` gives ``(n, len(names) * channels)`` samples, stem after stem."""
    joined = (np.concatenate([parts[n].T for n in names], axis=1) for _, parts in blocks)
    return _Stream(joined, rate_in, rate_out, len(names) * channels)


def separate_stream(
    separator: nn.Module | Separator,
    samples: np.ndarray | RawSamples,
    rate: Hertz,
    settings: SeparationSettings,
    paths: dict[str, str],
    scratch: str,
) -> dict[str, Any]:
    """Separate decoded ``samples`` ``(frames, channels)`` at ``rate`` into stem files.

    ``separator``: a :class:`~sepcore.separate.separator.Separator` (a mask model, an
    ``nn.Module``, is made one with ``settings``). ``paths`` maps each stem of
    ``settings.written`` to a local file that is written as the blocks come. The audio is
    laid out as ``settings.channels`` (None: the source's) before the separator, which
    applies its channel rule (module docstring); the stems have that layout. Every stem
    of ``settings.all_stems`` that is needed is computed; the separator's residual
    (``rest``, ``other`` of a mask model; none for Demucs) is written as the input minus
    the others at the output rate. Returns the output ``sample_rate``, ``channels`` and
    ``frames``.
    """
    sep = as_separator(separator, settings)
    channels = settings.channels or samples.shape[1]
    out_rate = settings.sample_rate or rate
    model_audio = samples
    if rate != sep.sample_rate or channels != samples.shape[1]:
        model_audio = _resampled_to_disk(
            samples, rate, sep.sample_rate, channels, os.path.join(scratch, "model.f32")
        )
    blocks = sep.iter_blocks(model_audio.T, settings.block_seconds)
    residual, written = sep.residual, settings.written
    resampled = [n for n in sep.stems if n != residual and (n in written or residual in written)]
    estimates = _resampled_stems(blocks, resampled, sep.sample_rate, out_rate, channels)
    reference = _Stream(_blocks(samples, channels), rate, out_rate, channels)
    container, subtype = OUTPUT_FORMATS[settings.output_format]
    clip = subtype != "FLOAT"
    frames = 0
    with ExitStack() as stack:
        files = {n: stack.enter_context(sf.SoundFile(paths[n], "w", out_rate, channels, subtype,
                                                     format=container)) for n in written}  # fmt: skip
        while True:
            ref = reference.take(READ_BLOCK)
            if ref.shape[0] == 0:
                break
            est = estimates.take(ref.shape[0])
            if est.shape[0] < ref.shape[0]:  # resampler rounding at the very end
                est = np.concatenate([est, np.zeros((ref.shape[0] - est.shape[0], est.shape[1]),
                                                    np.float32)])  # fmt: skip
            parts = {n: est[:, i * channels : (i + 1) * channels] for i, n in enumerate(resampled)}
            if residual is not None and residual in written:
                parts[residual] = ref - sum(parts.values(), np.zeros_like(ref))
            for name, f in files.items():
                f.write(np.clip(parts[name], -1.0, 1.0) if clip else parts[name])
            frames += ref.shape[0]
        estimates.rest()  # drain (a sample or two of resampler rounding)
    return {"sample_rate": out_rate, "channels": channels, "frames": frames}


def separate_file(
    model: nn.Module | Separator,
    source: LibraryFile,
    out_dir: str,
    settings: SeparationSettings,
    scratch_root: str | None = None,
    decode_timeout_s: Seconds = 600.0,
    decode_max_memory_mb: int = 4096,
    max_seconds: Seconds = 4 * 3600.0,
) -> dict[str, Any]:
    """Separate one library file into ``<out_dir>/<stem>.<fmt>`` for each written stem
    (``instrument`` and ``rest`` of a single-target checkpoint).

    Raises :class:`sepcore.io.decode.DecodeError` (or another :class:`SepError`) for a
    bad file; nothing is written to ``out_dir`` unless every stem is complete (each is
    uploaded atomically, the first stem last). Returns the manifest fields of a
    success: output URIs (``<stem>_uri``), duration, sample rate, channels and timings.
    """
    scratch = tempfile.mkdtemp(prefix="sep-separate-", dir=scratch_root)
    timings: dict[str, float] = {}
    try:
        start = time.monotonic()
        if storage.is_local(source.uri):
            local = storage.local_path(source.uri)
        else:
            local = os.path.join(scratch, "source" + os.path.splitext(source.relative)[1])
            storage.download(source.uri, local)
        timings["fetch_s"] = time.monotonic() - start
        decoded = decode_isolated(
            local, os.path.join(scratch, "decoded.f32"), source.uri,
            decode_timeout_s, decode_max_memory_mb, max_seconds,
        )  # fmt: skip
        timings["decode_s"] = decoded.seconds
        channels = settings.channels or decoded.channels
        if settings.output_format == "flac" and channels > FLAC_MAX_CHANNELS:
            raise AudioError(source.uri, f"{channels} channels: FLAC holds at most "
                             f"{FLAC_MAX_CHANNELS} (use format: wav, or channels: 1)")
        start = time.monotonic()
        ext = settings.output_format
        paths = {stem: os.path.join(scratch, f"{stem}.{ext}") for stem in settings.written}
        written = separate_stream(
            model,
            RawSamples(decoded.path, decoded.frames, decoded.channels),
            decoded.sample_rate,
            settings,
            paths,
            scratch,
        )
        timings["separate_s"] = time.monotonic() - start
        start = time.monotonic()
        uris = {stem: storage.join(out_dir, f"{stem}.{ext}") for stem in settings.written}
        for stem in reversed(settings.written):
            storage.upload(paths[stem], uris[stem])
        timings["write_s"] = time.monotonic() - start
        return {
            "duration_s": decoded.duration,
            "source_sample_rate": decoded.sample_rate,
            "source_channels": decoded.channels,
            "decoder": decoded.decoder,
            "sample_rate": written["sample_rate"],
            "channels": written["channels"],
            **{f"{stem}_uri": uri for stem, uri in uris.items()},
            **timings,
        }
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
