"""Silence detection and adjustment of instrument/rest pairs (seed 002 §4.3.3).

Definitions used throughout:

* **Level**: the signal is cut into consecutive, non-overlapping frames of
  ``frame_s`` seconds (the last one may be shorter). A frame's level is its RMS over
  all channels and samples in dBFS, ``10 * log10(mean(x**2) + 1e-20)``, relative to
  a full-scale amplitude of 1.0 (a full-scale sine reads -3 dBFS). The epsilon keeps
  digital silence finite (-200 dBFS). Seed 002 does not say how its level was
  measured; chunk RMS in dBFS is the convention of common tools (pydub's
  ``detect_silence``) and, unlike the peak, ignores isolated clicks.
* **Quiet**: a frame whose level is below ``threshold_dbfs`` (-50 dBFS).
* **Silence**: a run of consecutive quiet frames strictly longer than
  ``min_silence_s`` (1 s). Only silences are cut; shorter quiet runs are pauses that
  may be musically relevant (seed 002). Spans are frame-aligned half-open sample
  ranges ``[start, end)``.
* **Ratio**: the *audio ratio*, the share of samples that are not quiet,
  ``1 - quiet / total`` (seed 002's "audio to silence ratio" of 70 % means 70 %
  audio, 30 % silence). *Every* quiet frame counts against it, also those in short
  pauses: this is why a track "with many short silences" (seed 002 §4.3.3) can stay
  below the target after every silence is cut, and why appendix A still lists
  adjusted tracks with 30-50 % silence. Get the quiet runs with
  ``find_silences(x, rate, min_silence_s=0)``. A signal of no samples has ratio 0.0
  (no audio), never NaN.

Silence is measured in the target (instrument) only; the same spans are cut from
instrument, rest and mix so that ``mix == instrument + rest`` still holds.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from sepcore.units import Decibels, Seconds, seconds_to_samples

Span = tuple[int, int]

#: Added to the mean square before the logarithm: digital silence is -200 dBFS.
POWER_EPS = 1e-20


def frame_levels_db(x: np.ndarray, sample_rate: int, frame_s: Seconds = 0.05) -> np.ndarray:
    """Per-frame RMS level over all channels, in dBFS (see the module docstring).

    Shape: ``x`` is ``(channels, samples)``; returns ``(frames,)`` with
    ``frames = ceil(samples / frame_len)``.
    """
    x = _waveform(x)
    frame_len = _frame_len(sample_rate, frame_s)
    n = x.shape[1]
    frames = -(-n // frame_len)
    if frames == 0:
        return np.zeros(0, dtype=np.float64)
    power = np.square(x, dtype=np.float64).mean(axis=0)
    padded = np.zeros(frames * frame_len, dtype=np.float64)
    padded[:n] = power
    sums = padded.reshape(frames, frame_len).sum(axis=1)
    counts = np.full(frames, frame_len, dtype=np.float64)
    counts[-1] = n - (frames - 1) * frame_len
    return 10.0 * np.log10(sums / counts + POWER_EPS)


def find_silences(
    x: np.ndarray,
    sample_rate: int,
    threshold_dbfs: Decibels = -50.0,
    min_silence_s: Seconds = 1.0,
    frame_s: Seconds = 0.05,
) -> list[Span]:
    """Silent stretches of ``x``: sorted, non-overlapping, frame-aligned ``[start, end)``.

    Shape: ``x`` is ``(channels, samples)``.

    A stretch is silent when every frame in it is below ``threshold_dbfs`` and it is
    strictly longer than ``min_silence_s`` (measured in samples after clipping the
    last frame to the signal's end); ``min_silence_s=0`` returns every quiet run.
    Frame resolution: a silent gap is found as the frames that lie entirely inside
    it (a frame shared with sound is not quiet).
    """
    x = _waveform(x)
    frame_len = _frame_len(sample_rate, frame_s)
    n = x.shape[1]
    quiet = frame_levels_db(x, sample_rate, frame_s) < threshold_dbfs
    min_len = min_silence_s * sample_rate
    spans: list[Span] = []
    edges = np.flatnonzero(np.diff(np.concatenate([[0], quiet.astype(np.int8), [0]])))
    for first, stop in zip(edges[::2], edges[1::2], strict=True):
        start, end = int(first) * frame_len, min(int(stop) * frame_len, n)
        if end - start > min_len:
            spans.append((start, end))
    return spans


def audio_ratio(n_samples: int, silences: Sequence[Span]) -> float:
    """The non-silent share of ``n_samples`` samples; 0.0 for an empty signal."""
    spans = _check_spans(n_samples, silences)
    if n_samples == 0:
        return 0.0
    return 1.0 - sum(e - s for s, e in spans) / n_samples


def plan_silence_cut(
    n_samples: int,
    silences: Sequence[Span],
    target_ratio: float,
    *,
    quiet_samples: int | None = None,
    partial: bool = True,
) -> list[Span]:
    """Spans to remove so the audio ratio reaches ``target_ratio``, longest silence first.

    ``silences`` are the cuttable silences; ``quiet_samples`` is the number of quiet
    samples in all (silences plus short pauses, which count as silence in the ratio
    but are never cut); by default only ``silences`` are quiet.

    Silences are taken in order of decreasing length (ties: the earlier first) and
    removed whole while the ratio stays below the target. When removing the next one
    whole would overshoot, and ``partial`` is true, only the needed number of samples
    is removed from its *middle* (the fewest that reach the target): the silence
    keeps equal lead-in and lead-out and the cut joins silence to silence, so no
    click is introduced. With ``partial=False`` the silence is removed whole. When
    even removing every silence does not reach the target (short pauses, or no audio
    at all), every silence is removed.

    Returns the spans to remove, sorted by position (ready for :func:`cut_spans`).
    """
    if not 0.0 <= target_ratio <= 1.0:
        raise ValueError(f"target_ratio must be in [0, 1], got {target_ratio}")
    spans = _check_spans(n_samples, silences)
    silent = sum(e - s for s, e in spans)
    quiet = silent if quiet_samples is None else int(quiet_samples)
    if not silent <= quiet <= n_samples:
        raise ValueError(
            f"quiet_samples={quiet_samples} must lie in [{silent}, {n_samples}] "
            "(the silences' total and the signal length)"
        )
    audio = n_samples - quiet
    length = n_samples
    cut: list[Span] = []
    for s, e in sorted(spans, key=lambda sp: (-(sp[1] - sp[0]), sp[0])):
        if length > 0 and audio / length >= target_ratio:
            break
        # fewest samples c with audio / (length - c) >= target_ratio
        need = length - audio / target_ratio if target_ratio > 0 else 0.0
        c = min(e - s, max(0, math.ceil(need - 1e-9)))
        if c == 0:  # already at the target up to rounding
            break
        if partial and audio > 0 and c < e - s:
            mid = s + (e - s - c) // 2
            cut.append((mid, mid + c))
            break
        cut.append((s, e))
        length -= e - s
    return sorted(cut)


def cut_spans(x: np.ndarray, spans: Sequence[Span]) -> np.ndarray:
    """``x`` without the samples in ``spans``, along the last axis.

    Shape: ``(..., samples)`` -> ``(..., samples - removed)``; works for
    ``(channels, samples)`` and ``(stems, channels, samples)`` alike, so the same
    spans can be cut from instrument, rest and mix. Returns a new array, same dtype.
    """
    x = np.asarray(x)
    if x.ndim < 1:
        raise ValueError(f"x must have a samples axis, got shape {x.shape}")
    checked = _check_spans(x.shape[-1], spans)
    keep = np.ones(x.shape[-1], dtype=bool)
    for s, e in checked:
        keep[s:e] = False
    return x[..., keep]


@dataclass(frozen=True)
class SilenceResult:
    """Outcome of :func:`adjust_silence` for one track.

    ``ratio_before``/``ratio_after`` are audio ratios of the target; ``ratio_after`` is
    computed from the measured quiet samples and the removed spans (not re-measured:
    the quiet length left of a partly cut silence still counts as silence).
    ``target`` and ``others`` are the cut arrays (the inputs when nothing was cut).
    """

    kept: bool
    ratio_before: float
    ratio_after: float
    removed_spans: list[Span]
    target: np.ndarray
    others: list[np.ndarray] = field(default_factory=list)


def adjust_silence(
    target: np.ndarray,
    others: Sequence[np.ndarray],
    sample_rate: int,
    target_ratio: float,
    cutoff_ratio: float | None = 0.5,
    threshold_dbfs: Decibels = -50.0,
    min_silence_s: Seconds = 1.0,
    frame_s: Seconds = 0.05,
    partial: bool = True,
) -> SilenceResult:
    """Cut the target's silences (longest first) from it and from ``others`` alike.

    Shape: ``target`` is ``(channels, samples)``; each of ``others`` (e.g. rest and
    mix) is ``(..., samples)`` with the same number of samples.

    Silence is measured in ``target`` only: its quiet runs give the ratio, those
    longer than ``min_silence_s`` are the silences that may be cut
    (:func:`plan_silence_cut`). ``kept`` is False when the ratio after cutting is still
    below ``cutoff_ratio`` (seed 002: 50 %; ``None`` keeps every track). An all-silent
    target is cut to nothing: ratio 0.0, not kept for any positive cutoff.
    """
    target = _waveform(target)
    n = target.shape[1]
    for i, other in enumerate(others):
        if np.ndim(other) < 1 or np.shape(other)[-1] != n:
            raise ValueError(
                f"others[{i}] has shape {np.shape(other)}; expected {n} samples on the last axis"
            )
    quiet = find_silences(target, sample_rate, threshold_dbfs, 0.0, frame_s)
    quiet_samples = sum(e - s for s, e in quiet)
    min_len = min_silence_s * sample_rate
    silences = [(s, e) for s, e in quiet if e - s > min_len]
    before = audio_ratio(n, quiet)
    spans = plan_silence_cut(
        n, silences, target_ratio, quiet_samples=quiet_samples, partial=partial
    )
    remaining = n - sum(e - s for s, e in spans)
    after = (n - quiet_samples) / remaining if remaining > 0 else 0.0
    kept = cutoff_ratio is None or after >= cutoff_ratio
    return SilenceResult(
        kept=kept,
        ratio_before=before,
        ratio_after=after,
        removed_spans=spans,
        target=cut_spans(target, spans),
        others=[cut_spans(o, spans) for o in others],
    )


def silence_histogram(ratios: Sequence[float], bins: int = 10) -> list[dict]:
    """Tracks per silence share, as in seed 002's appendix A.

    ``ratios`` are *audio* ratios (as everywhere in this module); a track is binned
    by its silence share ``1 - ratio``. Bin ``i`` holds shares in
    ``[i / bins, (i + 1) / bins)``, the last bin also holds 100 % (the appendix's
    "less than 10 %" ... "more than 90 %" rows are these ten bins: they add up to the
    track count). Returns rows ``{"bin": "0-10%", "tracks": n, "share": n / total}``
    (share 0.0 when there are no tracks).
    """
    if bins < 1:
        raise ValueError(f"bins must be >= 1, got {bins}")
    values = np.asarray(ratios, dtype=np.float64)
    if values.ndim != 1:
        raise ValueError(f"ratios must be a flat sequence, got shape {values.shape}")
    bad = values[~((values >= 0.0) & (values <= 1.0))]
    if bad.size:
        raise ValueError(f"ratios must be in [0, 1], got {bad[:5].tolist()}")
    silence = 1.0 - values
    # round first so that 1 - 0.9 (= 0.0999...) lands in the 10-20 % bin, not 0-10 %
    index = np.minimum(np.floor(np.round(silence * bins, 9)).astype(int), bins - 1)
    counts = np.bincount(index, minlength=bins)
    total = int(values.size)
    rows = []
    for i, count in enumerate(counts.tolist()):
        lo, hi = _percent(100 * i / bins), _percent(100 * (i + 1) / bins)
        rows.append(
            {"bin": f"{lo}-{hi}%", "tracks": count, "share": count / total if total else 0.0}
        )
    return rows


def _percent(value: float) -> str:
    return f"{value:g}"


def _waveform(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x)
    if x.ndim != 2:
        raise ValueError(f"x must be (channels, samples), got shape {x.shape}")
    return x


def _frame_len(sample_rate: int, frame_s: Seconds) -> int:
    frame_len = seconds_to_samples(frame_s, sample_rate)
    if frame_len < 1:
        raise ValueError(f"frame_s={frame_s} is shorter than one sample at {sample_rate} Hz")
    return frame_len


def _check_spans(n_samples: int, spans: Sequence[Span]) -> list[Span]:
    """Spans as int pairs, checked sorted, non-overlapping and inside ``[0, n_samples]``."""
    if n_samples < 0:
        raise ValueError(f"n_samples must be >= 0, got {n_samples}")
    out = [(int(s), int(e)) for s, e in spans]
    prev = 0
    for s, e in out:
        if not prev <= s <= e <= n_samples:
            raise ValueError(
                f"spans must be sorted, non-overlapping and within [0, {n_samples}]: {out[:10]}"
            )
        prev = e
    return out
