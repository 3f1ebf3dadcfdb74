"""The Slakh reader: real schema, layouts, splits, errors, and listing without audio reads."""

from __future__ import annotations

import os

import pytest
import yaml

from sepcore.data import slakh
from sepcore.errors import MetadataError
from sepcore.io import storage

# A metadata.yaml in Slakh2100-redux's schema (values as in the real dataset).
REAL_METADATA = """\
UUID: 1a81ae092884234f3264e2f45927f00a
audio_dir: stems
lmd_midi_dir: lmd_matched/O/O/H/TROOHTB128F931F9DF/1a81ae092884234f3264e2f45927f00a.mid
midi_dir: MIDI
normalization_factor: 1.0
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
    inst_class: Bass
    integrated_loudness: -14.30136237462758
    is_drum: false
    midi_program_name: Electric Bass (finger)
    midi_saved: true
    plugin_name: scarbee_jay_bass_both.nkm
    program_num: 33
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


def make_track(root, track_id: str, text: str = REAL_METADATA, stems=("S00", "S01", "S03"), split=None):
    folder = root / split / track_id if split else root / track_id
    (folder / "stems").mkdir(parents=True)
    (folder / "MIDI").mkdir()
    for sid in stems:
        (folder / "stems" / f"{sid}.flac").write_bytes(b"fLaC-not-really")
        (folder / "MIDI" / f"{sid}.mid").write_bytes(b"MThd")
    (folder / "mix.flac").write_bytes(b"fLaC-not-really")
    (folder / "metadata.yaml").write_text(text)
    return folder


def test_real_schema_parses_into_records(tmp_path):
    make_track(tmp_path, "Track00001")
    (track,) = slakh.list_tracks(str(tmp_path))
    assert track.track_id == "Track00001"
    assert track.split is None
    assert track.mix_uri == storage.join(storage.normalize_uri(str(tmp_path)), "Track00001", "mix.flac")
    # S02 was not rendered: skipped, not missing.
    assert [s.stem_id for s in track.stems] == ["S00", "S01", "S03"]
    assert track.missing_stems == ()
    guitar, bass, drums = track.stems
    assert (guitar.inst_class, guitar.program_num, guitar.is_drum) == ("Guitar", 30, False)
    assert guitar.midi_program_name == "Distortion Guitar"
    assert guitar.plugin_name == "elektrik_guitar.nkm"
    assert guitar.integrated_loudness == pytest.approx(-12.883242016630589)
    assert guitar.audio_uri.endswith("/Track00001/stems/S00.flac")
    assert guitar.midi_uri.endswith("/Track00001/MIDI/S00.mid")
    assert bass.inst_class == "Bass" and drums.is_drum and drums.inst_class == "Drums"
    assert track.classes == {"Guitar", "Bass", "Drums"}
    assert track.extra["overall_gain"] == pytest.approx(0.18270259567062658)
    assert "stems" not in track.extra


def test_rendered_stem_without_audio_is_reported_missing(tmp_path):
    make_track(tmp_path, "Track00001", stems=("S00", "S03"))
    (track,) = slakh.list_tracks(str(tmp_path))
    assert [s.stem_id for s in track.stems] == ["S00", "S03"]
    assert track.missing_stems == ("S01",)


def test_split_layout_and_filter(tmp_path):
    for split, tid in [("train", "Track00001"), ("train", "Track00002"), ("validation", "Track00003"),
                       ("test", "Track00004"), ("omitted", "Track00005")]:  # fmt: skip
        make_track(tmp_path, tid, split=split)
    tracks = slakh.list_tracks(str(tmp_path))
    assert [(t.split, t.track_id) for t in tracks] == [
        ("train", "Track00001"), ("train", "Track00002"), ("validation", "Track00003"),
        ("test", "Track00004"), ("omitted", "Track00005"),
    ]  # fmt: skip
    only = slakh.list_tracks("file://" + str(tmp_path), splits=["validation", "test"])
    assert [t.track_id for t in only] == ["Track00003", "Track00004"]
    with pytest.raises(ValueError, match="unknown split"):
        slakh.list_tracks(str(tmp_path), splits=["dev"])


def test_a_track_folder_itself_is_a_dataset_of_one(tmp_path):
    folder = make_track(tmp_path, "Track00042")
    (track,) = slakh.list_tracks(str(folder))
    assert track.track_id == "Track00042" and len(track.stems) == 3


def _broken(field_path: list[str], value=None, delete=False) -> str:
    meta = yaml.safe_load(REAL_METADATA)
    node = meta
    for key in field_path[:-1]:
        node = node[key]
    if delete:
        del node[field_path[-1]]
    else:
        node[field_path[-1]] = value
    return yaml.safe_dump(meta)


@pytest.mark.parametrize(
    "text, field, problem",
    [
        (_broken(["stems"], delete=True), "stems", "missing required field"),
        (_broken(["stems", "S01", "program_num"], delete=True), "stems.S01.program_num", "missing"),
        (_broken(["stems", "S00", "is_drum"], "yes"), "stems.S00.is_drum", "expected bool"),
        (_broken(["stems", "S03", "program_num"], "128"), "stems.S03.program_num", "expected int"),
        (_broken(["stems", "S00", "inst_class"], 7), "stems.S00.inst_class", "expected str"),
        (_broken(["stems", "S01"], ["not", "a", "mapping"]), "stems.S01", "expected a mapping"),
        (_broken(["stems"], "none"), "stems", "expected dict"),
        ("- just\n- a list\n", None, "expected a mapping at the top level"),
        ("stems: {S00: [unclosed\n", None, "not valid YAML"),
    ],
)
def test_malformed_metadata_names_file_and_field(tmp_path, text, field, problem):
    folder = make_track(tmp_path, "Track00007", text=text)
    with pytest.raises(MetadataError) as info:
        slakh.list_tracks(str(tmp_path))
    err = info.value
    assert err.uri.endswith("Track00007/metadata.yaml")
    assert err.field == field
    assert problem in err.problem
    assert str(folder / "metadata.yaml") in str(err)


def test_errors_can_be_collected_while_good_tracks_are_read(tmp_path):
    make_track(tmp_path, "Track00001")
    make_track(tmp_path, "Track00002", text="stems: 3\n")
    make_track(tmp_path, "Track00003")
    errors: list[MetadataError] = []
    tracks = slakh.list_tracks(str(tmp_path), errors=errors)
    assert [t.track_id for t in tracks] == ["Track00001", "Track00003"]
    assert len(errors) == 1 and errors[0].uri.endswith("Track00002/metadata.yaml")


def test_listing_2100_tracks_reads_only_metadata(tmp_path, monkeypatch):
    text = REAL_METADATA
    for i in range(2100):
        split = ("train", "validation", "test")[i % 3]
        folder = tmp_path / split / f"Track{i + 1:05d}"
        os.makedirs(folder / "stems")
        for sid in ("S00", "S01", "S03"):
            (folder / "stems" / f"{sid}.flac").write_bytes(b"x")
        (folder / "mix.flac").write_bytes(b"x")
        (folder / "metadata.yaml").write_text(text)
    reads: list[str] = []
    real_read = storage.read_bytes
    monkeypatch.setattr(storage, "read_bytes", lambda uri: reads.append(uri) or real_read(uri))
    tracks = slakh.list_tracks(str(tmp_path))
    assert len(tracks) == 2100
    assert len(reads) == 2100
    assert all(uri.endswith("/metadata.yaml") for uri in reads)
    assert sum(len(t.stems) for t in tracks) == 3 * 2100
