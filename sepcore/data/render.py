"""MIDI -> Slakh-layout multitrack audio, with General MIDI SoundFonts rendered in-process.

One stem per MIDI instrument (a (track, channel) pair that plays notes), as Slakh
does: each instrument is split into its own MIDI file (conductor track + its events)
and played dry by FluidSynth in this process (:mod:`sepcore.data.synth`) with a
SoundFont chosen per stem (:mod:`sepcore.data.soundfonts`), optionally normalised to a
loudness (Slakh's stem normalisation), padded to a common length, gain-staged so no stem
clips, summed into the mix and normalised so the mix does not clip. What was done is
recorded in ``metadata.yaml`` with Slakh's keys, which is written last as the track's
commit marker.

Invariant (tested): ``mix == normalization_factor * sum(stems)`` for the stored files
(24-bit FLAC: within 1e-4).
"""

from __future__ import annotations

import hashlib
import io
import logging
import math
import random
import time
from dataclasses import dataclass
from typing import Any

import mido
import numpy as np
import yaml
from scipy import signal

from sepcore.data import gm, synth
from sepcore.data import soundfonts as sfonts
from sepcore.data.slakh import METADATA
from sepcore.errors import RenderError, StorageError
from sepcore.io import storage
from sepcore.io.audio import Audio, write_audio
from sepcore.units import Decibels, db_to_gain

log = logging.getLogger(__name__)

#: File name endings of the MIDI files a folder is read for.
MIDI_SUFFIXES = (".mid", ".midi")
#: Audio kept after the song's last MIDI event (note releases).
RELEASE_S = 1.5
#: A rendered stem whose peak stays below this is silent: its font lacks the sound.
SILENT_PEAK = 1e-5


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
        for channel in sorted(
            {m.channel for _, m in events if not m.is_meta and hasattr(m, "channel")}
        ):
            own = [
                (w, m)
                for w, m in events
                if not m.is_meta and getattr(m, "channel", None) == channel
            ]
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


@dataclass(frozen=True)
class RenderedStem:
    """One stem's audio ``(2, samples)`` float32, the font that played it and the fonts refused."""

    audio: np.ndarray
    font: sfonts.SoundFont
    refused: tuple[str, ...]


def render_stem(
    single: mido.MidiFile, fonts: list[sfonts.SoundFont], rng: random.Random, num_samples: int,
    sample_rate: int, name: str,
) -> RenderedStem:  # fmt: skip
    """Play one instrument with a font chosen by :func:`sepcore.data.soundfonts.choose`.

    A font lacking one of the stem's patches, or playing it silent, is refused and another
    is chosen from the rest. Raises :class:`RenderError` naming ``name`` when none plays it.
    """
    left, refused = list(fonts), list[str]()
    wanted = synth.patches(single)
    shown = [f"bank {p.bank} program {p.program}" for p in sorted(wanted)]
    while left:
        font = sfonts.choose(rng, left)
        left.remove(font)
        player = synth.get_synth(font.path, sample_rate)
        if all(player.has(p) for p in wanted):
            audio = player.render(single, num_samples, name)
            if _peak(audio) >= SILENT_PEAK:
                return RenderedStem(audio, font, tuple(refused))
        refused.append(font.name)
        log.info("%s: %s lacks or silences %s; choosing another font", name, font.name, shown)
    raise RenderError(
        name, f"no SoundFont of {[f.name for f in fonts]} plays its patches {shown} audibly"
    )


def _k_weighting(sample_rate: int) -> np.ndarray:
    """BS.1770's K-weighting as second-order sections, with pyloudnorm's design (equal values)."""
    sos = []
    for kind, gain_db, q, fc in (
        ("shelf", 4.0, 1 / math.sqrt(2), 1500.0),
        ("highpass", 0.0, 0.5, 38.0),
    ):
        a = 10 ** (gain_db / 40)
        w0 = 2 * math.pi * fc / sample_rate
        alpha, cos = math.sin(w0) / (2 * q), math.cos(w0)
        if kind == "shelf":
            root = 2 * math.sqrt(a) * alpha
            b = [
                a * ((a + 1) + (a - 1) * cos + root),
                -2 * a * ((a - 1) + (a + 1) * cos),
                a * ((a + 1) + (a - 1) * cos - root),
            ]
            den = [
                (a + 1) - (a - 1) * cos + root,
                2 * ((a - 1) - (a + 1) * cos),
                (a + 1) - (a - 1) * cos - root,
            ]
        else:
            b = [(1 + cos) / 2, -(1 + cos), (1 + cos) / 2]
            den = [1 + alpha, -2 * cos, 1 - alpha]
        sos.append([x / den[0] for x in b + den])
    return np.asarray(sos)


def block_powers(samples: np.ndarray, sample_rate: int) -> np.ndarray:
    """Channel-summed mean square of the K-weighted signal per 400 ms block, 75 % overlap.

    Shape: ``samples`` is ``(channels, samples)`` with 1 or 2 channels (weights 1); returns
    ``(blocks,)`` float64 (none for audio shorter than 0.5 s). Blocks as pyloudnorm cuts them.
    """
    n = samples.shape[1]
    if n < int(0.5 * sample_rate):
        return np.zeros(0)
    weighted = signal.sosfilt(
        _k_weighting(sample_rate).astype(np.float32), samples.astype(np.float32), axis=1
    )
    energy = np.concatenate(([0.0], np.cumsum(np.square(weighted).sum(axis=0), dtype=np.float64)))
    count = round((n / sample_rate - 0.4) / 0.1) + 1
    j = np.arange(count)
    lo = np.array([int(0.4 * (k * 0.25) * sample_rate) for k in j])
    hi = np.minimum([int(0.4 * (k * 0.25 + 1) * sample_rate) for k in j], n)
    return (energy[hi] - energy[np.minimum(lo, hi)]) / (0.4 * sample_rate)


def gated_loudness(powers: np.ndarray) -> float | None:
    """BS.1770 integrated loudness (LUFS) of :func:`block_powers`; None when every block is
    below the absolute gate (silence). Scaling audio by ``g`` is ``powers * g**2``."""
    with np.errstate(divide="ignore"):
        block = -0.691 + 10 * np.log10(powers)
    kept = powers[block >= -70.0]
    if kept.size == 0:
        return None
    relative = -0.691 + 10 * math.log10(kept.mean()) - 10.0
    kept = powers[(block > relative) & (block > -70.0)]
    return round(-0.691 + 10 * math.log10(kept.mean()), 4)


def loudness_gain_db(powers: np.ndarray, target_lufs: float, rounds: int = 3) -> float:
    """The gain (dB) bringing audio of :func:`block_powers` ``powers`` to ``target_lufs``;
    0 for silence. Refined over ``rounds``, as gating makes loudness not quite scale with gain."""
    gain_db = 0.0
    for _ in range(rounds):
        loudness = gated_loudness(powers * db_to_gain(gain_db) ** 2)
        if loudness is None:
            break
        gain_db += target_lufs - loudness
    return gain_db


def integrated_loudness(samples: np.ndarray, sample_rate: int) -> float | None:
    """ITU-R BS.1770 integrated loudness in LUFS; None for silence or audio under 0.5 s.

    Shape: ``samples`` is ``(channels, samples)``.
    """
    return gated_loudness(block_powers(samples, sample_rate))


def _peak(x: np.ndarray) -> float:
    return max(float(x.max()), -float(x.min())) if x.size else 0.0


def mix_stems(
    stems: np.ndarray, target_peak_db: Decibels = -1.0
) -> tuple[np.ndarray, np.ndarray, float, float]:
    """Gain-stage stems and build the mix.

    Shape: ``stems`` is ``(stems, channels, samples)``.
    Returns ``(stems * overall_gain, mix, overall_gain, normalization_factor)`` where
    ``mix = normalization_factor * sum(stems * overall_gain)``; both gains are at most 1
    and keep every stem and the mix at or below ``target_peak_db`` dBFS.
    """
    target = db_to_gain(target_peak_db)
    loudest = _peak(stems)
    overall_gain = min(1.0, target / loudest) if loudest > 0 else 1.0
    staged = stems.astype(np.float32, copy=False)
    if overall_gain < 1:
        staged = staged * np.float32(overall_gain)
    total = staged.sum(axis=0)
    peak = _peak(total)
    factor = min(1.0, target / peak) if peak > 0 else 1.0
    if factor < 1:
        total *= np.float32(factor)
    return staged, total, overall_gain, factor


# ---------------------------------------------------------------- one whole track


def _stem_extras(stem_meta: dict[str, dict] | None, sid: str, inst: MidiInstrument) -> dict:
    """The caller's extra keys of one stem: those under its stem id, then under its track name."""
    if not stem_meta:
        return {}
    return {**stem_meta.get(inst.name, {}), **stem_meta.get(sid, {})}


def render_track(
    midi_data: bytes,
    midi_name: str,
    track_uri: str,
    soundfont: str = "auto",
    sample_rate: int = 44100,
    channels: int = 2,
    fmt: str = "flac",
    target_peak_db: Decibels = -1.0,
    soundfonts: list[str] | str | None = None,
    purpose: str = "train",
    seed: int = 0,
    stem_loudness_lufs: float | None = None,
    extra_meta: dict[str, Any] | None = None,
    stem_meta: dict[str, dict[str, Any]] | None = None,
) -> dict:
    """Render one MIDI song into a Slakh-layout track folder at ``track_uri``.

    ``soundfonts`` (font names, families or paths, see
    :func:`sepcore.data.soundfonts.resolve`; default ``[soundfont]``) are the fonts one is
    chosen from per stem, seeded by the MIDI bytes and ``seed``; ``purpose`` ("train",
    "tune" or "test") refuses held-out fonts for training. ``stem_loudness_lufs``
    gain-adjusts each stem to that integrated loudness before gain staging (Slakh's
    normalisation). ``extra_meta`` is merged into ``metadata.yaml``'s top level (the
    renderer's own keys win); ``stem_meta`` adds keys to a stem's entry, keyed by its stem
    id (``"S00"``, the order of :func:`split_instruments`) or its MIDI track name (the id
    wins; keys naming no stem, e.g. a part without notes, are ignored). Returns the
    metadata written. Raises :class:`RenderError` naming ``midi_name`` when the song cannot
    be rendered; nothing is committed then.
    """
    if channels not in (1, 2):
        raise ValueError(f"channels must be 1 or 2, got {channels}")
    fonts = sfonts.resolve(soundfont if soundfonts is None else soundfonts, purpose)
    midi = parse_midi(midi_data, midi_name)
    instruments = split_instruments(midi)
    if not instruments:
        raise RenderError(midi_name, "the MIDI file has no notes")
    digest = hashlib.sha1(midi_data).hexdigest()
    rng = random.Random(f"{digest}:{seed}")
    length = int((midi.length + RELEASE_S) * sample_rate)
    stems = np.empty((len(instruments), channels, length), dtype=np.float32)
    played, gains_db, powers = [], [], []
    for i, (inst, single) in enumerate(instruments):
        stem = render_stem(single, fonts, rng, length, sample_rate, f"{midi_name} [{inst.name}]")
        stems[i] = stem.audio.mean(axis=0, keepdims=True) if channels == 1 else stem.audio
        power = block_powers(stems[i], sample_rate)
        gain_db = 0.0 if stem_loudness_lufs is None else loudness_gain_db(power, stem_loudness_lufs)
        if gain_db:
            stems[i] *= np.float32(db_to_gain(gain_db))
        played.append(stem)
        gains_db.append(gain_db)
        powers.append(power * db_to_gain(gain_db) ** 2)
    staged, mix, overall_gain, factor = mix_stems(stems, target_peak_db)

    meta_stems = {}
    for i, ((inst, single), audio, stem) in enumerate(
        zip(instruments, staged, played, strict=True)
    ):
        sid = f"S{i:02d}"
        write_audio(storage.join(track_uri, "stems", f"{sid}.{fmt}"), Audio(audio, sample_rate))
        storage.write_bytes(storage.join(track_uri, "MIDI", f"{sid}.mid"), midi_bytes(single))
        meta_stems[sid] = {
            **_stem_extras(stem_meta, sid, inst),
            "audio_rendered": True,
            "inst_class": gm.inst_class(inst.program, inst.is_drum),
            "integrated_loudness": gated_loudness(powers[i] * overall_gain**2),
            "is_drum": inst.is_drum,
            "loudness_gain_db": round(gains_db[i], 4),
            "midi_program_name": gm.program_name(inst.program, inst.is_drum),
            "midi_saved": True,
            "name": inst.name,
            "notes": inst.notes,
            "plugin_name": f"{stem.font.name}:{'drums' if inst.is_drum else inst.program}",
            "program_num": inst.program,
            "soundfont": stem.font.name,
            "soundfont_family": stem.font.family,
            "soundfonts_refused": list(stem.refused),
        }
    write_audio(storage.join(track_uri, f"mix.{fmt}"), Audio(mix, sample_rate))
    storage.write_bytes(storage.join(track_uri, "all_src.mid"), midi_data)
    meta = {
        **(extra_meta or {}),
        "UUID": digest[:32],
        "audio_dir": "stems",
        "midi_dir": "MIDI",
        "normalization_factor": factor,
        "normalized": True,
        "overall_gain": overall_gain,
        "target_peak": target_peak_db,
        "stem_loudness_lufs": stem_loudness_lufs,
        "sample_rate": sample_rate,
        "channels": channels,
        "seconds": round(length / sample_rate, 4),
        "source_midi": midi_name,
        "renderer": "fluidsynth (libfluidsynth, in-process)",
        "soundfonts": [f.name for f in fonts],
        "soundfont_seed": seed,
        "render_purpose": purpose,
        "stems": meta_stems,
    }
    storage.write_text(storage.join(track_uri, METADATA), yaml.safe_dump(meta, sort_keys=True))
    return meta


# ---------------------------------------------------------------- a collection (the render job)


def list_songs(
    midi: str, tracks: int | None, seed: int = 0, demo: Any = None
) -> list[tuple[str, bytes | None]]:
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
    meta = render_track(
        data if data is not None else storage.read_bytes(name), name, track_uri, **params
    )
    return {"item": name, "stems": len(meta["stems"]), "seconds": meta["seconds"],
            "wall_s": round(time.monotonic() - t0, 3)}  # fmt: skip


def render_summary(results: list[dict[str, Any]], skipped: int, total: int) -> dict[str, Any]:
    """The summary's counts, figures, failures and nodes of a run's ``results`` (one per song)."""
    ok = [r for r in results if "error" not in r]
    audio_s = sum(r["seconds"] for r in ok)
    busy_s = sum(r["wall_s"] for r in ok)
    return {
        "counts": {
            "songs": total,
            "rendered": len(ok),
            "skipped_done": skipped,
            "failed": len(results) - len(ok),
        },
        "figures": {
            "audio_seconds": round(audio_s, 2),
            "x_realtime_per_task": round(audio_s / busy_s, 2) if busy_s else None,
        },
        "failed": [{"item": r["item"], "error": r["error"]} for r in results if "error" in r],
        "nodes": sorted({r["node"] for r in results if r.get("node")}),
    }
