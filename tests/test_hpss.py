"""HPSS (median-filtering harmonic-percussive separation) and its ``hpss`` row in ``sep evaluate``."""

from __future__ import annotations

import numpy as np
import pytest

from sepcore.data.classes import CLASSES
from sepcore.errors import ConfigError
from sepcore.evaluate import document as D
from sepcore.evaluate import job as J
from sepcore.evaluate import report as ER
from sepcore.evaluate import tracks as T
from sepcore.evaluate.config import ScoringConfig, method_order
from sepcore.io.audio import Audio, write_audio
from sepcore.separate.hpss import hpss_components, hpss_drums

SR = 22050
N_FFT, HOP = 512, 128
FEATURE = {"name": "stft", "n_fft": N_FFT, "hop": HOP}
META = {"task": "separator", "target": "drums", "sample_rate": SR, "channels": 1, "frames": 16,
        "feature": FEATURE, "classes": list(CLASSES)}  # fmt: skip
HPSS = {"margin": 1.0, "kernel_size": 31}

_METADATA = """\
audio_dir: stems
stems:
  S00: {audio_rendered: true, inst_class: Guitar, is_drum: false, program_num: 25}
  S01: {audio_rendered: true, inst_class: Drums, is_drum: true, program_num: 128}
"""


def _sine(seconds: float, freq: float = 440.0, level: float = 0.3) -> np.ndarray:
    """A steady sine. Shape: ``(1, samples)``."""
    t = np.arange(int(seconds * SR)) / SR
    return (level * np.sin(2 * np.pi * freq * t)).astype(np.float32)[None]


def _clicks(seconds: float, per_second: int = 8) -> np.ndarray:
    """A click train: one full-scale sample ``per_second`` times a second. Shape: ``(1, samples)``."""
    out = np.zeros((1, int(seconds * SR)), dtype=np.float32)
    out[0, SR // (2 * per_second) :: SR // per_second] = 1.0
    return out


def _energy(x: np.ndarray) -> float:
    return float(np.sum(np.square(x, dtype=np.float64)))


@pytest.mark.parametrize("margin", [1.0, 3.0])
def test_harmonic_percussive_and_residual_add_up_to_the_input(margin):
    mix = np.concatenate([_sine(1.0) + _clicks(1.0), 0.5 * _sine(1.0, 660.0) + 0.7 * _clicks(1.0)])  # stereo
    parts = hpss_components(mix, SR, N_FFT, HOP, margin=margin)
    assert list(parts) == ["harmonic", "percussive", "residual"]
    for part in parts.values():
        assert part.shape == mix.shape and part.dtype == np.float32
    total = parts["harmonic"] + parts["percussive"] + parts["residual"]
    np.testing.assert_allclose(total, mix, atol=1e-5 * np.abs(mix).max(), rtol=0)
    # margin 1: soft masks that add up to one, no residual to speak of; a margin leaves some.
    share = _energy(parts["residual"]) / _energy(mix)
    assert share < 1e-6 if margin == 1.0 else share > 1e-4


@pytest.mark.parametrize("margin", [1.0, 2.0])
def test_drums_and_rest_add_up_to_the_mixture(margin):
    mix = (_sine(1.0) + 0.5 * _clicks(1.0)).repeat(2, axis=0)
    out = hpss_drums(mix, SR, N_FFT, HOP, margin=margin)
    assert set(out) == {"instrument", "rest"}
    assert out["instrument"].shape == out["rest"].shape == mix.shape
    np.testing.assert_allclose(out["instrument"] + out["rest"], mix, atol=1e-6, rtol=0)
    # the drums are the percussive part: the harmonic part and the residual go to the rest
    parts = hpss_components(mix, SR, N_FFT, HOP, margin=margin)
    np.testing.assert_allclose(out["instrument"], parts["percussive"], atol=1e-6, rtol=0)
    np.testing.assert_allclose(out["rest"], parts["harmonic"] + parts["residual"], atol=1e-5, rtol=0)


def test_a_click_train_is_percussive_and_a_steady_sine_harmonic():
    clicks, sine = _clicks(1.0), _sine(1.0)
    drums = hpss_drums(clicks, SR, N_FFT, HOP)["instrument"]
    assert _energy(drums) > 0.9 * _energy(clicks)
    parts = hpss_components(sine, SR, N_FFT, HOP)
    assert _energy(parts["harmonic"]) > 0.95 * _energy(sine)
    assert _energy(parts["percussive"]) < 0.01 * _energy(sine)


def test_bad_margin_kernel_size_and_shapes_raise():
    audio = _sine(0.2)
    for margin in (0.5, 0.0, float("nan")):
        with pytest.raises(ValueError, match="margin"):
            hpss_drums(audio, SR, N_FFT, HOP, margin=margin)
    for size in (1, 4, 2.5):
        with pytest.raises(ValueError, match="kernel_size"):
            hpss_drums(audio, SR, N_FFT, HOP, kernel_size=size)  # type: ignore[arg-type]
    for bad in (audio[0], audio[None], np.zeros((1, 0), np.float32)):
        with pytest.raises(ValueError, match=r"\(channels, samples\)"):
            hpss_drums(bad, SR, N_FFT, HOP)
    with pytest.raises(ValueError, match="float"):
        hpss_drums(np.ones((1, 100), dtype=np.int16), SR, N_FFT, HOP)


# ---------------------------------------------------------------- the evaluate job's hpss row


def _cfg(*overrides: str):
    from ray_jobs.evaluate import EvaluateConfig
    from sepcore.config import load_config

    return load_config(EvaluateConfig, None, ["data=d", "checkpoint=c", "output=o", *overrides])


def test_the_hpss_row_is_on_by_default_and_configurable():
    cfg = _cfg()
    assert cfg.baselines == ["hpss"] and cfg.hpss.margin == 1.0 and cfg.hpss.kernel_size == 31
    assert _cfg("baselines=[]").baselines == []
    assert _cfg("hpss.margin=2.5", "hpss.kernel_size=17").hpss.model_dump() == {"margin": 2.5, "kernel_size": 17}
    for bad in ("hpss.margin=0.5", "hpss.kernel_size=30", "hpss.kernel_size=1", "baselines=[nmf]"):
        with pytest.raises(ConfigError):
            _cfg(bad)
    with pytest.raises(ConfigError, match="built-in row"):
        _cfg("compare={hpss: demucs:htdemucs}")
    assert method_order(["mixture", "irm", "hpss", "theirs", "model", "ibm"]) == [
        "model", "theirs", "hpss", "irm", "ibm", "mixture"]  # fmt: skip


def test_the_hpss_settings_are_in_the_fingerprint_when_drums_are_scored():
    on, off, wide = _cfg(), _cfg("baselines=[]"), _cfg("hpss.margin=2")
    assert J.baseline_settings(on, "separator", ["drums"]) == {"hpss": HPSS}
    assert J.baseline_settings(on, "separator", ["guitar"]) == {}
    assert J.baseline_settings(off, "separator", ["drums"]) == {}
    assert J.baseline_settings(on, "activation", list(CLASSES)) == {}

    def prints(classes):
        return {J.task_settings(c, "separator", META, "c", classes)["fingerprint"] for c in (on, off, wide)}

    assert len(prints(["drums"])) == 3  # each setting its own results
    assert len(prints(["guitar"])) == 1  # no drums: no row, the fingerprint it had
    assert J.task_settings(on, "separator", META, "c", ["guitar", "drums"])["baselines"] == {"hpss": HPSS}


def _track(root, seconds: float = 1.0):
    """A Slakh-layout track with a guitar (a steady chord) and drums (a click train), mono."""
    from sepcore.data.sources import slakh_tracks

    folder = root / "Track00001"
    (folder / "stems").mkdir(parents=True)
    (folder / "metadata.yaml").write_text(_METADATA)
    guitar = _sine(seconds, 330.0, 0.2) + _sine(seconds, 495.0, 0.1)
    for k, audio in enumerate((guitar, 0.5 * _clicks(seconds))):
        write_audio(str(folder / "stems" / f"S{k:02d}.flac"), Audio(audio, SR), fmt="flac")
    (track,) = slakh_tracks(str(root))
    return track


def test_the_hpss_row_is_scored_for_drums_only_and_recorded_in_metrics_json(tmp_path):
    track = _track(tmp_path)
    spec = ScoringConfig(backend="fast")
    cfg = _cfg()
    classes = ["drums", "guitar"]
    baselines = J.baseline_settings(cfg, "separator", classes)
    res = T.evaluate_separation(track, META, spec, None, classes, baselines=baselines)
    assert list(res["classes"]["drums"]) == ["hpss", "irm", "ibm", "mixture"]
    assert list(res["classes"]["guitar"]) == ["irm", "ibm", "mixture"]
    hpss, mixture = res["classes"]["drums"]["hpss"]["instrument"], res["classes"]["drums"]["mixture"]["instrument"]
    assert hpss["sdr"] > mixture["sdr"] + 10  # clicks over a steady chord: HPSS's easy case
    assert "hpss" in T.describe(res)
    res.pop("signals")

    head = J.run_head(cfg, "separator", "c", "drums", META, 1, None, (), baselines)
    assert head["baselines"] == {"hpss": {"classes": ["drums"], **HPSS, "n_fft": N_FFT, "hop": HOP}}
    doc = D.metrics_document(head, spec.described(), classes, [res], None, [], 1.0)
    D.validate_metrics(doc)
    assert doc["baselines"]["hpss"]["margin"] == 1.0
    assert doc["separation"]["drums"]["methods"] == ["hpss", "irm", "ibm", "mixture"]
    drums_table, guitar_table = ER._median_tables(doc["separation"], doc)
    assert [r[0] for r in drums_table.rows][:2] == ["hpss: drums", "hpss: rest"] and "hpss:" in drums_table.note
    assert "hpss" not in guitar_table.note

    without = T.evaluate_separation(track, META, spec, None, ["drums"], baselines={})
    assert "hpss" not in without["classes"]["drums"]
    assert "baselines" not in J.run_head(cfg, "separator", "c", "drums", META, 1, None, (), {})
