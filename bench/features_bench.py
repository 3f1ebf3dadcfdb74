"""Time each feature with each backend: x real-time per CPU core on a stereo signal.

Usage: ``python bench/features_bench.py [--seconds 60] [--repeats 5] [--threads 1]``

"x real-time per core" = seconds of (stereo) audio / CPU seconds of this process
(``time.process_time``), best of ``--repeats`` runs after one warm-up run. CPU time,
not wall time, so a busy machine changes the numbers little; with ``--threads 1``
(the default, the setting for several worker processes per machine) CPU and wall
time agree on an idle machine.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

# One thread per process, like a Ray worker with num_cpus=1 (set before numpy/torch load).
_THREADS = next((a.split("=", 1)[1] for a in sys.argv if a.startswith("--threads=")), "1")
for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, _THREADS)

import numpy as np  # noqa: E402
import torch  # noqa: E402

from sepcore.prepare.features import FeatureExtractor, make_feature  # noqa: E402

#: (label, feature name, parameters other than the backend)
CASES = [
    ("stft 1536/384 @22.05k", "stft", {"n_fft": 1536, "hop": 384, "sample_rate": 22050}),
    ("stft 2048/1024 @44.1k", "stft", {"n_fft": 2048, "hop": 1024, "sample_rate": 44100}),
    ("logmel 128 @44.1k", "logmel", {}),
    ("cqt 192 @44.1k", "cqt", {}),
]
BACKENDS = ("torch", "librosa")


def get_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=60.0, help="signal length")
    parser.add_argument("--repeats", type=int, default=5, help="timed runs (best is kept)")
    parser.add_argument("--threads", type=int, default=1, help="torch/BLAS threads")
    return parser


def test_signal(seconds: float, sample_rate: int, seed: int = 0) -> np.ndarray:
    """Stereo chord of sines plus noise, float32 ``(2, samples)``."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(round(seconds * sample_rate))) / sample_rate
    chord = sum(0.2 * np.sin(2 * np.pi * f * t) for f in (110.0, 220.0, 277.2, 329.6))
    noise = 0.05 * rng.standard_normal((2, t.size))
    return (chord + noise).astype(np.float32)


def best_cpu_seconds(features: dict[str, FeatureExtractor], x: np.ndarray, repeats: int):
    """Best CPU time per backend; backends alternate within each repeat so load drift is
    shared between them."""
    for feature in features.values():
        feature(x)  # warm-up: caches (windows, filter banks), allocator
    best = dict.fromkeys(features, float("inf"))
    for _ in range(repeats):
        for backend, feature in features.items():
            start = time.process_time()
            feature(x)
            best[backend] = min(best[backend], time.process_time() - start)
    return best


def main(argv: list[str] | None = None) -> int:
    args = get_parser().parse_args(argv)
    torch.set_num_threads(args.threads)
    print(f"{args.seconds:g} s stereo, {args.threads} thread(s), best of {args.repeats}")
    print(f"{'feature':<24}" + "".join(f"{b:>12}" for b in BACKENDS) + "   (x real-time per core)")
    for label, name, params in CASES:
        features = {}
        for backend in BACKENDS:
            try:
                features[backend] = make_feature(name, backend=backend, **params)
            except ValueError:  # backend not available for this feature
                continue
        x = test_signal(args.seconds, next(iter(features.values())).sample_rate)
        best = best_cpu_seconds(features, x, args.repeats)
        cells = [
            f"{args.seconds / best[b]:>12.0f}" if b in best else f"{'n/a':>12}" for b in BACKENDS
        ]
        print(f"{label:<24}" + "".join(cells), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
