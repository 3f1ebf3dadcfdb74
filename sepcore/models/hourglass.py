"""Stacked hourglass mask separator (seed 002, §5; SPEC.md "Models").

Structure (one hourglass module, the reading of §5 that reproduces the thesis's three
trainable weight counts exactly: F = 256 -> 12,546,689; 192 -> 7,713,857;
92 -> 2,671,757, independent of the input size):

* **initial convs**: 1->64 (7x7), 64->128, 128->128, 128->128, 128->256 (3x3); each
  conv -> BatchNorm -> ReLU -> dropout. The last one stays at 256 whatever F is.
* **hourglass module** of ``levels`` (S) levels, from the top (full resolution) down:
  a 3x3 *skip* conv (level input channels -> F) + BN + ReLU + dropout on the level's
  input; a 2x2 max-pool (floor) followed by a 3x3 *down* conv (-> F) + BN + ReLU +
  dropout, whose output is the next level's input. At the bottom one extra 3x3 F->F
  conv + BN + ReLU + dropout. Going up, at each level a 3x3 *up* conv (F->F) + BN +
  dropout (+ ReLU, except at the top level: the module's last conv is linear, as §5
  says), then a nearest-neighbour upsample to the skip branch's *exact* size
  (``F.interpolate(size=skip.shape[-2:])``: 769 bins do not halve evenly) and the
  addition of the skip branch.
* **final convs**: F->256 (3x3) + BN + ReLU + dropout, 256->256 (1x1) + ReLU +
  dropout, 256->``sources * in_channels`` (1x1, linear).
* **sigmoid** (adds no weights): the output is a mask in (0, 1); §5 leaves the mask's
  range open, the sigmoid makes ``mask * mix`` and ``(1 - mask) * mix`` (the rest) both
  non-negative and bounded by the mixture.
* **several sources** (``sources > 1``, beyond the thesis): the mask conv's maps are
  read as ``(sources, in_channels)`` and a softmax over the sources replaces the
  sigmoid, so the masks of a bin sum to 1 and the masked stems add up to the mixture.

Every conv has a bias, every BN its two trainable vectors; convs use "same" padding.
One mask channel per input channel (``in_channels=1``: mono, as in the thesis).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

#: Number of initial convolutions (§5: five).
N_INITIAL = 5


def conv_block(
    in_channels: int,
    out_channels: int,
    kernel: int,
    dropout: float,
    *,
    norm: bool = True,
    relu: bool = True,
) -> nn.Sequential:
    """Conv (bias, same padding) -> [BatchNorm] -> [ReLU] -> Dropout.

    ReLU and dropout commute (dropout scales by a positive factor), so this order equals
    §5's conv -> BN -> dropout -> ReLU.
    """
    layers: list[nn.Module] = [
        nn.Conv2d(in_channels, out_channels, kernel, padding=kernel // 2, bias=True)
    ]
    if norm:
        layers.append(nn.BatchNorm2d(out_channels))
    if relu:
        layers.append(nn.ReLU(inplace=True))
    if dropout > 0:
        layers.append(nn.Dropout(dropout))
    return nn.Sequential(*layers)


class HourglassModule(nn.Module):
    """One hourglass: ``levels`` skip/down/up triples and one bottom conv.

    The top level's up conv is linear (no ReLU): the last conv of the module.
    """

    def __init__(self, in_channels: int, filters: int, levels: int, dropout: float):
        super().__init__()
        self.levels = levels
        level_in = [in_channels] + [filters] * (levels - 1)
        self.skips = nn.ModuleList(conv_block(c, filters, 3, dropout) for c in level_in)
        self.downs = nn.ModuleList(conv_block(c, filters, 3, dropout) for c in level_in)
        self.bottom = conv_block(filters, filters, 3, dropout)
        # ups[i] belongs to level i (0 = top, full resolution); ups[0] is linear.
        self.ups = nn.ModuleList(
            conv_block(filters, filters, 3, dropout, relu=i > 0) for i in range(levels)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Shape: ``(batch, in_channels, bins, frames)`` -> ``(batch, filters, bins, frames)``."""
        skips: list[torch.Tensor] = []
        h = x
        for skip, down in zip(self.skips, self.downs, strict=True):
            skips.append(skip(h))
            h = down(F.max_pool2d(h, 2))
        h = self.bottom(h)
        for level in reversed(range(self.levels)):
            branch = skips[level]
            h = self.ups[level](h)
            h = F.interpolate(h, size=branch.shape[-2:], mode="nearest") + branch
        return h


class Hourglass(nn.Module):
    """Stacked hourglass mask separator (one module), see the module docstring.

    Args:
        filters: F, the channels of every conv inside the hourglass module (thesis: 192).
        levels: S, the number of down/up levels ("stacks" in §5; thesis: 6). The input
            needs at least ``2 ** levels`` bins and frames.
        dropout: rate of every dropout layer (§5: 0.2).
        in_channels: channels of the mixture magnitude; one mask channel per input one.
        initial_channels: output channels of the five initial convs (7x7, then 3x3).
        final_channels: channels of the two final convs before the mask conv.
        sources: masks predicted; 1: one sigmoid mask (the thesis), more: a softmax over
            ``sources`` masks, see the module docstring.
    """

    def __init__(
        self,
        filters: int = 192,
        levels: int = 6,
        dropout: float = 0.2,
        in_channels: int = 1,
        initial_channels: Sequence[int] = (64, 128, 128, 128, 256),
        final_channels: int = 256,
        sources: int = 1,
    ):
        super().__init__()
        initial = [int(c) for c in initial_channels]
        if len(initial) != N_INITIAL:
            raise ValueError(f"initial_channels needs {N_INITIAL} entries, got {initial}")
        if min(levels, filters, in_channels, final_channels, sources) < 1:
            raise ValueError(
                f"levels, filters, in_channels, final_channels and sources must be >= 1, "
                f"got levels={levels}, filters={filters}, in_channels={in_channels}, "
                f"final_channels={final_channels}, sources={sources}"
            )
        self.config = dict(
            filters=filters,
            levels=levels,
            dropout=dropout,
            in_channels=in_channels,
            initial_channels=initial,
            final_channels=final_channels,
            sources=sources,
        )
        self.in_channels = in_channels
        self.sources = sources
        self.levels = levels
        chans = [in_channels, *initial]
        self.initial = nn.Sequential(
            *(
                conv_block(chans[i], chans[i + 1], 7 if i == 0 else 3, dropout)
                for i in range(N_INITIAL)
            )
        )
        self.hourglass = HourglassModule(initial[-1], filters, levels, dropout)
        self.final = nn.Sequential(
            conv_block(filters, final_channels, 3, dropout),
            conv_block(final_channels, final_channels, 1, dropout, norm=False),
            nn.Conv2d(final_channels, sources * in_channels, 1, bias=True),
        )

    @property
    def min_size(self) -> int:
        """The fewest bins and frames an input may have: ``2 ** levels``."""
        return 2**self.levels

    def check_input(self, mix_mag: torch.Tensor) -> None:
        """Raise ValueError naming the sizes when ``mix_mag`` does not fit the model."""
        if mix_mag.ndim != 4 or mix_mag.shape[1] != self.in_channels:
            raise ValueError(
                f"Hourglass expects (batch, channels={self.in_channels}, bins, frames), "
                f"got shape {tuple(mix_mag.shape)}"
            )
        bins, frames = mix_mag.shape[-2:]
        if min(bins, frames) < self.min_size:
            raise ValueError(
                f"Hourglass with levels={self.levels} needs at least {self.min_size} bins "
                f"and frames (2 ** levels), got bins={bins}, frames={frames}"
            )

    def forward(self, mix_mag: torch.Tensor) -> torch.Tensor:
        """Predict the target's mask (or the sources' masks) from the mixture magnitude.

        Shape: ``(batch, in_channels, bins, frames)`` -> ``(batch, in_channels, bins,
        frames)`` (``sources == 1``), values in (0, 1); or ``(batch, sources,
        in_channels, bins, frames)`` (``sources > 1``), summing to 1 over sources; any
        bins/frames >= ``2 ** levels``.
        """
        self.check_input(mix_mag)
        h = self.initial(mix_mag)
        h = self.final(self.hourglass(h))
        if self.sources == 1:
            return torch.sigmoid(h)
        batch, _, bins, frames = h.shape
        h = h.view(batch, self.sources, self.in_channels, bins, frames)
        return torch.softmax(h, dim=1)
