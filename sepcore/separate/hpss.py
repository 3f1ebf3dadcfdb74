"""Harmonic-percussive source separation (HPSS): a drums baseline that needs no training.

librosa's median-filtering HPSS (Fitzgerald 2010; with ``margin``, Driedger et al. 2014):
the magnitude of the complex STFT is median-filtered along time (``kernel_size`` frames:
harmonic, steady partials survive) and along frequency (``kernel_size`` bins: percussive,
broadband onsets survive); soft masks (power 2) from the two filtered spectrograms share
the mixture STFT out between a harmonic part ``H`` and a percussive part ``P``. With
``margin`` 1 the masks add up to one (but where both filtered magnitudes are zero); with
``margin`` > 1 a bin must be ``margin`` times stronger in one filtered spectrogram than in
the other to go to it, so ``H + P`` no longer gives the mixture: the residual
``R = X - H - P`` holds the rest, and ``H + P + R = X`` exactly in the STFT domain.

The STFT is :class:`sepcore.prepare.features.Stft`, the one the oracle rows and the mask
models use. As a drums separator (:func:`hpss_drums`) the percussive part is the drums and
the mixture minus it (harmonic + residual) the rest. Shapes: waveforms ``(channels,
samples)``, spectrograms ``(channels, bins, frames)`` (see :mod:`sepcore`).
"""

from __future__ import annotations

import math

import librosa
import numpy as np
import torch

from sepcore.prepare.features import Stft

#: The class whose baseline HPSS is: its percussive part.
HPSS_CLASS = "drums"
#: Names of the three parts of :func:`hpss_components`.
COMPONENTS = ("harmonic", "percussive", "residual")


def check_hpss(margin: float, kernel_size: int) -> None:
    """ValueError unless ``margin`` is a finite number >= 1 and ``kernel_size`` an odd int >= 3."""
    real = isinstance(margin, (int, float, np.integer, np.floating)) and not isinstance(margin, bool)
    if not real or not math.isfinite(margin) or margin < 1:
        raise ValueError(f"HPSS margin must be a finite number >= 1, got {margin!r}")
    if isinstance(kernel_size, bool) or not isinstance(kernel_size, (int, np.integer)):
        raise ValueError(f"HPSS kernel_size must be an integer, got {kernel_size!r}")
    if kernel_size < 3 or kernel_size % 2 == 0:
        raise ValueError(f"HPSS kernel_size must be odd and at least 3 (a median of that many "
                         f"frames / bins), got {kernel_size}")  # fmt: skip


def _spectra(audio: np.ndarray, sample_rate: int, n_fft: int, hop: int, margin: float, kernel_size: int,
             harmonic: bool = True) -> tuple[Stft, np.ndarray, np.ndarray | None, np.ndarray]:  # fmt: skip
    """The STFT, the mixture STFT ``X`` and its harmonic and percussive parts ``H``, ``P``
    (``H`` None unless ``harmonic``: the drums need only ``P``, and memory is then two
    spectrograms of the whole signal plus the filters' of one channel).

    Shape: ``(channels, samples)`` -> ``(channels, bins, frames)`` complex64 each.
    """
    audio = np.asarray(audio)
    if audio.ndim != 2 or audio.shape[0] < 1 or audio.shape[1] < 1:
        raise ValueError(f"HPSS takes a waveform (channels, samples), got shape {audio.shape}")
    if not np.issubdtype(audio.dtype, np.floating):
        raise ValueError(f"HPSS takes float samples, got {audio.dtype}")
    check_hpss(margin, kernel_size)
    stft = Stft(n_fft=n_fft, hop=hop, sample_rate=sample_rate)
    spec = stft.stft_complex(audio.astype(np.float32, copy=False))
    harm = np.empty_like(spec) if harmonic else None
    perc = np.empty_like(spec)
    for c in range(spec.shape[0]):  # one channel at a time: the filters' memory is one spectrogram's
        h, perc[c] = librosa.decompose.hpss(spec[c], kernel_size=int(kernel_size), margin=float(margin))
        if harm is not None:
            harm[c] = h
    return stft, spec, harm, perc


def hpss_components(
    audio: np.ndarray, sample_rate: int, n_fft: int, hop: int, margin: float = 1.0, kernel_size: int = 31
) -> dict[str, np.ndarray]:
    """The harmonic, percussive and residual parts of ``audio`` (module docstring).

    Each part is its STFT-domain part brought back by :meth:`Stft.istft`; the residual is
    ``X - H - P``, so the three add up to the STFT round trip of ``audio`` (equal to it up to
    float32 rounding). Raises ValueError for a bad shape, ``margin`` (< 1) or ``kernel_size``
    (even or < 3), and for an STFT that :class:`Stft` refuses.
    Shape: ``(channels, samples)`` -> ``{"harmonic", "percussive", "residual"}`` each
    ``(channels, samples)`` float32.
    """
    stft, spec, harmonic, percussive = _spectra(audio, sample_rate, n_fft, hop, margin, kernel_size)
    assert harmonic is not None
    length = audio.shape[1]
    parts = (harmonic, percussive, spec - harmonic - percussive)
    return {name: stft.istft(part, length) for name, part in zip(COMPONENTS, parts, strict=True)}


def hpss_drums(
    audio: np.ndarray, sample_rate: int, n_fft: int, hop: int, margin: float = 1.0, kernel_size: int = 31
) -> dict[str, np.ndarray]:
    """HPSS as a drums separator: the percussive part is the drums, ``audio`` minus it the rest
    (the harmonic part and the residual), so ``instrument + rest == audio``.

    Raises as :func:`hpss_components`. Memory: two complex spectrograms of ``audio``.
    Shape: ``(channels, samples)`` -> ``{"instrument", "rest"}`` each ``(channels, samples)`` float32.
    """
    stft, _, _, percussive = _spectra(audio, sample_rate, n_fft, hop, margin, kernel_size, harmonic=False)
    drums = stft.istft(percussive, audio.shape[1])
    return {"instrument": drums, "rest": (audio - drums).astype(np.float32)}


def _reflect(x: torch.Tensor, half: int, dim: int) -> torch.Tensor:
    """``x`` padded by ``half`` entries on both ends of ``dim`` as scipy's ``mode="reflect"``
    (``d c b a | a b c d | d c b a``, repeated when ``half`` exceeds the axis)."""
    n = x.shape[dim]
    idx = torch.arange(-half, n + half, device=x.device) % (2 * n)
    idx = torch.where(idx >= n, 2 * n - 1 - idx, idx)
    return x.index_select(dim, idx)


def _median(x: torch.Tensor, kernel_size: int, dim: int) -> torch.Tensor:
    """A running median of ``kernel_size`` (odd) entries along ``dim``, same size, reflected ends."""
    padded = _reflect(x, kernel_size // 2, dim)
    return padded.unfold(dim, kernel_size, 1).median(dim=-1).values


def _softmask(x: torch.Tensor, ref: torch.Tensor, split_zeros: bool, power: float = 2.0) -> torch.Tensor:
    """librosa's ``util.softmask``: ``x^p / (x^p + ref^p)``, scaled by their maximum first; where
    both are (near) zero, 0.5 with ``split_zeros``, else 0."""
    z = torch.maximum(x, ref)
    bad = z < torch.finfo(x.dtype).tiny
    z = torch.where(bad, torch.ones_like(z), z)
    m, r = (x / z) ** power, (ref / z) ** power
    fill = torch.full_like(m, 0.5 if split_zeros else 0.0)
    return torch.where(bad, fill, m / torch.where(bad, torch.ones_like(m), m + r))


def percussive_magnitude(mag: torch.Tensor, margin: float = 1.0, kernel_size: int = 31) -> torch.Tensor:
    """The percussive part of a magnitude spectrogram, in torch: what ``librosa.decompose.hpss``
    returns as its percussive part for the same magnitude (median filters of ``kernel_size``
    frames and bins, scipy's reflected ends, power-2 soft mask with ``margin``), differentiable
    and on the magnitude's device. The U-Net's HPSS input channel (:mod:`sepcore.models.unet_gan`).

    Shape: ``(..., bins, frames)`` -> the same; ``mag`` non-negative float.
    """
    check_hpss(margin, kernel_size)
    if mag.ndim < 2:
        raise ValueError(f"HPSS takes a spectrogram (..., bins, frames), got shape {tuple(mag.shape)}")
    harmonic = _median(mag, kernel_size, mag.ndim - 1)  # along time: steady partials
    percussive = _median(mag, kernel_size, mag.ndim - 2)  # along frequency: broadband onsets
    return mag * _softmask(percussive, harmonic * margin, split_zeros=margin == 1)
