"""Throughput of a full-size HT Demucs: our separate job against Demucs's own command line.

    .venv/bin/python bench/demucs_throughput.py --files 3 --seconds 30 --threads 1,2
    .venv/bin/python bench/demucs_throughput.py --tiny --files 1 --seconds 5     # smoke test

The model: an untrained ``demucs.htdemucs.HTDemucs`` (4 sources: drums, bass, other,
vocals; seed 0) with the architecture of the published ``htdemucs``: Demucs's defaults but
``segment=Fraction(39, 5)`` (7.8 s), ``dconv_mode=3``, ``bottom_channels=512`` and
``t_dropout=0.02`` (no effect at inference): 41,984,456 weights. The installed package
does not hold those arguments (``demucs/remote/htdemucs.yaml`` names only the signature
955717e8, whose file is downloaded; ``demucs/grids/mmi.py`` has dconv_mode 3, depth 4,
t_layers 5 and bottom_channels in [0, 512]); they are the arguments stored in the
published model file, and the weight count agrees with its ~84 MB of float16. The weights
are random, so the stems are noise: what is measured is the cost of the architecture.
It is written once with :func:`sepcore.separate.demucs.save` as ``<work>/repo/<sig>.th``.
``--tiny`` uses ``tests/support/demucs.py``'s tiny HT Demucs (1-s segment) instead.

The inputs: ``--files`` excerpts of ``--seconds`` seconds, 44.1 kHz stereo (16-bit WAV, or
24-bit FLAC with ``--format flac``), cut from the rendered test mixes
(``out/test/data/Track*/mix.flac``) when they exist, else synthesised (tones and noise).

Both pipelines separate the same files with the model's own segment (7.8 s), overlap
0.25, no random shifts, one process running ``T`` torch threads, and write 32-bit float
WAV stems:

* ours: ``python -m ray_jobs.separate`` (``sep separate``) with ``checkpoint=<the .th>``,
  ``num_cpus=T``, one actor of ``T`` CPUs and ``T`` threads (``inference={pool_size: 1,
  cpus_per_actor: T, threads: T}``), ``format=wav``; "after start-up" is the files' own
  time, the sum of the manifest's ``total_s`` (decode, separate, write, per file, one
  after another), and start-up the rest of the command's wall time (Ray, loading the
  model in the driver to hash its weights and in the actor);
* Demucs: ``python -m demucs.separate --repo <work>/repo -n <sig> --shifts 0 --overlap
  0.25 -j 0 --float32 --clip-mode none`` with ``OMP_NUM_THREADS=MKL_NUM_THREADS=T`` (torch
  takes its thread count from them; the CLI has no thread option). Demucs 4.1.0 reads
  audio with ``sphn`` (WAV, FLAC, MP3, Ogg; ffmpeg is only its fallback) and writes WAV
  itself (FLAC or MP3 output would need ffmpeg or lameenc), so no ffmpeg or torchaudio is
  needed. Its start-up (Python imports and loading the model) is timed by a second
  command naming a file that does not exist: the CLI loads the model, skips the file and
  ends.

Per pipeline and thread count, one markdown row: files, seconds of audio, wall time of
the whole command, x real time and x real time per core (per torch thread), the same after
start-up, and how closely the two pipelines' stems agree (relative RMS difference over
the samples both left unclipped). ``--device cuda`` passes ``inference.device=cuda`` and
``-d cuda``; the per-core figures then still divide by ``T``. Results also go to
``<work>/results.json``; logs of every command to ``<work>/logs``.
"""

from __future__ import annotations

import argparse
import glob
import json
import math
import os
import shlex
import shutil
import subprocess
import sys
import time
from fractions import Fraction
from typing import Any

import numpy as np
import pyarrow.parquet as pq
import soundfile as sf

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), ".."))
sys.path.insert(0, ROOT)

SOURCES = ["drums", "bass", "other", "vocals"]
RATE = 44100
#: The published htdemucs's arguments that differ from HTDemucs's defaults.
HTDEMUCS_KWARGS: dict[str, Any] = {"segment": Fraction(39, 5), "dconv_mode": 3, "bottom_channels": 512,
                                   "t_dropout": 0.02}  # fmt: skip
#: Signatures (file names in the repo folder; no '-', which LocalRepo reads as a checksum).
SIG_FULL, SIG_TINY = "htdemucs_random", "htdemucs_tiny"


def make_model(work: str, tiny: bool) -> tuple[str, str, dict[str, Any]]:
    """The repo folder, signature and description of the benchmark's model, written once."""
    import torch

    sig = SIG_TINY if tiny else SIG_FULL
    repo = os.path.join(work, "repo_tiny" if tiny else "repo")
    path = os.path.join(repo, f"{sig}.th")
    info_path = os.path.join(repo, f"{sig}.json")
    if not (os.path.exists(path) and os.path.exists(info_path)):
        from sepcore.separate.demucs import save

        if tiny:
            from tests.support.demucs import tiny_htdemucs

            model = tiny_htdemucs(tuple(SOURCES), seed=0)
        else:
            from demucs.htdemucs import HTDemucs

            torch.manual_seed(0)
            model = HTDemucs(sources=list(SOURCES), **HTDEMUCS_KWARGS).eval()
        part = os.path.join(work, f"{sig}.th.part")  # outside the repo folder, which Demucs scans
        save(model, part)
        os.makedirs(repo, exist_ok=True)
        os.replace(part, path)
        info = {"signature": sig, "weights": sum(p.numel() for p in model.parameters()),
                "segment_s": float(model.segment), "kwargs": {k: str(v) for k, v in model._init_args_kwargs[1].items()}}  # fmt: skip
        with open(info_path, "w") as fh:
            json.dump(info, fh, indent=1)
    with open(info_path) as fh:
        return repo, sig, json.load(fh)


def _synth(seconds: float, seed: int) -> np.ndarray:
    """Tones over noise, stereo, ``(samples, 2)`` float32 in [-1, 1]."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * RATE)) / RATE
    x = sum(
        0.1 * np.sin(2 * np.pi * f * t + rng.uniform(0, 2 * np.pi))
        for f in rng.uniform(55, 1760, 6)
    )
    x = x + 0.05 * rng.standard_normal(t.size)
    return np.stack([x, 0.8 * x + 0.05 * rng.standard_normal(t.size)], axis=1).astype(np.float32)


def make_inputs(
    work: str, files: int, seconds: float, fmt: str, data: str
) -> tuple[str, list[str], str]:
    """A library folder of ``files`` excerpts, their paths and where they came from."""
    library = os.path.join(work, f"inputs_{files}x{seconds:g}s_{fmt}")
    mixes = sorted(glob.glob(os.path.join(data, "Track*", "mix.flac")))
    usable = []
    for m in mixes:
        i = sf.info(m)
        if i.samplerate == RATE and i.channels == 2 and i.frames >= int((seconds + 10) * RATE):
            usable.append(m)
    origin = (
        f"excerpts from 10 s into {data}/Track*/mix.flac"
        if len(usable) >= files
        else "synthesised tones and noise"
    )
    if not os.path.isdir(library):  # built aside and renamed: a killed build is not reused
        part = library + ".part"
        shutil.rmtree(part, ignore_errors=True)
        os.makedirs(part)
        for k in range(files):
            if len(usable) >= files:
                x, _ = sf.read(
                    usable[k], frames=int(seconds * RATE), start=10 * RATE, dtype="float32"
                )
            else:
                x = _synth(seconds, k)
            subtype = "PCM_16" if fmt == "wav" else "PCM_24"
            sf.write(os.path.join(part, f"song{k:02d}.{fmt}"), x, RATE, subtype=subtype)
        os.rename(part, library)
    paths = sorted(glob.glob(os.path.join(library, f"*.{fmt}")))
    return library, paths, origin


def _run(cmd: list[str], log: str, env: dict[str, str] | None = None) -> float:
    """Run ``cmd`` from the repository root, output to ``log``; its wall seconds."""
    start = time.monotonic()
    with open(log, "w") as fh:
        res = subprocess.run(cmd, cwd=ROOT, env=env, stdout=fh, stderr=subprocess.STDOUT)
    wall = time.monotonic() - start
    if res.returncode != 0:
        tail = open(log).read()[-3000:]
        raise SystemExit(
            f"command failed (exit {res.returncode}): {shlex.join(cmd)}\nlog {log}:\n{tail}"
        )
    return wall


def _env(threads: int) -> dict[str, str]:
    env = {
        k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"
    }  # a local Ray of num_cpus CPUs
    env.update(
        OMP_NUM_THREADS=str(threads),
        MKL_NUM_THREADS=str(threads),
        RAY_DATA_DISABLE_PROGRESS_BARS="1",
    )
    return env


def ours(
    work: str, repo: str, sig: str, library: str, paths: list[str], threads: int, device: str
) -> dict[str, Any]:
    """Separate the library with the separate job; its figures."""
    from sepcore.io import storage

    out = os.path.join(work, "runs", f"ours_t{threads}")
    shutil.rmtree(out, ignore_errors=True)  # a rerun into the same output would skip all
    inference = f"inference={{pool_size: 1, cpus_per_actor: {threads}, threads: {threads}, device: {device}}}"
    cmd = [sys.executable, "-m", "ray_jobs.separate", f"library={library}",
           f"checkpoint={os.path.join(repo, sig + '.th')}", f"output={out}", f"num_cpus={threads}",
           inference, "demucs={overlap: 0.25, shifts: 0}", "format=wav"]  # fmt: skip
    wall = _run(cmd, os.path.join(work, "logs", f"ours_t{threads}.log"), _env(threads))
    summary = json.loads(storage.read_text(os.path.join(out, "summary.json")))
    fig = summary["figures"]
    if summary["counts"]["ok"] != summary["counts"]["files"]:
        raise SystemExit(
            f"the separate job did not separate every file: {summary['counts']} {summary['failed']}"
        )
    audio = sum(sf.info(p).duration for p in paths)  # the summary's hours are rounded
    # The files' own time (one actor, one file after another): each manifest row's total_s,
    # from the actor taking the file to its record (decode, separate, write, upload). The
    # rest of the wall time is start-up: Ray, the driver loading the model to hash its
    # weights, the actor loading it. (The summary's startup_s is not used: Ray Data may hand
    # the driver the first row only after the second file, which inflates it.)
    rows = pq.read_table(os.path.join(out, "manifest.parquet")).to_pylist()
    files_s = sum(r["total_s"] for r in rows)
    return {"pipeline": "ours (sep separate)", "threads": threads, "audio_s": audio, "wall_s": wall,
            "job_wall_s": fig["wall_s"], "startup_s": wall - files_s, "after_startup_s": files_s,
            "out": out, "command": shlex.join(cmd)}  # fmt: skip


def demucs_cli(
    work: str, repo: str, sig: str, paths: list[str], threads: int, device: str
) -> dict[str, Any]:
    """Separate the files with Demucs's command line; its figures."""
    out = os.path.join(work, "runs", f"demucs_t{threads}")
    shutil.rmtree(out, ignore_errors=True)
    base = [sys.executable, "-m", "demucs.separate", "--repo", repo, "-n", sig, "--shifts", "0",
            "--overlap", "0.25", "-j", "0", "-d", device, "--float32", "--clip-mode", "none", "-o", out]  # fmt: skip
    env = _env(threads)
    logs = os.path.join(work, "logs")
    startup = _run(
        base + [os.path.join(work, "no_such_file.wav")],
        os.path.join(logs, f"demucs_startup_t{threads}.log"),
        env,
    )
    cmd = base + paths
    wall = _run(cmd, os.path.join(logs, f"demucs_t{threads}.log"), env)
    audio = sum(sf.info(p).duration for p in paths)
    return {"pipeline": "Demucs 4.1.0 CLI", "threads": threads, "audio_s": audio, "wall_s": wall,
            "startup_s": startup, "after_startup_s": wall - startup, "out": os.path.join(out, sig),
            "command": f"OMP_NUM_THREADS={threads} MKL_NUM_THREADS={threads} {shlex.join(cmd)}"}  # fmt: skip


def agreement(ours_out: str, demucs_out: str, paths: list[str]) -> float:
    """Relative RMS difference of the two pipelines' stems over the samples neither clipped."""
    num = den = 0.0
    for p in paths:
        track = os.path.splitext(os.path.basename(p))[0]
        for stem in SOURCES:
            a_path = glob.glob(os.path.join(ours_out, "stems", f"{track}*", f"{stem}.wav"))
            b, _ = sf.read(os.path.join(demucs_out, track, f"{stem}.wav"), dtype="float64")
            if len(a_path) != 1:
                raise SystemExit(f"no single {stem}.wav of {track} under {ours_out}/stems")
            a, _ = sf.read(a_path[0], dtype="float64")
            n = min(len(a), len(b))
            a, b = a[:n], b[:n]
            keep = (np.abs(a) < 0.999) & (np.abs(b) < 0.999)
            num += float(np.square(a - b)[keep].sum())
            den += float(np.square(b)[keep].sum())
    return math.sqrt(num / den) if den > 0 else float("nan")


def row(r: dict[str, Any], files: int) -> str:
    x = r["audio_s"] / r["wall_s"]
    x_after = r["audio_s"] / r["after_startup_s"] if r["after_startup_s"] > 0 else float("nan")
    t = r["threads"]
    agree = f"{r['agreement']:.1e}" if r.get("agreement") is not None else "-"
    return (f"| {r['pipeline']} | {t} | {files} | {r['audio_s']:.1f} | {r['wall_s']:.1f} | {x:.3f} | {x / t:.3f} | "
            f"{r['startup_s']:.1f} | {x_after:.3f} | {x_after / t:.3f} | {agree} | `{r['command']}` |")  # fmt: skip


HEADER = ("| pipeline | threads | files | audio s | wall s | x real time | x RT per core | start-up s | "
          "x RT after start-up | x RT per core after start-up | stems rel. diff | command |\n"
          "|---|---|---|---|---|---|---|---|---|---|---|---|")  # fmt: skip


def in_process(repo: str, sig: str, path: str, times: int) -> int:
    """Time ``DemucsSeparator.separate`` (ours, blocks of 60 s) and Demucs's
    ``Separator.separate_tensor`` alternately on one file in one process with one torch thread:
    the separation alone, without the job or the command line around it."""
    import pathlib

    import torch
    from demucs.api import Separator

    from sepcore.separate import demucs as D

    torch.set_num_threads(1)
    audio, rate = sf.read(path, dtype="float32", always_2d=True)
    audio = np.ascontiguousarray(audio.T)
    ours_sep = D.DemucsSeparator(D.load(os.path.join(repo, sig + ".th"))[0])
    theirs = Separator(model=sig, repo=pathlib.Path(repo), shifts=0, overlap=0.25, progress=False, device="cpu")
    print(f"in one process, one thread, {audio.shape[1] / rate:g} s of {os.path.basename(path)}:")
    for k in range(times):
        t0 = time.perf_counter()
        ours_sep.separate(audio)
        t1 = time.perf_counter()
        theirs.separate_tensor(torch.from_numpy(audio), rate)
        t2 = time.perf_counter()
        print(f"  run {k + 1}: DemucsSeparator.separate {t1 - t0:.1f} s, Demucs Separator.separate_tensor {t2 - t1:.1f} s",
              flush=True)  # fmt: skip
    return 0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--work", default=os.path.join(ROOT, "out", "bench", "demucs"),
                    help="work folder: model, inputs, outputs, logs (default out/bench/demucs)")  # fmt: skip
    ap.add_argument("--files", type=int, default=3, help="input files (default 3)")
    ap.add_argument(
        "--seconds", type=float, default=30.0, help="seconds per input file (default 30)"
    )
    ap.add_argument(
        "--format", choices=("wav", "flac"), default="wav", help="input format (default wav)"
    )
    ap.add_argument(
        "--threads", default="1", help="torch threads, comma-separated: one run each (default 1)"
    )
    ap.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    ap.add_argument(
        "--data", default=os.path.join(ROOT, "out", "test", "data"), help="rendered songs to cut"
    )
    ap.add_argument(
        "--tiny", action="store_true", help="tests/support/demucs.py's tiny HT Demucs (smoke test)"
    )
    ap.add_argument("--skip-ours", action="store_true")
    ap.add_argument("--skip-demucs", action="store_true")
    ap.add_argument("--in-process", type=int, default=0, metavar="N",
                    help="instead: time the two separation functions N times each in this process, "
                         "one thread, on the first input file (no job, no command line)")  # fmt: skip
    args = ap.parse_args()

    work = os.path.abspath(args.work)
    os.makedirs(os.path.join(work, "logs"), exist_ok=True)
    repo, sig, info = make_model(work, args.tiny)
    library, paths, origin = make_inputs(work, args.files, args.seconds, args.format, args.data)
    print(f"model {repo}/{sig}.th: {info['weights']:,} weights, segment {info['segment_s']:g} s; "
          f"{len(paths)} files of {args.seconds:g} s ({origin}); device {args.device}", flush=True)  # fmt: skip
    if args.in_process:
        return in_process(repo, sig, paths[0], args.in_process)
    results = []
    for threads in (int(t) for t in args.threads.split(",")):
        pair: dict[str, dict[str, Any]] = {}
        if not args.skip_ours:
            pair["ours"] = ours(work, repo, sig, library, paths, threads, args.device)
        if not args.skip_demucs:
            pair["demucs"] = demucs_cli(work, repo, sig, paths, threads, args.device)
        if len(pair) == 2:
            diff = agreement(pair["ours"]["out"], pair["demucs"]["out"], paths)
            for r in pair.values():
                r["agreement"] = diff
        results.extend(pair.values())
    if not results:  # --skip-ours --skip-demucs: only the model and the inputs were made
        return 0
    print(HEADER)
    for r in results:
        print(row(r, len(paths)))
    with open(os.path.join(work, "results.json"), "w") as fh:
        json.dump({"model": info, "inputs": {"files": paths, "origin": origin}, "device": args.device,
                   "runs": results, "command": shlex.join(sys.argv)}, fh, indent=1)  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
