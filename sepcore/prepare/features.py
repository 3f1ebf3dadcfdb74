"""Features (STFT magnitude, log-mel, CQT), chunking, context stacking and training targets.

Every extractor maps a waveform ``(channels, samples)`` to a spectrogram
``(channels, bins, frames)``, float32. Extractors are registered by name in
:data:`FEATURES` and built with :func:`make_feature`; each is a small frozen dataclass
whose fields are its constructor arguments, so ``make_feature(f.name, **f.params())``
rebuilds it from a checkpoint.

Framing (all features): frames are *centred*: frame ``t`` is centred on sample
``t * hop``, the signal is padded by ``n_fft // 2`` **zeros** on each side (librosa's
default ``pad_mode="constant"`` since 0.10; torch is told the same), and a signal of
``n`` samples has ``sepcore.units.samples_to_frames(n, hop) == 1 + n // hop`` frames.
:func:`rms_activation` uses the same framing, so targets line up with features.

Logarithm (log-mel and CQT): ``10 * log10(max(power, 1e-10))`` in dB relative to a
fixed reference of 1.0 (full scale), i.e. ``librosa.power_to_db(P, ref=1.0,
amin=1e-10, top_db=None)``: floor at -100 dB, no per-file normalisation, so a
feature does not depend on which chunk or file it was computed in.

Backends, measured with ``bench/features_bench.py`` (60 s stereo, one thread per
process, x real-time per CPU core on the 2-core dev box, backends interleaved, best
of 10, three runs on a shared, busy machine; numbers in ``bench/README.md``):

* ``stft``: torch, 600-830x against librosa's 470-580x (1.15-1.55x faster), but only
  with the magnitude taken as ``sqrt(re**2 + im**2)``: torch's complex ``abs()`` is
  ~5x slower than that and alone made torch the slower backend.
* ``logmel``: torch (``torch.stft``, power, one matmul with a cached librosa mel
  filter bank), 510-690x against ``librosa.feature.melspectrogram``'s 370-500x.
* ``cqt``: librosa only (torch has no CQT), 135-195x: the slowest feature by far.

``backend="librosa"`` is kept for ``stft`` and ``logmel`` (and is the reference the
tests compare both against: within 1e-5 of the peak magnitude, 1e-3 dB).

No thread count is set here: a worker that runs several processes per machine should
call ``torch.set_num_threads(1)`` itself (Ray does the equivalent through
``OMP_NUM_THREADS`` for one-CPU tasks).
"""

from __future__ import annotations

import dataclasses
import functools
import math
from abc import ABC, abstractmethod
from collections.abc import Callable
from typing import Any, ClassVar, Literal, TypeVar, get_args

import librosa
import numpy as np
import torch

from sepcore.units import Decibels, samples_to_frames

Backend = Literal["torch", "librosa"]
StorageDtype = Literal["float16", "float32"]
ActivationReference = Literal["full_scale", "track_max"]

#: Floor of the power used before the logarithm: -100 dB re full scale.
POWER_FLOOR = 1e-10
FLOAT16_MAX = float(np.finfo(np.float16).max)  # 65504

E = TypeVar("E", bound="type[FeatureExtractor]")

#: Feature extractor classes by name; fill it with :func:`register_feature`.
FEATURES: dict[str, type[FeatureExtractor]] = {}


def register_feature(name: str) -> Callable[[E], E]:
    """Class decorator: register an extractor class under ``name`` in :data:`FEATURES`."""

    def deco(cls: E) -> E:
        if name in FEATURES:
            raise ValueError(f"feature '{name}' is already registered ({FEATURES[name]})")
        cls.name = name
        FEATURES[name] = cls
        return cls

    return deco


def make_feature(name: str, **params: Any) -> FeatureExtractor:
    """Build the extractor registered as ``name`` from its constructor arguments."""
    if name not in FEATURES:
        raise ValueError(f"unknown feature '{name}' (known: {', '.join(sorted(FEATURES))})")
    cls = FEATURES[name]
    allowed = {f.name for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    unknown = sorted(set(params) - allowed)
    if unknown:
        raise ValueError(
            f"feature '{name}' has no parameter(s) {unknown} (accepted: {sorted(allowed)})"
        )
    return cls(**params)


class FeatureExtractor(ABC):
    """Base of the extractors: waveform ``(channels, samples)`` -> ``(channels, bins, frames)``.

    Subclasses are frozen dataclasses with at least ``sample_rate`` and ``hop`` fields.
    """

    name: ClassVar[str]
    sample_rate: int
    hop: int

    @property
    @abstractmethod
    def n_bins(self) -> int:
        """Number of frequency bins of the output."""

    @abstractmethod
    def _compute(self, x: np.ndarray) -> np.ndarray:
        """Feature of a validated float32 waveform ``(channels, samples)``."""

    def params(self) -> dict[str, Any]:
        """Constructor arguments: ``make_feature(self.name, **self.params()) == self``."""
        return dataclasses.asdict(self)  # type: ignore[call-overload]

    def n_frames(self, n_samples: int) -> int:
        """Number of (centred) frames for a signal of ``n_samples`` samples."""
        return samples_to_frames(n_samples, self.hop)

    def __call__(self, x: np.ndarray) -> np.ndarray:
        """Shape: ``(channels, samples)`` -> ``(channels, n_bins, n_frames(samples))``, float32."""
        x = _as_waveform(x)
        out = np.ascontiguousarray(self._compute(x), dtype=np.float32)
        expected = (x.shape[0], self.n_bins, self.n_frames(x.shape[1]))
        if out.shape != expected:  # a backend changed its framing: fail loudly
            raise RuntimeError(f"{self.name}: produced shape {out.shape}, expected {expected}")
        return out


def _as_waveform(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x)
    if x.ndim != 2 or x.shape[0] == 0 or x.shape[1] == 0:
        raise ValueError(f"expected a waveform (channels, samples), got shape {x.shape}")
    return np.ascontiguousarray(x, dtype=np.float32)


def _check_backend(backend: str, allowed: tuple[str, ...], feature: str) -> None:
    if backend not in allowed:
        raise ValueError(f"{feature}: backend '{backend}' not available (choose from {allowed})")


def _check_positive(**values: float) -> None:
    for key, value in values.items():
        if not value > 0:
            raise ValueError(f"{key} must be positive, got {value}")


@functools.lru_cache(maxsize=16)
def _hann(n_fft: int) -> torch.Tensor:
    """Periodic Hann window, the same as librosa's ``"hann"`` (scipy ``fftbins=True``)."""
    return torch.hann_window(n_fft, periodic=True, dtype=torch.float32)


@functools.lru_cache(maxsize=16)
def _mel_basis(sample_rate: int, n_fft: int, n_mels: int, fmin: float, fmax: float) -> torch.Tensor:
    fb = librosa.filters.mel(sr=sample_rate, n_fft=n_fft, n_mels=n_mels, fmin=fmin, fmax=fmax)
    return torch.from_numpy(np.ascontiguousarray(fb, dtype=np.float32))


def _tensor(x: np.ndarray) -> torch.Tensor:
    """Zero-copy tensor of ``x`` (copied only if read-only, e.g. a memory map)."""
    return torch.from_numpy(x if x.flags.writeable else x.copy())


def _torch_stft(x: np.ndarray, n_fft: int, hop: int) -> torch.Tensor:
    with torch.inference_mode():
        return torch.stft(
            _tensor(x),
            n_fft,
            hop_length=hop,
            window=_hann(n_fft),
            center=True,
            pad_mode="constant",
            return_complex=True,
        )


def power_to_db(power: np.ndarray) -> np.ndarray:
    """``10 * log10(max(power, 1e-10))``: dB re full scale, floor -100 dB (module docstring)."""
    return (10.0 * np.log10(np.maximum(power, POWER_FLOOR))).astype(np.float32, copy=False)


@register_feature("stft")
@dataclasses.dataclass(frozen=True)
class Stft(FeatureExtractor):
    """Magnitude of the STFT: Hann window, centred frames, zero padding.

    ``hop`` defaults to ``n_fft // 4`` (384 for the thesis' n_fft 1536 at 22.05 kHz,
    giving 769 bins). Shape: ``(channels, n_fft // 2 + 1, 1 + samples // hop)``.
    """

    n_fft: int = 1536
    hop: int = None  # type: ignore[assignment]  # None -> n_fft // 4, set in __post_init__
    sample_rate: int = 22050
    backend: Backend = "torch"

    def __post_init__(self) -> None:
        if self.hop is None:
            object.__setattr__(self, "hop", self.n_fft // 4)
        _check_positive(n_fft=self.n_fft, hop=self.hop, sample_rate=self.sample_rate)
        if self.n_fft % 2:
            raise ValueError(f"n_fft must be even, got {self.n_fft}")
        if self.hop > self.n_fft // 2:
            raise ValueError(f"hop ({self.hop}) must be at most n_fft // 2 ({self.n_fft // 2})")
        _check_backend(self.backend, get_args(Backend), "stft")

    @property
    def n_bins(self) -> int:
        return self.n_fft // 2 + 1

    def _compute(self, x: np.ndarray) -> np.ndarray:
        if self.backend == "torch":
            with torch.inference_mode():  # sqrt(re^2 + im^2): ~5x faster than complex abs()
                spec = _torch_stft(x, self.n_fft, self.hop)
                return (spec.real.square() + spec.imag.square()).sqrt_().numpy()
        return np.abs(self._librosa_stft(x))

    def _librosa_stft(self, x: np.ndarray) -> np.ndarray:
        return librosa.stft(x, n_fft=self.n_fft, hop_length=self.hop, pad_mode="constant")

    def stft_complex(self, x: np.ndarray) -> np.ndarray:
        """Complex STFT, complex64. Shape: ``(channels, samples)`` -> ``(channels, bins, frames)``.

        Separation applies a mask to ``np.abs`` of this and reuses ``np.angle`` of it.
        """
        x = _as_waveform(x)
        if self.backend == "torch":
            return _torch_stft(x, self.n_fft, self.hop).numpy().astype(np.complex64, copy=False)
        return self._librosa_stft(x).astype(np.complex64, copy=False)

    def istft(self, spec: np.ndarray, length: int) -> np.ndarray:
        """Inverse of :meth:`stft_complex` (windowed overlap-add), cut/padded to ``length``.

        Shape: ``(channels, bins, frames)`` complex -> ``(channels, length)`` float32.
        """
        spec = np.asarray(spec)
        if spec.ndim != 3 or spec.shape[1] != self.n_bins:
            raise ValueError(
                f"istft expects (channels, {self.n_bins}, frames), got shape {spec.shape}"
            )
        _check_positive(length=length)
        if self.backend == "torch":
            with torch.inference_mode():
                y = torch.istft(
                    _tensor(np.ascontiguousarray(spec, dtype=np.complex64)),
                    self.n_fft,
                    hop_length=self.hop,
                    window=_hann(self.n_fft),
                    center=True,
                    length=length,
                ).numpy()
        else:
            y = librosa.istft(spec, n_fft=self.n_fft, hop_length=self.hop, length=length)
        return np.ascontiguousarray(y, dtype=np.float32)


@register_feature("logmel")
@dataclasses.dataclass(frozen=True)
class LogMel(FeatureExtractor):
    """Log mel spectrogram (seed 001 §2.3/§4.2.3): power STFT through a mel filter bank.

    Slaney-style mel scale and area-normalised triangles (librosa's defaults), power
    spectrogram (``|X|**2``), then :func:`power_to_db`. ``fmax`` is clipped to the
    Nyquist frequency (``sample_rate / 2``) when it is above it, e.g. 11.025 kHz at
    22.05 kHz. Shape: ``(channels, n_mels, 1 + samples // hop)``.
    """

    sample_rate: int = 44100
    n_fft: int = 2048
    hop: int = 1024
    n_mels: int = 128
    fmin: float = 27.5
    fmax: float = 20000.0
    backend: Backend = "torch"

    def __post_init__(self) -> None:
        _check_positive(
            sample_rate=self.sample_rate, n_fft=self.n_fft, hop=self.hop, n_mels=self.n_mels
        )
        if not 0 <= self.fmin < self.effective_fmax:
            raise ValueError(
                f"need 0 <= fmin < fmax, got fmin {self.fmin}, fmax {self.effective_fmax}"
            )
        _check_backend(self.backend, get_args(Backend), "logmel")

    @property
    def n_bins(self) -> int:
        return self.n_mels

    @property
    def effective_fmax(self) -> float:
        """``fmax`` clipped to the Nyquist frequency."""
        return min(float(self.fmax), self.sample_rate / 2)

    def _compute(self, x: np.ndarray) -> np.ndarray:
        if self.backend == "torch":
            basis = _mel_basis(
                self.sample_rate, self.n_fft, self.n_mels, float(self.fmin), self.effective_fmax
            )
            with torch.inference_mode():
                spec = _torch_stft(x, self.n_fft, self.hop)
                power = spec.real.square() + spec.imag.square()
                mel = torch.matmul(basis, power).numpy()
        else:
            mel = librosa.feature.melspectrogram(
                y=x,
                sr=self.sample_rate,
                n_fft=self.n_fft,
                hop_length=self.hop,
                n_mels=self.n_mels,
                fmin=self.fmin,
                fmax=self.effective_fmax,
                pad_mode="constant",
            )
        return power_to_db(mel)


@register_feature("cqt")
@dataclasses.dataclass(frozen=True)
class Cqt(FeatureExtractor):
    """Log-magnitude constant-Q transform (seed 001 §2.2/§4.2.3), computed by ``librosa.cqt``.

    ``bins_per_octave * n_octaves`` bins from ``fmin`` (24 x 8 = 192 from 27.5 Hz, top
    bin about 6.8 kHz), then ``power_to_db(|C|**2)``. ``hop`` must be divisible by
    ``2 ** (n_octaves - 1)`` for librosa's octave-wise downsampling (1024 and 384 are).
    Shape: ``(channels, bins_per_octave * n_octaves, 1 + samples // hop)``.
    """

    sample_rate: int = 44100
    hop: int = 1024
    fmin: float = 27.5
    bins_per_octave: int = 24
    n_octaves: int = 8
    backend: Literal["librosa"] = "librosa"

    def __post_init__(self) -> None:
        _check_positive(
            sample_rate=self.sample_rate,
            hop=self.hop,
            fmin=self.fmin,
            bins_per_octave=self.bins_per_octave,
            n_octaves=self.n_octaves,
        )
        if self.hop % 2 ** (self.n_octaves - 1):
            raise ValueError(
                f"cqt: hop ({self.hop}) must be divisible by 2**(n_octaves-1) "
                f"= {2 ** (self.n_octaves - 1)}"
            )
        top = self.fmin * 2 ** ((self.n_bins - 1) / self.bins_per_octave)
        if top >= self.sample_rate / 2:
            raise ValueError(
                f"cqt: top bin {top:.0f} Hz is above Nyquist ({self.sample_rate / 2:.0f} Hz)"
            )
        _check_backend(self.backend, ("librosa",), "cqt")

    @property
    def n_bins(self) -> int:
        return self.bins_per_octave * self.n_octaves

    def _compute(self, x: np.ndarray) -> np.ndarray:
        spec = librosa.cqt(
            x,
            sr=self.sample_rate,
            hop_length=self.hop,
            fmin=self.fmin,
            n_bins=self.n_bins,
            bins_per_octave=self.bins_per_octave,
        )
        return power_to_db(np.abs(spec) ** 2)


# --------------------------------------------------------------------------- chunking


def chunk_count(n_frames: int, frames: int = 64, hop: int | None = None, pad: bool = True) -> int:
    """Number of chunks :func:`chunk_frames` makes from ``n_frames`` frames.

    Chunks start at ``0, hop, 2 * hop, ...`` (``hop`` defaults to ``frames``: no overlap).
    With ``pad=True`` chunks are added until every frame is covered (the last one is
    zero-padded; a signal shorter than one chunk gives one chunk); with ``pad=False``
    only whole chunks are kept and trailing frames are dropped.
    """
    hop = frames if hop is None else hop
    _check_positive(frames=frames, hop=hop)
    if n_frames < 0:
        raise ValueError(f"n_frames must be >= 0, got {n_frames}")
    if n_frames == 0:
        return 0
    if pad:
        return 1 + math.ceil(max(n_frames - frames, 0) / hop)
    return 0 if n_frames < frames else 1 + (n_frames - frames) // hop


def chunk_frames(
    spec: np.ndarray, frames: int = 64, hop: int | None = None, pad: bool = True
) -> np.ndarray:
    """Cut a spectrogram into fixed-length chunks along time (see :func:`chunk_count`).

    Shape: ``(channels, bins, n_frames)`` -> ``(chunks, channels, bins, frames)``; a copy,
    same dtype. Chunk ``k`` holds frames ``k * hop`` to ``k * hop + frames - 1``.
    """
    if spec.ndim != 3:
        raise ValueError(f"expected a spectrogram (channels, bins, frames), got {spec.shape}")
    hop = frames if hop is None else hop
    channels, bins, n_frames = spec.shape
    count = chunk_count(n_frames, frames, hop, pad)
    if count == 0:
        return np.zeros((0, channels, bins, frames), dtype=spec.dtype)
    out = np.empty((count, channels, bins, frames), dtype=spec.dtype)
    for k in range(count):  # one copy from the spectrogram, whatever its memory layout
        start = k * hop
        have = min(frames, n_frames - start)
        out[k, :, :, :have] = spec[:, :, start : start + have]
        out[k, :, :, have:] = 0
    return out


def chunk_stems(
    spec: np.ndarray, frames: int = 64, hop: int | None = None, pad: bool = True
) -> np.ndarray:
    """:func:`chunk_frames` of every stem at once, chunks first.

    Shape: ``(stems, channels, bins, n_frames)`` -> ``(chunks, stems, channels, bins, frames)``.
    """
    if spec.ndim != 4:
        raise ValueError(f"expected stems (stems, channels, bins, frames), got {spec.shape}")
    stems, channels, bins, n_frames = spec.shape
    flat = chunk_frames(spec.reshape(stems * channels, bins, n_frames), frames, hop, pad)
    return flat.reshape(len(flat), stems, channels, bins, frames)


def stem_features(extractor: FeatureExtractor, stems: np.ndarray) -> np.ndarray:
    """The feature of every stem (channels and stems in one call).

    Shape: ``(stems, channels, samples)`` -> ``(stems, channels, bins, frames)``, float32.
    """
    if stems.ndim != 3 or stems.shape[0] == 0:
        raise ValueError(f"expected stems (stems, channels, samples), got shape {stems.shape}")
    n, channels, samples = stems.shape
    out = extractor(stems.reshape(n * channels, samples))
    return out.reshape(n, channels, *out.shape[1:])


def stack_context(spec: np.ndarray, context: int = 3) -> np.ndarray:
    """Stack each frame with its ``context`` neighbours on each side (seed 000, C = 3).

    Output block ``k`` (bins ``k * bins`` to ``(k + 1) * bins - 1``) of frame ``t`` is
    input frame ``t + k - context``, for ``k = 0 .. 2 * context``, so the centre frame is
    block ``context``; beyond the edges the first/last frame is repeated.
    Shape: ``(channels, bins, frames)`` -> ``(channels, bins * (2 * context + 1), frames)``.
    """
    if spec.ndim != 3:
        raise ValueError(f"expected a spectrogram (channels, bins, frames), got {spec.shape}")
    if context < 0:
        raise ValueError(f"context must be >= 0, got {context}")
    n_frames = spec.shape[2]
    padded = np.pad(spec, ((0, 0), (0, 0), (context, context)), mode="edge")
    blocks = [padded[:, :, k : k + n_frames] for k in range(2 * context + 1)]
    return np.concatenate(blocks, axis=1)


# ---------------------------------------------------------------------------- targets


def _same_shape(a: np.ndarray, b: np.ndarray, what: str) -> None:
    if a.shape != b.shape:
        raise ValueError(f"{what}: shapes differ, {a.shape} vs {b.shape}")


def ideal_ratio_mask(target_mag: np.ndarray, mix_mag: np.ndarray, eps: float = 1e-8) -> np.ndarray:
    """Ratio mask ``clip(target / max(mix, eps), 0, 1)``, float32, any (equal) shapes.

    ``mask * mix == target`` wherever ``eps <= mix`` and ``target <= mix``; bins where
    the mix is below ``eps`` get ``target / eps`` (0 when both are silent): never NaN.
    """
    _same_shape(target_mag, mix_mag, "ideal_ratio_mask")
    _check_positive(eps=eps)
    ratio = np.asarray(target_mag, dtype=np.float32) / np.maximum(mix_mag, eps, dtype=np.float32)
    return np.clip(ratio, 0.0, 1.0)


def ideal_binary_mask(target_mag: np.ndarray, rest_mag: np.ndarray) -> np.ndarray:
    """Binary mask (seed 003): 1.0 where the target is strictly louder than the rest, else 0.0.

    Ties, including bins where both are silent, go to the rest (0.0). Float32, same shape.
    """
    _same_shape(target_mag, rest_mag, "ideal_binary_mask")
    return (np.asarray(target_mag) > np.asarray(rest_mag)).astype(np.float32)


def frame_power(x: np.ndarray, frame_length: int, hop: int) -> np.ndarray:
    """Mean power per centred frame, channels pooled: ``(..., channels, samples) -> (..., frames)``.

    Frames are centred on ``t * hop`` with ``frame_length // 2`` zeros padded on each side
    (librosa's ``feature.rms(center=True)`` framing), so there are ``1 + samples // hop``.
    When ``frame_length`` and its half are whole numbers of hops (the features' usual
    ``n_fft = 4 hop``), each hop's power is summed once and a frame adds up its hops.
    """
    _check_positive(frame_length=frame_length, hop=hop)
    x = np.asarray(x)
    half, n, channels = frame_length // 2, x.shape[-1], x.shape[-2]
    frames = samples_to_frames(n, hop)
    if frame_length % hop == 0 and half % hop == 0:
        k, lead, full = frame_length // hop, half // hop, n // hop
        hops = x[..., : full * hop].reshape(x.shape[:-1] + (full, hop))
        sums = np.einsum("...chk,...chk->...h", hops, hops, dtype=np.float64) / channels
        rest = x[..., full * hop :]  # the last, partial hop
        tail = np.einsum("...ck,...ck->...", rest, rest, dtype=np.float64)[..., None] / channels
        lead_zeros, end_zeros = np.zeros(sums.shape[:-1] + (lead,)), np.zeros(sums.shape[:-1] + (k,))
        per_hop = np.concatenate([lead_zeros, sums, tail, end_zeros], axis=-1)  # [m]: hop m - lead
        total = per_hop[..., :frames].copy()
        for i in range(1, k):
            total += per_hop[..., i : i + frames]
        return total / frame_length
    power = np.square(x, dtype=np.float64).mean(axis=-2)
    padded = np.pad(power, [(0, 0)] * (power.ndim - 1) + [(half, half)])
    csum = np.concatenate([np.zeros(padded.shape[:-1] + (1,)), np.cumsum(padded, axis=-1)], axis=-1)
    starts = np.arange(frames) * hop
    ends = np.minimum(starts + frame_length, padded.shape[-1])
    # Windows that run past the padded end are zero-extended (as in librosa's framing).
    return np.maximum(csum[..., ends] - csum[..., starts], 0.0) / frame_length


def rms_activation(
    stems: np.ndarray,
    frame_length: int = 2048,
    hop: int = 1024,
    range_db: Decibels = 60.0,
    reference: ActivationReference = "full_scale",
) -> np.ndarray:
    """Activation per stem per frame (seed 001 §4.2.2-4.2.3): frame RMS in dB mapped to [0, 1].

    The RMS of each centred frame (channels pooled; see :func:`frame_power`) is taken in
    dB relative to ``reference``, clipped to ``[-range_db, 0]`` and mapped linearly so
    that ``-range_db`` (or silence) is 0 and 0 dB is 1. ``"full_scale"`` (default): 0 dB
    is an RMS of 1.0 (a full-scale sine sits at -3 dB, 0.95 with 60 dB), so labels keep
    each stem's level in the mix and do not depend on the chunk. ``"track_max"``: 0 dB
    is the loudest frame of any stem in ``stems``. Use the feature's ``n_fft`` and
    ``hop`` so the frames match the feature's frames.
    Shape: ``(stems, channels, samples)`` -> ``(stems, 1 + samples // hop)``, float32.
    """
    if stems.ndim != 3:
        raise ValueError(f"expected stems (stems, channels, samples), got shape {stems.shape}")
    _check_positive(range_db=range_db)
    power = np.zeros((stems.shape[0], samples_to_frames(stems.shape[-1], hop)))
    for i, stem in enumerate(stems):
        if stem.any():  # a class without stems stays zeros
            power[i] = frame_power(stem, frame_length, hop)
    if reference == "full_scale":
        ref = 1.0
    elif reference == "track_max":
        ref = float(power.max()) if power.size else 0.0
    else:
        raise ValueError(f"reference must be 'full_scale' or 'track_max', got '{reference}'")
    if ref <= 0.0:  # all stems silent ("track_max"): no activation anywhere
        return np.zeros(power.shape, dtype=np.float32)
    db = 10.0 * np.log10(np.maximum(power, np.finfo(np.float64).tiny) / ref)
    return ((np.clip(db, -range_db, 0.0) + range_db) / range_db).astype(np.float32)


# ---------------------------------------------------------------------------- storage


def to_storage(x: np.ndarray, dtype: StorageDtype = "float16") -> np.ndarray:
    """Cast a feature to its storage dtype, refusing NaN, Inf and float16 overflow.

    Raises ValueError if ``x`` has a non-finite value, or if ``dtype`` is ``"float16"``
    and the cast would write Inf (``|x|`` of 65520 or more; 65504 is float16's largest
    value, and anything below 65520 rounds to it). Log features (dB) and STFT magnitudes
    of [-1, 1] audio (at most ``n_fft / 2``) fit; power spectrograms may not. The check
    runs on the cast result, so a float16 feature is read once and its half-size copy once.
    """
    if dtype not in get_args(StorageDtype):
        raise ValueError(f"storage dtype must be one of {get_args(StorageDtype)}, got '{dtype}'")
    x = np.asarray(x)
    if dtype == "float16" and x.dtype == np.float32:  # torch's cast: the same bits, about 5x faster
        out = torch.from_numpy(np.ascontiguousarray(x)).to(torch.float16).numpy()
    else:
        with np.errstate(over="ignore", invalid="ignore"):  # an overflow is reported below
            out = x.astype(dtype, copy=False)
    if out.size and not np.isfinite(out).all():
        if not np.isfinite(x).all():
            raise ValueError(f"cannot store a feature with NaN or Inf values (shape {x.shape})")
        raise ValueError(
            f"float16 overflow: |x| reaches {float(np.abs(x).max()):.6g} > {FLOAT16_MAX:.0f}; "
            "store as float32 or compress (log) the feature first"
        )
    return out
