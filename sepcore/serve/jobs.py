"""The web demonstrator's jobs in the configured output storage, and the checks of an input.

A job lives under a random id that the server draws (never a name the client chose)::

    <output>/jobs/<id>/job.json        state (queued, running, done, error), model, stems, times
    <output>/jobs/<id>/input.<ext>     the upload as sent (a named URI is read where it is)
    <output>/jobs/<id>/mixture.flac    the decoded input, for the page's player
    <output>/jobs/<id>/stems/<stem>.<fmt>, spectrograms/<name>.png, stems.zip

``job.json`` is rewritten whole at each change (atomically, like every write of
:mod:`sepcore.io.storage`). A job older than the configured time to live is
deleted when it is next read and by :meth:`JobStore.expire`.

:func:`check_input` decodes an input in a child process (:mod:`sepcore.io.decode`) and
turns every problem into a :class:`BadInput` with the HTTP status and a message that
says what is wrong; :func:`check_uri` keeps named inputs below the allowed prefixes.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import time
from typing import Any

import numpy as np
import soundfile as sf

from sepcore.errors import SepError
from sepcore.io import storage
from sepcore.io.decode import AudioTooLong, Decoded, DecodeError, EmptyAudio, decode_isolated
from sepcore.separate.config import DecodeLimits
from sepcore.separate.library import FLAC_MAX_CHANNELS

JOB_FILE = "job.json"
_ID = re.compile(r"^[0-9a-f]{32}$")
_EXT = re.compile(r"^\.[A-Za-z0-9]{1,5}$")


class BadInput(SepError):
    """An input the server refuses; ``status`` is the HTTP status (4xx)."""

    def __init__(self, message: str, status: int = 400):
        super().__init__(message)
        self.status = status


def new_id() -> str:
    """A job id: 128 random bits as 32 hex digits."""
    return secrets.token_hex(16)


def extension(name: str) -> str:
    """The file name's extension when it is a plain one (``.flac``), else ``""``."""
    ext = os.path.splitext(name)[1].lower()
    return ext if _EXT.match(ext) else ""


class JobStore:
    """Jobs below ``<output>/jobs``; each expires ``ttl_hours`` after it was created."""

    def __init__(self, output: str, ttl_hours: float):
        self.root = storage.join(storage.normalize_uri(output), "jobs")
        self.ttl_s = ttl_hours * 3600.0

    def uri(self, job_id: str, *parts: str) -> str:
        if not _ID.match(job_id):
            raise KeyError(job_id)
        return storage.join(self.root, job_id, *parts)

    def create(self, job_id: str, **fields: Any) -> dict[str, Any]:
        job = {"id": job_id, "state": "queued", "error": None, "created": time.time(), "files": {},
               "attempts": 0, **fields}  # fmt: skip
        self._write(job)
        return job

    def read(self, job_id: str) -> dict[str, Any] | None:
        """The job, or None when the id is malformed, unknown or expired (an expired job
        is deleted)."""
        if not _ID.match(job_id):
            return None
        uri = self.uri(job_id, JOB_FILE)
        try:
            job = json.loads(storage.read_text(uri))
        except (SepError, ValueError):
            return None
        if self.expired(job):
            self.delete(job_id)
            return None
        return job

    def update(self, job_id: str, **fields: Any) -> dict[str, Any]:
        job = self.read(job_id)
        if job is None:
            raise SepError(f"job {job_id} is gone (expired or deleted)")
        job.update(fields)
        self._write(job)
        return job

    def _write(self, job: dict[str, Any]) -> None:
        storage.write_text(self.uri(job["id"], JOB_FILE), json.dumps(job, indent=1))

    def expired(self, job: dict[str, Any], now: float | None = None) -> bool:
        return (now or time.time()) - float(job.get("created", 0)) > self.ttl_s

    def delete(self, job_id: str) -> None:
        storage.delete(self.uri(job_id), recursive=True)

    def file(self, job_id: str, name: str) -> str | None:
        """The URI of a job's file by its public name (``drums.flac``), or None: only the
        names the job recorded are served."""
        job = self.read(job_id)
        relative = (job or {}).get("files", {}).get(name)
        return self.uri(job_id, relative) if relative else None

    def expire(self, now: float | None = None) -> int:
        """Delete every expired job; returns how many."""
        deleted = 0
        for uri in storage.list_files(self.root, suffix=JOB_FILE):
            job_id = storage.basename(storage.parent(uri))
            try:
                job = json.loads(storage.read_text(uri))
            except (SepError, ValueError):
                continue
            if _ID.match(job_id) and self.expired(job, now):
                self.delete(job_id)
                deleted += 1
        return deleted


# ------------------------------------------------------------------------ inputs


def check_uri(uri: str, prefixes: list[str]) -> str:
    """``uri`` normalised when it lies below one of ``prefixes`` (normalised, ending in ``/``);
    else :class:`BadInput` 403. ``.`` and ``..`` parts are refused, not resolved."""
    text = uri.strip()
    if not text:
        raise BadInput("give a file or a URI")
    parts = text.split("://", 1)[-1].split("/")
    if any(p in (".", "..") for p in parts):
        raise BadInput(f"{text}: '.' and '..' are not allowed in a URI", 403)
    norm = storage.normalize_uri(text)
    if not any(norm.startswith(p) for p in prefixes):
        allowed = ", ".join(prefixes) or "none: this server takes uploads only"
        raise BadInput(f"{text} is outside the allowed prefixes ({allowed})", 403)
    return norm


def check_size(size: int, name: str, max_bytes: int) -> None:
    if size == 0:
        raise BadInput(f"{name} is empty (0 bytes)")
    if size > max_bytes:
        raise BadInput(f"{name} is {size / (1 << 20):.1f} MiB; the limit is {max_bytes / (1 << 20):g} MiB", 413)


def check_input(local: str, name: str, scratch: str, max_seconds: float, timeout_s: float) -> Decoded:
    """Decode ``local`` (named ``name`` in messages) into ``scratch``; :class:`BadInput` when
    it is no audio, has no samples, or is longer than ``max_seconds``."""
    try:
        return decode_isolated(local, os.path.join(scratch, "decoded.f32"), name, timeout_s,
                               DecodeLimits().max_memory_mb, max_seconds)  # fmt: skip
    except EmptyAudio as exc:
        raise BadInput(f"{name} holds no audio samples") from exc
    except AudioTooLong as exc:
        raise BadInput(f"{name} is longer than the server takes ({max_seconds:g} s)", 413) from exc
    except DecodeError as exc:
        raise BadInput(f"{name} is not an audio file this server can read ({exc})") from exc


def write_mixture(decoded: Decoded, path: str) -> None:
    """The decoded input as 24-bit FLAC at its own rate (at most 8 channels: more are mixed to mono)."""
    samples = decoded.samples()
    if decoded.channels > FLAC_MAX_CHANNELS:
        samples = samples.mean(axis=1, keepdims=True)
    sf.write(path, np.clip(samples, -1.0, 1.0), decoded.sample_rate, subtype="PCM_24", format="FLAC")
