"""The one model-agnostic ``apply``: chunked mask prediction, overlap-add, mask and rest.

Batch separation, evaluation and validation all go through this module (STYLE habit 5):

* :func:`predict_mask` cuts a mixture magnitude into chunks of ``frames`` frames with
  50 % overlap, runs a :class:`MaskModel` on them batch by batch and stitches the masks
  back with a Hann-window overlap-add (seed 001 §4.2.2);
* :func:`apply_mask` turns a mask into two waveforms with the mixture phase (seed 002
  §5.1): ``instrument = ISTFT(mask * X)`` and ``rest = ISTFT((1 - mask) * X)``;
* :func:`separate` = STFT + :func:`predict_mask` + :func:`apply_mask`;
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

Masks are clipped to [0, 1] after stitching, so ``instrument`` and ``rest`` are both
bounded by the mixture. Whatever the mask, ``instrument + rest`` reproduces the
mixture up to the STFT round trip (float32: about ``1e-6`` of the peak).
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from typing import Protocol, runtime_checkable

import numpy as np
import torch
from torch import nn

from sepcore.prepare.features import Stft, ideal_binary_mask, ideal_ratio_mask
from sepcore.units import Seconds, seconds_to_samples

#: Floor of the summed stitching weights (never reached with the documented padding).
WEIGHT_FLOOR = 1e-8


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


# ------------------------------------------------------------------------- predict_mask


def model_channels(model: nn.Module) -> int | None:
    """Channels the model takes (``in_channels`` or ``channels`` attribute), or None."""
    for attr in ("in_channels", "channels"):
        value = getattr(model, attr, None)
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    return None


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
    """Model output for a batch ``(n, c, bins, frames)``, float32 numpy, shape-checked."""
    x = torch.from_numpy(batch).to(device=device, dtype=dtype)
    mask = model(x)
    n, _, bins, frames = batch.shape
    if mask.ndim != 4 or mask.shape[0] != n or tuple(mask.shape[2:]) != (bins, frames):
        raise ValueError(
            f"model returned a mask of shape {tuple(mask.shape)} for input {tuple(batch.shape)}"
        )
    if mask.shape[1] not in (1, batch.shape[1]):
        raise ValueError(f"model returned {mask.shape[1]} mask channels for {batch.shape[1]}")
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
    Shape: ``(channels, bins, n_frames)`` -> ``(channels, bins, n_frames)``, float32.
    """
    _check_mag(mag, model_channels(model))
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    channels, bins, n_frames = mag.shape
    hop = chunk_hop(frames, overlap)
    window = stitch_window(frames, overlap)
    out = np.zeros((channels, bins, n_frames), dtype=np.float32)
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
    n_frames = out.shape[2]
    for k, mask in zip(group, masks, strict=True):
        start = k * hop - pad
        lo, hi = max(start, 0), min(start + frames, n_frames)
        out[:, :, lo:hi] += mask[:, :, lo - start : hi - start]  # (1 or c, bins, f) broadcasts


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
) -> dict[str, np.ndarray]:
    """Separate a mixture into ``instrument`` and ``rest`` with a mask model.

    STFT (:class:`sepcore.prepare.features.Stft`), :func:`predict_mask` on its magnitude,
    :func:`apply_mask` with the mixture phase. ``instrument + rest`` equals ``audio``
    up to the STFT round trip. Channels (module docstring): audio with the model's
    channel count (:func:`model_channels`) is separated as it is, so a stereo model
    gives stereo stems of stereo audio; otherwise the model sees the mean of the
    channels, repeated to its channel count, and the mean of its mask channels is
    applied to every channel: a mono model on stereo audio applies the mask of the
    channel mean to both channels, a stereo model on mono audio sees the channel
    twice. The stems always have the audio's channels.
    Shape: ``(channels, samples)`` -> ``{"instrument", "rest"}`` each ``(channels, samples)``.
    """
    audio = np.asarray(audio)
    if audio.ndim != 2 or audio.shape[1] == 0:
        raise ValueError(f"expected a waveform (channels, samples), got shape {audio.shape}")
    _check_model_params(model, sample_rate, n_fft, hop)
    stft = Stft(n_fft=n_fft, hop=hop, sample_rate=sample_rate)
    spec = stft.stft_complex(audio)
    mag, shared = _model_input(stft, spec, audio, model_channels(model))
    mask = predict_mask(model, mag, frames, batch_size, device, overlap)
    if shared:
        mask = mask.mean(axis=0, keepdims=True)
    return apply_mask(stft, spec, mask, audio.shape[1])


def block_margin(n_fft: int, hop: int, frames: int, overlap: float = 0.5) -> int:
    """Context in samples on each side of a block for :func:`iter_separate_blocks`.

    The mask of a frame depends on the chunks covering it (``frames - 1`` frames each
    way), each frame's STFT on ``n_fft // 2`` samples each way, and each output sample
    on the frames whose windows cover it: ``frames + 2 * ceil(n_fft / (2 * hop)) + 2``
    frames, rounded up to a whole chunk hop so that block grids line up.
    """
    chop = chunk_hop(frames, overlap)
    margin_frames = frames + 2 * math.ceil(n_fft / (2 * hop)) + 2
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
) -> Iterator[tuple[int, dict[str, np.ndarray]]]:
    """:func:`separate` block by block: yields ``(start_sample, {"instrument", "rest"})``.

    Blocks are ``block_seconds`` long (rounded up to a whole chunk hop of
    ``hop * chunk_hop(frames, overlap)`` samples); each is separated with
    :func:`block_margin` samples of context on both sides, which are then discarded.
    Blocks start on the chunk grid of the whole signal, so every kept sample sees the
    same STFT frames and the same chunks as in :func:`separate` on the whole signal:
    the results agree to float32 rounding. Memory is bounded by the block length, not
    by the signal's: ``audio`` may be a ``np.memmap``.
    Shape: ``(channels, samples)`` -> blocks ``(channels, block_samples)``.
    """
    if audio.ndim != 2 or audio.shape[1] == 0:
        raise ValueError(f"expected a waveform (channels, samples), got shape {audio.shape}")
    grid = chunk_hop(frames, overlap) * hop
    block = max(grid, math.ceil(seconds_to_samples(block_seconds, sample_rate) / grid) * grid)
    margin = block_margin(n_fft, hop, frames, overlap)
    n = audio.shape[1]
    for start in range(0, n, block):
        stop = min(start + block, n)
        lo, hi = max(start - margin, 0), min(stop + margin, n)
        seg = separate(
            model,
            np.asarray(audio[:, lo:hi]),
            sample_rate,
            n_fft,
            hop,
            frames,
            batch_size,
            device,
            overlap,
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
) -> dict[str, np.ndarray]:
    """:func:`iter_separate_blocks` gathered into whole arrays (same result as :func:`separate`).

    Working memory is bounded by the block length; the two outputs are whole-length.
    Shape: ``(channels, samples)`` -> ``{"instrument", "rest"}`` each ``(channels, samples)``.
    """
    out = {k: np.zeros(audio.shape, dtype=np.float32) for k in ("instrument", "rest")}
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
