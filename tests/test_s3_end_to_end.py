"""The whole chain on S3 only: prepare, train, separate and evaluate on ``s3://`` URIs.

A real S3 protocol server on loopback (moto's server mode) holds the demo data, and
every job reads its inputs from and writes its outputs to the bucket, as on a cluster
whose storage is S3. The model is tiny (STFT 256/128, 16-frame chunks, the smoke
hourglass, a few steps), so the chain takes well under a minute.
"""

from __future__ import annotations

import io
import json
import os

import pyarrow.parquet as pq
import pytest

from ray_jobs import evaluate, prepare, separate, train
from sepcore.evaluate import document
from sepcore.io import storage
from sepcore.models import SMOKE_CONFIGS, checkpoint
from sepcore.report import html as R
from tests.support.s3 import bucket_of, list_keys

TARGET = "guitar"

pytestmark = pytest.mark.slow


def _summary(output: str) -> dict:
    return json.loads(storage.read_text(storage.join(output, "summary.json")))


def _upload_tree(local_root: str, dest: str) -> None:
    for uri in storage.list_files(local_root):
        storage.upload(storage.local_path(uri), storage.join(dest, uri[len(local_root):]))


def test_prepare_train_separate_evaluate_entirely_on_s3(ray_in_s3_env, demo_data):
    bucket = ray_in_s3_env
    data, shards, model = (storage.join(bucket, name) for name in ("data", "shards", "model"))
    _upload_tree(demo_data, data)

    # prepare: Slakh tracks in S3 -> Parquet shards in S3.
    assert prepare.main([f"sources=[{{kind: slakh, uri: '{data}'}}]", f"output={shards}", f"target={TARGET}",
                         "features={name: stft, n_fft: 256, hop: 128}", "chunks={frames: 16}",
                         "split={train: 0.5, validation: 0.5, test: 0.0}"]) == 0  # fmt: skip
    prepared = _summary(shards)
    assert prepared["counts"]["tracks"] == 6 and prepared["counts"]["failed"] == 0

    # train: shards in S3 -> checkpoints, metrics and the best model in S3.
    assert train.main([f"data={shards}", f"output={model}", "model.name=hourglass",
                       f"model.config={json.dumps(SMOKE_CONFIGS['hourglass'])}",
                       "optim={epochs: 1, batch_size: 8, lr: 0.003, max_steps_per_epoch: 3}",
                       "validation={sdr_tracks: 1}"]) == 0  # fmt: skip
    trained = _summary(model)
    assert trained["status"] == "ok" and trained["best_checkpoint"].startswith(model + "/")
    meta = checkpoint.read_meta(checkpoint.resolve(model))
    assert meta["target"] == TARGET and meta["feature"]["n_fft"] == 256

    # separate: a library of songs in S3 -> stems and a manifest in S3.
    library, separated = storage.join(bucket, "library"), storage.join(bucket, "separated")
    mixes = sorted(u for u in storage.list_files(data) if u.endswith("/mix.flac"))[:2]
    for i, mix in enumerate(mixes):
        storage.write_bytes(storage.join(library, f"album/song{i}.flac"), storage.read_bytes(mix))
    assert separate.main([f"library={library}", f"checkpoint={model}", f"output={separated}",
                          "inference={batch_size: 32, pool_size: 1}"]) == 0  # fmt: skip
    table = pq.read_table(io.BytesIO(storage.read_bytes(storage.join(separated, separate.MANIFEST))))
    rows = table.to_pylist()
    assert [r["status"] for r in rows] == ["ok", "ok"]
    for row in rows:
        for key in ("instrument_uri", "rest_uri"):
            assert row[key].startswith(separated + "/stems/") and storage.exists(row[key])

    # evaluate: tracks and checkpoint in S3 -> metrics.json and an HTML report in S3.
    scores = storage.join(bucket, "evaluation")
    assert evaluate.main([f"data={data}", f"checkpoint={model}", f"output={scores}", "split=all", "tracks=2",
                          "segment_seconds=6", "backend=fast", "report={examples: 1, audio_seconds: 4}"]) == 0  # fmt: skip
    doc = json.loads(storage.read_text(storage.join(scores, "metrics.json")))
    document.validate_metrics(doc)
    assert doc["target"] == TARGET and doc["tracks_evaluated"] >= 1 and not doc["failed"]
    assert "model" in doc["separation"][TARGET]["methods"]
    assert storage.exists(storage.join(scores, R.REPORT_FILE))

    # Every output is committed and nothing was left half-written in the bucket.
    for output in (shards, model, separated, scores):
        assert _summary(output)["status"] == "ok", output
    keys = list_keys(bucket_of(bucket))
    assert not [k for k in keys if storage.is_temporary(k)]
    assert {k.split("/", 1)[0] for k in keys} == {"data", "shards", "model", "library", "separated", "evaluation"}
    assert os.environ.get("AWS_ENDPOINT_URL", "").startswith("http://127.0.0.1:")
