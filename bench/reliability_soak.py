"""Reliability soak (not in CI): kill workers, kill drivers, break S3, many files, many rounds.

Usage: ``python bench/reliability_soak.py [--files 300] [--rounds 3] [--seconds 3]
[--kills 3] [--slowdown 0.1] [--reset 0.05] [--work /tmp/sep-soak] [--cpus N]``

Repeats the reliability tests' scenarios (``tests/reliability/``) at a larger scale,
each round on a fresh library of ``--files`` short WAVs plus the bad-input corpus:

1. **worker kills**: the separate job runs while a thread SIGKILLs a separator actor
   ``--kills`` times (each when both actors are inside a file);
2. **driver kill and rerun**: ``python -m ray_jobs.separate`` is SIGKILLed at a random
   point, then run again; the rerun must skip exactly the files already recorded;
3. **S3 faults**: the job runs on ``s3://`` through :class:`FaultyS3Proxy` (503
   SlowDown and connection resets on a share of requests) in front of moto.

Each scenario's stems are compared with a clean run's (keys and bytes) and every
loss is reported: a good file without both stems, a stem that differs, a bad file
without its error, a temporary key left, NaN or Inf in a stem. Exit status 1 when any
round lost anything. Prints one line per scenario and round, then a JSON summary.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests.support, from any folder
import ray

from ray_jobs import separate as job
from sepcore.io import storage
from sepcore.separate import state as separate_state
from tests.support.reliability import (
    BAD_INPUTS,
    MAX_SECONDS,
    bad_inputs,
    check_stems,
    in_progress,
    job_command,
    manifest_rows,
    ray_actor_processes,
    records,
    stem_files,
    tiny_checkpoint,
    tone_library,
)
from tests.support.s3 import (
    S3Server,
    list_keys,
    list_multipart_uploads,
    s3_client,
    s3_environment,
    temporary_bucket,
)
from tests.support.s3_faults import FaultyS3Proxy


def _args(library: str, ckpt: str, output: str) -> list[str]:
    return [f"library={library}", f"checkpoint={ckpt}", f"output={output}",
            f"decode={{timeout_s: 60, max_seconds: {MAX_SECONDS}}}",
            "inference={batch_size: 32, pool_size: 2}"]  # fmt: skip


def losses(output: str, reference: dict[str, bytes], files: dict[str, bytes] | None = None) -> list[str]:
    """What an output lacks or has wrong, against a clean run's stems."""
    problems = []
    rows = manifest_rows(output)
    expected = {rel: outcome for rel, outcome in BAD_INPUTS.values()}
    for rel, row in rows.items():
        outcome = expected.get(rel, "ok")
        if outcome == "ok" and row["status"] not in ("ok", "skipped"):
            problems.append(f"{rel}: {row['status']} {row['error']}")
        elif outcome != "ok" and row["error_class"] != outcome:
            problems.append(f"{rel}: expected {outcome}, got {row['status']} {row['error_class']}")
        elif outcome == "ok":
            try:
                check_stems(row)
            except AssertionError as exc:
                problems.append(f"{rel}: {exc}")
    files = stem_files(output) if files is None else files
    problems += [f"missing {k}" for k in reference if k not in files]
    problems += [f"extra {k}" for k in files if k not in reference]
    problems += [f"differs {k}" for k in reference if k in files and files[k] != reference[k]]
    return problems


class Killer(threading.Thread):
    def __init__(self, output: str, kills: int, total: int):
        super().__init__(daemon=True)
        self.output, self.kills, self.total = output, kills, total
        self.done = 0
        self.stop = threading.Event()

    def run(self) -> None:
        marks = sorted(random.sample(range(self.total // 10, self.total * 9 // 10), self.kills))
        while not self.stop.is_set() and self.done < self.kills:
            if len(records(self.output)) >= marks[self.done] and len(in_progress(self.output)) == 2:
                actors = ray_actor_processes("Separator")
                if actors:
                    os.kill(random.choice(sorted(actors)), signal.SIGKILL)
                    self.done += 1
                    time.sleep(2.0)
            time.sleep(0.02)


def worker_kills(lib: str, ckpt: str, work: str, reference: dict[str, bytes], kills: int, total: int) -> dict:
    out = storage.normalize_uri(os.path.join(work, "worker_kills"))
    killer = Killer(out, kills, total)
    killer.start()
    code = job.main(_args(lib, ckpt, out))
    killer.stop.set()
    killer.join()
    rows = manifest_rows(out)
    retried = sum((r["attempts"] or 1) > 1 for r in rows.values())
    return {"exit": code, "kills": killer.done, "retried": retried, "losses": losses(out, reference)}


def driver_kill(lib: str, ckpt: str, work: str, reference: dict[str, bytes], total: int) -> dict:
    out = storage.normalize_uri(os.path.join(work, "driver_kill"))
    env = {**os.environ, "RAY_ADDRESS": ray.get_runtime_context().gcs_address}
    cmd = job_command("separate", *_args(lib, ckpt, out))
    at = random.randrange(total // 10, total * 9 // 10)
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    while len(records(out)) < at and proc.poll() is None:
        time.sleep(0.05)
    proc.kill()
    proc.wait()
    folder = os.path.join(storage.local_path(out), job.RECORDS)
    done = {k for k in records(out)  # failed files are done again by design; ok ones not
            if json.load(open(os.path.join(folder, k + ".json")))["status"] == "ok"}  # fmt: skip
    rerun = subprocess.run(cmd, env=env, capture_output=True)
    rows = manifest_rows(out)
    skipped = {separate_state.key(r["source"]) for r in rows.values() if r["status"] == "skipped"}
    problems = losses(out, reference)
    if skipped != done:
        problems.append(f"rerun skipped {len(skipped)} files, {len(done)} were recorded ok")
    return {"exit": rerun.returncode, "killed_after": len(done), "losses": problems}


def s3_faults(lib: str, ckpt_local: str, reference: dict[str, bytes], slowdown: float, reset: float) -> dict:
    with S3Server() as server, FaultyS3Proxy(server.endpoint_url, slowdown, reset,
                                             seed=random.randrange(1 << 30)) as proxy:  # fmt: skip
        proxy.enabled = False
        with s3_environment(proxy.endpoint_url), temporary_bucket() as bucket:
            for folder, _, names in os.walk(lib):
                for name in names:
                    path = os.path.join(folder, name)
                    storage.upload(path, storage.join(bucket, "music", os.path.relpath(path, lib)))
            ckpt = storage.join(bucket, "model")
            for name in os.listdir(ckpt_local):
                storage.upload(os.path.join(ckpt_local, name), storage.join(ckpt, name))
            ray.shutdown()  # the actors must start inside this environment
            ray.init(num_cpus=_CPUS, include_dashboard=False)
            out = storage.join(bucket, "out")
            proxy.enabled = True
            code = job.main(_args(storage.join(bucket, "music"), ckpt, out))
            proxy.enabled = False
            client, name = s3_client(), bucket.removeprefix("s3://")
            keys = list_keys(bucket, "out/stems/")
            files = {k[len("out/stems/"):]: client.get_object(Bucket=name, Key=k)["Body"].read()
                     for k in keys}  # fmt: skip
            problems = losses(out, reference, files)
            left = [k for k in list_keys(bucket) if storage.is_temporary(k) or "/_records/" in k
                    or "/_started/" in k] + list_multipart_uploads(bucket)  # fmt: skip
            problems += [f"left behind: {k}" for k in left]
            ray.shutdown()
    ray.init(num_cpus=_CPUS, include_dashboard=False)
    return {"exit": code, "faults": {k: v for k, v in proxy.counts.items() if k != "forward"},
            "requests": sum(proxy.counts.values()), "losses": problems}


_CPUS = 2


def main(argv: list[str] | None = None) -> int:
    global _CPUS
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--files", type=int, default=300)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--kills", type=int, default=3)
    parser.add_argument("--slowdown", type=float, default=0.1)
    parser.add_argument("--reset", type=float, default=0.05)
    parser.add_argument("--cpus", type=int, default=2)
    parser.add_argument("--work", default="/tmp/sep-soak")
    args = parser.parse_args(argv)
    _CPUS = args.cpus
    os.environ["AWS_MAX_ATTEMPTS"] = os.environ.get("AWS_MAX_ATTEMPTS", "5")
    results = []
    ray.init(num_cpus=args.cpus, include_dashboard=False)
    try:
        for rnd in range(args.rounds):
            random.seed(rnd)
            work = os.path.join(args.work, f"round{rnd}")
            shutil.rmtree(work, ignore_errors=True)
            lib = os.path.join(work, "library")
            tone_library(os.path.join(lib, "good"), args.files, seconds=args.seconds)
            bad_inputs(lib, long_seconds=60.0)
            total = args.files + len(BAD_INPUTS)
            ckpt = tiny_checkpoint(os.path.join(work, "ckpt"), seed=rnd)
            clean = storage.normalize_uri(os.path.join(work, "clean"))
            t0 = time.monotonic()
            assert job.main(_args(lib, ckpt, clean)) == 0
            reference = stem_files(clean)
            clean_s = time.monotonic() - t0
            scenarios = {
                "worker_kills": (worker_kills, (lib, ckpt, work, reference, args.kills, total)),
                "driver_kill": (driver_kill, (lib, ckpt, work, reference, total)),
                "s3_faults": (s3_faults, (lib, ckpt, reference, args.slowdown, args.reset)),
            }
            for name, (fn, fn_args) in scenarios.items():
                t0 = time.monotonic()
                res = {"round": rnd, "scenario": name, **fn(*fn_args), "seconds": round(time.monotonic() - t0, 1),
                       "clean_seconds": round(clean_s, 1)}  # fmt: skip
                results.append(res)
                state = "OK" if res["exit"] == 0 and not res["losses"] else "LOSS"
                print(f"round {rnd} {name}: {state} ({len(res['losses'])} problems, "
                      f"{res['seconds']} s) {json.dumps({k: v for k, v in res.items() if k != 'losses'})}",
                      flush=True)  # fmt: skip
                for problem in res["losses"][:20]:
                    print(f"    {problem}", flush=True)
    finally:
        ray.shutdown()
    print(json.dumps(results, indent=1))
    return 0 if all(r["exit"] == 0 and not r["losses"] for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
