"""Done-markers: what a batch job finished, so that a rerun skips it.

A :class:`Ledger` is a folder of small JSON records, one per finished item, each
written atomically (:func:`sepcore.io.storage.write_text`) once the item's outputs
exist. A record carries the ``fingerprint`` of the settings the item was made with;
a record with another fingerprint (or none, when one is wanted) does not count as
done, so changing a setting that changes the result redoes the work. Item names may
be any string (URIs, track ids): the file name is a readable prefix plus a short hash.

    ledger = Ledger(storage.join(output, "_done"), fingerprint="3f2a...")
    if ledger.get(track_id) is None:
        ...  # do the work, write the outputs
        ledger.put(track_id, {"rows": 12})
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from sepcore.errors import SepError
from sepcore.io import storage

SUFFIX = ".json"


def record_name(item: str) -> str:
    """The file name of ``item``'s record: a readable prefix and a hash of the whole name."""
    readable = re.sub(r"[^A-Za-z0-9._-]+", "_", item.rsplit("/", 1)[-1])[:60].strip("._") or "item"
    return f"{readable}-{hashlib.sha256(item.encode()).hexdigest()[:12]}{SUFFIX}"


class Ledger:
    """The done-records below ``folder`` (a URI); ``fingerprint``: the settings they must match."""

    def __init__(self, folder: str, fingerprint: str | None = None):
        self.folder = storage.normalize_uri(folder)
        self.fingerprint = fingerprint

    def uri(self, item: str) -> str:
        return storage.join(self.folder, record_name(item))

    def put(self, item: str, record: dict[str, Any]) -> None:
        """Mark ``item`` done with ``record`` (JSON-able); call it after the item's outputs exist."""
        doc = {"item": item, "fingerprint": self.fingerprint, "record": record}
        storage.write_text(self.uri(item), json.dumps(doc, default=str))

    def _valid(self, doc: Any, item: str | None = None) -> dict[str, Any] | None:
        if not isinstance(doc, dict) or "record" not in doc:
            return None
        if item is not None and doc.get("item") != item:
            return None
        if doc.get("fingerprint") != self.fingerprint:
            return None
        return doc["record"]

    def get(self, item: str) -> dict[str, Any] | None:
        """``item``'s record when it was finished with this fingerprint, else None."""
        uri = self.uri(item)
        try:
            doc = json.loads(storage.read_text(uri))
        except (SepError, ValueError):  # absent, or unreadable: not done
            return None
        return self._valid(doc, item)

    def records(self) -> dict[str, dict[str, Any]]:
        """Every valid record of this folder, by item (read in parallel)."""
        uris = storage.list_files(self.folder, suffix=SUFFIX)  # [] when the folder is absent

        def read(uri: str) -> Any:
            try:
                return json.loads(storage.read_text(uri))
            except (SepError, ValueError):
                return None

        with ThreadPoolExecutor(max_workers=16) as pool:
            docs = list(pool.map(read, uris))
        out: dict[str, dict[str, Any]] = {}
        for doc in docs:
            record = self._valid(doc)
            if record is not None:
                out[doc["item"]] = record
        return out

    def pending(self, items: Iterable[str]) -> list[str]:
        """The items of ``items`` not done yet, in their order."""
        done = self.records()
        return [item for item in items if item not in done]

    def clear(self) -> None:
        """Forget every record (a forced rerun)."""
        storage.delete(self.folder, recursive=True)
