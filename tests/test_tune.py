"""The tune job's plain parts: configuration, data-variant keys, trial settings, results."""

from __future__ import annotations

import csv
import io
import json
import math
import os

import numpy as np
import pyarrow.parquet as pq
import pytest

from ray_jobs import tune
from sepcore.config import load_config
from sepcore.errors import ConfigError, SepError
from sepcore.io import storage
from sepcore.report import html as R
from sepcore.train.config import ScalingConf
from sepcore.tune import config as C
from sepcore.tune import results as S
from sepcore.tune import sweep as T

CONFIGS = os.path.join(os.path.dirname(__file__), "..", "configs")
PREPARE = {"sources": [{"kind": "slakh", "uri": "data"}], "target": "guitar",
           "features": {"name": "stft", "n_fft": 1536, "hop": 384}, "chunks": {"frames": 64}}  # fmt: skip
TRAIN = {"model": {"name": "hourglass", "config": {"filters": 8, "levels": 3}},
         "validation": {"sdr_tracks": 2, "metric": "val_sdr"}}  # fmt: skip


def _cfg(**overrides) -> tune.TuneConfig:
    tree = {"output": "out", "prepare": PREPARE, "train": TRAIN, **overrides}
    return tune.TuneConfig.model_validate(tree)


def _key(settings: dict) -> str:
    return T.variant_key(tune.validate_prepare(settings).model_dump(mode="json"))


# ---------------------------------------------------------------- data variants


def test_a_data_variant_is_keyed_by_what_shapes_the_data():
    a = T.variant_settings(PREPARE, 1024, 0.7, 0.25)
    assert a["features"] == {"name": "stft", "n_fft": 1024, "hop": 256}
    assert a["silence"] == {"enabled": True, "target_ratio": 0.7}
    assert PREPARE["features"]["n_fft"] == 1536  # the base settings are not changed
    same = T.variant_settings({**PREPARE, "actors": {"mix": 1}, "num_cpus": 2}, 1024, 0.7, 0.25)
    assert _key(a) == _key(same)  # workers and CPUs do not change the data
    assert _key(a).startswith("guitar-stft1024-256-sil0.7-")
    others = [T.variant_settings(PREPARE, 1024, None, 0.25), T.variant_settings(PREPARE, 2048, 0.7, 0.25),
              T.variant_settings(PREPARE, 1024, 0.9, 0.25), {**a, "target": "piano"},
              {**a, "sources": [{"kind": "slakh", "uri": "other"}]}]  # fmt: skip
    keys = {_key(s) for s in others}
    assert len(keys) == len(others) and _key(a) not in keys
    off = T.variant_settings(PREPARE, None, "base", 0.25)
    assert off == PREPARE and _key(off).startswith("guitar-stft1536-384-siloff-")
    stems = {**PREPARE, "target": None, "targets": ["bass", "drums"]}
    assert _key(stems).startswith("stems-stft1536-384-siloff-")
    assert _key(stems) != _key({**stems, "targets": ["bass", "guitar"]})


def test_every_data_point_of_the_space_is_listed_once():
    cfg = _cfg(space={"n_fft": [512, 1024, 512], "silence": ["off", 0.7], "filters": [4, 8]})
    assert cfg.space.data_points() == [(512, None, "base", "base"), (512, 0.7, "base", "base"),
                                       (1024, None, "base", "base"), (1024, 0.7, "base", "base")]  # fmt: skip
    assert _cfg(space={"filters": [4, 8]}).space.data_points() == [(None, "base", "base", "base")]


def test_augmentation_dimensions_make_their_own_variants():
    cfg = _cfg(space={"remix_copies": [0, 2], "gain_db": ["off", 6], "filters": [4]})
    assert cfg.space.data_points() == [(None, "base", r, g) for r in (0, 2) for g in (None, 6.0)]
    two = T.variant_settings(PREPARE, None, "base", 0.25, 2, 6.0)
    assert two["augment"] == {"remix_copies": 2, "gain_db": [-6.0, 6.0]} and "augment" not in PREPARE
    off = T.variant_settings(PREPARE, None, "base", 0.25, 0, None)
    keys = {_key(T.variant_settings(PREPARE, None, "base", 0.25, r, g)) for r in (0, 2) for g in (None, 6.0)}
    assert len(keys) == 4 and _key(two).startswith("guitar-stft1536-384-siloff-rx2-gain-6_6-")
    assert _key(off) == _key(PREPARE)  # augmentation off: the key of a sweep without these dimensions
    assert _key({**PREPARE, "augment": {"seed": 9}}) == _key(PREPARE)  # nothing augmented, same data
    plan = S.variant_plan(cfg, "file:///o", tune.validate_prepare)
    assert [key for key, *_ in plan] == [T.data_key(None, "base", r, g) for r in (0, 2) for g in (None, 6.0)]
    assert plan[3][3].augment.remix_copies == 2 and plan[3][3].augment.gain_db == (-6.0, 6.0)
    assert T.data_key(512, "base") == "512|base"  # keys of sweeps without augmentation are as before
    values = {**T.base_values(PREPARE, TRAIN), "remix_copies": 2, "gain_db": 6.0}
    assert T.trial_label(values, ["remix_copies", "gain_db"]) == "rx2 gain6"
    assert T.trial_data_key({"gain_db": 6.0}, values) == T.data_key(None, "base", "base", 6.0)
    augmented = {**PREPARE, "augment": {"remix_copies": 1, "gain_db": [-12, 2]}}
    assert T.base_values(augmented, TRAIN)["gain_db"] == [-12, 2] and T.gain_label([-12, 2]) == "-12..2"
    row = T.trial_row("t", "rx2 gain6", "done", values, _history([1.0]), "val_sdr")
    csv_bytes, parquet_bytes = T.table_bytes([row])
    assert next(csv.DictReader(io.StringIO(csv_bytes.decode())))["gain_db"] == "6"
    assert pq.read_table(io.BytesIO(parquet_bytes)).to_pylist()[0]["remix_copies"] == 2
    assert tune.param_space(cfg)["gain_db"] == {"grid_search": [None, 6.0]}


# ---------------------------------------------------------------- configuration


def test_silence_off_is_read_from_yaml_in_every_spelling():
    cfg = load_config(tune.TuneConfig, None, ["output=o", f"prepare={json.dumps(PREPARE)}",
                                              "space.silence=[off, 'off', null, 0.5]"])  # fmt: skip
    assert cfg.space.silence == [None, None, None, 0.5]


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"prepare": {**PREPARE, "output": "x"}}, "prepare.output is set by the sweep"),
        ({"prepare": {**PREPARE, "features": {"bogus": 1}}}, "prepare.features.bogus: unknown key"),
        ({"train": {**TRAIN, "optim": {"lr": -1}}}, "train.optim.lr"),
        ({"space": {"lr": {"low": 1e-4, "high": 1e-2}}}, "grid search needs a list"),
        ({"space": {"silence": [1.5]}}, "ratio must be in (0, 1]"),
        ({"space": {"filters": []}}, "at least one value"),
        ({"space": {"remix_copies": [-1]}}, "count must be >= 0"),
        ({"space": {"gain_db": [0]}}, "must be > 0 dB"),
        ({"prepare": {**PREPARE, "target": "random_mix"}, "space": {"remix_copies": [1]},
          "train": {**TRAIN, "validation": {"metric": "val_loss"}}}, "applies to instrument targets"),
        ({"train": {**TRAIN, "validation": {"sdr_tracks": 0, "metric": "val_sdr"}}}, "sdr_tracks > 0"),
        ({"train": {"model": {"name": "activation_cnn"}}}, "tune sweeps separators"),
        ({"space": {"model": ["blstm"], "filters": [8]}, "model_configs": {"blstm": {"bogus": 1}}}, "bogus"),
        ({"train": {**TRAIN, "model": {"name": "hourglass", "config": {"filters": 8, "bogus": 1}}}}, "bogus"),
    ],
)
def test_bad_sweep_settings_name_the_key(overrides, message):
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
        _cfg(**overrides)


def test_shipped_tune_configs_validate_and_sweep_the_seed_dimensions():
    small = load_config(tune.TuneConfig, os.path.join(CONFIGS, "tune_cpu_small.yaml"))
    points = small.space.data_points()
    assert len({p[0] for p in points}) >= 2 and len({p[1] for p in points}) >= 2
    assert len(small.space.filters or []) >= 2
    full = load_config(tune.TuneConfig, os.path.join(CONFIGS, "tune_hourglass_gpu.yaml"))
    assert full.space.n_fft == [512, 1024, 1536, 2048]
    assert full.space.filters == [92, 192, 256]
    assert full.space.silence == [None, 0.5, 0.7, 0.9]
    assert full.scheduler.name == "asha"


# ---------------------------------------------------------------- trial settings


def test_trial_settings_go_to_the_model_family_size_keys():
    hg = T.train_settings(TRAIN, {"model": "hourglass", "filters": 16, "levels": 4, "lr": 0.01}, {})
    assert hg["model"] == {"name": "hourglass", "config": {"filters": 16, "levels": 4}}
    assert hg["optim"]["lr"] == 0.01 and TRAIN["model"]["config"]["filters"] == 8
    blstm = T.train_settings(TRAIN, {"model": "blstm", "filters": 32, "levels": 2}, {"blstm": {"dropout": 0.1}})
    assert blstm["model"] == {"name": "blstm", "config": {"dropout": 0.1, "hidden": 32, "layers": 2}}
    assert T.base_values(PREPARE, TRAIN) == {"model": "hourglass", "init": None, "n_fft": 1536, "silence": None,
                                             "remix_copies": 0, "gain_db": None, "filters": 8, "levels": 3,
                                             "lr": None}  # fmt: skip
    label = T.trial_label({"n_fft": 1024, "silence": None, "filters": 8, "lr": 0.002}, ["n_fft", "silence", "filters"])
    assert label == "fft1024 siloff F8"


def test_param_space_scheduler_and_concurrency():
    from ray.tune.schedulers import ASHAScheduler

    cfg = _cfg(space={"n_fft": [512, 1024], "silence": [None, 0.9], "filters": [4]},
               train={**TRAIN, "optim": {"epochs": 5}, "scaling": {"cpus_per_worker": 0.5}})  # fmt: skip
    space = tune.param_space(cfg)
    assert space["n_fft"] == {"grid_search": [512, 1024]} and space["silence"] == {"grid_search": [None, 0.9]}
    assert set(space) == {"n_fft", "silence", "filters"}
    random = tune.param_space(_cfg(space={"lr": {"low": 1e-4, "high": 1e-2}}, search={"algorithm": "random"}))
    assert 1e-4 <= random["lr"].sample() <= 1e-2
    settings = tune.tune_config(cfg, 2)
    assert isinstance(settings.scheduler, ASHAScheduler) and settings.scheduler._max_t == 5
    assert (settings.metric, settings.mode) == ("val_sdr", "max")
    demand = T.trial_demand(tune.validate_train(cfg.train).scaling, 0.01, 0.25)
    assert demand == {"CPU": pytest.approx(0.5 + 0.25)}  # one worker: it trains in the trial, no driver
    scaling = ScalingConf(num_workers=2, cpus_per_worker=0.5)
    assert T.trial_demand(scaling, 0.01, 0.25) == {"CPU": pytest.approx(0.01 + 2 * 0.5 + 0.25)}
    assert T.concurrency(demand, {"CPU": 2.0}, None) == 2
    assert T.concurrency({"CPU": 1.0, "GPU": 1.0}, {"CPU": 64.0, "GPU": 4.0}, None) == 4
    assert T.concurrency({"CPU": 4.0}, {"CPU": 2.0}, None) == 1
    assert T.concurrency(demand, {"CPU": 2.0}, 5) == 5


def test_space_spec_names_each_dimension_sampler():
    grid = _cfg(space={"n_fft": [512, 1024], "lr": [0.001]})
    assert C.space_spec(grid.space, "grid") == {"n_fft": ("grid", ([512, 1024],)), "lr": ("grid", ([0.001],))}
    ranged = _cfg(space={"lr": {"low": 1e-4, "high": 1e-2, "log": True}, "filters": [4, 8]},
                  search={"algorithm": "random"})  # fmt: skip
    assert C.space_spec(ranged.space, "random") == {"filters": ("choice", ([4, 8],)),
                                                    "lr": ("loguniform", (1e-4, 1e-2))}  # fmt: skip
    uniform = _cfg(space={"lr": {"low": 1e-4, "high": 1e-2, "log": False}}, search={"algorithm": "random"})
    assert C.space_spec(uniform.space, "random") == {"lr": ("uniform", (1e-4, 1e-2))}


def test_trial_resources_data_key_and_settings(tmp_path):
    one = ScalingConf(cpus_per_worker=0.5)
    assert T.trial_resources(one, 0.01) == {"CPU": 0.5}  # trains in the trial: the worker's resources
    gpu = ScalingConf(cpus_per_worker=4, use_gpu=True, gpus_per_worker=1)
    assert T.trial_resources(gpu, 0.01) == {"CPU": 4, "GPU": 1}
    assert T.trial_resources(ScalingConf(num_workers=2, use_gpu=True), 0.01) == {"CPU": 0.01}  # only the driver
    cfg = _cfg(space={"n_fft": [512, 1024], "filters": [4, 8]})
    sweep = T.sweep_settings(cfg, "file:///o", {T.data_key(512, "base"): "file:///v"})
    assert sweep["swept"] == ["n_fft", "filters"] and sweep["read_cpus"] == 0.25 and sweep["train"] == TRAIN
    out, values, key, settings = S.trial_settings(sweep, {"n_fft": 512, "filters": 4}, "t1")
    assert out == S.trial_output("file:///o", "t1") and values["n_fft"] == 512
    assert key == T.data_key(512, "base") and settings["model"]["config"]["filters"] == 4
    assert T.trial_data_key({"filters": 4}, {"n_fft": 512, "silence": None}) == T.data_key(None, "base")
    out = storage.normalize_uri(str(tmp_path))
    optim = tune.validate_train(TRAIN).optim
    assert not S.done_before(out, {}, optim)
    assert S.done_before(out, {"status": "done"}, optim)


def test_variant_plan_lists_each_variant_under_its_root():
    cfg = _cfg(space={"n_fft": [512, 1024], "filters": [4, 8]})
    plan = S.variant_plan(cfg, "file:///o", tune.validate_prepare)
    assert [key for key, *_ in plan] == [T.data_key(512, "base"), T.data_key(1024, "base")]
    for _, uri, settings, resolved in plan:
        assert uri == storage.join("file:///o/variants", T.variant_key(resolved.model_dump(mode="json")))
        assert settings["features"]["n_fft"] == resolved.features.n_fft
    shared = S.variant_plan(cfg.model_copy(update={"variants": "file:///shared"}), "file:///o", tune.validate_prepare)
    assert all(uri.startswith("file:///shared/") for _, uri, _, _ in shared)


def test_a_sweep_with_unfinished_trials_fails_after_its_results():
    S.check_finished("o", [{"status": "done"}, {"status": "stopped"}], 2)
    with pytest.raises(SepError, match="stopped with 1 unfinished trials; run the same command again"):
        S.check_finished("o", [{"status": "done"}, {"status": "unfinished"}], 2)
    with pytest.raises(SepError, match="stopped with 2 unfinished trials"):
        S.check_finished("o", [{"status": "done"}], 3)  # two never started


def test_a_rerun_into_the_same_output_must_sweep_the_same_space(tmp_path):
    out = storage.normalize_uri(str(tmp_path))
    cfg = _cfg(space={"filters": [4, 8]})
    S.check_spec(out, cfg, resuming=False)
    S.check_spec(out, cfg.model_copy(update={"search": C.SearchConfig(max_concurrent=3)}), resuming=True)
    with pytest.raises(ConfigError, match="other settings \\(space.filters\\)"):
        S.check_spec(out, _cfg(space={"filters": [4, 16]}), resuming=True)
    S.check_spec(out, _cfg(space={"filters": [4, 16]}), resuming=False)  # nothing to resume: a new sweep


# ---------------------------------------------------------------- results


def _history(sdrs: list[float]) -> list[dict]:
    return [{"epoch": i, "train_loss": 0.1 / (i + 1), "val_loss": 0.2 - 0.01 * s, "val_sdr": s,
             "val_sdr_mixture": -11.0} for i, s in enumerate(sdrs)]  # fmt: skip


def _rows() -> tuple[list[dict], dict]:
    rows, curves = [], {}
    specs = [(512, None, 4, [-3.0, -1.0]), (512, 0.9, 8, [-2.0, -2.5]), (1024, None, 8, [0.5, 1.5]),
             (1024, 0.9, 4, [float("nan")]), (2048, None, 4, [])]  # fmt: skip
    for i, (n_fft, silence, filters, sdrs) in enumerate(specs):
        values = {"model": "hourglass", "n_fft": n_fft, "silence": silence, "filters": filters, "levels": 3, "lr": 0.002}
        label = T.trial_label(values, ["n_fft", "silence", "filters"])
        rows.append(T.trial_row(f"t{i}", label, "done" if sdrs else "error", values, _history(sdrs), "val_sdr",
                                hop=n_fft // 4, weights=1000 + i, checkpoint=f"file:///c/t{i}/best"))  # fmt: skip
        curves[label] = _history(sdrs)
    return rows, curves


def test_rows_table_and_best_trial():
    rows, _ = _rows()
    assert rows[0]["best_val_sdr"] == -1.0 and rows[0]["final_val_sdr"] == -1.0 and rows[0]["best_epoch"] == 1
    assert rows[1]["best_val_sdr"] == -2.0 and rows[1]["final_val_sdr"] == -2.5 and rows[1]["epochs"] == 2
    assert rows[3]["best_val_sdr"] is None and rows[4]["epochs"] == 0
    assert T.best_row(rows, "val_sdr")["trial"] == "t2"
    assert T.best_row(rows, "val_loss")["trial"] == "t2"
    assert [r["trial"] for r in T.sort_rows(rows, "val_sdr")] == ["t2", "t0", "t1", "t3", "t4"]
    assert T.best_row([rows[4]], "val_sdr") is None
    csv_bytes, parquet_bytes = T.table_bytes(rows)
    lines = list(csv.DictReader(io.StringIO(csv_bytes.decode())))
    assert list(lines[0]) == list(T.COLUMNS) and len(lines) == 5
    assert lines[0]["silence"] == "off" and lines[1]["silence"] == "0.9" and lines[3]["best_val_sdr"] == ""
    table = pq.read_table(io.BytesIO(parquet_bytes)).to_pylist()
    assert table[1]["silence"] == 0.9 and table[0]["silence"] is None and table[2]["n_fft"] == 1024
    assert table[2]["checkpoint"] == "file:///c/t2/best"


def _lines(ax) -> dict[str, tuple[list, list]]:
    """Legend label -> (x, y) of each line of a panel."""
    return {ln.get_label(): (list(ln.get_xdata()), list(ln.get_ydata())) for ln in ax.lines}


def test_sweep_plots_show_the_mean_best_metric_per_setting():
    rows, _ = _rows()
    values = {"model": "hourglass", "n_fft": 512, "silence": 0.7, "filters": 4, "levels": 3, "lr": 0.002}
    rows.append(T.trial_row("t5", "extra", "done", values, _history([-3.0]), "val_sdr"))
    # Best val_sdr per trial: t0 (512, off, F4) -1, t1 (512, 0.9, F8) -2, t2 (1024, off, F8)
    # 1.5, t5 (512, 0.7, F4) -3; t3 and t4 have none and are left out.
    (ax,) = T.metric_by_nfft_figure(rows, "val_sdr").axes
    assert [t.get_text() for t in ax.get_xticklabels()] == ["512", "1024", "2048"]
    assert (ax.get_xlabel(), ax.get_ylabel()) == ("FFT size (samples)", "best median validation SDR (dB)")
    assert _lines(ax) == {"filters 4": ([0], [-2.0]), "filters 8": ([0, 1], [-2.0, 1.5])}  # F4 at 512: mean(-1, -3)
    dots = np.concatenate([c.get_offsets() for c in ax.collections])
    assert sorted(dots[:, 1]) == [-3.0, -2.0, -1.0, 1.5]  # every trial with a value, as a dot

    (ax,) = T.silence_effect_figure(rows, "val_loss").axes
    assert [t.get_text() for t in ax.get_xticklabels()] == ["off", "0.7", "0.9"]
    assert ax.get_ylabel() == "best validation loss" and ax.get_title() == "effect of the silence ratio"
    loss = {r["trial"]: r["best_val_loss"] for r in rows}
    assert _lines(ax) == {"FFT 512": ([0, 1, 2], [loss["t0"], loss["t5"], loss["t1"]]),
                          "FFT 1024": ([0], [loss["t2"]])}  # fmt: skip


def test_learning_curves_show_every_trial_per_epoch():
    _, curves = _rows()

    def expected(key: str) -> dict[str, tuple[list, list]]:  # epochs 1-based; NaN is left out
        pts = {label: [(e["epoch"] + 1, e[key]) for e in h if math.isfinite(e[key])] for label, h in curves.items()}
        return {label: ([p[0] for p in v], [p[1] for p in v]) for label, v in pts.items() if v}

    sdr, loss = T.learning_curves_figure(curves, "val_sdr").axes
    assert [(ax.get_title(), ax.get_xlabel(), ax.get_ylabel()) for ax in (sdr, loss)] == [
        ("validation SDR of the target", "epoch", "median SDR (dB)"),
        ("validation loss", "epoch", "val loss")]  # fmt: skip
    assert len(expected("val_sdr")) == 3  # the NaN-only and the empty trial have no line
    assert _lines(sdr) == expected("val_sdr") and _lines(loss) == expected("val_loss")
    assert [t.get_text() for t in loss.get_legend().get_texts()] == list(expected("val_loss"))
    loss, train = T.learning_curves_figure(curves, "val_loss").axes
    assert (loss.get_title(), train.get_title()) == ("validation loss", "training loss")
    assert _lines(loss) == expected("val_loss") and _lines(train) == expected("train_loss")
    assert len(expected("train_loss")) == 4  # the NaN-SDR trial has a training loss


def test_plots_and_report_show_the_comparison(tmp_path):
    rows, curves = _rows()
    plots = {"metric_by_nfft.png": T.metric_by_nfft_png(rows, "val_sdr"),
             "silence_effect.png": T.silence_effect_png(rows, "val_sdr"),
             "learning_curves.png": T.learning_curves_png(curves, "val_sdr")}  # fmt: skip
    cfg = _cfg(space={"n_fft": [512, 1024, 2048], "silence": [None, 0.9], "filters": [4, 8]})
    variants = [{"variant": "v1", "n_fft": 512, "hop": 128, "silence": None, "remix_copies": 2, "gain_db": None,
                 "prepared_now": True, "rows": {"train": 10, "validation": 2}}]  # fmt: skip
    sections = S.report_sections(cfg, rows, variants, T.best_row(rows, "val_sdr"), plots, "val_sdr", 12.0)
    page = R.write_report(str(tmp_path), sections, title="sweep")
    html = open(storage.local_path(page), encoding="utf-8").read()
    assert R.missing_files(page) == []
    for text in ("Best configuration", "fft1024 siloff F8", "metric_by_nfft.png", "Data variants", "5 trials"):
        assert text in html


# ---------------------------------------------------------------- the frame DNN's start (init)

FRAME_DNN = {"model": {"name": "frame_dnn", "config": {"context": 1, "layers": 2}, "log_input": False},
             "validation": {"sdr_tracks": 2, "metric": "val_loss"}}  # fmt: skip


def test_init_sweeps_the_frame_dnn_start_and_not_the_data():
    cfg = _cfg(train=FRAME_DNN, space={"init": ["ls", "random"]})
    assert cfg.space.swept() == ["init"] and cfg.space.data_points() == [(None, "base", "base", "base")]
    assert tune.param_space(cfg) == {"init": {"grid_search": ["ls", "random"]}}
    base = T.base_values(PREPARE, FRAME_DNN)
    assert (base["model"], base["init"]) == ("frame_dnn", "ls")  # model.init's default
    for init in ("ls", "random"):
        values = {**base, "init": init}
        settings = T.train_settings(FRAME_DNN, values, {})
        assert settings["model"]["init"] == init and tune.validate_train(settings).model.init == init
        assert T.trial_label(values, cfg.space.swept()) == f"init={init}"
        assert T.trial_data_key({"init": init}, values) == T.data_key(None, "base")  # one variant for both
    assert "init" not in FRAME_DNN["model"]  # the base settings are not changed
    assert "init" not in T.train_settings(TRAIN, {"model": "hourglass", "init": "ls"}, {})["model"]
    sized = T.train_settings(FRAME_DNN, {"filters": 64, "levels": 4}, {})
    assert sized["model"]["config"] == {"context": 1, "layers": 4, "width": 64}


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"space": {"init": ["ls", "random"]}}, "space.init: only a frame_dnn has an init to sweep; "
                                                "train.model.name gives hourglass"),
        ({"train": FRAME_DNN, "space": {"init": ["ls"], "model": ["frame_dnn", "blstm"]}},
         "space.init: only a frame_dnn has an init to sweep; space.model gives blstm"),
        ({"train": FRAME_DNN, "space": {"init": ["warm"]}}, "space.init"),
        ({"train": FRAME_DNN, "space": {"init": []}}, "space.init: give at least one value"),
    ],
)
def test_init_is_refused_where_it_means_nothing(overrides, message):
    with pytest.raises(ValueError, match=message):
        _cfg(**overrides)


def test_shipped_init_sweep_trains_the_small_frame_dnn_twice_on_the_demo_data():
    import yaml

    cfg = load_config(tune.TuneConfig, os.path.join(CONFIGS, "tune_frame_dnn_init.yaml"))
    with open(os.path.join(CONFIGS, "prepare_demo.yaml"), encoding="utf-8") as fh:
        prepare = yaml.safe_load(fh)
    with open(os.path.join(CONFIGS, "train_frame_dnn_cpu_small.yaml"), encoding="utf-8") as fh:
        small = yaml.safe_load(fh)
    assert cfg.prepare == {k: v for k, v in prepare.items() if k != "output"}
    assert cfg.space.swept() == ["init"] and cfg.space.init == ["ls", "random"]
    assert {k: v for k, v in cfg.train["model"].items()} == {k: v for k, v in small["model"].items() if k != "init"}
    assert (cfg.scheduler.name, cfg.search.algorithm, cfg.search.max_concurrent) == ("fifo", "grid", 2)


def test_the_table_has_each_trials_ls_seconds():
    base = T.base_values(PREPARE, FRAME_DNN)
    rows = [T.trial_row("t0", "init=ls", "done", {**base, "init": "ls"}, _history([1.0]), "val_loss", ls_init_s=2.5),
            T.trial_row("t1", "init=random", "done", {**base, "init": "random"}, _history([0.5]), "val_loss",
                        ls_init_s=None)]  # fmt: skip
    csv_bytes, parquet_bytes = T.table_bytes(rows)
    lines = list(csv.DictReader(io.StringIO(csv_bytes.decode())))
    assert [(r["init"], r["ls_init_s"]) for r in lines] == [("ls", "2.5"), ("random", "")]
    table = pq.read_table(io.BytesIO(parquet_bytes)).to_pylist()
    assert [(r["init"], r["ls_init_s"]) for r in table] == [("ls", 2.5), ("random", None)]


class _Frames:
    """A one-target split as a LocalSession reads it: numpy batches of byte columns."""

    def __init__(self, n: int, shape: list[int], seed: int):
        rng = np.random.default_rng(seed)
        mix = rng.random((n, *shape), dtype=np.float32) + 0.1
        target = mix * np.linspace(0.0, 1.0, shape[1], dtype=np.float32)[:, None]
        self.cols = {"mix": [r.tobytes() for r in mix], "target": [r.tobytes() for r in target]}
        self.n = n

    def iter_batches(self, batch_size: int, **_: object):
        for i in range(0, self.n, batch_size):
            yield {k: np.array(v[i : i + batch_size], dtype=object) for k, v in self.cols.items()}


def _frame_dnn_worker(out: str, init: dict, lr: float, epochs: int) -> dict:
    """The worker config of a tiny frame DNN (17 bins, 8 frames) with the ``meta["init"]`` ``init``."""
    shape = [1, 17, 8]
    model = {"name": "frame_dnn", "config": {"n_bins": 17, "channels": 1, "context": 1, "layers": 2},
             "log_input": False}  # fmt: skip
    optim = {"epochs": epochs, "batch_size": 4, "lr": lr, "weight_decay": 0.0, "scheduler": "none",
             "early_stopping_patience": 100, "max_steps_per_epoch": None, "amp": False, "loss": "mse",
             "clip_grad_norm": None, "max_minutes": None}  # fmt: skip
    meta = {"model": model, "task": "separator", "target": "guitar", "sample_rate": 22050, "channels": 1,
            "feature": {"n_fft": 32, "hop": 8}, "frames": 8, "init": dict(init)}  # fmt: skip
    return {"meta": meta, "optim": optim, "validation": {"metric": "val_loss"}, "shapes": {"mix": shape, "target": shape},
            "dtype": "float32", "seed": 0, "threads": 1, "output": out, "val_tracks": [], "resume_from": None,
            "keep_checkpoints": 1, "loader": None, "fold": None, "input_stats": None}  # fmt: skip


def test_the_learning_curves_start_at_the_initial_weights_validation_loss(tmp_path):
    from types import SimpleNamespace

    from sepcore.models import checkpoint as ckpt
    from sepcore.train import outputs as O
    from sepcore.train import worker as W

    sweep, data = storage.normalize_uri(str(tmp_path)), _Frames(16, [1, 17, 8], 0)
    starts = {"ls": ({"method": "ls", "seconds": 1.25, "layers": []}, 0.0),  # lr 0: the weights stay put
              "random": ({"method": "random", "layers": []}, 1e-2)}  # fmt: skip
    histories, summaries = {}, {}
    for init, (record, lr) in starts.items():
        out = S.trial_output(sweep, f"t_{init}")
        config = _frame_dnn_worker(out, record, lr, epochs=2)
        W.train_worker(config, W.LocalSession(W.LocalRun(out, 1, "val_loss", lambda m: None),
                                              {"train": data, "validation": data}))  # fmt: skip
        if init == "ls":  # a resume measures nothing and keeps the run's record
            config = {**config, "resume_from": ckpt.find_latest(storage.join(out, O.RUNS)),
                      "optim": {**config["optim"], "epochs": 3}}  # fmt: skip
            W.train_worker(config, W.LocalSession(W.LocalRun(out, 1, "val_loss", lambda m: None),
                                                  {"train": data, "validation": data}))  # fmt: skip
        summaries[init] = O.finish(out, "val_loss")
        histories[init] = O.read_history(out)
        values = {**T.base_values(PREPARE, FRAME_DNN), "init": init}
        S.write_record(out, {"trial": f"t_{init}", "label": f"init={init}", "values": values, "data": "file:///none",
                             "status": "done", "best_checkpoint": summaries[init]["best_checkpoint"]})  # fmt: skip
    start = {init: ckpt.read_meta(summaries[init]["best_checkpoint"])["init"]["val_loss"] for init in starts}
    # The initial validation loss is the epoch's validation of the unchanged weights (lr 0), measured once.
    assert [h["epoch"] for h in histories["ls"]] == [0, 1, 2]
    assert start["ls"] == pytest.approx(histories["ls"][0]["val_loss"], rel=1e-6)
    assert summaries["ls"]["figures"]["initial_val_loss"] == round(start["ls"], 4)
    assert start["random"] > histories["random"][-1]["val_loss"]  # trained from there
    (loss,) = R.loss_curve_figure(histories["random"], start["random"]).axes  # a train output's loss_curve.png
    assert _lines(loss)["validation"] == ([0, 1, 2], [start["random"], *[h["val_loss"] for h in histories["random"]]])
    assert _lines(loss)["train"][0] == [1, 2]  # the training loss has no epoch 0

    train = SimpleNamespace(validation=SimpleNamespace(metric="val_loss"), optim=SimpleNamespace(epochs=2))
    rows, curves, initial = S.trial_rows(sweep, train, {"t_ls": ("ended", 3.0), "t_random": ("ended", 2.0)})
    assert {r["label"]: r["ls_init_s"] for r in rows} == {"init=ls": 1.25, "init=random": None}
    assert initial == {"init=ls": start["ls"], "init=random": start["random"]}
    loss, training = T.learning_curves_figure(curves, "val_loss", initial).axes  # both trials in one plot
    for init, history in histories.items():
        assert _lines(loss)[f"init={init}"] == ([0, *range(1, len(history) + 1)],
                                                [start[init], *[h["val_loss"] for h in history]])  # fmt: skip
        assert _lines(training)[f"init={init}"][0] == list(range(1, len(history) + 1))
    cfg = _cfg(train=FRAME_DNN, space={"init": ["ls", "random"]})
    plots = {"metric_by_nfft.png": b"", "silence_effect.png": b"", "learning_curves.png": b""}
    sections = S.report_sections(cfg, rows, [], T.best_row(rows, "val_loss"), plots, "val_loss", 1.0, True)
    trials = next(s for s in sections if s.title == "Trials").items[0]
    assert "init" in trials.columns and "ls_init_s" in trials.columns
    assert "epoch 0" in next(s for s in sections if s.title == "Learning curves").items[0].caption
