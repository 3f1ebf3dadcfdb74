"""What a separator replica does for one job: stems, spectrograms, one zip.

:func:`separation_settings` is the separate job's :class:`SeparationSettings` for a
served model; :func:`run_job` separates a job's input with the one file path of
``sep separate`` (:func:`sepcore.separate.library.separate_file`: isolated decoding,
bounded memory, stems written whole or not at all) and records the outcome in the
job's ``job.json``. A bad input ends as state ``error`` with the message; the replica
goes on with the next job.
"""

from __future__ import annotations

import io
import logging
import os
import shutil
import tempfile
import time
import zipfile
from types import SimpleNamespace
from typing import Any

import numpy as np
import soundfile as sf

from sepcore import faults
from sepcore.errors import SepError
from sepcore.io import storage
from sepcore.report.html import AUDIO_TYPES
from sepcore.separate.config import DecodeLimits, Inference, SeparationSettings
from sepcore.separate.library import LibraryFile, separate_file
from sepcore.serve.config import ServeConfig
from sepcore.serve.jobs import JobStore

log = logging.getLogger("sep.serve")

MEDIA_TYPES = {**{f".{ext}": kind for ext, kind in AUDIO_TYPES.items()}, ".png": "image/png", ".zip": "application/zip"}
#: Spectrogram images: FFT size, frequency rows kept and most time columns.
SPEC_FFT, SPEC_ROWS, SPEC_COLUMNS = 2048, 512, 1200
#: Their colour scale, dB relative to a full-scale sine.
SPEC_RANGE_DB = (-90.0, 0.0)


def separation_settings(cfg: ServeConfig, checkpoint: str, meta: dict[str, Any]) -> SeparationSettings:
    """The settings ``sep separate`` would use for ``checkpoint`` (with ``meta``) and the
    server's ``format``, ``separator.batch_size`` and ``block_seconds``: every stem of the model."""
    view = SimpleNamespace(
        checkpoint=checkpoint, format=cfg.format, sample_rate=None, channels=None, stems=None,
        wiener_iterations=None, demucs=None,
        inference=Inference(batch_size=cfg.separator.batch_size, block_seconds=cfg.separator.block_seconds),
    )  # fmt: skip
    return SeparationSettings.of(view, meta)


def run_job(separator: Any, settings: SeparationSettings, store: JobStore, job_id: str,
            stems: list[str], cfg: ServeConfig) -> dict[str, Any]:  # fmt: skip
    """Separate job ``job_id``'s input into ``stems`` (a subset of ``settings.all_stems``) and
    record the result; returns the job as recorded (state ``done`` or ``error``)."""
    job = store.read(job_id)
    if job is None:
        raise SepError(f"job {job_id} is gone (expired or deleted) before it started")
    job = store.update(job_id, state="running", started=time.time(), attempts=int(job.get("attempts", 0)) + 1)
    # drills and tests: SEP_FAULTS=item_crash:<pattern> matched against "<input name> attempt <n>"
    faults.maybe_fire("item", f"{job.get('input_name')} attempt {job['attempts']}")
    start = time.monotonic()
    scratch = tempfile.mkdtemp(prefix="sep-serve-")
    try:
        fields = _separate(separator, settings, store, job, stems, cfg, scratch)
        seconds = time.monotonic() - start
        return store.update(job_id, state="done", seconds=round(seconds, 3), finished=time.time(), **fields)
    except Exception as exc:  # a bad input ends this job, never the replica
        if not isinstance(exc, SepError):
            log.exception("serve: unexpected error in job %s", job_id)
        return store.update(job_id, state="error", error=f"{type(exc).__name__}: {exc}", finished=time.time())
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def _separate(separator: Any, settings: SeparationSettings, store: JobStore, job: dict[str, Any],
              stems: list[str], cfg: ServeConfig, scratch: str) -> dict[str, Any]:  # fmt: skip
    job_id, ext = job["id"], settings.output_format
    written = tuple(s for s in settings.all_stems if s in stems)
    chosen = settings.model_copy(update={"stems": written if written != settings.written else settings.stems})
    source = LibraryFile(job["input_uri"], job["input_name"], int(job.get("input_size") or 0), "")
    result = separate_file(separator, source, store.uri(job_id, "stems"), chosen, scratch,
                           cfg.decode_timeout_s, DecodeLimits().max_memory_mb, cfg.max_seconds)  # fmt: skip
    files = dict(job.get("files", {}))
    uris = {stem: result[f"{stem}_uri"] for stem in chosen.written}
    for stem in uris:
        files[f"{stem}.{ext}"] = f"stems/{stem}.{ext}"
    pictures = {"mixture": store.uri(job_id, files["mixture.flac"]), **uris} if "mixture.flac" in files else uris
    for name, uri in pictures.items():
        with storage.local_copy(uri) as local:
            samples, rate = sf.read(local, dtype="float32", always_2d=True)
        storage.write_bytes(store.uri(job_id, "spectrograms", f"{name}.png"), spectrogram_png(samples, rate))
        files[f"{name}.png"] = f"spectrograms/{name}.png"
    zip_path = os.path.join(scratch, "stems.zip")
    with zipfile.ZipFile(zip_path, "w", zipfile.ZIP_STORED) as zf:  # FLAC is compressed already
        for stem, uri in uris.items():
            with storage.local_copy(uri) as local:
                zf.write(local, f"{stem}.{ext}")
    storage.upload(zip_path, store.uri(job_id, "stems.zip"))
    files["stems.zip"] = "stems.zip"
    return {"files": files, "stems": list(uris), "sample_rate": result["sample_rate"],
            "channels": result["channels"], "duration_s": result["duration_s"],
            "timings": {k: round(result[k], 3) for k in ("decode_s", "separate_s", "write_s")}}  # fmt: skip


def spectrogram_png(samples: np.ndarray, rate: int) -> bytes:
    """A log-magnitude spectrogram of ``samples`` ``(frames, channels)`` (their mean) as PNG:
    time left to right (at most :data:`SPEC_COLUMNS` columns), 0 Hz at the bottom,
    :data:`SPEC_RANGE_DB` on the magma scale."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    mono = samples.mean(axis=1) if samples.ndim == 2 else samples
    if mono.shape[0] < SPEC_FFT:
        mono = np.pad(mono, (0, SPEC_FFT - mono.shape[0]))
    hop = max(SPEC_FFT // 4, -(-(mono.shape[0] - SPEC_FFT) // SPEC_COLUMNS))
    count = 1 + (mono.shape[0] - SPEC_FFT) // hop
    frames = np.lib.stride_tricks.as_strided(mono, (count, SPEC_FFT), (mono.strides[0] * hop, mono.strides[0]))
    window = np.hanning(SPEC_FFT).astype(np.float32)
    mag = np.abs(np.fft.rfft(frames * window, axis=1))[:, : SPEC_FFT // 2] / (window.sum() / 2)
    rows = mag.reshape(count, SPEC_ROWS, -1).max(axis=2)  # fold bins into rows
    db = 20.0 * np.log10(np.maximum(rows.T, 1e-9))
    buf = io.BytesIO()
    plt.imsave(buf, db[::-1], cmap="magma", vmin=SPEC_RANGE_DB[0], vmax=SPEC_RANGE_DB[1], format="png")
    return buf.getvalue()


def media_type(name: str) -> str:
    return MEDIA_TYPES.get(os.path.splitext(name)[1], "application/octet-stream")
