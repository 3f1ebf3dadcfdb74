"""Training losses: masked L1 (seed 002) and activation binary cross-entropy (seed 001)."""

from __future__ import annotations

import torch

#: Keras's clipping of probabilities in binary cross-entropy (seed 001 used Keras).
BCE_EPS = 1e-7


def _same_shape(**tensors: torch.Tensor) -> None:
    shapes = {name: tuple(t.shape) for name, t in tensors.items()}
    if len(set(shapes.values())) != 1:
        listed = ", ".join(f"{name} {shape}" for name, shape in shapes.items())
        raise ValueError(f"shapes differ: {listed}")


def masked_l1(mask: torch.Tensor, mix_mag: torch.Tensor, target_mag: torch.Tensor) -> torch.Tensor:
    """Mean ``|mask * mix_mag - target_mag|`` (seed 002 §5.3: L1 on the masked mixture).

    Shape: ``mask``, ``mix_mag``, ``target_mag`` all ``(batch, channels, bins, frames)``
    (any equal shapes) -> scalar. Zero for a perfect mask, also on all-silent input.
    """
    _same_shape(mask=mask, mix_mag=mix_mag, target_mag=target_mag)
    return (mask * mix_mag - target_mag).abs().mean()


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
