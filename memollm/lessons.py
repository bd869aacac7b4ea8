"""Loops written out by hand for the lessons: greedy decoding with a schedule of evictions,
and a trace of the KV cache's size after every forward pass.

The library itself reads and decodes through :mod:`memollm.reading`; these two open the box
so a notebook can drop positions at chosen steps, feed wrong positions on purpose, or watch
the cache grow and stop growing.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator, Mapping, Sequence

import torch

from .cache import cached_tokens, check_evictable, gather_cache, kv_cache_bytes
from .config import check_int
from .reading import decode


@contextmanager
def kv_trace(model: torch.nn.Module) -> Iterator[dict[str, list[int]]]:
    """Record the KV cache after every forward step of ``model`` inside a ``with`` block.

    Yields ``{"kv_cache_bytes": [...], "kv_cache_tokens": [...]}``, one entry per forward
    (the prefill first). A forward hook reads the cache passed as ``cache=``; it is removed
    in ``finally``. Enter it *before* ``generate`` so it runs ahead of a session's hooks.
    """
    trace: dict[str, list[int]] = {"kv_cache_bytes": [], "kv_cache_tokens": []}

    def record(module, args, kwargs, output):
        cache = kwargs.get("cache", kwargs.get("past_key_values"))
        if cache is not None:
            trace["kv_cache_bytes"].append(kv_cache_bytes(cache))
            trace["kv_cache_tokens"].append(cached_tokens(cache))
        return output

    handle = model.register_forward_hook(record, with_kwargs=True)
    try:
        yield trace
    finally:
        handle.remove()


@torch.no_grad()
def decode_loop(
    model: torch.nn.Module,
    input_ids: torch.Tensor,
    max_new_tokens: int,
    *,
    drop: Mapping[int, Sequence[int]] | None = None,
    true_positions: bool = True,
    forced_tokens: Sequence[int] | None = None,
) -> dict:
    """Greedy decoding written out by hand over a ``DynamicCache``, for lessons and tests.

    ``drop`` maps a forward step (1 = the first decode step, as in a result's
    ``forget_events`` and ``evict_events``) to the true positions removed from every
    layer's cache before that step. ``true_positions=False`` passes no ``position_ids``, so
    the model numbers the new token by the cache length: the mistake eviction must avoid.
    ``forced_tokens`` feeds those tokens (e.g. another run's ``token_ids``) instead of the
    argmax (teacher forcing), so two runs' logits compare step by step. Returns
    ``token_ids`` (the argmax of every step), ``logits`` ``[steps, vocab]`` (float32, CPU),
    ``kv_cache_bytes`` / ``kv_cache_tokens`` after every step and the final ``positions``.
    """
    from transformers import DynamicCache

    if input_ids.dim() != 2 or input_ids.shape[0] != 1:
        raise ValueError(f"decode_loop takes one sequence, input_ids of shape [1, n]; got {tuple(input_ids.shape)}")
    check_int("max_new_tokens", max_new_tokens, 1)
    if forced_tokens is not None and len(forced_tokens) < max_new_tokens - 1:
        raise ValueError(f"forced_tokens needs at least {max_new_tokens - 1} tokens, got {len(forced_tokens)}")
    drop = dict(drop or {})
    device, prompt = input_ids.device, input_ids.shape[1]
    cache = DynamicCache(config=model.config)
    check_evictable(cache)
    positions = list(range(prompt))
    trace: dict[str, list[int]] = {"kv_cache_bytes": [], "kv_cache_tokens": []}

    def record() -> None:
        trace["kv_cache_bytes"].append(kv_cache_bytes(cache))
        trace["kv_cache_tokens"].append(cached_tokens(cache))

    def step(nxt: torch.Tensor) -> torch.Tensor:
        i = steps[0]  # decode steps done so far
        gone = set(drop.get(i + 1, ()))
        if gone:
            keep = [j for j, p in enumerate(positions) if p not in gone]
            gather_cache(cache, torch.tensor([keep], device=device))
            positions[:] = [positions[j] for j in keep]
        kwargs = {"position_ids": torch.tensor([[prompt + i]], device=device)} if true_positions else {}
        fed = nxt if forced_tokens is None else torch.tensor([[int(forced_tokens[i])]], device=device)
        out = model(fed, cache=cache, use_cache=True, **kwargs)
        positions.append(prompt + i)
        steps[0] += 1
        record()
        return out.logits

    steps = [0]
    first = model(input_ids, cache=cache, use_cache=True).logits[:, -1]
    record()
    out = decode(step, first, max_new_tokens, keep_logits=True)
    return {"token_ids": out.row(), "logits": torch.cat(out.logits), "positions": positions, **trace}


__all__ = ["decode_loop", "kv_trace"]
