"""Benchmark of the prepare job: per-core throughput and whole-cluster peak memory.

    .venv/bin/python bench/prepare_bench.py --data out/demo/data --tracks 10 --scale 8

(a) Seconds of audio prepared per second per CPU core, through the Ray job
    (``python -m ray_jobs.prepare`` on a local Ray with ``--cpus`` CPUs; the job's own
    timing, which excludes Ray's start-up but includes its workers' start-up) and through a
    plain single-process loop over the same ``sepcore.prepare.pairs`` functions that also
    writes the same shards and markers, on the scale x N tracks, with the modules the job's
    workers import before their first track imported before its clock starts.
(b) Peak memory of the whole Ray cluster (driver, raylet, GCS, workers and the object
    store, as the summed proportional set size of the job's process tree, so shared
    object-store pages count once) for N and scale x N tracks.

Data sets of any size are made from the given Slakh-layout folder by hard-linking
its tracks again and again under new track ids.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))


def pss_kib(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/smaps_rollup") as fh:
            for line in fh:
                if line.startswith("Pss:"):
                    return int(line.split()[1])
    except OSError:
        return 0
    return 0


def rss_kib(pid: int) -> int:
    """Resident set size, from ``statm`` (cheap; PSS costs ~4 ms of CPU per process)."""
    try:
        with open(f"/proc/{pid}/statm") as fh:
            return int(fh.read().split()[1]) * (os.sysconf("SC_PAGE_SIZE") // 1024)
    except (OSError, IndexError, ValueError):
        return 0


def tree(pid: int) -> list[int]:
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        try:
            with open(f"/proc/{p}/task/{p}/children") as fh:
                todo.extend(int(c) for c in fh.read().split())
        except OSError:
            pass
    return out


def run_measured(cmd: list[str]) -> tuple[int, float]:
    """Run ``cmd``; return (peak summed PSS of its process tree in MiB, wall seconds).

    Ray's local cluster is started by the job process, so raylet, GCS, workers and
    the object store are all in its process tree.
    """
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    peak = [0]
    seen: set[int] = set()

    def sample() -> None:
        # RSS every 0.2 s; the PSS (what is reported) when the RSS passes its last high by
        # 16 MiB, and every second: sampling PSS of every process every 0.2 s took 14-22 % of
        # a core from the job being measured.
        top_rss, last_pss = 0, 0.0
        while proc.poll() is None:
            pids = tree(proc.pid)
            seen.update(pids)
            rss, now = sum(rss_kib(p) for p in pids), time.monotonic()
            if rss > top_rss + 16 * 1024 or now - last_pss >= 1.0:
                peak[0] = max(peak[0], sum(pss_kib(p) for p in pids))
                top_rss, last_pss = max(top_rss, rss), now
            time.sleep(0.2)

    t0 = time.monotonic()
    thread = threading.Thread(target=sample, daemon=True)
    thread.start()
    code = proc.wait()
    thread.join()
    if code != 0:
        raise SystemExit(f"{' '.join(cmd)} exited {code}")
    # Ray's detached processes outlive the job by a moment; make sure none of its own keep
    # running (and leave other Ray sessions on the machine alone).
    for pid in seen - {proc.pid}:
        with contextlib.suppress(OSError):
            os.kill(pid, signal.SIGKILL)
    return peak[0] // 1024, time.monotonic() - t0


def make_dataset(source: str, dest: str, tracks: int) -> str:
    names = sorted(n for n in os.listdir(source) if os.path.exists(os.path.join(source, n, "metadata.yaml")))
    if os.path.exists(dest):
        shutil.rmtree(dest)
    for i in range(tracks):
        src = os.path.join(source, names[i % len(names)])
        dst = os.path.join(dest, f"Track{i + 1:05d}")
        shutil.copytree(src, dst, copy_function=os.link)
    return dest


def plain_loop(data: str, out: str) -> tuple[float, float]:
    """(audio seconds, wall seconds) of the per-track step in one process, shards written."""
    shutil.rmtree(out, ignore_errors=True)
    import torch

    from sepcore.data.sources import slakh_tracks
    from sepcore.io import storage
    from sepcore.io.ledger import Ledger
    from sepcore.prepare.mixing import assign_splits
    from sepcore.prepare.pairs import (
        PrepareSpec,
        SkipTrack,
        process_track,
        rows_to_parquet,
        shard_name,
    )

    torch.set_num_threads(1)
    spec = PrepareSpec()
    extractor = spec.extractor()
    try:  # what the job's workers import before their first track
        from sepcore.prepare.steps import warm_up
    except ImportError:  # a checkout from before the warm pool (a "before" figure)
        import pyloudnorm  # noqa: F401
    else:
        warm_up(spec)
    t0 = time.monotonic()
    tracks = slakh_tracks(data)
    splits = assign_splits([t.track_id for t in tracks])
    audio = 0.0
    done = Ledger(storage.join(out, "_done"))
    for track in tracks:
        try:
            rows, info = process_track(track, splits[track.track_id], spec, extractor)
        except SkipTrack:
            continue
        name = shard_name(track.track_id)
        storage.write_bytes(storage.join(out, "shards", name + ".parquet"), rows_to_parquet(rows))
        done.put(track.track_id, {"rows": len(rows)})
        audio += info["seconds"]
    return audio, time.monotonic() - t0


def ray_job(data: str, out: str, cpus: int) -> tuple[float, float, int]:
    """(audio seconds, job seconds, peak MiB) of the Ray job (into a fresh ``out``)."""
    shutil.rmtree(out, ignore_errors=True)  # a rerun would find every track done before
    cmd = [sys.executable, "-m", "ray_jobs.prepare", "-c", "configs/prepare_demo.yaml",
           f"sources=[{{kind: slakh, uri: {data}}}]", f"output={out}", f"num_cpus={cpus}"]  # fmt: skip
    peak, _ = run_measured(cmd)
    with open(os.path.join(out, "summary.json")) as fh:
        summary = json.load(fh)
    return summary["figures"]["audio_seconds"], summary["seconds"], peak


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default="out/demo/data", help="Slakh-layout folder (sep demo makes one)")
    parser.add_argument("--tracks", type=int, default=10, help="N")
    parser.add_argument("--scale", type=int, default=8, help="memory is compared for N and scale x N")
    parser.add_argument("--cpus", type=int, default=2)
    parser.add_argument("--work", default=None, help="scratch folder (default: a temp dir)")
    args = parser.parse_args()
    os.chdir(os.path.join(os.path.dirname(__file__), ".."))
    work = args.work or tempfile.mkdtemp(prefix="prepare-bench-")
    small = make_dataset(args.data, os.path.join(work, "data_n"), args.tracks)
    large = make_dataset(args.data, os.path.join(work, "data_8n"), args.tracks * args.scale)

    audio_p, wall_p = plain_loop(large, os.path.join(work, "plain"))  # the same tracks as the large run
    plain_rate = audio_p / wall_p
    audio_r, wall_r, peak_n = ray_job(small, os.path.join(work, "ray_n"), args.cpus)
    ray_rate = audio_r / wall_r / args.cpus
    audio_l, wall_l, peak_l = ray_job(large, os.path.join(work, "ray_8n"), args.cpus)
    ray_rate_l = audio_l / wall_l / args.cpus
    print(f"plain loop, 1 process, {args.tracks * args.scale} tracks: {audio_p:8.1f} s audio in {wall_p:6.1f} s = {plain_rate:6.1f} x real time per core")
    print(f"ray job, {args.tracks:4d} tracks, {args.cpus} CPUs: {audio_r:8.1f} s audio in {wall_r:6.1f} s = {ray_rate:6.1f} x real time per core")
    print(f"ray job, {args.tracks * args.scale:4d} tracks, {args.cpus} CPUs: {audio_l:8.1f} s audio in {wall_l:6.1f} s = {ray_rate_l:6.1f} x real time per core")
    print(f"ray / plain per core       : {ray_rate / plain_rate:.2f} (N), {ray_rate_l / plain_rate:.2f} ({args.scale}N)")
    print(f"peak cluster memory (PSS)  : {peak_n} MiB for {args.tracks} tracks, {peak_l} MiB for {args.tracks * args.scale} tracks, ratio {peak_l / peak_n:.2f}")
    if not args.work:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
