"""The prepare job end to end on a local Ray over rendered demo tracks."""

from __future__ import annotations

import json
import os
import shutil
from collections import defaultdict

import numpy as np
import pyarrow.parquet as pq
import pytest

from ray_jobs import prepare
from sepcore.config import load_config
from sepcore.io import storage
from sepcore.prepare.pairs import decode_column

pytestmark = pytest.mark.usefixtures("local_ray")  # tests/conftest.py


def _args(data: str, out, *extra: str) -> list[str]:
    return [f"sources=[{{kind: slakh, uri: '{data}'}}]", f"output={out}", *extra]


def _json(out, name: str) -> dict:
    return json.loads(storage.read_text(storage.join(storage.normalize_uri(str(out)), name)))


def _read_shards(manifest: dict) -> list[dict]:
    rows = []
    for shard in manifest["shards"]:
        table = pq.read_table(storage.local_path(shard["uri"]))
        assert table.column_names == manifest["columns"]
        assert table.num_rows == shard["rows"]
        batch = table.to_pydict()
        arrays = {k: decode_column(batch[k], manifest["shapes"][k], manifest["dtype"]) for k in manifest["shapes"]}
        for i in range(table.num_rows):
            rows.append({"track_id": batch["track_id"][i], "split": batch["split"][i], "shard": shard,
                         **{k: v[i] for k, v in arrays.items()}})  # fmt: skip
    return rows


def test_guitar_target_shards_schema_splits_and_resume(demo_data, tmp_path, capsys):
    out = tmp_path / "shards"
    args = _args(demo_data, out, "outputs=[target, irm, ibm, activations]",
                 "split={train: 0.5, validation: 0.25, test: 0.25}")  # fmt: skip
    assert prepare.main(args) == 0
    summary, manifest = _json(out, "summary.json"), _json(out, "dataset.json")
    counts = summary["counts"]
    assert counts["tracks"] == 6 and counts["failed"] == 0
    assert counts["prepared"] + counts["skipped"] == 6 and counts["skipped"] >= 1  # one song has no guitar
    assert all("no usable 'guitar' stem" in r for r in manifest["skipped"].values())
    assert len(manifest["shards"]) == counts["prepared"] == counts["shards"]
    assert manifest["shapes"] == {"mix": [1, 769, 64], "target": [1, 769, 64], "irm": [1, 769, 64],
                                  "ibm": [1, 769, 64], "activations": [8, 64]}  # fmt: skip
    assert manifest["feature"]["n_fft"] == 1536 and manifest["sample_rate"] == 22050

    rows = _read_shards(manifest)
    assert len(rows) == counts["rows"] == sum(manifest["rows_per_split"].values())
    splits_of = defaultdict(set)
    for row in rows:
        splits_of[row["track_id"]].add(row["split"])
        assert f"/shards/{row['split']}/" in row["shard"]["uri"]
        assert np.all((row["irm"] >= 0) & (row["irm"] <= 1)) and set(np.unique(row["ibm"])) <= {0, 1}
        assert np.all((row["activations"] >= 0) & (row["activations"] <= 1))
        assert np.all(np.isfinite(row["mix"].astype(np.float32)))
    assert all(len(s) == 1 for s in splits_of.values())  # no track in two splits
    listed = [t for ids in manifest["splits"].values() for t in ids]
    assert len(listed) == len(set(listed)) == counts["prepared"]
    guitar = manifest["classes"].index("guitar")
    assert max(r["activations"][guitar].max() for r in rows) > 0.5  # the guitar does play

    # A rerun skips every finished track and rewrites nothing.
    shard_files = [storage.local_path(s["uri"]) for s in manifest["shards"]]
    mtimes = [os.stat(p).st_mtime_ns for p in shard_files]
    assert prepare.main(args) == 0
    again = _json(out, "summary.json")["counts"]
    assert again["done_before"] == 6 and again["rows"] == counts["rows"]
    assert [os.stat(p).st_mtime_ns for p in shard_files] == mtimes

    # Other parameters into the same output are refused as a configuration error.
    assert prepare.main([*args, "features.n_fft=1024", "features.hop=256"]) == 2
    assert "other settings (feature.hop, feature.n_fft)" in capsys.readouterr().err


def test_augmentation_adds_remix_copies_to_train_only_and_is_recorded(demo_data, tmp_path, capsys):
    out = tmp_path / "augmented"
    args = _args(demo_data, out, "features={name: stft, n_fft: 256, hop: 128}", "chunks={frames: 16}",
                 "outputs=[target]", "split={train: 0.5, validation: 0.25, test: 0.25}",
                 "augment={remix_copies: 1, gain_db: [-6, 0], seed: 4}")  # fmt: skip
    assert prepare.main(args) == 0
    summary, manifest = _json(out, "summary.json"), _json(out, "dataset.json")
    assert manifest["augment"] == {"remix_copies": 1, "gain_db": [-6.0, 0.0], "channel_swap": 0.0,
                                   "splits": ["train"], "seed": 4, "prepare_seed": 0}  # fmt: skip
    assert manifest["columns"] == ["track_id", "split", "chunk", "copy", "mix", "target"]
    rows = []
    for shard in manifest["shards"]:
        rows += pq.read_table(storage.local_path(shard["uri"]), columns=["track_id", "split", "copy"]).to_pylist()
    per = defaultdict(lambda: defaultdict(int))
    for row in rows:
        per[(row["track_id"], row["split"])][row["copy"]] += 1
    train = [t for (t, s) in per if s == "train"]
    assert train and all(per[(t, "train")][1] == per[(t, "train")][0] > 0 for t in train)  # as long as the target
    assert all(set(c) == {0} for (t, s), c in per.items() if s != "train")  # validation and test untouched
    augmented = manifest["augmented_rows_per_split"]
    assert augmented["train"] == sum(per[(t, "train")][1] for t in train) and augmented.get("validation", 0) == 0
    assert summary["figures"]["augmented_rows_per_split"] == augmented
    # Other augmentation into the same output is refused like any other setting.
    assert prepare.main([*args[:-1], "augment={remix_copies: 2, gain_db: [-6, 0], seed: 4}"]) == 2
    assert "other settings (augment.remix_copies)" in capsys.readouterr().err


def test_corrupt_stem_skips_track_with_reason(demo_data, tmp_path):
    data = tmp_path / "data"
    shutil.copytree(storage.local_path(demo_data), data)
    bad = data / "Track00003" / "stems" / "S00.flac"
    bad.write_bytes(b"fLaC" + os.urandom(2000))
    out = tmp_path / "out"
    assert prepare.main(_args(str(data), out, "silence.enabled=true", "silence.target_ratio=0.9")) == 0
    summary = _json(out, "summary.json")
    (failure,) = summary["failed"]
    assert failure["item"] == "slakh:Track00003" and "Track00003/stems/S00.flac" in failure["error"]
    hist = summary["silence_histogram"]
    assert sum(r["tracks"] for r in hist["before"]) == summary["counts"]["prepared"]
    assert sum(r["tracks"] for r in hist["after"]) == summary["counts"]["prepared"]


def test_stream_dataset_yields_the_same_rows_lazily(demo_data, tmp_path):
    cfg = load_config(prepare.PrepareConfig, None, _args(demo_data, tmp_path / "unused", "target=piano"))
    ds = prepare.stream_dataset(cfg)
    rows = ds.take_all()
    assert not (tmp_path / "unused").exists()  # nothing written
    assert rows and {r["split"] for r in rows} <= {"train", "validation", "test"}
    mix = decode_column([r["mix"] for r in rows], [1, 769, 64], "float16")
    assert mix.shape == (len(rows), 1, 769, 64)
    # Same rows as the written shards of the same configuration, also from separate mixing and
    # feature pools (the stream runs both steps in one actor, as the job does by default).
    out = tmp_path / "written"
    assert prepare.main(_args(demo_data, out, "target=piano", "actors={fuse: false}")) == 0
    assert len(rows) == _json(out, "summary.json")["counts"]["rows"]
    written = {}
    for shard in _json(out, "dataset.json")["shards"]:
        for r in pq.read_table(storage.local_path(shard["uri"])).to_pylist():
            written[(r["track_id"], r["chunk"])] = (r["mix"], r["target"], r["activations"])
    assert {(r["track_id"], r["chunk"]): (r["mix"], r["target"], r["activations"]) for r in rows} == written


def test_random_mixes_with_levels_and_disjoint_splits(demo_data, tmp_path):
    out = tmp_path / "mix"
    args = _args(demo_data, out, "target=random_mix", "random_mix={segment_seconds: 2.0, epochs: 2, batch_mixes: 16}",
                 "split={train: 0.5, validation: 0.25, test: 0.25}")  # fmt: skip
    assert prepare.main(args) == 0
    summary, manifest = _json(out, "summary.json"), _json(out, "dataset.json")
    assert manifest["shapes"] == {"mix": [1, 769, 64], "activations": [8, 64], "levels": [8]}
    assert {s["epoch"] for s in manifest["shards"]} == {0, 1}
    rows = _read_shards(manifest)
    assert len(rows) == summary["counts"]["rows"] > 0
    for row in rows:
        levels = row["levels"].astype(np.float64)
        assert 0 < levels.sum() <= 1 + 1e-3 and np.count_nonzero(levels) <= 4
    tracks = [t for ids in manifest["splits"].values() for t in ids]
    assert len(tracks) == len(set(tracks))
    # A rerun finds every (split, epoch) done.
    assert prepare.main(args) == 0
    assert _json(out, "summary.json")["counts"]["shards"] == summary["counts"]["shards"]


def test_curated_folders_with_manual_flags(demo_data, tmp_path):
    """Seed 002's layout: class folders, mix/excluded never mixed, flag files and a CSV."""
    from sepcore.data.slakh import list_tracks

    root = tmp_path / "curated"
    for track in list_tracks(demo_data)[:3]:
        folder = root / track.track_id
        for stem in track.stems:
            cls = stem.inst_class.lower().replace(" (continued)", "")
            cls = cls if cls in ("piano", "guitar", "bass", "drums", "strings") else "other"
            (folder / cls).mkdir(parents=True, exist_ok=True)
            shutil.copy(storage.local_path(stem.audio_uri), folder / cls / f"{stem.stem_id}.flac")
        (folder / "mix").mkdir()
        shutil.copy(storage.local_path(track.mix_uri), folder / "mix" / "mix.flac")
    (root / "Track00001" / "drums_bleed").write_bytes(b"")
    csv = tmp_path / "flags.csv"
    csv.write_text("track,stem,flag\nTrack00001,bass,bad_quality\n")
    out = tmp_path / "out"
    args = [f"sources=[{{kind: stems, uri: '{root}'}}]", f"output={out}", "target=piano",
            f"qa.flags_csv={csv}", "split={train: 0.34, validation: 0.33, test: 0.33}"]  # fmt: skip
    assert prepare.main(args) == 0
    flags = _json(out, "dataset.json")["qa_flags"]["stems:Track00001"]
    assert sorted((k.split("/")[0], v) for k, v in flags.items()) == [("bass", ["bad_quality"]), ("drums", ["bleed"])]
    markers = {m["track_id"]: m for m in (json.loads(storage.read_text(u))["record"] for u in
               storage.list_files(storage.join(storage.normalize_uri(str(out)), "_done")))}  # fmt: skip
    assert sorted(e.split("/")[0] for e in markers["stems:Track00001"]["excluded"]) == ["bass", "drums"]
    assert not any(e.startswith("mix") for m in markers.values() for e in m.get("excluded", []))


def test_a_track_that_hangs_is_failed_at_its_time_limit(demo_data, tmp_path, ray_with_faults):
    import time


    out = tmp_path / "out"
    with ray_with_faults("item_hang:*Track00002"):
        start = time.monotonic()
        args = _args(demo_data, out, "features={name: stft, n_fft: 256, hop: 128}", "chunks={frames: 16}",
                     "item_timeout_s=6", "max_failed_fraction=1")  # fmt: skip
        assert prepare.main(args) == 0
        wall = time.monotonic() - start
    summary = _json(out, "summary.json")
    assert summary["failed"] == [{"item": "slakh:Track00002", "error": "slakh:Track00002: no result within 6 s "
                                  "(time limit per item, key item_timeout_s); its worker process was ended"}]  # fmt: skip
    counts = summary["counts"]
    assert counts["tracks"] == 6 and counts["prepared"] + counts["skipped"] == 5
    assert not (out / "_timeouts").exists()
    assert wall < 60, wall
