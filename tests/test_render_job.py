"""The render job on a real local Ray: summary, failures recorded, reruns skip done work."""

from __future__ import annotations

import json

import pytest
import yaml

from ray_jobs import render
from sepcore.data import slakh
from sepcore.io import storage
from tests.support.midi import DEFAULT_PARTS, multitrack_midi

pytestmark = pytest.mark.usefixtures("local_ray")  # tests/conftest.py


@pytest.fixture
def midi_folder(tmp_path):
    folder = tmp_path / "midi"
    folder.mkdir()
    (folder / "a_song.mid").write_bytes(multitrack_midi(seconds=1.5))
    (folder / "b_broken.mid").write_bytes(b"MThd garbage")
    (folder / "c_song.midi").write_bytes(multitrack_midi(seconds=1.0, parts=DEFAULT_PARTS[1:]))
    (folder / "notes.txt").write_text("not a MIDI file, ignored")
    return folder


def _summary(out) -> dict:
    return json.loads(storage.read_text(storage.join(str(out), "summary.json")))


def test_render_job_renders_good_songs_and_records_bad_ones(midi_folder, tmp_path):
    out = tmp_path / "out"
    argv = [f"midi={midi_folder}", f"output={out}", "sample_rate=22050", "channels=1"]
    assert render.main(argv) == 0
    summary = _summary(out)
    assert summary["status"] == "ok"
    assert summary["counts"] == {"songs": 3, "rendered": 2, "skipped_done": 0, "failed": 1}
    (bad,) = summary["failed"]
    assert bad["item"].endswith("b_broken.mid") and "not a readable MIDI file" in bad["error"]
    assert summary["config"]["sample_rate"] == 22050 and summary["nodes"]
    tracks = slakh.list_tracks(str(out))
    # Track numbers follow the sorted MIDI names, so the broken song leaves a gap.
    assert [t.track_id for t in tracks] == ["Track00001", "Track00003"]
    assert [len(t.stems) for t in tracks] == [4, 3]
    assert tracks[1].extra["source_midi"].endswith("c_song.midi")

    # A rerun renders nothing new and retries only the failure.
    assert render.main(argv) == 0
    again = _summary(out)
    assert again["counts"] == {"songs": 3, "rendered": 0, "skipped_done": 2, "failed": 1}


def test_render_job_fails_when_too_many_songs_fail(tmp_path):
    folder = tmp_path / "midi"
    folder.mkdir()
    for i in range(2):
        (folder / f"bad{i}.mid").write_bytes(b"")
    out = tmp_path / "out"
    assert render.main([f"midi={folder}", f"output={out}"]) == 1
    assert _summary(out)["status"] == "failed"


def test_render_job_reports_missing_input(tmp_path, capsys):
    assert render.main([f"midi={tmp_path / 'nothing'}", f"output={tmp_path / 'out'}"]) == 1
    assert "no .mid files found" in capsys.readouterr().err


def test_a_song_that_hangs_is_cancelled_at_its_time_limit(midi_folder, tmp_path, ray_with_faults):
    import time


    with ray_with_faults("item_hang:*c_song*"):
        out = tmp_path / "out"
        start = time.monotonic()
        argv = [f"midi={midi_folder}", f"output={out}", "sample_rate=22050", "channels=1",
                "item_timeout_s=4", "max_failed_fraction=1"]
        assert render.main(argv) == 0
        wall = time.monotonic() - start
    summary = _summary(out)
    assert summary["counts"] == {"songs": 3, "rendered": 1, "skipped_done": 0, "failed": 2}
    failed = {f["item"].rsplit("/", 1)[-1]: f["error"] for f in summary["failed"]}
    assert "not a readable MIDI file" in failed["b_broken.mid"]
    assert failed["c_song.midi"].endswith(
        "c_song.midi: no result within 4 s (time limit per item, key item_timeout_s); the task was cancelled"
    )
    assert [t.track_id for t in slakh.list_tracks(str(out))] == ["Track00001"]
    assert wall < 60, wall


def test_the_time_limit_counts_from_a_task_start_not_its_submission():
    import time

    from ray_jobs.common import ItemTasks

    # 6 tasks of 2 s on 2 CPUs run in 3 waves: the last start some 4 s (plus worker
    # start-up) after their submission, yet each runs 2 s, well inside its limit.
    tasks = ItemTasks(6.0, "item_timeout_s", num_cpus=1)
    for i in range(6):
        tasks.submit(f"item {i}", time.sleep, 2.0)
    start = time.monotonic()
    finished = list(tasks.gather())
    assert time.monotonic() - start > 6.0  # really queued
    assert sorted(f.item for f in finished) == [f"item {i}" for i in range(6)]
    assert all(f.error is None for f in finished), [f.error for f in finished]


def test_band_songs_render_in_the_slakh_layout_and_a_corrupt_piece_is_recorded(tmp_path):
    corrupt = tmp_path / "corrupt.abc"
    corrupt.write_text("X:1\nT:Broken\nM:4/4\nK:G\n|: ]]] (((\n")
    out = tmp_path / "band"
    pieces = f"[nottingham-dataset/reelsa-c.abc#80, {corrupt}]"
    argv = ["midi=band", f"output={out}", f"band.piece_ids={pieces}", "band.seconds=10",
            "soundfonts=[fluidr3, timgm6mb]", "stem_loudness_lufs=-20", "sample_rate=22050", "channels=1"]  # fmt: skip
    assert render.main(argv) == 0
    summary = _summary(out)
    assert summary["counts"] == {"songs": 2, "rendered": 1, "skipped_done": 0, "failed": 1}
    (bad,) = summary["failed"]
    assert bad["item"] == f"band:{corrupt}" and str(corrupt) in bad["error"]
    (track,) = slakh.list_tracks(str(out))
    meta = track.extra
    assert meta["piece_id"].endswith("#80") and meta["collection"] == "nottingham"
    assert meta["sections"][0]["start_s"] == 0 and meta["style"]
    stems = [s for s in yaml.safe_load(storage.read_text(storage.join(str(out), "Track00001", "metadata.yaml")))["stems"].values()]
    assert {s["soundfont_family"] for s in stems} <= {"fluidr3", "timgm6mb"}
    assert {s["role"] for s in stems} & {"drums", "bass", "guitar", "piano", "strings", "other"}


def test_a_training_render_refuses_the_held_out_soundfont(tmp_path, capsys):
    argv = ["midi=band", f"output={tmp_path / 'x'}", "soundfonts=[fluidr3, musescore]"]
    assert render.main(argv) == 2
    assert "musescore" in capsys.readouterr().err
