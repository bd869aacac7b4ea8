"""Physical KV-cache eviction with true positions.

Dropping slots from a transformers ``DynamicCache`` is a gather along the sequence axis of
every full-attention layer's keys and values (sliding-window layers keep their own window).
The model must then be told each new token's *true* position (the read and decode loop passes
``position_ids``): by default it counts the cache's length, so rotary embeddings would shift and
the logits go wrong.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .config import MemoryConfig


def cache_layers(cache) -> list:
    layers = getattr(cache, "layers", None)
    if layers is None:
        raise TypeError(f"expected a transformers Cache with .layers, got {type(cache).__name__}")
    return list(layers)


def is_sliding(layer) -> bool:
    """A sliding-window cache layer (Gemma 2/3) holds only its window and bounds itself."""
    return bool(getattr(layer, "is_sliding", False))


def check_evictable(cache) -> None:
    """Eviction and masking act on the full-attention layers, which keep every token; sliding-window
    layers (Gemma 2/3) bound themselves and are left alone. Linear-attention layers hold no
    per-token keys at all, and a model needs at least one full-attention layer."""
    layers = cache_layers(cache)
    for i, layer in enumerate(layers):
        if not hasattr(layer, "keys"):
            raise NotImplementedError(
                f"cache layer {i} is a {type(layer).__name__} (linear attention): it holds no per-token keys to "
                "evict or mask. Use generation_mode='baseline' or 'soft_delete' with this model.")
    if all(is_sliding(layer) for layer in layers):
        raise NotImplementedError("every cache layer is a sliding window: there is no full-attention layer whose "
                                  "tokens memollm could evict or mask. Use generation_mode='baseline'.")


def cached_tokens(cache) -> int:
    """Tokens held by the full-attention layers (a sliding layer's ``get_seq_length`` counts every
    token it has seen, not what it holds)."""
    for i, layer in enumerate(cache_layers(cache)):
        if not is_sliding(layer):
            return int(cache.get_seq_length(i))
    return int(cache.get_seq_length())


def full_attention_layers(model: torch.nn.Module) -> list[int]:
    """Layers whose KV cache keeps every token. Sliding-window layers (Gemma 2/3, Mistral with
    ``sliding_window``) hold only their window, so they cannot carry per-token memory state."""
    from transformers import DynamicCache

    layers = DynamicCache(config=model.config).layers
    return [i for i, layer in enumerate(layers) if not is_sliding(layer)]


def memory_layer_ids(model: torch.nn.Module, config: MemoryConfig) -> list[int]:
    """The layers that keep memory state: the first ``memory_layer_fraction`` of the
    full-attention layers (all layers for most models)."""
    return _memory_layers(model, config, full_attention_layers(model))


def _memory_layers(model: torch.nn.Module, config: MemoryConfig, full: list[int]) -> list[int]:
    if not full:
        raise NotImplementedError(
            f"every layer of {type(model).__name__} uses sliding-window attention; memollm keeps memory "
            "state on full-attention layers only. Use generation_mode='baseline' with this model.")
    return [full[i] for i in config.memory_layers(len(full))]


@dataclass(frozen=True)
class SlotLayout:
    """Where a session keeps its state, worked out once per model, config and mode.

    ``full_layers``: the full-attention layers (eviction and masks act on them);
    ``memory_layers``: the first ``memory_layer_fraction`` of them; ``granularity``: who ranks
    slots (resolved for the mode). A shared ranking keeps state per memory layer in one unit;
    per-layer (per-head) eviction keeps one state row per full-attention layer (and KV head).
    """

    full_layers: tuple[int, ...]
    memory_layers: tuple[int, ...]
    kv_heads: int
    num_layers: int
    granularity: str
    evicting: bool

    @classmethod
    def of(cls, model: torch.nn.Module, config: MemoryConfig, mode: str = "evict") -> "SlotLayout":
        full = full_attention_layers(model)
        granularity = config.granularity_for(mode) if mode in ("evict", "sparse_attention") else "shared"
        memory = _memory_layers(model, config, full) if full or granularity == "shared" else []
        return cls(tuple(full), tuple(memory), kv_heads(model),
                   model.config.get_text_config().num_hidden_layers, granularity, mode == "evict")

    @property
    def sliding(self) -> bool:
        """Some layers attend over a sliding window only (and keep no memory state)."""
        return len(self.full_layers) < self.num_layers

    @property
    def layer_ids(self) -> list[int]:
        """The layers that keep state: the memory layers (shared), else every full-attention layer."""
        return list(self.memory_layers if self.granularity == "shared" else self.full_layers)

    @property
    def heads(self) -> int:
        return self.kv_heads if self.granularity == "head" else 1

    @property
    def units(self) -> int:
        """Slot units per batch row: rows of positions an evicting session tracks (masks never move slots)."""
        return 1 if self.granularity == "shared" or not self.evicting else len(self.full_layers) * self.heads

    @property
    def state_layers(self) -> int:
        """The layer axis of the policies' state: the memory layers, or one over all units."""
        return len(self.layer_ids) if self.units == 1 else 1


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


def _select_slots(t: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    """``t.index_select(-2, idx)`` for ``t`` ``[1, heads, tokens, dim]``, on a 3-D view: the same
    copy, but index_select along the middle axis of a 3-D tensor runs ~4x faster on CPU (torch
    2.13) than along axis -2 of the 4-D tensor, and this runs for every layer at every step."""
    if t.dim() != 4 or t.shape[0] != 1:
        return t.index_select(-2, idx)
    _, heads, tokens, dim = t.shape
    return t.reshape(heads, tokens, dim).index_select(1, idx).view(1, heads, idx.shape[0], dim)


def gather_cache(cache, keep: torch.Tensor) -> None:
    """Keep only slots ``keep`` ``[batch, kept]`` in every full-attention layer, in place
    (sliding-window layers keep their own window)."""
    batch = keep.shape[0]
    for layer in cache_layers(cache):
        if is_sliding(layer) or not getattr(layer, "is_initialized", True) \
                or layer.keys is None or layer.keys.numel() == 0:
            continue
        if batch == 1:
            idx = keep[0]
            layer.keys = _select_slots(layer.keys, idx)
            layer.values = _select_slots(layer.values, idx)
        else:
            k_idx = keep[:, None, :, None].expand(-1, layer.keys.shape[1], -1, layer.keys.shape[-1])
            v_idx = keep[:, None, :, None].expand(-1, layer.values.shape[1], -1, layer.values.shape[-1])
            layer.keys = layer.keys.gather(-2, k_idx)
            layer.values = layer.values.gather(-2, v_idx)


def gather_units(cache, keep: torch.Tensor, layer_ids: list[int], heads: int) -> None:
    """Per-layer (``heads == 1``) or per-KV-head slots: ``keep`` ``[batch * units, kept]``
    holds one row per batch row and unit (batch outer; units are ``layer_ids`` x heads).

    Every layer and head keeps the same number of slots, so each layer's keys and values
    keep one rectangular shape; they are stored after RoPE, so which positions a layer holds
    does not matter to the attention kernel.
    """
    layers = cache_layers(cache)
    batch = keep.shape[0] // (len(layer_ids) * heads)
    rows = keep.view(batch, len(layer_ids), heads, keep.shape[-1])
    for j, idx in enumerate(layer_ids):
        layer = layers[idx]
        if not getattr(layer, "is_initialized", True) or layer.keys is None or layer.keys.numel() == 0:
            continue
        sel = rows[:, j]  # [batch, heads or 1, kept]
        for name in ("keys", "values"):
            t = getattr(layer, name)
            if batch == 1 and heads == 1:  # one row, one set per layer: the fast copy shared eviction uses
                setattr(layer, name, _select_slots(t, sel[0, 0]))
                continue
            index = sel.expand(-1, t.shape[1], -1)[..., None].expand(-1, -1, -1, t.shape[-1])
            setattr(layer, name, t.gather(2, index))


def rotary_embedding(model: torch.nn.Module):
    """The model's (global) rotary embedding module, or None where positions are learned."""
    found = [(name, m) for name, m in model.named_modules() if isinstance(getattr(m, "inv_freq", None), torch.Tensor)]
    for name, m in found:
        if name.endswith("rotary_emb"):
            return m
    return found[0][1] if found else None


def rerotate(keys: torch.Tensor, delta: torch.Tensor, rotary) -> torch.Tensor:
    """Keys ``[B, H, T, D]`` cached after RoPE, turned by ``delta`` ``[B, H or 1, T]`` positions.

    Rotations compose, so a key rotated for position p becomes the key for p + delta. The
    angles come from the model's own rotary module (scaled variants included; its output
    amplitude ``attention_scaling`` is divided out), the turn is done in float32 and the
    half-split convention of Llama/Qwen/Mistral/Phi-3/GPT-NeoX is used on the first
    ``rotary_dim`` channels (partial rotary keeps the rest).
    """
    b, h, t, _ = keys.shape
    dh = delta.shape[1]
    probe = torch.zeros(1, dtype=torch.float32, device=keys.device)
    cos, sin = rotary(probe, delta.reshape(b * dh, t).to(keys.device))
    scale = float(getattr(rotary, "attention_scaling", 1.0) or 1.0)
    cos = (cos.float() / scale).view(b, dh, t, -1)
    sin = (sin.float() / scale).view(b, dh, t, -1)
    rd = cos.shape[-1]
    k = keys.float()
    turned, rest = k[..., :rd], k[..., rd:]
    half = torch.cat((-turned[..., rd // 2:], turned[..., : rd // 2]), dim=-1)
    return torch.cat([turned * cos + half * sin, rest], dim=-1).to(keys.dtype)


def rerotate_cache(cache, delta: torch.Tensor, layer_ids: list[int], heads: int, *, shared: bool, rotary) -> None:
    """Turn the keys of layers ``layer_ids`` by ``delta`` positions: ``[batch, T]`` for every
    layer (``shared``), else ``[batch * units, T]`` with one row per batch row, layer and head
    (batch outer, as in ``gather_units``)."""
    layers = cache_layers(cache)
    for j, idx in enumerate(layer_ids):
        layer = layers[idx]
        if getattr(layer, "keys", None) is None or layer.keys.numel() == 0:
            continue
        if shared:
            rows = delta[:, None]  # [batch, 1, T]
        else:
            rows = delta.view(-1, len(layer_ids), heads, delta.shape[-1])[:, j]  # [batch, heads or 1, T]
        layer.keys = rerotate(layer.keys, rows, rotary)


def kv_heads(model: torch.nn.Module) -> int:
    """Key/value heads per layer (grouped query attention), from the model's config."""
    cfg = model.config.get_text_config()
    for name in ("num_key_value_heads", "num_attention_heads", "n_head"):
        value = getattr(cfg, name, None)
        if isinstance(value, int):
            return value
    raise NotImplementedError(f"{type(model).__name__}: cannot tell the number of key/value heads from its config")
