"""Write docs/metrics.md from the JSON Schema of ``sep evaluate``'s metrics.json.

    .venv/bin/python scripts/metrics_doc.py           # rewrite docs/metrics.md
    .venv/bin/python scripts/metrics_doc.py --check   # exit 1 when docs/metrics.md differs

The page lists every field of the schema by its dotted path (``<class>``, ``<method>``:
one entry per key; ``[]``: every element of an array) with its type, whether it is
required, and the schema's ``description`` (or, where it has none, what else the schema
says about the field).
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
PAGE = REPO / "docs" / "metrics.md"

#: Placeholder of the keys of an object with ``additionalProperties``, by the object's name.
PLACEHOLDERS = {
    "separation": "<class>",
    "per_class": "<class>",
    "median": "<method>",
    "scores": "<method>",
    "skipped": "<track>/<class>",
    "<class>": "<alpha>",  # alpha.per_class.<class>.<alpha>: the α sweep's entries
}

INTRO = """\
`sep evaluate` writes `<output>/metrics.json` (see [evaluate](evaluate.md)). Before
writing it, the job checks the document against the JSON Schema `METRICS_SCHEMA` in
`sepcore.evaluate` (draft 2020-12) and refuses a document that does not match. This page
is generated from that schema by `scripts/metrics_doc.py`; `tests/test_docs.py` fails
when the two disagree.

How to read the table:

* A path is dotted from the top of the document. `<class>` stands for an instrument
  class (`guitar`, `piano`, ...; a Demucs model's `other` stem is scored as
  `demucs_other-<its other sources>`), `<method>` for one of `model`, `irm`, `ibm`,
  `mixture` or a compared separator's name (`separators[].name`, the keys of `compare`),
  `<track>/<class>` for a track id and a class, `<alpha>` for an α value of the sweep
  (as written: `"0.5"`); `[]` is every element of an array.
* A field of type `number | string | null` is a number, `null` where it is undefined
  (a silent reference or an all-zero estimate), or the string `"inf"` or `"-inf"`
  (`validate_metrics` refuses any other string). `sdr`, `sir`, `sar`, `error_db` and
  the matrices are in dB; `mae` is on the activation scale (0 to 1).
* *required* says whether the key must be present in its parent object; keys of an
  object whose names are data (`<class>`, `<method>`) are marked `-`.
* For separators `activation` is `null`; for activation models `separation` is `null`.
* `timing`: for separators `eval_seconds` is the wall time of BSS Eval inside the
  track tasks, and `eval_seconds_per_audio_minute` is per minute of one
  `[instrument, rest]` pair scored once (one method, one class); for activation
  models both count the seconds of the track tasks per minute of audio.
"""


def load_schema() -> dict[str, Any]:
    """The schema of metrics.json (sepcore.evaluate.document)."""
    sys.path.insert(0, str(REPO))
    from sepcore.evaluate.document import METRICS_SCHEMA

    return METRICS_SCHEMA


def _is_container(s: Mapping[str, Any]) -> bool:
    """True when the field has fields of its own (rows below it)."""
    if "properties" in s or isinstance(s.get("additionalProperties"), Mapping):
        return True
    items = s.get("items")
    return isinstance(items, Mapping) and _is_container(items)


def type_of(s: Mapping[str, Any]) -> str:
    """The field's type in words: ``string | null``, ``array of number``, ``"full" | "windowed"``."""
    if "enum" in s:
        return " | ".join(json.dumps(v) for v in s["enum"])
    if "anyOf" in s:
        return " or ".join(type_of(alt) for alt in s["anyOf"])
    names = s.get("type", [])
    out = []
    for name in [names] if isinstance(names, str) else names:
        items = s.get("items")
        if name == "array" and isinstance(items, Mapping) and not _is_container(items):
            inner = type_of(items)
            out.append(f"array of ({inner})" if " | " in inner else f"array of {inner}")
        else:
            out.append(name)
    return " | ".join(out) or "any"


def notes_of(s: Mapping[str, Any]) -> str:
    """The schema's description of a field, or what else it says about it."""
    if s.get("description"):
        return str(s["description"])
    notes = []
    names = s.get("propertyNames", {}).get("enum")
    if names:
        notes.append("keys: " + ", ".join(f"`{n}`" for n in names))
    if s.get("title"):
        notes.append(str(s["title"]))
    return "; ".join(notes)


def rows(s: Mapping[str, Any], path: str) -> Iterator[tuple[str, str, str, str]]:
    """(path, type, required, description) of every field below ``s``, depth first."""
    for sub in s.get("anyOf", []):
        yield from rows(sub, path)
    required = set(s.get("required", []))
    for key, sub in s.get("properties", {}).items():
        child = f"{path}.{key}" if path else key
        yield child, type_of(sub), "yes" if key in required else "no", notes_of(sub)
        yield from rows(sub, child)
    extra = s.get("additionalProperties")
    if isinstance(extra, Mapping):
        name = path.rsplit(".", 1)[-1].removesuffix("[]")
        child = f"{path}.{PLACEHOLDERS.get(name, '<key>')}"
        yield child, type_of(extra), "-", notes_of(extra)
        yield from rows(extra, child)
    items = s.get("items")
    if isinstance(items, Mapping) and _is_container(items):
        child = f"{path}[]"
        if "properties" in items or "additionalProperties" in items:
            yield from rows(items, child)
        else:
            yield child, type_of(items), "-", notes_of(items)
            yield from rows(items, child)


def _cell(text: str, code: bool = False) -> str:
    text = text.replace("|", "\\|")
    return f"`{text}`" if code and text else text


def render(schema: Mapping[str, Any]) -> str:
    """The whole page."""
    lines = [
        f"# {schema.get('title', 'metrics.json')}",
        "",
        "<!-- Generated by scripts/metrics_doc.py from METRICS_SCHEMA: do not edit by hand. -->",
        "",
        INTRO,
        "| field | type | required | description |",
        "|---|---|---|---|",
    ]
    for path, typ, req, notes in rows(schema, ""):
        lines.append(
            f"| {_cell(path, code=True)} | {_cell(typ, code=True)} | {req} | {_cell(notes)} |"
        )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--check", action="store_true", help="exit 1 when docs/metrics.md differs")
    args = parser.parse_args(argv)
    text = render(load_schema())
    current = PAGE.read_text(encoding="utf-8") if PAGE.exists() else None
    if args.check:
        if current != text:
            print(
                f"{PAGE.relative_to(REPO)} is out of date: run scripts/metrics_doc.py",
                file=sys.stderr,
            )
            return 1
        return 0
    if current != text:
        PAGE.parent.mkdir(parents=True, exist_ok=True)
        PAGE.write_text(text, encoding="utf-8")
        print(f"wrote {PAGE.relative_to(REPO)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
