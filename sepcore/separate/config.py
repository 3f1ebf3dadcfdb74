"""The separate job's configuration sections and :class:`SeparationSettings`.

:class:`DecodeLimits` and :class:`Inference` are sections of the job's configuration
(``ray_jobs.separate``); :meth:`SeparationSettings.of` resolves the job's configuration
and the checkpoint's metadata into how one file is separated and written.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from typing import Any, Literal

from pydantic import Field

from sepcore.config import Config
from sepcore.errors import ConfigError
from sepcore.units import Hertz, Seconds


class DecodeLimits(Config):
    timeout_s: float = Field(default=600.0, gt=0, description="wall-clock limit to decode one file")
    max_memory_mb: int = Field(
        default=4096, ge=256, description="address-space limit of the decoding process, MiB"
    )
    max_seconds: float = Field(
        default=4 * 3600.0, gt=0, description="longest audio accepted, seconds (longer: error)"
    )


class Inference(Config):
    batch_size: int = Field(default=8, ge=1, description="chunks per forward pass")
    pool_size: int | None = Field(
        default=None,
        ge=1,
        description="separator actors (default: one per GPU, else one per cpus_per_actor CPUs)",
    )
    cpus_per_actor: float = Field(default=1.0, gt=0, description="CPUs reserved per actor")
    gpus_per_actor: float | None = Field(
        default=None, ge=0, description="GPUs per actor (default: 1 when the cluster has GPUs)"
    )
    threads: int = Field(default=1, ge=1, description="torch threads per actor")
    device: Literal["auto", "cpu", "cuda"] = Field(
        default="auto", description="auto: cuda when the actor has a GPU"
    )
    block_seconds: float = Field(
        default=60.0, gt=0, description="audio separated at once; bounds memory per file"
    )
    overlap: float = Field(default=0.5, ge=0, lt=1, description="chunk overlap (Hann overlap-add)")

    def pool(self, resources: Mapping[str, float]) -> tuple[int, float]:
        """Actor count and GPUs per actor on a cluster with ``resources`` (``CPU``, ``GPU``)."""
        gpus = self.gpus_per_actor
        if gpus is None:
            gpus = 1.0 if resources.get("GPU", 0) >= 1 and self.device != "cpu" else 0.0
        if self.pool_size:
            return self.pool_size, gpus
        if gpus > 0:
            return max(1, int(resources.get("GPU", 0) // gpus)), gpus
        return max(1, int(resources.get("CPU", 1) // self.cpus_per_actor)), gpus

    def torch_device(self) -> str:
        """``device``, with ``auto`` resolved: cuda when this process sees a GPU, else cpu."""
        import torch

        if self.device != "auto":
            return self.device
        return "cuda" if torch.cuda.is_available() else "cpu"


class DemucsOptions(Config):
    """How a Demucs model is applied (``demucs.apply.apply_model``'s arguments)."""

    segment: float | None = Field(
        default=None, gt=0, description="seconds per segment (default: the model's; an HT Demucs takes no more)"
    )
    overlap: float = Field(default=0.25, ge=0, lt=1, description="overlap of the segments")
    shifts: int = Field(
        default=0, ge=0, description="random shifts averaged (0: deterministic; Demucs's CLI default is 1)"
    )


#: The stems of a single-target checkpoint, in the order of its separation.
SINGLE_STEMS = ("instrument", "rest")


class SeparationSettings(Config):
    """How a file is separated and written; part of what decides a rerun.

    ``kind``: ``mask`` (the project's checkpoints: ``n_fft``, ``hop``, ``frames``, ``overlap``,
    ``wiener_iterations``) or ``demucs`` (a Demucs model: ``demucs``).
    ``model_stems``: the stems of a multi-stem checkpoint or a Demucs model in its order
    (a mask model's last, ``other``, is the rest of the mixture), empty for a
    single-target one; ``stems``: those written, in that order (empty: ``instrument`` and
    ``rest``).
    """

    kind: Literal["mask", "demucs"] = "mask"
    n_fft: int | None = None
    hop: int | None = None
    frames: int | None = None
    model_rate: Hertz
    demucs: DemucsOptions | None = None
    batch_size: int = 8
    overlap: float = 0.5
    block_seconds: Seconds = 60.0
    output_format: str = "flac"
    sample_rate: Hertz | None = None  # None: the source's
    channels: int | None = None  # None: the source's; 1: mono (mean of the channels)
    device: str = "cpu"
    model_stems: tuple[str, ...] = ()
    stems: tuple[str, ...] = ()
    wiener_iterations: int = Field(default=0, ge=0)

    @property
    def all_stems(self) -> tuple[str, ...]:
        """Every stem the separation computes, in order; the last is input minus the others."""
        return self.model_stems or SINGLE_STEMS

    @property
    def residual(self) -> str | None:
        """The stem written as the input minus the others: a mask model's last; a Demucs model
        writes every stem as it makes it (None)."""
        return None if self.kind == "demucs" else self.all_stems[-1]

    @property
    def written(self) -> tuple[str, ...]:
        """The stems written to files, in :attr:`all_stems` order."""
        return self.stems or SINGLE_STEMS

    @classmethod
    def of(cls, cfg: Any, meta: Mapping[str, Any]) -> SeparationSettings:
        """The settings of a separate configuration (``inference``, ``format``, ``sample_rate``,
        ``channels``, ``stems``, ``wiener_iterations``) with the checkpoint's metadata ``meta``;
        ConfigError when it is no separator or the stems do not fit it. A Demucs model's meta
        (``kind: demucs``, :func:`sepcore.separate.demucs.load`) takes the ``demucs`` section."""
        if meta.get("kind") == "demucs":
            return cls._of_demucs(cfg, meta)
        feature = meta.get("feature") or {}
        if meta.get("task") != "separator" or "n_fft" not in feature:
            raise ConfigError("checkpoint", f"{cfg.checkpoint} is not a separator checkpoint "
                              f"(task {meta.get('task')!r}); train an hourglass or BLSTM")  # fmt: skip
        model_stems = tuple(meta.get("stems") or ())
        stems = _written_stems(cfg, meta, model_stems)
        wiener = getattr(cfg, "wiener_iterations", None)
        inf = cfg.inference
        return cls(
            n_fft=int(feature["n_fft"]), hop=int(feature["hop"]), frames=int(meta["frames"]),
            model_rate=int(meta["sample_rate"]), batch_size=inf.batch_size, overlap=inf.overlap,
            block_seconds=inf.block_seconds, output_format=cfg.format, sample_rate=cfg.sample_rate,
            channels=cfg.channels, model_stems=model_stems, stems=stems,
            wiener_iterations=int(meta.get("wiener_iterations") or 0) if wiener is None else wiener,
        )  # fmt: skip

    @classmethod
    def _of_demucs(cls, cfg: Any, meta: Mapping[str, Any]) -> SeparationSettings:
        if getattr(cfg, "wiener_iterations", None) is not None:
            raise ConfigError("wiener_iterations", f"{cfg.checkpoint} is a Demucs model: the Wiener "
                              "filter applies to mask models only; remove the key")  # fmt: skip
        model_stems = tuple(meta["stems"])
        opts = getattr(cfg, "demucs", None) or DemucsOptions()
        if opts.segment is not None and opts.segment > float(meta.get("segment") or opts.segment):
            raise ConfigError("demucs.segment", f"{opts.segment} s is longer than the model takes "
                              f"({meta['segment']:g} s)")  # fmt: skip
        inf = cfg.inference
        return cls(
            kind="demucs", model_rate=int(meta["sample_rate"]), demucs=opts, batch_size=inf.batch_size,
            block_seconds=inf.block_seconds, output_format=cfg.format, sample_rate=cfg.sample_rate,
            channels=cfg.channels, model_stems=model_stems, stems=_written_stems(cfg, meta, model_stems),
        )  # fmt: skip

    def key(self) -> str:
        """Hash of the settings that change the stems (not batch size or device).

        Stems and Wiener iterations count only when set, so the hash of a single-target
        run without the filter is what it was before they existed. A Demucs model's:
        its ``demucs`` options, rate, output layout and stems.
        """
        if self.kind == "demucs":
            assert self.demucs is not None
            d = self.demucs
            demucs_fields = ("demucs", d.segment, d.overlap, d.shifts, self.model_rate, self.output_format,
                             self.sample_rate, self.channels, self.stems)  # fmt: skip
            return hashlib.sha256(repr(demucs_fields).encode()).hexdigest()[:12]
        fields: tuple[Any, ...] = (self.n_fft, self.hop, self.frames, self.model_rate, self.overlap,
                                   self.output_format, self.sample_rate, self.channels)  # fmt: skip
        if self.stems or self.wiener_iterations:
            fields += (self.stems, self.wiener_iterations)
        return hashlib.sha256(repr(fields).encode()).hexdigest()[:12]


def _written_stems(
    cfg: Any, meta: Mapping[str, Any], model_stems: tuple[str, ...]
) -> tuple[str, ...]:
    """The configured ``stems`` checked against the checkpoint's (default: all of them)."""
    requested = getattr(cfg, "stems", None)
    if not model_stems:
        if requested is not None:
            raise ConfigError("stems", f"{cfg.checkpoint} is a single-target checkpoint (target "
                              f"{meta.get('target')!r}): it writes instrument and rest; remove "
                              "the stems key")  # fmt: skip
        return ()
    if requested is None:
        return model_stems
    unknown = [s for s in requested if s not in model_stems]
    if unknown or not requested:
        raise ConfigError("stems", f"unknown stem(s) {unknown or '(none given)'}: the checkpoint "
                          f"separates {', '.join(model_stems)}")  # fmt: skip
    return tuple(s for s in model_stems if s in requested)
