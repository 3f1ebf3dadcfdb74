"""Snippet labels, features, ROC, LightGBM helpers and prediction of sepcore.classify (no Ray)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from torch import nn

from sepcore.classify import classifier as M
from sepcore.classify import cnn as N
from sepcore.classify import features as F
from sepcore.classify import lgbm as L
from sepcore.classify import roc as R
from sepcore.classify import snippets as K
from sepcore.classify import track as T
from sepcore.classify.config import SnippetSpec
from sepcore.data.classes import CLASSES
from sepcore.data.sources import SourceStem, SourceTrack
from sepcore.errors import AudioError
from sepcore.io import storage
from sepcore.io.audio import Audio, write_audio

RATE = 8000
#: A small, fast spec for constructed signals (8 kHz, 512-point FFT).
SPEC = SnippetSpec(sample_rate=RATE, n_fft=512, hop=128, n_mels=24, fmax=4000.0, ber_split_hz=1000.0)
PIANO, BASS, DRUMS = (CLASSES.index(c) for c in ("piano", "bass", "drums"))


def sine(freq: float, seconds: float, amp: float, rate: int = RATE) -> np.ndarray:
    t = np.arange(round(seconds * rate)) / rate
    return (amp * np.sin(2 * np.pi * freq * t)).astype(np.float32)


def span(x: np.ndarray, start: float, end: float, total: float, rate: int = RATE) -> np.ndarray:
    """``x`` placed in ``[start, end)`` seconds of a silent signal of ``total`` seconds."""
    out = np.zeros(round(total * rate), dtype=np.float32)
    a, b = round(start * rate), round(end * rate)
    out[a:b] = x[: b - a]
    return out


def known_spans() -> np.ndarray:
    """6 s: piano in [1, 3), drums (noise) in [2.5, 6), a bass 40 dB down throughout."""
    sums = np.zeros((len(CLASSES), 1, 6 * RATE), dtype=np.float32)
    sums[PIANO, 0] = span(sine(440, 6, 0.3), 1, 3, 6)
    noise = np.random.default_rng(0).standard_normal(6 * RATE).astype(np.float32) * 0.3
    sums[DRUMS, 0] = span(noise, 2.5, 6, 6)
    sums[BASS, 0] = sine(55, 6, 0.003)
    return sums


# ---------------------------------------------------------------- labels


def test_labels_follow_known_active_spans():
    sums = known_spans()
    starts = K.window_starts(sums.shape[-1], SPEC.window, SPEC.hop_samples)
    labels = K.snippet_labels(sums, starts, SPEC)
    assert labels.shape == (6, len(CLASSES)) and labels.dtype == np.uint8
    assert labels[:, PIANO].tolist() == [0, 1, 1, 0, 0, 0]
    assert labels[:, DRUMS].tolist() == [0, 0, 1, 1, 1, 1]  # half a window of drums is enough
    # The quiet bass counts only where it is the whole mix (relative rule) ...
    assert labels[:, BASS].tolist() == [1, 0, 0, 0, 0, 0]
    # ... and not at all once the absolute floor is above its level (-53 dBFS).
    strict = SnippetSpec(**{**SPEC.flat(), "floor_dbfs": -50.0})
    assert K.snippet_labels(sums, starts, strict)[:, BASS].tolist() == [0] * 6
    silent = [i for i, c in enumerate(CLASSES) if i not in (PIANO, BASS, DRUMS)]
    assert not labels[:, silent].any()


def test_labels_with_half_second_hop_and_threshold():
    sums = known_spans()
    half = SnippetSpec(**{**SPEC.flat(), "hop_s": 0.5})
    starts = K.window_starts(sums.shape[-1], half.window, half.hop_samples)
    assert (starts / RATE).tolist() == [0, 0.5, 1, 1.5, 2, 2.5, 3, 3.5, 4, 4.5, 5]
    labels = K.snippet_labels(sums, starts, half)
    # Window [2.5, 3.5): half a window of piano at -7 dB re the mix still plays.
    assert labels[:, PIANO].tolist() == [0, 1, 1, 1, 1, 1, 0, 0, 0, 0, 0]
    # A threshold above -7 dB drops exactly that window; [0.5, 1.5) stays (the piano
    # half-window is still 0 dB re a mix holding only it and the quiet bass).
    tight = SnippetSpec(**{**half.flat(), "threshold_db": -5.0})
    assert K.snippet_labels(sums, starts, tight)[:, PIANO].tolist() == [0, 1, 1, 1, 1, 0, 0, 0, 0, 0, 0]


def test_silence_has_no_labels_and_finite_rms():
    sums = np.zeros((len(CLASSES), 2, 3 * RATE), dtype=np.float32)
    starts = K.window_starts(sums.shape[-1], SPEC.window, SPEC.hop_samples)
    assert not K.snippet_labels(sums, starts, SPEC).any()
    np.testing.assert_allclose(K.window_rms_db(sums, starts, SPEC.window), -100.0, rtol=0, atol=1e-3)


def test_window_rms_matches_direct_computation_and_pads_past_the_end():
    x = np.random.default_rng(1).standard_normal((2, 2500)).astype(np.float32)
    starts = K.window_starts(2500, 1000, 700, pad_last=True)
    assert starts.tolist() == [0, 700, 1400, 2100]  # the last window runs past the end
    got = K.window_rms_db(x, starts, 1000)
    padded = np.pad(x, ((0, 0), (0, 600)))
    want = [10 * np.log10(np.mean(padded[:, s : s + 1000] ** 2)) for s in starts]
    np.testing.assert_allclose(got, want, atol=1e-6)
    assert K.window_starts(2500, 1000, 700).tolist() == [0, 700, 1400]
    assert K.window_starts(500, 1000, 700).tolist() == []


@pytest.mark.parametrize(
    "override, key",
    [("classes=[piano, kazoo]", "classes"), ("labels.threshold_db=3", "labels.threshold_db"),
     ("features.hop=4096", "<root>"), ("activation_pool=median", "activation_pool")],
)  # fmt: skip
def test_bad_job_configs_name_the_key(override, key):
    from ray_jobs.classify import ClassifyConfig
    from sepcore.config import load_config
    from sepcore.errors import ConfigError

    with pytest.raises(ConfigError) as info:
        load_config(ClassifyConfig, None, ["data=d", "output=o", override])
    assert info.value.key == key


def test_bad_shapes_raise():
    with pytest.raises(ValueError, match="class sums"):
        K.snippet_labels(np.zeros((3, 100)), np.array([0]), SPEC)
    with pytest.raises(ValueError, match="resample first"):
        F.snippet_features(np.zeros((1, RATE)), 16000, np.array([0]), SPEC)
    with pytest.raises(ValueError, match="shorter than n_fft"):
        SnippetSpec(sample_rate=RATE, window_s=0.05, n_fft=512, hop=128, fmax=4000.0)


# ---------------------------------------------------------------- features


def test_features_of_a_window_depend_on_that_window_only():
    x = np.random.default_rng(2).standard_normal((1, 5 * RATE)).astype(np.float32) * 0.1
    starts = K.window_starts(x.shape[-1], SPEC.window, SPEC.hop_samples)
    whole = F.snippet_features(x, RATE, starts, SPEC)
    assert whole.shape == (5, len(SPEC.feature_names())) and whole.dtype == np.float32
    alone = F.snippet_features(x[:, 2 * RATE : 3 * RATE], RATE, np.array([0]), SPEC)
    np.testing.assert_allclose(whole[2], alone[0], rtol=1e-5, atol=1e-4)
    # Changing another window leaves this one's features as they were.
    y = x.copy()
    y[:, 3 * RATE :] *= 5
    np.testing.assert_allclose(F.snippet_features(y, RATE, starts, SPEC)[2], whole[2], rtol=1e-5, atol=1e-4)


def test_spectral_features_describe_the_signal():
    names = SPEC.feature_names()
    col = {n: i for i, n in enumerate(names)}
    low, high = sine(200, 1, 0.5), sine(2500, 1, 0.5)
    x = np.concatenate([low, high, np.zeros(RATE, np.float32)])[None]
    f = F.snippet_features(x, RATE, np.array([0, RATE, 2 * RATE]), SPEC)
    assert f[0, col["centroid_mean"]] == pytest.approx(200, rel=0.1)
    assert f[1, col["centroid_mean"]] == pytest.approx(2500, rel=0.05)
    assert f[0, col["ber_mean"]] > 20 > -20 > f[1, col["ber_mean"]]  # low vs high band dominance
    assert f[1, col["zcr"]] > 5 * f[0, col["zcr"]]
    assert f[0, col["rms_db_mean"]] == pytest.approx(20 * np.log10(0.5 / np.sqrt(2)), abs=1.0)
    # A silent window: no spectral shape (NaN, LightGBM's missing value), floor level.
    assert np.isnan(f[2, col["centroid_mean"]]) and f[2, col["rms_db_max"]] == pytest.approx(-100.0, abs=1e-3)
    assert not np.isnan(np.delete(f[:2], [], axis=1)).any()


def _documented_frames() -> dict[str, list[str]]:
    """The module docstring's two lists: which features use non-silent frames, which all."""
    import re

    doc = F.__doc__ or ""
    lists = {}
    for key, start in (("non-silent", "* Over non-silent frames only:"), ("all", "* Over all frames of the window:")):
        text = doc[doc.index(start) :].split("\n* ")[0].split("\n\n")[0]
        lists[key] = re.findall(r"``(\w+)_\*``", text)
    return lists


def test_shape_features_use_sounding_frames_and_level_features_all_frames():
    names = SPEC.feature_names()
    col = {n: i for i, n in enumerate(names)}
    documented = _documented_frames()
    families = {"logmel" if n.startswith("logmel_") else n.rsplit("_", 1)[0] for n in names} - {"zcr"}
    assert sorted(documented["non-silent"] + documented["all"]) == sorted(families)  # each listed once
    # White noise has the same spectral shape in every frame, cut or not: a window of
    # noise then silence has the shape of noise when the silent frames are left out (with
    # them, the mean centroid would halve and the flatness and BER move towards 0 dB).
    noise = np.random.default_rng(7).standard_normal(RATE).astype(np.float32) * 0.1
    half = noise.copy()
    half[RATE // 2 :] = 0.0
    x = np.concatenate([noise, half, np.zeros(RATE, np.float32)])[None]
    f = F.snippet_features(x, RATE, np.array([0, RATE, 2 * RATE]), SPEC)
    for name in documented["non-silent"]:
        mean, std = col[f"{name}_mean"], col[f"{name}_std"]
        assert f[1, mean] == pytest.approx(f[0, mean], rel=0.05, abs=0.3), name
        assert f[1, std] == pytest.approx(f[0, std], rel=0.5, abs=0.5), name
        assert np.isnan(f[2, mean]) and np.isnan(f[2, std])  # no sounding frame: missing
    # Levels count the silent half at the -100 dB floor.
    mels = [col[f"logmel_mean_{i:02d}"] for i in range(SPEC.features.n_mels)]
    assert (f[1, mels] < f[0, mels] - 20).all()
    assert f[1, col["rms_db_mean"]] < f[0, col["rms_db_mean"]] - 20
    assert f[1, col["rms_db_max"]] == pytest.approx(f[0, col["rms_db_max"]], abs=1.0)
    assert f[1, col["rms_db_std"]] > 10 * f[0, col["rms_db_std"]]
    levels = [i for n, i in col.items() if n.rsplit("_", 1)[0] not in documented["non-silent"]]
    assert np.isfinite(f[2, levels]).all()  # a silent window has levels (the floor), not NaN
    assert (f[2, col["rms_db_mean"]], f[2, col["flux_mean"]], f[2, col["zcr"]]) == pytest.approx((-100.0, 0.0, 0.0), abs=1e-3)


# ---------------------------------------------------------------- tracks on disk


def _write_track(root, name: str, stems: dict[str, np.ndarray], mix: np.ndarray | None = None) -> SourceTrack:
    folder = storage.join(storage.normalize_uri(str(root)), name)
    records = []
    for i, (cls, audio) in enumerate(stems.items()):
        uri = storage.join(folder, "stems", f"S{i:02d}.flac")
        write_audio(uri, Audio(audio[None], RATE))
        records.append(SourceStem(f"S{i:02d}", cls.split("#")[0], uri))
    mix_uri = None
    if mix is not None:
        mix_uri = storage.join(folder, "mix.flac")
        write_audio(mix_uri, Audio(mix[None], RATE))
    return SourceTrack(f"slakh:{name}", "slakh", folder, None, tuple(records), mix_uri)


def test_track_labels_come_from_stems_and_features_from_the_mix(tmp_path):
    a, b = span(sine(110, 4, 0.4), 0, 2, 4), span(sine(660, 4, 0.2), 1, 4, 4)
    one = _write_track(tmp_path, "T1", {"bass": a, "piano": b})
    two = _write_track(tmp_path, "T2", {"guitar": a, "strings": b}, mix=a + b)
    three = _write_track(tmp_path, "T3", {"guitar": a, "strings": b}, mix=0.5 * (a + b))
    s1, mix1 = T.track_snippets(one, SPEC)
    s2, _ = T.track_snippets(two, SPEC)
    s3, _ = T.track_snippets(three, SPEC)
    assert s1.starts_s.tolist() == [0, 1, 2, 3] and mix1.shape == (1, 4 * RATE)
    assert s1.labels[:, BASS].tolist() == [1, 1, 0, 0] and s1.labels[:, PIANO].tolist() == [0, 1, 1, 1]
    # The same audio under other class names: the labels move, the features do not.
    g, s = CLASSES.index("guitar"), CLASSES.index("strings")
    assert s2.labels[:, g].tolist() == [1, 1, 0, 0] and s2.labels[:, s].tolist() == [0, 1, 1, 1]
    assert not s2.labels[:, [BASS, PIANO]].any()
    np.testing.assert_allclose(s1.features, s2.features, rtol=1e-3, atol=0.05)
    # A mix file scaled by 0.5 (a normalisation factor) changes the features' levels only.
    np.testing.assert_array_equal(s3.labels, s2.labels)
    rms = SPEC.feature_names().index("rms_db_mean")
    np.testing.assert_allclose(s3.features[:, rms], s2.features[:, rms] - 6.02, atol=0.05)
    # The snippet file holds every column and reads back.
    import io

    import pyarrow.parquet as pq

    table = pq.read_table(io.BytesIO(s1.to_parquet(SPEC.feature_names()))).to_pydict()
    assert table["track_id"] == ["slakh:T1"] * 4 and table["label_bass"] == [1, 1, 0, 0]
    assert len(table) == 2 + len(SPEC.feature_names()) + len(CLASSES)


def test_bad_tracks_raise_errors_naming_the_file(tmp_path):
    track = _write_track(tmp_path, "T1", {"bass": sine(110, 2, 0.4)})
    bad = tmp_path / "T1" / "stems" / "S00.flac"
    bad.write_bytes(b"not audio at all")
    with pytest.raises(AudioError, match="S00.flac"):
        T.track_snippets(track, SPEC)
    empty = SourceTrack("slakh:T2", "slakh", "file:///data/T2", None, ())
    with pytest.raises(K.ClassifyError, match="/data/T2: track has no stems"):
        T.track_snippets(empty, SPEC)


# ---------------------------------------------------------------- splits and ROC


def test_track_level_split_has_no_overlap():
    tracks = [f"slakh:Track{i:05d}" for i in range(40)]
    splits = K.track_splits(tracks, {"train": 0.8, "validation": 0.1, "test": 0.1}, seed=3,
                            fixed={"slakh:Track00000": "test"})  # fmt: skip
    rows = [t for t in tracks for _ in range(7)]  # 7 snippets per track
    index = K.split_rows(rows, splits)
    owners = {s: {rows[i] for i in idx} for s, idx in index.items()}
    assert set(owners) == {"train", "validation", "test"}
    assert not owners["train"] & owners["validation"] and not owners["train"] & owners["test"]
    assert not owners["validation"] & owners["test"]
    assert sum(len(i) for i in index.values()) == len(rows)  # every snippet in one split
    assert "slakh:Track00000" in owners["test"] and len(owners["train"]) == 31
    with pytest.raises(ValueError, match="without a split"):
        K.split_rows(["slakh:unknown"], splits)


def test_roc_auc_equals_the_pairwise_probability_with_ties():
    rng = np.random.default_rng(4)
    y = rng.integers(0, 2, 300)
    s = rng.integers(0, 10, 300) + y * 2.0  # many ties
    pos, neg = s[y == 1], s[y == 0]
    pairs = (pos[:, None] > neg[None, :]).mean() + 0.5 * (pos[:, None] == neg[None, :]).mean()
    assert R.roc_auc(y, s) == pytest.approx(pairs, abs=1e-12)
    fpr, tpr, thr = R.roc_curve(y, s)
    assert (fpr[0], tpr[0], fpr[-1], tpr[-1]) == (0, 0, 1, 1) and np.isinf(thr[0])
    assert np.all(np.diff(fpr) >= 0) and np.all(np.diff(tpr) >= 0) and len(thr) == len(np.unique(s)) + 1
    assert R.roc_auc([0, 0, 1, 1], [0.1, 0.2, 0.8, 0.9]) == 1.0
    assert R.roc_auc([0, 0, 1, 1], [0.9, 0.8, 0.2, 0.1]) == 0.0
    assert R.roc_auc([1, 1, 1], [0.1, 0.2, 0.3]) is None
    assert R.youden_threshold([0, 0, 1, 1], [0.1, 0.3, 0.6, 0.9]) == 0.6


def test_roc_plot_draws_the_computed_curves_per_split():
    import pandas as pd

    from sepcore.classify.report import roc_by_split, roc_figure

    rng = np.random.default_rng(3)
    frames = {}
    for split in ("validation", "test"):
        y = rng.integers(0, 2, 60)
        piano = 1 - y if split == "validation" else np.zeros(60, dtype=int)  # no piano in the test split
        frames[split] = pd.DataFrame({"label_bass": y, "score_bass": y * 0.6 + rng.random(60),
                                      "label_piano": piano, "score_piano": rng.random(60)})  # fmt: skip
    ev = roc_by_split(frames, ["bass", "piano"], cnn=False)
    fig = roc_figure(ev["roc"])
    assert len(fig.axes) == 2
    for ax, split in zip(fig.axes, ("validation", "test"), strict=True):
        assert (ax.get_title(), ax.get_xlabel(), ax.get_ylabel()) == (
            f"ROC, {split} snippets", "false positive rate", "true positive rate")  # fmt: skip
        df, classes = frames[split], ["bass", "piano"] if split == "validation" else ["bass"]
        aucs = {c: R.roc_auc(df[f"label_{c}"].to_numpy(), df[f"score_{c}"].to_numpy()) for c in classes}
        labels = [f"{c.capitalize()} AUC = {aucs[c]:.2f}" for c in classes]
        assert [t.get_text() for t in ax.get_legend().get_texts()] == labels  # a class without positives: no curve
        curves = {ln.get_label(): ln for ln in ax.lines}
        for c, label in zip(classes, labels, strict=True):
            fpr, tpr, _ = R.roc_curve(df[f"label_{c}"].to_numpy(), df[f"score_{c}"].to_numpy())
            x, y = curves[label].get_xdata(), curves[label].get_ydata()
            np.testing.assert_array_equal(x, fpr)
            np.testing.assert_array_equal(y, tpr)
            assert (x[0], y[0], x[-1], y[-1]) == (0, 0, 1, 1)
            assert np.trapezoid(y, x) == pytest.approx(aucs[c])  # the legend's AUC is the area drawn
        (chance,) = [ln for ln in ax.lines if ln.get_linestyle() == "--"]
        assert list(chance.get_xdata()) == list(chance.get_ydata()) == [0, 1]


# ---------------------------------------------------------------- a constructed learning problem


def _song(rng: np.random.Generator, seconds: int = 10) -> np.ndarray:
    """Class sums of a song: a bass (60-110 Hz) and a piano (chords 300-1500 Hz), each
    playing in random whole seconds at random levels."""
    n = seconds * RATE
    sums = np.zeros((len(CLASSES), 1, n), dtype=np.float32)
    t = np.arange(RATE) / RATE
    for sec in range(seconds):
        part = slice(sec * RATE, (sec + 1) * RATE)
        if rng.random() < 0.5:
            sums[BASS, 0, part] = rng.uniform(0.05, 0.3) * np.sin(2 * np.pi * rng.uniform(60, 110) * t)
        if rng.random() < 0.6:
            chord = sum(np.sin(2 * np.pi * f * t) for f in rng.uniform(300, 1500, 3))
            sums[PIANO, 0, part] = rng.uniform(0.03, 0.15) * chord
    return sums


def _dataset(n_tracks: int = 16, seed: int = 5):
    rng = np.random.default_rng(seed)
    feats, labels, rows = [], [], []
    for k in range(n_tracks):
        sums = _song(rng)
        mix = sums.sum(axis=0)
        starts = K.window_starts(mix.shape[-1], SPEC.window, SPEC.hop_samples)
        feats.append(F.snippet_features(mix, RATE, starts, SPEC))
        labels.append(K.snippet_labels(sums, starts, SPEC))
        rows += [f"t{k}"] * len(starts)
    splits = K.track_splits(sorted(set(rows)), {"train": 0.5, "validation": 0.25, "test": 0.25}, seed=0)
    return np.concatenate(feats), np.concatenate(labels), rows, splits


@pytest.fixture(scope="module")
def constructed():
    return _dataset()


def _fit_and_test_auc(x, y, rows, splits, cls: int) -> float:
    idx = K.split_rows(rows, splits)
    tr, va, te = idx["train"], idx["validation"], idx["test"]
    params = L.lgb_params({"min_data_in_leaf": 5})
    booster = L.train_binary(x[tr], y[tr, cls], params, 200, x[va], y[va, cls], 20, SPEC.feature_names())
    auc = R.roc_auc(y[te, cls], booster.predict(x[te]))
    assert auc is not None
    return auc


def test_separable_problem_reaches_auc_near_one(constructed):
    x, y, rows, splits = constructed
    assert 0.3 < y[:, BASS].mean() < 0.7 and 0.3 < y[:, PIANO].mean() < 0.8
    assert _fit_and_test_auc(x, y, rows, splits, BASS) > 0.97
    assert _fit_and_test_auc(x, y, rows, splits, PIANO) > 0.9


def test_shuffled_labels_give_auc_near_one_half(constructed):
    """Labels permuted over all snippets: nothing in split, training or scoring lets the
    test labels through, so the test AUC is chance."""
    x, y, rows, splits = constructed
    rng = np.random.default_rng(6)
    aucs = [_fit_and_test_auc(x, y[rng.permutation(len(y))], rows, splits, BASS) for _ in range(5)]
    assert abs(float(np.mean(aucs)) - 0.5) < 0.1, aucs


def test_training_needs_both_labels():
    with pytest.raises(ValueError, match="all 0"):
        L.train_binary(np.zeros((10, 3)), np.zeros(10), L.lgb_params())


# ---------------------------------------------------------------- the model folder and predict


@pytest.fixture(scope="module")
def classifier(constructed, tmp_path_factory):
    x, y, rows, splits = constructed
    idx = K.split_rows(rows, splits)
    tr, va = idx["train"], idx["validation"]
    params = L.lgb_params({"min_data_in_leaf": 5})
    boosters = {c: L.train_binary(x[tr], y[tr, CLASSES.index(c)], params, 100, x[va], y[va, CLASSES.index(c)],
                                  20, SPEC.feature_names()) for c in ("bass", "piano")}  # fmt: skip
    thresholds = {c: R.youden_threshold(y[va, CLASSES.index(c)], b.predict(x[va])) for c, b in boosters.items()}
    model = M.Classifier(SPEC, ["bass", "piano"], boosters, thresholds, SPEC.feature_names())
    folder = storage.normalize_uri(str(tmp_path_factory.mktemp("model")))
    model.save(folder)
    return folder


def test_predict_labels_every_second_of_a_new_song(classifier):
    sums = _song(np.random.default_rng(99), seconds=8)
    mix = sums.sum(axis=0)[:, : int(7.5 * RATE)]  # 7.5 s: the last half second is labelled too
    up = np.repeat(mix, 2, axis=0)  # stereo at another rate: resampled and downmixed
    import soxr

    audio = soxr.resample(up.T, RATE, 16000).T.astype(np.float32)
    pred = M.predict(classifier, audio, 16000)
    assert pred.classes == ["bass", "piano"] and pred.starts_s.tolist() == list(range(8))
    assert pred.probabilities.shape == (8, 2) and np.all((pred.probabilities >= 0) & (pred.probabilities <= 1))
    truth = K.snippet_labels(sums[:, :, : int(7.5 * RATE)], np.arange(8) * RATE, SPEC)[:, BASS]
    assert (pred.labels[:, 0] == truth.astype(bool)).mean() >= 0.75
    rows = pred.rows()
    assert rows[-1]["start_s"] == 7.0 and rows[-1]["end_s"] == 8.0 and set(rows[0]) >= {"bass", "piano", "playing"}
    with pytest.raises(ValueError, match="sample_rate is required"):
        M.predict(classifier, audio)


def test_importance_plot_shows_the_largest_gain_shares_per_class(classifier):
    from sepcore.classify.report import importance_figure

    texts = {c: storage.read_text(storage.join(classifier, f"{c}.txt")) for c in ("bass", "piano")}
    fig = importance_figure(texts, SPEC, top=5)
    assert [ax.get_title() for ax in fig.axes] == ["bass", "piano"]
    for ax, text in zip(fig.axes, texts.values(), strict=True):
        booster = L.load_booster(text, "x.txt")
        gain = booster.feature_importance("gain")
        share = np.sort(gain / gain.sum())[::-1][:5]
        widths = [bar.get_width() for bar in ax.patches]
        np.testing.assert_allclose(widths[::-1], share, rtol=1e-6)  # the largest share at the top
        top = booster.feature_name()[int(np.argmax(gain))]
        assert ax.get_yticklabels()[-1].get_text().split(" ")[0] == top
        assert ax.get_xlabel() == "share of total gain"


def test_model_folder_errors_name_the_file(classifier, tmp_path):
    with pytest.raises(K.ClassifyError, match="no classifier.json"):
        M.Classifier.load(str(tmp_path))
    folder = storage.normalize_uri(str(tmp_path / "copy"))
    for name in ("bass.txt", "piano.txt", M.CLASSIFIER_FILE):
        storage.write_bytes(storage.join(folder, name), storage.read_bytes(storage.join(classifier, name)))
    assert M.Classifier.load(folder).classes == ["bass", "piano"]
    storage.write_text(storage.join(folder, "piano.txt"), "truncated")
    with pytest.raises(K.ClassifyError, match="piano.txt: does not match"):
        M.Classifier.load(folder)
    meta = json.loads(storage.read_text(storage.join(folder, M.CLASSIFIER_FILE)))
    del meta["spec"]
    storage.write_text(storage.join(folder, M.CLASSIFIER_FILE), json.dumps(meta))
    with pytest.raises(K.ClassifyError, match="classifier.json: malformed"):
        M.Classifier.load(folder)


# ---------------------------------------------------------------- activation CNN comparison


def test_pool_frames_to_windows():
    values = np.arange(20, dtype=np.float64).reshape(2, 10)  # 2 classes x 10 frames
    times = np.arange(10) * 0.25  # 4 frames per second
    pooled = N.pool_frames(values, times, np.array([0.0, 1.0, 2.0]), 1.0)
    np.testing.assert_allclose(pooled[:2], [[1.5, 11.5], [5.5, 15.5]])
    np.testing.assert_allclose(pooled[2], [8.5, 18.5])  # only frames 8, 9 remain
    assert N.pool_frames(values, times, np.array([0.0]), 1.0, "max").tolist() == [[3, 13]]
    assert np.isnan(N.pool_frames(values, times, np.array([5.0]), 1.0)).all()


class FrameMean(nn.Module):
    """Stub activation model: per frame, the mean of the feature column (and its negative)."""

    n_classes = 2

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        m = x.mean(dim=2)  # (batch, 1, frames)
        return torch.cat([m, -m], dim=1)


CNN_META = {"sample_rate": RATE, "frames": 8, "classes": ["bass", "piano"],
            "feature": {"name": "logmel", "sample_rate": RATE, "n_fft": 256, "hop": 128, "n_mels": 16,
                        "fmin": 27.5, "fmax": 4000.0}}  # fmt: skip


def test_activation_frames_stitch_back_to_frame_values():
    from sepcore.prepare.features import make_feature

    mix = np.random.default_rng(7).standard_normal((1, 3 * RATE)).astype(np.float32) * 0.1
    acts, times = N.activation_frames(FrameMean(), CNN_META, mix, RATE)
    feat = make_feature(**CNN_META["feature"])(mix)[0]  # (bins, frames)
    np.testing.assert_allclose(acts[0], feat.mean(axis=0), rtol=1e-4, atol=1e-3)
    assert times[1] == pytest.approx(128 / RATE) and acts.shape == (2, feat.shape[1])
    scores = N.activation_window_scores(FrameMean(), CNN_META, mix, RATE, np.array([0.0, 1.0, 2.0]), 1.0,
                                        ["piano", "bass", "drums"])  # fmt: skip
    assert scores.shape == (3, 3) and np.isnan(scores[:, 2]).all()  # drums unknown to the model
    np.testing.assert_allclose(scores[:, 0], -scores[:, 1], rtol=1e-6)


def test_activation_checkpoint_scores_windows(tmp_path):
    from sepcore.models import build_model
    from sepcore.models import checkpoint as ckpt

    config = {"n_bins": 16, "n_classes": len(CLASSES), "frames": 8, "filters": [2, 2, 2], "dropout": 0.1}
    model = build_model("activation_cnn", **config)
    meta = {**CNN_META, "classes": list(CLASSES), "model": {"name": "activation_cnn", "config": config}}
    ckpt.save(str(tmp_path / "cnn"), model, meta)
    loaded, loaded_meta = ckpt.load_model(str(tmp_path / "cnn"))
    mix = np.random.default_rng(8).standard_normal((1, 2 * RATE)).astype(np.float32) * 0.1
    scores = N.activation_window_scores(loaded, loaded_meta, mix, RATE, np.array([0.0, 1.0]), 1.0, ["bass", "drums"])
    assert scores.shape == (2, 2) and np.all((scores > 0) & (scores < 1))


def test_job_steps_count_tracks_and_shape_rows():
    from sepcore.classify import job as J

    records = {"a": {"status": "ok", "split": "x"}, "b": {"status": "skipped", "reason": "no stems"},
               "c": {"status": "ok"}}  # fmt: skip
    counts, skipped = J.track_counts(records, 4, 1, [{"item": "d", "error": "bad"}])
    assert counts == {"tracks": 4, "done_before": 3, "failed": 1, "skipped": 1} and skipped == {"b": "no stems"}
    usable = J.usable_by_split(records, {"a": "test", "b": "train", "c": "train"})
    assert usable == {"train": [records["c"]], "validation": [], "test": [records["a"]]}
    assert J.actor_row("t", {"error": "boom"}) == {"track_id": "t", "status": "error", "reason": "boom"}
    row = J.actor_row("t", {"status": "ok", "reason": "", "snippets": 7, "shard": "s"})
    assert row == {"track_id": "t", "status": "ok", "reason": "", "snippets": 7}
    assert J.row_note(row) == "7 snippets" and J.row_note({"status": "skipped", "reason": "silent"}) == "silent"
    result = {"counts": {"snippets_train": 9}, "figures": {"auc_test_bass": 0.9}, "model": "m"}
    summary = J.run_summary(counts, result, usable, [], skipped, "f")
    assert list(summary) == ["counts", "figures", "failed", "skipped", "snippets", "model"]
    assert summary["counts"]["snippets_train"] == 9 and summary["figures"]["tracks_per_split"]["train"] == 1
    keys = J.ClassifyKeys(data="d", scaling={"num_workers": 2, "cpus_per_worker": 2.6})
    assert keys.scaling.scaling_args() == {"num_workers": 2, "resources_per_worker": {"CPU": 2.6}}
    loop = keys.loop_config(["f1"], ["bass"])
    assert loop["params"]["num_threads"] == 3 and loop["rounds"] == 300 and loop["early_stopping"] == 30
    with pytest.raises(ValueError, match="split fractions must sum to 1"):
        J.ClassifyKeys(data="d", split={"train": 0.5, "validation": 0.1, "test": 0.1})


def test_split_tracks_without_tracks_names_the_data_key(tmp_path):
    from sepcore.errors import ConfigError

    with pytest.raises(ConfigError) as info:
        K.split_tracks(str(tmp_path), {"train": 0.8, "validation": 0.1, "test": 0.1}, 0)
    assert info.value.key == "data" and "holds no usable Slakh-layout tracks" in str(info.value)
