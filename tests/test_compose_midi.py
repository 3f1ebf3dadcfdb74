"""Lead sheets as General MIDI: exact round trip, determinism, foreign files by rule, errors."""

from __future__ import annotations

import dataclasses
import io
import random

import mido
import pytest

from sepcore.compose.midi import leadsheet_from_midi, leadsheet_to_midi
from sepcore.compose.pianoroll import piano_roll_png
from sepcore.data import arranger
from sepcore.data.leadsheet import QUALITIES, Chord, LeadSheet, Note, Phrase
from sepcore.errors import RenderError

_BLUES = ((0, "7"), (5, "7"), (0, "7"), (0, "7"), (5, "7"), (5, "7"), (0, "7"), (0, "7"),
          (7, "7"), (5, "7"), (0, "maj"), (7, "7"))  # fmt: skip
_LICK = ((60, 0.0, 1.0), (63, 1.0, 0.5), (64, 1.5, 0.5), (67, 2.0, 1.25), (70, 3.25, 0.75))


def blues_sheet(piece_id: str = "blues-1", transpose: int = 0) -> LeadSheet:
    """A 12-bar blues in C (4/4, 48 quarters): a chord per bar, one bar a slash chord and
    one bar two chords, and a lick on a sixteenth grid in every bar but the last."""
    chords, melody = [], []
    for bar, (root, quality) in enumerate(_BLUES):
        start = 4.0 * bar
        if bar == 11:
            chords += [Chord(root, quality, start, 2.0), Chord(2, "min7", start + 2, 2.0, bass=5)]
            continue
        chords.append(Chord(root, quality, start, 4.0, bass=4 if bar == 10 else None))
        melody += [
            Note(p + transpose + (root if bar % 4 == 1 else 0), start + s, d) for p, s, d in _LICK
        ]
    return LeadSheet(
        piece_id=piece_id, collection="files", title=f"Blues {piece_id}", meter=(4, 4), bar_quarters=4.0,
        key_tonic=0, key_mode="major", bpm=150.0, pickup=0.0, length=48.0, melody=tuple(melody),
        chords=tuple(chords), phrases=(Phrase("A", 0.0, 16.0), Phrase("B", 16.0, 32.0), Phrase("C", 32.0, 48.0)),
    )  # fmt: skip


def test_a_lead_sheet_round_trips_exactly_through_midi() -> None:
    sheet = blues_sheet()
    data = leadsheet_to_midi(sheet, 150.0, melody_program=65, chord_program=4)
    assert data == leadsheet_to_midi(sheet, 150.0, melody_program=65, chord_program=4)
    back = leadsheet_from_midi(data, "file:///x/blues.mid")
    assert back == sheet  # every field, the collection and bpm included
    midi = mido.MidiFile(file=io.BytesIO(data))
    assert midi.type == 1 and midi.ticks_per_beat == 480 and len(midi.tracks) == 3
    assert [t.name for t in midi.tracks] == ["Blues blues-1", "Melody", "Chords"]
    markers = [m.text for m in midi.tracks[0] if m.type == "marker" and m.text.startswith("chord")]
    assert markers[:2] == ["chord C 7", "chord F 7"] and markers[-3:] == [
        "chord C maj/E",
        "chord G 7",
        "chord D min7/F",
    ]
    programs = {m.channel: m.program for t in midi.tracks for m in t if m.type == "program_change"}
    assert programs == {0: 65, 1: 4}
    chord_notes = {m.note for m in midi.tracks[2] if m.type == "note_on"}
    assert all(36 <= n <= 59 for n in chord_notes) and 36 in chord_notes and 40 in chord_notes


@pytest.mark.parametrize("seed", range(6))
def test_random_sheets_on_a_sixteenth_grid_round_trip(seed: int) -> None:
    rng = random.Random(seed)
    meter = rng.choice([(4, 4), (3, 4), (6, 8), (2, 2), (5, 4)])
    bar = 4.0 * meter[0] / meter[1]
    length = bar * rng.randint(4, 9)
    melody, now = [], 0.0
    while now < length:
        step = 0.25 * rng.randint(1, 8)
        if rng.random() < 0.8:  # else a rest
            melody.append(Note(rng.randint(40, 96), now, min(step, length - now)))
        now += step
    cuts = sorted(
        {0.0, *(0.25 * rng.randrange(1, int(4 * length)) for _ in range(rng.randint(0, 8)))}
    )
    chords = tuple(
        Chord(
            rng.randrange(12),
            rng.choice(list(QUALITIES)),
            a,
            b - a,
            rng.choice([None, rng.randrange(12)]),
        )
        for a, b in zip(cuts, [*cuts[1:], length], strict=True)
    )
    sheet = LeadSheet(
        piece_id=f"random #{seed}", collection="files", title=f"R{seed}" if seed % 2 else "", meter=meter,
        bar_quarters=bar, key_tonic=rng.randrange(12), key_mode=rng.choice(["major", "minor"]), bpm=97.5,
        pickup=0.0, length=length, melody=tuple(melody), chords=chords, phrases=(Phrase("A", 0.0, length),),
    )  # fmt: skip
    assert leadsheet_from_midi(leadsheet_to_midi(sheet, 97.5), "r.mid") == sheet


def test_a_sheet_without_phrases_gets_them_by_rule() -> None:
    sheet = dataclasses.replace(blues_sheet(), phrases=())
    data = leadsheet_to_midi(sheet, 120.0)
    back = leadsheet_from_midi(data, "x")
    assert back.bpm == 120.0 and back.length == 48.0
    assert [(p.start, p.end) for p in back.phrases] == [(0.0, 16.0), (16.0, 32.0), (32.0, 48.0)]


def _foreign(drums_only: bool = False) -> bytes:
    """Three instruments, no markers: a high line, a bass an octave down and drums."""
    midi = mido.MidiFile(type=1, ticks_per_beat=96)
    conductor = mido.MidiTrack([mido.MetaMessage("track_name", name="Tune"),
                                mido.MetaMessage("time_signature", numerator=3, denominator=4)])  # fmt: skip
    midi.tracks.append(conductor)
    parts = (
        [(9, [36, 38, 36, 38])]
        if drums_only
        else [(0, [72, 76, 79, 77, 74, 71, 72, 72]), (1, [48, 43, 48, 43]), (9, [36] * 4)]
    )
    for channel, pitches in parts:
        track = mido.MidiTrack()
        step = 96 * 3 * 4 // len(pitches)  # four bars of 3/4
        for pitch in pitches:
            track.append(mido.Message("note_on", channel=channel, note=pitch, velocity=80, time=0))
            track.append(
                mido.Message("note_off", channel=channel, note=pitch, velocity=0, time=step)
            )
        midi.tracks.append(track)
    buf = io.BytesIO()
    midi.save(file=buf)
    return buf.getvalue()


def test_any_general_midi_file_is_read_by_rule() -> None:
    sheet = leadsheet_from_midi(_foreign(), "s3://b/tune.mid")
    assert (
        sheet.piece_id == "s3://b/tune.mid"
        and sheet.title == "Tune"
        and sheet.collection == "files"
    )
    assert (
        sheet.meter == (3, 4)
        and sheet.bar_quarters == 3.0
        and sheet.length == 12.0
        and sheet.bpm == 120.0
    )
    assert [n.pitch for n in sheet.melody] == [72, 76, 79, 77, 74, 71, 72, 72]
    assert [(n.start, n.length) for n in sheet.melody[:2]] == [(0.0, 1.5), (1.5, 1.5)]
    assert sheet.chord_source == "analysis" and (sheet.key_tonic, sheet.key_mode) == (0, "major")
    assert sheet.chords[0].start == 0 and sum(c.length for c in sheet.chords) == 12.0
    assert (sheet.chords[0].root, sheet.chords[0].quality) == (0, "maj")
    assert all(c.quality in ("maj", "min", "7", "dim") for c in sheet.chords)
    assert sheet.phrases == (Phrase("A", 0.0, 12.0),)
    assert arranger.arrange(sheet, "waltz", 0, 10.0).style == "waltz"  # the band can play it


@pytest.mark.parametrize(("data", "problem"), [(b"MThd garbage", "not a readable MIDI file"),
                                               (None, "no pitched notes")])  # fmt: skip
def test_bad_or_drum_only_files_raise_naming_the_file(data: bytes | None, problem: str) -> None:
    with pytest.raises(RenderError, match=problem) as info:
        leadsheet_from_midi(data if data is not None else _foreign(drums_only=True), "bad.mid")
    assert "bad.mid" in str(info.value)


def test_piano_roll_is_a_png_about_1000_px_wide() -> None:
    import struct

    png = piano_roll_png(blues_sheet(), "Blues 1")
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    width, height = struct.unpack(">II", png[16:24])
    assert 900 <= width <= 1100 and 250 <= height <= 600
