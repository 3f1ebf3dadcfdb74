"""The band corpus: music21's pieces arranged for a band in many styles, as Slakh-like songs.

A song is one piece of :mod:`sepcore.data.songbook` (its lead sheet) arranged by
:mod:`sepcore.data.arranger` in one style, with a seed of its own; the render job
renders each part with a soundfont chosen per stem (:mod:`sepcore.data.soundfonts`).

Which pieces a render may use (:class:`BandCorpusConfig`):

* ``pieces``: every piece has a fixed split, ``train`` or ``test``, from a hash of its
  id (:func:`piece_split`; ``test_fraction`` of them are ``test``), so a held-out
  render (``pieces: test``) never shares a piece with a training render
  (``pieces: train``) whatever else either selects.
* ``exclude_collections``: collections kept out entirely (default ``essen``, the
  unseen-collection test set of ``configs/render_test_unseen.yaml``).
* ``piece_ids``: exactly these pieces instead (catalogue ids, or paths of the user's own
  ABC/MusicXML files), whatever their split or collection.

The song list is a pure function of the settings and the seed (:func:`band_songs`):
eligible pieces are shuffled by the seed and taken in that order; each song's style and
seed are drawn from the corpus seed and the piece id (the style among those that suit the
piece's metre), so adding pieces to a render does
not change the songs already in it.
"""

from __future__ import annotations

import hashlib
import random
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from pydantic import Field

from sepcore.config import Config
from sepcore.data.leadsheet import LeadSheet
from sepcore.errors import RenderError

#: The collection held out of every training render by default (the unseen test set).
UNSEEN_COLLECTION = "essen"


class BandCorpusConfig(Config):
    """Which pieces, styles and lengths the band corpus (``midi: band``) renders."""

    collections: list[str] | None = Field(
        None, description="music21 collections to draw pieces from (default: all not excluded)"
    )
    exclude_collections: list[str] = Field(
        [UNSEEN_COLLECTION], description="collections never drawn from (the unseen test set's)"
    )
    pieces: Literal["train", "test", "all"] = Field(
        "train", description="the pieces' fixed split to draw from (test: held-out pieces)"
    )
    test_fraction: float = Field(0.1, gt=0, lt=1, description="share of pieces whose split is test")
    styles: list[str] | None = Field(None, description="styles to draw from (default: all)")
    seconds: float = Field(60.0, ge=5, le=600, description="length of a song (cut at a barline, +-10 %)")
    require_roles: list[str] = Field(
        [], description="parts every song has (drums, bass, guitar, piano, strings, other), e.g. a demo's target"
    )
    piece_ids: list[str] | None = Field(
        None, description="render exactly these pieces, in order: catalogue ids or paths of ABC/MusicXML files"
    )


@dataclass(frozen=True)
class BandSong:
    """One song to render: a piece, the styles it may be played in and the song's own seed.

    The style is drawn from ``styles`` when the piece is read (:func:`song_midi`): only
    the styles that suit the piece's metre (:func:`sepcore.data.styles.styles_for`) count.
    With ``midi_uri`` the lead sheet is read from that General MIDI file
    (:func:`sepcore.compose.midi.leadsheet_from_midi`; ``piece_id`` is its path below the
    folder rendered, see :func:`file_songs`) and the song is named by the URI; else it is
    the songbook's piece ``piece_id``.
    """

    piece_id: str
    collection: str
    styles: tuple[str, ...]
    seed: int
    seconds: float
    require: tuple[str, ...] = ()
    midi_uri: str | None = None  # a General MIDI file to read the lead sheet from instead

    @property
    def name(self) -> str:
        return self.midi_uri if self.midi_uri is not None else f"band:{self.piece_id}"


def _hash_int(*parts: object) -> int:
    return int.from_bytes(hashlib.sha1("\x1f".join(map(str, parts)).encode()).digest()[:8], "big")


def piece_split(piece_id: str, test_fraction: float = 0.1) -> str:
    """``"test"`` for a fixed ``test_fraction`` of piece ids (by hash), else ``"train"``."""
    return "test" if (_hash_int("split", piece_id) % 10_000) < test_fraction * 10_000 else "train"


def eligible_collections(cfg: BandCorpusConfig) -> list[str]:
    """The collections a render draws from; unknown names (and roles) are a ValueError."""
    from sepcore.data.arranger import ROLES
    from sepcore.data.songbook import COLLECTIONS

    if set(cfg.require_roles) - set(ROLES):
        raise ValueError(f"unknown roles {sorted(set(cfg.require_roles) - set(ROLES))}; known: {list(ROLES)}")
    names = list(cfg.collections) if cfg.collections is not None else sorted(COLLECTIONS)
    unknown = sorted(set(names) - set(COLLECTIONS))
    unknown += sorted(set(cfg.exclude_collections) - set(COLLECTIONS))
    if unknown:
        raise ValueError(f"unknown collections {unknown}; known: {sorted(COLLECTIONS)}")
    return [c for c in names if c not in cfg.exclude_collections]


def check_styles(styles: Sequence[str] | None) -> list[str]:
    """The styles a render uses (default all); unknown names are a ValueError."""
    from sepcore.data.arranger import STYLES

    names = list(styles) if styles is not None else sorted(STYLES)
    unknown = sorted(set(names) - set(STYLES))
    if unknown or not names:
        raise ValueError(f"unknown styles {unknown}; known: {sorted(STYLES)}")
    return names


def band_songs(cfg: BandCorpusConfig, tracks: int | None, seed: int) -> list[BandSong]:
    """The first ``tracks`` songs (None: all) of the corpus for ``seed`` (fewer when it has fewer pieces)."""
    from sepcore.data.songbook import catalogue

    styles = check_styles(cfg.styles)
    if cfg.piece_ids is not None:
        from sepcore.data.songbook import FILES

        known = {r.piece_id: r.collection for r in catalogue()}
        return [
            BandSong(p, known.get(p, FILES), tuple(styles), _hash_int("song", seed, p) % 2**31, cfg.seconds,
                     tuple(cfg.require_roles))
            for p in cfg.piece_ids[:tracks]
        ]
    collections = eligible_collections(cfg)
    refs = [
        r
        for r in catalogue(collections)
        if cfg.pieces == "all" or piece_split(r.piece_id, cfg.test_fraction) == cfg.pieces
    ]
    refs.sort(key=lambda r: _hash_int("order", seed, r.piece_id))
    songs = []
    for ref in refs[:tracks]:
        song_seed = _hash_int("song", seed, ref.piece_id) % 2**31
        songs.append(BandSong(ref.piece_id, ref.collection, tuple(styles), song_seed, cfg.seconds,
                              tuple(cfg.require_roles)))
    return songs


def file_songs(cfg: BandCorpusConfig, folder: str, uris: Sequence[str], seed: int) -> list[BandSong]:
    """One song per General MIDI file of ``uris`` below ``folder`` (``render arrange: band``),
    in that order: its piece id is the file's path below ``folder`` (its file name for a file
    directly in it), its seed drawn from ``seed`` and that id as for :func:`band_songs`;
    ``cfg``'s styles, seconds and required roles apply."""
    from sepcore.data.songbook import FILES

    styles = tuple(check_styles(cfg.styles))
    root = folder.rstrip("/") + "/"
    songs = []
    for uri in uris:
        piece_id = uri[len(root):] if uri.startswith(root) else uri.rsplit("/", 1)[-1]
        songs.append(BandSong(piece_id, FILES, styles, _hash_int("song", seed, piece_id) % 2**31, cfg.seconds,
                              tuple(cfg.require_roles), midi_uri=uri))  # fmt: skip
    return songs


def _song_sheet(song: BandSong) -> LeadSheet:
    """The lead sheet ``song`` arranges: read from its MIDI file, else the songbook's."""
    if song.midi_uri is None:
        from sepcore.data import songbook

        return songbook.load_leadsheet(song.piece_id)
    from sepcore.compose.midi import leadsheet_from_midi
    from sepcore.io import storage

    return leadsheet_from_midi(storage.read_bytes(song.midi_uri), song.midi_uri)


def song_midi(song: BandSong) -> tuple[bytes, dict[str, Any], dict[str, dict[str, Any]]]:
    """Arrange ``song``: its MIDI bytes, the song's metadata for ``metadata.yaml`` and each
    part's (by MIDI track name: its ``role`` and whether it plays the melody).

    Raises :class:`sepcore.errors.RenderError` naming the piece (or its MIDI file) when it
    cannot be read, and when no style of ``song.styles`` plays its metre.
    """
    from sepcore.data import arranger
    from sepcore.data.styles import styles_for

    sheet = _song_sheet(song)
    fitting = [s for s in song.styles if s in styles_for(sheet.meter)]
    if not fitting:
        raise RenderError(
            song.midi_uri or song.piece_id,
            f"no style of {list(song.styles)} plays {sheet.meter[0]}/{sheet.meter[1]}",
        )
    style = random.Random(song.seed).choice(fitting)
    arr = arranger.arrange(sheet, style, song.seed, song.seconds, song.require)
    meta = {
        "style": arr.style,
        "piece_id": song.piece_id,
        "collection": song.collection,
        "title": sheet.title,
        "song_seed": song.seed,
        "tempo_bpm": round(float(arr.tempo_bpm), 3),
        "transpose": arr.transpose,
        "chord_source": sheet.chord_source,
        "sections": [
            {"name": s.name, "start_s": round(float(s.start_s), 3), "end_s": round(float(s.end_s), 3)}
            for s in arr.sections
        ],
    }
    parts = {p.name: {"role": p.role, "melody": p.name == arr.lead} for p in arr.parts}
    return arranger.midi_bytes(arr), meta, parts


def corpus_statistics(metas: Iterable[Mapping[str, Any]]) -> dict[str, Any]:
    """Songs per style, share of songs holding each class, programs per class, stems per
    soundfont and family, and total hours of a render's ``metadata.yaml`` contents."""
    metas = list(metas)
    styles: Counter[str] = Counter()
    holding: Counter[str] = Counter()
    programs: dict[str, set[int]] = {}
    fonts: Counter[str] = Counter()
    families: Counter[str] = Counter()
    seconds = 0.0
    for meta in metas:
        styles[str(meta.get("style", "-"))] += 1
        seconds += float(meta.get("seconds", 0.0))
        classes = set()
        for stem in (meta.get("stems") or {}).values():
            cls = str(stem.get("inst_class"))
            classes.add(cls)
            programs.setdefault(cls, set()).add(int(stem.get("program_num", -1)))
            fonts[str(stem.get("soundfont", "-"))] += 1
            families[str(stem.get("soundfont_family", "-"))] += 1
        holding.update(classes)
    n = len(metas)
    return {
        "songs": n,
        "hours": round(seconds / 3600, 3),
        "songs_per_style": dict(sorted(styles.items())),
        "share_of_songs_with_class": {c: round(k / n, 3) for c, k in sorted(holding.items())} if n else {},
        "programs_per_class": {c: len(p) for c, p in sorted(programs.items())},
        "stems_per_soundfont": dict(sorted(fonts.items())),
        "stems_per_family": dict(sorted(families.items())),
    }


def render_band_song(song: BandSong, track_uri: str, **params: Any) -> dict[str, Any]:
    """Arrange ``song`` and render it into the track folder ``track_uri``: its facts
    (``params``: :func:`sepcore.data.render.render_song`'s keyword arguments)."""
    from sepcore.data import render

    data, meta, parts = song_midi(song)
    return render.render_song(song.name, data, track_uri, extra_meta=meta, stem_meta=parts, **params)
