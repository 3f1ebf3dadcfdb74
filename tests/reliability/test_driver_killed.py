"""Driver killed, then rerun (issue 10, item 2), for the separate and prepare jobs.

``python -m ray_jobs.separate`` (and ``prepare``) runs as a driver process of its own
(attached to the test's local Ray) and is killed with SIGKILL once some files (tracks)
are done; the same command is run again. Pass: the outputs equal those of an
uninterrupted run (same keys, same bytes: both jobs are deterministic on CPU), and
what the killed run had finished is not processed again (separate: those rows are
``skipped`` and their stems untouched; prepare: counted as done before, shards
untouched).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time

import pytest
import ray

from ray_jobs import separate as job
from sepcore.io import storage
from sepcore.separate import state as separate_state
from tests.support.reliability import (
    finished,
    job_command,
    manifest_rows,
    read_summary,
    records,
    settled,
    stem_files,
    tiny_checkpoint,
    tone_library,
)

FILES = 30


pytestmark = pytest.mark.usefixtures("local_ray")  # tests/conftest.py


def test_a_killed_driver_is_finished_by_the_rerun_with_the_same_outputs(tmp_path):
    lib = tmp_path / "library"
    tone_library(str(lib), FILES, seconds=3.0)
    ckpt = tiny_checkpoint(str(tmp_path / "ckpt"))
    args = [f"library={lib}", f"checkpoint={ckpt}", "inference={batch_size: 32, pool_size: 2}"]
    clean = storage.normalize_uri(str(tmp_path / "clean"))
    assert job.main([*args, f"output={clean}"]) == 0

    out = storage.normalize_uri(str(tmp_path / "out"))
    env = {**os.environ, "RAY_ADDRESS": ray.get_runtime_context().gcs_address}
    cmd = job_command("separate", *args, f"output={out}")
    with open(tmp_path / "first.log", "wb") as log:
        proc = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 240
        while len(records(out)) < FILES // 3 and proc.poll() is None:
            assert time.monotonic() < deadline, "the first run made no progress"
            time.sleep(0.05)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    assert proc.returncode == -signal.SIGKILL, (tmp_path / "first.log").read_text()[-2000:]
    assert not storage.exists(storage.join(out, job.MANIFEST))  # killed before its commit
    settled(lambda: records(out))  # a task already running may still finish
    done = finished(out)
    assert FILES // 3 <= len(done) < FILES
    before = stem_files(out)

    rerun = subprocess.run(cmd, env=env, capture_output=True, timeout=300)
    assert rerun.returncode == 0, rerun.stderr.decode(errors="replace")[-3000:]

    rows = manifest_rows(out)
    assert len(rows) == FILES
    skipped = {separate_state.key(r["source"]) for r in rows.values() if r["status"] == "skipped"}
    assert skipped == done  # exactly the finished files were not done again ...
    assert {r["status"] for r in rows.values()} == {"ok", "skipped"}
    summary = read_summary(out)
    assert summary["counts"]["skipped"] == len(done) and summary["counts"]["ok"] == FILES - len(done)
    after = stem_files(out)
    for r in rows.values():  # ... and their stems were left as they were
        if r["status"] == "skipped":
            key = os.path.relpath(storage.local_path(r["instrument_uri"]),
                                  storage.local_path(storage.join(out, "stems")))  # fmt: skip
            assert after[key] == before[key]
    # Same keys and bytes as the uninterrupted run, and nothing else.
    reference = stem_files(clean)
    assert sorted(after) == sorted(reference)
    assert [k for k in reference if after[k] != reference[k]] == []
    clean_rows = manifest_rows(clean)
    assert sorted(clean_rows) == sorted(rows)
    assert storage.list_files(storage.join(out, job.RECORDS)) == []


def _done_markers(out) -> set[str]:
    folder = os.path.join(str(out), "_done")
    return {n for n in os.listdir(folder) if n.endswith(".json")} if os.path.isdir(folder) else set()


def _shards(out) -> dict[str, bytes]:
    root = os.path.join(str(out), "shards")
    return {os.path.relpath(os.path.join(d, n), root): open(os.path.join(d, n), "rb").read()
            for d, _, names in os.walk(root) for n in names if not storage.is_temporary(n)}  # fmt: skip


def test_a_killed_prepare_driver_is_finished_by_the_rerun(demo_data, tmp_path):
    args = [f"sources=[{{kind: slakh, uri: '{demo_data}'}}]", "target=guitar",
            "outputs=[target, activations]"]  # fmt: skip
    clean = tmp_path / "clean"
    from ray_jobs import prepare

    assert prepare.main([*args, f"output={clean}"]) == 0
    out = tmp_path / "out"
    env = {**os.environ, "RAY_ADDRESS": ray.get_runtime_context().gcs_address}
    cmd = job_command("prepare", *args, f"output={out}")
    with open(tmp_path / "first.log", "wb") as log:
        proc = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 240
        while len(_done_markers(out)) < 2 and proc.poll() is None:
            assert time.monotonic() < deadline, "the first run made no progress"
            time.sleep(0.05)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    done = settled(lambda: _done_markers(out))
    assert proc.returncode == -signal.SIGKILL and 2 <= len(done) < 6, (tmp_path / "first.log").read_text()[-2000:]
    assert not (out / "dataset.json").exists()
    before = _shards(out)

    rerun = subprocess.run(cmd, env=env, capture_output=True, timeout=300)
    assert rerun.returncode == 0, rerun.stderr.decode(errors="replace")[-3000:]
    summary = read_summary(storage.normalize_uri(str(out)))
    assert summary["counts"]["done_before"] == len(done)  # finished tracks were not redone
    after = _shards(out)
    assert {k: after[k] for k in before} == before  # their shards untouched
    reference = _shards(clean)
    assert sorted(after) == sorted(reference)
    assert [k for k in reference if after[k] != reference[k]] == []  # same bytes
    ref_meta = json.loads((clean / "dataset.json").read_text())
    meta = json.loads((out / "dataset.json").read_text())
    for m in (ref_meta, meta):
        m.pop("config")
        for s in m["shards"]:
            s["uri"] = s["uri"].rsplit("/shards/", 1)[1]
    assert meta == ref_meta
