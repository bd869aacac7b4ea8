"""A forest plot of paired comparisons: one row per (task, budget), read at a glance.

Each row is a paired mean difference (policy minus its best peer) with its interval; rows whose
difference survives the Holm correction are drawn solid and coloured, so a reader sees which
claims hold and which are noise without reading the table. Rows measured in different units
(perplexity, accuracy) go to separate panels, each with its own axis and its own zero line.
"""

from __future__ import annotations

import math
from typing import Any, Mapping, Sequence

_WIN, _LOSE, _TIE = "#1b7837", "#b2182b", "#6e6e6e"


def plot_forest(rows: Sequence[Mapping[str, Any]], *, title: str = "Paired differences against the best peer",
                width: float = 8.0):
    """A forest plot of ``rows`` and the matplotlib Figure.

    A row: ``label`` (e.g. "passkey · B=0.25"), ``mean``, ``low``, ``high`` (the interval; NaN
    draws the point alone), ``n``; optional ``panel`` (the x-axis label shared by its rows,
    e.g. "Δ perplexity (lower is better)"; rows keep their order within a panel, panels their
    first appearance), ``marked`` (True where the Holm-adjusted comparison excludes zero) and
    ``verdict`` ("wins" / "loses" colour a marked row green / red).
    """
    import matplotlib.pyplot as plt

    if not rows:
        raise ValueError("plot_forest needs at least one row")
    for i, r in enumerate(rows):
        missing = [k for k in ("label", "mean", "low", "high", "n") if k not in r]
        if missing:
            raise ValueError(f"forest row {i} lacks {missing}: {dict(r)}")
    panels: dict[str, list[Mapping[str, Any]]] = {}
    for r in rows:
        panels.setdefault(str(r.get("panel", "difference")), []).append(r)
    heights = [len(p) + 1.2 for p in panels.values()]
    fig, axes = plt.subplots(len(panels), 1, figsize=(width, 0.32 * sum(heights) + 0.9 * len(panels) + 0.5),
                             gridspec_kw={"height_ratios": heights}, squeeze=False)
    for ax, (xlabel, prow) in zip(axes[:, 0], panels.items()):
        ys = range(len(prow) - 1, -1, -1)  # first row on top
        spans = []
        for y, r in zip(ys, prow):
            mean, low, high = float(r["mean"]), float(r["low"]), float(r["high"])
            marked = bool(r.get("marked"))
            colour = {"wins": _WIN, "loses": _LOSE}.get(str(r.get("verdict")), _TIE) if marked else _TIE
            if not (math.isnan(low) or math.isnan(high)):
                ax.plot([low, high], [y, y], color=colour, lw=2.4 if marked else 1.4, solid_capstyle="butt")
                spans += [low, high]
            ax.plot([mean], [y], marker="D" if marked else "o", ms=6.5, color=colour,
                    mfc=colour if marked else "white", mew=1.4, zorder=3)
            spans.append(mean)
        ax.axvline(0, color="black", lw=0.9, zorder=1)
        lo, hi = min(spans + [0.0]), max(spans + [0.0])
        pad = 0.06 * ((hi - lo) or 1.0)
        ax.set_xlim(lo - pad, hi + pad)
        ax.set_ylim(-0.7, len(prow) - 0.3)
        ax.set_yticks(list(ys), [str(r["label"]) for r in prow], fontsize=8.5)
        right = ax.secondary_yaxis("right")  # n beside each row, outside the data
        right.set_yticks(list(ys), [f"n={r['n']}" for r in prow], fontsize=8)
        right.tick_params(length=0)
        ax.set_xlabel(xlabel, fontsize=9)
        ax.tick_params(axis="x", labelsize=8)
        ax.grid(alpha=0.3, axis="x")
    from matplotlib.lines import Line2D

    handles = [Line2D([], [], color=_WIN, marker="D", lw=2.4, label="better after Holm"),
               Line2D([], [], color=_LOSE, marker="D", lw=2.4, label="worse after Holm"),
               Line2D([], [], color=_TIE, marker="o", mfc="white", lw=1.4, label="tie (95% paired t interval)")]
    height = fig.get_figheight()
    fig.suptitle(title, fontsize=10.5, y=1 - 0.08 / height, va="top")
    fig.legend(handles=handles, fontsize=8, loc="upper center", bbox_to_anchor=(0.5, 1 - 0.36 / height), ncol=3,
               frameon=False)
    fig.tight_layout(rect=(0, 0, 1, 1 - 0.55 / height))
    return fig


__all__ = ["plot_forest"]
