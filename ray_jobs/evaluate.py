"""evaluate: score a checkpoint on a Slakh-layout set; metrics.json and an HTML report.

    sep evaluate -c configs/evaluate_demo.yaml
    sep evaluate -c configs/evaluate_activation_demo.yaml

See docs/evaluate.md. One Ray task per track (:mod:`sepcore.evaluate.tracks` does the
work; its result is kept in a :class:`sepcore.io.ledger.Ledger` under ``tracks/``); for
activation models one more task runs the sequence test. The driver gathers the results
and writes the outputs (:mod:`sepcore.evaluate.job`, ``document``, ``report``).
"""

from __future__ import annotations

import json
import logging
import sys
import time
from typing import Any

from ray_jobs import common
from ray_jobs.common import Job, JobConfig
from sepcore import batch
from sepcore.errors import ConfigError
from sepcore.evaluate import compare as EC
from sepcore.evaluate import config as C
from sepcore.evaluate import document as D
from sepcore.evaluate import job as J
from sepcore.evaluate import report as ER
from sepcore.evaluate import tracks as T
from sepcore.evaluate.selection import select_tracks, training_manifest
from sepcore.io import storage
from sepcore.io.ledger import Ledger
from sepcore.models import checkpoint as ckpt
from sepcore.report import html as R

log = logging.getLogger("sep.evaluate")

METRICS_FILE = D.METRICS_FILE
DONE_FOLDER = J.DONE_FOLDER
#: Key of the Ray node id a task adds to its result (removed before the metrics).
NODE_KEY = "_node"


class EvaluateConfig(C.EvaluateKeys, JobConfig, C.ScoringConfig):
    """The job's keys (:class:`sepcore.evaluate.config.EvaluateKeys`), in --help after the scoring and common ones."""


# ---------------------------------------------------------------- tasks (run in Ray workers)

_MODELS: dict[str, Any] = {}
_SEPARATORS: dict[tuple[str, str], Any] = {}
_ROUTERS: dict[tuple[str, tuple[str, ...]], Any] = {}


def _model(checkpoint_dir: str, threads: int) -> Any:
    """The checkpoint's model, loaded once per worker process."""
    import torch

    torch.set_num_threads(threads)
    if checkpoint_dir not in _MODELS:
        _MODELS[checkpoint_dir] = ckpt.load_model(checkpoint_dir)[0]
    return _MODELS[checkpoint_dir]


def _separator(row: Any, batch_size: int) -> Any:
    """A row's separator, loaded once per worker process (kept by reference and settings: a
    rerun with other options or weights loads anew)."""
    key = (row.ref, json.dumps([row.fingerprint(), batch_size], sort_keys=True, default=str))
    if key not in _SEPARATORS:
        _SEPARATORS[key] = EC.build_separator(row, batch_size)
    return _SEPARATORS[key]


def _rows(job: dict[str, Any]) -> list[tuple[Any, Any]]:
    """``(row, separator)`` of the job's rows, each separator loaded once per worker process."""
    return [(row, _separator(row, job["batch_size"])) for row in job["rows"]]


def _routes(job: dict[str, Any]) -> list[tuple[Any, Any]]:
    """``(spec, router)`` of the job's routed rows, each router loaded once per worker process
    (kept by URI and styles); their group models load when a track first goes to them."""
    from sepcore.classify.router import load_router

    out = []
    for spec in job["routes"]:
        key = (spec.router, spec.styles)
        if key not in _ROUTERS:
            _ROUTERS[key] = load_router(spec.router)
        out.append((spec, _ROUTERS[key]))
    return out


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
    import torch

    torch.set_num_threads(job["threads"])
    model = None if job["main_is_row"] else _model(job["checkpoint_dir"], job["threads"])
    res = T.evaluate_separation(track, job["meta"], job["scoring"], model, job["classes"], job["batch_size"],
                                job["stems"], job["wiener_iterations"], _rows(job), job["alpha"],
                                job["baselines"], _routes(job), lambda row: _separator(row, job["batch_size"]))  # fmt: skip
    signals = res.pop("signals")
    if example and signals is not None:
        res["example"] = ER.write_example(job["output"], track.track_id, signals, job["sr"], job["classes"][0],
                                          job["report"])  # fmt: skip
    return res


def _activation(track: Any, job: dict[str, Any], plot: bool) -> dict[str, Any]:
    t0 = time.perf_counter()
    model = _model(job["checkpoint_dir"], job["threads"])
    res = T.evaluate_activations(track, job["meta"], model, job["activation"]["batch_size"])
    out = J.activation_result(track.track_id, res, job["sr"], job["activation"]["sequence_seconds"],
                              time.perf_counter() - t0)  # fmt: skip
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
    return J.sequence_result(chosen, seq, images, sr, seconds)


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


def run(cfg: EvaluateConfig) -> dict[str, Any]:
    import ray

    t0 = time.monotonic()
    main_row, compare = J.plan_rows(cfg)  # loads each Demucs model and compared checkpoint once
    checkpoint_dir, meta = J.main_checkpoint(cfg, main_row)
    task = meta.get("task", "separator")
    separator = task == "separator"
    if compare and not separator:
        raise ConfigError("compare", f"{checkpoint_dir} is an activation model: nothing to compare with")
    routes = J.plan_routed(cfg, task)  # loads each router and group model once; raises ConfigError
    rows = ([main_row] if main_row else []) + compare
    modelled, wiener = J.main_classes(cfg, meta, main_row) if separator else ([], None)  # raises ConfigError
    J.check_alpha(cfg, task, meta, main_row)  # raises ConfigError
    modelled += J.compared_classes(compare, cfg.target, modelled, routes)
    manifest = training_manifest(meta)
    tracks, listing_errors = select_tracks(cfg.data, cfg.split, manifest, cfg.split_fractions, cfg.seed, cfg.tracks)
    log.info("evaluate: %s checkpoint %s on %d %s tracks", task, checkpoint_dir, len(tracks), cfg.split)
    target = cfg.target or meta.get("target")
    classes = J.run_classes(separator, modelled, cfg.classes)
    job = J.task_settings(cfg, task, meta, checkpoint_dir, classes, wiener, rows, routes)
    ledger = Ledger(job["done"], job["fingerprint"])
    done = {t: r for t, r in ledger.records().items() if t in {x.track_id for x in tracks}}
    job_ref = ray.put(job)
    tasks = common.ItemTasks(cfg.item_timeout_s, "item_timeout_s", num_cpus=cfg.cpus_per_task)
    shown = J.shown_tracks(cfg, tracks, separator, classes[0] if separator else None)
    for t in tracks:
        if t.track_id not in done:
            tasks.submit(t.track_id, track_task, t, job_ref, t.track_id in shown)
    results = _gather(tasks, done)
    sequence = None if separator else _run_sequence(results, tracks, job_ref, tasks)
    nodes = sorted({r.pop(NODE_KEY) for r in results if NODE_KEY in r})  # this run's tasks only
    head = J.run_head(cfg, task, checkpoint_dir, target, meta, len(tracks), wiener, rows, job["baselines"], routes)
    doc = D.metrics_document(head, cfg.described(), classes, results, sequence, listing_errors, time.monotonic() - t0)
    metrics_uri = storage.join(job["output"], METRICS_FILE)
    D.validate_metrics(doc, metrics_uri)
    storage.write_text(metrics_uri, json.dumps(doc, indent=1))
    page = R.write_report(job["output"], ER.build_report(doc, results, sequence, meta), title=f"sep evaluate: {task}")
    summary = J.run_summary(doc, metrics_uri, page, len(tracks), cfg.max_failed_fraction)
    return {**summary, "nodes": nodes}


JOB = Job("evaluate", EvaluateConfig, run, "Score a checkpoint with BSS Eval against oracle and mixture; report.")
main = JOB.main

if __name__ == "__main__":
    sys.exit(main())
