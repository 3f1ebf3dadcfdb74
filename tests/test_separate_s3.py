"""The separate job against the loopback S3 server: library, checkpoint and output in S3."""

from __future__ import annotations

import io
import json
import os

import pyarrow.parquet as pq
import pytest
import soundfile as sf

from ray_jobs import separate as job
from sepcore.io import storage
from sepcore.models import SMOKE_CONFIGS, build_model, checkpoint
from tests.support.library import make_library


def _manifest(output: str) -> dict[str, dict]:
    table = pq.read_table(io.BytesIO(storage.read_bytes(storage.join(output, job.MANIFEST))))
    return {row["relative"]: row for row in table.to_pylist()}


def _run(library: str, output: str, ckpt: str, *extra: str) -> int:
    return job.main([f"library={library}", f"output={output}", f"checkpoint={ckpt}",
                     "inference={batch_size: 32, pool_size: 2}", *extra])  # fmt: skip


def test_separate_job_on_s3(ray_in_s3_env, tmp_path, demo_data):
    bucket = ray_in_s3_env
    mixes = [u for u in storage.list_files(demo_data) if u.endswith("/mix.flac")]
    lib = tmp_path / "library"
    paths = make_library(mixes[:3], str(lib))
    for p in paths:
        storage.upload(p, storage.join(bucket, "music", os.path.relpath(p, lib)))
    ckpt = storage.join(bucket, "models", "best")  # saved straight to S3
    model = checkpoint.LogMagnitude(build_model("hourglass", **SMOKE_CONFIGS["hourglass"]))
    meta = {"model": {"name": "hourglass", "config": SMOKE_CONFIGS["hourglass"], "log_input": True},
            "task": "separator", "target": "bass", "sample_rate": 22050, "channels": 1,
            "feature": {"name": "stft", "n_fft": 256, "hop": 128}, "frames": 16}  # fmt: skip
    checkpoint.save(ckpt, model, meta)
    out = storage.join(bucket, "stems-out")
    assert _run(storage.join(bucket, "music"), out, ckpt, "format=wav") == 0
    rows = _manifest(out)
    assert len(rows) == 3 and {r["status"] for r in rows.values()} == {"ok"}
    for row in rows.values():
        assert row["instrument_uri"].startswith(out + "/stems/") and row["rest_uri"].endswith(".wav")
        inst, _ = sf.read(io.BytesIO(storage.read_bytes(row["instrument_uri"])), always_2d=True)
        assert inst.shape[0] == pytest.approx(row["duration_s"] * row["sample_rate"], abs=1)
    assert _run(storage.join(bucket, "music"), out, ckpt, "format=wav") == 0
    assert {r["status"] for r in _manifest(out).values()} == {"skipped"}
    summary = json.loads(storage.read_text(storage.join(out, "summary.json")))
    assert summary["counts"] == {"files": 3, "ok": 0, "error": 0, "skipped": 3, "not_attempted": 0}
