"""Routed rows in evaluate (``routed``): a router picks each track's group, whose model separates it."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pytest
from pydantic import ValidationError

from sepcore.errors import ConfigError
from sepcore.evaluate import compare as EC
from sepcore.evaluate import document as D
from sepcore.evaluate import job as J
from sepcore.evaluate import report as ER
from sepcore.evaluate import routed as RT
from sepcore.evaluate import tracks as T
from sepcore.evaluate.config import ScoringConfig
from tests.support.reliability import tiny_checkpoint
from tests.support.slakh import write_slakh_track

SR = 22050
STYLES = ["ballad", "funk", "rock"]
GROUPS = {"soft": ["ballad"], "loud": ["funk", "rock"]}
#: The stub router's style per track length (samples): the first track goes loud, the second soft.
BY_LENGTH = {SR // 2: "funk", 3 * SR // 5: "ballad"}

class StubRouter:
    """A Router whose vote is known: the style of the mixture's length (:data:`BY_LENGTH`)."""

    styles = STYLES

    def __init__(self) -> None:
        self.calls: list[int] = []

    def choose(self, audio, sample_rate, groups):
        assert audio.ndim == 2 and sample_rate == SR
        self.calls.append(audio.shape[1])
        style = BY_LENGTH[audio.shape[1]]
        (group,) = [g for g, styles in groups.items() if style in styles]
        return group, _Vote(style)


@dataclass(frozen=True)
class _Vote:
    style: str


def _slakh(root) -> str:
    """Two Slakh-layout tracks (0.5 s and 0.6 s, 22.05 kHz mono): a guitar tone and noise-burst drums."""
    for i, seconds in enumerate((0.5, 0.6)):
        t = np.arange(int(seconds * SR)) / SR
        rng = np.random.default_rng(i)
        stems = [0.2 * np.sin(2 * np.pi * 330 * t), 0.3 * rng.standard_normal(t.size) * (np.mod(t, 0.25) < 0.05)]
        write_slakh_track(root / f"Track{i + 1:05d}", list(zip(("Guitar", "Drums"), (25, 128), stems, strict=True)), SR)
    return str(root)


def _cfg(**keys):
    from ray_jobs.evaluate import EvaluateConfig

    return EvaluateConfig(data="d", checkpoint="c", output="o", **keys)


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("routed")
    data = _slakh(root / "data")
    soft = tiny_checkpoint(str(root / "soft"), target="drums", seed=1)
    loud = tiny_checkpoint(str(root / "loud"), target="drums", seed=2)
    routed = {"styled": {"router": str(root / "router"), "groups": GROUPS, "models": {"soft": soft, "loud": loud}}}
    return data, soft, loud, _cfg(routed=routed)


def test_the_routed_row_is_the_chosen_groups_separation(setup):
    from sepcore.data.sources import slakh_tracks

    data, soft, loud, cfg = setup
    (spec,) = RT.plan_routes(cfg.routed, {}, load=lambda uri: StubRouter())
    assert spec.classes == ["drums"] and spec.router_sha256 is None
    meta = EC.load_checkpoint_meta(soft)
    router, results = StubRouter(), []
    for track, group, style in zip(slakh_tracks(data), ["loud", "soft"], ["funk", "ballad"], strict=True):
        expect = EC.describe_row("expect", {"soft": soft, "loud": loud}[group], {})  # a compare row of that model
        res = T.evaluate_separation(track, meta, ScoringConfig(backend="fast"), None, ["drums"],
                                    rows=[(expect, EC.build_separator(expect))], routes=[(spec, router)])  # fmt: skip
        scores = res["classes"]["drums"]
        assert list(scores) == ["expect", "styled", "irm", "ibm", "mixture"]
        for src in ("instrument", "rest"):
            assert scores["styled"][src] == pytest.approx(scores["expect"][src], abs=1e-6)
        assert res["routed"] == {"styled": {"group": group, "style": style}}
        results.append(res)
    # Routing is deterministic per song: the same mixture again goes to the same group.
    track = slakh_tracks(data)[0]
    assert RT.route_estimates([(spec, router)], EC.build_separator, lambda r, c: np.zeros((c, 8)), np.zeros((1, SR)),
                              SR, ["guitar"]) == ({}, {})  # fmt: skip  (no class of the row: no vote)
    pair = T.reference_pairs(track, meta, ["drums"])[0]
    assert [router.choose(pair.mix, SR, spec.group_lists())[0] for _ in range(2)] == ["loud", "loud"]
    assert router.calls == [SR // 2, 3 * SR // 5, SR // 2, SR // 2]

    # metrics.json: the row is a method, each track records the choice, the head counts the songs.
    head = J.run_head(cfg, "separator", soft, "drums", meta, 2, rows=[expect], routes=[spec])
    for res in results:
        res.pop("signals")
    doc = D.metrics_document(head, cfg.described(), ["drums"], results, None, [], 1.0)
    D.validate_metrics(doc)
    assert doc["separation"]["drums"]["methods"] == ["expect", "styled", "irm", "ibm", "mixture"]
    assert [t["routed"]["styled"]["group"] for t in doc["separation"]["drums"]["tracks"]] == ["loud", "soft"]
    assert doc["routed"]["styled"]["songs"] == {"soft": 1, "loud": 1}
    assert doc["routed"]["styled"]["models"]["loud"]["checkpoint"].endswith("/loud")
    (table,) = ER.routed_tables(doc)
    assert [r[0] for r in table.rows] == ["soft", "loud"] and [r[3] for r in table.rows] == [1, 1]
    with pytest.raises(D.EvaluationError, match="styled"):
        D.validate_metrics({**doc, "routed": {}})  # an undeclared row


def test_routed_settings_are_part_of_a_tracks_fingerprint(setup):
    _, soft, loud, cfg = setup
    meta = EC.load_checkpoint_meta(soft)
    (spec,) = RT.plan_routes(cfg.routed, {}, load=lambda uri: StubRouter())

    def fingerprint(*routes):
        return J.task_settings(cfg, "separator", meta, soft, ["drums"], None, [], list(routes))["fingerprint"]

    swapped = RT.RouteSpec("styled", spec.router, spec.styles, spec.groups,
                           {"soft": spec.models["loud"], "loud": spec.models["soft"]})  # fmt: skip
    regrouped = RT.RouteSpec("styled", spec.router, spec.styles, {"soft": ("ballad", "funk"), "loud": ("rock",)},
                             spec.models)  # fmt: skip
    other_router = RT.RouteSpec("styled", spec.router, spec.styles, spec.groups, spec.models, "abc")
    prints = {fingerprint(), fingerprint(spec), fingerprint(swapped), fingerprint(regrouped), fingerprint(other_router)}
    assert len(prints) == 5
    assert fingerprint(spec) == fingerprint(RT.plan_routes(cfg.routed, {}, load=lambda uri: StubRouter())[0])


def test_routed_config_errors(setup):
    _, soft, loud, cfg = setup
    base = {"router": "r", "groups": GROUPS, "models": {"soft": soft, "loud": loud}}
    with pytest.raises(ValidationError, match=r"no model for the group\(s\) \['loud'\]"):
        _cfg(routed={"styled": {**base, "models": {"soft": soft}}})
    with pytest.raises(ValidationError, match=r"\['extra'\] are no group"):
        _cfg(routed={"styled": {**base, "models": {"soft": soft, "loud": loud, "extra": loud}}})
    with pytest.raises(ValidationError, match="style 'funk' is in both"):
        _cfg(routed={"styled": {**base, "groups": {"soft": ["funk"], "loud": ["funk", "rock"]}}})
    with pytest.raises(ValidationError, match="'irm' is the name of a built-in row"):
        _cfg(routed={"irm": base})
    with pytest.raises(ValidationError, match=r"\['styled'\] also name compare rows"):
        _cfg(routed={"styled": base}, compare={"styled": soft})
    with pytest.raises(ConfigError, match=r"routed.styled.groups.*unknown style.*loud: \['polka'\]"):
        RT.plan_routes(_cfg(routed={"styled": {**base, "groups": {"soft": ["ballad"], "loud": ["funk", "rock", "polka"]}}}).routed,
                       {}, load=lambda uri: StubRouter())  # fmt: skip
    with pytest.raises(ConfigError, match=r"router's style\(s\) \['rock'\] are in no group"):
        RT.plan_routes(_cfg(routed={"styled": {**base, "groups": {"soft": ["ballad"], "loud": ["funk"]}}}).routed,
                       {}, load=lambda uri: StubRouter())  # fmt: skip
    with pytest.raises(ConfigError, match="routed"):
        J.plan_routed(cfg, "activation")
