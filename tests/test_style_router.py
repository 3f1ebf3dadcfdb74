"""Style mode of classify (``labels: style``) and the router (issue 23): labels from metadata.yaml,
the multi-class model, the vote and its tie rule, the router's determinism per song."""

from __future__ import annotations

import os
import shutil

import numpy as np
import pytest

from sepcore.classify import lgbm as L
from sepcore.classify import style as ST
from sepcore.classify.classifier import Classifier
from sepcore.classify.config import SnippetSpec
from sepcore.classify.router import Router, load_router
from sepcore.classify.snippets import ClassifyError
from sepcore.classify.track import write_style_track
from sepcore.data.sources import slakh_tracks
from sepcore.errors import ConfigError
from sepcore.io import storage
from sepcore.io.audio import read_audio

SPEC = SnippetSpec(labels="style")  # type: ignore[arg-type]  # the bare kind, as in YAML
#: Styles written into the demo songs' metadata.yaml (None: the line is left out).
STYLES = ["rock", "funk", "rock", "funk", "blues", None]


@pytest.fixture(scope="module")
def styled(demo_data, tmp_path_factory) -> str:
    """The 6 demo songs with a ``style`` in their metadata.yaml, but the last."""
    src = storage.local_path(demo_data)
    root = tmp_path_factory.mktemp("styled")
    names = sorted(p for p in os.listdir(src) if p.startswith("Track"))
    for name, style in zip(names, STYLES, strict=True):
        shutil.copytree(f"{src}/{name}", root / name)
        if style:
            with open(root / name / "metadata.yaml", "a") as fh:
                fh.write(f"style: {style}\n")
    return storage.normalize_uri(str(root))


def test_style_labels_come_from_metadata(styled, tmp_path):
    tracks = slakh_tracks(styled)
    assert [ST.track_style(t) for t in tracks] == STYLES
    folder = storage.normalize_uri(str(tmp_path))
    record = write_style_track(tracks[1], SPEC, folder, "funk")
    import pyarrow.parquet as pq

    table = pq.read_table(storage.local_path(record["shard"])).to_pydict()
    assert record["status"] == "ok" and record["style"] == "funk" and record["snippets"] == len(table["style"]) >= 10
    assert set(table["style"]) == {"funk"} and set(table["track_id"]) == {tracks[1].track_id}
    # The job leaves the track without a style out, naming it, and takes the styles found.
    from ray_jobs.classify import ClassifyConfig, _styles
    from sepcore.config import load_config

    cfg = load_config(ClassifyConfig, None, [f"data={styled}", "output=o", "labels=style"])
    styles, left_out = _styles(cfg, tracks)
    assert styles == ["blues", "funk", "rock"] and list(left_out) == [tracks[-1].track_id]
    given = load_config(ClassifyConfig, None, [f"data={styled}", "output=o", "labels={kind: style}",
                                               "classes=[rock, funk]"])  # fmt: skip
    with pytest.raises(ConfigError, match=rf"{tracks[4].track_id} \(blues\)"):
        _styles(given, tracks)


def _clusters(rng: np.random.Generator, n: int, k: int = 3, width: int = 6) -> tuple[np.ndarray, np.ndarray]:
    y = rng.integers(0, k, n)
    return (rng.normal(size=(n, width)) + 3.0 * np.eye(k, width)[y]).astype(np.float32), y


def test_the_multiclass_model_learns_a_tiny_set():
    rng = np.random.default_rng(0)
    (x, y), (xv, yv), (xt, yt) = _clusters(rng, 300), _clusters(rng, 60), _clusters(rng, 60)
    config = {"classes": ["a", "b", "c"], "features": [f"f{i}" for i in range(6)], "rounds": 100, "early_stopping": 10}
    info = L.fit_styles(x, y, xv, yv, L.lgb_params({"min_data_in_leaf": 5}), config)
    booster = L.load_booster(info["texts"][L.STYLE_MODEL], "style.txt")
    p = booster.predict(xt)
    assert p.shape == (60, 3) and np.allclose(p.sum(axis=1), 1.0)
    assert (p.argmax(axis=1) == yt).mean() > 0.85 and info["classes"][L.STYLE_MODEL]["iterations"] <= 100
    with pytest.raises(ValueError, match="1 class"):
        L.train_multiclass(x, np.zeros(len(x)), L.lgb_params(), 3)


@pytest.fixture(scope="module")
def songs(styled) -> list[tuple[str, str, np.ndarray, np.ndarray]]:
    """Track id, style, snippet starts (s) and features of the five styled demo songs, as the job makes them."""
    out = []
    for track in slakh_tracks(styled)[:5]:
        starts, feats = ST.song_features(ST.mono_mix(read_audio(track.mix_uri), None, SPEC), SPEC)
        out.append((track.track_id, str(ST.track_style(track)), starts, feats))
    return out


@pytest.fixture(scope="module")
def router_dir(songs, tmp_path_factory) -> str:
    """A style model trained on the snippets of the five styled demo songs, saved as the job saves it."""
    x, y, styles = [], [], ["blues", "funk", "rock"]
    for _, style, _, feats in songs:
        x.append(feats)
        y += [styles.index(style)] * len(feats)
    booster = L.train_multiclass(np.concatenate(x), np.array(y), L.lgb_params({"min_data_in_leaf": 5}), 3, 30,
                                 feature_names=SPEC.feature_names())  # fmt: skip
    out = tmp_path_factory.mktemp("classify_style")
    Classifier(SPEC, styles, {L.STYLE_MODEL: booster}, {}, SPEC.feature_names()).save(str(out / "model"))
    return str(out)


def test_the_router_is_deterministic_per_song(router_dir, styled):
    router = load_router(router_dir)
    assert router.styles == ["blues", "funk", "rock"]
    mix = read_audio(storage.join(styled, "Track00006", "mix.flac"))
    stereo = np.repeat(mix.samples, 2, axis=0)  # the router averages channels, as the job does
    groups = {"b": ["blues"], "f": ["funk"], "r": ["rock"]}
    group, vote = router.choose(stereo, mix.sample_rate, groups)
    assert vote.snippets == int(mix.duration) and abs(sum(vote.votes.values()) - 1) < 1e-6
    assert vote.style == max(vote.votes, key=lambda s: vote.votes[s]) and vote.style in groups[group]
    for again in (router, load_router(router_dir + "/model"), load_router(router_dir)):
        assert again.choose(stereo, mix.sample_rate, groups) == (group, vote)
        assert again.vote(mix.samples, mix.sample_rate) == vote
    # A song shorter than a snippet still votes, with its one zero-padded snippet.
    assert router.vote(stereo[:, : mix.sample_rate // 2], mix.sample_rate).snippets == 1


def test_ties_go_to_the_first_style_in_sorted_order():
    half = np.full((4, 3), 1 / 3)
    assert ST.vote(half, ["a", "b", "c"]) == ST.Vote("a", {s: pytest.approx(1 / 3) for s in "abc"}, 4)
    assert ST.vote(np.array([[0.2, 0.4, 0.4], [0.2, 0.4, 0.4]]), ["a", "b", "c"]).style == "b"
    with pytest.raises(ValueError, match="sorted"):
        ST.vote(half, ["c", "b", "a"])


def test_choose_names_the_style_no_group_holds(router_dir, styled):
    router = load_router(router_dir)
    mix = read_audio(storage.join(styled, "Track00006", "mix.flac"))
    style = router.vote(mix.samples, mix.sample_rate).style
    others = [s for s in router.styles if s != style]
    with pytest.raises(ValueError, match=f"style '{style}' is in no group"):
        router.choose(mix.samples, mix.sample_rate, {"rest": others})
    with pytest.raises(ValueError, match="'jazz', which the router does not know"):
        router.choose(mix.samples, mix.sample_rate, {"all": [*router.styles, "jazz"]})
    with pytest.raises(ValueError, match="in two groups"):
        router.choose(mix.samples, mix.sample_rate, {"x": router.styles, "y": [style]})


def test_a_presence_classifier_is_no_router(router_dir, tmp_path):
    model = Classifier.load(router_dir + "/model")
    presence = SnippetSpec(**{k: v for k, v in SPEC.flat().items() if k != "kind"})
    Classifier(presence, ["drums"], {"drums": model.boosters[L.STYLE_MODEL]}, {"drums": 0.5},
               SPEC.feature_names()).save(str(tmp_path))  # fmt: skip
    with pytest.raises(ClassifyError, match="not a style model"):
        load_router(str(tmp_path))
    with pytest.raises(ClassifyError, match="not a style model"):
        Router(Classifier.load(str(tmp_path)))



def test_the_report_gives_accuracy_and_confusion_per_split(router_dir, songs, styled, tmp_path):
    """finish_style (what the job runs after training; the job itself is run on the band corpus)."""
    import json

    import pandas as pd

    from sepcore.classify import report as CR
    from sepcore.classify.classifier import StyleScorer

    model = Classifier.load(router_dir + "/model")
    text = model.boosters[L.STYLE_MODEL].model_to_string()
    scorer, names = StyleScorer(text, SPEC.feature_names(), model.classes), SPEC.feature_names()
    usable: dict = {"train": [], "validation": [], "test": []}
    frames = []
    for (track_id, style, starts, feats), split in zip(songs, ["train"] * 3 + ["validation", "test"], strict=True):
        batch = {"track_id": np.array([track_id] * len(starts)), "start_s": starts,
                 "style": np.array([style] * len(starts)), **{n: feats[:, i] for i, n in enumerate(names)}}  # fmt: skip
        frames.append(pd.DataFrame(scorer(batch)))
        usable[split].append({"track_id": track_id, "snippets": len(starts), "style": style})
    out = storage.normalize_uri(str(tmp_path))
    summary = CR.finish_style(out, SPEC, usable, model.classes, text, {}, pd.concat(frames), "d", {"t6": "no style"})
    metrics = json.loads((tmp_path / CR.METRICS).read_text())
    assert metrics["task"] == "style" and metrics["classes"] == ["blues", "funk", "rock"]
    assert metrics["tracks_without_style"] == {"t6": "no style"}
    for split, res in metrics["results"].items():
        song, snip = np.array(res["song_confusion"]), np.array(res["snippet_confusion"])
        assert song.shape == snip.shape == (3, 3) and song.sum() == res["songs"] == len(usable[split])
        assert snip.sum() == res["snippets"] == metrics["snippets"][split]
        assert res["song_accuracy"] == pytest.approx(np.trace(song) / song.sum(), abs=1e-4)
        assert summary["figures"][f"song_accuracy_{split}"] == res["song_accuracy"]
    # The report's song vote is the router's: the saved model routes the test song to the same style.
    mix = read_audio(storage.join(styled, "Track00005", "mix.flac"))
    test = metrics["results"]["test"]["songs_predicted"]
    assert {songs[4][0]: load_router(out).vote(mix.samples, mix.sample_rate).style} == test
    assert (tmp_path / CR.CONFUSION_PNG).exists() and "songs (vote)" in (tmp_path / CR.REPORT).read_text()
