"""The prepare job's work on one item, without Ray: what its actors call.

Instrument targets, one row per track: :func:`track_step` runs both steps of a track in
one actor (the default). With separate pools, :func:`pair_row` (mixing step: the pickled
:class:`~sepcore.prepare.pairs.TrackPair` or why there is none) and :func:`chunk_rows`
(feature step: chunk rows and the track's facts), the latter within the time limit in
:func:`feature_rows`; both end in :func:`commit_track` (its shard and done-record).

Random mixes (seed 001): :func:`segment_rows` (solo segments of a track),
:func:`mix_batch` (a batch of shuffled segments -> mixes) and :func:`write_mix_shards`
(a batch of mixes -> one shard per split).

A bad track never raises here: it comes back with ``status: error`` (or an ``error``
column) naming the track and the problem, and the other tracks go on.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import pickle
from collections import Counter
from typing import Any

import numpy as np

from sepcore.batch import ItemWatchdog
from sepcore.data.sources import SourceTrack
from sepcore.errors import SepError
from sepcore.io import storage
from sepcore.io.ledger import Ledger
from sepcore.prepare import mixing
from sepcore.prepare import pairs as P
from sepcore.prepare.features import FeatureExtractor


def mix_step(track: SourceTrack, split: str, spec: P.PrepareSpec, pool: dict[str, list[SourceTrack]] | None = None,
             error: str | None = None) -> tuple[dict[str, Any], list[tuple[int, P.TrackPair]]]:  # fmt: skip
    """The mixing step of one track: its result (``track_id``, ``split``, ``status``
    ok/skipped/error, ``reason``) and its pairs (:func:`~sepcore.prepare.pairs.mix_copies`,
    none unless ok).

    ``pool``: the donors of each augmented split (:func:`sepcore.prepare.augment.donor_pool`);
    ``error``: the track already failed (its time limit), so it is not mixed again.
    """
    out = {"track_id": track.track_id, "split": split, "status": "ok", "reason": ""}
    missing = track.extra.get("missing_stems")
    if missing:  # a pair without them would be a different song than the track's mix
        files = ", ".join(f"{track.uri}/stems/{s}" for s in missing)
        return {**out, "status": "error", "reason": f"{track.track_id}: stem audio missing "
                f"({files}), though metadata.yaml says it was rendered"}, []  # fmt: skip
    if error is not None:
        return {**out, "status": "error", "reason": error}, []
    try:
        return out, P.mix_copies(track, split, spec, (pool or {}).get(split, []))
    except P.SkipTrack as exc:
        return {**out, "status": "skipped", "reason": str(exc)}, []
    except SepError as exc:
        return {**out, "status": "error", "reason": str(exc)}, []
    except Exception as exc:  # a bug on one track must not stop the others
        return {**out, "status": "error", "reason": f"{track.track_id}: {type(exc).__name__}: {exc}"}, []


def pair_row(track: SourceTrack, split: str, spec: P.PrepareSpec, pool: dict[str, list[SourceTrack]] | None = None,
             error: str | None = None) -> dict[str, Any]:  # fmt: skip
    """:func:`mix_step` as one row for the next actor: its result and ``pair`` (the pairs,
    pickled; empty unless ok)."""
    result, pairs = mix_step(track, split, spec, pool, error)
    return {**result, "pair": pickle.dumps(pairs, protocol=5) if pairs else b""}


def chunk_rows(row: dict[str, Any], spec: P.PrepareSpec, extractor: FeatureExtractor) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """The feature step of a :func:`pair_row`: its chunk rows and the track's result (:func:`chunk_pairs`)."""
    result = {k: row[k] for k in ("track_id", "split", "status", "reason")}
    return chunk_pairs(result, pickle.loads(row["pair"]) if row["status"] == "ok" else [], spec, extractor)


def chunk_pairs(result: dict[str, Any], pairs: list[tuple[int, P.TrackPair]], spec: P.PrepareSpec,
                extractor: FeatureExtractor) -> tuple[list[dict[str, Any]], dict[str, Any]]:  # fmt: skip
    """The feature step of a :func:`mix_step`: its chunk rows and the track's result.

    The result has ``track_id``, ``split``, ``status``, ``reason`` and, for a track
    with rows, ``rows``, ``seconds``, ``flags``, ``excluded`` and ``silence`` (of its own
    pair); with augmentation also ``copies`` (remix copies made) and ``augmented_rows``.
    """
    result = dict(result)
    if result["status"] != "ok":
        return [], result
    rows: list[dict[str, Any]] = []
    for copy, pair in pairs:
        try:
            arrays = P.feature_chunks(pair, spec, extractor)
        except (SepError, ValueError) as exc:
            result.update(status="error", reason=f"{result['track_id']}: {exc}")
            return [], result
        rows += P.track_rows(result["track_id"], result["split"], arrays, copy=copy if spec.augment else None)
    own = pairs[0][1]
    result.update(
        rows=len(rows), seconds=round(own.mix.shape[-1] / spec.sample_rate, 3),
        flags=own.flags, excluded=own.excluded, silence=own.silence,
    )  # fmt: skip
    if spec.augment is not None:
        result.update(copies=len(pairs) - 1, augmented_rows=sum(1 for r in rows if r["copy"] > 0))
    return rows, result


def commit_track(output: str, done: Ledger, result: dict[str, Any], rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Write a track's shard (``<output>/shards/<split>/``) and then its done-record.

    A failed track gets no record, so the next run tries it again. Returns ``result``
    with the shard's URI.
    """
    if rows:
        name = P.shard_name(result["track_id"])
        shard = storage.join(output, "shards", result["split"], name + ".parquet")
        storage.write_bytes(shard, P.rows_to_parquet(rows))
        result = {**result, "shard": shard}
    if result["status"] != "error":
        done.put(result["track_id"], result)
    return result


def feature_rows(row: dict[str, Any], spec: P.PrepareSpec, extractor: FeatureExtractor, watchdog: ItemWatchdog,
                 output: str | None, done: Ledger | None) -> list[dict[str, Any]]:  # fmt: skip
    """The feature step of a pair row: its chunk rows, within ``watchdog``'s time limit;
    with ``output`` it writes the track's shard and done-record and returns one result
    row (``result``: :func:`commit_track`'s, as JSON) instead."""
    timed_out = watchdog.recorded(row["track_id"]) if row["status"] == "ok" else None
    if timed_out is not None:  # this call is Ray's retry after the time limit ended the actor
        row = {**row, "status": "error", "reason": timed_out}
    ok = row["status"] == "ok"
    with watchdog.running(row["track_id"]) if ok else contextlib.nullcontext():
        rows, result = chunk_rows(row, spec, extractor)
    return _rows_or_result(rows, result, output, done)


def track_step(track: SourceTrack, split: str, spec: P.PrepareSpec, extractor: FeatureExtractor,
               output: str | None, done: Ledger | None, pool: dict[str, list[SourceTrack]] | None = None,
               error: str | None = None) -> list[dict[str, Any]]:  # fmt: skip
    """Both steps of one track in one process (the job's default): :func:`mix_step`, then
    :func:`chunk_pairs`, with nothing pickled between them. Returns the chunk rows, or with
    ``output`` one result row after writing the shard and done-record (as :func:`feature_rows`).
    """
    rows, result = chunk_pairs(*mix_step(track, split, spec, pool, error), spec, extractor)
    return _rows_or_result(rows, result, output, done)


def _rows_or_result(rows: list[dict[str, Any]], result: dict[str, Any], output: str | None,
                    done: Ledger | None) -> list[dict[str, Any]]:  # fmt: skip
    """The chunk rows (a stream), or with ``output`` the one result row of :func:`commit_track`."""
    if output is None or done is None:
        return rows
    return [{"result": json.dumps(commit_track(output, done, result, rows))}]


def warm_up(spec: P.PrepareSpec) -> None:
    """Import what the first track will need (a worker's start-up rather than its first track)."""
    import pyarrow.parquet  # noqa: F401  # the shards
    import soundfile  # noqa: F401
    import soxr  # noqa: F401

    if spec.detect_flags:
        import pyloudnorm  # noqa: F401  # loudness (it imports scipy.signal)


# ---------------------------------------------------------------- random mixes (seed 001)


def segment_rows(track: SourceTrack, split: str, spec: P.PrepareSpec, seconds: float, error: str | None = None) -> list[dict[str, Any]]:
    """A track's solo segments, one row each (audio pickled), or one row with its ``error``."""
    base = {"track_id": track.track_id, "split": split}
    failed = {**base, "segment_id": "", "inst_class": "", "audio": b""}
    if error is not None:
        return [{**failed, "error": error}]
    try:
        segments = P.solo_segments(track, spec, seconds)
    except SepError as exc:
        return [{**failed, "error": str(exc)}]
    return [{**base, "segment_id": sid, "inst_class": cls, "audio": pickle.dumps(a, protocol=5), "error": ""}
            for sid, cls, a in segments]  # fmt: skip


def copies_of(row: dict[str, Any], copies: Counter[str]) -> list[dict[str, Any]]:
    """A segment row once per copy of it in ``copies`` (:func:`segment_copies`), numbered in ``copy``."""
    return [{**row, "copy": c} for c in range(copies.get(row["segment_id"], 0))]


def segment_copies(segments: list[dict[str, Any]], balance: bool, max_oversample: float, seed: int) -> Counter[str]:
    """How often each segment is used per mixing epoch: once, or balanced by class in train."""
    copies: Counter[str] = Counter()
    for split in sorted({m["split"] for m in segments}):
        per_class: dict[str, list[str]] = {}
        for m in segments:
            if m["split"] == split:
                per_class.setdefault(m["inst_class"], []).append(m["segment_id"])
        if split == "train" and balance:
            rng = np.random.default_rng([seed, 1])
            per_class = mixing.balance(per_class, rng, max_oversample=max_oversample)
        copies.update(s for ids in per_class.values() for s in ids)
    return copies


def mix_batch(batch: dict[str, Any], spec: P.PrepareSpec, min_n: int, max_n: int, seed: int, epoch: int) -> dict[str, list]:
    """A batch of shuffled segments -> random mixes with seed 001's levels.

    Segments of different splits in one batch are mixed only with their own split;
    the levels are drawn from a generator seeded by ``seed``, ``epoch`` and the batch.
    """
    out: dict[str, list] = {"mix_id": [], "split": [], "pair": [], "levels": []}
    for split in sorted(set(batch["split"])):
        rows = [i for i, s in enumerate(batch["split"]) if s == split]
        ids = [f"{batch['segment_id'][i]}#{batch['copy'][i]}" for i in rows]
        audio = {sid: pickle.loads(batch["audio"][i]) for sid, i in zip(ids, rows, strict=True)}
        key = hashlib.sha1("|".join(sorted(ids)).encode()).hexdigest()[:12]
        rng = np.random.default_rng([seed, epoch, int(key, 16)])
        classes = [batch["inst_class"][i] for i in rows]
        for plan in mixing.plan_mixes(list(zip(ids, classes, strict=True)), rng, min_n, max_n):
            out["mix_id"].append(f"{split}-e{epoch:03d}-{key}-{plan.mix_id.split('-')[-1]}")
            out["split"].append(split)
            out["pair"].append(pickle.dumps(P.render_mix(plan, audio, spec), protocol=5))
            out["levels"].append(P.level_vector(plan).tobytes())
    return out


def write_mix_shards(batch: dict[str, Any], spec: P.PrepareSpec, extractor: FeatureExtractor, output: str, epoch: int) -> dict[str, list]:
    """A batch of :func:`mix_batch` mixes -> chunk rows, written as one shard per split.

    Returns one row per shard: ``shard`` (URI), ``split``, ``rows``, ``mixes``.
    """
    by_split: dict[str, list[dict[str, Any]]] = {}
    mixes: Counter[str] = Counter()
    for mix_id, split, blob, levels in zip(batch["mix_id"], batch["split"], batch["pair"], batch["levels"], strict=True):
        pair: P.TrackPair = pickle.loads(blob)
        arrays = P.feature_chunks(pair, spec, extractor)
        lv = np.frombuffer(levels, dtype=np.float32)
        by_split.setdefault(split, []).extend(P.track_rows(mix_id, split, arrays, {"levels": lv}))
        mixes[split] += 1
    out: dict[str, list] = {"shard": [], "split": [], "rows": [], "mixes": []}
    for split, rows in sorted(by_split.items()):
        key = hashlib.sha1("|".join(sorted({r["track_id"] for r in rows})).encode()).hexdigest()[:12]
        shard = storage.join(output, "shards", split, f"mix-e{epoch:03d}-{key}.parquet")
        storage.write_bytes(shard, P.rows_to_parquet(rows))
        for k, v in (("shard", shard), ("split", split), ("rows", len(rows)), ("mixes", mixes[split])):
            out[k].append(v)
    return out

