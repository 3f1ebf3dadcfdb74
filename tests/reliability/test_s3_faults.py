"""S3 faults (issue 10, item 5): the separate job through an unreliable S3 endpoint.

Everything S3 goes through :class:`tests.support.s3_faults.FaultyS3Proxy` in front of
the loopback moto server: a seeded share of requests gets ``503 SlowDown`` or a
connection reset (before or after the request took effect). Ray is started inside
that environment, so the actors' requests go through the proxy too. Retries are the
defaults: s3fs's (5, for SlowDown and connection errors) around botocore's (5
attempts, ``AWS_MAX_ATTEMPTS``), so the persistent failure below takes about 45 s
to give up.

Pass: zero files lost, stems byte-identical to a run without faults, no temporary
keys or unfinished multipart uploads left; a persistent failure is reported for its
file with the key and the cause, and the other files are done.
"""

from __future__ import annotations

import os

import pytest

from sepcore.io import storage
from tests.support.rays import own_ray
from tests.support.reliability import manifest_rows, read_summary, tiny_checkpoint, tone_library
from tests.support.s3 import (
    list_keys,
    list_multipart_uploads,
    s3_client,
    s3_environment,
    temporary_bucket,
)
from tests.support.s3_faults import FaultyS3Proxy

FILES = 8


@pytest.fixture(scope="module")
def proxy(s3_server):
    with FaultyS3Proxy(s3_server, slowdown=0.08, reset=0.05, seed=1,
                       always_fail=("PUT /*/persistent/stems/00/song 003.wav-*/rest.flac*",)) as p:  # fmt: skip
        p.enabled = False
        yield p


@pytest.fixture(scope="module")
def setup(proxy, tmp_path_factory):
    """A bucket with a library and a checkpoint, Ray started behind the proxy."""
    tmp = tmp_path_factory.mktemp("s3faults")
    with pytest.MonkeyPatch.context() as mp, s3_environment(proxy.endpoint_url):
        mp.delenv("AWS_MAX_ATTEMPTS", raising=False)
        mp.delenv("AWS_RETRY_MODE", raising=False)
        with temporary_bucket() as bucket:
            paths = tone_library(str(tmp / "library"), FILES, seconds=2.0)
            for p in paths:
                storage.upload(p, storage.join(bucket, "music", os.path.relpath(p, tmp / "library")))
            ckpt = tiny_checkpoint(storage.join(bucket, "models", "best"))
            with own_ray():  # its workers inherit the proxy's environment
                yield bucket, ckpt


def _run(bucket: str, ckpt: str, out: str) -> int:
    from ray_jobs import separate as job

    return job.main([f"library={storage.join(bucket, 'music')}", f"output={out}",
                     f"checkpoint={ckpt}", "inference={batch_size: 32, pool_size: 2}"])  # fmt: skip


def _objects(bucket: str, prefix: str) -> dict[str, bytes]:
    client, name = s3_client(), bucket.removeprefix("s3://")
    return {k[len(prefix):]: client.get_object(Bucket=name, Key=k)["Body"].read()
            for k in list_keys(bucket, prefix)}  # fmt: skip


def _no_leftovers(bucket: str) -> None:
    keys = list_keys(bucket)
    assert [k for k in keys if storage.is_temporary(k)] == []
    assert [k for k in keys if "/_records/" in k or "/_started/" in k] == []
    assert list_multipart_uploads(bucket) == []


def test_transient_faults_lose_nothing_and_change_no_byte(proxy, setup):
    bucket, ckpt = setup
    assert _run(bucket, ckpt, storage.join(bucket, "clean")) == 0
    proxy.enabled = True
    before = sum(proxy.counts[k] for k in ("slowdown", "reset_before", "reset_after"))
    try:
        assert _run(bucket, ckpt, storage.join(bucket, "faulty")) == 0
    finally:
        proxy.enabled = False
    faults = sum(proxy.counts[k] for k in ("slowdown", "reset_before", "reset_after")) - before
    assert faults >= 10, dict(proxy.counts)  # the run did meet faults

    rows = manifest_rows(storage.join(bucket, "faulty"))
    assert len(rows) == FILES and {r["status"] for r in rows.values()} == {"ok"}
    clean = _objects(bucket, "clean/stems/")
    faulty = _objects(bucket, "faulty/stems/")
    assert len(clean) == 2 * FILES and sorted(faulty) == sorted(clean)
    assert [k for k in clean if faulty[k] != clean[k]] == []
    assert read_summary(storage.join(bucket, "faulty"))["counts"]["ok"] == FILES
    _no_leftovers(bucket)


def test_a_persistent_failure_is_reported_with_the_key_and_the_cause(proxy, setup):
    bucket, ckpt = setup
    out = storage.join(bucket, "persistent")
    proxy.enabled = True
    try:
        assert _run(bucket, ckpt, out) == 0
    finally:
        proxy.enabled = False
    assert proxy.failed_requests  # the persistent fault was hit
    rows = manifest_rows(out)
    bad = rows["00/song 003.wav"]
    assert bad["status"] == "error" and bad["error_class"] == "StorageError"
    assert "/stems/00/song 003.wav-" in bad["error"] and "rest.flac" in bad["error"]
    assert "reduce your request rate" in bad["error"]
    assert {r["status"] for rel, r in rows.items() if rel != "00/song 003.wav"} == {"ok"}
    failed = read_summary(out)["failed"]
    assert [f["item"] for f in failed] == [bad["source"]]
    assert [k for k in list_keys(bucket, "persistent/stems/") if "song 003" in k] == []
    _no_leftovers(bucket)
