"""BSS Eval scores of whole tracks: segment pooling, the two modes, tables of medians.

Each estimate is scored with BSS Eval (``bss_eval_sources``, no permutation, 512-tap
filters; :mod:`sepcore.evaluate.bss`) in one of two modes (:class:`ScoringConfig`):

* ``full`` (seed 002): one score per track. BSS Eval on a whole track costs more than
  linear time in its length, so a track longer than ``segment_seconds`` is cut into
  equal segments of at most that length; each segment is scored and the track's score
  pools the segments' energies (:func:`pooled_bss_eval`). A track of one segment gets
  exactly ``bss_eval``'s numbers; a longer one differs only in that the distortion
  filters are fit per segment.
* ``windowed`` (SiSEC / museval): ``window_seconds`` windows every ``hop_seconds``, the
  median over windows (:func:`sepcore.evaluate.bss.windowed_bss_eval`; windows with a
  silent reference are left out of that source's median).
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from sepcore.evaluate import bss as metrics
from sepcore.evaluate.config import METHODS, SOURCES, ScoringConfig
from sepcore.units import Seconds, seconds_to_samples


def segment_bounds(n_samples: int, sample_rate: int, segment_s: Seconds) -> list[tuple[int, int]]:
    """``(start, stop)`` of ``ceil(n / segment)`` equal segments covering all samples."""
    seg = max(1, seconds_to_samples(segment_s, sample_rate))
    count = max(1, math.ceil(n_samples / seg))
    edges = np.linspace(0, n_samples, count + 1).round().astype(int)
    return [(int(a), int(b)) for a, b in zip(edges[:-1], edges[1:], strict=True)]


def energies_from_scores(sdr: np.ndarray, sir: np.ndarray, total: np.ndarray) -> np.ndarray:
    """BSS Eval's energies ``(target, interference, artifacts)`` from SDR, SIR and ``|est|^2``.

    BSS Eval splits an estimate into orthogonal parts ``target + interference +
    artifacts`` (projections on nested subspaces), so with ``T = |est|^2``:
    ``target = T s / (1 + s)`` for ``s = 10^(SDR/10)``, ``interference = target /
    10^(SIR/10)``, and ``artifacts`` the remainder. Shape: ``(sources,)`` each ->
    ``(3, sources)``.
    """
    with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
        s = np.power(10.0, np.asarray(sdr, dtype=np.float64) / 10.0)
        error = np.where(np.isinf(s), 0.0, total / (1.0 + s))
        target = total - error
        interference = np.where(np.isinf(sir), 0.0, target / np.power(10.0, np.asarray(sir) / 10.0))
        interference = np.minimum(interference, error)
    return np.stack([target, interference, error - interference])


def scores_from_energies(energies: np.ndarray) -> dict[str, np.ndarray]:
    """SDR, SIR, SAR in dB from ``(target, interference, artifacts)`` energies ``(3, sources)``."""
    target, interference, artifacts = np.asarray(energies, dtype=np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        return {
            "sdr": 10.0 * np.log10(target / (interference + artifacts)),
            "sir": 10.0 * np.log10(target / interference),
            "sar": 10.0 * np.log10((target + interference) / artifacts),
        }


def _downmix(x: np.ndarray, what: str) -> np.ndarray:
    x = np.asarray(x, dtype=np.float64)
    x = x.mean(axis=1) if x.ndim == 3 else x
    if x.ndim != 2 or x.shape[1] == 0:
        raise ValueError(
            f"{what}: expected (sources, samples) or (sources, channels, samples), got {x.shape}"
        )
    return x


def _silent_estimate_energies(
    ref: np.ndarray, est: np.ndarray, j: int, backend: metrics.Backend
) -> np.ndarray:
    """Energies of estimate ``j`` in a segment where reference ``j`` is silent.

    Nothing is target; the part in the span of the other (non-silent) references is
    interference, the rest artifacts (their split is the SAR of ``est[j]`` against them).
    """
    total = float(np.dot(est[j], est[j]))
    live = [
        k
        for k in range(ref.shape[0])
        if k != j and np.mean(np.square(ref[k])) > metrics.SILENCE_POWER
    ]
    if total == 0.0 or not live:
        return np.array([0.0, 0.0, total])
    sar = metrics.bss_eval(ref[live], np.repeat(est[j][None], len(live), axis=0), backend)["sar"][0]
    if np.isnan(sar):
        return np.array([0.0, 0.0, total])
    x = np.inf if np.isinf(sar) else 10.0 ** (sar / 10.0)
    interference = total if np.isinf(x) else total * x / (1.0 + x)
    return np.array([0.0, interference, total - interference])


def pooled_bss_eval(
    references: np.ndarray,
    estimates: np.ndarray,
    sample_rate: int,
    segment_s: Seconds = 30.0,
    backend: metrics.Backend = "mir_eval",
) -> dict[str, np.ndarray]:
    """Full-track BSS Eval in segments, pooled by energy (time linear in the length).

    Each segment of :func:`segment_bounds` is scored with :func:`sepcore.evaluate.bss.bss_eval`;
    its energies (:func:`energies_from_scores`) are summed over segments and turned back
    into scores. One segment gives ``bss_eval``'s own numbers. A segment where a
    reference is silent adds that source's estimate to its interference and artifacts.
    Shape: ``(sources, samples)`` or ``(sources, channels, samples)`` each ->
    ``{"sdr", "sir", "sar"}`` each ``(sources,)``, dB, plus ``"segments"`` (int array).
    """
    ref, est = _downmix(references, "references"), _downmix(estimates, "estimates")
    if ref.shape != est.shape:
        raise ValueError(f"references {ref.shape} and estimates {est.shape} differ in shape")
    bounds = segment_bounds(ref.shape[1], sample_rate, segment_s)
    if len(bounds) == 1:
        return {**metrics.bss_eval(ref, est, backend), "segments": np.array(1)}
    energies = np.zeros((3, ref.shape[0]))
    for lo, hi in bounds:
        r, e = ref[:, lo:hi], est[:, lo:hi]
        scores = metrics.bss_eval(r, e, backend)
        part = energies_from_scores(scores["sdr"], scores["sir"], np.sum(np.square(e), axis=1))
        for j in np.flatnonzero(np.isnan(part).any(axis=0)):
            part[:, j] = _silent_estimate_energies(r, e, int(j), backend)
        energies += part
    return {**scores_from_energies(energies), "segments": np.array(len(bounds))}


def pooled_bss_eval_many(
    references: np.ndarray,
    estimates: np.ndarray,
    sample_rate: int,
    segment_s: Seconds = 30.0,
    backend: metrics.Backend = "mir_eval",
) -> dict[str, np.ndarray]:
    """:func:`pooled_bss_eval` of several estimates of the same references at once.

    The numbers of one :func:`pooled_bss_eval` per item; each segment is one
    :func:`sepcore.evaluate.bss.bss_eval_many` call (the fast backend then solves the
    references' systems once for all items). Shape: references ``(sources, [channels,]
    samples)``, estimates ``(items, sources, [channels,] samples)`` ->
    ``{"sdr", "sir", "sar"}`` each ``(items, sources)``, dB.
    """
    ref = _downmix(references, "references")
    est = np.stack([_downmix(e, "estimates") for e in estimates])
    if est.shape[1:] != ref.shape:
        raise ValueError(f"references {ref.shape} and estimates {est.shape} differ in shape")
    bounds = segment_bounds(ref.shape[1], sample_rate, segment_s)
    if len(bounds) == 1:
        return metrics.bss_eval_many(ref, est, backend)
    energies = np.zeros((est.shape[0], 3, ref.shape[0]))
    for lo, hi in bounds:
        r, e = ref[:, lo:hi], est[:, :, lo:hi]
        scores = metrics.bss_eval_many(r, e, backend)
        for i in range(est.shape[0]):
            part = energies_from_scores(scores["sdr"][i], scores["sir"][i], np.sum(np.square(e[i]), axis=1))
            for j in np.flatnonzero(np.isnan(part).any(axis=0)):
                part[:, j] = _silent_estimate_energies(r, e[i], int(j), backend)
            energies[i] += part
    pooled = [scores_from_energies(x) for x in energies]
    return {m: np.stack([p[m] for p in pooled]) for m in metrics.METRICS}


def score(
    references: np.ndarray, estimates: np.ndarray, sample_rate: int, spec: ScoringConfig
) -> dict[str, np.ndarray]:
    """SDR, SIR, SAR per source in the mode of ``spec``. Shapes as :func:`pooled_bss_eval`."""
    if spec.mode == "full":
        out = pooled_bss_eval(
            references, estimates, sample_rate, spec.segment_seconds, spec.bss_backend
        )
    else:
        out = metrics.windowed_bss_eval(references, estimates, sample_rate, spec.window_seconds,
                                        spec.hop_seconds, spec.bss_backend)  # fmt: skip
    return {name: np.asarray(out[name], dtype=np.float64) for name in metrics.METRICS}


def score_methods(
    instrument: np.ndarray,
    rest: np.ndarray,
    method_estimates: Mapping[str, Mapping[str, np.ndarray]],
    sample_rate: int,
    spec: ScoringConfig,
) -> dict[str, dict[str, dict[str, float]]]:
    """Scores of each method: ``{method: {source: {"sdr", "sir", "sar"}}}`` (floats, dB).

    References are ``[instrument, rest]``, estimates ``[est["instrument"], est["rest"]]``.
    In ``full`` mode all methods are scored together (:func:`pooled_bss_eval_many`: the
    references' systems are solved once), which gives the numbers of one :func:`score` each.
    """
    refs = np.stack([instrument, rest])
    names = list(method_estimates)
    stacked = [np.stack([method_estimates[m]["instrument"], method_estimates[m]["rest"]]) for m in names]
    if spec.mode == "full" and names:
        many = pooled_bss_eval_many(refs, np.stack(stacked), sample_rate, spec.segment_seconds, spec.bss_backend)
        per_method = [{m: many[m][i] for m in metrics.METRICS} for i in range(len(names))]
    else:
        per_method = [score(refs, est, sample_rate, spec) for est in stacked]
    return {method: {src: {m: float(scores[m][k]) for m in metrics.METRICS} for k, src in enumerate(SOURCES)}
            for method, scores in zip(names, per_method, strict=True)}  # fmt: skip


def median_table(
    tracks: Sequence[Mapping[str, Any]],
) -> dict[str, dict[str, dict[str, float | int]]]:
    """Medians over tracks of each method and source (seed 002's tables), NaN ignored.

    ``tracks`` are per-track results with ``"scores"`` as :func:`score_methods` returns;
    methods come in :data:`METHODS` order, any others after them.
    Returns ``{method: {source: {"sdr", "sir", "sar", "count"}}}``.
    """
    seen = list(dict.fromkeys(m for t in tracks for m in t["scores"]))
    methods = [m for m in METHODS if m in seen] + [m for m in seen if m not in METHODS]
    out: dict[str, dict[str, dict[str, float | int]]] = {}
    for method in methods:
        rows = [t["scores"][method] for t in tracks if method in t["scores"]]
        per_track = [{m: np.array([r[s][m] for s in SOURCES], dtype=np.float64) for m in metrics.METRICS}
                     for r in rows]  # fmt: skip
        med = metrics.median_metrics(per_track)
        out[method] = {
            src: {**{m: float(med[m][k]) for m in metrics.METRICS}, "count": int(med["count"][k])}
            for k, src in enumerate(SOURCES)
        }
    return out


def nanmedian(values: Sequence[float]) -> float:
    """Median ignoring NaN; NaN (no warning) when nothing is left."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        return (
            float(np.nanmedian(np.asarray(values, dtype=np.float64))) if len(values) else math.nan
        )


def finite_mean(values: Sequence[float]) -> float:
    """Mean of the finite values (NaN and +-inf left out); NaN when none is finite."""
    x = np.asarray(values, dtype=np.float64)
    x = x[np.isfinite(x)]
    return float(x.mean()) if x.size else math.nan
