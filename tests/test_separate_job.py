"""The separate job on a local Ray: formats, bad files, nightly reruns, names, S3."""

from __future__ import annotations

import io
import json
import os
import shutil

import numpy as np
import pyarrow.parquet as pq
import pytest
import ray
import soundfile as sf

from ray_jobs import separate as job
from sepcore.io import storage
from sepcore.io.stemfile import decode_any
from sepcore.models import SMOKE_CONFIGS, build_model, checkpoint
from sepcore.separate import state as separate_state
from tests.support.library import FORMATS, add_bad_files, make_library

N_FFT, HOP, FRAMES = 256, 128, 16


pytestmark = pytest.mark.usefixtures("local_ray")  # tests/conftest.py


@pytest.fixture(scope="module")
def tiny_checkpoint(tmp_path_factory) -> str:
    """An (untrained) small hourglass saved the way the train job saves one."""
    model = checkpoint.LogMagnitude(build_model("hourglass", **SMOKE_CONFIGS["hourglass"]))
    meta = {"model": {"name": "hourglass", "config": SMOKE_CONFIGS["hourglass"], "log_input": True},
            "task": "separator", "target": "guitar", "sample_rate": 22050, "channels": 1,
            "feature": {"name": "stft", "n_fft": N_FFT, "hop": HOP}, "frames": FRAMES}  # fmt: skip
    out = str(tmp_path_factory.mktemp("ckpt") / "best")
    checkpoint.save(out, model, meta)
    return out


@pytest.fixture(scope="module")
def mixes(demo_data) -> list[str]:
    """Local paths of the demo set's mixes."""
    return [storage.local_path(u) for u in storage.list_files(demo_data) if u.endswith("/mix.flac")]


def _run(library: str, output: str, ckpt: str, *extra: str) -> int:
    return job.main([f"library={library}", f"output={output}", f"checkpoint={ckpt}",
                     "inference={batch_size: 32, pool_size: 2}", *extra])  # fmt: skip


def _manifest(output: str) -> dict[str, dict]:
    table = pq.read_table(io.BytesIO(storage.read_bytes(storage.join(output, job.MANIFEST))))
    return {row["relative"]: row for row in table.to_pylist()}


def _summary(output: str) -> dict:
    return json.loads(storage.read_text(storage.join(output, "summary.json")))


def test_library_of_good_and_bad_files(tmp_path, mixes, tiny_checkpoint):
    lib = tmp_path / "library"
    good = make_library(mixes[: len(FORMATS)], str(lib))
    bad = add_bad_files(str(lib / "odd"), mixes[0], long_seconds=120.0)
    out = str(tmp_path / "out")
    assert _run(str(lib), out, tiny_checkpoint) == 0

    rows = _manifest(out)
    assert len(rows) == len(good) + len(bad)
    valid = [os.path.relpath(p, lib) for p in good] + [
        os.path.relpath(bad[k], lib) for k in ("six_channel", "mono_8k", "long")
    ]
    for rel in valid:
        row = rows[rel]
        assert row["status"] == "ok", (rel, row["error"])
        inst, rate = sf.read(storage.local_path(row["instrument_uri"]), always_2d=True)
        rest, _ = sf.read(storage.local_path(row["rest_uri"]), always_2d=True)
        src = decode_any(str(lib / rel))
        # the stems keep the source's rate, layout and length, and add up to it
        assert rate == row["sample_rate"] == src.sample_rate
        assert inst.shape == rest.shape == src.samples.T.shape
        np.testing.assert_allclose(inst + rest, np.clip(src.samples.T, -1, 1), atol=1e-4)
        assert row["model_id"] and row["duration_s"] > 0 and row["total_s"] > 0
    assert rows["odd/surround 5.1.wav"]["channels"] == 6
    assert rows["odd/phone 8k.wav"]["sample_rate"] == 8000
    assert rows["odd/long mix.flac"]["duration_s"] == pytest.approx(120.0)
    expected = {"empty": "EmptyAudio", "truncated": "DecodeError", "not_audio": "DecodeError"}
    for key, error_class in expected.items():
        row = rows[os.path.relpath(bad[key], lib)]
        assert row["status"] == "error" and row["error_class"] == error_class
        assert os.path.basename(bad[key]) in row["error"] and row["instrument_uri"] is None
    summary = _summary(out)
    assert summary["counts"]["ok"] == len(valid) and summary["counts"]["error"] == 3
    assert summary["figures"]["x_realtime"] > 0
    assert 0 < summary["figures"]["startup_s"] < summary["figures"]["wall_s"]
    assert summary["nodes"] == [ray.get_runtime_context().get_node_id()]  # one node here
    assert storage.list_files(storage.join(out, job.RECORDS)) == []


def test_rerun_skips_done_work_and_redoes_changed_files(tmp_path, mixes, tiny_checkpoint):
    lib = tmp_path / "library"
    a, b = make_library(mixes[:2], str(lib))
    out = str(tmp_path / "out")
    assert _run(str(lib), out, tiny_checkpoint) == 0
    first = _manifest(out)
    assert {r["status"] for r in first.values()} == {"ok"}
    stamps = {rel: os.stat(storage.local_path(r["instrument_uri"])).st_mtime_ns
              for rel, r in first.items()}  # fmt: skip

    assert _run(str(lib), out, tiny_checkpoint) == 0  # nothing changed: nothing processed
    assert {r["status"] for r in _manifest(out).values()} == {"skipped"}
    assert _summary(out)["counts"]["ok"] == 0

    shutil.copy(mixes[3], str(tmp_path / "new.flac"))  # replace one source
    os.replace(str(tmp_path / "new.flac"), b)
    assert _run(str(lib), out, tiny_checkpoint) == 0
    third = _manifest(out)
    rel_a, rel_b = os.path.relpath(a, lib), os.path.relpath(b, lib)
    assert third[rel_a]["status"] == "skipped" and third[rel_b]["status"] == "ok"
    assert os.stat(storage.local_path(third[rel_a]["instrument_uri"])).st_mtime_ns == stamps[rel_a]
    assert third[rel_b]["change_key"] != first[rel_b]["change_key"]


def test_a_run_that_dies_before_the_manifest_loses_no_finished_work(
    tmp_path, mixes, tiny_checkpoint, monkeypatch
):
    lib = tmp_path / "library"
    make_library(mixes[:3], str(lib))
    out = str(tmp_path / "out")

    def die(*_args, **_kwargs):
        raise RuntimeError("killed before the manifest commit")

    monkeypatch.setattr(separate_state, "write_manifest", die)
    with pytest.raises(RuntimeError, match="killed"):
        _run(str(lib), out, tiny_checkpoint)
    assert not storage.exists(storage.join(out, job.MANIFEST))  # never half a manifest
    assert len(storage.list_files(storage.join(out, job.RECORDS))) == 3
    monkeypatch.undo()
    assert _run(str(lib), out, tiny_checkpoint) == 0
    assert {r["status"] for r in _manifest(out).values()} == {"skipped"}


def test_failed_files_are_retried_and_a_new_model_redoes_everything(
    tmp_path, mixes, tiny_checkpoint, monkeypatch
):
    lib = tmp_path / "library"
    make_library(mixes[:2], str(lib))
    out = str(tmp_path / "out")
    monkeypatch.setenv("SEP_FAULTS", "decode_raise:*song 01*")
    ray.shutdown()  # workers read the environment when they start
    ray.init(num_cpus=2, include_dashboard=False)
    assert _run(str(lib), out, tiny_checkpoint) == 0
    assert [r["status"] for r in _manifest(out).values()] == ["ok", "error"]
    monkeypatch.delenv("SEP_FAULTS")
    ray.shutdown()
    ray.init(num_cpus=2, include_dashboard=False)
    assert _run(str(lib), out, tiny_checkpoint) == 0
    assert [r["status"] for r in _manifest(out).values()] == ["skipped", "ok"]
    other = str(tmp_path / "other_model")
    model = checkpoint.LogMagnitude(build_model("hourglass", **SMOKE_CONFIGS["hourglass"]))
    checkpoint.save(other, model, checkpoint.read_meta(tiny_checkpoint))
    assert _run(str(lib), out, other) == 0
    assert [r["status"] for r in _manifest(out).values()] == ["ok", "ok"]


def test_odd_names_stay_inside_the_output(tmp_path, mixes, tiny_checkpoint):
    lib = tmp_path / "library"
    names = ["Ünïcödé 曲/song ..  dots.flac", "a b/c d.flac", "a b/c?d.flac", "a b/c_d.flac",
             "-rf.flac", "tab\tname.flac"]  # fmt: skip
    for i, name in enumerate(names):
        (lib / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(mixes[i % len(mixes)], lib / name)
    out = tmp_path / "out"
    assert _run(str(lib), str(out), tiny_checkpoint) == 0
    rows = _manifest(str(out))
    assert sorted(rows) == sorted(names) and {r["status"] for r in rows.values()} == {"ok"}
    dirs = {storage.parent(r["instrument_uri"]) for r in rows.values()}
    assert len(dirs) == len(names)  # no two sources share an output folder
    for uri in storage.list_files(str(out / "stems")):
        real = os.path.realpath(storage.local_path(uri))
        assert real.startswith(str(out / "stems") + os.sep)


def test_a_file_that_hangs_is_failed_at_its_time_limit(tmp_path, tiny_checkpoint, ray_with_faults):
    import time

    from tests.support.reliability import tone_library

    lib = tmp_path / "library"
    tone_library(str(lib), 3, seconds=2.0)  # 00/song 000.wav ... 00/song 002.wav
    out = str(tmp_path / "out")
    with ray_with_faults("item_hang:*song 001.wav"):
        start = time.monotonic()
        assert _run(str(lib), out, tiny_checkpoint, "item_timeout_s=5") == 0
        wall = time.monotonic() - start
    rows = _manifest(out)
    assert {rel: r["status"] for rel, r in rows.items()} == {
        "00/song 000.wav": "ok", "00/song 001.wav": "error", "00/song 002.wav": "ok"}  # fmt: skip
    hung = rows["00/song 001.wav"]
    assert hung["error_class"] == "ItemTimeout" and hung["error"] == (
        f"{hung['source']}: no result within 5 s (time limit per item, key item_timeout_s); "
        "its worker process was ended"
    )
    assert 5 <= hung["total_s"] < 10 and hung["instrument_uri"] is None
    assert _summary(out)["counts"]["error"] == 1
    assert storage.list_files(storage.join(out, job.RECORDS)) == []
    assert wall < 60, wall
