"""Style labels (``labels: style``): every snippet of a track carries the track's style.

The track's ``style`` comes from its ``metadata.yaml``; one multi-class LightGBM model
(:func:`sepcore.classify.lgbm.fit_styles`) learns it from the same snippet features as
presence mode. A song's style is the *vote* of its snippets: the class with the largest
summed probability over the snippets, ties going to the first in sorted order. The job's
song-level accuracy and :class:`sepcore.classify.router.Router` both use :func:`vote`, and
both featurize a song with :func:`song_features`, so the router sees a song exactly as
training did.

Shapes: audio ``(channels, samples)``; features ``(snippets, features)``; probabilities
``(snippets, styles)`` with the styles sorted; confusion matrices ``(styles, styles)``,
rows the true style, columns the predicted one.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from sepcore.classify.config import SnippetSpec
from sepcore.classify.features import snippet_features
from sepcore.classify.snippets import window_starts
from sepcore.errors import ConfigError
from sepcore.io.audio import Audio, resample, to_channels

#: The metadata.yaml key of a track's style.
STYLE_KEY = "style"


def track_style(track: Any) -> str | None:
    """The ``style`` of a :class:`~sepcore.data.sources.SourceTrack`'s metadata.yaml, or None."""
    value = (track.extra.get("metadata") or {}).get(STYLE_KEY)
    return str(value) if value not in (None, "") else None


def mono_mix(audio: np.ndarray | Audio, sample_rate: int | None, spec: SnippetSpec) -> np.ndarray:
    """A song resampled to the spec's rate and averaged to mono. Shape ``(channels, samples)`` -> ``(1, samples)``."""
    if not isinstance(audio, Audio):
        if sample_rate is None:
            raise ValueError("sample_rate is required with a plain array")
        x = np.asarray(audio, dtype=np.float32)
        if x.ndim != 2:
            raise ValueError(f"expected audio (channels, samples), got shape {x.shape}")
        audio = Audio(x, int(sample_rate))
    return to_channels(resample(audio, spec.sample_rate), 1).samples


def song_starts(n_samples: int, spec: SnippetSpec) -> np.ndarray:
    """Start samples of a song's snippets: whole windows, as the job trains on; a song shorter
    than one window gets one zero-padded window. Shape ``(snippets,)``."""
    starts = window_starts(n_samples, spec.window, spec.hop_samples)
    if not len(starts) and n_samples > 0:
        starts = window_starts(n_samples, spec.window, spec.hop_samples, pad_last=True)
    return starts


def song_features(mix: np.ndarray, spec: SnippetSpec) -> tuple[np.ndarray, np.ndarray]:
    """Snippet start times (s) and features of a mono mix at ``spec.sample_rate`` (:func:`mono_mix`).

    Shape: ``(1, samples)`` -> ``(snippets,)``, ``(snippets, features)``.
    """
    starts = song_starts(mix.shape[-1], spec)
    return starts / spec.sample_rate, snippet_features(mix, spec.sample_rate, starts, spec)


@dataclass(frozen=True)
class Vote:
    """A song's style by the vote of its snippets.

    ``style``: the class with the largest summed probability (ties: the first in sorted
    order); ``votes``: per class, the summed probability over the snippets divided by their
    number; ``snippets``: how many voted.
    """

    style: str
    votes: dict[str, float]
    snippets: int


def vote(probabilities: np.ndarray, styles: Sequence[str]) -> Vote:
    """The vote of a song's snippets. Shape ``(snippets, styles)``; ``styles`` sorted.

    Raises ValueError for no snippets or unsorted styles.
    """
    p = np.asarray(probabilities, dtype=np.float64)
    if p.ndim != 2 or p.shape[1] != len(styles):
        raise ValueError(f"expected probabilities (snippets, {len(styles)}), got shape {p.shape}")
    if list(styles) != sorted(styles):
        raise ValueError(f"styles must be sorted for the tie rule, got {list(styles)}")
    if not len(p):
        raise ValueError("no snippets to vote")
    sums = p.sum(axis=0)
    best = int(np.flatnonzero(sums == sums.max())[0])  # the first of tied classes in sorted order
    return Vote(styles[best], {s: float(v) / len(p) for s, v in zip(styles, sums, strict=True)}, len(p))


def confusion(true: Sequence[str], predicted: Sequence[str], styles: Sequence[str]) -> np.ndarray:
    """Counts of (true, predicted) pairs. Shape ``(styles, styles)``, int64; rows are the true style."""
    index = {s: i for i, s in enumerate(styles)}
    m = np.zeros((len(styles), len(styles)), dtype=np.int64)
    for t, p in zip(true, predicted, strict=True):
        m[index[t], index[p]] += 1
    return m


def accuracy(m: np.ndarray) -> float | None:
    """Share of the diagonal of a confusion matrix; None when it counts nothing."""
    total = int(m.sum())
    return None if not total else round(float(np.trace(m)) / total, 4)


def check_styles(found: Mapping[str, str], given: Sequence[str] | None) -> list[str]:
    """The model's styles: ``given`` (sorted), or those ``found`` (track -> style), sorted.

    Raises :class:`~sepcore.errors.ConfigError` naming the tracks whose style is not among ``given``, or
    when fewer than two styles are left (nothing to tell apart).
    """
    if given is not None:
        other = {t: s for t, s in sorted(found.items()) if s not in given}
        if other:
            names = ", ".join(f"{t} ({s})" for t, s in list(other.items())[:10])
            raise ConfigError("classes", f"{len(other)} track(s) have a style outside classes {sorted(given)}: {names}")
    styles = sorted(given) if given is not None else sorted(set(found.values()))
    if len(styles) < 2:
        raise ConfigError("classes", f"style mode needs at least two styles, got {styles}")
    return styles


def song_results(frame: Any, styles: list[str], truth: Mapping[str, str]) -> dict[str, Any]:
    """Snippet- and song-level results of scored snippets of one split.

    ``frame``: a pandas frame with ``track_id`` and ``score_<style>`` columns (one row per
    snippet); ``truth``: track -> style. Returns ``snippet_confusion``, ``song_confusion``
    (lists of rows), ``snippet_accuracy``, ``song_accuracy``, ``snippets``, ``songs`` and
    ``songs_predicted`` (track -> voted style).
    """
    scores = frame[[f"score_{s}" for s in styles]].to_numpy(dtype=np.float64)
    tracks = frame["track_id"].to_numpy()
    snippet_true = [truth[t] for t in tracks]
    snippet_pred = [styles[i] for i in scores.argmax(axis=1)] if len(scores) else []
    songs = {t: vote(scores[tracks == t], styles).style for t in sorted(set(tracks.tolist()))}
    snip, song = confusion(snippet_true, snippet_pred, styles), confusion([truth[t] for t in songs], list(songs.values()), styles)
    return {"snippet_accuracy": accuracy(snip), "song_accuracy": accuracy(song), "snippets": len(tracks),
            "songs": len(songs), "snippet_confusion": snip.tolist(), "song_confusion": song.tolist(),
            "songs_predicted": songs}  # fmt: skip
