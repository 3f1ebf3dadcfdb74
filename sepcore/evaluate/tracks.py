"""Evaluation without Ray: separation scores with oracle bounds, activation matrices, metrics.json.

``ray_jobs.evaluate`` runs these functions once per track in Ray tasks; tests and
notebooks call them directly.

Separation (seed 002 §6). For a track and a class, the reference is the pair
``[instrument, rest]`` made exactly as for training (:func:`sepcore.prepare.pairs.make_pair`:
the class's stems summed, all other usable stems summed, ``mix = instrument + rest``).
Four *methods* give estimates ``[instrument_est, rest_est]`` (:func:`estimates`):

* ``model``: the checkpoint through :func:`sepcore.separate.apply.separate_blocks` (the one
  apply that the separate job uses);
* ``irm`` / ``ibm``: the ideal ratio / binary mask with the model's STFT
  (:func:`sepcore.separate.apply.oracle_masks`): upper bounds of any mask method;
* ``mixture``: the mixture as both estimates: the lower bound.

Each is scored with BSS Eval (``bss_eval_sources``, no permutation, 512-tap filters;
:mod:`sepcore.evaluate.bss`) in one of two modes (:class:`EvalSpec`):

* ``full`` (seed 002): one score per track. BSS Eval on a whole track costs more than
  linear time in its length, so a track longer than ``segment_s`` is cut into equal
  segments of at most ``segment_s``; each segment is scored and the track's score
  pools the segments' energies (:func:`pooled_bss_eval`). A track of one segment gets
  exactly ``bss_eval``'s numbers; a longer one differs only in that the distortion
  filters are fit per segment.
* ``windowed`` (SiSEC / museval): ``window_s`` windows every ``hop_s``, the median over
  windows (:func:`sepcore.evaluate.bss.windowed_bss_eval`; windows with a silent reference
  are left out of that source's median).

Activations (seed 001 §5.3-5.4). Activations are in [0, 1]: frame RMS in dB re full
scale over a 60 dB range (:func:`sepcore.prepare.features.rms_activation`), so ``a`` stands
for the level ``60 (a - 1)`` dB and the amplitude ``10 ** (3 (a - 1))`` (0 at ``a = 0``).
Given per-class *windows* (frames where one instrument is the one playing, as in
seed 001's sequences of one instrument after another):

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

import math
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal, get_args

import numpy as np
import torch
from torch import nn

from sepcore.errors import SepError
from sepcore.evaluate import bss as metrics
from sepcore.separate.apply import oracle_masks, predict_mask, separate_blocks
from sepcore.units import Decibels, Seconds, seconds_to_samples

Mode = Literal["full", "windowed"]
#: Methods of a separation evaluation, in table order.
METHODS = ("model", "irm", "ibm", "mixture")
#: Sources of a separation evaluation: the class and everything else.
SOURCES = ("instrument", "rest")
#: Dynamic range of activations and floor of the activation matrices (seed 001).
RANGE_DB: Decibels = 60.0
#: Format tag of metrics.json.
FORMAT = "sep-evaluate/1"


class EvaluationError(SepError):
    """An evaluation input does not fit (wrong checkpoint task, shapes, metrics.json)."""


@dataclass(frozen=True)
class EvalSpec:
    """How tracks are scored (see the module docstring)."""

    mode: Mode = "full"
    backend: metrics.Backend = "mir_eval"
    segment_s: Seconds = 30.0
    window_s: Seconds = 1.0
    hop_s: Seconds = 1.0

    def __post_init__(self) -> None:
        if self.mode not in get_args(Mode):
            raise ValueError(f"mode must be one of {get_args(Mode)}, got '{self.mode}'")
        if self.backend not in get_args(metrics.Backend):
            raise ValueError(
                f"backend must be one of {get_args(metrics.Backend)}, got '{self.backend}'"
            )
        if min(self.segment_s, self.window_s, self.hop_s) <= 0:
            raise ValueError("segment_s, window_s and hop_s must be positive")


# ---------------------------------------------------------------- pooled full-track scores


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


def score(
    references: np.ndarray, estimates: np.ndarray, sample_rate: int, spec: EvalSpec
) -> dict[str, np.ndarray]:
    """SDR, SIR, SAR per source in the mode of ``spec``. Shapes as :func:`pooled_bss_eval`."""
    if spec.mode == "full":
        out = pooled_bss_eval(references, estimates, sample_rate, spec.segment_s, spec.backend)
    else:
        out = metrics.windowed_bss_eval(
            references, estimates, sample_rate, spec.window_s, spec.hop_s, spec.backend
        )
    return {name: np.asarray(out[name], dtype=np.float64) for name in metrics.METRICS}


# ---------------------------------------------------------------- separation of one track


def estimates(
    instrument: np.ndarray,
    rest: np.ndarray,
    n_fft: int,
    hop: int,
    model: nn.Module | None = None,
    sample_rate: int = 22050,
    frames: int = 64,
    batch_size: int = 8,
    block_s: Seconds = 60.0,
) -> dict[str, dict[str, np.ndarray]]:
    """Estimates of every method for the pair ``instrument + rest`` (module docstring).

    ``model`` None leaves out the ``model`` method. Memory of the model pass is bounded
    by ``block_s`` (:func:`sepcore.separate.apply.separate_blocks`).
    Shape: ``(channels, samples)`` each -> ``{method: {"instrument", "rest"}}`` each
    ``(channels, samples)``.
    """
    if instrument.shape != rest.shape or instrument.ndim != 2:
        raise ValueError(
            f"instrument {instrument.shape} and rest {rest.shape} must be equal (channels, samples)"
        )
    mix = (instrument + rest).astype(np.float32)
    out: dict[str, dict[str, np.ndarray]] = {}
    if model is not None:
        out["model"] = separate_blocks(model, mix, sample_rate, n_fft, hop, frames, block_seconds=block_s,
                                       batch_size=batch_size)  # fmt: skip
    out.update(oracle_masks(instrument, rest, n_fft, hop))
    out["mixture"] = {"instrument": mix, "rest": mix}
    return out


def score_methods(
    instrument: np.ndarray,
    rest: np.ndarray,
    method_estimates: Mapping[str, Mapping[str, np.ndarray]],
    sample_rate: int,
    spec: EvalSpec,
) -> dict[str, dict[str, dict[str, float]]]:
    """Scores of each method: ``{method: {source: {"sdr", "sir", "sar"}}}`` (floats, dB).

    References are ``[instrument, rest]``, estimates ``[est["instrument"], est["rest"]]``.
    """
    refs = np.stack([instrument, rest])
    out: dict[str, dict[str, dict[str, float]]] = {}
    for method, est in method_estimates.items():
        scores = score(refs, np.stack([est["instrument"], est["rest"]]), sample_rate, spec)
        out[method] = {
            src: {m: float(scores[m][k]) for m in metrics.METRICS} for k, src in enumerate(SOURCES)
        }
    return out


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


# ---------------------------------------------------------------- activations (seed 001)


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


def loudest_span(audio: np.ndarray, sample_rate: int, seconds: Seconds) -> tuple[int, float]:
    """Start and RMS (dBFS) of the loudest ``seconds`` of ``audio`` on a 0.1-s grid.

    Shape: ``(channels, samples)``; a signal shorter than ``seconds`` is one span at 0.
    """
    power = np.square(audio, dtype=np.float64).mean(axis=0)
    n = min(seconds_to_samples(seconds, sample_rate), power.size)
    step = max(1, seconds_to_samples(0.1, sample_rate))
    csum = np.concatenate([[0.0], np.cumsum(power)])
    starts = np.arange(0, power.size - n + 1, step)
    energy = csum[starts + n] - csum[starts]
    k = int(np.argmax(energy))
    with np.errstate(divide="ignore"):
        return int(starts[k]), float(10.0 * np.log10(max(energy[k] / max(n, 1), 1e-30)))


# ---------------------------------------------------------------- whole tracks


def pair_spec(meta: Mapping[str, Any], target: str, outputs: tuple[str, ...] = ("target",)) -> Any:
    """The :class:`sepcore.prepare.pairs.PrepareSpec` that makes a checkpoint's reference pairs.

    Same rate, channels, feature and QA exclusions as training (no silence cuts).
    """
    from sepcore.prepare.pairs import PrepareSpec

    feature = {k: v for k, v in meta["feature"].items() if k != "sample_rate"}
    return PrepareSpec(target=target, sample_rate=int(meta["sample_rate"]), channels=int(meta.get("channels", 1)),
                       feature=feature, frames=int(meta["frames"]), outputs=outputs,
                       skip_without_target=False)  # fmt: skip


def class_pairs(
    track: Any, meta: Mapping[str, Any], classes: Sequence[str]
) -> tuple[dict[str, tuple[np.ndarray, np.ndarray]], dict[str, str]]:
    """``{class: (instrument, rest)}`` of a track for each class it holds, and skip reasons.

    The stems are read once (:func:`sepcore.prepare.pairs.make_pair`: QA flags and
    exclusions as in training); ``rest`` is every other usable stem.
    Shape: each signal ``(channels, samples)``.
    """
    from sepcore.data.classes import CLASSES
    from sepcore.prepare.mixing import instrument_rest
    from sepcore.prepare.pairs import make_pair

    pair = make_pair(track, pair_spec(meta, classes[0]))
    assert pair.class_sums is not None and pair.rest is not None
    pairs, skipped = {}, {}
    present = {CLASSES[k] for k in range(len(CLASSES)) if np.any(pair.class_sums[k])}
    for cls in classes:
        if cls not in present:
            skipped[cls] = f"no usable '{cls}' stem"
        elif cls == classes[0]:
            pairs[cls] = (pair.instrument, pair.rest)
        else:
            inst, rest, _ = instrument_rest(pair.class_sums, CLASSES, cls)
            pairs[cls] = (inst, rest)
    return pairs, skipped


def evaluate_separation(
    track: Any,
    meta: Mapping[str, Any],
    spec: EvalSpec,
    model: nn.Module | None,
    classes: Sequence[str],
    batch_size: int = 8,
) -> dict[str, Any]:
    """One track's separation scores for ``classes`` (the first is the model's target).

    Returns ``{"track_id", "seconds", "separate_seconds", "eval_seconds", "classes":
    {class: {method: {source: {"sdr", "sir", "sar"}}}}, "skipped": {class: reason}}``
    and, under ``"signals"``, the pair and estimates of the target (for examples).
    """
    import time

    pairs, skipped = class_pairs(track, meta, classes)
    sr, f = int(meta["sample_rate"]), meta["feature"]
    out: dict[str, Any] = {"track_id": track.track_id, "seconds": 0.0, "separate_seconds": 0.0,
                           "eval_seconds": 0.0, "classes": {}, "skipped": skipped, "signals": None}  # fmt: skip
    for cls, (instrument, rest) in pairs.items():
        t0 = time.perf_counter()
        use_model = model if cls == classes[0] else None
        est = estimates(instrument, rest, int(f["n_fft"]), int(f["hop"]), use_model, sr, int(meta["frames"]),
                        batch_size)  # fmt: skip
        t1 = time.perf_counter()
        out["classes"][cls] = score_methods(instrument, rest, est, sr, spec)
        out["separate_seconds"] += t1 - t0
        out["eval_seconds"] += time.perf_counter() - t1
        out["seconds"] = instrument.shape[1] / sr
        if cls == classes[0]:
            out["signals"] = {"instrument": instrument, "rest": rest, "estimates": est}
    return out


def evaluate_activations(
    track: Any, meta: Mapping[str, Any], model: nn.Module, batch_size: int = 32
) -> dict[str, Any]:
    """One track's predicted and reference activations, and their errors per class.

    Returns ``{"track_id", "seconds", "pred", "ref"`` (``(classes, frames)``),
    ``"errors"`` (:func:`activation_errors`), ``"class_sums"`` (``(classes, channels,
    samples)``, for sequences)``}``.
    """
    from sepcore.prepare.pairs import activation_params, finish_pair, make_pair

    spec = pair_spec(meta, "piano", outputs=("activations",))
    pair = make_pair(track, spec)
    sums = pair.class_sums
    pair = finish_pair(pair, spec)
    assert pair.activations is not None and sums is not None
    feature = spec.extractor()(pair.mix.mean(axis=0, keepdims=True))
    pred = predict_activations(
        model, feature, int(meta["frames"]), len(meta["classes"]), batch_size
    )
    ref = pair.activations
    if ref.shape != pred.shape:
        raise EvaluationError(
            f"{track.uri}: reference activations {ref.shape} and predictions {pred.shape} differ"
        )
    frame_length, hop = activation_params(spec)
    return {"track_id": track.track_id, "seconds": pair.mix.shape[1] / spec.sample_rate, "pred": pred, "ref": ref,
            "errors": activation_errors(pred, ref), "class_sums": sums, "frame_length": frame_length,
            "hop": hop}  # fmt: skip


def activation_sequence(
    parts: Sequence[tuple[str, np.ndarray]],
    meta: Mapping[str, Any],
    model: nn.Module,
    batch_size: int = 32,
) -> dict[str, Any]:
    """Seed 001's sequence test: solo parts one after another, predicted, and both matrices.

    ``parts`` are ``(class, audio)`` with audio ``(channels, samples)``: each class's
    solo audio in turn. Returns ``{"pred", "ref", "windows", "noise", "leakage",
    "classes"}`` with matrices over :data:`sepcore.data.classes.CLASSES` (classes without a
    part have NaN rows/columns).
    """
    from sepcore.data.classes import CLASSES
    from sepcore.prepare.features import rms_activation
    from sepcore.prepare.pairs import activation_params

    if not parts:
        raise EvaluationError("activation sequence: no solo parts to play")
    spec = pair_spec(meta, "piano", outputs=("activations",))
    channels = parts[0][1].shape[0]
    n = sum(a.shape[1] for _, a in parts)
    sums = np.zeros((len(CLASSES), channels, n), dtype=np.float32)
    spans: list[tuple[int, int] | None] = [None] * len(CLASSES)
    start = 0
    for cls, audio in parts:
        k = CLASSES.index(cls)
        sums[k, :, start : start + audio.shape[1]] = audio
        spans[k] = (start, start + audio.shape[1])
        start += audio.shape[1]
    frame_length, hop = activation_params(spec)
    ref = rms_activation(sums, frame_length, hop)
    feature = spec.extractor()(sums.sum(axis=0).mean(axis=0, keepdims=True))
    pred = predict_activations(model, feature, int(meta["frames"]), len(CLASSES), batch_size)
    windows = frame_windows(spans, ref.shape[1], frame_length, hop)
    return {"pred": pred, "ref": ref, "windows": windows, "noise": noise_matrix(pred, ref, windows),
            "leakage": leakage_matrix(pred, ref, windows), "classes": list(CLASSES), "hop": hop}  # fmt: skip


# ---------------------------------------------------------------- metrics.json

_NUM = {"type": ["number", "string", "null"]}
_SCORES: dict[str, Any] = {
    "type": "object",
    "required": ["sdr", "sir", "sar"],
    "properties": {m: _NUM for m in metrics.METRICS},
}
_PER_SOURCE = {
    "type": "object",
    "required": list(SOURCES),
    "properties": {s: _SCORES for s in SOURCES},
}
_MEDIAN_SOURCE = {**_SCORES, "required": ["sdr", "sir", "sar", "count"],
                  "properties": {**_SCORES["properties"], "count": {"type": "integer"}}}  # fmt: skip
_METHOD_MAP = {"type": "object", "propertyNames": {"enum": list(METHODS)}}
_MATRIX = {"type": "array", "items": {"type": "array", "items": _NUM}}

#: JSON Schema (draft 2020-12) of metrics.json; :func:`validate_metrics` checks it.
METRICS_SCHEMA: dict[str, Any] = {
    "$schema": "https://json-schema.org/draft/2020-12/schema",
    "title": "sep evaluate metrics.json",
    "type": "object",
    "required": [
        "format",
        "task",
        "checkpoint",
        "data",
        "split",
        "sample_rate",
        "evaluation",
        "tracks_selected",
        "tracks_evaluated",
        "timing",
        "failed",
        "separation",
        "activation",
    ],  # fmt: skip
    "properties": {
        "format": {"enum": [FORMAT]},
        "task": {"enum": ["separator", "activation"]},
        "checkpoint": {"type": "string"},
        "data": {"type": "string"},
        "split": {"type": "string"},
        "target": {"type": ["string", "null"]},
        "sample_rate": {"type": "integer"},
        "evaluation": {
            "type": "object",
            "required": ["mode", "backend", "segment_seconds", "window_seconds", "hop_seconds"],
            "properties": {
                "mode": {"enum": list(get_args(Mode))},
                "backend": {"enum": list(get_args(metrics.Backend))},
                "segment_seconds": {"type": "number"},
                "window_seconds": {"type": "number"},
                "hop_seconds": {"type": "number"},
            },  # fmt: skip
        },
        "tracks_selected": {"type": "integer"},
        "tracks_evaluated": {"type": "integer"},
        "timing": {
            "type": "object",
            "required": ["audio_seconds", "eval_seconds", "eval_seconds_per_audio_minute"],
            "properties": {
                k: {"type": ["number", "null"]}
                for k in (
                    "audio_seconds",
                    "eval_seconds",
                    "eval_seconds_per_audio_minute",
                    "separate_seconds",
                    "wall_seconds",
                )
            },  # fmt: skip
        },
        "failed": {
            "type": "array",
            "items": {
                "type": "object",
                "required": ["item", "error"],
                "properties": {"item": {"type": "string"}, "error": {"type": "string"}},
            },
        },
        "skipped": {"type": "object", "additionalProperties": {"type": "string"}},
        "separation": {
            "type": ["object", "null"],
            "additionalProperties": {  # one entry per class
                "type": "object",
                "required": ["methods", "median", "tracks"],
                "properties": {
                    "methods": {"type": "array", "items": {"enum": list(METHODS)}},
                    "median": {
                        **_METHOD_MAP,
                        "additionalProperties": {
                            "type": "object",
                            "required": list(SOURCES),
                            "properties": {s: _MEDIAN_SOURCE for s in SOURCES},
                        },
                    },
                    "tracks": {
                        "type": "array",
                        "items": {
                            "type": "object",
                            "required": ["track_id", "seconds", "scores"],
                            "properties": {
                                "track_id": {"type": "string"},
                                "seconds": {"type": "number"},
                                "scores": {**_METHOD_MAP, "additionalProperties": _PER_SOURCE},
                            },
                        },
                    },
                },  # fmt: skip
            },
        },
        "activation": {
            "type": ["object", "null"],
            "required": [
                "classes",
                "per_class",
                "tracks",
                "noise_matrix_db",
                "leakage_matrix_db",
                "sequence",
            ],
            "properties": {
                "classes": {"type": "array", "items": {"type": "string"}},
                "per_class": {
                    "type": "object",
                    "additionalProperties": {
                        "type": "object",
                        "required": ["mae", "error_db", "tracks"],
                        "properties": {
                            "mae": _NUM,
                            "error_db": _NUM,
                            "tracks": {"type": "integer"},
                        },
                    },
                },
                "tracks": {
                    "type": "array",
                    "items": {
                        "type": "object",
                        "required": ["track_id", "seconds", "mae", "error_db"],
                        "properties": {
                            "track_id": {"type": "string"},
                            "seconds": {"type": "number"},
                            "mae": {"type": "object"},
                            "error_db": {"type": "object"},
                        },
                    },
                },
                "noise_matrix_db": {"anyOf": [_MATRIX, {"type": "null"}]},
                "leakage_matrix_db": {"anyOf": [_MATRIX, {"type": "null"}]},
                "sequence": {
                    "type": ["array", "null"],
                    "items": {
                        "type": "object",
                        "required": ["class", "track_id", "start_s", "seconds"],
                        "properties": {
                            "class": {"type": "string"},
                            "track_id": {"type": "string"},
                            "start_s": {"type": "number"},
                            "seconds": {"type": "number"},
                        },
                    },
                },
            },  # fmt: skip
        },
        "report": {"type": "object"},
    },
}

_TYPES: dict[str, tuple[type, ...]] = {
    "object": (dict,), "array": (list,), "string": (str,), "null": (type(None),),
    "number": (int, float), "integer": (int,), "boolean": (bool,),
}  # fmt: skip


def _type_ok(value: Any, names: str | list[str]) -> bool:
    for name in [names] if isinstance(names, str) else names:
        if isinstance(value, bool) and name in ("number", "integer"):
            continue
        if isinstance(value, _TYPES[name]):
            return True
    return False


def _errors(value: Any, schema: Mapping[str, Any], path: str) -> list[str]:
    """Problems of ``value`` against the JSON Schema subset used by :data:`METRICS_SCHEMA`."""
    if "anyOf" in schema:
        options = [_errors(value, s, path) for s in schema["anyOf"]]
        return [] if any(not o for o in options) else options[0]
    if "type" in schema and not _type_ok(value, schema["type"]):
        return [f"{path}: expected {schema['type']}, got {type(value).__name__}"]
    if "enum" in schema and value not in schema["enum"]:
        return [f"{path}: {value!r} is not one of {schema['enum']}"]
    out: list[str] = []
    if isinstance(value, dict):
        out += [f"{path}: missing '{k}'" for k in schema.get("required", []) if k not in value]
        names = schema.get("propertyNames", {}).get("enum")
        out += [
            f"{path}: unexpected key '{k}'" for k in value if names is not None and k not in names
        ]
        for key, item in value.items():
            sub = schema.get("properties", {}).get(key, schema.get("additionalProperties"))
            if isinstance(sub, Mapping):
                out += _errors(item, sub, f"{path}.{key}")
    if isinstance(value, list) and "items" in schema:
        for k, item in enumerate(value):
            out += _errors(item, schema["items"], f"{path}[{k}]")
    if (
        isinstance(value, str)
        and schema.get("type") == ["number", "string", "null"]
        and value not in ("inf", "-inf")
    ):
        out.append(f"{path}: a score is a number, null, 'inf' or '-inf', got {value!r}")
    return out


def validate_metrics(doc: Any, name: str = "metrics.json") -> None:
    """Raise :class:`EvaluationError` naming ``name`` and every place ``doc`` breaks the schema."""
    problems = _errors(doc, METRICS_SCHEMA, "$")
    if problems:
        more = f" (and {len(problems) - 10} more)" if len(problems) > 10 else ""
        raise EvaluationError(
            f"{name}: does not match {FORMAT}: " + "; ".join(problems[:10]) + more
        )


def json_number(x: float | int | np.floating | np.integer | None) -> float | int | str | None:
    """A score as metrics.json writes it: NaN -> null, +-inf -> ``"inf"``/``"-inf"``, else a number."""
    if x is None:
        return None
    if isinstance(x, (int, np.integer)) and not isinstance(x, bool):
        return int(x)
    value = float(x)
    if math.isnan(value):
        return None
    if math.isinf(value):
        return "inf" if value > 0 else "-inf"
    return round(value, 4)


def to_json(value: Any) -> Any:
    """Nested results with numpy values -> plain JSON data (scores by :func:`json_number`)."""
    if isinstance(value, Mapping):
        return {str(k): to_json(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [to_json(v) for v in value]
    if isinstance(value, np.ndarray):
        return to_json(value.tolist())
    if isinstance(value, (float, int, np.floating, np.integer)) and not isinstance(value, bool):
        return json_number(value)
    return value


def from_json_number(x: Any) -> float:
    """Inverse of :func:`json_number` for reading metrics.json: null -> NaN, "inf" -> inf."""
    if x is None:
        return math.nan
    return float(x)


def nanmedian(values: Sequence[float]) -> float:
    """Median ignoring NaN; NaN (no warning) when nothing is left."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        return (
            float(np.nanmedian(np.asarray(values, dtype=np.float64))) if len(values) else math.nan
        )
