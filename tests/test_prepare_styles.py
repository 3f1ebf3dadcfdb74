"""prepare's style filter: ``sources: [{kind: slakh, uri: ..., styles: [...]}]`` keeps the tracks
whose metadata.yaml ``style`` is listed (null: all); a listed style no track has is a warning."""

from __future__ import annotations

import logging

import pytest
from pydantic import ValidationError

from sepcore.data import sources
from sepcore.prepare.config import QAConfig, SourceConfig, SplitConfig
from sepcore.prepare.manifest import list_tracks

STYLES = {"Track00001": "rock", "Track00002": "funk", "Track00003": "ballad", "Track00004": None}


@pytest.fixture
def band(tmp_path):
    """Four Slakh-layout tracks (metadata only: listing opens no audio), one without a style."""
    for track_id, style in STYLES.items():
        folder = tmp_path / track_id
        folder.mkdir()
        text = "stems: {}\n" + (f"style: {style}\n" if style else "")
        (folder / "metadata.yaml").write_text(text)
    return str(tmp_path)


def _ids(tracks) -> list[str]:
    return sorted(t.track_id.split(":")[1] for t in tracks)


def test_styles_keep_only_the_listed_styles(band, caplog):
    every = sources.list_sources([{"kind": "slakh", "uri": band}])
    assert _ids(every) == sorted(STYLES)
    with caplog.at_level(logging.WARNING):
        kept = sources.list_sources([{"kind": "slakh", "uri": band, "styles": ["rock", "funk"]}])
    assert _ids(kept) == ["Track00001", "Track00002"]
    assert not caplog.records
    with caplog.at_level(logging.WARNING):
        kept = sources.list_sources([{"kind": "slakh", "uri": band, "styles": ["rock", "polka"]}])
    assert _ids(kept) == ["Track00001"]
    assert any("polka" in r.getMessage() and "rock" not in r.getMessage().split("(")[0] for r in caplog.records)


def test_prepare_config_passes_styles_to_the_listing(band):
    src = SourceConfig.model_validate({"kind": "slakh", "uri": band, "styles": ["ballad"]})
    tracks, splits, errors = list_tracks([src], QAConfig.model_validate({}), SplitConfig.model_validate({}), 0)
    assert _ids(tracks) == ["Track00003"] and set(splits) == {"slakh:Track00003"} and not errors
    plain = SourceConfig.model_validate({"kind": "slakh", "uri": band})
    assert plain.styles is None and len(list_tracks([plain], QAConfig.model_validate({}),
                                                    SplitConfig.model_validate({}), 0)[0]) == 4  # fmt: skip


@pytest.mark.parametrize(("spec", "message"), [
    ({"kind": "stems", "uri": "x", "styles": ["rock"]}, "applies to slakh sources"),
    ({"kind": "slakh", "uri": "x", "styles": []}, "at least one style"),
])  # fmt: skip
def test_bad_styles_are_config_errors(spec, message):
    with pytest.raises(ValidationError, match=message):
        SourceConfig.model_validate(spec)


def test_bad_styles_in_a_plain_spec_are_refused(band):
    with pytest.raises(ValueError, match="styles is a non-empty list"):
        sources.list_sources([{"kind": "slakh", "uri": band, "styles": "rock"}])
    with pytest.raises(ValueError, match="unknown key"):
        sources.list_sources([{"kind": "stems", "uri": band, "styles": ["rock"]}])


def test_two_sources_with_the_same_track_ids_are_a_config_error(band):
    from sepcore.errors import ConfigError

    twice = [SourceConfig(kind="slakh", uri=band)] * 2
    with pytest.raises(ConfigError, match=r"config key 'sources': track id 'slakh:Track00001' given twice.*different 'name'"):
        list_tracks(twice, QAConfig.model_validate({}), SplitConfig.model_validate({}), 0)
    named = [SourceConfig(kind="slakh", uri=band), SourceConfig(kind="slakh", uri=band, name="composed")]
    tracks, _, _ = list_tracks(named, QAConfig.model_validate({}), SplitConfig.model_validate({}), 0)
    assert len(tracks) == 2 * len(STYLES)
