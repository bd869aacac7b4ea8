"""What a conversation's cache holds, seen from its text: positions, retention, elided text.

``ConversationViews`` is mixed into ``memollm.chat.ChatSession``: it reads the session's
``session`` (a ``MemorySession`` or None), ``cache``, ``_ids`` (every token read, token ``i``
at true position ``i``), ``turn`` and ``_decode``. Views show the union over the layers
unless asked for one ``layer``.
"""

from __future__ import annotations

from typing import Any, Callable, Sequence

from .cache import cached_tokens, kv_cache_bytes
from .config import check_int


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
