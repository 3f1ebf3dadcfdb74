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
from sepcore.evaluate.compare import RowSpec, describe_row, stem_classes
from sepcore.evaluate.routed import RouteSpec
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


def baseline_settings(cfg: Any, task: str, classes: Sequence[str]) -> dict[str, dict[str, Any]]:
    """The baseline rows a separator run scores, ``{name: settings}``: ``hpss`` (``margin``,
    ``kernel_size``) when ``baselines`` has it and :data:`sepcore.separate.hpss.HPSS_CLASS`
    (drums) is among ``classes``; ``{}`` otherwise (an activation model, ``baselines: []``)."""
    from sepcore.separate.hpss import HPSS_CLASS

    if task != "separator" or "hpss" not in cfg.baselines or HPSS_CLASS not in classes:
        return {}
    return {"hpss": cfg.hpss.model_dump()}


def task_settings(cfg: Any, task: str, meta: dict[str, Any], checkpoint_dir: str, classes: list[str],
                  wiener: int | None = None, rows: Sequence[RowSpec] = (), routes: Sequence[RouteSpec] = ()) -> dict:  # fmt: skip
    """What every task needs; ``fingerprint``: what a track's result depends on.

    ``wiener``: the Wiener iterations of a multi-stem checkpoint (:func:`wiener_iterations`);
    ``alpha``: the α sweep (:func:`check_alpha`), in the fingerprint when set;
    ``rows``: the separators scored as rows (:func:`plan_rows`), whose weights digests,
    rates and Demucs options join the fingerprint (a run without rows keeps the one it had);
    ``baselines``: the baseline rows scored (:func:`baseline_settings`), in the fingerprint
    when there are any (a run without drums, or with ``baselines: []``, keeps the one it had);
    ``routes``: the routed rows (:func:`sepcore.evaluate.routed.plan_routes`), whose routers,
    groups and group models' identities join the fingerprint (a run without them keeps the one it had).
    With a Demucs checkpoint ``meta`` is the evaluation's (:func:`sepcore.evaluate.compare.evaluation_meta`),
    and the rate, channels and oracle STFT are part of the fingerprint.
    """
    output = storage.normalize_uri(cfg.output)
    settings = {"model": meta.get("model_sha256"), "scoring": cfg.described(), "classes": classes,
                "report": cfg.report.model_dump(), "activation": cfg.activation.model_dump(),
                "data": storage.normalize_uri(cfg.data)}  # fmt: skip
    stems = checkpoint_stems(meta) if task == "separator" else None
    if stems is not None:
        settings["wiener_iterations"] = wiener
    if cfg.alpha:
        settings["alpha"] = list(cfg.alpha)
    baselines = baseline_settings(cfg, task, classes)
    if baselines:
        settings["baselines"] = baselines
    if rows:
        settings["rows"] = [r.fingerprint() for r in rows]
    if routes:
        settings["routed"] = [r.fingerprint() for r in routes]
    if rows or routes:
        settings["layout"] = [meta["sample_rate"], meta.get("channels", 1), meta.get("feature")]
    return {"task": task, "checkpoint_dir": checkpoint_dir, "meta": meta, "sr": int(meta["sample_rate"]),
            "classes": classes, "scoring": cfg, "stems": stems, "wiener_iterations": wiener or 0,
            "fingerprint": batch.settings_fingerprint(settings), "done": storage.join(output, DONE_FOLDER),
            "batch_size": cfg.batch_size, "threads": cfg.threads, "output": output, "rows": list(rows),
            "main_is_row": any(r.name == "model" for r in rows), "alpha": list(cfg.alpha or []),
            "report": cfg.report.model_dump(), "activation": cfg.activation.model_dump(),
            "baselines": baselines, "routes": list(routes)}  # fmt: skip


def plan_rows(cfg: Any) -> tuple[RowSpec | None, list[RowSpec]]:
    """The checkpoint's row when it is a Demucs model (named ``model``; None otherwise) and
    the ``compare`` rows, in the config's order. Each model is loaded once here, so a bad
    reference fails the job at once, naming it."""
    from sepcore.separate.demucs import is_demucs

    opts = cfg.demucs.model_dump()
    main = describe_row("model", cfg.checkpoint, opts) if is_demucs(cfg.checkpoint) else None
    return main, [describe_row(name, ref, opts) for name, ref in cfg.compare.items()]


def main_checkpoint(cfg: Any, main: RowSpec | None) -> tuple[str, dict[str, Any]]:
    """The checkpoint folder (or Demucs reference) and the meta the evaluation runs with:
    a project checkpoint's own (its model loaded once; ``sample_rate``, ``channels``,
    ``n_fft``, ``hop`` must not differ from it), or for a Demucs model (``main``) the
    evaluation's (:func:`sepcore.evaluate.compare.evaluation_meta`)."""
    from sepcore.evaluate.compare import evaluation_meta, refuse_layout_keys
    from sepcore.models import checkpoint as ckpt

    if main is not None:
        return main.ref, evaluation_meta(cfg, main.meta)
    checkpoint_dir = ckpt.resolve(cfg.checkpoint)
    meta = T.load_checked(checkpoint_dir)
    refuse_layout_keys(cfg, meta)
    return checkpoint_dir, meta


def main_classes(cfg: Any, meta: Mapping[str, Any], main: RowSpec | None) -> tuple[list[str], int | None]:
    """The classes with a ``model`` row and the Wiener iterations.

    A project checkpoint: :func:`model_classes` and :func:`wiener_iterations`. A Demucs
    model (``main``): its classes (:func:`sepcore.evaluate.compare.stem_classes`), or
    ``target`` alone, which it must have; Wiener iterations None (setting them is a
    ConfigError: they apply to mask models only).
    """
    if main is None:
        return model_classes(meta, cfg.target), wiener_iterations(meta, cfg.wiener_iterations)
    if cfg.wiener_iterations is not None:
        raise ConfigError("wiener_iterations", f"{main.ref} is a Demucs model: the Wiener filter applies "
                          "to mask models only; remove the key")  # fmt: skip
    if cfg.target is None:
        return list(main.classes), None
    if cfg.target not in main.classes:
        raise ConfigError("target", f"the Demucs model separates {[c for c in main.classes if c in CLASSES]}, "
                          f"not '{cfg.target}'")  # fmt: skip
    return [cfg.target], None


def check_alpha(cfg: Any, task: str, meta: Mapping[str, Any], main: RowSpec | None) -> float | None:
    """The checkpoint model's own α when the run sweeps ``alpha`` (None without a sweep).

    The sweep needs a project checkpoint, one-target or multi-stem, whose model has a
    confidence threshold (an ``alpha`` attribute, recorded by
    :func:`sepcore.evaluate.tracks.load_checked` as ``meta["model_alpha"]``: the
    binary-mask DNN); a multi-stem one's sweep scores each of its classes
    (:func:`sepcore.evaluate.tracks.score_alphas`). Any other model (Demucs, an
    activation model, a mask model without a threshold) raises
    :class:`sepcore.errors.ConfigError`.
    """
    if not cfg.alpha:
        return None
    if main is not None or task != "separator":
        what = "a Demucs model" if main is not None else "an activation model"
        raise ConfigError("alpha", f"{cfg.checkpoint} is {what}: alpha applies to binary-mask models (mask_dnn)")
    if meta.get("model_alpha") is None:
        name = (meta.get("model") or {}).get("name")
        raise ConfigError("alpha", f"the checkpoint's model ({name}) has no confidence threshold: alpha applies "
                          "to binary-mask models (mask_dnn); remove the key")  # fmt: skip
    return float(meta["model_alpha"])


def compared_classes(compare: Sequence[RowSpec], target: str | None, modelled: Sequence[str],
                     routes: Sequence[RouteSpec] = ()) -> list[str]:  # fmt: skip
    """The classes the compared separators, then the routed rows, add after ``modelled`` (in
    their order); none with ``target`` (their rows then appear for that class and ``classes`` only)."""
    if target is not None:
        return []
    keys = [k for r in compare for k in r.classes] + [k for r in routes for k in r.classes]
    return list(dict.fromkeys(k for k in keys if k not in modelled))


def plan_routed(cfg: Any, task: str) -> list[RouteSpec]:
    """The routed rows (:func:`sepcore.evaluate.routed.plan_routes`: each router and group model
    loaded once, so a bad one fails the job at once); ConfigError for an activation model."""
    from sepcore.evaluate.routed import plan_routes

    if not cfg.routed:
        return []
    if task != "separator":
        raise ConfigError("routed", f"{cfg.checkpoint} is an activation model: routed rows need a separator")
    return plan_routes(cfg.routed, cfg.demucs.model_dump())


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
             tracks_selected: int, wiener: int | None = None, rows: Sequence[RowSpec] = (),
             baselines: Mapping[str, Mapping[str, Any]] | None = None,
             routes: Sequence[RouteSpec] = ()) -> dict[str, Any]:  # fmt: skip
    """The head of metrics.json: what was evaluated, on what.

    A binary-mask checkpoint adds its own threshold ``model_alpha`` and the α sweep
    ``alpha`` (the config's, maybe empty). A multi-stem
    checkpoint adds ``stems`` and ``wiener_iterations`` (``target`` is then
    the config's restriction to one class, or None). A separator evaluation records
    ``channels`` (with ``sample_rate``: where the scores are computed) and ``separators``:
    every separator scored, the checkpoint's model first (``model``), then ``rows``
    (:meth:`sepcore.evaluate.compare.RowSpec.described`). A Demucs checkpoint's ``stems``
    are its sources. ``baselines`` (:func:`baseline_settings`), when any: ``{name: {"classes",
    **settings, "n_fft", "hop"}}``, the baseline rows with the classes they are scored for
    and the STFT they use (the checkpoint's). ``routes``, when any: ``routed``, ``{row:
    RouteSpec.described()}`` (:mod:`sepcore.evaluate.routed`; the metrics document adds the
    songs sent to each group).
    """
    head = {"task": task, "checkpoint": checkpoint_dir, "data": storage.normalize_uri(cfg.data), "split": cfg.split,
            "target": target, "sample_rate": meta["sample_rate"], "feature": meta.get("feature"),
            "frames": meta.get("frames"), "tracks_selected": tracks_selected}  # fmt: skip
    stems = checkpoint_stems(meta) if task == "separator" else None
    if stems is not None:
        head.update(stems=stems, wiener_iterations=wiener)
    if task == "separator" and meta.get("model_alpha") is not None:
        head["model_alpha"] = float(meta["model_alpha"])
        head["alpha"] = list(cfg.alpha or [])
    if task == "separator":
        main = next((r for r in rows if r.name == "model"), None)
        if main is None:
            main = RowSpec("model", checkpoint_dir, "mask", meta, stem_classes("mask", meta))
        else:
            head["stems"] = list(main.meta["stems"])
        head["channels"] = int(meta.get("channels", 1))
        head["separators"] = [main.described()] + [r.described() for r in rows if r is not main]
    if task == "separator" and baselines:
        from sepcore.separate.hpss import HPSS_CLASS

        f = meta.get("feature") or {}
        head["baselines"] = {name: {"classes": [HPSS_CLASS], **settings, "n_fft": int(f["n_fft"]),
                                    "hop": int(f["hop"])} for name, settings in baselines.items()}  # fmt: skip
    if task == "separator" and routes:
        head["routed"] = {r.name: r.described() for r in routes}
    return head


def run_summary(doc: Mapping[str, Any], metrics_uri: str, page: str, tracks: int,
                max_failed_fraction: float) -> dict[str, Any]:  # fmt: skip
    """The job's summary entries and verdict; failed when no track could be evaluated."""
    summary = {**D.summary_entries(doc), "failed": doc["failed"], "metrics": metrics_uri, "report": page}
    summary.update(batch.verdict(len(doc["failed"]), tracks, max_failed_fraction, "tracks"))
    if doc["tracks_evaluated"] == 0:
        summary.update(status="failed", error="no track could be evaluated")
    return summary
