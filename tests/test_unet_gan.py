"""The drums U-Net GAN (seed 004): the generator at odd sizes, the HPSS input channel against
librosa, the critic's gradient penalty, the adversarial step, and stage 1 -> stage 2 -> resumed
stage 2 through ``sep train`` (generator, critic and both optimisers restored)."""

from __future__ import annotations

import librosa
import numpy as np
import pytest
import torch
from torch import nn

from ray_jobs import train
from sepcore.io import storage
from sepcore.models import build_model
from sepcore.models import checkpoint as ckpt
from sepcore.models.unet_gan import Critic, gradient_penalty
from sepcore.separate.hpss import percussive_magnitude
from sepcore.train import loop as L
from sepcore.train.config import GanConfig
from sepcore.train.gan import CRITIC, CRITIC_OPTIMIZER
from sepcore.train.worker import adversarial_step


@pytest.mark.parametrize("bins,frames", [(33, 7), (65, 1), (1, 13), (769, 64)])
def test_unet_keeps_any_input_size_and_outputs_masks(bins, frames):
    torch.manual_seed(0)
    for kw, shape in ((dict(channels=2), (2, 2, bins, frames)),
                      (dict(channels=1, sources=3), (2, 3, 1, bins, frames)),
                      (dict(channels=1, hpss={"margin": 2.0, "kernel_size": 5}), (2, 1, bins, frames))):  # fmt: skip
        model = build_model("unet_gan", filters=[4, 8, 8], kernel=3, **kw)
        mix = torch.rand(2, kw["channels"], bins, frames)
        mask = model(mix)
        assert tuple(mask.shape) == shape and float(mask.detach().min()) >= 0.0 and float(mask.detach().max()) <= 1.0
        if kw.get("sources"):
            torch.testing.assert_close(mask.sum(dim=1), torch.ones(2, 1, bins, frames))
        mask.mean().backward()  # every weight gets a gradient through the padding and the crop
        assert all(p.grad is not None for p in model.parameters())
    assert model.encoder[0][0].in_channels == 2  # the HPSS channel beside the mixture
    with pytest.raises(ValueError, match="channels=1"):
        model(torch.rand(1, 2, 9, 9))
    with pytest.raises(ValueError, match="kernel must be odd"):
        build_model("unet_gan", kernel=4)
    with pytest.raises(ValueError, match="margin"):
        build_model("unet_gan", hpss={"margin": 0.5})


def test_hpss_channel_is_librosas_percussive_part():
    rng = np.random.default_rng(0)
    for (bins, frames), kernel, margin in (((65, 40), 31, 1.0), ((33, 9), 5, 3.0)):
        mag = (np.abs(rng.standard_normal((bins, frames))) ** 3).astype(np.float32)
        mag[:, 2] = 0.0  # a silent frame: librosa's zero-split rule
        _, expected = librosa.decompose.hpss(mag, kernel_size=kernel, margin=margin)
        got = percussive_magnitude(torch.from_numpy(mag), margin, kernel).numpy()
        np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6 * float(mag.max()))


class LinearCritic(nn.Module):
    def __init__(self, size: int):
        super().__init__()
        self.w = nn.Parameter(torch.randn(size))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.flatten(1) @ self.w


def test_gradient_penalty_is_the_squared_distance_of_the_gradient_norm_from_one():
    torch.manual_seed(0)
    critic = LinearCritic(2 * 5 * 3)  # its gradient is w everywhere: the penalty is (|w| - 1)^2
    real, fake = torch.rand(4, 2, 5, 3), torch.rand(4, 2, 5, 3)
    gp = gradient_penalty(critic, real, fake)
    expected = (critic.w.detach().norm() - 1.0) ** 2
    torch.testing.assert_close(gp.detach(), expected)
    gp.backward()  # differentiable in the critic's weights: d/dw = 2 (|w| - 1) w / |w|
    w = critic.w.detach()
    torch.testing.assert_close(critic.w.grad, 2 * (w.norm() - 1) * w / w.norm())
    with torch.no_grad():
        critic.w.copy_(critic.w / critic.w.norm())  # a unit gradient: no penalty
    assert gradient_penalty(critic, real, fake).item() == pytest.approx(0.0, abs=1e-6)
    net = Critic(channels=1, filters=[2, 2, 4, 4], kernel=3, dense=8, conditional=True)
    mix = torch.rand(3, 1, 17, 9)
    assert net(torch.rand(3, 1, 17, 9), mix).shape == (3,)
    gradient_penalty(net, torch.rand(3, 1, 17, 9), torch.rand(3, 1, 17, 9), mix).backward()
    weights = [p for p in net.convs.parameters() if p.ndim > 1]  # biases: no second derivative through LeakyReLU
    assert len(weights) == 4 and all(p.grad is not None and bool(p.grad.abs().sum() > 0) for p in weights)
    with pytest.raises(ValueError, match="needs the mixture"):
        net(torch.rand(3, 1, 17, 9))


def _gan(critic_steps: int = 2) -> dict:
    return GanConfig.model_validate({"critic": {"filters": [2, 2, 4, 4], "kernel": 3, "dense": 8},
                                     "critic_steps": critic_steps}).model_dump()  # fmt: skip


def test_adversarial_step_trains_both_and_its_state_restores_exactly(tmp_path):
    torch.manual_seed(0)
    meta_model = {"name": "unet_gan", "config": {"channels": 1, "filters": [4, 8], "kernel": 3}, "log_input": False}
    optim = {"lr": 1e-3, "weight_decay": 0.0, "scheduler": "none"}
    net, optimizer, _, _ = L.build_for_training(meta_model, optim, lambda m: m)
    config = {"gan": _gan(), "meta": {"channels": 1}}
    gan = adversarial_step(config, net, optimizer, None, 1, "mse")
    batch = {"mix": torch.rand(4, 1, 17, 8) + 0.5}
    batch["target"] = 0.5 * batch["mix"]
    before = {k: v.clone() for k, v in gan.critic.state_dict().items()}
    g_before = {k: v.clone() for k, v in net.state_dict().items()}
    loss = gan(batch, ("mix", "target"))
    assert loss.ndim == 0 and loss.item() > 0
    assert any(not torch.equal(before[k], v) for k, v in gan.critic.state_dict().items())
    assert any(not torch.equal(g_before[k], v) for k, v in net.state_dict().items())
    figures = gan.figures()
    assert set(figures) == {"critic_loss", "wasserstein", "gradient_penalty", "adversarial_loss"}
    assert gan.figures() == {}  # counted afresh after each read
    assert all(int(s["step"]) == 2 for s in gan.critic_optimizer.state_dict()["state"].values())  # 2 critic steps

    # A checkpoint as the worker writes it, restored as the worker restores it: the same four states.
    trained = {**L.training_state(optimizer, None, None), **gan.state_dict()}
    folder = str(tmp_path / "ck")
    ckpt.save(folder, net, {"model": meta_model}, trained, epoch=0)
    saved = ckpt.load_state(folder)[1]
    net2, optimizer2, _, _ = L.build_for_training(meta_model, optim, lambda m: m, saved)
    gan2 = adversarial_step(config, net2, optimizer2, saved, 1, "mse")
    for a, b in ((net, net2), (gan.critic, gan2.critic)):
        for (ka, va), (kb, vb) in zip(a.state_dict().items(), b.state_dict().items(), strict=True):
            assert ka == kb and torch.equal(va, vb)
    for a, b in ((optimizer, optimizer2), (gan.critic_optimizer, gan2.critic_optimizer)):
        sa, sb = a.state_dict()["state"], b.state_dict()["state"]
        assert sa.keys() == sb.keys() and all(torch.equal(sa[k]["exp_avg"], sb[k]["exp_avg"]) for k in sa)
    torch.manual_seed(1)
    one = gan(batch, ("mix", "target"))
    torch.manual_seed(1)
    two = gan2(batch, ("mix", "target"))
    assert one.item() == two.item()  # the next step is the same step
    with pytest.raises(ValueError, match="no critic"):
        gan2.load_state_dict(L.training_state(optimizer, None, None))


def _steps(state: dict) -> set[int]:
    return {int(s["step"]) for s in state["state"].values()}


def _stage_one(data: str, output) -> None:  # type: ignore[no-untyped-def]
    """A stage-1 checkpoint in ``output/best`` as ``sep train`` writes one (its meta from the same
    settings); stage 1 itself is the ordinary separator training the other train tests run."""
    from ray_jobs.train import TrainConfig
    from sepcore.train import outputs as O

    cfg = TrainConfig.model_validate({"data": data, "output": str(output), "model": {
        "name": "unet_gan", "log_input": False, "config": {"filters": [4, 8], "kernel": 3}}})  # fmt: skip
    meta = O.inference_meta(cfg, O.read_manifest(data))
    torch.manual_seed(0)
    ckpt.save(str(output / "best"), ckpt.build(meta["model"]), {**meta, "metrics": {"val_loss": 1.0}}, epoch=4)


@pytest.mark.usefixtures("local_ray")
def test_stage_two_starts_from_stage_one_and_resumes_generator_critic_and_both_optimisers(tiny_shards, tmp_path, capsys):
    one, two = tmp_path / "stage1", tmp_path / "stage2"
    _stage_one(tiny_shards, one)
    stage1 = ckpt.load_state(str(one / "best"))
    assert CRITIC not in (stage1[1]["optimizer"] or {}) and stage1[0]["stage"] == 1
    args = [f"data={tiny_shards}", "model.name=unet_gan", "model.log_input=false",
            "model.config={filters: [4, 8], kernel: 3}", "optim={batch_size: 4, max_steps_per_epoch: 3, loss: mse}",
            "validation={sdr_tracks: 0, max_steps: 1}", "gan={critic: {filters: [2, 2, 4, 4], kernel: 3, dense: 8}, critic_steps: 2}"]  # fmt: skip

    # stage 2 from stage 1: the generator starts from its weights, a fresh critic beside it
    stage2 = [*args, "stage=2", f"init_from={one}", f"output={two}"]
    assert train.main([*stage2, "optim.epochs=1"]) == 0
    runs = storage.join(storage.normalize_uri(str(two)), "runs")
    meta, state = ckpt.load_state(ckpt.find_latest(runs))
    assert meta["stage"] == 2 and meta["init"]["method"] == "init_from" and meta["init"]["epoch"] == 4
    assert isinstance(meta["init"]["val_loss"], float)  # epoch 0 of the curves: stage 1's weights
    assert {"critic_loss", "wasserstein", "gradient_penalty"} <= set(meta["metrics"])
    trained = state["optimizer"]
    assert _steps(trained["optimizer"]) == {3} and _steps(trained[CRITIC_OPTIMIZER]) == {6}  # 3 steps x 2 critic steps
    first_critic = trained[CRITIC]

    # continued: the critic and both optimisers go on from their saved state (fresh ones would count 3 and 6 again)
    assert train.main([*stage2, "optim.epochs=2"]) == 0
    meta, state = ckpt.load_state(ckpt.find_latest(runs))
    assert meta["epoch"] == 1 and meta["init"]["epoch"] == 4
    trained = state["optimizer"]
    assert _steps(trained["optimizer"]) == {6} and _steps(trained[CRITIC_OPTIMIZER]) == {12}
    assert any(not torch.equal(first_critic[k], v) for k, v in trained[CRITIC].items())

    # stage 2 without stage 1's weights, into stage 1's own output, or from another model: refused
    assert train.main([*args, "stage=2", f"output={tmp_path / 'x'}"]) == 2
    assert train.main([*args, "stage=2", f"init_from={one}", f"output={one}"]) == 2
    assert train.main([*args, "model.config={filters: [4, 4], kernel: 3}", "stage=2", f"init_from={one}",
                       f"output={tmp_path / 'y'}"]) == 2  # fmt: skip
    err = capsys.readouterr().err
    assert "set init_from" in err and "output of its own" in err and "another model" in err


def test_styles_keep_the_shards_and_split_entries_of_those_tracks(demo_data, tmp_path):
    """``styles=[...]``: a per-style model from data prepared once (each track's metadata.yaml style)."""
    import os

    from sepcore.errors import ConfigError
    from sepcore.train.outputs import keep_styles

    src = storage.local_path(demo_data)
    names = sorted(n for n in os.listdir(src) if n.startswith("Track"))
    styles = {n: "rock" if i % 2 else "waltz" for i, n in enumerate(names)}
    for name in names:  # the demo tracks again, each with a style
        (tmp_path / name).mkdir()
        for entry in os.listdir(os.path.join(src, name)):
            if entry != "metadata.yaml":
                os.symlink(os.path.join(src, name, entry), tmp_path / name / entry)
        text = open(os.path.join(src, name, "metadata.yaml")).read()
        (tmp_path / name / "metadata.yaml").write_text(f"{text}\nstyle: {styles[name]}\n")
    ids = [f"slakh:{n}" for n in names]
    manifest = {"config": {"sources": [{"kind": "slakh", "uri": str(tmp_path), "name": None}]},
                "shards": [{"uri": f"s{i}", "split": "train" if i < 4 else "validation", "track_id": t}
                           for i, t in enumerate(ids)],
                "splits": {"train": ids[:4], "validation": ids[4:]}}  # fmt: skip
    kept = keep_styles(manifest, ["rock"])
    rock = [f"slakh:{n}" for n in names if styles[n] == "rock"]
    assert [sh["track_id"] for sh in kept["shards"]] == rock
    assert kept["splits"] == {"train": [t for t in ids[:4] if t in rock], "validation": [t for t in ids[4:] if t in rock]}
    assert keep_styles(manifest, ["rock", "waltz"])["shards"] == manifest["shards"]
    with pytest.raises(ConfigError, match="no training track of jazz"):
        keep_styles(manifest, ["jazz"])
