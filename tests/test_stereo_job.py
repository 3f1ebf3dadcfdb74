"""Stereo end to end on a local Ray: prepare, train and separate with a 2-channel model.

Also: a separate run whose every file fails exits 1 (issue 17).
"""

from __future__ import annotations

import json
import math
import os
import shutil

import numpy as np
import pytest
import soundfile as sf
import yaml

from ray_jobs import prepare, separate, train
from sepcore.io import storage
from sepcore.models import SMOKE_CONFIGS, checkpoint
from sepcore.separate.apply import model_channels
from sepcore.separate.apply import separate as separate_audio

pytestmark = pytest.mark.usefixtures("local_ray")  # tests/conftest.py


def _pan_track(src: str, dst: str) -> None:
    """Copy one mono Slakh-layout track as stereo: stem ``i`` of ``n`` panned to ``(i + 0.5) / n``.

    Constant-power pan (``cos``, ``sin``) and 0.7 overall, so no channel clips; the mix
    is the sum of the panned stems.
    """
    shutil.copytree(src, dst)
    with open(os.path.join(dst, "metadata.yaml")) as fh:
        meta = yaml.safe_load(fh)
    names = sorted(meta["stems"])
    mix = None
    for i, sid in enumerate(names):
        path = os.path.join(dst, "stems", f"{sid}.flac")
        mono, rate = sf.read(path, dtype="float32", always_2d=True)
        angle = 0.5 * math.pi * (i + 0.5) / len(names)
        stereo = 0.7 * mono[:, :1] * np.array([[math.cos(angle), math.sin(angle)]], np.float32)
        sf.write(path, stereo, rate, subtype="PCM_24")
        mix = stereo if mix is None else mix + stereo
    assert mix is not None
    sf.write(os.path.join(dst, "mix.flac"), np.clip(mix, -1, 1), rate, subtype="PCM_24")
    meta["channels"] = 2
    with open(os.path.join(dst, "metadata.yaml"), "w") as fh:
        yaml.safe_dump(meta, fh, sort_keys=True)


@pytest.fixture(scope="module")
def stereo_data(demo_data: str, tmp_path_factory: pytest.TempPathFactory) -> str:
    """Four songs of the demo set (rendered mono) as a real stereo set: stems panned apart."""
    root = storage.local_path(demo_data)
    out = tmp_path_factory.mktemp("stereo_data")
    names = [n for n in sorted(os.listdir(root)) if os.path.exists(os.path.join(root, n, "metadata.yaml"))]
    for name in names[:4]:
        _pan_track(os.path.join(root, name), str(out / name))
    return storage.normalize_uri(str(out))


@pytest.fixture(scope="module")
def stereo_checkpoint(stereo_data: str, tmp_path_factory: pytest.TempPathFactory) -> str:
    """A tiny hourglass trained for two steps on stereo shards of the panned set."""
    shards = tmp_path_factory.mktemp("stereo_shards")
    assert prepare.main([f"sources=[{{kind: slakh, uri: '{stereo_data}'}}]", f"output={shards}",
                         "target=guitar", "channels=2", "features={name: stft, n_fft: 256, hop: 128}",
                         "chunks={frames: 16}", "split={train: 0.5, validation: 0.5, test: 0.0}"]) == 0  # fmt: skip
    manifest = json.loads(storage.read_text(storage.join(str(shards), prepare.MANIFEST)))
    assert manifest["channels"] == 2 and manifest["shapes"]["mix"][0] == 2
    out = tmp_path_factory.mktemp("stereo_train")
    assert train.main([f"data={shards}", f"output={out}", "model.name=hourglass",
                       f"model.config={json.dumps(SMOKE_CONFIGS['hourglass'])}",
                       "optim={batch_size: 8, lr: 0.003, epochs: 1, max_steps_per_epoch: 2}",
                       "validation={sdr_tracks: 0, max_steps: 1}"]) == 0  # fmt: skip
    return str(out)


def test_a_stereo_model_separates_a_stereo_file_into_stereo_stems(stereo_data, stereo_checkpoint,
                                                                   tmp_path):  # fmt: skip
    model, meta = checkpoint.load_model(stereo_checkpoint)
    assert meta["channels"] == 2 and model_channels(model) == 2
    lib = tmp_path / "library"
    lib.mkdir()
    mix_path = os.path.join(storage.local_path(stereo_data), "Track00001", "mix.flac")
    shutil.copy(mix_path, lib / "song.flac")
    sf.write(lib / "mono.wav", sf.read(mix_path, dtype="float32")[0].mean(axis=1), 22050)
    out = tmp_path / "out"
    assert separate.main([f"library={lib}", f"output={out}", f"checkpoint={stereo_checkpoint}",
                          "inference={batch_size: 32, pool_size: 1}"]) == 0  # fmt: skip
    rows = {r["relative"]: r for r in separate.read_manifest(str(out))}
    assert {r["status"] for r in rows.values()} == {"ok"}, rows
    for name, channels in (("song.flac", 2), ("mono.wav", 1)):
        row = rows[name]
        inst_path, rest_path = (storage.local_path(row[k]) for k in ("instrument_uri", "rest_uri"))
        assert sf.info(inst_path).channels == sf.info(rest_path).channels == channels
        inst = sf.read(inst_path, dtype="float32", always_2d=True)[0]
        rest = sf.read(rest_path, dtype="float32", always_2d=True)[0]
        source = sf.read(lib / name, dtype="float32", always_2d=True)[0]
        np.testing.assert_allclose(inst + rest, source, atol=2e-5)  # 24-bit FLAC quantisation
        assert 0.0 < np.std(inst) < np.std(source)
        # the job's stems are the one apply's (the model's rate is the source's here)
        whole = separate_audio(model, source.T, 22050, 256, 128, 16)["instrument"]
        np.testing.assert_allclose(inst.T, whole, atol=1e-4)


def test_a_run_whose_every_file_fails_exits_1(stereo_checkpoint, tmp_path, capsys):
    lib = tmp_path / "library"
    lib.mkdir()
    (lib / "corrupt.flac").write_bytes(b"fLaC" + b"\0" * 100)
    out = tmp_path / "out"
    assert separate.main([f"library={lib}", f"output={out}", f"checkpoint={stereo_checkpoint}",
                          "inference={pool_size: 1}"]) == 1  # fmt: skip
    err = capsys.readouterr().err
    assert "every file failed (1 of 1 separated)" in err and "corrupt.flac" in err
    rows = separate.read_manifest(str(out))  # the manifest is still written
    assert [r["status"] for r in rows] == ["error"]
    summary = json.loads(storage.read_text(storage.join(str(out), "summary.json")))
    assert summary["status"] == "failed" and summary["counts"]["error"] == 1
