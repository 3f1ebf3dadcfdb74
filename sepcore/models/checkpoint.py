"""Checkpoints that carry everything inference needs, at any URI.

A checkpoint is a folder with

* ``model.pt``: ``{"state_dict", "optimizer", "epoch"}`` (torch.save);
* ``meta.json``: the model (registry name and constructor arguments), the task, the
  feature parameters (sample rate, n_fft, hop, frames, channels: the count the model
  takes, see :func:`load_model`), the target class, the epoch and its metrics, and
  the size and SHA-256 of ``model.pt``. It is written last: a folder whose
  ``meta.json`` is missing or does not match ``model.pt`` is incomplete and is never
  loaded.

A training job's output holds ``best/`` (the best checkpoint by the validation metric)
and ``runs/.../checkpoint_*`` folders; :func:`resolve` accepts either the output
itself (meaning ``best/``) or any checkpoint folder.
"""

from __future__ import annotations

import hashlib
import io
import json
import re
from typing import Any

import torch
from torch import nn

from sepcore.errors import SepError
from sepcore.io import storage

MODEL_FILE = "model.pt"
META_FILE = "meta.json"
BEST = "best"


class CheckpointError(SepError):
    """A checkpoint is missing, incomplete or does not fit."""

    def __init__(self, uri: str, problem: str):
        self.uri = uri
        self.problem = problem
        super().__init__(f"{uri}: {problem}")


class LogMagnitude(nn.Module):
    """Input compression in front of a mask model: ``log1p(magnitude)``.

    Shape: any -> same. The mask the wrapped model returns still applies to the
    linear magnitude. ``in_channels`` is the wrapped model's channel count and
    ``sources`` its source count, so the separation's channel and source rules see
    through the wrapper.
    """

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    @property
    def in_channels(self) -> int | None:
        """Channels the wrapped model takes (:func:`sepcore.separate.apply.model_channels`)."""
        from sepcore.separate.apply import model_channels

        return model_channels(self.model)

    @property
    def sources(self) -> int:
        """Sources the wrapped model separates (:func:`sepcore.models.source_count`)."""
        from sepcore.models import source_count

        return source_count(self.model)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(torch.log1p(x))


def build(model_meta: dict[str, Any]) -> nn.Module:
    """The model a checkpoint's ``meta["model"]`` describes (untrained)."""
    from sepcore.models import build_model

    model = build_model(model_meta["name"], **model_meta.get("config", {}))
    return LogMagnitude(model) if model_meta.get("log_input") else model


def _digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def save(directory: str, model: nn.Module, meta: dict[str, Any], optimizer: dict | None = None,
         epoch: int = 0) -> None:  # fmt: skip
    """Write a checkpoint folder (local path or URI); ``meta.json`` last."""
    buf = io.BytesIO()
    torch.save({"state_dict": model.state_dict(), "optimizer": optimizer, "epoch": epoch}, buf)
    data = buf.getvalue()
    storage.write_bytes(storage.join(directory, MODEL_FILE), data)
    full = {**meta, "epoch": epoch, "model_bytes": len(data), "model_sha256": _digest(data)}
    storage.write_text(storage.join(directory, META_FILE), json.dumps(full, indent=1, default=float))


def read_meta(directory: str) -> dict[str, Any]:
    uri = storage.join(directory, META_FILE)
    if not storage.exists(uri):
        raise CheckpointError(directory, f"no {META_FILE}: not a (complete) checkpoint")
    try:
        return json.loads(storage.read_text(uri))
    except json.JSONDecodeError as exc:
        raise CheckpointError(uri, f"malformed ({exc})") from exc


def is_complete(directory: str) -> bool:
    """True when both files exist and ``model.pt`` matches the size recorded in meta."""
    try:
        meta = read_meta(directory)
        info = storage.info(storage.join(directory, MODEL_FILE))
    except SepError:
        return False
    return info["size"] == meta.get("model_bytes")


def resolve(uri: str) -> str:
    """A complete checkpoint folder for ``uri``: itself, or the training output's ``best/``."""
    uri = storage.normalize_uri(uri)
    for candidate in (uri, storage.join(uri, BEST)):
        if is_complete(candidate):
            return candidate
    raise CheckpointError(uri, f"no complete checkpoint here or in {BEST}/ (is training finished?)")


def complete_checkpoints(root: str) -> list[tuple[str, dict[str, Any]]]:
    """``(folder, meta)`` of every complete checkpoint below ``root`` (not ``best/``), by folder."""
    folders = sorted({u.rsplit("/", 1)[0] for u in storage.list_files(root, suffix="/" + META_FILE)})
    return [(f, read_meta(f)) for f in folders if not re.search(rf"/{BEST}$", f) and is_complete(f)]


def find_latest(root: str) -> str | None:
    """The complete checkpoint with the highest epoch below ``root`` (None if none)."""
    found = complete_checkpoints(root)
    if not found:
        return None
    return max(found, key=lambda item: int(item[1].get("epoch", -1)))[0]


def load_state(directory: str, device: str | torch.device = "cpu") -> tuple[dict[str, Any], dict[str, Any]]:
    """(meta, state) of a complete checkpoint; the SHA-256 of ``model.pt`` is verified."""
    meta = read_meta(directory)
    data = storage.read_bytes(storage.join(directory, MODEL_FILE))
    if _digest(data) != meta.get("model_sha256"):
        raise CheckpointError(directory, f"{MODEL_FILE} does not match {META_FILE} (partial write?)")
    state = torch.load(io.BytesIO(data), map_location=device, weights_only=False)
    return meta, state


def load_model(uri: str, device: str | torch.device = "cpu") -> tuple[nn.Module, dict[str, Any]]:
    """The trained model in eval mode and its meta, from a checkpoint or a training output.

    ``meta["channels"]`` is the channel count the model takes; when an old
    checkpoint's meta does not say, the model's own (``in_channels``), else 1. A meta
    and a model that disagree raise :class:`CheckpointError`.
    """
    from sepcore.separate.apply import model_channels

    directory = resolve(uri)
    meta, state = load_state(directory, device)
    model = build(meta["model"])
    model.load_state_dict(state["state_dict"])
    model.to(device).eval()
    stated = model_channels(model)
    channels = int(meta.get("channels", stated or 1))
    if stated is not None and stated != channels:
        raise CheckpointError(directory, f"{META_FILE} says {channels} channel(s), its model "
                              f"takes {stated} channels")  # fmt: skip
    meta["channels"] = channels
    meta["checkpoint"] = directory
    return model, meta



def publish_best(folder: str, output: str) -> str:
    """Copy the checkpoint ``folder`` to ``<output>/best/`` (train and tune); returns it.

    ``meta.json`` is copied last, so ``best/`` is complete or absent.
    """
    best = storage.join(output, BEST)
    for name in (MODEL_FILE, META_FILE):
        storage.write_bytes(storage.join(best, name), storage.read_bytes(storage.join(folder, name)))
    return best
