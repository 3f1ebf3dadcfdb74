"""Evaluation of multi-stem checkpoints: one separation per track, every target class scored."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from torch import nn

from sepcore.data.classes import CLASSES
from sepcore.data.sources import slakh_tracks
from sepcore.errors import ConfigError
from sepcore.evaluate import document as D
from sepcore.evaluate import job as J
from sepcore.evaluate import scoring as S
from sepcore.evaluate import tracks as T
from sepcore.evaluate.config import METHODS, ScoringConfig
from sepcore.io.audio import Audio, write_audio

SR = 22050
STEMS = ["guitar", "bass", "other"]
FEATURE = {"name": "stft", "n_fft": 256, "hop": 128}
META = {"task": "separator", "target": None, "targets": STEMS[:-1], "stems": STEMS, "wiener_iterations": 1,
        "sample_rate": SR, "channels": 1, "frames": 16, "feature": FEATURE, "classes": list(CLASSES)}  # fmt: skip

_METADATA = """\
audio_dir: stems
stems:
  S00: {audio_rendered: true, inst_class: Guitar, is_drum: false, program_num: 25}
  S01: {audio_rendered: true, inst_class: Bass, is_drum: false, program_num: 33}
  S02: {audio_rendered: true, inst_class: Drums, is_drum: true, program_num: 128}
"""


def _stems(seconds: float, seed: int) -> list[np.ndarray]:
    """Guitar (harmonics of 330 Hz), bass (82 Hz) and drums (noise bursts), mono."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * SR)) / SR
    guitar = sum(0.1 / k * np.sin(2 * np.pi * 330 * k * t + k) for k in range(1, 6)) * (0.6 + 0.4 * np.sin(3 * t))
    bass = 0.25 * np.sin(2 * np.pi * 82.4 * t) + 0.05 * np.sin(2 * np.pi * 164.8 * t)
    drums = 0.2 * rng.standard_normal(t.size) * (np.mod(t, 0.5) < 0.08)
    return [np.asarray(x, dtype=np.float32)[None] for x in (guitar, bass, drums)]


def _slakh(root, count: int = 1, seconds: float = 3.0) -> str:
    """``count`` Slakh-layout tracks with a guitar, a bass and a drum stem."""
    for i in range(count):
        folder = root / f"Track{i + 1:05d}"
        (folder / "stems").mkdir(parents=True)
        (folder / "metadata.yaml").write_text(_METADATA)
        for k, audio in enumerate(_stems(seconds, seed=i)):
            write_audio(str(folder / "stems" / f"S{k:02d}.flac"), Audio(audio, SR), fmt="flac")
    return str(root)


class _BandSources(nn.Module):
    """Softmax masks that favour bass below ~200 Hz, guitar above it, other everywhere a little.

    Shape: ``(batch, 1, bins, frames)`` -> ``(batch, 3, 1, bins, frames)``.
    """

    sources = 3
    in_channels = 1

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        bins = x.shape[2]
        low = (torch.arange(bins, dtype=x.dtype) * SR / (2 * (bins - 1)) < 200).to(x.dtype)[:, None]
        logits = torch.stack([3 * (1 - low), 3 * low, torch.zeros_like(low)])  # (3, bins, 1)
        masks = torch.softmax(logits, dim=0).expand(-1, -1, x.shape[3])
        return masks[None, :, None].expand(x.shape[0], -1, -1, -1, -1).contiguous()


def test_a_multi_stem_model_separates_each_track_once_and_every_class_is_scored(tmp_path, monkeypatch):
    (track,) = slakh_tracks(_slakh(tmp_path, seconds=2.0))
    calls: list[dict] = []
    real = T.MaskSeparator.separate

    def spy(self, audio, *args, **kwargs):
        out = real(self, audio, *args, **kwargs)
        calls.append({"separator": self, "out": out, "mix": audio})
        return out

    monkeypatch.setattr(T.MaskSeparator, "separate", spy)
    spec = ScoringConfig(backend="fast")
    classes = J.run_classes(True, J.model_classes(META, None), ["piano", "bass"])
    assert classes == ["guitar", "bass", "piano"]
    res = T.evaluate_separation(track, META, spec, _BandSources(), classes, stems=STEMS, wiener_iterations=2)

    (call,) = calls  # one separation for the track, all stems at once
    assert call["separator"].stems == tuple(STEMS) and call["separator"].wiener_iterations == 2
    assert set(call["out"]) == set(STEMS)
    assert res["skipped"] == {"piano": "no usable 'piano' stem"}
    assert {c: list(s) for c, s in res["classes"].items()} == {"guitar": list(METHODS), "bass": list(METHODS)}
    for scores in res["classes"].values():
        for method, by_source in scores.items():
            for values in by_source.values():
                keys = ("sdr", "sir") if method == "mixture" else ("sdr", "sir", "sar")  # mixture SAR ~ inf
                assert all(math.isfinite(values[k]) for k in keys), (method, values)
    # Each class's model row is its own stem against [class, mix - class], the others untouched.
    pairs, _ = T.class_pairs(track, META, ["guitar", "bass"])
    for cls in ("guitar", "bass"):
        inst, rest = pairs[cls]
        stem = call["out"][cls]
        own = S.score_methods(inst, rest, {"model": {"instrument": stem, "rest": call["mix"] - stem}}, SR, spec)
        for src, values in own["model"].items():
            assert res["classes"][cls]["model"][src] == pytest.approx(values, abs=1e-6)
    # The band model does separate: better than the mixture, below the oracle.
    for cls in ("guitar", "bass"):
        sdr = {m: res["classes"][cls][m]["instrument"]["sdr"] for m in METHODS}
        assert sdr["mixture"] + 3 < sdr["model"] < sdr["irm"] + 1, (cls, sdr)


def test_target_restricts_a_multi_stem_run_and_wiener_defaults_to_the_checkpoints():
    assert J.model_classes(META, None) == ["guitar", "bass"]
    assert J.model_classes(META, "bass") == ["bass"]
    with pytest.raises(ConfigError, match=r"separates \['guitar', 'bass'\], not 'piano'"):
        J.model_classes(META, "piano")
    single = {"target": "guitar"}
    assert J.model_classes(single, None) == ["guitar"]
    with pytest.raises(ConfigError, match="separates 'guitar', not 'bass'"):
        J.model_classes(single, "bass")
    assert J.wiener_iterations(META, None) == 1 and J.wiener_iterations(META, 0) == 0
    assert J.wiener_iterations({**META, "wiener_iterations": None}, None) == 0
    assert J.wiener_iterations(single, None) is None
    with pytest.raises(ConfigError, match="multi-stem checkpoints only"):
        J.wiener_iterations(single, 2)


def test_the_wiener_setting_is_part_of_a_tracks_fingerprint():
    from ray_jobs.evaluate import EvaluateConfig

    cfg = EvaluateConfig(data="d", checkpoint="c", output="o")
    prints = {w: J.task_settings(cfg, "separator", META, "c", ["guitar"], w)["fingerprint"] for w in (0, 1)}
    assert prints[0] != prints[1]
    single = {**META, "stems": None, "targets": None, "target": "guitar"}
    job = J.task_settings(cfg, "separator", single, "c", ["guitar"])
    assert job["stems"] is None and job["wiener_iterations"] == 0


def test_sdr_ratio_is_model_over_irm_and_undefined_without_a_positive_oracle():
    def med(model: float, irm: float) -> dict:
        return {"model": {"instrument": {"sdr": model}}, "irm": {"instrument": {"sdr": irm}}}

    assert D.sdr_ratio(med(3.0, 12.0)) == 0.25
    assert D.sdr_ratio(med(-1.0, 4.0)) == -0.25
    assert math.isnan(D.sdr_ratio(med(3.0, -2.0))) and math.isnan(D.sdr_ratio(med(math.nan, 4.0)))
    assert math.isnan(D.sdr_ratio({"irm": {"instrument": {"sdr": 5.0}}}))


@pytest.mark.usefixtures("local_ray")
def test_the_job_scores_every_class_of_a_multi_stem_checkpoint(tmp_path):
    from ray_jobs import evaluate
    from sepcore.models import checkpoint as ckpt
    from sepcore.report import html as R

    data = _slakh(tmp_path / "data", count=2, seconds=2.0)
    torch.manual_seed(0)
    model_meta = {"name": "blstm", "config": {"n_bins": 129, "channels": 1, "hidden": 16, "layers": 1,
                                              "sources": len(STEMS)}, "log_input": True}  # fmt: skip
    folder = str(tmp_path / "ckpt")
    ckpt.save(folder, ckpt.build(model_meta).eval(), {**META, "model": model_meta})
    out = tmp_path / "eval"
    args = [f"data={data}", f"checkpoint={folder}", f"output={out}", "split=all", "classes=[drums]",
            "backend=fast", "report={examples: 1, audio_seconds: 1}"]  # fmt: skip
    assert evaluate.main(args) == 0

    doc = json.loads((out / "metrics.json").read_text())
    D.validate_metrics(doc)
    assert doc["target"] is None and doc["stems"] == STEMS and doc["wiener_iterations"] == 1
    sep = doc["separation"]
    assert list(sep) == ["guitar", "bass", "drums"]
    for cls in ("guitar", "bass"):
        med = sep[cls]["median"]
        assert sep[cls]["methods"] == list(METHODS) and len(sep[cls]["tracks"]) == 2
        for method in METHODS:
            assert med[method]["instrument"]["count"] == 2
            assert all(isinstance(med[method]["instrument"][k], float) for k in ("sdr", "sir"))
        ratio = med["model"]["instrument"]["sdr"] / med["irm"]["instrument"]["sdr"]
        assert sep[cls]["sdr_ratio"] == pytest.approx(ratio, abs=1e-3)
    assert sep["drums"]["methods"] == ["hpss", "irm", "ibm", "mixture"] and sep["drums"]["sdr_ratio"] is None
    assert doc["baselines"] == {"hpss": {"classes": ["drums"], "margin": 1.0, "kernel_size": 31, "n_fft": 256,
                                         "hop": 128}}  # fmt: skip
    summary = json.loads((out / "summary.json").read_text())
    assert summary["status"] == "ok" and "bass/model/instrument" in summary["figures"]
    html = (out / R.REPORT_FILE).read_text()
    assert "Classes of the multi-stem model" in html and R.missing_files(str(out / R.REPORT_FILE)) == []

    assert evaluate.main([*args, "target=piano"]) == 2  # not one of the checkpoint's targets
