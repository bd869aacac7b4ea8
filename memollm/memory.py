"""The forgetting curve: per-token strength S, age t and retention R = exp(-t/S).

State is two float32 tensors of shape ``[layers, batch, tokens]`` (8 bytes per token per
memory layer, under the seed's 20-byte promise); every update is a whole-tensor operation,
never a Python loop over tokens.
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
       and ``n`` the number of visible keys, so ``a * n == 1`` is a uniform share. Where
       ``a * n >= reinforce_threshold``: ``S += strength_gain * a * n`` and ``t = 0``.
       With a spacing effect the gain is scaled by ``(1 - R) ** spacing`` (R just before the
       review), and ``max_strength`` caps S. Reinforcement only ever raises R; without it R
       only falls.
    """

    def __init__(self, num_layers: int, config: MemoryConfig, *, device=None) -> None:
        self.config = config
        self.num_layers = num_layers
        self.strength = torch.empty(num_layers, 0, 0, device=device)
        self.age = torch.empty(num_layers, 0, 0, device=device)

    @property
    def num_tokens(self) -> int:
        return self.strength.shape[-1]

    @property
    def nbytes(self) -> int:
        return self.strength.numel() * self.strength.element_size() + self.age.numel() * self.age.element_size()

    def append(self, batch: int, n: int) -> None:
        """Add ``n`` newly read tokens (per batch row) and age the existing ones."""
        cfg = self.config
        dev = self.strength.device
        if self.num_tokens == 0:
            self.strength = torch.empty(self.num_layers, batch, 0, device=dev)
            self.age = torch.empty(self.num_layers, batch, 0, device=dev)
        new_age = (torch.arange(n - 1, -1, -1, device=dev, dtype=torch.float32) * cfg.time_step)
        new_age = new_age.expand(self.num_layers, batch, n)
        new_strength = torch.full((self.num_layers, batch, n), float(cfg.initial_strength), device=dev)
        self.age = torch.cat([self.age + n * cfg.time_step, new_age], dim=-1)
        self.strength = torch.cat([self.strength, new_strength], dim=-1)

    def reinforce(self, received: torch.Tensor, visible: torch.Tensor | int) -> None:
        """Spaced repetition from one step's attention ``received`` ``[layers, batch, tokens]``."""
        cfg = self.config
        if not cfg.reinforce:
            return
        share = received.float() * visible
        hit = share >= cfg.reinforce_threshold
        gain = cfg.strength_gain * share
        if cfg.spacing > 0:  # a review pays most when the memory has faded (the spacing effect)
            gain = gain * (1.0 - self.retention()).clamp(min=0.0) ** cfg.spacing
        strength = torch.where(hit, self.strength + gain, self.strength)
        self.strength = strength if cfg.max_strength is None else strength.clamp(max=cfg.max_strength)
        self.age = torch.where(hit, torch.zeros_like(self.age), self.age)

    def retention(self) -> torch.Tensor:
        return retention(self.age, self.strength)

    def keep(self, index: torch.Tensor) -> None:
        """Keep only the slots ``index`` ``[batch, kept]`` (after eviction)."""
        idx = index.unsqueeze(0).expand(self.num_layers, -1, -1)
        self.strength = self.strength.gather(-1, idx)
        self.age = self.age.gather(-1, idx)

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
