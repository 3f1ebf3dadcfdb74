"""The ``sep`` command: one subcommand per job, same arguments as ``python -m ray_jobs.<job>``."""

from __future__ import annotations

import importlib
import sys

#: subcommand -> (module, one-line description). Only jobs that exist are listed.
JOBS = {
    "demo": ("ray_jobs.demo", "the main job end to end on the embedded default"),
    "render": ("ray_jobs.render", "render MIDI files into Slakh-layout multitrack audio"),
    "prepare": ("ray_jobs.prepare", "mix sources and compute feature shards for training"),
    "train": ("ray_jobs.train", "train a separator or activation model with Ray Train"),
    "separate": ("ray_jobs.separate", "separate a music library into instrument and rest stems"),
    "evaluate": ("ray_jobs.evaluate", "score a checkpoint with mir_eval against oracle and mixture"),
    "classify": ("ray_jobs.classify", "train the LightGBM instrument-presence classifier"),
    "tune": ("ray_jobs.tune", "sweep FFT size, filters and silence ratio with Ray Tune"),
    "compose": ("ray_jobs.compose", "compose new General MIDI pieces with the LSTM composer"),
    "serve": ("ray_jobs.serve", "the web demonstrator on Ray Serve: upload a song, get its stems"),
}


def usage() -> str:
    width = max(len(name) for name in JOBS)
    rows = "\n".join(f"  {name:<{width}}  {desc}" for name, (_, desc) in JOBS.items())
    return (
        "usage: sep <job> [-c CONFIG.yaml] [key=value ...]\n\n"
        f"jobs:\n{rows}\n\n"
        "'sep <job> --help' lists the job's configuration keys and their defaults."
    )


def main(argv: list[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if not args or args[0] in ("-h", "--help", "help"):
        print(usage())
        return 0 if args else 2
    name, rest = args[0], args[1:]
    if name not in JOBS:
        print(f"sep: unknown job '{name}'\n\n{usage()}", file=sys.stderr)
        return 2
    from sepcore.console import setup_logging

    setup_logging()  # before the job's imports (torch, Ray) can warn on the console
    module = importlib.import_module(JOBS[name][0])
    return int(module.main(rest))


if __name__ == "__main__":
    sys.exit(main())
