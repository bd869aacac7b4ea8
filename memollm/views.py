"""What a memory session holds and reports, and what a conversation's cache holds, seen from its text.

``SessionViews`` is mixed into ``memollm.session.MemorySession``: the result dict of a
generation, what each layer (or KV head) holds, and the forgetting curve by position, read from
the session's ``positions``, ``memory``, ``policy`` and masks; the session itself only keeps
the books. ``ConversationViews`` is mixed into ``memollm.chat.ChatSession``: it reads the chat's
``session`` (a ``MemorySession`` or None), ``cache``, ``_ids`` (every token read, token ``i``
at true position ``i``), ``turn`` and ``_decode``. Views show the union over the layers unless
asked for one ``layer``.
"""

from __future__ import annotations

from array import array
from typing import Any, Callable, Sequence

import torch

from .cache import cached_tokens, kv_cache_bytes
from .config import MemoryConfig, check_int


def check_text(name: str, value: Any, *, empty: bool = False) -> str:
    """A string, non-empty (beyond whitespace) unless ``empty``."""
    if not isinstance(value, str):
        raise ValueError(f"{name} must be a string, got {type(value).__name__}")
    if not empty and not value.strip():
        raise ValueError(f"{name} must be a non-empty string")
    return value


def token_spans(detokenize: Callable[[list[int]], str], ids: Sequence[int], text: str) -> list[list[int]]:
    """Indices into ``ids`` of the tokens covering each occurrence of ``text`` (tokens decoded one
    at a time, so character offsets map back to tokens)."""
    pieces = [detokenize([t]) for t in ids]
    ends, total = [], 0
    for piece in pieces:
        total += len(piece)
        ends.append(total)
    whole = "".join(pieces)
    spans, at = [], whole.find(text)
    while at >= 0:
        spans.append([i for i, e in enumerate(ends) if e > at and e - len(pieces[i]) < at + len(text)])
        at = whole.find(text, at + 1)
    return spans


class DropLog:
    """Positions each slot unit dropped, step by step, held as int32 arrays until a result asks.

    Per-layer eviction drops a token in every layer at every step: over a 20,000-token run that
    is 600,000 positions, tens of MB as Python lists of ints (memory that grew with the length
    of a generation whose cache was flat); here it is 4 bytes a position plus 4 per unit a step.
    """

    def __init__(self, names: list[str]) -> None:
        self.names = names
        self.steps, self.counts, self.flat = array("i"), array("i"), array("i")

    def add(self, step: int, counts: list[int], flat: list[int]) -> None:
        """``counts[u]`` positions dropped by unit ``u`` at ``step``, listed unit after unit in ``flat``."""
        self.steps.append(step)
        self.counts.extend(counts)
        self.flat.extend(flat)

    def as_dict(self) -> dict[int, dict[str, list[int]]]:
        """``{step: {unit name: [positions]}}``, units that dropped nothing left out."""
        out: dict[int, dict[str, list[int]]] = {}
        units, start = len(self.names), 0
        for i, step in enumerate(self.steps):
            event = out.setdefault(step, {})
            for name, count in zip(self.names, self.counts[i * units:(i + 1) * units]):
                if count:
                    event.setdefault(name, []).extend(self.flat[start:start + count])
                start += count
        return out


def generation_result(text: str, token_ids: list[int], seconds: float, prompt_tokens: int, cache, mode: str,
                      config: MemoryConfig, effective: MemoryConfig | None = None) -> dict[str, Any]:
    """The keys every generation reports, whoever decoded (``generate`` or a chat turn); a
    session adds what only its mode knows (``MemorySession.results``)."""
    return {"generated_text": text, "num_tokens": len(token_ids), "generation_time": seconds,
            "tokens_per_second": len(token_ids) / seconds if seconds > 0 else float("inf"),
            "prompt_tokens": prompt_tokens, "token_ids": list(token_ids),
            "kv_cache_tokens": cached_tokens(cache) if cache is not None else 0,
            "kv_cache_bytes": kv_cache_bytes(cache), "mode": mode,
            "policy": config.policy if mode == "evict" else None,
            "config": (effective or config).to_dict(), "memory_stats": {}, "warnings": []}


class SessionViews:
    """Views and reports of a ``MemorySession`` (batch row 0 unless a ``row`` is given)."""

    def unit_names(self) -> list[str]:
        """Names of the slot units of one batch row: ``shared``, ``layer_<i>`` or ``layer_<i>.head_<h>``."""
        if self.units == 1:
            return ["shared"]
        if self.heads == 1:
            return [f"layer_{l}" for l in self.layer_ids]
        return [f"layer_{l}.head_{h}" for l in self.layer_ids for h in range(self.heads)]

    def kept_positions(self) -> dict[str, list[int]]:
        """True positions each unit holds now (batch row 0)."""
        return {name: row.tolist() for name, row in zip(self.unit_names(), self.positions[: self.units])}

    def layer_positions(self, row: int = 0) -> dict[int, list[int]]:
        """True positions each full-attention layer holds, ascending (batch row ``row``). A layer
        ranked per KV head holds what any of its heads holds; one shared ranking gives every
        layer the same positions."""
        units = self.positions[row * self.units:(row + 1) * self.units]
        if self.units == 1:
            held = sorted(units[0].tolist()) if units.shape[0] else []
            return {layer: list(held) for layer in self.full_layers}
        per_layer = units.reshape(len(self.layer_ids), self.heads, -1)
        return {layer: sorted(set(p.flatten().tolist())) for layer, p in zip(self.layer_ids, per_layer)}

    def union_positions(self, row: int = 0) -> list[int]:
        """True positions that at least one layer holds: what the model can still attend to somewhere."""
        return sorted(set().union(*self.layer_positions(row).values()))

    def intersection_positions(self, row: int = 0) -> list[int]:
        """True positions that every layer holds."""
        held = list(self.layer_positions(row).values())
        return sorted(set(held[0]).intersection(*held[1:])) if held else []

    def layer_memory(self, quantity: str = "retention", row: int = 0) -> dict[int, dict[int, float]] | None:
        """``retention``, ``strength`` or ``age`` of every token each layer keeps state for,
        ``{layer: {true position: value}}`` (batch row ``row``); per KV head, the mean over the
        layer's heads that hold the token. None where the policy has no forgetting curve."""
        if quantity not in ("retention", "strength", "age"):
            raise ValueError(f"quantity must be 'retention', 'strength' or 'age', got {quantity!r}")
        if self.memory is None or self.memory.num_tokens == 0:
            return None
        values = self.memory.retention() if quantity == "retention" else getattr(self.memory, quantity)
        if self.units == 1:
            held = self.positions[row].tolist()
            return {layer: dict(zip(held, values[i, row].tolist())) for i, layer in enumerate(self.layer_ids)}
        shape = (len(self.layer_ids), self.heads, -1)
        vals = values[0, row * self.units:(row + 1) * self.units].reshape(shape)
        held = self.positions[row * self.units:(row + 1) * self.units].reshape(shape)
        out = {}
        for layer, v, p in zip(self.layer_ids, vals.tolist(), held.tolist()):
            acc: dict[int, list[float]] = {}
            for vh, ph in zip(v, p):
                for pos, x in zip(ph, vh):
                    acc.setdefault(pos, []).append(x)
            out[layer] = {pos: sum(xs) / len(xs) for pos, xs in sorted(acc.items())}
        return out

    def drops_since(self, step: int = 0) -> dict[int, Any]:
        """Evict events from forward step ``step`` on (batch row 0): positions dropped before each
        step, a list (shared ranking) or a dict by layer (and head) from the per-unit drop log."""
        events = self.drop_log.as_dict() if self.drop_log is not None else self.evict_events
        return {k: v if isinstance(v, dict) else list(v) for k, v in events.items() if k >= step}

    def state_bytes(self) -> int:
        """Bytes of per-token forgetting state kept: the Ebbinghaus memory (traces only where a
        policy ranks by them) or the tensors of the policy's own state (h2o, tova, snapkv), plus
        sparse attention's masks."""
        masks = self._masked.numel() * self._masked.element_size() if self._masked is not None else 0
        if self.memory is not None:
            return self.memory.nbytes + masks
        policies = getattr(self.policy, "policies", [self.policy])  # PolicyRows: one per block of rows
        return masks + sum(t.numel() * t.element_size() for p in policies for t in vars(p).values()
                           if isinstance(t, torch.Tensor))

    def masked_positions(self) -> list[int] | dict[str, list[int]]:
        """Masked positions of batch row 0: a list, or a dict by layer with layer masks."""
        if self.layer_masks:
            if self._masked is None:
                return {f"layer_{l}": [] for l in self.layer_ids}
            return {f"layer_{l}": self.positions[0][m[0]].tolist() for l, m in zip(self.layer_ids, self._masked)}
        if self._masked is None:
            return []
        return self.positions[0][self._masked[0]].tolist()

    def memory_stats(self) -> dict[str, dict]:
        if self.memory is None:
            return {}
        if self.units == 1:
            return self.memory.stats(self.layer_ids, self._masked)
        # one state row per unit: summarise each layer over its heads (batch row 0)
        per_layer = lambda t: t[0, : self.units].reshape(len(self.layer_ids), -1)[:, None]  # noqa: E731
        return self.memory.stats(self.layer_ids, None, strength=per_layer(self.memory.strength),
                                 age=per_layer(self.memory.age))

    @property
    def effective_config(self) -> MemoryConfig:
        """The settings that ran: a preset policy (e.g. ``ebbinghaus_seed``) has its own."""
        return self.policy.config if self.policy is not None else self.config

    def results(self, since: int | None = None) -> dict[str, Any]:
        """This session's part of a ``generate`` result: what only this mode knows; with
        ``since`` (a step count), the evictions from that step on (a chat turn's)."""
        out: dict[str, Any] = {
            "config": self.effective_config.to_dict(),
            "memory_stats": self.memory_stats(),
            "warnings": list(self.warnings),
            "evicted_tokens": self.evicted,
            "peak_kv_cache_tokens": self.peak_cached,
            "memory_state_bytes": self.state_bytes(),
        }
        if self.mode == "evict":
            out["evict_events"] = (self.drops_since(since) if since is not None else
                                   self.drop_log.as_dict() if self.drop_log is not None else self.evict_events)
            out["granularity"] = self.granularity
            if self.units > 1:
                out["kept_positions"] = self.kept_positions()
        if self.mode == "sparse_attention":
            out["masked_positions"] = self.masked_positions()
            out["forget_events"] = self.forget_events
        return out

    def token_weights(self) -> dict[str, Any] | None:
        """Retention (and attention received, when recording) per memory layer and cached slot."""
        if self.memory is None or self.memory.num_tokens == 0:
            return None
        # the newest token has no KV yet when generation stops, so slots cover positions[:]
        if self.units == 1:
            r = self.memory.retention()[:, 0]
            att = self.attention_total[:, 0] if self.attention_total is not None else None
            names = [f"layer_{l}" for l in self.layer_ids]
        else:  # one row per unit, each with its own positions (in ``unit_positions``)
            r = self.memory.retention()[0, : self.units]
            att = self.attention_total[0, : self.units] if self.attention_total is not None else None
            names = self.unit_names()
        out = {
            "positions": self.positions[0].tolist(),
            "retention": {n: r[i].tolist() for i, n in enumerate(names)},
            "attention": {n: att[i].tolist() for i, n in enumerate(names)} if att is not None else {},
        }
        if self.units > 1:
            out["unit_positions"] = self.kept_positions()
        return out


class ConversationViews:
    """Views of what a conversation's KV cache holds, by true position."""

    @property
    def num_cached(self) -> int:
        return cached_tokens(self.cache)

    def cached_positions(self, layer: int | None = None) -> list[int]:
        """True positions of the tokens still in the cache, ascending: by default the union over
        the layers (each layer ranks its own tokens unless ``granularity="shared"``, where all
        layers hold the same), or what full-attention layer ``layer`` holds."""
        if self.session is None:
            return list(range(self.num_cached))
        if layer is None:
            return self.session.union_positions()
        held = self.session.layer_positions()
        if layer not in held:
            raise ValueError(f"layer must be one of the full-attention layers {sorted(held)}, got {layer!r}")
        return held[layer]

    def _state(self, quantity: str, layer: int | None) -> dict[int, float] | None:
        """``quantity`` by true position: one layer's, or the mean over the layers that hold the token."""
        per = self.session.layer_memory(quantity) if self.session is not None else None
        if per is None:
            return None
        if layer is not None:  # one shared ranking keeps state in the memory layers only
            return per.get(layer)
        acc: dict[int, list[float]] = {}
        for values in per.values():
            for p, v in values.items():
                acc.setdefault(p, []).append(v)
        return {p: sum(v) / len(v) for p, v in acc.items()}

    def retention(self, layer: int | None = None) -> list[float] | None:
        """Retention R of every token of ``cached_positions(layer)``: the mean over the layers that
        hold it, or layer ``layer``'s; None where the policy (or that layer) keeps no forgetting curve."""
        state = self._state("retention", layer)
        return None if state is None else [state[p] for p in self.cached_positions(layer)]

    def kv_cache_bytes(self) -> int:
        return kv_cache_bytes(self.cache)

    def token_memory(self, positions: Sequence[int], layer: int | None = None) -> list[dict[str, Any]]:
        """For each true position: ``cached`` (by any layer, or by ``layer``), ``layers`` (how many
        full-attention layers hold it, except in baseline) and, while cached under a forgetting
        curve, its ``strength`` S, ``age`` t and ``retention`` R (means over the layers holding it)."""
        held = set(self.cached_positions(layer))
        layers = {} if self.session is None else {l: set(p) for l, p in self.session.layer_positions().items()}
        state = {q: self._state(q, layer) for q in ("strength", "age", "retention")}
        out = []
        for p in positions:
            row: dict[str, Any] = {"position": int(p), "cached": p in held}
            if layers:
                row["layers"] = sum(p in h for h in layers.values())
            if p in held and state["retention"] is not None:
                row.update({q: float(values[p]) for q, values in state.items()})
            out.append(row)
        return out

    def snapshot(self, layer: int | None = None) -> dict[str, Any]:
        """What the cache holds now: ``turn``, ``tokens`` read so far, the cached ``positions``
        (union over the layers, or ``layer``'s) and their ``retention`` (None without a forgetting curve)."""
        return {"turn": self.turn, "tokens": len(self._ids), "layer": layer,
                "positions": self.cached_positions(layer), "retention": self.retention(layer)}

    def locate(self, text: str, occurrence: int = 0) -> list[int]:
        """True positions of the tokens that cover the ``occurrence``-th appearance of ``text``
        in the conversation read so far (an empty list when it does not appear)."""
        check_text("text", text)
        check_int("occurrence", occurrence, 0)
        spans = token_spans(self._decode, self._ids, text)
        return spans[occurrence] if occurrence < len(spans) else []

    def memory_text(self, elide: str = "…", layer: int | None = None) -> str:
        """The conversation read so far, with the spans no longer cached (by any layer, or by
        ``layer``) replaced by ``elide``."""
        kept = set(self.cached_positions(layer))
        out, run, run_kept = [], [], None
        for pos, tok in enumerate(self._ids):
            k = pos in kept
            if run and k != run_kept:
                out.append(self._decode(run) if run_kept else elide)
                run = []
            run.append(tok)
            run_kept = k
        if run:
            out.append(self._decode(run) if run_kept else elide)
        return "".join(out)
