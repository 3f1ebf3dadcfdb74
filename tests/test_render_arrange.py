"""`sep render arrange=band`: MIDI files read as lead sheets, arranged for a band, rendered."""

from __future__ import annotations

import json

import numpy as np
import pytest

from ray_jobs import render
from sepcore.compose.midi import leadsheet_to_midi
from sepcore.data import band as B
from sepcore.data import slakh
from sepcore.data.styles import styles_for
from sepcore.io import storage
from sepcore.io.audio import read_audio
from tests.test_compose_midi import blues_sheet

pytestmark = pytest.mark.usefixtures("local_ray")  # tests/conftest.py


def test_midi_files_are_arranged_for_a_band_and_rendered(tmp_path):
    folder = tmp_path / "composed"
    folder.mkdir()
    (folder / "blues1.mid").write_bytes(leadsheet_to_midi(blues_sheet("blues-1"), 150.0))
    (folder / "blues2.mid").write_bytes(
        leadsheet_to_midi(blues_sheet("blues-2", transpose=2), 140.0)
    )
    (folder / "garbage.mid").write_bytes(b"MThd not really")
    out = tmp_path / "out"
    argv = [
        f"midi={folder}",
        f"output={out}",
        "arrange=band",
        "band.seconds=6",
        "sample_rate=16000",
        "channels=1",
    ]
    assert render.main(argv) == 0

    summary = json.loads(storage.read_text(storage.join(str(out), "summary.json")))
    assert summary["counts"] == {"songs": 3, "rendered": 2, "skipped_done": 0, "failed": 1}
    (bad,) = summary["failed"]
    assert bad["item"].endswith("garbage.mid") and "garbage.mid" in bad["error"]
    assert "not a readable MIDI file" in bad["error"]
    tracks = slakh.list_tracks(str(out))
    assert [t.track_id for t in tracks] == ["Track00001", "Track00002"]
    for track, (name, title) in zip(
        tracks, [("blues1.mid", "Blues blues-1"), ("blues2.mid", "Blues blues-2")], strict=True
    ):
        meta = track.extra
        assert (
            meta["piece_id"] == name
            and meta["collection"] == "files"
            and meta["source_midi"].endswith(name)
        )
        assert meta["style"] in styles_for((4, 4)) and meta["title"] == title
        assert meta["sections"] and meta["chord_source"] == "score" and 5 < meta["seconds"] < 30
        assert len(track.stems) >= 3 and not track.missing_stems
        mix = read_audio(track.mix_uri)
        stems = [read_audio(s.audio_uri).samples for s in track.stems]
        assert mix.sample_rate == 16000 and mix.samples.shape[0] == 1
        assert np.abs(mix.samples - meta["normalization_factor"] * sum(stems)).max() < 1e-4

    # A rerun renders nothing new and retries only the garbage.
    assert render.main(argv) == 0
    again = json.loads(storage.read_text(storage.join(str(out), "summary.json")))
    assert again["counts"] == {"songs": 3, "rendered": 0, "skipped_done": 2, "failed": 1}


@pytest.mark.parametrize("midi", ["band", "demo"])
def test_arranging_a_built_in_corpus_is_a_config_error(midi, tmp_path, capsys):
    assert render.main([f"midi={midi}", f"output={tmp_path / 'out'}", "arrange=band"]) != 0
    assert "arrange: band arranges a folder of .mid files" in capsys.readouterr().err


def test_file_songs_are_named_by_their_path_and_seeded_by_it() -> None:
    cfg = B.BandCorpusConfig(seconds=20, styles=["rock", "blues"], require_roles=["bass"])
    uris = ["s3://b/in/a.mid", "s3://b/in/sub/b.mid"]
    songs = B.file_songs(cfg, "s3://b/in", uris, seed=3)
    assert [(s.piece_id, s.name, s.collection) for s in songs] == [
        ("a.mid", "s3://b/in/a.mid", "files"),
        ("sub/b.mid", "s3://b/in/sub/b.mid", "files"),
    ]
    assert (
        songs[0].styles == ("rock", "blues")
        and songs[0].require == ("bass",)
        and songs[0].seconds == 20
    )
    # A song's seed depends on the run's seed and its id, not on the folder or the other files.
    assert B.file_songs(cfg, "file:///x", ["file:///x/a.mid"], seed=3)[0].seed == songs[0].seed
    assert B.file_songs(cfg, "s3://b/in", uris, seed=4)[0].seed != songs[0].seed
