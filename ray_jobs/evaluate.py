"""evaluate: score a checkpoint on a Slakh-layout set; metrics.json and an HTML report.

    sep evaluate -c configs/evaluate_demo.yaml
    sep evaluate -c configs/evaluate_demo.yaml mode=windowed
    sep evaluate -c configs/evaluate_activation_demo.yaml

Separators (seed 002 §6): every track of the chosen split is one Ray task that builds
the ``[instrument, rest]`` pair as training did, separates the mixture through
``sepcore.separate.apply`` (as ``sep separate`` does), adds the oracle IRM / IBM and the
mixture-as-estimate rows and scores them all with BSS Eval (``sepcore.evaluate.tracks``).
The driver gathers the medians. Activation models (seed 001 §5.3-5.4): one task per
track predicts and compares the class activations; one more task plays a sequence of
solo parts (the loudest ``activation.sequence_seconds`` of each class in the split)
and computes the noise and leakage matrices.

Output: ``metrics.json`` (schema in ``sepcore.evaluate.tracks.METRICS_SCHEMA`` and the
README), ``report.html`` with its files under ``report_files/``, ``summary.json`` last.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import re
import sys
import time
from typing import Any, Literal

import numpy as np
from pydantic import Field, model_validator

from ray_jobs.common import ItemTasks, Job, JobConfig
from sepcore.config import Config
from sepcore.data.classes import CLASSES
from sepcore.errors import ConfigError, SepError
from sepcore.evaluate import tracks as E
from sepcore.io import storage
from sepcore.models import checkpoint as ckpt
from sepcore.report import html as R

log = logging.getLogger("sep.evaluate")

METRICS_FILE = "metrics.json"
#: Per-track results of a run, so that a rerun after a kill does only the rest.
DONE_FOLDER = "tracks"
#: Default split fractions and seed (those of ``sep prepare``) when no manifest says otherwise.
DEFAULT_FRACTIONS = {"train": 0.8, "validation": 0.1, "test": 0.1}


class SplitFractions(Config):
    train: float = Field(0.8, ge=0, le=1)
    validation: float = Field(0.1, ge=0, le=1)
    test: float = Field(0.1, ge=0, le=1)


class ReportConfig(Config):
    examples: int = Field(2, ge=0, description="tracks shown with spectrograms and audio players")
    audio_seconds: float = Field(
        15.0, gt=0, description="length of each example: the loudest stretch of the target"
    )
    audio_format: Literal["flac", "wav"] = Field(
        "flac", description="format of the example audio files"
    )


class ActivationEvalConfig(Config):
    sequence_seconds: float = Field(
        5.0, gt=0, description="solo seconds per class in the sequence test (seed 001: 5)"
    )
    plots: int = Field(3, ge=0, description="tracks with per-instrument activation plots")
    batch_size: int = Field(32, ge=1, description="windows per model call")


class EvaluateConfig(JobConfig):
    data: str = Field(
        description="URI of a Slakh-layout set (tracks with stems/ and metadata.yaml)"
    )
    checkpoint: str = Field(description="checkpoint folder or training output (meaning its best/)")
    target: str | None = Field(
        None, description="class separated (default: the checkpoint's target)"
    )
    classes: list[str] = Field(
        default_factory=list,
        description="more classes scored with the oracle and mixture rows only",
    )
    split: Literal["train", "validation", "test", "all"] = Field(
        "test", description="tracks evaluated"
    )
    split_fractions: SplitFractions | None = Field(
        None,
        description="fractions for tracks without a split (default: the training data's, else 0.8/0.1/0.1)",
    )
    seed: int | None = Field(
        None, description="seed of the split assignment (default: the training data's, else 0)"
    )
    tracks: int | None = Field(
        None, ge=1, description="evaluate at most this many tracks (sorted by id)"
    )
    mode: Literal["full", "windowed"] = Field(
        "full", description="full tracks (seed 002) or 1-s windows (museval)"
    )
    backend: Literal["auto", "mir_eval", "fast"] = Field(
        "auto",
        description="BSS Eval implementation; auto: mir_eval for full, fast_bss_eval for windowed",
    )
    segment_seconds: float = Field(
        30.0, gt=0, description="full mode: longer tracks are scored in segments"
    )
    window_seconds: float = Field(1.0, gt=0, description="windowed mode: window length")
    hop_seconds: float = Field(1.0, gt=0, description="windowed mode: hop between windows")
    batch_size: int = Field(8, ge=1, description="separator chunks per model call")
    cpus_per_task: float = Field(1.0, gt=0, description="CPUs reserved per track task")
    threads: int = Field(1, ge=1, description="torch threads per task")
    report: ReportConfig = Field(default_factory=ReportConfig)
    activation: ActivationEvalConfig = Field(default_factory=ActivationEvalConfig)
    max_failed_fraction: float = Field(
        0.5, ge=0, le=1, description="the job fails when more tracks than this fail"
    )
    item_timeout_s: float = Field(
        7200.0,
        gt=0,
        description="time limit of one track's task (and of the sequence test), from its start: "
        "then it is cancelled and the track recorded as failed (a 15-minute track takes minutes)",
    )

    @model_validator(mode="after")
    def _check(self) -> EvaluateConfig:
        for name in ([self.target] if self.target else []) + self.classes:
            if name not in CLASSES:
                raise ValueError(f"unknown class '{name}'; known: {CLASSES}")
        if self.split_fractions is not None:
            f = self.split_fractions
            if abs(f.train + f.validation + f.test - 1) > 1e-6:
                raise ValueError("split_fractions must sum to 1")
        return self

    def eval_spec(self) -> E.EvalSpec:
        backend = (
            self.backend
            if self.backend != "auto"
            else ("mir_eval" if self.mode == "full" else "fast")
        )
        return E.EvalSpec(
            self.mode, backend, self.segment_seconds, self.window_seconds, self.hop_seconds
        )


# ---------------------------------------------------------------- tracks and splits


def training_manifest(meta: dict[str, Any]) -> dict[str, Any] | None:
    """The checkpoint's training data manifest (``dataset.json``), when it can be read."""
    data = meta.get("data")
    if not data:
        return None
    uri = storage.join(data, "dataset.json")
    try:
        return json.loads(storage.read_text(uri)) if storage.exists(uri) else None
    except (SepError, json.JSONDecodeError) as exc:
        log.warning(
            "evaluate: cannot read the training manifest %s (%s); splits are assigned anew",
            uri,
            exc,
        )
        return None


def _source_name(data: str, manifest: dict[str, Any] | None) -> str:
    for source in (manifest or {}).get("config", {}).get("sources", []):
        if source.get("kind") == "slakh" and storage.normalize_uri(source["uri"]) == data:
            return source.get("name") or "slakh"
    return "slakh"


def track_splits(
    tracks: list, cfg: EvaluateConfig, manifest: dict[str, Any] | None
) -> dict[str, str]:
    """Each track's split as training had it (see the README: splits)."""
    from sepcore.prepare.mixing import assign_splits

    prepared = (manifest or {}).get("config", {})
    fractions = (
        cfg.split_fractions.model_dump()
        if cfg.split_fractions
        else prepared.get("split", DEFAULT_FRACTIONS)
    )
    seed = cfg.seed if cfg.seed is not None else int(prepared.get("seed", 0))
    fixed = {t.track_id: t.split for t in tracks if t.split}
    splits = assign_splits([t.track_id for t in tracks], fractions, seed, fixed)
    for split, ids in (manifest or {}).get("splits", {}).items():
        for track_id in ids:
            if track_id in splits:
                splits[track_id] = split
    return splits


def select_tracks(cfg: EvaluateConfig, manifest: dict[str, Any] | None) -> tuple[list, list[str]]:
    """The tracks to evaluate (sorted by id) and the listing errors."""
    from sepcore.data.sources import slakh_tracks

    data = storage.normalize_uri(cfg.data)
    errors: list = []
    tracks = slakh_tracks(data, name=_source_name(data, manifest), errors=errors)
    if not tracks:
        raise SepError(f"{data}: no tracks in the Slakh layout (TrackNNNNN/metadata.yaml) found")
    splits = track_splits(tracks, cfg, manifest)
    chosen = sorted((t for t in tracks if cfg.split == "all" or splits[t.track_id] == cfg.split),
                    key=lambda t: t.track_id)  # fmt: skip
    if not chosen:
        raise SepError(f"{data}: no tracks in split '{cfg.split}' (of {len(tracks)})")
    return chosen[: cfg.tracks], [str(e) for e in errors]


# ---------------------------------------------------------------- tasks (run in Ray workers)

_MODELS: dict[str, Any] = {}


def _model(checkpoint_dir: str, threads: int) -> Any:
    """The checkpoint's model, loaded once per worker process."""
    import torch

    torch.set_num_threads(threads)
    if checkpoint_dir not in _MODELS:
        _MODELS[checkpoint_dir] = ckpt.load_model(checkpoint_dir)[0]
    return _MODELS[checkpoint_dir]


def safe_name(track_id: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", track_id).strip("._") or "track"


#: Key of the Ray node id a task adds to its result (removed before the metrics).
NODE_KEY = "_node"


def _guard(fn: Any, track: Any, job: dict[str, Any], flag: bool) -> dict[str, Any]:
    """``fn(track, job, flag)``; a failure becomes ``{"track_id", "error"}`` so the others go on.

    A result is also written to ``<output>/tracks/`` (with the job's fingerprint), so a
    rerun of the same evaluation after a kill does only the tracks not done yet.
    """
    import ray

    node = {NODE_KEY: ray.get_runtime_context().get_node_id()}
    try:
        result = fn(track, job, flag)
        done = {"fingerprint": job["fingerprint"], "result": result}
        storage.write_text(_done_uri(job["output"], track.track_id), json.dumps(done))
        return {**result, **node}
    except SepError as exc:
        return {"track_id": track.track_id, "error": str(exc), **node}
    except Exception as exc:  # a bug on one track must not stop the others
        return {"track_id": track.track_id, "error": f"{track.uri}: {type(exc).__name__}: {exc}", **node}


def _done_uri(output: str, track_id: str) -> str:
    return storage.join(output, DONE_FOLDER, safe_name(track_id) + ".json")


def fingerprint(cfg: EvaluateConfig, meta: dict[str, Any], classes: list[str]) -> str:
    """What a track's result depends on: the model's bytes, the scoring and the report settings."""
    import hashlib

    keys = {"model": meta.get("model_sha256"), "spec": dataclasses.asdict(cfg.eval_spec()),
            "classes": classes, "report": cfg.report.model_dump(), "activation": cfg.activation.model_dump(),
            "data": storage.normalize_uri(cfg.data)}  # fmt: skip
    return hashlib.sha256(json.dumps(keys, sort_keys=True).encode()).hexdigest()[:16]


def done_results(output: str, tracks: list, key: str) -> dict[str, dict[str, Any]]:
    """Results of tracks a previous run of the same evaluation finished (by track id)."""
    wanted = {safe_name(t.track_id) + ".json": t.track_id for t in tracks}
    out = {}
    for uri in storage.list_files(storage.join(output, DONE_FOLDER), suffix=".json"):
        name = storage.basename(uri)
        if name not in wanted:
            continue
        try:
            done = json.loads(storage.read_text(uri))
        except (SepError, json.JSONDecodeError):
            continue
        if done.get("fingerprint") == key and done["result"].get("track_id") == wanted[name]:
            out[wanted[name]] = done["result"]
    return out


def separation_task(track: Any, job: dict[str, Any], example: bool) -> dict[str, Any]:
    return _guard(_separation, track, job, example)


def _separation(track: Any, job: dict[str, Any], example: bool) -> dict[str, Any]:
    model = _model(job["checkpoint_dir"], job["threads"])
    res = E.evaluate_separation(
        track, job["meta"], job["spec"], model, job["classes"], job["batch_size"]
    )
    signals = res.pop("signals")
    if example and signals is not None:
        res["example"] = write_example(job, track.track_id, signals)
    return res


def write_example(job: dict[str, Any], track_id: str, signals: dict[str, Any]) -> dict[str, Any]:
    """Spectrograms and audio clips of one track's loudest stretch of the target."""
    from sepcore.io.audio import Audio, encode_bytes

    meta, rep, target = job["meta"], job["report"], job["classes"][0]
    sr = int(meta["sample_rate"])
    start, _ = E.loudest_span(signals["instrument"], sr, rep["audio_seconds"])
    stop = start + int(round(rep["audio_seconds"] * sr))
    est = signals["estimates"]
    clips = {"mixture": est["mixture"]["instrument"], f"reference {target}": signals["instrument"],
             f"model {target}": est["model"]["instrument"], "model rest": est["model"]["rest"],
             f"IRM {target}": est["irm"]["instrument"]}  # fmt: skip
    base, assets = safe_name(track_id), storage.join(job["output"], R.ASSETS)
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


def activation_task(track: Any, job: dict[str, Any], plot: bool) -> dict[str, Any]:
    return _guard(_activation, track, job, plot)


def _activation(track: Any, job: dict[str, Any], plot: bool) -> dict[str, Any]:
    t0 = time.perf_counter()
    model = _model(job["checkpoint_dir"], job["threads"])
    res = E.evaluate_activations(track, job["meta"], model, job["activation"]["batch_size"])
    sr = int(job["meta"]["sample_rate"])
    candidates = {}
    for k, cls in enumerate(CLASSES):
        if np.any(res["class_sums"][k]):
            candidates[cls] = E.loudest_span(
                res["class_sums"][k], sr, job["activation"]["sequence_seconds"]
            )
    errors = {
        key: dict(zip(CLASSES, np.asarray(v).tolist(), strict=True))
        for key, v in res["errors"].items()
    }
    out = {"track_id": track.track_id, "seconds": res["seconds"], "errors": errors, "candidates": candidates,
           "eval_seconds": time.perf_counter() - t0}  # fmt: skip
    if plot:
        name = f"{safe_name(track.track_id)}_activations.png"
        png = R.activations_png(
            res["pred"], res["ref"], CLASSES, res["hop"] / sr, f"activations: {track.track_id}"
        )
        storage.write_bytes(storage.join(job["output"], R.ASSETS, name), png)
        out["plot"] = name
    return out


def sequence_task(chosen: list[tuple[str, Any, int]], job: dict[str, Any]) -> dict[str, Any]:
    """Seed 001's sequence test on the chosen ``(class, track, start sample)`` solo parts."""
    from sepcore.prepare.pairs import make_pair

    meta, sr = job["meta"], int(job["meta"]["sample_rate"])
    n = int(round(job["activation"]["sequence_seconds"] * sr))
    spec = E.pair_spec(meta, "piano", outputs=("activations",))
    parts = []
    for cls, track, start in chosen:
        sums = make_pair(track, spec).class_sums
        assert sums is not None
        parts.append((cls, np.ascontiguousarray(sums[CLASSES.index(cls)][:, start : start + n])))
    model = _model(job["checkpoint_dir"], job["threads"])
    seq = E.activation_sequence(parts, meta, model, job["activation"]["batch_size"])
    assets = storage.join(job["output"], R.ASSETS)
    playing = [c for c, _, _ in chosen]
    images = {
        "sequence_activations.png": R.activations_png(seq["pred"], seq["ref"], CLASSES, seq["hop"] / sr,
                                                      "sequence: " + ", ".join(playing)),
        "noise_matrix.png": R.matrix_png(seq["noise"], CLASSES, CLASSES, "noise matrix (dB)",
                                         "instrument predicted", "instrument playing"),
        "leakage_matrix.png": R.matrix_png(seq["leakage"], CLASSES, CLASSES, "leakage matrix (dB)",
                                           "instrument playing", "instrument predicted"),
    }  # fmt: skip
    for name, png in images.items():
        storage.write_bytes(storage.join(assets, name), png)
    return {
        "noise": seq["noise"],
        "leakage": seq["leakage"],
        "images": list(images),
        "sequence": [
            {"class": c, "track_id": t.track_id, "start_s": s / sr, "seconds": n / sr}
            for c, t, s in chosen
        ],
    }


# ---------------------------------------------------------------- driver


def _gather(
    tasks: ItemTasks, done: list[dict[str, Any]], total: int, describe: Any
) -> list[dict[str, Any]]:
    """``done`` and the results of the track tasks as they finish, logged one line each.

    A track whose task ran out of time or died gets ``{"track_id", "error"}``.
    """
    results = list(done)
    for fin in tasks.gather():
        res = fin.value if fin.error is None else {"track_id": fin.item, "error": fin.error}
        results.append(res)
        state = f"FAILED {res['error']}" if "error" in res else describe(res)
        log.info("evaluate [%d/%d] %s: %s", len(results), total, res["track_id"], state)
    return sorted(results, key=lambda r: r["track_id"])


def _job_payload(
    cfg: EvaluateConfig, meta: dict[str, Any], checkpoint_dir: str, classes: list[str]
) -> dict[str, Any]:
    return {"checkpoint_dir": checkpoint_dir, "meta": meta, "classes": classes, "spec": cfg.eval_spec(),
            "fingerprint": fingerprint(cfg, meta, classes),
            "batch_size": cfg.batch_size, "threads": cfg.threads, "output": storage.normalize_uri(cfg.output),
            "report": cfg.report.model_dump(), "activation": cfg.activation.model_dump()}  # fmt: skip


def run(cfg: EvaluateConfig) -> dict[str, Any]:
    import ray

    t0 = time.monotonic()
    checkpoint_dir = ckpt.resolve(cfg.checkpoint)
    meta = load_checked(checkpoint_dir)
    task = meta.get("task", "separator")
    if task == "separator" and cfg.target and cfg.target != meta.get("target"):
        raise ConfigError(
            "target", f"the checkpoint separates '{meta.get('target')}', not '{cfg.target}'"
        )
    manifest = training_manifest(meta)
    tracks, listing_errors = select_tracks(cfg, manifest)
    log.info(
        "evaluate: %s checkpoint %s on %d %s tracks", task, checkpoint_dir, len(tracks), cfg.split
    )
    target = cfg.target or meta.get("target")
    classes = (
        ([target] + [c for c in cfg.classes if c != target])
        if task == "separator"
        else list(CLASSES)
    )
    job = _job_payload(cfg, meta, checkpoint_dir, classes)
    done = done_results(job["output"], tracks, job["fingerprint"])
    if done:
        log.info("evaluate: %d tracks done by an earlier run are reused", len(done))
    job_ref = ray.put(job)
    tasks = ItemTasks(cfg.item_timeout_s, "item_timeout_s", num_cpus=cfg.cpus_per_task)
    todo = [t for t in tracks if t.track_id not in done]
    if task == "separator":
        with_target = [t.track_id for t in tracks if target in t.classes]
        shown = set(with_target[: cfg.report.examples])  # the first tracks holding the target
        for t in todo:
            tasks.submit(t.track_id, separation_task, t, job_ref, t.track_id in shown)
        results = _gather(tasks, list(done.values()), len(tracks), _describe_separation)
        sequence = None
    else:
        plotted = {t.track_id for t in tracks[: cfg.activation.plots]}
        for t in todo:
            tasks.submit(t.track_id, activation_task, t, job_ref, t.track_id in plotted)
        results = _gather(tasks, list(done.values()), len(tracks), _describe_activation)
        sequence = _run_sequence(results, tracks, job_ref, tasks)
    nodes = sorted({r.pop(NODE_KEY) for r in results if NODE_KEY in r})  # this run's tasks only
    doc = metrics_document(
        cfg, meta, checkpoint_dir, task, results, sequence, listing_errors, time.monotonic() - t0
    )
    doc["tracks_selected"] = len(tracks)
    E.validate_metrics(doc, storage.join(storage.normalize_uri(cfg.output), METRICS_FILE))
    output = storage.normalize_uri(cfg.output)
    metrics_uri = storage.join(output, METRICS_FILE)
    storage.write_text(metrics_uri, json.dumps(doc, indent=1))
    page = R.write_report(
        output, build_report(doc, results, sequence, meta), title=f"sep evaluate: {task}"
    )
    return {**_summary(cfg, doc, metrics_uri, page), "nodes": nodes}


def load_checked(checkpoint_dir: str) -> dict[str, Any]:
    """The checkpoint's meta, after loading its model once here: a bad one fails early, once."""
    try:
        return ckpt.load_model(checkpoint_dir)[1]
    except SepError:
        raise
    except Exception as exc:  # a state dict that does not fit the model it names
        raise ckpt.CheckpointError(
            checkpoint_dir,
            f"cannot load the model ({type(exc).__name__}: {str(exc).splitlines()[0][:300]})",
        ) from exc


def _describe_separation(res: dict[str, Any]) -> str:
    parts = []
    for cls, scores in res["classes"].items():
        sdr = {m: scores[m]["instrument"]["sdr"] for m in E.METHODS if m in scores}
        parts.append(f"{cls} SDR " + ", ".join(f"{m} {v:.2f}" for m, v in sdr.items()))
    return "; ".join(parts) or "skipped (" + "; ".join(res["skipped"].values()) + ")"


def _describe_activation(res: dict[str, Any]) -> str:
    return "mean |error| " + ", ".join(f"{c} {v:.3f}" for c, v in res["errors"]["mae"].items()
                                        if res["errors"]["active_frames"][c])  # fmt: skip


def _run_sequence(
    results: list[dict[str, Any]], tracks: list, job_ref: Any, tasks: ItemTasks
) -> dict[str, Any] | None:
    """Pick each class's loudest solo stretch in the split and run the sequence task.

    When the task fails (or runs out of time) there is no sequence test, and ``results``
    gets a failed item ``sequence``.
    """
    by_id = {t.track_id: t for t in tracks}
    best: dict[str, tuple[float, str, int]] = {}
    for res in results:
        for cls, (start, db) in res.get("candidates", {}).items():
            if db > -50.0 and (cls not in best or db > best[cls][0]):
                best[cls] = (db, res["track_id"], start)
    chosen = [(cls, by_id[best[cls][1]], best[cls][2]) for cls in CLASSES if cls in best]
    if not chosen:
        log.warning("evaluate: no class has an audible solo stretch; no sequence test")
        return None
    tasks.submit("sequence", sequence_task, chosen, job_ref)
    (fin,) = tasks.gather()
    if fin.error is not None:
        log.warning("evaluate: sequence test FAILED %s", fin.error)
        results.append({"track_id": "sequence", "error": fin.error})
        return None
    log.info("evaluate: sequence of %s done", ", ".join(c for c, _, _ in chosen))
    return fin.value


def _separation_section(results: list[dict[str, Any]], classes: list[str]) -> dict[str, Any]:
    out = {}
    for cls in classes:
        tracks = [{"track_id": r["track_id"], "seconds": round(r["seconds"], 3), "scores": r["classes"][cls]}
                  for r in results if cls in r.get("classes", {})]  # fmt: skip
        if tracks:
            methods = [m for m in E.METHODS if m in tracks[0]["scores"]]
            out[cls] = {"methods": methods, "median": E.median_table(tracks), "tracks": tracks}
    return out


def _activation_section(
    results: list[dict[str, Any]], sequence: dict[str, Any] | None
) -> dict[str, Any]:
    ok = [r for r in results if "error" not in r]
    per_class = {}
    for cls in CLASSES:
        active = [r for r in ok if r["errors"]["active_frames"][cls] > 0]
        per_class[cls] = {"mae": E.nanmedian([r["errors"]["mae"][cls] for r in active]),
                          "error_db": E.nanmedian([r["errors"]["error_db"][cls] for r in active]),
                          "tracks": len(active)}  # fmt: skip
    tracks = [{"track_id": r["track_id"], "seconds": round(r["seconds"], 3), "mae": r["errors"]["mae"],
               "error_db": r["errors"]["error_db"]} for r in ok]  # fmt: skip
    return {"classes": list(CLASSES), "per_class": per_class, "tracks": tracks,
            "noise_matrix_db": sequence["noise"] if sequence else None,
            "leakage_matrix_db": sequence["leakage"] if sequence else None,
            "sequence": sequence["sequence"] if sequence else None}  # fmt: skip


def metrics_document(cfg: EvaluateConfig, meta: dict[str, Any], checkpoint_dir: str, task: str,
                     results: list[dict[str, Any]], sequence: dict[str, Any] | None, listing_errors: list[str],
                     wall: float) -> dict[str, Any]:  # fmt: skip
    """The content of metrics.json (see ``sepcore.evaluate.tracks.METRICS_SCHEMA``)."""
    ok = [r for r in results if "error" not in r and (task == "activation" or r["classes"])]
    failed = [{"item": r["track_id"], "error": r["error"]} for r in results if "error" in r]
    failed += [{"item": "listing", "error": e} for e in listing_errors]
    spec = cfg.eval_spec()
    audio = sum(r["seconds"] for r in ok)
    evaluated = sum(r["seconds"] * sum(len(s) for s in r.get("classes", {}).values()) for r in ok)
    eval_s = sum(r.get("eval_seconds", 0.0) for r in ok)
    target = (cfg.target or meta.get("target")) if task == "separator" else None
    classes = ([target] + [c for c in cfg.classes if c != target]) if task == "separator" else []
    separation = _separation_section(ok, classes) if task == "separator" else None
    doc = {
        "format": E.FORMAT, "task": task, "checkpoint": checkpoint_dir, "data": storage.normalize_uri(cfg.data),
        "split": cfg.split, "target": target, "sample_rate": int(meta["sample_rate"]),
        "feature": meta.get("feature"), "frames": meta.get("frames"),
        "evaluation": {"mode": spec.mode, "backend": spec.backend, "segment_seconds": spec.segment_s,
                       "window_seconds": spec.window_s, "hop_seconds": spec.hop_s},
        "tracks_evaluated": len(ok),
        "timing": {"audio_seconds": audio, "scored_audio_seconds": evaluated if task == "separator" else audio,
                   "eval_seconds": eval_s, "separate_seconds": sum(r.get("separate_seconds", 0.0) for r in ok),
                   "eval_seconds_per_audio_minute": eval_s / (evaluated / 60.0) if task == "separator" and evaluated
                   else (eval_s / (audio / 60.0) if audio else None), "wall_seconds": wall},
        "failed": failed,
        "skipped": {f"{r['track_id']}/{c}": why for r in results for c, why in r.get("skipped", {}).items()},
        "separation": separation,
        "activation": _activation_section(results, sequence) if task == "activation" else None,
    }  # fmt: skip
    return E.to_json(doc)


# ---------------------------------------------------------------- report


def _num(x: Any) -> float:
    return E.from_json_number(x)


def _median_tables(separation: dict[str, Any]) -> list[R.Table]:
    tables = []
    for cls, sec in separation.items():
        rows = []
        for method in sec["methods"]:
            for src in E.SOURCES:
                m = sec["median"][method][src]
                rows.append([f"{method}: {cls if src == 'instrument' else 'rest'}",
                             *(_num(m[k]) for k in ("sdr", "sir", "sar")), m["count"]])  # fmt: skip
        tables.append(
            R.Table(
                f"{cls}: median over tracks (dB)",
                ["", "SDR", "SIR", "SAR", "tracks"],
                rows,
                note="model: the checkpoint; irm / ibm: oracle ideal ratio / binary masks with the "
                "model's STFT (upper bounds); mixture: the mixture as the estimate (lower bound).",
            )
        )
    return tables


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
    for src in E.SOURCES:
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
    return R.Section("Training", [R.Image("loss_curve.png", R.loss_curve_png(history), title="loss curves"),
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
    return R.Text(f"Checkpoint {doc['checkpoint']}, data {doc['data']}, split '{doc['split']}': "
                  f"{doc['tracks_evaluated']} tracks, {tm['audio_seconds']:.1f} s of audio, "
                  f"{len(doc['failed'])} failed.\n\nBSS Eval ({ev['backend']}) on {mode}; "
                  f"{per_min if per_min is None else round(per_min, 2)} s of evaluation per minute of audio "
                  f"scored; wall time {tm['wall_seconds']:.1f} s.")  # fmt: skip


def build_report(doc: dict[str, Any], results: list[dict[str, Any]], sequence: dict[str, Any] | None,
                 meta: dict[str, Any]) -> list[R.Section]:  # fmt: skip
    """The report's sections for a finished evaluation."""
    sections = [R.Section("Summary", [_summary_text(doc)])]
    if doc["separation"]:
        sep = doc["separation"]
        sections += [R.Section("Median scores (seed 002's tables)", _median_tables(sep)),
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


def _summary(
    cfg: EvaluateConfig, doc: dict[str, Any], metrics_uri: str, page: str
) -> dict[str, Any]:
    figures: dict[str, Any] = {"eval_seconds_per_audio_minute": doc["timing"]["eval_seconds_per_audio_minute"],
                               "audio_seconds": round(doc["timing"]["audio_seconds"], 1)}  # fmt: skip
    for cls, sec in (doc["separation"] or {}).items():
        for method in sec["methods"]:
            for src in E.SOURCES:
                m = sec["median"][method][src]
                figures[f"{cls}/{method}/{src}"] = " / ".join(
                    f"{_num(m[k]):.2f}" for k in ("sdr", "sir", "sar")
                )
    total = doc["tracks_selected"]
    summary: dict[str, Any] = {
        "counts": {"tracks": total, "evaluated": doc["tracks_evaluated"], "failed": len(doc["failed"]),
                   "skipped": len(doc["skipped"])},
        "figures": figures, "failed": doc["failed"], "metrics": metrics_uri, "report": page,
    }  # fmt: skip
    if doc["failed"] and len(doc["failed"]) > cfg.max_failed_fraction * max(total, 1):
        summary["status"] = "failed"
        summary["error"] = f"{len(doc['failed'])} of {total} tracks failed"
    if doc["tracks_evaluated"] == 0:
        summary["status"] = "failed"
        summary["error"] = "no track could be evaluated"
    return summary


JOB = Job(
    "evaluate",
    EvaluateConfig,
    run,
    "Score a checkpoint with BSS Eval against oracle and mixture; report.",
)
main = JOB.main

if __name__ == "__main__":
    sys.exit(main())
