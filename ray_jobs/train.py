"""train: a separator or activation model on prepared shards, or the composer on note sequences, with Ray Train.

    sep train -c configs/train_hourglass_cpu_small.yaml
    sep train -c configs/train_hourglass.yaml scaling.num_workers=4 scaling.use_gpu=true
    sep train -c configs/train_composer_cpu_small.yaml output=file:///tmp/composer

See docs/train.md and docs/compose.md. The trainer is :func:`ray_jobs.trainer.build_trainer`; the per-worker
loop is :mod:`sepcore.train.worker`.
"""

from __future__ import annotations

import logging
import sys
import threading
from typing import Any, Literal

from pydantic import Field, model_validator

from ray_jobs.common import Job, JobConfig
from ray_jobs.trainer import build_composer_trainer, build_trainer
from sepcore.compose.data import SequencesConfig
from sepcore.errors import SepError
from sepcore.io import storage
from sepcore.train import outputs as O
from sepcore.train.config import (
    GanConfig,
    LoaderConfig,
    ModelConfig,
    OptimConfig,
    ScalingConf,
    ValidationConfig,
)
from sepcore.train.worker import epoch_line

log = logging.getLogger("sep.train")


class TrainConfig(JobConfig):
    data: str | None = Field(
        None, description="URI of prepared data (the output of sep prepare); every model but the composer"
    )
    sequences: SequencesConfig = Field(
        default_factory=lambda: SequencesConfig.model_validate({}),
        description="composer: where its note sequences come from and their grid (docs/compose.md)",
    )
    window: int = Field(384, ge=8, description="composer: steps of a training window (longer pieces: a random "
                        "bar-aligned window per epoch)")
    targets: list[str] | None = Field(
        None, description="stems a separator learns besides other (default: the data's targets; data "
        "prepared with targets: [...] only)"
    )
    wiener_iterations: int = Field(
        1, ge=0, description="several stems: Wiener-filter iterations separate and evaluate use by default "
        "with this model (0: masks only)"
    )
    model: ModelConfig = Field(default_factory=ModelConfig)
    optim: OptimConfig = Field(default_factory=OptimConfig)
    loader: LoaderConfig = Field(default_factory=LoaderConfig)
    validation: ValidationConfig = Field(default_factory=ValidationConfig)
    scaling: ScalingConf = Field(default_factory=ScalingConf)
    styles: list[str] | None = Field(
        None, description="train on the tracks of these styles only (metadata.yaml's style; Slakh-layout "
        "data): a per-style model (null: every track)"
    )
    stage: Literal[1, 2] = Field(
        1, description="unet_gan: 1 trains the generator with the supervised loss, 2 adversarially against a "
        "critic (gan section), starting from init_from"
    )
    init_from: str | None = Field(
        None, description="start the weights from this checkpoint or training output (the same model and "
        "sizes; its optimiser state is not taken); unet_gan stage 2: stage 1's output"
    )
    gan: GanConfig = Field(default_factory=lambda: GanConfig.model_validate({}))
    keep_checkpoints: int = Field(3, ge=1, description="best checkpoints kept")
    max_failures: int = Field(1, ge=0, description="worker failures recovered automatically")
    seed: int = Field(0)
    resume: bool = Field(
        True, description="continue the run already in output (same settings); false: discard it and start fresh"
    )

    @model_validator(mode="after")
    def _check(self) -> TrainConfig:
        from sepcore.train.loop import TASK_OF_MODEL

        if self.model.name == "composer":
            if self.data is not None or self.stage != 1 or self.init_from or self.styles or self.targets:
                raise ValueError("the composer trains on note sequences (the sequences section): data, targets, "
                                 "styles, stage and init_from are for the separators")  # fmt: skip
            if self.validation.metric != "val_loss":
                raise ValueError("the composer is selected by val_loss (its held-out log-likelihood)")
            return self
        if self.data is None:
            raise ValueError(f"data: the URI of prepared data is required to train {self.model.name}")
        if self.validation.metric == "val_sdr" and TASK_OF_MODEL[self.model.name] != "separator":
            raise ValueError("validation.metric val_sdr is for separators; use val_loss")
        if self.model.name in ("frame_dnn", "mask_dnn", "unet_gan") and self.model.log_input:
            raise ValueError(f"{self.model.name} takes linear magnitudes (it scales its input itself): "
                             "set model.log_input: false")
        if TASK_OF_MODEL[self.model.name] != "separator" and (self.targets or self.loader.active
                                                             or self.loader.snippets_per_song):  # fmt: skip
            raise ValueError("targets and loader are for separators (hourglass, blstm, frame_dnn, mask_dnn)")
        if self.stage == 2 and self.model.name != "unet_gan":
            raise ValueError(f"stage 2 (adversarial) is for unet_gan, not {self.model.name}")
        if self.stage == 2 and not self.init_from:
            raise ValueError("stage 2 starts from stage 1's weights: set init_from=<stage-1 output>")
        if self.init_from and storage.normalize_uri(self.init_from) == storage.normalize_uri(self.output):
            raise ValueError("init_from is this run's own output: give the new stage an output of its own "
                             "(output=...)")
        if self.targets is not None and (not self.targets or len(set(self.targets)) != len(self.targets)):
            raise ValueError(f"targets must be distinct classes, got {self.targets}")
        return self


def follow_epochs(output: str, epochs: int, stop: threading.Event, every_s: float = 2.0) -> None:
    """Log each epoch as ``metrics.jsonl`` grows (the workers' own lines stay in Ray's logs)."""
    seen = len(O.read_history(output))  # epochs of a resumed run
    while not stop.wait(every_s):
        try:
            history = O.read_history(output)
        except (SepError, ValueError):  # being rewritten
            continue
        for row in history[seen:]:
            log.info("train epoch %d/%d: %s", row["epoch"] + 1, epochs, epoch_line(row))
        seen = max(seen, len(history))


def run(cfg: TrainConfig) -> dict[str, Any]:
    import ray.train

    output = storage.normalize_uri(cfg.output)
    if not cfg.resume:
        for name in O.RUN_OUTPUTS:
            storage.delete(storage.join(output, name), recursive=True)
    trainer = build_composer_trainer(cfg) if cfg.model.name == "composer" else build_trainer(cfg)
    stop = threading.Event()
    follower = threading.Thread(target=follow_epochs, args=(output, cfg.optim.epochs, stop), daemon=True)
    follower.start()
    try:
        trainer.fit()
    except ray.train.TrainingFailedError as exc:
        raise SepError(f"{output}: training failed after {cfg.max_failures} recoveries: {exc}") from exc
    finally:
        stop.set()
        follower.join()
    return O.finish(output, cfg.validation.metric)


JOB = Job("train", TrainConfig, run, "Train a separation or activation model with Ray Train.")
main = JOB.main

if __name__ == "__main__":
    sys.exit(main())
