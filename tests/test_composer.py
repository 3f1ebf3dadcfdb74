"""The composer's grid, model and sampling (seed 003), without Ray."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from sepcore.compose import grid as G
from sepcore.compose.blues import blues_leadsheets
from sepcore.compose.midi import leadsheet_from_midi, leadsheet_to_midi
from sepcore.compose.sample import ComposeSettings, compose_piece
from sepcore.data.leadsheet import Chord, LeadSheet, Note, Phrase
from sepcore.models.composer import Composer

GRID = G.Grid("eighth", rests=True)


INPUTS = G.Inputs(GRID, 8, ("blues", "corpus"))


def model(output: str = "softmax") -> Composer:
    torch.manual_seed(0)
    return Composer(GRID.melody_units, G.CHORD_PCS.astype(int).tolist(), position_units=8, chord_hidden=4,
                    melody_hidden=6, output=output, conditions=["blues", "corpus"])  # fmt: skip


def sheet_with_rests() -> LeadSheet:
    """Two bars of 4/4 after a one-quarter pickup: a rest, held notes, a note below the range."""
    melody = (Note(67, 0.0, 1.0), Note(72, 1.0, 1.5), Note(74, 3.0, 0.5), Note(40, 3.5, 0.5),
              Note(76, 5.0, 2.0), Note(71, 7.5, 1.5))  # fmt: skip
    chords = (Chord(7, "7", 0.0, 1.0), Chord(0, "maj", 1.0, 4.0), Chord(9, "min7", 5.0, 2.0), Chord(2, "7", 7.0, 2.0))
    return LeadSheet("t/rests", "files", "rests", (4, 4), 4.0, 0, "major", 100.0, 1.0, 9.0, melody, chords,
                     (Phrase("A", 1.0, 9.0),))  # fmt: skip


def test_quantising_follows_the_grid_and_round_trips_through_midi() -> None:
    sheet = sheet_with_rests()
    piece = G.from_leadsheet(sheet, GRID)
    assert piece.steps == 16 and piece.steps_per_bar == 8  # the pickup dropped
    p = lambda pitch: pitch - GRID.low  # noqa: E731
    R, H = GRID.rest, GRID.hold
    assert piece.melody.tolist() == [p(72), H, H, R, p(74), p(52), R, R, p(76), H, H, H, R, p(71), H, H]
    assert [G.CHORDS[c] for c in piece.chords[[0, 8, 12]]] == [(0, "maj"), (9, "min7"), (2, "7")]
    # MIDI -> grid -> MIDI: the piece written and read back quantises to the same steps
    back = G.from_leadsheet(leadsheet_from_midi(leadsheet_to_midi(G.to_leadsheet(piece, GRID), 100.0), "x.mid"), GRID)
    np.testing.assert_array_equal(back.melody, piece.melody)
    np.testing.assert_array_equal(back.chords, piece.chords)
    # without rests (seed 003) every step strikes a pitch: a rest keeps the note before
    plain = G.from_leadsheet(sheet, G.Grid("eighth", rests=False))
    assert plain.melody.tolist() == [p(72)] * 4 + [p(74), p(52), p(52), p(52)] + [p(76)] * 5 + [p(71)] * 3
    quarter = G.from_leadsheet(sheet, G.Grid("quarter", rests=True))
    assert quarter.steps == 8 and quarter.steps_per_bar == 4


def test_blues_set_round_trips_on_its_grid_and_transposes_to_every_key() -> None:
    sheet = blues_leadsheets(1, 3, (2, 2), "eighth")[0]
    piece = G.from_leadsheet(sheet, GRID, "blues")
    again = G.to_leadsheet(piece, GRID)
    assert again.melody == sheet.melody  # notes on the grid, in range: exact
    for t in np.arange(0.0, sheet.length, 0.5):  # the same chord in force at every step (repeats merged)
        a, b = again.chord_at(t), sheet.chord_at(t)
        assert (a.root, a.quality) == (b.root, b.quality), t
    assert len(again.chords) < len(sheet.chords)
    keys = G.all_keys([piece], GRID)
    assert len(keys) == 12 and len({k.key_tonic for k in keys}) == 12
    up = G.transpose(piece, 5, GRID)
    np.testing.assert_array_equal(G.CHORD_ROOTS[up.chords], (G.CHORD_ROOTS[piece.chords] + 5) % 12)
    pitched = piece.melody < GRID.pitches
    np.testing.assert_array_equal((up.melody[pitched] + GRID.low) % 12, (piece.melody[pitched] + GRID.low + 5) % 12)
    np.testing.assert_array_equal(up.melody[~pitched], piece.melody[~pitched])
    assert ((up.melody[pitched] >= 0) & (up.melody[pitched] < GRID.pitches)).all()
    down = G.transpose(up, -5, GRID)
    np.testing.assert_array_equal(down.chords, piece.chords)


@pytest.mark.parametrize("output", ["softmax", "independent"])
def test_the_model_gives_normalised_next_step_probabilities_and_carries_its_state(output: str) -> None:
    net = model(output).eval()
    piece = G.from_leadsheet(blues_leadsheets(1, 0, (1, 1), "eighth")[0], GRID)
    x = torch.from_numpy(G.Inputs(GRID, 8, ("blues", "corpus")).encode(piece.chords, piece.melody, 8, "blues"))[None]
    nxt = torch.from_numpy(np.roll(piece.chords, -1))[None]
    with torch.no_grad():
        lc, lm, _ = net.log_probs(x, nxt)
        assert lc.shape == (1, piece.steps, len(G.CHORDS)) and lm.shape == (1, piece.steps, GRID.melody_units)
        torch.testing.assert_close(lc.exp().sum(-1), torch.ones(1, piece.steps))
        torch.testing.assert_close(lm.exp().sum(-1), torch.ones(1, piece.steps))
        state, parts = None, []
        for t in range(0, piece.steps, 7):  # the same pass in pieces of 7 steps, state carried over
            c, m, state = net.log_probs(x[:, t:t + 7], nxt[:, t:t + 7], state)
            parts.append((c, m))
    torch.testing.assert_close(torch.cat([c for c, _ in parts], 1), lc, atol=1e-5, rtol=0)
    torch.testing.assert_close(torch.cat([m for _, m in parts], 1), lm, atol=1e-5, rtol=0)
    with pytest.raises(ValueError, match=r"must be \(batch, T, 61\), got \(1, 96, 60\)"):
        net.log_probs(x[..., :-1], nxt)


def test_independent_outputs_renormalise_the_papers_bernoulli_units() -> None:
    net = model("independent").eval()
    zc = torch.randn(12)
    lc = net.chord_log_probs(zc)
    pcs = torch.from_numpy(G.CHORD_PCS.astype(np.float32))
    p_on = torch.sigmoid(zc)
    joint = (pcs * p_on + (1 - pcs) * (1 - p_on)).prod(-1)  # each vocabulary chord's set, all 12 units
    torch.testing.assert_close(lc.exp(), joint / joint.sum())


def test_sampling_is_deterministic_per_seed_and_index() -> None:
    starts = [G.from_leadsheet(s, GRID, "blues") for s in blues_leadsheets(3, 0, (1, 1), "eighth")]
    for output in ("softmax", "independent"):
        net = model(output)
        a = compose_piece(net, INPUTS, starts, 0, ComposeSettings(bars=12, seed=4))
        b = compose_piece(net, INPUTS, starts, 0, ComposeSettings(bars=12, seed=4))
        c = compose_piece(net, INPUTS, starts, 1, ComposeSettings(bars=12, seed=4))
        d = compose_piece(net, INPUTS, starts, 0, ComposeSettings(bars=12, seed=5))
        assert a.steps == 96 and a.bpm == b.bpm
        np.testing.assert_array_equal(a.melody, b.melody)
        np.testing.assert_array_equal(a.chords, b.chords)
        assert not np.array_equal(a.melody, c.melody) and not np.array_equal(a.melody, d.melody)
        e = compose_piece(net, INPUTS, starts, 0, ComposeSettings(bars=12, seed=4), source="corpus")
        assert a.extra["as"] == "blues" and e.extra["as"] == "corpus" and not np.array_equal(a.melody, e.melody)
        after_rest = a.melody[1:][a.melody[:-1] == GRID.rest]
        assert (after_rest != GRID.hold).all()  # a held note never follows a rest
    assert ComposeSettings(bars=13).total_bars() == 24 and ComposeSettings(bars=13, form="free").total_bars() == 13
    with pytest.raises(ValueError, match="temperature"):
        compose_piece(model(), INPUTS, starts, 0, ComposeSettings(temperature=0.0))
