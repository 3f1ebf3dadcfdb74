"""ROC curves, their AUC and the Youden threshold, without scikit-learn."""

from __future__ import annotations

import numpy as np


def roc_curve(labels: np.ndarray, scores: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """ROC curve: false and true positive rates at every distinct score threshold.

    Tied scores form one step. Returns ``(fpr, tpr, thresholds)``, starting at (0, 0)
    with threshold +inf. Raises ValueError unless both labels occur.
    """
    y = np.asarray(labels).astype(bool).ravel()
    s = np.asarray(scores, dtype=np.float64).ravel()
    if y.shape != s.shape:
        raise ValueError(f"labels {y.shape} and scores {s.shape} differ in shape")
    pos, neg = int(y.sum()), int((~y).sum())
    if pos == 0 or neg == 0:
        raise ValueError(f"ROC needs both labels, got {pos} positives and {neg} negatives")
    order = np.argsort(-s, kind="mergesort")
    s, y = s[order], y[order]
    last = np.r_[np.flatnonzero(np.diff(s)), len(s) - 1]  # last index of each tie group
    tps = np.cumsum(y)[last]
    fps = (last + 1) - tps
    return (np.r_[0.0, fps / neg], np.r_[0.0, tps / pos], np.r_[np.inf, s[last]])


def roc_auc(labels: np.ndarray, scores: np.ndarray) -> float | None:
    """Area under the ROC curve (trapezoids; ties count half); None unless both labels occur."""
    y = np.asarray(labels).astype(bool)
    if y.all() or not y.any():
        return None
    fpr, tpr, _ = roc_curve(labels, scores)
    return float(np.trapezoid(tpr, fpr))


def youden_threshold(labels: np.ndarray, scores: np.ndarray, default: float = 0.5) -> float:
    """Score threshold maximising TPR - FPR (Youden's J); ``default`` unless both labels occur."""
    y = np.asarray(labels).astype(bool)
    if y.all() or not y.any():
        return default
    fpr, tpr, thr = roc_curve(labels, scores)
    best = int(np.argmax((tpr - fpr)[1:])) + 1  # skip the +inf start
    return float(thr[best])
