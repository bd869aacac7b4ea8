"""Physical KV-cache eviction with true positions.

Dropping slots from a transformers ``DynamicCache`` is a gather along the sequence axis of
every layer's keys and values. The model must then be told each new token's *true*
position (``model.generate`` tracks ``position_ids`` itself), otherwise rotary embeddings
shift and the logits go wrong.
"""

from __future__ import annotations

import torch


def cache_layers(cache) -> list:
    layers = getattr(cache, "layers", None)
    if layers is None:
        raise TypeError(f"expected a transformers Cache with .layers, got {type(cache).__name__}")
    return list(layers)


def check_evictable(cache) -> None:
    """Eviction needs one full-attention cache per layer, all holding the same slots."""
    for i, layer in enumerate(cache_layers(cache)):
        if getattr(layer, "is_sliding", False) or not hasattr(layer, "keys"):
            raise NotImplementedError(
                f"cache layer {i} is a {type(layer).__name__} (sliding window or linear attention): memollm "
                "tracks one set of cached tokens shared by all layers, which such layers do not have. "
                "Use generation_mode='baseline' or 'soft_delete' with this model."
            )


def kv_cache_bytes(cache) -> int:
    """Bytes held by all keys and values of a cache (0 for no cache)."""
    if cache is None:
        return 0
    total = 0
    for layer in cache_layers(cache):
        for t in (getattr(layer, "keys", None), getattr(layer, "values", None)):
            if isinstance(t, torch.Tensor):
                total += t.numel() * t.element_size()
    return total


def select_keep(
    scores: torch.Tensor,
    positions: torch.Tensor,
    n_keep: int,
    *,
    sink_tokens: int,
    recent_window: int,
) -> tuple[torch.Tensor, bool]:
    """Slots to keep, ``[batch, n_keep]`` in ascending order (so positions stay increasing).

    Sinks (true position < ``sink_tokens``) and the newest ``recent_window`` slots always
    survive; the others compete on ``scores`` (higher wins). Non-finite scores cannot rank
    anything, so they fall back to recency and the second return value says so.
    """
    batch, total = scores.shape
    if n_keep >= total:
        return torch.arange(total, device=scores.device).expand(batch, total), False
    fallback = not bool(torch.isfinite(scores).all())
    ranked = positions.float() if fallback else scores.float()
    slot = torch.arange(total, device=scores.device)
    protected = (positions < sink_tokens) | (slot >= total - recent_window)
    ranked = torch.where(protected, torch.full_like(ranked, float("inf")), ranked)
    keep = torch.topk(ranked, n_keep, dim=-1, sorted=False).indices
    return keep.sort(dim=-1).values, fallback


def gather_cache(cache, keep: torch.Tensor) -> None:
    """Keep only slots ``keep`` ``[batch, kept]`` in every layer, in place."""
    batch = keep.shape[0]
    for layer in cache_layers(cache):
        if not getattr(layer, "is_initialized", True) or layer.keys is None or layer.keys.numel() == 0:
            continue
        if batch == 1:
            idx = keep[0]
            layer.keys = layer.keys.index_select(-2, idx)
            layer.values = layer.values.index_select(-2, idx)
        else:
            k_idx = keep[:, None, :, None].expand(-1, layer.keys.shape[1], -1, layer.keys.shape[-1])
            v_idx = keep[:, None, :, None].expand(-1, layer.values.shape[1], -1, layer.values.shape[-1])
            layer.keys = layer.keys.gather(-2, k_idx)
            layer.values = layer.values.gather(-2, v_idx)
