"""Features of 1-second snippets of a mix (seed 000), from the mix alone.

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
"""

from __future__ import annotations

import functools

import librosa
import numpy as np

from sepcore.classify.config import SnippetSpec
from sepcore.classify.snippets import POWER_FLOOR, cut_windows
from sepcore.prepare import features

#: Windows per feature block: bounds memory for long songs (about 30 MB per block).
BLOCK_WINDOWS = 64



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
    rolloff = freqs[np.argmax(cum >= spec.features.rolloff * cum[:, -1:, :], axis=1)]
    logp = np.log(np.maximum(power, POWER_FLOOR))
    flatness = 10.0 * np.log10(np.exp(logp.mean(axis=1)) / np.maximum(power, POWER_FLOOR).mean(axis=1))
    low = freqs < spec.features.ber_split_hz
    ber = 10.0 * np.log10(np.maximum(power[:, low].sum(axis=1), POWER_FLOOR)
                          / np.maximum(power[:, ~low].sum(axis=1), POWER_FLOOR))  # fmt: skip
    return {"centroid": centroid, "bandwidth": bandwidth, "rolloff": rolloff,
            "flatness": flatness, "ber": ber}  # fmt: skip


def _block_features(windows: np.ndarray, spec: SnippetSpec) -> np.ndarray:
    """Features of a block of mono windows. Shape ``(b, window)`` -> ``(b, features)``."""
    mag = spec.stft()(windows)  # (b, bins, T): the windows ride on the channel axis
    basis = _mel_basis(spec.sample_rate, spec.features.n_fft, spec.features.n_mels, float(spec.features.fmin), float(spec.features.fmax))
    mel_db = features.power_to_db(np.matmul(basis, mag**2))  # (b, mels, T)
    frame_pow = features.frame_power(windows[:, None, :], spec.features.n_fft, spec.features.hop)  # (b, T)
    valid = frame_pow > POWER_FLOOR  # spectral shape over sounding frames only (module docstring)
    mel_mean, mel_std = mel_db.mean(axis=2), mel_db.std(axis=2)
    cols = [mel_mean, mel_std, mel_mean - mel_mean.mean(axis=1, keepdims=True)]
    freqs = librosa.fft_frequencies(sr=spec.sample_rate, n_fft=spec.features.n_fft)
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
