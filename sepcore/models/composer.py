"""The LSTM chord and melody composer of seed 003 (Eck and Schmidhuber, 2002).

Two LSTMs read the step grid of :mod:`sepcore.compose.grid` (input per step,
:class:`~sepcore.compose.grid.Inputs`: the chord's 12 pitch classes, the melody unit one-hot
and optionally the step's place in the bar and the piece's source, ``conditions``):

* the **chord** LSTM (``chord_hidden`` cells; the paper's first experiment: 4 blocks of 2
  cells, i.e. 8) is recurrent on itself;
* the **melody** LSTM (``melody_hidden`` cells) also reads the chord LSTM's output: chord
  cells feed the melody cells but not the other way round (the paper's second experiment).
  ``melody_hidden: 0`` leaves it out (chords only).

Torch's LSTM has one gate per cell; the paper's blocks of two cells share gates, so the
sizes here count cells and have a few more gate weights than the paper's.

Outputs predict the next step (``output``):

* ``independent``: the paper's sigmoid per unit (12 chord units, one per melody unit),
  trained with binary cross-entropy and sampled unit by unit, so the outputs are treated
  as independent (seed 003's issue #1).
* ``softmax`` (default): a softmax over the chord vocabulary, then a softmax over the
  melody units given the chosen chord. A step is sampled in sequence, chord first, so
  the melody note depends on the chord it sounds with.

Both give log-probabilities over the same events (a chord id of the vocabulary and one
melody unit) for the held-out likelihood: the independent outputs renormalised over the
vocabulary's pitch-class sets and over one-hot melody units.

Shapes: inputs ``(batch, T, input_units)`` float; chords and melody ``(batch, T)`` int64;
log-probabilities ``(batch, T, K)`` and ``(batch, T, melody_units)``; the recurrent state is
``((h_c, c_c), (h_m, c_m))`` of ``(1, batch, hidden)`` each (None: zeros).
"""

from __future__ import annotations

from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import nn

State = tuple[tuple[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor] | None]


class Composer(nn.Module):
    """See the module docstring. ``chords``: size of the chord vocabulary (K);
    ``chord_pcs``: its pitch classes as a (K, 12) 0/1 list (a buffer, saved with the weights)."""

    def __init__(self, melody_units: int, chord_pcs: list[list[int]], position_units: int = 0,
                 chord_hidden: int = 8, melody_hidden: int = 16,
                 output: Literal["softmax", "independent"] = "softmax", dropout: float = 0.0,
                 conditions: list[str] | None = None):  # fmt: skip
        super().__init__()
        if output not in ("softmax", "independent"):
            raise ValueError(f"output must be softmax or independent, got {output!r}")
        if chord_hidden < 1 or melody_hidden < 0 or melody_units < 2 or not chord_pcs:
            raise ValueError("chord_hidden >= 1, melody_hidden >= 0, melody_units >= 2 and a chord vocabulary are needed")
        self.config: dict[str, Any] = dict(melody_units=melody_units, chord_pcs=chord_pcs,
                                           position_units=position_units, chord_hidden=chord_hidden,
                                           melody_hidden=melody_hidden, output=output, dropout=dropout,
                                           conditions=list(conditions or []))  # fmt: skip
        self.melody_units, self.position_units, self.output = melody_units, position_units, output
        self.conditions = list(conditions or [])
        self.pcs: torch.Tensor
        self.register_buffer("pcs", torch.tensor(chord_pcs, dtype=torch.float32), persistent=False)
        n_in = 12 + melody_units + position_units + len(self.conditions)
        self.chord_lstm = nn.LSTM(n_in, chord_hidden, batch_first=True)
        self.melody_lstm = nn.LSTM(n_in + chord_hidden, melody_hidden, batch_first=True) if melody_hidden else None
        self.drop = nn.Dropout(dropout)
        chord_out = len(chord_pcs) if output == "softmax" else 12
        self.chord_head = nn.Linear(chord_hidden + n_in, chord_out)
        # softmax: the melody head also sees the next step's chord (its 12 pitch classes)
        self.melody_head = nn.Linear(melody_hidden + chord_hidden + n_in + (12 if output == "softmax" else 0),
                                     melody_units)  # fmt: skip

    @property
    def input_units(self) -> int:
        return 12 + self.melody_units + self.position_units + len(self.conditions)

    def run(self, x: torch.Tensor, state: State | None = None) -> tuple[torch.Tensor, torch.Tensor, State]:
        """The recurrent pass: ``(chord_features, melody_features, new_state)``; the features
        ``(batch, T, ...)`` feed the heads (:meth:`chord_logits`, :meth:`melody_logits`)."""
        if x.ndim != 3 or x.shape[-1] != self.input_units:
            raise ValueError(f"composer input must be (batch, T, {self.input_units}), got {tuple(x.shape)}")
        hc, sc = self.chord_lstm(x, None if state is None else state[0])
        hc = self.drop(hc)
        chord_feat = torch.cat([hc, x], dim=-1)
        if self.melody_lstm is not None:
            hm, sm = self.melody_lstm(torch.cat([x, hc], dim=-1), None if state is None else state[1])
            melody_feat = torch.cat([self.drop(hm), hc, x], dim=-1)
        else:
            sm, melody_feat = None, chord_feat
        return chord_feat, melody_feat, (sc, sm)

    def chord_logits(self, chord_feat: torch.Tensor) -> torch.Tensor:
        """Softmax: ``(batch, T, K)`` logits over the vocabulary; independent: ``(batch, T, 12)`` unit logits."""
        return self.chord_head(chord_feat)  # type: ignore[no-any-return]

    def melody_logits(self, melody_feat: torch.Tensor, next_chords: torch.Tensor | None) -> torch.Tensor:
        """``(batch, T, melody_units)`` logits; softmax models take the next step's chord ids ``(batch, T)``."""
        if self.output == "softmax":
            if next_chords is None:
                raise ValueError("a softmax composer predicts the melody given the next chord: pass next_chords")
            melody_feat = torch.cat([melody_feat, self.pcs[next_chords]], dim=-1)
        return self.melody_head(melody_feat)  # type: ignore[no-any-return]

    def log_probs(self, x: torch.Tensor, next_chords: torch.Tensor,
                  state: State | None = None) -> tuple[torch.Tensor, torch.Tensor, State]:  # fmt: skip
        """Log-probabilities of the next step's chord ``(batch, T, K)`` and melody unit
        ``(batch, T, melody_units)`` (given ``next_chords`` for a softmax model), normalised over
        the vocabulary and the one-hot melody units for both kinds of output."""
        chord_feat, melody_feat, state = self.run(x, state)
        zc = self.chord_logits(chord_feat)
        zm = self.melody_logits(melody_feat, next_chords)
        return self.chord_log_probs(zc), F.log_softmax(zm, -1), state

    def chord_log_probs(self, zc: torch.Tensor) -> torch.Tensor:
        """Log-probabilities over the vocabulary ``(..., K)`` from :meth:`chord_logits`. Independent
        units: log prod_j Bernoulli of each vocabulary chord's pitch-class set, renormalised over the
        vocabulary (one-hot melody units renormalise the same way to a softmax of their logits)."""
        if self.output == "softmax":
            return F.log_softmax(zc, -1)
        return F.log_softmax(F.logsigmoid(zc) @ self.pcs.T + F.logsigmoid(-zc) @ (1 - self.pcs).T, -1)

    def forward(self, x: torch.Tensor, next_chords: torch.Tensor, next_melody: torch.Tensor,
                mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:  # fmt: skip
        """``(training loss, NLL)`` over the steps where ``mask`` ``(batch, T)`` is true: the NLL
        is the mean negative log-likelihood of the next step in nats (chord + melody); the
        training loss is the NLL (softmax) or the paper's binary cross-entropy summed over
        the units (independent). Training calls this (``forward``, so a DDP wrapper syncs it)."""
        chord_feat, melody_feat, _ = self.run(x)
        zc = self.chord_logits(chord_feat)
        zm = self.melody_logits(melody_feat, next_chords)
        lc, lm = self.chord_log_probs(zc), F.log_softmax(zm, -1)
        picked = lc.gather(-1, next_chords[..., None])[..., 0] + lm.gather(-1, next_melody[..., None])[..., 0]
        m = mask.float()
        n = m.sum().clamp_min(1.0)
        nll = -(picked * m).sum() / n
        if self.output == "softmax":
            return nll, nll
        bce = (F.binary_cross_entropy_with_logits(zc, self.pcs[next_chords], reduction="none").sum(-1)
               + F.binary_cross_entropy_with_logits(zm, F.one_hot(next_melody, self.melody_units).float(),
                                                    reduction="none").sum(-1))  # fmt: skip
        return (bce * m).sum() / n, nll
