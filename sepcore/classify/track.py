"""The snippets of one track: its mix and stems read, labelled and featurized."""

from __future__ import annotations

import hashlib
import io
import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from sepcore.classify.cnn import activation_window_scores
from sepcore.classify.config import SnippetSpec
from sepcore.classify.features import snippet_features
from sepcore.classify.snippets import ClassifyError, snippet_labels, window_starts
from sepcore.data.classes import CLASSES
from sepcore.io import storage
from sepcore.io.audio import read_audio, resample, to_channels
from sepcore.models import checkpoint as ckpt
from sepcore.prepare.pairs import shard_name


@dataclass
class TrackSnippets:
    """The snippets of one track: start times, features, labels of every class."""

    track_id: str
    starts_s: np.ndarray  # (windows,)
    features: np.ndarray  # (windows, features)
    labels: np.ndarray  # (windows, len(CLASSES)), uint8
    extra: dict[str, np.ndarray] = field(default_factory=dict)  # e.g. activation CNN scores

    def columns(self, feature_names: Sequence[str]) -> dict[str, Any]:
        """Flat columns: ``track_id``, ``start_s``, one per feature, ``label_<class>``, extras."""
        n = len(self.starts_s)
        cols: dict[str, Any] = {"track_id": [self.track_id] * n, "start_s": self.starts_s.astype(np.float64)}
        cols.update({name: self.features[:, i] for i, name in enumerate(feature_names)})
        cols.update({f"label_{c}": self.labels[:, i] for i, c in enumerate(CLASSES)})
        cols.update(self.extra)
        return cols

    def to_parquet(self, feature_names: Sequence[str]) -> bytes:
        return _parquet(self.columns(feature_names))


def load_mix_and_classes(track: Any, sample_rate: int) -> tuple[np.ndarray, np.ndarray]:
    """Mono mix and per-class stem sums of a :class:`~sepcore.data.sources.SourceTrack`.

    The mix is the track's mix file when it has one (what a new song will look like),
    else the sum of its stems; it is cut or zero-padded to the stems' length.
    Shape: mix ``(1, samples)``, class sums ``(len(CLASSES), 1, samples)``.
    Raises :class:`ClassifyError` for a track without stems, :class:`AudioError` for
    a file that cannot be decoded.
    """
    from sepcore.data.sources import load_track_stems
    from sepcore.prepare.pairs import class_sums

    if not track.stems:
        raise ClassifyError(track.uri, "track has no stems: no labels can be made")
    stems, records = load_track_stems(track, sample_rate, 1)
    sums = class_sums(stems, [r.inst_class for r in records])
    if track.mix_uri is None:
        return sums.sum(axis=0), sums
    mix = to_channels(resample(read_audio(track.mix_uri), sample_rate), 1).samples
    n = sums.shape[-1]
    out = np.zeros((1, n), dtype=np.float32)
    out[:, : min(n, mix.shape[1])] = mix[:, :n]
    return out, sums


def track_snippets(track: Any, spec: SnippetSpec) -> tuple[TrackSnippets, np.ndarray]:
    """Snippets of one track (whole windows) and its mono mix ``(1, samples)``.

    Labels come from the stems, features from the mix only.
    """
    mix, sums = load_mix_and_classes(track, spec.sample_rate)
    starts = window_starts(mix.shape[-1], spec.window, spec.hop_samples)
    labels = snippet_labels(sums, starts, spec)
    feats = snippet_features(mix, spec.sample_rate, starts, spec)
    return TrackSnippets(track.track_id, starts / spec.sample_rate, feats, labels), mix


def write_track(track: Any, spec: SnippetSpec, folder: str, cnn: tuple[Any, dict[str, Any]] | None = None,
                pool: str = "mean") -> dict[str, Any]:  # fmt: skip
    """One track's snippet file ``<folder>/<shard>.parquet`` (when it has snippets); its done-record.

    ``cnn``: an activation checkpoint's ``(model, meta)``, whose frame activations pooled to
    the snippets (:func:`sepcore.classify.cnn.activation_window_scores`) become ``cnn_<class>``
    columns. The record: ``track_id``, ``status`` (ok / skipped), ``reason``, ``snippets``,
    ``seconds``, ``positives`` per class and ``shard``.
    """
    snippets, mix = track_snippets(track, spec)
    n = len(snippets.starts_s)
    record = {"track_id": track.track_id, "status": "ok", "reason": "", "snippets": n,
              "seconds": round(mix.shape[-1] / spec.sample_rate, 3),
              "positives": {c: int(snippets.labels[:, i].sum()) for i, c in enumerate(CLASSES)}}  # fmt: skip
    if not n:
        return {**record, "status": "skipped", "reason": f"shorter than one snippet ({spec.snippets.window_s} s)"}
    if cnn is not None:
        model, meta = cnn
        scores = activation_window_scores(model, meta, mix, spec.sample_rate, snippets.starts_s,
                                          spec.snippets.window_s, CLASSES, pool)  # type: ignore[arg-type]  # fmt: skip
        snippets.extra.update({f"cnn_{c}": scores[:, i] for i, c in enumerate(CLASSES)})
    record["shard"] = storage.join(folder, shard_name(track.track_id) + ".parquet")
    storage.write_bytes(record["shard"], snippets.to_parquet(spec.feature_names()))
    return record


def write_style_track(track: Any, spec: SnippetSpec, folder: str, style: str) -> dict[str, Any]:
    """Style mode: one track's snippet file (features of its mix, the ``style`` column) and done-record.

    The mix file is read whole (the sum of the stems when there is none) and featurized by
    :func:`sepcore.classify.style.song_features`, as the router featurizes a song. The record:
    ``track_id``, ``status``, ``reason``, ``snippets``, ``seconds``, ``style`` and ``shard``.
    """
    from sepcore.classify.style import mono_mix, song_features

    if track.mix_uri is not None:
        mix = mono_mix(read_audio(track.mix_uri), None, spec)
    elif track.stems:
        from sepcore.data.sources import load_track_stems

        mix = load_track_stems(track, spec.sample_rate, 1)[0].sum(axis=0)
    else:
        raise ClassifyError(track.uri, "track has neither a mix nor stems")
    record = {"track_id": track.track_id, "status": "ok", "reason": "", "snippets": 0,
              "seconds": round(mix.shape[-1] / spec.sample_rate, 3), "style": style}  # fmt: skip
    if mix.shape[-1] < spec.window:  # the job trains on whole windows only
        return {**record, "status": "skipped", "reason": f"shorter than one snippet ({spec.snippets.window_s} s)"}
    starts_s, feats = song_features(mix, spec)
    n = record["snippets"] = len(starts_s)
    cols: dict[str, Any] = {"track_id": [track.track_id] * n, "start_s": starts_s.astype(np.float64)}
    cols.update({name: feats[:, i] for i, name in enumerate(spec.feature_names())})
    cols["style"] = [style] * n
    record["shard"] = storage.join(folder, shard_name(track.track_id) + ".parquet")
    storage.write_bytes(record["shard"], _parquet(cols))
    return record


def _parquet(cols: dict[str, Any]) -> bytes:
    import pyarrow as pa
    import pyarrow.parquet as pq

    buf = io.BytesIO()
    pq.write_table(pa.table(cols), buf, compression="snappy")
    return buf.getvalue()


def snippet_folder(output: str, spec: SnippetSpec, cnn_dir: str | None, pool: str) -> str:
    """``<output>/snippets/<digest>``: one folder per snippet/label/feature/CNN setting."""
    key = {"spec": spec.digest(), "cnn": None}
    if cnn_dir:
        key["cnn"] = f"{ckpt.read_meta(cnn_dir).get('model_sha256')}:{pool}"
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:12]
    return storage.join(output, "snippets", digest)
