"""Training several stems, the loader's excerpts and augmentations, and the time budget."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
import torch

from sepcore.errors import ConfigError
from sepcore.train import loop as L
from sepcore.train import outputs as O
from sepcore.train import worker as W


def test_loader_excerpts_gain_and_swap_change_mixture_and_targets_alike():
    rng = np.random.default_rng(0)
    mix = torch.rand(6, 2, 5, 16)
    targets = torch.rand(6, 3, 2, 5, 16)
    loader = {"excerpt_frames": 8, "gain_db": (-6.0, 6.0), "channel_swap": 0.5}
    out = L.loader_augment({"mix": mix, "targets": targets}, loader, rng, ("mix", "targets"))
    assert out["mix"].shape == (6, 2, 5, 8) and out["targets"].shape == (6, 3, 2, 5, 8)
    swapped = 0
    for i in range(6):  # each example: one excerpt, one gain and one swap for mixture and targets
        found = None
        for start in range(9):
            for flip in (False, True):
                m = mix[i, :, :, start : start + 8]
                t = targets[i, :, :, :, start : start + 8]
                m, t = (m.flip(0), t.flip(1)) if flip else (m, t)
                g = out["mix"][i].sum() / m.sum()
                if torch.allclose(out["mix"][i], g * m, rtol=1e-5) and torch.allclose(out["targets"][i], g * t, rtol=1e-5):
                    found = (start, flip, float(g))
        assert found is not None, f"example {i} is not one excerpt of its own chunk at one gain"
        assert 10 ** (-6 / 20) - 1e-6 <= found[2] <= 10 ** (6 / 20) + 1e-6
        swapped += found[1]
    assert 0 < swapped < 6
    with pytest.raises(ValueError, match="excerpt_frames 32 exceeds"):
        L.loader_augment({"mix": mix, "targets": targets}, {"excerpt_frames": 32}, rng, ("mix", "targets"))


def test_the_models_stems_fold_the_data_stems_it_leaves_out_into_other():
    manifest = {"target": None, "stems": ["bass", "drums", "guitar", "other"], "shapes": {}}
    cfg = SimpleNamespace(targets=["guitar"], data="d")
    targets, stems, fold = O.model_stems(cfg, manifest)
    assert (targets, stems, fold) == (["guitar"], ["guitar", "other"], [[2], [0, 1, 3]])
    x = torch.arange(4.0).view(1, 4, 1).expand(2, 4, 3)
    folded = W.fold_stems(x, fold)
    assert folded.shape == (2, 2, 3) and torch.equal(folded[:, 0], x[:, 2]) and torch.equal(folded[:, 1], x[:, [0, 1, 3]].sum(1))
    assert O.model_stems(SimpleNamespace(targets=None, data="d"), manifest)[1] == manifest["stems"]
    with pytest.raises(ConfigError, match="piano"):
        O.model_stems(SimpleNamespace(targets=["piano"], data="d"), manifest)
    with pytest.raises(ConfigError, match="one target"):
        O.model_stems(SimpleNamespace(targets=["guitar"], data="d"), {"target": "guitar", "stems": None})


def test_input_statistics_are_the_per_bin_mean_and_deviation_of_the_log_input():
    g = torch.Generator().manual_seed(0)
    rows = [torch.rand(4, 1, 3, 10, generator=g) * torch.tensor([1.0, 5.0, 20.0]).view(1, 1, 3, 1) for _ in range(3)]
    mean, std = L.input_statistics(({"mix": r} for r in rows), True, rows=100)
    x = torch.log1p(torch.cat(rows)).double()
    assert torch.allclose(mean.double(), x.mean(dim=(0, 1, 3)), atol=1e-6)
    assert torch.allclose(std.double(), x.std(dim=(0, 1, 3), unbiased=False), atol=1e-6)


class _Rows:
    """A split as a LocalSession reads it: numpy batches of byte columns."""

    def __init__(self, n: int, shapes: dict[str, list[int]], seed: int):
        rng = np.random.default_rng(seed)
        mix = rng.random((n, *shapes["mix"]), dtype=np.float32) + 0.1
        stems, bins = shapes["targets"][0], shapes["mix"][1]
        parts = np.zeros((n, *shapes["targets"]), dtype=np.float32)  # stem k holds a band of bins
        for k, band in enumerate(np.array_split(np.arange(bins), stems)):
            parts[:, k, :, band] = 1.0
        targets = parts * mix[:, None]
        self.cols = {"mix": [r.tobytes() for r in mix], "targets": [r.tobytes() for r in targets]}
        self.n = n

    def iter_batches(self, batch_size: int, **_: object):
        for i in range(0, self.n * self.repeat, batch_size):
            j = i % self.n
            yield {k: np.array(v[j : j + batch_size], dtype=object) for k, v in self.cols.items()}

    repeat = 1


def _worker_config(tmp_path, max_minutes: float | None, epochs: int) -> dict:
    shapes = {"mix": [1, 33, 16], "targets": [3, 1, 33, 16]}
    model = {"name": "blstm", "config": {"n_bins": 33, "channels": 1, "hidden": 16, "layers": 1, "sources": 3},
             "log_input": True}
    optim = {"epochs": epochs, "batch_size": 4, "lr": 1e-3, "weight_decay": 0.0, "scheduler": "none",
             "early_stopping_patience": 100, "max_steps_per_epoch": None, "amp": False, "loss": "mse",
             "clip_grad_norm": 1.0, "max_minutes": max_minutes}
    meta = {"model": model, "task": "separator", "target": None, "targets": ["bass", "drums"],
            "stems": ["bass", "drums", "other"], "sample_rate": 22050, "channels": 1,
            "feature": {"n_fft": 64, "hop": 16}, "frames": 16}
    return {"meta": meta, "optim": optim, "validation": {"metric": "val_loss"}, "shapes": shapes,
            "dtype": "float32", "seed": 0, "threads": 1, "output": str(tmp_path), "val_tracks": [],
            "resume_from": None, "keep_checkpoints": 2, "loader": {"excerpt_frames": 8, "gain_db": None,
            "channel_swap": 0.0}, "fold": None, "input_stats": None}


def test_the_time_budget_ends_the_epoch_in_progress_saves_it_and_a_resume_has_nothing_left(tmp_path):
    config = _worker_config(tmp_path, max_minutes=0.5 / 60, epochs=1000)
    slow = _Rows(64, config["shapes"], 0)
    slow.repeat = 10_000  # an epoch of far more steps than half a second allows
    reports: list[dict] = []
    run = W.LocalRun(str(tmp_path), keep=2, metric="val_loss", on_report=reports.append)
    session = W.LocalSession(run, {"train": slow, "validation": _Rows(8, config["shapes"], 1)})
    W.train_worker(config, session)
    assert len(reports) == 1 and reports[0]["train_samples"] < 640_000  # stopped inside the first epoch
    assert reports[0]["elapsed_s"] >= 0.5
    history = O.read_history(str(tmp_path))
    assert [h["epoch"] for h in history] == [0]
    latest = W.ckpt.find_latest(str(tmp_path / "runs"))
    meta = W.ckpt.read_meta(latest)
    assert meta["progress"]["elapsed_s"] >= 0.5
    assert O.trained_out(str(tmp_path), SimpleNamespace(epochs=1000, early_stopping_patience=100, max_minutes=0.5 / 60))
    config["resume_from"] = latest  # the same run again: its budget is spent, nothing trains
    more: list[dict] = []
    W.train_worker(config, W.LocalSession(W.LocalRun(str(tmp_path), 2, "val_loss", more.append),
                                          {"train": slow, "validation": _Rows(8, config["shapes"], 1)}))
    assert more == []


def test_a_multi_stem_model_learns_the_stems_of_its_data(tmp_path):
    config = _worker_config(tmp_path, max_minutes=None, epochs=8)
    config["loader"] = None
    config["optim"]["lr"] = 1e-2
    reports: list[dict] = []
    run = W.LocalRun(str(tmp_path), keep=1, metric="val_loss", on_report=reports.append)
    data = _Rows(64, config["shapes"], 0)
    W.train_worker(config, W.LocalSession(run, {"train": data, "validation": data}))
    losses = [r["val_loss"] for r in reports]
    assert len(losses) == 8 and losses[-1] < 0.5 * losses[0]


@pytest.mark.usefixtures("local_ray")
def test_a_stems_training_job_saves_a_checkpoint_that_separates_every_stem(tiny_stem_shards, tmp_path):
    from ray_jobs import train
    from sepcore.models import checkpoint as ckpt
    from sepcore.models import source_count
    from sepcore.separate.apply import separate

    out = tmp_path / "stems"
    args = [f"data={tiny_stem_shards}", f"output={out}", "model.name=blstm", "model.config={hidden: 16, layers: 1}",
            "optim={epochs: 2, batch_size: 4, lr: 0.003, loss: mse, clip_grad_norm: 5.0}",
            "loader={excerpt_frames: 8, gain_db: [-3, 3]}", "validation={sdr_tracks: 1, metric: val_sdr}"]  # fmt: skip
    assert train.main(args) == 0
    history = O.read_history(str(out))
    assert [h["epoch"] for h in history] == [0, 1]
    last = history[-1]
    scored = [k for k in last if k.startswith("val_sdr_") and not k.startswith("val_sdr_mixture")]
    assert "val_sdr_drums" in scored and np.isfinite(last["val_sdr"])  # both songs play drums
    audible = [last[k] for k in scored if np.isfinite(last[k])]
    assert last["val_sdr"] == pytest.approx(float(np.mean(audible)))  # the mean of the per-target medians

    model, meta = ckpt.load_model(str(out))
    stems = ["bass", "drums", "guitar", "piano", "strings", "other"]
    assert (meta["target"], meta["targets"], meta["stems"], meta["wiener_iterations"]) == (None, stems[:-1], stems, 1)
    assert source_count(model) == 6
    audio = np.random.default_rng(0).standard_normal((1, 22050)).astype(np.float32) * 0.1
    parts = separate(model, audio, 22050, 256, 128, 16, stems=meta["stems"], wiener_iterations=1)
    assert sorted(parts) == sorted(stems)
    total = sum(parts.values())
    assert np.linalg.norm(total - audio) / np.linalg.norm(audio) < 1e-4


def test_a_held_split_serves_every_row_once_per_epoch_as_the_shards_decode():
    shapes = {"mix": [1, 5, 4], "target": [1, 5, 4]}
    rng = np.random.default_rng(0)
    rows = {c: rng.random((11, *shapes[c])).astype(np.float16) for c in shapes}
    reads = [{c: np.array([r.tobytes() for r in rows[c][i : i + 3]], dtype=object) for c in shapes}
             for i in range(0, 11, 3)]  # read in batches of 3, trained in batches of 4  # fmt: skip
    held = W.HeldSplit(iter(reads), shapes, "float16", ("mix", "target"))
    assert held.rows == 11 and held.columns["mix"].dtype == torch.float16  # held as stored
    in_order = list(held.batches(4, None, torch.device("cpu")))
    assert [b["mix"].shape[0] for b in in_order] == [4, 4, 3]
    decoded = L.decode_batch({c: [r.tobytes() for r in rows[c]] for c in shapes}, shapes, "float16", shapes)
    for c in shapes:  # the order read, float32, equal to decoding the rows one batch at a time
        assert torch.equal(torch.cat([b[c] for b in in_order]), decoded[c]) and in_order[0][c].dtype == torch.float32
    epochs = [list(held.batches(4, np.random.default_rng(s), torch.device("cpu"))) for s in (1, 2)]
    orders = []
    for batches in epochs:  # each epoch: every row once, mixture and target of the same row together
        mix, target = (torch.cat([b[c] for b in batches]) for c in ("mix", "target"))
        order = [int(np.flatnonzero((decoded["mix"] == m).all(dim=(1, 2, 3)))[0]) for m in mix]
        assert sorted(order) == list(range(11)) and torch.equal(target, decoded["target"][order])
        orders.append(order)
    assert orders[0] != orders[1] != list(range(11))
    in_order[0]["mix"] += 1.0  # a batch is a copy: training cannot change the held rows
    assert torch.equal(held.columns["mix"][:4].float(), decoded["mix"][:4])


def test_a_worker_that_holds_its_splits_reads_each_once_and_trains_as_well(tmp_path):
    class Counted(_Rows):
        reads = 0

        def iter_batches(self, batch_size: int, **kw: object):
            Counted.reads += 1
            return super().iter_batches(batch_size, **kw)

    losses = {}
    for cache in (False, True):
        config = {**_worker_config(tmp_path / str(cache), max_minutes=None, epochs=6), "loader": None, "cache": cache}
        config["optim"]["lr"] = 1e-2
        reports: list[dict] = []
        Counted.reads = 0
        data = {"train": Counted(64, config["shapes"], 0), "validation": Counted(16, config["shapes"], 1)}
        W.train_worker(config, W.LocalSession(W.LocalRun(str(tmp_path / str(cache)), 1, "val_loss", reports.append),
                                              data))  # fmt: skip
        assert [r["train_samples"] for r in reports] == [64] * 6  # every row once per epoch
        assert Counted.reads == (2 if cache else 12)  # held: each split read once; else read every epoch
        losses[cache] = [r["val_loss"] for r in reports]
    assert losses[True][-1] < 0.5 * losses[True][0] and losses[False][-1] < 0.5 * losses[False][0]


def test_each_worker_holds_its_share_of_the_splits_when_it_fits_loader_cache_mb():
    manifest = {"shapes": {"mix": [1, 1024, 64], "target": [1, 1024, 64]}, "dtype": "float16",
                "shards": [{"split": "train", "rows": 48}, {"split": "validation", "rows": 16},
                           {"split": "test", "rows": 1000}]}  # 64 rows of 256 KiB in the two splits: 16 MiB  # fmt: skip

    def held(workers: int, cache_mb: float) -> bool:
        cfg = SimpleNamespace(scaling=SimpleNamespace(num_workers=workers), loader=SimpleNamespace(cache_mb=cache_mb))
        return O.held_in_memory(cfg, manifest)

    assert held(1, 16) and not held(1, 15.9) and held(2, 8) and not held(4, 0)


def test_workers_read_equal_runs_of_a_split_from_its_shards(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    shards, n = [], 0
    for i, rows in enumerate((4, 3, 5)):  # row k of the split holds k in both columns
        uri = str(tmp_path / f"shard_{i}.parquet")
        values = [np.float32(k).tobytes() for k in range(n, n + rows)]
        pq.write_table(pa.table({"mix": values, "target": values, "track_id": [f"t{i}"] * rows}), uri)
        shards.append([uri, rows])
        n += rows

    def read(share: dict, world: int) -> list[list[int]]:
        got = []
        for rank in range(world):
            rows = [int(np.frombuffer(v, np.float32)[0]) for b in W.read_share(share, rank, world, ["mix", "target"])
                    for v in b["mix"]]  # fmt: skip
            got.append(rows)
        return got

    whole = {"shards": shards, "keep": None, "limit": None}
    assert read(whole, 1) == [list(range(12))]
    assert read(whole, 2) == [list(range(6)), list(range(6, 12))]  # across shard boundaries
    assert read({**whole, "limit": 7}, 2) == [[0, 1, 2], [3, 4, 5]]  # the first 7 rows; the odd one left out
    assert read(whole, 5) == [[0, 1], [2, 3], [4, 5], [6, 7], [8, 9]]
    keep = {shards[0][0]: [1, 3], shards[1][0]: [0, 1, 2], shards[2][0]: [4]}
    kept = {"shards": [[u, len(keep[u])] for u, _ in shards], "keep": keep, "limit": None}
    assert read(kept, 2) == [[1, 3, 4], [5, 6, 11]]
    manifest = {"shards": [{"uri": u, "split": "train" if i < 2 else "validation", "rows": r, "track_id": f"t{i}"}
                           for i, (u, r) in enumerate(shards)]}  # fmt: skip
    cfg = SimpleNamespace(loader=SimpleNamespace(snippets_per_song=2), seed=0, scaling=SimpleNamespace(num_workers=2),
                          optim=SimpleNamespace(batch_size=2), validation=SimpleNamespace(max_steps=1))  # fmt: skip
    shares = O.split_shares(cfg, manifest)
    assert [r for _, r in shares["train"]["shards"]] == [2, 2] and shares["train"]["keep"] == O.snippet_rows(manifest, 2, 0)
    assert shares["validation"] == {"shards": [shards[2]], "keep": None, "limit": 4}
