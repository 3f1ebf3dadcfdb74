"""The demo's ``metrics.json`` (format ``sep-demo/1``) and ``report.html``, from its stages' outputs.

Everything is read from what the jobs wrote into their output folders (their
``summary.json``, ``metrics.json``, manifests and report files), given as a
:class:`DemoLayout`; nothing here runs a job.
"""

from __future__ import annotations

import io
import json
from dataclasses import dataclass
from typing import Any

from sepcore.evaluate import document as E
from sepcore.io import storage
from sepcore.report import html as R
from sepcore.stages import StageRecord, fmt_seconds, read_summary

FORMAT = "sep-demo/1"
METRICS_FILE = "metrics.json"
SEPARATORS = ("hourglass", "blstm")
#: Files the jobs write into their outputs (see each job's page in docs/).
DATASET = "dataset.json"  # sep prepare
CURVE = "loss_curve.png"  # sep train
MANIFEST = "manifest.parquet"  # sep separate
ROC_PNG, IMPORTANCE_PNG = "roc.png", "importance.png"  # sep classify
AUDIO = (".flac", ".wav", ".mp3", ".ogg")
#: User-library files longer than this get no clips in the report (stems are read whole).
CLIP_MAX_SECONDS = 900.0
#: User-library files shown with audio players.
CLIP_FILES = 4


@dataclass(frozen=True)
class DemoLayout:
    """Where each stage of a demo run writes (URIs), and what the run is about."""

    output: str
    target: str
    quick: bool
    data: str  # the rendered songs
    songs: int
    shards: str  # the target's training shards
    train: dict[str, str]  # model -> training output
    evaluate: dict[str, str]  # model -> evaluation output
    classify: str
    separated: dict[str, tuple[str, str]]  # "heldout" / "library" -> (input folder, output)


def plural(n: int, word: str) -> str:
    return f"{n} {word}" if n == 1 else f"{n} {word}s"


def _load(uri: str) -> dict[str, Any]:
    return json.loads(storage.read_text(uri))


def _num(x: Any) -> float:
    return E.from_json_number(x)


def heldout_mixes(data: str, shards: str, split: str = "test") -> dict[str, str]:
    """``{track_id: mix URI}`` of ``split`` as training had it, as ``sep evaluate`` selects them."""
    from sepcore.evaluate.selection import select_tracks

    tracks, _ = select_tracks(data, split, _load(storage.join(shards, DATASET)))
    return {t.track_id: t.mix_uri for t in tracks if t.mix_uri}


def manifest_rows(output: str) -> list[dict[str, Any]]:
    """The rows of ``sep separate``'s manifest in ``output`` (empty when there is none)."""
    import pyarrow.parquet as pq

    uri = storage.join(output, MANIFEST)
    if not storage.exists(uri):
        return []
    return pq.read_table(io.BytesIO(storage.read_bytes(uri))).to_pylist()


# ---------------------------------------------------------------- metrics.json


def _median_rows(median: dict[str, Any]) -> dict[str, Any]:
    return {src: {k: median[src][k] for k in ("sdr", "sir", "sar")} for src in E.SOURCES}


def demo_metrics(lay: DemoLayout, main: str, decisions: dict[str, str], stages: list[StageRecord],
                 wall_s: float, budget_s: float) -> dict[str, Any]:  # fmt: skip
    """The content of the demo's metrics.json (format ``sep-demo/1``, see docs/demo.md)."""
    separators = [m for m, d in decisions.items() if d == "trained" and m in SEPARATORS]
    evals = {m: _load(storage.join(lay.evaluate[m], METRICS_FILE)) for m in separators}
    first = evals[main]["separation"][lay.target]
    rows = {m: _median_rows(evals[m]["separation"][lay.target]["median"]["model"]) for m in separators}
    rows.update({method: _median_rows(first["median"][method]) for method in ("irm", "ibm", "mixture")})
    mix_sdr = _num(rows["mixture"]["instrument"]["sdr"])
    cls = _load(storage.join(lay.classify, METRICS_FILE))
    splits = _load(storage.join(lay.shards, DATASET))["splits"]
    act = lay.evaluate.get("activation_cnn")
    doc = {
        "format": FORMAT, "target": lay.target, "quick": lay.quick, "data": lay.data,
        "tracks": {"songs": lay.songs, **{s: len(v) for s, v in splits.items()}},
        "separation": {
            "split": "test", "tracks": first["median"]["model"]["instrument"]["count"],
            "methods": [*separators, "irm", "ibm", "mixture"], "median": rows,
            "sdr_over_mixture": {m: round(_num(rows[m]["instrument"]["sdr"]) - mix_sdr, 3) for m in separators},
            "per_track": [{"track_id": t["track_id"], "seconds": t["seconds"],
                           "sdr": {m: t["scores"][m]["instrument"]["sdr"] for m in E.METHODS}}
                          for t in first["tracks"]],
            "evaluate": {m: storage.join(lay.evaluate[m], METRICS_FILE) for m in separators},
        },
        "activation": {"per_class": _load(storage.join(act, METRICS_FILE))["activation"]["per_class"],
                       "metrics": storage.join(act, METRICS_FILE)}
        if act and decisions.get("activation_cnn") == "trained" else None,
        "classify": {"auc": cls["auc"], "classes": cls["classes"], "snippets": cls["snippets"],
                     "metrics": storage.join(lay.classify, METRICS_FILE)},
        "separated": {name: _separated_counts(out) for name, (_, out) in lay.separated.items()},
        "models": decisions,
        "stages": [{"stage": r.name, "seconds": round(r.seconds, 1), "cached": r.cached, "output": r.output}
                   for r in stages],
        "wall_seconds": round(wall_s, 1),
        "budget_seconds": budget_s,
    }  # fmt: skip
    return E.to_json(doc)


def _separated_counts(output: str) -> dict[str, Any]:
    rows = manifest_rows(output)
    return {"files": len(rows), **{s: sum(r["status"] == s for r in rows) for s in ("ok", "skipped", "error")},
            "manifest": storage.join(output, MANIFEST)}  # fmt: skip


def write_outputs(lay: DemoLayout, main: str, decisions: dict[str, str], stages: list[StageRecord],
                  wall_s: float, budget_s: float) -> dict[str, Any]:  # fmt: skip
    """metrics.json, then report.html; the demo's summary entries."""
    doc = demo_metrics(lay, main, decisions, stages, wall_s, budget_s)
    metrics_uri = storage.join(lay.output, METRICS_FILE)
    storage.write_text(metrics_uri, json.dumps(doc, indent=1))
    page = R.write_report(lay.output, report_sections(lay, main, doc),
                          title=f"sep demo: separating the {lay.target}")  # fmt: skip
    sep = doc["separation"]
    figures: dict[str, Any] = {
        f"{lay.target} SDR/SIR/SAR {method}": " / ".join(f"{_num(row['instrument'][k]):.2f}" for k in ("sdr", "sir", "sar"))
        for method, row in sep["median"].items()
    }  # fmt: skip
    figures.update({f"{m} SDR over mixture (dB)": g for m, g in sep["sdr_over_mixture"].items()})
    figures.update({f"AUC test {c}": v for c, v in doc["classify"]["auc"].get("test", {}).items()})
    figures["models"] = decisions
    figures["report"] = page
    return {
        "counts": {"songs": lay.songs, "heldout_tracks": sep["tracks"],
                   "stages_run": sum(not r.cached for r in stages), "stages_reused": sum(r.cached for r in stages)},
        "figures": figures, "failed": [f for r in stages for f in r.summary.get("failed") or []],
        "report": page, "metrics": metrics_uri,
    }  # fmt: skip


# ---------------------------------------------------------------- report.html


def report_sections(lay: DemoLayout, main: str, doc: dict[str, Any]) -> list[R.Section]:
    optional = (_examples_section(lay, main), _training_section(lay, doc), _classify_section(lay, doc),
                _activation_section(lay, doc))  # fmt: skip
    return [R.Section("Summary", [_summary_text(lay, main, doc)]), _scores_section(lay, main, doc),
            *(s for s in optional if s), _separated_section(lay), _stages_section(doc)]  # fmt: skip


def _summary_text(lay: DemoLayout, main: str, doc: dict[str, Any]) -> R.Text:
    sep, tr = doc["separation"], doc["tracks"]
    mix = _num(sep["median"]["mixture"]["instrument"]["sdr"])
    model = _num(sep["median"][main]["instrument"]["sdr"])
    skipped = [f"{m} ({d})" for m, d in doc["models"].items() if d != "trained"]
    return R.Text(
        f"{tr['songs']} songs rendered from the built-in corpus (music21 scores with General MIDI "
        f"instruments and rule-based drums) into {lay.data}; split by track into "
        f"{tr.get('train', 0)} training, {tr.get('validation', 0)} validation and {tr.get('test', 0)} "
        f"held-out songs holding the {lay.target}.\n\n"
        f"On the {plural(sep['tracks'], 'held-out song')} the {main} separator's median SDR for the "
        f"{lay.target} is {model:.2f} dB, against {mix:.2f} dB for the mixture used as the estimate: "
        f"{model - mix:+.2f} dB. The ideal ratio mask with the same STFT reaches "
        f"{_num(sep['median']['irm']['instrument']['sdr']):.2f} dB (the upper bound of mask methods).\n\n"
        f"Models trained: {', '.join(m for m, d in doc['models'].items() if d == 'trained')}."
        + (f" Not trained: {'; '.join(skipped)}." if skipped else "")
        + f"\n\nWall time of this run {fmt_seconds(doc['wall_seconds'])}; the stages cost "
        f"{fmt_seconds(sum(s['seconds'] for s in doc['stages']))} when they ran (see the last section). "
        f"Every number here is in {storage.join(lay.output, METRICS_FILE)}."
    )


def _scores_section(lay: DemoLayout, main: str, doc: dict[str, Any]) -> R.Section:
    sep = doc["separation"]
    names = {"irm": "IRM (oracle)", "ibm": "IBM (oracle)", "mixture": "mixture as estimate"}
    keys = [(src, k) for src in E.SOURCES for k in ("sdr", "sir", "sar")]
    rows = [[names.get(m, f"{m} (model)"), *(_num(sep["median"][m][s][k]) for s, k in keys)] for m in sep["methods"]]
    cols = ["method", *(f"{'target' if s == 'instrument' else 'rest'} {k.upper()}" for s, k in keys)]
    items: list[Any] = [R.Table(
        f"{lay.target} vs rest: median over {plural(sep['tracks'], 'held-out song')} (dB)", cols, rows,
        note="BSS Eval (bss_eval_sources, fast_bss_eval) of [target, rest]. Model rows: the trained "
             "checkpoints; IRM / IBM: ideal ratio / binary masks with the model's STFT (upper "
             "bounds); mixture: the mixture as both estimates (lower bound; its SAR is numerically infinite).")]  # fmt: skip
    box = storage.join(lay.evaluate[main], R.ASSETS, "box_sdr_instrument.png")
    if storage.exists(box):
        items.append(R.Image("scores_box_sdr.png", storage.read_bytes(box),
                             title=f"SDR per held-out song, by class and method ({main})"))  # fmt: skip
    methods = [main if m == "model" else m for m in E.METHODS]
    items.append(R.Table("per held-out song: SDR of the target (dB)", ["song", "seconds", *methods],
                         [[t["track_id"], t["seconds"], *(_num(t["sdr"][m]) for m in E.METHODS)]
                          for t in sep["per_track"]]))  # fmt: skip
    return R.Section("Separation scores", items)


def _examples_section(lay: DemoLayout, main: str) -> R.Section | None:
    """The evaluate job's examples (spectrograms and clips in its report files), copied beside the demo's."""
    assets = storage.join(lay.evaluate[main], R.ASSETS)
    files = sorted(storage.basename(u) for u in storage.list_files(assets))
    order = ("mixture", "reference", "model", "irm")
    items: list[Any] = []
    for png in (f for f in files if f.endswith("_spectrograms.png")):
        base = png[: -len("_spectrograms.png")]
        clips = [f for f in files if f.startswith(base + "_") and f.endswith(AUDIO)]
        clips.sort(key=lambda f: next((i for i, w in enumerate(order) if f[len(base) + 1:].lower().startswith(w)), 9))
        items.append(R.Image(f"ex_{png}", storage.read_bytes(storage.join(assets, png)), title=f"{base}: spectrograms",
                             caption="mixture, reference target, model estimate and IRM estimate"))  # fmt: skip
        items.append(R.AudioGroup(f"{base}: listen", [
            R.AudioClip(f"ex_{f}", f[len(base) + 1:].rsplit(".", 1)[0].replace("_", " "),
                        storage.read_bytes(storage.join(assets, f))) for f in clips]))  # fmt: skip
    return R.Section(f"Held-out examples ({main})", items) if items else None


def _training_section(lay: DemoLayout, doc: dict[str, Any]) -> R.Section | None:
    items: list[Any] = []
    rows = []
    for m in (m for m, d in doc["models"].items() if d == "trained"):
        curve = storage.join(lay.train[m], CURVE)
        if storage.exists(curve):
            items.append(R.Image(f"loss_curve_{m}.png", storage.read_bytes(curve), title=f"{m}: loss curves"))
        s = read_summary(lay.train[m]) or {}
        fig = s.get("figures", {})
        rows.append([m, s.get("counts", {}).get("epochs"), fig.get("best_epoch"),
                     "val_sdr" if "best_val_sdr" in fig else "val_loss",
                     fig.get("best_val_sdr", fig.get("best_val_loss")), s.get("seconds")])  # fmt: skip
    if not rows:
        return None
    items.insert(0, R.Table("training runs", ["model", "epochs", "best epoch", "metric", "best value", "seconds"],
                            rows, note="val_sdr: median SDR (dB) of the target on validation songs, "
                            "10 log10(|s|^2 / |s - s_hat|^2); the best checkpoint is the one evaluated."))  # fmt: skip
    return R.Section("Training", items)


def _classify_section(lay: DemoLayout, doc: dict[str, Any]) -> R.Section:
    auc = doc["classify"]["auc"]
    rows = [[c, auc.get("validation", {}).get(c), auc.get("test", {}).get(c)] for c in doc["classify"]["classes"]]
    items: list[Any] = [
        R.Text("LightGBM on 1-second snippets of the mix (seed 000): is each instrument playing in this second?"),
        R.Table("AUC per class", ["class", "validation", "test"], rows, digits=3,
                note=f"snippets: {doc['classify']['snippets']}"),
    ]  # fmt: skip
    for name, title in ((ROC_PNG, "ROC curves"), (IMPORTANCE_PNG, "what the models use")):
        uri = storage.join(lay.classify, name)
        if storage.exists(uri):
            items.append(R.Image(f"classify_{name}", storage.read_bytes(uri), title=title))
    return R.Section("Instrument classifier", items)


def _activation_section(lay: DemoLayout, doc: dict[str, Any]) -> R.Section | None:
    act = doc.get("activation")
    if not act:
        return None
    rows = [[c, _num(v["mae"]), _num(v["error_db"]), v["tracks"]] for c, v in act["per_class"].items()]
    items: list[Any] = [R.Table("activation CNN on the held-out songs", ["class", "mean |error|", "error (dB)",
                                                                         "tracks"], rows, digits=3,
                                note="median over songs where the class plays; mean |error| on the [0, 1] "
                                "activation scale (60 dB range); error (dB) as in sep evaluate's report.")]  # fmt: skip
    assets = storage.join(lay.evaluate["activation_cnn"], R.ASSETS)
    for name in ("sequence_activations.png", "noise_matrix.png", "leakage_matrix.png"):
        uri = storage.join(assets, name)
        if storage.exists(uri):
            items.append(R.Image(f"activation_{name}", storage.read_bytes(uri), title=name[:-4].replace("_", " ")))
    return R.Section("Instrument activations (seed 001)", items)


def _separated_section(lay: DemoLayout) -> R.Section:
    items: list[Any] = []
    for name, (library, output) in lay.separated.items():
        rows = manifest_rows(output)
        table = [[r["relative"], r["status"], r["duration_s"], r["total_s"], r["error"] or ""] for r in rows]
        items.append(R.Table(f"{'held-out songs' if name == 'heldout' else 'your library'}: {library} -> "
                             f"{output}", ["file", "status", "seconds", "separation s", "error"], table,
                             digits=1, note="stems: <output>/stems/<file>-<hash>/instrument.flac and rest.flac "
                             "(see manifest.parquet); skipped: separated by an earlier run with the same "
                             "model, stems kept."))  # fmt: skip
        if name == "library":
            items += _library_clips(rows, lay.target)
    return R.Section("Separated files", items)


def _library_clips(rows: list[dict[str, Any]], target: str) -> list[Any]:
    """Audio players for the loudest 15 s of the first few separated files of the user's library."""
    from sepcore.evaluate.tracks import loudest_span
    from sepcore.io.audio import Audio, encode_bytes, read_audio

    out = []
    ok = [r for r in rows if r["status"] in ("ok", "skipped") and (r["duration_s"] or 0) <= CLIP_MAX_SECONDS]
    for i, row in enumerate(ok[:CLIP_FILES]):
        inst, rest = read_audio(row["instrument_uri"]), read_audio(row["rest_uri"])
        sr = inst.sample_rate
        start, _ = loudest_span(inst.samples, sr, 15.0)
        stop = start + 15 * sr
        clips = []
        for label, audio in (("input", inst.samples + rest.samples), (target, inst.samples), ("rest", rest.samples)):
            clip = Audio(audio[:, start:stop].clip(-1.0, 1.0), sr)
            clips.append(R.AudioClip(f"library_{i:02d}_{label}.flac", label, encode_bytes(clip, "flac")))
        out.append(R.AudioGroup(f"{row['relative']}, from {start / sr:.1f} s", clips))
    return out


def _stages_section(doc: dict[str, Any]) -> R.Section:
    rows = [[s["stage"], "reused" if s["cached"] else "ran", s["seconds"], s["output"]] for s in doc["stages"]]
    return R.Section("Stages", [
        R.Table("what ran", ["stage", "this run", "seconds", "output"], rows, digits=1,
                note="seconds: what the stage cost when it ran (reused stages ran in an earlier sep demo). "
                     "Each output folder has its own summary.json; evaluate_* and classify have their own "
                     "report.html."),
        R.Text(f"Wall time of this run: {fmt_seconds(doc['wall_seconds'])} (budget for the extra models "
               f"{fmt_seconds(doc['budget_seconds'])})."),
    ])  # fmt: skip


# ---------------------------------------------------------------- data of the run


def copy_heldout(folder: str, mixes: dict[str, str]) -> list[str]:
    """Copy the held-out mixes to ``folder/<track>.flac`` (missing ones only; others removed)."""
    wanted = {storage.join(folder, track_id.split(":")[-1] + ".flac"): mix for track_id, mix in mixes.items()}
    for uri in storage.list_files(folder):
        if uri not in wanted:
            storage.delete(uri)
    for uri, mix in wanted.items():
        if not storage.exists(uri):
            storage.write_bytes(uri, storage.read_bytes(mix))
    return sorted(wanted)


def prune_tracks(data: str, tracks: int) -> list[str]:
    """Remove rendered tracks numbered above ``tracks`` (left by a run with more songs); their names."""
    from sepcore.data.slakh import METADATA

    removed = []
    for uri in storage.list_files(data, suffix="/" + METADATA):
        name = uri.rsplit("/", 2)[-2]
        if name.startswith("Track") and name[5:].isdigit() and int(name[5:]) > tracks:
            storage.delete(storage.parent(uri), recursive=True)
            removed.append(name)
    return removed


def announce(page: str, metrics: str) -> None:
    """Print where the report is and how to open it."""
    if storage.is_local(page):
        path = storage.local_path(page)
        how = f"python -m webbrowser file://{path}   (or: xdg-open {path}, open {path} on macOS)"
    else:
        how = (f"aws s3 cp --recursive {storage.parent(page)} ./demo_report --exclude '*' --include report.html "
               f"--include 'report_files/*'   then open ./demo_report/report.html")  # fmt: skip
    print(f"\nThe demo's report: {page}\n  open it: {how}\n  numbers: {metrics}\n", flush=True)
