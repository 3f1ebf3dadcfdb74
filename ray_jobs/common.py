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
import datetime as dt
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

from sepcore.batch import Finished, ItemClock, format_summary, time_limit_error
from sepcore.config import Config, describe, load_config, to_plain
from sepcore.console import quiet_warnings, setup_logging, verbose
from sepcore.errors import ConfigError, SepError
from sepcore.io import storage
from sepcore.stages import RESOLVED_CONFIG, SUMMARY

log = logging.getLogger("sep")

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
            return _end(f"sep {self.name}: error: {exc}", 2)
        except SepError as exc:
            return _end(f"sep {self.name}: failed: {exc}", 1)
        print(format_summary(summary))
        if summary["status"] != "ok":
            return _end(f"sep {self.name}: failed: {summary.get('error')}", 1)
        return _end(None, 0)


def _end(error: str | None, status: int) -> int:
    """Print ``error`` (stderr), then where Ray's logs are: the job's last lines."""
    if error:
        print(error, file=sys.stderr, flush=True)
    if _RAY_LOGS:
        print(f"Ray's logs: {_RAY_LOGS}", file=sys.stderr if error else sys.stdout, flush=True)
    return status


# ---------------------------------------------------------------- the console
#
# The logging set-up and the warning filters are in sepcore.console; what follows quiets Ray.

#: Where this process's Ray writes its logs, once :func:`init_ray` ran.
_RAY_LOGS: str | None = None


def init_ray(num_cpus: int | None) -> None:
    """Connect to ``RAY_ADDRESS`` when set; otherwise start (or reuse) a local Ray.

    Quiet unless ``SEP_LOG_LEVEL=DEBUG``: workers' output is not sent to the driver and Ray
    Data prints no execution plans or progress lines (its bars still show on a terminal).
    """
    import ray

    global _RAY_LOGS
    loud = verbose()
    if not ray.is_initialized():
        address = os.environ.get("RAY_ADDRESS")
        where: dict[str, Any] = (
            {"address": address} if address else {"num_cpus": num_cpus, "include_dashboard": False}
        )
        ray.init(**where, log_to_driver=loud, logging_level=logging.INFO if loud else logging.ERROR)
    _RAY_LOGS = _ray_log_folder()
    _quiet_ray_data(loud)
    if not loud:
        quiet_warnings()
        _quiet_raylet_warnings()


def _ray_log_folder() -> str | None:
    """The local session's log folder (on a cluster, the head node's one is also there)."""
    try:
        from ray._private import worker  # no public API names the session folder

        return str(worker.global_worker.node.get_logs_dir_path())
    except Exception:  # a client connection has no local node
        return None


def _quiet_raylet_warnings() -> None:
    """Keep the raylet's warnings (``WARNING: 8 PYTHON worker processes have been started``)
    off the console: Ray prints them on the driver whatever ``log_to_driver`` says, and
    they are in the session's ``raylet.out``. Its errors still show."""
    try:
        from ray._private import worker  # no public setting for these messages
    except ImportError:
        return
    show = worker.print_to_stdstream
    if getattr(show, "quiet", False):
        return

    def quiet(data: dict[str, Any], ignore_prefix: bool) -> None:
        lines = [line for line in data.get("lines", []) if not str(line).startswith("WARNING:")]
        if data.get("pid") != "raylet" or lines:
            show({**data, "lines": lines} if data.get("pid") == "raylet" else data, ignore_prefix)

    quiet.quiet = True  # type: ignore[attr-defined]
    worker.print_to_stdstream = quiet


def _quiet_ray_data(loud: bool) -> None:
    """Ray Data: no execution plans, progress lines or operator bars unless ``loud``."""
    import ray.data

    ctx = ray.data.DataContext.get_current()
    ctx.print_on_execution_start = loud
    ctx.enable_progress_bars = loud or sys.stderr.isatty()
    ctx.enable_operator_progress_bars = loud
    for handler in logging.getLogger("ray.data").handlers:
        if "File" not in type(handler).__name__:  # ray-data.log keeps every record
            handler.setLevel(logging.INFO if loud else logging.CRITICAL)


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


# ---------------------------------------------------------------- time limit per item (tasks)
#
# The plain parts (the error text, Finished, the clock, the watchdog of actor jobs) are in
# sepcore.batch.


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
        clock = ray.remote(ItemClock).options(num_cpus=0, max_restarts=-1, scheduling_strategy=here)
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


# ---------------------------------------------------------------- Ray Data


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
