"""classify: LightGBM instrument presence on 1-second snippets of the mix (seed 000), on Ray.

    sep classify -c configs/classify_demo.yaml
    sep classify -c configs/classify_demo.yaml activation_checkpoint=out/demo/train_activation
    sep classify -c configs/classify_style_band.yaml     # labels: style, one multi-class model

See docs/classify.md. Feature actors on Ray Data (:class:`SnippetActor`), Ray Train's
``LightGBMTrainer`` (:func:`train_loop`), a predictor actor; the rest is :mod:`sepcore.classify`.
"""

from __future__ import annotations

import contextlib
import logging
import pickle
import sys
import tempfile
import time
from typing import Any

import numpy as np

from ray_jobs import common
from ray_jobs.common import Job, JobConfig
from sepcore import batch
from sepcore.classify import config as C
from sepcore.classify import job as J
from sepcore.classify import lgbm
from sepcore.classify import report as CR
from sepcore.classify.classifier import BatchScorer, StyleScorer
from sepcore.classify.snippets import split_tracks
from sepcore.classify.style import check_styles, track_style
from sepcore.classify.track import snippet_folder, write_style_track, write_track
from sepcore.data.sources import SourceTrack
from sepcore.errors import SepError
from sepcore.io import storage
from sepcore.io.ledger import Ledger
from sepcore.models import checkpoint as ckpt
from sepcore.train.outputs import storage_args

log = logging.getLogger("sep.classify")


class ClassifyConfig(J.ClassifyKeys, JobConfig):
    """The job's keys (:class:`sepcore.classify.job.ClassifyKeys`), after the common ones."""


# ---------------------------------------------------------------- feature actors


class SnippetActor:
    """Feature actor: one track row -> its snippet file and done-record, and one result row."""

    def __init__(self, spec: C.SnippetSpec, folder: str, cnn_dir: str | None, pool: str, limit_s: float, timeouts: str):
        import torch

        torch.set_num_threads(1)
        self.spec, self.ledger, self.pool = spec, Ledger(folder), pool
        self.cnn = ckpt.load_model(cnn_dir) if cnn_dir else None
        self.watchdog = batch.ItemWatchdog(limit_s, "item_timeout_s", timeouts)

    def __call__(self, row: dict[str, Any]) -> dict[str, Any]:
        track: SourceTrack = pickle.loads(row["track"])
        timed_out = self.watchdog.recorded(track.track_id)  # set: Ray's retry after the time limit ended the actor
        res = batch.guarded(track.uri, self._track, track) if timed_out is None else {"error": timed_out}
        return J.actor_row(track.track_id, res)

    def _track(self, track: SourceTrack) -> dict[str, Any]:
        with self.watchdog.running(track.track_id):
            if self.spec.labels.style:
                record = write_style_track(track, self.spec, self.ledger.folder, str(track_style(track)))
            else:
                record = write_track(track, self.spec, self.ledger.folder, self.cnn, self.pool)
        self.ledger.put(track.track_id, record)
        return record


def _featurize(cfg: ClassifyConfig, spec: C.SnippetSpec, tracks: list[SourceTrack], folder: str, cnn_dir: str | None,
               done_before: int) -> list[dict[str, str]]:  # fmt: skip
    """Run the feature actors over ``tracks``; returns the failed ones (a rerun retries them)."""
    import ray

    errors: list[dict[str, str]] = []
    progress = batch.Progress("classify", len(tracks), done_before, unit="track")
    if tracks:
        output = storage.normalize_uri(cfg.output)
        args = (spec, folder, cnn_dir, cfg.activation_pool, cfg.item_timeout_s, batch.timeout_ledger(output))
        ds = ray.data.from_items([{"track": pickle.dumps(t)} for t in tracks], override_num_blocks=len(tracks))
        ds = ds.map(SnippetActor, fn_constructor_args=args, num_cpus=cfg.actors.cpus,
                    compute=ray.data.ActorPoolStrategy(min_size=1, max_size=cfg.actors.feature))  # fmt: skip
        for row in ds.iter_rows():
            failed = row["status"] == "error"
            progress.update(row["track_id"], J.row_note(row), failed)
            if failed:
                errors.append({"item": row["track_id"], "error": row["reason"]})
        batch.clear_timeouts(output)
    progress.close()
    return errors


# ---------------------------------------------------------------- training (Ray Train)


def train_loop(config: dict[str, Any]) -> None:
    """Runs on every LightGBMTrainer worker: one booster per class, rank 0 reports them."""
    import ray.train
    from ray.train.lightgbm import get_network_params

    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    names, classes = config["features"], config["classes"]

    stack, fit = (lgbm.stack_style_rows, lgbm.fit_styles) if config["style"] else (lgbm.stack_rows, lgbm.fit_classes)

    def shard(name: str) -> tuple[np.ndarray, np.ndarray]:
        batches = ray.train.get_dataset_shard(name).iter_batches(batch_size=4096, batch_format="numpy")
        return stack(batches, names, classes)

    (x, y), (xv, yv) = shard("train"), shard("validation")  # the whole validation split on every worker
    network = get_network_params() if world > 1 else None
    with lgbm.lgb_network(**network) if network else contextlib.nullcontext({}) as parallel:
        info = fit(x, y, xv, yv, {**config["params"], **parallel}, config, rank, world)
    metrics = {"classes": len(info["classes"])}
    with tempfile.TemporaryDirectory() as folder:
        if rank == 0:
            lgbm.save_models(info, folder)
        ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(folder) if rank == 0 else None)


def _train(cfg: ClassifyConfig, datasets: dict[str, Any], names: list[str], classes: list[str],
           output: str, models: list[str] | None = None) -> tuple[dict[str, str], dict[str, Any]]:  # fmt: skip
    """LightGBMTrainer over ``classes``; returns (model text per class, or per ``models``, training info)."""
    import ray.train
    from ray.train.lightgbm import LightGBMTrainer

    trainer = LightGBMTrainer(
        train_loop, train_loop_config=cfg.loop_config(names, classes), datasets=datasets,
        dataset_config=ray.train.DataConfig(datasets_to_split=["train"]),
        scaling_config=ray.train.ScalingConfig(**cfg.scaling.scaling_args()),
        # LightGBM's network binds the ports Ray found free a moment before; another process can take
        # one first ("Binding port N failed", seen once in CI): the workers then start again, on new ports.
        run_config=ray.train.RunConfig(name=f"run-{int(time.time())}", **storage_args(output),
                                       failure_config=ray.train.FailureConfig(max_failures=1)),
    )  # fmt: skip
    try:
        result = trainer.fit()
    except ray.train.TrainingFailedError as exc:
        raise SepError(f"{output}: LightGBM training failed: {exc}") from exc
    if result.checkpoint is None:
        raise SepError(f"{output}: LightGBM training reported no models")
    with result.checkpoint.as_directory() as folder:
        return lgbm.load_models(folder, models or classes)


# ---------------------------------------------------------------- driver


def run(cfg: ClassifyConfig) -> dict[str, Any]:
    output, spec = storage.normalize_uri(cfg.output), cfg.spec()
    cnn_dir = ckpt.resolve(cfg.activation_checkpoint) if cfg.activation_checkpoint else None
    folder = snippet_folder(output, spec, cnn_dir, cfg.activation_pool)
    tracks, splits, listing_errors = split_tracks(cfg.data, cfg.split.model_dump(), cfg.seed)
    styles, left_out = _styles(cfg, tracks) if cfg.labels.style else ([], {})
    tracks = [t for t in tracks if t.track_id not in left_out]
    pending = Ledger(folder).pending([t.track_id for t in tracks])
    log.info("classify: %d tracks, %d done before, %d to featurize -> %s", len(tracks),
             len(tracks) - len(pending), len(pending), folder)  # fmt: skip
    todo = [t for t in tracks if t.track_id in set(pending)]
    failed = _featurize(cfg, spec, todo, folder, cnn_dir, len(tracks) - len(pending)) + listing_errors
    records = {t: m for t, m in Ledger(folder).records().items() if t in splits and t not in left_out}
    counts, skipped = J.track_counts(records, len(tracks), len(pending), failed)
    skipped.update(left_out)
    counts["skipped"] = len(skipped)
    judged = batch.verdict(len(failed), len(tracks), cfg.max_failed_fraction, "tracks")
    if judged:
        return {"counts": counts, "failed": failed, "skipped": skipped, **judged}
    usable = J.usable_by_split(records, splits)
    if cfg.labels.style:
        result = train_and_report_styles(cfg, spec, output, usable, styles, left_out)
    else:
        result = train_and_report(cfg, spec, output, usable, cnn_dir)
    return J.run_summary(counts, result, usable, failed, skipped, folder)


def _styles(cfg: ClassifyConfig, tracks: list[SourceTrack]) -> tuple[list[str], dict[str, str]]:
    """Style mode: the model's styles and the tracks left out (no ``style`` in metadata.yaml), with a warning."""
    found = {t.track_id: track_style(t) for t in tracks}
    left_out = {t: "no style in metadata.yaml" for t, s in found.items() if s is None}
    if left_out:
        log.warning("classify: %d track(s) without a style in metadata.yaml left out: %s", len(left_out),
                    ", ".join(sorted(left_out)))  # fmt: skip
    styles = check_styles({t: s for t, s in found.items() if s is not None}, cfg.classes)
    return styles, left_out


def train_and_report(cfg: ClassifyConfig, spec: C.SnippetSpec, output: str,
                     usable: dict[str, list[dict[str, Any]]], cnn_dir: str | None) -> dict[str, Any]:  # fmt: skip
    """Train on the snippet files of each split, score validation and test, write every output."""
    import ray

    sizes = CR.split_sizes(usable, cfg.presence_classes)
    trainable, untrained = CR.trainable_classes(sizes, cfg.presence_classes, output)
    names = spec.feature_names()
    datasets = {s: common.parquet_dataset([m["shard"] for m in usable[s]]) for s in ("train", "validation")}
    texts, info = _train(cfg, datasets, names, trainable, output)
    shards = [m["shard"] for s in ("validation", "test") for m in usable[s]]
    scored = common.parquet_dataset(shards).map_batches(
        BatchScorer, fn_constructor_args=(texts, names), batch_size=2048, batch_format="numpy",
        compute=ray.data.ActorPoolStrategy(size=1), num_cpus=1).to_pandas()  # fmt: skip
    cnn = {"checkpoint": cnn_dir, "pool": cfg.activation_pool} if cnn_dir else None
    return CR.finish(output, spec, usable, trainable, untrained, texts, info, scored, cnn, cfg.data)


def train_and_report_styles(cfg: ClassifyConfig, spec: C.SnippetSpec, output: str, usable: dict[str, list[dict[str, Any]]],
                            styles: list[str], left_out: dict[str, str]) -> dict[str, Any]:  # fmt: skip
    """Style mode: one multi-class model on the train split's snippets, every split scored, every output."""
    import ray

    CR.check_style_sizes(CR.style_split_sizes(usable, styles), output)
    names = spec.feature_names()
    datasets = {s: common.parquet_dataset([m["shard"] for m in usable[s]]) for s in ("train", "validation")}
    texts, info = _train(cfg, datasets, names, styles, output, [lgbm.STYLE_MODEL])
    shards = [m["shard"] for s in CR.SPLITS for m in usable[s]]
    scored = common.parquet_dataset(shards).map_batches(
        StyleScorer, fn_constructor_args=(texts[lgbm.STYLE_MODEL], names, styles), batch_size=2048,
        batch_format="numpy", compute=ray.data.ActorPoolStrategy(size=1), num_cpus=1).to_pandas()  # fmt: skip
    return CR.finish_style(output, spec, usable, styles, texts[lgbm.STYLE_MODEL], info, scored, cfg.data, left_out)


JOB = Job("classify", ClassifyConfig, run, "Train the LightGBM instrument-presence classifier on 1-s snippets.")
main = JOB.main

if __name__ == "__main__":
    sys.exit(main())
