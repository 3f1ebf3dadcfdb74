"""The evaluate job's ``metrics.json``: its JSON Schema, a validator, and JSON numbers.

Scores are written by :func:`json_number` (NaN -> null, +-inf -> ``"inf"``/``"-inf"``) and
read back by :func:`from_json_number`. :func:`validate_metrics` checks a document against
:data:`METRICS_SCHEMA` (draft 2020-12, the subset used here) without the jsonschema package.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any, get_args

import numpy as np

from sepcore.errors import SepError
from sepcore.evaluate import bss as metrics
from sepcore.evaluate.config import BUILT_IN, SOURCES, Mode, alpha_key, method_order
from sepcore.evaluate.config import (
    METHODS as METHODS,  # re-exported: the demo's report reads it here
)

#: Format tag of metrics.json.
FORMAT = "sep-evaluate/1"
#: File name of the document in the job's output.
METRICS_FILE = "metrics.json"


class EvaluationError(SepError):
    """An evaluation input does not fit (wrong checkpoint task, shapes, metrics.json)."""



_NUM = {"type": ["number", "string", "null"]}
_SCORES: dict[str, Any] = {
    "type": "object",
    "required": ["sdr", "sir", "sar"],
    "properties": {m: _NUM for m in metrics.METRICS},
}
_PER_SOURCE = {
    "type": "object",
    "required": list(SOURCES),
    "properties": {s: _SCORES for s in SOURCES},
}
_MEDIAN_SOURCE = {**_SCORES, "required": ["sdr", "sir", "sar", "count"],
                  "properties": {**_SCORES["properties"], "count": {"type": "integer"}}}  # fmt: skip
_SEPARATOR = {
    "type": "object",
    "required": ["name", "checkpoint", "kind", "model_sha256", "sample_rate", "channels", "classes"],
    "properties": {
        "name": {"type": "string", "description": "its row: model (the checkpoint), or its key in compare"},
        "checkpoint": {"type": "string", "description": "the checkpoint folder or Demucs reference loaded"},
        "kind": {"enum": ["mask", "demucs"], "description": "mask: a project checkpoint; demucs: a Demucs model"},
        "model_sha256": {"type": ["string", "null"], "description": "digest of its weights"},
        "sample_rate": {"type": "integer", "description": "rate it separates at (its estimates are resampled "
                        "to the evaluation's sample_rate)"},
        "channels": {"type": "integer", "description": "channels it separates (its estimates are downmixed "
                     "when the evaluation's channels is 1)"},
        "stems": {"type": "array", "items": {"type": "string"}},
        "classes": {"type": "object", "additionalProperties": {"type": "string"},
                    "description": "class scored -> its stem"},
        "demucs": {"type": "object", "description": "Demucs models: segment, overlap, shifts"},
    },
}  # fmt: skip
_MATRIX = {"type": "array", "items": {"type": "array", "items": _NUM}}
_ALPHA_SOURCE = {**_MEDIAN_SOURCE, "required": [*_MEDIAN_SOURCE["required"], *(f"{m}_mean" for m in metrics.METRICS)],
                 "properties": {
    **{m: {**_NUM, "description": f"median {m.upper()} over tracks (dB)"} for m in metrics.METRICS},
    "count": {"type": "integer", "description": "tracks with a defined (not NaN) SDR"},
    **{f"{m}_mean": {**_NUM, "description": f"mean {m.upper()} over the tracks where it is finite (dB)"}
       for m in metrics.METRICS}}}  # fmt: skip
_ALPHA = {
    "type": "object",
    "required": ["values", "model_alpha", "per_class"],
    "description": "binary-mask models with an alpha sweep: the scores at each alpha of the stems (one target: "
                   "mask > alpha and its complement; a multi-stem model: each class [stem, mix - stem] of the "
                   "masks > alpha made to add up to the mixture), from one network pass per track",
    "properties": {
        "values": {"type": "array", "items": {"type": "number"}, "description": "the alphas scored, ascending"},
        "model_alpha": {"type": "number", "description": "the model's own alpha (its model row)"},
        "per_class": {"type": "object", "description": "the model's classes (its target, or a multi-stem "
                      "model's scored stems: all but other)", "additionalProperties": {
            "type": "object", "description": "the class's scores, one entry per alpha",
            "additionalProperties": {"type": "object", "required": list(SOURCES),
                                     "description": "the scores at that alpha, keyed by the value as written "
                                     "(0.5 -> \"0.5\")", "properties": {s: _ALPHA_SOURCE for s in SOURCES}}}},
    },
}  # fmt: skip


_BASELINES = {
    "type": "object",
    "description": "separators: the baseline rows scored, by row name (no key when none is)",
    "properties": {"hpss": {
        "type": "object", "required": ["classes", "margin", "kernel_size", "n_fft", "hop"],
        "description": "librosa's median-filtering HPSS of the mixture: the percussive part as the drums, the "
                       "mixture minus it (harmonic part and residual) as the rest",
        "properties": {
            "classes": {"type": "array", "items": {"type": "string"}, "description": "classes it is scored for "
                        "(drums)"},
            "margin": {"type": "number", "description": "HPSS margin (1: the harmonic and percussive masks add "
                       "up to one; more: a residual, which goes to the rest)"},
            "kernel_size": {"type": "integer", "description": "median filter length in frames and in bins"},
            "n_fft": {"type": "integer", "description": "its STFT: the checkpoint's (the oracle rows')"},
            "hop": {"type": "integer", "description": "its STFT hop"},
        }}},
}  # fmt: skip


_CHOICE = {"type": "object", "required": ["group", "style"], "properties": {
    "group": {"type": "string", "description": "the group the router chose (its model separated the track)"},
    "style": {"type": "string", "description": "the style the router voted for"}}}
_ROUTED = {
    "type": "object",
    "description": "separators: the routed rows, by row name (no key when none): each track is separated by the "
                   "model of the group holding the style a style classifier votes for over the track's mixture",
    "additionalProperties": {
        "type": "object", "required": ["router", "styles", "groups", "classes", "models", "songs"],
        "properties": {
            "router": {"type": "string", "description": "the sep classify output (labels: style) that routes"},
            "router_sha256": {"type": ["string", "null"], "description": "digest of its classifier file"},
            "styles": {"type": "array", "items": {"type": "string"}, "description": "the router's styles"},
            "groups": {"type": "object", "additionalProperties": {"type": "array", "items": {"type": "string"}},
                       "description": "group -> the styles it takes"},
            "classes": {"type": "array", "items": {"type": "string"}, "description": "classes the row is scored "
                        "for: those every group's model has"},
            "models": {"type": "object", "additionalProperties": _SEPARATOR, "description": "group -> its "
                       "separator (as under separators; name: the routed row)"},
            "songs": {"type": "object", "additionalProperties": {"type": "integer"}, "description": "group -> "
                      "tracks evaluated that went to it"},
        }},
}  # fmt: skip


def metrics_schema(rows: Sequence[str] = ()) -> dict[str, Any]:
    """The JSON Schema of a metrics.json whose compared separators and routed rows are named
    ``rows`` (:data:`METRICS_SCHEMA`: none): the methods are the built-in rows
    (:data:`sepcore.evaluate.config.BUILT_IN`) and those names."""
    methods = {"enum": [*method_order(BUILT_IN), *rows]}
    method_map = {"type": "object", "propertyNames": methods}
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "title": "sep evaluate metrics.json",
        "type": "object",
        "required": [
            "format",
            "task",
            "checkpoint",
            "data",
            "split",
            "sample_rate",
            "evaluation",
            "tracks_selected",
            "tracks_evaluated",
            "timing",
            "failed",
            "separation",
            "activation",
        ],  # fmt: skip
        "properties": {
            "format": {"enum": [FORMAT]},
            "task": {"enum": ["separator", "activation"]},
            "checkpoint": {"type": "string"},
            "data": {"type": "string"},
            "split": {"type": "string"},
            "target": {"type": ["string", "null"]},
            "stems": {"type": "array", "items": {"type": "string"},
                      "description": "multi-stem checkpoints: the stems the model separates (its targets, then other)"},
            "wiener_iterations": {"type": "integer",
                                  "description": "multi-stem checkpoints: Wiener filter iterations of the model rows"},
            "sample_rate": {"type": "integer", "description": "rate of the references and estimates scored"},
            "channels": {"type": "integer", "description": "separators: channels of the references and estimates "
                         "scored (1: estimates of stereo separators are downmixed)"},
            "separators": {"type": "array", "items": _SEPARATOR,
                           "description": "separators: every separator scored, model first, then compare's"},
            "baselines": _BASELINES,
            "routed": _ROUTED,
            "evaluation": {
                "type": "object",
                "required": ["mode", "backend", "segment_seconds", "window_seconds", "hop_seconds"],
                "properties": {
                    "mode": {"enum": list(get_args(Mode))},
                    "backend": {"enum": list(get_args(metrics.Backend))},
                    "segment_seconds": {"type": "number"},
                    "window_seconds": {"type": "number"},
                    "hop_seconds": {"type": "number"},
                },  # fmt: skip
            },
            "tracks_selected": {"type": "integer"},
            "tracks_evaluated": {"type": "integer"},
            "timing": {
                "type": "object",
                "required": ["audio_seconds", "eval_seconds", "eval_seconds_per_audio_minute"],
                "properties": {
                    k: {"type": ["number", "null"]}
                    for k in (
                        "audio_seconds",
                        "eval_seconds",
                        "eval_seconds_per_audio_minute",
                        "separate_seconds",
                        "wall_seconds",
                    )
                },  # fmt: skip
            },
            "failed": {
                "type": "array",
                "items": {
                    "type": "object",
                    "required": ["item", "error"],
                    "properties": {"item": {"type": "string"}, "error": {"type": "string"}},
                },
            },
            "skipped": {"type": "object", "additionalProperties": {"type": "string"}},
            "separation": {
                "type": ["object", "null"],
                "additionalProperties": {  # one entry per class
                    "type": "object",
                    "required": ["methods", "median", "tracks"],
                    "properties": {
                        "methods": {"type": "array", "items": methods, "description": "rows scored, in table "
                                    "order: model, the compared separators (separators[].name), hpss, irm, ibm, "
                                    "mixture"},
                        "sdr_ratio": {**_NUM, "description": "median instrument SDR of model / of irm; null "
                                      "without a model row or when the irm median is not positive"},
                        "median": {
                            **method_map,
                            "additionalProperties": {
                                "type": "object",
                                "required": list(SOURCES),
                                "properties": {s: _MEDIAN_SOURCE for s in SOURCES},
                            },
                        },
                        "tracks": {
                            "type": "array",
                            "items": {
                                "type": "object",
                                "required": ["track_id", "seconds", "scores"],
                                "properties": {
                                    "track_id": {"type": "string"},
                                    "seconds": {"type": "number"},
                                    "scores": {**method_map, "additionalProperties": _PER_SOURCE},
                                    "routed": {"type": "object", "additionalProperties": _CHOICE,
                                               "description": "routed rows: row -> the router's choice"},
                                },
                            },
                        },
                    },  # fmt: skip
                },
            },
            "activation": {
                "type": ["object", "null"],
                "required": [
                    "classes",
                    "per_class",
                    "tracks",
                    "noise_matrix_db",
                    "leakage_matrix_db",
                    "sequence",
                ],
                "properties": {
                    "classes": {"type": "array", "items": {"type": "string"}},
                    "per_class": {
                        "type": "object",
                        "additionalProperties": {
                            "type": "object",
                            "required": ["mae", "error_db", "tracks"],
                            "properties": {
                                "mae": _NUM,
                                "error_db": _NUM,
                                "tracks": {"type": "integer"},
                            },
                        },
                    },
                    "tracks": {
                        "type": "array",
                        "items": {
                            "type": "object",
                            "required": ["track_id", "seconds", "mae", "error_db"],
                            "properties": {
                                "track_id": {"type": "string"},
                                "seconds": {"type": "number"},
                                "mae": {"type": "object"},
                                "error_db": {"type": "object"},
                            },
                        },
                    },
                    "noise_matrix_db": {"anyOf": [_MATRIX, {"type": "null"}]},
                    "leakage_matrix_db": {"anyOf": [_MATRIX, {"type": "null"}]},
                    "sequence": {
                        "type": ["array", "null"],
                        "items": {
                            "type": "object",
                            "required": ["class", "track_id", "start_s", "seconds"],
                            "properties": {
                                "class": {"type": "string"},
                                "track_id": {"type": "string"},
                                "start_s": {"type": "number"},
                                "seconds": {"type": "number"},
                            },
                        },
                    },
                },  # fmt: skip
            },
            "model_alpha": {"type": "number", "description": "binary-mask models: the confidence threshold of "
                            "the model row (a source's binary mask is where the network's mask exceeds it)"},
            "alpha": _ALPHA,
            "report": {"type": "object"},
        },
    }


#: JSON Schema (draft 2020-12) of metrics.json without compared separators;
#: :func:`validate_metrics` checks a document against :func:`metrics_schema` of its own rows.
METRICS_SCHEMA: dict[str, Any] = metrics_schema()

_TYPES: dict[str, tuple[type, ...]] = {
    "object": (dict,), "array": (list,), "string": (str,), "null": (type(None),),
    "number": (int, float), "integer": (int,), "boolean": (bool,),
}  # fmt: skip


def _type_ok(value: Any, names: str | list[str]) -> bool:
    for name in [names] if isinstance(names, str) else names:
        if isinstance(value, bool) and name in ("number", "integer"):
            continue
        if isinstance(value, _TYPES[name]):
            return True
    return False


def _errors(value: Any, schema: Mapping[str, Any], path: str) -> list[str]:
    """Problems of ``value`` against the JSON Schema subset used by :data:`METRICS_SCHEMA`."""
    if "anyOf" in schema:
        options = [_errors(value, s, path) for s in schema["anyOf"]]
        return [] if any(not o for o in options) else options[0]
    if "type" in schema and not _type_ok(value, schema["type"]):
        return [f"{path}: expected {schema['type']}, got {type(value).__name__}"]
    if "enum" in schema and value not in schema["enum"]:
        return [f"{path}: {value!r} is not one of {schema['enum']}"]
    out: list[str] = []
    if isinstance(value, dict):
        out += [f"{path}: missing '{k}'" for k in schema.get("required", []) if k not in value]
        names = schema.get("propertyNames", {}).get("enum")
        out += [
            f"{path}: unexpected key '{k}'" for k in value if names is not None and k not in names
        ]
        for key, item in value.items():
            sub = schema.get("properties", {}).get(key, schema.get("additionalProperties"))
            if isinstance(sub, Mapping):
                out += _errors(item, sub, f"{path}.{key}")
    if isinstance(value, list) and "items" in schema:
        for k, item in enumerate(value):
            out += _errors(item, schema["items"], f"{path}[{k}]")
    if (
        isinstance(value, str)
        and schema.get("type") == ["number", "string", "null"]
        and value not in ("inf", "-inf")
    ):
        out.append(f"{path}: a score is a number, null, 'inf' or '-inf', got {value!r}")
    return out


def _row_names(doc: Any) -> list[str]:
    """Names of the compared separators and routed rows a document declares (none when it is malformed)."""
    if not isinstance(doc, dict):
        return []
    entries, routed = doc.get("separators"), doc.get("routed")
    names = [e["name"] for e in entries if isinstance(e, dict) and isinstance(e.get("name"), str)
             and e["name"] not in BUILT_IN] if isinstance(entries, list) else []  # fmt: skip
    return names + [n for n in routed if n not in BUILT_IN] if isinstance(routed, dict) else names


def validate_metrics(doc: Any, name: str = "metrics.json") -> None:
    """Raise :class:`EvaluationError` naming ``name`` and every place ``doc`` breaks the schema.

    The methods allowed are the built-in rows (:data:`sepcore.evaluate.config.BUILT_IN`) and
    the names of the compared separators (``separators``, but ``model``) and routed rows
    (``routed``) the document declares.
    """
    problems = _errors(doc, metrics_schema(_row_names(doc)), "$")
    if problems:
        more = f" (and {len(problems) - 10} more)" if len(problems) > 10 else ""
        raise EvaluationError(
            f"{name}: does not match {FORMAT}: " + "; ".join(problems[:10]) + more
        )


def json_number(x: float | int | np.floating | np.integer | None) -> float | int | str | None:
    """A score as metrics.json writes it: NaN -> null, +-inf -> ``"inf"``/``"-inf"``, else a number."""
    if x is None:
        return None
    if isinstance(x, (int, np.integer)) and not isinstance(x, bool):
        return int(x)
    value = float(x)
    if math.isnan(value):
        return None
    if math.isinf(value):
        return "inf" if value > 0 else "-inf"
    return round(value, 4)


def to_json(value: Any) -> Any:
    """Nested results with numpy values -> plain JSON data (scores by :func:`json_number`)."""
    if isinstance(value, Mapping):
        return {str(k): to_json(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [to_json(v) for v in value]
    if isinstance(value, np.ndarray):
        return to_json(value.tolist())
    if isinstance(value, (float, int, np.floating, np.integer)) and not isinstance(value, bool):
        return json_number(value)
    return value


def from_json_number(x: Any) -> float:
    """Inverse of :func:`json_number` for reading metrics.json: null -> NaN, "inf" -> inf."""
    if x is None:
        return math.nan
    return float(x)


# ---------------------------------------------------------------- building the document


def _separation_section(results: list[dict[str, Any]], classes: list[str]) -> dict[str, Any]:
    from sepcore.evaluate.scoring import median_table

    out = {}
    for cls in classes:
        tracks = [{"track_id": r["track_id"], "seconds": round(r["seconds"], 3), "scores": r["classes"][cls],
                   **({"routed": r["routed"]} if r.get("routed") else {})}
                  for r in results if cls in r.get("classes", {})]  # fmt: skip
        if tracks:
            methods = method_order(m for t in tracks for m in t["scores"])
            median = median_table(tracks)
            median = {m: median[m] for m in methods}  # table order: model, compared rows, oracles
            out[cls] = {"methods": methods, "median": median, "sdr_ratio": sdr_ratio(median), "tracks": tracks}
    return out


def alpha_section(results: Sequence[Mapping[str, Any]], alphas: Sequence[float], model_alpha: float) -> dict[str, Any]:
    """The ``alpha`` entry: per class and α, the median (and mean) scores over tracks.

    ``results``: per-track results with ``"alpha"`` (:func:`sepcore.evaluate.tracks.score_alphas`).
    Medians as :func:`sepcore.evaluate.scoring.median_table` (NaN left out; ``count``:
    tracks with a defined SDR); means over the tracks where the score is finite.
    """
    from sepcore.evaluate.scoring import finite_mean, median_table

    keys = [alpha_key(a) for a in alphas]
    per_class: dict[str, Any] = {}
    for cls in dict.fromkeys(c for r in results for c in r.get("alpha", {})):
        tracks = [{"scores": r["alpha"][cls]} for r in results if cls in r.get("alpha", {})]
        median = median_table(tracks)
        per_class[cls] = {
            key: {src: {**median[key][src], **{f"{m}_mean": finite_mean([t["scores"][key][src][m] for t in tracks])
                                               for m in metrics.METRICS}} for src in SOURCES}
            for key in keys if key in median
        }  # fmt: skip
    return {"values": list(alphas), "model_alpha": model_alpha, "per_class": per_class}


def sdr_ratio(median: Mapping[str, Mapping[str, Mapping[str, float | int]]]) -> float:
    """Median instrument SDR of the model over that of the IRM (the share of the oracle bound).

    ``median``: :func:`sepcore.evaluate.scoring.median_table`'s. NaN without a ``model``
    or ``irm`` row, or when the IRM's median SDR is not a positive finite number (a
    ratio of dB values then means nothing).
    """
    if "model" not in median or "irm" not in median:
        return math.nan
    model, irm = float(median["model"]["instrument"]["sdr"]), float(median["irm"]["instrument"]["sdr"])
    if not (math.isfinite(irm) and irm > 0 and math.isfinite(model)):
        return math.nan
    return model / irm


def _activation_section(results: list[dict[str, Any]], classes: list[str],
                        sequence: dict[str, Any] | None) -> dict[str, Any]:  # fmt: skip
    from sepcore.evaluate.scoring import nanmedian

    ok = [r for r in results if "error" not in r]
    per_class = {}
    for cls in classes:
        active = [r for r in ok if r["errors"]["active_frames"][cls] > 0]
        per_class[cls] = {"mae": nanmedian([r["errors"]["mae"][cls] for r in active]),
                          "error_db": nanmedian([r["errors"]["error_db"][cls] for r in active]),
                          "tracks": len(active)}  # fmt: skip
    tracks = [{"track_id": r["track_id"], "seconds": round(r["seconds"], 3), "mae": r["errors"]["mae"],
               "error_db": r["errors"]["error_db"]} for r in ok]  # fmt: skip
    return {"classes": list(classes), "per_class": per_class, "tracks": tracks,
            "noise_matrix_db": sequence["noise"] if sequence else None,
            "leakage_matrix_db": sequence["leakage"] if sequence else None,
            "sequence": sequence["sequence"] if sequence else None}  # fmt: skip


def metrics_document(head: Mapping[str, Any], evaluation: Mapping[str, Any], classes: list[str],
                     results: list[dict[str, Any]], sequence: dict[str, Any] | None,
                     listing_errors: list[str], wall: float) -> dict[str, Any]:  # fmt: skip
    """The content of metrics.json (see :data:`METRICS_SCHEMA`).

    ``head``: ``task``, ``checkpoint``, ``data``, ``split``, ``target``, ``sample_rate``,
    ``feature``, ``frames``, ``tracks_selected``; ``evaluation``: its entry
    (:meth:`sepcore.evaluate.config.ScoringConfig.described`); ``classes``: the classes
    scored (separators: the target first) or of the activations; ``results``: per-track
    results and failures (``{"track_id", "error"}``); ``sequence``: the sequence test.
    A ``head`` with ``baselines`` (:func:`sepcore.evaluate.job.run_head`) passes it on.
    A binary-mask model's ``head`` adds ``model_alpha`` and ``alpha`` (the sweep: a
    non-empty one adds the ``alpha`` entry, :func:`alpha_section`). A ``head`` with
    ``routed`` passes it on, each row with ``songs``: the tracks evaluated sent to each group
    (:func:`sepcore.evaluate.routed.song_counts`).
    """
    from sepcore.evaluate.routed import song_counts

    task = head["task"]
    ok = [r for r in results if "error" not in r and (task == "activation" or r["classes"])]
    failed = [{"item": r["track_id"], "error": r["error"]} for r in results if "error" in r]
    failed += [{"item": "listing", "error": e} for e in listing_errors]
    audio = sum(r["seconds"] for r in ok)
    evaluated = sum(r["seconds"] * sum(len(s) for part in ("classes", "alpha") for s in r.get(part, {}).values())
                    for r in ok)  # fmt: skip
    eval_s = sum(r.get("eval_seconds", 0.0) for r in ok)
    separator = task == "separator"
    doc = {
        "format": FORMAT, "task": task, "checkpoint": head["checkpoint"], "data": head["data"],
        "split": head["split"], "target": head["target"] if separator else None,
        **{k: head[k] for k in ("stems", "wiener_iterations") if separator and head.get(k) is not None},
        "sample_rate": int(head["sample_rate"]),
        **{k: head[k] for k in ("channels", "separators", "model_alpha", "baselines")
           if separator and head.get(k) is not None},
        "feature": head.get("feature"), "frames": head.get("frames"),
        "evaluation": dict(evaluation),
        "tracks_evaluated": len(ok),
        "timing": {"audio_seconds": audio, "scored_audio_seconds": evaluated if separator else audio,
                   "eval_seconds": eval_s, "separate_seconds": sum(r.get("separate_seconds", 0.0) for r in ok),
                   "eval_seconds_per_audio_minute": eval_s / (evaluated / 60.0) if separator and evaluated
                   else (eval_s / (audio / 60.0) if audio else None), "wall_seconds": wall},
        "failed": failed,
        "skipped": {f"{r['track_id']}/{c}": why for r in results for c, why in r.get("skipped", {}).items()},
        "separation": _separation_section(ok, classes) if separator else None,
        "activation": _activation_section(results, classes, sequence) if not separator else None,
    }  # fmt: skip
    if separator and head.get("routed"):
        doc["routed"] = {name: {**spec, "songs": song_counts(ok, spec, name)} for name, spec in head["routed"].items()}
    if separator and head.get("alpha"):
        doc["alpha"] = alpha_section(ok, head["alpha"], head["model_alpha"])
    return {**to_json(doc), "tracks_selected": int(head["tracks_selected"])}


def summary_entries(doc: Mapping[str, Any]) -> dict[str, Any]:
    """The ``counts`` and ``figures`` of the job's summary.json, from a metrics document."""
    figures: dict[str, Any] = {"eval_seconds_per_audio_minute": doc["timing"]["eval_seconds_per_audio_minute"],
                               "audio_seconds": round(doc["timing"]["audio_seconds"], 1)}  # fmt: skip
    for cls, sec in (doc["separation"] or {}).items():
        for method in sec["methods"]:
            for src in SOURCES:
                m = sec["median"][method][src]
                figures[f"{cls}/{method}/{src}"] = " / ".join(
                    f"{from_json_number(m[k]):.2f}" for k in ("sdr", "sir", "sar")
                )
        if sec.get("sdr_ratio") is not None:
            figures[f"{cls}/sdr_ratio"] = sec["sdr_ratio"]
    for cls, by_alpha in ((doc.get("alpha") or {}).get("per_class") or {}).items():
        for key, m in by_alpha.items():
            figures[f"{cls}/alpha={key}/instrument"] = " / ".join(
                f"{from_json_number(m['instrument'][k]):.2f}" for k in ("sdr", "sir", "sar"))
    counts = {"tracks": doc["tracks_selected"], "evaluated": doc["tracks_evaluated"],
              "failed": len(doc["failed"]), "skipped": len(doc["skipped"])}  # fmt: skip
    return {"counts": counts, "figures": figures}
