"""Frame DNN: one target frame from a context of mixture frames (seed 000; Uhlich, Giron and
Mitsufuji, ICASSP 2015).

Per frame ``t`` of a chunk and per channel (channels are separated independently): the
lowest ``max_bin`` bins of the mixture magnitude at frames ``t - context .. t + context``,
stacked into one vector of ``(2 * context + 1) * max_bin`` inputs (frames outside the
chunk are zeros), go through ``layers`` fully connected layers (``layers - 1`` hidden
layers of ``width`` units, then an output layer of ``sources * max_bin`` units), each
followed by the ``activation`` (``"linear"``: none, seed 000; ``"relu"``: Uhlich). The
output is the target's magnitude at frame ``t`` in those ``max_bin`` bins, or with
``sources > 1`` every source's, one after the other (the *target width*
``sources * max_bin``).

``normalize`` (Uhlich): the stacked input is divided by the average Euclidean norm of its
``2 * context + 1`` frames (clamped to ``>= eps``) and the output multiplied by the same
factor, so the network sees level-independent inputs.

The model is a mask model for separation: ``forward(mix)`` returns
``clip(estimate / (mix + eps), 0, 1)``, per source with ``sources > 1`` (the stems of a
multi-stem data set: its targets and ``other``; the one apply then makes the masks sum
to 1 over the sources, :func:`sepcore.separate.wiener.consistent_masks`). Bins above
``max_bin`` (which the network does not see) take the mask of bin ``max_bin - 1`` (the
top mask extended upwards, as BLSTM predicts a mask above its band rather than passing
the mixture through). Training fits the magnitude estimate itself
(``forward(mix, training_output=True)``, :meth:`FrameDNN.training_loss`: squared error,
seed 000's SSE, or absolute error, SAE).

Layers whose output width is the target width can start from the least-squares solution
of seed 000 (:mod:`sepcore.train.ls_init`): :meth:`FrameDNN.layer_inputs` and
:meth:`FrameDNN.frame_targets` give the per-frame pairs it is fitted on. The default
``width`` is the target width, so every layer can.
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import nn

Activation = Literal["linear", "relu"]


class FrameDNN(nn.Module):
    """Context-frame DNN estimating one target frame, see the module docstring.

    Args:
        n_bins: frequency bins of the input spectrogram (e.g. 513 for n_fft 1024).
        channels: audio channels; each channel is processed on its own by the same network.
        context: frames on either side of the estimated frame (``C``; seed 000 and Uhlich: 3).
        max_bin: bins that enter and leave the network (default all).
        layers: fully connected layers, the output layer included (>= 1).
        width: units of each hidden layer (default the target width ``sources * max_bin``,
            so every layer can be least-squares initialised).
        activation: after every layer, the output layer included: ``"linear"`` or ``"relu"``.
        normalize: divide the input by the average frame norm of its window and scale the
            output back (Uhlich).
        eps: floor of that norm and of the mixture in the mask's denominator.
        sources: magnitudes estimated per frame: 1 (the target; the rest is the
            complement of its mask) or the stems of a multi-stem data set.
    """

    def __init__(
        self,
        n_bins: int,
        channels: int = 1,
        context: int = 3,
        max_bin: int | None = None,
        layers: int = 3,
        width: int | None = None,
        activation: Activation = "relu",
        normalize: bool = True,
        eps: float = 1e-8,
        sources: int = 1,
    ):
        super().__init__()
        max_bin = n_bins if max_bin is None else max_bin
        if not 1 <= max_bin <= n_bins:
            raise ValueError(f"max_bin must be in [1, n_bins={n_bins}], got {max_bin}")
        if sources < 1:
            raise ValueError(f"sources must be >= 1, got {sources}")
        width = sources * max_bin if width is None else width
        if context < 0 or layers < 1 or width < 1 or channels < 1 or eps <= 0:
            raise ValueError(
                f"context must be >= 0, layers, width and channels >= 1 and eps > 0; got context={context}, "
                f"layers={layers}, width={width}, channels={channels}, eps={eps}"
            )
        if activation not in ("linear", "relu"):
            raise ValueError(f"activation must be 'linear' or 'relu', got {activation!r}")
        self.config = dict(n_bins=n_bins, channels=channels, context=context, max_bin=max_bin, layers=layers,
                           width=width, activation=activation, normalize=normalize, eps=eps, sources=sources)  # fmt: skip
        self.n_bins, self.channels, self.context, self.max_bin = n_bins, channels, context, max_bin
        self.activation, self.normalize, self.eps, self.sources = activation, normalize, eps, sources
        widths = [(2 * context + 1) * max_bin] + [width] * (layers - 1) + [self.target_width]
        self.layers = nn.ModuleList(nn.Linear(a, b) for a, b in zip(widths[:-1], widths[1:], strict=True))

    @property
    def target_width(self) -> int:
        """Outputs per frame: ``sources * max_bin`` (each source's ``max_bin`` bins in turn)."""
        return self.sources * self.max_bin

    @property
    def in_features(self) -> int:
        """Inputs per frame: ``(2 * context + 1) * max_bin``."""
        return (2 * self.context + 1) * self.max_bin

    def check_input(self, mix_mag: torch.Tensor) -> None:
        """Raise ValueError naming the sizes when ``mix_mag`` does not fit the model."""
        if mix_mag.ndim != 4 or mix_mag.shape[1] != self.channels or mix_mag.shape[2] != self.n_bins:
            raise ValueError(
                f"FrameDNN expects (batch, channels={self.channels}, bins={self.n_bins}, frames), "
                f"got shape {tuple(mix_mag.shape)}"
            )

    def act(self, h: torch.Tensor) -> torch.Tensor:
        """The activation after every layer."""
        return torch.relu(h) if self.activation == "relu" else h

    def features(self, mix_mag: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The stacked (and normalised) context of every frame, and its normalisation factor.

        Shape: ``(batch, channels, n_bins, frames)`` -> ``x (batch * channels * frames,
        in_features)`` (rows in batch, channel, frame order; within a row the frames
        ``t - C .. t + C``, each ``max_bin`` bins) and ``scale (rows, 1)`` (1 without
        ``normalize``).
        """
        self.check_input(mix_mag)
        batch, channels, _, frames = mix_mag.shape
        x = mix_mag[:, :, : self.max_bin, :].reshape(batch * channels, self.max_bin, frames)
        c = self.context
        padded = nn.functional.pad(x, (c, c))  # zeros beyond the chunk's edges
        windows = padded.unfold(2, 2 * c + 1, 1)  # (n, max_bin, frames, 2c + 1)
        windows = windows.permute(0, 2, 3, 1)  # (n, frames, 2c + 1, max_bin)
        if self.normalize:
            scale = windows.norm(dim=-1).mean(dim=-1, keepdim=True).clamp(min=self.eps)  # (n, frames, 1)
        else:
            scale = torch.ones_like(windows[..., 0, :1])
        rows = batch * channels * frames
        x = windows.reshape(rows, self.in_features) / scale.reshape(rows, 1)
        return x, scale.reshape(rows, 1)

    def frame_targets(self, target_mag: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
        """The target frames in the network's output units (divided by ``scale``).

        Shape: ``(batch, channels, n_bins, frames)`` (``sources > 1``: ``(batch, sources,
        channels, n_bins, frames)``), ``scale (rows, 1)`` -> ``(rows, target_width)`` in the row
        order of :meth:`features`.
        """
        t = target_mag if self.sources > 1 else target_mag.unsqueeze(1)
        if t.ndim != 5 or t.shape[1] != self.sources:
            raise ValueError(f"FrameDNN of {self.sources} source(s) expects targets (batch, [sources,] channels, "
                             f"bins, frames), got shape {tuple(target_mag.shape)}")  # fmt: skip
        batch, _, channels, _, frames = t.shape
        s = t[..., : self.max_bin, :].permute(0, 2, 4, 1, 3).reshape(batch * channels * frames, self.target_width)
        return s / scale

    def layer_inputs(self, mix_mag: torch.Tensor, layer: int) -> tuple[torch.Tensor, torch.Tensor]:
        """What layer ``layer`` receives (the previous layer's output after its activation) and ``scale``.

        Shape: ``(batch, channels, n_bins, frames)`` -> ``(rows, layer's input width)``, ``(rows, 1)``.
        """
        h, scale = self.features(mix_mag)
        for lin in self.layers[:layer]:
            h = self.act(lin(h))
        return h, scale

    def estimate(self, mix_mag: torch.Tensor) -> torch.Tensor:
        """The target magnitude (every source's) in the lowest ``max_bin`` bins.

        Shape: ``(batch, channels, n_bins, frames)`` -> ``(batch, channels, max_bin, frames)``;
        ``sources > 1``: ``(batch, sources, channels, max_bin, frames)``.
        """
        batch, channels, _, frames = mix_mag.shape
        h, scale = self.layer_inputs(mix_mag, len(self.layers))
        est = (h * scale).reshape(batch, channels, frames, self.sources, self.max_bin)
        est = est.permute(0, 3, 1, 4, 2)
        return est if self.sources > 1 else est[:, 0]

    def forward(self, mix_mag: torch.Tensor, training_output: bool = False) -> torch.Tensor:
        """The target's mask from the mixture magnitude, or the magnitude estimate.

        Shape: ``(batch, channels, n_bins, frames)`` -> ``(batch, channels, n_bins, frames)``
        (``sources > 1``: ``(batch, sources, channels, n_bins, frames)``), values in [0, 1];
        with ``training_output`` :meth:`estimate`'s magnitudes (what :meth:`training_loss` takes).
        """
        est = self.estimate(mix_mag)
        if training_output:
            return est
        mix = mix_mag[..., : self.max_bin, :]
        mask = (est / ((mix.unsqueeze(1) if self.sources > 1 else mix) + self.eps)).clamp(0.0, 1.0)
        if self.max_bin < self.n_bins:
            top = mask[..., -1:, :].expand(*mask.shape[:-2], self.n_bins - self.max_bin, -1)
            mask = torch.cat([mask, top], dim=-2)
        return mask

    def training_loss(self, out: torch.Tensor, mix: torch.Tensor, target: torch.Tensor,
                      kind: str = "mse") -> torch.Tensor:  # fmt: skip
        """Mean squared (``"mse"``, seed 000's SSE up to a constant) or absolute (``"l1"``,
        SAE) error between the estimate ``out`` (:meth:`estimate`'s shape) and the target's
        lowest ``max_bin`` bins (``target (batch, [sources,] channels, n_bins, frames)``)."""
        diff = out - target[..., : self.max_bin, :]
        if kind == "mse":
            return diff.pow(2).mean()
        if kind == "l1":
            return diff.abs().mean()
        raise ValueError(f"loss must be 'l1' or 'mse', got {kind!r}")
