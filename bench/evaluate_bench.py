"""Seconds of BSS Eval per minute of audio: mir_eval vs fast_bss_eval, full vs windowed.

Usage: ``python bench/evaluate_bench.py [--data out/demo/data] [--lengths 30 60 120 240]
[--whole-up-to 120] [--repeats 2] [--threads 1]``

The signals are real separations: demo tracks' guitar and rest (made as the evaluate
job makes them), separated with the oracle ideal ratio mask at the hourglass's STFT
(1536/384, 22.05 kHz mono), tracks joined end to end up to each length. Each case
scores the ``[instrument, rest]`` pair once:

* ``whole``: one ``bss_eval_sources`` call on the whole signal (seed 002's way; grows
  faster than linearly, so only up to ``--whole-up-to`` seconds);
* ``full``: the evaluate job's full mode, segments of at most 30 s pooled
  (:func:`sepcore.evaluate.scoring.pooled_bss_eval`);
* ``windowed``: 1-s windows, median over windows (museval's convention).

Figures are CPU seconds of this process (``time.process_time``) per minute of audio,
best of ``--repeats`` runs: a busy machine changes them little. The largest
difference between the backends on the same case is printed too.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

_THREADS = next((a.split("=", 1)[1] for a in sys.argv if a.startswith("--threads=")), "1")
for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, _THREADS)

import numpy as np  # noqa: E402
import torch  # noqa: E402

from sepcore.data.sources import slakh_tracks  # noqa: E402
from sepcore.evaluate import bss as metrics  # noqa: E402
from sepcore.evaluate import scoring as S  # noqa: E402
from sepcore.evaluate import tracks as E  # noqa: E402
from sepcore.evaluate.config import ScoringConfig  # noqa: E402

SR, N_FFT, HOP = 22050, 1536, 384
META = {
    "sample_rate": SR,
    "channels": 1,
    "frames": 64,
    "feature": {"name": "stft", "n_fft": N_FFT, "hop": HOP},
}


def get_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--data", default="out/demo/data", help="a Slakh-layout set with guitar tracks"
    )
    parser.add_argument("--lengths", type=float, nargs="+", default=[30.0, 60.0, 120.0, 240.0])
    parser.add_argument(
        "--whole-up-to", type=float, default=120.0, help="longest signal scored whole"
    )
    parser.add_argument("--repeats", type=int, default=2, help="timed runs (best is kept)")
    parser.add_argument("--threads", type=int, default=1, help="torch/BLAS threads")
    return parser


def guitar_material(data: str, seconds: float) -> tuple[np.ndarray, np.ndarray]:
    """Guitar and rest of demo tracks joined end to end to at least ``seconds``. Shape ``(1, n)``."""
    inst, rest, total = [], [], 0
    for track in slakh_tracks(data):
        if "guitar" not in track.classes:
            continue
        pairs, _ = E.class_pairs(track, META, ["guitar"])
        if "guitar" in pairs:
            inst.append(pairs["guitar"][0])
            rest.append(pairs["guitar"][1])
            total += inst[-1].shape[1]
        if total >= seconds * SR:
            break
    if total < seconds * SR:
        raise SystemExit(f"{data}: not {seconds:g} s of guitar tracks")
    return np.concatenate(inst, axis=1), np.concatenate(rest, axis=1)


def cases(seconds: float, whole_up_to: float) -> list[tuple[str, str, ScoringConfig | None]]:
    out = []
    for backend in ("mir_eval", "fast"):
        if seconds <= whole_up_to:
            out.append(("whole", backend, None))
        out.append(("full (30-s segments)", backend, ScoringConfig(mode="full", backend=backend, segment_seconds=30.0)))  # type: ignore[arg-type]
        out.append(("windowed (1 s)", backend, ScoringConfig(mode="windowed", backend=backend)))  # type: ignore[arg-type]
    return out


def run_case(refs: np.ndarray, ests: np.ndarray, backend: str, spec: ScoringConfig | None) -> dict:
    if spec is None:
        return metrics.bss_eval(refs, ests, backend)  # type: ignore[arg-type]
    return S.score(refs, ests, SR, spec)


def main(argv: list[str] | None = None) -> int:
    args = get_parser().parse_args(argv)
    torch.set_num_threads(args.threads)
    inst_all, rest_all = guitar_material(args.data, max(args.lengths))
    print("| audio | case | mir_eval s/min | fast_bss_eval s/min | max |diff| dB |")
    print("|---|---|---|---|---|")
    for seconds in args.lengths:
        n = int(seconds * SR)
        inst, rest = inst_all[:, :n], rest_all[:, :n]
        irm = E.estimates(inst, rest, N_FFT, HOP)["irm"]
        refs, ests = np.stack([inst, rest]), np.stack([irm["instrument"], irm["rest"]])
        rows: dict[str, dict[str, tuple[float, dict]]] = {}
        for label, backend, spec in cases(seconds, args.whole_up_to):
            best, scores = float("inf"), {}
            for _ in range(args.repeats):
                t0 = time.process_time()
                scores = run_case(refs, ests, backend, spec)
                best = min(best, time.process_time() - t0)
            rows.setdefault(label, {})[backend] = (best / (seconds / 60.0), scores)
        for label, by in rows.items():
            diff = max(
                float(np.max(np.abs(by["fast"][1][m] - by["mir_eval"][1][m])))
                for m in metrics.METRICS
            )
            print(f"| {seconds:g} s | {label} | {by['mir_eval'][0]:.2f} | {by['fast'][0]:.2f} | {diff:.3f} |",
                  flush=True)  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
