"""render: a MIDI collection -> Slakh-layout multitrack audio, one Ray task per song.

    sep render midi=demo output=file:///tmp/demo tracks=40
    python -m ray_jobs.render -c configs/render_demo.yaml

Songs are numbered ``Track00001``... in the sorted order of the MIDI files. A track
whose ``metadata.yaml`` exists is finished and is skipped on a rerun; a song that
fails to render is reported in ``summary.json`` and the others go on.
"""

from __future__ import annotations

import logging
import sys
import time
from typing import Any, Literal

from pydantic import Field

from ray_jobs.common import ItemTasks, Job, JobConfig
from sepcore.config import Config
from sepcore.data.slakh import METADATA
from sepcore.errors import SepError, StorageError
from sepcore.io import storage

log = logging.getLogger("sep.render")

MIDI_SUFFIXES = (".mid", ".midi")


class DemoCorpusConfig(Config):
    """The built-in corpus used when ``midi: demo``."""

    min_seconds: float = Field(30.0, gt=0, description="shortest song; shorter pieces repeat")
    max_seconds: float = Field(40.0, gt=0, description="songs are cut at the first barline after this")


class RenderConfig(JobConfig):
    midi: str = Field(description="URI of a folder of .mid files, or 'demo' for the built-in corpus")
    tracks: int | None = Field(None, ge=1, description="render at most this many songs (default: all; demo: 40)")
    seed: int = Field(0, description="seed of the demo corpus (pieces, instruments, drums)")
    soundfont: str = Field("auto", description="General MIDI .sf2 path, or 'auto' for the installed one")
    sample_rate: int = Field(44100, ge=8000, le=192000, description="sample rate of the stems and mix (Hz)")
    channels: Literal[1, 2] = Field(2, description="1 = mono, 2 = stereo")
    format: Literal["flac", "wav"] = Field("flac", description="audio file format")
    target_peak_db: float = Field(-1.0, le=0, description="peak level of the loudest stem and of the mix (dBFS)")
    max_failed_fraction: float = Field(
        0.5, ge=0, le=1, description="the job fails (exit 1) when more songs than this fail"
    )
    demo: DemoCorpusConfig = Field(default_factory=DemoCorpusConfig, description="built-in corpus")
    item_timeout_s: float = Field(
        3600.0, gt=0, description="time limit of one song's task, from its start: then it is "
        "cancelled and the song recorded as failed (an hour of MIDI renders in minutes)",
    )


def _sources(cfg: RenderConfig) -> list[tuple[str, bytes | None]]:
    """(name, bytes or None) per song; demo songs travel as bytes, others as URIs."""
    if cfg.midi == "demo":
        from sepcore.data.corpus import build_demo_midi

        d = cfg.demo
        n = cfg.tracks or 40
        folder = storage.join(
            "file://" + _cache("demo_midi"), f"seed{cfg.seed}-n{n}-{d.min_seconds:g}-{d.max_seconds:g}"
        )
        paths = build_demo_midi(
            storage.local_path(folder), tracks=n, seed=cfg.seed,
            min_seconds=d.min_seconds, max_seconds=d.max_seconds,
        )  # fmt: skip
        return [(p, open(p, "rb").read()) for p in sorted(paths)]
    uris = [u for u in storage.list_files(cfg.midi) if u.lower().endswith(MIDI_SUFFIXES)]
    if not uris:
        raise StorageError(cfg.midi, "no .mid files found")
    return [(u, None) for u in uris[: cfg.tracks]]


def _cache(name: str) -> str:
    from sepcore.io.cache import cache_dir

    return cache_dir(name)


def _render_one(name: str, data: bytes | None, track_uri: str, params: dict[str, Any]) -> dict:
    """Ray task body: render one song; never raises for a bad song."""
    import ray

    from sepcore.data.render import render_track

    t0 = time.monotonic()
    node = ray.get_runtime_context().get_node_id()
    try:
        midi = data if data is not None else storage.read_bytes(name)
        meta = render_track(midi, name, track_uri, **params)
    except SepError as exc:  # names the file and the problem already
        return {"item": name, "track": track_uri, "node": node, "error": str(exc)}
    except Exception as exc:  # one bad song must not stop the job
        return {"item": name, "track": track_uri, "node": node, "error": f"{name}: {type(exc).__name__}: {exc}"}
    return {
        "item": name, "track": track_uri, "node": node, "stems": len(meta["stems"]),
        "seconds": meta["seconds"], "wall_s": round(time.monotonic() - t0, 3),
    }  # fmt: skip


def run(cfg: RenderConfig) -> dict[str, Any]:
    output = storage.normalize_uri(cfg.output)
    sources = _sources(cfg)
    done = {u.rsplit("/", 2)[-2] for u in storage.list_files(output, suffix="/" + METADATA)}
    params = {
        "soundfont": cfg.soundfont, "sample_rate": cfg.sample_rate, "channels": cfg.channels,
        "fmt": cfg.format, "target_peak_db": cfg.target_peak_db,
    }  # fmt: skip
    tasks = ItemTasks(cfg.item_timeout_s, "item_timeout_s", num_cpus=1, max_retries=2)
    tracks, skipped = {}, 0
    for i, (name, data) in enumerate(sources):
        track_id = f"Track{i + 1:05d}"
        if track_id in done:
            skipped += 1
            continue
        tracks[name] = storage.join(output, track_id)
        tasks.submit(name, _render_one, name, data, tracks[name], params)
    log.info("render: %d songs, %d already done, %d to render", len(sources), skipped, len(tasks))
    results = []
    for fin in tasks.gather():
        res = fin.value if fin.error is None else {"item": fin.item, "track": tracks[fin.item], "error": fin.error}
        results.append(res)
        state = f"FAILED {res['error']}" if "error" in res else f"{res['stems']} stems, {res['seconds']:.1f} s"
        log.info("render [%d/%d] %s: %s", len(results) + skipped, len(sources), res["track"].rsplit("/", 1)[-1], state)
    return summarize(results, skipped, len(sources), cfg.max_failed_fraction)


def summarize(results: list[dict], skipped: int, total: int, max_failed_fraction: float) -> dict[str, Any]:
    ok = [r for r in results if "error" not in r]
    failed = [{"item": r["item"], "error": r["error"]} for r in results if "error" in r]
    audio_s = sum(r["seconds"] for r in ok)
    busy_s = sum(r["wall_s"] for r in ok)
    summary: dict[str, Any] = {
        "counts": {"songs": total, "rendered": len(ok), "skipped_done": skipped, "failed": len(failed)},
        "figures": {
            "audio_seconds": round(audio_s, 2),
            "x_realtime_per_task": round(audio_s / busy_s, 2) if busy_s else None,
        },
        "failed": failed,
        "nodes": sorted({r["node"] for r in results if r.get("node")}),
    }
    if failed and len(failed) > max_failed_fraction * total:
        summary["status"] = "failed"
        summary["error"] = f"{len(failed)} of {total} songs failed to render"
    return summary


JOB = Job("render", RenderConfig, run, "Render a MIDI collection into Slakh-layout multitrack audio.")
main = JOB.main

if __name__ == "__main__":
    sys.exit(main())
