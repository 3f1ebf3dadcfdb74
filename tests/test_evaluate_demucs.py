"""Demucs models in the evaluate job: compared beside a checkpoint, or as the checkpoint."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from sepcore.data.classes import CLASSES
from sepcore.evaluate import compare as EC
from sepcore.evaluate import document as D
from sepcore.evaluate import job as J
from tests.support.demucs import SOURCES, SOURCES_6, save_tiny_htdemucs
from tests.support.slakh import write_slakh_track

SR = 22050  # the project checkpoint's rate; the stems are written at 44.1 kHz
FILE_SR = 44100
STEMS = ["guitar", "bass", "other"]
META = {"task": "separator", "target": None, "targets": STEMS[:-1], "stems": STEMS, "wiener_iterations": 0,
        "sample_rate": SR, "channels": 1, "frames": 16, "feature": {"name": "stft", "n_fft": 256, "hop": 128},
        "classes": list(CLASSES)}  # fmt: skip
OTHER_6 = "demucs_other-bass-drums-guitar-piano-vocals"
OTHER_4 = "demucs_other-bass-drums-vocals"

def _slakh(root, count: int = 2, seconds: float = 2.0) -> str:
    """``count`` Slakh-layout tracks, mono stems at 44.1 kHz: guitar, bass, drums, piano, organ (other)."""
    t = np.arange(int(seconds * FILE_SR)) / FILE_SR
    for i in range(count):
        rng = np.random.default_rng(i)
        stems = [sum(0.1 / k * np.sin(2 * np.pi * 330 * k * t + k) for k in range(1, 6)),
                 0.25 * np.sin(2 * np.pi * 82.4 * t), 0.2 * rng.standard_normal(t.size) * (np.mod(t, 0.5) < 0.08),
                 0.15 * np.sin(2 * np.pi * 523.3 * t) * np.exp(-np.mod(t, 0.25) * 8),
                 0.08 * np.sign(np.sin(2 * np.pi * 196 * t))]  # fmt: skip
        classes = zip(("Guitar", "Bass", "Drums", "Piano", "Organ"), (25, 33, 128, 0, 17), stems, strict=True)
        write_slakh_track(root / f"Track{i + 1:05d}", list(classes), FILE_SR)
    return str(root)


def _checkpoint(folder) -> str:
    """A small untrained multi-stem BLSTM checkpoint (guitar, bass, other) at 22.05 kHz mono."""
    from sepcore.models import checkpoint as ckpt

    torch.manual_seed(0)
    model_meta = {"name": "blstm", "config": {"n_bins": 129, "channels": 1, "hidden": 16, "layers": 1,
                                              "sources": len(STEMS)}, "log_input": True}  # fmt: skip
    ckpt.save(str(folder), ckpt.build(model_meta).eval(), {**META, "model": model_meta})
    return str(folder)


class _Fake:
    """A separator at 44.1 kHz stereo whose drums are a 1 kHz sine, left at 1, right at 0.5."""

    sample_rate = FILE_SR
    stems = ("drums", "other")
    residual = None

    def separate(self, audio: np.ndarray, block_seconds: float = 60.0) -> dict[str, np.ndarray]:
        assert audio.shape[0] == 2
        sine = np.sin(2 * np.pi * 1000 * np.arange(audio.shape[1]) / FILE_SR)
        drums = np.stack([sine, 0.5 * sine]).astype(np.float32)
        return {"drums": drums, "other": audio - drums}


def test_a_rows_estimate_is_resampled_downmixed_and_fitted_to_the_references():
    meta = {"sample_rate": FILE_SR, "channels": 2, "stems": ["drums", "other"], "model_sha256": "x"}
    row = EC.RowSpec("fake", "fake.th", "demucs", meta, EC.stem_classes("demucs", meta), {"overlap": 0.25})
    assert dict(row.classes) == {"drums": "drums", "demucs_other-drums": "other"}
    n = SR  # one second at the evaluation's rate
    mix_in = np.zeros((2, FILE_SR + 7), dtype=np.float32)  # a length that does not halve exactly
    mix = np.full((1, n), 0.1, dtype=np.float32)
    est = EC.row_estimates(_Fake(), row, mix_in, mix, SR, ["drums", "piano"])
    assert list(est) == ["drums"]
    inst, rest = est["drums"]["instrument"], est["drums"]["rest"]
    assert inst.shape == rest.shape == (1, n) and inst.dtype == np.float32
    want = 0.75 * np.sin(2 * np.pi * 1000 * np.arange(n) / SR)  # the channel mean, at 22.05 kHz
    assert np.max(np.abs(inst[0, 200:-200] - want[200:-200])) < 1e-3
    np.testing.assert_allclose(rest, mix - inst, atol=1e-7)
    # A mono stem is laid out as the references' stereo; a short one is zero-padded.
    mono = np.ones((1, 10), dtype=np.float32)
    np.testing.assert_array_equal(EC.conform(mono, SR, SR, 2, 12), np.pad(np.ones((2, 10)), ((0, 0), (0, 2))))


def test_a_separator_gets_the_mixture_of_the_same_stems_at_its_own_rate_and_channels(tmp_path):
    from sepcore.data.sources import slakh_tracks
    from sepcore.evaluate import tracks as T
    from sepcore.io.audio import read_audio

    (track,) = slakh_tracks(_slakh(tmp_path, count=1, seconds=0.5))
    pair, pairs, _ = T.reference_pairs(track, META, ["guitar", OTHER_6])
    assert pair.mix.shape == (1, SR // 2)
    inst, rest = pairs[OTHER_6]  # the organ, against everything else
    organ = read_audio(str(tmp_path / "Track00001" / "stems" / "S04.flac"))
    assert np.abs(inst).max() > 0.07 and np.allclose(inst + rest, pair.mix, atol=1e-6)
    mix = EC.mixture_at(track, ["S04"], FILE_SR, 2)  # full band, stereo, without the stem left out
    files = [read_audio(str(tmp_path / "Track00001" / "stems" / f"S{k:02d}.flac")).samples for k in range(4)]
    assert mix.shape == (2, FILE_SR // 2) and organ.sample_rate == FILE_SR
    np.testing.assert_allclose(mix, np.repeat(sum(files), 2, axis=0), atol=1e-6)


def test_a_checkpoint_compared_with_itself_gets_the_model_rows_scores(tmp_path):
    from sepcore.data.sources import slakh_tracks
    from sepcore.evaluate import tracks as T
    from sepcore.evaluate.config import ScoringConfig
    from sepcore.models import checkpoint as ckpt

    (track,) = slakh_tracks(_slakh(tmp_path / "data", count=1, seconds=1.0))
    folder = _checkpoint(tmp_path / "ckpt")
    row = EC.describe_row("again", folder, {})
    assert row.kind == "mask" and dict(row.classes) == {"guitar": "guitar", "bass": "bass"}
    model = ckpt.load_model(folder)[0]
    res = T.evaluate_separation(track, META, ScoringConfig(backend="fast"), model, ["guitar", "bass", "piano"],
                                stems=STEMS, rows=[(row, EC.build_separator(row))])  # fmt: skip
    for cls in ("guitar", "bass"):
        scores = res["classes"][cls]
        assert list(scores) == ["model", "again", "irm", "ibm", "mixture"]
        for src in ("instrument", "rest"):
            assert scores["again"][src] == pytest.approx(scores["model"][src], abs=1e-4)
    assert list(res["classes"]["piano"]) == ["irm", "ibm", "mixture"]


def test_demucs_classes_and_their_other_reference():
    assert EC.stem_classes("demucs", {"stems": list(SOURCES)}) == {
        "drums": "drums", "bass": "bass", "vocals": "vocals", OTHER_4: "other"}  # fmt: skip
    assert EC.key_classes(OTHER_4) == ("piano", "guitar", "strings", "percussion", "other")
    assert EC.key_classes(OTHER_6) == ("strings", "percussion", "other")
    assert EC.key_classes("bass") == ("bass",)
    assert EC.stem_classes("mask", META) == {"guitar": "guitar", "bass": "bass"}
    assert EC.stem_classes("mask", {"target": "piano"}) == {"piano": "instrument"}


def test_a_demucs_checkpoints_classes_target_and_evaluation_layout():
    from ray_jobs.evaluate import EvaluateConfig
    from sepcore.errors import ConfigError

    meta = {"sample_rate": FILE_SR, "channels": 2, "stems": list(SOURCES), "model_sha256": "x"}
    row = EC.RowSpec("model", "x.th", "demucs", meta, EC.stem_classes("demucs", meta), {})

    def cfg(**keys):
        return EvaluateConfig(data="d", checkpoint="x.th", output="o", **keys)

    assert J.main_classes(cfg(), {}, row) == (["drums", "bass", "vocals", OTHER_4], None)
    assert J.main_classes(cfg(target="bass"), {}, row) == (["bass"], None)
    with pytest.raises(ConfigError, match="separates \\['drums', 'bass', 'vocals'\\], not 'piano'"):
        J.main_classes(cfg(target="piano"), {}, row)
    with pytest.raises(ConfigError, match="wiener_iterations"):
        J.main_classes(cfg(wiener_iterations=1), {}, row)
    assert J.compared_classes([row], None, ["bass", "guitar"]) == ["drums", "vocals", OTHER_4]
    assert J.compared_classes([row], "guitar", ["guitar"]) == []
    ev = EC.evaluation_meta(cfg(), meta)
    assert (ev["sample_rate"], ev["channels"], ev["feature"]) == (FILE_SR, 2, {"name": "stft", "n_fft": 4096, "hop": 1024})
    ev = EC.evaluation_meta(cfg(sample_rate=SR, channels=1, n_fft=2048), meta)
    assert (ev["sample_rate"], ev["channels"], ev["feature"]["hop"]) == (SR, 1, 512)
    EC.refuse_layout_keys(cfg(sample_rate=SR), META)  # the checkpoint's own: fine
    with pytest.raises(ConfigError, match="sample_rate"):
        EC.refuse_layout_keys(cfg(sample_rate=FILE_SR), META)


def test_compared_weights_and_options_are_part_of_a_tracks_fingerprint():
    from ray_jobs.evaluate import EvaluateConfig

    cfg = EvaluateConfig(data="d", checkpoint="c", output="o")
    before = J.task_settings(cfg, "separator", META, "c", ["guitar"], 0)["fingerprint"]
    assert J.task_settings(cfg, "separator", META, "c", ["guitar"], 0, [])["fingerprint"] == before

    def row(sha: str, overlap: float) -> EC.RowSpec:
        meta = {"sample_rate": FILE_SR, "channels": 2, "stems": list(SOURCES), "model_sha256": sha}
        return EC.RowSpec("ht", "x.th", "demucs", meta, EC.stem_classes("demucs", meta), {"overlap": overlap})

    prints = {J.task_settings(cfg, "separator", META, "c", ["guitar"], 0, [r])["fingerprint"]
              for r in (row("a", 0.25), row("b", 0.25), row("a", 0.5))}  # fmt: skip
    assert len(prints) == 3 and before not in prints


def test_compare_names_must_not_clash_with_the_built_in_rows():
    from ray_jobs.evaluate import EvaluateConfig
    from sepcore.config import load_config
    from sepcore.errors import ConfigError

    with pytest.raises(ConfigError, match="compare.*built-in row"):
        load_config(EvaluateConfig, None, ["data=d", "checkpoint=c", "output=o", "compare={irm: demucs:htdemucs}"])


@pytest.mark.usefixtures("local_ray")
def test_the_job_scores_demucs_beside_a_checkpoint_and_as_the_checkpoint(tmp_path):
    from ray_jobs import evaluate
    from sepcore.report import html as R

    data = _slakh(tmp_path / "data")
    six = save_tiny_htdemucs(str(tmp_path / "ht6.th"), SOURCES_6, seed=1)
    folder = _checkpoint(tmp_path / "ckpt")
    out = tmp_path / "eval"
    args = [f"data={data}", f"checkpoint={folder}", f"output={out}", "split=all", "backend=fast",
            f"compare={{htdemucs_tiny: {six}}}", "report={examples: 1, audio_seconds: 1}"]  # fmt: skip
    assert evaluate.main(args) == 0

    doc = json.loads((out / "metrics.json").read_text())
    D.validate_metrics(doc)
    assert doc["sample_rate"] == SR and doc["channels"] == 1
    own, ht = doc["separators"]
    assert own["name"] == "model" and own["kind"] == "mask" and own["classes"] == {"guitar": "guitar", "bass": "bass"}
    assert ht["name"] == "htdemucs_tiny" and ht["kind"] == "demucs" and ht["sample_rate"] == FILE_SR
    assert ht["channels"] == 2 and len(ht["model_sha256"]) == 64 and ht["demucs"]["overlap"] == 0.25
    sep = doc["separation"]
    assert list(sep) == ["guitar", "bass", "drums", "piano", OTHER_6]  # vocals: no stem
    assert doc["skipped"] == {f"slakh:Track0000{i}/vocals": "no usable 'vocals' stem" for i in (1, 2)}
    for cls in ("guitar", "bass"):
        assert sep[cls]["methods"] == ["model", "htdemucs_tiny", "irm", "ibm", "mixture"]
    for cls in ("drums", "piano", OTHER_6):
        hpss = ["hpss"] if cls == "drums" else []  # the drums baseline, on by default
        assert sep[cls]["methods"] == ["htdemucs_tiny", *hpss, "irm", "ibm", "mixture"]
        med = sep[cls]["median"]["htdemucs_tiny"]["instrument"]
        assert med["count"] == 2 and math.isfinite(med["sdr"]), (cls, med)
    summary = json.loads((out / "summary.json").read_text())
    assert summary["status"] == "ok" and "drums/htdemucs_tiny/instrument" in summary["figures"]
    html = (out / R.REPORT_FILE).read_text()
    assert "Row htdemucs_tiny: the Demucs model" in html and "resampled from 44100 Hz to 22050 Hz" in html
    assert "downmixed from 2 channels to mono" in html and R.missing_files(str(out / R.REPORT_FILE)) == []

    # A Demucs model as the checkpoint: its rows are ``model``; the rate and STFT set here.
    four = save_tiny_htdemucs(str(tmp_path / "ht4.th"), SOURCES, seed=2)
    out4 = tmp_path / "eval4"
    args4 = [f"data={data}", f"checkpoint={four}", f"output={out4}", "split=all", "backend=fast", "tracks=1",
             "sample_rate=22050", "channels=1", "n_fft=1024", "report={examples: 1, audio_seconds: 1}"]  # fmt: skip
    assert evaluate.main(args4) == 0
    doc4 = json.loads((out4 / "metrics.json").read_text())
    D.validate_metrics(doc4)
    assert doc4["stems"] == list(SOURCES) and doc4["sample_rate"] == SR and doc4["channels"] == 1
    assert doc4["feature"] == {"name": "stft", "n_fft": 1024, "hop": 256}
    ((main),) = doc4["separators"]
    assert main["name"] == "model" and main["kind"] == "demucs" and main["sample_rate"] == FILE_SR
    assert set(doc4["separation"]) == {"drums", "bass", OTHER_4}
    assert doc4["baselines"]["hpss"]["n_fft"] == 1024 and doc4["baselines"]["hpss"]["hop"] == 256
    for cls, sec in doc4["separation"].items():
        assert sec["methods"] == ["model", *(["hpss"] if cls == "drums" else []), "irm", "ibm", "mixture"]
        assert math.isfinite(sec["median"]["model"]["instrument"]["sdr"])
    assert "Demucs model: stems drums, bass, other, vocals" in (out4 / R.REPORT_FILE).read_text()
    # The rate of a project checkpoint is its own.
    assert evaluate.main([*args[:5], "sample_rate=44100"]) == 2
