"""tune: Ray Tune sweeps over FFT size, filters, silence ratio, learning rate, levels, model.

    sep tune -c configs/tune_cpu_small.yaml
    sep tune -c configs/tune_hourglass_gpu.yaml output=s3://bucket/tune variants=s3://bucket/variants

1. **Data variants.** Each distinct (``n_fft``, silence) pair of the space is prepared once
   by the prepare job into ``<variants>/<key>/`` (the key hashes every setting that shapes
   the data) and reused by every trial and later sweeps; a variant small enough is read
   once into the object store and shared by its trials.
2. **Trials.** One Tune trial per point (grid, random or Optuna), trained with the train
   job's settings by :func:`ray_jobs.trainer.build_trainer`: one worker in the trial's own
   process, more in a nested ``TorchTrainer``. Every epoch reaches Tune (ASHA stops weak
   trials); a trial writes a train output and ``trial.json`` to ``<output>/trials/<id>/``.
3. **Outputs.** ``results.csv``/``.parquet``, ``best/`` (``<output>`` is a ``checkpoint``
   for separate and evaluate), ``best_train.yaml``, plots, ``report.html``, ``summary.json``.
4. **Resume.** The same command again restores the experiment in ``<output>/runs/sweep``:
   finished trials stay, unfinished ones continue from their last checkpoint.
"""

from __future__ import annotations

import logging
import sys
import time
from typing import Any

from pydantic import Field, model_validator

from ray_jobs import prepare, train
from ray_jobs.common import Job, JobConfig, run_job
from ray_jobs.trainer import build_datasets, build_trainer, fits_in_memory, storage_args
from sepcore.batch import verdict
from sepcore.errors import ConfigError, SepError
from sepcore.io import storage
from sepcore.train import outputs as O
from sepcore.tune import config as C
from sepcore.tune import results as S
from sepcore.tune import sweep as T

log = logging.getLogger("sep.tune")

SWEEP_NAME = "sweep"
SEPARATORS = tuple(T.SIZE_KEYS)  # the model families tune sweeps


class TuneConfig(JobConfig):
    prepare: dict[str, Any] = Field(description="keys of sep prepare (not output): the data of every variant")
    train: dict[str, Any] = Field(default_factory=dict, description="keys of sep train (not data, output)")
    model_configs: dict[str, dict[str, Any]] = Field(
        default_factory=dict, description="base constructor arguments of other model families in space.model"
    )
    variants: str | None = Field(None, description="where data variants are prepared (default <output>/variants)")
    hop_fraction: float = Field(0.25, gt=0, le=1, description="hop = n_fft x hop_fraction for swept FFT sizes")
    space: C.SpaceConfig = Field(default_factory=C.SpaceConfig)
    search: C.SearchConfig = Field(default_factory=C.SearchConfig)
    scheduler: C.SchedulerConfig = Field(default_factory=C.SchedulerConfig)
    resources: C.ResourcesConfig = Field(default_factory=C.ResourcesConfig)
    max_failures: int = Field(1, ge=0, description="retries of a failed trial (it resumes from its checkpoint)")
    max_failed_fraction: float = Field(0.5, ge=0, le=1, description="fail the job when more trials than this fail")

    @model_validator(mode="after")
    def _check(self) -> TuneConfig:
        for section, key in (("prepare", "output"), ("train", "data"), ("train", "output")):
            if key in getattr(self, section):
                raise ValueError(f"{section}.{key} is set by the sweep; leave it out")
        if self.search.algorithm == "grid" and isinstance(self.space.lr, C.RangeConfig):
            raise ValueError("space.lr: grid search needs a list of values, not a range")
        for n_fft, silence in self.space.data_points():
            validate_prepare(T.variant_settings(self.prepare, n_fft, silence, self.hop_fraction))
        for values in self.space.size_points():
            tcfg = validate_train(T.train_settings(self.train, values, self.model_configs))
            if tcfg.model.name not in SEPARATORS:
                raise ValueError(f"train.model.name: tune sweeps separators {SEPARATORS}, not {tcfg.model.name}")
        if validate_train(self.train).validation.metric == "val_sdr" and self.prepare.get("target") == "random_mix":
            raise ValueError("train.validation.metric val_sdr needs an instrument target; use val_loss")
        return self


def validate_prepare(settings: dict[str, Any]) -> prepare.PrepareConfig:
    return C.validated(prepare.PrepareConfig, "prepare", {**settings, "output": "unused"})


def validate_train(settings: dict[str, Any]) -> train.TrainConfig:
    return C.validated(train.TrainConfig, "train", {**settings, "data": "unused", "output": "unused"})


def prepare_variants(cfg: TuneConfig, output: str) -> tuple[dict[str, str], list[dict[str, Any]]]:
    """Prepare every data variant of the space not there yet: ``data_key -> URI`` and one record each."""
    root = storage.normalize_uri(cfg.variants) if cfg.variants else storage.join(output, "variants")
    uris, records = {}, []
    for n_fft, silence in cfg.space.data_points():
        settings = T.absolute_sources(T.variant_settings(cfg.prepare, n_fft, silence, cfg.hop_fraction))
        resolved = validate_prepare(settings)
        uri = storage.join(root, T.variant_key(resolved.model_dump(mode="json")))
        done = S.prepared(uri)
        if not done:
            log.info("tune: preparing data variant %s", uri)
            summary = run_job(prepare.JOB, prepare.PrepareConfig.model_validate({**settings, "output": uri}))
            if summary["status"] != "ok":
                raise SepError(f"{uri}: preparing the data variant failed: {summary.get('error')}")
        else:
            log.info("tune: data variant %s is prepared already", uri)
        uris[T.data_key(n_fft, silence)] = uri
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
    out = S.trial_output(sweep["output"], trial_id)
    values = {**sweep["base"], **point}
    key = T.data_key(values.get("n_fft") if "n_fft" in point else None,
                     values.get("silence") if "silence" in point else "base")  # fmt: skip
    settings = T.train_settings(sweep["train"], values, sweep["model_configs"])
    tcfg = train.TrainConfig.model_validate({**settings, "data": sweep["variants"][key], "output": out})
    record, trained = S.read_record(out), False
    # Done before: the marker says so, or the scheduler ended the trial at its last epoch
    # before the marker was written. Either way it is not trained again.
    if record.get("status") != "done" and not O.trained_out(out, tcfg.optim):
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

    pick = tune.grid_search if cfg.search.algorithm == "grid" else tune.choice
    space: dict[str, Any] = {}
    for dim in cfg.space.swept():
        values = getattr(cfg.space, dim)
        if isinstance(values, C.RangeConfig):
            space[dim] = (tune.loguniform if values.log else tune.uniform)(values.low, values.high)
        else:
            space[dim] = pick(list(values))
    return space


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
    store = storage_args(output)
    return store["storage_path"].rstrip("/") + "/" + SWEEP_NAME, store.get("storage_filesystem")


def run_sweep(cfg: TuneConfig, output: str, variants: dict[str, str], resume: bool) -> Any:
    """Start the Tune experiment, or restore it (``resume``) from ``<output>/runs/sweep``."""
    import ray
    from ray import tune

    tcfg = validate_train(cfg.train)
    sweep = {"output": output, "variants": variants, "train": cfg.train, "model_configs": cfg.model_configs,
             "base": T.base_values(cfg.prepare, cfg.train), "swept": cfg.space.swept(),
             "read_cpus": cfg.resources.read_cpus}  # fmt: skip
    s = tcfg.scaling  # a one-worker trial trains in its own process: it holds the worker's resources
    own = {"CPU": s.cpus_per_worker, **({"GPU": s.gpus_per_worker} if s.use_gpu else {})}
    trainable = tune.with_resources(
        tune.with_parameters(run_trial, sweep=sweep, datasets=shared_datasets(cfg, variants)),
        own if s.num_workers == 1 else {"CPU": cfg.resources.driver_cpus})  # fmt: skip
    path, fs = sweep_path(output)
    if resume:
        log.info("tune: resuming the sweep in %s", path)
        return tune.Tuner.restore(path, trainable, resume_unfinished=True, resume_errored=True,
                                  storage_filesystem=fs).fit()  # fmt: skip
    demand = T.trial_demand(s, cfg.resources.driver_cpus, cfg.resources.read_cpus)
    parallel = T.concurrency(demand, ray.cluster_resources(), cfg.search.max_concurrent)
    log.info("tune: %d trials at a time (each %s)", parallel, demand)
    run_config = tune.RunConfig(name=SWEEP_NAME, verbose=1, **storage_args(output),
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
    rows, curves = S.trial_rows(output, tcfg, states)
    # From the trials' own records (a trial restored from an earlier run's experiment state
    # lacks Tune's ``done`` flag even when it had finished); trials never started have none.
    unfinished = sum(1 for r in rows if r["status"] == "unfinished") + max(0, len(grid) - len(rows))
    written = S.write_results(cfg, tcfg.validation.metric, output, rows, curves, variants, time.monotonic() - t0)
    if unfinished > 0:
        raise SepError(f"{output}: the sweep stopped with {unfinished} unfinished trials; "
                       "run the same command again to resume it")  # fmt: skip
    return {**S.summary(output, len(grid), rows, failed, variants, written),
            **verdict(len(failed), len(grid), cfg.max_failed_fraction, "trials")}


JOB = Job("tune", TuneConfig, run, "Sweep FFT size, filters and silence ratio with Ray Tune.")
main = JOB.main

if __name__ == "__main__":
    sys.exit(main())
