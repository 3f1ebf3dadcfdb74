"""Automatic and manual quality flags (seed 002 §4.3.1)."""

from __future__ import annotations

import numpy as np
import pytest

from sepcore.errors import MetadataError
from sepcore.prepare.qa import (
    DEFAULT_EXCLUDE,
    FLAGS,
    MANUAL_FLAGS,
    detect_flags,
    excluded,
    loudness_lufs,
    parse_flag_names,
    peak_dbfs,
    read_flags_csv,
)

RATE = 22050


def _tone(amp, seconds=2.0, channels=2, rate=RATE):
    t = np.arange(int(seconds * rate)) / rate
    return np.tile(amp * np.sin(2 * np.pi * 997 * t), (channels, 1)).astype(np.float32)


def test_flag_names_are_seed_002s():
    assert MANUAL_FLAGS == (
        "missing",
        "bleed",
        "bad_quality",
        "inaudible",
        "mislabeled",
        "detailed",
        "checked",
    )
    assert set(FLAGS) == set(MANUAL_FLAGS) | {"clipping"}


def test_normal_stem_has_no_flags():
    assert detect_flags(_tone(0.5), RATE) == set()


@pytest.mark.parametrize(
    "x",
    [
        np.zeros((2, RATE), np.float32),
        np.zeros((1, 0), np.float32),
        _tone(10 ** (-70 / 20)),  # peak -70 dBFS
    ],
)
def test_silent_or_empty_stem_is_missing(x):
    assert detect_flags(x, RATE) == {"missing"}


def test_quiet_stem_is_inaudible_but_not_missing():
    quiet = _tone(10 ** (-50 / 20))  # peak -50 dBFS; stereo 1 kHz sine: about -50 LUFS
    assert detect_flags(quiet, RATE) == {"inaudible"}
    assert detect_flags(quiet, RATE, inaudible_lufs=-60.0) == set()
    assert loudness_lufs(quiet, RATE) == pytest.approx(-50.0, abs=0.5)


def test_loudness_is_gated_so_pauses_do_not_make_a_stem_inaudible():
    x = np.zeros((2, 40 * RATE), np.float32)
    x[:, :RATE] = _tone(10 ** (-32 / 20), seconds=1.0)  # one second at -32 dBFS in forty
    # ungated, the stem would average about -48 LUFS (below -45); gated it is the tone
    assert loudness_lufs(x, RATE) == pytest.approx(-32.0, abs=1.0)
    assert detect_flags(x, RATE) == set()


@pytest.mark.parametrize("channels, rate", [(1, 22050), (2, 44100), (5, 48000), (2, 8000)])
def test_loudness_is_pyloudnorms(channels, rate):
    import warnings

    import pyloudnorm

    rng = np.random.default_rng(channels)
    x = rng.standard_normal((channels, int(3.37 * rate))) * 0.05
    x[:, : rate // 2] *= 1e-3  # a quiet start: blocks below the relative gate
    x[:, -rate // 3 :] = 0.0  # and a silent end: below the absolute gate
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        reference = pyloudnorm.Meter(rate).integrated_loudness(x.T.copy())
    assert loudness_lufs(x, rate) == pytest.approx(reference, abs=1e-6)
    assert loudness_lufs(x * 1e-5, rate) == float("-inf")  # every block under -70 LUFS


def test_short_stems_use_ungated_loudness():
    short = _tone(0.5, seconds=0.1)
    assert loudness_lufs(short, RATE) == pytest.approx(-0.691 + 10 * np.log10(2 * 0.125), abs=0.1)
    assert detect_flags(short, RATE) == set()


def test_clipped_stem_is_flagged():
    clipped = np.clip(_tone(1.5), -1.0, 1.0)
    assert detect_flags(clipped, RATE) == {"clipping"}
    few = _tone(0.5)
    few[0, :10] = 1.0  # 10 of 88200 samples: below the 1e-3 fraction
    assert detect_flags(few, RATE) == set()
    assert detect_flags(few, RATE, clip_fraction=1e-5) == {"clipping"}


def test_peak_and_shape_checks():
    assert peak_dbfs(_tone(0.5)) == pytest.approx(-6.02, abs=0.01)
    assert peak_dbfs(np.zeros((1, 5))) == float("-inf")
    with pytest.raises(ValueError, match="channels, samples"):
        detect_flags(np.zeros(100), RATE)


def test_manual_flag_files():
    names = [
        "guitar_bleed",
        "piano_checked",
        "notes.txt",
        "guitar_bad_quality",
        "S01.flac",
        "metadata.yaml",
        "bleed",
        "vocals_solo",
        "s3://bucket/Track00001/drums_mislabeled",
    ]
    assert parse_flag_names(names) == {
        "guitar": {"bleed", "bad_quality"},
        "piano": {"checked"},
        "drums": {"mislabeled"},
    }
    assert parse_flag_names([]) == {}


def test_flags_csv():
    text = "track,stem,flag\nTrack1,guitar,bleed\n\nTrack1, guitar ,checked\nTrack2,S03,missing\n"
    assert read_flags_csv(text, "flags.csv") == {
        ("Track1", "guitar"): {"bleed", "checked"},
        ("Track2", "S03"): {"missing"},
    }
    assert read_flags_csv("", "flags.csv") == {}


@pytest.mark.parametrize(
    "text, problem",
    [
        ("track,stem,flag\nT1,guitar,bleed\nT1,guitar,blead\n", r"line 3: unknown flag 'blead'"),
        ("track,stem,flag\nT1,guitar\n", r"line 2: expected 3 non-empty cells"),
        ("track,stem,flag\nT1,,bleed\n", r"line 2: expected 3 non-empty cells"),
        ("\ntrack,flag\nT1,bleed\n", r"line 2: expected header"),
    ],
)
def test_flags_csv_errors_name_file_and_line(text, problem):
    with pytest.raises(MetadataError, match=r"s3://b/qa/flags\.csv.*" + problem):
        read_flags_csv(text, "s3://b/qa/flags.csv")


def test_excluded():
    assert DEFAULT_EXCLUDE == ("missing", "bleed", "bad_quality", "inaudible", "mislabeled")
    assert excluded({"bleed", "checked"})
    assert not excluded({"checked", "detailed"})
    assert not excluded(set())
    assert not excluded({"clipping"})
    assert excluded({"clipping"}, exclude=("clipping",))
    with pytest.raises(ValueError, match="blead"):
        excluded({"bleed"}, exclude=("blead",))
