"""Statistics before claims: intervals and paired differences over passages that hold for small samples.

A quality number measured on one passage says little: passages differ far more in
difficulty (a passage of code-heavy reference text against a page of dialogue) than
policies differ from each other. So every result is a mean over several passages (or
seeded cases) with a bootstrap interval, and policies are compared *paired*: the
difference is taken per passage first (policy minus baseline on the same tokens), which
cancels the passage's difficulty, and only then averaged, with a Student-t interval. A
policy is called better only where that paired interval excludes zero in the good direction.

Tables compare with :func:`paired`: a Student-t interval (exact for normal differences, and
honest at the 5 to 20 passages a run affords, where a percentile bootstrap is too narrow) or a
BCa bootstrap for skewed differences; :func:`holm` and :func:`judge` then keep a table of
several comparisons from calling chance a win.

The distributions and bootstraps are scipy's (``scipy.stats``: ``ttest_rel``, ``bootstrap``,
``binomtest``; scipy comes with the ``eval`` extra). It is imported inside the functions that
compute, so the table writers here (:func:`markdown`, :func:`markdown_table`) need only numpy.
No model, no torch needed (tensors are accepted).
"""

from __future__ import annotations

import math
from typing import Any, Callable, Iterable, Mapping, NamedTuple, Sequence

import numpy as np

_CHUNK = 1 << 22  # resampled values held at once (32 MiB of float64), whatever n and n_boot are


def _values(values, name: str = "values") -> np.ndarray:
    try:
        x = np.asarray(values, dtype=float)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{name} must be numbers: {exc}") from None
    if x.ndim != 1:
        raise ValueError(f"{name} must be one-dimensional (one value per passage or case), got shape {x.shape}")
    if x.size == 0:
        raise ValueError(f"{name} is empty")
    if not np.isfinite(x).all():
        bad = np.flatnonzero(~np.isfinite(x))[:5].tolist()
        raise ValueError(f"{name} holds non-finite values (NaN or inf) at positions {bad}")
    return x


def _pair(a, b) -> tuple[np.ndarray, np.ndarray]:
    x, y = _values(a, "a"), _values(b, "b")
    if x.size != y.size:
        raise ValueError(f"paired values need the same items: a has {x.size}, b has {y.size}")
    return x, y


def _check(n_boot: int, level: float) -> None:
    if not 0 < level < 1:
        raise ValueError(f"level must be in (0, 1), e.g. 0.95; got {level}")
    if int(n_boot) != n_boot or n_boot < 1:
        raise ValueError(f"n_boot must be a positive integer, got {n_boot}")


def _bootstrap(x: np.ndarray, statistic: Callable, method: str, *, n_boot: int, level: float,
               seed: int) -> tuple[float, float]:
    """``scipy.stats.bootstrap``'s interval of ``statistic`` over the items of ``x``, seeded."""
    from scipy import stats

    ci = stats.bootstrap((x,), statistic, method=method, n_resamples=int(n_boot), confidence_level=level,
                         batch=max(1, _CHUNK // x.size), rng=np.random.default_rng(seed)).confidence_interval
    return float(ci.low), float(ci.high)


def bootstrap_ci(values, *, n_boot: int = 2000, level: float = 0.95, seed: int = 0,
                 statistic: Callable = np.mean) -> tuple[float, float, float]:
    """``(estimate, low, high)``: ``statistic`` of ``values`` and its percentile bootstrap interval.

    ``values``: one number per independent unit (passage, seeded case). The units are
    resampled with replacement ``n_boot`` times; the interval holds the central ``level`` of
    the resampled statistics. Deterministic for a given ``seed``. With one value there is no
    spread to resample: ``(x, nan, nan)``.
    """
    x = _values(values)
    _check(n_boot, level)
    estimate = float(statistic(x))
    if x.size == 1:
        return estimate, math.nan, math.nan
    return (estimate, *_bootstrap(x, statistic, "percentile", n_boot=n_boot, level=level, seed=seed))


def paired_difference(a, b, *, level: float = 0.95) -> tuple[float, float, float]:
    """``(mean_diff, low, high)`` of ``a_i - b_i`` over the items ``i``, with :func:`paired`'s
    Student-t interval: every paired difference the package prints or draws uses this one statistic.

    ``a`` and ``b`` are measured on the same items in the same order (e.g. a policy and
    ``streaming`` on the same passages). Pairing removes the items' difficulty, which would
    otherwise swamp the difference: two policies 1% apart on passages 30% apart are
    indistinguishable unpaired and clearly apart paired.
    """
    d = paired(a, b, level=level)
    return d.mean, d.low, d.high


class Paired(NamedTuple):
    """The mean of ``a_i - b_i`` with its interval at ``level``; ``p``: two-sided p-value that the
    true mean is zero (``method="t"`` only, NaN for ``"bca"`` and for one item)."""
    mean: float
    low: float
    high: float
    n: int
    p: float
    method: str = "t"
    level: float = 0.95


def paired(a, b, *, method: str = "t", level: float = 0.95, n_boot: int = 2000, seed: int = 0) -> Paired:
    """Paired difference ``a_i - b_i`` (same items, same order): mean, interval, n and p-value.

    ``method="t"``: the Student-t interval ``mean +- t_{n-1} s / sqrt(n)`` and the t-test's p
    (``scipy.stats.ttest_rel``). It is the default because runs have few items, where a
    percentile bootstrap's interval is too narrow (it ignores that ``s`` is itself estimated).
    ``method="bca"``: a bias-corrected and accelerated bootstrap of the mean
    (``scipy.stats.bootstrap``, ``n_boot`` resamples, ``seed``), for strongly skewed
    differences; its interval need not be symmetric about the mean.

    One item gives a NaN interval and p. Differences all equal give the degenerate interval
    ``[mean, mean]`` with ``p = 0`` if the mean is nonzero, else 1.
    """
    x, y = _pair(a, b)
    if method not in ("t", "bca"):
        raise ValueError(f"method must be 't' or 'bca', got {method!r}")
    _check(n_boot, level)
    d = x - y
    n, mean = d.size, float(d.mean())
    if n == 1:
        return Paired(mean, math.nan, math.nan, 1, math.nan, method, level)
    sd = float(d.std(ddof=1))
    if np.ptp(d) == 0 or sd <= 8 * np.finfo(float).eps * float(np.abs(d).max()):
        return Paired(mean, mean, mean, n, (0.0 if mean != 0 else 1.0) if method == "t" else math.nan,
                      method, level)
    if method == "t":
        from scipy import stats

        test = stats.ttest_rel(x, y)
        ci = test.confidence_interval(level)
        return Paired(mean, float(ci.low), float(ci.high), n, float(test.pvalue), "t", level)
    low, high = _bootstrap(d, np.mean, "BCa", n_boot=n_boot, level=level, seed=seed)
    return Paired(mean, low, high, n, math.nan, "bca", level)


def holm(pvalues: Sequence[float]) -> list[float]:
    """Holm-Bonferroni adjusted p-values, in the input order.

    The smallest of ``m`` p-values is multiplied by ``m``, the next by ``m - 1``, ..., each
    kept at least its predecessor's (monotone) and at most 1. Rejecting where the adjusted
    p < alpha keeps the chance of any false claim in the family below alpha, without
    Bonferroni's loss of power. A NaN (a comparison on one item) counts in ``m`` and stays NaN.
    """
    p = np.asarray(pvalues, dtype=float)
    if p.ndim != 1:
        raise ValueError(f"pvalues must be one-dimensional, got shape {p.shape}")
    if ((p < 0) | (p > 1)).any():
        raise ValueError(f"p-values must lie in [0, 1], got {p[(p < 0) | (p > 1)].tolist()[:5]}")
    m = p.size
    out = np.full(m, math.nan)
    order = [i for i in np.argsort(p, kind="stable") if not math.isnan(p[i])]
    running = 0.0
    for rank, i in enumerate(order):
        running = max(running, min(1.0, (m - rank) * float(p[i])))
        out[i] = running
    return out.tolist()


def judge(comparisons: Sequence[Paired], *, lower_is_better: bool, alpha: float = 0.05) -> list[str]:
    """``"better"``, ``"worse"`` or ``"tie"`` per comparison (``a - b`` from :func:`paired`, t method),
    Holm-corrected across ``comparisons``: only a difference whose adjusted p is below ``alpha``
    is a verdict; one item (NaN p) is a tie."""
    if not 0 < alpha < 1:
        raise ValueError(f"alpha must be in (0, 1), e.g. 0.05; got {alpha}")
    if any(c.method != "t" for c in comparisons):
        raise ValueError("judge needs p-values: compare with paired(..., method='t')")
    verdicts = []
    for c, p in zip(comparisons, holm([c.p for c in comparisons])):
        if math.isnan(p) or p >= alpha or c.mean == 0:
            verdicts.append("tie")
        else:
            verdicts.append("better" if (c.mean < 0) == lower_is_better else "worse")
    return verdicts


def proportion_ci(successes: int, n: int, level: float = 0.95) -> tuple[float, float, float]:
    """``(p, low, high)``: an accuracy ``successes / n`` with its Wilson score interval
    (``scipy.stats.binomtest(...).proportion_ci(method="wilson")``).

    Wilson rather than the normal approximation ``p +- z sqrt(p(1-p)/n)``: that one collapses
    to a zero-width interval at 0% and 100% (a passkey found 30 times out of 30) and leaves
    [0, 1] near them; Wilson's stays honest there.
    """
    if int(n) != n or n < 1:
        raise ValueError(f"n must be a positive integer, got {n}")
    if int(successes) != successes or not 0 <= successes <= n:
        raise ValueError(f"successes must be an integer in [0, n={n}], got {successes}")
    if not 0 < level < 1:
        raise ValueError(f"level must be in (0, 1), e.g. 0.95; got {level}")
    from scipy import stats

    n, k = int(n), int(successes)
    ci = stats.binomtest(k, n).proportion_ci(confidence_level=level, method="wilson")
    return k / n, max(0.0, float(ci.low)), min(1.0, float(ci.high))


def summarize(records: Iterable[Mapping[str, Any]], value: str, by: Sequence[str] = ("policy", "budget"),
              item: str = "passage", baselines: Sequence[str] = ("streaming", "tova"), *,
              lower_is_better: bool, policy_key: str = "policy", interval: str = "bootstrap",
              n_boot: int = 2000, level: float = 0.95, seed: int = 0) -> list[dict[str, Any]]:
    """One row per group of ``by``: the mean of ``value`` over items with its interval, and the
    paired difference to each baseline policy with its interval.

    ``records``: flat dicts, one per (group, item), e.g. ``{"policy": "tova", "budget": 128,
    "passage": "prose/3", "ppl": 21.4}``. A group's baseline is the group with the same
    ``by`` values but ``policy_key`` set to the baseline; the difference pairs the items by
    their ``item`` id (policy minus baseline), and both groups must hold the same items.
    ``lower_is_better`` says which sign is good (True for perplexity, False for accuracy).
    ``interval``: ``"bootstrap"`` for the mean, or ``"wilson"`` for 0/1 values (accuracy per
    case; a bootstrap of 30 successes out of 30 would give the empty interval [1, 1]).

    Row keys: the ``by`` keys, ``n``, ``mean``, ``low``, ``high``, ``level``, and per baseline
    ``b``: ``vs_b``, ``vs_b_low``, ``vs_b_high``, ``better_than_b`` and ``worse_than_b``
    (the interval excludes zero in the good or the bad direction). A baseline's own row, or
    a group whose baseline was not measured, has None there. Rows keep the order in which
    the groups first appear in ``records``.
    """
    by = tuple(by)
    if policy_key not in by:
        raise ValueError(f"policy_key {policy_key!r} must be one of by={by}: baselines are found by it")
    if interval not in ("bootstrap", "wilson"):
        raise ValueError(f"interval must be 'bootstrap' or 'wilson', got {interval!r}")
    _check(n_boot, level)
    groups: dict[tuple, dict[Any, float]] = {}
    for i, rec in enumerate(records):
        missing = [k for k in (*by, item, value) if k not in rec]
        if missing:
            raise ValueError(f"record {i} lacks {missing}: {dict(rec)}")
        key, it = tuple(rec[k] for k in by), rec[item]
        try:
            v = float(rec[value])
        except (TypeError, ValueError):
            raise ValueError(f"record {i}: {value}={rec[value]!r} is not a number") from None
        if not math.isfinite(v):
            raise ValueError(f"record {i}: {value}={v} is not finite")
        items = groups.setdefault(key, {})
        if it in items:
            raise ValueError(f"record {i}: {item}={it!r} appears twice for {dict(zip(by, key))}")
        items[it] = v
    if not groups:
        raise ValueError("no records to summarize")
    pos = by.index(policy_key)
    rows = []
    for key, items in groups.items():
        vals = np.array(list(items.values()))
        row: dict[str, Any] = dict(zip(by, key))
        row["n"] = vals.size
        if interval == "wilson":
            if not np.isin(vals, (0.0, 1.0)).all():
                raise ValueError(f"interval='wilson' needs 0/1 values; {dict(zip(by, key))} has others")
            row["mean"], row["low"], row["high"] = proportion_ci(int(vals.sum()), vals.size, level)
        else:
            row["mean"], row["low"], row["high"] = bootstrap_ci(vals, n_boot=n_boot, level=level, seed=seed)
        row["level"] = level
        for base in baselines:
            ref = groups.get(key[:pos] + (base,) + key[pos + 1:])
            diff = low = high = better = worse = None
            if ref is not None and key[pos] != base:
                if set(ref) != set(items):
                    raise ValueError(f"{dict(zip(by, key))} and its baseline {base!r} hold different {item}s "
                                     f"(only in one: {sorted(map(str, set(ref) ^ set(items)))[:5]}); "
                                     "a paired difference needs the same items")
                order = list(items)
                diff, low, high = paired_difference([items[k] for k in order], [ref[k] for k in order],
                                                    level=level)
                if not math.isnan(low):
                    good_side = high < 0 if lower_is_better else low > 0
                    bad_side = low > 0 if lower_is_better else high < 0
                    better, worse = bool(good_side), bool(bad_side)
            row[f"vs_{base}"], row[f"vs_{base}_low"], row[f"vs_{base}_high"] = diff, low, high
            row[f"better_than_{base}"], row[f"worse_than_{base}"] = better, worse
        rows.append(row)
    return rows


def markdown(header: Sequence[Any], rows: Iterable[Sequence[Any]], align: str = "") -> str:
    """A GitHub pipe table: the ``header`` line, the rule, then one line per row (``str`` of each cell).

    ``align``: one letter per column, ``"l"`` (rule ``---``) or ``"r"`` (``---:``, right-aligned);
    columns it does not reach are ``"l"``. Every table the package prints or writes comes from here.
    """
    header = [str(h) for h in header]
    if set(align) - {"l", "r"} or len(align) > len(header):
        raise ValueError(f"align must be at most {len(header)} letters 'l' or 'r', got {align!r}")
    lines = ["| " + " | ".join(header) + " |",
             "|" + "|".join("---:" if a == "r" else "---" for a in align.ljust(len(header), "l")) + "|"]
    for i, row in enumerate(rows):
        cells = [str(c) for c in row]
        if len(cells) != len(header):
            raise ValueError(f"row {i} has {len(cells)} cells for {len(header)} columns: {cells}")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _num(x: float | None, digits: int, sign: bool = False) -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "–"
    s = np.format_float_positional(float(x), precision=digits, unique=False, fractional=False, trim="-")
    if sign and not s.startswith("-") and float(x) != 0:
        s = "+" + s
    return s


def _cell(est, low, high, digits: int, sign: bool = False) -> str:
    if est is None:
        return "–"
    if low is None or math.isnan(low):
        return _num(est, digits, sign)
    return f"{_num(est, digits, sign)} [{_num(low, digits, sign)}, {_num(high, digits, sign)}]"


def markdown_table(summary_rows: Sequence[Mapping[str, Any]], *, by: Sequence[str] = ("policy", "budget"),
                   baselines: Sequence[str] | None = None, value_label: str = "mean", digits: int = 3,
                   show_n: bool = True) -> str:
    """A GitHub markdown table of :func:`summarize` rows.

    Columns: the ``by`` keys, ``n``, ``"<value_label> [95% CI]"`` as "mean [low, high]", and
    per baseline ``"Δ vs <baseline> [95% CI]"`` as "+diff [low, high]" (policy minus
    baseline). A difference whose interval excludes zero in the good direction is **bold**:
    only those may be called better. ``digits``: significant digits. ``baselines``: default
    every baseline in the rows.
    """
    if not summary_rows:
        raise ValueError("no summary rows")
    first = summary_rows[0]
    if baselines is None:
        baselines = [k[len("better_than_"):] for k in first if k.startswith("better_than_")]
    pct = f"{100 * first.get('level', 0.95):g}% CI"
    head = [*by, *(["n"] if show_n else []), f"{value_label} [{pct}]", *(f"Δ vs {b} [{pct}]" for b in baselines)]
    rows = []
    for row in summary_rows:
        cells = [str(row[k]) for k in by]
        if show_n:
            cells.append(str(row["n"]))
        cells.append(_cell(row["mean"], row["low"], row["high"], digits))
        for b in baselines:
            if f"vs_{b}" not in row:
                raise ValueError(f"the rows have no baseline {b!r}; summarize(..., baselines=...) must name it")
            c = _cell(row[f"vs_{b}"], row[f"vs_{b}_low"], row[f"vs_{b}_high"], digits, sign=True)
            cells.append(f"**{c}**" if row.get(f"better_than_{b}") else c)
        rows.append(cells)
    return markdown(head, rows, "l" * len(by) + "r" * (len(head) - len(by)))
