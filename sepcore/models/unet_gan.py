"""The drums U-Net generator and its critic (seed 004; SPEC.md "Models").

**Generator** (:class:`UNetGenerator`, registered as ``unet_gan``): a spectrogram U-Net
in the layout of Jansson et al. (2017), the generator of the drum-separation GANs seed 004
follows. The input magnitude is compressed with ``log1p`` inside the model (train with
``model.log_input: false``), zero-padded up to a multiple of ``2 ** len(filters)`` bins
and frames (any size works, odd ones included) and goes through

* an **encoder** of ``len(filters)`` strided convs (``kernel`` x ``kernel``, stride 2,
  "same" padding): conv -> BatchNorm -> LeakyReLU(0.2), each halving bins and frames;
* a **decoder** of as many transposed convs (stride 2, doubling the size back): the
  first ``len(filters) - 1`` are deconv -> BatchNorm -> ReLU, with dropout ``dropout``
  after the first ``dropout_layers`` of them; each takes the previous decoder output
  concatenated with the encoder output of the same size (the skip connections); the
  last one maps to ``sources * channels`` maps;
* a **sigmoid** (one source: the drums' mask) or a softmax over sources, cropped back to
  the input's size. The estimate is ``mask * mix`` as for every mask model.

With ``hpss`` set (``{margin, kernel_size}``), the percussive part of the mixture
magnitude (librosa's median-filtering HPSS, :func:`sepcore.separate.hpss.percussive_magnitude`,
computed inside the model so training, separation and evaluation see the same input) is
fed as extra input channels beside the mixture: ``2 * channels`` input channels.

**Critic** (:class:`Critic`): the discriminator of the adversarial stage. Seed 004's slide
lists "4x2 conv, 32 dense activations, single linear output"; read here as four
stride-2 convs (LeakyReLU 0.2, no normalisation: the gradient penalty is per example),
a mean over bins and frames, a dense layer of 32 units (LeakyReLU) and one linear output,
a WGAN critic's score. It takes ``log1p`` drum magnitudes ``(batch, channels, bins,
frames)``; ``conditional`` critics also see the mixture (``2 * channels`` input channels).
The critic is not part of the separator: its weights and optimiser travel in the
checkpoint's training state (:mod:`sepcore.train.gan`).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

#: Negative slope of the encoder's and the critic's LeakyReLUs (Jansson et al., 2017).
LEAKY = 0.2


def _check_hpss(hpss: dict[str, Any] | None) -> dict[str, Any] | None:
    if hpss is None:
        return None
    from sepcore.separate.hpss import check_hpss

    unknown = set(hpss) - {"margin", "kernel_size"}
    if unknown:
        raise ValueError(f"hpss takes margin and kernel_size, got {sorted(unknown)}")
    margin, kernel_size = hpss.get("margin", 1.0), hpss.get("kernel_size", 31)
    check_hpss(margin, kernel_size)
    return {"margin": float(margin), "kernel_size": int(kernel_size)}


class UNetGenerator(nn.Module):
    """The drums U-Net (module docstring).

    Args:
        channels: channels of the mixture magnitude (1 mono, 2 stereo); one mask per channel.
        sources: masks predicted; 1: a sigmoid mask (the drums), more: a softmax over sources.
        filters: output channels of the encoder's convs, top to bottom (Jansson et al.:
            16, 32, 64, 128, 256, 512); the decoder mirrors them.
        kernel: conv and deconv kernel size (odd; Jansson et al.: 5).
        dropout: dropout rate after the first ``dropout_layers`` decoder convs (0.5).
        dropout_layers: decoder convs followed by dropout (3).
        hpss: ``{"margin", "kernel_size"}``: feed the mixture's percussive part as extra
            input channels; None: the mixture only.
    """

    def __init__(self, channels: int = 1, sources: int = 1, filters: Sequence[int] = (16, 32, 64, 128, 256, 512),
                 kernel: int = 5, dropout: float = 0.5, dropout_layers: int = 3,
                 hpss: dict[str, Any] | None = None):  # fmt: skip
        super().__init__()
        filt = [int(f) for f in filters]
        if not filt or min(filt) < 1 or min(channels, sources) < 1:
            raise ValueError(f"channels, sources and every filters entry must be >= 1, got channels={channels}, "
                             f"sources={sources}, filters={filt}")  # fmt: skip
        if kernel < 1 or kernel % 2 == 0:
            raise ValueError(f"kernel must be odd and >= 1, got {kernel}")
        if not 0 <= dropout < 1 or dropout_layers < 0:
            raise ValueError(f"dropout must be in [0, 1) and dropout_layers >= 0, got {dropout}, {dropout_layers}")
        hp = _check_hpss(hpss)
        self.config = dict(channels=channels, sources=sources, filters=filt, kernel=kernel, dropout=dropout,
                           dropout_layers=dropout_layers, hpss=hp)  # fmt: skip
        self.in_channels, self.sources, self.hpss = channels, sources, hp
        pad = kernel // 2
        ins = [channels * (2 if hp else 1), *filt[:-1]]
        self.encoder = nn.ModuleList(
            nn.Sequential(nn.Conv2d(i, o, kernel, stride=2, padding=pad), nn.BatchNorm2d(o), nn.LeakyReLU(LEAKY))
            for i, o in zip(ins, filt, strict=True)
        )
        self.decoder = nn.ModuleList()
        depth = len(filt)
        for level in reversed(range(depth)):  # level: the encoder output this deconv brings back up from
            into = filt[level] if level == depth - 1 else 2 * filt[level]  # + the skip of that size
            last = level == 0
            out = sources * channels if last else filt[level - 1]
            layers: list[nn.Module] = [nn.ConvTranspose2d(into, out, kernel, stride=2, padding=pad, output_padding=1)]
            if not last:
                layers += [nn.BatchNorm2d(out), nn.ReLU()]
                if depth - 1 - level < dropout_layers and dropout > 0:
                    layers.append(nn.Dropout2d(dropout))
            self.decoder.append(nn.Sequential(*layers))

    @property
    def multiple(self) -> int:
        """Inputs are padded up to a multiple of this many bins and frames: ``2 ** len(filters)``."""
        return 2 ** len(self.encoder)

    def features(self, mix_mag: torch.Tensor) -> torch.Tensor:
        """The network's input: ``log1p`` of the mixture (and of its percussive part with ``hpss``).

        Shape: ``(batch, channels, bins, frames)`` -> ``(batch, channels or 2 * channels, bins, frames)``.
        """
        if mix_mag.ndim != 4 or mix_mag.shape[1] != self.in_channels:
            raise ValueError(f"UNetGenerator expects (batch, channels={self.in_channels}, bins, frames), "
                             f"got shape {tuple(mix_mag.shape)}")  # fmt: skip
        x = mix_mag.float().clamp_min(0)
        if self.hpss is not None:
            from sepcore.separate.hpss import percussive_magnitude

            x = torch.cat([x, percussive_magnitude(x, self.hpss["margin"], self.hpss["kernel_size"])], dim=1)
        return torch.log1p(x)

    def forward(self, mix_mag: torch.Tensor) -> torch.Tensor:
        """The drums' mask (or the sources' masks) from the mixture magnitude.

        Shape: ``(batch, channels, bins, frames)`` -> the same (``sources == 1``, values in
        (0, 1)) or ``(batch, sources, channels, bins, frames)`` summing to 1 over sources;
        any bins and frames >= 1.
        """
        x = self.features(mix_mag)
        bins, frames = x.shape[-2:]
        m = self.multiple
        x = F.pad(x, (0, -frames % m, 0, -bins % m))
        skips = []
        for enc in self.encoder:
            x = enc(x)
            skips.append(x)
        h = self.decoder[0](skips[-1])
        for dec, skip in zip(self.decoder[1:], reversed(skips[:-1]), strict=True):
            h = dec(torch.cat([h, skip], dim=1))
        h = h[..., :bins, :frames]
        if self.sources == 1:
            return torch.sigmoid(h)
        batch = h.shape[0]
        return torch.softmax(h.reshape(batch, self.sources, self.in_channels, bins, frames), dim=1)


class Critic(nn.Module):
    """The adversarial stage's critic (module docstring): four stride-2 convs, a dense layer of
    ``dense`` units and one linear output.

    Args:
        channels: channels of the drum magnitude it scores.
        filters: output channels of the four convs.
        kernel: their kernel size (odd).
        dense: units of the dense layer (seed 004: 32).
        conditional: also take the mixture (``2 * channels`` input channels).
    """

    def __init__(self, channels: int = 1, filters: Sequence[int] = (16, 32, 64, 64), kernel: int = 5,
                 dense: int = 32, conditional: bool = False):  # fmt: skip
        super().__init__()
        filt = [int(f) for f in filters]
        if len(filt) != 4 or min(filt) < 1 or min(channels, dense) < 1 or kernel < 1 or kernel % 2 == 0:
            raise ValueError(f"Critic takes four filters >= 1, an odd kernel, channels and dense >= 1; got "
                             f"filters={filt}, kernel={kernel}, channels={channels}, dense={dense}")  # fmt: skip
        self.config = dict(channels=channels, filters=filt, kernel=kernel, dense=dense, conditional=conditional)
        self.channels, self.conditional = channels, conditional
        ins = [channels * (2 if conditional else 1), *filt[:-1]]
        self.convs = nn.Sequential(*(
            layer for i, o in zip(ins, filt, strict=True)
            for layer in (nn.Conv2d(i, o, kernel, stride=2, padding=kernel // 2), nn.LeakyReLU(LEAKY))
        ))  # fmt: skip
        self.dense = nn.Sequential(nn.Linear(filt[-1], dense), nn.LeakyReLU(LEAKY), nn.Linear(dense, 1))

    def forward(self, drums: torch.Tensor, mix: torch.Tensor | None = None) -> torch.Tensor:
        """The score of each example (higher: more like real drums).

        Shape: ``drums`` (and ``mix`` when conditional) ``(batch, channels, bins, frames)``,
        ``log1p`` magnitudes -> ``(batch,)``.
        """
        if drums.ndim != 4 or drums.shape[1] != self.channels:
            raise ValueError(f"Critic expects (batch, channels={self.channels}, bins, frames), got {tuple(drums.shape)}")
        if self.conditional:
            if mix is None or mix.shape != drums.shape:
                raise ValueError("a conditional Critic needs the mixture, shaped as the drums")
            drums = torch.cat([drums, mix], dim=1)
        h = self.convs(drums).mean(dim=(2, 3))
        return self.dense(h).squeeze(1)


def gradient_penalty(critic: nn.Module, real: torch.Tensor, fake: torch.Tensor,
                     mix: torch.Tensor | None = None) -> torch.Tensor:  # fmt: skip
    """WGAN-GP's penalty (Gulrajani et al., 2017): ``mean((||grad critic(x)||_2 - 1) ** 2)`` at
    ``x`` drawn uniformly on the segments between real and fake examples (one point each);
    differentiable with respect to the critic's weights.

    Shape: ``real``, ``fake`` (and ``mix``) ``(batch, channels, bins, frames)`` -> scalar.
    """
    if real.shape != fake.shape:
        raise ValueError(f"real and fake examples differ in shape: {tuple(real.shape)} vs {tuple(fake.shape)}")
    eps = torch.rand(real.shape[0], *([1] * (real.ndim - 1)), device=real.device, dtype=real.dtype)
    x = (eps * real.detach() + (1 - eps) * fake.detach()).requires_grad_(True)
    score = critic(x, mix) if mix is not None else critic(x)
    (grad,) = torch.autograd.grad(score.sum(), x, create_graph=True)
    return ((grad.flatten(1).norm(dim=1) - 1.0) ** 2).mean()
