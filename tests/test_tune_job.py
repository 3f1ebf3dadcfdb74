"""The tune job on a local Ray: data-variant cache, a tiny sweep, resume after a killed driver."""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import time

import pyarrow.parquet as pq
import pytest
import ray
import yaml

from ray_jobs import common, train, tune
from sepcore import checkpoint as ckpt
from sepcore import report, storage
from sepcore.config import load_config
from sepcore.models import SMOKE_CONFIGS

pytestmark = pytest.mark.usefixtures("local_ray")  # tests/conftest.py


@pytest.fixture(scope="module")
def variants(tmp_path_factory) -> str:
    """One data-variant cache for the module: later sweeps reuse what earlier ones prepared."""
    return str(tmp_path_factory.mktemp("variants"))


def _config(tmp_path, data: str, out, variants: str, **extra) -> str:
    """A tiny sweep: 129-bin STFT chunks of 16 frames, a smoke hourglass, 2 trials of 1 epoch."""
    tree = {
        "output": str(out), "variants": variants,
        "prepare": {"sources": [{"kind": "slakh", "uri": data}], "target": "guitar",
                    "features": {"name": "stft", "n_fft": 512, "hop": 128}, "chunks": {"frames": 16},
                    "outputs": ["target"], "split": {"train": 0.5, "validation": 0.5, "test": 0.0}},
        "train": {"model": {"name": "hourglass", "config": SMOKE_CONFIGS["hourglass"]},
                  "optim": {"epochs": 1, "batch_size": 8, "lr": 0.003, "max_steps_per_epoch": 2},
                  "validation": {"sdr_tracks": 1, "metric": "val_sdr"},
                  "scaling": {"num_workers": 1, "cpus_per_worker": 0.5, "threads": 1}},
        "space": {"n_fft": [256], "silence": ["off"], "filters": [4, 8]}, "hop_fraction": 0.5,
        "search": {"algorithm": "grid", "max_concurrent": 2},
        "scheduler": {"name": "asha", "grace_period": 1},
        **extra,
    }  # fmt: skip
    path = tmp_path / "tune.yaml"
    path.write_text(yaml.safe_dump(tree))
    return str(path)


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
    monkeypatch.setattr(tune, "run_job", lambda job, cfg: prepared.append(cfg.output) or real_run_job(job, cfg))
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
        assert row["status"] == "done" and row["epochs"] == "1" and row["n_fft"] == "256" and row["silence"] == "off"
        assert row["hop"] == "128" and float(row["best_val_sdr"]) == float(row["final_val_sdr"])
        assert ckpt.is_complete(row["checkpoint"])
    table = pq.read_table(out / "results.parquet").to_pylist()
    assert [r["trial"] for r in table] == [r["trial"] for r in rows]
    assert rows[0]["trial"] == summary["best"]["trial"]

    # The best checkpoint, a runnable train config of the winner, plots and the report.
    model, meta = ckpt.load_model(str(out))
    assert meta["feature"]["n_fft"] == 256 and meta["model"]["config"]["filters"] == int(rows[0]["filters"])
    best = load_config(train.TrainConfig, str(out / "best_train.yaml"))
    assert best.data == rows[0]["data"] and best.model.config["filters"] == int(rows[0]["filters"])
    page = storage.join(storage.normalize_uri(str(out)), report.REPORT_FILE)
    assert report.missing_files(page) == []
    for name in ("metric_by_nfft.png", "silence_effect.png", "learning_curves.png"):
        assert name in storage.read_text(page)


def _finished_trials(out) -> list[str]:
    """Trials with a complete checkpoint of their last epoch (ASHA may end a trial right then)."""
    trials = out / "trials"
    if not trials.exists():
        return []
    finished = []
    for name in sorted(os.listdir(trials)):
        latest = ckpt.find_latest(storage.normalize_uri(str(trials / name / "runs")))
        if latest and ckpt.read_meta(latest)["epoch"] == 0:
            finished.append(name)
    return finished


def test_a_killed_sweep_resumes_without_rerunning_finished_trials(demo_data, variants, tmp_path):
    out = tmp_path / "resume"
    config = _config(tmp_path, demo_data, out, variants, search={"algorithm": "grid", "max_concurrent": 1})
    env = {**os.environ, "RAY_ADDRESS": ray.get_runtime_context().gcs_address}
    with open(tmp_path / "driver.log", "wb") as log:
        driver = subprocess.Popen([sys.executable, "-m", "ray_jobs.tune", "-c", config], env=env,
                                  stdout=log, stderr=subprocess.STDOUT, start_new_session=True)  # fmt: skip
        try:
            deadline = time.monotonic() + 900  # about a minute on an idle machine
            while not _finished_trials(out):
                assert driver.poll() is None, (tmp_path / "driver.log").read_text()[-3000:]
                assert time.monotonic() < deadline, "no trial finished in time"
                time.sleep(0.5)
        finally:
            os.killpg(driver.pid, signal.SIGKILL)  # the driver dies: no clean shutdown
            driver.wait()
    first = _finished_trials(out)
    assert len(first) == 1 and not (out / common.SUMMARY).exists()

    assert tune.main(["-c", config]) == 0  # the same command again
    rows = _rows(out)
    assert len(rows) == 2 and all(r["status"] == "done" for r in rows)
    assert _summary(out)["counts"]["variants_prepared"] == 0  # the earlier sweep's variant is reused
    for row in rows:
        trial = out / "trials" / row["trial"]
        epochs = [json.loads(line)["epoch"] for line in (trial / train.METRICS_FILE).read_text().splitlines()]
        assert epochs == [0]  # every epoch trained once
    # The trial that had finished before the kill was not trained again: one Train run.
    assert len(os.listdir(out / "trials" / first[0] / "runs")) == 1
