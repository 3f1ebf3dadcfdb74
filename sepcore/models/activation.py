"""CNN instrument activation detector (seed 001, §4.3, "Neuroment").

Structure: three conv pairs with kernels 3x3, 5x5, 7x7 (stride 1, same zero padding,
ReLU after every conv), each pair followed by a max-pool in frequency only (2x1, 2x1,
4x1: the frames stay), spatial dropout (``Dropout2d``, 0.1) after the first two pools;
then a head that flattens ``(filters, bins // 16, frames)`` and maps it with one
linear layer to ``classes * frames`` activations through a sigmoid.

Seed 001 gives neither the filter counts nor the head, only the weight totals (mel
1.39 M, CQT 1.92 M, STFT 8.73 M). Filters 16/16, 32/32, 64/64 and the flatten + dense
head give 1,390,832 / 1,915,120 / 8,730,864 weights for 128 / 192 / 1025 bins,
16 frames and 8 classes: all three round to the seed's figures. (A per-frame hidden
dense layer of 2048 units instead gives 1.41 M for mel; the seed's differences of
about 131,072 weights per 16 input bins fix ``filters[-1] * frames * classes * frames``
= 64 * 16 * 8 * 16.)
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

#: Kernel size of each conv pair and frequency pooling after it (seed 001).
KERNELS = (3, 5, 7)
POOLS = (2, 2, 4)


def pooled_bins(n_bins: int) -> int:
    """Bins left after the three frequency pools (floor at each): 128 -> 8, 1025 -> 64."""
    for p in POOLS:
        n_bins //= p
    return n_bins


class ActivationCNN(nn.Module):
    """Frame-wise instrument activations from a feature window.

    Args:
        n_bins: feature bins (mel 128, CQT 192, STFT 1025); at least 16.
        n_classes: instruments (seed 001: 8).
        frames: frames per window (seed 001: 16); fixed, the head is dense over it.
        filters: channels of the three conv pairs.
        dropout: spatial dropout rate after the first two pools.
    """

    def __init__(
        self,
        n_bins: int,
        n_classes: int = 8,
        frames: int = 16,
        filters: Sequence[int] = (16, 32, 64),
        dropout: float = 0.1,
    ):
        super().__init__()
        chans = [int(c) for c in filters]
        if len(chans) != len(KERNELS):
            raise ValueError(f"filters needs {len(KERNELS)} entries, got {chans}")
        if pooled_bins(n_bins) < 1:
            raise ValueError(f"n_bins={n_bins} is too small: the pools need at least 16 bins")
        if n_classes < 1 or frames < 1:
            raise ValueError(f"n_classes and frames must be >= 1, got {n_classes}, {frames}")
        self.config = dict(
            n_bins=n_bins, n_classes=n_classes, frames=frames, filters=chans, dropout=dropout
        )
        self.n_bins, self.n_classes, self.frames = n_bins, n_classes, frames
        layers: list[nn.Module] = []
        c_in = 1
        for i, (c, k, p) in enumerate(zip(chans, KERNELS, POOLS, strict=True)):
            for _ in range(2):
                layers += [nn.Conv2d(c_in, c, k, padding=k // 2), nn.ReLU(inplace=True)]
                c_in = c
            layers.append(nn.MaxPool2d((p, 1)))
            if i < 2:
                layers.append(nn.Dropout2d(dropout))
        self.features = nn.Sequential(*layers)
        self.head = nn.Linear(c_in * pooled_bins(n_bins) * frames, n_classes * frames)

    def check_input(self, x: torch.Tensor) -> None:
        """Raise ValueError naming the sizes when ``x`` does not fit the model."""
        expected = (1, self.n_bins, self.frames)
        if x.ndim != 4 or tuple(x.shape[1:]) != expected:
            raise ValueError(
                f"ActivationCNN expects (batch, 1, bins={self.n_bins}, "
                f"frames={self.frames}), got shape {tuple(x.shape)}"
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Activation probabilities per instrument and frame.

        Shape: ``(batch, 1, n_bins, frames)`` -> ``(batch, n_classes, frames)``, in (0, 1).
        """
        self.check_input(x)
        h = self.features(x).flatten(1)
        logits = self.head(h).view(x.shape[0], self.n_classes, self.frames)
        return torch.sigmoid(logits)
