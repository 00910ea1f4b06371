"""The report's images, drawn with matplotlib (object API, no pyplot state, no display needed) and embedded
as ``data:image/png;base64`` URIs, so ``report.html`` stays one self-contained file that opens offline.

- :func:`slice_uri`: one CT slice, windowed to grey (the montages and the memorisation pairs);
- :func:`hu_histograms_uri`: the mean HU histogram inside the body per set, one line each;
- :func:`lesion_strips_uri`: the lesion fraction of every volume per set and class (jittered points, mean bar).
"""

from __future__ import annotations

import base64
import io

import numpy as np

DPI = 100


def window_to_uint8(hu: np.ndarray, width: float, level: float) -> np.ndarray:
    """Display HU in a window (e.g. lung W1500/L-600, mediastinal W350/L40) as 8-bit grey."""
    lo = level - width / 2.0
    scaled = (np.asarray(hu, dtype=np.float32) - lo) * (255.0 / width)
    return np.clip(np.rint(scaled), 0, 255).astype(np.uint8)


def _uri(data: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(data).decode("ascii")


def slice_uri(grey: np.ndarray) -> str:
    """PNG of an (h, w) uint8 grey image, pixel for pixel (no resampling: the caller sizes it). Written as
    RGB: through a colour map (``cmap="gray"``) matplotlib quantises 256 levels onto its lookup table and
    moves some by one."""
    from matplotlib.image import imsave

    grey = np.asarray(grey, dtype=np.uint8)
    buf = io.BytesIO()
    imsave(buf, np.repeat(grey[..., None], 3, axis=2), format="png")
    return _uri(buf.getvalue())


def _figure_uri(fig) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=DPI, bbox_inches="tight")
    return _uri(buf.getvalue())


def hu_histograms_uri(series: list[tuple[str, np.ndarray, np.ndarray]], xlabel: str, ylabel: str) -> str:
    """Lines ``(name, x, y)`` on one axes with a legend."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(7.5, 3.0))
    ax = fig.add_subplot()
    for name, x, y in series:
        ax.plot(x, y, linewidth=1.3, label=name)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.grid(alpha=0.3)
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=9, frameon=False)
    return _figure_uri(fig)


def lesion_strips_uri(groups: list[tuple[str, np.ndarray]], ylabel: str, seed: int = 0) -> str:
    """One column per ``(name, values)``: every value as a jittered point, the mean as a black bar."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(max(4.0, 1.1 * len(groups) + 1.5), 3.0))
    ax = fig.add_subplot()
    rng = np.random.default_rng(seed)
    for k, (_, values) in enumerate(groups):
        v = np.asarray(values, dtype=np.float64)
        v = v[np.isfinite(v)]
        ax.scatter(k + rng.uniform(-0.22, 0.22, v.size), v, s=14, alpha=0.6)
        if v.size:
            ax.hlines(v.mean(), k - 0.33, k + 0.33, colors="black", linewidth=2)
    ax.set_xticks(range(len(groups)), [name for name, _ in groups], rotation=20, ha="right", fontsize=9)
    ax.set_ylabel(ylabel)
    ax.set_ylim(bottom=0)
    ax.grid(axis="y", alpha=0.3)
    return _figure_uri(fig)
