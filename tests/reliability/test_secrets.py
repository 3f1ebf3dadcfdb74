"""Secrets (issue 10, item 8): S3 credentials never reach a log or an output.

``python -m ray_jobs.separate`` runs as its own process, with its own local Ray (whose
session folder, logs included, goes below a temporary ``RAY_TMPDIR``), against the
loopback S3 server with recognisable fake credentials (moto accepts any). One file
is made to fail so the error paths log too, and the log level is DEBUG (botocore's
DEBUG records would carry the signed request headers, access key id included).
Pass: neither the access key id nor the secret appears in the job's stdout or
stderr, in any file of Ray's session folder (driver, worker, raylet and GCS logs), or
in any object the job wrote to the bucket (stems, manifest, records, config.yaml,
summary.json).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile

from sepcore.io import storage
from tests.support.reliability import (
    files_containing,
    job_command,
    kill_processes_mentioning,
    manifest_rows,
    tiny_checkpoint,
    tone_library,
)
from tests.support.s3 import environment_for, list_keys, s3_client

ACCESS_KEY = "AKIASEPTESTCANARY1234"
SECRET_KEY = "sEcReTcAnArY/9f3Kq+ZwXy7TtLmNoPqRsTuVwXyZ01"
NEEDLES = [ACCESS_KEY.encode(), SECRET_KEY.encode(), b"sEcReTcAnArY"]


def test_fake_credentials_appear_in_no_log_and_no_output(s3_server, s3_bucket, tmp_path):
    bucket = s3_bucket
    lib = tmp_path / "library"
    paths = tone_library(str(lib), 4, seconds=2.0)
    for p in paths:
        storage.upload(p, storage.join(bucket, "music", os.path.relpath(p, lib)))
    ckpt = tiny_checkpoint(storage.join(bucket, "models", "best"))
    out = storage.join(bucket, "stems")

    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    for name, value in environment_for(s3_server).items():
        if value is None:
            env.pop(name, None)
        else:
            env[name] = value
    ray_tmp = tempfile.mkdtemp(prefix="sep-rs-", dir="/tmp")  # short: Ray's socket paths
    env.update(AWS_ACCESS_KEY_ID=ACCESS_KEY, AWS_SECRET_ACCESS_KEY=SECRET_KEY,
               RAY_TMPDIR=ray_tmp, SEP_FAULTS="decode_raise:*song 002*",
               SEP_LOG_LEVEL="DEBUG")  # fmt: skip
    try:
        proc = subprocess.run(
            job_command("separate", f"library={storage.join(bucket, 'music')}", f"output={out}",
                        f"checkpoint={ckpt}", "num_cpus=2",
                        "inference={batch_size: 32, pool_size: 2}"),
            env=env, capture_output=True, timeout=300,
        )  # fmt: skip
        logs = proc.stdout + proc.stderr
        assert proc.returncode == 0, logs.decode(errors="replace")[-3000:]
        assert b"song 002" in logs and b"separate" in logs  # the logs were captured
        assert not [n for n in NEEDLES if n in logs], "credentials in the job's output"

        session_files = [os.path.join(d, f) for d, _, fs in os.walk(ray_tmp) for f in fs]
        assert any("/logs/" in f for f in session_files), "no Ray logs found"
        assert files_containing(ray_tmp, NEEDLES) == {}
    finally:
        kill_processes_mentioning(ray_tmp)  # anything of that Ray still alive
        shutil.rmtree(ray_tmp, ignore_errors=True)

    rows = manifest_rows(out)  # read with the test's own (fake) credentials
    assert sorted(r["status"] for r in rows.values()) == ["error", "ok", "ok", "ok"]
    keys = list_keys(bucket)
    for key in ("stems/summary.json", "stems/config.yaml", "stems/manifest.parquet"):
        assert key in keys
    client = s3_client(s3_server)
    for key in keys:
        body = client.get_object(Bucket=bucket.removeprefix("s3://"), Key=key)["Body"].read()
        assert not [n for n in NEEDLES if n in body], key
