"""The band corpus's song list: fixed piece splits, seeded and prefix-stable choices, statistics."""

from __future__ import annotations

import pytest

from sepcore.data import band as B


def test_piece_split_is_fixed_and_near_the_fraction() -> None:
    ids = [f"folk/tune{i}.abc#{i}" for i in range(4000)]
    splits = [B.piece_split(i, 0.1) for i in ids]
    assert splits == [B.piece_split(i, 0.1) for i in ids]
    assert 0.08 < splits.count("test") / len(ids) < 0.12
    # A larger test fraction only moves pieces from train to test.
    wider = [B.piece_split(i, 0.2) for i in ids]
    assert all(w == "test" for s, w in zip(splits, wider, strict=True) if s == "test")


def test_songs_are_seeded_prefix_stable_and_respect_the_splits() -> None:
    cfg = B.BandCorpusConfig(seconds=30)
    songs = B.band_songs(cfg, 30, seed=0)
    assert len(songs) == 30 and songs == B.band_songs(cfg, 30, seed=0)
    assert B.band_songs(cfg, 10, seed=0) == songs[:10]
    assert B.band_songs(cfg, 30, seed=1) != songs
    assert all(B.piece_split(s.piece_id) == "train" and s.collection != "essen" for s in songs)
    assert all(s.seconds == 30 and len(s.styles) >= 8 for s in songs)
    held = B.band_songs(B.BandCorpusConfig(pieces="test"), 30, seed=0)
    assert not {s.piece_id for s in held} & {s.piece_id for s in songs}
    unseen = B.band_songs(B.BandCorpusConfig(collections=["essen"], exclude_collections=[], pieces="all"), 5, 0)
    assert {s.collection for s in unseen} == {"essen"}


def test_unknown_collections_and_styles_are_refused() -> None:
    with pytest.raises(ValueError, match="unknown collections"):
        B.eligible_collections(B.BandCorpusConfig(collections=["nope"]))
    with pytest.raises(ValueError, match="unknown styles"):
        B.check_styles(["polka-metal"])


def test_corpus_statistics_counts_songs_classes_programs_and_fonts() -> None:
    def stem(cls: str, program: int, font: str, family: str) -> dict:
        return {"inst_class": cls, "program_num": program, "soundfont": font, "soundfont_family": family}

    metas = [
        {"style": "rock", "seconds": 1800.0, "stems": {"S00": stem("Guitar", 29, "a", "x"), "S01": stem("Drums", 0, "b", "y")}},
        {"style": "funk", "seconds": 1800.0, "stems": {"S00": stem("Guitar", 28, "a", "x"), "S01": stem("Guitar", 28, "b", "y")}},
    ]  # fmt: skip
    stats = B.corpus_statistics(metas)
    assert stats["songs"] == 2 and stats["hours"] == 1.0
    assert stats["songs_per_style"] == {"funk": 1, "rock": 1}
    assert stats["share_of_songs_with_class"] == {"Drums": 0.5, "Guitar": 1.0}
    assert stats["programs_per_class"] == {"Drums": 1, "Guitar": 2}
    assert stats["stems_per_soundfont"] == {"a": 2, "b": 2} and stats["stems_per_family"] == {"x": 2, "y": 2}


def test_the_corpus_configs_validate_and_keep_the_held_out_font_apart() -> None:
    from ray_jobs.render import RenderConfig
    from sepcore.config import load_config

    assert "musescore" not in open("configs/render_band.yaml").read().lower()
    band, test, unseen = (load_config(RenderConfig, f"configs/{n}.yaml", []) for n in
                          ("render_band", "render_test", "render_test_unseen"))  # fmt: skip
    assert band.purpose == "train" and band.band.pieces == "train" and "essen" in band.band.exclude_collections
    assert test.soundfonts == unseen.soundfonts == ["musescore"] and test.band.pieces == "test"
    assert unseen.band.collections == ["essen"] and test.tracks == unseen.tracks == 40
