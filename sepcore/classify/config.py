"""The classify job's configuration sections, used by the job config and by the library.

:class:`SnippetSpec` is the three sections that define snippets, labels and features
(``snippets``, ``labels``, ``features``) together: what a snippet file and a saved
classifier were made with. It also accepts (and :meth:`SnippetSpec.flat` writes) the
flat form that ``classifier.json`` stores.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from typing import Any, Literal

from pydantic import Field, model_validator

from sepcore.config import Config
from sepcore.prepare import features as F
from sepcore.units import seconds_to_samples

DEFAULT_LGB_PARAMS: dict[str, Any] = {
    "objective": "binary", "metric": "binary_logloss", "learning_rate": 0.05, "num_leaves": 15,
    "min_data_in_leaf": 20, "feature_fraction": 0.8, "bagging_fraction": 0.8,
    "bagging_freq": 1, "lambda_l2": 1.0, "verbose": -1, "seed": 0, "deterministic": True,
    "force_col_wise": True,
}  # fmt: skip


def lgb_params(overrides: Mapping[str, Any] | None = None, threads: int = 1) -> dict[str, Any]:
    return {**DEFAULT_LGB_PARAMS, "num_threads": threads, **(overrides or {})}


class SnippetConfig(Config):
    window_s: float = Field(1.0, gt=0, description="snippet length in seconds")
    hop_s: float = Field(1.0, gt=0, description="seconds between snippet starts")


#: The two label kinds: instrument presence per snippet (binary, one model per class) or the
#: track's ``style`` from its metadata.yaml on every snippet (one multi-class model).
LABEL_KINDS = ("presence", "style")


class LabelConfig(Config):
    """How snippets are labelled. ``labels: style`` (a bare kind) is read as ``{kind: style}``."""

    kind: Literal["presence", "style"] = Field(
        "presence", description="presence: which classes play (from the stems); style: the track's style (metadata.yaml)"
    )
    threshold_db: float = Field(
        -20.0, le=0, description="a class plays when its stems' RMS in the snippet is at least this many dB re the mix's"
    )
    floor_dbfs: float = Field(-60.0, le=0, description="... and above this absolute level")

    @model_validator(mode="before")
    @classmethod
    def _bare_kind(cls, data: Any) -> Any:
        if isinstance(data, str):
            if data not in LABEL_KINDS:
                raise ValueError(f"labels must be one of {LABEL_KINDS} or a mapping, got '{data}'")
            return {"kind": data}
        return data

    @property
    def style(self) -> bool:
        return self.kind == "style"

    def flat(self) -> dict[str, Any]:
        """The keys ``classifier.json`` stores; ``kind`` only for style (presence files stay as they were)."""
        return self.model_dump(exclude=set() if self.style else {"kind"})


class FeatureConfig(Config):
    sample_rate: int = Field(22050, ge=8000, le=192000)
    n_fft: int = Field(2048, ge=64)
    hop: int = Field(512, ge=16)
    n_mels: int = Field(64, ge=8, description="log-mel bands summarised per snippet")
    fmin: float = Field(27.5, ge=0)
    fmax: float = Field(11025.0, gt=0, description="clipped to the Nyquist frequency")
    ber_split_hz: float = Field(2000.0, gt=0, description="band energy ratio: low band below this")
    rolloff: float = Field(0.85, gt=0, lt=1, description="spectral roll-off share")


class LightGBMConf(Config):
    num_boost_round: int = Field(300, ge=1)
    early_stopping_rounds: int = Field(30, ge=0, description="stop after this many rounds without a better validation log loss; 0 = off")
    learning_rate: float = Field(0.05, gt=0)
    num_leaves: int = Field(15, ge=2)
    min_data_in_leaf: int = Field(20, ge=1)
    feature_fraction: float = Field(0.8, gt=0, le=1)
    bagging_fraction: float = Field(0.8, gt=0, le=1)
    lambda_l2: float = Field(1.0, ge=0)
    params: dict[str, Any] = Field(default_factory=dict, description="any other LightGBM parameters")

    def lgb_params(self, seed: int, threads: int) -> dict[str, Any]:
        """LightGBM's parameters: the defaults, these keys, ``seed`` and ``params`` last."""
        named = self.model_dump(exclude={"num_boost_round", "early_stopping_rounds", "params"})
        return lgb_params({**named, "seed": seed, **self.params}, threads)


class ScalingConf(Config):
    num_workers: int = Field(1, ge=1, description="LightGBM workers (data-parallel above 1)")
    cpus_per_worker: float = Field(1.0, gt=0, description="CPUs per worker (also LightGBM threads)")

    def scaling_args(self) -> dict[str, Any]:
        """The arguments of Ray Train's ``ScalingConfig``."""
        return {"num_workers": self.num_workers, "resources_per_worker": {"CPU": self.cpus_per_worker}}


class ActorsConf(Config):
    feature: int = Field(2, ge=1, description="most feature actors (one track per call)")
    cpus: float = Field(1.0, gt=0, description="CPUs reserved per feature actor")


_SECTIONS: dict[str, type[Config]] = {"snippets": SnippetConfig, "labels": LabelConfig, "features": FeatureConfig}


def check_sections(snippets: SnippetConfig, features_: FeatureConfig) -> None:
    """Raise ValueError for settings that do not fit together (window, FFT, mel range)."""
    f = features_
    window = seconds_to_samples(snippets.window_s, f.sample_rate)
    if window < f.n_fft:
        raise ValueError(f"a window of {window} samples is shorter than n_fft {f.n_fft}")
    if not 0 < f.ber_split_hz < f.sample_rate / 2:
        raise ValueError(f"ber_split_hz must lie in (0, {f.sample_rate / 2}), got {f.ber_split_hz}")
    F.make_feature("stft", n_fft=f.n_fft, hop=f.hop, sample_rate=f.sample_rate)  # validates n_fft, hop
    F.make_feature("logmel", sample_rate=f.sample_rate, n_fft=f.n_fft, hop=f.hop, n_mels=f.n_mels,
                          fmin=f.fmin, fmax=f.fmax)  # validates the mel range  # fmt: skip


class SnippetSpec(Config):
    """Everything that defines snippets, labels and features (the job's three sections)."""

    snippets: SnippetConfig = Field(default_factory=lambda: SnippetConfig.model_validate({}))
    labels: LabelConfig = Field(default_factory=lambda: LabelConfig.model_validate({}))
    features: FeatureConfig = Field(default_factory=lambda: FeatureConfig.model_validate({}))

    @model_validator(mode="before")
    @classmethod
    def _nest(cls, data: Any) -> Any:
        """Accept the flat form (``window_s=..., n_fft=...``) as well as the sections."""
        if not isinstance(data, dict) or not any(k not in _SECTIONS for k in data):
            return data
        out: dict[str, Any] = {k: dict(data[k]) if isinstance(data[k], dict) else data[k]
                               for k in _SECTIONS if k in data}  # fmt: skip
        for key, value in data.items():
            if key in _SECTIONS:
                continue
            section = next((s for s, c in _SECTIONS.items() if key in c.model_fields), None)
            if section is None:
                raise ValueError(f"unknown snippet setting '{key}'")
            out.setdefault(section, {})[key] = value
        return out

    @model_validator(mode="after")
    def _check(self) -> SnippetSpec:
        check_sections(self.snippets, self.features)
        return self

    @property
    def sample_rate(self) -> int:
        return self.features.sample_rate

    @property
    def window(self) -> int:
        """Window length in samples."""
        return seconds_to_samples(self.snippets.window_s, self.features.sample_rate)

    @property
    def hop_samples(self) -> int:
        return max(1, seconds_to_samples(self.snippets.hop_s, self.features.sample_rate))

    def stft(self) -> F.FeatureExtractor:
        f = self.features
        return F.make_feature("stft", n_fft=f.n_fft, hop=f.hop, sample_rate=f.sample_rate)

    def feature_names(self) -> list[str]:
        bands = [f"{i:02d}" for i in range(self.features.n_mels)]
        names = [f"logmel_{stat}_{b}" for stat in ("mean", "std", "shape") for b in bands]
        for name in ("centroid", "bandwidth", "rolloff", "flatness", "ber"):
            names += [f"{name}_mean", f"{name}_std"]
        return names + ["rms_db_mean", "rms_db_std", "rms_db_max", "flux_mean", "flux_std", "zcr"]

    def flat(self) -> dict[str, Any]:
        """The flat form ``classifier.json`` stores (rate, snippets, labels, then features)."""
        f = self.features.model_dump()
        return {"sample_rate": f.pop("sample_rate"), **self.snippets.model_dump(), **self.labels.flat(), **f}

    def digest(self) -> str:
        """Short hash of the spec: names the folder of snippets made with it."""
        text = json.dumps(self.flat(), sort_keys=True)
        return hashlib.sha256(text.encode()).hexdigest()[:12]


def check_classes(value: list[str], style: bool = False) -> list[str]:
    """``value`` when it is a non-empty subset of :data:`sepcore.data.classes.CLASSES` without
    repeats; with ``style``, any non-empty list of style names without repeats (returned sorted)."""
    from sepcore.data.classes import CLASSES

    if style:
        if not value or not all(isinstance(v, str) and v for v in value):
            raise ValueError(f"classes (styles) must be a non-empty list of names, got {value}")
    elif sorted(set(value) - set(CLASSES)) or not value:
        raise ValueError(f"classes must be a non-empty subset of {CLASSES}, got {value}")
    if len(set(value)) != len(value):
        raise ValueError(f"classes given twice: {value}")
    return sorted(value) if style else value
