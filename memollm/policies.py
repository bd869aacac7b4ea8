"""Eviction policies: each gives every cached token a score, and the lowest scores go.

Sinks (the first positions) and the recent window are protected by the eviction step
itself (``memollm.cache.select_keep``), so a policy only ranks the tokens in between. A
policy tracks its own per-token state through four calls made at every forward step:
``append`` (new tokens read), ``observe`` (attention they received), ``keep`` (slots that
survived eviction) and ``scores``. Add one with ``@register_policy("name")``.

References, and how each is adapted here (with ``granularity="layer"``, the default for
eviction, every full-attention layer ranks its own slots; with ``"shared"`` the attention is
averaged over the memory layers and one set of slots serves all layers):

* StreamingLLM (Xiao et al., 2023): attention sinks + the most recent tokens, nothing else.
* H2O (Zhang et al., 2023): "heavy hitters", the tokens with the largest attention summed
  over all steps so far, with the newest half of the budget kept as recent tokens (the
  paper's split). The paper ranks per head, as ``granularity="head"`` does; with ``"layer"``
  the heads of a layer are averaged.
* TOVA (Oren et al., 2024): keeps the tokens the *newest* query attends to most (attention
  averaged over heads), with no accumulation.
* SnapKV (Li et al., 2024): the pooled attention of an observation window of queries (the
  prompt's last ones), no accumulation, no decay; while decoding, the last window's mean.
* ``random``: a control (fresh seeded scores at every eviction).

Attention is the softmax row of the newest query at each forward step. When a prompt is
read in one pass or in chunks, that is the last query of the pass or chunk (TOVA's rule
for prompts; H2O's paper would also sum the other prompt queries' rows).
"""

from __future__ import annotations

from typing import Callable

import torch

from .config import POLICIES, SEED_RULE, ConfigError, MemoryConfig
from .memory import EbbinghausMemory, retention


def register_policy(name: str) -> Callable[[type["Policy"]], type["Policy"]]:
    def deco(cls: type["Policy"]) -> type["Policy"]:
        cls.name = name
        POLICIES[name] = cls
        return cls

    return deco


class Policy:
    """Base class: no state; subclasses override what they need."""

    name = "base"
    needs_attention = False  # whether ``observe`` needs the attention received per token
    needs_strength = False  # whether ``learn`` needs each new token's learned log S (``memollm.strength``)
    evicts = True  # ``full`` sets this False: the reference that never evicts

    memory: EbbinghausMemory | None = None  # set by policies whose state is the forgetting curve

    def __init__(self, config: MemoryConfig, num_layers: int, *, seed: int = 0, device=None) -> None:
        self.config = config
        self.num_layers = num_layers

    def append(self, batch: int, n: int) -> None: ...

    def observe(self, received: torch.Tensor, visible: torch.Tensor | int) -> None: ...

    def learn(self, log_strength: torch.Tensor) -> None:
        """``[state layers, rows, new tokens]``: the learned log S of the tokens about to be appended."""

    def keep(self, index: torch.Tensor) -> None: ...

    def scores(self, positions: torch.Tensor) -> torch.Tensor:
        """``[batch, tokens]``; higher means keep. ``positions`` are the true positions."""
        raise NotImplementedError(f"policy {self.name!r} ({type(self).__name__}) must define scores(positions)")

    def checked_scores(self, positions: torch.Tensor) -> torch.Tensor:
        """``scores`` with its contract enforced: a float tensor shaped like ``positions``.

        A user-registered policy with a wrong shape would otherwise drop the sinks or fail
        deep inside the gather; non-finite values are allowed (eviction falls back to
        recency for that step and warns).
        """
        s = self.scores(positions)
        if not isinstance(s, torch.Tensor) or tuple(s.shape) != tuple(positions.shape):
            got = tuple(s.shape) if isinstance(s, torch.Tensor) else type(s).__name__
            raise ValueError(f"policy {self.name!r}: scores() must return a tensor of shape "
                             f"[batch, cached] = {tuple(positions.shape)}, got {got}")
        if not (s.is_floating_point() or s.dtype in (torch.int32, torch.int64)):
            raise ValueError(f"policy {self.name!r}: scores() must be numeric, got dtype {s.dtype}")
        return s


class _PerTokenState(Policy):
    """A policy whose state is one float per cached token, ``[batch, tokens]``."""

    def __init__(self, config, num_layers, *, seed=0, device=None) -> None:
        super().__init__(config, num_layers)
        self.state = torch.zeros(1, 0, device=device)

    def append(self, batch: int, n: int) -> None:
        if self.state.shape[-1] == 0:
            self.state = self.state.new_zeros(batch, 0)
        self.state = torch.cat([self.state, self.state.new_zeros(batch, n)], dim=-1)

    def keep(self, index: torch.Tensor) -> None:
        self.state = self.state.gather(-1, index)

    def scores(self, positions: torch.Tensor) -> torch.Tensor:
        return self.state


@register_policy("ebbinghaus")
class EbbinghausPolicy(Policy):
    """The forgetting curve ranks: by the fading attention traces (the default, ``trace="max"``),
    or by the retention R a little ahead (``trace="none"``); mean over the memory layers."""

    needs_attention = True
    settings: dict = {}  # a preset's MemoryConfig changes (a subclass sets them; the result reports them)

    def __init__(self, config, num_layers, *, seed=0, device=None) -> None:
        config = config.replace(**self.settings) if self.settings else config
        super().__init__(config, num_layers)
        self.memory = EbbinghausMemory(num_layers, config, traces=True, device=device)

    def append(self, batch, n):
        self.memory.append(batch, n)

    def observe(self, received, visible):
        self.memory.reinforce(received, visible)

    def keep(self, index):
        self.memory.keep(index)

    def scores(self, positions):
        """Retention a little ahead: R at age + ``memory_budget * time_step``, the time a full
        cache takes to turn over. A token reviewed just now has R = 1 whatever its strength;
        looking ahead, the stronger memory (the larger review) ranks higher. With ``trace``
        on, the fading attention traces rank instead (mean over the memory layers)."""
        if self.memory.trace is not None:
            return self.memory.trace_score().mean(0)
        horizon = self.config.memory_budget * self.config.time_step
        return retention(self.memory.age + horizon, self.memory.strength).mean(0)


@register_policy("ebbinghaus_seed")
class EbbinghausSeedPolicy(EbbinghausPolicy):
    """The seed's rule: any above-uniform glance is a review, strength adds up, retention ranks."""

    settings = SEED_RULE


@register_policy("ebbinghaus_learned")
class LearnedStrengthPolicy(Policy):
    """The forgetting curve with a learned strength: every token's S is read from its attention
    input when it is read (``memollm.strength``, ``memollm train-strength``), and it is ranked by
    its retention R = exp(-age / S), age in tokens; no attention is needed. The state layers'
    log S are averaged (a geometric mean of S) where one unit ranks for several layers.
    (Reviews, accumulated attention and H2O's recent half on top of it were tried on tune
    conversations and did not help: ``scripts/search_learned.py``.)"""

    needs_strength = True

    def __init__(self, config, num_layers, *, seed=0, device=None) -> None:
        super().__init__(config, num_layers)
        self.age = torch.zeros(1, 0, device=device)  # [rows, tokens], tokens read since each
        self.log_strength = torch.zeros(1, 0, device=device)
        self._pending: torch.Tensor | None = None

    def learn(self, log_strength):
        self._pending = log_strength.float().mean(0)

    def append(self, batch, n):
        if self.age.shape[-1] == 0:
            self.age, self.log_strength = self.age.new_zeros(batch, 0), self.log_strength.new_zeros(batch, 0)
        new_age = torch.arange(n - 1, -1, -1, device=self.age.device, dtype=torch.float32).expand(batch, n)
        new = self._pending if self._pending is not None else self.log_strength.new_zeros(batch, n)
        self.age = torch.cat([self.age + n, new_age], dim=-1)
        self.log_strength = torch.cat([self.log_strength, new], dim=-1)
        self._pending = None

    def keep(self, index):
        self.age, self.log_strength = self.age.gather(-1, index), self.log_strength.gather(-1, index)

    def scores(self, positions):
        return -self.age * torch.exp(-self.log_strength)  # log R


@register_policy("streaming")
class StreamingPolicy(Policy):
    """StreamingLLM: attention sinks plus the most recent tokens, nothing else."""

    def scores(self, positions):
        return positions.float()


@register_policy("h2o")
class H2OPolicy(_PerTokenState):
    """H2O as in its paper: the newest half of the budget is kept as recent tokens, the other
    half goes to the heavy hitters (attention accumulated over all steps)."""

    needs_attention = True

    def observe(self, received, visible):
        self.state = self.state + received.float().mean(0)

    def scores(self, positions):
        recent = max(1, self.config.memory_budget // 2)
        if positions.shape[-1] <= recent:
            return self.state
        cutoff = positions.topk(recent, dim=-1).values[..., -1:]  # the oldest of the newest half
        bonus = self.state.amax(-1, keepdim=True).clamp(min=0) + 1.0
        return torch.where(positions >= cutoff, self.state + bonus, self.state)


@register_policy("snapkv")
class SnapKVPolicy(_PerTokenState):
    """SnapKV: the attention of an observation window of queries (a prompt's last
    ``observation_window`` queries, pooled over neighbours, as the session measures them);
    while decoding, the mean over the last ``observation_window`` steps. No accumulation
    beyond the window, no forgetting curve: ``ebbinghaus`` minus ``snapkv`` is what the
    curve adds on top of the window."""

    needs_attention = True

    def __init__(self, config, num_layers, *, seed=0, device=None) -> None:
        super().__init__(config, num_layers, seed=seed, device=device)
        self.window = torch.zeros(0, 1, 0, device=device)  # [steps kept, batch, tokens]

    def append(self, batch, n):
        super().append(batch, n)
        if self.window.shape[-1] == 0:
            self.window = self.window.new_zeros(0, batch, 0)
        self.window = torch.cat([self.window, self.window.new_zeros(self.window.shape[0], batch, n)], dim=-1)

    def observe(self, received, visible):
        row = received.float().mean(0)[None]
        self.window = torch.cat([self.window, row])[-self.config.observation_window:]
        self.state = self.window.mean(0)

    def keep(self, index):
        super().keep(index)
        self.window = self.window.gather(-1, index[None].expand(self.window.shape[0], -1, -1))


@register_policy("tova")
class TOVAPolicy(_PerTokenState):
    """TOVA: the attention of the newest query only (mean over memory layers and heads)."""

    needs_attention = True

    def observe(self, received, visible):
        self.state = received.float().mean(0)


@register_policy("random")
class RandomPolicy(Policy):
    """Control: uniform random scores from a seeded generator."""

    def __init__(self, config, num_layers, *, seed=0, device=None) -> None:
        super().__init__(config, num_layers)
        self.generator = torch.Generator(device=device or "cpu").manual_seed(seed)

    def scores(self, positions):
        return torch.rand(positions.shape, generator=self.generator, device=self.generator.device).to(
            positions.device)


@register_policy("full")
class FullPolicy(StreamingPolicy):
    """Reference: never evicts (memory grows with the sequence)."""

    evicts = False


class PolicyRows(Policy):
    """Several policies side by side, one per block of batch rows (for evaluation).

    Row ``i`` of the batch is ranked by ``policies[i // rows_each]``. Batch rows never
    interact in a forward pass, so running P policies on the same text as P row blocks of
    one batch gives each the result it would get alone, at a fraction of the CPU time
    (decoding is bound by reading the weights, which a batch shares). All rows keep the
    same number of slots, so every sub-policy must evict (``full`` cannot be a row).
    """

    name = "rows"

    def __init__(self, policies: list[Policy], rows_each: int = 1) -> None:
        if not policies:
            raise ValueError("PolicyRows needs at least one policy")
        if any(not p.evicts for p in policies):
            raise ValueError("every row policy must evict ('full' is the no-eviction reference: run it alone)")
        self.policies = list(policies)
        self.rows_each = int(rows_each)
        self.config = policies[0].config
        self.num_layers = policies[0].num_layers
        self.needs_attention = any(p.needs_attention for p in policies)
        self.needs_strength = any(p.needs_strength for p in policies)

    def _rows(self, i: int) -> slice:
        return slice(i * self.rows_each, (i + 1) * self.rows_each)

    def _check(self, batch: int) -> None:
        if batch != self.rows_each * len(self.policies):
            raise ValueError(f"batch of {batch} rows, expected {len(self.policies)} policies x {self.rows_each}")

    def append(self, batch, n):
        self._check(batch)
        for p in self.policies:
            p.append(self.rows_each, n)

    def observe(self, received, visible):
        for i, p in enumerate(self.policies):
            if p.needs_attention:
                v = visible
                if isinstance(v, torch.Tensor) and v.dim() >= 2 and v.shape[1] == received.shape[1]:
                    v = v[:, self._rows(i)]
                p.observe(received[:, self._rows(i)], v)

    def learn(self, log_strength):
        for i, p in enumerate(self.policies):
            if p.needs_strength:
                p.learn(log_strength[:, self._rows(i)])

    def keep(self, index):
        for i, p in enumerate(self.policies):
            p.keep(index[self._rows(i)])

    def scores(self, positions):
        self._check(positions.shape[0])
        return torch.cat([p.checked_scores(positions[self._rows(i)]).float() for i, p in enumerate(self.policies)],
                         dim=0)


def make_policy(name: str, config: MemoryConfig, num_layers: int, **kwargs) -> Policy:
    if not isinstance(name, str) or name not in POLICIES:
        raise ConfigError(f"policy must be one of {sorted(POLICIES)}, got {name!r}")
    return POLICIES[name](config, num_layers, **kwargs)
