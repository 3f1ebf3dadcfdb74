"""A sweep's outputs (no Ray): trial records, the results table, best/, plots and the report.

Each trial writes ``<output>/trials/<trial id>/`` like a train output, plus
``trial.json`` (its label, values, data, settings and status). ``cfg`` below is the
tune job's configuration (``ray_jobs.tune.TuneConfig``); ``train`` its train settings
resolved (``ray_jobs.train.TrainConfig``).
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Callable
from typing import Any

import yaml

from sepcore.config import changed_keys
from sepcore.errors import ConfigError, SepError
from sepcore.io import storage
from sepcore.models import checkpoint as ckpt
from sepcore.report import html as R
from sepcore.train import outputs as O
from sepcore.tune import sweep as T

TRIAL_FILE = "trial.json"
SPEC_FILE = "tune_spec.json"
PLOTS = ("metric_by_nfft.png", "silence_effect.png", "learning_curves.png")


def now() -> str:
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")


def trial_output(sweep_output: str, trial_id: str) -> str:
    return storage.join(sweep_output, "trials", trial_id)


def read_record(out: str) -> dict[str, Any]:
    marker = storage.join(out, TRIAL_FILE)
    return json.loads(storage.read_text(marker)) if storage.exists(marker) else {}


def write_record(out: str, record: dict[str, Any]) -> None:
    storage.write_text(storage.join(out, TRIAL_FILE), json.dumps(record, indent=1))


def check_spec(output: str, cfg: Any, resuming: bool) -> None:
    """A rerun into the same output must sweep the same space (it resumes that sweep)."""
    plain = cfg.model_dump(mode="json")
    for key in ("output", "num_cpus", "resources", "max_failures", "max_failed_fraction"):
        plain.pop(key, None)
    plain["search"].pop("max_concurrent", None)
    uri = storage.join(output, SPEC_FILE)
    wanted = json.loads(json.dumps(plain))
    if resuming and storage.exists(uri):
        diff = changed_keys(json.loads(storage.read_text(uri)), wanted)
        if diff:
            raise ConfigError("output", f"{output} holds a sweep with other settings ({', '.join(diff)}); "
                                        "use a new output")  # fmt: skip
        return
    storage.write_text(uri, json.dumps(wanted, indent=2))


def variant_record(uri: str, resolved: Any, prepared_now: bool) -> dict[str, Any]:
    """The report's line of a data variant (``resolved``: its prepare configuration)."""
    return {
        "variant": storage.basename(uri), "uri": uri, "n_fft": resolved.features.n_fft,
        "hop": resolved.features.hop,
        "silence": resolved.silence.target_ratio if resolved.silence.enabled else None,
        "remix_copies": resolved.augment.remix_copies,
        "gain_db": list(resolved.augment.gain_db) if resolved.augment.gain_db is not None else None,
        "prepared_now": prepared_now, "rows": O.read_manifest(uri).get("rows_per_split", {}),
    }  # fmt: skip


def trial_rows(output: str, train: Any, tune_state: dict[str, tuple[str, float | None]]
               ) -> tuple[list[Any], dict[str, list], dict[str, float | None]]:  # fmt: skip
    """Rows of the results table (best first), learning curves by label and, by the same label,
    the validation loss of each trial's initial weights (epoch 0 of its curve; a frame DNN's
    checkpoint has it, None otherwise), from the trials' records.

    ``tune_state``: trial id -> (Tune's state: ``ended``, ``error`` or ``unfinished``, seconds).
    A trial's status: ``done`` (every epoch, or stopped by early-stopping patience),
    ``stopped`` (ended early by the scheduler), ``error``, or ``unfinished``. A trial the
    scheduler ended gets its ``best/`` here. A frame DNN's row has ``ls_init_s``, the seconds
    of its least-squares pass (``meta["init"]["seconds"]``; None for a random start).
    """
    metric = train.validation.metric
    rows, curves, initial = [], {}, {}
    for marker in sorted(storage.list_files(storage.join(output, "trials"), suffix="/" + TRIAL_FILE)):
        record = json.loads(storage.read_text(marker))
        out = storage.parent(marker)
        state, seconds = tune_state.get(record["trial"], ("unfinished", None))
        best = record.get("best_checkpoint")
        if record["status"] != "done" and ckpt.find_latest(storage.join(out, O.RUNS)) is not None:
            best = O.finish(out, metric)["best_checkpoint"]  # ended by the scheduler: best/ now
        history = O.read_history(out)
        init = _init(best)
        status = _status(record["status"], state, history, train.optim.epochs)
        if status == "done" and record["status"] != "done":  # ended by the scheduler at its last epoch
            write_record(out, {**record, "status": "done", "best_checkpoint": best})
        rows.append(T.trial_row(
            record["trial"], record["label"], status, record["values"], history, metric,
            hop=_hop(record["data"]), weights=_weights(best), data=record["data"], checkpoint=best,
            seconds=round(float(seconds), 1) if isinstance(seconds, (int, float)) else None,
            ls_init_s=init.get("seconds"),
        ))  # fmt: skip
        label = record["label"]
        label = label if label not in curves else f"{label} ({record['trial']})"
        curves[label], initial[label] = history, init.get("val_loss")
    return T.sort_rows(rows, metric), curves, initial


def _status(marker: str, state: str, history: list[dict[str, Any]], epochs: int) -> str:
    if marker == "done":
        return "done"
    if state in ("error", "unfinished"):
        return state
    return "done" if len(history) >= epochs else "stopped"


def _hop(data: str) -> int | None:
    try:
        return int(O.read_manifest(data)["feature"]["hop"])
    except (SepError, KeyError, TypeError):
        return None


def _init(best: str | None) -> dict[str, Any]:
    """The ``meta["init"]`` record of a trial's best checkpoint (a frame DNN's start), else {}."""
    return (ckpt.read_meta(best).get("init") or {}) if best else {}


def _weights(best: str | None) -> int | None:
    if not best:
        return None
    from sepcore.models import count_parameters

    return count_parameters(ckpt.build(ckpt.read_meta(best)["model"]))


def write_results(cfg: Any, metric: str, output: str, rows: list, curves: dict, variants: list[dict],
                  seconds: float, initial: dict[str, float | None] | None = None) -> dict[str, Any]:  # fmt: skip
    """Table, best checkpoint and config, plots and report; returns the summary's figures.

    ``curves`` and ``initial``: as :func:`trial_rows` returns them."""
    csv_bytes, parquet_bytes = T.table_bytes(rows)
    storage.write_bytes(storage.join(output, "results.csv"), csv_bytes)
    storage.write_bytes(storage.join(output, "results.parquet"), parquet_bytes)
    best = T.best_row(rows, metric)
    if best is not None and best.get("checkpoint"):
        ckpt.publish_best(best["checkpoint"], output)
        record = read_record(storage.parent(best["checkpoint"]))
        runnable = {**record["train"], "data": best["data"], "output": storage.join(output, "best_train")}
        storage.write_text(storage.join(output, "best_train.yaml"), yaml.safe_dump(runnable, sort_keys=False))
    plots = dict(zip(PLOTS, (T.metric_by_nfft_png(rows, metric), T.silence_effect_png(rows, metric),
                             T.learning_curves_png(curves, metric, initial)), strict=True))  # fmt: skip
    sections = report_sections(cfg, rows, variants, best, plots, metric, seconds,
                               any(v is not None for v in (initial or {}).values()))  # fmt: skip
    page = R.write_report(output, sections, title="sep tune: sweep report")
    counts = {s: sum(1 for r in rows if r["status"] == s) for s in ("done", "stopped", "error", "unfinished")}
    figures: dict[str, Any] = {"metric": metric, **{f"trials_{k}": v for k, v in counts.items()}}
    if best is not None:
        figures.update(best_trial=best["trial"], best_label=best["label"],
                       **{f"best_{metric}": best[f"best_{metric}"]})  # fmt: skip
    return {"figures": figures, "report": page, "best": dict(best) if best else None}


def _cell(row: dict[str, Any], key: str) -> Any:
    value = row.get(key)
    if key == "gain_db":
        return T.gain_label(value)
    return T.silence_label(value) if key == "silence" else value


def report_sections(cfg: Any, rows: list, variants: list[dict], best: Any, plots: dict[str, bytes],
                    metric: str, seconds: float, from_start: bool = False) -> list[R.Section]:  # fmt: skip
    """The report's sections; ``from_start``: the learning curves start at epoch 0 (the initial
    weights' validation loss). A frame DNN's ``ls_init_s`` is shown where a trial has it."""
    swept = cfg.space.swept()
    ls_timed = any(r.get("ls_init_s") is not None for r in rows)
    shown = [*swept, "epochs", "best_epoch", "best_val_sdr", "final_val_sdr", "val_sdr_mixture",
             "best_val_loss", "weights", *(["ls_init_s"] if ls_timed else []), "status"]  # fmt: skip
    summary = (
        f"{len(rows)} trials over {', '.join(swept) or 'no dimension'} "
        f"({cfg.search.algorithm} search, {cfg.scheduler.name} scheduler), metric {metric} "
        f"({'higher' if T.metric_mode(metric) == 'max' else 'lower'} is better), {seconds:.0f} s. "
        f"{len(variants)} data variants, {sum(v['prepared_now'] for v in variants)} prepared in this run."
    )
    items: list[Any] = [R.Text(summary)]
    if best is not None:
        keys = ("trial", "label", *T.DIMENSIONS, "hop", "epochs", "best_epoch", f"best_{metric}", "weights",
                *(["ls_init_s"] if ls_timed else []), "checkpoint")  # fmt: skip
        items.append(R.Table("Best configuration", ["key", "value"], [[k, _cell(best, k)] for k in keys], digits=4))
    sections = [R.Section("Summary", items)]
    sections.append(R.Section("Trials", [R.Table(
        "Every trial, best first", ["trial", *shown], [[r["trial"], *[_cell(r, k) for k in shown]] for r in rows],
        note="SDR in dB: median over the validation tracks (the mixture row: the mixture used as the estimate). "
             "stopped: ended early by the scheduler; epochs counts the epochs run"
             + ("; ls_init_s: seconds of the frame DNN's least-squares start (a dash: random start)." if ls_timed
                else "."))]))  # fmt: skip
    sections.append(R.Section("Comparison", [
        R.Image("metric_by_nfft.png", plots["metric_by_nfft.png"], title="Metric versus FFT size",
                caption="dots: trials; lines: mean per filter count over the other values"),
        R.Image("silence_effect.png", plots["silence_effect.png"], title="Effect of the silence ratio",
                caption="dots: trials; lines: mean per FFT size over the other values"),
    ]))  # fmt: skip
    caption = "epoch 0: the validation loss of the initial weights, before the first step" if from_start else ""
    sections.append(R.Section("Learning curves", [R.Image("learning_curves.png", plots["learning_curves.png"],
                                                          caption=caption)]))  # fmt: skip
    sections.append(R.Section("Data variants", [R.Table(
        "Prepared once, reused by every trial and later sweeps",
        ["variant", "n_fft", "hop", "silence", "remix copies", "gain dB", "train rows", "validation rows",
         "prepared in this run"],
        [[v["variant"], v["n_fft"], v["hop"], T.silence_label(v["silence"]), v["remix_copies"],
          T.gain_label(v["gain_db"]), v["rows"].get("train"), v["rows"].get("validation"),
          "yes" if v["prepared_now"] else "no"] for v in variants])]))  # fmt: skip
    return sections


def variant_plan(cfg: Any, output: str, validate_prepare: Callable[[dict[str, Any]], Any]
                 ) -> list[tuple[str, str, dict[str, Any], Any]]:  # fmt: skip
    """Every data variant of the space: its :func:`~sepcore.tune.sweep.data_key`, URI (under
    ``cfg.variants``, default ``<output>/variants``), prepare settings and those resolved."""
    root = storage.normalize_uri(cfg.variants) if cfg.variants else storage.join(output, "variants")
    plan = []
    for point in cfg.space.data_points():
        n_fft, silence, remix_copies, gain_db = point
        settings = T.variant_settings(cfg.prepare, n_fft, silence, cfg.hop_fraction, remix_copies, gain_db)
        settings = T.absolute_sources(settings)
        resolved = validate_prepare(settings)
        uri = storage.join(root, T.variant_key(resolved.model_dump(mode="json")))
        plan.append((T.data_key(*point), uri, settings, resolved))
    return plan


def trial_settings(sweep: dict[str, Any], point: dict[str, Any], trial_id: str
                   ) -> tuple[str, dict[str, Any], str, dict[str, Any]]:  # fmt: skip
    """A trial's output, values, data key and train settings (``sweep``: :func:`~sepcore.tune.sweep.sweep_settings`;
    ``point``: the trial's swept values)."""
    values = {**sweep["base"], **point}
    settings = T.train_settings(sweep["train"], values, sweep["model_configs"])
    return trial_output(sweep["output"], trial_id), values, T.trial_data_key(point, values), settings


def done_before(out: str, record: dict[str, Any], optim: Any) -> bool:
    """Whether the trial at ``out`` finished before: its record says so, or the scheduler ended
    it at its last epoch before the record was written. Either way it is not trained again."""
    return record.get("status") == "done" or O.trained_out(out, optim)


def prepared(uri: str) -> bool:
    """Whether the data variant at ``uri`` was prepared to the end (its summary says ok)."""
    summary = storage.join(uri, "summary.json")
    return storage.exists(summary) and json.loads(storage.read_text(summary)).get("status") == "ok"


def start_trial(out: str, trial: str, label: str, values: dict[str, Any], data: str,
                settings: dict[str, Any]) -> dict[str, Any]:  # fmt: skip
    """Write the record of a trial about to train (``running``; a rerun keeps ``started``)."""
    record = {"trial": trial, "label": label, "values": values, "data": data, "status": "running",
              "started": read_record(out).get("started") or now(), "train": settings}  # fmt: skip
    write_record(out, record)
    return record


def tune_states(results: Any, base: dict[str, Any], swept: list[str]
                ) -> tuple[dict[str, tuple[str, float | None]], list[dict[str, Any]]]:  # fmt: skip
    """Tune's word on each trial of a ``ResultGrid`` (state, seconds) and the failed trials.

    ``base``: the values of dimensions not swept (to label a failed trial).
    """
    states, failed = {}, []
    for result in results:
        trial_id = str(result.path).rstrip("/").rsplit("/", 1)[-1]
        metrics = result.metrics or {}
        states[trial_id] = ("error" if result.error else ("ended" if metrics.get("done") else "unfinished"),
                            metrics.get("time_total_s"))  # fmt: skip
        if result.error:
            label = T.trial_label({**base, **(result.config or {})}, swept)
            failed.append({"item": f"{trial_id} ({label})", "error": str(result.error).strip()[-500:]})
    return states, failed


def check_finished(output: str, rows: list[dict[str, Any]], trials: int) -> None:
    """Fail when the sweep of ``trials`` trials stopped with some unfinished.

    Counted from the trials' own records (a trial restored from an earlier run's experiment
    state lacks Tune's ``done`` flag even when it had finished); trials never started have none.
    """
    unfinished = sum(1 for r in rows if r["status"] == "unfinished") + max(0, trials - len(rows))
    if unfinished > 0:
        raise SepError(f"{output}: the sweep stopped with {unfinished} unfinished trials; "
                       "run the same command again to resume it")  # fmt: skip


def summary(output: str, trials: int, rows: list, failed: list, variants: list[dict],
            written: dict[str, Any]) -> dict[str, Any]:  # fmt: skip
    """The sweep's ``summary.json`` keys (``written``: what :func:`write_results` returned)."""
    return {
        "counts": {"trials": trials, "done": sum(r["status"] == "done" for r in rows),
                   "stopped": sum(r["status"] == "stopped" for r in rows), "failed": len(failed),
                   "variants": len(variants), "variants_prepared": sum(v["prepared_now"] for v in variants)},
        "figures": written["figures"],
        "best": written["best"], "variants": variants, "report": written["report"],
        "best_checkpoint": storage.join(output, ckpt.BEST) if written["best"] else None,
        "failed": failed,
    }  # fmt: skip
