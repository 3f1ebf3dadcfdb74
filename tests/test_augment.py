"""Augmentation in prepare: gains, channel swaps and remixing across tracks of one split."""

from __future__ import annotations

import numpy as np
import pytest

from sepcore.data.sources import SourceStem, SourceTrack, list_sources
from sepcore.io.audio import Audio, write_audio
from sepcore.prepare import augment as A
from sepcore.prepare.config import AugmentConfig, PrepareSpec
from sepcore.prepare.pairs import dataset_schema, donor_stem, mix_copies, mix_track

RATE = 8000
SPLITS = {
    "stems:A": "train",
    "stems:B": "train",
    "stems:C": "train",
    "stems:D": "validation",
    "stems:E": "validation",
}
AUG = AugmentConfig(remix_copies=2, gain_db=(-6.0, 3.0), channel_swap=0.5, seed=1)


@pytest.fixture(scope="module")
def tracks(tmp_path_factory) -> list[SourceTrack]:
    """Five stereo songs of guitar, bass and drums (C has no drums), 0.5-0.8 s, distinct noise each."""
    root = tmp_path_factory.mktemp("songs")
    for i, name in enumerate("ABCDE"):
        for j, cls in enumerate(("guitar", "bass", "drums")):
            if (name, cls) == ("C", "drums"):
                continue
            rng = np.random.default_rng(10 * i + j)
            n = int(RATE * (0.5 + 0.1 * ((i + j) % 4)))
            (root / name / cls).mkdir(parents=True)
            samples = (0.1 * rng.standard_normal((2, n))).astype(np.float32)
            write_audio(str(root / name / cls / f"{cls}.wav"), Audio(samples, RATE), fmt="wav")
    return list_sources([{"kind": "stems", "uri": str(root)}])


def _spec(augment: AugmentConfig | None = AUG, **kw) -> PrepareSpec:
    return PrepareSpec(target="guitar", sample_rate=RATE, channels=2, feature={"name": "stft", "n_fft": 256, "hop": 64},
                       frames=8, outputs=("target", "ibm", "activations"), detect_flags=False, augment=augment,
                       seed=3, **kw)  # fmt: skip


def _by_id(tracks: list[SourceTrack]) -> dict[str, SourceTrack]:
    return {t.track_id: t for t in tracks}


def test_remix_copies_keep_the_instrument_and_sum_exactly_from_same_split_donors(tracks):
    pool = A.donor_pool(tracks, SPLITS, AUG)
    assert set(pool) == {"train"} and [t.track_id for t in pool["train"]] == [
        "stems:A",
        "stems:B",
        "stems:C",
    ]
    a = _by_id(tracks)["stems:A"]
    pairs = mix_copies(a, "train", _spec(), pool["train"])
    assert [k for k, _ in pairs] == [0, 1, 2]
    own = pairs[0][1]
    for _, pair in pairs:
        assert pair.rest is not None and pair.mix.shape == pair.instrument.shape
        assert np.array_equal(pair.mix, pair.instrument + pair.rest)
        assert np.array_equal(pair.instrument, own.instrument)  # the target stays the track's own
        assert pair.activations is not None and pair.activations.shape[0] == 8
    for k in (1, 2):
        plan = A.plan_remix(a, k, pool["train"], "guitar", AUG, 3, 2, ())
        assert [p.inst_class for p in plan.parts] == ["bass", "drums"]
        assert all(
            p.track_id in {"stems:B", "stems:C"} for p in plan.parts
        )  # same split, never itself
        assert plan.parts[1].track_id == "stems:B"  # the only other train track with drums
    assert not np.array_equal(pairs[1][1].rest, own.rest)
    plan, spec, by_id = (
        A.plan_remix(a, 1, pool["train"], "guitar", AUG, 3, 2, ()),
        _spec(),
        _by_id(tracks),
    )
    n = own.instrument.shape[-1]
    parts = [
        (p.inst_class, A.load_part(p, by_id[p.track_id], n, 2, lambda s: donor_stem(s, spec)))
        for p in plan.parts
    ]
    assert np.array_equal(
        pairs[1][1].rest, A.remix(own.instrument, "guitar", parts)[0]
    )  # the plan, applied


def test_augmentation_is_deterministic_per_seed_and_independent_of_order(tracks):
    pool = A.donor_pool(tracks, SPLITS, AUG)
    assert A.donor_pool(tracks[::-1], SPLITS, AUG) == pool
    a = _by_id(tracks)["stems:A"]
    first, again = (
        mix_copies(a, "train", _spec(), pool["train"]),
        mix_copies(a, "train", _spec(), pool["train"][::-1]),
    )
    plans = [
        A.plan_remix(a, 1, p, "guitar", AUG, 3, 2, ()) for p in (pool["train"], pool["train"][::-1])
    ]
    assert plans[0] == plans[1]
    for (k, x), (j, y) in zip(first, again, strict=True):
        assert (
            k == j and np.array_equal(x.mix, y.mix) and np.array_equal(x.instrument, y.instrument)
        )
    other_seed = A.plan_remix(
        a, 1, pool["train"], "guitar", AUG.model_copy(update={"seed": 2}), 3, 2, ()
    )
    other_prepare_seed = A.plan_remix(a, 1, pool["train"], "guitar", AUG, 4, 2, ())
    assert other_seed != plans[0] and other_prepare_seed != plans[0]  # the offsets differ at least
    assert A.copy_rng(3, AUG, "stems:A", 1).random() != A.copy_rng(3, AUG, "stems:A", 2).random()


def test_gains_stay_in_range_and_each_augmentation_draws_apart():
    lo, hi = 10 ** (-6 / 20), 10 ** (3 / 20)
    draws = A.draw_stems(np.random.default_rng(0), 500, AUG, 2)
    gains = np.array([d.gain for d in draws])
    assert np.all((gains >= lo) & (gains <= hi)) and gains.min() < 0.6 and gains.max() > 1.3
    assert 0.4 < np.mean([d.swap for d in draws]) < 0.6
    no_swap = A.draw_stems(
        np.random.default_rng(0), 500, AUG.model_copy(update={"channel_swap": 0.0}), 2
    )
    assert [d.gain for d in no_swap] == list(gains) and not any(d.swap for d in no_swap)
    no_gain = A.draw_stems(
        np.random.default_rng(0), 500, AUG.model_copy(update={"gain_db": None}), 2
    )
    assert {d.gain for d in no_gain} == {1.0} and [d.swap for d in no_gain] == [
        d.swap for d in draws
    ]
    assert not any(
        d.swap for d in A.draw_stems(np.random.default_rng(0), 50, AUG, 1)
    )  # mono: never


def test_channel_swap_swaps_and_gain_scales():
    audio = np.stack([np.full(4, 0.1), np.full(4, 0.3)]).astype(np.float32)
    out = A.apply_stem(audio, A.StemDraw(gain=2.0, swap=True))
    np.testing.assert_allclose(out, [[0.6] * 4, [0.2] * 4])
    assert A.apply_stem(audio, A.StemDraw()) is audio
    with pytest.raises(ValueError, match="needs 2 channels"):
        A.apply_stem(audio[:1], A.StemDraw(swap=True))
    stems = A.apply_stems(np.stack([audio, audio]), [A.StemDraw(), A.StemDraw(swap=True)])
    assert np.array_equal(stems[0], audio) and np.array_equal(stems[1], audio[::-1])


def test_validation_and_test_tracks_are_untouched(tracks):
    pool = A.donor_pool(tracks, SPLITS, AUG)
    d = _by_id(tracks)["stems:D"]
    (only,) = mix_copies(d, "validation", _spec(), pool.get("validation", []))
    plain = mix_track(d, _spec(None))
    assert (
        only[0] == 0
        and np.array_equal(only[1].mix, plain.mix)
        and np.array_equal(only[1].rest, plain.rest)
    )
    a = _by_id(tracks)["stems:A"]  # a train track with every augmentation off is today's pair
    assert np.array_equal(
        mix_copies(a, "train", _spec(None))[0][1].mix, mix_track(a, _spec(None)).mix
    )


def test_donor_parts_start_at_their_offset_and_pad_short_donors():
    donor = SourceTrack(
        "x:D",
        "stems",
        "u",
        "train",
        (SourceStem("s1", "bass", "u1"), SourceStem("s2", "bass", "u2")),
    )
    audio = {"s1": np.arange(20, dtype=np.float32)[None], "s2": np.ones((1, 10), np.float32)}
    part = A.DonorPart("bass", "x:D", ("s1", "s2"), 0.5, (A.StemDraw(), A.StemDraw(gain=2.0)))
    out = A.load_part(part, donor, 6, 1, lambda s: audio[s.stem_id])
    np.testing.assert_allclose(
        out[0], np.arange(7, 13) + np.array([2, 2, 2, 0, 0, 0])
    )  # start 0.5 * (20 - 6)
    long = A.load_part(part, donor, 30, 1, lambda s: audio[s.stem_id])
    assert long.shape == (1, 30) and not long[0, 20:].any()
    silent = A.load_part(part, donor, 6, 1, lambda s: None)  # every stem excluded by its QA flags
    assert silent.shape == (1, 6) and not silent.any()
    rest, mix, sums = A.remix(
        np.ones((1, 6), np.float32), "guitar", [("bass", out), ("drums", silent)]
    )
    assert np.array_equal(mix, np.ones((1, 6), np.float32) + rest) and sums.shape == (8, 1, 6)
    with pytest.raises(ValueError, match="has shape"):
        A.remix(np.ones((1, 5), np.float32), "guitar", [("bass", out)])


def test_settings_and_schema_record_the_augmentation():
    off = _spec(None)
    assert (
        "augment" not in off.settings() and "seed" not in off.settings()
    )  # outputs of before stay valid
    assert "copy" not in dataset_schema(off)["columns"] and dataset_schema(off)["augment"] is None
    on = _spec()
    assert on.settings()["augment"]["remix_copies"] == 2 and on.settings()["seed"] == 3
    schema = dataset_schema(on)
    assert schema["columns"][:4] == ["track_id", "split", "chunk", "copy"]
    assert schema["augment"] == {"remix_copies": 2, "gain_db": [-6.0, 3.0], "channel_swap": 0.5,
                                 "splits": ["train"], "seed": 1, "prepare_seed": 3}  # fmt: skip


@pytest.mark.parametrize(
    ("keys", "message"),
    [
        ({"target": "random_mix", "augment": {"remix_copies": 1}}, "applies to instrument targets"),
        ({"augment": {"channel_swap": 0.5}}, "needs stereo"),
        ({"augment": {"gain_db": [3, -3]}}, "lo 3.0 exceeds hi -3.0"),
        ({"augment": {"splits": []}}, "splits"),
    ],
)
def test_bad_augment_settings_are_refused(keys, message):
    from ray_jobs.prepare import PrepareConfig

    with pytest.raises(ValueError, match=message):
        PrepareConfig.model_validate({"sources": [], "output": "o", **keys})
    assert not PrepareConfig.model_validate({"sources": [], "output": "o"}).augment.active
