"""``sep separate``: separate a music library into instrument and rest stems, nightly.

    sep separate -c configs/separate_demo.yaml library=s3://music/incoming output=s3://music/stems

Pipeline (Ray Data): the driver lists the library and drops files already done;
the rest go, one row per file, to a pool of separator actors. Each actor loads the
checkpoint once (GPU when it has one) and runs :func:`sepcore.separate.library.separate_file`
per file: isolated decode, resample, chunked inference with 50 % Hann overlap-add in
blocks of bounded memory, inverse STFT with the mixture's phase, stems written
atomically. A file is the unit of work: a per-chunk row would cost more in the
object store than the inference on a CPU.

State, in the output:

* ``stems/<safe name>-<hash>/instrument.<fmt>``, ``rest.<fmt>``: the stems;
* ``_records/<key>.json``: one record per file, written by the actor as soon as the
  file is finished (``ok`` or ``error``), so a run killed halfway loses no work;
* ``_started/<key>``: how many times a file was started (by this run and runs killed
  before their manifest); a worker that dies mid-file is restarted by Ray and the file
  done again, so ``attempts`` in its row is then 2 or more;
* ``manifest.parquet``: one row per library file (``ok``, ``error`` or ``skipped``),
  written last and atomically; the run's records and start counts are then removed.

A rerun skips a file whose change key (URI, size, mtime or ETag), model id (hash of
the checkpoint's weights) and settings match a previous ``ok`` (or ``skipped``) row
whose stems exist; changed and failed files are done again.

Exit status: 1 when files were separated and every one of them failed (a model that
cannot take the audio, a broken decoder): the manifest and ``summary.json`` (status
``failed``) are still written. Files skipped as done before count neither way; when
at least one file succeeds the job exits 0 and the failures are in the summary.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import hashlib
import io
import json
import logging
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Literal

import pyarrow as pa
import pyarrow.parquet as pq
from pydantic import Field

from ray_jobs.common import ItemWatchdog, Job, JobConfig
from sepcore.config import Config
from sepcore.errors import ConfigError, SepError
from sepcore.io import storage
from sepcore.models import checkpoint
from sepcore.separate.library import (
    AUDIO_SUFFIXES,
    LibraryFile,
    SeparationSettings,
    list_library,
    output_dir,
    separate_file,
)

log = logging.getLogger("sep.separate")

MANIFEST = "manifest.parquet"
RECORDS = "_records"
STARTED = "_started"
DONE_STATUSES = ("ok", "skipped")
#: ``error_class`` of a file that ran past ``item_timeout_s``.
ITEM_TIMEOUT = "ItemTimeout"

#: Manifest columns, in order. Times are seconds; ``processed_at`` is ISO 8601 UTC.
MANIFEST_SCHEMA = pa.schema(
    [
        ("source", pa.string()),
        ("relative", pa.string()),
        ("size", pa.int64()),
        ("version", pa.string()),
        ("change_key", pa.string()),
        ("status", pa.string()),
        ("error_class", pa.string()),
        ("error", pa.string()),
        ("duration_s", pa.float64()),
        ("source_sample_rate", pa.int64()),
        ("source_channels", pa.int64()),
        ("decoder", pa.string()),
        ("sample_rate", pa.int64()),
        ("channels", pa.int64()),
        ("instrument_uri", pa.string()),
        ("rest_uri", pa.string()),
        ("model_id", pa.string()),
        ("target", pa.string()),
        ("settings", pa.string()),
        ("fetch_s", pa.float64()),
        ("decode_s", pa.float64()),
        ("separate_s", pa.float64()),
        ("write_s", pa.float64()),
        ("total_s", pa.float64()),
        ("processed_at", pa.string()),
        ("run_id", pa.string()),
        ("node", pa.string()),
        ("attempts", pa.int64()),
    ]
)


class DecodeLimits(Config):
    timeout_s: float = Field(default=600.0, gt=0, description="wall-clock limit to decode one file")
    max_memory_mb: int = Field(
        default=4096, ge=256, description="address-space limit of the decoding process, MiB"
    )
    max_seconds: float = Field(
        default=4 * 3600.0, gt=0, description="longest audio accepted, seconds (longer: error)"
    )


class Inference(Config):
    batch_size: int = Field(default=8, ge=1, description="chunks per forward pass")
    pool_size: int | None = Field(
        default=None,
        ge=1,
        description="separator actors (default: one per GPU, else one per cpus_per_actor CPUs)",
    )
    cpus_per_actor: float = Field(default=1.0, gt=0, description="CPUs reserved per actor")
    gpus_per_actor: float | None = Field(
        default=None, ge=0, description="GPUs per actor (default: 1 when the cluster has GPUs)"
    )
    threads: int = Field(default=1, ge=1, description="torch threads per actor")
    device: Literal["auto", "cpu", "cuda"] = Field(
        default="auto", description="auto: cuda when the actor has a GPU"
    )
    block_seconds: float = Field(
        default=60.0, gt=0, description="audio separated at once; bounds memory per file"
    )
    overlap: float = Field(default=0.5, ge=0, lt=1, description="chunk overlap (Hann overlap-add)")


class SeparateConfig(JobConfig):
    library: str = Field(description="prefix (path, file:// or s3://) of the audio files")
    checkpoint: str = Field(description="checkpoint folder or training output (uses best/)")
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


# ---------------------------------------------------------------------- state


def _key(source: str) -> str:
    return hashlib.sha256(source.encode()).hexdigest()[:24]


def _record_uri(output: str, source: str) -> str:
    return storage.join(output, RECORDS, _key(source) + ".json")


def _count_start(output: str, source: str) -> int | None:
    """Count one more start of ``source``; returns the count (1 on the first start).

    Bookkeeping only: when storage fails here the file is still done (count None).
    """
    uri = storage.join(output, STARTED, _key(source))
    try:
        attempts = 1 + (int(storage.read_text(uri)) if storage.exists(uri) else 0)
        storage.write_text(uri, str(attempts))
    except (SepError, ValueError) as exc:
        log.warning("separate: cannot count the start of %s: %s", source, exc)
        return None
    return attempts


def read_manifest(output: str) -> list[dict[str, Any]]:
    """Rows of the output's manifest (empty when there is none)."""
    uri = storage.join(output, MANIFEST)
    if not storage.exists(uri):
        return []
    return pq.read_table(io.BytesIO(storage.read_bytes(uri))).to_pylist()


def previous_state(output: str) -> dict[str, dict[str, Any]]:
    """Latest known row per source: the manifest, updated by records of an unfinished run."""
    state = {row["source"]: row for row in read_manifest(output)}
    uris = storage.list_files(storage.join(output, RECORDS), suffix=".json")
    with ThreadPoolExecutor(max_workers=16) as pool:
        for row in pool.map(lambda u: json.loads(storage.read_text(u)), uris):
            state[row["source"]] = row
    return state


def write_manifest(output: str, rows: list[dict[str, Any]]) -> str:
    """Write the manifest atomically; returns its URI."""
    table = pa.Table.from_pylist(
        [{name: row.get(name) for name in MANIFEST_SCHEMA.names} for row in rows],
        schema=MANIFEST_SCHEMA,
    )
    uri = storage.join(output, MANIFEST)
    with storage.open_write(uri) as fh:
        pq.write_table(table, fh)
    return uri


def _now() -> str:
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")


# ---------------------------------------------------------------------- actors


class Separator:
    """Ray Data actor: loads the checkpoint once, separates one file per row."""

    def __init__(self, cfg: SeparateConfig, settings: SeparationSettings, model_id: str,
                 target: str, run_id: str):
        import ray
        import torch

        self.node = ray.get_runtime_context().get_node_id()
        torch.set_num_threads(cfg.inference.threads)
        device = cfg.inference.device
        if device == "auto":
            device = "cuda" if torch.cuda.is_available() else "cpu"
        self.model, _ = checkpoint.load_model(cfg.checkpoint, device)
        self.settings = dataclasses.replace(settings, device=device)
        self.cfg, self.model_id, self.target, self.run_id = cfg, model_id, target, run_id
        self.output = storage.normalize_uri(cfg.output)
        self.watchdog = ItemWatchdog(cfg.item_timeout_s, "item_timeout_s")

    def __call__(self, row: dict[str, Any]) -> dict[str, Any]:
        source = LibraryFile(row["source"], row["relative"], row["size"], row["version"])
        out = dict(row)
        out.update(model_id=self.model_id, target=self.target, settings=self.settings.key(),
                   run_id=self.run_id, node=self.node,
                   attempts=_count_start(self.output, source.uri))
        if out["attempts"] != 1:  # started before: it may have run out of time in this run
            earlier = self._timed_out(source.uri)
            if earlier is not None:
                return earlier
        start = time.monotonic()
        limits = self.cfg.decode

        def record(message: str) -> None:  # the watchdog's, before it ends this process
            failed = {**out, "status": "error", "error_class": ITEM_TIMEOUT, "error": message,
                      "total_s": time.monotonic() - start, "processed_at": _now()}  # fmt: skip
            storage.write_text(_record_uri(self.output, source.uri), json.dumps(failed))

        with self.watchdog.running(source.uri, record):
            try:
                result = separate_file(
                    self.model, source, output_dir(self.output, source.relative), self.settings,
                    self.cfg.scratch, limits.timeout_s, limits.max_memory_mb, limits.max_seconds,
                )  # fmt: skip
                out.update(result, status="ok", error_class=None, error=None)
            except Exception as exc:  # a bad file is recorded; the job goes on
                if not isinstance(exc, SepError):
                    log.exception("separate: unexpected error on %s", source.uri)
                out.update(status="error", error_class=type(exc).__name__, error=str(exc))
        out.update(total_s=time.monotonic() - start, processed_at=_now())
        storage.write_text(_record_uri(self.output, source.uri), json.dumps(out))
        return out

    def _timed_out(self, source: str) -> dict[str, Any] | None:
        """This run's record of ``source`` when the file ran out of time (and the process
        was ended: Ray restarted the actor and retried the file), else None."""
        uri = _record_uri(self.output, source)
        try:
            row = json.loads(storage.read_text(uri)) if storage.exists(uri) else {}
        except (SepError, ValueError) as exc:
            log.warning("separate: cannot read the record of %s: %s", source, exc)
            return None
        if row.get("run_id") == self.run_id and row.get("error_class") == ITEM_TIMEOUT:
            return row
        return None


# ---------------------------------------------------------------------- driver


def _pool(cfg: SeparateConfig) -> tuple[int, float]:
    """Actor count and GPUs per actor from the config and the cluster's resources."""
    import ray

    resources = ray.cluster_resources()
    inf = cfg.inference
    gpus = inf.gpus_per_actor
    if gpus is None:
        gpus = 1.0 if resources.get("GPU", 0) >= 1 and inf.device != "cpu" else 0.0
    if inf.pool_size:
        return inf.pool_size, gpus
    if gpus > 0:
        return max(1, int(resources.get("GPU", 0) // gpus)), gpus
    return max(1, int(resources.get("CPU", 1) // inf.cpus_per_actor)), gpus


def _settings(cfg: SeparateConfig, meta: dict[str, Any]) -> SeparationSettings:
    feature = meta.get("feature") or {}
    if meta.get("task") != "separator" or "n_fft" not in feature:
        raise ConfigError("checkpoint", f"{cfg.checkpoint} is not a separator checkpoint "
                          f"(task {meta.get('task')!r}); train an hourglass or BLSTM")
    return SeparationSettings(
        n_fft=int(feature["n_fft"]),
        hop=int(feature["hop"]),
        frames=int(meta["frames"]),
        model_rate=int(meta["sample_rate"]),
        batch_size=cfg.inference.batch_size,
        overlap=cfg.inference.overlap,
        block_seconds=cfg.inference.block_seconds,
        output_format=cfg.format,
        sample_rate=cfg.sample_rate,
        channels=cfg.channels,
    )


def _is_done(prev: dict[str, Any] | None, f: LibraryFile, model_id: str, settings: str,
             existing: set[str]) -> bool:
    return bool(
        prev
        and prev.get("status") in DONE_STATUSES
        and prev.get("change_key") == f.change_key
        and prev.get("model_id") == model_id
        and prev.get("settings") == settings
        and prev.get("instrument_uri") in existing
        and prev.get("rest_uri") in existing
    )


def every_file_failed(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """The summary's ``status: failed`` and ``error`` when every file this run tried failed.

    Empty when nothing was tried or one file succeeded; ``skipped`` rows count neither way.
    """
    tried = [r for r in rows if r["status"] != "skipped"]
    errors = [r for r in tried if r["status"] == "error"]
    if not tried or len(errors) < len(tried):
        return {}
    first = errors[0]
    return {"status": "failed", "error": f"every file failed ({len(errors)} of {len(tried)} "
            f"separated); the first: {first['relative']}: {first['error_class']}: {first['error']}"}  # fmt: skip


def run(cfg: SeparateConfig) -> dict[str, Any]:
    import ray

    output = storage.normalize_uri(cfg.output)
    try:
        meta = checkpoint.read_meta(checkpoint.resolve(cfg.checkpoint))
    except SepError as exc:
        raise ConfigError("checkpoint", str(exc)) from exc
    settings = _settings(cfg, meta)
    model_id = str(meta.get("model_sha256", ""))[:16]
    target = str(meta.get("target"))
    run_id = dt.datetime.now(dt.timezone.utc).strftime("%Y%m%dT%H%M%SZ")

    files = list_library(cfg.library, tuple(cfg.suffixes), exclude=output)
    if not files:
        log.warning("separate: no audio files below %s", cfg.library)
    prev = previous_state(output)
    existing = set(storage.list_files(storage.join(output, "stems")))
    rows: dict[str, dict[str, Any]] = {}
    todo = []
    for f in files:
        p = prev.get(f.uri)
        if not cfg.force and _is_done(p, f, model_id, settings.key(), existing):
            assert p is not None
            rows[f.uri] = {**p, "status": "skipped"}
        else:
            todo.append({"source": f.uri, "relative": f.relative, "size": f.size,
                         "version": f.version, "change_key": f.change_key})
    if cfg.limit is not None:
        todo = todo[: cfg.limit]
    log.info("separate: %d files, %d done before, %d to separate (model %s, target %s)",
             len(files), len(rows), len(todo), model_id, target)

    t0 = time.monotonic()
    seconds_audio = 0.0
    startup = 0.0
    pool_size = 0
    if todo:
        pool_size, gpus = _pool(cfg)
        pool_size = min(pool_size, len(todo))
        log.info("separate: %d separator actor(s), %g CPU and %g GPU each", pool_size,
                 cfg.inference.cpus_per_actor, gpus)
        ds = ray.data.from_items(todo, override_num_blocks=len(todo)).map(
            Separator,
            fn_constructor_args=(cfg, settings, model_id, target, run_id),
            compute=ray.data.ActorPoolStrategy(size=pool_size),
            num_cpus=cfg.inference.cpus_per_actor,
            num_gpus=gpus,
        )
        for i, row in enumerate(ds.iter_rows()):
            rows[row["source"]] = row
            elapsed = time.monotonic() - t0
            if i == 0:  # until the first actor was ready: start-up, paid once per run
                startup = max(0.0, elapsed - row["total_s"])
            if row["status"] == "ok":
                seconds_audio += row["duration_s"]
                log.info("separate [%d/%d] ok %s (%.0f s of audio, %.1fx real time so far)",
                         i + 1, len(todo), row["relative"], row["duration_s"],
                         seconds_audio / max(elapsed, 1e-9))
            else:
                log.warning("separate [%d/%d] %s %s: %s", i + 1, len(todo), row["status"],
                            row["relative"], row["error"])
    wall = time.monotonic() - t0

    ordered = [rows[f.uri] for f in files if f.uri in rows]
    manifest = write_manifest(output, ordered)
    for uri in storage.list_files(storage.join(output, RECORDS), suffix=".json"):
        storage.delete(uri)
    storage.delete(storage.join(output, STARTED), recursive=True)
    counts = {s: sum(r["status"] == s for r in ordered) for s in ("ok", "error", "skipped")}
    cpus = float(ray.cluster_resources().get("CPU", 1))
    xrt = seconds_audio / wall if wall > 0 else 0.0
    steady = seconds_audio / (wall - startup) if wall > startup else 0.0
    return {
        "counts": {"files": len(files), **counts, "not_attempted": len(files) - len(ordered)},
        "figures": {
            "hours_of_audio": round(seconds_audio / 3600.0, 4),
            "wall_s": round(wall, 2),
            "x_realtime": round(xrt, 2),
            "x_realtime_per_cpu": round(xrt / cpus, 2),
            "startup_s": round(startup, 2),
            "x_realtime_after_startup": round(steady, 2),
            "actors": pool_size,
        },
        "nodes": sorted({r["node"] for r in ordered if r["status"] != "skipped" and r.get("node")}),
        "model_id": model_id,
        "target": target,
        "manifest": manifest,
        "retried": sum((r.get("attempts") or 1) > 1 for r in ordered if r["status"] != "skipped"),
        "failed": [{"item": r["source"], "error": f"{r['error_class']}: {r['error']}"}
                   for r in ordered if r["status"] == "error"],
        **every_file_failed(ordered),
    }


JOB = Job("separate", SeparateConfig, run, __doc__.split("\n\n")[0])
main = JOB.main

if __name__ == "__main__":
    raise SystemExit(main())
