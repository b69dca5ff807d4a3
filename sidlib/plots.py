"""Small shared plotting helpers (matplotlib, headless). Each returns the PNG path it wrote."""
from __future__ import annotations

from pathlib import Path
from typing import Mapping, Sequence

import matplotlib

matplotlib.use("Agg")  # notebooks run headless under papermill
# exported: the sidlib modules that plot take pyplot from here (`from sidlib.plots import plt`), so
# the Agg backend is set once, in this module
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402


def save(fig: plt.Figure, path: Path | str) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def length_histogram(series: Mapping[str, Sequence[float]], path: Path | str, xlabel: str = "", bins: int = 50) -> Path:
    """Overlaid histograms of several length distributions (log-spaced when they span decades)."""
    fig, ax = plt.subplots(figsize=(7, 3.5))
    values = {k: np.asarray(v, dtype=float) for k, v in series.items()}
    hi = max((v.max() for v in values.values() if len(v)), default=1.0)
    edges = np.linspace(0, max(hi, 1.0), bins + 1)
    for name, v in values.items():
        ax.hist(v, bins=edges, alpha=0.55, label=f"{name} (median {np.median(v):.0f})")
    ax.set_xlabel(xlabel)
    ax.set_ylabel("items")
    ax.legend()
    return save(fig, path)


def curves(history: Mapping[str, Sequence[float]], path: Path | str, xlabel: str = "step", logy: bool = False) -> Path:
    """Training curves: one line per named series."""
    fig, ax = plt.subplots(figsize=(7, 3.5))
    for name, ys in history.items():
        ax.plot(np.arange(1, len(ys) + 1), ys, label=name)
    if logy:
        ax.set_yscale("log")
    ax.set_xlabel(xlabel)
    ax.legend()
    return save(fig, path)


def bars(frame, path: Path | str, title: str = "") -> Path:
    """Grouped bars: one group per row (model), one bar per column (metric)."""
    fig, ax = plt.subplots(figsize=(max(6, 1.6 * len(frame)), 3.8))
    frame.astype(float).plot.bar(ax=ax, rot=0)
    ax.set_title(title)
    ax.legend(fontsize=8)
    return save(fig, path)
