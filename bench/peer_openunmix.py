"""The Open-Unmix peer at equal budget: its model, its data pipeline, its recipe; our data and scores.

Full run (one command, from the repository root, in our virtualenv; about 10 min of
export, 30 min of training, then separation and scoring of the test set)::

    .venv/bin/python bench/peer_openunmix.py run --data out/band/data --test-data out/test/data \\
        --work out/peer/run --minutes 30 --threads 2 [--splits-from <prepared dir>] [--baselines]

Another held-out set with the same model (test mixtures only, then separate and score)::

    .venv/bin/python bench/peer_openunmix.py export --test-data out/test_unseen/data --out out/peer/run/export_unseen
    .venv/bin/python bench/peer_openunmix.py separate --export out/peer/run/export_unseen \\
        --model out/peer/run/model --out out/peer/run/estimates_unseen
    .venv/bin/python bench/peer_openunmix.py evaluate --test-data out/test_unseen/data \\
        --estimates out/peer/run/estimates_unseen --out out/peer/run/scores_unseen.json

Disk: the WAV export is ~64 MB per band track (~17 GB), the estimates ~130 MB per test song.
Smoke test (minutes on 2 cores)::

    .venv/bin/python bench/peer_openunmix.py run --data out/band/data --test-data out/test/data \\
        --work out/peer/smoke --minutes 1 --hidden 64 --limit 6 --test-limit 2

The same in steps (``run`` does exactly these; ``--venv`` defaults to out/peer/venv)::

    .venv/bin/python bench/peer_openunmix.py venv                 # build the peer's virtualenv
    .venv/bin/python bench/peer_openunmix.py export --data out/band/data --test-data out/test/data \\
        --out out/peer/run/export [--splits-from <prepared dir>]
    .venv/bin/python bench/peer_openunmix.py train --export out/peer/run/export \\
        --model out/peer/run/model --minutes 30 --threads 2          # re-runs itself in the venv
    .venv/bin/python bench/peer_openunmix.py separate --export out/peer/run/export \\
        --model out/peer/run/model --out out/peer/run/estimates
    .venv/bin/python bench/peer_openunmix.py evaluate --test-data out/test/data \\
        --estimates out/peer/run/estimates --out out/peer/run/scores.json --sample-rate 22050

What each step does:

* ``venv``: ``python3 -m venv`` at ``--venv``, ``pip install -r bench/peer_openunmix/requirements.txt``
  (CPU torch 2.13.0, numpy, soundfile, tqdm, pyyaml), then ``openunmix==1.3.0`` with
  ``--no-deps``: no torchaudio. ``openunmix`` 1.3.0 imports torchaudio and its
  ``openunmix.data`` calls ``torchaudio.get_audio_backend()`` and ``torchaudio.info``,
  which current torchaudio lacks (and a torchaudio here needs a ~7 GB venv), so the peer
  runs with ``bench/peer_openunmix/shim`` first on ``PYTHONPATH``: a ``torchaudio`` of
  five functions over soundfile (its docstring lists them). Open-Unmix's STFT is its own
  ``torch`` filterbank (``torch.stft``), not torchaudio's.
* ``export`` (our venv: it uses ``sepcore``): each band-corpus track's stems exactly as our
  prepare makes them (:func:`sepcore.prepare.pairs.make_sources`: QA flags and
  exclusions, a class's usable stems summed, ``other`` = every other usable stem), at
  44.1 kHz stereo, into Open-Unmix's track-folder layout
  ``<out>/{train,valid}/<Track>/{bass,drums,guitar,piano,strings,other}.wav`` (16-bit;
  silence for a class the track lacks; a track whose peak would clip is scaled as a whole,
  the factor in ``track.json``; ~64 MB per track, ~17 GB for the corpus: ``--format flac``
  takes a fifth of that but its random 6-s reads are ~7x slower, which the peer's loop
  pays inside its budget). The split is ours: the ``splits`` of a prepared
  ``dataset.json`` (``--splits-from``), else :func:`sepcore.prepare.mixing.assign_splits`
  with prepare's default fractions (0.8/0.1/0.1) and seed (``--split-seed``, 0), as prepare
  assigns them; our ``validation`` is Open-Unmix's ``valid``, our ``test`` tracks are not
  exported. ``--test-data`` tracks get ``<out>/test/<Track>/mixture.wav`` (the sum of
  their usable stems, as our evaluation's mixture). Finished tracks are skipped on a rerun.
* ``train`` (the peer's venv; our own loop, not Open-Unmix's ``scripts/train.py``): per
  target one ``openunmix.model.OpenUnmix`` (its design), trained on
  ``openunmix.data.FixedSourcesTrackFolderDataset`` with ``random_track_mix=True`` (each
  interferer from a random track, at a random start), ``random_chunks``, 6-s excerpts
  (``seq_dur``) and its ``gain`` (0.25-1.25) and ``channelswap`` augmentations, 64
  samples per track per epoch (the dataset lacks ``samples_per_track``: a wrapper repeats
  its index), batch 16, Adam lr 1e-3 weight decay 1e-5, MSE between the model's output
  and the target's magnitude STFT (n_fft 4096, hop 1024, bandwidth 16 kHz -> ``max_bin``),
  ``ReduceLROnPlateau`` (factor 0.3, patience 80 epochs, cooldown 10) on the validation
  loss (whole validation tracks) after each epoch, hidden size 512, 3 BLSTM layers:
  Open-Unmix's documented recipe. Input scaler statistics (mean and standard deviation
  per bin of the channel-averaged mixture magnitude over the training tracks, no
  augmentation, floor 1e-4 x max, as its train script) are computed once, mixtures being
  the same for every target. Budget: ``--minutes`` of wall time from the start of
  ``train`` (statistics included) on ``--threads`` torch threads, data loading in the same
  process; each target gets an equal share of what is left when it starts, and takes at
  least one step; no step starts that would end past its share at the mean step time
  (loading included), so the total overruns by at most about one step. At 30 minutes
  on 2 cores an epoch of the recipe (64 x 240 excerpts, 960 steps) does not fit in a target's
  6 minutes, so no validation runs and the learning rate stays 1e-3 (as in the recipe's
  first 80 epochs); the last weights are saved (the best-by-validation ones when an epoch
  ended). Each target is saved as Open-Unmix saves it: ``<model>/<target>.pth`` (state
  dict) and ``<target>.json`` (``{"args": ...}``), plus ``separator.json``, so
  ``openunmix.utils.load_separator(<model>, targets=[...])`` loads it.
* ``separate`` (the peer's venv): ``openunmix.utils.load_separator`` with its Wiener filter
  (``niter=1``, ``wiener_win_len=300``) and ``residual=True`` (the residual is ``other``);
  each test mixture -> ``<out>/<Track>/<stem>.wav`` (float, at the mixture's level;
  ``separate.json`` names the tracks, and ``evaluate`` scores those only). Open-Unmix's
  Wiener EM (``openunmix.filtering``, complex arithmetic on stacked real tensors) is most
  of the cost (~3/4 in a profile). Smoke test, 2 threads: 3.1x real time on a lightly
  loaded machine (2 songs of 62 s in 40 s; ~15 min for the 40-song test set), but 0.3x
  while the machine ran ~15 other busy processes: run it on a quiet machine.
* ``evaluate`` (our venv): our scoring (:mod:`sepcore.evaluate.scoring`) as ``sep evaluate``
  scores a multi-stem checkpoint: per class of the peer's targets, the reference is
  ``[class sum, mix - class sum]`` (:func:`sepcore.evaluate.tracks.track_pairs` at
  ``--sample-rate`` and ``--channels``: 22050 Hz mono as the test config) and the estimate
  ``[stem, mix - stem]`` (the peer's stem resampled and downmixed). Prints and writes the
  per-class medians of SDR/SIR/SAR (``--baselines`` adds the IRM, IBM and mixture rows).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
SHIM = HERE / "peer_openunmix" / "shim"
REQUIREMENTS = HERE / "peer_openunmix" / "requirements.txt"
OPENUNMIX = "openunmix==1.3.0"
TARGETS = ("bass", "drums", "guitar", "piano", "strings")
OTHER = "other"
RATE = 44100  # Open-Unmix's rate: every exported file and every estimate
FORMATS = {"wav": ("WAV", ".wav"), "flac": ("FLAC", ".flac")}  # export format -> (soundfile format, suffix)

# ---------------------------------------------------------------- the peer's virtualenv


def venv_python(venv: Path) -> Path:
    return venv / "bin" / "python"


def venv_ready(venv: Path) -> bool:
    py = venv_python(venv)
    if not py.exists():
        return False
    probe = "import torch, soundfile, openunmix.data, openunmix.utils"
    return subprocess.run([str(py), "-c", probe], env=peer_env(2), capture_output=True).returncode == 0


def build_venv(venv: Path) -> None:
    """Create the peer's virtualenv when it is missing or broken (module docstring)."""
    if venv_ready(venv):
        return
    print(f"building the peer's virtualenv at {venv}", flush=True)
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    pip = [str(venv_python(venv)), "-m", "pip", "install", "-q"]
    subprocess.run([*pip, "-r", str(REQUIREMENTS)], check=True)
    subprocess.run([*pip, "--no-deps", OPENUNMIX], check=True)
    if not venv_ready(venv):
        raise SystemExit(f"the virtualenv {venv} was built but cannot import openunmix with the shim")


def peer_env(threads: int) -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(SHIM), *filter(None, [env.get("PYTHONPATH")])])
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        env[var] = str(threads)
    return env


def in_peer_venv(args: argparse.Namespace, argv: list[str]) -> int:
    """Re-run this script's ``argv`` with the peer's python (building the venv when missing)."""
    venv = Path(args.venv)
    build_venv(venv)
    cmd = [str(venv_python(venv)), str(Path(__file__).resolve()), *argv, "--in-venv"]
    return subprocess.run(cmd, env=peer_env(args.threads)).returncode


# ---------------------------------------------------------------- export (our venv)


def split_of(data: str, splits_from: str | None, seed: int) -> tuple[list, dict[str, str], str]:
    """The band tracks and each one's split (``train`` / ``validation`` / ``test``), and the rule."""
    from sepcore.data.sources import slakh_tracks
    from sepcore.prepare.mixing import assign_splits

    tracks = slakh_tracks(data)
    short = {t.track_id: t.track_id.split(":", 1)[-1] for t in tracks}
    if splits_from:
        meta = json.loads(Path(splits_from, "dataset.json").read_text())
        given = {tid.split(":", 1)[-1]: split for split, ids in meta["splits"].items() for tid in ids}
        return tracks, {t: given[s] for t, s in short.items() if s in given}, f"splits of {splits_from}/dataset.json"
    fixed = {t.track_id: t.split for t in tracks if t.split}
    fractions = {"train": 0.8, "validation": 0.1, "test": 0.1}
    rule = f"assign_splits(fractions={fractions}, seed={seed}) as prepare's defaults"
    return tracks, assign_splits([t.track_id for t in tracks], fractions, seed, fixed), rule


def _export_track(job: tuple) -> dict:
    """One track's stems (or mixture) as 16-bit FLAC at 44.1 kHz stereo; returns its record."""
    import numpy as np
    import soundfile as sf

    from sepcore.prepare.pairs import PrepareSpec, SkipTrack, make_sources

    track, folder, mixture_only, fmt = job
    major, ext = FORMATS[fmt]
    folder = Path(folder)
    marker = folder / "track.json"
    if marker.exists():
        return json.loads(marker.read_text())
    spec = PrepareSpec(target=None, targets=TARGETS, sample_rate=RATE, channels=2, outputs=("target",),
                       skip_without_target=not mixture_only)  # fmt: skip
    try:
        mix, sources = make_sources(track, spec)
    except SkipTrack as exc:
        return {"track_id": track.track_id, "skipped": str(exc)}
    peak = float(max(np.abs(mix).max(), np.abs(sources).max()))
    scale = 1.0 if peak <= 0.99 else 0.99 / peak
    folder.mkdir(parents=True, exist_ok=True)
    if mixture_only:
        sf.write(folder / f"mixture{ext}", (mix * scale).T, RATE, format=major, subtype="PCM_16")
    else:
        for name, audio in zip(spec.stems, sources, strict=True):
            sf.write(folder / f"{name}{ext}", (audio * scale).T, RATE, format=major, subtype="PCM_16")
    record = {"track_id": track.track_id, "scale": scale, "seconds": mix.shape[1] / RATE,
              "present": [s for s, a in zip(spec.stems, sources, strict=True) if np.any(a)]}  # fmt: skip
    marker.write_text(json.dumps(record))
    return record


def export(args: argparse.Namespace) -> None:
    from concurrent.futures import ProcessPoolExecutor

    from sepcore.data.sources import slakh_tracks

    out = Path(args.out)
    tracks, splits, rule = split_of(args.data, args.splits_from, args.split_seed) if args.data else ([], {}, None)
    folder_of = {"train": "train", "validation": "valid"}
    jobs = [(t, out / folder_of[splits[t.track_id]] / Path(t.uri).name, False, args.format)
            for t in tracks if splits.get(t.track_id) in folder_of]  # fmt: skip
    if args.limit:
        train_jobs = [j for j in jobs if j[1].parent.name == "train"][: args.limit]
        jobs = train_jobs + [j for j in jobs if j[1].parent.name == "valid"][: max(1, args.limit // 5)]
    if args.test_data:
        test = slakh_tracks(args.test_data)[: args.test_limit or None]
        jobs += [(t, out / "test" / Path(t.uri).name, True, args.format) for t in test]
    t0 = time.perf_counter()
    with ProcessPoolExecutor(max_workers=max(1, args.workers)) as pool:
        records = list(pool.map(_export_track, jobs))
    by_split: dict[str, dict] = {}
    for (_, folder, _, _), rec in zip(jobs, records, strict=True):
        by_split.setdefault(folder.parent.name, {})[folder.name] = rec
    summary = {"source": str(args.data), "test_source": args.test_data, "split_rule": rule,
               "sample_rate": RATE, "channels": 2, "stems": [*TARGETS, OTHER], "format": f"{args.format} PCM_16",
               "ext": FORMATS[args.format][1],
               "tracks": by_split, "seconds": round(time.perf_counter() - t0, 1)}  # fmt: skip
    out.mkdir(parents=True, exist_ok=True)
    (out / "export.json").write_text(json.dumps(summary, indent=1))
    counts = {s: sum("skipped" not in r for r in recs.values()) for s, recs in by_split.items()}
    print(f"exported {counts} to {out} in {summary['seconds']} s ({rule})")


# ---------------------------------------------------------------- train (the peer's venv)


def export_ext(root: Path) -> str:
    """The suffix of an export's audio files (``.wav`` or ``.flac``)."""
    return str(json.loads((root / "export.json").read_text())["ext"])


def _peer_parts(nfft: int, nhop: int):  # noqa: ANN202
    """Open-Unmix's encoder: its torch STFT then the magnitude, stereo kept."""
    import torch
    from openunmix import transforms

    stft, _ = transforms.make_filterbanks(n_fft=nfft, n_hop=nhop, sample_rate=RATE, method="torch")
    return torch.nn.Sequential(stft, transforms.ComplexNorm(mono=False))


def scaler_statistics(root: Path, files: list[str], encoder) -> tuple:  # noqa: ANN001
    """Mean and std per bin of the channel-averaged mixture magnitude over the training tracks.

    As Open-Unmix's train script (a StandardScaler over every frame of every whole track,
    no augmentation, std floored at 1e-4 of its maximum). Shape: ``(nfft // 2 + 1,)`` each.
    """
    import numpy as np
    import torch
    from openunmix import data

    total, sq, count = None, None, 0
    for track in sorted(p for p in (root / "train").iterdir() if p.is_dir()):
        x = sum(data.load_audio(str(track / f))[0] for f in files)
        with torch.no_grad():
            mag = encoder(x[None]).mean(1)[0].T.double().numpy()  # (frames, bins)
        total = mag.sum(0) if total is None else total + mag.sum(0)
        sq = (mag**2).sum(0) if sq is None else sq + (mag**2).sum(0)
        count += mag.shape[0]
    mean = total / count
    std = np.sqrt(np.maximum(sq / count - mean**2, 0.0))
    return mean, np.maximum(std, 1e-4 * std.max())


class _Repeat:
    """``samples_per_track`` for a track-folder dataset: index ``i`` -> track ``i % n``."""

    def __init__(self, dataset, times: int) -> None:  # noqa: ANN001
        self.dataset, self.times = dataset, times

    def __len__(self) -> int:
        return len(self.dataset) * self.times

    def __getitem__(self, index: int):  # noqa: ANN204
        return self.dataset[index % len(self.dataset)]


def train_target(target: str, args: argparse.Namespace, stats: tuple, deadline: float, encoder) -> dict:  # noqa: ANN001
    """Train one target's OpenUnmix until ``deadline`` (``time.monotonic``); save it; its log."""
    import copy

    import torch
    from openunmix import data, model, utils

    root = Path(args.export)
    ext = export_ext(root)
    files = [f"{s}{ext}" for s in (*TARGETS, OTHER)]
    target_file, interferers = f"{target}{ext}", [f for f in files if f != f"{target}{ext}"]
    augment = data.Compose([data._augment_gain, data._augment_channelswap])
    train_set = data.FixedSourcesTrackFolderDataset(
        root=str(root), split="train", target_file=target_file, interferer_files=interferers,
        seq_duration=args.seq_dur, random_chunks=True, random_track_mix=True,
        source_augmentations=augment, sample_rate=RATE, seed=args.seed)  # fmt: skip
    valid_set = data.FixedSourcesTrackFolderDataset(
        root=str(root), split="valid", target_file=target_file, interferer_files=interferers,
        seq_duration=None, sample_rate=RATE)  # fmt: skip
    loader = torch.utils.data.DataLoader(_Repeat(train_set, args.samples_per_track), batch_size=args.batch_size,
                                         shuffle=True, num_workers=0, drop_last=True)  # fmt: skip
    max_bin = int(utils.bandwidth_to_max_bin(RATE, args.nfft, args.bandwidth))
    unmix = model.OpenUnmix(nb_bins=args.nfft // 2 + 1, nb_channels=2, hidden_size=args.hidden,
                            nb_layers=3, input_mean=stats[0], input_scale=stats[1], max_bin=max_bin)  # fmt: skip
    optimizer = torch.optim.Adam(unmix.parameters(), lr=args.lr, weight_decay=args.weight_decay)
    scheduler = torch.optim.lr_scheduler.ReduceLROnPlateau(optimizer, factor=args.lr_decay_gamma,
                                                           patience=args.lr_decay_patience, cooldown=10)  # fmt: skip
    mse = torch.nn.functional.mse_loss
    log: dict = {"target": target, "train_tracks": len(train_set), "valid_tracks": len(valid_set),
                 "epoch_batches": len(loader), "steps": 0, "epochs": 0, "samples": 0,
                 "valid_loss_history": [], "step_losses": []}  # fmt: skip
    best, best_state, t0, running, n_running = float("inf"), None, time.monotonic(), 0.0, 0
    step_s = 0.0  # mean seconds per step (loading included): no step starts that would end past the deadline
    while log["steps"] == 0 or time.monotonic() + step_s < deadline:
        unmix.train()
        for x, y in loader:
            if log["steps"] and time.monotonic() + step_s >= deadline:
                break
            X, Y = encoder(x), encoder(y)
            optimizer.zero_grad()
            loss = mse(unmix(X), Y)
            loss.backward()
            optimizer.step()
            log["steps"] += 1
            step_s = (time.monotonic() - t0) / log["steps"]
            log["samples"] += x.shape[0]
            running, n_running = running + loss.item(), n_running + 1
            if log["steps"] % 10 == 0:
                log["step_losses"].append([log["steps"], round(running / n_running, 6)])
                print(f"  {target} step {log['steps']} loss {running / n_running:.5f} "
                      f"({time.monotonic() - t0:.0f} s)", flush=True)  # fmt: skip
                running, n_running = 0.0, 0
        else:  # a whole epoch: validate on whole tracks, step the schedule
            log["epochs"] += 1
            unmix.eval()
            with torch.no_grad():
                losses = [mse(unmix(encoder(x)), encoder(y)).item() for x, y in valid_set_batches(valid_set)]
            valid = sum(losses) / max(1, len(losses))
            scheduler.step(valid)
            log["valid_loss_history"].append(valid)
            if valid < best:
                best, best_state = valid, copy.deepcopy(unmix.state_dict())
    if n_running:
        log["step_losses"].append([log["steps"], round(running / n_running, 6)])
    log["seconds"] = round(time.monotonic() - t0, 1)
    log["train_loss_last"] = log["step_losses"][-1][1] if log["step_losses"] else None
    log["best_valid_loss"] = best if best_state is not None else None
    log["saved"] = "best by validation" if best_state is not None else "last (no epoch finished)"
    out = Path(args.model)
    out.mkdir(parents=True, exist_ok=True)
    torch.save(best_state or unmix.state_dict(), out / f"{target}.pth")
    recipe = {k: getattr(args, k) for k in ("seq_dur", "samples_per_track", "batch_size", "lr", "weight_decay",
                                            "lr_decay_gamma", "lr_decay_patience", "bandwidth", "nhop", "seed")}
    run_args = {"target": target, "nfft": args.nfft, "nhop": args.nhop, "nb_channels": 2, "hidden_size": args.hidden,
                "sample_rate": RATE, "dataset": "trackfolder_fix", "random_track_mix": True,
                "source_augmentations": ["gain", "channelswap"], "max_bin": max_bin, **recipe}  # fmt: skip
    (out / f"{target}.json").write_text(json.dumps({"args": run_args, **log}, indent=1))
    return log


def valid_set_batches(dataset):  # noqa: ANN001, ANN201
    for i in range(len(dataset)):
        x, y = dataset[i]
        yield x[None], y[None]


def train(args: argparse.Namespace) -> None:
    import torch

    start = time.monotonic()
    deadline = start + args.minutes * 60.0
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    encoder = _peer_parts(args.nfft, args.nhop)
    files = [f"{s}{export_ext(Path(args.export))}" for s in (*TARGETS, OTHER)]
    stats = scaler_statistics(Path(args.export), files, encoder)
    stats_s = time.monotonic() - start
    print(f"scaler statistics in {stats_s:.0f} s", flush=True)
    targets = list(args.targets)
    logs = []
    for k, target in enumerate(targets):
        share = (deadline - time.monotonic()) / (len(targets) - k)
        print(f"training {target} for {share:.0f} s", flush=True)
        logs.append(train_target(target, args, stats, time.monotonic() + share, encoder))
    out = Path(args.model)
    (out / "separator.json").write_text(json.dumps({"targets": targets, "nb_channels": 2, "sample_rate": RATE,
                                                    "nfft": args.nfft, "nhop": args.nhop}, indent=1))  # fmt: skip
    import openunmix

    summary = {"openunmix": getattr(openunmix, "__version__", "1.3.0"), "torch": torch.__version__,
               "threads": args.threads, "minutes": args.minutes, "hidden": args.hidden,
               "statistics_seconds": round(stats_s, 1), "wall_seconds": round(time.monotonic() - start, 1),
               "targets": {g["target"]: {k: v for k, v in g.items() if k != "step_losses"} for g in logs}}  # fmt: skip
    (out / "train_summary.json").write_text(json.dumps(summary, indent=1))
    print(json.dumps(summary, indent=1))


# ---------------------------------------------------------------- separate (the peer's venv)


def separate(args: argparse.Namespace) -> None:
    import numpy as np
    import soundfile as sf
    import torch
    from openunmix import data, utils

    torch.set_num_threads(args.threads)
    targets = json.loads(Path(args.model, "separator.json").read_text())["targets"]
    separator = utils.load_separator(args.model, targets=targets, niter=args.niter, residual=True,
                                     wiener_win_len=300, device="cpu", filterbank="torch")  # fmt: skip
    separator.freeze()
    export_meta = json.loads(Path(args.export, "export.json").read_text())
    test = export_meta["tracks"].get("test", {})
    names = sorted(test)[: args.limit or None]
    out = Path(args.out)
    t0 = time.perf_counter()
    seconds = 0.0
    for name in names:
        audio, rate = data.load_audio(str(Path(args.export, "test", name, f"mixture{export_meta['ext']}")))
        if rate != RATE:
            raise SystemExit(f"{name}: mixture at {rate} Hz, the model's rate is {RATE}")
        with torch.no_grad():
            est = separator.to_dict(separator(audio[None]))
        folder = out / name
        folder.mkdir(parents=True, exist_ok=True)
        scale = float(test[name]["scale"])
        for stem, signal in est.items():
            wave = signal[0].numpy().T / scale  # undo the export's anti-clip scale
            sf.write(folder / f"{OTHER if stem == 'residual' else stem}.wav", wave.astype(np.float32), RATE,
                     subtype="FLOAT")  # fmt: skip
        seconds += audio.shape[1] / RATE
        print(f"  separated {name} ({audio.shape[1] / RATE:.1f} s)", flush=True)
    wall = time.perf_counter() - t0
    info = {"targets": targets, "residual": OTHER, "niter": args.niter, "tracks": len(names), "names": names,
            "audio_seconds": round(seconds, 1), "wall_seconds": round(wall, 1),
            "x_real_time": round(seconds / wall, 2) if wall else None, "threads": args.threads}  # fmt: skip
    out.mkdir(parents=True, exist_ok=True)
    (out / "separate.json").write_text(json.dumps(info, indent=1))
    print(json.dumps(info))


# ---------------------------------------------------------------- evaluate (our venv)


def evaluate(args: argparse.Namespace) -> dict:
    import numpy as np

    from sepcore.data.sources import slakh_tracks
    from sepcore.evaluate.config import ScoringConfig
    from sepcore.evaluate.scoring import median_table, score_methods
    from sepcore.evaluate.tracks import estimates, track_pairs
    from sepcore.io.audio import read_audio, resample, to_channels

    est_root = Path(args.estimates)
    sep_info = json.loads((est_root / "separate.json").read_text())
    classes = list(sep_info["targets"])
    meta = {"sample_rate": args.sample_rate, "channels": args.channels, "frames": 64,
            "feature": {"name": "stft", "n_fft": args.n_fft, "hop": args.hop}}  # fmt: skip
    spec = ScoringConfig(mode=args.mode, backend=args.backend)
    # this run's tracks only, not older folders in the same place
    separated = set(sep_info.get("names") or (p.name for p in est_root.iterdir() if p.is_dir()))
    tracks = [t for t in slakh_tracks(args.test_data) if Path(t.uri).name in separated]
    results = []
    t0 = time.perf_counter()
    for track in tracks:
        mix, pairs, skipped = track_pairs(track, meta, classes)
        per_class = {}
        for cls, (instrument, rest) in pairs.items():
            audio = read_audio(str(est_root / Path(track.uri).name / f"{cls}.wav"))
            stem = to_channels(resample(audio, args.sample_rate), args.channels).samples
            n = mix.shape[1]
            stem = stem[:, :n] if stem.shape[1] >= n else np.pad(stem, ((0, 0), (0, n - stem.shape[1])))
            given = {"instrument": stem, "rest": mix - stem}
            if args.baselines:
                methods = estimates(instrument, rest, args.n_fft, args.hop, model_estimate=given,
                                    sample_rate=args.sample_rate)  # fmt: skip
                methods = {("open-unmix" if k == "model" else k): v for k, v in methods.items()}
            else:
                methods = {"open-unmix": given}
            per_class[cls] = score_methods(instrument, rest, methods, args.sample_rate, spec)
        results.append({"track_id": track.track_id, "classes": per_class, "skipped": skipped})
        print(f"  scored {track.track_id}: " + ", ".join(
            f"{c} {s['open-unmix']['instrument']['sdr']:.2f}" for c, s in per_class.items()), flush=True)  # fmt: skip
    medians = {}
    for cls in classes:
        rows = [{"scores": r["classes"][cls]} for r in results if cls in r["classes"]]
        if rows:
            medians[cls] = median_table(rows)
    report = {"peer": "open-unmix 1.3.0", "estimates": str(est_root), "test_data": args.test_data,
              "sample_rate": args.sample_rate, "channels": args.channels, "scoring": spec.described(),
              "reference": "[class sum, mix - class sum]", "estimate": "[stem, mix - stem]",
              "tracks": len(results), "eval_seconds": round(time.perf_counter() - t0, 1),
              "medians": medians, "per_track": results}  # fmt: skip
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(report, indent=1, default=float))
    print("class     method      SDR    SIR    SAR  (instrument medians, dB; count)")
    for cls, table in medians.items():
        for method, src in table.items():
            m = src["instrument"]
            print(f"{cls:9} {method:10} {m['sdr']:6.2f} {m['sir']:6.2f} {m['sar']:6.2f}  ({m['count']})")
    return report


# ---------------------------------------------------------------- command line


def get_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = p.add_subparsers(dest="command", required=True)

    def peer(sp: argparse.ArgumentParser) -> None:
        sp.add_argument("--venv", default="out/peer/venv", help="the peer's virtualenv (built when missing)")
        sp.add_argument("--threads", type=int, default=2, help="torch threads")
        sp.add_argument("--in-venv", action="store_true", help=argparse.SUPPRESS)

    def training(sp: argparse.ArgumentParser) -> None:
        sp.add_argument("--minutes", type=float, default=30.0, help="wall budget of all targets together")
        sp.add_argument("--targets", nargs="+", default=list(TARGETS), choices=TARGETS)
        sp.add_argument("--hidden", type=int, default=512, help="hidden size (the recipe: 512)")
        sp.add_argument("--seq-dur", type=float, default=6.0)
        sp.add_argument("--samples-per-track", type=int, default=64)
        sp.add_argument("--batch-size", type=int, default=16)
        sp.add_argument("--lr", type=float, default=1e-3)
        sp.add_argument("--weight-decay", type=float, default=1e-5)
        sp.add_argument("--lr-decay-gamma", type=float, default=0.3)
        sp.add_argument("--lr-decay-patience", type=int, default=80, help="epochs (the recipe's)")
        sp.add_argument("--nfft", type=int, default=4096)
        sp.add_argument("--nhop", type=int, default=1024)
        sp.add_argument("--bandwidth", type=float, default=16000.0)
        sp.add_argument("--seed", type=int, default=42)

    def exporting(sp: argparse.ArgumentParser) -> None:
        sp.add_argument("--data", help="band corpus (Slakh layout); leave out to export test mixtures only")
        sp.add_argument("--test-data", help="held-out test set (Slakh layout)")
        sp.add_argument("--splits-from", help="a prepared dataset folder whose dataset.json gives the splits")
        sp.add_argument("--split-seed", type=int, default=0, help="prepare's split seed (without --splits-from)")
        sp.add_argument("--workers", type=int, default=2)
        sp.add_argument("--format", choices=sorted(FORMATS), default="wav",
                        help="wav: ~10.6 MB per file, fast random reads; flac: ~1/5 the disk, ~7x slower reads")
        sp.add_argument("--limit", type=int, default=0, help="smoke: this many train tracks (and a fifth valid)")
        sp.add_argument("--test-limit", type=int, default=0, help="smoke: this many test tracks")

    def scoring(sp: argparse.ArgumentParser, test_data: bool = True) -> None:
        if test_data:
            sp.add_argument("--test-data", required=True)
        sp.add_argument("--sample-rate", type=int, default=22050, help="our evaluation rate (the checkpoint's)")
        sp.add_argument("--channels", type=int, default=1)
        sp.add_argument("--n-fft", type=int, default=1536, help="STFT of the --baselines oracle masks")
        sp.add_argument("--hop", type=int, default=384)
        sp.add_argument("--mode", choices=("full", "windowed"), default="full")
        sp.add_argument("--backend", choices=("auto", "mir_eval", "fast"), default="fast",
                        help="BSS Eval backend (fast: fast_bss_eval, mir_eval's numbers; as configs/evaluate_band_stems.yaml)")
        sp.add_argument("--baselines", action="store_true", help="also score IRM, IBM and the mixture")

    sp = sub.add_parser("venv", help="build the peer's virtualenv")
    peer(sp)
    sp = sub.add_parser("export", help="band corpus -> Open-Unmix track folders (our venv)")
    exporting(sp)
    sp.add_argument("--out", required=True)
    sp = sub.add_parser("train", help="train the peer (its venv)")
    peer(sp)
    training(sp)
    sp.add_argument("--export", required=True)
    sp.add_argument("--model", required=True)
    sp = sub.add_parser("separate", help="separate the exported test mixtures (its venv)")
    peer(sp)
    sp.add_argument("--export", required=True)
    sp.add_argument("--model", required=True)
    sp.add_argument("--out", required=True)
    sp.add_argument("--niter", type=int, default=1)
    sp.add_argument("--limit", type=int, default=0, help="smoke: this many test tracks")
    sp = sub.add_parser("evaluate", help="score the peer's estimates with our scoring (our venv)")
    scoring(sp)
    sp.add_argument("--estimates", required=True)
    sp.add_argument("--out", help="JSON report")
    sp = sub.add_parser("run", help="export, train, separate, evaluate")
    peer(sp)
    training(sp)
    exporting(sp)
    scoring(sp, test_data=False)
    sp.add_argument("--work", default="out/peer/run")
    return p


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = get_parser().parse_args(argv)
    if args.command == "venv":
        build_venv(Path(args.venv))
        return 0
    if args.command == "export":
        export(args)
        return 0
    if args.command in ("train", "separate"):
        if not args.in_venv:
            return in_peer_venv(args, argv)
        train(args) if args.command == "train" else separate(args)
        return 0
    if args.command == "evaluate":
        evaluate(args)
        return 0
    if not args.data:
        raise SystemExit("run: --data (the band corpus) is required")
    work = Path(args.work)  # run
    exp, model, est = work / "export", work / "model", work / "estimates"
    export(argparse.Namespace(**{**vars(args), "out": str(exp)}))
    common = ["--venv", args.venv, "--threads", str(args.threads)]
    recipe = ["--minutes", str(args.minutes), "--hidden", str(args.hidden), "--targets", *args.targets,
              "--seq-dur", str(args.seq_dur), "--samples-per-track", str(args.samples_per_track),
              "--batch-size", str(args.batch_size), "--lr", str(args.lr), "--weight-decay", str(args.weight_decay),
              "--lr-decay-gamma", str(args.lr_decay_gamma), "--lr-decay-patience", str(args.lr_decay_patience),
              "--nfft", str(args.nfft), "--nhop", str(args.nhop), "--bandwidth", str(args.bandwidth)]  # fmt: skip
    rc = main(["train", *common, *recipe, "--export", str(exp), "--model", str(model)])
    if rc:
        return rc
    rc = main(["separate", *common, "--export", str(exp), "--model", str(model), "--out", str(est),
               "--limit", str(args.test_limit)])  # fmt: skip
    if rc:
        return rc
    evaluate(argparse.Namespace(**{**vars(args), "estimates": str(est), "out": str(work / "scores.json")}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
