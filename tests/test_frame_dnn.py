"""The frame DNN (seed 000) and its least-squares initialisation: shapes, the closed form against
numpy's lstsq, the Ray Data map-reduce against one process, LS against random init, snippets."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from sepcore.models import build_model
from sepcore.train import ls_init as LS
from sepcore.train.outputs import snippet_rows


def small(**kw):  # type: ignore[no-untyped-def]
    config = dict(n_bins=20, channels=2, context=2, max_bin=12, layers=3, width=8) | kw
    return build_model("frame_dnn", **config)


def test_shapes_mask_and_estimate():
    model = small()
    mix = torch.rand(3, 2, 20, 10)
    mask = model(mix).detach()
    assert mask.shape == mix.shape and float(mask.min()) >= 0.0 and float(mask.max()) <= 1.0
    assert torch.equal(mask[:, :, 12:], mask[:, :, 11:12].expand(-1, -1, 8, -1))  # top mask extended
    assert model(mix, training_output=True).shape == (3, 2, 12, 10)
    for kind in ("mse", "l1"):
        loss = model.training_loss(model(mix, training_output=True), mix, 0.5 * mix, kind)
        loss.backward()
        assert loss.ndim == 0 and loss.item() > 0
    x, scale = model.features(mix)
    assert x.shape == (3 * 2 * 10, 5 * 12) and scale.shape == (60, 1)
    with pytest.raises(ValueError, match="sources must be >= 1"):
        small(sources=0)
    with pytest.raises(ValueError, match="bins=20"):
        model(torch.rand(1, 2, 19, 4))


def test_several_sources_one_mask_and_estimate_each():
    model = small(sources=3, width=None)
    assert model.target_width == 36 and [lin.out_features for lin in model.layers] == [36, 36, 36]
    mix = torch.rand(2, 2, 20, 5)
    mask = model(mix).detach()
    assert mask.shape == (2, 3, 2, 20, 5) and float(mask.min()) >= 0.0 and float(mask.max()) <= 1.0
    est = model(mix, training_output=True)
    assert est.shape == (2, 3, 2, 12, 5)
    # estimate and frame_targets use one layout: the targets' rows rebuilt into an estimate are the targets
    targets = torch.rand(2, 3, 2, 20, 5)
    _, scale = model.features(mix)
    rows = model.frame_targets(targets, scale) * scale
    back = rows.reshape(2, 2, 5, 3, 12).permute(0, 3, 1, 4, 2)
    torch.testing.assert_close(back, targets[..., :12, :])
    assert model.training_loss(targets[..., :12, :], mix, targets, "mse").item() == 0.0
    with pytest.raises(ValueError, match="3 source"):
        model.frame_targets(targets[:, 0], scale)


def test_context_stacks_neighbour_frames_with_zero_edges():
    model = small(channels=1, normalize=False)
    mix = torch.arange(20 * 4, dtype=torch.float32).reshape(1, 1, 20, 4)
    x, scale = model.features(mix)
    frames = x.reshape(4, 5, 12)  # (frame, context offset -2..2, bin)
    assert torch.equal(frames[1, 2], mix[0, 0, :12, 1]) and torch.equal(frames[1, 3], mix[0, 0, :12, 2])
    assert torch.equal(frames[0, 0], torch.zeros(12)) and torch.equal(frames[3, 4], torch.zeros(12))
    assert torch.equal(scale, torch.ones(4, 1))


def test_solution_matches_numpy_lstsq():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(200, 6)) + 3.0
    s = x @ rng.normal(size=(6, 4)) + 0.1 * rng.normal(size=(200, 4)) - 1.0
    sums = LS.total([LS.partial_sums(x[:70], s[:70]), LS.partial_sums(x[70:], s[70:])])
    w, b = LS.solve(sums, ridge=1e-12)
    ref, *_ = np.linalg.lstsq(np.hstack([x, np.ones((200, 1))]), s, rcond=None)
    np.testing.assert_allclose(w, ref[:6].T, rtol=1e-6, atol=1e-8)
    np.testing.assert_allclose(b, ref[6], rtol=1e-6, atol=1e-8)


def rows_of(mix: np.ndarray, target: np.ndarray) -> list[dict[str, bytes]]:
    return [{"mix": m.astype(np.float16).tobytes(), "target": t.astype(np.float16).tobytes()} for m, t in zip(mix, target, strict=True)]  # fmt: skip


def test_ray_map_reduce_equals_one_process(local_ray):
    import ray

    from ray_jobs.trainer import ls_sums
    from sepcore.train.loop import decode_batch

    rng = np.random.default_rng(1)
    mix = rng.random((9, 1, 20, 6)).astype(np.float32)
    target = (mix * rng.random(mix.shape)).astype(np.float32)
    shapes = {"mix": [1, 20, 6], "target": [1, 20, 6]}
    model = small(channels=1, width=12)
    meta = {"name": "frame_dnn", "config": model.config}
    ds = ray.data.from_items(rows_of(mix, target), override_num_blocks=3)
    data = decode_batch({k: [r[k] for r in rows_of(mix, target)] for k in ("mix", "target")}, shapes, "float16",
                        ("mix", "target"))  # fmt: skip
    got = ls_sums(ds, meta, model.state_dict(), 1, shapes, "float16")  # layer 1: through layer 0
    want = LS.block_sums(model, data["mix"], data["target"], 1)
    assert got.n == want.n == 9 * 6
    for key in ("sx", "ss", "sxx", "ssx"):
        np.testing.assert_allclose(getattr(got, key), getattr(want, key), rtol=1e-9, atol=1e-9)


def test_ls_start_beats_random_start_on_a_linear_problem():
    torch.manual_seed(0)
    gen = torch.Generator().manual_seed(2)
    mix = torch.rand(8, 1, 20, 16, generator=gen)
    gains = torch.rand(1, 1, 20, 1, generator=gen)
    target = mix * gains  # a fixed filter: linear in the centre frame
    model = small(channels=1, activation="linear", normalize=False, width=12)
    loss_random = model.training_loss(model(mix, training_output=True), mix, target, "mse").item()
    done = LS.initialise(model, lambda: [(mix[:4], target[:4]), (mix[4:], target[4:])], ridge=1e-9)
    assert done == [0, 1, 2]
    loss_ls = model.training_loss(model(mix, training_output=True), mix, target, "mse").item()
    assert loss_ls < 1e-6 < loss_random
    assert [x["init"] for x in LS.layer_report(small(), [2])] == ["random", "random", "ls"]


def test_ls_start_fits_every_source_of_a_multi_stem_model():
    gen = torch.Generator().manual_seed(3)
    mix = torch.rand(6, 1, 20, 12, generator=gen)
    gains = torch.rand(3, 1, 20, 1, generator=gen)
    targets = mix.unsqueeze(1) * gains  # (batch, 3 sources, 1, 20, frames), a filter per source
    assert LS.ls_layers(small(sources=3, width=8)) == [2]  # hidden layers of another width: random
    model = small(channels=1, activation="linear", normalize=False, sources=3, width=None)
    assert LS.ls_layers(model) == [0, 1, 2]
    LS.initialise(model, lambda: [(mix, targets)], ridge=1e-9)
    assert model.training_loss(model(mix, training_output=True), mix, targets, "mse").item() < 1e-6


def test_snippets_per_song_draws_rows_per_song_across_its_shards():
    manifest = {"shards": [{"uri": "a0", "split": "train", "track_id": "A", "rows": 5},
                           {"uri": "a1", "split": "train", "track_id": "A", "rows": 5},
                           {"uri": "b0", "split": "train", "track_id": "B", "rows": 2},
                           {"uri": "v0", "split": "validation", "track_id": "V", "rows": 9}]}  # fmt: skip
    keep = snippet_rows(manifest, 3, seed=0)
    assert set(keep) == {"a0", "a1", "b0"}
    assert len(keep["a0"]) + len(keep["a1"]) == 3 and keep["b0"] == [0, 1]
    assert keep == snippet_rows(manifest, 3, seed=0) and all(r < 5 for r in keep["a0"] + keep["a1"])
