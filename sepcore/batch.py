"""The plain skeleton of a batch job: one item at a time, recorded, judged as a whole.

What every batch job does around its items, without Ray (``ray_jobs.common`` adds the Ray
parts): run each item so that one bad item cannot stop the others (:func:`guarded`),
report progress as items end (:class:`Progress`), judge the run by the share of items
that failed (:func:`verdict`), refuse an output made with other settings
(:func:`check_settings`), and give each item a time limit that is enforced from outside
the stuck thread (:class:`ItemWatchdog`, inside a long-lived worker; task jobs use
``ray_jobs.common.ItemTasks``). What a previous run finished is in a
:class:`sepcore.io.ledger.Ledger`.

A per-item unit of work (a track, a song, a file) can hang where Python cannot stop it:
a native livelock (MKL/OpenMP), a stuck read. Every batch job therefore gives each item
a time limit (its ``item_timeout_s`` key) and records the item as failed instead of
waiting for it.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import functools
import hashlib
import json
import logging
import os
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

from sepcore import faults
from sepcore.config import changed_keys
from sepcore.errors import ConfigError, SepError
from sepcore.io import storage
from sepcore.io.ledger import Ledger
from sepcore.stages import SUMMARY

log = logging.getLogger("sep")

#: Folder of an output holding the time-limit failures of runs of an actor job.
TIMEOUTS = "_timeouts"


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
    text = json.dumps(settings, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


# ---------------------------------------------------------------- time limit per item


def time_limit_error(item: str, limit_s: float, key: str, ended: str) -> str:
    """The error recorded for an item that ran past its time limit."""
    return f"{item}: no result within {limit_s:g} s (time limit per item, key {key}); {ended}"


def timeout_ledger(output: str) -> str:
    """A fresh folder below ``output`` for one run's time-limit failures (see :class:`ItemWatchdog`)."""
    run = dt.datetime.now(dt.timezone.utc).strftime("%Y%m%dT%H%M%S") + "-" + os.urandom(4).hex()
    return storage.join(output, TIMEOUTS, run)


def clear_timeouts(output: str) -> None:
    """Delete the time-limit records of ``output``'s runs (once the run's results are in)."""
    storage.delete(storage.join(output, TIMEOUTS), recursive=True)


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
        record = Ledger(self.ledger).get(item)
        return record["error"] if record else None

    def _write(self, item: str, message: str) -> None:
        assert self.ledger is not None
        Ledger(self.ledger).put(item, {"error": message})

    @contextlib.contextmanager
    def running(self, item: str, record: Callable[[str], None] | None = None) -> Iterator[None]:
        """Watch ``item`` while the block runs; ``record(message)`` writes its failure."""
        import threading

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


@dataclass(frozen=True)
class Finished:
    """What became of one item of ``ray_jobs.common.ItemTasks``: the task's value, or why there is none."""

    item: str
    value: Any = None
    error: str | None = None


class ItemClock:
    """How long each running task of ``ray_jobs.common.ItemTasks`` has run (a Ray actor there).

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
