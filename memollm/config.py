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
REVIEWS = ("none", "share", "top_p")
STABILITY_RULES = ("additive", "fsrs")
TRACES = ("none", "max", "sum")

MEMORY_MODES = MODES[1:]
"""The modes that keep a forgetting curve: every mode but ``baseline``."""

SEED_RULE = {"review": "share", "stability": "additive", "trace": "none"}
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
          flag: str | None = None, modes: tuple[str, ...] = MEMORY_MODES) -> Any:
    """A ``MemoryConfig`` field with everything said about it once: default, one-line help, the
    value's kind and bounds (checked by ``__post_init__``), the ``modes`` that read it and, where
    short, its command-line flag. The per-call overrides of ``generate`` and chats and the CLI's
    flags are read from these."""
    meta = {"help": help, "kind": kind or type(default), "choices": choices, "low": low, "high": high,
            "low_open": low_open, "high_open": high_open, "flag": flag, "modes": modes}
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
    elif m["kind"] is str and not isinstance(value, str):
        raise ConfigError(f"{f.name} must be a string, got {value!r}")


@dataclass(frozen=True)
class MemoryConfig:
    """Every knob of the memory model, validated on construction; each field's help says which
    modes read it, and :meth:`check_mode` refuses a knob given to a mode that never reads it.

    The forgetting curve (every memory mode): a token read gets strength ``initial_strength``
    (S0) and age 0; every token read adds ``time_step`` to every cached token's age. A token
    the newest query retrieves is *reviewed* (``review``): ``"share"`` (the seed's rule) when
    it gets at least ``review_threshold`` times a uniform share of the attention, ``"top_p"``
    when it is among the keys holding ``review_top_p`` of the attention mass, ``"none"`` for
    the curve alone. A review resets the age and grows the strength (``stability``): by
    ``strength_gain * share`` (``"additive"``, the seed's rule) or by FSRS's factor ``1 +
    strength_gain * S ** -stability_decay * (exp(retrievability_gain * (1 - R)) - 1)``
    (``"fsrs"``: a review of a faded memory gains most, and gains fall as S grows).
    ``memollm.memory.EbbinghausMemory`` carries these rules out.

    A prompt read in one pass is reviewed by its last ``observation_window`` queries, their
    attention max-pooled over ``observation_pool`` neighbouring positions so that a multi-token
    fact is kept whole (SnapKV's observation window). Only the first ``memory_layer_fraction``
    of the full-attention layers keep memory, unless eviction ranks per layer or head.

    Soft delete weighs each cached token by ``soft_delete_floor + (1 - floor) * R``, on the
    values (the seed's choice) or as a log-bias on the logits (``soft_delete_target``).
    Sparse attention masks a token once ``R < sparse_threshold`` in ``layer_consensus`` of the
    memory layers (or in its own layer with ``granularity="layer"``).

    Eviction keeps at most ``memory_budget`` tokens: the first ``sink_tokens`` positions and
    the newest ``recent_window`` always, the rest ranked by ``policy``. The default policy,
    ``ebbinghaus``, ranks by fading attention traces (``trace="max"``: the last retrieval's
    attention, fading over ``trace_tau * memory_budget * S / S0`` tokens; ``"sum"`` adds
    them up; ``"none"`` ranks by R itself, the seed's rule, ``SEED_RULE``). ``granularity``
    says who ranks: one set for all layers (``shared``), each full-attention layer
    (``layer``, what ``auto`` means in ``evict``) or each KV head (``head``). ``positions``:
    a new token's true position, or its rank in the cache (``"cache"``, StreamingLLM: cached
    keys are re-rotated, so a stream can run past the model's context). The defaults were
    chosen on the tune split (``scripts/search_review_rule.py``; README, Quality).
    """

    initial_strength: float = _knob(5.0, "strength S0 of a newly read token", low=_MIN_STRENGTH)
    time_step: float = _knob(0.01, "age added to every cached token per token read", low=0.0, low_open=True)
    review: str = _knob("top_p", "what counts as a review: none, an above-share glance, the top-p keys",
                        choices=REVIEWS)
    review_threshold: float = _knob(1.0, "review='share': a review needs this many uniform shares",
                                    low=0.0, low_open=True)
    review_top_p: float = _knob(0.5, "review='top_p': the keys holding this much of a query's attention",
                                low=0.0, high=1.0, low_open=True)
    stability: str = _knob("fsrs", "how a review grows strength: additive or fsrs", choices=STABILITY_RULES)
    strength_gain: float = _knob(1.0, "strength a review adds (additive) or its scale (fsrs)", low=0.0)
    stability_decay: float = _knob(1.0, "fsrs: the gain falls as S ** -stability_decay", low=0.0)
    retrievability_gain: float = _knob(2.0, "fsrs: the gain grows as exp(retrievability_gain * (1 - R))", low=0.0)
    observation_window: int = _knob(16, "a prompt's last queries whose attention reviews earlier tokens", low=1)
    observation_pool: int = _knob(7, "max-pool those scores over this many neighbours (odd)", low=1)
    memory_layer_fraction: float = _knob(0.5, "the first fraction of full-attention layers that keep memory",
                                         low=0.0, high=1.0, low_open=True)
    sink_tokens: int = _knob(4, "first positions never forgotten (attention sinks)", low=0, flag="--sinks")
    soft_delete_floor: float = _knob(0.8, "soft_delete: weight floor + (1 - floor) x R", low=0.0, high=1.0,
                                     modes=("soft_delete",))
    soft_delete_target: str = _knob("values", "soft_delete: weigh the values or bias the logits",
                                    choices=SOFT_TARGETS, modes=("soft_delete",))
    sparse_threshold: float = _knob(0.001, "sparse_attention: mask a token once R falls below this",
                                    low=0.0, high=1.0, low_open=True, high_open=True, modes=("sparse_attention",))
    layer_consensus: float = _knob(0.5, "sparse_attention: share of memory layers that must agree to mask",
                                   low=0.0, high=1.0, low_open=True, modes=("sparse_attention",))
    granularity: str = _knob("auto", "sparse_attention, evict: who ranks: shared, layer, head (auto: layer for "
                             "evict)", choices=GRANULARITIES, modes=("sparse_attention", "evict"))
    memory_budget: int = _knob(512, "evict: most tokens the KV cache holds", low=1, flag="--budget", modes=("evict",))
    recent_window: int = _knob(32, "evict: newest tokens always kept", low=1, flag="--window", modes=("evict",))
    policy: str = _knob("ebbinghaus", "evict: how the tokens in between are ranked, one of memollm.POLICIES",
                        modes=("evict",))
    trace: str = _knob("max", "evict, ebbinghaus: rank by fading attention traces (none: by retention)",
                       choices=TRACES, modes=("evict",))
    trace_tau: float = _knob(0.25, "evict, ebbinghaus: trace time constant, in budgets at S = S0", low=0.0,
                             low_open=True, modes=("evict",))
    positions: str = _knob("true", "evict: a new token's position, its true one or its rank in the cache",
                           choices=POSITION_SCHEMES, modes=("evict",))
    strength_gate: str | None = _knob(None, "evict, ebbinghaus_learned: a gate file from `memollm train-strength` "
                                      "(none: the one bundled for the model)", kind=str, modes=("evict",))

    def __post_init__(self) -> None:
        for f in fields(self):  # each field's own check, from its metadata
            _check_knob(f, getattr(self, f.name))
        if self.observation_pool % 2 == 0:
            raise ConfigError(f"observation_pool must be odd (centred on the token), got {self.observation_pool}")
        if not isinstance(self.policy, str) or self.policy not in POLICIES:
            raise ConfigError(f"policy must be one of {sorted(POLICIES)}, got {self.policy!r}")

    def check_mode(self, mode: str, given=(), chunk: int = 1) -> None:
        """Refuse what ``mode`` cannot honour: a knob in ``given`` (names set for this call) that
        the mode never reads, and, in ``evict``, a budget too small for the sinks, the recent
        window and a ``chunk`` of new tokens. ``generate``, chats and the commands all ask here."""
        check_choice("generation_mode", mode, MODES)
        for name in given:
            modes = KNOBS[name].metadata["modes"]
            if mode not in modes:
                raise ConfigError(f"{name} does nothing in generation_mode={mode!r}: only "
                                  f"{', '.join(modes)} {'reads' if len(modes) == 1 else 'read'} it")
        if mode == "evict":
            self.check_budget(self.memory_budget, chunk)

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
"""Every ``MemoryConfig`` field by name, with its help, kind, bounds, modes and flag in ``.metadata``."""


def knobs_for(mode: str, knobs: dict[str, Any]) -> dict[str, Any]:
    """The knobs in ``knobs`` that ``mode`` reads: what a side-by-side run of every mode passes to each."""
    return {k: v for k, v in knobs.items() if mode in KNOBS[k].metadata["modes"]}
