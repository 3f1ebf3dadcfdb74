"""Benchmark of the separate job: x real time per CPU core, and peak memory on a long file.

    .venv/bin/python bench/separate_bench.py --data out/demo/data --songs 12 --cpus 2
    .venv/bin/python bench/separate_bench.py --songs 84 --skip-memory   # a one-hour library
    .venv/bin/python bench/separate_bench.py --memory-minutes 60 --skip-throughput

(a) For the small hourglass and the small BLSTM (the ``*_cpu_small`` training configs;
    the trained checkpoints under ``out/demo`` when they exist, else untrained models
    of the same shape, which cost the same), seconds of audio separated per second per
    CPU core over a library of rendered songs in six formats:
    * through the Ray job (``python -m ray_jobs.separate``, ``--cpus`` CPUs, one
      separator actor per CPU, one torch thread each; the job's own timing, from the
      first row to the last, actor start-up and model loading included);
      the summary's ``startup_s`` (until the first actor was ready) also gives the rate
      after start-up, which is what a library of thousands of songs sees, and its
      ``actor_startup`` each actor's start-up: from the request to ready, the part
      before its constructor (Python, Ray, the job's modules, torch), the model (from the
      object store: the driver loads it once) and its CPU seconds;
    * through a plain single-process loop doing the same work per file
      (:func:`sepcore.separate.library.separate_file`: isolated decode, resample, separate,
      write, upload), one torch thread on one core.
    Prints both, per core, and their ratio. ``--songs`` more than the demo's mixes cycles
    through them (84 songs of the 35-51 s demo mixes: about an hour).
(b) Peak memory of separating one long file (``--memory-minutes``, 44.1 kHz stereo
    FLAC, built by repeating a demo mix) in a fresh process: the separating process's
    peak RSS and the decoder child's, against the same for a 5-minute file.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

import numpy as np  # noqa: E402
import soundfile as sf  # noqa: E402
import yaml  # noqa: E402

from sepcore.errors import SepError  # noqa: E402
from sepcore.io import storage  # noqa: E402
from sepcore.models import checkpoint

ROOT = os.path.join(os.path.dirname(__file__), "..")
FEATURE = {"name": "stft", "n_fft": 1536, "hop": 384, "sample_rate": 22050}  # prepare_demo.yaml


def model_checkpoint(kind: str, work: str) -> str:
    """The trained demo checkpoint of ``kind``, or an untrained one of the same shape."""
    trained = os.path.join(ROOT, "out", "demo", f"train_{kind}", "best")
    if checkpoint.is_complete(trained):
        return trained
    from sepcore.models import build_model

    cfg = yaml.safe_load(open(os.path.join(ROOT, "configs", f"train_{kind}_cpu_small.yaml")))
    mcfg = dict(cfg["model"].get("config") or {})
    bins = FEATURE["n_fft"] // 2 + 1
    if kind == "blstm":
        mcfg.setdefault("n_bins", bins)
    model = build_model(kind, **mcfg)
    meta = {"model": {"name": kind, "config": mcfg, "log_input": False}, "task": "separator",
            "target": "guitar", "sample_rate": 22050, "channels": 1, "feature": FEATURE,
            "frames": 64}  # fmt: skip
    out = os.path.join(work, f"ckpt_{kind}")
    checkpoint.save(out, model, meta)
    return out


def plain_loop(library: str, ckpt: str, out: str) -> tuple[float, float]:
    """(seconds of audio, wall seconds) of separating the library in this process."""
    import torch

    from ray_jobs.separate import SeparateConfig
    from sepcore.separate.config import SeparationSettings
    from sepcore.separate.library import list_library, output_dir, separate_file

    torch.set_num_threads(1)
    model, meta = checkpoint.load_model(ckpt)
    cfg = SeparateConfig(library=library, checkpoint=ckpt, output=out)
    settings = SeparationSettings.of(cfg, meta)
    files = list_library(library)
    shutil.rmtree(out, ignore_errors=True)
    start, audio = time.monotonic(), 0.0
    for f in files:  # as the job does: a bad file is counted out and the loop goes on
        try:
            row = separate_file(model, f, output_dir(storage.normalize_uri(out), f.relative),
                                settings)  # fmt: skip
        except SepError:
            continue
        audio += row["duration_s"]
    return audio, time.monotonic() - start


def ray_job(library: str, ckpt: str, out: str, cpus: int) -> dict:
    shutil.rmtree(out, ignore_errors=True)  # a rerun into the same output would skip all
    cmd = [sys.executable, "-m", "ray_jobs.separate", f"library={library}", f"checkpoint={ckpt}",
           f"output={out}", f"num_cpus={cpus}", f"inference={{pool_size: {cpus}, threads: 1}}"]  # fmt: skip
    env = {**os.environ, "RAY_DATA_DISABLE_PROGRESS_BARS": "1"}
    subprocess.run(cmd, check=True, cwd=ROOT, env=env, stdout=subprocess.DEVNULL,
                   stderr=subprocess.DEVNULL)  # fmt: skip
    return json.loads(storage.read_text(os.path.join(out, "summary.json")))


def long_file(path: str, source: str, minutes: float) -> None:
    from sepcore.io.audio import read_audio, resample

    a = read_audio(source)
    a = resample(a, 44100)
    x = a.samples.mean(axis=0)
    stereo = np.stack([x, 0.8 * x + 0.2 * np.roll(x, 11)], axis=1).astype(np.float32)
    total = int(minutes * 60 * 44100)
    with sf.SoundFile(path, "w", 44100, 2, "PCM_16", format="FLAC") as f:
        written = 0
        while written < total:
            block = stereo[: total - written]
            f.write(np.clip(block, -1, 1))
            written += block.shape[0]


def memory_child(path: str, ckpt: str, out: str) -> None:
    """Separate one file; print seconds and peak RSS of this process and the decoder."""
    import torch

    from ray_jobs.separate import SeparateConfig
    from sepcore.separate.config import SeparationSettings
    from sepcore.separate.library import LibraryFile, separate_file

    torch.set_num_threads(1)
    model, meta = checkpoint.load_model(ckpt)
    settings = SeparationSettings.of(SeparateConfig(library=".", checkpoint=ckpt, output=out), meta)
    uri = storage.normalize_uri(path)
    info = storage.info(uri)
    start = time.monotonic()
    row = separate_file(model, LibraryFile(uri, os.path.basename(path), info["size"],
                                           info["version"]), out, settings)  # fmt: skip
    print(json.dumps({
        "seconds": time.monotonic() - start,
        "audio_s": row["duration_s"],
        "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "decoder_peak_rss_mib": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024,
    }))  # fmt: skip


def memory(work: str, source: str, ckpt: str, minutes: list[float]) -> None:
    for m in minutes:
        path = os.path.join(work, f"long_{m:g}min.flac")
        if not os.path.exists(path):
            long_file(path, source, m)
        out = os.path.join(work, f"mem_out_{m:g}")
        res = subprocess.run([sys.executable, __file__, "--memory-child", path, ckpt, out],
                             check=True, capture_output=True, text=True)  # fmt: skip
        r = json.loads(res.stdout.strip().splitlines()[-1])
        print(f"{m:g}-minute 44.1 kHz stereo FLAC: {r['seconds']:.0f} s "
              f"({r['audio_s'] / r['seconds']:.1f}x real time), peak RSS separating process "
              f"{r['peak_rss_mib']:.0f} MiB, decoder process {r['decoder_peak_rss_mib']:.0f} MiB")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--data", default=os.path.join(ROOT, "out", "demo", "data"))
    ap.add_argument("--songs", type=int, default=12)
    ap.add_argument("--cpus", type=int, default=2)
    ap.add_argument("--models", default="hourglass,blstm")
    ap.add_argument("--memory-minutes", default="5,60")
    ap.add_argument("--skip-throughput", action="store_true")
    ap.add_argument("--skip-memory", action="store_true")
    ap.add_argument("--work", default=None)
    ap.add_argument("--memory-child", nargs=3, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.memory_child:
        memory_child(*args.memory_child)
        return 0

    from tests.support.library import make_library

    work = args.work or tempfile.mkdtemp(prefix="sep-separate-bench-")
    found = [u for u in storage.list_files(args.data) if u.endswith("/mix.flac")]
    mixes = [found[i % len(found)] for i in range(args.songs)]  # cycled past the demo's mixes
    library = os.path.join(work, "library")
    if not os.path.isdir(library):  # built aside and renamed: a killed build is not reused
        shutil.rmtree(library + ".part", ignore_errors=True)
        make_library(mixes, library + ".part")
        os.rename(library + ".part", library)
    print(f"work folder {work}; library of {len(mixes)} songs")
    if not args.skip_throughput:
        for kind in args.models.split(","):
            ckpt = model_checkpoint(kind, work)
            summary = ray_job(library, ckpt, os.path.join(work, f"ray_{kind}"), args.cpus)
            fig = summary["figures"]
            ray_per_core = fig["x_realtime"] / args.cpus
            audio, wall = plain_loop(library, ckpt, os.path.join(work, f"plain_{kind}"))
            plain = audio / wall
            steady_per_core = fig["x_realtime_after_startup"] / args.cpus
            print(f"{kind}: {audio:.0f} s of audio; Ray job {fig['x_realtime']:.1f}x real time on "
                  f"{args.cpus} CPUs = {ray_per_core:.1f}x per core (wall {fig['wall_s']:.1f} s, "
                  f"of which start-up {fig['startup_s']:.1f} s; after start-up "
                  f"{steady_per_core:.1f}x per core); plain loop {plain:.1f}x on 1 core "
                  f"(wall {wall:.1f} s, model loaded before); ratio {ray_per_core / plain:.2f} "
                  f"(after start-up {steady_per_core / plain:.2f})")
            for a in summary.get("actor_startup", []):
                print(f"  actor {a['pid']}: ready {a['ready_s']:.2f} s after the request (its process "
                      f"{a['process_s']:.2f} s: before its constructor {a['import_s']:.2f} s, model "
                      f"{a['model_s']:.2f} s, rest {a['init_s']:.2f} s), {a['cpu_s']:.2f} CPU s")  # fmt: skip
    if not args.skip_memory:
        minutes = [float(m) for m in args.memory_minutes.split(",")]
        memory(work, mixes[0], model_checkpoint("hourglass", work), minutes)
    return 0


if __name__ == "__main__":
    sys.exit(main())
