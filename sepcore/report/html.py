"""Self-contained HTML reports: tables, PNG plots and audio players, written atomically.

A report is a list of :class:`Section` s, each holding :class:`Text`, :class:`Table`,
:class:`Image` and :class:`AudioGroup` items. :func:`write_report` writes every
image and audio file it is given into ``<output>/<assets>/`` and then ``report.html``
(last, so a report that exists is complete). Items whose ``data`` is None refer to
files someone else already wrote there (for example Ray tasks writing an example's
audio); they must exist, or :func:`write_report` raises :class:`ReportError` naming
them. The page has no scripts and no external resources: it reads as it is, from a
local folder or an object store's static site.

Plots come in pairs: ``X_figure`` returns the matplotlib Figure (what tests check: its
lines, boxes, images, labels) and ``X_png`` renders it to PNG bytes with
:func:`figure_png`, the one function that saves figures (tuning's and classify's plots
use it too). Pairs here: box plots, spectrograms, matrices (heat maps), activations and
the train job's loss curves (:func:`loss_curve_figure`, :func:`loss_curve_png`).

    sections = [Section("Results", [Table("Medians", ["", "SDR"], [["model", 1.2]])])]
    write_report("out/eval", sections, title="evaluation")
"""

from __future__ import annotations

import html
import io
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from sepcore.errors import SepError
from sepcore.io import storage

REPORT_FILE = "report.html"
ASSETS = "report_files"
AUDIO_TYPES = {"flac": "audio/flac", "wav": "audio/wav", "mp3": "audio/mpeg", "ogg": "audio/ogg"}


class ReportError(SepError):
    """A report refers to a file that does not exist, or an item cannot be written."""

    def __init__(self, uri: str, problem: str):
        self.uri = uri
        self.problem = problem
        super().__init__(f"{uri}: {problem}")


@dataclass(frozen=True)
class Text:
    """Paragraphs of plain text (blank lines separate paragraphs)."""

    text: str


@dataclass(frozen=True)
class Table:
    """A table; floats are shown with ``digits`` decimals, NaN and None as a dash."""

    title: str
    columns: Sequence[str]
    rows: Sequence[Sequence[Any]]
    note: str = ""
    digits: int = 2


@dataclass(frozen=True)
class Image:
    """A PNG written as ``<assets>/<name>`` (``data`` None: already there)."""

    name: str
    data: bytes | None = None
    title: str = ""
    caption: str = ""


@dataclass(frozen=True)
class AudioClip:
    """An audio file written as ``<assets>/<name>`` (``data`` None: already there)."""

    name: str
    label: str
    data: bytes | None = None


@dataclass(frozen=True)
class AudioGroup:
    """A row of audio players under one title."""

    title: str
    clips: Sequence[AudioClip]


@dataclass(frozen=True)
class Section:
    title: str
    items: Sequence[Text | Table | Image | AudioGroup] = field(default_factory=list)


# ---------------------------------------------------------------- HTML

_STYLE = """
body{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;color:#222}
h1{font-size:1.6em}h2{font-size:1.25em;border-bottom:1px solid #ccc;padding-bottom:.2em;margin-top:2em}
h3{font-size:1.05em}table{border-collapse:collapse;margin:.5em 0 1em}
th,td{border:1px solid #ccc;padding:.25em .6em;text-align:right}th{background:#f2f2f2}
td:first-child,th:first-child{text-align:left}img{max-width:100%;border:1px solid #eee}
.note,figcaption{color:#666;font-size:.9em}.clips{display:flex;flex-wrap:wrap;gap:1em}
.clip{display:flex;flex-direction:column;font-size:.9em}
"""


def format_cell(value: Any, digits: int = 2) -> str:
    """A table cell: floats rounded, NaN/None as an en dash, inf as ``inf``."""
    if value is None:
        return "\u2013"
    if isinstance(value, (float, np.floating)):
        v = float(value)
        if math.isnan(v):
            return "\u2013"
        if math.isinf(v):
            return "inf" if v > 0 else "-inf"
        return f"{v:.{digits}f}"
    return str(value)


def _check_name(name: str) -> str:
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]*", name):
        raise ReportError(
            name, "file names in a report must be plain (letters, digits, '.', '_', '-')"
        )
    return name


def _table_html(t: Table) -> str:
    head = "".join(f"<th>{html.escape(str(c))}</th>" for c in t.columns)
    body = "".join(
        "<tr>" + "".join(f"<td>{html.escape(format_cell(v, t.digits))}</td>" for v in row) + "</tr>"
        for row in t.rows
    )
    note = f'<p class="note">{html.escape(t.note)}</p>' if t.note else ""
    return f"<h3>{html.escape(t.title)}</h3><table><tr>{head}</tr>{body}</table>{note}"


def _image_html(img: Image, assets: str) -> str:
    src = html.escape(f"{assets}/{_check_name(img.name)}", quote=True)
    title = f"<h3>{html.escape(img.title)}</h3>" if img.title else ""
    caption = f"<figcaption>{html.escape(img.caption)}</figcaption>" if img.caption else ""
    return f'{title}<figure><img src="{src}" alt="{html.escape(img.title or img.name, quote=True)}">{caption}</figure>'


def _audio_html(group: AudioGroup, assets: str) -> str:
    clips = []
    for clip in group.clips:
        src = html.escape(f"{assets}/{_check_name(clip.name)}", quote=True)
        kind = AUDIO_TYPES.get(clip.name.rsplit(".", 1)[-1].lower(), "audio/flac")
        clips.append(f'<div class="clip"><span>{html.escape(clip.label)}</span>'
                     f'<audio controls preload="none" src="{src}"><source src="{src}" type="{kind}">'
                     f'<a href="{src}">{html.escape(clip.name)}</a></audio></div>')  # fmt: skip
    return f'<h3>{html.escape(group.title)}</h3><div class="clips">{"".join(clips)}</div>'


def _text_html(t: Text) -> str:
    return "".join(f"<p>{html.escape(p.strip())}</p>" for p in t.text.split("\n\n") if p.strip())


def render_html(title: str, sections: Sequence[Section], assets: str = ASSETS) -> str:
    """The report page; files are referenced as ``<assets>/<name>``."""
    parts = [f"<!DOCTYPE html><html lang=\"en\"><head><meta charset=\"utf-8\"><title>{html.escape(title)}</title>"
             f"<style>{_STYLE}</style></head><body><h1>{html.escape(title)}</h1>"]  # fmt: skip
    for section in sections:
        parts.append(f"<h2>{html.escape(section.title)}</h2>")
        for item in section.items:
            if isinstance(item, Table):
                parts.append(_table_html(item))
            elif isinstance(item, Image):
                parts.append(_image_html(item, assets))
            elif isinstance(item, AudioGroup):
                parts.append(_audio_html(item, assets))
            elif isinstance(item, Text):
                parts.append(_text_html(item))
            else:
                raise TypeError(f"unknown report item {type(item).__name__}")
    parts.append("</body></html>\n")
    return "\n".join(parts)


def _files(sections: Sequence[Section]) -> list[Image | AudioClip]:
    out: list[Image | AudioClip] = []
    for section in sections:
        for item in section.items:
            if isinstance(item, Image):
                out.append(item)
            elif isinstance(item, AudioGroup):
                out.extend(item.clips)
    return out


def write_report(
    output: str,
    sections: Sequence[Section],
    title: str,
    filename: str = REPORT_FILE,
    assets: str = ASSETS,
) -> str:
    """Write the files of ``sections`` under ``<output>/<assets>/``, then the page; its URI.

    Raises :class:`ReportError` naming a referenced file that is given without data
    and does not exist. Every write is atomic; the page is written last.
    """
    output = storage.normalize_uri(output)
    for item in _files(sections):
        uri = storage.join(output, assets, _check_name(item.name))
        if item.data is not None:
            storage.write_bytes(uri, item.data)
        elif not storage.exists(uri):
            raise ReportError(uri, "the report refers to this file, but it was not written")
    page = storage.join(output, filename)
    storage.write_text(page, render_html(title, sections, assets))
    return page


def referenced_files(page: str) -> list[str]:
    """Relative ``src``/``href`` targets of a page (what must exist beside it)."""
    refs = re.findall(r'(?:src|href)="([^"]+)"', page)
    return sorted({html.unescape(r) for r in refs if not re.match(r"^[a-z][a-z0-9+.-]*:|^#|^/", r)})


def missing_files(page_uri: str) -> list[str]:
    """The files a written report refers to that do not exist (empty when all are there)."""
    folder = storage.parent(page_uri)
    page = storage.read_text(page_uri)
    return [
        ref
        for ref in referenced_files(page)
        if not storage.exists(storage.join(folder, *ref.split("/")))
    ]


# ---------------------------------------------------------------- plots
#
# Every plot is a ``*_figure`` function returning a matplotlib Figure (tests read its
# lines, images and labels) and a ``*_png`` function rendering it with figure_png.
# Figures are made with matplotlib.figure.Figure, not pyplot: no global figure list to
# leak or share between threads, and no GUI backend is ever picked.


def new_figure(width: float, height: float) -> Any:
    """An empty matplotlib Figure of ``width`` x ``height`` inches, outside pyplot."""
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height))


def colormap(name: str) -> Any:
    """A registered matplotlib colormap, e.g. ``"tab10"``."""
    import matplotlib

    return matplotlib.colormaps[name]


def figure_png(fig: Any, dpi: int = 100) -> bytes:
    """PNG bytes of a figure (``figsize`` x ``dpi`` pixels); the one place plots are saved."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi)
    return buf.getvalue()


def box_plot_figure(
    groups: Mapping[str, Mapping[str, Sequence[float]]], ylabel: str = "SDR (dB)", title: str = ""
) -> Any:
    """Box plots of values per group (e.g. class) and series (e.g. method), side by side.

    ``groups[group][series]`` are the values (NaN and inf are left out); one box per
    group and series with a finite value, centred on the group's tick. Shape: lists.
    """
    series = list(dict.fromkeys(s for g in groups.values() for s in g))
    width = 0.8 / max(len(series), 1)
    fig = new_figure(max(5.0, 1.6 * len(groups) * max(len(series), 1) / 2), 4.0)
    ax = fig.subplots()
    colours = colormap("tab10")
    for k, name in enumerate(series):
        data, pos = [], []
        for g, group in enumerate(groups.values()):
            values = np.asarray(group.get(name, []), dtype=np.float64)
            values = values[np.isfinite(values)]
            if values.size:
                data.append(values)
                pos.append(g + (k - (len(series) - 1) / 2) * width)
        if data:
            box = ax.boxplot(
                data,
                positions=pos,
                widths=width * 0.85,
                patch_artist=True,
                manage_ticks=False,
                medianprops={"color": "black"},
            )
            for patch in box["boxes"]:
                patch.set_facecolor(colours(k))
                patch.set_alpha(0.6)
        ax.plot([], [], color=colours(k), linewidth=6, alpha=0.6, label=name)
    ax.set_xticks(range(len(groups)))
    ax.set_xticklabels(list(groups))
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.grid(axis="y", alpha=0.3)
    ax.legend(fontsize="small", ncol=min(len(series), 4))
    fig.tight_layout()
    return fig


def box_plot_png(
    groups: Mapping[str, Mapping[str, Sequence[float]]], ylabel: str = "SDR (dB)", title: str = ""
) -> bytes:
    """:func:`box_plot_figure` as PNG bytes."""
    return figure_png(box_plot_figure(groups, ylabel, title))


def spectrograms_figure(
    signals: Mapping[str, np.ndarray],
    sample_rate: int,
    n_fft: int = 2048,
    hop: int = 512,
    title: str = "",
) -> Any:
    """Log-magnitude spectrograms (dB re the loudest bin of all, floor -100 dB) of each
    signal, stacked: one panel per signal, titled with its name.

    Shape: each signal ``(channels, samples)`` (channels are averaged) or ``(samples,)``.
    """
    from sepcore.prepare.features import Stft

    stft = Stft(n_fft=n_fft, hop=hop, sample_rate=sample_rate)
    mags = {k: stft(np.atleast_2d(np.asarray(v, dtype=np.float32)).mean(axis=0, keepdims=True))[0]
            for k, v in signals.items()}  # fmt: skip
    peak = max((float(m.max()) for m in mags.values()), default=1.0) or 1.0
    fig = new_figure(10, 2.2 * len(mags))
    axes = fig.subplots(len(mags), 1, sharex=True, squeeze=False)
    for ax, (name, mag) in zip(axes[:, 0], mags.items(), strict=True):
        db = 20.0 * np.log10(np.maximum(mag / peak, 1e-5))
        extent = (0.0, mag.shape[1] * hop / sample_rate, 0.0, sample_rate / 2000.0)
        im = ax.imshow(
            db, origin="lower", aspect="auto", extent=extent, vmin=-80, vmax=0, cmap="magma"
        )
        ax.set_ylabel("kHz")
        ax.set_title(name, fontsize="medium", loc="left")
    axes[-1, 0].set_xlabel("time (s)")
    fig.colorbar(im, ax=axes[:, 0].tolist(), label="dB", fraction=0.02)
    if title:
        fig.suptitle(title)
    return fig


def spectrograms_png(
    signals: Mapping[str, np.ndarray],
    sample_rate: int,
    n_fft: int = 2048,
    hop: int = 512,
    title: str = "",
) -> bytes:
    """:func:`spectrograms_figure` as PNG bytes (80 dpi)."""
    return figure_png(spectrograms_figure(signals, sample_rate, n_fft, hop, title), dpi=80)


def matrix_figure(
    matrix: np.ndarray, rows: Sequence[str], columns: Sequence[str], title: str = "", xlabel: str = "",
    ylabel: str = "", vmin: float = -60.0, vmax: float = 0.0,
) -> Any:  # fmt: skip
    """A heatmap with the value in each cell (NaN cells blank). Shape: ``(rows, columns)``."""
    m = np.asarray(matrix, dtype=np.float64)
    fig = new_figure(1.0 + 0.75 * len(columns), 1.0 + 0.6 * len(rows))
    ax = fig.subplots()
    im = ax.imshow(np.ma.masked_invalid(m), vmin=vmin, vmax=vmax, cmap="viridis")
    for (i, j), v in np.ndenumerate(m):
        if np.isfinite(v):
            ax.text(j, i, f"{v:.0f}", ha="center", va="center", fontsize=8,
                    color="white" if v < (vmin + vmax) / 2 else "black")  # fmt: skip
    ax.set_xticks(range(len(columns)))
    ax.set_xticklabels(columns, rotation=45, ha="right")
    ax.set_yticks(range(len(rows)))
    ax.set_yticklabels(rows)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    fig.colorbar(im, ax=ax, label="dB")
    fig.tight_layout()
    return fig


def matrix_png(
    matrix: np.ndarray, rows: Sequence[str], columns: Sequence[str], title: str = "", xlabel: str = "",
    ylabel: str = "", vmin: float = -60.0, vmax: float = 0.0,
) -> bytes:  # fmt: skip
    """:func:`matrix_figure` as PNG bytes."""
    return figure_png(matrix_figure(matrix, rows, columns, title, xlabel, ylabel, vmin, vmax))


def activations_figure(
    pred: np.ndarray, ref: np.ndarray, classes: Sequence[str], frame_seconds: float, title: str = ""
) -> Any:
    """Per instrument (one panel each), reference (filled) and predicted (line) activations
    over time.

    Seed 001's figures 12-14. Shape: ``(classes, frames)`` each.
    """
    t = np.arange(pred.shape[1]) * frame_seconds
    fig = new_figure(10, 0.9 * len(classes) + 1.0)
    axes = fig.subplots(len(classes), 1, sharex=True, squeeze=False)
    for k, (ax, name) in enumerate(zip(axes[:, 0], classes, strict=True)):
        ax.fill_between(t, ref[k], color="tab:blue", alpha=0.35, linewidth=0, label="reference")
        ax.plot(t, pred[k], color="tab:red", linewidth=0.9, label="predicted")
        ax.set_ylim(0, 1.05)
        ax.set_yticks([])
        ax.set_ylabel(name, rotation=0, ha="right", va="center", fontsize="small")
    axes[0, 0].legend(loc="upper right", fontsize="x-small", ncol=2)
    axes[-1, 0].set_xlabel("time (s)")
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return fig


def activations_png(
    pred: np.ndarray, ref: np.ndarray, classes: Sequence[str], frame_seconds: float, title: str = ""
) -> bytes:
    """:func:`activations_figure` as PNG bytes."""
    return figure_png(activations_figure(pred, ref, classes, frame_seconds, title))


def _series(history: Sequence[Mapping[str, Any]], key: str) -> list[float]:
    """One value per epoch; a missing or null value is NaN (a gap in the line)."""
    return [math.nan if h.get(key) is None else float(h[key]) for h in history]


def loss_curve_figure(history: Sequence[Mapping[str, Any]], initial_val_loss: float | None = None) -> Any:
    """The train job's curves, one point per epoch of ``history`` (its ``metrics.jsonl``).

    x is the epochs trained: epoch record ``k`` (0-based) is drawn at ``k + 1``. Left panel:
    ``train_loss`` and ``val_loss``; ``initial_val_loss`` (the checkpoint's
    ``meta["init"]["val_loss"]``: the validation loss of the initial weights, frame DNN) starts
    the validation line at epoch 0. With ``val_sdr`` in any epoch, a right panel: median
    validation SDR of the model (``val_sdr``) and of the mixture as the estimate
    (``val_sdr_mixture``, the baseline a model has to beat).
    """
    epochs = [h["epoch"] + 1 for h in history]
    start = [] if initial_val_loss is None or not math.isfinite(initial_val_loss) else [float(initial_val_loss)]
    has_sdr = any("val_sdr" in h for h in history)
    fig = new_figure(10 if has_sdr else 5.5, 3.8)
    axes = fig.subplots(1, 2 if has_sdr else 1, squeeze=False)
    ax = axes[0][0]
    ax.plot(epochs, [float(h["train_loss"]) for h in history], marker="o", label="train")
    ax.plot([0] * len(start) + epochs, start + [float(h["val_loss"]) for h in history], marker="o",
            label="validation")  # fmt: skip
    ax.set_xlabel("epoch")
    ax.set_ylabel("loss")
    ax.set_title("loss")
    ax.legend()
    if has_sdr:
        ax = axes[0][1]
        ax.plot(epochs, _series(history, "val_sdr"), marker="o", label="model")
        mixture = _series(history, "val_sdr_mixture")
        ax.plot(epochs, mixture, linestyle="--", label="mixture as estimate")
        ax.set_xlabel("epoch")
        ax.set_ylabel("median SDR (dB)")
        ax.set_title("validation SDR of the target")
        ax.legend()
    fig.tight_layout()
    return fig


def loss_curve_png(history: Sequence[Mapping[str, Any]], initial_val_loss: float | None = None) -> bytes:
    """:func:`loss_curve_figure` as PNG bytes (110 dpi)."""
    return figure_png(loss_curve_figure(history, initial_val_loss), dpi=110)
