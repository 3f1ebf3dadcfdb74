"""What the Models and Library pages show, read from the outputs of other jobs.

* :func:`model_card`: a configured checkpoint's card from its meta (model, stems,
  training data) and, when the model has an ``evaluation`` output, the median
  figures of its ``metrics.json`` (:mod:`sepcore.evaluate.document`) per class,
  method and stem;
* :func:`library_run`: one ``sep separate`` output from its ``manifest.parquet``
  (:mod:`sepcore.separate.state`): counts per status, the errors, the files with
  their stems.
"""

from __future__ import annotations

import json
from typing import Any

from sepcore.errors import SepError
from sepcore.io import storage
from sepcore.separate import state as S
from sepcore.serve.config import ModelEntry

#: The figures a card shows, in order.
FIGURES = ("sdr", "sir", "sar")


def model_card(entry: ModelEntry, meta: dict[str, Any], stems: tuple[str, ...]) -> dict[str, Any]:
    """The card of ``entry`` with checkpoint ``meta`` separating into ``stems``."""
    model = meta.get("model") or {}
    settings = meta.get("settings") or {}
    optim = settings.get("optim") or {}
    target = meta.get("target") or ", ".join(meta.get("targets") or []) or None
    card: dict[str, Any] = {
        "name": entry.name,
        "checkpoint": entry.checkpoint,
        "kind": meta.get("kind") or "mask",
        "model": model.get("name") if isinstance(model, dict) else str(model),
        "model_id": str(meta.get("model_sha256", ""))[:16],
        "target": target,
        "stems": list(stems),
        "sample_rate": meta.get("sample_rate"),
        "channels": meta.get("channels"),
        "training_data": meta.get("data") or settings.get("data"),
        "epochs": optim.get("epochs"),
        "evaluation": None,
    }
    if entry.evaluation:
        card["evaluation"] = evaluation_figures(entry.evaluation)
    return card


def evaluation_figures(output: str) -> dict[str, Any]:
    """Median SDR/SIR/SAR per class, method and stem of an evaluate output, with its split and
    track count; ``{"error": ...}`` when it cannot be read (the card says so)."""
    uri = storage.join(storage.normalize_uri(output), "metrics.json")
    try:
        doc = json.loads(storage.read_text(uri))
    except (SepError, ValueError) as exc:
        return {"uri": uri, "error": f"no evaluation figures: {exc}"}
    rows = []
    for cls, section in sorted((doc.get("separation") or {}).items()):
        for method, per_stem in (section.get("median") or {}).items():
            for stem, figures in per_stem.items():
                rows.append({"class": cls, "method": method, "stem": stem, "count": figures.get("count"),
                             **{f: figures.get(f) for f in FIGURES}})  # fmt: skip
    return {"uri": uri, "split": doc.get("split"), "data": doc.get("data"),
            "tracks": doc.get("tracks_evaluated"), "rows": rows}  # fmt: skip


def library_run(output: str, limit: int = 500) -> dict[str, Any]:
    """One separate output: ``counts`` per status, ``errors`` (relative, class, message),
    ``files`` (the first ``limit`` ok or skipped rows with their stems' URIs) and the
    summary's time, or ``error`` when no manifest can be read."""
    out = storage.normalize_uri(output)
    run: dict[str, Any] = {"output": out, "counts": {}, "errors": [], "files": [], "error": None}
    try:
        rows = S.read_manifest(out)
    except Exception as exc:  # a damaged manifest is shown, not fatal
        run["error"] = f"cannot read {storage.join(out, S.MANIFEST)}: {exc}"
        return run
    if not rows:
        run["error"] = f"no manifest at {storage.join(out, S.MANIFEST)} (sep separate has not finished there)"
    try:
        summary = json.loads(storage.read_text(storage.join(out, "summary.json")))
        run["finished"] = summary.get("finished")
    except (SepError, ValueError):
        run["finished"] = None
    run["rows"] = rows
    for status in ("ok", "error", "skipped"):
        run["counts"][status] = sum(r["status"] == status for r in rows)
    run["errors"] = [{"relative": r["relative"], "error_class": r.get("error_class"), "error": r.get("error")}
                     for r in rows if r["status"] == "error"]  # fmt: skip
    for index, r in enumerate(rows):
        if r["status"] != "error" and len(run["files"]) < limit:
            stems = {k[: -len("_uri")]: v for k, v in S.stem_uris(r).items()}
            run["files"].append({"index": index, "relative": r["relative"], "duration_s": r.get("duration_s"),
                                 "stems": stems})  # fmt: skip
    return run


def library_file(output: str, index: int, stem: str) -> str | None:
    """The URI of stem ``stem`` of manifest row ``index`` of a separate output, when that row
    has it and it lies inside the output (a manifest names only its own files)."""
    out = storage.normalize_uri(output).rstrip("/") + "/"
    rows = S.read_manifest(out)
    if not 0 <= index < len(rows):
        return None
    uri = S.stem_uris(rows[index]).get(f"{stem}_uri")
    return uri if uri and uri.startswith(out) else None
