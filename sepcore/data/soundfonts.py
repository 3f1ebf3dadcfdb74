"""The General MIDI SoundFonts the renderer chooses from, by name and family.

A family is a set of fonts that share their samples (FluidR3 GM, and its mono .sf3
build), so a model trained on one has heard the others. ``musescore`` is held out: it
may render test sets only (it is a fork of FluidR3Mono, so its timbres are only partly
unseen). Debian's ``FluidR3_GS.sf2`` is not listed: it holds only the GS sound-effect
variations (programs 120-127 of banks 1-8 and the SFX kit), no General MIDI set.

:func:`resolve` turns a config's names, families or paths into fonts for a purpose;
:func:`choose` picks one per stem, uniformly over families first.
"""

from __future__ import annotations

import os
import random
from collections.abc import Sequence
from dataclasses import dataclass

from sepcore.errors import ConfigError, RenderError
from sepcore.io import storage

#: Purposes whose renders train or tune a model: held-out families are refused for them.
TRAINING_PURPOSES = ("train", "tune")
PURPOSES = (*TRAINING_PURPOSES, "test")


@dataclass(frozen=True)
class SoundFont:
    """A SoundFont file, its ``family`` and the Debian ``package`` that installs it."""

    name: str
    path: str
    family: str
    package: str
    held_out: bool = False


_FONTS = (
    SoundFont(
        "fluidr3_gm", "/usr/share/sounds/sf2/FluidR3_GM.sf2", "fluidr3", "fluid-soundfont-gm"
    ),
    SoundFont(
        "fluidr3mono_gm",
        "/usr/share/sounds/sf3/FluidR3Mono_GM.sf3",
        "fluidr3",
        "fluidr3mono-gm-soundfont",
    ),
    SoundFont("timgm6mb", "/usr/share/sounds/sf2/TimGM6mb.sf2", "timgm6mb", "timgm6mb-soundfont"),
    SoundFont("opl3", "/usr/share/sounds/sf2/OPL-3_FM_128M.sf2", "opl3", "opl3-soundfont"),
    SoundFont(
        "musescore_general",
        "/usr/share/sounds/sf3/MuseScore_General_Full.sf3",
        "musescore",
        "musescore-general-soundfont",
        held_out=True,
    ),  # fmt: skip
)
SOUNDFONTS: dict[str, SoundFont] = {f.name: f for f in _FONTS}
FAMILIES: dict[str, tuple[SoundFont, ...]] = {}
for _font in _FONTS:
    FAMILIES[_font.family] = (*FAMILIES.get(_font.family, ()), _font)
#: What ``auto`` means: the font the renderer used before there were several.
AUTO = "fluidr3_gm"


def _lookup(entry: str) -> list[SoundFont]:
    if entry == "auto":
        return [SOUNDFONTS[AUTO]]
    if entry in SOUNDFONTS:
        return [SOUNDFONTS[entry]]
    if entry in FAMILIES:
        return list(FAMILIES[entry])
    if entry.lower().endswith((".sf2", ".sf3")):
        path = storage.local_path(entry) if storage.is_local(entry) else entry
        real = os.path.realpath(path)
        known = [f for f in _FONTS if os.path.realpath(f.path) == real]
        name = os.path.splitext(os.path.basename(path))[0]
        return known or [SoundFont(name, path, f"file:{name}", "")]
    raise ConfigError("soundfonts", f"unknown SoundFont or family {entry!r}; known: {sorted(SOUNDFONTS)} and families {sorted(FAMILIES)}")  # fmt: skip


def resolve(names_or_families: Sequence[str] | str, purpose: str) -> list[SoundFont]:
    """The installed fonts named by ``names_or_families`` (font names, family names, local
    ``.sf2``/``.sf3`` paths or ``file://`` URIs, or ``auto``), without repeats, in the order
    given. A file outside the registry is its own family, ``file:NAME``.

    Raises :class:`ConfigError` for an unknown entry, an unknown ``purpose`` or a held-out
    family named for a training purpose, and :class:`RenderError` naming a missing file.
    """
    if purpose not in PURPOSES:
        raise ConfigError("purpose", f"must be one of {PURPOSES}, got {purpose!r}")
    entries = [names_or_families] if isinstance(names_or_families, str) else list(names_or_families)
    if not entries:
        raise ConfigError("soundfonts", "names no SoundFont")
    fonts: list[SoundFont] = []
    for entry in entries:
        for font in _lookup(entry):
            if font.held_out and purpose in TRAINING_PURPOSES:
                raise ConfigError("soundfonts", f"{font.name} (family {font.family}) is held out for testing; "
                                  f"it cannot render data to {purpose} on")  # fmt: skip
            if not os.path.isfile(font.path):
                hint = f"; install the Debian package {font.package}" if font.package else ""
                raise RenderError(font.path, f"SoundFont not found{hint}")
            if font not in fonts:
                fonts.append(font)
    return fonts


def choose(rng: random.Random, fonts: Sequence[SoundFont]) -> SoundFont:
    """One of ``fonts``: a family uniformly at random, then a font of it uniformly."""
    families = sorted({f.family for f in fonts})
    family = rng.choice(families)
    return rng.choice([f for f in fonts if f.family == family])
