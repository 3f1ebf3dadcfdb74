"""The instrument-class vocabulary shared by every dataset reader and job.

Datasets name classes differently: Slakh uses General MIDI families (``Guitar``,
``Strings (continued)``), curated stem folders use lower-case names (``guitar``,
``vocals``), MUSDB18 stem files have ``drums``, ``bass``, ``other``, ``vocals``.
Jobs and configs use the canonical lower-case names below (``target: guitar``).
"""

from __future__ import annotations

CLASSES = ("piano", "guitar", "bass", "drums", "strings", "percussion", "vocals", "other")

#: Slakh / General MIDI families -> canonical class. Families not listed are "other".
_SLAKH = {
    "Piano": "piano",
    "Guitar": "guitar",
    "Bass": "bass",
    "Drums": "drums",
    "Strings": "strings",
    "Strings (continued)": "strings",
    "Percussive": "percussion",
}


def canonical_class(name: str) -> str:
    """The canonical class of a dataset's class name (Slakh family or folder name)."""
    if name in _SLAKH:
        return _SLAKH[name]
    low = name.strip().lower()
    return low if low in CLASSES else "other"
