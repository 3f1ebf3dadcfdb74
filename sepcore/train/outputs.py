"""A training output (no Ray): its data's manifest, resume checks, history and best checkpoint.

A training output holds ``runs/<run>/checkpoint_*`` (checkpoints, see
:mod:`sepcore.models.checkpoint`), ``best/`` (the best one by the validation metric),
``metrics.jsonl`` (one line per finished epoch) and ``loss_curve.png``. ``cfg`` below is
the train job's configuration (``ray_jobs.train.TrainConfig``).
"""

from __future__ import annotations

import json
import logging
import math
from typing import Any

from sepcore.config import changed_keys, to_plain
from sepcore.errors import ConfigError, SepError
from sepcore.io import storage
from sepcore.models import checkpoint as ckpt
from sepcore.train.config import RESUMABLE_CHANGES
from sepcore.train.loop import TASK_OF_MODEL
from sepcore.train.selection import best_of

log = logging.getLogger("sep.train")

RUNS = "runs"
METRICS_FILE = "metrics.jsonl"
CURVE_FILE = "loss_curve.png"
#: What a fresh start (``resume=false``) discards of an earlier run in the output.
RUN_OUTPUTS = (RUNS, ckpt.BEST, METRICS_FILE, CURVE_FILE)


def read_manifest(data: str) -> dict[str, Any]:
    """``dataset.json`` of prepared data (ConfigError when it is not prepared)."""
    uri = storage.join(storage.normalize_uri(data), "dataset.json")
    if not storage.exists(uri):
        raise ConfigError("data", f"{data} has no dataset.json: prepare it first (sep prepare)")
    return json.loads(storage.read_text(uri))


def storage_args(output: str) -> dict[str, Any]:
    """Ray's RunConfig storage arguments for ``<output>/runs`` (S3 through our fsspec filesystem)."""
    runs = storage.join(output, RUNS)
    if storage.is_local(runs):
        return {"storage_path": storage.local_path(runs)}
    import pyarrow.fs as pafs

    fs, path = storage.filesystem(runs)
    return {"storage_path": path, "storage_filesystem": pafs.PyFileSystem(pafs.FSSpecHandler(fs))}


def read_shards(batch: dict[str, Any]) -> Any:
    """The rows of the prepared shards at ``batch["uri"]`` as one Arrow table (any URI)."""
    import io

    import pyarrow as pa
    import pyarrow.parquet as pq

    return pa.concat_tables([pq.read_table(io.BytesIO(storage.read_bytes(str(u)))) for u in batch["uri"]])


def read_kept_rows(batch: dict[str, Any], keep: dict[str, list[int]]) -> Any:
    """:func:`read_shards` keeping only the rows ``keep[uri]`` of each shard (all for a shard not in ``keep``)."""
    import pyarrow as pa

    tables = []
    for uri in batch["uri"]:
        table = read_shards({"uri": [uri]})
        rows = keep.get(str(uri))
        tables.append(table if rows is None else table.take(pa.array(rows, type=pa.int64())))
    return pa.concat_tables(tables)


def snippet_rows(manifest: dict[str, Any], per_song: int, seed: int) -> dict[str, list[int]]:
    """``loader.snippets_per_song``: ``per_song`` rows (chunks) of each training song drawn at random,
    as the rows to keep of each training shard (a song's shards share its ``track_id``; songs with
    fewer rows keep all). The draw depends on ``seed`` and the song only."""
    import hashlib

    import numpy as np

    by_song: dict[str, list[tuple[str, int]]] = {}
    for shard in manifest["shards"]:
        if shard["split"] == "train":
            by_song.setdefault(str(shard["track_id"]), []).extend((shard["uri"], r) for r in range(int(shard["rows"])))
    keep: dict[str, list[int]] = {sh["uri"]: [] for sh in manifest["shards"] if sh["split"] == "train"}
    for song, rows in by_song.items():
        digest = hashlib.sha256(f"{seed}:{song}".encode()).digest()
        rng = np.random.default_rng(int.from_bytes(digest[:8], "little"))
        chosen = rng.choice(len(rows), size=min(per_song, len(rows)), replace=False)
        for i in sorted(chosen.tolist()):
            keep[rows[i][0]].append(rows[i][1])
    return keep


def split_bytes(manifest: dict[str, Any], splits: tuple[str, ...] = ("train", "validation")) -> int:
    """Bytes of the feature columns of ``splits`` (what holding them in memory costs)."""
    import numpy as np

    row = sum(math.prod(shape) for shape in manifest["shapes"].values()) * np.dtype(manifest["dtype"]).itemsize
    return row * sum(int(s.get("rows", 0)) for s in manifest["shards"] if s["split"] in splits)


def model_stems(cfg: Any, manifest: dict[str, Any]) -> tuple[list[str], list[str], list[list[int]]] | None:
    """``(targets, stems, fold)`` of a separator trained on several stems, None for one target.

    ``targets`` are ``cfg.targets`` (default: the data's), ``stems`` them and ``other``;
    ``fold[k]`` lists the data's stems summed into the model's stem ``k`` (a target the model
    leaves out goes to ``other``). A target the data lacks is refused (exit status 2).
    """
    data_stems = manifest.get("stems")
    wanted = getattr(cfg, "targets", None)
    if not data_stems:
        if wanted:
            raise ConfigError("targets", f"{cfg.data} was prepared for one target ({manifest['target']}); "
                              "prepare it with targets: [...] to train several")  # fmt: skip
        return None
    data_targets = [s for s in data_stems if s != "other"]
    targets = list(wanted or data_targets)
    unknown = [t for t in targets if t not in data_targets]
    if unknown:
        raise ConfigError("targets", f"{unknown} not in the data's targets {data_targets}")
    stems = [*targets, "other"]
    fold = [[data_stems.index(t)] for t in targets]
    fold.append([k for k, s in enumerate(data_stems) if s not in targets])
    return targets, stems, fold


def model_meta(cfg: Any, manifest: dict[str, Any]) -> dict[str, Any]:
    """Model registry entry with the data's sizes filled in; checks the data fits."""
    task = TASK_OF_MODEL[cfg.model.name]
    shapes = manifest["shapes"]
    multi = model_stems(cfg, manifest) if task == "separator" else None
    needed = "activations" if task != "separator" else "targets" if multi else "target"
    if needed not in shapes:
        raise ConfigError("data", f"{cfg.data} has no '{needed}' column, which a {cfg.model.name} needs")
    channels, bins, frames = shapes["mix"]
    kwargs = dict(cfg.model.config)
    if cfg.model.name == "hourglass":
        kwargs.setdefault("in_channels", channels)
    elif cfg.model.name == "unet_gan":
        kwargs["channels"] = channels
    elif task == "separator":  # blstm, frame_dnn
        kwargs.update(n_bins=bins, channels=channels)
    else:
        kwargs.update(n_bins=bins, n_classes=len(manifest["classes"]), frames=frames)
    if multi:
        kwargs["sources"] = len(multi[1])
    return {"name": cfg.model.name, "config": kwargs, "log_input": cfg.model.log_input and task == "separator"}


def inference_meta(cfg: Any, manifest: dict[str, Any]) -> dict[str, Any]:
    """What a checkpoint carries besides the weights, ``settings`` (the training config) included.

    A separator of several stems adds ``targets``, ``stems`` (with ``other``), ``fold`` and
    ``data_targets`` (how the data's stems make the model's) and ``wiener_iterations``
    (the post-filter separation uses by default); its ``target`` is null.
    """
    multi = model_stems(cfg, manifest) if TASK_OF_MODEL[cfg.model.name] == "separator" else None
    extra: dict[str, Any] = {}
    if multi:
        targets, stems, fold = multi
        extra = {"targets": targets, "stems": stems, "fold": fold,
                 "data_targets": [s for s in manifest["stems"] if s != "other"],
                 "wiener_iterations": cfg.wiener_iterations}  # fmt: skip
    return {
        **extra,
        "model": model_meta(cfg, manifest),
        "task": TASK_OF_MODEL[cfg.model.name],
        "target": manifest["target"],
        "classes": manifest["classes"],
        "sample_rate": manifest["sample_rate"],
        "channels": manifest["channels"],
        "feature": manifest["feature"],
        "frames": manifest["frames"],
        "data": storage.normalize_uri(cfg.data),
        "settings": run_settings(cfg),
        **({"stage": getattr(cfg, "stage", 1)} if cfg.model.name == "unet_gan" else {}),
    }


def run_settings(cfg: Any) -> dict[str, Any]:
    """The config as saved with every checkpoint (URIs normalised), to check a resume against."""
    plain = to_plain(cfg)
    data = storage.normalize_uri(cfg.data) if cfg.data else None  # the composer trains on sequences
    return {**plain, "data": data, "output": storage.normalize_uri(cfg.output)}


def _with_defaults(cfg: Any, saved: dict[str, Any]) -> dict[str, Any]:
    """``saved`` settings with the keys added since they were written at their defaults (read
    back through ``cfg``'s class), so that a run saved by an older version resumes; as saved
    when they no longer validate."""
    try:
        return run_settings(type(cfg).model_validate(saved))
    except Exception:  # settings of another shape: compared as they are
        return saved


def check_resume(cfg: Any, latest: str) -> None:
    """Refuse to continue the run in ``latest``'s output with other settings (exit status 2)."""
    saved = ckpt.read_meta(latest).get("settings")
    if saved is None:  # written before checkpoints carried their settings
        log.warning("train: %s does not record its settings; resuming without checking them", latest)
        return
    diff = changed_keys(_with_defaults(cfg, saved), run_settings(cfg), RESUMABLE_CHANGES)
    if diff:
        raise ConfigError(
            "output", f"{storage.normalize_uri(cfg.output)} holds a training run with other settings "
            f"({', '.join(diff)}); use a new output, or resume=false to discard that run"
        )


def validation_tracks(manifest: dict[str, Any], count: int) -> list:
    """The first ``count`` validation tracks as SourceTrack records."""
    if count <= 0 or manifest["target"] == "random_mix":
        return []
    from sepcore.data.sources import list_sources

    wanted = manifest["splits"].get("validation", [])[:count]
    sources = [{k: v for k, v in s.items() if v is not None} for s in manifest["config"]["sources"]]
    return [t for t in list_sources(sources) if t.track_id in wanted]


def keep_styles(manifest: dict[str, Any], styles: list[str]) -> dict[str, Any]:
    """``manifest`` with only the shards and split entries of tracks in ``styles`` (the ``style``
    of each track's ``metadata.yaml`` in the prepared sources, Slakh layout only): a per-style
    model from data prepared once for all styles."""
    from sepcore.data.sources import list_sources

    sources = [{k: v for k, v in s.items() if v is not None} for s in manifest["config"]["sources"]]
    if any(s.get("kind") != "slakh" for s in sources):
        raise ConfigError("styles", "training on some styles needs data prepared from Slakh-layout sources "
                          "(metadata.yaml's style)")  # fmt: skip
    kept = {t.track_id for t in list_sources([{**s, "styles": list(styles)} for s in sources])}
    shards = [sh for sh in manifest["shards"] if sh.get("track_id") in kept]
    if not any(sh["split"] == "train" for sh in shards):
        raise ConfigError("styles", f"no training track of {', '.join(styles)} in this data")
    splits = {k: [t for t in v if t in kept] for k, v in manifest["splits"].items()}
    log.info("train: styles %s: %d of %d shards", ", ".join(styles), len(shards), len(manifest["shards"]))
    return {**manifest, "shards": shards, "splits": splits}


def worker_config(cfg: Any, manifest: dict[str, Any]) -> dict[str, Any]:
    """What every worker's loop needs (:func:`sepcore.train.worker.train_worker`); checks a resume.

    A run already in the output is continued only with the same settings (:func:`check_resume`).
    """
    if cfg.validation.metric == "val_sdr" and manifest.get("target") == "random_mix":
        raise ConfigError("validation.metric", "val_sdr needs an instrument target; this data is random_mix")
    output = storage.normalize_uri(cfg.output)
    meta = inference_meta(cfg, manifest)
    latest = ckpt.find_latest(storage.join(output, RUNS))
    if latest:
        check_resume(cfg, latest)
        log.info("train: resuming from %s (epoch %d)", latest, ckpt.read_meta(latest)["epoch"])
    s = cfg.scaling
    separator = meta["task"] == "separator"
    return {
        "meta": meta, "optim": cfg.optim.model_dump(), "validation": cfg.validation.model_dump(),
        "loader": cfg.loader.model_dump() if separator and cfg.loader.active else None,
        "fold": None if meta.get("fold") is None or meta["fold"] == [[k] for k in range(len(meta["fold"]))] else meta["fold"],
        "input_stats": input_stats_source(cfg, manifest) if separator else None,
        "shapes": manifest["shapes"], "dtype": manifest["dtype"], "seed": cfg.seed,
        "threads": s.threads or max(1, round(s.cpus_per_worker)), "output": output,
        "val_tracks": validation_tracks(manifest, cfg.validation.sdr_tracks) if meta["task"] == "separator" else [],
        "resume_from": latest, "keep_checkpoints": cfg.keep_checkpoints, "cache": held_in_memory(cfg, manifest),
        "gan": cfg.gan.model_dump() if getattr(cfg, "stage", 1) == 2 else None,
    }  # fmt: skip


def held_in_memory(cfg: Any, manifest: dict[str, Any]) -> bool:
    """Whether each worker holds its share of the splits in memory (``loader.cache_mb``). The share
    is counted from the manifest's rows, an upper bound (snippets and a capped validation hold fewer)."""
    share = split_bytes(manifest) / cfg.scaling.num_workers / 2**20
    held = share <= cfg.loader.cache_mb
    log.info("train: the splits are %s (%.0f MiB per worker at most; loader.cache_mb %g)",
             "read once and held in each worker's memory" if held else "read and decoded every epoch", share,
             cfg.loader.cache_mb)  # fmt: skip
    return held


def split_shares(cfg: Any, manifest: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """What each worker reads itself of the splits it holds in memory (:func:`held_in_memory`), per
    split: ``shards`` as ``[uri, rows]`` in the manifest's order (rows after the snippets kept),
    ``keep`` (``loader.snippets_per_song``'s rows, training only) and ``limit``, the rows of all
    workers together (``validation.max_steps``). See :func:`sepcore.train.worker.read_share`."""
    keep = kept_rows(cfg, manifest)
    shares = {}
    for split in ("train", "validation"):
        kept = keep if split == "train" else None
        shards = [[sh["uri"], len(kept[sh["uri"]]) if kept is not None else int(sh["rows"])]
                  for sh in manifest["shards"] if sh["split"] == split]  # fmt: skip
        limit = validation_rows(cfg) if split == "validation" else None
        shares[split] = {"shards": shards, "keep": kept, "limit": limit}
    return shares


def kept_rows(cfg: Any, manifest: dict[str, Any]) -> dict[str, list[int]] | None:
    """The training rows kept of each shard with ``loader.snippets_per_song`` (:func:`snippet_rows`), else None."""
    return snippet_rows(manifest, cfg.loader.snippets_per_song, cfg.seed) if cfg.loader.snippets_per_song else None


def validation_rows(cfg: Any) -> int | None:
    """The validation rows of all workers together with ``validation.max_steps`` (None: the whole split)."""
    if cfg.validation.max_steps is None:
        return None
    return int(cfg.validation.max_steps * cfg.optim.batch_size * cfg.scaling.num_workers)


def input_stats_source(cfg: Any, manifest: dict[str, Any]) -> dict[str, Any] | None:
    """The training shards whose rows start a model's input scaling (``model.input_stats``), or None."""
    if not cfg.model.input_stats or cfg.model.name != "blstm" or cfg.model.config.get("input_norm") is False:
        return None
    uris, rows = [], 0
    for shard in manifest["shards"]:
        if shard["split"] == "train" and rows < cfg.model.input_stats_rows:
            uris.append(shard["uri"])
            rows += int(shard.get("rows", 0))
    return {"uris": uris, "rows": cfg.model.input_stats_rows} if uris else None


def latest_epoch(output: str) -> int:
    """The epoch of the latest complete checkpoint (-1 when there is none)."""
    latest = ckpt.find_latest(storage.join(output, RUNS))
    return int(ckpt.read_meta(latest)["epoch"]) if latest else -1


def trained_out(output: str, optim: Any) -> bool:
    """Whether the latest checkpoint under ``output`` ends the training (``optim``'s last epoch or patience)."""
    latest = ckpt.find_latest(storage.join(output, RUNS))
    if latest is None:
        return False
    meta = ckpt.read_meta(latest)
    progress = meta.get("progress") or {}
    out_of_time = optim.max_minutes is not None and progress.get("elapsed_s", 0.0) >= 60.0 * optim.max_minutes
    return int(meta["epoch"]) + 1 >= optim.epochs or progress.get("stale", 0) >= optim.early_stopping_patience or out_of_time


def finish(output: str, metric: str) -> dict[str, Any]:
    """Copy the best complete checkpoint to ``best/``, write metrics and the loss curve (from
    epoch 0, the initial weights' validation loss, when the checkpoint's ``meta["init"]`` has it).

    Returns the summary's keys (counts, figures, ``best_checkpoint``).
    """
    from sepcore.report import html as R

    complete = ckpt.complete_checkpoints(storage.join(output, RUNS))
    if not complete:
        raise SepError(f"{output}: training wrote no complete checkpoint")
    by_epoch = sorted(complete, key=lambda item: item[1]["epoch"])
    best_dir, best_meta = best_of(by_epoch, metric, lambda item: item[1]["metrics"].get(metric)) or by_epoch[-1]
    best = ckpt.publish_best(best_dir, output)
    history = by_epoch[-1][1]["history"]
    write_history(output, history)
    init = best_meta.get("init")  # how the weights started: frame DNN (ls_initialise) or init_from
    start = init.get("val_loss") if init else None  # the initial weights' validation loss (train_worker)
    storage.write_bytes(storage.join(output, CURVE_FILE), R.loss_curve_png(history, start))
    figures = {k: round(v, 4) for k, v in history[-1].items() if isinstance(v, float)}
    counts = {"epochs": len(history), "checkpoints": len(complete)}
    if init:
        layers = init.get("layers")
        if layers is not None:  # the frame DNN's layer-wise start
            counts.update(ls_layers=sum(x["init"] == "ls" for x in layers), random_layers=sum(x["init"] == "random" for x in layers))
            log.info("train: initial weights (%s): %s", init["method"],
                     ", ".join(f"layer {x['layer']} {x['in']}->{x['out']} {x['init']}" for x in layers))  # fmt: skip
        else:  # init_from: another run's weights
            log.info("train: initial weights from %s", init.get("from"))
        if "seconds" in init:
            figures["ls_init_s"] = init["seconds"]
        if isinstance(start, float):
            figures["initial_val_loss"] = round(start, 4)
    return {
        "counts": counts,
        "figures": {**figures, "best_epoch": best_meta["epoch"], f"best_{metric}": best_meta["metrics"].get(metric)},
        "best_checkpoint": best,
        "failed": [],
        **({"init": init} if init else {}),
    }


def write_history(output: str, history: list[dict[str, Any]]) -> None:
    """``metrics.jsonl``: one line per finished epoch (rewritten whole, atomically)."""
    storage.write_text(storage.join(output, METRICS_FILE), "".join(json.dumps(h) + "\n" for h in history))


def read_history(output: str) -> list[dict[str, Any]]:
    """The per-epoch metrics of a training output (``metrics.jsonl``); [] before it is written."""
    uri = storage.join(storage.normalize_uri(output), METRICS_FILE)
    if not storage.exists(uri):
        return []
    return [json.loads(line) for line in storage.read_text(uri).splitlines() if line.strip()]
