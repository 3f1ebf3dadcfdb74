"""BSS Eval (both backends), windowed mode, silence, medians and the cheap SDRs."""

from __future__ import annotations

import warnings

import numpy as np
import pytest

from sepcore.evaluate.bss import (
    SILENCE_POWER,
    bss_eval,
    median_metrics,
    sdr_simple,
    si_sdr,
    windowed_bss_eval,
)

SR = 22050


def tones_and_noise(seconds: float = 3.0, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """References [sum of tones, noise] and estimates with leakage and artefacts."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * SR)) / SR
    tones = 0.4 * np.sin(2 * np.pi * 220 * t) + 0.2 * np.sin(2 * np.pi * 587 * t + 1.0)
    hiss = 0.2 * rng.standard_normal(t.size)
    refs = np.stack([tones, hiss])
    est = np.stack(
        [
            tones + 0.3 * hiss + 0.02 * rng.standard_normal(t.size),
            hiss + 0.2 * tones + 0.03 * rng.standard_normal(t.size),
        ]
    )
    return refs, est


@pytest.mark.parametrize("backend", ["fast", "mir_eval"])
def test_perfect_estimate_scores_far_above_a_noisy_one(backend):
    refs, est = tones_and_noise(1.0)
    perfect = bss_eval(refs, refs, backend=backend)
    noisy = bss_eval(refs, est, backend=backend)
    assert set(perfect) == {"sdr", "sir", "sar"} and perfect["sdr"].shape == (2,)
    assert np.all(perfect["sdr"] > 100.0)  # inf counts
    assert np.all(noisy["sdr"] < 30.0) and np.all(noisy["sdr"] > 0.0)


def test_fast_and_mir_eval_agree_within_a_tenth_of_a_db():
    refs, est = tones_and_noise(3.0)
    fast = bss_eval(refs, est, backend="fast")
    ref = bss_eval(refs, est, backend="mir_eval")
    for name in ("sdr", "sir", "sar"):
        assert np.all(np.isfinite(ref[name]))
        np.testing.assert_allclose(fast[name], ref[name], atol=0.1, rtol=0)


def test_multichannel_is_downmixed_by_the_mean():
    refs, est = tones_and_noise(1.0)
    stereo_refs = np.stack([refs, refs], axis=1) * np.array([0.5, 1.5])[None, :, None]
    stereo_est = np.stack([est, est], axis=1)
    np.testing.assert_allclose(
        bss_eval(stereo_refs, stereo_est)["sdr"], bss_eval(refs, est)["sdr"], atol=1e-9
    )


def test_shapes_and_bad_values_raise():
    refs, est = tones_and_noise(1.0)
    with pytest.raises(ValueError, match="differ in shape"):
        bss_eval(refs, est[:, :-1])
    with pytest.raises(ValueError, match="NaN"):
        bss_eval(refs, np.full_like(est, np.nan))
    with pytest.raises(ValueError, match="backend"):
        bss_eval(refs, est, backend="museval")  # type: ignore[arg-type]


def test_fast_backend_survives_torch_thread_settings(capfd, monkeypatch):
    """The fast backend's solves stay out of torch's OpenMP team (sepcore.evaluate.bss docstring).

    Once ``torch.set_num_threads`` has been called (a worker, a test fixture),
    ``torch.linalg.solve`` on a batch runs MKL's LU in nested OpenMP teams: MKL printed
    "Parameter 6 was incorrect on entry to DLASWP", the solve raised (the call fell back
    to mir_eval) or livelocked. Deterministic: it failed on every call.
    """
    import torch

    import sepcore.evaluate.bss as M

    def no_fallback(ref, est):
        raise AssertionError("the fast backend fell back to mir_eval")

    refs, est = tones_and_noise(1.0)
    before = torch.get_num_threads()
    torch.set_num_threads(2)  # two threads even on one core: the nesting needs a team
    try:
        monkeypatch.setattr(M, "_mir_eval", no_fallback)
        scores = windowed_bss_eval(refs, est, SR, window_s=0.5, hop_s=0.5)  # 2 windows
        assert torch.get_num_threads() == 2  # no thread setting changed behind the caller
    finally:
        torch.set_num_threads(before)
    out, err = capfd.readouterr()
    assert "MKL ERROR" not in out + err
    assert np.isfinite(scores["sdr_windows"]).all() and scores["sdr_windows"].shape == (2, 2)


# --------------------------------------------------------------------------- silence


@pytest.mark.parametrize("backend", ["fast", "mir_eval"])
def test_silence_gives_nan_and_never_raises(backend):
    refs, est = tones_and_noise(1.0)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no RuntimeWarning either
        all_silent = bss_eval(np.zeros_like(refs), est, backend=backend)
    assert all(np.isnan(v).all() for v in all_silent.values())

    one_silent = refs.copy()
    one_silent[0] = 0.0
    scores = bss_eval(one_silent, est, backend=backend)
    assert np.isnan(scores["sdr"][0]) and np.isfinite(scores["sdr"][1])
    assert scores["sir"][1] == np.inf  # no interfering reference left

    dead = est.copy()
    dead[1] = 0.0
    scores = bss_eval(refs, dead, backend=backend)
    whole = bss_eval(refs, est, backend=backend)
    assert np.isnan(scores["sdr"][1]) and np.isnan(scores["sar"][1])
    np.testing.assert_allclose(scores["sdr"][0], whole["sdr"][0], atol=1e-9)


def test_dither_counts_as_silence():
    refs, est = tones_and_noise(1.0)
    rng = np.random.default_rng(1)
    refs[0] = 2.0**-23 * rng.standard_normal(refs.shape[1])  # 24-bit dither
    assert np.mean(refs[0] ** 2) <= SILENCE_POWER
    assert np.isnan(bss_eval(refs, est)["sdr"][0])


# -------------------------------------------------------------------------- windowed


def test_windowed_equals_full_on_a_stationary_signal():
    refs, est = tones_and_noise(3.0)
    full = bss_eval(refs, est)
    win = windowed_bss_eval(refs, est, SR, window_s=1.0, hop_s=1.0)
    assert win["sdr_windows"].shape == (2, 3)
    np.testing.assert_allclose(win["window_start_s"], [0.0, 1.0, 2.0])
    for name in ("sdr", "sir", "sar"):
        np.testing.assert_allclose(win[name], full[name], atol=0.5, rtol=0)


def test_windowed_skips_silent_windows_per_source():
    refs, est = tones_and_noise(3.5)  # the last half second is dropped
    refs[0, : 2 * SR] = 0.0  # source 0 silent in windows 0 and 1
    est[0, : SR // 2] = 0.0  # and its estimate silent in the first half of window 0
    win = windowed_bss_eval(refs, est, SR)
    sdr = win["sdr_windows"]
    assert sdr.shape == (2, 3)
    assert np.isnan(sdr[0, :2]).all() and np.isfinite(sdr[0, 2])
    assert np.isfinite(sdr[1]).all()
    assert win["sdr"][0] == sdr[0, 2]
    assert win["sdr"][1] == np.median(sdr[1])


def test_windowed_agrees_across_backends():
    refs, est = tones_and_noise(1.0)
    fast = windowed_bss_eval(refs, est, SR, window_s=0.5, hop_s=0.5, backend="fast")
    slow = windowed_bss_eval(refs, est, SR, window_s=0.5, hop_s=0.5, backend="mir_eval")
    np.testing.assert_allclose(fast["sdr_windows"], slow["sdr_windows"], atol=0.1, rtol=0)


def test_a_signal_shorter_than_a_window_is_one_window():
    refs, est = tones_and_noise(0.5)
    win = windowed_bss_eval(refs, est, SR, window_s=1.0)
    assert win["sdr_windows"].shape == (2, 1)
    np.testing.assert_allclose(win["sdr"], bss_eval(refs, est)["sdr"], atol=1e-9)


# --------------------------------------------------------------------------- medians


def test_median_ignores_nan():
    tracks = [
        {"sdr": np.array([1.0, np.nan]), "sir": np.array([2.0, np.nan]), "sar": np.ones(2)},
        {"sdr": np.array([3.0, np.nan]), "sir": np.array([np.nan, np.nan]), "sar": np.ones(2)},
        {"sdr": np.array([np.nan, np.nan]), "sir": np.array([4.0, np.nan]), "sar": np.ones(2)},
    ]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        med = median_metrics(tracks)
    np.testing.assert_allclose(med["sdr"], [2.0, np.nan])
    np.testing.assert_allclose(med["sir"], [3.0, np.nan])
    np.testing.assert_array_equal(med["count"], [2, 0])
    with pytest.raises(ValueError, match="at least one"):
        median_metrics([])


# ----------------------------------------------------------------------- cheap SDRs


def test_sdr_simple_and_si_sdr():
    refs, _ = tones_and_noise(0.5)
    r = refs[0]
    assert sdr_simple(r, 0.5 * r) == pytest.approx(20 * np.log10(2.0), abs=1e-6)
    assert si_sdr(r, 0.5 * r) > 80.0  # scale does not matter
    noisy = r + 0.1 * refs[1]
    assert si_sdr(r, noisy) < 30.0
    assert sdr_simple(r, noisy) == pytest.approx(
        10 * np.log10(np.sum(r**2) / np.sum((0.1 * refs[1]) ** 2)), abs=1e-6
    )
    silent = np.zeros_like(r)
    assert sdr_simple(silent, silent) == 0.0 and si_sdr(silent, silent) == 0.0
    assert sdr_simple(silent, r) < -50.0 and si_sdr(silent, r) < -50.0
    with pytest.raises(ValueError, match="differ"):
        sdr_simple(r, r[:-1])
