"""The evaluate job on a local Ray: separator and activation checkpoints on demo tracks."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import ray
import torch

from ray_jobs import evaluate
from sepcore.data.classes import CLASSES
from sepcore.evaluate import document as D
from sepcore.io import storage
from sepcore.io.audio import read_audio
from sepcore.io.ledger import record_name
from sepcore.models import SMOKE_CONFIGS
from sepcore.models import checkpoint as ckpt
from sepcore.report import html as R

SR = 22050


pytestmark = pytest.mark.usefixtures("local_ray")  # tests/conftest.py


def _pixels(png: bytes) -> np.ndarray:
    import io

    import matplotlib.image

    return matplotlib.image.imread(io.BytesIO(png), format="png")


def _save(folder, name: str, config: dict, meta: dict) -> str:
    torch.manual_seed(0)
    model_meta = {"name": name, "config": config, "log_input": name == "hourglass"}
    model = ckpt.build(model_meta).eval()
    history = [
        {"epoch": e, "train_loss": 1.0 / (e + 1), "val_loss": 1.2 / (e + 1)} for e in range(3)
    ]
    full = {"model": model_meta, "classes": list(CLASSES),
            "sample_rate": SR, "channels": 1, "frames": 16, "metrics": {}, "history": history, **meta}  # fmt: skip
    ckpt.save(str(folder / "best"), model, full, epoch=2)
    return str(folder)


@pytest.fixture(scope="module")
def separator(tmp_path_factory) -> str:
    """An (untrained) small hourglass guitar separator with STFT 256/128, 16 frames."""
    meta = {
        "task": "separator",
        "target": "guitar",
        "feature": {"name": "stft", "n_fft": 256, "hop": 128},
    }
    return _save(tmp_path_factory.mktemp("sep_ckpt"), "hourglass", SMOKE_CONFIGS["hourglass"], meta)


@pytest.fixture(scope="module")
def data_with_a_broken_track(demo_data, tmp_path_factory) -> str:
    """Three demo tracks; the third has a stem that is not audio."""
    root = tmp_path_factory.mktemp("data")
    src = storage.local_path(demo_data)
    for name in ("Track00001", "Track00003", "Track00004"):
        shutil.copytree(f"{src}/{name}", root / name)
    stem = sorted((root / "Track00004" / "stems").glob("*.flac"))[0]
    stem.write_bytes(b"not a flac file")
    return str(root)


def test_separator_evaluation_writes_metrics_and_a_complete_report(
    separator, data_with_a_broken_track, tmp_path
):
    out = tmp_path / "eval"
    args = [f"data={data_with_a_broken_track}", f"checkpoint={separator}", f"output={out}", "split=all",
            "classes=[bass]", "segment_seconds=6", "backend=fast", "report={examples: 1, audio_seconds: 4}"]  # fmt: skip
    assert evaluate.main(args) == 0

    doc = json.loads((out / "metrics.json").read_text())
    D.validate_metrics(doc)
    assert (
        doc["task"] == "separator"
        and doc["target"] == "guitar"
        and doc["evaluation"]["backend"] == "fast"
    )
    guitar, bass = doc["separation"]["guitar"], doc["separation"]["bass"]
    assert guitar["methods"] == ["model", "irm", "ibm", "mixture"] and bass["methods"] == [
        "irm",
        "ibm",
        "mixture",
    ]
    assert [t["track_id"] for t in guitar["tracks"]] == ["slakh:Track00001", "slakh:Track00003"]
    assert [t["track_id"] for t in bass["tracks"]] == ["slakh:Track00001"]  # Track00003 has no bass
    assert "slakh:Track00003/bass" in doc["skipped"]
    med = guitar["median"]
    for src in D.SOURCES:
        assert (
            med["irm"][src]["sdr"] > med["mixture"][src]["sdr"] and med["model"][src]["count"] == 2
        )
    # The broken stem fails its track, named by its file; the others go on.
    (failed,) = doc["failed"]
    assert (
        failed["item"] == "slakh:Track00004"
        and "stems/" in failed["error"]
        and ".flac" in failed["error"]
    )
    assert doc["tracks_evaluated"] == 2 and doc["timing"]["eval_seconds_per_audio_minute"] > 0

    page = str(out / R.REPORT_FILE)
    assert R.missing_files(page) == []
    html = (out / R.REPORT_FILE).read_text()
    refs = R.referenced_files(html)
    for name in ("box_sdr_instrument.png", "loss_curve.png", "slakh_Track00001_spectrograms.png",
                 "slakh_Track00001_mixture.flac", "slakh_Track00001_model_guitar.flac"):  # fmt: skip
        assert f"{R.ASSETS}/{name}" in refs
    clip = read_audio(str(out / R.ASSETS / "slakh_Track00001_reference_guitar.flac"))
    assert clip.sample_rate == SR and clip.num_samples == 4 * SR and np.abs(clip.samples).max() > 0
    assert "model: guitar" in html and "mixture: rest" in html and "Track00004" in html

    summary = json.loads((out / "summary.json").read_text())
    assert summary["status"] == "ok" and summary["counts"] == {
        "tracks": 3,
        "evaluated": 2,
        "failed": 1,
        "skipped": 1,
    }
    assert summary["figures"]["guitar/irm/instrument"].count("/") == 2
    assert summary["nodes"] == [ray.get_runtime_context().get_node_id()]  # where the tasks ran
    assert "_node" not in (out / "metrics.json").read_text()

    # Started again, the same evaluation reuses the tracks already done (and retries the failed).
    done = out / evaluate.DONE_FOLDER / record_name("slakh:Track00001")
    record = json.loads(done.read_text())
    record["record"]["seconds"] = 99.0  # a mark that only a reused result carries
    done.write_text(json.dumps(record))
    assert not (out / evaluate.DONE_FOLDER / record_name("slakh:Track00004")).exists()
    assert evaluate.main(args) == 0
    again = json.loads((out / "metrics.json").read_text())
    assert again["separation"]["guitar"]["tracks"][0]["seconds"] == 99.0
    assert again["separation"]["guitar"]["median"] == guitar["median"] and len(again["failed"]) == 1


def test_activation_evaluation_writes_matrices_and_plots(demo_data, tmp_path):
    feature = {
        "name": "logmel",
        "n_fft": 512,
        "hop": 256,
        "n_mels": 32,
        "fmin": 27.5,
        "fmax": 11025.0,
    }
    config = {
        "n_bins": 32,
        "n_classes": len(CLASSES),
        "frames": 16,
        "filters": [4, 4, 8],
        "dropout": 0.1,
    }
    folder = _save(tmp_path / "act", "activation_cnn", config,
                   {"task": "activation", "target": "random_mix", "feature": feature})  # fmt: skip
    out = tmp_path / "eval_act"
    args = [f"data={demo_data}", f"checkpoint={folder}", f"output={out}", "split=all", "tracks=2",
            "activation={sequence_seconds: 2, plots: 1}"]  # fmt: skip
    assert evaluate.main(args) == 0
    doc = json.loads((out / "metrics.json").read_text())
    D.validate_metrics(doc)
    act = doc["activation"]
    assert doc["separation"] is None and len(act["tracks"]) == 2
    played = [p["class"] for p in act["sequence"]]
    assert {"piano", "guitar", "drums"} <= set(played)
    noise, leakage = (
        np.array(act["noise_matrix_db"], dtype=float),
        np.array(act["leakage_matrix_db"], dtype=float),
    )
    assert noise.shape == leakage.shape == (len(CLASSES), len(CLASSES))
    for k, cls in enumerate(
        CLASSES
    ):  # rows of noise and columns of leakage exist for classes played
        assert np.isfinite(noise[k]).all() == (cls in played)
        assert np.isnan(leakage[k, k])
    finite = np.concatenate([noise[np.isfinite(noise)], leakage[np.isfinite(leakage)]])
    assert ((finite >= -60) & (finite <= 0)).all()
    assert R.missing_files(str(out / R.REPORT_FILE)) == []
    # The plots' content is checked in test_evaluation.py; here: the heat maps show the
    # matrices of metrics.json, and the activation plots have a row per class.
    shown = {name: _pixels((out / R.ASSETS / name).read_bytes()) for name in
             ("noise_matrix.png", "leakage_matrix.png", "sequence_activations.png",
              "slakh_Track00001_activations.png")}  # fmt: skip
    playing, predicted = "instrument playing", "instrument predicted"
    for name, matrix, title, labels in (("noise_matrix.png", noise, "noise matrix (dB)", (predicted, playing)),
                                        ("leakage_matrix.png", leakage, "leakage matrix (dB)", (playing, predicted))):  # fmt: skip
        drawn = _pixels(R.matrix_png(matrix, CLASSES, CLASSES, title, *labels))
        assert shown[name].shape == drawn.shape and np.abs(shown[name] - drawn).mean() < 1e-3, name
    for name in ("sequence_activations.png", "slakh_Track00001_activations.png"):
        assert shown[name].shape[:2] == (round((0.9 * len(CLASSES) + 1.0) * 100), 1000)


def test_bad_checkpoint_and_config_are_clear_errors(separator, demo_data, tmp_path, capsys):
    assert (
        evaluate.main(
            [f"data={demo_data}", f"checkpoint={tmp_path / 'none'}", f"output={tmp_path / 'o'}"]
        )
        == 1
    )
    assert "none" in capsys.readouterr().err
    out = f"output={tmp_path / 'o'}"
    assert evaluate.main([f"data={demo_data}", f"checkpoint={separator}", out, "target=piano"]) == 2
    assert "separates 'guitar', not 'piano'" in capsys.readouterr().err
    assert (
        evaluate.main([f"data={demo_data}", f"checkpoint={separator}", out, "classes=[kazoo]"]) == 2
    )
    assert "unknown class 'kazoo'" in capsys.readouterr().err


def test_a_track_that_hangs_is_cancelled_at_its_time_limit(
    separator, data_with_a_broken_track, tmp_path, ray_with_faults
):
    import time

    with ray_with_faults("item_hang:*Track00003"):
        out = tmp_path / "eval"
        args = [f"data={data_with_a_broken_track}", f"checkpoint={separator}", f"output={out}", "split=all",
                "backend=fast", "report={examples: 0}", "item_timeout_s=8", "max_failed_fraction=1"]  # fmt: skip
        start = time.monotonic()
        assert evaluate.main(args) == 0
        wall = time.monotonic() - start
    doc = json.loads((out / "metrics.json").read_text())
    assert [t["track_id"] for t in doc["separation"]["guitar"]["tracks"]] == ["slakh:Track00001"]
    failed = {f["item"]: f["error"] for f in doc["failed"]}
    assert sorted(failed) == ["slakh:Track00003", "slakh:Track00004"]
    assert failed["slakh:Track00003"] == (
        "slakh:Track00003: no result within 8 s (time limit per item, key item_timeout_s); "
        "the task was cancelled"
    )
    assert wall < 60, wall
