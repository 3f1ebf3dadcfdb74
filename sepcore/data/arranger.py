"""The band arranger: one lead sheet becomes a multitrack General MIDI song in a style.

:func:`arrange` is pure and seeded: the same lead sheet, style, seed and length give a
byte-identical MIDI file (:func:`midi_bytes`). The styles and their patterns live in
:mod:`sepcore.data.styles` (each described in its docstring).

The song. Tempo is drawn from the style's range for the piece's metre (near the
score's tempo when that fits), the key is transposed by -5..+6 semitones and every
part is placed by octaves inside its instrument's practical range. The form is built
from the tune's phrases: the tune splits at the phrase boundary nearest its middle
into verse material and chorus material (short tunes play whole in both). The song
runs intro (2-4 bars of the tune's first chords, no melody), verse (the melody, sparse
patterns, some parts out), chorus (the melody again, every part, dense patterns,
fuller voicings, louder), mostly a 2-4 bar break over the verse's first chords after
the first chorus (drums and bass alone, stop-time hits on each downbeat, or one
comping part alone), more verses and choruses, and an outro over the tune's last
chords whose last bar is a held tonic chord. It is cut at a bar line to about
``seconds`` (the last section is shortened; a leftover under two bars goes to the
outro).

The band. Drums (~85 % of songs), bass (~90 %), guitar (~75 %), piano (~70 %), strings
(~35 %) and one or two "other" parts (~60 %: organ, chromatic percussion, brass,
reeds, pipes, synth lead or pad) are drawn per song, at least three parts. Each gets a
random GM program of its class (often one the style prefers; strings are 40-51 less
the timpani), the drums a random GM kit, its own register, voicing size, velocity
(base, jitter, accents on beats) and timing jitter. One pitched part plays the melody
(an "other" part most often); the rest accompany from the chords. Strings and
sustained "other" parts play the style's pad patterns, brass/organ/reed parts its
stabs, synth leads, pipes and mallets its arpeggios.

Metres: a piece in 2/4, 4/4 or 2/2 (or an odd metre such as 5/4) plays in any style
that has a ``duple`` groove (all but ``waltz``); 3/4 in ``ballad``, ``waltz`` or
``country``; 6/8, 9/8, 12/8 in ``ballad``, ``blues``, ``waltz`` or ``country``
(:func:`sepcore.data.styles.styles_for`). Another style raises ``ValueError``.

Units: ticks at :data:`TICKS_PER_BEAT` per quarter note; one pattern step is a
sixteenth (:data:`STEP` ticks); seconds for sections.
"""

from __future__ import annotations

import io
import random
from bisect import bisect_right
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from typing import NamedTuple

import mido

from sepcore.data import gm
from sepcore.data.leadsheet import QUALITIES, LeadSheet
from sepcore.data.styles import (
    CRASH,
    DRUM_KITS,
    HAT,
    KICK,
    SNARE,
    STYLES,
    TOMS,
    DrumPattern,
    Groove,
    Style,
    metre_kind,
)

TICKS_PER_BEAT = 480
STEP = TICKS_PER_BEAT // 4  # ticks of one pattern step (a sixteenth)
DRUM_NOTE_TICKS = 60
MUTED_TICKS = 60  # a muted guitar sixteenth
ROLES = ("drums", "bass", "guitar", "piano", "strings", "other")
SECTION_NAMES = ("intro", "verse", "chorus", "break", "outro")

#: Probability that a song has each part ("other": one or two parts).
ROLE_SHARES = {
    "drums": 0.85,
    "bass": 0.9,
    "guitar": 0.75,
    "piano": 0.7,
    "strings": 0.35,
    "other": 0.6,
}
MIN_PARTS = 3

#: GM programs each pitched role draws from (strings leave out the timpani).
CLASS_PROGRAMS: dict[str, tuple[int, ...]] = {
    "guitar": tuple(range(24, 32)),
    "bass": tuple(range(32, 40)),
    "piano": tuple(range(0, 8)),
    "strings": (*range(40, 47), *range(48, 52)),
    "other": (*range(8, 24), *range(56, 96)),
}
PREFERRED_PROGRAM = 0.6  # chance of a program the style prefers
_DYNAMICS = {"intro": 0.85, "verse": 0.85, "chorus": 1.08, "break": 0.9, "outro": 0.9}

# (first program, last program, lowest pitch, highest pitch): practical ranges
_RANGES = (
    (0, 7, 21, 108), (8, 8, 60, 108), (9, 9, 72, 108), (10, 10, 60, 96), (11, 11, 53, 89),
    (12, 12, 45, 96), (13, 13, 65, 108), (14, 14, 60, 77), (15, 15, 48, 84), (16, 20, 36, 96),
    (21, 21, 53, 89), (22, 22, 60, 84), (23, 23, 53, 89), (24, 31, 40, 84), (32, 37, 28, 60),
    (38, 39, 24, 60), (40, 40, 55, 100), (41, 41, 48, 88), (42, 42, 36, 76), (43, 43, 28, 60),
    (44, 46, 36, 96), (48, 51, 36, 96), (56, 56, 54, 84), (57, 57, 40, 72), (58, 58, 28, 58),
    (59, 59, 54, 82), (60, 60, 41, 77), (61, 63, 40, 84), (64, 64, 56, 87), (65, 65, 49, 80),
    (66, 66, 44, 75), (67, 67, 36, 69), (68, 68, 58, 91), (69, 69, 52, 81), (70, 70, 34, 72),
    (71, 71, 50, 91), (72, 72, 74, 108), (73, 79, 60, 96), (80, 95, 36, 96),
)  # fmt: skip


def program_range(program: int) -> tuple[int, int]:
    """Practical ``(lowest, highest)`` MIDI pitch of a pitched GM program."""
    for first, last, lo, hi in _RANGES:
        if first <= program <= last:
            return lo, hi
    raise ValueError(f"no practical range for GM program {program} ({gm.program_name(program)})")


@dataclass(frozen=True)
class PartInfo:
    """One part (one MIDI track on its own ``channel``) of an arrangement."""

    name: str
    role: str  # one of ROLES
    program: int
    is_drum: bool
    channel: int
    inst_class: str  # gm.inst_class(program, is_drum)


@dataclass(frozen=True)
class Section:
    """One section of the form, ``name`` in :data:`SECTION_NAMES`, in seconds."""

    name: str
    start_s: float
    end_s: float


@dataclass(frozen=True, eq=False)
class Arrangement:
    """An arranged song: the type-1 MIDI file and what it holds.

    ``midi`` has a conductor track (tempo, time and key signature) and then one track
    per part, in the order of ``parts``. ``tempo_bpm`` in quarter notes per minute;
    ``transpose`` in semitones; ``seconds`` the song's length; ``lead`` the name of
    the part playing the melody ("" when the lead sheet has none).
    """

    midi: mido.MidiFile
    parts: tuple[PartInfo, ...]
    sections: tuple[Section, ...]
    style: str
    tempo_bpm: float
    transpose: int
    seed: int
    seconds: float
    lead: str


def midi_bytes(arrangement: Arrangement) -> bytes:
    """The arrangement's Standard MIDI File."""
    buffer = io.BytesIO()
    arrangement.midi.save(file=buffer)
    return buffer.getvalue()


# ----------------------------------------------------------------------------- song


class _Harm(NamedTuple):
    root: int  # pitch class, transposed
    intervals: tuple[int, ...]
    bass: int  # pitch class of the bass note


@dataclass(frozen=True)
class _Block:
    """Bars ``[start, start + bars)`` of the song playing tune bars from ``source``."""

    name: str
    section: int  # index of the Section it belongs to
    start: int
    bars: int
    source: int
    final: bool = False  # the held last bar


@dataclass
class _Song:
    sheet: LeadSheet
    style: Style
    groove: Groove
    kind: str
    transpose: int
    bar_ticks: int
    bar_steps: int
    beat_steps: int
    swing_ticks: int
    blocks: list[_Block]
    starts: list[int] = field(default_factory=list)  # harmony change ticks
    harms: list[_Harm] = field(default_factory=list)

    @property
    def end(self) -> int:
        last = self.blocks[-1]
        return (last.start + last.bars) * self.bar_ticks

    def split(self, on: int, off: int) -> Iterator[tuple[int, int, _Harm, _Harm, bool]]:
        """``[on, off)`` cut at chord changes: (on, off, chord, next chord, first)."""
        i = bisect_right(self.starts, on) - 1
        first = True
        while True:
            nxt = self.harms[i + 1] if i + 1 < len(self.harms) else self.harms[i]
            change = self.starts[i + 1] if i + 1 < len(self.starts) else off
            yield on, min(off, change), self.harms[i], nxt, first
            if change >= off:
                return
            on, i, first = change, i + 1, False


def _tune_bars(sheet: LeadSheet) -> int:
    return max(1, round((sheet.length - sheet.pickup) / sheet.bar_quarters + 0.49))


def _tune_harmony(sheet: LeadSheet, bars: int) -> list[list[tuple[float, int, str, int]]]:
    """Per tune bar, its chords as (offset in quarters, root, quality, bass)."""
    out: list[list[tuple[float, int, str, int]]] = []
    chords, j = sheet.chords, 0
    for b in range(bars):
        q0 = sheet.pickup + b * sheet.bar_quarters
        q1 = q0 + sheet.bar_quarters
        while j + 1 < len(chords) and chords[j + 1].start <= q0 + 1e-6:
            j += 1
        bar, k = [], j
        while k < len(chords) and (k == j or chords[k].start < q1 - 1e-6):
            c = chords[k]
            bass = c.root if c.bass is None else c.bass
            bar.append((0.0 if k == j else c.start - q0, c.root, c.quality, bass))
            k += 1
        out.append(bar)
    return out


def _build_harmony(song: _Song, tune: list[list[tuple[float, int, str, int]]]) -> None:
    t = song.transpose
    tonic = (song.sheet.key_tonic + t) % 12
    tonic_harm = _Harm(tonic, QUALITIES["min" if song.sheet.key_mode == "minor" else "maj"], tonic)
    for block in song.blocks:
        for k in range(block.bars):
            bar_tick = (block.start + k) * song.bar_ticks
            if block.final:
                changes = [(0.0, tonic_harm)]
            else:
                changes = [
                    (off, _Harm((r + t) % 12, QUALITIES[q], (b + t) % 12))
                    for off, r, q, b in tune[(block.source + k) % len(tune)]
                ]
            for off, harm in changes:
                tick = bar_tick + round(off * TICKS_PER_BEAT)
                if song.harms and song.harms[-1] == harm:
                    continue
                if song.starts and song.starts[-1] == tick:
                    song.harms[-1] = harm
                    continue
                song.starts.append(tick)
                song.harms.append(harm)


def _split_bar(sheet: LeadSheet, bars: int) -> int:
    """The tune bar where chorus material starts: the phrase start nearest the middle."""
    starts = {round((p.start - sheet.pickup) / sheet.bar_quarters) for p in sheet.phrases}
    inner = [b for b in starts if 2 <= b <= bars - 2]
    if bars < 8:
        return 0
    if not inner:  # one long phrase: split it at the middle's four-bar line
        return 4 * round(bars / 8) if bars >= 16 else 0
    return min(inner, key=lambda b: (abs(2 * b - bars), b))


def _form(sheet: LeadSheet, bar_s: float, seconds: float, rng: random.Random) -> list[_Block]:
    tune = _tune_bars(sheet)
    total = max(5, round(seconds / bar_s))
    intro = min(rng.randint(2, 4), max(1, total // 8))
    outro = min(rng.randint(2, 4), max(1, total // 8))
    split = _split_bar(sheet, tune)
    material = {
        "verse": (0, split or tune),
        "chorus": (split, tune - split) if split else (0, tune),
    }
    blocks = [_Block("intro", 0, 0, intro, 0)]
    pos, body_end = intro, total - outro
    order = ["verse", "chorus"]
    broke = False
    while body_end - pos > 0:
        left = body_end - pos
        if not order:
            if not broke and rng.random() < 0.7:
                order, broke = ["break"], True
            elif left < material["verse"][1] + material["chorus"][1] or rng.random() < 0.3:
                order = ["chorus"]  # end on a chorus
            else:
                order = ["verse", "chorus"]
        name = order.pop(0)
        source, length = (0, rng.randint(2, 4)) if name == "break" else material[name]
        if name == "verse" and len(blocks) == 1 and length + material["chorus"][1] > left:
            length = min(length, max(1, left // 2))  # leave room for a chorus
        length = min(length, left)
        if 0 < left - length < 2:
            outro += left - length
            body_end = pos + length
        blocks.append(_Block(name, len(blocks), pos, length, source))
        pos += length
    last = max(0, tune - (outro - 1))
    if outro > 1:
        blocks.append(_Block("outro", len(blocks), pos, outro - 1, last))
    blocks.append(_Block("outro", blocks[-1].section + (outro == 1), pos + outro - 1, 1, 0, True))
    return blocks


def _tempo(sheet: LeadSheet, groove: Groove, kind: str, rng: random.Random) -> float:
    """Quarter notes per minute."""
    per_beat = 1.5 if kind == "compound" else 1.0
    lo, hi = groove.tempo
    beat_bpm = rng.uniform(lo, hi)
    if sheet.bpm is not None and lo <= sheet.bpm / per_beat <= hi and rng.random() < 0.6:
        beat_bpm = min(hi, max(lo, sheet.bpm / per_beat * rng.uniform(0.95, 1.05)))
    return round(beat_bpm * per_beat, 1)


# ----------------------------------------------------------------------------- parts


@dataclass
class _Part:
    name: str
    role: str
    program: int
    is_drum: bool
    channel: int
    behaviour: str  # drums, bass, guitar, piano, pad, stab, arp
    lo: int
    hi: int
    center: int
    voices: int
    velocity: float
    jitter: int
    timing: int
    spread: int
    gate: float
    rng: random.Random
    notes: list[tuple[int, int, int, int]] = field(default_factory=list)  # pitch, on, off, vel


def _draw_roles(rng: random.Random, require: Sequence[str] = ()) -> list[str]:
    roles = [r for r in ROLES[:-1] if rng.random() < ROLE_SHARES[r]]
    if rng.random() < ROLE_SHARES["other"]:
        roles += ["other"] * (1 if rng.random() < 0.65 else 2)
    roles += [r for r in dict.fromkeys(require) if r not in roles]
    while len(roles) < MIN_PARTS or not set(roles) & {"guitar", "piano", "strings", "other"}:
        missing = [r for r in ROLES if r not in roles]
        if len(roles) >= MIN_PARTS - 1 and not set(roles) - {"drums", "bass"}:
            missing = [r for r in missing if r not in ("drums", "bass")]
        roles.append(rng.choice(missing))
    return sorted(roles, key=ROLES.index)


def _program(role: str, style: Style, taken: set[int], rng: random.Random) -> int:
    if role == "drums":
        return rng.choice(style.kits if rng.random() < PREFERRED_PROGRAM else DRUM_KITS)
    preferred = [p for p in style.programs[role] if p not in taken]
    if preferred and rng.random() < PREFERRED_PROGRAM:
        return rng.choice(preferred)
    return rng.choice([p for p in CLASS_PROGRAMS[role] if p not in taken])


def _behaviour(role: str, program: int, rng: random.Random) -> str:
    if role in ("drums", "bass", "guitar", "piano"):
        return role
    if role == "strings":
        return "pad"
    family = program // 8
    choices = {
        1: ("arp",),
        2: ("pad", "stab"),
        7: ("stab", "stab", "pad"),
        8: ("pad", "stab"),
        9: ("arp", "pad"),
        10: ("arp", "stab"),
        11: ("pad",),
    }[family]
    return rng.choice(choices)


def _voices(behaviour: str, program: int) -> int:
    if behaviour in ("guitar", "piano"):
        return 4
    polyphonic = program < 24 or 44 <= program <= 51 or 61 <= program <= 63 or program >= 88
    if behaviour == "pad":
        return 3 if polyphonic else 1
    if behaviour == "stab":
        return 3 if polyphonic else 2
    return 4  # arp: the voicing it breaks


def _make_part(
    name: str, role: str, program: int, channel: int, seed: int, rng: random.Random
) -> _Part:
    is_drum = role == "drums"
    part_rng = random.Random(f"{seed}/part/{name}")
    behaviour = _behaviour(role, program, rng)
    lo, hi = (27, 87) if is_drum else program_range(program)
    if behaviour == "bass":
        center = rng.randint(lo, lo + 8)  # lowest root
    else:
        mid = {"guitar": (54, 64), "piano": (57, 67)}.get(behaviour, (60, 70))
        center = min(hi - 9, max(lo + 9, rng.randint(*mid)))
    return _Part(
        name=name,
        role=role,
        program=program,
        is_drum=is_drum,
        channel=gm.DRUM_CHANNEL if is_drum else channel,
        behaviour=behaviour,
        lo=lo,
        hi=hi,
        center=center,
        voices=_voices(behaviour, program),
        velocity=rng.uniform(85, 105) if is_drum else rng.uniform(64, 96),
        jitter=rng.randint(3, 10),
        timing=rng.randint(0, 5 if is_drum else 10),
        spread=rng.randint(4, 18) if behaviour == "guitar" else rng.randint(0, 4),
        gate={"stab": 0.5, "pad": 0.98, "bass": 0.9}.get(behaviour, rng.uniform(0.8, 0.95)),
        rng=part_rng,
    )


def _choose_parts(style: Style, seed: int, rng: random.Random, require: Sequence[str] = ()) -> list[_Part]:
    parts: list[_Part] = []
    taken: set[int] = set()
    channels = iter(c for c in range(16) if c != gm.DRUM_CHANNEL)
    roles = _draw_roles(rng, require)
    for i, role in enumerate(roles):
        name = f"{role}_{roles[:i].count(role) + 1}" if roles.count(role) > 1 else role
        program = _program(role, style, taken, rng)
        if role != "drums":
            taken.add(program)
        parts.append(_make_part(name, role, program, next(channels), seed, rng))
    return parts


def _choose_lead(parts: Sequence[_Part], rng: random.Random) -> _Part:
    weight = {"other": 3.0, "guitar": 1.5, "piano": 1.5, "strings": 1.0}
    pool = [p for p in parts if p.role in weight]
    weights = [0.3 if p.program >= 88 else weight[p.role] for p in pool]
    return rng.choices(pool, weights)[0]


# ----------------------------------------------------------------------------- plan


class _Play(NamedTuple):
    pattern: str | DrumPattern
    voices: int


def _patterns(groove: Groove, part: _Part) -> Sequence[str | DrumPattern]:
    if part.behaviour == "drums":
        return groove.drums
    return {
        "bass": groove.bass,
        "guitar": groove.guitar,
        "piano": groove.piano,
        "pad": groove.pad,
        "stab": groove.stab,
        "arp": groove.arp,
    }[part.behaviour]


def _stop_pattern(part: _Part, song: _Song, hold: int) -> str | DrumPattern:
    """A bar of one downbeat hit held ``hold`` steps (stop-time, the final chord)."""
    n = song.bar_steps
    if part.is_drum:
        return ((KICK, "x" + "." * (n - 1)), (CRASH, "x" + "." * (n - 1)))
    sym = "R" if part.behaviour == "bass" else "x"
    return sym + "-" * (hold - 1) + "." * (n - hold)


def _subset(parts: Sequence[_Part], share: float, rng: random.Random) -> set[str]:
    chosen = {p.name for p in parts if rng.random() < share}
    if parts and not chosen:
        chosen.add(rng.choice(parts).name)
    return chosen


def _plan(
    song: _Song, parts: Sequence[_Part], lead: _Part | None, rng: random.Random
) -> list[dict]:
    """Per block, ``{part name: _Play}`` of the parts that play it (the lead's melody aside).

    ``lead`` (None: the tune has no melody) rests in the verses and choruses.
    """
    verse, chorus = {}, {}
    for part in parts:
        options = _patterns(song.groove, part)
        half = len(options) // 2
        verse[part.name] = rng.choice(options[: max(1, (len(options) + 1) // 2)])
        chorus[part.name] = rng.choice(options[half:])
    rhythm = [p for p in parts if p.role in ("drums", "bass")]
    chordal = [p for p in parts if p.role not in ("drums", "bass")]
    backing = [p for p in chordal if p is not lead]
    plans: list[dict] = []
    for block in song.blocks:
        play: dict[str, _Play] = {}
        if block.final:  # who played last holds the tonic
            names = set(plans[-1]) | ({lead.name} if lead else set())
            for p in parts:
                if p.name in names:
                    play[p.name] = _Play(_stop_pattern(p, song, song.bar_steps), p.voices + 1)
            plans.append(play)
            continue
        if block.name == "intro":
            names = _subset(chordal, 0.5, rng) | {p.name for p in rhythm if rng.random() < 0.5}
        elif block.name == "verse":
            names = {p.name for p in rhythm if rng.random() < 0.92} | _subset(backing, 0.6, rng)
        elif block.name == "chorus":
            names = {p.name for p in parts if p is not lead}
        elif block.name == "break":
            names = _break(song, parts, rhythm, chordal, rng, play)
        else:
            names = {p.name for p in rhythm if rng.random() < 0.9} | _subset(chordal, 0.8, rng)
        for p in parts:
            if p.name in names and p.name not in play:
                if block.name == "chorus":
                    play[p.name] = _Play(chorus[p.name], p.voices + 1)
                else:
                    play[p.name] = _Play(verse[p.name], p.voices)
        plans.append(play)
    return plans


def _break(
    song: _Song,
    parts: Sequence[_Part],
    rhythm: Sequence[_Part],
    chordal: Sequence[_Part],
    rng: random.Random,
    play: dict[str, _Play],
) -> set[str]:
    """Choose a break: drums and bass alone, stop-time hits, or one comping part alone."""
    modes = ["stop"] + (["rhythm"] if rhythm else []) + (["solo"] if chordal else [])
    mode = rng.choice(modes)
    if mode == "rhythm":
        return {p.name for p in rhythm}
    if mode == "solo":
        return {rng.choice(chordal).name}
    for p in parts:
        play[p.name] = _Play(_stop_pattern(p, song, song.beat_steps), p.voices)
    return set(play)


# ----------------------------------------------------------------------------- notes


@lru_cache(maxsize=512)
def _events(pattern: str) -> dict[int, tuple[str, int]]:
    """Step -> (symbol, length in steps including its holds)."""
    out = {}
    for i, symbol in enumerate(pattern):
        if symbol in ".-":
            continue
        length = 1
        while i + length < len(pattern) and pattern[i + length] == "-":
            length += 1
        out[i] = (symbol, length)
    return out


def _bar_events(song: _Song, block: _Block, pattern: str) -> Iterator[tuple[int, int, str, int]]:
    """(bar of the block, step of the bar, symbol, length in steps) of a pattern.

    A pattern longer than the bar runs on across the block's bars; a bar longer than
    the pattern repeats it from the bar's start.
    """
    n, size, events = song.bar_steps, len(pattern), _events(pattern)
    for k in range(block.bars):
        base = 0 if n >= size else (k * n) % size
        for s in range(n):
            event = events.get((base + s) % size)
            if event is not None:
                yield k, s, event[0], min(event[1], n - s)


def _fold(pitch: int, lo: int, hi: int) -> int:
    while pitch > hi:
        pitch -= 12
    while pitch < lo:
        pitch += 12
    return pitch


def _above(pc: int, low: int) -> int:
    """The lowest pitch of pitch class ``pc`` at or above ``low``."""
    return low + (pc - low) % 12


@lru_cache(maxsize=4096)
def _voicing(
    root: int, intervals: tuple[int, ...], n: int, center: int, lo: int, hi: int
) -> tuple[int, ...]:
    """``n`` stacked chord tones in ``[lo, hi]``: the inversion centred nearest ``center``."""
    pcs = [(root + i) % 12 for i in intervals]
    best: tuple[int, ...] = ()
    best_score = float("inf")
    for i in range(len(pcs)):
        order = pcs[i:] + pcs[:i]
        notes = [_above(order[0], center - 6)]
        for k in range(1, n):
            notes.append(notes[-1] + ((order[k % len(order)] - notes[-1]) % 12 or 12))
        voiced = tuple(sorted({_fold(p, lo, hi) for p in notes}))
        score = abs(sum(voiced) / len(voiced) - center)
        if score < best_score:
            best, best_score = voiced, score
    return best


def _bass_pitch(part: _Part, symbol: str, harm: _Harm, nxt: _Harm) -> int:
    low = part.center  # a bass part's lowest root
    if symbol == "a":
        pitch = _above(nxt.bass, low) + part.rng.choice((-1, 1))
    elif symbol in "Rg":
        pitch = _above(harm.bass, low)
    else:
        root, third, fifth = _above(harm.root, low), harm.intervals[1], harm.intervals[2]
        if symbol == "w":
            pitch = root + part.rng.choice((third, fifth, 12, 2))
        else:
            pitch = root + {"3": third, "5": fifth, "6": 9, "7": 10, "8": 12}[symbol]
    return _fold(pitch, part.lo, part.hi)


def _comp_pitches(part: _Part, symbol: str, harm: _Harm, voices: int) -> tuple[list[int], float]:
    """The pitches a comping symbol plays, and its velocity factor."""
    voicing = _voicing(harm.root, harm.intervals, voices, part.center, part.lo, part.hi)
    if symbol in "xX":
        return list(voicing), 1.15 if symbol == "X" else 1.0
    if symbol == "c":
        return list(voicing[1:] or voicing), 0.9
    if symbol == "m":
        return list(voicing[-2:]), 0.7
    low = max(part.lo, part.center - 16)
    root, fifth = _above(harm.root, low), harm.intervals[2]
    if symbol in "bf":
        pc = harm.bass if symbol == "b" else (harm.root + fifth) % 12
        return [_above(pc, max(part.lo, part.center - 19))], 1.0
    if symbol in "pq":
        upper = fifth if symbol == "p" else 9
        return [_fold(p, part.lo, part.hi) for p in (root, root + upper, root + 12)], 1.05
    index = int(symbol) - 1
    pitch = voicing[index % len(voicing)] + 12 * (index // len(voicing))
    return [_fold(pitch, part.lo, part.hi)], 0.9


def _velocity(part: _Part, song: _Song, step: int, factor: float, dyn: float) -> int:
    accent = 1.1 if step == 0 else 1.04 if step > 0 and step % song.beat_steps == 0 else 1.0
    value = part.velocity * dyn * factor * accent + part.rng.randint(-part.jitter, part.jitter)
    return max(1, min(127, round(value)))


def _onset(part: _Part, song: _Song, tick: int, step: int) -> int:
    pair = 2 * song.style.swing_step
    if song.swing_ticks and step >= 0 and step % pair == song.style.swing_step:
        tick += song.swing_ticks
    if part.timing:
        tick += part.rng.randint(-part.timing, part.timing)
    return max(0, tick)


def _play_pattern(song: _Song, part: _Part, block: _Block, play: _Play, dyn: float) -> None:
    assert isinstance(play.pattern, str)
    for k, s, symbol, length in _bar_events(song, block, play.pattern):
        on = (block.start + k) * song.bar_ticks + s * STEP
        for seg_on, seg_off, harm, nxt, first in song.split(on, on + length * STEP):
            step = s if first else -1
            if part.behaviour == "bass":
                pitches = [_bass_pitch(part, symbol if first else "R", harm, nxt)]
                factor = 0.5 if symbol == "g" else 1.0
            else:
                pitches, factor = _comp_pitches(part, symbol, harm, play.voices)
            span = seg_off - seg_on
            duration = min(span, MUTED_TICKS) if symbol == "m" else round(span * part.gate)
            start = _onset(part, song, seg_on, step)
            order = pitches if s % song.beat_steps == 0 else pitches[::-1]  # down/up strums
            for i, pitch in enumerate(order):
                velocity = _velocity(part, song, step, factor, dyn)
                tick = start + i * part.spread
                part.notes.append(
                    (pitch, tick, tick + max(30, duration - i * part.spread), velocity)
                )


def _drum_hit(part: _Part, song: _Song, note: int, tick: int, step: int, factor: float) -> None:
    velocity = _velocity(part, song, step, factor, 1.0)
    start = _onset(part, song, tick, step)
    part.notes.append((note, start, start + DRUM_NOTE_TICKS, velocity))


_DRUM_LEVEL = {KICK: 1.0, SNARE: 1.0, CRASH: 1.0, HAT: 0.75}


def _play_drums(
    song: _Song, part: _Part, block: _Block, play: _Play, dyn: float, fill: bool, crash: bool
) -> None:
    assert not isinstance(play.pattern, str)
    n, last = song.bar_steps, block.bars - 1
    fill_from = n - song.beat_steps * (2 if part.rng.random() < 0.3 else 1) if fill else n
    for note, line in play.pattern:
        level = _DRUM_LEVEL.get(note, 0.85) * dyn
        for k, s, symbol, _ in _bar_events(song, block, line):
            if k < last or s < fill_from:
                factor = {"X": 1.15, "x": 1.0, "o": 0.45}[symbol] * level
                _drum_hit(
                    part, song, note, (block.start + k) * song.bar_ticks + s * STEP, s, factor
                )
    if crash:
        _drum_hit(part, song, CRASH, block.start * song.bar_ticks, 0, dyn)
    if fill:
        tones = (SNARE, *TOMS[: part.rng.randint(2, 4)])
        stride = part.rng.choice((1, 2))
        bar_tick = (block.start + last) * song.bar_ticks
        for s in range(fill_from, n, stride):
            progress = (s - fill_from) / (n - fill_from)
            note = tones[min(len(tones) - 1, int(progress * len(tones)))]
            _drum_hit(part, song, note, bar_tick + s * STEP, s, (0.75 + 0.35 * progress) * dyn)


def _perform(song: _Song, parts: Sequence[_Part], plans: Sequence[dict]) -> None:
    blocks = song.blocks
    for i, (block, plan) in enumerate(zip(blocks, plans, strict=True)):
        dyn = _DYNAMICS[block.name]
        following = plans[i + 1] if i + 1 < len(plans) else {}
        new_section = i == 0 or blocks[i - 1].section != block.section
        for part in parts:
            play = plan.get(part.name)
            if play is None:
                continue
            if part.is_drum:
                fill = part.name in following and part.rng.random() < song.style.fill_rate
                crash = new_section and block.name != "intro" and not block.final
                _play_drums(song, part, block, play, dyn, fill, crash)
            else:
                _play_pattern(song, part, block, play, dyn)


def _melody_notes(song: _Song) -> list[tuple[int, int, int, float]]:
    """The tune's notes in the verses and choruses: (pitch, on, off, dynamics), transposed."""
    sheet, bq = song.sheet, song.sheet.bar_quarters
    out: list[tuple[int, int, int, float]] = []
    for block in song.blocks:
        if block.name not in ("verse", "chorus"):
            continue
        q0 = sheet.pickup + block.source * bq
        q1 = q0 + block.bars * bq
        first = 0.0 if block.source == 0 else q0  # the pickup leads into the tune's start
        base, stop = block.start * song.bar_ticks, (block.start + block.bars) * song.bar_ticks
        for note in sheet.melody:
            if not first <= note.start < q1 - 1e-6:
                continue
            on = base + round((note.start - q0) * TICKS_PER_BEAT)
            while out and out[-1][1] >= on:
                out.pop()
            if out and out[-1][2] > on:
                out[-1] = (out[-1][0], out[-1][1], on, out[-1][3])
            off = min(stop, on + round(note.length * TICKS_PER_BEAT))
            if off > on >= 0:
                out.append((note.pitch + song.transpose, on, off, _DYNAMICS[block.name]))
    return out


def _play_melody(song: _Song, lead: _Part, notes: Sequence[tuple[int, int, int, float]]) -> None:
    pitches = sorted(n[0] for n in notes)
    target = {"guitar": 67, "piano": 72}.get(lead.role, (lead.lo + lead.hi) // 2 + 4)
    shift = 12 * round((target - pitches[len(pitches) // 2]) / 12)
    for pitch, on, off, dyn in notes:
        step = (on % song.bar_ticks) // STEP if on % STEP == 0 else -1
        start = _onset(lead, song, on, step)
        velocity = _velocity(lead, song, step, 1.05, dyn)
        end = max(start + 30, start + round((off - on) * 0.95))
        lead.notes.append((_fold(pitch + shift, lead.lo, lead.hi), start, end, velocity))


# ----------------------------------------------------------------------------- MIDI

_MAJOR_KEYS = ("C", "Db", "D", "Eb", "E", "F", "F#", "G", "Ab", "A", "Bb", "B")
_MINOR_KEYS = ("Cm", "C#m", "Dm", "Ebm", "Em", "Fm", "F#m", "Gm", "G#m", "Am", "Bbm", "Bm")


def _track(part: _Part, end: int) -> mido.MidiTrack:
    events = []
    for pitch, on, off, velocity in gm.untangle(part.notes, end):
        events.append((on, 1, pitch, velocity))
        events.append((off, 0, pitch, 0))
    events.sort()
    track = mido.MidiTrack()
    track.append(mido.MetaMessage("track_name", name=part.name))
    track.append(mido.Message("program_change", channel=part.channel, program=part.program))
    now = 0
    for tick, is_on, pitch, velocity in events:
        kind = "note_on" if is_on else "note_off"
        track.append(
            mido.Message(kind, channel=part.channel, note=pitch, velocity=velocity, time=tick - now)
        )
        now = tick
    track.append(mido.MetaMessage("end_of_track", time=end - now))
    return track


def _conductor(song: _Song, tempo_us: int) -> mido.MidiTrack:
    sheet = song.sheet
    num, den = sheet.meter
    tonic = (sheet.key_tonic + song.transpose) % 12
    key = (_MINOR_KEYS if sheet.key_mode == "minor" else _MAJOR_KEYS)[tonic]
    return mido.MidiTrack(
        [
            mido.MetaMessage("track_name", name=sheet.title or sheet.piece_id),
            mido.MetaMessage("set_tempo", tempo=tempo_us),
            mido.MetaMessage(
                "time_signature",
                numerator=num,
                denominator=den,
                clocks_per_click=36 if song.kind == "compound" else 24,
                notated_32nd_notes_per_beat=8,
            ),
            mido.MetaMessage("key_signature", key=key),
            mido.MetaMessage("end_of_track", time=song.end),
        ]
    )


# ----------------------------------------------------------------------------- arrange


def _check(sheet: LeadSheet, style: str, seconds: float) -> str:
    """The sheet's metre kind, after checking that ``style`` can play it."""
    if style not in STYLES:
        raise ValueError(f"{sheet.piece_id}: unknown style {style!r}; known: {sorted(STYLES)}")
    kind = metre_kind(sheet.meter)
    if kind not in STYLES[style].grooves:
        raise ValueError(
            f"{sheet.piece_id}: style {style!r} cannot play {sheet.meter[0]}/{sheet.meter[1]} "
            f"({kind}); it plays {sorted(STYLES[style].grooves)}"
        )
    if not sheet.chords:
        raise ValueError(f"{sheet.piece_id}: the lead sheet has no chords")
    if not seconds > 0:
        raise ValueError(f"{sheet.piece_id}: seconds must be positive, got {seconds}")
    return kind


def _song(
    sheet: LeadSheet,
    style: Style,
    kind: str,
    seed: int,
    qbpm: float,
    seconds: float,
    transpose: int,
) -> _Song:
    bar_ticks = round(sheet.bar_quarters * TICKS_PER_BEAT)
    bar_s = bar_ticks * 60.0 / (TICKS_PER_BEAT * qbpm)
    song = _Song(
        sheet=sheet,
        style=style,
        groove=style.grooves[kind],
        kind=kind,
        transpose=transpose,
        bar_ticks=bar_ticks,
        bar_steps=max(1, round(bar_ticks / STEP)),
        beat_steps=6 if kind == "compound" else max(1, 16 // sheet.meter[1]),
        swing_ticks=0 if kind == "compound" else round(style.swing * STEP * style.swing_step / 3),
        blocks=_form(sheet, bar_s, seconds, random.Random(f"{seed}/form")),
    )
    _build_harmony(song, _tune_harmony(sheet, _tune_bars(sheet)))
    return song


def arrange(
    sheet: LeadSheet, style: str, seed: int, seconds: float = 60.0, require: Sequence[str] = ()
) -> Arrangement:
    """Arrange ``sheet`` for a band in ``style`` (a key of :data:`STYLES`), about ``seconds`` long.

    The song is cut at a bar line and holds at least five bars, so it is within 10 %
    of ``seconds`` from about 20 s up. Raises ``ValueError`` naming the piece for an
    unknown style or one that cannot play the piece's metre (see
    :func:`sepcore.data.styles.styles_for`). ``require``: roles (:data:`ROLES`) the song
    must have besides those drawn (the demo asks for its target).
    """
    kind = _check(sheet, style, seconds)
    rng = random.Random(seed)
    chosen = STYLES[style]
    qbpm = _tempo(sheet, chosen.grooves[kind], kind, rng)
    tempo_us = round(60_000_000 / qbpm)
    song = _song(sheet, chosen, kind, seed, qbpm, seconds, rng.randint(-5, 6))
    unknown = sorted(set(require) - set(ROLES))
    if unknown:
        raise ValueError(f"unknown roles {unknown}; known: {list(ROLES)}")
    parts = _choose_parts(chosen, seed, random.Random(f"{seed}/parts"), require)
    lead = _choose_lead(parts, rng)
    melody = _melody_notes(song)
    _perform(
        song, parts, _plan(song, parts, lead if melody else None, random.Random(f"{seed}/plan"))
    )
    if melody:
        _play_melody(song, lead, melody)
    midi = mido.MidiFile(type=1, ticks_per_beat=TICKS_PER_BEAT)
    midi.tracks.append(_conductor(song, tempo_us))
    midi.tracks.extend(_track(part, song.end) for part in parts)
    seconds_per_tick = tempo_us / (TICKS_PER_BEAT * 1_000_000)
    sections: list[Section] = []
    for block in song.blocks:
        start, end = block.start * song.bar_ticks, (block.start + block.bars) * song.bar_ticks
        if sections and len(sections) > block.section:
            sections[-1] = Section(block.name, sections[-1].start_s, end * seconds_per_tick)
        else:
            sections.append(Section(block.name, start * seconds_per_tick, end * seconds_per_tick))
    return Arrangement(
        midi=midi,
        parts=tuple(
            PartInfo(
                p.name, p.role, p.program, p.is_drum, p.channel, gm.inst_class(p.program, p.is_drum)
            )
            for p in parts
        ),
        sections=tuple(sections),
        style=style,
        tempo_bpm=round(mido.tempo2bpm(tempo_us), 3),
        transpose=song.transpose,
        seed=seed,
        seconds=song.end * seconds_per_tick,
        lead=lead.name if melody else "",
    )
