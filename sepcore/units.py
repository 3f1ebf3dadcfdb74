"""Seconds, samples and frames: the one place that converts between them.

Rounding rule, used everywhere: a duration in seconds becomes the *nearest* whole
number of samples (``round``, halves to even); a number of samples becomes the number
of STFT frames that start inside it (``1 + samples // hop`` for centred frames).
"""

from __future__ import annotations

from typing import TypeAlias

Seconds: TypeAlias = float
Decibels: TypeAlias = float
Hertz: TypeAlias = int


def seconds_to_samples(seconds: Seconds, sample_rate: Hertz) -> int:
    """Nearest whole number of samples in ``seconds`` at ``sample_rate``."""
    if sample_rate <= 0:
        raise ValueError(f"sample_rate must be positive, got {sample_rate}")
    return int(round(seconds * sample_rate))


def samples_to_seconds(samples: int, sample_rate: Hertz) -> Seconds:
    """Duration of ``samples`` at ``sample_rate``, in seconds."""
    if sample_rate <= 0:
        raise ValueError(f"sample_rate must be positive, got {sample_rate}")
    return samples / sample_rate


def samples_to_frames(samples: int, hop: int) -> int:
    """Number of centred STFT frames for a signal of ``samples`` samples."""
    if hop <= 0:
        raise ValueError(f"hop must be positive, got {hop}")
    return 1 + samples // hop


def db_to_gain(db: Decibels) -> float:
    """Linear amplitude gain of a level in dB."""
    return float(10.0 ** (db / 20.0))
