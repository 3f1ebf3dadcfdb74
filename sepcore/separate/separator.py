"""The separator interface of the one apply: a waveform at a rate in, named stems out.

``separate``, ``evaluate`` (and ``serve``) use only this interface; two kinds implement it:

* :class:`MaskSeparator`: the project's mask models (a checkpoint folder or a training
  output), through :func:`sepcore.separate.apply.iter_separate_blocks` (STFT, chunked
  masks, optional Wiener filter);
* :class:`sepcore.separate.demucs.DemucsSeparator`: Demucs models (``demucs:<name>`` or a
  ``.th`` file), through Demucs's own ``apply_model`` with its normalisation.

A separator has

* ``sample_rate``: the rate it separates at (audio must be resampled to it first);
* ``stems``: the names of everything it computes, in order;
* ``residual``: the stem that is by definition the input minus the others (a mask model's
  ``rest`` / ``other``), or None (Demucs: every stem as the model makes it). The separate
  job writes the residual as the input minus the other stems at the output rate, so the
  files add up to the input exactly;
* ``iter_blocks(audio, block_seconds)``: ``(start_sample, {stem: (channels, block)})``
  blocks in bounded memory, the same result as one pass over the whole signal;
* ``separate(audio, block_seconds)``: the same gathered into whole arrays.

``audio`` is ``(channels, samples)`` at ``sample_rate``; the stems have the audio's channels.

:func:`describe` reads what a ``checkpoint`` reference is (its meta) without the weights
when it can; :func:`load` loads its model once (the separate job's driver: its actors get
the model through Ray's object store, not from storage) and :func:`from_model` makes the
separator of a loaded model with the separate job's settings; :func:`build` is the two.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any, Protocol, runtime_checkable

import numpy as np
import torch
from torch import nn

from sepcore.separate import demucs as D
from sepcore.separate.blocks import gather_blocks  # re-exported: the blocks of any separator
from sepcore.units import Seconds


@runtime_checkable
class Separator(Protocol):
    """Anything that maps a waveform ``(channels, samples)`` at ``sample_rate`` to named stems."""

    sample_rate: int
    stems: tuple[str, ...]
    residual: str | None

    def iter_blocks(self, audio: Any, block_seconds: Seconds = 60.0) -> Iterator[tuple[int, dict[str, np.ndarray]]]: ...

    def separate(self, audio: np.ndarray, block_seconds: Seconds = 60.0) -> dict[str, np.ndarray]: ...


class MaskSeparator:
    """A mask model (:class:`sepcore.separate.apply.MaskModel`) as a separator.

    The arguments are those of :func:`sepcore.separate.apply.separate`; ``stems`` names
    a model of several sources (:func:`sepcore.separate.apply.stem_names`). The last stem
    (``rest``, ``other``) is the residual.
    """

    def __init__(self, model: nn.Module, sample_rate: int, n_fft: int, hop: int, frames: int,
                 batch_size: int = 8, device: str | torch.device | None = None, overlap: float = 0.5,
                 stems: Sequence[str] | None = None, wiener_iterations: int = 0):  # fmt: skip
        from sepcore.separate.apply import stem_names

        self.model, self.sample_rate = model, int(sample_rate)
        self.n_fft, self.hop, self.frames = n_fft, hop, frames
        self.batch_size, self.device, self.overlap = batch_size, device, overlap
        self.wiener_iterations = wiener_iterations
        self.stems: tuple[str, ...] = stem_names(model, stems)
        self.residual: str | None = self.stems[-1]
        self._names = None if stems is None else list(stems)

    @classmethod
    def of(cls, model: nn.Module, settings: Any) -> MaskSeparator:
        """The separator of ``model`` with the separate job's settings
        (:class:`sepcore.separate.config.SeparationSettings`)."""
        return cls(model, settings.model_rate, settings.n_fft, settings.hop, settings.frames, settings.batch_size,
                   settings.device, settings.overlap, settings.model_stems or None,
                   settings.wiener_iterations)  # fmt: skip

    def iter_blocks(self, audio: Any, block_seconds: Seconds = 60.0) -> Iterator[tuple[int, dict[str, np.ndarray]]]:
        from sepcore.separate.apply import iter_separate_blocks

        return iter_separate_blocks(self.model, audio, self.sample_rate, self.n_fft, self.hop, self.frames,
                                    block_seconds, self.batch_size, self.device, self.overlap, self._names,
                                    self.wiener_iterations)  # fmt: skip

    def separate(self, audio: np.ndarray, block_seconds: Seconds = 60.0) -> dict[str, np.ndarray]:
        return gather_blocks(self, audio, block_seconds)


def as_separator(model: nn.Module | Separator, settings: Any) -> Separator:
    """``model`` itself when it is a separator, else its :class:`MaskSeparator` with ``settings``."""
    if isinstance(model, Separator):
        return model
    return MaskSeparator.of(model, settings)


def describe(ref: str) -> dict[str, Any]:
    """The meta of a ``checkpoint`` reference: a Demucs model's (:func:`sepcore.separate.demucs.load`:
    the model is loaded to hash its weights) or a checkpoint folder's ``meta.json``.
    Raises :class:`~sepcore.models.checkpoint.CheckpointError` naming the reference."""
    from sepcore.models import checkpoint

    if D.is_demucs(ref):
        return D.load(ref)[1]
    return checkpoint.read_meta(checkpoint.resolve(ref))


def load(ref: str, device: str | torch.device = "cpu") -> tuple[nn.Module, dict[str, Any]]:
    """The model of a ``checkpoint`` reference and its meta, loaded once: a Demucs model
    (:func:`sepcore.separate.demucs.load`, on the CPU) or the checkpoint's mask model
    (:func:`sepcore.models.checkpoint.load_model`, on ``device``). Raises
    :class:`~sepcore.models.checkpoint.CheckpointError` naming the reference."""
    from sepcore.models import checkpoint

    if D.is_demucs(ref):
        return D.load(ref)
    return checkpoint.load_model(ref, device)


def from_model(model: nn.Module, meta: dict[str, Any], settings: Any,
               device: str | torch.device = "cpu") -> Separator:  # fmt: skip
    """The separator of a model :func:`load` gave (with its ``meta``) and the separate job's
    ``settings``, on ``device``.

    Demucs (``meta["kind"] == "demucs"``): :class:`~sepcore.separate.demucs.DemucsSeparator`
    with ``settings.demucs``; otherwise the mask model as a :class:`MaskSeparator`.
    """
    settings = settings.model_copy(update={"device": str(device)})
    if meta.get("kind") == "demucs":
        opts = settings.demucs
        return D.DemucsSeparator(model, opts.segment, opts.overlap, opts.shifts, device)
    return MaskSeparator.of(model.to(device).eval(), settings)


def build(ref: str, settings: Any, device: str | torch.device = "cpu") -> tuple[Separator, dict[str, Any]]:
    """The separator of a ``checkpoint`` reference with the separate job's ``settings``, and its
    meta: :func:`from_model` of :func:`load`."""
    model, meta = load(ref, device)
    return from_model(model, meta, settings, device), meta
