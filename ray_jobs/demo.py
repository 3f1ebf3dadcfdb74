"""demo: the main job end to end on the embedded default, with one report to look at.

    sep demo                                   # ./out/demo, local Ray, file storage
    sep demo quick=true output=/tmp/demo_quick # the CI-sized smoke run (about 2 minutes)

Each stage is one of the other jobs, run through its ``JOB`` with the settings of
``make_plan``; the budget, presets and report are in :mod:`sepcore.demo`. See docs/demo.md.
"""

from __future__ import annotations

import logging
import sys
from dataclasses import dataclass
from typing import Any, Literal

from pydantic import Field, create_model, model_validator

from ray_jobs import classify as classify_job
from ray_jobs import evaluate as evaluate_job
from ray_jobs import prepare as prepare_job
from ray_jobs import render as render_job
from ray_jobs import separate as separate_job
from ray_jobs import train as train_job
from ray_jobs.common import Job, JobConfig, run_job
from sepcore.config import Config, to_plain
from sepcore.data.arranger import ROLES
from sepcore.demo import budget, report
from sepcore.demo.budget import EXTRA_COST as EXTRA_COST  # these two: for the tests
from sepcore.demo.budget import OVERHEAD_S as OVERHEAD_S
from sepcore.demo.presets import PRESETS, STAGE_KEYS, check_demo, stage_config
from sepcore.io import storage
from sepcore.prepare.config import SplitConfig
from sepcore.stages import Stages

log = logging.getLogger("sep.demo")

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
    extra_models: list[Literal["hourglass", "blstm", "activation_cnn"]] = Field(
        ["blstm", "activation_cnn"], description="trained afterwards when they fit budget_minutes")
    budget_minutes: float = Field(15.0, gt=0, description="time budget that decides the extra models")
    split: SplitConfig | None = Field(
        None, description="track-level split fractions for prepare, evaluate and classify "
        "(default 0.7 / 0.1 / 0.2; quick: 0.5 / 0.25 / 0.25)")
    stages: StageOverrides = Field(default_factory=StageOverrides, description="per-stage overrides")  # type: ignore[valid-type]

    @model_validator(mode="after")
    def _check(self) -> DemoConfig:
        check_demo(self.target, self.split)
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
        return stage_config(cls, name, size[name], getattr(cfg.stages, name), {"num_cpus": cfg.num_cpus, **fixed})

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
        render=stage(render_job.RenderConfig, "render", output=data, tracks=cfg.tracks or size["tracks"], seed=seed,
                     band={"require_roles": [cfg.target] if cfg.target in ROLES else []}),
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


def run_stage(stages: Stages, name: str, job: Job, config: JobConfig, inputs: list[str], cache: bool = True) -> None:
    """Run ``job`` with ``config`` as a stage; its summary records the stage's key."""

    def call(key: str) -> dict[str, Any]:
        keyed = Job(job.name, job.config_cls, lambda c: {**job.run(c), "stage_key": key}, job.description)
        return run_job(keyed, config)

    stages.run(name, config.output, to_plain(config), inputs, call, cache)


def run(cfg: DemoConfig) -> dict[str, Any]:
    plan, main = make_plan(cfg), cfg.models[0]
    extras = [m for m in cfg.extra_models if m not in cfg.models]
    stages = Stages(budget.stage_count(cfg.models, extras, bool(cfg.library)), "demo", log)
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
    decisions: dict[str, str] = {m: "trained" for m in cfg.models}
    result = write_outputs(cfg, plan, stages, decisions)  # a report before the extras start
    for extra in extras:
        decisions[extra] = run_extra(cfg, plan, stages, extra)
        result = write_outputs(cfg, plan, stages, decisions)
    report.announce(result["report"], result["metrics"])
    return result


def run_extra(cfg: DemoConfig, plan: Plan, stages: Stages, model: str) -> str:
    """Train and evaluate an extra model when it fits the budget (or was trained before)."""
    cnn = model == "activation_cnn"
    names = ["activation prepare"] * cnn + [f"train {model}", f"evaluate {model}"]
    before = budget.trained_before(stages, to_plain(plan.train[model]), to_plain(plan.activation_prepare) if cnn else None)
    why = None if before else budget.over_budget(stages, cfg.models[0], model, cfg.budget_minutes)
    if why:
        for name in names:
            stages.skip(name, why)
        return why
    if cnn:
        run_stage(stages, names[0], prepare_job.JOB, plan.activation_prepare, ["render"])
    run_stage(stages, names[-2], train_job.JOB, plan.train[model], [names[0] if cnn else "prepare"])
    run_stage(stages, names[-1], evaluate_job.JOB, plan.evaluate[model], [names[-2]])
    return "trained"


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


JOB = Job("demo", DemoConfig, run, "Run the main job end to end on the embedded default, with one report.")
main = JOB.main

if __name__ == "__main__":
    sys.exit(main())
