"""prepare, random-mix mode (seed 001): solo segments -> balanced, shuffled random mixes.

Called by ``ray_jobs.prepare`` when ``target: random_mix`` (see docs/prepare.md); it also
holds the Ray pieces both modes use (:class:`TrackActor`, :class:`WarmPool`, :func:`track_dataset`,
:func:`pool`).
Segments never cross splits, so no track reaches two splits.
"""

from __future__ import annotations

import pickle
from collections import Counter
from collections.abc import Callable, Iterator
from typing import Any

from sepcore.batch import ItemWatchdog
from sepcore.data.sources import SourceTrack
from sepcore.io.ledger import Ledger
from sepcore.prepare import manifest as M
from sepcore.prepare import steps
from sepcore.prepare.config import PrepareSpec


def one_thread() -> None:
    """Several actors share the cores: one torch thread each is fastest (measured)."""
    import torch

    torch.set_num_threads(1)


def pool(size: int) -> Any:
    """A pool of one to ``size`` actors."""
    import ray

    return ray.data.ActorPoolStrategy(min_size=1, max_size=size)


def track_dataset(tracks: list[SourceTrack], splits: dict[str, str]) -> Any:
    """One row per track (``track`` pickled, ``split``), one block each."""
    import ray

    items = [{"track": pickle.dumps(t), "split": splits[t.track_id]} for t in tracks]
    return ray.data.from_items(items, override_num_blocks=max(1, len(items)))


class TrackActor:
    """Ray Data actor: ``fn(track, split, *args)`` per track row, within the time limit per track.

    The failures go to ``ledger`` (None: no limit); the retry of a track whose limit
    ended the actor calls ``fn(..., error=<its failure>)`` instead.
    """

    def __init__(self, fn: Callable[..., Any], limit_s: float, ledger: str | None, *args: Any):
        one_thread()
        self.fn, self.args = fn, args
        self.watchdog = ItemWatchdog(limit_s, "item_timeout_s", ledger)

    def __call__(self, row: dict[str, Any], **kwargs: Any) -> Any:
        track: SourceTrack = pickle.loads(row["track"])
        timed_out = self.watchdog.recorded(track.track_id)
        if timed_out is not None:  # this call is Ray's retry after the time limit ended the actor
            return self.fn(track, row["split"], *self.args, error=timed_out, **kwargs)
        with self.watchdog.running(track.track_id):
            return self.fn(track, row["split"], *self.args, **kwargs)


class TrackWorker:
    """A process of :class:`WarmPool`: ``fn(track, split, *args, pool=donors)`` per track, within
    the time limit per track (as :class:`TrackActor`).

    ``fn``'s imports are done when the worker starts (:func:`sepcore.prepare.steps.warm_up`), so
    they overlap the driver's listing. The donors (None, or an object reference in a list, so Ray
    passes it unresolved) are fetched once per process, also after a restart.
    """

    def __init__(self, fn: Callable[..., Any], limit_s: float, ledger: str | None, spec: PrepareSpec, *args: Any):
        steps.warm_up(spec)
        self.actor = TrackActor(fn, limit_s, ledger, spec, *args)
        self.donors: tuple[Any, Any] | None = None

    def ready(self) -> bool:
        return True

    def __call__(self, track: bytes, split: str, donors: list[Any] | None) -> Any:
        import ray

        if donors is None:
            return self.actor({"track": track, "split": split})
        if self.donors is None or self.donors[0] != donors[0]:
            self.donors = (donors[0], ray.get(donors[0]))
        return self.actor({"track": track, "split": split}, pool=self.donors[1])


class WarmPool:
    """A fixed pool of ``size`` :class:`TrackWorker` processes, started at once (before the
    tracks are listed), each kept busy with ``depth`` tracks in flight.

    Ray Data's executor costs seconds per run on a small machine (8-9 s measured on one core
    for a trivial actor map); this is one actor per process and a :func:`ray.wait` loop. A
    worker that ends (its time limit) is restarted by Ray and its calls retried
    (``max_restarts=-1``, ``max_task_retries=-1``); only started workers get tracks, so a
    pool larger than the cluster's CPUs still finishes.
    """

    def __init__(self, size: int, cpus: float, worker_args: tuple[Any, ...], depth: int = 2):
        import ray

        remote: Any = ray.remote(TrackWorker).options(num_cpus=cpus, max_restarts=-1, max_task_retries=-1)
        self.workers: list[Any] = [remote.remote(*worker_args) for _ in range(size)]
        self.depth = depth

    def run(self, items: list[tuple[bytes, str]], donors: Any = None) -> Iterator[Any]:
        """Each ``(pickled track, split)``'s result, as they finish; ``donors``: None or the
        donors' object reference."""
        import ray

        todo = list(reversed(items))
        waiting = {w.ready.remote(): w for w in self.workers}  # not started yet
        running: dict[Any, Any] = {}  # call -> its worker
        load: dict[Any, int] = {}
        arg = None if donors is None else [donors]
        while todo or running:
            for w in [w for w, n in load.items() if n < self.depth]:
                while todo and load[w] < self.depth:
                    running[w.__call__.remote(*todo.pop(), arg)] = w
                    load[w] += 1
            ready, _ = ray.wait([*running, *waiting], num_returns=1)
            for ref in ready:
                if ref in waiting:
                    load[waiting.pop(ref)] = 0
                    continue
                load[running.pop(ref)] -= 1
                yield ray.get(ref)

    def close(self) -> None:
        import ray

        for w in self.workers:
            ray.kill(w)


class BatchActor:
    """Ray Data actor: ``fn(batch, *args)`` per batch (random mixes: mixing, features)."""

    def __init__(self, fn: Callable[..., dict[str, list]], *args: Any):
        one_thread()
        self.fn, self.args = fn, args

    def __call__(self, batch: dict[str, Any]) -> dict[str, list]:
        return self.fn(batch, *self.args)


def _epoch(segments: Any, cfg: Any, spec: PrepareSpec, output: str, epoch: int, copies: Counter[str]) -> Any:
    rm, a = cfg.random_mix, cfg.actors
    ds = segments.flat_map(steps.copies_of, fn_args=(copies,)).random_shuffle(seed=cfg.seed * 1000 + epoch)
    mix = (steps.mix_batch, spec, rm.min_instruments, rm.max_instruments, cfg.seed, epoch)
    ds = ds.map_batches(BatchActor, batch_size=rm.batch_mixes, compute=pool(a.mix), num_cpus=a.cpus,
                        fn_constructor_args=mix)  # fmt: skip
    shards = (steps.write_mix_shards, spec, spec.extractor(), output, epoch)
    return ds.map_batches(BatchActor, batch_size=rm.batch_mixes, compute=pool(a.feature), num_cpus=a.cpus,
                          fn_constructor_args=shards)  # fmt: skip


def run_random_mix(cfg: Any, spec: PrepareSpec, tracks: list[SourceTrack], splits: dict[str, str],
                   output: str, done: Ledger, timeouts: str, listing: list[dict[str, str]]) -> dict[str, Any]:  # fmt: skip
    """Random mixes of ``tracks`` (``cfg``: the prepare job's config) into ``output``; the summary."""
    rm, a = cfg.random_mix, cfg.actors
    args = (steps.segment_rows, cfg.item_timeout_s, timeouts, spec, rm.segment_seconds)
    segments = (track_dataset(tracks, splits)
                .flat_map(TrackActor, fn_constructor_args=args, compute=pool(a.mix), num_cpus=a.cpus)
                .materialize())  # fmt: skip
    meta = segments.select_columns(["track_id", "split", "segment_id", "inst_class", "error"]).take_all()
    good, failed = M.split_segments(meta)
    copies = steps.segment_copies(good, rm.balance, rm.max_oversample, cfg.seed)
    shards: list[dict[str, Any]] = []
    for epoch in range(rm.epochs):
        record = done.get(f"mix-e{epoch:03d}")
        if record is None:
            columns = segments.select_columns(["segment_id", "inst_class", "split", "audio"])
            record = M.epoch_record(_epoch(columns, cfg, spec, output, epoch, copies).take_all(), epoch)
            done.put(f"mix-e{epoch:03d}", record)
        shards.extend(record["shards"])
    return M.finish_mixes(output, spec, shards, good, cfg.model_dump(mode="json"), failed + listing)
