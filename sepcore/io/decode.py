"""Isolated decoding: any audio file to raw float32 on local disk, in a child process.

A library of thousands of files holds some that make decoders raise, hang, or crash
the process (a truncated MP3, a file that is not audio, a malformed header that sends
a native decoder into a loop or a segfault). :func:`decode_isolated` therefore runs
the decoder in a separate Python process (``python -m sepcore.io.decode``) with

* a wall-clock limit (``timeout_s``): the child is killed when it runs over;
* a memory limit (``max_memory_mb``, ``RLIMIT_AS`` of the child): an allocation over
  it fails in the child, never in the caller;
* a length limit (``max_seconds`` of audio).

Whatever happens in the child, the caller gets either a :class:`Decoded` or a
:class:`DecodeError` naming the file and the problem.

The child streams: it reads the file block by block (soundfile for WAV, FLAC, AIFF,
OGG and MP3; PyAV/FFmpeg for M4A/AAC, Opus and anything soundfile refuses) and
appends interleaved float32 samples to the output file, so its memory does not grow
with the file's length. The caller memory-maps the result: shape
``(samples, channels)`` (interleaved, channels last, as written), at the file's own
sample rate.

Fault injection (tests and drills; see :mod:`sepcore.faults`): the points
``decode_raise``, ``decode_hang``, ``decode_crash`` and ``decode_oom`` fire in the
child for files whose name matches.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from typing import Any

import numpy as np

from sepcore import faults
from sepcore.errors import AudioError
from sepcore.units import Hertz, Seconds

#: Samples per block the child reads and writes (per channel).
BLOCK = 1 << 16
#: Exit status of the child for a decoding error it reported itself.
EXIT_REPORTED = 3
#: Most channels accepted: more is a broken header, and would cost gigabytes per block.
MAX_CHANNELS = 64


class DecodeError(AudioError):
    """A file could not be decoded; ``kind`` says how (``error``, ``timeout``, ``crash``, ...)."""

    def __init__(self, uri: str, problem: str, kind: str = "error"):
        super().__init__(uri, problem)
        self.kind = kind


class DecodeTimeout(DecodeError):
    """The decoder ran over its time limit and was killed."""


class DecoderCrash(DecodeError):
    """The decoding process died (a signal, or an exit it did not report)."""


class DecodeMemoryError(DecodeError):
    """The decoder ran over its memory limit."""


class EmptyAudio(DecodeError):
    """The file is empty or decodes to no samples."""


class AudioTooLong(DecodeError):
    """The file is longer than the configured limit."""


#: Error class per kind; the manifest records the class name.
ERRORS: dict[str, type[DecodeError]] = {
    "error": DecodeError,
    "timeout": DecodeTimeout,
    "crash": DecoderCrash,
    "memory": DecodeMemoryError,
    "empty": EmptyAudio,
    "too_long": AudioTooLong,
}


def _error(name: str, problem: str, kind: str) -> DecodeError:
    return ERRORS.get(kind, DecodeError)(name, problem, kind)


@dataclass(frozen=True)
class Decoded:
    """A decoded file on local disk: ``path`` holds ``frames x channels`` float32 samples."""

    path: str
    sample_rate: Hertz
    channels: int
    frames: int
    decoder: str
    seconds: Seconds  # wall time the decoding took

    @property
    def duration(self) -> Seconds:
        return self.frames / self.sample_rate

    def samples(self) -> np.ndarray:
        """Memory map of the samples. Shape: ``(frames, channels)``, float32, read-only."""
        return np.memmap(self.path, dtype=np.float32, mode="r", shape=(self.frames, self.channels))


# ------------------------------------------------------------------------- the parent


def _limit_memory(max_bytes: int) -> Any:
    def apply() -> None:
        import resource

        resource.setrlimit(resource.RLIMIT_AS, (max_bytes, max_bytes))

    return apply


def decode_isolated(
    local_file: str,
    out_file: str,
    uri: str | None = None,
    timeout_s: Seconds = 600.0,
    max_memory_mb: int = 4096,
    max_seconds: Seconds = 4 * 3600.0,
) -> Decoded:
    """Decode ``local_file`` into ``out_file`` (raw float32) in a child process.

    ``uri`` names the file in errors and is matched by fault injection (default: the
    local path). Raises :class:`DecodeError` with ``kind`` one of ``error`` (the
    decoders refused the file), ``timeout``, ``crash`` (the child died from a
    signal), ``memory`` (over ``max_memory_mb``), ``too_long`` or ``empty``.
    """
    name = uri or local_file
    request = {"in": local_file, "out": out_file, "max_seconds": max_seconds, "name": name}
    start = time.monotonic()
    try:
        proc = subprocess.run(
            [sys.executable, "-m", "sepcore.io.decode", json.dumps(request)],
            capture_output=True,
            text=True,
            timeout=timeout_s,
            preexec_fn=_limit_memory(max_memory_mb << 20),
            env={**os.environ, "OMP_NUM_THREADS": "1"},
        )
    except subprocess.TimeoutExpired as exc:
        _remove(out_file)
        raise _error(name, f"decoding took longer than {timeout_s:g} s", "timeout") from exc
    seconds = time.monotonic() - start
    if proc.returncode == 0:
        header = json.loads(proc.stdout.strip().splitlines()[-1])
        return Decoded(out_file, header["sample_rate"], header["channels"], header["frames"],
                       header["decoder"], seconds)
    _remove(out_file)
    if proc.returncode == EXIT_REPORTED:
        report = json.loads(proc.stderr.strip().splitlines()[-1])
        raise _error(name, report["message"], report["kind"])
    if proc.returncode < 0:
        sig = signal.Signals(-proc.returncode).name
        raise _error(name, f"the decoder crashed ({sig})", "crash")
    tail = proc.stderr.strip().splitlines()[-1:] or ["no message"]
    raise _error(name, f"the decoder failed with exit status {proc.returncode}: {tail[0]}",
                 "crash")


def _remove(path: str) -> None:
    try:
        os.remove(path)
    except FileNotFoundError:
        pass


# -------------------------------------------------------------------------- the child


class _Reported(Exception):
    def __init__(self, kind: str, message: str):
        super().__init__(message)
        self.kind = kind


def _decode_soundfile(path: str, out: Any, max_seconds: Seconds) -> tuple[int, int, int]:
    import soundfile as sf

    with sf.SoundFile(path) as f:
        rate, channels, frames = int(f.samplerate), int(f.channels), 0
        _check_channels(channels)
        max_frames = _max_frames(max_seconds, rate)
        for block in f.blocks(blocksize=BLOCK, dtype="float32", always_2d=True):
            frames += block.shape[0]
            if not np.isfinite(block).all():
                raise _Reported("error", "the file holds NaN or Inf samples")
            if frames > max_frames:
                raise _Reported("too_long", f"longer than the limit of {max_seconds:g} s")
            out.write(np.ascontiguousarray(block).tobytes())
    return rate, channels, frames


def _check_channels(channels: int) -> None:
    if channels > MAX_CHANNELS:
        raise _Reported("error", f"{channels} channels (more than {MAX_CHANNELS}: a broken header?)")


def _max_frames(max_seconds: Seconds, rate: int) -> int:
    return int(max_seconds * rate) + 1


def _decode_pyav(path: str, out: Any, max_seconds: Seconds) -> tuple[int, int, int]:
    import av

    from sepcore.io.stemfile import _stream_samples

    with av.open(path) as container:
        if not container.streams.audio:
            raise _Reported("error", "no audio stream in the file")
        stream = container.streams.audio[0]
        rate = int(stream.codec_context.sample_rate or stream.rate or 0)
        channels = int(stream.codec_context.channels or 0)
        if rate <= 0 or channels <= 0:
            raise _Reported("error", "the audio stream has no sample rate or channels")
        _check_channels(channels)
        resampler = av.AudioResampler(format="flt", layout=stream.codec_context.layout, rate=rate)
        frames, max_frames = 0, _max_frames(max_seconds, rate)
        # as sepcore.io.stemfile does: cut to the length the container states, which
        # drops the encoder's final-frame padding (AAC)
        stated = _stream_samples(stream)
        keep = stated if stated is not None and stated > 0 else None

        def put(frame: Any) -> None:
            nonlocal frames
            data = frame.to_ndarray().reshape(-1)  # packed flt: (1, samples * channels)
            n = data.size // channels
            if keep is not None:
                n = max(0, min(n, keep - frames))
            frames += n
            if not np.isfinite(data).all():
                raise _Reported("error", "the file holds NaN or Inf samples")
            if frames > max_frames:
                raise _Reported("too_long", f"longer than the limit of {max_seconds:g} s")
            out.write(data[: n * channels].astype(np.float32, copy=False).tobytes())

        for packet_frame in container.decode(stream):
            for converted in resampler.resample(packet_frame):
                put(converted)
        for converted in resampler.resample(None):
            put(converted)
    return rate, channels, frames


def _short(exc: BaseException) -> str:
    """One line of a decoder's complaint, without the path it repeats."""
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    text = re.sub(r"^Error opening '.*?': ", "", text)
    text = re.sub(r"^\[Errno -?\d+\] ", "", text)
    text = text.replace("File does not exist or is not a regular file (possibly a pipe?).",
                        "format not recognised")
    return re.sub(r": '[^']*'$", "", text).rstrip(".")


def _child(request: dict[str, Any]) -> dict[str, Any]:
    path, out_path, name = request["in"], request["out"], request["name"]
    faults.maybe_fire("decode", name)
    if os.path.getsize(path) == 0:
        raise _Reported("empty", "the file is empty (0 bytes)")
    errors = []
    for decoder, fn in (("soundfile", _decode_soundfile), ("pyav", _decode_pyav)):
        try:
            with open(out_path, "wb") as out:
                rate, channels, frames = fn(path, out, request["max_seconds"])
        except _Reported:
            raise
        except MemoryError:
            raise
        except Exception as exc:  # a decoder refusing the file: try the next one
            errors.append(f"{decoder}: {_short(exc)}")
            continue
        if frames == 0:
            raise _Reported("empty", "the file decodes to no audio samples")
        if frames / rate > request["max_seconds"]:
            raise _Reported("too_long", f"longer than the limit of {request['max_seconds']:g} s")
        return {"sample_rate": rate, "channels": channels, "frames": frames, "decoder": decoder}
    raise _Reported("error", "not a decodable audio file (" + "; ".join(errors) + ")")


def main() -> int:
    request = json.loads(sys.argv[1])
    try:
        header = _child(request)
    except _Reported as exc:
        print(json.dumps({"kind": exc.kind, "message": str(exc)}), file=sys.stderr)
        return EXIT_REPORTED
    except MemoryError:
        print(json.dumps({"kind": "memory", "message": "decoding ran over the memory limit"}),
              file=sys.stderr)
        return EXIT_REPORTED
    except Exception as exc:  # anything else the decoders raised, reported the same way
        print(json.dumps({"kind": "error", "message": f"{type(exc).__name__}: {exc}"}),
              file=sys.stderr)
        return EXIT_REPORTED
    print(json.dumps(header))
    return 0


if __name__ == "__main__":
    sys.exit(main())
