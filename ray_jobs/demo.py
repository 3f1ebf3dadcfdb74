"""demo: the main job end to end on the embedded default, with one report to look at.

    sep demo                                   # ./out/demo, local Ray, file storage
    sep demo library=~/Music/some-album        # also separate a folder of your own songs
    sep demo output=s3://bucket/demo           # the same on object storage (and RAY_ADDRESS)
    sep demo quick=true output=/tmp/demo_quick # the CI-sized smoke run (about 2 minutes)

Each stage is one of the other jobs, run through its ``JOB`` with the demo's settings
(``make_plan``): render -> ``data``, prepare -> ``shards_<target>``, train ->
``train_<model>``, separate the held-out mixes (copied to ``heldout``) -> ``separated``
and the user's ``library`` -> ``separated_library``, evaluate -> ``evaluate_<model>``,
classify -> ``classify``; then ``report.html`` and ``metrics.json``
(:mod:`sepcore.demo.report`). The ``extra_models`` follow when the time the run has cost
so far plus their estimate fits ``budget_minutes``; the report is rewritten after each.

A rerun reuses each stage done before with the same settings and inputs
(:mod:`sepcore.stages`; ``separate`` always runs, skipping the files it did before). The
budget counts what each stage cost when it ran, so a rerun makes the same choice of
extras. See docs/demo.md.
"""

from __future__ import annotations

import logging
import sys
from dataclasses import dataclass
from typing import Any, Literal

from pydantic import Field, ValidationError, create_model, model_validator

from ray_jobs import classify as classify_job
from ray_jobs import evaluate as evaluate_job
from ray_jobs import prepare as prepare_job
from ray_jobs import render as render_job
from ray_jobs import separate as separate_job
from ray_jobs import train as train_job
from ray_jobs.common import Job, JobConfig, run_job
from sepcore.config import Config, to_plain
from sepcore.data.classes import CLASSES
from sepcore.demo import report
from sepcore.demo.presets import PRESETS, STAGE_KEYS, deep_merge
from sepcore.errors import ConfigError
from sepcore.io import storage
from sepcore.prepare.config import SplitConfig
from sepcore.stages import Stages, fmt_seconds, is_done, stage_key

log = logging.getLogger("sep.demo")

ModelName = Literal["hourglass", "blstm", "activation_cnn"]
#: Idle 2-core estimate of an extra model's cost as a multiple of the first separator's
#: measured training time (then plus that separator's evaluation time), see docs/demo.md.
EXTRA_COST = {"blstm": 0.75, "activation_cnn": 1.6}
#: Seconds of the run not inside a stage (Ray start-up, listing, report), for the budget.
OVERHEAD_S = 45.0

StageOverrides = create_model(
    "StageOverrides", __base__=Config, __doc__="Per-stage keys laid over the preset (each a job's config, in part).",
    **{name: (dict[str, Any], Field(default_factory=dict, description=d)) for name, d in STAGE_KEYS.items()},
)  # fmt: skip


class DemoConfig(JobConfig):
    output: str = Field("out/demo", description="URI where the demo writes everything")
    tracks: int | None = Field(None, ge=4, description="songs in the demo dataset (default 32; quick: 6)")
    seed: int = Field(0, description="seed of the demo corpus, the splits and the training")
    target: str = Field("guitar", description="instrument the demo separates")
    library: str | None = Field(None, description="a folder (or prefix) of your own songs to separate too")
    quick: bool = Field(False, description="the CI-sized smoke run: 6 short songs, tiny STFT, a few steps")
    models: list[Literal["hourglass", "blstm"]] = Field(
        ["hourglass"], min_length=1, description="separators always trained (the first is the main one)")
    extra_models: list[ModelName] = Field(
        ["blstm", "activation_cnn"], description="trained afterwards when they fit budget_minutes")
    budget_minutes: float = Field(15.0, gt=0, description="time budget that decides the extra models")
    split: SplitConfig | None = Field(
        None, description="track-level split fractions for prepare, evaluate and classify "
        "(default 0.7 / 0.1 / 0.2; quick: 0.5 / 0.25 / 0.25)")
    stages: StageOverrides = Field(default_factory=StageOverrides, description="per-stage overrides")  # type: ignore[valid-type]

    @model_validator(mode="after")
    def _check(self) -> DemoConfig:
        if self.target not in CLASSES:
            raise ValueError(f"unknown target '{self.target}'; known: {list(CLASSES)}")
        split = self.split
        if split and abs(split.train + split.validation + split.test - 1) > 1e-6:
            raise ValueError("split fractions must sum to 1")
        make_plan(self)  # every stage's config is valid before anything starts
        return self


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


def make_plan(cfg: DemoConfig) -> Plan:
    """Every stage's config: the preset, the user's ``stages.*`` keys, then what the demo fixes."""
    size, out = PRESETS["quick" if cfg.quick else "full"], storage.normalize_uri(cfg.output)

    def stage(cls: type[Config], name: str, **fixed: Any) -> Any:
        tree = deep_merge(deep_merge(size[name], getattr(cfg.stages, name)), {"num_cpus": cfg.num_cpus, **fixed})
        try:
            return cls.model_validate(tree)
        except ValidationError as exc:  # a ConfigError passes through pydantic to the CLI (exit 2)
            err = exc.errors()[0]
            problem = "unknown key" if err["type"] == "extra_forbidden" else err["msg"]
            raise ConfigError(f"stages.{name}." + ".".join(str(p) for p in err["loc"]), problem) from None

    def at(name: str) -> str:
        return storage.join(out, name)

    seed, split = cfg.seed, cfg.split.model_dump() if cfg.split else size["split"]
    data, main, sources = at("data"), at(f"train_{cfg.models[0]}"), [{"kind": "slakh", "uri": at("data")}]
    models = list(dict.fromkeys([*cfg.models, *cfg.extra_models]))
    shards = {m: at("shards_activation" if m == "activation_cnn" else f"shards_{cfg.target}") for m in models}
    library = cfg.library and stage(separate_job.SeparateConfig, "separate", library=cfg.library,
                                    output=at("separated_library"), checkpoint=main)  # fmt: skip
    return Plan(
        output=out,
        render=stage(render_job.RenderConfig, "render", midi="demo", output=data, tracks=cfg.tracks or size["tracks"], seed=seed),
        prepare=stage(prepare_job.PrepareConfig, "prepare", sources=sources, output=at(f"shards_{cfg.target}"),
                      target=cfg.target, split=split, seed=seed),
        train={m: stage(train_job.TrainConfig, m, data=shards[m], output=at(f"train_{m}"), seed=seed) for m in models},
        activation_prepare=stage(prepare_job.PrepareConfig, "activation_prepare", sources=sources,
                                 output=at("shards_activation"), split=split, seed=seed),
        heldout=at("heldout"),
        separate=stage(separate_job.SeparateConfig, "separate", library=at("heldout"), output=at("separated"), checkpoint=main),
        separate_library=library or None,
        evaluate={m: stage(evaluate_job.EvaluateConfig, "evaluate", data=data, checkpoint=at(f"train_{m}"),
                           output=at(f"evaluate_{m}"), split="test") for m in models},
        classify=stage(classify_job.ClassifyConfig, "classify", data=data, output=at("classify"), split=split, seed=seed),
    )  # fmt: skip


# ---------------------------------------------------------------- driver


def run_stage(stages: Stages, name: str, job: Job, config: JobConfig, inputs: list[str], cache: bool = True) -> None:
    """Run ``job`` with ``config`` as a stage; its summary records the stage's key."""

    def call(key: str) -> dict[str, Any]:
        keyed = Job(job.name, job.config_cls, lambda c: {**job.run(c), "stage_key": key}, job.description)
        return run_job(keyed, config)

    stages.run(name, config.output, to_plain(config), inputs, call, cache)


def run(cfg: DemoConfig) -> dict[str, Any]:
    plan, main = make_plan(cfg), cfg.models[0]
    extras = [m for m in cfg.extra_models if m not in cfg.models]
    total = 4 + 2 * len(cfg.models) + bool(cfg.library) + sum(3 if m == "activation_cnn" else 2 for m in extras)
    stages = Stages(total, "demo", log)
    log.info("demo: %s, %d songs, target %s, models %s, extras %s when they fit %g min; output %s",
             "quick run" if cfg.quick else "full run", plan.render.tracks, cfg.target, cfg.models, extras,
             cfg.budget_minutes, plan.output)  # fmt: skip
    for name in report.prune_tracks(plan.render.output, plan.render.tracks or 0):
        log.info("demo: removed %s (the demo now has %d songs)", name, plan.render.tracks)
    run_stage(stages, "render", render_job.JOB, plan.render, [])
    run_stage(stages, "prepare", prepare_job.JOB, plan.prepare, ["render"])
    for m in cfg.models:
        run_stage(stages, f"train {m}", train_job.JOB, plan.train[m], ["prepare"])
    held = report.copy_heldout(plan.heldout, report.heldout_mixes(plan.render.output, plan.prepare.output))
    log.info("demo: %d held-out mixes in %s", len(held), plan.heldout)
    run_stage(stages, "separate held-out", separate_job.JOB, plan.separate, [f"train {main}"], cache=False)
    if plan.separate_library is not None:
        run_stage(stages, "separate library", separate_job.JOB, plan.separate_library, [f"train {main}"], cache=False)
    for m in cfg.models:
        run_stage(stages, f"evaluate {m}", evaluate_job.JOB, plan.evaluate[m], [f"train {m}"])
    run_stage(stages, "classify", classify_job.JOB, plan.classify, ["render"])
    decisions = {m: "trained" for m in cfg.models}
    result = write_outputs(cfg, plan, stages, decisions)  # a report before the extras start
    for extra in extras:
        decisions[extra] = run_extra(cfg, plan, stages, extra)
        result = write_outputs(cfg, plan, stages, decisions)
    announce(result["report"], result["metrics"])
    return result


def run_extra(cfg: DemoConfig, plan: Plan, stages: Stages, model: str) -> str:
    """Train and evaluate an extra model when it fits the budget (or was trained before)."""
    main, cnn = cfg.models[0], model == "activation_cnn"
    names = ["activation prepare"] * cnn + [f"train {model}", f"evaluate {model}"]
    estimate = EXTRA_COST[model] * stages.records[f"train {main}"].seconds + stages.records[f"evaluate {main}"].seconds
    spent, budget = stages.spent(OVERHEAD_S), cfg.budget_minutes * 60
    if not trained_before(plan, stages, model) and spent + estimate > budget:
        why = (f"skipped: the run has cost {fmt_seconds(spent)} and {model} would take about "
               f"{fmt_seconds(estimate)} more, over the {cfg.budget_minutes:g}-minute budget")  # fmt: skip
        for name in names:
            stages.skip(name, why)
        return why
    if cnn:
        run_stage(stages, names[0], prepare_job.JOB, plan.activation_prepare, ["render"])
    run_stage(stages, names[-2], train_job.JOB, plan.train[model], [names[0] if cnn else "prepare"])
    run_stage(stages, names[-1], evaluate_job.JOB, plan.evaluate[model], [names[-2]])
    return "trained"


def trained_before(plan: Plan, stages: Stages, model: str) -> bool:
    """Whether an extra model's training (and for the CNN its data) is done with today's settings."""
    inputs = [stages.key("prepare")]
    if model == "activation_cnn":
        prep = plan.activation_prepare
        inputs = [stage_key(to_plain(prep), [stages.key("render")])]
        if not is_done(prep.output, inputs[0]):
            return False
    return is_done(plan.train[model].output, stage_key(to_plain(plan.train[model]), inputs))


def write_outputs(cfg: DemoConfig, plan: Plan, stages: Stages, decisions: dict[str, str]) -> dict[str, Any]:
    """metrics.json and report.html (:mod:`sepcore.demo.report`); the demo's summary entries."""
    separated = {"heldout": (plan.separate.library, plan.separate.output)}
    if plan.separate_library is not None:
        separated["library"] = (plan.separate_library.library, plan.separate_library.output)
    layout = report.DemoLayout(
        plan.output, cfg.target, cfg.quick, plan.render.output, plan.render.tracks or 0, plan.prepare.output,
        {m: c.output for m, c in plan.train.items()}, {m: c.output for m, c in plan.evaluate.items()},
        plan.classify.output, separated)  # fmt: skip
    return report.write_outputs(layout, cfg.models[0], decisions, list(stages.records.values()),
                                stages.elapsed(), cfg.budget_minutes * 60)  # fmt: skip


def announce(page: str, metrics: str) -> None:
    """Print where the report is and how to open it."""
    if storage.is_local(page):
        path = storage.local_path(page)
        how = f"python -m webbrowser file://{path}   (or: xdg-open {path}, open {path} on macOS)"
    else:
        how = (f"aws s3 cp --recursive {storage.parent(page)} ./demo_report --exclude '*' --include report.html "
               f"--include 'report_files/*'   then open ./demo_report/report.html")  # fmt: skip
    print(f"\nThe demo's report: {page}\n  open it: {how}\n  numbers: {metrics}\n", flush=True)


JOB = Job("demo", DemoConfig, run, "Run the main job end to end on the embedded default, with one report.")
main = JOB.main

if __name__ == "__main__":
    sys.exit(main())
