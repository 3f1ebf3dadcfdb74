"""The evaluate job's configuration sections, used by the job config and by the library.

:class:`ScoringConfig` holds the top-level scoring keys (``mode``, ``backend``,
``segment_seconds``, ``window_seconds``, ``hop_seconds``); the job's config extends it,
and :func:`sepcore.evaluate.scoring.score` takes it as it is.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from sepcore.config import Config
from sepcore.evaluate import bss

Mode = Literal["full", "windowed"]
#: Methods of a separation evaluation, in table order.
METHODS = ("model", "irm", "ibm", "mixture")
#: Sources of a separation evaluation: the class and everything else.
SOURCES = ("instrument", "rest")


class ScoringConfig(Config):
    """How tracks are scored (see :mod:`sepcore.evaluate.scoring`)."""

    mode: Mode = Field(
        "full", description="full tracks (seed 002) or 1-s windows (museval)"
    )
    backend: Literal["auto", "mir_eval", "fast"] = Field(
        "auto",
        description="BSS Eval implementation; auto: mir_eval for full, fast_bss_eval for windowed",
    )
    segment_seconds: float = Field(
        30.0, gt=0, description="full mode: longer tracks are scored in segments"
    )
    window_seconds: float = Field(1.0, gt=0, description="windowed mode: window length")
    hop_seconds: float = Field(1.0, gt=0, description="windowed mode: hop between windows")

    @property
    def bss_backend(self) -> bss.Backend:
        """The backend used: ``auto`` is mir_eval for full tracks, fast_bss_eval for windows."""
        if self.backend != "auto":
            return self.backend
        return "mir_eval" if self.mode == "full" else "fast"

    def described(self) -> dict[str, object]:
        """The ``evaluation`` entry of metrics.json (the backend resolved)."""
        return {"mode": self.mode, "backend": self.bss_backend, "segment_seconds": self.segment_seconds,
                "window_seconds": self.window_seconds, "hop_seconds": self.hop_seconds}  # fmt: skip


class ReportConfig(Config):
    examples: int = Field(2, ge=0, description="tracks shown with spectrograms and audio players")
    audio_seconds: float = Field(
        15.0, gt=0, description="length of each example: the loudest stretch of the target"
    )
    audio_format: Literal["flac", "wav"] = Field(
        "flac", description="format of the example audio files"
    )


class ActivationEvalConfig(Config):
    sequence_seconds: float = Field(
        5.0, gt=0, description="solo seconds per class in the sequence test (seed 001: 5)"
    )
    plots: int = Field(3, ge=0, description="tracks with per-instrument activation plots")
    batch_size: int = Field(32, ge=1, description="windows per model call")
