"""The time budget of ``sep demo``: which extra models fit, and which were trained before."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from sepcore.stages import Stages, fmt_seconds, is_done, stage_key

#: Idle 2-core estimate of an extra model's cost as a multiple of the first separator's
#: measured training time (then plus that separator's evaluation time), see docs/demo.md.
EXTRA_COST = {"blstm": 0.75, "activation_cnn": 1.6}
#: Seconds of the run not inside a stage (Ray start-up, listing, report), for the budget.
OVERHEAD_S = 45.0


def stage_count(models: Sequence[str], extras: Sequence[str], library: bool) -> int:
    """How many stages the demo counts: the fixed ones, each model's, the extras' (the CNN adds its data)."""
    return 4 + 2 * len(models) + library + sum(3 if m == "activation_cnn" else 2 for m in extras)


def over_budget(stages: Stages, main: str, model: str, budget_minutes: float) -> str | None:
    """Why the extra ``model`` is skipped, or None when the run's cost so far plus its estimate fits."""
    estimate = EXTRA_COST[model] * stages.records[f"train {main}"].seconds + stages.records[f"evaluate {main}"].seconds
    spent, budget = stages.spent(OVERHEAD_S), budget_minutes * 60
    if spent + estimate <= budget:
        return None
    return (f"skipped: the run has cost {fmt_seconds(spent)} and {model} would take about "
            f"{fmt_seconds(estimate)} more, over the {budget_minutes:g}-minute budget")  # fmt: skip


def trained_before(stages: Stages, train: dict[str, Any], activation_prepare: dict[str, Any] | None) -> bool:
    """Whether an extra model's training (and for the CNN, ``activation_prepare``: its data) is done
    with today's settings. ``train`` and ``activation_prepare`` are the stages' plain configs."""
    inputs = [stages.key("prepare")]
    if activation_prepare is not None:
        inputs = [stage_key(activation_prepare, [stages.key("render")])]
        if not is_done(activation_prepare["output"], inputs[0]):
            return False
    return is_done(train["output"], stage_key(train, inputs))
