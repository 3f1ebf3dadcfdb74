"""Routed rows (``routed``): one separator per group of styles, chosen per track by a style router.

A routed row has a *router* (:func:`sepcore.classify.router.load_router`: a ``sep classify``
output trained with ``labels: style``), *groups* ``{group: [styles]}`` that hold every style
of the router, each once, and one separator per group (a project checkpoint or a Demucs
model, described as a compare row is: :class:`sepcore.evaluate.compare.RowSpec`).

For each track the router votes over the snippets of the track's mixture (the evaluation's:
every usable stem at the evaluation's rate and channels; the router brings it to its own
snippet settings) and ``Router.choose`` gives the group holding the style voted for; that
group's separator then separates the track exactly as a compare row does
(:func:`sepcore.evaluate.compare.row_estimates`: the mixture made at the separator's own
rate and channels, its stems brought to the references'). The row is scored for the classes
every group's separator has (:attr:`RouteSpec.classes`), so each track has the row whichever
group it goes to. Each track records its choice, ``routed: {row: {"group", "style"}}``.

Shapes: ``(channels, samples)``.
"""

from __future__ import annotations

import hashlib
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np

from sepcore.errors import ConfigError
from sepcore.evaluate.compare import RowSpec, describe_row, row_estimates
from sepcore.io import storage


class Router(Protocol):
    """What a routed row needs of :class:`sepcore.classify.router.Router`."""

    styles: list[str]

    def choose(self, audio: np.ndarray, sample_rate: int, groups: dict[str, list[str]]) -> tuple[str, Any]: ...


@dataclass(frozen=True)
class RouteSpec:
    """A routed row (picklable: what a track task needs to rebuild it).

    ``name``: the row's name; ``router``: the router's URI (normalized); ``styles``: the
    router's styles (sorted); ``groups``: ``{group: styles}``; ``models``: ``{group: RowSpec}``,
    each row named ``name`` (its estimates are this row's); ``router_sha256``: digest of the
    router's classifier file (:func:`router_digest`; None when there is none to read).
    """

    name: str
    router: str
    styles: tuple[str, ...]
    groups: Mapping[str, tuple[str, ...]]
    models: Mapping[str, RowSpec]
    router_sha256: str | None = None

    @property
    def classes(self) -> list[str]:
        """The class keys scored: those every group's separator has, in the first one's order."""
        rows = list(self.models.values())
        return [k for k in rows[0].classes if all(k in r.classes for r in rows[1:])]

    def group_lists(self) -> dict[str, list[str]]:
        """``groups`` as ``Router.choose`` takes them."""
        return {g: list(s) for g, s in self.groups.items()}

    def described(self) -> dict[str, Any]:
        """Its entry under ``routed`` in metrics.json (without the song counts)."""
        return {"router": self.router, "router_sha256": self.router_sha256, "styles": list(self.styles),
                "groups": self.group_lists(),
                "classes": self.classes, "models": {g: r.described() for g, r in self.models.items()}}  # fmt: skip

    def fingerprint(self) -> dict[str, Any]:
        """What its scores depend on: name, router, groups and each group model's identity."""
        return {"name": self.name, "router": self.router, "router_sha256": self.router_sha256,
                "styles": list(self.styles), "groups": self.group_lists(), "models": {g: r.fingerprint() for g, r in self.models.items()}}  # fmt: skip


def router_digest(uri: str) -> str | None:
    """SHA-256 of a ``sep classify`` output's classifier file (``<uri>/model/`` or ``uri``
    itself, as :func:`sepcore.classify.router.load_router` finds it; it holds the digests of
    the model files): the router's identity in a run's fingerprint. None when there is none."""
    from sepcore.classify.classifier import CLASSIFIER_FILE
    from sepcore.classify.report import MODEL_DIR

    for folder in (storage.join(uri, MODEL_DIR), uri):
        path = storage.join(folder, CLASSIFIER_FILE)
        if storage.exists(path):
            return hashlib.sha256(storage.read_text(path).encode()).hexdigest()
    return None


def check_groups(name: str, styles: Sequence[str], groups: Mapping[str, Sequence[str]]) -> None:
    """ConfigError (key ``routed.<name>.groups``) naming the router's styles in no group and
    the styles of a group the router does not know."""
    grouped = {s for g in groups.values() for s in g}
    unknown = {g: [s for s in in_g if s not in styles] for g, in_g in groups.items() if set(in_g) - set(styles)}
    if unknown:
        where = "; ".join(f"{g}: {bad}" for g, bad in unknown.items())
        raise ConfigError(f"routed.{name}.groups", f"unknown style(s) ({where}); the router knows {list(styles)}")
    left = [s for s in styles if s not in grouped]
    if left:
        raise ConfigError(f"routed.{name}.groups", f"the router's style(s) {left} are in no group; put each "
                          f"of {list(styles)} in one group")  # fmt: skip


def plan_routes(routed: Mapping[str, Any], demucs: Mapping[str, Any],
                load: Callable[[str], Router] | None = None) -> list[RouteSpec]:  # fmt: skip
    """The routed rows of a config's ``routed`` (:class:`sepcore.evaluate.config.RoutedConfig`
    each), in its order. Each router and group model is loaded once here, so a bad one fails
    the job at once, naming it; ``load``: the router loader (default
    :func:`sepcore.classify.router.load_router`).

    Raises :class:`~sepcore.errors.ConfigError` for groups that do not fit the router's styles
    (:func:`check_groups`) and for group models without a class in common.
    """
    if load is None:
        from sepcore.classify.router import load_router

        load = load_router
    out = []
    for name, rc in routed.items():
        uri = storage.normalize_uri(rc.router)
        styles = tuple(sorted(load(uri).styles))
        check_groups(name, styles, rc.groups)
        models = {g: describe_row(name, ref, demucs, key=f"routed.{name}.models.{g}") for g, ref in rc.models.items()}
        spec = RouteSpec(name, uri, styles, {g: tuple(s) for g, s in rc.groups.items()}, models, router_digest(uri))
        if not spec.classes:
            have = {g: list(r.classes) for g, r in models.items()}
            raise ConfigError(f"routed.{name}.models", f"the group models have no class in common ({have})")
        out.append(spec)
    return out


def route_estimates(routes: Sequence[tuple[RouteSpec, Router]], separator: Callable[[RowSpec], Any],
                    mixture: Callable[[int, int], np.ndarray], mix: np.ndarray, sample_rate: int,
                    keys: Sequence[str]) -> tuple[dict[str, dict[str, dict[str, np.ndarray]]], dict[str, dict[str, str]]]:  # fmt: skip
    """``({class: {row name: estimate}}, {row name: {"group", "style"}})`` of the routed rows
    that have one of ``keys``.

    ``routes``: ``(spec, its router)``; ``separator(row)``: the built separator of a group's
    row; ``mixture(rate, channels)``: the track's mixture made at that layout; ``mix``: the
    evaluation's mixture at ``sample_rate`` (what the router hears, and the references'
    layout). Shape: ``mix`` ``(channels, samples)``; each estimate ``{"instrument", "rest"}``
    of that shape.
    """
    by_class: dict[str, dict[str, dict[str, np.ndarray]]] = {}
    chosen: dict[str, dict[str, str]] = {}
    for spec, router in routes:
        wanted = [k for k in keys if k in spec.classes]
        if not wanted:
            continue
        group, vote = router.choose(mix, sample_rate, spec.group_lists())
        if group not in spec.models:
            raise ValueError(f"routed row '{spec.name}': the router chose '{group}', no group of {list(spec.models)}")
        row = spec.models[group]
        sep = separator(row)
        mix_in = mixture(int(sep.sample_rate), row.channels)
        for key, est in row_estimates(sep, row, mix_in, mix, sample_rate, wanted).items():
            by_class.setdefault(key, {})[spec.name] = est
        chosen[spec.name] = {"group": group, "style": str(vote.style)}
    return by_class, chosen


def song_counts(results: Sequence[Mapping[str, Any]], spec: Mapping[str, Any], name: str) -> dict[str, int]:
    """``{group: songs}`` a routed row sent to each group (every group, 0 when none) over the
    tracks' results (``routed`` of each); ``spec``: its :meth:`RouteSpec.described` entry."""
    counts = Counter(r["routed"][name]["group"] for r in results if name in (r.get("routed") or {}))
    return {g: int(counts.get(g, 0)) for g in spec["groups"]}
