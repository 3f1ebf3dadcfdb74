"""Activation matrices of seed 001 §5.3-5.4, and activations of whole signals.

Activations are in [0, 1]: frame RMS in dB re full scale over a 60 dB range
(:func:`sepcore.prepare.features.rms_activation`), so ``a`` stands for the level
``60 (a - 1)`` dB and the amplitude ``10 ** (3 (a - 1))`` (0 at ``a = 0``). Given
per-class *windows* (frames where one instrument is the one playing, as in seed 001's
sequences of one instrument after another):

* **noise matrix** ``N[i, j]``: mean absolute deviation of the predicted amplitude of
  instrument ``j`` from its reference over the window of instrument ``i``, in dB,
  cut at -60 dB (rows: instrument playing; columns: instrument predicted);
* **leakage matrix** ``L[j, i]``: the mean predicted amplitude of ``j`` over ``i``'s
  window relative to the mean reference amplitude of the playing instrument ``i``
  there, in dB, limited to the 60 dB range ``[-60, 0]``; no diagonal (rows:
  instrument predicted; columns: instrument playing, as in seed 001's figures).

Both are -60 dB off the diagonal for a perfect prediction.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torch import nn

from sepcore.separate.apply import predict_mask
from sepcore.units import Decibels

#: Dynamic range of activations and floor of the activation matrices (seed 001).
RANGE_DB: Decibels = 60.0


def activation_amplitude(act: np.ndarray, range_db: Decibels = RANGE_DB) -> np.ndarray:
    """Linear amplitude of activations: ``10 ** (range_db (a - 1) / 20)``, 0 where ``a <= 0``."""
    a = np.asarray(act, dtype=np.float64)
    return np.where(a > 0.0, np.power(10.0, range_db * (np.clip(a, 0.0, 1.0) - 1.0) / 20.0), 0.0)


def _db(x: np.ndarray, floor: Decibels) -> np.ndarray:
    with np.errstate(divide="ignore"):
        return np.maximum(20.0 * np.log10(np.asarray(x, dtype=np.float64)), -floor)


def _check_activations(pred: np.ndarray, ref: np.ndarray | None, windows: np.ndarray) -> None:
    shapes = [pred.shape, windows.shape] + ([] if ref is None else [ref.shape])
    if pred.ndim != 2 or any(s != pred.shape for s in shapes):
        raise ValueError(f"activations and windows must be equal (classes, frames), got {shapes}")


def noise_matrix(
    pred: np.ndarray, ref: np.ndarray, windows: np.ndarray, range_db: Decibels = RANGE_DB
) -> np.ndarray:
    """Seed 001's noise matrix ``N[i, j]`` (module docstring), dB in ``[-range_db, 0]``.

    Rows whose window is empty are NaN. Shape: ``(classes, frames)`` each ->
    ``(classes, classes)``.
    """
    _check_activations(pred, ref, windows)
    dev = np.abs(activation_amplitude(pred, range_db) - activation_amplitude(ref, range_db))
    out = np.full((pred.shape[0],) * 2, np.nan)
    for i, win in enumerate(np.asarray(windows, dtype=bool)):
        if win.any():
            out[i] = _db(dev[:, win].mean(axis=1), range_db)
    return out


def leakage_matrix(
    pred: np.ndarray, ref: np.ndarray, windows: np.ndarray, range_db: Decibels = RANGE_DB
) -> np.ndarray:
    """Seed 001's leakage matrix ``L[j, i]`` (module docstring), dB in ``[-range_db, 0]``.

    The diagonal, and columns whose window is empty or whose playing instrument is
    silent in the reference, are NaN. Shape: ``(classes, frames)`` each ->
    ``(classes, classes)``.
    """
    _check_activations(pred, ref, windows)
    amp, ref_amp = activation_amplitude(pred, range_db), activation_amplitude(ref, range_db)
    out = np.full((pred.shape[0],) * 2, np.nan)
    for i, win in enumerate(np.asarray(windows, dtype=bool)):
        playing = ref_amp[i, win].mean() if win.any() else 0.0
        if playing <= 0.0:
            continue
        with np.errstate(divide="ignore"):
            rel = 20.0 * np.log10(amp[:, win].mean(axis=1) / playing)
        out[:, i] = np.clip(rel, -range_db, 0.0)
        out[i, i] = np.nan
    return out


def activation_errors(
    pred: np.ndarray, ref: np.ndarray, range_db: Decibels = RANGE_DB
) -> dict[str, np.ndarray]:
    """Per class: mean absolute error of the activations, and of their amplitudes in dB.

    ``"mae"``: mean ``|pred - ref|`` on the [0, 1] activation scale; ``"error_db"``: mean
    absolute amplitude deviation in dB (cut at -``range_db``); ``"active_frames"``:
    frames with a reference above the floor. Shape: ``(classes, frames)`` each ->
    each ``(classes,)``.
    """
    _check_activations(pred, ref, np.zeros(pred.shape, dtype=bool))
    dev = np.abs(activation_amplitude(pred, range_db) - activation_amplitude(ref, range_db))
    return {
        "mae": np.abs(np.asarray(pred, np.float64) - ref).mean(axis=1),
        "error_db": _db(dev.mean(axis=1), range_db),
        "active_frames": (np.asarray(ref) > 0).sum(axis=1),
    }


class _ActivationsAsMask(nn.Module):
    """An activation model seen as a mask model, so :func:`predict_mask` stitches it.

    Shape: ``(batch, 1, bins, frames)`` -> ``(batch, 1, bins, frames)`` with the
    ``classes`` activations in the first rows and zeros below.
    """

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        act = self.model(x)
        if act.ndim != 3 or act.shape[1] > x.shape[2] or act.shape[2] != x.shape[3]:
            raise ValueError(
                f"activation model returned {tuple(act.shape)} for input {tuple(x.shape)}"
            )
        out = x.new_zeros((x.shape[0], 1, x.shape[2], x.shape[3]))
        out[:, 0, : act.shape[1]] = act
        return out


def predict_activations(
    model: nn.Module, feature: np.ndarray, frames: int, n_classes: int, batch_size: int = 32
) -> np.ndarray:
    """Activations of a whole signal: windows of ``frames`` stitched by Hann overlap-add at 50 %.

    The stitching is :func:`sepcore.separate.apply.predict_mask`'s (seed 001 §4.2.2). The
    model maps ``(batch, 1, bins, frames)`` to ``(batch, classes, frames)``.
    Shape: ``(1, bins, n_frames)`` -> ``(classes, n_frames)``, float32 in [0, 1].
    """
    if feature.ndim != 3 or feature.shape[0] != 1:
        raise ValueError(f"expected a mono feature (1, bins, frames), got shape {feature.shape}")
    if n_classes > feature.shape[1]:
        raise ValueError(f"{n_classes} classes do not fit {feature.shape[1]} feature bins")
    stitched = predict_mask(
        _ActivationsAsMask(model), feature, frames=frames, batch_size=batch_size
    )
    return np.ascontiguousarray(stitched[0, :n_classes])


def frame_windows(
    spans: Sequence[tuple[int, int] | None], n_frames: int, frame_length: int, hop: int
) -> np.ndarray:
    """Frames lying wholly inside each class's span of samples (seed 001's windows).

    ``spans[i]`` is ``(start, stop)`` in samples or None; frames are centred on
    ``t * hop`` and ``frame_length`` long. Shape: -> ``(len(spans), n_frames)`` bool.
    """
    centres = np.arange(n_frames) * hop
    half = frame_length // 2
    out = np.zeros((len(spans), n_frames), dtype=bool)
    for i, span in enumerate(spans):
        if span is not None:
            out[i] = (centres - half >= span[0]) & (centres + half <= span[1])
    return out
