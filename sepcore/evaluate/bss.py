"""Separation metrics: BSS Eval SDR/SIR/SAR (mir_eval or fast_bss_eval), windowed, medians.

Seed 002 §6: the separated ``[instrument, rest]`` are scored against the true
``[instrument, rest]`` with mir_eval's ``bss_eval_sources`` (no permutation, 512-tap
distortion filters) and the median over tracks is reported.

Backends of :func:`bss_eval`:

* ``"mir_eval"``: ``mir_eval.separation.bss_eval_sources`` (the seed's reference;
  deprecated in mir_eval 0.8 and to be removed in 0.9, so mir_eval is needed < 0.9).
* ``"fast"`` (default): ``fast_bss_eval.bss_eval_sources`` with the same 512-tap
  filters, through its torch backend in float64 (its numpy backend fails under numpy 2),
  except for its two linear solves (the Toeplitz systems of the distortion filters),
  which numpy's LAPACK does (:func:`_solve`). ``torch.linalg.solve`` runs a batch of
  systems as MKL ``dgetrf`` calls inside an OpenMP ``parallel_for``, and once anything in
  the process has called ``torch.set_num_threads`` (which turns MKL's dynamic threading
  off, as every evaluate and train worker does) each of those calls opens a nested
  OpenMP team: MKL prints "Parameter 6 was incorrect on entry to DLASWP", the solve
  raises (every call then fell back to mir_eval) or livelocks (a test run spun 35
  minutes at 200 % CPU in it). numpy's OpenBLAS uses its own pthreads, nested in
  nothing, and no thread setting of the process is changed (thread-safe). The
  statistics (correlations, Toeplitz matrices) and the dB conversion are still
  fast_bss_eval's torch code; the scores agree with its own to 1e-11 dB.
  It agrees with mir_eval within 0.1 dB on realistic signals (a test pins it) and is
  faster on CPU: 30 s of two sources at 22.05 kHz in 0.6 s against mir_eval's 0.9-1.7 s,
  and 1-s windows (batched by :func:`windowed_bss_eval`) in 0.09 s against 0.6 s each
  (2-core dev box, busy, best of 3). When
  its solver meets a singular system (for example two identical references) the call is
  answered by the mir_eval backend, which falls back to least squares.

Signals are mono: ``(sources, samples)``; ``(sources, channels, samples)`` is downmixed
by the mean over channels first. Scores are in dB, float64; a perfect estimate may
give ``inf`` (or a very large value).

Silence (STYLE habit 14) never raises:

* a reference whose mean square is at most :data:`SILENCE_POWER` (-100 dBFS, which
  also catches dither) has no defined score: that source gets NaN, and the other
  sources are scored against the non-silent references only (a silent reference
  spans nothing, so this is what the projections would be without the singularity).
  With a single non-silent source left, its SIR is ``inf`` (there is no interferer).
* an estimate that is exactly zero has no defined score either (bss_eval's
  projections are 0/0): NaN for that source; the other estimates are unaffected
  (each estimate is scored on its own).

NaNs are dropped by :func:`median_metrics` and by the window median of
:func:`windowed_bss_eval` (museval's convention of skipping silent windows).
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Sequence
from typing import Any, Literal, get_args

import numpy as np

from sepcore.units import Seconds, seconds_to_samples

Backend = Literal["fast", "mir_eval"]
#: Names of the BSS Eval metrics, in the order the backends return them.
METRICS = ("sdr", "sir", "sar")
#: Mean square at or below which a reference counts as silent (-100 dBFS).
SILENCE_POWER = 1e-10
#: Windows scored together by the fast backend (memory: ~8 MB per window of 2 sources).
FAST_BATCH = 16


def _as_sources(x: np.ndarray, what: str) -> np.ndarray:
    """``(sources, samples)`` float64; ``(sources, channels, samples)`` is averaged over channels."""
    x = np.asarray(x, dtype=np.float64)
    if x.ndim == 3:
        x = x.mean(axis=1)
    if x.ndim != 2 or x.shape[0] == 0 or x.shape[1] == 0:
        raise ValueError(
            f"{what}: expected (sources, samples) or (sources, channels, samples), got {x.shape}"
        )
    if not np.isfinite(x).all():
        raise ValueError(f"{what}: NaN or Inf samples")
    return x


def _mir_eval(ref: np.ndarray, est: np.ndarray) -> np.ndarray:
    """Scores ``(3, batch, sources)`` of ``(batch, sources, samples)`` with mir_eval."""
    import mir_eval

    out = np.empty((3, ref.shape[0], ref.shape[1]))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # deprecated in 0.8, kept until 0.9
        for b in range(ref.shape[0]):
            sdr, sir, sar, _ = mir_eval.separation.bss_eval_sources(
                ref[b], est[b], compute_permutation=False
            )
            out[:, b] = sdr, sir, sar
    return out


def _fast(ref: np.ndarray, est: np.ndarray) -> np.ndarray:
    """Scores ``(3, batch, sources)`` of ``(batch, sources, samples)`` with fast_bss_eval.

    ``fast_bss_eval.bss_eval_sources(ref, est, compute_permutation=False)`` step by step
    (its ``square_cosine_metrics`` with ``pairwise=False``), the solves by :func:`_solve`.
    """
    parts = []
    for b in range(0, ref.shape[0], FAST_BATCH):
        r, e = ref[b : b + FAST_BATCH], est[b : b + FAST_BATCH]
        try:
            parts.append(_fast_batch(r, e))
        except np.linalg.LinAlgError:  # singular system
            parts.append(_mir_eval(r, e))
    return np.concatenate(parts, axis=1)


#: Length of the distortion filters (bss_eval's and fast_bss_eval's default).
FILTER_LENGTH = 512


def _fast_batch(ref: np.ndarray, est: np.ndarray) -> np.ndarray:
    import torch
    from fast_bss_eval.torch.helpers import _normalize
    from fast_bss_eval.torch.linalg import block_toeplitz, toeplitz
    from fast_bss_eval.torch.metrics import _base_metrics_bss_eval, compute_stats_2

    length = FILTER_LENGTH
    r = _normalize(torch.from_numpy(np.ascontiguousarray(ref)), dim=-1)
    e = _normalize(torch.from_numpy(np.ascontiguousarray(est)), dim=-1)
    # acf (batch, 2 length, sources, sources), xcorr (batch, length, sources, sources)
    # One set of references for the whole batch (the methods of one class): their
    # statistics are computed once, and each system factored once and solved for every
    # item's right-hand sides.
    shared = all(np.array_equal(ref[0], ref[k]) for k in range(1, ref.shape[0]))
    acf, xcorr = _shared_stats(r[:1], e, length) if shared else compute_stats_2(r, e, length=length)
    # SDR: each estimate on the shifts of its own reference, (batch, sources, length)
    acf_sdr = torch.diagonal(acf, dim1=-2, dim2=-1).transpose(-2, -1)[..., :length]
    xcorr_sdr = torch.diagonal(xcorr, dim1=-2, dim2=-1).transpose(-2, -1).numpy()
    if shared:  # (sources, length, length) against (sources, length, batch)
        sol = _solve(toeplitz(acf_sdr[:1]).numpy()[0], xcorr_sdr.transpose(1, 2, 0)).transpose(2, 0, 1)
    else:
        sol = _solve(toeplitz(acf_sdr).numpy(), xcorr_sdr[..., None])[..., 0]
    coh_sdr = np.einsum("...l,...l->...", xcorr_sdr, sol)
    # SAR: each estimate on the shifts of all references, (batch, length * sources, sources)
    xc = xcorr.reshape(xcorr.shape[:-3] + (-1,) + xcorr.shape[-1:]).numpy()
    if shared:  # (length * sources, length * sources) against (length * sources, batch * sources)
        b, ls, c = xc.shape
        rhs = xc.transpose(1, 0, 2).reshape(ls, b * c)
        sol = _solve(block_toeplitz(acf[:1]).numpy()[0], rhs).reshape(ls, b, c).transpose(1, 0, 2)
    else:
        sol = _solve(block_toeplitz(acf).numpy(), xc)
    coh_sar = np.einsum("...lc,...lc->...c", xc, sol)
    neg = _base_metrics_bss_eval(torch.from_numpy(coh_sdr), torch.from_numpy(coh_sar), None)
    return -np.stack([x.numpy() for x in neg])  # (sdr, sir, sar)


def _shared_stats(r: Any, e: Any, length: int) -> tuple[Any, Any]:
    """fast_bss_eval's ``compute_stats_2`` for one set of references ``(1, sources, samples)``
    and a batch of estimates ``(batch, sources, samples)``: the references' FFT and
    auto-correlation are computed once. Returns ``acf`` ``(1, 2 length, sources, sources)``
    and ``xcorr`` ``(batch, length, sources, sources)`` (torch tensors).
    """
    import torch
    from fast_bss_eval.torch.compatibility import einsum, irfft, rfft

    n_fft = 2 ** math.ceil(math.log2(r.shape[-1] + e.shape[-1] - 1))
    x, y = rfft(r, n=n_fft, dim=-1), rfft(e, n=n_fft, dim=-1)
    acf = irfft(einsum("...cn,...dn->...ncd", x, x.conj()), n=n_fft, dim=-3)
    acf = torch.cat([acf[..., :length, :, :], acf[..., -length:, :, :]], dim=-3)
    xy = einsum("...cn,...dn->...ncd", x.conj().expand(y.shape), y)
    return acf, irfft(xy, n=n_fft, dim=-3)[..., :length, :, :]


def _solve(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """``a x = b`` for stacks of square ``a`` ``(..., n, n)`` and ``b`` ``(..., n, k)``.

    numpy's LAPACK (``gesv``, OpenBLAS with its own pthreads), never nested in an OpenMP
    team, instead of ``torch.linalg.solve`` (module docstring). Raises
    ``np.linalg.LinAlgError`` on an exactly singular system, as torch does.
    """
    return np.linalg.solve(a, b)


_BACKENDS: dict[str, Callable[[np.ndarray, np.ndarray], np.ndarray]] = {
    "fast": _fast,
    "mir_eval": _mir_eval,
}


def _silent_refs(ref: np.ndarray) -> np.ndarray:
    return np.mean(np.square(ref), axis=-1) <= SILENCE_POWER


def _silent_ests(est: np.ndarray) -> np.ndarray:
    return ~np.any(est != 0.0, axis=-1)


def _score_batch(ref: np.ndarray, est: np.ndarray, backend: Backend) -> np.ndarray:
    """Scores ``(3, batch, sources)`` of ``(batch, sources, samples)``, silence as NaN.

    Items are grouped by which references are silent; each group is scored on its
    non-silent references, with silent estimates replaced by their reference (a
    placeholder: each estimate is scored on its own) and their scores set to NaN.
    """
    if backend not in _BACKENDS:
        raise ValueError(f"backend must be one of {get_args(Backend)}, got '{backend}'")
    out = np.full((3,) + ref.shape[:2], np.nan)
    live = ~_silent_refs(ref)
    dead_est = _silent_ests(est)
    patterns = np.unique(live, axis=0)
    for pattern in patterns:
        items = np.flatnonzero((live == pattern).all(axis=1))
        keep = np.flatnonzero(pattern)
        if keep.size == 0:
            continue
        r = ref[np.ix_(items, keep)]
        e = est[np.ix_(items, keep)]
        placeholder = dead_est[np.ix_(items, keep)]
        e[placeholder] = r[placeholder]
        scores = _BACKENDS[backend](r, e)
        scores[:, placeholder] = np.nan
        out[:, items[:, None], keep[None, :]] = scores
    return out


def bss_eval(
    references: np.ndarray, estimates: np.ndarray, backend: Backend = "fast"
) -> dict[str, np.ndarray]:
    """SDR, SIR and SAR of each estimate against its reference (no permutation).

    Silent references and all-zero estimates give NaN for that source (module docstring).
    Shape: ``(sources, samples)`` or ``(sources, channels, samples)`` each ->
    ``{"sdr", "sir", "sar"}`` each ``(sources,)``, dB, float64.
    """
    ref = _as_sources(references, "references")
    est = _as_sources(estimates, "estimates")
    if ref.shape != est.shape:
        raise ValueError(f"references {ref.shape} and estimates {est.shape} differ in shape")
    scores = _score_batch(ref[None], est[None], backend)[:, 0]
    return dict(zip(METRICS, scores, strict=True))


def bss_eval_many(
    references: np.ndarray, estimates: np.ndarray, backend: Backend = "fast"
) -> dict[str, np.ndarray]:
    """:func:`bss_eval` of several estimates of the same references (the methods of a class).

    Same numbers as one :func:`bss_eval` call per item; the fast backend factors each
    linear system of the references once for all items.
    Shape: references ``(sources, [channels,] samples)``, estimates ``(items, sources,
    [channels,] samples)`` -> ``{"sdr", "sir", "sar"}`` each ``(items, sources)``, dB.
    """
    ref = _as_sources(references, "references")
    est = np.stack([_as_sources(e, "estimates") for e in estimates])
    if est.shape[1:] != ref.shape:
        raise ValueError(f"references {ref.shape} and estimates {est.shape} differ in shape")
    scores = _score_batch(np.repeat(ref[None], est.shape[0], axis=0), est, backend)
    return dict(zip(METRICS, scores, strict=True))


def windowed_bss_eval(
    references: np.ndarray,
    estimates: np.ndarray,
    sample_rate: int,
    window_s: Seconds = 1.0,
    hop_s: Seconds = 1.0,
    backend: Backend = "fast",
) -> dict[str, np.ndarray]:
    """BSS Eval on windows, and the median over windows (museval's framewise mode).

    Windows of ``window_s`` every ``hop_s``; a trailing part shorter than a window is
    dropped, and a signal shorter than one window is one window. A window where a
    source's reference is silent gives NaN for that source and is left out of that
    source's median (a source silent everywhere has a NaN median).
    Shape: ``(sources, samples)`` or ``(sources, channels, samples)`` each ->
    ``{"sdr", "sir", "sar"}`` medians ``(sources,)``; ``{"sdr_windows", "sir_windows",
    "sar_windows"}`` ``(sources, windows)``; ``"window_start_s"`` ``(windows,)``.
    """
    ref = _as_sources(references, "references")
    est = _as_sources(estimates, "estimates")
    if ref.shape != est.shape:
        raise ValueError(f"references {ref.shape} and estimates {est.shape} differ in shape")
    win = seconds_to_samples(window_s, sample_rate)
    hop = seconds_to_samples(hop_s, sample_rate)
    if win < 1 or hop < 1:
        raise ValueError(f"window_s and hop_s must be positive, got {window_s}, {hop_s}")
    n = ref.shape[1]
    win = min(win, n)
    starts = np.arange(1 + (n - win) // hop) * hop

    def frames(x: np.ndarray) -> np.ndarray:  # (windows, sources, win)
        view = np.lib.stride_tricks.sliding_window_view(x, win, axis=1)[:, starts]
        return np.ascontiguousarray(view.transpose(1, 0, 2))

    scores = _score_batch(frames(ref), frames(est), backend)  # (3, windows, sources)
    out: dict[str, np.ndarray] = {"window_start_s": starts / sample_rate}
    for name, values in zip(METRICS, scores, strict=True):
        out[f"{name}_windows"] = values.T
        out[name] = _nanmedian(values, axis=0)
    return out


def _nanmedian(x: np.ndarray, axis: int) -> np.ndarray:
    """NaN-ignoring median; all-NaN slices give NaN without a warning."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        return np.asarray(np.nanmedian(x, axis=axis), dtype=np.float64)


def median_metrics(per_track: Sequence[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    """NaN-ignoring median over tracks of SDR, SIR and SAR per source (seed 002 §6).

    Also ``"count"``: per source, the number of tracks with a finite-or-inf (not NaN) SDR.
    Shape: a list of ``{"sdr", "sir", "sar"}`` each ``(sources,)`` -> the same keys
    ``(sources,)`` plus ``"count"`` ``(sources,)``.
    """
    if not per_track:
        raise ValueError("median_metrics needs at least one track")
    out: dict[str, np.ndarray] = {}
    for name in METRICS:
        values = np.stack([np.asarray(track[name], dtype=np.float64) for track in per_track])
        out[name] = _nanmedian(values, axis=0)
    sdr = np.stack([np.asarray(track["sdr"], dtype=np.float64) for track in per_track])
    out["count"] = np.sum(~np.isnan(sdr), axis=0)
    return out


def si_sdr(reference: np.ndarray, estimate: np.ndarray, eps: float = 1e-8) -> float:
    """Scale-invariant SDR in dB over the whole signal (all channels pooled), zero-mean.

    ``10 log10((|a r|^2 + eps) / (|a r - e|^2 + eps))`` with ``a = <e, r> / (|r|^2 + eps)``:
    a silent reference and a silent estimate give 0 dB, a silent reference and a
    non-silent estimate a large negative value; never NaN for finite input.
    Shape: any, equal shapes -> float.
    """
    r, e = _pair(reference, estimate, "si_sdr")
    r, e = r - r.mean(), e - e.mean()
    scale = np.dot(e, r) / (np.dot(r, r) + eps)
    target = scale * r
    return float(10.0 * np.log10((np.dot(target, target) + eps) / (_energy(target - e) + eps)))


def sdr_simple(reference: np.ndarray, estimate: np.ndarray, eps: float = 1e-8) -> float:
    """``10 log10((|r|^2 + eps) / (|r - e|^2 + eps))`` in dB, all channels pooled.

    Cheap (no projections), for validation during training. A silent reference and a
    silent estimate give 0 dB; never NaN for finite input. Shape: any, equal shapes -> float.
    """
    r, e = _pair(reference, estimate, "sdr_simple")
    return float(10.0 * np.log10((_energy(r) + eps) / (_energy(r - e) + eps)))


def _pair(reference: np.ndarray, estimate: np.ndarray, what: str) -> tuple[np.ndarray, np.ndarray]:
    r = np.asarray(reference, dtype=np.float64).ravel()
    e = np.asarray(estimate, dtype=np.float64).ravel()
    if np.shape(reference) != np.shape(estimate):
        raise ValueError(
            f"{what}: reference {np.shape(reference)} and estimate {np.shape(estimate)} differ"
        )
    return r, e


def _energy(x: np.ndarray) -> float:
    return float(np.dot(x, x))
