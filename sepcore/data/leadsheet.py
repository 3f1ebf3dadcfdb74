"""A lead sheet: the melody, harmony, metre, key and form of one piece, as plain data.

This is the hand-off between the song material (:mod:`sepcore.data.songbook`, which
reads music21's corpus) and the band arranger (:mod:`sepcore.data.arranger`, which
turns one lead sheet into a multitrack General MIDI song). Everything is picklable
and JSON-able (:meth:`LeadSheet.to_json` / :meth:`LeadSheet.from_json`).

Units: times and lengths are in quarter notes from the start of the piece (the
first full bar starts at ``pickup``); pitches are MIDI note numbers; pitch classes
are 0..11 with C = 0.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

#: Chord qualities a lead sheet may name; intervals above the root in semitones.
QUALITIES: dict[str, tuple[int, ...]] = {
    "maj": (0, 4, 7),
    "min": (0, 3, 7),
    "dim": (0, 3, 6),
    "aug": (0, 4, 8),
    "sus4": (0, 5, 7),
    "7": (0, 4, 7, 10),
    "maj7": (0, 4, 7, 11),
    "min7": (0, 3, 7, 10),
    "m7b5": (0, 3, 6, 10),
    "dim7": (0, 3, 6, 9),
    "6": (0, 4, 7, 9),
    "min6": (0, 3, 7, 9),
}


@dataclass(frozen=True)
class Note:
    """One melody note. ``start``/``length`` in quarters; ``pitch`` a MIDI number."""

    pitch: int
    start: float
    length: float


@dataclass(frozen=True)
class Chord:
    """One chord symbol in force from ``start`` for ``length`` quarters.

    ``root`` and ``bass`` are pitch classes (``bass`` None: the root);
    ``quality`` is a key of :data:`QUALITIES`.
    """

    root: int
    quality: str
    start: float
    length: float
    bass: int | None = None

    def pitch_classes(self) -> tuple[int, ...]:
        return tuple((self.root + i) % 12 for i in QUALITIES[self.quality])


@dataclass(frozen=True)
class Phrase:
    """One section of the piece's form: ``label`` (``"A"``, ``"B"``...) over ``[start, end)``."""

    label: str
    start: float
    end: float


@dataclass(frozen=True)
class LeadSheet:
    """One piece, reduced to what a band needs.

    * ``piece_id``: stable and unique across the corpus, e.g.
      ``"essenFolksong/altdeu10.abc#12"`` (file below music21's corpus, ``#`` the
      number of the piece inside an opus file when it holds several).
    * ``collection``: the collection the piece belongs to (see
      :data:`sepcore.data.songbook.COLLECTIONS`), used to keep a collection out of
      training entirely.
    * ``meter``: ``(numerator, denominator)``, e.g. ``(6, 8)``;
      ``bar_quarters`` the length of a full bar in quarters (3.0 for 6/8).
    * ``key_tonic`` (pitch class) and ``key_mode`` (``"major"`` or ``"minor"``).
    * ``bpm``: the score's marked tempo in quarter notes per minute, or None.
    * ``pickup``: quarters before the first full bar (0 when none).
    * ``melody``: notes sorted by start, monophonic (the top line).
    * ``chords``: sorted, non-overlapping, covering ``[0, length)`` without gaps
      (``chord_source`` says whether the score carried them or they were inferred).
    * ``phrases``: the form, sorted, covering ``[pickup, length)``.
    """

    piece_id: str
    collection: str
    title: str
    meter: tuple[int, int]
    bar_quarters: float
    key_tonic: int
    key_mode: str
    bpm: float | None
    pickup: float
    length: float
    melody: tuple[Note, ...]
    chords: tuple[Chord, ...]
    phrases: tuple[Phrase, ...]
    chord_source: str = "score"  # "score" | "analysis"
    extra: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> LeadSheet:
        d = dict(data)
        d["meter"] = tuple(d["meter"])
        d["melody"] = tuple(Note(**n) for n in d["melody"])
        d["chords"] = tuple(Chord(**c) for c in d["chords"])
        d["phrases"] = tuple(Phrase(**p) for p in d["phrases"])
        return cls(**d)

    def chord_at(self, when: float) -> Chord:
        """The chord in force at ``when`` (quarters); the last one past the end."""
        for chord in self.chords:
            if chord.start <= when < chord.start + chord.length:
                return chord
        return self.chords[-1] if when >= 0 else self.chords[0]
