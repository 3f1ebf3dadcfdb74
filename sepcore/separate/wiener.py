"""Multichannel Wiener filter (EM) and mixture consistency for several stems.

Our own numpy implementation of the post-filter of Open-Unmix (``filtering.py``) and
norbert, after Nugraha, Liutkus and Vincent, "Multichannel audio source separation
with deep neural networks", IEEE/ACM TASLP 24(9), 2016, and Duong, Vincent and
Gribonval, IEEE TASLP 18(7), 2010.

Notation: ``x(f, t)`` the mixture STFT, a vector over the ``C`` channels; ``y_j(f, t)``
the STFT of stem ``j``, ``J`` stems. Local Gaussian model: ``y_j(f, t) ~ N_c(0, v_j(f, t)
R_j(f))`` with a power spectral density ``v_j`` (a scalar per bin and frame) and a spatial
covariance ``R_j`` (``C x C``, per frequency bin).

1. **Initial estimates** (:func:`wiener` with ``iterations=0``): the soft mask of the
   given magnitudes, ``y_j = mags_j / (eps + sum_k mags_k) * x`` (per channel).
2. **EM iterations**, each:

   * ``v_j(f, t) = mean_c |y_j,c(f, t)|^2``;
   * ``R_j(f) = sum_t y_j(f, t) y_j(f, t)^H / (eps + sum_t v_j(f, t))`` (norbert's
     ``get_local_gaussian_model``: the covariance of ``y_j`` normalised by its power,
     i.e. the frames weighted by ``1 / v_j`` in the mean of ``y_j y_j^H / v_j``,
     with the power-weighted mean taken for stability);
   * mixture covariance ``C_x(f, t) = sum_j v_j(f, t) R_j(f) + sqrt(eps) I``;
   * ``y_j(f, t) = v_j(f, t) R_j(f) C_x(f, t)^-1 x(f, t)`` (the Wiener gain).

   ``C_x^-1`` is closed-form for one and two channels (``1 / c`` and the 2x2 adjugate
   over ``eps + det``), ``numpy.linalg.inv`` above.
3. **Scaling** (Open-Unmix): ``x`` and ``y`` are divided by ``max(1, max|x| / 10)``
   before the iterations and multiplied back after, so that ``eps`` and the
   regularisation have the same weight whatever the level.

Frames are processed in segments of ``segment`` frames (Open-Unmix's
``wiener_win_len``, 300), each with its own ``R_j``: memory is bounded by one segment
(a few tens of MB for 6 stereo stems of 769 bins) beside the output, and the spatial
model may change over a song. Segments lie on the grid of whole multiples of
``segment`` counted from ``offset``, so a block of a longer signal whose first frame is
``offset`` gets the same segments as the whole signal.

:func:`mixture_consistency` then makes the stems add up to the mixture exactly: the
residual ``r = x - sum_j y_j`` is given to the stems in proportion to their power
``|y_j|^2`` (each channel, bin and frame; in equal parts where every stem is silent,
or always with ``mode="equal"``). :func:`consistent_masks` is the same projection on
real masks (``y_j = m_j x``) without forming the stems.

Shapes: magnitudes and masks ``(sources, channels, bins, frames)``, mixture STFT
``(channels, bins, frames)`` complex, stems ``(sources, channels, bins, frames)`` complex.
"""

from __future__ import annotations

from typing import Literal

import numpy as np

#: Frames per segment of the Wiener filter (Open-Unmix's ``wiener_win_len``).
WIENER_SEGMENT = 300
#: Open-Unmix's scale factor: ``x`` is divided by ``max(1, max|x| / SCALE)``.
SCALE = 10.0


def _check(mags: np.ndarray, mix_spec: np.ndarray) -> None:
    if mix_spec.ndim != 3 or mags.ndim != 4 or mags.shape[1:] != mix_spec.shape:
        raise ValueError(
            f"expected mags (sources, channels, bins, frames) and a mixture STFT (channels, "
            f"bins, frames) of the same size, got {mags.shape} and {mix_spec.shape}"
        )


def _inverse(cov: np.ndarray, eps: float) -> np.ndarray:
    """Inverse of Hermitian matrices ``(..., C, C)``; closed-form for ``C`` of 1 and 2."""
    c = cov.shape[-1]
    if c == 1:
        return 1 / (eps + cov)
    if c == 2:
        a, b, cc, d = cov[..., 0, 0], cov[..., 0, 1], cov[..., 1, 0], cov[..., 1, 1]
        inv_det = 1.0 / (eps + a * d - b * cc)
        out = np.empty_like(cov)
        out[..., 0, 0], out[..., 0, 1] = d * inv_det, -b * inv_det
        out[..., 1, 0], out[..., 1, 1] = -cc * inv_det, a * inv_det
        return out
    return np.linalg.inv(cov)


def _em(y: np.ndarray, x: np.ndarray, iterations: int, eps: float) -> np.ndarray:
    """EM iterations on one segment. Shape: y ``(J, C, F, T)``, x ``(C, F, T)`` complex64."""
    channels = x.shape[0]
    reg = np.sqrt(eps) * np.eye(channels, dtype=np.float32)
    for _ in range(iterations):
        v = np.mean(y.real**2 + y.imag**2, axis=1)  # (J, F, T)
        cov = np.einsum("jcft,jdft->jfcd", y, y.conj())  # (J, F, C, C)
        cov /= (np.float32(eps) + v.sum(axis=-1))[..., None, None]
        mix_cov = np.einsum("jft,jfcd->ftcd", v, cov) + reg  # (F, T, C, C)
        z = np.einsum("ftcd,dft->cft", _inverse(mix_cov, eps), x)  # C_x^-1 x
        y = v[:, None] * np.einsum("jfcd,dft->jcft", cov, z)
    return y


def wiener(
    mags: np.ndarray,
    mix_spec: np.ndarray,
    iterations: int = 1,
    eps: float = 1e-10,
    segment: int = WIENER_SEGMENT,
    offset: int = 0,
) -> np.ndarray:
    """Stems from magnitude estimates by the multichannel Wiener filter (module docstring).

    ``iterations == 0`` gives the soft mask of ``mags`` applied to ``mix_spec``. Frames are
    filtered in segments of ``segment`` frames on the grid of ``offset`` (the index of
    frame 0 in a longer signal). The stems do not sum to the mixture exactly: follow
    with :func:`mixture_consistency`.
    Shape: mags ``(sources, channels, bins, frames)`` float, mix_spec ``(channels, bins,
    frames)`` complex -> ``(sources, channels, bins, frames)`` complex64.
    """
    mags, mix_spec = np.asarray(mags), np.asarray(mix_spec)
    _check(mags, mix_spec)
    if iterations < 0 or segment < 1:
        raise ValueError(f"iterations must be >= 0 and segment >= 1, got {iterations}, {segment}")
    out = np.empty(mags.shape, dtype=np.complex64)
    n_frames = mix_spec.shape[-1]
    start = 0
    while start < n_frames:
        stop = min(n_frames, start + segment - (start + offset) % segment)
        x = mix_spec[..., start:stop].astype(np.complex64)
        m = mags[..., start:stop].astype(np.float32)
        y = m / (np.float32(eps) + m.sum(axis=0)) * x
        if iterations > 0:
            scale = max(1.0, float(np.abs(x).max(initial=0.0)) / SCALE)
            y = _em(y / scale, x / scale, iterations, eps) * scale
        out[..., start:stop] = y
        start = stop
    return out


def _shares(power: np.ndarray) -> np.ndarray:
    """Each source's share of ``power`` over the sources axis 0; equal where all are 0."""
    total = power.sum(axis=0)
    silent = total <= 0
    share = power / np.where(silent, 1.0, total)
    share[:, silent] = 1.0 / power.shape[0]
    return share


def mixture_consistency(
    y: np.ndarray, x: np.ndarray, mode: Literal["power", "equal"] = "power"
) -> np.ndarray:
    """Stems ``y`` plus shares of the residual ``x - sum_j y_j``: they then add up to ``x``.

    ``mode="power"``: shares ``|y_j|^2 / sum_k |y_k|^2`` per channel, bin and frame (equal
    where every stem is silent); ``"equal"``: ``1 / sources``.
    Shape: y ``(sources, channels, bins, frames)`` complex, x ``(channels, bins, frames)``
    complex -> like y.
    """
    if y.ndim != 4 or y.shape[1:] != x.shape:
        raise ValueError(f"stems {y.shape} do not fit a mixture {x.shape}")
    residual = x - y.sum(axis=0)
    if mode == "equal":
        return y + residual / y.shape[0]
    return y + _shares(y.real**2 + y.imag**2) * residual


def consistent_masks(masks: np.ndarray, mode: Literal["power", "equal"] = "power") -> np.ndarray:
    """Real masks whose stems ``m_j x`` are :func:`mixture_consistency` of ``masks * x``.

    The residual of masked stems is ``(1 - sum_j m_j) x``, so the projection only moves
    the masks: ``m_j + share_j (1 - sum_k m_k)`` with the shares of ``m_j^2`` (or equal).
    The result sums to 1 over the sources. Shape: ``(sources, channels, bins, frames)``.
    """
    residual = 1.0 - masks.sum(axis=0)
    if mode == "equal":
        return masks + residual / masks.shape[0]
    return masks + _shares(masks**2) * residual
