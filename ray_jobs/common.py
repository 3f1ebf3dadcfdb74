"""What every job shares: arguments, config validation, Ray start-up, summary.json.

A job is declared once with :class:`Job` (its name, config class and run function);
``python -m ray_jobs.<job>`` and ``sep <job>`` both end in :func:`Job.main`, so the
arguments are identical either way::

    sep render -c configs/render_demo.yaml tracks=10 output=file:///tmp/demo

Exit status: 0 when the job finished (items that failed are recorded in the summary),
1 when the job itself failed, 2 for an invalid configuration (checked before Ray
starts).
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
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import yaml
from pydantic import Field

from sepcore import storage
from sepcore.config import Config, describe, load_config, to_plain
from sepcore.errors import ConfigError, SepError

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
        _setup_logging()
        try:
            summary = run_job(self, cfg)
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


def _setup_logging() -> None:
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
