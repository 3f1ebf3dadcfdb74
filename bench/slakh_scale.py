"""Slakh-scale run of the prepare job: 2,100 Slakh-layout tracks read from S3 on loopback.

    .venv/bin/python bench/slakh_scale.py --tracks 2100 --fraction 8 --storage s3 --cpus 2
    taskset -c 1 .venv/bin/python bench/slakh_scale.py --tracks 64 --cpus 1    # a quick try

The set (made once under ``out/slakh_scale/tracks``, reused by later runs): track ``i``
is a 10 s window of one of the demo songs that have a guitar stem (``out/demo/data``,
``sep demo`` renders it), at an offset of its own, every stem at a gain of its own
(uniform in +-6 dB), all scaled together to peak at most -1 dBFS; stems and ``mix.flac``
(their sum) as mono 44.1 kHz 16-bit FLAC, ``metadata.yaml`` adapted from the song's, in
Slakh2100's split folders (train/validation/test in 1500/375/225 proportions).

The bench (a) makes or reuses the set, and hard-links a view of the first ``--tracks``
tracks and one of the first 1/``--fraction`` of each split; (b) with ``--storage s3``
starts moto's S3 server in this process and uploads both views from a subprocess
(``auto``: s3 when the memory available holds the set, else file://, saying why); (c)
runs ``python -m ray_jobs.prepare -c configs/prepare_demo.yaml`` on each view, sampling
the memory of the job's process tree (driver, GCS, raylet, workers, object store; not
this process nor its S3 server): its RSS every 0.2 s, its summed proportional set size
at each new RSS high and every ``--pss-every`` seconds (:func:`run_measured`); a run
whose Ray node dies or that runs past ``--job-timeout`` is ended and tried again
(``--retries``); (d) prints tracks, audio seconds and job seconds from the job's
``summary.json``, x real time per core (overall and between the first and last track
done), the peak memory of each run and their ratio, the S3 server's CPU, the shards'
bytes, the upload time, the set's bytes, how long listing the set's metadata takes, the
GET bandwidth of one client process and the rate of FLAC decoding alone. Shards are written to file:// (``--output-storage s3``: to the
same server, which holds them in memory too) and deleted after each run.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from multiprocessing import get_context
from typing import Any

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), ".."))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from prepare_bench import pss_kib, tree  # noqa: E402

RATE = 44100
SECONDS = 10.0
GAIN_DB = 6.0
PEAK = 10 ** (-1 / 20)
#: Slakh2100's split sizes (train, validation, test); a set of N tracks keeps the proportions.
SLAKH_SPLITS = (("train", 1500), ("validation", 375), ("test", 225))
#: Slakh2100: about 145 hours of mixture audio in about 100 GB.
SLAKH_HOURS, SLAKH_BYTES = 145.0, 100e9
BUCKET = "slakh-scale"
MIB = 1 << 20
PAGE_KIB = os.sysconf("SC_PAGE_SIZE") // 1024
#: A new RSS high of the job's tree (since the last PSS sample) by this much takes a PSS sample.
RSS_STEP_KIB = 16 * 1024


# ---------------------------------------------------------------- the data set


def demo_songs(demo: str) -> list[str]:
    """The demo songs (folder names) with a guitar stem: every track of the set has one."""
    import yaml

    out = []
    for name in sorted(os.listdir(demo)):
        meta = os.path.join(demo, name, "metadata.yaml")
        if not os.path.exists(meta):
            continue
        with open(meta) as fh:
            stems = yaml.safe_load(fh)["stems"]
        if any(s.get("inst_class") == "Guitar" and s.get("audio_rendered") for s in stems.values()):
            out.append(name)
    if not out:
        raise SystemExit(f"no song with a guitar stem in {demo} (run `sep demo` first)")
    return out


def track_name(i: int) -> str:
    return f"Track{i + 1:05d}"


def _window(i: int, song: int, uses: int, length: int) -> int:
    """Start sample of track ``i``'s window: the golden-ratio sequence over the song's
    ``uses``-th reuse, so the windows of one song spread over all of it."""
    span = max(0, length - int(SECONDS * RATE))
    frac = (uses * 0.6180339887 + 0.37 * (song % 2)) % 1.0
    return int(frac * span)


def _track_metadata(
    meta: dict[str, Any], song: str, offset: int, gains: dict[str, float]
) -> dict[str, Any]:
    keep = ("audio_dir", "style", "tempo_bpm", "renderer", "collection", "piece_id", "title")
    stems = {}
    for sid, sm in meta["stems"].items():
        if sid not in gains:
            continue
        entry = {
            k: v for k, v in sm.items() if k not in ("integrated_loudness", "loudness_gain_db")
        }
        stems[sid] = {**entry, "midi_saved": False}
    return {
        **{k: meta[k] for k in keep if k in meta},
        "channels": 1,
        "sample_rate": RATE,
        "seconds": SECONDS,
        "derived_from": {
            "track": song,
            "offset_s": round(offset / RATE, 4),
            "gains_db": {k: round(v, 3) for k, v in gains.items()},
        },
        "stems": stems,
    }


def _write_track(
    dest: str,
    i: int,
    song_dir: str,
    meta: dict[str, Any],
    audio: dict[str, Any],
    offset: int,
    seed: int,
) -> int:
    """Write track ``i`` (atomically: a temporary folder renamed); returns its bytes."""
    import numpy as np
    import soundfile as sf
    import yaml

    rng = np.random.default_rng([seed, i])
    n = int(SECONDS * RATE)
    gains = {sid: float(rng.uniform(-GAIN_DB, GAIN_DB)) for sid in sorted(audio)}
    stems = {}
    for sid, x in audio.items():
        cut = np.zeros(n, dtype=np.float32)
        part = x[offset : offset + n]
        cut[: len(part)] = part
        stems[sid] = cut * np.float32(10 ** (gains[sid] / 20))
    mix = np.sum(list(stems.values()), axis=0)
    peak = max(float(np.abs(mix).max()), *(float(np.abs(s).max()) for s in stems.values()), 1e-9)
    scale = np.float32(min(1.0, PEAK / peak))
    final = os.path.join(dest, track_name(i))
    tmp = final + ".part"
    shutil.rmtree(tmp, ignore_errors=True)
    os.makedirs(os.path.join(tmp, "stems"))
    for sid, s in stems.items():
        sf.write(
            os.path.join(tmp, "stems", f"{sid}.flac"),
            s * scale,
            RATE,
            format="FLAC",
            subtype="PCM_16",
        )
    sf.write(os.path.join(tmp, "mix.flac"), mix * scale, RATE, format="FLAC", subtype="PCM_16")
    with open(os.path.join(tmp, "metadata.yaml"), "w") as fh:
        yaml.safe_dump(
            _track_metadata(meta, os.path.basename(song_dir), offset, gains), fh, sort_keys=False
        )
    os.rename(tmp, final)
    return sum(os.path.getsize(p) for p in files_below(final))


def _make_song_tracks(job: tuple[str, str, int, list[tuple[int, int]], int]) -> int:
    """Every missing track cut from one demo song (decoded once, as mono); returns how many."""
    import numpy as np
    import soundfile as sf
    import yaml

    dest, song_dir, song, todo, seed = job
    with open(os.path.join(song_dir, "metadata.yaml")) as fh:
        meta = yaml.safe_load(fh)
    audio_dir = os.path.join(song_dir, meta.get("audio_dir") or "stems")
    audio = {}
    for sid, sm in sorted(meta["stems"].items()):
        path = os.path.join(audio_dir, f"{sid}.flac")
        if sm.get("audio_rendered") and os.path.exists(path):
            x, rate = sf.read(path, dtype="float32", always_2d=True)
            if rate != RATE:
                raise SystemExit(f"{path}: {rate} Hz, expected {RATE}")
            audio[sid] = np.ascontiguousarray(x.mean(axis=1))
    length = max(len(x) for x in audio.values())
    for i, uses in todo:
        _write_track(dest, i, song_dir, meta, audio, _window(i, song, uses, length), seed)
    return len(todo)


def make_tracks(demo: str, dest: str, count: int, jobs: int, seed: int = 0) -> None:
    """Tracks 0..count-1 under ``dest`` (flat), skipping those already there."""
    songs = demo_songs(demo)
    os.makedirs(dest, exist_ok=True)
    todo: dict[int, list[tuple[int, int]]] = {}
    for i in range(count):
        if not os.path.exists(os.path.join(dest, track_name(i), "metadata.yaml")):
            todo.setdefault(i % len(songs), []).append((i, i // len(songs)))
    if not todo:
        return
    work = [(dest, os.path.join(demo, songs[s]), s, t, seed) for s, t in sorted(todo.items())]
    t0 = time.monotonic()
    with get_context("spawn").Pool(max(1, jobs)) as pool:
        made = sum(pool.imap_unordered(_make_song_tracks, work))
    print(f"made {made} tracks in {time.monotonic() - t0:.1f} s ({jobs} processes)", flush=True)


def files_below(folder: str) -> Iterator[str]:
    for base, _, names in os.walk(folder):
        for name in names:
            yield os.path.join(base, name)


def split_counts(n: int) -> list[tuple[str, int]]:
    """Slakh2100's split proportions for ``n`` tracks (train takes the rounding)."""
    total = sum(c for _, c in SLAKH_SPLITS)
    val = round(n * SLAKH_SPLITS[1][1] / total)
    test = round(n * SLAKH_SPLITS[2][1] / total)
    return [("train", n - val - test), ("validation", val), ("test", test)]


def make_view(tracks: str, dest: str, n: int, fraction: int = 1) -> tuple[int, int]:
    """Hard links of tracks 0..n-1 in split folders below ``dest`` (only the first
    1/``fraction`` of each split); returns (tracks, bytes)."""
    shutil.rmtree(dest, ignore_errors=True)
    first, count, size = 0, 0, 0
    for split, k in split_counts(n):
        for i in range(first, first + max(1, math.ceil(k / fraction)) if k else first):
            src, dst = os.path.join(tracks, track_name(i)), os.path.join(dest, split, track_name(i))
            shutil.copytree(src, dst, copy_function=os.link)
            size += sum(os.path.getsize(p) for p in files_below(dst))
            count += 1
        first += k
    return count, size


def stem_count(view: str) -> float:
    stems = [len(os.listdir(os.path.join(b, "stems"))) for b, d, _ in os.walk(view) if "stems" in d]
    return sum(stems) / max(1, len(stems))


# ---------------------------------------------------------------- S3


def memory_available() -> int:
    with open("/proc/meminfo") as fh:
        for line in fh:
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    return 0


def choose_storage(
    wanted: str, set_bytes: int, output_storage: str, shards_bytes: int
) -> tuple[str, str]:
    """(storage, why): s3 when the memory available holds what the server will keep
    (the set, and the shards when they go there) with 6 GiB to spare for the job."""
    held = set_bytes + (shards_bytes if output_storage == "s3" else 0)
    spare = memory_available() - held
    why = f"the server would hold {held / MIB:,.0f} MiB; {memory_available() / MIB:,.0f} MiB are available"
    if wanted == "file":
        return "file", "asked for"
    if spare >= 6 << 30:
        return "s3", why
    if wanted == "s3":
        raise SystemExit(f"--storage s3: too little memory ({why}); use --storage file or auto")
    return "file", f"too little memory for s3 ({why})"


def upload_tree(local: str, uri: str, threads: int = 16) -> tuple[int, float]:
    """Upload every file below ``local`` to ``uri`` in parallel; returns (files, seconds)."""
    from sepcore.io import storage

    files = sorted(files_below(local))
    t0 = time.monotonic()

    def put(path: str) -> None:
        storage.upload(path, storage.join(uri, os.path.relpath(path, local)))

    with ThreadPoolExecutor(threads) as pool:
        list(pool.map(put, files))
    return len(files), time.monotonic() - t0


def probe(kind: str, uri: str, local: str | None = None) -> None:
    """Run in a subprocess (its own interpreter, not the server's): ``list`` times listing
    the set's tracks as the job does; ``read`` GETs every object below ``uri`` with 16
    threads and prints the bandwidth; ``decode`` times decoding every FLAC (one thread);
    ``upload`` puts every file below ``local`` to ``uri`` (16 threads)."""
    from sepcore.data.sources import slakh_tracks
    from sepcore.io import storage

    t0 = time.monotonic()
    if kind == "upload" and local is not None:
        count, seconds = upload_tree(local, uri)
        print(json.dumps({"files": count, "seconds": seconds}))
        return
    if kind == "list":
        n = len(slakh_tracks(uri))
        print(json.dumps({"tracks": n, "seconds": time.monotonic() - t0}))
        return
    files = storage.list_files(uri)
    if kind == "read":
        t0 = time.monotonic()  # the reads alone, the client made and the prefix listed
        with ThreadPoolExecutor(16) as pool:
            size = sum(pool.map(lambda u: len(storage.read_bytes(u)), files))
        print(json.dumps({"files": len(files), "bytes": size, "seconds": time.monotonic() - t0}))
        return
    import soundfile as sf

    stems = [u for u in files if "/stems/" in u and u.endswith(".flac")]
    mixes = [u for u in files if u.endswith("/mix.flac")]
    t0 = time.monotonic()
    for u in stems:
        sf.read(storage.local_path(u), dtype="float32")
    seconds = time.monotonic() - t0
    print(json.dumps({"stem_files": len(stems), "tracks": len(mixes), "seconds": seconds}))


def run_probe(kind: str, uri: str, local: str | None = None) -> dict[str, Any]:
    out = subprocess.run(
        [sys.executable, __file__, "--probe", kind, uri, *([local] if local else [])],
        capture_output=True,
        text=True,
        check=True,
        cwd=ROOT,
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


# ---------------------------------------------------------------- one measured job


def rss_kib(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/statm") as fh:
            return int(fh.read().split()[1]) * PAGE_KIB
    except (OSError, IndexError, ValueError):
        return 0


def _start_time(pid: int) -> str | None:
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().rsplit(")", 1)[1].split()[19]
    except OSError:
        return None


def _end_leftovers(seen: dict[int, str | None]) -> None:
    """End the processes of the job's tree that outlived it (Ray's detached ones), by pid,
    only while each is still the process seen (same start time)."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        alive = [p for p, start in seen.items() if start is not None and _start_time(p) == start]
        for p in alive:
            try:
                os.kill(p, sig)
            except OSError:
                pass
        if not alive:
            return
        time.sleep(2.0)


def _end_group(pgid: int) -> None:
    """SIGTERM to the process group (session) this bench started for a job."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pgid, signal.SIGTERM)


def cpu_seconds_self() -> float:
    """CPU seconds of this process (all threads: the S3 server's)."""
    t = os.times()
    return t.user + t.system


#: What Ray's driver logs when its node died (raylet or one of its agents ended, e.g. by
#: another process's ``pkill -f ray::``): the driver then retries forever.
PROGRESS = re.compile(
    r"^(\d\d):(\d\d):(\d\d) INFO sep\.prepare: prepare \[\d+/\d+\] .*: \d+ chunks"
)
NODE_DIED = "has been marked dead because the detector has missed too many heartbeats"


class JobFailed(Exception):
    """The job exited non-zero, its Ray node died, or it ran past its time limit."""


def _log_says(log: str, text: str) -> bool:
    try:
        with open(log, errors="replace") as fh:
            return text in fh.read()
    except OSError:
        return False


def run_measured(cmd: list[str], log: str, limit_s: float, pss_every: float) -> dict[str, Any]:
    """Run ``cmd`` (its output to ``log``); returns ``peak_mib`` (peak summed PSS of its
    process tree), ``server_cpu_seconds`` (CPU of this process meanwhile besides the
    sampling: the S3 server's), ``sampling_cpu_seconds`` and ``pss_samples``.

    Every 0.2 s the tree's summed RSS is read (cheap); its PSS (~4 ms of CPU a process, on
    the job's cores) when the RSS passes its last high by 16 MiB or ``pss_every`` seconds
    have passed, so the peak PSS is caught at a fraction of the cost. Raises
    :class:`JobFailed` when it fails, its Ray node dies or it runs past ``limit_s``."""
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}  # a local Ray of its own
    cpu0, t0 = cpu_seconds_self(), time.monotonic()
    with open(log, "w") as fh:
        proc = subprocess.Popen(
            cmd, stdout=fh, stderr=subprocess.STDOUT, cwd=ROOT, env=env, start_new_session=True
        )
    peak, why, sampling, passes = [0], [], [0.0], [0]
    seen: dict[int, str | None] = {}

    def check(tick: int) -> bool:
        """Every 5 s: end the job if its node died or it ran too long."""
        if tick % 25 or not (_log_says(log, NODE_DIED) or time.monotonic() - t0 > limit_s):
            return False
        died = _log_says(log, NODE_DIED)
        why.append("its Ray node died" if died else f"it ran past {limit_s:.0f} s")
        _end_group(proc.pid)
        return True

    def sample() -> None:
        tick, last_pss, top_rss = 0, 0.0, 0
        while proc.poll() is None:
            pids = tree(proc.pid)
            for p in pids:
                seen.setdefault(p, _start_time(p))
            rss = sum(rss_kib(p) for p in pids)
            now = time.monotonic()
            if rss > top_rss or now - last_pss >= pss_every:  # PSS costs ~4 ms CPU a process
                peak[0] = max(peak[0], sum(pss_kib(p) for p in pids))
                top_rss, last_pss = max(top_rss, rss + RSS_STEP_KIB), now
                passes[0] += 1
            sampling[0] = time.thread_time()
            tick += 1
            if check(tick):
                return
            time.sleep(0.2)

    thread = threading.Thread(target=sample, daemon=True)
    thread.start()
    try:
        code = proc.wait()
    except BaseException:  # Ctrl-C: the job runs in a session of its own, end it too
        _end_group(proc.pid)
        _end_leftovers(seen)
        raise
    thread.join()
    server_cpu = cpu_seconds_self() - cpu0 - sampling[0]
    seen.pop(proc.pid, None)
    time.sleep(1.0)
    _end_leftovers(seen)
    if why or code != 0:
        raise JobFailed(f"{why[0] if why else f'exited {code}'}; see {log}")
    return {"peak_mib": peak[0] // 1024, "server_cpu_seconds": round(server_cpu, 1),
            "sampling_cpu_seconds": round(sampling[0], 1), "pss_samples": passes[0]}  # fmt: skip


def steady_rate(log: str, cpus: int) -> float | None:
    """x real time per core between the first and the last track done (the job's progress
    lines, 1 s resolution): the streaming rate without Ray's and the actors' start-up."""
    times = []
    with open(log, errors="replace") as fh:
        for line in fh:
            m = PROGRESS.match(line)
            if m:
                h, mi, se = (int(x) for x in m.groups())
                times.append(h * 3600 + mi * 60 + se)
    if len(times) < 3 or times[-1] <= times[0]:
        return None
    span = (times[-1] - times[0]) % 86400
    return round((len(times) - 1) * SECONDS / span / cpus, 2)


def prepare_run(
    name: str, data_uri: str, out_uri: str, args: argparse.Namespace, logs: str
) -> dict[str, Any]:
    """One run of the prepare job on ``data_uri`` (tried again after a failure, up to
    ``args.retries`` times); its figures, or ``error`` when every try failed."""
    from sepcore.io import storage

    cmd = [
        sys.executable,
        "-m",
        "ray_jobs.prepare",
        "-c",
        "configs/prepare_demo.yaml",
        f"sources=[{{kind: slakh, uri: {data_uri}}}]",
        f"output={out_uri}",
        f"num_cpus={args.cpus}",
        *args.job_arg,
    ]
    print(f"{name}: {' '.join(cmd[1:])}", flush=True)
    error, measured = "", dict[str, Any]()
    for attempt in range(args.retries + 1):
        if storage.list_files(out_uri):
            storage.delete(out_uri, recursive=True)  # a done-record would skip its track
        log = os.path.join(logs, f"{name}.{attempt}.log")
        try:
            measured = run_measured(cmd, log, args.job_timeout, args.pss_every)
            break
        except JobFailed as exc:
            error = str(exc)
            print(f"{name}: try {attempt + 1} failed: {error}", flush=True)
    else:
        return {"run": name, "error": error}
    summary = json.loads(storage.read_text(storage.join(out_uri, "summary.json")))
    counts, audio, seconds = (
        summary["counts"],
        summary["figures"]["audio_seconds"],
        summary["seconds"],
    )
    written = sum(r["size"] for r in storage.list_info(out_uri))
    storage.delete(out_uri, recursive=True)
    return {
        "run": name,
        "tracks": counts["tracks"],
        "prepared": counts["prepared"],
        "skipped": counts["skipped"],
        "failed": counts["failed"],
        "audio_seconds": audio,
        "job_seconds": seconds,
        "x_real_time_per_core": round(audio / seconds / args.cpus, 2),
        **measured,
        "steady_x_real_time_per_core": steady_rate(log, args.cpus),
        "output_bytes": written,
        "tries": attempt + 1,
    }


# ---------------------------------------------------------------- main


def get_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--tracks", type=int, default=2100, help="tracks in the full run")
    p.add_argument(
        "--fraction", type=int, default=8, help="the small run reads 1/fraction of each split"
    )
    p.add_argument(
        "--storage",
        choices=("s3", "file", "auto"),
        default="auto",
        help="where the job reads the set (auto: s3 if memory allows)",
    )
    p.add_argument(
        "--output-storage", choices=("file", "s3"), default="file", help="where the shards go"
    )
    p.add_argument("--cpus", type=int, default=2, help="the job's num_cpus")
    p.add_argument(
        "--gen-jobs", type=int, default=None, help="processes making the set (default: --cpus)"
    )
    p.add_argument("--demo", default="out/demo/data", help="the demo songs (sep demo)")
    p.add_argument("--work", default="out/slakh_scale", help="set, views, logs and results")
    p.add_argument("--only", choices=("both", "small", "full"), default="both", help="which runs")
    p.add_argument("--job-arg", action="append", default=[], help="extra key=value for the job")
    p.add_argument(
        "--job-timeout", type=float, default=7200.0, help="seconds before a run is ended"
    )
    p.add_argument(
        "--pss-every",
        type=float,
        default=1.0,
        help="seconds between PSS samples besides those at a new RSS high (0.2: every sample)",
    )
    p.add_argument("--retries", type=int, default=1, help="tries again after a failed run")
    p.add_argument("--probe", nargs="+", metavar="KIND URI [LOCAL]", help=argparse.SUPPRESS)
    return p


def report(info: dict[str, Any]) -> None:
    s = info["set"]
    print()
    print(
        f"set             : {s['tracks']} tracks x {SECONDS:.0f} s, {s['stems_per_track']:.2f} stems + mix per track "
        f"(mono 44.1 kHz 16-bit FLAC), {s['bytes'] / MIB:,.0f} MiB = {s['bytes_per_audio_second'] / 1e3:.0f} kB "
        f"per second of mix (Slakh2100: {SLAKH_BYTES / SLAKH_HOURS / 3600 / 1e3:.0f} kB)"
    )
    print(
        f"storage         : {info['storage']} ({info['storage_why']}); shards to {info['output_storage']}"
    )
    if "upload" in info:
        u = info["upload"]
        print(
            f"upload          : {u['files']} files, {u['bytes'] / MIB:,.0f} MiB in {u['seconds']:.1f} s "
            f"= {u['bytes'] / MIB / u['seconds']:.1f} MiB/s (16 threads)"
        )
    for key, label in (("list_full", "listing (full)"), ("list_small", "listing (1/f)")):
        if key in info:
            print(
                f"{label:16s}: {info[key]['tracks']} tracks' metadata in {info[key]['seconds']:.2f} s"
            )
    if "read" in info:
        r = info["read"]
        print(
            f"GET bandwidth   : {r['bytes'] / MIB / r['seconds']:.1f} MiB/s ({r['files']} objects, 16 threads, 1 process)"
        )
    if "decode" in info:
        d = info["decode"]
        print(
            f"decode only     : {d['tracks'] * SECONDS / d['seconds']:.1f} x real time per core "
            f"({d['stem_files']} stem files of {d['tracks']} tracks in {d['seconds']:.1f} s, soundfile, 1 thread)"
        )
    print(
        f"{'run':6s} {'tracks':>6s} {'prep.':>6s} {'skip':>5s} {'fail':>5s} {'audio s':>9s} {'job s':>8s} "
        f"{'x rt/core':>9s} {'steady':>7s} {'peak MiB':>9s} {'S3 CPU s':>9s} {'PSS CPU s':>9s}"
    )
    for r in info["runs"]:
        if "error" in r:
            print(f"{r['run']:6s} failed: {r['error']}")
            continue
        steady = r["steady_x_real_time_per_core"]
        print(
            f"{r['run']:6s} {r['tracks']:6d} {r['prepared']:6d} {r['skipped']:5d} {r['failed']:5d} "
            f"{r['audio_seconds']:9.1f} {r['job_seconds']:8.1f} {r['x_real_time_per_core']:9.2f} "
            f"{steady if steady is not None else float('nan'):7.2f} {r['peak_mib']:9d} "
            f"{r['server_cpu_seconds']:9.1f} {r['sampling_cpu_seconds']:9.1f}"
        )
    for r in info["runs"]:
        if "output_bytes" in r:
            kb = r["output_bytes"] / max(r["audio_seconds"], 1e-9) / 1e3
            print(
                f"{r['run']:6s} wrote {r['output_bytes'] / MIB:,.0f} MiB = {kb:.0f} kB per second of audio"
            )
    print(
        "(x rt/core: audio s / job s / cpus; steady: the same between the first and the last "
        "track done; S3 CPU s: the server's, PSS CPU s: the memory sampling's, both in this "
        "process, on the job's cores)"
    )
    done = {r["run"]: r for r in info["runs"] if "error" not in r}
    if "small" in done and "full" in done:
        ratio = done["full"]["peak_mib"] / done["small"]["peak_mib"]
        print(f"peak ratio      : {ratio:.2f} (full / 1/{info['fraction']}; at most 1.25 asked)")
    if "full" in done:
        rate = done["full"]["x_real_time_per_core"]
        print(
            f"Slakh2100       : {SLAKH_HOURS:.0f} h / {rate:.1f} = {SLAKH_HOURS / rate:.1f} core-hours at the full run's rate"
        )


def build_set(args: argparse.Namespace, work: str) -> tuple[dict[str, Any], str, str]:
    """Make or reuse the tracks, link the two views; returns (info, full view, small view)."""
    tracks = os.path.join(work, "tracks")
    make_tracks(args.demo, tracks, args.tracks, args.gen_jobs or args.cpus)
    full_dir = os.path.join(work, f"view_{args.tracks}")
    small_dir = os.path.join(work, f"view_{args.tracks}_1of{args.fraction}")
    n_full, bytes_full = make_view(tracks, full_dir, args.tracks)
    n_small, bytes_small = make_view(tracks, small_dir, args.tracks, args.fraction)
    info: dict[str, Any] = {
        "fraction": args.fraction,
        "cpus": args.cpus,
        "output_storage": args.output_storage,
    }
    info["set"] = {
        "tracks": n_full,
        "bytes": bytes_full,
        "stems_per_track": stem_count(full_dir),
        "bytes_per_audio_second": bytes_full / (n_full * SECONDS),
        "small_tracks": n_small,
        "small_bytes": bytes_small,
    }
    shards = int(
        n_full * SECONDS * 2e5
    )  # ~0.2 MB of float16 shards per second of audio (STFT 1536/384)
    info["storage"], info["storage_why"] = choose_storage(
        args.storage, bytes_full + bytes_small, args.output_storage, shards
    )
    return info, full_dir, small_dir


@contextlib.contextmanager
def s3_bucket(enabled: bool) -> Iterator[str | None]:
    """moto's S3 server in this process, the environment pointing storage (and the jobs
    started from here) at it, and a bucket: ``s3://slakh-scale``; None when not ``enabled``."""
    if not enabled:
        yield None
        return
    from tests.support.s3 import S3Server, create_bucket, s3_environment

    with S3Server() as server, s3_environment(server.endpoint_url):
        yield create_bucket(BUCKET)


def upload_views(info: dict[str, Any], bucket: str, views: dict[str, str]) -> dict[str, str]:
    """Upload each view to ``bucket/<name>``; returns their URIs."""
    from sepcore.io import storage

    t0, files, uris = time.monotonic(), 0, {}
    for name, view in views.items():
        uris[name] = storage.join(bucket, name)
        files += run_probe("upload", uris[name], view)["files"]  # another GIL than the server's
    info["upload"] = {
        "files": files,
        "bytes": info["set"]["bytes"] + info["set"]["small_bytes"],
        "seconds": time.monotonic() - t0,
    }
    return uris


def main(argv: list[str] | None = None) -> None:
    args = get_parser().parse_args(argv)
    if args.probe:
        probe(*args.probe)
        return
    os.chdir(ROOT)
    work = os.path.abspath(args.work)
    logs = os.path.join(work, "logs")
    os.makedirs(logs, exist_ok=True)
    info, full_dir, small_dir = build_set(args, work)
    info["decode"] = run_probe("decode", small_dir)
    with s3_bucket(info["storage"] == "s3" or args.output_storage == "s3") as bucket:
        uris = {"small": small_dir, "full": full_dir}
        if info["storage"] == "s3":
            assert bucket is not None
            uris = upload_views(info, bucket, uris)
            info["read"] = run_probe("read", uris["small"])
        info["list_small"], info["list_full"] = (
            run_probe("list", uris["small"]),
            run_probe("list", uris["full"]),
        )
        out_root = f"{bucket}/runs" if args.output_storage == "s3" else os.path.join(work, "runs")
        names = [n for n in ("small", "full") if args.only in ("both", n)]
        info["runs"] = [prepare_run(n, uris[n], f"{out_root}/{n}", args, logs) for n in names]
    report(info)
    path = os.path.join(work, f"results_{args.tracks}_{info['storage']}_{args.cpus}cpu.json")
    with open(path, "w") as fh:
        json.dump(info, fh, indent=2)
    print(f"results         : {path}")


if __name__ == "__main__":
    main()
