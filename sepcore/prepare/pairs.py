"""Per-track preparation: stems -> instrument/rest pair (or stems) -> silence, QA -> feature chunks.

These are the plain step functions of the ``prepare`` job; ``ray_jobs.prepare`` wires
them into Ray Data operators (mixing actors, feature actors) and ``bench`` runs them
in a plain loop. Nothing here imports Ray.

A prepared **row** is one chunk of ``frames`` feature frames of one track. Array
columns are stored as raw little-endian bytes of the dataset's dtype; their shapes
are recorded once in the dataset manifest (:func:`row_shapes`) and undone by
:func:`decode_column`. Columns:

* ``track_id`` (str), ``split`` (str), ``chunk`` (int)
* ``copy`` (int, with augmentation only): 0 for the track's own pair, ``k`` for remix copy ``k``
  (:mod:`sepcore.prepare.augment`)
* ``mix``: mixture feature, ``(channels, bins * (2C+1), frames)`` with context C
* ``target``: the instrument's feature, ``(channels, bins, frames)`` (``outputs`` has "target")
* ``targets`` (several targets, instead of ``target``): the feature of each stem of
  :attr:`PrepareSpec.stems <sepcore.prepare.config.PrepareSpec.stems>` in that order,
  ``(stems, channels, bins, frames)``
* ``irm`` / ``ibm``: ideal ratio / binary mask of the instrument, same shape (STFT only)
* ``activations``: RMS activation per class in :data:`sepcore.data.classes.CLASSES` order,
  ``(classes, frames)``, 60 dB range mapped to [0, 1] (seed 001)
* ``levels`` (random mixes only): level of each class in the mix, ``(classes,)``
"""

from __future__ import annotations

import hashlib
import io
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from sepcore.data.classes import CLASSES
from sepcore.data.sources import SourceStem, SourceTrack, load_stem, load_track_stems
from sepcore.errors import AudioError
from sepcore.io import storage
from sepcore.prepare import augment, features, mixing, qa, silence
from sepcore.prepare.config import PrepareSpec  # re-exported: the spec of these steps


@dataclass
class TrackPair:
    """A track's audio after mixing.

    Shapes: ``instrument``, ``rest``, ``mix`` are ``(channels, samples)``;
    ``class_sums`` is ``(classes, channels, samples)`` in :data:`CLASSES` order until
    :func:`finish_pair` turns it into ``activations`` ``(classes, frames)`` (and drops
    what the feature step does not need, so less travels between actors).

    Several targets (``spec.targets``): ``sources`` is ``(len(spec.stems), channels,
    samples)``, the sum of each stem's usable stems (:func:`stem_sums`), adding up to
    ``mix``; ``instrument`` is then empty, ``(channels, 0)``, and ``rest`` None. With one
    target ``sources`` is None.
    """

    instrument: np.ndarray
    rest: np.ndarray | None
    mix: np.ndarray
    class_sums: np.ndarray | None
    flags: dict[str, list[str]]
    excluded: list[str]
    silence: dict[str, Any] = field(default_factory=dict)
    activations: np.ndarray | None = None
    sources: np.ndarray | None = None


class SkipTrack(Exception):
    """A track that is fine but yields no rows (no target stem, too much silence)."""


# ---------------------------------------------------------------- manual flags


def apply_manual_flags(tracks: Sequence[SourceTrack], flags: dict[tuple[str, str], set[str]]) -> list[SourceTrack]:
    """Add flags from a ``track,stem,flag`` table (:func:`sepcore.prepare.qa.read_flags_csv`).

    ``track`` matches a track id (``slakh:Track00001``) or its folder or file name
    (``Track00001``); ``stem`` matches a stem id (``S01``, ``guitar/take1.wav``) or a
    class (``guitar``: every stem of that class).
    """
    out = []
    for track in tracks:
        names = {track.track_id, track.track_id.split(":", 1)[-1], storage.basename(track.uri)}
        stems = []
        for stem in track.stems:
            extra: set[str] = set()
            for (t, s), fl in flags.items():
                if t in names and s in (stem.stem_id, stem.inst_class):
                    extra |= fl
            stems.append(replace(stem, flags=tuple(sorted(set(stem.flags) | extra))) if extra else stem)
        out.append(replace(track, stems=tuple(stems)))
    return out


# ---------------------------------------------------------------- mixing


def class_sums(stems: np.ndarray, classes: Sequence[str]) -> np.ndarray:
    """Sum of the stems of each class. Shape: ``(stems, ch, n)`` -> ``(len(CLASSES), ch, n)``."""
    out = np.zeros((len(CLASSES), *stems.shape[1:]), dtype=np.float32)
    for stem, cls in zip(stems, classes, strict=True):
        out[CLASSES.index(cls)] += stem
    return out


def stem_sums(stems: np.ndarray, classes: Sequence[str], targets: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
    """The stems of several targets and their mix: each target's stems summed, then all others ("other").

    Sums are taken in float64 and rounded once; ``mix`` is the float64 sum of the rounded
    stems, rounded once, so ``sources.sum(0)`` equals ``mix`` to float32 rounding. A target
    without stems is zeros. Raises ValueError for an unknown class or one of
    :data:`~sepcore.prepare.mixing.UNMIXABLE`.
    Shape: ``(stems, channels, samples)`` -> ``sources`` ``(len(targets) + 1, channels,
    samples)`` and ``mix`` ``(channels, samples)``, float32.
    """
    if stems.ndim != 3 or len(classes) != stems.shape[0]:
        raise ValueError(f"stems {stems.shape} must be (stems, channels, samples), one class each ({len(classes)})")
    for name in classes:
        if name in mixing.UNMIXABLE or name not in CLASSES:
            raise ValueError(f"stems of class '{name}' cannot be mixed (known: {CLASSES})")
    slot = [targets.index(c) if c in targets else len(targets) for c in classes]
    sources = np.zeros((len(targets) + 1, *stems.shape[1:]), dtype=np.float32)
    for k in range(len(sources)):
        members = [i for i, j in enumerate(slot) if j == k]
        if members:
            acc = stems[members[0]].astype(np.float64)
            for i in members[1:]:
                acc += stems[i]
            sources[k] = acc
    mix = sources.sum(axis=0, dtype=np.float64).astype(np.float32)
    return sources, mix


def make_pair(track: SourceTrack, spec: PrepareSpec, draws: Sequence[augment.StemDraw] | None = None) -> TrackPair:
    """Load a track's stems, flag and exclude bad ones, sum instrument and rest (or, with
    ``spec.targets``, the stems of :attr:`PrepareSpec.stems`, see :class:`TrackPair`).

    ``draws`` (one per stem of ``track``): gains and channel swaps applied to the stems
    after their QA flags are found (:mod:`sepcore.prepare.augment`).
    Raises :class:`~sepcore.errors.AudioError` naming a stem that cannot be read and
    :class:`SkipTrack` when no usable stem of the target class is left (several targets:
    of any target class).
    """
    if spec.skip_without_target:  # known from the metadata alone: nothing is decoded
        wanted = set(spec.targets) if spec.targets else {single_target(spec)}
        if not wanted & {s.inst_class for s in track.stems}:
            raise SkipTrack(_no_target(spec))
    stems, records = load_track_stems(track, spec.sample_rate, spec.channels)
    flags: dict[str, list[str]] = {}
    keep = []
    for audio, stem in zip(stems, records, strict=True):
        found = set(stem.flags)
        if spec.detect_flags:
            found |= qa.detect_flags(audio, spec.sample_rate)
        flags[stem.stem_id] = sorted(found)
        keep.append(not qa.excluded(found, spec.exclude_flags))
    if draws is not None:
        stems = augment.apply_stems(stems, draws)
    kept = stems[np.array(keep, dtype=bool)] if len(keep) else stems
    classes = [r.inst_class for r, k in zip(records, keep, strict=True) if k]
    excluded = [r.stem_id for r, k in zip(records, keep, strict=True) if not k]
    if spec.targets:
        if spec.skip_without_target and not set(spec.targets) & set(classes):
            raise SkipTrack(_no_target(spec))
        sources, mix = stem_sums(kept, classes, spec.targets)
        empty = np.zeros((mix.shape[0], 0), dtype=np.float32)
        return TrackPair(empty, None, mix, class_sums(kept, classes), flags, excluded, sources=sources)
    target = single_target(spec)
    if spec.skip_without_target and target not in classes:
        raise SkipTrack(_no_target(spec))
    instrument, rest, mix = mixing.instrument_rest(kept, classes, target)
    return TrackPair(instrument, rest, mix, class_sums(kept, classes), flags, excluded)


def _no_target(spec: PrepareSpec) -> str:
    """Why a track without a usable target stem is skipped."""
    if spec.targets:
        return f"no usable stem of {', '.join(spec.targets)}"
    return f"no usable '{single_target(spec)}' stem"


def single_target(spec: PrepareSpec) -> str:
    """The one target of a single-target spec (ValueError for a multi-target one)."""
    if spec.target is None:
        raise ValueError(f"the spec has several targets {spec.targets}, not one")
    return spec.target


def make_sources(track: SourceTrack, spec: PrepareSpec) -> tuple[np.ndarray, np.ndarray]:
    """A track's mix and its stems for a multi-target ``spec`` (validation, evaluation).

    As :func:`make_pair` (QA flags and exclusions, :class:`SkipTrack` without any target
    class when ``spec.skip_without_target``), no augmentation. ``sources.sum(0)`` equals
    ``mix`` to float32 rounding.
    Shape: ``mix`` ``(channels, samples)``, ``sources`` ``(len(spec.stems), channels, samples)``.
    """
    if not spec.targets:
        raise ValueError("make_sources needs a spec with targets (several stems); use make_pair")
    pair = make_pair(track, spec)
    assert pair.sources is not None  # multi-target pairs always have them
    return pair.mix, pair.sources


def activation_params(spec: PrepareSpec) -> tuple[int, int]:
    """(frame_length, hop) of the activations: the feature's own framing."""
    hop = spec.extractor().hop
    return int(spec.feature.get("n_fft", 2 * hop)), hop


def finish_pair(pair: TrackPair, spec: PrepareSpec) -> TrackPair:
    """Compute the class activations and drop signals the feature step won't use."""
    act = None
    if "activations" in spec.outputs and pair.class_sums is not None:
        act = features.rms_activation(pair.class_sums, *activation_params(spec))
    rest = pair.rest if "ibm" in spec.outputs else None
    return TrackPair(pair.instrument, rest, pair.mix, None, pair.flags, pair.excluded, pair.silence, act, pair.sources)


def mix_track(track: SourceTrack, spec: PrepareSpec) -> TrackPair:
    """The mixing step of one track: :func:`make_pair`, silence, :func:`finish_pair`."""
    return finish_pair(adjust_pair_silence(make_pair(track, spec), spec), spec)


def mix_copies(track: SourceTrack, split: str, spec: PrepareSpec, pool: Sequence[SourceTrack] = ()) -> list[tuple[int, TrackPair]]:
    """The pairs of one track as ``(copy, pair)``: its own (copy 0, :func:`mix_track`) and, in a
    split that ``spec.augment`` augments, its stems' gains and swaps drawn and its remix copies
    ``1..remix_copies`` with donors from ``pool`` (the split's tracks, see
    :func:`sepcore.prepare.augment.donor_pool`; with several targets every stem comes from a
    donor, :func:`sepcore.prepare.augment.plan_remix_stems`). A copy without any donor is left out.
    """
    aug = spec.augment
    if aug is None or split not in aug.splits:
        return [(0, mix_track(track, spec))]
    rng = augment.copy_rng(spec.seed, aug, track.track_id, 0)
    own = adjust_pair_silence(make_pair(track, spec, augment.draw_stems(rng, len(track.stems), aug, spec.channels)), spec)
    pairs = [(0, finish_pair(own, spec))]
    donors = {t.track_id: t for t in pool}
    for k in range(1, aug.remix_copies + 1):
        if spec.targets:
            plan = augment.plan_remix_stems(track, k, pool, spec.targets, aug, spec.seed, spec.channels,
                                            spec.exclude_flags)  # fmt: skip
        else:
            plan = augment.plan_remix(track, k, pool, single_target(spec), aug, spec.seed, spec.channels,
                                      spec.exclude_flags)  # fmt: skip
        if plan.parts:
            pairs.append((k, finish_pair(remix_copy(own, plan, donors, spec), spec)))
    return pairs


def remix_copy(own: TrackPair, plan: augment.RemixPlan, donors: dict[str, SourceTrack], spec: PrepareSpec) -> TrackPair:
    """Apply a remix plan to a track's own pair (before :func:`finish_pair`): its instrument, the
    donors' parts as the rest; with several targets every stem from the donors' parts, as long as
    the track's mix (:func:`sepcore.prepare.augment.remix_stems`). Raises
    :class:`~sepcore.errors.AudioError` naming a donor stem that cannot be read (flag it in
    ``qa.flags_csv`` to leave it out)."""
    length = own.mix.shape[-1]
    parts = []
    for part in plan.parts:
        try:
            audio = augment.load_part(part, donors[part.track_id], length, spec.channels, lambda s: donor_stem(s, spec))
        except AudioError as exc:
            raise AudioError(exc.uri, f"{exc.problem} (a donor of remix copy {plan.copy} of {plan.track_id})") from exc
        parts.append((part.inst_class, audio))
    if spec.targets:
        sources, mix, sums = augment.remix_stems(spec.targets, parts, spec.channels, length)
        return TrackPair(own.instrument, None, mix, sums, own.flags, own.excluded, own.silence, sources=sources)
    rest, mix, sums = augment.remix(own.instrument, single_target(spec), parts)
    return TrackPair(own.instrument, rest, mix, sums, own.flags, own.excluded, own.silence)


def donor_stem(stem: SourceStem, spec: PrepareSpec) -> np.ndarray | None:
    """A donor stem's audio ``(channels, samples)``, or None when its QA flags exclude it."""
    audio = load_stem(stem, spec.sample_rate, spec.channels)
    found = set(stem.flags) | (qa.detect_flags(audio, spec.sample_rate) if spec.detect_flags else set())
    return None if qa.excluded(found, spec.exclude_flags) else audio


def adjust_pair_silence(pair: TrackPair, spec: PrepareSpec) -> TrackPair:
    """Cut the target's silences from every signal of the pair (no-op when off)."""
    if spec.silence is None or not spec.silence.enabled:
        return pair
    if pair.rest is None or pair.class_sums is None:
        raise ValueError("silence adjustment needs the pair before finish_pair")
    s = spec.silence
    result = silence.adjust_silence(
        pair.instrument, [pair.rest, pair.mix, pair.class_sums], spec.sample_rate,
        target_ratio=s.target_ratio, cutoff_ratio=s.cutoff_ratio,
        threshold_dbfs=s.threshold_dbfs, min_silence_s=s.min_silence_s,
    )  # fmt: skip
    info = {
        "ratio_before": round(result.ratio_before, 4),
        "ratio_after": round(result.ratio_after, 4),
        "removed_samples": int(sum(b - a for a, b in result.removed_spans)),
    }
    if not result.kept:
        raise SkipTrack(f"audio ratio {result.ratio_after:.2f} below cutoff {s.cutoff_ratio}")
    rest, mix, sums = result.others
    return TrackPair(result.target, rest, mix, sums, pair.flags, pair.excluded, info)


# ---------------------------------------------------------------- features


def feature_chunks(pair: TrackPair, spec: PrepareSpec, extractor: features.FeatureExtractor) -> dict[str, np.ndarray]:
    """All chunked arrays of one pair, each ``(chunks, ...)``, in the storage dtype."""
    frames, hop = spec.frames, spec.chunk_hop or spec.frames
    mix_f = extractor(pair.mix)
    out: dict[str, np.ndarray] = {}
    mix_in = features.stack_context(mix_f, spec.context) if spec.context else mix_f
    out["mix"] = features.chunk_frames(mix_in, frames, hop, spec.pad)
    if spec.targets:
        if "target" in spec.outputs:
            if pair.sources is None:
                raise ValueError("the pair has no sources: a multi-target spec needs a multi-target pair")
            out["targets"] = features.chunk_stems(features.stem_features(extractor, pair.sources), frames, hop, spec.pad)
    elif set(spec.outputs) & {"target", "irm", "ibm"}:
        target_f = extractor(pair.instrument)
        if "target" in spec.outputs:
            out["target"] = features.chunk_frames(target_f, frames, hop, spec.pad)
        if "irm" in spec.outputs:
            irm = features.ideal_ratio_mask(target_f, mix_f)
            out["irm"] = features.chunk_frames(irm, frames, hop, spec.pad)
        if "ibm" in spec.outputs:
            if pair.rest is None:
                raise ValueError("the pair has no rest signal for the binary mask")
            ibm = features.ideal_binary_mask(target_f, extractor(pair.rest))
            out["ibm"] = features.chunk_frames(ibm, frames, hop, spec.pad)
    if "activations" in spec.outputs:
        if pair.activations is None:
            raise ValueError("the pair has no activations: call finish_pair first")
        out["activations"] = features.chunk_frames(pair.activations[None], frames, hop, spec.pad)[:, 0]
    return {k: features.to_storage(v, spec.dtype) for k, v in out.items()}  # type: ignore[arg-type]


def row_shapes(spec: PrepareSpec) -> dict[str, list[int]]:
    """Shape of each array column of a row (what :func:`decode_column` restores)."""
    ex = spec.extractor()
    bins = ex.n_bins
    shapes = {"mix": [spec.channels, bins * (2 * spec.context + 1), spec.frames]}
    if spec.targets and "target" in spec.outputs:
        shapes["targets"] = [len(spec.stems), spec.channels, bins, spec.frames]
    for name in ("target", "irm", "ibm") if not spec.targets else ():
        if name in spec.outputs:
            shapes[name] = [spec.channels, bins, spec.frames]
    if "activations" in spec.outputs:
        shapes["activations"] = [len(CLASSES), spec.frames]
    if spec.target == "random_mix":
        shapes["levels"] = [len(CLASSES)]
    return shapes


def dataset_schema(spec: PrepareSpec) -> dict[str, Any]:
    """The part of ``dataset.json`` that says how to read rows and what they hold."""
    shapes = row_shapes(spec)
    return {
        "format": "sep-prepare/1",
        "columns": ["track_id", "split", "chunk", *(["copy"] if spec.augment else []), *shapes],
        "shapes": shapes,
        "dtype": spec.dtype,
        "classes": list(CLASSES),
        "target": None if spec.targets else spec.target,
        "targets": list(spec.targets) or None,
        "stems": list(spec.stems) or None,
        "sample_rate": spec.sample_rate,
        "channels": spec.channels,
        "feature": {"name": spec.feature["name"], **spec.extractor().params()},
        "frames": spec.frames,
        "chunk_hop": spec.chunk_hop or spec.frames,
        "context": spec.context,
        "augment": None if spec.augment is None else {**spec.augment.model_dump(mode="json"), "prepare_seed": spec.seed},
    }


def track_rows(track_id: str, split: str, arrays: dict[str, np.ndarray], extra: dict[str, np.ndarray] | None = None,
               copy: int | None = None) -> list[dict[str, Any]]:  # fmt: skip
    """One row per chunk with array columns as bytes (and ``copy`` unless None)."""
    count = len(arrays["mix"])
    rows = []
    for k in range(count):
        row: dict[str, Any] = {"track_id": track_id, "split": split, "chunk": k}
        if copy is not None:
            row["copy"] = copy
        for name, arr in arrays.items():
            row[name] = arr[k].tobytes()
        for name, value in (extra or {}).items():
            row[name] = np.asarray(value, dtype=arrays["mix"].dtype).tobytes()
        rows.append(row)
    return rows


def decode_column(values: Iterable[bytes], shape: Sequence[int], dtype: str) -> np.ndarray:
    """Bytes of a column -> ``(rows, *shape)`` array."""
    chunks = [np.frombuffer(v, dtype=dtype) for v in values]
    if not chunks:
        return np.zeros((0, *shape), dtype=dtype)
    return np.stack(chunks).reshape(len(chunks), *shape)


# ---------------------------------------------------------------- shards


def shard_name(track_id: str) -> str:
    """A safe, unique file stem for a track id (no separators, no '..')."""
    safe = re.sub(r"[^A-Za-z0-9._-]+", "_", track_id).strip("._") or "track"
    return f"{safe[:80]}-{hashlib.sha1(track_id.encode()).hexdigest()[:8]}"


def rows_to_parquet(rows: list[dict[str, Any]]) -> bytes:
    """Rows -> Parquet bytes (array columns as binary).

    The table is built column by column (the rows share their keys): the same table as
    ``pa.Table.from_pylist(rows)``, about 10x faster.
    """
    table = pa.Table.from_pydict({k: [r[k] for r in rows] for k in rows[0]}) if rows else pa.Table.from_pylist(rows)
    buf = io.BytesIO()
    pq.write_table(table, buf, compression="snappy", row_group_size=64)
    return buf.getvalue()


def process_track(track: SourceTrack, split: str, spec: PrepareSpec, extractor: features.FeatureExtractor | None = None) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """The whole per-track step in one call (plain loops and benchmarks use it)."""
    pair = mix_track(track, spec)
    arrays = feature_chunks(pair, spec, extractor or spec.extractor())
    info = {"flags": pair.flags, "excluded": pair.excluded, "silence": pair.silence,
            "seconds": pair.mix.shape[-1] / spec.sample_rate}  # fmt: skip
    return track_rows(track.track_id, split, arrays), info


# ---------------------------------------------------------------- random mixes (seed 001)


def solo_segments(
    track: SourceTrack, spec: PrepareSpec, seconds: float, threshold_dbfs: float = -50.0
) -> list[tuple[str, str, np.ndarray]]:
    """Cut every usable stem into non-overlapping solo segments of ``seconds``.

    Returns ``(segment_id, class, audio)`` with audio ``(channels, samples)``; segments
    whose RMS is below ``threshold_dbfs`` (silence) and stems excluded by their QA
    flags are left out, as is a last partial segment.
    """
    stems, records = load_track_stems(track, spec.sample_rate, spec.channels)
    n = int(round(seconds * spec.sample_rate))
    floor = 10.0 ** (threshold_dbfs / 20.0)
    out = []
    for audio, stem in zip(stems, records, strict=True):
        found = set(stem.flags) | (qa.detect_flags(audio, spec.sample_rate) if spec.detect_flags else set())
        if qa.excluded(found, spec.exclude_flags):
            continue
        for k in range(audio.shape[-1] // n):
            seg = audio[:, k * n : (k + 1) * n]
            if float(np.sqrt(np.mean(np.square(seg, dtype=np.float64)))) >= floor:
                out.append((f"{track.track_id}/{stem.stem_id}/{k:04d}", stem.inst_class, np.ascontiguousarray(seg)))
    return out


def render_mix(plan: mixing.MixPlan, audio: dict[str, np.ndarray], spec: PrepareSpec) -> TrackPair:
    """Apply one plan: the mixture, and the activations of each class at its level."""
    mixture, label = mixing.apply_mix(plan, audio)
    n = mixture.shape[-1]
    sums = np.zeros((len(CLASSES), mixture.shape[0], n), dtype=np.float32)
    for seg, cls, level in zip(plan.segment_ids, plan.classes, plan.levels, strict=True):
        sums[CLASSES.index(cls)] += np.float32(level) * audio[seg][:, :n]
    pair = TrackPair(np.zeros_like(mixture), None, mixture, sums, {}, [])
    return finish_pair(pair, spec)


def level_vector(plan: mixing.MixPlan) -> np.ndarray:
    """The mix's label: summed level per class in :data:`CLASSES` order. Shape ``(classes,)``."""
    out = np.zeros(len(CLASSES), dtype=np.float32)
    for cls, level in zip(plan.classes, plan.levels, strict=True):
        out[CLASSES.index(cls)] += level
    return out
