"""Mixing stems into training pairs and random mixes; class balancing; track splits.

Two kinds of training material come out of this module:

* **Instrument/rest pairs** (seed 002 §4.3.2): for a target class, the stems of that
  class are summed in equal proportion into ``instrument``, all other stems into
  ``rest``; ``mix = instrument + rest``. Stems of the special classes ``mix`` and
  ``excluded`` are never used (:func:`instrument_rest` refuses them).
* **Random multi-instrument mixes** (seed 001 §4.1.3): solo segments are grouped into
  mixes of a uniform number of instruments and scaled by random levels. Randomness is
  *drawn apart from applied*: :func:`plan_mixes` draws everything into plain
  :class:`MixPlan` records from an explicit :class:`numpy.random.Generator`, and
  :func:`apply_mix` applies a plan deterministically, anywhere (e.g. a Ray worker).

Plus class balancing (seed 001 §4.1.2, :func:`balance`) and a deterministic,
order-independent track-level split (:func:`assign_splits`).

Shapes follow :mod:`sepcore`: waveform ``(channels, samples)``, stems
``(stems, channels, samples)``.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from types import MappingProxyType

import numpy as np

from sepcore.data.classes import CLASSES

#: Classes whose stems are never mixed into instrument or rest (seed 002 §4.2).
UNMIXABLE = ("mix", "excluded")

#: Seed 001's level distribution: ``l = max(N(LEVEL_MEAN, LEVEL_STD**2), 0) + LEVEL_EPS``.
LEVEL_MEAN = 0.5
LEVEL_STD = 0.1
LEVEL_EPS = 1e-8

#: Default track split fractions.
DEFAULT_FRACTIONS: Mapping[str, float] = MappingProxyType(
    {"train": 0.8, "validation": 0.1, "test": 0.1}
)


# --------------------------------------------------------------------------------------
# Instrument / rest pairs (seed 002)
# --------------------------------------------------------------------------------------


def instrument_rest(
    stems: np.ndarray, classes: Sequence[str], target: str
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Sum the ``target`` stems into ``instrument`` and all others into ``rest``.

    Shape: ``stems`` is ``(stems, channels, samples)``; ``instrument``, ``rest`` and
    ``mix`` are ``(channels, samples)``, float32.

    ``classes[i]`` is the canonical class (:data:`sepcore.data.classes.CLASSES`) of stem
    ``i``. Stems are summed unscaled ("equal proportion"); the sums are taken in
    float64 and rounded once to float32, and ``mix`` is the float32 sum of the two
    rounded parts, so ``mix == instrument + rest`` holds exactly. Without a target
    stem ``instrument`` is all zeros: the caller decides whether to keep the track.

    Raises ValueError for a wrong shape, a ``classes`` of the wrong length, an
    unknown class or a stem of class ``mix``/``excluded`` (those must be dropped
    before, see seed 002 §4.3.2).
    """
    stems = np.asarray(stems)
    if stems.ndim != 3:
        raise ValueError(f"stems must be (stems, channels, samples), got shape {stems.shape}")
    if len(classes) != stems.shape[0]:
        raise ValueError(f"got {len(classes)} classes for {stems.shape[0]} stems")
    for name in (*classes, target):
        if name in UNMIXABLE:
            raise ValueError(f"stems of class '{name}' must not be mixed (drop them first)")
        if name not in CLASSES:
            raise ValueError(f"unknown class '{name}'; known: {CLASSES}")
    is_target = np.array([c == target for c in classes], dtype=bool)
    instrument = stems[is_target].sum(axis=0, dtype=np.float64).astype(np.float32)
    rest = stems[~is_target].sum(axis=0, dtype=np.float64).astype(np.float32)
    mix = instrument + rest
    return instrument, rest, mix


# --------------------------------------------------------------------------------------
# Random multi-instrument mixes (seed 001): draw ...
# --------------------------------------------------------------------------------------


def draw_raw_levels(
    rng: np.random.Generator,
    n: int,
    mean: float = LEVEL_MEAN,
    std: float = LEVEL_STD,
    eps: float = LEVEL_EPS,
) -> np.ndarray:
    """``n`` unnormalised levels ``l = max(N(mean, std**2), 0) + eps`` (seed 001 eq. 8).

    Shape: returns ``(n,)`` float64; every level is at least ``eps`` (never silence).
    """
    if n < 0:
        raise ValueError(f"n must be >= 0, got {n}")
    return np.maximum(rng.normal(mean, std, size=n), 0.0) + eps


def normalize_levels(levels: np.ndarray) -> np.ndarray:
    """Divide every level by their sum when the sum exceeds 1 (seed 001 eq. 9).

    Shape: ``(n,)`` -> ``(n,)``. Seed 001 writes the numerator as the raw normal draw;
    we divide the clipped level ``l`` (identical unless a draw was clipped to 0).
    """
    levels = np.asarray(levels, dtype=np.float64)
    if levels.ndim != 1:
        raise ValueError(f"levels must be (n,), got shape {levels.shape}")
    total = float(levels.sum())
    return levels / total if total > 1.0 else levels.copy()


def draw_levels(rng: np.random.Generator, n: int) -> np.ndarray:
    """Seed 001's mixing levels: :func:`draw_raw_levels` then :func:`normalize_levels`.

    Shape: returns ``(n,)`` float64.
    """
    return normalize_levels(draw_raw_levels(rng, n))


@dataclass(frozen=True)
class MixPlan:
    """Everything random about one mix, drawn ahead of applying it.

    ``segment_ids[i]`` (of class ``classes[i]``) is scaled by ``levels[i]``.
    """

    mix_id: str
    epoch: int
    segment_ids: tuple[str, ...]
    classes: tuple[str, ...]
    levels: tuple[float, ...]


def _feasible(remaining: int, lo: int, hi: int) -> bool:
    """Whether ``remaining`` items split into groups of ``lo``..``hi`` items.

    True iff some group count ``j`` has ``j * lo <= remaining <= j * hi``.
    """
    return remaining == 0 or -(-remaining // hi) <= remaining // lo


def _group_size(rng: np.random.Generator, remaining: int, lo: int, hi: int) -> int:
    """A group size uniform over those in [lo, hi] that leave a feasible remainder.

    While many items remain that is all of [lo, hi]; only the last groups of an epoch
    are restricted (so no group ends up smaller than ``lo``).
    """
    valid = [k for k in range(lo, min(hi, remaining) + 1) if _feasible(remaining - k, lo, hi)]
    return valid[int(rng.integers(len(valid)))]


def _pick_group(
    rng: np.random.Generator, pools: dict[str, list[str]], size: int
) -> list[tuple[str, str]]:
    """Pop ``size`` (segment_id, class) pairs, distinct classes while possible."""
    picked: list[tuple[str, str]] = []
    while len(picked) < size:
        used = {c for _, c in picked}
        names = [c for c in sorted(pools) if pools[c] and c not in used]
        if not names:  # fewer classes left than slots: allow repeats
            names = [c for c in sorted(pools) if pools[c]]
        counts = np.array([len(pools[c]) for c in names], dtype=np.float64)
        name = names[int(rng.choice(len(names), p=counts / counts.sum()))]
        picked.append((pools[name].pop(), name))
    return picked


def plan_mixes(
    segments: Sequence[tuple[str, str]],
    rng: np.random.Generator,
    min_instruments: int = 1,
    max_instruments: int = 4,
    epochs: int = 1,
) -> list[MixPlan]:
    """Group solo segments into random mixes (seed 001 §4.1.3, §4.2.3).

    ``segments`` are ``(segment_id, class)`` pairs; an id may repeat (an oversampled
    segment from :func:`balance` is one entry per copy). In every mixing epoch every
    entry is used exactly once:

    * group sizes are uniform in ``[min_instruments, max_instruments]``; near the end
      of an epoch only sizes that leave a splittable remainder are drawn, so no group
      is smaller than ``min_instruments`` (ValueError if the count cannot be split);
    * members are drawn per group from per-class pools (each pool shuffled), a class
      chosen with probability proportional to its remaining entries, and no class
      twice in one mix while enough classes remain. Only when fewer classes are left
      than the group needs (typically at an epoch's end) does a mix repeat a class.
      Seed 001 mixes "either one instrument or multiple, different instruments".

    The result depends on ``rng`` and the *set* of segments, not their order. Levels
    come from :func:`draw_levels`. Mix ids are ``"e{epoch:03d}-{index:06d}"``.
    """
    lo, hi = min_instruments, max_instruments
    if not 1 <= lo <= hi:
        raise ValueError(f"need 1 <= min_instruments <= max_instruments, got {lo}, {hi}")
    if epochs < 0:
        raise ValueError(f"epochs must be >= 0, got {epochs}")
    entries = sorted((str(s), str(c)) for s, c in segments)
    if not _feasible(len(entries), lo, hi):
        raise ValueError(f"{len(entries)} segments cannot be grouped into mixes of {lo}..{hi}")
    plans: list[MixPlan] = []
    for epoch in range(epochs):
        pools: dict[str, list[str]] = {}
        for seg, cls in entries:
            pools.setdefault(cls, []).append(seg)
        for cls in sorted(pools):
            pools[cls] = [pools[cls][i] for i in rng.permutation(len(pools[cls]))]
        remaining, index = len(entries), 0
        while remaining:
            size = _group_size(rng, remaining, lo, hi)
            group = _pick_group(rng, pools, size)
            levels = draw_levels(rng, size)
            plans.append(
                MixPlan(
                    mix_id=f"e{epoch:03d}-{index:06d}",
                    epoch=epoch,
                    segment_ids=tuple(s for s, _ in group),
                    classes=tuple(c for _, c in group),
                    levels=tuple(float(v) for v in levels),
                )
            )
            remaining -= size
            index += 1
    return plans


# --------------------------------------------------------------------------------------
# ... and apply
# --------------------------------------------------------------------------------------


def apply_mix(
    plan: MixPlan, segments_audio: Mapping[str, np.ndarray]
) -> tuple[np.ndarray, dict[str, float]]:
    """Render one :class:`MixPlan`: the level-weighted sum of its segments.

    Shape: every ``segments_audio[id]`` is ``(channels, samples)`` with the same
    channels; returns the mixture ``(channels, samples)`` float32, where ``samples``
    is the *shortest* segment's length (longer segments are truncated at the end, as
    the seed's 3 s solo segments are all the same length anyway).

    The label is ``{class: summed level}`` over the plan's segments (two segments of
    one class add their levels). Raises KeyError for a segment missing from
    ``segments_audio`` and ValueError for wrong shapes or mismatched channels.
    """
    if not plan.segment_ids:
        raise ValueError(f"mix '{plan.mix_id}' has no segments")
    if not len(plan.segment_ids) == len(plan.classes) == len(plan.levels):
        raise ValueError(f"mix '{plan.mix_id}': segment_ids, classes, levels differ in length")
    audios = []
    for seg in plan.segment_ids:
        if seg not in segments_audio:
            raise KeyError(f"segment '{seg}' of mix '{plan.mix_id}' is not in segments_audio")
        a = np.asarray(segments_audio[seg])
        if a.ndim != 2:
            raise ValueError(f"segment '{seg}' must be (channels, samples), got shape {a.shape}")
        audios.append(a)
    channels = {a.shape[0] for a in audios}
    if len(channels) != 1:
        raise ValueError(
            f"mix '{plan.mix_id}': segments have different channels {sorted(channels)}"
        )
    length = min(a.shape[1] for a in audios)
    mixture = np.zeros((audios[0].shape[0], length), dtype=np.float64)
    label: dict[str, float] = {}
    for a, cls, level in zip(audios, plan.classes, plan.levels, strict=True):
        mixture += level * a[:, :length]
        label[cls] = label.get(cls, 0.0) + float(level)
    return mixture.astype(np.float32), label


# --------------------------------------------------------------------------------------
# Balancing (seed 001 §4.1.2)
# --------------------------------------------------------------------------------------


def _target_count(counts: Sequence[int], target: str | int) -> int:
    if isinstance(target, int) and not isinstance(target, bool):
        if target < 0:
            raise ValueError(f"target count must be >= 0, got {target}")
        return target
    nonzero = [c for c in counts if c > 0]
    if not nonzero:
        return 0
    if target == "median":
        return int(round(float(np.median(nonzero))))
    if target == "max":
        return max(nonzero)
    if target == "min":
        return min(nonzero)
    raise ValueError(f"target must be 'median', 'max', 'min' or an int, got {target!r}")


def balance(
    items_per_class: Mapping[str, Sequence[str]],
    rng: np.random.Generator,
    max_oversample: float = 2.0,
    target: str | int = "median",
) -> dict[str, list[str]]:
    """Oversample rare classes and undersample frequent ones toward a target count.

    The target count is the median of the non-empty classes' counts (rounded to the
    nearest integer), or their ``"max"``/``"min"``, or a given int. Then per class of
    ``n`` items:

    * ``n > target``: a random subset of ``target`` items (no repeats);
    * ``n < target``: ``m = min(target, floor(max_oversample * n))`` items: every item
      once, the remainder repeated whole as often as fits and then a random subset
      (so no item appears more than ``ceil(max_oversample)`` times, and the class
      never grows beyond ``max_oversample`` times its original count; seed 001 used
      a factor of 2);
    * empty classes stay empty.

    Classes are processed in sorted order, so the result depends only on ``rng``'s
    state and the input. Items keep the class's original order, repeats appended.
    """
    if max_oversample < 1.0:
        raise ValueError(f"max_oversample must be >= 1, got {max_oversample}")
    names = sorted(items_per_class)
    goal = _target_count([len(items_per_class[c]) for c in names], target)
    out: dict[str, list[str]] = {}
    for name in names:
        items = list(items_per_class[name])
        n = len(items)
        if n == 0:
            out[name] = []
            continue
        if n > goal:
            keep = np.sort(rng.choice(n, size=goal, replace=False))
            out[name] = [items[i] for i in keep]
            continue
        m = min(goal, int(np.floor(max_oversample * n + 1e-9)))
        picked = list(items)
        while len(picked) + n <= m:
            picked += items
        extra = np.sort(rng.choice(n, size=m - len(picked), replace=False))
        out[name] = picked + [items[i] for i in extra]
    return out


# --------------------------------------------------------------------------------------
# Track-level splits
# --------------------------------------------------------------------------------------


def _split_counts(n: int, fractions: Mapping[str, float]) -> dict[str, int]:
    """Largest-remainder counts; every positive split gets >= 1 when n allows."""
    exact = {s: f * n for s, f in fractions.items()}
    counts = {s: int(np.floor(v)) for s, v in exact.items()}
    order = sorted(fractions, key=lambda s: (-(exact[s] - counts[s]), list(fractions).index(s)))
    for s in order[: n - sum(counts.values())]:
        counts[s] += 1
    positive = [s for s, f in fractions.items() if f > 0]
    if n >= len(positive):
        for s in positive:
            if counts[s] == 0:
                donor = max(positive, key=lambda d: counts[d])
                counts[donor] -= 1
                counts[s] += 1
    return counts


def assign_splits(
    track_ids: Sequence[str],
    fractions: Mapping[str, float] = DEFAULT_FRACTIONS,
    seed: int = 0,
    fixed: Mapping[str, str] | None = None,
) -> dict[str, str]:
    """Assign every track to exactly one split, deterministically.

    Tracks listed in ``fixed`` (e.g. Slakh's own split) keep that split, whatever its
    name. The other ("free") tracks are ordered by ``sha256(f"{seed}:{track_id}")``,
    so the result does not depend on the input order and adding a track does not
    reshuffle the others; then the first ``round(fractions[s] * n_free)`` go to each
    split in the order of ``fractions`` (largest-remainder rounding). Fractions apply
    to the free tracks only. When there are at least as many free tracks as splits
    with a positive fraction, each of those splits gets at least one.

    Raises ValueError for negative fractions, fractions not summing to 1, or
    duplicate track ids.
    """
    if not fractions:
        raise ValueError("fractions must name at least one split")
    if any(f < 0 for f in fractions.values()):
        raise ValueError(f"fractions must be >= 0, got {dict(fractions)}")
    total = sum(fractions.values())
    if abs(total - 1.0) > 1e-6:
        raise ValueError(f"fractions must sum to 1, got {total} ({dict(fractions)})")
    ids = [str(t) for t in track_ids]
    if len(set(ids)) != len(ids):
        dupes = sorted({t for t in ids if ids.count(t) > 1})
        raise ValueError(f"duplicate track ids: {dupes[:10]}")
    fixed = dict(fixed or {})
    out = {t: fixed[t] for t in ids if t in fixed}
    free = sorted(
        (t for t in ids if t not in fixed),
        key=lambda t: (hashlib.sha256(f"{seed}:{t}".encode()).hexdigest(), t),
    )
    start = 0
    for split, count in _split_counts(len(free), fractions).items():
        for t in free[start : start + count]:
            out[t] = split
        start += count
    return out
