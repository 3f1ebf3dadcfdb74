"""Augmentation of instrument/rest pairs (Open-Unmix style): per-stem gain, channel swap, remixing.

Randomness is *drawn apart from applied*, as in :mod:`sepcore.prepare.mixing`: :func:`draw_stems`
and :func:`plan_remix` draw plain records from the generator of :func:`copy_rng`, seeded by
(prepare seed, augmentation seed, track id, copy index), so a track's augmentation does not
depend on the worker that makes it nor on the order of the tracks; :func:`apply_stems`,
:func:`load_part` and :func:`remix` apply them.

Copy 0 of a track is its own pair, its stems scaled and swapped by their draws. Remix copy
``k >= 1`` keeps copy 0's target instrument and rebuilds the rest: for each other class of the
track, the stems of that class of a random other track of the same split (:func:`donor_pool`),
from a random offset, as long as the instrument. Donor stems are loaded on demand, one class of
one donor at a time, so memory stays that of one track.

Several targets (Open-Unmix's random track mixing): remix copy ``k`` takes *every* stem of
``(*targets, "other")`` from a random other track of the same split that has it
(:func:`plan_remix_stems`), each from its own donor and offset, as long as the track; a stem
no other track has is silence. ``other`` is all of its donor's usable stems of the classes not
in ``targets``, one part per class with one offset (:func:`remix_stems` sums them).

Shapes follow :mod:`sepcore`: waveform ``(channels, samples)``, stems ``(stems, channels, samples)``.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from sepcore.data.classes import CLASSES
from sepcore.data.sources import SourceStem, SourceTrack
from sepcore.prepare import qa
from sepcore.prepare.config import AugmentConfig
from sepcore.prepare.mixing import UNMIXABLE


@dataclass(frozen=True)
class StemDraw:
    """What is done to one stem: scaled by ``gain`` (linear), channels swapped when ``swap``."""

    gain: float = 1.0
    swap: bool = False


@dataclass(frozen=True)
class DonorPart:
    """The stems ``stem_ids`` (class ``inst_class``) of donor ``track_id``, each with its draw,
    from ``offset`` (a fraction of the donor's length beyond the instrument's, in [0, 1))."""

    inst_class: str
    track_id: str
    stem_ids: tuple[str, ...]
    offset: float
    draws: tuple[StemDraw, ...]


@dataclass(frozen=True)
class RemixPlan:
    """Everything random about remix copy ``copy`` of a track: one part per class of its rest."""

    track_id: str
    copy: int
    parts: tuple[DonorPart, ...]


def copy_rng(seed: int, aug: AugmentConfig, track_id: str, copy: int) -> np.random.Generator:
    """The generator of one copy of one track: a hash of (prepare seed, ``aug.seed``, track id, copy)."""
    digest = hashlib.sha256(f"{seed}:{aug.seed}:{track_id}:{copy}".encode()).digest()
    return np.random.default_rng(int.from_bytes(digest[:16], "little"))


def draw_stems(
    rng: np.random.Generator, n: int, aug: AugmentConfig, channels: int
) -> tuple[StemDraw, ...]:
    """``n`` stems' draws: gain in dB uniform in ``aug.gain_db`` (1 when off), swap with
    probability ``aug.channel_swap`` (stereo only). Both are always drawn, so switching one
    augmentation on leaves the other's draws as they were."""
    u = rng.random((n, 2))
    lo, hi = aug.gain_db or (0.0, 0.0)
    gains = 10.0 ** ((lo + (hi - lo) * u[:, 0]) / 20.0)  # exactly 1 when off
    swaps = (u[:, 1] < aug.channel_swap) & (channels == 2)
    return tuple(StemDraw(float(g), bool(s)) for g, s in zip(gains, swaps, strict=True))


def apply_stem(audio: np.ndarray, draw: StemDraw) -> np.ndarray:
    """One stem with its draw applied. Shape: ``(channels, samples)`` -> the same, float32."""
    if draw.swap and audio.shape[0] != 2:
        raise ValueError(f"a channel swap needs 2 channels, got shape {audio.shape}")
    out = audio[::-1] if draw.swap else audio
    return out if draw.gain == 1.0 else (out * np.float32(draw.gain)).astype(np.float32)


def apply_stems(stems: np.ndarray, draws: Sequence[StemDraw]) -> np.ndarray:
    """Every stem with its draw. Shape: ``(stems, channels, samples)`` -> the same, float32."""
    if len(draws) != stems.shape[0]:
        raise ValueError(f"got {len(draws)} draws for {stems.shape[0]} stems")
    return (
        np.stack([apply_stem(s, d) for s, d in zip(stems, draws, strict=True)])
        if len(draws)
        else stems
    )


# ---------------------------------------------------------------- remixing


def usable_stems(track: SourceTrack, inst_class: str, exclude: Iterable[str]) -> list[SourceStem]:
    """The stems of ``inst_class`` whose manual QA flags do not exclude them."""
    return [
        s for s in track.stems if s.inst_class == inst_class and not qa.excluded(s.flags, exclude)
    ]


def donor_pool(
    tracks: Sequence[SourceTrack], splits: Mapping[str, str], aug: AugmentConfig
) -> dict[str, list[SourceTrack]]:
    """The tracks each augmented split draws donors from: its own, by id, those with all their stem
    audio (metadata only: donors' audio is loaded when a copy needs it)."""
    pool: dict[str, list[SourceTrack]] = {s: [] for s in aug.splits}
    for track in sorted(tracks, key=lambda t: t.track_id):
        split = splits.get(track.track_id)
        if split in pool and not track.extra.get("missing_stems"):
            pool[split].append(track)
    return pool


def plan_remix(track: SourceTrack, copy: int, pool: Sequence[SourceTrack], target: str, aug: AugmentConfig,
               seed: int, channels: int, exclude: Iterable[str]) -> RemixPlan:  # fmt: skip
    """Draw remix copy ``copy`` (>= 1) of ``track``: for each class of its rest (its usable stems'
    classes but ``target``), a random track of ``pool`` (``track``'s split) other than itself that
    has that class, an offset and its stems' draws. A class no other track has is left out. The
    plan depends on the pool's tracks, not their order."""
    if copy < 1:
        raise ValueError(f"remix copies are numbered from 1, got {copy}")
    exclude = tuple(exclude)
    rng = copy_rng(seed, aug, track.track_id, copy)
    own = {s.inst_class for s in track.stems if not qa.excluded(s.flags, exclude)}
    pool = sorted(pool, key=lambda t: t.track_id)
    parts = []
    for cls in sorted(own - {target, *UNMIXABLE}):
        donors = [t for t in pool if t.track_id != track.track_id and usable_stems(t, cls, exclude)]
        if not donors:
            continue
        donor = donors[int(rng.integers(len(donors)))]
        stems = usable_stems(donor, cls, exclude)
        offset = float(rng.random())
        parts.append(DonorPart(cls, donor.track_id, tuple(s.stem_id for s in stems), offset,
                               draw_stems(rng, len(stems), aug, channels)))  # fmt: skip
    return RemixPlan(track.track_id, copy, tuple(parts))


def plan_remix_stems(track: SourceTrack, copy: int, pool: Sequence[SourceTrack], targets: Sequence[str],
                     aug: AugmentConfig, seed: int, channels: int, exclude: Iterable[str]) -> RemixPlan:  # fmt: skip
    """Draw remix copy ``copy`` (>= 1) of ``track`` for several targets: for each stem of
    ``(*targets, "other")`` in that order, a random track of ``pool`` other than ``track`` with a
    usable stem of it (``other``: of a class not in ``targets``), an offset and its stems' draws.
    ``other`` gives one part per class of the donor (all with the donor's offset). A stem no other
    track has is left out (silence in the copy). The plan depends on the pool's tracks, not their
    order."""
    if copy < 1:
        raise ValueError(f"remix copies are numbered from 1, got {copy}")
    exclude = tuple(exclude)
    rng = copy_rng(seed, aug, track.track_id, copy)
    pool = sorted(pool, key=lambda t: t.track_id)
    others = [c for c in CLASSES if c not in targets and c not in UNMIXABLE]
    parts: list[DonorPart] = []
    for classes in [[t] for t in targets] + [others]:
        donors = [t for t in pool if t.track_id != track.track_id
                  and any(usable_stems(t, c, exclude) for c in classes)]  # fmt: skip
        if not donors:
            continue
        donor = donors[int(rng.integers(len(donors)))]
        offset = float(rng.random())
        for cls in classes:
            stems = usable_stems(donor, cls, exclude)
            if stems:
                parts.append(DonorPart(cls, donor.track_id, tuple(s.stem_id for s in stems), offset,
                                       draw_stems(rng, len(stems), aug, channels)))  # fmt: skip
    return RemixPlan(track.track_id, copy, tuple(parts))


def load_part(part: DonorPart, donor: SourceTrack, length: int, channels: int,
              load: Callable[[SourceStem], np.ndarray | None]) -> np.ndarray:  # fmt: skip
    """A donor part's stems, each with its draw, summed from the part's offset.

    ``load(stem)`` returns a stem's audio ``(channels, samples)``, or None when its detected QA
    flags exclude it. The start is ``offset * (donor length - length)`` (0 for a shorter donor,
    which is zero-padded). Shape: returns ``(channels, length)``, float32.
    """
    stems = {s.stem_id: s for s in donor.stems}
    audios = []
    for stem_id, draw in zip(part.stem_ids, part.draws, strict=True):
        audio = load(stems[stem_id])
        if audio is not None:
            audios.append(apply_stem(audio, draw))
    n = max((a.shape[1] for a in audios), default=0)
    start = int(part.offset * max(0, n - length))
    out = np.zeros((channels, length), dtype=np.float64)
    for a in audios:
        seg = a[:, start : start + length]
        out[:, : seg.shape[1]] += seg
    return out.astype(np.float32)


def remix(
    instrument: np.ndarray, target: str, parts: Sequence[tuple[str, np.ndarray]]
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A remixed pair's rest, mix and class sums from the instrument and ``(class, audio)`` parts.

    Shape: ``instrument`` and every part ``(channels, samples)``; returns ``rest`` and ``mix``
    ``(channels, samples)`` and the sums ``(len(CLASSES), channels, samples)``, float32. As in
    :func:`sepcore.prepare.mixing.instrument_rest`, the rest is summed in float64 and rounded
    once, so ``mix == instrument + rest`` holds exactly.
    """
    sums = np.zeros((len(CLASSES), *instrument.shape), dtype=np.float32)
    sums[CLASSES.index(target)] = instrument
    rest = np.zeros(instrument.shape, dtype=np.float64)
    for cls, audio in parts:
        if audio.shape != instrument.shape:
            raise ValueError(
                f"part '{cls}' has shape {audio.shape}, the instrument {instrument.shape}"
            )
        rest += audio
        sums[CLASSES.index(cls)] += audio
    rest32 = rest.astype(np.float32)
    return rest32, instrument + rest32, sums


def remix_stems(targets: Sequence[str], parts: Sequence[tuple[str, np.ndarray]], channels: int,
                length: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:  # fmt: skip
    """A remixed multi-target copy's stems, mix and class sums from ``(class, audio)`` parts.

    A part of a class in ``targets`` goes to that target's stem, any other to the last stem
    (``other``); a stem without parts is silence. Stems are summed in float64 and rounded once,
    and ``mix`` is their float64 sum rounded once, as in :func:`sepcore.prepare.pairs.stem_sums`.
    Shape: every part ``(channels, length)``; returns ``sources`` ``(len(targets) + 1, channels,
    length)``, ``mix`` ``(channels, length)`` and the sums ``(len(CLASSES), channels, length)``.
    """
    acc = np.zeros((len(targets) + 1, channels, length), dtype=np.float64)
    sums = np.zeros((len(CLASSES), channels, length), dtype=np.float32)
    for cls, audio in parts:
        if audio.shape != (channels, length):
            raise ValueError(f"part '{cls}' has shape {audio.shape}, expected {(channels, length)}")
        acc[targets.index(cls) if cls in targets else len(targets)] += audio
        sums[CLASSES.index(cls)] += audio
    sources = acc.astype(np.float32)
    return sources, sources.sum(axis=0, dtype=np.float64).astype(np.float32), sums
