"""The prepare job with sources and shards on the loopback S3 server."""

from __future__ import annotations

import json

import pyarrow as pa
import pyarrow.parquet as pq

from ray_jobs import prepare
from sepcore.io import storage
from tests.support.s3 import bucket_of, list_keys


def test_prepare_reads_and_writes_s3(ray_in_s3_env, demo_data):
    bucket = ray_in_s3_env
    for uri in storage.list_files(demo_data):
        storage.upload(storage.local_path(uri), storage.join(bucket, "data", uri[len(demo_data):]))
    out = storage.join(bucket, "shards")
    args = [f"sources=[{{kind: slakh, uri: '{bucket}/data'}}]", f"output={out}", "target=drums"]
    assert prepare.main(args) == 0

    summary = json.loads(storage.read_text(storage.join(out, "summary.json")))
    manifest = json.loads(storage.read_text(storage.join(out, "dataset.json")))
    assert summary["counts"]["failed"] == 0 and summary["counts"]["tracks"] == 6
    assert len(manifest["shards"]) == summary["counts"]["prepared"] > 0
    for shard in manifest["shards"]:
        assert shard["uri"].startswith(out + "/shards/" + shard["split"] + "/")
        table = pq.read_table(pa.BufferReader(storage.read_bytes(shard["uri"])))
        assert table.column_names == manifest["columns"] and table.num_rows == shard["rows"]
        assert set(table.column("track_id").to_pylist()) == {shard["track_id"]}
    splits = [t for ids in manifest["splits"].values() for t in ids]
    assert len(splits) == len(set(splits))
    keys = list_keys(bucket_of(bucket))
    assert not [k for k in keys if storage.is_temporary(k)]
