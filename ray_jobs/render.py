"""render: a MIDI collection -> Slakh-layout multitrack audio, one Ray task per song.

    sep render -c configs/render_band.yaml tracks=24
    sep render midi=demo output=file:///tmp/demo tracks=40
    sep render midi=file:///tmp/composed output=file:///tmp/arranged arrange=band
    python -m ray_jobs.render -c configs/render_demo.yaml

See docs/render.md. The per-song work is :func:`sepcore.data.render.render_song`
(a MIDI file as it is) or :func:`sepcore.data.band.render_band_song` (a band-corpus song,
or with ``arrange: band`` a MIDI file read as a lead sheet and arranged for a band).
"""

from __future__ import annotations

import sys
from typing import Any, Literal

from pydantic import Field, model_validator

from ray_jobs.common import ItemTasks, Job, JobConfig
from sepcore.batch import Progress, guarded, verdict
from sepcore.data import band as B
from sepcore.data import render as R
from sepcore.data.corpus import DemoCorpusConfig
from sepcore.io import storage


class RenderConfig(JobConfig):
    midi: str = Field(
        description="URI of a folder of .mid files (rendered as they are, or arranged: see arrange), "
        "'band' for the band corpus or 'demo' for the chorale corpus"
    )
    arrange: Literal["none", "band"] = Field(
        "none", description="'none': render each MIDI file as it is; 'band': read each file of the "
        "midi folder as a lead sheet and arrange it for a band first (style per piece; band.styles, "
        "band.seconds and band.require_roles apply)",
    )
    tracks: int | None = Field(None, ge=1, description="render at most this many songs (default: all; demo: 40)")
    seed: int = Field(0, description="seed of the built-in corpora (pieces, styles, instruments) and of the fonts")
    soundfonts: list[str] = Field(
        ["auto"], min_length=1, description="soundfont names, families or .sf2 paths; one is drawn per stem"
    )
    purpose: Literal["train", "test"] = Field(
        "train", description="'test' allows the held-out soundfonts; a training render refuses them"
    )
    stem_loudness_lufs: float | None = Field(
        None, le=0, description="each stem is brought to this integrated loudness before mixing (Slakh)"
    )
    sample_rate: int = Field(44100, ge=8000, le=192000, description="sample rate of the stems and mix (Hz)")
    channels: Literal[1, 2] = Field(2, description="1 = mono, 2 = stereo")
    format: Literal["flac", "wav"] = Field("flac", description="audio file format")
    target_peak_db: float = Field(-1.0, le=0, description="peak level of the loudest stem and of the mix (dBFS)")
    max_failed_fraction: float = Field(
        0.5, ge=0, le=1, description="the job fails (exit 1) when more songs than this fail"
    )
    demo: DemoCorpusConfig = Field(default_factory=DemoCorpusConfig, description="chorale corpus (midi: demo)")
    band: B.BandCorpusConfig = Field(default_factory=B.BandCorpusConfig, description="band corpus (midi: band)")
    item_timeout_s: float = Field(
        3600.0, gt=0, description="time limit of one song's task, from its start: then it is "
        "cancelled and the song recorded as failed (an hour of MIDI renders in minutes)",
    )

    @model_validator(mode="after")
    def _fonts_fit_the_purpose(self) -> RenderConfig:
        from sepcore.data.soundfonts import resolve

        resolve(self.soundfonts, self.purpose)
        if self.arrange == "band" and self.midi in ("band", "demo"):
            raise ValueError(
                f"arrange: band arranges a folder of .mid files; midi: {self.midi} is a built-in "
                "corpus (use arrange: none)"
            )
        if self.midi == "band" or self.arrange == "band":
            B.eligible_collections(self.band)
            B.check_styles(self.band.styles)
        return self


def _render_one(name: str, song: Any, track_uri: str, params: dict[str, Any]) -> dict:
    """Ray task body: render one song; never raises for a bad song."""
    import ray

    node = ray.get_runtime_context().get_node_id()
    if isinstance(song, B.BandSong):
        outcome = guarded(name, B.render_band_song, song, track_uri, **params)
    else:
        outcome = guarded(name, R.render_song, name, song, track_uri, **params)
    return {"track": track_uri, "node": node, **outcome}


def _songs(cfg: RenderConfig) -> list[tuple[str, Any]]:
    if cfg.midi == "band":
        return [(s.name, s) for s in B.band_songs(cfg.band, cfg.tracks, cfg.seed)]
    if cfg.arrange == "band":
        uris = [uri for uri, _ in R.list_songs(cfg.midi, cfg.tracks, cfg.seed)]
        return [(s.name, s) for s in B.file_songs(cfg.band, storage.normalize_uri(cfg.midi), uris, cfg.seed)]
    return R.list_songs(cfg.midi, cfg.tracks, cfg.seed, cfg.demo)


def run(cfg: RenderConfig) -> dict[str, Any]:
    output = storage.normalize_uri(cfg.output)
    songs = _songs(cfg)
    done = R.finished_tracks(output)
    params = {
        "soundfonts": list(cfg.soundfonts), "purpose": cfg.purpose, "seed": cfg.seed,
        "stem_loudness_lufs": cfg.stem_loudness_lufs, "sample_rate": cfg.sample_rate,
        "channels": cfg.channels, "fmt": cfg.format, "target_peak_db": cfg.target_peak_db,
    }  # fmt: skip
    tasks = ItemTasks(cfg.item_timeout_s, "item_timeout_s", num_cpus=1, max_retries=2)
    tracks = {name: storage.join(output, f"Track{i + 1:05d}") for i, (name, _) in enumerate(songs)}
    todo = [(name, song) for name, song in songs if tracks[name].rsplit("/", 1)[-1] not in done]
    for name, song in todo:
        tasks.submit(name, _render_one, name, song, tracks[name], params)
    progress = Progress("render", len(todo), len(songs) - len(todo), "song")
    results = []
    for fin in tasks.gather():
        res = fin.value if fin.error is None else {"item": fin.item, "track": tracks[fin.item], "error": fin.error}
        results.append(res)
        state = f"FAILED {res['error']}" if "error" in res else f"{res['stems']} stems, {res['seconds']:.1f} s"
        progress.update(res["track"].rsplit("/", 1)[-1], state, failed="error" in res)
    progress.close()
    summary = R.render_summary(results, len(songs) - len(todo), len(songs))
    failed = summary["counts"]["failed"]
    return {**summary, **verdict(failed, len(songs), cfg.max_failed_fraction, "songs")}


JOB = Job("render", RenderConfig, run, "Render a MIDI collection into Slakh-layout multitrack audio.")
main = JOB.main

if __name__ == "__main__":
    sys.exit(main())
