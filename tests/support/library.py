"""Music libraries for the separate job's tests, benchmark and demo, built from mixes.

:func:`make_library` writes mixtures in the formats users' libraries hold (WAV,
FLAC, MP3, OGG, M4A/AAC, AIFF) at several sample rates and channel layouts;
:func:`add_bad_files` adds the files a nightly job meets sooner or later (empty,
truncated, not audio, 6-channel, 8 kHz mono, long).

    python -m tests.support.library out/demo/data out/demo/library [count]

builds a library from the mixes of a Slakh-layout folder (the demo set's ``mix.flac``
files).
"""

from __future__ import annotations

import os
import sys

import numpy as np
import soundfile as sf

from sepcore.io import storage
from sepcore.io.audio import Audio, read_audio, resample
from sepcore.io.stemfile import write_stemfile

#: (file name suffix, sample rate, channels) of the formats cycled through.
FORMATS = (
    (".wav", 44100, 2),
    (".flac", 22050, 1),
    (".mp3", 44100, 2),
    (".ogg", 48000, 2),
    (".m4a", 44100, 2),
    (".aiff", 32000, 1),
)


#: Frames per write call of :func:`write_any`.
WRITE_BLOCK = 1 << 16


def write_any(path: str, audio: Audio) -> None:
    """Write ``audio`` at ``path`` in the format its suffix names (``.m4a``: AAC)."""
    if path.endswith(".m4a"):
        write_stemfile(path, [audio], codec="aac", bitrate=128_000)
        return
    x = np.clip(audio.samples, -1.0, 1.0).T
    kwargs = {"format": "MP3"} if path.endswith(".mp3") else {}
    # In blocks: libsndfile's Vorbis encoder segfaults on one very large write
    # (a few minutes of 48 kHz stereo at once).
    with sf.SoundFile(path, "w", audio.sample_rate, x.shape[1], **kwargs) as fh:
        for start in range(0, len(x), WRITE_BLOCK):
            fh.write(x[start : start + WRITE_BLOCK])


def _layout(audio: Audio, rate: int, channels: int) -> Audio:
    a = resample(audio, rate) if audio.sample_rate != rate else audio
    x = a.samples
    if channels == 1:
        x = x.mean(axis=0, keepdims=True)
    elif x.shape[0] == 1:  # a little width, so the channels differ
        x = np.stack([x[0], 0.8 * x[0] + 0.2 * np.roll(x[0], 7)])
    return Audio(np.ascontiguousarray(x, dtype=np.float32), rate)


def make_library(mixes: list[str], out_dir: str) -> list[str]:
    """Write each mix in the next of :data:`FORMATS` below ``out_dir``; returns the paths.

    Names are ``song NN.<ext>`` (with a space) in sub-folders by format.
    """
    os.makedirs(out_dir, exist_ok=True)
    paths = []
    for i, uri in enumerate(mixes):
        suffix, rate, channels = FORMATS[i % len(FORMATS)]
        folder = os.path.join(out_dir, suffix.lstrip("."))
        os.makedirs(folder, exist_ok=True)
        path = os.path.join(folder, f"song {i + 1:02d}{suffix}")
        write_any(path, _layout(read_audio(uri), rate, channels))
        paths.append(path)
    return paths


def add_bad_files(out_dir: str, good: str, long_seconds: float = 300.0) -> dict[str, str]:
    """Add problem files below ``out_dir`` (using ``good``, a FLAC file, as material).

    Returns name -> path for ``empty``, ``truncated``, ``not_audio``, ``six_channel``,
    ``mono_8k`` and ``long``. The last three are valid audio and must separate.
    """
    os.makedirs(out_dir, exist_ok=True)
    base = read_audio(good)
    out = {}
    out["empty"] = os.path.join(out_dir, "empty.wav")
    open(out["empty"], "wb").close()
    data = open(storage.local_path(storage.normalize_uri(good)), "rb").read()
    out["truncated"] = os.path.join(out_dir, "truncated.flac")
    with open(out["truncated"], "wb") as fh:
        fh.write(data[: min(len(data) // 50, 2000)])
    out["not_audio"] = os.path.join(out_dir, "notes.mp3")
    with open(out["not_audio"], "w") as fh:
        fh.write("These are liner notes, not audio.\n" * 100)
    mono = base.samples.mean(axis=0)
    six = np.stack([mono * g for g in (1.0, 0.9, 0.5, 0.3, 0.7, 0.6)])
    out["six_channel"] = os.path.join(out_dir, "surround 5.1.wav")
    sf.write(out["six_channel"], six.T, base.sample_rate, subtype="PCM_16")
    out["mono_8k"] = os.path.join(out_dir, "phone 8k.wav")
    write_any(out["mono_8k"], _layout(base, 8000, 1))
    repeats = int(np.ceil(long_seconds * base.sample_rate / max(1, mono.size)))
    long = np.tile(mono, repeats)[: int(long_seconds * base.sample_rate)]
    out["long"] = os.path.join(out_dir, "long mix.flac")
    sf.write(out["long"], long, base.sample_rate, subtype="PCM_16")
    return out


def main(argv: list[str]) -> int:
    if len(argv) < 2:
        print(__doc__.strip().splitlines()[-4], file=sys.stderr)
        return 2
    mixes = [u for u in storage.list_files(argv[0]) if u.endswith("/mix.flac")]
    count = int(argv[2]) if len(argv) > 2 else len(FORMATS)
    for path in make_library(mixes[:count], argv[1]):
        print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
