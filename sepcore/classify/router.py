"""Routing a song to a per-style model by the style classifier's vote (issue 23).

:func:`load_router` reads a ``sep classify`` output trained with ``labels: style`` (its
``model/`` folder, or that folder itself). :meth:`Router.vote` featurizes a song exactly as
the job featurized its training tracks (:func:`sepcore.classify.style.song_features`: mono at
the model's rate, whole snippets of the job's ``snippets`` settings) and votes
(:func:`sepcore.classify.style.vote`: the largest summed probability, ties to the first
style in sorted order). :meth:`Router.choose` maps the voted style to a group of styles.
Both are deterministic: the same song gives the same vote and group, in this router or a
fresh one.

Shape: audio ``(channels, samples)``, float32, at ``sample_rate``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from sepcore.classify.classifier import CLASSIFIER_FILE, Classifier
from sepcore.classify.report import MODEL_DIR
from sepcore.classify.snippets import ClassifyError
from sepcore.classify.style import Vote, mono_mix, song_features, vote
from sepcore.io import storage

__all__ = ["Router", "Vote", "load_router"]


class Router:
    """A style classifier (one multi-class LightGBM model) that votes on whole songs."""

    def __init__(self, model: Classifier):
        if not model.style:
            raise ClassifyError(str(model.info.get("data", "classifier")), "not a style model (labels: style)")
        self.model = model
        self.styles: list[str] = sorted(model.classes)
        if self.styles != list(model.classes):
            raise ClassifyError("classifier", f"style classes are not sorted: {model.classes}")

    def probabilities(self, audio: np.ndarray, sample_rate: int) -> np.ndarray:
        """The style model's probability of each style per snippet. Shape -> ``(snippets, styles)``."""
        x = np.asarray(audio)
        if x.ndim != 2:
            raise ValueError(f"expected audio (channels, samples), got shape {x.shape}")
        if not x.shape[-1]:
            raise ValueError("empty audio: no snippets to vote")
        _, features = song_features(mono_mix(x, sample_rate, self.model.spec), self.model.spec)
        return self.model.predict_proba(features)

    def vote(self, audio: np.ndarray, sample_rate: int) -> Vote:
        """The song's style by the vote of its snippets (:func:`sepcore.classify.style.vote`)."""
        return vote(self.probabilities(audio, sample_rate), self.styles)

    def check_groups(self, groups: Mapping[str, Sequence[str]]) -> None:
        """Raise ValueError naming a style no router class has, or a style in two groups."""
        seen: dict[str, str] = {}
        for name in sorted(groups):
            for style in groups[name]:
                if style not in self.styles:
                    raise ValueError(f"group '{name}' names style '{style}', which the router does not know "
                                     f"(its styles: {self.styles})")  # fmt: skip
                if style in seen:
                    raise ValueError(f"style '{style}' is in two groups: '{seen[style]}' and '{name}'")
                seen[style] = name

    def choose(self, audio: np.ndarray, sample_rate: int,
               groups: Mapping[str, Sequence[str]]) -> tuple[str, Vote]:  # fmt: skip
        """The group holding the song's voted style, and the vote.

        ``groups``: group name -> styles (:meth:`check_groups` first). Raises ValueError naming
        the voted style when no group holds it.
        """
        self.check_groups(groups)
        v = self.vote(audio, sample_rate)
        for name in sorted(groups):
            if v.style in groups[name]:
                return name, v
        raise ValueError(f"the song's style '{v.style}' is in no group of {sorted(groups)}")


def load_router(uri: str) -> Router:
    """The router of a ``sep classify`` output trained with ``labels: style`` (``<uri>/model``, or
    ``uri`` itself when it is the model folder). Raises :class:`ClassifyError` naming the folder
    when it holds no style classifier."""
    uri = storage.normalize_uri(uri)
    nested = storage.join(uri, MODEL_DIR)
    folder = nested if storage.exists(storage.join(nested, CLASSIFIER_FILE)) else uri
    model = Classifier.load(folder)
    if not model.style:
        raise ClassifyError(folder, "an instrument-presence classifier, not a style model (train with labels: style)")
    return Router(model)
