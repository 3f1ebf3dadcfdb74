"""Least-squares layer-wise initialisation of the frame DNN (seed 000), without Ray.

Seed 000 starts each layer of its network from the closed-form linear least-squares map
from the layer's input ``x`` to the target frame ``s``:

    W = C_sx C_xx^-1,   b = mean(s) - W mean(x)

with the centred covariances ``C_xx = E[x x^T] - mean(x) mean(x)^T`` and
``C_sx = E[s x^T] - mean(s) mean(x)^T``. They come from five sums over every training
frame, :class:`LSSums` (``n``, ``sum x``, ``sum s``, ``sum x x^T``, ``sum s x^T``) in
float64, which add up across blocks of data: the train job computes one per block of the
training set with Ray Data and adds them (``ray_jobs.trainer.ls_initialise``); here are
the per-block sums (:func:`partial_sums`, :func:`block_sums`) and the solve
(:func:`solve`). A ridge ``lambda * trace(C_xx) / dim * I`` keeps ``C_xx`` invertible
(silent bins, padded frames, dead ReLUs).

Layers are initialised in order: layer ``k``'s inputs are the outputs (after the
activation) of layers ``0 .. k - 1`` as already initialised, so each initialised layer
needs one pass over the data. Only layers whose output width is the target width
(``sources * max_bin``: every source's bins of the frame, the stacked target of a
multi-stem model) can map to the target; the others keep their random initialisation.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch


@dataclass
class LSSums:
    """The sums of one block (or of all): ``n`` frames, ``sx (d,)``, ``ss (m,)``,
    ``sxx (d, d)``, ``ssx (m, d)``, float64."""

    n: float
    sx: np.ndarray
    ss: np.ndarray
    sxx: np.ndarray
    ssx: np.ndarray

    def __add__(self, other: LSSums) -> LSSums:
        return LSSums(self.n + other.n, self.sx + other.sx, self.ss + other.ss, self.sxx + other.sxx,
                      self.ssx + other.ssx)  # fmt: skip

    def to_row(self) -> dict[str, np.ndarray]:
        """One row of a numpy batch (each value with a leading axis of 1), for Ray Data."""
        return {"n": np.array([self.n]), "sx": self.sx[None], "ss": self.ss[None], "sxx": self.sxx[None],
                "ssx": self.ssx[None]}  # fmt: skip

    @staticmethod
    def from_rows(batch: dict[str, Any]) -> LSSums:
        """The sum of the rows of a numpy batch written by :meth:`to_row`."""
        return LSSums(float(np.sum(batch["n"])), *(np.asarray(batch[k], dtype=np.float64).sum(axis=0)
                                                   for k in ("sx", "ss", "sxx", "ssx")))  # fmt: skip


def partial_sums(x: np.ndarray | torch.Tensor, s: np.ndarray | torch.Tensor) -> LSSums:
    """The sums of frames ``x (n, d)`` (layer inputs) and ``s (n, m)`` (targets), in float64."""
    x = torch.as_tensor(x).detach().to("cpu", torch.float64)
    s = torch.as_tensor(s).detach().to("cpu", torch.float64)
    if x.ndim != 2 or s.ndim != 2 or x.shape[0] != s.shape[0]:
        raise ValueError(f"x (n, d) and s (n, m) need the same rows, got {tuple(x.shape)} and {tuple(s.shape)}")
    return LSSums(float(x.shape[0]), x.sum(0).numpy(), s.sum(0).numpy(), (x.T @ x).numpy(), (s.T @ x).numpy())


def total(parts: Iterable[LSSums]) -> LSSums:
    """The sum of several blocks' sums (ValueError when there are none)."""
    out: LSSums | None = None
    for part in parts:
        out = part if out is None else out + part
    if out is None:
        raise ValueError("no data: the least-squares sums cover no frame")
    return out


def solve(sums: LSSums, ridge: float = 1e-3) -> tuple[np.ndarray, np.ndarray]:
    """``W (m, d)`` and ``b (m,)`` of the least-squares map ``s ~ W x + b`` (float64).

    ``ridge``: ``lambda`` of the ridge term ``lambda * trace(C_xx) / d * I`` added to ``C_xx``
    (0: none; then ``C_xx`` must be invertible).
    """
    if sums.n < 1:
        raise ValueError("no data: the least-squares sums cover no frame")
    mx, ms = sums.sx / sums.n, sums.ss / sums.n
    cxx = sums.sxx / sums.n - np.outer(mx, mx)
    csx = sums.ssx / sums.n - np.outer(ms, mx)
    d = cxx.shape[0]
    cxx = cxx + ridge * max(float(np.trace(cxx)) / d, 1e-12) * np.eye(d)
    w = np.linalg.solve(cxx, csx.T).T  # C_xx symmetric: W C_xx = C_sx
    return w, ms - w @ mx


def ls_layers(model: Any) -> list[int]:
    """Indices of ``model.layers`` that map to the target (output width ``model.target_width``)."""
    return [k for k, lin in enumerate(model.layers) if lin.out_features == model.target_width]


def block_sums(model: Any, mix: torch.Tensor, target: torch.Tensor, layer: int) -> LSSums:
    """The sums of one batch of chunks for layer ``layer`` of a frame DNN (its inputs through the
    layers before it, its target the target frames in output units).

    Shape: ``mix`` ``(batch, channels, bins, frames)``, ``target`` the same or, for a
    multi-stem model, ``(batch, sources, channels, bins, frames)``.
    """
    with torch.no_grad():
        x, scale = model.layer_inputs(mix, layer)
        return partial_sums(x, model.frame_targets(target, scale))


def set_layer(model: Any, layer: int, w: np.ndarray, b: np.ndarray) -> None:
    """Copy ``W``, ``b`` into ``model.layers[layer]`` (cast to its dtype and device)."""
    lin = model.layers[layer]
    with torch.no_grad():
        lin.weight.copy_(torch.from_numpy(w).to(lin.weight))
        lin.bias.copy_(torch.from_numpy(b).to(lin.bias))


def layer_report(model: Any, initialised: Sequence[int]) -> list[dict[str, Any]]:
    """How each layer started: ``{"layer", "in", "out", "init": "ls" | "random"}``."""
    return [{"layer": k, "in": lin.in_features, "out": lin.out_features, "init": "ls" if k in initialised else "random"}
            for k, lin in enumerate(model.layers)]  # fmt: skip


def initialise(model: Any, batches: Any, ridge: float = 1e-3) -> list[int]:
    """Least-squares initialise ``model``'s target-width layers in one process (tests, small data).

    ``batches``: a callable returning a fresh iterable of ``(mix, target)`` tensors (one pass
    per initialised layer). Returns the initialised layers' indices.
    """
    done = []
    for layer in ls_layers(model):
        w, b = solve(total(block_sums(model, m, t, layer) for m, t in batches()), ridge)
        set_layer(model, layer, w, b)
        done.append(layer)
    return done


def rows_sums(batch: dict[str, Any], model_meta: dict[str, Any], state: dict[str, Any], layer: int,
              shapes: dict[str, Any], dtype: str) -> dict[str, np.ndarray]:  # fmt: skip
    """The sums of a numpy batch of prepared rows (``mix`` and ``target`` bytes, or ``targets``
    for a multi-stem model) for layer ``layer``, as one row (:meth:`LSSums.to_row`): the map of
    the map-reduce (``ray_jobs.trainer.ls_initialise``).

    ``model_meta``, ``state``: the frame DNN (a checkpoint's ``meta["model"]``) and its weights
    so far, rebuilt here on the CPU.
    """
    from sepcore.models.checkpoint import build
    from sepcore.train.loop import decode_batch

    model = build(model_meta)
    model.load_state_dict(state)
    column = "targets" if int(getattr(model, "sources", 1)) > 1 else "target"
    data = decode_batch(batch, shapes, dtype, ("mix", column))
    return block_sums(model.eval(), data["mix"], data[column], layer).to_row()
