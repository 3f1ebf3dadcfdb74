"""The Ray Train layer shared by train, tune and classify (not a job).

:func:`build_trainer` turns a train configuration into something to ``fit()``: a
``TorchTrainer`` running :func:`sepcore.train.worker.train_worker` on
``scaling.num_workers`` workers (DDP; gloo on CPUs, NCCL on GPUs), each streaming its
shard of the prepared rows; or, for a one-worker Tune trial, the same loop in the
trial's own process (no Train controller, worker actors or dataset coordinator to
start). Checkpoints go to ``<output>/runs/<run>/``; :func:`storage_args` says where.
"""

from __future__ import annotations

import tempfile
import time
from collections.abc import Callable
from typing import Any

from ray_jobs.common import setup_logging
from sepcore.errors import ConfigError
from sepcore.io import storage
from sepcore.models import checkpoint as ckpt
from sepcore.train import outputs as O
from sepcore.train.selection import metric_mode
from sepcore.train.worker import LocalRun, train_worker

#: Hold a run's splits in the object store when they take at most this share of it.
MATERIALIZE_SHARE = 0.25


def storage_args(output: str) -> dict[str, Any]:
    """RunConfig storage arguments for ``<output>/runs`` (S3 through our fsspec filesystem)."""
    runs = storage.join(output, O.RUNS)
    if storage.is_local(runs):
        return {"storage_path": storage.local_path(runs)}
    import pyarrow.fs as pafs

    fs, path = storage.filesystem(runs)
    return {"storage_path": path, "storage_filesystem": pafs.PyFileSystem(pafs.FSSpecHandler(fs))}


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


def build_datasets(cfg: Any, manifest: dict[str, Any], read_cpus: float = 1.0,
                   materialize: bool = False) -> dict[str, Any]:  # fmt: skip
    """``train`` (random block order) and ``validation`` (in order; capped by ``validation.max_steps``).

    ``materialize``: read here, once, into the object store (data that fits: :func:`fits_in_memory`),
    so epochs and trials reuse the rows instead of reading the shards again.
    """
    import ray

    datasets = {}
    for split in ("train", "validation"):
        train, uris = split == "train", [sh["uri"] for sh in manifest["shards"] if sh["split"] == split]
        if materialize and uris:
            ds = ray.data.from_arrow_refs([ray.put(_read_shards({"uri": [u]})) for u in uris])
            ds = ds.randomize_block_order() if train else ds
        else:
            ds = shard_dataset(uris, train, read_cpus)
        if not train and cfg.validation.max_steps is not None:
            ds = ds.limit(cfg.validation.max_steps * cfg.optim.batch_size * cfg.scaling.num_workers)
        ds.context.execution_options.preserve_order = not train
        datasets[split] = ds
    return datasets


def fits_in_memory(manifest: dict[str, Any], others: int = 0) -> bool:
    """Whether the splits of ``manifest`` (after ``others`` bytes held already) fit :data:`MATERIALIZE_SHARE`."""
    import ray

    store = ray.cluster_resources().get("object_store_memory", 0.0)
    return others + O.split_bytes(manifest) <= MATERIALIZE_SHARE * store


def data_config() -> Any:
    """Both splits are sharded over the workers; validation is read in order (a fixed subset when capped)."""
    import copy

    import ray.data
    import ray.train

    options = {}
    for split in ("train", "validation"):
        options[split] = copy.deepcopy(ray.data.DataContext.get_current().execution_options)
        options[split].preserve_order = split == "validation"
    return ray.train.DataConfig(datasets_to_split=["train", "validation"], execution_options=options)


class _Session:
    """The loop's view of its process (:class:`sepcore.train.worker.Session`): a Ray Train
    worker, or with ``run`` the calling process as the only worker of a run."""

    def __init__(self, run: LocalRun | None = None, datasets: dict[str, Any] | None = None, gpu: bool = False):
        import torch

        self.run, self.datasets = run, datasets or {}
        if run is None:
            import ray.train
            from ray.train.torch import get_device

            ctx = ray.train.get_context()
            self.rank, self.world, self.device = ctx.get_world_rank(), ctx.get_world_size(), get_device()
        else:
            self.rank, self.world = 0, 1
            self.device = torch.device("cuda" if gpu and torch.cuda.is_available() else "cpu")

    def wrap(self, net: Any) -> Any:
        from ray.train.torch import prepare_model

        return net if self.run else prepare_model(net, move_to_device=False)

    def batches(self, split: str, batch_size: int, shuffle: bool) -> Any:
        import ray.train

        data = self.datasets[split] if self.run else ray.train.get_dataset_shard(split)
        return data.iter_batches(batch_size=batch_size, batch_format="numpy",
                                 local_shuffle_buffer_size=batch_size * 16 if shuffle else None)  # fmt: skip

    def restored(self) -> Any:
        import ray.train

        found = None if self.run else ray.train.get_checkpoint()
        if found is None:
            return None
        with found.as_directory() as folder:
            return ckpt.load_state(folder)

    def report(self, metrics: dict[str, Any], save: Callable[[str], None] | None) -> None:
        import ray.train

        if self.run is not None:
            return self.run.report(metrics, save)
        with tempfile.TemporaryDirectory(prefix="sep-ckpt-") as folder:
            if save is not None:
                save(folder)
            ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(folder) if save else None)


def train_loop(config: dict[str, Any]) -> None:
    """Runs on every Ray Train worker."""
    setup_logging()
    train_worker(config, _Session())


class InProcessTrainer:
    """One worker's training in the calling process (``fit()``, like a TorchTrainer's)."""

    def __init__(self, config: dict[str, Any], datasets: dict[str, Any], run: LocalRun, gpu: bool):
        self.config, self.datasets, self.run, self.gpu = config, datasets, run, gpu

    def fit(self) -> None:
        train_worker(self.config, _Session(self.run, self.datasets, self.gpu))


def _tune_report(metrics: dict[str, Any]) -> None:
    """An epoch's metrics to Tune, with ``epochs`` (epochs done): ASHA's time axis."""
    import ray.tune

    ray.tune.report({**metrics, "epochs": metrics["epoch"] + 1})


def _tune_callback() -> Any:
    """:func:`_tune_report` for a TorchTrainer in a Tune trial (Ray's TuneReportCallback)."""
    from ray.tune.integration.ray_train import TuneReportCallback

    class EpochReport(TuneReportCallback):
        def after_report(self, run_context, metrics, checkpoint):  # type: ignore[no-untyped-def]
            first = {**metrics[0], "epochs": metrics[0]["epoch"] + 1}
            super().after_report(run_context, [first, *metrics[1:]], checkpoint)

    return EpochReport()


def build_trainer(cfg: Any, read_cpus: float = 1.0, datasets: dict[str, Any] | None = None,
                  in_trial: bool = False) -> Any:  # fmt: skip
    """The trainer of ``cfg``, a ``ray_jobs.train.TrainConfig`` (train and tune): datasets,
    loop config, resume point.

    ``datasets``: the splits built already (:func:`build_datasets`). ``in_trial``: in a Tune
    trial, every epoch is reported to Tune, and with one worker the loop runs in this
    process. A run already in the output is continued only with the same settings.
    """
    import ray.train
    from ray.train.torch import TorchTrainer

    manifest = O.read_manifest(cfg.data)
    config = O.worker_config(cfg, manifest)
    datasets = datasets or build_datasets(cfg, manifest, read_cpus)
    s, metric, output = cfg.scaling, cfg.validation.metric, config["output"]
    if in_trial and s.num_workers == 1:
        return InProcessTrainer(config, datasets, LocalRun(output, cfg.keep_checkpoints, metric, _tune_report),
                                s.use_gpu)  # fmt: skip
    resources = {"CPU": s.cpus_per_worker, **({"GPU": s.gpus_per_worker} if s.use_gpu else {})}
    return TorchTrainer(
        train_loop, train_loop_config=config, datasets=datasets, dataset_config=data_config(),
        scaling_config=ray.train.ScalingConfig(num_workers=s.num_workers, use_gpu=s.use_gpu,
                                               resources_per_worker=resources),
        run_config=ray.train.RunConfig(
            name=f"run-{int(time.time())}", **storage_args(output), callbacks=[_tune_callback()] if in_trial else [],
            failure_config=ray.train.FailureConfig(max_failures=cfg.max_failures),
            checkpoint_config=ray.train.CheckpointConfig(
                num_to_keep=cfg.keep_checkpoints, checkpoint_score_attribute=metric,
                checkpoint_score_order=metric_mode(metric)),
        ),
    )  # fmt: skip
