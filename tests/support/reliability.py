"""Material for the reliability tests and the soak script: inputs, checkpoints, checks.

* :func:`tiny_checkpoint` saves an untrained small hourglass the way ``sep train``
  saves one, so separation costs little;
* :func:`tone_library` writes N short WAVs (tones and noise) fast;
* :func:`tiny_sweep_config` writes a ``sep tune`` config that runs in seconds;
* :func:`bad_inputs` writes the corpus of problem files a nightly job meets: empty,
  truncated, wrong extension, not audio, a header claiming thousands of channels,
  NaN/Inf samples, an Ogg stream without its end, 6 channels, long, too long, and
  names with unicode, spaces and ``..``;
* :func:`manifest_rows`, :func:`read_summary` and :func:`check_stems` read a separate
  output back and check every stem decodes to finite samples.
"""

from __future__ import annotations

import io
import json
import math
import os
import struct
import time
from collections.abc import Callable
from typing import Any, TypeVar

import numpy as np
import soundfile as sf

from sepcore.io import storage

N_FFT, HOP, FRAMES = 256, 128, 16


def tiny_checkpoint(directory: str, target: str = "guitar", seed: int = 0) -> str:
    """An untrained smoke-size hourglass at ``directory`` (any URI); returns it."""
    import torch

    from sepcore.models import SMOKE_CONFIGS, build_model, checkpoint

    torch.manual_seed(seed)
    model = checkpoint.LogMagnitude(build_model("hourglass", **SMOKE_CONFIGS["hourglass"]))
    meta = {"model": {"name": "hourglass", "config": SMOKE_CONFIGS["hourglass"], "log_input": True},
            "task": "separator", "target": target, "sample_rate": 22050, "channels": 1,
            "feature": {"name": "stft", "n_fft": N_FFT, "hop": HOP}, "frames": FRAMES}  # fmt: skip
    checkpoint.save(directory, model, meta)
    return directory


def tiny_sweep_config(path: str, data: str, output: str, variants: str, **extra: Any) -> str:
    """Write a tiny ``sep tune`` config to ``path`` and return it.

    129-bin STFT chunks of 16 frames of the guitar in ``data``, a smoke-size hourglass,
    one data variant and 2 trials (filters 4 and 8) of 1 epoch of 2 steps; ``extra``
    replaces top-level keys (``space``, ``search``, ``train`` ...).
    """
    import yaml

    from sepcore.models import SMOKE_CONFIGS

    tree = {
        "output": output, "variants": variants,
        "prepare": {"sources": [{"kind": "slakh", "uri": data}], "target": "guitar",
                    "features": {"name": "stft", "n_fft": 512, "hop": 128}, "chunks": {"frames": 16},
                    "outputs": ["target"], "split": {"train": 0.5, "validation": 0.5, "test": 0.0}},
        "train": {"model": {"name": "hourglass", "config": SMOKE_CONFIGS["hourglass"]},
                  "optim": {"epochs": 1, "batch_size": 8, "lr": 0.003, "max_steps_per_epoch": 2},
                  "validation": {"sdr_tracks": 1, "metric": "val_sdr"},
                  "scaling": {"num_workers": 1, "cpus_per_worker": 0.5, "threads": 1}},
        "space": {"n_fft": [256], "silence": ["off"], "filters": [4, 8]}, "hop_fraction": 0.5,
        "search": {"algorithm": "grid", "max_concurrent": 2},
        "scheduler": {"name": "asha", "grace_period": 1},
        **extra,
    }  # fmt: skip
    with open(path, "w", encoding="utf-8") as fh:
        yaml.safe_dump(tree, fh)
    return path


def tone(seconds: float, rate: int = 22050, channels: int = 1, seed: int = 0) -> np.ndarray:
    """A few tones plus a little noise, ``(frames, channels)`` float32 in [-0.5, 0.5]."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * rate)) / rate
    freqs = rng.uniform(80.0, 2000.0, size=3)
    x = sum(np.sin(2 * np.pi * f * t + rng.uniform(0, 6.28)) for f in freqs) / 6.0
    x = x + 0.02 * rng.standard_normal(t.size)
    out = np.stack([x * (1.0 - 0.1 * c) for c in range(channels)], axis=1)
    return out.astype(np.float32)


def tone_library(folder: str, count: int, seconds: float = 2.0, rate: int = 22050) -> list[str]:
    """``count`` WAV files ``folder/NN/song NNN.wav`` (16-bit, mono and stereo alternating)."""
    paths = []
    for i in range(count):
        sub = os.path.join(folder, f"{i // 10:02d}")
        os.makedirs(sub, exist_ok=True)
        path = os.path.join(sub, f"song {i:03d}.wav")
        sf.write(path, tone(seconds, rate, 1 + i % 2, seed=i), rate, subtype="PCM_16")
        paths.append(path)
    return paths


def _wav_header(channels: int, rate: int, bits: int, data_bytes: int, fmt_tag: int = 1) -> bytes:
    block = channels * bits // 8
    fmt = struct.pack("<HHIIHH", fmt_tag, channels, rate, rate * block, block, bits)
    return (b"RIFF" + struct.pack("<I", 4 + 8 + len(fmt) + 8 + data_bytes) + b"WAVE"
            + b"fmt " + struct.pack("<I", len(fmt)) + fmt
            + b"data" + struct.pack("<I", data_bytes))  # fmt: skip


def _ogg_page_starts(data: bytes) -> list[int]:
    starts, at = [], data.find(b"OggS")
    while at >= 0:
        starts.append(at)
        at = data.find(b"OggS", at + 4)
    return starts


#: What :func:`bad_inputs` writes, and what the separate job must make of it:
#: ``ok`` (decoded and separated) or the manifest's ``error_class``.
BAD_INPUTS: dict[str, tuple[str, str]] = {
    # key: (relative path, expected outcome)
    "empty": ("bad/empty.wav", "EmptyAudio"),
    "truncated_flac": ("bad/truncated.flac", "DecodeError"),
    "not_audio": ("bad/liner notes.mp3", "DecodeError"),
    "thousands_of_channels": ("bad/4096 channels.wav", "DecodeError"),
    "hundreds_of_channels": ("bad/1000 channels.wav", "DecodeError"),
    "twelve_channel": ("bad/12 channels.wav", "AudioError"),
    "nan_inf": ("bad/nan and inf.wav", "DecodeError"),
    "too_long": ("bad/too long.flac", "AudioTooLong"),
    "ogg_no_eos": ("odd/no end of stream.ogg", "ok"),
    "truncated_wav": ("odd/cut short.wav", "ok"),
    "wrong_extension": ("odd/really a flac.mp3", "ok"),
    "six_channel": ("odd/surround 5.1.wav", "ok"),
    "long": ("odd/long mix.flac", "ok"),
    "unicode": ("Ünïcödé 曲/Café ♪.wav", "ok"),
    "unicode_nfd": ("Ünïcödé 曲/Cafe\u0301 ♪.wav", "ok"),
    "dots": ("a..b/song .. two  spaces.wav", "ok"),
}

#: Longest audio the tests accept (``decode.max_seconds``): ``too_long`` is over it.
MAX_SECONDS = 100.0


def bad_inputs(library: str, long_seconds: float = 60.0) -> dict[str, str]:
    """Write every file of :data:`BAD_INPUTS` below ``library``; returns key -> path."""
    rate = 22050
    paths = {key: os.path.join(library, rel) for key, (rel, _) in BAD_INPUTS.items()}
    for path in paths.values():
        os.makedirs(os.path.dirname(path), exist_ok=True)
    music = tone(8.0, rate, 2, seed=7)

    open(paths["empty"], "wb").close()
    buf = io.BytesIO()
    sf.write(buf, music, rate, format="FLAC", subtype="PCM_16")
    flac = buf.getvalue()
    with open(paths["truncated_flac"], "wb") as fh:  # the stream header and a few bytes
        fh.write(flac[:2000])
    with open(paths["wrong_extension"], "wb") as fh:
        fh.write(flac)
    with open(paths["not_audio"], "w") as fh:
        fh.write("These are liner notes, not audio.\n" * 200)
    for key, channels in (("thousands_of_channels", 4096), ("hundreds_of_channels", 1000)):
        frames = 64  # a header claiming that many channels, with data to match
        with open(paths[key], "wb") as fh:
            fh.write(_wav_header(channels, rate, 16, channels * frames * 2))
            fh.write(np.zeros(channels * frames, np.int16).tobytes())
    sf.write(paths["twelve_channel"], np.tile(music, 6), rate, subtype="PCM_16")
    bad = music.copy()
    bad[1000:1010, 0] = np.nan
    bad[5000, 1] = np.inf
    bad[6000, 0] = -np.inf
    sf.write(paths["nan_inf"], bad, rate, subtype="FLOAT")
    buf = io.BytesIO()
    sf.write(buf, music, rate, format="WAV", subtype="PCM_16")
    wav = buf.getvalue()
    with open(paths["truncated_wav"], "wb") as fh:  # header states 8 s, data holds ~5
        fh.write(wav[: len(wav) * 5 // 8])
    # Ogg Vorbis whose last page (the one flagged end-of-stream) is missing.
    with sf.SoundFile(paths["ogg_no_eos"], "w", rate, 2, format="OGG", subtype="VORBIS") as fh:
        fh.write(music)
    data = open(paths["ogg_no_eos"], "rb").read()
    with open(paths["ogg_no_eos"], "wb") as fh:
        fh.write(data[: _ogg_page_starts(data)[-1]])
    six = np.concatenate([music, music * 0.5, music[:, :1] * 0.3, music[:, 1:] * 0.7], axis=1)
    sf.write(paths["six_channel"], six, rate, subtype="PCM_16")
    sf.write(paths["long"], tone(long_seconds, rate, 1, seed=3), rate, subtype="PCM_16")
    # Too long, but cheap to write: 8 kHz mono, mostly silence.
    long_rate = 8000
    with sf.SoundFile(paths["too_long"], "w", long_rate, 1, subtype="PCM_16") as fh:
        block = np.zeros(long_rate * 10, np.float32)
        block[:100] = 0.1
        for _ in range(math.ceil((MAX_SECONDS + 20) / 10)):
            fh.write(block)
    for key in ("unicode", "unicode_nfd", "dots"):
        sf.write(paths[key], music, rate, subtype="PCM_16")
    return paths


# ------------------------------------------------------------------ reading back


def manifest_rows(output: str) -> dict[str, dict[str, Any]]:
    """The separate job's manifest as relative path -> row."""
    import pyarrow.parquet as pq

    table = pq.read_table(io.BytesIO(storage.read_bytes(storage.join(output, "manifest.parquet"))))
    return {row["relative"]: row for row in table.to_pylist()}


def _no_constants(name: str) -> Any:
    raise ValueError(f"{name} in JSON")


def read_summary(output: str) -> dict[str, Any]:
    """``summary.json``, refusing NaN and Infinity (which JSON does not have)."""
    text = storage.read_text(storage.join(output, "summary.json"))
    return json.loads(text, parse_constant=_no_constants)


def check_stems(row: dict[str, Any]) -> tuple[np.ndarray, np.ndarray]:
    """Both stems of an ``ok`` manifest row, decoded; asserts they are finite and alike."""
    stems = []
    for key in ("instrument_uri", "rest_uri"):
        with storage.local_copy(row[key]) as path:
            x, rate = sf.read(path, always_2d=True, dtype="float32")
        assert rate == row["sample_rate"], (row[key], rate)
        assert x.shape[1] == row["channels"], (row[key], x.shape)
        assert np.isfinite(x).all(), f"{row[key]}: NaN or Inf in the output"
        stems.append(x)
    assert stems[0].shape == stems[1].shape
    return stems[0], stems[1]


# ------------------------------------------------------------------ processes


def job_command(job: str, *args: str) -> list[str]:
    """``python -m ray_jobs.<job> args...`` with this interpreter."""
    import sys

    return [sys.executable, "-m", f"ray_jobs.{job}", *args]


def kill_processes_mentioning(text: str) -> list[int]:
    """SIGKILL every process (of this user) whose command line contains ``text``.

    For the Ray processes a job subprocess started with its own temporary folder
    (``RAY_TMPDIR``): they all name that folder. Returns the PIDs signalled.
    """
    import signal

    killed = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == os.getpid():
            continue
        try:
            with open(f"/proc/{entry}/cmdline", "rb") as fh:
                cmdline = fh.read().replace(b"\0", b" ").decode("utf-8", "replace")
            if text in cmdline and os.stat(f"/proc/{entry}").st_uid == os.getuid():
                os.kill(int(entry), signal.SIGKILL)
                killed.append(int(entry))
        except (OSError, ProcessLookupError):
            continue
    return killed


def files_containing(root: str, needles: list[bytes]) -> dict[str, list[bytes]]:
    """Regular files below ``root`` holding any of ``needles``: path -> needles found."""
    found: dict[str, list[bytes]] = {}
    for folder, _, names in os.walk(root):
        for name in names:
            path = os.path.join(folder, name)
            if not os.path.isfile(path) or os.path.islink(path):
                continue
            try:
                data = open(path, "rb").read()
            except OSError:
                continue
            hits = [n for n in needles if n in data]
            if hits:
                found[path] = hits
    return found


def child_processes(pid: int) -> dict[int, str]:
    """Direct children of ``pid``: PID -> command line (process title for Ray workers)."""
    out = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as fh:
                stat = fh.read()
            ppid = int(stat.rsplit(")", 1)[1].split()[1])
            if ppid != pid:
                continue
            with open(f"/proc/{entry}/cmdline", "rb") as fh:
                out[int(entry)] = fh.read().replace(b"\0", b" ").decode("utf-8", "replace").strip()
        except (OSError, IndexError, ValueError):
            continue
    return out


def ray_actor_processes(name: str) -> dict[int, str]:
    """Worker processes of *this* process's local Ray whose title contains ``name``.

    Only children of the raylet this driver started are considered, so another Ray
    on the same machine is never touched.
    """
    import ray._private.worker as worker
    from ray._private import ray_constants

    node = worker._global_node
    if node is None:
        raise RuntimeError("no local Ray started by this process (call ray.init first)")
    raylet = node.all_processes[ray_constants.PROCESS_TYPE_RAYLET][0].process.pid
    return {pid: cmd for pid, cmd in child_processes(raylet).items() if name in cmd}


def _names(folder: str, suffix: str = "") -> set[str]:
    if not os.path.isdir(folder):
        return set()
    return {n.removesuffix(suffix) for n in os.listdir(folder)
            if not n.startswith(".") and n.endswith(suffix)}  # fmt: skip


def in_progress(output: str) -> set[str]:
    """Keys of files a separate run has started and not yet recorded (local output)."""
    root = storage.local_path(storage.normalize_uri(output))
    return _names(os.path.join(root, "_started")) - records(output)


def records(output: str) -> set[str]:
    """Keys of the files recorded so far by a separate run (local output)."""
    return _names(os.path.join(storage.local_path(storage.normalize_uri(output)), "_records"), ".json")


def finished(output: str) -> set[str]:
    """Keys of the files a separate run recorded as done (status ok): what a rerun skips. A
    file cut short by a killed driver may be recorded as an error (its decoder process was
    killed first), and a rerun does it again."""
    from sepcore.separate.state import DONE_STATUSES

    folder = os.path.join(storage.local_path(storage.normalize_uri(output)), "_records")
    done = set()
    for name in records(output):
        with open(os.path.join(folder, name + ".json"), encoding="utf-8") as f:
            if json.load(f).get("status") in DONE_STATUSES:
                done.add(name)
    return done


def stem_files(output: str) -> dict[str, bytes]:
    """Every file below ``<output>/stems``: relative path -> bytes.

    Hidden files are included, except the temporary files of writes that a killed
    process never finished (:func:`sepcore.io.storage.is_temporary`), which every reader
    ignores.
    """
    root = os.path.join(storage.local_path(storage.normalize_uri(output)), "stems")
    out = {}
    for folder, _, names in os.walk(root):
        for name in names:
            if storage.is_temporary(name):
                continue
            path = os.path.join(folder, name)
            out[os.path.relpath(path, root)] = open(path, "rb").read()
    return out


_T = TypeVar("_T")


def settled(read: Callable[[], _T], quiet_s: float = 2.0, timeout_s: float = 60.0) -> _T:
    """``read()`` once it has stopped changing for ``quiet_s`` seconds.

    A SIGKILLed driver's Ray workers are reaped asynchronously by the cluster, so a
    task already running may still write its output for a moment after the kill; the
    state a rerun starts from is the one left once they are gone.
    """
    deadline = time.monotonic() + timeout_s
    last, since = read(), time.monotonic()
    while time.monotonic() - since < quiet_s:
        assert time.monotonic() < deadline, f"still changing after {timeout_s} s"
        time.sleep(0.1)
        now = read()
        if now != last:
            last, since = now, time.monotonic()
    return last
