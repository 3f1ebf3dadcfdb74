"""The per-machine cache folder (demo corpus, rendered demo data).

``SEP_CACHE_DIR`` overrides the default ``~/.cache/sep``.
"""

from __future__ import annotations

import os


def cache_dir(*parts: str) -> str:
    """A folder below the cache root (created if missing)."""
    root = os.environ.get("SEP_CACHE_DIR") or os.path.join(os.path.expanduser("~"), ".cache", "sep")
    path = os.path.join(root, *parts)
    os.makedirs(path, exist_ok=True)
    return path
