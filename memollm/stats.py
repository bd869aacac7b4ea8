"""Statistics before claims: bootstrap intervals and paired differences over passages.

A quality number measured on one passage says little: passages differ far more in
difficulty (a passage of code-heavy reference text against a page of dialogue) than
policies differ from each other. So every result is a mean over several passages (or
seeded cases) with a bootstrap interval, and policies are compared *paired*: the
difference is taken per passage first (policy minus baseline on the same tokens), which
cancels the passage's difficulty, and only then averaged and bootstrapped. A policy is
called better only where that paired interval excludes zero in the good direction.

Pure numpy and the standard library: no model, no torch needed (tensors are accepted).
"""

from __future__ import annotations

import math
from statistics import NormalDist
from typing import Any, Callable, Iterable, Mapping, Sequence

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


def _check(n_boot: int, level: float) -> None:
    if not 0 < level < 1:
        raise ValueError(f"level must be in (0, 1), e.g. 0.95; got {level}")
    if int(n_boot) != n_boot or n_boot < 1:
        raise ValueError(f"n_boot must be a positive integer, got {n_boot}")


def _apply(statistic: Callable, samples: np.ndarray) -> np.ndarray:
    """``statistic`` of every row: vectorized where it takes ``axis`` (np.mean, np.median)."""
    try:
        out = np.asarray(statistic(samples, axis=1), dtype=float)
        if out.shape == (samples.shape[0],):
            return out
    except TypeError:
        pass
    return np.array([statistic(row) for row in samples], dtype=float)


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
    n = x.size
    if n == 1:
        return estimate, math.nan, math.nan
    rng = np.random.default_rng(seed)
    rows = max(1, _CHUNK // n)
    boot = np.concatenate([_apply(statistic, x[rng.integers(0, n, size=(min(rows, n_boot - i), n))])
                           for i in range(0, n_boot, rows)])
    tail = (1 - level) / 2
    low, high = np.quantile(boot, [tail, 1 - tail])
    return estimate, float(low), float(high)


def paired_difference(a, b, *, n_boot: int = 2000, level: float = 0.95, seed: int = 0,
                      statistic: Callable = np.mean) -> tuple[float, float, float]:
    """``(mean_diff, low, high)`` of ``a_i - b_i``, bootstrapped over the items ``i``.

    ``a`` and ``b`` are measured on the same items in the same order (e.g. a policy and
    ``streaming`` on the same passages). Pairing removes the items' difficulty, which would
    otherwise swamp the difference: two policies 1% apart on passages 30% apart are
    indistinguishable unpaired and clearly apart paired.
    """
    x, y = _values(a, "a"), _values(b, "b")
    if x.size != y.size:
        raise ValueError(f"paired values need the same items: a has {x.size}, b has {y.size}")
    return bootstrap_ci(x - y, n_boot=n_boot, level=level, seed=seed, statistic=statistic)


def proportion_ci(successes: int, n: int, level: float = 0.95) -> tuple[float, float, float]:
    """``(p, low, high)``: an accuracy ``successes / n`` with its Wilson score interval.

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
    n, k = int(n), int(successes)
    z = NormalDist().inv_cdf((1 + level) / 2)
    p = k / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z / denom * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    return p, max(0.0, centre - half), min(1.0, centre + half)


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
                                                    n_boot=n_boot, level=level, seed=seed)
                if not math.isnan(low):
                    good_side = high < 0 if lower_is_better else low > 0
                    bad_side = low > 0 if lower_is_better else high < 0
                    better, worse = bool(good_side), bool(bad_side)
            row[f"vs_{base}"], row[f"vs_{base}_low"], row[f"vs_{base}_high"] = diff, low, high
            row[f"better_than_{base}"], row[f"worse_than_{base}"] = better, worse
        rows.append(row)
    return rows


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
    lines = ["| " + " | ".join(head) + " |", "|" + "|".join(["---"] * len(by) + ["---:"] * (len(head) - len(by))) + "|"]
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
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)
