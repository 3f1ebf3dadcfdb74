"""prepare: sources -> mixing actors -> feature actors -> Parquet shards (or a stream).

    sep prepare -c configs/prepare_demo.yaml
    sep prepare -c configs/prepare_demo.yaml target=random_mix output=out/demo/shards_mix
    sep prepare -c configs/prepare_demo.yaml target=null "targets=[bass, drums, guitar, piano, strings]"

See docs/prepare.md. Random-mix mode is :mod:`ray_jobs.prepare_mix`; the per-track work
is :mod:`sepcore.prepare.steps`, the documents and summaries :mod:`sepcore.prepare.manifest`.
"""

from __future__ import annotations

import json
import pickle
import sys
from typing import Any, Literal

from pydantic import Field, SerializerFunctionWrapHandler, model_serializer, model_validator

from ray_jobs.common import Job, JobConfig
from ray_jobs.prepare_mix import (
    TrackActor,
    WarmPool,
    one_thread,
    pool,
    run_random_mix,
    track_dataset,
)
from sepcore.batch import ItemWatchdog, clear_timeouts, timeout_ledger, verdict
from sepcore.config import to_plain
from sepcore.data.sources import SourceTrack
from sepcore.errors import ConfigError
from sepcore.io.ledger import Ledger
from sepcore.prepare import config as C
from sepcore.prepare import manifest as M
from sepcore.prepare import steps
from sepcore.prepare.augment import donor_pool
from sepcore.prepare.config import PrepareSpec, SplitConfig

MANIFEST = M.MANIFEST
__all__ = ["JOB", "MANIFEST", "PrepareConfig", "SplitConfig", "main", "run", "stream_dataset"]


class PrepareConfig(JobConfig):
    sources: list[C.SourceConfig] = Field(description="[{kind: slakh|stems|stemfile, uri: ...}, ...]")
    target: str | None = Field("guitar", description="class to separate (guitar, piano, ...) or random_mix; "
                               "null with targets")  # fmt: skip
    targets: list[str] | None = Field(
        None, description="several classes at once (bass, drums, ...): a targets column of their stems and "
        "'other' (target: null)",
    )
    sample_rate: int = Field(22050, ge=8000, le=192000)
    channels: Literal[1, 2] = Field(1)
    seed: int = Field(0, description="split assignment, random mixes and augmentation")
    split: SplitConfig = Field(default_factory=SplitConfig)
    silence: C.SilenceConfig = Field(default_factory=C.SilenceConfig)
    qa: C.QAConfig = Field(default_factory=C.QAConfig)
    features: C.FeatureConfig = Field(default_factory=C.FeatureConfig)
    chunks: C.ChunkConfig = Field(default_factory=C.ChunkConfig)
    outputs: list[Literal["target", "irm", "ibm", "activations"]] = Field(
        ["target", "activations"], description="per-chunk targets besides the mixture feature"
    )
    dtype: Literal["float16", "float32"] = Field("float16", description="storage dtype of arrays")
    random_mix: C.RandomMixConfig = Field(default_factory=C.RandomMixConfig)
    augment: C.AugmentConfig = Field(default_factory=C.AugmentConfig)
    actors: C.ActorsConfig = Field(default_factory=C.ActorsConfig)
    max_failed_fraction: float = Field(0.2, ge=0, le=1, description="fail the job above this share")
    item_timeout_s: float = Field(
        3600.0, gt=0, description="time limit of one track in each actor stage (segment actors in "
        "random_mix mode), from its start: then the actor's process is ended and the track recorded "
        "as failed (an hour of audio takes minutes)",
    )

    @model_validator(mode="before")
    @classmethod
    def _default_target(cls, data: Any) -> Any:
        return C.default_target(data)  # targets alone: target null

    @model_serializer(mode="wrap")
    def _dump(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        """Without ``targets`` the dump is what it was before the key existed (tune's variant
        keys, the ``config`` of dataset.json and summary.json stay as they were)."""
        plain = handler(self)
        if plain.get("targets") is None:
            plain.pop("targets", None)
        return plain

    @model_validator(mode="after")
    def _check(self) -> PrepareConfig:
        C.check(self)  # builds the feature extractor too: bad parameters fail here
        return self


class FeatureActor:
    """Feature actor: :func:`sepcore.prepare.steps.feature_rows` per pair row."""

    def __init__(self, spec: PrepareSpec, output: str | None, done: Ledger | None, limit_s: float,
                 ledger: str | None):  # fmt: skip
        one_thread()
        watchdog = ItemWatchdog(limit_s, "item_timeout_s", ledger)
        self.args = (spec, spec.extractor(), watchdog, output, done)

    def __call__(self, row: dict[str, Any]) -> list[dict[str, Any]]:
        return steps.feature_rows(row, *self.args)


def _pipeline(cfg: PrepareConfig, spec: PrepareSpec, tracks: list[SourceTrack], splits: dict[str, str],
              donors: dict[str, list[SourceTrack]] | None, output: str | None = None, done: Ledger | None = None,
              ledger: str | None = None) -> Any:  # fmt: skip
    """Track actors (or mixing and feature actors) over ``tracks``; ``donors``: the remix donors of each augmented
    split (None without augmentation); ``ledger`` (a :func:`timeout_ledger`) enables the time
    limit per track (a stream without an output has none)."""
    a, limit = cfg.actors, cfg.item_timeout_s
    ds = track_dataset(tracks, splits)
    if a.fuse:  # both steps in one actor: the track's audio never leaves the process
        both = (steps.track_step, limit, ledger, spec, spec.extractor(), output, done, donors)
        return ds.flat_map(TrackActor, fn_constructor_args=both, compute=pool(a.feature), num_cpus=a.cpus)
    mix = (steps.pair_row, limit, ledger, spec, donors)
    ds = ds.map(TrackActor, fn_constructor_args=mix, compute=pool(a.mix), num_cpus=a.cpus)
    return ds.flat_map(FeatureActor, fn_constructor_args=(spec, output, done, limit, ledger),
                       compute=pool(a.feature), num_cpus=a.cpus)  # fmt: skip


def stream_dataset(cfg: PrepareConfig) -> Any:
    """The prepare pipeline as a lazy Ray Dataset of chunk rows (nothing is written).

    Rows are those of the shards (see :mod:`sepcore.prepare.pairs`; with ``targets`` the
    ``targets`` column of every stem); decode array columns with :func:`sepcore.prepare.pairs.decode_column` and :func:`sepcore.prepare.pairs.row_shapes`.
    """
    if cfg.target == "random_mix":
        raise ConfigError("target", "streaming is available for instrument targets only")
    tracks, splits, _ = M.list_tracks(cfg.sources, cfg.qa, cfg.split, cfg.seed)
    return _pipeline(cfg, PrepareSpec.of(cfg), tracks, splits, _donors(cfg, tracks, splits))


def _donors(cfg: PrepareConfig, tracks: list[SourceTrack], splits: dict[str, str]) -> dict[str, list[SourceTrack]] | None:
    """The remix donors of every track (done before or not), by split; None without remixing."""
    return donor_pool(tracks, splits, cfg.augment) if cfg.augment.remix_copies else None


def _warm_pool(cfg: PrepareConfig, spec: PrepareSpec, output: str, done: Ledger, timeouts: str) -> WarmPool:
    """The track workers, started before the tracks are listed (their imports overlap it)."""
    args = (steps.track_step, cfg.item_timeout_s, timeouts, spec, spec.extractor(), output, done)
    return WarmPool(cfg.actors.feature, cfg.actors.cpus, args)


def _run_tracks(cfg: PrepareConfig, spec: PrepareSpec, tracks: list[SourceTrack], splits: dict[str, str],
                output: str, done: Ledger, timeouts: str, listing: list[dict[str, str]],
                warm: WarmPool | None = None) -> dict[str, Any]:  # fmt: skip
    """Instrument-target mode: the tracks not done before -> shards; the summary. ``warm``: the
    fused workers (``actors.fuse``), else Ray Data's mixing and feature pools."""
    finished = done.records()
    todo = [t for t in tracks if t.track_id not in finished]
    progress = M.TrackProgress(len(todo), len(tracks) - len(todo))
    donors = _donors(cfg, tracks, splits)
    if warm is not None:
        import ray

        items = [(pickle.dumps(t), splits[t.track_id]) for t in todo]
        refs = None if donors is None else ray.put(donors)
        results = (r["result"] for rows in warm.run(items, refs) for r in rows)
    else:
        rows = _pipeline(cfg, spec, todo, splits, donors, output, done, timeouts).iter_rows() if todo else []
        results = (r["result"] for r in rows)
    for result in results:
        progress.update(json.loads(result))
    progress.close()
    return M.finish_tracks(output, spec, done, to_plain(cfg), progress.errors + listing, len(tracks) - len(todo))


def run(cfg: PrepareConfig) -> dict[str, Any]:
    spec = PrepareSpec.of(cfg)
    output, done = M.open_output(cfg.output, spec.settings())
    timeouts = timeout_ledger(output)
    fused = cfg.target != "random_mix" and cfg.actors.fuse
    warm = _warm_pool(cfg, spec, output, done, timeouts) if fused else None
    try:
        tracks, splits, listing_errors = M.list_tracks(cfg.sources, cfg.qa, cfg.split, cfg.seed)
        listing = [{"item": "listing", "error": e} for e in listing_errors]
        if cfg.target == "random_mix":
            summary = run_random_mix(cfg, spec, tracks, splits, output, done, timeouts, listing)
        else:
            summary = _run_tracks(cfg, spec, tracks, splits, output, done, timeouts, listing, warm)
    finally:
        if warm is not None:
            warm.close()
    clear_timeouts(output)
    counts = summary["counts"]
    return {**summary, **verdict(counts["failed"], counts["tracks"], cfg.max_failed_fraction, "tracks")}


JOB = Job("prepare", PrepareConfig, run, "Prepare training shards from multitrack sources.")
main = JOB.main

if __name__ == "__main__":
    sys.exit(main())
