"""The activation CNN (a checkpoint of the train job) scored on the same snippets as the classifier."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Literal

import numpy as np

from sepcore.data.classes import CLASSES
from sepcore.io.audio import Audio, resample, to_channels
from sepcore.prepare import features
from sepcore.units import Seconds


def pool_frames(values: np.ndarray, frame_times_s: np.ndarray, starts_s: np.ndarray, window_s: Seconds,
                how: Literal["mean", "max"] = "mean") -> np.ndarray:  # fmt: skip
    """Pool frame values to windows: frames whose time lies in ``[start, start + window)``.

    Shape: ``(classes, frames)`` -> ``(windows, classes)``; NaN for a window without frames.
    """
    if how not in ("mean", "max"):
        raise ValueError(f"pooling must be 'mean' or 'max', got '{how}'")
    out = np.full((len(starts_s), values.shape[0]), np.nan, dtype=np.float64)
    lo = np.searchsorted(frame_times_s, starts_s, side="left")
    hi = np.searchsorted(frame_times_s, np.asarray(starts_s) + window_s, side="left")
    for i, (a, b) in enumerate(zip(lo, hi, strict=True)):
        if b > a:
            out[i] = values[:, a:b].mean(axis=1) if how == "mean" else values[:, a:b].max(axis=1)
    return out


def activation_frames(model: Any, meta: Mapping[str, Any], mix: np.ndarray, sample_rate: int,
                      batch_size: int = 32, overlap: float = 0.5) -> tuple[np.ndarray, np.ndarray]:  # fmt: skip
    """Frame activations of an activation-CNN checkpoint over a whole mix.

    The mix is resampled to the checkpoint's rate and averaged to mono; the model runs
    on windows of ``meta["frames"]`` frames stitched by Hann overlap-add (seed 001).
    Returns ``(activations (classes, frames), frame times in s (frames,))``.
    """
    import torch

    from sepcore.separate.apply import chunk_hop, stitch_window

    sr = int(meta["sample_rate"])
    feat = features.make_feature(**dict(meta["feature"]))
    mono = to_channels(resample(Audio(np.asarray(mix, np.float32), sample_rate), sr), 1).samples
    spec = feat(mono)  # (1, bins, T)
    frames, n = int(meta["frames"]), spec.shape[-1]
    hop = chunk_hop(frames, overlap)
    win = stitch_window(frames, overlap).astype(np.float64)
    starts = np.arange(-(frames - hop), n, hop)
    out = np.zeros((int(model.n_classes), n))
    weight = np.zeros(n)
    with torch.inference_mode():
        for first in range(0, len(starts), batch_size):
            group = starts[first : first + batch_size]
            cuts = np.stack([_cut_frames(spec, int(s), frames) for s in group])
            y = model(torch.from_numpy(cuts)).double().numpy()  # (b, classes, frames)
            for s, act in zip(group, y, strict=True):
                a, b = max(int(s), 0), min(int(s) + frames, n)
                out[:, a:b] += win[a - s : b - s] * act[:, a - s : b - s]
                weight[a:b] += win[a - s : b - s]
    out /= np.maximum(weight, 1e-8)
    return out.astype(np.float32), np.arange(n) * feat.hop / sr


def _cut_frames(spec: np.ndarray, start: int, frames: int) -> np.ndarray:
    out = np.zeros(spec.shape[:2] + (frames,), dtype=np.float32)
    lo, hi = max(start, 0), min(start + frames, spec.shape[2])
    if hi > lo:
        out[:, :, lo - start : hi - start] = spec[:, :, lo:hi]
    return out


def activation_window_scores(model: Any, meta: Mapping[str, Any], mix: np.ndarray, sample_rate: int,
                             starts_s: np.ndarray, window_s: Seconds, classes: Sequence[str] = CLASSES,
                             how: Literal["mean", "max"] = "mean") -> np.ndarray:  # fmt: skip
    """The activation CNN's score per window and class (frame activations pooled).

    Classes the checkpoint does not know get NaN. Shape ``(windows, len(classes))``.
    """
    acts, times = activation_frames(model, meta, mix, sample_rate)
    pooled = pool_frames(acts, times, starts_s, window_s, how)
    known = list(meta.get("classes", CLASSES))
    out = np.full((len(starts_s), len(classes)), np.nan)
    for i, c in enumerate(classes):
        if c in known:
            out[:, i] = pooled[:, known.index(c)]
    return out
