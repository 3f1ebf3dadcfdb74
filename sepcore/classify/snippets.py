"""Instrument presence on 1-second snippets of the mix (seed 000, "Classifying Instruments").

The plain steps of the ``classify`` job; ``ray_jobs.classify`` runs them in Ray Data
actors and Ray Train, the tests run them directly. Nothing here imports Ray.

**Snippets.** Windows of ``window_s`` seconds every ``hop_s`` seconds (default 1 s
and 1 s) of the mono mix at ``sample_rate``, starting at 0. For training only whole
windows are used; :func:`predict` also labels the last, partial second (zero-padded).

**Labels** (one per class and window): a class is *playing* in a window when the RMS
of the sum of its stems over the window is at least ``threshold_db`` (default -20 dB)
relative to the RMS of the mix (the sum of all stems) over the same window, and above
``floor_dbfs`` (default -60 dBFS) in absolute terms. The relative rule follows the
ear: a part 20 dB under the mix is masked by it; the floor keeps near-silent
stretches (fade tails, reverb) from counting when the whole mix is quiet. A silent
window has no class playing.

**Features** of a window come from the window's mix samples only (never the stems),
computed on an STFT with ``n_fft`` / ``hop`` (Hann, centred frames, zero padding at
the window's edges) and summarised over the window's frames:

* ``logmel_mean_NN`` / ``logmel_std_NN``: mean and standard deviation of each of the
  ``n_mels`` log-mel bands (dB re full scale, as :class:`sepcore.prepare.features.LogMel`);
* ``logmel_shape_NN``: the band means minus their average over bands (the spectral
  shape, independent of the window's level);
* ``centroid_*`` (Hz), ``bandwidth_*`` (Hz), ``rolloff_*`` (Hz, ``rolloff`` share of
  the magnitude), ``flatness_*`` (dB): librosa's spectral descriptors on magnitudes;
* ``ber_*``: band energy ratio, power below ``ber_split_hz`` over power above, in dB
  (seed 000's "how dominant low frequencies are");
* ``rms_db_mean`` / ``rms_db_std`` / ``rms_db_max``: frame RMS in dBFS;
* ``flux_mean`` / ``flux_std``: positive log-mel change between frames (onsets);
* ``zcr``: zero-crossing rate of the window's waveform.

Which frames each summary uses (a frame is silent when its power is at most
:data:`POWER_FLOOR`):

* Over non-silent frames only: ``centroid_*``, ``bandwidth_*``, ``rolloff_*``,
  ``flatness_*``, ``ber_*``. These describe the spectrum's shape, which silence does
  not have: a silent frame would read as a 0 Hz centroid and a flat 0 dB spectrum and
  drag the window's mean towards values no instrument makes. A window without a
  sounding frame gives NaN there (LightGBM treats NaN as missing).
* Over all frames of the window: ``logmel_*``, ``rms_db_*``, ``flux_*`` (and ``zcr``
  over all samples). These are levels and changes, which silence has (the -100 dB
  floor, no flux): how much of the window is quiet is evidence of whether a part plays
  in it, as the labels are the RMS over the whole window. A silent window gives
  -100 dB levels, zero spread and zero flux.

**Models**: one LightGBM binary booster per class (:class:`Classifier`), saved as
``<class>.txt`` plus ``classifier.json`` (written last: the folder's commit marker).
**ROC** curves and AUC are computed here (:func:`roc_curve`, :func:`roc_auc`).
**Activation CNN comparison**: :func:`activation_window_scores` runs an activation
checkpoint of the train job over a mix and pools its frame activations to windows.

Shapes: snippets ``(windows,)``; features ``(windows, features)``; labels
``(windows, classes)`` in :data:`sepcore.data.classes.CLASSES` order unless stated.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import hashlib
import io
import json
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import librosa
import numpy as np

from sepcore.data.classes import CLASSES
from sepcore.errors import SepError
from sepcore.io import storage
from sepcore.io.audio import Audio, read_audio, resample, to_channels
from sepcore.prepare import features
from sepcore.prepare.mixing import assign_splits
from sepcore.units import Decibels, Seconds, seconds_to_samples

#: Seed 000's classes and its ROC AUCs on Slakh (their data, not ours).
DEFAULT_CLASSES = ("piano", "guitar", "bass", "drums", "strings")
SEED000_AUC = {"guitar": 0.85, "piano": 0.80, "bass": 0.93, "drums": 0.96, "strings": 0.90}
CLASSIFIER_FILE = "classifier.json"
#: Below this frame power (-100 dB re full scale) a frame counts as silent.
POWER_FLOOR = features.POWER_FLOOR
#: Windows per feature block: bounds memory for long songs (about 30 MB per block).
BLOCK_WINDOWS = 64

DEFAULT_LGB_PARAMS: dict[str, Any] = {
    "objective": "binary", "metric": "binary_logloss", "learning_rate": 0.05, "num_leaves": 15,
    "min_data_in_leaf": 20, "feature_fraction": 0.8, "bagging_fraction": 0.8,
    "bagging_freq": 1, "lambda_l2": 1.0, "verbose": -1, "seed": 0, "deterministic": True,
    "force_col_wise": True,
}  # fmt: skip


class ClassifyError(SepError):
    """A track, model folder or input cannot be used for classification."""

    def __init__(self, uri: str, problem: str):
        self.uri = uri
        self.problem = problem
        super().__init__(f"{uri}: {problem}")


@dataclass(frozen=True)
class SnippetSpec:
    """Everything that defines snippets, labels and features (plain, picklable)."""

    sample_rate: int = 22050
    window_s: Seconds = 1.0
    hop_s: Seconds = 1.0
    threshold_db: Decibels = -20.0
    floor_dbfs: Decibels = -60.0
    n_fft: int = 2048
    hop: int = 512
    n_mels: int = 64
    fmin: float = 27.5
    fmax: float = 11025.0
    ber_split_hz: float = 2000.0
    rolloff: float = 0.85

    def __post_init__(self) -> None:
        if self.window_s <= 0 or self.hop_s <= 0:
            raise ValueError(f"window_s and hop_s must be positive, got {self.window_s}, {self.hop_s}")
        if self.window < self.n_fft:
            raise ValueError(f"a window of {self.window} samples is shorter than n_fft {self.n_fft}")
        if not 0 < self.ber_split_hz < self.sample_rate / 2:
            raise ValueError(f"ber_split_hz must lie in (0, {self.sample_rate / 2}), got {self.ber_split_hz}")
        if not 0 < self.rolloff < 1:
            raise ValueError(f"rolloff must lie in (0, 1), got {self.rolloff}")
        self.stft()  # validates n_fft and hop
        features.make_feature("logmel", **self.logmel_params())  # validates the mel range

    @property
    def window(self) -> int:
        """Window length in samples."""
        return seconds_to_samples(self.window_s, self.sample_rate)

    @property
    def hop_samples(self) -> int:
        return max(1, seconds_to_samples(self.hop_s, self.sample_rate))

    def stft(self) -> features.FeatureExtractor:
        return features.make_feature("stft", n_fft=self.n_fft, hop=self.hop, sample_rate=self.sample_rate)

    def logmel_params(self) -> dict[str, Any]:
        return {"sample_rate": self.sample_rate, "n_fft": self.n_fft, "hop": self.hop,
                "n_mels": self.n_mels, "fmin": self.fmin, "fmax": self.fmax}  # fmt: skip

    def feature_names(self) -> list[str]:
        bands = [f"{i:02d}" for i in range(self.n_mels)]
        names = [f"logmel_{stat}_{b}" for stat in ("mean", "std", "shape") for b in bands]
        for name in ("centroid", "bandwidth", "rolloff", "flatness", "ber"):
            names += [f"{name}_mean", f"{name}_std"]
        return names + ["rms_db_mean", "rms_db_std", "rms_db_max", "flux_mean", "flux_std", "zcr"]

    def digest(self) -> str:
        """Short hash of the spec: names the folder of snippets made with it."""
        text = json.dumps(dataclasses.asdict(self), sort_keys=True)
        return hashlib.sha256(text.encode()).hexdigest()[:12]


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
    playing = (cls_db - mix_db[None, :] >= spec.threshold_db) & (cls_db > spec.floor_dbfs)
    return playing.T.astype(np.uint8)


# ---------------------------------------------------------------- features


@functools.lru_cache(maxsize=8)
def _mel_basis(sample_rate: int, n_fft: int, n_mels: int, fmin: float, fmax: float) -> np.ndarray:
    return librosa.filters.mel(sr=sample_rate, n_fft=n_fft, n_mels=n_mels, fmin=fmin,
                               fmax=min(fmax, sample_rate / 2)).astype(np.float32)  # fmt: skip


def _masked_stats(q: np.ndarray, valid: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean and std over frames where ``valid``; NaN where no frame is. ``(b, T)`` -> 2 x ``(b,)``."""
    count = valid.sum(axis=1)
    safe = np.where(valid, q, 0.0)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean = safe.sum(axis=1) / count
        var = np.where(valid, (q - mean[:, None]) ** 2, 0.0).sum(axis=1) / count
    return mean, np.sqrt(var)


def _spectral(mag: np.ndarray, freqs: np.ndarray, spec: SnippetSpec) -> dict[str, np.ndarray]:
    """Per-frame descriptors of magnitudes ``(b, bins, T)``: each ``(b, T)``."""
    power = mag.astype(np.float64) ** 2
    msum = np.maximum(mag.sum(axis=1), 1e-12)
    f = freqs[None, :, None]
    centroid = (mag * f).sum(axis=1) / msum
    bandwidth = np.sqrt((mag * (f - centroid[:, None, :]) ** 2).sum(axis=1) / msum)
    cum = np.cumsum(mag, axis=1)
    rolloff = freqs[np.argmax(cum >= spec.rolloff * cum[:, -1:, :], axis=1)]
    logp = np.log(np.maximum(power, POWER_FLOOR))
    flatness = 10.0 * np.log10(np.exp(logp.mean(axis=1)) / np.maximum(power, POWER_FLOOR).mean(axis=1))
    low = freqs < spec.ber_split_hz
    ber = 10.0 * np.log10(np.maximum(power[:, low].sum(axis=1), POWER_FLOOR)
                          / np.maximum(power[:, ~low].sum(axis=1), POWER_FLOOR))  # fmt: skip
    return {"centroid": centroid, "bandwidth": bandwidth, "rolloff": rolloff,
            "flatness": flatness, "ber": ber}  # fmt: skip


def _block_features(windows: np.ndarray, spec: SnippetSpec) -> np.ndarray:
    """Features of a block of mono windows. Shape ``(b, window)`` -> ``(b, features)``."""
    mag = spec.stft()(windows)  # (b, bins, T): the windows ride on the channel axis
    basis = _mel_basis(spec.sample_rate, spec.n_fft, spec.n_mels, float(spec.fmin), float(spec.fmax))
    mel_db = features.power_to_db(np.matmul(basis, mag**2))  # (b, mels, T)
    frame_pow = features.frame_power(windows[:, None, :], spec.n_fft, spec.hop)  # (b, T)
    valid = frame_pow > POWER_FLOOR  # spectral shape over sounding frames only (module docstring)
    mel_mean, mel_std = mel_db.mean(axis=2), mel_db.std(axis=2)
    cols = [mel_mean, mel_std, mel_mean - mel_mean.mean(axis=1, keepdims=True)]
    freqs = librosa.fft_frequencies(sr=spec.sample_rate, n_fft=spec.n_fft)
    for q in _spectral(mag, freqs, spec).values():
        cols += [s[:, None] for s in _masked_stats(q, valid)]
    rms_db = 10.0 * np.log10(np.maximum(frame_pow, POWER_FLOOR))
    flux = np.maximum(np.diff(mel_db, axis=2), 0.0).mean(axis=1)  # (b, T-1)
    cols += [rms_db.mean(axis=1)[:, None], rms_db.std(axis=1)[:, None], rms_db.max(axis=1)[:, None],
             flux.mean(axis=1)[:, None], flux.std(axis=1)[:, None]]  # fmt: skip
    signs = np.signbit(windows)
    cols.append((signs[:, 1:] != signs[:, :-1]).mean(axis=1)[:, None])
    return np.concatenate(cols, axis=1).astype(np.float32)


def snippet_features(mix: np.ndarray, sample_rate: int, starts: np.ndarray, spec: SnippetSpec) -> np.ndarray:
    """Features of the windows of a mix (module docstring), from the mix alone.

    ``sample_rate`` must be ``spec.sample_rate`` (resample first); channels are averaged.
    Shape: ``(channels, samples)`` -> ``(windows, len(spec.feature_names()))``, float32.
    """
    if sample_rate != spec.sample_rate:
        raise ValueError(f"mix at {sample_rate} Hz, features need {spec.sample_rate} Hz: resample first")
    if mix.ndim != 2:
        raise ValueError(f"expected a waveform (channels, samples), got shape {mix.shape}")
    mono = np.asarray(mix, dtype=np.float32).mean(axis=0)
    out = np.zeros((len(starts), len(spec.feature_names())), dtype=np.float32)
    for first in range(0, len(starts), BLOCK_WINDOWS):
        block = starts[first : first + BLOCK_WINDOWS]
        out[first : first + len(block)] = _block_features(cut_windows(mono, block, spec.window), spec)
    return out


# ---------------------------------------------------------------- one track


@dataclass
class TrackSnippets:
    """The snippets of one track: start times, features, labels of every class."""

    track_id: str
    starts_s: np.ndarray  # (windows,)
    features: np.ndarray  # (windows, features)
    labels: np.ndarray  # (windows, len(CLASSES)), uint8
    extra: dict[str, np.ndarray] = field(default_factory=dict)  # e.g. activation CNN scores

    def columns(self, feature_names: Sequence[str]) -> dict[str, Any]:
        """Flat columns: ``track_id``, ``start_s``, one per feature, ``label_<class>``, extras."""
        n = len(self.starts_s)
        cols: dict[str, Any] = {"track_id": [self.track_id] * n, "start_s": self.starts_s.astype(np.float64)}
        cols.update({name: self.features[:, i] for i, name in enumerate(feature_names)})
        cols.update({f"label_{c}": self.labels[:, i] for i, c in enumerate(CLASSES)})
        cols.update(self.extra)
        return cols

    def to_parquet(self, feature_names: Sequence[str]) -> bytes:
        import pyarrow as pa
        import pyarrow.parquet as pq

        buf = io.BytesIO()
        pq.write_table(pa.table(self.columns(feature_names)), buf, compression="snappy")
        return buf.getvalue()


def load_mix_and_classes(track: Any, sample_rate: int) -> tuple[np.ndarray, np.ndarray]:
    """Mono mix and per-class stem sums of a :class:`~sepcore.data.sources.SourceTrack`.

    The mix is the track's mix file when it has one (what a new song will look like),
    else the sum of its stems; it is cut or zero-padded to the stems' length.
    Shape: mix ``(1, samples)``, class sums ``(len(CLASSES), 1, samples)``.
    Raises :class:`ClassifyError` for a track without stems, :class:`AudioError` for
    a file that cannot be decoded.
    """
    from sepcore.data.sources import load_track_stems
    from sepcore.prepare.pairs import class_sums

    if not track.stems:
        raise ClassifyError(track.uri, "track has no stems: no labels can be made")
    stems, records = load_track_stems(track, sample_rate, 1)
    sums = class_sums(stems, [r.inst_class for r in records])
    if track.mix_uri is None:
        return sums.sum(axis=0), sums
    mix = to_channels(resample(read_audio(track.mix_uri), sample_rate), 1).samples
    n = sums.shape[-1]
    out = np.zeros((1, n), dtype=np.float32)
    out[:, : min(n, mix.shape[1])] = mix[:, :n]
    return out, sums


def track_snippets(track: Any, spec: SnippetSpec) -> tuple[TrackSnippets, np.ndarray]:
    """Snippets of one track (whole windows) and its mono mix ``(1, samples)``.

    Labels come from the stems, features from the mix only.
    """
    mix, sums = load_mix_and_classes(track, spec.sample_rate)
    starts = window_starts(mix.shape[-1], spec.window, spec.hop_samples)
    labels = snippet_labels(sums, starts, spec)
    feats = snippet_features(mix, spec.sample_rate, starts, spec)
    return TrackSnippets(track.track_id, starts / spec.sample_rate, feats, labels), mix


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


# ---------------------------------------------------------------- ROC


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


# ---------------------------------------------------------------- LightGBM


def lgb_params(overrides: Mapping[str, Any] | None = None, threads: int = 1) -> dict[str, Any]:
    return {**DEFAULT_LGB_PARAMS, "num_threads": threads, **(overrides or {})}


def train_binary(x: np.ndarray, y: np.ndarray, params: Mapping[str, Any], rounds: int = 300,
                 x_val: np.ndarray | None = None, y_val: np.ndarray | None = None,
                 early_stopping: int | None = 30, feature_names: Sequence[str] | None = None,
                 check: bool = True) -> Any:  # fmt: skip
    """One LightGBM binary booster; early stopping on the validation metric (``params["metric"]``,
    default log loss) when both labels occur there.

    Shape: ``x`` ``(rows, features)``, ``y`` ``(rows,)``. With ``check`` raises
    ValueError unless both labels occur in ``y`` (data-parallel workers skip the check:
    their share may hold one label while the whole does not). Returns a
    ``lightgbm.Booster`` cut to its best iteration.
    """
    import lightgbm as lgb

    y = np.asarray(y).astype(np.float32)
    if check and (not len(y) or y.min() == y.max()):
        raise ValueError(f"training labels are all {int(y[0]) if len(y) else '-'}: nothing to learn")
    names: list[str] | Literal["auto"] = list(feature_names) if feature_names is not None else "auto"
    train_set = lgb.Dataset(x, label=y, feature_name=names, free_raw_data=True)
    callbacks: list[Callable[..., Any]] = []
    valid = []
    if x_val is not None and y_val is not None and len(np.unique(y_val)) == 2:
        valid = [lgb.Dataset(x_val, label=np.asarray(y_val, np.float32), reference=train_set)]
        if early_stopping:
            callbacks.append(lgb.early_stopping(early_stopping, verbose=False))
    booster = lgb.train(dict(params), train_set, num_boost_round=rounds, valid_sets=valid, callbacks=callbacks)
    if booster.best_iteration and booster.best_iteration < booster.current_iteration():
        booster = lgb.Booster(model_str=booster.model_to_string(num_iteration=booster.best_iteration))
    return booster


@contextlib.contextmanager
def lgb_network(machines: str, local_listen_port: int, num_machines: int,
                time_out: int = 120) -> Iterator[dict[str, Any]]:  # fmt: skip
    """LightGBM's data-parallel network, set up once for several boosters in this thread.

    ``lgb.train`` with ``machines`` among its parameters sets the network up and frees it
    with each booster, and the next booster then fails to bind the same port again
    (measured with two Ray Train workers). Here the network is set up once, as
    ``Booster.set_network`` does, and freed on exit; the parameters yielded (data
    parallel, pre-partitioned, ``num_machines``) go into every ``lgb.train`` inside.
    """
    import ctypes

    from lightgbm.basic import _LIB, _c_str, _safe_call

    _safe_call(_LIB.LGBM_NetworkInit(_c_str(machines), ctypes.c_int(local_listen_port),
                                     ctypes.c_int(time_out), ctypes.c_int(num_machines)))  # fmt: skip
    try:
        yield {"tree_learner": "data_parallel", "pre_partition": True, "num_machines": num_machines}
    finally:
        _safe_call(_LIB.LGBM_NetworkFree())


def load_booster(text: str, uri: str) -> Any:
    import lightgbm as lgb

    try:
        return lgb.Booster(model_str=text)
    except Exception as exc:  # LightGBMError: malformed model text
        raise ClassifyError(uri, f"not a LightGBM model ({exc})") from exc


@dataclass
class Classifier:
    """One LightGBM booster per class plus what prediction needs (spec, names, thresholds)."""

    spec: SnippetSpec
    classes: list[str]
    boosters: dict[str, Any]  # class -> lightgbm.Booster
    thresholds: dict[str, float]
    feature_names: list[str]
    info: dict[str, Any] = field(default_factory=dict)

    def predict_proba(self, x: np.ndarray) -> np.ndarray:
        """Probability that each class plays. Shape ``(rows, features)`` -> ``(rows, classes)``."""
        x = np.asarray(x, dtype=np.float32)
        if x.ndim != 2 or x.shape[1] != len(self.feature_names):
            raise ValueError(f"expected features (rows, {len(self.feature_names)}), got shape {x.shape}")
        out = np.full((len(x), len(self.classes)), np.nan, dtype=np.float64)
        for i, c in enumerate(self.classes):
            if c in self.boosters and len(x):
                out[:, i] = self.boosters[c].predict(x)
        return out

    def save(self, directory: str) -> None:
        """``<class>.txt`` per booster, then ``classifier.json`` (last: the commit marker)."""
        files = {}
        for c, booster in self.boosters.items():
            text = booster.model_to_string()
            storage.write_text(storage.join(directory, f"{c}.txt"), text)
            files[c] = {"file": f"{c}.txt", "sha256": hashlib.sha256(text.encode()).hexdigest()}
        meta = {"spec": dataclasses.asdict(self.spec), "classes": self.classes, "models": files,
                "thresholds": self.thresholds, "feature_names": self.feature_names, "info": self.info}  # fmt: skip
        storage.write_text(storage.join(directory, CLASSIFIER_FILE), json.dumps(meta, indent=1))

    @classmethod
    def load(cls, directory: str) -> Classifier:
        """Load a folder written by :meth:`save`; raises :class:`ClassifyError` naming the file."""
        directory = storage.normalize_uri(directory)
        uri = storage.join(directory, CLASSIFIER_FILE)
        if not storage.exists(uri):
            raise ClassifyError(directory, f"no {CLASSIFIER_FILE}: not a (complete) classifier folder")
        try:
            meta = json.loads(storage.read_text(uri))
            spec = SnippetSpec(**meta["spec"])
        except (json.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
            raise ClassifyError(uri, f"malformed ({exc})") from exc
        boosters = {}
        for c, entry in meta["models"].items():
            model_uri = storage.join(directory, entry["file"])
            text = storage.read_text(model_uri)
            if hashlib.sha256(text.encode()).hexdigest() != entry["sha256"]:
                raise ClassifyError(model_uri, f"does not match {CLASSIFIER_FILE} (partial write?)")
            boosters[c] = load_booster(text, model_uri)
        return cls(spec, list(meta["classes"]), boosters, dict(meta["thresholds"]),
                   list(meta["feature_names"]), dict(meta.get("info", {})))  # fmt: skip


# ---------------------------------------------------------------- prediction


@dataclass
class SnippetPrediction:
    """Per-window presence of each class in a song."""

    classes: list[str]
    starts_s: np.ndarray  # (windows,)
    window_s: Seconds
    probabilities: np.ndarray  # (windows, classes)
    labels: np.ndarray  # (windows, classes), bool: probability >= the class's threshold

    def rows(self) -> list[dict[str, Any]]:
        """One dict per window: ``start_s``, ``end_s``, ``<class>`` probability, ``playing`` classes."""
        out = []
        for i, start in enumerate(self.starts_s):
            row: dict[str, Any] = {"start_s": round(float(start), 3), "end_s": round(float(start) + self.window_s, 3)}
            row.update({c: round(float(p), 4) for c, p in zip(self.classes, self.probabilities[i], strict=True)})
            row["playing"] = [c for c, on in zip(self.classes, self.labels[i], strict=True) if on]
            out.append(row)
        return out


def predict(model_dir: str | Classifier, audio: np.ndarray | Audio, sample_rate: int | None = None) -> SnippetPrediction:
    """Label every window (every second by default) of a new song with the classes playing.

    ``model_dir``: a classifier folder (the classify job's ``<output>/model``) or a
    loaded :class:`Classifier`. ``audio``: ``(channels, samples)`` or ``(samples,)``
    at ``sample_rate``, or an :class:`~sepcore.io.audio.Audio`; it is resampled to the
    model's rate and averaged to mono. The last partial window is zero-padded, so the
    whole song is covered.
    """
    model = model_dir if isinstance(model_dir, Classifier) else Classifier.load(model_dir)
    if isinstance(audio, Audio):
        sig = audio
    else:
        if sample_rate is None:
            raise ValueError("sample_rate is required with a plain array")
        x = np.asarray(audio, dtype=np.float32)
        sig = Audio(x[None, :] if x.ndim == 1 else x, int(sample_rate))
    spec = model.spec
    mono = to_channels(resample(sig, spec.sample_rate), 1).samples
    starts = window_starts(mono.shape[-1], spec.window, spec.hop_samples, pad_last=True)
    probs = model.predict_proba(snippet_features(mono, spec.sample_rate, starts, spec))
    thr = np.array([model.thresholds.get(c, 0.5) for c in model.classes])
    return SnippetPrediction(list(model.classes), starts / spec.sample_rate, spec.window_s, probs, probs >= thr)


# ---------------------------------------------------------------- activation CNN comparison


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
