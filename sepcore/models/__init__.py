"""Models by name: the mask separators (hourglass, BLSTM, frame DNN, mask DNN, the drums U-Net
``unet_gan``), the activation CNN and the LSTM composer of note sequences (``composer``,
:mod:`sepcore.models.composer`, which has its own shapes).

Pure PyTorch: no I/O, no argument parsing. Every model keeps its constructor
arguments in ``model.config`` (plain ints, floats, strings, lists, None), so a
checkpoint stores ``{"name": model_name(m), "config": model_config(m)}`` and
``build_model(name, **config)`` rebuilds it.

Mask models map a mixture magnitude ``(batch, channels, bins, frames)`` to a mask of
the same shape in (0, 1); the target estimate is ``mask * mix`` and the rest
``(1 - mask) * mix``. A mask model built with ``sources > 1`` (:func:`source_count`)
returns ``(batch, sources, channels, bins, frames)`` masks, one per source: a softmax
that sums to 1 over the sources axis (hourglass, BLSTM) or one mask each (frame DNN,
binary-mask DNN), which the one apply makes sum to 1 (:mod:`sepcore.separate.apply`);
source ``s``'s estimate is ``mask[:, s] * mix``. The activation CNN maps ``(batch, 1, bins, frames)`` features
to ``(batch, classes, frames)`` probabilities.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import Any, TypeVar

from torch import nn

from sepcore.models.activation import ActivationCNN
from sepcore.models.blstm import BLSTM
from sepcore.models.composer import Composer
from sepcore.models.frame_dnn import FrameDNN
from sepcore.models.hourglass import Hourglass
from sepcore.models.losses import activation_bce, mask_loss, masked_l1
from sepcore.models.mask_dnn import MaskDNN
from sepcore.models.unet_gan import UNetGenerator

M = TypeVar("M", bound=type[nn.Module])

#: Model classes by name; fill it with :func:`register_model`.
MODELS: dict[str, type[nn.Module]] = {}


def register_model(name: str) -> Callable[[M], M]:
    """Class decorator: register a model class under ``name`` in :data:`MODELS`."""

    def deco(cls: M) -> M:
        if name in MODELS:
            raise ValueError(f"model '{name}' is already registered ({MODELS[name]})")
        MODELS[name] = cls
        return cls

    return deco


register_model("hourglass")(Hourglass)
register_model("activation_cnn")(ActivationCNN)
register_model("blstm")(BLSTM)
register_model("frame_dnn")(FrameDNN)
register_model("mask_dnn")(MaskDNN)
register_model("unet_gan")(UNetGenerator)
register_model("composer")(Composer)


def build_model(name: str, **kwargs: Any) -> nn.Module:
    """Build the model registered as ``name`` with its constructor arguments."""
    if name not in MODELS:
        raise ValueError(f"unknown model '{name}'; known: {', '.join(sorted(MODELS))}")
    return MODELS[name](**kwargs)


def model_name(model: nn.Module) -> str:
    """The registered name of ``model``'s class."""
    for name, cls in MODELS.items():
        if type(model) is cls:
            return name
    raise ValueError(f"{type(model).__name__} is not a registered model")


def model_config(model: nn.Module) -> dict[str, Any]:
    """A copy of the constructor arguments ``model`` keeps (``build_model`` takes them)."""
    config = getattr(model, "config", None)
    if not isinstance(config, dict):
        raise ValueError(f"{type(model).__name__} keeps no constructor config")
    return copy.deepcopy(config)


def source_count(model: nn.Module) -> int:
    """Sources a mask model separates: its ``sources`` attribute, 1 when it has none.

    Sees through :class:`~sepcore.models.checkpoint.LogMagnitude` (its ``sources``
    property asks the wrapped model).
    """
    value = getattr(model, "sources", None)
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    return 1


def count_parameters(model: nn.Module) -> int:
    """Number of trainable weights (parameters with ``requires_grad``)."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


#: Tiny configurations of the spectrogram models for smoke runs and tests: forward + backward well under a second
#: on one CPU core with a batch of :data:`SMOKE_INPUT_SHAPES`.
SMOKE_CONFIGS: dict[str, dict[str, Any]] = {
    "hourglass": dict(
        filters=8, levels=2, dropout=0.2, initial_channels=[4, 8, 8, 8, 16], final_channels=16
    ),
    "activation_cnn": dict(n_bins=32, n_classes=3, frames=16, filters=[4, 4, 8], dropout=0.1),
    "blstm": dict(n_bins=33, channels=1, hidden=16, layers=2, max_bin=24),
    "frame_dnn": dict(n_bins=33, channels=1, context=2, max_bin=24, layers=2, width=16),
    "mask_dnn": dict(n_bins=33, channels=1, window=4, hidden=16, layers=2),
    "unet_gan": dict(channels=1, filters=[4, 8, 8], kernel=3),
}

#: Input shape of one smoke batch per model, matching :data:`SMOKE_CONFIGS`.
SMOKE_INPUT_SHAPES: dict[str, tuple[int, ...]] = {
    "hourglass": (2, 1, 33, 16),
    "activation_cnn": (2, 1, 32, 16),
    "blstm": (2, 1, 33, 16),
    "frame_dnn": (2, 1, 33, 16),
    "mask_dnn": (2, 1, 33, 16),
    "unet_gan": (2, 1, 33, 16),
}

__all__ = [
    "MODELS",
    "SMOKE_CONFIGS",
    "SMOKE_INPUT_SHAPES",
    "BLSTM",
    "Composer",
    "ActivationCNN",
    "Hourglass",
    "activation_bce",
    "build_model",
    "count_parameters",
    "mask_loss",
    "masked_l1",
    "model_config",
    "model_name",
    "register_model",
    "source_count",
]
