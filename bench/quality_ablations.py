"""What limits the CPU-quality BLSTM: one change at a time, at equal steps.

Each variant is ``configs/train_blstm_cpu_quality.yaml`` with one override, trained for
``--steps`` steps (one epoch, no time budget, so the figures do not depend on what else
runs on the machine), then validated as the train job does (``val_sdr``: the mean over
targets of each target's median SDR on 4 validation songs; masks only). Prints a
Markdown table with the seconds per step each variant took (a cost figure: only
meaningful on an otherwise idle machine).

    .venv/bin/python bench/quality_ablations.py --out out/band/ablations --steps 150
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIG = "configs/train_blstm_cpu_quality.yaml"
VARIANTS: dict[str, list[str]] = {
    "base (hidden 128, mse, input scaling from data, 96-frame excerpts)": [],
    "loss l1": ["optim.loss=l1"],
    "no input scaling from data": ["model.input_stats=false"],
    "hidden 256": ["model.config={hidden: 256, layers: 3, max_bin: 558, dropout: 0.2}"],
    "whole 128-frame chunks (no excerpts)": ["loader={gain_db: [-6.0, 6.0]}"],
    "linear input (no log1p)": ["model.log_input=false"],
}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default="out/band/ablations")
    p.add_argument("--steps", type=int, default=150)
    p.add_argument("--only", nargs="*", help="run only these variants (by index)")
    a = p.parse_args()
    rows = []
    for k, (name, overrides) in enumerate(VARIANTS.items()):
        if a.only and str(k) not in a.only:
            continue
        out = os.path.join(a.out, f"v{k}")
        cmd = [sys.executable, "-m", "ray_jobs.train", "-c", CONFIG, f"output={out}", "optim.epochs=1",
               f"optim.max_steps_per_epoch={a.steps}", "optim.max_minutes=null", "resume=false", *overrides]  # fmt: skip
        print("+", " ".join(cmd[2:]), flush=True)
        t0 = time.monotonic()
        if subprocess.run(cmd, cwd=ROOT, check=False).returncode != 0:
            sys.exit(f"quality_ablations: variant {name!r} failed")
        wall = time.monotonic() - t0
        with open(os.path.join(ROOT, out, "metrics.jsonl")) as f:
            last = [json.loads(line) for line in f if line.strip()][-1]
        rows.append((name, last, wall))
    classes = ("bass", "drums", "guitar", "piano", "strings")
    print("\n| variant | val_sdr | " + " | ".join(classes) + " | train samples/s | job wall s |")
    print("|---|---|" + "---|" * len(classes) + "---|---|")
    for name, m, wall in rows:
        per = " | ".join(f"{m.get(f'val_sdr_{c}', float('nan')):.2f}" for c in classes)
        print(f"| {name} | {m['val_sdr']:.2f} | {per} | {m['samples_per_s']:.1f} | {wall:.0f} |")


if __name__ == "__main__":
    main()
