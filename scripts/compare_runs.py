"""Paired comparison of two `memollm eval ppl` runs on the same passages (e.g. two granularities).

Each run's JSON holds one record per policy, granularity, budget and passage. The script pairs
the records of run A and run B by (policy, budget, passage), checks that a policy whose ranking
cannot depend on the difference between the runs (``--same``, default ``streaming``) gave the
same numbers in both (so the passages really are the same), and prints per policy and budget
the mean of each run and the paired difference B - A with its bootstrap 95% interval.

    python scripts/compare_runs.py figures/eval_ppl.json figures/eval_ppl_layer.json
"""

from __future__ import annotations

import argparse
import json
from collections import defaultdict

from memollm.stats import bootstrap_ci, paired_difference


def load(path: str, value: str) -> dict[tuple, float]:
    with open(path) as f:
        records = json.load(f)
    return {(r["policy"], r["budget"], r["passage"]): r[value] for r in records if r["policy"] != "full"}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("a", help="the first run's JSON (the reference)")
    p.add_argument("b", help="the second run's JSON")
    p.add_argument("--value", default="perplexity_after_budget")
    p.add_argument("--same", default="streaming", help="a policy both runs must agree on ('' to skip)")
    args = p.parse_args()
    a, b = load(args.a, args.value), load(args.b, args.value)
    shared = sorted(set(a) & set(b))
    if not shared:
        raise SystemExit("the two runs share no (policy, budget, passage)")
    if args.same:
        for key in shared:
            if key[0] == args.same and abs(a[key] - b[key]) > 1e-6 * abs(a[key]):
                raise SystemExit(f"{args.same} differs between the runs at {key}: not the same passages?")
    groups: dict[tuple, list] = defaultdict(list)
    for key in shared:
        groups[key[:2]].append(key)
    print(f"| policy | budget | passages | {args.a} | {args.b} | B - A [95% CI] |")
    print("|---|---:|---:|---:|---:|---:|")
    for (policy, budget), keys in sorted(groups.items(), key=lambda kv: (kv[0][1], kv[0][0])):
        if policy == args.same:
            continue
        xa, xb = [a[k] for k in keys], [b[k] for k in keys]
        ma, mb = bootstrap_ci(xa)[0], bootstrap_ci(xb)[0]
        d, lo, hi = paired_difference(xb, xa)
        print(f"| {policy} | {budget} | {len(keys)} | {ma:.1f} | {mb:.1f} | {d:+.2f} [{lo:+.2f}, {hi:+.2f}] |")


if __name__ == "__main__":
    main()
