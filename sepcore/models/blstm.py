"""Bidirectional-LSTM mask separator after Open-Unmix (``openunmix/model.py``).

Per frame: the lowest ``max_bin`` bins of every channel, optionally normalised by a
learnable per-bin offset and scale, go through a linear encoder (channels * max_bin ->
hidden, no bias) with normalisation and tanh; a ``layers``-deep bidirectional LSTM
(hidden / 2 units per direction) runs over the frames; the encoder output and the
LSTM output are concatenated (Open-Unmix's skip connection) and decoded by two linear
layers (2 * hidden -> hidden with normalisation and ReLU, hidden -> sources * channels *
n_bins with normalisation) into masks: with ``sources == 1`` a sigmoid mask in (0, 1)
of shape ``(batch, channels, bins, frames)``; with ``sources > 1`` one mask per source,
``(batch, sources, channels, bins, frames)``, a softmax over the sources axis (the
masks of a bin sum to 1, so the masked stems add up to the mixture).

``max_bin`` (Open-Unmix's bandwidth) limits only what the network *sees*: the decoder
predicts the mask for **all** ``n_bins`` bins, as Open-Unmix's ``nb_output_bins``
does, so the bins above ``max_bin`` get a mask inferred from the lower band rather
than a fixed 1.0 (which would leak the whole mixture into the target up there).

Differences from Open-Unmix: a sigmoid mask instead of a ReLU gain (so the rest is
``1 - mask``), or one model for all sources with a softmax where Open-Unmix trains one
model per target; the decoder's normalisation replaces Open-Unmix's separate output scale
and mean (both are per-feature affine maps); ``norm="layer"`` is offered because batch
norm cannot train on a single frame of a single example.

The input offset and scale start at 0 and 1; :meth:`BLSTM.set_input_stats` sets them
from the training set's per-bin mean and standard deviation, as Open-Unmix initialises
its input scaler.
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import nn

Norm = Literal["batch", "layer"]


def make_norm(kind: Norm, features: int) -> nn.Module:
    """Normalisation over the feature axis of ``(n, features)``."""
    if kind == "batch":
        return nn.BatchNorm1d(features)
    if kind == "layer":
        return nn.LayerNorm(features)
    raise ValueError(f"norm must be 'batch' or 'layer', got {kind!r}")


class BLSTM(nn.Module):
    """Open-Unmix-like BLSTM mask separator, see the module docstring.

    Args:
        n_bins: frequency bins of the input spectrogram (e.g. 769 for n_fft 1536).
        channels: audio channels (1 mono, 2 stereo); one mask per channel.
        hidden: width of the encoder, decoder and of the LSTM (hidden / 2 per direction).
        layers: LSTM layers.
        dropout: dropout between LSTM layers (Open-Unmix uses 0.4).
        max_bin: bins that enter the network (default all).
        norm: ``"batch"`` (Open-Unmix) or ``"layer"``.
        input_norm: learnable per-bin offset (init 0) and scale (init 1) on the input.
        sources: masks predicted; 1: one sigmoid mask (target; the rest is ``1 - mask``),
            more: a softmax over ``sources`` masks, see the module docstring.
    """

    def __init__(
        self,
        n_bins: int,
        channels: int = 1,
        hidden: int = 256,
        layers: int = 3,
        dropout: float = 0.0,
        max_bin: int | None = None,
        norm: Norm = "batch",
        input_norm: bool = True,
        sources: int = 1,
    ):
        super().__init__()
        max_bin = n_bins if max_bin is None else max_bin
        if not 1 <= max_bin <= n_bins:
            raise ValueError(f"max_bin must be in [1, n_bins={n_bins}], got {max_bin}")
        if hidden < 2 or hidden % 2 or layers < 1 or channels < 1 or sources < 1:
            raise ValueError(
                f"hidden must be even and >= 2, layers, channels and sources >= 1; got "
                f"hidden={hidden}, layers={layers}, channels={channels}, sources={sources}"
            )
        self.config = dict(
            n_bins=n_bins,
            channels=channels,
            hidden=hidden,
            layers=layers,
            dropout=dropout,
            max_bin=max_bin,
            norm=norm,
            input_norm=input_norm,
            sources=sources,
        )
        self.n_bins, self.channels, self.max_bin, self.hidden = n_bins, channels, max_bin, hidden
        self.sources = sources
        self.input_mean: nn.Parameter | None = None
        self.input_scale: nn.Parameter | None = None
        if input_norm:
            self.input_mean = nn.Parameter(torch.zeros(max_bin))
            self.input_scale = nn.Parameter(torch.ones(max_bin))
        self.encoder = nn.Linear(channels * max_bin, hidden, bias=False)
        self.encoder_norm = make_norm(norm, hidden)
        self.lstm = nn.LSTM(
            hidden,
            hidden // 2,
            num_layers=layers,
            bidirectional=True,
            batch_first=True,
            dropout=dropout if layers > 1 else 0.0,
        )
        self.decoder1 = nn.Linear(2 * hidden, hidden, bias=False)
        self.decoder1_norm = make_norm(norm, hidden)
        self.decoder2 = nn.Linear(hidden, sources * channels * n_bins, bias=False)
        self.decoder2_norm = make_norm(norm, sources * channels * n_bins)

    def set_input_stats(self, mean: torch.Tensor, std: torch.Tensor) -> None:
        """Set the input offset to ``-mean`` and the scale to ``1 / std`` (Open-Unmix's init).

        ``mean`` and ``std`` are per-bin statistics of what :meth:`forward` receives (so
        of ``log1p(magnitude)`` behind :class:`~sepcore.models.checkpoint.LogMagnitude`)
        over a training set; a normalised input then has zero mean and unit deviation
        per bin. Only the lowest ``max_bin`` bins are kept; ``std`` is clamped to
        ``>= 1e-4`` (silent bins). Both stay learnable.

        Shape: ``mean``, ``std`` ``(n_bins,)`` or ``(channels, n_bins)`` (averaged over
        channels: one offset and scale per bin is shared by every channel).

        Raises ValueError for a model built with ``input_norm=False`` (it has no
        offset or scale to set) and for statistics of the wrong shape.
        """
        if self.input_mean is None or self.input_scale is None:
            raise ValueError("BLSTM built with input_norm=False has no input offset/scale to set")
        per_bin = []
        for name, stat in (("mean", mean), ("std", std)):
            t = torch.as_tensor(stat).detach().float()
            if t.ndim == 2 and t.shape[-1] == self.n_bins:
                t = t.mean(dim=0)
            if t.shape != (self.n_bins,):
                raise ValueError(
                    f"{name} must have shape (n_bins={self.n_bins},) or (channels, "
                    f"n_bins={self.n_bins}), got {tuple(t.shape)}"
                )
            per_bin.append(t[: self.max_bin])
        with torch.no_grad():
            self.input_mean.copy_(-per_bin[0])
            self.input_scale.copy_(1.0 / per_bin[1].clamp(min=1e-4))

    def check_input(self, mix_mag: torch.Tensor) -> None:
        """Raise ValueError naming the sizes when ``mix_mag`` does not fit the model."""
        if (
            mix_mag.ndim != 4
            or mix_mag.shape[1] != self.channels
            or mix_mag.shape[2] != self.n_bins
            or mix_mag.shape[3] < 1
        ):
            raise ValueError(
                f"BLSTM expects (batch, channels={self.channels}, bins={self.n_bins}, "
                f"frames>=1), got shape {tuple(mix_mag.shape)}"
            )

    def forward(self, mix_mag: torch.Tensor) -> torch.Tensor:
        """Predict the target's mask (or the sources' masks) from the mixture magnitude.

        Shape: ``(batch, channels, n_bins, frames)`` -> ``(batch, channels, n_bins,
        frames)`` (``sources == 1``), values in (0, 1); or ``(batch, sources, channels,
        n_bins, frames)`` (``sources > 1``), summing to 1 over sources; any number of
        frames.
        """
        self.check_input(mix_mag)
        batch, channels, n_bins, frames = mix_mag.shape
        x = mix_mag[:, :, : self.max_bin, :]
        if self.input_mean is not None and self.input_scale is not None:
            x = (x + self.input_mean[:, None]) * self.input_scale[:, None]
        # (batch, channels, max_bin, frames) -> (batch * frames, channels * max_bin)
        x = x.permute(0, 3, 1, 2).reshape(batch * frames, channels * self.max_bin)
        enc = torch.tanh(self.encoder_norm(self.encoder(x)))
        enc = enc.view(batch, frames, self.hidden)
        out, _ = self.lstm(enc)
        h = torch.cat([enc, out], dim=-1).reshape(batch * frames, 2 * self.hidden)
        h = torch.relu(self.decoder1_norm(self.decoder1(h)))
        h = self.decoder2_norm(self.decoder2(h))
        if self.sources == 1:
            mask = torch.sigmoid(h).view(batch, frames, channels, n_bins)
            return mask.permute(0, 2, 3, 1).contiguous()
        h = h.view(batch, frames, self.sources, channels, n_bins)
        return torch.softmax(h, dim=2).permute(0, 2, 3, 4, 1).contiguous()
