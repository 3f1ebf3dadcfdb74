"""The in-process FluidSynth binding and the SoundFont registry."""

from __future__ import annotations

import random

import mido
import numpy as np
import pytest

from sepcore.data import gm, synth
from sepcore.data import soundfonts as sfonts
from sepcore.errors import ConfigError, RenderError

RATE = 22050
#: The smallest registered font: quick to load.
FONT = sfonts.SOUNDFONTS["timgm6mb"].path


def _song(
    notes: list[tuple[float, float, int]], channel: int = 0, program: int = 0, extra=()
) -> mido.MidiFile:
    """One track at 120 bpm (480 ticks per beat = 1 s): ``(start_s, end_s, pitch)`` notes at
    velocity 100, after a program change and the messages in ``extra``."""
    events = [
        (0, mido.Message("program_change", channel=channel, program=program)),
        *((0, m) for m in extra),
    ]
    for start, end, pitch in notes:
        events.append(
            (round(start * 960), mido.Message("note_on", channel=channel, note=pitch, velocity=100))
        )
        if end is not None:
            events.append((round(end * 960), mido.Message("note_off", channel=channel, note=pitch)))
    track, last = mido.MidiTrack(), 0
    for when, msg in sorted(events, key=lambda e: e[0]):
        track.append(msg.copy(time=when - last))
        last = when
    midi = mido.MidiFile(ticks_per_beat=480)
    midi.tracks.append(track)
    return midi


def test_a_note_sounds_at_its_pitch_for_the_requested_length():
    player = synth.get_synth(FONT, RATE)
    audio = player.render(_song([(0.1, 0.6, 69)], program=73), RATE, "flute")  # flute A4
    assert audio.shape == (2, RATE) and audio.dtype == np.float32
    assert np.abs(audio[:, : int(0.09 * RATE)]).max() == 0  # nothing before the note
    sounding = audio[0, int(0.15 * RATE) : int(0.55 * RATE)]
    spectrum = np.abs(np.fft.rfft(sounding * np.hanning(sounding.size)))
    peak_hz = np.argmax(spectrum) * RATE / sounding.size
    assert peak_hz == pytest.approx(440.0, rel=0.02)
    assert np.abs(audio[:, -int(0.1 * RATE) :]).max() < 0.01 * np.abs(sounding).max()  # released


def test_rendering_is_deterministic():
    song = _song([(0.0, 0.3, 60), (0.2, 0.5, 64)], program=24)
    first = synth.get_synth(FONT, RATE).render(song, RATE // 2, "a")
    second = synth.get_synth(FONT, RATE).render(song, RATE // 2, "a")
    assert np.array_equal(first, second) and np.abs(first).max() > 0.01


def test_a_stem_starts_clean_after_another():
    """Held notes, a bent pitch and a lowered volume of one stem do not reach the next."""
    leaky = _song([(0.0, None, 48), (0.0, None, 55)], program=19,
                  extra=[mido.Message("pitchwheel", pitch=4000), mido.Message("control_change", control=7, value=20)])  # fmt: skip
    clean = _song([(0.0, 0.2, 72)], program=0)
    player = synth.get_synth(FONT, RATE)
    player.render(leaky, RATE // 4, "leaky")
    after = player.render(clean, RATE // 2, "clean")
    fresh = synth.Synth(FONT, RATE)
    try:
        assert np.array_equal(after, fresh.render(clean, RATE // 2, "clean"))
    finally:
        fresh.close()


def test_drums_on_channel_nine_sound():
    kit = _song([(0.0, 0.1, 38), (0.25, 0.35, 42)], channel=gm.DRUM_CHANNEL, program=0)
    assert synth.patches(kit) == {synth.Program(synth.DRUM_BANK, 0)}
    audio = synth.get_synth(FONT, RATE).render(kit, RATE // 2, "drums")
    assert np.abs(audio).max() > 0.01


def test_missing_patches_and_fonts_are_reported():
    player = synth.get_synth(FONT, RATE)
    assert player.has(synth.Program(synth.DRUM_BANK, 0)) and not player.has(
        synth.Program(synth.DRUM_BANK, 1)
    )
    with pytest.raises(
        RenderError, match=r"room kit: TimGM6mb.sf2 has no preset bank 128 program 1"
    ):
        player.render(_song([(0.0, 0.1, 38)], channel=gm.DRUM_CHANNEL, program=1), RATE, "room kit")
    with pytest.raises(RenderError, match=r"/no/such/font.sf2: SoundFont not found"):
        synth.Synth("/no/such/font.sf2", RATE)
    with pytest.raises(RenderError, match=r"/no/such/font.sf2: SoundFont not found"):
        sfonts.resolve(["/no/such/font.sf2"], "train")


def test_registry_resolves_names_families_and_refuses_held_out_fonts_for_training():
    fonts = sfonts.resolve(["fluidr3", "timgm6mb", "fluidr3_gm"], "train")
    assert [f.name for f in fonts] == ["fluidr3_gm", "fluidr3mono_gm", "timgm6mb"]
    assert [f.name for f in sfonts.resolve("auto", "train")] == [sfonts.AUTO]
    for purpose in sfonts.TRAINING_PURPOSES:
        with pytest.raises(ConfigError, match="musescore_general .*held out"):
            sfonts.resolve(["timgm6mb", "musescore"], purpose)
        with pytest.raises(ConfigError, match="held out"):  # by path, too
            sfonts.resolve(sfonts.SOUNDFONTS["musescore_general"].path, purpose)
    assert [f.family for f in sfonts.resolve("musescore", "test")] == ["musescore"]
    with pytest.raises(ConfigError, match="unknown SoundFont or family 'nope'"):
        sfonts.resolve("nope", "test")


def test_choose_is_uniform_over_families_then_fonts():
    fonts = sfonts.resolve(["fluidr3", "timgm6mb"], "train")
    rng = random.Random(7)
    picks = [sfonts.choose(rng, fonts).name for _ in range(4000)]
    assert picks.count("timgm6mb") / len(picks) == pytest.approx(0.5, abs=0.03)
    assert picks.count("fluidr3_gm") / len(picks) == pytest.approx(0.25, abs=0.03)
    again = random.Random(7)
    assert [sfonts.choose(again, fonts).name for _ in range(50)] == picks[:50]
