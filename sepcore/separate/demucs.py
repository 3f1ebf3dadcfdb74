"""Demucs models (the official ``demucs`` package, an optional extra: ``pip install sep[demucs]``)
as separators of the one apply.

A Demucs model is named by a *reference* (:func:`is_demucs`):

* ``demucs:<name>``: a pretrained model (or bag of models) loaded by Demucs's own loader,
  :func:`demucs.pretrained.get_model` (the HuggingFace hub, then Demucs's legacy
  repository; the files are cached in the usual HuggingFace / torch hub folders), so the
  machine needs network access or a filled cache;
* the URI of a ``.th`` file (local path, ``file://`` or ``s3://``): a model in Demucs's
  own serialized format, the dict ``{klass, args, kwargs, state}`` that
  :func:`demucs.states.load_model` reads (for clusters without network: copy the file
  into the bucket once).

:class:`DemucsSeparator` applies a model as Demucs's command line does
(``demucs.api.Separator.separate_tensor``): the input is normalised by the mean and the
standard deviation of the whole file's channel mean (computed in a first, cheap pass),
run through :func:`demucs.apply.apply_model` (segment, overlap and shifts from the
configuration) and de-normalised. It does so in blocks with margins, so a one-hour file
stays in bounded memory: blocks start on the grid of Demucs's own segments (a whole
number of segment strides) and carry :func:`block_margins` samples of context,
enough that every kept sample is made by exactly the segments, padding and
weights of a whole-file ``apply_model``. Without random shifts the blocks therefore give
Demucs's own result to float rounding (``tests/test_demucs.py`` checks 1e-4 relative
error, seams included).

Channels: audio with the model's channel count (2 for every published model) is
separated as it is; mono audio is fed to the model duplicated, as Demucs does, and each
stem is the mean of the model's two output channels, so the stems are mono like the
input. Other channel counts are refused (lay the audio out as mono: ``channels: 1``).
The stems are Demucs's as it makes them: none is recomputed as the input minus the
others (``residual`` None), so they add up to the input only as well as the model does.

Shapes: ``(channels, samples)`` in and out.
"""

from __future__ import annotations

import hashlib
import math
import os
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import numpy as np
import torch

from sepcore.errors import ConfigError
from sepcore.io import storage
from sepcore.models.checkpoint import CheckpointError
from sepcore.units import Seconds, seconds_to_samples

#: Prefix of a pretrained model's name: ``demucs:htdemucs``.
PREFIX = "demucs:"
#: Ending of a model file in Demucs's own format.
SUFFIX = ".th"
#: Samples per channel read at once by the normalisation pass.
READ_BLOCK = 1 << 18
#: Demucs's floor of the standard deviation in its normalisation.
STD_FLOOR = 1e-8
#: Largest random shift of ``apply_model`` (``shifts > 0``), in seconds.
MAX_SHIFT_S = 0.5
#: A Demucs model or bag of models (``demucs.apply.Model | BagOfModels``): duck-typed here,
#: read for ``samplerate``, ``audio_channels``, ``sources``, ``segment`` and ``models``.
DemucsModel = Any


def is_demucs(ref: str) -> bool:
    """Whether a ``checkpoint`` names a Demucs model (``demucs:<name>`` or a ``.th`` file)."""
    return ref.startswith(PREFIX) or ref.lower().endswith(SUFFIX)


def _require_demucs() -> None:
    try:
        import demucs  # noqa: F401
    except ImportError as exc:
        raise ConfigError("checkpoint", "Demucs models need the optional demucs package: "
                          "pip install 'sep[demucs]'") from exc  # fmt: skip


@contextmanager
def _local_file(uri: str) -> Iterator[str]:
    if storage.is_local(uri):
        yield storage.local_path(uri)
    else:
        with storage.local_copy(uri) as path:
            yield path


def load(ref: str) -> tuple[DemucsModel, dict[str, Any]]:
    """The Demucs model (or bag of models) ``ref`` names, in eval mode on the CPU, and its meta.

    The meta is what the jobs read of a checkpoint's: ``kind: demucs``, ``task:
    separator``, ``sample_rate``, ``channels``, ``stems`` (the model's sources, in its
    order), ``targets`` (the same), ``target`` None, ``model_sha256`` (:func:`weights_digest`),
    ``segment`` (the longest segment the model takes, seconds) and ``checkpoint`` (``ref``).
    Raises :class:`~sepcore.models.checkpoint.CheckpointError` naming ``ref`` when the model
    cannot be loaded.
    """
    _require_demucs()
    if ref.startswith(PREFIX):
        name = ref[len(PREFIX) :]
        model = _pretrained(ref, name)
    else:
        ref = storage.normalize_uri(ref)
        model = _from_file(ref)
    model.eval()
    meta = {
        "kind": "demucs",
        "task": "separator",
        "checkpoint": ref,
        "model_class": type(model).__name__,
        "sample_rate": int(model.samplerate),
        "channels": int(model.audio_channels),
        "stems": list(model.sources),
        "targets": list(model.sources),
        "target": None,
        "segment": max_segment(model),
        "model_sha256": weights_digest(model),
    }
    return model, meta


def _pretrained(ref: str, name: str) -> DemucsModel:
    from demucs.pretrained import get_model

    if not name:
        raise CheckpointError(ref, "name a pretrained model, e.g. demucs:htdemucs")
    try:
        return get_model(name)
    except SystemExit as exc:  # demucs.utils.fatal
        raise CheckpointError(ref, f"Demucs cannot load this model ({exc})") from exc
    except Exception as exc:
        raise CheckpointError(ref, f"Demucs cannot load this pretrained model ({type(exc).__name__}: "
                              f"{str(exc).splitlines()[0][:300] if str(exc) else ''}); without "
                              "network, copy its .th file to storage and give checkpoint: "
                              "<uri of the .th file>") from exc  # fmt: skip


def _from_file(uri: str) -> DemucsModel:
    from demucs.states import load_model

    if not storage.exists(uri):
        raise CheckpointError(uri, "no such Demucs model file")
    try:
        with _local_file(uri) as path:
            model = load_model(path)
    except Exception as exc:
        raise CheckpointError(uri, f"not a Demucs model file ({type(exc).__name__}: "
                              f"{str(exc).splitlines()[0][:300] if str(exc) else ''}); expected "
                              "the dict {klass, args, kwargs, state} of demucs.states") from exc  # fmt: skip
    for attr in ("samplerate", "audio_channels", "sources"):
        if not hasattr(model, attr):
            raise CheckpointError(uri, f"the model {type(model).__name__} has no '{attr}': not a Demucs model")
    return model


def save(model: DemucsModel, path: str) -> None:
    """Write ``model`` (built by a Demucs class, so it knows its constructor's arguments) as a
    ``.th`` file that :func:`demucs.states.load_model` and :func:`load` read: the dict
    ``{klass, args, kwargs, state}`` (Demucs's ``serialize_model`` without its training
    arguments, which need omegaconf), float32."""
    args, kwargs = model._init_args_kwargs
    state = {k: v.detach().to("cpu") for k, v in model.state_dict().items()}
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    torch.save({"klass": type(model), "args": args, "kwargs": kwargs, "state": state}, path)


def weights_digest(model: DemucsModel) -> str:
    """SHA-256 of a model's class, constructor arguments, bag weights and every tensor of its
    state, in key order: the same weights give the same digest wherever they were loaded from."""
    h = hashlib.sha256()
    parts = model.models if hasattr(model, "models") else [model]
    h.update(f"{type(model).__name__}:{getattr(model, 'weights', None)!r}".encode())
    for part in parts:
        h.update(f"{type(part).__name__}:{getattr(part, '_init_args_kwargs', None)!r}".encode())
    for key, value in sorted(model.state_dict().items()):
        h.update(key.encode())
        h.update(value.detach().to("cpu", torch.float32).contiguous().numpy().tobytes())
    return h.hexdigest()


def _parts(model: DemucsModel) -> list[DemucsModel]:
    return list(model.models) if hasattr(model, "models") else [model]


def max_segment(model: DemucsModel) -> float:
    """The longest segment (seconds) the model takes: an HT Demucs cannot go past its
    training segment; other models have no limit but their own ``segment``."""
    from demucs.htdemucs import HTDemucs

    limits = [float(m.segment) for m in _parts(model) if isinstance(m, HTDemucs)]
    return min(limits) if limits else max(float(m.segment) for m in _parts(model))


def segment_samples(model: DemucsModel, segment: Seconds | None) -> int:
    """Samples per segment, as :func:`demucs.apply.apply_model` computes them
    (``int(samplerate * segment)``, the model's own segment when None). ConfigError when
    ``segment`` is longer than an HT Demucs takes, or when the models of a bag have
    different segments and none is given."""
    from demucs.htdemucs import HTDemucs

    if segment is None:
        own = {m.segment for m in _parts(model)}
        if len(own) > 1:
            raise ConfigError("demucs.segment", f"the models of this bag have different segments "
                              f"({sorted(float(s) for s in own)} s): set demucs.segment")  # fmt: skip
        return int(model.samplerate * own.pop())
    for m in _parts(model):
        if isinstance(m, HTDemucs) and segment > m.segment:
            raise ConfigError("demucs.segment", f"{segment} s is longer than this HT Demucs takes "
                              f"({float(m.segment):g} s)")  # fmt: skip
    return int(model.samplerate * segment)


def block_margins(length: int, stride: int, shift: int = 0) -> tuple[int, int, int]:
    """Context (samples) before and after a block, and before the block that reaches the end.

    Blocks start on apply_model's segment grid (multiples of ``stride``). A kept sample
    ``t`` is made by the segments starting in ``(t - length, t]``: the first of them starts
    ``stride * floor((length - 1) / stride)`` samples before the block at most (the front
    margin, a whole number of strides so the grid holds), and each must be whole inside
    the block, ``length - stride`` samples past its end at most (the back margin). A
    segment cut short by the end of the signal is padded by apply_model with up to
    ``length / 2`` samples of signal before it, so the block that reaches the end has
    ``ceil(1.5 * length / stride)`` strides before it. Random shifts (``shift`` samples at
    most) add their reach on both sides.
    """
    front = stride * ((length - 1) // stride)
    last_front = stride * math.ceil(1.5 * length / stride)
    extra = stride * math.ceil(shift / stride)
    return front + extra, length - stride + shift, last_front + extra


def normalisation(audio: Any) -> tuple[float, float]:
    """Mean and standard deviation (+1e-8) of the channel mean of ``audio`` ``(channels,
    samples)``, as Demucs's command line computes them (``std`` unbiased), read block by block
    in float64 so a long file never needs to be in memory at once."""
    n = audio.shape[1]
    total = squares = 0.0
    for start in range(0, n, READ_BLOCK):
        ref = np.asarray(audio[:, start : start + READ_BLOCK], dtype=np.float64).mean(axis=0)
        total += float(ref.sum())
        squares += float(np.square(ref).sum())
    mean = total / n
    var = max(squares - n * mean * mean, 0.0) / max(n - 1, 1)
    return mean, math.sqrt(var) + STD_FLOOR


class DemucsSeparator:
    """A Demucs model as a separator (:class:`sepcore.separate.separator.Separator`).

    ``segment`` (seconds, None: the model's), ``overlap`` and ``shifts`` are
    :func:`demucs.apply.apply_model`'s; ``device`` where the model runs (the audio and the
    output stay on the CPU). ``stems`` are the model's sources; ``residual`` is None.
    """

    residual: str | None = None

    def __init__(self, model: DemucsModel, segment: Seconds | None = None, overlap: float = 0.25,
                 shifts: int = 0, device: str | torch.device | None = None):  # fmt: skip
        if not 0.0 <= overlap < 1.0:
            raise ConfigError("demucs.overlap", f"must be in [0, 1), got {overlap}")
        if shifts < 0:
            raise ConfigError("demucs.shifts", f"must be >= 0, got {shifts}")
        self.model = model.eval()
        self.segment, self.overlap, self.shifts = segment, overlap, shifts
        self.device = torch.device(device) if device is not None else torch.device("cpu")
        self.sample_rate = int(model.samplerate)
        self.channels = int(model.audio_channels)
        self.stems: tuple[str, ...] = tuple(model.sources)
        length = segment_samples(model, segment)
        self.stride = int((1 - overlap) * length)  # apply_model's
        if self.stride < 1:
            raise ConfigError("demucs.segment", f"a segment of {length} samples is too short")
        self.margins = block_margins(length, self.stride, int(MAX_SHIFT_S * self.sample_rate) if shifts else 0)

    def _apply(self, block: np.ndarray, mean: float, std: float) -> np.ndarray:
        """apply_model on one normalised block. Shape: ``(c, n)`` -> ``(sources, c, n)``."""
        from demucs.apply import apply_model

        x = torch.from_numpy((block - mean) / std).to(torch.float32)[None]
        with torch.inference_mode():
            out = apply_model(self.model, x, shifts=self.shifts, split=True, overlap=self.overlap,
                              device=self.device, segment=self.segment)  # fmt: skip
        y = (out[0] * std + mean).numpy()
        if not np.isfinite(y).all():
            raise RuntimeError("the Demucs model returned NaN or Inf values")
        return y

    def _layout(self, audio: Any) -> int:
        channels = audio.shape[0]
        if audio.ndim != 2 or audio.shape[1] == 0:
            raise ValueError(f"expected a waveform (channels, samples), got shape {audio.shape}")
        if channels not in (1, self.channels):
            raise ValueError(f"this Demucs model takes {self.channels} channels or mono; the audio "
                             f"has {channels} (lay it out as mono: channels: 1)")  # fmt: skip
        return channels

    def iter_blocks(self, audio: Any, block_seconds: Seconds = 60.0) -> Iterator[tuple[int, dict[str, np.ndarray]]]:
        """Stems block by block: yields ``(start_sample, {stem: (channels, block)})``.

        A first pass computes the normalisation (:func:`normalisation`); then blocks of
        ``block_seconds`` (rounded up to a whole segment stride) are separated with
        :attr:`margin` samples of context each side. ``audio`` may be any ``(channels,
        samples)`` reader that slices (a ``np.memmap``, the separate job's raw reader).
        """
        channels = self._layout(audio)
        mean, std = normalisation(audio)
        n = audio.shape[1]
        front, back, last_front = self.margins
        step = self.stride * max(1, math.ceil(seconds_to_samples(block_seconds, self.sample_rate) / self.stride))
        for start in range(0, n, step):
            stop = min(start + step, n)
            hi = min(stop + back, n)
            lo = max(start - (last_front if hi == n else front), 0)
            block = np.asarray(audio[:, lo:hi], dtype=np.float32)
            if channels == 1 and self.channels != 1:
                block = np.repeat(block, self.channels, axis=0)
            y = self._apply(block, mean, std)[:, :, start - lo : stop - lo]
            if channels == 1 and self.channels != 1:
                y = y.mean(axis=1, keepdims=True)
            yield start, {name: np.ascontiguousarray(y[j]) for j, name in enumerate(self.stems)}

    def separate(self, audio: np.ndarray, block_seconds: Seconds = 60.0) -> dict[str, np.ndarray]:
        """:meth:`iter_blocks` gathered into whole arrays. Shape: ``(c, n)`` -> ``{stem: (c, n)}``."""
        from sepcore.separate.blocks import gather_blocks

        return gather_blocks(self, audio, block_seconds)



def export(model: DemucsModel, uri: str) -> str:
    """Write a loaded Demucs model or bag of models to ``uri`` (local or ``s3://``) as one ``.th``
    file that :func:`load` and Demucs's own ``demucs.states.load_model`` read; returns ``uri``.

    A single model, or a bag of one model with unit weights (``htdemucs``, ``htdemucs_6s``),
    is saved as that model (:func:`save`). A bag of several (``htdemucs_ft``: one model per
    source) is saved as ``{klass: BagOfModels, args: [models], kwargs: {weights, segment},
    state}``, the same dict format, so clusters without network get the whole bag from one file.
    """
    import tempfile

    from demucs.apply import BagOfModels

    parts = _parts(model)
    with tempfile.TemporaryDirectory(prefix="sep-demucs-") as tmp:
        path = os.path.join(tmp, "model.th")
        unit = all(w == 1.0 for row in getattr(model, "weights", [[1.0]]) for w in row)
        if len(parts) == 1 and unit:
            save(parts[0], path)
        elif isinstance(model, BagOfModels):
            state = {k: v.detach().to("cpu") for k, v in model.state_dict().items()}
            torch.save({"klass": BagOfModels, "args": [list(parts)],
                        "kwargs": {"weights": model.weights, "segment": None}, "state": state}, path)  # fmt: skip
        else:
            save(model, path)
        uri = storage.normalize_uri(uri)
        storage.upload(path, uri)
    return uri


def main(argv: list[str] | None = None) -> int:
    """``python -m sepcore.separate.demucs export demucs:<name> <uri>.th``: copy a pretrained
    model (downloaded by Demucs's loader, so run it where there is network) to storage as
    one ``.th`` file for clusters without network."""
    import argparse

    parser = argparse.ArgumentParser(prog="python -m sepcore.separate.demucs", description=main.__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    exp = sub.add_parser("export", help="write a Demucs model to one .th file")
    exp.add_argument("model", help="demucs:<name> or a .th URI")
    exp.add_argument("uri", help="destination .th (path, file:// or s3://)")
    args = parser.parse_args(argv)
    model, meta = load(args.model)
    uri = export(model, args.uri)
    print(f"{args.model} -> {uri} (sources {', '.join(meta['stems'])}, model id {meta['model_sha256'][:16]})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
