"""The binary-mask DNN (seed 003): windows, the averaged mask, the IBM objective, the threshold
α in the one apply, and the evaluate job's α sweep."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from sepcore.data.classes import CLASSES
from sepcore.errors import ConfigError
from sepcore.evaluate import document as D
from sepcore.evaluate import job as J
from sepcore.evaluate.config import alpha_values
from sepcore.io.audio import Audio, write_audio
from sepcore.models import build_model
from sepcore.models import checkpoint as ckpt
from sepcore.models.mask_dnn import MaskDNN, ideal_binary_mask
from sepcore.separate.apply import apply_mask, binary_threshold, separate, soft_mask, threshold_mask

SR = 22050
FEATURE = {"name": "stft", "n_fft": 256, "hop": 128}
SMALL = dict(n_bins=33, window=5, max_bin=24, hidden=16, layers=2)


def _model(**kw) -> MaskDNN:
    torch.manual_seed(0)
    model = build_model("mask_dnn", **{**SMALL, **kw})
    assert isinstance(model, MaskDNN)
    return model.eval()


@torch.no_grad()
def test_shapes_range_and_the_bins_above_max_bin():
    model = _model()
    x = torch.rand(2, 1, 33, 16) * 3
    mask = model(x)
    assert mask.shape == x.shape and 0.0 <= float(mask.min()) and float(mask.max()) <= 1.0
    assert torch.all(mask[:, :, 24:] == 0) and float(mask[:, :, :24].min()) > 0
    assert model(x, training_output=True).shape == (2, 16 - 5 + 1, 1, 24, 5)
    assert model(torch.rand(1, 1, 33, 3)).shape == (1, 1, 33, 3)  # shorter than a window: padded
    stereo = _model(channels=2)
    assert stereo(torch.rand(1, 2, 33, 8)).shape == (1, 2, 33, 8)
    with pytest.raises(ValueError, match="bins=33"):
        model(torch.rand(1, 1, 32, 16))
    with pytest.raises(ValueError, match="sources >= 1"):
        MaskDNN(33, sources=0)
    assert model(x * 100).allclose(mask, atol=1e-5)  # the input scaling: level-independent


@torch.no_grad()
def test_the_mask_averages_the_overlapping_window_predictions():
    model = _model()
    x = torch.rand(1, 1, 33, 12)
    probs = torch.sigmoid(model(x, training_output=True))[0]  # (windows, channels, max_bin, window)
    expected = torch.zeros(1, 24, 12)
    for t in range(12):
        covering = [probs[w, :, :, t - w] for w in range(probs.shape[0]) if 0 <= t - w < model.window]
        expected[..., t] = torch.stack(covering).mean(dim=0)
    assert torch.allclose(model(x)[0, :, :24], expected, atol=1e-6)


def test_the_ideal_binary_mask_and_the_training_loss():
    mix = torch.tensor([1.0, 1.0, 2.0, 0.0, 3.0])
    target = torch.tensor([0.6, 0.5, 0.4, 0.0, 3.0])
    assert ideal_binary_mask(mix, target).tolist() == [1.0, 0.0, 0.0, 0.0, 1.0]  # |S| > |X| - |S|
    model = _model()
    mix4, target4 = torch.rand(2, 1, 33, 10), torch.rand(2, 1, 33, 10) * 0.6
    labels = model.windows(ideal_binary_mask(mix4[:, :, :24], target4[:, :, :24]))
    with torch.no_grad():
        out = model(mix4, training_output=True)
        loss = float(model.training_loss(out, mix4, target4, "mse"))  # kind is ignored
        assert loss == pytest.approx(float(F.binary_cross_entropy_with_logits(out, labels)), rel=1e-6)
    assert float(model.training_loss(40 * (2 * labels - 1), mix4, target4)) < 1e-6  # confident and right

    from sepcore.train.loop import batch_loss  # the train loop's hook calls training_loss

    model.train()
    value = batch_loss("separator", model, {"mix": mix4, "target": target4}, "l1")
    value.backward()
    assert torch.isfinite(value) and model.output.weight.grad is not None


def test_a_higher_alpha_never_adds_target_bins_and_the_stems_sum_to_the_mixture():
    rng = np.random.default_rng(0)
    audio = rng.standard_normal((1, SR // 2)).astype(np.float32) * 0.1
    model = _model(n_bins=129, max_bin=100)
    stft, spec, soft = soft_mask(model, audio, SR, 256, 128, 16)
    assert soft.shape == (1, 129, spec.shape[-1]) and soft.min() >= 0 and soft.max() <= 1
    masks = [threshold_mask(soft, a) for a in (0.0, 0.3, 0.5, 0.7, 1.0)]
    for lower, higher in zip(masks[:-1], masks[1:], strict=True):
        assert np.all(higher <= lower)  # higher alpha: a subset of the target bins
    assert masks[-1].sum() == 0
    for mask in masks:
        stems = apply_mask(stft, spec, mask, audio.shape[1])
        assert np.allclose(stems["instrument"] + stems["rest"], audio, atol=1e-5)
    for alpha in (0.2, 0.6):
        model.alpha = alpha  # the one apply thresholds at the model's own alpha
        stems = separate(model, audio, SR, 256, 128, 16)
        expected = apply_mask(stft, spec, threshold_mask(soft, alpha), audio.shape[1])
        assert np.allclose(stems["instrument"], expected["instrument"], atol=1e-6)
        assert np.allclose(stems["instrument"] + stems["rest"], audio, atol=1e-5)
    assert binary_threshold(model) == 0.6 and binary_threshold(ckpt.LogMagnitude(model)) == 0.6
    assert binary_threshold(build_model("blstm", n_bins=33, hidden=8, layers=1)) is None


def test_alpha_ranges_and_models_without_a_threshold_are_refused():
    from ray_jobs.evaluate import EvaluateConfig
    from sepcore.config import load_config

    assert alpha_values({"start": 0.05, "stop": 0.95, "step": 0.05})[-1] == 0.95
    assert len(alpha_values({"start": 0.05, "stop": 0.95, "step": 0.05})) == 19
    cfg = EvaluateConfig(data="d", checkpoint="c", output="o", alpha={"start": 0.1, "stop": 0.5, "step": 0.2})
    assert cfg.alpha == [0.1, 0.3, 0.5]
    assert EvaluateConfig(data="d", checkpoint="c", output="o", alpha=[0.9, 0.1, 0.1]).alpha == [0.1, 0.9]
    with pytest.raises(ConfigError, match="alpha"):
        load_config(EvaluateConfig, None, ["data=d", "checkpoint=c", "output=o", "alpha=[1.5]"])
    meta = {"task": "separator", "target": "guitar", "sample_rate": SR, "model": {"name": "blstm"}}
    with pytest.raises(ConfigError, match="no confidence threshold"):
        J.check_alpha(cfg, "separator", meta, None)
    assert J.check_alpha(cfg, "separator", {**meta, "model_alpha": 0.4}, None) == 0.4
    plain = EvaluateConfig(data="d", checkpoint="c", output="o")
    assert J.check_alpha(plain, "separator", meta, None) is None
    prints = {str(c.alpha): J.task_settings(c, "separator", meta, "c", ["guitar"])["fingerprint"] for c in (cfg, plain)}
    assert len(set(prints.values())) == 2  # alpha is part of a track's fingerprint


_METADATA = """\
audio_dir: stems
stems:
  S00: {audio_rendered: true, inst_class: Guitar, is_drum: false, program_num: 25}
  S01: {audio_rendered: true, inst_class: Bass, is_drum: false, program_num: 33}
"""


def _slakh(root, count: int = 2, seconds: float = 2.0) -> str:
    """``count`` Slakh-layout tracks with a guitar (harmonics of 330 Hz) and a bass stem, mono."""
    t = np.arange(int(seconds * SR)) / SR
    for i in range(count):
        folder = root / f"Track{i + 1:05d}"
        (folder / "stems").mkdir(parents=True)
        (folder / "metadata.yaml").write_text(_METADATA)
        guitar = sum(0.1 / k * np.sin(2 * np.pi * 330 * k * t + k + i) for k in range(1, 6))
        bass = 0.25 * np.sin(2 * np.pi * 82.4 * t) + 0.05 * np.sin(2 * np.pi * (164.8 + i) * t)
        for k, audio in enumerate((guitar, bass)):
            write_audio(str(folder / "stems" / f"S{k:02d}.flac"), Audio(np.float32(audio)[None], SR), fmt="flac")
    return str(root)


def _checkpoint(folder, name: str = "mask_dnn") -> str:
    torch.manual_seed(0)
    config = {"n_bins": 129, "channels": 1, "window": 5, "max_bin": 100, "hidden": 16, "layers": 1, "alpha": 0.5}
    if name != "mask_dnn":
        config = {"n_bins": 129, "channels": 1, "hidden": 16, "layers": 1}
    model_meta = {"name": name, "config": config, "log_input": False}
    meta = {"task": "separator", "target": "guitar", "sample_rate": SR, "channels": 1, "frames": 16,
            "feature": FEATURE, "classes": list(CLASSES), "model": model_meta}  # fmt: skip
    ckpt.save(str(folder), ckpt.build(model_meta).eval(), meta)
    return str(folder)


@pytest.mark.usefixtures("local_ray")
def test_the_alpha_sweep_writes_its_scores_and_plots(tmp_path):
    from ray_jobs import evaluate
    from sepcore.report import html as R

    data = _slakh(tmp_path / "data")
    out = tmp_path / "eval"
    args = [f"data={data}", f"checkpoint={_checkpoint(tmp_path / 'ckpt')}", f"output={out}", "split=all",
            "backend=fast", "alpha=[0.1, 0.5, 0.9]", "report={examples: 0}"]  # fmt: skip
    assert evaluate.main(args) == 0

    doc = json.loads((out / "metrics.json").read_text())
    D.validate_metrics(doc)
    sweep = doc["alpha"]
    assert sweep["values"] == [0.1, 0.5, 0.9] and sweep["model_alpha"] == 0.5 and doc["model_alpha"] == 0.5
    by_alpha = sweep["per_class"]["guitar"]
    assert list(by_alpha) == ["0.1", "0.5", "0.9"]
    assert by_alpha["0.1"]["instrument"]["count"] == by_alpha["0.5"]["rest"]["count"] == 2
    assert set(by_alpha["0.9"]["rest"]) == {"sdr", "sir", "sar", "count", "sdr_mean", "sir_mean", "sar_mean"}
    model = doc["separation"]["guitar"]["median"]["model"]
    for src in ("instrument", "rest"):  # the model row is the sweep at the model's own alpha
        assert model[src]["sdr"] == pytest.approx(by_alpha["0.5"][src]["sdr"], abs=1e-3)
    assets = out / R.ASSETS
    assert (assets / "alpha_guitar.png").stat().st_size > 0 and (assets / "alpha_sar_vs_sir_guitar.png").exists()
    assert R.missing_files(str(out / R.REPORT_FILE)) == []
    summary = json.loads((out / "summary.json").read_text())
    assert summary["status"] == "ok" and "guitar/alpha=0.9/instrument" in summary["figures"]

    blstm = _checkpoint(tmp_path / "blstm", "blstm")
    assert evaluate.main([*args[:1], f"checkpoint={blstm}", f"output={tmp_path / 'e2'}", *args[3:]]) == 2


# ------------------------------------------------------------------------- several sources

STEMS = ["guitar", "bass", "other"]


@torch.no_grad()
def test_several_sources_shapes_the_bins_above_max_bin_and_the_parameters():
    model = _model(sources=3)
    one = _model()
    assert [n for n, _ in model.named_parameters()] == [n for n, _ in one.named_parameters()]  # checkpoints load
    assert model.output.out_features == 3 * one.output.out_features == 3 * 24 * 5
    x = torch.rand(2, 1, 33, 16) * 3
    masks = model(x)
    assert masks.shape == (2, 3, 1, 33, 16) and 0.0 <= float(masks.min()) and float(masks.max()) <= 1.0
    assert torch.all(masks[:, :2, :, 24:] == 0) and torch.all(masks[:, 2, :, 24:] == 1)  # other keeps the rest
    assert float(masks[:, :, :, :24].min()) > 0
    assert model(x, training_output=True).shape == (2, 16 - 5 + 1, 3, 1, 24, 5)
    assert model(torch.rand(1, 1, 33, 3)).shape == (1, 3, 1, 33, 3)
    assert _model(sources=3, channels=2)(torch.rand(1, 2, 33, 8)).shape == (1, 3, 2, 33, 8)
    probs = torch.sigmoid(model(x, training_output=True))[1]  # each source averages its own windows
    for k in range(3):
        one.output.weight.copy_(model.output.weight.view(3, -1, 16)[k])
        one.output.bias.copy_(model.output.bias.view(3, -1)[k])
        one.hidden_layers.load_state_dict(model.hidden_layers.state_dict())
        assert torch.allclose(one(x)[1, :, :24], masks[1, k, :, :24], atol=1e-6)
        assert torch.allclose(probs[:, k], torch.sigmoid(one(x, training_output=True))[1], atol=1e-6)


def test_the_multi_source_loss_is_the_bce_against_each_sources_ibm():
    mix = torch.tensor([1.0, 1.0, 0.0])
    targets = torch.tensor([[0.6, 0.4, 0.0], [0.3, 0.4, 0.0], [0.1, 0.2, 0.0]])  # three sources, three bins
    by_hand = [[1.0, 0.0, 0.0], [0.0, 0.0, 0.0], [0.0, 0.0, 0.0]]  # |S_k| > |X| - |S_k|
    assert ideal_binary_mask(mix.expand(3, -1), targets).tolist() == by_hand
    model = _model(sources=3)
    torch.manual_seed(1)
    targets5 = torch.rand(2, 3, 1, 33, 10)
    mix4 = targets5.sum(dim=1)
    labels = torch.zeros(2, 10 - 5 + 1, 3, 1, 24, 5)
    for b, w, k, f, i in np.ndindex(2, 6, 3, 24, 5):  # window w, offset i: frame w + i
        labels[b, w, k, 0, f, i] = float(targets5[b, k, 0, f, w + i] > mix4[b, 0, f, w + i] - targets5[b, k, 0, f, w + i])
    with torch.no_grad():
        out = model(mix4, training_output=True)
        loss = float(model.training_loss(out, mix4, targets5, "mse"))
    assert loss == pytest.approx(float(F.binary_cross_entropy_with_logits(out, labels)), rel=1e-6)
    assert float(model.training_loss(40 * (2 * labels - 1), mix4, targets5)) < 1e-6
    with pytest.raises(ValueError, match="sources=3"):
        model.training_loss(out, mix4, targets5[:, :2])

    from sepcore.train.loop import batch_loss, columns_for

    model.train()
    value = batch_loss("separator", model, {"mix": mix4, "targets": targets5}, "l1", columns_for("separator", True))
    value.backward()
    assert torch.isfinite(value) and model.output.weight.grad is not None


def test_thresholded_sources_are_monotonic_in_alpha_and_their_stems_add_up_to_the_mixture():
    from sepcore.separate.apply import mask_stems
    from sepcore.separate.wiener import consistent_masks

    # A bin no source claims goes to the last (other), one that several claim to those in equal parts.
    probs = np.array([[0.2, 0.9, 0.8], [0.1, 0.7, 0.3], [0.4, 0.2, 0.1]], dtype=np.float32)[:, None, :, None]
    claims = threshold_mask(probs, 0.5)
    assert np.array_equal(claims[:, 0, :, 0].T, [[0, 0, 1], [1, 1, 0], [1, 0, 0]])
    assert np.allclose(consistent_masks(claims)[:, 0, :, 0].T, [[0, 0, 1], [0.5, 0.5, 0.0], [1.0, 0.0, 0.0]])

    rng = np.random.default_rng(0)
    audio = rng.standard_normal((1, SR // 4)).astype(np.float32) * 0.1
    model = _model(n_bins=129, max_bin=100, sources=3)
    stft, spec, soft = soft_mask(model, audio, SR, 256, 128, 16)
    assert soft.shape == (3, 1, 129, spec.shape[-1]) and soft.min() >= 0 and soft.max() <= 1
    masks = [threshold_mask(soft, a) for a in (0.0, 0.3, 0.5, 0.7, 1.0)]
    for lower, higher in zip(masks[:-1], masks[1:], strict=True):
        assert np.all(higher[:2] <= lower[:2])  # per target: a higher alpha never adds a bin
    assert masks[-1][:2].sum() == 0 and np.all(masks[-1][2] == 1)  # alpha 1: all is other
    assert np.all(masks[0][2, :, 100:] == 1) and np.all(masks[0][:2, :, 100:] == 0)
    assert binary_threshold(model) == 0.5
    for alpha, wiener in ((0.5, 0), (0.45, 1)):
        model.alpha = alpha
        stems = separate(model, audio, SR, 256, 128, 16, stems=STEMS, wiener_iterations=wiener)
        assert list(stems) == STEMS
        assert np.allclose(sum(stems.values()), audio, atol=1e-5)
        expected = mask_stems(stft, spec, threshold_mask(soft, alpha), audio.shape[1], STEMS, wiener)
        for name in STEMS:
            assert np.allclose(stems[name], expected[name], atol=1e-5)


def test_the_alpha_sweep_of_a_multi_stem_checkpoint_scores_every_class(tmp_path, monkeypatch):
    from ray_jobs.evaluate import EvaluateConfig
    from sepcore.data.sources import slakh_tracks
    from sepcore.evaluate import report as ER
    from sepcore.evaluate import tracks as T
    from sepcore.evaluate.config import ScoringConfig
    from sepcore.report import html as R

    torch.manual_seed(0)
    config = {"n_bins": 129, "channels": 1, "window": 5, "max_bin": 100, "hidden": 16, "layers": 1, "alpha": 0.5,
              "sources": len(STEMS)}  # fmt: skip
    model_meta = {"name": "mask_dnn", "config": config, "log_input": False}
    meta = {"task": "separator", "target": None, "targets": STEMS[:-1], "stems": STEMS, "wiener_iterations": 0,
            "sample_rate": SR, "channels": 1, "frames": 16, "feature": FEATURE, "classes": list(CLASSES),
            "model": model_meta}  # fmt: skip
    folder = str(tmp_path / "ckpt")
    ckpt.save(folder, ckpt.build(model_meta).eval(), meta)
    meta = T.load_checked(folder)
    assert meta["model_alpha"] == 0.5
    cfg = EvaluateConfig(data="d", checkpoint=folder, output="o", alpha=[0.5, 0.7])
    assert J.check_alpha(cfg, "separator", meta, None) == 0.5  # a multi-stem binary-mask model: swept
    model = ckpt.load_model(folder)[0]
    (track,) = slakh_tracks(_slakh(tmp_path / "data", count=1, seconds=1.0))
    spec = ScoringConfig(backend="fast")
    monkeypatch.setattr(T, "ALPHA_GROUP", 1)  # one alpha at a time
    res = T.evaluate_separation(track, meta, spec, model, ["guitar", "bass"], stems=STEMS, alphas=cfg.alpha)
    assert list(res["alpha"]) == ["guitar", "bass"]
    for cls in ("guitar", "bass"):
        assert list(res["alpha"][cls]) == ["0.5", "0.7"]
        for src in ("instrument", "rest"):  # the model row is the sweep at the model's own alpha
            assert res["classes"][cls]["model"][src] == pytest.approx(res["alpha"][cls]["0.5"][src], abs=1e-6)
    res.pop("signals")
    head = J.run_head(cfg, "separator", folder, None, meta, 1, 0)
    doc = D.to_json(D.metrics_document(head, cfg.described(), ["guitar", "bass"], [res], None, [], 1.0))
    D.validate_metrics(doc)
    assert list(doc["alpha"]["per_class"]) == ["guitar", "bass"] and doc["model_alpha"] == 0.5
    assert D.summary_entries(doc)["figures"].keys() >= {"guitar/alpha=0.7/instrument", "bass/alpha=0.5/instrument"}
    images = [b.name for sec in ER._alpha_sections(doc) for b in sec.items if isinstance(b, R.Image)]
    assert images == ["alpha_guitar.png", "alpha_sar_vs_sir_guitar.png", "alpha_bass.png", "alpha_sar_vs_sir_bass.png"]
