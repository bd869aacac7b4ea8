"""Choose how the learned strength meets attention, on the *tune* split only.

The bundled gate gives each token its strength S when it is read; the question here is what
attention should add, judged where memory matters most: facts in conversations (``eval recall``
on the tune split, 16 conversations, a quarter and half of each conversation). Variants of
``ebbinghaus_learned`` (labels name what differs; the extra policies are defined here):

* ``learned``: R = exp(-age / S) alone, no attention read (``ebbinghaus_learned``);
* ``learned+top_p`` / ``learned+share``: a retrieval (the keys holding half of a query's
  attention; any above-uniform glance) restarts the token's curve, S unchanged;
* ``learned+top_p+fsrs`` / ``learned+share+add1`` / ``+add0.1``: the review also grows S, by FSRS
  or by the seed's additive rule (gain 1 or 0.1, S in the hand-made rule's units);
* ``learned×acc``: H2O's accumulated attention discounted by the learned retention;
* ``+recent_half``: H2O's split, the newest half of the budget kept whatever the scores;
* ``learned[conversation gate]``: the plain rule with a gate trained as the bundled one but with 24
  tune conversations (ids 1000-1023, answers filled in) added to its data (``conversation_gate``).

The result (``figures/search_learned_recall.json``; reprint with ``--records``): on reviewed facts
at half of the conversation ``h2o`` answered 0.70 and every variant less, each paired t-interval
below zero (n = 16): the plain learned rule 0.38, top-p reviews 0.41, with FSRS 0.40, the
additive reviews 0.49 (gain 1) and 0.44 (0.1), accumulated attention 0.38, with H2O's recent half
0.26, the conversation gate 0.25 (0.21 on never-reviewed facts, against the bundled gate's 0.11);
``streaming`` 0.46, ``tova`` 0.21, the default ``ebbinghaus`` 0.39. At a quarter nothing tells the
policies apart (h2o 0.19 on reviewed facts, the rest 0 to 0.09). The gate's strengths are short (a
median S of one or two tokens), so ``-age / S`` swamps whatever attention adds, and
``ebbinghaus_learned`` stays the plain rule with the bundled gate.

    .venv/bin/python scripts/search_learned.py --cases 16 --json recall.json \
        --only learned,learned+top_p,learned+top_p+fsrs,learned+share
    .venv/bin/python scripts/search_learned.py --cases 16 --peers h2o \
        --only learned+share+add1,learned+share+add0.1,learned×acc --json recall2.json
    .venv/bin/python scripts/search_learned.py --cases 16 --peers h2o,streaming \
        --only learned+recent_half,learned×acc+recent_half --json recall3.json
    .venv/bin/python scripts/search_learned.py --cases 16 --peers h2o --only learned --json recall4.json \
        --train-gate conversation_gate.safetensors --gate conversation_gate.safetensors
    .venv/bin/python scripts/search_learned.py --records figures/search_learned_recall.json

(``figures/search_learned_recall.json`` is the four runs' records together, ``full`` and ``h2o``
once: the runs gave ``h2o`` the same answers.) Perplexity on tune passages was not run: no
variant came near ``h2o`` in conversations, the family it was meant to win.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from memollm import EbbinghausLLM, MemoryConfig
from memollm.evaluate.recall import build_conversation, recall
from memollm.strength import model_signature
from memollm.training import collect, fit, passage_list
from memollm.memory import reviewed, reviewed_strength
from memollm.policies import LearnedStrengthPolicy, register_policy
from memollm.stats import paired

PEERS = ["h2o", "tova", "ebbinghaus"]


@register_policy("learned_reviews")
class LearnedReviews(LearnedStrengthPolicy):
    """A retrieval is a review, as in the hand-made rule: a token the newest query reviews
    (``memollm.memory.reviewed``, in any state layer) restarts its curve (age 0), and its strength
    grows by ``stability``'s rule, S counted in units of ``time_step`` as there."""

    def __init__(self, config, num_layers, *, seed=0, device=None) -> None:
        super().__init__(config, num_layers, seed=seed, device=device)
        self.needs_attention = config.review != "none"

    def observe(self, received, visible):
        cfg = self.config
        share = received.float() * visible
        hit = reviewed(cfg, received, share).any(0)
        strength = torch.exp(self.log_strength) * cfg.time_step  # in the hand-made rule's units
        grown = reviewed_strength(cfg, strength, torch.exp(self.scores(None)), share.mean(0))
        self.log_strength = torch.where(hit, torch.log(grown / cfg.time_step), self.log_strength)
        self.age = torch.where(hit, torch.zeros_like(self.age), self.age)


@register_policy("learned_h2o")
class LearnedAccumulated(LearnedStrengthPolicy):
    """Accumulated attention (H2O's score) discounted by the learned retention: log(acc) - age / S."""

    def __init__(self, config, num_layers, *, seed=0, device=None) -> None:
        super().__init__(config, num_layers, seed=seed, device=device)
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


def _recent_half(scores: torch.Tensor, positions: torch.Tensor, budget: int) -> torch.Tensor:
    """H2O's split: the newest half of the budget ranks above every older token."""
    recent = max(1, budget // 2)
    if positions.shape[-1] <= recent:
        return scores
    cutoff = positions.topk(recent, dim=-1).values[..., -1:]
    return torch.where(positions >= cutoff, scores.amax(-1, keepdim=True).clamp(min=0) + 1.0 + scores.abs(), scores)


@register_policy("learned_recent")
class LearnedRecentHalf(LearnedStrengthPolicy):
    """The learned retention for the older half of the budget, the newest half kept (H2O's split)."""

    def scores(self, positions):
        return _recent_half(super().scores(positions), positions, self.config.memory_budget)


@register_policy("learned_h2o_recent")
class LearnedAccumulatedRecent(LearnedAccumulated):
    """H2O with its heavy hitters' accumulated attention discounted by the learned retention."""

    def scores(self, positions):
        return _recent_half(super().scores(positions), positions, self.config.memory_budget)


TRAIN_CONVERSATIONS = range(1000, 1024)
"""Tune conversations for a gate's data: none of them is among the 16 the search is judged on (ids 0-15)."""


def conversation_gate(llm, path: str, *, passages: int = 24, seed: int = 0) -> None:
    """The bundled gate's recipe (24 tune passages of 512 tokens, 300 steps, seed 0) with 24 tune
    conversations added to its data, their answers filled in, so that a fact's tokens are seen when
    a question comes back to them; written to ``path`` with the model's signature."""
    tok = llm.tokenizer
    ids = [p.ids for p in passage_list(tok, passages, 512, "tune")]
    for c in TRAIN_CONVERSATIONS:
        conv = build_conversation(tok, c)
        text = "".join(arg if what == "read" else f" {conv.facts[arg[0]].value}." for _, what, arg in conv.steps)
        ids.append(tok(text, add_special_tokens=False, return_tensors="pt").input_ids[0])
    gate = fit(collect(llm, ids, seed=seed), seed=seed, progress=True)
    gate.metadata.update(model=str(llm.model_name), signature=json.dumps(model_signature(llm.model), sort_keys=True),
                         data=f"{passages} tune passages x 512 + tune conversations {TRAIN_CONVERSATIONS.start}-"
                              f"{TRAIN_CONVERSATIONS.stop - 1}", seed=str(seed))
    gate.save(path)


def variants(base: MemoryConfig) -> list:
    v = {
        "learned": ("ebbinghaus_learned", {}),
        "learned+top_p": ("learned_reviews", {"review": "top_p", "strength_gain": 0.0}),
        "learned+top_p+fsrs": ("learned_reviews", {"review": "top_p"}),
        "learned+share": ("learned_reviews", {"review": "share", "review_threshold": 1.0, "strength_gain": 0.0}),
        "learned+share+add1": ("learned_reviews", {"review": "share", "stability": "additive", "strength_gain": 1.0}),
        "learned+share+add0.1": ("learned_reviews", {"review": "share", "stability": "additive", "strength_gain": 0.1}),
        "learned×acc": ("learned_h2o", {}),
        "learned+recent_half": ("learned_recent", {}),
        "learned×acc+recent_half": ("learned_h2o_recent", {}),
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
    ap.add_argument("--cases", type=int, default=16, help="tune conversations")
    ap.add_argument("--only", default=None, help="comma-separated variant labels to keep")
    ap.add_argument("--peers", default=",".join(PEERS), help="peers run beside the variants")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--json", help="where to write the records")
    ap.add_argument("--records", help="print the tables of stored records instead of running")
    ap.add_argument("--gate", help="a gate file every learned row of the run reads (one gate per run)")
    ap.add_argument("--train-gate", metavar="PATH", help="first write the gate with tune conversations in its data")
    args = ap.parse_args()
    if args.records:
        records = json.loads(Path(args.records).read_text())
    elif not args.json:
        ap.error("--json is required unless --records is given")
    else:
        torch.set_num_threads(args.threads)
        llm = EbbinghausLLM()
        if args.train_gate:
            conversation_gate(llm, args.train_gate)
        config = llm.config.replace(strength_gate=args.gate) if args.gate else llm.config
        vs = [v for v in variants(config) if not args.only or v[0] in args.only.split(",")]
        records = recall(llm, policies=args.peers.split(",") + vs, cases=args.cases, split="tune",
                         config=config)["records"]
        for r in records if args.gate else ():  # the bundled gate's rows keep the plain labels
            r["policy"] = r["policy"].replace("learned", "learned[conversation gate]")
        Path(args.json).write_text(json.dumps(records, indent=1, default=str))
    facts: dict = {}  # facts the full cache answered, reviewed or not, per conversation
    for r in records:
        if r["policy"] != "full" and r["full_correct"]:
            setting = f"budget fraction {r['budget_fraction']}, {'reviewed' if r['reviews'] else 'never reviewed'}"
            facts.setdefault(setting, {}).setdefault(r["policy"], {}).setdefault(r["conversation"], []).append(
                float(r["correct"]))
    compare({s: {p: {c: sum(v) / len(v) for c, v in convs.items()} for p, convs in rows.items()}
             for s, rows in sorted(facts.items())}, "h2o", True)


if __name__ == "__main__":
    main()
