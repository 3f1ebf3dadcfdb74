"""Demucs models as separators: loading, fidelity to Demucs's own pipeline, and the separate job.

The model is a tiny, randomly initialised HT Demucs saved in Demucs's ``.th`` format
(tests/support/demucs.py); nothing is downloaded.
"""

from __future__ import annotations

import io
import json
import pathlib
from types import SimpleNamespace

import numpy as np
import pyarrow.parquet as pq
import pytest
import soundfile as sf
import torch

from sepcore.errors import ConfigError
from sepcore.io import storage
from sepcore.models.checkpoint import CheckpointError
from sepcore.separate import demucs as D
from sepcore.separate import separator as SP
from sepcore.separate.config import DemucsOptions, Inference, SeparationSettings
from tests.support.demucs import SOURCES, save_tiny_htdemucs, tiny_htdemucs

SR = 44100


def music(channels: int, seconds: float, rate: int = SR, seed: int = 0) -> np.ndarray:
    """Tones and noise with an offset, so the normalisation's mean matters. Shape ``(c, n)``."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * rate)) / rate
    tones = 0.3 * np.sin(2 * np.pi * 220 * t) * (1 + np.sin(2 * np.pi * 0.5 * t))
    return (tones + 0.05 * rng.standard_normal((channels, t.size)) + 0.02).astype(np.float32)


def demucs_own(model_dir: pathlib.Path, sig: str, wav: np.ndarray, **kw) -> dict[str, np.ndarray]:
    """Demucs's own pipeline on the whole signal: ``demucs.api.Separator.separate_tensor``
    (normalise, apply_model, de-normalise), the model read by Demucs's local repository."""
    from demucs.api import Separator

    sep = Separator(model=sig, repo=model_dir, shifts=0, overlap=0.25, progress=False, device="cpu", **kw)
    _, stems = sep.separate_tensor(torch.from_numpy(wav), SR)
    return {k: v.numpy() for k, v in stems.items()}


def rel_error(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.abs(a - b).max() / np.abs(b).max())


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> pathlib.Path:
    folder = tmp_path_factory.mktemp("demucs")
    save_tiny_htdemucs(str(folder / "tiny.th"))
    return folder


@pytest.mark.parametrize("block_seconds", [0.9, 2.3, 60.0])
def test_blocks_give_demucs_own_result_on_the_whole_file(model_dir, block_seconds):
    """Seams included: blocks of 0.9 s cut through the 1-s segments of the model."""
    model, meta = D.load(str(model_dir / "tiny.th"))
    x = music(2, 5.3)
    ours = D.DemucsSeparator(model).separate(x, block_seconds)
    theirs = demucs_own(model_dir, "tiny", x)
    assert tuple(ours) == tuple(meta["stems"]) == SOURCES
    for stem in SOURCES:
        assert ours[stem].shape == x.shape
        assert rel_error(ours[stem], theirs[stem]) < 1e-4, stem


def test_mono_audio_is_fed_duplicated_and_gives_mono_stems(model_dir):
    model, _ = D.load(str(model_dir / "tiny.th"))
    x = music(1, 3.0)
    ours = D.DemucsSeparator(model).separate(x, 1.0)
    theirs = demucs_own(model_dir, "tiny", np.repeat(x, 2, axis=0))
    for stem in SOURCES:
        assert ours[stem].shape == x.shape
        assert rel_error(ours[stem][0], theirs[stem].mean(axis=0)) < 1e-4
    with pytest.raises(ValueError, match="takes 2 channels or mono; the audio has 3"):
        D.DemucsSeparator(model).separate(music(3, 1.0))


def test_segment_and_overlap_are_demucs_own(model_dir):
    model, _ = D.load(str(model_dir / "tiny.th"))
    x = music(2, 3.0, seed=3)
    ours = D.DemucsSeparator(model, segment=0.5, overlap=0.5).separate(x, 1.1)
    from demucs.api import Separator

    sep = Separator(model="tiny", repo=model_dir, shifts=0, overlap=0.5, segment=0.5, progress=False)
    theirs = {k: v.numpy() for k, v in sep.separate_tensor(torch.from_numpy(x), SR)[1].items()}
    assert max(rel_error(ours[s], theirs[s]) for s in SOURCES) < 1e-4
    with pytest.raises(ConfigError, match="longer than this HT Demucs takes"):
        D.DemucsSeparator(model, segment=1.5)


def test_weights_digest_follows_the_weights_not_the_file(tmp_path, model_dir):
    a = D.load(str(model_dir / "tiny.th"))[1]["model_sha256"]
    again = save_tiny_htdemucs(str(tmp_path / "copy.th"))
    other = save_tiny_htdemucs(str(tmp_path / "other.th"), seed=1)
    assert D.load(again)[1]["model_sha256"] == a
    assert D.load(other)[1]["model_sha256"] != a
    assert D.weights_digest(tiny_htdemucs()) == a


def test_bad_references_name_themselves(tmp_path):
    bad = tmp_path / "bad.th"
    bad.write_bytes(b"not a torch file")
    with pytest.raises(CheckpointError, match="bad.th: not a Demucs model file"):
        SP.describe(str(bad))
    with pytest.raises(CheckpointError, match="missing.th: no such Demucs model file"):
        SP.describe(str(tmp_path / "missing.th"))
    with pytest.raises(CheckpointError, match="name a pretrained model"):
        SP.describe("demucs:")
    assert D.is_demucs("demucs:htdemucs") and D.is_demucs("s3://b/m/HT.TH") and not D.is_demucs("out/train")


def test_a_th_file_loads_from_s3(s3_bucket, model_dir):
    uri = storage.join(s3_bucket, "models", "tiny.th")
    storage.upload(str(model_dir / "tiny.th"), uri)
    meta = SP.describe(uri)
    assert meta["checkpoint"] == uri and meta["model_sha256"] == D.load(str(model_dir / "tiny.th"))[1]["model_sha256"]


def test_settings_of_a_demucs_model():
    meta = {"kind": "demucs", "task": "separator", "sample_rate": SR, "channels": 2, "stems": list(SOURCES),
            "segment": 1.0, "model_sha256": "ab" * 32}  # fmt: skip

    def cfg(**kw):
        return SimpleNamespace(**{"checkpoint": "m.th", "inference": Inference(), "format": "flac", "sample_rate": None,
                                  "channels": None, "stems": None, "wiener_iterations": None,
                                  "demucs": DemucsOptions(), **kw})  # fmt: skip

    every = SeparationSettings.of(cfg(), meta)
    assert every.kind == "demucs" and every.written == SOURCES and every.residual is None
    some = SeparationSettings.of(cfg(stems=["vocals", "drums"]), meta)
    assert some.written == ("drums", "vocals")
    keys = {every.key(), some.key(), SeparationSettings.of(cfg(demucs=DemucsOptions(overlap=0.5)), meta).key()}
    assert len(keys) == 3
    with pytest.raises(ConfigError, match="Wiener filter applies to mask models only"):
        SeparationSettings.of(cfg(wiener_iterations=1), meta)
    with pytest.raises(ConfigError, match="unknown stem.*'piano'"):
        SeparationSettings.of(cfg(stems=["piano"]), meta)
    with pytest.raises(ConfigError, match="longer than the model takes"):
        SeparationSettings.of(cfg(demucs=DemucsOptions(segment=2.0)), meta)


@pytest.mark.usefixtures("local_ray")
def test_the_separate_job_with_a_demucs_file(tmp_path, model_dir):
    """Manifest, one file per stem, fidelity through decode and blocks, skipping, isolation of
    a broken file, and a rerun when the weights change."""
    from ray_jobs import separate as job

    lib = tmp_path / "library"
    lib.mkdir()
    stereo = music(2, 4.1, seed=1)
    sf.write(str(lib / "stereo.wav"), stereo.T, SR, subtype="FLOAT")
    sf.write(str(lib / "mono.flac"), music(1, 2.5, rate=22050, seed=2).T, 22050)
    (lib / "broken.wav").write_bytes(b"RIFF not really")
    th = tmp_path / "models" / "tiny.th"
    th.parent.mkdir()
    th.write_bytes((model_dir / "tiny.th").read_bytes())
    out = str(tmp_path / "out")
    base = [f"library={lib}", f"output={out}", f"checkpoint={th}", "format=wav",
            "inference={pool_size: 1, block_seconds: 1.3}", "num_cpus=2"]  # fmt: skip

    def manifest() -> dict[str, dict]:
        table = pq.read_table(io.BytesIO(storage.read_bytes(storage.join(out, job.MANIFEST))))
        return {row["relative"]: row for row in table.to_pylist()}

    assert job.main(base) == 0
    rows = manifest()
    assert {k: r["status"] for k, r in rows.items()} == {"stereo.wav": "ok", "mono.flac": "ok", "broken.wav": "error"}
    assert rows["broken.wav"]["error"] and "broken.wav" in rows["broken.wav"]["error"]
    ok = rows["stereo.wav"]
    assert ok["target"] == ",".join(SOURCES) and ok["instrument_uri"] is None
    stems = {s: sf.read(storage.local_path(ok[f"{s}_uri"]), always_2d=True, dtype="float32")[0].T for s in SOURCES}
    theirs = demucs_own(model_dir, "tiny", stereo)
    for stem in SOURCES:  # the file through decode, blocks of 1.3 s and writing = Demucs's own
        assert ok[f"{stem}_uri"].endswith(f"/{stem}.wav")
        assert rel_error(stems[stem], theirs[stem]) < 1e-4, stem
    mono = rows["mono.flac"]
    assert mono["channels"] == 1 and mono["sample_rate"] == 22050
    assert sf.info(storage.local_path(mono["vocals_uri"])).channels == 1
    (lib / "broken.wav").unlink()

    assert job.main([*base, "stems=[bass, drums]"]) == 0  # other settings: redone, two stems
    rows = manifest()
    assert rows["stereo.wav"]["status"] == "ok" and "vocals_uri" not in rows["stereo.wav"]
    assert job.main([*base, "stems=[bass, drums]"]) == 0  # nothing changed: skipped
    assert {r["status"] for r in manifest().values()} == {"skipped"}
    save_tiny_htdemucs(str(th), seed=1)  # other weights, same file name: redone
    assert job.main([*base, "stems=[bass, drums]"]) == 0
    after = manifest()
    assert after["stereo.wav"]["status"] == "ok" and after["stereo.wav"]["model_id"] != ok["model_id"]
    summary = json.loads(storage.read_text(storage.join(out, "summary.json")))
    assert summary["counts"] == {"files": 2, "ok": 2, "error": 0, "skipped": 0, "not_attempted": 0}


def test_a_bag_of_models_exports_to_one_th_file_that_demucs_reads(tmp_path):
    from demucs.apply import BagOfModels
    from demucs.states import load_model

    bag = BagOfModels([tiny_htdemucs(seed=0), tiny_htdemucs(seed=1)], weights=[[1, 0, 1, 0], [0, 1, 0, 1]])
    uri = D.export(bag, str(tmp_path / "bag.th"))
    assert type(load_model(storage.local_path(uri))).__name__ == "BagOfModels"  # Demucs's own loader
    model, meta = D.load(uri)
    assert meta["model_sha256"] == D.weights_digest(bag)
    x = music(2, 2.0, seed=5)
    ours, theirs = D.DemucsSeparator(model).separate(x, 0.8), D.DemucsSeparator(bag).separate(x)
    assert all(np.array_equal(ours[s], theirs[s]) for s in SOURCES)
    first, second = (D.DemucsSeparator(tiny_htdemucs(seed=k)).separate(x) for k in (0, 1))
    np.testing.assert_allclose(ours["drums"], first["drums"], atol=1e-6)  # the bag's weights
    np.testing.assert_allclose(ours["bass"], second["bass"], atol=1e-6)
    assert not np.allclose(first["bass"], second["bass"], atol=1e-4)
