"""compose: a trained composer writes new General MIDI pieces, measured and reported.

    sep compose checkpoint=out/demo/train_composer output=out/demo/compose pieces=8
    sep render midi=out/demo/compose/pieces output=out/demo/composed_band arrange=band

See docs/compose.md. Composing and measuring run in the driver (a piece takes well under a
second); with ``render`` each piece is rendered as it is by one Ray task for the report's
players. The library side is :mod:`sepcore.compose.job`.
"""

from __future__ import annotations

import sys
from typing import Any, Literal

from pydantic import Field, model_validator

from ray_jobs.common import ItemTasks, Job, JobConfig
from sepcore.batch import Progress, guarded
from sepcore.compose import job as C
from sepcore.compose.data import load_pieces
from sepcore.compose.sample import ComposeSettings
from sepcore.compose.train import grid_of
from sepcore.io import storage


class ComposeConfig(JobConfig):
    checkpoint: str = Field(description="a composer checkpoint or training output (sep train model.name=composer)")
    pieces: int = Field(8, ge=1, description="pieces to write")
    bars: int = Field(24, ge=1, description="length in bars (form blues: rounded up to whole 12-bar choruses)")
    form: Literal["blues", "free"] = Field("blues", description="blues: 12-bar choruses, started from the blues "
                                           "set's pieces; free: any training piece starts")
    meter: tuple[int, int] = Field((4, 4), description="time signature of the pieces")
    temperature: float = Field(1.0, gt=0, description="divides the model's logits (lower: safer choices)")
    seed: int = Field(0, description="piece i of a seed is always the same piece")
    tempo: tuple[float, float] = Field((90.0, 140.0), description="[lo, hi] tempo range, quarters per minute")
    melody_program: int = Field(0, ge=0, le=127, description="General MIDI program of the melody track")
    chord_program: int = Field(0, ge=0, le=127, description="General MIDI program of the chord track")
    measure: bool = Field(True, description="measure likelihood, F1, form, novelty and rhythm (metrics.json)")
    render: bool = Field(True, description="render each piece as it is for the report's players")
    soundfonts: list[str] = Field(["auto"], min_length=1, description="soundfonts of the players (training fonts)")
    sample_rate: int = Field(22050, ge=8000, le=192000, description="sample rate of the players (Hz)")
    item_timeout_s: float = Field(600.0, gt=0, description="time limit of one piece's render")

    @model_validator(mode="after")
    def _check(self) -> ComposeConfig:
        from sepcore.data.soundfonts import resolve

        if self.tempo[0] <= 0 or self.tempo[0] > self.tempo[1]:
            raise ValueError(f"tempo must be [lo, hi] with 0 < lo <= hi, got {list(self.tempo)}")
        if self.render:
            resolve(self.soundfonts, "train")
        return self

    def settings(self) -> ComposeSettings:
        return ComposeSettings(self.bars, self.form, tuple(self.meter), self.temperature, self.seed,  # type: ignore[arg-type]
                               tuple(self.tempo))  # type: ignore[arg-type]  # fmt: skip


def _render_one(midi_uri: str, track_uri: str, params: dict[str, Any]) -> dict[str, Any]:
    """Ray task body: render one piece's MIDI file as it is; never raises for a bad piece."""
    from sepcore.data import render as R

    return {"track": track_uri, **guarded(midi_uri, R.render_song, midi_uri, None, track_uri, **params)}


def _render(cfg: ComposeConfig, output: str, records: list[dict[str, Any]]) -> tuple[dict[str, str], dict[str, str]]:
    """Each piece rendered as it is into ``audio/<id>/`` (finished ones skipped): the mixes'
    URIs and the failures' errors, by piece id."""
    from sepcore.data import render as R

    audio = storage.join(output, C.AUDIO)
    done = R.finished_tracks(audio)
    params = {"soundfonts": list(cfg.soundfonts), "purpose": "train", "seed": cfg.seed, "stem_loudness_lufs": None,
              "sample_rate": cfg.sample_rate, "channels": 1, "fmt": "flac", "target_peak_db": -1.0}  # fmt: skip
    tasks = ItemTasks(cfg.item_timeout_s, "item_timeout_s", num_cpus=1, max_retries=1)
    todo = [r for r in records if r["id"] not in done]
    for r in todo:
        tasks.submit(r["id"], _render_one, r["midi"], storage.join(audio, r["id"]), params)
    progress = Progress("compose render", len(todo), len(records) - len(todo), "piece")
    failed = {}
    for fin in tasks.gather():
        error = fin.error or fin.value.get("error")
        if error:
            failed[fin.item] = error
        progress.update(fin.item, f"FAILED {error}" if error else "rendered", failed=bool(error))
    progress.close()
    return {r["id"]: storage.join(audio, r["id"], "mix.flac") for r in records if r["id"] not in failed}, failed


def run(cfg: ComposeConfig) -> dict[str, Any]:
    output = storage.normalize_uri(cfg.output)
    model, meta = C.load_composer(cfg.checkpoint)
    settings = cfg.settings()
    splits, _ = load_pieces(C.sequences_of(meta))
    composed, records = [], []
    progress = Progress("compose", cfg.pieces, 0, "piece")
    for piece in C.compose(model, meta, splits["train"], cfg.pieces, settings):  # each written as it comes
        composed.append(piece)
        records.append(C.write_piece(output, piece, grid_of(meta), cfg.melody_program, cfg.chord_program))
        progress.update(piece.piece_id, f"{records[-1]['bars']} bars, {records[-1]['seconds']:.0f} s")
    progress.close()
    mixes, errors = _render(cfg, output, records) if cfg.render else ({}, {})
    metrics = C.measure(model, meta, splits, composed, settings) if cfg.measure else None
    history = meta.get("history", [])
    C.write_outputs(output, cfg.checkpoint, records, mixes, metrics, history)
    figures = C.summary_figures(metrics) if metrics else {}
    failed = [{"item": item, "error": error} for item, error in errors.items()]
    return {"counts": {"pieces": len(records), "written": sum(r["written"] for r in records),
                       "rendered": len(mixes), "failed": len(failed)},
            "figures": figures, "failed": failed, "report": storage.join(output, "report.html")}  # fmt: skip


JOB = Job("compose", ComposeConfig, run, "Compose new pieces with a trained LSTM composer (seed 003).")
main = JOB.main

if __name__ == "__main__":
    sys.exit(main())
