"""A tiny, randomly initialised HT Demucs saved in Demucs's own ``.th`` format (tests only).

HT Demucs's default depth (4) is kept: with a smaller depth its transformer's sequence
gets long and a 10-s file takes minutes instead of about a second. Few channels, one
transformer layer and a 1-s segment make it ~0.3 M parameters, ~10x real time on one core.
"""

from __future__ import annotations

SOURCES = ("drums", "bass", "other", "vocals")
SOURCES_6 = ("drums", "bass", "other", "vocals", "guitar", "piano")


def tiny_htdemucs(sources: tuple[str, ...] = SOURCES, seed: int = 0, segment: float = 1.0):
    """An untrained HT Demucs, 44.1 kHz stereo, ``segment`` seconds."""
    import torch
    from demucs.htdemucs import HTDemucs

    torch.manual_seed(seed)
    return HTDemucs(sources=list(sources), channels=8, segment=segment, t_layers=1, t_heads=2,
                    nfft=1024, samplerate=44100).eval()  # fmt: skip


def save_tiny_htdemucs(path: str, sources: tuple[str, ...] = SOURCES, seed: int = 0) -> str:
    """Write :func:`tiny_htdemucs` to ``path`` (a ``.th`` file); returns ``path``."""
    from sepcore.separate.demucs import save

    save(tiny_htdemucs(sources, seed), path)
    return path
