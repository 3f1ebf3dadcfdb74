"""demo: the main job on the embedded default (local Ray, local files).

For now it renders the demo dataset from the built-in corpus, reads it back with the
Slakh reader and prepares training shards for the target instrument; every stage
skips the work a previous run finished. Later stages (train, separate, evaluate,
report) join as they land.

    sep demo                       # writes under ./out/demo
    sep demo output=s3://bucket/demo tracks=10
"""

from __future__ import annotations

import collections
import logging
import sys
from typing import Any

from pydantic import Field

from ray_jobs import prepare, render
from ray_jobs.common import Job, JobConfig
from sepcore import storage
from sepcore.slakh import list_tracks

log = logging.getLogger("sep.demo")


class DemoConfig(JobConfig):
    output: str = Field("out/demo", description="URI where the demo writes everything")
    tracks: int = Field(40, ge=2, description="songs in the demo dataset")
    seed: int = Field(0, description="seed of the demo corpus and the splits")
    target: str = Field("guitar", description="instrument the demo separates")


def run(cfg: DemoConfig) -> dict[str, Any]:
    data = storage.join(storage.normalize_uri(cfg.output), "data")
    render_cfg = render.RenderConfig(
        midi="demo", output=data, tracks=cfg.tracks, seed=cfg.seed, num_cpus=cfg.num_cpus
    )
    rendered = render.run(render_cfg)
    tracks = list_tracks(data)
    classes = collections.Counter(c for t in tracks for c in t.classes)
    log.info("demo: %d tracks read back from %s", len(tracks), data)
    for name, count in classes.most_common():
        log.info("demo:   %-22s in %d tracks", name, count)
    shards = storage.join(storage.normalize_uri(cfg.output), f"shards_{cfg.target}")
    prepare_cfg = prepare.PrepareConfig(
        sources=[prepare.SourceConfig(kind="slakh", uri=data)], output=shards,
        target=cfg.target, seed=cfg.seed, num_cpus=cfg.num_cpus,
    )  # fmt: skip
    prepared = prepare.run(prepare_cfg)
    log.info("demo: %d training rows in %s", prepared["counts"]["rows"], shards)
    failed = rendered["failed"] + prepared["failed"]
    problems = [r["error"] for r in (rendered, prepared) if r.get("status") == "failed"]
    return {
        "counts": {**rendered["counts"], "tracks_read_back": len(tracks),
                   **{f"prepare_{k}": v for k, v in prepared["counts"].items()}},  # fmt: skip
        "figures": {**rendered["figures"], "tracks_per_class": dict(classes.most_common()),
                    "rows_per_split": prepared["figures"]["rows_per_split"]},  # fmt: skip
        "failed": failed,
        "data": data,
        "shards": shards,
        **({"status": "failed", "error": "; ".join(problems)} if problems else {}),
    }


JOB = Job("demo", DemoConfig, run, "Run the main job end to end on the embedded default.")
main = JOB.main

if __name__ == "__main__":
    sys.exit(main())
