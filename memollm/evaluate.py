"""Quality at equal memory: perplexity, passkey retrieval and agreement with the full cache.

Every evaluation streams text through the model with the KV cache held to a budget by an
eviction policy (``generation_mode="evict"``), and compares policies on the same tokens in
one run. Three measurements:

* ``perplexity`` -- the StreamingLLM protocol: the text is fed one token at a time
  (``chunk=1``), evicting before each step, and every next token is scored. The first
  ``budget`` tokens are identical for all policies; ``perplexity_after_budget`` scores only
  the tokens read once eviction has started, where policies differ.
* ``passkey`` -- a random number hidden at a depth of filler text; the prompt is read with
  *chunked prefill* (chunks of ``prefill_chunk`` tokens, evicting between chunks, so the
  cache never holds more than the budget), then the answer is decoded greedily.
* ``agreement`` -- the full cache generates greedily; each policy then reads the same
  tokens (teacher forcing) with the cache at the budget, and we count how often its greedy
  prediction equals the full cache's.

Long prompts. ``EbbinghausLLM.generate`` prefills the whole prompt in one forward pass and
compresses the cache right after, so a 4,000-token prompt briefly sits in the cache in
full. Here prompts are read in chunks with eviction between them (``stream``), so the
cache never exceeds the budget (``peak_kv_tokens`` in every record proves it), and the
policies see the attention of every chunk's newest query instead of one query at the end.

Speed. Policies run side by side as blocks of batch rows of one forward pass
(``memollm.policies.PolicyRows``); rows never interact, and on a CPU a batch costs little
more than one row. The ``full`` reference is one causal forward pass per segment.
"""

from __future__ import annotations

import random
import time
from dataclasses import dataclass
from typing import Any, Sequence

import torch
from tqdm.auto import tqdm
from transformers import DynamicCache

from transformers.integrations.sdpa_attention import sdpa_attention_forward

from .attention import attached, model_lock, received_attention
from .cache import slot_units
from .config import MemoryConfig
from .policies import PolicyRows, make_policy
from .session import MemorySession
from .texts import default_text, passages, split_ids, text_segments

EVICTING = ("ebbinghaus", "ebbinghaus_tuned", "ebbinghaus_fixed", "streaming", "h2o", "tova", "random")
"""The evicting policies compared by default; ``full`` (no eviction) is always added as the reference."""


def _spec(spec) -> tuple[str, str, MemoryConfig | None]:
    if isinstance(spec, str):
        return spec, spec, None
    label, name, cfg = spec
    return label, name, cfg


def eval_config(llm, budget: int, sink_tokens: int | None = None, recent_window: int | None = None,
                config: MemoryConfig | None = None) -> MemoryConfig:
    changes = {"memory_budget": budget, "sink_tokens": sink_tokens, "recent_window": recent_window}
    return (config or llm.config).replace(**{k: v for k, v in changes.items() if v is not None})


@dataclass
class StreamResult:
    logprob: torch.Tensor  # [policies, segments, steps]: log p(next token), NaN where not scored
    argmax: torch.Tensor  # [policies, segments, steps]: greedy prediction for the next token
    peak_kv_tokens: int
    seconds: float
    session: Any = None
    cache: Any = None
    last_logits: torch.Tensor | None = None  # [rows, vocab]


@torch.no_grad()
def stream(llm, ids: torch.Tensor, policies: Sequence, budget: int, *, sink_tokens: int | None = None,
           recent_window: int | None = None, chunk: int = 1, prefill: int = 0, prefill_chunk: int = 64,
           seed: int = 0, config: MemoryConfig | None = None, progress: bool = False,
           keep_session: bool = False) -> StreamResult:
    """Feed ``ids`` ``[segments, T]`` through the model once per policy, the cache held to ``budget``.

    The first ``prefill`` tokens are read in chunks of ``prefill_chunk`` (a long prompt),
    the rest in chunks of ``chunk`` (1 = token by token, the StreamingLLM protocol). Before
    each chunk the session evicts down to ``budget - len(chunk)``, so the cache never holds
    more than ``budget`` tokens. A ``prefill_chunk`` of at least ``prefill`` reads the prompt
    in one pass and compresses it afterwards (question-aware: the policies see what the
    prompt's last queries look at; the cache peaks at the whole prompt). ``policies``: names
    from ``POLICIES`` (not ``full``) or ``(label, name, MemoryConfig)`` tuples (variants); the
    eviction knobs and ``granularity`` come from ``config`` and hold for every row.
    """
    specs = [_spec(p) for p in policies]
    cfg = eval_config(llm, budget, sink_tokens, recent_window, config)
    one_pass = prefill > 0 and prefill_chunk >= prefill
    largest = max(chunk, prefill_chunk if prefill and not one_pass else 1)
    cfg.check_budget(budget, largest)
    model = llm.model
    device = llm.device
    seg, total = ids.shape
    rows = ids.to(device).repeat(len(specs), 1)  # row p * seg + s
    state_layers, units = slot_units(model, cfg)
    built = []
    for i, (label, name, pcfg) in enumerate(specs):
        if name == "full":
            raise ValueError("'full' never evicts: it is the reference, computed by full_logprobs")
        pc = (pcfg or cfg).replace(memory_budget=cfg.memory_budget, sink_tokens=cfg.sink_tokens,
                                   recent_window=cfg.recent_window, granularity=cfg.granularity,
                                   observation_window=cfg.observation_window,
                                   observation_pool=cfg.observation_pool, policy=name)
        built.append(make_policy(name, pc, state_layers, seed=seed + i, device=device))
    session = MemorySession(model, "evict", cfg.replace(policy="streaming"), seed=seed,
                            policy=PolicyRows(built, seg * units))

    cache = DynamicCache(config=model.config)
    logprob = torch.full((rows.shape[0], total - 1), float("nan"))
    argmax = torch.zeros((rows.shape[0], total - 1), dtype=torch.long)
    bounds = list(range(0, min(prefill, total), prefill_chunk)) + list(range(min(prefill, total), total, chunk))
    bounds.append(total)
    bar = tqdm(total=total, desc=f"budget {budget}", leave=False, disable=not progress)
    start = time.perf_counter()
    last = None
    with attached(model, session):
        for a, b in zip(bounds[:-1], bounds[1:]):
            out = model(rows[:, a:b], cache=cache, use_cache=True)
            logits = out.logits.float()
            last = logits[:, -1]
            hi = min(b, total - 1)
            if hi > a:
                lp = torch.log_softmax(logits[:, : hi - a], dim=-1)
                target = rows[:, a + 1: hi + 1]
                logprob[:, a:hi] = lp.gather(-1, target[..., None])[..., 0].cpu()
                argmax[:, a:hi] = lp.argmax(-1).cpu()
            bar.update(b - a)
    seconds = time.perf_counter() - start
    bar.close()
    shape = (len(specs), seg, total - 1)
    return StreamResult(logprob.reshape(shape), argmax.reshape(shape), session.peak_cached, seconds,
                        session if keep_session else None, cache if keep_session else None, last)


@torch.no_grad()
def full_logprobs(llm, ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Log p(next token) and greedy predictions with the full cache: one causal pass per segment."""
    lps, arg = [], []
    for row in ids.to(llm.device):
        logits = llm.model(row[None]).logits[0, :-1].float()
        lp = torch.log_softmax(logits, dim=-1)
        lps.append(lp.gather(-1, row[1:, None])[:, 0].cpu())
        arg.append(lp.argmax(-1).cpu())
    return torch.stack(lps), torch.stack(arg)


def ppl(logprob: torch.Tensor) -> float:
    lp = logprob[torch.isfinite(logprob)]
    return float(torch.exp(-lp.mean())) if lp.numel() else float("nan")


def perplexity(llm, *, budgets: Sequence[int] = (64, 128, 256), policies: Sequence = EVICTING,
               max_tokens: int = 512, segments: int = 1, text: str | None = None, split: str = "report",
               sources: Sequence[str] | None = None, granularities: Sequence[str] = ("shared",),
               sink_tokens: int | None = None, recent_window: int | None = None, chunk: int = 1, seed: int = 0,
               config: MemoryConfig | None = None, progress: bool = True) -> list[dict]:
    """Perplexity per policy, granularity, budget and passage: the StreamingLLM protocol.

    Passages: ``segments`` disjoint passages of ``max_tokens`` tokens from each of
    ``sources`` (``memollm.texts.TEXT_SOURCES``: reference docs and a novel) in ``split``
    (``report`` to quote, ``tune`` to tune on), or consecutive segments of ``text``. One
    record per (policy, granularity, budget, passage): ``perplexity`` (all tokens, the
    StreamingLLM convention), ``perplexity_after_budget`` (tokens at positions >= budget only,
    where policies differ), ``top1_agreement_after_budget`` (greedy prediction equals the full
    cache's), ``peak_kv_tokens``, ``seconds``. The ``full`` reference appears once per budget.
    Summarise with ``memollm.stats.summarize(records, value, by=("policy", "granularity",
    "budget"), item="passage", lower_is_better=True)``.
    """
    if sources is not None:
        chosen = passages(llm.tokenizer, max_tokens, segments, sources=sources, split=split)
        ids = torch.stack([p.ids for p in chosen])
        keys = [p.key for p in chosen]
    else:
        ids = text_segments(llm.tokenizer, text if text is not None else default_text(), max_tokens, segments, split)
        keys = [f"text/{i}" for i in range(segments)]
    full_lp, full_arg = full_logprobs(llm, ids)
    records = []
    for budget in budgets:
        entries = [("full", None, full_lp, full_arg, max_tokens, 0.0)]
        for granularity in granularities:
            base = (config or llm.config).replace(granularity=granularity)
            res = stream(llm, ids, policies, budget, sink_tokens=sink_tokens, recent_window=recent_window,
                         chunk=chunk, seed=seed, config=base, progress=progress)
            entries += [(_spec(p)[0], granularity, res.logprob[i], res.argmax[i], res.peak_kv_tokens, res.seconds)
                        for i, p in enumerate(policies)]
        for label, granularity, lp, arg, peak, secs in entries:
            same = (arg == full_arg).float()
            for j, key in enumerate(keys):
                records.append({
                    "evaluation": "ppl", "policy": label, "granularity": granularity, "budget": int(budget),
                    "passage": key, "tokens": int(lp[j].numel()), "perplexity": round(ppl(lp[j]), 4),
                    "perplexity_after_budget": round(ppl(lp[j, budget:]), 4),
                    "top1_agreement_after_budget": round(float(same[j, budget:].mean()), 4)
                    if budget < same.shape[1] else 1.0,
                    "peak_kv_tokens": int(peak), "split": split, "chunk": chunk, "seconds": round(secs, 2),
                })
    return records


def long_stream(llm, *, tokens: int = 20_000, budgets: Sequence[int] = (256, 1024),
                schemes: Sequence[str] = ("true", "cache"), policies: Sequence = ("streaming", "ebbinghaus"),
                window: int = 1000, chunk: int = 1, source: str = "docs", seed: int = 0,
                config: MemoryConfig | None = None, progress: bool = True) -> list[dict]:
    """Perplexity along a stream longer than the model's context, in windows of ``window`` tokens.

    The first ``tokens`` tokens of a source's report split are read ``chunk`` tokens at a
    time with the cache held to each budget, once per position scheme (``true``: positions
    grow past the trained range; ``cache``: StreamingLLM's positions inside the cache). The
    ``full`` cache is the reference while the stream fits the context. One record per
    (policy, positions, budget, window): ``window_start``, ``perplexity``; plus ``seconds``.
    """
    ids = split_ids(llm.tokenizer, source, "report")
    if ids.shape[0] < tokens:
        raise ValueError(f"source {source!r} has {ids.shape[0]} tokens in its report split; {tokens} requested")
    ids = ids[:tokens][None]
    starts = list(range(0, tokens - 1, window))
    records = []
    fits = min(tokens, llm.max_positions or tokens)
    full_lp, _ = full_logprobs(llm, ids[:, :fits])
    for a in starts:
        if a + window <= fits - 1:
            records.append({"evaluation": "stream", "policy": "full", "positions": "true", "budget": None,
                            "window_start": a, "perplexity": round(ppl(full_lp[0, a:a + window]), 4),
                            "chunk": chunk, "seconds": 0.0})
    for budget in budgets:
        for scheme in schemes:
            base = (config or llm.config).replace(positions=scheme)
            res = stream(llm, ids, policies, budget, chunk=chunk, seed=seed, config=base, progress=progress)
            for i, p in enumerate(policies):
                for a in starts:
                    records.append({"evaluation": "stream", "policy": _spec(p)[0], "positions": scheme,
                                    "budget": int(budget), "window_start": a,
                                    "perplexity": round(ppl(res.logprob[i, 0, a:a + window]), 4), "chunk": chunk,
                                    "seconds": round(res.seconds, 1)})
    return records


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


def _penalise(logits: torch.Tensor, seen: torch.Tensor, penalty: float) -> torch.Tensor:
    """CTRL-style repetition penalty on the tokens in ``seen`` ``[rows, k]``."""
    if penalty == 1.0:
        return logits
    got = logits.gather(-1, seen)
    return logits.scatter(-1, seen, torch.where(got > 0, got / penalty, got * penalty))


@torch.no_grad()
def _greedy_continue(llm, cache, n: int, first_logits: torch.Tensor, *,
                     context: torch.Tensor | None = None, repetition_penalty: float = 1.0) -> torch.Tensor:
    """Greedy tokens ``[rows, n]`` after a prefilled cache (the session, if any, stays attached by the caller).

    With ``repetition_penalty`` > 1, tokens already in ``context`` or generated are penalised first.
    """
    seen = context if context is not None else torch.zeros(first_logits.shape[0], 0, dtype=torch.long)
    seen = seen.to(first_logits.device)
    nxt = _penalise(first_logits, seen, repetition_penalty).argmax(-1, keepdim=True)
    out = [nxt]
    for _ in range(n - 1):
        seen = torch.cat([seen, nxt], dim=-1)
        logits = llm.model(nxt, cache=cache, use_cache=True).logits[:, -1]
        nxt = _penalise(logits, seen, repetition_penalty).argmax(-1, keepdim=True)
        out.append(nxt)
    return torch.cat(out, dim=-1)


class _Capture:
    """Attached for one prefill: sdpa for the output, and per layer the attention each token
    gets from the last ``window`` queries, per KV head (what a session scores, before pooling)."""

    def __init__(self, window: int) -> None:
        self.window = window
        self.received: dict[int, torch.Tensor] = {}

    def pre_forward(self, module, args, kwargs):
        return args, kwargs

    def post_forward(self, module, args, kwargs, output):
        return output

    def attend(self, module, query, key, value, attention_mask, **kwargs):
        out = sdpa_attention_forward(module, query, key, value, attention_mask, **kwargs)
        got = received_attention(query, key, attention_mask, kwargs.get("scaling"), window=self.window,
                                 per_kv_head=True)
        self.received[module.layer_idx] = got
        return out


def _sessions_from_prefill(llm, policies, prefilled, received, budget, config, sink_tokens, recent_window, seed,
                           rows):
    """One evicting session for ``policies`` side by side (row blocks) over a copy of one prefill."""
    cfg = eval_config(llm, budget, sink_tokens, recent_window, config)
    state_layers, units = slot_units(llm.model, cfg)
    built = [make_policy(_spec(p)[1], cfg.replace(policy=_spec(p)[1]), state_layers, seed=seed + i,
                         device=llm.device) for i, p in enumerate(policies)]
    session = MemorySession(llm.model, "evict", cfg.replace(policy="streaming"), seed=seed,
                            policy=PolicyRows(built, rows * units))
    cache = DynamicCache(config=llm.model.config)
    n = len(policies)
    for i, (k, v) in enumerate(prefilled):
        cache.update(k.repeat(n, 1, 1, 1), v.repeat(n, 1, 1, 1), i)
    with model_lock(llm.model):
        session.adopt_prefill(cache, {l: r.repeat(n, 1, 1) for l, r in received.items()})
    return session, cache


def passkey_budget(length: int, fraction: float, question_tokens: int) -> int:
    """The budget that keeps ``fraction`` of the document plus the question."""
    return int(round(fraction * (length - question_tokens))) + question_tokens


def passkey(llm, *, budgets: Sequence[int] = (128,), budget_fractions: Sequence[float] = (),
            lengths: Sequence[int] = (512,), depths: Sequence[float] = (0.1, 0.5, 0.9), trials: int = 3,
            policies: Sequence = EVICTING, read: str = "chunked", granularities: Sequence[str] = ("shared",),
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
        capture = _Capture(base_cfg.observation_window)
        with torch.no_grad(), attached(llm.model, capture):
            logits = llm.model(ids, cache=cache, use_cache=True).logits[:, -1]
        prefilled = [(layer.keys, layer.values) for layer in cache.layers]
        for budget, fraction in settings(length):
            for granularity in granularities:
                base = base_cfg.replace(granularity=granularity)
                rows = ids.shape[0]
                if read == "whole":  # every policy compresses the same prefill: computed once above
                    session, cache_p = _sessions_from_prefill(llm, policies, prefilled, capture.received, budget,
                                                              base, sink_tokens, recent_window, seed, rows)
                    first = logits.repeat(len(policies), 1)
                else:
                    res = stream(llm, ids, policies, budget, sink_tokens=sink_tokens, recent_window=recent_window,
                                 prefill=ids.shape[1], prefill_chunk=prefill_chunk, seed=seed, config=base,
                                 keep_session=True)
                    session, cache_p, first = res.session, res.cache, res.last_logits
                with attached(llm.model, session):
                    answers = _greedy_continue(llm, cache_p, answer_tokens, first)
                for i, p in enumerate(policies):
                    records.append(_passkey_record(_spec(p)[0], budget, fraction, granularity, read, length, depth,
                                                   ks, answers[i * rows:(i + 1) * rows], llm.tokenizer,
                                                   session.peak_cached))
                bar.update(1)
        answers = _greedy_continue(llm, cache, answer_tokens, logits)
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
    generated = _greedy_continue(llm, cache, new_tokens, logits, context=prompts,
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
            records.append({"evaluation": "agreement", "policy": _spec(p)[0], "budget": int(budget),
                            "tokens": int(match.numel()), "agreement": round(float(match.mean()), 4),
                            "distinct_generated": distinct, "repetition_penalty": repetition_penalty,
                            "peak_kv_tokens": int(res.peak_kv_tokens), "split": split,
                            "seconds": round(res.seconds, 2)})
        records.append({"evaluation": "agreement", "policy": "full", "budget": int(budget),
                        "tokens": int(generated.numel()), "agreement": 1.0, "distinct_generated": distinct,
                        "peak_kv_tokens": int(ids.shape[1]),
                        "split": split, "seconds": 0.0})
    return records


def table(records: list[dict], value: str, *, cols: str = "budget", rows: str = "policy", fmt: str = "{:.2f}",
          reduce: str = "mean") -> str:
    """A markdown table of ``value`` by ``rows`` x ``cols`` (averaged where several records share a cell)."""
    row_keys = list(dict.fromkeys(r[rows] for r in records))
    col_keys = list(dict.fromkeys(r[cols] for r in records))
    cells: dict[tuple, list[float]] = {}
    for r in records:
        cells.setdefault((r[rows], r[cols]), []).append(float(r[value]))
    head = f"| {rows} | " + " | ".join(f"{cols} {c}" if c is not None else "no limit" for c in col_keys) + " |"
    lines = [head, "|" + "---|" * (len(col_keys) + 1)]
    for rk in row_keys:
        vals = []
        for ck in col_keys:
            v = cells.get((rk, ck))
            vals.append(fmt.format(sum(v) / len(v)) if v else "")
        lines.append(f"| {rk} | " + " | ".join(vals) + " |")
    return "\n".join(lines)

