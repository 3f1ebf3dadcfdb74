"""Small MIDI files built in code, for tests of the renderer and readers."""

from __future__ import annotations

import io

import mido

from sepcore.data import gm

#: (program, channel, lowest pitch) per instrument of :func:`multitrack_midi`.
DEFAULT_PARTS = ((0, 0, 60), (33, 1, 36), (24, 2, 55), (0, gm.DRUM_CHANNEL, 36))


def multitrack_midi(
    seconds: float = 4.0,
    parts: tuple[tuple[int, int, int], ...] = DEFAULT_PARTS,
    bpm: float = 120.0,
    empty_tracks: int = 1,
    type0: bool = False,
) -> bytes:
    """A MIDI file whose tracks each play eighth notes on one channel.

    ``parts`` are ``(program, channel, lowest_pitch)``; ``empty_tracks`` extra tracks
    carry a name and a program change but no notes (they must not become stems).
    With ``type0`` every part goes into one track (a type-0 file).
    """
    tpb = 480
    mid = mido.MidiFile(type=0 if type0 else 1, ticks_per_beat=tpb)
    conductor = mido.MidiTrack([mido.MetaMessage("set_tempo", tempo=mido.bpm2tempo(bpm))])
    eighths = int(seconds * bpm / 60 * 2)
    tracks = []
    for program, channel, low in parts:
        events = [(0, mido.Message("program_change", channel=channel, program=program))]
        for i in range(eighths):
            pitch = low + (i * 5) % 12
            events.append((i * tpb // 2, mido.Message("note_on", channel=channel, note=pitch, velocity=90)))
            events.append((i * tpb // 2 + tpb // 2 - 10, mido.Message("note_off", channel=channel, note=pitch)))
        tracks.append(events)
    if type0:
        merged = [e for t in tracks for e in t]
        tracks = [merged]
    for events in tracks:
        conductor_part = conductor if type0 else mido.MidiTrack()
        last = 0
        for when, msg in sorted(events, key=lambda e: e[0]):
            conductor_part.append(msg.copy(time=when - last))
            last = when
        if not type0:
            mid.tracks.append(conductor_part)
    if type0:
        mid.tracks.append(conductor)
    else:
        mid.tracks.insert(0, conductor)
        for k in range(empty_tracks):
            mid.tracks.append(
                mido.MidiTrack(
                    [mido.MetaMessage("track_name", name=f"empty {k}"), mido.Message("program_change", channel=5, program=40)]
                )
            )
    buf = io.BytesIO()
    mid.save(file=buf)
    return buf.getvalue()
