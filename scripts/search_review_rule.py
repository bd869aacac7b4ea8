"""Choose the review rule on the *tune* split: the memory-research rules against the seed's rule and the peers.

Each variant is a ``(label, "ebbinghaus", MemoryConfig)`` row of one streamed run, next to
the peers (streaming, tova, h2o with half the budget recent, snapkv), so all see the same
tokens. Each stage prints every variant's mean and its paired t-interval against ``tova``
(streams: against ``streaming``) and writes its records; ``--records`` reprints the tables
from stored records without running anything. The report split is never read here.

The search as it was run (records in ``figures/search_review_rule_*.json``; SmolLM2-135M,
fp32, one thread on a shared 2-core CPU):

1. ``ppl --budgets 128,256`` (8 tune passages of 512 tokens, token by token; 26 minutes):
   all twelve variants of :func:`variants`. Each rule alone (top-p reviews, surprise, FSRS,
   traces) was within noise of the seed's rule; the combination of max traces (tau = budget/4)
   with top-p reviews and FSRS stability was best at 128 (-1.14 [-1.99, -0.29] vs tova, the
   seed's rule -0.68 [-1.44, +0.07]) and ahead of tova at 256 (-0.30 [-0.60, -0.00]).
2. ``retrieval --cases 12`` (tune documents, one-pass reading, 7 minutes), the eight leading
   variants: every variant with traces answered exactly what tova answered (after one
   compression the max trace *is* the window's attention); retention-ranked variants lost,
   top-p without traces worst (it reviews few tokens and ranks the rest by age).
3. ``stream --budgets 256 --tokens 8000 --chunk 64`` (tune half of the docs, positions in the
   cache, 8 minutes): the seed's rule +0.11 vs streaming with 32% of a median layer's slots
   older than four budgets; traces + top-p + FSRS -0.20 [-0.48, +0.08] with 8%.
4. ``ppl`` again for two ablations of the winner (12 minutes): without top-p it is as good
   (-1.14 / -0.32), without FSRS worse (-0.88 / -0.16). The default became traces + top-p +
   FSRS: the only combination ahead of tova with an interval excluding zero at both budgets.
5. ``encoding`` (reading a token is its first use, a trace of e / budget), the default plus
   ``enc1/4/16/64`` (``figures/search_review_rule_encoding_*.json``): on the 8,000-token stream
   every encoding was ahead of streaming (enc1 -0.25 [-0.48, -0.02]; the default -0.20) and
   enc16/64 held no old slots in a median layer, but retrieval fell (passkey 25%: enc4 0.4,
   enc16 0.2 against 0.9; vartrack 25%: enc16 0.0 against 0.875) and tune perplexity moved by
   at most 0.06. On a 20,000-token tune stream (``--tokens 20000 --budgets 256,1024``, 23
   minutes) the default was +0.20 [-0.02, +0.42] against streaming at 256, enc1 +0.14, enc4
   +0.16; all within 0.05 of streaming at 1,024. Not adopted.
6. Two ablations on that 20,000-token stream (256) and on ppl/retrieval: ``trace_max0.125+top_p
   +fsrs`` -0.00 [-0.21, +0.21] and ``trace_max0.25_no_reviews`` (strength fixed at S0) +0.00
   [-0.19, +0.19] against streaming; ppl at 256 -0.37 and -0.40 against tova (the default
   -0.30), at 128 -1.01 and -1.18; retrieval identical (``figures/search_review_rule_ablation_*``).
   ``trace_tau=0.125`` was run on the report split (README, Quality) and did not carry over, so
   the default keeps 0.25.
7. Saturation (``figures/search_review_rule_saturation_*.json``): stage 6 blamed the reviews'
   growing strength, so two ways to bound it, on the default: a cap ``max_strength`` of 10 or 20
   (twice or four times S0) and FSRS's gain falling as ``1 / S`` instead of ``S ** -0.2``
   (``stability_decay=1``). On the 20,000-token tune stream at 256 (40 windows, 22 minutes):
   cap10 +0.04 [-0.16, +0.24], cap20 +0.09 [-0.11, +0.29], decay1 +0.02 [-0.18, +0.23] against
   streaming (the default +0.20 [-0.02, +0.42]); at 1,024 all four -0.03. Tune perplexity (10
   minutes): the caps equal the default to 0.001, decay1 -1.15 [-2.00, -0.29] at 128 and -0.37
   [-0.69, -0.05] at 256 against tova (the default -1.14 and -0.30). Retrieval: all four gave the
   same answers as tova. decay1 was best on all three, so ``stability_decay=1`` became the default.

    .venv/bin/python scripts/search_review_rule.py ppl --budgets 128,256 --json ppl.json
    .venv/bin/python scripts/search_review_rule.py retrieval --only seed,fsrs,... --json retrieval.json
    .venv/bin/python scripts/search_review_rule.py stream --budgets 256 --chunk 64 --json stream.json
    .venv/bin/python scripts/search_review_rule.py stream --tokens 20000 --budgets 256,1024 --chunk 64 \
        --only seed,trace_max0.25+top_p+fsrs,trace_max0.25+top_p+fsrs+enc1,trace_max0.25+top_p+fsrs+enc4 --json s.json
    .venv/bin/python scripts/search_review_rule.py stream --tokens 20000 --budgets 256,1024 --chunk 64 \
        --only trace_max0.25+top_p+fsrs,trace_max0.25+top_p+fsrs+cap10,trace_max0.25+top_p+fsrs+cap20,\
trace_max0.25+top_p+fsrs+decay1 --json figures/search_review_rule_saturation_stream20k.json
    .venv/bin/python scripts/search_review_rule.py ppl --records figures/search_review_rule_ppl.json

The variants are written relative to the seed's rule (``SEED_RULE``) and the FSRS saturation that
stages 1-6 used (``SEARCHED_FSRS``), so they stay the same whatever ``MemoryConfig``'s defaults are.
Four of them used knobs that no preset or default kept and that ``MemoryConfig`` has since dropped:
``surprise2`` and ``top_p+surprise+fsrs`` (``review_surprise``), ``...+enc1/4/16/64``
(``encoding``) and ``...+cap10/20`` (``max_strength``). Their records keep their labels; the
script at commit b1d245e runs them.
"""

from __future__ import annotations

import argparse
import json
import time

import torch

from memollm import EbbinghausLLM, MemoryConfig
from memollm.config import SEED_RULE
from memollm import evaluate as E
from memollm.stats import paired

PEERS = ["streaming", "tova", "h2o", "snapkv"]
SEARCHED_FSRS = {"stability_decay": 0.2}
"""FSRS's saturation as stages 1-6 ran it (the default until stage 7): a variant sets its own to differ."""


def variants(base: MemoryConfig) -> list:
    """The rules one at a time, then combined; labels name what differs from the seed's rule."""
    v = {
        "seed": {},
        "top_p0.5": {"review": "top_p", "review_top_p": 0.5},
        "top_p0.8": {"review": "top_p", "review_top_p": 0.8},
        "fsrs": {"stability": "fsrs"},
        "top_p+fsrs": {"review": "top_p", "stability": "fsrs"},
        "trace_max0.25": {"trace": "max", "trace_tau": 0.25},
        "trace_max1": {"trace": "max", "trace_tau": 1.0},
        "trace_sum0.25": {"trace": "sum", "trace_tau": 0.25},
        "trace_max0.25+top_p+fsrs": {"trace": "max", "trace_tau": 0.25, "review": "top_p", "stability": "fsrs"},
        "trace_max0.25+fsrs": {"trace": "max", "trace_tau": 0.25, "stability": "fsrs"},
        "trace_max0.25+top_p": {"trace": "max", "trace_tau": 0.25, "review": "top_p"},
        "trace_sum0.25+top_p+fsrs": {"trace": "sum", "trace_tau": 0.25, "review": "top_p", "stability": "fsrs"},
    }
    default = v["trace_max0.25+top_p+fsrs"]
    v["trace_max0.125+top_p+fsrs"] = {**default, "trace_tau": 0.125}
    v["trace_max0.25_no_reviews"] = {"trace": "max", "trace_tau": 0.25, "review": "none"}  # tau stays at S0's
    v["trace_max0.25+top_p+fsrs+decay1"] = {**default, "stability_decay": 1.0}  # FSRS's gain falls as 1 / S
    return [(label, "ebbinghaus", base.replace(**{**SEED_RULE, **SEARCHED_FSRS, **changes}))
            for label, changes in v.items()]


def compare(records: list[dict], value: str, unit: str, by: tuple[str, ...], reference: str = "tova",
            higher_is_better: bool = False) -> None:
    """Print each label's mean and its paired t-interval against ``reference`` per setting."""
    groups: dict[tuple, dict[str, dict]] = {}
    for r in records:
        groups.setdefault(tuple(r[k] for k in by), {}).setdefault(r["policy"], {})[r[unit]] = r[value]
    for key, rows in groups.items():
        ref = rows.get(reference)
        print(f"\n{dict(zip(by, key))}  (paired t vs {reference}; {'higher' if higher_is_better else 'lower'} is better)")
        for label, vals in rows.items():
            units = sorted(vals)
            mean = sum(vals.values()) / len(vals)
            if ref is None or label == reference or sorted(ref) != units:
                print(f"  {label:34s} {mean:8.3f}")
                continue
            d = paired([vals[u] for u in units], [ref[u] for u in units])
            print(f"  {label:34s} {mean:8.3f}  {d.mean:+.3f} [{d.low:+.3f}, {d.high:+.3f}] n={d.n}")


def run(llm, args, policies: list, budgets: list[int]) -> list[dict]:
    """The records of one stage, on the tune split."""
    if args.stage == "ppl":
        return E.perplexity(llm, budgets=budgets, policies=policies, max_tokens=args.max_tokens,
                            segments=args.passages, sources=("docs", "prose"), split="tune")
    if args.stage == "retrieval":
        return E.retrieval(llm, cases=args.cases, policies=policies, split="tune")
    return E.long_stream(llm, tokens=args.tokens, budgets=budgets, schemes=("cache",), policies=policies,
                         window=500, chunk=args.chunk, split="tune")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("stage", choices=("ppl", "retrieval", "stream"))
    ap.add_argument("--budgets", default="128,256")
    ap.add_argument("--passages", type=int, default=4, help="passages per source (ppl)")
    ap.add_argument("--max-tokens", type=int, default=512)
    ap.add_argument("--cases", type=int, default=12, help="documents per task (retrieval)")
    ap.add_argument("--tokens", type=int, default=8000, help="stream length (stream)")
    ap.add_argument("--chunk", type=int, default=16, help="tokens per step (stream)")
    ap.add_argument("--only", default=None, help="comma-separated variant labels to keep")
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
            keep = set(args.only.split(","))
            vs = [v for v in vs if v[0] in keep]
        budgets = [int(b) for b in args.budgets.split(",")]
        records = run(llm, args, PEERS + vs, budgets)
        with open(args.json, "w") as f:
            json.dump(records, f, indent=1)
    if args.stage == "ppl":
        compare(records, "perplexity_after_budget", "passage", ("budget",))
    elif args.stage == "retrieval":
        compare([r for r in records if r["full_correct"]], "correct", "document", ("task", "budget_fraction"),
                higher_is_better=True)
    else:
        compare([r for r in records if r["evaluation"] == "stream" and r["policy"] != "full"], "perplexity",
                "window_start", ("budget",), reference="streaming")
        print("\nshare of each layer's slots (sinks aside) older than four budgets at the end: median / max")
        for r in records:
            if r["evaluation"] == "stream_kept":
                _, median, most = E.old_share(r)
                print(f"  {r['policy']:34s} {median:.2f} / {most:.2f}")
    print(f"\n{time.perf_counter() - start:.0f} s")


if __name__ == "__main__":
    main()
