"""Gathering a separator's blocks into whole stems (shared by every kind of separator)."""

from __future__ import annotations

from typing import Any

import numpy as np

from sepcore.units import Seconds


def gather_blocks(separator: Any, audio: np.ndarray, block_seconds: Seconds = 60.0) -> dict[str, np.ndarray]:
    """A separator's ``iter_blocks`` gathered into whole stems, one array per name of its
    ``stems`` (:class:`sepcore.separate.separator.Separator`).

    Shape: ``(c, n)`` -> ``{stem: (c, n)}``, float32.
    """
    out = {name: np.zeros(audio.shape, dtype=np.float32) for name in separator.stems}
    for start, parts in separator.iter_blocks(audio, block_seconds):
        for name, value in parts.items():
            out[name][:, start : start + value.shape[1]] = value
    return out
