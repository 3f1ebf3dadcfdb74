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

Output: ``metrics.json`` (schema in ``sepcore.evaluate.document.METRICS_SCHEMA`` and the
README), ``report.html`` with its files under ``report_files/``, ``summary.json`` last.
A finished track's result is kept in ``tracks/`` (a :class:`sepcore.io.ledger.Ledger`),
so a rerun of the same evaluation after a kill does only the rest.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from typing import Any, Literal

from pydantic import Field, model_validator

from ray_jobs import common
from ray_jobs.common import Job, JobConfig
from sepcore import batch
from sepcore.data.classes import CLASSES
from sepcore.errors import ConfigError
from sepcore.evaluate import config as C
from sepcore.evaluate import document as D
from sepcore.evaluate import report as ER
from sepcore.evaluate import tracks as T
from sepcore.evaluate.selection import select_tracks, training_manifest
from sepcore.io import storage
from sepcore.io.ledger import Ledger
from sepcore.models import checkpoint as ckpt
from sepcore.prepare.config import SplitConfig
from sepcore.report import html as R
from sepcore.units import seconds_to_samples

log = logging.getLogger("sep.evaluate")

METRICS_FILE = D.METRICS_FILE
#: Per-track results of a run, so that a rerun after a kill does only the rest.
DONE_FOLDER = "tracks"
#: Key of the Ray node id a task adds to its result (removed before the metrics).
NODE_KEY = "_node"


class EvaluateConfig(JobConfig, C.ScoringConfig):
    data: str = Field(description="URI of a Slakh-layout set (tracks with stems/ and metadata.yaml)")
    checkpoint: str = Field(description="checkpoint folder or training output (meaning its best/)")
    target: str | None = Field(None, description="class separated (default: the checkpoint's target)")
    classes: list[str] = Field(default_factory=list, description="more classes scored with the oracle and mixture rows only")
    split: Literal["train", "validation", "test", "all"] = Field("test", description="tracks evaluated")
    split_fractions: SplitConfig | None = Field(
        None, description="fractions for tracks without a split (default: the training data's, else 0.8/0.1/0.1)")
    seed: int | None = Field(None, description="seed of the split assignment (default: the training data's, else 0)")
    tracks: int | None = Field(None, ge=1, description="evaluate at most this many tracks (sorted by id)")
    batch_size: int = Field(8, ge=1, description="separator chunks per model call")
    cpus_per_task: float = Field(1.0, gt=0, description="CPUs reserved per track task")
    threads: int = Field(1, ge=1, description="torch threads per task")
    report: C.ReportConfig = Field(default_factory=C.ReportConfig)
    activation: C.ActivationEvalConfig = Field(default_factory=C.ActivationEvalConfig)
    max_failed_fraction: float = Field(0.5, ge=0, le=1, description="the job fails when more tracks than this fail")
    item_timeout_s: float = Field(
        7200.0, gt=0, description="time limit of one track's task (and of the sequence test), from its start: "
        "then it is cancelled and the track recorded as failed (a 15-minute track takes minutes)")

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


# ---------------------------------------------------------------- tasks (run in Ray workers)

_MODELS: dict[str, Any] = {}


def _model(checkpoint_dir: str, threads: int) -> Any:
    """The checkpoint's model, loaded once per worker process."""
    import torch

    torch.set_num_threads(threads)
    if checkpoint_dir not in _MODELS:
        _MODELS[checkpoint_dir] = ckpt.load_model(checkpoint_dir)[0]
    return _MODELS[checkpoint_dir]


def track_task(track: Any, job: dict[str, Any], shown: bool) -> dict[str, Any]:
    """One track's result (kept in the ledger), or ``{"track_id", "error"}`` so the others go on."""
    import ray

    node = {NODE_KEY: ray.get_runtime_context().get_node_id()}
    run_track = _separation if job["task"] == "separator" else _activation
    res = batch.guarded(track.uri, run_track, track, job, shown)
    if "error" in res:
        return {"track_id": track.track_id, "error": res["error"], **node}
    Ledger(job["done"], job["fingerprint"]).put(track.track_id, res)
    return {**res, **node}


def _separation(track: Any, job: dict[str, Any], example: bool) -> dict[str, Any]:
    model = _model(job["checkpoint_dir"], job["threads"])
    res = T.evaluate_separation(track, job["meta"], job["scoring"], model, job["classes"], job["batch_size"])
    signals = res.pop("signals")
    if example and signals is not None:
        res["example"] = ER.write_example(job["output"], track.track_id, signals, job["sr"], job["classes"][0],
                                          job["report"])  # fmt: skip
    return res


def _activation(track: Any, job: dict[str, Any], plot: bool) -> dict[str, Any]:
    t0 = time.perf_counter()
    model = _model(job["checkpoint_dir"], job["threads"])
    res = T.evaluate_activations(track, job["meta"], model, job["activation"]["batch_size"])
    errors = {key: dict(zip(CLASSES, v.tolist(), strict=True)) for key, v in res["errors"].items()}
    candidates = T.solo_candidates(res["class_sums"], job["sr"], job["activation"]["sequence_seconds"])
    out = {"track_id": track.track_id, "seconds": res["seconds"], "errors": errors, "candidates": candidates,
           "eval_seconds": time.perf_counter() - t0}  # fmt: skip
    if plot:
        out["plot"] = ER.write_activation_plot(job["output"], track.track_id, res, job["sr"])
    return out


def sequence_task(chosen: list[tuple[str, Any, int]], job: dict[str, Any]) -> dict[str, Any]:
    """Seed 001's sequence test on the chosen ``(class, track, start sample)`` solo parts."""
    sr, seconds = job["sr"], job["activation"]["sequence_seconds"]
    parts = T.solo_parts(chosen, job["meta"], seconds)
    model = _model(job["checkpoint_dir"], job["threads"])
    seq = T.activation_sequence(parts, job["meta"], model, job["activation"]["batch_size"])
    images = ER.write_sequence_images(job["output"], seq, [c for c, _ in parts], sr)
    n = seconds_to_samples(seconds, sr)
    return {"noise": seq["noise"], "leakage": seq["leakage"], "images": images,
            "sequence": [{"class": c, "track_id": t.track_id, "start_s": s / sr, "seconds": n / sr}
                         for c, t, s in chosen]}  # fmt: skip


# ---------------------------------------------------------------- driver


def _gather(tasks: common.ItemTasks, done: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    """``done`` and the results of the track tasks as they finish, one progress line each."""
    progress, results = batch.Progress("evaluate", len(tasks), len(done), unit="track"), list(done.values())
    for fin in tasks.gather():
        res = fin.value if fin.error is None else {"track_id": fin.item, "error": fin.error}
        results.append(res)
        failed = "error" in res
        progress.update(res["track_id"], f"FAILED {res['error']}" if failed else T.describe(res), failed)
    progress.close()
    return sorted(results, key=lambda r: r["track_id"])


def _run_sequence(results: list[dict[str, Any]], tracks: list, job_ref: Any, tasks: common.ItemTasks) -> dict | None:
    """The sequence test over each class's loudest solo; when it fails, ``results`` gets a failed ``sequence``."""
    chosen = T.choose_solos(results, tracks)
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


def _job(cfg: EvaluateConfig, task: str, meta: dict[str, Any], checkpoint_dir: str, classes: list[str]) -> dict:
    """What every task needs; ``fingerprint``: what a track's result depends on."""
    output = storage.normalize_uri(cfg.output)
    settings = {"model": meta.get("model_sha256"), "scoring": cfg.described(), "classes": classes,
                "report": cfg.report.model_dump(), "activation": cfg.activation.model_dump(),
                "data": storage.normalize_uri(cfg.data)}  # fmt: skip
    return {"task": task, "checkpoint_dir": checkpoint_dir, "meta": meta, "sr": int(meta["sample_rate"]),
            "classes": classes, "scoring": cfg,
            "fingerprint": batch.settings_fingerprint(settings), "done": storage.join(output, DONE_FOLDER),
            "batch_size": cfg.batch_size, "threads": cfg.threads, "output": output,
            "report": cfg.report.model_dump(), "activation": cfg.activation.model_dump()}  # fmt: skip


def run(cfg: EvaluateConfig) -> dict[str, Any]:
    import ray

    t0 = time.monotonic()
    checkpoint_dir = ckpt.resolve(cfg.checkpoint)
    meta = T.load_checked(checkpoint_dir)
    task = meta.get("task", "separator")
    if task == "separator" and cfg.target and cfg.target != meta.get("target"):
        raise ConfigError("target", f"the checkpoint separates '{meta.get('target')}', not '{cfg.target}'")
    manifest = training_manifest(meta)
    tracks, listing_errors = select_tracks(cfg.data, cfg.split, manifest, cfg.split_fractions, cfg.seed, cfg.tracks)
    log.info("evaluate: %s checkpoint %s on %d %s tracks", task, checkpoint_dir, len(tracks), cfg.split)
    target = cfg.target or meta.get("target")
    separator = task == "separator"
    classes = [target] + [c for c in cfg.classes if c != target] if separator else list(CLASSES)
    job = _job(cfg, task, meta, checkpoint_dir, classes)
    ledger = Ledger(job["done"], job["fingerprint"])
    done = {t: r for t, r in ledger.records().items() if t in {x.track_id for x in tracks}}
    job_ref = ray.put(job)
    tasks = common.ItemTasks(cfg.item_timeout_s, "item_timeout_s", num_cpus=cfg.cpus_per_task)
    with_target = [t.track_id for t in tracks if target in t.classes]
    shown = set(with_target[: cfg.report.examples]) if separator else {t.track_id for t in tracks[: cfg.activation.plots]}
    for t in tracks:
        if t.track_id not in done:
            tasks.submit(t.track_id, track_task, t, job_ref, t.track_id in shown)
    results = _gather(tasks, done)
    sequence = None if separator else _run_sequence(results, tracks, job_ref, tasks)
    nodes = sorted({r.pop(NODE_KEY) for r in results if NODE_KEY in r})  # this run's tasks only
    head = {"task": task, "checkpoint": checkpoint_dir, "data": storage.normalize_uri(cfg.data), "split": cfg.split,
            "target": target, "sample_rate": meta["sample_rate"], "feature": meta.get("feature"),
            "frames": meta.get("frames"), "tracks_selected": len(tracks)}  # fmt: skip
    doc = D.metrics_document(head, cfg.described(), classes, results, sequence, listing_errors, time.monotonic() - t0)
    metrics_uri = storage.join(job["output"], METRICS_FILE)
    D.validate_metrics(doc, metrics_uri)
    storage.write_text(metrics_uri, json.dumps(doc, indent=1))
    page = R.write_report(job["output"], ER.build_report(doc, results, sequence, meta), title=f"sep evaluate: {task}")
    summary = {**D.summary_entries(doc), "failed": doc["failed"], "metrics": metrics_uri, "report": page}
    summary.update(batch.verdict(len(doc["failed"]), len(tracks), cfg.max_failed_fraction, "tracks"))
    if doc["tracks_evaluated"] == 0:
        summary.update(status="failed", error="no track could be evaluated")
    return {**summary, "nodes": nodes}


JOB = Job("evaluate", EvaluateConfig, run, "Score a checkpoint with BSS Eval against oracle and mixture; report.")
main = JOB.main

if __name__ == "__main__":
    sys.exit(main())
