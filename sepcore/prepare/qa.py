"""Quality flags of stems (seed 002 §4.3.1): detected automatically, or set by hand.

Seed 002's labels, used verbatim as flag names:

``missing``      no data at all in the stem
``bleed``        other sounds audible next to the main source
``bad_quality``  unusable recording or file quality
``inaudible``    content cannot be heard without enhancement
``mislabeled``   the main source is not what the stem is labelled as
``detailed``     needs a closer look
``checked``      the quality tool was run on the track

plus ``clipping``, which only this module sets (and which a manual file may set too).

Automatic detection (:func:`detect_flags`) covers ``missing``, ``inaudible`` and
``clipping``. Manual flags come from seed 002's convention, one empty file named
``<instrument>_<mark>`` per flag in the track folder (``guitar_bleed``,
``guitar_checked``; :func:`parse_flag_names`), or from a CSV file with the columns
``track,stem,flag`` (:func:`read_flags_csv`). Flags are metadata; :func:`excluded`
decides from them whether a stem is left out.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Iterable

import numpy as np

from sepcore.errors import MetadataError
from sepcore.units import Decibels

#: Seed 002's manual labels, in the seed's order.
MANUAL_FLAGS = ("missing", "bleed", "bad_quality", "inaudible", "mislabeled", "detailed", "checked")
#: Every flag name this module knows.
FLAGS = (*MANUAL_FLAGS, "clipping")
#: Flags that keep a stem out of training data by default.
DEFAULT_EXCLUDE = ("missing", "bleed", "bad_quality", "inaudible", "mislabeled")
#: Length of a BS.1770 gating block; shorter signals use ungated loudness.
LOUDNESS_BLOCK_S = 0.4
#: Channels BS.1770 (pyloudnorm) weights; more channels are measured on their mean.
MAX_LOUDNESS_CHANNELS = 5


def peak_dbfs(x: np.ndarray) -> Decibels:
    """Sample peak over all channels in dBFS; ``-inf`` for digital silence or no samples.

    Shape: ``x`` is ``(channels, samples)``.
    """
    x = _waveform(x)
    if x.size == 0:
        return float("-inf")
    peak = float(np.max(np.abs(x)))
    return 20.0 * float(np.log10(peak)) if peak > 0 else float("-inf")


def loudness_lufs(x: np.ndarray, sample_rate: int) -> Decibels:
    """Integrated loudness in LUFS (ITU-R BS.1770-4, gated), as pyloudnorm measures it.

    Shape: ``x`` is ``(channels, samples)``. Signals shorter than one 400 ms block are
    measured ungated and without K-weighting, ``-0.691 + 10 log10(sum of channel mean
    squares)``. Returns ``-inf`` for silence or when every block is below the -70 LUFS
    absolute gate; never NaN.

    pyloudnorm's K-weighting filters and block boundaries, with the gating done on all
    blocks at once (its per-block Python loop took most of the time): the values agree
    with ``pyloudnorm.Meter(rate).integrated_loudness`` to about 1e-9 dB.
    """
    x = _waveform(x).astype(np.float64)
    if x.shape[1] == 0 or not np.any(x):
        return float("-inf")
    if x.shape[0] > MAX_LOUDNESS_CHANNELS:
        x = x.mean(axis=0, keepdims=True)
    if x.shape[1] < LOUDNESS_BLOCK_S * sample_rate + 1:
        power = float(np.square(x).mean(axis=1).sum())
        return -0.691 + 10.0 * float(np.log10(power)) if power > 0 else float("-inf")
    z = _block_power(_k_weighted(x, sample_rate), sample_rate)  # (channels, blocks)
    gains = np.array([1.0, 1.0, 1.0, 1.41, 1.41])[: x.shape[0], None]
    with np.errstate(divide="ignore"):
        block_lufs = -0.691 + 10.0 * np.log10((gains * z).sum(axis=0))
    above = block_lufs >= -70.0  # the absolute gate
    if not above.any():
        return float("-inf")
    relative = -0.691 + 10.0 * np.log10((gains[:, 0] * z[:, above].mean(axis=1)).sum()) - 10.0
    gated = (block_lufs > relative) & (block_lufs > -70.0)
    if not gated.any():
        return float("-inf")
    value = -0.691 + 10.0 * np.log10((gains[:, 0] * z[:, gated].mean(axis=1)).sum())
    return float(value) if np.isfinite(value) else float("-inf")


def _k_weighted(x: np.ndarray, sample_rate: int) -> np.ndarray:
    """BS.1770's K-weighting (pyloudnorm's two filter stages, run as one second-order-sections
    filter: one pass, not two) of every channel."""
    import pyloudnorm  # deferred: it pulls in scipy.signal (seconds to import)
    import scipy.signal

    stages = list(pyloudnorm.Meter(sample_rate)._filters.values())
    sos = np.array([np.concatenate([s.b, s.a]) for s in stages])
    gain = float(np.prod([s.passband_gain for s in stages]))
    return gain * scipy.signal.sosfilt(sos, x, axis=-1)


def _block_power(x: np.ndarray, sample_rate: int) -> np.ndarray:
    """Mean square of each 400 ms gating block, 75 % overlap, pyloudnorm's block bounds.

    The squares are summed once per stretch between consecutive bounds, then per block.
    Shape: ``(channels, samples)`` -> ``(channels, blocks)``.
    """
    block, step = LOUDNESS_BLOCK_S, 0.25
    n = x.shape[1]
    count = int(np.round((n / sample_rate - block) / (block * step))) + 1
    j = np.arange(count, dtype=np.float64)
    lower = np.minimum((block * (j * step) * sample_rate).astype(np.int64), n)
    upper = np.minimum((block * (j * step + 1) * sample_rate).astype(np.int64), n)
    bounds = np.union1d(lower, upper)
    starts = bounds[bounds < n]  # starts[0] is 0 (the first block's lower bound)
    partial = np.zeros((x.shape[0], len(starts) + 1))
    np.cumsum(np.add.reduceat(np.square(x), starts, axis=1), axis=1, out=partial[:, 1:])
    at = np.append(starts, n)  # partial[:, k]: the sum of the squares before at[k]
    total = partial[:, np.searchsorted(at, upper)] - partial[:, np.searchsorted(at, lower)]
    return total / (block * sample_rate)


def detect_flags(
    x: np.ndarray,
    sample_rate: int,
    silent_dbfs: Decibels = -60.0,
    inaudible_lufs: Decibels = -45.0,
    clip_level: float = 0.999,
    clip_fraction: float = 1e-3,
) -> set[str]:
    """Flags that can be detected from a stem's audio alone.

    Shape: ``x`` is ``(channels, samples)``.

    * ``missing``: no samples, or the sample peak (:func:`peak_dbfs`) is below
      ``silent_dbfs``; a missing stem gets no other flag.
    * ``inaudible``: not missing, but the integrated loudness (:func:`loudness_lufs`,
      gated, so long pauses do not lower it) is below ``inaudible_lufs``.
    * ``clipping``: more than ``clip_fraction`` of all samples (over all channels)
      have ``|x| >= clip_level``.

    A normal stem gets the empty set.
    """
    x = _waveform(x)
    if sample_rate <= 0:
        raise ValueError(f"sample_rate must be positive, got {sample_rate}")
    if x.size == 0 or peak_dbfs(x) < silent_dbfs:
        return {"missing"}
    flags: set[str] = set()
    if loudness_lufs(x, sample_rate) < inaudible_lufs:
        flags.add("inaudible")
    if np.count_nonzero(np.abs(x) >= clip_level) > clip_fraction * x.size:
        flags.add("clipping")
    return flags


def parse_flag_names(names: Iterable[str]) -> dict[str, set[str]]:
    """Manual flags from the file names of a track folder (seed 002's convention).

    A name ``<stem_or_class>_<flag>`` (no extension; a leading folder path or URI is
    dropped) with a known flag (:data:`FLAGS`) sets that flag on ``<stem_or_class>``,
    e.g. ``guitar_bleed`` -> ``{"guitar": {"bleed"}}``; ``guitar_bad_quality`` ->
    ``{"guitar": {"bad_quality"}}``. Every other name (audio files, ``notes.txt``,
    ``metadata.yaml``, a bare ``bleed``) is ignored.
    """
    out: dict[str, set[str]] = {}
    for raw in names:
        name = str(raw).rstrip("/").rsplit("/", 1)[-1]
        for flag in sorted(FLAGS, key=len, reverse=True):
            suffix = "_" + flag
            if name.endswith(suffix) and len(name) > len(suffix):
                out.setdefault(name[: -len(suffix)], set()).add(flag)
                break
    return out


def read_flags_csv(text: str, source: str) -> dict[tuple[str, str], set[str]]:
    """Manual flags from a CSV file with the header ``track,stem,flag``.

    One flag per row; rows for the same ``(track, stem)`` accumulate; blank lines are
    skipped; cells are stripped of spaces. ``source`` names the file in errors.
    Raises :class:`~sepcore.errors.MetadataError` naming ``source`` and the line for a
    missing or wrong header, a row without exactly three non-empty cells, or an
    unknown flag.
    """
    rows = csv.reader(io.StringIO(text))
    out: dict[tuple[str, str], set[str]] = {}
    header_seen = False
    for cells in rows:
        line = rows.line_num
        cells = [c.strip() for c in cells]
        if not any(cells):
            continue
        if not header_seen:
            if [c.lower() for c in cells] != ["track", "stem", "flag"]:
                raise MetadataError(
                    source, None, f"line {line}: expected header 'track,stem,flag', got {cells}"
                )
            header_seen = True
            continue
        if len(cells) != 3 or not all(cells):
            raise MetadataError(
                source,
                None,
                f"line {line}: expected 3 non-empty cells track,stem,flag, got {cells}",
            )
        track, stem, flag = cells
        if flag not in FLAGS:
            raise MetadataError(
                source, "flag", f"line {line}: unknown flag '{flag}'; known: {', '.join(FLAGS)}"
            )
        out.setdefault((track, stem), set()).add(flag)
    return out


def excluded(flags: Iterable[str], exclude: Iterable[str] = DEFAULT_EXCLUDE) -> bool:
    """Whether a stem with ``flags`` is left out: it carries any flag of ``exclude``.

    Raises ValueError when ``exclude`` names an unknown flag (a typo would otherwise
    silently exclude nothing).
    """
    wanted = set(exclude)
    unknown = wanted - set(FLAGS)
    if unknown:
        raise ValueError(f"unknown flag(s) {sorted(unknown)} in exclude; known: {FLAGS}")
    return bool(wanted & set(flags))


def _waveform(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x)
    if x.ndim != 2:
        raise ValueError(f"x must be (channels, samples), got shape {x.shape}")
    return x
