"""The render job with its input and output on the loopback S3 server."""

from __future__ import annotations

import json

import numpy as np

from ray_jobs import render
from sepcore.data import slakh
from sepcore.io import storage
from sepcore.io.audio import read_audio
from tests.support.midi import DEFAULT_PARTS, multitrack_midi
from tests.support.s3 import bucket_of, list_keys


def test_render_job_reads_and_writes_s3(ray_in_s3_env):
    bucket = ray_in_s3_env
    storage.write_bytes(storage.join(bucket, "midi", "one.mid"), multitrack_midi(seconds=1.0))
    storage.write_bytes(storage.join(bucket, "midi", "two.mid"), multitrack_midi(seconds=1.0, parts=DEFAULT_PARTS[:2]))
    out = storage.join(bucket, "rendered")
    assert render.main([f"midi={bucket}/midi", f"output={out}", "sample_rate=16000", "channels=1"]) == 0

    summary = json.loads(storage.read_text(storage.join(out, "summary.json")))
    assert summary["counts"]["rendered"] == 2 and summary["failed"] == []
    tracks = slakh.list_tracks(out)
    assert [len(t.stems) for t in tracks] == [4, 2]
    track = tracks[1]
    mix = read_audio(track.mix_uri)
    stems = [read_audio(s.audio_uri).samples for s in track.stems]
    assert np.abs(mix.samples - track.extra["normalization_factor"] * sum(stems)).max() < 1e-4
    keys = list_keys(bucket_of(bucket))
    assert not [k for k in keys if storage.is_temporary(k)]
    assert all(k.startswith(("midi/", "rendered/")) for k in keys)
