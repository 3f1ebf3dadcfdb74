"""tune: Ray Tune sweeps over FFT size, filters, silence ratio, augmentation, learning rate, levels, model
and the frame DNN's start (least squares or random).

    sep tune -c configs/tune_cpu_small.yaml
    sep tune -c configs/tune_frame_dnn_init.yaml     # LS vs random start, learning curves in one plot
    sep tune -c configs/tune_hourglass_gpu.yaml output=s3://bucket/tune variants=s3://bucket/variants

See docs/tune.md. A trial trains through :func:`ray_jobs.trainer.build_trainer`; the plain
parts (settings, variant keys, results, plots) are in :mod:`sepcore.tune`.
"""

from __future__ import annotations

import logging
import sys
import time
from typing import Any

from pydantic import model_validator

from ray_jobs import prepare, train
from ray_jobs.common import Job, JobConfig, run_job
from ray_jobs.trainer import build_datasets, build_trainer, fits_in_memory
from sepcore.batch import verdict
from sepcore.errors import ConfigError, SepError
from sepcore.io import storage
from sepcore.train import outputs as O
from sepcore.tune import config as C
from sepcore.tune import results as S
from sepcore.tune import sweep as T

log = logging.getLogger("sep.tune")

SWEEP_NAME = "sweep"


class TuneConfig(C.TuneSettings, JobConfig):
    @model_validator(mode="after")
    def _check(self) -> TuneConfig:
        C.check_tune(self, validate_prepare, validate_train)
        return self


def validate_prepare(settings: dict[str, Any]) -> prepare.PrepareConfig:
    return C.validated(prepare.PrepareConfig, "prepare", {**settings, "output": "unused"})


def validate_train(settings: dict[str, Any]) -> train.TrainConfig:
    return C.validated(train.TrainConfig, "train", {**settings, "data": "unused", "output": "unused"})


def prepare_variants(cfg: TuneConfig, output: str) -> tuple[dict[str, str], list[dict[str, Any]]]:
    """Prepare every data variant of the space not there yet: ``data_key -> URI`` and one record each."""
    uris, records = {}, []
    for key, uri, settings, resolved in S.variant_plan(cfg, output, validate_prepare):
        done = S.prepared(uri)
        if not done:
            log.info("tune: preparing data variant %s", uri)
            summary = run_job(prepare.JOB, prepare.PrepareConfig.model_validate({**settings, "output": uri}))
            if summary["status"] != "ok":
                raise SepError(f"{uri}: preparing the data variant failed: {summary.get('error')}")
        else:
            log.info("tune: data variant %s is prepared already", uri)
        uris[key] = uri
        records.append(S.variant_record(uri, resolved, not done))
    return uris, records


def shared_datasets(cfg: TuneConfig, variants: dict[str, str]) -> dict[str, Any]:
    """The splits of every variant that fits in the object store, read once for all trials."""
    tcfg, held, shared = validate_train(cfg.train), 0, {}
    for key, uri in variants.items():
        manifest = O.read_manifest(uri)
        if fits_in_memory(manifest, held):
            held += O.split_bytes(manifest)
            shared[key] = build_datasets(tcfg, manifest, cfg.resources.read_cpus, materialize=True)
    log.info("tune: %d of %d data variants held in the object store", len(shared), len(variants))
    return shared


def run_trial(point: dict[str, Any], sweep: dict[str, Any], datasets: dict[str, Any]) -> None:
    """Tune's function trainable: one point of the space, trained by the train job's loop."""
    import ray.tune

    trial_id = ray.tune.get_context().get_trial_id()
    out, values, key, settings = S.trial_settings(sweep, point, trial_id)
    tcfg = train.TrainConfig.model_validate({**settings, "data": sweep["variants"][key], "output": out})
    record, trained = S.read_record(out), False
    if not S.done_before(out, record, tcfg.optim):
        label = T.trial_label(values, sweep["swept"])
        record = S.start_trial(out, trial_id, label, values, tcfg.data, settings)
        before = O.latest_epoch(out)
        build_trainer(tcfg, sweep["read_cpus"], datasets.get(key), in_trial=True).fit()
        trained = O.latest_epoch(out) != before
    result = O.finish(out, tcfg.validation.metric)
    history = O.read_history(out)
    if not trained and history:  # finished before (a rerun): tell Tune its result, train nothing
        ray.tune.report({**history[-1], "epochs": len(history)})
    S.write_record(out, {**record, "status": "done", "finished": S.now(), "best_checkpoint": result["best_checkpoint"]})


def param_space(cfg: TuneConfig) -> dict[str, Any]:
    from ray import tune

    kinds = {"grid": tune.grid_search, "choice": tune.choice, "uniform": tune.uniform, "loguniform": tune.loguniform}
    return {dim: kinds[kind](*args) for dim, (kind, args) in C.space_spec(cfg.space, cfg.search.algorithm).items()}


def tune_config(cfg: TuneConfig, parallel: int) -> Any:
    """Tune's settings: the metric, the searcher (grid/random: Tune's variant generator; optuna:
    OptunaSearch in a concurrency limiter) and the scheduler (ASHA on epochs, or FIFO)."""
    from ray import tune
    from ray.tune.schedulers import ASHAScheduler, FIFOScheduler
    from ray.tune.search import BasicVariantGenerator, ConcurrencyLimiter

    tcfg = validate_train(cfg.train)
    metric, epochs, sc = tcfg.validation.metric, tcfg.optim.epochs, cfg.scheduler
    # (Tune ignores TuneConfig.max_concurrent_trials when given a generator: set it there.)
    search = BasicVariantGenerator(random_state=cfg.search.seed, max_concurrent=parallel)
    if cfg.search.algorithm == "optuna":
        try:
            from ray.tune.search.optuna import OptunaSearch

            search = ConcurrencyLimiter(OptunaSearch(seed=cfg.search.seed), max_concurrent=parallel)
        except (ImportError, AssertionError) as exc:
            raise ConfigError("search.algorithm", f"optuna is not installed (pip install optuna): {exc}") from exc
    asha = ASHAScheduler(time_attr="epochs", max_t=epochs, grace_period=min(sc.grace_period, epochs),
                         reduction_factor=sc.reduction_factor)  # fmt: skip
    return tune.TuneConfig(metric=metric, mode=T.metric_mode(metric), search_alg=search,
                           scheduler=FIFOScheduler() if sc.name == "fifo" else asha,
                           num_samples=cfg.search.num_samples, trial_dirname_creator=lambda t: str(t.trial_id))


def sweep_path(output: str) -> tuple[str, Any]:
    """Path and filesystem of the Tune experiment (``<output>/runs/sweep``)."""
    store = O.storage_args(output)
    return store["storage_path"].rstrip("/") + "/" + SWEEP_NAME, store.get("storage_filesystem")


def run_sweep(cfg: TuneConfig, output: str, variants: dict[str, str], resume: bool) -> Any:
    """Start the Tune experiment, or restore it (``resume``) from ``<output>/runs/sweep``."""
    import ray
    from ray import tune

    s, sweep = validate_train(cfg.train).scaling, T.sweep_settings(cfg, output, variants)
    trainable = tune.with_resources(
        tune.with_parameters(run_trial, sweep=sweep, datasets=shared_datasets(cfg, variants)),
        T.trial_resources(s, cfg.resources.driver_cpus))  # fmt: skip
    path, fs = sweep_path(output)
    if resume:
        log.info("tune: resuming the sweep in %s", path)
        return tune.Tuner.restore(path, trainable, resume_unfinished=True, resume_errored=True,
                                  storage_filesystem=fs).fit()  # fmt: skip
    demand = T.trial_demand(s, cfg.resources.driver_cpus, cfg.resources.read_cpus)
    parallel = T.concurrency(demand, ray.cluster_resources(), cfg.search.max_concurrent)
    log.info("tune: %d trials at a time (each %s)", parallel, demand)
    run_config = tune.RunConfig(name=SWEEP_NAME, verbose=1, **O.storage_args(output),
                                failure_config=tune.FailureConfig(max_failures=cfg.max_failures))  # fmt: skip
    return tune.Tuner(trainable, param_space=param_space(cfg), tune_config=tune_config(cfg, parallel),
                      run_config=run_config).fit()  # fmt: skip


def run(cfg: TuneConfig) -> dict[str, Any]:
    from ray import tune

    t0 = time.monotonic()
    output = storage.normalize_uri(cfg.output)
    path, fs = sweep_path(output)
    resume = bool(tune.Tuner.can_restore(path, storage_filesystem=fs))
    S.check_spec(output, cfg, resume)
    variant_uris, variants = prepare_variants(cfg, output)
    grid = run_sweep(cfg, output, variant_uris, resume)
    states, failed = S.tune_states(grid, T.base_values(cfg.prepare, cfg.train), cfg.space.swept())
    tcfg = validate_train(cfg.train)
    rows, curves, initial = S.trial_rows(output, tcfg, states)
    written = S.write_results(cfg, tcfg.validation.metric, output, rows, curves, variants, time.monotonic() - t0,
                              initial)  # fmt: skip
    S.check_finished(output, rows, len(grid))
    return {**S.summary(output, len(grid), rows, failed, variants, written),
            **verdict(len(failed), len(grid), cfg.max_failed_fraction, "trials")}


JOB = Job("tune", TuneConfig, run, "Sweep FFT size, filters, silence ratio and augmentation with Ray Tune.")
main = JOB.main

if __name__ == "__main__":
    sys.exit(main())
