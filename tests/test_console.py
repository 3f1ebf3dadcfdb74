"""A quiet console: a job prints its own lines, and Ray's only with ``SEP_LOG_LEVEL=DEBUG``.

Each test runs ``sep render`` of two tiny MIDI files (one of them broken) in a subprocess
with a fresh local Ray of one CPU, the way a user runs a job.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

#: What only Ray's internals print: worker and raylet lines, Ray's loggers, tracebacks.
RAY_INTERNALS = ("(raylet)", "(pid=", "worker.py", "streaming_executor", "Traceback",
                 "DeprecationWarning", "deprecated")  # fmt: skip


@pytest.fixture(scope="module")
def midi_folder(tmp_path_factory) -> Path:
    """A good one-note MIDI file and a broken one."""
    import mido

    folder = tmp_path_factory.mktemp("midi")
    song = mido.MidiFile()
    track = mido.MidiTrack()
    track += [mido.Message("program_change", program=25, time=0),
              mido.Message("note_on", note=60, velocity=90, time=0),
              mido.Message("note_off", note=60, velocity=0, time=960)]  # fmt: skip
    song.tracks.append(track)
    song.save(folder / "good.mid")
    (folder / "broken.mid").write_bytes(b"this is not a MIDI file")
    return folder


def run_render(midi: Path, output: Path, **env: str) -> subprocess.CompletedProcess:
    environ = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "SEP_LOG_LEVEL")}
    args = [sys.executable, "-m", "ray_jobs.cli", "render", f"midi={midi}", f"output={output}",
            "num_cpus=1", "sample_rate=8000", "channels=1"]  # fmt: skip
    return subprocess.run(args, env={**environ, **env}, capture_output=True, text=True, timeout=120)


def test_a_job_prints_its_own_lines_and_where_rays_logs_are(midi_folder, tmp_path):
    done = run_render(midi_folder, tmp_path / "out")
    console = done.stdout + done.stderr
    assert done.returncode == 0, console
    assert [line for line in console.splitlines() if any(s in line for s in RAY_INTERNALS)] == []
    # the job's own lines: its progress, the bad file named as it fails, its summary
    assert "render: done in" in console and "rendered: 1" in console
    assert any("render [" in line and "broken.mid" in line for line in console.splitlines())
    assert "  FAILED " in console
    last = done.stdout.rstrip().splitlines()[-1]
    assert last.startswith("Ray's logs: ") and Path(last.split(": ", 1)[1]).is_dir()
    assert len(console.splitlines()) < 25


def test_debug_level_brings_rays_output_back(midi_folder, tmp_path):
    done = run_render(midi_folder, tmp_path / "out", SEP_LOG_LEVEL="DEBUG")
    console = done.stdout + done.stderr
    assert done.returncode == 0, console
    assert "worker.py" in console and "render: done in" in console
