"""prepare: sources -> mixing actors -> feature actors -> Parquet shards (or a stream).

    sep prepare -c configs/prepare_demo.yaml
    sep prepare -c configs/prepare_demo.yaml target=random_mix output=out/demo/shards_mix

Target mode (``target: guitar``): one row per track flows through a pool of mixing
actors (load and resample stems, QA flags, instrument/rest pair, silence adjustment)
and a pool of feature actors (features, chunks, targets), which write one Parquet
shard per track under ``<output>/shards/<split>/`` plus a small done-marker, so a
rerun skips finished tracks. Random-mix mode (``target: random_mix``, seed 001):
segment actors cut every usable stem into solo segments, which are balanced,
shuffled and grouped into random mixes by mixing actors once per mixing epoch.

``dataset.json`` (columns, shapes, dtype, feature parameters, shards, splits, QA and
silence statistics) is written after the shards and ``summary.json`` last.
:func:`stream_dataset` returns the same pipeline as a lazy Ray Dataset of rows.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import pickle
import sys
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Literal

from pydantic import Field, model_validator

from ray_jobs.common import TIMEOUTS, ItemWatchdog, Job, JobConfig, timeout_ledger
from sepcore.config import Config, changed_keys
from sepcore.data.classes import CLASSES
from sepcore.data.sources import SourceTrack, list_sources
from sepcore.errors import ConfigError, SepError
from sepcore.io import storage
from sepcore.prepare import pairs as P
from sepcore.prepare import qa, silence
from sepcore.prepare.mixing import assign_splits

log = logging.getLogger("sep.prepare")

MANIFEST = "dataset.json"
SPEC_FILE = "prepare_spec.json"
DONE = "_done"


class SourceConfig(Config):
    kind: Literal["slakh", "stems", "stemfile"] = Field(description="layout of the source")
    uri: str = Field(description="URI of the dataset root")
    name: str | None = Field(None, description="prefix of track ids (default: the kind)")
    splits: list[str] | None = Field(None, description="slakh only: splits to read")
    split: str | None = Field(None, description="stems/stemfile only: split of every track")


class SplitConfig(Config):
    train: float = Field(0.8, ge=0, le=1)
    validation: float = Field(0.1, ge=0, le=1)
    test: float = Field(0.1, ge=0, le=1)


class SilenceConfig(Config):
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


class ActorsConfig(Config):
    mix: int = Field(2, ge=1, description="most mixing actors")
    feature: int = Field(2, ge=1, description="most feature actors")
    cpus: float = Field(
        0.5, gt=0, description="CPUs reserved per actor (0.5: both pools can grow on every core)"
    )


class PrepareConfig(JobConfig):
    sources: list[SourceConfig] = Field(description="[{kind: slakh|stems|stemfile, uri: ...}, ...]")
    target: str = Field("guitar", description="class to separate (guitar, piano, ...) or random_mix")
    sample_rate: int = Field(22050, ge=8000, le=192000)
    channels: Literal[1, 2] = Field(1)
    seed: int = Field(0, description="split assignment and random mixes")
    split: SplitConfig = Field(default_factory=SplitConfig)
    silence: SilenceConfig = Field(default_factory=SilenceConfig)
    qa: QAConfig = Field(default_factory=QAConfig)
    features: FeatureConfig = Field(default_factory=FeatureConfig)
    chunks: ChunkConfig = Field(default_factory=ChunkConfig)
    outputs: list[Literal["target", "irm", "ibm", "activations"]] = Field(
        ["target", "activations"], description="per-chunk targets besides the mixture feature"
    )
    dtype: Literal["float16", "float32"] = Field("float16", description="storage dtype of arrays")
    random_mix: RandomMixConfig = Field(default_factory=RandomMixConfig)
    actors: ActorsConfig = Field(default_factory=ActorsConfig)
    max_failed_fraction: float = Field(0.2, ge=0, le=1, description="fail the job above this share")
    item_timeout_s: float = Field(
        3600.0, gt=0, description="time limit of one track in each actor stage (segment actors in "
        "random_mix mode), from its start: then the actor's process is ended and the track recorded "
        "as failed (an hour of audio takes minutes)",
    )

    @model_validator(mode="after")
    def _check(self) -> PrepareConfig:
        if self.target != "random_mix" and self.target not in CLASSES:
            raise ValueError(f"target must be one of {CLASSES} or random_mix, got '{self.target}'")
        if abs(self.split.train + self.split.validation + self.split.test - 1) > 1e-6:
            raise ValueError("split fractions must sum to 1")
        if self.random_mix.min_instruments > self.random_mix.max_instruments:
            raise ValueError("random_mix.min_instruments exceeds max_instruments")
        unknown = set(self.qa.exclude) - set(qa.FLAGS)
        if unknown:
            raise ValueError(f"qa.exclude: unknown flags {sorted(unknown)}; known: {qa.FLAGS}")
        to_spec(self)  # builds the feature extractor: bad parameters fail here
        return self


def to_spec(cfg: PrepareConfig) -> P.PrepareSpec:
    s = cfg.silence
    random_mix = cfg.target == "random_mix"
    outputs = tuple(o for o in cfg.outputs if not random_mix or o == "activations")
    spec = P.PrepareSpec(
        target=cfg.target, sample_rate=cfg.sample_rate, channels=cfg.channels,
        feature=cfg.features.params(), frames=cfg.chunks.frames, chunk_hop=cfg.chunks.hop,
        pad=cfg.chunks.pad, context=cfg.chunks.context, outputs=outputs, dtype=cfg.dtype,
        silence=P.SilenceSpec(s.target_ratio, s.cutoff_ratio, s.threshold_dbfs, s.min_silence_s)
        if s.enabled and not random_mix else None,
        detect_flags=cfg.qa.detect, exclude_flags=tuple(cfg.qa.exclude),
        skip_without_target=not random_mix,
    )  # fmt: skip
    spec.extractor()
    return spec


# ---------------------------------------------------------------- Ray Data operators


def _one_thread() -> None:
    """Several actors share the cores: one torch thread each is fastest (measured)."""
    import torch

    torch.set_num_threads(1)


def _watchdog(limit_s: float, ledger: str | None) -> ItemWatchdog:
    """The time limit per track of an actor; the failures go to ``ledger`` (None: no limit)."""
    return ItemWatchdog(limit_s, "item_timeout_s", ledger)


class MixActor:
    """Mixing actor: one track row -> its instrument/rest pair (pickled) or a status."""

    def __init__(self, spec: P.PrepareSpec, limit_s: float, ledger: str | None):
        _one_thread()
        self.spec = spec
        self.watchdog = _watchdog(limit_s, ledger)

    def __call__(self, row: dict[str, Any]) -> dict[str, Any]:
        track: SourceTrack = pickle.loads(row["track"])
        out = {"track_id": track.track_id, "split": row["split"], "pair": b"", "status": "ok", "reason": ""}
        missing = track.extra.get("missing_stems")
        if missing:  # a pair without them would be a different song than the track's mix
            files = ", ".join(f"{track.uri}/stems/{s}" for s in missing)
            return {**out, "status": "error", "reason": f"{track.track_id}: stem audio missing "
                    f"({files}), though metadata.yaml says it was rendered"}
        timed_out = self.watchdog.recorded(track.track_id)
        if timed_out is not None:  # this call is Ray's retry after the time limit ended the actor
            return {**out, "status": "error", "reason": timed_out}
        try:
            with self.watchdog.running(track.track_id):
                pair = P.mix_track(track, self.spec)
        except P.SkipTrack as exc:
            return {**out, "status": "skipped", "reason": str(exc)}
        except SepError as exc:
            return {**out, "status": "error", "reason": str(exc)}
        except Exception as exc:  # a bug on one track must not stop the others
            return {**out, "status": "error", "reason": f"{track.track_id}: {type(exc).__name__}: {exc}"}
        return {**out, "pair": pickle.dumps(pair, protocol=5)}


class FeatureActor:
    """Feature actor: a pair -> chunk rows; with ``output`` it writes the track's shard
    and done-marker and returns one result row instead."""

    def __init__(self, spec: P.PrepareSpec, output: str | None, limit_s: float, ledger: str | None):
        _one_thread()
        self.spec = spec
        self.output = output
        self.extractor = spec.extractor()
        self.watchdog = _watchdog(limit_s, ledger)

    def __call__(self, row: dict[str, Any]) -> list[dict[str, Any]]:
        result = {k: row[k] for k in ("track_id", "split", "status", "reason")}
        rows: list[dict[str, Any]] = []
        timed_out = self.watchdog.recorded(row["track_id"]) if row["status"] == "ok" else None
        if timed_out is not None:  # this call is Ray's retry after the time limit ended the actor
            result.update(status="error", reason=timed_out)
        elif row["status"] == "ok":
            with self.watchdog.running(row["track_id"]):
                rows = self._chunks(row, result)
        if self.output is None:
            return rows
        return [self._commit(result, rows)]

    def _chunks(self, row: dict[str, Any], result: dict[str, Any]) -> list[dict[str, Any]]:
        """The chunk rows of a pair; ``result`` gets the track's facts, or its error."""
        pair: P.TrackPair = pickle.loads(row["pair"])
        try:
            arrays = P.feature_chunks(pair, self.spec, self.extractor)
        except (SepError, ValueError) as exc:
            result.update(status="error", reason=f"{row['track_id']}: {exc}")
            return []
        rows = P.track_rows(row["track_id"], row["split"], arrays)
        result.update(
            rows=len(rows), seconds=round(pair.mix.shape[-1] / self.spec.sample_rate, 3),
            flags=pair.flags, excluded=pair.excluded, silence=pair.silence,
        )  # fmt: skip
        return rows

    def _commit(self, result: dict[str, Any], rows: list[dict[str, Any]]) -> dict[str, Any]:
        name = P.shard_name(result["track_id"])
        if rows:
            shard = storage.join(self.output, "shards", result["split"], name + ".parquet")
            storage.write_bytes(shard, P.rows_to_parquet(rows))
            result["shard"] = shard
        if result["status"] != "error":  # errors are retried by the next run
            storage.write_text(storage.join(self.output, DONE, name + ".json"), json.dumps(result))
        return {"result": json.dumps(result)}


def _track_dataset(tracks: list[SourceTrack], splits: dict[str, str]):
    import ray

    items = [{"track": pickle.dumps(t), "split": splits[t.track_id]} for t in tracks]
    return ray.data.from_items(items, override_num_blocks=max(1, len(items)))


def _pipeline(cfg: PrepareConfig, spec: P.PrepareSpec, tracks, splits, output: str | None,
              ledger: str | None = None):  # fmt: skip
    """Mixing and feature actors over ``tracks``; ``ledger`` (a :func:`timeout_ledger`)
    enables the time limit per track (a stream without an output has none)."""
    a, limit = cfg.actors, cfg.item_timeout_s
    ds = _track_dataset(tracks, splits)
    ds = ds.map(MixActor, fn_constructor_args=(spec, limit, ledger), concurrency=(1, a.mix), num_cpus=a.cpus)
    return ds.flat_map(FeatureActor, fn_constructor_args=(spec, output, limit, ledger),
                       concurrency=(1, a.feature), num_cpus=a.cpus)  # fmt: skip


def _sources_and_splits(cfg: PrepareConfig) -> tuple[list[SourceTrack], dict[str, str], list[str]]:
    errors: list = []
    specs = [{k: v for k, v in s.model_dump().items() if v is not None} for s in cfg.sources]
    tracks = list_sources(specs, errors)
    if cfg.qa.flags_csv:
        manual = qa.read_flags_csv(storage.read_text(cfg.qa.flags_csv), cfg.qa.flags_csv)
        tracks = P.apply_manual_flags(tracks, manual)
    fixed = {t.track_id: t.split for t in tracks if t.split}
    fractions = cfg.split.model_dump()
    splits = assign_splits([t.track_id for t in tracks], fractions, cfg.seed, fixed)
    return tracks, splits, [str(e) for e in errors]


def stream_dataset(cfg: PrepareConfig):
    """The prepare pipeline as a lazy Ray Dataset of chunk rows (nothing is written).

    Rows are those of the shards (see :mod:`sepcore.prepare.pairs`); decode array columns
    with :func:`sepcore.prepare.pairs.decode_column` and :func:`sepcore.prepare.pairs.row_shapes`.
    """
    if cfg.target == "random_mix":
        raise ConfigError("target", "streaming is available for instrument targets only")
    spec = to_spec(cfg)
    tracks, splits, _ = _sources_and_splits(cfg)
    return _pipeline(cfg, spec, tracks, splits, None)


# ---------------------------------------------------------------- driver


def _check_spec_file(output: str, spec: P.PrepareSpec) -> None:
    uri = storage.join(output, SPEC_FILE)
    wanted = json.loads(json.dumps(dataclasses.asdict(spec)))
    if storage.exists(uri):
        found = json.loads(storage.read_text(uri))
        diff = changed_keys(found, wanted)
        if diff:
            raise ConfigError(
                "output", f"{output} holds data prepared with other parameters ({', '.join(diff)}); "
                "use a new output"
            )
        return
    storage.write_text(uri, json.dumps(wanted, indent=2))


def _read_markers(output: str) -> list[dict[str, Any]]:
    uris = storage.list_files(storage.join(output, DONE), suffix=".json")
    with ThreadPoolExecutor(max_workers=16) as pool:
        return [json.loads(t) for t in pool.map(storage.read_text, uris)]


def run(cfg: PrepareConfig) -> dict[str, Any]:
    output = storage.normalize_uri(cfg.output)
    spec = to_spec(cfg)
    _check_spec_file(output, spec)
    tracks, splits, listing_errors = _sources_and_splits(cfg)
    if cfg.target == "random_mix":
        from ray_jobs.prepare_mix import run_random_mix

        return run_random_mix(cfg, spec, tracks, splits, output, listing_errors)
    done = {u.rsplit("/", 1)[-1][: -len(".json")] for u in storage.list_files(storage.join(output, DONE))}
    pending = [t for t in tracks if P.shard_name(t.track_id) not in done]
    log.info("prepare: %d tracks, %d done before, %d to prepare", len(tracks), len(tracks) - len(pending), len(pending))
    errors: list[dict[str, str]] = []
    ledger = timeout_ledger(output)
    for i, row in enumerate(_pipeline(cfg, spec, pending, splits, output, ledger).iter_rows() if pending else []):
        res = json.loads(row["result"])
        state = res["reason"] if res["status"] != "ok" else f"{res['rows']} chunks"
        log.info("prepare [%d/%d] %s (%s): %s", i + 1, len(pending), res["track_id"], res["split"], state)
        if res["status"] == "error":
            errors.append({"item": res["track_id"], "error": res["reason"]})
    storage.delete(storage.join(output, TIMEOUTS), recursive=True)
    markers = _read_markers(output)
    manifest = write_manifest(output, cfg, spec, markers)
    return _summary(manifest, markers, errors, listing_errors, len(tracks) - len(pending), cfg)


def write_manifest(output: str, cfg: PrepareConfig, spec: P.PrepareSpec, markers: list[dict]) -> dict:
    ok = [m for m in markers if m["status"] == "ok"]
    shards = sorted(({"uri": m["shard"], "split": m["split"], "track_id": m["track_id"], "rows": m["rows"]}
                     for m in ok if m.get("shard")), key=lambda s: s["uri"])  # fmt: skip
    ratios = [m["silence"] for m in ok if m.get("silence")]
    manifest = {
        **P.dataset_schema(spec),
        "shards": shards,
        "splits": {s: sorted(m["track_id"] for m in ok if m["split"] == s) for s in sorted({m["split"] for m in ok})},
        "rows_per_split": _rows_per_split(shards),
        "skipped": {m["track_id"]: m["reason"] for m in markers if m["status"] == "skipped"},
        "qa_flags": {m["track_id"]: {k: v for k, v in m["flags"].items() if v} for m in ok if any(m["flags"].values())},
        "silence_histogram": silence_histogram_rows(ratios) if ratios else None,
        "config": cfg.model_dump(mode="json"),
    }
    storage.write_text(storage.join(output, MANIFEST), json.dumps(manifest, indent=1))
    return manifest


def _rows_per_split(shards: list[dict[str, Any]]) -> dict[str, int]:
    counts: Counter[str] = Counter()
    for shard in shards:
        counts[shard["split"]] += shard["rows"]
    return dict(sorted(counts.items()))


def silence_histogram_rows(ratios: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        "before": silence.silence_histogram([r["ratio_before"] for r in ratios]),
        "after": silence.silence_histogram([r["ratio_after"] for r in ratios]),
    }


def _summary(manifest, markers, errors, listing_errors, skipped_done, cfg) -> dict[str, Any]:
    ok = [m for m in markers if m["status"] == "ok"]
    rows = sum(s["rows"] for s in manifest["shards"])
    failed = errors + [{"item": "listing", "error": e} for e in listing_errors]
    total = len(markers) + len(errors) + len(listing_errors)  # a track that could not be listed counts
    summary: dict[str, Any] = {
        "counts": {
            "tracks": total, "prepared": len(ok), "skipped": len(manifest["skipped"]),
            "done_before": skipped_done, "failed": len(failed), "rows": rows,
            "shards": len(manifest["shards"]),
        },
        "figures": {
            "audio_seconds": round(sum(m.get("seconds", 0) for m in ok), 1),
            "rows_per_split": manifest["rows_per_split"],
        },
        "failed": failed,
        "silence_histogram": manifest["silence_histogram"],
    }  # fmt: skip
    if failed and len(failed) > cfg.max_failed_fraction * max(total, 1):
        summary["status"] = "failed"
        summary["error"] = f"{len(failed)} of {total} tracks failed"
    return summary


JOB = Job("prepare", PrepareConfig, run, "Prepare training shards from multitrack sources.")
main = JOB.main

if __name__ == "__main__":
    sys.exit(main())
