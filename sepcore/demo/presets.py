"""Settings of each stage of ``sep demo``, by size: ``full`` (the default) and ``quick`` (CI).

Each entry is part of one job's config (the YAML keys of ``sep <job>``); the demo lays
the user's ``stages.*`` keys and the keys it fixes itself (outputs, seed, split) on top.
"""

from __future__ import annotations

import copy
from typing import Any, TypeVar

from pydantic import BaseModel, ValidationError

from sepcore.data.classes import CLASSES
from sepcore.errors import ConfigError

C = TypeVar("C", bound=BaseModel)

_HOURGLASS_SMALL = {"filters": 8, "levels": 3, "dropout": 0.1, "initial_channels": [4, 4, 4, 4, 8],
                    "final_channels": 8}  # fmt: skip
_SCALING = {"num_workers": 1, "use_gpu": False, "cpus_per_worker": 1, "threads": 2}
_ACTIVATION_PREPARE = {"target": "random_mix", "outputs": ["activations"],
                       "features": {"name": "logmel", "n_fft": 1024, "hop": 512, "n_mels": 128,
                                    "fmin": 27.5, "fmax": 20000},
                       "chunks": {"frames": 16},
                       "random_mix": {"segment_seconds": 3.0, "epochs": 1}}  # fmt: skip

#: The demo renders a slice of the band corpus (configs/render_band.yaml's fonts);
#: ``stages.render.midi=demo`` renders the chorale corpus instead.
_BAND_FONTS = {"soundfonts": ["fluidr3", "timgm6mb", "opl3"], "stem_loudness_lufs": -20.0}

#: Settings of each stage, by size. ``sep demo stages.hourglass.optim.epochs=6`` and the
#: like override single keys. ``full`` is planned for 15 minutes on 2 cores
#: (docs/demo.md); ``quick`` is the CI smoke run.
PRESETS: dict[str, dict[str, Any]] = {
    "full": {
        "tracks": 32,
        "split": {"train": 0.7, "validation": 0.1, "test": 0.2},
        "render": {"midi": "band", "band": {"seconds": 35.0}, **_BAND_FONTS, "sample_rate": 22050, "channels": 1},
        "prepare": {"features": {"name": "stft", "n_fft": 1536, "hop": 384}, "chunks": {"frames": 64}},
        "hourglass": {"model": {"name": "hourglass", "config": _HOURGLASS_SMALL},
                      "optim": {"epochs": 4, "batch_size": 8, "lr": 0.002, "max_steps_per_epoch": 60},
                      "validation": {"sdr_tracks": 2, "metric": "val_sdr"}, "scaling": _SCALING},
        "blstm": {"model": {"name": "blstm", "config": {"hidden": 64, "layers": 3, "max_bin": 400}},
                  "optim": {"epochs": 5, "batch_size": 16, "lr": 0.001},
                  "validation": {"sdr_tracks": 2, "metric": "val_sdr"}, "scaling": _SCALING},
        "activation_prepare": _ACTIVATION_PREPARE,
        "activation_cnn": {"model": {"name": "activation_cnn", "config": {"filters": [16, 32, 64], "dropout": 0.1}},
                           "optim": {"epochs": 4, "batch_size": 32, "lr": 0.001, "weight_decay": 0.001,
                                     "max_steps_per_epoch": 60},
                           "validation": {"sdr_tracks": 0, "metric": "val_loss"}, "scaling": _SCALING},
        "separate": {"inference": {"batch_size": 8, "cpus_per_actor": 1, "threads": 1}},
        "evaluate": {"backend": "fast", "report": {"examples": 2, "audio_seconds": 15.0}},
        "classify": {},
    },
    "quick": {
        "tracks": 6,
        "split": {"train": 0.5, "validation": 0.25, "test": 0.25},
        "render": {"midi": "band", "band": {"seconds": 14.0}, **_BAND_FONTS, "sample_rate": 22050, "channels": 1},
        "prepare": {"features": {"name": "stft", "n_fft": 256, "hop": 128}, "chunks": {"frames": 16}},
        "hourglass": {"model": {"name": "hourglass", "config": {"filters": 8, "levels": 2, "dropout": 0.2,
                                                                  "initial_channels": [4, 8, 8, 8, 16],
                                                                  "final_channels": 16}},
                      "optim": {"epochs": 1, "batch_size": 8, "lr": 0.003, "max_steps_per_epoch": 4},
                      "validation": {"sdr_tracks": 1, "metric": "val_sdr"}, "scaling": _SCALING},
        "blstm": {"model": {"name": "blstm", "config": {"hidden": 16, "layers": 2, "max_bin": 64}},
                  "optim": {"epochs": 1, "batch_size": 8, "max_steps_per_epoch": 4},
                  "validation": {"sdr_tracks": 1, "metric": "val_sdr"}, "scaling": _SCALING},
        "activation_prepare": {**_ACTIVATION_PREPARE,
                               "features": {"name": "logmel", "n_fft": 512, "hop": 256, "n_mels": 32,
                                            "fmin": 27.5, "fmax": 11000}},
        "activation_cnn": {"model": {"name": "activation_cnn", "config": {"filters": [4, 4, 8], "dropout": 0.1}},
                           "optim": {"epochs": 1, "batch_size": 8, "max_steps_per_epoch": 4},
                           "validation": {"sdr_tracks": 0, "metric": "val_loss"}, "scaling": _SCALING},
        "separate": {"inference": {"batch_size": 8, "cpus_per_actor": 1, "threads": 1}},
        "evaluate": {"backend": "fast", "segment_seconds": 15.0,
                     "report": {"examples": 1, "audio_seconds": 4.0}},
        "classify": {"lightgbm": {"num_boost_round": 30, "early_stopping_rounds": 10, "min_data_in_leaf": 5},
                     "actors": {"feature": 1}},
    },
}  # fmt: skip

#: The keys of the demo's ``stages`` section: what each stage's overrides are part of.
STAGE_KEYS = {"render": "sep render keys", "prepare": "sep prepare keys (target shards)",
              "hourglass": "sep train keys of the hourglass", "blstm": "sep train keys of the BLSTM",
              "activation_prepare": "sep prepare keys (random mixes)",
              "activation_cnn": "sep train keys of the activation CNN", "separate": "sep separate keys",
              "evaluate": "sep evaluate keys", "classify": "sep classify keys"}  # fmt: skip


def deep_merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    """``base`` with ``over`` laid on top, recursively for nested mappings (copies)."""
    out = copy.deepcopy(base)
    for key, value in over.items():
        both = isinstance(value, dict) and isinstance(out.get(key), dict)
        out[key] = deep_merge(out[key], value) if both else copy.deepcopy(value)
    return out


def stage_config(cls: type[C], name: str, preset: dict[str, Any], overrides: dict[str, Any], fixed: dict[str, Any]) -> C:
    """One stage's config: its ``preset``, the user's ``stages.<name>`` keys, then what the demo fixes.

    A key that does not validate is a :class:`ConfigError` named ``stages.<name>.<key>``,
    which passes through pydantic to the CLI (exit 2).
    """
    try:
        return cls.model_validate(deep_merge(deep_merge(preset, overrides), fixed))
    except ValidationError as exc:
        err = exc.errors()[0]
        problem = "unknown key" if err["type"] == "extra_forbidden" else err["msg"]
        raise ConfigError(f"stages.{name}." + ".".join(str(p) for p in err["loc"]), problem) from None


def check_demo(target: str, split: Any) -> None:
    """The demo's own keys: a known ``target``, and ``split`` fractions (when given) that sum to 1."""
    if target not in CLASSES:
        raise ValueError(f"unknown target '{target}'; known: {list(CLASSES)}")
    if split and abs(split.train + split.validation + split.test - 1) > 1e-6:
        raise ValueError("split fractions must sum to 1")
