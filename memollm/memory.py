"""The forgetting curve: per-token strength S, age t and retention R = exp(-t/S).

State is float32 tensors of shape ``[layers, rows, tokens]``, where a row is a batch row, or a
batch row's layer or KV head when eviction ranks per layer or head (``memollm.cache.SlotLayout``):
strength and age (8 bytes per token per memory layer, under the seed's 20-byte promise), plus
4 bytes per trace time constant when an eviction policy ranks by traces. Every update is a
whole-tensor operation, never a Python loop over tokens.
"""

from __future__ import annotations

import torch

from .config import MemoryConfig


def retention(age: torch.Tensor, strength: torch.Tensor) -> torch.Tensor:
    """R = exp(-t/S), in [0, 1] for t >= 0, S > 0."""
    return torch.exp(-age / strength)


def top_p_keys(attention: torch.Tensor, p: float, sinks: int) -> torch.Tensor:
    """Bool like ``attention`` ``[..., keys]``: the fewest keys, the first ``sinks`` left out, that hold
    ``p`` of the remaining attention mass (a review is a retrieval; the strength gate's targets)."""
    a = attention.float().clone()
    a[..., :sinks] = 0.0
    ranked, order = a.sort(dim=-1, descending=True)
    before = ranked.cumsum(-1) - ranked  # mass of the keys ranked above each one
    top = (before < p * ranked.sum(-1, keepdim=True)) & (ranked > 0)
    return torch.zeros_like(top).scatter(-1, order, top)


def reviewed(config: MemoryConfig, received: torch.Tensor, share: torch.Tensor) -> torch.Tensor:
    """Which tokens one step's attention ``received`` reviews (bool, like ``received``); ``share``
    is ``received`` in uniform shares (``received * visible keys``)."""
    if config.review == "share":
        return share >= config.review_threshold
    return top_p_keys(received, config.review_top_p, config.sink_tokens)


def reviewed_strength(config: MemoryConfig, strength: torch.Tensor, r: torch.Tensor,
                      share: torch.Tensor) -> torch.Tensor:
    """The strength after a review (``stability``): the seed's ``S + gain * share``, or FSRS's
    growth, which vanishes for a massed review (R just before it near 1) and falls as S grows."""
    if config.stability == "additive":
        return strength + config.strength_gain * share
    growth = config.strength_gain * strength.pow(-config.stability_decay) * torch.expm1(
        config.retrievability_gain * (1.0 - r))
    return strength * (1.0 + growth)


class EbbinghausMemory:
    """Strength and age of every cached token in every memory layer.

    Update rule, applied at each forward step:

    1. *Aging.* Reading ``n`` new tokens adds ``n * time_step`` to every existing token's
       age. New tokens start with strength ``S0``; a prompt read in one pass gets the ages
       it would have had if read one token at a time (the last token 0, the first oldest).
    2. *Reviews (spaced repetition).* Let ``a`` be the attention a token received from the
       newest query (mean over the query heads of its KV group, then over groups) and ``n``
       the number of visible keys, so ``a * n == 1`` is a uniform share. Which tokens count as
       *reviewed* (``review``): ``"share"`` (the seed's rule) any ``a * n >=
       review_threshold``; ``"top_p"`` (a review is a retrieval) the fewest keys, sinks
       excluded, that hold ``review_top_p`` of the attention mass, so the bar adapts to how
       spread a layer's attention is; ``"none"``: no reviews. A review resets the age to 0 and
       grows the strength (``stability``): ``"additive"`` (the seed's rule) ``S +=
       strength_gain * a * n``; ``"fsrs"`` (SuperMemo / FSRS) ``S *= 1 + strength_gain *
       S ** -stability_decay * (exp(retrievability_gain * (1 - R)) - 1)`` with R just before
       the review: a massed review (R near 1) adds almost nothing, a spaced one a lot, and the
       gain saturates.
    3. *Traces* (only with ``traces=True``: an eviction policy ranks by them). Every use leaves
       a trace weighted by the attention ``a`` it received, fading as ``exp(-tokens / tau)``
       with ``tau = trace_tau * memory_budget * S / S0`` tokens (a stronger memory fades
       slower). ``"max"`` keeps the strongest trace (the last retrieval's attention, fading);
       ``"sum"`` adds them up over three time constants ``tau / 4, tau, 4 tau`` (a power-law
       forgetting curve as in ACT-R's base-level activation, kept online).

    Reviews only ever raise R; without them R only falls.
    """

    TRACE_SCALES = {"max": (1.0,), "sum": (0.25, 1.0, 4.0)}
    """Time constants of the traces, in units of ``tau``."""

    def __init__(self, num_layers: int, config: MemoryConfig, *, traces: bool = False, device=None) -> None:
        self.config = config
        self.num_layers = num_layers
        self.strength = torch.empty(num_layers, 0, 0, device=device)
        self.age = torch.empty(num_layers, 0, 0, device=device)
        # [scales, layers, rows, tokens], kept only for a policy that ranks by them
        self.trace = torch.empty(len(self.TRACE_SCALES[config.trace]), num_layers, 0, 0, device=device) \
            if traces and config.trace != "none" else None

    @property
    def num_tokens(self) -> int:
        return self.strength.shape[-1]

    @property
    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in (self.strength, self.age, self.trace) if t is not None)

    def append(self, batch: int, n: int) -> None:
        """Add ``n`` newly read tokens (per row) and age the existing ones."""
        cfg = self.config
        dev = self.strength.device
        if self.num_tokens == 0:
            self.strength = torch.empty(self.num_layers, batch, 0, device=dev)
            self.age = torch.empty(self.num_layers, batch, 0, device=dev)
            if self.trace is not None:
                self.trace = torch.empty(self.trace.shape[0], self.num_layers, batch, 0, device=dev)
        if self.trace is not None:  # traces fade while the new tokens are read; new tokens have none
            if self.num_tokens:
                self.trace = self.trace * torch.exp(-n / self._tau())
            self.trace = torch.cat([self.trace, self.trace.new_zeros(*self.trace.shape[:-1], n)], dim=-1)
        read_ago = torch.arange(n - 1, -1, -1, device=dev, dtype=torch.float32)  # tokens read since each new one
        new_age = (read_ago * cfg.time_step).expand(self.num_layers, batch, n)
        new_strength = torch.full((self.num_layers, batch, n), float(cfg.initial_strength), device=dev)
        self.age = torch.cat([self.age + n * cfg.time_step, new_age], dim=-1)
        self.strength = torch.cat([self.strength, new_strength], dim=-1)

    def _tau(self) -> torch.Tensor:
        """Trace time constants in tokens, ``[scales, layers, rows, tokens]``."""
        cfg = self.config
        scales = torch.tensor(self.TRACE_SCALES[cfg.trace], device=self.strength.device).view(-1, 1, 1, 1)
        return scales * (cfg.trace_tau * cfg.memory_budget * self.strength / cfg.initial_strength)

    def reinforce(self, received: torch.Tensor, visible: torch.Tensor | int) -> None:
        """Reviews (and traces) from one step's attention ``received`` ``[layers, rows, tokens]``."""
        cfg = self.config
        if self.trace is not None:  # every use leaves a trace, weighted by its attention
            a = received.float().unsqueeze(0)
            self.trace = torch.maximum(self.trace, a) if cfg.trace == "max" else self.trace + a
        if cfg.review == "none":
            return
        share = received.float() * visible
        hit = reviewed(cfg, received, share)
        strength = reviewed_strength(cfg, self.strength, self.retention(), share)
        self.strength = torch.where(hit, strength, self.strength)
        self.age = torch.where(hit, torch.zeros_like(self.age), self.age)

    def trace_score(self) -> torch.Tensor:
        """``[layers, rows, tokens]``: the traces summed over their time constants."""
        return self.trace.sum(0)

    def retention(self) -> torch.Tensor:
        return retention(self.age, self.strength)

    def keep(self, index: torch.Tensor) -> None:
        """Keep only the slots ``index`` ``[rows, kept]`` (after eviction)."""
        idx = index.unsqueeze(0).expand(self.num_layers, -1, -1)
        self.strength = self.strength.gather(-1, idx)
        self.age = self.age.gather(-1, idx)
        if self.trace is not None:
            self.trace = self.trace.gather(-1, idx.unsqueeze(0).expand(self.trace.shape[0], -1, -1, -1))

    def soft_weights(self) -> torch.Tensor:
        """Soft-delete weights in [floor, 1] from the current R; recomputed, never compounded."""
        floor = self.config.soft_delete_floor
        return floor + (1.0 - floor) * self.retention()

    def forgotten(self) -> torch.Tensor:
        """``[rows, tokens]`` True where R is under the threshold in enough memory layers."""
        below = (self.retention() < self.config.sparse_threshold).float().mean(0)
        return below >= self.config.layer_consensus

    def stats(self, layer_ids: list[int], masked: torch.Tensor | None = None, *,
              strength: torch.Tensor | None = None, age: torch.Tensor | None = None) -> dict[str, dict]:
        """Per-layer summary (row 0), keyed ``layer_<i>`` as in the seed. ``masked``: one mask
        ``[rows, n]`` for all layers or one per layer ``[layers, rows, n]``. ``strength`` and
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
