"""The train job on a local Ray: DDP on 2 CPU workers, checkpoints, resume, metrics."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from ray_jobs import train, trainer
from sepcore.io import storage
from sepcore.models import SMOKE_CONFIGS, build_model
from sepcore.models import checkpoint as ckpt
from sepcore.train import outputs as O

pytestmark = pytest.mark.usefixtures("local_ray")  # tests/conftest.py


def _hourglass_args(data: str, out, *extra: str) -> list[str]:
    config = json.dumps(SMOKE_CONFIGS["hourglass"])
    return [f"data={data}", f"output={out}", "model.name=hourglass", f"model.config={config}",
            "optim={batch_size: 8, lr: 0.003, max_steps_per_epoch: 6}", "validation={sdr_tracks: 1}",
            *extra]  # fmt: skip


def _history(out) -> list[dict]:
    return O.read_history(str(out))


def test_two_worker_ddp_training_reduces_the_loss(tiny_shards, tmp_path):
    out = tmp_path / "hg"
    args = _hourglass_args(tiny_shards, out, "optim.epochs=3",
                           "scaling={num_workers: 2, cpus_per_worker: 0.5, threads: 1}")  # fmt: skip
    assert train.main(args) == 0
    history = _history(out)
    assert [h["epoch"] for h in history] == [0, 1, 2]
    # Training batches differ between epochs; the validation set does not.
    assert history[-1]["val_loss"] < history[0]["val_loss"]
    assert all(np.isfinite(h["val_loss"]) and "val_sdr" in h and "val_sdr_mixture" in h for h in history)
    # Every validation row once: each worker counts its own rows and the counts are summed;
    # an equal split over 2 workers may drop one row.
    rows = json.loads(storage.read_text(storage.join(tiny_shards, "dataset.json")))["rows_per_split"]
    assert all(rows["validation"] - 1 <= h["val_samples"] <= rows["validation"] for h in history)
    assert all(h["train_samples"] == 2 * 6 * 8 for h in history)  # 2 workers x 6 steps x batch 8
    assert (out / O.CURVE_FILE).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    summary = json.loads((out / "summary.json").read_text())
    assert summary["counts"]["epochs"] == 3 and summary["best_checkpoint"].endswith("/best")

    # The output itself is a checkpoint: it loads with everything inference needs.
    model, meta = ckpt.load_model(str(out))
    assert meta["task"] == "separator" and meta["target"] == "guitar"
    assert (meta["sample_rate"], meta["feature"]["n_fft"], meta["feature"]["hop"], meta["frames"]) == (22050, 256, 128, 16)
    from sepcore.separate.apply import separate

    audio = np.random.default_rng(0).standard_normal((1, 22050)).astype(np.float32) * 0.1
    parts = separate(model, audio, 22050, 256, 128, 16)
    assert np.abs(parts["instrument"] + parts["rest"] - audio).max() < 1e-4


def _adam_steps(checkpoint: str) -> set[float]:
    state = ckpt.load_state(checkpoint)[1]["optimizer"]["optimizer"]["state"]
    return {float(s["step"]) for s in state.values()}


def test_resume_continues_the_run_and_refuses_other_settings(tiny_shards, tmp_path, capsys):
    # A model without batch norm and a learning rate too small to change a float32 weight:
    # the model stays the same, so the capped validation loss is the same in every epoch
    # exactly when the same validation rows are measured each time.
    out = tmp_path / "resume"
    args = [f"data={tiny_shards}", f"output={out}", "model.name=activation_cnn", "model.config={filters: [4, 4, 8]}",
            "optim={batch_size: 8, lr: 1.0e-12, max_steps_per_epoch: 6}", "validation={sdr_tracks: 0, max_steps: 1}"]
    assert train.main([*args, "optim.epochs=1"]) == 0
    first = _history(out)
    assert [h["epoch"] for h in first] == [0]
    # Started again with more epochs: epoch 0 is not trained again, the optimizer goes on.
    assert train.main([*args, "optim.epochs=3"]) == 0
    second = _history(out)
    assert [h["epoch"] for h in second] == [0, 1, 2]
    assert second[0] == first[0]
    by_epoch = {meta["epoch"]: folder for folder, meta in ckpt.complete_checkpoints(storage.join(
        storage.normalize_uri(str(out)), "runs"))}  # fmt: skip
    assert sorted(by_epoch) == [0, 1, 2]
    assert [_adam_steps(by_epoch[e]) for e in (0, 1, 2)] == [{6.0}, {12.0}, {18.0}]  # 6 steps per epoch
    assert all(h["val_samples"] == 8 for h in second)  # max_steps 1 x batch 8 x 1 worker
    assert second[1]["val_loss"] == pytest.approx(second[0]["val_loss"], rel=1e-6)
    assert second[2]["val_loss"] == pytest.approx(second[0]["val_loss"], rel=1e-6)

    # Other settings into the same output: refused, naming the keys; nothing trained.
    assert train.main([*args, "optim.epochs=4", "optim.lr=0.01"]) == 2
    assert "other settings (optim.lr)" in capsys.readouterr().err
    assert [h["epoch"] for h in _history(out)] == [0, 1, 2]

    # resume=false starts afresh: the earlier run's checkpoints and history are gone.
    assert train.main([*args, "optim.epochs=1", "optim.lr=0.01", "resume=false"]) == 0
    assert [h["epoch"] for h in _history(out)] == [0]
    fresh = ckpt.complete_checkpoints(storage.join(storage.normalize_uri(str(out)), "runs"))
    assert [meta["epoch"] for _, meta in fresh] == [0] and _adam_steps(fresh[0][0]) == {6.0}


def test_each_row_goes_to_one_worker(tiny_shards, tmp_path):
    """The datasets and sharding the train job uses: no row read twice in an epoch."""
    import ray.train
    from ray.train.torch import TorchTrainer

    folder = tmp_path / "keys"
    folder.mkdir()

    def loop(config):
        ctx = ray.train.get_context()
        keys = []
        for split in ("train", "validation"):
            for b in ray.train.get_dataset_shard(split).iter_batches(batch_size=8, batch_format="numpy"):
                keys += [[split, str(t), int(c)] for t, c in zip(b["track_id"], b["chunk"], strict=True)]
        with open(f"{config['folder']}/{ctx.get_world_rank()}.json", "w") as fh:
            json.dump(keys, fh)

    cfg = train.TrainConfig(data=tiny_shards, output=str(tmp_path / "o"))
    manifest = O.read_manifest(tiny_shards)
    TorchTrainer(loop, train_loop_config={"folder": str(folder)},
                 datasets=trainer.build_datasets(cfg, manifest, read_cpus=0.25), dataset_config=trainer.data_config(),
                 scaling_config=ray.train.ScalingConfig(num_workers=2, resources_per_worker={"CPU": 0.5}),
                 run_config=ray.train.RunConfig(storage_path=str(tmp_path / "runs"))).fit()  # fmt: skip
    per_rank = [[tuple(k) for k in json.loads((folder / f"{r}.json").read_text())] for r in (0, 1)]
    for split, count in manifest["rows_per_split"].items():
        if split not in ("train", "validation"):
            continue
        seen = [k for keys in per_rank for k in keys if k[0] == split]
        assert len(seen) == len(set(seen))  # no row twice
        assert count - 1 <= len(seen) <= count  # an equal split may drop up to (workers - 1) rows
        assert all(any(k[0] == split for k in keys) for keys in per_rank)  # both workers got rows


@pytest.mark.parametrize("name", ["blstm", "activation_cnn"])
def test_blstm_and_activation_models_train(tiny_shards, tmp_path, name):
    out = tmp_path / name
    config = {"blstm": {"hidden": 16, "layers": 2}, "activation_cnn": {"filters": [4, 4, 8]}}[name]
    args = [f"data={tiny_shards}", f"output={out}", f"model.name={name}", f"model.config={json.dumps(config)}",
            "optim={epochs: 1, batch_size: 8, max_steps_per_epoch: 4}",
            "validation={sdr_tracks: 1, max_steps: 2}"]  # fmt: skip
    if name == "activation_cnn":  # this one streams its rows through Ray Data; the blstm holds them in memory
        args.append("loader.cache_mb=0")
    assert train.main(args) == 0
    assert _history(out)[0]["val_samples"] == 16  # 2 validation batches of 8
    assert _history(out)[0]["train_samples"] == 32  # 4 steps of 8
    model, meta = ckpt.load_model(str(out))
    assert meta["model"]["name"] == name
    x = torch.rand(2, 1, 129, 16)
    y = model(x)
    assert y.shape == ((2, 1, 129, 16) if name == "blstm" else (2, 8, 16))


def test_wrong_data_for_the_model_is_a_clear_error(tmp_path, capsys):
    assert train.main([f"data={tmp_path}", f"output={tmp_path / 'o'}"]) == 2
    assert "prepare it first" in capsys.readouterr().err


def test_checkpoint_round_trip_and_partial_checkpoints_are_never_loaded(tmp_path):
    torch.manual_seed(0)
    model = build_model("hourglass", **SMOKE_CONFIGS["hourglass"]).eval()
    meta = {"model": {"name": "hourglass", "config": SMOKE_CONFIGS["hourglass"]}, "sample_rate": 22050,
            "feature": {"name": "stft", "n_fft": 256, "hop": 128}, "frames": 16, "metrics": {}}  # fmt: skip
    good = str(tmp_path / "runs" / "a" / "checkpoint_0")
    ckpt.save(good, model, meta, epoch=0)
    loaded, loaded_meta = ckpt.load_model(good)
    x = torch.rand(2, 1, 33, 16)
    with torch.inference_mode():
        assert torch.equal(model(x), loaded(x))
    assert loaded_meta["feature"]["n_fft"] == 256 and loaded_meta["sample_rate"] == 22050
    # A later checkpoint whose model.pt was cut short, and one without meta.json.
    partial = str(tmp_path / "runs" / "b" / "checkpoint_5")
    ckpt.save(partial, model, meta, epoch=5)
    path = storage.local_path(storage.join(partial, ckpt.MODEL_FILE))
    with open(path, "r+b") as fh:
        fh.truncate(100)
    storage.write_bytes(storage.join(str(tmp_path / "runs" / "c" / "checkpoint_9"), ckpt.MODEL_FILE), b"x")
    assert ckpt.find_latest(str(tmp_path / "runs")) == storage.normalize_uri(good)
    with pytest.raises(ckpt.CheckpointError, match="no complete checkpoint"):
        ckpt.resolve(partial)
