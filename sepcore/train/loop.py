"""Plain training steps (no Ray): batches of prepared rows -> losses, epochs, validation.

:mod:`sepcore.train.worker` runs these on each worker; tests run them directly.

Tasks:

* ``separator`` (hourglass, blstm): input the mixture magnitude ``mix``
  ``(batch, channels, bins, frames)``; the model predicts a mask; the loss is the L1
  (seed 002) or squared (Open-Unmix) distance between ``mask * mix`` and ``target``.
  With several stems the target column is ``targets`` ``(batch, stems, channels, bins,
  frames)`` and the model's masks have the same shape (a softmax over the stems).
* ``activation`` (activation_cnn): input the mixture feature; the model predicts
  ``(batch, classes, frames)`` activations in [0, 1]; the loss is binary
  cross-entropy against the prepared ``activations`` (seed 001).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import numpy as np
import torch
from torch import nn

from sepcore.models.losses import MaskLoss, activation_bce, mask_loss

TASK_OF_MODEL = {"hourglass": "separator", "blstm": "separator", "activation_cnn": "activation",
                 "frame_dnn": "separator", "mask_dnn": "separator", "unet_gan": "separator",
                 "composer": "composer"}  # fmt: skip
def build_for_training(model_meta: dict[str, Any], optim: dict[str, Any],
                       place: Callable[[nn.Module], nn.Module], saved: dict[str, Any] | None = None,
                       scaler_device: str | None = None) -> tuple[nn.Module, Any, Any, Any]:  # fmt: skip
    """Model, optimizer, LR scheduler and AMP scaler, restored from ``saved`` when given.

    The order matters: the model is placed first (``place``: moved to its device, or
    cast), then the optimizer is built on the placed parameters and only then is its
    state loaded, so Adam's moments end up on the parameters' device and dtype
    (``Optimizer.load_state_dict`` casts them to the parameters it holds).
    ``saved`` is the state of a checkpoint's ``model.pt`` (:func:`sepcore.models.checkpoint.load_state`):
    ``state_dict``, and ``optimizer`` = ``{"optimizer", "scheduler", "scaler"}``.
    ``scaler_device``: a ``torch.amp.GradScaler`` for that device (None: no AMP scaler).
    """
    from sepcore.models.checkpoint import build

    net = build(model_meta)
    if saved is not None:
        net.load_state_dict(saved["state_dict"])
    net = place(net)
    optimizer = torch.optim.Adam(net.parameters(), lr=optim["lr"], weight_decay=optim["weight_decay"])
    scheduler = None
    if optim["scheduler"] == "plateau":
        scheduler = torch.optim.lr_scheduler.ReduceLROnPlateau(
            optimizer, factor=optim["plateau_factor"], patience=optim["plateau_patience"],
            min_lr=optim["min_lr"])  # fmt: skip
    scaler = torch.amp.GradScaler(scaler_device) if scaler_device else None
    opt = (saved or {}).get("optimizer") or {}
    if opt.get("optimizer"):
        optimizer.load_state_dict(opt["optimizer"])
    if scheduler is not None and opt.get("scheduler"):
        scheduler.load_state_dict(opt["scheduler"])
    if scaler is not None and opt.get("scaler"):
        scaler.load_state_dict(opt["scaler"])
    return net, optimizer, scheduler, scaler


def training_state(optimizer: Any, scheduler: Any, scaler: Any) -> dict[str, Any]:
    """What a checkpoint saves beside the weights to resume exactly (see :func:`build_for_training`)."""
    return {"optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict() if scheduler is not None else None,
            "scaler": scaler.state_dict() if scaler is not None else None}  # fmt: skip


def decode_batch(batch: dict[str, Any], shapes: dict[str, Sequence[int]], dtype: str,
                 columns: Iterable[str], device: str | torch.device = "cpu") -> dict[str, torch.Tensor]:  # fmt: skip
    """Bytes columns of a batch of rows -> float32 tensors ``(batch, *shape)``."""
    return {name: torch.from_numpy(stack_rows(batch[name], shapes[name], dtype).astype(np.float32)).to(device)
            for name in columns}  # fmt: skip


def stack_rows(values: Sequence[bytes], shape: Sequence[int], dtype: str) -> np.ndarray:
    """A column of rows stored as bytes -> one array ``(rows, *shape)`` in the stored ``dtype`` (one copy)."""
    return np.frombuffer(b"".join(values), dtype=dtype).reshape(len(values), *shape)


def columns_for(task: str, multi: bool = False) -> tuple[str, str]:
    """(input column, target column) of a task; ``multi``: a separator of several stems."""
    if task == "separator":
        return "mix", "targets" if multi else "target"
    if task == "activation":
        return "mix", "activations"
    raise ValueError(f"unknown task '{task}' (separator or activation)")


def batch_loss(task: str, model: nn.Module, batch: dict[str, torch.Tensor], loss: MaskLoss = "l1",
               columns: tuple[str, str] | None = None) -> torch.Tensor:  # fmt: skip
    """The loss of one batch: ``loss`` (l1 or mse) of the masked mixture for separators, binary
    cross-entropy for activations. ``columns``: (input, target) (default :func:`columns_for`).

    A separator with its own training objective (one that estimates magnitudes rather than
    masks, or one trained on the ideal binary mask) has a ``training_loss(out, mix, target,
    kind)`` method: it is called with ``out = model(mix, training_output=True)`` (through
    the model itself, so a DistributedDataParallel wrapper still synchronises gradients)
    and ``kind`` = ``loss``."""
    x, y = columns or columns_for(task)
    base = getattr(model, "module", model)  # the model a DistributedDataParallel wraps
    own = getattr(base, "training_loss", None)
    if task == "separator" and callable(own):
        return own(model(batch[x], training_output=True), batch[x], batch[y], loss)
    out = model(batch[x])
    if task == "separator":
        return mask_loss(out, batch[x], batch[y], kind=loss)
    return activation_bce(out, batch[y])


def run_epoch(task: str, model: nn.Module, batches: Iterable[dict[str, torch.Tensor]],
              optimizer: torch.optim.Optimizer | None = None, scaler: Any = None,
              max_steps: int | None = None, loss: MaskLoss = "l1", columns: tuple[str, str] | None = None,
              clip_grad_norm: float | None = None, stop: Callable[[], bool] | None = None,
              step: Callable[[dict[str, torch.Tensor], tuple[str, str]], torch.Tensor] | None = None) -> dict[str, float]:  # fmt: skip
    """One pass over ``batches``; trains when ``optimizer`` is given, else evaluates.

    ``step(batch, columns)``: a training step of its own that returns the batch's loss
    (the adversarial stage, :class:`sepcore.train.gan.GanStep`) in place of the one here.

    ``clip_grad_norm``: clip the gradients' global norm before each step. ``stop()`` is asked
    after every training step; True ends the epoch there (the time budget).
    Returns ``{"loss": mean per sample, "samples": n, "seconds": wall, "stopped": 0 or 1}``.
    """
    model.train(optimizer is not None)
    total, count, steps, stopped, t0 = 0.0, 0, 0, False, time.monotonic()
    for batch in batches:
        n = next(iter(batch.values())).shape[0]
        if optimizer is None:
            with torch.inference_mode():
                value = batch_loss(task, model, batch, loss, columns)
        elif step is not None:
            value = step(batch, columns or columns_for(task))
        else:
            optimizer.zero_grad(set_to_none=True)
            with torch.autocast("cuda", enabled=scaler is not None):
                value = batch_loss(task, model, batch, loss, columns)
            if scaler is not None:
                scaler.scale(value).backward()
                if clip_grad_norm is not None:
                    scaler.unscale_(optimizer)
                    nn.utils.clip_grad_norm_(model.parameters(), clip_grad_norm)
                scaler.step(optimizer)
                scaler.update()
            else:
                value.backward()
                if clip_grad_norm is not None:
                    nn.utils.clip_grad_norm_(model.parameters(), clip_grad_norm)
                optimizer.step()
        total += float(value.detach()) * n
        count += n
        steps += 1
        if max_steps is not None and steps >= max_steps:
            break
        if optimizer is not None and stop is not None and stop():
            stopped = True
            break
    return {"loss": total / max(count, 1), "samples": float(count), "seconds": time.monotonic() - t0,
            "stopped": float(stopped)}  # fmt: skip


def loader_augment(batch: dict[str, torch.Tensor], loader: dict[str, Any], rng: np.random.Generator,
                   columns: tuple[str, str]) -> dict[str, torch.Tensor]:  # fmt: skip
    """A training batch as the loader settings make it (:class:`sepcore.train.config.LoaderConfig`).

    Per example: a random excerpt of ``excerpt_frames`` frames (the same frames of the
    mixture and the targets), a gain drawn in ``gain_db`` applied to both (magnitudes
    scale with the signal, so the pair stays exact), and with probability
    ``channel_swap`` its channels swapped. Shapes: the columns' last axis is frames and
    the channel axis is the one before bins: ``mix (batch, channels, bins, frames)``,
    ``target (batch, channels, bins, frames)`` or ``targets (batch, stems, channels, bins, frames)``.
    Other columns are left as they are.
    """
    x, y = columns
    mix, tgt = batch[x], batch[y]
    n, frames = mix.shape[0], mix.shape[-1]
    excerpt = loader.get("excerpt_frames")
    if excerpt is not None:
        if excerpt > frames:
            raise ValueError(f"loader.excerpt_frames {excerpt} exceeds the data's {frames} frames per chunk")
        starts = rng.integers(0, frames - excerpt + 1, size=n)
        mix = torch.stack([mix[i, ..., s : s + excerpt] for i, s in enumerate(starts)])
        tgt = torch.stack([tgt[i, ..., s : s + excerpt] for i, s in enumerate(starts)])
    gain = loader.get("gain_db")
    if gain is not None:
        g = torch.from_numpy(10.0 ** (rng.uniform(gain[0], gain[1], size=n) / 20.0)).to(mix)
        mix = mix * g.view(n, *([1] * (mix.ndim - 1)))
        tgt = tgt * g.view(n, *([1] * (tgt.ndim - 1)))
    swap = float(loader.get("channel_swap") or 0.0)
    if swap > 0 and mix.shape[1] == 2:
        flip = torch.from_numpy(rng.random(n) < swap).to(mix.device)
        mix = torch.where(flip.view(n, 1, 1, 1), mix.flip(1), mix)
        tgt = torch.where(flip.view(n, *([1] * (tgt.ndim - 1))), tgt.flip(tgt.ndim - 3), tgt)
    return {**batch, x: mix, y: tgt}


def input_statistics(batches: Iterable[dict[str, torch.Tensor]], log_input: bool, rows: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-bin mean and standard deviation of the model input over up to ``rows`` rows.

    The input is the ``mix`` column, through ``log1p`` when ``log_input``; statistics pool
    channels and frames. Shape: ``mix (batch, channels, bins, frames)`` -> two ``(bins,)``.
    """
    total = square = None
    count = 0
    for batch in batches:
        x = batch["mix"].double()
        x = torch.log1p(x) if log_input else x
        s, q = x.sum(dim=(0, 1, 3)), (x * x).sum(dim=(0, 1, 3))
        total, square = (s, q) if total is None else (total + s, square + q)  # type: ignore[operator]
        count += x.shape[0] * x.shape[1] * x.shape[3]
        if count >= rows * x.shape[1] * x.shape[3]:
            break
    if total is None or square is None:
        raise ValueError("no training rows to measure the input statistics on")
    mean = total / count
    std = (square / count - mean * mean).clamp_min(0.0).sqrt()
    return mean.float(), std.float()


#: A validation stem quieter than this (RMS, dBFS) is not scored: SDR needs a reference.
AUDIBLE_DBFS = -60.0


def separation_sdr(model: nn.Module, pairs: Sequence[tuple[np.ndarray, np.ndarray]], sample_rate: int,
                   n_fft: int, hop: int, frames: int, device: str | torch.device = "cpu",
                   stems: Sequence[str] | None = None, targets: Sequence[str] | None = None) -> dict[str, float]:  # fmt: skip
    """Median SDR over validation tracks, through the separation path (no post-filter).

    One target: ``pairs`` are ``(mix, instrument)`` waveforms ``(channels, samples)``;
    returns ``val_sdr`` and the median SDR of the mixture used as the estimate
    (``val_sdr_mixture``, the lower bound). Several stems (``stems``, the model's, with
    ``targets`` the ones scored): ``pairs`` are ``(mix, sources)`` with sources
    ``(stems, channels, samples)``; per target ``val_sdr_<target>`` (median over the tracks
    where the target is audible) and ``val_sdr_mixture_<target>``, and ``val_sdr`` is the
    mean over targets of those medians (the issue's selection metric).
    """
    from sepcore.evaluate.bss import sdr_simple
    from sepcore.separate.apply import separate

    if stems is None:
        model_sdr, mix_sdr = [], []
        for mix, instrument in pairs:
            one = separate(model, mix, sample_rate, n_fft, hop, frames, device=device)["instrument"]
            model_sdr.append(sdr_simple(instrument, one))
            mix_sdr.append(sdr_simple(instrument, mix))
        return {"val_sdr": float(np.median(model_sdr)), "val_sdr_mixture": float(np.median(mix_sdr))}
    scored = list(targets or [s for s in stems if s != "other"])
    per: dict[str, list[float]] = {t: [] for t in scored}
    per_mix: dict[str, list[float]] = {t: [] for t in scored}
    floor = 10.0 ** (AUDIBLE_DBFS / 20.0)
    for mix, sources in pairs:
        est = separate(model, mix, sample_rate, n_fft, hop, frames, device=device, stems=list(stems))
        for t in scored:
            ref = sources[list(stems).index(t)]
            if float(np.sqrt(np.mean(np.square(ref, dtype=np.float64)))) < floor:
                continue
            per[t].append(sdr_simple(ref, est[t]))
            per_mix[t].append(sdr_simple(ref, mix))
    out: dict[str, float] = {}
    for t in scored:
        out[f"val_sdr_{t}"] = float(np.median(per[t])) if per[t] else float("nan")
        out[f"val_sdr_mixture_{t}"] = float(np.median(per_mix[t])) if per_mix[t] else float("nan")
    medians = [out[f"val_sdr_{t}"] for t in scored if per[t]]
    mixes = [out[f"val_sdr_mixture_{t}"] for t in scored if per_mix[t]]
    out["val_sdr"] = float(np.mean(medians)) if medians else float("nan")
    out["val_sdr_mixture"] = float(np.mean(mixes)) if mixes else float("nan")
    return out
