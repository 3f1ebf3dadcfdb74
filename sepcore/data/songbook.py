"""Song material: the pieces of music21's corpus, each reduced to a :class:`LeadSheet`.

:data:`COLLECTIONS` names the parts of the corpus used; :func:`catalogue` lists their
pieces (:class:`PieceRef`); :func:`load_leadsheet` parses one piece and reduces it to
melody, chords, metre, key, tempo, pickup and form. Both are cached as JSON below
``$SEP_CACHE_DIR/songbook/`` (default ``~/.cache/sep``), versioned by
:data:`SONGBOOK_VERSION` and music21's version; writes are atomic and a corrupt cache
file is ignored and rebuilt. A piece that cannot be used raises
:class:`~sepcore.errors.RenderError` naming it (failures are cached too).

Piece ids are ``"<path below music21's corpus folder>"``, with ``"#<X: number>"``
appended for ABC files holding several tunes (``"essenFolksong/altdeu10.abc#12"``).
Units are those of :mod:`sepcore.data.leadsheet` (quarters, MIDI pitches, pitch
classes).

Reduction rules
---------------
* **Repeats are expanded** (a lead sheet is the piece as played): ``|:``/``:|`` marks
  and first/second endings of the first part are followed measure by measure (a
  ``:|`` without ``|:`` repeats from the start or from the end of the previous
  repeat, as in ABC); every part follows the same order (a part whose measures do
  not line up with the top part's is left out); D.C. and D.S. jumps are not taken.
  ``extra["repeats"]`` says ``"expanded"`` or ``"none"``.
* **Melody**: the top part (the first voice of an ABC tune, whose other voices are
  left out; the first violin, the soprano, the piano's right hand), ties merged,
  grace notes and rests dropped; where notes share an onset the highest wins, and
  each note is cut at the next onset.
* **Metre**: the first time signature (``bar_quarters`` its bar length); without one,
  the commonest measure length. **Pickup**: the length of a first measure shorter
  than a bar. **Tempo**: the first explicit metronome mark, else None.
* **Key**: Krumhansl-Kessler profile correlation with the duration-weighted pitch
  classes of all parts (and half-weighted chord tones of the score's chords), over
  the 24 major/minor keys, plus 0.1 for the keys whose signature is the score's and
  0.05 for the tonic the score names (ABC's ``K:``) and for the last chord's root
  (else the melody's last note) as tonic.
* **Chords** (``chord_source="score"``): the top part's chord symbols (two or more,
  and at least one per four bars), each in force until the next, the first one from
  0; a quality outside :data:`~sepcore.data.leadsheet.QUALITIES` maps to the one
  sharing the most pitch classes (ninths to sevenths, power chords to major); a
  slash bass is kept.
* **Harmonisation** (``chord_source="analysis"``, when the score has no chord symbols):
  one chord per half bar in metres of four or more quarters with an even numerator
  (4/4, 2/2, 6/4, 12/8), else per bar (2/4, 3/4, 6/8, 9/8), and per short measure.
  The candidates are the key's diatonic chords (major: I ii iii IV V vi V7; minor:
  i III iv v V VI VII V7) for a melody alone; for a score of several parts (a
  chorale, a quartet, a rag), whose chords its parts spell out, every root with maj,
  min, 7 and dim, diatonic ones preferred by 0.05. Each candidate scores
  ``(covered - 0.6 * uncovered) / total`` over the segment's notes weighted by
  duration times 1.5 at the segment's start, 1.25 on a beat and 1.0 elsewhere; plus
  0.06 for I (i), 0.04 for IV (iv), V and V7, -0.03 for a four-note chord,
  0.04 for keeping the previous chord, 0.1 for the lowest note at the segment's start
  as root (several parts), 0.15 for the tonic on a phrase's last segment and 0.3 on
  the piece's last, 0.08 for V or V7 on the segment before a phrase's last. The best
  candidate is taken left to right; a segment without notes keeps the previous chord.
* **Form**: sections are the stretches between repeat jumps and repeat, double or
  final bar lines, snapped to the nearest bar line; a section under two bars joins
  the next one (the last one the previous one); a piece without them is one
  section. Sections longer than 16 bars are cut into 8-bar phrases, a piece of one
  section into 8-bar phrases from 16 bars on, else 4-bar ones (a remainder under
  half a phrase joins the previous one). Phrases are labelled ``A``, ``B``, ... in
  order of appearance; a phrase whose melody (onset in the phrase, pitch) shares
  60 % with an earlier one gets its label.
* A piece without notes, without bar lines (some Essen tunes with ``M: none``) or
  under four bars long (pickup included, rounded) raises RenderError.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import re
import warnings
import zipfile
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from sepcore.data.leadsheet import QUALITIES, Chord, LeadSheet, Note, Phrase
from sepcore.errors import RenderError

SONGBOOK_VERSION = 2  # bump when catalogue or lead sheets change for the same corpus

#: Collection name -> glob patterns below music21's corpus folder.
COLLECTIONS: dict[str, tuple[str, ...]] = {
    "oneills": ("oneills1850/*.abc",),
    "ryans": ("ryansMammoth/*.abc",),
    "nottingham": ("nottingham-dataset/*.abc",),  # carries chord symbols
    "essen": ("essenFolksong/*.abc",),
    "leadsheet": ("leadSheet/*.mxl",),
    "bach": ("bach/*.mxl", "bach/*.xml", "bach/*.krn"),  # a .krn also in .mxl is skipped
    "quartets": (
        "haydn/*/*.mxl",
        "mozart/k80/*.mxl",
        "mozart/k155/*.mxl",
        "mozart/k156/*.mxl",
        "mozart/k458/*.mxl",
        "beethoven/*.mxl",
        "beethoven/*/*.mxl",
    ),
    "joplin": ("joplin/*.mxl",),
    "miscfolk": ("miscFolk/*.abc", "airdsAirs/*.abc"),
}

MIN_BARS = 4
_EPS = 1e-6
_MAJOR_PROFILE = (6.35, 2.23, 3.48, 2.33, 4.38, 4.09, 2.52, 5.19, 2.39, 3.66, 2.29, 2.88)
_MINOR_PROFILE = (6.33, 2.68, 3.52, 5.38, 2.60, 3.53, 2.54, 4.75, 3.98, 2.69, 3.34, 3.17)
# (degree in semitones above the tonic, quality, prior)
_DIATONIC = {
    "major": ((0, "maj", 0.06), (2, "min", 0.0), (4, "min", 0.0), (5, "maj", 0.04),
              (7, "maj", 0.04), (9, "min", 0.0), (7, "7", 0.04)),
    "minor": ((0, "min", 0.06), (3, "maj", 0.0), (5, "min", 0.04), (7, "min", 0.0),
              (7, "maj", 0.04), (8, "maj", 0.0), (10, "maj", 0.0), (7, "7", 0.04)),
}  # fmt: skip
_TEXTURE_QUALITIES = ("maj", "min", "7", "dim")
_TONIC_QUALITY = {"major": "maj", "minor": "min"}
_SECTION_BARS = ("double", "final", "light-light", "light-heavy")


@dataclass(frozen=True)
class PieceRef:
    """One piece of the catalogue (see the module docstring for ``piece_id``)."""

    piece_id: str
    collection: str
    title: str


# ----------------------------------------------------------------------------- cache


def _cache_root() -> Path:
    import music21

    from sepcore.io.cache import cache_dir

    return Path(cache_dir("songbook", f"v{SONGBOOK_VERSION}-music21-{music21.__version__}"))


def _write_json(path: Path, data: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        tmp.write_text(json.dumps(data, sort_keys=True))
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def _read_json(path: Path) -> Any:
    """The JSON in ``path``, or None when it is missing or corrupt."""
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def _corpus_root() -> Path:
    from music21 import common

    return Path(common.getCorpusFilePath())


# ----------------------------------------------------------------------------- catalogue


def _abc_tunes(path: Path) -> list[tuple[int, str]]:
    """``(X: number, title)`` of each tune of an ABC file, by a text scan."""
    tunes: list[tuple[int, str]] = []
    for line in path.read_text(encoding="latin-1").splitlines():
        if line.startswith("X:"):
            match = re.match(r"X:\s*(\d+)", line)
            if match:
                tunes.append((int(match.group(1)), ""))
        elif line.startswith("T:") and tunes and not tunes[-1][1]:
            tunes[-1] = (tunes[-1][0], line[2:].strip())
    return tunes


def _xml_title(path: Path) -> str:
    """The movement or work title of a MusicXML file ('' if none), by a text scan."""
    try:
        if path.suffix == ".mxl":
            with zipfile.ZipFile(path) as archive:
                name = next(n for n in archive.namelist() if n.endswith(".xml") and "/" not in n)
                with archive.open(name) as handle:
                    head = handle.read(20_000).decode("utf-8", "replace")
        else:
            head = path.read_text(encoding="utf-8", errors="replace")[:20_000]
    except (OSError, StopIteration, zipfile.BadZipFile):
        return ""
    for tag in ("movement-title", "work-title"):
        match = re.search(rf"<{tag}>([^<]+)</{tag}>", head)
        if match and match.group(1).strip():
            return match.group(1).strip()
    return ""


def _collection_refs(name: str, root: Path) -> list[PieceRef]:
    files = sorted({p for pattern in COLLECTIONS[name] for p in root.glob(pattern)})
    stems = {p.with_suffix("") for p in files if p.suffix != ".krn"}
    refs = []
    for path in files:
        rel = path.relative_to(root).as_posix()
        if path.suffix == ".krn" and path.with_suffix("") in stems:
            continue
        if path.suffix == ".abc":
            tunes = _abc_tunes(path)
            if len(tunes) > 1:
                refs += [PieceRef(f"{rel}#{n}", name, t or f"{path.stem} {n}") for n, t in tunes]
                continue
            title = tunes[0][1] if tunes else ""
        else:
            title = _xml_title(path) if path.suffix in (".mxl", ".xml") else ""
        refs.append(PieceRef(rel, name, title or rel.rsplit(".", 1)[0]))
    return refs


def _build_catalogue() -> list[PieceRef]:
    root = _corpus_root()
    refs = [r for name in COLLECTIONS for r in _collection_refs(name, root)]
    return sorted(refs, key=lambda r: r.piece_id)


@functools.lru_cache(maxsize=4)
def _full_catalogue(cache: Path) -> tuple[PieceRef, ...]:
    path = cache / "catalogue.json"
    data = _read_json(path)
    try:
        return tuple(PieceRef(**r) for r in data["pieces"])
    except (TypeError, KeyError):
        refs = _build_catalogue()
        _write_json(path, {"pieces": [vars(r) for r in refs]})
        return tuple(refs)


def catalogue(collections: Sequence[str] | None = None) -> list[PieceRef]:
    """Every piece of ``collections`` (None: all of :data:`COLLECTIONS`), sorted by id.

    Built once per machine (a text scan) and cached; unknown names are a ValueError.
    """
    names = set(COLLECTIONS if collections is None else collections)
    unknown = sorted(names - set(COLLECTIONS))
    if unknown:
        raise ValueError(f"unknown collections {unknown}; known: {sorted(COLLECTIONS)}")
    return [r for r in _full_catalogue(_cache_root()) if r.collection in names]


@functools.lru_cache(maxsize=4)
def _refs_by_id(cache: Path) -> dict[str, PieceRef]:
    return {r.piece_id: r for r in _full_catalogue(cache)}


# ----------------------------------------------------------------------------- parsing


@dataclass
class _Measure:
    """One written measure: times relative to its start, in quarters."""

    length: float
    start_repeat: bool = False
    end_repeat: bool = False
    endings: frozenset[int] = frozenset()
    section_end: bool = False  # a double or final bar line
    time_signature: tuple[int, int] | None = None
    # (onset, pitch, length, part index, continues a tied note)
    notes: list[tuple[float, int, float, int, bool]] = field(default_factory=list)
    symbols: list[tuple[float, Any]] = field(default_factory=list)  # (onset, ChordSymbol)


def _parse(piece_id: str) -> Any:
    """The music21 score of ``piece_id`` (at sounding pitch)."""
    from music21 import converter

    rel, _, number = piece_id.partition("#")
    path = _corpus_root() / rel
    try:
        score = converter.parse(
            str(path), number=int(number) if number else None, forceSource=True, storePickle=False
        )
    except Exception as exc:  # music21 raises many types
        raise RenderError(
            piece_id, f"music21 cannot parse it: {type(exc).__name__}: {exc}"
        ) from exc
    if not hasattr(score, "parts") or not score.parts:
        raise RenderError(piece_id, f"holds no parts (a {type(score).__name__})")
    if path.suffix != ".abc":
        score.toSoundingPitch(inPlace=True)
    return score


def _sounding(element: Any) -> list[int]:
    """MIDI pitches of a note or chord ([] for grace notes, symbols, unpitched)."""
    from music21 import harmony

    if isinstance(element, harmony.ChordSymbol) or element.duration.isGrace:
        return []
    if element.quarterLength <= 0:
        return []
    return [int(p.midi) for p in getattr(element, "pitches", ())]


def _barline_flags(measure: Any, info: _Measure) -> None:
    from music21 import bar

    for line, side in ((measure.leftBarline, "left"), (measure.rightBarline, "right")):
        if isinstance(line, bar.Repeat):
            if line.direction == "start":
                info.start_repeat = True
            else:
                info.end_repeat = True
        elif side == "right" and line is not None and line.type in _SECTION_BARS:
            info.section_end = True


def _endings(measure: Any) -> frozenset[int]:
    from music21 import spanner

    numbers: set[int] = set()
    for bracket in measure.getSpannerSites():
        if isinstance(bracket, spanner.RepeatBracket):
            numbers.update(int(n) for n in re.findall(r"\d+", str(bracket.number or "")))
    return frozenset(numbers)


def _measures(piece_id: str, score: Any, melody_only: bool) -> tuple[list[_Measure], int]:
    """The written measures of the score's top part with the notes of every part used
    in them (only the top part when ``melody_only``), and the number of parts used."""
    from music21 import harmony, meter, stream

    parts = [p for p in score.parts if p.recurse().notes]
    if not parts:
        raise RenderError(piece_id, "has no notes")
    layouts = [
        list(p.getElementsByClass(stream.Measure)) for p in parts[: 1 if melody_only else None]
    ]
    first = layouts[0]
    if not first:
        raise RenderError(piece_id, "has no bar lines")
    layouts = [m for m in layouts if len(m) == len(first)]
    infos = []
    for i, measure in enumerate(first):
        end = first[i + 1].offset if i + 1 < len(first) else measure.offset + measure.highestTime
        info = _Measure(float(end - measure.offset))
        _barline_flags(measure, info)
        info.endings = _endings(measure)
        signatures = measure.getElementsByClass(meter.TimeSignature)
        if signatures:
            info.time_signature = (signatures[0].numerator, signatures[0].denominator)
        for k, layout in enumerate(layouts):
            for element in layout[i].flatten().notes:
                tied = element.tie is not None and element.tie.type in ("continue", "stop")
                onset, length = float(element.offset), float(element.quarterLength)
                info.notes += [(onset, p, length, k, tied) for p in _sounding(element)]
        for symbol in measure.recurse().getElementsByClass(harmony.ChordSymbol):
            if not isinstance(symbol, harmony.NoChord) and symbol.pitches:
                info.symbols.append((float(symbol.getOffsetInHierarchy(measure)), symbol))
        infos.append(info)
    return infos, len(layouts)


# ----------------------------------------------------------------------------- repeats


def _play_order(measures: Sequence[_Measure]) -> list[int]:
    """Indices of the measures as played, repeats and first/second endings followed."""
    order: list[int] = []
    i, start, passage = 0, 0, 1
    limit = 4 * len(measures)
    while i < len(measures) and len(order) < limit:
        m = measures[i]
        if m.start_repeat and i != start and passage == 1:
            start = i
        if m.endings and passage not in m.endings:
            i += 1
            continue
        if (
            passage > 1
            and not m.endings
            and order
            and order[-1] == i - 1
            and measures[i - 1].endings
        ):
            passage, start = 1, i  # left the last ending
        order.append(i)
        if m.end_repeat and passage == 1:
            passage, i = 2, start
            continue
        if m.end_repeat:
            passage, start = 1, i + 1
        i += 1
    return order


# ----------------------------------------------------------------------------- timeline


@dataclass(frozen=True)
class _Timeline:
    length: float
    pickup: float
    meter: tuple[int, int]
    bar_quarters: float
    bars: tuple[tuple[float, float], ...]  # (start, end) of each bar, short measures merged
    section_starts: tuple[float, ...]
    melody: tuple[Note, ...]
    notes: tuple[tuple[float, int, float], ...]  # every part: (onset, pitch, length)
    symbols: tuple[tuple[float, Any], ...]


def _meter(measures: Sequence[_Measure]) -> tuple[tuple[int, int], float]:
    signature = next((m.time_signature for m in measures if m.time_signature), None)
    if signature is not None:
        return signature, 4.0 * signature[0] / signature[1]
    bar = Counter(round(m.length, 3) for m in measures).most_common(1)[0][0]
    return ((int(bar), 4) if bar == int(bar) else (int(round(2 * bar)), 8)), bar


def _top_line(notes: Sequence[tuple[float, int, float]], end: float) -> tuple[Note, ...]:
    """Highest note per onset, each cut at the next onset and at ``end``."""
    best: dict[float, tuple[float, int, float]] = {}
    for note in notes:
        onset = round(note[0], 6)
        if onset not in best or note[1:] > best[onset][1:]:
            best[onset] = note
    onsets = sorted(o for o in best if o < end)
    line = []
    for k, onset in enumerate(onsets):
        stop = min(onset + best[onset][2], onsets[k + 1] if k + 1 < len(onsets) else end)
        if stop > onset + _EPS:
            line.append(Note(best[onset][1], onset, round(stop - onset, 6)))
    return tuple(line)


def _join_ties(
    notes: Sequence[tuple[float, int, float, int, bool]],
) -> list[tuple[float, int, float, int]]:
    """``(onset, pitch, length, part)``, sorted: a tied continuation lengthens the note
    of its part and pitch that ends where it starts."""
    joined: list[tuple[float, int, float, int]] = []
    last: dict[tuple[int, int], int] = {}  # (part, pitch) -> index in joined
    for onset, pitch, length, part, tied in sorted(notes):
        k = last.get((part, pitch))
        if tied and k is not None and abs(joined[k][0] + joined[k][2] - onset) < 1e-3:
            joined[k] = (joined[k][0], pitch, round(onset + length - joined[k][0], 6), part)
        else:
            last[(part, pitch)] = len(joined)
            joined.append((onset, pitch, length, part))
    return sorted(joined)


def _bars(spans: Sequence[tuple[float, float]], bar_quarters: float) -> list[tuple[float, float]]:
    """Measure spans with consecutive short measures that add up to a bar merged."""
    bars: list[tuple[float, float]] = []
    for start, end in spans:
        prev = bars[-1] if len(bars) > 1 else None  # a pickup is never merged
        if (
            prev is not None
            and prev[1] - prev[0] < bar_quarters - _EPS
            and abs(prev[1] - prev[0] + end - start - bar_quarters) < _EPS
        ):
            bars[-1] = (prev[0], end)
        else:
            bars.append((start, end))
    return bars


def _timeline(measures: Sequence[_Measure]) -> tuple[_Timeline, bool]:
    """The piece as played (see :func:`_play_order`); True if repeats were expanded."""
    order = _play_order(measures)
    meter, bar_quarters = _meter(measures)
    spans: list[tuple[float, float]] = []
    notes: list[tuple[float, int, float, int, bool]] = []
    symbols: list[tuple[float, Any]] = []
    breaks, now = [], 0.0
    for k, i in enumerate(order):
        m, prev = measures[i], measures[order[k - 1]] if k else None
        jump = i != order[k - 1] + 1 if k else False
        if prev is not None and (jump or prev.section_end or prev.end_repeat or m.start_repeat):
            breaks.append(now)
        spans.append((now, round(now + m.length, 6)))
        notes += [(round(now + o, 6), p, d, part, tied) for o, p, d, part, tied in m.notes]
        symbols += [(round(now + o, 6), s) for o, s in m.symbols]
        now = spans[-1][1]
    joined = _join_ties(notes)
    bars = _bars(spans, bar_quarters)
    pickup = bars[0][1] if len(bars) > 1 and bars[0][1] < bar_quarters - _EPS else 0.0
    starts = [s for s, _ in bars]
    snapped = {min(starts, key=lambda s: abs(s - t)) for t in breaks}
    timeline = _Timeline(
        length=now,
        pickup=pickup,
        meter=meter,
        bar_quarters=bar_quarters,
        bars=tuple(bars),
        section_starts=tuple(sorted({pickup} | {s for s in snapped if s > pickup + _EPS})),
        melody=_top_line([n[:3] for n in joined if n[3] == 0], now),
        notes=tuple(n[:3] for n in joined if n[0] < now),
        symbols=tuple(sorted(symbols, key=lambda s: s[0])),
    )
    return timeline, order != list(range(len(measures)))


# ----------------------------------------------------------------------------- key


def _signature_major(score: Any) -> tuple[int | None, int | None]:
    """The major-key tonic of the score's key signature and the tonic it names (or None)."""
    from music21 import key

    signatures = list(score.recurse().getElementsByClass(key.KeySignature))
    if not signatures:
        return None, None
    first = signatures[0]
    named = first.tonic.pitchClass if isinstance(first, key.Key) else None
    return (7 * first.sharps) % 12, named


def _key(score: Any, timeline: _Timeline, chords: Sequence[Chord]) -> tuple[int, str]:
    """``(tonic pitch class, "major" | "minor")`` by the rule in the module docstring."""
    histogram = np.zeros(12)
    for _, pitch, length in timeline.notes:
        histogram[pitch % 12] += length
    for chord in chords:
        histogram[list(chord.pitch_classes())] += 0.5 * chord.length
    sig_major, named = _signature_major(score)
    last = chords[-1].root if chords else timeline.melody[-1].pitch % 12
    best: tuple[float, int, str] = (-np.inf, 0, "major")
    for mode, profile in (("major", _MAJOR_PROFILE), ("minor", _MINOR_PROFILE)):
        for tonic in range(12):
            fit = float(np.nan_to_num(np.corrcoef(histogram, np.roll(profile, tonic))[0, 1]))
            relative = tonic if mode == "major" else (tonic + 3) % 12
            fit += 0.1 * (relative == sig_major) + 0.05 * (tonic == named) + 0.05 * (tonic == last)
            if fit > best[0] + _EPS:
                best = (fit, tonic, mode)
    return best[1], best[2]


# ----------------------------------------------------------------------------- chords


def _merge(chords: Sequence[Chord]) -> tuple[Chord, ...]:
    """Consecutive equal chords joined into one."""
    merged: list[Chord] = []
    for chord in chords:
        prev = merged[-1] if merged else None
        if prev is not None and (prev.root, prev.quality, prev.bass) == (
            chord.root,
            chord.quality,
            chord.bass,
        ):
            merged[-1] = replace(prev, length=round(prev.length + chord.length, 6))
        else:
            merged.append(chord)
    return tuple(merged)


def _symbol_chord(symbol: Any) -> tuple[int, str, int | None]:
    """``(root, quality, bass)`` of a music21 ChordSymbol, the quality the nearest known."""
    root = symbol.root().pitchClass
    intervals = {(p.pitchClass - root) % 12 for p in symbol.pitches}

    def overlap(quality: str) -> float:
        known = set(QUALITIES[quality])
        return len(intervals & known) / len(intervals | known)

    bass = symbol.bass().pitchClass
    return root, max(QUALITIES, key=overlap), None if bass == root else bass


def _score_chords(timeline: _Timeline) -> tuple[Chord, ...]:
    """The chord symbols, each in force until the next; the first from 0."""
    at = {onset: _symbol_chord(symbol) for onset, symbol in timeline.symbols}
    onsets = sorted(o for o in at if o < timeline.length)
    chords = []
    for k, onset in enumerate(onsets):
        start = 0.0 if k == 0 else onset
        end = onsets[k + 1] if k + 1 < len(onsets) else timeline.length
        root, quality, bass = at[onset]
        chords.append(Chord(root, quality, start, round(end - start, 6), bass))
    return _merge(chords)


def _segments(timeline: _Timeline) -> list[tuple[float, float]]:
    """Harmonic segments: half bars in even metres of four quarters or more, else bars."""
    halve = timeline.bar_quarters >= 4 - _EPS and timeline.meter[0] % 2 == 0
    segments = []
    for start, end in timeline.bars:
        if halve and abs(end - start - timeline.bar_quarters) < _EPS:
            middle = round(start + timeline.bar_quarters / 2, 6)
            segments += [(start, middle), (middle, end)]
        else:
            segments.append((start, end))
    return segments


def _candidates(tonic: int, mode: str, texture: bool) -> list[tuple[int, str, float]]:
    """``(root, quality, prior)`` of the chords the harmoniser may choose."""
    diatonic = [((tonic + d) % 12, q, prior) for d, q, prior in _DIATONIC[mode]]
    if not texture:
        return diatonic
    priors = {(r, q): prior + 0.05 for r, q, prior in diatonic}
    return [(r, q, priors.get((r, q), 0.0)) for r in range(12) for q in _TEXTURE_QUALITIES]


def _segment_weights(
    notes: Sequence[tuple[float, int, float]],
    segments: Sequence[tuple[float, float]],
    beat: float,
) -> tuple[np.ndarray, np.ndarray]:
    """Weighted pitch-class totals per segment ``(segments, 12)`` and the lowest pitch
    sounding at each segment's start ``(segments,)`` (-1 where none)."""
    import bisect

    starts = [s for s, _ in segments]
    weights = np.zeros((len(segments), 12))
    lowest = np.full(len(segments), 1000)
    for onset, pitch, length in notes:
        k = max(0, bisect.bisect_right(starts, onset + _EPS) - 1)
        while k < len(segments) and segments[k][0] < onset + length - _EPS:
            start, end = segments[k]
            overlap = min(end, onset + length) - max(start, onset)
            if abs(onset - start) < _EPS:
                factor = 1.5
            elif start < onset and abs(onset / beat - round(onset / beat)) < _EPS:
                factor = 1.25
            else:
                factor = 1.0
            weights[k, pitch % 12] += max(overlap, 0.0) * factor
            if onset <= start + _EPS:
                lowest[k] = min(lowest[k], pitch)
            k += 1
    return weights, np.where(lowest == 1000, -1, lowest)


def _harmonise(
    timeline: _Timeline, tonic: int, mode: str, texture: bool, phrase_ends: set[float]
) -> tuple[Chord, ...]:
    """Chords by the harmonisation rule of the module docstring."""
    candidates = _candidates(tonic, mode, texture)
    segments = _segments(timeline)
    notes = timeline.notes if texture else [(n.start, n.pitch, n.length) for n in timeline.melody]
    num, den = timeline.meter
    beat = 1.5 if den == 8 and num % 3 == 0 and num > 3 else 4.0 / den
    weights, lowest = _segment_weights(notes, segments, beat)
    masks = np.array([[pc in Chord(r, q, 0, 0).pitch_classes() for pc in range(12)]
                      for r, q, _ in candidates], dtype=float)  # fmt: skip
    base = np.array([p - 0.03 * (len(QUALITIES[q]) > 3) for _, q, p in candidates])
    roots = np.array([r for r, _, _ in candidates])
    is_tonic = np.array([(r, q) == (tonic, _TONIC_QUALITY[mode]) for r, q, _ in candidates])
    is_dominant = np.array([r == (tonic + 7) % 12 and q in ("maj", "7") for r, q, _ in candidates])
    ends = {k for k, (_, end) in enumerate(segments) if round(end, 6) in phrase_ends}
    choice = int(np.argmax(is_tonic))
    chords = []
    for k, (start, end) in enumerate(segments):
        total = weights[k].sum()
        if total > _EPS:
            covered = masks @ weights[k]
            score = (covered - 0.6 * (total - covered)) / total + base
            score[choice] += 0.04
            score += 0.1 * texture * (roots == lowest[k] % 12) * (lowest[k] >= 0)
            score += (0.3 if k == len(segments) - 1 else 0.15 * (k in ends)) * is_tonic
            score += 0.08 * (k + 1 in ends) * is_dominant
            choice = int(np.argmax(score))
        root, quality, _ = candidates[choice]
        chords.append(Chord(root, quality, start, round(end - start, 6)))
    return _merge(chords)


# ----------------------------------------------------------------------------- form


def _phrase_spans(timeline: _Timeline) -> list[tuple[float, float]]:
    """``(start, end)`` of each phrase, covering ``[pickup, length)``."""
    bounds = [timeline.pickup]
    for start in timeline.section_starts[1:]:
        if start - bounds[-1] >= 2 * timeline.bar_quarters - _EPS:
            bounds.append(start)  # else the section under two bars joins the next one
    bounds.append(timeline.length)
    if len(bounds) > 2 and bounds[-1] - bounds[-2] < 2 * timeline.bar_quarters - _EPS:
        del bounds[-2]  # the last one joins the previous one
    single = len(bounds) == 2
    starts = [s for s, _ in timeline.bars if s >= timeline.pickup - _EPS]
    spans = []
    for a, b in zip(bounds, bounds[1:], strict=False):
        inside = [s for s in starts if a - _EPS <= s < b - _EPS]
        if len(inside) > 16 or (single and len(inside) >= 16):
            size = 8
        else:
            size = 4 if single else len(inside)
        cuts = inside[::size]
        if len(cuts) > 1 and len(inside) - size * (len(cuts) - 1) < size / 2:
            cuts.pop()
        spans += list(zip(cuts, [*cuts[1:], b], strict=True))
    return spans


def _label(melody: Sequence[Note], spans: Sequence[tuple[float, float]]) -> list[Phrase]:
    """Phrases labelled A, B, ... in order; a phrase sharing 60 % of its melody with an
    earlier one gets that one's label."""
    seen: list[tuple[set[tuple[float, int]], str]] = []
    phrases = []
    for start, end in spans:
        shape = {(round(n.start - start, 3), n.pitch) for n in melody if start <= n.start < end}
        similar = [
            (len(shape & other) / max(len(shape), len(other), 1), label) for other, label in seen
        ]
        match = max(similar, default=(0.0, ""))
        if match[0] >= 0.6 or (not shape and any(not other for other, _ in seen)):
            label = match[1] if match[0] >= 0.6 else next(lb for o, lb in seen if not o)
        else:
            count = len({lb for _, lb in seen})
            label = chr(ord("A") + count) if count < 26 else f"Z{count - 25}"
        seen.append((shape, label))
        phrases.append(Phrase(label, start, end))
    return phrases


# ----------------------------------------------------------------------------- lead sheets


def _tempo(score: Any) -> float | None:
    from music21 import tempo

    for mark in score.recurse().getElementsByClass(tempo.MetronomeMark):
        if mark.number is not None and not mark.numberImplicit:
            bpm = float(mark.getQuarterBPM())
            if 20.0 <= bpm <= 400.0:
                return round(bpm, 3)
    return None


def _reduce(ref: PieceRef, score: Any) -> LeadSheet:
    """The lead sheet of a parsed score (rules in the module docstring)."""
    measures, parts = _measures(
        ref.piece_id, score, ref.piece_id.partition("#")[0].endswith(".abc")
    )
    timeline, expanded = _timeline(measures)
    if not timeline.melody:
        raise RenderError(ref.piece_id, "has no notes")
    bars = timeline.length / timeline.bar_quarters
    if round(bars) < MIN_BARS:
        raise RenderError(ref.piece_id, f"is too short ({bars:.1f} bars; {MIN_BARS} needed)")
    chords = _score_chords(timeline) if len(timeline.symbols) >= max(2.0, bars / 4) else ()
    tonic, mode = _key(score, timeline, chords)
    phrases = _label(timeline.melody, _phrase_spans(timeline))
    source = "score"
    if not chords:
        ends = {round(p.end, 6) for p in phrases}
        chords = _harmonise(timeline, tonic, mode, parts > 1, ends)
        source = "analysis"
    return LeadSheet(
        piece_id=ref.piece_id,
        collection=ref.collection,
        title=ref.title,
        meter=timeline.meter,
        bar_quarters=timeline.bar_quarters,
        key_tonic=tonic,
        key_mode=mode,
        bpm=_tempo(score),
        pickup=timeline.pickup,
        length=timeline.length,
        melody=timeline.melody,
        chords=chords,
        phrases=tuple(phrases),
        chord_source=source,
        extra={"repeats": "expanded" if expanded else "none"},
    )


def _read_sheet(piece_id: str, path: Path) -> LeadSheet | None:
    """The cached lead sheet (None when missing or corrupt); a cached failure raises."""
    data = _read_json(path)
    if not isinstance(data, dict) or data.get("piece_id") != piece_id:
        return None
    if isinstance(data.get("error"), str):
        raise RenderError(piece_id, data["error"])
    try:
        return LeadSheet.from_json(data["sheet"])
    except (KeyError, TypeError, ValueError):
        return None


#: Suffixes of a score file named by its path instead of a catalogue id.
FILE_SUFFIXES = (".abc", ".mxl", ".xml", ".musicxml", ".krn")
#: The collection of pieces read from files.
FILES = "files"


def _load_file(path: str) -> LeadSheet:
    """The lead sheet of a score file outside the corpus (not cached: the file may change)."""
    if not os.path.isfile(path):
        raise RenderError(path, "no such score file")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return _reduce(PieceRef(path, FILES, Path(path).stem), _parse(os.path.abspath(path)))
    except RenderError:
        raise
    except Exception as exc:  # music21 trips over bad files in many ways
        raise RenderError(path, f"cannot be reduced: {type(exc).__name__}: {exc}") from exc


def load_leadsheet(piece_id: str) -> LeadSheet:
    """The lead sheet of one catalogue piece (cached per machine after the first call), or
    of a score file given by its path (ABC, MusicXML or Humdrum; collection ``files``).

    Raises RenderError naming the piece when it is not in the catalogue or cannot be
    used (unparseable, no notes, under four bars); such a failure is cached too.
    """
    cache = _cache_root()
    ref = _refs_by_id(cache).get(piece_id)
    if ref is None and piece_id.lower().endswith(FILE_SUFFIXES):
        return _load_file(piece_id)
    if ref is None:
        raise RenderError(piece_id, "is not a piece of the songbook catalogue")
    path = cache / "sheets" / f"{hashlib.sha1(piece_id.encode()).hexdigest()[:20]}.json"
    cached = _read_sheet(piece_id, path)
    if cached is not None:
        return cached
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            sheet = _reduce(ref, _parse(piece_id))
    except RenderError as exc:
        _write_json(path, {"piece_id": piece_id, "error": exc.problem})
        raise
    except Exception as exc:  # music21 trips over some corpus files in many ways
        problem = f"cannot be reduced: {type(exc).__name__}: {exc}"
        _write_json(path, {"piece_id": piece_id, "error": problem})
        raise RenderError(piece_id, problem) from exc
    _write_json(path, {"piece_id": piece_id, "sheet": sheet.to_json()})
    return sheet
