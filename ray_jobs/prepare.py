"""prepare: sources -> mixing actors -> feature actors -> Parquet shards (or a stream).

    sep prepare -c configs/prepare_demo.yaml
    sep prepare -c configs/prepare_demo.yaml target=random_mix output=out/demo/shards_mix

Target mode (``target: guitar``): one row per track flows through a pool of mixing
actors (load and resample stems, QA flags, instrument/rest pair, silence adjustment)
and a pool of feature actors (features, chunks, targets), which write one Parquet
shard per track under ``<output>/shards/<split>/`` plus a small done-record, so a
rerun skips finished tracks. Random-mix mode (``target: random_mix``, seed 001):
segment actors cut every usable stem into solo segments, which are balanced,
shuffled and grouped into random mixes by mixing actors once per mixing epoch
(:mod:`ray_jobs.prepare_mix`).

``dataset.json`` (columns, shapes, dtype, feature parameters, shards, splits, QA and
silence statistics) is written after the shards and ``summary.json`` last.
:func:`stream_dataset` returns the same pipeline as a lazy Ray Dataset of rows.
The per-track work is :mod:`sepcore.prepare.steps`, the documents :mod:`sepcore.prepare.manifest`.
"""

from __future__ import annotations

import contextlib
import json
import sys
from typing import Any, Literal

from pydantic import Field, model_validator

from ray_jobs.common import Job, JobConfig
from ray_jobs.prepare_mix import TrackActor, one_thread, pool, run_random_mix, track_dataset
from sepcore.batch import (
    TIMEOUTS,
    ItemWatchdog,
    Progress,
    check_settings,
    settings_fingerprint,
    timeout_ledger,
    verdict,
)
from sepcore.config import to_plain
from sepcore.data.sources import SourceTrack
from sepcore.errors import ConfigError
from sepcore.io import storage
from sepcore.io.ledger import Ledger
from sepcore.prepare import config as C
from sepcore.prepare import manifest as M
from sepcore.prepare import steps
from sepcore.prepare.config import PrepareSpec, SplitConfig

MANIFEST = M.MANIFEST
__all__ = ["JOB", "MANIFEST", "PrepareConfig", "SplitConfig", "main", "run", "stream_dataset"]


class PrepareConfig(JobConfig):
    sources: list[C.SourceConfig] = Field(description="[{kind: slakh|stems|stemfile, uri: ...}, ...]")
    target: str = Field("guitar", description="class to separate (guitar, piano, ...) or random_mix")
    sample_rate: int = Field(22050, ge=8000, le=192000)
    channels: Literal[1, 2] = Field(1)
    seed: int = Field(0, description="split assignment and random mixes")
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
    actors: C.ActorsConfig = Field(default_factory=C.ActorsConfig)
    max_failed_fraction: float = Field(0.2, ge=0, le=1, description="fail the job above this share")
    item_timeout_s: float = Field(
        3600.0, gt=0, description="time limit of one track in each actor stage (segment actors in "
        "random_mix mode), from its start: then the actor's process is ended and the track recorded "
        "as failed (an hour of audio takes minutes)",
    )

    @model_validator(mode="after")
    def _check(self) -> PrepareConfig:
        C.check(self)  # builds the feature extractor too: bad parameters fail here
        return self


class FeatureActor:
    """Feature actor: a pair -> chunk rows; with ``output`` it writes the track's shard
    and done-record and returns one result row instead."""

    def __init__(self, spec: PrepareSpec, output: str | None, done: Ledger | None, limit_s: float,
                 ledger: str | None):  # fmt: skip
        one_thread()
        self.spec, self.extractor, self.output, self.done = spec, spec.extractor(), output, done
        self.watchdog = ItemWatchdog(limit_s, "item_timeout_s", ledger)

    def __call__(self, row: dict[str, Any]) -> list[dict[str, Any]]:
        timed_out = self.watchdog.recorded(row["track_id"]) if row["status"] == "ok" else None
        if timed_out is not None:  # this call is Ray's retry after the time limit ended the actor
            row = {**row, "status": "error", "reason": timed_out}
        ok = row["status"] == "ok"
        with self.watchdog.running(row["track_id"]) if ok else contextlib.nullcontext():
            rows, result = steps.chunk_rows(row, self.spec, self.extractor)
        if self.output is None or self.done is None:
            return rows
        return [{"result": json.dumps(steps.commit_track(self.output, self.done, result, rows))}]


def _pipeline(cfg: PrepareConfig, spec: PrepareSpec, tracks: list[SourceTrack], splits: dict[str, str],
              output: str | None = None, done: Ledger | None = None, ledger: str | None = None) -> Any:  # fmt: skip
    """Mixing and feature actors over ``tracks``; ``ledger`` (a :func:`timeout_ledger`)
    enables the time limit per track (a stream without an output has none)."""
    a, limit = cfg.actors, cfg.item_timeout_s
    ds = track_dataset(tracks, splits)
    mix = (steps.pair_row, limit, ledger, spec)
    ds = ds.map(TrackActor, fn_constructor_args=mix, compute=pool(a.mix), num_cpus=a.cpus)
    return ds.flat_map(FeatureActor, fn_constructor_args=(spec, output, done, limit, ledger),
                       compute=pool(a.feature), num_cpus=a.cpus)  # fmt: skip


def stream_dataset(cfg: PrepareConfig) -> Any:
    """The prepare pipeline as a lazy Ray Dataset of chunk rows (nothing is written).

    Rows are those of the shards (see :mod:`sepcore.prepare.pairs`); decode array columns
    with :func:`sepcore.prepare.pairs.decode_column` and :func:`sepcore.prepare.pairs.row_shapes`.
    """
    if cfg.target == "random_mix":
        raise ConfigError("target", "streaming is available for instrument targets only")
    tracks, splits, _ = M.list_tracks(cfg.sources, cfg.qa, cfg.split, cfg.seed)
    return _pipeline(cfg, PrepareSpec.of(cfg), tracks, splits)


def _run_tracks(cfg: PrepareConfig, spec: PrepareSpec, tracks: list[SourceTrack], splits: dict[str, str],
                output: str, done: Ledger, timeouts: str, listing: list[dict[str, str]]) -> dict[str, Any]:  # fmt: skip
    """Instrument-target mode: the tracks not done before -> shards; the summary."""
    finished = done.records()
    todo = [t for t in tracks if t.track_id not in finished]
    progress = Progress("prepare", len(todo), len(tracks) - len(todo), "track")
    errors: list[dict[str, str]] = []
    for row in _pipeline(cfg, spec, todo, splits, output, done, timeouts).iter_rows() if todo else []:
        res = json.loads(row["result"])
        state = res["reason"] if res["status"] != "ok" else f"{res['rows']} chunks"
        progress.update(f"{res['track_id']} ({res['split']})", state, failed=res["status"] == "error")
        if res["status"] == "error":
            errors.append({"item": res["track_id"], "error": res["reason"]})
    progress.close()
    records = list(done.records().values())
    manifest = M.track_manifest(spec, records, to_plain(cfg))
    M.write_manifest(output, manifest)
    return M.track_summary(manifest, records, errors + listing, len(tracks) - len(todo))


def run(cfg: PrepareConfig) -> dict[str, Any]:
    output = storage.normalize_uri(cfg.output)
    spec = PrepareSpec.of(cfg)
    check_settings(output, M.SPEC_FILE, spec.settings())
    done = Ledger(storage.join(output, M.DONE), settings_fingerprint(spec.settings()))
    tracks, splits, listing_errors = M.list_tracks(cfg.sources, cfg.qa, cfg.split, cfg.seed)
    mode = run_random_mix if cfg.target == "random_mix" else _run_tracks
    summary = mode(cfg, spec, tracks, splits, output, done, timeout_ledger(output),
                   [{"item": "listing", "error": e} for e in listing_errors])  # fmt: skip
    storage.delete(storage.join(output, TIMEOUTS), recursive=True)
    counts = summary["counts"]
    return {**summary, **verdict(counts["failed"], counts["tracks"], cfg.max_failed_fraction, "tracks")}


JOB = Job("prepare", PrepareConfig, run, "Prepare training shards from multitrack sources.")
main = JOB.main

if __name__ == "__main__":
    sys.exit(main())
