"""One track's evaluation (run by ``ray_jobs.evaluate`` once per track, in Ray tasks).

Separation (seed 002 §6). For a track and a class, the reference is the pair
``[instrument, rest]`` made exactly as for training (:func:`sepcore.prepare.pairs.make_pair`:
the class's stems summed, all other usable stems summed, ``mix = instrument + rest``).
The *methods* give estimates ``[instrument_est, rest_est]`` (:func:`estimates`):

* ``model``: the checkpoint through its :class:`sepcore.separate.separator.MaskSeparator`
  (the separator interface the separate job uses). A multi-stem checkpoint (meta ``stems``) separates
  the track's mixture once into all its stems (:func:`separate_stems`); each class of its
  ``targets`` then gets ``[stem, mix - stem]`` as its model estimate. A binary-mask
  model with an α sweep: its stitched masks are computed once per track
  (:func:`soft_alpha_mask`) and give the model row (at the model's own α) and, for the
  target or every class of a multi-stem checkpoint, one estimate per α (:func:`score_alphas`);
* compared and routed rows (``compare``, ``routed``): other separators, each run on the
  track's mixture at its own rate and channels (:mod:`sepcore.evaluate.compare`); a routed
  row's separator is the model of the group a style router picks for the track
  (:mod:`sepcore.evaluate.routed`);
* ``hpss`` (a baseline, for ``drums`` only, unless ``baselines`` is empty): librosa's
  median-filtering HPSS of the mixture with the model's STFT, the percussive part as the
  drums and the mixture minus it as the rest (:func:`sepcore.separate.hpss.hpss_drums`);
* ``irm`` / ``ibm``: the ideal ratio / binary mask with the model's STFT
  (:func:`sepcore.separate.apply.oracle_masks`): upper bounds of any mask method;
* ``mixture``: the mixture as both estimates: the lower bound.

Each is scored by :mod:`sepcore.evaluate.scoring`. Activation models: each track's
predicted and reference activations and their errors; the sequence test plays each
class's loudest solo stretch in turn (:mod:`sepcore.evaluate.activations`).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
from torch import nn

from sepcore.data.classes import CLASSES
from sepcore.evaluate.activations import (
    activation_errors,
    frame_windows,
    leakage_matrix,
    noise_matrix,
    predict_activations,
)
from sepcore.evaluate.config import BUILT_IN, ScoringConfig, alpha_key, method_order
from sepcore.evaluate.document import EvaluationError
from sepcore.evaluate.scoring import score_methods
from sepcore.separate.apply import oracle_masks
from sepcore.separate.hpss import HPSS_CLASS, hpss_drums
from sepcore.separate.separator import MaskSeparator
from sepcore.units import Seconds, seconds_to_samples

#: α values of a sweep whose stems are made and scored together (bounds the memory).
ALPHA_GROUP = 4
#: Level (dBFS) a solo stretch must pass to take part in the sequence test.
AUDIBLE_DBFS = -50.0


def safe_name(track_id: str) -> str:
    """``track_id`` as a file name: runs of other characters become ``_``."""
    return re.sub(r"[^A-Za-z0-9._-]+", "_", track_id).strip("._") or "track"


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
    model_estimate: Mapping[str, np.ndarray] | None = None,
    rows: Mapping[str, Mapping[str, np.ndarray]] | None = None,
    hpss: Mapping[str, Any] | None = None,
) -> dict[str, dict[str, np.ndarray]]:
    """Estimates of every method for the pair ``instrument + rest`` (module docstring).

    ``model`` None leaves out the ``model`` method, unless ``model_estimate``
    (``{"instrument", "rest"}``, made before: a multi-stem separation) gives it. Memory
    of the model pass is bounded by ``block_s`` (:class:`sepcore.separate.separator.MaskSeparator`).
    ``rows``: estimates made before by other separators, ``{row name: {"instrument",
    "rest"}}`` (:func:`sepcore.evaluate.compare.row_estimates`; a Demucs checkpoint's is
    named ``model``), placed after ``model`` and before the oracle rows.
    ``hpss``: the ``hpss`` row's settings (``margin``, ``kernel_size``): the mixture's
    percussive part as the instrument (:func:`sepcore.separate.hpss.hpss_drums`, with
    ``n_fft``, ``hop`` and ``sample_rate``), after the rows; None: no ``hpss`` row.
    Shape: ``(channels, samples)`` each -> ``{method: {"instrument", "rest"}}`` each
    ``(channels, samples)``.
    """
    if instrument.shape != rest.shape or instrument.ndim != 2:
        raise ValueError(
            f"instrument {instrument.shape} and rest {rest.shape} must be equal (channels, samples)"
        )
    if model is not None and model_estimate is not None:
        raise ValueError("give a model or its estimate, not both")
    mix = (instrument + rest).astype(np.float32)
    out: dict[str, dict[str, np.ndarray]] = {}
    if model is not None:
        out["model"] = MaskSeparator(model, sample_rate, n_fft, hop, frames, batch_size).separate(mix, block_s)
    elif model_estimate is not None:
        for key, value in model_estimate.items():
            if value.shape != instrument.shape:
                raise ValueError(f"model estimate '{key}' {value.shape} does not fit the pair {instrument.shape}")
        out["model"] = {"instrument": model_estimate["instrument"], "rest": model_estimate["rest"]}
    for name, est in (rows or {}).items():
        if name in out or name in BUILT_IN[1:]:
            raise ValueError(f"row '{name}' clashes with a built-in method")
        for key, value in est.items():
            if value.shape != instrument.shape:
                raise ValueError(f"row '{name}' estimate '{key}' {value.shape} does not fit the pair {instrument.shape}")
        out[name] = {"instrument": est["instrument"], "rest": est["rest"]}
    if hpss is not None:
        out["hpss"] = hpss_drums(mix, sample_rate, n_fft, hop, float(hpss["margin"]), int(hpss["kernel_size"]))
    out.update(oracle_masks(instrument, rest, n_fft, hop))
    out["mixture"] = {"instrument": mix, "rest": mix}
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
    _, pairs, skipped = track_pairs(track, meta, classes)
    return pairs, skipped


def track_pairs(
    track: Any, meta: Mapping[str, Any], classes: Sequence[str]
) -> tuple[np.ndarray, dict[str, tuple[np.ndarray, np.ndarray]], dict[str, str]]:
    """The track's mixture (every usable stem) and :func:`class_pairs`'s pairs and skip reasons.

    Shape: each signal ``(channels, samples)``.
    """
    pair, pairs, skipped = reference_pairs(track, meta, classes)
    return pair.mix, pairs, skipped


def reference_pairs(
    track: Any, meta: Mapping[str, Any], classes: Sequence[str]
) -> tuple[Any, dict[str, tuple[np.ndarray, np.ndarray]], dict[str, str]]:
    """The track's :class:`sepcore.prepare.pairs.TrackPair` and the pairs and skip reasons
    of :func:`track_pairs`.

    A class key that is no class (a Demucs ``other`` stem's, :func:`sepcore.evaluate.compare.key_classes`)
    gets the pair ``(sum of its classes' stems, every other usable stem)``.
    """
    from sepcore.evaluate.compare import key_classes
    from sepcore.prepare.mixing import instrument_rest
    from sepcore.prepare.pairs import make_pair

    first = next((c for c in classes if c in CLASSES), "other")
    pair = make_pair(track, pair_spec(meta, first))
    assert pair.class_sums is not None and pair.rest is not None
    pairs, skipped = {}, {}
    present = {CLASSES[k] for k in range(len(CLASSES)) if np.any(pair.class_sums[k])}
    for cls in classes:
        group = key_classes(cls)
        if not present & set(group):
            skipped[cls] = f"no usable '{cls}' stem" if cls in CLASSES else f"no usable stem of {', '.join(group)}"
        elif cls == first:
            pairs[cls] = (pair.instrument, pair.rest)
        elif cls in CLASSES:
            inst, rest, _ = instrument_rest(pair.class_sums, CLASSES, cls)
            pairs[cls] = (inst, rest)
        else:
            inside = np.array([c in group for c in CLASSES])
            inst = pair.class_sums[inside].sum(axis=0, dtype=np.float64).astype(np.float32)
            rest = pair.class_sums[~inside].sum(axis=0, dtype=np.float64).astype(np.float32)
            pairs[cls] = (inst, rest)
    return pair, pairs, skipped


def separate_stems(
    model: nn.Module,
    mix: np.ndarray,
    meta: Mapping[str, Any],
    stems: Sequence[str],
    wiener_iterations: int = 0,
    batch_size: int = 8,
    block_s: Seconds = 60.0,
) -> dict[str, np.ndarray]:
    """A multi-source model's stems of ``mix``, once, through the separate job's separator.

    :class:`sepcore.separate.separator.MaskSeparator` with ``stems`` (one name per source)
    and ``wiener_iterations``; the checkpoint's STFT and frames from ``meta``.
    Shape: ``(channels, samples)`` -> ``{stem: (channels, samples)}``.
    """
    f = meta["feature"]
    separator = MaskSeparator(model, int(meta["sample_rate"]), int(f["n_fft"]), int(f["hop"]), int(meta["frames"]),
                              batch_size, stems=list(stems), wiener_iterations=wiener_iterations)  # fmt: skip
    return separator.separate(mix.astype(np.float32), block_s)


def evaluate_separation(
    track: Any,
    meta: Mapping[str, Any],
    spec: ScoringConfig,
    model: nn.Module | None,
    classes: Sequence[str],
    batch_size: int = 8,
    stems: Sequence[str] | None = None,
    wiener_iterations: int = 0,
    rows: Sequence[tuple[Any, Any]] = (),
    alphas: Sequence[float] = (),
    baselines: Mapping[str, Mapping[str, Any]] | None = None,
    routes: Sequence[tuple[Any, Any]] = (),
    separator: Callable[[Any], Any] | None = None,
) -> dict[str, Any]:
    """One track's separation scores for ``classes``.

    One-target checkpoint (``stems`` None): the first class is the model's target, the
    only one with a ``model`` row. Multi-stem checkpoint: ``stems`` are its sources (the
    last, ``other``, is never scored); the mixture is separated once
    (:func:`separate_stems`, when the track holds one of them) and every class among
    ``stems`` gets the ``model`` row ``[stem, mix - stem]``; the others in ``classes``
    oracle and mixture rows only. ``rows``: more separators as ``(row, separator)``
    (:class:`sepcore.evaluate.compare.RowSpec` and its built separator; a Demucs
    checkpoint is the row ``model`` with ``model`` None), each run once on the mixture at
    its own rate and channels and scored for the classes it has
    (:func:`sepcore.evaluate.compare.row_estimates`).
    ``alphas``: the α sweep of a binary-mask model: its probabilistic mask(s) are computed
    once per track (:func:`soft_alpha_mask`) and give both the ``model`` row (at the
    model's own α) and one estimate per α and class (:func:`score_alphas`). One target:
    the first class; a multi-stem checkpoint: every class among ``stems`` (except
    ``other``), each ``[stem, mix - stem]`` as its ``model`` row, from masks thresholded
    at α and made to add up to the mixture as the separation does
    (:func:`sepcore.separate.apply.mask_stems`, with ``wiener_iterations``).
    ``baselines``: ``{name: settings}`` of the baseline rows (:data:`sepcore.evaluate.config.BASELINES`):
    ``hpss`` (``margin``, ``kernel_size``) is scored for ``drums`` (:data:`sepcore.separate.hpss.HPSS_CLASS`)
    when it is among ``classes``, at the checkpoint's STFT and rate.
    ``routes``: routed rows as ``(spec, router)`` (:mod:`sepcore.evaluate.routed`): the router
    picks a group from the track's mixture and that group's separator (``separator(row)``,
    default :func:`sepcore.evaluate.compare.build_separator`) makes the row's estimate, as a
    compare row's; placed after the compare rows.
    Returns ``{"track_id", "seconds", "separate_seconds", "eval_seconds", "classes":
    {class: {method: {source: {"sdr", "sir", "sar"}}}}, "skipped": {class: reason}}``
    (with a sweep also ``"alpha": {class: {alpha_key: {source: {"sdr", "sir", "sar"}}}}``;
    with routed rows ``"routed": {row: {"group", "style"}}``, the choice of each)
    and, under ``"signals"``, the pair and estimates of the first class (for examples).
    """
    import time

    pair, pairs, skipped = reference_pairs(track, meta, classes)
    mix = pair.mix
    sr, f = int(meta["sample_rate"]), meta["feature"]
    out: dict[str, Any] = {"track_id": track.track_id, "seconds": 0.0, "separate_seconds": 0.0,
                           "eval_seconds": 0.0, "classes": {}, "skipped": skipped, "signals": None}  # fmt: skip
    separated: dict[str, np.ndarray] = {}
    scored = set(stems[:-1]) if stems is not None else set()  # ``other`` is no class
    swept = [c for c in pairs if c in scored] if alphas else []
    multi_soft = None
    t_start = time.perf_counter()
    if model is not None and swept:  # the masks once: the model rows and the sweep
        multi_soft = soft_alpha_mask(model, mix, meta, batch_size)
        separated = alpha_stems(multi_soft, multi_soft[3], mix.shape[1], stems, wiener_iterations)
    elif model is not None and scored & set(pairs):
        separated = separate_stems(model, mix, meta, list(stems or ()), wiener_iterations, batch_size)
    by_class, chosen = _row_estimates(rows, track, pair, sr, list(pairs), routes, separator)
    if chosen:
        out["routed"] = chosen
    out["separate_seconds"] += time.perf_counter() - t_start
    for cls, (instrument, rest) in pairs.items():
        t0 = time.perf_counter()
        use_model = model if stems is None and cls == classes[0] else None
        given, soft = None, None
        if cls in scored and cls in separated:
            given = {"instrument": separated[cls], "rest": mix - separated[cls]}
        if use_model is not None and alphas:  # one mask: the model row and the sweep
            soft = soft_alpha_mask(use_model, instrument + rest, meta, batch_size)
            given, use_model = alpha_stems(soft, soft[3], instrument.shape[1]), None
        est = estimates(instrument, rest, int(f["n_fft"]), int(f["hop"]), use_model, sr, int(meta["frames"]),
                        batch_size, model_estimate=given, rows=by_class.get(cls),
                        hpss=(baselines or {}).get("hpss") if cls == HPSS_CLASS else None)  # fmt: skip
        t1 = time.perf_counter()
        out["classes"][cls] = score_methods(instrument, rest, est, sr, spec)
        if soft is not None:
            out["alpha"] = score_alphas({cls: (instrument, rest)}, soft, alphas, sr, spec)
        out["separate_seconds"] += t1 - t0
        out["eval_seconds"] += time.perf_counter() - t1
        out["seconds"] = instrument.shape[1] / sr
        if cls == classes[0]:
            out["signals"] = {"instrument": instrument, "rest": rest, "estimates": est}
    if multi_soft is not None:
        t1 = time.perf_counter()
        out["alpha"] = score_alphas({c: pairs[c] for c in swept}, multi_soft, alphas, sr, spec, mix, stems,
                                    wiener_iterations)  # fmt: skip
        out["eval_seconds"] += time.perf_counter() - t1
    return out


def soft_alpha_mask(model: nn.Module, mix: np.ndarray, meta: Mapping[str, Any],
                    batch_size: int = 8) -> tuple[Any, np.ndarray, np.ndarray, float]:  # fmt: skip
    """A binary-mask model's probabilistic mask(s) of the whole of ``mix``, computed once.

    :func:`sepcore.separate.apply.soft_mask` (the one apply's chunks and stitching) with
    the checkpoint's STFT and frames, and the model's own α. Memory: the masks and the
    spectrogram of the whole track.
    Shape: ``(channels, samples)`` -> ``(stft, spec (channels, bins, frames) complex, mask
    ([sources,] channels or 1, bins, frames), alpha)``.
    """
    from sepcore.separate.apply import binary_threshold, soft_mask

    own = binary_threshold(model)
    if own is None:
        raise ValueError(f"{type(model).__name__} has no confidence threshold (alpha)")
    f = meta["feature"]
    stft, spec, mask = soft_mask(model, mix.astype(np.float32), int(meta["sample_rate"]), int(f["n_fft"]),
                                 int(f["hop"]), int(meta["frames"]), batch_size)  # fmt: skip
    return stft, spec, mask, own


def alpha_stems(soft: tuple[Any, np.ndarray, np.ndarray, float], alpha: float, length: int,
                stems: Sequence[str] | None = None, wiener_iterations: int = 0) -> dict[str, np.ndarray]:  # fmt: skip
    """The stems of :func:`soft_alpha_mask`'s mask(s) thresholded at ``alpha``, as the
    separation makes them (:func:`sepcore.separate.apply.mask_stems`): one target
    (``stems`` None): the target where the mask exceeds ``alpha``, the rest its
    complement; a multi-stem model: one stem per name of ``stems`` from the sources'
    binary masks, made to add up to the mixture (with ``wiener_iterations``, through the
    Wiener filter).
    Shape: -> ``{"instrument", "rest"}`` or ``{stem}``, each ``(channels, length)``."""
    from sepcore.separate.apply import SINGLE_STEMS, mask_stems, threshold_mask

    stft, spec, mask, _ = soft
    names = SINGLE_STEMS if stems is None else tuple(stems)
    return mask_stems(stft, spec, threshold_mask(mask, alpha), length, names, wiener_iterations)


def score_alphas(pairs: Mapping[str, tuple[np.ndarray, np.ndarray]], soft: tuple[Any, np.ndarray, np.ndarray, float],
                 alphas: Sequence[float], sample_rate: int, spec: ScoringConfig, mix: np.ndarray | None = None,
                 stems: Sequence[str] | None = None, wiener_iterations: int = 0) -> dict[str, Any]:  # fmt: skip
    """Scores of the α sweep: ``{class: {alpha_key: {source: {"sdr", "sir", "sar"}}}}``.

    ``pairs``: ``{class: (instrument, rest)}``. One target (``stems`` None): one class,
    its estimates :func:`alpha_stems`'s ``instrument`` and ``rest``. A multi-stem model:
    every class of ``pairs`` (each one of ``stems``) gets ``[stem, mix - stem]`` at each
    α, as its ``model`` row does. The stems of :data:`ALPHA_GROUP` α at a time are made
    from the one mask (each α's binary masks made consistent once, for every class) and
    scored together (:func:`sepcore.evaluate.scoring.score_methods`), so memory stays
    that of ``ALPHA_GROUP`` separations whatever the number of α.
    Shape: ``(channels, samples)`` each.
    """
    if stems is not None and (mix is None or not set(pairs) <= set(stems[:-1])):
        raise ValueError(f"a multi-stem sweep needs the mixture and classes among {list(stems[:-1])}, got "
                         f"{list(pairs)}")  # fmt: skip
    if stems is None and len(pairs) != 1:
        raise ValueError(f"a one-target sweep scores one class, got {list(pairs)}")
    if not pairs:
        return {}
    out: dict[str, Any] = {cls: {} for cls in pairs}
    length = next(iter(pairs.values()))[0].shape[1]
    for k in range(0, len(alphas), ALPHA_GROUP):
        made = {alpha_key(a): alpha_stems(soft, a, length, stems, wiener_iterations) for a in alphas[k : k + ALPHA_GROUP]}
        for cls, (instrument, rest) in pairs.items():
            if stems is None:
                group = made
            else:
                assert mix is not None
                group = {key: {"instrument": m[cls], "rest": mix - m[cls]} for key, m in made.items()}
            out[cls].update(score_methods(instrument, rest, group, sample_rate, spec))
    return out


def _row_estimates(rows: Sequence[tuple[Any, Any]], track: Any, pair: Any, sample_rate: int, keys: Sequence[str],
                   routes: Sequence[tuple[Any, Any]] = (), separator: Callable[[Any], Any] | None = None,
                   ) -> tuple[dict[str, dict[str, dict[str, np.ndarray]]], dict[str, dict[str, str]]]:  # fmt: skip
    """``{class: {row name: estimate}}`` of every row, then routed row, that has one of
    ``keys`` (modules :mod:`sepcore.evaluate.compare`, :mod:`sepcore.evaluate.routed`), and
    the routed rows' choices; each mixture made once per rate and channels."""
    from sepcore.evaluate.compare import build_separator, mixture_at, row_estimates
    from sepcore.evaluate.routed import route_estimates

    mixes = {(sample_rate, pair.mix.shape[0]): pair.mix}

    def mixture(rate: int, channels: int) -> np.ndarray:
        if (rate, channels) not in mixes:
            mixes[rate, channels] = mixture_at(track, pair.excluded, rate, channels)
        return mixes[rate, channels]

    out: dict[str, dict[str, dict[str, np.ndarray]]] = {}
    for row, sep in rows:
        if not set(keys) & set(row.classes):
            continue
        mix_in = mixture(int(sep.sample_rate), row.channels)
        for key, est in row_estimates(sep, row, mix_in, pair.mix, sample_rate, keys).items():
            out.setdefault(key, {})[row.name] = est
    routed, chosen = route_estimates(routes, separator or build_separator, mixture, pair.mix, sample_rate, keys)
    for key, ests in routed.items():
        out.setdefault(key, {}).update(ests)
    return out, chosen


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


def solo_candidates(class_sums: np.ndarray, sample_rate: int, seconds: Seconds) -> dict[str, tuple[int, float]]:
    """``{class: (start, dBFS)}`` of each class's loudest ``seconds`` in a track (classes heard).

    Shape: ``class_sums`` ``(classes, channels, samples)`` over :data:`CLASSES`.
    """
    return {cls: loudest_span(class_sums[k], sample_rate, seconds)
            for k, cls in enumerate(CLASSES) if np.any(class_sums[k])}  # fmt: skip


def choose_solos(results: Sequence[Mapping[str, Any]], tracks: Sequence[Any]) -> list[tuple[str, Any, int]]:
    """``(class, track, start sample)`` of each class's loudest audible solo over ``results``.

    ``results`` are per-track results with ``"candidates"`` (:func:`solo_candidates`);
    classes come in :data:`CLASSES` order; a stretch must be above :data:`AUDIBLE_DBFS`.
    """
    by_id = {t.track_id: t for t in tracks}
    best: dict[str, tuple[float, str, int]] = {}
    for res in results:
        for cls, (start, db) in res.get("candidates", {}).items():
            if db > AUDIBLE_DBFS and (cls not in best or db > best[cls][0]):
                best[cls] = (db, res["track_id"], start)
    return [(cls, by_id[best[cls][1]], best[cls][2]) for cls in CLASSES if cls in best]


def solo_parts(chosen: Sequence[tuple[str, Any, int]], meta: Mapping[str, Any],
               seconds: Seconds) -> list[tuple[str, np.ndarray]]:  # fmt: skip
    """The audio of the ``chosen`` solos, ``seconds`` long each (for :func:`activation_sequence`).

    Shape: each ``(channels, samples)``.
    """
    from sepcore.prepare.pairs import make_pair

    n = seconds_to_samples(seconds, int(meta["sample_rate"]))
    spec = pair_spec(meta, "piano", outputs=("activations",))
    parts = []
    for cls, track, start in chosen:
        sums = make_pair(track, spec).class_sums
        assert sums is not None
        parts.append((cls, np.ascontiguousarray(sums[CLASSES.index(cls)][:, start : start + n])))
    return parts


def describe(res: Mapping[str, Any]) -> str:
    """One line on a track's result: SDR per class and method, or the activations' mean error."""
    if "errors" in res:
        mae, active = res["errors"]["mae"], res["errors"]["active_frames"]
        return "mean |error| " + ", ".join(f"{c} {v:.3f}" for c, v in mae.items() if active[c])
    parts = []
    for cls, scores in res["classes"].items():
        sdr = {m: scores[m]["instrument"]["sdr"] for m in method_order(m for m in scores if m in BUILT_IN)}
        parts.append(f"{cls} SDR " + ", ".join(f"{m} {v:.2f}" for m, v in sdr.items()))
    return "; ".join(parts) or "skipped (" + "; ".join(res["skipped"].values()) + ")"


def load_checked(checkpoint_dir: str) -> dict[str, Any]:
    """The checkpoint's meta, after loading its model once: a bad checkpoint fails early, once
    (:func:`sepcore.evaluate.compare.load_checkpoint_meta`: also ``model_alpha``)."""
    from sepcore.evaluate.compare import load_checkpoint_meta

    return load_checkpoint_meta(checkpoint_dir)
