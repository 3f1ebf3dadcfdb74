"""The per-worker training loop (no Ray): epochs, validation, checkpoints, early stopping.

:func:`train_worker` runs on every worker of a run. What it needs from its runtime
comes through a :class:`Session`: its rank, the batches of its share of a split, the
state Ray restored after a worker failure, and where an epoch's metrics and checkpoint
go. ``ray_jobs.trainer`` has one inside a Ray Train worker (DDP, Ray's checkpoints);
:class:`LocalSession` is the one for a single worker in the calling process (a Tune
trial, run by :class:`InProcessTrainer`), which keeps its checkpoints with :class:`LocalRun`.
"""

from __future__ import annotations

import functools
import logging
import time
from collections.abc import Callable, Iterable, Iterator
from typing import Any, Protocol

import numpy as np
import torch
from torch import nn

from sepcore.errors import SepError
from sepcore.io import storage
from sepcore.models import checkpoint as ckpt
from sepcore.train import loop as L
from sepcore.train.outputs import RUNS, write_history
from sepcore.train.selection import is_better, stale_checkpoints

log = logging.getLogger("sep.train")


class Session(Protocol):
    """What the loop needs from the process it runs in."""

    rank: int
    world: int
    device: torch.device

    def wrap(self, net: nn.Module) -> nn.Module:
        """The model to train (DDP across workers, or ``net`` itself)."""

    def batches(self, split: str, batch_size: int, shuffle: bool) -> Iterable[dict[str, Any]]:
        """This worker's rows of ``split`` in numpy batches."""

    def restored(self) -> tuple[dict[str, Any], dict[str, Any]] | None:
        """(meta, state) of the checkpoint restored after a worker failure, if any."""

    def report(self, metrics: dict[str, Any], save: Callable[[str], None] | None) -> None:
        """Report an epoch; ``save(folder)`` writes rank 0's checkpoint into a folder."""


def train_worker(config: dict[str, Any], session: Session) -> None:
    """Train from the resume point to ``optim.epochs``, early stop or the time budget, one checkpoint per epoch.

    A fresh run whose ``meta`` has an ``init`` record (the frame DNN's start, set by
    ``ray_jobs.trainer.build_trainer``) first measures the validation loss of its initial weights
    (:func:`initial_val_loss`) into ``meta["init"]["val_loss"]``, which every checkpoint carries:
    the curves' epoch 0. A resumed or restored run keeps the record of its checkpoint."""
    rank, world, device = session.rank, session.world, session.device
    torch.manual_seed(config["seed"] + rank)
    torch.set_num_threads(config["threads"])
    meta, opt_cfg = config["meta"], config["optim"]
    found = session.restored() or _saved(config["resume_from"])
    saved, state = resume_point(found)
    if found is not None and found[0].get("init") is not None:  # a restored worker keeps the run's record
        meta = {**meta, "init": found[0]["init"]}
    budget = Budget(opt_cfg.get("max_minutes"), state["elapsed_s"], world)
    if budget.spent():
        if rank == 0:
            log.info("train: the time budget of %.4g min is spent already; nothing to do", opt_cfg["max_minutes"])
        return
    # Placed on the device before the optimizer is built and its state loaded (see build_for_training).
    net, optimizer, scheduler, scaler = L.build_for_training(
        meta["model"], opt_cfg, lambda m: m.to(device), saved,
        scaler_device="cuda" if opt_cfg["amp"] and device.type == "cuda" else None)  # fmt: skip
    if saved is None and config.get("initial_state") is not None:  # the frame DNN's least-squares start
        net.load_state_dict(config["initial_state"])
    task = meta["task"]
    stems = meta.get("stems")
    columns = L.columns_for(task, multi=stems is not None)
    loader = config.get("loader") or {}
    rng = np.random.default_rng([config["seed"], rank, state["epoch"]])
    fold = config.get("fold")

    held, shares = {}, config.get("shares")
    for split in ("train", "validation") if config.get("cache") else ():  # read once: the shards, or the session's
        rows: Iterable[dict[str, Any]] = (read_share(shares[split], rank, world, columns) if shares
                                          else session.batches(split, HeldSplit.READ_ROWS, False))  # fmt: skip
        held[split] = HeldSplit(rows, config["shapes"], config["dtype"], columns, split)

    def decoded(split: str, shuffle: bool) -> Iterable[dict[str, torch.Tensor]]:
        if split in held:  # a new random order each epoch (rng carries the run's seed, rank and epoch)
            return held[split].batches(opt_cfg["batch_size"], rng if shuffle else None, device)
        return (L.decode_batch(b, config["shapes"], config["dtype"], columns, device)
                for b in session.batches(split, opt_cfg["batch_size"], shuffle))  # fmt: skip

    def batches(split: str, shuffle: bool) -> Iterable[dict[str, torch.Tensor]]:
        for batch in decoded(split, shuffle):
            if fold is not None:
                batch[columns[1]] = fold_stems(batch[columns[1]], fold)
            yield L.loader_augment(batch, loader, rng, columns) if split == "train" and loader else batch

    stats = config.get("input_stats")
    if saved is None and stats:
        set_input_stats(net, stats_batches(stats["uris"], config["shapes"], config["dtype"]),
                        meta["model"].get("log_input", False), stats["rows"])  # fmt: skip
    model = session.wrap(net)
    pairs = validation_pairs(config["val_tracks"], meta) if rank == 0 else []
    loss = opt_cfg.get("loss", "l1")
    if saved is None and meta.get("init") is not None:  # a fresh frame DNN run: its curves start at epoch 0
        start = initial_val_loss(task, model, batches("validation", False), loss, columns, world)
        meta = {**meta, "init": {**meta["init"], "val_loss": start}}
        if rank == 0:
            log.info("train: validation loss of the initial weights (%s): %.4g", meta["init"].get("method"), start)

    gan = adversarial_step(config, model, optimizer, saved, world, loss)
    metric = config["validation"]["metric"]
    for epoch in range(state["epoch"], opt_cfg["epochs"]):
        tr = L.run_epoch(task, model, batches("train", True), optimizer, scaler, opt_cfg["max_steps_per_epoch"],
                         loss, columns, opt_cfg.get("clip_grad_norm"), budget.step_stop, gan)  # fmt: skip
        t_val = time.monotonic()
        va = L.run_epoch(task, model, batches("validation", False), loss=loss, columns=columns)
        metrics = {"epoch": epoch, **sum_over_workers(tr, va, world), "lr": optimizer.param_groups[0]["lr"],
                   **(gan.figures() if gan is not None else {})}  # fmt: skip
        if pairs:
            f = meta["feature"]  # separation puts the model back in training mode itself
            metrics.update(L.separation_sdr(net, pairs, meta["sample_rate"], f["n_fft"], f["hop"], meta["frames"],
                                            device, stems, meta.get("targets")))  # fmt: skip
        budget.validated(time.monotonic() - t_val)
        metrics["elapsed_s"] = budget.elapsed()
        if scheduler is not None:
            scheduler.step(metrics["val_loss"])
        state = update_progress(state, metrics, metric)
        out_of_time = budget.spent(reserve=True)
        stop = broadcast_flag(state["stale"] >= opt_cfg["early_stopping_patience"] or out_of_time, world)
        save = None
        if rank == 0:  # before the checkpoint: a killed run keeps its history (a resume rewrites it)
            write_history(config["output"], state["history"])
            full = {**meta, "metrics": metrics, "history": state["history"],
                    "progress": {"best": state["best"], "stale": state["stale"], "elapsed_s": metrics["elapsed_s"]}}  # fmt: skip
            trained = {**L.training_state(optimizer, scheduler, scaler), **(gan.state_dict() if gan is not None else {})}
            save = functools.partial(_save, net=net, meta=full, epoch=epoch, trained=trained)
        session.report(metrics, save)
        if rank == 0:
            why = " (time budget)" if out_of_time else " (early stop)" if stop else ""
            log.info("train epoch %d/%d: %s%s", epoch + 1, opt_cfg["epochs"], epoch_line(metrics), why)
        if stop:
            break


def adversarial_step(config: dict[str, Any], model: nn.Module, optimizer: Any, saved: dict[str, Any] | None,
                     world: int, loss: Any) -> Any:  # fmt: skip
    """The stage-2 step of unet_gan (:class:`sepcore.train.gan.GanStep`) when the run is adversarial
    (``config["gan"]``), its critic restored from ``saved`` (a resumed run's checkpoint); else None."""
    if not config.get("gan"):
        return None
    from sepcore.train.gan import GanStep

    device = next(model.parameters()).device
    gan = GanStep(model, optimizer, config["gan"], config["meta"]["channels"], device, world, loss)
    if saved is not None:
        gan.load_state_dict(saved.get("optimizer") or {})
    return gan


class Budget:
    """The wall-time budget of a run (``optim.max_minutes``), carried across resumes.

    :meth:`step_stop` is asked after every training step: True once the time left would
    not cover the epoch's validation as long as the last one took, so the stopped
    epoch is validated and saved within the budget. With several workers rank 0's
    clock decides and every worker hears it (one broadcast per step).
    """

    def __init__(self, minutes: float | None, elapsed_s: float, world: int):
        self.limit = None if minutes is None else 60.0 * minutes
        self.start = time.monotonic() - elapsed_s
        self.reserve, self.world = 0.0, world

    def elapsed(self) -> float:
        return time.monotonic() - self.start

    def validated(self, seconds: float) -> None:
        self.reserve = max(self.reserve, seconds)

    def spent(self, reserve: bool = False) -> bool:
        return self.limit is not None and self.elapsed() + (self.reserve if reserve else 0.0) >= self.limit

    def step_stop(self) -> bool:
        if self.limit is None:
            return False
        return broadcast_flag(self.spent(reserve=True), self.world)


class HeldSplit:
    """One worker's rows of a split, read once (:func:`read_share`, or a Tune trial's session) and
    held in memory in the stored dtype (``loader.cache_mb``), so that later epochs do not read and
    decode the shards again: each epoch's batches are gathered from here and cast to float32 one
    batch at a time.

    Shape: each column ``(rows, *shape)``; a batch ``(batch, *shape)`` float32 on ``device``.
    """

    #: Rows per batch while reading (larger than a training batch: fewer, cheaper pulls).
    READ_ROWS = 128

    def __init__(self, batches: Iterable[dict[str, Any]], shapes: dict[str, Any], dtype: str,
                 columns: Iterable[str], name: str = "split"):  # fmt: skip
        t0 = time.monotonic()
        parts: dict[str, list[np.ndarray]] = {c: [] for c in columns}
        for b in batches:
            for c, part in parts.items():
                part.append(L.stack_rows(b[c], shapes[c], dtype))
        self.columns: dict[str, torch.Tensor] = {}
        for c in list(parts):  # one column at a time, its parts let go as it is joined
            part = parts.pop(c) or [np.empty((0, *shapes[c]), dtype)]
            self.columns[c] = torch.from_numpy(np.concatenate(part))
        self.rows = next(iter(self.columns.values())).shape[0]
        mib = sum(t.numel() * t.element_size() for t in self.columns.values()) / 2**20
        log.info("train: %d rows of %s held in memory (%.0f MiB) in %.1f s", self.rows, name, mib,
                 time.monotonic() - t0)  # fmt: skip

    def batches(self, batch_size: int, rng: np.random.Generator | None,
                device: torch.device) -> Iterator[dict[str, torch.Tensor]]:  # fmt: skip
        """The rows in batches of ``batch_size`` (the last may be short): in a random order drawn
        from ``rng``, or in the order read without it."""
        order = None if rng is None else torch.from_numpy(rng.permutation(self.rows))
        for start in range(0, self.rows, batch_size):
            take = slice(start, start + batch_size) if order is None else order[start : start + batch_size]
            yield {c: _to_device(col[take], device) for c, col in self.columns.items()}


def read_share(share: dict[str, Any], rank: int, world: int,
               columns: Iterable[str]) -> Iterator[dict[str, list[bytes]]]:  # fmt: skip
    """A worker's rows of a split read straight from the shards (no Ray Data): ``columns``, one
    batch per shard.

    ``share`` is :func:`sepcore.train.outputs.split_shares`'s entry of the split. Of its rows in
    the manifest's order (the first ``limit``), worker ``rank`` reads the ``rank``-th of
    ``world`` equal runs of ``rows // world``; the remainder (fewer than ``world`` rows) is left
    out, as Ray Data's equal split leaves it, so that every worker takes as many steps.
    """
    from sepcore.train.outputs import read_kept_rows, read_shards

    total = sum(rows for _, rows in share["shards"])
    each = (total if share["limit"] is None else min(total, share["limit"])) // world
    lo, hi, start = rank * each, (rank + 1) * each, 0
    for uri, rows in share["shards"]:
        a, b = max(lo, start), min(hi, start + rows)
        if a < b:
            table = read_kept_rows({"uri": [uri]}, share["keep"]) if share["keep"] else read_shards({"uri": [uri]})
            table = table.slice(a - start, b - a)
            yield {name: table.column(name).to_pylist() for name in columns}
        start += rows


def _to_device(rows: torch.Tensor, device: torch.device) -> torch.Tensor:
    """Rows gathered on the CPU -> a float32 copy on ``device`` (to a GPU through pinned memory, cast there)."""
    if device.type == "cuda":
        return rows.pin_memory().to(device, non_blocking=True).float()
    return rows.to(torch.float32, copy=True)


def fold_stems(targets: torch.Tensor, fold: list[list[int]]) -> torch.Tensor:
    """The data's stems summed into the model's: stem ``k`` of the result is the sum of the data's
    stems ``fold[k]`` (the identity when the model keeps the data's stems). Magnitudes of stems
    folded into one add up only approximately (|a + b| <= |a| + |b|).
    Shape: ``(batch, data_stems, ...)`` -> ``(batch, len(fold), ...)``."""
    return torch.stack([targets[:, idx].sum(dim=1) for idx in fold], dim=1)


def stats_batches(uris: list[str], shapes: dict[str, Any], dtype: str) -> Iterable[dict[str, torch.Tensor]]:
    """The ``mix`` column of the training shards at ``uris``, read directly (the same on every
    worker, so no worker waits for a Ray Data split), one shard per batch."""
    from sepcore.train.outputs import read_shards

    for uri in uris:
        table = read_shards({"uri": [uri]})
        yield L.decode_batch({"mix": table.column("mix").to_pylist()}, shapes, dtype, ["mix"])


def set_input_stats(net: nn.Module, batches: Iterable[dict[str, torch.Tensor]], log_input: bool, rows: int) -> None:
    """Start a model's input scaling from the training data (Open-Unmix's scaler), if it has one."""
    inner = getattr(net, "model", net)
    setter = getattr(inner, "set_input_stats", None)
    if setter is None or getattr(inner, "input_mean", None) is None:
        return
    mean, std = L.input_statistics(batches, log_input, rows)
    setter(mean.to(next(inner.parameters()).device), std.to(next(inner.parameters()).device))
    log.info("train: input scaling from the training data: mean %.3g, std %.3g (over bins)",
             float(mean.mean()), float(std.mean()))  # fmt: skip


def _save(folder: str, net: nn.Module, meta: dict[str, Any], trained: dict[str, Any], epoch: int) -> None:
    ckpt.save(folder, net, meta, trained, epoch)


def _saved(resume_from: str | None) -> tuple[dict[str, Any], dict[str, Any]] | None:
    return ckpt.load_state(resume_from) if resume_from else None


def resume_point(found: tuple[dict[str, Any], dict[str, Any]] | None) -> tuple[dict[str, Any] | None, dict[str, Any]]:
    """The saved state to restore and the progress to continue from (a fresh start without ``found``)."""
    state: dict[str, Any] = {"epoch": 0, "history": [], "best": None, "stale": 0, "elapsed_s": 0.0}
    if found is None:
        return None, state
    meta, saved = found
    progress = meta.get("progress", {})
    return saved, {"epoch": saved["epoch"] + 1, "history": meta.get("history", []),
                   "best": progress.get("best"), "stale": progress.get("stale", 0),
                   "elapsed_s": float(progress.get("elapsed_s", 0.0))}  # fmt: skip


def update_progress(state: dict[str, Any], metrics: dict[str, Any], metric: str) -> dict[str, Any]:
    value = metrics.get(metric, metrics["val_loss"])
    better = is_better(metric, value, state["best"])
    return {"epoch": metrics["epoch"] + 1, "history": [*state["history"], metrics],
            "best": value if better else state["best"], "stale": 0 if better else state["stale"] + 1,
            "elapsed_s": metrics.get("elapsed_s", state.get("elapsed_s", 0.0))}  # fmt: skip


def epoch_line(metrics: dict[str, Any]) -> str:
    parts = [f"{k} {metrics[k]:.4g}" for k in ("train_loss", "val_loss", "val_sdr") if k in metrics]
    return ", ".join(parts) + f", {metrics['samples_per_s']:.1f} samples/s"


def validation_pairs(tracks: list, meta: dict[str, Any]) -> list:
    """Waveforms of the validation tracks measured for SDR: ``(mix, instrument)`` for one
    target, ``(mix, sources (stems, channels, samples))`` in the model's stems for several."""
    from sepcore.prepare.pairs import PrepareSpec, SkipTrack, make_pair, make_sources

    stems = meta.get("stems")
    feature = {"name": "stft", "n_fft": meta["feature"]["n_fft"], "hop": meta["feature"]["hop"]}
    targets = tuple(meta.get("data_targets") or meta.get("targets") or ())
    spec = PrepareSpec(target=None if stems else meta["target"], targets=targets if stems else (),
                       sample_rate=meta["sample_rate"], channels=meta["channels"], feature=feature,
                       outputs=("target",))  # fmt: skip
    pairs = []
    for track in tracks:
        try:
            if stems is None:
                pair = make_pair(track, spec)
                pairs.append((pair.mix, pair.instrument))
            else:
                mix, sources = make_sources(track, spec)
                fold = meta.get("fold") or [[k] for k in range(len(stems))]
                pairs.append((mix, np.stack([sources[idx].sum(axis=0) for idx in fold])))
        except (SkipTrack, SepError) as exc:
            log.warning("validation track %s left out: %s", track.track_id, exc)
            continue
    return pairs


def initial_val_loss(task: str, model: nn.Module, batches: Iterable[dict[str, torch.Tensor]], loss: Any,
                     columns: tuple[str, str], world: int) -> float:  # fmt: skip
    """The validation loss of the weights before the first training step: the same batches and
    loss as an epoch's validation, the sample-weighted mean over all workers (each one calls it)."""
    va = L.run_epoch(task, model, batches, loss=loss, columns=columns)
    return float(sum_over_workers({"loss": 0.0, "samples": 0, "seconds": 0.0}, va, world)["val_loss"])


def sum_over_workers(tr: dict[str, float], va: dict[str, float], world: int) -> dict[str, Any]:
    """Epoch figures over all workers: each worker's own counts, summed (all-reduce).

    Losses are sample-weighted means; ``samples_per_s`` is the train samples of all
    workers over the slowest worker's time.
    """
    t = [tr["loss"] * tr["samples"], tr["samples"], va["loss"] * va["samples"], va["samples"]]
    seconds = tr["seconds"]
    if world > 1:
        import torch.distributed as dist

        summed = torch.tensor(t, dtype=torch.float64)
        dist.all_reduce(summed)
        slowest = torch.tensor([seconds], dtype=torch.float64)
        dist.all_reduce(slowest, op=dist.ReduceOp.MAX)
        t, seconds = summed.tolist(), float(slowest.item())
    return {"train_loss": t[0] / max(t[1], 1.0), "val_loss": t[2] / max(t[3], 1.0),
            "samples_per_s": t[1] / max(seconds, 1e-9), "train_samples": int(t[1]), "val_samples": int(t[3])}  # fmt: skip


def broadcast_flag(flag: bool, world: int) -> bool:
    if world == 1:
        return flag
    import torch.distributed as dist

    t = torch.tensor([1.0 if flag else 0.0])
    dist.broadcast(t, src=0)
    return bool(t.item())


class LocalRun:
    """Checkpoints of a run that keeps them itself: ``<output>/runs/<name>/checkpoint_<epoch>``.

    After each checkpoint all but the ``keep`` best by ``metric`` and the latest are
    deleted (Ray Train's rule); ``on_report(metrics)`` then hears of the epoch.
    """

    def __init__(self, output: str, keep: int, metric: str, on_report: Callable[[dict[str, Any]], None]):
        self.folder = storage.join(output, RUNS, f"run-{int(time.time())}")
        self.keep, self.metric, self.on_report = keep, metric, on_report

    def report(self, metrics: dict[str, Any], save: Callable[[str], None] | None) -> None:
        if save is not None:
            save(storage.join(self.folder, f"checkpoint_{int(metrics['epoch']):06d}"))
            for folder in stale_checkpoints(ckpt.complete_checkpoints(self.folder), self.metric, self.keep):
                storage.delete(folder, recursive=True)
        self.on_report(metrics)


def split_batches(data: Any, batch_size: int, shuffle: bool) -> Iterable[dict[str, Any]]:
    """A split's rows (a Ray Dataset or one worker's shard of it) in numpy batches,
    shuffled locally in a buffer of 16 batches with ``shuffle``."""
    return data.iter_batches(batch_size=batch_size, batch_format="numpy",  # type: ignore[no-any-return]
                             local_shuffle_buffer_size=batch_size * 16 if shuffle else None)  # fmt: skip


class LocalSession:
    """The :class:`Session` of the only worker of a run, in the calling process: ``datasets``
    holds the splits, ``run`` keeps the checkpoints; nothing is restored (a rerun resumes from
    the output's checkpoints)."""

    rank, world = 0, 1

    def __init__(self, run: LocalRun, datasets: dict[str, Any], gpu: bool = False):
        self.run, self.datasets = run, datasets
        self.device = torch.device("cuda" if gpu and torch.cuda.is_available() else "cpu")

    def wrap(self, net: nn.Module) -> nn.Module:
        return net

    def batches(self, split: str, batch_size: int, shuffle: bool) -> Iterable[dict[str, Any]]:
        return split_batches(self.datasets[split], batch_size, shuffle)

    def restored(self) -> tuple[dict[str, Any], dict[str, Any]] | None:
        return None

    def report(self, metrics: dict[str, Any], save: Callable[[str], None] | None) -> None:
        self.run.report(metrics, save)


class InProcessTrainer:
    """One worker's training in the calling process (``fit()``, like a TorchTrainer's)."""

    def __init__(self, config: dict[str, Any], datasets: dict[str, Any], run: LocalRun, gpu: bool):
        self.config, self.datasets, self.run, self.gpu = config, datasets, run, gpu

    def fit(self) -> None:
        train_worker(self.config, LocalSession(self.run, self.datasets, self.gpu))
