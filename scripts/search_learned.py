"""Choose how the learned strength meets attention, on the *tune* split only.

The bundled gate gives each token its strength S when it is read; the question here is what
attention should add. Variants of ``ebbinghaus_learned`` (labels name what differs):

* ``learned``: R = exp(-age / S) alone, no attention read (the policy without reviews);
* ``learned+top_p``: a retrieval (the keys holding half of a query's attention, any state layer)
  restarts the token's curve, S unchanged (``strength_gain=0``);
* ``learned+top_p+fsrs``: that, and the review grows S by FSRS's rule (the hand-made default's);
* ``learned+share``: the seed's review (any above-uniform glance) restarts the curve.

They run beside ``h2o``, ``tova`` and the default ``ebbinghaus`` on the same units, and each
stage prints every label's mean and its paired t-interval against a reference:

    .venv/bin/python scripts/search_learned.py recall --cases 16 --json recall.json
    .venv/bin/python scripts/search_learned.py ppl --budgets 64,128 --json ppl.json
    .venv/bin/python scripts/search_learned.py recall --records recall.json   # reprint only
"""

from __future__ import annotations

import argparse
import json
import time

import torch

from memollm import EbbinghausLLM, MemoryConfig
from memollm import evaluate as E
from memollm.evaluate.recall import recall
from memollm.policies import LearnedStrengthPolicy, register_policy
from memollm.stats import paired

PEERS = ["h2o", "tova", "ebbinghaus"]


@register_policy("learned_h2o")
class LearnedAccumulated(LearnedStrengthPolicy):
    """Accumulated attention (H2O's score) discounted by the learned retention: log(acc) - age / S."""

    def __init__(self, config, num_layers, *, seed=0, device=None) -> None:
        super().__init__(config.replace(review="none"), num_layers, seed=seed, device=device)
        self.needs_attention = True
        self.acc = torch.zeros(1, 0, device=device)

    def append(self, batch, n):
        if self.acc.shape[-1] == 0:
            self.acc = self.acc.new_zeros(batch, 0)
        self.acc = torch.cat([self.acc, self.acc.new_zeros(batch, n)], dim=-1)
        super().append(batch, n)

    def observe(self, received, visible):
        self.acc = self.acc + received.float().mean(0)

    def keep(self, index):
        super().keep(index)
        self.acc = self.acc.gather(-1, index)

    def scores(self, positions):
        return torch.log(self.acc + 1e-6) + super().scores(positions)


def variants(base: MemoryConfig) -> list:
    v = {
        "learned": ("ebbinghaus_learned", {"review": "none"}),
        "learned+top_p": ("ebbinghaus_learned", {"review": "top_p", "strength_gain": 0.0}),
        "learned+top_p+fsrs": ("ebbinghaus_learned", {"review": "top_p"}),
        "learned+share": ("ebbinghaus_learned", {"review": "share", "review_threshold": 1.0, "strength_gain": 0.0}),
        "learned+share+add1": ("ebbinghaus_learned", {"review": "share", "stability": "additive", "strength_gain": 1.0}),
        "learned+share+add0.1": ("ebbinghaus_learned",
                                 {"review": "share", "stability": "additive", "strength_gain": 0.1}),
        "learned×acc": ("learned_h2o", {}),
    }
    return [(label, name, base.replace(**changes)) for label, (name, changes) in v.items()]


def compare(units: dict, reference: str, higher_is_better: bool) -> None:
    """``units[setting][label][unit] = value``: each label's mean and paired t against ``reference``."""
    for setting, rows in units.items():
        ref = rows.get(reference, {})
        print(f"\n{setting}  (paired t vs {reference}; {'higher' if higher_is_better else 'lower'} is better)")
        for label, vals in rows.items():
            keys = sorted(set(vals) & set(ref))
            mean = sum(vals.values()) / len(vals)
            if label == reference or len(keys) < 2:
                print(f"  {label:22s} {mean:8.3f}  n={len(vals)}")
                continue
            d = paired([vals[k] for k in keys], [ref[k] for k in keys])
            print(f"  {label:22s} {mean:8.3f}  {d.mean:+.3f} [{d.low:+.3f}, {d.high:+.3f}] n={d.n}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("stage", choices=("recall", "ppl"))
    ap.add_argument("--budgets", default="64,128")
    ap.add_argument("--passages", type=int, default=4, help="passages per source (ppl)")
    ap.add_argument("--cases", type=int, default=16, help="conversations (recall)")
    ap.add_argument("--only", default=None, help="comma-separated variant labels to keep")
    ap.add_argument("--peers", default=",".join(PEERS), help="peers run beside the variants")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--json", help="where to write the records")
    ap.add_argument("--records", help="print the tables of stored records instead of running")
    args = ap.parse_args()
    start = time.perf_counter()
    if args.records:
        with open(args.records) as f:
            records = json.load(f)
    else:
        if not args.json:
            ap.error("--json is required unless --records is given")
        torch.set_num_threads(args.threads)
        llm = EbbinghausLLM()
        vs = variants(llm.config)
        if args.only:
            vs = [v for v in vs if v[0] in set(args.only.split(","))]
        if args.stage == "recall":
            records = recall(llm, policies=args.peers.split(",") + vs, cases=args.cases, split="tune")["records"]
        else:
            records = E.perplexity(llm, budgets=[int(b) for b in args.budgets.split(",")], policies=args.peers.split(",") + vs,
                                   max_tokens=512, segments=args.passages, sources=("docs", "prose"), split="tune")
        with open(args.json, "w") as f:
            json.dump(records, f, indent=1, default=str)
    units: dict = {}
    if args.stage == "recall":
        facts: dict = {}  # facts the full cache answered, reviewed or not, per conversation
        for r in records:
            if r["policy"] != "full" and r["full_correct"]:
                setting = f"budget fraction {r['budget_fraction']}, {'reviewed' if r['reviews'] else 'never reviewed'}"
                facts.setdefault(setting, {}).setdefault(r["policy"], {}).setdefault(r["conversation"], []).append(
                    float(r["correct"]))
        units = {s: {p: {c: sum(v) / len(v) for c, v in convs.items()} for p, convs in rows.items()}
                 for s, rows in sorted(facts.items())}
        compare(units, "h2o", True)
    else:
        for r in records:
            units.setdefault(f"budget {r['budget']}", {}).setdefault(r["policy"], {})[r["passage"]] = \
                r["perplexity_after_budget"]
        compare(units, "tova", False)
    print(f"\n{time.perf_counter() - start:.0f} s")


if __name__ == "__main__":
    main()
