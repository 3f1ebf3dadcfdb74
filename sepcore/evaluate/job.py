"""The evaluate job's plain steps around its Ray tasks (``ray_jobs.evaluate`` runs them).

``cfg`` is the job's config: :class:`sepcore.evaluate.config.EvaluateKeys` and
:class:`~sepcore.evaluate.config.ScoringConfig` keys plus ``output``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from sepcore import batch
from sepcore.data.classes import CLASSES
from sepcore.errors import ConfigError
from sepcore.evaluate import document as D
from sepcore.evaluate import tracks as T
from sepcore.io import storage
from sepcore.units import seconds_to_samples

#: Per-track results of a run, so that a rerun after a kill does only the rest.
DONE_FOLDER = "tracks"


def run_classes(separator: bool, target: Any, more: Sequence[str]) -> list[str]:
    """The classes scored: the target (a class or a list of them), then ``more``; for an
    activation model, every class."""
    if not separator:
        return list(CLASSES)
    first = list(target) if isinstance(target, (list, tuple)) else [target]
    return first + [c for c in more if c not in first]


def checkpoint_stems(meta: Mapping[str, Any]) -> list[str] | None:
    """A multi-stem checkpoint's stems (its ``targets``, then ``other``); None for one target."""
    stems = meta.get("stems")
    return list(stems) if stems else None


def model_classes(meta: Mapping[str, Any], target: str | None) -> list[str]:
    """The classes with a ``model`` row: the checkpoint's target, or a multi-stem one's targets.

    ``target`` (the config's) must be the checkpoint's target; for a multi-stem checkpoint
    it must be one of its ``targets`` and restricts the run to that class. Raises
    :class:`sepcore.errors.ConfigError` otherwise.
    """
    stems = checkpoint_stems(meta)
    if stems is None:
        if target and target != meta.get("target"):
            raise ConfigError("target", f"the checkpoint separates '{meta.get('target')}', not '{target}'")
        return [target or meta["target"]]
    targets = list(meta.get("targets") or stems[:-1])
    if target is None:
        return targets
    if target not in targets:
        raise ConfigError("target", f"the checkpoint separates {targets}, not '{target}'")
    return [target]


def wiener_iterations(meta: Mapping[str, Any], given: int | None) -> int | None:
    """Wiener iterations of a multi-stem run: ``given``, else the checkpoint's, else 0.

    None for a one-target checkpoint (its separation has no Wiener filter); ``given`` for
    one raises :class:`sepcore.errors.ConfigError`.
    """
    if checkpoint_stems(meta) is None:
        if given is not None:
            raise ConfigError("wiener_iterations", "applies to multi-stem checkpoints only "
                              f"(this one separates '{meta.get('target')}')")  # fmt: skip
        return None
    return int(given if given is not None else meta.get("wiener_iterations") or 0)


def task_settings(cfg: Any, task: str, meta: dict[str, Any], checkpoint_dir: str, classes: list[str],
                  wiener: int | None = None) -> dict:  # fmt: skip
    """What every task needs; ``fingerprint``: what a track's result depends on.

    ``wiener``: the Wiener iterations of a multi-stem checkpoint (:func:`wiener_iterations`).
    """
    output = storage.normalize_uri(cfg.output)
    settings = {"model": meta.get("model_sha256"), "scoring": cfg.described(), "classes": classes,
                "report": cfg.report.model_dump(), "activation": cfg.activation.model_dump(),
                "data": storage.normalize_uri(cfg.data)}  # fmt: skip
    stems = checkpoint_stems(meta) if task == "separator" else None
    if stems is not None:
        settings["wiener_iterations"] = wiener
    return {"task": task, "checkpoint_dir": checkpoint_dir, "meta": meta, "sr": int(meta["sample_rate"]),
            "classes": classes, "scoring": cfg, "stems": stems, "wiener_iterations": wiener or 0,
            "fingerprint": batch.settings_fingerprint(settings), "done": storage.join(output, DONE_FOLDER),
            "batch_size": cfg.batch_size, "threads": cfg.threads, "output": output,
            "report": cfg.report.model_dump(), "activation": cfg.activation.model_dump()}  # fmt: skip


def shown_tracks(cfg: Any, tracks: Sequence[Any], separator: bool, target: str | None) -> set[str]:
    """Tracks with report figures: the first ``report.examples`` with the target (a
    multi-stem run: its first class), or ``activation.plots``."""
    if separator:
        with_target = [t.track_id for t in tracks if target in t.classes]
        return set(with_target[: cfg.report.examples])
    return {t.track_id for t in tracks[: cfg.activation.plots]}


def activation_result(track_id: str, res: Mapping[str, Any], sample_rate: int, sequence_seconds: float,
                      eval_seconds: float) -> dict[str, Any]:  # fmt: skip
    """One track's activation result from :func:`sepcore.evaluate.tracks.evaluate_activations`'s."""
    errors = {key: dict(zip(CLASSES, v.tolist(), strict=True)) for key, v in res["errors"].items()}
    candidates = T.solo_candidates(res["class_sums"], sample_rate, sequence_seconds)
    return {"track_id": track_id, "seconds": res["seconds"], "errors": errors, "candidates": candidates,
            "eval_seconds": eval_seconds}  # fmt: skip


def sequence_result(chosen: Sequence[tuple[str, Any, int]], seq: Mapping[str, Any], images: list[str],
                    sample_rate: int, seconds: float) -> dict[str, Any]:  # fmt: skip
    """The sequence test's result: both matrices, the images and the solo parts played."""
    n = seconds_to_samples(seconds, sample_rate)
    return {"noise": seq["noise"], "leakage": seq["leakage"], "images": images,
            "sequence": [{"class": c, "track_id": t.track_id, "start_s": s / sample_rate, "seconds": n / sample_rate}
                         for c, t, s in chosen]}  # fmt: skip


def run_head(cfg: Any, task: str, checkpoint_dir: str, target: str | None, meta: Mapping[str, Any],
             tracks_selected: int, wiener: int | None = None) -> dict[str, Any]:  # fmt: skip
    """The head of metrics.json: what was evaluated, on what.

    A multi-stem checkpoint adds ``stems`` and ``wiener_iterations`` (``target`` is then
    the config's restriction to one class, or None).
    """
    head = {"task": task, "checkpoint": checkpoint_dir, "data": storage.normalize_uri(cfg.data), "split": cfg.split,
            "target": target, "sample_rate": meta["sample_rate"], "feature": meta.get("feature"),
            "frames": meta.get("frames"), "tracks_selected": tracks_selected}  # fmt: skip
    stems = checkpoint_stems(meta) if task == "separator" else None
    if stems is not None:
        head.update(stems=stems, wiener_iterations=wiener)
    return head


def run_summary(doc: Mapping[str, Any], metrics_uri: str, page: str, tracks: int,
                max_failed_fraction: float) -> dict[str, Any]:  # fmt: skip
    """The job's summary entries and verdict; failed when no track could be evaluated."""
    summary = {**D.summary_entries(doc), "failed": doc["failed"], "metrics": metrics_uri, "report": page}
    summary.update(batch.verdict(len(doc["failed"]), tracks, max_failed_fraction, "tracks"))
    if doc["tracks_evaluated"] == 0:
        summary.update(status="failed", error="no track could be evaluated")
    return summary
