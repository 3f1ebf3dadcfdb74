"""The train job's configuration sections, used by ``ray_jobs.train`` and by the library."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, model_validator

from sepcore.config import Config

#: Settings that may change when a run is continued (raising optim.epochs is how it is
#: continued); any other difference from the checkpoints' settings is refused.
RESUMABLE_CHANGES = ("optim.epochs", "optim.early_stopping_patience", "optim.max_minutes", "scaling.*",
                     "max_failures", "keep_checkpoints", "num_cpus", "output", "resume", "loader.cache_mb")  # fmt: skip


class ModelConfig(Config):
    name: Literal["hourglass", "blstm", "activation_cnn", "frame_dnn", "mask_dnn", "unet_gan", "composer"] = Field(
        "hourglass", description="registered model (composer: the note-sequence LSTM, trained on sequences)")
    config: dict[str, Any] = Field(
        default_factory=dict,
        description="constructor arguments; sizes of the data (bins, channels, classes, frames) are filled in",
    )
    log_input: bool = Field(True, description="feed log1p(magnitude) to separators")
    input_stats: bool = Field(
        True, description="blstm: start its input scaling from the training data's per-bin mean and "
        "standard deviation (Open-Unmix's scaler), measured on up to input_stats_rows rows"
    )
    input_stats_rows: int = Field(512, ge=1, description="training rows measured for input_stats")
    init: Literal["ls", "random"] = Field(
        "ls", description="frame_dnn: start its target-width layers from the least-squares solution over the "
        "training set (seed 000), or all layers at random"
    )
    ls_ridge: float = Field(1e-3, ge=0, description="frame_dnn, init ls: ridge lambda (times trace(C_xx) / dim)")

    @model_validator(mode="after")
    def _check_arguments(self) -> ModelConfig:
        import inspect

        from sepcore.models import MODELS

        try:
            inspect.signature(MODELS[self.name]).bind_partial(**self.config)
        except TypeError as exc:  # an unknown or doubled argument: name it now, not in each worker
            raise ValueError(f"config: {exc} (model {self.name})") from None
        return self


class OptimConfig(Config):
    epochs: int = Field(10, ge=1)
    batch_size: int = Field(4, ge=1, description="per worker")
    lr: float = Field(1e-4, gt=0, description="Adam learning rate")
    weight_decay: float = Field(0.0, ge=0)
    loss: Literal["l1", "mse"] = Field("l1", description="l1 (seed 002) or mse (Open-Unmix) of the masked mixture")
    scheduler: Literal["none", "plateau"] = Field("none", description="plateau: divide lr on stale epochs")
    plateau_factor: float = Field(0.2, gt=0, lt=1, description="lr multiplier (0.2 = divide by 5)")
    plateau_patience: int = Field(8, ge=0)
    min_lr: float = Field(1e-5, ge=0)
    early_stopping_patience: int = Field(10, ge=1, description="stop after this many stale epochs")
    max_steps_per_epoch: int | None = Field(None, ge=1, description="cap the steps of an epoch")
    amp: bool = Field(True, description="automatic mixed precision (GPU only)")
    clip_grad_norm: float | None = Field(None, gt=0, description="clip the gradients' global norm (null: off)")
    max_minutes: float | None = Field(
        None, gt=0, description="wall-time budget of the training loop: the epoch in progress ends early, "
        "is validated and saved, and training stops (null: no limit)"
    )


class CriticConfig(Config):
    """The adversarial stage's critic (:class:`sepcore.models.unet_gan.Critic`)."""

    filters: list[int] = Field([16, 32, 64, 64], min_length=4, max_length=4,
                               description="output channels of its four stride-2 convs")  # fmt: skip
    kernel: int = Field(5, ge=1, description="their kernel size (odd)")
    dense: int = Field(32, ge=1, description="units of the dense layer before the linear output (seed 004: 32)")
    conditional: bool = Field(False, description="the critic also sees the mixture (seed 004: drums only)")

    @model_validator(mode="after")
    def _check(self) -> CriticConfig:
        if self.kernel % 2 == 0 or min(self.filters) < 1:
            raise ValueError(f"critic: kernel must be odd and filters >= 1, got {self.kernel}, {self.filters}")
        return self


class GanConfig(Config):
    """Stage 2 of unet_gan: WGAN-GP against a critic, the supervised loss kept as a term
    (see sepcore/train/gan.py). Stage 1 ignores it."""

    critic: CriticConfig = Field(default_factory=lambda: CriticConfig.model_validate({}))
    critic_steps: int = Field(5, ge=1, description="critic steps per generator step (WGAN-GP, DSSGAN: 5)")
    gp_weight: float = Field(10.0, ge=0, description="gradient penalty weight (WGAN-GP, DSSGAN: 10)")
    supervised_weight: float = Field(1.0, ge=0, description="weight of the supervised loss (optim.loss)")
    adversarial_weight: float = Field(0.001, ge=0, description="weight of the generator's adversarial loss")
    critic_lr: float = Field(1e-4, gt=0, description="the critic's Adam learning rate")
    betas: tuple[float, float] = Field((0.5, 0.9), description="the critic's Adam betas (WGAN-GP: 0.5, 0.9)")


class LoaderConfig(Config):
    """What each training batch is made of (separators): random excerpts of the prepared chunks and
    augmentations that are exact on magnitudes. Validation batches are never changed."""

    excerpt_frames: int | None = Field(
        None, ge=1, description="train on a random excerpt of this many frames of each chunk, drawn anew "
        "each time (null: whole chunks)"
    )
    gain_db: tuple[float, float] | None = Field(
        None, description="[lo, hi]: scale each example (mixture and targets alike) by a gain drawn in dB"
    )
    channel_swap: float = Field(0.0, ge=0, le=1, description="probability of swapping an example's channels")
    snippets_per_song: int | None = Field(
        None, ge=1, description="train on this many chunks of each training song, drawn at random once per run "
        "(seed): the same rows every epoch; songs with fewer chunks keep all (seed 000: 100; null: all)"
    )
    cache_mb: float = Field(
        2048.0, ge=0, description="each worker reads its share of the splits once and holds it in memory (the "
        "stored dtype) when that is at most this many MiB; its epochs then draw batches from memory in a new "
        "random order each time (0: read and decode the shards every epoch)"
    )

    @model_validator(mode="after")
    def _check(self) -> LoaderConfig:
        if self.gain_db is not None and self.gain_db[0] > self.gain_db[1]:
            raise ValueError(f"loader.gain_db: lo {self.gain_db[0]} exceeds hi {self.gain_db[1]}")
        return self

    @property
    def active(self) -> bool:
        """Whether batches are changed at all."""
        return self.excerpt_frames is not None or self.gain_db is not None or self.channel_swap > 0


class ValidationConfig(Config):
    sdr_tracks: int = Field(3, ge=0, description="validation tracks separated for SDR (separators; 0 = off)")
    metric: Literal["val_loss", "val_sdr"] = Field("val_loss", description="selects the best checkpoint")
    max_steps: int | None = Field(
        None, ge=1, description="measure the validation loss on the first max_steps x batch_size x workers "
        "rows of the validation split (in shard order): the same rows every epoch"
    )

    @model_validator(mode="after")
    def _check(self) -> ValidationConfig:
        if self.metric == "val_sdr" and self.sdr_tracks == 0:
            raise ValueError("metric val_sdr needs sdr_tracks > 0 (with no SDR tracks there is no val_sdr)")
        return self


class ScalingConf(Config):
    num_workers: int = Field(1, ge=1)
    use_gpu: bool = Field(False)
    cpus_per_worker: float = Field(
        1.0, gt=0, description="CPUs reserved per worker; leave some for Ray Data's reading tasks"
    )
    gpus_per_worker: float = Field(1.0, gt=0, description="with use_gpu")
    threads: int | None = Field(None, ge=1, description="torch threads per worker (default: CPUs, at least 1)")

    def worker_resources(self) -> dict[str, float]:
        """Resources one worker holds: ``cpus_per_worker`` CPUs and, with ``use_gpu``, ``gpus_per_worker`` GPUs."""
        return {"CPU": self.cpus_per_worker, **({"GPU": self.gpus_per_worker} if self.use_gpu else {})}
