"""Data sources as SourceTrack records: Slakh, curated stem folders, stem files; loading stems."""

from __future__ import annotations

import os

import numpy as np
import pytest

from sepcore.data import sources
from sepcore.data.sources import SourceStem, SourceTrack
from sepcore.errors import AudioError, MetadataError
from sepcore.io import stemfile, storage
from sepcore.io.audio import Audio, resample, write_audio

RATE = 44100

SLAKH_METADATA = """\
UUID: 1a81ae092884234f3264e2f45927f00a
audio_dir: stems
midi_dir: MIDI
normalized: true
overall_gain: 0.18270259567062658
stems:
  S00:
    audio_rendered: true
    inst_class: Guitar
    integrated_loudness: -12.883242016630589
    is_drum: false
    midi_program_name: Distortion Guitar
    midi_saved: true
    plugin_name: elektrik_guitar.nkm
    program_num: 30
  S01:
    audio_rendered: true
    inst_class: Strings (continued)
    integrated_loudness: -14.30136237462758
    is_drum: false
    midi_program_name: String Ensemble 1
    midi_saved: true
    plugin_name: session_strings.nkm
    program_num: 48
  S02:
    audio_rendered: false
    inst_class: Sound Effects
    integrated_loudness: -.inf
    is_drum: false
    midi_program_name: Helicopter
    midi_saved: true
    plugin_name: None
    program_num: 125
  S03:
    audio_rendered: true
    inst_class: Drums
    integrated_loudness: -11.048013307404565
    is_drum: true
    midi_program_name: Drums
    midi_saved: true
    plugin_name: session_kit_full.nkm
    program_num: 128
target_peak: -1.0
"""


def noise(seconds: float, rate: int = RATE, channels: int = 2, seed: int = 0) -> Audio:
    rng = np.random.default_rng(seed)
    n = int(round(seconds * rate))
    return Audio((0.1 * rng.standard_normal((channels, n))).astype(np.float32), rate)


def write(path, audio: Audio) -> Audio:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    write_audio(str(path), audio, fmt="wav" if str(path).endswith(".wav") else "flac")
    return audio


def make_slakh(root, track_id="Track00001", split=None, lengths=(0.5, 0.3, 0.4)) -> dict:
    folder = root / split / track_id if split else root / track_id
    stems = {}
    for i, (sid, seconds) in enumerate(zip(("S00", "S01", "S03"), lengths, strict=True)):
        stems[sid] = write(folder / "stems" / f"{sid}.flac", noise(seconds, seed=i))
    write(folder / "mix.flac", noise(0.5, seed=9))
    (folder / "metadata.yaml").write_text(SLAKH_METADATA)
    return stems


def make_curated(root) -> None:
    """Two tracks in seed 002's layout, with mix/excluded folders and QA flag files."""
    a = root / "SongA"
    write(a / "guitar" / "gtr1.wav", noise(0.2, seed=1))
    write(a / "guitar" / "gtr2.flac", noise(0.2, seed=2))
    write(a / "bass" / "bass.wav", noise(0.2, seed=3))
    write(a / "drums" / "kit" / "kick.wav", noise(0.2, seed=4))
    write(a / "mix" / "mix.wav", noise(0.2, seed=5))
    write(a / "excluded" / "click.wav", noise(0.2, seed=6))
    (a / "guitar" / ".DS_Store").write_bytes(b"junk")
    (a / "guitar" / "notes.txt").write_text("takes 1 and 2")
    for flag in ("guitar_bleed", "guitar_checked", "bass_checked", "piano_missing"):
        (a / flag).write_bytes(b"")
    (a / "README.md").write_text("not a flag")
    b = root / "SongB"
    write(b / "Vocals" / "lead.wav", noise(0.2, channels=1, seed=7))
    write(b / "mix" / "a.wav", noise(0.2, seed=8))
    write(b / "mix" / "b.wav", noise(0.2, seed=9))
    c = root / "SongC"  # only excluded audio: a track with no stems
    write(c / "excluded" / "room.wav", noise(0.2, seed=10))


def no_reads(monkeypatch) -> None:
    def fail(*args, **kwargs):
        raise AssertionError(f"listing read an object: {args}")

    monkeypatch.setattr(storage, "read_bytes", fail)
    monkeypatch.setattr(storage, "local_copy", fail)


# ---------------------------------------------------------------- curated stems


def test_curated_layout_becomes_tracks_with_flags_and_mix(tmp_path, monkeypatch):
    make_curated(tmp_path)
    no_reads(monkeypatch)
    root = storage.normalize_uri(str(tmp_path))
    tracks = sources.curated_tracks(str(tmp_path))
    assert [t.track_id for t in tracks] == ["stems:SongA", "stems:SongB", "stems:SongC"]
    a, b, c = tracks
    assert (a.kind, a.split, a.uri) == ("stems", None, storage.join(root, "SongA"))
    assert [(s.stem_id, s.inst_class, s.flags) for s in a.stems] == [
        ("bass/bass.wav", "bass", ("checked",)),
        ("drums/kit/kick.wav", "drums", ()),
        ("guitar/gtr1.wav", "guitar", ("bleed", "checked")),
        ("guitar/gtr2.flac", "guitar", ("bleed", "checked")),
    ]
    assert all(s.stream is None and s.original_class == s.inst_class for s in a.stems)
    assert a.stems[2].uri == storage.join(root, "SongA", "guitar", "gtr1.wav")
    # mix and excluded files are never stems.
    assert a.mix_uri == storage.join(root, "SongA", "mix", "mix.wav")
    assert a.extra["excluded"] == [storage.join(root, "SongA", "excluded", "click.wav")]
    assert a.extra["flags"] == {"bass": ["checked"], "guitar": ["bleed", "checked"],
                                "piano": ["missing"]}  # fmt: skip
    assert storage.join(root, "SongA", "guitar", "notes.txt") in a.extra["ignored"]
    assert storage.join(root, "SongA", "README.md") in a.extra["ignored"]
    assert not any(".DS_Store" in u for u in a.extra["ignored"] + [s.uri for s in a.stems])
    # Folder names match case-insensitively; the dataset's spelling is kept.
    ((vocals),) = b.stems
    assert (vocals.inst_class, vocals.original_class) == ("vocals", "Vocals")
    assert b.mix_uri is None and len(b.extra["mix_files"]) == 2  # two mixes: none chosen
    assert c.stems == () and c.classes == set()


def test_unknown_class_folder_is_an_error_naming_it(tmp_path):
    make_curated(tmp_path)
    write(tmp_path / "SongD" / "guiter" / "x.wav", noise(0.1))
    with pytest.raises(MetadataError) as info:
        sources.curated_tracks(str(tmp_path))
    assert info.value.uri == storage.join(storage.normalize_uri(str(tmp_path)), "SongD", "guiter")
    assert "unknown class folder 'guiter'" in info.value.problem
    errors: list[MetadataError] = []
    tracks = sources.curated_tracks(str(tmp_path), errors=errors)
    assert [t.track_id for t in tracks] == ["stems:SongA", "stems:SongB", "stems:SongC"]
    assert [e.uri.rsplit("/", 2)[-2:] for e in errors] == [["SongD", "guiter"]]


def test_unknown_flag_is_an_error(tmp_path):
    write(tmp_path / "SongE" / "guitar" / "g.wav", noise(0.1))
    (tmp_path / "SongE" / "guitar_blead").write_bytes(b"")
    with pytest.raises(MetadataError, match="unknown QA flag 'blead'") as info:
        sources.curated_tracks(str(tmp_path))
    assert info.value.uri.endswith("/SongE/guitar_blead")


# ---------------------------------------------------------------- stem files


def test_stemfile_tracks_list_streams_without_reading(tmp_path, monkeypatch):
    for rel in ("train/Song One.stem.mp4", "test/Song Two.stem.m4a", "loose/Three.stem.mp4"):
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_bytes(b"listing never opens this")
    (tmp_path / "train" / "plain.mp4").write_bytes(b"not a stem file")
    no_reads(monkeypatch)
    tracks = sources.stemfile_tracks(str(tmp_path))
    assert [(t.track_id, t.split) for t in tracks] == [
        ("stemfile:Song One", "train"), ("stemfile:Song Two", "test"), ("stemfile:Three", None),
    ]  # fmt: skip
    one = tracks[0]
    assert one.uri == one.mix_uri == storage.join(storage.normalize_uri(str(tmp_path)), "train",
                                                  "Song One.stem.mp4")  # fmt: skip
    assert [(s.stem_id, s.inst_class, s.stream, s.uri) for s in one.stems] == [
        (name, name, i, one.uri) for i, name in enumerate(("drums", "bass", "other", "vocals"), 1)
    ]
    assert one.extra == {"mix_stream": 0}
    assert {t.split for t in sources.stemfile_tracks(str(tmp_path), split="validation")} == {
        "validation"
    }
    (tmp_path / "loose" / "Song One.stem.mp4").write_bytes(b"x")
    with pytest.raises(ValueError, match="two stem files named 'Song One'"):
        sources.stemfile_tracks(str(tmp_path))


def test_stemfile_track_loads_from_one_decode(tmp_path, monkeypatch):
    streams = [noise(0.3, seed=s) for s in range(5)]
    stemfile.write_stemfile(str(tmp_path / "a.stem.mp4"), streams, codec="alac")
    (track,) = sources.stemfile_tracks(str(tmp_path))
    calls = []
    real = sources.read_stem_streams
    monkeypatch.setattr(
        sources, "read_stem_streams", lambda *a, **k: calls.append(a) or real(*a, **k)
    )
    out, stems = sources.load_track_stems(track, RATE, 2)
    assert len(calls) == 1
    assert out.shape == (4, 2, streams[0].num_samples) and out.dtype == np.float32
    assert [s.stem_id for s in stems] == ["drums", "bass", "other", "vocals"]
    for row, orig in zip(out, streams[1:], strict=True):
        np.testing.assert_allclose(row, orig.samples, atol=2e-6)
    vocals = sources.load_stem(stems[3], RATE, 1)
    np.testing.assert_allclose(vocals[0], streams[4].samples.mean(axis=0), atol=2e-6)


# ---------------------------------------------------------------- slakh


def test_slakh_adapter_keeps_original_classes(tmp_path):
    make_slakh(tmp_path, split="train")
    (track,) = sources.slakh_tracks(str(tmp_path))
    assert (track.track_id, track.kind, track.split) == ("slakh:Track00001", "slakh", "train")
    assert [(s.stem_id, s.inst_class, s.original_class) for s in track.stems] == [
        ("S00", "guitar", "Guitar"), ("S01", "strings", "Strings (continued)"),
        ("S03", "drums", "Drums"),
    ]  # fmt: skip
    assert track.stems[0].uri.endswith("/train/Track00001/stems/S00.flac")
    assert track.mix_uri.endswith("/train/Track00001/mix.flac")
    assert track.extra["stems"]["S03"]["is_drum"] is True
    assert track.extra["stems"]["S00"]["program_num"] == 30
    assert track.extra["metadata"]["overall_gain"] == pytest.approx(0.18270259567062658)
    assert track.extra["missing_stems"] == []
    assert sources.slakh_tracks(str(tmp_path), splits=["test"]) == []


def test_load_track_stems_resamples_downmixes_and_pads(tmp_path):
    orig = make_slakh(tmp_path, lengths=(0.5, 0.3, 0.4))
    (track,) = sources.slakh_tracks(str(tmp_path))
    out, stems = sources.load_track_stems(track, 22050, 1)
    assert [s.stem_id for s in stems] == ["S00", "S01", "S03"]
    assert out.shape == (3, 1, 11025) and out.dtype == np.float32  # 0.5 s at 22.05 kHz
    # S01 (0.3 s) is zero-padded to the longest stem.
    assert np.any(out[1, :, :6615] != 0) and np.all(out[1, :, 6615:] == 0)
    mono = Audio(orig["S00"].samples.mean(axis=0, keepdims=True), RATE)
    np.testing.assert_allclose(out[0], resample(mono, 22050).samples, atol=1e-4)
    single = sources.load_stem(stems[2], 22050, 2)
    assert single.shape == (2, 8820)
    empty = SourceTrack("x:y", "stems", "file:///y", None, ())
    assert sources.load_track_stems(empty, 22050, 2)[0].shape == (0, 2, 0)


@pytest.mark.parametrize("content", [b"", b"RIFF....WAVEgarbage" * 10])
def test_corrupt_stem_raises_audio_error_naming_it(tmp_path, content):
    make_slakh(tmp_path)
    bad = tmp_path / "Track00001" / "stems" / "S01.flac"
    bad.write_bytes(content)
    (track,) = sources.slakh_tracks(str(tmp_path))
    with pytest.raises(AudioError) as info:
        sources.load_track_stems(track, RATE, 2)
    assert info.value.uri == storage.normalize_uri(str(bad))
    missing = SourceStem("S09", "bass", storage.normalize_uri(str(tmp_path / "nope.wav")))
    with pytest.raises(AudioError) as info:
        sources.load_stem(missing, RATE, 2)
    assert info.value.uri.endswith("/nope.wav")
    corrupt = tmp_path / "broken.stem.mp4"
    corrupt.write_bytes(b"\x00" * 100)
    (st,) = sources.stemfile_tracks(str(tmp_path))
    with pytest.raises(AudioError) as info:
        sources.load_track_stems(st, RATE, 2)
    assert info.value.uri == storage.normalize_uri(str(corrupt))


# ---------------------------------------------------------------- list_sources


def test_list_sources_mixes_kinds_and_checks_ids(tmp_path):
    make_slakh(tmp_path / "slakh", split="validation")
    make_curated(tmp_path / "curated")
    stemfile.write_stemfile(str(tmp_path / "musdb" / "x.stem.mp4"), [noise(0.1)] * 5, "alac")
    specs = [
        {"kind": "slakh", "uri": str(tmp_path / "slakh"), "splits": ["validation"]},
        {"kind": "stems", "uri": str(tmp_path / "curated"), "split": "train"},
        {"kind": "stemfile", "uri": str(tmp_path / "musdb")},
    ]
    tracks = sources.list_sources(specs)
    assert [(t.track_id, t.kind, t.split) for t in tracks] == [
        ("slakh:Track00001", "slakh", "validation"),
        ("stems:SongA", "stems", "train"), ("stems:SongB", "stems", "train"),
        ("stems:SongC", "stems", "train"),
        ("stemfile:x", "stemfile", None),
    ]  # fmt: skip
    twice = [specs[0], {"kind": "slakh", "uri": str(tmp_path / "slakh")}]
    with pytest.raises(ValueError, match="track id 'slakh:Track00001' given twice"):
        sources.list_sources(twice)
    renamed = sources.list_sources([specs[0], {**twice[1], "name": "mine"}])
    assert [t.track_id for t in renamed] == ["slakh:Track00001", "mine:Track00001"]


@pytest.mark.parametrize(
    "spec, message",
    [
        ({"kind": "musdb", "uri": "x"}, "unknown kind 'musdb'"),
        ({"uri": "x"}, "unknown kind None"),
        ({"kind": "stems"}, "'uri' is required"),
        ({"kind": "stems", "uri": "x", "splits": ["train"]}, r"unknown key\(s\) \['splits'\]"),
        ({"kind": "stemfile", "uri": "x", "split": "dev"}, "split must be one of"),
    ],
)
def test_bad_source_specs_raise_value_error(spec, message):
    with pytest.raises(ValueError, match=message):
        sources.list_sources([spec])


def test_sources_on_s3(tmp_path, s3_bucket):
    make_curated(tmp_path / "curated")
    make_slakh(tmp_path / "slakh")
    stemfile.write_stemfile(str(tmp_path / "musdb" / "x.stem.mp4"),
                            [noise(0.1, seed=s) for s in range(5)], "alac")  # fmt: skip
    for dirpath, _, files in os.walk(tmp_path):
        for f in files:
            rel = os.path.relpath(os.path.join(dirpath, f), tmp_path)
            storage.upload(os.path.join(dirpath, f), storage.join(s3_bucket, rel))
    tracks = sources.list_sources(
        [{"kind": k, "uri": storage.join(s3_bucket, d)}
         for k, d in (("slakh", "slakh"), ("stems", "curated"), ("stemfile", "musdb"))]
    )  # fmt: skip
    assert [t.track_id for t in tracks] == ["slakh:Track00001", "stems:SongA", "stems:SongB",
                                            "stems:SongC", "stemfile:x"]  # fmt: skip
    assert tracks[1].stems[2].uri == storage.join(s3_bucket, "curated/SongA/guitar/gtr1.wav")
    assert tracks[1].stems[2].flags == ("bleed", "checked")
    slakh_out, _ = sources.load_track_stems(tracks[0], 22050, 2)
    assert slakh_out.shape == (3, 2, 11025)
    song_a, _ = sources.load_track_stems(tracks[1], RATE, 1)
    assert song_a.shape == (4, 1, int(0.2 * RATE))
    musdb, _ = sources.load_track_stems(tracks[4], RATE, 2)
    assert musdb.shape == (4, 2, int(0.1 * RATE))
