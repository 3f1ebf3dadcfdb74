"""Pieces on a step grid: the composer's representation (seed 003, Eck and Schmidhuber 2002).

A piece is a sequence of ``T`` steps, each a fixed fraction of a quarter note
(:class:`Grid`: ``quarter`` = one step per quarter, seed 003's setting; ``eighth`` = two,
Eck and Schmidhuber's blues). Each step holds

* one **chord**, an id into :data:`CHORDS` (root pitch class and quality; chords with the
  same pitch classes share one id, so C6 and Am7 are one chord). Its input units are the
  chord's 12 pitch classes (:data:`CHORD_PCS`), "one unit per note" as in the paper;
* one **melody unit**: a pitch ``grid.low + id`` for ids below ``grid.pitches``; with
  ``grid.rests`` also :attr:`Grid.rest` (silence) and :attr:`Grid.hold` (the note before
  goes on). Without rests every step is a pitch struck anew: seed 003's "no rests", where
  a rest keeps the note before and a note longer than a step is repeated.

Melody pitches outside ``[low, high]`` are moved by octaves into it. Lead sheets
(:class:`~sepcore.data.leadsheet.LeadSheet`) are the interchange with the corpus and the band
arranger: :func:`from_leadsheet` quantises one, starting at its first full bar (a pickup is
dropped); :func:`to_leadsheet` turns a piece back into one.

Shapes: ``chords`` and ``melody`` are int64 arrays ``(T,)``; :meth:`Inputs.encode` gives the
network's input ``(T, Inputs.units)`` as float32.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from typing import Any, Literal

import numpy as np

from sepcore.data.leadsheet import QUALITIES, Chord, LeadSheet, Note, Phrase

Resolution = Literal["quarter", "eighth"]
STEPS_PER_QUARTER: dict[str, int] = {"quarter": 1, "eighth": 2}
#: Bars per phrase of a lead sheet made from a piece.
PHRASE_BARS = 4


def _chord_vocabulary() -> tuple[tuple[tuple[int, str], ...], np.ndarray]:
    seen: dict[frozenset[int], int] = {}
    chords: list[tuple[int, str]] = []
    for quality, intervals in QUALITIES.items():
        for root in range(12):
            pcs = frozenset((root + i) % 12 for i in intervals)
            if pcs not in seen:
                seen[pcs] = len(chords)
                chords.append((root, quality))
    table = np.zeros((len(chords), 12), dtype=bool)
    for k, (root, quality) in enumerate(chords):
        table[k, [(root + i) % 12 for i in QUALITIES[quality]]] = True
    return tuple(chords), table


#: The chord vocabulary: (root pitch class, quality), one per distinct set of pitch classes.
CHORDS, CHORD_PCS = _chord_vocabulary()
#: Root pitch class of each chord id, shape (K,).
CHORD_ROOTS = np.array([root for root, _ in CHORDS], dtype=np.int64)
_BY_PCS = {frozenset(np.flatnonzero(row).tolist()): k for k, row in enumerate(CHORD_PCS)}
#: TRANSPOSE[k, s]: chord id k moved up s semitones.
TRANSPOSE = np.array([[_BY_PCS[frozenset((p + s) % 12 for p in np.flatnonzero(CHORD_PCS[k]).tolist())]
                       for s in range(12)] for k in range(len(CHORDS))], dtype=np.int64)  # fmt: skip


def chord_id(root: int, quality: str) -> int:
    """The id of the chord ``root`` (pitch class) ``quality`` (a key of QUALITIES)."""
    if quality not in QUALITIES:
        raise ValueError(f"unknown chord quality {quality!r}; known: {list(QUALITIES)}")
    return _BY_PCS[frozenset((root + i) % 12 for i in QUALITIES[quality])]


def nearest_chord(pcs: np.ndarray) -> int | None:
    """The chord whose pitch classes best match the boolean ``pcs`` (12,) by Jaccard
    similarity (ties: the lower id); None for an empty set."""
    pcs = np.asarray(pcs, dtype=bool)
    if not pcs.any():
        return None
    inter = (CHORD_PCS & pcs).sum(axis=1)
    union = (CHORD_PCS | pcs).sum(axis=1)
    return int(np.argmax(inter / union))


@dataclass(frozen=True)
class Grid:
    """The step grid and the melody's units (see the module docstring)."""

    resolution: Resolution = "eighth"
    rests: bool = True
    low: int = 48
    high: int = 84

    def __post_init__(self) -> None:
        if self.resolution not in STEPS_PER_QUARTER:
            raise ValueError(f"grid resolution must be one of {list(STEPS_PER_QUARTER)}, got {self.resolution!r}")
        if not 0 <= self.low < self.high <= 127 or self.high - self.low < 12:
            raise ValueError(f"melody range {self.low}..{self.high} must span at least an octave inside 0..127")

    @property
    def steps_per_quarter(self) -> int:
        return STEPS_PER_QUARTER[self.resolution]

    @property
    def pitches(self) -> int:
        return self.high - self.low + 1

    @property
    def melody_units(self) -> int:
        return self.pitches + (2 if self.rests else 0)

    @property
    def rest(self) -> int:
        if not self.rests:
            raise ValueError("this grid has no rests")
        return self.pitches

    @property
    def hold(self) -> int:
        if not self.rests:
            raise ValueError("this grid has no held notes")
        return self.pitches + 1

    def fold(self, pitch: int) -> int:
        """``pitch`` moved by octaves into ``[low, high]``."""
        while pitch < self.low:
            pitch += 12
        while pitch > self.high:
            pitch -= 12
        return pitch

    def to_json(self) -> dict[str, Any]:
        return {"resolution": self.resolution, "rests": self.rests, "low": self.low, "high": self.high}


@dataclass(frozen=True)
class Piece:
    """One piece on a :class:`Grid`: ``chords`` and ``melody`` int64 ``(T,)``; step 0 is a bar's start.

    ``source``: ``blues`` (the built-in set), ``corpus`` (a songbook piece), ``files`` or
    ``composed``; ``key_tonic`` a pitch class, ``key_mode`` ``major`` or ``minor``;
    ``meter`` the time signature; ``bpm`` the tempo in quarters per minute (None: unknown).
    """

    piece_id: str
    source: str
    steps_per_bar: int
    chords: np.ndarray
    melody: np.ndarray
    key_tonic: int = 0
    key_mode: str = "major"
    meter: tuple[int, int] = (4, 4)
    bpm: float | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.chords.shape != self.melody.shape or self.chords.ndim != 1:
            raise ValueError(f"{self.piece_id}: chords {self.chords.shape} and melody {self.melody.shape} "
                             "must be equal-length 1-d arrays")  # fmt: skip

    @property
    def steps(self) -> int:
        return int(self.chords.shape[0])

    def tokens(self, melody_units: int) -> np.ndarray:
        """One int per step, ``chord * melody_units + melody`` (for matching runs of steps)."""
        return self.chords * melody_units + self.melody


def from_leadsheet(sheet: LeadSheet, grid: Grid, source: str = "corpus") -> Piece:
    """``sheet`` quantised on ``grid`` from its first full bar (``sheet.pickup``) to its end.

    Each note's onset and end snap to the nearest step (a note keeps at least one step); of two
    notes on one step the first wins. The chord of a step is the one in force at its start.
    Raises ValueError naming the piece when its bar is not a whole number of steps.
    """
    spq = grid.steps_per_quarter
    bar_steps = sheet.bar_quarters * spq
    if abs(bar_steps - round(bar_steps)) > 1e-6 or round(bar_steps) < 1:
        raise ValueError(f"{sheet.piece_id}: a bar of {sheet.bar_quarters} quarters is not a whole number of "
                         f"{grid.resolution} steps")  # fmt: skip
    steps = int(math.floor((sheet.length - sheet.pickup) * spq + 1e-6))
    if steps < 1:
        raise ValueError(f"{sheet.piece_id}: no full bar to quantise")
    chords = np.array([chord_id(c.root, c.quality) for c in (sheet.chord_at(sheet.pickup + t / spq)
                                                             for t in range(steps))], dtype=np.int64)  # fmt: skip
    onset = np.full(steps, -1, dtype=np.int64)  # the pitch struck at a step, -1: none
    sounding = np.zeros(steps, dtype=bool)  # a note goes on through the step
    for note in sheet.melody:
        start = int(round((note.start - sheet.pickup) * spq))
        end = max(start + 1, int(round((note.start + note.length - sheet.pickup) * spq)))
        if start < 0 or start >= steps or onset[start] >= 0:
            continue
        onset[start] = grid.fold(note.pitch) - grid.low
        sounding[start:min(end, steps)] = True
    melody = np.empty(steps, dtype=np.int64)
    last = next((int(p) for p in onset if p >= 0), None)
    if last is None:
        raise ValueError(f"{sheet.piece_id}: no melody note after the pickup")
    for t in range(steps):
        if onset[t] >= 0:
            melody[t] = last = int(onset[t])
        elif grid.rests:
            melody[t] = grid.hold if sounding[t] and t > 0 else grid.rest
        else:
            melody[t] = last  # seed 003: no rests; the note before is struck again
    return Piece(sheet.piece_id, source, int(round(bar_steps)), chords, melody, sheet.key_tonic, sheet.key_mode,
                 tuple(sheet.meter), sheet.bpm)  # type: ignore[arg-type]  # fmt: skip


def to_leadsheet(piece: Piece, grid: Grid, title: str | None = None, collection: str = "composed") -> LeadSheet:
    """The lead sheet of ``piece``: merged chords, the melody's notes (without rests every
    step is a note of one step; with rests a pitch lasts through its held steps) and
    ``PHRASE_BARS``-bar phrases."""
    spq = grid.steps_per_quarter
    chords: list[Chord] = []
    for t, k in enumerate(piece.chords.tolist()):
        if chords and chord_id(chords[-1].root, chords[-1].quality) == k:
            last = chords[-1]
            chords[-1] = replace(last, length=last.length + 1 / spq)
        else:
            root, quality = CHORDS[k]
            chords.append(Chord(root, quality, t / spq, 1 / spq))
    notes: list[Note] = []
    for t, m in enumerate(piece.melody.tolist()):
        if m < grid.pitches:
            notes.append(Note(grid.low + m, t / spq, 1 / spq))
        elif grid.rests and m == grid.hold and notes and math.isclose(notes[-1].start + notes[-1].length, t / spq):
            notes[-1] = replace(notes[-1], length=notes[-1].length + 1 / spq)
    length = piece.steps / spq
    bar_q = piece.steps_per_bar / spq
    span = PHRASE_BARS * bar_q
    phrases = tuple(Phrase("A", s, min(length, s + span)) for s in np.arange(0.0, length, span).tolist())
    return LeadSheet(
        piece_id=piece.piece_id, collection=collection, title=title or piece.piece_id, meter=piece.meter,
        bar_quarters=bar_q, key_tonic=piece.key_tonic, key_mode=piece.key_mode, bpm=piece.bpm, pickup=0.0,
        length=length, melody=tuple(notes), chords=tuple(chords), phrases=phrases, chord_source="score",
    )  # fmt: skip


def transpose(piece: Piece, semitones: int, grid: Grid) -> Piece:
    """``piece`` moved up ``semitones`` (any int): chords by pitch class, pitches by
    semitones and then by octaves into the melody's range."""
    s = semitones % 12
    melody = piece.melody.copy()
    pitched = melody < grid.pitches
    melody[pitched] = [grid.fold(grid.low + int(m) + semitones) - grid.low for m in melody[pitched]]
    return replace(piece, piece_id=f"{piece.piece_id}@{s:+d}" if s else piece.piece_id,
                   chords=TRANSPOSE[piece.chords, s], melody=melody, key_tonic=(piece.key_tonic + s) % 12)  # fmt: skip


def all_keys(pieces: list[Piece], grid: Grid) -> list[Piece]:
    """Every piece in all twelve keys (the training set's augmentation)."""
    return [transpose(p, s, grid) for p in pieces for s in range(12)]


@dataclass(frozen=True)
class Inputs:
    """What the network reads at each step, ``units`` wide: the chord's 12 pitch classes, the
    melody unit (one-hot, ``grid.melody_units``), the step's place in its bar (one-hot modulo
    ``position_units``; 0: none) and the piece's source among ``conditions`` (one-hot, e.g.
    ``("blues", "corpus")``; a source not listed: all zero), so a composer can be asked for
    a blues."""

    grid: Grid
    position_units: int = 0
    conditions: tuple[str, ...] = ()

    @property
    def units(self) -> int:
        return 12 + self.grid.melody_units + self.position_units + len(self.conditions)

    def encode(self, chords: np.ndarray, melody: np.ndarray, steps_per_bar: int, source: str | None,
               first_step: int = 0) -> np.ndarray:  # fmt: skip
        """Float32 ``(T, units)`` for steps ``first_step .. first_step + T - 1`` of a piece."""
        T = chords.shape[0]
        rows = np.arange(T)
        x = np.zeros((T, self.units), dtype=np.float32)
        x[:, :12] = CHORD_PCS[chords]
        x[rows, 12 + melody] = 1.0
        at = 12 + self.grid.melody_units
        if self.position_units:
            x[rows, at + ((first_step + rows) % steps_per_bar) % self.position_units] = 1.0
        if source in self.conditions:
            x[:, at + self.position_units + self.conditions.index(source)] = 1.0
        return x
