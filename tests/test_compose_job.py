"""`sep train model.name=composer` -> `sep compose` -> `sep render arrange=band`, end to end on a local Ray."""

from __future__ import annotations

import json

import numpy as np
import pytest

from ray_jobs import compose, render, train
from sepcore.compose.job import load_composer
from sepcore.compose.midi import leadsheet_from_midi
from sepcore.data import slakh
from sepcore.io import storage
from sepcore.io.audio import read_audio

pytestmark = pytest.mark.usefixtures("local_ray")  # tests/conftest.py


def test_a_trained_composer_writes_pieces_that_render_as_band_songs(tmp_path):
    out = tmp_path / "composer"
    args = ["-c", "configs/train_composer_cpu_small.yaml", f"output={out}", "sequences.sources=[blues]",
            "sequences.blues={pieces: 30, choruses: [1, 1]}", "model.config={chord_hidden: 4, melody_hidden: 8}",
            "optim.epochs=2", "scaling.cpus_per_worker=1"]  # fmt: skip
    assert train.main(args) == 0
    history = [json.loads(x) for x in storage.read_text(storage.join(str(out), "metrics.jsonl")).splitlines()]
    assert [h["epoch"] for h in history] == [0, 1]
    assert history[1]["val_loss"] == pytest.approx(history[1]["val_chord_nll"] + history[1]["val_melody_nll"])
    model, meta = load_composer(str(out))
    assert meta["task"] == "composer" and meta["sequences"]["pieces"]["blues"]["train"] > 0

    pieces = tmp_path / "composed"
    assert compose.main([f"checkpoint={out}", f"output={pieces}", "pieces=2", "bars=12", "render=false"]) == 0
    summary = json.loads(storage.read_text(storage.join(str(pieces), "summary.json")))
    assert summary["counts"]["pieces"] == 2 and summary["counts"]["written"] == 2
    doc = json.loads(storage.read_text(storage.join(str(pieces), "metrics.json")))
    lik = doc["measures"]["likelihood"]["all"]
    assert {"composer", "repeat_last", "ngram"} <= set(lik) and lik["steps"] > 0
    assert 0 <= doc["measures"]["form"]["composer"] <= 1
    assert (pieces / "report.html").read_text().count("<img") >= 3  # loss curves and two piano rolls
    files = sorted((pieces / "pieces").glob("*.mid"))
    assert [f.name for f in files] == ["composed-0-0000.mid", "composed-0-0001.mid"]
    sheet = leadsheet_from_midi(files[0].read_bytes(), files[0].name)
    assert sheet.meter == (4, 4) and sheet.length == 48.0  # 12 bars of 4/4
    assert compose.main([f"checkpoint={out}", f"output={pieces}", "pieces=2", "bars=12", "render=false",
                         "measure=false"]) == 0  # fmt: skip
    again = json.loads(storage.read_text(storage.join(str(pieces), "summary.json")))
    assert again["counts"]["written"] == 0  # finished pieces are kept

    songs = tmp_path / "songs"
    argv = [f"midi={pieces / 'pieces'}", f"output={songs}", "arrange=band", "band.seconds=6", "sample_rate=16000",
            "channels=1", "band.require_roles=[drums, bass]"]  # fmt: skip
    assert render.main(argv) == 0
    tracks = slakh.list_tracks(str(songs))
    assert len(tracks) == 2
    for track in tracks:
        assert track.extra["piece_id"].startswith("composed-0-") and not track.missing_stems
        classes = {s.inst_class for s in track.stems}
        assert {"Drums", "Bass"} <= classes
        mix = read_audio(track.mix_uri)
        stems = sum(read_audio(s.audio_uri).samples for s in track.stems)
        np.testing.assert_allclose(mix.samples, track.extra["normalization_factor"] * stems, atol=1e-4)
