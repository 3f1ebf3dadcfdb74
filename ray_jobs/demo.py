"""demo: the main job end to end on the embedded default, with one report to look at.

    sep demo                                   # ./out/demo, local Ray, file storage
    sep demo library=~/Music/some-album        # also separate a folder of your own songs
    sep demo output=s3://bucket/demo           # the same on object storage (and RAY_ADDRESS)
    sep demo quick=true output=/tmp/demo_quick # the CI-sized smoke run (about 2 minutes)

Stages, each one of the other jobs run through its ``run`` with the demo's settings:

1. ``render``: the demo dataset (songs from the built-in corpus) into ``<output>/data``;
2. ``prepare``: target-vs-rest training shards into ``<output>/shards_<target>``;
3. ``train``: the separators of ``models`` (default the small hourglass) into
   ``<output>/train_<model>``;
4. ``separate``: the held-out (test) mixes, copied to ``<output>/heldout``, into
   ``<output>/separated``, and the user's ``library`` (if given) into
   ``<output>/separated_library``;
5. ``evaluate``: BSS Eval of each separator on the held-out tracks with the oracle
   (IRM, IBM) and mixture rows, into ``<output>/evaluate_<model>``;
6. ``classify``: the LightGBM instrument classifier into ``<output>/classify``;
7. ``report``: ``<output>/report.html`` (with ``report_files/``) and ``metrics.json``;
8. extras: ``extra_models`` (the BLSTM, the activation CNN) are trained and evaluated
   afterwards when the time the run has cost so far plus their estimate fits
   ``budget_minutes``; the report is rewritten after each.

Every stage's ``summary.json`` carries a key of its settings and of its inputs' keys.
A rerun skips a stage whose summary has the same key, so a second ``sep demo`` reuses
everything (``separate`` always runs: it skips the files it did before by itself); a
stage whose settings changed is deleted and run again. The budget counts the seconds
each stage cost when it ran, so a rerun makes the same choice of extras as the first
run.
"""

from __future__ import annotations

import copy
import hashlib
import io
import json
import logging
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

from pydantic import Field, ValidationError, model_validator

from ray_jobs import classify as classify_job
from ray_jobs import evaluate as evaluate_job
from ray_jobs import prepare as prepare_job
from ray_jobs import render as render_job
from ray_jobs import separate as separate_job
from ray_jobs import train as train_job
from ray_jobs.common import RESOLVED_CONFIG, SUMMARY, Job, JobConfig, run_job
from sepcore.config import Config, to_plain
from sepcore.data.classes import CLASSES
from sepcore.errors import ConfigError, SepError
from sepcore.evaluate import tracks as E
from sepcore.io import storage
from sepcore.models import checkpoint as ckpt
from sepcore.report import html as R

log = logging.getLogger("sep.demo")

METRICS_FILE = "metrics.json"
FORMAT = "sep-demo/1"
SEPARATORS = ("hourglass", "blstm")
ModelName = Literal["hourglass", "blstm", "activation_cnn"]

#: Idle 2-core estimate of an extra model's cost as a multiple of the first separator's
#: measured training time (then plus that separator's evaluation time), see docs/_demo_bench.md.
EXTRA_COST = {"blstm": 0.75, "activation_cnn": 1.6}
#: Seconds of the run not inside a stage (Ray start-up, listing, report), for the budget.
OVERHEAD_S = 45.0
#: User-library files longer than this get no clips in the report (stems are read whole).
CLIP_MAX_SECONDS = 900.0
#: User-library files shown with audio players.
CLIP_FILES = 4

# ---------------------------------------------------------------- presets

_HOURGLASS_SMALL = {"filters": 8, "levels": 3, "dropout": 0.1, "initial_channels": [4, 4, 4, 4, 8],
                    "final_channels": 8}  # fmt: skip
_SCALING = {"num_workers": 1, "use_gpu": False, "cpus_per_worker": 1, "threads": 2}
_ACTIVATION_PREPARE = {"target": "random_mix", "outputs": ["activations"],
                       "features": {"name": "logmel", "n_fft": 1024, "hop": 512, "n_mels": 128,
                                    "fmin": 27.5, "fmax": 20000},
                       "chunks": {"frames": 16},
                       "random_mix": {"segment_seconds": 3.0, "epochs": 1}}  # fmt: skip

#: Settings of each stage, by size. ``sep demo stages.hourglass.optim.epochs=6`` and the
#: like override single keys. ``full`` is planned for 15 minutes on 2 cores
#: (docs/_demo_bench.md); ``quick`` is the CI smoke run.
PRESETS: dict[str, dict[str, Any]] = {
    "full": {
        "tracks": 32,
        "split": {"train": 0.7, "validation": 0.1, "test": 0.2},
        "render": {"demo": {"min_seconds": 30.0, "max_seconds": 40.0}, "sample_rate": 22050, "channels": 1},
        "prepare": {"features": {"name": "stft", "n_fft": 1536, "hop": 384}, "chunks": {"frames": 64}},
        "hourglass": {"model": {"name": "hourglass", "config": _HOURGLASS_SMALL},
                      "optim": {"epochs": 4, "batch_size": 8, "lr": 0.002, "max_steps_per_epoch": 60},
                      "validation": {"sdr_tracks": 2, "metric": "val_sdr"}, "scaling": _SCALING},
        "blstm": {"model": {"name": "blstm", "config": {"hidden": 64, "layers": 3, "max_bin": 400}},
                  "optim": {"epochs": 5, "batch_size": 16, "lr": 0.001},
                  "validation": {"sdr_tracks": 2, "metric": "val_sdr"}, "scaling": _SCALING},
        "activation_prepare": _ACTIVATION_PREPARE,
        "activation_cnn": {"model": {"name": "activation_cnn", "config": {"filters": [16, 32, 64], "dropout": 0.1}},
                           "optim": {"epochs": 4, "batch_size": 32, "lr": 0.001, "weight_decay": 0.001,
                                     "max_steps_per_epoch": 60},
                           "validation": {"sdr_tracks": 0, "metric": "val_loss"}, "scaling": _SCALING},
        "separate": {"inference": {"batch_size": 8, "cpus_per_actor": 1, "threads": 1}},
        "evaluate": {"backend": "fast", "report": {"examples": 2, "audio_seconds": 15.0}},
        "classify": {},
    },
    "quick": {
        "tracks": 6,
        "split": {"train": 0.5, "validation": 0.25, "test": 0.25},
        "render": {"demo": {"min_seconds": 10.0, "max_seconds": 14.0}, "sample_rate": 22050, "channels": 1},
        "prepare": {"features": {"name": "stft", "n_fft": 256, "hop": 128}, "chunks": {"frames": 16}},
        "hourglass": {"model": {"name": "hourglass", "config": {"filters": 8, "levels": 2, "dropout": 0.2,
                                                                  "initial_channels": [4, 8, 8, 8, 16],
                                                                  "final_channels": 16}},
                      "optim": {"epochs": 1, "batch_size": 8, "lr": 0.003, "max_steps_per_epoch": 4},
                      "validation": {"sdr_tracks": 1, "metric": "val_sdr"}, "scaling": _SCALING},
        "blstm": {"model": {"name": "blstm", "config": {"hidden": 16, "layers": 2, "max_bin": 64}},
                  "optim": {"epochs": 1, "batch_size": 8, "max_steps_per_epoch": 4},
                  "validation": {"sdr_tracks": 1, "metric": "val_sdr"}, "scaling": _SCALING},
        "activation_prepare": {**_ACTIVATION_PREPARE,
                               "features": {"name": "logmel", "n_fft": 512, "hop": 256, "n_mels": 32,
                                            "fmin": 27.5, "fmax": 11000}},
        "activation_cnn": {"model": {"name": "activation_cnn", "config": {"filters": [4, 4, 8], "dropout": 0.1}},
                           "optim": {"epochs": 1, "batch_size": 8, "max_steps_per_epoch": 4},
                           "validation": {"sdr_tracks": 0, "metric": "val_loss"}, "scaling": _SCALING},
        "separate": {"inference": {"batch_size": 8, "cpus_per_actor": 1, "threads": 1}},
        "evaluate": {"backend": "fast", "segment_seconds": 15.0,
                     "report": {"examples": 1, "audio_seconds": 4.0}},
        "classify": {"lightgbm": {"num_boost_round": 30, "early_stopping_rounds": 10, "min_data_in_leaf": 5},
                     "actors": {"feature": 1}},
    },
}  # fmt: skip


class StageOverrides(Config):
    """Per-stage keys laid over the preset (each is that job's config, in part)."""

    render: dict[str, Any] = Field(default_factory=dict, description="sep render keys")
    prepare: dict[str, Any] = Field(
        default_factory=dict, description="sep prepare keys (target shards)"
    )
    hourglass: dict[str, Any] = Field(
        default_factory=dict, description="sep train keys of the hourglass"
    )
    blstm: dict[str, Any] = Field(default_factory=dict, description="sep train keys of the BLSTM")
    activation_prepare: dict[str, Any] = Field(
        default_factory=dict, description="sep prepare keys (random mixes)"
    )
    activation_cnn: dict[str, Any] = Field(
        default_factory=dict, description="sep train keys of the activation CNN"
    )
    separate: dict[str, Any] = Field(default_factory=dict, description="sep separate keys")
    evaluate: dict[str, Any] = Field(default_factory=dict, description="sep evaluate keys")
    classify: dict[str, Any] = Field(default_factory=dict, description="sep classify keys")


class DemoConfig(JobConfig):
    output: str = Field("out/demo", description="URI where the demo writes everything")
    tracks: int | None = Field(
        None, ge=4, description="songs in the demo dataset (default 32; quick: 6)"
    )
    seed: int = Field(0, description="seed of the demo corpus, the splits and the training")
    target: str = Field("guitar", description="instrument the demo separates")
    library: str | None = Field(
        None, description="a folder (or prefix) of your own songs to separate too"
    )
    quick: bool = Field(
        False, description="the CI-sized smoke run: 6 short songs, tiny STFT, a few steps"
    )
    models: list[Literal["hourglass", "blstm"]] = Field(
        ["hourglass"],
        min_length=1,
        description="separators always trained (the first is the main one)",
    )
    extra_models: list[ModelName] = Field(
        ["blstm", "activation_cnn"], description="trained afterwards when they fit budget_minutes"
    )
    budget_minutes: float = Field(
        15.0, gt=0, description="time budget that decides the extra models"
    )
    split: prepare_job.SplitConfig | None = Field(
        None,
        description="track-level split fractions for prepare, evaluate and classify "
        "(default 0.7 / 0.1 / 0.2; quick: 0.5 / 0.25 / 0.25)",
    )
    stages: StageOverrides = Field(
        default_factory=StageOverrides, description="per-stage overrides"
    )

    @model_validator(mode="after")
    def _check(self) -> DemoConfig:
        if self.target not in CLASSES:
            raise ValueError(f"unknown target '{self.target}'; known: {list(CLASSES)}")
        split = self.split
        if split and abs(split.train + split.validation + split.test - 1) > 1e-6:
            raise ValueError("split fractions must sum to 1")
        make_plan(self)  # every stage's config is valid before anything starts
        return self


# ---------------------------------------------------------------- plan


@dataclass(frozen=True)
class Plan:
    """Every stage's config and where its output goes."""

    output: str
    render: render_job.RenderConfig
    prepare: prepare_job.PrepareConfig
    train: dict[str, train_job.TrainConfig]
    activation_prepare: prepare_job.PrepareConfig
    heldout: str
    separate: separate_job.SeparateConfig
    separate_library: separate_job.SeparateConfig | None
    evaluate: dict[str, evaluate_job.EvaluateConfig]
    classify: classify_job.ClassifyConfig


def deep_merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    """``base`` with ``over`` laid on top, recursively for nested mappings (copies)."""
    out = copy.deepcopy(base)
    for key, value in over.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def _build(cls: type[Config], stage: str, preset: dict[str, Any], over: dict[str, Any],
           fixed: dict[str, Any]) -> Any:  # fmt: skip
    """``cls`` from preset + user overrides + the keys the demo fixes; errors name the key."""
    tree = deep_merge(deep_merge(preset, over), fixed)
    try:
        return cls.model_validate(tree)
    except ValidationError as exc:  # a ConfigError passes through pydantic to the CLI (exit 2)
        err = exc.errors()[0]
        key = ".".join(str(p) for p in err["loc"])
        problem = "unknown key" if err["type"] == "extra_forbidden" else err["msg"]
        raise ConfigError(f"stages.{stage}.{key}", problem) from None


def make_plan(cfg: DemoConfig) -> Plan:
    """Every stage's config: the preset, the user's ``stages.*`` keys, then what the demo fixes."""
    size = PRESETS["quick" if cfg.quick else "full"]
    out = storage.normalize_uri(cfg.output)

    def at(*parts: str) -> str:
        return storage.join(out, *parts)

    def stage(cls: type[Config], name: str, fixed: dict[str, Any]) -> Any:
        return _build(cls, name, size[name], getattr(cfg.stages, name), fixed)

    seeded = {"seed": cfg.seed, "num_cpus": cfg.num_cpus}
    split = cfg.split.model_dump() if cfg.split else size["split"]
    data, heldout, main = at("data"), at("heldout"), at(f"train_{cfg.models[0]}")
    shards, act_shards = at(f"shards_{cfg.target}"), at("shards_activation")
    sources = [{"kind": "slakh", "uri": data}]
    trains: dict[str, train_job.TrainConfig] = {}
    evals: dict[str, evaluate_job.EvaluateConfig] = {}
    for m in dict.fromkeys([*cfg.models, *cfg.extra_models]):
        source = act_shards if m == "activation_cnn" else shards
        trains[m] = stage(
            train_job.TrainConfig, m, {"data": source, "output": at(f"train_{m}"), **seeded}
        )
        evals[m] = stage(
            evaluate_job.EvaluateConfig, "evaluate",
            {"data": data, "checkpoint": at(f"train_{m}"), "output": at(f"evaluate_{m}"), "split": "test",
             "num_cpus": cfg.num_cpus},
        )  # fmt: skip
    library = None
    if cfg.library:
        library = stage(
            separate_job.SeparateConfig, "separate",
            {"library": cfg.library, "output": at("separated_library"), "checkpoint": main, "num_cpus": cfg.num_cpus},
        )  # fmt: skip
    return Plan(
        output=out,
        render=stage(render_job.RenderConfig, "render",
                     {"midi": "demo", "output": data, "tracks": cfg.tracks or size["tracks"], **seeded}),
        prepare=stage(prepare_job.PrepareConfig, "prepare",
                      {"sources": sources, "output": shards, "target": cfg.target, "split": split, **seeded}),
        train=trains,
        activation_prepare=stage(prepare_job.PrepareConfig, "activation_prepare",
                                 {"sources": sources, "output": act_shards, "split": split, **seeded}),
        heldout=heldout,
        separate=stage(separate_job.SeparateConfig, "separate",
                       {"library": heldout, "output": at("separated"), "checkpoint": main, "num_cpus": cfg.num_cpus}),
        separate_library=library,
        evaluate=evals,
        classify=stage(classify_job.ClassifyConfig, "classify",
                       {"data": data, "output": at("classify"), "split": split, **seeded}),
    )  # fmt: skip


# ---------------------------------------------------------------- stages


def stage_key(config: JobConfig, inputs: list[str]) -> str:
    """What a stage's result depends on: its settings (not num_cpus) and its inputs' keys."""
    plain = {k: v for k, v in to_plain(config).items() if k != "num_cpus"}
    text = json.dumps({"config": plain, "inputs": inputs}, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def read_summary(output: str) -> dict[str, Any] | None:
    uri = storage.join(output, SUMMARY)
    if not storage.exists(uri):
        return None
    try:
        return json.loads(storage.read_text(uri))
    except (SepError, json.JSONDecodeError):
        return None


def plural(n: int, word: str) -> str:
    return f"{n} {word}" if n == 1 else f"{n} {word}s"


def fmt_seconds(seconds: float) -> str:
    minutes, secs = divmod(int(round(seconds)), 60)
    return f"{minutes} min {secs:02d} s" if minutes else f"{secs} s"


@dataclass
class StageRecord:
    name: str
    output: str
    seconds: float  # what the stage cost when it ran (now or in an earlier run)
    cached: bool
    key: str
    summary: dict[str, Any]


@dataclass
class Runner:
    """Runs the stages in order, skipping those already done with the same key, with progress lines."""

    total: int
    t0: float = field(default_factory=time.monotonic)
    records: dict[str, StageRecord] = field(default_factory=dict)

    def elapsed(self) -> float:
        return time.monotonic() - self.t0

    def spent(self) -> float:
        """Seconds the stages so far cost when they ran, plus the run's overhead."""
        return OVERHEAD_S + sum(r.seconds for r in self.records.values())

    def key(self, name: str) -> str:
        return self.records[name].key

    def run(
        self, name: str, job: Job, config: JobConfig, inputs: list[str], cache: bool = True
    ) -> dict[str, Any]:
        n = len(self.records) + 1
        label = f"demo [{n}/{max(self.total, n)}] {name}"
        output = storage.normalize_uri(config.output)
        key = stage_key(config, [self.key(i) for i in inputs])
        before = read_summary(output)
        if cache and before and before.get("status") == "ok" and before.get("demo_key") == key:
            log.info(
                "%s: done before (%s then), reusing %s",
                label,
                fmt_seconds(before["seconds"]),
                output,
            )
            self.records[name] = StageRecord(
                name, output, float(before["seconds"]), True, key, before
            )
            return before
        stale = stale_reason(output, config, key, before) if cache else None
        if stale:
            log.info("%s: %s; starting %s afresh", label, stale, output)
            storage.delete(output, recursive=True)
        log.info("%s: started (%s into the demo)", label, fmt_seconds(self.elapsed()))
        keyed = Job(job.name, job.config_cls, _with_key(job.run, key), job.description)
        summary = run_job(keyed, config)
        if summary["status"] != "ok":
            raise SepError(
                f"demo: stage '{name}' failed: {summary.get('error')} (see {output}/{SUMMARY})"
            )
        self.records[name] = StageRecord(
            name, output, float(summary["seconds"]), False, key, summary
        )
        log.info("%s: done in %s (%s into the demo)", label, fmt_seconds(summary["seconds"]),
                 fmt_seconds(self.elapsed()))  # fmt: skip
        return summary


def stale_reason(
    output: str, config: JobConfig, key: str, summary: dict[str, Any] | None
) -> str | None:
    """Why what is in ``output`` cannot be kept for this stage (None: keep it, or nothing there).

    A summary with another key means other settings or inputs; without a summary (a run
    that was stopped) the ``config.yaml`` every job writes first must match, so that a
    stopped stage resumes, and files made some other way never mix with the new ones.
    """
    if summary is not None:
        return None if summary.get("demo_key") == key else "settings or inputs changed"
    uri = storage.join(output, RESOLVED_CONFIG)
    if storage.exists(uri):
        import yaml

        before = yaml.safe_load(storage.read_text(uri)) or {}
        now = to_plain(config)
        same = {k: v for k, v in before.items() if k != "num_cpus"} == {
            k: v for k, v in now.items() if k != "num_cpus"
        }
        return None if same else "a stopped run with other settings is there"
    return "it holds files the demo did not make" if storage.list_files(output) else None


def _with_key(fn: Callable[[Any], dict[str, Any]], key: str) -> Callable[[Any], dict[str, Any]]:
    return lambda cfg: {**fn(cfg), "demo_key": key}


def prune_extra_tracks(data: str, tracks: int) -> None:
    """Remove rendered tracks numbered above ``tracks`` (left by a run with more songs)."""
    from sepcore.data.slakh import METADATA

    for uri in storage.list_files(data, suffix="/" + METADATA):
        name = uri.rsplit("/", 2)[-2]
        if name.startswith("Track") and name[5:].isdigit() and int(name[5:]) > tracks:
            log.info("demo: removing %s (the demo now has %d songs)", name, tracks)
            storage.delete(storage.parent(uri), recursive=True)


def heldout_tracks(plan: Plan, model: str) -> list:
    """The test tracks, as the evaluate job selects them (the training data's splits)."""
    manifest = train_job.read_manifest(plan.train[model].data)
    tracks, _ = evaluate_job.select_tracks(plan.evaluate[model], manifest)
    return tracks


def write_heldout(folder: str, tracks: list) -> list[str]:
    """Copy the held-out mixes to ``folder/<track>.flac`` (missing ones only; others removed)."""
    wanted = {
        storage.join(folder, t.track_id.split(":")[-1] + ".flac"): t.mix_uri
        for t in tracks
        if t.mix_uri
    }
    for uri in storage.list_files(folder):
        if uri not in wanted:
            storage.delete(uri)
    for uri, mix in wanted.items():
        if not storage.exists(uri):
            storage.write_bytes(uri, storage.read_bytes(mix))
    return sorted(wanted)


# ---------------------------------------------------------------- extras and budget


def extra_estimate(name: str, base_train_s: float, base_eval_s: float) -> float:
    """Seconds an extra model is expected to cost, scaled by this machine's measured speed."""
    return EXTRA_COST[name] * base_train_s + base_eval_s


def fits_budget(spent_s: float, estimate_s: float, budget_s: float) -> bool:
    return spent_s + estimate_s <= budget_s


# ---------------------------------------------------------------- driver


def run(cfg: DemoConfig) -> dict[str, Any]:
    plan = make_plan(cfg)
    main = cfg.models[0]
    extras = [m for m in cfg.extra_models if m not in cfg.models]
    runner = Runner(total=4 + 2 * len(cfg.models) + (1 if cfg.library else 0))
    log.info("demo: %s, %d songs, target %s, models %s, extras %s when they fit %g min; output %s",
             "quick run" if cfg.quick else "full run", plan.render.tracks, cfg.target, cfg.models, extras,
             cfg.budget_minutes, plan.output)  # fmt: skip
    prune_extra_tracks(plan.render.output, plan.render.tracks or 0)
    runner.run("render", render_job.JOB, plan.render, [])
    runner.run("prepare", prepare_job.JOB, plan.prepare, ["render"])
    for m in cfg.models:
        runner.run(f"train {m}", train_job.JOB, plan.train[m], ["prepare"])
    held = write_heldout(plan.heldout, heldout_tracks(plan, main))
    log.info("demo: %d held-out mixes in %s", len(held), plan.heldout)
    runner.run("separate held-out", separate_job.JOB, plan.separate, [f"train {main}"], cache=False)
    if plan.separate_library is not None:
        runner.run(
            "separate library",
            separate_job.JOB,
            plan.separate_library,
            [f"train {main}"],
            cache=False,
        )
    for m in cfg.models:
        runner.run(f"evaluate {m}", evaluate_job.JOB, plan.evaluate[m], [f"train {m}"])
    runner.run("classify", classify_job.JOB, plan.classify, ["render"])
    decisions: dict[str, str] = {m: "trained" for m in cfg.models}
    result = write_outputs(cfg, plan, runner, decisions)  # a report before the extras start
    for extra in extras:
        decisions[extra] = run_extra(cfg, plan, runner, extra)
        result = write_outputs(cfg, plan, runner, decisions)
    announce(result["report"], result["metrics"])
    return result


def run_extra(cfg: DemoConfig, plan: Plan, runner: Runner, model: str) -> str:
    """Train and evaluate an extra model when it fits the budget (or was trained before)."""
    main = cfg.models[0]
    estimate = extra_estimate(model, runner.records[f"train {main}"].seconds,
                              runner.records[f"evaluate {main}"].seconds)  # fmt: skip
    spent, budget = runner.spent(), cfg.budget_minutes * 60
    if not trained_before(plan, runner, model) and not fits_budget(spent, estimate, budget):
        why = (f"skipped: the run has cost {fmt_seconds(spent)} and {model} would take about "
               f"{fmt_seconds(estimate)} more, over the {cfg.budget_minutes:g}-minute budget")  # fmt: skip
        log.info("demo: %s %s", model, why)
        return why
    inputs = ["prepare"]
    runner.total += 3 if model == "activation_cnn" else 2
    if model == "activation_cnn":
        runner.run("activation prepare", prepare_job.JOB, plan.activation_prepare, ["render"])
        inputs = ["activation prepare"]
    runner.run(f"train {model}", train_job.JOB, plan.train[model], inputs)
    runner.run(f"evaluate {model}", evaluate_job.JOB, plan.evaluate[model], [f"train {model}"])
    return "trained"


def _done(config: JobConfig, inputs: list[str]) -> str | None:
    """The stage's key when its output is done with these settings and inputs, else None."""
    key = stage_key(config, inputs)
    summary = read_summary(storage.normalize_uri(config.output))
    return (
        key
        if summary and summary.get("status") == "ok" and summary.get("demo_key") == key
        else None
    )


def trained_before(plan: Plan, runner: Runner, model: str) -> bool:
    """Whether an extra model's training (and for the CNN its data) is done with today's settings."""
    if model != "activation_cnn":
        return _done(plan.train[model], [runner.key("prepare")]) is not None
    prep = _done(plan.activation_prepare, [runner.key("render")])
    return prep is not None and _done(plan.train[model], [prep]) is not None


def announce(page: str, metrics: str) -> None:
    """Print where the report is and how to open it."""
    if storage.is_local(page):
        path = storage.local_path(page)
        how = f"python -m webbrowser file://{path}   (or: xdg-open {path}, open {path} on macOS)"
    else:
        folder = storage.parent(page)
        how = (f"aws s3 cp --recursive {folder} ./demo_report --exclude '*' --include report.html "
               f"--include 'report_files/*'   then open ./demo_report/report.html")  # fmt: skip
    print(f"\nThe demo's report: {page}\n  open it: {how}\n  numbers: {metrics}\n", flush=True)


# ---------------------------------------------------------------- metrics.json


def _load_json(uri: str) -> dict[str, Any]:
    return json.loads(storage.read_text(uri))


def _median_rows(median: dict[str, Any]) -> dict[str, Any]:
    return {src: {k: median[src][k] for k in ("sdr", "sir", "sar")} for src in E.SOURCES}


def demo_metrics(
    cfg: DemoConfig, plan: Plan, runner: Runner, decisions: dict[str, str]
) -> dict[str, Any]:
    """The content of the demo's metrics.json (format ``sep-demo/1``, see the README)."""
    target = cfg.target
    separators = [m for m in decisions if decisions[m] == "trained" and m in SEPARATORS]
    evals = {
        m: _load_json(storage.join(plan.evaluate[m].output, evaluate_job.METRICS_FILE))
        for m in separators
    }
    main = evals[cfg.models[0]]["separation"][target]
    rows: dict[str, Any] = {}
    for m in separators:
        rows[m] = _median_rows(evals[m]["separation"][target]["median"]["model"])
    for method in ("irm", "ibm", "mixture"):
        rows[method] = _median_rows(main["median"][method])
    mix_sdr = E.from_json_number(rows["mixture"]["instrument"]["sdr"])
    gain = {
        m: round(E.from_json_number(rows[m]["instrument"]["sdr"]) - mix_sdr, 3) for m in separators
    }
    cls = _load_json(storage.join(plan.classify.output, classify_job.METRICS))
    manifest = train_job.read_manifest(plan.prepare.output)
    doc = {
        "format": FORMAT, "target": target, "quick": cfg.quick, "data": plan.render.output,
        "tracks": {"songs": plan.render.tracks, **{s: len(v) for s, v in manifest["splits"].items()}},
        "separation": {
            "split": "test", "tracks": main["median"]["model"]["instrument"]["count"],
            "methods": [*separators, "irm", "ibm", "mixture"], "median": rows,
            "sdr_over_mixture": gain,
            "per_track": [{"track_id": t["track_id"], "seconds": t["seconds"],
                           "sdr": {m: t["scores"][m]["instrument"]["sdr"] for m in E.METHODS}}
                          for t in main["tracks"]],
            "evaluate": {m: storage.join(plan.evaluate[m].output, evaluate_job.METRICS_FILE) for m in separators},
        },
        "activation": _activation_metrics(plan) if decisions.get("activation_cnn") == "trained" else None,
        "classify": {"auc": cls["auc"], "classes": cls["classes"], "snippets": cls["snippets"],
                     "metrics": storage.join(plan.classify.output, classify_job.METRICS)},
        "separated": {name: _separated_counts(sep) for name, sep in _separations(plan).items()},
        "models": decisions,
        "stages": [{"stage": r.name, "seconds": round(r.seconds, 1), "cached": r.cached, "output": r.output}
                   for r in runner.records.values()],
        "wall_seconds": round(runner.elapsed(), 1),
        "budget_seconds": cfg.budget_minutes * 60,
    }  # fmt: skip
    return E.to_json(doc)


def _activation_metrics(plan: Plan) -> dict[str, Any]:
    doc = _load_json(
        storage.join(plan.evaluate["activation_cnn"].output, evaluate_job.METRICS_FILE)
    )
    return {"per_class": doc["activation"]["per_class"],
            "metrics": storage.join(plan.evaluate["activation_cnn"].output, evaluate_job.METRICS_FILE)}  # fmt: skip


def _separations(plan: Plan) -> dict[str, separate_job.SeparateConfig]:
    out = {"heldout": plan.separate}
    if plan.separate_library is not None:
        out["library"] = plan.separate_library
    return out


def read_manifest_rows(output: str) -> list[dict[str, Any]]:
    import pyarrow.parquet as pq

    uri = storage.join(output, separate_job.MANIFEST)
    if not storage.exists(uri):
        return []
    return pq.read_table(io.BytesIO(storage.read_bytes(uri))).to_pylist()


def _separated_counts(sep: separate_job.SeparateConfig) -> dict[str, Any]:
    rows = read_manifest_rows(storage.normalize_uri(sep.output))
    return {"files": len(rows), **{s: sum(r["status"] == s for r in rows) for s in ("ok", "skipped", "error")},
            "manifest": storage.join(storage.normalize_uri(sep.output), separate_job.MANIFEST)}  # fmt: skip


# ---------------------------------------------------------------- report


def write_outputs(
    cfg: DemoConfig, plan: Plan, runner: Runner, decisions: dict[str, str]
) -> dict[str, Any]:
    """metrics.json, then report.html; the demo's summary entries."""
    doc = demo_metrics(cfg, plan, runner, decisions)
    metrics_uri = storage.join(plan.output, METRICS_FILE)
    storage.write_text(metrics_uri, json.dumps(doc, indent=1))
    page = R.write_report(plan.output, report_sections(cfg, plan, doc),
                          title=f"sep demo: separating the {cfg.target}")  # fmt: skip
    sep = doc["separation"]
    figures: dict[str, Any] = {}
    for method, row in sep["median"].items():
        figures[f"{cfg.target} SDR/SIR/SAR {method}"] = " / ".join(
            f"{E.from_json_number(row['instrument'][k]):.2f}" for k in ("sdr", "sir", "sar")
        )
    figures.update({f"{m} SDR over mixture (dB)": g for m, g in sep["sdr_over_mixture"].items()})
    figures.update({f"AUC test {c}": v for c, v in doc["classify"]["auc"].get("test", {}).items()})
    figures["models"] = decisions
    figures["report"] = page
    return {
        "counts": {"songs": plan.render.tracks, "heldout_tracks": sep["tracks"],
                   "stages_run": sum(not r.cached for r in runner.records.values()),
                   "stages_reused": sum(r.cached for r in runner.records.values())},
        "figures": figures, "failed": [f for r in runner.records.values() for f in r.summary.get("failed") or []],
        "report": page, "metrics": metrics_uri,
    }  # fmt: skip


def _num(x: Any) -> float:
    return E.from_json_number(x)


def report_sections(cfg: DemoConfig, plan: Plan, doc: dict[str, Any]) -> list[R.Section]:
    sections = [
        R.Section("Summary", [_summary_text(cfg, plan, doc)]),
        _scores_section(cfg, plan, doc),
    ]
    sections += [s for s in (_examples_section(plan, cfg.models[0]), _training_section(plan, doc),
                             _classify_section(plan, doc), _activation_section(plan, doc)) if s]  # fmt: skip
    sections.append(_separated_section(plan, doc))
    sections.append(_stages_section(plan, doc))
    return sections


def _summary_text(cfg: DemoConfig, plan: Plan, doc: dict[str, Any]) -> R.Text:
    sep, main = doc["separation"], cfg.models[0]
    mix = _num(sep["median"]["mixture"]["instrument"]["sdr"])
    model = _num(sep["median"][main]["instrument"]["sdr"])
    tr = doc["tracks"]
    skipped = [f"{m} ({d})" for m, d in doc["models"].items() if d != "trained"]
    return R.Text(
        f"{tr['songs']} songs rendered from the built-in corpus (music21 scores with General MIDI "
        f"instruments and rule-based drums) into {plan.render.output}; split by track into "
        f"{tr.get('train', 0)} training, {tr.get('validation', 0)} validation and {tr.get('test', 0)} "
        f"held-out songs holding the {cfg.target}.\n\n"
        f"On the {plural(sep['tracks'], 'held-out song')} the {main} separator's median SDR for the {cfg.target} is "
        f"{model:.2f} dB, against {mix:.2f} dB for the mixture used as the estimate: "
        f"{model - mix:+.2f} dB. The ideal ratio mask with the same STFT reaches "
        f"{_num(sep['median']['irm']['instrument']['sdr']):.2f} dB (the upper bound of mask methods).\n\n"
        f"Models trained: {', '.join(m for m, d in doc['models'].items() if d == 'trained')}."
        + (f" Not trained: {'; '.join(skipped)}." if skipped else "")
        + f"\n\nWall time of this run {fmt_seconds(doc['wall_seconds'])}; the stages cost "
        f"{fmt_seconds(sum(s['seconds'] for s in doc['stages']))} when they ran (see the last section). "
        f"Every number here is in {storage.join(plan.output, METRICS_FILE)}."
    )


def _scores_section(cfg: DemoConfig, plan: Plan, doc: dict[str, Any]) -> R.Section:
    sep = doc["separation"]
    names = {"irm": "IRM (oracle)", "ibm": "IBM (oracle)", "mixture": "mixture as estimate"}
    rows = [[names.get(m, f"{m} (model)"), *(_num(sep["median"][m][src][k]) for src in E.SOURCES
                                              for k in ("sdr", "sir", "sar"))] for m in sep["methods"]]  # fmt: skip
    cols = ["method", *(f"{'target' if s == 'instrument' else 'rest'} {k.upper()}" for s in E.SOURCES
                        for k in ("sdr", "sir", "sar"))]  # fmt: skip
    table = R.Table(f"{cfg.target} vs rest: median over {plural(sep['tracks'], 'held-out song')} (dB)", cols, rows,
                    note="BSS Eval (bss_eval_sources, fast_bss_eval) of [target, rest]. Model rows: the trained "
                         "checkpoints; IRM / IBM: ideal ratio / binary masks with the model's STFT (upper "
                         "bounds); mixture: the mixture as both estimates (lower bound; its SAR is "
                         "numerically infinite).")  # fmt: skip
    methods = [cfg.models[0] if m == "model" else m for m in E.METHODS]
    per_track = R.Table("per held-out song: SDR of the target (dB)", ["song", "seconds", *methods],
                        [[t["track_id"], t["seconds"], *(_num(t["sdr"][m]) for m in E.METHODS)]
                         for t in sep["per_track"]])  # fmt: skip
    items: list[Any] = [table]
    box = storage.join(plan.evaluate[cfg.models[0]].output, R.ASSETS, "box_sdr_instrument.png")
    if storage.exists(box):
        items.append(R.Image("scores_box_sdr.png", storage.read_bytes(box),
                             title=f"SDR per held-out song, by class and method ({cfg.models[0]})"))  # fmt: skip
    items.append(per_track)
    return R.Section("Separation scores", items)


def _examples_section(plan: Plan, model: str) -> R.Section | None:
    """The evaluate job's examples (spectrograms and clips), copied beside the demo's report."""
    ecfg = plan.evaluate[model]
    out = storage.normalize_uri(ecfg.output)
    meta = ckpt.read_meta(ckpt.resolve(ecfg.checkpoint))
    doc = _load_json(storage.join(out, evaluate_job.METRICS_FILE))
    key = evaluate_job.fingerprint(ecfg, meta, list(doc["separation"]))
    wanted = [t["track_id"] for t in doc["separation"][doc["target"]]["tracks"]]
    items: list[Any] = []
    for track_id in wanted:
        uri = storage.join(
            out, evaluate_job.DONE_FOLDER, evaluate_job.safe_name(track_id) + ".json"
        )
        done = _load_json(uri) if storage.exists(uri) else {}
        ex = done.get("result", {}).get("example") if done.get("fingerprint") == key else None
        if not ex:
            continue
        assets = storage.join(out, R.ASSETS)
        items.append(
            R.Image(
                f"ex_{ex['spectrogram']}",
                storage.read_bytes(storage.join(assets, ex["spectrogram"])),
                title=f"{track_id}: spectrograms from {ex['start_s']:.1f} s",
                caption="mixture, reference target, model estimate and IRM estimate",
            )
        )
        items.append(R.AudioGroup(f"{track_id}: listen", [
            R.AudioClip(f"ex_{name}", label, storage.read_bytes(storage.join(assets, name)))
            for name, label in ex["clips"]]))  # fmt: skip
    return R.Section(f"Held-out examples ({model})", items) if items else None


def _training_section(plan: Plan, doc: dict[str, Any]) -> R.Section | None:
    items: list[Any] = []
    rows = []
    for m, decision in doc["models"].items():
        if decision != "trained":
            continue
        out = storage.normalize_uri(plan.train[m].output)
        curve = storage.join(out, train_job.CURVE_FILE)
        if storage.exists(curve):
            items.append(
                R.Image(f"loss_curve_{m}.png", storage.read_bytes(curve), title=f"{m}: loss curves")
            )
        s = read_summary(out) or {}
        fig = s.get("figures", {})
        best = fig.get("best_val_sdr", fig.get("best_val_loss"))
        rows.append([m, s.get("counts", {}).get("epochs"), fig.get("best_epoch"),
                     "val_sdr" if "best_val_sdr" in fig else "val_loss", best, s.get("seconds")])  # fmt: skip
    if not rows:
        return None
    items.insert(0, R.Table("training runs", ["model", "epochs", "best epoch", "metric", "best value", "seconds"],
                            rows, note="val_sdr: median SDR (dB) of the target on validation songs, "
                            "10 log10(|s|^2 / |s - s_hat|^2); the best checkpoint is the one evaluated."))  # fmt: skip
    return R.Section("Training", items)


def _classify_section(plan: Plan, doc: dict[str, Any]) -> R.Section:
    out = storage.normalize_uri(plan.classify.output)
    auc = doc["classify"]["auc"]
    rows = [
        [c, auc.get("validation", {}).get(c), auc.get("test", {}).get(c)]
        for c in doc["classify"]["classes"]
    ]
    items: list[Any] = [
        R.Text("LightGBM on 1-second snippets of the mix (seed 000): is each instrument playing in this second?"),
        R.Table("AUC per class", ["class", "validation", "test"], rows, digits=3,
                note=f"snippets: {doc['classify']['snippets']}"),
    ]  # fmt: skip
    for name, title in (
        (classify_job.ROC_PNG, "ROC curves"),
        (classify_job.IMPORTANCE_PNG, "what the models use"),
    ):
        uri = storage.join(out, name)
        if storage.exists(uri):
            items.append(R.Image(f"classify_{name}", storage.read_bytes(uri), title=title))
    return R.Section("Instrument classifier", items)


def _activation_section(plan: Plan, doc: dict[str, Any]) -> R.Section | None:
    act = doc.get("activation")
    if not act:
        return None
    rows = [
        [c, _num(v["mae"]), _num(v["error_db"]), v["tracks"]] for c, v in act["per_class"].items()
    ]
    items: list[Any] = [R.Table("activation CNN on the held-out songs", ["class", "mean |error|", "error (dB)",
                                                                         "tracks"], rows, digits=3,
                                note="median over songs where the class plays; mean |error| on the [0, 1] "
                                "activation scale (60 dB range); error (dB) as in sep evaluate's report.")]  # fmt: skip
    assets = storage.join(plan.evaluate["activation_cnn"].output, R.ASSETS)
    for name in ("sequence_activations.png", "noise_matrix.png", "leakage_matrix.png"):
        uri = storage.join(assets, name)
        if storage.exists(uri):
            items.append(
                R.Image(
                    f"activation_{name}", storage.read_bytes(uri), title=name[:-4].replace("_", " ")
                )
            )
    return R.Section("Instrument activations (seed 001)", items)


def _separated_section(plan: Plan, doc: dict[str, Any]) -> R.Section:
    items: list[Any] = []
    for name, sep in _separations(plan).items():
        rows = read_manifest_rows(storage.normalize_uri(sep.output))
        table = [
            [r["relative"], r["status"], r["duration_s"], r["total_s"], r["error"] or ""]
            for r in rows
        ]
        items.append(R.Table(f"{'held-out songs' if name == 'heldout' else 'your library'}: {sep.library} -> "
                             f"{sep.output}", ["file", "status", "seconds", "separation s", "error"], table,
                             digits=1, note="stems: <output>/stems/<file>-<hash>/instrument.flac and rest.flac "
                             "(see manifest.parquet); skipped: separated by an earlier run with the same "
                             "model, stems kept."))  # fmt: skip
        if name == "library":
            items += _library_clips(rows, plan)
    return R.Section("Separated files", items)


def _library_clips(rows: list[dict[str, Any]], plan: Plan) -> list[Any]:
    """Audio players for the loudest 15 s of the first few separated files of the user's library."""
    from sepcore.io.audio import Audio, encode_bytes, read_audio

    out = []
    ok = [
        r
        for r in rows
        if r["status"] in ("ok", "skipped") and (r["duration_s"] or 0) <= CLIP_MAX_SECONDS
    ]
    for i, row in enumerate(ok[:CLIP_FILES]):
        inst, rest = read_audio(row["instrument_uri"]), read_audio(row["rest_uri"])
        sr = inst.sample_rate
        start, _ = E.loudest_span(inst.samples, sr, 15.0)
        stop = start + 15 * sr
        clips = []
        for label, audio in (("input", inst.samples + rest.samples), (f"{plan.prepare.target}", inst.samples),
                             ("rest", rest.samples)):  # fmt: skip
            clip = Audio(audio[:, start:stop].clip(-1.0, 1.0), sr)
            clips.append(
                R.AudioClip(f"library_{i:02d}_{label}.flac", label, encode_bytes(clip, "flac"))
            )
        out.append(R.AudioGroup(f"{row['relative']}, from {start / sr:.1f} s", clips))
    return out


def _stages_section(plan: Plan, doc: dict[str, Any]) -> R.Section:
    rows = [
        [s["stage"], "reused" if s["cached"] else "ran", s["seconds"], s["output"]]
        for s in doc["stages"]
    ]
    return R.Section("Stages", [
        R.Table("what ran", ["stage", "this run", "seconds", "output"], rows, digits=1,
                note="seconds: what the stage cost when it ran (reused stages ran in an earlier sep demo). "
                     "Each output folder has its own summary.json; evaluate_* and classify have their own "
                     "report.html."),
        R.Text(f"Wall time of this run: {fmt_seconds(doc['wall_seconds'])} (budget for the extra models "
               f"{fmt_seconds(doc['budget_seconds'])})."),
    ])  # fmt: skip


JOB = Job(
    "demo", DemoConfig, run, "Run the main job end to end on the embedded default, with one report."
)
main = JOB.main

if __name__ == "__main__":
    sys.exit(main())
