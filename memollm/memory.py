"""The forgetting curve: per-token strength S, age t and retention R = exp(-t/S).

State is two float32 tensors of shape ``[layers, batch, tokens]`` (8 bytes per token per
memory layer, under the seed's 20-byte promise); every update is a whole-tensor operation,
never a Python loop over tokens.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields

import torch

MODES = ("baseline", "soft_delete", "sparse_attention", "evict")
SOFT_TARGETS = ("values", "logits")


def _finite_positive(name: str, value: float) -> None:
    if not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0:
        raise ValueError(f"{name} must be a finite number > 0, got {value!r}")


def _int_at_least(name: str, value: int, low: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise ValueError(f"{name} must be an integer >= {low}, got {value!r}")


@dataclass(frozen=True)
class MemoryConfig:
    """Every knob of the memory model, with the seed's defaults; validated on construction.

    Forgetting curve: ``initial_strength`` (S0), ``time_step`` (age added per token read).
    Reinforcement: a token whose attention share is at least ``reinforce_threshold`` times
    the uniform share gains ``strength_gain * share`` strength and its age resets to 0.
    Soft delete: weights ``floor + (1 - floor) * R`` in [floor, 1], applied to the values
    (the seed's choice) or as a log-bias on the attention logits.
    Sparse attention: a token is masked once ``R < sparse_threshold`` in at least
    ``layer_consensus`` of the memory layers (the first ``memory_layer_fraction`` of the
    full-attention layers; sliding-window layers hold only their window and keep no state).
    Eviction: at most ``memory_budget`` cached tokens; the first ``sink_tokens`` positions and
    the newest ``recent_window`` tokens are always kept; the rest are ranked by ``policy``.
    """

    initial_strength: float = 5.0
    time_step: float = 0.01
    reinforce: bool = True
    reinforce_threshold: float = 1.0
    strength_gain: float = 1.0
    soft_delete_floor: float = 0.8
    soft_delete_target: str = "values"
    sparse_threshold: float = 0.001
    layer_consensus: float = 0.5
    memory_layer_fraction: float = 0.5
    memory_budget: int = 512
    sink_tokens: int = 4
    recent_window: int = 32
    policy: str = "ebbinghaus"

    def __post_init__(self) -> None:
        _finite_positive("initial_strength", self.initial_strength)
        _finite_positive("time_step", self.time_step)
        _finite_positive("reinforce_threshold", self.reinforce_threshold)
        if not isinstance(self.strength_gain, (int, float)) or not math.isfinite(self.strength_gain) \
                or self.strength_gain < 0:
            raise ValueError(f"strength_gain must be a finite number >= 0, got {self.strength_gain!r}")
        if not isinstance(self.soft_delete_floor, (int, float)) or not 0.0 <= self.soft_delete_floor <= 1.0:
            raise ValueError(f"soft_delete_floor must be in [0, 1], got {self.soft_delete_floor!r}")
        if self.soft_delete_target not in SOFT_TARGETS:
            raise ValueError(f"soft_delete_target must be one of {SOFT_TARGETS}, got {self.soft_delete_target!r}")
        if not isinstance(self.sparse_threshold, (int, float)) or not 0.0 < self.sparse_threshold < 1.0:
            raise ValueError(f"sparse_threshold must be in (0, 1), got {self.sparse_threshold!r}")
        if not isinstance(self.layer_consensus, (int, float)) or not 0.0 < self.layer_consensus <= 1.0:
            raise ValueError(f"layer_consensus must be in (0, 1], got {self.layer_consensus!r}")
        if not isinstance(self.memory_layer_fraction, (int, float)) or not 0.0 < self.memory_layer_fraction <= 1.0:
            raise ValueError(f"memory_layer_fraction must be in (0, 1], got {self.memory_layer_fraction!r}")
        _int_at_least("sink_tokens", self.sink_tokens, 0)
        _int_at_least("recent_window", self.recent_window, 1)
        _int_at_least("memory_budget", self.memory_budget, 1)
        if self.memory_budget < self.sink_tokens + self.recent_window + 1:
            raise ValueError(
                f"memory_budget must be >= sink_tokens + recent_window + 1 = "
                f"{self.sink_tokens + self.recent_window + 1}, got {self.memory_budget}"
            )
        from .policies import POLICIES  # late import: policies import this module

        if self.policy not in POLICIES:
            raise ValueError(f"policy must be one of {sorted(POLICIES)}, got {self.policy!r}")

    def replace(self, **changes) -> "MemoryConfig":
        """A copy with some fields changed (validated); unknown names are rejected."""
        names = {f.name for f in fields(self)}
        unknown = sorted(set(changes) - names)
        if unknown:
            raise TypeError(f"unknown MemoryConfig field(s) {unknown}; valid: {sorted(names)}")
        return MemoryConfig(**{**asdict(self), **changes})

    def memory_layers(self, num_layers: int) -> list[int]:
        """Indices of the layers that keep memory state: the first fraction, at least one."""
        return list(range(max(1, int(round(num_layers * self.memory_layer_fraction)))))

    def to_dict(self) -> dict:
        return asdict(self)


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
       Reinforcement only ever raises R; without it R only falls.
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
        self.strength = torch.where(hit, self.strength + cfg.strength_gain * share, self.strength)
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

    def stats(self, layer_ids: list[int], masked: torch.Tensor | None = None) -> dict[str, dict]:
        """Per-layer summary (batch row 0), keyed ``layer_<i>`` as in the seed."""
        out: dict[str, dict] = {}
        if self.num_tokens == 0:
            return out
        r = self.retention()[:, 0]
        for i, layer in enumerate(layer_ids):
            out[f"layer_{layer}"] = {
                "num_tokens": int(r.shape[-1]),
                "avg_strength": float(self.strength[i, 0].mean()),
                "avg_age": float(self.age[i, 0].mean()),
                "avg_retention": float(r[i].mean()),
                "min_retention": float(r[i].min()),
                "forgotten_tokens": int((r[i] < self.config.sparse_threshold).sum()),
                "masked_tokens": int(masked[0].sum()) if masked is not None else 0,
            }
        return out
