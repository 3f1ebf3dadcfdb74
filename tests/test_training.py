"""Plain training pieces without Ray: restoring a run, the best-checkpoint rule, resume checks."""

from __future__ import annotations

import pytest
import torch

from ray_jobs import train
from sepcore.config import changed_keys
from sepcore.errors import ConfigError
from sepcore.models import SMOKE_CONFIGS
from sepcore.models import checkpoint as ckpt
from sepcore.train import outputs as O
from sepcore.train.config import OptimConfig, ValidationConfig
from sepcore.train.loop import build_for_training, run_epoch, training_state
from sepcore.train.selection import best_of, is_better

MODEL = {"name": "hourglass", "config": SMOKE_CONFIGS["hourglass"], "log_input": True}
OPTIM = OptimConfig(lr=0.003, scheduler="plateau").model_dump()


def _batches(n: int = 3, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    for _ in range(n):
        mix = torch.rand(2, 1, 33, 16, generator=g)
        yield {"mix": mix, "target": mix * torch.rand(2, 1, 33, 16, generator=g)}


def _trained_checkpoint(folder: str, scaler_device: str | None = None) -> dict:
    """A checkpoint after a few Adam steps (float32, CPU); returns the state saved."""
    torch.manual_seed(0)
    net, optimizer, scheduler, scaler = build_for_training(MODEL, OPTIM, lambda m: m, None, scaler_device)
    run_epoch("separator", net, _batches(), optimizer)
    scheduler.step(0.5)
    if scaler is not None:
        scaler.scale(torch.ones(()))  # the scale exists once used
        scaler.update(1234.0)
    ckpt.save(folder, net, {"model": MODEL}, training_state(optimizer, scheduler, scaler), epoch=0)
    return ckpt.load_state(folder)[1]


def test_resume_restores_weights_and_optimizer_moments_exactly(tmp_path):
    saved = _trained_checkpoint(str(tmp_path / "c"), scaler_device="cpu")
    net, optimizer, scheduler, scaler = build_for_training(MODEL, OPTIM, lambda m: m, saved, "cpu")
    for name, value in net.state_dict().items():
        assert torch.equal(value, saved["state_dict"][name]), name
    restored = optimizer.state_dict()["state"]
    expected = saved["optimizer"]["optimizer"]["state"]
    assert restored.keys() == expected.keys() and len(restored) > 0
    for key, moments in expected.items():
        for name in ("exp_avg", "exp_avg_sq", "step"):
            assert torch.equal(restored[key][name], moments[name]), (key, name)
    assert scheduler.state_dict() == saved["optimizer"]["scheduler"]
    assert scaler.get_scale() == 1234.0  # the AMP scaler's state is saved and restored too


def test_optimizer_state_follows_the_placed_parameters(tmp_path):
    # Stand-in for moving the model to a GPU: casting it to float64. Adam's moments must
    # end up like the parameters; loading them before the move leaves them behind
    # (float32 / on the CPU), and the first step then fails on a GPU.
    saved = _trained_checkpoint(str(tmp_path / "c"))
    net, optimizer, _, _ = build_for_training(MODEL, OPTIM, lambda m: m.double(), saved)
    for group in optimizer.param_groups:
        for p in group["params"]:
            assert p.dtype == torch.float64
            assert optimizer.state[p]["exp_avg"].dtype == p.dtype
            assert optimizer.state[p]["exp_avg_sq"].dtype == p.dtype
    batch = {k: v.double() for k, v in next(_batches()).items()}
    run_epoch("separator", net, [batch], optimizer)  # a step works on the placed state


def test_the_best_rule_follows_the_metric_direction():
    assert is_better("val_loss", 0.1, 0.2) and not is_better("val_loss", 0.3, 0.2)
    assert is_better("val_sdr", 3.0, 2.0) and not is_better("val_sdr", 1.0, 2.0)
    assert is_better("val_sdr", -5.0, None) and not is_better("val_sdr", float("nan"), None)
    epochs = [{"epoch": 0, "v": 1.0}, {"epoch": 1, "v": float("nan")}, {"epoch": 2, "v": 4.0}, {"epoch": 3, "v": 2.0}]
    assert best_of(epochs, "val_sdr", lambda e: e["v"])["epoch"] == 2
    assert best_of(epochs, "val_loss", lambda e: e["v"])["epoch"] == 0
    assert best_of([{"v": None}], "val_loss", lambda e: e["v"]) is None


def test_val_sdr_without_sdr_tracks_is_refused_at_config_time(tmp_path, capsys):
    with pytest.raises(ValueError, match="sdr_tracks > 0"):
        ValidationConfig(metric="val_sdr", sdr_tracks=0)
    assert train.main([f"data={tmp_path}", f"output={tmp_path / 'o'}",
                       "validation={metric: val_sdr, sdr_tracks: 0}"]) == 2  # fmt: skip
    assert "sdr_tracks > 0" in capsys.readouterr().err


def test_changed_keys_names_every_difference_but_the_allowed_ones():
    old = {"optim": {"lr": 0.1, "epochs": 2}, "scaling": {"num_workers": 1}, "data": "a", "model": {"config": {}}}
    new = {"optim": {"lr": 0.2, "epochs": 5}, "scaling": {"num_workers": 4}, "data": "b",
           "model": {"config": {"filters": 8}}}  # fmt: skip
    assert changed_keys(old, new, ("optim.epochs", "scaling.*")) == [
        "data", "model.config", "model.config.filters", "optim.lr"]
    assert changed_keys(old, old) == []


def test_a_resume_with_other_settings_is_refused_naming_the_keys(tmp_path):
    first = train.TrainConfig(data=str(tmp_path / "d"), output=str(tmp_path / "o"))
    meta = {"model": MODEL, "settings": O.run_settings(first)}
    folder = str(tmp_path / "o" / "runs" / "r" / "checkpoint_0")
    ckpt.save(folder, ckpt.build(MODEL), meta, epoch=0)
    continued = first.model_copy(update={"optim": first.optim.model_copy(update={"epochs": 20}),
                                         "scaling": first.scaling.model_copy(update={"num_workers": 2})})  # fmt: skip
    O.check_resume(continued, folder)  # more epochs, more workers: the same run continued
    other = first.model_copy(update={"optim": first.optim.model_copy(update={"lr": 0.5}), "seed": 3})
    with pytest.raises(ConfigError, match=r"other settings \(optim.lr, seed\)"):
        O.check_resume(other, folder)
    older = O.run_settings(first)  # saved before model.init and loader.snippets_per_song existed
    del older["model"]["init"], older["loader"]["snippets_per_song"]
    ckpt.save(folder, ckpt.build(MODEL), {**meta, "settings": older}, epoch=0)
    O.check_resume(first, folder)  # the keys added since take their defaults
    with pytest.raises(ConfigError, match=r"other settings \(model.init\)"):
        O.check_resume(first.model_copy(update={"model": first.model.model_copy(update={"init": "random"})}), folder)


def test_a_run_that_keeps_its_own_checkpoints_keeps_the_best_and_the_latest():
    from sepcore.train.selection import stale_checkpoints

    items = [(f"c{e}", {"epoch": e, "metrics": {"val_sdr": v}}) for e, v in enumerate([1.0, 3.0, 2.0, 0.5])]
    assert stale_checkpoints(items, "val_sdr", 2) == ["c0"]  # c1, c2 best; c3 the latest
    assert stale_checkpoints(items, "val_loss", 1) == ["c0", "c1", "c2"]  # c3: the best and the latest
    assert stale_checkpoints(items, "val_sdr", 5) == [] and stale_checkpoints([], "val_sdr", 1) == []


def test_run_storage_and_worker_resources(tmp_path):
    from sepcore.io import storage
    from sepcore.train.config import ScalingConf

    out = storage.normalize_uri(str(tmp_path))
    assert O.storage_args(out) == {"storage_path": storage.local_path(storage.join(out, O.RUNS))}
    assert ScalingConf(cpus_per_worker=0.5).worker_resources() == {"CPU": 0.5}
    assert ScalingConf(use_gpu=True, gpus_per_worker=0.5).worker_resources() == {"CPU": 1.0, "GPU": 0.5}


def test_read_shards_concatenates_the_rows_of_each_shard(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    uris = []
    for i in range(2):
        path = tmp_path / f"shard_{i}.parquet"
        pq.write_table(pa.table({"x": [i, i + 10]}), path)
        uris.append(str(path))
    assert O.read_shards({"uri": uris}).column("x").to_pylist() == [0, 10, 1, 11]


def test_local_session_serves_its_splits_and_keeps_checkpoints_with_its_run():
    from sepcore.train.worker import LocalSession

    class Split:
        def iter_batches(self, **kwargs):
            return kwargs

    reported = []

    class Run:
        def report(self, metrics, save):
            reported.append((metrics, save))

    session = LocalSession(Run(), {"train": Split()})  # type: ignore[arg-type]
    assert (session.rank, session.world, session.device.type) == (0, 1, "cpu")
    net = torch.nn.Linear(2, 2)
    assert session.wrap(net) is net and session.restored() is None
    assert session.batches("train", 4, shuffle=True) == {"batch_size": 4, "batch_format": "numpy",
                                                          "local_shuffle_buffer_size": 64}  # fmt: skip
    assert session.batches("train", 4, shuffle=False)["local_shuffle_buffer_size"] is None
    session.report({"epoch": 0}, None)
    assert reported == [({"epoch": 0}, None)]
