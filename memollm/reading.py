"""Reading token ids into a KV cache and decoding from it: the package's one read loop and
one decode loop.

``generate``, chats, the evaluations and the lessons all read through :func:`read` and decode
through :func:`decode`, so the room rule, the sampling keywords, the logits processors and
the stop rules are written once. The model call is the caller's ``step``: it
knows its cache, the positions it passes and the session attached to the model, so this
module needs nothing but the config.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Collection, Sequence

import torch
from transformers import (LogitsProcessorList, RepetitionPenaltyLogitsProcessor, TemperatureLogitsWarper,
                          TopKLogitsWarper, TopPLogitsWarper)

from .config import MemoryConfig, check_bool, check_int, check_number

Step = Callable[[torch.Tensor], torch.Tensor]
"""Token ids ``[rows, n]`` read into the cache -> their logits ``[rows, n, vocab]``."""


def room(config: MemoryConfig, cached: int) -> int:
    """How many new tokens one forward pass may read into a cache holding ``cached`` tokens of an
    evicting session: what is left of the budget, or at least what eviction can free (all but
    the sinks and the recent window), and never less than one."""
    return max(config.memory_budget - cached, config.memory_budget - config.sink_tokens - config.recent_window, 1)


def keep_before(config: MemoryConfig, new: int) -> int:
    """Slots an evicting session keeps before reading ``new`` tokens: room for them in the
    budget, but never fewer than the sinks and the recent window."""
    return max(config.memory_budget - new, config.sink_tokens + config.recent_window)


def read(step: Step, ids: torch.Tensor, *, chunk: int | None = None, limit: Callable[[], int] | None = None,
         each: Callable[[int, torch.Tensor], None] | None = None) -> torch.Tensor | None:
    """Read ``ids`` ``[rows, n]`` with ``step``, at most ``chunk`` tokens a pass and at most
    ``limit()`` (e.g. :func:`room`, asked before every pass); ``each(offset, logits)`` sees every
    pass's logits. Returns the logits of the last token ``[rows, vocab]`` (None for no ids)."""
    last, done, n = None, 0, ids.shape[1]
    while done < n:
        size = n - done if chunk is None else min(n - done, chunk)
        if limit is not None:
            size = min(size, max(1, limit()))
        logits = step(ids[:, done:done + size])
        if each is not None:
            each(done, logits)
        last = logits[:, -1]
        done += size
    return last


def check_sampling(temperature: Any = None, top_p: Any = None, top_k: Any = None, do_sample: Any = None,
                   repetition_penalty: Any = None) -> bool:
    """Validate the sampling keywords; returns ``do_sample`` (True when ``temperature``,
    ``top_p`` or ``top_k`` is given and ``do_sample`` is not, else greedy)."""
    for name, value, high in (("temperature", temperature, None), ("top_p", top_p, 1.0),
                              ("repetition_penalty", repetition_penalty, None)):
        if value is not None:
            check_number(name, value, low=0.0, low_open=True, high=high)
    if top_k is not None:
        check_int("top_k", top_k, 1)
    if do_sample is not None:
        return check_bool("do_sample", do_sample)
    return any(v is not None for v in (temperature, top_p, top_k))


def sampling_processors(temperature=None, top_p=None, top_k=None, do_sample=None, repetition_penalty=None):
    """``(do_sample, LogitsProcessorList)`` from the usual sampling keywords, validated, as
    ``model.generate`` would apply them."""
    do_sample = check_sampling(temperature, top_p, top_k, do_sample, repetition_penalty)
    procs = LogitsProcessorList()
    if repetition_penalty is not None and repetition_penalty != 1.0:
        procs.append(RepetitionPenaltyLogitsProcessor(repetition_penalty))
    if do_sample:
        if temperature is not None and temperature != 1.0:
            procs.append(TemperatureLogitsWarper(temperature))
        if top_k is not None:
            procs.append(TopKLogitsWarper(top_k))
        if top_p is not None and top_p < 1.0:
            procs.append(TopPLogitsWarper(top_p))
    return do_sample, procs


@dataclass
class Decoded:
    """What :func:`decode` produced: ``tokens`` ``[rows, n]``, whether it ended at a stop token
    (``stopped``, the token included), and each step's raw logits when asked for."""

    tokens: torch.Tensor
    stopped: bool = False
    logits: list[torch.Tensor] | None = None

    def row(self, r: int = 0) -> list[int]:
        return self.tokens[r].tolist()


@torch.no_grad()
def decode(step: Step, first_logits: torch.Tensor, max_new_tokens: int, *,
           processors: LogitsProcessorList | None = None, context: torch.Tensor | None = None,
           do_sample: bool = False, generator: torch.Generator | None = None,
           stop_ids: Collection[int] = (), stop_strings: Sequence[str] = (),
           detokenize: Callable[[list[int]], str] | None = None, keep_logits: bool = False,
           on_token: Callable[[torch.Tensor, torch.Tensor], bool] | None = None) -> Decoded:
    """Up to ``max_new_tokens`` tokens per row after ``first_logits`` ``[rows, vocab]``; every
    token but the last is fed back with ``step``.

    ``processors`` see ``context`` (e.g. the prompt, ``[rows, k]``) followed by the tokens
    generated so far. Sampling draws from ``generator``. ``stop_ids`` and ``stop_strings``
    (checked on ``detokenize(tokens)``) end a single row early; the stopping token is kept.
    ``on_token(ids, scores)`` sees the context and every token so far after each new one (a
    streamer, a stopping criterion, a progress bar); returning True stops there.
    """
    rows = first_logits.shape[0]
    if (stop_ids or stop_strings) and rows != 1:
        raise ValueError(f"stop tokens and strings end one row; got {rows} rows")
    generated = torch.zeros(rows, 0, dtype=torch.long, device=first_logits.device)
    seen = generated if context is None else context.to(first_logits.device)
    logits, kept, stopped = first_logits, ([] if keep_logits else None), False
    for i in range(max_new_tokens):
        scores = logits.float()
        if kept is not None:
            kept.append(scores.cpu())
        if processors:
            scores = processors(torch.cat([seen, generated], dim=-1), scores)
        if do_sample:
            nxt = torch.multinomial(torch.softmax(scores, dim=-1), 1, generator=generator)
        else:
            nxt = scores.argmax(-1, keepdim=True)
        generated = torch.cat([generated, nxt], dim=-1)
        halt = on_token is not None and on_token(torch.cat([seen, generated], dim=-1), scores)
        if stop_ids and int(nxt[0, 0]) in stop_ids:
            stopped = True
            break
        if halt:
            break
        if stop_strings and any(s in detokenize(generated[0].tolist()) for s in stop_strings):
            break
        if i < max_new_tokens - 1:
            logits = step(nxt)[:, -1]
    return Decoded(generated, stopped, kept)


__all__ = ["Decoded", "Step", "check_sampling", "decode", "keep_before", "read", "room", "sampling_processors"]
