"""Models: weight counts, shape contracts, registry round trips, training signal, losses."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest
import torch

from sepcore.models import (
    BLSTM,
    MODELS,
    SMOKE_CONFIGS,
    SMOKE_INPUT_SHAPES,
    ActivationCNN,
    Hourglass,
    activation_bce,
    build_model,
    count_parameters,
    mask_loss,
    masked_l1,
    model_config,
    model_name,
    source_count,
)
from sepcore.models.checkpoint import LogMagnitude
from sepcore.models.losses import MaskLoss

#: A CPU-sized hourglass (the brief's example of a small variant).
SMALL_HOURGLASS: dict[str, Any] = dict(
    filters=16, levels=3, initial_channels=(8, 16, 16, 16, 32), final_channels=32
)


@pytest.fixture(autouse=True)
def one_thread() -> Iterator[None]:
    """Tiny models on a shared 2-core box: more threads only add contention (100x here)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def smoke_model(name: str) -> torch.nn.Module:
    torch.manual_seed(0)
    return build_model(name, **SMOKE_CONFIGS[name])


def smoke_batch(name: str) -> torch.Tensor:
    return torch.rand(SMOKE_INPUT_SHAPES[name], generator=torch.Generator().manual_seed(1))


# --- weight counts ---------------------------------------------------------------------


@pytest.mark.parametrize(
    "filters, expected", [(256, 12_546_689), (192, 7_713_857), (92, 2_671_757)]
)
def test_hourglass_weight_counts_match_thesis(filters: int, expected: int) -> None:
    assert count_parameters(Hourglass(filters=filters, levels=6)) == expected


@pytest.mark.parametrize(
    "n_bins, seed_millions, expected",
    [(128, 1.39, 1_390_832), (192, 1.92, 1_915_120), (1025, 8.73, 8_730_864)],
)
def test_activation_cnn_weight_counts_round_to_seed_001(
    n_bins: int, seed_millions: float, expected: int
) -> None:
    n = count_parameters(ActivationCNN(n_bins=n_bins))
    assert n == expected
    assert round(n / 1e6, 2) == seed_millions


def test_count_parameters_skips_frozen_weights() -> None:
    model = Hourglass(**SMALL_HOURGLASS)
    total = count_parameters(model)
    last = model.final[-1]
    assert isinstance(last, torch.nn.Conv2d)
    last.weight.requires_grad_(False)
    assert count_parameters(model) == total - last.weight.numel()


# --- hourglass shapes ------------------------------------------------------------------


@pytest.mark.parametrize("bins, frames", [(257, 64), (129, 33), (9, 8), (8, 31), (100, 17)])
def test_hourglass_output_shape_equals_input_shape(bins: int, frames: int) -> None:
    model = Hourglass(**SMALL_HOURGLASS).eval()
    x = torch.rand(2, 1, bins, frames)
    with torch.no_grad():
        mask = model(x)
    assert mask.shape == x.shape
    assert ((mask > 0) & (mask < 1)).all()


def test_hourglass_full_depth_on_thesis_input_size() -> None:
    """Six levels on 769 x 64: 769 -> 384 -> ... -> 12 and back to exactly 769.

    Tiny filters: the F=92 model's forward takes 4-11 s on the 2-core dev box.
    """
    model = Hourglass(filters=8, levels=6, initial_channels=(4, 8, 8, 8, 16), final_channels=16)
    with torch.no_grad():
        mask = model.eval()(torch.rand(1, 1, 769, 64))
    assert mask.shape == (1, 1, 769, 64)


def test_hourglass_module_ends_in_a_linear_conv() -> None:
    """§5: ReLU after every conv except the module's last (the top level's up conv)."""
    model = Hourglass(**SMALL_HOURGLASS)

    def has_relu(block: torch.nn.Module) -> bool:
        return any(isinstance(m, torch.nn.ReLU) for m in block.modules())

    ups = list(model.hourglass.ups)
    assert not has_relu(ups[0])
    assert all(has_relu(b) for b in ups[1:] + list(model.hourglass.skips) + list(model.initial))
    assert [has_relu(b) for b in model.final] == [True, True, False]


def test_hourglass_stereo_gives_one_mask_per_channel() -> None:
    model = Hourglass(**{**SMALL_HOURGLASS, "in_channels": 2}).eval()
    with torch.no_grad():
        assert model(torch.rand(1, 2, 40, 16)).shape == (1, 2, 40, 16)


@pytest.mark.parametrize(
    "shape, sizes",
    [
        ((1, 1, 129, 7), "bins=129, frames=7"),  # levels=3 needs 8 frames
        ((1, 1, 7, 64), "bins=7, frames=64"),
        ((1, 2, 129, 33), "(1, 2, 129, 33)"),  # wrong channels
        ((1, 129, 33), "(1, 129, 33)"),  # no batch axis
    ],
)
def test_hourglass_rejects_bad_shapes_naming_the_sizes(shape: tuple[int, ...], sizes: str) -> None:
    model = Hourglass(**SMALL_HOURGLASS)
    with pytest.raises(ValueError, match=r"got") as err:
        model(torch.rand(shape))
    assert sizes in str(err.value)


def test_hourglass_levels_deeper_than_the_input_allows() -> None:
    model = Hourglass(filters=4, levels=7, initial_channels=(4, 4, 4, 4, 4), final_channels=4)
    with pytest.raises(ValueError, match=r"levels=7 needs at least 128 .* frames=64"):
        model(torch.rand(1, 1, 769, 64))


def test_hourglass_rejects_bad_constructor_arguments() -> None:
    with pytest.raises(ValueError, match="initial_channels"):
        Hourglass(initial_channels=(64, 128, 256))
    with pytest.raises(ValueError, match="levels=0"):
        Hourglass(levels=0)


# --- activation CNN --------------------------------------------------------------------


@pytest.mark.parametrize("n_bins", [128, 192])
def test_activation_cnn_shapes_and_range(n_bins: int) -> None:
    torch.manual_seed(0)
    model = ActivationCNN(n_bins=n_bins, n_classes=8, frames=16).eval()
    with torch.no_grad():
        out = model(torch.randn(3, 1, n_bins, 16))
    assert out.shape == (3, 8, 16)
    assert ((out > 0) & (out < 1)).all()


@pytest.mark.parametrize("shape", [(2, 1, 128, 15), (2, 1, 127, 16), (2, 2, 128, 16), (128, 16)])
def test_activation_cnn_rejects_bad_shapes(shape: tuple[int, ...]) -> None:
    model = ActivationCNN(n_bins=128)
    with pytest.raises(ValueError, match="bins=128, frames=16") as err:
        model(torch.rand(shape))
    assert str(tuple(shape)) in str(err.value)


def test_activation_cnn_needs_16_bins() -> None:
    with pytest.raises(ValueError, match="n_bins=15"):
        ActivationCNN(n_bins=15)
    assert ActivationCNN(n_bins=16, filters=(2, 2, 2)).head.in_features == 2 * 1 * 16


# --- BLSTM -----------------------------------------------------------------------------


@pytest.mark.parametrize("frames", [1, 7, 64, 301])
def test_blstm_variable_lengths(frames: int) -> None:
    torch.manual_seed(0)
    model = BLSTM(n_bins=65, channels=2, hidden=16, layers=3, max_bin=40).eval()
    x = torch.rand(2, 2, 65, frames)
    with torch.no_grad():
        mask = model(x)
    assert mask.shape == x.shape
    assert ((mask > 0) & (mask < 1)).all()


def test_blstm_frames_are_not_mixed_across_batch_items() -> None:
    """Item 0's mask does not depend on item 1 (eval mode: batch norm is per frame)."""
    torch.manual_seed(0)
    model = BLSTM(n_bins=20, hidden=8, layers=2).eval()
    x = torch.rand(2, 1, 20, 9)
    with torch.no_grad():
        both = model(x)
        alone = model(x[:1])
    torch.testing.assert_close(both[:1], alone)


def test_blstm_layer_norm_trains_on_a_single_frame() -> None:
    model = BLSTM(n_bins=20, hidden=8, layers=1, norm="layer").train()
    model(torch.rand(1, 1, 20, 1)).mean().backward()
    assert model.encoder.weight.grad is not None


def test_blstm_max_bin_limits_the_input_but_masks_all_bins() -> None:
    torch.manual_seed(0)
    model = BLSTM(n_bins=30, hidden=8, layers=1, max_bin=10).eval()
    assert model.encoder.in_features == 10
    x = torch.rand(1, 1, 30, 5)
    y = x.clone()
    y[:, :, 10:] = torch.rand(1, 1, 20, 5)  # the bins above max_bin are not seen
    with torch.no_grad():
        mask = model(x)
        torch.testing.assert_close(mask, model(y))
    assert mask.shape == (1, 1, 30, 5)


@pytest.mark.parametrize("shape", [(1, 1, 64, 10), (1, 2, 65, 10), (1, 1, 65, 0), (65, 10)])
def test_blstm_rejects_bad_shapes(shape: tuple[int, ...]) -> None:
    model = BLSTM(n_bins=65, hidden=8, layers=1)
    with pytest.raises(ValueError, match="bins=65") as err:
        model(torch.rand(shape))
    assert str(tuple(shape)) in str(err.value)


def test_blstm_rejects_bad_constructor_arguments() -> None:
    with pytest.raises(ValueError, match="max_bin"):
        BLSTM(n_bins=10, max_bin=11)
    with pytest.raises(ValueError, match="hidden=9"):
        BLSTM(n_bins=10, hidden=9)
    with pytest.raises(ValueError, match="norm"):
        BLSTM(n_bins=10, norm="group")  # type: ignore[arg-type]


# --- registry --------------------------------------------------------------------------


def test_registry_knows_every_model_and_rejects_unknown_names() -> None:
    assert set(MODELS) - {"composer"} == {"hourglass", "activation_cnn", "blstm", "frame_dnn", "mask_dnn", "unet_gan"} == set(SMOKE_CONFIGS)
    with pytest.raises(ValueError, match="unknown model 'unet'.*activation_cnn, blstm, composer, frame_dnn, hourglass, mask_dnn"):
        build_model("unet")


@pytest.mark.parametrize("name", sorted(SMOKE_CONFIGS))
def test_build_model_round_trip_from_kept_config(name: str) -> None:
    model = smoke_model(name)
    for p in model.parameters():  # make the weights differ from a fresh init
        p.data.add_(0.01)
    config = model_config(model)
    assert model_name(model) == name
    rebuilt = build_model(name, **config)
    assert model_config(rebuilt) == config
    a, b = model.state_dict(), rebuilt.state_dict()
    assert {k: v.shape for k, v in a.items()} == {k: v.shape for k, v in b.items()}
    x = smoke_batch(name)
    with torch.no_grad():
        before = rebuilt.eval()(x)
        rebuilt.load_state_dict(a)
        expected = model.eval()(x)
        after = rebuilt(x)  # under no_grad too: the LSTM's inference kernel differs
    assert not torch.allclose(before, expected)
    torch.testing.assert_close(after, expected, rtol=0, atol=0)


def test_model_config_is_a_copy() -> None:
    model = smoke_model("hourglass")
    config = model_config(model)
    config["initial_channels"].append(99)
    assert model_config(model)["initial_channels"] == SMOKE_CONFIGS["hourglass"]["initial_channels"]


# --- training signal -------------------------------------------------------------------


def smoke_loss(name: str, model: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    """The model's training loss on a fixed target: random activations, or the loud bins."""
    g = torch.Generator().manual_seed(2)
    out = model(x)
    if name == "activation_cnn":
        return activation_bce(out, (torch.rand(out.shape, generator=g) > 0.7).float())
    target = x * (x > 0.5)
    return masked_l1(out, x, target)


@pytest.mark.parametrize("name", sorted(SMOKE_CONFIGS))
def test_a_few_steps_reduce_the_loss(name: str) -> None:
    model = smoke_model(name).train()
    x = smoke_batch(name)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    losses = []
    for _ in range(15):
        opt.zero_grad()
        loss = smoke_loss(name, model, x)
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.75 * losses[0], losses
    grads = [p.grad for p in model.parameters()]
    assert all(g is not None for g in grads), "a parameter gets no gradient"


@pytest.mark.parametrize("name", sorted(SMOKE_CONFIGS))
def test_silent_input_gives_finite_masks(name: str) -> None:
    model = smoke_model(name).eval()
    x = torch.zeros(SMOKE_INPUT_SHAPES[name])
    with torch.no_grad():
        out = model(x)
    assert torch.isfinite(out).all()
    if name != "activation_cnn":
        assert masked_l1(out, x, torch.zeros_like(x)).item() == 0.0


# --- losses ----------------------------------------------------------------------------


def test_masked_l1_known_value_and_perfect_mask() -> None:
    mix = torch.tensor([[[[2.0, 4.0], [0.0, 1.0]]]])
    target = torch.tensor([[[[1.0, 4.0], [0.0, 0.0]]]])
    mask = torch.full_like(mix, 0.5)
    # |1-1| + |2-4| + |0-0| + |0.5-0| = 2.5 over 4 entries
    assert masked_l1(mask, mix, target).item() == pytest.approx(0.625)
    perfect = torch.tensor([[[[0.5, 1.0], [0.3, 0.0]]]])
    assert masked_l1(perfect, mix, target).item() == 0.0


def test_masked_l1_rejects_mismatched_shapes() -> None:
    a = torch.rand(1, 1, 4, 3)
    with pytest.raises(ValueError, match=r"mix_mag \(1, 1, 4, 2\)"):
        masked_l1(a, torch.rand(1, 1, 4, 2), a)


def test_activation_bce_known_value() -> None:
    pred = torch.tensor([[0.5, 0.9], [0.2, 0.5]])
    target = torch.tensor([[1.0, 1.0], [0.0, 0.5]])
    expected = (
        -(
            torch.log(torch.tensor(0.5))
            + torch.log(torch.tensor(0.9))
            + torch.log(torch.tensor(0.8))
            + torch.log(torch.tensor(0.5))
        )
        / 4
    )
    assert activation_bce(pred, target).item() == pytest.approx(expected.item(), rel=1e-6)


def test_activation_bce_is_finite_for_hard_predictions() -> None:
    pred = torch.tensor([0.0, 1.0, 0.0, 1.0], requires_grad=True)
    target = torch.tensor([0.0, 1.0, 1.0, 0.0])
    loss = activation_bce(pred, target)
    loss.backward()
    assert torch.isfinite(loss) and 0 < loss.item() < 10
    assert pred.grad is not None and torch.isfinite(pred.grad).all()
    assert activation_bce(pred[:2], target[:2]).item() < 1e-6


def test_activation_bce_rejects_mismatched_shapes() -> None:
    with pytest.raises(ValueError, match=r"pred \(2, 8, 16\), target \(2, 16, 8\)"):
        activation_bce(torch.rand(2, 8, 16), torch.rand(2, 16, 8))


# --- several sources (issue 20) --------------------------------------------------------


def multi_model(name: str, sources: int, channels: int = 1) -> torch.nn.Module:
    """A smoke-sized mask model with ``sources`` outputs and ``channels`` input channels."""
    torch.manual_seed(0)
    key = "channels" if name == "blstm" else "in_channels"
    return build_model(name, **{**SMOKE_CONFIGS[name], key: channels, "sources": sources})


@pytest.mark.parametrize("name", ["blstm", "hourglass"])
@pytest.mark.parametrize("sources, channels", [(3, 1), (2, 2)])
def test_multi_source_masks_have_a_sources_axis_and_sum_to_one(
    name: str, sources: int, channels: int
) -> None:
    model = multi_model(name, sources, channels).eval()
    batch, _, bins, frames = SMOKE_INPUT_SHAPES[name]
    x = torch.rand(batch, channels, bins, frames, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        masks = model(x)
    assert masks.shape == (batch, sources, channels, bins, frames)
    assert ((masks > 0) & (masks < 1)).all()
    torch.testing.assert_close(masks.sum(dim=1), torch.ones_like(x))
    assert masks.std(dim=1).mean() > 1e-4  # not just 1 / sources everywhere


def test_blstm_multi_source_layout_is_source_channel_bin() -> None:
    """The decoder's outputs are read as (sources, channels, bins): set them by hand."""
    model = BLSTM(n_bins=5, channels=2, hidden=8, layers=1, sources=3).eval()
    logits = torch.randn(3, 2, 5, generator=torch.Generator().manual_seed(3))
    norm = model.decoder2_norm
    assert isinstance(norm, torch.nn.BatchNorm1d)
    with torch.no_grad():
        model.decoder2.weight.zero_()  # eval batch norm of 0 is its bias
        norm.bias.copy_(logits.flatten())
        masks = model(torch.rand(1, 2, 5, 4))
    expected = torch.softmax(logits, dim=0)[None, ..., None].expand(1, 3, 2, 5, 4)
    torch.testing.assert_close(masks, expected)


def test_hourglass_multi_source_layout_is_source_channel() -> None:
    """The mask conv's maps are read as (sources, channels): set their biases by hand."""
    model = Hourglass(**{**SMALL_HOURGLASS, "in_channels": 2, "sources": 3}).eval()
    logits = torch.randn(3, 2, generator=torch.Generator().manual_seed(3))
    last = model.final[-1]
    assert isinstance(last, torch.nn.Conv2d) and last.bias is not None
    with torch.no_grad():
        last.weight.zero_()
        last.bias.copy_(logits.flatten())
        masks = model(torch.rand(1, 2, 8, 8))
    expected = torch.softmax(logits, dim=0)[None, :, :, None, None].expand(1, 3, 2, 8, 8)
    torch.testing.assert_close(masks, expected)


@pytest.mark.parametrize("name", ["blstm", "hourglass"])
def test_one_source_keeps_the_old_state_dict_and_output(name: str) -> None:
    """``sources=1`` is the old model: same keys and shapes, old weights load strictly."""
    torch.manual_seed(0)
    old = build_model(name, **SMOKE_CONFIGS[name]).eval()  # no ``sources`` argument
    new = build_model(name, **SMOKE_CONFIGS[name], sources=1).eval()
    old_shapes = {k: v.shape for k, v in old.state_dict().items()}
    assert {k: v.shape for k, v in new.state_dict().items()} == old_shapes
    new.load_state_dict(old.state_dict())
    x = smoke_batch(name)
    with torch.no_grad():
        torch.testing.assert_close(new(x), old(x), rtol=0, atol=0)
    assert model_config(old)["sources"] == 1
    # several sources: the same parameter names, only the mask layer grows
    multi = build_model(name, **SMOKE_CONFIGS[name], sources=4)
    grown = {k for k, v in multi.state_dict().items() if v.shape != old_shapes[k]}
    assert set(multi.state_dict()) == set(old_shapes)
    last = {"blstm": "decoder2", "hourglass": "final.2"}[name]
    assert grown and all(k.startswith(last) for k in grown), grown


@pytest.mark.parametrize("name", ["blstm", "hourglass"])
def test_multi_source_config_round_trip(name: str) -> None:
    model = multi_model(name, 3)
    config = model_config(model)
    assert config["sources"] == 3
    assert source_count(build_model(name, **config)) == 3


@pytest.mark.parametrize("name", ["blstm", "hourglass"])
def test_zero_sources_are_rejected(name: str) -> None:
    with pytest.raises(ValueError, match="sources=0"):
        build_model(name, **SMOKE_CONFIGS[name], sources=0)


def test_source_count_sees_through_log_magnitude() -> None:
    blstm3 = BLSTM(n_bins=9, hidden=4, layers=1, sources=3)
    assert source_count(blstm3) == 3
    assert source_count(LogMagnitude(blstm3)) == 3
    assert LogMagnitude(blstm3).sources == 3
    assert source_count(LogMagnitude(Hourglass(**SMALL_HOURGLASS, sources=2))) == 2
    assert source_count(LogMagnitude(Hourglass(**SMALL_HOURGLASS))) == 1
    assert source_count(ActivationCNN(n_bins=16, filters=(2, 2, 2))) == 1  # no attribute
    assert source_count(torch.nn.Identity()) == 1


def test_multi_source_blstm_trains_with_mse() -> None:
    """Every weight gets a gradient and a few steps lower Open-Unmix's MSE."""
    model = multi_model("blstm", 3).train()
    g = torch.Generator().manual_seed(2)
    x = smoke_batch("blstm")
    share = torch.softmax(3 * torch.randn(x.shape[0], 3, *x.shape[1:], generator=g), dim=1)
    targets = share * x[:, None]
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    losses = []
    for _ in range(15):
        opt.zero_grad()
        loss = mask_loss(model(x), x, targets, kind="mse")
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.75 * losses[0], losses
    for name, p in model.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name
        assert p.grad.abs().sum() > 0, name


# --- BLSTM input statistics ------------------------------------------------------------


def normalised_input(model: BLSTM, x: torch.Tensor) -> torch.Tensor:
    """What the encoder sees for ``x``, as ``(batch * frames, channels, max_bin)``."""
    seen: list[torch.Tensor] = []
    hook = model.encoder.register_forward_pre_hook(lambda _m, args: seen.append(args[0]))
    with torch.no_grad():
        model.eval()(x)
    hook.remove()
    return seen[0].view(-1, model.channels, model.max_bin)


@pytest.mark.parametrize("stats_shape", ["bins", "channels_bins"])
def test_set_input_stats_standardises_the_input(stats_shape: str) -> None:
    torch.manual_seed(0)
    n_bins, max_bin = 12, 8
    model = BLSTM(n_bins=n_bins, channels=2, hidden=8, layers=1, max_bin=max_bin)
    g = torch.Generator().manual_seed(4)
    mean = 5 * torch.rand(n_bins, generator=g)
    std = 0.1 + 3 * torch.rand(n_bins, generator=g)
    x = mean[:, None] + std[:, None] * torch.randn(6, 2, n_bins, 50, generator=g)
    if stats_shape == "bins":
        data_mean, data_std = x.mean(dim=(0, 1, 3)), x.std(dim=(0, 1, 3))
    else:  # per channel, (channels, n_bins)
        data_mean = x.mean(dim=(0, 3))
        data_std = x.std(dim=(0, 3))
    before = normalised_input(model, x)
    assert before.mean(dim=(0, 1)).abs().max() > 1  # init 0 / 1: not standardised
    model.set_input_stats(data_mean, data_std)
    after = normalised_input(model, x)
    assert after.shape == (6 * 50, 2, max_bin)
    torch.testing.assert_close(after.mean(dim=(0, 1)), torch.zeros(max_bin), atol=0.05, rtol=0)
    torch.testing.assert_close(after.std(dim=(0, 1)), torch.ones(max_bin), atol=0.05, rtol=0)
    assert model.input_scale is not None and model.input_scale.requires_grad


def test_set_input_stats_clamps_silent_bins_and_checks_arguments() -> None:
    model = BLSTM(n_bins=6, hidden=4, layers=1, max_bin=4)
    model.set_input_stats(torch.arange(6.0), torch.tensor([2.0, 0.0, 1e-6, 0.5, 9.0, 9.0]))
    assert model.input_mean is not None and model.input_scale is not None
    torch.testing.assert_close(model.input_mean.data, -torch.arange(4.0))
    torch.testing.assert_close(model.input_scale.data, torch.tensor([0.5, 1e4, 1e4, 2.0]))
    with pytest.raises(ValueError, match=r"n_bins=6.*got \(4,\)"):
        model.set_input_stats(torch.zeros(4), torch.ones(4))
    with pytest.raises(ValueError, match="input_norm=False"):
        BLSTM(n_bins=6, hidden=4, layers=1, input_norm=False).set_input_stats(
            torch.zeros(6), torch.ones(6)
        )


# --- mask_loss -------------------------------------------------------------------------


def test_mask_loss_known_values() -> None:
    mix = torch.tensor([[[[2.0, 4.0], [0.0, 1.0]]]])
    target = torch.tensor([[[[1.0, 4.0], [0.0, 0.0]]]])
    mask = torch.full_like(mix, 0.5)
    # errors 0, -2, 0, 0.5: l1 2.5 / 4, mse (4 + 0.25) / 4
    assert mask_loss(mask, mix, target).item() == pytest.approx(0.625)
    assert mask_loss(mask, mix, target, kind="mse").item() == pytest.approx(1.0625)
    assert mask_loss(mask, torch.zeros_like(mix), torch.zeros_like(mix), kind="mse").item() == 0


@pytest.mark.parametrize("kind", ["l1", "mse"])
def test_mask_loss_matches_numpy_and_broadcasts_the_mixture(kind: MaskLoss) -> None:
    rng = np.random.default_rng(5)
    mask = rng.random((2, 3, 2, 4, 5))
    mix = rng.random((2, 2, 4, 5))
    target = rng.random((2, 3, 2, 4, 5))
    dist = np.abs if kind == "l1" else np.square
    per_source = [dist(mask[:, s] * mix - target[:, s]).mean() for s in range(3)]
    got = mask_loss(torch.from_numpy(mask), torch.from_numpy(mix), torch.from_numpy(target),
                    kind=kind)  # fmt: skip
    assert got.item() == pytest.approx(float(np.mean(per_source)), rel=1e-6)
    single = mask_loss(torch.from_numpy(mask[:, 1]), torch.from_numpy(mix),
                       torch.from_numpy(target[:, 1]), kind=kind)  # fmt: skip
    assert single.item() == pytest.approx(float(per_source[1]), rel=1e-6)
    if kind == "l1":
        assert masked_l1(torch.from_numpy(mask), torch.from_numpy(mix),
                         torch.from_numpy(target)).item() == pytest.approx(got.item())  # fmt: skip


@pytest.mark.parametrize(
    "mask, mix, target",
    [
        ((2, 3, 1, 4, 5), (2, 3, 1, 4, 5), (2, 3, 1, 4, 5)),  # mixture with a sources axis
        ((2, 3, 1, 4, 5), (2, 1, 4, 5), (2, 2, 1, 4, 5)),  # sources differ
        ((2, 3, 1, 4, 5), (2, 1, 4, 6), (2, 3, 1, 4, 5)),  # frames differ
        ((2, 1, 4, 5), (2, 1, 4, 5), (2, 1, 1, 4, 5)),  # single mask, multi target
        ((4, 5), (4, 5), (4, 5)),  # no batch / channel axes
    ],
)
def test_mask_loss_rejects_other_shapes_naming_them(
    mask: tuple[int, ...], mix: tuple[int, ...], target: tuple[int, ...]
) -> None:
    with pytest.raises(ValueError, match="got mask") as err:
        mask_loss(torch.rand(mask), torch.rand(mix), torch.rand(target))
    assert f"mix_mag {mix}" in str(err.value) and f"target_mag {target}" in str(err.value)


def test_mask_loss_rejects_unknown_kinds() -> None:
    a = torch.rand(1, 1, 2, 2)
    with pytest.raises(ValueError, match="'l2'"):
        mask_loss(a, a, a, kind="l2")  # type: ignore[arg-type]
