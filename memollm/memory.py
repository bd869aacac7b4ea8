"""The forgetting curve: per-token strength S, age t and retention R = exp(-t/S).

State is float32 tensors of shape ``[layers, batch, tokens]``: strength and age (8 bytes per token per
memory layer, under the seed's 20-byte promise), plus 4 bytes per trace time constant and 4
for the running mean share when those rules are on; every update is a whole-tensor
operation, never a Python loop over tokens.
"""

from __future__ import annotations

import torch

from .config import MemoryConfig


def retention(age: torch.Tensor, strength: torch.Tensor) -> torch.Tensor:
    """R = exp(-t/S), in [0, 1] for t >= 0, S > 0."""
    return torch.exp(-age / strength)


class EbbinghausMemory:
    """Strength and age of every cached token in every memory layer.

    Update rule, applied at each forward step:

    1. *Aging.* Reading ``n`` new tokens adds ``n * time_step`` to every existing token's
       age. New tokens start with strength ``S0``; a prompt read in one pass gets the ages
       it would have had if read one token at a time (the last token 0, the first oldest).
    2. *Reinforcement (spaced repetition).* Let ``a`` be the attention a token received
       from the newest query (mean over the query heads of its KV group, then over groups)
       and ``n`` the number of visible keys, so ``a * n == 1`` is a uniform share. Which
       tokens count as *reviewed* (``review``):

       * ``"share"`` (the seed's rule): ``a * n >= reinforce_threshold``, any glance above
         a uniform share;
       * ``"top_p"`` (a review is a retrieval): the fewest keys, sinks excluded, that hold
         ``review_top_p`` of the query's attention mass, so the bar adapts to how spread a
         layer's attention is.

       With ``review_surprise`` > 0 a review also needs ``a * n`` at least that many times
       the token's own running mean share: routine attention (" the", newlines in the broad
       lower layers) stops counting. A reviewed token's age resets to 0 and its strength
       grows (``stability``):

       * ``"additive"`` (the seed's rule): ``S += strength_gain * a * n``, times
         ``(1 - R) ** spacing`` with a spacing effect, capped at ``max_strength``;
       * ``"fsrs"`` (SuperMemo / FSRS): ``S *= 1 + strength_gain * S ** -stability_decay *
         (exp(retrievability_gain * (1 - R)) - 1)`` with R just before the review: a massed
         review (R near 1) adds almost nothing, a spaced one a lot, and the gain saturates.

    3. *Traces* (``trace``, used for ranking by the eviction policy): every use leaves a
       trace weighted by the attention ``a`` it received, fading as ``exp(-tokens / tau)``
       with ``tau = trace_tau * memory_budget * S / S0`` tokens (a stronger memory fades
       slower). ``"max"`` keeps the strongest trace (the last retrieval's attention, fading);
       ``"sum"`` adds them up over three time constants ``tau / 4, tau, 4 tau`` (a power-law
       forgetting curve as in ACT-R's base-level activation, kept online). A token whose
       attention never passes a review bar is then still ranked by how much it received.
       With ``encoding`` > 0, reading a token is its first use (ACT-R counts a memory's
       creation as one): it starts with a trace of ``encoding / memory_budget`` (that many
       uniform shares of a full cache), so a fresh token that no query has retrieved yet fades
       from a head start instead of being ranked last.

    Reinforcement only ever raises R; without it R only falls.
    """

    TRACE_SCALES = {"max": (1.0,), "sum": (0.25, 1.0, 4.0)}
    """Time constants of the traces, in units of ``tau``."""

    EXPECTED_RATE = 0.1
    """Weight of the newest share in a token's running mean share (``review_surprise``)."""

    def __init__(self, num_layers: int, config: MemoryConfig, *, device=None) -> None:
        self.config = config
        self.num_layers = num_layers
        self.strength = torch.empty(num_layers, 0, 0, device=device)
        self.age = torch.empty(num_layers, 0, 0, device=device)
        # traces [scales, layers, batch, tokens] and the running mean share, only when used
        self.trace = torch.empty(len(self.TRACE_SCALES[config.trace]), num_layers, 0, 0, device=device) \
            if config.trace != "none" else None
        self.expected = torch.empty(num_layers, 0, 0, device=device) if config.review_surprise > 0 else None

    @property
    def num_tokens(self) -> int:
        return self.strength.shape[-1]

    def _state(self) -> list[torch.Tensor]:
        return [t for t in (self.strength, self.age, self.trace, self.expected) if t is not None]

    @property
    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in self._state())

    def append(self, batch: int, n: int) -> None:
        """Add ``n`` newly read tokens (per batch row) and age the existing ones."""
        cfg = self.config
        dev = self.strength.device
        if self.num_tokens == 0:
            self.strength = torch.empty(self.num_layers, batch, 0, device=dev)
            self.age = torch.empty(self.num_layers, batch, 0, device=dev)
            if self.trace is not None:
                self.trace = torch.empty(self.trace.shape[0], self.num_layers, batch, 0, device=dev)
            if self.expected is not None:
                self.expected = torch.empty(self.num_layers, batch, 0, device=dev)
        if self.trace is not None and self.num_tokens:  # traces fade while the new tokens are read
            self.trace = self.trace * torch.exp(-n / self._tau())
        read_ago = torch.arange(n - 1, -1, -1, device=dev, dtype=torch.float32)  # tokens read since each new one
        new_age = (read_ago * cfg.time_step).expand(self.num_layers, batch, n)
        new_strength = torch.full((self.num_layers, batch, n), float(cfg.initial_strength), device=dev)
        self.age = torch.cat([self.age + n * cfg.time_step, new_age], dim=-1)
        self.strength = torch.cat([self.strength, new_strength], dim=-1)
        if self.trace is not None:
            self.trace = torch.cat([self.trace, self._encoded(read_ago).expand(*self.trace.shape[:-1], n)], dim=-1)
        if self.expected is not None:  # a new token's expected share is the uniform one
            self.expected = torch.cat([self.expected, self.expected.new_ones(self.num_layers, batch, n)], dim=-1)

    def _encoded(self, read_ago: torch.Tensor) -> torch.Tensor:
        """``[scales, 1, 1, n]``: the trace reading leaves on ``n`` new tokens, faded by the
        ``read_ago`` tokens read since each (as if read one at a time, like the ages)."""
        cfg = self.config
        if cfg.encoding == 0:
            return self.trace.new_zeros(1, 1, 1, read_ago.shape[0])
        tau = self._scales() * cfg.trace_tau * cfg.memory_budget  # a new token's strength is S0
        return cfg.encoding / cfg.memory_budget * torch.exp(-read_ago / tau)

    def _scales(self) -> torch.Tensor:
        """``[scales, 1, 1, 1]``: the traces' time constants in units of ``tau``."""
        return torch.tensor(self.TRACE_SCALES[self.config.trace], device=self.strength.device).view(-1, 1, 1, 1)

    def _tau(self) -> torch.Tensor:
        """Trace time constants in tokens, ``[scales, layers, batch, tokens]``."""
        cfg = self.config
        base = cfg.trace_tau * cfg.memory_budget * self.strength / cfg.initial_strength
        return self._scales() * base

    def reviewed(self, received: torch.Tensor, share: torch.Tensor) -> torch.Tensor:
        """Which tokens this step's attention reviews (bool, like ``received``)."""
        cfg = self.config
        if cfg.review == "share":
            hit = share >= cfg.reinforce_threshold
        else:  # top_p: the keys holding the top p of the attention mass, sinks excluded
            a = received.float().clone()
            a[..., : cfg.sink_tokens] = 0.0
            ranked, order = a.sort(dim=-1, descending=True)
            before = ranked.cumsum(-1) - ranked  # mass of the keys ranked above each one
            top = (before < cfg.review_top_p * ranked.sum(-1, keepdim=True)) & (ranked > 0)
            hit = torch.zeros_like(top).scatter(-1, order, top)
        if self.expected is not None:  # only a share well above the token's usual one is a review
            hit = hit & (share >= cfg.review_surprise * self.expected)
        return hit

    def reinforce(self, received: torch.Tensor, visible: torch.Tensor | int) -> None:
        """Spaced repetition from one step's attention ``received`` ``[layers, batch, tokens]``."""
        cfg = self.config
        if self.trace is not None:  # every use leaves a trace, weighted by its attention
            a = received.float().unsqueeze(0)
            self.trace = torch.maximum(self.trace, a) if cfg.trace == "max" else self.trace + a
        if not cfg.reinforce:
            return
        share = received.float() * visible
        hit = self.reviewed(received, share)
        if self.expected is not None:
            self.expected = self.expected + self.EXPECTED_RATE * (share - self.expected)
        if cfg.stability == "additive":
            gain = cfg.strength_gain * share
            if cfg.spacing > 0:  # a review pays most when the memory has faded (the spacing effect)
                gain = gain * (1.0 - self.retention()).clamp(min=0.0) ** cfg.spacing
            strength = self.strength + gain
        else:  # FSRS: growth vanishes for massed reviews (R near 1) and falls as S grows
            r = self.retention()
            growth = cfg.strength_gain * self.strength.pow(-cfg.stability_decay) * torch.expm1(
                cfg.retrievability_gain * (1.0 - r))
            strength = self.strength * (1.0 + growth)
        strength = torch.where(hit, strength, self.strength)
        self.strength = strength if cfg.max_strength is None else strength.clamp(max=cfg.max_strength)
        self.age = torch.where(hit, torch.zeros_like(self.age), self.age)

    def trace_score(self) -> torch.Tensor:
        """``[layers, batch, tokens]``: the traces summed over their time constants."""
        return self.trace.sum(0)

    def retention(self) -> torch.Tensor:
        return retention(self.age, self.strength)

    def keep(self, index: torch.Tensor) -> None:
        """Keep only the slots ``index`` ``[batch, kept]`` (after eviction)."""
        idx = index.unsqueeze(0).expand(self.num_layers, -1, -1)
        self.strength = self.strength.gather(-1, idx)
        self.age = self.age.gather(-1, idx)
        if self.expected is not None:
            self.expected = self.expected.gather(-1, idx)
        if self.trace is not None:
            self.trace = self.trace.gather(-1, idx.unsqueeze(0).expand(self.trace.shape[0], -1, -1, -1))

    def soft_weights(self) -> torch.Tensor:
        """Soft-delete weights in [floor, 1] from the current R; recomputed, never compounded."""
        floor = self.config.soft_delete_floor
        return floor + (1.0 - floor) * self.retention()

    def forgotten(self) -> torch.Tensor:
        """``[batch, tokens]`` True where R is under the threshold in enough memory layers."""
        below = (self.retention() < self.config.sparse_threshold).float().mean(0)
        return below >= self.config.layer_consensus

    def stats(self, layer_ids: list[int], masked: torch.Tensor | None = None, *,
              strength: torch.Tensor | None = None, age: torch.Tensor | None = None) -> dict[str, dict]:
        """Per-layer summary (batch row 0), keyed ``layer_<i>`` as in the seed. ``masked``: one mask
        ``[batch, n]`` for all layers or one per layer ``[layers, batch, n]``. ``strength`` and
        ``age`` ``[layers, 1, n]`` summarise another view of the state (one row per layer)."""
        out: dict[str, dict] = {}
        if self.num_tokens == 0:
            return out
        strength = self.strength if strength is None else strength
        age = self.age if age is None else age
        r = retention(age, strength)[:, 0]
        for i, layer in enumerate(layer_ids):
            out[f"layer_{layer}"] = {
                "num_tokens": int(self.num_tokens),
                "avg_strength": float(strength[i, 0].mean()),
                "avg_age": float(age[i, 0].mean()),
                "avg_retention": float(r[i].mean()),
                "min_retention": float(r[i].min()),
                "forgotten_tokens": int((r[i] < self.config.sparse_threshold).sum()),
                "masked_tokens": int((masked[i] if masked.dim() == 3 else masked)[0].sum()) if masked is not None else 0,
            }
        return out
