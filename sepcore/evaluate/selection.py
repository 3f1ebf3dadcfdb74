"""Which tracks an evaluation scores: the split each track had in training.

A track's split comes from the checkpoint's training manifest (``dataset.json``) when
it lists the track, else from the track's own split, else it is assigned as
``sep prepare`` does (:func:`sepcore.prepare.mixing.assign_splits`) with the training
data's fractions and seed, unless the config gives others.
"""

from __future__ import annotations

import json
import logging
from typing import Any

from sepcore.errors import SepError
from sepcore.io import storage
from sepcore.prepare.config import SplitConfig

log = logging.getLogger("sep.evaluate")

#: Default split fractions and seed (those of ``sep prepare``) when no manifest says otherwise.
DEFAULT_FRACTIONS = {"train": 0.8, "validation": 0.1, "test": 0.1}


def training_manifest(meta: dict[str, Any]) -> dict[str, Any] | None:
    """The checkpoint's training data manifest (``dataset.json``), when it can be read."""
    data = meta.get("data")
    if not data:
        return None
    uri = storage.join(data, "dataset.json")
    try:
        return json.loads(storage.read_text(uri)) if storage.exists(uri) else None
    except (SepError, json.JSONDecodeError) as exc:
        log.warning(
            "evaluate: cannot read the training manifest %s (%s); splits are assigned anew",
            uri,
            exc,
        )
        return None


def _source_name(data: str, manifest: dict[str, Any] | None) -> str:
    for source in (manifest or {}).get("config", {}).get("sources", []):
        if source.get("kind") == "slakh" and storage.normalize_uri(source["uri"]) == data:
            return source.get("name") or "slakh"
    return "slakh"


def track_splits(tracks: list, manifest: dict[str, Any] | None, fractions: SplitConfig | None = None,
                 seed: int | None = None) -> dict[str, str]:  # fmt: skip
    """Each track's split as training had it (see the README: splits)."""
    from sepcore.prepare.mixing import assign_splits

    prepared = (manifest or {}).get("config", {})
    shares = fractions.model_dump() if fractions else prepared.get("split", DEFAULT_FRACTIONS)
    seed = seed if seed is not None else int(prepared.get("seed", 0))
    fixed = {t.track_id: t.split for t in tracks if t.split}
    splits = assign_splits([t.track_id for t in tracks], shares, seed, fixed)
    for split, ids in (manifest or {}).get("splits", {}).items():
        for track_id in ids:
            if track_id in splits:
                splits[track_id] = split
    return splits


def select_tracks(data: str, split: str, manifest: dict[str, Any] | None, fractions: SplitConfig | None = None,
                  seed: int | None = None, limit: int | None = None) -> tuple[list, list[str]]:  # fmt: skip
    """The tracks of ``split`` (or ``"all"``) in ``data``, sorted by id, at most ``limit``; and the listing errors."""
    from sepcore.data.sources import slakh_tracks

    data = storage.normalize_uri(data)
    errors: list = []
    tracks = slakh_tracks(data, name=_source_name(data, manifest), errors=errors)
    if not tracks:
        raise SepError(f"{data}: no tracks in the Slakh layout (TrackNNNNN/metadata.yaml) found")
    splits = track_splits(tracks, manifest, fractions, seed)
    chosen = sorted((t for t in tracks if split == "all" or splits[t.track_id] == split),
                    key=lambda t: t.track_id)  # fmt: skip
    if not chosen:
        raise SepError(f"{data}: no tracks in split '{split}' (of {len(tracks)})")
    return chosen[:limit], [str(e) for e in errors]
