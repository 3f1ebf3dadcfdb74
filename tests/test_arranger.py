"""The band arranger: determinism, valid General MIDI per style, form, length, part shares."""

from __future__ import annotations

import dataclasses
import io
from collections import Counter

import mido
import pytest

from sepcore.data import gm
from sepcore.data.arranger import ROLES, SECTION_NAMES, arrange, midi_bytes, program_range
from sepcore.data.leadsheet import Chord, LeadSheet, Note, Phrase
from sepcore.data.styles import STYLES, metre_kind, styles_for


def _sheet(meter: tuple[int, int], bars: int = 16, pickup: float = 0.0) -> LeadSheet:
    """A tune of ``bars`` bars over I-vi-IV-V in C, two phrases A B, quarter-note melody."""
    num, den = meter
    bq = num * 4 / den
    prog = ((0, "maj"), (9, "min7"), (5, "maj"), (7, "7"))
    length = pickup + bars * bq
    chords = [Chord(0, "maj", 0.0, pickup)] if pickup else []
    chords += [
        Chord(root, quality, pickup + b * bq, bq)
        for b, (root, quality) in ((b, prog[b % 4]) for b in range(bars))
    ]
    scale = (60, 62, 64, 65, 67, 69, 71, 72)
    melody, t, i = [], 0.0, 0
    while t < length - 1e-9:
        step = min(1.0, length - t)
        melody.append(Note(scale[i % 8] + (12 if i % 11 == 5 else 0), t, step))
        t, i = t + step, i + 1
    half = pickup + (bars // 2) * bq
    return LeadSheet(
        piece_id=f"test/tune_{num}_{den}.abc",
        collection="test",
        title=f"Tune in {num}/{den}",
        meter=meter,
        bar_quarters=bq,
        key_tonic=0,
        key_mode="major",
        bpm=None,
        pickup=pickup,
        length=length,
        melody=tuple(melody),
        chords=tuple(chords),
        phrases=(Phrase("A", pickup, half), Phrase("B", half, length)),
    )


FOUR = _sheet((4, 4))
THREE = _sheet((3, 4))
SIX = _sheet((6, 8), pickup=1.0)


def _suitable(style: str) -> LeadSheet:
    kinds = STYLES[style].grooves
    return FOUR if "duple" in kinds else THREE if "triple" in kinds else SIX


def _programs(midi: mido.MidiFile) -> list[tuple[int, int]]:
    """(channel, program) of each instrument track's program change."""
    out = []
    for track in midi.tracks[1:]:
        changes = [m for m in track if m.type == "program_change"]
        assert len(changes) == 1
        out.append((changes[0].channel, changes[0].program))
    return out


def _check_notes(midi: mido.MidiFile, ranges: dict[int, tuple[int, int]]) -> int:
    """Assert every track's notes are valid; return the number of notes."""
    count = 0
    for track in midi.tracks[1:]:
        assert track[-1].type == "end_of_track"
        sounding: dict[tuple[int, int], int] = {}
        channels = {m.channel for m in track if not m.is_meta}
        assert len(channels) == 1
        lo, hi = ranges[channels.pop()]
        for message in track:
            assert message.time >= 0
            if message.type == "note_on" and message.velocity > 0:
                key = (message.channel, message.note)
                assert key not in sounding, f"overlapping note {key}"
                assert lo <= message.note <= hi and 1 <= message.velocity <= 127
                sounding[key] = 1
                count += 1
            elif message.type in ("note_on", "note_off"):
                assert sounding.pop((message.channel, message.note), None) is not None
        assert not sounding, "note_on without note_off"
    return count


def test_same_seed_same_bytes_other_seed_differs():
    a, b = arrange(FOUR, "rock", seed=7), arrange(FOUR, "rock", seed=7)
    assert midi_bytes(a) == midi_bytes(b)
    assert midi_bytes(arrange(FOUR, "rock", seed=8)) != midi_bytes(a)


@pytest.mark.parametrize("style", sorted(STYLES))
def test_every_style_writes_the_general_midi_it_claims(style):
    sheet = _suitable(style)
    for seed in range(3):
        song = arrange(sheet, style, seed=seed, seconds=60.0)
        midi = mido.MidiFile(file=io.BytesIO(midi_bytes(song)))
        assert midi.type == 1 and len(midi.tracks) == len(song.parts) + 1
        conductor = {m.type for m in midi.tracks[0]}
        assert {"set_tempo", "time_signature", "key_signature"} <= conductor
        assert len(song.parts) >= 3
        for part, (channel, program) in zip(song.parts, _programs(midi), strict=True):
            assert (channel, program) == (part.channel, part.program)
            assert gm.inst_class(program, channel == gm.DRUM_CHANNEL) == part.inst_class
            assert part.is_drum == (channel == gm.DRUM_CHANNEL) == (part.role == "drums")
        assert len({p.channel for p in song.parts}) == len(song.parts)
        ranges = {
            p.channel: (27, 87) if p.is_drum else program_range(p.program) for p in song.parts
        }
        assert _check_notes(midi, ranges) > 0
        assert abs(song.seconds - 60.0) <= 6.0
        assert abs(midi.length - song.seconds) < 0.01
        assert song.sections[0].start_s == 0.0 and song.sections[-1].end_s == song.seconds
        for before, after in zip(song.sections, song.sections[1:], strict=False):
            assert before.end_s == after.start_s > before.start_s
        names = [s.name for s in song.sections]
        assert set(names) <= set(SECTION_NAMES)
        assert names[0] == "intro" and names[-1] == "outro" and "chorus" in names
        assert song.lead in {p.name for p in song.parts if p.role not in ("drums", "bass")}


def test_every_part_plays():
    for seed in range(10):
        song = arrange(FOUR, "funk", seed=seed)
        for track in song.midi.tracks[1:]:
            assert any(m.type == "note_on" for m in track), track.name


@pytest.mark.parametrize("seconds", [30.0, 60.0, 120.0])
def test_length_within_ten_percent(seconds):
    for style in ("ballad", "swing", "waltz"):
        for seed in range(4):
            song = arrange(_suitable(style), style, seed=seed, seconds=seconds)
            assert abs(song.seconds - seconds) <= 0.1 * seconds


def test_part_shares_and_variety_over_seeds():
    songs = [arrange(FOUR, "rock", seed=seed) for seed in range(40)]
    held = Counter(role for s in songs for role in {p.role for p in s.parts})
    bands = {
        "drums": (0.65, 1.0),
        "bass": (0.7, 1.0),
        "guitar": (0.5, 0.95),
        "piano": (0.45, 0.9),
        "strings": (0.12, 0.6),
        "other": (0.35, 0.85),
    }
    for role in ROLES:
        lo, hi = bands[role]
        assert lo <= held[role] / len(songs) <= hi, (role, held[role])
    assert len({tuple(p.program for p in s.parts) for s in songs}) >= 30
    assert len({s.transpose for s in songs}) >= 6 and len({s.tempo_bpm for s in songs}) >= 30


def test_metre_decides_the_styles():
    assert metre_kind((3, 4)) == "triple" and metre_kind((6, 8)) == "compound"
    assert set(styles_for((3, 4))) == {"ballad", "waltz", "country"}
    assert "rock" not in styles_for((6, 8)) and "waltz" not in styles_for((4, 4))
    for style in sorted(STYLES):
        if style in styles_for(THREE.meter):
            song = arrange(THREE, style, seed=1)
            signature = next(m for m in song.midi.tracks[0] if m.type == "time_signature")
            assert (signature.numerator, signature.denominator) == (3, 4)
        else:
            with pytest.raises(ValueError, match="tune_3_4"):
                arrange(THREE, style, seed=1)


def test_pickup_and_compound_metre():
    song = arrange(SIX, "ballad", seed=3, seconds=45.0)
    assert abs(song.seconds - 45.0) <= 4.5
    signature = next(m for m in song.midi.tracks[0] if m.type == "time_signature")
    assert (signature.numerator, signature.denominator, signature.clocks_per_click) == (6, 8, 36)


def test_unknown_style_names_the_piece():
    with pytest.raises(ValueError, match="tune_4_4.*disco"):
        arrange(FOUR, "disco", seed=0)


_SYMBOLS = {
    "bass": set("R35678awg-."),
    "comp": set("xXcbfpqm1234-."),
    "drums": set("Xxo."),
}


def test_style_patterns_fit_their_metre():
    cycles = {"duple": {16, 32}, "triple": {12, 24}, "compound": {12, 24}}
    assert len(STYLES) >= 8
    for style in STYLES.values():
        assert set(style.programs) == {"guitar", "bass", "piano", "strings", "other"}
        for kind, groove in style.grooves.items():
            lo, hi = groove.tempo
            assert 30 <= lo < hi <= 240, (style.name, kind)
            comps = (*groove.guitar, *groove.piano, *groove.pad, *groove.stab, *groove.arp)
            for pattern in (*groove.bass, *comps):
                assert len(pattern) in cycles[kind], (style.name, kind, pattern)
                assert pattern[0] != "-", (style.name, pattern)
            assert all(set(p) <= _SYMBOLS["bass"] for p in groove.bass), style.name
            assert all(set(p) <= _SYMBOLS["comp"] for p in comps), style.name
            for kit in groove.drums:
                for note, line in kit:
                    assert 35 <= note <= 81 and len(line) in cycles[kind], (style.name, note)
                    assert set(line) <= _SYMBOLS["drums"], (style.name, note)


def test_a_tune_without_melody_is_accompanied_by_every_part():
    silent = dataclasses.replace(FOUR, melody=())
    for seed in range(5):
        song = arrange(silent, "latin", seed=seed)
        assert song.lead == ""
        for track in song.midi.tracks[1:]:
            assert any(m.type == "note_on" for m in track), track.name


def test_minor_key_is_signed_transposed():
    minor = dataclasses.replace(FOUR, key_tonic=9, key_mode="minor")
    song = arrange(minor, "blues", seed=4)
    key = next(m for m in song.midi.tracks[0] if m.type == "key_signature").key
    names = ("Cm", "C#m", "Dm", "Ebm", "Em", "Fm", "F#m", "Gm", "G#m", "Am", "Bbm", "Bm")
    assert key == names[(9 + song.transpose) % 12]


def test_required_roles_are_always_played() -> None:
    sheet = FOUR
    for seed in range(12):
        arr = arrange(sheet, "rock", seed, 30.0, require=("guitar", "strings"))
        assert {"guitar", "strings"} <= {p.role for p in arr.parts}
    with pytest.raises(ValueError, match="unknown roles"):
        arrange(sheet, "rock", 0, 30.0, require=("kazoo",))
