"""A registered attention function: sdpa, plus what a memory session asks of each layer.

transformers dispatches attention by name through ``AttentionInterface``. memollm
registers ``"memollm_sdpa"``, which calls the stock sdpa kernel for the output and, when
a session is attached to the module, (a) masks forgotten keys, (b) soft-weights fading
keys, and (c) recomputes the newest query's softmax row to learn how much attention each
cached token received. Eager attention is never needed. ``attached`` switches a model to
this function and back, hooks included, and always restores it in ``finally``.
"""

from __future__ import annotations

import threading
import weakref
from contextlib import contextmanager
from typing import Iterator

import torch
from transformers import AttentionInterface
from transformers.integrations.sdpa_attention import sdpa_attention_forward
from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

ATTN_NAME = "memollm_sdpa"
_SESSION_ATTR = "_memollm_session"
_register_lock = threading.Lock()
_MODEL_LOCKS: "weakref.WeakKeyDictionary[torch.nn.Module, threading.RLock]" = weakref.WeakKeyDictionary()
_MODEL_LOCKS_GUARD = threading.Lock()


def model_lock(model: torch.nn.Module) -> threading.RLock:
    """The lock serialising generation on ``model``: one per model object, since a session
    changes the model itself (its attention function and hooks)."""
    with _MODEL_LOCKS_GUARD:
        lock = _MODEL_LOCKS.get(model)
        if lock is None:
            lock = _MODEL_LOCKS[model] = threading.RLock()
        return lock


@contextmanager
def exclusive(model: torch.nn.Module) -> Iterator[None]:
    """Hold ``model``'s lock; fail clearly on re-entry from the same thread.

    Another thread waits its turn. The same thread arriving here while a session is
    attached is a call from inside a running generation (a streamer or stopping
    criterion calling ``generate`` again), which would run through the first session's hooks.
    """
    with model_lock(model):
        if is_attached(model):
            raise RuntimeError(
                "memollm: generate was called on this model from inside a running generation (a streamer or "
                "stopping criterion?); one model runs one generation at a time. Use a second model object.")
        yield


def memollm_attention(module, query, key, value, attention_mask, **kwargs):
    session = getattr(module, _SESSION_ATTR, None)
    if session is None:
        return sdpa_attention_forward(module, query, key, value, attention_mask, **kwargs)
    return session.attend(module, query, key, value, attention_mask, **kwargs)


def _register() -> None:
    with _register_lock:
        if ATTN_NAME not in AttentionInterface._global_mapping:
            AttentionInterface.register(ATTN_NAME, memollm_attention)
            AttentionMaskInterface.register(ATTN_NAME, sdpa_mask)


def attention_modules(model: torch.nn.Module) -> dict[int, torch.nn.Module]:
    """The self-attention module of every decoder layer, by ``layer_idx``."""
    found: dict[int, torch.nn.Module] = {}
    for name, module in model.named_modules():
        idx = getattr(module, "layer_idx", None)
        if isinstance(idx, int) and type(module).__name__.endswith("Attention") and "cross" not in name:
            found.setdefault(idx, module)
    return found


def is_attached(model: torch.nn.Module) -> bool:
    """True while a session is attached: `exclusive` refuses a second generation then, and tests
    check that nothing is left behind."""
    return any(hasattr(m, _SESSION_ATTR) for m in model.modules()) or bool(
        getattr(model, "_memollm_attached", False))


@contextmanager
def attached(model: torch.nn.Module, session) -> Iterator[None]:
    """Attach ``session`` to ``model`` for the duration of a ``with`` block.

    Holds the model's lock (``exclusive``) for the whole block, registers the attention
    function on every attention module and the session's forward pre/post hooks on the
    model; everything is removed in ``finally``, also on errors and ``KeyboardInterrupt``.
    ``session=None`` (``baseline``) only holds the lock.
    """
    with exclusive(model):
        if session is None:
            yield
            return
        with _attached(model, session):
            yield


@contextmanager
def _attached(model: torch.nn.Module, session) -> Iterator[None]:
    _register()
    previous = model.config._attn_implementation
    modules = attention_modules(model)
    if not modules:
        raise NotImplementedError(
            f"{type(model).__name__}: no attention modules with a layer_idx were found; memollm needs the "
            "transformers AttentionInterface (sdpa) code path"
        )
    handles = []
    try:
        model._memollm_attached = True
        model.set_attn_implementation(ATTN_NAME)
        if model.config._attn_implementation != ATTN_NAME:
            raise NotImplementedError(
                f"{type(model).__name__} cannot switch its attention implementation dynamically, which memollm needs"
            )
        for module in modules.values():
            setattr(module, _SESSION_ATTR, session)
        handles.append(model.register_forward_pre_hook(session.pre_forward, with_kwargs=True))
        handles.append(model.register_forward_hook(session.post_forward, with_kwargs=True))
        if getattr(session, "reads_inputs", False):  # a learned strength reads each token's attention input
            handles += [m.register_forward_pre_hook(session.attention_input, with_kwargs=True) for m in modules.values()]
        yield
    finally:
        for handle in handles:
            handle.remove()
        for module in modules.values():
            if hasattr(module, _SESSION_ATTR):
                delattr(module, _SESSION_ATTR)
        if model.config._attn_implementation != previous:
            model.set_attn_implementation(previous)
        if hasattr(model, "_memollm_attached"):
            del model._memollm_attached


def combine_mask(mask: torch.Tensor | None, allowed: torch.Tensor, q_len: int, kv_len: int,
                 dtype: torch.dtype) -> torch.Tensor:
    """Add ``allowed`` ``[batch, kv]`` (False = hide the key) to an sdpa mask, keeping causality."""
    allow = allowed[:, None, None, :]
    if mask is None:
        if q_len == 1:
            return allow
        q_pos = torch.arange(q_len, device=allowed.device)[:, None] + (kv_len - q_len)
        causal = torch.arange(kv_len, device=allowed.device)[None, :] <= q_pos
        return causal[None, None] & allow
    if mask.dtype == torch.bool:
        return mask & allow
    return mask.masked_fill(~allow, torch.finfo(dtype).min)


def add_logit_bias(mask: torch.Tensor | None, bias: torch.Tensor, q_len: int, kv_len: int,
                   dtype: torch.dtype) -> torch.Tensor:
    """Turn ``mask`` into a float mask and add ``bias`` ``[batch, kv]`` to every query row."""
    low = torch.finfo(dtype).min
    if mask is None:
        mask = combine_mask(None, torch.ones_like(bias, dtype=torch.bool), q_len, kv_len, dtype)
    if mask.dtype == torch.bool:
        mask = torch.zeros(mask.shape, dtype=dtype, device=mask.device).masked_fill(~mask, low)
    return (mask + bias.clamp(min=low / 2)[:, None, None, :].to(dtype)).clamp(min=low)


def received_attention(query: torch.Tensor, key: torch.Tensor, mask: torch.Tensor | None,
                       scaling: float | None, *, window: int = 1, per_kv_head: bool = False) -> torch.Tensor:
    """Attention each key gets from the newest ``window`` queries, ``[batch, kv]``
    (``[batch, kv_heads, kv]`` with ``per_kv_head``).

    Softmax over keys per query head and query (causal: a query never sees later keys,
    also when the kernel got no explicit mask); mean over the queries of the window and
    over the query heads of each KV group (grouped query attention), then over the groups
    unless ``per_kv_head``. Computed in float32.
    """
    batch, q_heads, q_len, dim = query.shape
    kv_heads, kv_len = key.shape[1], key.shape[-2]
    w = max(1, min(int(window), q_len))
    groups = q_heads // kv_heads
    # the query heads of a KV group share its keys: one plain matmul per KV head (broadcasting the
    # keys over the groups instead made torch copy them, ~5x slower per decode step on CPU)
    q = query[:, :, q_len - w:, :].reshape(batch, kv_heads, groups * w, dim).float()
    scale = scaling if scaling is not None else dim ** -0.5
    logits = (torch.matmul(q, key.float().transpose(-1, -2)) * scale).view(batch, kv_heads, groups, w, kv_len)
    if mask is not None:
        rows = mask[:, :, mask.shape[-2] - w:, :][:, :, None]  # [B or 1, 1, 1, w, kv]
        logits = logits.masked_fill(~rows, float("-inf")) if rows.dtype == torch.bool else logits + rows.float()
    elif w > 1:  # the kernel ran causally without a mask: apply causality to the window's rows
        q_pos = torch.arange(kv_len - w, kv_len, device=key.device)[:, None]
        future = torch.arange(kv_len, device=key.device)[None, :] > q_pos  # [w, kv]
        logits = logits.masked_fill(future, float("-inf"))
    att = torch.softmax(logits, dim=-1).mean(dim=(2, 3))  # [B, kv_heads, kv]
    return att if per_kv_head else att.mean(dim=1)


def pool_neighbours(scores: torch.Tensor, size: int) -> torch.Tensor:
    """Max over ``size`` neighbouring positions (last axis), so every token of a fact that
    the question looks at scores like its best token (SnapKV's pooling)."""
    if size <= 1:
        return scores
    flat = scores.reshape(-1, 1, scores.shape[-1])
    pooled = torch.nn.functional.max_pool1d(flat, size, stride=1, padding=size // 2)
    return pooled.reshape(scores.shape)
