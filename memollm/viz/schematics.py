"""Schematic drawings for the lessons: where the soft-delete weight enters (02), a mask matrix
with sinks, forgotten keys and kernel tiles (03)."""

from __future__ import annotations

from typing import Sequence

from .lessons import _plt

def _cell(ax, x, y, text="", fc="white", ec="#555555", w=1.0, h=1.0, fontsize=7, hatch=None, color="black"):
    """One square of a schematic, lower-left corner at (x, y), with centred text."""
    from matplotlib.patches import Rectangle

    ax.add_patch(Rectangle((x, y), w, h, fc=fc, ec=ec, lw=0.6, hatch=hatch))
    if text:
        ax.text(x + w / 2, y + h / 2, text, ha="center", va="center", fontsize=fontsize, color=color)


def plot_soft_delete_schematic(retention: Sequence[float], *, floor: float = 0.8, num_layers: int = 30,
                               memory_layers: int = 15, kv_heads: int = 3, head_dim: int = 64):
    """Where soft delete acts. Left: the KV cache, one K and one V tensor per layer
    ``[batch, kv_heads, tokens, head_dim]``, and the memory state (S, t per token) kept for the
    memory layers only. Right: one decode step of one head, with the weight
    ``w = floor + (1 - floor) R`` entering either as ``+ log w`` on the logits
    (``soft_delete_target="logits"``) or as ``x w`` on the values (``"values"``).
    ``retention`` holds R for each cached token (a handful: every one gets a column).
    """
    import math

    plt = _plt()
    r = [float(x) for x in retention]
    n = len(r)
    w = [floor + (1 - floor) * x for x in r]
    fig, (left, right) = plt.subplots(1, 2, figsize=(12, 4.4), gridspec_kw={"width_ratios": [1, 1.15]})

    # left: the cache, a few layers drawn, the rest elided
    shown = [0, 1, memory_layers - 1, memory_layers, num_layers - 1]
    y = 0.0
    for i, layer in enumerate(shown):
        if i and layer != shown[i - 1] + 1:
            left.text(n / 2 + 1.5, y + 0.35, "⋮", ha="center", va="center", fontsize=12)
            y += 0.9
        memory = layer < memory_layers
        left.text(-0.3, y + 1.0, f"layer {layer}", ha="right", va="center", fontsize=8)
        for j in range(n):
            _cell(left, 1.2 + j, y + 1.0, "k", fc="#cfe3f3", h=0.9)
            _cell(left, 1.2 + j, y, "v", fc="#fde2c8", h=0.9)
        if memory:
            for j in range(n):
                _cell(left, 2.2 + n + j, y + 0.5, "S,t", fc="#e3f0d8", h=0.9, fontsize=6)
        y += 2.3
    left.text(1.2 + n / 2, y - 0.1, f"KV cache: K and V per layer\n[batch, {kv_heads} heads, tokens, {head_dim}]",
              ha="center", va="bottom", fontsize=8)
    left.text(2.2 + 1.5 * n, y - 0.1, f"memory state (S, t), R = exp(-t/S)\nlayers 0-{memory_layers - 1} only",
              ha="center", va="bottom", fontsize=8)
    left.set_xlim(-3.2, 2.6 + 2 * n)
    left.set_ylim(-0.6, y + 1.3)
    left.set_aspect("equal")
    left.axis("off")
    left.set_title("what is cached: tokens (columns) in every layer", fontsize=10)

    # right: one decode step of one attention head, token by token
    rows = [("keys k_j", ["k"] * n, "#cfe3f3", False),
            ("logits q·k_j/√d", ["l"] * n, "white", False),
            ("+ log w_j   (target 'logits')", [f"{math.log(x):+.2f}" for x in w], "#f8d0d0", True),
            ("softmax → p_j", ["p"] * n, "white", False),
            ("values v_j", ["v"] * n, "#fde2c8", False),
            ("× w_j   (target 'values')", [f"{x:.2f}" for x in w], "#f8d0d0", True),
            ("output o = Σ_j p_j v_j", None, "white", False)]
    for i, (label, texts, fc, weight) in enumerate(rows):
        yy = -1.4 * i
        right.text(-0.3, yy + 0.45, label, ha="right", va="center", fontsize=8,
                   color="crimson" if weight else "black", fontweight="bold" if weight else "normal")
        if texts is None:
            _cell(right, 0, yy, "o", w=n, h=0.9, fc="#e8e8e8")
        else:
            for j, text in enumerate(texts):
                _cell(right, j, yy, text, fc=fc, h=0.9, fontsize=6 if weight else 7,
                      ec="crimson" if weight else "#555555")
        if i < len(rows) - 1:
            right.annotate("", xy=(n + 0.35, yy - 0.45), xytext=(n + 0.35, yy + 0.45),
                           arrowprops=dict(arrowstyle="->", color="grey", lw=0.8))
    for j in range(n):
        right.text(j + 0.5, 1.05, f"R={r[j]:.2f}", ha="center", va="bottom", fontsize=6, rotation=0)
    right.text(n / 2, -1.4 * len(rows) + 0.1,
               f"w = {floor:g} + {1 - floor:g}·R, recomputed from R at every step; the cache itself is never written",
               ha="center", va="center", fontsize=8, style="italic")
    right.set_xlim(-6.5, n + 1)
    right.set_ylim(-1.4 * len(rows) - 0.3, 1.8)
    right.axis("off")
    right.set_title("one decode step, one head: where the weight w enters", fontsize=10)
    fig.tight_layout()
    return fig


def mask_grid(n: int, forgotten: dict, sinks: int = 0):
    """``[query, key]`` int array of a causal mask with forgotten keys: 0 future (not read yet),
    1 visible, 2 sink (visible, never masked), 3 masked. ``forgotten`` maps a query position to
    the keys hidden from that query on (a masked key never comes back); sinks are never hidden."""
    import numpy as np

    grid = np.zeros((n, n), dtype=int)
    for i in range(n):
        grid[i, : i + 1] = 1
        grid[i, : min(sinks, i + 1)] = 2
    for query, keys in forgotten.items():
        for key in keys:
            if key >= sinks:
                rows = grid[int(query):, key]
                rows[rows == 1] = 3
    return grid


def plot_mask_schematic(n: int = 12, forgotten: dict | None = None, *, sinks: int = 4, block: int = 4):
    """A sparse-attention mask drawn cell by cell, and the same last row as a cache.

    Left: queries (rows) against keys (columns): the causal triangle, the ``sinks`` first
    columns that are never masked, and the keys hidden from the query where they were
    forgotten on (see :func:`mask_grid`). Grid lines split the matrix into ``block`` x
    ``block`` tiles as a tiled (flash-style) kernel walks it; a hatched tile has no visible
    entry, the only kind such a kernel can skip. Right: the newest query's view, as the
    cache with masked slots and as the smaller cache after evicting them (true positions
    written in the slots).
    """
    import matplotlib as mpl
    import numpy as np
    import seaborn as sns

    plt = _plt()
    forgotten = forgotten if forgotten is not None else {7: [5, 6], 10: [4, 8]}
    grid = mask_grid(n, forgotten, sinks)
    colors = ["#ffffff", "#cfe3f3", "#8cc084", "#1f3b73"]
    names = ["future (causal)", "visible", "sink (never masked)", "masked (forgotten)"]
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4.8), gridspec_kw={"width_ratios": [1, 1.05]})
    sns.heatmap(grid, cmap=mpl.colors.ListedColormap(colors), vmin=-0.5, vmax=3.5, cbar=False, square=True,
                xticklabels=range(n), yticklabels=range(n), ax=left)  # cell (i, j) spans [j, j+1] x [i, i+1]
    left.tick_params(labelsize=7, rotation=0)
    left.set_xlabel("key position (cached token)")
    left.set_ylabel("query position")
    skippable = by_forgetting = 0
    for bi in range(0, n, block):
        for bj in range(0, n, block):
            tile = grid[bi:bi + block, bj:bj + block]
            if not np.isin(tile, (1, 2)).any():
                skippable += 1
                by_forgetting += int((tile == 3).any())
                left.add_patch(mpl.patches.Rectangle((bj, bi), tile.shape[1], tile.shape[0],
                                                     fill=False, hatch="///", ec="#999999", lw=0))
    for b in range(block, n, block):
        left.axhline(b, color="black", lw=1)
        left.axvline(b, color="black", lw=1)
    tiles = (-(-n // block)) ** 2
    left.set_title(f"{skippable} of {tiles} tiles ({block}x{block}) have nothing visible, "
                   f"{by_forgetting} of them because of forgetting", fontsize=9)
    handles = [mpl.patches.Patch(fc=c, ec="#999999", label=name) for c, name in zip(colors, names)]
    handles.append(mpl.patches.Patch(fc="white", ec="#999999", hatch="///", label="tile a tiled kernel may skip"))

    last = grid[-1]
    kept = [j for j in range(n) if last[j] in (1, 2)]
    for j in range(n):
        _cell(right, j, 2.2, str(j), fc=colors[last[j]], fontsize=7, color="white" if last[j] == 3 else "black")
    for slot, j in enumerate(kept):
        _cell(right, slot, 0.0, str(j), fc=colors[last[j]], fontsize=7)
    right.text(0, 3.5, f"with the mask: {n} slots, {n - len(kept)} hidden; every slot is still multiplied",
               fontsize=8, va="bottom")
    right.text(0, 1.3, f"after eviction: {len(kept)} slots, the same output, less work", fontsize=8, va="bottom")
    right.text(0, -0.6, "numbers: true positions; a slot's index in the cache is no longer its position",
               fontsize=7, va="top", style="italic")
    right.legend(handles=handles, fontsize=7, loc="lower center", ncol=2, frameon=False)
    right.set_xlim(-0.5, n + 0.5)
    right.set_ylim(-3.8, 4.6)
    right.set_aspect("equal")
    right.axis("off")
    right.set_title(f"the newest query (position {n - 1}) reads its cache", fontsize=10)
    fig.tight_layout()
    return fig

