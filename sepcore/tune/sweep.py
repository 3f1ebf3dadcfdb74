"""Plain helpers of the tune job (no Ray): data variants, trial settings, results, plots.

``ray_jobs.tune`` sweeps FFT size, filter count, silence ratio, augmentation (remix copies,
gain range), learning rate, levels, model family and the frame DNN's start (``init``: least
squares or random) over the trainer of ``ray_jobs.trainer``. What it needs that does not
touch Ray lives here and is unit-tested on its own:

* **Data variants.** ``n_fft``, the silence ratio and the augmentation (``remix_copies``,
  ``gain_db``) change the prepared data; the other swept values do not. :func:`variant_settings` turns a trial's values into the
  prepare settings of its variant and :func:`variant_key` names them: a readable
  prefix plus a hash of every setting that changes the data (sources, target, rate,
  features, chunks, silence, QA, split, seed, augmentation when on), so one key is one dataset.
* **Trial settings.** :func:`train_settings` puts a trial's values into the train
  job's settings. ``filters`` and ``levels`` mean the model family's size keys
  (:data:`SIZE_KEYS`): the hourglass's ``filters``/``levels``, the BLSTM's
  ``hidden``/``layers``, the frame DNN's ``width``/``layers``. ``init`` sets the frame
  DNN's ``model.init`` (it does not change the data).
* **Results.** :func:`trial_row` summarises one trial's history (the per-epoch
  metrics train records) into a row; :func:`table_bytes` writes rows as CSV and
  Parquet; :func:`best_row` picks the winner.
* **Plots**: :func:`metric_by_nfft_figure`, :func:`silence_effect_figure`,
  :func:`learning_curves_figure` return matplotlib Figures; their ``*_png`` twins
  render them with :func:`sepcore.report.html.figure_png`.

A silence value is ``None`` for "off" (no adjustment) or the audio ratio to reach; a
``gain_db`` value None for "off" or ``x`` for gains drawn in ``[-x, x]`` dB
(``augment.gain_db`` of prepare).
"""

from __future__ import annotations

import copy
import csv
import hashlib
import io
import json
import math
from collections.abc import Mapping, Sequence
from typing import Any

from sepcore.config import set_dotted
from sepcore.report import html as R
from sepcore.train.selection import best_of, metric_mode

#: Swept values, in table order. ``silence`` is None (off) or a target audio ratio;
#: ``remix_copies`` and ``gain_db`` set prepare's ``augment`` section; ``init`` (``ls`` or
#: ``random``) the frame DNN's ``model.init`` (None for the other families).
DIMENSIONS = ("model", "init", "n_fft", "silence", "remix_copies", "gain_db", "filters", "levels", "lr")

#: Dimensions that change the prepared data (one variant per distinct combination).
DATA_DIMENSIONS = ("n_fft", "silence", "remix_copies", "gain_db")

#: Per model family: the constructor keys that ``filters`` and ``levels`` set.
SIZE_KEYS: dict[str, dict[str, str]] = {
    "hourglass": {"filters": "filters", "levels": "levels"},
    "blstm": {"filters": "hidden", "levels": "layers"},
    "frame_dnn": {"filters": "width", "levels": "layers"},
}

#: The model family whose start ``init`` sweeps.
INIT_MODEL = "frame_dnn"

#: Prepare settings that do not change the data (left out of the variant key).
NOT_DATA = ("output", "num_cpus", "actors", "max_failed_fraction")

#: Columns of the results table, in order.
COLUMNS = (
    "trial", "label", "status", *DIMENSIONS, "hop", "weights", "epochs", "best_epoch",
    "final_val_sdr", "best_val_sdr", "val_sdr_mixture", "final_val_loss", "best_val_loss",
    "final_train_loss", "ls_init_s", "seconds", "data", "checkpoint",
)  # fmt: skip


def silence_label(value: float | None) -> str:
    """``"off"`` or the ratio as written (``0.7``)."""
    return "off" if value is None else f"{value:g}"


def gain_label(value: float | Sequence[float] | None) -> str:
    """``"off"``, ``"6"`` (a swept value: gains in [-6, 6] dB) or ``"-12..2"`` (prepare's own range)."""
    if value is None:
        return "off"
    if isinstance(value, (int, float)):
        return f"{value:g}"
    return f"{value[0]:g}..{value[1]:g}"


def _get(tree: Mapping[str, Any], dotted: str, default: Any = None) -> Any:
    node: Any = tree
    for part in dotted.split("."):
        if not isinstance(node, Mapping) or part not in node:
            return default
        node = node[part]
    return node


# ---------------------------------------------------------------- data variants


def variant_settings(prepare: Mapping[str, Any], n_fft: int | None, silence: float | None | str,
                     hop_fraction: float, remix_copies: int | str = "base",
                     gain_db: float | None | str = "base") -> dict[str, Any]:  # fmt: skip
    """Prepare settings (the keys of ``sep prepare`` without ``output``) of one variant.

    ``n_fft`` None keeps the base FFT size and hop; otherwise ``hop = n_fft *
    hop_fraction``. ``silence`` ``"base"`` keeps the base silence settings, None turns
    the adjustment off, a ratio turns it on with that ``target_ratio``. ``remix_copies``
    and ``gain_db`` (``"base"``: as in ``prepare``) set ``augment.remix_copies`` and
    ``augment.gain_db`` (None: off; ``x``: ``[-x, x]``).
    """
    tree = copy.deepcopy(dict(prepare))
    if n_fft is not None:
        set_dotted(tree, "features.n_fft", int(n_fft))
        set_dotted(tree, "features.hop", max(1, int(round(n_fft * hop_fraction))))
    if silence != "base":
        set_dotted(tree, "silence.enabled", silence is not None)
        if silence is not None:
            set_dotted(tree, "silence.target_ratio", float(silence))
    if remix_copies != "base":
        set_dotted(tree, "augment.remix_copies", int(remix_copies))
    if gain_db != "base":
        set_dotted(tree, "augment.gain_db", None if gain_db is None else [-float(gain_db), float(gain_db)])
    return tree


def _augments(augment: Mapping[str, Any] | None) -> bool:
    """Whether a resolved ``augment`` section changes the data (the config's ``active``)."""
    a = augment or {}
    return bool(a.get("remix_copies")) or a.get("gain_db") is not None or bool(a.get("channel_swap"))


def variant_key(resolved: Mapping[str, Any]) -> str:
    """Name of a variant's folder: readable prefix + hash of everything that shapes the data.

    ``resolved`` is the complete prepare configuration (defaults filled in, as
    ``PrepareConfig.model_dump(mode="json")``); :data:`NOT_DATA` keys are ignored, and so
    is an ``augment`` section that augments nothing (keys made before it existed stay).
    """
    aug = resolved.get("augment") or {}
    data = {k: v for k, v in resolved.items() if k not in NOT_DATA and (k != "augment" or _augments(aug))}
    digest = hashlib.sha256(json.dumps(data, sort_keys=True, default=str).encode()).hexdigest()[:10]
    feature = resolved.get("features") or {}
    sil = resolved.get("silence") or {}
    ratio = silence_label(sil.get("target_ratio") if sil.get("enabled") else None)
    name = feature.get("name", "stft")
    size = f"{feature.get('n_fft')}-{feature.get('hop')}" if feature.get("n_fft") else str(feature.get("hop"))
    extra = ""
    if _augments(aug):
        extra += f"-rx{aug['remix_copies']}" if aug.get("remix_copies") else ""
        extra += f"-gain{gain_label(aug['gain_db']).replace('..', '_')}" if aug.get("gain_db") is not None else ""
    what = "stems" if resolved.get("targets") else resolved.get("target", "x")
    return f"{what}-{name}{size}-sil{ratio}{extra}-{digest}"


def data_key(n_fft: int | None, silence: float | None | str, remix_copies: int | None | str = "base",
             gain_db: float | None | str = "base") -> str:  # fmt: skip
    """The key of a data point (``"base"``: not swept) in a sweep's variant table."""
    augment = "" if remix_copies == gain_db == "base" else f"|{remix_copies}|{gain_db}"
    return f"{n_fft}|{silence}{augment}"


def absolute_sources(settings: Mapping[str, Any]) -> dict[str, Any]:
    """Prepare settings with absolute source and QA-flag URIs: trials and later sweeps may
    run in another directory."""
    from sepcore.io.storage import normalize_uri as absolute

    out = copy.deepcopy(dict(settings))
    for source in out.get("sources") or []:
        if isinstance(source, dict) and isinstance(source.get("uri"), str):
            source["uri"] = absolute(source["uri"])
    qa = out.get("qa")
    if isinstance(qa, dict) and qa.get("flags_csv"):
        qa["flags_csv"] = absolute(qa["flags_csv"])
    return out


# ---------------------------------------------------------------- trial settings


def base_values(prepare: Mapping[str, Any], train: Mapping[str, Any]) -> dict[str, Any]:
    """The value of every dimension when it is not swept (None where no default is set)."""
    model = _get(train, "model.name", "hourglass")
    keys = SIZE_KEYS.get(model, {})
    config = _get(train, "model.config", {}) or {}
    sil = _get(prepare, "silence", {}) or {}
    gain = _get(prepare, "augment.gain_db")
    return {
        "model": model,
        "init": _get(train, "model.init", "ls") if model == INIT_MODEL else None,
        "n_fft": _get(prepare, "features.n_fft"),
        "silence": sil.get("target_ratio") if sil.get("enabled") else None,
        "remix_copies": _get(prepare, "augment.remix_copies", 0),
        "gain_db": gain[1] if gain is not None and gain[0] == -gain[1] else gain,
        "filters": config.get(keys.get("filters", "filters")),
        "levels": config.get(keys.get("levels", "levels")),
        "lr": _get(train, "optim.lr"),
    }


def train_settings(train: Mapping[str, Any], values: Mapping[str, Any],
                   model_configs: Mapping[str, Mapping[str, Any]]) -> dict[str, Any]:  # fmt: skip
    """The train job's settings (without ``data``/``output``) for one trial's ``values``.

    A model family other than ``train.model.name`` starts from ``model_configs[family]``;
    ``init`` sets ``model.init`` of a frame DNN (the other families have none: see
    :func:`sepcore.tune.config.check_tune`).
    """
    tree = copy.deepcopy(dict(train))
    base_model = _get(tree, "model.name", "hourglass")
    family = values.get("model") or base_model
    if family == base_model:
        config = dict(_get(tree, "model.config", {}) or {})
    else:
        config = dict(model_configs.get(family, {}))
    keys = SIZE_KEYS.get(family, {})
    for dim in ("filters", "levels"):
        if values.get(dim) is not None:
            if dim not in keys:
                raise ValueError(f"model '{family}' has no '{dim}' to sweep (known: {sorted(SIZE_KEYS)})")
            config[keys[dim]] = int(values[dim])
    set_dotted(tree, "model.name", family)
    set_dotted(tree, "model.config", config)
    if values.get("lr") is not None:
        set_dotted(tree, "optim.lr", float(values["lr"]))
    if family == INIT_MODEL and values.get("init") is not None:
        set_dotted(tree, "model.init", str(values["init"]))
    return tree


def trial_label(values: Mapping[str, Any], swept: Sequence[str]) -> str:
    """A short readable name of a trial from the swept values, e.g. ``fft1536 F16 sil0.9``, ``init=ls``."""
    parts = []
    for dim in DIMENSIONS:
        if dim not in swept:
            continue
        v = values.get(dim)
        if dim == "silence":
            parts.append(f"sil{silence_label(v)}")
        elif dim == "n_fft":
            parts.append(f"fft{v}")
        elif dim == "remix_copies":
            parts.append(f"rx{v}")
        elif dim == "gain_db":
            parts.append(f"gain{gain_label(v)}")
        elif dim == "filters":
            parts.append(f"F{v}")
        elif dim == "levels":
            parts.append(f"S{v}")
        elif dim == "lr":
            parts.append(f"lr{v:g}" if isinstance(v, (int, float)) else f"lr{v}")
        elif dim == "init":
            parts.append(f"init={v}")
        else:
            parts.append(str(v))
    return " ".join(parts) or "base"


def sweep_settings(cfg: Any, output: str, variants: Mapping[str, str]) -> dict[str, Any]:
    """What every trial needs of the sweep (``cfg``: ``ray_jobs.tune.TuneConfig``; ``variants``:
    ``data_key -> URI``)."""
    return {"output": output, "variants": dict(variants), "train": cfg.train, "model_configs": cfg.model_configs,
            "base": base_values(cfg.prepare, cfg.train), "swept": cfg.space.swept(),
            "read_cpus": cfg.resources.read_cpus}  # fmt: skip


def trial_data_key(point: Mapping[str, Any], values: Mapping[str, Any]) -> str:
    """The :func:`data_key` of a trial's variant: ``point`` (its swept values) over ``values`` (all)."""
    return data_key(values.get("n_fft") if "n_fft" in point else None,
                    values.get("silence") if "silence" in point else "base",
                    values.get("remix_copies") if "remix_copies" in point else "base",
                    values.get("gain_db") if "gain_db" in point else "base")  # fmt: skip


def trial_resources(scaling: Any, driver_cpus: float) -> dict[str, float]:
    """What Tune reserves for a trial's own process: a one-worker trial trains in it, so it holds
    the worker's resources; with several workers it only drives them (``driver_cpus``)."""
    return scaling.worker_resources() if scaling.num_workers == 1 else {"CPU": driver_cpus}


def trial_demand(scaling: Any, driver_cpus: float, read_cpus: float) -> dict[str, float]:
    """Resources one running trial holds: its workers, one reading task and, with several
    workers, its driver (a one-worker trial trains in its own process)."""
    driver = driver_cpus if scaling.num_workers > 1 else 0.0
    demand = {"CPU": driver + scaling.num_workers * scaling.cpus_per_worker + read_cpus}
    if scaling.use_gpu:
        demand["GPU"] = scaling.num_workers * scaling.gpus_per_worker
    return demand


def concurrency(demand: Mapping[str, float], cluster: Mapping[str, float], wanted: int | None) -> int:
    """Trials run at once: ``wanted``, else as many as the cluster's resources hold (at least 1)."""
    if wanted is not None:
        return wanted
    fits = [math.floor(cluster.get(k, 0.0) / v + 1e-9) for k, v in demand.items() if v > 0]
    return max(1, min(fits) if fits else 1)


# ---------------------------------------------------------------- results


def _finite(value: Any) -> float | None:
    if isinstance(value, (int, float)) and math.isfinite(float(value)):
        return float(value)
    return None


def _best(history: Sequence[Mapping[str, Any]], key: str) -> tuple[float | None, int | None]:
    best = best_of(history, key, lambda h: _finite(h.get(key)))
    return (None, None) if best is None else (_finite(best.get(key)), best.get("epoch"))


def trial_row(trial: str, label: str, status: str, values: Mapping[str, Any],
              history: Sequence[Mapping[str, Any]], metric: str, **extra: Any) -> dict[str, Any]:  # fmt: skip
    """One row of the results table from a trial's per-epoch metrics.

    ``history`` is the list of epoch records that train writes (``epoch``,
    ``train_loss``, ``val_loss``, ``val_sdr``, ``val_sdr_mixture``, ...). ``best_epoch``
    is the epoch of the best ``metric``; ``extra`` fills ``hop``, ``weights``,
    ``ls_init_s`` (the frame DNN's least-squares pass, seconds; None for a random start),
    ``seconds``, ``data``, ``checkpoint``.
    """
    last = history[-1] if history else {}
    best_sdr, sdr_epoch = _best(history, "val_sdr")
    best_loss, loss_epoch = _best(history, "val_loss")
    row: dict[str, Any] = {c: None for c in COLUMNS}
    row.update({dim: values.get(dim) for dim in DIMENSIONS})
    row.update(
        trial=trial, label=label, status=status, epochs=len(history),
        best_epoch=sdr_epoch if metric == "val_sdr" else loss_epoch,
        final_val_sdr=_finite(last.get("val_sdr")), best_val_sdr=best_sdr,
        val_sdr_mixture=_finite(last.get("val_sdr_mixture")),
        final_val_loss=_finite(last.get("val_loss")), best_val_loss=best_loss,
        final_train_loss=_finite(last.get("train_loss")),
    )  # fmt: skip
    row.update({k: v for k, v in extra.items() if k in COLUMNS})
    return row


def best_row(rows: Sequence[Mapping[str, Any]], metric: str) -> Mapping[str, Any] | None:
    """The row with the best ``best_<metric>`` (None when no trial has a value)."""
    return best_of(rows, metric, lambda r: _finite(r.get(f"best_{metric}")))


def sort_rows(rows: Sequence[Mapping[str, Any]], metric: str) -> list[Mapping[str, Any]]:
    """Best first; trials without a value last."""
    key = f"best_{metric}"
    sign = -1.0 if metric_mode(metric) == "max" else 1.0
    return sorted(rows, key=lambda r: (v * sign if (v := _finite(r.get(key))) is not None else math.inf,
                                       str(r.get("trial"))))  # fmt: skip


def table_bytes(rows: Sequence[Mapping[str, Any]]) -> tuple[bytes, bytes]:
    """The results table as (CSV, Parquet) bytes, columns :data:`COLUMNS`.

    In the CSV a missing value is empty and the silence column reads ``off`` or the
    ratio; in Parquet ``silence`` is a nullable float (null = off). ``gain_db`` is its
    :func:`gain_label` in both.
    """
    import pyarrow as pa
    import pyarrow.parquet as pq

    text = io.StringIO()
    writer = csv.writer(text, lineterminator="\n")
    writer.writerow(COLUMNS)
    for r in rows:
        cells = []
        for c in COLUMNS:
            v = r.get(c)
            if c == "silence":
                cells.append(silence_label(v))
            elif c == "gain_db":
                cells.append(gain_label(v))
            elif isinstance(v, float):
                cells.append(f"{v:.6g}")
            else:
                cells.append("" if v is None else v)
        writer.writerow(cells)
    types = {
        "trial": pa.string(), "label": pa.string(), "status": pa.string(), "model": pa.string(), "init": pa.string(),
        "n_fft": pa.int64(), "silence": pa.float64(), "filters": pa.int64(), "levels": pa.int64(),
        "remix_copies": pa.int64(), "gain_db": pa.string(), "lr": pa.float64(), "hop": pa.int64(),
        "weights": pa.int64(), "epochs": pa.int64(), "best_epoch": pa.int64(), "data": pa.string(), "checkpoint": pa.string(),
    }  # fmt: skip
    schema = pa.schema([(c, types.get(c, pa.float64())) for c in COLUMNS])
    plain = [{c: gain_label(r.get(c)) if c == "gain_db" else r.get(c) for c in COLUMNS} for r in rows]
    table = pa.Table.from_pylist(plain, schema=schema)
    buf = io.BytesIO()
    pq.write_table(table, buf)
    return text.getvalue().encode(), buf.getvalue()


# ---------------------------------------------------------------- plots


def _metric_name(metric: str) -> str:
    return "best median validation SDR (dB)" if metric == "val_sdr" else "best validation loss"


def _grouped_lines(ax: Any, rows: Sequence[Mapping[str, Any]], x_key: str, group_key: str,
                   metric: str, x_order: Sequence[Any], fmt_group: Any) -> None:  # fmt: skip
    """Every trial as a dot, and per group the mean over the other dimensions as a line."""
    key = f"best_{metric}"
    groups = sorted({r.get(group_key) for r in rows}, key=lambda g: (g is not None, g if g is not None else 0))
    cmap = R.colormap("tab10")
    pos = {x: i for i, x in enumerate(x_order)}
    for k, group in enumerate(groups):
        colour = cmap(k % 10)
        pts = [(pos[r.get(x_key)], v) for r in rows if r.get(group_key) == group
               and r.get(x_key) in pos and (v := _finite(r.get(key))) is not None]  # fmt: skip
        if not pts:
            continue
        offset = (k - (len(groups) - 1) / 2) * 0.04
        ax.scatter([p[0] + offset for p in pts], [p[1] for p in pts], color=colour, alpha=0.45, s=18)
        means = {}
        for x in sorted({p[0] for p in pts}):
            vals = [p[1] for p in pts if p[0] == x]
            means[x] = sum(vals) / len(vals)
        ax.plot(list(means), list(means.values()), marker="o", color=colour, label=fmt_group(group))
    ax.set_xticks(range(len(x_order)))
    ax.grid(alpha=0.3)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize="small")


def metric_by_nfft_figure(rows: Sequence[Mapping[str, Any]], metric: str) -> Any:
    """Best metric versus FFT size, one line per filter count (mean over the other values)."""
    ffts = sorted({r["n_fft"] for r in rows if r.get("n_fft") is not None})
    fig = R.new_figure(6.5, 4.0)
    ax = fig.subplots()
    _grouped_lines(ax, rows, "n_fft", "filters", metric, ffts, lambda g: f"filters {g}")
    ax.set_xticklabels([str(f) for f in ffts])
    ax.set_xlabel("FFT size (samples)")
    ax.set_ylabel(_metric_name(metric))
    ax.set_title("metric versus FFT size per filter count")
    fig.tight_layout()
    return fig


def metric_by_nfft_png(rows: Sequence[Mapping[str, Any]], metric: str) -> bytes:
    """:func:`metric_by_nfft_figure` as PNG bytes."""
    return R.figure_png(metric_by_nfft_figure(rows, metric))


def silence_effect_figure(rows: Sequence[Mapping[str, Any]], metric: str) -> Any:
    """Best metric versus silence setting (off, then ratios), one line per FFT size."""
    settings = sorted({r.get("silence") for r in rows}, key=lambda s: (s is not None, s or 0.0))
    fig = R.new_figure(6.5, 4.0)
    ax = fig.subplots()
    _grouped_lines(ax, rows, "silence", "n_fft", metric, settings, lambda g: f"FFT {g}")
    ax.set_xticklabels([silence_label(s) for s in settings])
    ax.set_xlabel("silence adjustment (target audio ratio)")
    ax.set_ylabel(_metric_name(metric))
    ax.set_title("effect of the silence ratio")
    fig.tight_layout()
    return fig


def silence_effect_png(rows: Sequence[Mapping[str, Any]], metric: str) -> bytes:
    """:func:`silence_effect_figure` as PNG bytes."""
    return R.figure_png(silence_effect_figure(rows, metric))


def learning_curves_figure(curves: Mapping[str, Sequence[Mapping[str, Any]]], metric: str,
                           initial: Mapping[str, float | None] | None = None) -> Any:  # fmt: skip
    """Per epoch trained (epoch record ``k`` at ``k + 1``) of every trial (``label -> history``),
    one line each: ``metric`` in the left panel and the validation loss in the right one (the
    training loss when ``metric`` is the validation loss). ``initial`` (``label -> `` the
    validation loss of the trial's initial weights, its checkpoint's ``meta["init"]["val_loss"]``)
    starts a validation-loss line at epoch 0. Missing and non-finite values are left out."""
    panels = [metric] + (["val_loss"] if metric != "val_loss" else ["train_loss"])
    fig = R.new_figure(12, 4.4)
    axes = fig.subplots(1, 2)
    cmap = R.colormap("tab20")
    for k, (label, history) in enumerate(curves.items()):
        for ax, key in zip(axes, panels, strict=True):
            pts = curve_points(history, key, (initial or {}).get(label) if key == "val_loss" else None)
            if pts:
                ax.plot([p[0] for p in pts], [p[1] for p in pts], marker=".", color=cmap(k % 20), label=label)
    for ax, key in zip(axes, panels, strict=True):
        ax.set_xlabel("epoch")
        ax.set_ylabel("median SDR (dB)" if key == "val_sdr" else key.replace("_", " "))
        ax.set_title({"val_sdr": "validation SDR of the target", "val_loss": "validation loss",
                      "train_loss": "training loss"}[key])  # fmt: skip
        ax.grid(alpha=0.3)
    if axes[1].get_legend_handles_labels()[0]:
        axes[1].legend(fontsize="x-small", loc="center left", bbox_to_anchor=(1.02, 0.5))
    fig.tight_layout()
    return fig


def curve_points(history: Sequence[Mapping[str, Any]], key: str, start: float | None = None
                 ) -> list[tuple[int, float]]:  # fmt: skip
    """(epochs trained, value) of ``key`` per epoch record, finite values only; ``start`` (a finite
    value: the initial weights') comes first at epoch 0."""
    first = [(0, s)] if (s := _finite(start)) is not None else []
    return first + [(int(h["epoch"]) + 1, v) for h in history if (v := _finite(h.get(key))) is not None]


def learning_curves_png(curves: Mapping[str, Sequence[Mapping[str, Any]]], metric: str,
                        initial: Mapping[str, float | None] | None = None) -> bytes:  # fmt: skip
    """:func:`learning_curves_figure` as PNG bytes."""
    return R.figure_png(learning_curves_figure(curves, metric, initial))
