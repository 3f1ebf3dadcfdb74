"""``sep separate``: separate a music library into stems (instrument and rest, several, or Demucs's), nightly.

    sep separate -c configs/separate_demo.yaml library=s3://music/incoming output=s3://music/stems

See docs/separate.md. A file is the unit of work: a per-chunk row would cost more in
the object store than the inference on a CPU. The state in the output is described in
:mod:`sepcore.separate.state`.
"""

from __future__ import annotations

import functools
import logging
import time
from typing import Any, Literal

from pydantic import Field
from torch import nn

from ray_jobs.common import Job, JobConfig
from sepcore.batch import ItemWatchdog
from sepcore.errors import ConfigError, SepError
from sepcore.io import storage
from sepcore.separate import separator as SP
from sepcore.separate import state as S
from sepcore.separate.config import DecodeLimits, DemucsOptions, Inference, SeparationSettings
from sepcore.separate.library import AUDIO_SUFFIXES, list_library

log = logging.getLogger("sep.separate")

MANIFEST, RECORDS, STARTED = S.MANIFEST, S.RECORDS, S.STARTED
read_manifest = S.read_manifest


class SeparateConfig(JobConfig):
    library: str = Field(description="prefix (path, file:// or s3://) of the audio files")
    checkpoint: str = Field(
        description="checkpoint folder or training output (uses best/), or a Demucs model: "
        "demucs:<name> (pretrained, needs network) or the URI of a .th file"
    )
    format: Literal["flac", "wav"] = Field(
        default="flac", description="stem format: flac (24-bit) or wav (32-bit float)"
    )
    sample_rate: int | None = Field(
        default=None, gt=0, description="stem sample rate (default: the source's)"
    )
    channels: Literal[1] | None = Field(
        default=None, description="1 for mono stems (default: the source's channel layout)"
    )
    suffixes: list[str] = Field(
        default=list(AUDIO_SUFFIXES), description="file name endings to pick up"
    )
    stems: list[str] | None = Field(
        default=None,
        description="stems to write, of a multi-stem checkpoint or a Demucs model (default: all "
        "of its stems, other included); not for a single-target checkpoint",
    )
    wiener_iterations: int | None = Field(
        default=None,
        ge=0,
        description="EM iterations of the multichannel Wiener filter after the masks (0: "
        "masks only; default: the checkpoint's wiener_iterations, else 0)",
    )
    force: bool = Field(default=False, description="redo every file, done or not")
    limit: int | None = Field(default=None, ge=1, description="process at most this many files")
    scratch: str | None = Field(
        default=None, description="local folder for temporary files (default: the system's)"
    )
    item_timeout_s: float = Field(
        default=4 * 3600.0,
        gt=0,
        description="time limit of one file (decode, separation, writing), from its start: then "
        "the actor's process is ended and the file recorded as failed (ItemTimeout); a 4-hour "
        "file takes under an hour on one CPU with the small models",
    )
    decode: DecodeLimits = DecodeLimits()
    inference: Inference = Inference()
    demucs: DemucsOptions = Field(
        default_factory=DemucsOptions,
        description="how a Demucs model is applied (segment, overlap, shifts); inference.overlap "
        "is the mask models'",
    )


class Separator:
    """Separator actor: makes the separator of the driver's model once (a checkpoint's model
    or a Demucs model), separates one file per call."""

    def __init__(self, cfg: SeparateConfig, settings: SeparationSettings, info: dict[str, str],
                 model: nn.Module, meta: dict[str, Any]):  # fmt: skip
        import ray
        import torch

        init_at = time.time()
        torch.set_num_threads(cfg.inference.threads)
        device = cfg.inference.torch_device()
        self.settings = settings.model_copy(update={"device": device})
        # the driver's model, from the object store: loaded once per job, not per actor
        self.model = SP.from_model(model, meta, self.settings, device)
        model_at = time.time()
        self.info = {**info, "settings": settings.key(), "node": ray.get_runtime_context().get_node_id()}
        self.cfg, self.output = cfg, storage.normalize_uri(cfg.output)
        self.watchdog = ItemWatchdog(cfg.item_timeout_s, "item_timeout_s")
        self.startup: dict[str, Any] | None = S.actor_startup(init_at, model_at)  # sent with the first row

    def __call__(self, row: dict[str, Any]) -> dict[str, Any]:
        row = self._separate(row)
        if self.startup is not None:
            row, self.startup = {**row, "actor_startup": self.startup}, None
        return row

    def _separate(self, row: dict[str, Any]) -> dict[str, Any]:
        source = row["source"]
        row = {**row, **self.info, "attempts": S.count_start(self.output, source)}
        if row["attempts"] != 1:  # started before: it may have run out of time in this run
            earlier = S.timed_out(self.output, source, self.info["run_id"])
            if earlier is not None:
                return earlier
        start = time.monotonic()
        # the watchdog's record of a file past its time limit, before it ends this process
        record = functools.partial(self._timeout, row, start)
        with self.watchdog.running(source, record):
            row = S.separate_row(self.model, row, self.output, self.settings, self.cfg.scratch, self.cfg.decode)
        return S.record(self.output, row, start)

    def _timeout(self, row: dict[str, Any], start: float, message: str) -> None:
        S.record(self.output, row, start, status="error", error_class=S.ITEM_TIMEOUT, error=message)


def _separate(cfg: SeparateConfig, settings: SeparationSettings, info: dict[str, str], model: nn.Module,
              meta: dict[str, Any], todo: list[dict[str, Any]], done_before: int) -> S.RunProgress:  # fmt: skip
    """Separate the ``todo`` rows with ``model`` (:func:`sepcore.separate.separator.load`) on a pool
    of :class:`Separator` actors, one file per call; the run's progress: its rows, seconds of
    audio and start-up.

    Plain actors rather than a Ray Data actor pool: the same one-file rows, but no Ray Data
    in the actors (its import, with pandas) and none of its helper actors (statistics,
    autoscaling, locations: three more processes starting with the pool). An actor that
    dies (a file past ``item_timeout_s`` ends its process) is restarted and its call retried
    (``max_restarts``, ``max_task_retries``: -1, as Ray Data's pools)."""
    import ray
    from ray.util import ActorPool

    size, gpus = cfg.inference.pool(ray.cluster_resources())
    size = min(size, len(todo))
    log.info("separate: %d separator actor(s), %g CPU and %g GPU each", size, cfg.inference.cpus_per_actor, gpus)
    progress = S.RunProgress(len(todo), done_before)
    actor = ray.remote(Separator).options(num_cpus=cfg.inference.cpus_per_actor, num_gpus=gpus,
                                          max_restarts=-1, max_task_retries=-1)  # fmt: skip
    model_ref = ray.put(model)  # once in the object store, for every actor and restart
    pool = ActorPool([actor.remote(cfg, settings, info, model_ref, meta) for _ in range(size)])
    for row in pool.map_unordered(lambda a, row: a.__call__.remote(row), todo):
        progress.update(row)
    progress.close()
    return progress


def run(cfg: SeparateConfig) -> dict[str, Any]:
    import ray

    output = storage.normalize_uri(cfg.output)
    try:  # loaded once here; the actors get it through the object store
        model, meta = SP.load(cfg.checkpoint)
    except SepError as exc:
        raise ConfigError("checkpoint", str(exc)) from exc
    settings = SeparationSettings.of(cfg, meta)
    info = S.run_info(meta)
    files = list_library(cfg.library, tuple(cfg.suffixes), exclude=output)
    if not files:
        log.warning("separate: no audio files below %s", cfg.library)
    rows, todo = S.plan(files, output, info["model_id"], settings.key(), cfg.force)
    todo = todo[: cfg.limit]
    log.info("separate: %d files, %d done before, %d to separate (model %s, target %s)",
             len(files), len(rows), len(todo), info["model_id"], info["target"])  # fmt: skip
    t0 = time.monotonic()
    progress = _separate(cfg, settings, info, model, meta, todo, len(rows)) if todo else S.RunProgress(0, len(rows))
    wall = time.monotonic() - t0
    rows.update((r["source"], r) for r in progress.rows)
    ordered = [rows[f.uri] for f in files if f.uri in rows]
    manifest = S.write_manifest(output, ordered)
    S.clear_run(output)
    cpus = float(ray.cluster_resources().get("CPU", 1))
    actors = min(cfg.inference.pool(ray.cluster_resources())[0], len(todo))
    return S.summary(len(files), ordered, progress.audio_s, wall, progress.startup, cpus, actors,
                     progress.actors(), model_id=info["model_id"], target=info["target"],
                     manifest=manifest)  # fmt: skip


JOB = Job("separate", SeparateConfig, run, __doc__.split("\n\n")[0])
main = JOB.main

if __name__ == "__main__":
    raise SystemExit(main())
