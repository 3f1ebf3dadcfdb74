"""Several stems at once: separate(), its blocks, and the separate job on a multi-stem checkpoint."""

from __future__ import annotations

import io

import numpy as np
import pyarrow.parquet as pq
import pytest
import soundfile as sf
import torch

from sepcore.prepare.features import Stft
from sepcore.separate import apply
from sepcore.separate.apply import (
    FixedMaskModel,
    FixedSourcesModel,
    predict_mask,
    separate,
    separate_blocks,
)
from sepcore.separate.wiener import mixture_consistency, wiener

SR, N_FFT, HOP, FRAMES = 8000, 256, 64, 16
STEMS = ("bass", "drums", "other")


def noise(channels: int, seconds: float, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return (0.5 * rng.uniform(-1, 1, (channels, int(seconds * SR)))).astype(np.float32)


def relative_error(parts: dict[str, np.ndarray], mix: np.ndarray) -> float:
    return float(np.linalg.norm(sum(parts.values()) - mix) / np.linalg.norm(mix))


def test_predict_mask_keeps_the_sources_axis():
    mag = np.abs(np.random.default_rng(0).standard_normal((1, N_FFT // 2 + 1, 45))).astype(np.float32)
    masks = predict_mask(FixedSourcesModel([1, 2, 1]), mag, frames=FRAMES, batch_size=3)
    assert masks.shape == (3, 1, N_FFT // 2 + 1, 45)
    np.testing.assert_allclose(masks[:, 0, 5, 7], [0.25, 0.5, 0.25], atol=1e-6)


@pytest.mark.parametrize("wiener_iterations", [0, 2])
@pytest.mark.parametrize("channels", [1, 2])
def test_every_stem_is_returned_and_they_sum_to_the_mixture(channels, wiener_iterations):
    x = noise(channels, 1.5)
    out = separate(FixedSourcesModel([0.2, 0.5, 0.3]), x, SR, N_FFT, HOP, FRAMES,
                   stems=STEMS, wiener_iterations=wiener_iterations)  # fmt: skip
    assert tuple(out) == STEMS and all(v.shape == x.shape for v in out.values())
    assert relative_error(out, x) < 1e-4
    if wiener_iterations == 0:  # the masked mixture: the stem of weight 0.5 is half of it
        np.testing.assert_allclose(out["drums"], 0.5 * x, atol=1e-5)
    elif channels == 1:  # mono EM on constant masks: each iteration squares the gains
        g = np.array([0.2, 0.5, 0.3]) ** (2**wiener_iterations)
        np.testing.assert_allclose(out["drums"], g[1] / g.sum() * x, atol=1e-4)


class LoudnessModel(torch.nn.Module):
    """Two sources, mono: loud bins go to the first (a softmax of ``[log m, -log m]``)."""

    in_channels, sources = 1, 2

    def forward(self, mag: torch.Tensor) -> torch.Tensor:
        logits = torch.log(mag + 1e-3)
        return torch.softmax(torch.stack([logits, -logits], dim=1), dim=1)


def test_a_mono_model_on_stereo_audio_gets_the_stereo_wiener_filter():
    """Masks of the channel mean, magnitudes ``mask * |X_c|`` per channel, the filter on the
    stereo STFT: not the same as filtering each channel on its own."""
    x = np.stack([noise(1, 1.0, seed=1)[0], 0.2 * noise(1, 1.0, seed=2)[0]])
    model, stems = LoudnessModel(), ("a", "other")
    out = separate(model, x, SR, N_FFT, HOP, FRAMES, stems=stems, wiener_iterations=2)
    assert relative_error(out, x) < 1e-4

    stft = Stft(n_fft=N_FFT, hop=HOP, sample_rate=SR)
    spec = stft.stft_complex(x)  # 126 frames: one Wiener segment
    masks = predict_mask(model, np.abs(stft.stft_complex(x.mean(axis=0, keepdims=True))), FRAMES)
    y = mixture_consistency(wiener(masks * np.abs(spec), spec, iterations=2), spec)
    np.testing.assert_allclose(out["a"], stft.istft(y[0], x.shape[1]), atol=1e-5)
    per_channel = [separate(model, x[c : c + 1], SR, N_FFT, HOP, FRAMES, stems=stems,
                            wiener_iterations=2)["a"] for c in range(2)]  # fmt: skip
    assert not np.allclose(out["a"], np.concatenate(per_channel), atol=1e-3)


@pytest.mark.parametrize("wiener_iterations", [0, 1])
def test_blocks_equal_the_whole_signal(wiener_iterations, monkeypatch):
    """Blocks of 1 s with Wiener segments of 50 frames (0.4 s): the segments' grid and the
    blocks' margin must follow the whole signal's for the stems to agree."""
    monkeypatch.setattr(apply, "WIENER_SEGMENT", 50)
    x = noise(2, 4.0, seed=3)
    x[0] *= np.linspace(0.1, 1.0, x.shape[1], dtype=np.float32)  # a changing spatial image
    model, stems = LoudnessModel(), ("a", "other")
    args = (SR, N_FFT, HOP, FRAMES)
    whole = separate(model, x, *args, stems=stems, wiener_iterations=wiener_iterations)
    blocks = separate_blocks(model, x, *args, block_seconds=1.0, stems=stems,
                             wiener_iterations=wiener_iterations)  # fmt: skip
    assert tuple(blocks) == stems
    for name in stems:
        np.testing.assert_allclose(blocks[name], whole[name], atol=1e-5)


def test_a_one_source_model_still_gives_instrument_and_rest():
    x = noise(2, 1.0)
    out = separate(FixedMaskModel(0.25), x, SR, N_FFT, HOP, FRAMES)
    assert tuple(out) == ("instrument", "rest")
    np.testing.assert_allclose(out["instrument"], 0.25 * x, atol=1e-5)
    filtered = separate(FixedMaskModel(0.25), x, SR, N_FFT, HOP, FRAMES, wiener_iterations=1)
    assert tuple(filtered) == ("instrument", "rest") and relative_error(filtered, x) < 1e-4
    with pytest.raises(ValueError, match="several sources"):
        separate(FixedMaskModel(0.25), x, SR, N_FFT, HOP, FRAMES, stems=STEMS)


def test_stems_must_name_every_source():
    x = noise(1, 0.5)
    for stems in (None, ("bass", "other"), ("bass", "bass", "other")):
        with pytest.raises(ValueError, match="separates 3 sources"):
            separate(FixedSourcesModel([1, 1, 1]), x, SR, N_FFT, HOP, FRAMES, stems=stems)


# ------------------------------------------------------------------ the job, several stems


def test_stems_keys_are_checked_against_the_checkpoint():
    from types import SimpleNamespace

    from sepcore.errors import ConfigError
    from sepcore.separate.config import Inference, SeparationSettings

    meta = {"task": "separator", "feature": {"n_fft": 256, "hop": 64}, "frames": 16,
            "sample_rate": SR, "target": None, "stems": list(STEMS), "wiener_iterations": 1}  # fmt: skip

    def cfg(**kw):
        return SimpleNamespace(**{"checkpoint": "ckpt", "inference": Inference(), "format": "flac",
                                  "sample_rate": None, "channels": None, "stems": None,
                                  "wiener_iterations": None, **kw})  # fmt: skip

    every = SeparationSettings.of(cfg(), meta)
    assert every.written == STEMS and every.all_stems == STEMS and every.wiener_iterations == 1
    some = SeparationSettings.of(cfg(stems=["other", "bass"], wiener_iterations=0), meta)
    assert some.written == ("bass", "other") and some.wiener_iterations == 0
    assert len({every.key(), some.key(), every.model_copy(update={"wiener_iterations": 2}).key()}) == 3
    with pytest.raises(ConfigError, match="unknown stem.*'piano'.*bass, drums, other"):
        SeparationSettings.of(cfg(stems=["piano"]), meta)
    single = {**meta, "target": "guitar", "stems": None, "wiener_iterations": None}
    assert SeparationSettings.of(cfg(), single).written == ("instrument", "rest")
    with pytest.raises(ConfigError, match="single-target checkpoint.*remove the stems key"):
        SeparationSettings.of(cfg(stems=["bass"]), single)


@pytest.fixture(scope="module")
def stems_checkpoint(tmp_path_factory) -> str:
    """An untrained BLSTM of 3 sources saved as the train job saves a multi-stem checkpoint."""
    from sepcore.models import build_model, checkpoint

    config = dict(n_bins=N_FFT // 2 + 1, channels=1, hidden=8, layers=1, max_bin=64, sources=3)
    model = checkpoint.LogMagnitude(build_model("blstm", **config))
    meta = {"model": {"name": "blstm", "config": config, "log_input": True}, "task": "separator",
            "target": None, "targets": list(STEMS[:-1]), "stems": list(STEMS), "sample_rate": SR,
            "channels": 1, "feature": {"name": "stft", "n_fft": N_FFT, "hop": HOP},
            "frames": FRAMES, "wiener_iterations": 1}  # fmt: skip
    out = str(tmp_path_factory.mktemp("ckpt") / "best")
    checkpoint.save(out, model, meta)
    return out


@pytest.mark.usefixtures("local_ray")
def test_the_job_writes_one_file_per_stem_that_add_up_to_the_input(tmp_path, stems_checkpoint):
    from ray_jobs import separate as job
    from sepcore.io import storage

    lib = tmp_path / "library"
    lib.mkdir()
    sources = {"stereo.wav": (noise(2, 1.5, seed=4).T, 11025), "mono.flac": (noise(1, 1.0).T, SR)}
    for name, (audio, rate) in sources.items():
        sf.write(str(lib / name), audio, rate, subtype="FLOAT" if name.endswith("wav") else "PCM_24")
    out = str(tmp_path / "out")
    base = [f"library={lib}", f"output={out}", f"checkpoint={stems_checkpoint}",
            "inference={batch_size: 32, pool_size: 1}"]  # fmt: skip

    def manifest() -> dict[str, dict]:
        table = pq.read_table(io.BytesIO(storage.read_bytes(storage.join(out, job.MANIFEST))))
        return {row["relative"]: row for row in table.to_pylist()}

    assert job.main(base) == 0
    rows = manifest()
    for name, row in rows.items():
        assert row["status"] == "ok", row["error"]
        assert row["instrument_uri"] is None and row["target"] == "bass,drums"
        stems = {s: sf.read(storage.local_path(row[f"{s}_uri"]), always_2d=True) for s in STEMS}
        assert {storage.parent(row[f"{s}_uri"]) for s in STEMS} == {storage.parent(row["bass_uri"])}
        src, rate = sf.read(str(lib / name), always_2d=True)
        assert all(r == rate and a.shape == src.shape for a, r in stems.values())
        total = sum(a for a, _ in stems.values())
        assert np.linalg.norm(total - src) / np.linalg.norm(src) < 1e-4, name

    assert job.main([*base, "stems=[drums]", "wiener_iterations=0"]) == 0  # new settings: redone
    rows = manifest()
    for row in rows.values():
        assert row["status"] == "ok" and "bass_uri" not in row and "other_uri" not in row
        assert row["drums_uri"].endswith("/drums.flac") and storage.exists(row["drums_uri"])
