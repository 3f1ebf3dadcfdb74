"""The one rule for "better" that picks best checkpoints and best trials (train and tune).

A validation metric is better when higher (SDR) or lower (losses); a missing or
non-finite value is never better than anything, so a diverged epoch or a trial without
a score never wins.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

#: Validation metrics that select the best checkpoint, and which way is better.
METRIC_MODES = {"val_loss": "min", "val_sdr": "max"}


def metric_mode(metric: str) -> str:
    """``"max"`` when a higher ``metric`` is better (SDR), ``"min"`` for losses."""
    if metric in METRIC_MODES:
        return METRIC_MODES[metric]
    return "max" if metric.endswith("sdr") else "min"


def is_better(metric: str, value: float | None, best: float | None) -> bool:
    """The one best-checkpoint rule (train, tune): is ``value`` better than ``best``?

    A missing or non-finite value is never better; anything finite beats a missing best.
    """
    if value is None or not math.isfinite(value):
        return False
    if best is None or not math.isfinite(best):
        return True
    return value > best if metric_mode(metric) == "max" else value < best


def best_of(items: Sequence[Any], metric: str, value: Callable[[Any], float | None]) -> Any:
    """The item with the best ``value(item)`` under :func:`is_better` (the first on ties; None if none)."""
    best, best_value = None, None
    for item in items:
        v = value(item)
        if is_better(metric, v, best_value):
            best, best_value = item, v
    return best


def stale_checkpoints(items: Sequence[tuple[str, dict[str, Any]]], metric: str, keep: int) -> list[str]:
    """Folders of ``(folder, meta)`` checkpoints to delete: all but the ``keep`` best and the latest.

    Ray Train's rule (``CheckpointConfig(num_to_keep=keep)`` scored by ``metric``), for runs
    that keep their checkpoints themselves.
    """
    if not items:
        return []
    latest = max(items, key=lambda item: int(item[1].get("epoch", -1)))[0]
    ranked: list[str] = []
    rest = list(items)
    while rest and len(ranked) < keep:
        best = best_of(rest, metric, lambda item: item[1].get("metrics", {}).get(metric)) or rest[-1]
        ranked.append(best[0])
        rest.remove(best)
    return [folder for folder, _ in items if folder not in ranked and folder != latest]
