"""Instrument presence on 1-second snippets of the mix (seed 000, "Classifying Instruments").

The plain steps of the ``classify`` job; ``ray_jobs.classify`` runs them in Ray Data
actors and Ray Train, the tests run them directly. Nothing here imports Ray. The other
steps: :mod:`~sepcore.classify.track` (one track's snippets),
:mod:`~sepcore.classify.features` (features of a window),
:mod:`~sepcore.classify.lgbm` (LightGBM boosters), :mod:`~sepcore.classify.classifier`
(the saved model and :func:`~sepcore.classify.classifier.predict`),
:mod:`~sepcore.classify.roc`, :mod:`~sepcore.classify.cnn` (activation CNN scores),
:mod:`~sepcore.classify.report` (metrics, figures, report).

**Snippets.** Windows of ``window_s`` seconds every ``hop_s`` seconds (default 1 s
and 1 s) of the mono mix at ``sample_rate``, starting at 0. For training only whole
windows are used; :func:`sepcore.classify.classifier.predict` also labels the last, partial second (zero-padded).

**Labels** (one per class and window): a class is *playing* in a window when the RMS
of the sum of its stems over the window is at least ``threshold_db`` (default -20 dB)
relative to the RMS of the mix (the sum of all stems) over the same window, and above
``floor_dbfs`` (default -60 dBFS) in absolute terms. The relative rule follows the
ear: a part 20 dB under the mix is masked by it; the floor keeps near-silent
stretches (fade tails, reverb) from counting when the whole mix is quiet. A silent
window has no class playing.

Shapes: snippets ``(windows,)``; features ``(windows, features)``; labels
``(windows, classes)`` in :data:`sepcore.data.classes.CLASSES` order unless stated.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from sepcore.classify.config import SnippetSpec
from sepcore.errors import ConfigError, SepError
from sepcore.prepare import features
from sepcore.prepare.mixing import assign_splits

#: Below this frame power (-100 dB re full scale) a frame counts as silent.
POWER_FLOOR = features.POWER_FLOOR
#: Seed 000's classes and its ROC AUCs on Slakh (their data, not ours).
DEFAULT_CLASSES = ("piano", "guitar", "bass", "drums", "strings")
SEED000_AUC = {"guitar": 0.85, "piano": 0.80, "bass": 0.93, "drums": 0.96, "strings": 0.90}



class ClassifyError(SepError):
    """A track, model folder or input cannot be used for classification."""

    def __init__(self, uri: str, problem: str):
        self.uri = uri
        self.problem = problem
        super().__init__(f"{uri}: {problem}")


# ---------------------------------------------------------------- windows and labels


def window_starts(n_samples: int, window: int, hop: int, pad_last: bool = False) -> np.ndarray:
    """Start samples of the windows: whole windows only, or (``pad_last``) until every
    sample is covered, the last window running past the end. Shape ``(windows,)``, int64."""
    if window < 1 or hop < 1:
        raise ValueError(f"window and hop must be >= 1, got {window}, {hop}")
    if n_samples <= 0:
        return np.zeros(0, dtype=np.int64)
    if not pad_last:
        return np.arange(0, n_samples - window + 1, hop, dtype=np.int64)
    count = 1 + max(0, -(-(n_samples - window) // hop))
    return np.arange(count, dtype=np.int64) * hop


def cut_windows(x: np.ndarray, starts: np.ndarray, window: int) -> np.ndarray:
    """Windows of a signal, zeros past its end. Shape: ``(..., samples)`` -> ``(..., windows, window)``."""
    n = x.shape[-1]
    end = int(starts.max()) + window if len(starts) else 0
    if end > n:
        x = np.concatenate([x, np.zeros(x.shape[:-1] + (end - n,), dtype=x.dtype)], axis=-1)
    index = starts[:, None] + np.arange(window)[None, :]
    return x[..., index]


def window_rms_db(x: np.ndarray, starts: np.ndarray, window: int) -> np.ndarray:
    """RMS in dBFS of each window, channels pooled, floor -100 dB (zeros past the end count).

    Shape: ``(..., channels, samples)`` -> ``(..., windows)``, float64.
    """
    power = np.square(x, dtype=np.float64).mean(axis=-2)
    csum = np.concatenate([np.zeros(power.shape[:-1] + (1,)), np.cumsum(power, axis=-1)], axis=-1)
    n = power.shape[-1]
    lo, hi = np.minimum(starts, n), np.minimum(starts + window, n)
    mean = np.maximum(csum[..., hi] - csum[..., lo], 0.0) / window
    return 10.0 * np.log10(np.maximum(mean, POWER_FLOOR))


def snippet_labels(class_sums: np.ndarray, starts: np.ndarray, spec: SnippetSpec,
                   mix: np.ndarray | None = None) -> np.ndarray:  # fmt: skip
    """Which class plays in which window (module docstring: threshold relative to the mix).

    ``class_sums`` holds the sum of each class's stems; ``mix`` defaults to their sum.
    Shape: ``(classes, channels, samples)`` -> ``(windows, classes)``, uint8.
    """
    if class_sums.ndim != 3:
        raise ValueError(f"expected class sums (classes, channels, samples), got shape {class_sums.shape}")
    mix = class_sums.sum(axis=0) if mix is None else mix
    cls_db = window_rms_db(class_sums, starts, spec.window)  # (classes, windows)
    mix_db = window_rms_db(mix, starts, spec.window)  # (windows,)
    playing = (cls_db - mix_db[None, :] >= spec.labels.threshold_db) & (cls_db > spec.labels.floor_dbfs)
    return playing.T.astype(np.uint8)


# ---------------------------------------------------------------- splits


def track_splits(track_ids: Sequence[str], fractions: Mapping[str, float], seed: int = 0,
                 fixed: Mapping[str, str] | None = None) -> dict[str, str]:  # fmt: skip
    """Every track in exactly one split: :func:`sepcore.prepare.mixing.assign_splits`, as prepare does."""
    return assign_splits(track_ids, fractions, seed, fixed)


def split_rows(row_tracks: Sequence[str], splits: Mapping[str, str]) -> dict[str, np.ndarray]:
    """Row indices of each split, by the row's track. Raises ValueError for an unassigned track."""
    missing = sorted({t for t in row_tracks if t not in splits})
    if missing:
        raise ValueError(f"tracks without a split: {missing[:10]}")
    names = np.array([splits[t] for t in row_tracks])
    return {s: np.flatnonzero(names == s) for s in sorted(set(splits.values()))}


def split_tracks(data: str, fractions: Mapping[str, float], seed: int) -> tuple[list, dict[str, str], list[dict[str, str]]]:
    """The Slakh-layout tracks of ``data`` in a train/validation/test split, every track's split
    (:func:`track_splits`; a track's own split wins) and the listing errors as failed items.

    Slakh-redux's ``omitted`` tracks stay out. Raises :class:`ConfigError` when no track is left.
    """
    from sepcore.data.sources import slakh_tracks

    errors: list = []
    listed = slakh_tracks(data, errors=errors)
    fixed = {t.track_id: t.split for t in listed if t.split}
    splits = track_splits([t.track_id for t in listed], fractions, seed, fixed)
    tracks = [t for t in listed if splits[t.track_id] in ("train", "validation", "test")]
    if not tracks:
        raise ConfigError("data", f"{data} holds no usable Slakh-layout tracks")
    return tracks, splits, [{"item": "listing", "error": str(e)} for e in errors]
