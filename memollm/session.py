"""One generation's memory bookkeeping, driven by forward hooks on the model.

A ``MemorySession`` holds one generation (a ``generate`` call, or a whole chat), so separate
generations never share state; it is attached with ``memollm.attention.attached``. Around
every forward pass it:

* before the pass (``pre_forward``): evicts down to the budget (``evict``), decides which
  keys to hide (``sparse_attention``) or how much to weight them (``soft_delete``), and
  supplies the ``position_ids`` (true positions, or ranks in the cache with ``positions="cache"``);
* inside each attention layer (``attend``): applies those decisions and measures the
  attention each cached token received from the newest query (from the last
  ``observation_window`` queries of a prompt);
* after the pass (``post_forward``): appends the new tokens to the memory state, reviews the
  attended ones and compresses a prompt longer than the budget.

Eviction granularity: with ``granularity="layer"`` (``"head"``) every full-attention layer
(KV head) keeps its own slots. The session then tracks one row of positions per batch row
and unit (batch outer), and hands the policies those rows as if they were batch rows, so a
policy never needs to know the granularity. What the session holds and reports (the result
dict, what each layer holds) is read by ``memollm.views.SessionViews``.
"""

from __future__ import annotations

import logging

import torch
from transformers.integrations.sdpa_attention import sdpa_attention_forward

from .attention import add_logit_bias, combine_mask, pool_neighbours, received_attention
from .cache import (SlotLayout, cached_tokens, check_evictable, gather_cache, gather_units, rerotate_cache,
                    rotary_embedding, select_keep)
from .config import MODES, ConfigError, MemoryConfig
from .memory import EbbinghausMemory
from .policies import Policy, make_policy
from .reading import keep_before
from .strength import find_gate
from .views import DropLog, SessionViews, generation_result

log = logging.getLogger(__name__)

__all__ = ["MemorySession", "generation_result"]


class MemorySession(SessionViews):
    """Per-call state for one of the modes ``soft_delete``, ``sparse_attention``, ``evict``."""

    def __init__(self, model: torch.nn.Module, mode: str, config: MemoryConfig, *, seed: int = 0,
                 record: bool = False, policy: Policy | None = None,
                 layout: SlotLayout | None = None) -> None:
        """``policy``: an already built eviction policy (e.g. ``memollm.policies.PolicyRows``,
        one policy per batch row); by default ``config.policy`` is built. ``layout``: the slot
        layout for ``model``, ``config`` and ``mode``, if already worked out."""
        if mode not in MODES or mode == "baseline":
            raise ValueError(f"a MemorySession needs one of {MODES[1:]}, got {mode!r}")
        if policy is not None and mode != "evict":
            raise ValueError("a policy object only applies to generation_mode='evict'")
        config.check_mode(mode)
        self.mode, self.config, self.record = mode, config, record
        device = next(model.parameters()).device
        self._adopt_layout(layout or SlotLayout.of(model, config, mode))
        self.rotary = self._position_scheme(model)
        self.rope_positions: torch.Tensor | None = None  # [rows, tokens] position each key is rotated for
        n = self.layout.state_layers
        self.policy = policy if policy is not None else (
            make_policy(config.policy, config, n, seed=seed, device=device) if mode == "evict" else None)
        # soft_delete and sparse_attention own a memory (no traces: nothing ranks by them); in evict the
        # policy owns its state, and a policy whose state is the forgetting curve exposes it as ``.memory``
        self.own_memory = EbbinghausMemory(n, config, device=device) if self.policy is None else None
        self.memory: EbbinghausMemory | None = (
            self.own_memory if self.own_memory is not None else getattr(self.policy, "memory", None))
        # a learned strength: the gate reads every new token's attention input (``attention_input``)
        self.gate = find_gate(model, config.strength_gate) if getattr(self.policy, "needs_strength", False) else None
        self._strengths: list[torch.Tensor | None] = []  # this pass's learned log S per layer, [batch, heads, q]
        self.scoring = record or (self.memory is not None and self.memory.config.review != "none") or (
            self.policy is not None and self.policy.needs_attention)
        self.cache = None
        self.positions = torch.zeros(1, 0, dtype=torch.long, device=device)  # [rows, tokens] true positions
        self.attention_total: torch.Tensor | None = None  # [layers, rows, tokens] when recording
        self.steps = 0  # forward passes done (a prompt read in one pass is pass 0)
        self.evicted = 0
        self.peak_cached = 0
        self.forget_events: dict = {}  # sparse: pass -> positions newly masked (by layer with layer masks)
        self.evict_events: dict[int, list[int]] = {}  # evict, one shared ranking: pass -> positions dropped before it
        self.drop_log = DropLog(self.unit_names()) if self.units > 1 else None  # the same per layer or head
        self.warnings: list[str] = []
        self._masked = None  # [batch, tokens] bool, sparse mode ([layers, batch, tokens] with layer masks)
        self._weights = None  # [layers, batch, tokens], soft_delete mode
        self._keep = None  # [batch, tokens] bool passed to attention (sparse)
        self._allowed_full = None  # _keep plus the pass's new tokens, built once per pass
        self._weights_full = None  # _weights plus the new tokens (log-weights for "logits"), once per pass
        self._received: list[torch.Tensor | None] = []
        self._new_positions = None

    def _adopt_layout(self, layout: SlotLayout) -> None:
        """Who ranks slots: one set for all layers, or every full-attention layer or KV head."""
        self.layout, self.granularity = layout, layout.granularity
        if self.mode == "sparse_attention" and self.granularity == "head":
            raise ConfigError("sparse_attention masks per layer at most (granularity 'shared' or 'layer'): a mask per "
                              "KV head is not built")
        # sparse attention per layer: every full-attention layer masks the tokens it forgot itself
        self.layer_masks = self.mode == "sparse_attention" and self.granularity == "layer"
        # eviction and masks act on the full-attention layers; sliding-window layers keep their window
        self.full_layers = list(layout.full_layers)
        self.full_set = set(self.full_layers)
        self.sliding = layout.sliding
        self.layer_ids = layout.layer_ids  # a shared ranking: the memory layers; else every full-attention layer
        self.layer_slot = {layer: i for i, layer in enumerate(self.layer_ids)}
        self.heads = layout.heads
        self.units = layout.units  # rows of ``positions`` per batch row (batch outer, unit inner)

    def _position_scheme(self, model: torch.nn.Module):
        """The rotary embedding that re-rotates cached keys with ``positions="cache"``, else None."""
        if self.mode != "evict" or self.config.positions != "cache":
            return None
        if self.sliding:
            raise ConfigError(f"positions='cache' is not supported on {type(model).__name__}: its sliding-window "
                              "layers hold keys at their true positions, which cache ranks would contradict; "
                              "use positions='true'")
        rotary = rotary_embedding(model)
        if rotary is None:
            raise ConfigError(f"positions='cache' re-rotates cached keys, which needs rotary position embeddings; "
                              f"{type(model).__name__} learns absolute positions: use positions='true'")
        return rotary

    # -- helpers -------------------------------------------------------------------------
    @property
    def num_cached(self) -> int:
        return self.positions.shape[-1]

    def _warn(self, message: str) -> None:
        if message not in self.warnings:
            self.warnings.append(message)
            log.warning("memollm: %s", message)

    def _evict_to(self, n_keep: int, step: int) -> None:
        """Drop slots down to ``n_keep``; ``step`` is the first forward step that no longer sees them."""
        scores = self.policy.checked_scores(self.positions)
        keep, fallback = select_keep(scores, self.positions, n_keep, sink_tokens=self.config.sink_tokens,
                                     recent_window=self.config.recent_window)
        if fallback:
            self._warn("non-finite eviction scores (overflow?): fell back to recency for this step")
        if keep.shape[-1] == self.num_cached:
            return
        self.evicted += self.num_cached - keep.shape[-1]
        self._record_drops(keep, step)
        if self.units == 1:
            gather_cache(self.cache, keep)
        else:
            gather_units(self.cache, keep, self.layer_ids, self.heads)
        self.positions = self.positions.gather(-1, keep)
        if self.rotary is not None:  # StreamingLLM: every kept key moves to its rank in the cache
            kept = self.rope_positions.gather(-1, keep)
            ranks = torch.arange(kept.shape[-1], device=kept.device).expand_as(kept)
            delta = ranks - kept
            if bool(delta.any()):
                layers = self.layer_ids if self.units > 1 else self.full_layers
                rerotate_cache(self.cache, delta, layers, self.heads, shared=self.units == 1, rotary=self.rotary)
            self.rope_positions = ranks.clone()
        self.policy.keep(keep)
        if self.attention_total is not None:
            self.attention_total = self.attention_total.gather(-1, keep.unsqueeze(0).expand(
                self.attention_total.shape[0], -1, -1))

    def _record_masks(self, new: torch.Tensor) -> None:
        """Positions newly masked in batch row 0: a list, or a dict by layer with layer masks."""
        if not self.layer_masks:
            self.forget_events[self.steps] = self.positions[0][new[0]].tolist()
            return
        self.forget_events[self.steps] = {f"layer_{l}": self.positions[0][row[0]].tolist()
                                          for l, row in zip(self.layer_ids, new) if bool(row[0].any())}

    def _record_drops(self, keep: torch.Tensor, step: int) -> None:
        """Positions dropped in batch row 0: a list (shared), else a dict by layer (and head)."""
        rows = self.positions[: self.units]
        dropped = torch.ones_like(rows, dtype=torch.bool)
        dropped.scatter_(-1, keep[: self.units], False)
        if self.units == 1:
            self.evict_events.setdefault(step, []).extend(rows[0][dropped[0]].tolist())
            return
        self.drop_log.add(step, dropped.sum(-1).tolist(), rows[dropped].tolist())  # two host copies a step


    # -- forward hooks -------------------------------------------------------------------
    def pre_forward(self, module, args, kwargs):
        ids = kwargs.get("input_ids", args[0] if args else None)
        if ids is None:
            ids = kwargs["inputs_embeds"]
        batch, q_len = ids.shape[0], ids.shape[1]
        self._check_cache(kwargs.get("cache", kwargs.get("past_key_values")))
        positions = kwargs.get("position_ids")
        if positions is None or self.rotary is not None:  # it knows the true positions
            start = int(self.positions[:, -1].max()) + 1 if self.num_cached else 0
            positions = torch.arange(start, start + q_len, device=ids.device).expand(batch, q_len)
            kwargs["position_ids"] = positions
        self._new_positions = positions.reshape(batch, q_len).to(self.positions.device)
        if self.mode == "evict" and self.policy.evicts and self.num_cached and \
                self.num_cached + q_len > self.config.memory_budget:
            self._evict_to(keep_before(self.config, q_len), self.steps)
        if self.rotary is not None:  # new tokens continue after the cache, whatever their true position
            kwargs["position_ids"] = torch.arange(self.num_cached, self.num_cached + q_len,
                                                  device=ids.device).expand(batch, q_len)
        self._keep = self._weights = self._allowed_full = self._weights_full = None
        if self.mode == "sparse_attention" and self.num_cached:
            self._update_masks()
        elif self.mode == "soft_delete" and self.num_cached and self.config.soft_delete_floor < 1.0:
            self._weights = self.memory.soft_weights()
        self._received = [None] * len(self.layer_ids)
        self._strengths = [None] * len(self.layer_ids)
        return args, kwargs

    @property
    def reads_inputs(self) -> bool:
        """Whether ``attached`` must hook the attention inputs: only for a learned strength."""
        return self.gate is not None

    def attention_input(self, module, args, kwargs):
        """Forward pre-hook on an attention module: the gate reads the new tokens' attention input at
        once (holding a long prompt's inputs for every layer until the pass ends would cost ~0.5 GB)."""
        slot = self.layer_slot.get(module.layer_idx)
        if slot is not None:
            self._strengths[slot] = self.gate.read_input(module, args, kwargs)
        return None

    def _check_cache(self, cache) -> None:
        """The first step adopts the model's cache; later steps must pass the same one, as long as tracked."""
        if cache is None:
            raise RuntimeError("memollm needs the KV cache: call the model with use_cache=True")
        if self.cache is None:
            if self.mode != "soft_delete":
                check_evictable(cache)
            self.cache = cache
        elif cache is not self.cache:
            raise RuntimeError("memollm: a new cache appeared mid-session; use one session per generation")
        if cached_tokens(cache) != self.num_cached:
            raise RuntimeError(
                f"memollm: cache holds {cached_tokens(cache)} tokens but the session tracked {self.num_cached}"
            )

    def _update_masks(self) -> None:
        """Sparse attention: mask what fell below the threshold (per layer, or the layers' consensus);
        a masked key gets no attention, so it cannot come back."""
        below = self.memory.retention() < self.config.sparse_threshold if self.layer_masks else \
            self.memory.forgotten()
        forgotten = below & (self.positions >= self.config.sink_tokens)
        if self._masked is not None:
            forgotten |= self._masked
        new = forgotten & ~self._masked if self._masked is not None else forgotten
        if bool(new.any()):
            self._record_masks(new)
        self._masked = forgotten
        if bool(forgotten.any()):
            self._keep = ~forgotten

    def attend(self, module, query, key, value, attention_mask, **kwargs):
        """Called by the registered attention function for every layer at every step."""
        q_len, kv_len = query.shape[-2], key.shape[-2]
        slot = self.layer_slot.get(module.layer_idx)
        cached = kv_len - q_len
        if self._keep is not None and cached == self._keep.shape[-1] and module.layer_idx in self.full_set:
            if self._allowed_full is None or self._allowed_full.shape[-1] != kv_len:  # once per step, not per layer
                self._allowed_full = torch.cat([self._keep, self._keep.new_ones(*self._keep.shape[:-1], q_len)], -1)
            allowed = self._allowed_full[slot] if self.layer_masks else self._allowed_full
            attention_mask = combine_mask(attention_mask, allowed, q_len, kv_len, query.dtype)
        if slot is not None and self._weights is not None and cached == self._weights.shape[-1]:
            if self._weights_full is None or self._weights_full.shape[-1] != kv_len:  # once per step, all layers
                w = torch.cat([self._weights, self._weights.new_ones(*self._weights.shape[:2], q_len)], dim=-1)
                self._weights_full = w.to(value.dtype) if self.config.soft_delete_target == "values" else torch.log(w)
            w = self._weights_full[slot]
            if self.config.soft_delete_target == "values":
                value = value * w[:, None, :, None]  # on the fly: the cache is untouched
            else:
                attention_mask = add_logit_bias(attention_mask, w, q_len, kv_len, query.dtype)
        out = sdpa_attention_forward(module, query, key, value, attention_mask, **kwargs)
        if slot is not None and self.scoring:
            # non-finite values are caught once per step in post_forward (a per-layer check costs a sync each)
            window = self.config.observation_window if q_len > 1 else 1
            got = received_attention(query, key, attention_mask, kwargs.get("scaling"), window=window,
                                     per_kv_head=self.heads > 1)
            self._received[slot] = pool_neighbours(got, self.config.observation_pool) if q_len > 1 else got
        return out

    def post_forward(self, module, args, kwargs, output):
        self._after_step()
        return output

    def adopt_prefill(self, cache, received: dict[int, torch.Tensor],
                      strengths: dict[int, torch.Tensor] | None = None) -> None:
        """Take over a cache that a prompt was prefilled into without this session, as if the
        session had been attached: ``received[layer]`` ``[batch, kv_heads, tokens]`` is the
        attention each token got in that prefill from the last ``observation_window`` queries
        (not pooled), and ``strengths[layer]`` (same shape) the learned log S, needed where a
        policy learns its strength (``memollm.evaluate`` prefills a prompt once and hands it to
        several sessions; the cache must already hold this session's batch rows).
        """
        if self.cache is not None or self.num_cached:
            raise RuntimeError("adopt_prefill starts a session: this one already holds tokens")
        if self.gate is not None:
            missing = [l for l in self.layer_ids if l not in (strengths or {})]
            if missing:
                raise ValueError(f"a learned strength needs the prefill's log S of every memory layer; missing "
                                 f"layers {missing} (prefill under evaluate.rows.PrefillCapture)")
            self._strengths = [strengths[l] for l in self.layer_ids]
        self.cache = cache
        batch, q_len = cache.layers[self.full_layers[0]].keys.shape[0], cached_tokens(cache)
        self._new_positions = torch.arange(q_len, device=self.positions.device).expand(batch, q_len)
        pool = self.config.observation_pool  # pooled after the mean over heads, as ``attend`` does
        self._received = [pool_neighbours(received[l] if self.heads > 1 else received[l].mean(1), pool)
                          for l in self.layer_ids]
        self._after_step()

    def _after_step(self) -> None:
        """Book the pass just run: its tokens' positions, the attention they gave, the state."""
        batch, q_len = self._new_positions.shape
        self._append_positions(batch, q_len)
        self.peak_cached = max(self.peak_cached, self.num_cached)  # before a prompt is compressed
        received = self._received_this_pass()
        if self.gate is not None and all(s is not None for s in self._strengths):
            self.policy.learn(self._in_rows(self._strengths))
        self._update_state(received, batch, q_len)
        if self.mode == "evict" and self.policy.evicts and self.num_cached > self.config.memory_budget:
            self._evict_to(self.config.memory_budget, self.steps + 1)  # a prompt longer than the budget
        self.steps += 1

    def _append_positions(self, batch: int, q_len: int) -> None:
        rows = batch * self.units
        if self.num_cached == 0 and self.positions.shape[0] != rows:  # the first pass
            self.positions = self.positions.new_zeros(rows, 0)
        new = self._new_positions if self.units == 1 else self._new_positions.repeat_interleave(self.units, 0)
        if self.rotary is not None:
            ranks = torch.arange(self.num_cached, self.num_cached + q_len, device=new.device).expand_as(new)
            self.rope_positions = ranks.clone() if self.rope_positions is None else \
                torch.cat([self.rope_positions, ranks], dim=-1)
        self.positions = torch.cat([self.positions, new], dim=-1)

    def _received_this_pass(self) -> torch.Tensor | None:
        """The attention each cached token received in this pass, in the policies' layout, or None."""
        if not (self.scoring and all(r is not None for r in self._received)):
            return None
        received = self._in_rows(self._received)
        if not bool(torch.isfinite(received).all()):
            self._warn("non-finite attention (overflow?): no reinforcement from this step")
            received = torch.nan_to_num(received, nan=0.0, posinf=0.0, neginf=0.0)
        return received

    def _update_state(self, received: torch.Tensor | None, batch: int, q_len: int) -> None:
        """Append the new tokens to the memory or policy, review what was attended, grow the masks."""
        rows = batch * self.units
        if self._masked is not None:  # [1 or layers, batch, 1] keys each query could see
            visible = (self.num_cached - self._masked.sum(-1)).reshape(-1 if self.layer_masks else 1, batch, 1)
        else:
            visible = self.num_cached
        if self.own_memory is not None:
            self.own_memory.append(batch, q_len)
            if received is not None:
                self.own_memory.reinforce(received, visible)
        if self.policy is not None:
            self.policy.append(rows, q_len)
            if received is not None and self.policy.needs_attention:
                self.policy.observe(received, visible)
        if self.record and received is not None:
            pad = received.new_zeros(received.shape[0], rows, q_len)
            self.attention_total = received if self.attention_total is None else \
                torch.cat([self.attention_total, pad], dim=-1) + received
        if self._masked is not None:
            self._masked = torch.cat([self._masked, self._masked.new_zeros(*self._masked.shape[:-1], q_len)], dim=-1)

    def _in_rows(self, per_layer: list[torch.Tensor]) -> torch.Tensor:
        """Per-layer values ``[batch, (kv heads,) tokens]`` in the policies' layout ``[state layers,
        rows, tokens]``: memory layers x batch (shared), or one state layer over batch x layers
        (x heads) rows; a layer ranked as a whole averages its heads."""
        if self.heads == 1:
            per_layer = [v.mean(1) if v.dim() == 3 else v for v in per_layer]
        stacked = torch.stack(per_layer)  # [layers, batch, (heads,) tokens]
        if self.units == 1:
            return stacked
        stacked = stacked.movedim(0, 1)  # [batch, layers, (heads,) tokens]
        return stacked.reshape(1, -1, stacked.shape[-1])
