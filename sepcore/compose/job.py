"""The compose job's library side (no Ray): load a composer, write pieces, measure them.

Output layout of ``sep compose`` (``output``):

* ``pieces/<id>.mid``: each composed piece as General MIDI (melody and chord tracks, chord
  symbols as markers: :func:`sepcore.compose.midi.leadsheet_to_midi`), ``pieces/<id>.png``
  its piano roll. A piece whose two files exist is not written again (pieces are a pure
  function of the checkpoint, the settings, the seed and the index).
* ``audio/<id>/``: with ``render``, each piece rendered as it is (a Slakh-layout track),
  for the report's players.
* ``metrics.json`` (:func:`measure`), ``report.html`` and its assets.

The measures (seed 003: "no objective way to judge quality"; these are the objective parts):
held-out next-step likelihood and note-on F1 of the model and of two baselines (repeat the
last step; an n-gram model), adherence to the 12-bar form, novelty against the training
set and the rhythm of the pieces (rests, note lengths).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
from torch import nn

from sepcore.compose import measures as M
from sepcore.compose.data import SequencesConfig, training_pieces
from sepcore.compose.grid import (
    CHORD_PCS,
    CHORD_ROOTS,
    CHORDS,
    Grid,
    Piece,
    to_leadsheet,
    transpose,
)
from sepcore.compose.sample import ComposeSettings, compose_piece
from sepcore.compose.train import inputs_of, piece_log_probs, piece_predictions
from sepcore.errors import ConfigError
from sepcore.io import storage
from sepcore.models import checkpoint as ckpt
from sepcore.models.composer import Composer

log = logging.getLogger("sep.compose")

PIECES = "pieces"
AUDIO = "audio"


def load_composer(uri: str) -> tuple[nn.Module, dict[str, Any]]:
    """The composer of a checkpoint or training output, in eval mode, and its meta."""
    model, meta = ckpt.load_model(uri)
    if meta.get("task") != "composer":
        raise ckpt.CheckpointError(uri, f"holds a {meta.get('task', 'separator')} model, not a composer "
                                   "(train one with model.name=composer)")  # fmt: skip
    return model, meta


def sequences_of(meta: dict[str, Any]) -> SequencesConfig:
    """The sequences settings a composer was trained with."""
    return SequencesConfig.model_validate(meta["settings"]["sequences"])


def compose(model: Composer, meta: dict[str, Any], starts: Sequence[Piece], count: int,
            settings: ComposeSettings) -> Iterator[Piece]:  # fmt: skip
    """``count`` new pieces (indices 0..count-1 of ``settings.seed``), one at a time."""
    inputs = inputs_of(meta)
    source = None
    if settings.form == "blues":  # start from the blues set's pieces, as a blues, when it has any
        blues = [p for p in starts if p.source == "blues"]
        starts, source = (blues, "blues") if blues else (list(starts), None)
    for i in range(count):
        yield compose_piece(model, inputs, starts, i, settings, source)


def write_piece(output: str, piece: Piece, grid: Grid, melody_program: int = 0,
                chord_program: int = 0) -> dict[str, Any]:  # fmt: skip
    """Write ``pieces/<id>.mid`` and ``.png`` (skipped when both exist); the piece's record."""
    from sepcore.compose.midi import leadsheet_to_midi
    from sepcore.compose.pianoroll import piano_roll_png

    base = storage.join(output, PIECES, piece.piece_id)
    sheet = to_leadsheet(piece, grid, title=piece.piece_id)
    tempo = float(piece.bpm or 120.0)
    done = storage.exists(base + ".mid") and storage.exists(base + ".png")
    if not done:
        storage.write_bytes(base + ".png", piano_roll_png(sheet, piece.piece_id))
        storage.write_bytes(base + ".mid", leadsheet_to_midi(sheet, tempo, melody_program, chord_program))
    return {"id": piece.piece_id, "midi": base + ".mid", "piano_roll": base + ".png", "bars": piece.steps // piece.steps_per_bar,
            "tempo_bpm": tempo, "seconds": round(sheet.length * 60.0 / tempo, 2), "key_tonic": piece.key_tonic,
            "started_from": piece.extra.get("start"), "written": not done}  # fmt: skip


def in_c(pieces: Sequence[Piece], grid: Grid) -> list[Piece]:
    """Pieces moved to the key of C (their ``key_tonic`` to 0): key-free comparisons."""
    return [transpose(p, -p.key_tonic, grid) for p in pieces]


def _rows(log_probs: Sequence[tuple[np.ndarray, np.ndarray]], preds: Sequence[tuple[np.ndarray, np.ndarray]],
          pieces: Sequence[Piece], grid: Grid) -> tuple[dict[str, float], dict[str, float]]:  # fmt: skip
    """Held-out NLL and note-on F1 of one predictor from its per-piece log-probabilities and
    most likely next steps (steps ``1..T-1`` of each piece)."""
    nll = M.nll_per_step(np.concatenate([a for a, _ in log_probs]), np.concatenate([b for _, b in log_probs]))
    f1 = M.note_on_f1(np.concatenate([c for c, _ in preds]), np.concatenate([m for _, m in preds]),
                      np.concatenate([p.chords[1:] for p in pieces]), np.concatenate([p.melody[1:] for p in pieces]),
                      CHORD_PCS, grid.pitches)  # fmt: skip
    return nll, f1


def _rounded(d: dict[str, Any], digits: int = 4) -> dict[str, Any]:
    return {k: round(v, digits) if isinstance(v, float) and math.isfinite(v) else v for k, v in d.items()}


def measure(model: Composer, meta: dict[str, Any], splits: dict[str, list[Piece]], composed: Sequence[Piece],
            settings: ComposeSettings, ngram: int = 3) -> dict[str, Any]:  # fmt: skip
    """Every measure of ``metrics.json``: ``likelihood`` and ``f1`` (held-out test split, per
    source and all: the model, ``repeat_last`` and ``ngram``), ``form`` (12-bar adherence of
    composed pieces, the blues set's training and test pieces and n-gram samples), ``novelty``
    (longest run shared with the training set, in C) and ``rhythm``."""
    inputs = inputs_of(meta)
    grid = inputs.grid
    cfg = sequences_of(meta)
    train = training_pieces(cfg, splits["train"])
    test = splits["test"]
    if not test:
        raise ConfigError("measure", "the composer's sequences have no test piece to measure the likelihood on "
                          "(more pieces, or measure=false)")  # fmt: skip
    K, U = len(CHORDS), grid.melody_units
    baselines: dict[str, M.Baseline] = {"repeat_last": M.RepeatLast(K, U).fit(train), "ngram": M.NGram(K, U, ngram).fit(train)}
    groups = {"all": test, **{s: [p for p in test if p.source == s] for s in sorted({p.source for p in test})}}
    likelihood: dict[str, Any] = {}
    f1: dict[str, Any] = {}
    for group, pieces in groups.items():
        if not pieces:
            continue
        nll, score = _rows([piece_log_probs(model, p, inputs) for p in pieces],
                           [piece_predictions(model, p, inputs) for p in pieces], pieces, grid)  # fmt: skip
        likelihood[group], f1[group] = {"composer": _rounded(nll)}, {"composer": _rounded(score)}
        for name, b in baselines.items():
            nll, score = _rows([b.logprob(p) for p in pieces], [b.predict(p) for p in pieces], pieces, grid)
            likelihood[group][name], f1[group][name] = _rounded(nll), _rounded(score)
        likelihood[group]["pieces"] = len(pieces)
        likelihood[group]["steps"] = int(sum(p.steps - 1 for p in pieces))
    spb = settings.steps_per_bar(grid)
    blues_train = [p for p in splits["train"] if p.source == "blues"]
    blues_test = [p for p in test if p.source == "blues"]

    def adherence(pieces: Sequence[Any]) -> float | None:
        values = [M.form_adherence(p.chords, p.steps_per_bar, CHORD_ROOTS) for p in pieces]
        return round(float(np.mean(values)), 4) if values else None

    samples = []
    if composed:
        ng = baselines["ngram"]
        samples = [ng.sample((int(p.chords[0]), int(p.melody[0])), p.steps, p.steps_per_bar, seed=settings.seed + i,
                             temperature=settings.temperature) for i, p in enumerate(composed)]  # fmt: skip
    form = {"composer": adherence(composed) if settings.form == "blues" else None, "ngram_samples": adherence(samples),
            "training_blues": adherence(blues_train), "test_blues": adherence(blues_test), "steps_per_bar": spb}  # fmt: skip
    original = in_c(splits["train"], grid)
    novelty = M.novelty(in_c(composed, grid), original, U) if composed else None
    rhythm = {"composer": M.rhythm_stats(composed, grid.pitches), "training": M.rhythm_stats(splits["train"], grid.pitches),
              "ngram_samples": M.rhythm_stats(samples, grid.pitches)} if grid.rests else None  # fmt: skip
    return {"likelihood": likelihood, "f1": f1, "form": form, "novelty": novelty, "rhythm": rhythm,
            "grid": grid.to_json(), "output": meta["model"]["config"].get("output", "softmax"),
            "baselines": {"ngram_n": ngram}}  # fmt: skip


def summary_figures(metrics: dict[str, Any]) -> dict[str, Any]:
    """The headline figures of ``metrics`` for the job's summary."""
    all_ = metrics["likelihood"]["all"]
    out = {f"test_nll_{k}": all_[k]["total"] for k in ("composer", "repeat_last", "ngram")}
    out.update({f"test_f1_{k}": metrics["f1"]["all"][k]["f1"] for k in ("composer", "repeat_last", "ngram")})
    if metrics["form"]["composer"] is not None:
        out["form_adherence"] = metrics["form"]["composer"]
    if metrics["novelty"]:
        out["novelty_median_bars"] = metrics["novelty"]["composed_summary"]["median_bars"]
        out["training_shared_median_bars"] = metrics["novelty"]["training_summary"]["median_bars"]
    return out


def write_outputs(output: str, checkpoint: str, records: Sequence[dict[str, Any]], mixes: dict[str, str],
                  metrics: dict[str, Any] | None, history: Sequence[dict[str, Any]]) -> str:  # fmt: skip
    """``metrics.json`` (the measures, the pieces, the checkpoint) and ``report.html``; the report's URI."""
    import json

    from sepcore.compose.report import write_compose_report

    doc = {"checkpoint": storage.normalize_uri(checkpoint), "pieces": list(records), "measures": metrics}
    storage.write_text(storage.join(output, "metrics.json"), json.dumps(doc, indent=1, default=float))
    pieces = []
    for r in records:
        item: dict[str, Any] = {"name": r["id"], "title": r["id"], "piano_roll": storage.read_bytes(r["piano_roll"]),
                                "caption": f"{r['bars']} bars, {r['tempo_bpm']:.0f} bpm, {r['seconds']:.0f} s; "
                                           f"started from {r['started_from']}"}  # fmt: skip
        if r["id"] in mixes:
            item.update(audio_name=f"{r['id']}.flac", audio=storage.read_bytes(mixes[r["id"]]))
        pieces.append(item)
    m = metrics or {}
    return write_compose_report(
        output, summary_figures(m) if m else {}, pieces, history, likelihood=m.get("likelihood"), f1=m.get("f1"),
        form=m.get("form"), novelty=m.get("novelty"), rhythm=m.get("rhythm"))  # fmt: skip
