"""Plain training steps (no Ray): batches of prepared rows -> losses, epochs, validation.

:mod:`sepcore.train.worker` runs these on each worker; tests run them directly.

Tasks:

* ``separator`` (hourglass, blstm): input the mixture magnitude ``mix``
  ``(batch, channels, bins, frames)``; the model predicts a mask; the loss is the L1
  distance between ``mask * mix`` and ``target`` (seed 002).
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

from sepcore.models.losses import activation_bce, masked_l1

TASK_OF_MODEL = {"hourglass": "separator", "blstm": "separator", "activation_cnn": "activation"}
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
    out = {}
    for name in columns:
        values = batch[name]
        arr = np.stack([np.frombuffer(v, dtype=dtype) for v in values]).reshape(len(values), *shapes[name])
        out[name] = torch.from_numpy(arr.astype(np.float32)).to(device)
    return out


def columns_for(task: str) -> tuple[str, str]:
    """(input column, target column) of a task."""
    if task == "separator":
        return "mix", "target"
    if task == "activation":
        return "mix", "activations"
    raise ValueError(f"unknown task '{task}' (separator or activation)")


def batch_loss(task: str, model: nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    x, y = columns_for(task)
    out = model(batch[x])
    if task == "separator":
        return masked_l1(out, batch[x], batch[y])
    return activation_bce(out, batch[y])


def run_epoch(task: str, model: nn.Module, batches: Iterable[dict[str, torch.Tensor]],
              optimizer: torch.optim.Optimizer | None = None, scaler: Any = None,
              max_steps: int | None = None) -> dict[str, float]:  # fmt: skip
    """One pass over ``batches``; trains when ``optimizer`` is given, else evaluates.

    Returns ``{"loss": mean per sample, "samples": n, "seconds": wall}``.
    """
    model.train(optimizer is not None)
    total, count, steps, t0 = 0.0, 0, 0, time.monotonic()
    for batch in batches:
        n = next(iter(batch.values())).shape[0]
        if optimizer is None:
            with torch.inference_mode():
                loss = batch_loss(task, model, batch)
        else:
            optimizer.zero_grad(set_to_none=True)
            with torch.autocast("cuda", enabled=scaler is not None):
                loss = batch_loss(task, model, batch)
            if scaler is not None:
                scaler.scale(loss).backward()
                scaler.step(optimizer)
                scaler.update()
            else:
                loss.backward()
                optimizer.step()
        total += float(loss.detach()) * n
        count += n
        steps += 1
        if max_steps is not None and steps >= max_steps:
            break
    return {"loss": total / max(count, 1), "samples": float(count), "seconds": time.monotonic() - t0}


def separation_sdr(model: nn.Module, pairs: Sequence[tuple[np.ndarray, np.ndarray]], sample_rate: int,
                   n_fft: int, hop: int, frames: int, device: str | torch.device = "cpu") -> dict[str, float]:  # fmt: skip
    """Median SDR of the target over validation tracks, through the separation path.

    ``pairs`` are ``(mix, instrument)`` waveforms ``(channels, samples)``. Also
    returns the median SDR of the mixture used as the estimate (the lower bound).
    """
    from sepcore.evaluate.bss import sdr_simple
    from sepcore.separate.apply import separate

    model_sdr, mix_sdr = [], []
    for mix, instrument in pairs:
        est = separate(model, mix, sample_rate, n_fft, hop, frames, device=device)["instrument"]
        model_sdr.append(sdr_simple(instrument, est))
        mix_sdr.append(sdr_simple(instrument, mix))
    return {"val_sdr": float(np.median(model_sdr)), "val_sdr_mixture": float(np.median(mix_sdr))}
