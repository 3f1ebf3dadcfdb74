"""A small Slakh-like corpus of multitrack General MIDI files made from real music.

The notes come from composed music that ships inside the ``music21`` package: the
Bach chorales (four-part, some with obbligato instruments) and Monteverdi's five-part
madrigals. Each piece becomes one type-1 MIDI file (480 ticks per quarter) with a
conductor track (name, tempo, time signatures) and one track per instrument, each on
its own channel, that a GM SoundFont can render into stems and a mix later.

Arrangement (seeded per file)
-----------------------------
* The lowest voice becomes a bass (GM 32-35) in most files; the upper voices become
  guitar (GM 24-27, in most files), piano (GM 0-5), strings (GM 40-42, chosen by
  register) and now and then another colour (organ, reed, brass, mallets).
* Every part is moved by whole octaves into its instrument's range, and gets a base
  velocity of 65-105 with a few points of humanisation and a downbeat accent.
* Tempo: the score's metronome mark if it has one, else 72-100 beats per minute
  (slower beats for half-note and dotted-quarter meters).
* Length: a piece shorter than ``min_seconds`` is repeated whole (notes and drums);
  a longer one is cut at the last barline in ``[min_seconds, max_seconds]`` (or, if
  there is none, the first barline after ``max_seconds``).

Drum rules (about three files in four get drums, channel 9)
-----------------------------------------------------------
The corpus has no drums, so a part is made from the meter and the barlines. The beats
of a bar are grouped in twos (a single three for 3/4, a trailing three for odd counts
such as 5/4); compound meters (6/8, 12/8) count dotted-quarter beats.

* Kick (36) on the first beat of each group, snare (38, or side stick 37 in some
  triple-meter files) on the other beats: 4/4 gives kick 1 and 3, snare 2 and 4;
  3/4 gives kick 1, snare 2 and 3; 6/8 kick 1, snare 2. Some 4/4 files play half time
  (kick 1, snare 3). Kick and snare only ever sound on beats.
* Closed hi-hat (42) or ride (51) on every beat division (eighths; triplet eighths in
  compound meters; sixteenths in some slow files; or only on the beats), with louder
  on-beat strokes and sometimes an open hat (46) on the bar's last off-beat.
* A tom fill (50, 47, 45, high to low) on the last beat (or last two beats) of every
  4th or 8th full bar, followed by a crash (49); a crash also marks the first downbeat.
* Pickup (anacrusis) bars play the tail of the pattern, so the backbeat follows the
  real barlines; the conductor track gives such partial bars their own short time
  signature (a one-beat pickup in 4/4 is a bar of 1/4) so MIDI bars match the score.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import multiprocessing
import os
import random
import re
import statistics
import warnings
from collections.abc import Generator, Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import mido
from pydantic import Field

from sepcore.config import Config
from sepcore.data import gm
from sepcore.errors import RenderError

log = logging.getLogger(__name__)

DEMO_CLASSES = ("Piano", "Guitar", "Bass", "Strings", "Drums")

TICKS_PER_BEAT = 480
WHOLE = 4 * TICKS_PER_BEAT  # ticks of a whole note
CORPUS_VERSION = 1  # bump when the output for a given seed changes
MAX_PITCHED_PARTS = 5
DRUM_PROBABILITY = 0.78
DRUM_NOTE_TICKS = 60

KICK, SIDE_STICK, SNARE, CLOSED_HAT, OPEN_HAT, RIDE, CRASH = 36, 37, 38, 42, 46, 51, 49
TOMS = (50, 47, 45)  # high, mid, low

_VOCAL = re.compile(r"^\s*(soprano|alto|tenor|bass|canto|quinto|sesto)", re.IGNORECASE)
_ACCOMPANIMENT = re.compile(r"continuo|organ|timpani|basso seguente", re.IGNORECASE)
_COMPOSER_GLOBS = (("bach", "*.mxl"), ("bach", "*.xml"), ("monteverdi", "madrigal.*.mxl"))

# role -> ((program, lowest MIDI note, highest MIDI note, weight), ...)
_PROGRAMS: dict[str, tuple[tuple[int, int, int, int], ...]] = {
    "Piano": ((0, 21, 108, 5), (1, 21, 108, 2), (2, 21, 108, 1), (4, 28, 103, 2), (5, 28, 103, 1)),
    "Guitar": ((24, 40, 84, 3), (25, 40, 84, 3), (26, 40, 86, 2), (27, 40, 86, 3)),
    "Bass": ((32, 28, 60, 2), (33, 28, 60, 4), (34, 28, 60, 2), (35, 28, 60, 1)),
    "Strings": ((40, 55, 100, 1), (41, 48, 88, 1), (42, 36, 76, 1)),
    "Other": (
        (11, 53, 89, 1), (12, 45, 96, 1), (16, 36, 96, 1), (19, 36, 96, 1),
        (56, 54, 86, 1), (57, 40, 72, 1), (60, 41, 77, 1), (64, 56, 87, 1),
        (65, 49, 81, 1), (68, 58, 91, 1), (70, 34, 72, 1), (71, 50, 91, 1),
    ),
}  # fmt: skip


@dataclass(frozen=True)
class _Part:
    name: str
    notes: tuple[tuple[int, int, int], ...]  # (MIDI pitch, onset tick, offset tick)


@dataclass(frozen=True)
class _Measure:
    start: int  # ticks
    length: int  # ticks actually spanned
    num: int  # time signature in force
    den: int
    pad: int  # ticks missing at the start (pickup / second half of a split bar)


@dataclass(frozen=True)
class _Piece:
    """What the MIDI writer needs from a parsed score (plain data, picklable)."""

    piece: str
    parts: tuple[_Part, ...]
    measures: tuple[_Measure, ...]
    quarter_bpm: float | None  # from an explicit metronome mark


@dataclass(frozen=True)
class _Bar:
    start: int
    length: int
    num: int
    den: int
    phase: int  # ticks of the nominal bar before ``start`` (pickups)

    @property
    def nominal(self) -> int:
        return self.num * WHOLE // self.den


@dataclass(frozen=True)
class _Track:
    name: str
    channel: int
    program: int
    is_drum: bool
    notes: tuple[tuple[int, int, int, int], ...]  # (pitch, on, off, velocity)


@dataclass(frozen=True)
class _DrumStyle:
    hat: int
    hat_steps: int  # 1: hat on the beats, 2: on each division, 4: twice per division
    open_hat: bool
    fill_every: int
    fill_beats: int
    half_time: bool
    snare: int
    crash_after_fill: bool
    kick_vel: int
    snare_vel: int
    hat_vel: int
    fill_step: int  # ticks between fill strokes


# ----------------------------------------------------------------------------- corpus


def _corpus_root() -> Path:
    from music21 import common

    return Path(common.getCorpusFilePath())


def list_candidate_pieces() -> list[str]:
    """Sorted music21 corpus paths (relative to the corpus folder) usable as pieces."""
    root = _corpus_root()
    found = {
        path.relative_to(root).as_posix()
        for composer, pattern in _COMPOSER_GLOBS
        for path in (root / composer).glob(pattern)
        if "_old" not in path.name  # an older edition of a madrigal that is also there
    }
    return sorted(found)


def _piece_path(piece: str) -> Path:
    path = Path(piece)
    return path if path.is_absolute() else _corpus_root() / path


def _short_name(piece: str) -> str:
    stem = Path(piece).name.rsplit(".", 1)[0]
    return re.sub(r"[^A-Za-z0-9]+", "_", stem).strip("_") or "piece"


def _piece_seed(seed: int, piece: str) -> int:
    digest = hashlib.sha256(f"{seed}:{piece}".encode()).hexdigest()
    return int(digest[:16], 16)


# ----------------------------------------------------------------------------- parsing


def _ticks(quarters: Any) -> int:
    return int(round(float(quarters) * TICKS_PER_BEAT))


def _parse_score(piece: str) -> Any:
    """The score of ``piece``, repeats written out and at sounding pitch."""
    from music21 import bar, converter

    path = _piece_path(piece)
    if not path.is_file():
        raise RenderError(str(path), "no such music21 corpus file")
    try:
        score = converter.parse(str(path), forceSource=True, storePickle=False)
    except Exception as exc:  # music21 raises many types
        raise RenderError(str(path), f"music21 cannot parse it: {exc}") from exc
    if not hasattr(score, "parts"):
        raise RenderError(str(path), f"not a score but a {type(score).__name__}")
    if score.parts and score.parts[0].recurse().getElementsByClass(bar.Repeat):
        try:
            score = score.expandRepeats()
        except Exception as exc:
            log.debug("%s: repeats not expanded (%s)", piece, exc)
    try:
        score.toSoundingPitch(inPlace=True)
    except Exception as exc:
        log.debug("%s: not transposed to sounding pitch (%s)", piece, exc)
    return score


def _part_notes(part: Any) -> tuple[tuple[int, int, int], ...]:
    from music21 import chord, note

    notes: list[tuple[int, int, int]] = []
    for element in part.stripTies().flatten().notes:
        if not isinstance(element, (note.Note, chord.Chord)) or element.quarterLength <= 0:
            continue
        onset = _ticks(element.offset)
        offset = onset + _ticks(element.quarterLength)
        notes.extend((int(p.midi), onset, offset) for p in element.pitches)
    return tuple(sorted(set(notes), key=lambda n: (n[1], n[0], n[2])))


def _measures(part: Any) -> tuple[_Measure, ...]:
    from music21 import stream

    measures = list(part.getElementsByClass(stream.Measure))
    layout, num, den = [], 4, 4
    for i, measure in enumerate(measures):
        if measure.timeSignature is not None:
            num, den = measure.timeSignature.numerator, measure.timeSignature.denominator
        start = _ticks(measure.offset)
        end = (
            _ticks(measures[i + 1].offset)
            if i + 1 < len(measures)
            else start + _ticks(measure.duration.quarterLength)
        )
        if end > start:
            layout.append(_Measure(start, end - start, num, den, _ticks(measure.paddingLeft)))
    return tuple(layout)


def _quarter_bpm(score: Any) -> float | None:
    from music21 import tempo

    for mark in score.recurse().getElementsByClass(tempo.MetronomeMark):
        if mark.number is not None and not mark.numberImplicit:
            bpm = float(mark.getQuarterBPM())
            if 40.0 <= bpm <= 200.0:
                return bpm
    return None


def _load_piece(piece: str) -> _Piece:
    """Parse ``piece`` into plain data; RenderError if unusable (< 3 pitched parts)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        score = _parse_score(piece)
        parts = []
        for part in score.parts:
            name = " ".join(str(part.partName or part.id or "Part").split())
            notes = _part_notes(part)
            if notes and "timpani" not in name.lower():
                parts.append(_Part(name, notes))
        if len(parts) < 3:
            raise RenderError(piece, f"has {len(parts)} pitched parts; 3 or more are needed")
        measures = _measures(score.parts[0])
        bpm = _quarter_bpm(score)
    if not measures:
        raise RenderError(piece, "has no measures")
    origin = measures[0].start
    if origin:
        measures = tuple(replace(m, start=m.start - origin) for m in measures)
        parts = [
            _Part(p.name, tuple((n, a - origin, b - origin) for n, a, b in p.notes)) for p in parts
        ]
    return _Piece(piece, tuple(parts), measures, bpm)


def _load_or_reason(piece: str) -> _Piece | str:
    """``_load_piece`` for worker processes: the reason as text instead of raising."""
    try:
        return _load_piece(piece)
    except RenderError as exc:
        return str(exc)
    except Exception as exc:  # a corpus file music21 trips over: skip it
        return f"{piece}: {type(exc).__name__}: {exc}"


# ----------------------------------------------------------------------------- timeline


def _bars(measures: Sequence[_Measure]) -> list[_Bar]:
    """Measures as MIDI bars: split measures and final-bar + pickup pairs merged."""
    bars: list[_Bar] = []
    for m in measures:
        prev = bars[-1] if bars else None
        if (
            prev is not None
            and m.pad > 0
            and prev.start + prev.length == m.start
            and (prev.num, prev.den) == (m.num, m.den)
            and prev.phase + prev.length == m.pad
        ):
            bars[-1] = replace(prev, length=prev.length + m.length)
        else:
            bars.append(_Bar(m.start, m.length, m.num, m.den, m.pad))
    return bars


def _tile(piece: _Piece, copies: int) -> tuple[list[_Measure], list[list[tuple[int, int, int]]]]:
    """The piece repeated ``copies`` times: measures and, per part, notes."""
    period = piece.measures[-1].start + piece.measures[-1].length
    measures = [
        replace(m, start=m.start + k * period) for k in range(copies) for m in piece.measures
    ]
    notes = [
        [
            (p, a + k * period, min(b, period) + k * period)
            for k in range(copies)
            for p, a, b in part.notes
            if a < period
        ]
        for part in piece.parts
    ]
    return measures, notes


def _seconds(ticks: int, tempo_us: int) -> float:
    return ticks * tempo_us / (TICKS_PER_BEAT * 1_000_000)


def _cut_tick(bars: Sequence[_Bar], tempo_us: int, min_s: float, max_s: float) -> int:
    """Where to end: the last barline in [min_s, max_s], else the first one after max_s."""
    end = bars[-1].start + bars[-1].length
    lines = sorted({b.start for b in bars if b.phase == 0} | {end})
    inside = [t for t in lines if min_s <= _seconds(t, tempo_us) <= max_s]
    if inside:
        return inside[-1]
    after = [t for t in lines if _seconds(t, tempo_us) > max_s]
    return after[0] if after else end


def _clip_bars(bars: Sequence[_Bar], cut: int) -> list[_Bar]:
    return [replace(b, length=min(b.length, cut - b.start)) for b in bars if b.start < cut]


def _meter(num: int, den: int) -> tuple[int, int, int]:
    """(beats per bar, ticks per beat, divisions per beat) of a time signature."""
    if den >= 8 and num % 3 == 0 and num > 3:
        return num // 3, 3 * WHOLE // den, 3
    return num, WHOLE // den, 2


def _time_signature(bar: _Bar) -> tuple[int, int] | None:
    """The MIDI time signature of a bar; a partial bar gets a short one (1/4, 3/8...)."""
    if bar.phase == 0 and bar.length == bar.nominal:
        return bar.num, bar.den
    den = bar.den
    while den <= 64:
        if (bar.length * den) % WHOLE == 0:
            return bar.length * den // WHOLE, den
        den *= 2
    return None


# ----------------------------------------------------------------------------- arrangement


def _choose_tempo(piece: _Piece, rng: random.Random) -> float:
    if piece.quarter_bpm is not None:
        return piece.quarter_bpm
    base = rng.randint(72, 100)
    m = piece.measures[len(piece.measures) // 2]
    _, beat, _ = _meter(m.num, m.den)
    if beat >= 2 * TICKS_PER_BEAT:
        return base * 1.4  # half-note beats around 50-70 per minute
    if beat > TICKS_PER_BEAT:
        return base * 1.1  # dotted-quarter beats around 50-60 per minute
    return float(base)


def _select_parts(parts: Sequence[_Part], rng: random.Random) -> list[_Part]:
    """The voices (top to bottom): the choir, maybe one obbligato instrument; at most 5."""
    vocal = [p for p in parts if _VOCAL.match(p.name)]
    others = [p for p in parts if p not in vocal and not _ACCOMPANIMENT.search(p.name)]
    if len(vocal) >= 3:
        chosen = vocal[:MAX_PITCHED_PARTS]
        if others and len(chosen) < MAX_PITCHED_PARTS and rng.random() < 0.35:
            chosen.append(others[0])
    else:
        chosen = (others if len(others) >= 3 else list(parts))[:MAX_PITCHED_PARTS]
    return sorted(chosen, key=lambda p: -statistics.median(n[0] for n in p.notes))


def _roles(upper: int, rng: random.Random) -> tuple[list[str], str]:
    """Roles of the upper voices (top to bottom) and of the lowest voice."""
    wanted = [
        r for r, p in (("Guitar", 0.92), ("Piano", 0.82), ("Strings", 0.82)) if rng.random() < p
    ]
    colour = ["Other"] if rng.random() < 0.3 else []
    rng.shuffle(wanted)
    roles = (wanted + colour)[:upper]
    if "Guitar" in wanted and "Guitar" not in roles:
        roles[rng.randrange(len(roles))] = "Guitar"
    while len(roles) < upper:
        roles.append(rng.choices(("Guitar", "Piano", "Strings", "Other"), (3, 3, 2, 1))[0])
    rng.shuffle(roles)
    low = "Bass" if rng.random() < 0.88 else rng.choice(("Piano", "Strings", "Other"))
    return roles, low


def _octave_shift(pitches: Sequence[int], lo: int, hi: int) -> int:
    centre, median = (lo + hi) / 2, statistics.median(pitches)
    return min(
        range(-36, 37, 12),
        key=lambda s: (sum(not lo <= p + s <= hi for p in pitches), abs(median + s - centre), s),
    )


def _pick_program(role: str, pitches: Sequence[int], rng: random.Random) -> tuple[int, int, int]:
    """(program, lo, hi) for a voice: strings by register, others seeded by weight."""
    options = _PROGRAMS[role]
    if role == "Strings":  # the highest instrument that plays the voice as written
        fits = [
            o for o in options if sum(o[1] <= p <= o[2] for p in pitches) >= 0.95 * len(pitches)
        ]
        return (fits or [options[-1]])[0][:3]
    if role == "Other":  # a colour that suits the voice's register
        median = statistics.median(pitches)
        options = tuple(o for o in options if abs((o[1] + o[2]) / 2 - median) <= 12) or options
    return rng.choices(options, [o[3] for o in options])[0][:3]


def _voice_track(
    part: _Part,
    notes: Sequence[tuple[int, int, int]],
    role: str,
    channel: int,
    downbeats: set[int],
    rng: random.Random,
) -> _Track:
    pitches = [n[0] for n in notes] or [n[0] for n in part.notes]
    program, lo, hi = _pick_program(role, pitches, rng)
    shift = _octave_shift(pitches, lo, hi)
    base = rng.randint(65, 105)
    out = []
    for pitch, on, off in notes:
        p = pitch + shift
        while p < lo:
            p += 12
        while p > hi:
            p -= 12
        velocity = base + rng.randint(-5, 5) + (5 if on in downbeats else 0)
        out.append((p, on, off, max(1, min(127, velocity))))
    name = f"{part.name}: {gm.program_name(program)}"
    return _Track(name, channel, program, False, tuple(out))


# ----------------------------------------------------------------------------- drums


def _drum_style(quarter_bpm: float, rng: random.Random) -> _DrumStyle:
    hat = RIDE if rng.random() < 0.25 else CLOSED_HAT
    hat_steps = rng.choices((1, 2, 4), (1, 6, 3 if quarter_bpm < 92 else 0))[0]
    return _DrumStyle(
        hat=hat,
        hat_steps=hat_steps,
        open_hat=hat == CLOSED_HAT and rng.random() < 0.4,
        fill_every=rng.choice((4, 8)),
        fill_beats=rng.choice((1, 2)),
        half_time=rng.random() < 0.15,
        snare=SIDE_STICK if rng.random() < 0.3 else SNARE,
        crash_after_fill=rng.random() < 0.7,
        kick_vel=rng.randint(88, 108),
        snare_vel=rng.randint(82, 104),
        hat_vel=rng.randint(55, 78),
        fill_step=4 if quarter_bpm < 100 else 2,
    )


def _groups(beats: int) -> list[int]:
    if beats <= 3:
        return [beats]
    return [2] * (beats // 2 - 1) + ([2] if beats % 2 == 0 else [3])


def _backbeat(beats: int, style: _DrumStyle) -> tuple[set[int], set[int]]:
    """Beat indices of the kick and the snare in a bar of ``beats`` beats."""
    if beats == 4 and style.half_time:
        return {0}, {2}
    kicks: set[int] = set()
    snares: set[int] = set()
    beat = 0
    for size in _groups(beats):
        kicks.add(beat)
        snares.update(range(beat + 1, beat + size))
        beat += size
    return kicks, snares


def _bar_pattern(bar: _Bar, style: _DrumStyle, fill: bool) -> Iterator[tuple[int, int, int]]:
    """(pitch, position in the nominal bar, velocity before humanising) for one bar."""
    beats, beat, div = _meter(bar.num, bar.den)
    kicks, snares = _backbeat(beats, style)
    steps = 1 if style.hat_steps == 1 else div * style.hat_steps // 2  # hat strokes per beat
    fill_beats = min(style.fill_beats, max(1, beats - 1))  # leave the downbeat to the kick
    fill_from = (beats - fill_beats) * beat if fill else bar.nominal
    for b in range(beats):
        if b * beat >= fill_from:
            break
        if b in kicks:
            yield KICK, b * beat, style.kick_vel + (6 if b == 0 else 0)
        if b in snares:
            yield (style.snare if beats == 3 else SNARE), b * beat, style.snare_vel
        for s in range(steps):
            pos = b * beat + s * beat // steps
            last = b == beats - 1 and s == steps - 1 and s > 0
            hat = OPEN_HAT if style.open_hat and last and not fill else style.hat
            yield hat, pos, style.hat_vel + (12 if s == 0 else 0)
    if fill:
        step = beat // (div if div == 3 else style.fill_step)
        count = (bar.nominal - fill_from) // step
        for i in range(count):
            yield TOMS[i * len(TOMS) // count], fill_from + i * step, style.snare_vel - 10 + 2 * i


def _drum_track(bars: Sequence[_Bar], quarter_bpm: float, rng: random.Random) -> _Track:
    style = _drum_style(quarter_bpm, rng)
    notes, full, crash_next = [], 0, True
    for bar in bars:
        whole = bar.phase == 0 and bar.length == bar.nominal
        fill = whole and (full + 1) % style.fill_every == 0 and bar is not bars[-1]
        hits = list(_bar_pattern(bar, style, fill))
        if bar.phase == 0 and crash_next:
            hits = [h for h in hits if not (h[1] == 0 and h[0] in (CLOSED_HAT, RIDE))]
            hits.append((CRASH, 0, 110))
            crash_next = False
        for pitch, pos, velocity in hits:
            if bar.phase <= pos < bar.phase + bar.length:
                on = bar.start + pos - bar.phase
                velocity = max(1, min(127, velocity + rng.randint(-5, 5)))
                notes.append((pitch, on, on + DRUM_NOTE_TICKS, velocity))
        full += whole
        crash_next = crash_next or (fill and style.crash_after_fill)
    return _Track(
        "Drums", gm.DRUM_CHANNEL, 0, True, tuple(sorted(notes, key=lambda n: (n[1], n[0])))
    )


# ----------------------------------------------------------------------------- MIDI


def _to_messages(timed: list[tuple[int, int, Any]], end: int) -> mido.MidiTrack:
    """Absolute-time messages, in order, as a track with delta times and an end."""
    track, now = mido.MidiTrack(), 0
    for tick, _, message in sorted(timed, key=lambda t: (t[0], t[1])):
        track.append(message.copy(time=tick - now))
        now = tick
    track.append(mido.MetaMessage("end_of_track", time=end - now))
    return track


def _instrument_track(track: _Track, end: int) -> mido.MidiTrack:
    timed: list[tuple[int, int, Any]] = [
        (0, 0, mido.MetaMessage("track_name", name=track.name)),
        (0, 1, mido.Message("program_change", channel=track.channel, program=track.program)),
    ]
    for pitch, on, off, velocity in gm.untangle(track.notes, end):
        timed.append(
            (
                on,
                3 * 128 + pitch,
                mido.Message("note_on", channel=track.channel, note=pitch, velocity=velocity),
            )
        )
        timed.append(
            (
                off,
                2 * 128 + pitch,
                mido.Message("note_off", channel=track.channel, note=pitch, velocity=0),
            )
        )
    return _to_messages(timed, end)


def _conductor_track(name: str, tempo_us: int, bars: Sequence[_Bar], end: int) -> mido.MidiTrack:
    timed: list[tuple[int, int, Any]] = [
        (0, 0, mido.MetaMessage("track_name", name=name)),
        (0, 1, mido.MetaMessage("set_tempo", tempo=tempo_us)),
    ]
    current = None
    for bar in bars:
        signature = _time_signature(bar)
        if signature is not None and signature != current:
            num, den = signature
            clocks = 36 if den == 8 and num % 3 == 0 and num > 3 else 24
            timed.append((bar.start, 2, mido.MetaMessage(
                "time_signature", numerator=num, denominator=den, clocks_per_click=clocks,
                notated_32nd_notes_per_beat=8)))  # fmt: skip
            current = signature
    return _to_messages(timed, end)


def _save_atomic(midi: mido.MidiFile, out_path: str) -> None:
    out = Path(out_path)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.{os.getpid()}.tmp")
    try:
        midi.save(str(tmp))
        os.replace(tmp, out)
    finally:
        tmp.unlink(missing_ok=True)


# ----------------------------------------------------------------------------- pieces


def _arrange(
    piece: _Piece, seed: int, min_s: float, max_s: float
) -> tuple[int, list[_Bar], list[_Track], int]:
    """Tempo (us per quarter), bars, tracks and end tick of one file.

    The choices draw from separate seeded streams, so that e.g. the drum style does
    not depend on how many notes the voices have.
    """
    rng = random.Random(seed)
    tempo_us = round(60_000_000 / _choose_tempo(piece, rng))
    parts = _select_parts(piece.parts, rng)
    upper, low = _roles(len(parts) - 1, rng)
    with_drums = rng.random() < DRUM_PROBABILITY
    period = piece.measures[-1].start + piece.measures[-1].length
    measures, notes = _tile(piece, max(1, math.ceil(min_s / _seconds(period, tempo_us))))
    all_bars = _bars(measures)
    end = _cut_tick(all_bars, tempo_us, min_s, max_s)
    bars = _clip_bars(all_bars, end)
    downbeats = {b.start for b in bars if b.phase == 0}
    channels = [c for c in range(16) if c != gm.DRUM_CHANNEL]
    tracks: list[_Track] = []
    for i, (part, role) in enumerate(zip(parts, [*upper, low], strict=True)):
        kept = [n for n in notes[piece.parts.index(part)] if n[1] < end]
        voice_rng = random.Random(f"{seed}/voice/{i}")
        if kept:
            tracks.append(
                _voice_track(part, kept, role, channels[len(tracks)], downbeats, voice_rng)
            )
        else:
            log.debug("%s: part %d (%s) is silent before the cut", piece.piece, i, part.name)
    if with_drums:
        tracks.append(_drum_track(bars, 60_000_000 / tempo_us, random.Random(f"{seed}/drums")))
    return tempo_us, bars, tracks, end


def _write_piece(piece: _Piece, out_path: str, seed: int, min_s: float, max_s: float) -> dict:
    if not 0 < min_s <= max_s:
        raise ValueError(f"need 0 < min_seconds <= max_seconds, got {min_s}, {max_s}")
    tempo_us, bars, tracks, end = _arrange(piece, seed, min_s, max_s)
    midi = mido.MidiFile(type=1, ticks_per_beat=TICKS_PER_BEAT)
    midi.tracks.append(_conductor_track(_short_name(piece.piece), tempo_us, bars, end))
    midi.tracks.extend(_instrument_track(t, end) for t in tracks)
    _save_atomic(midi, out_path)
    instruments = [
        {
            "name": t.name,
            "program": t.program,
            "is_drum": t.is_drum,
            "inst_class": gm.inst_class(t.program, t.is_drum),
            "notes": len(gm.untangle(t.notes, end)),
        }
        for t in tracks
    ]
    return {
        "piece": piece.piece,
        "path": out_path,
        "seconds": _seconds(end, tempo_us),
        "tempo_bpm": round(mido.tempo2bpm(tempo_us), 3),
        "instruments": instruments,
    }


def piece_to_midi(
    piece: str, out_path: str, seed: int, min_seconds: float = 30.0, max_seconds: float = 40.0
) -> dict:
    """Arrange one music21 corpus piece for GM instruments (and drums) into ``out_path``.

    Returns ``{"piece", "path", "seconds", "tempo_bpm", "instruments": [{"name",
    "program", "is_drum", "inst_class", "notes"}, ...]}``. Raises RenderError if the
    piece cannot be parsed or has fewer than three pitched parts.
    """
    return _write_piece(_load_piece(piece), out_path, seed, min_seconds, max_seconds)


# ----------------------------------------------------------------------------- corpus build


def _parameters(seed: int, tracks: int, min_s: float, max_s: float) -> dict:
    return {"version": CORPUS_VERSION, "seed": seed, "tracks": tracks,
            "min_seconds": float(min_s), "max_seconds": float(max_s)}  # fmt: skip


def _cached(out_dir: Path, parameters: dict) -> list[str] | None:
    try:
        manifest = json.loads((out_dir / "corpus.json").read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(manifest, dict) or {k: manifest.get(k) for k in parameters} != parameters:
        return None
    paths = [str(out_dir / f["path"]) for f in manifest.get("files", [])]
    return paths if len(paths) == parameters["tracks"] and all(map(os.path.isfile, paths)) else None


def _loaded_pieces(order: Sequence[str], workers: int) -> Generator[_Piece, None, None]:
    """Parsed pieces in ``order``, unusable ones skipped; parallel parsing if workers > 1."""
    if workers <= 1:
        results: Iterator[_Piece | str] = map(_load_or_reason, order)
        yield from _usable(results)
        return
    context = multiprocessing.get_context("spawn")  # no fork of a threaded (Ray) parent
    with ProcessPoolExecutor(workers, mp_context=context) as pool:
        for start in range(0, len(order), 4 * workers):
            yield from _usable(pool.map(_load_or_reason, order[start : start + 4 * workers]))


def _usable(results: Iterator[_Piece | str]) -> Iterator[_Piece]:
    for result in results:
        if isinstance(result, _Piece):
            yield result
        else:
            log.debug("skipping %s", result)


def _write_manifest(out_dir: Path, parameters: dict, files: list[dict]) -> None:
    manifest = {**parameters, "files": files}
    tmp = out_dir / f".corpus.json.{os.getpid()}.tmp"
    tmp.write_text(json.dumps(manifest, indent=1, sort_keys=True))
    os.replace(tmp, out_dir / "corpus.json")


def _write_files(out: Path, order: Sequence[str], parameters: dict, workers: int) -> list[dict]:
    """Write the first ``parameters["tracks"]`` usable pieces of ``order``; their dicts."""
    files: list[dict] = []
    if parameters["tracks"] <= 0:
        return files
    pieces = _loaded_pieces(order, workers)
    for piece in pieces:
        name = f"demo_{len(files):03d}_{_short_name(piece.piece)}.mid"
        seed = _piece_seed(parameters["seed"], piece.piece)
        info = _write_piece(
            piece, str(out / name), seed, parameters["min_seconds"], parameters["max_seconds"]
        )
        files.append({**info, "path": name})
        log.debug(
            "wrote %s (%.1f s, %d instruments)", name, info["seconds"], len(info["instruments"])
        )
        if len(files) == parameters["tracks"]:
            break
    pieces.close()  # stops the worker processes, if any
    return files


def build_demo_midi(
    out_dir: str,
    tracks: int = 40,
    seed: int = 0,
    min_seconds: float = 30.0,
    max_seconds: float = 40.0,
    workers: int = 1,
) -> list[str]:
    """Write ``tracks`` arranged pieces as ``out_dir/demo_NNN_<piece>.mid`` plus ``corpus.json``.

    ``corpus.json`` (written last, atomically) lists the per-file dicts (``path``
    relative to ``out_dir``) with the seed and parameters; a directory whose
    ``corpus.json`` has the same parameters is returned as is. The output does not
    depend on ``workers``. Raises RenderError if the corpus has too few usable pieces.
    """
    out = Path(out_dir)
    parameters = _parameters(seed, tracks, min_seconds, max_seconds)
    cached = _cached(out, parameters)
    if cached is not None:
        log.info("demo corpus in %s is up to date", out)
        return cached
    out.mkdir(parents=True, exist_ok=True)
    (out / "corpus.json").unlink(missing_ok=True)
    order = list_candidate_pieces()
    random.Random(seed).shuffle(order)
    files = _write_files(out, order, parameters, workers)
    if len(files) < tracks:
        raise RenderError(
            str(out),
            f"the music21 corpus has only {len(files)} usable pieces; {tracks} were asked for",
        )
    keep = {f["path"] for f in files}
    for stale in out.glob("demo_*.mid"):
        if stale.name not in keep:
            stale.unlink()
    _write_manifest(out, parameters, files)
    log.info("demo corpus: wrote %d MIDI files (%.0f s of music) to %s", len(files),
             sum(f["seconds"] for f in files), out)  # fmt: skip
    return [str(out / f["path"]) for f in files]


class DemoCorpusConfig(Config):
    """The built-in corpus used when ``midi: demo``."""

    min_seconds: float = Field(30.0, gt=0, description="shortest song; shorter pieces repeat")
    max_seconds: float = Field(40.0, gt=0, description="songs are cut at the first barline after this")


def demo_songs(tracks: int, seed: int, corpus: DemoCorpusConfig) -> list[str]:
    """The paths of the demo corpus's ``tracks`` songs, sorted (built once per machine, in the cache)."""
    from sepcore.io.cache import cache_dir

    name = f"seed{seed}-n{tracks}-{corpus.min_seconds:g}-{corpus.max_seconds:g}"
    paths = build_demo_midi(os.path.join(cache_dir("demo_midi"), name), tracks=tracks, seed=seed,
                            min_seconds=corpus.min_seconds, max_seconds=corpus.max_seconds)  # fmt: skip
    return sorted(paths)
