"""The seed report's training figures: loss per iteration and mean loss per epoch."""

from __future__ import annotations

from pathlib import Path


def plot_losses(per_iteration: dict[str, list[tuple[int, float]]], per_epoch: dict[str, list[tuple[int, float]]],
                path: Path, title: str = "") -> Path:
    """Two panels: each loss against images seen, and its mean per epoch."""
    # Imported here, and matplotlib's own copy of seaborn's style: seaborn's import (pandas, scipy) would add
    # a second to every run's start-up, and a run draws this once, at its end.
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    with plt.style.context("seaborn-v0_8-whitegrid"):
        fig, (ax_it, ax_ep) = plt.subplots(1, 2, figsize=(11, 4))
        _draw(per_iteration, per_epoch, ax_it, ax_ep)
        if title:
            fig.suptitle(title)
        fig.tight_layout()
        path.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _draw(per_iteration, per_epoch, ax_it, ax_ep) -> None:
    for key, points in per_iteration.items():
        if points:
            ax_it.plot([s for s, _ in points], [v for _, v in points], label=key, linewidth=0.8)
    ax_it.set(xlabel="images seen", ylabel="loss", title="loss per iteration")
    for key, points in per_epoch.items():
        if points:
            ax_ep.plot([s for s, _ in points], [v for _, v in points], marker="o", label=key.removesuffix("_epoch"))
    ax_ep.set(xlabel="epoch", ylabel="mean loss", title="mean loss per epoch")
    if not ax_ep.lines:  # a run shorter than one epoch has no whole epoch to average
        ax_ep.text(0.5, 0.5, "less than one epoch: no whole epoch yet", ha="center", va="center",
                   transform=ax_ep.transAxes, color="#666")
    for ax in (ax_it, ax_ep):
        if ax.lines:
            ax.legend()
