"""What every job shares: arguments, config validation, Ray start-up, summary.json.

A job is declared once with :class:`Job` (its name, config class and run function);
``python -m ray_jobs.<job>`` and ``sep <job>`` both end in :func:`Job.main`, so the
arguments are identical either way::

    sep render -c configs/render_demo.yaml tracks=10 output=file:///tmp/demo

Exit status: 0 when the job finished (items that failed are recorded in the summary),
1 when the job itself failed, 2 for an invalid configuration: checked before Ray starts,
or found against the inputs (data that does not fit the model, an output that holds
work done with other settings).
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import functools
import json
import logging
import os
import socket
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import yaml
from pydantic import Field

from sepcore.config import Config, describe, load_config, to_plain
from sepcore.errors import ConfigError, SepError
from sepcore.io import storage

log = logging.getLogger("sep")

SUMMARY = "summary.json"
RESOLVED_CONFIG = "config.yaml"


class JobConfig(Config):
    """Keys every job has."""

    output: str = Field(description="URI where the job writes its results (path, file:// or s3://)")
    num_cpus: int | None = Field(
        default=None,
        ge=1,
        description="CPUs of the local Ray this job starts when RAY_ADDRESS is not set "
        "(default: all of this machine's)",
    )


@dataclass(frozen=True)
class Job:
    """A job: ``run(config)`` does the work and returns the summary's counts and figures."""

    name: str
    config_cls: type[JobConfig]
    run: Callable[[Any], dict[str, Any]]
    description: str

    def parser(self) -> argparse.ArgumentParser:
        keys = "\n".join(describe(self.config_cls))
        parser = argparse.ArgumentParser(
            prog=f"sep {self.name}",
            description=self.description,
            formatter_class=argparse.RawDescriptionHelpFormatter,
            epilog=f"configuration keys (set in the YAML file or as key=value):\n{keys}\n\n"
            "Ray: connects to RAY_ADDRESS when it is set, else starts a local Ray.",
        )
        parser.add_argument("-c", "--config", help="YAML file with the job's keys")
        parser.add_argument(
            "overrides", nargs="*", metavar="key=value", help="dotted overrides, e.g. tracks=10"
        )
        return parser

    def main(self, argv: list[str] | None = None) -> int:
        args = self.parser().parse_args(argv)
        try:
            cfg = load_config(self.config_cls, args.config, args.overrides)
        except ConfigError as exc:
            print(f"sep {self.name}: error: {exc}", file=sys.stderr)
            return 2
        setup_logging()
        try:
            summary = run_job(self, cfg)
        except ConfigError as exc:  # found once the inputs were read: still a configuration error
            print(f"sep {self.name}: error: {exc}", file=sys.stderr)
            return 2
        except SepError as exc:
            print(f"sep {self.name}: failed: {exc}", file=sys.stderr)
            return 1
        print(format_summary(summary))
        if summary["status"] != "ok":
            print(f"sep {self.name}: failed: {summary.get('error')}", file=sys.stderr)
            return 1
        return 0


#: Libraries whose DEBUG records carry request headers (the S3 access key id is in
#: ``Authorization``): never below INFO, whatever ``SEP_LOG_LEVEL`` says.
QUIET_LOGGERS = ("botocore", "boto3", "aiobotocore", "s3transfer", "urllib3")


def setup_logging() -> None:
    if not logging.getLogger().handlers:
        logging.basicConfig(
            level=os.environ.get("SEP_LOG_LEVEL", "INFO"),
            format="%(asctime)s %(levelname)s %(name)s: %(message)s",
            datefmt="%H:%M:%S",
        )
    for name in QUIET_LOGGERS:
        logger = logging.getLogger(name)
        logger.setLevel(max(logger.getEffectiveLevel(), logging.INFO))


def init_ray(num_cpus: int | None) -> None:
    """Connect to ``RAY_ADDRESS`` when set; otherwise start (or reuse) a local Ray."""
    import ray

    if ray.is_initialized():
        return
    address = os.environ.get("RAY_ADDRESS")
    if address:
        ray.init(address=address, logging_level=logging.WARNING)
    else:
        ray.init(num_cpus=num_cpus, include_dashboard=False, logging_level=logging.WARNING)


def _now() -> str:
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")


def run_job(job: Job, cfg: JobConfig) -> dict[str, Any]:
    """Run ``job`` and commit its ``summary.json`` last; returns the summary."""
    output = storage.normalize_uri(cfg.output)
    storage.write_text(storage.join(output, RESOLVED_CONFIG), yaml.safe_dump(to_plain(cfg)))
    init_ray(cfg.num_cpus)
    started, t0 = _now(), time.monotonic()
    log.info("%s: started, output %s", job.name, output)
    result = job.run(cfg)
    summary = {
        "job": job.name,
        "status": "ok",
        "config": to_plain(cfg),
        "started": started,
        "finished": _now(),
        "seconds": round(time.monotonic() - t0, 3),
        "host": socket.gethostname(),
        **result,
    }
    storage.write_text(storage.join(output, SUMMARY), json.dumps(summary, indent=2, default=str))
    return summary


def format_summary(summary: dict[str, Any]) -> str:
    """A short human-readable account of a summary."""
    lines = [f"{summary['job']}: done in {summary['seconds']:.1f} s"]
    for section in ("counts", "figures"):
        for key, value in (summary.get(section) or {}).items():
            lines.append(f"  {key}: {value}")
    failed = summary.get("failed") or []
    for item in failed[:10]:
        lines.append(f"  FAILED {item.get('item')}: {item.get('error')}")
    if len(failed) > 10:
        lines.append(f"  ... and {len(failed) - 10} more failures (see summary.json)")
    lines.append(f"  summary: {storage.join(storage.normalize_uri(summary['config']['output']), SUMMARY)}")
    return "\n".join(lines)


# ---------------------------------------------------------------- time limit per item
#
# A per-item unit of work (a track, a song, a file) can hang where Python cannot stop
# it: a native livelock (MKL/OpenMP), a stuck read. Every batch job therefore gives
# each item a time limit (its ``item_timeout_s`` key) that is enforced from outside
# the stuck thread, and records the item as failed instead of waiting for it.

#: Folder of an output holding the time-limit failures of runs of an actor job.
TIMEOUTS = "_timeouts"


def time_limit_error(item: str, limit_s: float, key: str, ended: str) -> str:
    """The error recorded for an item that ran past its time limit."""
    return f"{item}: no result within {limit_s:g} s (time limit per item, key {key}); {ended}"


@dataclass(frozen=True)
class Finished:
    """What became of one item of :class:`ItemTasks`: the task's value, or why there is none."""

    item: str
    value: Any = None
    error: str | None = None


class _Clock:
    """Ray actor: how long each running task of an :class:`ItemTasks` has run.

    Tasks report their own start and end, so time spent waiting for a CPU is not charged.
    """

    def __init__(self) -> None:
        self.started: dict[int, float] = {}

    def start(self, index: int) -> None:
        self.started[index] = time.monotonic()

    def stop(self, index: int) -> None:
        self.started.pop(index, None)

    def elapsed(self) -> dict[int, float]:
        now = time.monotonic()
        return {index: now - t for index, t in self.started.items()}


def _timed_call(clock: Any, index: int, item: str, fn: Callable[..., Any], *args: Any) -> Any:
    """The body of an :class:`ItemTasks` task: report the start, then ``fn(*args)``."""
    from sepcore import faults

    clock.start.remote(index)
    try:
        faults.maybe_fire("item", item)  # SEP_FAULTS=item_hang:<pattern> in tests and drills
        return fn(*args)
    finally:
        clock.stop.remote(index)


class ItemTasks:
    """One Ray task per item, each with ``limit_s`` seconds from the moment it starts.

    ``submit(item, fn, *args)`` starts ``fn(*args)`` as a task with ``options`` (Ray's
    ``.options()``); :meth:`gather` yields a :class:`Finished` per item as it ends.

    A task reports its start and end to a small clock actor (no CPU, on the driver's
    node), so an item waiting in Ray's queue for a CPU is not charged. The driver waits
    with ``ray.wait(..., timeout=...)`` and asks the clock every few seconds; a task
    past its limit is cancelled with ``ray.cancel(force=True)``, which kills its worker
    process (a thread stuck in native code cannot be stopped from inside), and its item
    comes back with an error naming the item, the limit and ``key``. A task whose
    worker died (after Ray's retries) comes back as failed as well; either way the
    other items go on.
    """

    def __init__(self, limit_s: float, key: str, **options: Any):
        import ray

        self.limit_s, self.key = limit_s, key
        self._remote = ray.remote(_timed_call).options(**options)
        self._clock: Any = None
        self._pending: dict[Any, tuple[int, str]] = {}  # ref -> (index, item)
        self._submitted = 0

    def __len__(self) -> int:
        return len(self._pending)

    def submit(self, item: str, fn: Callable[..., Any], *args: Any) -> None:
        if self._clock is None:
            self._clock = self._new_clock()
        index, self._submitted = self._submitted, self._submitted + 1
        ref = self._remote.remote(self._clock, index, item, fn, *args)
        self._pending[ref] = (index, item)

    @staticmethod
    def _new_clock() -> Any:
        import ray
        from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

        here = NodeAffinitySchedulingStrategy(ray.get_runtime_context().get_node_id(), soft=True)
        clock = ray.remote(_Clock).options(num_cpus=0, max_restarts=-1, scheduling_strategy=here)
        return clock.remote()

    def gather(self) -> Iterator[Finished]:
        """Each submitted item once, as its task ends, fails or runs out of time."""
        import ray

        poll = min(5.0, max(0.2, self.limit_s / 20))
        checked = time.monotonic()
        while self._pending:
            ready, _ = ray.wait(list(self._pending), num_returns=1, timeout=poll)
            for ref in ready:
                yield self._finished(ref)
            if time.monotonic() - checked >= poll:
                yield from self._expired()
                checked = time.monotonic()

    def _finished(self, ref: Any) -> Finished:
        import ray

        _, item = self._pending.pop(ref)
        try:
            return Finished(item, ray.get(ref))
        except ray.exceptions.RayError as exc:  # the worker died, or a bug outside the job's guard
            why = str(exc).strip().splitlines()[0][:300] if str(exc).strip() else ""
            return Finished(item, error=f"{item}: the task failed ({type(exc).__name__}: {why})")

    def _expired(self) -> Iterator[Finished]:
        import ray

        try:
            elapsed = ray.get(self._clock.elapsed.remote(), timeout=60)
        except ray.exceptions.RayError as exc:  # its node was lost: it restarts empty, and
            # tasks already running are no longer charged (those started later are)
            log.warning("the time limit per item is not checked this time: %s", exc)
            return
        by_index = {index: ref for ref, (index, _) in self._pending.items()}
        for index, seconds in elapsed.items():
            ref = by_index.get(index)
            if ref is None or seconds <= self.limit_s:
                continue
            if ray.wait([ref], timeout=0)[0]:  # it finished as the limit passed
                yield self._finished(ref)
                continue
            ray.cancel(ref, force=True)
            _, item = self._pending.pop(ref)
            error = time_limit_error(item, self.limit_s, self.key, "the task was cancelled")
            yield Finished(item, error=error)


def timeout_ledger(output: str) -> str:
    """A fresh folder below ``output`` for one run's time-limit failures (see :class:`ItemWatchdog`)."""
    run = dt.datetime.now(dt.timezone.utc).strftime("%Y%m%dT%H%M%S") + "-" + os.urandom(4).hex()
    return storage.join(output, TIMEOUTS, run)


def _ledger_uri(ledger: str, item: str) -> str:
    import hashlib

    return storage.join(ledger, hashlib.sha256(item.encode()).hexdigest()[:24] + ".json")


class ItemWatchdog:
    """The time limit per item inside a Ray Data actor (one item per call).

    Use ``with watchdog.running(item): ...`` around an item's work. A daemon thread
    watches the item in progress; once it has run ``limit_s`` seconds the thread
    records the failure (``record(message)``, by default a file in ``ledger``), logs
    the stack of the item's thread (where it was stuck) and ends the process with
    ``os._exit``. Ray Data's actors have ``max_restarts=-1`` and
    ``max_task_retries=-1``: Ray restarts the actor and retries the call, and the
    retried call finds the record (:meth:`recorded`, or the job's own records) and
    answers with the failure at once instead of running the item again.

    The thread needs the GIL: it catches a hang in code that releases it (torch,
    numpy/MKL/OpenMP, I/O, ``time.sleep``), not a C loop that holds it. With neither a
    ``ledger`` nor a ``record`` there is nowhere to record the failure, and the limit is
    not enforced (a retry would hang again).
    """

    def __init__(self, limit_s: float, key: str, ledger: str | None = None):
        import threading

        self.limit_s, self.key, self.ledger = limit_s, key, ledger
        self._lock = threading.Lock()
        self._items: dict[int, tuple[str, float, int, Callable[[str], None]]] = {}
        self._thread: threading.Thread | None = None

    def recorded(self, item: str) -> str | None:
        """The error of ``item`` when it ran out of time earlier in this run (ledger only)."""
        if self.ledger is None:
            return None
        uri = _ledger_uri(self.ledger, item)
        return json.loads(storage.read_text(uri))["error"] if storage.exists(uri) else None

    def _write(self, item: str, message: str) -> None:
        assert self.ledger is not None
        record = json.dumps({"item": item, "error": message})
        storage.write_text(_ledger_uri(self.ledger, item), record)

    @contextlib.contextmanager
    def running(self, item: str, record: Callable[[str], None] | None = None) -> Iterator[None]:
        """Watch ``item`` while the block runs; ``record(message)`` writes its failure."""
        import threading

        from sepcore import faults

        if record is None and self.ledger is not None:
            record = functools.partial(self._write, item)
        token = object()
        if record is not None:
            with self._lock:
                deadline = time.monotonic() + self.limit_s
                self._items[id(token)] = (item, deadline, threading.get_ident(), record)
            self._start()
        try:
            faults.maybe_fire("item", item)  # SEP_FAULTS=item_hang:<pattern> in tests and drills
            yield
        finally:
            with self._lock:
                self._items.pop(id(token), None)

    def _start(self) -> None:
        import threading

        if self._thread is None:
            self._thread = threading.Thread(target=self._watch, name="item-watchdog", daemon=True)
            self._thread.start()

    def _watch(self) -> None:
        poll = min(1.0, max(0.1, self.limit_s / 20))
        while True:
            time.sleep(poll)
            with self._lock:
                now = time.monotonic()
                for item, deadline, thread, record in self._items.values():
                    if now > deadline:
                        self._end(item, thread, record)

    def _end(self, item: str, thread: int, record: Callable[[str], None]) -> None:
        """Record ``item``'s failure and end this process (never returns)."""
        import traceback

        message = time_limit_error(item, self.limit_s, self.key, "its worker process was ended")
        frame = sys._current_frames().get(thread)
        where = "".join(traceback.format_stack(frame)) if frame is not None else "(thread gone)\n"
        log.error("%s; it was at:\n%s", message, where.rstrip())
        try:
            record(message)
        except Exception:  # the retry will run the item again
            log.exception("cannot record the time-limit failure of %s", item)
        logging.shutdown()  # flush the log handlers
        os._exit(1)


# ---------------------------------------------------------------- the batch-job skeleton
#
# What every batch job does around its items: skip what a previous run finished
# (sepcore.io.ledger.Ledger), refuse an output made with other settings, run each item
# so that one bad item cannot stop the others, report progress as items end, and judge
# the run by the share of items that failed.


def guarded(item: str, fn: Callable[..., dict[str, Any]], *args: Any, **kwargs: Any) -> dict[str, Any]:
    """``fn(*args, **kwargs)``; an exception becomes ``{"item": item, "error": ...}``.

    A :class:`SepError` already names the file and the problem; any other exception is a
    bug on this item, recorded with its type so the other items go on.
    """
    try:
        return fn(*args, **kwargs)
    except SepError as exc:
        return {"item": item, "error": str(exc)}
    except Exception as exc:  # a bug on one item must not stop the others
        return {"item": item, "error": f"{item}: {type(exc).__name__}: {exc}"}


def verdict(failed: int, total: int, max_failed_fraction: float, what: str) -> dict[str, Any]:
    """The summary keys of a run whose share of failed items is above the limit, else {}."""
    if failed and failed > max_failed_fraction * max(total, 1):
        return {"status": "failed", "error": f"{failed} of {total} {what} failed"}
    return {}


class Progress:
    """``[i/n]`` lines as items end, and a progress bar on a terminal.

    ``n`` is fixed when the run starts (the items to do now; ``done_before`` were finished
    by an earlier run and are only mentioned). Each :meth:`update` logs one line: a
    failure as a warning naming the item, a success at INFO. On a terminal the lines
    go above a tqdm bar.
    """

    def __init__(self, job: str, total: int, done_before: int = 0, unit: str = "item"):
        self.job, self.total, self.count = job, total, 0
        self.log = logging.getLogger(f"sep.{job}")
        self.log.info("%s: %d %ss to do, %d done before", job, total, unit, done_before)
        self._bar: Any = None
        if total and sys.stderr.isatty():
            try:
                from tqdm import tqdm
            except ImportError:  # a plain install without the progress extra: lines only
                return
            self._bar = tqdm(total=total, desc=job, unit=unit, leave=False, dynamic_ncols=True)

    def update(self, item: str, state: str, failed: bool = False) -> None:
        self.count += 1
        line = f"{self.job} [{self.count}/{self.total}] {item}: {state}"
        if self._bar is not None:
            self._bar.update(1)
            self._bar.clear()
        if failed:
            self.log.warning("%s", line)
        else:
            self.log.info("%s", line)
        if self._bar is not None:
            self._bar.refresh()

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None


def check_settings(output: str, name: str, settings: dict[str, Any], what: str = "data") -> None:
    """Refuse an output that holds work made with other ``settings`` (exit 2); record them else.

    ``<output>/<name>`` holds the settings of the first run (JSON); a rerun with other
    values raises :class:`ConfigError` naming the keys that differ.
    """
    from sepcore.config import changed_keys

    uri = storage.join(output, name)
    wanted = json.loads(json.dumps(settings, default=str))
    if storage.exists(uri):
        diff = changed_keys(json.loads(storage.read_text(uri)), wanted)
        if diff:
            raise ConfigError(
                "output", f"{output} holds {what} made with other settings ({', '.join(diff)}); "
                "use a new output"
            )
        return
    storage.write_text(uri, json.dumps(wanted, indent=2, sort_keys=True))


def settings_fingerprint(settings: Any) -> str:
    """A short hash of JSON-able ``settings``: the key of work made with them."""
    import hashlib

    text = json.dumps(settings, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def parquet_dataset(uris: list[str], **kwargs: Any) -> Any:
    """A Ray Data dataset of parquet files given as URIs (local paths or s3:// through fsspec)."""
    import ray

    if not uris:
        raise SepError("no parquet files to read")
    if storage.is_local(uris[0]):
        return ray.data.read_parquet([storage.local_path(u) for u in uris], **kwargs)
    import pyarrow.fs as pafs

    fs, _ = storage.filesystem(uris[0])
    paths = [u.split("://", 1)[1] for u in uris]
    return ray.data.read_parquet(paths, filesystem=pafs.PyFileSystem(pafs.FSSpecHandler(fs)), **kwargs)
