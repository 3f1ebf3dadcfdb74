"""The band corpus against the chorale corpus, at equal training budget, on both held-out sets.

Usage: ``python bench/corpus_bench.py [--out out/corpus_bench] [--band-tracks 120]
[--chorale-tracks 40] [--targets guitar drums] [--steps 100] [--epochs 6] [--stage all]``

Steps (each is the real job, run as ``python -m ray_jobs.X``; finished work is skipped
on a rerun, so the script can be stopped and started again):

1. render the training corpora: ``configs/render_band.yaml`` (``--band-tracks`` songs)
   and the chorale corpus (``midi: demo``, ``--chorale-tracks`` songs of 30-40 s);
   the held-out sets ``configs/render_test.yaml`` and ``configs/render_test_unseen.yaml``;
2. prepare target shards (22.05 kHz mono, STFT 1536/384, 64-frame chunks) per corpus and target;
3. train the CPU-small BLSTM (``configs/train_blstm_cpu_small.yaml``) on each, with the
   same number of steps (``--epochs`` x ``--steps``, batch 16);
4. evaluate every model on both held-out sets (``split: all``): median SDR of the target
   for the model and the IRM, IBM and mixture rows.

Writes ``<out>/results.json`` and prints a Markdown table for bench/README.md.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TESTS = {"test": "configs/render_test.yaml", "test_unseen": "configs/render_test_unseen.yaml"}


def job(name: str, *args: str) -> float:
    """Run ``python -m ray_jobs.<name> args``; its wall time. Exits when the job fails."""
    t0 = time.monotonic()
    cmd = [sys.executable, "-m", f"ray_jobs.{name}", *args]
    print("+", " ".join(cmd[1:]), flush=True)
    if subprocess.run(cmd, cwd=ROOT, check=False).returncode != 0:
        sys.exit(f"corpus_bench: {name} failed")
    return round(time.monotonic() - t0, 1)


def median_sdr(metrics_uri: str, target: str) -> dict[str, float]:
    with open(metrics_uri) as f:
        doc = json.load(f)
    table = doc["separation"][target]["median"]
    return {method: round(table[method]["instrument"]["sdr"], 2) for method in table}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default="out/corpus_bench")
    p.add_argument("--band-tracks", type=int, default=120)
    p.add_argument("--band-from", help="a render of configs/render_band.yaml: its first --band-tracks tracks "
                   "are linked instead of rendered (the song list is prefix-stable, so they are the same songs)")
    p.add_argument("--chorale-tracks", type=int, default=40)
    p.add_argument("--targets", nargs="+", default=["guitar", "drums"])
    p.add_argument("--epochs", type=int, default=6)
    p.add_argument("--steps", type=int, default=100, help="steps per epoch")
    p.add_argument("--lofo", action="store_true", help="also the leave-one-family-out model: the first target "
                   "trained on a band render without timgm6mb, tested on the test pieces rendered with timgm6mb only")
    p.add_argument("--stage", choices=["render", "prepare", "train", "evaluate", "all"], default="all")
    a = p.parse_args()
    out = os.path.abspath(a.out)
    data = {
        "band": f"{out}/band", "chorale": f"{out}/chorale",
        "test": f"{out}/test", "test_unseen": f"{out}/test_unseen",
    }  # fmt: skip
    wall: dict[str, float] = {}
    stages = ["render", "prepare", "train", "evaluate"] if a.stage == "all" else [a.stage]
    if "render" in stages and a.band_from:
        os.makedirs(data["band"], exist_ok=True)
        for i in range(1, a.band_tracks + 1):
            link = f"{data['band']}/Track{i:05d}"
            if not os.path.exists(link):
                os.symlink(os.path.abspath(f"{a.band_from}/Track{i:05d}"), link)
    elif "render" in stages:
        wall["render_band"] = job("render", "-c", "configs/render_band.yaml", f"output={data['band']}",
                                  f"tracks={a.band_tracks}")  # fmt: skip
    if "render" in stages:
        wall["render_chorale"] = job("render", "midi=demo", f"output={data['chorale']}",
                                     f"tracks={a.chorale_tracks}")  # fmt: skip
        for name, config in TESTS.items():
            wall[f"render_{name}"] = job("render", "-c", config, f"output={data[name]}")
    corpora = ("band", "chorale")
    for corpus in corpora:
        for target in a.targets:
            shards, model = f"{out}/shards_{corpus}_{target}", f"{out}/blstm_{corpus}_{target}"
            if "prepare" in stages:
                wall[f"prepare_{corpus}_{target}"] = job(
                    "prepare", "-c", "configs/prepare_demo.yaml", f"sources=[{{kind: slakh, uri: {data[corpus]}}}]",
                    f"output={shards}", f"target={target}", "outputs=[target]",
                )  # fmt: skip
            if "train" in stages:
                wall[f"train_{corpus}_{target}"] = job(
                    "train", "-c", "configs/train_blstm_cpu_small.yaml", f"data={shards}", f"output={model}",
                    f"optim.epochs={a.epochs}", f"optim.max_steps_per_epoch={a.steps}", "optim.early_stopping_patience=100",
                )  # fmt: skip
            if "evaluate" in stages:
                for name in TESTS:
                    wall[f"evaluate_{corpus}_{target}_{name}"] = job(
                        "evaluate", "-c", "configs/evaluate_demo.yaml", f"data={data[name]}", f"checkpoint={model}",
                        f"output={out}/eval_{corpus}_{target}_{name}", "split=all", "classes=[]", "backend=fast",
                        "report.examples=0",
                    )  # fmt: skip
    if a.lofo:
        target, lofo = a.targets[0], f"{out}/lofo"
        shards, model = f"{lofo}/shards_{target}", f"{lofo}/blstm_{target}"
        if "render" in stages:
            wall["lofo_render_train"] = job("render", "-c", "configs/render_band.yaml", f"output={lofo}/band",
                                            f"tracks={a.band_tracks}", "soundfonts=[fluidr3, opl3]")  # fmt: skip
            wall["lofo_render_test"] = job("render", "-c", "configs/render_test.yaml", f"output={lofo}/test",
                                           "soundfonts=[timgm6mb]")  # fmt: skip
        if "prepare" in stages:
            wall["lofo_prepare"] = job("prepare", "-c", "configs/prepare_demo.yaml", f"sources=[{{kind: slakh, uri: {lofo}/band}}]",
                                       f"output={shards}", f"target={target}", "outputs=[target]")  # fmt: skip
        if "train" in stages:
            wall["lofo_train"] = job("train", "-c", "configs/train_blstm_cpu_small.yaml", f"data={shards}", f"output={model}",
                                     f"optim.epochs={a.epochs}", f"optim.max_steps_per_epoch={a.steps}",
                                     "optim.early_stopping_patience=100")  # fmt: skip
        if "evaluate" in stages:
            for corpus, ckpt in (("lofo", model), ("band", f"{out}/blstm_band_{target}")):
                wall[f"lofo_evaluate_{corpus}"] = job(
                    "evaluate", "-c", "configs/evaluate_demo.yaml", f"data={lofo}/test", f"checkpoint={ckpt}",
                    f"output={lofo}/eval_{corpus}_{target}", "split=all", "classes=[]", "backend=fast", "report.examples=0",
                )  # fmt: skip
    results: dict[str, object] = {"wall_s": wall, "sdr": {}}
    for corpus in corpora:
        for target in a.targets:
            for name in TESTS:
                metrics = f"{out}/eval_{corpus}_{target}_{name}/metrics.json"
                if os.path.exists(metrics):
                    results["sdr"][f"{corpus}/{target}/{name}"] = median_sdr(metrics, target)  # type: ignore[index]
    for corpus in ("lofo", "band"):
        metrics = f"{out}/lofo/eval_{corpus}_{a.targets[0]}/metrics.json"
        if a.lofo and os.path.exists(metrics):
            name = "band without timgm6mb" if corpus == "lofo" else "band"
            results["sdr"][f"{name}/{a.targets[0]}/test (timgm6mb only)"] = median_sdr(metrics, a.targets[0])  # type: ignore[index]
    with open(f"{out}/results.json", "w") as f:
        json.dump(results, f, indent=1)
    print("| trained on | target | test set | model | IRM | IBM | mixture |\n|---|---|---|---|---|---|---|")
    for key, row in results["sdr"].items():  # type: ignore[attr-defined]
        corpus, target, name = key.split("/")
        cells = " | ".join(f"{row.get(m, float('nan')):.2f}" for m in ("model", "irm", "ibm", "mixture"))
        print(f"| {corpus} | {target} | {name} | {cells} |")


if __name__ == "__main__":
    main()
