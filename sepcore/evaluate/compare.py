"""Separators scored beside the checkpoint: Demucs models and other checkpoints (``compare``).

Each separator of a run other than the checkpoint's own mask model is a *row*
(:class:`RowSpec`): the ``compare`` entries, named by their keys, and a Demucs model given
as the ``checkpoint`` (named ``model``). A row separates each track's mixture made at
**its own** rate and channels (:func:`mixture_at`: the same usable stems as the
references, summed at that rate: the real full-band mixture, not the evaluation's one
resampled), and each of its stems is brought to the evaluation's rate and channels
(:func:`conform`: soxr resampling, channel mean when the references are mono, trimmed or
zero-padded to the references' length). The row's estimate of a class is ``[stem, mix -
stem]`` with ``mix`` the evaluation's mixture, as for multi-stem checkpoints.

Classes: a stem named after a class (:data:`sepcore.data.classes.CLASSES`) is scored
against that class. A Demucs model's ``other`` stem holds everything that none of its other
stems takes, so it is scored against a class of its own (:func:`other_key`):
``demucs_other-<the classes of its other sources, sorted, joined by '-'>``, e.g.
``demucs_other-bass-drums-vocals`` for the 4-source models, whose reference is the sum of
every usable stem of any class but those (:func:`key_classes`). A checkpoint folder's
stems are scored as the checkpoint's own are (its ``other`` is no class).

Shapes: ``(channels, samples)``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np

from sepcore.data.classes import CLASSES
from sepcore.errors import ConfigError
from sepcore.units import Seconds

#: Prefix of the class key of a Demucs ``other`` stem.
DEMUCS_OTHER = "demucs_other"
#: Oracle STFT of an evaluation whose checkpoint is a Demucs model, unless set.
DEFAULT_N_FFT, DEFAULT_HOP = 4096, 1024
#: ``frames`` of the evaluation meta of a Demucs checkpoint (the reference pairs need one).
FRAMES = 64


@dataclass(frozen=True)
class RowSpec:
    """A separator scored as a row (picklable: what a track task needs to rebuild it).

    ``name``: the row (method) name; ``ref``: the Demucs reference or checkpoint folder;
    ``kind``: ``demucs`` or ``mask``; ``meta``: its meta (``sample_rate``, ``channels``,
    ``stems``, ``model_sha256``, ...); ``classes``: ``{class key: stem}`` of the stems
    scored (:func:`stem_classes`); ``demucs``: the Demucs options (segment, overlap, shifts).
    """

    name: str
    ref: str
    kind: str
    meta: Mapping[str, Any]
    classes: Mapping[str, str]
    demucs: Mapping[str, Any] | None = field(default=None)

    @property
    def sample_rate(self) -> int:
        return int(self.meta["sample_rate"])

    @property
    def channels(self) -> int:
        return int(self.meta.get("channels") or 1)

    def described(self) -> dict[str, Any]:
        """Its entry under ``separators`` in metrics.json."""
        out = {"name": self.name, "checkpoint": self.ref, "kind": self.kind,
               "model_sha256": self.meta.get("model_sha256"), "sample_rate": self.sample_rate,
               "channels": self.channels, "stems": list(self.meta.get("stems") or ["instrument", "rest"]),
               "classes": dict(self.classes)}  # fmt: skip
        if self.demucs is not None:
            out["demucs"] = dict(self.demucs)
        return out

    def fingerprint(self) -> dict[str, Any]:
        """What its scores depend on: name, weights digest, rate, channels, Demucs options."""
        return {"name": self.name, "kind": self.kind, "model": self.meta.get("model_sha256"),
                "sample_rate": self.sample_rate, "channels": self.channels, "demucs": self.demucs,
                "wiener_iterations": self.meta.get("wiener_iterations")}  # fmt: skip


def other_key(sources: Sequence[str]) -> str | None:
    """The class key of a Demucs model's ``other`` stem, None when it has no ``other`` or no
    other source of a class (module docstring)."""
    named = sorted(s for s in sources if s in CLASSES and s != "other")
    return f"{DEMUCS_OTHER}-{'-'.join(named)}" if "other" in sources and named else None


def key_classes(key: str) -> tuple[str, ...]:
    """The classes whose stems make the reference instrument of a class key."""
    if key in CLASSES:
        return (key,)
    if not key.startswith(DEMUCS_OTHER + "-"):
        raise ValueError(f"unknown class key '{key}'")
    left_out = set(key[len(DEMUCS_OTHER) + 1 :].split("-"))
    return tuple(c for c in CLASSES if c not in left_out)


def stem_classes(kind: str, meta: Mapping[str, Any]) -> dict[str, str]:
    """``{class key: stem}`` of the stems of a separator that are scored.

    Demucs: each source named after a class, and ``other`` (:func:`other_key`). A
    checkpoint: its ``target`` (stem ``instrument``), or a multi-stem one's stems but the last.
    """
    stems = list(meta.get("stems") or ())
    if kind == "demucs":
        out = {s: s for s in stems if s in CLASSES and s != "other"}
        key = other_key(stems)
        if key is not None:
            out[key] = "other"
        return out
    if not stems:
        return {str(meta["target"]): "instrument"} if meta.get("target") else {}
    return {s: s for s in stems[:-1] if s in CLASSES}


def describe_row(name: str, ref: str, demucs: Mapping[str, Any], key: str | None = None) -> RowSpec:
    """The row of a reference: a Demucs model (loaded once to hash its weights and check
    the ``demucs`` options against it) or a checkpoint folder (its model loaded once, so that
    a bad one fails early). ``key``: the config key errors name (default ``compare.<name>``).

    Raises :class:`~sepcore.models.checkpoint.CheckpointError` naming the reference, and
    :class:`~sepcore.errors.ConfigError` for a ``demucs.segment`` the model does not take.
    """
    from sepcore.separate import demucs as D

    if D.is_demucs(ref):
        model, meta = D.load(ref)
        D.DemucsSeparator(model, demucs.get("segment"), float(demucs.get("overlap", 0.25)),
                          int(demucs.get("shifts", 0)))  # ConfigError now for options it does not take
        return RowSpec(name, str(meta["checkpoint"]), "demucs", meta, stem_classes("demucs", meta), dict(demucs))
    from sepcore.models import checkpoint as ckpt

    folder = ckpt.resolve(ref)
    meta = load_checkpoint_meta(folder)
    if meta.get("task", "separator") != "separator" or "n_fft" not in (meta.get("feature") or {}):
        raise ConfigError(key or f"compare.{name}", f"{folder} is not a separator checkpoint (task {meta.get('task')!r})")
    return RowSpec(name, folder, "mask", meta, stem_classes("mask", meta))


def load_checkpoint_meta(checkpoint_dir: str) -> dict[str, Any]:
    """A checkpoint folder's meta, after loading its model once (a bad one fails early).

    A model with a confidence threshold (:func:`sepcore.separate.apply.binary_threshold`)
    adds it as ``meta["model_alpha"]``. Raises
    :class:`~sepcore.models.checkpoint.CheckpointError` naming the folder, also for a state
    dict that does not fit the model it names.
    """
    from sepcore.errors import SepError
    from sepcore.models import checkpoint as ckpt
    from sepcore.separate.apply import binary_threshold

    try:
        model, meta = ckpt.load_model(checkpoint_dir)
        alpha = binary_threshold(model)
        if alpha is not None:
            meta["model_alpha"] = alpha
        return meta
    except SepError:
        raise
    except Exception as exc:  # a state dict that does not fit the model it names
        raise ckpt.CheckpointError(checkpoint_dir, f"cannot load the model ({type(exc).__name__}: "
                                   f"{str(exc).splitlines()[0][:300]})") from exc  # fmt: skip


def evaluation_meta(cfg: Any, model_meta: Mapping[str, Any]) -> dict[str, Any]:
    """The evaluation's meta when the checkpoint is a Demucs model: what the reference pairs
    and the oracle masks need (``sample_rate``, ``channels``, ``feature``, ``frames``), from
    the keys ``sample_rate``, ``channels``, ``n_fft``, ``hop`` or the model's."""
    n_fft = int(cfg.n_fft or DEFAULT_N_FFT)
    hop = int(cfg.hop or (DEFAULT_HOP if cfg.n_fft is None else n_fft // 4))
    if hop > n_fft:
        raise ConfigError("hop", f"{hop} is longer than n_fft ({n_fft})")
    return {"task": "separator", "kind": "evaluation", "target": None,
            "sample_rate": int(cfg.sample_rate or model_meta["sample_rate"]),
            "channels": int(cfg.channels or model_meta.get("channels") or 2),
            "feature": {"name": "stft", "n_fft": n_fft, "hop": hop}, "frames": FRAMES,
            "model_sha256": model_meta.get("model_sha256")}  # fmt: skip


def refuse_layout_keys(cfg: Any, meta: Mapping[str, Any]) -> None:
    """ConfigError when ``sample_rate``, ``channels``, ``n_fft`` or ``hop`` differ from a
    project checkpoint's: its scores are computed at its own rate, channels and STFT."""
    own = {"sample_rate": meta.get("sample_rate"), "channels": meta.get("channels", 1),
           "n_fft": (meta.get("feature") or {}).get("n_fft"), "hop": (meta.get("feature") or {}).get("hop")}  # fmt: skip
    for key, value in own.items():
        given = getattr(cfg, key)
        if given is not None and value is not None and int(given) != int(value):
            raise ConfigError(key, f"the checkpoint is scored at its own {key} ({value}); the key applies "
                              "when the checkpoint is a Demucs model (remove it)")  # fmt: skip


def build_separator(row: RowSpec, batch_size: int = 8, device: str = "cpu") -> Any:
    """The separator of a row (:class:`sepcore.separate.separator.Separator`), its model loaded."""
    from sepcore.separate import demucs as D
    from sepcore.separate.separator import MaskSeparator

    if row.kind == "demucs":
        opts = dict(row.demucs or {})
        model, _ = D.load(row.ref)
        return D.DemucsSeparator(model, opts.get("segment"), float(opts.get("overlap", 0.25)),
                                 int(opts.get("shifts", 0)), device)  # fmt: skip
    from sepcore.models import checkpoint as ckpt

    model, meta = ckpt.load_model(row.ref, device)
    f = meta["feature"]
    return MaskSeparator(model, int(meta["sample_rate"]), int(f["n_fft"]), int(f["hop"]), int(meta["frames"]),
                         batch_size, device, stems=meta.get("stems") or None,
                         wiener_iterations=int(meta.get("wiener_iterations") or 0))  # fmt: skip


def conform(stem: np.ndarray, rate_in: int, sample_rate: int, channels: int, length: int) -> np.ndarray:
    """A separator's stem at the evaluation's rate and channels and the references' length.

    Resampled with soxr (HQ) when the rates differ; the channel mean when ``channels`` is 1
    (the references are mono), the mono stem repeated when they have more; trimmed or
    zero-padded at the end to ``length``.
    Shape: ``(c, n)`` at ``rate_in`` -> ``(channels, length)`` at ``sample_rate``, float32.
    """
    from sepcore.io.audio import Audio, resample

    if stem.ndim != 2:
        raise ValueError(f"a stem is (channels, samples), got shape {stem.shape}")
    out = resample(Audio(np.ascontiguousarray(stem, dtype=np.float32), rate_in), sample_rate).samples
    if out.shape[0] != channels:
        if channels == 1:
            out = out.mean(axis=0, keepdims=True)
        elif out.shape[0] == 1:
            out = np.repeat(out, channels, axis=0)
        else:
            raise ValueError(f"cannot lay a {out.shape[0]}-channel stem out as {channels} channels")
    if out.shape[1] >= length:
        return np.ascontiguousarray(out[:, :length], dtype=np.float32)
    return np.pad(out, ((0, 0), (0, length - out.shape[1]))).astype(np.float32)


def mixture_at(track: Any, excluded: Sequence[str], sample_rate: int, channels: int) -> np.ndarray:
    """The track's mixture at ``sample_rate`` / ``channels``: the sum of its stems but
    ``excluded`` (the stem ids the reference pairs left out), as
    :func:`sepcore.prepare.pairs.make_pair` sums them. Shape: ``(channels, samples)``."""
    from sepcore.prepare.pairs import PrepareSpec, make_pair

    kept = replace(track, stems=tuple(s for s in track.stems if s.stem_id not in set(excluded)))
    present = [s.inst_class for s in kept.stems if s.inst_class in CLASSES]
    spec = PrepareSpec(target=present[0] if present else "other", sample_rate=sample_rate, channels=channels,
                       feature={"name": "stft", "n_fft": 256, "hop": 64}, frames=FRAMES, outputs=("target",),
                       detect_flags=False, skip_without_target=False)  # fmt: skip
    return make_pair(kept, spec).mix


def row_estimates(
    separator: Any,
    row: RowSpec,
    mix_in: np.ndarray,
    mix: np.ndarray,
    sample_rate: int,
    keys: Sequence[str],
    block_s: Seconds = 60.0,
) -> dict[str, dict[str, np.ndarray]]:
    """A row's estimates ``{class key: {"instrument", "rest"}}`` of the ``keys`` it has.

    ``mix_in``: the mixture at the separator's rate and channels, separated once; ``mix``:
    the evaluation's mixture (its rate ``sample_rate``, channels and length are those of
    the references). Each stem is :func:`conform` ed; the rest is ``mix - stem``.
    Shape: ``(c, n)`` each -> ``{key: {source: mix.shape}}``.
    """
    wanted = [k for k in keys if k in row.classes]
    if not wanted:
        return {}
    stems = separator.separate(np.ascontiguousarray(mix_in, dtype=np.float32), block_s)
    out = {}
    for key in wanted:
        stem = conform(stems[row.classes[key]], int(separator.sample_rate), sample_rate, mix.shape[0], mix.shape[1])
        out[key] = {"instrument": stem, "rest": (mix - stem).astype(np.float32)}
    return out
