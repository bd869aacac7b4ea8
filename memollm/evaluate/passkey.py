"""Passkey retrieval: a random number hidden at a depth of filler text, the question after it.

The prompt is read in chunks with eviction between them (bounded memory; the question comes
after the document was compressed) or in one pass and compressed after it (question-aware:
the attention of the prompt's last queries, the question, counts as each token's review).
In one-pass reading every policy compresses the same prefill, so it is computed once per
document and handed to each policy and granularity (``MemorySession.adopt_prefill``).
"""

from __future__ import annotations

import random
from typing import Sequence

import torch
from tqdm.auto import tqdm
from transformers import DynamicCache

from ..attention import attached
from ..config import MemoryConfig
from .core import EVICTING, eval_config, stream
from .rows import PrefillCapture, greedy, rows_from_prefill, spec

FILLER = "The grass is green. The sky is blue. The sun is yellow. Here we go. There and back again. "


INTRO = ("There is an important piece of information hidden inside a lot of irrelevant text. "
         "Find it and memorize it. I will quiz you about it.\n")


QUESTION = "\nWhat is the pass key? The pass key is"


def passkey_ids(tokenizer, length: int, depth: float, key: int) -> torch.Tensor:
    """Token ids ``[length]`` (about): filler text with ``The pass key is KEY`` at ``depth`` in [0, 1]."""
    enc = lambda s: tokenizer(s, add_special_tokens=False).input_ids  # noqa: E731
    intro, question = enc(INTRO), enc(QUESTION)
    needle = enc(f" The pass key is {key}. Remember it. {key} is the pass key. ")
    filler_one = enc(FILLER)
    room = length - len(intro) - len(question) - len(needle)
    if room < 0:
        raise ValueError(f"passkey length {length} is too short for the prompt ({length - room} tokens)")
    filler = (filler_one * (room // len(filler_one) + 1))[:room]
    cut = int(round(depth * room))
    return torch.tensor(intro + filler[:cut] + needle + filler[cut:] + question)


def passkey_budget(length: int, fraction: float, question_tokens: int) -> int:
    """The budget that keeps ``fraction`` of the document plus the question."""
    return int(round(fraction * (length - question_tokens))) + question_tokens


def passkey(llm, *, budgets: Sequence[int] = (128,), budget_fractions: Sequence[float] = (),
            lengths: Sequence[int] = (512,), depths: Sequence[float] = (0.1, 0.5, 0.9), trials: int = 3,
            policies: Sequence = EVICTING, read: str = "chunked", granularities: Sequence[str] = ("auto",),
            sink_tokens: int | None = None, recent_window: int | None = None, prefill_chunk: int = 32,
            answer_tokens: int = 7, seed: int = 0, config: MemoryConfig | None = None,
            progress: bool = True) -> list[dict]:
    """Passkey retrieval accuracy per policy, granularity, budget, length and depth over
    ``trials`` seeded keys; the question comes after the document.

    ``read="chunked"`` reads the prompt in chunks of ``prefill_chunk`` with eviction between
    them (bounded memory, but the question arrives after the document was compressed);
    ``read="whole"`` reads it in one pass and compresses it afterwards (question-aware, the
    cache peaks at the whole prompt). Budgets are ``budgets`` in tokens plus, per length,
    ``budget_fractions`` of the document plus the question. One record per setting:
    ``accuracy``, ``correct``, ``trials``, ``hits`` (one 0/1 per case, for intervals),
    ``peak_kv_tokens`` and the ``answers``; ``full`` reads the same prompts without eviction.
    """
    if read not in ("chunked", "whole"):
        raise ValueError(f"read must be 'chunked' or 'whole', got {read!r}")
    rng = random.Random(seed)
    records = []
    cases = [(L, d) for L in lengths for d in depths]
    keys = {c: [rng.randint(10000, 99999) for _ in range(trials)] for c in cases}
    q_tokens = len(llm.tokenizer(QUESTION, add_special_tokens=False).input_ids)
    settings = lambda L: [(int(b), None) for b in budgets] + [  # noqa: E731
        (passkey_budget(L, f, q_tokens), float(f)) for f in budget_fractions]
    steps = sum(1 + len(settings(L)) * len(granularities) for L, _ in cases)
    bar = tqdm(total=steps, desc="passkey", leave=False, disable=not progress)
    base_cfg = config or llm.config
    for length, depth in cases:
        ks = keys[(length, depth)]
        ids = torch.stack([passkey_ids(llm.tokenizer, length, depth, k) for k in ks]).to(llm.device)
        cache = DynamicCache(config=llm.model.config)  # the full-cache reference; read once for every setting
        capture = PrefillCapture(llm.model, policies, base_cfg)
        with torch.no_grad(), attached(llm.model, capture):
            logits = llm.model(ids, cache=cache, use_cache=True).logits[:, -1]
        prefilled = [(layer.keys, layer.values) for layer in cache.layers]
        for budget, fraction in settings(length):
            for granularity in granularities:
                base = base_cfg.replace(granularity=granularity)
                rows = ids.shape[0]
                if read == "whole":  # every policy compresses the same prefill: computed once above
                    session, cache_p = rows_from_prefill(
                        llm.model, policies, eval_config(llm, budget, sink_tokens, recent_window, base), prefilled,
                        capture, seed=seed, rows_each=rows)
                    first = logits.repeat(len(policies), 1)
                else:
                    res = stream(llm, ids, policies, budget, sink_tokens=sink_tokens, recent_window=recent_window,
                                 prefill=ids.shape[1], prefill_chunk=prefill_chunk, seed=seed, config=base,
                                 keep_session=True)
                    session, cache_p, first = res.session, res.cache, res.last_logits
                with attached(llm.model, session):
                    answers = greedy(llm.model, cache_p, answer_tokens, first)
                for i, p in enumerate(policies):
                    records.append(_passkey_record(spec(p)[0], budget, fraction, base.granularity_for("evict"), read,
                                                   length, depth, ks, answers[i * rows:(i + 1) * rows],
                                                   llm.tokenizer, session.peak_cached))
                bar.update(1)
        answers = greedy(llm.model, cache, answer_tokens, logits)
        records.append(_passkey_record("full", None, None, None, read, length, depth, ks, answers, llm.tokenizer,
                                       ids.shape[1]))
        bar.update(1)
    bar.close()
    return records


def _passkey_record(policy, budget, fraction, granularity, read, length, depth, keys, answers, tokenizer,
                    peak) -> dict:
    texts = [tokenizer.decode(a, skip_special_tokens=True) for a in answers]
    correct = [str(k) in t for k, t in zip(keys, texts)]
    return {"evaluation": "passkey", "policy": policy, "budget": budget, "budget_fraction": fraction,
            "granularity": granularity, "read": read, "length": int(length), "depth": float(depth),
            "trials": len(keys), "correct": int(sum(correct)), "accuracy": round(sum(correct) / len(keys), 4),
            "hits": [int(c) for c in correct], "peak_kv_tokens": int(peak), "answers": [t.strip() for t in texts]}

