"""The one apply: chunked mask prediction, Hann overlap-add, mask/rest, blocks, oracles."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from sepcore.evaluate.bss import bss_eval
from sepcore.models import SMOKE_CONFIGS, checkpoint
from sepcore.separate.apply import (
    FixedMaskModel,
    apply_mask,
    chunk_hop,
    iter_separate_blocks,
    model_channels,
    oracle_masks,
    predict_mask,
    separate,
    separate_blocks,
)

SR, N_FFT, HOP, FRAMES = 8000, 256, 64, 16
BINS = N_FFT // 2 + 1
#: STFT round trip (torch, float32) of audio with peak 0.5: measured <= 2.1e-7 for
#: n_fft 256/1536/2048; asserted with 5x margin.
ROUND_TRIP_ATOL = 1e-6


def noise(channels: int, seconds: float, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return (0.5 * rng.uniform(-1, 1, (channels, int(seconds * SR)))).astype(np.float32)


class FrameModel(nn.Module):
    """Mask of each frame from that frame alone: ``sigmoid(W @ mag[:, :, t] + b)``.

    Independent of the chunk position, so chunked prediction must equal one pass.
    """

    def __init__(self, bins: int = BINS, in_channels: int = 1, seed: int = 0):
        super().__init__()
        torch.manual_seed(seed)
        self.linear = nn.Linear(bins, bins)
        self.in_channels = in_channels
        self.seen: list[tuple[int, ...]] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.seen.append(tuple(x.shape))
        return torch.sigmoid(self.linear(x.transpose(-1, -2)).transpose(-1, -2))


class ConvRampModel(nn.Module):
    """Context- and chunk-position-dependent mask: 3x3 conv (zero padding), the chunk's
    mean (a receptive field of the whole chunk, like the hourglass's) and a ramp over
    the chunk's frames, so a misaligned grid or too little block margin shows."""

    def __init__(self, seed: int = 0):
        super().__init__()
        torch.manual_seed(seed)
        self.conv = nn.Conv2d(1, 1, 3, padding=1)
        self.in_channels = 1

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        ramp = torch.linspace(-2.0, 2.0, x.shape[-1], dtype=x.dtype, device=x.device)
        chunk = 20.0 * (x.mean(dim=(2, 3), keepdim=True) - 0.25)
        return torch.sigmoid(10.0 * self.conv(x) + ramp + chunk)


class ChunkMeanModel(nn.Module):
    """One value per chunk item: the mean of the chunk (its zero padding included)."""

    in_channels = 1

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.mean(dim=(1, 2, 3), keepdim=True).expand(-1, 1, x.shape[2], x.shape[3])


def magnitude(channels: int, n_frames: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return rng.uniform(0.0, 1.0, (channels, BINS, n_frames)).astype(np.float32)


# --------------------------------------------------------------------- mask and rest


def test_mask_one_gives_the_mixture_and_silent_rest():
    x = noise(2, 1.0)
    out = separate(FixedMaskModel(1.0), x, SR, N_FFT, HOP, FRAMES)
    assert out["instrument"].shape == x.shape and out["rest"].shape == x.shape
    np.testing.assert_allclose(out["instrument"], x, atol=ROUND_TRIP_ATOL, rtol=0)
    np.testing.assert_allclose(out["rest"], 0.0, atol=ROUND_TRIP_ATOL, rtol=0)


def test_mask_half_gives_two_halves():
    x = noise(1, 1.0, seed=1)
    out = separate(FixedMaskModel(0.5), x, SR, N_FFT, HOP, FRAMES)
    np.testing.assert_allclose(out["instrument"], 0.5 * x, atol=ROUND_TRIP_ATOL, rtol=0)
    np.testing.assert_allclose(out["rest"], 0.5 * x, atol=ROUND_TRIP_ATOL, rtol=0)


@pytest.mark.parametrize("samples", [1000, 8000, 12345])
def test_instrument_plus_rest_is_the_mixture(samples):
    x = noise(2, 2.0, seed=2)[:, :samples]
    out = separate(ConvRampModel(), x, SR, N_FFT, HOP, FRAMES)
    assert out["instrument"].shape == x.shape
    np.testing.assert_allclose(out["instrument"] + out["rest"], x, atol=ROUND_TRIP_ATOL, rtol=0)
    # The mask is far from constant: the instrument is no scaled copy of the mixture.
    assert np.abs(out["instrument"] - 0.5 * x).max() > 0.05


def test_apply_mask_rejects_a_mask_of_the_wrong_shape():
    from sepcore.prepare.features import Stft

    stft = Stft(n_fft=N_FFT, hop=HOP, sample_rate=SR)
    spec = stft.stft_complex(noise(1, 0.5))
    with pytest.raises(ValueError, match="does not fit"):
        apply_mask(stft, spec, np.ones((1, BINS, spec.shape[2] + 1), np.float32), 4000)


# ----------------------------------------------------------------------- predict_mask


@pytest.mark.parametrize("n_frames", [1, 10, 16, 32, 37, 64, 97])
def test_chunked_mask_equals_one_pass_everywhere(n_frames):
    """No edge attenuation: lengths below one chunk, exact multiples and odd ones."""
    mag = magnitude(1, n_frames)
    model = FrameModel()
    with torch.inference_mode():
        expected = model(torch.from_numpy(mag)[None])[0].numpy()
    got = predict_mask(model, mag, frames=FRAMES, batch_size=3)
    assert got.shape == mag.shape
    np.testing.assert_allclose(got, expected, atol=1e-6, rtol=0)


@pytest.mark.parametrize("overlap", [0.0, 0.5, 0.75])
def test_chunked_mask_equals_one_pass_for_other_overlaps(overlap):
    mag = magnitude(1, 53)
    model = FrameModel()
    with torch.inference_mode():
        expected = model(torch.from_numpy(mag)[None])[0].numpy()
    got = predict_mask(model, mag, frames=FRAMES, overlap=overlap)
    np.testing.assert_allclose(got, expected, atol=1e-6, rtol=0)


@pytest.mark.parametrize("n_frames", [5, 16, 41])
def test_stitching_is_a_hann_weighted_mean_on_the_documented_grid(n_frames):
    """Chunk k covers frames k*hop - pad ... (pad = frames - hop), zeros outside."""
    mag = magnitude(1, n_frames, seed=3)
    got = predict_mask(ChunkMeanModel(), mag, frames=FRAMES)
    hop = chunk_hop(FRAMES, 0.5)
    pad = FRAMES - hop
    window = 0.5 - 0.5 * np.cos(2 * np.pi * np.arange(FRAMES) / FRAMES)
    num, den = np.zeros(n_frames), np.zeros(n_frames)
    for start in range(-pad, n_frames, hop):
        idx = np.arange(start, start + FRAMES)
        inside = (idx >= 0) & (idx < n_frames)
        value = mag[0][:, idx[inside]].sum() / (BINS * FRAMES)
        num[idx[inside]] += window[inside] * value
        den[idx[inside]] += window[inside]
    np.testing.assert_allclose(den, 1.0, atol=1e-12)  # 50 % periodic Hann: constant
    np.testing.assert_allclose(got[0], np.broadcast_to(num / den, (BINS, n_frames)), atol=1e-6)


def test_batches_are_bounded_and_training_mode_restored():
    mag = magnitude(2, 100)
    model = FrameModel(in_channels=2)
    model.train()
    predict_mask(model, mag, frames=FRAMES, batch_size=5)
    assert model.training
    n_chunks = (FRAMES // 2 + 100 - 1) // (FRAMES // 2) + 1
    assert sum(shape[0] for shape in model.seen) == n_chunks  # one item per chunk
    assert max(shape[0] for shape in model.seen) <= 5
    assert all(shape[1:] == (2, BINS, FRAMES) for shape in model.seen)


def test_predict_mask_needs_the_models_channels():
    """No channel rule below separate(): a magnitude of another channel count raises."""
    with pytest.raises(ValueError, match="takes 1 channels, the magnitude has 2"):
        predict_mask(FrameModel(in_channels=1), magnitude(2, 45), frames=FRAMES)
    with pytest.raises(ValueError, match="takes 2 channels, the magnitude has 1"):
        predict_mask(FrameModel(in_channels=2), magnitude(1, 45), frames=FRAMES)


def test_a_stereo_model_gets_both_channels_and_may_return_one_mask():
    x = noise(2, 1.0)
    out = separate(FixedMaskModel(0.25, in_channels=2), x, SR, N_FFT, HOP, FRAMES)
    np.testing.assert_allclose(out["instrument"], 0.25 * x, atol=ROUND_TRIP_ATOL, rtol=0)
    mono = separate(FixedMaskModel(0.25, in_channels=2), x[:1], SR, N_FFT, HOP, FRAMES)
    np.testing.assert_allclose(mono["instrument"], 0.25 * x[:1], atol=ROUND_TRIP_ATOL, rtol=0)


def test_bad_model_outputs_and_parameters_raise():
    class NanModel(FixedMaskModel):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return torch.full_like(x, float("nan"))

    class ShortModel(FixedMaskModel):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return super().forward(x)[..., :-1]

    mag = magnitude(1, 20)
    with pytest.raises(RuntimeError, match="NaN"):
        predict_mask(NanModel(0.5), mag, frames=FRAMES)
    with pytest.raises(ValueError, match="mask of shape"):
        predict_mask(ShortModel(0.5), mag, frames=FRAMES)
    model = FixedMaskModel(0.5)
    model.sample_rate = 44100  # type: ignore[assignment]
    with pytest.raises(ValueError, match="sample_rate=44100"):
        separate(model, noise(1, 0.5), SR, N_FFT, HOP, FRAMES)


def test_mask_is_clipped_to_unit_range():
    class Loud(FixedMaskModel):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return super().forward(x) * 3.0 - 1.0  # 0.5 -> 0.5, 1.0 -> 2.0

    got = predict_mask(Loud(1.0), magnitude(1, 20), frames=FRAMES)
    assert got.max() == 1.0
    raw = predict_mask(Loud(1.0), magnitude(1, 20), frames=FRAMES, clip=False)
    np.testing.assert_allclose(raw, 2.0, atol=1e-6)


# ---------------------------------------------------------------------------- blocks


def test_blocks_equal_one_pass_on_20_seconds():
    x = noise(1, 20.0, seed=6)
    model = ConvRampModel()
    whole = separate(model, x, SR, N_FFT, HOP, FRAMES, batch_size=16)
    blocks = separate_blocks(model, x, SR, N_FFT, HOP, FRAMES, block_seconds=5.0, batch_size=16)
    for key in ("instrument", "rest"):
        np.testing.assert_allclose(blocks[key], whole[key], atol=1e-6, rtol=0)
    starts = [start for start, _ in iter_separate_blocks(model, x, SR, N_FFT, HOP, FRAMES, 5.0)]
    assert len(starts) == 4 and starts[0] == 0  # 5 s rounded up to the chunk grid


def test_blocks_with_a_short_signal_and_stereo():
    x = noise(2, 0.3, seed=7)
    model = FrameModel(in_channels=1)
    whole = separate(model, x, SR, N_FFT, HOP, FRAMES)
    blocks = separate_blocks(model, x, SR, N_FFT, HOP, FRAMES, block_seconds=0.1)
    np.testing.assert_allclose(blocks["instrument"], whole["instrument"], atol=1e-6, rtol=0)


# ---------------------------------------------------------------------------- oracle


def test_oracle_masks_separate_two_tones():
    sr = 22050
    t = np.arange(2 * sr) / sr
    inst = (0.5 * np.sin(2 * np.pi * 440 * t))[None].astype(np.float32)
    rest = (0.3 * np.sin(2 * np.pi * 2000 * t))[None].astype(np.float32)
    out = oracle_masks(inst, rest, n_fft=1024, hop=256)
    refs = np.stack([inst[0], rest[0]])
    for name in ("irm", "ibm"):
        est = np.stack([out[name]["instrument"][0], out[name]["rest"][0]])
        assert est.shape == refs.shape
        scores = bss_eval(refs, est)
        assert np.all(scores["sdr"] > 20.0), (name, scores)
    np.testing.assert_allclose(
        out["irm"]["instrument"] + out["irm"]["rest"], inst + rest, atol=ROUND_TRIP_ATOL, rtol=0
    )


# -------------------------------------------------------------------------- channels


def production_model(in_channels: int, seed: int = 0) -> nn.Module:
    """The production separator as a checkpoint rebuilds it: log1p input, tiny hourglass."""
    torch.manual_seed(seed)
    config = {**SMOKE_CONFIGS["hourglass"], "in_channels": in_channels}
    return checkpoint.build({"name": "hourglass", "config": config, "log_input": True}).eval()


def seen_shapes(model: nn.Module) -> list[tuple[int, ...]]:
    """Input shapes the wrapped hourglass is called with (a forward pre-hook records them)."""
    seen: list[tuple[int, ...]] = []
    inner = model.model  # type: ignore[union-attr]
    inner.register_forward_pre_hook(lambda _m, args: seen.append(tuple(args[0].shape)))
    return seen


def test_a_wrapped_model_states_its_channels():
    assert model_channels(production_model(2)) == 2
    assert model_channels(production_model(1)) == 1


def test_stereo_model_on_stereo_audio_gives_stereo_stems():
    model = production_model(2)
    seen = seen_shapes(model)
    x = noise(2, 1.0, seed=8)
    x[1] *= 0.3  # the channels differ: the model must see both
    out = separate(model, x, SR, N_FFT, HOP, FRAMES)
    assert out["instrument"].shape == out["rest"].shape == x.shape
    assert seen and all(shape[1:] == (2, BINS, FRAMES) for shape in seen)
    np.testing.assert_allclose(out["instrument"] + out["rest"], x, atol=ROUND_TRIP_ATOL, rtol=0)
    assert np.abs(out["instrument"]).max() > 0.01  # a real mask, not silence


def test_stereo_model_on_mono_audio_sees_the_channel_twice_and_gives_mono_stems():
    model = production_model(2)
    seen = seen_shapes(model)
    x = noise(1, 1.0, seed=9)
    out = separate(model, x, SR, N_FFT, HOP, FRAMES)
    assert out["instrument"].shape == x.shape
    assert seen and all(shape[1:] == (2, BINS, FRAMES) for shape in seen)
    np.testing.assert_allclose(out["instrument"] + out["rest"], x, atol=ROUND_TRIP_ATOL, rtol=0)


def test_mono_model_on_stereo_audio_applies_the_mask_of_the_mean_to_every_channel():
    model = production_model(1)
    seen = seen_shapes(model)
    left = noise(1, 1.0, seed=10)
    x = np.concatenate([left, 0.5 * left])  # right = left / 2, so the mean is 0.75 * left
    out = separate(model, x, SR, N_FFT, HOP, FRAMES)
    assert out["instrument"].shape == x.shape
    assert seen and all(shape[1:] == (1, BINS, FRAMES) for shape in seen)
    # One mask for both channels: the right instrument is half the left one, and the
    # mask is the one the mean (0.75 * left) gets on its own.
    np.testing.assert_allclose(out["instrument"][1], 0.5 * out["instrument"][0], atol=1e-6)
    mean = separate(model, 0.75 * left, SR, N_FFT, HOP, FRAMES)["instrument"]
    np.testing.assert_allclose(0.75 * out["instrument"][:1], mean, atol=1e-6)
    np.testing.assert_allclose(out["instrument"] + out["rest"], x, atol=ROUND_TRIP_ATOL, rtol=0)


def test_blocks_follow_the_same_channel_rule():
    x = noise(1, 3.0, seed=11)
    for model, audio in ((production_model(2), np.concatenate([x, 0.2 * x])),
                         (production_model(2), x), (production_model(1), np.concatenate([x, -x]))):
        whole = separate(model, audio, SR, N_FFT, HOP, FRAMES)
        blocks = separate_blocks(model, audio, SR, N_FFT, HOP, FRAMES, block_seconds=1.0)
        np.testing.assert_allclose(blocks["instrument"], whole["instrument"], atol=1e-6, rtol=0)


def test_a_loaded_checkpoint_states_its_channels(tmp_path):
    stereo = production_model(2)
    meta = {"model": {"name": "hourglass", "config": {**SMOKE_CONFIGS["hourglass"], "in_channels": 2},
                      "log_input": True}, "task": "separator", "channels": 2}  # fmt: skip
    checkpoint.save(str(tmp_path / "stereo"), stereo, meta)
    loaded, loaded_meta = checkpoint.load_model(str(tmp_path / "stereo"))
    assert model_channels(loaded) == 2 and loaded_meta["channels"] == 2
    old = {"model": {"name": "hourglass", "config": SMOKE_CONFIGS["hourglass"], "log_input": True},
           "task": "separator"}  # fmt: skip  # written before checkpoints stated channels
    checkpoint.save(str(tmp_path / "old"), production_model(1), old)
    loaded, loaded_meta = checkpoint.load_model(str(tmp_path / "old"))
    assert model_channels(loaded) == 1 and loaded_meta["channels"] == 1
    checkpoint.save(str(tmp_path / "bad"), stereo, {**meta, "channels": 1})
    with pytest.raises(checkpoint.CheckpointError, match="2 channels"):
        checkpoint.load_model(str(tmp_path / "bad"))
