"""Plots shared by the notebooks and the bench/eval commands; one helper saves figures."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Sequence


def __getattr__(name: str):
    """``viz.FIGURES_DIR`` is :func:`memollm.notebook.figures_dir`, resolved when read
    (``$MEMOLLM_FIGURES``, the repository's figures/ from its notebooks/, else ./figures)."""
    if name == "FIGURES_DIR":
        from .notebook import figures_dir

        return figures_dir()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def save_figure(fig, name: str, directory: str | os.PathLike | None = None) -> Path:
    """Save ``fig`` as ``<figures>/<name>.png`` (150 dpi, tight) and return the path.

    Notebooks name figures after themselves (``01_forgetting_curve_curves``), commands
    after the command (``bench_tokens_per_second``).
    """
    if directory is None:  # a FIGURES_DIR assigned on the module (tests do) wins over the default
        directory = globals().get("FIGURES_DIR") or __getattr__("FIGURES_DIR")
    folder = Path(directory)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{name}.png"
    fig.savefig(path, dpi=150, bbox_inches="tight")
    return path


# -- the forgetting curve (notebook 01) ---------------------------------------------------

def _plt():
    import matplotlib.pyplot as plt

    return plt


def plot_forgetting_curves(strengths=(1.0, 2.0, 5.0, 10.0, 20.0), *, t_max: float = 60.0,
                           threshold: float | None = None, log_scale: bool = True):
    """R = exp(-t/S) against age t for several strengths S; a dashed line at ``threshold``.

    With ``log_scale`` a second panel shows log R, where every curve is a straight line
    of slope -1/S and the threshold is easy to read.
    """
    import numpy as np

    plt = _plt()
    t = np.linspace(0.0, t_max, 400)
    ncols = 2 if log_scale else 1
    fig, axes = plt.subplots(1, ncols, figsize=(5.2 * ncols, 3.6), squeeze=False)
    for ax, log in zip(axes[0], (False, True)[:ncols]):
        for s in strengths:
            ax.plot(t, np.exp(-t / s), label=f"S = {s:g}")
        if threshold is not None:
            ax.axhline(threshold, color="black", ls="--", lw=1, label=f"threshold {threshold:g}")
        ax.set_xlabel("age t (time units)")
        ax.set_ylabel("retention R = exp(-t/S)")
        if log:
            ax.set_yscale("log")
            ax.set_ylim(max(1e-4, (threshold or 1e-3) / 10), 1.5)
            ax.set_title("log scale: straight lines of slope -1/S")
        else:
            ax.set_ylim(0, 1.02)
            ax.set_title("the forgetting curve")
        ax.grid(alpha=0.3)
    axes[0][0].legend(fontsize=8)
    fig.tight_layout()
    return fig


def reinforcement_trace(config=None, *, steps: int = 200, review_every: int | None = 40, share: float = 2.0):
    """Retention over ``steps`` decode steps of one token that is attended every
    ``review_every`` steps (with ``share`` times the uniform attention) and of one that never
    is, simulated with the library's own :class:`~memollm.memory.EbbinghausMemory`.

    Returns ``(steps_array, r_reviewed, r_ignored, strength_reviewed)``; the update rule is
    exactly the one generation uses (age grows by ``time_step`` per token read; a share at or
    above ``reinforce_threshold`` adds ``strength_gain * share`` to S and resets the age).
    """
    import numpy as np
    import torch

    from .config import MemoryConfig
    from .memory import EbbinghausMemory

    config = config or MemoryConfig()
    mem = EbbinghausMemory(1, config)
    mem.append(1, 2)  # token 0: reviewed; token 1: never attended
    r_rev, r_ign, s_rev = [], [], []
    for step in range(1, steps + 1):
        mem.append(1, 1)  # a new token is read: everything ages by time_step
        n = mem.num_tokens
        received = torch.zeros(1, 1, n)
        if review_every and step % review_every == 0:
            received[0, 0, 0] = share / n  # a share of ``share`` x uniform
        mem.reinforce(received, n)
        r = mem.retention()[0, 0]
        r_rev.append(float(r[0]))
        r_ign.append(float(r[1]))
        s_rev.append(float(mem.strength[0, 0, 0]))
    return np.arange(1, steps + 1), np.array(r_rev), np.array(r_ign), np.array(s_rev)


def plot_reinforcement(config=None, *, steps: int = 200, review_every: int | None = 40, share: float = 2.0,
                       threshold: float | None = None, ax=None):
    """The spaced-repetition saw-tooth: a token attended every ``review_every`` steps
    against one never attended (see :func:`reinforcement_trace`)."""
    from .config import MemoryConfig

    plt = _plt()
    config = config or MemoryConfig()
    x, r_rev, r_ign, s_rev = reinforcement_trace(config, steps=steps, review_every=review_every, share=share)
    fig = None
    if ax is None:
        fig, ax = plt.subplots(figsize=(7.5, 3.6))
    label = f"attended every {review_every} tokens" if review_every else "attended (never)"
    ax.plot(x, r_rev, label=f"{label}: S ends at {s_rev[-1]:.1f}")
    ax.plot(x, r_ign, label="never attended", ls="--")
    if threshold is not None:
        ax.axhline(threshold, color="black", lw=1, ls=":", label=f"sparse threshold {threshold:g}")
    ax.set_xlabel("generated tokens")
    ax.set_ylabel("retention R")
    ax.set_ylim(0, 1.05)
    ax.set_title(f"spaced repetition: S0={config.initial_strength:g}, time step={config.time_step:g}, "
                 f"gain={config.strength_gain:g}", fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="lower left")
    return fig if fig is not None else ax.figure


def widget_frontend() -> bool:
    """True inside a Jupyter kernel with ipywidgets installed (a front end may render them).

    There is no reliable way for a kernel to know whether its front end draws widgets, so
    :func:`forgetting_panel` always also sends a static PNG in the same output: JupyterLab
    and Colab show the sliders, static viewers (GitHub, nbval, nbconvert) show the PNG.
    """
    try:
        import ipywidgets  # noqa: F401
        from IPython import get_ipython
    except ImportError:
        return False
    shell = get_ipython()
    return shell is not None and getattr(shell, "kernel", None) is not None


def _png_bytes(fig) -> bytes:
    import io

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100, bbox_inches="tight")
    return buf.getvalue()


def forgetting_panel(config=None, *, steps: int = 200, review_every: int = 40, share: float = 2.0,
                     interactive: bool | None = None):
    """Sliders for S0, time step, strength gain and review interval redrawing the saw-tooth.

    Where widgets can be shown, displays one output holding both the live panel and a
    static PNG of the starting values (front ends pick what they can render) and returns
    None. The plot is an ``ipywidgets.Image`` redrawn off-screen, so the panel writes no
    cell outputs of its own. Without a kernel or ipywidgets (``interactive=False``) it
    returns the static figure, so a script or a test still gets the plot.
    """
    import base64

    from .config import MemoryConfig

    plt = _plt()
    config = config or MemoryConfig()
    if interactive is None:
        interactive = widget_frontend()
    if not interactive:
        return plot_reinforcement(config, steps=steps, review_every=review_every, share=share)

    import ipywidgets as widgets
    from IPython.display import display

    sliders = {
        "initial_strength": widgets.FloatSlider(value=config.initial_strength, min=0.5, max=30.0, step=0.5,
                                                description="S0"),  # linear: 5.0 stays 5.0
        "time_step": widgets.FloatLogSlider(value=config.time_step, base=10, min=-3, max=1, step=0.05,
                                            description="time step"),
        "strength_gain": widgets.FloatSlider(value=config.strength_gain, min=0.0, max=10.0, step=0.5,
                                             description="gain"),
        "review_every": widgets.IntSlider(value=review_every, min=5, max=steps, step=5, description="review every",
                                          style={"description_width": "initial"}),
    }
    image = widgets.Image(format="png")

    def render(values: dict) -> bytes:
        values = dict(values)
        every = values.pop("review_every")
        fig = plot_reinforcement(config.replace(**values), steps=steps, review_every=every, share=share)
        try:
            return _png_bytes(fig)
        finally:
            plt.close(fig)  # drawn off-screen only: nothing leaks into the cell's output

    def redraw(change=None) -> None:
        image.value = render({name: slider.value for name, slider in sliders.items()})

    for slider in sliders.values():
        slider.observe(redraw, names="value")
    redraw()
    items = list(sliders.values())
    panel = widgets.VBox([widgets.HBox(items[:2]), widgets.HBox(items[2:]), image])
    bundle = panel._repr_mimebundle_()
    bundle["image/png"] = base64.b64encode(image.value).decode("ascii")
    bundle["text/plain"] = (f"forgetting panel (S0={config.initial_strength:g}, time step={config.time_step:g}, "
                            f"gain={config.strength_gain:g}, review every {review_every})")
    display(bundle, raw=True)
    return None


# -- tokens and retention (notebooks 02, 03) ---------------------------------------------

def _token_label(token: str) -> str:
    return token.replace("\n", "\\n").replace("\t", "\\t") or "∅"


def token_heatmap(tokens, values, *, title: str = "tokens coloured by retention", label: str = "retention R",
                  vmin: float = 0.0, vmax: float = 1.0, cmap: str = "viridis", width: float = 11.0,
                  fontsize: float = 9.0, boundary: int | None = None):
    """Text laid out as it reads, each token on a box coloured by its value.

    ``boundary`` (an index into ``tokens``) starts a new line with a marker where the
    generated text begins. Newlines and tabs are shown as ``\\n`` and ``\\t``.
    """
    import matplotlib as mpl

    plt = _plt()
    if len(tokens) != len(values):
        raise ValueError(f"{len(tokens)} tokens but {len(values)} values")
    norm = mpl.colors.Normalize(vmin=vmin, vmax=vmax)
    colormap = mpl.colormaps[cmap]
    char_pt = 0.6 * fontsize  # advance of one monospace character, in points
    columns = int(0.97 * width * 72 / char_pt)  # characters that fit on one line
    rows, row, used = [], [], 0
    for i, (tok, val) in enumerate(zip(tokens, values)):
        text = _token_label(tok)
        if row and (used + len(text) > columns or (boundary is not None and i == boundary)):
            rows.append(row)
            row, used = [], 0
        row.append((i, text, val))
        used += len(text) + 1
    if row:
        rows.append(row)
    ys, y = [], 0.0
    for row in rows:  # a gap before the row where the generated text starts
        y += 0.8 if boundary is not None and row[0][0] == boundary and ys else 0.0
        ys.append(y)
        y += 1.0
    line_in = fontsize * 2.1 / 72
    height = line_in * y + 1.1
    fig = plt.figure(figsize=(width, height))
    ax = fig.add_axes((0.015, 0.75 / height, 0.97, 1 - 1.1 / height))
    ax.set_xlim(0, columns)
    ax.set_ylim(y - 0.5, -0.5)
    ax.axis("off")
    for y, row in zip(ys, rows):
        x = 0
        for i, text, val in row:
            rgba = colormap(norm(val))
            light = (0.299 * rgba[0] + 0.587 * rgba[1] + 0.114 * rgba[2]) > 0.5
            ax.text(x, y, text, family="monospace", fontsize=fontsize, va="center", ha="left",
                    color="black" if light else "white",
                    bbox=dict(boxstyle="square,pad=0.12", fc=rgba, ec="none"))
            if boundary is not None and i == boundary:
                ax.text(x, y - 0.55, "▼ generated text", fontsize=fontsize - 1, color="crimson", va="bottom")
            x += len(text) + 1
    cax = fig.add_axes((0.25, 0.3 / height, 0.5, 0.12 / height))
    fig.colorbar(mpl.cm.ScalarMappable(norm=norm, cmap=colormap), cax=cax, orientation="horizontal", label=label)
    fig.suptitle(title, fontsize=10, x=0.015, ha="left", y=1 - 0.05 / height, va="top")
    return fig


def plot_retention_by_layer(token_weights: dict, *, title: str = "retention per memory layer and position"):
    """Heat map of R, memory layers (rows) against true positions (columns)."""
    import numpy as np

    plt = _plt()
    layers = list(token_weights["retention"])
    data = np.array([token_weights["retention"][name] for name in layers])
    positions = token_weights["positions"]
    fig, ax = plt.subplots(figsize=(10, 0.22 * len(layers) + 1.6))
    im = ax.imshow(data, aspect="auto", cmap="viridis", vmin=0, vmax=1, interpolation="nearest",
                   extent=(positions[0] - 0.5, positions[-1] + 0.5, len(layers) - 0.5, -0.5))
    ax.set_yticks(range(len(layers)), [name.replace("layer_", "") for name in layers], fontsize=7)
    ax.set_xlabel("true position in the sequence")
    ax.set_ylabel("memory layer")
    ax.set_title(title, fontsize=10)
    fig.colorbar(im, ax=ax, label="retention R", pad=0.01)
    return fig


def masked_matrix(forget_events: dict, prompt_tokens: int, steps: int):
    """``[positions, steps]`` float array: 1 masked, 0 visible, NaN not yet read.

    Built from a sparse-attention result's ``forget_events`` (step -> positions newly
    masked; a masked key never comes back). Step ``s`` is the forward that reads the
    token generated at step ``s - 1``; step 0 is the prefill.
    """
    import numpy as np

    total = prompt_tokens + steps
    grid = np.full((total, steps + 1), np.nan)
    for s in range(steps + 1):
        grid[: prompt_tokens + s, s] = 0.0
    for s, positions in forget_events.items():
        for p in positions:
            grid[p, int(s):][~np.isnan(grid[p, int(s):])] = 1.0
    return grid


def plot_masked_raster(forget_events: dict, prompt_tokens: int, steps: int, *,
                       title: str = "which cached positions are masked, step by step"):
    """Raster of masked (dark) and visible (light) positions over the decode steps."""
    import matplotlib as mpl
    import numpy as np

    plt = _plt()
    grid = masked_matrix(forget_events, prompt_tokens, steps)
    cmap = mpl.colors.ListedColormap(["#cfe3f3", "#1f3b73"])
    cmap.set_bad("white")
    fig, ax = plt.subplots(figsize=(8, 4.2))
    ax.imshow(np.ma.masked_invalid(grid), aspect="auto", cmap=cmap, vmin=0, vmax=1, interpolation="nearest",
              origin="lower")
    ax.axhline(prompt_tokens - 0.5, color="crimson", lw=1, ls="--")
    ax.text(steps, prompt_tokens, " generated →", color="crimson", fontsize=8, va="bottom", ha="right")
    ax.set_xlabel("decode step (forward pass; 0 = prefill)")
    ax.set_ylabel("true position of the cached token")
    ax.set_title(title, fontsize=10)
    handles = [mpl.patches.Patch(color="#cfe3f3", label="visible"), mpl.patches.Patch(color="#1f3b73", label="masked"),
               mpl.patches.Patch(facecolor="white", edgecolor="grey", label="not read yet")]
    ax.legend(handles=handles, fontsize=8, loc="upper left")
    return fig


# -- the physical cache (notebook 04) ----------------------------------------------------

def plot_kv_bytes(traces: dict, *, budget_bytes: float | None = None, title: str = "KV-cache size while generating",
                  prompt_tokens: int = 0):
    """KV-cache MiB against generated tokens, one line per labelled trace (list of bytes,
    one per forward step as recorded by :func:`memollm.cache.kv_trace`)."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(7, 3.8))
    for label, values in traces.items():
        ax.plot(range(len(values)), [v / 2**20 for v in values], label=label)
    if budget_bytes is not None:
        ax.axhline(budget_bytes / 2**20, color="black", ls=":", lw=1, label="budget")
    ax.set_xlabel("generated tokens" + (f" (after a {prompt_tokens}-token prompt)" if prompt_tokens else ""))
    ax.set_ylabel("KV cache (MiB)")
    ax.set_title(title, fontsize=10)
    ax.set_ylim(bottom=0)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return fig


def plot_logit_difference(diff, *, title: str = "evicted cache without true position ids vs with them"):
    """Bars of the largest absolute logit difference at each generation step."""
    plt = _plt()
    values = [float(d) for d in diff]
    fig, ax = plt.subplots(figsize=(7, 3.2))
    ax.bar(range(len(values)), values, color="crimson")
    ax.set_xlabel("generation step (0 = after the prompt, before any eviction)")
    ax.set_ylabel("max |logit difference|")
    ax.set_title(title, fontsize=10)
    ax.grid(alpha=0.3, axis="y")
    return fig


# -- results of the benchmark (memollm bench) ---------------------------------------------------
def _series(records: Sequence[dict[str, Any]]):
    by_label: dict[str, list[dict[str, Any]]] = {}
    for r in sorted(records, key=lambda r: r["context_tokens"]):
        by_label.setdefault(r["label"], []).append(r)
    return by_label


def _context_axis(ax, records: Sequence[dict[str, Any]]) -> None:
    """Log x axis ticked at the measured contexts, written as plain numbers."""
    from matplotlib.ticker import NullFormatter

    ax.set_xscale("log")
    ax.set_xticks(sorted({r["context_tokens"] for r in records}))
    ax.set_xticklabels([str(c) for c in sorted({r["context_tokens"] for r in records})])
    ax.xaxis.set_minor_formatter(NullFormatter())


def plot_speed(records: Sequence[dict[str, Any]], ax=None):
    """Decode tok/s (median, with min-max bars) against context length, one line per case."""
    import matplotlib.pyplot as plt

    fig, ax = (ax.figure, ax) if ax is not None else plt.subplots(figsize=(6.4, 4.0))
    for label, rs in _series(records).items():
        x = [r["context_tokens"] for r in rs]
        y = [r["tokens_per_second"] for r in rs]
        err = [[r["tokens_per_second"] - r["tokens_per_second_min"] for r in rs],
               [r["tokens_per_second_max"] - r["tokens_per_second"] for r in rs]]
        ax.errorbar(x, y, yerr=err, marker="o", capsize=3, label=label)
    _context_axis(ax, records)
    ax.set_xlabel("context (prompt tokens)")
    ax.set_ylabel("decode tokens / s (median, min-max)")
    r0 = records[0]
    ax.set_title(f"Decode speed, {r0['new_tokens']} new tokens, {r0['device']} {r0['dtype']}")
    ax.grid(True, alpha=0.3)
    ax.set_ylim(bottom=0)
    ax.legend(fontsize=8)
    return fig


def plot_speedup(records: Sequence[dict[str, Any]], ax=None):
    """Decode speed as a ratio to baseline (median of per-round ratios) against context length:
    the figure to read on a noisy machine, since both runs of a ratio shared the same moment."""
    import matplotlib.pyplot as plt

    fig, ax = (ax.figure, ax) if ax is not None else plt.subplots(figsize=(6.4, 4.0))
    for label, rs in _series(records).items():
        rs = [r for r in rs if r["speedup_vs_baseline"] is not None]
        if rs:
            ax.plot([r["context_tokens"] for r in rs], [r["speedup_vs_baseline"] for r in rs], marker="o",
                    label=label, linestyle="--" if label == "baseline" else "-")
    _context_axis(ax, records)
    ax.axhline(1.0, color="grey", linewidth=0.8)
    ax.set_xlabel("context (prompt tokens)")
    ax.set_ylabel("decode speed / baseline (same round)")
    ax.set_title("Speed-up over baseline (median of per-round ratios)")
    ax.grid(True, alpha=0.3)
    ax.set_ylim(bottom=0)
    ax.legend(fontsize=8)
    return fig


def plot_kv_memory(records: Sequence[dict[str, Any]], ax=None):
    """KV-cache megabytes at the end of generation against context length."""
    import matplotlib.pyplot as plt

    fig, ax = (ax.figure, ax) if ax is not None else plt.subplots(figsize=(6.4, 4.0))
    from matplotlib.ticker import FuncFormatter

    markers, styles = "osv^D<>p", ("-", "--", ":", "-.")
    for i, (label, rs) in enumerate(_series(records).items()):  # equal lines overlap: vary marker and style
        ax.plot([r["context_tokens"] for r in rs], [r["kv_cache_bytes"] / 1e6 for r in rs],
                marker=markers[i % len(markers)], linestyle=styles[i % len(styles)],
                markersize=9 - 1.5 * (i % 4), label=label, alpha=0.85)
    _context_axis(ax, records)
    ax.set_yscale("log")
    ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
    low, high = ax.get_ylim()  # label the minor ticks only when the axis spans less than a decade
    ax.yaxis.set_minor_formatter(FuncFormatter(lambda v, _: f"{v:g}" if high < 10 * low else ""))
    ax.set_xlabel("context (prompt tokens)")
    ax.set_ylabel("KV cache at the end (MB)")
    ax.set_title("KV-cache memory")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    return fig


def save_bench_plots(records: Sequence[dict[str, Any]], prefix: str = "bench") -> list[str]:
    """Write ``<prefix>_tokens_per_second.png``, ``<prefix>_speedup.png`` and ``<prefix>_kv_memory.png``
    into figures/ (through ``memollm.viz.save_figure``)."""
    import matplotlib.pyplot as plt

    paths = []
    for name, plot in (("tokens_per_second", plot_speed), ("speedup", plot_speedup), ("kv_memory", plot_kv_memory)):
        fig = plot(records)
        paths.append(str(save_figure(fig, f"{prefix}_{name}")))
        plt.close(fig)
    return paths


# -- results of the quality evaluation (memollm eval) -------------------------------------------
def _budget_axis(ax, budgets) -> None:
    ticks = sorted({int(b) for b in budgets if b is not None})
    ax.set_xscale("log", base=2)
    ax.set_xticks(ticks, [str(t) for t in ticks])
    ax.minorticks_off()


def plot_ppl(records: list[dict], ax=None, value: str = "perplexity"):
    import matplotlib.pyplot as plt

    if ax is None:
        _, ax = plt.subplots(figsize=(6.4, 4.2))
    recs = [r for r in records if r["evaluation"] == "ppl"]
    for policy in dict.fromkeys(r["policy"] for r in recs):
        pts = sorted((r["budget"], r[value]) for r in recs if r["policy"] == policy)
        style = dict(ls="--", color="black") if policy == "full" else dict(marker="o")
        if policy == "ebbinghaus_fixed":  # ranks exactly like streaming: draw it dotted on top
            style = dict(marker="x", ls=":", lw=2)
        ax.plot([p[0] for p in pts], [p[1] for p in pts], label=policy, **style)
    _budget_axis(ax, [r["budget"] for r in recs])
    ax.set_xlabel("KV-cache budget (tokens)")
    ax.set_ylabel(value.replace("_", " "))
    ax.set_title("Perplexity at equal memory (lower is better)")
    ax.legend(fontsize=8)
    return ax.figure


def plot_passkey(records: list[dict], ax=None):
    """Accuracy per policy (rows) and budget / length / depth (columns), annotated (seaborn's heat map)."""
    import matplotlib.pyplot as plt
    import numpy as np
    import seaborn as sns

    recs = [r for r in records if r["evaluation"] == "passkey"]
    policies = list(dict.fromkeys(r["policy"] for r in recs))
    cols = list(dict.fromkeys((r["budget"], r["length"], r["depth"]) for r in recs if r["budget"] is not None))
    grid = np.full((len(policies), len(cols)), np.nan)
    for i, p in enumerate(policies):
        for j, (b, L, d) in enumerate(cols):
            hit = [r for r in recs if r["policy"] == p and r["length"] == L and r["depth"] == d
                   and (r["budget"] == b or p == "full")]
            if hit:
                grid[i, j] = hit[0]["accuracy"]
    if ax is None:
        _, ax = plt.subplots(figsize=(max(4.5, 0.7 * len(cols) + 2.5), 0.45 * len(policies) + 1.6))
    sns.heatmap(grid, vmin=0, vmax=1, cmap="viridis", annot=True, fmt=".2f", annot_kws={"fontsize": 7},
                cbar_kws={"fraction": 0.03}, yticklabels=policies,
                xticklabels=[f"B{b}\nL{L}\nd{d:.0%}" for b, L, d in cols], ax=ax)
    ax.tick_params(axis="x", labelsize=7, rotation=0)
    ax.tick_params(axis="y", rotation=0)
    ax.set_title("Passkey accuracy (B budget, L prompt tokens, d depth)")
    return ax.figure


def plot_agreement(records: list[dict], ax=None):
    import matplotlib.pyplot as plt

    if ax is None:
        _, ax = plt.subplots(figsize=(6.4, 4.2))
    recs = [r for r in records if r["evaluation"] == "agreement" and r["policy"] != "full"]
    for policy in dict.fromkeys(r["policy"] for r in recs):
        pts = sorted((r["budget"], r["agreement"]) for r in recs if r["policy"] == policy)
        ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", label=policy)
    _budget_axis(ax, [r["budget"] for r in recs])
    ax.set_ylim(0, 1.02)
    ax.set_xlabel("KV-cache budget (tokens)")
    ax.set_ylabel("greedy agreement with the full cache")
    ax.legend(fontsize=8)
    return ax.figure



def plot_stream(records: list[dict], ax=None):
    """Perplexity against position along a long stream: one line per policy, scheme and budget."""
    import matplotlib.pyplot as plt

    if ax is None:
        _, ax = plt.subplots(figsize=(7.2, 4.2))
    recs = [r for r in records if r["evaluation"] == "stream"]
    for key in dict.fromkeys((r["policy"], r["positions"], r["budget"]) for r in recs):
        pts = sorted((r["window_start"], r["perplexity"]) for r in recs
                     if (r["policy"], r["positions"], r["budget"]) == key)
        policy, scheme, budget = key
        label = "full cache" if policy == "full" else f"{policy}, positions={scheme}, budget {budget}"
        style = dict(color="black", lw=2) if policy == "full" else dict(ls="-" if scheme == "cache" else "--")
        ax.plot([p[0] for p in pts], [p[1] for p in pts], marker=".", label=label, **style)
    ax.set_yscale("log")
    ax.set_xlabel("position in the stream (window start, tokens)")
    ax.set_ylabel("perplexity of the window")
    ax.set_title("Streaming past the context window")
    ax.legend(fontsize=7)
    return ax.figure


# -- schematics drawn by code (notebooks 02, 03) -------------------------------------------

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

    plt = _plt()
    forgotten = forgotten if forgotten is not None else {7: [5, 6], 10: [4, 8]}
    grid = mask_grid(n, forgotten, sinks)
    colors = ["#ffffff", "#cfe3f3", "#8cc084", "#1f3b73"]
    names = ["future (causal)", "visible", "sink (never masked)", "masked (forgotten)"]
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4.8), gridspec_kw={"width_ratios": [1, 1.05]})
    left.imshow(grid, cmap=mpl.colors.ListedColormap(colors), vmin=-0.5, vmax=3.5, interpolation="nearest")
    left.set_xticks(range(n))
    left.set_yticks(range(n))
    left.tick_params(labelsize=7)
    left.set_xlabel("key position (cached token)")
    left.set_ylabel("query position")
    skippable = by_forgetting = 0
    for bi in range(0, n, block):
        for bj in range(0, n, block):
            tile = grid[bi:bi + block, bj:bj + block]
            if not np.isin(tile, (1, 2)).any():
                skippable += 1
                by_forgetting += int((tile == 3).any())
                left.add_patch(mpl.patches.Rectangle((bj - 0.5, bi - 0.5), tile.shape[1], tile.shape[0],
                                                     fill=False, hatch="///", ec="#999999", lw=0))
    for b in range(block, n, block):
        left.axhline(b - 0.5, color="black", lw=1)
        left.axvline(b - 0.5, color="black", lw=1)
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


def plot_kept_positions(kept: dict[str, list[int]], total: int, *, marks: dict[str, range] | None = None,
                        title: str = "which tokens each layer keeps"):
    """A raster of ``kept`` (``result["kept_positions"]`` of a per-layer or per-head ``evict``
    run): one row per layer (or head), one column per position read, dark where the token is
    still cached. ``marks`` shades named spans, e.g. ``{"pass key": range(496, 510)}``."""
    import matplotlib.pyplot as plt
    import numpy as np

    names = list(kept)
    grid = np.zeros((len(names), total))
    for i, name in enumerate(names):
        grid[i, [p for p in kept[name] if p < total]] = 1.0
    fig, ax = plt.subplots(figsize=(8.5, max(2.5, 0.12 * len(names) + 1.2)))
    ax.imshow(grid, aspect="auto", cmap="Greys", interpolation="nearest", vmin=0, vmax=1)
    for label, span in (marks or {}).items():
        ax.axvspan(span.start - 0.5, span.stop - 0.5, color="tab:red", alpha=0.25, label=label)
    step = max(1, len(names) // 10)
    ax.set_yticks(range(0, len(names), step), [names[i].replace("layer_", "L") for i in range(0, len(names), step)])
    ax.set_xlabel("position of the token in the prompt")
    ax.set_title(title)
    if marks:
        ax.legend(loc="upper right", fontsize=8)
    return fig


def plot_passkey_summary(rows: list[dict], ax=None):
    """Passkey accuracy with its interval per policy, one group of bars per granularity and budget
    (``rows`` from ``memollm.stats.summarize(..., by=("policy", "granularity", "budget_fraction"))``)."""
    import matplotlib.pyplot as plt
    import numpy as np

    groups = list(dict.fromkeys((r["granularity"], r["budget_fraction"]) for r in rows))
    policies = list(dict.fromkeys(r["policy"] for r in rows))
    if ax is None:
        _, ax = plt.subplots(figsize=(max(6.4, 1.3 * len(groups) + 2), 4.2))
    width = 0.8 / max(1, len(policies))
    for i, policy in enumerate(policies):
        cells = {(r["granularity"], r["budget_fraction"]): r for r in rows if r["policy"] == policy}
        x = np.arange(len(groups)) + (i - (len(policies) - 1) / 2) * width
        mean = [cells[g]["mean"] if g in cells else np.nan for g in groups]
        low = [cells[g]["mean"] - cells[g]["low"] if g in cells else 0 for g in groups]
        high = [cells[g]["high"] - cells[g]["mean"] if g in cells else 0 for g in groups]
        ax.bar(x, mean, width, yerr=[low, high], capsize=2, label=policy)
    ax.set_xticks(range(len(groups)), [f"{g}\n{f:.1%} of doc" if f is not None else g for g, f in groups])
    ax.set_ylim(0, 1.05)
    ax.set_ylabel("passkey accuracy (95% interval)")
    ax.set_title("Question after the document: who keeps the key?")
    ax.legend(fontsize=8, ncol=2)
    return ax.figure
