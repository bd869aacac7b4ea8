"""The model's own forgetting curves: how often a token is still retrieved at age t, by kind and layer.

A token at age ``a`` counts as *retrieved* by the query ``a`` tokens after it when it is among the
fewest keys holding half of that query's attention (the sinks left out): the strength gate's
target (``memollm.training.collect``, whose random draws of token, age and KV head per layer
this reuses). Tokens are told apart by their text alone: punctuation, whitespace and function
words; names and numbers (a capitalised word or any digit); the rest. The curves say what any
forgetting rule must match: a power law in age, and far less difference between kinds.
"""

from __future__ import annotations

import string
from typing import Sequence

import torch

from ..stats import markdown
from ..training import SINKS, collect, passage_list

KINDS = ("punctuation and function words", "names and numbers", "the rest")
FUNCTION_WORDS = frozenset("""the a an of to in on at for by with and or but is are was were be been it its this
that as from not no so if then than which who what when where how he she they we you i his her their our your
there here had has have do does did can will would could should may might""".split())
AGES = ((1, 2), (4, 8), (16, 32), (64, 128), (160, 250))
"""Age buckets in tokens, inclusive."""


def token_kind(tokenizer, token_id: int) -> int:
    """The index into ``KINDS`` of one token, from its text."""
    word = tokenizer.decode([int(token_id)]).strip()
    if not word or all(c in string.punctuation for c in word) or word.lower() in FUNCTION_WORDS:
        return 0
    return 1 if word[0].isupper() or any(c.isdigit() for c in word) else 2


def forgetting_curves(llm, *, passages: int = 2, tokens: int = 256, split: str = "tune",
                      ages: Sequence[tuple[int, int]] = AGES, samples: int = 512, seed: int = 0,
                      progress: bool = True) -> list[dict]:
    """Records ``{kind, age_low, age_high, layer, retrieved, draws, tokens, split}``: the share of
    draws still retrieved, per kind and age bucket, over all memory layers (``layer`` None) and per
    layer; ``tokens`` counts the passages' tokens of that kind (sinks left out)."""
    texts = passage_list(llm.tokenizer, passages, tokens, split)
    data = collect(llm, [p.ids for p in texts], ages=ages, samples=samples, seed=seed, progress=progress)
    kinds = torch.tensor([token_kind(llm.tokenizer, t) for p in texts for t in p.ids])
    sinks = torch.cat([torch.arange(len(p.ids)) for p in texts]) < SINKS  # each passage's first tokens
    drawn = kinds[data.token]  # [layers, draws]
    records = []
    for k, name in enumerate(KINDS):
        count = int(((kinds == k) & ~sinks).sum())
        for lo, hi in ages:
            picked = (drawn == k) & (data.age >= lo) & (data.age <= hi)
            for layer, rows in [(None, slice(None))] + [(layer, i) for i, layer in enumerate(data.layers)]:
                y, sel = data.y[rows], picked[rows]
                n = int(sel.sum())
                records.append({"evaluation": "curve", "kind": name, "age_low": lo, "age_high": hi, "layer": layer,
                                "retrieved": float(y[sel].mean()) if n else None, "draws": n, "tokens": count,
                                "split": split})
    return records


def curves_table(records: Sequence[dict], *, age: tuple[int, int] | None = None) -> str:
    """Kinds by age bucket, over all layers: the share still retrieved, and the tokens of each kind;
    with ``age``, layers by kind at that age bucket instead."""
    if age is not None:
        at = [r for r in records if r["layer"] is not None and (r["age_low"], r["age_high"]) == tuple(age)]
        kinds = list(dict.fromkeys(r["kind"] for r in at))
        cell = {(r["layer"], r["kind"]): r["retrieved"] for r in at}
        rows = [[layer, *("–" if cell[layer, k] is None else f"{cell[layer, k]:.3f}" for k in kinds)]
                for layer in dict.fromkeys(r["layer"] for r in at)]
        return markdown([f"layer \\ kind (age {age[0]}-{age[1]})", *kinds], rows, "r" * (len(kinds) + 1))
    overall = [r for r in records if r["layer"] is None]
    ages = list(dict.fromkeys((r["age_low"], r["age_high"]) for r in overall))
    rows = []
    for kind in dict.fromkeys(r["kind"] for r in overall):
        mine = {(r["age_low"], r["age_high"]): r for r in overall if r["kind"] == kind}
        cells = ["–" if mine[a]["retrieved"] is None else f"{mine[a]['retrieved']:.3f}" for a in ages]
        rows.append([kind, *cells, next(iter(mine.values()))["tokens"]])
    return markdown(["kind \\ age (tokens)", *(f"{lo}-{hi}" for lo, hi in ages), "tokens"], rows,
                    "l" + "r" * (len(ages) + 1))


__all__ = ["AGES", "FUNCTION_WORDS", "KINDS", "curves_table", "forgetting_curves", "token_kind"]
