"""The learned strength against every policy on the report split, from the committed records.

``ebbinghaus_learned`` was run apart from the other policies, on the same passages and
conversations (batch rows never interact, so each policy gets what it would get alone):

    memollm eval ppl --split report --passages 4 --max-tokens 512 --budget 64,128,256 \
        --policies ebbinghaus_learned --threads 1 --json figures/eval_ppl_learned.json
    memollm eval recall --split report --cases 16 --budget-fractions 0.25,0.5 \
        --policies ebbinghaus_learned --threads 1 --json figures/eval_recall_learned.json

This prints, per setting, each policy's mean and the learned policy minus it, paired over the
units (passages; conversations, on the facts the full cache answered) with a Student-t 95%
interval: ``python scripts/compare_learned.py``.
"""

from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path

from memollm.stats import markdown, paired

FIGURES = Path(__file__).resolve().parent.parent / "figures"
POLICIES = ["streaming", "h2o", "tova", "snapkv", "ebbinghaus_seed", "ebbinghaus"]
LEARNED = "ebbinghaus_learned"


def _load(name: str) -> list[dict]:
    return json.loads((FIGURES / f"{name}.json").read_text())


def _table(units: dict[str, dict], title: str) -> str:
    """``units[policy][unit] = value`` -> one row per policy: mean, and learned minus it over shared units."""
    learned = units[LEARNED]
    rows = [[LEARNED, f"{sum(learned.values()) / len(learned):.2f}", len(learned), "–"]]
    for policy in POLICIES:
        keys = sorted(set(learned) & set(units[policy]))
        d = paired([learned[k] for k in keys], [units[policy][k] for k in keys])
        mean = sum(units[policy][k] for k in keys) / len(keys)
        rows.append([policy, f"{mean:.2f}", len(keys), f"{d.mean:+.2f} [{d.low:+.2f}, {d.high:+.2f}]"])
    return f"{title}\n\n" + markdown(["policy", "mean", "n", "learned minus it [95% t]"], rows, "lrrr")


def perplexity() -> None:
    units: dict = defaultdict(lambda: defaultdict(dict))
    for r in _load("eval_ppl") + _load("eval_ppl_learned"):
        units[r["budget"]][r["policy"]][r["passage"]] = r["perplexity_after_budget"]
    for budget in (64, 128, 256):
        print(_table(units[budget], f"perplexity after the budget, budget {budget} (lower is better)"), end="\n\n")


def recall(reviewed_only: bool = True) -> None:
    facts: dict = defaultdict(lambda: defaultdict(lambda: defaultdict(list)))
    for r in _load("eval_recall") + _load("eval_recall_learned"):
        if r["policy"] == "full" or not r["full_correct"] or (reviewed_only and r["reviews"] == 0):
            continue
        facts[r["budget_fraction"]][r["policy"]][r["conversation"]].append(float(r["correct"]))
    for fraction in (0.25, 0.5):
        units = {p: {c: sum(v) / len(v) for c, v in convs.items()} for p, convs in facts[fraction].items()}
        what = "reviewed facts" if reviewed_only else "all facts"
        print(_table(units, f"conversation recall, {what}, budget {fraction} of the conversation "
                            "(mean per conversation, higher is better)"), end="\n\n")


if __name__ == "__main__":
    perplexity()
    recall()
