"""General MIDI programs, their names and the instrument classes Slakh assigns them.

Slakh's ``inst_class`` is the General MIDI family of the stem's program (groups of
eight programs), with ``Drums`` for channel-10 parts. Classes used as separation
targets elsewhere in the system (``Piano``, ``Guitar``, ``Bass``, ``Strings``,
``Drums``) are spelled exactly as here.
"""

from __future__ import annotations

from collections.abc import Sequence

DRUM_CHANNEL = 9  # zero-based MIDI channel 10
DRUMS = "Drums"

FAMILIES = (
    "Piano",
    "Chromatic Percussion",
    "Organ",
    "Guitar",
    "Bass",
    "Strings",
    "Strings (continued)",
    "Brass",
    "Reed",
    "Pipe",
    "Synth Lead",
    "Synth Pad",
    "Synth Effects",
    "Ethnic",
    "Percussive",
    "Sound Effects",
)

CLASSES = (*FAMILIES, DRUMS)

PROGRAM_NAMES = (
    "Acoustic Grand Piano", "Bright Acoustic Piano", "Electric Grand Piano", "Honky-tonk Piano",
    "Electric Piano 1", "Electric Piano 2", "Harpsichord", "Clavinet",
    "Celesta", "Glockenspiel", "Music Box", "Vibraphone",
    "Marimba", "Xylophone", "Tubular Bells", "Dulcimer",
    "Drawbar Organ", "Percussive Organ", "Rock Organ", "Church Organ",
    "Reed Organ", "Accordion", "Harmonica", "Tango Accordion",
    "Acoustic Guitar (nylon)", "Acoustic Guitar (steel)", "Electric Guitar (jazz)",
    "Electric Guitar (clean)", "Electric Guitar (muted)", "Overdriven Guitar",
    "Distortion Guitar", "Guitar Harmonics",
    "Acoustic Bass", "Electric Bass (finger)", "Electric Bass (pick)", "Fretless Bass",
    "Slap Bass 1", "Slap Bass 2", "Synth Bass 1", "Synth Bass 2",
    "Violin", "Viola", "Cello", "Contrabass",
    "Tremolo Strings", "Pizzicato Strings", "Orchestral Harp", "Timpani",
    "String Ensemble 1", "String Ensemble 2", "Synth Strings 1", "Synth Strings 2",
    "Choir Aahs", "Voice Oohs", "Synth Voice", "Orchestra Hit",
    "Trumpet", "Trombone", "Tuba", "Muted Trumpet",
    "French Horn", "Brass Section", "Synth Brass 1", "Synth Brass 2",
    "Soprano Sax", "Alto Sax", "Tenor Sax", "Baritone Sax",
    "Oboe", "English Horn", "Bassoon", "Clarinet",
    "Piccolo", "Flute", "Recorder", "Pan Flute",
    "Blown Bottle", "Shakuhachi", "Whistle", "Ocarina",
    "Lead 1 (square)", "Lead 2 (sawtooth)", "Lead 3 (calliope)", "Lead 4 (chiff)",
    "Lead 5 (charang)", "Lead 6 (voice)", "Lead 7 (fifths)", "Lead 8 (bass + lead)",
    "Pad 1 (new age)", "Pad 2 (warm)", "Pad 3 (polysynth)", "Pad 4 (choir)",
    "Pad 5 (bowed)", "Pad 6 (metallic)", "Pad 7 (halo)", "Pad 8 (sweep)",
    "FX 1 (rain)", "FX 2 (soundtrack)", "FX 3 (crystal)", "FX 4 (atmosphere)",
    "FX 5 (brightness)", "FX 6 (goblins)", "FX 7 (echoes)", "FX 8 (sci-fi)",
    "Sitar", "Banjo", "Shamisen", "Koto",
    "Kalimba", "Bagpipe", "Fiddle", "Shanai",
    "Tinkle Bell", "Agogo", "Steel Drums", "Woodblock",
    "Taiko Drum", "Melodic Tom", "Synth Drum", "Reverse Cymbal",
    "Guitar Fret Noise", "Breath Noise", "Seashore", "Bird Tweet",
    "Telephone Ring", "Helicopter", "Applause", "Gunshot",
)  # fmt: skip

assert len(PROGRAM_NAMES) == 128


def _check_program(program: int) -> None:
    if not 0 <= program <= 127:
        raise ValueError(f"General MIDI program must be 0..127, got {program}")


def inst_class(program: int, is_drum: bool = False) -> str:
    """Slakh's instrument class of a General MIDI program (0-based)."""
    if is_drum:
        return DRUMS
    _check_program(program)
    return FAMILIES[program // 8]


def program_name(program: int, is_drum: bool = False) -> str:
    """The General MIDI name of a program (0-based); ``Drums`` for drum parts."""
    if is_drum:
        return DRUMS
    _check_program(program)
    return PROGRAM_NAMES[program]


def untangle(notes: Sequence[tuple[int, int, int, int]], end: int) -> list[tuple[int, int, int, int]]:
    """``(pitch, on, off, velocity)`` notes (ticks) cut at ``end``, same-pitch overlaps
    shortened, empty notes dropped: what one MIDI channel can play."""
    by_pitch: dict[int, list[tuple[int, int, int, int]]] = {}
    for note in sorted(n for n in notes if n[1] < end):
        by_pitch.setdefault(note[0], []).append(note)
    out = []
    for same in by_pitch.values():
        for i, (pitch, on, off, velocity) in enumerate(same):
            stop = min(off, end, same[i + 1][1] if i + 1 < len(same) else end)
            if stop > on:
                out.append((pitch, on, stop, velocity))
    return out
