"""Training overhead: samples/s of ``sep train``'s loop against a plain PyTorch loop (issue 26).

    taskset -c 1 .venv/bin/python bench/train_bench.py                       # BLSTM cpu_small
    taskset -c 1 .venv/bin/python bench/train_bench.py --config configs/train_hourglass_cpu_small.yaml

(a) ``sep``: the real train job (``python -m ray_jobs.train``, a Ray Train TorchTrainer with
    one worker of one CPU and one torch thread) for ``--epochs`` epochs of ``--steps`` steps.
    Its figure is the job's own ``samples_per_s`` of each epoch (``metrics.jsonl``: training
    samples over the training loop's wall time, so validation and checkpoints are left out);
    the first epoch (Ray Data's start-up) is left out and the median of the others is taken.
(b) ``plain``: one process, the same model, optimiser, loss, batch size and seed; every
    training row of the same shards decoded once into one float32 tensor (not timed), then
    random batches indexed from it; one torch thread; the same steps, timed per epoch the
    same way (median of the epochs after the first). No validation, no checkpoints.

Both read the shards the job's config names (``--data`` to change); the job writes under
``--output`` only. Run the whole script under ``taskset -c 1`` (one core): Ray, its workers
and the plain loop then share that core, as a one-CPU worker would.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from typing import Any

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), ".."))
sys.path.insert(0, ROOT)

BLSTM = "configs/train_blstm_cpu_small.yaml"


def job_args(config: str, output: str, epochs: int, steps: int, num_cpus: int, data: str | None) -> list[str]:
    """The train job's arguments: one worker, one CPU, one thread; validation cut to one step, no SDR."""
    args = ["-c", config, f"output={output}", "resume=false", f"num_cpus={num_cpus}",
            "scaling={num_workers: 1, use_gpu: false, cpus_per_worker: 1, threads: 1}",
            f"optim.epochs={epochs}", f"optim.max_steps_per_epoch={steps}", "optim.early_stopping_patience=1000",
            "validation={sdr_tracks: 0, metric: val_loss, max_steps: 1}", "keep_checkpoints=1"]  # fmt: skip
    return args + ([f"data={data}"] if data else [])


def run_sep(args: list[str], output: str) -> list[dict[str, Any]]:
    """Run the train job in a child process (it inherits this process's CPU affinity); its epochs' metrics."""
    from sepcore.train.outputs import read_history

    t0 = time.monotonic()
    # A core shared with other work can starve the raylet's heartbeats: give it more slack than Ray's 15 s.
    env = {"RAY_health_check_failure_threshold": "40", **os.environ}
    done = subprocess.run([sys.executable, "-m", "ray_jobs.train", *args], capture_output=True, text=True,
                          cwd=ROOT, env=env)  # fmt: skip
    if done.returncode != 0:
        sys.exit(f"sep train failed ({done.returncode}):\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}")
    print(f"  sep train: {time.monotonic() - t0:.1f} s wall in all (Ray start-up, validation, checkpoints included)")
    return read_history(output)


def plain_rows(cfg: Any, manifest: dict[str, Any], columns: tuple[str, str]) -> dict[str, Any]:
    """Every training row of the shards as float32 tensors ``(rows, *shape)``, decoded once."""
    import numpy as np
    import torch

    from sepcore.train.outputs import read_shards

    uris = [sh["uri"] for sh in manifest["shards"] if sh["split"] == "train"]
    table = read_shards({"uri": uris})
    out = {}
    for name in columns:
        flat = np.frombuffer(b"".join(table.column(name).to_pylist()), dtype=manifest["dtype"])
        out[name] = torch.from_numpy(flat.reshape(table.num_rows, *manifest["shapes"][name]).astype(np.float32))
    return out


def run_plain(cfg: Any, epochs: int, steps: int) -> list[float]:
    """The plain loop's samples/s per epoch (see the module docstring)."""
    import torch

    from sepcore.train import loop as L
    from sepcore.train import outputs as O
    from sepcore.train.worker import set_input_stats

    torch.set_num_threads(1)
    torch.manual_seed(cfg.seed)
    manifest = O.read_manifest(cfg.data)
    meta = O.inference_meta(cfg, manifest)
    columns = L.columns_for(meta["task"], multi=meta.get("stems") is not None)
    rows = plain_rows(cfg, manifest, columns)
    net, optimizer, _, _ = L.build_for_training(meta["model"], cfg.optim.model_dump(), lambda m: m)
    if O.input_stats_source(cfg, manifest) is not None:  # the BLSTM's input scaling, as the job starts it
        first = rows["mix"][: cfg.model.input_stats_rows]
        set_input_stats(net, [{"mix": first}], meta["model"]["log_input"], cfg.model.input_stats_rows)
    net.train()
    n, bs, loss = rows["mix"].shape[0], cfg.optim.batch_size, cfg.optim.loss
    g = torch.Generator().manual_seed(cfg.seed)
    rates = []
    for _ in range(epochs):
        t0 = time.monotonic()
        for _ in range(steps):
            idx = torch.randint(0, n, (bs,), generator=g)
            batch = {c: rows[c][idx] for c in columns}
            optimizer.zero_grad(set_to_none=True)
            value = L.batch_loss(meta["task"], net, batch, loss, columns)
            value.backward()
            optimizer.step()
            float(value.detach())  # what run_epoch does with each loss
        rates.append(steps * bs / (time.monotonic() - t0))
    return rates


def steady(rates: list[float]) -> float:
    """The median of the epochs after the first (all of them when there is only one)."""
    return statistics.median(rates[1:] if len(rates) > 1 else rates)


def bench(config: str, args: argparse.Namespace) -> dict[str, Any]:
    from ray_jobs.train import TrainConfig
    from sepcore.config import load_config

    output = os.path.join(args.output, os.path.splitext(os.path.basename(config))[0])
    jargs = job_args(config, output, args.epochs, args.steps, args.num_cpus, args.data)
    cfg = load_config(TrainConfig, config, jargs[2:])
    print(f"{config}: {cfg.model.name}, batch {cfg.optim.batch_size}, {args.epochs} epochs x {args.steps} steps, "
          f"1 worker, 1 CPU, 1 torch thread")  # fmt: skip
    print("  command: .venv/bin/python -m ray_jobs.train " + " ".join(f"'{a}'" if " " in a else a for a in jargs))
    history = [] if args.skip_sep else run_sep(jargs, output)
    sep_rates = [float(h["samples_per_s"]) for h in history]
    plain_rates = [] if args.skip_plain else run_plain(cfg, args.epochs, args.steps)
    result = {"config": config, "sep_per_epoch": [round(r, 2) for r in sep_rates],
              "plain_per_epoch": [round(r, 2) for r in plain_rates]}  # fmt: skip
    print(f"  sep   samples/s per epoch: {', '.join(f'{r:.1f}' for r in sep_rates)}")
    print(f"  plain samples/s per epoch: {', '.join(f'{r:.1f}' for r in plain_rates)}")
    if sep_rates and plain_rates:
        sep, plain = steady(sep_rates), steady(plain_rates)
        result.update(sep=round(sep, 2), plain=round(plain, 2), ratio=round(sep / plain, 3))
        print(f"  steady state (median of epochs 2..{args.epochs}): sep {sep:.1f} samples/s, plain {plain:.1f} "
              f"samples/s, ratio {sep / plain:.3f}")  # fmt: skip
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", nargs="+", default=[BLSTM], help="train configs (default: the BLSTM cpu_small)")
    parser.add_argument("--epochs", type=int, default=4, help="epochs of each loop; the first is left out")
    parser.add_argument("--steps", type=int, default=40, help="training steps per epoch")
    parser.add_argument("--num-cpus", type=int, default=2, help="logical CPUs of the job's local Ray: the "
                        "worker's one and one for Ray Data's reading tasks (the process is pinned by taskset)")  # fmt: skip
    parser.add_argument("--data", default=None, help="prepared shards (default: the config's data)")
    parser.add_argument("--output", default="/tmp/sep_train_bench", help="where the train job writes")
    parser.add_argument("--skip-sep", action="store_true", help="the plain loop only")
    parser.add_argument("--skip-plain", action="store_true", help="the train job only")
    parser.add_argument("--json", default=None, help="also write the results here")
    args = parser.parse_args(argv)
    if hasattr(os, "sched_getaffinity"):
        print(f"CPU cores this process may use: {sorted(os.sched_getaffinity(0))}")
    results = [bench(c, args) for c in args.config]
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(results, fh, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
