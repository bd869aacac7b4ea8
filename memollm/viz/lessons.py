"""The lessons' plots: forgetting curves and the interactive panel (01), token heat maps and
retention per layer (02), masked positions (03), KV bytes, position ids and kept tokens (04),
long streams (05), learned strengths over a text (09).
It is long because the notebooks reach every lesson figure through this one module."""

from __future__ import annotations

from typing import Sequence

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
    above ``review_threshold`` adds ``strength_gain * share`` to S and resets the age).
    """
    import numpy as np
    import torch

    from ..config import MemoryConfig
    from ..memory import EbbinghausMemory

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
    from ..config import MemoryConfig

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
    ax.set_xlabel("tokens read")
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

    from ..config import MemoryConfig

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


def plot_token_strength(tokens, log_strength, *, title: str = "tokens coloured by their learned strength S",
                        vmin: float | None = None, vmax: float | None = None, cmap: str = "magma",
                        width: float = 11.0, fontsize: float = 9.0):
    """Text laid out as it reads, each token on a box coloured by ``log S`` (natural log, S in tokens).

    ``log_strength``: one value per token (a gate's log S, e.g. averaged over layers and heads).
    The colour scale runs from ``vmin`` to ``vmax`` (default: the 2nd and 98th percentiles, so a
    sink's huge S does not wash out the rest); the colour bar is labelled in S itself.
    """
    import math

    import numpy as np

    values = np.asarray([float(v) for v in log_strength])
    if len(tokens) != len(values):
        raise ValueError(f"{len(tokens)} tokens but {len(values)} values")
    lo = float(np.percentile(values, 2)) if vmin is None else float(vmin)
    hi = float(np.percentile(values, 98)) if vmax is None else float(vmax)
    if hi <= lo:
        hi = lo + 1.0
    fig = token_heatmap(list(tokens), values.tolist(), title=title, label="S in tokens (log scale)",
                        vmin=lo, vmax=hi, cmap=cmap, width=width, fontsize=fontsize)
    cax = fig.axes[-1]
    ticks = np.linspace(lo, hi, 5)
    cax.set_xticks(ticks, [f"{math.exp(t):.2g}" for t in ticks])
    return fig


def plot_retention_by_layer(token_weights: dict, *, title: str = "retention per memory layer and position"):
    """Heat map of R, memory layers (rows) against true positions (columns; seaborn's heat map)."""
    import pandas as pd
    import seaborn as sns

    plt = _plt()
    layers = list(token_weights["retention"])
    data = pd.DataFrame([token_weights["retention"][name] for name in layers],
                        index=[name.replace("layer_", "") for name in layers], columns=token_weights["positions"])
    fig, ax = plt.subplots(figsize=(10, 0.22 * len(layers) + 1.6))
    sns.heatmap(data, vmin=0, vmax=1, cmap="viridis", cbar_kws={"label": "retention R", "pad": 0.01}, ax=ax)
    ax.tick_params(axis="y", labelsize=7, rotation=0)
    ax.tick_params(axis="x", rotation=0)
    ax.set_xlabel("true position in the sequence")
    ax.set_ylabel("memory layer")
    ax.set_title(title, fontsize=10)
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
    """Raster of masked (dark) and visible (light) positions over the decode steps (seaborn's
    heat map; blank: not read yet)."""
    import matplotlib as mpl
    import seaborn as sns

    plt = _plt()
    grid = masked_matrix(forget_events, prompt_tokens, steps)
    cmap = mpl.colors.ListedColormap(["#cfe3f3", "#1f3b73"])
    fig, ax = plt.subplots(figsize=(8, 4.2))
    every = next(k for k in (1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 10**9) if k * 8 >= len(grid))
    sns.heatmap(grid, vmin=0, vmax=1, cmap=cmap, cbar=False, yticklabels=every, ax=ax)  # NaN (not read yet): blank
    ax.set_facecolor("white")
    ax.invert_yaxis()  # position 0 at the bottom
    ax.tick_params(axis="both", rotation=0)
    ax.axhline(prompt_tokens, color="crimson", lw=1, ls="--")
    ax.text(steps + 1, prompt_tokens + 0.5, " generated →", color="crimson", fontsize=8, va="bottom", ha="right")
    ax.set_xlabel("decode step (forward pass; 0 = prefill)")
    ax.set_ylabel("true position of the cached token")
    ax.set_title(title, fontsize=10)
    handles = [mpl.patches.Patch(color="#cfe3f3", label="visible"), mpl.patches.Patch(color="#1f3b73", label="masked"),
               mpl.patches.Patch(facecolor="white", edgecolor="grey", label="not read yet")]
    ax.legend(handles=handles, fontsize=8, loc="upper left")
    return fig


def plot_kv_bytes(traces: dict, *, budget_bytes: float | None = None, title: str = "KV-cache size while generating",
                  prompt_tokens: int = 0):
    """KV-cache MiB against generated tokens, one line per labelled trace (list of bytes,
    one per forward step as recorded by :func:`memollm.lessons.kv_trace`)."""
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
    ax.xaxis.get_major_locator().set_params(integer=True)  # steps are whole numbers
    ax.set_xlabel("generation step (0 = after the prompt, before any eviction)")
    ax.set_ylabel("max |logit difference|")
    ax.set_title(title, fontsize=10)
    ax.grid(alpha=0.3, axis="y")
    return fig


def plot_kept_positions(kept: dict[str, list[int]], total: int, *, marks: dict[str, range] | None = None,
                        title: str = "which tokens each layer keeps",
                        xlabel: str = "position of the token in the prompt", ax=None):
    """``kept`` (``result["kept_positions"]`` of a per-layer or per-head ``evict`` run): one row
    per layer (or head), one tick per token still cached, at its position (ticks, not pixels,
    so a lone token stays visible in a long text). ``marks`` shades named spans, e.g.
    ``{"pass key": range(496, 510)}``; ``ax``: draw into an existing axes."""
    import matplotlib.pyplot as plt

    names = list(kept)
    if ax is None:
        _, ax = plt.subplots(figsize=(8.5, max(2.5, 0.12 * len(names) + 1.2)))
    ax.eventplot([[p for p in kept[name] if p < total] for name in names], lineoffsets=range(len(names)),
                 linelengths=0.9, linewidths=0.6, colors="black")
    ax.set_xlim(-0.5, total - 0.5)
    ax.set_ylim(len(names) - 0.5, -0.5)  # the first layer on top
    for label, span in (marks or {}).items():
        ax.axvspan(span.start - 0.5, span.stop - 0.5, color="tab:red", alpha=0.25, label=label)
    step = max(1, len(names) // 10)
    ax.set_yticks(range(0, len(names), step), [names[i].replace("layer_", "L") for i in range(0, len(names), step)])
    ax.set_xlabel(xlabel)
    ax.set_title(title)
    if marks:  # outside the axes, on the right: inside it would cover the first layers' rows
        ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=9, frameon=False)
    return ax.figure



def plot_conversation(snapshots: Sequence[dict], boundaries: Sequence[tuple[str, int]] = (), ax=None,
                      title: str = "What the cache holds after each turn", vmin: float | None = None, *,
                      marks: dict[str, Sequence[int]] | None = None):
    """Heat map of a chat's cache over the conversation: one row per ``ChatSession.snapshot()``,
    one column per token (true position). Colour: the token's retention R while cached (1 for
    a policy without a forgetting curve); grey: evicted; blank: not read yet. Dashed lines
    mark where each user turn starts, dotted lines each reply (``ChatSession.boundaries``).
    ``vmin``: the low end of the colour scale (default: the lowest retention shown, rounded down).
    ``marks`` outlines named tokens in every row, e.g. ``{"the fact": chat.locate("Clara")}``
    (true positions; a legend names them)."""
    import matplotlib.pyplot as plt
    import numpy as np
    from matplotlib.patches import Rectangle

    width = max(s["tokens"] for s in snapshots)
    grid = np.full((len(snapshots), width), np.nan)
    for i, s in enumerate(snapshots):
        grid[i, : s["tokens"]] = -1.0  # read, then evicted unless cached below
        values = s["retention"] if s["retention"] is not None else [1.0] * len(s["positions"])
        grid[i, s["positions"]] = values
    if vmin is None:
        shown = grid[grid >= 0]
        vmin = float(np.floor(shown.min() * 10) / 10) if shown.size and shown.min() < 1 else 0.0
    grid = np.where(grid >= 0, np.maximum(grid, vmin), grid)  # below vmin shows as vmin, not as evicted
    if ax is None:
        _, ax = plt.subplots(figsize=(11, 0.45 * len(snapshots) + 1.6))
    cmap = plt.get_cmap("viridis").with_extremes(under="#d0d0d0", bad="white")
    # Still an image, not seaborn's heat map like the others: tests/test_views.py reads it with get_images().
    im = ax.imshow(np.ma.masked_invalid(grid), aspect="auto", cmap=cmap, vmin=vmin, vmax=1.0,
                   interpolation="nearest")
    for role, pos in boundaries:
        ax.axvline(pos - 0.5, color="black" if role == "user" else "#c0392b", lw=0.8,
                   ls="--" if role == "user" else ":")
    for i, (name, positions) in enumerate((marks or {}).items()):
        colour = ("#e74c3c", "#f39c12", "#8e44ad", "#16a085")[i % 4]
        for j, pos in enumerate(sorted(positions)):
            ax.add_patch(Rectangle((pos - 0.5, -0.5), 1, len(snapshots), fill=False, edgecolor=colour, lw=1.6,
                                   label=name if j == 0 else None))
    ax.set_yticks(range(len(snapshots)), [f"after turn {s['turn']}" for s in snapshots])
    ax.set_xlabel("token (true position in the conversation); grey = evicted")
    ax.set_title(title)
    if marks:
        ax.legend(loc="upper left", bbox_to_anchor=(0, -0.18), ncol=len(marks), fontsize=9, frameon=False)
    ax.figure.colorbar(im, ax=ax, fraction=0.03, label="retention R")
    return ax.figure



def plot_generation_memory(result: dict, *, context: int | None = None):
    """Memory along one long generation (``scripts/long_generation.py``'s JSON): the KV cache and
    the process's resident memory against position, ``context`` a labelled vertical line."""
    plt = _plt()
    rows = [r for r in result["series"] if r["new_tokens"] > 0]  # the first row is before the prefill
    x = [r["new_tokens"] + result["prompt_tokens"] for r in rows]
    fig, axes = plt.subplots(1, 2, figsize=(11, 3.6))
    for ax, key, label in ((axes[0], "kv_cache_mib", "KV cache (MiB)"), (axes[1], "rss_mib", "resident memory (MiB)")):
        ax.plot(x, [r[key] for r in rows], marker=".", label=label)
        ax.set_ylim(0, max(r[key] for r in rows) * 1.3)
        ax.set_xlabel("position (prompt + generated tokens)")
        ax.set_ylabel(label)
        if context:
            ax.axvline(context, color="grey", lw=1.5, ls=":", label=f"trained context ({context:,})")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=9, loc="lower right")
    fig.suptitle(f"{result['new_tokens']:,} tokens generated with evict, budget {result['budget']}, "
                 f"positions={result['positions']!r}", fontsize=10)
    fig.tight_layout()
    return fig
