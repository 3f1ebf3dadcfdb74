"""In-process FluidSynth: one single-instrument MIDI file -> float32 audio.

A small ctypes binding of Debian's ``libfluidsynth3`` (no Python dependency). Each
process keeps one loaded SoundFont per (path, sample rate), loaded on first use
(:func:`get_synth`), so a Ray worker pays the SoundFont load once for many stems.
Reverb and chorus are off (dry stems, as Slakh). Every stem plays on a new synthesizer
sharing the loaded font, so it starts clean. Fonts are loaded whole: the four training
fonts take about 0.5 GB per process, MuseScore's another 0.5 GB (and 3 s to decode).

Audio shape: ``(channels, samples)`` float32 with ``channels == 2``.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import threading
from dataclasses import dataclass

import mido
import numpy as np

from sepcore.data import gm
from sepcore.errors import RenderError

#: Master gain of every synth; chosen so a dense stem rarely exceeds full scale.
GAIN = 0.5
POLYPHONY = 256
#: MIDI's tempo before the first set_tempo event (microseconds per beat: 120 bpm).
DEFAULT_TEMPO = 500_000
#: The GM drum bank of SoundFonts (FluidSynth selects it on channel 9 in GM mode).
DRUM_BANK = 128
_LIBRARY = "libfluidsynth.so.3"
_FAILED = -1
_LOCK = threading.Lock()
_SYNTHS: dict[tuple[str, int], Synth] = {}

_p = ctypes.c_void_p
_i = ctypes.c_int
_SIGNATURES: dict[str, tuple[type | None, list[type]]] = {
    "new_fluid_settings": (_p, []),
    "delete_fluid_settings": (None, [_p]),
    "fluid_settings_setnum": (_i, [_p, ctypes.c_char_p, ctypes.c_double]),
    "fluid_settings_setint": (_i, [_p, ctypes.c_char_p, _i]),
    "fluid_settings_setstr": (_i, [_p, ctypes.c_char_p, ctypes.c_char_p]),
    "new_fluid_synth": (_p, [_p]),
    "delete_fluid_synth": (None, [_p]),
    "fluid_synth_sfload": (_i, [_p, ctypes.c_char_p, _i]),
    "fluid_synth_program_select": (_i, [_p, _i, _i, _i, _i]),
    "fluid_synth_noteon": (_i, [_p, _i, _i, _i]),
    "fluid_synth_noteoff": (_i, [_p, _i, _i]),
    "fluid_synth_cc": (_i, [_p, _i, _i, _i]),
    "fluid_synth_pitch_bend": (_i, [_p, _i, _i]),
    "fluid_synth_channel_pressure": (_i, [_p, _i, _i]),
    "fluid_synth_key_pressure": (_i, [_p, _i, _i, _i]),
    "fluid_synth_get_sfont_by_id": (_p, [_p, _i]),
    "fluid_synth_add_sfont": (_i, [_p, _p]),
    "fluid_synth_remove_sfont": (_i, [_p, _p]),
    "fluid_synth_write_float": (_i, [_p, _i, _p, _i, _i, _p, _i, _i]),
    "fluid_set_log_function": (_p, [_i, _p, _p]),
}


def _load_library() -> ctypes.CDLL:
    path = ctypes.util.find_library("fluidsynth") or _LIBRARY
    try:
        lib = ctypes.CDLL(path)
    except OSError as exc:
        raise RenderError(
            "libfluidsynth",
            f"cannot load {path} ({exc}); install the Debian package libfluidsynth3",
        ) from exc
    for name, (restype, argtypes) in _SIGNATURES.items():
        fn = getattr(lib, name)
        fn.restype, fn.argtypes = restype, argtypes
    for level in range(4):  # panic, error, warning, info: our errors say what failed
        lib.fluid_set_log_function(level, None, None)
    return lib


_LIB: ctypes.CDLL | None = None


def _lib() -> ctypes.CDLL:
    global _LIB
    if _LIB is None:
        _LIB = _load_library()
    return _LIB


@dataclass(frozen=True, order=True)
class Program:
    """A patch: GM ``program`` (0-127) in ``bank`` (0 melodic, 128 drum kits)."""

    bank: int
    program: int


class Synth:
    """One SoundFont loaded by FluidSynth for one sample rate.

    The font is loaded once, by a synthesizer that only holds it; every :meth:`render`
    plays on a new synthesizer sharing that font (about half a millisecond to make), so
    a stem's audio never depends on what was played before (FluidSynth's resets leave
    voice state behind) and reverb and chorus stay off.
    """

    def __init__(self, soundfont: str, sample_rate: int):
        if not os.path.isfile(soundfont):
            raise RenderError(soundfont, "SoundFont not found")
        lib = _lib()
        self.soundfont, self.sample_rate = soundfont, sample_rate
        self._settings = lib.new_fluid_settings()
        for key, value in (("synth.reverb.active", 0), ("synth.chorus.active", 0), ("synth.polyphony", POLYPHONY),
                           ("synth.cpu-cores", 1), ("synth.dynamic-sample-loading", 0)):  # fmt: skip
            lib.fluid_settings_setint(self._settings, key.encode(), value)
        lib.fluid_settings_setnum(self._settings, b"synth.sample-rate", float(sample_rate))
        lib.fluid_settings_setnum(self._settings, b"synth.gain", GAIN)
        lib.fluid_settings_setstr(self._settings, b"synth.midi-bank-select", b"gm")
        self._holder = self._new_synth()
        self._font_id = lib.fluid_synth_sfload(self._holder, soundfont.encode(), 0)
        if self._font_id == _FAILED:
            self.close()
            raise RenderError(soundfont, "FluidSynth cannot load this SoundFont")
        self._font = lib.fluid_synth_get_sfont_by_id(self._holder, self._font_id)
        self._has: dict[Program, bool] = {}

    def _new_synth(self) -> int:
        synth = _lib().new_fluid_synth(self._settings)
        if not synth:
            raise RenderError(
                self.soundfont, f"FluidSynth cannot create a synthesizer at {self.sample_rate} Hz"
            )
        return synth

    def close(self) -> None:
        """Free the font and the synthesizer holding it."""
        lib = _lib()
        lib.delete_fluid_synth(self._holder)
        lib.delete_fluid_settings(self._settings)

    def has(self, patch: Program) -> bool:
        """Whether the SoundFont holds ``patch`` (FluidSynth would silently substitute another)."""
        if patch not in self._has:
            ok = _lib().fluid_synth_program_select(
                self._holder, 0, self._font_id, patch.bank, patch.program
            )
            self._has[patch] = ok == 0
        return self._has[patch]

    def render(self, midi: mido.MidiFile, num_samples: int, name: str) -> np.ndarray:
        """Play ``midi`` on a new synthesizer into ``num_samples`` samples. Shape: ``(2, num_samples)``.

        Events after ``num_samples`` are dropped. Program changes select the GM patch
        (bank 128 on the drum channel); bank-select controllers are ignored. Raises
        :class:`RenderError` naming ``name`` when a patch is missing from the SoundFont.
        """
        lib = _lib()
        synth = self._new_synth()
        try:
            font_id = lib.fluid_synth_add_sfont(synth, self._font)
            return self._play(synth, font_id, midi, num_samples, name)
        finally:
            lib.fluid_synth_remove_sfont(synth, self._font)
            lib.delete_fluid_synth(synth)

    def _play(
        self, synth: int, font_id: int, midi: mido.MidiFile, num_samples: int, name: str
    ) -> np.ndarray:
        lib = _lib()
        out = np.zeros((2, num_samples), dtype=np.float32)
        left, right = out[0].ctypes.data, out[1].ctypes.data
        now_s, done = 0.0, 0
        tick_s = DEFAULT_TEMPO * 1e-6 / midi.ticks_per_beat
        for delta, msg in _merged(midi):
            now_s += delta * tick_s
            at = min(round(now_s * self.sample_rate), num_samples)
            if at > done:
                lib.fluid_synth_write_float(synth, at - done, left, done, 1, right, done, 1)
                done = at
            if done >= num_samples:
                break
            kind = msg.type
            if kind == "note_on":
                if msg.velocity:
                    lib.fluid_synth_noteon(synth, msg.channel, msg.note, msg.velocity)
                else:
                    lib.fluid_synth_noteoff(synth, msg.channel, msg.note)
            elif kind == "note_off":
                lib.fluid_synth_noteoff(synth, msg.channel, msg.note)
            elif kind == "control_change" and msg.control not in (0, 32):
                lib.fluid_synth_cc(synth, msg.channel, msg.control, msg.value)
            elif kind == "pitchwheel":
                lib.fluid_synth_pitch_bend(synth, msg.channel, msg.pitch + 8192)
            elif kind == "program_change":
                bank = DRUM_BANK if msg.channel == gm.DRUM_CHANNEL else 0
                if (
                    lib.fluid_synth_program_select(synth, msg.channel, font_id, bank, msg.program)
                    != 0
                ):
                    raise RenderError(name, f"{os.path.basename(self.soundfont)} has no preset bank {bank} program {msg.program}")  # fmt: skip
            elif kind == "aftertouch":
                lib.fluid_synth_channel_pressure(synth, msg.channel, msg.value)
            elif kind == "polytouch":
                lib.fluid_synth_key_pressure(synth, msg.channel, msg.note, msg.value)
            elif kind == "set_tempo":
                tick_s = msg.tempo * 1e-6 / midi.ticks_per_beat
        if done < num_samples:
            lib.fluid_synth_write_float(synth, num_samples - done, left, done, 1, right, done, 1)
        return out


def _merged(midi: mido.MidiFile) -> list[tuple[int, mido.Message]]:
    """Every message of every track as ``(ticks since the previous one, message)``, in
    playback order (ties in track order, as :func:`mido.merge_tracks`), without copies."""
    timed = []
    for track in midi.tracks:
        now = 0
        for msg in track:
            now += msg.time
            timed.append((now, msg))
    timed.sort(key=lambda item: item[0])
    return [
        (now - prev, msg)
        for (prev, _), (now, msg) in zip([(0, None), *timed[:-1]], timed, strict=True)
    ]


def get_synth(soundfont: str, sample_rate: int) -> Synth:
    """This process's synthesizer for ``soundfont`` at ``sample_rate``, created on first use."""
    key = (soundfont, sample_rate)
    with _LOCK:
        if key not in _SYNTHS:
            _SYNTHS[key] = Synth(soundfont, sample_rate)
        return _SYNTHS[key]


def patches(midi: mido.MidiFile) -> set[Program]:
    """The patches ``midi`` plays: its program changes, and program 0 of a channel that plays
    notes before any program change."""
    used: set[Program] = set()
    selected: set[int] = set()
    for _, msg in _merged(midi):
        if msg.type in ("note_on", "program_change"):
            bank = DRUM_BANK if msg.channel == gm.DRUM_CHANNEL else 0
            if msg.type == "program_change":
                used.add(Program(bank, msg.program))
                selected.add(msg.channel)
            elif msg.channel not in selected:
                used.add(Program(bank, 0))
                selected.add(msg.channel)
    return used
