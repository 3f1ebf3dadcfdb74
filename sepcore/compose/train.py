"""The composer's training: batches of pieces, epochs and the per-worker loop (no Ray).

``ray_jobs.train`` runs :func:`composer_worker` on each Ray Train worker when
``model.name`` is ``composer``; the loop shares the separators' resume point, time budget,
early stopping, history and checkpoints (:mod:`sepcore.train.worker`).

A training example is one window of ``window`` steps of a piece (a random bar-aligned
start each epoch; shorter pieces whole); the model reads steps ``0..L-2`` and predicts
``1..L-1``. An epoch is one window of every training piece (in all keys) of this worker's
share, shuffled. Validation reads whole pieces. Losses: ``train_loss`` is the training
objective, ``val_loss`` the held-out negative log-likelihood of the next step in nats
(chord + melody; ``val_chord_nll`` and ``val_melody_nll`` its parts).
"""

from __future__ import annotations

import functools
import logging
import time
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
import torch
from torch import nn

from sepcore.compose.grid import Grid, Inputs, Piece
from sepcore.models import checkpoint as ckpt
from sepcore.models.composer import Composer
from sepcore.train import loop as L
from sepcore.train.outputs import write_history
from sepcore.train.worker import (
    Budget,
    Session,
    broadcast_flag,
    resume_point,
    update_progress,
)

log = logging.getLogger("sep.train")


def grid_of(meta: dict[str, Any]) -> Grid:
    return Grid(**meta["grid"])


def inputs_of(meta: dict[str, Any]) -> Inputs:
    """The inputs a composer checkpoint's model reads (its ``meta``)."""
    return Inputs(grid_of(meta), int(meta["position_units"]), tuple(meta["model"]["config"].get("conditions") or ()))


def batch_of(pieces: Sequence[Piece], inputs: Inputs, window: int | None,
             rng: np.random.Generator | None, device: torch.device | str = "cpu") -> dict[str, torch.Tensor]:  # fmt: skip
    """Padded tensors of ``pieces``: ``x`` ``(batch, L-1, inputs.units)``, ``chords``/``melody``
    ``(batch, L-1)`` (the next steps) and ``mask`` ``(batch, L-1)``. With ``window`` each piece
    longer than it gives a window starting on a random bar line (``rng``), else the whole piece."""
    cut = []
    for p in pieces:
        start, end = 0, p.steps
        if window is not None and p.steps > window:
            bars = (p.steps - window) // p.steps_per_bar
            start = int(rng.integers(0, bars + 1)) * p.steps_per_bar if rng is not None else 0
            end = start + window
        cut.append((p, start, end))
    length = max(end - start for _, start, end in cut) - 1
    if length < 1:
        raise ValueError("every piece of a batch needs two steps at least")
    x = np.zeros((len(cut), length, inputs.units), dtype=np.float32)
    chords = np.zeros((len(cut), length), dtype=np.int64)
    melody = np.zeros((len(cut), length), dtype=np.int64)
    mask = np.zeros((len(cut), length), dtype=bool)
    for i, (p, start, end) in enumerate(cut):
        n = end - start - 1
        x[i, :n] = inputs.encode(p.chords[start:end - 1], p.melody[start:end - 1], p.steps_per_bar, p.source, start)
        chords[i, :n], melody[i, :n], mask[i, :n] = p.chords[start + 1:end], p.melody[start + 1:end], True
    return {k: torch.from_numpy(v).to(device) for k, v in
            {"x": x, "chords": chords, "melody": melody, "mask": mask}.items()}  # fmt: skip


def batches(pieces: Sequence[Piece], batch_size: int, inputs: Inputs, window: int | None,
            rng: np.random.Generator | None, device: torch.device | str = "cpu") -> Iterator[dict[str, torch.Tensor]]:  # fmt: skip
    """``pieces`` in batches (shuffled when ``rng`` is given; long pieces sorted together otherwise)."""
    order = rng.permutation(len(pieces)) if rng is not None else np.argsort([p.steps for p in pieces], kind="stable")
    for i in range(0, len(order), batch_size):
        yield batch_of([pieces[j] for j in order[i:i + batch_size]], inputs, window, rng, device)


def step_log_probs(model: Composer, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """Log-probabilities of the true next chord and melody unit, ``(batch, L-1)`` each."""
    lc, lm, _ = model.log_probs(batch["x"], batch["chords"])
    return (lc.gather(-1, batch["chords"][..., None])[..., 0], lm.gather(-1, batch["melody"][..., None])[..., 0])


def evaluate(model: nn.Module, pieces: Sequence[Piece], inputs: Inputs, batch_size: int = 16,
             device: torch.device | str = "cpu") -> dict[str, float]:  # fmt: skip
    """Whole-piece next-step NLL sums over ``pieces``: ``chord``, ``melody`` (nats) and ``steps``."""
    net = getattr(model, "module", model)  # a DDP wrapper's model
    if not isinstance(net, Composer):
        raise TypeError(f"evaluate needs a Composer, got {type(net).__name__}")
    net.eval()
    chord = melody = steps = 0.0
    with torch.inference_mode():
        for b in batches(pieces, batch_size, inputs, None, None, device):
            lc, lm = step_log_probs(net, b)
            m = b["mask"]
            chord -= float(lc[m].sum())
            melody -= float(lm[m].sum())
            steps += float(m.sum())
    return {"chord": chord, "melody": melody, "steps": steps}


def piece_log_probs(model: Composer, piece: Piece, inputs: Inputs) -> tuple[np.ndarray, np.ndarray]:
    """Per-step log-probabilities of ``piece``'s steps ``1..T-1``: ``(chord_lp, melody_lp)``, ``(T-1,)`` each."""
    model.eval()
    with torch.inference_mode():
        b = batch_of([piece], inputs, None, None)
        lc, lm = step_log_probs(model, b)
    return lc[0].numpy().astype(np.float64), lm[0].numpy().astype(np.float64)


def piece_predictions(model: Composer, piece: Piece, inputs: Inputs) -> tuple[np.ndarray, np.ndarray]:
    """The most likely next chord and, given it, melody unit for steps ``1..T-1`` (teacher forced)."""
    model.eval()
    with torch.inference_mode():
        b = batch_of([piece], inputs, None, None)
        chord_feat, melody_feat, _ = model.run(b["x"])
        chords = model.chord_log_probs(model.chord_logits(chord_feat)).argmax(-1)
        melody = model.melody_logits(melody_feat, chords if model.output == "softmax" else None).argmax(-1)
    return chords[0].numpy(), melody[0].numpy()


def train_epoch(model: nn.Module, data: Iterator[dict[str, torch.Tensor]], optimizer: Any, clip: float | None,
                max_steps: int | None, stop: Any) -> dict[str, float]:  # fmt: skip
    """One training pass: ``{"loss", "nll", "samples" (predicted steps), "seconds", "stopped"}``."""
    model.train()
    loss_sum = nll_sum = count = 0.0
    steps, stopped, t0 = 0, False, time.monotonic()
    for b in data:
        optimizer.zero_grad(set_to_none=True)
        loss, nll = model(b["x"], b["chords"], b["melody"], b["mask"])
        loss.backward()
        if clip is not None:
            nn.utils.clip_grad_norm_(model.parameters(), clip)
        optimizer.step()
        n = float(b["mask"].sum())
        loss_sum, nll_sum, count = loss_sum + float(loss.detach()) * n, nll_sum + float(nll.detach()) * n, count + n
        steps += 1
        if max_steps is not None and steps >= max_steps:
            break
        if stop():
            stopped = True
            break
    return {"loss": loss_sum / max(count, 1.0), "nll": nll_sum / max(count, 1.0), "samples": count,
            "seconds": time.monotonic() - t0, "stopped": float(stopped)}  # fmt: skip


def _all_reduce(values: list[float], world: int) -> list[float]:
    if world == 1:
        return values
    import torch.distributed as dist

    t = torch.tensor(values, dtype=torch.float64)
    dist.all_reduce(t)
    return t.tolist()  # type: ignore[no-any-return]


def composer_worker(config: dict[str, Any], session: Session) -> None:
    """Train the composer from the resume point to ``optim.epochs``, early stop or the time budget.

    ``config``: ``meta`` (the checkpoint's meta: ``model``, ``grid``, ``position_units``),
    ``optim``, ``window``, ``pieces`` (``train``, in all keys already, and ``validation``),
    ``seed``, ``threads``, ``output``, ``resume_from``.
    """
    rank, world, device = session.rank, session.world, session.device
    torch.manual_seed(config["seed"] + rank)
    torch.set_num_threads(config["threads"])
    meta, opt_cfg = config["meta"], config["optim"]
    inputs = inputs_of(meta)
    found = session.restored() or (ckpt.load_state(config["resume_from"]) if config["resume_from"] else None)
    saved, state = resume_point(found)
    budget = Budget(opt_cfg.get("max_minutes"), state["elapsed_s"], world)
    if budget.spent():
        if rank == 0:
            log.info("train: the time budget of %.4g min is spent already; nothing to do", opt_cfg["max_minutes"])
        return
    net, optimizer, scheduler, _ = L.build_for_training(meta["model"], opt_cfg, lambda m: m.to(device), saved)
    model = session.wrap(net)
    train = config["pieces"]["train"][rank::world]  # equal shares (worker_config)
    val = config["pieces"]["validation"][rank::world]
    for epoch in range(state["epoch"], opt_cfg["epochs"]):
        rng = np.random.default_rng([config["seed"], rank, epoch])
        tr = train_epoch(model, batches(train, opt_cfg["batch_size"], inputs, config["window"], rng, device),
                         optimizer, opt_cfg.get("clip_grad_norm"), opt_cfg["max_steps_per_epoch"], budget.step_stop)  # fmt: skip
        t_val = time.monotonic()
        va = evaluate(net, val, inputs, device=device)
        t = _all_reduce([tr["loss"] * tr["samples"], tr["samples"], va["chord"], va["melody"], va["steps"]], world)
        seconds = tr["seconds"]
        metrics = {"epoch": epoch, "train_loss": t[0] / max(t[1], 1.0),
                   "val_loss": (t[2] + t[3]) / max(t[4], 1.0), "val_chord_nll": t[2] / max(t[4], 1.0),
                   "val_melody_nll": t[3] / max(t[4], 1.0), "samples_per_s": t[1] / max(seconds, 1e-9),
                   "train_samples": int(t[1]), "val_samples": int(t[4]), "lr": optimizer.param_groups[0]["lr"]}  # fmt: skip
        budget.validated(time.monotonic() - t_val)
        metrics["elapsed_s"] = budget.elapsed()
        if scheduler is not None:
            scheduler.step(metrics["val_loss"])
        state = update_progress(state, metrics, "val_loss")
        out_of_time = budget.spent(reserve=True)
        stop = broadcast_flag(state["stale"] >= opt_cfg["early_stopping_patience"] or out_of_time, world)
        save = None
        if rank == 0:
            write_history(config["output"], state["history"])
            full = {**meta, "metrics": metrics, "history": state["history"],
                    "progress": {"best": state["best"], "stale": state["stale"], "elapsed_s": metrics["elapsed_s"]}}  # fmt: skip
            save = functools.partial(ckpt.save, model=net, meta=full, epoch=epoch,
                                     optimizer=L.training_state(optimizer, scheduler, None))  # fmt: skip
        session.report(metrics, save)
        if rank == 0:
            why = " (time budget)" if out_of_time else " (early stop)" if stop else ""
            log.info("train epoch %d/%d: train_loss %.4g, val_loss %.4g nats/step%s", epoch + 1, opt_cfg["epochs"],
                     metrics["train_loss"], metrics["val_loss"], why)  # fmt: skip
        if stop:
            break


def worker_config(cfg: Any) -> dict[str, Any]:
    """What every worker needs (:func:`composer_worker`) from the train job's config ``cfg``:
    the pieces are read here, once; a run already in the output is continued only with the
    same settings."""
    from sepcore.compose.data import load_pieces, training_pieces
    from sepcore.io import storage
    from sepcore.train import outputs as O

    output = storage.normalize_uri(cfg.output)
    latest = ckpt.find_latest(storage.join(output, O.RUNS))
    if latest:
        O.check_resume(cfg, latest)
        log.info("train: resuming from %s (epoch %d)", latest, ckpt.read_meta(latest)["epoch"])
    grid = cfg.sequences.grid.grid()
    splits, record = load_pieces(cfg.sequences)
    train = training_pieces(cfg.sequences, splits["train"])
    kwargs = dict(cfg.model.config)
    kwargs.setdefault("position_units", max(p.steps_per_bar for p in train))
    if cfg.sequences.condition:
        kwargs["conditions"] = sorted({p.source for p in train})
    from sepcore.compose.grid import CHORD_PCS

    kwargs.update(melody_units=grid.melody_units, chord_pcs=CHORD_PCS.astype(int).tolist())
    record["steps"] = {s: int(sum(p.steps for p in ps)) for s, ps in splits.items()}
    log.info("train: composer sequences: %s; %d training pieces in all keys, %d validation",
             record["pieces"], len(train), len(splits["validation"]))  # fmt: skip
    meta = {"task": "composer", "model": {"name": "composer", "config": kwargs, "log_input": False},
            "grid": grid.to_json(), "position_units": int(kwargs["position_units"]), "sequences": record,
            "settings": O.run_settings(cfg)}  # fmt: skip
    world = cfg.scaling.num_workers
    usable = len(train) // world * world  # equal shares: every DDP worker takes as many steps
    s = cfg.scaling
    return {"meta": meta, "optim": cfg.optim.model_dump(), "window": cfg.window, "seed": cfg.seed,
            "pieces": {"train": train[:usable], "validation": splits["validation"]},
            "threads": s.threads or max(1, round(s.cpus_per_worker)), "output": output, "resume_from": latest}  # fmt: skip
