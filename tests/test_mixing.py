"""Instrument/rest pairs, random mixes (drawn apart from applied), balancing, splits."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest

from sepcore.prepare.mixing import (
    LEVEL_EPS,
    MixPlan,
    apply_mix,
    assign_splits,
    balance,
    draw_levels,
    draw_raw_levels,
    instrument_rest,
    normalize_levels,
    plan_mixes,
)

# ---------------------------------------------------------------- instrument / rest


def _stems(n, channels=2, samples=2000, seed=0):
    rng = np.random.default_rng(seed)
    return rng.uniform(-0.4, 0.4, (n, channels, samples)).astype(np.float32)


@pytest.mark.parametrize(
    "classes, n_target",
    [
        (["guitar", "bass", "guitar", "drums"], 2),  # two target stems
        (["guitar", "bass", "vocals"], 1),
        (["bass", "drums", "piano"], 0),  # no target stem
        (["guitar"], 1),  # nothing in rest
    ],
)
@pytest.mark.parametrize("seed", range(5))
def test_mix_is_exactly_instrument_plus_rest(classes, n_target, seed):
    stems = _stems(len(classes), seed=seed)
    instrument, rest, mix = instrument_rest(stems, classes, "guitar")
    for a in (instrument, rest, mix):
        assert a.shape == (2, 2000) and a.dtype == np.float32
    assert np.array_equal(mix, instrument + rest)
    is_t = np.array([c == "guitar" for c in classes])
    np.testing.assert_allclose(instrument, stems[is_t].sum(axis=0), atol=1e-6)
    np.testing.assert_allclose(rest, stems[~is_t].sum(axis=0), atol=1e-6)
    if n_target == 0:
        assert not instrument.any()
    if n_target == len(classes):
        assert not rest.any()


def test_instrument_rest_with_no_stems_is_silent():
    instrument, rest, mix = instrument_rest(np.zeros((0, 1, 10), np.float32), [], "piano")
    assert instrument.shape == rest.shape == mix.shape == (1, 10)
    assert not mix.any()


@pytest.mark.parametrize("bad", ["mix", "excluded"])
def test_instrument_rest_refuses_mix_and_excluded(bad):
    with pytest.raises(ValueError, match=bad):
        instrument_rest(_stems(2), ["guitar", bad], "guitar")
    with pytest.raises(ValueError, match=bad):
        instrument_rest(_stems(1), ["guitar"], bad)


def test_instrument_rest_checks_shapes_and_classes():
    with pytest.raises(ValueError, match=r"\(2, 2000\)"):
        instrument_rest(_stems(1)[0], ["guitar"], "guitar")
    with pytest.raises(ValueError, match="2 classes for 3 stems"):
        instrument_rest(_stems(3), ["guitar", "bass"], "guitar")
    with pytest.raises(ValueError, match="unknown class 'Guitar'"):
        instrument_rest(_stems(1), ["Guitar"], "guitar")


# ---------------------------------------------------------------- levels


def test_raw_levels_follow_seed_001_distribution():
    raw = draw_raw_levels(np.random.default_rng(0), 100_000)
    assert raw.shape == (100_000,)
    assert raw.mean() == pytest.approx(0.5, abs=0.002)
    assert raw.std() == pytest.approx(0.1, abs=0.002)
    assert raw.min() >= LEVEL_EPS


@pytest.mark.parametrize("mean", [0.0, 0.05, -0.1])
def test_raw_levels_clip_at_zero_with_the_normal_probability(mean):
    from math import erf, sqrt

    raw = draw_raw_levels(np.random.default_rng(1), 100_000, mean=mean, std=0.1)
    clipped = np.mean(raw == LEVEL_EPS)
    expected = 0.5 * (1 + erf((0 - mean) / (0.1 * sqrt(2))))  # P(N(mean, 0.01) <= 0)
    assert clipped == pytest.approx(expected, abs=0.005)
    assert raw.min() == LEVEL_EPS  # clipped ones are exactly eps, never zero or negative


def test_levels_are_normalised_only_when_the_sum_exceeds_one():
    rng = np.random.default_rng(2)
    seen = Counter()
    for _ in range(2000):
        n = int(rng.integers(1, 5))
        raw = draw_raw_levels(rng, n)
        levels = normalize_levels(raw)
        if raw.sum() > 1:
            seen["normalised"] += 1
            assert levels.sum() == pytest.approx(1.0, abs=1e-9)
            np.testing.assert_allclose(levels * raw.sum(), raw, rtol=1e-12)
        else:
            seen["unchanged"] += 1
            assert np.array_equal(levels, raw)
    assert seen["normalised"] > 100 and seen["unchanged"] > 100


def test_draw_levels_is_raw_then_normalised():
    a = draw_levels(np.random.default_rng(7), 3)
    b = normalize_levels(draw_raw_levels(np.random.default_rng(7), 3))
    assert np.array_equal(a, b)
    assert a.sum() <= 1.0 + 1e-12


# ---------------------------------------------------------------- mix plans


def _segments(per_class):
    return [(f"{c}-{i:03d}", c) for c, n in per_class.items() for i in range(n)]


def test_each_segment_is_used_once_per_epoch():
    segments = _segments({"piano": 40, "guitar": 35, "bass": 30, "drums": 25, "vocals": 20})
    plans = plan_mixes(segments, np.random.default_rng(0), 1, 4, epochs=3)
    assert [p.epoch for p in plans] == sorted(p.epoch for p in plans)
    for epoch in range(3):
        used = [s for p in plans if p.epoch == epoch for s in p.segment_ids]
        assert sorted(used) == sorted(s for s, _ in segments)
    ids = [p.mix_id for p in plans]
    assert len(set(ids)) == len(ids)
    cls = dict(segments)
    for p in plans:
        assert 1 <= len(p.segment_ids) <= 4
        assert p.classes == tuple(cls[s] for s in p.segment_ids)
        assert len(p.levels) == len(p.segment_ids)
        assert sum(p.levels) <= 1.0 + 1e-9 and min(p.levels) > 0


def test_group_sizes_are_uniform_and_classes_distinct():
    segments = _segments({c: 500 for c in ("piano", "guitar", "bass", "drums", "vocals")})
    plans = plan_mixes(segments, np.random.default_rng(1), 1, 4, epochs=2)
    sizes = Counter(len(p.segment_ids) for p in plans)
    assert set(sizes) == {1, 2, 3, 4}
    for k in (1, 2, 3, 4):
        assert sizes[k] / len(plans) == pytest.approx(0.25, abs=0.04)
    repeats = sum(len(set(p.classes)) < len(p.classes) for p in plans)
    assert repeats <= 4  # only possible when classes run out at an epoch's end


def test_minimum_group_size_is_respected_at_the_end():
    segments = _segments({"piano": 7, "guitar": 6})
    for seed in range(20):
        plans = plan_mixes(segments, np.random.default_rng(seed), 3, 4)
        assert all(3 <= len(p.segment_ids) <= 4 for p in plans)
        assert sum(len(p.segment_ids) for p in plans) == 13
    with pytest.raises(ValueError, match="5 segments"):
        plan_mixes(_segments({"piano": 5}), np.random.default_rng(0), 3, 3)


def test_plans_are_reproducible_and_order_independent():
    segments = _segments({"piano": 10, "guitar": 8, "bass": 3})
    a = plan_mixes(segments, np.random.default_rng(5), epochs=2)
    b = plan_mixes(list(reversed(segments)), np.random.default_rng(5), epochs=2)
    c = plan_mixes(segments, np.random.default_rng(6), epochs=2)
    assert a == b
    assert a != c


def test_apply_mix_label_and_truncation():
    rng = np.random.default_rng(0)
    audio = {
        "p1": rng.uniform(-1, 1, (2, 100)).astype(np.float32),
        "p2": rng.uniform(-1, 1, (2, 80)).astype(np.float32),
        "g1": rng.uniform(-1, 1, (2, 120)).astype(np.float32),
    }
    plan = MixPlan("m", 0, ("p1", "g1", "p2"), ("piano", "guitar", "piano"), (0.2, 0.3, 0.4))
    mixture, label = apply_mix(plan, audio)
    assert mixture.shape == (2, 80) and mixture.dtype == np.float32
    expected = 0.2 * audio["p1"][:, :80] + 0.3 * audio["g1"][:, :80] + 0.4 * audio["p2"]
    np.testing.assert_allclose(mixture, expected, atol=1e-6)
    assert label == pytest.approx({"piano": 0.6, "guitar": 0.3})


def test_apply_mix_errors():
    audio = {"a": np.zeros((1, 10), np.float32), "b": np.zeros((2, 10), np.float32)}
    with pytest.raises(ValueError, match="different channels"):
        apply_mix(MixPlan("m", 0, ("a", "b"), ("piano", "bass"), (0.5, 0.5)), audio)
    with pytest.raises(KeyError, match="'zz'"):
        apply_mix(MixPlan("m", 0, ("zz",), ("piano",), (0.5,)), audio)


def test_plan_then_apply_end_to_end():
    segments = _segments({"piano": 5, "guitar": 5})
    rng = np.random.default_rng(3)
    audio = {s: np.full((1, 50), 0.5, np.float32) for s, _ in segments}
    for plan in plan_mixes(segments, rng):
        mixture, label = apply_mix(plan, audio)
        np.testing.assert_allclose(mixture, 0.5 * sum(plan.levels), rtol=1e-6)
        assert sum(label.values()) == pytest.approx(sum(plan.levels))


# ---------------------------------------------------------------- balancing


def test_balance_caps_oversampling_and_undersamples_to_the_median():
    items = {
        "piano": [f"p{i}" for i in range(500)],
        "guitar": [f"g{i}" for i in range(300)],
        "bass": [f"b{i}" for i in range(200)],
        "clarinet": [f"c{i}" for i in range(50)],
        "flute": [f"f{i}" for i in range(130)],
    }
    out = balance(items, np.random.default_rng(0))  # median count: 200
    assert {c: len(v) for c, v in out.items()} == {
        "piano": 200,  # undersampled
        "guitar": 200,
        "bass": 200,
        "clarinet": 100,  # capped at 2 x 50
        "flute": 200,  # 130 once + 70 repeated
    }
    assert len(set(out["piano"])) == 200 and set(out["piano"]) <= set(items["piano"])
    assert Counter(out["clarinet"]) == {c: 2 for c in items["clarinet"]}
    flute = Counter(out["flute"])
    assert set(flute) == set(items["flute"]) and max(flute.values()) == 2
    for name, original in items.items():
        assert len(out[name]) <= 2 * len(original)


@pytest.mark.parametrize("factor", [1.0, 1.5, 2.0, 3.0])
def test_balance_never_exceeds_the_oversampling_factor(factor):
    items = {"rare": [f"r{i}" for i in range(10)], "common": [f"c{i}" for i in range(100)]}
    out = balance(items, np.random.default_rng(0), max_oversample=factor, target="max")
    assert len(out["rare"]) == int(factor * 10)
    assert len(out["common"]) == 100


def test_balance_is_deterministic_and_keeps_empty_classes_empty():
    items = {"a": [str(i) for i in range(30)], "b": ["x", "y"], "c": []}
    one = balance(items, np.random.default_rng(4))
    assert one == balance(items, np.random.default_rng(4))
    assert one["c"] == []
    with pytest.raises(ValueError, match="max_oversample"):
        balance(items, np.random.default_rng(0), max_oversample=0.5)


# ---------------------------------------------------------------- splits


def test_splits_cover_every_track_once_with_the_fractions():
    tracks = [f"Track{i:05d}" for i in range(1000)]
    splits = assign_splits(tracks, seed=3)
    assert set(splits) == set(tracks)
    assert Counter(splits.values()) == {"train": 800, "validation": 100, "test": 100}


def test_splits_are_deterministic_and_order_independent():
    tracks = [f"t{i}" for i in range(57)]
    a = assign_splits(tracks, seed=1)
    assert a == assign_splits(list(reversed(tracks)), seed=1)
    assert a == assign_splits(sorted(tracks, key=hash), seed=1)
    assert a != assign_splits(tracks, seed=2)


def test_fixed_splits_are_honoured():
    tracks = [f"t{i}" for i in range(20)]
    fixed = {"t0": "test", "t1": "test", "t2": "omitted", "unknown": "train"}
    splits = assign_splits(tracks, seed=0, fixed=fixed)
    assert splits["t0"] == splits["t1"] == "test" and splits["t2"] == "omitted"
    assert "unknown" not in splits
    free = Counter(v for t, v in splits.items() if t not in fixed)
    assert free == {"train": 13, "validation": 2, "test": 2}  # fractions of the 17 free


@pytest.mark.parametrize("n", [3, 4, 5, 9])
def test_small_track_counts_give_every_split_a_track(n):
    splits = assign_splits([f"t{i}" for i in range(n)])
    assert set(splits.values()) == {"train", "validation", "test"}


def test_split_fractions_are_validated():
    with pytest.raises(ValueError, match="sum to 1"):
        assign_splits(["a"], {"train": 0.8, "test": 0.1})
    with pytest.raises(ValueError, match=">= 0"):
        assign_splits(["a"], {"train": 1.2, "test": -0.2})
    with pytest.raises(ValueError, match="duplicate"):
        assign_splits(["a", "a"])
    assert assign_splits(["a", "b"], {"train": 1.0, "test": 0.0}) == {"a": "train", "b": "train"}


# ---------------------------------------------------------------- the prepare job's plain parts


def test_spec_of_a_config_resolves_the_sections():
    from types import SimpleNamespace

    from sepcore.prepare.config import (
        AugmentConfig,
        ChunkConfig,
        FeatureConfig,
        PrepareSpec,
        QAConfig,
        SilenceConfig,
    )  # fmt: skip

    def cfg(target, silence, augment=None):
        return SimpleNamespace(target=target, sample_rate=16000, channels=1, dtype="float32",
                               features=FeatureConfig(n_fft=512, hop=128), chunks=ChunkConfig(frames=8),
                               outputs=["target", "activations"], silence=SilenceConfig(enabled=silence),
                               qa=QAConfig(exclude=["missing"]), augment=augment or AugmentConfig(), seed=5)  # fmt: skip

    spec = PrepareSpec.of(cfg("guitar", True))
    assert spec.feature == {"name": "stft", "n_fft": 512, "hop": 128} and spec.frames == 8
    assert spec.silence is not None and spec.exclude_flags == ("missing",) and spec.skip_without_target
    assert "enabled" not in spec.settings()["silence"]
    mixes = PrepareSpec.of(cfg("random_mix", True))
    assert mixes.outputs == ("activations",) and mixes.silence is None and not mixes.skip_without_target
    assert PrepareSpec.of(cfg("guitar", False)).settings()["silence"] is None
    assert spec.augment is None and "augment" not in spec.settings()  # off: the settings of before
    remixed = PrepareSpec.of(cfg("guitar", False, AugmentConfig(remix_copies=1)))
    assert remixed.augment == AugmentConfig(remix_copies=1) and remixed.settings()["seed"] == 5
    with pytest.raises(ValueError, match="unknown outputs"):
        PrepareSpec(outputs=("nothing",))


def test_segment_copies_balance_train_only():
    from sepcore.prepare.steps import segment_copies

    segs = [{"split": s, "inst_class": c, "segment_id": f"{s}-{c}-{i}"}
            for s in ("train", "test") for c, n in (("piano", 4), ("bass", 1)) for i in range(n)]  # fmt: skip
    copies = segment_copies(segs, balance=True, max_oversample=2.0, seed=0)
    assert sum(v for k, v in copies.items() if k.startswith("train-bass")) == 2  # oversampled x2
    assert sum(v for k, v in copies.items() if k.startswith("test-")) == 5  # once each
    assert sum(segment_copies(segs, balance=False, max_oversample=2.0, seed=0).values()) == 10


def test_manifest_and_summary_of_track_records():
    from sepcore.prepare import manifest
    from sepcore.prepare.config import PrepareSpec

    records = [
        {"track_id": "a", "split": "train", "status": "ok", "reason": "", "rows": 3, "seconds": 2.0,
         "shard": "file:///o/a.parquet", "flags": {"S00": ["clipping"], "S01": []}, "excluded": [],
         "silence": {}},
        {"track_id": "b", "split": "test", "status": "skipped", "reason": "no usable 'guitar' stem"},
    ]  # fmt: skip
    doc = manifest.track_manifest(PrepareSpec(), records, {"k": 1})
    assert doc["rows_per_split"] == {"train": 3} and doc["skipped"] == {"b": "no usable 'guitar' stem"}
    assert doc["qa_flags"] == {"a": {"S00": ["clipping"]}} and doc["silence_histogram"] is None
    summary = manifest.track_summary(doc, records, [{"item": "listing", "error": "x"}], done_before=1)
    assert summary["counts"] == {"tracks": 3, "prepared": 1, "skipped": 1, "done_before": 1, "failed": 1,
                                 "rows": 3, "shards": 1}  # fmt: skip


def test_track_progress_collects_failures_and_epoch_records() -> None:
    from sepcore.prepare import manifest, steps

    progress = manifest.TrackProgress(todo=2, done_before=0)
    progress.update({"track_id": "a", "split": "train", "status": "ok", "rows": 3})
    progress.update({"track_id": "b", "split": "test", "status": "error", "reason": "b: broken"})
    progress.close()
    assert progress.errors == [{"item": "b", "error": "b: broken"}]
    meta = [{"track_id": "a", "segment_id": "a0", "error": None}, {"track_id": "b", "segment_id": "", "error": "x"}]
    good, failed = manifest.split_segments(meta)
    assert good == meta[:1] and failed == [{"item": "b", "error": "x"}]
    written = [{"shard": "s.parquet", "split": "train", "rows": 4, "mixes": 2}]
    assert manifest.epoch_record(written, 3) == {
        "shards": [{"uri": "s.parquet", "split": "train", "epoch": 3, "rows": 4, "mixes": 2}]
    }
    row = {"segment_id": "a0"}
    assert steps.copies_of(row, Counter({"a0": 2})) == [{"segment_id": "a0", "copy": 0}, {"segment_id": "a0", "copy": 1}]
    assert steps.copies_of(row, Counter()) == []
