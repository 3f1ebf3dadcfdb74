"""Tune interrupted, then rerun (issue 10, item 4).

A 4-trial sweep (2 at a time, 2 epochs each, every trial the same budget) runs as a
driver process of its own, attached to the test's local Ray. Once 2 trials have
finished it is killed with SIGKILL (its process group: no clean shutdown) and the same
command runs again. Pass: 4 trials, all ``done``; every epoch of every trial was
trained and checkpointed exactly once (trials cut off mid-run continued from their
last checkpoint); the trials finished before the kill were not trained again.
"""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import time

import pytest
import ray

from ray_jobs import common, tune
from sepcore.io import storage
from sepcore.models import SMOKE_CONFIGS
from sepcore.models import checkpoint as ckpt
from sepcore.train import outputs as O
from tests.support.reliability import job_command, tiny_sweep_config

pytestmark = pytest.mark.usefixtures("local_ray")  # tests/conftest.py

EPOCHS = 2


def _finished_trials(out) -> list[str]:
    """Trials whose latest complete checkpoint is of their last epoch."""
    finished = []
    for name in sorted(os.listdir(out / "trials")) if (out / "trials").exists() else []:
        latest = ckpt.find_latest(storage.normalize_uri(str(out / "trials" / name / "runs")))
        if latest and ckpt.read_meta(latest)["epoch"] == EPOCHS - 1:
            finished.append(name)
    return finished


def test_a_sweep_killed_halfway_finishes_every_trial_exactly_once(demo_data, tmp_path):
    out = tmp_path / "sweep"
    settings = {"model": {"name": "hourglass", "config": SMOKE_CONFIGS["hourglass"]},
                "optim": {"epochs": EPOCHS, "batch_size": 8, "lr": 0.003, "max_steps_per_epoch": 2},
                "validation": {"sdr_tracks": 1, "metric": "val_sdr"},
                "scaling": {"num_workers": 1, "cpus_per_worker": 0.5, "threads": 1},
                "keep_checkpoints": 10}  # every checkpoint stays, to be counted  # fmt: skip
    config = tiny_sweep_config(
        str(tmp_path / "tune.yaml"), demo_data, str(out), str(tmp_path / "variants"), train=settings,
        space={"n_fft": [256], "silence": ["off"], "filters": [4, 6, 8, 10]},
        search={"algorithm": "grid", "max_concurrent": 2}, scheduler={"name": "fifo"},
    )  # fmt: skip
    env = {**os.environ, "RAY_ADDRESS": ray.get_runtime_context().gcs_address}
    with open(tmp_path / "driver.log", "wb") as log:
        driver = subprocess.Popen(job_command("tune", "-c", config), env=env, stdout=log,
                                  stderr=subprocess.STDOUT, start_new_session=True)  # fmt: skip
        try:
            deadline = time.monotonic() + 900  # the whole test takes about 3 minutes on an idle machine
            while len(_finished_trials(out)) < 2:
                assert driver.poll() is None, (tmp_path / "driver.log").read_text()[-3000:]
                assert time.monotonic() < deadline, "2 trials did not finish in time"
                time.sleep(0.2)
        finally:
            os.killpg(driver.pid, signal.SIGKILL)
            driver.wait()
    first = _finished_trials(out)
    assert 2 <= len(first) < 4 and not (out / common.SUMMARY).exists()

    assert tune.main(["-c", config]) == 0  # the same command again
    with open(out / "results.csv", encoding="utf-8") as fh:
        rows = list(csv.DictReader(fh))
    assert sorted(int(r["filters"]) for r in rows) == [4, 6, 8, 10]
    assert {r["status"] for r in rows} == {"done"} and {r["epochs"] for r in rows} == {str(EPOCHS)}
    for row in rows:
        trial = storage.normalize_uri(str(out / "trials" / row["trial"]))
        epochs = sorted(meta["epoch"] for _, meta in ckpt.complete_checkpoints(storage.join(trial, "runs")))
        assert epochs == list(range(EPOCHS)), row["trial"]  # each epoch once
        assert [h["epoch"] for h in O.read_history(trial)] == list(range(EPOCHS))
    for name in first:  # finished before the kill: one Train run, none after
        assert len(os.listdir(out / "trials" / name / "runs")) == 1
    summary = json.loads((out / common.SUMMARY).read_text())
    assert summary["counts"]["trials"] == 4
