"""memollm.stats: bootstrap intervals, paired differences (t and BCa), Holm, Wilson intervals, summary tables."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from scipy import stats as sp

from memollm.stats import (Paired, bootstrap_ci, holm, judge, markdown, markdown_table, paired, paired_difference,
                           proportion_ci, summarize)


def test_bootstrap_covers_the_true_mean_of_a_large_sample():
    x = np.random.default_rng(1).normal(5.0, 2.0, size=2000)
    est, low, high = bootstrap_ci(x)
    assert est == pytest.approx(x.mean())
    assert low < 5.0 < high
    # the width is about 2 * 1.96 * sigma / sqrt(n) = 0.175
    assert 0.14 < high - low < 0.21


def test_bootstrap_coverage_is_near_the_level():
    rng = np.random.default_rng(2)
    hits = sum(low <= 0.0 <= high for _, low, high in
               (bootstrap_ci(rng.normal(0, 1, 40), n_boot=400, seed=s) for s in range(200)))
    assert 0.88 <= hits / 200 <= 0.99


def test_bootstrap_is_deterministic_with_the_seed():
    x = np.random.default_rng(3).exponential(size=30)
    assert bootstrap_ci(x, seed=7) == bootstrap_ci(list(x), seed=7)
    assert bootstrap_ci(x, seed=7) != bootstrap_ci(x, seed=8)


def test_bootstrap_one_value_and_constant_values():
    est, low, high = bootstrap_ci([3.5])
    assert est == 3.5 and math.isnan(low) and math.isnan(high)
    assert bootstrap_ci([2.0] * 5) == (2.0, 2.0, 2.0)


def test_bootstrap_other_statistics_and_tensors():
    x = np.arange(1.0, 22.0)
    est, low, high = bootstrap_ci(x, statistic=np.median)
    assert est == 11.0 and low < 11.0 < high
    # a statistic without an axis argument is applied row by row
    geo = bootstrap_ci(x, statistic=lambda v: float(np.exp(np.log(v).mean())), n_boot=200)
    assert geo[1] < geo[0] < geo[2]
    assert bootstrap_ci(torch.tensor(x)) == bootstrap_ci(x)


def test_bootstrap_errors():
    with pytest.raises(ValueError, match="empty"):
        bootstrap_ci([])
    with pytest.raises(ValueError, match="non-finite"):
        bootstrap_ci([1.0, float("nan")])
    with pytest.raises(ValueError, match="one-dimensional"):
        bootstrap_ci([[1.0, 2.0]])
    with pytest.raises(ValueError, match="level"):
        bootstrap_ci([1.0, 2.0], level=95)
    with pytest.raises(ValueError, match="n_boot"):
        bootstrap_ci([1.0, 2.0], n_boot=0)
    with pytest.raises(ValueError, match="numbers"):
        bootstrap_ci(["a", "b"])


def test_paired_difference_finds_a_small_shift_that_unpaired_intervals_hide():
    rng = np.random.default_rng(4)
    difficulty = rng.uniform(10, 40, size=12)  # passages differ a lot
    a = difficulty * 0.98 + rng.normal(0, 0.05, 12)  # 2% better on every passage
    b = difficulty
    diff, low, high = paired_difference(a, b)
    assert diff == pytest.approx((a - b).mean())
    assert high < 0  # the paired interval excludes zero
    _, a_low, a_high = bootstrap_ci(a)
    _, b_low, b_high = bootstrap_ci(b)
    assert a_high > b_low and b_high > a_low  # the unpaired intervals overlap


def test_paired_difference_of_equal_policies_contains_zero():
    rng = np.random.default_rng(5)
    base = rng.uniform(10, 40, 20)
    _, low, high = paired_difference(base + rng.normal(0, 0.1, 20), base + rng.normal(0, 0.1, 20))
    assert low < 0 < high


def test_paired_difference_errors():
    with pytest.raises(ValueError, match="same items"):
        paired_difference([1.0, 2.0], [1.0, 2.0, 3.0])
    with pytest.raises(ValueError, match="b is empty"):
        paired_difference([1.0], [])


@pytest.mark.parametrize("k, n, low, high", [
    (5, 10, 0.2366, 0.7634),
    (0, 10, 0.0, 0.2775),
    (10, 10, 0.7225, 1.0),
    (27, 30, 0.7437, 0.9654),
])
def test_wilson_known_values(k, n, low, high):
    p, lo, hi = proportion_ci(k, n)
    assert p == k / n
    assert lo == pytest.approx(low, abs=1e-4) and hi == pytest.approx(high, abs=1e-4)


def test_wilson_at_none_and_all():
    # the interval stays inside [0, 1] and touches its end exactly: no spread below 0 or above 1
    for n in (1, 5, 30, 1000):
        p, lo, hi = proportion_ci(0, n)
        assert (p, lo) == (0.0, 0.0) and 0 < hi < 1
        p, lo, hi = proportion_ci(n, n)
        assert (p, hi) == (1.0, 1.0) and 0 < lo < 1
        z = sp.norm.ppf(0.975)
        assert proportion_ci(0, n)[2] == pytest.approx(z * z / (n + z * z), rel=1e-12)  # Wilson at k = 0: z²/(n + z²)
    assert proportion_ci(0, 30)[2] == pytest.approx(1 - proportion_ci(30, 30)[1])  # symmetric


def test_wilson_level_and_errors():
    _, lo90, hi90 = proportion_ci(5, 10, level=0.90)
    _, lo95, hi95 = proportion_ci(5, 10)
    assert lo95 < lo90 < 0.5 < hi90 < hi95
    assert proportion_ci(np.int64(3), 4)[0] == 0.75
    with pytest.raises(ValueError, match="n must"):
        proportion_ci(0, 0)
    with pytest.raises(ValueError, match="successes"):
        proportion_ci(11, 10)
    with pytest.raises(ValueError, match="successes"):
        proportion_ci(1.5, 10)


def _records():
    """Perplexity on 6 passages: tova 5% better than streaming, ebbinghaus equal to streaming."""
    rng = np.random.default_rng(6)
    difficulty = rng.uniform(10, 40, 6)
    out = []
    for budget in (64, 128):
        for policy, factor in (("streaming", 1.0), ("tova", 0.95), ("ebbinghaus", 1.0)):
            noise = rng.normal(0, 0.02, 6) if policy == "ebbinghaus" else np.zeros(6)
            for i, d in enumerate(difficulty):
                out.append({"policy": policy, "budget": budget, "passage": f"docs/{i}", "ppl": d * factor + noise[i]})
    return out


def test_summarize_rows():
    rows = summarize(_records(), "ppl", lower_is_better=True)
    assert [(r["policy"], r["budget"]) for r in rows] == [
        ("streaming", 64), ("tova", 64), ("ebbinghaus", 64), ("streaming", 128), ("tova", 128), ("ebbinghaus", 128)]
    by = {(r["policy"], r["budget"]): r for r in rows}
    tova = by["tova", 64]
    assert tova["n"] == 6 and tova["low"] <= tova["mean"] <= tova["high"]
    assert tova["vs_streaming"] < 0 and tova["better_than_streaming"] and not tova["worse_than_streaming"]
    assert tova["vs_tova"] is None and tova["better_than_tova"] is None  # its own baseline
    streaming = by["streaming", 64]
    assert streaming["worse_than_tova"] and not streaming["better_than_tova"]
    assert streaming["vs_streaming"] is None
    ebb = by["ebbinghaus", 128]
    assert not ebb["better_than_streaming"] and not ebb["worse_than_streaming"]
    assert ebb["vs_streaming_low"] < 0 < ebb["vs_streaming_high"]
    assert ebb["better_than_tova"] is False and ebb["worse_than_tova"] is True


def test_summarize_pairs_by_item_not_by_order():
    recs = _records()
    shuffled = recs[:6] + recs[6:12][::-1] + recs[12:]
    a = summarize(recs, "ppl", lower_is_better=True)
    b = summarize(shuffled, "ppl", lower_is_better=True)
    assert a[1]["vs_streaming"] == pytest.approx(b[1]["vs_streaming"])
    assert a[1]["better_than_streaming"] == b[1]["better_than_streaming"]


def test_summarize_higher_is_better_flips_the_verdict():
    recs = [dict(r, acc=-r["ppl"]) for r in _records()]
    rows = summarize(recs, "acc", lower_is_better=False)
    assert rows[1]["policy"] == "tova" and rows[1]["vs_streaming"] > 0 and rows[1]["better_than_streaming"]


def test_summarize_wilson_for_accuracies():
    recs = [{"policy": p, "budget": 64, "case": c, "ok": int(p == "tova" or c % 2 == 0)}
            for p in ("streaming", "tova") for c in range(30)]
    rows = summarize(recs, "ok", item="case", baselines=("streaming",), interval="wilson", lower_is_better=False)
    tova = rows[1]
    assert tova["mean"] == 1.0 and tova["high"] == 1.0 and tova["low"] == pytest.approx(0.8865, abs=1e-4)
    assert tova["vs_streaming"] == pytest.approx(0.5) and tova["better_than_streaming"]
    with pytest.raises(ValueError, match="0/1"):
        summarize([dict(r, ok=0.5) for r in recs], "ok", item="case", interval="wilson", lower_is_better=False)


def test_summarize_missing_baseline_is_none():
    recs = [r for r in _records() if r["policy"] != "tova"]
    row = summarize(recs, "ppl", lower_is_better=True)[1]
    assert row["vs_tova"] is None and row["better_than_tova"] is None


def test_summarize_errors():
    recs = _records()
    with pytest.raises(ValueError, match="lacks"):
        summarize([{"policy": "tova", "budget": 64, "ppl": 1.0}], "ppl", lower_is_better=True)
    with pytest.raises(ValueError, match="appears twice"):
        summarize(recs + recs[:1], "ppl", lower_is_better=True)
    with pytest.raises(ValueError, match="different passages"):
        summarize(recs[:-1], "ppl", lower_is_better=True)
    with pytest.raises(ValueError, match="not a number"):
        summarize([dict(recs[0], ppl="x")], "ppl", lower_is_better=True)
    with pytest.raises(ValueError, match="not finite"):
        summarize([dict(recs[0], ppl=float("inf"))], "ppl", lower_is_better=True)
    with pytest.raises(ValueError, match="policy_key"):
        summarize(recs, "ppl", by=("budget",), lower_is_better=True)
    with pytest.raises(ValueError, match="no records"):
        summarize([], "ppl", lower_is_better=True)
    with pytest.raises(TypeError):
        summarize(recs, "ppl")  # the direction of "better" must be said


def test_markdown_table():
    rows = summarize(_records(), "ppl", lower_is_better=True)
    table = markdown_table(rows, value_label="perplexity")
    lines = table.splitlines()
    assert lines[0] == ("| policy | budget | n | perplexity [95% CI] | Δ vs streaming [95% CI] | "
                        "Δ vs tova [95% CI] |")
    assert lines[1] == "|---|---|---:|---:|---:|---:|"
    assert len(lines) == 2 + len(rows)
    tova = lines[3]
    assert tova.startswith("| tova | 64 | 6 | ")
    cells = [c.strip() for c in tova.strip("|").split("|")]
    assert cells[4].startswith("**-") and cells[4].endswith("]**")  # better than streaming: bold
    assert cells[5] == "–"  # its own baseline
    streaming = [c.strip() for c in lines[2].strip("|").split("|")]
    assert streaming[5].startswith("+") and "**" not in streaming[5]  # worse than tova: not bold
    mean = rows[1]
    assert cells[3].startswith(np.format_float_positional(mean["mean"], precision=3, unique=False,
                                                          fractional=False, trim="-"))
    one = markdown_table(rows, baselines=("streaming",), show_n=False)
    assert "tova [95% CI]" not in one and "| n |" not in one
    with pytest.raises(ValueError, match="no baseline"):
        markdown_table(rows, baselines=("h2o",))
    with pytest.raises(ValueError, match="no summary rows"):
        markdown_table([])


def test_markdown_writes_a_pipe_table():
    assert markdown(["policy", "ppl", "n"], [["tova", "12.5", 8], ["h2o", "", 8]], "lr") == (
        "| policy | ppl | n |\n|---|---:|---|\n| tova | 12.5 | 8 |\n| h2o |  | 8 |")
    assert markdown(["a"], []) == "| a |\n|---|"
    assert markdown(["a", "b"], iter([(1, None)]), "rr").splitlines()[1:] == ["|---:|---:|", "| 1 | None |"]
    with pytest.raises(ValueError, match="row 1 has 1 cells for 2 columns"):
        markdown(["a", "b"], [[1, 2], [3]])
    with pytest.raises(ValueError, match="align"):
        markdown(["a", "b"], [], "lc")
    with pytest.raises(ValueError, match="align"):
        markdown(["a"], [], "lr")


def test_markdown_table_single_item_has_no_interval():
    rows = summarize([{"policy": "streaming", "budget": 64, "passage": 0, "ppl": 12.345},
                      {"policy": "tova", "budget": 64, "passage": 0, "ppl": 12.0}], "ppl", lower_is_better=True)
    assert rows[1]["better_than_streaming"] is None
    line = markdown_table(rows, baselines=("streaming",)).splitlines()[3]
    assert line == "| tova | 64 | 1 | 12 | -0.345 |"


def test_paired_t_interval_is_the_textbook_one():
    # mean +- t_{0.975, n-1} s / sqrt(n), and p from the t statistic, computed here by hand
    a, b = np.array([12.0, 15.5, 9.0, 20.0, 14.0]), np.array([11.0, 14.0, 9.5, 18.0, 12.5])
    r = paired(a, b)
    d = a - b
    mean, se = d.mean(), d.std(ddof=1) / math.sqrt(5)
    half = sp.t.ppf(0.975, 4) * se
    assert round(sp.t.ppf(0.975, 4), 3) == 2.776  # the printed table's value
    assert isinstance(r, Paired) and r.n == 5 and r.method == "t" and r.level == 0.95
    assert r.mean == pytest.approx(mean)
    assert r.low == pytest.approx(mean - half, rel=1e-12) and r.high == pytest.approx(mean + half, rel=1e-12)
    assert r.p == pytest.approx(2 * sp.t.sf(mean / se, 4), rel=1e-12)
    assert 0.05 < r.p < 0.1  # the interval just includes zero ...
    assert r.low < 0 < r.high
    r80 = paired(a, b, level=0.80)  # ... and the narrower 80% one does not
    assert r80.low == pytest.approx(mean - sp.t.ppf(0.9, 4) * se, rel=1e-12) and r80.low > 0
    assert r80.p == r.p  # the p-value does not depend on the level
    assert paired(b, a).low == pytest.approx(-r.high) and paired(b, a).p == pytest.approx(r.p)


def test_paired_t_on_a_known_sample():
    # d = 1, 2, 3, 4, 5: mean 3, s = sqrt(2.5), t_{0.975, 4} = 2.7764451051977987
    r = paired([1.0, 2.0, 3.0, 4.0, 5.0], [0.0] * 5)
    half = 2.7764451051977987 * math.sqrt(2.5) / math.sqrt(5)
    assert (r.mean, r.n) == (3.0, 5)
    assert r.low == pytest.approx(3 - half, rel=1e-12) and r.high == pytest.approx(3 + half, rel=1e-12)


def test_paired_t_covers_at_small_n():
    rng = np.random.default_rng(11)
    hits = sum(r.low <= 0.3 <= r.high for r in (paired(rng.normal(0.3, 1, 5), np.zeros(5)) for _ in range(400)))
    assert 0.92 <= hits / 400 <= 0.98  # the percentile bootstrap undercovers at n=5


def test_paired_bca_is_asymmetric_on_skewed_data_and_covers():
    x = np.random.default_rng(12).exponential(1.0, 25)
    r = paired(x, np.zeros(25), method="bca")
    assert r.method == "bca" and math.isnan(r.p)
    assert r.low < r.mean < r.high
    assert (r.high - r.mean) > 1.15 * (r.mean - r.low)  # the long right tail widens the top
    t = paired(x, np.zeros(25))
    assert r.mean == t.mean and (r.low, r.high) != (t.low, t.high)
    rng = np.random.default_rng(13)
    hits = sum(r.low <= 1.0 <= r.high for r in
               (paired(rng.exponential(1.0, 30), np.zeros(30), method="bca", n_boot=500, seed=s) for s in range(300)))
    assert 0.88 <= hits / 300 <= 0.98
    assert paired(x, np.zeros(25), method="bca", seed=3) == paired(x, np.zeros(25), method="bca", seed=3)
    assert paired(x, np.zeros(25), method="bca", seed=3) != paired(x, np.zeros(25), method="bca", seed=4)
    assert paired(list(x), [0.0] * 25, method="bca", seed=3) == paired(torch.tensor(x), torch.zeros(25), method="bca",
                                                                       seed=3)


def test_paired_edge_cases():
    one = paired([3.0], [1.0])
    assert one.mean == 2.0 and one.n == 1 and all(math.isnan(v) for v in (one.low, one.high, one.p))
    shift = paired([3.0, 5.0, 9.0], [2.0, 4.0, 8.0])
    assert (shift.mean, shift.low, shift.high, shift.p) == (1.0, 1.0, 1.0, 0.0)
    same = paired([3.0, 5.0, 9.0], [3.0, 5.0, 9.0])
    assert (same.mean, same.low, same.high, same.p) == (0.0, 0.0, 0.0, 1.0)
    with pytest.raises(ValueError, match="same items"):
        paired([1.0, 2.0], [1.0, 2.0, 3.0])
    with pytest.raises(ValueError, match="method"):
        paired([1.0, 2.0], [1.0, 3.0], method="percentile")
    with pytest.raises(ValueError, match="level"):
        paired([1.0, 2.0], [1.0, 3.0], level=95)
    with pytest.raises(ValueError, match="n_boot"):
        paired([1.0, 2.0], [1.0, 3.0], method="bca", n_boot=0)


@pytest.mark.parametrize("method", ["t", "bca"])
@pytest.mark.parametrize("a, b, message", [
    ([], [], "a is empty"),
    ([1.0, 2.0], [1.0, float("inf")], r"b holds non-finite values \(NaN or inf\) at positions \[1\]"),
    ([float("nan"), 2.0], [1.0, 2.0], r"a holds non-finite values \(NaN or inf\) at positions \[0\]"),
    ([[1.0, 2.0]], [[1.0, 2.0]], r"a must be one-dimensional .* got shape \(1, 2\)"),
    ([1.0, 2.0], [1.0, 2.0, 3.0], "paired values need the same items: a has 2, b has 3"),
    (["x", "y"], [1.0, 2.0], "a must be numbers"),
])
def test_paired_rejects_bad_input(method, a, b, message):
    with pytest.raises(ValueError, match=message):
        paired(a, b, method=method)


def test_holm_hand_worked():
    # sorted: 0.005 * 4 = 0.02, 0.01 * 3 = 0.03, 0.03 * 2 = 0.06, 0.04 * 1 = 0.04 -> kept at 0.06
    assert holm([0.01, 0.04, 0.03, 0.005]) == pytest.approx([0.03, 0.06, 0.06, 0.02])
    assert holm([0.5, 0.9]) == [1.0, 1.0]
    assert holm([]) == []
    out = holm([0.02, math.nan])
    assert out[0] == pytest.approx(0.04) and math.isnan(out[1])
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        holm([0.5, 1.5])


def test_judge_after_holm():
    base = np.linspace(10, 20, 8)
    rng = np.random.default_rng(14)
    clear = paired(base - 1 + rng.normal(0, 0.1, 8), base)   # lower: better for perplexity
    worse = paired(base + 1 + rng.normal(0, 0.1, 8), base)
    noise = paired(base + rng.normal(0, 0.5, 8), base)
    assert judge([clear, worse, noise], lower_is_better=True) == ["better", "worse", "tie"]
    assert judge([clear, worse], lower_is_better=False) == ["worse", "better"]
    # p = 0.03 alone is a win; next to two other comparisons Holm makes it 0.09, a tie
    borderline = Paired(-1.0, -1.9, -0.1, 8, 0.03)
    assert judge([borderline], lower_is_better=True) == ["better"]
    assert judge([borderline, Paired(0.1, -1, 1, 8, 0.5), Paired(0.1, -1, 1, 8, 0.6)],
                 lower_is_better=True)[0] == "tie"
    assert judge([paired([1.0], [0.0])], lower_is_better=True) == ["tie"]
    with pytest.raises(ValueError, match="method='t'"):
        judge([paired(base, base + rng.normal(0, 1, 8), method="bca")], lower_is_better=True)
