"""Tests of sepcore.data.corpus: GM MIDI files arranged from the music21 corpus."""

from __future__ import annotations

import collections
import json
import os
from pathlib import Path

import mido
import pytest

from sepcore.data import corpus as demo_corpus
from sepcore.data import gm
from sepcore.data.corpus import DEMO_CLASSES, build_demo_midi, list_candidate_pieces, piece_to_midi
from sepcore.errors import RenderError

MIN_S, MAX_S = 30.0, 40.0
SMALL_SEED, SMALL_TRACKS = 3, 6
KICK, SNARES, CRASH = 36, (37, 38), 49
SHORT_PIECE = "bach/bwv286.mxl"  # 24 quarters: needs repeating to last 30 s
PICKUP_PIECE = "bach/bwv1.6.mxl"  # starts with a one-beat pickup in 4/4


# ----------------------------------------------------------------------------- helpers


def _events(track: mido.MidiTrack) -> list[tuple[int, mido.Message]]:
    now, out = 0, []
    for message in track:
        now += message.time
        out.append((now, message))
    return out


def _bars(midi: mido.MidiFile) -> list[tuple[int, int, int, int]]:
    """(start tick, length, numerator, denominator) of every bar, from the conductor track."""
    end = max(sum(m.time for m in t) for t in midi.tracks)
    signatures = [
        (t, m.numerator, m.denominator)
        for t, m in _events(midi.tracks[0])
        if m.type == "time_signature"
    ]
    bars = []
    for i, (start, num, den) in enumerate(signatures):
        stop = signatures[i + 1][0] if i + 1 < len(signatures) else end
        length = num * 4 * midi.ticks_per_beat // den
        bars.extend((t, min(length, stop - t), num, den) for t in range(start, stop, length))
    return bars


def _beat_ticks(num: int, den: int, tpb: int) -> int:
    compound = den >= 8 and num % 3 == 0 and num > 3
    return (3 if compound else 1) * 4 * tpb // den


def _drum_track(midi: mido.MidiFile) -> mido.MidiTrack | None:
    for track in midi.tracks[1:]:
        if any(getattr(m, "channel", None) == gm.DRUM_CHANNEL for m in track):
            return track
    return None


def _note_ons(track: mido.MidiTrack) -> list[tuple[int, int]]:
    return [(t, m.note) for t, m in _events(track) if m.type == "note_on" and m.velocity > 0]


def _manifest(out_dir: Path) -> dict:
    return json.loads((out_dir / "corpus.json").read_text())


@pytest.fixture(scope="module")
def small_corpus(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[str]]:
    out = tmp_path_factory.mktemp("demo") / "small"
    return out, build_demo_midi(str(out), tracks=SMALL_TRACKS, seed=SMALL_SEED)


@pytest.fixture(scope="session")
def corpus40() -> tuple[Path, list[str]]:
    """The 40-track corpus of seed 0, kept under $SEP_CACHE_DIR so reruns reuse it."""
    cache = Path(os.environ.get("SEP_CACHE_DIR", "~/.cache/sep")).expanduser()
    out = (
        cache / "demo_corpus" / f"seed0_tracks40_{MIN_S:g}-{MAX_S:g}s_v{demo_corpus.CORPUS_VERSION}"
    )
    return out, build_demo_midi(str(out), tracks=40, seed=0, min_seconds=MIN_S, max_seconds=MAX_S)


# ----------------------------------------------------------------------------- tests


def test_candidates_are_sorted_corpus_files() -> None:
    pieces = list_candidate_pieces()
    assert pieces == sorted(set(pieces))
    assert len(pieces) > 300
    assert PICKUP_PIECE in pieces and SHORT_PIECE in pieces
    root = demo_corpus._corpus_root()
    assert all((root / p).is_file() for p in pieces)


def test_small_corpus_files_and_lengths(small_corpus: tuple[Path, list[str]]) -> None:
    out, paths = small_corpus
    assert len(paths) == SMALL_TRACKS
    assert sorted(p.name for p in out.glob("*.mid")) == sorted(Path(p).name for p in paths)
    assert [Path(p).name[:9] for p in paths] == [f"demo_{i:03d}_" for i in range(SMALL_TRACKS)]
    manifest = _manifest(out)
    assert manifest["seed"] == SMALL_SEED and manifest["tracks"] == SMALL_TRACKS
    for path, info in zip(paths, manifest["files"], strict=True):
        midi = mido.MidiFile(path)
        assert midi.type == 1 and midi.ticks_per_beat == 480
        assert MIN_S <= midi.length <= MAX_S + 3, (path, midi.length)
        assert info["seconds"] == pytest.approx(midi.length, abs=1e-3)
        assert info["path"] == Path(path).name


def test_tracks_have_one_channel_and_a_program(small_corpus: tuple[Path, list[str]]) -> None:
    out, paths = small_corpus
    for path, info in zip(paths, _manifest(out)["files"], strict=True):
        midi = mido.MidiFile(path)
        conductor = [m.type for m in midi.tracks[0]]
        assert {"track_name", "set_tempo", "time_signature"} <= set(conductor)
        assert not any(hasattr(m, "channel") for m in midi.tracks[0])
        assert len(midi.tracks) - 1 == len(info["instruments"])
        used = []
        for track, inst in zip(midi.tracks[1:], info["instruments"], strict=True):
            channels = {m.channel for m in track if hasattr(m, "channel")}
            assert len(channels) == 1, (path, track.name, channels)
            channel = channels.pop()
            assert track[0].type == "track_name" and track[0].name == inst["name"]
            programs = [m.program for m in track if m.type == "program_change"]
            assert programs == [inst["program"]]
            assert (channel == gm.DRUM_CHANNEL) == inst["is_drum"]
            assert inst["inst_class"] == gm.inst_class(inst["program"], inst["is_drum"])
            assert len(_note_ons(track)) == inst["notes"] > 0
            used.append(channel)
        assert len(used) == len(set(used))


def test_kick_and_snare_fall_on_the_meters_beats(small_corpus: tuple[Path, list[str]]) -> None:
    _, paths = small_corpus
    checked = 0
    for path in paths:
        midi = mido.MidiFile(path)
        drums = _drum_track(midi)
        if drums is None:
            continue
        bars = _bars(midi)
        meter = collections.Counter((b[2], b[3]) for b in bars).most_common(1)[0][0]
        hits = _note_ons(drums)
        for start, length, num, den in bars:
            beat = _beat_ticks(num, den, midi.ticks_per_beat)
            in_bar = [(t - start, n) for t, n in hits if start <= t < start + length]
            kicks = [t for t, n in in_bar if n == KICK]
            snares = [t for t, n in in_bar if n in SNARES]
            assert all(t % beat == 0 for t in kicks + snares), (path, start, in_bar)
            full = (num, den) == meter and length == num * 4 * midi.ticks_per_beat // den
            if full and length // beat >= 2:
                assert 0 in kicks and 0 not in snares, (path, start, in_bar)
                checked += 1
    assert checked > 0


def test_pickup_puts_the_first_downbeat_after_it(tmp_path: Path) -> None:
    for seed in range(20):
        info = piece_to_midi(PICKUP_PIECE, str(tmp_path / f"p{seed}.mid"), seed=seed)
        if any(i["is_drum"] for i in info["instruments"]):
            break
    else:
        pytest.fail("no seed in 0..19 gave drums")
    midi = mido.MidiFile(info["path"])
    signatures = [
        (t, m.numerator, m.denominator)
        for t, m in _events(midi.tracks[0])
        if m.type == "time_signature"
    ]
    assert signatures[:2] == [(0, 1, 4), (480, 4, 4)]
    hits = _note_ons(_drum_track(midi))
    assert min(t for t, n in hits if n == KICK) == 480
    assert min(t for t, n in hits if n == CRASH) == 480
    assert (0, 38) in hits or (0, 37) in hits  # the pickup is beat 4: a backbeat


def test_short_piece_is_repeated_and_long_piece_cut(tmp_path: Path) -> None:
    once = piece_to_midi(
        SHORT_PIECE, str(tmp_path / "once.mid"), seed=1, min_seconds=1, max_seconds=1000
    )
    long = piece_to_midi(SHORT_PIECE, str(tmp_path / "long.mid"), seed=1)
    assert once["seconds"] < MIN_S <= long["seconds"] <= MAX_S + 3
    assert mido.MidiFile(long["path"]).length == pytest.approx(long["seconds"], abs=1e-3)
    pitched = [
        (a["notes"], b["notes"])
        for a, b in zip(once["instruments"], long["instruments"], strict=True)
    ]
    assert all(b >= 2 * a * 0.9 for a, b in pitched)
    cut = piece_to_midi(
        "monteverdi/madrigal.3.1.mxl",
        str(tmp_path / "cut.mid"),
        seed=1,
        min_seconds=10,
        max_seconds=15,
    )
    assert 10 <= cut["seconds"] <= 15 + 3
    assert 10 <= mido.MidiFile(cut["path"]).length <= 15 + 3


def test_parts_stay_in_their_instruments_range(small_corpus: tuple[Path, list[str]]) -> None:
    out, paths = small_corpus
    for path, info in zip(paths, _manifest(out)["files"], strict=True):
        midi = mido.MidiFile(path)
        for track, inst in zip(midi.tracks[1:], info["instruments"], strict=True):
            notes = [n for _, n in _note_ons(track)]
            if inst["inst_class"] == "Bass":
                assert 28 <= min(notes) and max(notes) <= 60, (path, inst)
            elif inst["inst_class"] == "Guitar":
                assert 40 <= min(notes) and max(notes) <= 88, (path, inst)


def test_same_seed_same_bytes_any_workers_other_seed_differs(
    small_corpus: tuple[Path, list[str]], tmp_path: Path
) -> None:
    _, paths = small_corpus
    again = build_demo_midi(str(tmp_path / "again"), tracks=3, seed=SMALL_SEED, workers=2)
    assert [Path(p).name for p in again] == [Path(p).name for p in paths[:3]]
    assert all(
        Path(a).read_bytes() == Path(b).read_bytes() for a, b in zip(again, paths[:3], strict=True)
    )
    other = build_demo_midi(str(tmp_path / "other"), tracks=3, seed=SMALL_SEED + 1)
    assert [Path(p).read_bytes() for p in other] != [Path(p).read_bytes() for p in paths[:3]]


def test_second_call_returns_the_cache_without_rewriting(
    small_corpus: tuple[Path, list[str]],
) -> None:
    out, paths = small_corpus
    before = {p.name: p.stat().st_mtime_ns for p in out.iterdir()}
    assert build_demo_midi(str(out), tracks=SMALL_TRACKS, seed=SMALL_SEED) == paths
    assert {p.name: p.stat().st_mtime_ns for p in out.iterdir()} == before


def test_other_parameters_rebuild_and_drop_stale_files(tmp_path: Path) -> None:
    first = build_demo_midi(str(tmp_path), tracks=1, seed=5, min_seconds=10, max_seconds=12)
    second = build_demo_midi(str(tmp_path), tracks=1, seed=6, min_seconds=10, max_seconds=12)
    assert _manifest(tmp_path)["seed"] == 6
    assert sorted(p.name for p in tmp_path.glob("*.mid")) == [Path(second[0]).name]
    if Path(first[0]).name != Path(second[0]).name:
        assert not Path(first[0]).exists()


def test_running_out_of_pieces_raises(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    # bwv846 is a two-part keyboard piece: skipped, so only one usable piece is left
    monkeypatch.setattr(
        demo_corpus, "list_candidate_pieces", lambda: [PICKUP_PIECE, "bach/bwv846.mxl"]
    )
    with pytest.raises(RenderError, match="only 1 usable"):
        build_demo_midi(str(tmp_path), tracks=2, seed=0)
    assert not (tmp_path / "corpus.json").exists()


def test_unusable_piece_raises(tmp_path: Path) -> None:
    with pytest.raises(RenderError, match="pitched parts"):
        piece_to_midi("bach/bwv846.mxl", str(tmp_path / "x.mid"), seed=0)
    with pytest.raises(RenderError):
        piece_to_midi("bach/no_such_piece.mxl", str(tmp_path / "y.mid"), seed=0)


@pytest.mark.slow
def test_forty_tracks_cover_every_demo_class(corpus40: tuple[Path, list[str]]) -> None:
    out, paths = corpus40
    assert len(paths) == 40 and len(set(paths)) == 40
    files = _manifest(out)["files"]
    counts = collections.Counter(
        c
        for f in files
        for c in {gm.inst_class(i["program"], i["is_drum"]) for i in f["instruments"]}
    )
    for name in DEMO_CLASSES:
        assert counts[name] >= 20, (name, counts)
    assert counts["Drums"] < 40  # drums are added to most files, not all
    for path in paths:
        assert MIN_S <= mido.MidiFile(path).length <= MAX_S + 3, path
