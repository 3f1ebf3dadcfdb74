"""The song material: catalogue and lead sheets read from music21's corpus."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from sepcore.data import songbook
from sepcore.data.leadsheet import QUALITIES, LeadSheet
from sepcore.errors import RenderError

REEL = "nottingham-dataset/reelsa-c.abc#80"  # Cuckoo's Nest: chord symbols, AABB
LULLABY = "essenFolksong/kinder0.abc#1"  # a bare melody in 2/4
JIG = "oneills1850/0001-0050.abc#7"  # 6/8 with a quaver pickup


@pytest.fixture(scope="module")
def cache(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A fresh songbook cache for this module."""
    root = tmp_path_factory.mktemp("cache")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("SEP_CACHE_DIR", str(root))
        yield root


def _check_cover(sheet: LeadSheet) -> None:
    """Chords contiguous over [0, length); phrases contiguous over [pickup, length)."""
    assert sheet.chords[0].start == 0
    for a, b in zip(sheet.chords, sheet.chords[1:], strict=False):
        assert a.start + a.length == pytest.approx(b.start)
    last = sheet.chords[-1]
    assert last.start + last.length == pytest.approx(sheet.length)
    assert all(c.quality in QUALITIES and c.length > 0 for c in sheet.chords)
    assert sheet.phrases[0].start == pytest.approx(sheet.pickup)
    for a, b in zip(sheet.phrases, sheet.phrases[1:], strict=False):
        assert a.end == pytest.approx(b.start)
    assert sheet.phrases[-1].end == pytest.approx(sheet.length)
    starts = [n.start for n in sheet.melody]
    assert starts == sorted(set(starts))
    pairs = zip(sheet.melody, sheet.melody[1:], strict=False)
    assert all(n.start + n.length <= m.start + 1e-6 for n, m in pairs)


def test_catalogue_is_deterministic_and_covers_every_collection(cache: Path) -> None:
    refs = songbook.catalogue()
    assert len(refs) > 1000
    assert [r.piece_id for r in refs] == sorted(r.piece_id for r in refs)
    assert len({r.piece_id for r in refs}) == len(refs)
    assert {r.collection for r in refs} == set(songbook.COLLECTIONS)
    songbook._full_catalogue.cache_clear()  # read back from the JSON file
    assert songbook.catalogue() == refs
    assert songbook.catalogue(["nottingham"]) == [r for r in refs if r.collection == "nottingham"]
    with pytest.raises(ValueError, match="unknown collections"):
        songbook.catalogue(["rock"])


def test_score_chord_symbols_are_read(cache: Path) -> None:
    sheet = songbook.load_leadsheet(REEL)
    assert sheet.chord_source == "score"
    assert (sheet.key_tonic, sheet.key_mode) == (2, "major")
    assert (sheet.meter, sheet.pickup) == ((4, 4), 1.0)
    names = {(c.root, c.quality) for c in sheet.chords}
    assert {(2, "maj"), (4, "min"), (9, "7"), (0, "maj")} <= names  # D, Em, A7, C
    assert sheet.extra["repeats"] == "expanded"  # AABB: each strain played twice
    assert [p.label for p in sheet.phrases] == ["A", "A", "B", "B"]
    _check_cover(sheet)


def test_bare_melody_is_harmonised(cache: Path) -> None:
    sheet = songbook.load_leadsheet(LULLABY)
    assert sheet.chord_source == "analysis"
    _check_cover(sheet)
    downbeats = [
        n for n in sheet.melody if ((n.start - sheet.pickup) / sheet.bar_quarters).is_integer()
    ]
    held = [n.pitch % 12 in sheet.chord_at(n.start).pitch_classes() for n in downbeats]
    assert len(held) >= 4 and sum(held) >= 0.75 * len(held)
    tonic = {(sheet.key_tonic, "maj" if sheet.key_mode == "major" else "min")}
    assert {(sheet.chords[-1].root, sheet.chords[-1].quality)} == tonic


def test_compound_metre_and_pickup(cache: Path) -> None:
    sheet = songbook.load_leadsheet(JIG)
    assert sheet.meter == (6, 8)
    assert sheet.bar_quarters == 3.0
    assert sheet.pickup == 0.5
    assert sheet.melody[0].start == 0.0
    assert (sheet.length - sheet.pickup) / sheet.bar_quarters >= 8
    _check_cover(sheet)


def test_unknown_piece_raises_naming_it(cache: Path) -> None:
    with pytest.raises(RenderError) as error:
        songbook.load_leadsheet("essenFolksong/nothing.abc#7")
    assert error.value.uri == "essenFolksong/nothing.abc#7"


def test_cache_round_trips_and_survives_corruption(cache: Path) -> None:
    fresh = songbook.load_leadsheet(JIG)
    files = list((next(cache.glob("songbook/*")) / "sheets").glob("*.json"))
    assert files
    assert songbook.load_leadsheet(JIG) == fresh
    for path in files:
        path.write_text('{"piece_id": "' + JIG + '", "sheet": {"melody": [')
    assert songbook.load_leadsheet(JIG) == fresh
    assert LeadSheet.from_json(json.loads(json.dumps(fresh.to_json()))) == fresh


BAD_ABC = """X:1
T:Long enough
M:4/4
L:1/4
K:G
GABc|d2B2|c2A2|G4|

X:2
T:Too short
M:4/4
L:1/4
K:G
GABc|d4|

X:3
T:Only rests
M:4/4
L:1/4
K:G
z4|z4|z4|z4|z4|
"""


def test_unusable_pieces_raise_and_are_remembered(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    corpus = tmp_path / "corpus"
    (corpus / "essenFolksong").mkdir(parents=True)
    (corpus / "essenFolksong" / "mini.abc").write_text(BAD_ABC)
    monkeypatch.setattr(songbook, "_corpus_root", lambda: corpus)
    monkeypatch.setenv("SEP_CACHE_DIR", str(tmp_path / "cache"))
    refs = songbook.catalogue()
    assert [(r.piece_id, r.title) for r in refs] == [
        ("essenFolksong/mini.abc#1", "Long enough"),
        ("essenFolksong/mini.abc#2", "Too short"),
        ("essenFolksong/mini.abc#3", "Only rests"),
    ]
    assert songbook.load_leadsheet("essenFolksong/mini.abc#1").length == 16.0
    for number, reason in ((2, "too short"), (3, "no notes")):
        with pytest.raises(RenderError, match=reason) as error:
            songbook.load_leadsheet(f"essenFolksong/mini.abc#{number}")
        assert error.value.uri == f"essenFolksong/mini.abc#{number}"
    (corpus / "essenFolksong" / "mini.abc").unlink()  # a cached failure needs no parse
    with pytest.raises(RenderError, match="too short"):
        songbook.load_leadsheet("essenFolksong/mini.abc#2")
