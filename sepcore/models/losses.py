"""Training losses: masked L1 (seed 002) or MSE (Open-Unmix), activation BCE (seed 001)."""

from __future__ import annotations

from typing import Literal

import torch

#: Distances :func:`mask_loss` offers.
MaskLoss = Literal["l1", "mse"]

#: Keras's clipping of probabilities in binary cross-entropy (seed 001 used Keras).
BCE_EPS = 1e-7


def _same_shape(**tensors: torch.Tensor) -> None:
    shapes = {name: tuple(t.shape) for name, t in tensors.items()}
    if len(set(shapes.values())) != 1:
        listed = ", ".join(f"{name} {shape}" for name, shape in shapes.items())
        raise ValueError(f"shapes differ: {listed}")


def _check_mask_shapes(mask: torch.Tensor, mix_mag: torch.Tensor, target_mag: torch.Tensor) -> None:
    """Raise ValueError naming every shape unless they fit :func:`mask_loss`."""
    m, x, t = tuple(mask.shape), tuple(mix_mag.shape), tuple(target_mag.shape)
    single = len(m) == 4 and m == x == t
    multi = len(m) == 5 and m == t and x == m[:1] + m[2:]
    if not (single or multi):
        raise ValueError(
            f"mask_loss expects mask, mix_mag, target_mag all (batch, channels, bins, "
            f"frames), or mask and target_mag (batch, sources, channels, bins, frames) with "
            f"mix_mag (batch, channels, bins, frames); got mask {m}, mix_mag {x}, "
            f"target_mag {t}"
        )


def mask_loss(
    mask: torch.Tensor,
    mix_mag: torch.Tensor,
    target_mag: torch.Tensor,
    kind: MaskLoss = "l1",
) -> torch.Tensor:
    """Distance of the masked mixture ``mask * mix_mag`` to ``target_mag``, averaged.

    ``kind="l1"``: mean absolute error (seed 002 §5.3); ``kind="mse"``: mean squared
    error (Open-Unmix's loss). The maths runs in float32 (safe under autocast). Zero
    for a perfect mask, also on all-silent input.

    Shape: one source: ``mask``, ``mix_mag``, ``target_mag`` all ``(batch, channels,
    bins, frames)``; several: ``mask`` and ``target_mag`` ``(batch, sources, channels,
    bins, frames)``, ``mix_mag`` ``(batch, channels, bins, frames)`` (the same mixture
    for every source) -> scalar, the mean over every entry (and source).
    """
    _check_mask_shapes(mask, mix_mag, target_mag)
    if kind not in ("l1", "mse"):
        raise ValueError(f"kind must be 'l1' or 'mse', got {kind!r}")
    mix = mix_mag.float() if mask.ndim == 4 else mix_mag.float().unsqueeze(1)
    diff = mask.float() * mix - target_mag.float()
    return diff.abs().mean() if kind == "l1" else diff.square().mean()


def masked_l1(mask: torch.Tensor, mix_mag: torch.Tensor, target_mag: torch.Tensor) -> torch.Tensor:
    """Mean ``|mask * mix_mag - target_mag|`` (seed 002 §5.3: L1 on the masked mixture).

    :func:`mask_loss` with ``kind="l1"``; shapes as there (one source or several) ->
    scalar. Zero for a perfect mask, also on all-silent input.
    """
    return mask_loss(mask, mix_mag, target_mag, kind="l1")


def activation_bce(pred: torch.Tensor, target: torch.Tensor, eps: float = BCE_EPS) -> torch.Tensor:
    """Mean binary cross-entropy of activation probabilities (seed 001 §4.4).

    Shape: ``pred`` and ``target`` both ``(batch, classes, frames)`` (any equal shapes)
    -> scalar. ``pred`` are probabilities (the model's sigmoid output), clipped to
    ``[eps, 1 - eps]`` as Keras does, so 0 and 1 give a finite loss and gradient; the
    maths runs in float32 (safe under autocast). ``target`` may be soft (in [0, 1]).
    """
    _same_shape(pred=pred, target=target)
    p = pred.float().clamp(eps, 1.0 - eps)
    t = target.float()
    return -(t * torch.log(p) + (1.0 - t) * torch.log1p(-p)).mean()
