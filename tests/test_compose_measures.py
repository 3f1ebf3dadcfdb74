"""The built-in blues set, the composer's baselines and objective measures, and its report."""

from __future__ import annotations

import math

import numpy as np
import pytest

from sepcore.compose import measures as M
from sepcore.compose.blues import FORM, blues_leadsheets
from sepcore.compose.report import write_compose_report
from sepcore.report import html as R

# A tiny vocabulary: chord id k is the dominant-7 chord on root k (12 chords).
ROOTS = np.arange(12)
PCS = np.zeros((12, 12), dtype=bool)
for _k in range(12):
    PCS[_k, [(_k + i) % 12 for i in (0, 4, 7, 10)]] = True


def _random_pieces(count: int, steps: int, k: int, m: int, seed: int) -> list[M.Steps]:
    rng = np.random.default_rng(seed)
    return [M.Steps(rng.integers(k, size=steps), rng.integers(m, size=steps), 4) for _ in range(count)]


# ---------------------------------------------------------------- blues set


def test_blues_set_is_seeded_and_fits_the_form() -> None:
    a, b, other = blues_leadsheets(3, 7), blues_leadsheets(3, 7), blues_leadsheets(3, 8)
    assert a == b
    assert [s.melody for s in a] != [s.melody for s in other]
    assert blues_leadsheets(1, 7)[0] == a[0]  # piece i depends on (seed, i) only
    for sheet in a:
        assert sheet.piece_id.startswith("blues/7/") and sheet.collection == "blues"
        assert sheet.meter == (4, 4) and sheet.pickup == 0 and 90 <= sheet.bpm <= 160
        bars = len(sheet.chords)
        assert bars % 12 == 0 and 2 <= bars // 12 <= 4 and sheet.length == 4 * bars
        for b, chord in enumerate(sheet.chords):
            assert chord.quality == "7" and chord.start == 4 * b and chord.length == 4
            assert (chord.root - sheet.key_tonic) % 12 in FORM[b % 12]
        ids = np.array([c.root for c in sheet.chords])
        assert M.form_adherence(ids, 1, ROOTS) == 1.0
        assert "".join(p.label for p in sheet.phrases) == "AAB" * (bars // 12)
        notes = sheet.melody
        assert all(60 <= n.pitch <= 84 for n in notes)
        assert all(x.start + x.length <= y.start + 1e-9 for x, y in zip(notes, notes[1:], strict=False))
        assert notes[-1].start + notes[-1].length <= sheet.length
        assert all((n.start * 2).is_integer() and (n.length * 2).is_integer() for n in notes)
    quarter = blues_leadsheets(2, 1, resolution="quarter")
    assert all(n.start.is_integer() and n.length.is_integer() for s in quarter for n in s.melody)
    with pytest.raises(ValueError, match="resolution"):
        blues_leadsheets(1, 0, resolution="sixteenth")


# ---------------------------------------------------------------- baselines


def test_repeat_last_hand_made_case_and_fit() -> None:
    model = M.RepeatLast(4, 3, eps=(0.1, 0.5))
    chord_lp, melody_lp = model.logprob(M.Steps(np.array([0, 0, 1]), np.array([2, 1, 1]), 2))
    np.testing.assert_allclose(chord_lp, np.log([1.1 / 1.4, 0.1 / 1.4]))
    np.testing.assert_allclose(melody_lp, np.log([0.5 / 2.5, 1.5 / 2.5]))
    same = M.Steps(np.zeros(6, dtype=int), np.ones(6, dtype=int), 2)
    assert M.RepeatLast(4, 3).fit([same]).eps == (M.EPS_GRID[0], M.EPS_GRID[0])
    changing = M.Steps(np.array([0, 1, 2, 3]), np.array([0, 1, 2, 0]), 2)
    assert M.RepeatLast(4, 3).fit([changing]).eps == (M.EPS_GRID[-1], M.EPS_GRID[-1])
    pc, pm = model.predict(M.Steps(np.array([3, 1, 2]), np.array([0, 2, 2]), 2))
    assert pc.tolist() == [3, 1] and pm.tolist() == [0, 2]


@pytest.mark.parametrize("kind", ["repeat", "ngram"])
def test_baselines_are_proper_distributions(kind: str) -> None:
    k, m = 5, 7
    train = _random_pieces(6, 24, k, m, seed=1)
    model = M.RepeatLast(k, m) if kind == "repeat" else M.NGram(k, m, n=3)
    model.fit(train)
    unseen = _random_pieces(2, 16, k, m, seed=2) + [M.Steps(np.array([4, 4, 0]), np.array([6, 6, 6]), 4)]
    for piece in unseen:
        pc, pm = model.probs(piece)
        assert pc.shape == (len(piece.chords) - 1, k) and pm.shape == (len(piece.chords) - 1, m)
        np.testing.assert_allclose(pc.sum(axis=1), 1.0)
        np.testing.assert_allclose(pm.sum(axis=1), 1.0)
        assert (pc > 0).all() and (pm > 0).all()
        chord_lp, melody_lp = model.logprob(piece)
        np.testing.assert_allclose(chord_lp, np.log(pc[np.arange(len(pc)), piece.chords[1:]]))
        np.testing.assert_allclose(melody_lp, np.log(pm[np.arange(len(pm)), piece.melody[1:]]))
    pc, melody_given = model.step(np.array([1, 2]), np.array([3, 4]))
    assert math.isclose(pc.sum(), 1.0) and math.isclose(melody_given(0).sum(), 1.0)
    a, b = model.sample((1, 3), 20, 4, seed=5), model.sample((1, 3), 20, 4, seed=5)
    assert a.chords.shape == (20,) and np.array_equal(a.chords, b.chords) and np.array_equal(a.melody, b.melody)


def test_ngram_learns_a_cycle_that_repeat_last_cannot() -> None:
    chords = np.tile([0, 0, 1, 2], 8)
    melody = np.tile([0, 1, 2, 3], 8)
    train = [M.Steps(chords, melody, 4)]
    test = M.Steps(chords[:12], melody[:12], 4)
    ngram, repeat = M.NGram(3, 4).fit(train), M.RepeatLast(3, 4).fit(train)
    assert M.held_out_nll(ngram, [test])["total"] < 0.5 * M.held_out_nll(repeat, [test])["total"]
    pc, pm = ngram.predict(test)
    assert pc[2:].tolist() == chords[3:12].tolist() and pm.tolist() == melody[1:12].tolist()


def test_nll_per_step() -> None:
    out = M.nll_per_step(np.log([0.5, 0.25]), np.log([1.0, 0.5]))
    assert out["chord"] == pytest.approx(-np.log([0.5, 0.25]).mean())
    assert out["total"] == pytest.approx(out["chord"] + out["melody"])
    with pytest.raises(ValueError, match="non-empty"):
        M.nll_per_step(np.zeros(0), np.zeros(0))


# ---------------------------------------------------------------- measures


def test_note_on_f1_hand_made_case() -> None:
    pcs = np.zeros((2, 12), dtype=bool)
    pcs[0, [0, 4, 7]] = True  # C
    pcs[1, [7, 11, 2]] = True  # G
    # pitch units 0..2; 3 = REST, 4 = HOLD (switch nothing on)
    out = M.note_on_f1(np.array([0, 0]), np.array([0, 4]), np.array([0, 1]), np.array([0, 3]), pcs, 3)
    # true: {C E G m0}, {G B D}; predicted: {C E G m0}, {C E G}; shared 4 + 1 of 7 each
    assert out == pytest.approx({"precision": 5 / 7, "recall": 5 / 7, "f1": 5 / 7})
    none = M.note_on_f1(np.array([0]), np.array([1]), np.array([1]), np.array([2]), pcs, 3)
    assert none["f1"] == pytest.approx(2 / 8 * 2 / 8 * 2 / (2 / 8 + 2 / 8))  # only G shared


def test_form_adherence_of_a_wrong_form() -> None:
    right = np.repeat([0, 5, 0, 0, 5, 5, 0, 0, 7, 5, 0, 7], 2) + 3  # in Eb, 2 steps per bar
    assert M.form_adherence(right, 2, ROOTS) == 1.0
    assert M.form_adherence(np.tile(right, 2), 2, ROOTS) == 1.0
    all_tonic = np.full(24, 3)
    assert M.form_adherence(all_tonic, 2, ROOTS) == pytest.approx(8 / 12)  # bars 5, 6, 9, 10 miss
    short = np.array([3, 3, 3, 8, 3, 3])  # bar 2 majority: tie of Eb and Ab, Eb first
    assert M.form_adherence(short, 2, ROOTS) == 1.0
    assert math.isnan(M.form_adherence(np.zeros(0, dtype=int), 2, ROOTS))


def test_rhythm_stats_hand_made_case() -> None:
    piece = M.Steps(np.zeros(8, dtype=int), np.array([0, 4, 4, 3, 1, 2, 4, 3]), 4)
    out = M.rhythm_stats([piece], pitch_units=3)
    assert out["steps"] == 8 and out["notes"] == 3
    assert out["rest_share"] == pytest.approx(2 / 8) and out["hold_share"] == pytest.approx(3 / 8)
    assert out["note_steps"] == pytest.approx({1: 1 / 3, 2: 1 / 3, 3: 1 / 3})
    assert out["mean_note_steps"] == pytest.approx(2.0) and out["distinct_lengths"] == 3


def _brute_longest(tokens: np.ndarray, others: list[np.ndarray]) -> int:
    best = 0
    for o in others:
        for i in range(len(tokens)):
            for j in range(len(o)):
                n = 0
                while i + n < len(tokens) and j + n < len(o) and tokens[i + n] == o[j + n]:
                    n += 1
                best = max(best, n)
    return best


def test_longest_shared_hand_made_and_random() -> None:
    tokens = np.array([1, 2, 3, 4, 5])
    assert M.longest_shared(tokens, [np.array([9, 2, 3, 4, 9]), np.array([3, 4, 5])]) == 3
    assert M.longest_shared(tokens, [np.array([4, 5, 9, 1, 2, 3])]) == 3  # not across the 9
    assert M.longest_shared(tokens, [np.array([7, 8])]) == 0
    assert M.longest_shared(tokens, [np.array([0, 1, 2, 3, 4, 5, 6])]) == 5
    assert M.longest_shared(tokens, [np.array([1, 2]), np.array([3, 4, 5])]) == 3  # not across pieces
    rng = np.random.default_rng(0)
    others = [rng.integers(3, size=int(rng.integers(1, 12))) for _ in range(5)]
    for _ in range(10):
        q = rng.integers(3, size=10)
        assert M.longest_shared(q, others) == _brute_longest(q, others)
    index = M.WindowIndex([np.array([1, 2, 3]), np.array([1, 2, 3]), np.array([5, 6])])
    assert index.longest(np.array([1, 2, 3]), exclude=0) == 3  # piece 1 holds it too
    assert index.longest(np.array([5, 6]), exclude=2) == 0


def test_novelty_copied_piece_is_found() -> None:
    train = _random_pieces(4, 32, 3, 5, seed=3)
    copied = M.Steps(train[1].chords[:16], train[1].melody[:16], 4)
    out = M.novelty([copied], train, melody_units=5)
    assert out["composed"] == [16] and len(out["training"]) == 4
    assert out["composed_summary"]["max_bars"] == 4.0
    assert all(n < 16 for n in out["training"])


# ---------------------------------------------------------------- report


def test_compose_report(tmp_path) -> None:
    history = [{"epoch": e, "train_loss": 2.0 - e, "val_loss": 2.1 - e} for e in range(2)]
    nll = {"chord": 0.3, "melody": 1.5, "total": 1.8}
    pieces = [{"name": "piece_000", "title": "piece 0", "piano_roll": b"\x89PNG fake",
               "audio_name": "piece_000.flac", "audio": b"fLaC fake"}]  # fmt: skip
    train = _random_pieces(2, 16, 3, 5, seed=4)
    page = write_compose_report(
        str(tmp_path), {"val_nll": 1.8}, pieces, history,
        likelihood={"all": {"composer": nll, "ngram": nll, "pieces": 3}, "blues": {"composer": nll}},
        f1={"model": {"precision": 1.0, "recall": 0.5, "f1": 0.67}}, form={"composer": 0.9, "test": None, "steps_per_bar": 8},
        novelty=M.novelty(train[:1], train, 5), rhythm={"training": M.rhythm_stats(train, 3)},
    )  # fmt: skip
    text = (tmp_path / "report.html").read_text()
    assert page.endswith("report.html") and not R.missing_files(page)
    for title in ("nats per step, lower is better), all", "per step, lower is better), blues", "pieces: 3", "note-on F1",
                  "form adherence", "novelty", "rhythm", "piece 0", "loss per epoch", "piece_000.flac"):  # fmt: skip
        assert title in text
    assert "steps_per_bar" not in text
