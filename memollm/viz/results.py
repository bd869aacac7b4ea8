"""Plots of measured results: the benchmark (speed, speed-up, KV memory) and the quality
evaluation (perplexity, passkey, agreement, long streams)."""

from __future__ import annotations

from typing import Any, Sequence

from .figures import save_figure

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
    low, high = ax.get_ylim()  # not from 0: ratios of 0.93 and 1.00 would look alike
    pad = max(0.02, 0.1 * (high - low))
    ax.set_ylim(low - pad, high + pad)
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


def _budget_axis(ax, budgets) -> None:
    ticks = sorted({int(b) for b in budgets if b is not None})
    ax.set_xscale("log", base=2)
    ax.set_xticks(ticks, [str(t) for t in ticks])
    ax.minorticks_off()


def plot_ppl(records: list[dict], ax=None, value: str = "perplexity_after_budget", peer: str = "streaming"):
    """Each policy's paired difference to ``peer`` over the passages, per budget, with its
    Student-t 95% interval (below zero: better than ``peer``). Passages differ far more than
    policies, so the paired difference is what a reader should look at; without ``peer`` in the
    records, the mean over passages is drawn instead."""
    import matplotlib.pyplot as plt
    import numpy as np

    from ..stats import bootstrap_ci, paired_difference

    if ax is None:
        _, ax = plt.subplots(figsize=(6.8, 4.2))
    recs = [r for r in records if r["evaluation"] == "ppl" and r["policy"] != "full"]
    table = {(r["policy"], r["budget"], r.get("passage", "")): r[value] for r in recs}
    budgets = sorted({r["budget"] for r in recs})
    paired = any(k[0] == peer for k in table)
    policies = [p for p in dict.fromkeys(r["policy"] for r in recs) if not (paired and p == peer)]
    width = 0.8 / max(1, len(policies))
    for i, policy in enumerate(policies):
        points = []
        for j, budget in enumerate(budgets):
            keys = sorted(k[2] for k in table if k[:2] == (policy, budget))
            if not keys:
                continue
            mine = [table[policy, budget, k] for k in keys]
            if paired:
                est, lo, hi = paired_difference(mine, [table[peer, budget, k] for k in keys])
            else:
                est, lo, hi = bootstrap_ci(mine)
            points.append((j + (i - (len(policies) - 1) / 2) * width, est, est - lo, hi - est))
        x, y, low, high = (np.array(v) for v in zip(*points))
        ax.errorbar(x, y, yerr=[low, high], fmt="o", capsize=3, label=policy)
    if paired:
        ax.axhline(0, color="black", lw=1)
    ax.set_xticks(range(len(budgets)), [str(b) for b in budgets])
    ax.set_xlabel("KV-cache budget (tokens)")
    name = value.replace("_", " ")
    ax.set_ylabel(f"{name}: policy - {peer}" if paired else name)
    ax.set_title(f"Perplexity at equal memory, paired against {peer} (below 0: better)" if paired
                 else "Perplexity at equal memory (lower is better)", fontsize=10)
    ax.grid(alpha=0.3, axis="y")
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


def plot_stream(records: list[dict], *, context: int | None = None, granularity: str = "layer",
                labels: dict[str, str] | None = None, policies: Sequence[str] | None = None,
                budgets: Sequence[int] | None = None):
    """Perplexity along a long stream (``memollm eval stream`` records): one panel per position
    scheme (true positions, positions inside the cache), each with its own y range, one colour per
    policy, one line style per budget, the full cache in both; ``context`` (the trained positions) is
    a labelled vertical line. Records of other granularities are left out (``streaming`` has none:
    it ranks by position). ``labels`` renames policies in the legend; ``policies`` and ``budgets``
    keep only those lines (a figure read at a notebook's width holds a handful)."""
    import matplotlib.pyplot as plt

    labels = labels or {}
    recs = [r for r in records if r["evaluation"] == "stream"]
    full = sorted((r["window_start"], r["perplexity"]) for r in recs if r["policy"] == "full")
    mine = [r for r in recs if r["policy"] != "full" and r.get("granularity", granularity) == granularity
            and (policies is None or r["policy"] in policies) and (budgets is None or r["budget"] in budgets)]
    policies = [p for p in (policies or dict.fromkeys(r["policy"] for r in mine))
                if any(r["policy"] == p for r in mine)]
    budgets = sorted({r["budget"] for r in mine})
    styles = dict(zip(budgets, ("-", "--", ":", "-.")))
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.4))
    for ax, scheme, title in zip(axes, ("true", "cache"), ("true positions", "positions inside the cache")):
        if full:
            ax.plot(*zip(*full), color="black", lw=2, label="full cache")
        for i, policy in enumerate(policies):
            for budget in budgets:
                pts = sorted((r["window_start"], r["perplexity"]) for r in mine
                             if (r["policy"], r["positions"], r["budget"]) == (policy, scheme, budget))
                if pts:
                    ax.plot(*zip(*pts), color=f"C{i}", ls=styles[budget], marker=".",
                            label=f"{labels.get(policy, policy)}, budget {budget}")
        if context:
            ax.axvline(context, color="grey", lw=1.5, ls=":", label=f"trained context ({context:,})")
        low, high = ax.get_ylim()
        if high > 10 * max(low, 1e-9):  # a log axis where the lines span more than a factor of ten
            ax.set_yscale("log")
        ax.set_title(title)
        ax.set_xlabel("position in the stream (window start, tokens)")
        ax.grid(alpha=0.3, which="both")
    axes[0].set_ylabel("perplexity of the window")
    handles, names = axes[1].get_legend_handles_labels()
    fig.tight_layout()
    # below the panels, as many rows as it needs (saved and shown with bbox_inches="tight")
    fig.legend(handles, names, loc="upper center", bbox_to_anchor=(0.5, 0.0), ncol=min(4, len(names)), fontsize=9,
               frameon=False)
    return fig


def plot_long_generation(result: dict, *, context: int | None = None):
    """Memory along one long generation (``scripts/long_generation.py``'s JSON): the KV cache and
    the process's resident memory against generated tokens."""
    import matplotlib.pyplot as plt

    rows = [r for r in result["series"] if r["new_tokens"] > 0]  # the first row is before the prefill
    x = [r["new_tokens"] + result["prompt_tokens"] for r in rows]
    fig, axes = plt.subplots(1, 2, figsize=(11, 3.6))
    for ax, key, label in ((axes[0], "kv_cache_mib", "KV cache (MiB)"), (axes[1], "rss_mib", "resident memory (MiB)")):
        ax.plot(x, [r[key] for r in rows], marker=".")
        ax.set_ylim(0, max(r[key] for r in rows) * 1.15)
        ax.set_xlabel("position (prompt + generated tokens)")
        ax.set_ylabel(label)
        if context:
            ax.axvline(context, color="grey", lw=1, ls=":")
        ax.grid(alpha=0.3)
    fig.suptitle(f"{result['new_tokens']:,} tokens generated with evict, budget {result['budget']}, "
                 f"positions={result['positions']!r}", fontsize=10)
    fig.tight_layout()
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
        low = [max(0.0, cells[g]["mean"] - cells[g]["low"]) if g in cells else 0 for g in groups]
        high = [max(0.0, cells[g]["high"] - cells[g]["mean"]) if g in cells else 0 for g in groups]
        ax.bar(x, mean, width, yerr=[low, high], capsize=2, label=policy)
    ax.set_xticks(range(len(groups)), [f"{g}\n{f:.1%} of doc" if f is not None else g for g, f in groups])
    ax.set_ylim(0, 1.2)
    ax.set_yticks([0, 0.2, 0.4, 0.6, 0.8, 1.0])
    ax.set_ylabel("passkey accuracy (95% interval)")
    ax.set_title("Question after the document: who keeps the key?")
    ax.legend(fontsize=8, ncol=len(policies), loc="upper center")
    return ax.figure



def plot_recall(result, fractions: Sequence[float] | None = None, *, intervals: bool = True,
                unit: str = "conversation"):
    """Bars per policy: answer correct (left) and the share of the fact still cached in some
    layer (right), one bar per number of reviews (0, 1, 2), with 95% intervals over
    conversations (``intervals=False``: the means alone, where comparisons are made by paired
    differences instead); one row per budget fraction (``full`` in every row).
    ``result``: what ``memollm.evaluate.recall.recall`` returns, or its records; ``unit`` names
    what a budget fraction is a fraction of ("passage" for recall along a stream)."""
    import matplotlib.pyplot as plt
    import numpy as np

    from ..evaluate.recall import recall_summary

    summary = result["summary"] if isinstance(result, dict) else recall_summary(result)
    every = [r for rows in summary.values() for r in rows]
    if fractions is None:
        fractions = sorted({r["budget_fraction"] for r in every if r["budget_fraction"] is not None})
    fractions = list(fractions) or [None]
    fig, axes = plt.subplots(len(fractions), 2, figsize=(11, 3.6 * len(fractions)), sharey=True, squeeze=False)
    colors = ("#9aa5b1", "#7fb3e6", "#2a6fdb")
    for k, fraction in enumerate(fractions):
        for ax, value, title in ((axes[k, 0], "correct", "answer correct"),
                                 (axes[k, 1], "kept_share", "share of the fact still cached")):
            pick = [r for r in summary.get(value, []) if r["budget_fraction"] in (fraction, None)]
            policies = list(dict.fromkeys(r["policy"] for r in pick))
            x = np.arange(len(policies))
            for j, reviews in enumerate((0, 1, 2)):
                got = {r["policy"]: r for r in pick if r["reviews"] == reviews}
                mean = np.array([got[p]["mean"] if p in got else np.nan for p in policies])
                lo = np.array([got[p]["low"] if p in got and got[p]["low"] is not None else m
                               for p, m in zip(policies, mean)])
                hi = np.array([got[p]["high"] if p in got and got[p]["high"] is not None else m
                               for p, m in zip(policies, mean)])
                ax.bar(x + (j - 1) * 0.27, mean, 0.27, label=f"{reviews} review{'s' * (reviews != 1)}",
                       color=colors[j], yerr=np.vstack([mean - lo, hi - mean]) if intervals else None, capsize=2,
                       error_kw={"lw": 1})
            ax.set_xticks(x, policies, rotation=30, ha="right")
            ax.set_ylim(0, 1.05)
            ax.set_title(f"{title} (budget {fraction:.0%} of the {unit}; full: no limit)"
                         if fraction is not None else title, fontsize=10)
        axes[k, 0].set_ylabel(f"mean over {unit}s")
    axes[0, 0].legend(fontsize=8)
    fig.tight_layout()
    return fig
