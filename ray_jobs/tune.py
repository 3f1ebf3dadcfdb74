"""tune: Ray Tune sweeps over FFT size, filters, silence ratio, learning rate, levels, model.

    sep tune -c configs/tune_cpu_small.yaml
    sep tune -c configs/tune_hourglass_gpu.yaml output=s3://bucket/tune variants=s3://bucket/variants

1. **Data variants.** Every distinct (``n_fft``, silence) pair of the search space is
   prepared once with the prepare job's code into ``<variants>/<key>/`` (the key names
   the variant and hashes every setting that shapes the data); a variant whose
   ``summary.json`` is there is reused, by every trial and by later sweeps.
2. **Trials.** One Tune trial per point of the space (grid, random or Optuna); each
   trial builds the train job's configuration for its values and runs the train
   job's ``train_loop`` in a nested Ray Train ``TorchTrainer`` (the Tune + Train V2
   pattern) on ``train.scaling`` workers. Every epoch's metrics reach Tune through a
   ``TuneReportCallback``; ASHA stops weak trials on the validation metric. A trial
   writes its checkpoints, ``best/``, ``metrics.jsonl`` and ``trial.json`` under
   ``<output>/trials/<trial id>/``.
3. **Outputs.** ``results.csv`` and ``results.parquet`` (one row per trial), ``best/``
   (the best trial's checkpoint: ``<output>`` is itself a ``checkpoint`` for separate
   and evaluate), ``best_train.yaml`` (a ``sep train`` config of the winner), plots, and
   ``report.html``; ``summary.json`` last.
4. **Resume.** The Tune experiment lives in ``<output>/runs/sweep``; the same command
   run again restores it, keeps finished trials, and continues unfinished trials from
   their last checkpoint. A trial already finished is never trained again.
"""

from __future__ import annotations

import copy
import datetime as dt
import json
import logging
import math
import sys
import time
from typing import Any, Literal

import yaml
from pydantic import Field, ValidationError, field_validator, model_validator

from ray_jobs import prepare, train
from ray_jobs.common import SUMMARY, Job, JobConfig, run_job
from sepcore.config import Config, changed_keys
from sepcore.errors import ConfigError, SepError
from sepcore.io import storage
from sepcore.models import checkpoint as ckpt
from sepcore.report import html as R
from sepcore.tune import sweep as T

log = logging.getLogger("sep.tune")

TRIAL_FILE = "trial.json"
SPEC_FILE = "tune_spec.json"
SWEEP_NAME = "sweep"
SEPARATORS = ("hourglass", "blstm")


class RangeConfig(Config):
    low: float = Field(gt=0)
    high: float = Field(gt=0)
    log: bool = Field(True, description="sample on a log scale")


class SpaceConfig(Config):
    """Values swept; a dimension left out keeps the value of the prepare/train settings."""

    model: list[Literal["hourglass", "blstm"]] | None = Field(None, description="model families")
    n_fft: list[int] | None = Field(None, description="FFT sizes (hop = n_fft x hop_fraction)")
    silence: list[float | None] | None = Field(
        None, description="silence adjustment: off or a target audio ratio, e.g. [off, 0.5, 0.7, 0.9]"
    )
    filters: list[int] | None = Field(None, description="hourglass filters F (BLSTM: hidden units)")
    levels: list[int] | None = Field(None, description="hourglass levels S (BLSTM: layers)")
    lr: list[float] | RangeConfig | None = Field(None, description="learning rates, or {low, high, log}")

    @field_validator("silence", mode="before")
    @classmethod
    def _off(cls, value: Any) -> Any:
        if isinstance(value, list):  # YAML reads a bare off as false
            return [None if v is False or v is None or (isinstance(v, str) and v.lower() == "off") else v
                    for v in value]  # fmt: skip
        return value

    @model_validator(mode="after")
    def _check(self) -> SpaceConfig:
        for dim in T.DIMENSIONS:
            values = getattr(self, dim)
            if isinstance(values, list) and not values:
                raise ValueError(f"space.{dim}: give at least one value (or leave it out)")
        for ratio in self.silence or []:
            if ratio is not None and not 0 < ratio <= 1:
                raise ValueError(f"space.silence: a ratio must be in (0, 1], got {ratio}")
        if isinstance(self.lr, RangeConfig) and self.lr.low > self.lr.high:
            raise ValueError("space.lr: low exceeds high")
        return self

    def swept(self) -> list[str]:
        return [d for d in T.DIMENSIONS if getattr(self, d) is not None]


class SearchConfig(Config):
    algorithm: Literal["grid", "random", "optuna"] = Field(
        "grid", description="grid (every combination), random, or optuna (Bayesian; pip install optuna)"
    )
    num_samples: int = Field(1, ge=1, description="grid: repeats of the grid; random/optuna: trials")
    max_concurrent: int | None = Field(None, ge=1, description="trials at once (default: what resources allow)")
    seed: int = Field(0, description="seed of the random and optuna searchers")


class SchedulerConfig(Config):
    name: Literal["asha", "fifo"] = Field("asha", description="asha stops weak trials early; fifo runs all to the end")
    grace_period: int = Field(2, ge=1, description="asha: epochs every trial runs before it can be stopped")
    reduction_factor: float = Field(2.0, gt=1, description="asha: keep 1/reduction_factor at each rung")


class ResourcesConfig(Config):
    driver_cpus: float = Field(0.01, gt=0, description="CPUs of a trial's driver (it waits on its trainer)")
    read_cpus: float = Field(0.25, gt=0, description="CPUs per task reading a trial's shards")


class TuneConfig(JobConfig):
    prepare: dict[str, Any] = Field(description="keys of sep prepare (not output): the data of every variant")
    train: dict[str, Any] = Field(default_factory=dict, description="keys of sep train (not data, output)")
    model_configs: dict[str, dict[str, Any]] = Field(
        default_factory=dict, description="base constructor arguments of other model families in space.model"
    )
    variants: str | None = Field(None, description="where data variants are prepared (default <output>/variants)")
    hop_fraction: float = Field(0.25, gt=0, le=1, description="hop = n_fft x hop_fraction for swept FFT sizes")
    space: SpaceConfig = Field(default_factory=SpaceConfig)
    search: SearchConfig = Field(default_factory=SearchConfig)
    scheduler: SchedulerConfig = Field(default_factory=SchedulerConfig)
    resources: ResourcesConfig = Field(default_factory=ResourcesConfig)
    max_failures: int = Field(1, ge=0, description="retries of a failed trial (it resumes from its checkpoint)")
    max_failed_fraction: float = Field(0.5, ge=0, le=1, description="fail the job when more trials than this fail")

    @model_validator(mode="after")
    def _check(self) -> TuneConfig:
        for section, keys in (("prepare", ("output",)), ("train", ("data", "output"))):
            for key in keys:
                if key in getattr(self, section):
                    raise ValueError(f"{section}.{key} is set by the sweep; leave it out")
        if self.search.algorithm == "grid" and isinstance(self.space.lr, RangeConfig):
            raise ValueError("space.lr: grid search needs a list of values, not a range")
        for n_fft, silence in data_points(self):
            validate_prepare(T.variant_settings(self.prepare, n_fft, silence, self.hop_fraction))
        for values in size_points(self):
            tcfg = validate_train(T.train_settings(self.train, values, self.model_configs))
            if tcfg.model.name not in SEPARATORS:
                raise ValueError(f"train.model.name: tune sweeps separators {SEPARATORS}, not {tcfg.model.name}")
        tcfg = validate_train(self.train)
        if tcfg.validation.metric == "val_sdr" and self.prepare.get("target") == "random_mix":
            raise ValueError("train.validation.metric val_sdr needs an instrument target; use val_loss")
        return self


def _nested_error(section: str, exc: ValidationError | ValueError) -> ValueError:
    if isinstance(exc, ValidationError):
        err = exc.errors()[0]
        key = ".".join(str(p) for p in err["loc"])
        what = "unknown key" if err["type"] == "extra_forbidden" else err["msg"]
        return ValueError(f"{section}.{key}: {what}" if key else f"{section}: {what}")
    return ValueError(f"{section}: {exc}")


def validate_prepare(settings: dict[str, Any]) -> prepare.PrepareConfig:
    try:
        return prepare.PrepareConfig.model_validate({**settings, "output": "unused"})
    except (ValidationError, ValueError) as exc:
        raise _nested_error("prepare", exc) from None


def validate_train(settings: dict[str, Any]) -> train.TrainConfig:
    try:
        return train.TrainConfig.model_validate({**settings, "data": "unused", "output": "unused"})
    except (ValidationError, ValueError) as exc:
        raise _nested_error("train", exc) from None


def data_points(cfg: TuneConfig) -> list[tuple[int | None, float | None | str]]:
    """Every (n_fft, silence) pair the space can reach; ``"base"``: silence not swept."""
    ffts: list[int | None] = list(cfg.space.n_fft) if cfg.space.n_fft else [None]
    silences: list[float | None | str] = list(cfg.space.silence) if cfg.space.silence is not None else ["base"]
    return [(n, s) for n in dict.fromkeys(ffts) for s in dict.fromkeys(silences)]


def size_points(cfg: TuneConfig) -> list[dict[str, Any]]:
    """Every (model, filters, levels) combination, to validate the model settings."""
    models = cfg.space.model or [None]
    filters = cfg.space.filters or [None]
    levels = cfg.space.levels or [None]
    return [{"model": m, "filters": f, "levels": s} for m in models for f in filters for s in levels]


def data_key(n_fft: int | None, silence: float | None | str) -> str:
    return f"{n_fft}|{silence}"


# ---------------------------------------------------------------- data variants


def _absolute_sources(settings: dict[str, Any]) -> dict[str, Any]:
    """Source URIs made absolute: trials and later sweeps may run in another directory."""
    out = copy.deepcopy(settings)
    for source in out.get("sources") or []:
        if isinstance(source, dict) and isinstance(source.get("uri"), str):
            source["uri"] = storage.normalize_uri(source["uri"])
    qa = out.get("qa")
    if isinstance(qa, dict) and qa.get("flags_csv"):
        qa["flags_csv"] = storage.normalize_uri(qa["flags_csv"])
    return out


def prepare_variants(cfg: TuneConfig, output: str) -> tuple[dict[str, str], list[dict[str, Any]]]:
    """Prepare every data variant of the space that is not there yet.

    Returns ``data_key -> variant URI`` and one record per variant (key, URI, FFT size,
    hop, silence, whether it was prepared now, rows per split).
    """
    root = storage.normalize_uri(cfg.variants) if cfg.variants else storage.join(output, "variants")
    uris: dict[str, str] = {}
    records: list[dict[str, Any]] = []
    for n_fft, silence in data_points(cfg):
        settings = _absolute_sources(T.variant_settings(cfg.prepare, n_fft, silence, cfg.hop_fraction))
        resolved = validate_prepare(settings)
        uri = storage.join(root, T.variant_key(resolved.model_dump(mode="json")))
        done = _prepared(uri)
        if done is None:
            log.info("tune: preparing data variant %s", uri)
            summary = run_job(prepare.JOB, prepare.PrepareConfig.model_validate({**settings, "output": uri}))
            if summary["status"] != "ok":
                raise SepError(f"{uri}: preparing the data variant failed: {summary.get('error')}")
        else:
            log.info("tune: data variant %s is prepared already", uri)
        uris[data_key(n_fft, silence)] = uri
        manifest = train.read_manifest(uri)
        records.append({
            "variant": storage.basename(uri), "uri": uri, "n_fft": resolved.features.n_fft,
            "hop": resolved.features.hop,
            "silence": resolved.silence.target_ratio if resolved.silence.enabled else None,
            "prepared_now": done is None, "rows": manifest.get("rows_per_split", {}),
        })  # fmt: skip
    return uris, records


def _prepared(uri: str) -> dict[str, Any] | None:
    summary_uri = storage.join(uri, SUMMARY)
    if not storage.exists(summary_uri):
        return None
    summary = json.loads(storage.read_text(summary_uri))
    return summary if summary.get("status") == "ok" else None


# ---------------------------------------------------------------- one trial (runs in a Tune actor)


def _epoch_report_callback() -> Any:
    """A TuneReportCallback that also reports ``epochs`` (epochs done), ASHA's time axis."""
    from ray.tune.integration.ray_train import TuneReportCallback

    class EpochReport(TuneReportCallback):
        def after_report(self, run_context, metrics, checkpoint):  # type: ignore[no-untyped-def]
            first = {**metrics[0], "epochs": metrics[0]["epoch"] + 1}
            super().after_report(run_context, [first, *metrics[1:]], checkpoint)

    return EpochReport()


def fit_trial(tcfg: train.TrainConfig, read_cpus: float, callbacks: list[Any]) -> None:
    """Train ``tcfg`` with the train job's trainer; resumes from the latest checkpoint."""
    train.build_trainer(tcfg, read_cpus, callbacks).fit()


def _latest_epoch(output: str) -> int:
    latest = ckpt.find_latest(storage.join(output, "runs"))
    return int(ckpt.read_meta(latest)["epoch"]) if latest else -1


def trained_out(output: str, tcfg: train.TrainConfig) -> bool:
    """Whether the latest checkpoint under ``output`` ends the training (last epoch or patience)."""
    latest = ckpt.find_latest(storage.join(output, "runs"))
    if latest is None:
        return False
    meta = ckpt.read_meta(latest)
    stale = (meta.get("progress") or {}).get("stale", 0)
    return int(meta["epoch"]) + 1 >= tcfg.optim.epochs or stale >= tcfg.optim.early_stopping_patience


def _now() -> str:
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")


def trial_output(sweep_output: str, trial_id: str) -> str:
    return storage.join(sweep_output, "trials", trial_id)


def run_trial(point: dict[str, Any], sweep: dict[str, Any]) -> None:
    """Tune's function trainable: one point of the space, trained by the train job's loop."""
    import ray.tune

    trial_id = ray.tune.get_context().get_trial_id()
    out = trial_output(sweep["output"], trial_id)
    values = {**sweep["base"], **point}
    data = sweep["variants"][data_key(values.get("n_fft") if "n_fft" in point else None,
                                      values.get("silence") if "silence" in point else "base")]  # fmt: skip
    settings = T.train_settings(sweep["train"], values, sweep["model_configs"])
    tcfg = train.TrainConfig.model_validate({**settings, "data": data, "output": out})
    marker = storage.join(out, TRIAL_FILE)
    record = json.loads(storage.read_text(marker)) if storage.exists(marker) else {}
    trained = False
    # Done before: the marker says so, or the scheduler ended the trial at its last epoch
    # before the marker was written. Either way it is not trained again.
    if record.get("status") != "done" and not trained_out(out, tcfg):
        record = {"trial": trial_id, "label": T.trial_label(values, sweep["swept"]), "values": values,
                  "data": data, "status": "running", "started": record.get("started") or _now(),
                  "train": settings}  # fmt: skip
        storage.write_text(marker, json.dumps(record, indent=1))
        before = _latest_epoch(out)
        fit_trial(tcfg, sweep["read_cpus"], [_epoch_report_callback()])
        trained = _latest_epoch(out) != before
    result = train.finish(out, tcfg.validation.metric)
    history = train.read_history(out)
    if not trained and history:  # finished before (a rerun): tell Tune its result, train nothing
        ray.tune.report({**history[-1], "epochs": len(history)})
    storage.write_text(marker, json.dumps({**record, "status": "done", "finished": _now(),
                                           "best_checkpoint": result["best_checkpoint"]}, indent=1))  # fmt: skip


# ---------------------------------------------------------------- the sweep


def param_space(cfg: TuneConfig) -> dict[str, Any]:
    from ray import tune

    space: dict[str, Any] = {}
    for dim in cfg.space.swept():
        values = getattr(cfg.space, dim)
        if isinstance(values, RangeConfig):
            space[dim] = (tune.loguniform if values.log else tune.uniform)(values.low, values.high)
        elif cfg.search.algorithm == "grid":
            space[dim] = tune.grid_search(list(values))
        else:
            space[dim] = tune.choice(list(values))
    return space


def search_algorithm(cfg: TuneConfig, parallel: int) -> Any:
    """Grid/random: Tune's variant generator; optuna: OptunaSearch in a concurrency limiter."""
    if cfg.search.algorithm == "optuna":
        try:
            from ray.tune.search import ConcurrencyLimiter
            from ray.tune.search.optuna import OptunaSearch

            return ConcurrencyLimiter(OptunaSearch(seed=cfg.search.seed), max_concurrent=parallel)
        except (ImportError, AssertionError) as exc:
            raise ConfigError("search.algorithm", f"optuna is not installed (pip install optuna): {exc}") from exc
    from ray.tune.search import BasicVariantGenerator

    # (Tune ignores TuneConfig.max_concurrent_trials when given a generator: set it here.)
    return BasicVariantGenerator(random_state=cfg.search.seed, max_concurrent=parallel)


def scheduler(cfg: TuneConfig, epochs: int) -> Any:
    from ray.tune.schedulers import ASHAScheduler, FIFOScheduler

    if cfg.scheduler.name == "fifo":
        return FIFOScheduler()
    return ASHAScheduler(time_attr="epochs", max_t=epochs, grace_period=min(cfg.scheduler.grace_period, epochs),
                         reduction_factor=cfg.scheduler.reduction_factor)  # fmt: skip


def trial_demand(cfg: TuneConfig) -> dict[str, float]:
    """Resources one running trial holds: its driver, its workers and one reading task."""
    s = validate_train(cfg.train).scaling
    demand = {"CPU": cfg.resources.driver_cpus + s.num_workers * s.cpus_per_worker + cfg.resources.read_cpus}
    if s.use_gpu:
        demand["GPU"] = s.num_workers * s.gpus_per_worker
    return demand


def concurrency(demand: dict[str, float], cluster: dict[str, float], wanted: int | None) -> int:
    """Trials run at once: ``wanted``, else as many as the cluster's resources hold (at least 1)."""
    if wanted is not None:
        return wanted
    fits = [math.floor(cluster.get(k, 0.0) / v + 1e-9) for k, v in demand.items() if v > 0]
    return max(1, min(fits) if fits else 1)


def _dirname(trial: Any) -> str:
    return str(trial.trial_id)


def _spec(cfg: TuneConfig) -> dict[str, Any]:
    plain = cfg.model_dump(mode="json")
    for key in ("output", "num_cpus", "resources", "max_failures", "max_failed_fraction"):
        plain.pop(key, None)
    plain["search"].pop("max_concurrent", None)
    return plain


def check_spec(output: str, cfg: TuneConfig, resuming: bool) -> None:
    """A rerun into the same output must sweep the same space (it resumes that sweep)."""
    uri = storage.join(output, SPEC_FILE)
    wanted = json.loads(json.dumps(_spec(cfg)))
    if resuming and storage.exists(uri):
        found = json.loads(storage.read_text(uri))
        diff = changed_keys(found, wanted)
        if diff:
            raise ConfigError("output", f"{output} holds a sweep with other settings ({', '.join(diff)}); "
                                        "use a new output")  # fmt: skip
        return
    storage.write_text(uri, json.dumps(wanted, indent=2))


def sweep_path(output: str) -> tuple[str, Any]:
    """Path and filesystem of the Tune experiment (``<output>/runs/sweep``)."""
    store = train.storage_args(output)
    return store["storage_path"].rstrip("/") + "/" + SWEEP_NAME, store.get("storage_filesystem")


def can_resume(output: str) -> bool:
    from ray import tune

    path, fs = sweep_path(output)
    return bool(tune.Tuner.can_restore(path, storage_filesystem=fs))


def run_sweep(cfg: TuneConfig, output: str, variants: dict[str, str], resume: bool) -> Any:
    """Start the Tune experiment, or restore it (``resume``) from ``<output>/runs/sweep``."""
    import ray
    from ray import tune

    tcfg = validate_train(cfg.train)
    metric = tcfg.validation.metric
    sweep = {
        "output": output, "variants": variants, "train": cfg.train, "model_configs": cfg.model_configs,
        "base": T.base_values(cfg.prepare, cfg.train), "swept": cfg.space.swept(),
        "read_cpus": cfg.resources.read_cpus,
    }  # fmt: skip
    trainable = tune.with_resources(tune.with_parameters(run_trial, sweep=sweep),
                                    {"CPU": cfg.resources.driver_cpus})  # fmt: skip
    store = train.storage_args(output)
    path, fs = sweep_path(output)
    if resume:
        log.info("tune: resuming the sweep in %s", path)
        tuner = tune.Tuner.restore(path, trainable, resume_unfinished=True, resume_errored=True,
                                   storage_filesystem=fs)  # fmt: skip
    else:
        parallel = concurrency(trial_demand(cfg), ray.cluster_resources(), cfg.search.max_concurrent)
        log.info("tune: %d trials at a time (each %s)", parallel, trial_demand(cfg))
        tuner = tune.Tuner(
            trainable, param_space=param_space(cfg),
            tune_config=tune.TuneConfig(
                metric=metric, mode=T.metric_mode(metric), search_alg=search_algorithm(cfg, parallel),
                scheduler=scheduler(cfg, tcfg.optim.epochs), num_samples=cfg.search.num_samples,
                trial_dirname_creator=_dirname),
            run_config=tune.RunConfig(name=SWEEP_NAME, verbose=1, **store,
                                      failure_config=tune.FailureConfig(max_failures=cfg.max_failures)),
        )  # fmt: skip
    return tuner.fit()


# ---------------------------------------------------------------- results


def collect(cfg: TuneConfig, output: str, grid: Any) -> tuple[list[dict[str, Any]], dict[str, list], list[dict]]:
    """Rows of the results table, learning curves by label, and failed trials.

    A trial's status: ``done`` (every epoch, or stopped by early-stopping patience),
    ``stopped`` (ended early by the scheduler), ``error``, or ``unfinished`` (the sweep
    was interrupted).
    """
    tcfg = validate_train(cfg.train)
    metric = tcfg.validation.metric
    tune_state: dict[str, tuple[str, float | None]] = {}
    failed = []
    for result in grid:
        trial_id = str(result.path).rstrip("/").rsplit("/", 1)[-1]
        metrics = result.metrics or {}
        state = "error" if result.error else ("ended" if metrics.get("done") else "unfinished")
        tune_state[trial_id] = (state, metrics.get("time_total_s"))
        if result.error:
            label = T.trial_label({**T.base_values(cfg.prepare, cfg.train), **(result.config or {})},
                                  cfg.space.swept())  # fmt: skip
            failed.append({"item": f"{trial_id} ({label})", "error": str(result.error).strip()[-500:]})
    rows, curves = [], {}
    markers = storage.list_files(storage.join(output, "trials"), suffix="/" + TRIAL_FILE)
    for marker in sorted(markers):
        record = json.loads(storage.read_text(marker))
        out = storage.parent(marker)
        state, seconds = tune_state.get(record["trial"], ("unfinished", None))
        best = record.get("best_checkpoint")
        if record["status"] != "done" and _has_checkpoint(out):
            best = train.finish(out, metric)["best_checkpoint"]  # ended by the scheduler: best/ now
        history = train.read_history(out)
        status = _status(record["status"], state, history, tcfg)
        if status == "done" and record["status"] != "done":  # ended by the scheduler at its last epoch
            storage.write_text(marker, json.dumps({**record, "status": "done", "best_checkpoint": best}, indent=1))
        rows.append(T.trial_row(
            record["trial"], record["label"], status, record["values"], history, metric,
            hop=_hop(record["data"]), weights=_weights(best), seconds=_round(seconds), data=record["data"],
            checkpoint=best,
        ))  # fmt: skip
        curves[record["label"] if record["label"] not in curves else f"{record['label']} ({record['trial']})"] = history
    return T.sort_rows(rows, metric), curves, failed


def _status(marker: str, state: str, history: list[dict[str, Any]], tcfg: train.TrainConfig) -> str:
    if marker == "done":
        return "done"
    if state in ("error", "unfinished"):
        return state
    finished = len(history) >= tcfg.optim.epochs
    return "done" if finished else "stopped"


def _round(seconds: Any) -> float | None:
    return round(float(seconds), 1) if isinstance(seconds, (int, float)) else None


def _has_checkpoint(out: str) -> bool:
    return ckpt.find_latest(storage.join(out, "runs")) is not None


def _hop(data: str) -> int | None:
    try:
        return int(train.read_manifest(data)["feature"]["hop"])
    except (SepError, KeyError, TypeError):
        return None


def _weights(best: str | None) -> int | None:
    if not best:
        return None
    from sepcore.models import count_parameters

    return count_parameters(ckpt.build(ckpt.read_meta(best)["model"]))


def write_results(cfg: TuneConfig, output: str, rows: list, curves: dict, variants: list[dict],
                  seconds: float) -> dict[str, Any]:  # fmt: skip
    """Table, best checkpoint and config, plots and report; returns the summary's figures."""
    metric = validate_train(cfg.train).validation.metric
    csv_bytes, parquet_bytes = T.table_bytes(rows)
    storage.write_bytes(storage.join(output, "results.csv"), csv_bytes)
    storage.write_bytes(storage.join(output, "results.parquet"), parquet_bytes)
    best = T.best_row(rows, metric)
    if best is not None and best.get("checkpoint"):
        for name in (ckpt.MODEL_FILE, ckpt.META_FILE):  # meta last: best/ is complete or absent
            storage.write_bytes(storage.join(output, ckpt.BEST, name),
                                storage.read_bytes(storage.join(best["checkpoint"], name)))  # fmt: skip
        record = json.loads(storage.read_text(storage.join(storage.parent(best["checkpoint"]), TRIAL_FILE)))
        runnable = {**record["train"], "data": best["data"], "output": storage.join(output, "best_train")}
        storage.write_text(storage.join(output, "best_train.yaml"), yaml.safe_dump(runnable, sort_keys=False))
    plots = {
        "metric_by_nfft.png": T.metric_by_nfft_png(rows, metric),
        "silence_effect.png": T.silence_effect_png(rows, metric),
        "learning_curves.png": T.learning_curves_png(curves, metric),
    }
    page = R.write_report(output, report_sections(cfg, rows, variants, best, plots, metric, seconds),
                          title="sep tune: sweep report")  # fmt: skip
    counts = {s: sum(1 for r in rows if r["status"] == s) for s in ("done", "stopped", "error", "unfinished")}
    figures: dict[str, Any] = {"metric": metric, **{f"trials_{k}": v for k, v in counts.items()}}
    if best is not None:
        figures.update(best_trial=best["trial"], best_label=best["label"],
                       **{f"best_{metric}": best[f"best_{metric}"]})  # fmt: skip
    return {"figures": figures, "report": page, "best": dict(best) if best else None}


def _cell(row: dict[str, Any], key: str) -> Any:
    value = row.get(key)
    return T.silence_label(value) if key == "silence" else value


def report_sections(cfg: TuneConfig, rows: list, variants: list[dict], best: Any, plots: dict[str, bytes],
                    metric: str, seconds: float) -> list[R.Section]:  # fmt: skip
    swept = cfg.space.swept()
    shown = [*swept, "epochs", "best_epoch", "best_val_sdr", "final_val_sdr", "val_sdr_mixture",
             "best_val_loss", "weights", "status"]  # fmt: skip
    summary = (
        f"{len(rows)} trials over {', '.join(swept) or 'no dimension'} "
        f"({cfg.search.algorithm} search, {cfg.scheduler.name} scheduler), metric {metric} "
        f"({'higher' if T.metric_mode(metric) == 'max' else 'lower'} is better), {seconds:.0f} s. "
        f"{len(variants)} data variants, {sum(v['prepared_now'] for v in variants)} prepared in this run."
    )
    items: list[Any] = [R.Text(summary)]
    if best is not None:
        keys = ("trial", "label", *T.DIMENSIONS, "hop", "epochs", "best_epoch", f"best_{metric}", "weights",
                "checkpoint")  # fmt: skip
        items.append(R.Table("Best configuration", ["key", "value"], [[k, _cell(best, k)] for k in keys], digits=4))
    sections = [R.Section("Summary", items)]
    sections.append(R.Section("Trials", [R.Table(
        "Every trial, best first", ["trial", *shown], [[r["trial"], *[_cell(r, k) for k in shown]] for r in rows],
        note="SDR in dB: median over the validation tracks (the mixture row: the mixture used as the estimate). "
             "stopped: ended early by the scheduler; epochs counts the epochs run.")]))  # fmt: skip
    sections.append(R.Section("Comparison", [
        R.Image("metric_by_nfft.png", plots["metric_by_nfft.png"], title="Metric versus FFT size",
                caption="dots: trials; lines: mean per filter count over the other values"),
        R.Image("silence_effect.png", plots["silence_effect.png"], title="Effect of the silence ratio",
                caption="dots: trials; lines: mean per FFT size over the other values"),
    ]))  # fmt: skip
    sections.append(R.Section("Learning curves", [R.Image("learning_curves.png", plots["learning_curves.png"])]))
    sections.append(R.Section("Data variants", [R.Table(
        "Prepared once, reused by every trial and later sweeps",
        ["variant", "n_fft", "hop", "silence", "train rows", "validation rows", "prepared in this run"],
        [[v["variant"], v["n_fft"], v["hop"], T.silence_label(v["silence"]), v["rows"].get("train"),
          v["rows"].get("validation"), "yes" if v["prepared_now"] else "no"] for v in variants])]))  # fmt: skip
    return sections


def run(cfg: TuneConfig) -> dict[str, Any]:
    t0 = time.monotonic()
    output = storage.normalize_uri(cfg.output)
    resume = can_resume(output)
    check_spec(output, cfg, resume)
    variant_uris, variants = prepare_variants(cfg, output)
    grid = run_sweep(cfg, output, variant_uris, resume)
    rows, curves, failed = collect(cfg, output, grid)
    # From the trials' own records: a trial restored from an earlier run's experiment state
    # does not carry Tune's ``done`` flag, even when it had finished.
    # Trials that never started have no record at all.
    unfinished = sum(1 for r in rows if r["status"] == "unfinished") + max(0, len(grid) - len(rows))
    written = write_results(cfg, output, rows, curves, variants, time.monotonic() - t0)
    if unfinished > 0:
        raise SepError(f"{output}: the sweep stopped with {unfinished} unfinished trials; "
                       "run the same command again to resume it")  # fmt: skip
    summary: dict[str, Any] = {
        "counts": {"trials": len(grid), "done": sum(r["status"] == "done" for r in rows),
                   "stopped": sum(r["status"] == "stopped" for r in rows), "failed": len(failed),
                   "variants": len(variants), "variants_prepared": sum(v["prepared_now"] for v in variants)},
        "figures": written["figures"],
        "best": written["best"], "variants": variants, "report": written["report"],
        "best_checkpoint": storage.join(output, ckpt.BEST) if written["best"] else None,
        "failed": failed,
    }  # fmt: skip
    if failed and len(failed) > cfg.max_failed_fraction * max(len(grid), 1):
        summary["status"] = "failed"
        summary["error"] = f"{len(failed)} of {len(grid)} trials failed"
    return summary


JOB = Job("tune", TuneConfig, run, "Sweep FFT size, filters and silence ratio with Ray Tune.")
main = JOB.main

if __name__ == "__main__":
    sys.exit(main())
