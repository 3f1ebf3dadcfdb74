"""The tune job on a local Ray: data-variant cache, a tiny sweep (resume: tests/reliability)."""

from __future__ import annotations

import csv
import json
import os

import pyarrow.parquet as pq
import pytest

from ray_jobs import train, tune
from sepcore.config import load_config
from sepcore.io import storage
from sepcore.models import checkpoint as ckpt
from sepcore.report import html as report
from tests.support.reliability import tiny_sweep_config

pytestmark = pytest.mark.usefixtures("local_ray")  # tests/conftest.py


@pytest.fixture(scope="module")
def variants(tmp_path_factory) -> str:
    """One data-variant cache for the module: later sweeps reuse what earlier ones prepared."""
    return str(tmp_path_factory.mktemp("variants"))


def _config(tmp_path, data: str, out, variants: str, **extra) -> str:
    return tiny_sweep_config(str(tmp_path / "tune.yaml"), data, str(out), variants, **extra)


def _rows(out) -> list[dict]:
    with open(os.path.join(out, "results.csv"), encoding="utf-8") as fh:
        return list(csv.DictReader(fh))


def _summary(out) -> dict:
    return json.loads((out / "summary.json").read_text())


def test_a_tiny_sweep_prepares_each_data_variant_once_and_writes_the_results(
    demo_data, variants, tmp_path, monkeypatch
):
    prepared = []
    real_run_job = tune.run_job
    monkeypatch.setattr(
        tune, "run_job", lambda job, cfg: prepared.append(cfg.output) or real_run_job(job, cfg)
    )
    out = tmp_path / "sweep"
    assert tune.main(["-c", _config(tmp_path, demo_data, out, variants)]) == 0

    # Two trials with the same (n_fft, silence): one variant, prepared once, used by both.
    assert len(prepared) == 1
    assert os.listdir(variants) == [prepared[0].rsplit("/", 1)[-1]]
    rows = _rows(out)
    assert len(rows) == 2 and {r["data"] for r in rows} == {prepared[0]}
    assert sorted(int(r["filters"]) for r in rows) == [4, 8]
    summary = _summary(out)
    assert summary["counts"]["variants_prepared"] == 1 and summary["counts"]["trials"] == 2

    # The results table: parameters, final and best metrics, epochs, checkpoint.
    for row in rows:
        assert (
            row["status"] == "done"
            and row["epochs"] == "1"
            and row["n_fft"] == "256"
            and row["silence"] == "off"
        )
        assert row["hop"] == "128" and float(row["best_val_sdr"]) == float(row["final_val_sdr"])
        assert ckpt.is_complete(row["checkpoint"])
    table = pq.read_table(out / "results.parquet").to_pylist()
    assert [r["trial"] for r in table] == [r["trial"] for r in rows]
    assert rows[0]["trial"] == summary["best"]["trial"]

    # The best checkpoint, a runnable train config of the winner, plots and the report.
    model, meta = ckpt.load_model(str(out))
    assert meta["feature"]["n_fft"] == 256 and meta["model"]["config"]["filters"] == int(
        rows[0]["filters"]
    )
    best = load_config(train.TrainConfig, str(out / "best_train.yaml"))
    assert best.data == rows[0]["data"] and best.model.config["filters"] == int(rows[0]["filters"])
    page = storage.join(storage.normalize_uri(str(out)), report.REPORT_FILE)
    assert report.missing_files(page) == []
    for name in ("metric_by_nfft.png", "silence_effect.png", "learning_curves.png"):
        assert name in storage.read_text(page)
