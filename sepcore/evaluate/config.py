"""The evaluate job's configuration sections, used by the job config and by the library.

:class:`ScoringConfig` holds the top-level scoring keys (``mode``, ``backend``,
``segment_seconds``, ``window_seconds``, ``hop_seconds``); the job's config extends it,
and :func:`sepcore.evaluate.scoring.score` takes it as it is. :class:`EvaluateKeys` holds
the job's own keys; ``ray_jobs.evaluate.EvaluateConfig`` joins them with the scoring and
common job keys.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Mapping
from typing import Any, Literal, get_args

from pydantic import Field, ValidationInfo, field_validator, model_validator

from sepcore.config import Config
from sepcore.data.classes import CLASSES
from sepcore.evaluate import bss
from sepcore.prepare.config import SplitConfig
from sepcore.separate.config import DemucsOptions

Mode = Literal["full", "windowed"]
#: Methods of a separation evaluation, in table order.
METHODS = ("model", "irm", "ibm", "mixture")
#: Names of the baseline rows (separators without training), each scored for some classes
#: only: ``hpss`` for drums (:mod:`sepcore.separate.hpss`).
Baseline = Literal["hpss"]
#: The baseline rows, in table order: after the compared rows, before ``irm``.
BASELINES: tuple[str, ...] = get_args(Baseline)
#: Names of the built-in rows: a compared separator (``compare``) takes none of them.
BUILT_IN = (*METHODS, *BASELINES)
#: Sources of a separation evaluation: the class and everything else.
SOURCES = ("instrument", "rest")
#: Names of the rows of compared separators (``compare``); none of :data:`BUILT_IN`.
ROW_NAME = r"^[A-Za-z][A-Za-z0-9_.-]*$"


def method_order(names: Iterable[str]) -> list[str]:
    """Methods in table order: ``model``, the compared separators (in the order given),
    the baselines (``hpss``), then ``irm``, ``ibm``, ``mixture``."""
    seen = list(dict.fromkeys(names))
    rows = [m for m in seen if m not in BUILT_IN]
    return ([m for m in METHODS[:1] if m in seen] + rows + [m for m in BASELINES if m in seen]
            + [m for m in METHODS[1:] if m in seen])  # fmt: skip


def alpha_values(spec: Mapping[str, Any]) -> list[float]:
    """The α values of a range ``{start, stop, step}``: ``start, start + step, ...`` up to
    ``stop`` included (within ``step / 1000``), rounded to 6 decimals."""
    if set(spec) != {"start", "stop", "step"}:
        raise ValueError(f"an alpha range has exactly the keys start, stop, step; got {sorted(spec)}")
    start, stop, step = (float(spec[k]) for k in ("start", "stop", "step"))
    if step <= 0 or stop < start:
        raise ValueError(f"an alpha range needs step > 0 and stop >= start, got {dict(spec)}")
    count = math.floor((stop - start) / step + 1e-3) + 1
    return [round(start + k * step, 6) for k in range(count)]


def alpha_key(alpha: float) -> str:
    """How an α value names its entry in metrics.json and the track results: ``0.5`` -> ``"0.5"``."""
    return f"{alpha:g}"


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


class HpssConfig(Config):
    """The ``hpss`` baseline row (:func:`sepcore.separate.hpss.hpss_drums`)."""

    margin: float = Field(
        1.0, ge=1.0, description="a bin goes to the percussive part only where it is margin times "
        "stronger there than in the harmonic part (1: plain soft masks; more: a residual goes to the rest)")
    kernel_size: int = Field(31, ge=3, description="median filter length, in frames (harmonic) and bins (percussive); odd")

    @field_validator("kernel_size")
    @classmethod
    def _odd(cls, value: int) -> int:
        if value % 2 == 0:
            raise ValueError(f"kernel_size must be odd, got {value}")
        return value


class RoutedConfig(Config):
    """A routed row (``routed: {<row name>: ...}``): each track goes to one group's model,
    chosen by a style classifier's vote over the track's mixture (:mod:`sepcore.evaluate.routed`)."""

    router: str = Field(description="URI of a `sep classify` output trained with labels: style")
    groups: dict[str, list[str]] = Field(description="{group: [styles]}: every style of the router in one group")
    models: dict[str, str] = Field(
        description="{group: checkpoint}: the separator of each group (checkpoint folder, training output or Demucs model)")

    @model_validator(mode="after")
    def _check(self) -> RoutedConfig:
        missing = [g for g in self.groups if g not in self.models]
        if missing:
            raise ValueError(f"models: no model for the group(s) {missing}; give one checkpoint per group")
        extra = [g for g in self.models if g not in self.groups]
        if extra:
            raise ValueError(f"models: {extra} are no group (groups: {list(self.groups)})")
        empty = [g for g, styles in self.groups.items() if not styles]
        if empty:
            raise ValueError(f"groups: the group(s) {empty} hold no style")
        owner: dict[str, str] = {}
        for group, styles in self.groups.items():
            for style in styles:
                if style in owner:
                    raise ValueError(f"groups: style '{style}' is in both '{owner[style]}' and '{group}'")
                owner[style] = group
        return self


def check_row_name(name: str, key: str) -> None:
    """ValueError when ``name`` (a row of ``key``: compare, routed) is a built-in row's or no row name."""
    if name in BUILT_IN:
        raise ValueError(f"{key}: '{name}' is the name of a built-in row ({', '.join(BUILT_IN)}); rename it")
    if not re.match(ROW_NAME, name):
        raise ValueError(f"{key}: '{name}': a row name is letters, digits, '_', '.', '-' (a letter first)")


class EvaluateKeys(Config):
    """The evaluate job's own keys (``output`` and ``num_cpus`` come from the job config)."""

    data: str = Field(description="URI of a Slakh-layout set (tracks with stems/ and metadata.yaml)")
    checkpoint: str = Field(
        description="checkpoint folder or training output (meaning its best/), or a Demucs model: "
        "demucs:<name> or the URI of a .th file")
    compare: dict[str, str] = Field(
        default_factory=dict, description="more separators scored beside the checkpoint, {row name: "
        "reference} (Demucs models or checkpoint folders); each is a row after model")
    routed: dict[str, RoutedConfig] = Field(
        default_factory=dict, description="routed rows, {row name: {router, groups, models}}: each track is "
        "separated by the model of the group holding the style the router votes for; each is a row after compare's")
    demucs: DemucsOptions = Field(
        default_factory=lambda: DemucsOptions.model_validate({}), description="how Demucs models are applied")
    sample_rate: int | None = Field(
        None, gt=0, description="Demucs checkpoint: rate the scores are computed at (default: the model's)")
    channels: int | None = Field(
        None, ge=1, le=2, description="Demucs checkpoint: channels of the references (default: the model's)")
    n_fft: int | None = Field(None, ge=16, description="Demucs checkpoint: STFT of the oracle masks (default 4096)")
    hop: int | None = Field(None, ge=1, description="Demucs checkpoint: STFT hop of the oracle masks (default 1024)")
    target: str | None = Field(
        None, description="class separated (default: the checkpoint's target; multi-stem: only this one of its targets)")
    classes: list[str] = Field(default_factory=list, description="more classes scored with the oracle and mixture rows only")
    split: Literal["train", "validation", "test", "all"] = Field("test", description="tracks evaluated")
    split_fractions: SplitConfig | None = Field(
        None, description="fractions for tracks without a split (default: the training data's, else 0.8/0.1/0.1)")
    seed: int | None = Field(None, description="seed of the split assignment (default: the training data's, else 0)")
    tracks: int | None = Field(None, ge=1, description="evaluate at most this many tracks (sorted by id)")
    batch_size: int = Field(8, ge=1, description="separator chunks per model call")
    wiener_iterations: int | None = Field(
        None, ge=0, description="multi-stem checkpoints: Wiener filter iterations (default: the checkpoint's, else 0)")
    alpha: list[float] | None = Field(
        None, description="binary-mask checkpoints (mask_dnn): confidence thresholds scored in one pass (the "
        "network runs once per track), a list or {start, stop, step} (stop included); null: none")
    baselines: list[Baseline] = Field(
        default_factory=lambda: list(get_args(Baseline)), description="baseline rows, scored when their class is: hpss "
        "(median-filtering HPSS, the percussive part as drums) when drums is; []: none")
    hpss: HpssConfig = Field(default_factory=lambda: HpssConfig.model_validate({}), description="the hpss row")
    cpus_per_task: float = Field(1.0, gt=0, description="CPUs reserved per track task")
    threads: int = Field(1, ge=1, description="torch threads per task")
    report: ReportConfig = Field(default_factory=lambda: ReportConfig.model_validate({}))
    activation: ActivationEvalConfig = Field(default_factory=lambda: ActivationEvalConfig.model_validate({}))
    max_failed_fraction: float = Field(0.5, ge=0, le=1, description="the job fails when more tracks than this fail")
    item_timeout_s: float = Field(
        7200.0, gt=0, description="time limit of one track's task (and of the sequence test), from its start: "
        "then it is cancelled and the track recorded as failed (a 15-minute track takes minutes)")

    @field_validator("alpha", mode="before")
    @classmethod
    def _alpha_range(cls, value: object) -> object:
        return alpha_values(value) if isinstance(value, dict) else value

    @field_validator("alpha")
    @classmethod
    def _alpha_values(cls, value: list[float] | None) -> list[float] | None:
        if value is None:
            return None
        if not value:
            raise ValueError("give at least one alpha (or null for none)")
        bad = [a for a in value if not 0.0 <= a <= 1.0]
        if bad:
            raise ValueError(f"alpha values must be in [0, 1], got {bad}")
        return sorted({round(a, 6) for a in value})

    @field_validator("baselines")
    @classmethod
    def _unique(cls, value: list[Baseline]) -> list[Baseline]:
        return list(dict.fromkeys(value))

    @field_validator("compare", "routed")
    @classmethod
    def _row_names(cls, value: dict[str, Any], info: ValidationInfo) -> dict[str, Any]:
        for name in value:
            check_row_name(name, str(info.field_name))
        return value

    @model_validator(mode="after")
    def _check(self) -> EvaluateKeys:
        clash = sorted(set(self.routed) & set(self.compare))
        if clash:
            raise ValueError(f"routed: {clash} also name compare rows; give each row its own name")
        for name in ([self.target] if self.target else []) + self.classes:
            if name not in CLASSES:
                raise ValueError(f"unknown class '{name}'; known: {CLASSES}")
        if self.split_fractions is not None:
            f = self.split_fractions
            if abs(f.train + f.validation + f.test - 1) > 1e-6:
                raise ValueError("split_fractions must sum to 1")
        return self
