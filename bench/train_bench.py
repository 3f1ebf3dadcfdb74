"""Training overhead: samples/s of ``sep train``'s loop against a plain PyTorch loop (issue 26).

    .venv/bin/python bench/train_bench.py --worker-core 1          # BLSTM cpu_small; the model has core 1 to itself
    taskset -c 1 .venv/bin/python bench/train_bench.py             # everything, Ray's own processes too, on core 1
    .venv/bin/python bench/train_bench.py --worker-core 1 --config configs/train_hourglass_cpu_small.yaml

(a) ``sep``: the real train job (``python -m ray_jobs.train``, a Ray Train TorchTrainer with
    one worker of one CPU and one torch thread) for ``--epochs`` epochs of ``--steps`` steps.
    Its figure is the job's own ``samples_per_s`` of each epoch (``metrics.jsonl``: training
    samples over the training loop's wall time, so validation and checkpoints are left out);
    the first epoch (start-up) is left out and the median of the others is taken.
(b) ``plain``: one process, the same model, optimiser, loss, batch size and seed; every
    training row of the same shards decoded once into one float32 tensor (not timed), then
    random batches indexed from it; one torch thread; the same steps, timed per epoch the
    same way (median of the epochs after the first). No validation, no checkpoints.

Where they run: with ``--worker-core N`` the Ray Train worker's threads are moved to core N
as soon as it starts and everything else of the job (driver, raylet, GCS, dashboard, Ray
Train's and Ray Data's actors, read tasks) is kept on the other cores; the plain loop then
runs on core N too. Both models thus get one core of their own, as a one-CPU worker has on
a cluster node, and the ratio is the loop's own overhead. Without it, the job and the plain
loop inherit this process's cores: under ``taskset -c 1`` Ray's own processes share the one
core with the model, and the ratio also pays for them.

Both read the shards the job's config names (``--data`` to change); the job writes under
``--output`` only.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import threading
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


def pin_worker(core: int, stop: threading.Event) -> None:
    """Until ``stop``: every thread of this process's descendants named ``ray::RayTrainWorker`` onto
    ``core`` (checked every 0.5 s; the threads it starts later inherit the core)."""
    while not stop.wait(0.5):
        for pid in descendants(os.getpid()):
            try:
                with open(f"/proc/{pid}/cmdline", "rb") as fh:
                    if not fh.read().startswith(b"ray::RayTrainWorker"):
                        continue
                for tid in os.listdir(f"/proc/{pid}/task"):
                    if os.sched_getaffinity(int(tid)) != {core}:
                        os.sched_setaffinity(int(tid), {core})
            except (OSError, ValueError):  # gone meanwhile
                continue


def descendants(root: int) -> list[int]:
    """The processes below ``root`` (children, their children, ...)."""
    children: dict[int, list[int]] = {}
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{pid}/stat") as fh:
                ppid = int(fh.read().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            continue
        children.setdefault(ppid, []).append(int(pid))
    found, todo = [], [root]
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


def run_sep(args: list[str], output: str, worker_core: int | None) -> list[dict[str, Any]]:
    """Run the train job in a child process (on this process's cores; see the module docstring for
    ``worker_core``); its epochs' metrics."""
    from sepcore.train.outputs import read_history

    t0 = time.monotonic()
    # A core shared with other work can starve the raylet's heartbeats: give it more slack than Ray's 15 s.
    env = {"RAY_health_check_failure_threshold": "40", **os.environ}
    stop, before = threading.Event(), os.sched_getaffinity(0)
    if worker_core is not None:  # the job starts off the worker's core; only the worker is moved onto it
        os.sched_setaffinity(0, before - {worker_core})
        threading.Thread(target=pin_worker, args=(worker_core, stop), daemon=True).start()
    try:
        done = subprocess.run([sys.executable, "-m", "ray_jobs.train", *args], capture_output=True, text=True,
                              cwd=ROOT, env=env)  # fmt: skip
    finally:
        stop.set()
        os.sched_setaffinity(0, before)
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


def on_core(core: int | None, fn: Any, *args: Any) -> Any:
    """``fn(*args)`` with this process on ``core`` (None: where it is), its cores given back after."""
    before = os.sched_getaffinity(0)
    if core is not None:
        os.sched_setaffinity(0, {core})
    try:
        return fn(*args)
    finally:
        os.sched_setaffinity(0, before)


def steady(rates: list[float]) -> float:
    """The median of the epochs after the first (all of them when there is only one)."""
    return statistics.median(rates[1:] if len(rates) > 1 else rates)


def bench(config: str, args: argparse.Namespace) -> dict[str, Any]:
    from ray_jobs.train import TrainConfig
    from sepcore.config import load_config

    output = os.path.join(args.output, os.path.splitext(os.path.basename(config))[0])
    jargs = job_args(config, output, args.epochs, args.steps, args.num_cpus, args.data) + args.set
    cfg = load_config(TrainConfig, config, jargs[2:])
    print(f"{config}: {cfg.model.name}, batch {cfg.optim.batch_size}, {args.epochs} epochs x {args.steps} steps, "
          f"1 worker, 1 CPU, 1 torch thread")  # fmt: skip
    print("  command: .venv/bin/python -m ray_jobs.train " + " ".join(f"'{a}'" if " " in a else a for a in jargs))
    history = [] if args.skip_sep else run_sep(jargs, output, args.worker_core)
    sep_rates = [float(h["samples_per_s"]) for h in history]
    plain_rates = [] if args.skip_plain else on_core(args.worker_core, run_plain, cfg, args.epochs, args.steps)
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
                        "worker's one and one for Ray Data's reading tasks")  # fmt: skip
    parser.add_argument("--worker-core", type=int, default=None, help="give the Ray Train worker this core "
                        "to itself and run the plain loop there (default: both on this process's cores)")  # fmt: skip
    parser.add_argument("--data", default=None, help="prepared shards (default: the config's data)")
    parser.add_argument("--output", default="/tmp/sep_train_bench", help="where the train job writes")
    parser.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE",
                        help="more overrides of the job (e.g. loader.cache_mb=0: read the shards every epoch)")  # fmt: skip
    parser.add_argument("--skip-sep", action="store_true", help="the plain loop only")
    parser.add_argument("--skip-plain", action="store_true", help="the train job only")
    parser.add_argument("--json", default=None, help="also write the results here")
    args = parser.parse_args(argv)
    cores = sorted(os.sched_getaffinity(0))
    print(f"CPU cores this process may use: {cores}")
    if args.worker_core is not None:
        if args.worker_core not in cores or len(cores) < 2:
            sys.exit(f"--worker-core {args.worker_core}: needs that core and another among {cores}")
        print(f"the Ray Train worker and the plain loop on core {args.worker_core}, the rest of Ray on the others")
    results = [bench(c, args) for c in args.config]
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(results, fh, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
