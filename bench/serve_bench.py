"""Benchmark of ``sep serve``: concurrent uploads through the JSON API, every result checked.

    .venv/bin/python bench/serve_bench.py --model out/demo/train_blstm --uploads 20 --seconds 30

Starts the app of ``--config`` (``configs/serve.yaml``) in this process on a local Ray
(``--cpus`` CPUs), with its output in a temporary folder, a free port on 127.0.0.1 and the
models of ``--model`` (each ``[NAME=]CHECKPOINT``; default: the config's). Cuts
``--uploads`` different demo songs (``out/demo/data/*/mix.flac``, at their own rate and
channels) to ``--seconds`` each and writes them as 16-bit FLAC, then uploads all of them at
once (one thread per upload: ``POST /api/separate``, then ``GET /api/jobs/{id}`` every
``--poll`` seconds until done or error), round robin over the models.

Latency is from the start of an upload to the first poll that sees the job done (so it
is up to ``--poll`` seconds late); throughput is songs and seconds of audio over the wall
time from the first upload's start to the last job's end. Only then is every result
downloaded and checked: state ``done``; every stem of the model listed and decoding; each
stem as long as the input (at the stem's rate) to within 1 sample per 1000; the mixture
decodes; the zip holds every stem; and for a mask model (its last stem, ``rest`` or ``other``, is the input minus
the others) the stems add up to the input to within ``--tolerance`` (max abs, full scale
1). Prints a markdown table and writes the figures and every job to ``--output`` (JSON).
"""

from __future__ import annotations

import argparse
import io
import json
import logging
import os
import shutil
import socket
import statistics
import sys
import tempfile
import threading
import time
import zipfile
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from typing import Any

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

import numpy as np  # noqa: E402
import requests  # noqa: E402
import soundfile as sf  # noqa: E402

from sepcore.io import storage  # noqa: E402

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), ".."))


@dataclass
class Upload:
    """One upload: its input file, the model, and what the server answered when."""

    path: str
    model: str
    frames: int  # input length, samples at ``rate``
    rate: int
    job: str | None = None
    state: str | None = None
    error: str | None = None
    start: float = 0.0  # when the upload began: time.monotonic(), then seconds since the first's
    accepted_s: float | None = None  # upload start -> {"id"} received
    latency_s: float | None = None  # upload start -> first poll that saw done/error
    separation_s: float | None = None  # the job's own "seconds"
    result: dict[str, Any] = field(default_factory=dict)  # the last GET /api/jobs/{id}
    problems: list[str] = field(default_factory=list)  # failed checks


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def make_inputs(data: str, count: int, seconds: float, folder: str) -> list[tuple[str, int, int]]:
    """``count`` different songs of ``data`` cut to ``seconds``, as FLAC in ``folder``:
    ``(path, frames, rate)`` each. Raises ValueError when there are not enough songs."""
    mixes = sorted(u for u in storage.list_files(data) if u.endswith("/mix.flac"))
    long_enough = [m for m in mixes if sf.info(storage.local_path(m)).duration >= seconds]
    if len(long_enough) < count:
        raise ValueError(f"{data}: {len(long_enough)} mix.flac files of at least {seconds:g} s, "
                         f"{count} needed (render the demo set first: sep demo)")  # fmt: skip
    os.makedirs(folder, exist_ok=True)
    made = []
    for i, mix in enumerate(long_enough[:count]):
        local = storage.local_path(mix)
        frames = int(round(seconds * sf.info(local).samplerate))
        audio, rate = sf.read(local, frames=frames, dtype="float32", always_2d=True)
        song = mix.rstrip("/").split("/")[-2]
        path = os.path.join(folder, f"{i:02d}_{song}.flac")
        sf.write(path, audio, rate, subtype="PCM_16", format="FLAC")
        made.append((path, audio.shape[0], rate))
    return made


def parse_models(specs: list[str]) -> list[dict[str, str]]:
    """``[NAME=]CHECKPOINT`` arguments -> the config's ``models`` entries."""
    models = []
    for spec in specs:
        name, sep, ckpt = spec.partition("=")
        if not sep:
            name, ckpt = os.path.basename(spec.rstrip("/")), spec
        models.append({"name": name, "checkpoint": storage.normalize_uri(ckpt)})
    return models


def start_app(args: argparse.Namespace, work: str) -> tuple[str, float, Any]:
    """Start Ray and the app; (base URL, start-up seconds, the resolved config)."""
    import ray

    from ray_jobs import serve as serve_job

    overrides = [f"output={storage.normalize_uri(os.path.join(work, 'serve_output'))}",
                 "host=127.0.0.1", f"port={free_port()}", *args.set]  # fmt: skip
    if args.model:
        overrides.append(f"models={json.dumps(parse_models(args.model))}")
    cfg = serve_job.load(args.config, overrides)
    ray.init(num_cpus=args.cpus, include_dashboard=False, log_to_driver=False)
    logging.getLogger("ray.serve").setLevel(logging.WARNING)  # a quiet console: the table only
    start = time.monotonic()
    url = serve_job.start(cfg)
    return url.rstrip("/"), time.monotonic() - start, cfg


def run_upload(session: requests.Session, base: str, up: Upload, poll: float, timeout: float) -> Upload:
    """Upload ``up.path`` and poll its job until done or error (or ``timeout`` seconds)."""
    up.start = time.monotonic()
    try:
        with open(up.path, "rb") as fh:
            r = session.post(f"{base}/api/separate", files={"file": (os.path.basename(up.path), fh, "audio/flac")},
                             data={"model": up.model}, timeout=timeout)  # fmt: skip
        if r.status_code != 200:
            up.state, up.error = "rejected", f"POST /api/separate: {r.status_code} {r.text[:300]}"
            return up
        up.job, up.accepted_s = r.json()["id"], time.monotonic() - up.start
        while time.monotonic() - up.start < timeout:
            job = session.get(f"{base}/api/jobs/{up.job}", timeout=timeout).json()
            if job["state"] in ("done", "error"):
                up.latency_s = time.monotonic() - up.start
                up.state, up.error, up.result = job["state"], job.get("error"), job
                up.separation_s = job.get("seconds")
                return up
            time.sleep(poll)
        up.state, up.error = "timeout", f"not done after {timeout:g} s"
    except (requests.RequestException, ValueError, KeyError) as exc:  # a dropped connection, bad JSON
        up.state, up.error = "failed", f"{type(exc).__name__}: {exc}"
    return up


def _decode(data: bytes) -> tuple[np.ndarray, int]:
    audio, rate = sf.read(io.BytesIO(data), dtype="float32", always_2d=True)
    return audio, int(rate)


def _reference(up: Upload, rate: int, channels: int) -> np.ndarray:
    """The input ``(frames, channels)`` laid out as the stems are: channels, then rate."""
    audio, _ = sf.read(up.path, dtype="float32", always_2d=True)
    if audio.shape[1] != channels:
        audio = np.repeat(audio.mean(axis=1, keepdims=True), channels, axis=1)
    if rate != up.rate:
        import soxr

        audio = soxr.resample(audio, up.rate, rate)
    return audio


def check_result(session: requests.Session, base: str, up: Upload, stems: list[str], mask: bool,
                 tolerance: float) -> dict[str, Any]:  # fmt: skip
    """Download and check one done job's stems and zip; appends failures to ``up.problems``.
    Returns the measured ``{"length_error_per_1000", "sum_error"}``."""
    got = sorted(up.result.get("stems", {}))
    if got != sorted(stems):
        up.problems.append(f"stems {got}, the model has {sorted(stems)}")
    decoded: dict[str, np.ndarray] = {}
    rate = 0
    worst_length = 0.0
    for stem, url in up.result.get("stems", {}).items():
        r = session.get(base + url, timeout=120)
        if r.status_code != 200:
            up.problems.append(f"{stem}: GET {url}: {r.status_code}")
            continue
        try:
            audio, rate = _decode(r.content)
        except (sf.LibsndfileError, RuntimeError) as exc:
            up.problems.append(f"{stem}: does not decode ({exc})")
            continue
        expected = up.frames * rate / up.rate
        worst_length = max(worst_length, abs(audio.shape[0] - expected) / expected * 1000)
        if abs(audio.shape[0] - expected) > max(1.0, expected / 1000):
            up.problems.append(f"{stem}: {audio.shape[0]} samples at {rate} Hz, the input {expected:.0f}")
        decoded[stem] = audio
    mixture = up.result.get("mixture")
    r = session.get(base + mixture, timeout=120) if mixture else None
    if r is None or r.status_code != 200:
        up.problems.append(f"mixture {mixture}: {'missing' if r is None else r.status_code}")
    else:
        try:
            _decode(r.content)
        except (sf.LibsndfileError, RuntimeError) as exc:
            up.problems.append(f"mixture: does not decode ({exc})")
    zip_url = up.result.get("zip")
    r = session.get(base + zip_url, timeout=120) if zip_url else None
    if r is None or r.status_code != 200:
        up.problems.append(f"zip {zip_url}: {'missing' if r is None else r.status_code}")
    else:
        names = {os.path.splitext(os.path.basename(n))[0] for n in zipfile.ZipFile(io.BytesIO(r.content)).namelist()}
        if names != set(stems):
            up.problems.append(f"zip holds {sorted(names)}, expected {sorted(stems)}")
    sum_error = None
    if mask and decoded and set(decoded) == set(stems):
        frames = min(a.shape[0] for a in decoded.values())
        channels = next(iter(decoded.values())).shape[1]
        reference = _reference(up, rate, channels)
        frames = min(frames, reference.shape[0])
        total = sum((a[:frames] for a in decoded.values()), np.zeros((frames, channels), np.float32))
        sum_error = float(np.max(np.abs(total - reference[:frames])))
        if sum_error > tolerance:
            up.problems.append(f"the stems add up to the input within {sum_error:.2e}, not {tolerance:g}")
    return {"length_error_per_1000": worst_length, "sum_error": sum_error}


def model_stems(session: requests.Session, base: str) -> dict[str, list[str]]:
    r = session.get(f"{base}/api/models", timeout=60)
    r.raise_for_status()
    return {m["name"]: list(m["stems"]) for m in r.json()["models"]}


def percentile(values: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(values), q)) if values else float("nan")


def figures(uploads: list[Upload], seconds: float, wall: float) -> dict[str, Any]:
    ok = [u for u in uploads if u.state == "done" and not u.problems]
    lat = [u.latency_s for u in uploads if u.state == "done" and u.latency_s is not None]
    sep = [u.separation_s for u in uploads if u.state == "done" and u.separation_s is not None]
    audio = sum(u.frames / u.rate for u in uploads if u.state == "done")
    return {
        "uploads": len(uploads), "correct": len(ok), "failures": len(uploads) - len(ok),
        "audio_s": audio, "wall_s": wall,
        "latency_p50_s": percentile(lat, 50), "latency_p95_s": percentile(lat, 95),
        "latency_max_s": max(lat) if lat else float("nan"),
        "accepted_p50_s": percentile([u.accepted_s for u in uploads if u.accepted_s is not None], 50),
        "separation_median_s": statistics.median(sep) if sep else float("nan"),
        "songs_per_minute": len([u for u in uploads if u.state == "done"]) / wall * 60,
        "x_realtime": audio / wall,
        "seconds_per_song": seconds,
    }  # fmt: skip


def markdown(fig: dict[str, Any], startup_s: float, cpus: int) -> str:
    head = ("| uploads | audio | CPUs | start-up | latency p50 | p95 | max | separation (median) "
            "| wall | songs per minute | x real time | correct | failures |")  # fmt: skip
    row = (f"| {fig['uploads']} x {fig['seconds_per_song']:g} s | {fig['audio_s']:.0f} s | {cpus} "
           f"| {startup_s:.1f} s | {fig['latency_p50_s']:.1f} s | {fig['latency_p95_s']:.1f} s "
           f"| {fig['latency_max_s']:.1f} s | {fig['separation_median_s']:.1f} s | {fig['wall_s']:.1f} s "
           f"| {fig['songs_per_minute']:.1f} | {fig['x_realtime']:.1f}x | {fig['correct']} | {fig['failures']} |")  # fmt: skip
    return "\n".join([head, "|" + "---|" * head.count(" | ") + "---|", row])


def get_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", default=os.path.join(ROOT, "configs", "serve.yaml"))
    ap.add_argument("--model", action="append", default=[], metavar="[NAME=]CHECKPOINT",
                    help="a model to serve (repeatable; default: the config's models)")  # fmt: skip
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="another config override")
    ap.add_argument("--uploads", type=int, default=20)
    ap.add_argument("--seconds", type=float, default=30.0, help="length of each uploaded song")
    ap.add_argument("--data", default=os.path.join(ROOT, "out", "demo", "data"), help="the rendered demo songs")
    ap.add_argument("--cpus", type=int, default=2, help="CPUs of the local Ray")
    ap.add_argument("--poll", type=float, default=0.5, help="seconds between polls of a job")
    ap.add_argument("--timeout", type=float, default=900.0, help="seconds an upload may take to be done")
    ap.add_argument("--tolerance", type=float, default=1e-3, help="max |sum of stems - input| of a mask model")
    ap.add_argument("--output", default=os.path.join(ROOT, "out", "bench", "serve_bench.json"))
    ap.add_argument("--work", default=None, help="folder for inputs and results (default: a temporary one, removed)")
    return ap


def upload_all(base: str, headers: dict[str, str], uploads: list[Upload], args: argparse.Namespace) -> float:
    """Run every upload at once (one thread each); the wall seconds from the first upload's
    start to the last job's end."""
    local = threading.local()

    def one(up: Upload) -> Upload:  # a session per thread: requests.Session is not thread-safe
        if not hasattr(local, "session"):
            local.session = requests.Session()
            local.session.headers.update(headers)
        return run_upload(local.session, base, up, args.poll, args.timeout)

    start = time.monotonic()
    with ThreadPoolExecutor(max_workers=len(uploads)) as pool:
        list(pool.map(one, uploads))
    for up in uploads:
        up.start -= start
    return max((u.start + u.latency_s for u in uploads if u.latency_s is not None), default=time.monotonic() - start)


def bench(base: str, cfg: Any, inputs: list[tuple[str, int, int]], args: argparse.Namespace) -> tuple[list[Upload], float, list[dict[str, Any]]]:
    """Upload ``inputs`` round robin over the served models, then check every result:
    (the uploads, wall seconds, the measured errors of each done job)."""
    from sepcore.separate.demucs import is_demucs

    session = requests.Session()
    token = os.environ.get("SEP_SERVE_TOKEN")
    if token:
        session.headers["Authorization"] = f"Bearer {token}"
    stems = model_stems(session, base)
    models = cfg.model_dump(mode="json")["models"]
    names = [m["name"] for m in models]
    # A mask model's last stem (rest, other) is the input minus the others; Demucs's are not.
    mask = {m["name"]: not is_demucs(str(m["checkpoint"])) for m in models}
    uploads = [Upload(p, names[i % len(names)], frames, rate) for i, (p, frames, rate) in enumerate(inputs)]
    print(f"serving on {base}; {len(uploads)} uploads of {args.seconds:g} s to {', '.join(names)}")
    wall = upload_all(base, dict(session.headers), uploads, args)
    checks = []
    for up in uploads:
        if up.state == "done":
            checks.append(check_result(session, base, up, stems[up.model], mask[up.model], args.tolerance))
        else:
            up.problems.append(f"{up.state}: {up.error}")
    return uploads, wall, checks


def main(argv: list[str] | None = None) -> int:
    ap = get_parser()
    args = ap.parse_args(argv)
    if args.uploads < 1 or args.seconds <= 0:
        ap.error("--uploads must be at least 1 and --seconds positive")
    import ray

    from ray_jobs import serve as serve_job
    from sepcore.errors import SepError

    work = args.work or tempfile.mkdtemp(prefix="sep-serve-bench-")
    load_before = os.getloadavg()
    try:
        inputs = make_inputs(args.data, args.uploads, args.seconds, os.path.join(work, "inputs"))
        base, startup_s, cfg = start_app(args, work)
    except (ValueError, SepError) as exc:
        print(f"serve_bench: error: {exc}", file=sys.stderr)
        return 2
    try:
        uploads, wall, checks = bench(base, cfg, inputs, args)
    finally:
        serve_job.stop()
        ray.shutdown()
    fig = figures(uploads, args.seconds, wall)
    sums = [c["sum_error"] for c in checks if c["sum_error"] is not None]
    fig["max_sum_error"] = max(sums) if sums else None
    fig["max_length_error_per_1000"] = max((c["length_error_per_1000"] for c in checks), default=None)
    print(markdown(fig, startup_s, args.cpus))
    for up in uploads:
        for problem in up.problems:
            print(f"FAILED {os.path.basename(up.path)} (job {up.job}): {problem}")
    report = {
        "command": " ".join(sys.argv), "cpus": args.cpus, "loadavg_before": load_before,
        "loadavg_after": os.getloadavg(), "startup_s": startup_s, "figures": fig,
        "config": cfg.model_dump(mode="json"),
        "jobs": [{**asdict(u), "path": os.path.basename(u.path)} for u in uploads],
    }  # fmt: skip
    os.makedirs(os.path.dirname(os.path.abspath(args.output)), exist_ok=True)
    with open(args.output, "w", encoding="utf-8") as fh:
        json.dump(report, fh, indent=1, default=str)
    print(f"figures and jobs: {args.output}")
    if not args.work:
        shutil.rmtree(work, ignore_errors=True)
    return 0 if fig["failures"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
