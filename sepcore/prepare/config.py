"""The prepare job's configuration sections and :class:`PrepareSpec`, the per-track settings.

Each section is one class, used by the job's configuration (``ray_jobs.prepare``) and
by the library. :meth:`PrepareSpec.of` resolves a configuration into the flat, picklable
settings a worker needs to turn one track into rows; evaluation and training build a
:class:`PrepareSpec` directly from a checkpoint's metadata.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Literal

from pydantic import Field, model_validator

from sepcore.config import Config
from sepcore.data.classes import CLASSES
from sepcore.prepare import features, qa

OUTPUTS = ("target", "irm", "ibm", "activations")
MASK_OUTPUTS = ("irm", "ibm")
#: The last stem of a multi-target spec: every usable stem of a class not in ``targets``.
OTHER = "other"


def default_target(data: Any) -> Any:
    """A configuration mapping with ``targets`` and no ``target`` key gets ``target: None``
    (the default ``guitar`` would otherwise make both set). Used as a ``mode="before"`` validator."""
    if isinstance(data, dict) and data.get("targets") is not None and "target" not in data:
        return {**data, "target": None}
    return data


def check_targets(target: str | None, targets: Sequence[str] | None) -> None:
    """Exactly one of ``target`` and ``targets``; ``targets`` known, unique classes (ValueError)."""
    if targets is not None and not len(targets):
        raise ValueError("targets: give at least one class (or null with one target)")
    if target is not None and targets is not None and len(targets):
        raise ValueError(f"give either target ('{target}') or targets ({list(targets)}), not both; "
                         "set target: null with targets")  # fmt: skip
    if target is None and not targets:
        raise ValueError("give target (one class or random_mix) or targets (a list of classes)")
    if targets is None or target is not None:
        return
    bad = [t for t in targets if t not in CLASSES or t == OTHER]
    if bad:
        known = [c for c in CLASSES if c != OTHER]
        raise ValueError(f"targets: unknown classes {bad}; known: {known} ('other' is always the last stem)")
    if len(set(targets)) != len(targets):
        raise ValueError(f"targets: each class once, got {list(targets)}")


class SourceConfig(Config):
    kind: Literal["slakh", "stems", "stemfile"] = Field(description="layout of the source")
    uri: str = Field(description="URI of the dataset root")
    name: str | None = Field(None, description="prefix of track ids (default: the kind)")
    splits: list[str] | None = Field(None, description="slakh only: splits to read")
    split: str | None = Field(None, description="stems/stemfile only: split of every track")
    styles: list[str] | None = Field(
        None, description="slakh only: keep only the tracks whose metadata.yaml style is listed (null: all)")

    @model_validator(mode="after")
    def _styles(self) -> SourceConfig:
        if self.styles is None:
            return self
        if self.kind != "slakh":
            raise ValueError(f"styles: applies to slakh sources (their metadata.yaml style), not {self.kind}")
        if not self.styles:
            raise ValueError("styles: give at least one style (or null for every track)")
        return self


class SplitConfig(Config):
    train: float = Field(0.8, ge=0, le=1)
    validation: float = Field(0.1, ge=0, le=1)
    test: float = Field(0.1, ge=0, le=1)


class SilenceConfig(Config):
    """Seed 002 §4.3.3: cut silences of the target, longest first, to ``target_ratio``."""

    enabled: bool = Field(False, description="cut the target's silences (seed 002 §4.3.3)")
    target_ratio: float = Field(0.7, gt=0, le=1, description="audio-to-total ratio to reach")
    cutoff_ratio: float = Field(0.5, ge=0, le=1, description="drop a track still below this")
    threshold_dbfs: float = Field(-50.0, le=0, description="silence level")
    min_silence_s: float = Field(1.0, gt=0, description="shortest silence that may be cut")


class QAConfig(Config):
    detect: bool = Field(True, description="flag silent (missing), inaudible and clipping stems")
    exclude: list[str] = Field(list(qa.DEFAULT_EXCLUDE), description="stems with these flags are left out")
    flags_csv: str | None = Field(
        None, description="URI of a CSV 'track,stem,flag' of manual flags (stem: id or class)"
    )


class FeatureConfig(Config):
    name: Literal["stft", "logmel", "cqt"] = Field("stft", description="feature extractor")
    n_fft: int | None = Field(1536, description="FFT size (stft, logmel)")
    hop: int | None = Field(384, description="hop in samples")
    n_mels: int | None = Field(None, description="logmel bands (default 128)")
    fmin: float | None = Field(None, description="logmel/cqt lowest frequency (default 27.5)")
    fmax: float | None = Field(None, description="logmel highest frequency (default 20000)")
    bins_per_octave: int | None = Field(None, description="cqt (default 24)")
    n_octaves: int | None = Field(None, description="cqt (default 8)")

    def params(self) -> dict[str, Any]:
        """The extractor's name and the parameters that are set (cqt has no n_fft)."""
        out = {k: v for k, v in self.model_dump().items() if v is not None}
        if self.name == "cqt":
            out.pop("n_fft", None)
        return out


class ChunkConfig(Config):
    frames: int = Field(64, ge=1, description="frames per chunk")
    hop: int | None = Field(None, ge=1, description="frames between chunk starts (default: frames)")
    pad: bool = Field(True, description="zero-pad the last partial chunk (else drop it)")
    context: int = Field(0, ge=0, description="context frames stacked on each side (seed 000: 3)")


class RandomMixConfig(Config):
    segment_seconds: float = Field(3.0, gt=0, description="length of a solo segment")
    min_instruments: int = Field(1, ge=1)
    max_instruments: int = Field(4, ge=1)
    epochs: int = Field(2, ge=1, description="mixing epochs; each segment once per epoch")
    balance: bool = Field(True, description="balance classes in train (at most max_oversample x)")
    max_oversample: float = Field(2.0, ge=1)
    batch_mixes: int = Field(64, ge=1, description="segments grouped per mixing call and shard")


class AugmentConfig(Config):
    """Augmentation of instrument targets (Open-Unmix style), applied to the tracks of ``splits`` only.

    Off by default (every value at its default: :attr:`active` is False). Everything is drawn by
    :mod:`sepcore.prepare.augment` from a generator seeded by (prepare seed, ``seed``, track id,
    copy index).
    """

    remix_copies: int = Field(0, ge=0, le=64, description="extra examples per track: its target with a rest "
                              "rebuilt from other tracks of the same split (several targets: every stem "
                              "from other tracks)")  # fmt: skip
    gain_db: tuple[float, float] | None = Field(
        None, description="[lo, hi]: a gain in dB drawn uniformly per stem before the sums (null: off)"
    )
    channel_swap: float = Field(0.0, ge=0, le=1, description="probability of swapping a stem's channels (stereo)")
    splits: list[str] = Field(["train"], min_length=1, description="splits augmented; the others stay as they are")
    seed: int = Field(0, description="seed of the augmentation draws (with the prepare seed)")

    @model_validator(mode="after")
    def _check(self) -> AugmentConfig:
        if self.gain_db is not None and self.gain_db[0] > self.gain_db[1]:
            raise ValueError(f"augment.gain_db: lo {self.gain_db[0]} exceeds hi {self.gain_db[1]}")
        return self

    @property
    def active(self) -> bool:
        return self.remix_copies > 0 or self.gain_db is not None or self.channel_swap > 0


class ActorsConfig(Config):
    fuse: bool = Field(
        True, description="instrument targets: one pool of 'feature' actors runs both steps of a track (no "
        "hand-over of its audio between processes); false: a mixing pool and a feature pool",
    )
    mix: int = Field(2, ge=1, description="most mixing actors")
    feature: int = Field(2, ge=1, description="most feature actors (with fuse: of the one pool)")
    cpus: float = Field(
        0.5, gt=0, description="CPUs reserved per actor (0.5: both pools can grow on every core)"
    )


class PrepareSpec(Config):
    """Everything a worker needs to turn one track into rows (plain, picklable).

    ``silence`` is None when silences are not cut; ``skip_without_target``: a track
    without a usable target stem is skipped (:class:`sepcore.prepare.pairs.SkipTrack`);
    ``augment`` is None without augmentation, and ``seed`` (the prepare seed) seeds it.

    Several targets: ``targets`` (classes, each once) with ``target`` None (left out, it
    becomes None); :attr:`stems` is then ``(*targets, "other")``. Empty ``targets``: one
    ``target`` as before. Multi-target specs cut no silences and have no masks (irm, ibm).
    """

    target: str | None = "guitar"
    targets: tuple[str, ...] = ()
    sample_rate: int = 22050
    channels: int = 1
    feature: dict[str, Any] = Field(default_factory=lambda: {"name": "stft", "n_fft": 1536, "hop": 384})
    frames: int = 64
    chunk_hop: int | None = None
    pad: bool = True
    context: int = 0
    outputs: tuple[str, ...] = ("target", "activations")
    dtype: str = "float16"
    silence: SilenceConfig | None = None
    detect_flags: bool = True
    exclude_flags: tuple[str, ...] = qa.DEFAULT_EXCLUDE
    skip_without_target: bool = True
    augment: AugmentConfig | None = None
    seed: int = 0

    @model_validator(mode="before")
    @classmethod
    def _default_target(cls, data: Any) -> Any:
        return default_target(data)

    @model_validator(mode="after")
    def _check(self) -> PrepareSpec:
        unknown = set(self.outputs) - set(OUTPUTS)
        if unknown:
            raise ValueError(f"unknown outputs {sorted(unknown)}; known: {OUTPUTS}")
        if set(self.outputs) & set(MASK_OUTPUTS) and self.feature.get("name") != "stft":
            raise ValueError("masks (irm, ibm) are defined on STFT magnitudes only; use feature stft")
        check_targets(self.target, self.targets or None)
        if self.targets:
            check_multi(self.outputs, self.silence is not None and self.silence.enabled)
        return self

    @property
    def stems(self) -> tuple[str, ...]:
        """The stems of a multi-target spec, ``(*targets, "other")``; ``()`` with one target."""
        return (*self.targets, OTHER) if self.targets else ()

    @classmethod
    def of(cls, cfg: Any) -> PrepareSpec:
        """The spec of a prepare configuration (its target, rate, channels, sections, outputs).

        Random mixes keep only the ``activations`` output, cut no silences and keep
        tracks without the target. The feature extractor is built once, so bad feature
        parameters raise here.
        """
        random_mix = cfg.target == "random_mix"
        augment = cfg.augment if cfg.augment.active else None
        targets = tuple(getattr(cfg, "targets", None) or ())
        spec = cls(
            target=cfg.target, targets=targets, sample_rate=cfg.sample_rate, channels=cfg.channels,
            feature=cfg.features.params(), frames=cfg.chunks.frames, chunk_hop=cfg.chunks.hop,
            pad=cfg.chunks.pad, context=cfg.chunks.context, dtype=cfg.dtype,
            outputs=tuple(o for o in cfg.outputs if not random_mix or o == "activations"),
            silence=cfg.silence if cfg.silence.enabled and not random_mix and not targets else None,
            detect_flags=cfg.qa.detect, exclude_flags=tuple(cfg.qa.exclude),
            skip_without_target=not random_mix, augment=augment, seed=cfg.seed,
        )  # fmt: skip
        spec.extractor()
        return spec

    def extractor(self) -> features.FeatureExtractor:
        params = {k: v for k, v in self.feature.items() if k != "name"}
        return features.make_feature(self.feature["name"], sample_rate=self.sample_rate, **params)

    def settings(self) -> dict[str, Any]:
        """The settings recorded beside the data (``prepare_spec.json``), as plain data.

        Without augmentation ``augment`` and ``seed`` are left out (the seed then changes
        no pair), and with one target ``targets``, so outputs made before augmentation or
        several targets existed keep their settings.
        """
        plain = self.model_dump(mode="json", exclude={"silence": {"enabled"}})
        if self.augment is None:
            del plain["augment"], plain["seed"]
        if not self.targets:
            del plain["targets"]
        return plain


def check_multi(outputs: Sequence[str], silence: bool) -> None:
    """What several targets refuse (ValueError): silence cuts and masks."""
    if silence:
        raise ValueError("silence.enabled: silences are cut per target; "
                         "with several targets leave silence off")  # fmt: skip
    masks = sorted(set(outputs) & set(MASK_OUTPUTS))
    if masks:
        raise ValueError(f"outputs {masks}: masks are made for one target; with several targets "
                         "use [target, activations] (target: the targets column)")  # fmt: skip


def check(cfg: Any) -> None:
    """Check a prepare configuration across its sections (ValueError); builds its spec."""
    targets = getattr(cfg, "targets", None)
    check_targets(cfg.target, targets)
    if targets:
        check_multi(cfg.outputs, cfg.silence.enabled)
    elif cfg.target != "random_mix" and cfg.target not in CLASSES:
        raise ValueError(f"target must be one of {CLASSES} or random_mix, got '{cfg.target}'")
    if abs(cfg.split.train + cfg.split.validation + cfg.split.test - 1) > 1e-6:
        raise ValueError("split fractions must sum to 1")
    if cfg.random_mix.min_instruments > cfg.random_mix.max_instruments:
        raise ValueError("random_mix.min_instruments exceeds max_instruments")
    if cfg.augment.active and cfg.target == "random_mix":
        raise ValueError("augment: applies to instrument targets; random_mix draws its own levels")
    if cfg.augment.channel_swap > 0 and cfg.channels != 2:
        raise ValueError("augment.channel_swap needs stereo (channels: 2)")
    unknown = set(cfg.qa.exclude) - set(qa.FLAGS)
    if unknown:
        raise ValueError(f"qa.exclude: unknown flags {sorted(unknown)}; known: {qa.FLAGS}")
    PrepareSpec.of(cfg)
