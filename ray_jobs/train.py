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
import math
import sys
import tempfile
import time
from typing import Any, Literal

from pydantic import Field, model_validator

from ray_jobs.common import Job, JobConfig
from sepcore import checkpoint as ckpt
from sepcore import storage
from sepcore.config import Config
from sepcore.errors import ConfigError, SepError

log = logging.getLogger("sep.train")

METRICS_FILE = "metrics.jsonl"
CURVE_FILE = "loss_curve.png"


class ModelConfig(Config):
    name: Literal["hourglass", "blstm", "activation_cnn"] = Field("hourglass", description="registered model")
    config: dict[str, Any] = Field(
        default_factory=dict,
        description="constructor arguments; sizes of the data (bins, channels, classes, frames) are filled in",
    )
    log_input: bool = Field(True, description="feed log1p(magnitude) to separators")


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
        None, ge=1, description="cap the batches of the validation loss (per worker; the same ones each epoch)"
    )


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

    @model_validator(mode="after")
    def _check(self) -> TrainConfig:
        from sepcore.training import TASK_OF_MODEL

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
    from sepcore.training import TASK_OF_MODEL

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
    from sepcore.training import TASK_OF_MODEL

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
    }


def _parquet_dataset(uris: list[str]):
    import ray

    if not uris:
        raise ConfigError("data", "the train or validation split has no shards (too few tracks?)")
    if storage.is_local(uris[0]):
        return ray.data.read_parquet([storage.local_path(u) for u in uris], shuffle="files")
    import pyarrow.fs as pafs

    fs, _ = storage.filesystem(uris[0])
    return ray.data.read_parquet([u[len("s3://"):] for u in uris], shuffle="files",
                                 filesystem=pafs.PyFileSystem(pafs.FSSpecHandler(fs)))  # fmt: skip


def validation_tracks(manifest: dict[str, Any], count: int) -> list:
    """The first ``count`` validation tracks as SourceTrack records."""
    if count <= 0 or manifest["target"] == "random_mix":
        return []
    from sepcore.sources import list_sources

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


def run(cfg: TrainConfig) -> dict[str, Any]:
    import ray.train
    from ray.train.torch import TorchTrainer

    output = storage.normalize_uri(cfg.output)
    manifest = read_manifest(cfg.data)
    mmeta = model_meta(cfg, manifest)
    meta = inference_meta(cfg, manifest, mmeta)
    splits = {s: [sh["uri"] for sh in manifest["shards"] if sh["split"] == s] for s in ("train", "validation")}
    datasets = {name: _parquet_dataset(uris) for name, uris in splits.items()}
    latest = ckpt.find_latest(storage.join(output, "runs"))
    if latest:
        log.info("train: resuming from %s (epoch %d)", latest, ckpt.read_meta(latest)["epoch"])
    task_is_separator = meta["task"] == "separator"
    loop_config = {
        "meta": meta, "optim": cfg.optim.model_dump(), "validation": cfg.validation.model_dump(),
        "shapes": manifest["shapes"], "dtype": manifest["dtype"], "seed": cfg.seed,
        "threads": cfg.scaling.threads or max(1, round(cfg.scaling.cpus_per_worker)), "output": output,
        "val_tracks": validation_tracks(manifest, cfg.validation.sdr_tracks) if task_is_separator else [],
        "resume_from": latest,
    }  # fmt: skip
    s = cfg.scaling
    resources = {"CPU": s.cpus_per_worker, **({"GPU": s.gpus_per_worker} if s.use_gpu else {})}
    metric = cfg.validation.metric
    trainer = TorchTrainer(
        train_loop, train_loop_config=loop_config, datasets=datasets,
        dataset_config=ray.train.DataConfig(datasets_to_split=["train", "validation"]),
        scaling_config=ray.train.ScalingConfig(num_workers=s.num_workers, use_gpu=s.use_gpu,
                                               resources_per_worker=resources),
        run_config=ray.train.RunConfig(
            name=f"run-{int(time.time())}", **storage_args(output),
            failure_config=ray.train.FailureConfig(max_failures=cfg.max_failures),
            checkpoint_config=ray.train.CheckpointConfig(
                num_to_keep=cfg.keep_checkpoints, checkpoint_score_attribute=metric,
                checkpoint_score_order="max" if metric == "val_sdr" else "min"),
        ),
    )  # fmt: skip
    try:
        trainer.fit()
    except ray.train.TrainingFailedError as exc:
        raise SepError(f"{output}: training failed after {cfg.max_failures} recoveries: {exc}") from exc
    return finish(output, metric)


def finish(output: str, metric: str) -> dict[str, Any]:
    """Copy the best complete checkpoint to ``best/``, write metrics and the loss curve."""
    complete = ckpt.complete_checkpoints(storage.join(output, "runs"))
    if not complete:
        raise SepError(f"{output}: training wrote no complete checkpoint")
    sign = -1.0 if metric == "val_sdr" else 1.0

    def score(item: tuple[str, dict]) -> float:
        value = item[1]["metrics"].get(metric)
        return sign * value if value is not None and math.isfinite(value) else math.inf

    best_dir, best_meta = min(complete, key=score)
    latest_meta = max(complete, key=lambda item: item[1]["epoch"])[1]
    for name in (ckpt.MODEL_FILE, ckpt.META_FILE):  # meta last: best/ is complete or absent
        storage.write_bytes(storage.join(output, ckpt.BEST, name), storage.read_bytes(storage.join(best_dir, name)))
    history = latest_meta["history"]
    storage.write_text(storage.join(output, METRICS_FILE), "".join(json.dumps(h) + "\n" for h in history))
    storage.write_bytes(storage.join(output, CURVE_FILE), loss_curve_png(history))
    last = history[-1]
    figures = {k: round(v, 4) for k, v in last.items() if isinstance(v, float)}
    return {
        "counts": {"epochs": len(history), "checkpoints": len(complete)},
        "figures": {**figures, "best_epoch": best_meta["epoch"], f"best_{metric}": best_meta["metrics"].get(metric)},
        "best_checkpoint": storage.join(output, ckpt.BEST),
        "failed": [],
    }


def read_history(output: str) -> list[dict[str, Any]]:
    """The per-epoch metrics of a training output (``metrics.jsonl``); [] before it is written."""
    uri = storage.join(storage.normalize_uri(output), METRICS_FILE)
    if not storage.exists(uri):
        return []
    return [json.loads(line) for line in storage.read_text(uri).splitlines() if line.strip()]


def loss_curve_png(history: list[dict[str, Any]]) -> bytes:
    import io

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    epochs = [h["epoch"] for h in history]
    has_sdr = any("val_sdr" in h for h in history)
    fig, axes = plt.subplots(1, 2 if has_sdr else 1, figsize=(10 if has_sdr else 5.5, 3.8), squeeze=False)
    ax = axes[0][0]
    ax.plot(epochs, [h["train_loss"] for h in history], marker="o", label="train")
    ax.plot(epochs, [h["val_loss"] for h in history], marker="o", label="validation")
    ax.set_xlabel("epoch")
    ax.set_ylabel("loss")
    ax.set_title("loss")
    ax.legend()
    if has_sdr:
        ax = axes[0][1]
        ax.plot(epochs, [h.get("val_sdr") for h in history], marker="o", label="model")
        ax.plot(epochs, [h.get("val_sdr_mixture") for h in history], linestyle="--", label="mixture as estimate")
        ax.set_xlabel("epoch")
        ax.set_ylabel("median SDR (dB)")
        ax.set_title("validation SDR of the target")
        ax.legend()
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    plt.close(fig)
    return buf.getvalue()


# ---------------------------------------------------------------- per-worker loop


def train_loop(config: dict[str, Any]) -> None:
    """Runs on every Ray Train worker."""
    import ray.train
    import torch
    from ray.train.torch import get_device, prepare_model

    from sepcore.training import columns_for, decode_batch, run_epoch

    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    torch.manual_seed(config["seed"] + rank)
    torch.set_num_threads(config["threads"])
    meta, opt_cfg = config["meta"], config["optim"]
    device = get_device()
    net = ckpt.build(meta["model"])
    optimizer = torch.optim.Adam(net.parameters(), lr=opt_cfg["lr"], weight_decay=opt_cfg["weight_decay"])
    scheduler = None
    if opt_cfg["scheduler"] == "plateau":
        scheduler = torch.optim.lr_scheduler.ReduceLROnPlateau(
            optimizer, factor=opt_cfg["plateau_factor"], patience=opt_cfg["plateau_patience"],
            min_lr=opt_cfg["min_lr"])  # fmt: skip
    state = _restore(net, optimizer, scheduler, config["resume_from"])
    model = prepare_model(net)
    scaler = torch.amp.GradScaler("cuda") if opt_cfg["amp"] and device.type == "cuda" else None
    task = meta["task"]
    columns = columns_for(task)
    pairs = _validation_pairs(config["val_tracks"], meta) if rank == 0 else []

    def batches(split: str, shuffle: bool):
        shard = ray.train.get_dataset_shard(split)
        bs = opt_cfg["batch_size"]
        for b in shard.iter_batches(batch_size=bs, batch_format="numpy",
                                    local_shuffle_buffer_size=bs * 16 if shuffle else None):  # fmt: skip
            yield decode_batch(b, config["shapes"], config["dtype"], columns, device)

    for epoch in range(state["epoch"], opt_cfg["epochs"]):
        tr = run_epoch(task, model, batches("train", True), optimizer, scaler, opt_cfg["max_steps_per_epoch"])
        va = run_epoch(task, model, batches("validation", False), max_steps=config["validation"]["max_steps"])
        metrics = {
            "epoch": epoch, "train_loss": _mean_over_workers(tr, world),
            "val_loss": _mean_over_workers(va, world), "lr": optimizer.param_groups[0]["lr"],
            "samples_per_s": tr["samples"] * world / max(tr["seconds"], 1e-9),
            "val_samples": va["samples"] * world,
        }  # fmt: skip
        if pairs:
            metrics.update(_sdr(net, pairs, meta, device))
        if scheduler is not None:
            scheduler.step(metrics["val_loss"])
        state = _update_progress(state, metrics, config["validation"]["metric"])
        stop = _broadcast_flag(state["stale"] >= opt_cfg["early_stopping_patience"], world)
        _report(net, optimizer, scheduler, meta, metrics, state, epoch, rank)
        if stop:
            break


def _restore(net, optimizer, scheduler, resume_from: str | None) -> dict[str, Any]:
    """Load the latest state: Ray's (after a worker failure) or the rerun's ``resume_from``."""
    import ray.train

    state: dict[str, Any] = {"epoch": 0, "history": [], "best": None, "stale": 0}
    found = ray.train.get_checkpoint()
    if found is not None:
        with found.as_directory() as folder:
            meta, saved = ckpt.load_state(folder)
    elif resume_from:
        meta, saved = ckpt.load_state(resume_from)
    else:
        return state
    net.load_state_dict(saved["state_dict"])
    opt = saved.get("optimizer") or {}
    if opt.get("optimizer"):
        optimizer.load_state_dict(opt["optimizer"])
    if scheduler is not None and opt.get("scheduler"):
        scheduler.load_state_dict(opt["scheduler"])
    progress = meta.get("progress", {})
    return {"epoch": saved["epoch"] + 1, "history": meta.get("history", []),
            "best": progress.get("best"), "stale": progress.get("stale", 0)}  # fmt: skip


def _update_progress(state: dict[str, Any], metrics: dict[str, Any], metric: str) -> dict[str, Any]:
    value = metrics.get(metric, metrics["val_loss"])
    better = state["best"] is None or (value > state["best"] if metric == "val_sdr" else value < state["best"])
    return {"epoch": metrics["epoch"] + 1, "history": [*state["history"], metrics],
            "best": value if better else state["best"], "stale": 0 if better else state["stale"] + 1}  # fmt: skip


def _report(net, optimizer, scheduler, meta, metrics, state, epoch: int, rank: int) -> None:
    import ray.train

    with tempfile.TemporaryDirectory(prefix="sep-ckpt-") as folder:
        checkpoint = None
        if rank == 0:
            full = {**meta, "metrics": metrics, "history": state["history"],
                    "progress": {"best": state["best"], "stale": state["stale"]}}  # fmt: skip
            opt_state = {"optimizer": optimizer.state_dict(),
                         "scheduler": scheduler.state_dict() if scheduler is not None else None}  # fmt: skip
            ckpt.save(folder, net, full, opt_state, epoch)
            checkpoint = ray.train.Checkpoint.from_directory(folder)
        ray.train.report(metrics, checkpoint=checkpoint)


def _validation_pairs(tracks: list, meta: dict[str, Any]) -> list:
    from sepcore.prepare import PrepareSpec, SkipTrack, make_pair

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
    from sepcore.training import separation_sdr

    f = meta["feature"]  # separation puts the model back in training mode itself
    return separation_sdr(net, pairs, meta["sample_rate"], f["n_fft"], f["hop"], meta["frames"], device)


def _mean_over_workers(stats: dict[str, float], world: int) -> float:
    if world == 1:
        return stats["loss"]
    import torch
    import torch.distributed as dist

    t = torch.tensor([stats["loss"] * stats["samples"], stats["samples"]], dtype=torch.float64)
    dist.all_reduce(t)
    return float(t[0] / max(t[1], 1.0))


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
