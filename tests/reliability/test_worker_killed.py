"""Worker killed mid-separation (issue 10, item 1).

50 files go through the separate job; once some outputs exist, one separator actor's
process is killed with SIGKILL while both actors are inside a file. Ray restarts the
actor and retries its file (Ray Data's actor pools default to unlimited restarts and
task retries). Pass: exit 0; exactly 50 stem sets, each output key once, every stem
decodable; 50 manifest rows; at least one retry recorded (``attempts`` > 1).
"""

from __future__ import annotations

import os
import signal
import threading
import time

import pytest

from ray_jobs import separate as job
from sepcore.io import storage
from sepcore.separate import state as separate_state
from tests.support.reliability import (
    check_stems,
    in_progress,
    manifest_rows,
    ray_actor_processes,
    read_summary,
    records,
    stem_files,
    tiny_checkpoint,
    tone_library,
)

FILES = 50


pytestmark = pytest.mark.usefixtures("local_ray")  # tests/conftest.py


class Killer(threading.Thread):
    """Kills one separator actor once ``after`` files are done and both actors are busy."""

    def __init__(self, output: str, after: int):
        super().__init__(daemon=True)
        self.output, self.after = output, after
        self.killed: dict[int, str] = {}
        self.victim_files: set[str] = set()
        self.stop = threading.Event()

    def run(self) -> None:
        while not self.stop.is_set():
            busy = in_progress(self.output)
            if len(records(self.output)) >= self.after and len(busy) == 2:
                actors = ray_actor_processes("Separator")
                if actors:
                    pid = min(actors)
                    os.kill(pid, signal.SIGKILL)
                    self.killed[pid], self.victim_files = actors[pid], busy
                    return
            time.sleep(0.02)


def test_a_killed_separator_actor_costs_a_retry_and_nothing_else(tmp_path):
    lib = tmp_path / "library"
    tone_library(str(lib), FILES, seconds=3.0)
    ckpt = tiny_checkpoint(str(tmp_path / "ckpt"))
    out = storage.normalize_uri(str(tmp_path / "out"))
    killer = Killer(out, after=8)
    killer.start()
    try:
        code = job.main([f"library={lib}", f"output={out}", f"checkpoint={ckpt}",
                         "inference={batch_size: 32, pool_size: 2}"])  # fmt: skip
    finally:
        killer.stop.set()
        killer.join()
    assert killer.killed, "no separator actor was found to kill"
    assert code == 0

    rows = manifest_rows(out)
    assert len(rows) == FILES and {r["status"] for r in rows.values()} == {"ok"}
    files = stem_files(out)
    # exactly one instrument and one rest per source, nothing else
    assert sorted(files) == sorted(
        os.path.relpath(storage.local_path(r[k]), storage.local_path(storage.join(out, "stems")))
        for r in rows.values() for k in ("instrument_uri", "rest_uri")
    )  # fmt: skip
    assert len({os.path.dirname(f) for f in files}) == FILES
    for row in rows.values():
        check_stems(row)
    retried = {r["relative"]: r["attempts"] for r in rows.values() if r["attempts"] > 1}
    assert retried, "no retry recorded"
    assert all(n == 2 for n in retried.values())  # one kill, one extra attempt per file
    retried_keys = {separate_state.key(r["source"]) for r in rows.values() if r["attempts"] > 1}
    assert retried_keys <= killer.victim_files  # only a file that was in the killed actor
    summary = read_summary(out)
    assert summary["counts"]["ok"] == FILES and summary["retried"] == len(retried)
    assert not storage.exists(storage.join(out, job.STARTED))
