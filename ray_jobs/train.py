"""train: a separator or activation model on prepared shards, with Ray Train.

    sep train -c configs/train_hourglass_cpu_small.yaml
    sep train -c configs/train_hourglass.yaml scaling.num_workers=4 scaling.use_gpu=true

A TorchTrainer runs :func:`train_loop` on ``scaling.num_workers`` workers (DDP through
Ray's ``prepare_model``; gloo on CPUs, NCCL on GPUs). Each worker streams its shard of
the prepared Parquet rows with ``get_dataset_shard(...).iter_batches``; nothing passes
through the driver. Every epoch: validation loss on the validation split, and for
separators the median SDR of the target on a few validation tracks through the same
separation code the separate job uses, plus the mixture-as-estimate baseline.

Checkpoints (model, optimizer, epoch, history and everything inference needs: model
config, sample rate, n_fft, hop, frames, target) go to ``<output>/runs/...`` through
Ray Train's storage; the best ``keep_checkpoints`` by the validation metric are kept and
the best is copied to ``<output>/best``, so the output URI itself is a valid
``checkpoint`` for separate and evaluate. A rerun of the same command after a kill
continues from the latest complete checkpoint; a worker failure during training is
recovered by Ray (``max_failures``).
"""

from __future__ import annotations

import json
import logging
import sys
import tempfile
import time
from typing import Any, Literal

from pydantic import Field, model_validator

from ray_jobs.common import Job, JobConfig, setup_logging
from sepcore.config import Config, changed_keys, to_plain
from sepcore.errors import ConfigError, SepError
from sepcore.io import storage
from sepcore.models import checkpoint as ckpt
from sepcore.report import html as R

log = logging.getLogger("sep.train")

METRICS_FILE = "metrics.jsonl"
CURVE_FILE = "loss_curve.png"
#: Settings that may change when a run is continued (raising optim.epochs is how it is
#: continued); any other difference from the checkpoints' settings is refused.
RESUMABLE_CHANGES = ("optim.epochs", "optim.early_stopping_patience", "scaling.*", "max_failures",
                     "keep_checkpoints", "num_cpus", "output", "resume")  # fmt: skip


class ModelConfig(Config):
    name: Literal["hourglass", "blstm", "activation_cnn"] = Field("hourglass", description="registered model")
    config: dict[str, Any] = Field(
        default_factory=dict,
        description="constructor arguments; sizes of the data (bins, channels, classes, frames) are filled in",
    )
    log_input: bool = Field(True, description="feed log1p(magnitude) to separators")

    @model_validator(mode="after")
    def _check_arguments(self) -> ModelConfig:
        import inspect

        from sepcore.models import MODELS

        try:
            inspect.signature(MODELS[self.name]).bind_partial(**self.config)
        except TypeError as exc:  # an unknown or doubled argument: name it now, not in each worker
            raise ValueError(f"config: {exc} (model {self.name})") from None
        return self


class OptimConfig(Config):
    epochs: int = Field(10, ge=1)
    batch_size: int = Field(4, ge=1, description="per worker")
    lr: float = Field(1e-4, gt=0, description="Adam learning rate")
    weight_decay: float = Field(0.0, ge=0)
    scheduler: Literal["none", "plateau"] = Field("none", description="plateau: divide lr on stale epochs")
    plateau_factor: float = Field(0.2, gt=0, lt=1, description="lr multiplier (0.2 = divide by 5)")
    plateau_patience: int = Field(8, ge=0)
    min_lr: float = Field(1e-5, ge=0)
    early_stopping_patience: int = Field(10, ge=1, description="stop after this many stale epochs")
    max_steps_per_epoch: int | None = Field(None, ge=1, description="cap the steps of an epoch")
    amp: bool = Field(True, description="automatic mixed precision (GPU only)")


class ValidationConfig(Config):
    sdr_tracks: int = Field(3, ge=0, description="validation tracks separated for SDR (separators; 0 = off)")
    metric: Literal["val_loss", "val_sdr"] = Field("val_loss", description="selects the best checkpoint")
    max_steps: int | None = Field(
        None, ge=1, description="measure the validation loss on the first max_steps x batch_size x workers "
        "rows of the validation split (in shard order): the same rows every epoch"
    )

    @model_validator(mode="after")
    def _check(self) -> ValidationConfig:
        if self.metric == "val_sdr" and self.sdr_tracks == 0:
            raise ValueError("metric val_sdr needs sdr_tracks > 0 (with no SDR tracks there is no val_sdr)")
        return self


class ScalingConf(Config):
    num_workers: int = Field(1, ge=1)
    use_gpu: bool = Field(False)
    cpus_per_worker: float = Field(
        1.0, gt=0, description="CPUs reserved per worker; leave some for Ray Data's reading tasks"
    )
    gpus_per_worker: float = Field(1.0, gt=0, description="with use_gpu")
    threads: int | None = Field(None, ge=1, description="torch threads per worker (default: CPUs, at least 1)")


class TrainConfig(JobConfig):
    data: str = Field(description="URI of prepared data (the output of sep prepare)")
    model: ModelConfig = Field(default_factory=ModelConfig)
    optim: OptimConfig = Field(default_factory=OptimConfig)
    validation: ValidationConfig = Field(default_factory=ValidationConfig)
    scaling: ScalingConf = Field(default_factory=ScalingConf)
    keep_checkpoints: int = Field(3, ge=1, description="best checkpoints kept")
    max_failures: int = Field(1, ge=0, description="worker failures recovered automatically")
    seed: int = Field(0)
    resume: bool = Field(
        True, description="continue the run already in output (same settings); false: discard it and start fresh"
    )

    @model_validator(mode="after")
    def _check(self) -> TrainConfig:
        from sepcore.train.loop import TASK_OF_MODEL

        if self.validation.metric == "val_sdr" and TASK_OF_MODEL[self.model.name] != "separator":
            raise ValueError("validation.metric val_sdr is for separators; use val_loss")
        return self


# ---------------------------------------------------------------- driver helpers


def read_manifest(data: str) -> dict[str, Any]:
    uri = storage.join(storage.normalize_uri(data), "dataset.json")
    if not storage.exists(uri):
        raise ConfigError("data", f"{data} has no dataset.json: prepare it first (sep prepare)")
    return json.loads(storage.read_text(uri))


def model_meta(cfg: TrainConfig, manifest: dict[str, Any]) -> dict[str, Any]:
    """Model registry entry with the data's sizes filled in; checks the data fits."""
    from sepcore.train.loop import TASK_OF_MODEL

    task = TASK_OF_MODEL[cfg.model.name]
    shapes = manifest["shapes"]
    needed = "target" if task == "separator" else "activations"
    if needed not in shapes:
        raise ConfigError("data", f"{cfg.data} has no '{needed}' column, which a {cfg.model.name} needs")
    channels, bins, frames = shapes["mix"]
    kwargs = dict(cfg.model.config)
    if cfg.model.name == "hourglass":
        kwargs.setdefault("in_channels", channels)
    elif cfg.model.name == "blstm":
        kwargs.update(n_bins=bins, channels=channels)
    else:
        kwargs.update(n_bins=bins, n_classes=len(manifest["classes"]), frames=frames)
    return {"name": cfg.model.name, "config": kwargs, "log_input": cfg.model.log_input and task == "separator"}


def inference_meta(cfg: TrainConfig, manifest: dict[str, Any], mmeta: dict[str, Any]) -> dict[str, Any]:
    """What a checkpoint carries besides the weights, ``settings`` (the training config) included."""
    from sepcore.train.loop import TASK_OF_MODEL

    return {
        "model": mmeta,
        "task": TASK_OF_MODEL[cfg.model.name],
        "target": manifest["target"],
        "classes": manifest["classes"],
        "sample_rate": manifest["sample_rate"],
        "channels": manifest["channels"],
        "feature": manifest["feature"],
        "frames": manifest["frames"],
        "data": storage.normalize_uri(cfg.data),
        "settings": run_settings(cfg),
    }


def run_settings(cfg: TrainConfig) -> dict[str, Any]:
    """The config as saved with every checkpoint (URIs normalised), to check a resume against."""
    plain = to_plain(cfg)
    return {**plain, "data": storage.normalize_uri(cfg.data), "output": storage.normalize_uri(cfg.output)}


def check_resume(cfg: TrainConfig, latest: str) -> None:
    """Refuse to continue the run in ``latest``'s output with other settings (exit status 2)."""
    saved = ckpt.read_meta(latest).get("settings")
    if saved is None:  # written before checkpoints carried their settings
        log.warning("train: %s does not record its settings; resuming without checking them", latest)
        return
    diff = changed_keys(saved, run_settings(cfg), RESUMABLE_CHANGES)
    if diff:
        raise ConfigError(
            "output", f"{storage.normalize_uri(cfg.output)} holds a training run with other settings "
            f"({', '.join(diff)}); use a new output, or resume=false to discard that run"
        )


def shard_dataset(uris: list[str], shuffle: bool, read_cpus: float = 1.0) -> Any:
    """The rows of prepared shards as a Ray Dataset, one read task of ``read_cpus`` CPUs per shard.

    Shards keep the manifest's order (``shuffle``: random block order, for training).
    Reads go through :mod:`sepcore.io.storage`, so any URI works.
    """
    import ray

    if not uris:
        raise ConfigError("data", "the train or validation split has no shards (too few tracks?)")
    ds = ray.data.from_items([{"uri": u} for u in uris], override_num_blocks=len(uris))
    if shuffle:
        ds = ds.randomize_block_order()
    return ds.map_batches(_read_shards, batch_size=1, batch_format="numpy", num_cpus=read_cpus)


def _read_shards(batch: dict[str, Any]) -> Any:
    import io

    import pyarrow as pa
    import pyarrow.parquet as pq

    return pa.concat_tables([pq.read_table(io.BytesIO(storage.read_bytes(str(u)))) for u in batch["uri"]])


def build_datasets(cfg: TrainConfig, manifest: dict[str, Any], read_cpus: float = 1.0) -> dict[str, Any]:
    """``train`` (shuffled shards) and ``validation`` (fixed order; capped by ``validation.max_steps``)."""
    uris = {s: [sh["uri"] for sh in manifest["shards"] if sh["split"] == s] for s in ("train", "validation")}
    datasets = {split: shard_dataset(u, shuffle=split == "train", read_cpus=read_cpus) for split, u in uris.items()}
    cap = cfg.validation.max_steps
    if cap is not None:
        datasets["validation"] = datasets["validation"].limit(cap * cfg.optim.batch_size * cfg.scaling.num_workers)
    return datasets


def data_config() -> Any:
    """Both splits are sharded over the workers; validation is read in order (a fixed subset when capped)."""
    import ray.train

    ordered = ray.train.DataConfig.default_ingest_options()
    ordered.preserve_order = True
    return ray.train.DataConfig(datasets_to_split=["train", "validation"], execution_options={"validation": ordered})


def build_trainer(cfg: TrainConfig, read_cpus: float = 1.0, callbacks: list[Any] | None = None) -> Any:
    """The TorchTrainer of a training config (train and tune): datasets, loop config, resume point.

    A run already in the output is continued only with the same settings (:func:`check_resume`).
    """
    import ray.train
    from ray.train.torch import TorchTrainer

    from sepcore.train.selection import metric_mode

    output = storage.normalize_uri(cfg.output)
    manifest = read_manifest(cfg.data)
    mmeta = model_meta(cfg, manifest)
    meta = inference_meta(cfg, manifest, mmeta)
    if cfg.validation.metric == "val_sdr" and manifest["target"] == "random_mix":
        raise ConfigError("validation.metric", "val_sdr needs an instrument target; this data is random_mix")
    latest = ckpt.find_latest(storage.join(output, "runs"))
    if latest:
        check_resume(cfg, latest)
        log.info("train: resuming from %s (epoch %d)", latest, ckpt.read_meta(latest)["epoch"])
    s, metric = cfg.scaling, cfg.validation.metric
    loop_config = {
        "meta": meta, "optim": cfg.optim.model_dump(), "validation": cfg.validation.model_dump(),
        "shapes": manifest["shapes"], "dtype": manifest["dtype"], "seed": cfg.seed,
        "threads": s.threads or max(1, round(s.cpus_per_worker)), "output": output,
        "val_tracks": validation_tracks(manifest, cfg.validation.sdr_tracks) if meta["task"] == "separator" else [],
        "resume_from": latest,
    }  # fmt: skip
    resources = {"CPU": s.cpus_per_worker, **({"GPU": s.gpus_per_worker} if s.use_gpu else {})}
    return TorchTrainer(
        train_loop, train_loop_config=loop_config, datasets=build_datasets(cfg, manifest, read_cpus),
        dataset_config=data_config(),
        scaling_config=ray.train.ScalingConfig(num_workers=s.num_workers, use_gpu=s.use_gpu,
                                               resources_per_worker=resources),
        run_config=ray.train.RunConfig(
            name=f"run-{int(time.time())}", **storage_args(output), callbacks=callbacks or [],
            failure_config=ray.train.FailureConfig(max_failures=cfg.max_failures),
            checkpoint_config=ray.train.CheckpointConfig(
                num_to_keep=cfg.keep_checkpoints, checkpoint_score_attribute=metric,
                checkpoint_score_order=metric_mode(metric)),
        ),
    )  # fmt: skip


def validation_tracks(manifest: dict[str, Any], count: int) -> list:
    """The first ``count`` validation tracks as SourceTrack records."""
    if count <= 0 or manifest["target"] == "random_mix":
        return []
    from sepcore.data.sources import list_sources

    wanted = manifest["splits"].get("validation", [])[:count]
    sources = [{k: v for k, v in s.items() if v is not None} for s in manifest["config"]["sources"]]
    return [t for t in list_sources(sources) if t.track_id in wanted]


def storage_args(output: str) -> dict[str, Any]:
    """RunConfig storage arguments for a URI (S3 through our fsspec filesystem)."""
    runs = storage.join(output, "runs")
    if storage.is_local(runs):
        return {"storage_path": storage.local_path(runs)}
    import pyarrow.fs as pafs

    fs, path = storage.filesystem(runs)
    return {"storage_path": path, "storage_filesystem": pafs.PyFileSystem(pafs.FSSpecHandler(fs))}


# ---------------------------------------------------------------- driver

#: What a fresh start (``resume=false``) discards of an earlier run in the output.
RUN_OUTPUTS = ("runs", ckpt.BEST, METRICS_FILE, CURVE_FILE)


def run(cfg: TrainConfig) -> dict[str, Any]:
    import ray.train

    output = storage.normalize_uri(cfg.output)
    if not cfg.resume:
        for name in RUN_OUTPUTS:
            storage.delete(storage.join(output, name), recursive=True)
    trainer = build_trainer(cfg)
    try:
        trainer.fit()
    except ray.train.TrainingFailedError as exc:
        raise SepError(f"{output}: training failed after {cfg.max_failures} recoveries: {exc}") from exc
    return finish(output, cfg.validation.metric)


def finish(output: str, metric: str) -> dict[str, Any]:
    """Copy the best complete checkpoint to ``best/``, write metrics and the loss curve."""
    from sepcore.train.selection import best_of

    complete = ckpt.complete_checkpoints(storage.join(output, "runs"))
    if not complete:
        raise SepError(f"{output}: training wrote no complete checkpoint")
    by_epoch = sorted(complete, key=lambda item: item[1]["epoch"])
    best_dir, best_meta = best_of(by_epoch, metric, lambda item: item[1]["metrics"].get(metric)) or by_epoch[-1]
    latest_meta = by_epoch[-1][1]
    for name in (ckpt.MODEL_FILE, ckpt.META_FILE):  # meta last: best/ is complete or absent
        storage.write_bytes(storage.join(output, ckpt.BEST, name), storage.read_bytes(storage.join(best_dir, name)))
    history = latest_meta["history"]
    write_history(output, history)
    storage.write_bytes(storage.join(output, CURVE_FILE), R.loss_curve_png(history))
    last = history[-1]
    figures = {k: round(v, 4) for k, v in last.items() if isinstance(v, float)}
    return {
        "counts": {"epochs": len(history), "checkpoints": len(complete)},
        "figures": {**figures, "best_epoch": best_meta["epoch"], f"best_{metric}": best_meta["metrics"].get(metric)},
        "best_checkpoint": storage.join(output, ckpt.BEST),
        "failed": [],
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


# ---------------------------------------------------------------- per-worker loop


def train_loop(config: dict[str, Any]) -> None:
    """Runs on every Ray Train worker."""
    import ray.train
    import torch
    from ray.train.torch import get_device, prepare_model

    from sepcore.train.loop import build_for_training, columns_for, decode_batch, run_epoch

    setup_logging()
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    torch.manual_seed(config["seed"] + rank)
    torch.set_num_threads(config["threads"])
    meta, opt_cfg = config["meta"], config["optim"]
    device = get_device()
    saved, state = _resume_point(config["resume_from"])
    # Placed on the device before the optimizer is built and its state loaded (see build_for_training).
    net, optimizer, scheduler, scaler = build_for_training(
        meta["model"], opt_cfg, lambda m: m.to(device), saved,
        scaler_device="cuda" if opt_cfg["amp"] and device.type == "cuda" else None)  # fmt: skip
    model = prepare_model(net, move_to_device=False)
    task = meta["task"]
    columns = columns_for(task)
    pairs = _validation_pairs(config["val_tracks"], meta) if rank == 0 else []

    def batches(split: str, shuffle: bool):
        shard = ray.train.get_dataset_shard(split)
        bs = opt_cfg["batch_size"]
        for b in shard.iter_batches(batch_size=bs, batch_format="numpy",
                                    local_shuffle_buffer_size=bs * 16 if shuffle else None):  # fmt: skip
            yield decode_batch(b, config["shapes"], config["dtype"], columns, device)

    metric = config["validation"]["metric"]
    for epoch in range(state["epoch"], opt_cfg["epochs"]):
        tr = run_epoch(task, model, batches("train", True), optimizer, scaler, opt_cfg["max_steps_per_epoch"])
        va = run_epoch(task, model, batches("validation", False))  # validation.max_steps: the dataset is capped
        metrics = {"epoch": epoch, **_sum_over_workers(tr, va, world), "lr": optimizer.param_groups[0]["lr"]}
        if pairs:
            metrics.update(_sdr(net, pairs, meta, device))
        if scheduler is not None:
            scheduler.step(metrics["val_loss"])
        state = _update_progress(state, metrics, metric)
        stop = _broadcast_flag(state["stale"] >= opt_cfg["early_stopping_patience"], world)
        if rank == 0:  # before the checkpoint: a killed run keeps its history (a resume rewrites it)
            write_history(config["output"], state["history"])
        _report(net, (optimizer, scheduler, scaler), meta, metrics, state, epoch, rank)
        if rank == 0:
            log.info("train epoch %d/%d: %s%s", epoch + 1, opt_cfg["epochs"], _epoch_line(metrics),
                     " (early stop)" if stop else "")  # fmt: skip
        if stop:
            break


def _epoch_line(metrics: dict[str, Any]) -> str:
    parts = [f"{k} {metrics[k]:.4g}" for k in ("train_loss", "val_loss", "val_sdr") if k in metrics]
    return ", ".join(parts) + f", {metrics['samples_per_s']:.1f} samples/s"


def _resume_point(resume_from: str | None) -> tuple[dict[str, Any] | None, dict[str, Any]]:
    """The saved state to restore and the progress to continue from.

    Ray's checkpoint after a worker failure (``max_failures``), else the rerun's
    ``resume_from``, else nothing (a fresh start).
    """
    import ray.train

    state: dict[str, Any] = {"epoch": 0, "history": [], "best": None, "stale": 0}
    found = ray.train.get_checkpoint()
    if found is not None:
        with found.as_directory() as folder:
            meta, saved = ckpt.load_state(folder)
    elif resume_from:
        meta, saved = ckpt.load_state(resume_from)
    else:
        return None, state
    progress = meta.get("progress", {})
    return saved, {"epoch": saved["epoch"] + 1, "history": meta.get("history", []),
                   "best": progress.get("best"), "stale": progress.get("stale", 0)}  # fmt: skip


def _update_progress(state: dict[str, Any], metrics: dict[str, Any], metric: str) -> dict[str, Any]:
    from sepcore.train.selection import is_better

    value = metrics.get(metric, metrics["val_loss"])
    better = is_better(metric, value, state["best"])
    return {"epoch": metrics["epoch"] + 1, "history": [*state["history"], metrics],
            "best": value if better else state["best"], "stale": 0 if better else state["stale"] + 1}  # fmt: skip


def _report(net, trainers: tuple, meta, metrics, state, epoch: int, rank: int) -> None:
    """Report the epoch to Ray Train, with rank 0's checkpoint (weights, optimizer, scheduler, scaler)."""
    import ray.train

    from sepcore.train.loop import training_state

    with tempfile.TemporaryDirectory(prefix="sep-ckpt-") as folder:
        checkpoint = None
        if rank == 0:
            full = {**meta, "metrics": metrics, "history": state["history"],
                    "progress": {"best": state["best"], "stale": state["stale"]}}  # fmt: skip
            ckpt.save(folder, net, full, training_state(*trainers), epoch)
            checkpoint = ray.train.Checkpoint.from_directory(folder)
        ray.train.report(metrics, checkpoint=checkpoint)


def _validation_pairs(tracks: list, meta: dict[str, Any]) -> list:
    from sepcore.prepare.pairs import PrepareSpec, SkipTrack, make_pair

    spec = PrepareSpec(target=meta["target"], sample_rate=meta["sample_rate"], channels=meta["channels"],
                       feature={"name": "stft", "n_fft": meta["feature"]["n_fft"], "hop": meta["feature"]["hop"]},
                       outputs=("target",))  # fmt: skip
    pairs = []
    for track in tracks:
        try:
            pair = make_pair(track, spec)
        except (SkipTrack, SepError) as exc:
            log.warning("validation track %s left out: %s", track.track_id, exc)
            continue
        pairs.append((pair.mix, pair.instrument))
    return pairs


def _sdr(net, pairs, meta, device) -> dict[str, float]:
    from sepcore.train.loop import separation_sdr

    f = meta["feature"]  # separation puts the model back in training mode itself
    return separation_sdr(net, pairs, meta["sample_rate"], f["n_fft"], f["hop"], meta["frames"], device)


def _sum_over_workers(tr: dict[str, float], va: dict[str, float], world: int) -> dict[str, Any]:
    """Epoch figures over all workers: each worker's own counts, summed (all-reduce).

    Losses are sample-weighted means; ``samples_per_s`` is the train samples of all
    workers over the slowest worker's time.
    """
    t = [tr["loss"] * tr["samples"], tr["samples"], va["loss"] * va["samples"], va["samples"]]
    seconds = tr["seconds"]
    if world > 1:
        import torch
        import torch.distributed as dist

        summed = torch.tensor(t, dtype=torch.float64)
        dist.all_reduce(summed)
        slowest = torch.tensor([seconds], dtype=torch.float64)
        dist.all_reduce(slowest, op=dist.ReduceOp.MAX)
        t, seconds = summed.tolist(), float(slowest.item())
    return {"train_loss": t[0] / max(t[1], 1.0), "val_loss": t[2] / max(t[3], 1.0),
            "samples_per_s": t[1] / max(seconds, 1e-9), "train_samples": int(t[1]), "val_samples": int(t[3])}  # fmt: skip


def _broadcast_flag(flag: bool, world: int) -> bool:
    if world == 1:
        return flag
    import torch
    import torch.distributed as dist

    t = torch.tensor([1.0 if flag else 0.0])
    dist.broadcast(t, src=0)
    return bool(t.item())


JOB = Job("train", TrainConfig, run, "Train a separation or activation model with Ray Train.")
main = JOB.main

if __name__ == "__main__":
    sys.exit(main())
