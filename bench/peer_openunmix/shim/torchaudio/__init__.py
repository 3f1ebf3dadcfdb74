"""A minimal stand-in for ``torchaudio``, only for the Open-Unmix peer benchmark.

``openunmix`` 1.3.0 imports ``torchaudio`` in ``openunmix.data``, ``openunmix.transforms``,
``openunmix.utils`` and ``openunmix.cli``, and ``openunmix.data`` calls
``torchaudio.get_audio_backend()`` and ``torchaudio.info`` (both removed from current
torchaudio releases). A real torchaudio for torch 2.9 costs a ~7 GB virtualenv here, so
``bench/peer_openunmix.py`` puts this folder first on ``PYTHONPATH`` of the peer's
virtualenv instead (no torchaudio is installed there). It implements, with soundfile:

* ``get_audio_backend() -> "soundfile"`` and ``set_audio_backend(name)`` (no-op);
* ``info(path)`` -> object with ``sample_rate``, ``num_frames``, ``num_channels``,
  ``bits_per_sample``, ``encoding``;
* ``load(path, frame_offset=0, num_frames=-1, normalize=True, channels_first=True)``
  -> ``(float32 tensor (channels, samples), sample_rate)``;
* ``save(path, src, sample_rate)`` with ``src`` ``(channels, samples)``.

Nothing else: ``torchaudio.transforms.Resample`` (used by ``openunmix.utils.preprocess``
only when the input rate differs from the model's) raises, so feed 44.1 kHz audio.
``openunmix.transforms`` uses torchaudio only in its optional ``asteroid`` filterbank;
the benchmark uses the default ``torch`` STFT (``torch.stft``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import soundfile as sf
import torch

__version__ = "0.0+sepbench-shim"
_BACKEND = "soundfile"


@dataclass(frozen=True)
class AudioMetaData:
    sample_rate: int
    num_frames: int
    num_channels: int
    bits_per_sample: int
    encoding: str


def get_audio_backend() -> str:
    return _BACKEND


def set_audio_backend(backend: str | None) -> None:
    """Accepted and ignored: soundfile is the only backend."""


def list_audio_backends() -> list[str]:
    return [_BACKEND]


def info(filepath: Any, format: str | None = None) -> AudioMetaData:  # noqa: A002
    si = sf.info(str(filepath))
    bits = {"PCM_16": 16, "PCM_24": 24, "PCM_32": 32, "FLOAT": 32, "DOUBLE": 64, "PCM_U8": 8, "PCM_S8": 8}
    return AudioMetaData(int(si.samplerate), int(si.frames), int(si.channels), bits.get(si.subtype, 0), si.subtype)


def load(
    filepath: Any,
    frame_offset: int = 0,
    num_frames: int = -1,
    normalize: bool = True,
    channels_first: bool = True,
    format: str | None = None,  # noqa: A002
) -> tuple[torch.Tensor, int]:
    """Shape: ``(channels, samples)`` float32 (``channels_first``), else ``(samples, channels)``."""
    stop = None if num_frames is None or num_frames < 0 else int(frame_offset) + int(num_frames)
    data, rate = sf.read(str(filepath), start=int(frame_offset), stop=stop, dtype="float32", always_2d=True)
    audio = torch.from_numpy(data.T.copy() if channels_first else data)
    return audio, int(rate)


def save(filepath: Any, src: torch.Tensor, sample_rate: int, channels_first: bool = True, **_: Any) -> None:
    data = src.detach().cpu().numpy()
    sf.write(str(filepath), data.T if channels_first else data, int(sample_rate))


class _Missing:
    def __init__(self, name: str) -> None:
        self._name = name

    def __getattr__(self, attr: str) -> Any:
        raise NotImplementedError(
            f"torchaudio.{self._name}.{attr} is not in the peer benchmark's torchaudio shim "
            "(bench/peer_openunmix/shim): give Open-Unmix 44.1 kHz audio"
        )


transforms = _Missing("transforms")
functional = _Missing("functional")
