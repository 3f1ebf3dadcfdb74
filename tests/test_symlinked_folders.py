"""Jobs on local folders whose albums or tracks are symbolic links (issue 17, item 10)."""

from __future__ import annotations

import json
import os
import shutil

import pytest
from test_evaluate_job import _save
from test_separate_job import _manifest, _run

from ray_jobs import evaluate
from sepcore.io import storage
from sepcore.models import SMOKE_CONFIGS

pytestmark = pytest.mark.usefixtures("local_ray")  # tests/conftest.py


@pytest.fixture(scope="module")
def separator(tmp_path_factory) -> str:
    """An (untrained) small hourglass guitar separator, STFT 256/128, 16 frames."""
    meta = {"task": "separator", "target": "guitar",
            "feature": {"name": "stft", "n_fft": 256, "hop": 128}}  # fmt: skip
    return _save(tmp_path_factory.mktemp("ckpt"), "hourglass", SMOKE_CONFIGS["hourglass"], meta)


def test_separate_follows_a_symlinked_album_and_processes_it_once(tmp_path, demo_data, separator):
    src = storage.local_path(demo_data)
    album = tmp_path / "elsewhere" / "album"
    album.mkdir(parents=True)
    shutil.copy(f"{src}/Track00001/mix.flac", album / "song.flac")
    lib = tmp_path / "library"
    lib.mkdir()
    shutil.copy(f"{src}/Track00002/mix.flac", lib / "in place.flac")
    os.symlink(album, lib / "album")
    os.symlink(album, lib / "mirror")  # the same album twice: separated once
    out = str(tmp_path / "out")
    assert _run(str(lib), out, separator) == 0

    rows = _manifest(out)
    assert sorted(rows) == ["album/song.flac", "in place.flac"]
    for rel, row in rows.items():
        assert row["status"] == "ok", (rel, row["error"])
        for key in ("instrument_uri", "rest_uri"):
            assert os.path.getsize(storage.local_path(row[key])) > 0


def test_evaluate_reads_symlinked_slakh_tracks(tmp_path, demo_data, separator):
    data = tmp_path / "data"
    data.mkdir()
    for name in ("Track00001", "Track00003"):
        os.symlink(f"{storage.local_path(demo_data)}/{name}", data / name)
    out = tmp_path / "eval"
    args = [f"data={data}", f"checkpoint={separator}", f"output={out}", "split=all",
            "tracks=1", "segment_seconds=6", "backend=fast", "report={examples: 0}"]  # fmt: skip
    assert evaluate.main(args) == 0

    doc = json.loads((out / "metrics.json").read_text())
    assert doc["tracks_evaluated"] == 1 and doc["failed"] == []
    tracks = doc["separation"]["guitar"]["tracks"]
    assert [t["track_id"] for t in tracks] == ["slakh:Track00001"]
