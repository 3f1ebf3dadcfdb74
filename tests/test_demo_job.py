"""The demo job: a shortened end-to-end run on a local Ray, its rerun, and its planning."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from pydantic import Field

from ray_jobs import demo
from ray_jobs.common import Job, JobConfig
from sepcore.config import load_config
from sepcore.demo import budget, report
from sepcore.demo.presets import check_demo, deep_merge, stage_config
from sepcore.errors import ConfigError
from sepcore.io import storage
from sepcore.report import html as R
from sepcore.stages import StageRecord, Stages
from tests.support.library import make_library


@pytest.fixture(scope="module")
def user_library(demo_data, tmp_path_factory) -> str:
    """Two songs of the test demo set as a user's folder (WAV and FLAC)."""
    folder = tmp_path_factory.mktemp("my_music")
    mixes = [u for u in storage.list_files(demo_data) if u.endswith("/mix.flac")][:2]
    make_library(mixes, str(folder))
    return str(folder)


@pytest.fixture(scope="module")
def quick_demo(local_ray, user_library, tmp_path_factory) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("demo")
    args = ["quick=true", f"output={out}", f"library={user_library}", "extra_models=[]"]
    assert demo.main(args) == 0
    return out, json.loads((out / "summary.json").read_text())


@pytest.mark.slow
def test_quick_demo_writes_a_consistent_report_and_metrics(quick_demo):
    out, summary = quick_demo
    assert summary["status"] == "ok" and summary["counts"]["stages_reused"] == 0
    doc = json.loads((out / "metrics.json").read_text())
    assert doc["format"] == report.FORMAT and doc["target"] == "guitar" and doc["quick"] is True

    # model, oracle and mixture rows, all scored, and the same numbers the evaluate job wrote
    sep = doc["separation"]
    assert sep["methods"] == ["hourglass", "irm", "ibm", "mixture"] and sep["tracks"] >= 1
    for method in sep["methods"]:
        for src in ("instrument", "rest"):
            assert isinstance(sep["median"][method][src]["sdr"], float)
    ev = json.loads((out / "evaluate_hourglass" / "metrics.json").read_text())["separation"][
        "guitar"
    ]["median"]
    assert sep["median"]["hourglass"]["instrument"]["sdr"] == ev["model"]["instrument"]["sdr"]
    assert sep["median"]["irm"] == {
        s: {k: ev["irm"][s][k] for k in ("sdr", "sir", "sar")} for s in ("instrument", "rest")
    }
    gain = (
        sep["median"]["hourglass"]["instrument"]["sdr"]
        - sep["median"]["mixture"]["instrument"]["sdr"]
    )
    assert sep["sdr_over_mixture"]["hourglass"] == pytest.approx(gain, abs=1e-3)
    assert len(sep["per_track"]) == sep["tracks"]
    assert set(doc["classify"]["auc"]) == {"validation", "test"}
    assert [s["stage"] for s in doc["stages"]] == ["render", "prepare", "train hourglass", "separate held-out",
                                                   "separate library", "evaluate hourglass", "classify"]  # fmt: skip

    # the report: every file it refers to exists, and it shows what the issue asks for
    page = (out / "report.html").read_text()
    assert R.missing_files(storage.normalize_uri(str(out / "report.html"))) == []
    refs = R.referenced_files(page)
    for wanted in ("loss_curve_hourglass.png", "classify_roc.png", "scores_box_sdr.png"):
        assert f"{R.ASSETS}/{wanted}" in refs
    assert any(r.endswith("_spectrograms.png") for r in refs)
    assert page.count("<audio") >= 5 + 3 * 2  # an example's five clips, three per user file
    for row in ("hourglass (model)", "IRM (oracle)", "IBM (oracle)", "mixture as estimate"):
        assert row in page

    # separated stems exist for the held-out songs and for every file of the user's library
    selected = json.loads((out / "evaluate_hourglass" / "metrics.json").read_text())[
        "tracks_selected"
    ]
    assert doc["separated"]["heldout"] == {
        **doc["separated"]["heldout"],
        "files": selected,
        "ok": selected,
    }
    assert doc["separated"]["library"] == {
        **doc["separated"]["library"],
        "files": 2,
        "ok": 2,
        "error": 0,
    }
    for name in ("separated", "separated_library"):
        for row in report.manifest_rows(storage.normalize_uri(str(out / name))):
            assert row["status"] == "ok"
            assert storage.exists(row["instrument_uri"]) and storage.exists(row["rest_uri"])


@pytest.mark.slow
def test_quick_demo_rerun_reuses_every_stage(quick_demo, user_library):
    out, first = quick_demo
    page_before = (out / "report.html").read_text()
    assert (
        demo.main(["quick=true", f"output={out}", f"library={user_library}", "extra_models=[]"])
        == 0
    )
    summary = json.loads((out / "summary.json").read_text())
    # separate always runs (and skips every file); everything else is reused
    assert summary["counts"]["stages_reused"] == 5 and summary["counts"]["stages_run"] == 2
    assert summary["seconds"] < first["seconds"] / 3
    doc = json.loads((out / "metrics.json").read_text())
    assert doc["separated"]["library"]["skipped"] == 2
    assert (
        "hourglass (model)" in page_before
        and R.missing_files(storage.normalize_uri(str(out / "report.html"))) == []
    )


# ---------------------------------------------------------------- planning, without running jobs


def test_plan_lays_overrides_over_the_preset(tmp_path):
    cfg = load_config(demo.DemoConfig, None, [f"output={tmp_path}", "stages.hourglass.optim.epochs=7", "tracks=12",
                                              "library=/music"])  # fmt: skip
    plan = demo.make_plan(cfg)
    hg = plan.train["hourglass"]
    assert (
        hg.optim.epochs == 7 and hg.optim.max_steps_per_epoch == 60
    )  # the rest of the preset stays
    assert hg.data == plan.prepare.output and plan.prepare.output.endswith("/shards_guitar")
    assert plan.render.tracks == 12 and plan.render.sample_rate == 22050
    assert (
        plan.prepare.split.test == pytest.approx(0.2) and plan.classify.split == plan.prepare.split
    )
    assert (
        plan.evaluate["hourglass"].checkpoint == hg.output
        and plan.evaluate["hourglass"].backend == "fast"
    )
    assert plan.separate.library == plan.heldout and plan.separate_library is not None
    assert plan.train["activation_cnn"].data.endswith("/shards_activation")
    quick = demo.make_plan(load_config(demo.DemoConfig, None, ["quick=true", f"output={tmp_path}"]))
    assert (
        quick.render.tracks == 6
        and quick.prepare.features.n_fft == 256
        and quick.separate_library is None
    )


@pytest.mark.parametrize(
    "override, key",
    [("stages.hourglass.optim.epocs=3", "stages.hourglass.optim.epocs"), ("stages.training.x=1", "stages.training"),
     ("target=kazoo", "<root>"), ("models=[activation_cnn]", "models.0"),
     ("stages.evaluate.backend=slow", "stages.evaluate.backend")],
)  # fmt: skip
def test_invalid_keys_exit_2_naming_the_key(override, key, capsys):
    assert demo.main([override]) == 2
    assert f"'{key}'" in capsys.readouterr().err


def test_deep_merge_keeps_unnamed_keys():
    base = {"optim": {"epochs": 4, "lr": 0.1}, "model": {"name": "hourglass"}}
    merged = deep_merge(base, {"optim": {"epochs": 6}})
    assert merged == {"optim": {"epochs": 6, "lr": 0.1}, "model": {"name": "hourglass"}}
    assert base["optim"]["epochs"] == 4


def test_budget_decides_extras_from_the_cost_when_stages_ran(tmp_path, caplog):
    cfg = load_config(demo.DemoConfig, None, [f"output={tmp_path}", "budget_minutes=15"])
    plan = demo.make_plan(cfg)
    stages = Stages(total=11)
    for name, seconds in (("render", 60), ("prepare", 40), ("train hourglass", 300), ("evaluate hourglass", 40),
                          ("classify", 150)):  # fmt: skip
        stages.records[name] = StageRecord(name, "", seconds, True, f"key-{name}", {})
    # 590 s spent + 45 s overhead + 265 s for the BLSTM = 900 s: just fits; the CNN does not
    assert stages.spent(demo.OVERHEAD_S) == pytest.approx(590 + demo.OVERHEAD_S)
    assert stages.spent(demo.OVERHEAD_S) + demo.EXTRA_COST["blstm"] * 300 + 40 <= 900
    caplog.set_level("INFO", logger="sep.demo")
    why = demo.run_extra(cfg, plan, stages, "activation_cnn")
    assert why.startswith("skipped") and "activation_cnn" in why and len(stages.records) == 5
    # its three stages are counted, each saying why it did not run
    assert [r.getMessage().split(":")[0] for r in caplog.records] == [
        "demo [1/11] activation prepare", "demo [2/11] train activation_cnn", "demo [3/11] evaluate activation_cnn"]


class _Cfg(JobConfig):
    value: int = Field(0)


def test_stages_are_reused_or_redone_by_key(local_ray, tmp_path):
    calls = []

    def run(cfg: _Cfg) -> dict:
        calls.append(cfg.value)
        storage.write_text(
            storage.join(storage.normalize_uri(cfg.output), "result.txt"), str(cfg.value)
        )
        return {"counts": {}, "failed": []}

    job = Job("fake", _Cfg, run, "")
    out = str(tmp_path / "stage")
    stages = Stages(total=4)
    demo.run_stage(stages, "a", job, _Cfg(output=out, value=1), [])
    demo.run_stage(stages, "b", job, _Cfg(output=out, value=1), [])  # same settings: reused
    assert calls == [1] and stages.records["b"].cached and stages.records["a"].key == stages.records["b"].key
    (tmp_path / "stage" / "stale.txt").write_text("from the old settings")
    demo.run_stage(stages, "c", job, _Cfg(output=out, value=2), [])  # changed: the folder is started afresh
    assert calls == [1, 2] and not (tmp_path / "stage" / "stale.txt").exists()
    stages.records["up"] = StageRecord("up", "", 1.0, False, "other-input", {})
    demo.run_stage(stages, "d", job, _Cfg(output=out, value=2), ["up"])  # same settings, another input: redone
    assert calls == [1, 2, 2] and stages.count == 4


def test_budget_estimates_extras_from_the_main_model():
    stages = Stages(total=6)
    for name, seconds in (("train hourglass", 300), ("evaluate hourglass", 40)):
        stages.records[name] = StageRecord(name, "", seconds, True, f"key-{name}", {})
    # 340 s + 45 s overhead + 0.75 x 300 + 40 s = 650 s
    assert budget.over_budget(stages, "hourglass", "blstm", 11) is None
    why = budget.over_budget(stages, "hourglass", "blstm", 10)
    assert why == ("skipped: the run has cost 6 min 25 s and blstm would take about 4 min 25 s more, "
                   "over the 10-minute budget")  # fmt: skip
    assert budget.stage_count(["hourglass"], ["blstm", "activation_cnn"], True) == 12


def test_stage_config_names_the_bad_key():
    with pytest.raises(ConfigError, match="stages.render.nope"):
        stage_config(_Cfg, "render", {"output": "x"}, {"nope": 1}, {})
    assert stage_config(_Cfg, "render", {"output": "x", "value": 1}, {"value": 2}, {"output": "y"}).value == 2
    with pytest.raises(ValueError, match="unknown target"):
        check_demo("kazoo", None)
