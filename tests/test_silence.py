"""Silence detection, longest-first cutting and the appendix-A histogram (seed 002)."""

from __future__ import annotations

import numpy as np
import pytest

from sepcore.prepare.mixing import instrument_rest
from sepcore.prepare.silence import (
    adjust_silence,
    audio_ratio,
    cut_spans,
    find_silences,
    frame_levels_db,
    plan_silence_cut,
    silence_histogram,
)

RATE = 8000
FRAME = 400  # 0.05 s at 8 kHz


def _tone(seconds, channels=2, amp=0.5, rate=RATE):
    t = np.arange(int(round(seconds * rate))) / rate
    return np.tile(amp * np.sin(2 * np.pi * 440 * t), (channels, 1)).astype(np.float32)


def _gappy(gaps=((1.0, 0.5), (3.0, 1.5), (6.0, 3.0)), total=11.0, channels=2):
    """A tone with exact zero stretches ``(start_s, length_s)``; frame-aligned here."""
    x = _tone(total, channels)
    for start, length in gaps:
        x[:, int(start * RATE) : int((start + length) * RATE)] = 0.0
    return x


def test_levels_are_rms_in_dbfs_with_an_epsilon():
    levels = frame_levels_db(np.concatenate([_tone(0.1), np.zeros((2, 600), np.float32)], 1), RATE)
    assert levels.shape == (4,)  # 800 + 600 samples -> 3.5 frames -> 4
    np.testing.assert_allclose(levels[:2], 20 * np.log10(0.5 / np.sqrt(2)), atol=0.01)
    assert np.all(levels[2:] == pytest.approx(-200.0))


def test_finds_exact_spans_and_ignores_short_gaps():
    spans = find_silences(_gappy(), RATE)
    assert spans == [(3 * RATE, int(4.5 * RATE)), (6 * RATE, 9 * RATE)]


def test_unaligned_gaps_are_found_to_frame_resolution():
    x = _tone(11.0)
    x[:, 10_123:25_321] = 0.0  # 1.9 s, not frame-aligned
    [(start, end)] = find_silences(x, RATE)
    assert start % FRAME == 0 and end % FRAME == 0
    assert 10_123 <= start < 10_123 + FRAME and 25_321 - FRAME < end <= 25_321


def test_threshold_and_min_length_are_respected():
    quiet = _tone(3.0, amp=0.005)  # about -49 dBFS RMS: not silence at -50 dBFS
    assert find_silences(quiet, RATE) == []
    assert find_silences(quiet, RATE, threshold_dbfs=-40.0) == [(0, 3 * RATE)]
    one_second = np.concatenate([_tone(1.0), np.zeros((2, RATE), np.float32), _tone(1.0)], 1)
    assert find_silences(one_second, RATE) == []  # must be *longer* than 1 s
    assert find_silences(one_second, RATE, min_silence_s=0.9) == [(RATE, 2 * RATE)]


def test_silence_at_the_end_is_clipped_to_the_signal():
    x = np.concatenate([_tone(1.0), np.zeros((2, 12_345), np.float32)], 1)
    assert find_silences(x, RATE) == [(RATE, RATE + 12_345)]


def test_all_silent_and_empty_inputs():
    silent = np.zeros((2, 5 * RATE), np.float32)
    spans = find_silences(silent, RATE)
    assert spans == [(0, 5 * RATE)]
    assert audio_ratio(5 * RATE, spans) == 0.0
    assert find_silences(np.zeros((1, 0), np.float32), RATE) == []
    assert audio_ratio(0, []) == 0.0
    result = adjust_silence(silent, [silent.copy()], RATE, target_ratio=0.7)
    assert result.target.shape == (2, 0) and result.others[0].shape == (2, 0)
    assert result.ratio_before == 0.0 and result.ratio_after == 0.0
    assert not result.kept and not np.isnan(result.ratio_after)
    for bad in (np.zeros(10), np.zeros((1, 2, 10))):
        with pytest.raises(ValueError, match="channels, samples"):
            find_silences(bad, RATE)


def test_audio_ratio_and_span_checks():
    assert audio_ratio(100, [(0, 10), (50, 70)]) == pytest.approx(0.7)
    with pytest.raises(ValueError, match="sorted, non-overlapping"):
        audio_ratio(100, [(50, 70), (0, 10)])
    with pytest.raises(ValueError, match="within"):
        audio_ratio(100, [(90, 110)])


def test_longest_silence_is_cut_first():
    n = 11 * RATE
    silences = find_silences(_gappy(), RATE)  # 1.5 s and 3 s: ratio 6.5 / 11 = 0.59
    # after cutting the 3 s one: 6.5 / 8 = 0.8125; so 0.8 needs exactly the 3 s one
    spans = plan_silence_cut(n, silences, 0.8, partial=False)
    assert spans == [(6 * RATE, 9 * RATE)]
    spans = plan_silence_cut(n, silences, 0.85, partial=False)  # needs both
    assert spans == silences
    assert plan_silence_cut(n, silences, 0.5) == []  # already above target


def test_partial_cut_reaches_the_target_exactly_from_the_middle():
    n = 11 * RATE
    silences = [(3 * RATE, int(4.5 * RATE)), (6 * RATE, 9 * RATE)]
    audio = n - int(4.5 * RATE)
    [(start, end)] = plan_silence_cut(n, silences, 0.7)
    removed = end - start
    assert audio / (n - removed) >= 0.7 > audio / (n - removed + 1)  # fewest samples
    assert 6 * RATE < start and end < 9 * RATE  # inside the longest silence ...
    assert abs((start - 6 * RATE) - (9 * RATE - end)) <= 1  # ... centred
    # the next silence is touched only once the longest is gone
    both = plan_silence_cut(n, silences, 0.85)
    assert both[1] == (6 * RATE, 9 * RATE) and both[0][0] >= 3 * RATE


def test_cut_spans_along_the_last_axis():
    x = np.arange(20, dtype=np.float32).reshape(2, 10)
    np.testing.assert_array_equal(cut_spans(x, [(1, 3), (8, 10)]), x[:, [0, 3, 4, 5, 6, 7]])
    stems = np.stack([x, -x])
    assert cut_spans(stems, [(0, 5)]).shape == (2, 2, 5)
    assert cut_spans(x, []).shape == (2, 10)


def test_same_spans_cut_from_instrument_rest_and_mix():
    rng = np.random.default_rng(0)
    n = 11 * RATE
    guitar = _gappy(channels=2)
    others = rng.uniform(-0.3, 0.3, (2, 2, n)).astype(np.float32)
    stems = np.concatenate([guitar[None], others])
    instrument, rest, mix = instrument_rest(stems, ["guitar", "bass", "drums"], "guitar")
    result = adjust_silence(instrument, [rest, mix], RATE, target_ratio=0.7)
    assert result.kept
    assert result.ratio_before == pytest.approx(6 / 11)  # the 0.5 s pause counts too
    assert result.ratio_after == pytest.approx(0.7, abs=1e-4) and result.ratio_after >= 0.7
    cut_rest, cut_mix = result.others
    assert result.target.shape == cut_rest.shape == cut_mix.shape
    assert np.array_equal(cut_mix, result.target + cut_rest)
    np.testing.assert_array_equal(cut_rest, cut_spans(rest, result.removed_spans))
    # silence was measured in the instrument only: the busy rest did not prevent it
    assert result.target.shape[1] < n


def _pauses(tone_s, pause_s, repeats, silence_s):
    """One long silence, then tone bursts each followed by a short pause (not cuttable)."""
    burst = np.concatenate([_tone(tone_s), np.zeros((2, int(pause_s * RATE)), np.float32)], 1)
    return np.concatenate([np.zeros((2, int(silence_s * RATE)), np.float32)] + [burst] * repeats, 1)


def test_short_pauses_count_as_silence_but_are_not_cut():
    x = _pauses(0.5, 0.5, 6, 2.0)  # 8 s: 3 s audio, 3 s pauses, 2 s silence
    result = adjust_silence(x, [x.copy()], RATE, target_ratio=0.7, cutoff_ratio=0.5)
    assert result.ratio_before == pytest.approx(3 / 8)
    assert result.removed_spans == [(0, 2 * RATE)]  # all it can cut
    assert result.ratio_after == pytest.approx(0.5)  # short of the target, at the cutoff
    assert result.kept
    assert result.target.shape == result.others[0].shape == (2, 6 * RATE)


@pytest.mark.parametrize("cutoff, kept", [(0.5, False), (0.25, False), (0.2, True), (None, True)])
def test_tracks_below_the_cutoff_are_dropped(cutoff, kept):
    x = _pauses(0.2, 0.8, 8, 2.0)  # 10 s: 1.6 s audio; after cutting 2 s: 1.6 / 8
    result = adjust_silence(x, [], RATE, target_ratio=0.7, cutoff_ratio=cutoff)
    assert result.ratio_before == pytest.approx(0.16)
    assert result.ratio_after == pytest.approx(0.2)
    assert result.kept is kept


def test_quiet_samples_enter_the_plan():
    n = 10 * RATE
    silences = [(8 * RATE, 10 * RATE)]
    # 2 s cuttable silence and 3 s of short pauses: 5 / 10 -> target 0.6 needs 1.667 s
    [(start, end)] = plan_silence_cut(n, silences, 0.6, quiet_samples=5 * RATE)
    assert (n - 5 * RATE) / (n - (end - start)) >= 0.6
    assert end - start == int(np.ceil(n - 5 * RATE / 0.6))
    with pytest.raises(ValueError, match="quiet_samples"):
        plan_silence_cut(n, silences, 0.6, quiet_samples=RATE)


def test_histogram_matches_appendix_a_rows():
    # audio ratios; silence shares 0.05, 0.1, 0.15, 0.95, 1.0, 0.0, 0.3
    ratios = [0.95, 0.9, 0.85, 0.05, 0.0, 1.0, 0.7]
    rows = silence_histogram(ratios)
    assert [r["bin"] for r in rows][:3] == ["0-10%", "10-20%", "20-30%"]
    assert rows[-1]["bin"] == "90-100%"
    assert [r["tracks"] for r in rows] == [2, 2, 0, 1, 0, 0, 0, 0, 0, 2]
    assert sum(r["share"] for r in rows) == pytest.approx(1.0)
    assert rows[0]["share"] == pytest.approx(2 / 7)
    assert [r["bin"] for r in silence_histogram([0.5], bins=4)] == [
        "0-25%",
        "25-50%",
        "50-75%",
        "75-100%",
    ]
    empty = silence_histogram([])
    assert all(r["tracks"] == 0 and r["share"] == 0.0 for r in empty)
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        silence_histogram([1.2])
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        silence_histogram([float("nan")])
