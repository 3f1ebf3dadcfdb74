"""The compose report: loss curves, the objective measures against the baselines, the pieces.

:func:`write_compose_report` writes ``report.html`` (with :mod:`sepcore.report.html`) from
what ``ray_jobs/compose.py`` measured; :func:`compose_sections` builds its sections (what
tests read). Each measure is optional: a table is left out when its argument is None.
Measures come from :mod:`sepcore.compose.measures`; "model" is the composer, "repeat
last" and "n-gram" its baselines (the names are the caller's dictionary keys).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from sepcore.report import html as R

REPORT = "report.html"
LOSS_PNG = "loss.png"
#: Note lengths (in grid steps) grouped into the rhythm table's columns: ``(label, least, most)``.
RHYTHM_BUCKETS = (("1", 1, 1), ("2", 2, 2), ("3", 3, 3), ("4", 4, 4), ("5-7", 5, 7), ("8+", 8, 10**9))


def _figures_section(figures: Mapping[str, Any]) -> R.Section:
    rows = [[k, v] for k, v in figures.items()]
    return R.Section("Summary", [R.Table("figures", ["figure", "value"], rows, digits=3)])


LIKELIHOOD_NOTE = ("Each step is predicted from the steps before it (the melody also from the step's own chord). "
                   "Repeat last: the previous step again, add-eps smoothed. n-gram: the last n-1 steps, add-eps "
                   "smoothed and interpolated with shorter contexts; eps chosen on the training pieces.")  # fmt: skip
F1_NOTE = ("Micro over steps: the 12 pitch classes of the chord plus the melody pitch (rests and held notes "
           "switch nothing on).")  # fmt: skip


def _groups(table: Mapping[str, Any]) -> dict[str, Mapping[str, Any]]:
    """``{group: {predictor: measures, other keys: facts}}``; a flat ``{predictor: measures}`` is one group ""."""
    nested = any(isinstance(v, Mapping) and any(isinstance(x, Mapping) for x in v.values()) for v in table.values())
    return dict(table) if nested else {"": table}


def _measure_tables(table: Mapping[str, Any], title: str, keys: Sequence[str], columns: Sequence[str],
                    note: str) -> list[R.Table]:  # fmt: skip
    """One table per group of ``table`` (see :func:`_groups`): a row per predictor with the
    values of ``keys``; a group's other entries (e.g. ``pieces``, ``steps``) go to the note."""
    out = []
    for group, rows in _groups(table).items():
        body = [[name, *(d.get(k) for k in keys)] for name, d in rows.items() if isinstance(d, Mapping)]
        facts = ", ".join(f"{k}: {v}" for k, v in rows.items() if not isinstance(v, Mapping))
        out.append(R.Table(f"{title}{f', {group}' if group else ''}", ["predictor", *columns], body, digits=3,
                           note=f"{facts + '. ' if facts else ''}{note}"))  # fmt: skip
    return out


def _likelihood_tables(likelihood: Mapping[str, Any]) -> list[R.Table]:
    return _measure_tables(likelihood, "held-out next-step negative log-likelihood (nats per step, lower is better)",
                           ("chord", "melody", "total"), ("chord", "melody", "total"), LIKELIHOOD_NOTE)  # fmt: skip


def _f1_tables(f1: Mapping[str, Any]) -> list[R.Table]:
    return _measure_tables(f1, "note-on F1 of the most likely next step (held out)", ("precision", "recall", "f1"),
                           ("precision", "recall", "F1"), F1_NOTE)  # fmt: skip


def _form_table(form: Mapping[str, Any]) -> R.Table:
    rows = [[name, share] for name, share in form.items() if share is None or isinstance(share, float)]
    return R.Table("12-bar blues form adherence", ["pieces", "share of bars that fit"], rows, digits=3,
                   note="Each bar's majority chord root, relative to the first bar's, against the bar's "
                        "allowed degrees (I, IV in bar 2, IV, I, V, IV or V in bar 10, I, I or V in bar 12). "
                        "A dash: no such pieces.")  # fmt: skip


def _novelty_table(novelty: Mapping[str, Any]) -> R.Table:
    rows = []
    for key, label in (("composed_summary", "composed vs training"),
                       ("training_summary", "training vs other training (leave one out)")):  # fmt: skip
        s = novelty[key]
        rows.append([label, s["median"], s["max"], s["median_bars"], s["max_bars"]])
    return R.Table("novelty: longest run of steps shared with the nearest training piece",
                   ["pieces", "median (steps)", "max (steps)", "median (bars)", "max (bars)"], rows, digits=1,
                   note="A step matches when both its chord and its melody unit do. Composed runs no longer "
                        "than the training pieces' own are no sign of copying.")  # fmt: skip


def _rhythm_table(rhythm: Mapping[str, Mapping[str, Any]]) -> R.Table:
    rows = []
    for name, d in rhythm.items():
        share = {int(k): float(v) for k, v in d["note_steps"].items()}
        cols = [sum((v for k, v in share.items() if lo <= k <= hi), 0.0) for _, lo, hi in RHYTHM_BUCKETS]
        rows.append([name, d["rest_share"], d["hold_share"], d["mean_note_steps"], d["distinct_lengths"], *cols])
    return R.Table("rhythm: rests, held notes and note lengths",
                   ["pieces", "rest share", "hold share", "mean note (steps)", "lengths",
                    *(f"{label} steps" for label, _, _ in RHYTHM_BUCKETS)], rows, digits=3,
                   note="Shares of steps (rest, hold) and of notes (by length in grid steps). Seed 003's "
                        "composer has no rests and quarter notes only: rest share 0 and one length.")  # fmt: skip


def _piece_items(piece: Mapping[str, Any]) -> list[Any]:
    """A piece's piano roll and, when given, its audio player (see write_compose_report)."""
    name = piece["name"]
    items: list[Any] = []
    if "piano_roll" in piece:
        items.append(R.Image(f"{name}.png", piece["piano_roll"], title=piece.get("title", name),
                             caption=piece.get("caption", "")))  # fmt: skip
    audio_name = piece.get("audio_name")
    if audio_name:
        items.append(R.AudioGroup(f"{piece.get('title', name)}: rendered", [R.AudioClip(audio_name, "mix", piece.get("audio"))]))
    return items


def compose_sections(figures: Mapping[str, Any], pieces: Sequence[Mapping[str, Any]],
                     history: Sequence[Mapping[str, Any]], likelihood: Mapping[str, Any] | None = None,
                     f1: Mapping[str, Any] | None = None, form: Mapping[str, Any] | None = None,
                     novelty: Mapping[str, Any] | None = None, rhythm: Mapping[str, Mapping[str, Any]] | None = None,
                     initial_val_loss: float | None = None) -> list[R.Section]:  # fmt: skip
    """The report's sections (arguments as :func:`write_compose_report`)."""
    sections = [_figures_section(figures)] if figures else []
    if history:
        png = R.loss_curve_png(history, initial_val_loss)
        sections.append(R.Section("Training", [R.Image(LOSS_PNG, png, title="loss per epoch")]))
    measures: list[Any] = []
    if likelihood:
        measures += _likelihood_tables(likelihood)
    if f1:
        measures += _f1_tables(f1)
    if form:
        measures.append(_form_table(form))
    if novelty:
        measures.append(_novelty_table(novelty))
    if rhythm:
        measures.append(_rhythm_table(rhythm))
    if measures:
        sections.append(R.Section("Objective measures", measures))
    items = [item for piece in pieces for item in _piece_items(piece)]
    if items:
        sections.append(R.Section("Composed pieces", items))
    return sections


def write_compose_report(output: str, figures: Mapping[str, Any], pieces: Sequence[Mapping[str, Any]],
                         history: Sequence[Mapping[str, Any]], *,
                         likelihood: Mapping[str, Any] | None = None,
                         f1: Mapping[str, Any] | None = None, form: Mapping[str, Any] | None = None,
                         novelty: Mapping[str, Any] | None = None, rhythm: Mapping[str, Mapping[str, Any]] | None = None,
                         initial_val_loss: float | None = None, title: str = "compose: LSTM chords and melody") -> str:  # fmt: skip
    """Write ``<output>/report.html`` and its files under ``<output>/report_files/``; its URI.

    * ``figures``: headline numbers, ``{name: value}``, shown as the summary table.
    * ``pieces``: per composed piece a dict with ``name`` (plain: letters, digits, ``.``,
      ``_``, ``-``), optional ``title`` and ``caption``, ``piano_roll`` (PNG bytes, written
      as ``<name>.png``; None: already there; key absent: no image), ``audio_name`` (the
      rendered mix's file name, e.g. ``piece_000.flac``; absent: no player) and ``audio``
      (its bytes; None: already written there).
    * ``history``: the training epochs (``metrics.jsonl`` records: ``epoch``,
      ``train_loss``, ``val_loss``), drawn as loss curves; empty: no curves.
    * ``likelihood``: ``{predictor: {"chord", "melody", "total"}}`` nats per step
      (:func:`sepcore.compose.measures.nll_per_step`), e.g. composer, repeat last, n-gram;
      or such dictionaries per group of pieces, ``{group: {predictor: {...}, fact: value}}``
      (one table per group; the facts, e.g. ``pieces`` and ``steps``, in its note).
    * ``f1``: ``{predictor: {"precision", "recall", "f1"}}``
      (:func:`sepcore.compose.measures.note_on_f1`), or per group as ``likelihood``.
    * ``form``: ``{pieces: share or None}`` (mean
      :func:`sepcore.compose.measures.form_adherence`; None: no such pieces), e.g. composed,
      training, n-gram samples; entries of other types (e.g. ``steps_per_bar``) are left out.
    * ``novelty``: :func:`sepcore.compose.measures.novelty`'s dictionary.
    * ``rhythm``: ``{pieces: rhythm_stats}`` (:func:`sepcore.compose.measures.rhythm_stats`).

    Raises :class:`sepcore.report.html.ReportError` for a bad file name or a referenced
    file that was not written.
    """
    sections = compose_sections(figures, pieces, history, likelihood, f1, form, novelty, rhythm, initial_val_loss)
    return R.write_report(output, sections, title=title, filename=REPORT)
