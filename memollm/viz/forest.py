"""A forest plot of paired comparisons: one row per (task, budget), read at a glance.

Each row is a paired mean difference (a policy minus the peer named on the row) with its interval.
Colour and marker encode the row's verdict, in the tables' three words: *wins* (a green diamond),
*loses* (a red square), *ties* (an open grey circle); the legend counts each. Rows measured in
different units (perplexity, accuracy) go to separate panels, each with its own axis and zero line.
"""

from __future__ import annotations

import math
import re
from typing import Any, Mapping, Sequence

# verdict -> (colour, marker, filled); "differs": a row without a verdict, marked as excluding zero after Holm
STYLE = {"wins": ("#1b7837", "D", True), "loses": ("#b2182b", "s", True), "ties": ("#6e6e6e", "o", False),
         "differs": ("#222222", "D", True)}
_PEER = re.compile(r"^vs\.? (\S+)$")
_SEP = " · "


def _verdict(row: Mapping[str, Any]) -> str:
    verdict = str(row.get("verdict") or "")
    if verdict in ("wins", "loses", "ties"):
        return verdict
    return "differs" if row.get("marked") else "ties"


def _peer(row: Mapping[str, Any]) -> str | None:
    """The peer a row is compared with: its ``peer``, or its label's last part ("... · vs snapkv")."""
    if row.get("peer"):
        return str(row["peer"])
    m = _PEER.match(str(row["label"]).split(_SEP)[-1].strip())
    return m.group(1) if m else None


def _xlabel(panel: str, rows: Sequence[Mapping[str, Any]]) -> str:
    """The panel's axis label, honest about whom each row is compared with: where every row names its
    peer, "best peer" reads "its best peer, named on each row"."""
    if "its best peer" not in panel and "best peer" in panel and all(_peer(r) for r in rows):
        return panel.replace("best peer", "its best peer, named on each row", 1)
    return panel


def _shared_parts(rows: Sequence[Mapping[str, Any]]) -> list[str]:
    """Label parts that every row shares, the first (the task) and last (the peer) aside: said once
    under the title instead of on every row."""
    parts = [str(r["label"]).split(_SEP) for r in rows]
    if len(parts) < 2:
        return []
    shared = set(parts[0][1:-1])
    for p in parts[1:]:
        shared &= set(p[1:-1])
    return [x for x in parts[0][1:-1] if x in shared]


def _label(label: str, drop: Sequence[str], width: int = 44) -> str:
    """``label`` without the shared parts, broken after a " · " onto a second line when long."""
    parts = label.split(_SEP)
    parts = [p for i, p in enumerate(parts) if i in (0, len(parts) - 1) or p not in drop]
    text = _SEP.join(parts)
    if len(text) <= width or len(parts) < 2:
        return text
    cut = max([c for c in range(1, len(parts)) if len(_SEP.join(parts[:c])) <= width] or [1])
    return _SEP.join(parts[:cut]) + " ·\n" + _SEP.join(parts[cut:])


def plot_forest(rows: Sequence[Mapping[str, Any]], *, title: str = "Paired differences against the best peer",
                width: float = 8.0):
    """A forest plot of ``rows`` and the matplotlib Figure.

    A row: ``label`` (e.g. "passkey · B=0.25 · vs snapkv"), ``mean``, ``low``, ``high`` (the
    interval; NaN draws the point alone), ``n``; optional ``panel`` (the x-axis label shared by its
    rows, e.g. "Δ perplexity: ebbinghaus − best peer (lower is better)"; rows keep their order within
    a panel, panels their first appearance), ``verdict`` ("wins", "ties" or "loses": colour and
    marker), ``peer`` (else read from the label's last part, "vs NAME") and ``marked`` (for a row
    without a verdict: its Holm-adjusted comparison excludes zero; drawn solid black, "differs").
    Label parts every row shares (e.g. "layer") are said once, under the title; long labels wrap.
    """
    import matplotlib.pyplot as plt
    from matplotlib.lines import Line2D

    if not rows:
        raise ValueError("plot_forest needs at least one row")
    for i, r in enumerate(rows):
        missing = [k for k in ("label", "mean", "low", "high", "n") if k not in r]
        if missing:
            raise ValueError(f"forest row {i} lacks {missing}: {dict(r)}")
    shared = _shared_parts(rows)
    panels: dict[str, list[Mapping[str, Any]]] = {}
    for r in rows:
        panels.setdefault(str(r.get("panel", "difference")), []).append(r)
    labels = {id(r): _label(str(r["label"]), shared) for r in rows}
    lines = [sum(1 + labels[id(r)].count("\n") * 0.6 for r in p) for p in panels.values()]
    heights = [n + 1.2 for n in lines]
    head = 1.0 + 0.2 * bool(shared)  # inches above the first panel: title, legend, shared parts
    fig, axes = plt.subplots(len(panels), 1, figsize=(width, 0.32 * sum(heights) + 0.9 * len(panels) + head),
                             gridspec_kw={"height_ratios": heights}, squeeze=False)
    counts = dict.fromkeys(STYLE, 0)
    for ax, (panel, prow), span in zip(axes[:, 0], panels.items(), lines):
        ys, y = [], span
        for r in prow:  # first row on top; a wrapped label takes a little more room
            step = 1 + labels[id(r)].count("\n") * 0.6
            ys.append(y - step / 2)
            y -= step
        spans = []
        for y, r in zip(ys, prow):
            mean, low, high = float(r["mean"]), float(r["low"]), float(r["high"])
            verdict = _verdict(r)
            counts[verdict] += 1
            colour, marker, filled = STYLE[verdict]
            if not (math.isnan(low) or math.isnan(high)):
                ax.plot([low, high], [y, y], color=colour, lw=2.4 if filled else 1.4, solid_capstyle="butt")
                spans += [low, high]
            ax.plot([mean], [y], marker=marker, ms=6.5, color=colour, mfc=colour if filled else "white", mew=1.4,
                    zorder=3)
            spans.append(mean)
        ax.axvline(0, color="black", lw=0.9, zorder=1)
        lo, hi = min(spans + [0.0]), max(spans + [0.0])
        pad = 0.06 * ((hi - lo) or 1.0)
        ax.set_xlim(lo - pad, hi + pad)
        ax.set_ylim(-0.2, span + 0.2)
        ax.set_yticks(ys, [labels[id(r)] for r in prow], fontsize=8.5)
        right = ax.secondary_yaxis("right")  # n beside each row, outside the data
        right.set_yticks(ys, [f"n={r['n']}" for r in prow], fontsize=8)
        right.tick_params(length=0)
        ax.set_xlabel(_xlabel(panel, prow), fontsize=9)
        ax.tick_params(axis="x", labelsize=8)
        ax.grid(alpha=0.3, axis="x")
    words = {"wins": "wins", "ties": "ties", "loses": "loses", "differs": "differs (no verdict given)"}
    handles = [Line2D([], [], color=STYLE[v][0], marker=STYLE[v][1], mfc=STYLE[v][0] if STYLE[v][2] else "white",
                      mew=1.4, lw=2.4 if STYLE[v][2] else 1.4, label=f"{words[v]} ({counts[v]})")
               for v in STYLE if v != "differs" or counts[v]]
    height = fig.get_figheight()
    fig.tight_layout(rect=(0, 0, 1, 1 - head / height))
    top = axes[0, 0].get_position().y1  # the legend just above the first panel, the title above it
    fig.legend(handles=handles, fontsize=8, loc="lower center", ncol=len(handles), frameon=False,
               bbox_to_anchor=(0.5, top + 0.12 / height),
               title="verdict after Holm, from the 95% paired Student-t comparison", title_fontsize=8)
    fig.suptitle(title + ("\nall rows: " + ", ".join(shared) if shared else ""), fontsize=10.5,
                 y=top + 0.55 / height, va="bottom")
    return fig


__all__ = ["plot_forest"]
