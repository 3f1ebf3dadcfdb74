"""The built-in 12-bar blues set: seeded, rule-based lead sheets in Eck and Schmidhuber's setting.

:func:`blues_leadsheets` writes ``count`` pieces; piece ``i`` of seed ``s`` depends on
``(s, i)`` only (so the first pieces of a larger set are the same pieces). Each piece:

* a key (any of the 12 tonics, major blues), a tempo of 90-160 quarters per minute,
  4/4, no pickup, 2-4 choruses (``choruses``) of 12 bars;
* per chorus a form variant of :data:`FORM` (the chord root of each bar, in semitones
  above the tonic): quick change (IV in bar 2) or not, V7 or IV7 in bar 10, a turnaround
  (V7) or the tonic in bar 12; one dominant-7 chord (quality ``"7"``) per bar;
* per chorus a melody by rule, on the major blues scale of the key (1 2 b3 3 5 6)
  between C4 and C6 (MIDI 60-84): three 4-bar lines A A B, each a call (bars 1-2)
  answered by a response (bar 3 and a long chord tone on the downbeat of bar 4, then a
  rest). Line 2 repeats line 1's rhythm and contour over its own chords (A A); line 3 is
  new. Notes on strong beats (beats 1 and 3) are chord tones, the others mostly steps
  along the scale; note lengths are multiples of the grid step (an eighth with
  ``resolution="eighth"``, a quarter with ``"quarter"``), some longer;
* ``piece_id`` ``"blues/<seed>/<index>"``, collection ``"blues"``, chord source
  ``"score"``, one phrase per 4 bars labelled A A B in every chorus; ``extra`` holds the
  form actually used (``extra["form"]``: root degree per bar), the resolution and the seed.

Units as in :mod:`sepcore.data.leadsheet`: quarters, MIDI pitches, pitch classes.
"""

from __future__ import annotations

import numpy as np

from sepcore.data.leadsheet import QUALITIES, Chord, LeadSheet, Note, Phrase

#: Allowed chord root per bar of the 12-bar blues, in semitones above the tonic.
FORM: tuple[frozenset[int], ...] = (
    frozenset({0}), frozenset({0, 5}), frozenset({0}), frozenset({0}),
    frozenset({5}), frozenset({5}), frozenset({0}), frozenset({0}),
    frozenset({7}), frozenset({5, 7}), frozenset({0}), frozenset({0, 7}),
)  # fmt: skip

#: The major blues scale, in semitones above the tonic.
BLUES_SCALE = (0, 2, 3, 4, 7, 9)
LOW, HIGH = 60, 84  # melody range, C4..C6
BAR = 4.0  # quarters per bar (4/4)
STEPS = {"quarter": 1.0, "eighth": 0.5}  # grid step in quarters per resolution
NAMES = ("C", "Db", "D", "Eb", "E", "F", "F#", "G", "Ab", "A", "Bb", "B")
#: Note lengths (in grid steps) and their weights, per resolution.
LENGTHS = {"eighth": ((1, 2, 3, 4), (0.45, 0.35, 0.1, 0.1)), "quarter": ((1, 2, 3), (0.7, 0.2, 0.1))}


def form_variant(rng: np.random.Generator) -> tuple[int, ...]:
    """One chorus's chord roots (degrees above the tonic, one per bar) drawn inside :data:`FORM`:
    quick change 40 %, IV7 in bar 10 40 %, turnaround V7 in bar 12 60 %."""
    bars = [0, 0, 0, 0, 5, 5, 0, 0, 7, 7, 0, 0]
    if rng.random() < 0.4:
        bars[1] = 5
    if rng.random() < 0.4:
        bars[9] = 5
    if rng.random() < 0.6:
        bars[11] = 7
    return tuple(bars)


def _rhythm(rng: np.random.Generator, start: float, end: float, resolution: str) -> list[tuple[float, float]]:
    """Onsets and lengths (quarters) filling ``[start, end)`` with grid-aligned notes."""
    step = STEPS[resolution]
    lengths, weights = LENGTHS[resolution]
    out, t = [], start
    while t < end - 1e-9:
        n = int(rng.choice(lengths, p=weights))
        length = min(n * step, end - t)
        out.append((t, length))
        t += length
    return out


def _nearest(pool: np.ndarray, pitch: float) -> int:
    return int(pool[np.argmin(np.abs(pool - pitch))])


def _chord_tones(root: int) -> np.ndarray:
    """MIDI pitches in the melody range of a dominant-7 chord on pitch class ``root``."""
    pcs = {(root + i) % 12 for i in QUALITIES["7"]}
    return np.array([p for p in range(LOW, HIGH + 1) if p % 12 in pcs])


class _Melody:
    """The melody rules of one piece (scale and chord pools of its key)."""

    def __init__(self, rng: np.random.Generator, tonic: int):
        self.rng = rng
        self.scale = np.array([p for p in range(LOW, HIGH + 1) if (p - tonic) % 12 in BLUES_SCALE])
        self.tones = {r: _chord_tones(r) for r in range(12)}

    def strong(self, prev: int, root: int) -> int:
        """A chord tone near ``prev``: one of the two nearest, the nearest more often."""
        tones = self.tones[root]
        order = tones[np.argsort(np.abs(tones - prev), kind="stable")]
        return int(order[0] if self.rng.random() < 0.65 else order[1])

    def weak(self, prev: int) -> int:
        """A scale note stepping from ``prev`` (mostly by one scale step, drawn to the middle)."""
        i = int(np.argmin(np.abs(self.scale - prev)))
        moves, p = np.array([-2, -1, 0, 1, 2]), np.array([0.1, 0.35, 0.1, 0.35, 0.1])
        if prev > 78:
            p = p * np.array([1.6, 1.6, 1.0, 0.4, 0.4])
        elif prev < 66:
            p = p * np.array([0.4, 0.4, 1.0, 1.6, 1.6])
        j = int(np.clip(i + self.rng.choice(moves, p=p / p.sum()), 0, len(self.scale) - 1))
        return int(self.scale[j])

    def pitches(self, rhythm: list[tuple[float, float]], roots: list[int], prev: int) -> list[Note]:
        """Notes on ``rhythm``: chord tones on beats 1 and 3, steps elsewhere.
        ``roots[b]``: the chord root pitch class of bar ``b`` (bars from 0 at time 0)."""
        notes = []
        for t, length in rhythm:
            on_strong = abs(t % 2.0) < 1e-9
            prev = self.strong(prev, roots[int(t // BAR)]) if on_strong else self.weak(prev)
            notes.append(Note(prev, t, length))
        return notes

    def resnap(self, notes: list[Note], shift: float, roots: list[int]) -> list[Note]:
        """``notes`` moved by ``shift`` quarters, each pitch snapped to the nearest chord tone
        (strong beats) or scale note (others) under the chords there: the repeat of a line."""
        out = []
        for n in notes:
            t = n.start + shift
            pool = self.tones[roots[int(t // BAR)]] if abs(t % 2.0) < 1e-9 else self.scale
            out.append(Note(_nearest(pool, n.pitch), t, n.length))
        return out

    def line(self, start: float, roots: list[int], prev: int, resolution: str) -> list[Note]:
        """A 4-bar line from ``start``: call (bars 1-2, maybe after a one-beat rest), response
        (bar 3), a long chord tone on the downbeat of bar 4, then a rest."""
        delay = float(self.rng.choice([0.0, 0.0, 1.0]))
        call = _rhythm(self.rng, start + delay, start + 2 * BAR, resolution)
        response = _rhythm(self.rng, start + 2 * BAR, start + 3 * BAR, resolution)
        notes = self.pitches(call + response, roots, prev)
        last = self.strong(notes[-1].pitch, roots[int((start + 3 * BAR) // BAR)])
        hold = float(self.rng.choice([2.0, 3.0]))
        return notes + [Note(last, start + 3 * BAR, hold)]


def _chorus(mel: _Melody, start: float, roots: list[int], prev: int, resolution: str) -> list[Note]:
    """The melody of one chorus from ``start``: lines A A B (line 2 repeats line 1 re-snapped)."""
    first = mel.line(start, roots, prev, resolution)
    second = mel.resnap(first, 4 * BAR, roots)
    third = mel.line(start + 8 * BAR, roots, second[-1].pitch, resolution)
    return first + second + third


def blues_leadsheet(seed: int, index: int, choruses: tuple[int, int] = (2, 4),
                    resolution: str = "eighth") -> LeadSheet:  # fmt: skip
    """Piece ``index`` of the blues set of ``seed`` (see the module docstring)."""
    rng = np.random.default_rng([seed, index])
    tonic = int(rng.integers(12))
    bpm = float(rng.integers(90, 161))
    n = int(rng.integers(choruses[0], choruses[1] + 1))
    mel = _Melody(rng, tonic)
    degrees: list[int] = []
    for _ in range(n):
        degrees.extend(form_variant(rng))
    roots = [(tonic + d) % 12 for d in degrees]
    melody: list[Note] = []
    prev = _nearest(mel.scale, 72)  # start in the middle of the range
    for c in range(n):
        melody += _chorus(mel, c * 12 * BAR, roots, prev, resolution)
        prev = melody[-1].pitch
    chords = tuple(Chord(r, "7", b * BAR, BAR) for b, r in enumerate(roots))
    phrases = tuple(Phrase("AAB"[k % 3], k * 4 * BAR, (k + 1) * 4 * BAR) for k in range(3 * n))
    return LeadSheet(
        piece_id=f"blues/{seed}/{index}", collection="blues",
        title=f"Blues in {NAMES[tonic]} no. {index + 1}", meter=(4, 4), bar_quarters=BAR,
        key_tonic=tonic, key_mode="major", bpm=bpm, pickup=0.0, length=len(roots) * BAR,
        melody=tuple(melody), chords=chords, phrases=phrases, chord_source="score",
        extra={"form": degrees, "resolution": resolution, "seed": seed},
    )  # fmt: skip


def blues_leadsheets(count: int, seed: int, choruses: tuple[int, int] = (2, 4),
                     resolution: str = "eighth") -> list[LeadSheet]:  # fmt: skip
    """``count`` seeded 12-bar blues lead sheets (see the module docstring).

    ``choruses``: the least and most choruses per piece (inclusive); ``resolution``:
    ``"eighth"`` or ``"quarter"``, the shortest note. Raises ``ValueError`` naming a bad
    argument.
    """
    if resolution not in STEPS:
        raise ValueError(f"blues resolution {resolution!r}: expected one of {sorted(STEPS)}")
    if count < 0:
        raise ValueError(f"blues count {count}: must be >= 0")
    if not 1 <= choruses[0] <= choruses[1]:
        raise ValueError(f"blues choruses {choruses}: need 1 <= least <= most")
    return [blues_leadsheet(seed, i, choruses, resolution) for i in range(count)]
