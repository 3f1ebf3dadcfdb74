"""Reader of the Slakh2100 / Slakh2100-redux layout at any URI.

Layout (one track)::

    TrackNNNNN/
        mix.flac
        stems/SNN.flac        # only for stems whose audio was rendered
        MIDI/SNN.mid
        all_src.mid
        metadata.yaml         # written last by our renderer: the track's commit marker

Tracks sit either directly below the root or in split folders ``train``,
``validation``, ``test`` (and ``omitted`` in redux). Listing reads one listing of the
prefix plus every ``metadata.yaml``; it never opens audio.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from typing import Any

import yaml

from sepcore.errors import MetadataError, SepError
from sepcore.io import storage

SPLITS = ("train", "validation", "test", "omitted")
METADATA = "metadata.yaml"
AUDIO_SUFFIXES = (".flac", ".wav")


@dataclass(frozen=True)
class StemRecord:
    """One rendered stem of a track."""

    stem_id: str
    inst_class: str
    is_drum: bool
    program_num: int
    midi_program_name: str | None
    plugin_name: str | None
    audio_rendered: bool
    integrated_loudness: float | None
    audio_uri: str
    midi_uri: str | None


@dataclass(frozen=True)
class TrackRecord:
    """A track: its stems with audio, its mix and the rest of its metadata."""

    track_id: str
    split: str | None
    uri: str
    metadata_uri: str
    mix_uri: str | None
    stems: tuple[StemRecord, ...]
    missing_stems: tuple[str, ...] = ()
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def classes(self) -> set[str]:
        return {s.inst_class for s in self.stems}

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


# ---------------------------------------------------------------- parsing one file


def _require(meta: dict, key: str, types: tuple[type, ...], uri: str, where: str) -> Any:
    if key not in meta:
        raise MetadataError(uri, f"{where}{key}", "missing required field")
    value = meta[key]
    if isinstance(value, bool) and bool not in types:
        raise MetadataError(uri, f"{where}{key}", f"expected {types[0].__name__}, got {value!r}")
    if not isinstance(value, types):
        raise MetadataError(uri, f"{where}{key}", f"expected {types[0].__name__}, got {value!r}")
    return value


def _optional(meta: dict, key: str, types: tuple[type, ...], uri: str, where: str) -> Any:
    if meta.get(key) is None:
        return None
    return _require(meta, key, types, uri, where)


def parse_metadata(
    text: str,
    metadata_uri: str,
    present: set[str] | None = None,
    split: str | None = None,
) -> TrackRecord:
    """Parse one ``metadata.yaml``.

    ``present`` is the set of object URIs that exist below the track (from a listing);
    a stem marked ``audio_rendered`` whose audio is absent goes to ``missing_stems``.
    Without ``present`` every rendered stem is assumed to have FLAC audio.
    """
    try:
        meta = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise MetadataError(metadata_uri, None, f"not valid YAML ({exc})") from exc
    if not isinstance(meta, dict):
        raise MetadataError(metadata_uri, None, "expected a mapping at the top level")
    stems_meta = _require(meta, "stems", (dict,), metadata_uri, "")
    track_uri = storage.parent(metadata_uri)
    audio_dir = meta.get("audio_dir") or "stems"
    midi_dir = meta.get("midi_dir") or "MIDI"
    stems: list[StemRecord] = []
    missing: list[str] = []
    for stem_id in sorted(stems_meta):
        sm = stems_meta[stem_id]
        where = f"stems.{stem_id}."
        if not isinstance(sm, dict):
            raise MetadataError(metadata_uri, f"stems.{stem_id}", "expected a mapping")
        rendered = _require(sm, "audio_rendered", (bool,), metadata_uri, where)
        is_drum = _require(sm, "is_drum", (bool,), metadata_uri, where)
        program = _require(sm, "program_num", (int,), metadata_uri, where)
        inst = _require(sm, "inst_class", (str,), metadata_uri, where)
        loud = _optional(sm, "integrated_loudness", (float, int), metadata_uri, where)
        if not rendered:
            continue
        audio_uri = _find_audio(track_uri, audio_dir, str(stem_id), present)
        if audio_uri is None:
            missing.append(str(stem_id))
            continue
        midi_uri = storage.join(track_uri, midi_dir, f"{stem_id}.mid")
        stems.append(
            StemRecord(
                stem_id=str(stem_id),
                inst_class=inst,
                is_drum=is_drum,
                program_num=program,
                midi_program_name=_optional(sm, "midi_program_name", (str,), metadata_uri, where),
                plugin_name=_optional(sm, "plugin_name", (str,), metadata_uri, where),
                audio_rendered=True,
                integrated_loudness=None if loud is None or math.isinf(loud) else float(loud),
                audio_uri=audio_uri,
                midi_uri=midi_uri if present is None or midi_uri in present else None,
            )
        )
    mix_uri = _find_audio(track_uri, "", "mix", present)
    extra = {k: v for k, v in meta.items() if k != "stems"}
    return TrackRecord(
        track_id=storage.basename(track_uri),
        split=split,
        uri=track_uri,
        metadata_uri=metadata_uri,
        mix_uri=mix_uri,
        stems=tuple(stems),
        missing_stems=tuple(missing),
        extra=extra,
    )


def _find_audio(track_uri: str, folder: str, stem: str, present: set[str] | None) -> str | None:
    base = storage.join(track_uri, folder, stem) if folder else storage.join(track_uri, stem)
    if present is None:
        return base + AUDIO_SUFFIXES[0]
    for suffix in AUDIO_SUFFIXES:
        if base + suffix in present:
            return base + suffix
    return None


# ---------------------------------------------------------------- listing a dataset


def _locate(root: str, metadata_uri: str) -> str | None | bool:
    """The split of a metadata file below ``root``; False if it is not a track's."""
    rel = metadata_uri[len(root) :].strip("/").split("/")
    if rel == [METADATA]:
        return None
    if len(rel) == 2:
        return None
    if len(rel) == 3 and rel[0] in SPLITS:
        return rel[0]
    return False


def list_tracks(
    root: str,
    splits: Iterable[str] | None = None,
    errors: list[MetadataError] | None = None,
    max_workers: int = 16,
) -> list[TrackRecord]:
    """Every track below ``root``, sorted by split then track id.

    ``splits`` keeps only those splits (tracks outside split folders have split
    ``None`` and are kept only when ``splits`` is None). A malformed ``metadata.yaml``
    raises :class:`MetadataError`, unless ``errors`` is given: then the error is
    appended there and the track is left out.
    """
    root = storage.normalize_uri(root)
    wanted = set(splits) if splits is not None else None
    if wanted is not None and not wanted <= set(SPLITS):
        raise ValueError(f"unknown split(s) {sorted(wanted - set(SPLITS))}; known: {SPLITS}")
    present = set(storage.list_files(root))
    jobs: list[tuple[str, str | None]] = []
    for uri in sorted(present):
        if not uri.endswith("/" + METADATA) and uri != storage.join(root, METADATA):
            continue
        split = _locate(root, uri)
        if split is False:
            continue
        if wanted is not None and split not in wanted:
            continue
        jobs.append((uri, split))  # type: ignore[arg-type]

    def load(job: tuple[str, str | None]) -> TrackRecord | MetadataError:
        uri, split = job
        try:
            return parse_metadata(storage.read_text(uri), uri, present, split)
        except MetadataError as exc:
            return exc
        except SepError as exc:
            return MetadataError(uri, None, str(exc))

    with ThreadPoolExecutor(max_workers=max(1, max_workers)) as pool:
        results = list(pool.map(load, jobs))
    tracks = []
    for res in results:
        if isinstance(res, MetadataError):
            if errors is None:
                raise res
            errors.append(res)
        else:
            tracks.append(res)
    order = {s: i for i, s in enumerate(SPLITS)}
    tracks.sort(key=lambda t: (order.get(t.split or "", -1), t.track_id))
    return tracks
