"""The MIDI renderer: splitting into instruments, gain staging, the written track."""

from __future__ import annotations

import io
import random

import mido
import numpy as np
import pytest
import soundfile as sf
import yaml

from sepcore.data import gm, render, slakh, synth
from sepcore.data import soundfonts as sfonts
from sepcore.errors import ConfigError, RenderError
from sepcore.io import storage
from sepcore.units import db_to_gain
from tests.support.midi import DEFAULT_PARTS, multitrack_midi


def _note_times(mid: mido.MidiFile) -> list[tuple[float, int, int]]:
    """(seconds, channel, pitch) of every note-on, in playback order."""
    out, now = [], 0.0
    for msg in mid:
        now += msg.time
        if msg.type == "note_on" and msg.velocity > 0:
            out.append((round(now, 6), msg.channel, msg.note))
    return out


def test_split_keeps_one_file_per_instrument_with_notes():
    data = multitrack_midi(seconds=2.0, bpm=100.0, empty_tracks=2)
    midi = render.parse_midi(data, "x.mid")
    parts = render.split_instruments(midi)
    assert [(i.program, i.channel) for i, _ in parts] == [(p, c) for p, c, _ in DEFAULT_PARTS]
    assert [i.is_drum for i, _ in parts] == [False, False, False, True]
    # Timing survives the split: every note of the original, at the same time.
    merged = sorted(n for _, single in parts for n in _note_times(single))
    assert merged == sorted(_note_times(midi))
    for inst, single in parts:
        assert len(single.tracks) == 2  # conductor + instrument
        assert {m.channel for m in single.tracks[1] if not m.is_meta} == {inst.channel}
        assert any(m.type == "set_tempo" for m in single.tracks[0])


def test_split_type0_file_by_channel():
    data = multitrack_midi(seconds=1.0, type0=True)
    parts = render.split_instruments(render.parse_midi(data, "t0.mid"))
    assert sorted(i.channel for i, _ in parts) == sorted(c for _, c, _ in DEFAULT_PARTS)
    assert {i.program for i, _ in parts} == {p for p, _, _ in DEFAULT_PARTS}


def test_unreadable_and_empty_midi_raise_render_errors(tmp_path):
    with pytest.raises(RenderError, match="broken.mid: not a readable MIDI file"):
        render.parse_midi(b"this is not midi", "broken.mid")
    empty = mido.MidiFile()
    empty.tracks.append(mido.MidiTrack([mido.Message("program_change", program=3)]))
    buf = io.BytesIO()
    empty.save(file=buf)
    with pytest.raises(RenderError, match="silent.mid: the MIDI file has no notes"):
        render.render_track(buf.getvalue(), "silent.mid", str(tmp_path / "T"))
    assert not (tmp_path / "T" / "metadata.yaml").exists()


def test_mix_stems_gain_staging():
    rng = np.random.default_rng(0)
    stems = rng.uniform(-1.5, 1.5, size=(3, 2, 1000)).astype(np.float32)
    staged, mix, gain, factor = render.mix_stems(stems, target_peak_db=-1.0)
    target = db_to_gain(-1.0)
    assert gain < 1 and np.abs(staged).max() == pytest.approx(target, rel=1e-5)
    assert factor < 1 and np.abs(mix).max() == pytest.approx(target, rel=1e-5)
    np.testing.assert_allclose(mix, factor * staged.sum(axis=0), rtol=1e-6, atol=1e-7)
    quiet = stems * 0.01
    _, qmix, qgain, qfactor = render.mix_stems(quiet)
    assert (qgain, qfactor) == (1.0, 1.0)
    np.testing.assert_allclose(qmix, quiet.sum(axis=0), atol=1e-7)


def test_mix_stems_all_silent_is_finite():
    staged, mix, gain, factor = render.mix_stems(np.zeros((2, 1, 100), dtype=np.float32))
    assert (gain, factor) == (1.0, 1.0)
    assert np.all(mix == 0) and np.all(np.isfinite(staged))


def test_integrated_loudness_of_silence_is_none():
    assert render.integrated_loudness(np.zeros((2, 44100), np.float32), 44100) is None
    tone = 0.5 * np.sin(2 * np.pi * 440 * np.arange(44100) / 44100).astype(np.float32)
    loud = render.integrated_loudness(tone[None, :], 44100)
    assert loud is not None and -12 < loud < -3


@pytest.fixture(scope="module")
def rendered_track(tmp_path_factory):
    root = tmp_path_factory.mktemp("rendered")
    data = multitrack_midi(seconds=3.0, empty_tracks=1)
    meta = render.render_track(data, "four.mid", str(root / "Track00001"), sample_rate=22050)
    return root, data, meta


def test_render_track_writes_slakh_layout(rendered_track):
    root, data, meta = rendered_track
    folder = root / "Track00001"
    assert (folder / "all_src.mid").read_bytes() == data
    instruments = [i for i, _ in render.split_instruments(render.parse_midi(data, "four.mid"))]
    assert len(meta["stems"]) == len(instruments) == 4  # the empty track is not a stem
    for i, inst in enumerate(instruments):
        sid = f"S{i:02d}"
        assert (folder / "stems" / f"{sid}.flac").exists() and (
            folder / "MIDI" / f"{sid}.mid"
        ).exists()
        stem = meta["stems"][sid]
        assert stem["program_num"] == inst.program
        assert stem["is_drum"] == inst.is_drum
        assert stem["inst_class"] == gm.inst_class(inst.program, inst.is_drum)
        assert stem["integrated_loudness"] is not None
    assert yaml.safe_load((folder / "metadata.yaml").read_text()) == meta


def test_stems_and_mix_have_equal_length_and_mix_is_scaled_sum(rendered_track):
    root, _, meta = rendered_track
    folder = root / "Track00001"
    mix, rate = sf.read(folder / "mix.flac", dtype="float64", always_2d=True)
    stems = [
        sf.read(folder / "stems" / f"{sid}.flac", dtype="float64", always_2d=True)
        for sid in meta["stems"]
    ]
    assert rate == 22050 and all(r == rate for _, r in stems)
    assert {s.shape for s, _ in stems} == {mix.shape}
    assert 3.0 * rate <= mix.shape[0] <= (3.0 + render.RELEASE_S) * rate + 1
    expected = meta["normalization_factor"] * sum(s for s, _ in stems)
    assert np.abs(mix - expected).max() < 1e-4
    assert np.abs(mix).max() <= db_to_gain(meta["target_peak"]) + 1e-4
    assert np.abs(mix).max() > 0.1  # really rendered, not silence


def test_metadata_round_trips_through_the_slakh_reader(rendered_track):
    root, _, meta = rendered_track
    (track,) = slakh.list_tracks(str(root))
    assert track.track_id == "Track00001"
    assert [s.stem_id for s in track.stems] == sorted(meta["stems"])
    for stem in track.stems:
        written = meta["stems"][stem.stem_id]
        assert (stem.inst_class, stem.program_num, stem.is_drum) == (
            written["inst_class"], written["program_num"], written["is_drum"],
        )  # fmt: skip
        assert stem.midi_program_name == written["midi_program_name"]
        assert stem.integrated_loudness == pytest.approx(written["integrated_loudness"])
        assert storage.exists(stem.audio_uri) and storage.exists(stem.midi_uri)
    assert track.extra["normalization_factor"] == meta["normalization_factor"]


def test_mono_rendering(tmp_path):
    meta = render.render_track(multitrack_midi(seconds=1.0, parts=DEFAULT_PARTS[:2]), "m.mid",
                               str(tmp_path / "T"), sample_rate=16000, channels=1)  # fmt: skip
    info = sf.info(str(tmp_path / "T" / "mix.flac"))
    assert (info.channels, info.samplerate) == (1, 16000)
    assert len(meta["stems"]) == 2


def test_integrated_loudness_matches_pyloudnorm():
    import pyloudnorm

    rng = np.random.default_rng(3)
    for rate, shape in ((44100, (2, 44100 * 3)), (16000, (1, 12345))):
        x = (rng.standard_normal(shape) * np.linspace(0.01, 0.3, shape[1])).astype(np.float32)
        expected = pyloudnorm.Meter(rate).integrated_loudness(x.T.astype(np.float64))
        assert render.integrated_loudness(x, rate) == pytest.approx(expected, abs=0.01)


#: Fonts of three families: each stem of the track below draws one.
FONTS = ["fluidr3", "timgm6mb", "opl3"]


@pytest.fixture(scope="module")
def multi_font_track(tmp_path_factory):
    root = tmp_path_factory.mktemp("fonts")
    data = multitrack_midi(seconds=2.0, empty_tracks=0)
    meta = render.render_track(data, "fonts.mid", str(root / "T"), sample_rate=22050, soundfonts=FONTS,
                               seed=1, stem_loudness_lufs=-24.0, extra_meta={"style": "rock", "piece_id": "p1"},
                               stem_meta={"S00": {"part": "keys"}, "Electric Bass (finger)": {"part": "bass"}})  # fmt: skip
    return root / "T", meta


def test_stems_with_several_fonts_sum_to_the_mix(multi_font_track):
    folder, meta = multi_font_track
    mix, _ = sf.read(folder / "mix.flac", dtype="float64", always_2d=True)
    stems = {
        sid: sf.read(folder / "stems" / f"{sid}.flac", dtype="float64", always_2d=True)[0]
        for sid in meta["stems"]
    }
    assert np.abs(mix - meta["normalization_factor"] * sum(stems.values())).max() < 1e-4
    families = {s["soundfont_family"] for s in meta["stems"].values()}
    assert len(families) >= 2
    for sid, stem in meta["stems"].items():
        font = sfonts.SOUNDFONTS[stem["soundfont"]]
        assert stem["soundfont_family"] == font.family and font.family in FONTS
        assert stem["plugin_name"].startswith(font.name)
        # Normalised to -24 LUFS, then every stem scaled by the same overall gain.
        expected = -24.0 + 20 * np.log10(meta["overall_gain"])
        assert stem["integrated_loudness"] == pytest.approx(expected, abs=0.01)
        assert render.integrated_loudness(stems[sid].T, 22050) == pytest.approx(expected, abs=0.05)
    assert (meta["style"], meta["piece_id"], meta["stem_loudness_lufs"]) == ("rock", "p1", -24.0)
    assert (
        meta["stems"]["S00"]["part"] == "keys"
        and meta["stems"]["S01"]["name"] == "Electric Bass (finger)"
    )
    assert meta["stems"]["S01"]["part"] == "bass" and "part" not in meta["stems"]["S02"]
    assert yaml.safe_load((folder / "metadata.yaml").read_text()) == meta


def test_font_choice_and_audio_are_reproducible(tmp_path):
    data = multitrack_midi(seconds=1.0, parts=DEFAULT_PARTS[:3])
    runs = [render.render_track(data, "r.mid", str(tmp_path / f"T{k}"), sample_rate=16000, soundfonts=FONTS, seed=5)
            for k in range(2)]  # fmt: skip
    assert [s["soundfont"] for s in runs[0]["stems"].values()] == [
        s["soundfont"] for s in runs[1]["stems"].values()
    ]
    assert (tmp_path / "T0" / "mix.flac").read_bytes() == (
        tmp_path / "T1" / "mix.flac"
    ).read_bytes()


def test_held_out_fonts_are_refused_for_training(tmp_path):
    with pytest.raises(ConfigError, match="held out"):
        render.render_track(
            multitrack_midi(seconds=1.0), "h.mid", str(tmp_path / "T"), soundfonts=["musescore"]
        )
    assert not (tmp_path / "T").exists()


def test_a_font_lacking_a_patch_is_refused_for_the_stem():
    room_kit = mido.MidiFile(ticks_per_beat=480)
    room_kit.tracks.append(mido.MidiTrack([
        mido.Message("program_change", channel=gm.DRUM_CHANNEL, program=8 + 1),
        mido.Message("note_on", channel=gm.DRUM_CHANNEL, note=38, velocity=100),
        mido.Message("note_off", channel=gm.DRUM_CHANNEL, note=38, time=240),
    ]))  # fmt: skip
    fonts = sfonts.resolve(["timgm6mb", "fluidr3_gm"], "train")
    refusals = set()
    for seed in range(6):
        stem = render.render_stem(room_kit, fonts, random.Random(seed), 8000, 16000, "kit")
        assert stem.font.name == "fluidr3_gm" and np.abs(stem.audio).max() > 0.01
        refusals.add(stem.refused)
    assert refusals == {(), ("timgm6mb",)}
    with pytest.raises(RenderError, match="kit: no SoundFont of \\['timgm6mb'\\] plays"):
        render.render_stem(room_kit, fonts[:1], random.Random(0), 8000, 16000, "kit")


def test_a_font_playing_a_stem_silent_is_refused(monkeypatch):
    play = synth.Synth.render

    def silent_timgm(self, midi, num_samples, name):
        audio = play(self, midi, num_samples, name)
        return audio * 0 if self.soundfont.endswith("TimGM6mb.sf2") else audio

    monkeypatch.setattr(synth.Synth, "render", silent_timgm)
    single = render.split_instruments(
        render.parse_midi(multitrack_midi(seconds=0.5, parts=DEFAULT_PARTS[:1]), "p")
    )[0][1]
    fonts = sfonts.resolve(["timgm6mb", "opl3"], "train")
    stems = [
        render.render_stem(single, fonts, random.Random(seed), 8000, 16000, "piano")
        for seed in range(6)
    ]
    assert {s.font.name for s in stems} == {"opl3"} and {s.refused for s in stems} == {
        (),
        ("timgm6mb",),
    }
