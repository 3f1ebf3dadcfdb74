"""The classify job's results: AUC and ROC per split, metrics.json, figures, the report.

``metrics.json`` holds per split and class the ROC AUC of LightGBM (and of the
activation CNN when one is compared), the positives and snippets, the thresholds, the
tracks of each split and the training facts. ``roc.png`` and ``importance.png`` lie
beside it; ``report.html`` shows them with the table of AUCs.

Style mode (``labels: style``, :mod:`sepcore.classify.style`): ``metrics.json`` holds per
split the snippet- and song-level accuracy (songs by the vote of their snippets) and both
confusion matrices (rows the true style, columns the predicted one); ``confusion.png``
draws them and ``report.html`` shows them as tables too.
"""

from __future__ import annotations

import json
from typing import Any

import numpy as np

from sepcore.classify import style as ST
from sepcore.classify.classifier import Classifier
from sepcore.classify.config import SnippetSpec
from sepcore.classify.lgbm import STYLE_MODEL, load_booster
from sepcore.classify.roc import roc_auc, roc_curve, youden_threshold
from sepcore.classify.snippets import SEED000_AUC
from sepcore.errors import SepError
from sepcore.io import storage
from sepcore.report import html as R

MODEL_DIR = "model"
METRICS = "metrics.json"
ROC_PNG = "roc.png"
IMPORTANCE_PNG = "importance.png"
CONFUSION_PNG = "confusion.png"
REPORT = "report.html"
SPLITS = ("train", "validation", "test")


def roc_by_split(frames: dict[str, Any], classes: list[str], cnn: bool) -> dict[str, Any]:
    """AUC and ROC curves per split and class (LightGBM and, with ``cnn``, the activation CNN)."""
    out: dict[str, Any] = {"auc": {}, "cnn_auc": {}, "roc": {}, "positives": {}}
    for split, df in frames.items():
        out["auc"][split], out["roc"][split], out["positives"][split] = {}, {}, {}
        out["cnn_auc"][split] = {}
        for c in classes:
            y = df[f"label_{c}"].to_numpy()
            out["positives"][split][c] = int(y.sum())
            auc = roc_auc(y, df[f"score_{c}"].to_numpy())
            out["auc"][split][c] = None if auc is None else round(auc, 4)
            if auc is not None:
                fpr, tpr, _ = roc_curve(y, df[f"score_{c}"].to_numpy())
                out["roc"][split][c] = (fpr, tpr, auc)
            if cnn:
                s = df[f"cnn_{c}"].to_numpy()
                ok = np.isfinite(s)
                cnn_auc = roc_auc(y[ok], s[ok]) if ok.any() else None
                out["cnn_auc"][split][c] = None if cnn_auc is None else round(cnn_auc, 4)
    return out


def roc_figure(roc: dict[str, dict[str, tuple]]) -> Any:
    """ROC curves of every class, one panel per split (as seed 000's figure).

    ``roc[split][class]`` is ``(fpr, tpr, auc)`` of :func:`roc_by_split`; each curve is drawn
    through its points (from (0, 0) to (1, 1)), labelled with the class and its AUC.
    """
    splits = [s for s in ("validation", "test") if s in roc]
    fig = R.new_figure(5.2 * len(splits), 4.8)
    axes = fig.subplots(1, len(splits), squeeze=False)
    for ax, split in zip(axes[0], splits, strict=True):
        for c, (fpr, tpr, auc) in roc[split].items():
            ax.plot(fpr, tpr, label=f"{c.capitalize()} AUC = {auc:.2f}")
        ax.plot([0, 1], [0, 1], linestyle="--", color="grey", linewidth=0.8)
        ax.set(xlabel="false positive rate", ylabel="true positive rate", xlim=(0, 1), ylim=(0, 1.02),
               title=f"ROC, {split} snippets")  # fmt: skip
        ax.legend(loc="lower right")
    fig.tight_layout()
    return fig


def roc_png(roc: dict[str, dict[str, tuple]]) -> bytes:
    """:func:`roc_figure` as PNG bytes."""
    return R.figure_png(roc_figure(roc), dpi=110)


def _label(name: str, centres: np.ndarray) -> str:
    """A feature name with the centre frequency of its log-mel band, if it has one."""
    if name.startswith("logmel_"):
        hz = centres[int(name.rsplit("_", 1)[1])]
        return f"{name} ({hz / 1000:.1f} kHz)" if hz >= 1000 else f"{name} ({hz:.0f} Hz)"
    return name


def importance_figure(texts: dict[str, str], spec: SnippetSpec, top: int = 12) -> Any:
    """Share of the total gain of the ``top`` features of each class's booster, one
    panel per class (``texts``: class -> booster text), the largest share at the top."""
    import librosa

    f = spec.features
    centres = librosa.mel_frequencies(f.n_mels + 2, fmin=f.fmin, fmax=min(f.fmax, f.sample_rate / 2))[1:-1]
    cols = min(3, len(texts))
    rows = -(-len(texts) // cols)
    fig = R.new_figure(4.2 * cols, 3.6 * rows)
    axes = fig.subplots(rows, cols, squeeze=False)
    for ax in axes.flat[len(texts) :]:
        ax.set_axis_off()
    for ax, (c, text) in zip(axes.flat, texts.items(), strict=False):
        booster = load_booster(text, f"{c}.txt")
        gain = booster.feature_importance("gain")
        share = gain / max(gain.sum(), 1e-12)
        order = np.argsort(share)[::-1][:top][::-1]
        ax.barh([_label(booster.feature_name()[i], centres) for i in order], share[order])
        ax.set(title=c, xlabel="share of total gain")
        ax.tick_params(axis="y", labelsize=7)
    fig.tight_layout()
    return fig


def importance_png(texts: dict[str, str], spec: SnippetSpec, top: int = 12) -> bytes:
    """:func:`importance_figure` as PNG bytes."""
    return R.figure_png(importance_figure(texts, spec, top), dpi=110)


def split_sizes(usable: dict[str, list[dict[str, Any]]], classes: list[str]) -> dict[str, dict[str, Any]]:
    """Snippets and positives per class of each split, from the done-markers."""
    return {s: {"snippets": sum(m["snippets"] for m in ms),
                "positives": {c: sum(m["positives"][c] for m in ms) for c in classes}}
            for s, ms in usable.items()}  # fmt: skip


def report_sections(metrics: dict[str, Any], roc: bytes, importance: bytes) -> list[R.Section]:
    """The report: AUC per class side by side (LightGBM, the CNN, seed 000), and the plots."""
    cnn = metrics.get("activation_cnn")
    head = ["class", "LightGBM validation", "LightGBM test"]
    head += ["activation CNN validation", "activation CNN test"] if cnn else []
    head += ["test positives / snippets", "seed 000 (Slakh)"]
    rows = []
    for c in metrics["classes"]:
        cells = [c, metrics["auc"]["validation"].get(c), metrics["auc"]["test"].get(c)]
        cells += [cnn["auc"]["validation"].get(c), cnn["auc"]["test"].get(c)] if cnn else []
        cells += [f"{metrics['positives']['test'].get(c, 0)} / {metrics['snippets'].get('test', 0)}",
                  SEED000_AUC.get(c)]  # fmt: skip
        rows.append(cells)
    note = (f"Activation CNN: {cnn['checkpoint']}, frame activations pooled ({cnn['pool']}) to the same "
            "snippets." if cnn else "No activation CNN compared (activation_checkpoint: null).")  # fmt: skip
    return [R.Section("Instrument presence on 1-second snippets: ROC AUC", [
        R.Table("ROC AUC per class", head, rows, digits=3),
        R.Text(note + "\n\nSeed 000's figures are on Slakh2100, ours on this job's data: the data differ."),
        R.Image(ROC_PNG, roc, title="ROC curves"),
        R.Image(IMPORTANCE_PNG, importance, title="feature importance"),
    ])]  # fmt: skip


def write_outputs(output: str, metrics: dict[str, Any], roc: dict[str, Any], texts: dict[str, str],
                  spec: SnippetSpec) -> None:  # fmt: skip
    """metrics.json, roc.png, importance.png, then report.html (its copies in report_files/)."""
    storage.write_text(storage.join(output, METRICS), json.dumps(metrics, indent=1))
    pngs = roc_png(roc), importance_png(texts, spec)
    storage.write_bytes(storage.join(output, ROC_PNG), pngs[0])
    storage.write_bytes(storage.join(output, IMPORTANCE_PNG), pngs[1])
    R.write_report(output, report_sections(metrics, *pngs), title="classify: ROC AUC", filename=REPORT)


def metrics_document(classes: list[str], untrained: dict[str, str], ev: dict[str, Any],
                     sizes: dict[str, dict[str, Any]], thresholds: dict[str, float],
                     usable: dict[str, list[dict[str, Any]]], cnn: dict[str, Any] | None, spec: SnippetSpec,
                     info: dict[str, Any], model: str) -> dict[str, Any]:  # fmt: skip
    """The content of metrics.json; ``ev``: :func:`roc_by_split`; ``cnn``: checkpoint and pool, or None."""
    return {
        "classes": classes, "untrained_classes": untrained, "auc": ev["auc"], "positives": ev["positives"],
        "snippets": {s: v["snippets"] for s, v in sizes.items()}, "thresholds": thresholds,
        "tracks": {s: [m["track_id"] for m in ms] for s, ms in usable.items()},
        "activation_cnn": {**cnn, "auc": ev["cnn_auc"]} if cnn else None,
        "seed000_auc_slakh": SEED000_AUC, "label_rule": spec.labels.model_dump(),
        "training": info, "model": model,
    }  # fmt: skip


def summary_figures(ev: dict[str, Any], cnn: bool) -> dict[str, Any]:
    """The AUCs in the job's summary: LightGBM's per split and class, the CNN's on test."""
    figures = {f"auc_{s}_{c}": v for s in ("validation", "test") for c, v in ev["auc"].get(s, {}).items()}
    if cnn:
        figures.update({f"cnn_auc_test_{c}": v for c, v in ev["cnn_auc"].get("test", {}).items()})
    return figures


def finish(output: str, spec: SnippetSpec, usable: dict[str, list[dict[str, Any]]], classes: list[str],
           untrained: dict[str, str], texts: dict[str, str], info: dict[str, Any], scored: Any,
           cnn: dict[str, Any] | None, data: str) -> dict[str, Any]:  # fmt: skip
    """From the scored validation and test snippets: the model folder, metrics.json, the plots, the report.

    ``scored``: a pandas frame of :class:`sepcore.classify.classifier.BatchScorer` rows.
    Returns the job's summary entries ``figures``, ``model``, ``metrics`` and ``counts`` (snippets per split).
    """
    which = scored["track_id"].map({m["track_id"]: s for s in ("validation", "test") for m in usable[s]})
    frames = {s: scored[which == s] for s in ("validation", "test") if usable[s]}
    ev = roc_by_split(frames, classes, cnn is not None)
    val = frames["validation"]
    thresholds = {c: youden_threshold(val[f"label_{c}"].to_numpy(), val[f"score_{c}"].to_numpy()) for c in classes}
    boosters = {c: load_booster(t, f"{c}.txt") for c, t in texts.items()}
    model_dir = storage.join(output, MODEL_DIR)
    names = spec.feature_names()
    Classifier(spec, classes, boosters, thresholds, names, {"training": info, "data": data}).save(model_dir)
    sizes = split_sizes(usable, classes)
    metrics = metrics_document(classes, untrained, ev, sizes, thresholds, usable, cnn, spec, info, model_dir)
    write_outputs(output, metrics, ev["roc"], texts, spec)
    return {"figures": summary_figures(ev, cnn is not None), "model": model_dir,
            "metrics": storage.join(output, METRICS),
            "counts": {f"snippets_{s}": v["snippets"] for s, v in sizes.items()}}  # fmt: skip


def trainable_classes(sizes: dict[str, dict[str, Any]], classes: list[str],
                      output: str) -> tuple[list[str], dict[str, str]]:  # fmt: skip
    """The classes with both labels among the training snippets, and why the others are left out.

    Raises :class:`SepError` when the train or validation split has no snippets or no class
    can be trained.
    """
    for s in ("train", "validation"):
        if not sizes[s]["snippets"]:
            raise SepError(f"{output}: the {s} split has no snippets (too few tracks, or all failed)")
    n_train = sizes["train"]["snippets"]
    trainable = [c for c in classes if 0 < sizes["train"]["positives"][c] < n_train]
    if not trainable:
        raise SepError(f"{output}: no class has both labels in the training snippets")
    return trainable, {c: "all training snippets have one label" for c in classes if c not in trainable}


# ---------------------------------------------------------------- style mode


def style_split_sizes(usable: dict[str, list[dict[str, Any]]], styles: list[str]) -> dict[str, dict[str, Any]]:
    """Snippets, and songs per style, of each split, from the done-markers."""
    return {s: {"snippets": sum(m["snippets"] for m in ms),
                "songs": {st: sum(m["style"] == st for m in ms) for st in styles}}
            for s, ms in usable.items()}  # fmt: skip


def check_style_sizes(sizes: dict[str, dict[str, Any]], output: str) -> None:
    """Raise :class:`SepError` when the train or validation split has no snippets."""
    for s in ("train", "validation"):
        if not sizes[s]["snippets"]:
            raise SepError(f"{output}: the {s} split has no snippets (too few tracks, or all failed)")


def _share(m: np.ndarray) -> np.ndarray:
    """Rows of a confusion matrix as percentages of their sum (NaN for an empty row)."""
    rows = m.sum(axis=1, keepdims=True)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(rows > 0, 100.0 * m / np.maximum(rows, 1), np.nan)


def confusion_figure(results: dict[str, dict[str, Any]], styles: list[str]) -> Any:
    """Confusion matrices, rows as percent of the true style: one row of panels for snippets,
    one for songs, a column per split of ``results`` (:func:`sepcore.classify.style.song_results`)."""
    splits = list(results)
    size = 1.2 + 0.45 * len(styles)
    fig = R.new_figure(size * len(splits), 2 * size)
    axes = fig.subplots(2, len(splits), squeeze=False)
    for col, split in enumerate(splits):
        for row, level in enumerate(("snippet", "song")):
            m = np.asarray(results[split][f"{level}_confusion"])
            ax = axes[row][col]
            ax.imshow(np.ma.masked_invalid(_share(m)), vmin=0, vmax=100, cmap="Blues")
            for (i, j), v in np.ndenumerate(m):
                if v:
                    ax.text(j, i, str(v), ha="center", va="center", fontsize=7)
            ax.set_xticks(range(len(styles)), styles, rotation=60, ha="right", fontsize=7)
            ax.set_yticks(range(len(styles)), styles, fontsize=7)
            acc = results[split][f"{level}_accuracy"]
            ax.set_title(f"{split} {level}s, accuracy {acc if acc is None else f'{acc:.2f}'}", fontsize=9)
            ax.set(xlabel="predicted", ylabel="true")
    fig.tight_layout()
    return fig


def style_report_sections(metrics: dict[str, Any], confusion: bytes, importance: bytes) -> list[R.Section]:
    """The style report: accuracy per split, the confusion tables and plots."""
    styles, res = metrics["classes"], metrics["results"]
    rows = [[s, r["snippet_accuracy"], r["song_accuracy"], r["snippets"], r["songs"]] for s, r in res.items()]
    items: list[Any] = [R.Table("accuracy per split", ["split", "snippets", "songs (vote)", "snippets", "songs"], rows, digits=3),
                        R.Text("A song's style is the class with the largest summed probability over its snippets (ties: "
                               "the first in sorted order). Confusion tables: rows the true style, columns the predicted one.")]  # fmt: skip
    for split, r in res.items():
        for level in ("snippet", "song"):
            table = [[st, *row] for st, row in zip(styles, r[f"{level}_confusion"], strict=True)]
            items.append(R.Table(f"{split}: {level}s, true (rows) by predicted (columns)", ["true", *styles], table))
    items += [R.Image(CONFUSION_PNG, confusion, title="confusion matrices (share of the true style)"),
              R.Image(IMPORTANCE_PNG, importance, title="feature importance")]  # fmt: skip
    return [R.Section("Style of 1-second snippets and songs: accuracy", items)]


def finish_style(output: str, spec: SnippetSpec, usable: dict[str, list[dict[str, Any]]], styles: list[str],
                 text: str, info: dict[str, Any], scored: Any, data: str,
                 left_out: dict[str, str]) -> dict[str, Any]:  # fmt: skip
    """Style mode's :func:`finish`: from the scored snippets of every split (``scored``: a pandas
    frame of :class:`sepcore.classify.classifier.StyleScorer` rows), the model folder,
    metrics.json, confusion.png, importance.png and the report. ``left_out``: tracks without a style.
    """
    truth = {m["track_id"]: m["style"] for ms in usable.values() for m in ms}
    which = scored["track_id"].map({m["track_id"]: s for s in SPLITS for m in usable[s]})
    results = {s: ST.song_results(scored[which == s], styles, truth) for s in SPLITS if usable[s]}
    model_dir = storage.join(output, MODEL_DIR)
    booster = load_booster(text, f"{STYLE_MODEL}.txt")
    Classifier(spec, styles, {STYLE_MODEL: booster}, {}, spec.feature_names(), {"training": info, "data": data}).save(model_dir)
    sizes = style_split_sizes(usable, styles)
    metrics = {"task": "style", "classes": styles, "results": results,
               "snippets": {s: v["snippets"] for s, v in sizes.items()}, "songs": {s: v["songs"] for s, v in sizes.items()},
               "tracks": {s: [m["track_id"] for m in ms] for s, ms in usable.items()}, "tracks_without_style": left_out,
               "training": info, "model": model_dir}  # fmt: skip
    storage.write_text(storage.join(output, METRICS), json.dumps(metrics, indent=1))
    pngs = R.figure_png(confusion_figure(results, styles), dpi=110), importance_png({STYLE_MODEL: text}, spec)
    storage.write_bytes(storage.join(output, CONFUSION_PNG), pngs[0])
    storage.write_bytes(storage.join(output, IMPORTANCE_PNG), pngs[1])
    R.write_report(output, style_report_sections(metrics, *pngs), title="classify: style accuracy", filename=REPORT)
    figures = {f"{level}_accuracy_{s}": r[f"{level}_accuracy"] for s, r in results.items() for level in ("snippet", "song")}
    return {"figures": figures, "model": model_dir, "metrics": storage.join(output, METRICS),
            "counts": {f"snippets_{s}": v["snippets"] for s, v in sizes.items()}}  # fmt: skip
