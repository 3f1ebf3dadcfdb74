"""The frame DNN's learning curves from a least-squares start versus a random start (seed 000).

Trains ``configs/train_frame_dnn_cpu_small.yaml`` twice, ``model.init=ls`` and
``model.init=random``, with the same data (the same snippets per song), seed, epochs and
steps per epoch and no time budget, then plots both runs' training and validation loss
(and validation SDR) per epoch into one PNG and prints a Markdown table: the job's wall
seconds, the least-squares pass's seconds (``ls_init_s`` of the run's summary) and the
final validation loss and SDR of each run. Every step is the same, so the difference
between the curves is the start alone.

    .venv/bin/python bench/frame_dnn_ls_vs_random.py --out out/demo/frame_dnn_ls_vs_random
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
CONFIG = "configs/train_frame_dnn_cpu_small.yaml"


def train(init: str, out: str, a: argparse.Namespace) -> tuple[list[dict], dict, float]:
    """One run: its history (``metrics.jsonl``), ``summary.json`` and the job's wall seconds."""
    cmd = [sys.executable, "-m", "ray_jobs.train", "-c", a.config, f"output={out}", f"model.init={init}",
           f"optim.epochs={a.epochs}", f"optim.max_steps_per_epoch={a.steps}", "optim.max_minutes=null",
           "optim.early_stopping_patience=1000", "resume=false", *a.overrides]  # fmt: skip
    print("+", " ".join(cmd[2:]), flush=True)
    t0 = time.monotonic()
    if subprocess.run(cmd, cwd=ROOT, check=False).returncode != 0:
        sys.exit(f"frame_dnn_ls_vs_random: the {init} run failed")
    wall = time.monotonic() - t0
    with open(os.path.join(ROOT, out, "metrics.jsonl")) as f:
        history = [json.loads(line) for line in f if line.strip()]
    with open(os.path.join(ROOT, out, "summary.json")) as f:
        summary = json.load(f)
    return history, summary, wall


def plot(runs: dict[str, list[dict]], path: str) -> None:
    """Loss (train solid, validation dashed) and validation SDR per epoch of each run, one PNG."""
    from sepcore.report.html import figure_png, new_figure

    has_sdr = any("val_sdr" in h for hist in runs.values() for h in hist)
    fig = new_figure(10 if has_sdr else 5.5, 3.8)
    axes = fig.subplots(1, 2 if has_sdr else 1, squeeze=False)[0]
    for (name, hist), color in zip(runs.items(), ("tab:blue", "tab:orange"), strict=False):
        epochs = [h["epoch"] + 1 for h in hist]
        axes[0].plot(epochs, [h["train_loss"] for h in hist], marker="o", color=color, label=f"{name} train")
        axes[0].plot(epochs, [h["val_loss"] for h in hist], marker="o", linestyle="--", color=color,
                     label=f"{name} validation")  # fmt: skip
        if has_sdr:
            axes[1].plot(epochs, [h.get("val_sdr", float("nan")) for h in hist], marker="o", color=color, label=name)
    axes[0].set_xlabel("epoch")
    axes[0].set_ylabel("loss")
    axes[0].set_yscale("log")
    axes[0].set_title("frame DNN: least-squares vs random start")
    axes[0].legend()
    if has_sdr:
        axes[1].set_xlabel("epoch")
        axes[1].set_ylabel("median SDR (dB)")
        axes[1].set_title("validation SDR of the target")
        axes[1].legend()
    fig.tight_layout()
    with open(path, "wb") as f:
        f.write(figure_png(fig, dpi=110))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default="out/demo/frame_dnn_ls_vs_random")
    p.add_argument("--config", default=CONFIG)
    p.add_argument("--epochs", type=int, default=8)
    p.add_argument("--steps", type=int, default=50, help="training steps per epoch")
    p.add_argument("overrides", nargs="*", help="more config overrides for both runs (key=value)")
    a = p.parse_args()
    runs, rows = {}, []
    for init in ("ls", "random"):
        history, summary, wall = train(init, os.path.join(a.out, init), a)
        runs[f"{init} init"] = history
        rows.append((init, history[-1], summary, wall))
    png = os.path.join(ROOT, a.out, "frame_dnn_ls_vs_random.png")
    plot(runs, png)
    print(f"\nplot: {png}\n")
    print("| init | job wall s | LS pass s | train s (loop) | final train_loss | final val_loss | final val_sdr |")
    print("|---|---|---|---|---|---|---|")
    for init, last, summary, wall in rows:
        ls_s = summary.get("figures", {}).get("ls_init_s")
        print(f"| {init} | {wall:.0f} | {'-' if ls_s is None else f'{ls_s:.1f}'} | {last.get('elapsed_s', float('nan')):.0f} "
              f"| {last['train_loss']:.4g} | {last['val_loss']:.4g} | {last.get('val_sdr', float('nan')):.2f} |")
    layers = (rows[0][2].get("init") or {}).get("layers", [])
    print("\nlayers (ls run): " + ", ".join(f"{x['layer']}: {x['in']}->{x['out']} {x['init']}" for x in layers))


if __name__ == "__main__":
    main()
