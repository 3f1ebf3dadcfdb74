"""The classify job's own keys and its plain steps around Ray (``ray_jobs.classify`` runs them).

:class:`ClassifyKeys` is the job's configuration without the common job keys;
the other functions shape the driver's counts, splits and summary.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Literal

from pydantic import Field, ValidationInfo, field_validator, model_validator

from sepcore.classify import config as C
from sepcore.classify.report import SPLITS
from sepcore.classify.snippets import DEFAULT_CLASSES
from sepcore.config import Config
from sepcore.prepare.config import SplitConfig


class ClassifyKeys(Config):
    """The classify job's keys (``output`` and ``num_cpus`` come from the job config)."""

    data: str = Field(description="URI of a Slakh-layout dataset (stems give the labels; metadata.yaml the style)")
    snippets: C.SnippetConfig = Field(default_factory=lambda: C.SnippetConfig.model_validate({}))
    labels: C.LabelConfig = Field(default_factory=lambda: C.LabelConfig.model_validate({}))
    classes: list[str] | None = Field(
        None, description="presence: classes to detect (null = seed 000's five); style: the styles "
        "(null = those of the data's tracks; given: a track of another style is an error)",
    )
    features: C.FeatureConfig = Field(default_factory=lambda: C.FeatureConfig.model_validate({}))
    split: SplitConfig = Field(default_factory=lambda: SplitConfig.model_validate({}))
    seed: int = Field(0, description="split assignment and LightGBM")
    lightgbm: C.LightGBMConf = Field(default_factory=lambda: C.LightGBMConf.model_validate({}))
    scaling: C.ScalingConf = Field(default_factory=lambda: C.ScalingConf.model_validate({}))
    actors: C.ActorsConf = Field(default_factory=lambda: C.ActorsConf.model_validate({}))
    activation_checkpoint: str | None = Field(None, description="activation CNN (sep train output) compared on the same snippets; null = off")
    activation_pool: Literal["mean", "max"] = Field("mean", description="pooling of CNN frames to snippets")
    max_failed_fraction: float = Field(0.5, ge=0, le=1, description="fail the job above this share of tracks")
    item_timeout_s: float = Field(
        3600.0, gt=0, description="time limit of one track in a feature actor, from its start: then the "
        "actor's process is ended and the track recorded as failed (an hour of audio takes minutes)",
    )

    @field_validator("classes")
    @classmethod
    def _classes(cls, value: list[str] | None, info: ValidationInfo) -> list[str] | None:
        labels = info.data.get("labels")
        style = labels is not None and labels.style
        if value is None:
            return None if style else list(DEFAULT_CLASSES)
        return C.check_classes(value, style)

    @model_validator(mode="after")
    def _check(self) -> ClassifyKeys:
        if abs(self.split.train + self.split.validation + self.split.test - 1) > 1e-6:
            raise ValueError("split fractions must sum to 1")
        C.check_sections(self.snippets, self.features)  # bad feature parameters fail here, before Ray starts
        if self.labels.style and self.activation_checkpoint:
            raise ValueError("activation_checkpoint compares instrument presence: set it to null with labels: style")
        return self

    def spec(self) -> C.SnippetSpec:
        return C.SnippetSpec(snippets=self.snippets, labels=self.labels, features=self.features)

    @property
    def presence_classes(self) -> list[str]:
        """The classes of presence mode (the validator fills the default in)."""
        return list(self.classes or DEFAULT_CLASSES)

    def loop_config(self, names: list[str], classes: list[str]) -> dict[str, Any]:
        """The config of every LightGBMTrainer worker's loop (``ray_jobs.classify.train_loop``).

        Style mode: ``classes`` are the styles (sorted), trained as one multi-class model
        (:func:`sepcore.classify.lgbm.fit_styles`); ``lightgbm.params`` still win, but ``num_class``.
        """
        threads = max(1, round(self.scaling.cpus_per_worker))
        params = self.lightgbm.lgb_params(self.seed, threads)
        if self.labels.style:
            params = {**params, "objective": "multiclass", "metric": "multi_logloss", **self.lightgbm.params,
                      "num_class": len(classes)}  # fmt: skip
        return {"features": names, "classes": classes, "params": params, "style": self.labels.style,
                "rounds": self.lightgbm.num_boost_round, "early_stopping": self.lightgbm.early_stopping_rounds}  # fmt: skip


def actor_row(track_id: str, res: Mapping[str, Any]) -> dict[str, Any]:
    """A feature actor's result row from :func:`sepcore.classify.track.write_track`'s record or an ``error``."""
    out = {"track_id": track_id, "status": "ok", "reason": ""}
    if "error" in res:
        return {**out, "status": "error", "reason": res["error"]}
    return {**out, "status": res["status"], "reason": res["reason"], "snippets": res["snippets"]}


def row_note(row: Mapping[str, Any]) -> str:
    """The progress line's note for a feature actor's row."""
    return row["reason"] if row["status"] != "ok" else f"{row['snippets']} snippets"


def track_counts(records: Mapping[str, Mapping[str, Any]], tracks: int, pending: int,
                 failed: list[dict[str, str]]) -> tuple[dict[str, int], dict[str, str]]:  # fmt: skip
    """The job's track counts, and the skipped tracks with their reasons."""
    skipped = {t: m["reason"] for t, m in records.items() if m["status"] == "skipped"}
    counts = {"tracks": tracks, "done_before": tracks - pending, "failed": len(failed), "skipped": len(skipped)}
    return counts, skipped


def usable_by_split(records: Mapping[str, Mapping[str, Any]], splits: Mapping[str, str]) -> dict[str, list]:
    """The ``ok`` done-records of each split, sorted by track."""
    return {s: [m for t, m in sorted(records.items()) if m["status"] == "ok" and splits[t] == s] for s in SPLITS}


def run_summary(counts: dict[str, int], result: dict[str, Any], usable: Mapping[str, list], failed: list,
                skipped: dict[str, str], folder: str) -> dict[str, Any]:  # fmt: skip
    """The job's summary after training: ``result`` is what ``train_and_report`` returned."""
    return {"counts": {**counts, **result.pop("counts")},
            "figures": {**result.pop("figures"), "tracks_per_split": {s: len(m) for s, m in usable.items()}},
            "failed": failed, "skipped": skipped, "snippets": folder, **result}  # fmt: skip
