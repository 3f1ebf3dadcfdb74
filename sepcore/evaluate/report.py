"""The evaluate job's report: tables, box plots, examples, activation figures (seed 001/002),
and a binary-mask model's α sweep (seed 003: scores against α, mean SAR against mean SIR).

:func:`build_report` turns a metrics document (:mod:`sepcore.evaluate.document`) and the
per-track results into :class:`sepcore.report.html.Section` s; the ``write_*`` functions
save a track's example clips and figures under ``<output>/report_files/`` as its task
ends, so that only their names travel back to the driver.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from sepcore.data.classes import CLASSES
from sepcore.evaluate.compare import DEMUCS_OTHER
from sepcore.evaluate.config import method_order
from sepcore.evaluate.document import SOURCES, from_json_number
from sepcore.evaluate.tracks import loudest_span, safe_name
from sepcore.io import storage
from sepcore.report import html as R

#: What the ``hpss`` row is, added to a median table's note where it is scored.
HPSS_NOTE = ("; hpss: median-filtering harmonic-percussive separation of the mixture with the evaluation's "
             "STFT, its percussive part as the drums (a baseline without training)")
#: File names of the sequence test's figures, in the report's order.
SEQUENCE_IMAGES = ("sequence_activations.png", "noise_matrix.png", "leakage_matrix.png")


def write_example(output: str, track_id: str, signals: Mapping[str, Any], sample_rate: int, target: str,
                  rep: Mapping[str, Any]) -> dict[str, Any]:  # fmt: skip
    """Spectrograms and audio clips of one track's loudest stretch of the target.

    ``signals``: the target's pair and estimates (:func:`sepcore.evaluate.tracks.evaluate_separation`);
    ``rep``: the report section (``audio_seconds``, ``audio_format``).
    """
    from sepcore.io.audio import Audio, encode_bytes

    sr = sample_rate
    start, _ = loudest_span(signals["instrument"], sr, rep["audio_seconds"])
    stop = start + int(round(rep["audio_seconds"] * sr))
    est = signals["estimates"]
    clips = {"mixture": est["mixture"]["instrument"], f"reference {target}": signals["instrument"],
             f"model {target}": est["model"]["instrument"], "model rest": est["model"]["rest"],
             f"IRM {target}": est["irm"]["instrument"]}  # fmt: skip
    base, assets = safe_name(track_id), storage.join(output, R.ASSETS)
    names = []
    for label, audio in clips.items():
        name = f"{base}_{safe_name(label.replace(' ', '_'))}.{rep['audio_format']}"
        clip = np.clip(audio[:, start:stop], -1.0, 1.0)
        storage.write_bytes(
            storage.join(assets, name), encode_bytes(Audio(clip, sr), rep["audio_format"])
        )
        names.append((name, label))
    spec_name = f"{base}_spectrograms.png"
    shown = {k: v[:, start:stop] for k, v in clips.items() if k != "model rest"}
    png = R.spectrograms_png(shown, sr, title=f"{track_id}, {start / sr:.1f}-{stop / sr:.1f} s")
    storage.write_bytes(storage.join(assets, spec_name), png)
    return {"track_id": track_id, "spectrogram": spec_name, "clips": names, "start_s": start / sr}


def write_activation_plot(output: str, track_id: str, res: Mapping[str, Any], sample_rate: int) -> str:
    """A track's predicted and reference activations as a PNG; returns its file name."""
    name = f"{safe_name(track_id)}_activations.png"
    png = R.activations_png(res["pred"], res["ref"], CLASSES, res["hop"] / sample_rate, f"activations: {track_id}")
    storage.write_bytes(storage.join(output, R.ASSETS, name), png)
    return name


def write_sequence_images(output: str, seq: Mapping[str, Any], playing: Sequence[str], sample_rate: int) -> list[str]:
    """The sequence test's activations, noise and leakage matrices as PNGs; their file names."""
    pngs = [R.activations_png(seq["pred"], seq["ref"], CLASSES, seq["hop"] / sample_rate,
                              "sequence: " + ", ".join(playing)),
            R.matrix_png(seq["noise"], CLASSES, CLASSES, "noise matrix (dB)",
                         "instrument predicted", "instrument playing"),
            R.matrix_png(seq["leakage"], CLASSES, CLASSES, "leakage matrix (dB)",
                         "instrument playing", "instrument predicted")]  # fmt: skip
    for name, png in zip(SEQUENCE_IMAGES, pngs, strict=True):
        storage.write_bytes(storage.join(output, R.ASSETS, name), png)
    return list(SEQUENCE_IMAGES)


def _num(x: Any) -> float:
    return from_json_number(x)


def _rows_note(doc: Mapping[str, Any]) -> str:
    """What the separators' rows are: ``model`` (the checkpoint), then the compared ones."""
    parts = {"model": "model: the checkpoint"}
    for sep in doc.get("separators") or []:
        if sep["kind"] == "demucs" or sep["name"] != "model":
            what = "Demucs model" if sep["kind"] == "demucs" else "checkpoint"
            parts[sep["name"]] = f"{sep['name']}: the {what} {sep['checkpoint']}"
    for name in doc.get("routed") or {}:
        parts[name] = f"{name}: routed, each track separated by its group's model (section Routed rows)"
    return "; ".join(parts.values())


def routed_tables(doc: Mapping[str, Any]) -> list[R.Table]:
    """One table per routed row: each group's styles, model and the songs sent to it."""
    tables = []
    for name, spec in (doc.get("routed") or {}).items():
        rows = [[group, ", ".join(styles), spec["models"][group]["checkpoint"], spec["songs"].get(group, 0)]
                for group, styles in spec["groups"].items()]  # fmt: skip
        tables.append(R.Table(f"{name}: songs per group", ["group", "styles", "model", "songs"], rows,
                              note=f"the router {spec['router']} votes over each track's snippets for a style; the "
                              "group holding it separates the track. Scored for "
                              f"{', '.join(spec['classes'])}."))  # fmt: skip
    return tables


def _median_tables(separation: dict[str, Any], doc: Mapping[str, Any] | None = None) -> list[R.Table]:
    rows_note = _rows_note(doc or {})
    tables = []
    for cls, sec in separation.items():
        rows = []
        for method in sec["methods"]:
            for src in SOURCES:
                m = sec["median"][method][src]
                rows.append([f"{method}: {cls if src == 'instrument' else 'rest'}",
                             *(_num(m[k]) for k in ("sdr", "sir", "sar")), m["count"]])  # fmt: skip
        tables.append(
            R.Table(
                f"{cls}: median over tracks (dB)",
                ["", "SDR", "SIR", "SAR", "tracks"],
                rows,
                note=rows_note + (HPSS_NOTE if "hpss" in sec["methods"] else "") + "; irm / ibm: oracle ideal "
                "ratio / binary masks with the evaluation's STFT (upper bounds); mixture: the mixture as the "
                "estimate (lower bound).",
            )
        )
    return tables


def _class_table(separation: dict[str, Any]) -> R.Table:
    """One row per class: the instrument's median SDR / SIR / SAR of each method, and model / IRM SDR."""
    methods = method_order(m for sec in separation.values() for m in sec["methods"])
    cols = ["class"] + [f"{m} {k.upper()}" for m in methods for k in ("sdr", "sir", "sar")] + ["model / IRM SDR",
                                                                                                 "tracks"]  # fmt: skip
    rows = []
    for cls, sec in separation.items():
        med = sec["median"]
        cells = [_num(med[m]["instrument"][k]) if m in med else float("nan") for m in methods
                 for k in ("sdr", "sir", "sar")]  # fmt: skip
        rows.append([cls, *cells, _num(sec.get("sdr_ratio")), len(sec["tracks"])])
    return R.Table("per class: the class's median over tracks (dB)", cols, rows,
                   note="each class scored against [class, mix - class]; the model's estimate is its stem "
                   "and the mixture minus it. model / IRM SDR: the share of the oracle bound reached.")  # fmt: skip


def _track_tables(separation: dict[str, Any]) -> list[R.Table]:
    tables = []
    for cls, sec in separation.items():
        cols = ["track", "seconds"] + [
            f"{m} {k.upper()}" for m in sec["methods"] for k in ("sdr", "sir", "sar")
        ]
        rows = [[t["track_id"], t["seconds"], *(_num(t["scores"][m]["instrument"][k]) for m in sec["methods"]
                                                for k in ("sdr", "sir", "sar"))] for t in sec["tracks"]]  # fmt: skip
        tables.append(R.Table(f"{cls}: per track, instrument (dB)", cols, rows))
    return tables


def _box_plots(separation: dict[str, Any]) -> list[R.Image]:
    images = []
    for src in SOURCES:
        groups = {cls: {m: [_num(t["scores"][m][src]["sdr"]) for t in sec["tracks"]] for m in sec["methods"]}
                  for cls, sec in separation.items()}  # fmt: skip
        images.append(R.Image(f"box_sdr_{src}.png", R.box_plot_png(groups, "SDR (dB)", f"SDR of the {src} per track"),
                              title=f"SDR of the {src}, per class and method"))  # fmt: skip
    return images


def _training_section(meta: dict[str, Any]) -> R.Section | None:
    history = meta.get("history")
    if not history:
        return None
    last = history[-1]
    rows = [[k, v] for k, v in last.items() if isinstance(v, (int, float))]
    start = (meta.get("init") or {}).get("val_loss")  # the frame DNN's initial weights: the curve's epoch 0
    return R.Section("Training", [R.Image("loss_curve.png", R.loss_curve_png(history, start), title="loss curves"),
                                  R.Table(f"last epoch ({len(history)} in all)", ["metric", "value"], rows,
                                          digits=4)])  # fmt: skip


def _summary_text(doc: dict[str, Any]) -> R.Text:
    ev, tm = doc["evaluation"], doc["timing"]
    mode = (
        f"full tracks (segments of at most {ev['segment_seconds']:g} s pooled)"
        if ev["mode"] == "full"
        else f"windows of {ev['window_seconds']:g} s every {ev['hop_seconds']:g} s, median over windows"
    )
    per_min = tm["eval_seconds_per_audio_minute"]
    stems = (f"Multi-stem model: stems {', '.join(doc['stems'])}, {doc.get('wiener_iterations', 0)} Wiener "
             "iteration(s), separated once per track.\n\n" if doc.get("stems") else "")  # fmt: skip
    if doc.get("stems") and doc.get("wiener_iterations") is None:
        stems = f"Demucs model: stems {', '.join(doc['stems'])}, separated once per track.\n\n"
    return R.Text(f"{stems}{layout_text(doc)}Checkpoint {doc['checkpoint']}, data {doc['data']}, split '{doc['split']}': "
                  f"{doc['tracks_evaluated']} tracks, {tm['audio_seconds']:.1f} s of audio, "
                  f"{len(doc['failed'])} failed.\n\nBSS Eval ({ev['backend']}) on {mode}; "
                  f"{per_min if per_min is None else round(per_min, 2)} s of evaluation per minute of audio "
                  f"scored; wall time {tm['wall_seconds']:.1f} s.")  # fmt: skip


def layout_text(doc: Mapping[str, Any]) -> str:
    """Where the scores are computed (rate, channels) and how each separator's estimates got
    there; empty for a document without ``channels`` (activation models)."""
    if doc.get("channels") is None:
        return ""
    sr, ch = int(doc["sample_rate"]), int(doc["channels"])
    lines = [f"Scores are computed at {sr} Hz, {'mono' if ch == 1 else f'{ch} channels'}, for every row."]
    for sep in doc.get("separators") or []:
        done = []
        if sep["sample_rate"] != sr:
            done.append(f"resampled from {sep['sample_rate']} Hz to {sr} Hz (soxr)")
        if sep["channels"] != ch:
            done.append(f"downmixed from {sep['channels']} channels to mono (channel mean)" if ch == 1
                        else f"laid out from {sep['channels']} to {ch} channels")  # fmt: skip
        what = "Demucs model" if sep["kind"] == "demucs" else "checkpoint"
        how = f"its estimates were {' and '.join(done)}" if done else "its estimates are at that rate"
        classes = ", ".join(f"{c} (stem {s})" for c, s in sep["classes"].items())
        lines.append(f"Row {sep['name']}: the {what} {sep['checkpoint']}, which separates the mixture made at "
                     f"{sep['sample_rate']} Hz, {sep['channels']} channel(s); {how}; scored for {classes or 'no class'}.")  # fmt: skip
    if any(k.startswith(DEMUCS_OTHER) for k in doc.get("separation") or {}):
        lines.append(f"A class {DEMUCS_OTHER}-<classes> scores a Demucs model's other stem against the sum of "
                     "every usable stem of any class but those listed (its other sources).")  # fmt: skip
    return "\n\n".join(lines) + "\n\n"


# ---------------------------------------------------------------- the α sweep (seed 003)

#: Mean SAR (dB) above which a row is drawn at the top of the SAR-vs-SIR plot (the mixture's, about 150).
SAR_CAP = 80.0
#: Seed 003's colours for the scores against α: SDR green, SIR red, SAR blue.
ALPHA_COLOURS = {"sdr": "tab:green", "sir": "tab:red", "sar": "tab:blue"}


def alpha_figure(by_alpha: Mapping[str, Mapping[str, Any]], model_alpha: float, title: str = "") -> Any:
    """Median SDR, SIR and SAR against α, one panel per source (seed 003's figure).

    ``by_alpha``: ``{alpha_key: {source: {"sdr", "sir", "sar", ...}}}`` (metrics.json's
    ``alpha.per_class.<class>``); a dashed line marks the model's own α. A score above
    :data:`SAR_CAP` (the rest's SAR when it is the whole mixture) is drawn at the top with its value.
    """
    alphas = [float(k) for k in by_alpha]
    fig = R.new_figure(10.0, 4.0)
    axes = fig.subplots(1, len(SOURCES), sharex=True)
    for ax, src in zip(axes, SOURCES, strict=True):
        series = {m: [_num(v[src][m]) for v in by_alpha.values()] for m in ALPHA_COLOURS}
        top = max([x for ys in series.values() for x in ys if x <= SAR_CAP], default=SAR_CAP) + 3
        for m, colour in ALPHA_COLOURS.items():
            ax.plot(alphas, [top if x > SAR_CAP else x for x in series[m]], "o-", color=colour, label=m.upper())
            for a, x in zip(alphas, series[m], strict=True):
                if x > SAR_CAP:  # the whole mixture as the rest: numerically no artifacts
                    ax.annotate(f"{x:.0f} dB", (a, top), textcoords="offset points", xytext=(3, -10),
                                fontsize="x-small", color=colour)  # fmt: skip
        ax.axvline(model_alpha, color="grey", linestyle="--", linewidth=1, label=f"model α = {model_alpha:g}")
        ax.set_xlabel("α (confidence threshold)")
        ax.set_ylabel("median over tracks (dB)")
        ax.set_title(f"{title}: {'target' if src == 'instrument' else 'rest'}")
        ax.grid(alpha=0.3)
        ax.legend(fontsize="small")
    fig.tight_layout()
    return fig


def row_means(sec: Mapping[str, Any], src: str) -> dict[str, tuple[float, float]]:
    """``{method: (mean SIR, mean SAR)}`` of a class's rows over its tracks (finite values)."""
    from sepcore.evaluate.scoring import finite_mean

    out = {}
    for m in sec["methods"]:
        scores = [t["scores"][m][src] for t in sec["tracks"] if m in t["scores"]]
        out[m] = (finite_mean([_num(x["sir"]) for x in scores]), finite_mean([_num(x["sar"]) for x in scores]))
    return out


def sar_sir_figure(by_alpha: Mapping[str, Mapping[str, Any]], rows: Mapping[str, Mapping[str, tuple[float, float]]],
                   title: str = "") -> Any:  # fmt: skip
    """Mean SAR against mean SIR: the model's α curve beside the other rows (seed 003's
    like-to-like comparison), one panel per source.

    ``by_alpha`` as :func:`alpha_figure`; ``rows``: ``{source: {method: (mean SIR, mean
    SAR)}}`` (:func:`row_means`), one labelled point each; a row whose mean SAR is above
    :data:`SAR_CAP` (the mixture; the rest at an α that leaves it the whole mixture) is drawn
    at the top, its SAR in its label.
    """
    fig = R.new_figure(10.0, 4.5)
    axes = fig.subplots(1, len(SOURCES))
    colours = R.colormap("tab10")
    for ax, src in zip(axes, SOURCES, strict=True):
        sir = [_num(v[src]["sir_mean"]) for v in by_alpha.values()]
        sar = [_num(v[src]["sar_mean"]) for v in by_alpha.values()]
        top = max([v for v in (*sar, *(y for _, y in rows.get(src, {}).values())) if v <= SAR_CAP], default=SAR_CAP)
        shown = [top + 5 if v > SAR_CAP else v for v in sar]
        ax.plot(sir, shown, "o-", color="black", label="model at each α")
        for key, x, y, v in zip(by_alpha, sir, shown, sar, strict=True):
            text = key if v <= SAR_CAP else f"{key} (SAR {v:.0f} dB, off the scale)"
            ax.annotate(text, (x, y), textcoords="offset points", xytext=(3, 3), fontsize="x-small")
        for k, (method, (x, y)) in enumerate(rows.get(src, {}).items()):
            if y > SAR_CAP:  # a scaled mixture has (numerically) no artifacts: drawn at the top
                ax.plot([x], [top + 5], marker="^", linestyle="none", color=colours(k),
                        label=f"{method} (SAR {y:.0f} dB, off the scale)")  # fmt: skip
            else:
                ax.plot([x], [y], marker="s", linestyle="none", color=colours(k), label=method)
        ax.set_xlabel("mean SIR (dB)")
        ax.set_ylabel("mean SAR (dB)")
        ax.set_title(f"{title}: {'target' if src == 'instrument' else 'rest'}")
        ax.grid(alpha=0.3)
        ax.legend(fontsize="x-small")
    fig.tight_layout()
    return fig


def _alpha_sections(doc: Mapping[str, Any]) -> list[R.Section]:
    """Per class of the sweep: the scores against α, SAR against SIR, and the medians' table."""
    sweep = doc["alpha"]
    out = []
    for cls, by_alpha in sweep["per_class"].items():
        sec = (doc.get("separation") or {}).get(cls)
        rows = {src: row_means(sec, src) for src in SOURCES} if sec else {}
        name = safe_name(cls)
        table = [[float(key), *(_num(v[src][k]) for src in SOURCES for k in ("sdr", "sir", "sar")),
                  v["instrument"]["count"]] for key, v in by_alpha.items()]  # fmt: skip
        out.append(R.Section(f"{cls}: confidence threshold α (seed 003)", [
            R.Text(f"The model's probabilistic mask M is computed once per track; at each α the target is where "
                   f"M > α and the rest its complement (a multi-stem model: each stem's M_k > α, bins claimed by "
                   f"several stems shared, by none given to other; the stems add up to the mixture). The model row uses "
                   f"α = {sweep['model_alpha']:g}."),
            R.Image(f"alpha_{name}.png", R.figure_png(alpha_figure(by_alpha, sweep["model_alpha"], cls)),
                    title="SDR, SIR and SAR against α", caption="medians over tracks; SDR green, SIR red, SAR blue"),
            R.Image(f"alpha_sar_vs_sir_{name}.png", R.figure_png(sar_sir_figure(by_alpha, rows, cls)),
                    title="mean SAR against mean SIR", caption="the model at each α (labelled) beside the run's "
                    "other rows (the model at its own α, compared separators, oracle masks, mixture); means over "
                    "tracks of the finite values"),
            R.Table(f"{cls}: median over tracks at each α (dB)",
                    ["α", *(f"{'target' if s == 'instrument' else 'rest'} {k.upper()}" for s in SOURCES
                            for k in ("sdr", "sir", "sar")), "tracks"], table),
        ]))  # fmt: skip
    return out


def build_report(doc: dict[str, Any], results: list[dict[str, Any]], sequence: dict[str, Any] | None,
                 meta: dict[str, Any]) -> list[R.Section]:  # fmt: skip
    """The report's sections for a finished evaluation."""
    sections = [R.Section("Summary", [_summary_text(doc)])]
    if doc["separation"]:
        sep = doc["separation"]
        if doc.get("stems") or len(doc.get("separators") or []) > 1:
            title = "Classes of the multi-stem model" if doc.get("stems") else "Classes and separators"
            sections.append(R.Section(title, [_class_table(sep)]))
        sections += [R.Section("Median scores (seed 002's tables)", _median_tables(sep, doc)),
                     *([R.Section("Routed rows", routed_tables(doc))] if doc.get("routed") else []),
                     *(_alpha_sections(doc) if doc.get("alpha") else []),
                     R.Section("Distributions", _box_plots(sep)),
                     R.Section("Per track", _track_tables(sep))]  # fmt: skip
        examples = [r["example"] for r in results if "example" in r]
        items: list[Any] = []
        for ex in examples:
            items.append(
                R.Image(ex["spectrogram"], title=f"{ex['track_id']} from {ex['start_s']:.1f} s")
            )
            items.append(
                R.AudioGroup(
                    f"{ex['track_id']}: listen", [R.AudioClip(n, label) for n, label in ex["clips"]]
                )
            )
        if items:
            sections.append(R.Section("Examples", items))
    if doc["activation"]:
        sections += _activation_sections(doc["activation"], results, sequence)
    training = _training_section(meta)
    if training is not None:
        sections.append(training)
    if doc["failed"]:
        sections.append(
            R.Section(
                "Failed",
                [
                    R.Table(
                        "failed items",
                        ["item", "error"],
                        [[f["item"], f["error"]] for f in doc["failed"]],
                    )
                ],
            )
        )
    return sections


def _activation_sections(act: dict[str, Any], results: list[dict[str, Any]],
                         sequence: dict[str, Any] | None) -> list[R.Section]:  # fmt: skip
    rows = [
        [c, _num(v["mae"]), _num(v["error_db"]), v["tracks"]] for c, v in act["per_class"].items()
    ]
    out = [R.Section("Activations per class", [R.Table(
        "median over tracks where the class plays", ["class", "mean |error|", "error (dB)", "tracks"], rows,
        note="mean |error| on the [0, 1] activation scale (60 dB range); error (dB): mean absolute amplitude "
             "deviation, cut at -60 dB.", digits=3)])]  # fmt: skip
    if sequence:
        names = sequence["images"]
        classes = act["classes"]
        noise = [
            [c, *(_num(v) for v in row)]
            for c, row in zip(classes, act["noise_matrix_db"], strict=True)
        ]
        leak = [
            [c, *(_num(v) for v in row)]
            for c, row in zip(classes, act["leakage_matrix_db"], strict=True)
        ]
        parts = ", ".join(
            f"{p['class']} ({p['track_id']} at {p['start_s']:.1f} s)" for p in act["sequence"]
        )
        out.append(R.Section("Sequence test (seed 001 §5.3-5.4)", [
            R.Text(f"Solo parts played one after another: {parts}."),
            R.Image(names[0], title="predicted and reference activations"),
            R.Image(names[1], title="noise matrix", caption="rows: instrument playing; columns: instrument "
                    "predicted; mean absolute deviation of the predicted amplitude in dB, cut at -60 dB."),
            R.Table("noise matrix (dB)", ["playing \\ predicted", *classes], noise, digits=1),
            R.Image(names[2], title="leakage matrix", caption="rows: instrument predicted; columns: instrument "
                    "playing; predicted level relative to the playing instrument's reference level, in the 60 dB range."),
            R.Table("leakage matrix (dB)", ["predicted \\ playing", *classes], leak, digits=1),
        ]))  # fmt: skip
    plots = [R.Image(r["plot"], title=r["track_id"]) for r in results if "plot" in r]
    if plots:
        out.append(R.Section("Activations of whole tracks", plots))
    return out
