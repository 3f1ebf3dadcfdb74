"""The tune job's configuration sections, used by ``ray_jobs.tune`` and by the library."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Literal

from pydantic import Field, field_validator, model_validator

from sepcore.config import Config
from sepcore.tune import sweep as T
from sepcore.tune.sweep import DIMENSIONS


class RangeConfig(Config):
    low: float = Field(gt=0)
    high: float = Field(gt=0)
    log: bool = Field(True, description="sample on a log scale")


class SpaceConfig(Config):
    """Values swept; a dimension left out keeps the value of the prepare/train settings."""

    model: list[Literal["hourglass", "blstm", "frame_dnn"]] | None = Field(None, description="model families")
    init: list[Literal["ls", "random"]] | None = Field(
        None, description="frame_dnn's model.init: least-squares or random start, e.g. [ls, random]"
    )
    n_fft: list[int] | None = Field(None, description="FFT sizes (hop = n_fft x hop_fraction)")
    silence: list[float | None] | None = Field(
        None, description="silence adjustment: off or a target audio ratio, e.g. [off, 0.5, 0.7, 0.9]"
    )
    remix_copies: list[int] | None = Field(
        None, description="prepare augment.remix_copies: remix copies per training track, e.g. [0, 2]"
    )
    gain_db: list[float | None] | None = Field(
        None, description="prepare augment.gain_db: off or x for gains in [-x, x] dB, e.g. [off, 6]"
    )
    filters: list[int] | None = Field(None, description="hourglass filters F (BLSTM: hidden units; frame DNN: width)")
    levels: list[int] | None = Field(None, description="hourglass levels S (BLSTM, frame DNN: layers)")
    lr: list[float] | RangeConfig | None = Field(None, description="learning rates, or {low, high, log}")

    @field_validator("silence", "gain_db", mode="before")
    @classmethod
    def _off(cls, value: Any) -> Any:
        if isinstance(value, list):  # YAML reads a bare off as false
            return [None if v is False or v is None or (isinstance(v, str) and v.lower() == "off") else v
                    for v in value]  # fmt: skip
        return value

    @model_validator(mode="after")
    def _check(self) -> SpaceConfig:
        for dim in DIMENSIONS:
            values = getattr(self, dim)
            if isinstance(values, list) and not values:
                raise ValueError(f"space.{dim}: give at least one value (or leave it out)")
        for ratio in self.silence or []:
            if ratio is not None and not 0 < ratio <= 1:
                raise ValueError(f"space.silence: a ratio must be in (0, 1], got {ratio}")
        if any(n < 0 for n in self.remix_copies or []):
            raise ValueError(f"space.remix_copies: a count must be >= 0, got {self.remix_copies}")
        for gain in self.gain_db or []:
            if gain is not None and not gain > 0:
                raise ValueError(f"space.gain_db: a range half-width must be > 0 dB (off: no gain), got {gain}")
        if isinstance(self.lr, RangeConfig) and self.lr.low > self.lr.high:
            raise ValueError("space.lr: low exceeds high")
        return self

    def swept(self) -> list[str]:
        return [d for d in DIMENSIONS if getattr(self, d) is not None]

    def data_points(self) -> list[tuple[Any, ...]]:
        """Every (n_fft, silence, remix_copies, gain_db) the space can reach, the arguments of
        :func:`~sepcore.tune.sweep.variant_settings` and :func:`~sepcore.tune.sweep.data_key`
        (n_fft None, the others ``"base"``: not swept)."""
        ffts: list[int | None] = list(self.n_fft) if self.n_fft else [None]
        silences: list[Any] = list(self.silence) if self.silence is not None else ["base"]
        remixes: list[Any] = list(self.remix_copies) if self.remix_copies is not None else ["base"]
        gains: list[Any] = list(self.gain_db) if self.gain_db is not None else ["base"]
        return [(n, s, r, g) for n in dict.fromkeys(ffts) for s in dict.fromkeys(silences)
                for r in dict.fromkeys(remixes) for g in dict.fromkeys(gains)]  # fmt: skip

    def size_points(self) -> list[dict[str, Any]]:
        """Every (model, filters, levels) combination, to validate the model settings."""
        models: list[str | None] = [*self.model] if self.model else [None]
        filters: list[int | None] = [*self.filters] if self.filters else [None]
        levels: list[int | None] = [*self.levels] if self.levels else [None]
        return [{"model": m, "filters": f, "levels": s} for m in models for f in filters for s in levels]


class SearchConfig(Config):
    algorithm: Literal["grid", "random", "optuna"] = Field(
        "grid", description="grid (every combination), random, or optuna (Bayesian; pip install optuna)"
    )
    num_samples: int = Field(1, ge=1, description="grid: repeats of the grid; random/optuna: trials")
    max_concurrent: int | None = Field(None, ge=1, description="trials at once (default: what resources allow)")
    seed: int = Field(0, description="seed of the random and optuna searchers")


class SchedulerConfig(Config):
    name: Literal["asha", "fifo"] = Field("asha", description="asha stops weak trials early; fifo runs all to the end")
    grace_period: int = Field(2, ge=1, description="asha: epochs every trial runs before it can be stopped")
    reduction_factor: float = Field(2.0, gt=1, description="asha: keep 1/reduction_factor at each rung")


class ResourcesConfig(Config):
    driver_cpus: float = Field(
        0.01, gt=0, description="CPUs of the driver of a trial with several workers (it waits on its trainer)"
    )
    read_cpus: float = Field(0.25, gt=0, description="CPUs per task reading a trial's shards")


class TuneSettings(Config):
    """The tune job's own keys (``ray_jobs.tune.TuneConfig`` adds the job keys and the checks)."""

    prepare: dict[str, Any] = Field(description="keys of sep prepare (not output): the data of every variant")
    train: dict[str, Any] = Field(default_factory=dict, description="keys of sep train (not data, output)")
    model_configs: dict[str, dict[str, Any]] = Field(
        default_factory=dict, description="base constructor arguments of other model families in space.model"
    )
    variants: str | None = Field(None, description="where data variants are prepared (default <output>/variants)")
    hop_fraction: float = Field(0.25, gt=0, le=1, description="hop = n_fft x hop_fraction for swept FFT sizes")
    space: SpaceConfig = Field(default_factory=lambda: SpaceConfig.model_validate({}))
    search: SearchConfig = Field(default_factory=lambda: SearchConfig.model_validate({}))
    scheduler: SchedulerConfig = Field(default_factory=lambda: SchedulerConfig.model_validate({}))
    resources: ResourcesConfig = Field(default_factory=lambda: ResourcesConfig.model_validate({}))
    max_failures: int = Field(1, ge=0, description="retries of a failed trial (it resumes from its checkpoint)")
    max_failed_fraction: float = Field(0.5, ge=0, le=1, description="fail the job when more trials than this fail")


def space_spec(space: SpaceConfig, algorithm: str) -> dict[str, tuple[str, tuple[Any, ...]]]:
    """Each swept dimension's Tune sampler, as its name and arguments: ``grid`` (grid search) or
    ``choice`` for a list of values; ``uniform`` or ``loguniform`` for a range."""
    spec: dict[str, tuple[str, tuple[Any, ...]]] = {}
    for dim in space.swept():
        values = getattr(space, dim)
        if isinstance(values, RangeConfig):
            spec[dim] = ("loguniform" if values.log else "uniform", (values.low, values.high))
        else:
            spec[dim] = ("grid" if algorithm == "grid" else "choice", (list(values),))
    return spec


def nested_error(section: str, exc: ValueError) -> ValueError:
    """The error of a nested section's settings, naming ``section.<key>`` (pydantic's first error)."""
    from pydantic import ValidationError

    if isinstance(exc, ValidationError):
        err = exc.errors()[0]
        key = ".".join(str(p) for p in err["loc"])
        what = "unknown key" if err["type"] == "extra_forbidden" else err["msg"]
        return ValueError(f"{section}.{key}: {what}" if key else f"{section}: {what}")
    return ValueError(f"{section}: {exc}")


def validated(cls: type[Config], section: str, tree: dict[str, Any]) -> Any:
    """``cls`` of the settings ``tree`` of a nested section; an error names ``section.<key>``."""
    try:
        return cls.model_validate(tree)
    except ValueError as exc:  # pydantic's ValidationError is one
        raise nested_error(section, exc) from None


def check_tune(cfg: Any, validate_prepare: Callable[[dict[str, Any]], Any],
               validate_train: Callable[[dict[str, Any]], Any]) -> None:  # fmt: skip
    """The checks of a tune configuration (``ray_jobs.tune.TuneConfig``) across its sections:
    every variant's prepare settings and every trial's train settings must validate."""
    for section, key in (("prepare", "output"), ("train", "data"), ("train", "output")):
        if key in getattr(cfg, section):
            raise ValueError(f"{section}.{key} is set by the sweep; leave it out")
    if cfg.search.algorithm == "grid" and isinstance(cfg.space.lr, RangeConfig):
        raise ValueError("space.lr: grid search needs a list of values, not a range")
    for n_fft, silence, remix_copies, gain_db in cfg.space.data_points():
        validate_prepare(T.variant_settings(cfg.prepare, n_fft, silence, cfg.hop_fraction, remix_copies, gain_db))
    separators = tuple(T.SIZE_KEYS)
    for values in cfg.space.size_points():
        tcfg = validate_train(T.train_settings(cfg.train, values, cfg.model_configs))
        if tcfg.model.name not in separators:
            raise ValueError(f"train.model.name: tune sweeps separators {separators}, not {tcfg.model.name}")
        if cfg.space.init is not None and tcfg.model.name != T.INIT_MODEL:
            where = "space.model" if values["model"] else "train.model.name"
            raise ValueError(f"space.init: only a {T.INIT_MODEL} has an init to sweep; {where} gives "
                             f"{tcfg.model.name}")  # fmt: skip
    if validate_train(cfg.train).validation.metric == "val_sdr" and cfg.prepare.get("target") == "random_mix":
        raise ValueError("train.validation.metric val_sdr needs an instrument target; use val_loss")
