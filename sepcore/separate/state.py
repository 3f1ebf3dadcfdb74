"""The separate job's state in its output, and its work on one file, without Ray.

* ``stems/<safe name>-<hash>/instrument.<fmt>``, ``rest.<fmt>``: the stems (of a
  multi-stem checkpoint: ``<stem>.<fmt>`` for each stem written);
* ``_records/<key>.json`` (:data:`RECORDS`): one record per file, written as soon as
  the file is finished (``ok`` or ``error``), so a run killed halfway loses no work;
* ``_started/<key>`` (:data:`STARTED`): how many times a file was started (by this run
  and runs killed before their manifest); a worker that dies mid-file is restarted by
  Ray and the file done again, so ``attempts`` in its row is then 2 or more;
* ``manifest.parquet`` (:data:`MANIFEST`): one row per library file (``ok``, ``error``
  or ``skipped``), written last and atomically; the run's records and start counts are
  then removed (:func:`clear_run`). Its columns are :data:`MANIFEST_SCHEMA`, plus a
  ``<stem>_uri`` column per stem of a multi-stem checkpoint after ``rest_uri`` (which
  are then null).

``<key>`` is :func:`key` of the file's URI.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import io
import json
import logging
import os
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
from torch import nn

from sepcore.batch import Progress
from sepcore.errors import SepError
from sepcore.io import storage
from sepcore.separate.config import DecodeLimits, SeparationSettings
from sepcore.separate.library import LibraryFile, output_dir, separate_file
from sepcore.separate.separator import Separator

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


def key(source: str) -> str:
    """The name of a source's record and start count."""
    return hashlib.sha256(source.encode()).hexdigest()[:24]


def record_uri(output: str, source: str) -> str:
    return storage.join(output, RECORDS, key(source) + ".json")


def now() -> str:
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")


def count_start(output: str, source: str) -> int | None:
    """Count one more start of ``source``; returns the count (1 on the first start).

    Bookkeeping only: when storage fails here the file is still done (count None).
    """
    uri = storage.join(output, STARTED, key(source))
    try:
        attempts = 1 + (int(storage.read_text(uri)) if storage.exists(uri) else 0)
        storage.write_text(uri, str(attempts))
    except (SepError, ValueError) as exc:
        log.warning("separate: cannot count the start of %s: %s", source, exc)
        return None
    return attempts


def timed_out(output: str, source: str, run_id: str) -> dict[str, Any] | None:
    """Run ``run_id``'s record of ``source`` when the file ran out of time (and the process
    was ended: Ray restarted the actor and retried the file), else None."""
    uri = record_uri(output, source)
    try:
        row = json.loads(storage.read_text(uri)) if storage.exists(uri) else {}
    except (SepError, ValueError) as exc:
        log.warning("separate: cannot read the record of %s: %s", source, exc)
        return None
    if row.get("run_id") == run_id and row.get("error_class") == ITEM_TIMEOUT:
        return row
    return None


def record(output: str, row: dict[str, Any], start: float, **fields: Any) -> dict[str, Any]:
    """Finish ``row`` (``fields``, ``total_s`` since ``start``, ``processed_at``) and record it."""
    row = {**row, **fields, "total_s": time.monotonic() - start, "processed_at": now()}
    storage.write_text(record_uri(output, row["source"]), json.dumps(row))
    return row


def separate_row(model: nn.Module | Separator, row: dict[str, Any], output: str, settings: SeparationSettings,
                 scratch: str | None, limits: DecodeLimits) -> dict[str, Any]:  # fmt: skip
    """Separate one file of the library (a :func:`plan` row) into its stems: the row with
    the result's fields and ``status`` ok, or ``status`` error, ``error_class`` and ``error``."""
    source = LibraryFile(row["source"], row["relative"], row["size"], row["version"])
    try:
        result = separate_file(
            model, source, output_dir(output, source.relative), settings, scratch,
            limits.timeout_s, limits.max_memory_mb, limits.max_seconds,
        )  # fmt: skip
        return {**row, **result, "status": "ok", "error_class": None, "error": None}
    except Exception as exc:  # a bad file is recorded; the job goes on
        if not isinstance(exc, SepError):
            log.exception("separate: unexpected error on %s", source.uri)
        return {**row, "status": "error", "error_class": type(exc).__name__, "error": str(exc)}


# ---------------------------------------------------------------------- the run


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


def stem_uris(row: dict[str, Any]) -> dict[str, str]:
    """The stem files of a manifest row: its non-null ``<stem>_uri`` fields."""
    return {k: v for k, v in row.items() if k.endswith("_uri") and v is not None}


def is_done(prev: dict[str, Any] | None, f: LibraryFile, model_id: str, settings: str,
            existing: set[str]) -> bool:  # fmt: skip
    """Whether ``prev`` (a source's latest row) finished ``f`` as it is now, with this model
    and settings, and its stems (in ``existing``) are still there."""
    uris = stem_uris(prev or {})
    return bool(
        prev
        and prev.get("status") in DONE_STATUSES
        and prev.get("change_key") == f.change_key
        and prev.get("model_id") == model_id
        and prev.get("settings") == settings
        and uris
        and all(uri in existing for uri in uris.values())
    )


def plan(files: Sequence[LibraryFile], output: str, model_id: str, settings: str,
         force: bool) -> tuple[dict[str, dict[str, Any]], list[dict[str, Any]]]:  # fmt: skip
    """The ``skipped`` rows of files done before (by source), and a row per file to do."""
    prev = previous_state(output)
    existing = set(storage.list_files(storage.join(output, "stems")))
    skipped: dict[str, dict[str, Any]] = {}
    todo = []
    for f in files:
        p = prev.get(f.uri)
        if not force and p is not None and is_done(p, f, model_id, settings, existing):
            skipped[f.uri] = {**p, "status": "skipped"}
        else:
            todo.append({"source": f.uri, "relative": f.relative, "size": f.size,
                         "version": f.version, "change_key": f.change_key})  # fmt: skip
    return skipped, todo


def manifest_schema(rows: list[dict[str, Any]]) -> pa.Schema:
    """:data:`MANIFEST_SCHEMA` with the rows' other ``<stem>_uri`` columns after ``rest_uri``."""
    extra = list(dict.fromkeys(k for row in rows for k in stem_uris(row)
                               if k not in MANIFEST_SCHEMA.names))  # fmt: skip
    schema, at = MANIFEST_SCHEMA, MANIFEST_SCHEMA.get_field_index("rest_uri") + 1
    for i, name in enumerate(extra):
        schema = schema.insert(at + i, pa.field(name, pa.string()))
    return schema


def write_manifest(output: str, rows: list[dict[str, Any]]) -> str:
    """Write the manifest atomically; returns its URI."""
    schema = manifest_schema(rows)
    table = pa.Table.from_pylist(
        [{name: row.get(name) for name in schema.names} for row in rows], schema=schema
    )
    uri = storage.join(output, MANIFEST)
    with storage.open_write(uri) as fh:
        pq.write_table(table, fh)
    return uri


def clear_run(output: str) -> None:
    """Remove the run's records and start counts (once the manifest holds them)."""
    for uri in storage.list_files(storage.join(output, RECORDS), suffix=".json"):
        storage.delete(uri)
    storage.delete(storage.join(output, STARTED), recursive=True)


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


def summary(files: int, rows: list[dict[str, Any]], audio_s: float, wall: float, startup: float,
            cpus: float, actors: int, startups: Sequence[dict[str, Any]] = (), **info: Any) -> dict[str, Any]:  # fmt: skip
    """The summary's counts, figures, nodes, ``info``, retries and failures of a run's manifest ``rows``.

    ``audio_s`` seconds of audio separated in ``wall`` seconds, ``startup`` of them until
    the first of the ``actors`` was ready, on ``cpus`` CPUs; ``startups``, each actor's
    start-up (:func:`startup_figures`): the figures give the longest (``actor_startup_s``,
    from the request to ready) and the summary the list (``actor_startup``).
    """
    counts = {s: sum(r["status"] == s for r in rows) for s in ("ok", "error", "skipped")}
    tried = [r for r in rows if r["status"] != "skipped"]
    xrt = audio_s / wall if wall > 0 else 0.0
    return {
        "counts": {"files": files, **counts, "not_attempted": files - len(rows)},
        "figures": {
            "hours_of_audio": round(audio_s / 3600.0, 4),
            "wall_s": round(wall, 2),
            "x_realtime": round(xrt, 2),
            "x_realtime_per_cpu": round(xrt / cpus, 2),
            "startup_s": round(startup, 2),
            "x_realtime_after_startup": round(audio_s / (wall - startup) if wall > startup else 0.0, 2),
            "actors": actors,
            "actor_startup_s": max((a["ready_s"] for a in startups), default=0.0),
        },
        "actor_startup": list(startups),
        "nodes": sorted({r["node"] for r in tried if r.get("node")}),
        **info,
        "retried": sum((r.get("attempts") or 1) > 1 for r in tried),
        "failed": [{"item": r["source"], "error": f"{r['error_class']}: {r['error']}"}
                   for r in rows if r["status"] == "error"],  # fmt: skip
        **every_file_failed(rows),
    }


def run_info(meta: dict[str, Any]) -> dict[str, str]:
    """``model_id``, ``target`` and ``run_id`` (the UTC start time) of a run with checkpoint ``meta``.

    The target of a multi-stem checkpoint is its ``targets``, comma-separated."""
    target = meta.get("target")
    if target is None and meta.get("targets"):
        target = ",".join(meta["targets"])
    return {
        "model_id": str(meta.get("model_sha256", ""))[:16],
        "target": str(target),
        "run_id": dt.datetime.now(dt.timezone.utc).strftime("%Y%m%dT%H%M%SZ"),
    }


def process_started_at() -> float | None:
    """When this process started, as ``time.time()`` (Linux: from ``/proc``; else None)."""
    try:
        with open("/proc/self/stat") as fh:
            ticks = int(fh.read().rsplit(")", 1)[1].split()[19])  # field 22: starttime
        with open("/proc/uptime") as fh:
            uptime = float(fh.read().split()[0])
    except (OSError, ValueError, IndexError):
        return None
    return time.time() - (uptime - ticks / os.sysconf("SC_CLK_TCK"))


def actor_startup(init_at: float, model_at: float) -> dict[str, Any]:
    """A separator actor's start-up, measured when it is ready: ``pid``; ``process_at``
    (its process started: Python, Ray, the job's modules and torch come before its
    constructor), ``init_at`` (the constructor began), ``model_at`` (the model was in
    place) and ``ready_at``, all ``time.time()``; ``cpu_s``, the CPU seconds it used."""
    return {"pid": os.getpid(), "process_at": process_started_at(), "init_at": init_at,
            "model_at": model_at, "ready_at": time.time(), "cpu_s": time.process_time()}  # fmt: skip


def startup_figures(startups: list[dict[str, Any]], requested_at: float) -> list[dict[str, Any]]:
    """Per actor (:func:`actor_startup`, in the order they became ready), seconds from
    ``requested_at`` (the driver asked for the actors, ``time.time()``) to ready
    (``ready_s``), and of that, from its process's start (or the request, when the process
    was started before) to its constructor (``import_s``: Python, Ray and the modules),
    the model (``model_s``) and the rest of the constructor (``init_s``); ``cpu_s``."""
    rows = []
    for a in sorted(startups, key=lambda a: a["ready_at"]):
        begun = max(a["process_at"] or requested_at, requested_at)
        rows.append({"pid": a["pid"], "ready_s": round(a["ready_at"] - requested_at, 2),
                     "process_s": round(a["ready_at"] - begun, 2),
                     "import_s": round(a["init_at"] - begun, 2),
                     "model_s": round(a["model_at"] - a["init_at"], 2),
                     "init_s": round(a["ready_at"] - a["model_at"], 2),
                     "cpu_s": round(a["cpu_s"], 2)})  # fmt: skip
    return rows


class RunProgress:
    """Progress lines of the files separated in a run, with the running x real time.

    Keeps the finished ``rows``, the seconds of audio separated (``audio_s``), the
    start-up seconds (``startup``: until the first actor was ready, paid once per run) and
    each actor's start-up (``startups``: :func:`actor_startup`, from its first row's
    ``actor_startup``; :meth:`actors` gives the figures).
    """

    def __init__(self, todo: int, done_before: int):
        self.progress = Progress("separate", todo, done_before, "file")
        self.rows: list[dict[str, Any]] = []
        self.startups: list[dict[str, Any]] = []  # each actor's first row brings its start-up
        self.audio_s, self.startup, self.t0 = 0.0, 0.0, time.monotonic()
        self.requested_at = time.time()

    def update(self, row: dict[str, Any]) -> None:
        startup = row.pop("actor_startup", None)
        if startup:
            self.startups.append(startup)
        self.rows.append(row)
        elapsed = time.monotonic() - self.t0
        if len(self.rows) == 1:
            self.startup = max(0.0, elapsed - row["total_s"])
        if row["status"] == "ok":
            self.audio_s += row["duration_s"]
            speed = self.audio_s / max(elapsed, 1e-9)
            state = f"ok ({row['duration_s']:.0f} s of audio, {speed:.1f}x real time so far)"
            self.progress.update(row["relative"], state)
        else:
            self.progress.update(row["relative"], f"{row['status']}: {row['error']}", failed=True)

    def actors(self) -> list[dict[str, Any]]:
        """:func:`startup_figures` of the actors that sent a row, since this run asked for them."""
        return startup_figures(self.startups, self.requested_at)

    def close(self) -> None:
        self.progress.close()
