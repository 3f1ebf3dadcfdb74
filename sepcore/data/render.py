"""MIDI -> Slakh-layout multitrack audio, with a General MIDI SoundFont and FluidSynth.

One stem per MIDI instrument (a (track, channel) pair that plays notes), as Slakh
does: each instrument is written to its own MIDI file (conductor track + its events),
rendered dry of chorus by the ``fluidsynth`` program in fast-render mode at the
requested rate, padded to a common length, gain-staged so no stem clips, summed into
the mix and normalised so the mix does not clip. What was done is recorded in
``metadata.yaml`` with Slakh's keys, which is written last as the track's commit marker.

Invariant (tested): ``mix == normalization_factor * sum(stems)`` for the stored files
(24-bit FLAC: within 1e-4).
"""

from __future__ import annotations

import hashlib
import io
import logging
import os
import shutil
import subprocess
import tempfile
import time
from dataclasses import dataclass
from typing import Any

import mido
import numpy as np
import soundfile as sf
import yaml

from sepcore.data import gm
from sepcore.data.slakh import METADATA
from sepcore.errors import RenderError, StorageError
from sepcore.io import storage
from sepcore.io.audio import Audio, write_audio
from sepcore.units import Decibels, db_to_gain

log = logging.getLogger(__name__)

SOUNDFONT_CANDIDATES = (
    "/usr/share/sounds/sf2/FluidR3_GM.sf2",
    "/usr/share/sounds/sf2/default-GM.sf2",
    "/usr/share/sounds/sf2/TimGM6mb.sf2",
    "/usr/share/soundfonts/default.sf2",
)
DEBIAN_PACKAGES = ("fluidsynth", "fluid-soundfont-gm")
#: File name endings of the MIDI files a folder is read for.
MIDI_SUFFIXES = (".mid", ".midi")
FLUIDSYNTH_GAIN = 0.5
#: Audio kept after the last MIDI event (note releases, reverb); FluidSynth renders more.
RELEASE_S = 1.5


@dataclass(frozen=True)
class MidiInstrument:
    """One instrument of a MIDI file: the notes of one channel in one track."""

    track: int
    channel: int
    program: int
    name: str
    notes: int

    @property
    def is_drum(self) -> bool:
        return self.channel == gm.DRUM_CHANNEL


def find_soundfont(setting: str = "auto") -> str:
    """A local SoundFont path: the given one, or the first General MIDI font installed."""
    if setting != "auto":
        path = storage.local_path(setting) if storage.is_local(setting) else setting
        if not os.path.exists(path):
            raise RenderError(setting, "SoundFont not found")
        return path
    for path in SOUNDFONT_CANDIDATES:
        if os.path.exists(path):
            return path
    raise RenderError(
        "soundfont",
        "no General MIDI SoundFont found; install the Debian packages "
        f"{' '.join(DEBIAN_PACKAGES)} (the README's set-up does) or set soundfont=PATH",
    )


def _fluidsynth() -> str:
    exe = shutil.which("fluidsynth")
    if not exe:
        raise RenderError(
            "fluidsynth",
            f"the fluidsynth program is not installed; install the Debian packages {' '.join(DEBIAN_PACKAGES)}",
        )
    return exe


# ---------------------------------------------------------------- MIDI splitting


def _absolute(track: mido.MidiTrack) -> list[tuple[int, mido.Message]]:
    out, now = [], 0
    for msg in track:
        now += msg.time
        out.append((now, msg))
    return out


def _to_track(events: list[tuple[int, mido.Message]], name: str) -> mido.MidiTrack:
    track = mido.MidiTrack([mido.MetaMessage("track_name", name=name, time=0)])
    last = 0
    for when, msg in sorted(events, key=lambda e: e[0]):
        if msg.is_meta and msg.type in ("end_of_track", "track_name"):
            continue
        track.append(msg.copy(time=when - last))
        last = when
    track.append(mido.MetaMessage("end_of_track", time=0))
    return track


def parse_midi(data: bytes, name: str) -> mido.MidiFile:
    try:
        return mido.MidiFile(file=io.BytesIO(data))
    except Exception as exc:  # mido raises OSError, EOFError, ValueError, KeyError...
        raise RenderError(name, f"not a readable MIDI file ({type(exc).__name__}: {exc})") from exc


def split_instruments(midi: mido.MidiFile) -> list[tuple[MidiInstrument, mido.MidiFile]]:
    """One single-instrument MIDI file per (track, channel) that plays notes.

    Each output keeps the timing of the original: a conductor track with every tempo,
    time-signature and key-signature event, and the instrument's channel events.
    """
    tracks = [_absolute(t) for t in midi.tracks]
    conductor = [
        (when, msg)
        for events in tracks
        for when, msg in events
        if msg.is_meta and msg.type in ("set_tempo", "time_signature", "key_signature")
    ]
    programs_anywhere: dict[int, int] = {}
    for events in tracks:
        for _, msg in events:
            if msg.type == "program_change":
                programs_anywhere.setdefault(msg.channel, msg.program)
    result = []
    for ti, events in enumerate(tracks):
        track_name = next((m.name for _, m in events if m.type == "track_name"), "")
        for channel in sorted({m.channel for _, m in events if not m.is_meta and hasattr(m, "channel")}):
            own = [(w, m) for w, m in events if not m.is_meta and getattr(m, "channel", None) == channel]
            notes = sum(1 for _, m in own if m.type == "note_on" and m.velocity > 0)
            if notes == 0:
                continue
            program = next((m.program for _, m in own if m.type == "program_change"), None)
            if program is None:
                program = programs_anywhere.get(channel, 0)
                own.insert(0, (0, mido.Message("program_change", channel=channel, program=program)))
            is_drum = channel == gm.DRUM_CHANNEL
            label = track_name or gm.program_name(program, is_drum)
            inst = MidiInstrument(ti, channel, program, label, notes)
            single = mido.MidiFile(type=1, ticks_per_beat=midi.ticks_per_beat)
            single.tracks.append(_to_track(conductor, "conductor"))
            single.tracks.append(_to_track(own, label))
            result.append((inst, single))
    return result


def midi_bytes(midi: mido.MidiFile) -> bytes:
    buf = io.BytesIO()
    midi.save(file=buf)
    return buf.getvalue()


# ---------------------------------------------------------------- audio rendering


def render_midi(midi: mido.MidiFile, soundfont: str, sample_rate: int, name: str) -> np.ndarray:
    """Render a MIDI file with FluidSynth. Shape: ``(2, samples)`` float32."""
    exe = _fluidsynth()
    timeout = 120 + 10 * midi.length
    with tempfile.TemporaryDirectory(prefix="sep-render-") as tmp:
        mid_path, wav_path = os.path.join(tmp, "in.mid"), os.path.join(tmp, "out.wav")
        midi.save(mid_path)
        cmd = [exe, "-ni", "-q", "-C", "0", "-g", str(FLUIDSYNTH_GAIN), "-r", str(sample_rate),
               "-O", "float", "-T", "wav", "-F", wav_path, soundfont, mid_path]  # fmt: skip
        try:
            proc = subprocess.run(cmd, capture_output=True, timeout=timeout, check=False)
        except subprocess.TimeoutExpired as exc:
            raise RenderError(name, f"fluidsynth took longer than {timeout:.0f} s") from exc
        if proc.returncode != 0 or not os.path.exists(wav_path):
            err = proc.stderr.decode(errors="replace").strip()[-300:]
            raise RenderError(name, f"fluidsynth failed (exit {proc.returncode}): {err}")
        samples, rate = sf.read(wav_path, dtype="float32", always_2d=True)
    if rate != sample_rate:
        raise RenderError(name, f"fluidsynth wrote {rate} Hz instead of {sample_rate} Hz")
    return np.ascontiguousarray(samples.T)


def integrated_loudness(samples: np.ndarray, sample_rate: int) -> float | None:
    """ITU-R BS.1770 integrated loudness in LUFS; None for silence or very short audio.

    Shape: ``samples`` is ``(channels, samples)``.
    """
    import pyloudnorm

    if samples.shape[1] < int(0.5 * sample_rate) or not np.any(samples):
        return None
    value = pyloudnorm.Meter(sample_rate).integrated_loudness(samples.T.astype(np.float64))
    return None if not np.isfinite(value) else round(float(value), 4)


def _peak(x: np.ndarray) -> float:
    return float(np.max(np.abs(x))) if x.size else 0.0


def mix_stems(stems: np.ndarray, target_peak_db: Decibels = -1.0) -> tuple[np.ndarray, np.ndarray, float, float]:
    """Gain-stage stems and build the mix.

    Shape: ``stems`` is ``(stems, channels, samples)``.
    Returns ``(stems * overall_gain, mix, overall_gain, normalization_factor)`` where
    ``mix = normalization_factor * sum(stems * overall_gain)``; both gains are at most 1
    and keep every stem and the mix at or below ``target_peak_db`` dBFS.
    """
    target = db_to_gain(target_peak_db)
    loudest = _peak(stems)
    overall_gain = min(1.0, target / loudest) if loudest > 0 else 1.0
    staged = (stems * overall_gain).astype(np.float32)
    total = staged.sum(axis=0)
    peak = _peak(total)
    factor = min(1.0, target / peak) if peak > 0 else 1.0
    return staged, (total * factor).astype(np.float32), overall_gain, factor


# ---------------------------------------------------------------- one whole track


def render_track(
    midi_data: bytes,
    midi_name: str,
    track_uri: str,
    soundfont: str = "auto",
    sample_rate: int = 44100,
    channels: int = 2,
    fmt: str = "flac",
    target_peak_db: Decibels = -1.0,
) -> dict:
    """Render one MIDI song into a Slakh-layout track folder at ``track_uri``.

    Returns the metadata written to ``metadata.yaml``. Raises :class:`RenderError`
    naming ``midi_name`` when the song cannot be rendered; nothing is committed then.
    """
    if channels not in (1, 2):
        raise ValueError(f"channels must be 1 or 2, got {channels}")
    font = find_soundfont(soundfont)
    midi = parse_midi(midi_data, midi_name)
    instruments = split_instruments(midi)
    if not instruments:
        raise RenderError(midi_name, "the MIDI file has no notes")
    rendered = [render_midi(single, font, sample_rate, f"{midi_name} [{inst.name}]") for inst, single in instruments]
    length = min(max(r.shape[1] for r in rendered), int((midi.length + RELEASE_S) * sample_rate))
    stems = np.zeros((len(rendered), channels, length), dtype=np.float32)
    for i, r in enumerate(rendered):
        r = r[:, :length]
        stems[i, :, : r.shape[1]] = r.mean(axis=0, keepdims=True) if channels == 1 else r
    staged, mix, overall_gain, factor = mix_stems(stems, target_peak_db)

    stem_meta = {}
    for i, ((inst, single), audio) in enumerate(zip(instruments, staged, strict=True)):
        sid = f"S{i:02d}"
        write_audio(storage.join(track_uri, "stems", f"{sid}.{fmt}"), Audio(audio, sample_rate))
        storage.write_bytes(storage.join(track_uri, "MIDI", f"{sid}.mid"), midi_bytes(single))
        stem_meta[sid] = {
            "audio_rendered": True,
            "inst_class": gm.inst_class(inst.program, inst.is_drum),
            "integrated_loudness": integrated_loudness(audio, sample_rate),
            "is_drum": inst.is_drum,
            "midi_program_name": gm.program_name(inst.program, inst.is_drum),
            "midi_saved": True,
            "name": inst.name,
            "notes": inst.notes,
            "plugin_name": f"{os.path.basename(font)}:{'drums' if inst.is_drum else inst.program}",
            "program_num": inst.program,
        }
    write_audio(storage.join(track_uri, f"mix.{fmt}"), Audio(mix, sample_rate))
    storage.write_bytes(storage.join(track_uri, "all_src.mid"), midi_data)
    meta = {
        "UUID": hashlib.sha1(midi_data).hexdigest()[:32],
        "audio_dir": "stems",
        "midi_dir": "MIDI",
        "normalization_factor": factor,
        "normalized": True,
        "overall_gain": overall_gain,
        "target_peak": target_peak_db,
        "sample_rate": sample_rate,
        "channels": channels,
        "seconds": round(length / sample_rate, 4),
        "source_midi": midi_name,
        "renderer": f"fluidsynth {os.path.basename(font)}",
        "stems": stem_meta,
    }
    storage.write_text(storage.join(track_uri, METADATA), yaml.safe_dump(meta, sort_keys=True))
    return meta


# ---------------------------------------------------------------- a collection (the render job)


def list_songs(midi: str, tracks: int | None, seed: int = 0, demo: Any = None) -> list[tuple[str, bytes | None]]:
    """``(name, bytes or None)`` per song of ``midi``, sorted: a folder's first ``tracks`` MIDI
    files (by URI, read later), or with ``midi: demo`` the built-in corpus's songs (as bytes;
    ``demo``: its :class:`sepcore.data.corpus.DemoCorpusConfig`, ``tracks`` default 40)."""
    if midi == "demo":
        from sepcore.data.corpus import DemoCorpusConfig, demo_songs

        paths = demo_songs(tracks or 40, seed, demo or DemoCorpusConfig.model_validate({}))
        return [(p, open(p, "rb").read()) for p in paths]
    uris = [u for u in storage.list_files(midi) if u.lower().endswith(MIDI_SUFFIXES)]
    if not uris:
        raise StorageError(midi, "no .mid files found")
    return [(u, None) for u in uris[:tracks]]


def finished_tracks(output: str) -> set[str]:
    """Ids of the tracks below ``output`` whose ``metadata.yaml`` (their commit marker) exists."""
    return {u.rsplit("/", 2)[-2] for u in storage.list_files(output, suffix="/" + METADATA)}


def render_song(name: str, data: bytes | None, track_uri: str, **params: Any) -> dict[str, Any]:
    """:func:`render_track` of one song (read from ``name`` when ``data`` is None): its facts."""
    t0 = time.monotonic()
    meta = render_track(data if data is not None else storage.read_bytes(name), name, track_uri, **params)
    return {"item": name, "stems": len(meta["stems"]), "seconds": meta["seconds"],
            "wall_s": round(time.monotonic() - t0, 3)}  # fmt: skip


def render_summary(results: list[dict[str, Any]], skipped: int, total: int) -> dict[str, Any]:
    """The summary's counts, figures, failures and nodes of a run's ``results`` (one per song)."""
    ok = [r for r in results if "error" not in r]
    audio_s = sum(r["seconds"] for r in ok)
    busy_s = sum(r["wall_s"] for r in ok)
    return {
        "counts": {"songs": total, "rendered": len(ok), "skipped_done": skipped, "failed": len(results) - len(ok)},
        "figures": {
            "audio_seconds": round(audio_s, 2),
            "x_realtime_per_task": round(audio_s / busy_s, 2) if busy_s else None,
        },
        "failed": [{"item": r["item"], "error": r["error"]} for r in results if "error" in r],
        "nodes": sorted({r["node"] for r in results if r.get("node")}),
    }
