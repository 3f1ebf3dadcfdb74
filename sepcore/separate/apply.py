"""The one model-agnostic ``apply``: chunked mask prediction, overlap-add, masks and stems.

Batch separation, evaluation and validation all go through this module (STYLE habit 5):

* :func:`predict_mask` cuts a mixture magnitude into chunks of ``frames`` frames with
  50 % overlap, runs a :class:`MaskModel` on them batch by batch and stitches the masks
  back with a Hann-window overlap-add (seed 001 §4.2.2); a model of several sources
  (:func:`source_count`) gives one mask per source;
* :func:`apply_mask` turns a mask into two waveforms with the mixture phase (seed 002
  §5.1): ``instrument = ISTFT(mask * X)`` and ``rest = ISTFT((1 - mask) * X)``;
* :func:`separate` = STFT + :func:`predict_mask` + the stems (:func:`mask_stems`; Stems, below);
  :func:`iter_separate_blocks` / :func:`separate_blocks` do the same on long signals in
  blocks with bounded memory and give the same result as :func:`separate`;
* :func:`oracle_masks` applies the ideal ratio and binary masks through
  :func:`apply_mask` (the upper-bound rows of an evaluation).

Stitching convention (:func:`predict_mask`). The chunk hop is
``hop = round(frames * (1 - overlap))`` frames and the stitching window a *periodic*
Hann window of ``frames`` points (rectangular when ``overlap == 0``). The magnitude is
zero-padded by ``pad = frames - hop`` frames in front, and at the back up to the end
of the last chunk that covers the last frame, so that chunk ``k`` covers frames
``k * hop - pad`` to ``k * hop - pad + frames - 1``. Every real frame, the first and
the last included, is then covered by exactly as many chunks as an interior frame; at
50 % overlap the Hann weights of the two chunks covering a frame sum to exactly 1, so
the normalisation by the summed weights never divides by (nearly) zero and there is
no attenuation at the edges. (The normalisation is still done, with a floor of
``1e-8``, so any overlap gives a weighted mean of the chunk outputs.)

Channels. A model states how many channels it takes by an ``in_channels`` (or
``channels``) attribute (a checkpoint's model always does:
:func:`sepcore.models.checkpoint.load_model`); a model that states none takes the audio's
channels as they are. :func:`separate` (and so the blocks, the ``separate`` job,
evaluation and validation) then follows one rule, and its stems always have the
audio's channels:

* the audio has the model's channel count: the model sees every channel and its mask
  (one channel per audio channel, or one for all) is applied channel by channel; a
  stereo model separates stereo audio into stereo stems;
* any other count: the model sees the mean of the audio's channels (the STFT of the
  mean signal), repeated to its channel count, and the mean of its mask channels is
  applied to every channel of the audio. A mono model on stereo audio: the mask of
  the channel mean on both channels. A stereo model on mono audio: the mono channel
  duplicated, mono stems.

:func:`predict_mask` applies no rule: it needs a magnitude with the model's channels.
The rule is the same for a model of several sources: each source's mask is averaged
over its mask channels in the second case. With the Wiener filter the source
magnitudes are ``mask_j * |X_c|`` for every channel ``c`` of the audio, and the filter
runs on the audio's own (e.g. stereo) STFT, so a mono model on stereo audio still
gets the stereo spatial model.

Stems. Masks are clipped to [0, 1] after stitching. A one-source model: ``instrument
= ISTFT(mask * X)`` and ``rest = ISTFT((1 - mask) * X)`` (:func:`apply_mask`), both
bounded by the mixture. A model of several sources (softmax masks, output ``(batch,
sources, channels, bins, frames)``): one stem per source, named by ``stems``
(:func:`stem_names`; the last is ``other``), ``y_j = m_j * X``; with ``wiener_iterations
> 0`` the estimates ``m_j * |X|`` go through the multichannel Wiener filter
(:func:`sepcore.separate.wiener.wiener`, EM, in segments of 300 frames) instead. In
both cases :func:`sepcore.separate.wiener.mixture_consistency` then gives the residual
``X - sum_j y_j`` to the stems by their power share, so ``sum_j y_j == X``, and each stem
is ``ISTFT(y_j)``. (A one-source model with ``wiener_iterations > 0`` goes the same
way with the two masks ``mask``, ``1 - mask``.) Whatever the masks, the stems add up
to the mixture up to the STFT round trip (float32: about ``1e-6`` of the peak).

Binary masks. A model with a confidence threshold (an ``alpha`` attribute,
:func:`binary_threshold`: the binary-mask DNN of seed 003, :mod:`sepcore.models.mask_dnn`)
has its stitched masks (the probabilistic masks ``M``) thresholded before they are
applied (:func:`threshold_mask`). One source: the instrument's mask is ``M > alpha`` and
the rest's its complement, so the stems add up to the mixture. Several sources: each
source's mask is thresholded, ``M_k > alpha``; a bin that no source claims goes to the
last source, the rest of the mixture (``other``), as the complement does with one
source; the binary masks then take the path of every model of several sources above
(:func:`mask_stems`): without the Wiener filter
:func:`sepcore.separate.wiener.consistent_masks` shares each bin by the masks' power
(``m_k^2``), so a bin that ``n`` sources claim goes to them in equal parts ``1 / n``;
with the Wiener filter the estimates ``m_k * |X|`` feed the filter and
:func:`sepcore.separate.wiener.mixture_consistency`. Either way the stems add up to the
mixture. Separation,
evaluation (also its α sweep, which thresholds one stitched mask at several α) and
validation all get it from here.

Memory of :func:`separate` on a whole signal: the masks (float32) and, with the Wiener
filter, the complex64 stems ``(sources, channels, bins, frames)``, about 2.5 GB for a
10-minute stereo song with 6 stems at n_fft 1536 / hop 384 / 22.05 kHz; the filter's
own working set is one segment. :func:`iter_separate_blocks` bounds all of it by the
block length.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from typing import Protocol, runtime_checkable

import numpy as np
import torch
from torch import nn

from sepcore.prepare.features import Stft, ideal_binary_mask, ideal_ratio_mask
from sepcore.separate.wiener import WIENER_SEGMENT, consistent_masks, mixture_consistency, wiener
from sepcore.units import Seconds, seconds_to_samples

#: Floor of the summed stitching weights (never reached with the documented padding).
WEIGHT_FLOOR = 1e-8
#: The stems of a one-source model.
SINGLE_STEMS = ("instrument", "rest")


@runtime_checkable
class MaskModel(Protocol):
    """Any ``torch.nn.Module`` mapping mixture magnitude chunks to a mask in [0, 1].

    Shape: ``(batch, channels, bins, frames)`` -> ``(batch, channels or 1, bins, frames)``.
    Optional attributes read here: ``in_channels`` (or ``channels``), and
    ``sample_rate``, ``n_fft``, ``hop``, which :func:`separate` checks against its own.
    """

    training: bool

    def __call__(self, mix_mag: torch.Tensor) -> torch.Tensor: ...

    def eval(self) -> nn.Module: ...

    def train(self, mode: bool = True) -> nn.Module: ...


class FixedMaskModel(nn.Module):
    """A model whose mask is the constant ``value`` everywhere (tests and smoke runs).

    Shape: ``(batch, channels, bins, frames)`` -> ``(batch, 1, bins, frames)``.
    """

    def __init__(self, value: float, in_channels: int = 1):
        super().__init__()
        if not 0.0 <= value <= 1.0:
            raise ValueError(f"mask value must be in [0, 1], got {value}")
        self.value = float(value)
        self.in_channels = in_channels

    def forward(self, mix_mag: torch.Tensor) -> torch.Tensor:
        return torch.full_like(mix_mag[:, :1], self.value)


class FixedSourcesModel(nn.Module):
    """A model of several sources whose masks are the constant ``weights`` (normalised to
    sum 1), for tests and smoke runs. ``sources`` is ``len(weights)``.

    Shape: ``(batch, channels, bins, frames)`` -> ``(batch, sources, 1, bins, frames)``.
    """

    def __init__(self, weights: Sequence[float], in_channels: int = 1):
        super().__init__()
        w = np.asarray(weights, dtype=np.float64)
        if w.ndim != 1 or w.size < 2 or (w < 0).any() or w.sum() <= 0:
            raise ValueError(f"weights must be >= 2 non-negative numbers, not all 0, got {weights}")
        self.weights = (w / w.sum()).tolist()
        self.sources = len(self.weights)
        self.in_channels = in_channels

    def forward(self, mix_mag: torch.Tensor) -> torch.Tensor:
        w = torch.tensor(self.weights, dtype=mix_mag.dtype, device=mix_mag.device)
        ones = torch.ones_like(mix_mag[:, None, :1])  # (batch, 1, 1, bins, frames)
        return ones * w.view(1, -1, 1, 1, 1)


# ------------------------------------------------------------------------- predict_mask


def model_channels(model: nn.Module) -> int | None:
    """Channels the model takes (``in_channels`` or ``channels`` attribute), or None."""
    for attr in ("in_channels", "channels"):
        value = getattr(model, attr, None)
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    return None


def source_count(model: nn.Module) -> int:
    """Sources a mask model separates: its ``sources`` attribute (also seen on the model a
    :class:`~sepcore.models.checkpoint.LogMagnitude` wraps, ``model.model``), else 1."""
    for m in (model, getattr(model, "model", None)):
        value = getattr(m, "sources", None)
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    return 1


def chunk_hop(frames: int, overlap: float) -> int:
    """Hop between chunks in frames: ``round(frames * (1 - overlap))``, at least 1."""
    if frames < 1:
        raise ValueError(f"frames must be >= 1, got {frames}")
    if not 0.0 <= overlap < 1.0:
        raise ValueError(f"overlap must be in [0, 1), got {overlap}")
    return max(1, round(frames * (1.0 - overlap)))


def stitch_window(frames: int, overlap: float) -> np.ndarray:
    """Periodic Hann window of ``frames`` points (all ones when ``overlap == 0``), float32."""
    if overlap == 0.0:
        return np.ones(frames, dtype=np.float32)
    n = np.arange(frames)
    return (0.5 - 0.5 * np.cos(2.0 * np.pi * n / frames)).astype(np.float32)


def _chunk_layout(n_frames: int, frames: int, hop: int) -> tuple[int, int]:
    """``(pad, n_chunks)``: front padding and number of chunks (module docstring)."""
    pad = frames - hop
    return pad, (pad + n_frames - 1) // hop + 1


def _model_device_dtype(model: nn.Module) -> tuple[torch.device, torch.dtype]:
    for p in model.parameters():
        if p.is_floating_point():
            return p.device, p.dtype
    return torch.device("cpu"), torch.float32


def _cut(mag: np.ndarray, start: int, frames: int) -> np.ndarray:
    """Frames ``start .. start + frames - 1`` of ``mag``, zeros outside. Shape ``(c, b, frames)``."""
    out = np.zeros(mag.shape[:2] + (frames,), dtype=np.float32)
    lo, hi = max(start, 0), min(start + frames, mag.shape[2])
    if hi > lo:
        out[:, :, lo - start : hi - start] = mag[:, :, lo:hi]
    return out


def _run_model(
    model: nn.Module, batch: np.ndarray, device: torch.device, dtype: torch.dtype
) -> np.ndarray:
    """Model output for a batch ``(n, c, bins, frames)``, float32 numpy, shape-checked.

    Shape: ``(n, c, bins, frames)`` -> ``(n, 1 or c, bins, frames)`` or, from a model of
    several sources, ``(n, sources, 1 or c, bins, frames)``.
    """
    x = torch.from_numpy(batch).to(device=device, dtype=dtype)
    mask = model(x)
    n, _, bins, frames = batch.shape
    if mask.ndim not in (4, 5) or mask.shape[0] != n or tuple(mask.shape[-2:]) != (bins, frames):
        raise ValueError(
            f"model returned a mask of shape {tuple(mask.shape)} for input {tuple(batch.shape)}"
        )
    if mask.shape[-3] not in (1, batch.shape[1]):
        raise ValueError(f"model returned {mask.shape[-3]} mask channels for {batch.shape[1]}")
    sources = source_count(model)
    if (mask.ndim == 5) != (sources > 1) or (mask.ndim == 5 and mask.shape[1] != sources):
        raise ValueError(
            f"model of {sources} source(s) returned a mask of shape {tuple(mask.shape)}"
        )
    out = mask.float().cpu().numpy()
    if not np.isfinite(out).all():
        raise RuntimeError("model returned a mask with NaN or Inf values")
    return out


def _check_mag(mag: np.ndarray, in_channels: int | None) -> None:
    """Validate a magnitude for a model that takes ``in_channels`` (None: any)."""
    if mag.ndim != 3:
        raise ValueError(f"expected a magnitude (channels, bins, frames), got shape {mag.shape}")
    if in_channels is not None and mag.shape[0] != in_channels:
        raise ValueError(
            f"model takes {in_channels} channels, the magnitude has {mag.shape[0]}: "
            "separate() lays the audio out for the model (module docstring, Channels)"
        )


def predict_mask(
    model: nn.Module,
    mag: np.ndarray,
    frames: int = 64,
    batch_size: int = 8,
    device: str | torch.device | None = None,
    overlap: float = 0.5,
    clip: bool = True,
) -> np.ndarray:
    """Mask of a whole mixture magnitude from a chunk model, stitched by Hann overlap-add.

    Chunks, padding and stitching are described in the module docstring. The model runs
    in eval mode under ``torch.inference_mode()`` on ``device`` (default: where its
    parameters are; the model is moved there otherwise) and its training mode is
    restored afterwards. Memory: one batch of ``batch_size`` chunks at a time, added
    into the output as it comes; nothing holds all chunks at once. ``mag`` must have
    the channels the model takes (:func:`model_channels`; any when it states none).
    A model of several sources (:func:`source_count`, 5-D output) gives one mask per
    source; the stitched masks of a softmax still sum to 1 over the sources.
    Shape: ``(channels, bins, n_frames)`` -> ``(channels, bins, n_frames)``, or
    ``(sources, channels, bins, n_frames)`` for a model of several sources; float32.
    """
    _check_mag(mag, model_channels(model))
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    channels, bins, n_frames = mag.shape
    hop = chunk_hop(frames, overlap)
    window = stitch_window(frames, overlap)
    sources = source_count(model)
    lead = (sources,) if sources > 1 else ()
    out = np.zeros((*lead, channels, bins, n_frames), dtype=np.float32)
    if n_frames == 0:
        return out
    pad, n_chunks = _chunk_layout(n_frames, frames, hop)
    weights = np.zeros(n_frames, dtype=np.float64)
    for k in range(n_chunks):  # summed window per frame: one cheap 1-D pass
        lo, hi = max(k * hop - pad, 0), min(k * hop - pad + frames, n_frames)
        weights[lo:hi] += window[lo - (k * hop - pad) : hi - (k * hop - pad)]

    model_device, dtype = _model_device_dtype(model)
    target = torch.device(device) if device is not None else model_device
    if target != model_device:
        model.to(target)
    was_training = model.training
    model.eval()
    try:
        with torch.inference_mode():
            for first in range(0, n_chunks, batch_size):
                group = range(first, min(first + batch_size, n_chunks))
                _accumulate(model, mag, out, window, group, frames, hop, pad, target, dtype)
    finally:
        model.train(was_training)
    out /= np.maximum(weights, WEIGHT_FLOOR).astype(np.float32)
    return np.clip(out, 0.0, 1.0, out=out) if clip else out


def _accumulate(
    model: nn.Module,
    mag: np.ndarray,
    out: np.ndarray,
    window: np.ndarray,
    group: range,
    frames: int,
    hop: int,
    pad: int,
    device: torch.device,
    dtype: torch.dtype,
) -> None:
    """Run one batch of chunks (indices ``group``) and add the windowed masks into ``out``."""
    cuts = [_cut(mag, k * hop - pad, frames) for k in group]
    masks = _run_model(model, np.stack(cuts), device, dtype) * window
    n_frames = out.shape[-1]
    for k, mask in zip(group, masks, strict=True):
        start = k * hop - pad
        lo, hi = max(start, 0), min(start + frames, n_frames)
        out[..., lo:hi] += mask[..., lo - start : hi - start]  # ([s,] 1 or c, bins, f) broadcasts


# ---------------------------------------------------------------------------- separate


def apply_mask(
    stft: Stft, spec: np.ndarray, mask: np.ndarray, length: int
) -> dict[str, np.ndarray]:
    """Masked and inverse-masked mixture, with the mixture phase (seed 002 §5.1).

    ``instrument = ISTFT(mask * spec)``, ``rest = ISTFT((1 - mask) * spec)``, both of
    exactly ``length`` samples. ``mask`` broadcasts against ``spec``.
    Shape: spec ``(channels, bins, frames)`` complex, mask ``(channels or 1, bins,
    frames)`` -> ``{"instrument", "rest"}`` each ``(channels, length)``, float32.
    """
    if mask.shape[1:] != spec.shape[1:] or mask.shape[0] not in (1, spec.shape[0]):
        raise ValueError(f"mask of shape {mask.shape} does not fit a spectrogram {spec.shape}")
    mask = mask.astype(np.float32, copy=False)
    return {
        "instrument": stft.istft(spec * mask, length),
        "rest": stft.istft(spec * (1.0 - mask), length),
    }


def _check_model_params(model: nn.Module, sample_rate: int, n_fft: int, hop: int) -> None:
    """STYLE habit 2: a model that states its rate, FFT or hop must match the call."""
    given = {"sample_rate": sample_rate, "n_fft": n_fft, "hop": hop}
    for key, value in given.items():
        stated = getattr(model, key, None)
        if isinstance(stated, int) and stated != value:
            raise ValueError(f"model was made for {key}={stated}, separation asked {value}")


def _model_input(
    stft: Stft, spec: np.ndarray, audio: np.ndarray, in_channels: int | None
) -> tuple[np.ndarray, bool]:
    """The magnitude the model sees, and whether its mask channels are averaged into one.

    The channel rule of the module docstring. Shape: spec ``(channels, bins, frames)``,
    audio ``(channels, samples)`` -> ``(in_channels, bins, frames)``.
    """
    channels = audio.shape[0]
    if in_channels is None or in_channels == channels:
        return np.sqrt(spec.real**2 + spec.imag**2), False
    if channels > 1:
        spec = stft.stft_complex(audio.mean(axis=0, keepdims=True, dtype=np.float32))
    mag = np.abs(spec).astype(np.float32)
    return np.repeat(mag, in_channels, axis=0), True


def stem_names(model: nn.Module, stems: Sequence[str] | None = None) -> tuple[str, ...]:
    """Names of the stems :func:`separate` returns for ``model``.

    A one-source model: ``("instrument", "rest")`` (``stems`` must be None or exactly
    that). A model of several sources: ``stems``, one name per source, all different
    (the last is the rest of the mixture, ``"other"`` by convention).
    """
    sources = source_count(model)
    if sources == 1:
        if stems is not None and tuple(stems) != SINGLE_STEMS:
            raise ValueError(f"a one-source model separates {SINGLE_STEMS}; stems {list(stems)} "
                             "are for a model of several sources")  # fmt: skip
        return SINGLE_STEMS
    if stems is None or len(stems) != sources or len(set(stems)) != sources:
        raise ValueError(f"the model separates {sources} sources: stems must name each once, "
                         f"got {None if stems is None else list(stems)}")  # fmt: skip
    return tuple(stems)


def separate(
    model: nn.Module,
    audio: np.ndarray,
    sample_rate: int,
    n_fft: int,
    hop: int,
    frames: int,
    batch_size: int = 8,
    device: str | torch.device | None = None,
    overlap: float = 0.5,
    stems: Sequence[str] | None = None,
    wiener_iterations: int = 0,
) -> dict[str, np.ndarray]:
    """Separate a mixture into stems with a mask model.

    STFT (:class:`sepcore.prepare.features.Stft`), :func:`predict_mask` on its magnitude,
    the masks applied with the mixture phase (module docstring, Stems): a one-source
    model gives ``instrument`` and ``rest`` (:func:`apply_mask`), a model of several
    sources one stem per name of ``stems`` (:func:`stem_names`); ``wiener_iterations > 0``
    refines the stems with the multichannel Wiener filter
    (:func:`sepcore.separate.wiener.wiener`). The stems add up to ``audio`` up to the STFT
    round trip. Channels (module docstring): audio with the model's channel count
    (:func:`model_channels`) is separated as it is, so a stereo model gives stereo stems
    of stereo audio; otherwise the model sees the mean of the channels, repeated to its
    channel count, and the mean of its mask channels is applied to every channel: a mono
    model on stereo audio applies the mask of the channel mean to both channels, a
    stereo model on mono audio sees the channel twice. The stems always have the
    audio's channels.
    Shape: ``(channels, samples)`` -> ``{stem: (channels, samples)}``.
    """
    return _separate(model, audio, sample_rate, n_fft, hop, frames, batch_size, device, overlap,
                     stems, wiener_iterations, 0)  # fmt: skip


def _separate(
    model: nn.Module,
    audio: np.ndarray,
    sample_rate: int,
    n_fft: int,
    hop: int,
    frames: int,
    batch_size: int,
    device: str | torch.device | None,
    overlap: float,
    stems: Sequence[str] | None,
    wiener_iterations: int,
    frame_offset: int,
) -> dict[str, np.ndarray]:
    """:func:`separate` of audio whose frame 0 is frame ``frame_offset`` of a longer signal
    (the grid of the Wiener filter's segments)."""
    audio = np.asarray(audio)
    if audio.ndim != 2 or audio.shape[1] == 0:
        raise ValueError(f"expected a waveform (channels, samples), got shape {audio.shape}")
    if wiener_iterations < 0:
        raise ValueError(f"wiener_iterations must be >= 0, got {wiener_iterations}")
    names = stem_names(model, stems)
    stft, spec, mask = soft_mask(model, audio, sample_rate, n_fft, hop, frames, batch_size, device, overlap)
    alpha = binary_threshold(model)
    if alpha is not None:
        mask = threshold_mask(mask, alpha)
    return mask_stems(stft, spec, mask, audio.shape[1], names, wiener_iterations, frame_offset)


def mask_stems(
    stft: Stft,
    spec: np.ndarray,
    mask: np.ndarray,
    length: int,
    names: Sequence[str] = SINGLE_STEMS,
    wiener_iterations: int = 0,
    frame_offset: int = 0,
) -> dict[str, np.ndarray]:
    """The stems of stitched (maybe thresholded) masks applied to the mixture ``spec``
    (module docstring: Stems; Binary masks): they add up to the mixture.

    One source (a 3-D ``mask``): :func:`apply_mask`'s ``instrument`` and ``rest``, or with
    ``wiener_iterations > 0`` the masks ``mask``, ``1 - mask`` through the filter. Several
    sources: :func:`~sepcore.separate.wiener.consistent_masks`, or the Wiener filter on
    the grid of ``frame_offset`` (the index of frame 0 in a longer signal), one stem per
    name of ``names`` (:func:`stem_names`).
    Shape: spec ``(channels, bins, frames)`` complex, mask ``([sources,] channels or 1,
    bins, frames)`` -> ``{name: (channels, length)}``.
    """
    if mask.ndim == 3:  # one source
        if wiener_iterations == 0:
            return apply_mask(stft, spec, mask, length)
        mask = np.stack([mask, 1.0 - mask])
    if len(names) != mask.shape[0]:
        raise ValueError(f"{mask.shape[0]} masks for {len(names)} stem names {list(names)}")
    if wiener_iterations == 0:
        masks = consistent_masks(mask)
        return {name: stft.istft(spec * masks[j], length) for j, name in enumerate(names)}
    y = _wiener_stems(mask, spec, wiener_iterations, frame_offset)
    return {name: stft.istft(y[j], length) for j, name in enumerate(names)}


def soft_mask(
    model: nn.Module,
    audio: np.ndarray,
    sample_rate: int,
    n_fft: int,
    hop: int,
    frames: int,
    batch_size: int = 8,
    device: str | torch.device | None = None,
    overlap: float = 0.5,
) -> tuple[Stft, np.ndarray, np.ndarray]:
    """The STFT, the mixture spectrogram and the model's stitched mask of ``audio``, before
    any threshold (module docstring: Channels; Binary masks).

    :func:`separate` applies the mask (thresholded for a model with a
    :func:`binary_threshold`); the evaluation's α sweep computes the mask once here and
    thresholds it at every α (:func:`threshold_mask`, :func:`mask_stems`).
    Shape: ``(channels, samples)`` -> the :class:`~sepcore.prepare.features.Stft`, spec
    ``(channels, bins, frames)`` complex, mask ``([sources,] channels or 1, bins, frames)``.
    """
    _check_model_params(model, sample_rate, n_fft, hop)
    stft = Stft(n_fft=n_fft, hop=hop, sample_rate=sample_rate)
    spec = stft.stft_complex(audio)
    mag, shared = _model_input(stft, spec, audio, model_channels(model))
    mask = predict_mask(model, mag, frames, batch_size, device, overlap)
    if shared:
        mask = mask.mean(axis=-3, keepdims=True)
    return stft, spec, mask


def binary_threshold(model: nn.Module) -> float | None:
    """The confidence threshold α of a binary-mask model (its ``alpha`` attribute, also seen
    on the model a :class:`~sepcore.models.checkpoint.LogMagnitude` wraps), else None.

    A model of one source or of several may have one (module docstring, Binary masks).
    """
    for m in (model, getattr(model, "model", None)):
        value = getattr(m, "alpha", None)
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
    return None


def threshold_mask(mask: np.ndarray, alpha: float) -> np.ndarray:
    """Seed 003's binary mask: 1 where the probabilistic mask exceeds ``alpha``, else 0.

    One source (3-D): the rest's mask is the complement (:func:`apply_mask`). Several
    sources (4-D, the last one the rest of the mixture, ``other``): each source's mask on
    its own (``M_k > alpha``), and a bin that no source claims is the rest's (1 in the
    last mask), as the complement is with one source; :func:`mask_stems` then shares the
    bins several sources claim (module docstring, Binary masks). Either way the stems add
    up to the mixture. A higher ``alpha`` never adds a bin to a target's mask.
    Shape: ``([sources,] channels, bins, frames)`` -> the same, float32 0/1.
    """
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must be in [0, 1], got {alpha}")
    out = (mask > alpha).astype(np.float32)
    if out.ndim == 4:  # several sources: unclaimed bins are the rest's
        out[-1][out.sum(axis=0) == 0] = 1.0
    return out


def _wiener_stems(masks: np.ndarray, spec: np.ndarray, iterations: int, offset: int) -> np.ndarray:
    """Wiener-filtered stems of ``masks * |spec|``, made consistent, segment by segment.

    Working memory beside the output is one segment of
    :data:`~sepcore.separate.wiener.WIENER_SEGMENT` frames.
    Shape: masks ``(sources, channels or 1, bins, frames)``, spec ``(channels, bins,
    frames)`` complex -> ``(sources, channels, bins, frames)`` complex64.
    """
    out = np.empty((masks.shape[0], *spec.shape), dtype=np.complex64)
    n_frames, start = spec.shape[-1], 0
    while start < n_frames:
        stop = min(n_frames, start + WIENER_SEGMENT - (start + offset) % WIENER_SEGMENT)
        x = spec[..., start:stop]
        mags = masks[..., start:stop] * np.abs(x)
        y = wiener(mags, x, iterations, segment=WIENER_SEGMENT, offset=offset + start)
        out[..., start:stop] = mixture_consistency(y, x)
        start = stop
    return out


def block_margin(
    n_fft: int, hop: int, frames: int, overlap: float = 0.5, wiener_iterations: int = 0
) -> int:
    """Context in samples on each side of a block for :func:`iter_separate_blocks`.

    The mask of a frame depends on the chunks covering it (``frames - 1`` frames each
    way), each frame's STFT on ``n_fft // 2`` samples each way, and each output sample
    on the frames whose windows cover it: ``frames + 2 * ceil(n_fft / (2 * hop)) + 2``
    frames; with the Wiener filter, one more segment
    (:data:`~sepcore.separate.wiener.WIENER_SEGMENT` frames), whose spatial model
    depends on all its frames. Rounded up to a whole chunk hop so that block grids
    line up.
    """
    chop = chunk_hop(frames, overlap)
    margin_frames = frames + 2 * math.ceil(n_fft / (2 * hop)) + 2
    if wiener_iterations > 0:
        margin_frames += WIENER_SEGMENT
    return math.ceil(margin_frames / chop) * chop * hop


def iter_separate_blocks(
    model: nn.Module,
    audio: np.ndarray,
    sample_rate: int,
    n_fft: int,
    hop: int,
    frames: int,
    block_seconds: Seconds = 60.0,
    batch_size: int = 8,
    device: str | torch.device | None = None,
    overlap: float = 0.5,
    stems: Sequence[str] | None = None,
    wiener_iterations: int = 0,
) -> Iterator[tuple[int, dict[str, np.ndarray]]]:
    """:func:`separate` block by block: yields ``(start_sample, {stem: block})``.

    Blocks are ``block_seconds`` long (rounded up to a whole chunk hop of
    ``hop * chunk_hop(frames, overlap)`` samples); each is separated with
    :func:`block_margin` samples of context on both sides, which are then discarded.
    Blocks start on the chunk grid of the whole signal, so every kept sample sees the
    same STFT frames, the same chunks and the same Wiener segments as in
    :func:`separate` on the whole signal: the results agree to float32 rounding.
    Memory is bounded by the block length, not by the signal's: ``audio`` may be a
    ``np.memmap``. The stems are those of :func:`separate` (:func:`stem_names`).
    Shape: ``(channels, samples)`` -> blocks ``(channels, block_samples)``.
    """
    if audio.ndim != 2 or audio.shape[1] == 0:
        raise ValueError(f"expected a waveform (channels, samples), got shape {audio.shape}")
    grid = chunk_hop(frames, overlap) * hop
    block = max(grid, math.ceil(seconds_to_samples(block_seconds, sample_rate) / grid) * grid)
    margin = block_margin(n_fft, hop, frames, overlap, wiener_iterations)
    n = audio.shape[1]
    for start in range(0, n, block):
        stop = min(start + block, n)
        lo, hi = max(start - margin, 0), min(stop + margin, n)
        seg = _separate(
            model,
            np.asarray(audio[:, lo:hi]),
            sample_rate,
            n_fft,
            hop,
            frames,
            batch_size,
            device,
            overlap,
            stems,
            wiener_iterations,
            lo // hop,
        )
        yield start, {k: np.ascontiguousarray(v[:, start - lo : stop - lo]) for k, v in seg.items()}


def separate_blocks(
    model: nn.Module,
    audio: np.ndarray,
    sample_rate: int,
    n_fft: int,
    hop: int,
    frames: int,
    block_seconds: Seconds = 60.0,
    batch_size: int = 8,
    device: str | torch.device | None = None,
    overlap: float = 0.5,
    stems: Sequence[str] | None = None,
    wiener_iterations: int = 0,
) -> dict[str, np.ndarray]:
    """:func:`iter_separate_blocks` gathered into whole arrays (same result as :func:`separate`).

    Working memory is bounded by the block length; the outputs are whole-length.
    Shape: ``(channels, samples)`` -> ``{stem: (channels, samples)}``.
    """
    out = {k: np.zeros(audio.shape, dtype=np.float32) for k in stem_names(model, stems)}
    blocks = iter_separate_blocks(
        model,
        audio,
        sample_rate,
        n_fft,
        hop,
        frames,
        block_seconds,
        batch_size,
        device,
        overlap,
        stems,
        wiener_iterations,
    )
    for start, parts in blocks:
        for key, value in parts.items():
            out[key][:, start : start + value.shape[1]] = value
    return out


def oracle_masks(
    instrument: np.ndarray, rest: np.ndarray, n_fft: int, hop: int
) -> dict[str, dict[str, np.ndarray]]:
    """Oracle separations of ``instrument + rest`` (the evaluation's upper bounds).

    ``"irm"``: :func:`sepcore.prepare.features.ideal_ratio_mask` (``clip(|I| / |mix|, 0, 1)``);
    ``"ibm"``: :func:`sepcore.prepare.features.ideal_binary_mask` (``|I| > |R|``). Both are
    applied to the mixture STFT through :func:`apply_mask`, as :func:`separate` does.
    Shape: ``(channels, samples)`` each -> ``{"irm" | "ibm": {"instrument", "rest"}}``.
    """
    if instrument.shape != rest.shape or instrument.ndim != 2:
        raise ValueError(
            f"instrument and rest must be equal (channels, samples), got "
            f"{instrument.shape} and {rest.shape}"
        )
    stft = Stft(n_fft=n_fft, hop=hop)
    mix_spec = stft.stft_complex(instrument + rest)
    inst_mag, rest_mag = stft(instrument), stft(rest)
    masks = {
        "irm": ideal_ratio_mask(inst_mag, np.abs(mix_spec)),
        "ibm": ideal_binary_mask(inst_mag, rest_mag),
    }
    length = instrument.shape[1]
    return {name: apply_mask(stft, mix_spec, mask, length) for name, mask in masks.items()}
