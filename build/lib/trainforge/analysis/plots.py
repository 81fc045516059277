"""The figures of ``trainforge.analysis.analyze``: matplotlib ``Figure`` objects, rendered by Agg.

Every plotted line carries as its label the CSV column it shows (``train_loss``,
``val_dice``, ...) or, in sweep overlays, the job's overrides, so a test or a script can
read the data back from ``fig.axes[i].lines``. No pyplot: figures hold no global state.
"""
from __future__ import annotations

import math
from pathlib import Path

from trainforge.analysis.runs import best_epoch

SIZE = (8, 4.5)
DPI = 90
SKIP = {"epoch", "train_loss_min", "train_loss_max", "train_nonfinite", "train_grad_norm", "lr", "epoch_time",
        "gpu_mem_peak_gib", "gpu_mem_reserved_gib"}


def _figure(rows: int = 1, cols: int = 1, height: float = SIZE[1]):
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator

    fig = Figure(figsize=(SIZE[0], height), dpi=DPI, layout="constrained")
    axes = fig.subplots(rows, cols, squeeze=False).ravel()
    for ax in axes:
        ax.grid(True, alpha=0.3)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))  # x is epochs everywhere
    return fig, axes


def save(figures: dict, out_dir: Path) -> list:
    """Write each figure as ``out_dir/<name>.png``; returns the paths."""
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    for name, fig in figures.items():
        path = out_dir / f"{name}.png"
        fig.savefig(path)
        paths.append(path)
    return paths


def components(columns) -> list:
    """Loss components logged for both splits (train_<c> and val_<c>), e.g. focal_loss."""
    train = {c[6:] for c in columns if c.startswith("train_") and c not in SKIP and c != "train_loss"}
    return sorted(c for c in train if f"val_{c}" in columns)


def val_metrics(columns) -> list:
    """Validation metrics that are not losses (dice, iou, accuracy)."""
    parts = set(components(columns))
    return [c for c in columns if c.startswith("val_") and c != "val_loss" and c[4:] not in parts]


def _mark_best(ax, run, best) -> None:
    if best:
        ax.axvline(best[0], color="0.4", ls=":", lw=1)
        ax.annotate(f"best {run.monitor}\nepoch {best[0]}", (best[0], 1), xycoords=("data", "axes fraction"),
                    xytext=(3, -3), textcoords="offset points", va="top", fontsize=8, color="0.3")


def _epoch_lines(ax, e, cols, title, ylabel=None, marker="o") -> None:
    for col in cols:
        if col in e:
            ax.plot(e["epoch"], e[col], marker=marker, ms=3, label=col)
    ax.set(title=title, xlabel="epoch", ylabel=ylabel or "")
    ax.legend(fontsize=8)


def run_figures(run, window: int | None = None) -> dict:
    """name -> Figure for one run: loss, components, val_metrics, lr, grad_norm,
    epoch_time, gpu_memory (each only if its columns exist), and with batch rows
    batch_loss and stability."""

    figs, e = {}, run.epochs
    best = best_epoch(run)
    if len(e) and "epoch" in e:
        if "train_loss" in e or "val_loss" in e:
            fig, (ax,) = _figure()
            if {"train_loss_min", "train_loss_max"} <= set(e):
                ax.fill_between(e["epoch"], e["train_loss_min"], e["train_loss_max"], alpha=0.2,
                                label="train batch min-max")
            _epoch_lines(ax, e, ["train_loss", "val_loss"], "Loss per epoch", "loss")
            _mark_best(ax, run, best)
            figs["loss"] = fig
        parts = components(e.columns)
        if parts:
            fig, axes = _figure(len(parts), 1, height=2.6 * len(parts))
            for ax, part in zip(axes, parts):
                _epoch_lines(ax, e, [f"train_{part}", f"val_{part}"], part)
            figs["components"] = fig
        metrics = val_metrics(e.columns)
        if metrics:
            fig, axes = _figure(len(metrics), 1, height=2.6 * len(metrics))
            for ax, col in zip(axes, metrics):
                _epoch_lines(ax, e, [col], f"Validation {col[4:]}")
                if col == run.monitor:
                    _mark_best(ax, run, best)
            figs["val_metrics"] = fig
        figs.update(_single_figures(e))
    if run.batches is not None and len(run.batches) and "loss" in run.batches:
        frame = batch_frame(run.batches, window)
        figs["batch_loss"] = _batch_loss(frame)
        figs["stability"] = _stability(run.batches)
    return figs


SINGLE = (("lr", ["lr"], "Learning rate (last update of each epoch)", "lr"),
          ("grad_norm", ["train_grad_norm"], "Gradient norm before clipping (epoch mean)", "norm"),
          ("epoch_time", ["epoch_time"], "Epoch time", "seconds"),
          ("gpu_memory", ["gpu_mem_peak_gib", "gpu_mem_reserved_gib"], "Peak GPU memory per epoch", "GiB"))


def _single_figures(e) -> dict:
    """One figure per SINGLE entry whose first column holds a value."""
    figs = {}
    for name, cols, title, ylabel in SINGLE:
        if cols[0] in e and e[cols[0]].notna().any():
            fig, (ax,) = _figure()
            _epoch_lines(ax, e, cols, title, ylabel)
            figs[name] = fig
    return figs


def batch_frame(batches, window: int | None = None):
    """The data of the batch-loss figure: ``x`` (fractional epoch: epoch e spans
    (e-1, e]), ``loss``, ``rolling`` (trailing mean over ``window`` batches, default a
    tenth of an epoch, at least 3), ``epoch_min``/``epoch_max`` (the loss range of the
    batch's epoch, finite batches only)."""
    b = batches
    per_epoch = int(b["batch"].max()) if len(b) else 1
    window = window or max(3, per_epoch // 10)
    finite = b["loss"].where(b["loss"].map(math.isfinite))
    frame = b[["epoch", "batch"]].copy()
    frame["x"] = b["epoch"] - 1 + b["batch"] / per_epoch
    frame["loss"] = b["loss"]
    frame["rolling"] = finite.rolling(window, min_periods=1).mean()
    grouped = finite.groupby(b["epoch"])
    frame["epoch_min"] = grouped.transform("min")
    frame["epoch_max"] = grouped.transform("max")
    frame.attrs["window"] = window
    return frame


def _batch_loss(frame):
    fig, (ax,) = _figure()
    ax.fill_between(frame["x"], frame["epoch_min"], frame["epoch_max"], step="pre", alpha=0.15, color="C0")
    ax.plot(frame["x"], frame["epoch_min"], drawstyle="steps-pre", lw=0.6, color="C0", alpha=0.5, label="epoch_min")
    ax.plot(frame["x"], frame["epoch_max"], drawstyle="steps-pre", lw=0.6, color="C0", alpha=0.5, label="epoch_max")
    ax.plot(frame["x"], frame["loss"], lw=0.6, alpha=0.5, color="C7", label="loss")
    ax.plot(frame["x"], frame["rolling"], lw=1.6, color="C3", label="rolling")
    ax.set(title=f"Batch loss, rolling mean over {frame.attrs['window']} batches, epoch min-max band",
           xlabel="epoch", ylabel="loss")
    if (frame["loss"] > 0).all() and frame["loss"].max() / frame["loss"].min() > 20:
        ax.set_yscale("log")  # early batches can dwarf the rest
    ax.legend(fontsize=8)
    return fig


def _stability(batches):
    """Per-epoch spread of the batch loss: a box per epoch, and std and max-min lines."""
    b = batches[batches["loss"].map(math.isfinite)]
    groups = b.groupby("epoch")["loss"]
    epochs = list(groups.groups)
    fig, (top, bottom) = _figure(2, 1, height=6)
    top.boxplot([groups.get_group(e).to_numpy() for e in epochs], positions=epochs, widths=0.6, showfliers=False)
    top.set(title="Batch loss per epoch (box: quartiles, whiskers: 1.5 IQR)", ylabel="loss")
    std, spread = groups.std(ddof=0), groups.max() - groups.min()
    bottom.plot(std.index, std.to_numpy(), marker="o", ms=3, label="std")
    bottom.plot(spread.index, spread.to_numpy(), marker="s", ms=3, label="max - min")
    bottom.set(title="Batch loss spread per epoch (stability)", xlabel="epoch", ylabel="loss")
    bottom.legend(fontsize=8)
    return fig


def sweep_figures(runs: list, labels: dict, batch_metrics: bool = False, window: int | None = None) -> dict:
    """name -> Figure: one per epoch metric (train_loss, val_loss, val_*, lr, epoch_time)
    with every job's curve, labelled by its overrides; with batch rows, the batch-loss
    rolling means overlaid."""
    columns = []
    for r in runs:
        columns += [c for c in r.epochs.columns if c not in columns]
    wanted = [c for c in columns if c in ("train_loss", "val_loss", "lr", "epoch_time") or c.startswith("val_")]
    figs = {}
    for col in wanted:
        fig, (ax,) = _figure()
        for r in runs:
            if col in r.epochs and len(r.epochs):
                ax.plot(r.epochs["epoch"], r.epochs[col], marker="o", ms=3, label=labels[r.name])
        ax.set(title=f"{col} per epoch, all jobs", xlabel="epoch", ylabel=col)
        ax.legend(fontsize=8)
        figs[col] = fig
    batched = [r for r in runs if r.batches is not None and len(r.batches)] if batch_metrics else []
    if batched:
        fig, (ax,) = _figure()
        for r in batched:
            frame = batch_frame(r.batches, window)
            ax.plot(frame["x"], frame["rolling"], lw=1.2, label=labels[r.name])
        ax.set(title="Batch loss, rolling mean, all jobs", xlabel="epoch", ylabel="loss")
        ax.legend(fontsize=8)
        figs["batch_loss"] = fig
    return figs
