"""A small rendered demo dataset for tests, cached per machine."""

from __future__ import annotations

import os

from sepcore.data.corpus import build_demo_midi
from sepcore.data.render import render_track
from sepcore.data.slakh import METADATA
from sepcore.io import storage
from sepcore.io.cache import cache_dir


def demo_dataset(
    tracks: int = 6, min_seconds: float = 10.0, max_seconds: float = 14.0, seed: int = 0,
    sample_rate: int = 22050, channels: int = 1,
) -> str:  # fmt: skip
    """``file://`` URI of a Slakh-layout folder rendered from the demo corpus.

    Tracks already rendered (their ``metadata.yaml`` exists) are kept, so the first
    call renders and later calls return at once.
    """
    key = f"seed{seed}-n{tracks}-{min_seconds:g}-{max_seconds:g}-{sample_rate}-{channels}ch"
    midi_dir = cache_dir("test_demo_midi", key)
    data_dir = cache_dir("test_demo_data", key)
    paths = build_demo_midi(midi_dir, tracks=tracks, seed=seed, min_seconds=min_seconds, max_seconds=max_seconds)
    for i, path in enumerate(sorted(paths)):
        track = os.path.join(data_dir, f"Track{i + 1:05d}")
        if not os.path.exists(os.path.join(track, METADATA)):
            with open(path, "rb") as fh:
                render_track(fh.read(), path, track, sample_rate=sample_rate, channels=channels)
    return storage.normalize_uri(data_dir)
