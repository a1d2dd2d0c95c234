"""The report's figures (seaborn, PNG): KID (with its error bars) or FID against cost with the Pareto front,
against sampling cost and sampling steps, and the sample progression strip of a run across its eval points."""

from __future__ import annotations

import re
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402
import seaborn as sns  # noqa: E402
from matplotlib.ticker import FuncFormatter  # noqa: E402

from analysis.tables import COST_AXES, METRIC_NAMES, pareto_front  # noqa: E402


def palette(df: pd.DataFrame) -> dict[str, tuple]:
    """One colour per model, the same in every figure of a report (sorted names onto seaborn's palette)."""
    models = sorted(df["model"].unique())
    return dict(zip(models, sns.color_palette("deep", len(models)), strict=True))


def _plain_log_ticks(axis) -> None:
    """Log-scaled FID axes spanning less than a decade: 400 rather than 4 x 10^2."""
    plain = FuncFormatter(lambda v, _: f"{v:g}")
    axis.set_major_formatter(plain)
    axis.set_minor_formatter(plain)


def _save(fig, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def quality_vs_cost(df: pd.DataFrame, axis: str, path: Path, metric: str = "fid", note: str = "") -> Path:
    """Each run's metric at its eval points against cost (log axes), coloured by curve, with error bars where
    the metric has them (KID's std over subsets), and the Pareto front."""
    sns.set_theme(style="whitegrid", context="notebook")
    fig, ax = plt.subplots(figsize=(7.5, 4.8))
    data = df[df[axis] > 0].sort_values(axis)
    colours = palette(df)
    error = f"{metric}_std" if f"{metric}_std" in data else None
    for (model, _), run in data.groupby(["model", "run_id"], sort=True):
        ax.errorbar(run[axis], run[metric], yerr=run[error] if error else None, marker="o", capsize=3,
                    label=model, color=colours[model])
    front = pareto_front(data, axis, metric)
    ax.step(front[axis], front[metric], where="post", color="black", linestyle="--", linewidth=1,
            label="Pareto front")
    handles, labels = ax.get_legend_handles_labels()
    unique = dict(zip(labels, handles, strict=True))
    ax.legend(unique.values(), unique.keys(), fontsize=8)
    name = METRIC_NAMES.get(metric, metric)
    ax.set(xscale="log", xlabel=COST_AXES.get(axis, axis), ylabel=f"{name} (lower is better)",
           title=f"{name} versus training cost ({COST_AXES.get(axis, axis)}){note}")
    if metric == "fid":
        ax.set_yscale("log")
        _plain_log_ticks(ax.yaxis)
    return _save(fig, path)


def quality_vs_sampling_cost(df: pd.DataFrame, path: Path, metric: str = "fid") -> Path:
    """The last eval point of each run: the metric against seconds per generated image."""
    sns.set_theme(style="whitegrid", context="notebook")
    fig, ax = plt.subplots(figsize=(7.5, 4.8))
    data = df[df["sample_seconds_per_image"] > 0]
    colours = palette(df)
    sns.scatterplot(data=data, x="sample_seconds_per_image", y=metric, hue="model", style="model",
                    hue_order=list(colours), style_order=list(colours), palette=colours, s=70, ax=ax)
    name = METRIC_NAMES.get(metric, metric)
    ax.set(xscale="log", xlabel="sampling seconds per image", ylabel=name, title=f"{name} versus sampling cost")
    return _save(fig, path)


def best_after_k_trials(curves: dict[str, pd.DataFrame], path: Path, metric: str) -> Path:
    """Per study: the expected best value after k trials with its 5-95% bootstrap band, against k and against
    the device-hours k trials cost (Lucic et al. 2018)."""
    sns.set_theme(style="whitegrid", context="notebook")
    fig, (by_k, by_cost) = plt.subplots(1, 2, figsize=(11, 4.2), sharey=True)
    for label, curve in curves.items():
        for ax, x in ((by_k, "k"), (by_cost, "device_hours")):
            line, = ax.plot(curve[x], curve["mean"], marker="o", markersize=4, label=label)
            ax.fill_between(curve[x], curve["lo"], curve["hi"], alpha=0.2, color=line.get_color())
    name = METRIC_NAMES.get(metric, metric)
    by_k.set(xlabel="trials k", ylabel=f"expected best {name}", title="best after k trials")
    by_cost.set(xlabel="device-hours of k trials", title="best against tuning cost")
    by_k.legend(fontsize=8)
    return _save(fig, path)


def fid_vs_steps(sweeps: pd.DataFrame, path: Path) -> Path:
    """Diffusion: FID of one checkpoint against the number of sampling steps (bench eval --sampler-steps)."""
    sns.set_theme(style="whitegrid", context="notebook")
    fig, ax = plt.subplots(figsize=(7.5, 4.8))
    sns.lineplot(data=sweeps, x="sampler_steps", y="fid", hue="run_name", marker="o", ax=ax)
    ax.set(xscale="log", xlabel="sampling steps (network evaluations per image)", ylabel="FID",
           title="Quality versus sampling steps")
    return _save(fig, path)


def progression_strip(grids: list[Path], path: Path, title: str = "", height: int = 160) -> Path:
    """The run's sample grids side by side, labelled with images seen: the seed's per-epoch figures."""
    from PIL import Image

    fig, axes = plt.subplots(1, len(grids), figsize=(2.2 * len(grids), 2.6), squeeze=False)
    for ax, grid in zip(axes[0], grids, strict=True):
        image = Image.open(grid).convert("RGB")
        image = image.resize((height, round(height * image.height / image.width)))
        ax.imshow(image)
        match = re.search(r"grid_(\d+)", grid.name)
        ax.set_title(f"{int(match.group(1)):,} img" if match else grid.stem, fontsize=9)
        ax.axis("off")
    if title:
        fig.suptitle(title, fontsize=10)
    return _save(fig, path)
