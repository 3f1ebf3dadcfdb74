"""Prepare with several targets: stems that add up to the mix, the targets column, the config rules, the job."""

from __future__ import annotations

import json
from collections import defaultdict

import numpy as np
import pyarrow.parquet as pq
import pytest

from ray_jobs import prepare
from sepcore.data.sources import SourceTrack, list_sources
from sepcore.io import storage
from sepcore.io.audio import Audio, write_audio
from sepcore.prepare import augment as A
from sepcore.prepare import pairs as P
from sepcore.prepare.config import AugmentConfig, PrepareSpec

RATE = 8000
TARGETS = ("bass", "drums", "guitar")
#: Stems of each song: A has every class, B no drums, C no guitar, D only vocals (none of TARGETS).
SONGS = {"A": ("guitar", "bass", "drums", "piano", "vocals"), "B": ("guitar", "bass", "piano"),
         "C": ("bass", "drums", "vocals"), "D": ("vocals",)}  # fmt: skip


@pytest.fixture(scope="module")
def tracks(tmp_path_factory) -> list[SourceTrack]:
    """Four stereo songs of 0.5-0.8 s, distinct noise per stem (two guitar takes in A)."""
    root = tmp_path_factory.mktemp("songs")
    for i, (name, classes) in enumerate(SONGS.items()):
        n = int(RATE * (0.5 + 0.1 * i))
        for j, cls in enumerate(classes):
            (root / name / cls).mkdir(parents=True)
            for take in range(2 if (name, cls) == ("A", "guitar") else 1):
                rng = np.random.default_rng(100 * i + 10 * j + take)
                samples = (0.1 * rng.standard_normal((2, n))).astype(np.float32)
                write_audio(
                    str(root / name / cls / f"{cls}{take}.wav"), Audio(samples, RATE), fmt="wav"
                )
    return list_sources([{"kind": "stems", "uri": str(root)}])


def _spec(**kw) -> PrepareSpec:
    return PrepareSpec(**{"targets": TARGETS, "sample_rate": RATE, "channels": 2, "detect_flags": False,
                          "feature": {"name": "stft", "n_fft": 256, "hop": 64}, "frames": 8, "dtype": "float32",
                          **kw})  # fmt: skip


def _stems(track: SourceTrack) -> dict[str, np.ndarray]:
    """Each class's stems summed, read directly (float64). Shape: ``(channels, samples)``."""
    from sepcore.data.sources import load_stem

    out: dict[str, np.ndarray] = {}
    for stem in track.stems:
        audio = load_stem(stem, RATE, 2).astype(np.float64)
        out[stem.inst_class] = out.get(stem.inst_class, 0) + audio
    return out


def test_sources_are_the_class_sums_and_add_up_to_the_mix(tracks):
    spec = _spec()
    assert spec.target is None and spec.stems == (*TARGETS, "other")
    for track in tracks[:3]:
        mix, sources = P.make_sources(track, spec)
        classes = _stems(track)
        assert sources.shape == (4, *mix.shape) and sources.dtype == mix.dtype == np.float32
        for k, name in enumerate(TARGETS):
            want = classes.get(name, np.zeros(mix.shape))  # a class the song lacks is silence
            np.testing.assert_allclose(sources[k], want, atol=1e-6)
        other = sum(a for c, a in classes.items() if c not in TARGETS)
        np.testing.assert_allclose(sources[-1], other, atol=1e-6)
        np.testing.assert_allclose(sources.sum(0), mix, atol=1e-6, rtol=0)
        np.testing.assert_allclose(mix, sum(classes.values()), atol=1e-6)
    with pytest.raises(P.SkipTrack, match="no usable stem of bass, drums, guitar"):
        P.make_sources(tracks[3], spec)  # D: vocals only
    _, kept = P.make_sources(tracks[3], _spec(skip_without_target=False))
    assert not kept[:3].any() and kept[3].any()
    with pytest.raises(ValueError, match="needs a spec with targets"):
        P.make_sources(tracks[0], PrepareSpec(target="guitar", sample_rate=RATE))


def test_a_track_without_a_target_in_its_metadata_is_skipped_before_decoding(tmp_path, tracks):
    from dataclasses import replace

    from sepcore.errors import AudioError

    def unreadable(track: SourceTrack) -> SourceTrack:  # every stem file is garbage
        stems = []
        for k, stem in enumerate(track.stems):
            (tmp_path / f"{track.track_id[-1]}{k}.wav").write_bytes(b"RIFF????WAVEjunk")
            stems.append(replace(stem, uri=str(tmp_path / f"{track.track_id[-1]}{k}.wav")))
        return replace(track, stems=tuple(stems))

    with pytest.raises(P.SkipTrack, match="no usable stem of bass, drums, guitar"):
        P.make_pair(unreadable(tracks[3]), _spec())  # D: vocals only, nothing is read
    guitar = PrepareSpec(target="guitar", sample_rate=RATE, channels=2, detect_flags=False)
    with pytest.raises(P.SkipTrack, match="no usable 'guitar' stem"):
        P.make_pair(unreadable(tracks[2]), guitar)  # C: no guitar
    with pytest.raises(AudioError, match=r"B0\.wav"):
        P.make_pair(unreadable(tracks[1]), guitar)  # B has a guitar: its files are read


def test_targets_column_holds_the_stft_of_each_stem(tracks):
    spec = _spec(outputs=("target", "activations"))
    track = tracks[1]  # B: no drums
    pair = P.mix_track(track, spec)
    arrays = P.feature_chunks(pair, spec, spec.extractor())
    shapes = P.row_shapes(spec)
    assert shapes == {"mix": [2, 129, 8], "targets": [4, 2, 129, 8], "activations": [8, 8]}
    chunks = len(arrays["mix"])
    assert {k: list(v.shape) for k, v in arrays.items()} == {
        k: [chunks, *s] for k, s in shapes.items()
    }
    classes = _stems(track)
    stft = spec.extractor()
    for k, name in enumerate(spec.stems):
        audio = classes.get(name) if name != "other" else classes["piano"]
        want = (
            stft(audio.astype(np.float32)) if audio is not None else np.zeros_like(stft(pair.mix))
        )
        frames = want.shape[-1]
        got = np.concatenate(list(arrays["targets"][:, k]), axis=-1)[..., :frames]
        np.testing.assert_allclose(got, want, atol=1e-4, rtol=1e-4)
    assert not arrays["targets"][:, 1].any()  # drums
    rows = P.track_rows(track.track_id, "train", arrays)
    decoded = P.decode_column([r["targets"] for r in rows], shapes["targets"], "float32")
    np.testing.assert_array_equal(decoded, arrays["targets"])


def test_dataset_json_keys_and_settings():
    multi = P.dataset_schema(_spec())
    assert (multi["target"], multi["targets"], multi["stems"]) == (
        None,
        list(TARGETS),
        [*TARGETS, "other"],
    )
    assert multi["columns"] == ["track_id", "split", "chunk", "mix", "targets", "activations"]
    assert multi["shapes"]["targets"] == [4, 2, 129, 8] and "target" not in multi["shapes"]
    single = P.dataset_schema(PrepareSpec(target="guitar"))
    assert (single["target"], single["targets"], single["stems"]) == ("guitar", None, None)
    assert single["columns"] == ["track_id", "split", "chunk", "mix", "target", "activations"]
    assert (
        "targets" not in PrepareSpec(target="guitar").settings()
    )  # outputs made before keep their settings
    assert _spec().settings()["targets"] == list(TARGETS)


def _cfg(**kw) -> dict:
    return {"sources": [{"kind": "stems", "uri": "/nowhere"}], "output": "/tmp/unused", **kw}


@pytest.mark.parametrize(("keys", "message"), [
    ({"target": "guitar", "targets": ["bass", "drums"]}, "not both"),
    ({"target": None}, "give target"),
    ({"targets": []}, "at least one class"),
    ({"targets": ["bass", "random_mix"]}, "unknown classes \\['random_mix'\\]"),
    ({"targets": ["bass", "other"]}, "'other' is always the last stem"),
    ({"targets": ["bass", "bass"]}, "each class once"),
    ({"targets": ["bass", "drums"], "silence": {"enabled": True}}, "silences are cut per target"),
    ({"targets": ["bass", "drums"], "outputs": ["target", "irm"]}, "masks are made for one target"),
])  # fmt: skip
def test_config_rules_for_targets(keys, message):
    with pytest.raises(ValueError, match=message):
        prepare.PrepareConfig.model_validate(_cfg(**keys))
    with pytest.raises(ValueError, match="not both"):
        PrepareSpec(target="guitar", targets=("bass",))


def test_config_with_targets_alone_or_target_null():
    for keys in ({"targets": ["bass", "drums"]}, {"target": None, "targets": ["bass", "drums"]}):
        cfg = prepare.PrepareConfig.model_validate(_cfg(**keys))
        spec = PrepareSpec.of(cfg)
        assert (
            cfg.target is None and spec.targets == ("bass", "drums") and spec.stems[-1] == "other"
        )
    single_cfg = prepare.PrepareConfig.model_validate(_cfg(target="piano"))
    single = PrepareSpec.of(single_cfg)
    assert (single.target, single.targets, single.stems) == ("piano", (), ())
    assert "targets" not in single_cfg.model_dump(
        mode="json"
    )  # resolved configs as before (tune's keys)
    assert cfg.model_dump(mode="json")["targets"] == ["bass", "drums"]


def test_remix_copies_take_every_stem_from_other_tracks(tracks):
    aug = AugmentConfig(remix_copies=2, gain_db=(-6.0, 0.0), seed=2)
    spec = _spec(augment=aug, seed=1)
    pool = A.donor_pool(tracks, dict.fromkeys((t.track_id for t in tracks), "train"), aug)["train"]
    a = tracks[0]
    copies = P.mix_copies(a, "train", spec, pool)
    assert [k for k, _ in copies] == [0, 1, 2]
    plan = A.plan_remix_stems(a, 1, pool, TARGETS, aug, 1, 2, ())
    assert {p.track_id for p in plan.parts} <= {
        "stems:B",
        "stems:C",
        "stems:D",
    }  # never the track itself
    assert {p.inst_class for p in plan.parts} >= set(
        TARGETS
    )  # every target drawn (each has a donor)
    other = [(p.track_id, p.offset) for p in plan.parts if p.inst_class not in TARGETS]
    assert other and len(set(other)) == 1  # "other": every other class of one donor, one offset
    for _, pair in copies:
        assert pair.sources is not None and pair.sources.shape == (4, *pair.mix.shape)
        np.testing.assert_allclose(pair.sources.sum(0), pair.mix, atol=1e-6, rtol=0)
    own, first = copies[0][1].sources, copies[1][1].sources
    assert own is not None and first is not None and not np.allclose(own, first)
    # Reproducible and independent of the pool's order.
    again = P.mix_copies(a, "train", spec, pool[::-1])
    for (_, x), (_, y) in zip(copies, again, strict=True):
        np.testing.assert_array_equal(x.sources, y.sources)


# ---------------------------------------------------------------- the job on a local Ray


def test_prepare_job_with_targets_writes_the_targets_column(tiny_stem_shards):  # tests/conftest.py
    out = storage.local_path(tiny_stem_shards)
    manifest = json.loads(
        storage.read_text(storage.join(storage.normalize_uri(str(out)), "dataset.json"))
    )
    stems = ["bass", "drums", "guitar", "piano", "strings", "other"]
    assert (manifest["target"], manifest["targets"], manifest["stems"]) == (None, stems[:-1], stems)
    assert manifest["shapes"] == {
        "mix": [1, 129, 16],
        "targets": [6, 1, 129, 16],
        "activations": [8, 16],
    }
    assert manifest["columns"] == ["track_id", "split", "chunk", "mix", "targets", "activations"]
    assert manifest["shards"] and not manifest["skipped"]  # every song has one of the classes
    playing = defaultdict(float)
    for shard in manifest["shards"]:
        table = pq.read_table(storage.local_path(shard["uri"])).to_pydict()
        targets = P.decode_column(
            table["targets"], manifest["shapes"]["targets"], "float16"
        ).astype(np.float32)
        mix = P.decode_column(table["mix"], manifest["shapes"]["mix"], "float16").astype(np.float32)
        assert len(targets) == shard["rows"]
        # Magnitudes of stems that add up to the mix: the triangle inequality holds per bin.
        assert np.all(targets.sum(axis=1) >= mix * 0.99 - 1e-2)
        for k, name in enumerate(stems):
            playing[name] += float(targets[:, k].max())
    assert all(playing[name] > 0 for name in stems[:-1])  # Track00001 plays every class
    assert playing["other"] == 0  # the demo band plays no other class
