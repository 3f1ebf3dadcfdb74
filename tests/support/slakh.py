"""Slakh-layout tracks written from arrays, for tests that need exact, tiny stems."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from sepcore.io.audio import Audio, write_audio


def write_slakh_track(folder: Path, stems: Sequence[tuple[str, int, np.ndarray]], rate: int) -> None:
    """``folder/metadata.yaml`` and ``folder/stems/Snn.flac``: one mono stem per ``(inst_class,
    GM program, samples)`` entry, drums marked by their class."""
    lines = ["audio_dir: stems", "stems:"]
    for k, (inst_class, program, _) in enumerate(stems):
        drum = str(inst_class == "Drums").lower()
        lines.append(f"  S{k:02d}: {{audio_rendered: true, inst_class: {inst_class}, is_drum: {drum}, program_num: {program}}}")
    (folder / "stems").mkdir(parents=True)
    (folder / "metadata.yaml").write_text("\n".join(lines) + "\n")
    for k, (_, _, audio) in enumerate(stems):
        write_audio(str(folder / "stems" / f"S{k:02d}.flac"), Audio(np.float32(audio)[None], rate), fmt="flac")
