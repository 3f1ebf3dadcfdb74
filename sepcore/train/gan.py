"""The adversarial stage of the drums U-Net (seed 004's second stage), without Ray.

Stage 1 trains the generator alone with the supervised loss (the ordinary separator
path of :mod:`sepcore.train.loop`). Stage 2 starts from stage 1's weights and trains it
against a :class:`~sepcore.models.unet_gan.Critic` with WGAN-GP (Gulrajani et al., 2017;
the DSSGAN drum-separation work used it): for every generator step, ``critic_steps`` critic
steps on the same batch, each minimising

    critic(fake) - critic(real) + gp_weight * gradient_penalty

where real examples are the target's magnitudes and fake ones the generator's estimates
``mask * mix`` (both through ``log1p``, the critic's input space), then one generator step
minimising

    supervised_weight * supervised + adversarial_weight * (-critic(fake))

with the supervised loss of stage 1 (``optim.loss`` of the masked mixture) kept as a term.
The loss an epoch reports (``train_loss``) is the supervised part, comparable with stage 1's
and with ``val_loss``; the adversarial figures go beside it (:meth:`GanStep.figures`).

The critic and its Adam optimiser are this module's: their state travels in the
checkpoint's training state (``model.pt``'s ``optimizer`` entry, keys ``critic`` and
``critic_optimizer``) beside the generator's optimiser, so a stage-2 run resumes all four.
With several workers the critic's gradients are averaged over them before each step (the
generator's by DistributedDataParallel).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from sepcore.models.losses import MaskLoss, mask_loss
from sepcore.models.unet_gan import Critic, gradient_penalty

#: Keys of the critic's state in a checkpoint's training state.
CRITIC, CRITIC_OPTIMIZER = "critic", "critic_optimizer"


def _critic_input(magnitude: torch.Tensor) -> torch.Tensor:
    """The critic's input space: ``log1p`` of a (non-negative) magnitude, in float32."""
    return torch.log1p(magnitude.float().clamp_min(0))


class GanStep:
    """One stage-2 training step at a time (module docstring); holds the critic and its optimiser.

    ``model``: the generator as trained (possibly DistributedDataParallel); ``optimizer``: its
    Adam. ``gan``: the ``gan`` section of the train config (:class:`sepcore.train.config.GanConfig`
    as a dict). ``channels``: the mixture's channels.
    """

    def __init__(self, model: nn.Module, optimizer: torch.optim.Optimizer, gan: dict[str, Any], channels: int,
                 device: torch.device | str = "cpu", world: int = 1, loss: MaskLoss = "mse"):  # fmt: skip
        self.model, self.optimizer, self.gan, self.world, self.loss = model, optimizer, gan, world, loss
        c = gan["critic"]
        self.critic = Critic(channels=channels, filters=c["filters"], kernel=c["kernel"], dense=c["dense"],
                             conditional=c["conditional"]).to(device)  # fmt: skip
        self.critic_optimizer = torch.optim.Adam(self.critic.parameters(), lr=gan["critic_lr"], betas=tuple(gan["betas"]))
        self._sums: dict[str, float] = {}
        self._steps = 0

    def state_dict(self) -> dict[str, Any]:
        """The critic's weights and optimiser state (merged into the checkpoint's training state)."""
        return {CRITIC: self.critic.state_dict(), CRITIC_OPTIMIZER: self.critic_optimizer.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore what :meth:`state_dict` gave; a training state without a critic (a stage-1
        checkpoint) raises ValueError."""
        if CRITIC not in state or CRITIC_OPTIMIZER not in state:
            raise ValueError("the checkpoint holds no critic (a stage-1 checkpoint?); stage 2 resumes only "
                             "its own checkpoints")  # fmt: skip
        self.critic.load_state_dict(state[CRITIC])
        self.critic_optimizer.load_state_dict(state[CRITIC_OPTIMIZER])

    def _average_critic_gradients(self) -> None:
        if self.world == 1:
            return
        import torch.distributed as dist

        for p in self.critic.parameters():
            if p.grad is not None:
                dist.all_reduce(p.grad)
                p.grad /= self.world

    def __call__(self, batch: dict[str, torch.Tensor], columns: tuple[str, str]) -> torch.Tensor:
        """Train on one batch: ``critic_steps`` critic steps, then one generator step.

        Returns the batch's supervised loss (detached). Shapes: ``batch[mix]``, ``batch[target]``
        ``(batch, channels, bins, frames)``.
        """
        x, y = columns
        mix, target = batch[x], batch[y]
        with torch.no_grad():  # the generator is fixed during the critic's steps
            fake = self.model(mix) * mix
        real_in, fake_in = _critic_input(target), _critic_input(fake)
        cond = _critic_input(mix) if self.critic.conditional else None
        for _ in range(int(self.gan["critic_steps"])):
            self.critic_optimizer.zero_grad(set_to_none=True)
            wasserstein = self.critic(real_in, cond).mean() - self.critic(fake_in, cond).mean()
            gp = gradient_penalty(self.critic, real_in, fake_in, cond)
            critic_loss = -wasserstein + float(self.gan["gp_weight"]) * gp
            critic_loss.backward()
            self._average_critic_gradients()
            self.critic_optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        mask = self.model(mix)
        supervised = mask_loss(mask, mix, target, kind=self.loss)
        adversarial = -self.critic(_critic_input(mask * mix), cond).mean()
        total = float(self.gan["supervised_weight"]) * supervised + float(self.gan["adversarial_weight"]) * adversarial
        total.backward()
        self.critic_optimizer.zero_grad(set_to_none=True)  # the generator's step left gradients on the critic
        self.optimizer.step()
        for key, value in (("critic_loss", critic_loss), ("wasserstein", wasserstein), ("gradient_penalty", gp),
                           ("adversarial_loss", adversarial)):  # fmt: skip
            self._sums[key] = self._sums.get(key, 0.0) + float(value.detach())
        self._steps += 1
        return supervised.detach()

    def figures(self) -> dict[str, float]:
        """Means over the generator steps since the last call (this worker's): the critic's last
        loss of each step, its Wasserstein estimate ``critic(real) - critic(fake)``, the gradient
        penalty and the generator's adversarial loss; then starts counting again."""
        out = {k: v / self._steps for k, v in self._sums.items()} if self._steps else {}
        self._sums, self._steps = {}, 0
        return out
