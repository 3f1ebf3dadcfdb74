"""The plain batch-job skeleton (sepcore.batch) and the done-markers (sepcore.io.ledger)."""

from __future__ import annotations

import json
import logging

import pytest

from sepcore import batch
from sepcore.errors import ConfigError, StorageError
from sepcore.io import storage
from sepcore.io.ledger import Ledger, record_name


def test_guarded_turns_an_exception_into_a_failed_item_naming_it():
    def work(x):
        if x == "bad":
            raise StorageError("s3://b/bad.flac", "truncated")
        if x == "bug":
            raise KeyError("stems")
        return {"item": x, "rows": 3}

    assert batch.guarded("ok", work, "ok") == {"item": "ok", "rows": 3}
    bad = batch.guarded("s3://b/bad.flac", work, "bad")
    assert bad["item"] == "s3://b/bad.flac" and "truncated" in bad["error"]
    bug = batch.guarded("t1", work, "bug")
    assert bug["error"].startswith("t1: KeyError")


def test_the_verdict_fails_a_run_only_above_the_allowed_share():
    assert batch.verdict(0, 10, 0.0, "songs") == {}
    assert batch.verdict(2, 10, 0.2, "songs") == {}
    failed = batch.verdict(3, 10, 0.2, "songs")
    assert failed == {"status": "failed", "error": "3 of 10 songs failed"}
    assert batch.verdict(1, 0, 0.5, "tracks")["status"] == "failed"  # nothing to judge by


def test_progress_counts_against_a_total_fixed_at_the_start(caplog):
    with caplog.at_level(logging.INFO, logger="sep.render"):
        progress = batch.Progress("render", 2, done_before=5, unit="song")
        progress.update("Track00006", "12 stems")
        progress.update("Track00007", "FAILED bad midi", failed=True)
        progress.close()
    lines = [(r.levelname, r.getMessage()) for r in caplog.records]
    assert lines == [
        ("INFO", "render: 2 songs to do, 5 done before"),
        ("INFO", "render [1/2] Track00006: 12 stems"),
        ("WARNING", "render [2/2] Track00007: FAILED bad midi"),
    ]


def test_check_settings_records_then_refuses_other_settings(tmp_path):
    out = storage.normalize_uri(str(tmp_path))
    batch.check_settings(out, "spec.json", {"n_fft": 1024, "hop": 256})
    batch.check_settings(out, "spec.json", {"hop": 256, "n_fft": 1024})  # same settings: fine
    with pytest.raises(ConfigError, match="n_fft"):
        batch.check_settings(out, "spec.json", {"n_fft": 2048, "hop": 256})
    assert json.loads((tmp_path / "spec.json").read_text()) == {"hop": 256, "n_fft": 1024}


def test_a_ledger_counts_only_records_made_with_its_fingerprint(tmp_path):
    folder = storage.normalize_uri(str(tmp_path / "_done"))
    assert Ledger(folder, "v1").records() == {}  # no folder yet
    ledger = Ledger(folder, "v1")
    ledger.put("s3://bucket/a b/Track 1.flac", {"rows": 4})
    ledger.put("Track2", {"rows": 5})
    assert ledger.get("Track2") == {"rows": 5}
    assert ledger.records() == {"s3://bucket/a b/Track 1.flac": {"rows": 4}, "Track2": {"rows": 5}}
    assert ledger.pending(["Track2", "Track3"]) == ["Track3"]
    other = Ledger(folder, "v2")
    assert other.get("Track2") is None and other.records() == {}
    (tmp_path / "_done" / record_name("Track3")).write_text("{not json")  # a torn write
    assert Ledger(folder, "v1").get("Track3") is None
    ledger.clear()
    assert ledger.records() == {}


def test_record_names_are_safe_and_distinct():
    a, b = record_name("x/../../etc/passwd"), record_name("x/../../etc/passwd ")
    assert a != b and "/" not in a and a.endswith(".json")


def test_format_summary_lists_counts_and_the_first_ten_failures(tmp_path):
    summary = {"job": "render", "seconds": 12.34, "config": {"output": str(tmp_path)},
               "counts": {"tracks": 12}, "figures": {"sdr": 3.5},
               "failed": [{"item": f"t{i}", "error": "bad"} for i in range(12)]}  # fmt: skip
    lines = batch.format_summary(summary).splitlines()
    assert lines[:3] == ["render: done in 12.3 s", "  tracks: 12", "  sdr: 3.5"]
    assert lines[3] == "  FAILED t0: bad" and sum(line.startswith("  FAILED") for line in lines) == 10
    assert lines[-2] == "  ... and 2 more failures (see summary.json)"
    assert lines[-1].startswith("  summary: ") and lines[-1].endswith("summary.json")


def test_item_clock_charges_only_running_items():
    clock = batch.ItemClock()
    clock.start(0)
    clock.start(1)
    clock.stop(0)
    elapsed = clock.elapsed()
    assert list(elapsed) == [1] and elapsed[1] >= 0
    assert batch.Finished("a").error is None and batch.Finished("a", error="x").value is None
