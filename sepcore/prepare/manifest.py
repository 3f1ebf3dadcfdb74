"""The prepare job's listing, output folder, progress lines, ``dataset.json`` and summaries, without Ray.

``dataset.json`` (:data:`MANIFEST`): how to read the rows (:func:`~sepcore.prepare.pairs.dataset_schema`,
the augmentation settings included), the shards, the tracks of each split, rows per split, QA
flags, silence statistics and rows of remix copies per split (instrument targets) or segments
per class (random mixes), and the configuration.
It is written after the shards, from the done-records of the tracks (:data:`DONE`).
"""

from __future__ import annotations

import json
import logging
from collections import Counter
from collections.abc import Sequence
from typing import Any

from sepcore.batch import Progress, check_settings, settings_fingerprint
from sepcore.data.sources import SourceTrack, list_sources
from sepcore.errors import ConfigError
from sepcore.io import storage
from sepcore.io.ledger import Ledger
from sepcore.prepare import pairs as P
from sepcore.prepare import qa, silence
from sepcore.prepare.config import QAConfig, SourceConfig, SplitConfig
from sepcore.prepare.mixing import assign_splits

log = logging.getLogger("sep.prepare")

MANIFEST = "dataset.json"
#: The settings the data was made with: a rerun with others is refused.
SPEC_FILE = "prepare_spec.json"
#: Folder of the done-records: one per finished track (one per mixing epoch for random mixes).
DONE = "_done"


def list_tracks(sources: Sequence[SourceConfig], qa_cfg: QAConfig, split: SplitConfig,
                seed: int) -> tuple[list[SourceTrack], dict[str, str], list[str]]:  # fmt: skip
    """The tracks of ``sources`` with manual QA flags, the split of each, and listing errors."""
    errors: list = []
    specs = [{k: v for k, v in s.model_dump().items() if v is not None} for s in sources]
    try:
        tracks = list_sources(specs, errors)
    except ValueError as exc:  # two sources with the same track ids: found once listed
        raise ConfigError("sources", str(exc)) from exc
    if qa_cfg.flags_csv:
        manual = qa.read_flags_csv(storage.read_text(qa_cfg.flags_csv), qa_cfg.flags_csv)
        tracks = P.apply_manual_flags(tracks, manual)
    fixed = {t.track_id: t.split for t in tracks if t.split}
    splits = assign_splits([t.track_id for t in tracks], split.model_dump(), seed, fixed)
    return tracks, splits, [str(e) for e in errors]


def rows_per_split(shards: list[dict[str, Any]]) -> dict[str, int]:
    counts: Counter[str] = Counter()
    for shard in shards:
        counts[shard["split"]] += shard["rows"]
    return dict(sorted(counts.items()))


def silence_histogram_rows(ratios: list[dict[str, Any]]) -> dict[str, Any]:
    """Histograms of the audio-to-total ratio of the tracks before and after the silence cuts."""
    return {
        "before": silence.silence_histogram([r["ratio_before"] for r in ratios]),
        "after": silence.silence_histogram([r["ratio_after"] for r in ratios]),
    }


def open_output(uri: str, settings: dict[str, Any]) -> tuple[str, Ledger]:
    """The normalized output and its done-records; refuses an output made with other ``settings``."""
    output = storage.normalize_uri(uri)
    check_settings(output, SPEC_FILE, settings)
    return output, Ledger(storage.join(output, DONE), settings_fingerprint(settings))


def write_manifest(output: str, manifest: dict[str, Any]) -> None:
    storage.write_text(storage.join(output, MANIFEST), json.dumps(manifest, indent=1))


# ---------------------------------------------------------------- instrument targets


def track_manifest(spec: P.PrepareSpec, records: list[dict[str, Any]], config: dict[str, Any]) -> dict[str, Any]:
    """``dataset.json`` of an instrument target from the tracks' done-records."""
    ok = [m for m in records if m["status"] == "ok"]
    shards = sorted(({"uri": m["shard"], "split": m["split"], "track_id": m["track_id"], "rows": m["rows"]}
                     for m in ok if m.get("shard")), key=lambda s: s["uri"])  # fmt: skip
    ratios = [m["silence"] for m in ok if m.get("silence")]
    return {
        **P.dataset_schema(spec),
        "shards": shards,
        "splits": {s: sorted(m["track_id"] for m in ok if m["split"] == s) for s in sorted({m["split"] for m in ok})},
        "rows_per_split": rows_per_split(shards),
        "skipped": {m["track_id"]: m["reason"] for m in records if m["status"] == "skipped"},
        "qa_flags": {m["track_id"]: {k: v for k, v in m["flags"].items() if v} for m in ok if any(m["flags"].values())},
        "silence_histogram": silence_histogram_rows(ratios) if ratios else None,
        **({"augmented_rows_per_split": augmented_rows(ok)} if spec.augment is not None else {}),
        "config": config,
    }


def augmented_rows(records: list[dict[str, Any]]) -> dict[str, int]:
    """Rows of remix copies (``copy`` >= 1) per split, from the tracks' done-records."""
    counts: Counter[str] = Counter()
    for m in records:
        counts[m["split"]] += m.get("augmented_rows", 0)
    return dict(sorted(counts.items()))


def track_summary(manifest: dict[str, Any], records: list[dict[str, Any]], failed: list[dict[str, str]],
                  done_before: int) -> dict[str, Any]:  # fmt: skip
    """The summary's counts and figures; ``failed``: this run's failures, listing included."""
    ok = [m for m in records if m["status"] == "ok"]
    return {
        "counts": {
            "tracks": len(records) + len(failed), "prepared": len(ok), "skipped": len(manifest["skipped"]),
            "done_before": done_before, "failed": len(failed),
            "rows": sum(s["rows"] for s in manifest["shards"]), "shards": len(manifest["shards"]),
        },
        "figures": {
            "audio_seconds": round(sum(m.get("seconds", 0) for m in ok), 1),
            "rows_per_split": manifest["rows_per_split"],
            **({"augmented_rows_per_split": manifest["augmented_rows_per_split"]}
               if "augmented_rows_per_split" in manifest else {}),
        },
        "failed": failed,
        "silence_histogram": manifest["silence_histogram"],
    }  # fmt: skip


class TrackProgress:
    """Progress lines of the tracks prepared in a run; their failures in ``errors`` (``item``, ``error``)."""

    def __init__(self, todo: int, done_before: int):
        self.progress = Progress("prepare", todo, done_before, "track")
        self.errors: list[dict[str, str]] = []

    def update(self, res: dict[str, Any]) -> None:
        """One track's result (see :func:`sepcore.prepare.steps.commit_track`)."""
        state = res["reason"] if res["status"] != "ok" else f"{res['rows']} chunks"
        self.progress.update(f"{res['track_id']} ({res['split']})", state, failed=res["status"] == "error")
        if res["status"] == "error":
            self.errors.append({"item": res["track_id"], "error": res["reason"]})

    def close(self) -> None:
        self.progress.close()


def finish_tracks(output: str, spec: P.PrepareSpec, done: Ledger, config: dict[str, Any],
                  failed: list[dict[str, str]], done_before: int) -> dict[str, Any]:  # fmt: skip
    """Writes ``dataset.json`` of an instrument target from the done-records; the summary."""
    records = list(done.records().values())
    manifest = track_manifest(spec, records, config)
    write_manifest(output, manifest)
    return track_summary(manifest, records, failed, done_before)


# ---------------------------------------------------------------- random mixes


def split_segments(meta: list[dict[str, Any]]) -> tuple[list[dict[str, Any]], list[dict[str, str]]]:
    """The segments cut (``meta``: a row per segment or failed track) and the failures."""
    failed = [{"item": m["track_id"], "error": m["error"]} for m in meta if m["error"]]
    good = [m for m in meta if not m["error"]]
    log.info("prepare: %d solo segments from %d tracks", len(good), len({m["track_id"] for m in good}))
    return good, failed


def epoch_record(written: list[dict[str, Any]], epoch: int) -> dict[str, Any]:
    """The done-record of a mixing epoch: its shards (``written``: the feature actors' rows)."""
    record = {"shards": [{"uri": w["shard"], "split": w["split"], "epoch": epoch, "rows": w["rows"],
                          "mixes": w["mixes"]} for w in written]}  # fmt: skip
    log.info("prepare: epoch %d: %d mixes, %d rows", epoch, sum(s["mixes"] for s in record["shards"]),
             sum(s["rows"] for s in record["shards"]))  # fmt: skip
    return record


def finish_mixes(output: str, spec: P.PrepareSpec, shards: list[dict[str, Any]], segments: list[dict[str, Any]],
                 config: dict[str, Any], failed: list[dict[str, str]]) -> dict[str, Any]:  # fmt: skip
    """Writes ``dataset.json`` of random mixes; the summary."""
    manifest = mix_manifest(spec, shards, segments, config)
    write_manifest(output, manifest)
    return mix_summary(manifest, segments, failed)


def mix_manifest(spec: P.PrepareSpec, shards: list[dict[str, Any]], segments: list[dict[str, Any]],
                 config: dict[str, Any]) -> dict[str, Any]:  # fmt: skip
    """``dataset.json`` of random mixes: the epochs' shards and the segments they were made of."""
    by_split: dict[str, set[str]] = {}
    for m in segments:
        by_split.setdefault(m["split"], set()).add(m["track_id"])
    return {
        **P.dataset_schema(spec),
        "shards": sorted(shards, key=lambda s: s["uri"]),
        "splits": {s: sorted(ids) for s, ids in sorted(by_split.items())},
        "rows_per_split": rows_per_split(shards),
        "segments_per_class": dict(Counter(m["inst_class"] for m in segments)),
        "config": config,
    }


def mix_summary(manifest: dict[str, Any], segments: list[dict[str, Any]], failed: list[dict[str, str]]) -> dict[str, Any]:
    """The summary's counts and figures of random mixes; a track counts once, failed or not."""
    shards = manifest["shards"]
    tracks = {m["track_id"] for m in segments} | {f["item"] for f in failed if f["item"] != "listing"}
    return {
        "counts": {"tracks": len(tracks), "segments": len(segments), "failed": len(failed),
                   "mixes": sum(s["mixes"] for s in shards), "rows": sum(s["rows"] for s in shards),
                   "shards": len(shards)},  # fmt: skip
        "figures": {"rows_per_split": manifest["rows_per_split"], "segments_per_class": manifest["segments_per_class"]},
        "failed": failed,
    }
