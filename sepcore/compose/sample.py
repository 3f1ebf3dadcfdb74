"""Composing with a trained composer: new pieces step by step, seeded.

A piece starts from the first step of a training piece (chord and melody unit) moved to a
random key, at a bar's start, with the recurrent state at zero, as every training piece
starts (a model with ``conditions`` is told the source asked for, e.g. ``blues``, or the
start's); then each step is drawn from the model given everything before it:

* ``softmax`` models draw the chord from the vocabulary softmax, then the melody unit from
  the melody softmax given that chord: the notes of a step are drawn in sequence, not
  independently. A held note right after a rest is impossible and never drawn.
* ``independent`` models (the paper's) draw every unit on or off by itself: the chord is the
  vocabulary chord nearest the pitch classes drawn (the previous chord when none is on); the
  melody the most probable unit among those drawn on (none on: the note before goes on).

``temperature`` divides the logits. The same model, settings, seed and index give the same
piece (a ``torch.Generator`` per piece, seeded from ``seed`` and ``index``).
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from sepcore.compose.grid import TRANSPOSE, Grid, Inputs, Piece, nearest_chord
from sepcore.models.composer import Composer

#: The forms a piece can be composed in: bars come in 12-bar choruses (blues) or as asked (free).
FORMS = ("blues", "free")


@dataclass(frozen=True)
class ComposeSettings:
    """``bars`` of ``meter`` (blues: rounded up to whole 12-bar choruses); tempo drawn in
    ``tempo`` (quarters per minute); ``temperature`` > 0."""

    bars: int = 24
    form: str = "blues"
    meter: tuple[int, int] = (4, 4)
    temperature: float = 1.0
    seed: int = 0
    tempo: tuple[float, float] = (90.0, 140.0)

    def steps_per_bar(self, grid: Grid) -> int:
        quarters = self.meter[0] * 4 / self.meter[1]
        steps = quarters * grid.steps_per_quarter
        if abs(steps - round(steps)) > 1e-9:
            raise ValueError(f"a {self.meter[0]}/{self.meter[1]} bar is not a whole number of {grid.resolution} steps")
        return int(round(steps))

    def total_bars(self) -> int:
        return -(-self.bars // 12) * 12 if self.form == "blues" else self.bars


def _seed(seed: int, index: int) -> int:
    return int.from_bytes(hashlib.sha1(f"compose\x1f{seed}\x1f{index}".encode()).digest()[:8], "big") % 2**63


def _input(inputs: Inputs, chord: int, melody: int, step: int, steps_per_bar: int, source: str | None) -> torch.Tensor:
    x = inputs.encode(np.array([chord]), np.array([melody]), steps_per_bar, source, first_step=step)
    return torch.from_numpy(x)[None]


def _draw_melody(model: Composer, zm: torch.Tensor, previous: int, grid: Grid, temperature: float,
                 g: torch.Generator) -> int:  # fmt: skip
    z = zm / temperature
    if model.output == "softmax":
        if grid.rests and previous == grid.rest:
            z = z.clone()
            z[grid.hold] = -torch.inf
        return int(torch.multinomial(torch.softmax(z, -1), 1, generator=g))
    on = torch.bernoulli(torch.sigmoid(z), generator=g).bool()
    if grid.rests and previous == grid.rest:
        on[grid.hold] = False
    if on.any():
        return int(torch.where(on, z, torch.full_like(z, -torch.inf)).argmax())
    if grid.rests:
        return grid.rest if previous == grid.rest else grid.hold
    return previous


def _draw_chord(model: Composer, zc: torch.Tensor, previous: int, temperature: float, g: torch.Generator) -> int:
    z = zc / temperature
    if model.output == "softmax":
        return int(torch.multinomial(torch.softmax(z, -1), 1, generator=g))
    pcs = torch.bernoulli(torch.sigmoid(z), generator=g).bool().numpy()
    found = nearest_chord(pcs)
    return previous if found is None else found


def compose_piece(model: Composer, inputs: Inputs, starts: Sequence[Piece], index: int, settings: ComposeSettings,
                  source: str | None = None) -> Piece:  # fmt: skip
    """Piece number ``index`` of ``settings.seed``, started from one of ``starts`` (training pieces).
    ``source``: the source the model is told the piece is from (``inputs.conditions``; None:
    the start's)."""
    grid = inputs.grid
    if not starts:
        raise ValueError("composing needs at least one training piece to start from")
    if settings.temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {settings.temperature}")
    rng = np.random.default_rng(_seed(settings.seed, index))
    g = torch.Generator().manual_seed(_seed(settings.seed, index))
    start = starts[int(rng.integers(len(starts)))]
    source = source or start.source
    shift = int(rng.integers(12))
    spb = settings.steps_per_bar(grid)
    steps = settings.total_bars() * spb
    chords = np.empty(steps, dtype=np.int64)
    melody = np.empty(steps, dtype=np.int64)
    chords[0] = TRANSPOSE[start.chords[0], shift]
    m0 = int(start.melody[0])
    melody[0] = grid.fold(grid.low + m0 + shift) - grid.low if m0 < grid.pitches else (grid.rest if grid.rests else m0)
    model.eval()
    state = None
    with torch.inference_mode():
        for t in range(steps - 1):
            x = _input(inputs, int(chords[t]), int(melody[t]), t, spb, source)
            chord_feat, melody_feat, state = model.run(x, state)
            c = _draw_chord(model, model.chord_logits(chord_feat)[0, 0], int(chords[t]), settings.temperature, g)
            zm = model.melody_logits(melody_feat, torch.tensor([[c]]) if model.output == "softmax" else None)
            chords[t + 1] = c
            melody[t + 1] = _draw_melody(model, zm[0, 0], int(melody[t]), grid, settings.temperature, g)
    lo, hi = settings.tempo
    return Piece(f"composed-{settings.seed}-{index:04d}", "composed", spb, chords, melody,
                 (start.key_tonic + shift) % 12, start.key_mode, settings.meter, round(float(rng.uniform(lo, hi)), 1),
                 {"start": start.piece_id, "shift": shift, "as": source})  # fmt: skip
