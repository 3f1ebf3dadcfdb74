"""The multichannel Wiener filter (EM) and the mixture consistency projection."""

from __future__ import annotations

import numpy as np
import pytest

from sepcore.separate.wiener import consistent_masks, mixture_consistency, wiener


def spectra(shape: tuple[int, ...], seed: int = 0) -> np.ndarray:
    """Circular complex Gaussian STFT values (independent sources)."""
    rng = np.random.default_rng(seed)
    return (rng.standard_normal(shape) + 1j * rng.standard_normal(shape)).astype(np.complex64)


def test_iterations_0_is_the_soft_mask_of_the_magnitudes():
    x = spectra((2, 17, 40))
    mags = np.abs(spectra((3, 2, 17, 40), seed=1))
    got = wiener(mags, x, iterations=0)
    assert got.shape == (3, 2, 17, 40) and got.dtype == np.complex64
    np.testing.assert_allclose(got, mags / mags.sum(axis=0) * x, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("iterations", [0, 1, 3])
@pytest.mark.parametrize("mode", ["power", "equal"])
def test_consistent_stems_add_up_to_the_mixture(iterations, mode):
    x = spectra((2, 17, 40)) * 50.0  # beyond the scaling threshold
    mags = np.abs(spectra((4, 2, 17, 40), seed=2))
    y = wiener(mags, x, iterations=iterations)
    if iterations:  # the filter alone does not sum exactly (regularisation)
        assert not np.array_equal(y.sum(axis=0), x)
    fixed = mixture_consistency(y, x, mode)
    np.testing.assert_allclose(fixed.sum(axis=0), x, rtol=0, atol=1e-4)


def test_consistent_masks_are_the_projection_of_masked_stems():
    rng = np.random.default_rng(3)
    masks = rng.uniform(0, 1, (3, 1, 9, 12)).astype(np.float32)
    masks[:, :, 0, 0] = 0.0  # all silent somewhere: equal shares
    x = spectra((2, 9, 12), seed=4)
    fixed = consistent_masks(masks)
    np.testing.assert_allclose(fixed.sum(axis=0), 1.0, atol=1e-6)
    np.testing.assert_allclose(fixed[:, 0, 0, 0], 1.0 / 3.0, atol=1e-7)
    np.testing.assert_allclose(fixed * x, mixture_consistency(masks * x, x), atol=1e-5)


def test_the_spatial_model_separates_sources_in_different_channels():
    """Source 1 only in the left channel, source 2 only in the right: from estimates that
    leak half of the other source, EM learns the spatial covariances and separates (what
    is left, about 1 / sqrt(frames), is the chance correlation of the two sources)."""
    s1, s2 = spectra((33, 300), seed=5), spectra((33, 300), seed=6)
    zero = np.zeros_like(s1)
    truth = np.stack([np.stack([s1, zero]), np.stack([zero, s2])])  # (2, 2, 33, 300)
    x = truth.sum(axis=0)
    mags = np.abs(truth) + 0.5 * np.abs(truth[::-1])  # each estimate leaks the other

    def error(y: np.ndarray) -> float:
        return float(np.linalg.norm(y - truth) / np.linalg.norm(truth))

    errors = [error(mixture_consistency(wiener(mags, x, iterations=i), x)) for i in range(5)]
    assert errors[0] > 0.45 and errors[4] < 0.07, errors
    assert all(a > b for a, b in zip(errors[:-1], errors[1:], strict=True)), errors


def test_segments_follow_the_grid_of_the_offset():
    """A block starting at frame 100 of a signal filters the same segments as the whole."""
    x = spectra((2, 9, 500), seed=7)
    mags = np.abs(spectra((3, 2, 9, 500), seed=8))
    whole = wiener(mags, x, iterations=2, segment=200)
    part = wiener(mags[..., 200:], x[..., 200:], iterations=2, segment=200, offset=200)
    np.testing.assert_allclose(part, whole[..., 200:], rtol=1e-5, atol=1e-6)
    shifted = wiener(mags[..., 100:], x[..., 100:], iterations=2, segment=200, offset=100)
    np.testing.assert_allclose(shifted[..., 100:], whole[..., 200:], rtol=1e-5, atol=1e-6)
    assert not np.allclose(wiener(mags[..., 100:], x[..., 100:], 2, segment=200)[..., 100:],
                           whole[..., 200:])  # fmt: skip


@pytest.mark.parametrize("channels", [1, 2, 3])
def test_silence_gives_finite_silent_stems(channels):
    x = np.zeros((channels, 9, 20), np.complex64)
    mags = np.zeros((3, channels, 9, 20), np.float32)
    for iterations in (0, 2):
        y = mixture_consistency(wiener(mags, x, iterations=iterations), x)
        assert np.isfinite(y).all() and not y.any()


def test_wrong_shapes_raise_with_the_sizes():
    with pytest.raises(ValueError, match=r"\(3, 2, 9, 20\)"):
        wiener(np.zeros((3, 2, 9, 20)), np.zeros((1, 9, 20), np.complex64))
