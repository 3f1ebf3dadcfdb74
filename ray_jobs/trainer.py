"""The Ray Train layer shared by train, tune and classify (not a job).

:func:`build_trainer` gives something to ``fit()``: a ``TorchTrainer`` running
:func:`sepcore.train.worker.train_worker` on ``scaling.num_workers`` workers, or for a
one-worker Tune trial :class:`sepcore.train.worker.InProcessTrainer`. See docs/train.md.
"""

from __future__ import annotations

import functools
import logging
import tempfile
import time
from collections.abc import Callable
from typing import Any

from ray_jobs.common import setup_logging
from sepcore.errors import ConfigError
from sepcore.models import checkpoint as ckpt
from sepcore.train import outputs as O
from sepcore.train.ls_init import (
    LSSums,
    layer_report,
    ls_layers,
    rows_sums,
    set_layer,
    solve,
    total,
)
from sepcore.train.outputs import storage_args
from sepcore.train.selection import metric_mode
from sepcore.train.worker import InProcessTrainer, LocalRun, split_batches, train_worker

log = logging.getLogger("sep.train")

#: Hold a run's splits in the object store when they take at most this share of it.
MATERIALIZE_SHARE = 0.25


def shard_dataset(uris: list[str], shuffle: bool, read_cpus: float = 1.0,
                  keep: dict[str, list[int]] | None = None) -> Any:  # fmt: skip
    """The rows of prepared shards (any URI) as a Ray Dataset, one read task of ``read_cpus``
    CPUs per shard, in the manifest's order (``shuffle``: random block order, for training).
    ``keep``: only these rows of each shard (``loader.snippets_per_song``, :func:`~sepcore.train.outputs.snippet_rows`)."""
    import ray

    if not uris:
        raise ConfigError("data", "the train or validation split has no shards (too few tracks?)")
    ds = ray.data.from_items([{"uri": u} for u in uris], override_num_blocks=len(uris))
    if shuffle:
        ds = ds.randomize_block_order()
    read = O.read_shards if keep is None else functools.partial(O.read_kept_rows, keep=keep)
    return ds.map_batches(read, batch_size=1, batch_format="numpy", num_cpus=read_cpus)


def build_datasets(cfg: Any, manifest: dict[str, Any], read_cpus: float = 1.0,
                   materialize: bool = False) -> dict[str, Any]:  # fmt: skip
    """``train`` (random block order) and ``validation`` (in order; capped by ``validation.max_steps``).

    ``materialize``: read here, once, into the object store (data that fits: :func:`fits_in_memory`),
    so epochs and trials reuse the rows instead of reading the shards again.
    """
    import ray

    datasets = {}
    keep, limit = O.kept_rows(cfg, manifest), O.validation_rows(cfg)
    for split in ("train", "validation"):
        train, uris = split == "train", [sh["uri"] for sh in manifest["shards"] if sh["split"] == split]
        if materialize and uris:
            read = O.read_shards if keep is None or not train else functools.partial(O.read_kept_rows, keep=keep)
            ds = ray.data.from_arrow_refs([ray.put(read({"uri": [u]})) for u in uris])
            ds = ds.randomize_block_order() if train else ds
        else:
            ds = shard_dataset(uris, train, read_cpus, keep if train else None)
        if not train and limit is not None:
            ds = ds.limit(limit)
        ds.context.execution_options.preserve_order = not train
        datasets[split] = ds
    return datasets


def ls_sums(ds: Any, model_meta: dict[str, Any], state: dict[str, Any], layer: int, shapes: dict[str, Any],
            dtype: str) -> LSSums:  # fmt: skip
    """The least-squares sums of layer ``layer`` over every row of ``ds`` (prepared rows): each
    block maps to its partial sums (:func:`sepcore.train.ls_init.rows_sums`), added up here as
    they arrive (float64)."""
    sums = ds.map_batches(functools.partial(rows_sums, model_meta=model_meta, state=state, layer=layer,
                                            shapes=shapes, dtype=dtype), batch_size=None, batch_format="numpy")  # fmt: skip
    return total(LSSums.from_rows(b) for b in sums.iter_batches(batch_size=1, batch_format="numpy"))


def ls_initialise(cfg: Any, config: dict[str, Any], manifest: dict[str, Any],
                  read_cpus: float = 1.0) -> tuple[dict[str, Any], dict[str, Any]]:  # fmt: skip
    """The frame DNN's least-squares start (seed 000), layer by layer over the whole training
    split (the rows training sees: ``loader.snippets_per_song`` applies), in the driver.

    Returns the initial ``state_dict`` and its record for the checkpoints' ``meta["init"]``:
    ``method``, ``ridge``, ``frames`` (frames summed), ``seconds`` (the whole pass) and per layer
    whether it started from least squares or at random (:func:`sepcore.train.ls_init.layer_report`).
    """
    import torch

    t0 = time.monotonic()
    torch.manual_seed(cfg.seed)  # the random layers: the same start with every init
    model = ckpt.build(config["meta"]["model"])
    uris = [sh["uri"] for sh in manifest["shards"] if sh["split"] == "train"]
    keep = O.kept_rows(cfg, manifest)
    ds = shard_dataset(uris, False, read_cpus, keep)
    if fits_in_memory(manifest):  # read once for every layer's pass (else each pass reads the shards)
        ds = ds.materialize()
    done, frames = [], 0.0
    for layer in ls_layers(model):
        state = {k: v.detach().clone() for k, v in model.state_dict().items()}
        sums = ls_sums(ds, config["meta"]["model"], state, layer, config["shapes"], config["dtype"])
        set_layer(model, layer, *solve(sums, cfg.model.ls_ridge))
        done.append(layer)
        frames = sums.n
        log.info("train: layer %d initialised by least squares over %d frames", layer, int(sums.n))
    seconds = time.monotonic() - t0
    log.info("train: least-squares initialisation of layers %s took %.1f s", done, seconds)
    record = {"method": "ls", "ridge": cfg.model.ls_ridge, "frames": int(frames), "seconds": round(seconds, 3),
              "layers": layer_report(model, done)}  # fmt: skip
    return {k: v.detach().clone() for k, v in model.state_dict().items()}, record


def initial_weights(uri: str, meta: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """The weights of the checkpoint (or training output's best) at ``uri`` to start a run from
    (``init_from``; unet_gan's stage 2 from stage 1), and their record for ``meta["init"]``.

    The checkpoint must hold the same model with the same sizes, on data of the same feature;
    anything else is a :class:`ConfigError` naming the difference. Its optimiser state is not taken.
    """
    from sepcore.models.checkpoint import CheckpointError

    try:
        folder = ckpt.resolve(uri)
        found, state = ckpt.load_state(folder)
    except CheckpointError as exc:
        raise ConfigError("init_from", str(exc)) from exc
    for key in ("model", "feature", "sample_rate", "channels"):
        if found.get(key) != meta.get(key):
            raise ConfigError("init_from", f"{folder} holds another {key} ({found.get(key)}) than this run's "
                              f"({meta.get(key)})")  # fmt: skip
    log.info("train: weights start from %s (epoch %d, stage %s)", folder, found.get("epoch", -1), found.get("stage", 1))
    record = {"method": "init_from", "from": folder, "epoch": found.get("epoch"), "stage": found.get("stage"),
              "metrics": found.get("metrics", {})}  # fmt: skip
    return state["state_dict"], record


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
    """The loop's view of a Ray Train worker (:class:`sepcore.train.worker.Session`)."""

    def __init__(self) -> None:
        import ray.train
        from ray.train.torch import get_device

        ctx = ray.train.get_context()
        self.rank, self.world, self.device = ctx.get_world_rank(), ctx.get_world_size(), get_device()

    def wrap(self, net: Any) -> Any:
        from ray.train.torch import prepare_model

        return prepare_model(net, move_to_device=False)

    def batches(self, split: str, batch_size: int, shuffle: bool) -> Any:
        import ray.train

        return split_batches(ray.train.get_dataset_shard(split), batch_size, shuffle)

    def restored(self) -> Any:
        import ray.train

        found = ray.train.get_checkpoint()
        if found is None:
            return None
        with found.as_directory() as folder:
            return ckpt.load_state(folder)

    def report(self, metrics: dict[str, Any], save: Callable[[str], None] | None) -> None:
        import ray.train

        with tempfile.TemporaryDirectory(prefix="sep-ckpt-") as folder:
            if save is not None:
                save(folder)
            ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(folder) if save else None)


def train_loop(config: dict[str, Any]) -> None:
    """Runs on every Ray Train worker."""
    setup_logging()
    train_worker(config, _Session())


def run_config(cfg: Any, output: str, callbacks: list[Any]) -> Any:
    """Ray Train's run settings of a training run into ``output``: its storage, failures recovered
    and the ``keep_checkpoints`` best by the validation metric."""
    import ray.train

    metric = cfg.validation.metric
    return ray.train.RunConfig(
        name=f"run-{int(time.time())}", **storage_args(output), callbacks=callbacks,
        failure_config=ray.train.FailureConfig(max_failures=cfg.max_failures),
        checkpoint_config=ray.train.CheckpointConfig(num_to_keep=cfg.keep_checkpoints, checkpoint_score_attribute=metric,
                                                     checkpoint_score_order=metric_mode(metric)),
    )  # fmt: skip


def composer_loop(config: dict[str, Any]) -> None:
    """Runs on every Ray Train worker of a composer run."""
    from sepcore.compose.train import composer_worker

    setup_logging()
    composer_worker(config, _Session())


def build_composer_trainer(cfg: Any) -> Any:
    """The TorchTrainer of a composer run (``model.name: composer``): its note sequences are
    read here and travel in the loop's config (no datasets)."""
    import ray.train
    from ray.train.torch import TorchTrainer

    from sepcore.compose.train import worker_config

    config = worker_config(cfg)
    s = cfg.scaling
    return TorchTrainer(
        composer_loop, train_loop_config=config,
        scaling_config=ray.train.ScalingConfig(num_workers=s.num_workers, use_gpu=s.use_gpu,
                                               resources_per_worker=s.worker_resources()),
        run_config=run_config(cfg, config["output"], []),
    )  # fmt: skip


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
    if getattr(cfg, "styles", None):  # a per-style model: the tracks of those styles only
        manifest = O.keep_styles(manifest, cfg.styles)
    config = O.worker_config(cfg, manifest)
    if config.get("gan") and config["meta"].get("stems"):
        raise ConfigError("stage", "stage 2 trains a one-target generator (the drums): this data has several "
                          "stems; prepare it with target: drums")  # fmt: skip
    if config["cache"] and datasets is None:  # each worker reads its share of the shards itself: no Ray Data
        config["shares"], datasets = O.split_shares(cfg, manifest), {}
    datasets = datasets if datasets is not None else build_datasets(cfg, manifest, read_cpus)
    init_from = getattr(cfg, "init_from", None)  # another run's weights (train's init_from; tune has none)
    if cfg.model.name == "frame_dnn" and not init_from:  # how the weights start: least squares (seed 000) or at random
        if config["resume_from"] is not None:  # a resumed run keeps its weights and its record of their start
            config["meta"]["init"] = ckpt.read_meta(config["resume_from"]).get("init")
        elif cfg.model.init == "ls":
            config["initial_state"], config["meta"]["init"] = ls_initialise(cfg, config, manifest, read_cpus)
        else:
            config["meta"]["init"] = {"method": "random", "layers": layer_report(ckpt.build(config["meta"]["model"]), [])}
    if init_from:
        if config["resume_from"] is not None:  # a resumed run keeps its weights and its record of their start
            config["meta"]["init"] = ckpt.read_meta(config["resume_from"]).get("init")
        else:
            config["initial_state"], config["meta"]["init"] = initial_weights(init_from, config["meta"])
    s, metric, output = cfg.scaling, cfg.validation.metric, config["output"]
    if in_trial and s.num_workers == 1:
        return InProcessTrainer(config, datasets, LocalRun(output, cfg.keep_checkpoints, metric, _tune_report),
                                s.use_gpu)  # fmt: skip
    return TorchTrainer(
        train_loop, train_loop_config=config, datasets=datasets or None, dataset_config=data_config() if datasets else None,
        scaling_config=ray.train.ScalingConfig(num_workers=s.num_workers, use_gpu=s.use_gpu,
                                               resources_per_worker=s.worker_resources()),
        run_config=run_config(cfg, output, [_tune_callback()] if in_trial else []),
    )  # fmt: skip
