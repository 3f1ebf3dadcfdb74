"""The per-class table of bench/README.md "quality: several stems at equal budget".

Reads the ``metrics.json`` of ``sep evaluate`` runs of our multi-stem models and the
``scores.json`` of ``bench/peer_openunmix.py evaluate``, all on the same held-out set, and
prints one Markdown table of median SDR per class: each model, the Open-Unmix peer, and
the IRM, IBM and mixture rows (taken from the first of our runs), then each model's
ratio to the IRM and its gap to the peer.

    .venv/bin/python bench/quality_table.py \\
        --ours "BLSTM, Wiener 1=out/band/evaluate_blstm/metrics.json" \\
        --ours "BLSTM, masks only=out/band/evaluate_blstm_nowiener/metrics.json" \\
        --peer "Open-Unmix 1.3.0=out/peer/run/scores.json"
"""

from __future__ import annotations

import argparse
import json
import math

CLASSES = ("bass", "drums", "guitar", "piano", "strings")
ORACLES = (("irm", "IRM (oracle)"), ("ibm", "IBM (oracle)"), ("mixture", "mixture (lower bound)"))


def _named(items: list[str]) -> list[tuple[str, str]]:
    out = []
    for item in items:
        name, _, path = item.partition("=")
        if not path:
            raise SystemExit(f"quality_table: expected NAME=PATH, got {item!r}")
        out.append((name, path))
    return out


def _sdr(table: dict, cls: str, method: str) -> float:
    try:
        return float(table[cls][method]["instrument"]["sdr"])
    except (KeyError, TypeError):
        return math.nan


def _ours(path: str) -> tuple[dict, dict]:
    """(median tables by class, track counts by class) of a ``sep evaluate`` metrics.json."""
    doc = json.load(open(path))
    sep = doc["separation"]
    tables = {cls: sep[cls]["median"] for cls in sep}
    counts = {cls: sep[cls]["median"].get("model", {}).get("instrument", {}).get("count") for cls in sep}
    return tables, counts


def _peer(path: str) -> dict:
    doc = json.load(open(path))
    return {cls: {"model": methods[next(iter(methods))]} for cls, methods in doc["medians"].items()}


def _cell(value: float) -> str:
    return "n/a" if math.isnan(value) else f"{value:.2f}"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--ours", action="append", default=[], help="NAME=metrics.json of sep evaluate")
    p.add_argument("--peer", action="append", default=[], help="NAME=scores.json of peer_openunmix.py evaluate")
    a = p.parse_args()
    ours, peers = _named(a.ours), _named(a.peer)
    if not ours:
        raise SystemExit("quality_table: give at least one --ours run (its oracle rows head the table)")
    rows: list[tuple[str, dict[str, float]]] = []
    first, counts = _ours(ours[0][1])
    for name, path in ours:
        tables, _ = _ours(path)
        rows.append((name, {c: _sdr(tables, c, "model") for c in CLASSES}))
    for name, path in peers:
        tables = _peer(path)
        rows.append((name, {c: _sdr(tables, c, "model") for c in CLASSES}))
    for method, name in ORACLES:
        rows.append((name, {c: _sdr(first, c, method) for c in CLASSES}))
    print("| median SDR (dB) | " + " | ".join(CLASSES) + " |")
    print("|---|" + "---|" * len(CLASSES))
    for name, values in rows:
        print(f"| {name} | " + " | ".join(_cell(values[c]) for c in CLASSES) + " |")
    print("| tracks where the class plays | " + " | ".join(str(counts.get(c, "n/a")) for c in CLASSES) + " |")
    irm = dict(rows)[ORACLES[0][1]]
    print()
    print("| model / IRM (median SDR) | " + " | ".join(CLASSES) + " |")
    print("|---|" + "---|" * len(CLASSES))
    for name, _ in ours:
        values = dict(rows)[name]
        ratio = {c: values[c] / irm[c] if irm[c] > 0 else math.nan for c in CLASSES}
        print(f"| {name} | " + " | ".join(_cell(ratio[c]) for c in CLASSES) + " |")
    for peer_name, _ in peers:
        print()
        print(f"| gap to {peer_name} (dB, ours - peer) | " + " | ".join(CLASSES) + " |")
        print("|---|" + "---|" * len(CLASSES))
        for name, _ in ours:
            values, peer = dict(rows)[name], dict(rows)[peer_name]
            print(f"| {name} | " + " | ".join(_cell(values[c] - peer[c]) for c in CLASSES) + " |")


if __name__ == "__main__":
    main()
