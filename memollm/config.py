"""Every knob of memollm in one validated, frozen dataclass, plus the names of the modes.

This is the bottom layer: it imports nothing from memollm. Policies register themselves
into ``POLICIES`` (``memollm.policies.register_policy``), so the config can check a policy
name without importing the module that defines policies.
"""

from __future__ import annotations

import math
import numbers
from dataclasses import asdict, dataclass, fields
from typing import Any

MODES = ("baseline", "soft_delete", "sparse_attention", "evict")
SOFT_TARGETS = ("values", "logits")
GRANULARITIES = ("auto", "shared", "layer", "head")
POSITION_SCHEMES = ("true", "cache")
REVIEWS = ("share", "top_p")
STABILITY_RULES = ("additive", "fsrs")
TRACES = ("none", "max", "sum")

SEED_RULE = {"review": "share", "stability": "additive", "trace": "none", "review_surprise": 0.0,
             "spacing": 0.0, "max_strength": None}
"""The seed's review rule: any above-uniform glance is a review, strength adds up, retention ranks."""

POLICIES: dict[str, type] = {}
"""Policy registry, name -> class; filled by ``memollm.policies.register_policy``."""


class ConfigError(ValueError):
    """A bad setting given by the user (the CLI reports it in one line, exit status 2).

    A ``ValueError`` subclass, so ``except ValueError`` keeps working; anything that is not
    a ``ConfigError`` is a bug and keeps its traceback in the CLI.
    """


def check_number(name: str, value: Any, *, low: float | None = None, high: float | None = None,
                 low_open: bool = False, high_open: bool = False) -> float:
    """A real, finite number (bools rejected, numpy scalars accepted) within the bounds."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(float(value)):
        raise ConfigError(f"{name} must be a finite number, got {value!r}")
    v = float(value)
    bad_low = low is not None and (v <= low if low_open else v < low)
    bad_high = high is not None and (v >= high if high_open else v > high)
    if bad_low or bad_high:
        lo = "" if low is None else ("(" if low_open else "[") + f"{low}"
        hi = "" if high is None else f"{high}" + (")" if high_open else "]")
        raise ConfigError(f"{name} must be in {lo or '(-inf'}, {hi or 'inf)'}, got {value!r}")
    return v


def check_int(name: str, value: Any, low: int) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < low:
        raise ConfigError(f"{name} must be an integer >= {low}, got {value!r}")
    return int(value)


def check_bool(name: str, value: Any) -> bool:
    if not isinstance(value, bool):
        raise ConfigError(f"{name} must be True or False, got {value!r}")
    return value


def check_choice(name: str, value: Any, choices) -> str:
    if not isinstance(value, str) or value not in choices:
        raise ConfigError(f"{name} must be one of {sorted(choices)}, got {value!r}")
    return value


# float32 keeps ~1e-38 as a normal number; a smaller strength underflows and R becomes NaN
_MIN_STRENGTH = 1e-6


@dataclass(frozen=True)
class MemoryConfig:
    """Every knob of the memory model, validated on construction: the seed's forgetting curve
    (S0, time step, soft-delete floor, sparse threshold) with the review rule chosen on the tune split.

    Forgetting curve: ``initial_strength`` (S0), ``time_step`` (age added per token read).
    Reinforcement: a token whose attention share is at least ``reinforce_threshold`` times
    the uniform share gains ``strength_gain * share`` strength and its age resets to 0. With
    a spacing effect (``spacing`` > 0, as in SuperMemo/FSRS) the gain is multiplied by
    ``(1 - R) ** spacing`` at the time of review, so a review right after the last one adds
    almost nothing and one after the memory has faded adds the most; ``max_strength`` caps S
    (None: no cap). ``spacing=0`` and no cap are the seed's rule.
    Rules from memory research (``memollm.memory.EbbinghausMemory`` says how each works):
    ``review="top_p"`` counts a review only for the keys holding ``review_top_p`` of a query's
    attention mass (``reinforce_threshold`` is the bar of ``review="share"`` only);
    ``review_surprise`` > 0 only for a share that many times the token's running mean;
    ``stability="fsrs"`` multiplies S by ``1 + strength_gain * S ** -stability_decay *
    (exp(retrievability_gain * (1 - R)) - 1)``; ``trace="max"`` / ``"sum"`` ranks tokens for
    eviction by attention traces that fade with time constant ``trace_tau * memory_budget *
    S / S0`` tokens. The defaults (top-p reviews, FSRS stability, max traces) were chosen on
    the tune split with ``scripts/search_review_rule.py`` (README, Quality);
    ``SEED_RULE`` (``review="share"``, ``stability="additive"``,
    ``trace="none"``) is the seed's rule, and the ``ebbinghaus_seed`` policy runs it.
    Soft delete: weights ``floor + (1 - floor) * R`` in [floor, 1], applied to the values
    (the seed's choice) or as a log-bias on the attention logits.
    Sparse attention: a token is masked once ``R < sparse_threshold`` in at least
    ``layer_consensus`` of the memory layers (the first ``memory_layer_fraction`` of the
    full-attention layers; sliding-window layers hold only their window and keep no state).
    Eviction: at most ``memory_budget`` cached tokens; the first ``sink_tokens`` positions and
    the newest ``recent_window`` tokens are always kept; the rest are ranked by ``policy``.
    ``granularity`` says who ranks: one set of slots for all layers (``shared``), each
    full-attention layer its own (``layer``), or each KV head of each layer (``head``); every
    layer and head keeps the same number of slots, so the cache keeps one shape. In
    ``sparse_attention``, ``layer`` gives every full-attention layer its own mask (what its
    own retention forgot) instead of the layers' consensus; ``soft_delete`` always weighs each
    memory layer by its own retention. ``auto`` (the default) is ``layer`` for ``evict``,
    where it measured best (README, Quality), and ``shared`` (the consensus) for
    ``sparse_attention``: see :meth:`granularity_for`.
    Positions after eviction: each new token gets its ``true`` position (keys stay where
    they were rotated; right while positions stay inside the range the model was trained
    on), or, with ``positions="cache"`` (StreamingLLM), its rank in the cache: cached keys
    are re-rotated to their new ranks whenever slots shift, so no position ever exceeds the
    budget and a stream can run past the model's context window.
    Reading a prompt: the attention that the last ``observation_window`` queries of a
    prompt (or chunk) give each earlier token counts as its review, max-pooled over
    ``observation_pool`` neighbouring positions so a multi-token fact is kept whole
    (SnapKV's observation window; 1 = the newest query only, as in decoding). The defaults,
    16 queries (about a question's length) pooled over 7 neighbours, were chosen on passkey
    documents kept apart from the reported ones; decoding (one query a step) is unaffected.
    """

    initial_strength: float = 5.0
    time_step: float = 0.01
    reinforce: bool = True
    reinforce_threshold: float = 1.0
    strength_gain: float = 1.0
    spacing: float = 0.0
    max_strength: float | None = None
    review: str = "top_p"
    review_top_p: float = 0.5
    review_surprise: float = 0.0
    stability: str = "fsrs"
    stability_decay: float = 0.2
    retrievability_gain: float = 2.0
    trace: str = "max"
    trace_tau: float = 0.25
    soft_delete_floor: float = 0.8
    soft_delete_target: str = "values"
    sparse_threshold: float = 0.001
    layer_consensus: float = 0.5
    memory_layer_fraction: float = 0.5
    memory_budget: int = 512
    sink_tokens: int = 4
    recent_window: int = 32
    policy: str = "ebbinghaus"
    granularity: str = "auto"
    observation_window: int = 16
    observation_pool: int = 7
    positions: str = "true"

    def __post_init__(self) -> None:
        check_number("initial_strength", self.initial_strength, low=_MIN_STRENGTH)
        check_number("time_step", self.time_step, low=0.0, low_open=True)
        check_bool("reinforce", self.reinforce)
        check_number("reinforce_threshold", self.reinforce_threshold, low=0.0, low_open=True)
        check_number("strength_gain", self.strength_gain, low=0.0)
        check_number("spacing", self.spacing, low=0.0)
        if self.max_strength is not None:
            check_number("max_strength", self.max_strength, low=self.initial_strength)
        check_choice("review", self.review, REVIEWS)
        check_number("review_top_p", self.review_top_p, low=0.0, high=1.0, low_open=True)
        check_number("review_surprise", self.review_surprise, low=0.0)
        check_choice("stability", self.stability, STABILITY_RULES)
        check_number("stability_decay", self.stability_decay, low=0.0)
        check_number("retrievability_gain", self.retrievability_gain, low=0.0)
        check_choice("trace", self.trace, TRACES)
        check_number("trace_tau", self.trace_tau, low=0.0, low_open=True)
        check_number("soft_delete_floor", self.soft_delete_floor, low=0.0, high=1.0)
        check_choice("soft_delete_target", self.soft_delete_target, SOFT_TARGETS)
        check_number("sparse_threshold", self.sparse_threshold, low=0.0, high=1.0, low_open=True, high_open=True)
        check_number("layer_consensus", self.layer_consensus, low=0.0, high=1.0, low_open=True)
        check_number("memory_layer_fraction", self.memory_layer_fraction, low=0.0, high=1.0, low_open=True)
        check_int("sink_tokens", self.sink_tokens, 0)
        check_int("recent_window", self.recent_window, 1)
        check_int("memory_budget", self.memory_budget, 1)
        self.check_budget(self.memory_budget)
        check_choice("granularity", self.granularity, GRANULARITIES)
        check_int("observation_window", self.observation_window, 1)
        check_int("observation_pool", self.observation_pool, 1)
        check_choice("positions", self.positions, POSITION_SCHEMES)
        if self.observation_pool % 2 == 0:
            raise ConfigError(f"observation_pool must be odd (centred on the token), got {self.observation_pool}")
        if not isinstance(self.policy, str) or self.policy not in POLICIES:
            raise ConfigError(f"policy must be one of {sorted(POLICIES)}, got {self.policy!r}")

    def check_budget(self, budget: int, chunk: int = 1) -> None:
        """The one eviction rule: sinks + the recent window + a ``chunk`` of new tokens fit in ``budget``."""
        need = self.sink_tokens + self.recent_window + chunk
        if budget < need:
            what = "1" if chunk == 1 else f"a chunk of {chunk}"
            raise ConfigError(f"memory_budget must be >= sink_tokens + recent_window + {what} = {need}, got {budget}")

    def replace(self, **changes: Any) -> "MemoryConfig":
        """A copy with some fields changed (validated); unknown names are rejected."""
        names = {f.name for f in fields(self)}
        unknown = sorted(set(changes) - names)
        if unknown:
            raise TypeError(f"unknown MemoryConfig field(s) {unknown}; valid: {sorted(names)}")
        return MemoryConfig(**{**asdict(self), **changes})

    def granularity_for(self, mode: str) -> str:
        """The granularity ``mode`` runs at: ``auto`` resolves to ``layer`` for ``evict`` and to
        ``shared`` for every other mode."""
        if self.granularity != "auto":
            return self.granularity
        return "layer" if mode == "evict" else "shared"

    def memory_layers(self, num_layers: int) -> list[int]:
        """Indices of the layers that keep memory state: the first fraction, at least one."""
        return list(range(max(1, int(round(num_layers * self.memory_layer_fraction)))))

    def to_dict(self) -> dict:
        return asdict(self)
