"""The saved snippet classifier (one LightGBM booster per class) and prediction on a new song.

A classifier folder holds ``<class>.txt`` per booster (style mode: one multi-class
``style.txt``, the classes being the sorted styles) plus ``classifier.json`` (written
last: the folder's commit marker), with the :class:`~sepcore.classify.config.SnippetSpec`
in its flat form.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from sepcore.classify.config import SnippetSpec
from sepcore.classify.features import snippet_features
from sepcore.classify.lgbm import STYLE_MODEL, load_booster
from sepcore.classify.snippets import ClassifyError, window_starts
from sepcore.io import storage
from sepcore.io.audio import Audio, resample, to_channels
from sepcore.units import Seconds

CLASSIFIER_FILE = "classifier.json"


@dataclass
class Classifier:
    """One LightGBM booster per class plus what prediction needs (spec, names, thresholds)."""

    spec: SnippetSpec
    classes: list[str]
    boosters: dict[str, Any]  # class -> lightgbm.Booster
    thresholds: dict[str, float]
    feature_names: list[str]
    info: dict[str, Any] = field(default_factory=dict)

    @property
    def style(self) -> bool:
        """Style mode: one multi-class booster (:data:`~sepcore.classify.lgbm.STYLE_MODEL`) over sorted styles."""
        return self.spec.labels.style

    def predict_proba(self, x: np.ndarray) -> np.ndarray:
        """Probability that each class plays (presence) or of each style (style mode, rows sum to 1).

        Shape ``(rows, features)`` -> ``(rows, classes)``.
        """
        x = np.asarray(x, dtype=np.float32)
        if x.ndim != 2 or x.shape[1] != len(self.feature_names):
            raise ValueError(f"expected features (rows, {len(self.feature_names)}), got shape {x.shape}")
        if self.style:
            if not len(x):
                return np.zeros((0, len(self.classes)), dtype=np.float64)
            return np.asarray(self.boosters[STYLE_MODEL].predict(x), dtype=np.float64).reshape(len(x), len(self.classes))
        out = np.full((len(x), len(self.classes)), np.nan, dtype=np.float64)
        for i, c in enumerate(self.classes):
            if c in self.boosters and len(x):
                out[:, i] = self.boosters[c].predict(x)
        return out

    def save(self, directory: str) -> None:
        """``<class>.txt`` per booster, then ``classifier.json`` (last: the commit marker)."""
        files = {}
        for c, booster in self.boosters.items():
            text = booster.model_to_string()
            storage.write_text(storage.join(directory, f"{c}.txt"), text)
            files[c] = {"file": f"{c}.txt", "sha256": hashlib.sha256(text.encode()).hexdigest()}
        meta = {"spec": self.spec.flat(), "classes": self.classes, "models": files,
                "thresholds": self.thresholds, "feature_names": self.feature_names, "info": self.info}  # fmt: skip
        storage.write_text(storage.join(directory, CLASSIFIER_FILE), json.dumps(meta, indent=1))

    @classmethod
    def load(cls, directory: str) -> Classifier:
        """Load a folder written by :meth:`save`; raises :class:`ClassifyError` naming the file."""
        directory = storage.normalize_uri(directory)
        uri = storage.join(directory, CLASSIFIER_FILE)
        if not storage.exists(uri):
            raise ClassifyError(directory, f"no {CLASSIFIER_FILE}: not a (complete) classifier folder")
        try:
            meta = json.loads(storage.read_text(uri))
            spec = SnippetSpec(**meta["spec"])
        except (json.JSONDecodeError, KeyError, TypeError, ValueError) as exc:  # ValidationError is a ValueError
            raise ClassifyError(uri, f"malformed ({exc})") from exc
        boosters = {}
        for c, entry in meta["models"].items():
            model_uri = storage.join(directory, entry["file"])
            text = storage.read_text(model_uri)
            if hashlib.sha256(text.encode()).hexdigest() != entry["sha256"]:
                raise ClassifyError(model_uri, f"does not match {CLASSIFIER_FILE} (partial write?)")
            boosters[c] = load_booster(text, model_uri)
        model = cls(spec, list(meta["classes"]), boosters, dict(meta["thresholds"]),
                    list(meta["feature_names"]), dict(meta.get("info", {})))  # fmt: skip
        if model.style and (STYLE_MODEL not in boosters or boosters[STYLE_MODEL].num_model_per_iteration() != len(model.classes)):
            raise ClassifyError(uri, f"style model does not have one output per class {model.classes}")
        return model


@dataclass
class SnippetPrediction:
    """Per-window presence of each class in a song."""

    classes: list[str]
    starts_s: np.ndarray  # (windows,)
    window_s: Seconds
    probabilities: np.ndarray  # (windows, classes)
    labels: np.ndarray  # (windows, classes), bool: probability >= the class's threshold

    def rows(self) -> list[dict[str, Any]]:
        """One dict per window: ``start_s``, ``end_s``, ``<class>`` probability, ``playing`` classes."""
        out = []
        for i, start in enumerate(self.starts_s):
            row: dict[str, Any] = {"start_s": round(float(start), 3), "end_s": round(float(start) + self.window_s, 3)}
            row.update({c: round(float(p), 4) for c, p in zip(self.classes, self.probabilities[i], strict=True)})
            row["playing"] = [c for c, on in zip(self.classes, self.labels[i], strict=True) if on]
            out.append(row)
        return out


def predict(model_dir: str | Classifier, audio: np.ndarray | Audio, sample_rate: int | None = None) -> SnippetPrediction:
    """Label every window (every second by default) of a new song with the classes playing.

    ``model_dir``: a classifier folder (the classify job's ``<output>/model``) or a
    loaded :class:`Classifier`. ``audio``: ``(channels, samples)`` or ``(samples,)``
    at ``sample_rate``, or an :class:`~sepcore.io.audio.Audio`; it is resampled to the
    model's rate and averaged to mono. The last partial window is zero-padded, so the
    whole song is covered.
    """
    model = model_dir if isinstance(model_dir, Classifier) else Classifier.load(model_dir)
    if isinstance(audio, Audio):
        sig = audio
    else:
        if sample_rate is None:
            raise ValueError("sample_rate is required with a plain array")
        x = np.asarray(audio, dtype=np.float32)
        sig = Audio(x[None, :] if x.ndim == 1 else x, int(sample_rate))
    spec = model.spec
    mono = to_channels(resample(sig, spec.sample_rate), 1).samples
    starts = window_starts(mono.shape[-1], spec.window, spec.hop_samples, pad_last=True)
    probs = model.predict_proba(snippet_features(mono, spec.sample_rate, starts, spec))
    if model.style:  # one style per window: the most probable
        labels = np.eye(len(model.classes), dtype=bool)[probs.argmax(axis=1)] if len(probs) else probs.astype(bool)
        return SnippetPrediction(list(model.classes), starts / spec.sample_rate, spec.snippets.window_s, probs, labels)
    thr = np.array([model.thresholds.get(c, 0.5) for c in model.classes])
    return SnippetPrediction(list(model.classes), starts / spec.sample_rate, spec.snippets.window_s, probs, probs >= thr)


class BatchScorer:
    """Scores batches of snippet columns with the boosters (loaded once, e.g. in a Ray Data actor).

    Keeps ``track_id``, ``start_s``, ``label_*`` and ``cnn_*``; adds ``score_<class>``.
    """

    def __init__(self, texts: dict[str, str], names: list[str]):
        self.boosters = {c: load_booster(t, f"{c}.txt") for c, t in texts.items()}
        self.names = names

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        x = np.stack([batch[n] for n in self.names], axis=1).astype(np.float32)
        out = {k: v for k, v in batch.items() if k in ("track_id", "start_s") or k.startswith(("label_", "cnn_"))}
        out.update({f"score_{c}": b.predict(x) for c, b in self.boosters.items()})
        return out


class StyleScorer:
    """Style mode's :class:`BatchScorer`: the multi-class booster (loaded once) over batches.

    Keeps ``track_id``, ``start_s`` and ``style``; adds ``score_<style>`` per style of ``styles`` (sorted,
    the booster's class order).
    """

    def __init__(self, text: str, names: list[str], styles: list[str]):
        self.booster = load_booster(text, f"{STYLE_MODEL}.txt")
        self.names, self.styles = names, styles

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        x = np.stack([batch[n] for n in self.names], axis=1).astype(np.float32)
        p = np.asarray(self.booster.predict(x)).reshape(len(x), len(self.styles))
        out = {k: batch[k] for k in ("track_id", "start_s", "style")}
        out.update({f"score_{s}": p[:, i] for i, s in enumerate(self.styles)})
        return out
