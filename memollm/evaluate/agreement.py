"""Agreement with the full cache: the full cache generates greedily, each policy reads the same
tokens (teacher forcing) with the cache at the budget, and we count equal greedy predictions."""

from __future__ import annotations

from typing import Sequence

import torch
from transformers import DynamicCache

from ..config import MemoryConfig
from ..texts import default_text, text_segments
from .core import EVICTING, full_logprobs, stream
from .rows import greedy, spec


@torch.no_grad()
def agreement(llm, *, budgets: Sequence[int] = (64, 128), policies: Sequence = EVICTING, prompt_tokens: int = 96,
              new_tokens: int = 192, segments: int = 1, text: str | None = None, split: str = "report",
              sink_tokens: int | None = None, recent_window: int | None = None, prefill_chunk: int = 16, seed: int = 0,
              config: MemoryConfig | None = None, repetition_penalty: float = 1.3,
              progress: bool = True) -> list[dict]:
    """Share of greedy next-token predictions equal to the full cache's over a generation.

    The full cache continues ``segments`` prompts of ``prompt_tokens`` tokens of ``text``
    for ``new_tokens`` tokens (greedy with a ``repetition_penalty``, since a small model's
    plain greedy text soon loops, which any cache predicts); each policy then reads prompt +
    generation (the prompt in chunks, the generation token by token) at each budget, and
    ``agreement`` is the share of generated positions where its greedy (argmax) prediction
    equals the full cache's argmax at the same position.
    """

    prompts = text_segments(llm.tokenizer, text if text is not None else default_text(), prompt_tokens,
                            segments, split)
    cache = DynamicCache(config=llm.model.config)
    logits = llm.model(prompts.to(llm.device), cache=cache, use_cache=True).logits[:, -1]
    generated = greedy(llm.model, cache, new_tokens, logits, context=prompts,
                       repetition_penalty=repetition_penalty).cpu()
    ids = torch.cat([prompts, generated], dim=-1)
    _, full_arg = full_logprobs(llm, ids)
    full_pred = full_arg[:, prompt_tokens - 1:]
    # share of distinct tokens in the generation: near 0 means greedy decoding looped, which
    # makes agreement easy (see also ``top1_agreement_after_budget`` of ``perplexity`` on real text)
    distinct = round(sum(len(set(row.tolist())) for row in generated) / generated.numel(), 4)
    records = []
    for budget in budgets:
        res = stream(llm, ids, policies, budget, sink_tokens=sink_tokens, recent_window=recent_window,
                     prefill=prompt_tokens,
                     prefill_chunk=prefill_chunk, seed=seed, config=config, progress=progress)
        # prediction at index j is for token j + 1; generated tokens sit at prompt_tokens ..
        pred = res.argmax[:, :, prompt_tokens - 1:]
        for i, p in enumerate(policies):
            match = (pred[i] == full_pred).float()
            records.append({"evaluation": "agreement", "policy": spec(p)[0], "budget": int(budget),
                            "tokens": int(match.numel()), "agreement": round(float(match.mean()), 4),
                            "distinct_generated": distinct, "repetition_penalty": repetition_penalty,
                            "peak_kv_tokens": int(res.peak_kv_tokens), "split": split,
                            "seconds": round(res.seconds, 2)})
        records.append({"evaluation": "agreement", "policy": "full", "budget": int(budget),
                        "tokens": int(generated.numel()), "agreement": 1.0, "distinct_generated": distinct,
                        "peak_kv_tokens": int(ids.shape[1]),
                        "split": split, "seconds": 0.0})
    return records

