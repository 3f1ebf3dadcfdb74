"""prepare, random-mix mode (seed 001): solo segments -> balanced, shuffled random mixes.

Called by ``ray_jobs.prepare`` when ``target: random_mix``:

1. segment actors cut every usable stem of every track into solo segments of
   ``random_mix.segment_seconds`` (silent segments and QA-excluded stems left out);
   the segments are materialised once (Ray's object store spills to disk);
2. per split, training segments are balanced by class (at most
   ``max_oversample`` x, seed 001 §4.1.2); validation and test are not;
3. per mixing epoch, all segments are shuffled (seeded) and mixing actors group each
   batch of ``batch_mixes`` segments, split by split, into mixes of 1..4 instruments
   with seed 001's levels, every segment once per epoch; feature actors turn each
   batch of mixes into chunk rows and write one shard per batch and split;
4. a marker per finished epoch lists its shards; a rerun skips those.

Segments never cross splits, so no track reaches two splits.
"""

from __future__ import annotations

import hashlib
import json
import logging
import pickle
from collections import Counter
from typing import Any

import numpy as np

from ray_jobs.common import TIMEOUTS, timeout_ledger
from sepcore.data.sources import SourceTrack
from sepcore.errors import SepError
from sepcore.io import storage
from sepcore.prepare import mixing
from sepcore.prepare import pairs as P

log = logging.getLogger("sep.prepare")


class SegmentActor:
    """Segment actor: one track -> its solo segments (or one error row)."""

    def __init__(self, spec: P.PrepareSpec, seconds: float, limit_s: float, ledger: str):
        from ray_jobs.prepare import _one_thread, _watchdog

        _one_thread()
        self.spec, self.seconds = spec, seconds
        self.watchdog = _watchdog(limit_s, ledger)

    def __call__(self, row: dict[str, Any]) -> list[dict[str, Any]]:
        track: SourceTrack = pickle.loads(row["track"])
        base = {"track_id": track.track_id, "split": row["split"]}
        failed = {**base, "segment_id": "", "inst_class": "", "audio": b""}
        timed_out = self.watchdog.recorded(track.track_id)
        if timed_out is not None:  # this call is Ray's retry after the time limit ended the actor
            return [{**failed, "error": timed_out}]
        try:
            with self.watchdog.running(track.track_id):
                segments = P.solo_segments(track, self.spec, self.seconds)
        except SepError as exc:
            return [{**failed, "error": str(exc)}]
        return [{**base, "segment_id": sid, "inst_class": cls, "audio": pickle.dumps(a, protocol=5), "error": ""}
                for sid, cls, a in segments]  # fmt: skip


class MixBatchActor:
    """Mixing actor: a batch of shuffled segments -> random mixes (seed 001 levels).

    Segments of different splits in one batch are mixed only with their own split.
    """

    def __init__(self, spec: P.PrepareSpec, min_n: int, max_n: int, seed: int, epoch: int):
        from ray_jobs.prepare import _one_thread

        _one_thread()
        self.spec, self.min_n, self.max_n, self.seed, self.epoch = spec, min_n, max_n, seed, epoch

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, list]:
        out: dict[str, list] = {"mix_id": [], "split": [], "pair": [], "levels": []}
        for split in sorted(set(batch["split"])):
            rows = [i for i, s in enumerate(batch["split"]) if s == split]
            ids = [f"{batch['segment_id'][i]}#{batch['copy'][i]}" for i in rows]
            audio = {sid: pickle.loads(batch["audio"][i]) for sid, i in zip(ids, rows, strict=True)}
            key = hashlib.sha1("|".join(sorted(ids)).encode()).hexdigest()[:12]
            rng = np.random.default_rng([self.seed, self.epoch, int(key, 16)])
            classes = [batch["inst_class"][i] for i in rows]
            for plan in mixing.plan_mixes(list(zip(ids, classes, strict=True)), rng, self.min_n, self.max_n):
                out["mix_id"].append(f"{split}-e{self.epoch:03d}-{key}-{plan.mix_id.split('-')[-1]}")
                out["split"].append(split)
                out["pair"].append(pickle.dumps(P.render_mix(plan, audio, self.spec), protocol=5))
                out["levels"].append(P.level_vector(plan).tobytes())
        return out


class MixFeatureActor:
    """Feature actor: a batch of mixes -> chunk rows, written as one shard per split."""

    def __init__(self, spec: P.PrepareSpec, output: str, epoch: int):
        from ray_jobs.prepare import _one_thread

        _one_thread()
        self.spec, self.output, self.epoch = spec, output, epoch
        self.extractor = spec.extractor()

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, list]:
        by_split: dict[str, list[dict[str, Any]]] = {}
        mixes: Counter[str] = Counter()
        for mix_id, split, blob, levels in zip(batch["mix_id"], batch["split"], batch["pair"], batch["levels"], strict=True):
            pair: P.TrackPair = pickle.loads(blob)
            arrays = P.feature_chunks(pair, self.spec, self.extractor)
            lv = np.frombuffer(levels, dtype=np.float32)
            by_split.setdefault(split, []).extend(P.track_rows(mix_id, split, arrays, {"levels": lv}))
            mixes[split] += 1
        out: dict[str, list] = {"shard": [], "split": [], "rows": [], "mixes": []}
        for split, rows in sorted(by_split.items()):
            key = hashlib.sha1("|".join(sorted({r["track_id"] for r in rows})).encode()).hexdigest()[:12]
            shard = storage.join(self.output, "shards", split, f"mix-e{self.epoch:03d}-{key}.parquet")
            storage.write_bytes(shard, P.rows_to_parquet(rows))
            for k, v in (("shard", shard), ("split", split), ("rows", len(rows)), ("mixes", mixes[split])):
                out[k].append(v)
        return out


def _copies(meta: list[dict[str, Any]], split: str, cfg, seed: int) -> Counter[str]:
    """How often each segment of ``split`` is used per epoch (balanced in train)."""
    per_class: dict[str, list[str]] = {}
    for m in meta:
        if m["split"] == split:
            per_class.setdefault(m["inst_class"], []).append(m["segment_id"])
    if split == "train" and cfg.random_mix.balance:
        rng = np.random.default_rng([seed, 1])
        per_class = mixing.balance(per_class, rng, max_oversample=cfg.random_mix.max_oversample)
    return Counter(s for ids in per_class.values() for s in ids)


def _epoch_pipeline(segments, cfg, spec, output: str, epoch: int, copies: Counter[str]):
    rm, a = cfg.random_mix, cfg.actors

    def expand(row: dict[str, Any]) -> list[dict[str, Any]]:
        return [{**row, "copy": c} for c in range(copies.get(row["segment_id"], 0))]

    ds = segments.flat_map(expand).random_shuffle(seed=cfg.seed * 1000 + epoch)
    ds = ds.map_batches(
        MixBatchActor, batch_size=rm.batch_mixes, concurrency=(1, a.mix), num_cpus=a.cpus,
        fn_constructor_args=(spec, rm.min_instruments, rm.max_instruments, cfg.seed, epoch),
    )  # fmt: skip
    return ds.map_batches(
        MixFeatureActor, batch_size=rm.batch_mixes, concurrency=(1, a.feature), num_cpus=a.cpus,
        fn_constructor_args=(spec, output, epoch),
    )  # fmt: skip


def run_random_mix(cfg, spec: P.PrepareSpec, tracks: list[SourceTrack], splits: dict[str, str],
                   output: str, listing_errors: list[str]) -> dict[str, Any]:  # fmt: skip
    from ray_jobs.prepare import _track_dataset

    a = cfg.actors
    ledger = timeout_ledger(output)
    segments = (
        _track_dataset(tracks, splits)
        .flat_map(SegmentActor, fn_constructor_args=(spec, cfg.random_mix.segment_seconds, cfg.item_timeout_s,
                                                     ledger), concurrency=(1, a.mix), num_cpus=a.cpus)  # fmt: skip
        .materialize()
    )
    storage.delete(storage.join(output, TIMEOUTS), recursive=True)
    meta = segments.select_columns(["track_id", "split", "segment_id", "inst_class", "error"]).take_all()
    failed = [{"item": m["track_id"], "error": m["error"]} for m in meta if m["error"]]
    good = [m for m in meta if not m["error"]]
    log.info("prepare: %d solo segments from %d tracks", len(good), len({m["track_id"] for m in good}))
    done = {u.rsplit("/", 1)[-1] for u in storage.list_files(storage.join(output, "_done"))}
    copies: Counter[str] = Counter()
    for split in sorted({m["split"] for m in good}):
        copies.update(_copies(good, split, cfg, cfg.seed))
    shards: list[dict[str, Any]] = []
    for epoch in range(cfg.random_mix.epochs):
        marker = storage.join(output, "_done", f"mix-e{epoch:03d}.json")
        if marker.rsplit("/", 1)[-1] in done:
            shards.extend(json.loads(storage.read_text(marker))["shards"])
            continue
        written = _epoch_pipeline(segments.select_columns(
            ["segment_id", "inst_class", "split", "audio"]), cfg, spec, output, epoch, copies).take_all()
        epoch_shards = [{"uri": w["shard"], "split": w["split"], "epoch": epoch, "rows": w["rows"],
                         "mixes": w["mixes"]} for w in written]  # fmt: skip
        storage.write_text(marker, json.dumps({"shards": epoch_shards}))
        log.info("prepare: epoch %d: %d mixes, %d rows", epoch,
                 sum(s["mixes"] for s in epoch_shards), sum(s["rows"] for s in epoch_shards))  # fmt: skip
        shards.extend(epoch_shards)
    return _finish(cfg, spec, output, shards, good, failed + [{"item": "listing", "error": e} for e in listing_errors])


def _finish(cfg, spec, output, shards, good, failed) -> dict[str, Any]:
    from ray_jobs.prepare import MANIFEST, _rows_per_split

    by_split: dict[str, set[str]] = {}
    for m in good:
        by_split.setdefault(m["split"], set()).add(m["track_id"])
    manifest = {
        **P.dataset_schema(spec),
        "shards": sorted(shards, key=lambda s: s["uri"]),
        "splits": {s: sorted(ids) for s, ids in sorted(by_split.items())},
        "rows_per_split": _rows_per_split(shards),
        "segments_per_class": dict(Counter(m["inst_class"] for m in good)),
        "config": cfg.model_dump(mode="json"),
    }
    storage.write_text(storage.join(output, MANIFEST), json.dumps(manifest, indent=1))
    tracks = {m["track_id"] for m in good} | {f["item"] for f in failed if f["item"] != "listing"}
    summary: dict[str, Any] = {
        "counts": {"tracks": len(tracks), "segments": len(good), "failed": len(failed),
                   "mixes": sum(s["mixes"] for s in shards), "rows": sum(s["rows"] for s in shards),
                   "shards": len(shards)},  # fmt: skip
        "figures": {"rows_per_split": manifest["rows_per_split"], "segments_per_class": manifest["segments_per_class"]},
        "failed": failed,
    }
    if failed and len(failed) > cfg.max_failed_fraction * max(len(tracks), 1):
        summary["status"] = "failed"
        summary["error"] = f"{len(failed)} of {len(tracks)} tracks failed"
    return summary
