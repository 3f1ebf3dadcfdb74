"""Evaluation library (no Ray): oracle and mixture rows, pooled and windowed BSS Eval,
activation matrices, metrics.json schema, HTML report files."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from torch import nn

from sepcore.data.classes import CLASSES
from sepcore.data.sources import slakh_tracks
from sepcore.evaluate import activations as A
from sepcore.evaluate import bss as metrics
from sepcore.evaluate import document as D
from sepcore.evaluate import scoring as S
from sepcore.evaluate import tracks as E
from sepcore.evaluate.config import ScoringConfig
from sepcore.report import html as R
from sepcore.separate.apply import FixedMaskModel

SR = 22050
META = {"sample_rate": SR, "channels": 1, "frames": 16,
        "feature": {"name": "stft", "n_fft": 1024, "hop": 256, "sample_rate": SR}}  # fmt: skip


@pytest.fixture(scope="module")
def guitar_pairs(demo_data) -> list[tuple[str, np.ndarray, np.ndarray]]:
    """(track id, guitar, rest) of three demo tracks, made as training makes them."""
    out = []
    for track in slakh_tracks(demo_data)[:4]:
        pairs, _ = E.class_pairs(track, META, ["guitar"])
        if "guitar" in pairs:
            out.append((track.track_id, *pairs["guitar"]))
    assert len(out) >= 3
    return out[:3]


def _stationary(seconds: float, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Two stationary sources and estimates with fixed leakage and noise: (refs, ests)."""
    rng = np.random.default_rng(seed)
    n = int(seconds * SR)
    t = np.arange(n) / SR
    a = 0.3 * np.sin(2 * np.pi * 220 * t) + 0.05 * rng.standard_normal(n)
    b = 0.1 * rng.standard_normal(n)
    refs = np.stack([a, b])
    ests = np.stack(
        [a + 0.3 * b + 0.02 * rng.standard_normal(n), b + 0.2 * a + 0.02 * rng.standard_normal(n)]
    )
    return refs, ests


# ---------------------------------------------------------------- separation rows


def test_oracle_irm_beats_the_mixture_and_a_perfect_estimate_beats_both(guitar_pairs):
    spec = ScoringConfig(mode="full", backend="mir_eval", segment_seconds=30.0)
    tracks = []
    for track_id, inst, rest in guitar_pairs:
        inst, rest = inst[:, : 6 * SR], rest[:, : 6 * SR]  # 6 s of each keeps mir_eval quick
        est = E.estimates(inst, rest, 1024, 256)
        assert list(est) == ["irm", "ibm", "mixture"]
        assert np.array_equal(est["mixture"]["instrument"], inst + rest)
        est["perfect"] = {"instrument": inst, "rest": rest}
        tracks.append({"track_id": track_id, "scores": S.score_methods(inst, rest, est, SR, spec)})
    med = S.median_table(tracks)
    assert list(med) == ["irm", "ibm", "mixture", "perfect"]
    for src in D.SOURCES:
        irm, ibm, mix, perfect = (med[m][src]["sdr"] for m in ("irm", "ibm", "mixture", "perfect"))
        assert irm > mix + 3.0 and ibm > mix + 3.0
        assert perfect > max(irm, ibm) + 30.0
        assert med["irm"][src]["count"] == 3
    # The mixture as estimate: SIR equals SDR (no artifacts), as BSS Eval defines it.
    assert med["mixture"]["instrument"]["sdr"] == pytest.approx(
        med["mixture"]["instrument"]["sir"], abs=0.01
    )


def test_the_model_row_goes_through_the_separation_path(guitar_pairs):
    _, inst, rest = guitar_pairs[0]
    half = E.estimates(inst, rest, 1024, 256, model=FixedMaskModel(0.5), sample_rate=SR, frames=16)
    assert list(half) == ["model", "irm", "ibm", "mixture"]
    mix = inst + rest
    np.testing.assert_allclose(half["model"]["instrument"], 0.5 * mix, atol=1e-4)
    np.testing.assert_allclose(half["model"]["instrument"] + half["model"]["rest"], mix, atol=1e-4)


class _SpectralGate(nn.Module):
    """A crude but real mask separator: passes the bins louder than their frame's mean."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x / (x + x.mean(dim=2, keepdim=True) + 1e-8)


def test_fast_backend_agrees_with_mir_eval_on_real_separations(guitar_pairs):
    """Windowed mode uses fast_bss_eval: within 0.1 dB of mir_eval on oracle and model separations."""
    _, inst, rest = guitar_pairs[1]
    inst, rest = inst[:, 2 * SR : 7 * SR], rest[:, 2 * SR : 7 * SR]
    est = E.estimates(inst, rest, 1024, 256, model=_SpectralGate(), sample_rate=SR, frames=16)
    est.pop("mixture")  # a scaled mixture has no artifacts: SAR is numerically infinite (> 100 dB)
    spec = {b: ScoringConfig(mode="windowed", backend=b) for b in ("fast", "mir_eval")}
    fast, slow = (S.score_methods(inst, rest, est, SR, spec[b]) for b in ("fast", "mir_eval"))
    diffs = [abs(fast[method][src][m] - slow[method][src][m])
             for method in est for src in D.SOURCES for m in metrics.METRICS]  # fmt: skip
    assert len(diffs) == 18 and max(diffs) < 0.1
    assert (
        slow["model"]["instrument"]["sdr"] < slow["irm"]["instrument"]["sdr"]
    )  # a real, imperfect model


# ---------------------------------------------------------------- full (pooled) and windowed modes


def test_windowed_and_full_modes_agree_on_a_stationary_example():
    refs, ests = _stationary(5.0)
    full = S.score(refs, ests, SR, ScoringConfig(mode="full", backend="mir_eval"))
    for backend in ("mir_eval", "fast"):
        win = S.score(refs, ests, SR, ScoringConfig(mode="windowed", backend=backend))
        for m in metrics.METRICS:
            np.testing.assert_allclose(win[m], full[m], atol=0.5)


def test_one_segment_is_bss_eval_itself_and_pooling_is_exact_for_repeated_segments():
    refs, ests = _stationary(3.0, seed=1)
    direct = metrics.bss_eval(refs, ests, "mir_eval")
    one = S.pooled_bss_eval(refs, ests, SR, segment_s=10.0)
    assert int(one["segments"]) == 1
    for m in metrics.METRICS:
        np.testing.assert_array_equal(one[m], direct[m])
    # The same segment twice: its energies double, so the pooled scores are its own.
    twice = S.pooled_bss_eval(np.tile(refs, 2), np.tile(ests, 2), SR, segment_s=3.0)
    assert int(twice["segments"]) == 2
    for m in metrics.METRICS:
        np.testing.assert_allclose(twice[m], direct[m], atol=1e-6)


def test_energies_recovered_from_sdr_and_sir_give_back_mir_evals_sar():
    refs, ests = _stationary(2.0, seed=2)
    s = metrics.bss_eval(refs, ests, "mir_eval")
    energies = S.energies_from_scores(s["sdr"], s["sir"], np.sum(ests**2, axis=1))
    assert (energies >= 0).all()
    back = S.scores_from_energies(energies)
    for m in metrics.METRICS:
        np.testing.assert_allclose(back[m], s[m], atol=1e-6)


def test_segment_bounds_cover_every_sample_in_equal_parts():
    assert S.segment_bounds(100, 10, 3.0) == [(0, 25), (25, 50), (50, 75), (75, 100)]
    assert S.segment_bounds(10, 10, 3.0) == [(0, 10)]
    bounds = S.segment_bounds(SR * 65 + 7, SR, 30.0)
    assert len(bounds) == 3 and bounds[0][0] == 0 and bounds[-1][1] == SR * 65 + 7
    assert all(a[1] == b[0] for a, b in zip(bounds, bounds[1:], strict=False))


def test_a_segment_with_a_silent_reference_counts_its_estimate_as_error():
    refs, ests = _stationary(4.0, seed=3)
    half = 2 * SR
    refs[0, half:] = 0.0  # the instrument stops; its estimate still holds leakage of the rest
    ests[0, half:] = 0.3 * refs[1, half:]
    pooled = S.pooled_bss_eval(refs, ests, SR, segment_s=2.0)
    first = metrics.bss_eval(refs[:, :half], ests[:, :half], "mir_eval")
    assert np.isfinite(pooled["sdr"]).all()
    assert pooled["sdr"][0] < first["sdr"][0] - 0.5  # the leakage counts against it
    assert pooled["sir"][0] < first["sir"][0] - 0.5  # as interference (it is the rest) ...
    assert pooled["sar"][0] >= first["sar"][0] - 0.01  # ... not as artifacts


def test_full_mode_scores_bounded_segments_so_time_is_linear(monkeypatch):
    """Each BSS Eval call sees at most one segment: the work is linear in the length.

    (Timings per minute of audio for 30-240 s are in bench/README.md.)
    """
    calls: list[int] = []
    real = metrics.bss_eval

    def spy(refs, ests, backend="fast"):
        calls.append(np.asarray(refs).shape[-1])
        return real(refs, ests, backend)

    monkeypatch.setattr(metrics, "bss_eval", spy)
    refs, ests = _stationary(6.0, seed=4)
    for seconds in (2, 6):
        calls.clear()
        S.pooled_bss_eval(refs[:, : seconds * SR], ests[:, : seconds * SR], SR, 1.0, "fast")
        assert len(calls) == seconds and max(calls) <= SR


# ---------------------------------------------------------------- activations


def _sequence_activations(levels: np.ndarray, frames_each: int) -> tuple[np.ndarray, np.ndarray]:
    """Reference activations of classes playing one after another at ``levels``; windows."""
    n = len(CLASSES)
    ref = np.zeros((n, n * frames_each), dtype=np.float32)
    windows = np.zeros_like(ref, dtype=bool)
    for i in range(n):
        ref[i, i * frames_each : (i + 1) * frames_each] = levels[i]
        windows[i, i * frames_each : (i + 1) * frames_each] = True
    return ref, windows


def test_noise_and_leakage_of_a_perfect_prediction_are_at_the_floor():
    ref, windows = _sequence_activations(np.linspace(0.5, 1.0, len(CLASSES)), 20)
    noise = A.noise_matrix(ref.copy(), ref, windows)
    leakage = A.leakage_matrix(ref.copy(), ref, windows)
    off = ~np.eye(len(CLASSES), dtype=bool)
    assert (noise[off] == -60.0).all() and (leakage[off] == -60.0).all()
    assert np.isnan(np.diag(leakage)).all()
    assert (np.diag(noise) == -60.0).all()  # a perfect prediction also follows each envelope


def test_noise_and_leakage_measure_a_constructed_leak():
    ref, windows = _sequence_activations(np.full(len(CLASSES), 1.0), 20)
    pred = ref.copy()
    piano, guitar = CLASSES.index("piano"), CLASSES.index("guitar")
    pred[piano, windows[guitar]] = 0.5  # piano predicted at -30 dB while the guitar plays at 0 dB
    noise = A.noise_matrix(pred, ref, windows)
    leakage = A.leakage_matrix(pred, ref, windows)
    assert noise[guitar, piano] == pytest.approx(-30.0)  # rows: playing; columns: predicted
    assert leakage[piano, guitar] == pytest.approx(-30.0)  # rows: predicted; columns: playing
    assert noise[piano, guitar] == -60.0 and leakage[guitar, piano] == -60.0


def test_activation_errors_and_amplitudes():
    assert A.activation_amplitude(np.array([0.0, 0.5, 1.0])).tolist() == pytest.approx(
        [0.0, 10**-1.5, 1.0]
    )
    ref = np.array([[0.0, 1.0, 1.0], [0.0, 0.0, 0.0]])
    pred = np.array([[0.0, 1.0, 0.0], [0.0, 0.0, 0.0]])
    err = A.activation_errors(pred, ref)
    assert err["mae"].tolist() == pytest.approx([1 / 3, 0.0])
    assert err["error_db"][0] == pytest.approx(20 * math.log10(1 / 3))
    assert err["error_db"][1] == -60.0 and err["active_frames"].tolist() == [2, 0]
    with pytest.raises(ValueError, match="equal"):
        A.noise_matrix(pred, ref[:1], np.zeros_like(pred, dtype=bool))


class _FrameModel(nn.Module):
    """Activations that depend on each frame alone: stitching must not change them."""

    frames = 16

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        per_frame = torch.sigmoid(x.mean(dim=2))  # (batch, 1, frames)
        return torch.cat([per_frame, 1 - per_frame, per_frame**2], dim=1)


def test_predict_activations_stitches_windows_by_overlap_add():
    feature = np.random.default_rng(0).standard_normal((1, 20, 101)).astype(np.float32)
    pred = A.predict_activations(_FrameModel(), feature, frames=16, n_classes=3, batch_size=4)
    p = 1 / (1 + np.exp(-feature[0].mean(axis=0)))
    np.testing.assert_allclose(pred, np.stack([p, 1 - p, p**2]), atol=1e-5)
    with pytest.raises(ValueError, match="classes do not fit"):
        A.predict_activations(_FrameModel(), feature[:, :2], frames=16, n_classes=3)


def test_frame_windows_and_loudest_span():
    win = A.frame_windows([(0, 1000), None, (1000, 3000)], n_frames=12, frame_length=512, hop=256)
    assert win[0].tolist() == [False, True, True, False] + [False] * 8
    assert not win[1].any() and win[2, 5:11].all() and not win[2, :5].any() and not win[2, 11]
    audio = np.zeros((1, 5 * SR), dtype=np.float32)
    audio[0, 3 * SR : 4 * SR] = 0.5
    start, db = E.loudest_span(audio, SR, 1.0)
    assert start == 3 * SR and db == pytest.approx(20 * math.log10(0.5), abs=0.01)


# ---------------------------------------------------------------- metrics.json and report


def _doc(scores: dict) -> dict:
    track = {"track_id": "slakh:Track00001", "seconds": 12.0, "scores": scores}
    return D.to_json({
        "format": D.FORMAT, "task": "separator", "checkpoint": "file:///c", "data": "file:///d", "split": "test",
        "target": "guitar", "sample_rate": SR,
        "evaluation": {"mode": "full", "backend": "mir_eval", "segment_seconds": 30.0, "window_seconds": 1.0,
                       "hop_seconds": 1.0},
        "tracks_selected": 1, "tracks_evaluated": 1,
        "timing": {"audio_seconds": 12.0, "eval_seconds": 1.0, "eval_seconds_per_audio_minute": 5.0},
        "failed": [], "skipped": {},
        "separation": {"guitar": {"methods": list(scores), "median": S.median_table([track]), "tracks": [track]}},
        "activation": None,
    })  # fmt: skip


def test_metrics_json_validates_against_its_schema(guitar_pairs):
    _, inst, rest = guitar_pairs[0]
    n = 3 * SR
    est = E.estimates(inst[:, :n], rest[:, :n], 1024, 256)
    est["mixture"]["rest"] = np.zeros_like(inst[:, :n])  # an all-zero estimate: NaN -> null
    scores = S.score_methods(inst[:, :n], rest[:, :n], est, SR, ScoringConfig(backend="fast"))
    doc = json.loads(json.dumps(_doc(scores)))  # through real JSON
    D.validate_metrics(doc)
    assert doc["separation"]["guitar"]["tracks"][0]["scores"]["mixture"]["rest"]["sdr"] is None
    jsonschema = pytest.importorskip("jsonschema")
    jsonschema.validate(doc, D.METRICS_SCHEMA)  # the schema is real JSON Schema

    bad = json.loads(json.dumps(doc))
    bad["separation"]["guitar"]["median"]["oracle"] = bad["separation"]["guitar"]["median"]["irm"]
    del bad["timing"]["eval_seconds"]
    bad["separation"]["guitar"]["tracks"][0]["scores"]["irm"]["instrument"]["sdr"] = "high"
    with pytest.raises(D.EvaluationError) as info:
        D.validate_metrics(bad, "out/metrics.json")
    text = str(info.value)
    assert text.startswith("out/metrics.json:")
    assert (
        "unexpected key 'oracle'" in text and "missing 'eval_seconds'" in text and "'high'" in text
    )


def test_auto_backend_is_mir_eval_for_full_tracks_and_fast_for_windows():
    from ray_jobs.evaluate import EvaluateConfig

    base = {"data": "d", "checkpoint": "c", "output": "o"}
    assert EvaluateConfig(**base).bss_backend == "mir_eval"
    assert EvaluateConfig(**base).described() == {"mode": "full", "backend": "mir_eval", "segment_seconds": 30.0,
                                                  "window_seconds": 1.0, "hop_seconds": 1.0}  # fmt: skip
    assert EvaluateConfig(**base, mode="windowed").bss_backend == "fast"
    assert EvaluateConfig(**base, mode="windowed", backend="mir_eval").bss_backend == "mir_eval"


def test_json_numbers():
    assert D.to_json({"a": np.float64("nan"), "b": [np.inf, -np.inf, np.float32(1.23456)], "c": np.int64(3)}) == {
        "a": None, "b": ["inf", "-inf", 1.2346], "c": 3}  # fmt: skip
    assert math.isinf(D.from_json_number("inf")) and math.isnan(D.from_json_number(None))


BOXES = {"guitar": {"model": [1.0, 2.0, np.nan], "irm": [5.0, 6.0, 9.0]}, "piano": {"irm": [3.0]}}


def test_box_plot_has_one_box_per_class_and_method():
    fig = R.box_plot_figure(BOXES, "SDR (dB)", "SDR of the instrument")
    (ax,) = fig.axes
    assert (ax.get_title(), ax.get_ylabel()) == ("SDR of the instrument", "SDR (dB)")
    assert [t.get_text() for t in ax.get_xticklabels()] == ["guitar", "piano"]
    assert [t.get_text() for t in ax.get_legend().get_texts()] == ["model", "irm"]
    # Methods sit side by side around their class's tick (model left, irm right); NaN is
    # left out and a method without values in a class has no box there.
    expected = {-0.2: [1.0, 2.0], 0.2: [5.0, 6.0, 9.0], 1.2: [3.0]}
    boxes = {}
    for patch in ax.patches:
        xs, ys = patch.get_path().vertices.T
        boxes[round((xs.min() + xs.max()) / 2, 6)] = (ys.min(), ys.max(), xs.min(), xs.max())
    assert sorted(boxes) == sorted(expected)
    horizontal = {(tuple(ln.get_xdata()), ln.get_ydata()[0]) for ln in ax.lines
                  if len(ln.get_ydata()) == 2 and ln.get_ydata()[0] == ln.get_ydata()[1]}  # fmt: skip
    for x, values in expected.items():
        low, high, left, right = boxes[x]
        assert (low, high) == pytest.approx(tuple(np.percentile(values, [25, 75])))  # the box: quartiles
        assert ((left, right), np.median(values)) in horizontal  # the median line across the box


def test_report_references_only_files_that_exist(tmp_path):
    png = R.box_plot_png(BOXES)
    audio = np.zeros((1, SR // 10), dtype=np.float32)
    from sepcore.io.audio import Audio, encode_bytes

    flac = encode_bytes(Audio(audio, SR), "flac")
    (tmp_path / R.ASSETS).mkdir()
    (tmp_path / R.ASSETS / "made_by_a_task.wav").write_bytes(encode_bytes(Audio(audio, SR), "wav"))
    sections = [
        R.Section("Scores <&>", [R.Text("first\n\nsecond"),
                                 R.Table("t", ["", "SDR"], [["model", 1.234], ["irm", float("nan")]])]),
        R.Section("Plots", [R.Image("box.png", png, title="box"),
                            R.AudioGroup("listen", [R.AudioClip("a.flac", "mix", flac),
                                                    R.AudioClip("made_by_a_task.wav", "task")])]),
    ]  # fmt: skip
    page = R.write_report(str(tmp_path), sections, title="demo")
    assert R.missing_files(page) == []
    html = (tmp_path / R.REPORT_FILE).read_text()
    assert R.referenced_files(html) == [
        f"{R.ASSETS}/a.flac",
        f"{R.ASSETS}/box.png",
        f"{R.ASSETS}/made_by_a_task.wav",
    ]
    assert "Scores &lt;&amp;&gt;" in html and "<td>1.23</td>" in html and "<td>\u2013</td>" in html
    assert "<p>first</p><p>second</p>" in html and 'type="audio/wav"' in html

    (tmp_path / R.ASSETS / "box.png").unlink()
    assert R.missing_files(page) == [f"{R.ASSETS}/box.png"]
    with pytest.raises(R.ReportError, match="never_written.png"):
        R.write_report(
            str(tmp_path / "other"), [R.Section("x", [R.Image("never_written.png")])], title="x"
        )
    assert not (tmp_path / "other" / R.REPORT_FILE).exists()
    with pytest.raises(R.ReportError, match="plain"):
        R.write_report(str(tmp_path), [R.Section("x", [R.Image("../up.png", png)])], title="x")


def test_matrix_plot_shows_the_values_with_labels():
    m = np.array([[np.nan, -10.0, -41.6], [-60.0, np.nan, -3.2]])
    fig = R.matrix_figure(m, ["a", "b"], ["x", "y", "z"], "leakage matrix (dB)", "playing", "predicted")
    ax, colorbar = fig.axes
    assert (ax.get_title(), ax.get_xlabel(), ax.get_ylabel()) == ("leakage matrix (dB)", "playing", "predicted")
    assert [t.get_text() for t in ax.get_xticklabels()] == ["x", "y", "z"]
    assert [t.get_text() for t in ax.get_yticklabels()] == ["a", "b"]
    shown = ax.images[0].get_array()
    assert (shown.mask == np.isnan(m)).all() and (shown.data[~shown.mask] == m[~np.isnan(m)]).all()
    cells = {(t.get_position(), t.get_text()) for t in ax.texts}
    assert cells == {((1, 0), "-10"), ((2, 0), "-42"), ((0, 1), "-60"), ((2, 1), "-3")}  # (column, row)
    assert colorbar.get_ylabel() == "dB"


def test_spectrogram_plot_shows_each_signal_in_its_own_panel():
    tone = np.sin(2 * np.pi * 1000.0 * np.arange(SR) / SR).astype(np.float32)[None] * 0.5
    signals = {"mix": tone, "quiet": tone * 0.1, "silent": np.zeros_like(tone)}
    fig = R.spectrograms_figure(signals, SR, title="track 1")
    *panels, _colorbar = fig.axes
    assert [ax.get_title(loc="left") for ax in panels] == ["mix", "quiet", "silent"]
    assert fig.get_suptitle() == "track 1" and panels[-1].get_xlabel() == "time (s)"
    assert all(ax.get_ylabel() == "kHz" for ax in panels)
    mix, quiet, silent = (ax.images[0] for ax in panels)
    frames = 1 + SR // 512
    assert mix.get_extent() == pytest.approx([0.0, frames * 512 / SR, 0.0, SR / 2000])
    db = mix.get_array()
    assert db.shape == (1025, frames) and db.max() == 0.0  # dB re the loudest bin of all
    row = int(np.argmax(db.mean(axis=1)))
    assert row * (SR / 2) / 1024 == pytest.approx(1000.0, abs=2 * SR / 2048)  # the tone is at 1 kHz
    assert quiet.get_array().max() == pytest.approx(-20.0, abs=0.01)  # 20 dB under the mix
    np.testing.assert_allclose(silent.get_array(), -100.0, atol=1e-3)  # silence sits at the floor


def test_activation_plot_shows_reference_and_prediction_per_class():
    rng = np.random.default_rng(1)
    pred, ref = rng.random((3, 50)), (rng.random((3, 50)) > 0.5).astype(float)
    fig = R.activations_figure(pred, ref, ["a", "b", "c"], 0.02, "sequence")
    assert [ax.get_ylabel() for ax in fig.axes] == ["a", "b", "c"] and fig.get_suptitle() == "sequence"
    assert fig.axes[-1].get_xlabel() == "time (s)"
    t = np.arange(50) * 0.02
    for k, ax in enumerate(fig.axes):
        (line,) = ax.lines
        np.testing.assert_allclose(line.get_xdata(), t)
        np.testing.assert_allclose(line.get_ydata(), pred[k])
        outline = {tuple(v) for v in np.round(ax.collections[0].get_paths()[0].vertices, 9)}
        assert {tuple(v) for v in np.round(np.stack([t, ref[k]], axis=1), 9)} <= outline
    assert [t.get_text() for t in fig.axes[0].get_legend().get_texts()] == ["reference", "predicted"]


def test_job_steps_pick_classes_tracks_and_summary():
    from types import SimpleNamespace as NS

    from sepcore.evaluate import job as J
    from sepcore.evaluate.config import EvaluateKeys

    assert J.run_classes(True, "guitar", ["piano", "guitar"]) == ["guitar", "piano"]
    assert J.run_classes(False, None, ["piano"]) == list(CLASSES)
    with pytest.raises(ValueError, match="unknown class 'kazoo'"):
        EvaluateKeys(data="d", checkpoint="c", classes=["kazoo"])
    with pytest.raises(ValueError, match="split_fractions must sum to 1"):
        EvaluateKeys(data="d", checkpoint="c", split_fractions={"train": 0.5, "validation": 0.1, "test": 0.1})
    tracks = [NS(track_id=f"t{i}", classes=["guitar"] if i % 2 else ["piano"]) for i in range(6)]
    cfg = NS(report=NS(examples=2), activation=NS(plots=1))
    assert J.shown_tracks(cfg, tracks, True, "guitar") == {"t1", "t3"}
    assert J.shown_tracks(cfg, tracks, False, None) == {"t0"}
    seq = J.sequence_result([("bass", tracks[2], 22050)], {"noise": 1, "leakage": 2}, ["a.png"], 22050, 5.0)
    assert seq == {"noise": 1, "leakage": 2, "images": ["a.png"],
                   "sequence": [{"class": "bass", "track_id": "t2", "start_s": 1.0, "seconds": 5.0}]}  # fmt: skip
    doc = {"timing": {"eval_seconds_per_audio_minute": None, "audio_seconds": 0}, "separation": None,
           "tracks_selected": 2, "tracks_evaluated": 0, "failed": [{"track_id": "t0", "error": "x"}], "skipped": {}}  # fmt: skip
    summary = J.run_summary(doc, "o/metrics.json", "o/report.html", 2, 1.0)
    assert summary["counts"] == {"tracks": 2, "evaluated": 0, "failed": 1, "skipped": 0}
    assert summary["status"] == "failed" and summary["error"] == "no track could be evaluated"
    assert J.run_summary({**doc, "tracks_evaluated": 1}, "m", "r", 2, 0.4)["error"] == "1 of 2 tracks failed"
    assert "status" not in J.run_summary({**doc, "tracks_evaluated": 1}, "m", "r", 2, 0.5)
