"""The composer's training data: note sequences from the built-in blues set, the corpus and MIDI files.

``sequences.sources`` (:class:`SequencesConfig`) names where they come from:

* ``blues``: the seeded, rule-made 12-bar blues set of :mod:`sepcore.compose.blues`
  (Eck and Schmidhuber's setting: chords plus a melody per chorus);
* ``corpus``: songbook pieces that carry harmony (``corpus.collections``: by default the
  Nottingham folk tunes with their chord symbols, the lead sheets and Bach's chorales,
  whose four parts spell their chords). A piece whose band-corpus split is ``test``
  (:func:`sepcore.data.band.piece_split`) is never used: composed songs become separator
  training data, and must not carry the held-out pieces' tunes into it. The unseen
  collection (``essen``) is never used either;
* any other entry: the URI of a folder of ``.mid`` files (a composed set, say), read with
  :func:`sepcore.compose.midi.leadsheet_from_midi`.

Every piece gets a fixed split from a hash of its id (``validation_fraction``,
``test_fraction``); the training split is augmented to all twelve keys (``transpose``).
Pieces that cannot be read or quantised are skipped, each named in the log and counted.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Iterable
from typing import Any, Literal

from pydantic import Field, model_validator

from sepcore.compose.grid import Grid, Piece, all_keys, from_leadsheet
from sepcore.config import Config
from sepcore.data.leadsheet import LeadSheet
from sepcore.errors import RenderError

log = logging.getLogger("sep.compose")

SPLITS = ("train", "validation", "test")
BUILTIN = ("blues", "corpus")


class GridConfig(Config):
    resolution: Literal["quarter", "eighth"] = Field(
        "eighth", description="steps per quarter: quarter (seed 003) or eighth (Eck and Schmidhuber's blues)"
    )
    rests: bool = Field(True, description="melody units for a rest and a held note (false: seed 003's no rests)")
    low: int = Field(48, ge=0, le=127, description="lowest melody pitch (MIDI); others move by octaves")
    high: int = Field(84, ge=0, le=127, description="highest melody pitch (MIDI)")

    def grid(self) -> Grid:
        return Grid(self.resolution, self.rests, self.low, self.high)

    @model_validator(mode="after")
    def _check(self) -> GridConfig:
        self.grid()  # the range rule, named
        return self


class BluesSetConfig(Config):
    pieces: int = Field(96, ge=1, description="pieces of the built-in 12-bar blues set")
    seed: int = Field(0, description="seed of the set (keys, form variants, melodies, tempi)")
    choruses: tuple[int, int] = Field((2, 4), description="[min, max] 12-bar choruses per piece")


class CorpusSetConfig(Config):
    collections: list[str] = Field(
        ["nottingham", "leadsheet", "bach"], description="songbook collections with harmony to read (not essen)"
    )
    max_pieces: int | None = Field(300, ge=1, description="read at most this many usable pieces (null: all)")
    seed: int = Field(0, description="order in which pieces are read (max_pieces takes the first)")


class SequencesConfig(Config):
    """Where the composer's note sequences come from and how they are put on the grid."""

    sources: list[str] = Field(
        ["blues", "corpus"], min_length=1,
        description="blues (the built-in set), corpus (songbook pieces with harmony) or URIs of .mid folders",
    )
    grid: GridConfig = Field(default_factory=lambda: GridConfig.model_validate({}))
    blues: BluesSetConfig = Field(default_factory=lambda: BluesSetConfig.model_validate({}))
    corpus: CorpusSetConfig = Field(default_factory=lambda: CorpusSetConfig.model_validate({}))
    validation_fraction: float = Field(0.1, gt=0, lt=0.5, description="share of pieces held out for validation")
    test_fraction: float = Field(0.1, gt=0, lt=0.5, description="share of pieces held out for the test figures")
    transpose: bool = Field(True, description="train on every training piece in all twelve keys")
    condition: bool = Field(
        True, description="the piece's source (blues, corpus, files) as an input, so compose can ask for a blues"
    )

    @model_validator(mode="after")
    def _check(self) -> SequencesConfig:
        from sepcore.data.band import UNSEEN_COLLECTION
        from sepcore.data.songbook import COLLECTIONS

        unknown = sorted(set(self.corpus.collections) - set(COLLECTIONS))
        if unknown:
            raise ValueError(f"corpus.collections: unknown {unknown}; known: {sorted(COLLECTIONS)}")
        if UNSEEN_COLLECTION in self.corpus.collections:
            raise ValueError(f"corpus.collections: {UNSEEN_COLLECTION} is the unseen test collection; never train on it")
        if len(set(self.sources)) != len(self.sources):
            raise ValueError(f"sources are listed twice: {self.sources}")
        return self


def split_of(piece_id: str, validation_fraction: float, test_fraction: float) -> str:
    """The fixed split of a piece: ``test``, ``validation`` or ``train``, from a hash of its id."""
    h = int.from_bytes(hashlib.sha1(f"compose\x1f{piece_id}".encode()).digest()[:8], "big") % 10_000 / 10_000
    return "test" if h < test_fraction else "validation" if h < test_fraction + validation_fraction else "train"


def _blues(cfg: BluesSetConfig, resolution: str) -> Iterable[tuple[str, LeadSheet]]:
    from sepcore.compose.blues import blues_leadsheets

    for sheet in blues_leadsheets(cfg.pieces, cfg.seed, cfg.choruses, resolution):
        yield "blues", sheet


def corpus_piece_ids(cfg: CorpusSetConfig) -> list[str]:
    """The catalogue ids the corpus source may read, in reading order: the collections'
    pieces whose band-corpus split is ``train``, shuffled by ``cfg.seed``."""
    from sepcore.data.band import piece_split
    from sepcore.data.songbook import catalogue

    ids = [r.piece_id for r in catalogue(cfg.collections) if piece_split(r.piece_id) == "train"]
    return sorted(ids, key=lambda p: hashlib.sha1(f"{cfg.seed}\x1f{p}".encode()).digest())


def _midi_folder(uri: str) -> Iterable[tuple[str, LeadSheet]]:
    from sepcore.compose.midi import leadsheet_from_midi
    from sepcore.data.render import MIDI_SUFFIXES
    from sepcore.io import storage

    files = sorted(u for u in storage.list_files(storage.normalize_uri(uri)) if u.lower().endswith(MIDI_SUFFIXES))
    if not files:
        raise RenderError(uri, "holds no .mid files")
    for f in files:
        yield "files", leadsheet_from_midi(storage.read_bytes(f), f)


def load_pieces(cfg: SequencesConfig) -> tuple[dict[str, list[Piece]], dict[str, Any]]:
    """The pieces of every source by split (the training split not yet transposed), and a
    record: pieces per source and split, and the ones skipped with their reasons."""
    grid = cfg.grid.grid()
    splits: dict[str, list[Piece]] = {s: [] for s in SPLITS}
    counts: dict[str, dict[str, int]] = {}
    skipped: list[dict[str, str]] = []

    def add(source: str, sheet: LeadSheet) -> bool:
        try:
            piece = from_leadsheet(sheet, grid, source)
        except ValueError as exc:
            skipped.append({"piece": sheet.piece_id, "reason": str(exc)})
            return False
        split = split_of(piece.piece_id, cfg.validation_fraction, cfg.test_fraction)
        splits[split].append(piece)
        counts.setdefault(source, {s: 0 for s in SPLITS})[split] += 1
        return True

    for source in cfg.sources:
        if source == "blues":
            for kind, sheet in _blues(cfg.blues, cfg.grid.resolution):
                add(kind, sheet)
        elif source == "corpus":
            from sepcore.data.songbook import load_leadsheet

            used = 0
            for pid in corpus_piece_ids(cfg.corpus):
                if cfg.corpus.max_pieces is not None and used >= cfg.corpus.max_pieces:
                    break
                try:
                    sheet = load_leadsheet(pid)
                except RenderError as exc:
                    skipped.append({"piece": pid, "reason": exc.problem})
                    continue
                used += add("corpus", sheet)
        else:
            for kind, sheet in _midi_folder(source):
                add(kind, sheet)
    for item in skipped[:20]:
        log.info("compose: skipped %s: %s", item["piece"], item["reason"])
    if not splits["train"]:
        raise RenderError(", ".join(cfg.sources), "gave no training piece")
    return splits, {"pieces": counts, "skipped": len(skipped), "skipped_examples": skipped[:20]}


def training_pieces(cfg: SequencesConfig, pieces: list[Piece]) -> list[Piece]:
    """The training split as trained on: in all twelve keys with ``transpose``."""
    return all_keys(pieces, cfg.grid.grid()) if cfg.transpose else list(pieces)
