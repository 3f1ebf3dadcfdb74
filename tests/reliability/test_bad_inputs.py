"""Bad inputs (issue 10, item 6): every problem file gets its own error, the rest is done.

A library holding the files a nightly job meets sooner or later goes through the
separate job; Slakh-layout data with a malformed ``metadata.yaml`` and a missing stem
goes through prepare; a MIDI file without notes goes through render. Pass: each bad
item gets an error naming the file and the problem, no output holds NaN or Inf,
every good item is done, and the job exits 0.
"""

from __future__ import annotations

import io
import json
import os
import shutil

import mido
import numpy as np
import pyarrow.parquet as pq
import pytest

from ray_jobs import prepare, render
from ray_jobs import separate as job
from sepcore.data import slakh
from sepcore.io import storage
from sepcore.prepare.pairs import decode_column
from tests.support.midi import multitrack_midi
from tests.support.reliability import (
    BAD_INPUTS,
    MAX_SECONDS,
    bad_inputs,
    check_stems,
    manifest_rows,
    read_summary,
    tiny_checkpoint,
    tone_library,
)

pytestmark = pytest.mark.usefixtures("local_ray")  # tests/conftest.py


def test_separate_reports_each_bad_file_and_does_every_good_one(tmp_path):
    lib = tmp_path / "library"
    good = tone_library(str(lib / "good"), 3, seconds=3.0)
    bad_inputs(str(lib), long_seconds=60.0)
    ckpt = tiny_checkpoint(str(tmp_path / "ckpt"))
    out = storage.normalize_uri(str(tmp_path / "out"))
    argv = [f"library={lib}", f"output={out}", f"checkpoint={ckpt}",
            f"decode={{timeout_s: 60, max_seconds: {MAX_SECONDS}}}",
            "inference={batch_size: 32, pool_size: 2}"]  # fmt: skip
    assert job.main(argv) == 0

    rows = manifest_rows(out)
    expected = {rel: outcome for rel, outcome in BAD_INPUTS.values()}
    expected.update({os.path.relpath(p, lib): "ok" for p in good})
    assert sorted(rows) == sorted(expected)  # every file listed once, nothing else
    for rel, outcome in expected.items():
        row = rows[rel]
        if outcome == "ok":
            assert row["status"] == "ok", (rel, row["error"])
            inst, rest = check_stems(row)  # decodable, finite
            assert inst.shape[0] == pytest.approx(row["duration_s"] * row["sample_rate"], abs=1)
            assert storage.parent(row["instrument_uri"]).startswith(storage.join(out, "stems") + "/")
        else:
            assert row["status"] == "error", (rel, row)
            assert row["error_class"] == outcome, (rel, row["error_class"], row["error"])
            # the message names the file (its full URI) and says what is wrong
            assert row["error"].startswith(row["source"] + ": ") and len(row["error"]) > len(
                row["source"]
            ) + 10, row["error"]
            assert row["instrument_uri"] is None and row["rest_uri"] is None
        for key in ("duration_s", "total_s", "decode_s", "separate_s"):
            assert row[key] is None or np.isfinite(row[key]), (rel, key, row[key])

    def problem(key: str) -> str:
        return rows[BAD_INPUTS[key][0]]["error"]

    assert "empty" in problem("empty")
    assert "NaN or Inf" in problem("nan_inf")
    assert "4096" in problem("thousands_of_channels") or "channels" in problem("thousands_of_channels")
    assert "1000 channels" in problem("hundreds_of_channels")
    assert "12 channels" in problem("twelve_channel") and "FLAC" in problem("twelve_channel")
    assert f"{MAX_SECONDS:g} s" in problem("too_long")
    assert rows[BAD_INPUTS["six_channel"][0]]["channels"] == 6
    assert rows[BAD_INPUTS["long"][0]]["duration_s"] == pytest.approx(60.0)
    assert rows[BAD_INPUTS["truncated_wav"][0]]["duration_s"] == pytest.approx(5.0, abs=0.1)
    assert 0 < rows[BAD_INPUTS["ogg_no_eos"][0]]["duration_s"] < 8.0
    # NFC and NFD spellings of one name are two files with two output folders
    folders = {storage.parent(r["instrument_uri"]) for r in rows.values() if r["status"] == "ok"}
    assert len(folders) == sum(1 for o in expected.values() if o == "ok")

    summary = read_summary(out)  # strict JSON: no NaN or Infinity anywhere
    n_bad = sum(1 for o in expected.values() if o != "ok")
    assert summary["status"] == "ok"
    assert summary["counts"]["error"] == n_bad and summary["counts"]["ok"] == len(expected) - n_bad
    failed = {f["item"]: f["error"] for f in summary["failed"]}
    assert sorted(failed) == sorted(r["source"] for r in rows.values() if r["status"] == "error")
    assert storage.list_files(storage.join(out, job.RECORDS)) == []


def _copy_demo(demo_data: str, dest) -> list[str]:
    shutil.copytree(storage.local_path(demo_data), dest)
    return sorted(p for p in os.listdir(dest) if p.startswith("Track"))


def test_prepare_reports_malformed_metadata_and_missing_stems(demo_data, tmp_path):
    data = tmp_path / "data"
    tracks = _copy_demo(demo_data, data)
    broken, missing, bad_field = tracks[1], tracks[2], tracks[3]
    (data / broken / "metadata.yaml").write_text("stems: {S00: [unclosed\n")
    meta = (data / bad_field / "metadata.yaml").read_text()
    (data / bad_field / "metadata.yaml").write_text(meta.replace("program_num:", "program_nmu:", 1))
    (record,) = slakh.list_tracks(str(data / missing))
    gone = record.stems[0]
    os.remove(storage.local_path(gone.audio_uri))

    out = tmp_path / "out"
    args = [f"sources=[{{kind: slakh, uri: '{data}'}}]", f"output={out}", "target=guitar",
            "features={name: stft, n_fft: 256, hop: 128}", "chunks={frames: 16}",
            "max_failed_fraction=0.9"]  # fmt: skip
    assert prepare.main(args) == 0
    summary = read_summary(storage.normalize_uri(str(out)))
    failed = {f["item"]: f["error"] for f in summary["failed"] if f["item"] != "listing"}
    listing = [f["error"] for f in summary["failed"] if f["item"] == "listing"]
    assert any(f"{broken}/metadata.yaml" in e and "YAML" in e for e in listing), listing
    assert any(f"{bad_field}/metadata.yaml" in e and "program_num" in e for e in listing), listing
    assert len(listing) == 2
    assert list(failed) == [f"slakh:{missing}"], failed
    assert f"{missing}/stems/{gone.stem_id}" in failed[f"slakh:{missing}"]
    assert "missing" in failed[f"slakh:{missing}"]
    # the 2 tracks that could not be listed count among the tracks, for max_failed_fraction too
    assert summary["counts"]["tracks"] == len(tracks) and summary["counts"]["failed"] == 3

    dataset = json.loads((out / "dataset.json").read_text())
    prepared = {s["uri"].rsplit("/", 1)[-1].split("-")[0] for s in dataset["shards"]}
    good = [t for t in tracks if t not in (broken, missing, bad_field)]
    # every good track is prepared, or skipped for a stated reason (no guitar)
    for t in good:
        assert f"slakh_{t}" in prepared or f"slakh:{t}" in dataset["skipped"], t
    assert prepared and f"slakh_{missing}" not in prepared
    for shard in dataset["shards"]:  # nothing non-finite was written
        table = pq.read_table(storage.local_path(shard["uri"])).to_pydict()
        for col, shape in dataset["shapes"].items():
            values = decode_column(table[col], shape, dataset["dtype"]).astype(np.float32)
            assert np.isfinite(values).all(), (shard["uri"], col)


def _no_notes_midi() -> bytes:
    mid = mido.MidiFile(type=1)
    track = mido.MidiTrack([mido.MetaMessage("set_tempo", tempo=500000),
                            mido.Message("program_change", channel=0, program=24),
                            mido.MetaMessage("end_of_track", time=960)])  # fmt: skip
    mid.tracks.append(track)
    buf = io.BytesIO()
    mid.save(file=buf)
    return buf.getvalue()


def test_render_reports_a_midi_file_without_notes(tmp_path):
    midi = tmp_path / "midi"
    midi.mkdir()
    (midi / "a good one.mid").write_bytes(multitrack_midi(seconds=1.0))
    (midi / "b no notes.mid").write_bytes(_no_notes_midi())
    (midi / "c empty.mid").write_bytes(b"")
    out = tmp_path / "out"
    assert render.main([f"midi={midi}", f"output={out}", "sample_rate=22050", "channels=1",
                        "max_failed_fraction=0.7"]) == 0  # fmt: skip
    summary = read_summary(storage.normalize_uri(str(out)))
    failed = {f["item"].rsplit("/", 1)[-1]: f["error"] for f in summary["failed"]}
    assert sorted(failed) == ["b no notes.mid", "c empty.mid"]
    assert "no notes" in failed["b no notes.mid"]
    assert summary["counts"]["rendered"] == 1
    (track,) = slakh.list_tracks(str(out))
    assert track.stems
