"""Partial checkpoints (issue 10, item 3, second half): never loaded, resume skips them.

A training output gets half-written checkpoint folders planted below ``runs/``, each
with a higher epoch than the real one: ``model.pt`` without ``meta.json``, a
``meta.json`` whose ``model.pt`` was cut short, and a ``meta.json`` cut short itself.
Pass: :func:`sepcore.models.checkpoint.find_latest` picks the real checkpoint, the rerun of
``sep train`` resumes from it (the next epoch, not a planted one), and ``best/`` is
a complete checkpoint that loads.
"""

from __future__ import annotations

import json

import pytest

from ray_jobs import train
from sepcore.io import storage
from sepcore.models import SMOKE_CONFIGS
from sepcore.models import checkpoint as ckpt
from sepcore.train import outputs as O

pytestmark = pytest.mark.usefixtures("local_ray")  # tests/conftest.py


def _args(data: str, out: str, epochs: int) -> list[str]:
    return [f"data={data}", f"output={out}", "model.name=hourglass",
            f"model.config={json.dumps(SMOKE_CONFIGS['hourglass'])}",
            "optim={batch_size: 8, lr: 0.003, max_steps_per_epoch: 4}", "validation={sdr_tracks: 1}",
            f"optim.epochs={epochs}"]  # fmt: skip


def test_half_written_checkpoints_are_never_resumed_from(tiny_shards, tmp_path):
    out = storage.normalize_uri(str(tmp_path / "train"))
    assert train.main(_args(tiny_shards, out, 1)) == 0
    runs = storage.join(out, "runs")
    real = ckpt.find_latest(runs)
    assert real is not None and ckpt.read_meta(real)["epoch"] == 0
    model_pt = storage.read_bytes(storage.join(real, ckpt.MODEL_FILE))
    meta = ckpt.read_meta(real)

    planted = storage.join(runs, "run-planted")
    # 1. model.pt written, meta.json never
    storage.write_bytes(storage.join(planted, "checkpoint_000005", ckpt.MODEL_FILE), model_pt)
    # 2. meta.json of a later epoch, model.pt cut short
    cut = storage.join(planted, "checkpoint_000007")
    storage.write_bytes(storage.join(cut, ckpt.MODEL_FILE), model_pt[: len(model_pt) // 2])
    storage.write_text(storage.join(cut, ckpt.META_FILE), json.dumps({**meta, "epoch": 7}))
    # 3. meta.json itself cut short
    torn = storage.join(planted, "checkpoint_000009")
    storage.write_bytes(storage.join(torn, ckpt.MODEL_FILE), model_pt)
    storage.write_text(storage.join(torn, ckpt.META_FILE), json.dumps({**meta, "epoch": 9})[:200])

    for folder in (storage.join(planted, "checkpoint_000005"), cut, torn):
        assert not ckpt.is_complete(folder)
        with pytest.raises(ckpt.CheckpointError):
            ckpt.load_model(folder)
    assert ckpt.find_latest(runs) == real

    # The rerun continues at epoch 1 from the real checkpoint (a planted epoch 7 or 9
    # would leave nothing to train for 2 epochs, or crash on loading).
    assert train.main(_args(tiny_shards, out, 2)) == 0
    assert [h["epoch"] for h in O.read_history(out)] == [0, 1]
    latest = ckpt.find_latest(runs)
    assert latest not in (real, None) and ckpt.read_meta(latest)["epoch"] == 1
    summary = json.loads(storage.read_text(storage.join(out, "summary.json")))
    assert summary["status"] == "ok" and summary["counts"]["epochs"] == 2
    model, best_meta = ckpt.load_model(out)  # best/ is complete, verified by its SHA-256
    assert best_meta["epoch"] in (0, 1) and "run-planted" not in best_meta["checkpoint"]
