"""Stages of a pipeline run in order, each reused when its output is done with the same key.

A stage is one job writing one output folder. Its key is a hash of its settings and of
the keys of the stages it reads (:func:`stage_key`); the job records the key in its
``summary.json`` (as ``stage_key``). A stage is *done* when that summary says ``status:
ok`` with the same key: a rerun reuses it. An output left by other settings or inputs
is deleted and made again; one left by a stopped run with the same settings (its
``config.yaml`` but no summary) is resumed by the job itself.

The step counter is fixed when the run starts (``demo [3/9] train hourglass: ...``), and
a stage that does not run says why.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import yaml

from sepcore.errors import SepError
from sepcore.io import storage

SUMMARY = "summary.json"
RESOLVED_CONFIG = "config.yaml"
#: Settings that change where or how fast a stage runs, not what it makes.
IGNORED = ("num_cpus",)


def settings_of(config: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in config.items() if k not in IGNORED}


def stage_key(config: dict[str, Any], inputs: list[str]) -> str:
    """What a stage's result depends on: its settings and its inputs' keys."""
    text = json.dumps({"config": settings_of(config), "inputs": inputs}, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def read_summary(output: str) -> dict[str, Any] | None:
    """``<output>/summary.json``, or None when there is none (or it cannot be read)."""
    uri = storage.join(output, SUMMARY)
    try:
        return json.loads(storage.read_text(uri)) if storage.exists(uri) else None
    except (SepError, json.JSONDecodeError):
        return None


def is_done(output: str, key: str) -> bool:
    summary = read_summary(output)
    return bool(summary and summary.get("status") == "ok" and summary.get("stage_key") == key)


def stale_reason(output: str, config: dict[str, Any], key: str) -> str | None:
    """Why what is in ``output`` cannot be kept for this stage (None: keep it, or nothing there)."""
    summary = read_summary(output)
    if summary is not None:
        return None if summary.get("stage_key") == key else "settings or inputs changed"
    uri = storage.join(output, RESOLVED_CONFIG)
    if storage.exists(uri):
        before = yaml.safe_load(storage.read_text(uri)) or {}
        same = settings_of(before) == settings_of(json.loads(json.dumps(config, default=str)))
        return None if same else "a stopped run with other settings is there"
    return "it holds files this run did not make" if storage.list_files(output) else None


def fmt_seconds(seconds: float) -> str:
    minutes, secs = divmod(int(round(seconds)), 60)
    return f"{minutes} min {secs:02d} s" if minutes else f"{secs} s"


@dataclass
class StageRecord:
    name: str
    output: str
    seconds: float  # what the stage cost when it ran (now or in an earlier run)
    cached: bool
    key: str
    summary: dict[str, Any]


class Stages:
    """The stages of one run: ``total`` is fixed from the start, each one logs a ``[i/n]`` line.

    :meth:`run` calls ``call(key)`` (which must return the job's summary, carrying
    ``stage_key: key``) unless the stage is done before; :meth:`skip` counts a stage
    that does not run.
    """

    def __init__(self, total: int, run_name: str = "demo", log: logging.Logger | None = None):
        self.total, self.run_name, self.count = total, run_name, 0
        self.log = log or logging.getLogger(f"sep.{run_name}")
        self.t0 = time.monotonic()
        self.records: dict[str, StageRecord] = {}

    def elapsed(self) -> float:
        return time.monotonic() - self.t0

    def spent(self, overhead_s: float = 0.0) -> float:
        """Seconds the stages so far cost when they ran, plus ``overhead_s``."""
        return overhead_s + sum(r.seconds for r in self.records.values())

    def key(self, name: str) -> str:
        return self.records[name].key

    def _label(self, name: str) -> str:
        self.count += 1
        return f"{self.run_name} [{self.count}/{max(self.total, self.count)}] {name}"

    def skip(self, name: str, why: str) -> None:
        self.log.info("%s: %s", self._label(name), why)

    def run(self, name: str, output: str, config: dict[str, Any], inputs: list[str],
            call: Callable[[str], dict[str, Any]], cache: bool = True) -> dict[str, Any]:  # fmt: skip
        """The stage's summary: from an earlier run with the same key, or from ``call(key)``."""
        label, output = self._label(name), storage.normalize_uri(output)
        key = stage_key(config, [self.key(i) for i in inputs])
        before = read_summary(output)
        if cache and before and before.get("status") == "ok" and before.get("stage_key") == key:
            self.log.info("%s: done before, same settings (%s then); reusing %s", label,
                          fmt_seconds(before["seconds"]), output)  # fmt: skip
            self.records[name] = StageRecord(name, output, float(before["seconds"]), True, key, before)
            return before
        stale = stale_reason(output, config, key) if cache else None
        if stale:
            self.log.info("%s: %s; starting %s afresh", label, stale, output)
            storage.delete(output, recursive=True)
        self.log.info("%s: started (%s into the %s)", label, fmt_seconds(self.elapsed()), self.run_name)
        summary = call(key)
        if summary["status"] != "ok":
            raise SepError(f"{self.run_name}: stage '{name}' failed: {summary.get('error')} "
                           f"(see {storage.join(output, SUMMARY)})")  # fmt: skip
        self.records[name] = StageRecord(name, output, float(summary["seconds"]), False, key, summary)
        self.log.info("%s: done in %s (%s into the %s)", label, fmt_seconds(summary["seconds"]),
                      fmt_seconds(self.elapsed()), self.run_name)  # fmt: skip
        return summary
