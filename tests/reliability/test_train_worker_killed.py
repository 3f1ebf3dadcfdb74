"""Training worker killed after a checkpoint (issue 10, item 3, first half).

``sep train`` runs 3 epochs with ``max_failures: 1``. Once Ray Train has registered the
checkpoint of an epoch k < 2 (its ``checkpoint_manager_snapshot.json`` names it) and
``metrics.jsonl`` holds epochs 0..k and no more, the training worker's process is killed
with SIGKILL while it trains epoch k + 1. Ray Train starts a new worker, which restores
that checkpoint. Pass: exit 0; a new worker took over; every epoch was reported exactly
once (no second epoch 0: the run went on from epoch k + 1, not from zero), and the
history in ``metrics.jsonl`` is epochs 0, 1, 2.

The worker writes ``metrics.jsonl`` just before it reports the checkpoint, so between
the two the file is one epoch ahead of the registry; the killer waits until they agree
(a kill in that gap would be a kill after epoch k + 1, not during it). Ray Train's
controller registers reports when it polls its workers, every 2 s by default: longer
than an epoch here, so the test polls every 0.1 s (``RAY_TRAIN_HEALTH_CHECK_INTERVAL_S``,
which Ray Train passes from the driver to its controller) and the registry catches up
while the worker is still inside the next epoch.
"""

from __future__ import annotations

import glob
import json
import os
import signal
import threading
import time

import pytest

from ray_jobs import train
from sepcore.io import storage
from sepcore.models import SMOKE_CONFIGS
from sepcore.models import checkpoint as ckpt
from sepcore.train import outputs as O
from tests.support.reliability import ray_actor_processes

pytestmark = pytest.mark.usefixtures("local_ray")  # tests/conftest.py

WORKER = "RayTrainWorker"


def _registered_epoch(runs: str) -> int | None:
    """The epoch of the latest checkpoint Ray Train has registered, if any."""
    for path in glob.glob(os.path.join(runs, "*", "checkpoint_manager_snapshot.json")):
        try:
            with open(path, encoding="utf-8") as fh:
                latest = json.load(fh).get("latest_checkpoint_result") or {}
        except (OSError, ValueError):  # being rewritten
            continue
        if "epoch" in latest.get("metrics", {}):
            return int(latest["metrics"]["epoch"])
    return None


class Killer(threading.Thread):
    """Kills the training worker once epoch 0's checkpoint is registered; then watches."""

    def __init__(self, runs: str, output: str):
        super().__init__(daemon=True)
        self.runs, self.output = runs, output
        self.history_at_kill: list[int] | None = None
        self.victim: int | None = None
        self.epoch_at_kill: int | None = None
        self.successors: set[int] = set()
        self.stop = threading.Event()

    def run(self) -> None:
        while not self.stop.is_set():
            if self.victim is None:
                epoch = _registered_epoch(self.runs)
                workers = ray_actor_processes(WORKER)
                history = [h["epoch"] for h in O.read_history(self.output)]
                if epoch is not None and epoch < 2 and workers and history == list(range(epoch + 1)):
                    self.history_at_kill = history
                    self.victim = min(workers)
                    os.kill(self.victim, signal.SIGKILL)
                    self.epoch_at_kill = _registered_epoch(self.runs)
            else:
                self.successors |= set(ray_actor_processes(WORKER)) - {self.victim}
            time.sleep(0.02)


def test_a_killed_training_worker_resumes_from_its_last_checkpoint(tiny_shards, tmp_path, monkeypatch):
    monkeypatch.setenv("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", "0.1")
    out = storage.normalize_uri(str(tmp_path / "train"))
    runs = storage.local_path(storage.join(out, "runs"))
    killer = Killer(runs, out)
    killer.start()
    try:
        code = train.main([f"data={tiny_shards}", f"output={out}", "model.name=hourglass",
                           f"model.config={json.dumps(SMOKE_CONFIGS['hourglass'])}",
                           "optim={epochs: 3, batch_size: 8, lr: 0.003, max_steps_per_epoch: 40}",
                           "validation={sdr_tracks: 1}", "max_failures=1",
                           "keep_checkpoints=10"])  # every checkpoint stays, to be counted  # fmt: skip
    finally:
        killer.stop.set()
        killer.join()
    assert killer.victim is not None, "no training worker was found to kill"
    k = killer.epoch_at_kill
    assert k in (0, 1), f"killed after epoch {k}: no epoch was left to resume"
    assert killer.history_at_kill == list(range(k + 1))  # metrics.jsonl grows as epochs end
    assert code == 0
    assert killer.successors, "no new training worker took over"

    epochs = [meta["epoch"] for _, meta in ckpt.complete_checkpoints(storage.join(out, "runs"))]
    assert sorted(epochs) == [0, 1, 2]  # each epoch once: no second epoch 0
    assert [h["epoch"] for h in O.read_history(out)] == [0, 1, 2]
    summary = json.loads(storage.read_text(storage.join(out, "summary.json")))
    assert summary["status"] == "ok" and summary["counts"]["epochs"] == 3
