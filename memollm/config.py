"""Every knob of memollm in one validated, frozen dataclass, plus the names of the modes.

This is the bottom layer: it imports nothing from memollm. Policies register themselves
into ``POLICIES`` (``memollm.policies.register_policy``), so the config can check a policy
name without importing the module that defines policies.
"""

from __future__ import annotations

import math
import numbers
from dataclasses import Field, asdict, dataclass, field, fields
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


def _knob(default: Any, help: str, *, kind: type | None = None, choices: tuple[str, ...] | None = None,
          low: float | None = None, high: float | None = None, low_open: bool = False, high_open: bool = False,
          flag: str | None = None) -> Any:
    """A ``MemoryConfig`` field with everything said about it once: default, one-line help, the
    value's kind and bounds (checked by ``__post_init__``) and, where short, its command-line flag.
    The per-call overrides of ``generate`` and chats and the CLI's flags are read from these."""
    meta = {"help": help, "kind": kind or type(default), "choices": choices, "low": low, "high": high,
            "low_open": low_open, "high_open": high_open, "flag": flag}
    return field(default=default, metadata=meta)


def _check_knob(f: Field, value: Any) -> None:
    m = f.metadata
    if value is None and f.default is None:
        return
    if m["choices"] is not None:
        check_choice(f.name, value, m["choices"])
    elif m["kind"] is bool:
        check_bool(f.name, value)
    elif m["kind"] is int:
        check_int(f.name, value, int(m["low"]))
    elif m["kind"] is float:
        check_number(f.name, value, low=m["low"], high=m["high"], low_open=m["low_open"], high_open=m["high_open"])


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
    S / S0`` tokens, and ``encoding`` > 0 counts reading a token as its first use (a trace of
    ``encoding / memory_budget``, as ACT-R counts a memory's creation). The defaults (top-p
    reviews, FSRS stability whose gain falls as 1 / S, max traces, no encoding) were chosen on
    the tune split with ``scripts/search_review_rule.py`` (README, Quality); ``SEED_RULE``
    (``review="share"``, ``stability="additive"``, ``trace="none"``) is the seed's rule, and
    the ``ebbinghaus_seed`` policy runs it.
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

    initial_strength: float = _knob(5.0, "strength S0 of a newly read token", low=_MIN_STRENGTH)
    time_step: float = _knob(0.01, "age added to every cached token per token read", low=0.0, low_open=True)
    reinforce: bool = _knob(True, "attention reviews tokens (False: the curve alone)")
    reinforce_threshold: float = _knob(1.0, "review='share': a review needs this many times the uniform share",
                                       low=0.0, low_open=True)
    strength_gain: float = _knob(1.0, "strength a review adds (additive) or its scale (fsrs)", low=0.0)
    spacing: float = _knob(0.0, "additive reviews gain x (1 - R) ** spacing: the spacing effect", low=0.0)
    max_strength: float | None = _knob(None, "cap on S (none: no cap)", kind=float)
    review: str = _knob("top_p", "what counts as a review", choices=REVIEWS)
    review_top_p: float = _knob(0.5, "review='top_p': the keys holding this much of a query's attention",
                                low=0.0, high=1.0, low_open=True)
    review_surprise: float = _knob(0.0, "> 0: a review needs this many times the token's running mean share",
                                   low=0.0)
    stability: str = _knob("fsrs", "how a review grows strength", choices=STABILITY_RULES)
    stability_decay: float = _knob(1.0, "fsrs: the gain falls as S ** -stability_decay", low=0.0)
    retrievability_gain: float = _knob(2.0, "fsrs: the gain grows as exp(retrievability_gain * (1 - R))", low=0.0)
    trace: str = _knob("max", "eviction ranks by fading attention traces (none: by retention)", choices=TRACES)
    trace_tau: float = _knob(0.25, "trace time constant, in budgets at S = S0", low=0.0, low_open=True)
    encoding: float = _knob(0.0, "trace a token gets when read, in uniform shares of a full cache", low=0.0)
    soft_delete_floor: float = _knob(0.8, "soft_delete: weight floor + (1 - floor) x R", low=0.0, high=1.0)
    soft_delete_target: str = _knob("values", "soft_delete: weigh the values or bias the logits",
                                    choices=SOFT_TARGETS)
    sparse_threshold: float = _knob(0.001, "sparse_attention: mask a token once R falls below this",
                                    low=0.0, high=1.0, low_open=True, high_open=True)
    layer_consensus: float = _knob(0.5, "sparse_attention: share of memory layers that must agree to mask",
                                   low=0.0, high=1.0, low_open=True)
    memory_layer_fraction: float = _knob(0.5, "the first fraction of full-attention layers that keep memory",
                                         low=0.0, high=1.0, low_open=True)
    memory_budget: int = _knob(512, "evict: most tokens the KV cache holds", low=1, flag="--budget")
    sink_tokens: int = _knob(4, "evict: first positions always kept (attention sinks)", low=0, flag="--sinks")
    recent_window: int = _knob(32, "evict: newest tokens always kept", low=1, flag="--window")
    policy: str = _knob("ebbinghaus", "evict: how the tokens in between are ranked, one of memollm.POLICIES")
    granularity: str = _knob("auto", "who ranks: shared, layer, head (auto: layer for evict)", choices=GRANULARITIES)
    observation_window: int = _knob(16, "a prompt's last queries whose attention reviews earlier tokens", low=1)
    observation_pool: int = _knob(7, "max-pool those scores over this many neighbours (odd)", low=1)
    positions: str = _knob("true", "evict: a new token's position, its true one or its rank in the cache",
                           choices=POSITION_SCHEMES)

    def __post_init__(self) -> None:
        for f in fields(self):  # each field's own check, from its metadata
            _check_knob(f, getattr(self, f.name))
        if self.max_strength is not None:
            check_number("max_strength", self.max_strength, low=self.initial_strength)
        self.check_budget(self.memory_budget)
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


KNOBS: dict[str, Field] = {f.name: f for f in fields(MemoryConfig)}
"""Every ``MemoryConfig`` field by name, with its help, kind, bounds and flag in ``.metadata``."""
