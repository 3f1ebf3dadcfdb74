"""The classify job on a local Ray: feature actors, LightGBMTrainer, scoring, outputs, resume."""

from __future__ import annotations

import json
import math
import os
import shutil

import numpy as np
import pytest

from ray_jobs import classify
from sepcore.classify import classifier as M
from sepcore.classify import report as CR
from sepcore.data.classes import CLASSES
from sepcore.io import storage
from sepcore.io.audio import read_audio
from sepcore.io.ledger import Ledger
from sepcore.models import build_model
from sepcore.models import checkpoint as ckpt

pytestmark = pytest.mark.usefixtures("local_ray")  # tests/conftest.py


def _pixels(png: bytes) -> np.ndarray:
    import io

    import matplotlib.image

    return matplotlib.image.imread(io.BytesIO(png), format="png")


@pytest.fixture(scope="module")
def data(demo_data, tmp_path_factory) -> str:
    """The 6 demo songs in Slakh's split folders (4 / 1 / 1) plus a train track whose
    stem is corrupt."""
    src = storage.local_path(demo_data)
    root = tmp_path_factory.mktemp("slakh")
    names = sorted(p for p in os.listdir(src) if p.startswith("Track"))
    layout = ["train"] * 4 + ["validation", "test"]
    for name, split in zip(names, layout, strict=True):
        shutil.copytree(f"{src}/{name}", root / split / name)
    bad = root / "train" / "Track00099"
    shutil.copytree(f"{src}/{names[0]}", bad)
    (bad / "stems" / "S01.flac").write_bytes(b"\x00" * 100)
    return storage.normalize_uri(str(root))


@pytest.fixture(scope="module")
def cnn(tmp_path_factory) -> str:
    """A tiny untrained activation-CNN checkpoint (16 mel bands, 8 frames)."""
    config = {"n_bins": 16, "n_classes": len(CLASSES), "frames": 8, "filters": [2, 2, 2], "dropout": 0.1}
    feature = {"name": "logmel", "sample_rate": 22050, "n_fft": 512, "hop": 256, "n_mels": 16,
               "fmin": 27.5, "fmax": 11025.0}  # fmt: skip
    meta = {"model": {"name": "activation_cnn", "config": config}, "task": "activation", "classes": list(CLASSES),
            "sample_rate": 22050, "channels": 1, "feature": feature, "frames": 8}  # fmt: skip
    folder = str(tmp_path_factory.mktemp("cnn") / "best")
    ckpt.save(folder, build_model("activation_cnn", **config), meta)
    return folder


def _args(data: str, out, *extra: str) -> list[str]:
    return [f"data={data}", f"output={out}", "num_cpus=2", "lightgbm.num_boost_round=60",
            "lightgbm.min_data_in_leaf=5", "actors.cpus=0.5", *extra]  # fmt: skip


def test_classify_job_end_to_end_with_a_bad_track_and_resume(data, cnn, tmp_path):
    out = tmp_path / "classify"
    # Too many failures for this run (1 of 7 > 0): featurizes, records the failure, exits 1.
    assert classify.main(_args(data, out, f"activation_checkpoint={cnn}", "max_failed_fraction=0")) == 1
    first = json.loads((out / "summary.json").read_text())
    assert first["status"] == "failed" and first["counts"]["tracks"] == 7
    (failure,) = first["failed"]
    assert failure["item"] == "slakh:Track00099" and "Track00099/stems/S01.flac" in failure["error"]
    assert not (out / "model").exists()

    # Started again: the six good tracks are not featurized again; LightGBM trains
    # data-parallel on two Ray Train workers.
    scaling = "scaling={num_workers: 2, cpus_per_worker: 0.5}"
    assert classify.main(_args(data, out, f"activation_checkpoint={cnn}", scaling)) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["status"] == "ok" and summary["counts"]["done_before"] == 6
    assert [f["item"] for f in summary["failed"]] == ["slakh:Track00099"]
    assert summary["figures"]["tracks_per_split"] == {"train": 4, "validation": 1, "test": 1}
    snippet_files = storage.list_files(summary["snippets"])
    assert sum(u.endswith(".parquet") for u in snippet_files) == 6
    assert not any(storage.is_temporary(u) for u in storage.list_files(storage.normalize_uri(str(out))))

    metrics = json.loads((out / CR.METRICS).read_text())
    tracks = metrics["tracks"]
    assert not set(tracks["train"]) & (set(tracks["validation"]) | set(tracks["test"]))
    assert metrics["snippets"]["train"] == summary["counts"]["snippets_train"] > 30
    for split in ("validation", "test"):
        for c in metrics["classes"]:
            auc, cnn_auc = metrics["auc"][split][c], metrics["activation_cnn"]["auc"][split][c]
            both = 0 < metrics["positives"][split][c] < metrics["snippets"][split]
            assert (auc is not None) == both and (cnn_auc is not None) == both
            assert auc is None or 0 <= auc <= 1
    assert metrics["seed000_auc_slakh"]["drums"] == 0.96 and metrics["training"]["workers"] == 2
    # The plots' content is checked in test_classify.py; here: the importance plot is the
    # saved model's, and the ROC plot has a panel per split (5.2 x 4.8 inches at 110 dpi).
    saved = {c: (out / CR.MODEL_DIR / f"{c}.txt").read_text() for c in metrics["classes"]}
    spec = M.Classifier.load(str(out / CR.MODEL_DIR)).spec
    importance = _pixels((out / CR.IMPORTANCE_PNG).read_bytes())
    assert np.abs(importance - _pixels(CR.importance_png(saved, spec))).mean() < 1e-3
    assert _pixels((out / CR.ROC_PNG).read_bytes()).shape[:2] == (round(4.8 * 110), round(2 * 5.2 * 110))
    html = (out / CR.REPORT).read_text()
    assert "activation CNN test" in html and "seed 000" in html and CR.ROC_PNG in html

    # The model folder labels every second of a song.
    mix = read_audio(storage.join(data, "test", "Track00006", "mix.flac"))
    pred = M.predict(str(out / CR.MODEL_DIR), mix)
    assert len(pred.starts_s) == math.ceil(mix.duration) and pred.classes == metrics["classes"]
    assert np.isfinite(pred.probabilities).all()


def test_a_track_that_hangs_is_failed_at_its_time_limit(data, tmp_path, ray_with_faults):
    import time


    out = tmp_path / "classify"
    with ray_with_faults("item_hang:*Track00002"):
        start = time.monotonic()
        # max_failed_fraction=0: the job ends after featurizing (exit 1), no training.
        assert classify.main(_args(data, out, "item_timeout_s=6", "max_failed_fraction=0")) == 1
        wall = time.monotonic() - start
    summary = json.loads((out / "summary.json").read_text())
    failed = {f["item"]: f["error"] for f in summary["failed"]}
    assert sorted(failed) == ["slakh:Track00002", "slakh:Track00099"]  # hung; a corrupt stem
    assert failed["slakh:Track00002"] == ("slakh:Track00002: no result within 6 s (time limit per item, "
                                          "key item_timeout_s); its worker process was ended")  # fmt: skip
    (folder,) = (out / "snippets").iterdir()
    markers = Ledger(str(folder)).records()
    assert len(markers) == 5 and "slakh:Track00002" not in markers  # the others are done
    assert not (out / "_timeouts").exists()
    assert wall < 60, wall
