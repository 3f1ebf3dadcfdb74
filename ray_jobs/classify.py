"""classify: LightGBM instrument presence on 1-second snippets of the mix (seed 000), on Ray.

    sep classify -c configs/classify_demo.yaml
    sep classify -c configs/classify_demo.yaml activation_checkpoint=out/demo/train_activation

1. **Snippets and features.** Each track of ``data`` (a Slakh-layout set) is one row
   of a Ray Dataset; a pool of *feature actors* loads its stems and mix, cuts 1-second
   windows, labels each class from its stems (RMS relative to the mix) and computes
   the window features from the mix alone (:mod:`sepcore.classify.snippets`). With
   ``activation_checkpoint`` the actor also runs that activation CNN over the mix and
   pools its frame activations to the same windows. One Parquet file per track goes
   to ``<output>/snippets/<digest>/``, written atomically, so a rerun computes only
   the missing tracks (the digest names the snippet, label and feature parameters).
2. **Splits** are track-level, assigned by :func:`sepcore.prepare.mixing.assign_splits` as
   prepare does (a dataset's own split wins): no track is in two splits.
3. **Training**: Ray Train's ``LightGBMTrainer`` trains one binary booster per class on
   the train split, with early stopping on the validation split's log loss; with
   ``scaling.num_workers`` > 1 LightGBM runs data-parallel over the workers.
4. **Scoring**: a predictor actor on Ray Data scores the validation and test snippets;
   only scores and labels reach the driver, which computes the ROC curves.

Outputs at ``output``: ``model/`` (``<class>.txt`` boosters and ``classifier.json``,
for :func:`sepcore.classify.snippets.predict`), ``metrics.json``, ``roc.png``,
``importance.png``, ``report.html``, ``snippets/``, ``runs/`` (Ray Train), and
``summary.json`` last.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import pickle
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Literal

import numpy as np
from pydantic import Field, field_validator, model_validator

from ray_jobs.common import TIMEOUTS, ItemWatchdog, Job, JobConfig, timeout_ledger
from ray_jobs.prepare import SplitConfig
from sepcore.classify import snippets as K
from sepcore.config import Config
from sepcore.data.classes import CLASSES
from sepcore.data.sources import SourceTrack, slakh_tracks
from sepcore.errors import ConfigError, SepError
from sepcore.io import storage
from sepcore.models import checkpoint as ckpt
from sepcore.prepare.pairs import shard_name
from sepcore.report import html as R

log = logging.getLogger("sep.classify")

MODEL_DIR = "model"
METRICS = "metrics.json"
ROC_PNG = "roc.png"
IMPORTANCE_PNG = "importance.png"
REPORT = "report.html"
SPLITS = ("train", "validation", "test")


class SnippetConfig(Config):
    window_s: float = Field(1.0, gt=0, description="snippet length in seconds")
    hop_s: float = Field(1.0, gt=0, description="seconds between snippet starts")


class LabelConfig(Config):
    threshold_db: float = Field(
        -20.0, le=0, description="a class plays when its stems' RMS in the snippet is at least this many dB re the mix's"
    )
    floor_dbfs: float = Field(-60.0, le=0, description="... and above this absolute level")


class FeatureConfig(Config):
    sample_rate: int = Field(22050, ge=8000, le=192000)
    n_fft: int = Field(2048, ge=64)
    hop: int = Field(512, ge=16)
    n_mels: int = Field(64, ge=8, description="log-mel bands summarised per snippet")
    fmin: float = Field(27.5, ge=0)
    fmax: float = Field(11025.0, gt=0, description="clipped to the Nyquist frequency")
    ber_split_hz: float = Field(2000.0, gt=0, description="band energy ratio: low band below this")
    rolloff: float = Field(0.85, gt=0, lt=1, description="spectral roll-off share")


class LightGBMConf(Config):
    num_boost_round: int = Field(300, ge=1)
    early_stopping_rounds: int = Field(30, ge=0, description="stop after this many rounds without a better validation log loss; 0 = off")
    learning_rate: float = Field(0.05, gt=0)
    num_leaves: int = Field(15, ge=2)
    min_data_in_leaf: int = Field(20, ge=1)
    feature_fraction: float = Field(0.8, gt=0, le=1)
    bagging_fraction: float = Field(0.8, gt=0, le=1)
    lambda_l2: float = Field(1.0, ge=0)
    params: dict[str, Any] = Field(default_factory=dict, description="any other LightGBM parameters")

    def lgb_params(self, seed: int, threads: int) -> dict[str, Any]:
        named = self.model_dump(exclude={"num_boost_round", "early_stopping_rounds", "params"})
        return K.lgb_params({**named, "seed": seed, **self.params}, threads)


class ScalingConf(Config):
    num_workers: int = Field(1, ge=1, description="LightGBM workers (data-parallel above 1)")
    cpus_per_worker: float = Field(1.0, gt=0, description="CPUs per worker (also LightGBM threads)")


class ActorsConf(Config):
    feature: int = Field(2, ge=1, description="most feature actors (one track per call)")
    cpus: float = Field(1.0, gt=0, description="CPUs reserved per feature actor")


class ClassifyConfig(JobConfig):
    data: str = Field(description="URI of a Slakh-layout dataset (stems give the labels)")
    classes: list[str] = Field(list(K.DEFAULT_CLASSES), description="classes to detect (seed 000's five)")
    snippets: SnippetConfig = Field(default_factory=SnippetConfig)
    labels: LabelConfig = Field(default_factory=LabelConfig)
    features: FeatureConfig = Field(default_factory=FeatureConfig)
    split: SplitConfig = Field(default_factory=SplitConfig)
    seed: int = Field(0, description="split assignment and LightGBM")
    lightgbm: LightGBMConf = Field(default_factory=LightGBMConf)
    scaling: ScalingConf = Field(default_factory=ScalingConf)
    actors: ActorsConf = Field(default_factory=ActorsConf)
    activation_checkpoint: str | None = Field(
        None, description="activation CNN (sep train output) compared on the same snippets; null = off"
    )
    activation_pool: Literal["mean", "max"] = Field("mean", description="pooling of CNN frames to snippets")
    max_failed_fraction: float = Field(0.5, ge=0, le=1, description="fail the job above this share of tracks")
    item_timeout_s: float = Field(
        3600.0, gt=0, description="time limit of one track in a feature actor, from its start: then the "
        "actor's process is ended and the track recorded as failed (an hour of audio takes minutes)",
    )

    @field_validator("classes")
    @classmethod
    def _classes(cls, value: list[str]) -> list[str]:
        unknown = sorted(set(value) - set(CLASSES))
        if unknown or not value:
            raise ValueError(f"classes must be a non-empty subset of {CLASSES}, got {value}")
        if len(set(value)) != len(value):
            raise ValueError(f"classes given twice: {value}")
        return value

    @model_validator(mode="after")
    def _check(self) -> ClassifyConfig:
        if abs(self.split.train + self.split.validation + self.split.test - 1) > 1e-6:
            raise ValueError("split fractions must sum to 1")
        to_spec(self)  # bad feature parameters fail here, before Ray starts
        return self


def to_spec(cfg: ClassifyConfig) -> K.SnippetSpec:
    f = cfg.features
    return K.SnippetSpec(
        sample_rate=f.sample_rate, window_s=cfg.snippets.window_s, hop_s=cfg.snippets.hop_s,
        threshold_db=cfg.labels.threshold_db, floor_dbfs=cfg.labels.floor_dbfs, n_fft=f.n_fft,
        hop=f.hop, n_mels=f.n_mels, fmin=f.fmin, fmax=f.fmax, ber_split_hz=f.ber_split_hz,
        rolloff=f.rolloff,
    )  # fmt: skip


# ---------------------------------------------------------------- feature actors


class SnippetActor:
    """Feature actor: one track row -> its snippet file, and one result row."""

    def __init__(self, spec: K.SnippetSpec, folder: str, cnn_dir: str | None, pool: str, limit_s: float,
                 ledger: str):  # fmt: skip
        import torch

        torch.set_num_threads(1)
        self.spec, self.folder, self.pool = spec, folder, pool
        self.names = spec.feature_names()
        self.cnn = ckpt.load_model(cnn_dir) if cnn_dir else None
        self.watchdog = ItemWatchdog(limit_s, "item_timeout_s", ledger)

    def __call__(self, row: dict[str, Any]) -> dict[str, Any]:
        track: SourceTrack = pickle.loads(row["track"])
        out = {"track_id": track.track_id, "status": "ok", "reason": ""}
        try:
            timed_out = self.watchdog.recorded(track.track_id)
            if timed_out is not None:  # this call is Ray's retry after the time limit ended the actor
                return {**out, "status": "error", "reason": timed_out}
            with self.watchdog.running(track.track_id):
                marker = self._track(track)
            storage.write_text(storage.join(self.folder, shard_name(track.track_id) + ".json"), json.dumps(marker))
        except SepError as exc:
            return {**out, "status": "error", "reason": str(exc)}
        except Exception as exc:  # a bug on one track must not stop the others
            return {**out, "status": "error", "reason": f"{track.uri}: {type(exc).__name__}: {exc}"}
        return {**out, "status": marker["status"], "reason": marker["reason"], "marker": json.dumps(marker)}

    def _track(self, track: SourceTrack) -> dict[str, Any]:
        """Snippet file of one track (when it has snippets) and its done-marker."""
        snippets, mix = K.track_snippets(track, self.spec)
        n = len(snippets.starts_s)
        marker = {"track_id": track.track_id, "status": "ok", "reason": "", "snippets": n,
                  "seconds": round(mix.shape[-1] / self.spec.sample_rate, 3),
                  "positives": {c: int(snippets.labels[:, i].sum()) for i, c in enumerate(CLASSES)}}  # fmt: skip
        if not n:
            return {**marker, "status": "skipped", "reason": f"shorter than one snippet ({self.spec.window_s} s)"}
        if self.cnn is not None:
            self._add_cnn(snippets, mix)
        marker["shard"] = storage.join(self.folder, shard_name(track.track_id) + ".parquet")
        storage.write_bytes(marker["shard"], snippets.to_parquet(self.names))
        return marker

    def _add_cnn(self, snippets: K.TrackSnippets, mix: np.ndarray) -> None:
        assert self.cnn is not None
        model, meta = self.cnn
        scores = K.activation_window_scores(model, meta, mix, self.spec.sample_rate, snippets.starts_s,
                                            self.spec.window_s, CLASSES, self.pool)  # type: ignore[arg-type]  # fmt: skip
        snippets.extra.update({f"cnn_{c}": scores[:, i] for i, c in enumerate(CLASSES)})


def _featurize(cfg: ClassifyConfig, spec: K.SnippetSpec, tracks: list[SourceTrack], folder: str,
               cnn_dir: str | None) -> list[dict[str, str]]:  # fmt: skip
    """Run the feature actors over ``tracks``; returns the failed ones (a rerun retries them)."""
    import ray

    errors: list[dict[str, str]] = []
    if not tracks:
        return errors
    items = [{"track": pickle.dumps(t)} for t in tracks]
    output = storage.normalize_uri(cfg.output)
    args = (spec, folder, cnn_dir, cfg.activation_pool, cfg.item_timeout_s, timeout_ledger(output))
    ds = ray.data.from_items(items, override_num_blocks=len(items))
    ds = ds.map(SnippetActor, fn_constructor_args=args,
                compute=ray.data.ActorPoolStrategy(min_size=1, max_size=cfg.actors.feature),
                num_cpus=cfg.actors.cpus)  # fmt: skip
    for i, row in enumerate(ds.iter_rows()):
        state = row["reason"] if row["status"] != "ok" else f"{json.loads(row['marker'])['snippets']} snippets"
        log.info("classify [%d/%d] %s: %s", i + 1, len(tracks), row["track_id"], state)
        if row["status"] == "error":
            errors.append({"item": row["track_id"], "error": row["reason"]})
    storage.delete(storage.join(output, TIMEOUTS), recursive=True)
    return errors


def read_markers(folder: str) -> dict[str, dict[str, Any]]:
    """Done-markers of the snippet folder by track id (tracks featurized or skipped before)."""
    uris = storage.list_files(folder, suffix=".json")
    with ThreadPoolExecutor(max_workers=16) as pool:
        markers = [json.loads(t) for t in pool.map(storage.read_text, uris)]
    return {m["track_id"]: m for m in markers}


def snippet_folder(output: str, spec: K.SnippetSpec, cnn_dir: str | None, pool: str) -> str:
    """``<output>/snippets/<digest>``: one folder per snippet/label/feature/CNN setting."""
    key = {"spec": spec.digest(), "cnn": None}
    if cnn_dir:
        key["cnn"] = f"{ckpt.read_meta(cnn_dir).get('model_sha256')}:{pool}"
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:12]
    return storage.join(output, "snippets", digest)


# ---------------------------------------------------------------- datasets


def _parquet(uris: list[str]):
    import ray

    if storage.is_local(uris[0]):
        return ray.data.read_parquet([storage.local_path(u) for u in uris])
    import pyarrow.fs as pafs

    fs, _ = storage.filesystem(uris[0])
    return ray.data.read_parquet([u[len("s3://"):] for u in uris],
                                 filesystem=pafs.PyFileSystem(pafs.FSSpecHandler(fs)))  # fmt: skip


# ---------------------------------------------------------------- training (Ray Train)


def _shard_arrays(name: str, features: list[str], classes: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """Features and labels of this worker's shard, in (track, start) order: Ray Data's
    reading order varies between runs, LightGBM's result depends on the row order."""
    import ray.train

    xs, ys, keys = [], [], []
    for b in ray.train.get_dataset_shard(name).iter_batches(batch_size=4096, batch_format="numpy"):
        xs.append(np.stack([b[n] for n in features], axis=1).astype(np.float32))
        ys.append(np.stack([b[f"label_{c}"] for c in classes], axis=1))
        keys += list(zip(b["track_id"].tolist(), b["start_s"].tolist(), strict=True))
    if not xs:
        return np.zeros((0, len(features)), np.float32), np.zeros((0, len(classes)), np.uint8)
    order = sorted(range(len(keys)), key=keys.__getitem__)
    return np.concatenate(xs)[order], np.concatenate(ys)[order]


def train_loop(config: dict[str, Any]) -> None:
    """Runs on every LightGBMTrainer worker: one booster per class, rank 0 reports them."""
    import ray.train
    from ray.train.lightgbm import get_network_params

    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    names, classes = config["features"], config["classes"]
    x, y = _shard_arrays("train", names, classes)
    xv, yv = _shard_arrays("validation", names, classes)  # the whole validation split on every worker
    network = get_network_params() if world > 1 else None
    with K.lgb_network(**network) if network else contextlib.nullcontext({}) as parallel:
        params = {**config["params"], **parallel}
        info = _fit_classes(x, y, xv, yv, params, config, rank, world)
    metrics = {"classes": len(info["classes"])}
    if rank != 0:
        ray.train.report(metrics)
        return
    with tempfile.TemporaryDirectory() as folder:
        ray.train.report(metrics, checkpoint=_checkpoint(info, folder))


def _fit_classes(x, y, xv, yv, params: dict[str, Any], config: dict[str, Any], rank: int, world: int) -> dict:
    """One booster per class; returns the model texts and training facts."""
    texts, facts = {}, {}
    for i, c in enumerate(config["classes"]):
        t0 = time.monotonic()
        booster = K.train_binary(x, y[:, i], params, config["rounds"], xv, yv[:, i], config["early_stopping"],
                                 config["features"], check=world == 1)  # fmt: skip
        texts[c] = booster.model_to_string()
        facts[c] = {"iterations": booster.current_iteration(), "seconds": round(time.monotonic() - t0, 2)}
        log.info("classify: worker %d trained %s (%d iterations)", rank, c, facts[c]["iterations"])
    return {"texts": texts, "classes": facts, "workers": world, "train_rows_rank0": len(x)}


def _checkpoint(info: dict[str, Any], folder: str):
    import ray.train

    for c, text in info["texts"].items():
        with open(f"{folder}/{c}.txt", "w") as fh:
            fh.write(text)
    with open(f"{folder}/training.json", "w") as fh:
        json.dump({k: v for k, v in info.items() if k != "texts"}, fh)
    return ray.train.Checkpoint.from_directory(folder)


def _train(cfg: ClassifyConfig, datasets: dict[str, Any], names: list[str], classes: list[str],
           output: str) -> tuple[dict[str, str], dict[str, Any]]:  # fmt: skip
    """LightGBMTrainer over ``classes``; returns (model text per class, training info)."""
    import ray.train
    from ray.train.lightgbm import LightGBMTrainer

    from ray_jobs.train import storage_args

    s = cfg.scaling
    threads = max(1, round(s.cpus_per_worker))
    loop_config = {
        "features": names, "classes": classes, "params": cfg.lightgbm.lgb_params(cfg.seed, threads),
        "rounds": cfg.lightgbm.num_boost_round, "early_stopping": cfg.lightgbm.early_stopping_rounds,
    }  # fmt: skip
    trainer = LightGBMTrainer(
        train_loop, train_loop_config=loop_config, datasets=datasets,
        dataset_config=ray.train.DataConfig(datasets_to_split=["train"]),
        scaling_config=ray.train.ScalingConfig(num_workers=s.num_workers,
                                               resources_per_worker={"CPU": s.cpus_per_worker}),
        run_config=ray.train.RunConfig(name=f"run-{int(time.time())}", **storage_args(output)),
    )  # fmt: skip
    try:
        result = trainer.fit()
    except ray.train.TrainingFailedError as exc:
        raise SepError(f"{output}: LightGBM training failed: {exc}") from exc
    if result.checkpoint is None:
        raise SepError(f"{output}: LightGBM training reported no models")
    with result.checkpoint.as_directory() as folder:
        texts = {c: open(f"{folder}/{c}.txt").read() for c in classes}
        info = json.load(open(f"{folder}/training.json"))
    return texts, info


# ---------------------------------------------------------------- scoring (Ray Data)


class Predictor:
    """Scores batches of snippets with the boosters (loaded once); keeps ids, labels, CNN scores."""

    def __init__(self, texts: dict[str, str], names: list[str]):
        self.boosters = {c: K.load_booster(t, f"{c}.txt") for c, t in texts.items()}
        self.names = names

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        x = np.stack([batch[n] for n in self.names], axis=1).astype(np.float32)
        out = {k: v for k, v in batch.items() if k in ("track_id", "start_s") or k.startswith(("label_", "cnn_"))}
        out.update({f"score_{c}": b.predict(x) for c, b in self.boosters.items()})
        return out


def _score(ds, texts: dict[str, str], names: list[str]):
    import ray

    scored = ds.map_batches(Predictor, fn_constructor_args=(texts, names), batch_size=2048, batch_format="numpy",
                            compute=ray.data.ActorPoolStrategy(size=1), num_cpus=1)  # fmt: skip
    return scored.to_pandas()


# ---------------------------------------------------------------- metrics, plots, report


def evaluate(frames: dict[str, Any], classes: list[str], cnn: bool) -> dict[str, Any]:
    """AUC and ROC curves per split and class (LightGBM and, with ``cnn``, the activation CNN)."""
    out: dict[str, Any] = {"auc": {}, "cnn_auc": {}, "roc": {}, "positives": {}}
    for split, df in frames.items():
        out["auc"][split], out["roc"][split], out["positives"][split] = {}, {}, {}
        out["cnn_auc"][split] = {}
        for c in classes:
            y = df[f"label_{c}"].to_numpy()
            out["positives"][split][c] = int(y.sum())
            auc = K.roc_auc(y, df[f"score_{c}"].to_numpy())
            out["auc"][split][c] = None if auc is None else round(auc, 4)
            if auc is not None:
                fpr, tpr, _ = K.roc_curve(y, df[f"score_{c}"].to_numpy())
                out["roc"][split][c] = (fpr, tpr, auc)
            if cnn:
                s = df[f"cnn_{c}"].to_numpy()
                ok = np.isfinite(s)
                cnn_auc = K.roc_auc(y[ok], s[ok]) if ok.any() else None
                out["cnn_auc"][split][c] = None if cnn_auc is None else round(cnn_auc, 4)
    return out


def roc_figure(roc: dict[str, dict[str, tuple]]) -> Any:
    """ROC curves of every class, one panel per split (as seed 000's figure).

    ``roc[split][class]`` is ``(fpr, tpr, auc)`` of :func:`evaluate`; each curve is drawn
    through its points (from (0, 0) to (1, 1)), labelled with the class and its AUC.
    """
    splits = [s for s in ("validation", "test") if s in roc]
    fig = R.new_figure(5.2 * len(splits), 4.8)
    axes = fig.subplots(1, len(splits), squeeze=False)
    for ax, split in zip(axes[0], splits, strict=True):
        for c, (fpr, tpr, auc) in roc[split].items():
            ax.plot(fpr, tpr, label=f"{c.capitalize()} AUC = {auc:.2f}")
        ax.plot([0, 1], [0, 1], linestyle="--", color="grey", linewidth=0.8)
        ax.set(xlabel="false positive rate", ylabel="true positive rate", xlim=(0, 1), ylim=(0, 1.02),
               title=f"ROC, {split} snippets")  # fmt: skip
        ax.legend(loc="lower right")
    fig.tight_layout()
    return fig


def roc_png(roc: dict[str, dict[str, tuple]]) -> bytes:
    """:func:`roc_figure` as PNG bytes."""
    return R.figure_png(roc_figure(roc), dpi=110)


def _label(name: str, centres: np.ndarray) -> str:
    """A feature name with the centre frequency of its log-mel band, if it has one."""
    if name.startswith("logmel_"):
        hz = centres[int(name.rsplit("_", 1)[1])]
        return f"{name} ({hz / 1000:.1f} kHz)" if hz >= 1000 else f"{name} ({hz:.0f} Hz)"
    return name


def importance_figure(texts: dict[str, str], spec: K.SnippetSpec, top: int = 12) -> Any:
    """Share of the total gain of the ``top`` features of each class's booster, one
    panel per class (``texts``: class -> booster text), the largest share at the top."""
    import librosa

    centres = librosa.mel_frequencies(spec.n_mels + 2, fmin=spec.fmin, fmax=min(spec.fmax, spec.sample_rate / 2))[1:-1]
    cols = min(3, len(texts))
    rows = -(-len(texts) // cols)
    fig = R.new_figure(4.2 * cols, 3.6 * rows)
    axes = fig.subplots(rows, cols, squeeze=False)
    for ax in axes.flat[len(texts) :]:
        ax.set_axis_off()
    for ax, (c, text) in zip(axes.flat, texts.items(), strict=False):
        booster = K.load_booster(text, f"{c}.txt")
        gain = booster.feature_importance("gain")
        share = gain / max(gain.sum(), 1e-12)
        order = np.argsort(share)[::-1][:top][::-1]
        ax.barh([_label(booster.feature_name()[i], centres) for i in order], share[order])
        ax.set(title=c, xlabel="share of total gain")
        ax.tick_params(axis="y", labelsize=7)
    fig.tight_layout()
    return fig


def importance_png(texts: dict[str, str], spec: K.SnippetSpec, top: int = 12) -> bytes:
    """:func:`importance_figure` as PNG bytes."""
    return R.figure_png(importance_figure(texts, spec, top), dpi=110)


def _cell(value: Any) -> str:
    return "n/a" if value is None else f"{value:.3f}" if isinstance(value, float) else str(value)


def report_html(metrics: dict[str, Any]) -> str:
    """A small self-contained page: AUC per class side by side, and the plots."""
    cnn = metrics.get("activation_cnn")
    head = ["class", "LightGBM validation", "LightGBM test"]
    head += ["activation CNN validation", "activation CNN test"] if cnn else []
    head += ["test positives / snippets", "seed 000 (Slakh)"]
    rows = []
    for c in metrics["classes"]:
        cells = [c, metrics["auc"]["validation"].get(c), metrics["auc"]["test"].get(c)]
        cells += [cnn["auc"]["validation"].get(c), cnn["auc"]["test"].get(c)] if cnn else []
        cells += [f"{metrics['positives']['test'].get(c, 0)} / {metrics['snippets'].get('test', 0)}",
                  K.SEED000_AUC.get(c)]  # fmt: skip
        rows.append("<tr>" + "".join(f"<td>{_cell(v)}</td>" for v in cells) + "</tr>")
    note = (f"<p>Activation CNN: {cnn['checkpoint']}, frame activations pooled ({cnn['pool']}) "
            "to the same snippets.</p>" if cnn else "<p>No activation CNN compared (activation_checkpoint: null).</p>")  # fmt: skip
    return (
        "<!doctype html><html><head><meta charset='utf-8'><title>classify: ROC AUC</title>"
        "<style>body{font-family:sans-serif;margin:2em}td,th{border:1px solid #ccc;padding:4px 10px}"
        "table{border-collapse:collapse}</style></head><body>"
        "<h1>Instrument presence on 1-second snippets: ROC AUC</h1>"
        "<table><tr>" + "".join(f"<th>{h}</th>" for h in head) + "</tr>" + "".join(rows) + "</table>"
        + note + "<p>Seed 000's figures are on Slakh2100, ours on this job's data: the data differ.</p>"
        f"<img src='{ROC_PNG}' alt='ROC curves'><img src='{IMPORTANCE_PNG}' alt='feature importance'>"
        "</body></html>"
    )


# ---------------------------------------------------------------- driver


def _tracks(cfg: ClassifyConfig) -> tuple[list[SourceTrack], dict[str, str], list[dict[str, str]]]:
    errors: list = []
    tracks = slakh_tracks(cfg.data, errors=errors)
    fixed = {t.track_id: t.split for t in tracks if t.split}
    splits = K.track_splits([t.track_id for t in tracks], cfg.split.model_dump(), cfg.seed, fixed)
    used = [t for t in tracks if splits[t.track_id] in SPLITS]  # Slakh-redux's "omitted" stays out
    return used, splits, [{"item": "listing", "error": str(e)} for e in errors]


def run(cfg: ClassifyConfig) -> dict[str, Any]:
    output = storage.normalize_uri(cfg.output)
    spec = to_spec(cfg)
    cnn_dir = ckpt.resolve(cfg.activation_checkpoint) if cfg.activation_checkpoint else None
    folder = snippet_folder(output, spec, cnn_dir, cfg.activation_pool)
    tracks, splits, listing_errors = _tracks(cfg)
    if not tracks:
        raise ConfigError("data", f"{cfg.data} holds no usable Slakh-layout tracks")
    done = read_markers(folder)
    pending = [t for t in tracks if t.track_id not in done]
    log.info("classify: %d tracks, %d done before, %d to featurize -> %s", len(tracks),
             len(tracks) - len(pending), len(pending), folder)  # fmt: skip
    failed = _featurize(cfg, spec, pending, folder, cnn_dir) + listing_errors
    markers = {t: m for t, m in read_markers(folder).items() if t in splits}
    skipped = {t: m["reason"] for t, m in markers.items() if m["status"] == "skipped"}
    counts = {"tracks": len(tracks), "done_before": len(tracks) - len(pending), "failed": len(failed),
              "skipped": len(skipped)}  # fmt: skip
    if failed and len(failed) > cfg.max_failed_fraction * max(len(tracks), 1):
        return {"counts": counts, "failed": failed, "skipped": skipped, "status": "failed",
                "error": f"{len(failed)} of {len(tracks)} tracks failed"}  # fmt: skip
    usable = {s: [m for t, m in sorted(markers.items()) if m["status"] == "ok" and splits[t] == s] for s in SPLITS}
    result = train_and_report(cfg, spec, output, usable, cnn_dir)
    return {"counts": {**counts, **result.pop("counts")},
            "figures": {**result.pop("figures"), "tracks_per_split": {s: len(m) for s, m in usable.items()}},
            "failed": failed, "skipped": skipped, "snippets": folder, **result}  # fmt: skip


def split_sizes(usable: dict[str, list[dict[str, Any]]], classes: list[str]) -> dict[str, dict[str, Any]]:
    """Snippets and positives per class of each split, from the done-markers."""
    return {s: {"snippets": sum(m["snippets"] for m in ms),
                "positives": {c: sum(m["positives"][c] for m in ms) for c in classes}}
            for s, ms in usable.items()}  # fmt: skip


def train_and_report(cfg: ClassifyConfig, spec: K.SnippetSpec, output: str,
                     usable: dict[str, list[dict[str, Any]]], cnn_dir: str | None) -> dict[str, Any]:  # fmt: skip
    """Train on the snippet files of each split, score validation and test, write every output."""
    for s in ("train", "validation"):
        if not usable[s]:
            raise SepError(f"{output}: the {s} split has no snippets (too few tracks, or all failed)")
    sizes = split_sizes(usable, cfg.classes)
    n_train = sizes["train"]["snippets"]
    trainable = [c for c in cfg.classes if 0 < sizes["train"]["positives"][c] < n_train]
    untrained = {c: "all training snippets have one label" for c in cfg.classes if c not in trainable}
    if not trainable:
        raise SepError(f"{output}: no class has both labels in the training snippets")
    names = spec.feature_names()
    datasets = {s: _parquet([m["shard"] for m in usable[s]]) for s in ("train", "validation")}
    texts, info = _train(cfg, datasets, names, trainable, output)
    scored = _score(_parquet([m["shard"] for s in ("validation", "test") for m in usable[s]]), texts, names)
    split_of = {m["track_id"]: s for s in ("validation", "test") for m in usable[s]}
    which = scored["track_id"].map(split_of)
    frames = {s: scored[which == s] for s in ("validation", "test") if usable[s]}
    ev = evaluate(frames, trainable, cnn_dir is not None)
    val = frames["validation"]
    thresholds = {c: K.youden_threshold(val[f"label_{c}"].to_numpy(), val[f"score_{c}"].to_numpy())
                  for c in trainable}  # fmt: skip
    boosters = {c: K.load_booster(t, f"{c}.txt") for c, t in texts.items()}
    model = K.Classifier(spec, trainable, boosters, thresholds, names, {"training": info, "data": cfg.data})
    model.save(storage.join(output, MODEL_DIR))
    metrics = {
        "classes": trainable, "untrained_classes": untrained, "auc": ev["auc"], "positives": ev["positives"],
        "snippets": {s: v["snippets"] for s, v in sizes.items()}, "thresholds": thresholds,
        "tracks": {s: [m["track_id"] for m in ms] for s, ms in usable.items()},
        "activation_cnn": {"checkpoint": cnn_dir, "pool": cfg.activation_pool, "auc": ev["cnn_auc"]} if cnn_dir else None,
        "seed000_auc_slakh": K.SEED000_AUC, "label_rule": {"threshold_db": spec.threshold_db, "floor_dbfs": spec.floor_dbfs},
        "training": info, "model": storage.join(output, MODEL_DIR),
    }  # fmt: skip
    write_outputs(output, metrics, ev["roc"], texts, spec)
    figures = {f"auc_{s}_{c}": v for s in ("validation", "test") for c, v in ev["auc"].get(s, {}).items()}
    if cnn_dir:
        figures.update({f"cnn_auc_test_{c}": v for c, v in ev["cnn_auc"].get("test", {}).items()})
    return {"counts": {f"snippets_{s}": v["snippets"] for s, v in sizes.items()}, "figures": figures,
            "model": storage.join(output, MODEL_DIR), "metrics": storage.join(output, METRICS)}  # fmt: skip


def write_outputs(output: str, metrics: dict[str, Any], roc: dict[str, Any], texts: dict[str, str],
                  spec: K.SnippetSpec) -> None:  # fmt: skip
    storage.write_text(storage.join(output, METRICS), json.dumps(metrics, indent=1))
    storage.write_bytes(storage.join(output, ROC_PNG), roc_png(roc))
    storage.write_bytes(storage.join(output, IMPORTANCE_PNG), importance_png(texts, spec))
    storage.write_text(storage.join(output, REPORT), report_html(metrics))


JOB = Job("classify", ClassifyConfig, run, "Train the LightGBM instrument-presence classifier on 1-s snippets.")
main = JOB.main

if __name__ == "__main__":
    sys.exit(main())
