"""Every data source of the prepare job as one record type, and loading its stems.

Sources (``kind`` in a job config's ``sources:`` list):

* ``slakh``: Slakh2100 / Slakh2100-redux or our own renders in that layout
  (:mod:`sepcore.data.slakh`).
* ``stems``: curated stem folders (seed 002, section 4.2)::

      root/
          <track>/
              guitar/  bass/  drums/  percussion/  piano/  vocals/  other/  (strings/)
                  *.wav | *.flac | *.aiff | *.mp3 | ...   # stems of that class
              mix/        # a premixed example: never a stem (mix_uri if exactly one)
              excluded/   # metronomes, reference and room tracks: never a stem
              guitar_bleed  guitar_checked  ...           # manual QA flags (empty files)

  A class folder may hold subfolders; their files belong to that class. Folder names
  match case-insensitively. A folder name that is no class (nor ``mix``/``excluded``)
  is an error (:class:`MetadataError` naming the folder), never silently ``other``: a
  misspelt ``guiter`` folder would otherwise put guitar into the rest mix. So is a
  flag file ``<class>_<word>`` whose word is no known flag. Hidden files and
  non-audio files in class folders are ignored; other files at track level too.
* ``stemfile``: ``*.stem.mp4`` / ``*.stem.m4a`` files below a prefix (MUSDB18 and NI
  Stems); audio streams 1..4 are drums, bass, other, vocals and stream 0 (the
  mixture) is the ``mix_uri``. A file's split is its folder's name when that is a
  split name (MUSDB18's ``train``/``test``).

Listing reads one listing of the prefix (plus Slakh's ``metadata.yaml`` files) and
never opens audio. Track ids are ``"<kind>:<name>"``; a source's optional ``name``
replaces the kind, so two sources of one kind can be combined.

Shapes: :func:`load_stem` returns ``(channels, samples)``; :func:`load_track_stems`
returns stems ``(stems, channels, samples)``.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from sepcore.data import slakh
from sepcore.data.classes import CLASSES, canonical_class
from sepcore.errors import AudioError, MetadataError, SepError
from sepcore.io import storage
from sepcore.io.audio import Audio, resample, to_channels
from sepcore.io.stemfile import STEM_NAMES, decode_any, read_stem_streams

log = logging.getLogger("sep.sources")

#: Manual QA flags of seed 002 (section 4.3.1).
FLAGS = ("missing", "bleed", "bad_quality", "inaudible", "mislabeled", "detailed", "checked")
#: Folders of a curated track that are never stems.
MIX_FOLDER, EXCLUDED_FOLDER = "mix", "excluded"
#: File suffixes taken as audio in curated folders (lower case).
AUDIO_SUFFIXES = (
    ".wav", ".flac", ".aif", ".aiff", ".mp3", ".ogg", ".oga", ".opus", ".m4a", ".aac", ".mp4",
)  # fmt: skip
STEMFILE_SUFFIXES = (".stem.mp4", ".stem.m4a")
SPLITS = ("train", "validation", "test")

_FLAG_FILE = re.compile(r"^([a-z]+)_([a-z_]+)$")


@dataclass(frozen=True)
class SourceStem:
    """One stem of a source track."""

    stem_id: str  # unique within the track
    inst_class: str  # canonical class (sepcore.data.classes.canonical_class)
    uri: str
    stream: int | None = None  # audio stream number inside a stem file, else None
    original_class: str = ""  # the dataset's own name ("Strings (continued)", "guitar")
    flags: tuple[str, ...] = ()  # manual QA flags from the dataset


@dataclass(frozen=True)
class SourceTrack:
    """One track of any source: its stems, its mix if any, and the source's metadata."""

    track_id: str  # unique across sources: "<kind or name>:<track>", e.g. "slakh:Track00001"
    kind: str  # "slakh" | "stems" | "stemfile"
    uri: str
    split: str | None
    stems: tuple[SourceStem, ...]
    mix_uri: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def classes(self) -> set[str]:
        return {s.inst_class for s in self.stems}


# ---------------------------------------------------------------- slakh


def slakh_tracks(
    uri: str,
    splits: Sequence[str] | None = None,
    name: str = "slakh",
    errors: list[MetadataError] | None = None,
    styles: Sequence[str] | None = None,
) -> list[SourceTrack]:
    """The tracks of a Slakh-layout dataset; ``errors`` as in :func:`slakh.list_tracks`.

    ``styles``: keep only the tracks whose ``metadata.yaml`` ``style`` is one of them
    (None: every track; :func:`style_filter`).
    """
    listed = slakh.list_tracks(uri, splits=splits, errors=errors)
    out = []
    for t in style_filter(listed, styles, uri):
        stems = tuple(
            SourceStem(
                stem_id=s.stem_id,
                inst_class=canonical_class(s.inst_class),
                uri=s.audio_uri,
                original_class=s.inst_class,
            )
            for s in t.stems
        )
        info = {
            s.stem_id: {
                "is_drum": s.is_drum,
                "program_num": s.program_num,
                "midi_program_name": s.midi_program_name,
                "plugin_name": s.plugin_name,
                "integrated_loudness": s.integrated_loudness,
                "midi_uri": s.midi_uri,
            }
            for s in t.stems
        }
        extra = {
            "metadata_uri": t.metadata_uri,
            "missing_stems": list(t.missing_stems),
            "stems": info,
            "metadata": t.extra,
        }
        out.append(
            SourceTrack(f"{name}:{t.track_id}", "slakh", t.uri, t.split, stems, t.mix_uri, extra)
        )
    return out


def _style(track: slakh.TrackRecord) -> str | None:
    """A Slakh-layout track's ``style`` (its ``metadata.yaml`` key), None when it has none."""
    style = track.extra.get("style")
    return None if style in (None, "") else str(style)


def style_filter(tracks: Sequence[slakh.TrackRecord], styles: Sequence[str] | None,
                 uri: str) -> list[slakh.TrackRecord]:  # fmt: skip
    """The ``tracks`` whose style (its ``metadata.yaml`` ``style``) is among ``styles``; all when None.

    A listed style that no track of ``uri`` has is logged as a warning naming it (a
    misspelt style would otherwise leave its tracks out in silence).
    """
    if styles is None:
        return list(tracks)
    wanted = set(styles)
    seen = {_style(t) for t in tracks}
    absent = [s for s in styles if s not in seen]
    if absent:
        have = sorted(s for s in seen if s is not None)
        log.warning("sources: no track of %s has the style(s) %s (styles there: %s)", uri, ", ".join(absent),
                    ", ".join(have) or "none")  # fmt: skip
    return [t for t in tracks if _style(t) in wanted]


# ---------------------------------------------------------------- curated stem folders


def _is_audio(filename: str) -> bool:
    return not filename.startswith(".") and filename.lower().endswith(AUDIO_SUFFIXES)


@dataclass
class _CuratedTrack:
    uri: str
    stems: list[tuple[str, str, str]] = field(default_factory=list)  # stem_id, folder, uri
    mix: list[str] = field(default_factory=list)
    excluded: list[str] = field(default_factory=list)
    flags: dict[str, list[str]] = field(default_factory=dict)
    ignored: list[str] = field(default_factory=list)
    error: MetadataError | None = None


def _add_track_file(track: _CuratedTrack, uri: str, filename: str) -> None:
    """A file directly in a track folder: a QA flag, or ignored."""
    m = _FLAG_FILE.match(filename.lower())
    if not m or m.group(1) not in CLASSES:
        track.ignored.append(uri)
        return
    cls, flag = m.groups()
    if flag not in FLAGS:
        raise MetadataError(uri, None, f"unknown QA flag '{flag}' (known: {', '.join(FLAGS)})")
    track.flags.setdefault(cls, []).append(flag)


def _add_class_file(track: _CuratedTrack, uri: str, rel: list[str]) -> None:
    """A file below a folder of a track; ``rel`` is its path below the track folder."""
    folder = rel[0].lower()
    if folder not in CLASSES and folder not in (MIX_FOLDER, EXCLUDED_FOLDER):
        known = ", ".join((*CLASSES, MIX_FOLDER, EXCLUDED_FOLDER))
        raise MetadataError(
            storage.join(track.uri, rel[0]), None, f"unknown class folder '{rel[0]}' ({known})"
        )
    if not _is_audio(rel[-1]):
        track.ignored.append(uri)
    elif folder == MIX_FOLDER:
        track.mix.append(uri)
    elif folder == EXCLUDED_FOLDER:
        track.excluded.append(uri)
    else:
        track.stems.append(("/".join(rel), rel[0], uri))


def _scan_curated(root: str) -> dict[str, _CuratedTrack]:
    tracks: dict[str, _CuratedTrack] = {}
    for uri in storage.list_files(root):
        rel = uri[len(root) :].strip("/").split("/")
        if len(rel) < 2 or any(part.startswith(".") for part in rel):
            continue  # files beside the track folders, hidden files and folders
        track = tracks.setdefault(rel[0], _CuratedTrack(storage.join(root, rel[0])))
        if track.error is not None:
            continue
        try:
            if len(rel) == 2:
                _add_track_file(track, uri, rel[1])
            else:
                _add_class_file(track, uri, rel[1:])
        except MetadataError as exc:
            track.error = exc
    return tracks


def _curated_record(name: str, t: _CuratedTrack, split: str | None) -> SourceTrack:
    stems = tuple(
        SourceStem(
            stem_id=stem_id,
            inst_class=canonical_class(folder),
            uri=uri,
            original_class=folder,
            flags=tuple(sorted(set(t.flags.get(canonical_class(folder), ())))),
        )
        for stem_id, folder, uri in sorted(t.stems)
    )
    extra = {
        "flags": {c: sorted(set(f)) for c, f in sorted(t.flags.items())},
        "mix_files": sorted(t.mix),
        "excluded": sorted(t.excluded),
        "ignored": sorted(t.ignored),
    }
    mix_uri = t.mix[0] if len(t.mix) == 1 else None
    return SourceTrack(f"{name}:{storage.basename(t.uri)}", "stems", t.uri, split, stems, mix_uri,
                       extra)  # fmt: skip


def curated_tracks(
    uri: str,
    split: str | None = None,
    name: str = "stems",
    errors: list[MetadataError] | None = None,
) -> list[SourceTrack]:
    """The track folders directly below ``uri`` (seed 002's layout), sorted by id.

    Every track gets ``split``. A track with an unknown class folder or flag raises
    :class:`MetadataError`, unless ``errors`` is given: then the error is appended
    there and the track left out. Tracks with no stems (only ``mix``/``excluded``)
    are kept with ``stems=()``. ``extra`` holds the flags by class, the ``mix`` and
    ``excluded`` files and the ignored files.
    """
    root = storage.normalize_uri(uri)
    out = []
    for _, t in sorted(_scan_curated(root).items()):
        if t.error is not None:
            if errors is None:
                raise t.error
            errors.append(t.error)
            continue
        out.append(_curated_record(name, t, split))
    return out


# ---------------------------------------------------------------- stem files


def _stemfile_name(uri: str) -> str | None:
    base = storage.basename(uri)
    if base.startswith("."):
        return None
    for suffix in STEMFILE_SUFFIXES:
        if base.lower().endswith(suffix):
            return base[: -len(suffix)]
    return None


def stemfile_tracks(
    uri: str, split: str | None = None, name: str = "stemfile"
) -> list[SourceTrack]:
    """Every ``*.stem.mp4`` (or ``.stem.m4a``) below ``uri`` as a track, sorted by id.

    Stems are audio streams 1..4 named after :data:`STEM_NAMES` (drums, bass, other,
    vocals); ``mix_uri`` is the file itself, whose first audio stream is the mixture.
    The split is ``split`` if given, else the parent folder's name when it is one of
    :data:`SPLITS`. Two files with one name raise ``ValueError``.
    """
    root = storage.normalize_uri(uri)
    out: dict[str, SourceTrack] = {}
    for file_uri in storage.list_files(root):
        track = _stemfile_name(file_uri)
        if track is None:
            continue
        folder = storage.basename(storage.parent(file_uri))
        track_split = split or (folder if folder in SPLITS else None)
        stems = tuple(
            SourceStem(stem, canonical_class(stem), file_uri, stream=i, original_class=stem)
            for i, stem in enumerate(STEM_NAMES)
            if i > 0
        )
        rec = SourceTrack(f"{name}:{track}", "stemfile", file_uri, track_split, stems, file_uri,
                          {"mix_stream": 0})  # fmt: skip
        if rec.track_id in out:
            raise ValueError(
                f"two stem files named '{track}': {out[rec.track_id].uri} and {file_uri}"
            )
        out[rec.track_id] = rec
    return [out[k] for k in sorted(out)]


# ---------------------------------------------------------------- all sources


def _slakh_spec(spec: Mapping[str, Any], errors: list[MetadataError] | None) -> list[SourceTrack]:
    return slakh_tracks(spec["uri"], spec.get("splits"), spec.get("name") or "slakh", errors, spec.get("styles"))


def _stems_spec(spec: Mapping[str, Any], errors: list[MetadataError] | None) -> list[SourceTrack]:
    return curated_tracks(spec["uri"], spec.get("split"), spec.get("name") or "stems", errors)


def _stemfile_spec(
    spec: Mapping[str, Any], errors: list[MetadataError] | None
) -> list[SourceTrack]:
    return stemfile_tracks(spec["uri"], spec.get("split"), spec.get("name") or "stemfile")


_Lister = Callable[[Mapping[str, Any], list[MetadataError] | None], list[SourceTrack]]

#: Source kinds by name, and the keys each accepts besides ``kind`` and ``uri``.
SOURCE_KINDS: dict[str, tuple[_Lister, tuple[str, ...]]] = {
    "slakh": (_slakh_spec, ("splits", "name", "styles")),
    "stems": (_stems_spec, ("split", "name")),
    "stemfile": (_stemfile_spec, ("split", "name")),
}


def _check_spec(i: int, spec: Mapping[str, Any]) -> _Lister:
    kind = spec.get("kind")
    if kind not in SOURCE_KINDS:
        raise ValueError(f"sources[{i}]: unknown kind {kind!r} (known: {', '.join(SOURCE_KINDS)})")
    lister, optional = SOURCE_KINDS[kind]
    if not spec.get("uri"):
        raise ValueError(f"sources[{i}] ({kind}): 'uri' is required")
    unknown = set(spec) - {"kind", "uri", *optional}
    if unknown:
        raise ValueError(
            f"sources[{i}] ({kind}): unknown key(s) {sorted(unknown)} "
            f"(allowed: kind, uri, {', '.join(optional)})"
        )
    if "split" in spec and spec["split"] not in SPLITS:
        raise ValueError(f"sources[{i}] ({kind}): split must be one of {SPLITS}")
    styles = spec.get("styles")
    if styles is not None and (isinstance(styles, str) or not styles or not all(isinstance(s, str) for s in styles)):
        raise ValueError(f"sources[{i}] ({kind}): styles is a non-empty list of style names (or null: all), "
                         f"got {styles!r}")  # fmt: skip
    return lister


def list_sources(
    specs: Sequence[Mapping[str, Any]], errors: list[MetadataError] | None = None
) -> list[SourceTrack]:
    """The tracks of every source in ``specs`` (a job config's ``sources:`` list), in order.

    Each spec: ``{kind: slakh|stems|stemfile, uri: ..., name: ...}`` plus ``splits``
    (slakh: keep only these) or ``split`` (stems/stemfile: assign this split), and for
    slakh ``styles`` (keep only the tracks of these ``style`` s, :func:`style_filter`). An
    unknown kind or key raises ``ValueError``; so does a track id given twice (two
    sources of one kind need different ``name``\\ s). Malformed tracks raise
    :class:`MetadataError`, or go to ``errors`` when it is given.
    """
    listers = [_check_spec(i, spec) for i, spec in enumerate(specs)]
    tracks: list[SourceTrack] = []
    seen: dict[str, str] = {}
    for lister, spec in zip(listers, specs, strict=True):
        for t in lister(spec, errors):
            if t.track_id in seen:
                raise ValueError(f"track id '{t.track_id}' given twice: {seen[t.track_id]} and "
                                 f"{t.uri} (give one source a different 'name')")  # fmt: skip
            seen[t.track_id] = t.uri
            tracks.append(t)
    return tracks


# ---------------------------------------------------------------- loading audio


def _conform(audio: Audio, sample_rate: int, channels: int) -> np.ndarray:
    """``audio`` at ``sample_rate`` with ``channels``: a downmix to mono comes first, so a
    stereo stem is resampled once as one channel, not twice (resampling is linear: the same
    signal to float32 rounding)."""
    if channels == 1:
        return resample(to_channels(audio, 1), sample_rate).samples
    return to_channels(resample(audio, sample_rate), channels).samples


def _read(uri: str, streams: Sequence[int] | None) -> list[Audio]:
    """Decode a plain audio file (``streams`` None) or the given streams of a stem file."""
    try:
        if streams is None:
            return [decode_any(uri)]
        return read_stem_streams(uri, select=streams)
    except AudioError:
        raise
    except SepError as exc:
        raise AudioError(uri, str(exc)) from exc


def load_stem(stem: SourceStem, sample_rate: int, channels: int) -> np.ndarray:
    """One stem's audio at ``sample_rate`` with ``channels`` channels (1 or 2).

    Shape: ``(channels, samples)``, float32. A stem that cannot be read raises
    :class:`AudioError` naming its URI.
    """
    (audio,) = _read(stem.uri, None if stem.stream is None else [stem.stream])
    return _conform(audio, sample_rate, channels)


def load_track_stems(
    track: SourceTrack, sample_rate: int, channels: int
) -> tuple[np.ndarray, list[SourceStem]]:
    """All stems of ``track`` at ``sample_rate`` / ``channels``, zero-padded to the longest.

    A stem file is decoded once for all its stems. The list gives the stem of each
    row (``track.stems`` in order).

    Shape: ``(stems, channels, samples)``, float32; ``(0, channels, 0)`` for no stems.
    Raises :class:`AudioError` naming the URI of the first stem that cannot be read.
    """
    arrays: dict[int, np.ndarray] = {}
    by_file: dict[str, list[tuple[int, int]]] = {}  # stem file -> (row, stream) pairs
    for i, stem in enumerate(track.stems):
        if stem.stream is None:
            arrays[i] = load_stem(stem, sample_rate, channels)
        else:
            by_file.setdefault(stem.uri, []).append((i, stem.stream))
    for uri, pairs in by_file.items():
        decoded = _read(uri, [stream for _, stream in pairs])
        for (i, _), audio in zip(pairs, decoded, strict=True):
            arrays[i] = _conform(audio, sample_rate, channels)
    length = max((a.shape[1] for a in arrays.values()), default=0)
    out = np.zeros((len(track.stems), channels, length), dtype=np.float32)
    for i, a in arrays.items():
        out[i, :, : a.shape[1]] = a
    return out, list(track.stems)
