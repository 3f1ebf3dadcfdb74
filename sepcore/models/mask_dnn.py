"""Binary-mask DNN with a confidence threshold α, after Simpson, Roma and Plumbley (2015,
"Deep Karaoke"; seed 003).

A feed-forward network sees a *window* of ``window`` consecutive frames of the lowest
``max_bin`` bins of the mixture magnitude (every channel), unpacked into one vector of
``channels * max_bin * window`` values, and predicts the target's ideal binary mask over
that same window: ``channels * max_bin * window`` sigmoid outputs. Hidden layers:
``layers`` fully connected layers of ``hidden`` sigmoid units (the paper's network is of
sigmoid layers; its input is 20 frames of 1,025 bins).

Input scaling. The network sees ``log1p(window / mean(window))``: each window is
divided by its mean magnitude (``+ 1e-8``), so the prediction does not change with the
mixture's level (nor does the ideal binary mask), then compressed. This is done
inside the model: the model is never wrapped in
:class:`~sepcore.models.checkpoint.LogMagnitude` (its configs set ``model.log_input:
false``; with ``true`` the network would see ``log1p`` of the magnitude and the train
loop could not reach :meth:`MaskDNN.training_loss`).

Windows of a chunk (:meth:`MaskDNN.forward`). The windows slide over the chunk's frames
with a hop of one frame and stay *inside* the chunk: a chunk of ``T >= window`` frames
has ``T - window + 1`` windows, and no window sees padding the chunk does not have (the
one apply already pads the signal's ends and stitches overlapping chunks). A chunk of
fewer than ``window`` frames is zero-padded at the back to ``window`` frames. The window
predictions that cover a time-frequency bin are averaged into the probabilistic mask
``M`` (seed 003's ``1/T sum_i S_{t+i,f}``): a frame ``t`` of the chunk is covered by
``min(t + 1, window, T - t, T - window + 1)`` windows.

Bins above ``max_bin`` get ``M = 0``: the target is taken to be absent there, and the
rest keeps the whole mixture (a fixed 1 would leak the whole mixture into the target up
there; the network predicts no mask for bins it does not see). Use ``max_bin = n_bins``
(the default) to model every bin.

Several sources (``sources > 1``, a multi-stem checkpoint: its stems are the targets,
then ``other``, the rest of the mixture). The output layer predicts ``sources * channels
* max_bin * window`` sigmoid units per window, one binary mask per source, and
:meth:`MaskDNN.forward` returns the probabilistic masks ``(batch, sources, channels,
n_bins, frames)``, each averaged over the windows as above. They are independent
sigmoids: they need not sum to 1 (the one apply makes the stems add up to the mixture).
Above ``max_bin`` the last source (``other``) gets ``M = 1`` and the others ``M = 0``:
the rest keeps the whole mixture there, as with one source.

Separation. The model's ``alpha`` (default 0.5) is its confidence threshold: the one apply
(:func:`sepcore.separate.apply.separate`) gives the target the binary mask ``M > alpha``
and the rest its complement ``M <= alpha``, so the two stems add up to the mixture
(seed 003's equation (1)). With several sources each source's mask is thresholded,
``M_k > alpha``, and the binary masks then go the one apply's way for several sources
(module :mod:`sepcore.separate.apply`, Binary masks): a bin several sources claim is
shared between them, a bin none claims goes to the last, ``other`` (the complement of
the targets, as with one source). :meth:`MaskDNN.forward` itself
returns ``M`` in [0, 1].

Training (:meth:`MaskDNN.training_loss`, called by :func:`sepcore.train.loop.batch_loss`):
binary cross-entropy of every window's prediction against the ideal binary mask of the
rows' target over that window, ``IBM = |S| > |X| - |S|``: the target's magnitude exceeds
the magnitude the rest is estimated to have (the mixture's minus the target's; the rows
hold the mixture and the target only), i.e. the target holds more than half the
mixture's magnitude in that bin (seed 003: "a '1' when vocal had greater magnitude").
With several sources every source ``k`` of the rows' ``targets`` gets its own
``IBM_k = |S_k| > |X| - |S_k|`` (``other`` included), and the loss is the mean over all
sources' windows. Only the bins the network sees (below ``max_bin``) are scored.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

#: Floor of a window's mean magnitude in the input scaling.
INPUT_FLOOR = 1e-8


def ideal_binary_mask(mix: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """The target's ideal binary mask from the mixture and target magnitudes: ``|S| > |X| - |S|``.

    The rest's magnitude is estimated as ``|X| - |S|`` (the rows hold no rest column), so
    a bin is the target's when it holds more than half the mixture's magnitude. Silent
    bins (both 0) are not the target's.
    Shape: any (both the same) -> the same, float 0/1.
    """
    if mix.shape != target.shape:
        raise ValueError(f"mix {tuple(mix.shape)} and target {tuple(target.shape)} differ in shape")
    return (target > mix - target).to(mix.dtype)


class MaskDNN(nn.Module):
    """Deep Karaoke's feed-forward binary-mask network, see the module docstring.

    Args:
        n_bins: frequency bins of the input spectrogram (e.g. 769 for n_fft 1536).
        channels: audio channels; the network sees (and masks) all of them at once.
        window: frames per window (the paper: 20).
        max_bin: bins that enter the network (default all); above, the mask is 0 (with
            several sources: 1 for the last, ``other``, 0 for the others).
        hidden: units per hidden layer.
        layers: hidden layers (sigmoid), at least 1.
        alpha: confidence threshold of the separation's binary masks, in [0, 1].
        sources: masks predicted: 1 (one target; the rest is the complement) or the
            stems of a multi-stem checkpoint (the targets, then ``other``).
    """

    def __init__(
        self,
        n_bins: int,
        channels: int = 1,
        window: int = 9,
        max_bin: int | None = None,
        hidden: int = 256,
        layers: int = 2,
        alpha: float = 0.5,
        sources: int = 1,
    ):
        super().__init__()
        max_bin = n_bins if max_bin is None else max_bin
        if not 1 <= max_bin <= n_bins:
            raise ValueError(f"max_bin must be in [1, n_bins={n_bins}], got {max_bin}")
        if window < 1 or hidden < 1 or layers < 1 or channels < 1:
            raise ValueError(f"window, hidden, layers and channels must be >= 1; got window={window}, "
                             f"hidden={hidden}, layers={layers}, channels={channels}")  # fmt: skip
        if not 0.0 <= alpha <= 1.0:
            raise ValueError(f"alpha must be in [0, 1], got {alpha}")
        if isinstance(sources, bool) or not isinstance(sources, int) or sources < 1:
            raise ValueError(f"mask_dnn needs sources >= 1 (1: one target and its complement), got {sources!r}")
        self.config = dict(n_bins=n_bins, channels=channels, window=window, max_bin=max_bin, hidden=hidden,
                           layers=layers, alpha=float(alpha), sources=sources)  # fmt: skip
        self.n_bins, self.channels, self.window, self.max_bin = n_bins, channels, window, max_bin
        self.alpha = float(alpha)
        self.sources = sources
        size = channels * max_bin * window
        widths = [size] + [hidden] * layers
        self.hidden_layers = nn.ModuleList(nn.Linear(a, b) for a, b in zip(widths[:-1], widths[1:], strict=True))
        self.output = nn.Linear(hidden, sources * size)

    def check_input(self, mix_mag: torch.Tensor) -> None:
        """Raise ValueError naming the sizes when ``mix_mag`` does not fit the model."""
        if mix_mag.ndim != 4 or mix_mag.shape[1] != self.channels or mix_mag.shape[2] != self.n_bins \
                or mix_mag.shape[3] < 1:  # fmt: skip
            raise ValueError(f"MaskDNN expects (batch, channels={self.channels}, bins={self.n_bins}, "
                             f"frames>=1), got shape {tuple(mix_mag.shape)}")  # fmt: skip

    def windows(self, x: torch.Tensor) -> torch.Tensor:
        """The chunk's windows (module docstring): hop 1 over the last (frames) axis, inside
        the chunk, a short chunk zero-padded at the back to ``window`` frames.

        Shape: ``(batch, [sources,] channels, bins, frames)`` -> ``(batch, n_windows,
        [sources,] channels, bins, window)`` with ``n_windows = max(frames, window) - window + 1``.
        """
        if x.shape[-1] < self.window:
            x = F.pad(x, (0, self.window - x.shape[-1]))
        return x.unfold(-1, self.window, 1).movedim(-2, 1)

    def logits(self, mix_mag: torch.Tensor) -> torch.Tensor:
        """The network's logits of every window's binary mask(s).

        Shape: ``(batch, channels, n_bins, frames)`` -> ``(batch, n_windows, channels,
        max_bin, window)`` (:meth:`windows`); with several sources ``(batch, n_windows,
        sources, channels, max_bin, window)``.
        """
        self.check_input(mix_mag)
        win = self.windows(mix_mag[:, :, : self.max_bin])
        batch, n_windows = win.shape[:2]
        x = win.reshape(batch * n_windows, -1)
        x = torch.log1p(x / (x.mean(dim=1, keepdim=True) + INPUT_FLOOR))
        for layer in self.hidden_layers:
            x = torch.sigmoid(layer(x))
        if self.sources == 1:
            return self.output(x).view(win.shape)
        return self.output(x).view(batch, n_windows, self.sources, *win.shape[2:])

    def average(self, probs: torch.Tensor, frames: int) -> torch.Tensor:
        """The probabilistic masks ``M``: window predictions averaged per bin; above
        ``max_bin`` 0 (with several sources: 1 for the last source, 0 for the others).

        Shape: ``(batch, n_windows, [sources,] channels, max_bin, window)`` -> ``(batch,
        [sources,] channels, n_bins, frames)``.
        """
        batch, n_windows, *lead, bins, window = probs.shape
        total = probs.new_zeros(batch, *lead, bins, n_windows + window - 1)
        count = probs.new_zeros(n_windows + window - 1)
        for i in range(window):  # window offset i of window w is frame w + i
            total[..., i : i + n_windows] += probs[..., i].movedim(1, -1)
            count[i : i + n_windows] += 1
        mask = F.pad((total / count)[..., :frames], (0, 0, 0, self.n_bins - bins))
        if probs.ndim == 6:  # several sources: the rest of the mixture above max_bin
            mask[:, -1, :, bins:] = 1.0
        return mask

    def forward(self, mix_mag: torch.Tensor, training_output: bool = False) -> torch.Tensor:
        """The probabilistic mask(s) ``M`` of a chunk, or with ``training_output`` the windows' logits.

        Shape: ``(batch, channels, n_bins, frames)`` -> ``(batch, channels, n_bins, frames)``
        in [0, 1], or ``(batch, sources, channels, n_bins, frames)`` with several sources;
        with ``training_output`` :meth:`logits`'s (logits, so that the loss is the
        numerically safe ``binary_cross_entropy_with_logits``, also under autocast).
        """
        logits = self.logits(mix_mag)
        if training_output:
            return logits
        return self.average(torch.sigmoid(logits), mix_mag.shape[-1])

    def training_loss(self, out: torch.Tensor, mix: torch.Tensor, target: torch.Tensor, kind: str = "l1") -> torch.Tensor:
        """Binary cross-entropy of the windows' logits ``out`` against the rows' ideal binary mask(s).

        The mask is :func:`ideal_binary_mask` of ``mix`` and ``target`` (with several
        sources: of ``mix`` and each source of ``target``) over the bins the network sees,
        cut into the same windows as :meth:`windows`; the mean over every window, source
        and bin. ``kind`` (the train config's ``optim.loss``, l1 or mse of a masked
        mixture) does not apply to a binary mask and is ignored.
        Shape: ``out`` as :meth:`logits` returns; ``mix`` ``(batch, channels, n_bins,
        frames)``; ``target`` the same, or ``(batch, sources, channels, n_bins, frames)``
        with several sources -> scalar.
        """
        del kind
        if self.sources > 1:
            if target.ndim != 5 or target.shape[1] != self.sources or target.shape[2:] != mix.shape[1:]:
                raise ValueError(f"MaskDNN of {self.sources} sources needs targets (batch, sources={self.sources}, "
                                 f"channels, bins, frames) fitting mix {tuple(mix.shape)}, got "
                                 f"{tuple(target.shape)}")  # fmt: skip
            mix = mix.unsqueeze(1).expand_as(target)
        ibm = ideal_binary_mask(mix[..., : self.max_bin, :], target[..., : self.max_bin, :])
        labels = self.windows(ibm)
        if labels.shape != out.shape:
            raise ValueError(f"logits {tuple(out.shape)} do not fit the windows {tuple(labels.shape)}")
        return F.binary_cross_entropy_with_logits(out.float(), labels.float())
