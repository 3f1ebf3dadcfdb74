"""Plots of sepcore.report.html that no single job owns: the train job's loss curves, PNG rendering."""

from __future__ import annotations

import io
import math

import numpy as np

from sepcore.report import html as R

#: Three epochs of the train job's metrics.jsonl; epoch 0 has no SDR yet.
HISTORY = [
    {"epoch": 0, "train_loss": 0.9, "val_loss": 1.1, "val_sdr": None, "val_sdr_mixture": -11.0},
    {"epoch": 1, "train_loss": 0.5, "val_loss": 0.8, "val_sdr": -2.5, "val_sdr_mixture": -11.0},
    {"epoch": 2, "train_loss": 0.3, "val_loss": 0.7, "val_sdr": 1.5, "val_sdr_mixture": -11.0},
]


def _lines(ax) -> dict[str, tuple[list, list]]:
    """Legend label -> (x, y) of each line of a panel."""
    return {ln.get_label(): (list(ln.get_xdata()), list(ln.get_ydata())) for ln in ax.lines}


def test_loss_curve_shows_losses_and_sdr_per_epoch_trained():
    fig = R.loss_curve_figure(HISTORY)
    loss, sdr = fig.axes
    assert (loss.get_title(), loss.get_xlabel(), loss.get_ylabel()) == ("loss", "epoch", "loss")
    assert _lines(loss) == {"train": ([1, 2, 3], [0.9, 0.5, 0.3]), "validation": ([1, 2, 3], [1.1, 0.8, 0.7])}
    assert (sdr.get_title(), sdr.get_xlabel(), sdr.get_ylabel()) == (
        "validation SDR of the target", "epoch", "median SDR (dB)")  # fmt: skip
    lines = _lines(sdr)
    assert set(lines) == {"model", "mixture as estimate"}
    x, y = lines["model"]
    assert x == [1, 2, 3] and math.isnan(y[0]) and y[1:] == [-2.5, 1.5]  # no SDR yet: a gap
    assert lines["mixture as estimate"] == ([1, 2, 3], [-11.0] * 3)


def test_loss_curve_without_sdr_has_one_panel():
    history = [{k: h[k] for k in ("epoch", "train_loss", "val_loss")} for h in HISTORY]
    (loss,) = R.loss_curve_figure(history).axes
    assert _lines(loss)["validation"] == ([1, 2, 3], [1.1, 0.8, 0.7])
    (loss,) = R.loss_curve_figure(history, initial_val_loss=1.5).axes  # the initial weights' loss at epoch 0
    assert _lines(loss)["validation"] == ([0, 1, 2, 3], [1.5, 1.1, 0.8, 0.7]) and _lines(loss)["train"][0] == [1, 2, 3]


def test_png_is_the_figure_rendered_at_its_size():
    import matplotlib.image

    png = R.loss_curve_png(HISTORY)
    pixels = matplotlib.image.imread(io.BytesIO(png), format="png")
    assert pixels.shape == (418, 1100, 4)  # 10 x 3.8 inches at 110 dpi
    assert len(np.unique(pixels.reshape(-1, 4), axis=0)) > 20  # drawn, not blank
