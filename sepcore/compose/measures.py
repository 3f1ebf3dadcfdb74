"""Objective measures of composed pieces, and the baselines a composer has to beat.

Everything here is pure numpy on the step grid of :mod:`sepcore.compose.grid`. A piece is
any object with ``chords`` (int array ``(T,)``, chord ids ``0..K-1``), ``melody`` (int
array ``(T,)``, melody unit ids ``0..M-1``) and ``steps_per_bar`` (:class:`Steps` is the
plainest one). Chord ids map to music through arrays the caller passes: ``roots`` int
``(K,)`` (the root pitch class of each chord) and ``pcs`` bool ``(K, 12)`` (its pitch
classes). Melody ids ``0..pitch_units-1`` are pitches; with rests, ``pitch_units`` is
REST and ``pitch_units + 1`` HOLD (the previous note goes on).

* Baselines (:class:`RepeatLast`, :class:`NGram`) predict step ``t`` from steps ``< t``
  (the melody also from the chord of step ``t``, as the composer samples it chord first):
  ``probs`` gives the distributions, ``logprob`` the natural-log probabilities of the true
  units at steps ``1..T-1``, ``predict`` the most likely units, ``sample`` a new piece.
* :func:`nll_per_step`: mean negative log-likelihood in nats per step.
* :func:`note_on_f1`: micro F1 of the units switched on at each step.
* :func:`form_adherence`: the share of bars whose chord fits the 12-bar blues form.
* :func:`longest_shared`, :class:`WindowIndex`, :func:`novelty`: the longest run of steps
  a piece shares with other pieces (copying of the training set).
* :func:`rhythm_stats`: rests, held notes and note lengths.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np

from sepcore.compose.blues import FORM

#: The smoothing constants a baseline's ``fit`` chooses from (log-spaced, 1e-4..1).
EPS_GRID: tuple[float, ...] = tuple(float(e) for e in np.logspace(-4, 0, 17))


#: The melody distribution ``(M,)`` of the next step given its chord id.
MelodyGiven = Callable[[int], np.ndarray]


class PieceLike(Protocol):
    """What the measures read of a piece: ``chords``/``melody`` int ``(T,)`` and ``steps_per_bar``."""

    @property
    def chords(self) -> np.ndarray: ...

    @property
    def melody(self) -> np.ndarray: ...

    @property
    def steps_per_bar(self) -> int: ...


@dataclass(frozen=True)
class Steps:
    """A piece on the grid as plain arrays (chord ids and melody ids, ``(T,)`` each)."""

    chords: np.ndarray
    melody: np.ndarray
    steps_per_bar: int


def _arrays(piece: PieceLike) -> tuple[np.ndarray, np.ndarray]:
    c, m = np.asarray(piece.chords, dtype=np.int64), np.asarray(piece.melody, dtype=np.int64)
    if c.ndim != 1 or c.shape != m.shape:
        raise ValueError(f"a piece needs chords and melody of one shape (T,), got {c.shape} and {m.shape}")
    return c, m


def _check_ids(x: np.ndarray, size: int, what: str) -> None:
    if x.size and (x.min() < 0 or x.max() >= size):
        raise ValueError(f"{what} ids must lie in 0..{size - 1}, got {x.min()}..{x.max()}")


def _pick(p: np.ndarray, x: np.ndarray) -> np.ndarray:
    """Natural log of ``p[t, x[t]]`` for each row. Shape: ``p (T, V)``, ``x (T,)`` -> ``(T,)``."""
    return np.log(p[np.arange(len(x)), x])


class Baseline(ABC):
    """Shared interface: ``probs`` and ``step`` are what a baseline defines; the rest follows."""

    chord_units: int
    melody_units: int

    @abstractmethod
    def probs(self, piece: PieceLike) -> tuple[np.ndarray, np.ndarray]:
        """Distributions of the chord and melody unit at steps ``1..T-1``.
        Shape: ``(T-1, K)`` and ``(T-1, M)``, rows summing to 1."""

    def logprob(self, piece: PieceLike) -> tuple[np.ndarray, np.ndarray]:
        """Natural-log probabilities of the true chord and melody unit at steps ``1..T-1``.
        Shape: ``(T-1,)`` each."""
        c, m = _arrays(piece)
        pc, pm = self.probs(piece)
        return _pick(pc, c[1:]), _pick(pm, m[1:])

    def predict(self, piece: PieceLike) -> tuple[np.ndarray, np.ndarray]:
        """The most likely chord and melody unit at steps ``1..T-1``. Shape: ``(T-1,)`` each."""
        pc, pm = self.probs(piece)
        return pc.argmax(axis=1), pm.argmax(axis=1)

    @abstractmethod
    def step(self, chords: np.ndarray, melody: np.ndarray) -> tuple[np.ndarray, MelodyGiven]:
        """The chord distribution ``(K,)`` after the steps given (``(t,)`` each), and a function
        of the next chord giving the melody distribution ``(M,)`` (what :meth:`sample` draws)."""

    def sample(self, first: tuple[int, int], steps: int, steps_per_bar: int, seed: int,
               temperature: float = 1.0) -> Steps:  # fmt: skip
        """A piece of ``steps`` steps from the chord and melody unit ``first``, drawn step by
        step (chord, then melody given it) with probabilities raised to ``1/temperature``."""
        rng = np.random.default_rng(seed)
        c, m = [int(first[0])], [int(first[1])]

        def draw(p: np.ndarray) -> int:
            q = p ** (1.0 / temperature)
            return int(rng.choice(len(q), p=q / q.sum()))

        for _ in range(steps - 1):
            pc, melody_given = self.step(np.array(c), np.array(m))
            c.append(draw(pc))
            m.append(draw(melody_given(c[-1])))
        return Steps(np.array(c[:steps]), np.array(m[:steps]), steps_per_bar)

    def _check(self, piece: PieceLike) -> tuple[np.ndarray, np.ndarray]:
        c, m = _arrays(piece)
        _check_ids(c, self.chord_units, "chord")
        _check_ids(m, self.melody_units, "melody")
        return c, m


# ---------------------------------------------------------------- repeat the last step


def repeat_probs(eps: float, size: int) -> tuple[float, float]:
    """Probabilities of the repeated unit and of each other unit: ``(1 + eps) / (1 + eps V)``
    and ``eps / (1 + eps V)`` for a vocabulary of ``size`` (``V``) units."""
    return (1.0 + eps) / (1.0 + eps * size), eps / (1.0 + eps * size)


def _fit_repeat(repeats: int, events: int, size: int) -> float:
    """The eps of :data:`EPS_GRID` with the largest likelihood of ``repeats`` among ``events``."""
    def ll(eps: float) -> float:
        same, other = np.log(repeat_probs(eps, size))
        return float(repeats * same + (events - repeats) * other)

    return max(EPS_GRID, key=ll)


class RepeatLast(Baseline):
    """Step ``t`` repeats step ``t-1``, add-eps smoothed: ``p(x) = (1[x = last] + eps) / (1 + eps V)``.

    ``chord_units``/``melody_units``: the vocabulary sizes ``K`` and ``M``. ``eps`` per
    part (chords, melody): given, or chosen by :meth:`fit` from :data:`EPS_GRID` by the
    training likelihood.
    """

    def __init__(self, chord_units: int, melody_units: int, eps: tuple[float, float] | None = None):
        self.chord_units, self.melody_units = chord_units, melody_units
        self.eps = eps

    def fit(self, pieces: Iterable[PieceLike]) -> RepeatLast:
        reps, n = np.zeros(2, dtype=np.int64), 0
        for piece in pieces:
            c, m = self._check(piece)
            reps += [(c[1:] == c[:-1]).sum(), (m[1:] == m[:-1]).sum()]
            n += max(len(c) - 1, 0)
        if n == 0:
            raise ValueError("RepeatLast.fit: the pieces have no step to predict (all shorter than 2)")
        self.eps = (_fit_repeat(int(reps[0]), n, self.chord_units), _fit_repeat(int(reps[1]), n, self.melody_units))
        return self

    def _eps(self) -> tuple[float, float]:
        if self.eps is None:
            raise ValueError("RepeatLast has no eps: pass eps or call fit first")
        return self.eps

    def _dist(self, last: np.ndarray, size: int, eps: float) -> np.ndarray:
        same, other = repeat_probs(eps, size)
        p = np.full((len(last), size), other)
        p[np.arange(len(last)), last] = same
        return p

    def probs(self, piece: PieceLike) -> tuple[np.ndarray, np.ndarray]:
        c, m = self._check(piece)
        ec, em = self._eps()
        return self._dist(c[:-1], self.chord_units, ec), self._dist(m[:-1], self.melody_units, em)

    def step(self, chords: np.ndarray, melody: np.ndarray) -> tuple[np.ndarray, MelodyGiven]:
        ec, em = self._eps()
        pm = self._dist(melody[-1:], self.melody_units, em)[0]
        return self._dist(chords[-1:], self.chord_units, ec)[0], lambda _chord: pm


# ---------------------------------------------------------------- n-grams


def _backoff(cx: np.ndarray, ch: np.ndarray, eps: float, size: int) -> np.ndarray:
    """Interpolated add-eps probabilities of events from their counts at each order.

    ``cx[k]``/``ch[k]``: count of (context, unit) and of the context at order ``k`` (order 0:
    the empty context). ``p_0 = (cx_0 + eps) / (ch_0 + eps V)`` and
    ``p_k = (cx_k + eps V p_{k-1}) / (ch_k + eps V)``: each order smoothed towards the one
    below it, so an unseen context gives the shorter context's distribution and every
    ``p_k`` sums to 1 over the vocabulary. Shape: ``(orders, ...)`` -> ``(...)``.
    """
    a = eps * size
    p = (cx[0] + eps) / (ch[0] + a)
    for k in range(1, len(cx)):
        p = (cx[k] + a * p) / (ch[k] + a)
    return p


class _Counts:
    """Next-unit counts per context, for contexts of every order up to ``orders - 1``."""

    def __init__(self, size: int, orders: int):
        self.size = size
        self.tables: list[dict[tuple[int, ...], np.ndarray]] = [{} for _ in range(orders)]
        self.totals: list[dict[tuple[int, ...], int]] = [{} for _ in range(orders)]

    def add(self, contexts: Sequence[tuple[int, ...] | None], x: int) -> None:
        for table, totals, ctx in zip(self.tables, self.totals, contexts, strict=True):
            if ctx is not None:
                row = table.get(ctx)
                if row is None:
                    row = table[ctx] = np.zeros(self.size, dtype=np.int64)
                row[x] += 1
                totals[ctx] = totals.get(ctx, 0) + 1

    def rows(self, contexts: Sequence[tuple[int, ...] | None]) -> tuple[np.ndarray, np.ndarray]:
        """Counts of every unit ``(orders, V)`` and of the context ``(orders, 1)``."""
        zero = np.zeros(self.size, dtype=np.int64)
        rows = np.stack([zero if ctx is None else table.get(ctx, zero)
                         for table, ctx in zip(self.tables, contexts, strict=True)])  # fmt: skip
        return rows, rows.sum(axis=1, keepdims=True)


class NGram(Baseline):
    """``n``-gram baselines: chords ``p(c_t | c_{t-n+1..t-1})``, melody
    ``p(m_t | m_{t-n+1..t-1}, c_t)``, add-eps smoothed and interpolated with the shorter
    contexts (:func:`_backoff`: chords back off to shorter histories and the unigram;
    the melody to ``c_t`` with shorter melody histories, ``c_t`` alone, the unigram).

    ``eps`` per part: given, or chosen by :meth:`fit` from :data:`EPS_GRID` by the
    leave-one-out likelihood of the training steps (each step's own count taken out; the
    plain training likelihood always prefers the smallest eps).
    """

    def __init__(self, chord_units: int, melody_units: int, n: int = 3,
                 eps: tuple[float, float] | None = None):  # fmt: skip
        if n < 1:
            raise ValueError(f"NGram n={n}: must be >= 1")
        self.chord_units, self.melody_units, self.n = chord_units, melody_units, n
        self.eps = eps
        self.chord_counts = _Counts(chord_units, n)
        self.melody_counts = _Counts(melody_units, n + 1)

    def _contexts(self, c: list[int], m: list[int], t: int) -> tuple[list, list]:
        """Contexts of step ``t`` at each order (None where the history is too short)."""
        h = self.n - 1
        chord = [tuple(c[t - k : t]) if k <= t else None for k in range(h + 1)]
        melody = [()] + [(c[t], *m[t - k : t]) if k <= t else None for k in range(h + 1)]
        return chord, melody

    def fit(self, pieces: Iterable[PieceLike]) -> NGram:
        self.chord_counts = _Counts(self.chord_units, self.n)
        self.melody_counts = _Counts(self.melody_units, self.n + 1)
        events = []
        for piece in pieces:
            c, m = (x.tolist() for x in self._check(piece))
            for t in range(1, len(c)):
                cc, mc = self._contexts(c, m, t)
                self.chord_counts.add(cc, int(c[t]))
                self.melody_counts.add(mc, int(m[t]))
                events.append((cc, int(c[t]), mc, int(m[t])))
        if not events:
            raise ValueError("NGram.fit: the pieces have no step to predict (all shorter than 2)")
        if self.eps is None:
            self.eps = (self._loo_eps([(e[0], e[1]) for e in events], self.chord_counts),
                        self._loo_eps([(e[2], e[3]) for e in events], self.melody_counts))  # fmt: skip
        return self

    @staticmethod
    def _loo_eps(events: list[tuple[list, int]], counts: _Counts) -> float:
        """The eps of :data:`EPS_GRID` with the best leave-one-out log-likelihood of ``events``."""
        orders = len(counts.tables)
        cx = np.zeros((orders, len(events)))
        ch = np.zeros((orders, len(events)))
        for i, (ctx, x) in enumerate(events):
            for k, key in enumerate(ctx):
                if key is not None:
                    cx[k, i], ch[k, i] = counts.tables[k][key][x] - 1, counts.totals[k][key] - 1
        return max(EPS_GRID, key=lambda e: float(np.log(_backoff(cx, ch, e, counts.size)).sum()))

    def _eps(self) -> tuple[float, float]:
        if self.eps is None:
            raise ValueError("NGram has no eps: pass eps or call fit first")
        return self.eps

    def _dist(self, counts: _Counts, contexts: list, eps: float) -> np.ndarray:
        rows, totals = counts.rows(contexts)
        return _backoff(rows.astype(np.float64), totals.astype(np.float64), eps, counts.size)

    def probs(self, piece: PieceLike) -> tuple[np.ndarray, np.ndarray]:
        c, m = self._check(piece)
        ec, em = self._eps()
        pc = np.zeros((max(len(c) - 1, 0), self.chord_units))
        pm = np.zeros((max(len(c) - 1, 0), self.melody_units))
        cl, ml = c.tolist(), m.tolist()
        for t in range(1, len(c)):
            cc, mc = self._contexts(cl, ml, t)
            pc[t - 1] = self._dist(self.chord_counts, cc, ec)
            pm[t - 1] = self._dist(self.melody_counts, mc, em)
        return pc, pm

    def step(self, chords: np.ndarray, melody: np.ndarray) -> tuple[np.ndarray, MelodyGiven]:
        ec, em = self._eps()
        c, m = [int(x) for x in chords], [int(x) for x in melody]
        t = len(c)
        cc, _ = self._contexts([*c, 0], m, t)

        def melody_given(chord: int) -> np.ndarray:
            _, mc = self._contexts([*c, int(chord)], m, t)
            return self._dist(self.melody_counts, mc, em)

        return self._dist(self.chord_counts, cc, ec), melody_given


def held_out_nll(model: Baseline, pieces: Iterable[PieceLike]) -> dict[str, float]:
    """:func:`nll_per_step` of a baseline over all steps ``1..T-1`` of ``pieces`` together."""
    lps = [model.logprob(p) for p in pieces]
    return nll_per_step(np.concatenate([a for a, _ in lps]), np.concatenate([b for _, b in lps]))


# ---------------------------------------------------------------- measures


def nll_per_step(chord_lp: np.ndarray, melody_lp: np.ndarray) -> dict[str, float]:
    """Mean negative log-likelihood in nats per step: ``chord``, ``melody`` and ``total``
    (their sum: the joint step). Shape: ``(N,)`` each (natural-log probabilities)."""
    c, m = np.asarray(chord_lp, dtype=np.float64), np.asarray(melody_lp, dtype=np.float64)
    if c.shape != m.shape or c.ndim != 1 or not c.size:
        raise ValueError(f"nll_per_step needs two non-empty (N,) arrays, got {c.shape} and {m.shape}")
    chord, melody = -float(c.mean()), -float(m.mean())
    return {"chord": chord, "melody": melody, "total": chord + melody}


def units_on(chords: np.ndarray, melody: np.ndarray, pcs: np.ndarray, pitch_units: int) -> np.ndarray:
    """The units switched on at each step: 12 pitch classes of the chord, then one slot per
    melody pitch (REST/HOLD ids ``>= pitch_units`` switch nothing on).
    Shape: ``(T,)``, ``(T,)``, ``pcs (K, 12)`` -> bool ``(T, 12 + pitch_units)``."""
    c, m = np.asarray(chords, dtype=np.int64), np.asarray(melody, dtype=np.int64)
    pcs = np.asarray(pcs, dtype=bool)
    if pcs.ndim != 2 or pcs.shape[1] != 12:
        raise ValueError(f"pcs must be bool (K, 12), got shape {pcs.shape}")
    _check_ids(c, len(pcs), "chord")
    on = np.zeros((len(c), 12 + pitch_units), dtype=bool)
    on[:, :12] = pcs[c]
    pitch = (m >= 0) & (m < pitch_units)
    on[np.flatnonzero(pitch), 12 + m[pitch]] = True
    return on


def note_on_f1(pred_chords: np.ndarray, pred_melody: np.ndarray, true_chords: np.ndarray,
               true_melody: np.ndarray, pcs: np.ndarray, pitch_units: int) -> dict[str, float]:  # fmt: skip
    """Micro precision, recall and F1 over steps of the units on (:func:`units_on`).

    A ratio with nothing to count is 0, except when neither side has any unit on (all
    1: agreeing silence). Shape: four ``(T,)`` id arrays, ``pcs (K, 12)``.
    """
    pred = units_on(pred_chords, pred_melody, pcs, pitch_units)
    true = units_on(true_chords, true_melody, pcs, pitch_units)
    if pred.shape != true.shape:
        raise ValueError(f"note_on_f1: predicted and true steps differ: {pred.shape[0]} and {true.shape[0]}")
    tp, n_pred, n_true = int((pred & true).sum()), int(pred.sum()), int(true.sum())
    if n_pred == 0 and n_true == 0:
        return {"precision": 1.0, "recall": 1.0, "f1": 1.0}
    precision = tp / n_pred if n_pred else 0.0
    recall = tp / n_true if n_true else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return {"precision": precision, "recall": recall, "f1": f1}


def bar_chords(chords: np.ndarray, steps_per_bar: int) -> np.ndarray:
    """The majority chord id of each bar (ties: the one sounding first in the bar; a last
    incomplete bar counts over its steps). Shape: ``(T,)`` -> ``(ceil(T / steps_per_bar),)``."""
    c = np.asarray(chords, dtype=np.int64)
    if steps_per_bar < 1:
        raise ValueError(f"steps_per_bar={steps_per_bar}: must be >= 1")
    out = []
    for b in range(0, len(c), steps_per_bar):
        ids, first, counts = np.unique(c[b : b + steps_per_bar], return_index=True, return_counts=True)
        best = np.flatnonzero(counts == counts.max())
        out.append(ids[best[np.argmin(first[best])]])
    return np.array(out, dtype=np.int64)


def form_adherence(chords: np.ndarray, steps_per_bar: int, roots: np.ndarray,
                   form: Sequence[frozenset[int]] = FORM) -> float:  # fmt: skip
    """The share of bars whose majority chord's root, relative to the tonic (the root of the
    first bar's majority chord), is one ``form[bar % len(form)]`` allows. NaN for an empty
    piece. Shape: ``chords (T,)``, ``roots (K,)``."""
    bars = bar_chords(chords, steps_per_bar)
    if not len(bars):
        return float("nan")
    r = np.asarray(roots, dtype=np.int64)[bars]
    rel = (r - r[0]) % 12
    return float(np.mean([int(d) in form[b % len(form)] for b, d in enumerate(rel)]))


def rhythm_stats(pieces: Iterable[PieceLike], pitch_units: int) -> dict[str, Any]:
    """Rests, held notes and note lengths of a set of pieces (seed 003's "no rests, quarter
    notes only"): ``steps``, ``notes``, ``rest_share`` and ``hold_share`` (of all steps),
    ``note_steps`` (``{length in steps: share of notes}``), ``mean_note_steps`` and
    ``distinct_lengths``. A note is a pitch id with the HOLD ids (``pitch_units + 1``)
    after it; a HOLD after a REST (``pitch_units``) lengthens the rest."""
    rest, hold = pitch_units, pitch_units + 1
    lengths: list[int] = []
    steps = rests = holds = 0
    for piece in pieces:
        m = np.asarray(piece.melody, dtype=np.int64)
        steps += len(m)
        rests += int((m == rest).sum())
        holds += int((m == hold).sum())
        current = 0  # the length of the note sounding (0: none)
        for x in m:
            if x < pitch_units:
                if current:
                    lengths.append(current)
                current = 1
            elif x == hold and current:
                current += 1
            elif x == rest:
                if current:
                    lengths.append(current)
                current = 0
        if current:
            lengths.append(current)
    values, counts = np.unique(np.array(lengths, dtype=np.int64), return_counts=True)
    notes = len(lengths)
    return {"steps": steps, "notes": notes,
            "rest_share": rests / steps if steps else float("nan"),
            "hold_share": holds / steps if steps else float("nan"),
            "note_steps": {int(v): int(c) / notes for v, c in zip(values, counts, strict=True)},
            "mean_note_steps": float(np.mean(lengths)) if notes else float("nan"),
            "distinct_lengths": len(values)}  # fmt: skip


# ---------------------------------------------------------------- novelty

_BASE = np.uint64(0x100000001B3)  # FNV-64 prime (odd: invertible mod 2^64)
_MIX = np.uint64(0x9E3779B97F4A7C15)


def _prefix(tokens: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Prefix hashes ``H`` (``(T+1,)``) and powers ``P = B^i`` (``(T,)``) mod 2^64: the hash of
    the window ``[i, i+L)`` is ``(H[i+L] - H[i]) * P[i]``, which depends on its tokens only."""
    x = (np.asarray(tokens, dtype=np.int64).astype(np.uint64) + np.uint64(1)) * _MIX
    x ^= x >> np.uint64(29)
    inv = np.uint64(pow(int(_BASE), -1, 2**64))
    with np.errstate(over="ignore"):
        powers = np.cumprod(np.concatenate([[np.uint64(1)], np.full(max(len(x) - 1, 0), _BASE)]), dtype=np.uint64)
        inverse = np.cumprod(np.concatenate([[np.uint64(1)], np.full(max(len(x) - 1, 0), inv)]), dtype=np.uint64)
        h = np.concatenate([[np.uint64(0)], np.cumsum(x * inverse[: len(x)], dtype=np.uint64)])
    return h, powers[: len(x)]


def _windows(h: np.ndarray, powers: np.ndarray, starts: np.ndarray, length: int) -> np.ndarray:
    with np.errstate(over="ignore"):
        return (h[starts + length] - h[starts]) * powers[starts]


class WindowIndex:
    """Hashed windows of a set of token sequences, to find the longest run a query shares
    with any of them (binary search on the length; 64-bit polynomial hashes, so a false
    match needs a hash collision, about ``windows / 2^64`` likely).

    Shape: ``others`` a list of int ``(T_i,)`` arrays.
    """

    def __init__(self, others: Sequence[np.ndarray]):
        lens = np.array([len(o) for o in others], dtype=np.int64)
        self.lengths = lens
        self.offsets = np.concatenate([[0], np.cumsum(lens)])
        tokens = np.concatenate([np.asarray(o, dtype=np.int64) for o in others]) if len(others) else np.zeros(0, np.int64)
        self.h, self.powers = _prefix(tokens)
        self.owner = np.repeat(np.arange(len(others)), lens)
        self._cache: dict[int, tuple[np.ndarray, np.ndarray, np.ndarray]] = {}

    def _table(self, length: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Sorted distinct window hashes of ``length``, one owner of each and how many own it."""
        if length not in self._cache:
            starts = np.flatnonzero(self.offsets[self.owner + 1] - np.arange(len(self.owner)) >= length)
            h, o = _windows(self.h, self.powers, starts, length), self.owner[starts]
            order = np.lexsort((o, h))
            h, o = h[order], o[order]
            pair = np.ones(len(h), dtype=bool)  # first of each distinct (hash, owner)
            pair[1:] = (h[1:] != h[:-1]) | (o[1:] != o[:-1])
            h, o = h[pair], o[pair]
            new = np.ones(len(h), dtype=bool)  # first of each distinct hash
            new[1:] = h[1:] != h[:-1]
            first = np.flatnonzero(new)
            self._cache[length] = (h[first], o[first], np.diff(np.append(first, len(h))))
        return self._cache[length]

    def shares(self, tokens: np.ndarray, length: int, exclude: int | None = None) -> bool:
        """Whether some window of ``length`` of ``tokens`` occurs in a sequence other than
        number ``exclude``."""
        h, powers = _prefix(tokens)
        q = _windows(h, powers, np.arange(len(tokens) - length + 1), length)
        hashes, owner, owners = self._table(length)
        if not len(hashes) or not len(q):
            return False
        i = np.minimum(np.searchsorted(hashes, q), len(hashes) - 1)
        hit = hashes[i] == q
        if exclude is not None:
            hit &= (owners[i] > 1) | (owner[i] != exclude)
        return bool(hit.any())

    def longest(self, tokens: np.ndarray, exclude: int | None = None) -> int:
        """Length in steps of the longest run of ``tokens`` found in the sequences (leaving
        out sequence number ``exclude``). Shape: ``(T,)``."""
        lo, hi = 0, min(len(tokens), int(self.lengths.max()) if len(self.lengths) else 0)
        while lo < hi:
            mid = (lo + hi + 1) // 2
            if self.shares(tokens, mid, exclude):
                lo = mid
            else:
                hi = mid - 1
        return lo


def longest_shared(tokens: np.ndarray, others: Sequence[np.ndarray]) -> int:
    """Length in steps of the longest contiguous run of ``tokens`` that occurs in any of
    ``others`` (0: none). Shape: ``(T,)`` and a list of ``(T_i,)``."""
    return WindowIndex(others).longest(tokens)


def piece_tokens(piece: PieceLike, melody_units: int) -> np.ndarray:
    """One token per step, ``chord_id * M + melody_id``. Shape: ``(T,)``."""
    c, m = _arrays(piece)
    _check_ids(m, melody_units, "melody")
    return c * melody_units + m


def _summary(values: Sequence[int], steps_per_bar: int) -> dict[str, float]:
    v = np.asarray(values, dtype=np.float64)
    if not v.size:
        return {"median": float("nan"), "max": float("nan"), "median_bars": float("nan"), "max_bars": float("nan")}
    return {"median": float(np.median(v)), "max": float(v.max()),
            "median_bars": float(np.median(v)) / steps_per_bar, "max_bars": float(v.max()) / steps_per_bar}  # fmt: skip


def novelty(composed: Sequence[PieceLike], training: Sequence[PieceLike], melody_units: int) -> dict[str, Any]:
    """How much composed pieces copy the training set, against how much training pieces
    share among themselves.

    ``composed``: per composed piece, the longest run of steps (tokens of
    :func:`piece_tokens`) it shares with any training piece; ``training``: per training
    piece, the same against the other training pieces (leave-one-out). ``composed_summary``
    and ``training_summary``: median and max in steps and in bars (``steps_per_bar`` of
    the first training piece).
    """
    if not training:
        raise ValueError("novelty needs at least one training piece")
    index = WindowIndex([piece_tokens(p, melody_units) for p in training])
    ours = [index.longest(piece_tokens(p, melody_units)) for p in composed]
    theirs = [index.longest(piece_tokens(p, melody_units), exclude=i) for i, p in enumerate(training)]
    spb = int(training[0].steps_per_bar)
    return {"composed": ours, "training": theirs, "steps_per_bar": spb,
            "composed_summary": _summary(ours, spb), "training_summary": _summary(theirs, spb)}  # fmt: skip
