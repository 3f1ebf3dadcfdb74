"""A piano roll of a lead sheet: melody notes, chord tones, bar lines and chord names.

Time runs left to right in quarters from the start of the piece; pitch (MIDI number) bottom
to top. Melody notes are dark bars, chord tones lighter bars voiced as
:mod:`sepcore.compose.midi` writes them (pitch classes in 48..59, the bass an octave
below), bar lines grey, each chord's name above its start.
"""

from __future__ import annotations

from typing import Any

from sepcore.compose.midi import PITCH_NAMES, chord_pitches
from sepcore.data.leadsheet import LeadSheet
from sepcore.report.html import figure_png, new_figure

#: Short names of the chord qualities shown above the bars.
_SHOWN = {
    "maj": "",
    "min": "m",
    "dim": "°",
    "aug": "+",
    "min7": "m7",
    "min6": "m6",
    "m7b5": "ø7",
    "dim7": "°7",
}


def chord_name(root: int, quality: str, bass: int | None = None) -> str:
    """``"C7"``, ``"Ebm"``, ``"F/A"``: a chord symbol as lead sheets print it."""
    slash = "" if bass is None else f"/{PITCH_NAMES[bass % 12]}"
    return f"{PITCH_NAMES[root % 12]}{_SHOWN.get(quality, quality)}{slash}"


def piano_roll_figure(sheet: LeadSheet, title: str) -> Any:
    """The piano roll of ``sheet`` as a matplotlib Figure of 10 x 4 inches."""
    fig = new_figure(10, 4)
    ax = fig.add_subplot(1, 1, 1)
    for chord in sheet.chords:
        for pitch in chord_pitches(chord):
            ax.broken_barh(
                [(chord.start, chord.length)], (pitch - 0.4, 0.8), color="#9ecae1", alpha=0.7
            )
    for note in sheet.melody:
        ax.broken_barh([(note.start, note.length)], (note.pitch - 0.4, 0.8), color="#08306b")
    pitches = [n.pitch for n in sheet.melody] + [p for c in sheet.chords for p in chord_pitches(c)]
    low, high = (min(pitches) - 2, max(pitches) + 5) if pitches else (36, 84)
    bar = sheet.pickup
    while bar <= sheet.length + 1e-6:
        ax.axvline(bar, color="0.6", linewidth=0.6)
        bar += sheet.bar_quarters
    for chord in sheet.chords:
        ax.text(chord.start + 0.1, high - 1, chord_name(chord.root, chord.quality, chord.bass),
                fontsize=8, va="top", ha="left")  # fmt: skip
    ax.set_xlim(0, max(sheet.length, 1e-3))
    ax.set_ylim(low, high)
    ax.set_xlabel("time (quarter notes)")
    ax.set_ylabel("MIDI pitch")
    ax.set_title(title, fontsize=10)
    fig.tight_layout()
    return fig


def piano_roll_png(sheet: LeadSheet, title: str) -> bytes:
    """PNG bytes (1000 x 400 px) of :func:`piano_roll_figure`."""
    return figure_png(piano_roll_figure(sheet, title))
