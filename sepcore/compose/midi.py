"""Lead sheets as General MIDI files, and General MIDI files as lead sheets.

:func:`leadsheet_to_midi` writes a composed piece (or any :class:`LeadSheet`) as a type-1
General MIDI file at :data:`TICKS_PER_BEAT` ticks per quarter; :func:`leadsheet_from_midi`
reads it back exactly, and reads any other General MIDI file by rule. Units are those of
:mod:`sepcore.data.leadsheet`: quarters, MIDI pitches, pitch classes (C = 0).

The file written
----------------
* **Conductor** (track 0, its name the title): tempo, time signature (``sheet.meter``),
  key signature, a text event ``piece <piece_id>``, a marker ``chord <root> <quality>`` (or
  ``chord <root> <quality>/<bass>``) at each chord's start, roots and basses as note names
  (``C``, ``Db``, ... ``B``), and a marker ``phrase <label>`` at each phrase's start.
* **Melody** (channel 0, ``melody_program``): the melody notes, velocity 90.
* **Chords** (channel 1, ``chord_program``): each chord's pitch classes as a block chord in
  MIDI 48..59 plus its bass (the root without a slash bass) an octave below, in 36..47,
  velocity 64, for the chord's length.

The same sheet gives identical bytes. Not carried: the collection (read back as
``files``), ``pickup`` (read back as 0; composed pieces have none) and ``extra``.

Reading any other General MIDI file (no chord markers)
------------------------------------------------------
* **Instruments** are the (track, channel) pairs that play notes, drums (channel 10) left
  out; a file without pitched notes raises :class:`~sepcore.errors.RenderError`.
* **Melody**: the top line of the instrument with the highest mean pitch (where notes
  share an onset the highest wins; each note is cut at the next onset).
* **Metre**: the first time signature (4/4 without one); the piece is as long as its last
  note's end, rounded up to whole bars. **Tempo**: the first tempo event (120 without one).
* **Key**: Krumhansl-Kessler profile correlation with the duration-weighted pitch classes
  of every pitched note, over the 24 major/minor keys, plus 0.1 for the key the file's
  key signature names and 0.05 for the melody's last note as tonic.
* **Form**: the songbook's rule for a piece of one section (4-bar phrases, 8-bar ones from
  16 bars on, labelled ``A``, ``B``... by melodic similarity).
* **Chords**: one per half bar in metres of four or more quarters with an even numerator,
  else one per bar, by the songbook's harmonisation rule over all pitched notes (melody
  included): the candidates are every root with ``maj``, ``min``, ``7`` and ``dim`` (the
  key's diatonic chords preferred) when the file has two or more pitched instruments,
  else the key's diatonic chords; each scores the share of the segment's duration-weighted
  notes it covers, less 0.6 times the share it leaves out (see
  :mod:`sepcore.data.songbook`, "Harmonisation"). ``chord_source`` is ``"analysis"``.
"""

from __future__ import annotations

import io
import math
import re
from collections.abc import Sequence

import mido
import numpy as np

from sepcore.data import songbook
from sepcore.data.gm import DRUM_CHANNEL
from sepcore.data.leadsheet import QUALITIES, Chord, LeadSheet, Note, Phrase
from sepcore.errors import RenderError

#: Ticks per quarter note of the files written.
TICKS_PER_BEAT = 480
#: Pitch-class names used in chord markers (read back: these, sharps and numbers 0..11).
PITCH_NAMES = ("C", "Db", "D", "Eb", "E", "F", "F#", "G", "Ab", "A", "Bb", "B")
MELODY_TRACK, CHORDS_TRACK = "Melody", "Chords"
MELODY_CHANNEL, CHORDS_CHANNEL = 0, 1
CHORD_LOW = 48  # chord tones in CHORD_LOW..CHORD_LOW+11, the bass an octave below
MELODY_VELOCITY, CHORD_VELOCITY = 90, 64
DEFAULT_BPM = 120.0
_MAJOR_KEYS = PITCH_NAMES  # names of the key signatures, as mido spells them
_MINOR_KEYS = ("Cm", "C#m", "Dm", "Ebm", "Em", "Fm", "F#m", "Gm", "G#m", "Am", "Bbm", "Bm")
_LETTERS = {"C": 0, "D": 2, "E": 4, "F": 5, "G": 7, "A": 9, "B": 11}
_CHORD_MARK = re.compile(r"^chord (\S+) (\S+?)(?:/(\S+))?$")


# ---------------------------------------------------------------- writing


def _tick(quarters: float) -> int:
    return round(quarters * TICKS_PER_BEAT)


def _track(
    name: str, events: list[tuple[int, int, mido.Message | mido.MetaMessage]], end: int
) -> mido.MidiTrack:
    """A track of ``(tick, order, message)`` events (sorted by tick, then order), ended at ``end``."""
    track = mido.MidiTrack([mido.MetaMessage("track_name", name=name, time=0)])
    now = 0
    for tick, _, msg in sorted(events, key=lambda e: (e[0], e[1])):
        track.append(msg.copy(time=tick - now))
        now = tick
    track.append(mido.MetaMessage("end_of_track", time=max(end, now) - now))
    return track


def _notes(
    channel: int, notes: Sequence[tuple[int, int, int, int]]
) -> list[tuple[int, int, mido.Message]]:
    """Note events of ``(on tick, off tick, pitch, velocity)``: at one tick offs come first."""
    events = []
    for on, off, pitch, velocity in notes:
        events.append(
            (
                on,
                128 + pitch,
                mido.Message("note_on", channel=channel, note=pitch, velocity=velocity),
            )
        )
        events.append(
            (off, pitch, mido.Message("note_off", channel=channel, note=pitch, velocity=0))
        )
    return events


def _chord_label(chord: Chord) -> str:
    bass = "" if chord.bass is None else f"/{PITCH_NAMES[chord.bass % 12]}"
    return f"chord {PITCH_NAMES[chord.root % 12]} {chord.quality}{bass}"


def chord_pitches(chord: Chord) -> list[int]:
    """The block chord: its pitch classes in 48..59 and the bass an octave below."""
    bass = chord.root if chord.bass is None else chord.bass
    return sorted({CHORD_LOW - 12 + bass % 12} | {CHORD_LOW + pc for pc in chord.pitch_classes()})


def leadsheet_to_midi(
    sheet: LeadSheet, tempo_bpm: float, melody_program: int = 0, chord_program: int = 0
) -> bytes:
    """``sheet`` as a type-1 General MIDI file (the layout in the module docstring).

    ``tempo_bpm`` in quarter notes per minute; the programs are General MIDI program
    numbers 0..127. Deterministic: the same arguments give identical bytes. Raises
    ``ValueError`` for a tempo, program or chord quality out of range.
    """
    if not 1 <= tempo_bpm <= 1000:
        raise ValueError(f"{sheet.piece_id}: tempo_bpm must be in 1..1000, got {tempo_bpm}")
    for what, program in (("melody_program", melody_program), ("chord_program", chord_program)):
        if not 0 <= program <= 127:
            raise ValueError(f"{sheet.piece_id}: {what} must be a GM program 0..127, got {program}")
    unknown = sorted({c.quality for c in sheet.chords} - set(QUALITIES))
    if unknown:
        raise ValueError(
            f"{sheet.piece_id}: unknown chord qualities {unknown}; known: {list(QUALITIES)}"
        )
    end = _tick(sheet.length)
    key = (_MINOR_KEYS if sheet.key_mode == "minor" else _MAJOR_KEYS)[sheet.key_tonic % 12]
    conductor: list[tuple[int, int, mido.Message | mido.MetaMessage]] = [
        (0, 0, mido.MetaMessage("set_tempo", tempo=mido.bpm2tempo(tempo_bpm))),
        (
            0,
            1,
            mido.MetaMessage(
                "time_signature", numerator=sheet.meter[0], denominator=sheet.meter[1]
            ),
        ),
        (0, 2, mido.MetaMessage("key_signature", key=key)),
        (0, 3, mido.MetaMessage("text", text=f"piece {sheet.piece_id}")),
    ]
    conductor += [
        (_tick(p.start), 4, mido.MetaMessage("marker", text=f"phrase {p.label}"))
        for p in sheet.phrases
    ]
    conductor += [
        (_tick(c.start), 5, mido.MetaMessage("marker", text=_chord_label(c))) for c in sheet.chords
    ]
    melody = [
        (_tick(n.start), _tick(n.start + n.length), n.pitch, MELODY_VELOCITY) for n in sheet.melody
    ]
    chords = [
        (_tick(c.start), _tick(c.start + c.length), pitch, CHORD_VELOCITY)
        for c in sheet.chords
        for pitch in chord_pitches(c)
    ]
    programs = [
        (0, -1, mido.Message("program_change", channel=MELODY_CHANNEL, program=melody_program)),
        (0, -1, mido.Message("program_change", channel=CHORDS_CHANNEL, program=chord_program)),
    ]
    midi = mido.MidiFile(type=1, ticks_per_beat=TICKS_PER_BEAT)
    midi.tracks.append(_track(sheet.title, conductor, end))
    midi.tracks.append(_track(MELODY_TRACK, [programs[0], *_notes(MELODY_CHANNEL, melody)], end))
    midi.tracks.append(_track(CHORDS_TRACK, [programs[1], *_notes(CHORDS_CHANNEL, chords)], end))
    buf = io.BytesIO()
    midi.save(file=buf)
    return buf.getvalue()


# ---------------------------------------------------------------- reading


def _pitch_class(name: str) -> int:
    """``"Eb"``, ``"F#"``, ``"C"`` or ``"3"`` -> 0..11; ValueError otherwise."""
    if name.isdigit() and int(name) < 12:
        return int(name)
    if not name or name[0] not in _LETTERS or any(a not in "#b" for a in name[1:]):
        raise ValueError(f"not a pitch class: {name!r}")
    return (_LETTERS[name[0]] + name.count("#") - name.count("b")) % 12


def _key_name(key: str) -> tuple[int, str]:
    """A MIDI key signature (``"Ebm"``) as ``(tonic pitch class, "major" | "minor")``."""
    minor = key.endswith("m")
    return _pitch_class(key[:-1] if minor else key), "minor" if minor else "major"


def _quarters(tick: int, tpb: int) -> float:
    return round(tick / tpb, 6)


def _absolute(track: mido.MidiTrack) -> list[tuple[int, mido.Message | mido.MetaMessage]]:
    out, now = [], 0
    for msg in track:
        now += msg.time
        out.append((now, msg))
    return out


def _instrument_notes(
    events: list[tuple[int, mido.Message | mido.MetaMessage]], tpb: int
) -> dict[int, list[tuple[float, int, float]]]:
    """Per channel, the ``(onset, pitch, length)`` notes (quarters) of one track; a note
    still sounding at a repeated note-on of its pitch ends there (a note never ended is dropped)."""
    sounding: dict[tuple[int, int], int] = {}
    notes: dict[int, list[tuple[float, int, float]]] = {}
    for tick, msg in events:
        if msg.type not in ("note_on", "note_off"):
            continue
        key = (msg.channel, msg.note)
        if key in sounding:
            on = sounding.pop(key)
            if tick > on:
                notes.setdefault(msg.channel, []).append(
                    (_quarters(on, tpb), msg.note, _quarters(tick - on, tpb))
                )
        if msg.type == "note_on" and msg.velocity > 0:
            sounding[key] = tick
    return notes


def _parse(data: bytes, name: str) -> mido.MidiFile:
    from sepcore.data.render import parse_midi

    midi = parse_midi(data, name)
    if midi.type == 2:
        raise RenderError(name, "is a type-2 MIDI file (independent songs); types 0 and 1 are read")
    return midi


def _meta(
    tracks: list[list[tuple[int, mido.Message | mido.MetaMessage]]], kind: str
) -> list[tuple[int, mido.MetaMessage]]:
    return sorted(
        ((t, m) for events in tracks for t, m in events if m.type == kind), key=lambda e: e[0]
    )


def leadsheet_from_midi(data: bytes, name: str) -> LeadSheet:
    """The lead sheet of a General MIDI file: exactly the sheet of a file written by
    :func:`leadsheet_to_midi` (but for what it does not carry), else one read by the rules
    of the module docstring. ``name`` (e.g. the file's URI) names the piece in errors, and
    is the piece id and title of a file that does not name them.

    Raises :class:`~sepcore.errors.RenderError` naming ``name`` for a file that is not
    MIDI, holds no pitched notes, or carries malformed chord markers.
    """
    midi = _parse(data, name)
    tracks = [_absolute(t) for t in midi.tracks]
    markers = [(t, m.text) for t, m in _meta(tracks, "marker")]
    if any(text.startswith("chord ") for _, text in markers):
        return _written_sheet(midi, tracks, markers, name)
    return _foreign_sheet(midi, tracks, name)


def _conductor_facts(
    tracks: list[list[tuple[int, mido.Message | mido.MetaMessage]]],
) -> tuple[tuple[int, int], float | None, tuple[int, str] | None]:
    """The first time signature ((4, 4) without one), tempo (bpm) and key signature."""
    signature = _meta(tracks, "time_signature")
    meter = (signature[0][1].numerator, signature[0][1].denominator) if signature else (4, 4)
    tempo = _meta(tracks, "set_tempo")
    bpm = round(float(mido.tempo2bpm(tempo[0][1].tempo)), 3) if tempo else None
    keys = _meta(tracks, "key_signature")
    return meter, bpm, _key_name(keys[0][1].key) if keys else None


def _written_sheet(
    midi: mido.MidiFile,
    tracks: list[list[tuple[int, mido.Message | mido.MetaMessage]]],
    markers: list[tuple[int, str]],
    name: str,
) -> LeadSheet:
    """The sheet of a file written by :func:`leadsheet_to_midi`."""
    tpb = midi.ticks_per_beat
    meter, bpm, key = _conductor_facts(tracks)
    length = _quarters(max((events[-1][0] for events in tracks if events), default=0), tpb)
    texts = [m.text for _, m in _meta(tracks, "text")]
    piece_id = next((t[len("piece ") :] for t in texts if t.startswith("piece ")), name)
    title = next((m.name for _, m in tracks[0] if m.type == "track_name"), "") if tracks else ""
    chords: list[Chord] = []
    chord_marks = [(t, text) for t, text in markers if text.startswith("chord ")]
    for k, (tick, text) in enumerate(chord_marks):
        found = _CHORD_MARK.match(text)
        try:
            if found is None or found.group(2) not in QUALITIES:
                raise ValueError("unknown quality")
            root = _pitch_class(found.group(1))
            bass = None if found.group(3) is None else _pitch_class(found.group(3))
        except ValueError as exc:
            raise RenderError(name, f"has a malformed chord marker {text!r} ({exc})") from exc
        start = _quarters(tick, tpb)
        stop = _quarters(chord_marks[k + 1][0], tpb) if k + 1 < len(chord_marks) else length
        chords.append(Chord(root, found.group(2), start, round(stop - start, 6), bass))
    phrase_marks = [
        (t, text[len("phrase ") :]) for t, text in markers if text.startswith("phrase ")
    ]
    phrases = [
        Phrase(
            label,
            _quarters(t, tpb),
            _quarters(phrase_marks[k + 1][0], tpb) if k + 1 < len(phrase_marks) else length,
        )
        for k, (t, label) in enumerate(phrase_marks)
    ]
    melody_track = next(
        (
            events
            for events in tracks
            if any(m.type == "track_name" and m.name == MELODY_TRACK for _, m in events)
        ),
        [],
    )
    melody = sorted(n for notes in _instrument_notes(melody_track, tpb).values() for n in notes)
    bar_quarters = 4.0 * meter[0] / meter[1]
    if not phrases:
        phrases = _form(tuple(Note(p, s, d) for s, p, d in melody), meter, bar_quarters, length)
    tonic, mode = key if key is not None else (chords[0].root, "major")
    return LeadSheet(
        piece_id=piece_id, collection=songbook.FILES, title=title, meter=meter, bar_quarters=bar_quarters,
        key_tonic=tonic, key_mode=mode, bpm=bpm, pickup=0.0, length=length,
        melody=tuple(Note(p, s, d) for s, p, d in melody), chords=tuple(chords), phrases=tuple(phrases),
        chord_source="score",
    )  # fmt: skip


def _form(
    melody: tuple[Note, ...], meter: tuple[int, int], bar_quarters: float, length: float
) -> list[Phrase]:
    """The phrases of a piece of one section (songbook's rule)."""
    return songbook._label(
        melody, songbook._phrase_spans(_timeline(melody, (), meter, bar_quarters, length))
    )


def _timeline(
    melody: tuple[Note, ...],
    notes: Sequence[tuple[float, int, float]],
    meter: tuple[int, int],
    bar_quarters: float,
    length: float,
) -> songbook._Timeline:
    bars = math.ceil(length / bar_quarters - 1e-6)
    spans = tuple(
        (round(b * bar_quarters, 6), round(min((b + 1) * bar_quarters, length), 6))
        for b in range(bars)
    )
    return songbook._Timeline(
        length=length, pickup=0.0, meter=meter, bar_quarters=bar_quarters, bars=spans,
        section_starts=(0.0,), melody=melody, notes=tuple(notes), symbols=(),
    )  # fmt: skip


def _key(
    notes: Sequence[tuple[float, int, float]],
    melody: Sequence[Note],
    declared: tuple[int, str] | None,
) -> tuple[int, str]:
    """``(tonic, mode)`` by the key rule of the module docstring."""
    histogram = np.zeros(12)
    for _, pitch, length in notes:
        histogram[pitch % 12] += length
    last = melody[-1].pitch % 12 if melody else None
    best: tuple[float, int, str] = (-np.inf, 0, "major")
    for mode, profile in (("major", songbook._MAJOR_PROFILE), ("minor", songbook._MINOR_PROFILE)):
        for tonic in range(12):
            with np.errstate(invalid="ignore", divide="ignore"):  # a flat histogram: no fit
                fit = float(np.nan_to_num(np.corrcoef(histogram, np.roll(profile, tonic))[0, 1]))
            fit += 0.1 * (declared == (tonic, mode)) + 0.05 * (tonic == last)
            if fit > best[0] + 1e-9:
                best = (fit, tonic, mode)
    return best[1], best[2]


def _foreign_sheet(
    midi: mido.MidiFile, tracks: list[list[tuple[int, mido.Message | mido.MetaMessage]]], name: str
) -> LeadSheet:
    """The sheet of any General MIDI file, by the rules of the module docstring."""
    tpb = midi.ticks_per_beat
    instruments = [
        notes
        for events in tracks
        for channel, notes in sorted(_instrument_notes(events, tpb).items())
        if channel != DRUM_CHANNEL and notes
    ]
    if not instruments:
        raise RenderError(name, "has no pitched notes (no notes, or drums only)")
    meter, bpm, declared = _conductor_facts(tracks)
    if meter[0] < 1 or meter[1] < 1:
        raise RenderError(name, f"has an unusable time signature {meter[0]}/{meter[1]}")
    bar_quarters = 4.0 * meter[0] / meter[1]
    every = sorted(n for notes in instruments for n in notes)
    end = max(onset + length for onset, _, length in every)
    length = round(max(1, math.ceil(end / bar_quarters - 1e-6)) * bar_quarters, 6)
    top = max(instruments, key=lambda notes: (sum(p for _, p, _ in notes) / len(notes), len(notes)))
    melody = songbook._top_line(sorted(top), length)
    tonic, mode = _key(every, melody, declared)
    phrases = _form(melody, meter, bar_quarters, length)
    timeline = _timeline(melody, every, meter, bar_quarters, length)
    chords = songbook._harmonise(
        timeline, tonic, mode, len(instruments) > 1, {round(p.end, 6) for p in phrases}
    )
    title = next((m.name for _, m in tracks[0] if m.type == "track_name"), "")
    return LeadSheet(
        piece_id=name, collection=songbook.FILES, title=title or name.rsplit("/", 1)[-1], meter=meter,
        bar_quarters=bar_quarters, key_tonic=tonic, key_mode=mode, bpm=bpm if bpm is not None else DEFAULT_BPM,
        pickup=0.0, length=length, melody=melody, chords=chords, phrases=tuple(phrases),
        chord_source="analysis",
    )  # fmt: skip
